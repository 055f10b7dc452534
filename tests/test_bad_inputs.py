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
from PIL import Image

from helpers.cli import assert_one_line_error, run_cli, tree

TINY = ["--model", "lipt", "--variant", "tiny", "--scale", "2", "--backend", "onnxruntime", "--no-lint"]


def _png(path: Path, h: int, w: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def export(tiny_export):
    return tiny_export  # read-only here: tests that edit an export copy it (_copy)


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
    res = run_cli(cwd=tmp_path)
    assert res.exit_code == 0 and "Usage: lipt-export" in res.output and "Commands:" in res.output
    assert "Models (variants; scales):" in res.output and "esrt     base; x2, x3, x4" in res.output
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
    absurd = tmp_path / "absurd.pt"
    torch.save({"head.0.weight": torch.tensor([1.0, 1.4e27]), "b": torch.ones(2)}, absurd)
    crc = tmp_path / "crc.pt"  # a flipped byte inside a stored tensor: the zip still opens, its CRC no longer matches
    torch.save({"w": torch.arange(4096, dtype=torch.float32)}, crc)
    data = bytearray(crc.read_bytes())
    at = data.index(np.arange(4096, dtype=np.float32).tobytes()[4000:4016])  # torch stores tensors uncompressed
    data[at] ^= 0x40
    crc.write_bytes(bytes(data))
    return {"text": (text, "is a text file"), "empty": (empty, "is an empty file"),
            "truncated": (truncated, "truncated or corrupt"), "folder": (tmp_path, "is a folder"),
            "nan": (nan, "2 NaN/Inf values in 1 tensor(s) (head.0.weight)"),
            "absurd": (absurd, "|head.0.weight| reaches 1.4e+27"), "crc": (crc, "fails its CRC check")}


EXPORT_CASES = {
    "mistyped command": (["evl", "--model", "lipt"], ["unknown command 'evl'"]),
    "name is ..": ([*TINY, "--name", ".."], ["--name '..'", "plain folder name"]),
    "name with slash": ([*TINY, "--name", "a/b"], ["plain folder name"]),
    "unknown model": (["--model", "nope"], ["unknown model 'nope'"]),
    "tile-less int8": ([*TINY, "--int8"], ["INT8 needs representative images"]),
    "json is a folder": ([*TINY, "--json", "{tmp}"], ["--json", "is a folder"]),
    "opset 5": ([*TINY, "--opset", "5"], ["--opset 5 is outside", "13..20"]),
    "opset 99": ([*TINY, "--opset", "99"], ["--opset 99 is outside"]),
    "parity 1x1": ([*TINY, "--parity-size", "1x1", "--parity-size", "2x3"], ["1x1, 2x3", "smallest input 9x9"]),
    "unknown option value": ([*TINY, "--simplify", "magic"], ["invalid value for '--simplify'", "--help"]),
}


@pytest.mark.parametrize("case", sorted(EXPORT_CASES))
def test_export_refusals(case, tmp_path):
    args, needles = EXPORT_CASES[case]
    before = tree(tmp_path)
    res = run_cli(*[a.replace("{tmp}", str(tmp_path)) for a in args], "--out", tmp_path / "out", cwd=tmp_path)
    assert_one_line_error(res, *needles)
    assert tree(tmp_path) == before


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
        before = tree(tmp_path)
        res = run_cli(*TINY, *args, *([] if "--out" in args else ["--out", tmp_path / "out"]))
        assert_one_line_error(res, *needles)
        assert "[model]" not in res.output  # refused before the model was even built
        assert tree(tmp_path) == before


@pytest.mark.parametrize("kind", ["text", "empty", "truncated", "folder", "nan", "absurd", "crc"])
def test_bad_checkpoints_are_named_not_blamed_on_the_exporter(kind, tmp_path):
    path, needle = _garbage_checkpoints(tmp_path)[kind]
    before = tree(tmp_path)
    res = run_cli(*TINY, "--weights", path, "--out", tmp_path / "out")
    assert_one_line_error(res, needle)
    assert "ONNX" not in res.stderr and tree(tmp_path) == before


def test_existing_export_needs_overwrite_and_a_running_export_holds_a_lock(export, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(export, out / "lipt-tiny-x2")
    before = tree(tmp_path)
    assert_one_line_error(run_cli(*TINY, "--out", out), "already exists", "--overwrite")
    assert tree(tmp_path) == before
    lock = out / ".lipt-tiny-x2.lock"
    lock.write_text(str(os.getpid()))  # a live process holds it
    before = tree(tmp_path)
    assert_one_line_error(run_cli(*TINY, "--out", out, "--overwrite"), "another export into", "is running")
    assert tree(tmp_path) == before
    lock.write_text("999999999")  # a killed run's lock: taken over
    res = run_cli(*TINY, "--out", out, "--overwrite", "--seed", "3")
    assert res.exit_code == 0, res.output
    assert not lock.exists() and json.loads((out / "lipt-tiny-x2" / "manifest.json").read_text())[
        "model"]["weights"]["seed"] == 3


def test_outputs_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        res = run_cli(*TINY, "--out", tmp_path / "out")
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


def _duplicate_fp32(d: Path):
    """A second fp32 ONNX entry for an altered copy, with its own (correct) sha256: which one would run?"""
    data = bytearray((d / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (d / "altered.onnx").write_bytes(bytes(data))
    entry = {"path": "altered.onnx", "format": "onnx", "precision": "fp32",
             "sha256": hashlib.sha256(bytes(data)).hexdigest(), "bytes": len(data)}
    _edit_manifest(d, lambda m: m["artifacts"].insert(0, entry))


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
    "multiple_of 0": (lambda d: _edit_manifest(d, lambda m: m["io"]["size"].update(multiple_of=0)),
                      ["'multiple_of' is 0, not an integer >= 1"]),
    "two fp32 entries": (_duplicate_fp32, ["lists two fp32 onnx artifacts", "cannot tell which to run"]),
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
    before = tree(tmp_path)
    args = {"upscale": ["upscale", d, img, tmp_path / "o.png"],
            "eval": ["eval", "--model", "lipt", "--variant", "tiny", "--scale", "2", "--no-eager", "--artifact", d,
                     "--dataset", data],
            "triton": ["triton", d, "--repo", tmp_path / "repo"],
            "bench": ["bench", d, "--sizes", "16x16", "--runs", "1", "--warmup", "0"],
            "verify": ["verify", d]}[command]
    res = run_cli(*args)
    if command == "verify" and case in ARTIFACT_LEVEL:  # verify reports per artifact instead of stopping
        assert res.exit_code == 1 and all(n in res.output for n in needles) and "fail" in res.output
    else:
        assert_one_line_error(res, *needles)
    assert tree(tmp_path) == before


# -- upscale ----------------------------------------------------------------------------------------------

def test_tiny_images_are_padded_and_bad_tiles_refused(export, tmp_path):
    for h, w in ((1, 1), (3, 5), (4, 4)):
        img = _png(tmp_path / f"t{h}x{w}.png", h, w)
        res = run_cli("upscale", export, img, tmp_path / f"o{h}x{w}.png", "-q")
        assert res.exit_code == 0, res.output
        assert Image.open(tmp_path / f"o{h}x{w}.png").size == (2 * w, 2 * h)
    img = _png(tmp_path / "in.png", 40, 40)
    before = tree(tmp_path)
    assert_one_line_error(run_cli("upscale", export, img, tmp_path / "o.png", "--tile", "4"), "tile 4 is too small")
    assert_one_line_error(run_cli("upscale", export, img, tmp_path / "o.png", "--tile", "16", "--overlap", "100"),
                    "tile 16 is too small for overlap 100")
    assert_one_line_error(run_cli("triton", export, "--repo", tmp_path / "repo", "--name", 'a"b'), "invalid model name")
    assert tree(tmp_path) == before


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
    stale = out / ".d.png.999999999-abc123.tmp"  # its process is gone: a killed run's
    stale.write_bytes(b"left by a killed run")
    live = out / ".d.png.1-xyz789.tmp"  # process 1 lives: another upscale's file in progress
    live.write_bytes(b"another run is writing this")
    res = run_cli("upscale", export, src, out, "--format", "png", "-q")
    assert res.exit_code == 2, res.output
    assert "cannot read image" in res.stderr and "c.png" in res.stderr
    assert "done 4, failed 1, skipped 0" in res.output and "a_jpg.png, a_png.png" in res.stderr
    assert sorted(p.name for p in out.iterdir()) == [live.name, "a_jpg.png", "a_png.png", "b.png", "d.png"]
    live.unlink()
    before = tree(out)
    res = run_cli("upscale", export, src, out, "--format", "png", "-q", "--skip-existing")
    assert "done 0, failed 1, skipped 4" in res.output and tree(out) == before


# -- values that used to end in a traceback or in hours of work ---------------------------------------------

def _onnx_without_its_data(export: Path, tmp_path: Path) -> Path:
    import onnx

    model = onnx.load(str(export / "model.onnx"))
    path = tmp_path / "ext" / "model.onnx"
    path.parent.mkdir()
    onnx.save(model, str(path), save_as_external_data=True, location="model.data", size_threshold=0)
    (path.parent / "model.data").unlink()  # copied without its weights
    return path


def _onnx_ir_99(export: Path, tmp_path: Path) -> Path:
    import onnx

    model = onnx.load(str(export / "model.onnx"))
    model.ir_version = 99
    path = tmp_path / "ir99.onnx"
    onnx.save(model, str(path))
    return path


def test_values_that_used_to_crash_are_one_line(export, tmp_path):
    img = _png(tmp_path / "in.png", 20, 24)
    ext, ir99 = _onnx_without_its_data(export, tmp_path), _onnx_ir_99(export, tmp_path)
    data = tmp_path / "ds"
    (data / "HR").mkdir(parents=True)
    _png(data / "HR" / "x.png", 32, 32)
    eval_args = ["eval", "--model", "lipt", "--variant", "tiny", "--scale", "2", "--dataset", data]
    cases = [
        (["bench", export, "--sizes", "100000x100000", "--no-eager"], ["--sizes 100000x100000", "GiB"]),
        (["lint", ext], ["cannot read", "external data"]),
        (["upscale", ext, img, tmp_path / "o1.png"], ["ONNX Runtime cannot load", "external"]),
        (["upscale", ir99, img, tmp_path / "o2.png", "--runtime", "onnxruntime"],
         ["Unsupported model IR version: 99"]),
        ([*eval_args, "--limit", "-1"], ["invalid value for '--limit'"]),
        ([*eval_args, "--limit", "0"], ["invalid value for '--limit'"]),
        ([*eval_args, "--json", tmp_path], ["--json", "is a folder"]),
        (["verify", export, "--json", tmp_path / "no" / "such" / "dir" / "v.json"], []),
        (["lint", export / "model.onnx", "--json", tmp_path], ["--json", "is a folder"]),
        (["triton", export, "--repo", tmp_path / "repo", "--tiled", "--overlap", "100000"],
         ["too small for overlap 100000"]),
    ]
    for args, needles in cases:
        before = tree(tmp_path)
        res = run_cli(*args)
        if args[0] == "verify":  # a --json folder that can be created is fine: the run itself must succeed
            assert res.exit_code == 0, res.output
            continue
        assert_one_line_error(res, *needles)
        assert tree(tmp_path) == before, args
    assert not (tmp_path / "repo").exists()


def test_open_dataset_refuses_a_limit_below_one(tmp_path):
    from lipt_export.errors import DatasetError
    from lipt_export.validation.datasets import open_dataset

    (tmp_path / "HR").mkdir()
    for k in range(3):
        _png(tmp_path / "HR" / f"{k}.png", 16, 16, seed=k)
    assert len(open_dataset(tmp_path, 2, limit=2)) == 2
    for bad in (0, -1):
        with pytest.raises(DatasetError, match="at least 1"):
            open_dataset(tmp_path, 2, limit=bad)
