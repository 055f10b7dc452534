"""Tiled inference for any image size, with memory bounded by the tile rows (not the image height).

Layout. Each axis is treated as a cycle: tiles ("arcs") of at most ``tile`` LR pixels overlap their
neighbours by at least ``overlap`` pixels, and the last one runs past the border into the first. A tile that
crosses the border is stacked as [head rows 0..b) + [tail rows t..H): its outer edges are the image's real
borders (where the model zero-pads its convolutions and pads the input to its window multiple, exactly as
for the whole image) and its cyclic wrap joins the image's last row to its first, as whole-image inference
does for models that roll or re-sample cyclically (LIPT's shifted windows and sparse attention). The only
artificial edge of any tile is then an inner one, which the overlap keeps away from the pixels that count.
Every tile start (and wrapped head) is a multiple of ``multiple_of`` (the model's window size), so a tile
is partitioned into exactly the windows of the whole image.

Blending. Between two neighbouring tiles, a seam sits at the centre of their overlap. Each tile's weight
is 1 up to a ramp around the seam and 0 beyond it; the ramp spans ``blend`` x the overlap (default a
quarter) and the two tiles' weights sum to 1 everywhere, so no weight map is kept. Pixels within
``overlap * (1 - blend) / 2`` of a tile edge never count: if the model's receptive-field radius is below
that margin the tiled output equals whole-image inference up to float rounding; if it is larger, the ramp
hides the seam instead of leaving a step.

Policy. :class:`TilingPolicy` is the one rule for *whether* and *how* a model is tiled (tile size, overlap,
whether tiling is required); export writes it into the manifest and every consumer (``load_runner``,
``upscale``, ``eval``, engines, Triton) resolves the user's ``--tile``/``--overlap`` through it.

Memory. :meth:`TiledRunner.infer_rows` runs one row of tiles at a time and hands finished output rows to a
sink, so working memory is about three rows of tiles of output (tile rows x output width), never the whole
output; :meth:`TiledRunner.infer_into` collects them into one array for callers that want it.
:meth:`TiledRunner.infer_tiles` hands over each weighted tile instead, for a caller that keeps the sum elsewhere
(``upscale``: a temporary file, so memory is one tile whatever the output size).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np

from lipt_export.errors import TilingError
from lipt_export.runtime.base import Runner

TileSize = Union[int, Tuple[int, int]]
WINDOWS_OF_CONTEXT = 8
BASE_OVERLAP = 16
# LR tile used when the caller asks for nothing (upscale, eval): bounds memory; images up to it run whole.
DEFAULT_TILE = 512


@dataclass(frozen=True)
class TilingPolicy:
    """How one model is tiled. ``multiple_of``: the window (tile starts align to it); ``overlap``: LR pixels
    shared by neighbouring tiles; ``required``: whole-image inference is impractical (ESRT), so a tile is used
    unless the caller picks one; ``recommended_tile``: the tile used then."""

    multiple_of: int = 1
    recommended_tile: int = 256
    overlap: int = BASE_OVERLAP
    required: bool = False

    @staticmethod
    def context_overlap(multiple_of: int, base: int = BASE_OVERLAP) -> int:
        """Windowed models see several windows away: 8 windows of overlap keeps tiled output at fp32-noise
        level (LIPT-tiny, window 8: overlap 64 gives rel-L2 5.6e-6 against whole-image inference, 96 gives
        9e-8; docs/serving.md)."""
        return max(base, WINDOWS_OF_CONTEXT * multiple_of) if multiple_of > 1 else base

    @classmethod
    def for_model(cls, multiple_of: int, recommended_tile: int, required: bool) -> "TilingPolicy":
        return cls(multiple_of, recommended_tile, cls.context_overlap(multiple_of), required)

    @classmethod
    def from_io(cls, io) -> "TilingPolicy":
        """From a manifest's IOContract; an older manifest's smaller overlap is raised to the context rule."""
        return cls(io.multiple_of, io.recommended_tile, cls.context_overlap(io.multiple_of, io.tile_overlap),
                   io.tile_required)

    def resolve(self, tile: Optional[int], overlap: Optional[int], default_tile: Optional[int] = None
                ) -> Tuple[Optional[int], int]:
        """(tile or None for whole images, overlap). Explicit values win; ``tile=None`` means the recommended
        tile when tiling is required, else ``default_tile`` (None: whole images). A required tile cannot be
        switched off with 0."""
        overlap = self.overlap if overlap is None else int(overlap)
        if overlap < 0:
            raise TilingError(f"overlap must be >= 0, got {overlap}")
        if tile is None:
            tile = self.recommended_tile if self.required else default_tile
        elif tile == 0 and self.required:
            raise TilingError(f"this model must run tiled (memory grows quadratically with the image); use a "
                              f"tile of at most {self.recommended_tile} instead of 0")
        elif tile < 0:
            raise TilingError(f"tile must be >= 0, got {tile}")
        if not tile:
            return None, overlap
        axis_arcs(2 * int(tile) + 1, int(tile), overlap, self.multiple_of)  # too small for the overlap: say so now
        return int(tile), overlap

    def overlap_warning(self, overlap: int) -> Optional[str]:
        """A warning when ``overlap`` is below this policy's: seams then differ from whole-image inference by
        more than float noise (LIPT-tiny x2, tile 64, overlap 16: up to 6 LSB on 2 % of pixels; 1 at 64)."""
        if overlap >= self.overlap:
            return None
        return (f"overlap {overlap} is below this model's tiling policy ({self.overlap} LR pixels"
                + (f": {WINDOWS_OF_CONTEXT} windows of {self.multiple_of}" if self.multiple_of > 1 else "")
                + "): tile seams may differ visibly from whole-image inference; omit --overlap to use the policy's")

    def wrap(self, runner: Runner, scale: Optional[int], tile: Optional[int] = None, overlap: Optional[int] = None,
             default_tile: Optional[int] = None) -> Runner:
        """``runner`` tiled as resolved (or itself when whole images are resolved)."""
        size, ov = self.resolve(tile, overlap, default_tile)
        return runner if size is None else TiledRunner(runner, scale, size, ov, self.multiple_of)


def _align_down(v: int, m: int) -> int:
    return (v // m) * m


def _align_up(v: int, m: int) -> int:
    return -(-v // m) * m


@dataclass(frozen=True)
class Arc:
    """A tile's extent along one axis, on the axis seen as a cycle of ``length`` pixels: [start, start + size)
    in unrolled coordinates. An arc running past the end wraps: its tile is assembled as the head
    [0, start + size - length) followed by the tail [start, length)."""

    start: int
    size: int
    length: int

    @property
    def head(self) -> int:
        return max(0, self.start + self.size - self.length)

    def segments(self) -> List[Tuple[int, int]]:
        """Source ranges in the order they are stacked into the tile."""
        if not self.head:
            return [(self.start, self.start + self.size)]
        return [(0, self.head), (self.start, self.length)]


def axis_arcs(length: int, tile: int, overlap: int, align: int = 1) -> List[Arc]:
    """Arcs covering the axis as a cycle: each at most ``tile`` long, neighbours (the last and the first
    included, across the border) sharing at least ``overlap`` pixels, starts and wrapped heads multiples of
    ``align``, evenly spread, no larger than needed. An axis up to ``tile`` long is one whole arc."""
    if length <= 0:
        raise ValueError(f"cannot tile an axis of length {length}")
    if length <= tile:
        return [Arc(0, length, length)]
    room = _align_down(tile - (align - 1), align)  # a wrapped head is aligned up by < align
    step = room - overlap - (align - 1)  # worst case after aligning starts down
    if room < align or step < align:
        raise TilingError(f"tile {tile} is too small for overlap {overlap} with alignment {align}: use a tile of "
                         f"at least {_align_up(overlap + 2 * align - 1, align) + align - 1} pixels or a smaller overlap")
    n = math.ceil(length / step)
    size = min(room, _align_up(math.ceil(length / n) + overlap + align - 1, align))
    arcs = []
    for i in range(n):
        start = _align_down(round(i * length / n), align)
        head = start + size - length
        extra = _align_up(head, align) - head if head > 0 else 0  # keep the tail aligned inside the tile
        arcs.append(Arc(start, size + extra, length))
    return arcs


def axis_weights(arcs: Sequence[Arc], scale: int, blend: float = 0.25) -> List[np.ndarray]:
    """Per-arc 1-D weights in output pixels, in the arc's stacking order (head first when it wraps), forming
    a partition of unity over the axis: each seam sits mid-overlap, with a linear ramp ``blend`` x the
    overlap wide; pixels nearer a tile edge than the ramp get weight 0."""
    n = len(arcs)
    if n == 1:
        return [np.ones(scale * arcs[0].size, np.float32)]
    length = arcs[0].length
    seams = []  # (centre, half-width) in unrolled LR pixels; seam i sits between arc i and arc i+1
    for i, arc in enumerate(arcs):
        nxt = arcs[i + 1].start if i + 1 < n else arcs[0].start + length
        ov = arc.start + arc.size - nxt
        if ov < 0:
            raise ValueError("tiles must cover the axis without gaps")
        seams.append([(nxt + arc.start + arc.size) / 2.0, max(0.0, blend) * ov / 2.0])
    for i, (c, h) in enumerate(seams):  # neighbouring ramps must not meet: then weights sum to 1
        prev_c = seams[i - 1][0] - (length if i == 0 else 0)
        next_c = seams[(i + 1) % n][0] + (length if i == n - 1 else 0)
        seams[i][1] = min(h, (c - prev_c) / 2.0, (next_c - c) / 2.0)
    weights = []
    for i, arc in enumerate(arcs):
        x = arc.start + (np.arange(scale * arc.size, dtype=np.float64) + 0.5) / scale  # unrolled LR coords
        up_c, up_h = seams[i - 1]
        w = _ramp(x, up_c - (length if i == 0 else 0), up_h) * (1.0 - _ramp(x, *seams[i]))
        if arc.head:  # stacking order: head (unrolled positions past the end) first, then the tail
            split = scale * (arc.length - arc.start)
            w = np.concatenate([w[split:], w[:split]])
        weights.append(w.astype(np.float32))
    return weights


def _ramp(x: np.ndarray, centre: float, half: float) -> np.ndarray:
    if half <= 0:
        return (x >= centre).astype(np.float64)
    return np.clip((x - (centre - half)) / (2 * half), 0.0, 1.0)


@dataclass(frozen=True)
class Tile:
    rows: List[Tuple[int, int]]  # source row ranges, in stacking order
    cols: List[Tuple[int, int]]
    wy: np.ndarray  # output-row weights (stacking order)
    wx: np.ndarray  # output-column weights


def plan_tiles(h: int, w: int, tile: TileSize, overlap: int, scale: int, align: int = 1,
               blend: float = 0.25) -> List[Tile]:
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    ys, xs = axis_arcs(h, th, overlap, align), axis_arcs(w, tw, overlap, align)
    wys, wxs = axis_weights(ys, scale, blend), axis_weights(xs, scale, blend)
    return [Tile(ay.segments(), ax.segments(), wy, wx) for ay, wy in zip(ys, wys) for ax, wx in zip(xs, wxs)]


def _gather(lr_chw: np.ndarray, rows: List[Tuple[int, int]], cols: List[Tuple[int, int]]) -> np.ndarray:
    if len(rows) == 1 and len(cols) == 1:
        (r0, r1), (c0, c1) = rows[0], cols[0]
        return np.ascontiguousarray(lr_chw[None, :, r0:r1, c0:c1], dtype=np.float32)
    block = np.concatenate([lr_chw[:, r0:r1] for r0, r1 in rows], axis=1)
    block = np.concatenate([block[:, :, c0:c1] for c0, c1 in cols], axis=2)
    return np.ascontiguousarray(block[None], dtype=np.float32)


class TiledRunner(Runner):
    """Runs ``runner`` tile by tile and blends the tiles into one output.

    ``tile``: LR tile size (int or (h, w)); 0 or None runs whole images. ``overlap``: minimum LR pixels
    shared by neighbouring tiles. ``multiple_of``: tile starts are multiples of it (the model's window).
    ``scale``: the upscaling factor; None = measured from the first tile.
    """

    def __init__(self, runner: Runner, scale: Optional[int] = None, tile: Optional[TileSize] = 256,
                 overlap: int = 16, multiple_of: int = 1, blend: float = 0.25):
        if overlap < 0:
            raise TilingError(f"overlap must be >= 0, got {overlap}")
        if not 0.0 <= blend <= 1.0:
            raise ValueError(f"blend must be in [0, 1], got {blend}")
        self.runner, self.scale, self.tile, self.overlap = runner, scale, tile or None, overlap
        self.multiple_of, self.blend = max(1, int(multiple_of)), blend
        tile_txt = "x".join(map(str, (tile, tile) if isinstance(tile, int) else tile)) if tile else "none"
        self.name = f"{runner.name}+tiles{tile_txt}o{overlap}"
        self.precision, self.device = runner.precision, runner.device
        self.runtime = getattr(runner, "runtime", "")  # duck-typed runners need not say

    def plan(self, h: int, w: int) -> List[Tile]:
        if self.tile is None:
            sc = self.scale or 1
            return [Tile([(0, h)], [(0, w)], np.ones(h * sc, np.float32), np.ones(w * sc, np.float32))]
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

    def ensure_scale(self, lr_chw: np.ndarray) -> int:
        if self.scale is None:  # foreign model: measure it on a small patch
            h, w = min(lr_chw.shape[1], 16), min(lr_chw.shape[2], 16)
            probe = self.runner.infer(np.ascontiguousarray(lr_chw[None, :, :h, :w]))
            self.scale = probe.shape[2] // h
        return self.scale

    def infer_into(self, lr_chw: np.ndarray, out: Optional[np.ndarray] = None,
                   progress: Optional[Callable[[int], None]] = None) -> np.ndarray:
        """Upscale one CHW image into ``out`` (C, s*H, s*W) float32, allocated when not given."""
        c, h, w = lr_chw.shape
        s = self.ensure_scale(lr_chw)
        if out is None:
            out = np.empty((c, s * h, s * w), np.float32)
        elif out.shape != (c, s * h, s * w):
            raise ValueError(f"output buffer has shape {out.shape}, expected {(c, s * h, s * w)}")

        def sink(r0: int, block: np.ndarray) -> None:
            out[:, r0:r0 + block.shape[1]] = block

        self.infer_rows(lr_chw, sink, progress)
        return out

    def infer_rows(self, lr_chw: np.ndarray, sink: Callable[[int, np.ndarray], None],
                   progress: Optional[Callable[[int], None]] = None) -> None:
        """Upscale one CHW image, handing finished output rows to ``sink(first_row, block)`` strictly top to
        bottom, each row once (block: float32 (C, rows, s*W)).

        Memory is bounded by the tile rows, not the image height: tiles are run one row of tiles at a time and
        rows are handed over as soon as no later tile touches them. Rows of tiles that wrap around the bottom
        border (the cyclic layout, module doc) run first, so the top rows can be released early; their share of
        the bottom rows is kept until the end (at most one tile row)."""
        c, h, w = lr_chw.shape
        s = self.ensure_scale(lr_chw)
        ys, wys, xs, wxs = self._axes(h, w, s)
        order = [i for i, a in enumerate(ys) if a.head] + [i for i, a in enumerate(ys) if not a.head]
        last_step = np.zeros(s * h, np.int64)  # the processing step after which each output row is final
        for step, i in enumerate(order):
            for r0, r1 in ys[i].segments():
                last_step[s * r0:s * r1] = step
        pending: List[Tuple[int, np.ndarray]] = []  # (first output row, accumulated block)
        emitted = 0
        for step, i in enumerate(order):
            pending += self._row_of_tiles(lr_chw, ys[i], wys[i], xs, wxs, s, progress)
            end = emitted
            while end < s * h and last_step[end] <= step:
                end += 1
            if end > emitted:
                block = np.zeros((c, end - emitted, s * w), np.float32)
                for r0, acc in pending:
                    lo, hi = max(r0, emitted), min(r0 + acc.shape[1], end)
                    if lo < hi:
                        block[:, lo - emitted:hi - emitted] += acc[:, lo - r0:hi - r0]
                sink(emitted, block)
                emitted = end
                pending = [(r0, acc) for r0, acc in pending if r0 + acc.shape[1] > emitted]

    def infer_tiles(self, lr_chw: np.ndarray, add: Callable[[int, int, np.ndarray], None],
                    progress: Optional[Callable[[int], None]] = None) -> None:
        """Run every tile and hand its weighted output to ``add(first_row, first_col, block)`` (block: float32
        (C, rows, cols), split at the wrap-around so it lands on one rectangle of the output). The blocks sum to
        the tiled output in any order: a caller that keeps the sum elsewhere (a file) needs one tile of memory."""
        c, h, w = lr_chw.shape
        s = self.ensure_scale(lr_chw)
        ys, wys, xs, wxs = self._axes(h, w, s)
        for ay, wy in zip(ys, wys):
            for r0, c0, block in self._tile_outputs(lr_chw, ay, wy, xs, wxs, s, progress):
                add(r0, c0, block)

    def _axes(self, h: int, w: int, s: int):
        if self.tile is None:
            return [Arc(0, h, h)], [np.ones(s * h, np.float32)], [Arc(0, w, w)], [np.ones(s * w, np.float32)]
        th, tw = (self.tile, self.tile) if isinstance(self.tile, int) else self.tile
        ys, xs = axis_arcs(h, th, self.overlap, self.multiple_of), axis_arcs(w, tw, self.overlap, self.multiple_of)
        return ys, axis_weights(ys, s, self.blend), xs, axis_weights(xs, s, self.blend)

    def _row_of_tiles(self, lr_chw: np.ndarray, ay: Arc, wy: np.ndarray, xs: Sequence[Arc],
                      wxs: Sequence[np.ndarray], s: int, progress) -> List[Tuple[int, np.ndarray]]:
        """The weighted output of one row of tiles, as (first output row, block) per row segment of the arc."""
        c, _, w = lr_chw.shape
        rows = ay.segments()
        blocks = {s * r0: np.zeros((c, s * (r1 - r0), s * w), np.float32) for r0, r1 in rows}
        for r0, c0, part in self._tile_outputs(lr_chw, ay, wy, xs, wxs, s, progress):
            blocks[r0][:, :, c0:c0 + part.shape[2]] += part
        return sorted(blocks.items())

    def _tile_outputs(self, lr_chw: np.ndarray, ay: Arc, wy: np.ndarray, xs: Sequence[Arc],
                      wxs: Sequence[np.ndarray], s: int, progress):
        """(first output row, first output col, weighted block) for each tile of one row of tiles, each tile
        split back into the rectangles its stacked (wrapped) segments came from."""
        c = lr_chw.shape[0]
        rows = ay.segments()
        th = sum(b - a for a, b in rows)
        for ax, wx in zip(xs, wxs):
            cols = ax.segments()
            tw = sum(b - a for a, b in cols)
            y = self.runner.infer(_gather(lr_chw, rows, cols))
            if y.shape != (1, c, s * th, s * tw):
                raise ValueError(f"{self.runner.name} returned shape {y.shape} for a tile needing "
                                 f"{(1, c, s * th, s * tw)}: is the scale {s} right?")
            weighted = y[0] * (wy[:, None] * wx[None, :])
            p = 0
            for r0, r1 in rows:  # scatter each stacked block back to where it came from
                q = 0
                for c0, c1 in cols:
                    yield s * r0, s * c0, weighted[:, s * p:s * (p + r1 - r0), s * q:s * (q + c1 - c0)]
                    q += c1 - c0
                p += r1 - r0
            if progress is not None:
                progress(1)


class ProfileFitRunner(Runner):
    """Fits any input into a fixed shape range (a TensorRT optimization profile): batches above
    ``max_batch`` are split, sides above ``max_hw`` are tiled, sides below ``min_hw`` are padded
    (symmetric reflection) and the output cropped. Inputs inside the range go straight through."""

    def __init__(self, runner: Runner, scale: int, min_hw: Tuple[int, int], max_hw: Tuple[int, int],
                 max_batch: int = 1, multiple_of: int = 1, overlap: int = 16):
        self.runner, self.scale = runner, scale
        self.min_hw, self.max_hw, self.max_batch = tuple(min_hw), tuple(max_hw), max(1, max_batch)
        self.name, self.precision, self.device = runner.name, runner.precision, runner.device
        self.runtime = getattr(runner, "runtime", "")
        tile = (_align_down(self.max_hw[0], multiple_of) or self.max_hw[0],
                _align_down(self.max_hw[1], multiple_of) or self.max_hw[1])
        self._tiled = TiledRunner(PadToMin(runner, scale, self.min_hw), scale, tile, overlap, multiple_of)
        self._padded = self._tiled.runner

    def infer(self, lr: np.ndarray) -> np.ndarray:
        if lr.shape[0] > self.max_batch:
            return np.concatenate([self.infer(lr[i:i + self.max_batch])
                                   for i in range(0, lr.shape[0], self.max_batch)])
        h, w = lr.shape[2:]
        if h > self.max_hw[0] or w > self.max_hw[1]:
            return self._tiled.infer(lr)
        return self._padded.infer(lr)


class PadToMin(Runner):
    """Pads inputs below ``min_hw`` (symmetric reflection, any amount) and crops the output: models whose
    graph cannot take tiny inputs (reflect padding to the window needs pad < size) still upscale them."""

    def __init__(self, runner: Runner, scale: int, min_hw: Tuple[int, int]):
        self.runner, self.scale, self.min_hw = runner, scale, min_hw
        self.name, self.precision, self.device = runner.name, runner.precision, runner.device
        self.runtime = getattr(runner, "runtime", "")

    def infer(self, lr: np.ndarray) -> np.ndarray:
        h, w = lr.shape[2:]
        ph, pw = max(0, self.min_hw[0] - h), max(0, self.min_hw[1] - w)
        if not ph and not pw:
            return self.runner.infer(lr)
        padded = np.pad(lr, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="symmetric")
        return np.ascontiguousarray(self.runner.infer(padded)[:, :, :self.scale * h, :self.scale * w])
