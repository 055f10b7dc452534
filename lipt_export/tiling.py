"""Tiled inference for any image size, with memory bounded by the tile.

Layout. Along each axis, tiles of ``tile`` LR pixels overlap their neighbours by at least ``overlap``
pixels. Every tile start is a multiple of ``multiple_of`` (the model's window size): windowed-attention
models partition a tile into the same windows as the whole image only when the tile is aligned to the
window grid, so aligned tiles reproduce the whole-image result wherever the receptive field stays inside
the tile. The last tile on an axis ends at the image border, where the model pads exactly as it does for
the whole image.

Blending. Between two neighbouring tiles, a seam sits at the centre of their overlap. Each tile's weight
is 1 up to a ramp around the seam and 0 beyond it; the ramp spans ``blend`` x the overlap (default a
quarter) and the two tiles' weights sum to 1 everywhere, so no weight map is kept. Pixels within
``overlap * (1 - blend) / 2`` of a tile edge never count: if the model's receptive-field radius is below
that margin the tiled output equals whole-image inference up to float rounding; if it is larger, the ramp
hides the seam instead of leaving a step.

Memory. Output tiles are accumulated straight into one preallocated output array (or one the caller
passes to :meth:`TiledRunner.infer_into`), so working memory is one tile's inference plus the output.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np

from lipt_export.runners import Runner

TileSize = Union[int, Tuple[int, int]]


def _align_down(v: int, m: int) -> int:
    return (v // m) * m


def _align_up(v: int, m: int) -> int:
    return -(-v // m) * m


def axis_spans(length: int, tile: int, overlap: int, align: int = 1) -> List[Tuple[int, int]]:
    """[start, end) spans covering ``range(length)``: each at most ``tile`` long, neighbours overlapping
    by at least ``overlap``, every start a multiple of ``align``, spread evenly."""
    if length <= 0:
        raise ValueError(f"cannot tile an axis of length {length}")
    if length <= tile:
        return [(0, length)]
    tile = _align_down(tile, align)
    step = tile - overlap - (align - 1)  # worst case after aligning starts down
    if tile < align or step < align:
        raise ValueError(f"tile {tile} is too small for overlap {overlap} with alignment {align}: use a tile of "
                         f"at least {overlap + 2 * align - 1 + align} pixels or a smaller overlap")
    last = _align_up(length - tile, align)  # the last tile ends exactly at the border
    n = 1 + math.ceil(last / step)
    starts = [_align_down(round(i * last / (n - 1)), align) for i in range(n - 1)] + [last]
    starts = sorted(set(starts))
    return [(s, min(s + tile, length)) for s in starts]


def axis_weights(spans: Sequence[Tuple[int, int]], scale: int, blend: float = 0.25) -> List[np.ndarray]:
    """Per-span 1-D weights in output pixels (length ``scale * (end - start)``) forming a partition of
    unity over the axis: each seam sits mid-overlap with a linear ramp ``blend`` x the overlap wide."""
    seams = []  # (centre, half-width) in LR pixels, one per neighbouring pair
    for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
        ov = e0 - s1
        if ov <= 0:
            raise ValueError("tiles must overlap")
        seams.append([(s1 + e0) / 2.0, max(0.0, blend) * ov / 2.0])
    # Neighbouring ramps must not meet (then at most two tiles share any pixel and weights sum to 1).
    for i, (c, h) in enumerate(seams):
        room = min([c - seams[i - 1][0] if i else math.inf, seams[i + 1][0] - c if i + 1 < len(seams) else math.inf])
        seams[i][1] = min(h, room / 2.0)
    weights = []
    for i, (s, e) in enumerate(spans):
        x = (np.arange(scale * s, scale * e, dtype=np.float64) + 0.5) / scale  # output pixel centres, LR units
        w = np.ones_like(x)
        if i > 0:
            w *= _ramp(x, *seams[i - 1])
        if i + 1 < len(spans):
            w *= 1.0 - _ramp(x, *seams[i])
        weights.append(w.astype(np.float32))
    return weights


def _ramp(x: np.ndarray, centre: float, half: float) -> np.ndarray:
    if half <= 0:
        return (x >= centre).astype(np.float64)
    return np.clip((x - (centre - half)) / (2 * half), 0.0, 1.0)


@dataclass(frozen=True)
class Tile:
    y0: int
    y1: int
    x0: int
    x1: int
    wy: np.ndarray  # output-row weights
    wx: np.ndarray  # output-column weights


def plan_tiles(h: int, w: int, tile: TileSize, overlap: int, scale: int, align: int = 1,
               blend: float = 0.25) -> List[Tile]:
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    ys, xs = axis_spans(h, th, overlap, align), axis_spans(w, tw, overlap, align)
    wys, wxs = axis_weights(ys, scale, blend), axis_weights(xs, scale, blend)
    return [Tile(y0, y1, x0, x1, wy, wx) for (y0, y1), wy in zip(ys, wys) for (x0, x1), wx in zip(xs, wxs)]


class TiledRunner(Runner):
    """Runs ``runner`` tile by tile and blends the tiles into one output.

    ``tile``: LR tile size (int or (h, w)); 0 or None runs whole images. ``overlap``: minimum LR pixels
    shared by neighbouring tiles. ``multiple_of``: tile starts are multiples of it (the model's window).
    ``scale``: the upscaling factor; None = measured from the first tile.
    """

    def __init__(self, runner: Runner, scale: Optional[int] = None, tile: Optional[TileSize] = 256,
                 overlap: int = 16, multiple_of: int = 1, blend: float = 0.25):
        if overlap < 0:
            raise ValueError(f"overlap must be >= 0, got {overlap}")
        if not 0.0 <= blend <= 1.0:
            raise ValueError(f"blend must be in [0, 1], got {blend}")
        self.runner, self.scale, self.tile, self.overlap = runner, scale, tile or None, overlap
        self.multiple_of, self.blend = max(1, int(multiple_of)), blend
        tile_txt = "x".join(map(str, (tile, tile) if isinstance(tile, int) else tile)) if tile else "none"
        self.name = f"{runner.name}+tiles{tile_txt}o{overlap}"
        self.precision, self.device = runner.precision, runner.device

    def plan(self, h: int, w: int) -> List[Tile]:
        if self.tile is None:
            ones = (np.ones(h * (self.scale or 1), np.float32), np.ones(w * (self.scale or 1), np.float32))
            return [Tile(0, h, 0, w, *ones)]
        return plan_tiles(h, w, self.tile, self.overlap, self.scale or 1, self.multiple_of, self.blend)

    def count_tiles(self, h: int, w: int) -> int:
        return len(self.plan(h, w))

    def infer(self, lr: np.ndarray) -> np.ndarray:
        if lr.ndim != 4:
            raise ValueError(f"expected an NCHW array, got shape {lr.shape}")
        outs = None
        for n in range(lr.shape[0]):
            out = self.infer_into(lr[n])
            if outs is None:
                outs = np.empty((lr.shape[0], *out.shape), np.float32)
            outs[n] = out
        return outs

    def _ensure_scale(self, lr_chw: np.ndarray) -> int:
        if self.scale is None:  # foreign model: measure it on a small patch
            h, w = min(lr_chw.shape[1], 16), min(lr_chw.shape[2], 16)
            probe = self.runner.infer(np.ascontiguousarray(lr_chw[None, :, :h, :w]))
            self.scale = probe.shape[2] // h
        return self.scale

    def infer_into(self, lr_chw: np.ndarray, out: Optional[np.ndarray] = None,
                   progress: Optional[Callable[[int], None]] = None) -> np.ndarray:
        """Upscale one CHW image into ``out`` (C, s*H, s*W) float32, allocated when not given."""
        c, h, w = lr_chw.shape
        s = self._ensure_scale(lr_chw)
        if out is None:
            out = np.zeros((c, s * h, s * w), np.float32)
        elif out.shape != (c, s * h, s * w):
            raise ValueError(f"output buffer has shape {out.shape}, expected {(c, s * h, s * w)}")
        else:
            out[...] = 0.0
        for t in self.plan(h, w):
            y = self.runner.infer(np.ascontiguousarray(lr_chw[None, :, t.y0:t.y1, t.x0:t.x1], dtype=np.float32))
            want = (1, c, s * (t.y1 - t.y0), s * (t.x1 - t.x0))
            if y.shape != want:
                raise ValueError(f"{self.runner.name} returned shape {y.shape} for a tile needing {want}: "
                                 f"is the scale {s} right?")
            region = out[:, s * t.y0:s * t.y1, s * t.x0:s * t.x1]
            region += y[0] * (t.wy[:, None] * t.wx[None, :])
            if progress is not None:
                progress(1)
        return out


class ProfileFitRunner(Runner):
    """Fits any input into a fixed shape range (a TensorRT optimization profile): batches above
    ``max_batch`` are split, sides above ``max_hw`` are tiled, sides below ``min_hw`` are padded
    (symmetric reflection) and the output cropped. Inputs inside the range go straight through."""

    def __init__(self, runner: Runner, scale: int, min_hw: Tuple[int, int], max_hw: Tuple[int, int],
                 max_batch: int = 1, multiple_of: int = 1, overlap: int = 16):
        self.runner, self.scale = runner, scale
        self.min_hw, self.max_hw, self.max_batch = tuple(min_hw), tuple(max_hw), max(1, max_batch)
        self.name, self.precision, self.device = runner.name, runner.precision, runner.device
        tile = (_align_down(self.max_hw[0], multiple_of) or self.max_hw[0],
                _align_down(self.max_hw[1], multiple_of) or self.max_hw[1])
        self._tiled = TiledRunner(_PadToMin(runner, scale, self.min_hw), scale, tile, overlap, multiple_of)
        self._padded = self._tiled.runner

    def infer(self, lr: np.ndarray) -> np.ndarray:
        if lr.shape[0] > self.max_batch:
            return np.concatenate([self.infer(lr[i:i + self.max_batch])
                                   for i in range(0, lr.shape[0], self.max_batch)])
        h, w = lr.shape[2:]
        if h > self.max_hw[0] or w > self.max_hw[1]:
            return self._tiled.infer(lr)
        return self._padded.infer(lr)


class _PadToMin(Runner):
    def __init__(self, runner: Runner, scale: int, min_hw: Tuple[int, int]):
        self.runner, self.scale, self.min_hw = runner, scale, min_hw
        self.name, self.precision, self.device = runner.name, runner.precision, runner.device

    def infer(self, lr: np.ndarray) -> np.ndarray:
        h, w = lr.shape[2:]
        ph, pw = max(0, self.min_hw[0] - h), max(0, self.min_hw[1] - w)
        if not ph and not pw:
            return self.runner.infer(lr)
        padded = np.pad(lr, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="symmetric")
        return np.ascontiguousarray(self.runner.infer(padded)[:, :, :self.scale * h, :self.scale * w])
