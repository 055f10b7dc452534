"""The one image reader: every command that reads pictures goes through :func:`load_image`.

* RGB in, RGB out. Palette/CMYK/other modes become RGB (RGBA when they carry transparency).
* Grayscale (L, 1, 16-bit I;16): returned as RGB with equal channels plus ``gray=True``, so a writer can
  save grayscale again; 16-bit files keep ``bits=16``.
* Alpha (RGBA, LA, transparent palettes) is returned separately.
* EXIF orientation is applied; the ICC profile is returned for writers to keep.

Unreadable files raise :class:`~lipt_export.errors.ImageError` naming the file and the fix.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

from lipt_export.errors import ImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
SUPPORTED = "PNG, JPEG, WebP, BMP, TIFF"


def list_images(folder: str | Path) -> List[Path]:
    """Image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


@dataclass
class LoadedImage:
    rgb: np.ndarray  # (3, H, W) float32 in [0, 1]
    alpha: Optional[np.ndarray]  # (H, W) float32 in [0, 1] or None
    gray: bool
    bits: int  # 8 or 16
    icc: Optional[bytes]


def load_image(path: str | Path) -> LoadedImage:
    from PIL import Image, ImageOps

    path = Path(path)
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            icc = im.info.get("icc_profile")
            mode = im.mode
            if mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif mode == "PA":
                im = im.convert("RGBA")
            elif mode == "1":
                im = im.convert("L")
            elif mode not in ("RGB", "RGBA", "L", "LA", "I;16", "I;16L", "I;16B", "I"):
                im = im.convert("RGBA" if "A" in mode else "RGB")
            arr = np.asarray(im)
            mode = im.mode
    except Exception as exc:  # PIL raises many types for truncated, corrupt or non-image files
        detail = str(exc).splitlines()[0][:120] if str(exc) else ""
        raise ImageError(f"cannot read image {path} ({type(exc).__name__}{': ' + detail if detail else ''}); "
                         f"replace or remove it (supported: {SUPPORTED})") from None
    bits, alpha = 8, None
    if mode.startswith("I"):
        bits = 16
        gray = arr.astype(np.float32) / 65535.0
        color = None
    elif mode in ("L", "LA"):
        gray = (arr[..., 0] if mode == "LA" else arr).astype(np.float32) / 255.0
        color = None
        if mode == "LA":
            alpha = arr[..., 1].astype(np.float32) / 255.0
    else:
        color, gray = arr, None
        if mode == "RGBA":
            alpha = arr[..., 3].astype(np.float32) / 255.0
    if gray is not None:
        h, w = gray.shape
        rgb = np.empty((3, h, w), np.float32)
        rgb[:] = gray[None]
    else:
        h, w = color.shape[:2]
        rgb = np.empty((3, h, w), np.float32)
        for c in range(3):  # channel by channel: no full-size temporaries beyond the result
            np.divide(color[..., c], 255.0, out=rgb[c], dtype=np.float32)
    return LoadedImage(rgb, alpha, gray is not None, bits, icc)


def read_rgb(path: str | Path) -> np.ndarray:
    """uint8 H x W x 3 RGB (grayscale replicated, alpha dropped, 16-bit scaled to 8 bits)."""
    rgb = load_image(path).rgb
    return np.clip(np.round(rgb.transpose(1, 2, 0) * np.float32(255.0)), 0, 255).astype(np.uint8)


def image_size(path: str | Path):
    """(H, W) from the header; ``verify()`` also catches truncated or corrupt files before any model runs."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            size = im.size[1], im.size[0]
            im.verify()
        return size
    except Exception as exc:
        detail = str(exc).splitlines()[0][:120] if str(exc) else ""
        raise ImageError(f"cannot read image {path} ({type(exc).__name__}{': ' + detail if detail else ''}); "
                         f"replace or remove it (supported: {SUPPORTED})") from None
