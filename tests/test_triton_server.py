"""A real Triton Inference Server (the tritonserver bundled in nvidia-pytriton, in the venv that
`lipt-export serve --setup` makes; `make test` runs that setup first) serving what `lipt-export triton` writes
for a real LIPT-tiny x2 export: every repository variant loads, answers like ONNX Runtime run locally, the
tiled BLS model equals local tiling, dynamic batching batches, bad requests get errors while the server stays
up, and `lipt-export serve` starts, answers its own curl example and stops on SIGTERM."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from helpers.cli import assert_one_line_error, run_cli_process
from lipt_export.cli import main
from lipt_export.engines.triton_client import TritonHttpClient, TritonRequestError
from lipt_export.engines.triton_server import (TritonServer, free_port_block, open_server_env, prepare_backends,
                                               server_env_problem)
from lipt_export.manifest import read_manifest
from lipt_export.runtime.ort import OnnxRuntimeRunner
from lipt_export.runtime.tiling import TiledRunner

PROBLEM = server_env_problem()
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=f"Triton server environment unusable: {PROBLEM}")
NAME = "lipt_tiny_x2"
TILE = 96
# name -> extra `lipt-export triton` arguments: every variant the command writes
VARIANTS = {NAME: ["--tiled", "--tile", str(TILE)], "flat": ["--max-batch", "0"],
            "dyn": ["--max-batch", "8", "--dynamic-batching", "--max-queue-delay-us", "20000"],
            "two": ["--instances", "2"]}


@pytest.fixture(scope="module")
def export_dir(tiny_export):
    return tiny_export  # read-only: the server serves copies written by `lipt-export triton`


@pytest.fixture(scope="module")
def server(export_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("triton")
    repo = work / "repo"
    for name, extra in VARIANTS.items():
        res = CliRunner().invoke(main, ["triton", str(export_dir), "--repo", str(repo), "--name", name,
                                        "--threads", "1", *extra])
        assert res.exit_code == 0, res.output
    env = open_server_env()
    srv = TritonServer(env, repo, prepare_backends(env, work / "backends"), port=free_port_block(),
                       log_path=work / "tritonserver.log")
    srv.start(models=[*VARIANTS, f"{NAME}_tiled"])
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return TritonHttpClient(server.http_url, server.metrics_url)


@pytest.fixture(scope="module")
def local(export_dir):
    return OnnxRuntimeRunner(export_dir / "model.onnx", threads=1)


def _image(h, w, seed=0):
    return np.random.default_rng(seed).random((1, 3, h, w), dtype=np.float32)


def test_every_variant_loads_with_its_config(client, server):
    states = {m["name"]: m.get("state") for m in client.repository_index()}
    assert states == {n: "READY" for n in [*VARIANTS, f"{NAME}_tiled"]}
    assert client.config(NAME)["max_batch_size"] == 1
    assert client.config("flat")["max_batch_size"] == 0
    assert client.config("two")["instance_group"][0]["count"] == 2
    assert "dynamic_batching" in client.config("dyn")
    assert client.config(f"{NAME}_tiled")["backend"] == "python"
    # the BLS model runs the tiling vendored into its own version folder, not a lipt_export found elsewhere
    vendored = server.repo / f"{NAME}_tiled" / "1" / "lipt_export" / "runtime" / "tiling.py"
    assert f"tiling from {vendored}" in server.log_path.read_text()
    # the Python backend's shared memory carries the starting process's PID: a later start removes it only once
    # that process is gone (a killed serve), never a live server's
    assert list(Path("/dev/shm").glob(f"lipt-serve-{os.getpid()}-*")), sorted(Path("/dev/shm").iterdir())


def test_setup_is_idempotent():
    res = subprocess.run([sys.executable, "-m", "lipt_export.cli", "serve", "--setup"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and "server environment up to date" in res.stdout, res.stdout + res.stderr


@pytest.mark.parametrize("size", [(64, 64), (37, 51)])
@pytest.mark.parametrize("model", list(VARIANTS))
def test_served_outputs_equal_onnxruntime(client, local, model, size):
    x = _image(*size)
    ref = local.infer(x)
    for binary in (True, False):
        y = client.infer(model, {"lr": x}, ["sr"], binary=binary)["sr"]
        assert y.shape == ref.shape == (1, 3, 2 * size[0], 2 * size[1])
        assert np.abs(y - ref).max() <= 1e-6, (model, binary)


def test_grpc_outputs_equal_onnxruntime(server, local, tmp_path):
    """gRPC through tritonclient in the server's venv (its protobuf < 7 cannot live in the project's)."""
    x = _image(37, 51, seed=3)
    np.save(tmp_path / "x.npy", x)
    script = ("import sys, numpy as np, tritonclient.grpc as g\n"
              "c = g.InferenceServerClient(sys.argv[1]); x = np.load(sys.argv[2])\n"
              "i = g.InferInput('lr', list(x.shape), 'FP32'); i.set_data_from_numpy(x)\n"
              f"r = c.infer('{NAME}', [i], outputs=[g.InferRequestedOutput('sr')])\n"
              "np.save(sys.argv[3], r.as_numpy('sr'))\n")
    subprocess.run([str(server.env.python), "-c", script, server.grpc_address, str(tmp_path / "x.npy"),
                    str(tmp_path / "y.npy")], check=True, capture_output=True, timeout=120)
    assert np.abs(np.load(tmp_path / "y.npy") - local.infer(x)).max() <= 1e-6


def test_tiled_model_equals_local_tiling(client, local, export_dir):
    io = read_manifest(export_dir).io
    tiled_cfg = client.config(f"{NAME}_tiled")["parameters"]
    overlap = int(tiled_cfg["overlap"]["string_value"])
    x = _image(100, 130, seed=1)  # larger than one 96 tile: several tiles per axis
    runner = TiledRunner(local, io.scale, TILE, overlap, io.multiple_of)
    assert runner.count_tiles(100, 130) > 1
    y = client.infer(f"{NAME}_tiled", {"lr": x}, ["sr"])["sr"]
    assert np.abs(y - runner.infer(x)).max() <= 1e-6
    small = _image(37, 51, seed=2)  # below one tile: the whole image, as the plain model gives
    assert np.abs(client.infer(f"{NAME}_tiled", {"lr": small}, ["sr"])["sr"] - local.infer(small)).max() <= 1e-6


def test_tiled_model_pads_images_below_the_graphs_minimum_like_upscale(client, export_dir):
    # The plain model rejects a 2x2 image (test below); the tiled model pads it to the export's minimum size and
    # crops, as `lipt-export upscale` does locally.
    from lipt_export import load_runner

    io = read_manifest(export_dir).io
    assert io.min_size > 2
    cfg = client.config(f"{NAME}_tiled")["parameters"]
    assert int(cfg["min_height"]["string_value"]) == int(cfg["min_width"]["string_value"]) == io.min_size
    upscale = load_runner(export_dir, tile=0)
    for h, w in ((2, 2), (3, 5)):
        x = _image(h, w, seed=h * w)
        y = client.infer(f"{NAME}_tiled", {"lr": x}, ["sr"])["sr"]
        assert y.shape == (1, 3, 2 * h, 2 * w)
        assert np.abs(y - upscale.infer(x)).max() <= 1e-6


def test_dynamic_batching_merges_concurrent_requests(client, local):
    before = client.metrics().get("dyn", {})
    x = _image(32, 32, seed=4)
    ref = local.infer(x)
    errors = []

    def worker():
        for _ in range(4):
            try:
                y = client.infer("dyn", {"lr": x}, ["sr"])["sr"]
                assert np.abs(y - ref).max() <= 1e-6
            except Exception as exc:  # collected: asserting in a thread would be lost
                errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    after = client.metrics()["dyn"]
    requests = after["nv_inference_count"] - before.get("nv_inference_count", 0)
    executions = after["nv_inference_exec_count"] - before.get("nv_inference_exec_count", 0)
    assert requests == 32
    assert executions < requests, f"{executions} executions for {requests} requests: nothing was batched"


@pytest.mark.parametrize("model", [NAME, f"{NAME}_tiled"])
def test_bad_requests_get_errors_and_the_server_stays_up(client, model):
    x = _image(16, 16)
    bad = {"wrong input name": ({"x": x}, "unexpected inference input 'x'"),
           "wrong rank": ({"lr": x[None]}, "shape"),
           "wrong dtype": ({"lr": x.astype(np.float16)}, "data-type is 'FP16'")}
    if model == NAME:  # the plain graph cannot reflect-pad a 2x2 image to its window (the tiled model pads it)
        bad["2x2 image"] = ({"lr": _image(2, 2)}, "Pad")
    for what, (inputs, message) in bad.items():
        with pytest.raises(TritonRequestError) as info:
            client.infer(model, inputs, ["sr"])
        assert message.lower() in info.value.message.lower(), (what, info.value.message)
        assert info.value.status in (400, 500)
    assert client.ready() and client.ready(model)
    assert client.infer(model, {"lr": x}, ["sr"])["sr"].shape == (1, 3, 32, 32)


def test_serve_command_serves_answers_its_curl_example_and_stops_on_sigterm(export_dir, local):
    port = free_port_block()
    proc = subprocess.Popen([sys.executable, "-m", "lipt_export.cli", "serve", str(export_dir), "--port", str(port),
                             "--name", NAME], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Ctrl-C or SIGTERM"):
                break
        text = "".join(lines)
        assert "Ctrl-C or SIGTERM" in text, text
        assert f"model    {NAME}_tiled" in text and "Python-based onnxruntime backend" in text
        curl = next(ln for ln in lines if ln.strip().startswith("curl "))
        body = Path(re.search(r"-d @(\S+)", curl).group(1)).read_text()
        assert len(curl) < 200, curl  # short: the request is a file, not 768 numbers inline
        url = re.search(r"curl -s (\S+)", curl).group(1)
        for model in (NAME, f"{NAME}_tiled"):
            req = urllib.request.Request(url.replace(f"/models/{NAME}/", f"/models/{model}/"), data=body.encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as r:
                out = json.loads(r.read())["outputs"][0]
            request = json.loads(body)["inputs"][0]
            x = np.asarray(request["data"], np.float32).reshape(request["shape"])
            y = np.asarray(out["data"], np.float32).reshape(out["shape"])
            assert np.abs(y - local.infer(x)).max() <= 1e-6
        repo = Path(re.search(r"repo\s+(\S+)", text).group(1))
        assert repo.is_dir()
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
        assert time.monotonic() - t0 < 20
        assert proc.returncode == 0, rest
        assert "stopped in" in rest
        assert not repo.parent.exists(), "the temporary repository was left behind"
        orphans = subprocess.run(["pgrep", "-f", str(repo)], capture_output=True, text=True).stdout.split()
        assert not orphans, f"processes left: {orphans}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_errors_are_one_line(export_dir, tmp_path):
    cases = [(["serve"], "give an EXPORT_DIR"),
             (["serve", str(export_dir), "--server-env", str(tmp_path / "none")], "serve --setup --server-env"),
             (["serve", str(tmp_path / "missing")], "manifest"),
             (["serve", str(export_dir), "--port", "70000"], "--port must be in")]
    for args, message in cases:
        assert_one_line_error(run_cli_process(*args, timeout=60), message)


def test_serve_refuses_a_port_in_use(export_dir):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = subprocess.run([sys.executable, "-m", "lipt_export.cli", "serve", str(export_dir), "--port", str(port)],
                             capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and f"port {port} on 127.0.0.1 is in use" in res.stderr, res.stderr


def test_the_documented_video_client_streams_frames_through_the_tiled_model(server, export_dir, tmp_path):
    """docs/serving.md's example client, run as printed, on a 4-frame clip: every frame as `upscale` gives it."""
    from helpers.video import decoded, make_clip

    text = (Path(__file__).parents[1] / "docs" / "serving.md").read_text()
    block = text.split("<!-- video-client")[1].split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "video_client.py").write_text(block)
    rng = np.random.default_rng(7)
    frames = [(rng.random((48, 64, 3)) * 255).astype(np.uint8) for _ in range(4)]
    clip = make_clip(tmp_path / "in.mkv", frames, codec="ffv1", pix_fmt="bgr0", audio=False, colour=(2, 2, 2, 0))
    res = subprocess.run([sys.executable, str(tmp_path / "video_client.py"), server.http_url, f"{NAME}_tiled",
                          str(clip), str(tmp_path / "served.mkv")], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert res.returncode == 0, res.stderr
    res = CliRunner().invoke(main, ["upscale", str(export_dir), str(clip), str(tmp_path / "local.mkv"), "--lossless",
                                    "--tile", str(TILE), "--runtime", "onnxruntime", "-q"])
    assert res.exit_code == 0, res.output
    served, served_pts, served_tb, *_ = decoded(tmp_path / "served.mkv")
    local, local_pts, local_tb, *_ = decoded(tmp_path / "local.mkv")
    assert len(served) == len(local) == 4 and served[0].shape == (96, 128, 3)
    assert [p * served_tb for p in served_pts] == [p * local_tb for p in local_pts]
    for a, b in zip(served, local):  # float outputs agree to 1e-6: a code differs only on a rounding boundary
        assert np.abs(a.astype(int) - b).max() <= 1
