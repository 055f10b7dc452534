"""Runners: one small interface over every way of executing a model.

``runner.infer(lr) -> sr`` on float32 NCHW arrays in the artifact I/O contract ([0, 1] RGB), plus
``name``, ``precision`` and ``device``. Validation, evaluation, tiling and benchmarks all take runners, so
eager PyTorch and every artifact go through one code path.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np


class Runner:
    name: str = "runner"
    precision: str = "fp32"
    device: str = "cpu"

    def infer(self, lr: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, precision={self.precision!r}, device={self.device!r})"


class TorchRunner(Runner):
    """Eager PyTorch. ``dtype=torch.float64`` runs the reference in double precision."""

    def __init__(self, module, name: str = "eager", precision: str = "fp32", device: str = "cpu", dtype=None):
        import torch  # lazily: ONNX-only serving processes need not pay torch's import and memory

        dtype = dtype or torch.float32
        self.module = module.to(device=device, dtype=dtype).eval()
        self.name, self.precision, self.device, self.dtype = name, precision, device, dtype

    def infer(self, lr: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(lr)).to(device=self.device, dtype=self.dtype)
        with torch.inference_mode():
            y = self.module(x)
        # PixelShuffle outputs are not contiguous; callers (polygraphy included) need contiguous arrays.
        return np.ascontiguousarray(y.float().cpu().numpy())


def default_threads() -> int:
    return int(os.environ.get("LIPT_EXPORT_THREADS", "0")) or min(os.cpu_count() or 1, 8)


class OnnxRuntimeRunner(Runner):
    """ONNX Runtime session on the best available provider (CPU unless onnxruntime-gpu is installed)."""

    def __init__(self, path: str | Path, name: Optional[str] = None, precision: str = "fp32",
                 providers: Optional[Sequence[str]] = None, threads: Optional[int] = None):
        import onnxruntime as ort

        self.path = Path(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or default_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=list(providers))
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.input_dtype = np.float16 if "float16" in self.session.get_inputs()[0].type else np.float32
        self.name = name or self.path.name
        self.precision = precision
        self.device = "cuda" if self.session.get_providers()[0] != "CPUExecutionProvider" else "cpu"

    def infer(self, lr: np.ndarray) -> np.ndarray:
        feed = {self.input_name: np.ascontiguousarray(lr, dtype=self.input_dtype)}
        (out,) = self.session.run([self.output_name], feed)
        return np.asarray(out, dtype=np.float32)
