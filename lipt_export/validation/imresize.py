"""MATLAB-compatible ``imresize(img, scale)`` (bicubic, antialiased), the resizer SR benchmarks use for LR.

What MATLAB does, and this module reproduces:

- Kernel: Keys cubic with a = -0.5. When shrinking (scale < 1) the kernel is stretched by 1/scale
  (``scale * cubic(scale * x)``, support 4/scale), which is the antialiasing.
- Sample positions: output pixel ``x`` (1-based) maps to input ``u = x / scale + 0.5 * (1 - 1/scale)``;
  taps ``floor(u - width/2) + 0 .. ceil(width) + 1``; weights normalised to sum 1 per output pixel.
- Boundary: symmetric (mirror with the edge pixel repeated), taps with zero weight dropped.
- Output size: ``ceil(scale * size)``.
- Separable, one 1-D pass per axis, the axis with the smaller scale first (ties: axis 0, the rows
  direction, first). For uint8 images each pass writes uint8, i.e. rounds half away from zero and
  saturates before the next pass; float images stay float (no rounding, no clamping).
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np


def cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    near = ((a + 2) * ax3 - (a + 3) * ax2 + 1) * (ax <= 1)
    far = (a * ax3 - 5 * a * ax2 + 8 * a * ax - 4 * a) * ((ax > 1) & (ax <= 2))
    return near + far


def output_length(in_length: int, scale: float) -> int:
    exact = scale * in_length
    # 1/3 * 300 is 100.00000000000001 in binary floating point; that must not become 101.
    nearest = round(exact)
    return int(nearest) if abs(exact - nearest) < 1e-9 else int(math.ceil(exact))


def contributions(in_length: int, out_length: int, scale: float, antialias: bool = True
                  ) -> Tuple[np.ndarray, np.ndarray]:
    """(weights, indices), both (out_length, taps): 0-based input indices after mirroring."""
    width = 4.0
    if scale < 1 and antialias:
        width = width / scale
        kernel = lambda t: scale * cubic(scale * t)  # noqa: E731
    else:
        kernel = cubic
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]  # 1-based
    weights = kernel(u[:, None] - idx)
    weights = weights / weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])
    idx = mirror[np.mod(idx.astype(np.int64) - 1, mirror.size)]
    keep = np.any(weights != 0, axis=0)
    return weights[:, keep], idx[:, keep]


def resize_matrix(in_length: int, out_length: int, scale: float, antialias: bool = True) -> np.ndarray:
    """Dense (out_length, in_length) matrix of one 1-D pass; mirrored taps add up on their pixel."""
    weights, idx = contributions(in_length, out_length, scale, antialias)
    mat = np.zeros((out_length, in_length), dtype=np.float64)
    rows = np.repeat(np.arange(out_length), idx.shape[1])
    np.add.at(mat, (rows, idx.ravel()), weights.ravel())
    return mat


def _round_uint8(x: np.ndarray) -> np.ndarray:
    # MATLAB's double -> uint8: round half away from zero, saturate (all kept values are >= 0 after clip).
    return np.clip(np.floor(np.clip(x, 0.0, None) + 0.5), 0, 255).astype(np.uint8)


def _pass(img: np.ndarray, axis: int, scale: float, antialias: bool) -> np.ndarray:
    n = img.shape[axis]
    mat = resize_matrix(n, output_length(n, scale), scale, antialias)
    moved = np.moveaxis(img.astype(np.float64), axis, 0)
    out = np.tensordot(mat, moved, axes=([1], [0]))
    return np.moveaxis(out, 0, axis)


def imresize(image: np.ndarray, scale: float, antialias: bool = True,
             axis_order: Tuple[int, int] | None = None) -> np.ndarray:
    """Resize an HW or HWC image by ``scale`` (0.5 = half size) as MATLAB's ``imresize(img, scale)``.

    uint8 in -> uint8 out (rounded after each 1-D pass, as MATLAB); float in -> float64 out.
    ``axis_order`` overrides MATLAB's pass order (for experiments only).
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"imresize expects an HW or HWC image, got shape {image.shape}")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    is_uint8 = image.dtype == np.uint8
    if not is_uint8 and not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"imresize supports uint8 or float images, got {image.dtype}")
    order = axis_order or (0, 1)  # equal scales on both axes: MATLAB's stable sort picks axis 0 first
    out = image
    for axis in order:
        out = _pass(out, axis, scale, antialias)
        if is_uint8:
            out = _round_uint8(out)
    return out
