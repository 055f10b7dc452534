"""The BF16/FP8 rungs through the CLI on LIPT-tiny x2 (demo weights, synthetic calibration images): TensorRT-RTX engines
per target (FP8 skipped for 8.6 with the reason, never silently), the precision audit, the manifest records, and every
consumer (verify, upscale, eval, triton) on the new files; `--precision auto` printing one line per target."""
from __future__ import annotations

import json

import numpy as np
import pytest

from helpers.cli import assert_one_line_error, run_cli
from helpers.precision_nets import synthetic_image_folder
from lipt_export.manifest import read_manifest
from lipt_export.runtime.trt import tensorrt_rtx_status

RTX_OK, RTX_WHY = tensorrt_rtx_status()
TINY = ["--model", "lipt", "--variant", "tiny", "--scale", 2, "--no-lint"]
CALIB = ["--calib-count", 8, "--calib-size", 32]


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    return synthetic_image_folder(tmp_path_factory.mktemp("calib") / "images", count=5, size=96)


@pytest.fixture(scope="module")
def ladder(tmp_path_factory, calib):
    """--bf16 --fp8 with TensorRT-RTX engines for 8.6 and 8.9 (ONNX only when TensorRT-RTX is missing)."""
    out = tmp_path_factory.mktemp("ladder")
    backend = ["--backend", "tensorrt-rtx", "--compute-capabilities", "8.6,8.9", "--shapes", "16x16:32x32:48x48"] \
        if RTX_OK else ["--backend", "onnxruntime"]
    res = run_cli(*TINY, "--bf16", "--fp8", "--calib", calib, *CALIB, *backend, "--out", out)
    assert res.exit_code == 0, res.output
    return out / "lipt-tiny-x2", res.output


def test_manifest_records_each_file_and_its_opset(ladder):
    d, _ = ladder
    man = read_manifest(d)
    onnx = {e.precision: e for e in man.select("onnx")}
    assert sorted(onnx) == ["bf16", "fp32", "fp8"]
    assert (onnx["fp32"].opset, onnx["bf16"].opset, onnx["fp8"].opset) == (17, 22, 19)
    assert man.export["opsets"] == {"model.onnx": 17, "model.bf16.onnx": 22, "model.fp8.onnx": 19}
    bf16, fp8 = onnx["bf16"].bf16, onnx["fp8"].fp8
    assert bf16.opset == 22 and bf16.budget_met and "synthetic" not in bf16.report["heldout"]
    assert fp8.key == "fp8" and fp8.budget_met and fp8.psnr_drop_db <= 0.10
    assert onnx["bf16"].parity.psnr_db > 40 and onnx["fp8"].parity.finite
    assert "BF16 (model.bf16.onnx)" in (d / "report.md").read_text() and "FP8 (model.fp8.onnx)" in \
        (d / "report.md").read_text()
    # the FP8 calibration sidecar is the export's own file: --overwrite may replace the folder
    from lipt_export.manifest import replaceable_problem

    assert (d / "model.fp8.calib.json").is_file() and replaceable_problem(d) is None


@pytest.mark.skipif(not RTX_OK, reason=RTX_WHY)
def test_engines_per_target_with_the_skip_said(ladder):
    d, output = ladder
    man = read_manifest(d)
    engines = {e.precision: e for e in man.select("tensorrt")}
    assert sorted(engines) == ["bf16", "fp32", "fp8"]
    assert engines["bf16"].engine.compute_capabilities == ("8.6", "8.9")
    assert engines["fp8"].engine.compute_capabilities == ("8.9",)
    ((cc, why),) = engines["fp8"].engine.skipped
    assert cc == "8.6" and "8.9 or later" in why
    assert "model.fp8.engine: not built for 8.6: FP8 needs compute capability 8.9" in output
    for precision in ("bf16", "fp8"):
        e = engines[precision]
        assert e.details["parser"]["errors"] == []
        audit = e.engine.audit
        assert audit.shares[precision] >= 0.8, audit  # the rest: the recorded islands / fallbacks
    islands = set(man.select("onnx", "bf16")[0].bf16.fp32_compute_nodes)
    assert set(engines["bf16"].engine.audit.fp32_layers) <= islands


def test_consumers_run_the_new_files(ladder, tmp_path):
    d, _ = ladder
    res = run_cli("verify", d, "--json", tmp_path / "v.json")
    rows = {r["artifact"]: r for r in json.loads((tmp_path / "v.json").read_text())["rows"]}
    assert rows["model.bf16.onnx"]["status"] == "pass" and rows["model.fp8.onnx"]["status"] == "pass", res.output
    x = (np.random.default_rng(0).random((1, 3, 20, 23))).astype(np.float32)
    np.save(tmp_path / "in.npy", x)
    from PIL import Image

    Image.fromarray((x[0].transpose(1, 2, 0) * 255).astype(np.uint8)).save(tmp_path / "in.png")
    for precision in ("bf16", "fp8"):
        out = tmp_path / f"out_{precision}.png"
        res = run_cli("upscale", d, tmp_path / "in.png", out, "--precision", precision)
        assert res.exit_code == 0, res.output
        assert Image.open(out).size == (46, 40)
    res = run_cli("bench", d, "--no-eager", "--sizes", "24x24", "--runs", 1, "--warmup", 0, "--runtimes",
                  "onnxruntime", "--json", tmp_path / "bench.json")
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert {"bf16", "fp8"} <= {r.get("precision") for r in rows}, rows
    res = run_cli("triton", d, "--repo", tmp_path / "repo", "--precision", "bf16")
    assert_one_line_error(res, "model.bf16.onnx", "bfloat16 Conv")
    res = run_cli("triton", d, "--repo", tmp_path / "repo", "--precision", "fp8", "--format", "onnx")
    assert res.exit_code == 0, res.output
    config = next((tmp_path / "repo").glob("*/config.pbtxt")).read_text()
    assert 'key: "graph_optimization_level" value: { string_value: "basic" }' in config


def test_precision_auto_prints_a_choice_per_target(tmp_path, calib):
    """One export for auto and for "a target that runs no FP8 gets no FP8 engine": targets 8.0 and 8.6 run no FP8,
    so no fp8 engine is built and the summary says why; each target's choice is printed."""
    engines = ["--backend", "tensorrt-rtx", "--shapes", "16x16:32x32:32x32"] if RTX_OK else ["--backend", "onnxruntime"]
    res = run_cli(*TINY, "--precision", "auto", "--max-psnr-drop", "0.05", "--calib", calib, *CALIB, *engines,
                  "--compute-capabilities", "8.0,8.6", "--out", tmp_path)
    assert res.exit_code == 0, res.output
    man = read_manifest(tmp_path / "lipt-tiny-x2")
    auto = man.precision_auto
    assert sorted(e.precision for e in man.select("onnx")) == ["bf16", "fp16", "fp32", "fp8", "int8"]
    assert set(auto.drops_db) == {"fp32", "fp16", "bf16", "int8", "fp8"} and auto.max_psnr_drop_db == 0.05
    by = {t.compute_capability: t for t in auto.targets}
    assert sorted(by) == ["8.0", "8.6"] and not any("fp8" in t.candidates for t in auto.targets)
    for t in auto.targets:
        assert t.precision == "fp32" or auto.drops_db[t.precision] <= 0.05
        assert f"  {t.compute_capability}: {t.precision}" in res.output
    assert "precision auto (budget 0.05 dB" in res.output and "INT8 WoQ GEMM" in res.output
    if RTX_OK:
        assert not man.select("tensorrt", "fp8")
        skips = {x["precision"]: x for x in man.engines_skipped}
        assert skips["fp8"]["compute_capabilities"] == ["8.0", "8.6"] and "8.9 or later" in skips["fp8"]["why"]
        assert "no fp8 engine: FP8 needs compute capability 8.9" in res.output
        for t in auto.targets:  # each target's engine is the chosen precision
            (engine,) = man.select("tensorrt", t.precision)
            assert t.compute_capability in engine.engine.compute_capabilities


@pytest.mark.skipif(not RTX_OK, reason=RTX_WHY)
def test_smsr_bf16_engine_keeps_its_deconvolutions_fp32(tmp_path):
    """TensorRT-RTX 1.7 builds no BF16 deconvolution: SMSR's ConvTranspose stay FP32 islands, said why, and the
    engine builds with the rest in BF16 (no --calib: the islands are measured on synthetic pairs)."""
    res = run_cli("--model", "smsr", "--scale", 2, "--no-lint", "--bf16", "--calib-size", 32, "--backend",
                  "tensorrt-rtx", "--compute-capabilities", "8.9", "--shapes", "16x16:32x32:32x32", "--out", tmp_path)
    assert res.exit_code == 0, res.output
    man = read_manifest(tmp_path / "smsr-base-x2")
    bf16 = man.select("onnx", "bf16")[0].bf16
    deconv = [i for i in bf16.islands if i.op == "ConvTranspose"]
    assert deconv and all("deconvolution" in i.reason for i in deconv)
    assert "synthetic" in bf16.report["heldout"]
    (engine,) = man.select("tensorrt", "bf16")
    audit = engine.engine.audit
    assert audit.shares["bf16"] >= 0.8 and set(audit.fp32_layers) <= set(bf16.fp32_compute_nodes)
