"""Precision acceptance with the official SMSR x2 checkpoint (../shared; skipped when absent).

One real export (`run_export` with --fp16 --int8, calibrated on the shared Urban100 calibration images
only) and one `lipt-export eval` of eager + every artifact on Set5 (shared LR files):
- FP16: |delta PSNR-Y| <= 0.01 dB versus eager;
- INT8: delta PSNR-Y >= -0.10 dB versus eager, with the number of nodes kept in float reported;
- BF16: |delta PSNR-Y| <= 0.02 dB versus eager (its FP32 islands measured on the held-out images);
- FP8 (E4M3 Q/DQ): delta PSNR-Y >= -0.10 dB versus eager, with INT8's fallback and budget;
- every artifact lints with zero errors.
The held-out images that drive the fallback are calibration-folder images excluded from the ranges;
Set5 is never seen by calibration or by the fallback search.
"""
from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from lipt_export.cli import main
from lipt_export.export.pipeline import ExportConfig, run_export

FP16_MAX_DELTA = 0.01
INT8_MAX_DROP = 0.10
BF16_MAX_DELTA = 0.02
FP8_MAX_DROP = 0.10

pytestmark = [pytest.mark.slow, pytest.mark.shared]


@pytest.fixture(scope="module")
def precision(tmp_path_factory, shared):
    ckpt, set5, calib, _ = shared.require("checkpoints/smsr/SMSR_x2_official.pt", "datasets/Set5",
                                          "datasets/calib_urban100_001-010", "datasets/Set5/LR_bicubic/X2")
    out = tmp_path_factory.mktemp("smsr_precision")
    t0 = time.perf_counter()
    result = run_export(ExportConfig(model="smsr", scale=2, weights=str(ckpt), out=str(out), fp16=True, int8=True,
                                     bf16=True, fp8=True, backend="onnxruntime",
                                     calib=str(calib), calib_count=16, calib_size=64,
                                     parity_sizes=((48, 48), (37, 51))))
    t_export = time.perf_counter() - t0
    report_path = out / "eval.json"
    res = CliRunner().invoke(main, ["eval", "--model", "smsr", "--scale", "2", "--weights", str(ckpt),
                                    "--dataset", str(set5), "--artifact", str(result.out_dir),
                                    "--json", str(report_path)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    report = json.loads(report_path.read_text())
    by_precision = {r["precision"]: r for r in report["results"][1:]}
    eager = report["results"][0]
    int8 = next(a for a in result.manifest.to_dict()["artifacts"] if a["precision"] == "int8")["int8"]
    print(f"\nexport+fp16+bf16+int8+fp8 {t_export:.1f}s; Set5 PSNR-Y eager {eager['psnr_y']:.4f}, "
          + ", ".join(f"{p} {r['psnr_y']:.4f} ({r['psnr_y'] - eager['psnr_y']:+.4f})" for p, r in by_precision.items())
          + f"; INT8 nodes in float {len(int8['nodes_in_float'])}/{int8['quantizable_nodes']}, held-out drop "
            f"{int8['psnr_drop_db']:.3f} dB (all-INT8 {int8['psnr_drop_all_int8_db']:.3f})")
    return {"export": result, "eager": eager, "results": by_precision, "calib": calib, "int8": int8}


def test_fp16_matches_eager_on_set5(precision):
    fp16, eager = precision["results"]["fp16"], precision["eager"]
    assert abs(fp16["psnr_y"] - eager["psnr_y"]) <= FP16_MAX_DELTA, (fp16["psnr_y"], eager["psnr_y"])


def test_int8_within_budget_on_set5(precision):
    int8, eager = precision["results"]["int8"], precision["eager"]
    assert eager["psnr_y"] - int8["psnr_y"] <= INT8_MAX_DROP, (int8["psnr_y"], eager["psnr_y"])
    q = precision["int8"]
    assert q["budget_met"] and q["psnr_drop_db"] <= INT8_MAX_DROP
    assert 0 <= len(q["nodes_in_float"]) <= q["quantizable_nodes"] // 2
    assert q["quantized_nodes"] == q["quantizable_nodes"] - len(q["nodes_in_float"])


def test_bf16_matches_eager_on_set5(precision):
    bf16, eager = precision["results"]["bf16"], precision["eager"]
    assert abs(bf16["psnr_y"] - eager["psnr_y"]) <= BF16_MAX_DELTA, (bf16["psnr_y"], eager["psnr_y"])
    entry = precision["export"].manifest.select("onnx", "bf16")[0]
    assert entry.opset == 22 and entry.bf16.budget_met


def test_fp8_within_budget_on_set5(precision):
    fp8, eager = precision["results"]["fp8"], precision["eager"]
    assert eager["psnr_y"] - fp8["psnr_y"] <= FP8_MAX_DROP, (fp8["psnr_y"], eager["psnr_y"])
    q = precision["export"].manifest.select("onnx", "fp8")[0].fp8
    assert q.budget_met and len(q.nodes_in_float) <= q.report["quantizable_nodes"] // 2


def test_calibrated_on_the_shared_calibration_images_only(precision):
    cal = precision["int8"]["calibration"]
    assert cal["folder"] == str(precision["calib"]) and cal["mode"] == "hr"
    assert not set(cal["heldout_images"]) & set(cal["calibration_images"])
    assert all(name.startswith("img_") for name in cal["calibration_images"] + cal["heldout_images"])


def test_every_artifact_lints_clean(precision):
    man = precision["export"].manifest.to_dict()
    assert [a["precision"] for a in man["artifacts"]] == ["fp32", "fp16", "bf16", "int8", "fp8"]
    for a in man["artifacts"]:
        assert a["lint"]["errors"] == 0, (a["path"], a["lint"]["findings"])
    report = (precision["export"].out_dir / "report.md").read_text()
    assert "Sensitivity" in report and "INT8" in report
    assert (precision["export"].out_dir / "model.int8.calib.json").is_file()
