"""The artifact I/O contract, applied around a native model.

Input ``lr``: float32 NCHW RGB in [0, 1]. Output ``sr``: float32 NCHW RGB on the [0, 1] scale, not clamped
(clamping is the caller's choice; unclamped outputs keep parity checks honest).
"""
from __future__ import annotations

import torch
import torch.nn as nn


class UnitRangeIO(nn.Module):
    """Wraps a model that works in [0, rgb_range] so the exported graph works in [0, 1]."""

    def __init__(self, model: nn.Module, rgb_range: float):
        super().__init__()
        self.model = model
        self.rgb_range = float(rgb_range)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        if self.rgb_range == 1.0:
            return self.model(lr)
        return self.model(lr * self.rgb_range) / self.rgb_range
