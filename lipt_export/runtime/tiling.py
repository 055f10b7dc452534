"""Tiled inference for any image size, with memory bounded by the tile rows (not the image height).

The layout, the blending and the policy (:class:`~lipt_export.tiling.TilingPolicy`) live in
:mod:`lipt_export.tiling`: data and arithmetic; this module runs a model with them.

Memory. :meth:`TiledRunner.infer_rows` runs one row of tiles at a time and hands finished output rows to a
sink, so working memory is about three rows of tiles of output (tile rows x output width), never the whole
output; :meth:`TiledRunner.infer_into` collects them into one array for callers that want it.
:meth:`TiledRunner.infer_tiles` hands over each weighted tile instead, for a caller that keeps the sum elsewhere
(``upscale``: a temporary file, so memory is one tile whatever the output size).
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from lipt_export.errors import TilingError
from lipt_export.runtime.base import Runner
from lipt_export.tiling import (BASE_OVERLAP, RECOMMENDED_TILE, Arc, Tile, TileSize, TilingPolicy, align_down,
                                axis_arcs, axis_weights, plan_tiles)


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

    def __init__(self, runner: Runner, scale: Optional[int] = None, tile: Optional[TileSize] = RECOMMENDED_TILE,
                 overlap: int = BASE_OVERLAP, multiple_of: int = 1, blend: float = 0.25):
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
                 max_batch: int = 1, multiple_of: int = 1, overlap: int = BASE_OVERLAP):
        self.runner, self.scale = runner, scale
        self.min_hw, self.max_hw, self.max_batch = tuple(min_hw), tuple(max_hw), max(1, max_batch)
        self.name, self.precision, self.device = runner.name, runner.precision, runner.device
        self.runtime = getattr(runner, "runtime", "")
        tile = (align_down(self.max_hw[0], multiple_of) or self.max_hw[0],
                align_down(self.max_hw[1], multiple_of) or self.max_hw[1])
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


def tiled(runner: Runner, policy: TilingPolicy, scale: Optional[int], tile: Optional[int] = None,
          overlap: Optional[int] = None, default_tile: Optional[int] = None) -> Runner:
    """``runner`` tiled as ``policy`` resolves ``tile``/``overlap`` (itself when whole images are resolved)."""
    size, ov = policy.resolve(tile, overlap, default_tile)
    return runner if size is None else TiledRunner(runner, scale, size, ov, policy.multiple_of)
