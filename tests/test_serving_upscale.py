"""`lipt-export upscale`: files and folders, colour modes, tiled == untiled, and the one-line errors."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from helpers.cli import assert_one_line_error
from lipt_export.cli import main
from lipt_export.runtime.eager import TorchRunner
from lipt_export.validation.inputs import synthetic_image
from lipt_export.validation.parity import rel_l2
from helpers.serving_toys import ConvSR, make_export


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    model = ConvSR(scale=2)
    return model, make_export(tmp_path_factory.mktemp("upscale"), model)


def _png(path, h=40, w=56, mode="RGB", seed=0):
    rgb = (synthetic_image(h, w, seed) * 255).round().astype(np.uint8)
    im = Image.fromarray(rgb)
    if mode == "RGBA":
        alpha = np.tile(np.linspace(0, 255, w, dtype=np.uint8), (h, 1))
        im = Image.fromarray(np.dstack([rgb, alpha]))
    elif mode != "RGB":
        im = im.convert(mode)
    im.save(path)
    return path


def _run(*args):
    return CliRunner().invoke(main, ["upscale", "--quiet", *map(str, args)], catch_exceptions=False)


def _eager_uint8(model, path):
    x = np.asarray(Image.open(path).convert("RGB"), np.float32).transpose(2, 0, 1)[None] / 255
    y = TorchRunner(model).infer(x)[0].transpose(1, 2, 0)
    return np.clip(y * 255 + 0.5, 0, 255).astype(np.uint8)


def test_rgb_file_matches_eager_model(toy, tmp_path):
    model, d = toy
    src = _png(tmp_path / "in.png")
    res = _run(d, src, tmp_path / "out.png", "--tile", "24", "--overlap", "8")
    assert res.exit_code == 0, res.output
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert out.shape == (80, 112, 3)
    assert np.abs(out.astype(int) - _eager_uint8(model, src)).max() <= 1  # rounding of fp32 noise only
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "out.png"]  # no temp files left


def test_tiled_equals_untiled_float_output(toy, tmp_path):
    _, d = toy
    src = _png(tmp_path / "in.png", 70, 90, seed=3)
    assert _run(d, src, tmp_path / "tiled.npy", "--tile", "32", "--overlap", "8").exit_code == 0
    assert _run(d, src, tmp_path / "whole.npy", "--tile", "0").exit_code == 0
    tiled, whole = np.load(tmp_path / "tiled.npy"), np.load(tmp_path / "whole.npy")
    assert tiled.shape == (140, 180, 3) and tiled.dtype == np.float32
    assert rel_l2(tiled, whole) < 1e-6


def test_grayscale_stays_grayscale(toy, tmp_path):
    model, d = toy
    src = _png(tmp_path / "gray.png", mode="L")
    assert _run(d, src, tmp_path / "out.png").exit_code == 0
    out = Image.open(tmp_path / "out.png")
    assert out.mode == "L" and out.size == (112, 80)
    rgb = _eager_uint8(model, src).astype(np.float32)  # gray replicated to RGB, luma of the result
    want = np.clip(rgb @ np.array([0.299, 0.587, 0.114]) + 0.5, 0, 255)
    assert np.abs(np.asarray(out, np.float32) - want).max() <= 1.5


def test_sixteen_bit_grayscale_stays_sixteen_bit(toy, tmp_path):
    _, d = toy
    arr = (synthetic_image(24, 30, 1)[..., 0] * 65535).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    assert _run(d, tmp_path / "g16.png", tmp_path / "out.png").exit_code == 0
    out = Image.open(tmp_path / "out.png")
    assert out.mode.startswith("I") and out.size == (60, 48)
    assert np.asarray(out).max() > 255  # really 16-bit values, not 8-bit in a 16-bit container


def test_alpha_bicubic_by_default_and_model_on_request(toy, tmp_path):
    _, d = toy
    src = _png(tmp_path / "rgba.png", mode="RGBA")
    assert _run(d, src, tmp_path / "bicubic.png").exit_code == 0
    assert _run(d, src, tmp_path / "model.png", "--alpha", "model").exit_code == 0
    a_bic = np.asarray(Image.open(tmp_path / "bicubic.png"))
    a_mod = np.asarray(Image.open(tmp_path / "model.png"))
    assert a_bic.shape == (80, 112, 4)
    alpha = np.asarray(Image.open(src), np.float32)[..., 3] / 255
    want = np.asarray(Image.fromarray(alpha, "F").resize((112, 80), Image.BICUBIC))
    assert np.abs(a_bic[..., 3] / 255.0 - np.clip(want, 0, 1)).max() <= 1 / 255 + 1e-6
    assert np.array_equal(a_bic[..., :3], a_mod[..., :3]) and not np.array_equal(a_bic[..., 3], a_mod[..., 3])


def test_jpeg_output_drops_alpha_with_a_warning(toy, tmp_path):
    _, d = toy
    src = _png(tmp_path / "rgba.png", mode="RGBA")
    res = _run(d, src, tmp_path / "out.jpg")
    assert res.exit_code == 0 and "transparency dropped" in res.output
    assert Image.open(tmp_path / "out.jpg").mode == "RGB"


def test_folder_to_folder_keeps_names(toy, tmp_path):
    _, d = toy
    (tmp_path / "in").mkdir()
    _png(tmp_path / "in" / "a.png")
    Image.open(_png(tmp_path / "in" / "b.png", seed=1)).convert("RGB").save(tmp_path / "in" / "c.webp")
    (tmp_path / "in" / "b.png").unlink()
    res = _run(d, tmp_path / "in", tmp_path / "out", "--format", "png")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "c.png"]
    assert "upscaled 2 image(s) x2" in res.output


def test_bad_inputs_fail_with_one_line_and_write_nothing(toy, tmp_path):
    _, d = toy
    src = _png(tmp_path / "in.png")
    (tmp_path / "broken.png").write_text("not an image")
    (tmp_path / "dir").mkdir()
    _png(tmp_path / "dir" / "x.png")
    cases = [
        ((tmp_path / "missing", src, tmp_path / "o1.png"), "no such artifact"),
        ((d, tmp_path / "nope.png", tmp_path / "o2.png"), "no such input"),
        ((d, tmp_path / "broken.png", tmp_path / "o3.png"), "cannot read image"),
        ((d, tmp_path / "dir", tmp_path / "o4.png"), "must be a folder too"),
        ((d, src, tmp_path / "o5.gif"), "cannot write 'o5.gif'"),
        ((d, src, src), "would overwrite its input"),
    ]
    for args, message in cases:
        assert_one_line_error(_run(*args), message)
    assert not any(p.name.startswith("o") for p in tmp_path.iterdir())
