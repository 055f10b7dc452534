"""`lipt-export triton ... --kserve NAME`: the InferenceService beside the repository, loaded by the kserve SDK's own
model classes (in its own venv, tests/helpers/kserve_env.py) and serialized back without loss. No Kubernetes
cluster runs it here."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers.cli import assert_one_line_error, run_cli
from helpers.kserve_env import kserve_python

VALIDATE = Path(__file__).resolve().parent / "helpers" / "kserve_validate.py"


def _sdk_round_trip(path: Path) -> dict:
    python, why = kserve_python()
    if python is None:
        pytest.skip(why)
    proc = subprocess.run([str(python), str(VALIDATE), str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr  # stderr names fields the SDK lacks
    return json.loads(proc.stdout)


def _model(doc: dict) -> dict:
    return doc["spec"]["predictor"]["model"]


def test_onnx_and_tiled_repositories_load_into_kserve(tiny_export, tmp_path):
    res = run_cli("triton", tiny_export, "--repo", tmp_path / "repo", "--kserve", "lipt-tiny", "--storage-uri",
                  "s3://bucket/repo", "--min-replicas", "0", "--max-replicas", "3")
    assert res.exit_code == 0, res.output + res.stderr
    path = tmp_path / "lipt-tiny.inferenceservice.yaml"  # beside the repository, never inside it
    assert path.is_file() and not list((tmp_path / "repo").glob("*.yaml"))
    doc = yaml.safe_load(path.read_text())
    model = _model(doc)
    assert model["modelFormat"] == {"name": "onnx", "version": "1"} and model["runtime"] == "kserve-tritonserver"
    assert model["protocolVersion"] == "v2" and model["storageUri"] == "s3://bucket/repo"
    assert model["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert "nvidia.com/gpu" not in model["resources"]["requests"] and "cpu" in model["resources"]["requests"]
    assert doc["spec"]["predictor"]["minReplicas"] == 0 and doc["spec"]["predictor"]["maxReplicas"] == 3
    back = _sdk_round_trip(path)
    assert back["back"] == back["in"] == doc  # nothing lost through V1beta1InferenceService
    # --tiled adds a Python-backend BLS model: the repository is served as a Triton repository (format triton)
    res = run_cli("triton", tiny_export, "--repo", tmp_path / "repo", "--tiled", "--force", "--kserve", "lipt-tiny",
                  "--storage-uri", "gs://b/r")
    assert res.exit_code == 0, res.output + res.stderr
    doc = yaml.safe_load(path.read_text())
    assert _model(doc)["modelFormat"] == {"name": "triton", "version": "2"}
    assert _sdk_round_trip(path)["back"] == doc


def test_plan_repository_asks_for_a_gpu(tmp_path):
    """A repository holding a TensorRT plan (datacenter plans are the only ones Triton loads; none is built
    here, so its config is written as `lipt-export triton` writes it for one) gets format tensorrt and a GPU."""
    from lipt_export.engines.kserve import write_inference_service
    from lipt_export.engines.triton import render_config

    io = {"input": {"name": "lr", "dtype": "float32"}, "output": {"name": "sr", "dtype": "float32"}}
    model = tmp_path / "repo" / "lipt-small-x4"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(render_config("lipt-small-x4", "tensorrt_plan", io, 1, 1, "KIND_GPU", False))
    res = write_inference_service(tmp_path / "repo", "lipt-small", "pvc://models/repo")
    model_spec = _model(res["manifest"])
    assert res["format"] == "tensorrt" and model_spec["modelFormat"]["version"] == "8"
    assert model_spec["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert model_spec["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert _sdk_round_trip(res["path"])["back"] == res["manifest"]


def test_bad_kserve_options_write_nothing(tiny_export, tmp_path):
    repo = tmp_path / "repo"
    for args, needle in [(("--kserve", "Bad_Name"), "not a Kubernetes name"),
                         (("--kserve", "ok", "--min-replicas", "3", "--max-replicas", "2"), "--max-replicas 2"),
                         (("--storage-uri", "s3://x"), "go with --kserve")]:
        assert_one_line_error(run_cli("triton", tiny_export, "--repo", repo, *args), needle)
        assert not repo.exists() and not list(tmp_path.glob("*.yaml"))
    mine = tmp_path / "mine.inferenceservice.yaml"
    mine.write_text("a user's own file\n")
    assert run_cli("triton", tiny_export, "--repo", repo, "--kserve", "mine").exit_code == 2
    res = run_cli("triton", tiny_export, "--repo", tmp_path / "repo2", "--kserve", "mine", "--force")
    assert_one_line_error(res, "only a manifest this tool wrote")
    assert mine.read_text() == "a user's own file\n" and not (tmp_path / "repo2").exists()
