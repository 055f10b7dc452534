"""Real TensorRT engines on this CPU-only machine: TensorRT-RTX builds ahead of time (no GPU), through the CLI,
for every model family; the precision audit; TensorRT's parser as the lint's oracle; `verify` and tampering.

Engines cannot run here (no CUDA): their parity is "pending" and `verify` skips them, saying why."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from helpers.checkpoints import small_agileir_checkpoint
from helpers.precision_nets import synthetic_image_folder
from lipt_export.cli import main
from lipt_export.errors import EngineError
from lipt_export.runtime.trt import select_tensorrt, tensorrt_rtx_status

RTX_OK, RTX_WHY = tensorrt_rtx_status()
pytestmark = pytest.mark.skipif(not RTX_OK, reason=RTX_WHY)

SMALL = ["--compute-capabilities", "8.9", "--shapes", "16x16:32x32:48x48", "--parity-size", "32x32",
         "--parity-size", "37x51"]


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _manifest(d: Path):
    return json.loads((d / "manifest.json").read_text())


FAMILIES = {
    "lipt": ["--model", "lipt", "--variant", "tiny", "--scale", 2],
    "smsr": ["--model", "smsr", "--scale", 2],
    "esrt": ["--model", "esrt", "--scale", 2],
    "agileir": ["--model", "agileir", "--scale", 2],  # + the small checkpoint below
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_builds_fp32_and_fp16_engines_with_a_clean_parse(family, tmp_path):
    args = list(FAMILIES[family])
    if family == "agileir":
        args += ["--weights", small_agileir_checkpoint(tmp_path)]
    res = _cli(*args, "--fp16", "--backend", "tensorrt-rtx", "--out", tmp_path / "out", *SMALL)
    assert res.exit_code == 0, res.output
    (d,) = [p for p in (tmp_path / "out").iterdir() if p.is_dir() and not p.name.startswith(".")]
    man = _manifest(d)
    engines = {a["precision"]: a for a in man["artifacts"] if a["format"] == "tensorrt"}
    onnx_entries = {a["precision"]: a for a in man["artifacts"] if a["format"] == "onnx"}
    assert set(engines) == {"fp32", "fp16"}
    for precision, e in engines.items():
        assert e["path"] == f"model.{precision}.engine" and (d / e["path"]).stat().st_size == e["bytes"] > 0
        assert e["parser"] == {"errors": [], "warnings": []} and e["build_warnings"] == [], (family, e["parser"])
        assert e["runtime"] == "tensorrt-rtx" and e["compute_capabilities"] == ["8.9"]
        assert e["source_onnx_sha256"] == onnx_entries[precision]["sha256"]
        assert e["parity"].startswith("pending: needs a GPU with compute capability in [8.9]")
        # the lint ran TensorRT's parser too, and it agrees: nothing to report
        assert onnx_entries[precision]["lint"]["status"] == "clean", onnx_entries[precision]["lint"]["findings"]
        assert "TensorRT parser: tensorrt-rtx" in onnx_entries[precision]["lint"]["checked"]
    audit32, audit16 = engines["fp32"]["precision_audit"], engines["fp16"]["precision_audit"]
    assert audit32["by_precision"]["fp32"] == audit32["compute_layers"] > 0
    islands = [i["node"] for i in onnx_entries["fp16"]["fp16_islands"]]
    assert audit16["shares"]["fp16"] >= 0.8 and set(audit16["fp32_layers"]) <= set(islands)
    print(f"\n{family}: " + ", ".join(f"{e['path']} {e['bytes'] / 1e6:.1f} MB {e['build_s']:.1f} s "
                                      f"{e['precision_audit']['shares']}" for e in engines.values()))


@pytest.fixture(scope="module")
def lipt_precisions(tmp_path_factory):
    """The issue's command: LIPT-tiny x2 with fp16 and int8, TensorRT-RTX engines for the default targets."""
    tmp = tmp_path_factory.mktemp("rtx")
    calib = synthetic_image_folder(tmp / "calib", count=5, size=96)
    res = _cli("--model", "lipt", "--variant", "tiny", "--scale", 2, "--fp16", "--int8", "--calib", calib,
               "--calib-count", 8, "--calib-size", 32, "--backend", "tensorrt-rtx", "--shapes", "16x16:32x32:64x64",
               "--out", tmp / "out")
    assert res.exit_code == 0, res.output
    return tmp / "out" / "lipt-tiny-x2", res.output


def test_three_engines_with_their_audit(lipt_precisions):
    d, output = lipt_precisions
    man = _manifest(d)
    engines = {a["precision"]: a for a in man["artifacts"] if a["format"] == "tensorrt"}
    assert sorted(engines) == ["fp16", "fp32", "int8"]
    for e in engines.values():
        assert e["compute_capabilities"] == ["8.6", "8.9", "12.0"] and e["tensorrt_version"]
        assert e["profile"]["max"] == [1, 3, 64, 64] and e["builder"]["strongly_typed"] and e["build_s"] > 0
    assert engines["fp16"]["precision_audit"]["shares"]["fp16"] >= 0.8
    assert engines["int8"]["precision_audit"]["shares"]["int8"] >= 0.5
    assert man["golden"]["path"] == "golden.npz" and (d / "golden.npz").is_file()
    assert man["export"]["engines"]["backend"] == "tensorrt-rtx"
    assert "model.int8.engine" in output and "lipt-export verify" in output


def test_verify_passes_then_fails_on_tampering(lipt_precisions, tmp_path):
    import shutil

    d, _ = lipt_precisions
    res = _cli("verify", d, "--json", tmp_path / "v.json")
    assert res.exit_code == 0, res.output
    rows = {r["artifact"]: r for r in json.loads((tmp_path / "v.json").read_text())["rows"]}
    assert all(rows[f"model{s}.onnx"]["status"] == "pass" for s in ("", ".fp16", ".int8"))
    assert all(r["status"] == "skipped" and "compute capability" in r["why"] for k, r in rows.items()
               if k.endswith(".engine"))
    assert _cli("verify", d, "--require-all").exit_code == 1  # engines cannot run here
    if importlib.util.find_spec("openvino") is not None:  # one row per ONNX artifact and runtime
        _cli("verify", d, "--runtimes", "onnxruntime,openvino-f32", "--json", tmp_path / "ov.json")
        ov_rows = json.loads((tmp_path / "ov.json").read_text())["rows"]
        per = {(r["artifact"], r["runtime"]): r for r in ov_rows}
        for s in ("", ".fp16", ".int8"):
            assert per[(f"model{s}.onnx", "onnxruntime")]["status"] == "pass"
            assert per[(f"model{s}.onnx", "openvino-f32")]["psnr_db"] > 30
        assert per[("model.onnx", "openvino-f32")]["status"] == "pass"  # the fp32 file at f32: the fp32 gate
    for victim in ("model.onnx", "model.int8.engine"):
        copy = tmp_path / victim.replace(".", "_")
        shutil.copytree(d, copy)
        data = bytearray((copy / victim).read_bytes())
        data[len(data) // 2] ^= 0x01
        (copy / victim).write_bytes(bytes(data))
        res = _cli("verify", copy)
        assert res.exit_code == 1 and "sha256 differs" in res.output, res.output
    copy = tmp_path / "golden"
    shutil.copytree(d, copy)
    data = bytearray((copy / "golden.npz").read_bytes())
    data[-100] ^= 0x01
    (copy / "golden.npz").write_bytes(bytes(data))
    res = _cli("verify", copy)
    assert res.exit_code == 2 and res.stderr.strip().startswith("lipt-export: error:") and "golden.npz" in res.stderr


def test_verify_fails_an_artifact_that_computes_something_else(lipt_precisions, tmp_path):
    """A different but well-formed model.onnx whose manifest entry was updated to match: only the golden
    outputs can catch it."""
    import shutil

    from lipt_export import manifest as mf

    d, _ = lipt_precisions
    copy = tmp_path / "swapped"
    shutil.copytree(d, copy)
    model = onnx.load(str(copy / "model.onnx"))
    init = next(i for i in model.graph.initializer if i.data_type == TensorProto.FLOAT and len(i.dims) == 4)
    arr = onnx.numpy_helper.to_array(init).copy()
    arr += 0.05
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(copy / "model.onnx"))
    man = mf.read_manifest(copy)
    entries = [mf.ArtifactEntry.for_file(copy / a.path, copy, fmt=a.format, precision=a.precision, **a.details)
               if a.path == "model.onnx" else a for a in man.artifacts]
    mf.write_manifest(copy, mf.Manifest(man.model, man.io, man.export, entries, man.created, golden=man.golden))
    res = _cli("verify", copy)
    assert res.exit_code == 1 and "fp32 rel-L2 <= 1e-4" in res.output, res.output


def test_precision_audit_disagreement_fails_with_the_names(lipt_precisions):
    from lipt_export.engines.audit import audit_network, cross_check
    from lipt_export.engines.tensorrt import parse_onnx

    d, _ = lipt_precisions
    trt = select_tensorrt("tensorrt-rtx")
    audit = audit_network(trt, parse_onnx(trt, d / "model.fp16.onnx", strongly_typed_flag=False).network)
    cross_check("model.fp16.onnx", audit, {"fp32": set(), "int8": set()})  # what the export recorded: passes
    with pytest.raises(EngineError, match="recorded fp32 but not in the engine: /model/head/head.0/Conv"):
        cross_check("model.fp16.onnx", audit, {"fp32": {"/model/head/head.0/Conv"}, "int8": set()})
    audit8 = audit_network(trt, parse_onnx(trt, d / "model.int8.onnx", strongly_typed_flag=False).network)
    with pytest.raises(EngineError, match="int8 in the engine but not recorded"):
        cross_check("model.int8.onnx", audit8, {"int8": set(audit8["int8_layers"][1:]), "fp32": None})


def test_lint_merges_the_parser_and_flags_runtime_reshape_zero(tmp_path):
    from lipt_export.export.graph import reshape_allowzero
    from lipt_export.export.lint import lint_onnx

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "r.onnx"
    onnx.save(model, str(path))
    report = lint_onnx(path)
    assert any(f.rule == "reshape-zero" for f in report.warnings)
    assert reshape_allowzero(model) == 1
    onnx.save(model, str(path))
    assert not [f for f in lint_onnx(path).findings if f.rule == "reshape-zero"]
    # an op TensorRT's parser has no importer for: the parser's own error joins the static one
    bad = helper.make_node("Col2Im", ["x", "a", "b"], ["z"], name="fold")
    graph = helper.make_graph([bad], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 12, 4])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
                              [onnx.numpy_helper.from_array(__import__("numpy").array([2, 2]), n) for n in "ab"])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "c.onnx"))
    report = lint_onnx(tmp_path / "c.onnx")
    assert any(f.rule == "tensorrt-parser" and f.severity == "error" for f in report.findings), report.findings


def test_auto_backend_picks_tensorrt_rtx_and_says_why(tmp_path):
    res = _cli("--model", "lipt", "--variant", "tiny", "--scale", 2, "--no-lint", "--out", tmp_path, *SMALL)
    assert res.exit_code == 0, res.output
    assert "engines: tensorrt-rtx (auto: no datacenter TensorRT with a CUDA GPU here" in res.output
    res = _cli("--model", "lipt", "--variant", "tiny", "--scale", 2, "--backend", "tensorrt-rtx",
               "--compute-capabilities", "9.0", "--out", tmp_path / "x")
    assert res.exit_code == 2 and "cannot target compute capability 9.0" in res.stderr


def test_int8_is_marked_recommended_or_not_from_measured_latencies(lipt_precisions):
    """The export times every ONNX precision on its CPU runtime and says whether INT8 earns its place."""
    d, output = lipt_precisions
    man = json.loads((d / "manifest.json").read_text())
    int8 = next(a for a in man["artifacts"] if a["format"] == "onnx" and a["precision"] == "int8")
    speed = int8["speed"]
    assert set(speed["median_ms"]) == {"fp32", "fp16", "int8"} and all(v > 0 for v in speed["median_ms"].values())
    faster = speed["median_ms"]["int8"] < min(speed["median_ms"]["fp32"], speed["median_ms"]["fp16"])
    assert int8["recommended"] is faster
    assert ("int8: recommended" if faster else "int8: NOT recommended") in output
    assert "cpu runtime: " in output and man["runtime_choice"]["fp32"]["runtime"] in ("onnxruntime", "openvino-f32")


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="OpenVINO is not installed")
def test_auto_runtime_is_chosen_per_artifact_within_its_accuracy_budget(lipt_precisions):
    """Every ONNX file gets its own `--runtime auto` record. OpenVINO runs the INT8 Q/DQ file with INT8 kernels
    (not ONNX Runtime's numerics), so that execution is judged by its PSNR-Y drop against the fp32 file on ONNX
    Runtime, within the export's INT8 budget; recomputed here with ONNX Runtime and OpenVINO called directly."""
    import numpy as np
    import onnxruntime as ort
    import openvino as ov

    from lipt_export.validation.metrics import psnr_y_nchw
    from lipt_export.validation.runtime_choice import accuracy_pairs
    from lipt_export.validation.verify import load_golden
    from lipt_export.manifest import read_manifest

    d, output = lipt_precisions
    man = _manifest(d)
    choices = man["runtime_choice"]
    assert set(choices) == {"fp32", "fp16", "int8"}
    for precision, rec in choices.items():
        path = "model.onnx" if precision == "fp32" else f"model.{precision}.onnx"
        assert f"cpu runtime: {rec['runtime']} for {path}" in output
        cands = {c["runtime"]: c for c in rec["candidates"]}
        eligible = {k: c for k, c in cands.items() if c["within_budget"]}
        assert "onnxruntime" in eligible and rec["runtime"] in eligible
        if len(eligible) > 1:
            assert rec["runtime"] == min(eligible, key=lambda k: eligible[k]["median_ms"])
        left = {c["runtime"] for c in rec["left_out"]}
        assert set(cands) | left == {"onnxruntime", "openvino-f32", "openvino-bf16"}
    ov_int8 = {c["runtime"]: c for c in choices["int8"]["candidates"]}["openvino-f32"]
    assert ov_int8["rel_l2"] > 1e-4  # INT8 kernels, not the file as ONNX Runtime runs it
    budget = next(a for a in man["artifacts"] if a["path"] == "model.int8.onnx")["int8"]["max_psnr_drop_db"]
    assert ov_int8["budget_db"] == budget and ov_int8["against"] == "fp32 file on onnxruntime"
    # the recorded delta, recomputed without lipt-export's runners
    inputs, _ = load_golden(read_manifest(d))
    pairs = accuracy_pairs(inputs, man["model"]["scale"])
    ref = ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])
    core = ov.Core()
    q = core.compile_model(core.read_model(str(d / "model.int8.onnx")), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    shave = man["model"]["scale"]
    base = np.mean([psnr_y_nchw(ref.run(None, {"lr": lr})[0], hr, shave) for lr, hr in pairs])
    got = np.mean([psnr_y_nchw(np.asarray(q({0: lr})[q.outputs[0]]), hr, shave) for lr, hr in pairs])
    assert abs((got - base) - ov_int8["delta_psnr_y_db"]) < 2e-3
    assert ov_int8["within_budget"] is bool(base - got <= budget)


def test_triton_never_writes_a_tensorrt_rtx_plan_as_a_tensorrt_model(lipt_precisions, tmp_path):
    """Triton's tensorrt_plan backend links datacenter TensorRT: a TensorRT-RTX plan there is a repository no
    stock Triton serves. auto serves the ONNX file and says why; asking for the plan is one line that says why."""
    d, _ = lipt_precisions
    repo = tmp_path / "repo"
    res = _cli("triton", d, "--repo", repo, "--name", "m")
    assert res.exit_code == 0, res.output
    assert 'platform: "onnxruntime_onnx"' in (repo / "m" / "config.pbtxt").read_text()
    assert sorted(p.name for p in (repo / "m" / "1").iterdir()) == ["model.onnx"]
    version = _manifest(d)["artifacts"][-1]["tensorrt_version"]
    assert f"model.fp32.engine (TensorRT-RTX {version}) is not in the repository" in res.stderr
    before = sorted(p.name for p in repo.iterdir())
    res = CliRunner().invoke(main, ["triton", str(d), "--repo", str(repo), "--name", "p", "--format", "tensorrt"])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.output
    assert f"is a TensorRT-RTX {version} plan" in res.stderr and "cannot load it" in res.stderr
    assert sorted(p.name for p in repo.iterdir()) == before


def test_typed_details_round_trip_the_v1_json(lipt_precisions, tmp_path):
    """Consumers read artifact details through typed records (lipt_export.manifest.details); reading and writing
    them leaves the v1 JSON unchanged, and a malformed block fails when the manifest is read."""
    import shutil

    from lipt_export.errors import ManifestError
    from lipt_export.manifest import read_manifest

    d, _ = lipt_precisions
    raw = _manifest(d)
    man = read_manifest(d)
    assert man.to_dict() == raw
    by = {(a["format"], a["precision"]): a for a in raw["artifacts"]}
    fp16, int8 = man.select("onnx", "fp16")[0], man.select("onnx", "int8")[0]
    islands = by["onnx", "fp16"]["fp16_islands"]
    assert [(i.node, i.op) for i in fp16.fp16.islands] == [(i["node"], i["op"]) for i in islands]
    assert int8.int8.max_psnr_drop_db == by["onnx", "int8"]["int8"]["max_psnr_drop_db"]
    assert int8.int8_speed.recommended == by["onnx", "int8"]["recommended"]
    assert fp16.parity.as_dict() == by["onnx", "fp16"]["parity"] and fp16.lint.status == "clean"
    engine = man.select("tensorrt", "fp16")[0].engine
    raw_engine = by["tensorrt", "fp16"]
    assert (engine.runtime, engine.version, list(engine.compute_capabilities)) == \
        (raw_engine["runtime"], raw_engine["tensorrt_version"], raw_engine["compute_capabilities"])
    assert engine.profile.as_dict() == raw_engine["profile"] and engine.label.startswith("TensorRT-RTX 1.")
    assert not engine.datacenter and engine.audit.shares == raw_engine["precision_audit"]["shares"]
    assert {k: v.to_dict() for k, v in man.runtime_choice.items()} == raw["runtime_choice"]
    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    edited = _manifest(bad)
    next(a for a in edited["artifacts"] if a["format"] == "tensorrt")["profile"].pop("max")
    (bad / "manifest.json").write_text(json.dumps(edited))
    with pytest.raises(ManifestError, match="'profile' needs min/opt/max"):
        read_manifest(bad)
