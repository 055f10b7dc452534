"""End-to-end export through the CLI (LIPT-tiny x2, small inputs) and the bad-input contract.

Weights: LIPT's `init_for_tests` (deterministic, attention logits kept moderate so fp32 parity measures
the export rather than the near-argmax chaos of a random unscaled q·qᵀ softmax; see models/lipt.py).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import onnx
import pytest
import torch
from click.testing import CliRunner

from helpers import manifest_json
from helpers.cli import assert_one_line_error
from lipt_export import manifest as mf
from lipt_export.fileio import sha256_file
from lipt_export.cli import main
from lipt_export.export import pipeline
from lipt_export.export.onnx_export import spatial_dims
from lipt_export.models.io import UnitRangeIO
from lipt_export.models.registry import build_model, get_spec
from lipt_export.models.reparam import reparameterize_model
from lipt_export.runtime.eager import TorchRunner
from lipt_export.runtime.ort import OnnxRuntimeRunner
from lipt_export.validation.inputs import natural_inputs
from lipt_export.validation.parity import FP32_REL_L2_LIMIT, compare

ARGS = ["--model", "lipt", "--variant", "tiny", "--scale", "2", "--no-lint", "--backend", "onnxruntime"]


def _run(args):
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    return result


def _trained_like_model(scale=2, seed=3):
    spec, _, model = build_model("lipt", "tiny", scale)
    spec.init_for_tests(model, seed)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("exports")
    result = _run([*ARGS, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out / "lipt-tiny-x2", result.output


def test_export_writes_artifacts_manifest_and_report(exported):
    out_dir, output = exported
    assert sorted(p.name for p in out_dir.iterdir()) == ["golden.npz", "manifest.json", "model.onnx", "report.md"]
    man = manifest_json(out_dir)
    assert man["schema_version"] == mf.SCHEMA_VERSION
    assert man["model"]["name"] == "lipt" and man["model"]["scale"] == 2
    (art,) = man["artifacts"]
    assert art["sha256"] == sha256_file(out_dir / "model.onnx")
    assert art["parity"]["rel_l2"] <= FP32_REL_L2_LIMIT
    assert [37, 51] in art["parity"]["sizes"]
    assert man["model"]["reparam_rel_l2_fp64"] < 1e-9
    # the printed summary and the report name the artifact with its parity figure
    assert "model.onnx" in output and "PSNR dB" in output
    assert "model.onnx" in (out_dir / "report.md").read_text()
    # no temp directories left behind
    assert not [p for p in out_dir.parent.iterdir() if p.name.startswith(".")]


def test_onnx_is_dynamic_and_self_describing(exported):
    out_dir, _ = exported
    model = onnx.load(str(out_dir / "model.onnx"))
    assert all(isinstance(d, str) for d in spatial_dims(model))
    desc = mf.onnx_metadata(out_dir / "model.onnx")
    assert desc["model"]["variant"] == "tiny" and desc["io"]["scale"] == 2


def test_artifact_matches_eager_at_fresh_sizes(exported):
    """Independent of the pipeline's own parity: rebuild the same demo-weight model and compare at sizes
    the export never saw (one not a multiple of the window)."""
    out_dir, _ = exported
    spec, _, model = build_model("lipt", "tiny", 2)
    spec.init_for_tests(model, 0)  # the CLI's default --seed
    eager = TorchRunner(UnitRangeIO(reparameterize_model(model), spec.rgb_range))
    ort = OnnxRuntimeRunner(out_dir / "model.onnx")
    (par,) = compare(eager, [ort], natural_inputs([(40, 56), (29, 45)], seed=11))
    assert par.rel_l2 < 1e-4 and par.psnr_db > 80


def test_train_and_deploy_checkpoints(tmp_path):
    train = _trained_like_model()
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in train.state_dict().items()}, "epoch": 3},
               tmp_path / "train.pt")
    torch.save(reparameterize_model(train).state_dict(), tmp_path / "deploy.pth")
    for ckpt, form in (("train.pt", "train"), ("deploy.pth", "deploy")):
        res = _run([*ARGS, "--weights", str(tmp_path / ckpt), "--out", str(tmp_path / "o"), "--name", form])
        assert res.exit_code == 0, res.output
        man = manifest_json(tmp_path / "o" / form)
        assert man["model"]["weights"]["form"] == form
        assert ("parity_vs_train_graph" in man["artifacts"][0]) == (form == "train")
    # same weights, either form: the two fp32 artifacts compute the same function
    a = OnnxRuntimeRunner(tmp_path / "o" / "train" / "model.onnx", name="a")
    b = OnnxRuntimeRunner(tmp_path / "o" / "deploy" / "model.onnx", name="b")
    (par,) = compare(a, [b], natural_inputs([(32, 48), (33, 47)], seed=5))
    assert par.rel_l2 < 1e-5


def _assert_clean_failure(result, out: Path, *needles: str):
    assert_one_line_error(result, *needles)
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


def _invoke(args):
    return CliRunner().invoke(main, args)


def test_unknown_model_variant_scale(tmp_path):
    out = tmp_path / "o"
    _assert_clean_failure(_invoke(["--model", "nope", "--out", str(out)]), out, "unknown model 'nope'", "lipt")
    _assert_clean_failure(_invoke(["--model", "lipt", "--variant", "huge", "--out", str(out)]), out,
                          "no variant 'huge'", "tiny")
    _assert_clean_failure(_invoke(["--model", "lipt", "--scale", "5", "--out", str(out)]), out,
                          "scale 5", "supported scales")


def test_bad_checkpoints(tmp_path):
    out = tmp_path / "o"
    _assert_clean_failure(_invoke([*ARGS, "--weights", str(tmp_path / "missing.pt"), "--out", str(out)]), out,
                          "checkpoint not found")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    _assert_clean_failure(_invoke([*ARGS, "--weights", str(garbage), "--out", str(out)]), out, "cannot read")
    # a pickle that would execute code on load is refused by weights_only
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(3), "obj": Path("x")}, evil)  # a non-tensor global: refused, not executed
    _assert_clean_failure(_invoke([*ARGS, "--weights", str(evil), "--out", str(out)]), out, "weights-only",
                          "Unsupported global")
    # right family, wrong scale: misshaped tail keys listed
    x3 = tmp_path / "x3.pt"
    torch.save(_trained_like_model(scale=3).state_dict(), x3)
    _assert_clean_failure(_invoke([*ARGS, "--weights", str(x3), "--out", str(out)]), out, "misshaped", "tail.0")
    # keys missing and unexpected are both counted
    sd = _trained_like_model().state_dict()
    sd.pop("head.0.weight")
    sd["bogus.weight"] = torch.zeros(1)
    partial = tmp_path / "partial.pt"
    torch.save(sd, partial)
    _assert_clean_failure(_invoke([*ARGS, "--weights", str(partial), "--out", str(out)]), out,
                          "1 missing (head.0.weight)", "1 unexpected (bogus.weight)")


def test_int8_without_calibration_images(tmp_path):
    out = tmp_path / "o"
    _assert_clean_failure(_invoke([*ARGS, "--int8", "--out", str(out)]), out, "INT8 needs representative images")


def test_tensorrt_backend_missing_fails_fast(tmp_path):
    from lipt_export.engines import tensorrt_status

    ok, why = tensorrt_status()
    if ok:
        pytest.skip("TensorRT and a GPU are present here")
    out = tmp_path / "o"
    _assert_clean_failure(_invoke([*ARGS, "--backend", "tensorrt", "--out", str(out)]), out, "TensorRT")


def test_failed_parity_leaves_nothing(tmp_path, monkeypatch):
    """A gate failure after all artifacts were written must remove the temp dir and keep an older export."""
    out = tmp_path / "o"
    assert _run([*ARGS, "--out", str(out)]).exit_code == 0
    before = sha256_file(out / "lipt-tiny-x2" / "manifest.json")
    from lipt_export.validation import parity as gates

    monkeypatch.setattr(gates, "FP32_REL_L2_LIMIT", 0.0)  # nothing can pass an exact-zero limit
    res = _invoke([*ARGS, "--out", str(out), "--seed", "1", "--overwrite"])
    assert res.exit_code != 0 and "does not match the eager model" in res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["lipt-tiny-x2"]
    assert sha256_file(out / "lipt-tiny-x2" / "manifest.json") == before


def test_help_lists_models_variants_scales():
    res = _invoke(["export", "--help"])
    assert res.exit_code == 0
    for spec_name in ("lipt",):
        spec = get_spec(spec_name)
        line = next(ln for ln in res.output.splitlines() if ln.strip().startswith(f"{spec_name} "))
        assert all(v in line for v in spec.variants) and all(f"x{s}" in line for s in spec.scales)


def test_bench_command_times_every_artifact(exported, tmp_path):
    out_dir, _ = exported
    js = tmp_path / "bench.json"
    res = _invoke(["bench", str(out_dir), "--sizes", "32x40", "--runs", "2", "--warmup", "1", "--runtimes",
                   "onnxruntime", "--no-eager", "--json", str(js)])
    assert res.exit_code == 0, res.output
    data = json.loads(js.read_text())
    assert data["inputs"] == [[32, 40]] and [r["row"] for r in data["rows"]] == ["model.onnx @ onnxruntime"]
    assert all(r["median_ms"] > 0 for r in data["rows"]) and "median ms" in res.output
    # progress per round: 1 warm-up + 2 timed, more when busy rounds were dropped; the bar ends complete either way
    done = re.findall(r"bench rounds: 100%\|.*?\| (\d+)/(\d+)", res.stderr)
    assert done and done[-1][0] == done[-1][1] and int(done[-1][0]) >= 3, res.stderr


def test_cli_defaults_and_catalog_match_the_library():
    """One table of names and defaults: the registry, the command line and the library's dataclasses all read
    lipt_export.catalog, so what --help shows is what runs."""
    from lipt_export import catalog
    from lipt_export.engines.shapes import DEFAULT_SHAPES, default_shapes
    from lipt_export.engines.tensorrt import EngineOptions
    from lipt_export.models.registry import available_models, get_spec

    fields = ("variants", "scales", "default_variant", "min_size", "recommended_tile", "tile_required",
              "default_tile", "static_engine_profile")
    assert {n: tuple(getattr(s, f) for f in fields) for n, s in available_models().items()} == \
        {n: tuple(getattr(f, k) for k in fields) for n, f in catalog.FAMILIES.items()}
    cfg, e = pipeline.ExportConfig(), EngineOptions()
    assert (cfg.scale, cfg.opset, tuple(cfg.parity_sizes), cfg.calib_count, cfg.calib_size, cfg.calib_method,
            cfg.max_psnr_drop, cfg.backend) == (catalog.DEFAULT_SCALE, catalog.DEFAULT_OPSET,
                                                catalog.DEFAULT_PARITY_SIZES, catalog.CALIB_COUNT, catalog.CALIB_SIZE,
                                                catalog.CALIB_METHOD, catalog.MAX_PSNR_DROP_DB, "auto")
    assert (e.batch, e.workspace_gib, e.builder_opt_level, e.compute_capabilities) == \
        (catalog.ENGINE_BATCH, catalog.ENGINE_WORKSPACE_GIB, catalog.ENGINE_OPT_LEVEL, catalog.COMPUTE_CAPABILITIES)
    params = {p.name: p for p in main.get_command(None, "export").params}
    assert (params["scale"].default, params["opset"].default, params["batch"].default,
            params["compute_capabilities"].default, params["max_psnr_drop"].default) == \
        (cfg.scale, cfg.opset, e.batch, ",".join(e.compute_capabilities), cfg.max_psnr_drop)
    assert tuple(params["backend"].type.choices) == catalog.EXPORT_BACKENDS
    # --shapes unset: each family's default profile from its tile policy; --shapes wins
    for name, spec in available_models().items():
        t = spec.recommended_tile
        want = (f"{t}x{t}:{t}x{t}:{t}x{t}" if spec.static_engine_profile else
                f"{min(32, t)}x{min(32, t)}:{t}x{t}:{t}x{t}" if spec.tile_required else DEFAULT_SHAPES)
        assert e.for_model(spec).shapes == default_shapes(name) == want
    assert get_spec("agileir").static_engine_profile and not get_spec("lipt").static_engine_profile
    assert default_shapes("esrt") == "32x32:64x64:64x64"
    assert EngineOptions(shapes="16x16:32x32:48x48").for_model(get_spec("agileir")).shapes == "16x16:32x32:48x48"