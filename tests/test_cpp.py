"""C++ serving (cpp/, docs/serving.md "C++ serving"): lipt-upscale-cpp on real exports equals `lipt-export upscale
--runtime openvino-f32` within 1 LSB, its tiling plan equals tiling.py's bit for bit, and it refuses what the Python
reader refuses with the same one-line meaning. Built by cpp/setup.sh (as `make test` does); skips naming the reason
when the C++ part cannot be built here."""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from helpers.shared import REPO
from lipt_export.cli import main
from lipt_export.errors import ManifestError, TilingError
from lipt_export.manifest import read_manifest
from lipt_export.runtime.openvino import OpenVinoRunner
from lipt_export.tiling import axis_arcs, axis_weights
from lipt_export.validation.inputs import synthetic_image

BUILD = REPO / "cpp" / "build"
PREFIX = "lipt-upscale-cpp: error: "


@pytest.fixture(scope="session")
def cpp_bin() -> Path:
    """cpp/setup.sh (idempotent: a no-op rebuild when nothing changed), then the built binaries' folder."""
    proc = subprocess.run(["bash", str(REPO / "cpp" / "setup.sh"), sys.executable], capture_output=True, text=True,
                          timeout=1200)
    if proc.returncode != 0:
        marker = BUILD / "UNAVAILABLE"
        reason = marker.read_text().strip() if marker.is_file() else (proc.stderr.strip() or "cpp/setup.sh failed")
        pytest.skip(f"the C++ part is not built: {reason.splitlines()[-1]}")
    return BUILD


def _export(out: Path, *args: str) -> Path:
    res = CliRunner().invoke(main, [*args, "--backend", "onnxruntime", "--no-lint", "--out", str(out)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    (made,) = [p for p in out.iterdir() if p.is_dir()]
    return made


@pytest.fixture(scope="module")
def lipt(tmp_path_factory) -> Path:
    return _export(tmp_path_factory.mktemp("cpp_lipt"), "--model", "lipt", "--variant", "tiny", "--scale", "2", "--fp16")


@pytest.fixture(scope="module")
def smsr(tmp_path_factory, shared):
    ckpt, lr = shared.require("checkpoints/smsr/SMSR_x2_official.pt", "datasets/Set5/LR_bicubic/X2/woman.png")
    return _export(tmp_path_factory.mktemp("cpp_smsr"), "--model", "smsr", "--scale", "2", "--weights", str(ckpt)), lr


def _cpp(bindir: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(bindir / "lipt-upscale-cpp"), *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def _python_upscale(export: Path, src: Path, dst: Path, *args) -> None:
    res = CliRunner().invoke(main, ["upscale", "--quiet", "--runtime", "openvino-f32", str(export), str(src), str(dst),
                                    *map(str, args)], catch_exceptions=False)
    assert res.exit_code == 0, res.output


def _image(path: Path, h: int, w: int, kind: str, seed: int = 0) -> Path:
    rgb = (synthetic_image(h, w, seed) * 255).round().astype(np.uint8)
    if kind == "rgb":
        Image.fromarray(rgb).save(path)
    elif kind == "gray":
        Image.fromarray(rgb).convert("L").save(path)
    elif kind == "gray16":
        Image.fromarray((synthetic_image(h, w, seed)[..., 0] * 65535).astype(np.uint16)).save(path)
    elif kind == "rgba":  # a ramp with a hole: bicubic overshoot and clipping both show
        alpha = np.tile(np.linspace(0, 255, w).astype(np.uint8), (h, 1))
        alpha[h // 4:h // 2, w // 4:w // 2] = 0
        Image.fromarray(np.dstack([rgb, alpha])).save(path)
    return path


def _lsb_diff(a_path: Path, b_path: Path) -> float:
    """Max |a - b| in 8-bit LSBs (16-bit images: divided by 257), after checking mode and size agree."""
    a, b = Image.open(a_path), Image.open(b_path)
    assert (a.mode, a.size) == (b.mode, b.size)
    diff = np.abs(np.asarray(a).astype(np.int64) - np.asarray(b).astype(np.int64)).max()
    return diff / 257 if a.mode.startswith("I") else float(diff)


# (h, w, kind, extra args): untiled and tiled at sizes that are not multiples of the tile or the window
LIPT_CASES = {
    "rgb-untiled-37x51": (37, 51, "rgb", ()),
    "rgb-tiled-97x150": (97, 150, "rgb", ("--tile", 64, "--overlap", 16)),
    "rgb-tiled-default-overlap-70x130": (70, 130, "rgb", ("--tile", 96)),
    "gray-untiled-37x51": (37, 51, "gray", ()),
    "gray16-tiled-45x61": (45, 61, "gray16", ("--tile", 32, "--overlap", 8)),
    "rgba-tiled-40x56": (40, 56, "rgba", ("--tile", 32, "--overlap", 8)),
    "fp16-artifact-tiled-97x150": (97, 150, "rgb", ("--precision", "fp16", "--tile", 64, "--overlap", 16)),
    "below-min-size-5x7": (5, 7, "rgb", ()),
}


@pytest.mark.parametrize("case", list(LIPT_CASES))
def test_lipt_output_equals_python_upscale(cpp_bin, lipt, tmp_path, case):
    h, w, kind, extra = LIPT_CASES[case]
    src = _image(tmp_path / "in.png", h, w, kind, seed=len(case))
    res = _cpp(cpp_bin, lipt, src, tmp_path / "cpp.png", *extra)
    assert res.returncode == 0, res.stderr
    assert "@openvino-f32 on cpu" in res.stdout
    _python_upscale(lipt, src, tmp_path / "py.png", *extra)
    assert _lsb_diff(tmp_path / "cpp.png", tmp_path / "py.png") <= 1, case


@pytest.mark.parametrize("extra", [(), ("--tile", 64)], ids=["untiled", "tiled"])
def test_smsr_set5_equals_python_upscale(cpp_bin, smsr, tmp_path, extra):
    export, lr = smsr  # woman.png: 114x172 LR, not a multiple of the tile
    res = _cpp(cpp_bin, export, lr, tmp_path / "cpp.png", *extra)
    assert res.returncode == 0, res.stderr
    _python_upscale(export, lr, tmp_path / "py.png", *extra)
    assert _lsb_diff(tmp_path / "cpp.png", tmp_path / "py.png") <= 1


@pytest.mark.parametrize("length,tile,overlap,align,scale", [
    (37, 512, 64, 8, 2), (150, 64, 16, 8, 2), (97, 64, 16, 8, 2), (130, 96, 64, 8, 2), (1000, 512, 64, 8, 4),
    (61, 32, 8, 8, 2), (300, 100, 16, 2, 3), (257, 128, 0, 1, 1), (33, 16, 3, 1, 2), (700, 256, 96, 16, 2),
    (129, 64, 64, 8, 2), (100, 20, 8, 4, 2),  # the last two: tiles too small for the overlap
])
def test_tiling_plan_equals_python(cpp_bin, length, tile, overlap, align, scale):
    out = subprocess.run([str(cpp_bin / "lipt-tiling-plan"), *map(str, (length, tile, overlap, align, scale))],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    got = json.loads(out)
    try:
        arcs = axis_arcs(length, tile, overlap, align)
    except TilingError as exc:  # the same sentence from C++
        assert got == {"error": str(exc)}
        return
    assert got["arcs"] == [[a.start, a.size, a.length] for a in arcs]
    want = [list(struct.unpack(f"{len(w)}I", w.astype(np.float32).tobytes())) for w in axis_weights(arcs, scale)]
    assert got["weights"] == want  # float32 bit patterns


def test_check_exposes_the_contract_as_python_reads_it(cpp_bin, lipt):
    res = _cpp(cpp_bin, lipt, "--check", "--runtime-precision", "bf16")
    assert res.returncode == 0, res.stderr
    policy = read_manifest(lipt).io.tiling
    assert f"recommended tile {policy.recommended_tile}, overlap {policy.overlap}, optional" in res.stdout
    assert "min size 9" in res.stdout and "multiple_of 8" in res.stdout
    # the precision OpenVINO compiled for, read back the same way (bf16 on AMX CPUs, "f32(asked bf16)" elsewhere)
    assert f"on {OpenVinoRunner(lipt / 'model.onnx', 'bf16').runtime}," in res.stdout


def _copy(export: Path, dst: Path) -> Path:
    shutil.copytree(export, dst)
    return dst


def _refused(res: subprocess.CompletedProcess, *words: str) -> str:
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX), res.stderr
    for word in words:
        assert word in lines[0]
    return lines[0][len(PREFIX):]


def _python_refusal(export: Path) -> str:
    man = read_manifest(export)
    with pytest.raises(ManifestError) as exc:
        man.artifact_path(man.select("onnx", "fp32")[0])
    return str(exc.value)


def test_tampered_artifact_refused_as_python_refuses(cpp_bin, lipt, tmp_path):
    d = _copy(lipt, tmp_path / "exp")
    data = bytearray((d / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / "model.onnx").write_bytes(bytes(data))
    src = _image(tmp_path / "in.png", 20, 20, "rgb")
    message = _refused(_cpp(cpp_bin, d, src, tmp_path / "out.png"), "sha256", "re-export")
    assert message == _python_refusal(d)
    assert not (tmp_path / "out.png").exists()


def test_path_outside_the_export_refused_as_python_refuses(cpp_bin, lipt, tmp_path):
    d = _copy(lipt, tmp_path / "exp")
    shutil.copy(d / "model.onnx", tmp_path / "x.onnx")  # present and hash-equal: only the place is wrong
    man = json.loads((d / "manifest.json").read_text())
    _fp32(man)["path"] = "../x.onnx"
    (d / "manifest.json").write_text(json.dumps(man))
    message = _refused(_cpp(cpp_bin, d, "--check"), "points outside the export directory")
    assert message == _python_refusal(d)


def test_missing_export_refused(cpp_bin, tmp_path):
    src = _image(tmp_path / "in.png", 20, 20, "rgb")
    _refused(_cpp(cpp_bin, tmp_path / "nowhere", src, tmp_path / "out.png"), "no such export", "nowhere")
    (tmp_path / "empty").mkdir()
    _refused(_cpp(cpp_bin, tmp_path / "empty", src, tmp_path / "out.png"), "no manifest at")


def _edit_scale(m):
    m["model"]["scale"] = m["io"]["scale"] = 4  # consistent, but not what model.onnx was exported as


def _fp32(man):
    return next(a for a in man["artifacts"] if (a["format"], a["precision"]) == ("onnx", "fp32"))


def _duplicate(m):
    m["artifacts"].append(dict(_fp32(m), path="copy.onnx"))


EDITS = {
    "duplicate entry": (_duplicate, "lists two fp32 onnx artifacts ('model.onnx' and 'copy.onnx')"),
    "zero tile": (lambda m: m["io"]["tiling"].update(recommended_tile=0), "tiling.recommended_tile is 0, not an integer >= 1"),
    "negative overlap": (lambda m: m["io"]["tiling"].update(overlap=-1), "tiling.overlap is -1, not an integer >= 0"),
    "bool multiple": (lambda m: m["io"]["size"].update(multiple_of=True), "size.multiple_of is True"),
    "float min": (lambda m: m["io"]["size"].update(min=9.5), "size.min is 9.5"),
    "schema version": (lambda m: m.update(schema_version=2), "has schema_version 2"),
    "scale mismatch": (lambda m: m["io"].update(scale=3), "model scale 2 and io scale 3 disagree"),
    "model edited": (_edit_scale, "says lipt x4 but model.onnx was exported as lipt x2"),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_edited_manifest_refused(cpp_bin, lipt, tmp_path, edit):
    change, words = EDITS[edit]
    d = _copy(lipt, tmp_path / "exp")
    man = json.loads((d / "manifest.json").read_text())
    change(man)
    (d / "manifest.json").write_text(json.dumps(man))
    _refused(_cpp(cpp_bin, d, "--check"), words, "re-export")
