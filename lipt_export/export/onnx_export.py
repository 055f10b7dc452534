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

INPUT_NAME = "lr"
OUTPUT_NAME = "sr"
DEFAULT_OPSET = 17


class ExportError(RuntimeError):
    """The exporter produced something unusable (static spatial dims, checker failure, ...)."""


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
            h, w = torch.export.Dim("height", min=2), torch.export.Dim("width", min=2)
            prog = torch.onnx.export(module, (sample,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                     opset_version=opset, dynamo=True, external_data=False,
                                     dynamic_shapes={"lr": {2: h, 3: w}})
            prog.save(str(path))
        else:
            buf = io.BytesIO()
            torch.onnx.export(module, (sample,), buf, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              opset_version=opset, dynamo=False, do_constant_folding=True,
                              dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: {0: "batch", 2: "out_height",
                                                                           3: "out_width"}})
            path.write_bytes(buf.getvalue())
    model = onnx.load(str(path))
    check_onnx(model)
    return OnnxExportInfo(exporter="torch.onnx (dynamo)" if dynamo else "torch.onnx (torchscript)",
                          opset=opset, sample_shape=tuple(sample.shape))


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
