"""The one resolver (runtime/resolve.py): the Python API resolves exactly as the command line does, `auto` works
from both, a record made on another machine is measured again (or said), one rule picks the artifact for every
consumer, and serving an ONNX export never imports torch."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import lipt_export
from helpers.cli import run_cli
from lipt_export.errors import ArtifactError
from lipt_export.runtime.loader import open_artifact
from lipt_export.runtime.resolve import load_runner as load_runner_unmeasured
from lipt_export.runtime.resolve import machine_fingerprint, resolve
from lipt_export.tiling import POLICY_TILE


def _png(path, h, w, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_the_python_api_runs_what_the_cli_runs(tiny_export, tmp_path):
    src = _png(tmp_path / "in.png", 70, 90)
    res = run_cli("upscale", tiny_export, src, tmp_path / "out.npy", "-q")
    assert res.exit_code == 0, res.output
    cli_runtime = res.output.split("runtime: ", 1)[1].split(" ", 1)[0]
    runner = lipt_export.load_runner(tiny_export, runtime="auto", default_tile=POLICY_TILE)  # as upscale runs
    assert runner.resolved.runtime == cli_runtime and "measured at export on this machine" in runner.resolved.why
    x = np.asarray(Image.open(src), np.float32).transpose(2, 0, 1)[None] / np.float32(255)
    assert np.array_equal(runner.infer(x)[0].transpose(1, 2, 0), np.load(tmp_path / "out.npy"))
    # a runtime by name, as --runtime names it
    named = lipt_export.load_runner(tiny_export, runtime="openvino-f32")
    assert named.resolved.runtime == "openvino-f32" and named.resolved.why == "" and "openvino" in named.runtime
    with pytest.raises(ArtifactError, match="unknown runtime 'ort'"):
        lipt_export.load_runner(tiny_export, runtime="ort")


def test_a_choice_made_on_another_machine_is_measured_again_or_said(tiny_export, tmp_path):
    d = tmp_path / "moved"
    shutil.copytree(tiny_export, d)
    man = json.loads((d / "manifest.json").read_text())
    man["runtime_choice"]["fp32"]["machine"] = "another CPU x64; onnxruntime 0.0"
    (d / "manifest.json").write_text(json.dumps(man))
    art = open_artifact(d)
    plan = resolve(art)  # auto, in the runtime layer alone: it cannot measure, says so and runs ONNX Runtime
    assert plan.runtime == "onnxruntime" and "another machine; not measured here" in plan.why
    measured = lipt_export.load_runner(d, runtime="auto")  # the API (and the CLI) pass the measurement in
    assert "measured now (the export's record is from another machine)" in measured.resolved.why
    assert measured.resolved.runtime in ("onnxruntime", "openvino-f32", "openvino-bf16")
    assert load_runner_unmeasured(d, runtime="auto").resolved.runtime == "onnxruntime"
    assert lipt_export.load_runner(d).resolved.runtime == "onnxruntime"  # the API's default: the gated execution
    assert machine_fingerprint() in json.loads((tiny_export / "manifest.json").read_text())["runtime_choice"][
        "fp32"]["machine"]


def test_serving_an_onnx_export_never_imports_torch(tiny_export, tmp_path):
    """The docs' claim, in a fresh process: the Python API and the upscale command on an ONNX export."""
    src = _png(tmp_path / "in.png", 20, 24)
    code = (
        "import sys\n"
        "import numpy as np\n"
        "import lipt_export\n"
        f"r = lipt_export.load_runner({str(tiny_export)!r})\n"
        "r.infer(np.zeros((1, 3, 16, 16), np.float32))\n"
        "from lipt_export.cli import main\n"
        "try:\n"
        f"    main(['upscale', {str(tiny_export)!r}, {str(src)!r}, {str(tmp_path / 'o.png')!r}, '-q'])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "print('torch loaded:', 'torch' in sys.modules)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "torch loaded: False" in res.stdout, res.stdout + res.stderr
    assert (tmp_path / "o.png").is_file()


def test_one_rule_picks_the_artifact_for_every_consumer(tiny_export):
    with pytest.raises(ArtifactError, match="no fp32 TensorRT engine"):
        open_artifact(tiny_export, backend="tensorrt")
    with pytest.raises(ArtifactError, match="no int8 ONNX artifact; available precisions: fp32"):
        open_artifact(tiny_export, precision="int8")
    with pytest.raises(ArtifactError, match="unknown backend 'cuda'"):
        open_artifact(tiny_export, backend="cuda")
    assert open_artifact(tiny_export).path.name == "model.onnx"
