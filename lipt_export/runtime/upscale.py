"""Upscaling image files with a tiled runner (the library behind ``lipt-export upscale``).

Colour handling, as users expect from an upscaler (images are read by :func:`lipt_export.images.load_image`):

* RGB in, RGB out; grayscale (L, 1, 16-bit I;16) is processed as RGB with equal channels and saved as
  grayscale (16-bit PNGs stay 16-bit). The model sees exactly what it was trained on (RGB) and the file keeps
  its mode.
* Alpha (RGBA, LA, transparent palettes): the colour goes through the model; the alpha channel is upscaled
  with bicubic interpolation by default (SR models are trained on natural RGB images and invent texture in
  masks), or through the model with ``--alpha model`` (alpha replicated to RGB, channel mean taken).
  Formats without alpha (JPEG) drop it with a warning.
* EXIF orientation is applied; ICC profiles are kept. ``.npy`` outputs hold the raw float32 HWC result
  (unclamped), for analysis.

Memory is bounded by the tile: the LR image is read once as float32, output tiles are blended into one
preallocated float32 buffer and converted to 8 bits row block by row block. Files are written to a temp
name and renamed, so a failed or interrupted run never leaves a half-written image.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from lipt_export.errors import UpscaleError
from lipt_export.fileio import save_atomic
from lipt_export.images import list_images, load_image

INPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")  # what PIL reads and writes here
OUTPUT_SUFFIXES = INPUT_SUFFIXES + (".npy",)
PIL_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF",
               ".tiff": "TIFF"}
ALPHA_FORMATS = {".png", ".webp", ".tif", ".tiff", ".npy"}
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, what PIL uses for RGB -> L
ROW_BLOCK = 256
DEFAULT_TILE = 512  # LR pixels: bounds memory; images up to this size run in one piece


def _to_uint(out: np.ndarray, bits: int, gray: bool) -> np.ndarray:
    """(C, H, W) float -> (H, W[, 3]) uint8/uint16, row block by row block."""
    peak = 65535.0 if bits == 16 else 255.0
    dtype = np.uint16 if bits == 16 else np.uint8
    _, h, w = out.shape
    res = np.empty((h, w) if gray else (h, w, 3), dtype)
    for r0 in range(0, h, ROW_BLOCK):
        block = out[:, r0:r0 + ROW_BLOCK]
        if gray:  # as if the RGB result were saved and converted to L: clamp, then luma
            block = np.tensordot(LUMA, np.clip(block, 0.0, 1.0), axes=1)
        else:
            block = block.transpose(1, 2, 0)
        res[r0:r0 + ROW_BLOCK] = np.clip(block * peak + 0.5, 0, peak).astype(dtype)
    return res


def _upscale_alpha(alpha: np.ndarray, scale: int, runner, how: str, progress) -> np.ndarray:
    if how == "model":
        rgb = np.repeat(alpha[None], 3, axis=0)
        return runner.infer_into(rgb, progress=progress).mean(axis=0)
    from PIL import Image

    h, w = alpha.shape
    im = Image.fromarray(alpha.astype(np.float32), mode="F").resize((w * scale, h * scale), Image.BICUBIC)
    return np.asarray(im, dtype=np.float32)


def upscale_file(runner, src: Path, dst: Path, *, alpha_mode: str = "bicubic", progress_bar: bool = True,
                 warn=None) -> Tuple[int, int]:
    """Upscale one file with a TiledRunner; returns the output (width, height)."""
    from PIL import Image
    from tqdm import tqdm

    img = load_image(src)
    _, h, w = img.rgb.shape
    n_tiles = runner.count_tiles(h, w) * (2 if img.alpha is not None and alpha_mode == "model" else 1)
    with tqdm(total=n_tiles, desc=src.name, unit="tile", leave=False, file=sys.stderr,
              disable=not progress_bar) as bar:
        out = runner.infer_into(img.rgb, progress=bar.update)
        del img.rgb
        s = out.shape[1] // h
        alpha = _upscale_alpha(img.alpha, s, runner, alpha_mode, bar.update) if img.alpha is not None else None
    suffix = dst.suffix.lower()
    if alpha is not None and suffix not in ALPHA_FORMATS:
        if warn:
            warn(f"{dst.name}: {suffix[1:].upper()} has no alpha channel; transparency dropped")
        alpha = None
    if suffix == ".npy":
        hwc = out.transpose(1, 2, 0)
        if img.gray:
            hwc = np.tensordot(out, LUMA, axes=([0], [0]))[..., None]
        if alpha is not None:
            hwc = np.concatenate([hwc, alpha[..., None]], axis=2)
        arr = np.ascontiguousarray(hwc, dtype=np.float32)
        save_atomic(dst, lambda tmp: np.save(open(tmp, "wb"), arr))
        return out.shape[2], out.shape[1]
    pixels = _to_uint(out, img.bits if suffix in (".png", ".tif", ".tiff") else 8, img.gray)
    del out
    if alpha is not None:
        a = np.clip(alpha * 255.0 + 0.5, 0, 255).astype(np.uint8)
        if pixels.dtype != np.uint8:  # 16-bit gray + alpha has no PIL mode: keep 8 bits
            pixels = (pixels >> 8).astype(np.uint8)
        pixels = np.dstack([pixels, a])
    im = Image.fromarray(pixels)
    params = {"icc_profile": img.icc} if img.icc else {}
    fmt = PIL_FORMATS[suffix]
    if fmt in ("JPEG", "WEBP"):
        params["quality"] = 95
    save_atomic(dst, lambda tmp: im.save(tmp, format=fmt, **params))
    return im.size


def plan_outputs(input_path: Path, output_path: Path, fmt: Optional[str]) -> List[Tuple[Path, Path]]:
    """(source, destination) pairs; raises UpscaleError for mismatched file/folder arguments."""
    if not input_path.exists():
        raise UpscaleError(f"no such input: {input_path}")
    if fmt and f".{fmt.lower()}" not in OUTPUT_SUFFIXES:
        raise UpscaleError(f"unknown --format '{fmt}'; choose one of {', '.join(s[1:] for s in OUTPUT_SUFFIXES)}")
    if input_path.is_dir():
        if output_path.is_file() or output_path.suffix.lower() in OUTPUT_SUFFIXES:
            raise UpscaleError(f"INPUT {input_path} is a folder, so OUTPUT must be a folder too, not {output_path}")
        sources = [p for p in list_images(input_path) if p.suffix.lower() in INPUT_SUFFIXES]
        if not sources:
            raise UpscaleError(f"no images in {input_path} (looked for {', '.join(INPUT_SUFFIXES)})")
        pairs = [(p, output_path / (p.stem + (f".{fmt.lower()}" if fmt else p.suffix))) for p in sources]
    else:
        if output_path.is_dir():  # a file into an existing folder keeps its name
            output_path = output_path / (input_path.stem + (f".{fmt.lower()}" if fmt else input_path.suffix))
        if output_path.suffix.lower() not in OUTPUT_SUFFIXES:
            raise UpscaleError(f"cannot write '{output_path.name}': use one of {', '.join(OUTPUT_SUFFIXES)} (or an "
                               f"existing folder)")
        pairs = [(input_path, output_path)]
    for src, dst in pairs:
        if src.resolve() == dst.resolve():
            raise UpscaleError(f"{dst} would overwrite its input; choose another OUTPUT")
    return pairs
