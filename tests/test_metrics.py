"""SR metrics: BT.601 Y, PSNR-Y with shave, SSIM-Y (checked against a direct 2-D implementation)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from lipt_export.validation.metrics import (PSNR_CAP_DB, as_rgb, crop_to_multiple, gaussian_window, psnr_y, rgb_to_y, sr_scores, ssim_gray, ssim_y, to_uint8)


def _gray(v, h=20, w=24):
    return np.full((h, w, 3), v, np.uint8)


def test_y_is_bt601_studio_range():
    assert rgb_to_y(_gray(0))[0, 0] == pytest.approx(16.0)
    assert rgb_to_y(_gray(255))[0, 0] == pytest.approx(16 + 65.481 + 128.553 + 24.966)
    red = np.zeros((1, 1, 3), np.uint8)
    red[..., 0] = 255
    assert rgb_to_y(red)[0, 0] == pytest.approx(16 + 65.481)
    assert np.allclose(rgb_to_y(_gray(128)), rgb_to_y(_gray(128).astype(np.float64) / 255))


def test_psnr_of_a_known_error_and_the_shave():
    hr = _gray(100)
    sr = _gray(101)  # grey: Y differs by 219/255 at every pixel
    assert psnr_y(sr, hr, shave=2) == pytest.approx(20 * math.log10(255 / (219 / 255)), abs=1e-9)
    border = hr.copy()
    border[:2] = 0
    border[:, -2:] = 255
    assert psnr_y(border, hr, shave=2) == PSNR_CAP_DB  # only the shaved border differs
    assert psnr_y(border, hr, shave=1) < 40


def _ssim_direct(a, b):
    """Full 11x11 windows, no separability: the definition, slowly."""
    g = gaussian_window()
    win = np.outer(g, g)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            pa, pb = a[i:i + 11, j:j + 11], b[i:i + 11, j:j + 11]
            ma, mb = (win * pa).sum(), (win * pb).sum()
            va, vb = (win * pa * pa).sum() - ma ** 2, (win * pb * pb).sum() - mb ** 2
            cov = (win * pa * pb).sum() - ma * mb
            vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_matches_the_direct_definition():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 255, (19, 23))
    b = np.clip(a + rng.normal(0, 12, a.shape), 0, 255)
    assert ssim_gray(a, b) == pytest.approx(_ssim_direct(a, b), abs=1e-12)
    assert ssim_gray(a, a) == pytest.approx(1.0, abs=1e-12)
    assert ssim_gray(a, b) == pytest.approx(ssim_gray(b, a), abs=1e-12)
    worse = np.clip(a + rng.normal(0, 40, a.shape), 0, 255)
    assert ssim_gray(a, worse) < ssim_gray(a, b) < 1


def test_quantisation_crop_and_gray_to_rgb():
    assert to_uint8(np.array([-0.2, 1.3, 0.2])).tolist() == [0, 255, round(0.2 * 255)]
    assert crop_to_multiple(np.zeros((21, 23, 3)), 4).shape == (20, 20, 3)
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert as_rgb(gray).shape == (3, 4, 3) and (as_rgb(gray)[..., 2] == gray).all()
    hr = np.random.default_rng(2).integers(0, 256, (27, 30), dtype=np.uint8)  # grayscale, not a multiple of 2
    sr = as_rgb(crop_to_multiple(hr, 2))
    p, s = sr_scores(sr, hr, 2)
    assert p == PSNR_CAP_DB and s == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ in size"):
        ssim_y(sr[:-2], as_rgb(crop_to_multiple(hr, 2)), 2)
