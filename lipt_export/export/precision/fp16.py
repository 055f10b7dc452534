"""FP32 ONNX -> FP16 ONNX with FP32 islands chosen from measured activation ranges.

TensorRT 11 is strongly typed: an engine runs in the precision written in its ONNX, so the overflow guard
has to live in the graph. We run the FP32 model over calibration inputs with every intermediate tensor
exposed, record max |x| per tensor, and keep in FP32 every node that would overflow FP16:

* its output exceeds ``safety_fraction * 65504`` (LIPT's unscaled q.q^T logits are the known case);
* one of its inputs does (casting that input to FP16 would turn it into inf);
* it squares its input internally (LayerNorm/InstanceNorm/ReduceL2 ...) and max|x|^2 exceeds the limit;
* optionally (``softmax_logit_limit``) a Softmax whose logits are so large that FP16 rounding of the
  logits alone (half an ulp, i.e. ~|x| * 2^-11 absolute) would distort the attention weights; the node
  computing those logits stays FP32 too.

The converter is ``onnxruntime.transformers.float16`` (it handles internal ``Cast(to=FLOAT)`` nodes that
make onnxconverter-common's output unloadable, see environment.md section 5). After conversion the FP16
model is run on the same inputs; a tensor that is finite in FP32 but inf/NaN in FP16 adds its producer
to the islands and the conversion is redone (a few rounds at most).
"""
from __future__ import annotations

import logging

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import onnx

from lipt_export.catalog import CALIB_SIZE
from lipt_export.errors import ExportError
from lipt_export.export.graph import consumers, producers
from lipt_export.export.precision.calibration.activations import (FLOAT_TYPES, TensorObserver,
                                                                  float_activation_names, max_abs_ranges,
                                                                  tensor_types)
from lipt_export.images import check_image_folder

logger = logging.getLogger(__name__)

FP16_MAX = 65504.0
DEFAULT_SAFETY_FRACTION = 0.5  # headroom for inputs brighter or larger than the calibration images
# Ops that square their input before reducing it (variance, L2): x^2 must fit in FP16 too.
SQUARING_OPS = {"LayerNormalization", "InstanceNormalization", "GroupNormalization", "ReduceSumSquare",
                "ReduceL2", "LpNormalization", "MeanVarianceNormalization", "SimplifiedLayerNormalization"}
SOFTMAX_OPS = {"Softmax", "LogSoftmax"}
MAX_REPAIR_ROUNDS = 4


@dataclass
class Island:
    node: str
    op: str
    max_abs: float
    reason: str

    def as_dict(self) -> Dict[str, object]:
        d = asdict(self)
        d["max_abs"] = float(d["max_abs"]) if np.isfinite(d["max_abs"]) else "inf"
        return d


def name_unnamed_nodes(model: onnx.ModelProto) -> None:
    """The converter's block list is by node name; give every node one (deterministically)."""
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            cand = f"{node.op_type}_{i}"
            while cand in taken:
                cand += "_"
            node.name = cand
            taken.add(cand)


def choose_islands(model: onnx.ModelProto, peaks: Dict[str, float], limit: float,
                   softmax_logit_limit: Optional[float] = None,
                   types: Optional[Dict[str, int]] = None) -> List[Island]:
    """Nodes that must stay FP32 given measured peaks (see module docstring for the rules)."""
    types = types if types is not None else tensor_types(model)
    initializers = {i.name for i in model.graph.initializer}
    producer = producers(model.graph)
    chosen: Dict[str, Island] = {}

    def add(node: onnx.NodeProto, peak: float, reason: str) -> None:
        if node.name not in chosen:
            chosen[node.name] = Island(node.name, node.op_type, peak, reason)

    for node in model.graph.node:
        if node.op_type in ("Constant", "Shape", "Cast"):
            continue
        outs = [peaks[o] for o in node.output if o in peaks]
        ins = [peaks[i] for i in node.input if i in peaks and i not in initializers
               and types.get(i) in FLOAT_TYPES]
        out_peak, in_peak = max(outs, default=0.0), max(ins, default=0.0)
        if out_peak > limit:
            add(node, out_peak, f"output max |x| {out_peak:.4g} > {limit:.4g}")
        elif in_peak > limit:
            add(node, in_peak, f"input max |x| {in_peak:.4g} > {limit:.4g} (the FP16 cast would overflow)")
        elif node.op_type in SQUARING_OPS and in_peak * in_peak > limit:
            add(node, in_peak, f"squares its input: max |x|^2 {in_peak * in_peak:.4g} > {limit:.4g}")
        elif softmax_logit_limit is not None and node.op_type in SOFTMAX_OPS and in_peak > softmax_logit_limit:
            add(node, in_peak, f"softmax logits max |x| {in_peak:.4g} > {softmax_logit_limit:.4g} "
                               f"(FP16 rounding of the logits)")
            src = producer.get(node.input[0])
            if src is not None and src.op_type not in ("Constant",):
                add(src, in_peak, f"computes softmax logits with max |x| {in_peak:.4g}")
    return list(chosen.values())


def dedupe_identical_nodes(model: onnx.ModelProto) -> int:
    """The converter emits the same input Cast twice when two blocked nodes read one FP16 tensor (same
    name, same output): keep the first copy."""
    seen, keep = set(), []
    for node in model.graph.node:
        key = node.SerializeToString(deterministic=True)
        if key in seen:
            continue
        seen.add(key)
        keep.append(node)
    removed = len(model.graph.node) - len(keep)
    if removed:
        del model.graph.node[:]
        model.graph.node.extend(keep)
    return removed


def drop_fp16_round_trips(model: onnx.ModelProto) -> int:
    """Remove Cast(->FLOAT16) -> Cast(->FLOAT) pairs: the converter casts every blocked node's output back
    to FP16, so two adjacent FP32 islands still pass their (possibly > 65504) tensor through FP16. Consumers
    of the second Cast read the FP32 original instead. Returns the number of Casts removed."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    by_output = producers(graph)
    users = consumers(graph)

    def cast_to(node: onnx.NodeProto) -> Optional[int]:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    removed: List[onnx.NodeProto] = []
    for down in list(graph.node):
        if cast_to(down) != onnx.TensorProto.FLOAT or down.output[0] in outputs:
            continue
        up = by_output.get(down.input[0])
        if up is None or cast_to(up) != onnx.TensorProto.FLOAT16:
            continue
        fp32_src = up.input[0]
        for user in users.get(down.output[0], []):
            for k, name in enumerate(user.input):
                if name == down.output[0]:
                    user.input[k] = fp32_src
        removed.append(down)
        users[up.output[0]] = [c for c in users.get(up.output[0], []) if c is not down]
        if not users[up.output[0]] and up.output[0] not in outputs:
            removed.append(up)
    ids = {id(n) for n in removed}
    keep = [n for n in graph.node if id(n) not in ids]
    del graph.node[:]
    graph.node.extend(keep)
    return len(ids)


def topological_sort(model: onnx.ModelProto) -> None:
    """The converter appends its input Casts at the end of the node list; ONNX requires producers first."""
    graph = model.graph
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: List[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):  # a cycle or a dangling input: leave the remainder in place
            ordered += rest
            break
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def _first_new_nonfinite(fp16_model: onnx.ModelProto, original: onnx.ModelProto, names: Sequence[str],
                         inputs: Sequence[np.ndarray], peaks: Dict[str, float]) -> Optional[str]:
    """Name of the first (graph order) tensor that is finite in FP32 but not in the FP16 model."""
    present = {o for n in fp16_model.graph.node for o in n.output}
    watch = [n for n in names if n in present and np.isfinite(peaks.get(n, 0.0))]
    obs = TensorObserver(fp16_model, watch)
    for x in inputs:
        values = obs.run(x)
        for name in watch:
            v = values.get(name)
            if v is not None and not np.isfinite(v).all():
                return name
    return None


def _is_finite(model: onnx.ModelProto, inputs: Sequence[np.ndarray]) -> bool:
    obs = TensorObserver(model, [])
    out = obs.output_names[0]
    return all(np.isfinite(obs.run(x, only={out})[out]).all() for x in inputs)


def _json_number(value: float) -> object:
    """JSON has no inf/NaN: non-finite peaks are reported as strings."""
    return float(value) if np.isfinite(value) else str(value)


@dataclass(frozen=True)
class Fp16Options:
    """Where the FP16 stage measures activation ranges for its FP32 islands: ``count`` patches of ``patch_size`` LR
    pixels from ``images`` (a folder), else synthetic natural images; ``io_fp16``: float16 input/output too."""

    images: Optional[str] = None
    patch_size: int = CALIB_SIZE
    count: int = 4
    io_fp16: bool = False

    def validate(self) -> None:
        if self.patch_size < 8 or self.count < 1:
            raise ExportError(f"FP16 range patches must be at least 8 px and 1 patch, got {self.patch_size} px x "
                              f"{self.count}")
        if self.images is not None:
            check_image_folder(self.images, "--calib")


def convert_fp16(src: Path, dst: Path, *, calib_inputs: List[np.ndarray], keep_io_fp32: bool = True,
                 guard: bool = True,
                 safety_fraction: float = DEFAULT_SAFETY_FRACTION,
                 softmax_logit_limit: Optional[float] = None) -> Dict[str, object]:
    """Write the FP16 model to ``dst``; returns the manifest fields describing it.

    ``guard=False`` converts everything (except the converter's own block list): only for showing what
    the guard prevents.
    """
    import onnxruntime
    from onnxruntime.transformers import float16

    model = onnx.load(str(src))
    name_unnamed_nodes(model)
    types = tensor_types(model)
    limit = safety_fraction * FP16_MAX
    peaks: Dict[str, float] = {}
    islands: List[Island] = []
    if guard:
        if not calib_inputs:
            raise ValueError("the FP16 overflow guard needs calibration inputs to measure activation ranges")
        peaks = max_abs_ranges(model, calib_inputs, progress="fp16 ranges")
        islands = choose_islands(model, peaks, limit, softmax_logit_limit, types)
    names = float_activation_names(model, types)
    producer = producers(model.graph)
    repairs = 0
    while True:
        base = onnx.ModelProto()
        base.CopyFrom(model)
        converted = float16.convert_float_to_float16(base, keep_io_types=keep_io_fp32,
                                                     node_block_list=[i.node for i in islands])
        dedupe_identical_nodes(converted)
        drop_fp16_round_trips(converted)
        topological_sort(converted)
        if not guard or repairs >= MAX_REPAIR_ROUNDS or _is_finite(converted, calib_inputs):
            break
        bad = _first_new_nonfinite(converted, model, names, calib_inputs, peaks)
        node = producer.get(bad) if bad else None
        if node is None or any(i.node == node.name for i in islands):
            break
        logger.info(f"[fp16] {node.name} ({node.op_type}) gives inf/NaN in FP16 although FP32 peaks at "
            f"{peaks.get(bad, float('nan')):.4g}; keeping it in FP32")
        islands.append(Island(node.name, node.op_type, peaks.get(bad, float("nan")), "inf/NaN in the FP16 run"))
        repairs += 1
    onnx.save(converted, str(dst))
    if islands:
        logger.info(f"[fp16] {len(islands)} FP32 island(s): " + ", ".join(f"{i.node} ({i.op}, max {i.max_abs:.3g})"
                                                              for i in islands[:6])
            + (" ..." if len(islands) > 6 else ""))
    sizes = sorted({tuple(int(v) for v in x.shape[2:]) for x in calib_inputs})
    return {
        "fp16_converter": f"onnxruntime.transformers.float16 (onnxruntime {onnxruntime.__version__})",
        "fp16_io": "float32" if keep_io_fp32 else "float16",
        "fp16_islands": [i.as_dict() for i in islands],
        "fp16_guard": {"enabled": guard, "limit": limit, "safety_fraction": safety_fraction,
                       "softmax_logit_limit": softmax_logit_limit, "calibration_inputs": len(calib_inputs),
                       "input_sizes": [list(s) for s in sizes], "repair_rounds": repairs,
                       "peak_max_abs": _json_number(max(peaks.values())) if peaks else None},
    }
