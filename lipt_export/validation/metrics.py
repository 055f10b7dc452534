"""SR benchmark metrics exactly as the literature reports them (EDSR/RCAN/BasicSR/MATLAB convention).

Pipeline per image: HR cropped to a multiple of the scale (:func:`crop_to_multiple`); SR clamped and
rounded to uint8 (:func:`to_uint8`); both converted to the Y channel of BT.601 on the 0..255 scale
(:func:`rgb_to_y`, not rounded); ``shave`` = scale pixels removed from every border; PSNR with peak 255 and
SSIM with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, "valid" filtering (the common
Python port of Wang et al.'s MATLAB ``ssim_index``). Scores are averaged over images by the caller.
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np

Y_COEFFS = (65.481, 128.553, 24.966)  # BT.601 on [0, 1] RGB, giving Y in [16, 235]
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
# Identical inputs: a finite number keeps averages and JSON standard. High enough that fp32 parity
# (~130 dB against the eager model) is reported as measured.
PSNR_CAP_DB = 200.0


def crop_to_multiple(img: np.ndarray, multiple: int) -> np.ndarray:
    """Top-left crop of an HW[C] image so H and W are multiples of ``multiple`` (the benchmark 'modcrop')."""
    h, w = img.shape[:2]
    return img[: h - h % multiple, : w - w % multiple]


def to_uint8(img: np.ndarray, value_range: float = 1.0) -> np.ndarray:
    """Float image on [0, value_range] -> uint8: scaled to 0..255, clamped, rounded (half to even, as
    torch.round, which EDSR's ``quantize`` uses)."""
    if img.dtype == np.uint8:
        return img
    return np.clip(np.round(img.astype(np.float64) * (255.0 / value_range)), 0, 255).astype(np.uint8)


def as_rgb(img: np.ndarray) -> np.ndarray:
    """HW, HW1 or HWC(3/4) -> HW3 (grayscale replicated, alpha dropped)."""
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    if img.shape[2] == 4:
        return img[:, :, :3]
    if img.shape[2] != 3:
        raise ValueError(f"expected an RGB image, got {img.shape[2]} channels")
    return img


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """Y of BT.601 (16..235) as float64, from a uint8 RGB image (or a float RGB image on [0, 1])."""
    rgb = as_rgb(img).astype(np.float64)
    if img.dtype == np.uint8:
        rgb = rgb / 255.0
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return 16.0 + Y_COEFFS[0] * r + Y_COEFFS[1] * g + Y_COEFFS[2] * b


def _shave(img: np.ndarray, shave: int) -> np.ndarray:
    return img[shave:-shave, shave:-shave] if shave > 0 else img


def _prepare_pair(sr: np.ndarray, hr: np.ndarray, shave: int) -> Tuple[np.ndarray, np.ndarray]:
    if sr.shape[:2] != hr.shape[:2]:
        raise ValueError(f"SR {sr.shape[:2]} and HR {hr.shape[:2]} differ in size")
    if min(hr.shape[:2]) <= 2 * shave:
        raise ValueError(f"image {hr.shape[:2]} is too small to shave {shave} pixels per border")
    return _shave(rgb_to_y(to_uint8(sr)), shave), _shave(rgb_to_y(to_uint8(hr)), shave)


def psnr_from_mse(mse: float, peak: float = 1.0) -> float:
    """10 log10(peak^2 / MSE), capped at PSNR_CAP_DB; NaN when MSE is not finite."""
    if not math.isfinite(mse):
        return float("nan")
    return PSNR_CAP_DB if mse <= 0 else min(PSNR_CAP_DB, 10 * math.log10(peak * peak / mse))


def psnr(out: np.ndarray, ref: np.ndarray, peak: float = 1.0) -> float:
    """The one PSNR: of two arrays, in float64 (see :func:`psnr_from_mse`)."""
    return psnr_from_mse(float(np.mean((out.astype(np.float64) - ref.astype(np.float64)) ** 2)), peak)


def psnr_y(sr: np.ndarray, hr: np.ndarray, shave: int) -> float:
    """PSNR (dB, peak 255) on the Y channel with ``shave`` border pixels removed. HWC uint8 inputs."""
    a, b = _prepare_pair(sr, hr, shave)
    return psnr(a, b, peak=255.0)


def psnr_y_nchw(sr: np.ndarray, hr: np.ndarray, shave: int) -> float:
    """:func:`psnr_y` for float NCHW [0, 1] arrays (first image), as the calibration budget measures it."""
    hwc = lambda a: to_uint8(np.asarray(a[0], dtype=np.float64).transpose(1, 2, 0))  # noqa: E731
    return psnr_y(hwc(sr), hwc(hr), shave)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """1-D normalised Gaussian; the 2-D window is its outer product (as MATLAB's fspecial)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation with the symmetric window g (rows then columns)."""
    k = g.size
    rows = sum(g[i] * img[i:img.shape[0] - k + 1 + i, :] for i in range(k))
    return sum(g[i] * rows[:, i:rows.shape[1] - k + 1 + i] for i in range(k))


def ssim_gray(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Mean SSIM of two single-channel float images on [0, peak] (Gaussian 11/1.5, 'valid' region)."""
    if min(a.shape) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {a.shape}")
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    g = gaussian_window()
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    var_a = _filter_valid(a * a, g) - mu_a ** 2
    var_b = _filter_valid(b * b, g) - mu_b ** 2
    cov = _filter_valid(a * b, g) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def ssim_y(sr: np.ndarray, hr: np.ndarray, shave: int) -> float:
    """SSIM on the Y channel with ``shave`` border pixels removed. HWC uint8 inputs."""
    a, b = _prepare_pair(sr, hr, shave)
    return ssim_gray(a, b)


def sr_scores(sr: np.ndarray, hr: np.ndarray, scale: int) -> Tuple[float, float]:
    """(PSNR-Y, SSIM-Y) of one SR image against its HR ground truth, literature convention (shave = scale).
    ``hr`` is cropped to a multiple of ``scale`` here; ``sr`` must already have that size."""
    hr = crop_to_multiple(as_rgb(hr), scale)
    sr = as_rgb(sr)
    return psnr_y(sr, hr, scale), ssim_y(sr, hr, scale)
