"""The one image reader: every command that reads pictures goes through :func:`load_image`.

* RGB in, RGB out. Palette/CMYK/other modes become RGB (RGBA when they carry transparency).
* Grayscale (L, 1, 16-bit I;16): returned as RGB with equal channels plus ``gray=True``, so a writer can
  save grayscale again; 16-bit files keep ``bits=16``.
* Alpha (RGBA, LA, transparent palettes) is returned separately.
* EXIF orientation is applied; the ICC profile is returned for writers to keep.

Unreadable files raise :class:`~lipt_export.errors.ImageError` naming the file and the fix.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np

from lipt_export._version import __version__
from lipt_export.catalog import IMAGE_SUFFIXES
from lipt_export.errors import ImageError

SUPPORTED = "PNG, JPEG, WebP, BMP, TIFF, GIF"
# What `upscale` writes into every output it makes (PNG tEXt / EXIF "Software"), so that a later run over the
# same folder recognises its own outputs instead of upscaling them again.
SOFTWARE_MARK = "lipt-export upscale"
UPSCALE_MARK = f"{SOFTWARE_MARK} {__version__}"
EXIF_SOFTWARE = 0x0131
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, what PIL uses for RGB -> L
ROW_BLOCK = 256


def list_images(folder: str | Path) -> List[Path]:
    """Image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _unreadable(path: str | Path, exc: Exception) -> ImageError:
    detail = str(exc).splitlines()[0][:120] if str(exc) else ""
    return ImageError(f"cannot read image {path} ({type(exc).__name__}{': ' + detail if detail else ''}); "
                      f"replace or remove it (supported: {SUPPORTED})")


class CodedRGB:
    """An image kept as its integer codes (H, W[, C] uint8/uint16) that reads as a (3, H, W) float32 array in
    [0, 1]: indexing converts only the part asked for (a tile), so holding a large image costs its 8 or 16 bits
    per sample instead of 32. Values equal ``codes.astype(float32) / maxval`` exactly; gray is replicated."""

    def __init__(self, codes: np.ndarray, maxval: float):
        self.codes, self.maxval = codes, np.float32(maxval)
        self.shape = (3, codes.shape[0], codes.shape[1])
        self.dtype = np.dtype(np.float32)
        self.ndim = 3

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        lead = 0
        while lead < len(key) and key[lead] is None:  # leading new axes (a batch dimension)
            lead += 1
        chan, rows, cols = (tuple(key[lead:]) + (slice(None),) * 3)[:3]
        if self.codes.ndim == 2:
            block = np.broadcast_to(self.codes[rows, cols][None], (3, *self.codes[rows, cols].shape))[chan]
        else:
            block = np.moveaxis(self.codes[rows, cols, :3], -1, 0)[chan]
        out = block.astype(np.float32) / self.maxval
        return out.reshape((1,) * lead + out.shape)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        arr = self[:, :, :]
        return arr if dtype is None else arr.astype(dtype)

    def transpose(self, *axes) -> np.ndarray:
        return np.asarray(self).transpose(*axes)


def to_codes(out: np.ndarray, bits: int, gray: bool = False) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (H, W[, 3]) uint8/uint16 codes (clamped, rounded half up), row block by row
    block: what every upscale output (image or video frame) stores."""
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


@dataclass
class LoadedImage:
    rgb: CodedRGB  # reads as (3, H, W) float32 in [0, 1]; held as the file's 8/16-bit codes
    alpha: Optional[np.ndarray]  # (H, W) float32 in [0, 1] or None
    gray: bool
    bits: int  # 8 or 16
    icc: Optional[bytes]
    notes: List[str] = field(default_factory=list)  # what reading changed: frames dropped, bits reduced


def load_image(path: str | Path) -> LoadedImage:
    from PIL import Image, ImageOps

    path = Path(path)
    try:
        with Image.open(path) as im:
            frames = getattr(im, "n_frames", 1)
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
        raise _unreadable(path, exc) from None
    notes = []
    if frames > 1:
        notes.append(f"{path.name} has {frames} frames (animated or multi-page): only the first is used")
    if _png_rgb16(path):
        notes.append(f"{path.name} is a 16-bit RGB(A) PNG: Pillow reads it at 8 bits per channel, so it is processed "
                     f"and written at 8 bits (16-bit grayscale keeps its 16 bits)")
    bits, alpha, gray = 8, None, mode not in ("RGB", "RGBA")
    if mode.startswith("I"):
        bits, codes = 16, arr
        if codes.dtype != np.uint16 and codes.size and 0 <= codes.min() and codes.max() <= 65535:
            codes = codes.astype(np.uint16)  # mode "I" holds 16-bit PNG values in int32: keep 2 bytes
    elif mode in ("L", "LA"):
        codes = arr[..., 0] if mode == "LA" else arr
        if mode == "LA":
            alpha = arr[..., 1].astype(np.float32) / 255.0
    else:
        codes = arr
        if mode == "RGBA":
            alpha = arr[..., 3].astype(np.float32) / 255.0
    rgb = CodedRGB(codes, 65535.0 if bits == 16 else 255.0)
    return LoadedImage(rgb, alpha, gray, bits, icc, notes)


def _png_rgb16(path: Path) -> bool:
    """A PNG whose header says 16 bits per sample in colour (RGB or RGBA)."""
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError:
        return False
    return head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and head[24] == 16 and head[25] in (2, 6)


def written_by_upscale(path: str | Path) -> bool:
    """True when ``path`` carries :data:`SOFTWARE_MARK` (an output of `lipt-export upscale`)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            software = im.info.get("Software") or im.getexif().get(EXIF_SOFTWARE)
    except Exception:  # unreadable files are reported when they are read, not here
        return False
    return isinstance(software, str) and software.startswith(SOFTWARE_MARK)


def read_rgb(path: str | Path) -> np.ndarray:
    """uint8 H x W x 3 RGB (grayscale replicated, alpha dropped, 16-bit scaled to 8 bits)."""
    rgb = load_image(path).rgb
    if rgb.maxval == 255 and rgb.codes.ndim == 3:
        return np.ascontiguousarray(rgb.codes[..., :3])  # the codes themselves: what the rounding below gives
    return np.clip(np.round(rgb.transpose(1, 2, 0) * np.float32(255.0)), 0, 255).astype(np.uint8)


def check_image_folder(folder: Optional[str | Path], flag: str) -> List[Path]:
    """The images of a folder an option names (``--calib``, ``--parity-images``), each readable: checked before
    any model work, one line naming the folder or the file and the fix."""
    if folder is None or not Path(folder).is_dir():
        raise ImageError(f"{flag} {folder} is not a folder; pass a folder of images")
    found = list_images(folder)
    if not found:
        raise ImageError(f"{flag} {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); add some")
    for image in found:
        image_size(image)  # unreadable or truncated: one line naming it
    return found


def image_size(path: str | Path):
    """(H, W) from the header; ``verify()`` also catches truncated or corrupt files before any model runs."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            size = im.size[1], im.size[0]
            im.verify()
        return size
    except Exception as exc:
        raise _unreadable(path, exc) from None


class PngWriter:
    """A PNG written row block by row block, so an upscaled image never has to exist whole in memory.

    8 or 16 bits, gray / gray+alpha / RGB / RGBA, optional ICC profile. Rows use PNG's "Sub" filter (a byte
    minus the one a pixel to the left), which compresses photographs well and is one vectorised subtraction.
    """

    _COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}

    def __init__(self, path: str | Path, width: int, height: int, channels: int, bits: int = 8,
                 icc: Optional[bytes] = None, level: int = 6, text: Optional[dict] = None):
        import zlib

        if channels not in self._COLOR_TYPES or bits not in (8, 16):
            raise ValueError(f"unsupported PNG layout: {channels} channels, {bits} bits")
        self.width, self.height, self.channels, self.bits = width, height, channels, bits
        self.rows_written = 0
        self._file = open(path, "wb")
        self._z = zlib.compressobj(level)
        self._file.write(b"\x89PNG\r\n\x1a\n")
        self._chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bits, self._COLOR_TYPES[channels], 0, 0, 0))
        if icc:
            self._chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc))
        for key, value in (text or {}).items():  # tEXt: Latin-1 keyword, NUL, Latin-1 text
            self._chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1", "replace"))

    def _chunk(self, kind: bytes, data: bytes) -> None:
        import zlib

        self._file.write(struct.pack(">I", len(data)) + kind + data)
        self._file.write(struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    def write(self, rows: np.ndarray) -> None:
        """``rows``: (n, W) or (n, W, C) uint8/uint16 matching the header."""
        n = rows.shape[0]
        raw = np.ascontiguousarray(rows.astype(">u2" if self.bits == 16 else np.uint8)).view(np.uint8)
        raw = raw.reshape(n, -1)
        bpp = self.channels * self.bits // 8
        filtered = np.empty((n, raw.shape[1] + 1), np.uint8)
        filtered[:, 0] = 1  # Sub
        filtered[:, 1:1 + bpp] = raw[:, :bpp]
        np.subtract(raw[:, bpp:], raw[:, :-bpp], out=filtered[:, 1 + bpp:], dtype=np.uint8, casting="unsafe")
        data = self._z.compress(filtered.tobytes())
        if data:
            self._chunk(b"IDAT", data)
        self.rows_written += n

    def close(self) -> None:
        if self.rows_written != self.height:
            self._file.close()
            raise ValueError(f"PNG has {self.rows_written} of {self.height} rows")
        self._chunk(b"IDAT", self._z.flush())
        self._chunk(b"IEND", b"")
        self._file.close()
