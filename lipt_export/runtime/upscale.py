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

Memory: the LR image is held as its 8/16-bit codes and converted per tile; the tiles' weighted outputs are summed
in a temporary file beside the output (:mod:`lipt_export.runtime.spill`) and read back in row blocks, encoded
straight away for PNG (streamed) and ``.npy`` (rows after the header), or collected as 8-bit for the formats PIL
must encode whole. Files are written to a temp name and renamed, so a failed or
interrupted run never leaves a half-written image.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from lipt_export.errors import UpscaleError
from lipt_export.fileio import dead_owner_temps, save_atomic, writable_dir_problem
from lipt_export._version import __version__
from lipt_export.catalog import IMAGE_SUFFIXES, UPSCALE_OUTPUT_SUFFIXES
from lipt_export.images import (EXIF_SOFTWARE, SOFTWARE_MARK, CodedRGB, PngWriter, list_images, load_image,
                                 written_by_upscale)
from lipt_export.runtime.spill import infer_rows_spilled

INPUT_SUFFIXES = IMAGE_SUFFIXES  # a GIF's first frame is upscaled, written as PNG by default
OUTPUT_SUFFIXES = UPSCALE_OUTPUT_SUFFIXES
UNMARKED_SUFFIXES = (".bmp", ".npy")  # outputs that cannot carry images.SOFTWARE_MARK
PIL_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF",
               ".tiff": "TIFF"}
ALPHA_FORMATS = {".png", ".webp", ".tif", ".tiff", ".npy"}
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, what PIL uses for RGB -> L
ROW_BLOCK = 256
MARK = f"{SOFTWARE_MARK} {__version__}"


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
    """The upscaled alpha plane as uint8 (H, W) (1 byte per output pixel)."""
    if how == "model":
        rgb = CodedRGB(alpha, 1.0)  # the plane read as 3 channels tile by tile, never copied 3 times
        out = np.empty((alpha.shape[0] * scale, alpha.shape[1] * scale), np.uint8)

        def sink(r0: int, block: np.ndarray) -> None:
            out[r0:r0 + block.shape[1]] = np.clip(block.mean(axis=0) * 255.0 + 0.5, 0, 255).astype(np.uint8)

        runner.infer_rows(rgb, sink, progress=progress)
        return out
    from PIL import Image

    h, w = alpha.shape
    im = Image.fromarray(alpha.astype(np.float32), mode="F").resize((w * scale, h * scale), Image.BICUBIC)
    return np.clip(np.asarray(im, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def upscale_file(runner, src: Path, dst: Path, *, alpha_mode: str = "bicubic", progress_bar: bool = True,
                 warn=None) -> Tuple[int, int]:
    """Upscale one file with a TiledRunner; returns the output (width, height).

    Memory: the LR image (its 8/16-bit codes), one tile in flight (the sum lives in a temporary file), and the
    output's own encoding: PNG and ``.npy`` are written row block by row block, so no whole output image is held;
    JPEG/WebP/TIFF/BMP are encoded by PIL from a whole 8-bit image."""
    from PIL import Image
    from tqdm import tqdm

    img = load_image(src)
    for note in img.notes if warn else ():
        warn(note)
    _, h, w = img.rgb.shape
    suffix = dst.suffix.lower()
    keep_alpha = img.alpha is not None and suffix in ALPHA_FORMATS
    if img.alpha is not None and not keep_alpha and warn:
        warn(f"{dst.name}: {suffix[1:].upper()} has no alpha channel; transparency dropped")
    n_tiles = runner.count_tiles(h, w) * (2 if keep_alpha and alpha_mode == "model" else 1)
    with tqdm(total=n_tiles, desc=src.name, unit="tile", leave=False, file=sys.stderr,
              disable=not progress_bar) as bar:
        s = runner.ensure_scale(img.rgb)
        alpha = _upscale_alpha(img.alpha, s, runner, alpha_mode, bar.update) if keep_alpha else None
        if suffix == ".npy":
            channels = (1 if img.gray else 3) + (1 if alpha is not None else 0)

            def write_npy(tmp: str) -> None:
                with open(tmp, "wb") as f:  # rows streamed after the header: no output-sized mapping in memory
                    np.lib.format.write_array_header_1_0(
                        f, {"descr": "<f4", "fortran_order": False, "shape": (s * h, s * w, channels)})

                    def sink(r0: int, block: np.ndarray) -> None:
                        n = block.shape[1]
                        rows = np.empty((n, s * w, channels), np.float32)
                        if img.gray:
                            rows[..., 0] = np.tensordot(block, LUMA, axes=([0], [0]))
                        else:
                            rows[..., :3] = block.transpose(1, 2, 0)
                        if alpha is not None:
                            rows[..., -1] = alpha[r0:r0 + n] / np.float32(255.0)
                        f.write(rows.tobytes())

                    infer_rows_spilled(runner, img.rgb, sink, dst.parent, progress=bar.update)

            save_atomic(dst, write_npy)
            return s * w, s * h
        bits = img.bits if suffix in (".png", ".tif", ".tiff") and alpha is None else 8  # no PIL mode for I;16+A
        if suffix == ".png":
            channels = (1 if img.gray else 3) + (1 if alpha is not None else 0)

            def write_png(tmp: str) -> None:
                writer = PngWriter(tmp, s * w, s * h, channels, bits, icc=img.icc, text={"Software": MARK})

                def sink(r0: int, block: np.ndarray) -> None:
                    rows = _to_uint(block, bits, img.gray)
                    if alpha is not None:
                        rows = np.dstack([rows, alpha[r0:r0 + rows.shape[0]]])
                    writer.write(rows)

                infer_rows_spilled(runner, img.rgb, sink, dst.parent, progress=bar.update)
                writer.close()

            save_atomic(dst, write_png)
            return s * w, s * h
        pixels = np.empty((s * h, s * w) if img.gray else (s * h, s * w, 3), np.uint16 if bits == 16 else np.uint8)

        def fill(r0: int, block: np.ndarray) -> None:
            pixels[r0:r0 + block.shape[1]] = _to_uint(block, bits, img.gray)

        infer_rows_spilled(runner, img.rgb, fill, dst.parent, progress=bar.update)
    del img.rgb
    if alpha is not None:
        pixels = np.dstack([pixels, alpha])
    im = Image.fromarray(pixels)
    params = {"icc_profile": img.icc} if img.icc else {}
    fmt = PIL_FORMATS[suffix]
    if fmt != "BMP":
        exif = Image.Exif()
        exif[EXIF_SOFTWARE] = MARK
        params["exif"] = exif
    if fmt in ("JPEG", "WEBP"):
        params["quality"] = 95
    save_atomic(dst, lambda tmp: im.save(tmp, format=fmt, **params))
    return im.size


def plan_outputs(input_path: Path, output_path: Path, fmt: Optional[str]
                 ) -> Tuple[List[Tuple[Path, Path]], List[str]]:
    """(source, destination) pairs and notes; raises UpscaleError for mismatched file/folder arguments. Two
    sources that would share an output name (``a.jpg`` and ``a.png`` with ``--format png``) keep their source
    extension in the name (``a_jpg.png``, ``a_png.png``) and a note says so: no output overwrites another."""
    if not input_path.exists():
        raise UpscaleError(f"no such input: {input_path}")
    if fmt and f".{fmt.lower()}" not in OUTPUT_SUFFIXES:
        raise UpscaleError(f"unknown --format '{fmt}'; choose one of {', '.join(s[1:] for s in OUTPUT_SUFFIXES)}")
    notes: List[str] = []

    def out_suffix(src: Path) -> str:
        if fmt:
            return f".{fmt.lower()}"
        return src.suffix if src.suffix.lower() in OUTPUT_SUFFIXES else ".png"  # GIF in, PNG out

    if input_path.is_dir():
        if output_path.is_file() or output_path.suffix.lower() in OUTPUT_SUFFIXES:
            raise UpscaleError(f"INPUT {input_path} is a folder, so OUTPUT must be a folder too, not {output_path}")
        sources = [p for p in list_images(input_path) if p.suffix.lower() in INPUT_SUFFIXES]
        ours = [p for p in sources if written_by_upscale(p)]  # an earlier run's outputs: never fed back in
        if ours:
            sources = [p for p in sources if p not in ours]
            notes.append(f"skipped {len(ours)} image(s) in {input_path} written by an earlier `lipt-export upscale` "
                         f"({', '.join(p.name for p in ours[:3])}{', ...' if len(ours) > 3 else ''})")
        if not sources:
            raise UpscaleError(f"no images to upscale in {input_path} (looked for {', '.join(INPUT_SUFFIXES)}"
                               + (", leaving out earlier outputs of upscale)" if ours else ")"))
        pairs = [(p, output_path / (p.stem + out_suffix(p))) for p in sources]
        same = output_path.exists() and output_path.resolve() == input_path.resolve()
        unmarked = sorted({d.suffix.lower() for _, d in pairs if d.suffix.lower() in UNMARKED_SUFFIXES})
        if same and unmarked:
            raise UpscaleError(f"{unmarked[0][1:].upper()} outputs carry no mark of this tool, so a later run over "
                               f"{input_path} would upscale them again: write them to another folder")
        by_dst: Dict[Path, List[Path]] = {}
        for src, dst in pairs:
            by_dst.setdefault(dst, []).append(src)
        clashes = {dst: srcs for dst, srcs in by_dst.items() if len(srcs) > 1}
        if clashes:
            renamed = {src: dst.with_name(f"{src.stem}_{src.suffix[1:].lower()}{dst.suffix}")
                       for dst, srcs in clashes.items() for src in srcs}
            pairs = [(src, renamed.get(src, dst)) for src, dst in pairs]
            for dst, srcs in clashes.items():
                notes.append(f"{' and '.join(p.name for p in srcs)} would all be written to {dst.name}: written as "
                             f"{', '.join(renamed[p].name for p in srcs)}")
    else:
        if output_path.is_dir():  # a file into an existing folder keeps its name
            output_path = output_path / (input_path.stem + out_suffix(input_path))
        if output_path.suffix.lower() not in OUTPUT_SUFFIXES:
            raise UpscaleError(f"cannot write '{output_path.name}': use one of {', '.join(OUTPUT_SUFFIXES)} (or an "
                               f"existing folder)")
        pairs = [(input_path, output_path)]
    for src, dst in pairs:
        if src.resolve() == dst.resolve():
            raise UpscaleError(f"{dst} would overwrite its input; choose another OUTPUT")
    problem = writable_dir_problem(pairs[0][1].parent)  # before any image is processed, not after
    if problem:
        raise UpscaleError(f"cannot write {pairs[0][1].parent}: {problem}; choose another OUTPUT")
    return pairs, notes


def remove_stale_temps(destinations: List[Path]) -> int:
    """Temp files a killed run left next to these outputs (``.NAME.<pid>-*.tmp``, see fileio.save_atomic); a
    live run's temps (another upscale into the same folder) are left alone."""
    removed = 0
    for dst in destinations:
        for tmp in dead_owner_temps(dst.parent, f".{dst.name}.", ".tmp"):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed
