"""``lipt-export upscale ARTIFACT INPUT OUTPUT``: upscale an image or a folder of images, tiled.

Colour handling, as users expect from an upscaler:

* RGB in, RGB out. Palette/CMYK/other modes are converted to RGB (RGBA when they carry transparency).
* Grayscale (L, 1, 16-bit I;16): processed as RGB with equal channels, saved as grayscale (16-bit PNGs stay
  16-bit). The model sees exactly what it was trained on (RGB) and the file keeps its mode.
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

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import click
import numpy as np

INPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
OUTPUT_SUFFIXES = INPUT_SUFFIXES + (".npy",)
PIL_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF",
               ".tiff": "TIFF"}
ALPHA_FORMATS = {".png", ".webp", ".tif", ".tiff", ".npy"}
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, what PIL uses for RGB -> L
ROW_BLOCK = 256
DEFAULT_TILE = 512  # LR pixels: bounds memory; images up to this size run in one piece


class UpscaleError(ValueError):
    """A user-facing problem with an input or output (one line)."""


@dataclass
class LoadedImage:
    rgb: np.ndarray  # (3, H, W) float32 in [0, 1]
    alpha: Optional[np.ndarray]  # (H, W) float32 in [0, 1] or None
    gray: bool
    bits: int  # 8 or 16
    icc: Optional[bytes]


def load_image(path: Path) -> LoadedImage:
    from PIL import Image, ImageOps, UnidentifiedImageError

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
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise UpscaleError(f"cannot read image {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                           f" (supported: PNG, JPEG, WebP, BMP, TIFF)") from None
    bits, alpha = 8, None
    if mode.startswith("I"):
        bits = 16
        gray = arr.astype(np.float32) / 65535.0
        color = None
    elif mode in ("L", "LA"):
        gray = arr[..., 0] if mode == "LA" else arr
        gray = gray.astype(np.float32) / 255.0
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


def _save_atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        _save_atomic(dst, lambda tmp: np.save(open(tmp, "wb"), arr))
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
    _save_atomic(dst, lambda tmp: im.save(tmp, format=fmt, **params))
    return im.size


def plan_outputs(input_path: Path, output_path: Path, fmt: Optional[str]) -> List[Tuple[Path, Path]]:
    """(source, destination) pairs; raises UpscaleError for mismatched file/folder arguments."""
    from lipt_export.validation import list_images

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


@click.command("upscale")
@click.argument("artifact", type=click.Path())
@click.argument("input_path", metavar="INPUT", type=click.Path())
@click.argument("output_path", metavar="OUTPUT", type=click.Path())
@click.option("--precision", default=None, type=click.Choice(["fp32", "fp16", "int8"]),
              help="Artifact precision when ARTIFACT is an export directory (default fp32).")
@click.option("--backend", default="auto", show_default=True, type=click.Choice(["auto", "onnxruntime", "tensorrt"]),
              help="auto = the TensorRT engine when the export has one and TensorRT works, else ONNX Runtime.")
@click.option("--tile", default=None, type=int, help="LR tile size in pixels; 0 = whole image (default: the "
              "manifest's recommended tile when the model requires tiling, else 512; smaller images run whole).")
@click.option("--overlap", default=None, type=int, help="LR pixels shared by neighbouring tiles (default: the "
              "manifest's, at least 8 windows for windowed models, e.g. 64 for LIPT).")
@click.option("--alpha", "alpha_mode", default="bicubic", show_default=True, type=click.Choice(["bicubic", "model"]),
              help="How the alpha channel is upscaled.")
@click.option("--format", "fmt", default=None, help="Output format for folders (png, jpg, webp, tif, npy).")
@click.option("--threads", default=None, type=int, help="ONNX Runtime threads (default: all cores, at most 8).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def upscale_command(artifact, input_path, output_path, precision, backend, tile, overlap, alpha_mode, fmt, threads,
                    quiet):
    """Upscale INPUT (an image or a folder of images) with ARTIFACT (export dir, .onnx or .engine) into OUTPUT."""
    from tqdm import tqdm

    from lipt_export.cli import fail
    from lipt_export.serving import ArtifactError, open_artifact, resolve_tiling, runner_for
    from lipt_export.tiling import TiledRunner

    warnings: List[str] = []
    try:
        pairs = plan_outputs(Path(input_path), Path(output_path), fmt)
        art = open_artifact(artifact, precision=precision, backend=backend)
        tile_size, ov = resolve_tiling(art, tile, overlap)
        if tile is None and tile_size is None:
            tile_size = DEFAULT_TILE  # bounded memory by default; images up to it run whole
        if art.format == "tensorrt" and tile_size:  # tiles inside the engine's profile: no second tiling
            tile_size = min(tile_size, *art.entry["profile"]["max"][2:])
        runner = TiledRunner(runner_for(art, threads=threads), art.scale, tile_size, ov, art.multiple_of)
    except (UpscaleError, ArtifactError, ValueError, FileNotFoundError, RuntimeError) as exc:
        fail(str(exc).splitlines()[0])
        return
    if len(pairs) > 1 or Path(input_path).is_dir():
        Path(output_path).mkdir(parents=True, exist_ok=True)
    else:
        pairs[0][1].parent.mkdir(parents=True, exist_ok=True)
    t0, failures = time.perf_counter(), []
    for src, dst in tqdm(pairs, desc="images", unit="img", file=sys.stderr, disable=quiet or len(pairs) == 1):
        try:
            upscale_file(runner, src, dst, alpha_mode=alpha_mode, progress_bar=not quiet, warn=warnings.append)
        except UpscaleError as exc:
            if len(pairs) == 1:
                fail(str(exc))
                return
            failures.append(str(exc))
            click.echo(f"lipt-export: error: {exc}", err=True)
    for w in warnings:
        click.echo(f"lipt-export: warning: {w}", err=True)
    done = len(pairs) - len(failures)
    tile_txt = f"tile {runner.tile} overlap {runner.overlap}" if runner.tile else "whole image"
    click.echo(f"upscaled {done} image(s) x{runner.scale} with {runner.runner.name} on {runner.device} ({tile_txt}) "
               f"-> {output_path} in {time.perf_counter() - t0:.1f}s")
    if failures:
        fail(f"{len(failures)} of {len(pairs)} images failed (see above)")

