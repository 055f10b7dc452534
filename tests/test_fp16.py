"""FP16 conversion with measured FP32 islands, on small real networks exported with export_onnx.

ONNX Runtime's CPU provider computes most FP16 arithmetic in FP32 behind inserted casts, so an overflow
only shows where FP16 values are materialised between nodes -- here the attention logits pass through a
Transpose/Reshape (native FP16 kernels) before the softmax, as in multi-head attention. That is the
situation of a strongly typed TensorRT engine, which keeps every tensor in the type the ONNX declares.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from lipt_export.export.precision.fp16 import FP16_MAX, convert_fp16
from lipt_export.export.onnx_export import export_onnx
from lipt_export.runtime.eager import TorchRunner
from lipt_export.runtime.ort import OnnxRuntimeRunner
from lipt_export.validation.inputs import natural_inputs
from lipt_export.validation.metrics import psnr
from helpers.precision_nets import AttnSR, ConvSR

SIZES = [(32, 32), (37, 51)]  # the second is not a multiple of the 8-pixel window


@pytest.fixture(scope="module")
def attn(tmp_path_factory):
    torch.manual_seed(0)
    model = AttnSR().eval()
    d = tmp_path_factory.mktemp("fp16")
    path = d / "attn.onnx"
    export_onnx(model, path, sample_hw=(32, 32))
    calib = natural_inputs([(32, 32)] * 2, seed=3)
    guarded = convert_fp16(path, d / "attn.fp16.onnx", calib_inputs=calib, keep_io_fp32=True)
    convert_fp16(path, d / "attn.unguarded.onnx", calib_inputs=calib, guard=False)
    return model, d, guarded


def test_islands_are_the_measured_overflows(attn):
    _, _, extra = attn
    islands = extra["fp16_islands"]
    ops = {i["op"] for i in islands}
    assert {"MatMul", "Softmax"} <= ops  # q.q^T and the softmax that reads it
    assert all(i["max_abs"] == "inf" or i["max_abs"] > extra["fp16_guard"]["limit"] for i in islands)
    assert extra["fp16_guard"]["peak_max_abs"] > FP16_MAX  # the overflow is real, not assumed
    assert not any(i["op"] == "Conv" for i in islands)  # convolutions stay FP16
    assert extra["fp16_io"] == "float32"


def test_unguarded_overflows_guarded_does_not(attn):
    model, d, _ = attn
    inputs = natural_inputs(SIZES, seed=11)
    ref = TorchRunner(model)
    unguarded = OnnxRuntimeRunner(d / "attn.unguarded.onnx")
    guarded = OnnxRuntimeRunner(d / "attn.fp16.onnx")
    assert any(not np.isfinite(unguarded.infer(x)).all() for x in inputs)
    for x in inputs:
        out = guarded.infer(x)
        assert np.isfinite(out).all()
        assert psnr(out, ref.infer(x)) > 50.0


def test_fp16_model_is_valid_and_mostly_fp16(attn):
    _, d, _ = attn
    model = onnx.load(str(d / "attn.fp16.onnx"))
    onnx.checker.check_model(model, full_check=True)
    halves = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert len(halves) >= 4  # the conv weights were converted


def test_conv_net_needs_no_islands_and_fp16_io(tmp_path):
    torch.manual_seed(1)
    model = ConvSR().eval()
    path = tmp_path / "conv.onnx"
    export_onnx(model, path, sample_hw=(32, 32))
    extra = convert_fp16(path, tmp_path / "conv.fp16.onnx", calib_inputs=natural_inputs([(32, 32)], seed=2),
                         keep_io_fp32=False)
    assert extra["fp16_islands"] == [] and extra["fp16_io"] == "float16"
    runner = OnnxRuntimeRunner(tmp_path / "conv.fp16.onnx")
    assert runner.input_dtype == np.float16
    ref = TorchRunner(model)
    for x in natural_inputs(SIZES, seed=5):
        assert psnr(runner.infer(x), ref.infer(x)) > 55.0


def test_guard_needs_inputs(tmp_path):
    torch.manual_seed(1)
    path = tmp_path / "conv.onnx"
    export_onnx(ConvSR().eval(), path, sample_hw=(32, 32))
    with pytest.raises(ValueError, match="calibration inputs"):
        convert_fp16(path, tmp_path / "x.onnx", calib_inputs=[])
