"""lipt_export.load_runner: picking the runner by file/manifest, precision choice, tiling defaults, and the
one-line errors. Every output is compared with the eager network it came from."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import lipt_export
from lipt_export.runtime.eager import TorchRunner
from lipt_export.runtime.ort import OnnxRuntimeRunner
from lipt_export.errors import ArtifactError
from lipt_export import load_runner
from lipt_export.runtime.loader import open_artifact
from lipt_export.runtime.ort import ort_providers
from lipt_export.runtime.tiling import TiledRunner
from lipt_export.validation.inputs import natural_inputs
from lipt_export.validation.parity import compare, rel_l2
from helpers.serving_toys import ConvSR, add_fp16_io_artifact, make_export


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    model = ConvSR(scale=2)
    export_dir = make_export(tmp_path_factory.mktemp("serving"), model)
    add_fp16_io_artifact(export_dir)
    return model, export_dir


def test_export_dir_manifest_and_onnx_all_give_the_fp32_onnx_runner(toy):
    model, d = toy
    inputs = natural_inputs([(32, 32), (37, 51)], seed=1)
    runners = [lipt_export.load_runner(d, name="dir"), load_runner(d / "manifest.json", name="manifest"),
               load_runner(d / "model.onnx", name="file")]
    for r in runners:
        assert isinstance(r, OnnxRuntimeRunner) and r.precision == "fp32" and r.device == "cpu"
        assert r.artifact.scale == 2 and r.artifact.entry.path == "model.onnx"
    for par in compare(TorchRunner(model), runners, inputs):
        assert par.rel_l2 < 1e-5, par


def test_precision_choice_and_fp16_io(toy):
    model, d = toy
    r16 = load_runner(d, precision="fp16")
    assert r16.precision == "fp16" and r16.input_dtype == np.float16
    assert load_runner(d / "model.fp16.onnx").precision == "fp16"
    (par,) = compare(TorchRunner(model), [r16], natural_inputs([(32, 40)], seed=2))
    assert par.psnr_db > 45  # fp16 weights and I/O: close, not equal
    with pytest.raises(ArtifactError, match="no int8 ONNX artifact; available precisions: fp16, fp32"):
        load_runner(d, precision="int8")


def test_tile_kwarg_wraps_and_matches(toy):
    model, d = toy
    runner = load_runner(d, tile=24, overlap=8)
    assert isinstance(runner, TiledRunner) and runner.tile == 24 and runner.scale == 2
    (x,) = natural_inputs([(50, 61)], seed=3)
    assert rel_l2(runner.infer(x), TorchRunner(model).infer(x)) < 1e-5


def test_required_tiling_is_the_default_and_cannot_be_disabled(tmp_path):
    d = make_export(tmp_path, tile_required=True, recommended_tile=48, overlap=8)
    runner = load_runner(d)
    assert isinstance(runner, TiledRunner) and runner.tile == 48 and runner.overlap == 8
    with pytest.raises(ArtifactError, match="must run tiled"):
        load_runner(d, tile=0)


def test_tensorrt_backend_without_engine_says_so(toy):
    _, d = toy
    with pytest.raises(ArtifactError, match="no fp32 TensorRT engine"):
        open_artifact(d, backend="tensorrt")
    assert open_artifact(d, backend="auto").format == "onnx"  # no engine: ONNX Runtime


def test_bad_paths_give_one_line_errors(toy, tmp_path):
    _, d = toy
    with pytest.raises(ArtifactError, match="no such artifact"):
        load_runner(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ArtifactError, match="don't know how to run"):
        load_runner(tmp_path / "notes.txt")
    with pytest.raises(ArtifactError, match="no manifest"):
        load_runner(tmp_path)
    ckpt = tmp_path / "w.pth"
    torch.save({}, ckpt)
    with pytest.raises(ArtifactError, match="model=, scale="):
        load_runner(ckpt)


def test_changed_onnx_file_is_refused(toy, tmp_path):
    import shutil

    _, d = toy
    copy = tmp_path / "copy"
    shutil.copytree(d, copy)
    man = json.loads((copy / "manifest.json").read_text())
    man["artifacts"][0]["sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ArtifactError, match="sha256 differs"):
        load_runner(copy / "model.onnx")


def test_lone_onnx_file_describes_itself(toy, tmp_path):
    import shutil

    _, d = toy
    shutil.copyfile(d / "model.onnx", tmp_path / "lone.onnx")
    art = open_artifact(tmp_path / "lone.onnx")
    assert art.manifest.io.scale == 2 and art.entry is None and art.precision == "fp32"


def test_ort_providers_are_installed_ones_with_cpu_last():
    import onnxruntime as ort

    provs = ort_providers()
    names = [p if isinstance(p, str) else p[0] for p in provs]
    assert names[-1] == "CPUExecutionProvider"
    assert set(names) <= set(ort.get_available_providers())
    assert ort_providers(["cpu"]) == ["CPUExecutionProvider"]


def test_module_and_checkpoint_runners(tmp_path):
    model = ConvSR(scale=2)
    assert isinstance(load_runner(model), TorchRunner)
    from lipt_export.models.io import UnitRangeIO
    from lipt_export.models.registry import build_model
    from lipt_export.models.reparam import reparameterize_model

    torch.manual_seed(0)
    _, _, lipt = build_model("lipt", "tiny", 2)  # default init: fine here, both sides run the same deploy graph
    ckpt = tmp_path / "lipt.pth"
    torch.save(lipt.state_dict(), ckpt)
    runner = load_runner(ckpt, model="lipt", variant="tiny", scale=2)
    assert isinstance(runner, TorchRunner) and runner.artifact.scale == 2 and runner.artifact.multiple_of == 8
    (x,) = natural_inputs([(24, 32)], seed=0)
    ref = TorchRunner(UnitRangeIO(reparameterize_model(lipt), 255)).infer(x)
    assert rel_l2(runner.infer(x), ref) < 1e-6


def test_default_overlap_is_at_least_eight_windows(tmp_path):
    from lipt_export.tiling import TilingPolicy
    from helpers.serving_toys import WindowSR

    assert TilingPolicy.context_overlap(1, 16) == 16
    assert TilingPolicy.context_overlap(8, 16) == 64
    assert TilingPolicy.context_overlap(8, 96) == 96
    d = make_export(tmp_path, WindowSR(scale=2), multiple_of=8)
    runner = load_runner(d, tile=128)
    assert runner.overlap == 64 and runner.multiple_of == 8
