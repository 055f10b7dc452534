"""`upscale --ray`: a real local Ray cluster (two nodes of one CPU each, on 127.0.0.1 only) runs images and a video
and writes what a local `upscale` writes; a node lost mid-job, a worker process killed, a driver killed and
resumed with --skip-existing. The cluster is started once for the module."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

# before ray is imported: nodes on 127.0.0.1 are then reached over loopback (Ray otherwise swaps in this host's
# routable address), so nothing here listens beyond loopback
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray", reason="Ray is not installed (the [ray] extra)")

from helpers.cli import assert_one_line_error, run_cli, tree  # noqa: E402
from helpers.sockets import descendants, is_loopback, listening  # noqa: E402
from helpers.video import decoded, make_clip, packets  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    # a lost node is noticed within about a second (Ray's default health check takes much longer)
    fast = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 300, "health_check_timeout_ms": 300,
            "health_check_failure_threshold": 3}
    c = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1, node_ip_address="127.0.0.1",
                                                          include_dashboard=False, _system_config=fast))
    c.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    try:
        yield c
    finally:
        c.shutdown()


def _images(folder: Path, n: int, seed: int = 0, base: int = 32) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):  # base..base+32 px, sides that are not multiples of the window
        h, w = base + (7 * i) % 33, base + 32 - (5 * i) % 33
        Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(folder / f"im{i:02d}.png")
    return folder


def _outputs(folder: Path):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _ok(res):
    assert res.exit_code == 0, res.output + res.stderr


def test_cluster_listens_on_loopback_only(cluster):
    pids = set()
    for node in [cluster.head_node, *cluster.worker_nodes]:
        for infos in node.all_processes.values():
            for info in infos:
                pids |= descendants(info.process.pid)
    socks = listening(pids)
    assert socks and all(is_loopback(a) for _, a in socks), socks


def test_images_and_video_equal_local(tiny_export, cluster, tmp_path):
    src = _images(tmp_path / "in", 5)
    from PIL import Image

    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 256, (37, 45, 4), np.uint8)).save(src / "alpha.png")
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), np.uint8)).save(src / "photo.jpg")
    make_clip(src / "clip.mkv", [rng.integers(0, 256, (24, 32, 3), np.uint8) for _ in range(16)], keyint=4)
    before = tree(src)
    _ok(run_cli("upscale", tiny_export, src, tmp_path / "local", "--lossless", "-q"))
    res = run_cli("upscale", tiny_export, src, tmp_path / "ray", "--lossless", "-q", "--ray", cluster.address)
    _ok(res)
    assert "on 2 Ray worker(s)" in res.output and "done 8, failed 0" in res.output
    assert tree(src) == before  # the input is never modified
    local, remote = _outputs(tmp_path / "local"), _outputs(tmp_path / "ray")
    assert sorted(local) == sorted(remote)  # same names, no temp files left
    for name in local:
        if name != "clip.mkv":
            assert local[name] == remote[name], name  # images: the same bytes
    # the video: 4 segments encoded apart (FFV1 keeps context state inside its GOP, so the bytes differ); the
    # decoded frames (lossless), every timestamp, the frame rate, colour tags and the audio packets are the same
    a, b = decoded(tmp_path / "local" / "clip.mkv"), decoded(tmp_path / "ray" / "clip.mkv")
    assert len(a[0]) == len(b[0]) == 16
    assert all(np.array_equal(x, y) for x, y in zip(a[0], b[0]))
    assert a[1:] == b[1:]
    assert packets(tmp_path / "local" / "clip.mkv") == packets(tmp_path / "ray" / "clip.mkv")


def test_bad_ray_options_are_one_line(tiny_export, tmp_path):
    src = _images(tmp_path / "in", 1)
    for args, needle in [(("--ray", "nonsense"), "HOST:PORT"), (("--ray", "127.0.0.1:1"), "no Ray cluster answers"),
                         (("--ray", "--start", "0"), "--start/--duration")]:
        res = run_cli("upscale", tiny_export, src, tmp_path / "out", *args)
        assert_one_line_error(res, needle)
    assert not (tmp_path / "out").exists()
    # without Ray installed: one line naming the extra (the import is blocked in a fresh process)
    code = ("import sys; sys.modules['ray'] = None; from lipt_export.cli import main; "
            f"sys.argv = ['lipt-export', 'upscale', {str(tiny_export)!r}, {str(src)!r}, {str(tmp_path / 'o')!r}, "
            "'--ray']; main()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert_one_line_error(proc, 'pip install "lipt-export[ray]"')


def test_node_lost_mid_job(tiny_export, cluster, tmp_path):
    # enough work that the job outlives the node's removal (started at the first output) on a fast, idle machine:
    # 40 images of 32-64 px finished in 1.4 s there, before the removal took effect
    src = _images(tmp_path / "in", 40, seed=1, base=112)
    _ok(run_cli("upscale", tiny_export, src, tmp_path / "local", "-q"))
    out = tmp_path / "ray"
    node = next(iter(cluster.worker_nodes))

    def remove_when_started():
        while not (out.is_dir() and any(p.suffix == ".png" for p in out.iterdir())):
            time.sleep(0.02)
        cluster.remove_node(node, allow_graceful=False)

    killer = threading.Thread(target=remove_when_started, daemon=True)
    killer.start()
    try:
        res = run_cli("upscale", tiny_export, src, out, "-q", "--ray", cluster.address)
        killer.join(60)
    finally:
        if node in cluster.worker_nodes:
            cluster.remove_node(node)
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")  # the next tests have two nodes again
    _ok(res)
    assert "moved off lost workers" in res.output  # the lost node's tasks ran on the other worker
    assert _outputs(out) == _outputs(tmp_path / "local")  # every output once, complete, nothing else


def test_worker_process_killed_is_retried(tiny_export, cluster, tmp_path):
    """Ray restarts a killed worker on its node and retries its task: the job completes, every output once."""
    src = _images(tmp_path / "in", 16, seed=2)
    _ok(run_cli("upscale", tiny_export, src, tmp_path / "local", "-q"))
    out = tmp_path / "ray"
    killed = []

    def kill_one_worker():
        while not (out.is_dir() and any(p.suffix == ".png" for p in out.iterdir())):
            time.sleep(0.02)
        for stat in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if stat.read_bytes().startswith(b"ray::UpscaleWorker"):
                    os.kill(int(stat.parent.name), signal.SIGKILL)
                    killed.append(int(stat.parent.name))
                    return
            except OSError:
                continue

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    res = run_cli("upscale", tiny_export, src, out, "-q", "--ray", cluster.address)
    killer.join(60)
    _ok(res)
    assert killed
    assert _outputs(out) == _outputs(tmp_path / "local")


def test_driver_killed_then_skip_existing_finishes(tiny_export, cluster, tmp_path):
    src = _images(tmp_path / "in", 40, seed=3)
    _ok(run_cli("upscale", tiny_export, src, tmp_path / "local", "-q"))
    out = tmp_path / "ray"
    driver = subprocess.Popen([sys.executable, "-m", "lipt_export.cli", "upscale", str(tiny_export), str(src),
                               str(out), "-q", "--ray", cluster.address], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 120
        while not (out.is_dir() and sum(p.suffix == ".png" for p in out.iterdir()) >= 2):
            assert driver.poll() is None and time.monotonic() < deadline, "the driver ended before it was killed"
            time.sleep(0.02)
        driver.kill()
    finally:
        driver.wait(30)
    partial = {p.name for p in out.iterdir() if p.suffix == ".png"}
    assert 0 < len(partial) < 40
    res = run_cli("upscale", tiny_export, src, out, "-q", "--skip-existing", "--ray", cluster.address)
    _ok(res)
    assert f"skipped {len(partial)}" in res.output
    assert _outputs(out) == _outputs(tmp_path / "local")  # complete, and the killed run's temp files removed


def test_ray_auto_is_private_and_equals_local(tiny_export, tmp_path):
    """--ray auto in a fresh process: a Ray on 127.0.0.1 only (every port of its process tree is loopback), and
    the same outputs as a local run."""
    src = _images(tmp_path / "in", 3, seed=4)
    _ok(run_cli("upscale", tiny_export, src, tmp_path / "local", "-q"))
    token_file = Path.home() / ".ray" / "auth_token"
    had_token = token_file.exists()
    code = f"""
import json, os, sys
sys.argv = ['lipt-export', 'upscale', {str(tiny_export)!r}, {str(src)!r}, {str(tmp_path / 'ray')!r}, '-q', '--ray']
sys.path.insert(0, {str(REPO / 'tests')!r})
from helpers.sockets import descendants, listening
import lipt_export.runtime.distributed as d
session = d.ray_session

def watched(address):
    cm = session(address)
    class Watch:
        def __enter__(self):
            where = cm.__enter__()
            print(json.dumps(listening(descendants(os.getpid()))), file=sys.stderr)
            return where
        def __exit__(self, *exc):
            return cm.__exit__(*exc)
    return Watch()

d.ray_session = watched
import lipt_export.cli.upscale as u
u.ray_session = watched
from lipt_export.cli import main
main()
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                          env={**env, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    socks = json.loads(next(ln for ln in proc.stderr.splitlines() if ln.startswith("[")))
    assert socks and all(is_loopback(a) for _, a in socks), socks
    assert "a local Ray on 127.0.0.1" in proc.stdout
    assert _outputs(tmp_path / "ray") == _outputs(tmp_path / "local")
    assert token_file.exists() == had_token  # its token lives in the run's environment, never in ~/.ray
