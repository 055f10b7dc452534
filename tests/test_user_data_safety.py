"""Nothing a user owns is ever lost, and a run never trips over another: --overwrite replaces only an export of
this tool, temp files are swept only when their owner is dead, upscale never feeds its own outputs back, a full
disk says what was finished and leaves nothing half-written, and reading an image says what it changed."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.cli import assert_one_line_error, run_cli, tree

TINY = ["--model", "lipt", "--variant", "tiny", "--scale", "2", "--backend", "onnxruntime", "--no-lint"]
DEAD_PID = 999_999_999  # above pid_max: no such process


def _png(path: Path, h: int, w: int, seed: int = 0, **save) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(path, **save)
    return path


@pytest.fixture(scope="module")
def export(tiny_export):
    return tiny_export  # read-only here


def test_overwrite_replaces_an_export_of_this_tool_and_nothing_else(export, tmp_path):
    out = tmp_path / "o"
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "thesis.txt").write_text("x")
    before = tree(tmp_path)
    assert_one_line_error(run_cli(*TINY, "--out", out, "--name", "notes", "--overwrite"),
                          "--overwrite replaces only an export of this tool", "no manifest.json")
    assert tree(tmp_path) == before
    # an export with the user's own file dropped in: refused, naming the file
    import shutil

    shutil.copytree(export, out / "mine")
    (out / "mine" / "my_results.csv").write_text("psnr\n")
    before = tree(tmp_path)
    assert_one_line_error(run_cli(*TINY, "--out", out, "--name", "mine", "--overwrite"),
                          "files this tool did not write: my_results.csv")
    assert tree(tmp_path) == before
    # a clean export of this tool is replaced
    (out / "mine" / "my_results.csv").unlink()
    res = run_cli(*TINY, "--out", out, "--name", "mine", "--overwrite", "--seed", "5")
    assert res.exit_code == 0, res.output
    assert json.loads((out / "mine" / "manifest.json").read_text())["model"]["weights"]["seed"] == 5
    assert (out / "notes" / "thesis.txt").read_text() == "x"


def test_triton_force_replaces_only_a_model_this_tool_wrote(export, tmp_path):
    repo = tmp_path / "repo"
    (repo / "theirs" / "1").mkdir(parents=True)
    (repo / "theirs" / "config.pbtxt").write_text('name: "theirs"\n')
    before = tree(tmp_path)
    assert_one_line_error(run_cli("triton", export, "--repo", repo, "--name", "theirs", "--force"),
                          "--force replaces only a model this tool wrote")
    assert tree(tmp_path) == before
    assert run_cli("triton", export, "--repo", repo, "--name", "ours").exit_code == 0
    res = run_cli("triton", export, "--repo", repo, "--name", "ours", "--force")
    assert res.exit_code == 0, res.output


def test_temps_of_live_runs_are_left_and_of_killed_runs_removed(export, tmp_path):
    """Another upscale writing into the same folder (its PID alive) keeps its temp file; a killed run's (PID gone)
    is removed. The same rule for a killed export's temp folder and a killed server's work folder and shared
    memory."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        src = _png(tmp_path / "a.png", 20, 24)
        out = tmp_path / "out"
        out.mkdir()
        live = out / f".a.png.{sleeper.pid}-abc.tmp"
        live.write_bytes(b"another upscale is writing this")
        dead = out / f".a.png.{DEAD_PID}-abc.tmp"
        dead.write_bytes(b"a killed upscale left this")
        assert run_cli("upscale", export, src, out, "-q").exit_code == 0
        assert live.exists() and not dead.exists() and (out / "a.png").is_file()
        sleeper.kill()
        sleeper.wait()
        assert run_cli("upscale", export, src, out, "-q").exit_code == 0
        assert not live.exists()  # its owner died in the meantime
    finally:
        sleeper.kill()
    # a killed export's temp folder, beside a live one
    root = tmp_path / "exports"
    killed, running = root / f".lipt-tiny-x2.tmp-{DEAD_PID}-x", root / ".lipt-tiny-x2.tmp-1-x"
    for d in (killed, running):
        d.mkdir(parents=True)
        (d / "model.onnx").write_bytes(b"half")
    res = run_cli(*TINY, "--out", root, "--name", "x")  # another name: not swept
    assert res.exit_code == 0 and killed.exists()
    res = run_cli(*TINY, "--out", root)
    assert res.exit_code == 0, res.output
    assert not killed.exists() and running.exists() and "temp folder of an export that was killed" in res.output
    # a killed server's work folder and shared memory
    from lipt_export.engines.triton_server import SHM_DIR, remove_dead_servers_leftovers

    import tempfile

    work_dead = Path(tempfile.gettempdir()) / f"lipt-serve-{DEAD_PID}-zz"
    work_live = Path(tempfile.gettempdir()) / f"lipt-serve-{os.getpid()}-zz"
    shm_dead = SHM_DIR / f"lipt-serve-{DEAD_PID}-region_1"
    for d in (work_dead, work_live):
        (d / "repo").mkdir(parents=True)
    shm_dead.write_bytes(b"\0" * 16)
    try:
        removed = remove_dead_servers_leftovers()
        assert work_dead in removed and shm_dead in removed and not work_dead.exists() and not shm_dead.exists()
        assert work_live.exists()
    finally:
        import shutil

        shutil.rmtree(work_live, ignore_errors=True)
        shutil.rmtree(work_dead, ignore_errors=True)
        shm_dead.unlink(missing_ok=True)


def test_upscale_into_its_own_folder_never_upscales_its_outputs(export, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    _png(folder / "a.jpg", 20, 24, format="JPEG")
    _png(folder / "b.png", 16, 18, seed=1)
    res = run_cli("upscale", export, folder, folder, "--format", "webp", "-q")
    assert res.exit_code == 0, res.output
    assert Image.open(folder / "a.webp").size == (48, 40)
    res = run_cli("upscale", export, folder, folder, "--format", "webp", "-q")  # the same command again
    assert res.exit_code == 0, res.output
    assert "skipped 2 image(s)" in res.stderr and "a.webp, b.webp" in res.stderr
    assert Image.open(folder / "a.webp").size == (48, 40)  # x2 of the original, not x4 of an output
    res = run_cli("upscale", export, folder, tmp_path / "elsewhere", "-q")  # PNG outputs carry the mark too
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == ["a.jpg", "b.png"]
    before = tree(tmp_path)
    assert_one_line_error(run_cli("upscale", export, folder, folder, "--format", "bmp", "-q"),
                          "BMP outputs carry no mark", "another folder")
    assert tree(tmp_path) == before


def _limited(nbytes: int):
    def apply():  # the file-size limit makes writes past it fail (EFBIG): a disk that is full for this process
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return apply


def test_a_full_disk_says_what_was_finished_and_leaves_nothing_half_written(export, tmp_path):
    res = subprocess.run([sys.executable, "-m", "lipt_export.cli", *TINY, "--out", tmp_path / "out"],
                         capture_output=True, text=True, preexec_fn=_limited(300_000), timeout=300)
    line = assert_one_line_error(res, "disk full while writing", "stages finished: model",
                                 "nothing was written to")
    assert str(tmp_path / "out") in line and not (tmp_path / "out").exists()
    src = tmp_path / "in"
    src.mkdir()
    _png(src / "a.png", 8, 8)
    _png(src / "b.png", 64, 64, seed=1)
    res = subprocess.run([sys.executable, "-m", "lipt_export.cli", "upscale", export, src, tmp_path / "up", "-q"],
                         capture_output=True, text=True, preexec_fn=_limited(20_000), timeout=300)
    assert_one_line_error(res, "disk full writing", "b.png", "1 of 2 image(s) were finished", "--skip-existing")
    assert sorted(p.name for p in (tmp_path / "up").iterdir()) == ["a.png"]  # no temp, no half-written b.png


def test_reading_says_what_happens_to_frames_and_bit_depth(export, tmp_path):
    frames = [Image.fromarray(np.full((12, 14, 3), 40 * k, np.uint8)) for k in range(3)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])  # APNG
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    res = run_cli("upscale", export, tmp_path / "anim.png", tmp_path / "o1.png", "-q")
    assert res.exit_code == 0 and "anim.png has 3 frames" in res.stderr and "only the first" in res.stderr
    (tmp_path / "gifs").mkdir()
    res = run_cli("upscale", export, tmp_path / "anim.gif", tmp_path / "gifs", "-q")
    assert res.exit_code == 0 and "anim.gif has 3 frames" in res.stderr
    assert Image.open(tmp_path / "gifs" / "anim.png").size == (28, 24)  # GIF in, PNG out
    rgb16 = tmp_path / "rgb16.png"  # Pillow has no 16-bit RGB mode: the file is written by hand
    _write_png_rgb16(rgb16, np.arange(10 * 12 * 3, dtype=np.uint16).reshape(10, 12, 3) * 180)
    res = run_cli("upscale", export, rgb16, tmp_path / "o2.png", "-q")
    assert res.exit_code == 0 and "16-bit RGB(A) PNG" in res.stderr and "8 bits" in res.stderr
    gray16 = tmp_path / "gray16.png"
    Image.fromarray(np.arange(10 * 12, dtype=np.uint16).reshape(10, 12) * 500).save(gray16)
    res = run_cli("upscale", export, gray16, tmp_path / "o3.png", "-q")
    assert res.exit_code == 0 and "16-bit" not in res.stderr  # kept at 16 bits: nothing to say


def _write_png_rgb16(path: Path, rgb: np.ndarray) -> None:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    h, w, _ = rgb.shape
    raw = b"".join(b"\0" + rgb[i].astype(">u2").tobytes() for i in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_an_overlap_below_the_policy_is_warned_about(export, tmp_path):
    src = _png(tmp_path / "a.png", 80, 90)
    res = run_cli("upscale", export, src, tmp_path / "o.png", "--tile", "64", "--overlap", "16", "-q")
    assert res.exit_code == 0 and "overlap 16 is below this model's tiling policy (64" in res.stderr
    res = run_cli("upscale", export, src, tmp_path / "p.png", "--tile", "96", "-q")
    assert res.exit_code == 0 and "below" not in res.stderr
    res = run_cli("triton", export, "--repo", tmp_path / "repo", "--tiled", "--tile", "64", "--overlap", "16")
    assert res.exit_code == 0 and "overlap 16 is below" in res.stderr
