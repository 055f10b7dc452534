"""Model-specific parity figures, added to an artifact's parity entry by export and ``eval --parity-extras``.

SMSR: its spatial masks are hard thresholds, so an fp32 artifact can only differ from the eager model where a
mask pixel flips; the count of flipped pixels is the honest measure of that risk.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from lipt_export.models.smsr import RGB_RANGE as SMSR_RGB_RANGE
from lipt_export.models.smsr import SparseMaskModule
from lipt_export.runtime.ort import ort_session

ParityExtras = Callable[[nn.Module, object, Sequence[np.ndarray]], Dict[str, object]]


def _eager_masks(model: nn.Module, x: torch.Tensor, rgb_range: float) -> List[np.ndarray]:
    masks: List[np.ndarray] = []
    hooks = [m.spa_mask.register_forward_hook(lambda mod, inp, out: masks.append(
        (out[:, 1:] > out[:, :1]).cpu().numpy())) for m in model.modules() if isinstance(m, SparseMaskModule)]
    try:
        with torch.inference_mode():
            model(x * rgb_range)
    finally:
        for h in hooks:
            h.remove()
    return masks


def _with_mask_outputs(model) -> int:
    """Adds every ``Greater`` output (the hard spatial masks) of the ONNX model as an extra graph output.
    Returns how many there are."""
    import onnx

    names = [n.output[0] for n in model.graph.node if n.op_type == "Greater"]
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.BOOL, None))
    return len(names)


def smsr_parity_extras(deploy_model: nn.Module, onnx_path, inputs: Sequence[np.ndarray]) -> Dict[str, object]:
    """Count spatial-mask pixels that differ between the eager deploy model and the artifact.

    The artifact's masks are read from its ``Greater`` nodes (one per SMM, in graph order, which is the
    module order); eager masks come from forward hooks on the mask branches. Runs both on ``inputs``
    (NCHW float32 in [0, 1])."""
    import onnx

    exposed = onnx.load(str(onnx_path))
    n_masks = _with_mask_outputs(exposed)
    sess = ort_session(exposed)
    in_meta = sess.get_inputs()[0]
    in_dtype = np.float16 if "float16" in in_meta.type else np.float32
    out_names = [o.name for o in sess.get_outputs()][-n_masks:] if n_masks else []
    flips = pixels = 0
    model = deploy_model.eval()
    dtype = next(model.parameters()).dtype
    for x in inputs:
        eager = _eager_masks(model, torch.from_numpy(np.ascontiguousarray(x)).to(dtype), SMSR_RGB_RANGE)
        art = sess.run(out_names, {in_meta.name: np.ascontiguousarray(x, dtype=in_dtype)}) if out_names else []
        if len(art) != len(eager):
            return {"mask_flips": None, "mask_pixels": None,
                    "mask_note": f"artifact has {len(art)} mask nodes, eager model {len(eager)}"}
        for a, e in zip(art, eager):
            a = np.asarray(a).astype(bool).reshape(e.shape)
            flips += int(np.count_nonzero(a != e))
            pixels += int(e.size)
    return {"mask_flips": flips, "mask_pixels": pixels}


PARITY_EXTRAS: Dict[str, ParityExtras] = {"smsr": smsr_parity_extras}


def parity_extras_for(model_name: str) -> Optional[ParityExtras]:
    """``extras(deploy_model, onnx_path, inputs) -> dict`` for the family, or None."""
    return PARITY_EXTRAS.get(model_name)
