"""The precision ladder without ../shared: BF16 (opset 22, measured FP32 islands) and FP8 E4M3 Q/DQ (opset 19) on
small nets, how ONNX Runtime runs them (BF16 widened, FP8 without the extended optimisations that break it), the
per-target skip rule, --precision auto's choice, and the one-line errors. Real onnx/ORT/OpenVINO throughout."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from helpers.cli import assert_one_line_error, run_cli
from helpers.precision_nets import AttnSR, ConvSR, fit_identity_sr, synthetic_image_folder
from lipt_export.catalog import AUTO_ORDER, PRECISIONS, artifact_name, precision_skip_reason
from lipt_export.export.graph import tensor_types
from lipt_export.export.lint import lint_onnx
from lipt_export.export.onnx_export import export_onnx
from lipt_export.export.precision.auto import choose, summary_lines
from lipt_export.export.precision.bf16 import convert_bf16
from lipt_export.export.precision.bf16_graph import compute_nodes, rounding_model
from lipt_export.export.precision.calibration.heldout import heldout_pairs
from lipt_export.export.precision.fp8 import quantize_fp8
from lipt_export.runtime.ort import OnnxRuntimeRunner, ort_session
from lipt_export.validation.inputs import natural_inputs
from lipt_export.validation.metrics import psnr

OPENVINO = importlib.util.find_spec("openvino") is not None


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    d = tmp_path_factory.mktemp("ladder")
    conv, attn = d / "conv.onnx", d / "attn.onnx"
    export_onnx(fit_identity_sr(ConvSR(), steps=40), conv, sample_hw=(32, 32))
    export_onnx(AttnSR(logit_gain=3.0).eval(), attn, sample_hw=(32, 32))
    images = synthetic_image_folder(d / "images", count=5)
    return d, conv, attn, images


def test_names_and_targets():
    assert PRECISIONS == ("fp32", "fp16", "bf16", "int8", "fp8")
    assert artifact_name("onnx", "bf16") == "model.bf16.onnx" and artifact_name("tensorrt", "fp8") == "model.fp8.engine"
    assert precision_skip_reason("8.6", "fp8") and "8.9" in precision_skip_reason("8.6", "fp8")
    assert precision_skip_reason("7.5", "bf16") and precision_skip_reason("8.0", "bf16") is None
    assert all(precision_skip_reason(cc, p) is None for cc in ("8.9", "12.0") for p in PRECISIONS)


def test_bf16_file_is_opset22_checked_and_matches_its_rounding_model(nets):
    d, _, attn, images = nets
    held = heldout_pairs(attn, 2, calib=str(images), count=8, size=24)
    info = convert_bf16(attn, d / "attn.bf16.onnx", held=held, max_psnr_drop=0.01,
                        artifact_runner=lambda p: OnnxRuntimeRunner(p, precision="bf16"))["bf16"]
    model = onnx.load(str(d / "attn.bf16.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert info["opset"] == 22 == next(o.version for o in model.opset_import if o.domain == "")
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "MatMul")]
    bf16_weights = {i.name for i in model.graph.initializer if i.data_type == TensorProto.BFLOAT16}
    assert any(n.input[1] in bf16_weights for n in convs)  # real bfloat16 weights, not casts around FP32
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # I/O stays float32
    # ONNX Runtime runs the file widened: the drop it measures is the rounding model's (same stored values)
    assert abs(info["artifact"]["psnr_drop_db"] - info["psnr_drop_db"]) < 0.02
    assert info["budget_met"] and info["psnr_drop_db"] <= 0.01
    islands = {i["node"] for i in info["islands"]}
    assert set(info["fp32_compute_nodes"]) <= islands
    ref, bf = OnnxRuntimeRunner(attn), OnnxRuntimeRunner(d / "attn.bf16.onnx", precision="bf16")
    for x in natural_inputs([(32, 32), (37, 51)], seed=3):
        assert psnr(bf.infer(x), ref.infer(x)) > 40.0


def test_rounding_model_switches_bf16_per_node(nets):
    _, conv, _, _ = nets
    model = onnx.load(str(conv))
    types = tensor_types(model)
    nodes, forced = compute_nodes(model, types, 22)
    assert nodes and not forced
    switch = ort_session(rounding_model(model, types, [[n.name] for n in nodes], "sel"))
    x = natural_inputs([(24, 24)], seed=1)[0]
    ref = ort_session(model).run(None, {"lr": x})[0]
    off = switch.run(None, {"lr": x, "sel": np.zeros(len(nodes), bool)})[0]
    on = switch.run(None, {"lr": x, "sel": np.ones(len(nodes), bool)})[0]
    assert np.abs(off - ref).max() < 1e-5  # nothing switched: the FP32 graph (up to fusion order)
    assert 0 < np.abs(on - ref).max() < 0.05  # bfloat16 storage: small, not zero


@pytest.mark.skipif(not OPENVINO, reason="OpenVINO is not installed")
def test_openvino_runs_the_bf16_file(nets):
    from lipt_export.runtime.loader import onnx_runner

    d, _, attn, _ = nets
    if not (d / "attn.bf16.onnx").is_file():
        pytest.skip("needs the BF16 file of the test above")
    runner = onnx_runner(d / "attn.bf16.onnx", "openvino-f32", precision="bf16")
    x = natural_inputs([(32, 32)], seed=5)[0]
    assert psnr(runner.infer(x), OnnxRuntimeRunner(attn).infer(x)) > 30.0


def test_fp8_is_e4m3_qdq_with_its_budget(nets):
    d, conv, _, images = nets
    info = quantize_fp8(conv, d / "conv.fp8.onnx", calib_dir=images, count=8, size=24, scale=2,
                        cache_dir=d / "cache")["fp8"]
    model = onnx.load(str(d / "conv.fp8.onnx"))
    assert next(o.version for o in model.opset_import if o.domain == "") == 19
    inits = {i.name: i for i in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for node in qdq:
        assert inits[node.input[2]].data_type == TensorProto.FLOAT8E4M3FN
        assert not numpy_helper.to_array(inits[node.input[2]]).astype(np.float32).any()
        assert (numpy_helper.to_array(inits[node.input[1]]) > 0).all()
    weights = [n for n in qdq if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert weights and all(inits[n.input[0]].data_type == TensorProto.FLOAT8E4M3FN for n in weights)
    assert all(numpy_helper.to_array(inits[n.input[1]]).size > 1 for n in weights)  # per-channel
    assert info["budget_met"] and info["psnr_drop_db"] <= 0.10 and "E4M3" in info["scheme"]
    assert lint_onnx(d / "conv.fp8.onnx").errors == []
    ref, q = OnnxRuntimeRunner(conv), OnnxRuntimeRunner(d / "conv.fp8.onnx", precision="fp8")
    for x in natural_inputs([(32, 32), (37, 51)], seed=4):
        assert psnr(q.infer(x), ref.infer(x)) > 30.0


def test_auto_chooses_per_target_within_the_budget():
    drops = {"fp32": 0.0, "fp16": 0.001, "bf16": 0.004, "int8": 0.04, "fp8": 0.09}
    auto = choose(drops, ["8.6", "8.9", "12.0"], 0.05, "held-out images")
    by = {t.compute_capability: t for t in auto.targets}
    assert by["8.6"].precision == "int8" and "fp8" not in by["8.6"].candidates and "weight-only" in by["8.6"].why
    assert by["8.9"].precision == "int8" and "fp8 0.090" in by["8.9"].why  # FP8 over the budget: named
    assert choose(drops, ["8.9"], 0.10, "x").targets[0].precision == "fp8"
    assert choose({"fp32": 0.0, "fp16": 0.5}, ["7.5"], 0.05, "x").targets[0].precision == "fp32"
    assert choose(drops, ["7.5"], 0.05, "x").targets[0].precision == "fp16"  # 7.5 runs no INT8/BF16/FP8
    lines = summary_lines(auto)
    assert len(lines) == 5 and all(p in lines[0] for p in ("fp16", "bf16", "int8", "fp8"))
    assert "INT8 WoQ GEMM" in lines[-1]
    assert list(AUTO_ORDER) == ["fp8", "int8", "fp16", "bf16", "fp32"]
    again = type(auto).from_dict(json.loads(json.dumps(auto.to_dict())), "x")
    assert again == auto  # the manifest record round-trips


@pytest.mark.parametrize("args,needles", [
    (["--fp8"], ("FP8 needs representative images", "--calib DIR")),
    (["--precision", "auto"], ("--precision auto", "--calib DIR")),
    (["--int8", "--fp8"], ("INT8 and FP8 need",)),
    (["--fp8", "--calib", "/nonexistent/calib"], ("--calib",)),
    (["--bf16", "--max-psnr-drop", "0"], ("--max-psnr-drop",)),
])
def test_new_options_fail_in_one_line_before_any_work(args, needles, tmp_path):
    res = run_cli("--model", "lipt", "--variant", "tiny", "--scale", 2, "--backend", "onnxruntime",
                  "--out", tmp_path / "out", *args)
    assert_one_line_error(res, *needles)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_lint_accepts_weights_quantized_in_the_graph(tmp_path):
    """ModelOpt writes Q -> DQ on FP32 weight initializers (per-channel); TensorRT folds them (its FP8 SMSR file
    builds for 8.9), so the lint must not call them per-channel activations."""
    from onnx import helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    s = numpy_helper.from_array(np.full(4, 0.01, np.float32), "s")
    zp = helper.make_tensor("zp", TensorProto.FLOAT8E4M3FN, [4], vals=bytes(4), raw=True)
    xs = numpy_helper.from_array(np.array(0.02, np.float32), "xs")
    xz = helper.make_tensor("xz", TensorProto.FLOAT8E4M3FN, [], vals=bytes(1), raw=True)
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("QuantizeLinear", ["w", "s", "zp"], ["wq"], axis=0),
             helper.make_node("DequantizeLinear", ["wq", "s", "zp"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, s, zp, xs, xz])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), str(tmp_path / "m.onnx"))
    assert not [f for f in lint_onnx(tmp_path / "m.onnx").errors if f.rule == "qdq"]


def test_audit_counts_a_batched_matmul_on_dequantized_weights(tmp_path):
    """TensorRT's parser puts a shuffle between a weight's DequantizeLinear and a 3-D x 2-D MatMul (ESRT's attention
    projections); the layer still runs INT8 / FP8 and the audit must say so (it failed ESRT's INT8 engine before)."""
    from onnx import helper

    from lipt_export.engines.audit import audit_network
    from lipt_export.engines.tensorrt import parse_onnx
    from lipt_export.runtime.trt import select_tensorrt, tensorrt_rtx_status

    if not tensorrt_rtx_status()[0]:
        pytest.skip(tensorrt_rtx_status()[1])
    trt = select_tensorrt("tensorrt-rtx")
    for qtype, kind in ((TensorProto.INT8, "int8"), (TensorProto.FLOAT8E4M3FN, "fp8")):
        w = helper.make_tensor("w", qtype, [8, 8], vals=bytes(64), raw=True)
        inits = [w, numpy_helper.from_array(np.array(0.1, np.float32), "s"),
                 helper.make_tensor("z", qtype, [], vals=bytes(1), raw=True)]
        nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
                 helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
                 helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wd"]),
                 helper.make_node("MatMul", ["xd", "wd"], ["y"], name="proj")]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
        path = str(tmp_path / f"audit-{kind}.onnx")
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), path)
        audit = audit_network(trt, parse_onnx(trt, path, strongly_typed_flag=False).network)
        assert audit[f"{kind}_layers"] == ["proj"], audit


def test_bf16_islands_are_searched_when_all_bf16_misses_the_budget(nets):
    """A budget the all-BF16 file cannot meet: the nodes are ranked on the rounding model and the most sensitive kept
    FP32 until the held-out drop fits (or the cap is reached, said). The budget asks for a PSNR-Y *gain*: BF16 rounding
    can move the held-out PSNR-Y by less than the 1e-4 dB the drop is recorded with, either way, so a tiny positive
    budget is not always missed."""
    d, conv, _, images = nets
    held = heldout_pairs(conv, 2, calib=str(images), count=8, size=24)
    budget = -1.0
    info = convert_bf16(conv, d / "conv.bf16.onnx", held=held, max_psnr_drop=budget,
                        artifact_runner=lambda p: OnnxRuntimeRunner(p, precision="bf16"))["bf16"]
    assert info["sensitivity"] == "measured" and info["psnr_drop_all_bf16_db"] > budget
    assert info["islands"] and all("measured" in i["reason"] for i in info["islands"])
    assert info["search"]["search_evaluations"][0]["units_in_fp32"] == 0 and info["sensitivity_top"]
    assert info["budget_met"] is False and len(info["islands"]) >= 1
