"""LIPT precision acceptance with the LIPT-tiny x2 checkpoint trained by benchmarks/train_lipt_tiny.py.

The checkpoint (benchmarks/results/lipt_tiny_x2.pt) is git-ignored and takes ~5 CPU minutes to train
(``.venv/bin/python benchmarks/train_lipt_tiny.py --minutes 5``); without it (fresh clone, CI) the module
uses LIPT's calibrated ``init_for_tests`` weights instead. ../shared is needed (calibration images, Set5).
Trained weights matter: with random init LIPT's unscaled q.q^T softmax is near-argmax and any precision
comparison measures chaos, not the conversion.

- FP16: finite, and Set5 PSNR-Y within 0.05 dB of the FP32 ONNX on the same LR inputs;
- INT8: produced (S8S8 Q/DQ, calibrated on the shared calibration images) and lint-clean;
- FP32/FP16/INT8 all lint with zero errors.
"""
from __future__ import annotations

from pathlib import Path

import pytest


CHECKPOINT = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "lipt_tiny_x2.pt"
FP16_MAX_DELTA = 0.05

pytestmark = [pytest.mark.slow, pytest.mark.shared]


@pytest.fixture(scope="module")
def lipt_artifacts(tmp_path_factory, shared):
    # The trained checkpoint when present (the documented figures); otherwise (a fresh clone, CI) LIPT's
    # calibrated test init, whose attention logits are moderate too, so the comparison is still meaningful.
    weights = str(CHECKPOINT) if CHECKPOINT.is_file() else None
    set5, calib = shared.require("datasets/Set5", "datasets/calib_urban100_001-010")
    shared.require("datasets/Set5/LR_bicubic/X2")
    from lipt_export.export.precision.fp16 import convert_fp16
    from lipt_export.export.precision.int8 import quantize_int8
    from lipt_export.export.onnx_export import export_onnx
    from lipt_export.models.loading import prepare_model
    from lipt_export.export.simplify import simplify_onnx
    from lipt_export.models.io import UnitRangeIO
    from lipt_export.models.registry import get_spec
    from lipt_export.validation.inputs import natural_inputs

    spec = get_spec("lipt")
    deploy = prepare_model(spec, "tiny", 2, weights, seed=0).deploy
    d = tmp_path_factory.mktemp("lipt_precision")
    export_onnx(UnitRangeIO(deploy, spec.rgb_range).eval(), d / "raw.onnx", sample_hw=(64, 64))
    simplify_onnx(d / "raw.onnx", d / "model.onnx")
    fp16 = convert_fp16(d / "model.onnx", d / "model.fp16.onnx",
                        calib_inputs=natural_inputs([(64, 64)] * 4, calib, seed=1), keep_io_fp32=True)
    int8 = quantize_int8(d / "model.onnx", d / "model.int8.onnx", calib_dir=calib, count=8, size=48, scale=2,
                         cache_dir=d / "cache")["int8"]
    return {"dir": d, "fp16": fp16, "int8": int8, "set5": set5}


def test_fp16_is_finite_and_within_0_05_db(lipt_artifacts):
    from lipt_export.validation.evaluate import evaluate
    from lipt_export.runtime.ort import OnnxRuntimeRunner

    d = lipt_artifacts["dir"]
    runners = [OnnxRuntimeRunner(d / "model.onnx", name="fp32"),
               OnnxRuntimeRunner(d / "model.fp16.onnx", name="fp16", precision="fp16"),
               OnnxRuntimeRunner(d / "model.int8.onnx", name="int8", precision="int8")]
    report = evaluate(runners, lipt_artifacts["set5"], 2, progress=False)  # raises on inf/NaN output
    res = {r["artifact"]: r for r in report["results"]}
    print(f"\nLIPT-tiny x2 Set5 PSNR-Y: fp32 {res['fp32']['psnr_y']:.4f}, fp16 {res['fp16']['psnr_y']:.4f} "
          f"({res['fp16']['delta_psnr_y']:+.4f}), int8 {res['int8']['psnr_y']:.4f} "
          f"({res['int8']['delta_psnr_y']:+.4f}); FP32 islands {len(lipt_artifacts['fp16']['fp16_islands'])}, "
          f"peak |x| {lipt_artifacts['fp16']['fp16_guard']['peak_max_abs']:.1f}; INT8 nodes in float "
          f"{len(lipt_artifacts['int8']['nodes_in_float'])}/{lipt_artifacts['int8']['quantizable_nodes']}")
    assert abs(res["fp16"]["delta_psnr_y"]) <= FP16_MAX_DELTA


def test_int8_is_produced_and_every_artifact_lints_clean(lipt_artifacts):
    from lipt_export.export.lint import lint_onnx

    d, q = lipt_artifacts["dir"], lipt_artifacts["int8"]
    assert q["quantized_nodes"] > 0 and q["scheme"].startswith("S8S8")
    for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx"):
        report = lint_onnx(d / name)
        assert report.errors == [], (name, [f.as_dict() for f in report.errors])
