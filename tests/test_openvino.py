"""OpenVINO as a CPU runtime: an ONNX export runs on it at an explicit inference precision, the precision it
really compiled for is named, and its output matches ONNX Runtime's (fp32 gate) at two sizes, one not a multiple
of the window; `upscale --runtime` and `bench --runtimes` use it from the command line."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from helpers.serving_toys import WindowSR, make_export
from lipt_export.cli import main
from lipt_export.errors import ArtifactError
from lipt_export import load_runner
from lipt_export.runtime.openvino import openvino_status
from lipt_export.validation.parity import FP32_REL_L2_LIMIT, rel_l2

pytestmark = pytest.mark.skipif(not openvino_status()[0], reason=openvino_status()[1])


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return make_export(tmp_path_factory.mktemp("ov"), WindowSR(2), multiple_of=8, name="win-x2")


@pytest.mark.parametrize("size", [(64, 64), (37, 51)])
def test_openvino_f32_matches_onnxruntime(export_dir, size):
    x = np.random.default_rng(0).random((1, 3, *size), dtype=np.float32)
    ref = load_runner(export_dir, tile=0).infer(x)
    ov = load_runner(export_dir, tile=0, runtime="openvino-f32")
    assert ov.name.endswith("@openvino-f32") and ov.inference_precision == "f32"
    y = ov.infer(x)
    assert y.shape == ref.shape and y.dtype == np.float32
    assert rel_l2(y, ref) <= FP32_REL_L2_LIMIT


def test_bf16_is_asked_for_explicitly_and_what_ran_is_named(export_dir):
    x = np.random.default_rng(1).random((1, 3, 40, 48), dtype=np.float32)
    ref = load_runner(export_dir, tile=0).infer(x)
    ov = load_runner(export_dir, tile=0, runtime="openvino-bf16")
    assert ov.requested_precision == "bf16" and ov.inference_precision in ("bf16", "f32")
    if ov.inference_precision == "f32":  # a CPU without bf16: OpenVINO ran f32, and the name says so
        assert ov.name.endswith("@openvino-f32(asked bf16)")
        assert rel_l2(ov.infer(x), ref) <= FP32_REL_L2_LIMIT
    else:
        assert ov.name.endswith("@openvino-bf16")
        mse = float(np.mean((np.clip(ov.infer(x), 0, 1) - np.clip(ref, 0, 1)) ** 2))
        assert 10 * np.log10(1 / mse) > 40  # bf16 keeps ~3 significant digits


def test_unknown_runtime_and_runtime_for_an_engine_are_one_line_errors(export_dir):
    with pytest.raises(ArtifactError, match="unknown runtime 'openvino'"):
        load_runner(export_dir, runtime="openvino")


def test_upscale_and_bench_use_openvino_from_the_cli(export_dir, tmp_path):
    rgb = (np.random.default_rng(2).random((37, 51, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "in.png")
    outs = {}
    for rt in ("onnxruntime", "openvino-f32"):
        res = CliRunner().invoke(main, ["upscale", str(export_dir), str(tmp_path / "in.png"),
                                        str(tmp_path / f"{rt}.png"), "--runtime", rt, "-q"])
        assert res.exit_code == 0, res.output
        outs[rt] = np.asarray(Image.open(tmp_path / f"{rt}.png"), np.int16)
    assert "openvino-f32" in res.output
    assert np.abs(outs["onnxruntime"] - outs["openvino-f32"]).max() <= 1  # 8-bit rounding of fp32 noise


@pytest.fixture(scope="module")
def lipt_dir(tmp_path_factory):
    from lipt_export.export.pipeline import ExportConfig, run_export

    out = tmp_path_factory.mktemp("auto")
    return run_export(ExportConfig(model="lipt", variant="tiny", scale=2, out=str(out), backend="onnxruntime")).out_dir


def test_export_measures_the_cpu_runtime_and_upscale_auto_uses_it(lipt_dir, tmp_path):
    import shutil

    from lipt_export.manifest import read_manifest
    from lipt_export.runtime.resolve import machine_fingerprint

    record = read_manifest(lipt_dir).runtime_choice["fp32"].to_dict()  # the typed record, as written
    assert record["machine"] == machine_fingerprint()
    cands = {c["runtime"]: c for c in record["candidates"]}
    assert {"onnxruntime", "openvino-f32"} <= set(cands)
    assert all(cands[k]["within_budget"] and cands[k]["rel_l2"] <= 1e-4 for k in ("onnxruntime", "openvino-f32"))
    # bf16 is a candidate only where the CPU compiles it, judged by |delta PSNR-Y| <= 0.01 dB; elsewhere left out
    if "openvino-bf16" in cands:
        bf16 = cands["openvino-bf16"]
        assert bf16["within_budget"] is (bf16["rel_l2"] <= 1e-4 or abs(bf16["delta_psnr_y_db"]) <= 0.01)
    else:
        assert record["left_out"] == [{"runtime": "openvino-bf16",
                                       "why": "this CPU has no bf16: OpenVINO compiles f32 (= openvino-f32)"}]
    eligible = {k: c for k, c in cands.items() if c["within_budget"]}
    assert all(c["median_ms"] > 0 for c in eligible.values())
    assert record["runtime"] == min(eligible, key=lambda k: eligible[k]["median_ms"])
    Image.fromarray((np.random.default_rng(3).random((30, 41, 3)) * 255).astype(np.uint8)).save(tmp_path / "in.png")
    res = CliRunner().invoke(main, ["upscale", str(lipt_dir), str(tmp_path / "in.png"), str(tmp_path / "o.png"), "-q"])
    assert res.exit_code == 0, res.output
    assert f"runtime: {record['runtime']} (auto, measured at export on this machine" in res.output
    # another machine's record is not trusted: measured again, and said so (the export is not rewritten)
    moved = tmp_path / "moved"
    shutil.copytree(lipt_dir, moved)
    data = json.loads((moved / "manifest.json").read_text())
    data["runtime_choice"]["fp32"]["machine"] = "another CPU x64; onnxruntime 0.0"
    (moved / "manifest.json").write_text(json.dumps(data))
    before = (moved / "manifest.json").read_bytes()
    res = CliRunner().invoke(main, ["upscale", str(moved), str(tmp_path / "in.png"), str(tmp_path / "p.png"), "-q"])
    assert res.exit_code == 0 and "measured now (the export's record is from another machine)" in res.output, res.output
    assert (moved / "manifest.json").read_bytes() == before
    res = CliRunner().invoke(main, ["upscale", str(lipt_dir / "model.onnx"), str(tmp_path / "in.png"),
                                    str(tmp_path / "q.png"), "-q"])
    assert res.exit_code == 0, res.output


def test_bench_rows_eager_naive_and_every_artifact_on_every_runtime(lipt_dir, tmp_path):
    """`bench` on a real export: eager train/deploy graphs, the naive ONNX of the train graph, each artifact on
    each runtime, with GMAC from the graphs, the achieved rate against the measured peak, JSON and a plot."""
    js, png = tmp_path / "b.json", tmp_path / "b.png"
    res = CliRunner().invoke(main, ["bench", str(lipt_dir), "--sizes", "32x32,37x51", "--runs", "2", "--json", str(js),
                                    *(["--plot", str(png)] if importlib.util.find_spec("matplotlib") else [])])
    assert res.exit_code == 0, res.output
    data = json.loads(js.read_text())
    rows = {r["row"]: r for r in data["rows"]}
    assert list(rows)[:3] == ["eager train graph", "eager deploy graph", "naive ONNX (train graph)"]
    assert {"model.onnx @ onnxruntime", "model.onnx @ openvino-f32"} <= set(rows)
    assert data["inputs"] == [[32, 32], [37, 51]] and data["peak_gflops_fp32"] > 0
    train, deploy = rows["eager train graph"], rows["eager deploy graph"]
    assert train["gmac"] > deploy["gmac"] > 0  # reparameterization removes the HRM branches' MACs
    assert rows["naive ONNX (train graph)"]["gmac"] == train["gmac"]
    for r in rows.values():
        assert r["median_ms"] > 0 and r["gflops"] == pytest.approx(2 * r["gmac"] / (r["median_ms"] / 1e3))
        assert r["speedup_vs_deploy"] == pytest.approx(deploy["median_ms"] / r["median_ms"])
    assert rows["model.onnx @ onnxruntime"]["psnr_vs_golden"] > 100  # the fp32 file against the eager outputs
    assert "naive ONNX (train graph)" in res.output
    if importlib.util.find_spec("matplotlib"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
