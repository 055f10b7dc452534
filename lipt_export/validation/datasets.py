"""SR benchmark folders: ``DIR/HR/*.png`` and optional ``DIR/LR_bicubic/X{s}/*.png``.

LR files carry the HR file's stem, optionally with an ``x{s}`` suffix (``baby.png`` or ``babyx2.png``, the
EDSR/DIV2K conventions). Without an LR folder, LR images are made from the HR images with the
MATLAB-compatible :func:`lipt_export.validation.imresize.imresize`. HR images are cropped to a multiple of the scale
(the benchmark convention) and grayscale ones are converted to RGB.

Every problem is a :class:`DatasetError` (an unreadable image: :class:`ImageError`) with one line saying what is wrong and how to fix it. Names,
readability of headers and sizes are checked before any model runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import numpy as np

from lipt_export.errors import DatasetError
from lipt_export.catalog import IMAGE_SUFFIXES
from lipt_export.images import image_size, list_images, read_rgb
from lipt_export.validation.imresize import imresize
from lipt_export.validation.metrics import crop_to_multiple

LAYOUT_HINT = "expected DIR/HR/*.png and optionally DIR/LR_bicubic/X{s}/*.png with the same names"


@dataclass
class SRSample:
    name: str  # HR file stem
    hr: np.ndarray  # uint8 HxWx3, cropped to a multiple of the scale
    lr: np.ndarray  # uint8 (H/s)x(W/s)x3


@dataclass
class SRDataset:
    root: Path
    scale: int
    hr_paths: List[Path]
    lr_paths: Optional[List[Path]]  # None: LR made with imresize

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def lr_source(self) -> str:
        return "imresize (MATLAB bicubic)" if self.lr_paths is None else str(self.lr_paths[0].parent)

    def __len__(self) -> int:
        return len(self.hr_paths)

    def __iter__(self) -> Iterator[SRSample]:
        for i in range(len(self)):
            yield self.sample(i)

    def sample(self, i: int) -> SRSample:
        hr = crop_to_multiple(read_rgb(self.hr_paths[i]), self.scale)
        if self.lr_paths is None:
            lr = imresize(hr, 1.0 / self.scale)
        else:
            lr = read_rgb(self.lr_paths[i])
            _check_lr_size(self.lr_paths[i], lr.shape[:2], hr.shape[:2], self.scale)
        return SRSample(self.hr_paths[i].stem, hr, lr)


def _check_lr_size(path: Path, lr_hw, hr_hw, scale: int) -> None:
    want = (hr_hw[0] // scale, hr_hw[1] // scale)
    if tuple(lr_hw) != want:
        raise DatasetError(f"LR image {path} is {lr_hw[0]}x{lr_hw[1]} but its HR (cropped to a multiple of {scale}) "
                           f"is {hr_hw[0]}x{hr_hw[1]}, so LR must be {want[0]}x{want[1]}; check --scale or the "
                           f"LR folder")


def _match_lr(hr_paths: List[Path], lr_dir: Path, scale: int, allow_extra: bool = False) -> List[Path]:
    """The LR file of every HR file; LR files without an HR file are an error unless ``allow_extra``."""
    suffix = f"x{scale}"
    lr_all = list_images(lr_dir)
    by_stem: Dict[str, Path] = {p.stem: p for p in lr_all}
    for p in lr_all:  # NAMEx2.png also matches NAME (exact names win)
        if p.stem.lower().endswith(suffix):
            by_stem.setdefault(p.stem[: -len(suffix)], p)
    missing = [p.name for p in hr_paths if p.stem not in by_stem]
    matched = {by_stem[p.stem] for p in hr_paths if p.stem in by_stem}
    extra = [] if allow_extra else [p.name for p in lr_all if p not in matched]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"no LR file for {_few(missing)}")
        if extra:
            parts.append(f"LR files without an HR file: {_few(extra)}")
        raise DatasetError(f"HR and LR names do not match ({'; '.join(parts)}) in {lr_dir}; name each LR file "
                           f"like its HR file (NAME.png or NAME{suffix}.png)")
    return [by_stem[p.stem] for p in hr_paths]


def _few(names: List[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def open_dataset(root: str | Path, scale: int, lr_dir: str | Path | None = None,
                 limit: Optional[int] = None) -> SRDataset:
    """Index and validate a dataset folder (names, headers, sizes); images are decoded when iterated.

    ``lr_dir`` overrides ``root/LR_bicubic/X{scale}``; ``limit`` keeps the first N images (sorted)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist; {LAYOUT_HINT}")
    hr_dir = root / "HR"
    if not hr_dir.is_dir():
        raise DatasetError(f"{root} has no HR/ folder; {LAYOUT_HINT}")
    hr_paths = list_images(hr_dir)
    if not hr_paths:
        raise DatasetError(f"no images in {hr_dir} (looked for {', '.join(IMAGE_SUFFIXES)}); {LAYOUT_HINT}")
    if limit is not None and limit < 1:
        raise DatasetError(f"--limit must be at least 1 (the number of images to evaluate), got {limit}")
    if limit:
        hr_paths = hr_paths[:limit]
    lr_folder = Path(lr_dir) if lr_dir else root / "LR_bicubic" / f"X{scale}"
    if lr_dir and not lr_folder.is_dir():
        raise DatasetError(f"LR folder {lr_folder} does not exist; pass an existing --lr-dir or leave it out to "
                           f"make LR images with imresize")
    lr_paths = None
    if lr_folder.is_dir():
        if not list_images(lr_folder):
            raise DatasetError(f"LR folder {lr_folder} is empty; fill it or remove it to make LR images with "
                               f"imresize")
        lr_paths = _match_lr(hr_paths, lr_folder, scale, allow_extra=bool(limit))
    elif scale == 1:
        raise DatasetError(f"scale 1 (restoration) needs degraded inputs in {lr_folder}; imresize cannot "
                           f"make them")
    for i, hr_path in enumerate(hr_paths):
        hr_hw = image_size(hr_path)
        hr_hw = (hr_hw[0] - hr_hw[0] % scale, hr_hw[1] - hr_hw[1] % scale)
        if min(hr_hw) < scale:
            raise DatasetError(f"HR image {hr_path} is smaller than the scale {scale}; remove it")
        if lr_paths is not None:
            _check_lr_size(lr_paths[i], image_size(lr_paths[i]), hr_hw, scale)
    return SRDataset(root=root, scale=scale, hr_paths=hr_paths, lr_paths=lr_paths)
