"""PyTorch -> ONNX with dynamic batch/H/W, verified after writing."""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import onnx
import torch
import torch.nn as nn

from lipt_export.catalog import DEFAULT_OPSET
from lipt_export.errors import ExportError
from lipt_export.export.graph import reshape_allowzero
from lipt_export.runtime.ort import ort_session

INPUT_NAME = "lr"
OUTPUT_NAME = "sr"


@dataclass
class OnnxExportInfo:
    exporter: str
    opset: int
    sample_shape: Tuple[int, ...]


def export_onnx(module: nn.Module, path: str | Path, *, opset: int = DEFAULT_OPSET,
                sample_hw: Tuple[int, int] = (64, 64), dynamo: bool = False) -> OnnxExportInfo:
    """Export ``module`` (taking/returning [0,1] NCHW RGB) to a single-file ONNX model at ``path``.

    The TorchScript exporter is the default: ~15x faster here, and the dynamo exporter has open SR bugs
    (e.g. PixelUnshuffle channel order). Batch, H and W are dynamic.
    """
    path = Path(path)
    module = module.eval()
    sample = torch.rand(1, 3, *sample_hw)
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            _export_dynamo(module, sample, path, opset)
        else:
            buf = io.BytesIO()
            torch.onnx.export(module, (sample,), buf, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              opset_version=opset, dynamo=False, do_constant_folding=True,
                              # Only the input's axes are declared: the output's dims are then whatever
                              # the exporter derives, so a size baked into the graph shows up as static.
                              dynamic_axes={INPUT_NAME: axes})
            path.write_bytes(buf.getvalue())
    model = onnx.load(str(path))
    if reshape_allowzero(model):
        onnx.save(model, str(path))
    check_onnx(model)
    with torch.no_grad():
        out_hw = tuple(module(sample).shape[2:])
    probe_dynamic(path, sample_hw, (out_hw[0] / sample_hw[0], out_hw[1] / sample_hw[1]))
    return OnnxExportInfo(exporter="torch.onnx (dynamo)" if dynamo else "torch.onnx (torchscript)",
                          opset=opset, sample_shape=tuple(sample.shape))


def _export_dynamo(module: nn.Module, sample: torch.Tensor, path: Path, opset: int) -> None:
    """The torch.export-based exporter (optional: needs the `dynamo` extra). Kept for comparison; on
    torch 2.13 it fails to translate LIPT's graph, and it has open SR bugs (PixelUnshuffle order)."""
    import importlib.util

    if importlib.util.find_spec("onnxscript") is None:
        raise ExportError("--dynamo needs onnxscript: pip install -c constraints.txt -e '.[dynamo]' "
                          "(or use the default TorchScript exporter)")
    h, w = torch.export.Dim("height", min=2), torch.export.Dim("width", min=2)
    try:
        prog = torch.onnx.export(module, (sample,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                 opset_version=opset, dynamo=True, external_data=False,
                                 dynamic_shapes={"lr": {2: h, 3: w}}, verbose=False)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"the dynamo exporter failed ({first[:150]}); use the default TorchScript "
                          f"exporter (--torchscript)") from None
    prog.save(str(path))


def probe_dynamic(path: str | Path, sample_hw: Tuple[int, int], ratio: Tuple[float, float]) -> None:
    """Run the ONNX model at a size it was not traced with: a graph that froze the sample size (Python ints
    taken from tensor shapes, size-specific buffers) returns the wrong output size here. Declared symbolic
    dims alone do not prove this: the exporter labels Resize/Reshape outputs symbolic either way."""
    import numpy as np

    h, w = sample_hw[0] + 5, sample_hw[1] + 3
    sess = ort_session(path)
    x = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
    got = tuple(sess.run(None, {sess.get_inputs()[0].name: x})[0].shape[2:])
    want = (round(h * ratio[0]), round(w * ratio[1]))
    if got != want:
        raise ExportError(f"the ONNX graph is not size-generic: a {h}x{w} input gave {got[0]}x{got[1]} instead "
                          f"of {want[0]}x{want[1]} (a shape was frozen at export; compute sizes in-graph)")


def spatial_dims(model: onnx.ModelProto, value_name: str | None = None) -> Tuple[object, object]:
    graph_values = list(model.graph.input) if value_name is None else \
        [v for v in list(model.graph.input) + list(model.graph.output) if v.name == value_name]
    dims = graph_values[0].type.tensor_type.shape.dim
    return tuple(d.dim_param if d.dim_param else d.dim_value for d in dims[2:4])


def check_onnx(model: onnx.ModelProto) -> None:
    """onnx.checker with full checking, and H/W symbolic on the input and the output."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise ExportError(f"onnx.checker rejected the model: {str(exc).splitlines()[0]}") from None
    for value in (model.graph.input[0].name, model.graph.output[0].name):
        h, w = spatial_dims(model, value)
        if not (isinstance(h, str) and isinstance(w, str)):
            raise ExportError(f"'{value}' has static spatial dims {h}x{w}; the graph baked a size "
                              f"(a shape-dependent constant in the model's forward)")


def node_count(model: onnx.ModelProto | str | Path) -> int:
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    return len(model.graph.node)
