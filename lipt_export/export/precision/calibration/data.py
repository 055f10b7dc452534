"""Calibration data: LR patches for range collection, and held-out (LR, HR) pairs for the INT8 budget.

HR images are cut into HR patches of ``size * scale`` and downscaled with the project's MATLAB-style
bicubic ``imresize`` (the way SR benchmarks make their LR images), so the calibration activations look
like the ones the model sees at evaluation. With ``calib_lr`` the images are already LR inputs and are
cropped directly.

The images are split by file: the last ~20 % (at least one) are *held out*. Ranges are collected on the
others only; the INT8 sensitivity and PSNR-Y budget are measured on the held-out pairs, so the nodes kept
in float are not chosen on the data that set the ranges. (With one image the held-out patches come from
other regions of that image, and the report says so.) In ``calib_lr`` mode the held-out LR images act as
HR for pairs made by downscaling them once more: a true ground truth one octave down.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from lipt_export.errors import CalibrationDataError, ImageError
from lipt_export.fileio import sha256_file
from lipt_export.images import list_images, read_rgb
from lipt_export.validation.imresize import imresize

CALIB_HINT = "e.g. 10 or more natural photos like those the model will upscale"
HELDOUT_FRACTION = 0.2

@dataclass
class CalibrationSet:
    calib: List[np.ndarray]  # NCHW float32 in [0, 1]
    heldout_lr: List[np.ndarray]  # NCHW float32 in [0, 1]
    heldout_hr: List[np.ndarray]  # NCHW float32 in [0, 1], ``scale`` times larger
    scale: int
    fingerprint: str
    info: Dict[str, object] = field(default_factory=dict)


def downscale(hr: np.ndarray, scale: int) -> Tuple[np.ndarray, str]:
    """HWC uint8 -> HWC uint8 at 1/scale with the project's MATLAB-compatible imresize."""
    lr = np.asarray(imresize(hr, 1.0 / scale))
    if lr.dtype != np.uint8:
        peak = 255.0 if float(np.max(lr)) > 1.5 else 1.0
        lr = np.clip(np.round(lr.astype(np.float64) * (255.0 / peak)), 0, 255).astype(np.uint8)
    return lr, "lipt_export imresize (MATLAB-compatible bicubic)"


def _read_rgb(path: Path) -> np.ndarray:
    try:
        return read_rgb(path)
    except ImageError as exc:
        raise CalibrationDataError(f"calibration folder: {exc}") from None


def _nchw(img_hwc_u8: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img_hwc_u8.transpose(2, 0, 1)[None].astype(np.float32) / 255.0)


def _crop(img: np.ndarray, ch: int, cw: int, rng: np.random.Generator, align: int = 1) -> np.ndarray:
    H, W = img.shape[:2]
    y = int(rng.integers(0, (H - ch) // align + 1)) * align
    x = int(rng.integers(0, (W - cw) // align + 1)) * align
    return img[y:y + ch, x:x + cw]


def split_images(paths: Sequence[Path]) -> Tuple[List[Path], List[Path]]:
    """(calibration, held-out) by file; one image is used for both."""
    paths = list(paths)
    if len(paths) < 2:
        return paths, paths
    n_held = max(1, int(round(len(paths) * HELDOUT_FRACTION)))
    return paths[:-n_held], paths[-n_held:]


def load_calibration_set(calib_dir: str | Path, *, calib_lr: bool = False, count: int = 32, size: int = 64,
                         scale: int = 2, seed: int = 0, heldout_count: Optional[int] = None,
                         progress: bool = True) -> CalibrationSet:
    """Calibration patches and held-out pairs from a folder of images (see module docstring)."""
    folder = Path(calib_dir)
    if not folder.is_dir():
        raise CalibrationDataError(f"calibration folder '{folder}' does not exist; INT8 needs a folder of "
                                   f"representative images ({CALIB_HINT})")
    paths = list_images(folder)
    if not paths:
        raise CalibrationDataError(f"calibration folder '{folder}' has no images (.png/.jpg/...); INT8 needs "
                                   f"representative images ({CALIB_HINT})")
    if count < 1 or size < 8:
        raise CalibrationDataError(f"--calib-count must be >= 1 and --calib-size >= 8 (got {count}, {size})")
    scale = max(1, int(scale))
    heldout_count = heldout_count if heldout_count is not None else max(4, count // 4)
    calib_paths, held_paths = split_images(paths)
    rng = np.random.default_rng(seed)
    method = "none"

    images: Dict[Path, np.ndarray] = {}

    def image(p: Path) -> np.ndarray:
        if p not in images:
            images[p] = _read_rgb(p)
        return images[p]

    def lr_patch(p: Path) -> np.ndarray:
        nonlocal method
        img = image(p)
        if calib_lr:
            ch, cw = min(size, img.shape[0]), min(size, img.shape[1])
            return _nchw(_crop(img, ch, cw, rng))
        hs = size * scale
        ch, cw = min(hs, img.shape[0]) // scale * scale, min(hs, img.shape[1]) // scale * scale
        if ch < scale or cw < scale:
            raise CalibrationDataError(f"calibration image {p} is smaller than the x{scale} scale")
        lr, method = downscale(np.ascontiguousarray(_crop(img, ch, cw, rng, align=scale)), scale)
        return _nchw(lr)

    def pair(p: Path) -> Tuple[np.ndarray, np.ndarray]:
        nonlocal method
        img = image(p)
        hs = size * scale
        ch, cw = min(hs, img.shape[0]) // scale * scale, min(hs, img.shape[1]) // scale * scale
        hr = np.ascontiguousarray(_crop(img, ch, cw, rng, align=scale))
        lr, method = downscale(hr, scale)
        return _nchw(lr), _nchw(hr)

    iterator = range(count)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="calibration patches", unit="patch", leave=False)
    calib = [lr_patch(calib_paths[i % len(calib_paths)]) for i in iterator]
    held = [pair(held_paths[i % len(held_paths)]) for i in range(heldout_count)]
    images.clear()

    key = {"files": [(p.name, sha256_file(p)) for p in paths], "calib_lr": calib_lr, "count": count,
           "size": size, "scale": scale, "seed": seed, "heldout": heldout_count, "downscaler": method}
    fingerprint = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    info = {"folder": str(folder), "mode": "lr" if calib_lr else "hr", "patch_size_lr": size,
            "patches": len(calib), "calibration_images": [p.name for p in calib_paths],
            "heldout_images": [p.name for p in held_paths], "heldout_pairs": len(held),
            "heldout_note": ("held-out patches come from the calibration image (only one image given)"
                             if len(paths) < 2 else "held-out images are not used for the ranges"),
            "downscaler": method, "seed": seed, "fingerprint": fingerprint}
    return CalibrationSet(calib=calib, heldout_lr=[p[0] for p in held], heldout_hr=[p[1] for p in held],
                          scale=scale, fingerprint=fingerprint, info=info)
