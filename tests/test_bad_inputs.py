"""Hostile and careless inputs, table-driven: each gives one line `lipt-export: error: ...`, a non-zero exit and
leaves the file system as it was (batch upscaling finishes the good files and reports the bad ones)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from lipt_export.cli import main

TINY = ["--model", "lipt", "--variant", "tiny", "--scale", "2", "--backend", "onnxruntime", "--no-lint"]


def _cli(*args, cwd=None):
    old = os.getcwd()
    if cwd:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(main, [str(a) for a in args], prog_name="lipt-export")
    finally:
        os.chdir(old)


def _tree(root: Path):
    """Every file and folder under root with its content hash and mode: 'nothing changed' is equality."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        out[str(p.relative_to(root))] = (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
                                         st.st_mode)
    return out


def _one_line_error(res, *needles):
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("lipt-export: error:"), res.stderr
    assert "Traceback" not in res.output
    for n in needles:
        assert n in lines[0], lines[0]


def _png(path: Path, h: int, w: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    res = _cli(*TINY, "--out", root / "out")
    assert res.exit_code == 0, res.output
    return root / "out" / "lipt-tiny-x2"


def _copy(export: Path, tmp_path: Path, name: str = "copy") -> Path:
    dst = tmp_path / name
    shutil.copytree(export, dst)
    return dst


def _edit_manifest(d: Path, edit) -> None:
    m = json.loads((d / "manifest.json").read_text())
    edit(m)
    (d / "manifest.json").write_text(json.dumps(m))


# -- export ------------------------------------------------------------------------------------------------

def test_bare_command_prints_help_and_writes_nothing(tmp_path):
    res = _cli(cwd=tmp_path)
    assert res.exit_code == 0 and "Usage: lipt-export" in res.output and "Commands:" in res.output
    assert not any(tmp_path.iterdir())


def _garbage_checkpoints(tmp_path: Path):
    text = tmp_path / "notes.pt"
    text.write_text("these are my training notes\n")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    whole = tmp_path / "whole.pt"
    torch.save({"w": torch.randn(4096)}, whole)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    nan = tmp_path / "nan.pt"
    torch.save({"head.0.weight": torch.tensor([1.0, float("nan"), float("inf")]), "b": torch.ones(2)}, nan)
    return {"text": (text, "is a text file"), "empty": (empty, "is an empty file"),
            "truncated": (truncated, "truncated or corrupt"), "folder": (tmp_path, "is a folder"),
            "nan": (nan, "2 NaN/Inf values in 1 tensor(s) (head.0.weight)")}


EXPORT_CASES = {
    "mistyped command": (["evl", "--model", "lipt"], ["unknown command 'evl'"]),
    "name is ..": ([*TINY, "--name", ".."], ["--name '..'", "plain folder name"]),
    "name with slash": ([*TINY, "--name", "a/b"], ["plain folder name"]),
    "unknown model": (["--model", "nope"], ["unknown model 'nope'"]),
    "tile-less int8": ([*TINY, "--int8"], ["INT8 needs representative images"]),
    "json is a folder": ([*TINY, "--json", "{tmp}"], ["--json", "is a folder"]),
}


@pytest.mark.parametrize("case", sorted(EXPORT_CASES))
def test_export_refusals(case, tmp_path):
    args, needles = EXPORT_CASES[case]
    before = _tree(tmp_path)
    res = _cli(*[a.replace("{tmp}", str(tmp_path)) for a in args], "--out", tmp_path / "out", cwd=tmp_path)
    _one_line_error(res, *needles)
    assert _tree(tmp_path) == before


def test_export_checks_calib_and_out_before_any_work(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_bytes(b"not a png")
    (tmp_path / "file").write_text("x")
    for args, needles in (
            (["--int8", "--calib", tmp_path / "empty"], ["holds no images"]),
            (["--int8", "--calib", tmp_path / "junk"], ["cannot read image", "a.png"]),
            (["--int8", "--calib", tmp_path / "missing"], ["is not a folder"]),
            (["--out", tmp_path / "file"], ["is a file, not a folder"])):
        before = _tree(tmp_path)
        res = _cli(*TINY, *args, *([] if "--out" in args else ["--out", tmp_path / "out"]))
        _one_line_error(res, *needles)
        assert "[model]" not in res.output  # refused before the model was even built
        assert _tree(tmp_path) == before


@pytest.mark.parametrize("kind", ["text", "empty", "truncated", "folder", "nan"])
def test_bad_checkpoints_are_named_not_blamed_on_the_exporter(kind, tmp_path):
    path, needle = _garbage_checkpoints(tmp_path)[kind]
    before = _tree(tmp_path)
    res = _cli(*TINY, "--weights", path, "--out", tmp_path / "out")
    _one_line_error(res, needle)
    assert "ONNX" not in res.stderr and _tree(tmp_path) == before


def test_existing_export_needs_overwrite_and_a_running_export_holds_a_lock(export, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(export, out / "lipt-tiny-x2")
    before = _tree(tmp_path)
    _one_line_error(_cli(*TINY, "--out", out), "already exists", "--overwrite")
    assert _tree(tmp_path) == before
    lock = out / ".lipt-tiny-x2.lock"
    lock.write_text(str(os.getpid()))  # a live process holds it
    before = _tree(tmp_path)
    _one_line_error(_cli(*TINY, "--out", out, "--overwrite"), "another export into", "is running")
    assert _tree(tmp_path) == before
    lock.write_text("999999999")  # a killed run's lock: taken over
    res = _cli(*TINY, "--out", out, "--overwrite", "--seed", "3")
    assert res.exit_code == 0, res.output
    assert not lock.exists() and json.loads((out / "lipt-tiny-x2" / "manifest.json").read_text())[
        "model"]["weights"]["seed"] == 3


def test_outputs_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        res = _cli(*TINY, "--out", tmp_path / "out")
        assert res.exit_code == 0, res.output
    finally:
        os.umask(old)
    d = tmp_path / "out" / "lipt-tiny-x2"
    assert d.stat().st_mode & 0o777 == 0o755
    assert {p.name: p.stat().st_mode & 0o777 for p in d.iterdir()} == {p.name: 0o644 for p in d.iterdir()}


# -- opening an export ------------------------------------------------------------------------------------

def _flip_onnx(d: Path):
    data = bytearray((d / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (d / "model.onnx").write_bytes(bytes(data))


MANIFEST_CASES = {
    "flipped byte": (_flip_onnx, ["sha256 differs"]),
    "path outside": (lambda d: _edit_manifest(d, lambda m: m["artifacts"][0].update(path="../../../../etc/passwd")),
                     ["points outside the export directory"]),
    "absolute path": (lambda d: _edit_manifest(d, lambda m: m["artifacts"][0].update(path="/etc/passwd")),
                      ["points outside the export directory"]),
    "schema 99": (lambda d: _edit_manifest(d, lambda m: m.update(schema_version=99)), ["schema_version 99"]),
    "no model": (lambda d: _edit_manifest(d, lambda m: m.pop("model")), ["has no 'model'"]),
    "scale 2 -> 4": (lambda d: _edit_manifest(d, lambda m: (m["model"].update(scale=4), m["io"].update(scale=4))),
                     ["says lipt x4 but model.onnx was exported as lipt x2"]),
    "not json": (lambda d: (d / "manifest.json").write_text("{"), ["is not valid JSON"]),
}


ARTIFACT_LEVEL = {"flipped byte", "path outside", "absolute path", "scale 2 -> 4"}


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
@pytest.mark.parametrize("command", ["upscale", "eval", "triton", "bench", "verify"])
def test_every_command_refuses_an_untrustworthy_export(case, command, export, tmp_path):
    edit, needles = MANIFEST_CASES[case]
    d = _copy(export, tmp_path)
    edit(d)
    img = _png(tmp_path / "in.png", 20, 24)
    data = tmp_path / "ds"
    (data / "HR").mkdir(parents=True)
    _png(data / "HR" / "x.png", 32, 32)
    before = _tree(tmp_path)
    args = {"upscale": ["upscale", d, img, tmp_path / "o.png"],
            "eval": ["eval", "--model", "lipt", "--variant", "tiny", "--scale", "2", "--no-eager", "--artifact", d,
                     "--dataset", data],
            "triton": ["triton", d, "--repo", tmp_path / "repo"],
            "bench": ["bench", d, "--sizes", "16x16", "--runs", "1", "--warmup", "0"],
            "verify": ["verify", d]}[command]
    res = _cli(*args)
    if command == "verify" and case in ARTIFACT_LEVEL:  # verify reports per artifact instead of stopping
        assert res.exit_code == 1 and all(n in res.output for n in needles) and "fail" in res.output
    else:
        _one_line_error(res, *needles)
    assert _tree(tmp_path) == before


# -- upscale ----------------------------------------------------------------------------------------------

def test_tiny_images_are_padded_and_bad_tiles_refused(export, tmp_path):
    for h, w in ((1, 1), (3, 5), (4, 4)):
        img = _png(tmp_path / f"t{h}x{w}.png", h, w)
        res = _cli("upscale", export, img, tmp_path / f"o{h}x{w}.png", "-q")
        assert res.exit_code == 0, res.output
        assert Image.open(tmp_path / f"o{h}x{w}.png").size == (2 * w, 2 * h)
    img = _png(tmp_path / "in.png", 40, 40)
    before = _tree(tmp_path)
    _one_line_error(_cli("upscale", export, img, tmp_path / "o.png", "--tile", "4"), "tile 4 is too small")
    _one_line_error(_cli("upscale", export, img, tmp_path / "o.png", "--tile", "16", "--overlap", "100"),
                    "tile 16 is too small for overlap 100")
    _one_line_error(_cli("triton", export, "--repo", tmp_path / "repo", "--name", 'a"b'), "invalid model name")
    assert _tree(tmp_path) == before


def test_folder_upscaling_survives_bad_files_collisions_and_resumes(export, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _png(src / "a.png", 20, 24, seed=1)
    Image.open(src / "a.png").convert("RGB").save(src / "a.jpg")
    _png(src / "b.png", 1, 1, seed=2)
    (src / "c.png").write_bytes(b"broken")
    _png(src / "d.png", 18, 22, seed=3)
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".d.png.abc123.tmp"
    stale.write_bytes(b"left by a killed run")
    res = _cli("upscale", export, src, out, "--format", "png", "-q")
    assert res.exit_code == 2, res.output
    assert "cannot read image" in res.stderr and "c.png" in res.stderr
    assert "done 4, failed 1, skipped 0" in res.output and "a_jpg.png, a_png.png" in res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a_jpg.png", "a_png.png", "b.png", "d.png"]  # stale gone
    before = _tree(out)
    res = _cli("upscale", export, src, out, "--format", "png", "-q", "--skip-existing")
    assert "done 0, failed 1, skipped 4" in res.output and _tree(out) == before
