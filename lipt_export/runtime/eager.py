"""Eager PyTorch as a runner (the reference every artifact is compared with)."""
from __future__ import annotations

import numpy as np

from lipt_export.runtime.base import Runner


class TorchRunner(Runner):
    """Eager PyTorch. ``dtype=torch.float64`` runs the reference in double precision."""

    def __init__(self, module, name: str = "eager", precision: str = "fp32", device: str = "cpu", dtype=None):
        import torch  # deferred: ONNX-only serving processes need not pay torch's import and memory

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
