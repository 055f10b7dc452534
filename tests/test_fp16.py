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


class _Underflowing(torch.nn.Module):
    """An SR-shaped net whose fp16 form loses precision without any overflow: the image passes through values
    near 1e-6, fp16's subnormal range (spacing 6e-8, a few percent of the signal): nothing for an FP32 island."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3)[:, :, None, None] * 1e-6)

    def forward(self, x):
        y = self.conv(x).transpose(2, 3)  # a Transpose materialises the tiny values in fp16 (see the module doc)
        return torch.nn.functional.interpolate((y * 1e6).transpose(2, 3), scale_factor=2, mode="nearest")


def test_a_large_fp16_error_is_flagged_in_the_summary(tmp_path):
    from lipt_export.export.summary import flag_lines, render_report
    from lipt_export.manifest import ArtifactEntry, IOContract, Manifest, ModelInfo
    from lipt_export.validation.parity import FLAG_REL_L2, compare, precision_flag

    model = _Underflowing().eval()
    path = tmp_path / "model.onnx"
    export_onnx(model, path, sample_hw=(32, 32))
    extra = convert_fp16(path, tmp_path / "model.fp16.onnx", calib_inputs=natural_inputs([(32, 32)], seed=1))
    assert extra["fp16_islands"] == []  # nothing overflows: the loss is precision, not range
    runners = [OnnxRuntimeRunner(tmp_path / p, name=p, precision=q) for p, q in
               (("model.onnx", "fp32"), ("model.fp16.onnx", "fp16"))]
    fp32, fp16 = compare(TorchRunner(model), runners, natural_inputs(SIZES, seed=4))
    assert fp16.finite and fp16.rel_l2 > FLAG_REL_L2 and precision_flag(fp32) is None
    flag = precision_flag(fp16)
    assert flag and f"rel-L2 {fp16.rel_l2:.1e}" in flag
    entries = [ArtifactEntry.for_file(tmp_path / p.artifact, tmp_path, fmt="onnx", precision=p.precision,
                                      parity=p.as_dict(), **({"flag": precision_flag(p)} if precision_flag(p) else {}))
               for p in (fp32, fp16)]
    man = Manifest.new(model=ModelInfo("toy", "x", 2, {"weights": {}}), io=IOContract(scale=2),
                       export={"exporter": "torchscript", "opset": 17,
                               "simplifier": {"tool": "none", "nodes_before": 1, "nodes_after": 1}})
    man = man.with_artifacts(entries)
    assert flag_lines(man) == [f"FLAGGED model.fp16.onnx: {flag}"]
    assert f"**FLAGGED model.fp16.onnx: {flag}**" in render_report(man)
