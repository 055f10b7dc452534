"""The one tiling policy and its arithmetic: whether and how a model is tiled, and where tiles go.

This is data and arithmetic only (no runner): the manifest's ``io.tiling`` is a :class:`TilingPolicy`, and
:mod:`lipt_export.runtime.tiling` runs models tile by tile with it. It is also vendored, verbatim, into the Triton
BLS model that tiles inside the server (``lipt-export triton --tiled``), so it imports nothing but numpy and
``lipt_export.errors``.

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
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from lipt_export.errors import TilingError

TileSize = Union[int, Tuple[int, int]]
WINDOWS_OF_CONTEXT = 8
BASE_OVERLAP = 16  # LR pixels shared by neighbouring tiles of a model without windows
RECOMMENDED_TILE = 256  # a family's LR tile for tiled serving unless its catalog row says otherwise
# LR tile used when the caller asks for nothing (upscale, eval, serve) and the manifest states none (exports made
# before issue 26) or a family's catalog row sets none: bounds memory; images up to it run whole. Each family's
# measured default is its catalog row's ``default_tile`` (docs/benchmarks.md, "Default tile per family").
DEFAULT_TILE = 512
# pass as ``default_tile`` to mean the model's own default tile (TilingPolicy.default_tile)
POLICY_TILE = -1


@dataclass(frozen=True)
class TilingPolicy:
    """How one model is tiled (the manifest's ``io.tiling`` with ``io.size.multiple_of``). ``multiple_of``: the
    window (tile starts align to it); ``overlap``: LR pixels shared by neighbouring tiles; ``required``: whole-image
    inference is impractical (ESRT), so a tile is used unless the caller picks one; ``recommended_tile``: the tile
    used then (and the engines' profile); ``default_tile``: the tile used when nothing is asked for and tiling is
    not required (measured per family: the least memory at no cost in speed; images up to it run whole)."""

    multiple_of: int = 1
    recommended_tile: int = RECOMMENDED_TILE
    overlap: int = BASE_OVERLAP
    required: bool = False
    default_tile: int = DEFAULT_TILE

    @staticmethod
    def context_overlap(multiple_of: int, base: int = BASE_OVERLAP) -> int:
        """Windowed models see several windows away: 8 windows of overlap keeps tiled output at fp32-noise
        level (LIPT-tiny, window 8: overlap 64 gives rel-L2 5.6e-6 against whole-image inference, 96 gives
        9e-8; docs/serving.md)."""
        return max(base, WINDOWS_OF_CONTEXT * multiple_of) if multiple_of > 1 else base

    @classmethod
    def for_model(cls, multiple_of: int, recommended_tile: int, required: bool,
                  overlap: Optional[int] = None, default_tile: int = DEFAULT_TILE) -> "TilingPolicy":
        """A model's policy; an ``overlap`` read from an older manifest is raised to the context rule."""
        return cls(multiple_of, recommended_tile, cls.context_overlap(multiple_of, BASE_OVERLAP if overlap is None
                                                                      else overlap), required, default_tile)

    def resolve(self, tile: Optional[int], overlap: Optional[int], default_tile: Optional[int] = None
                ) -> Tuple[Optional[int], int]:
        """(tile or None for whole images, overlap). Explicit values win; ``tile=None`` means the recommended
        tile when tiling is required, else ``default_tile`` (None: whole images; :data:`POLICY_TILE`: this
        policy's ``default_tile``). A required tile cannot be switched off with 0."""
        if default_tile == POLICY_TILE:
            default_tile = self.default_tile
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

def align_down(v: int, m: int) -> int:
    return (v // m) * m


def align_up(v: int, m: int) -> int:
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
    room = align_down(tile - (align - 1), align)  # a wrapped head is aligned up by < align
    step = room - overlap - (align - 1)  # worst case after aligning starts down
    if room < align or step < align:
        raise TilingError(f"tile {tile} is too small for overlap {overlap} with alignment {align}: use a tile of "
                         f"at least {align_up(overlap + 2 * align - 1, align) + align - 1} pixels or a smaller overlap")
    n = math.ceil(length / step)
    size = min(room, align_up(math.ceil(length / n) + overlap + align - 1, align))
    arcs = []
    for i in range(n):
        start = align_down(round(i * length / n), align)
        head = start + size - length
        extra = align_up(head, align) - head if head > 0 else 0  # keep the tail aligned inside the tile
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


