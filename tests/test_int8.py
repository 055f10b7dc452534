"""INT8 explicit quantization on a small trained conv SR net: TensorRT-style Q/DQ, the calibration cache,
held-out separation and the sensitivity-driven fallback. Calibration images are synthetic PNGs written
to a temp folder, so these tests do not need ../shared (the SMSR acceptance test does)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from lipt_export.errors import CalibrationDataError
from lipt_export.export.precision.calibration.data import load_calibration_set
from lipt_export.export.precision.int8 import QUANT_OP_TYPES, quantize_int8
from lipt_export.export.lint import lint_onnx
from lipt_export.export.onnx_export import export_onnx
from lipt_export.fileio import sha256_file
from lipt_export.runtime.ort import OnnxRuntimeRunner
from lipt_export.validation.inputs import natural_inputs
from lipt_export.validation.metrics import psnr
from helpers.precision_nets import ConvSR, fit_identity_sr, synthetic_image_folder



@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("int8")
    model = fit_identity_sr(ConvSR(), steps=60)
    fp32 = d / "conv.onnx"
    export_onnx(model, fp32, sample_hw=(32, 32))
    images = synthetic_image_folder(d / "images", count=5)
    kwargs = dict(calib_dir=images, count=8, size=24, scale=2, cache_dir=d / "cache")
    first = quantize_int8(fp32, d / "conv.int8.onnx", **kwargs)["int8"]
    return d, fp32, images, kwargs, first


def test_qdq_is_tensorrt_style(setup):
    d, _, _, _, info = setup
    model = onnx.load(str(d / "conv.int8.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for node in qdq:
        zp = inits[node.input[2]]
        assert zp.dtype == np.int8 and not zp.any()  # symmetric S8
        assert (inits[node.input[1]] > 0).all()
    weights = [n for n in qdq if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert weights and all(inits[n.input[1]].size > 1 for n in weights)  # per-channel weights
    quantized = [n for n in model.graph.node if n.op_type in QUANT_OP_TYPES]
    assert info["quantized_nodes"] == len(quantized) == 4
    assert lint_onnx(d / "conv.int8.onnx").errors == []


def test_int8_is_accurate_and_runs_at_any_size(setup):
    d, fp32, _, _, info = setup
    ref, q = OnnxRuntimeRunner(fp32), OnnxRuntimeRunner(d / "conv.int8.onnx")
    for x in natural_inputs([(32, 32), (37, 51)], seed=4):
        assert psnr(q.infer(x), ref.infer(x)) > 35.0
    assert info["budget_met"] and info["psnr_drop_db"] <= 0.10
    assert info["sensitivity_top"] and all(r["output_psnr_db_alone"] > 20 for r in info["sensitivity_top"])


def test_calibration_cache_is_reused(setup):
    d, fp32, _, kwargs, first = setup
    assert first["cache"] == "miss"
    second = quantize_int8(fp32, d / "again.int8.onnx", **kwargs)["int8"]
    assert second["cache"] == "hit" and second["calibration"]["key"] == first["calibration"]["key"]
    assert sha256_file(d / "again.int8.onnx") == sha256_file(d / "conv.int8.onnx")
    assert (d / "conv.int8.calib.json").is_file()  # ranges copied beside the artifact
    third = quantize_int8(fp32, d / "minmax-other-data.onnx", **{**kwargs, "count": 6})["int8"]
    assert third["cache"] == "miss"  # different data -> different key


def test_heldout_images_are_not_calibration_images(setup):
    _, _, images, _, info = setup
    cal = info["calibration"]
    assert cal["heldout_images"] and not set(cal["heldout_images"]) & set(cal["calibration_images"])
    data = load_calibration_set(images, count=4, size=16, scale=2, progress=False)
    assert data.heldout_hr[0].shape[2:] == tuple(2 * s for s in data.heldout_lr[0].shape[2:])


def test_impossible_budget_falls_back_and_says_so(setup):
    d, fp32, _, kwargs, _ = setup
    info = quantize_int8(fp32, d / "strict.int8.onnx", **{**kwargs, "max_psnr_drop": -5.0, "max_fallback": 2}
                         )["int8"]
    assert not info["budget_met"]
    kept = {n["node"] for n in info["nodes_in_float"]}
    assert 1 <= len(kept) <= 2
    model = onnx.load(str(d / "strict.int8.onnx"))
    dq_out = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    for node in model.graph.node:
        if node.name in kept:  # the fallen-back nodes read float tensors
            assert not any(i in dq_out for i in node.input)
    assert info["quantized_nodes"] == 4 - len(kept)
    assert lint_onnx(d / "strict.int8.onnx").errors == []


def test_bad_calibration_folder(tmp_path):
    with pytest.raises(CalibrationDataError, match="does not exist"):
        load_calibration_set(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationDataError, match="no images"):
        load_calibration_set(tmp_path / "empty")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_bytes(b"not a png")
    with pytest.raises(CalibrationDataError, match="cannot read"):
        load_calibration_set(tmp_path / "junk", progress=False)
