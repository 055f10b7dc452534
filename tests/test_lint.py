"""TensorRT-compatibility lint: rule hits on graphs that break a rule, and clean real exports."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from helpers.cli import assert_one_line_error
from lipt_export.export.lint import lint_onnx, load_support_data
from lipt_export.export.onnx_export import export_onnx
from helpers.precision_nets import ConvSR


def _model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _nchw(name, dtype=TensorProto.FLOAT, c=3):
    return helper.make_tensor_value_info(name, dtype, ["batch", c, "height", "width"])


def _rules(report):
    return {(f.severity, f.rule) for f in report.findings}


@pytest.fixture(scope="module")
def conv_onnx(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lint") / "conv.onnx"
    export_onnx(ConvSR().eval(), path, sample_hw=(32, 32))
    return path


def test_support_data_names_its_sources():
    data = load_support_data()
    assert data["sources"] and all(s["where"] for s in data["sources"])
    assert data["ops"]["Col2Im"] == {**data["ops"]["Col2Im"], "trt10": False, "trt11": False}
    assert data["ops"]["Conv"]["trt10"] and data["ops"]["DepthToSpace"]["trt11"]


def test_col2im_is_an_error():
    # nn.Fold exports to Col2Im (opset 18): TensorRT's parser has no importer for it.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 12, "L"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 8, 8])
    shape = numpy_helper.from_array(np.array([8, 8], np.int64), "image_shape")
    block = numpy_helper.from_array(np.array([2, 2], np.int64), "block_shape")
    node = helper.make_node("Col2Im", ["x", "image_shape", "block_shape"], ["y"], name="fold",
                            strides=[2, 2])
    report = lint_onnx(_model([node], [x], [y], [shape, block], opset=18))
    assert ("error", "ops") in _rules(report)
    assert report.summary()["status"] == "errors"
    assert any(f.node == "fold" and "Col2Im" in f.reason for f in report.errors)


def test_asymmetric_uint8_qdq_is_an_error(conv_onnx, tmp_path):
    # The CPU-style recipe: asymmetric UINT8 activations (zero point != 0), INT32 biases.
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from lipt_export.export.precision.calibration.ranges import ListReader
    from lipt_export.validation.inputs import natural_inputs

    out = tmp_path / "u8.onnx"
    quantize_static(str(conv_onnx), str(out), ListReader("lr", natural_inputs([(24, 24)] * 2, seed=1)),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8)
    report = lint_onnx(out)
    reasons = " ".join(f.reason for f in report.errors)
    assert "zero point" in reasons and "UINT8" in reasons
    assert report.summary()["errors"] == len(report.errors) > 0


def test_clean_real_export(conv_onnx):
    report = lint_onnx(conv_onnx)
    assert report.errors == [] and report.summary()["status"] in ("clean", "warnings")
    assert report.opset == 17 and report.nodes > 5


def test_static_spatial_dims_are_an_error(tmp_path):
    path = tmp_path / "static.onnx"
    torch.onnx.export(ConvSR().eval(), (torch.rand(1, 3, 16, 16),), str(path), input_names=["lr"],
                      output_names=["sr"], opset_version=17, dynamo=False)
    report = lint_onnx(path)
    assert any(f.rule == "io" and "static" in f.reason for f in report.errors)


def test_resize_pad_and_qdq_rules():
    x, y = _nchw("x"), _nchw("y")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    pads = numpy_helper.from_array(np.zeros(8, np.int64), "pads")
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["r"], name="resize", mode="cubic",
                              coordinate_transformation_mode="tf_crop_and_resize"),
             helper.make_node("Pad", ["r", "pads"], ["p"], name="pad", mode="foo"),
             helper.make_node("Identity", ["p"], ["y"], name="out")]
    report = lint_onnx(_model(nodes, [x], [y], [scales, pads], opset=19))
    bad = {f.node for f in report.errors}
    assert {"resize", "pad"} <= bad
    # cubic with half_pixel (SMSR's bicubic skip) is accepted: the importer maps it to kCUBIC
    ok = [helper.make_node("Resize", ["x", "", "scales"], ["y"], name="resize", mode="cubic",
                           coordinate_transformation_mode="half_pixel", cubic_coeff_a=-0.75)]
    assert lint_onnx(_model(ok, [x], [y], [scales])).errors == []


def test_negative_scale_and_activation_per_channel_are_errors():
    x, y = _nchw("x"), _nchw("y")
    s_neg = numpy_helper.from_array(np.array(-0.1, np.float32), "s_neg")
    s_vec = numpy_helper.from_array(np.array([0.1, 0.1, 0.1], np.float32), "s_vec")
    zp = numpy_helper.from_array(np.array(0, np.int8), "zp")
    zp3 = numpy_helper.from_array(np.zeros(3, np.int8), "zp3")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_neg", "zp"], ["q"], name="q_neg"),
             helper.make_node("DequantizeLinear", ["q", "s_neg", "zp"], ["d"], name="dq_neg"),
             helper.make_node("QuantizeLinear", ["d", "s_vec", "zp3"], ["q2"], name="q_chan", axis=1),
             helper.make_node("DequantizeLinear", ["q2", "s_vec", "zp3"], ["y"], name="dq_chan", axis=1)]
    report = lint_onnx(_model(nodes, [x], [y], [s_neg, s_vec, zp, zp3]))
    bad = {f.node for f in report.errors}
    assert {"q_neg", "dq_neg", "q_chan", "dq_chan"} <= bad


def test_conv_with_one_quantized_input_is_a_finding():
    x, y = _nchw("x"), _nchw("y", c=4)
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    s = numpy_helper.from_array(np.array(0.02, np.float32), "s")
    zp = numpy_helper.from_array(np.array(0, np.int8), "zp")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["d"], name="dq"),
             helper.make_node("Conv", ["d", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    report = lint_onnx(_model(nodes, [x], [y], [w, s, zp]))
    assert any(f.node == "conv" and f.rule == "qdq-pairs" for f in report.findings)


def test_cli_exit_codes(conv_onnx, tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 12, "L"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 8, 8])
    inits = [numpy_helper.from_array(np.array([8, 8], np.int64), n) for n in ("a", "b")]
    bad = tmp_path / "bad.onnx"
    onnx.save(_model([helper.make_node("Col2Im", ["x", "a", "b"], ["y"], name="fold")], [x], [y], inits, 18),
              str(bad))
    exe = [sys.executable, "-m", "lipt_export.cli", "lint"]
    run = lambda *a: subprocess.run(exe + [str(v) for v in a], capture_output=True, text=True)  # noqa: E731
    clean = run(conv_onnx, "--json", tmp_path / "lint.json")
    assert clean.returncode == 0 and (tmp_path / "lint.json").is_file()
    failing = run(bad)
    assert failing.returncode == 1 and "Col2Im" in failing.stdout and "severity" in failing.stdout
    assert_one_line_error(run(tmp_path / "nope.onnx"), "does not exist")
