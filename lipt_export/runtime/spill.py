"""A tiled output summed in a temporary file, so upscaling any image needs one tile of memory for the output.

:meth:`TiledRunner.infer_tiles` hands over weighted tiles in any order; :class:`SpilledSum` adds each into a
float32 (H, W, C) file with ``pread``/``pwrite`` (page cache, not the process's memory), then :meth:`rows`
reads finished row blocks back for the encoder. The file lives beside the output (never in a RAM-backed
``/tmp``), is unlinked from the start, and is gone when closed or when the process dies.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Optional, Tuple

import numpy as np

# Output rows handed to the encoder at a time: 1 MiB of float32 per block at most, at least one row.
ROW_BLOCK_BYTES = 1 << 20


class SpilledSum:
    def __init__(self, folder: Path, channels: int, height: int, width: int):
        self.c, self.h, self.w = channels, height, width
        self.file = tempfile.TemporaryFile(prefix=".lipt-spill-", dir=str(folder))
        self.fd = self.file.fileno()
        os.ftruncate(self.fd, 4 * channels * height * width)  # sparse: reads as zeros

    def add(self, r0: int, c0: int, block: np.ndarray) -> None:
        """Add a (C, rows, cols) block at (r0, c0), row by row (each output row is contiguous in the file)."""
        hwc = np.ascontiguousarray(np.moveaxis(block, 0, -1), dtype=np.float32)
        nbytes = hwc.shape[1] * self.c * 4
        for i in range(hwc.shape[0]):
            offset = ((r0 + i) * self.w + c0) * self.c * 4
            current = np.frombuffer(os.pread(self.fd, nbytes, offset), np.float32)
            os.pwrite(self.fd, (current + hwc[i].ravel()).tobytes(), offset)

    def rows(self) -> Iterator[Tuple[int, np.ndarray]]:
        """(first row, float32 (C, rows, W)) blocks from top to bottom."""
        step = max(1, ROW_BLOCK_BYTES // (self.w * self.c * 4))
        for r0 in range(0, self.h, step):
            n = min(step, self.h - r0)
            data = os.pread(self.fd, n * self.w * self.c * 4, r0 * self.w * self.c * 4)
            yield r0, np.moveaxis(np.frombuffer(data, np.float32).reshape(n, self.w, self.c), -1, 0)

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "SpilledSum":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def infer_rows_spilled(runner, lr_chw, sink: Callable[[int, np.ndarray], None], folder: Path,
                       progress: Optional[Callable[[int], None]] = None) -> None:
    """Like :meth:`TiledRunner.infer_rows` (finished rows to ``sink`` top to bottom), with the sum kept in a
    temporary file in ``folder``: memory is one tile plus one row block, whatever the image size."""
    c, h, w = lr_chw.shape
    s = runner.ensure_scale(lr_chw)
    with SpilledSum(Path(folder), c, s * h, s * w) as acc:
        runner.infer_tiles(lr_chw, acc.add, progress)
        for r0, block in acc.rows():
            sink(r0, block)
