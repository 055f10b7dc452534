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
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from lipt_export.errors import DiskFullError, LiptExportError, UpscaleError
from lipt_export.fileio import dead_owner_temps, disk_full, save_atomic, writable_dir_problem
from lipt_export.catalog import IMAGE_SUFFIXES, UPSCALE_OUTPUT_SUFFIXES, VIDEO_CONTAINERS, VIDEO_SUFFIXES
from lipt_export.images import (EXIF_SOFTWARE, LUMA, UPSCALE_MARK as MARK, CodedRGB, PngWriter,
                                 LoadedImage, load_image, to_codes as _to_uint, written_by_upscale)
from lipt_export.runtime.pipeline import PipelineStats, run_pipeline
from lipt_export.runtime.spill import SpilledSum
from lipt_export.runtime.video_plan import written_by_upscale_video

INPUT_SUFFIXES = IMAGE_SUFFIXES  # a GIF's first frame is upscaled, written as PNG by default
OUTPUT_SUFFIXES = UPSCALE_OUTPUT_SUFFIXES
UNMARKED_SUFFIXES = (".bmp", ".npy")  # outputs that cannot carry images.SOFTWARE_MARK
PIL_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF",
               ".tiff": "TIFF"}
ALPHA_FORMATS = {".png", ".webp", ".tif", ".tiff", ".npy"}
DEFAULT_VIDEO_SUFFIX = ".mkv"  # a video from a container upscale does not write (.ts, .flv, ...)


def is_video_output(dst: Path) -> bool:
    """Pairs of :func:`plan_outputs` whose output is a video are upscaled frame by frame (runtime.video)."""
    return dst.suffix.lower() in VIDEO_CONTAINERS


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


@dataclass
class ImageJob:
    """One image on its way through the stages: read (:func:`read_image`), inferred into a spill file
    (:func:`infer_image`), written (:func:`write_image`). ``error`` holds a problem with this file only."""

    src: Path
    dst: Path
    img: Optional[LoadedImage] = None
    keep_alpha: bool = False
    alpha: Optional[np.ndarray] = None
    spill: Optional[SpilledSum] = None
    scale: int = 0
    error: Optional[LiptExportError] = None


def read_image(src: Path, dst: Path, warn=None) -> ImageJob:
    """Decode stage: the image (as its 8/16-bit codes) and what reading it changed (``warn``)."""
    img = load_image(src)
    for note in img.notes if warn else ():
        warn(note)
    suffix = dst.suffix.lower()
    keep_alpha = img.alpha is not None and suffix in ALPHA_FORMATS
    if img.alpha is not None and not keep_alpha and warn:
        warn(f"{dst.name}: {suffix[1:].upper()} has no alpha channel; transparency dropped")
    return ImageJob(src, dst, img, keep_alpha)


def infer_image(runner, job: ImageJob, alpha_mode: str = "bicubic", progress_bar: bool = True) -> ImageJob:
    """Inference stage: every tile's weighted output summed into a spill file beside the output (one tile of
    memory whatever the size), the alpha plane upscaled; the LR codes are released."""
    from tqdm import tqdm

    img = job.img
    _, h, w = img.rgb.shape
    n_tiles = runner.count_tiles(h, w) * (2 if job.keep_alpha and alpha_mode == "model" else 1)
    with tqdm(total=n_tiles, desc=job.src.name, unit="tile", leave=False, file=sys.stderr,
              disable=not progress_bar) as bar:
        job.scale = s = runner.ensure_scale(img.rgb)
        job.alpha = _upscale_alpha(img.alpha, s, runner, alpha_mode, bar.update) if job.keep_alpha else None
        spill = SpilledSum(job.dst.parent, 3, s * h, s * w)
        try:
            runner.infer_tiles(img.rgb, spill.add, bar.update)
        except BaseException:
            spill.close()
            raise
    job.spill = spill
    img.rgb = img.alpha = None  # what the writer needs is in the spill file now
    return job


def write_image(job: ImageJob) -> Tuple[int, int]:
    """Encode stage: the spill file's rows encoded into the output under a temp name, renamed when complete;
    returns the output (width, height). PNG and ``.npy`` are streamed row block by row block; JPEG/WebP/TIFF/BMP
    are encoded by PIL from a whole 8-bit image."""
    try:
        return _write_rows(job)
    finally:
        job.spill.close()


def _write_rows(job: ImageJob) -> Tuple[int, int]:
    from PIL import Image

    img, alpha, dst, acc = job.img, job.alpha, job.dst, job.spill
    h, w = acc.h, acc.w
    suffix = dst.suffix.lower()
    if suffix == ".npy":
        channels = (1 if img.gray else 3) + (1 if alpha is not None else 0)

        def write_npy(tmp: str) -> None:
            with open(tmp, "wb") as f:  # rows streamed after the header: no output-sized mapping in memory
                np.lib.format.write_array_header_1_0(
                    f, {"descr": "<f4", "fortran_order": False, "shape": (h, w, channels)})
                for r0, block in acc.rows():
                    n = block.shape[1]
                    rows = np.empty((n, w, channels), np.float32)
                    if img.gray:
                        rows[..., 0] = np.tensordot(block, LUMA, axes=([0], [0]))
                    else:
                        rows[..., :3] = block.transpose(1, 2, 0)
                    if alpha is not None:
                        rows[..., -1] = alpha[r0:r0 + n] / np.float32(255.0)
                    f.write(rows.tobytes())

        save_atomic(dst, write_npy)
        return w, h
    bits = img.bits if suffix in (".png", ".tif", ".tiff") and alpha is None else 8  # no PIL mode for I;16+A
    if suffix == ".png":
        channels = (1 if img.gray else 3) + (1 if alpha is not None else 0)

        def write_png(tmp: str) -> None:
            writer = PngWriter(tmp, w, h, channels, bits, icc=img.icc, text={"Software": MARK})
            for r0, block in acc.rows():
                rows = _to_uint(block, bits, img.gray)
                if alpha is not None:
                    rows = np.dstack([rows, alpha[r0:r0 + rows.shape[0]]])
                writer.write(rows)
            writer.close()

        save_atomic(dst, write_png)
        return w, h
    pixels = np.empty((h, w) if img.gray else (h, w, 3), np.uint16 if bits == 16 else np.uint8)
    for r0, block in acc.rows():
        pixels[r0:r0 + block.shape[1]] = _to_uint(block, bits, img.gray)
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


def upscale_file(runner, src: Path, dst: Path, *, alpha_mode: str = "bicubic", progress_bar: bool = True,
                 warn=None) -> Tuple[int, int]:
    """Upscale one file with a TiledRunner; returns the output (width, height): the three stages in turn.

    Memory: the LR image (its 8/16-bit codes), one tile in flight (the sum lives in a temporary file), and the
    output's own encoding: PNG and ``.npy`` are written row block by row block, so no whole output image is held;
    JPEG/WebP/TIFF/BMP are encoded by PIL from a whole 8-bit image."""
    return write_image(infer_image(runner, read_image(src, dst, warn), alpha_mode, progress_bar))


def upscale_images(runner, pairs: Sequence[Tuple[Path, Path]], *, alpha_mode: str = "bicubic",
                   progress_bar: bool = True, warn=None, done: Callable[[Path, Path], None] = lambda s, d: None,
                   failed: Callable[[Path, Path, LiptExportError], None] = lambda s, d, e: None) -> PipelineStats:
    """Upscale many images with reading, inference and writing overlapped (:func:`run_pipeline`): the next image
    is read and the previous one written while the runtime works on this one. At most a few images are in flight
    (their LR codes, or their spill files on disk). A problem with one file (unreadable, ...) goes to ``failed``
    and the rest go on; a full disk (:class:`DiskFullError`, saying what was finished) or anything else stops the
    run and is raised."""

    finished = [0]

    class _Full(Exception):
        """A full disk, said once the pipeline has stopped: only then is the count of finished images final."""

        def __init__(self, job: ImageJob, exc: OSError):
            super().__init__(exc.strerror)
            self.job, self.exc = job, exc

    def full(job: ImageJob, exc: OSError) -> _Full:
        return _Full(job, exc)

    def read(pair: Tuple[Path, Path]) -> ImageJob:
        try:
            return read_image(pair[0], pair[1], warn)
        except LiptExportError as exc:
            return ImageJob(pair[0], pair[1], error=exc)

    def work(job: ImageJob) -> ImageJob:
        if job.error is None:
            try:
                infer_image(runner, job, alpha_mode, progress_bar)
            except LiptExportError as exc:
                job.error = exc
            except OSError as exc:  # the spill file beside the output
                raise full(job, exc) if disk_full(exc) else exc
        return job

    def write(job: ImageJob) -> None:
        if job.error is None:
            try:
                write_image(job)
            except LiptExportError as exc:
                job.error = exc
            except OSError as exc:
                raise full(job, exc) if disk_full(exc) else exc
        if job.error is not None:
            failed(job.src, job.dst, job.error)
        else:
            finished[0] += 1
            done(job.src, job.dst)

    try:
        return run_pipeline(map(read, pairs), work, write, depth=1)
    except _Full as f:
        raise DiskFullError(f"disk full writing {f.job.dst} ({f.exc.strerror}): {finished[0]} of {len(pairs)} "
                            f"image(s) were finished, nothing is half-written under {f.job.dst.name}; free space "
                            f"and rerun with --skip-existing") from None


def plan_outputs(input_path: Path, output_path: Path, fmt: Optional[str]
                 ) -> Tuple[List[Tuple[Path, Path]], List[str]]:
    """(source, destination) pairs and notes; raises UpscaleError for mismatched file/folder arguments. Two
    sources that would share an output name (``a.jpg`` and ``a.png`` with ``--format png``) keep their source
    extension in the name (``a_jpg.png``, ``a_png.png``) and a note says so: no output overwrites another."""
    if not input_path.exists():
        raise UpscaleError(f"no such input: {input_path}")
    fmt = f".{fmt.lower().lstrip('.')}" if fmt else None
    if fmt and fmt not in OUTPUT_SUFFIXES and fmt not in VIDEO_CONTAINERS:
        raise UpscaleError(f"unknown --format '{fmt[1:]}'; choose one of "
                           f"{', '.join(s[1:] for s in (*OUTPUT_SUFFIXES, *VIDEO_CONTAINERS))}")
    notes: List[str] = []

    def out_suffix(src: Path) -> str:
        if src.suffix.lower() in VIDEO_SUFFIXES:  # a video stays a video: --format names a container here
            if fmt in VIDEO_CONTAINERS:
                return fmt
            return src.suffix if src.suffix.lower() in VIDEO_CONTAINERS else DEFAULT_VIDEO_SUFFIX
        if fmt in OUTPUT_SUFFIXES:
            return fmt
        return src.suffix if src.suffix.lower() in OUTPUT_SUFFIXES else ".png"  # GIF in, PNG out

    if input_path.is_dir():
        if output_path.is_file() or output_path.suffix.lower() in (*OUTPUT_SUFFIXES, *VIDEO_CONTAINERS):
            raise UpscaleError(f"INPUT {input_path} is a folder, so OUTPUT must be a folder too, not {output_path}")
        sources = sorted(p for p in input_path.iterdir()
                         if p.is_file() and p.suffix.lower() in (*INPUT_SUFFIXES, *VIDEO_SUFFIXES))
        # an earlier run's outputs are never fed back in
        ours = [p for p in sources if (written_by_upscale_video(p) if p.suffix.lower() in VIDEO_SUFFIXES
                                       else written_by_upscale(p))]
        if ours:
            sources = [p for p in sources if p not in ours]
            n_videos = sum(p.suffix.lower() in VIDEO_SUFFIXES for p in ours)
            noun = "image(s)" if not n_videos else "video(s)" if n_videos == len(ours) else "file(s)"
            notes.append(f"skipped {len(ours)} {noun} in {input_path} written by an earlier `lipt-export upscale` "
                         f"({', '.join(p.name for p in ours[:3])}{', ...' if len(ours) > 3 else ''})")
        if not sources:
            raise UpscaleError(f"no images or videos to upscale in {input_path} (looked for "
                               f"{', '.join((*INPUT_SUFFIXES, *VIDEO_SUFFIXES))}"
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
        out = output_path.suffix.lower()
        if input_path.suffix.lower() in VIDEO_SUFFIXES and out not in VIDEO_CONTAINERS:
            raise UpscaleError(f"{input_path.name} is a video: write a video ({', '.join(VIDEO_CONTAINERS)}), not "
                               f"'{output_path.name}'")
        if out not in OUTPUT_SUFFIXES and out not in VIDEO_CONTAINERS:
            raise UpscaleError(f"cannot write '{output_path.name}': use one of {', '.join(OUTPUT_SUFFIXES)}, a video "
                               f"({', '.join(VIDEO_CONTAINERS)}) or an existing folder")
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
