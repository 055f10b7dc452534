"""The runner interface: one small protocol over every way of executing a model.

``runner.infer(lr) -> sr`` on float32 NCHW arrays in the artifact I/O contract ([0, 1] RGB), plus
``name``, ``precision`` and ``device``. Validation, evaluation, tiling and benchmarks all take runners, so
eager PyTorch and every artifact go through one code path.
"""
from __future__ import annotations

import os

import numpy as np


class Runner:
    name: str = "runner"
    precision: str = "fp32"
    device: str = "cpu"
    runtime: str = ""  # what executes it, e.g. "onnxruntime", "openvino-f32(asked bf16)"

    def infer(self, lr: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, precision={self.precision!r}, device={self.device!r})"


def default_threads() -> int:
    """Intra-op threads for every runtime: $LIPT_EXPORT_THREADS, else all cores up to 8."""
    return int(os.environ.get("LIPT_EXPORT_THREADS", "0")) or min(os.cpu_count() or 1, 8)
