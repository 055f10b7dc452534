"""Small networks for the precision tests (FP16 guard, INT8, lint), plus a folder of synthetic images.

``AttnSR`` mimics LIPT's risky part: features in the 0..255 range and unscaled shared-q/k window
attention, so the logits q.q^T reach ~1e5-1e6 (> FP16's 65504) on natural inputs. The logits pass through
a multi-head style reshape before the softmax, as in real attention blocks.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class AttnSR(nn.Module):
    def __init__(self, channels: int = 16, window: int = 8, scale: int = 2, logit_gain: float = 3.0):
        super().__init__()
        self.window, self.scale = window, scale
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.qk = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        self.tail = nn.Conv2d(channels, 3 * scale * scale, 3, padding=1)
        self.up = nn.PixelShuffle(scale)
        with torch.no_grad():
            self.qk.weight.mul_(logit_gain)

    def forward(self, x):
        H, W = x.shape[2], x.shape[3]
        ws = self.window
        xp = F.pad(x, (0, (-W) % ws, 0, (-H) % ws), mode="reflect")
        f = self.head(xp * 255.0)
        b, c, h, w = f.shape
        n = ws * ws

        def windows(t):
            return t.view(b, c, h // ws, ws, w // ws, ws).permute(0, 2, 4, 3, 5, 1).reshape(-1, n, c)

        q, v = windows(self.qk(f)), windows(self.v(f))
        logits = (q @ q.transpose(1, 2)).transpose(1, 2).reshape(b, -1, n, n)
        attn = logits.softmax(-1).reshape(-1, n, n)
        o = (attn @ v).view(b, h // ws, w // ws, ws, ws, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)
        f = f + self.proj(o)
        out = self.up(self.tail(f))[:, :, :H * self.scale, :W * self.scale] / 255.0
        return out + F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)


class ConvSR(nn.Module):
    """A plain residual conv SR net (what INT8 quantizes best)."""

    def __init__(self, channels: int = 16, scale: int = 2):
        super().__init__()
        self.scale = scale
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 3, padding=1))
        self.tail = nn.Conv2d(channels, 3 * scale * scale, 3, padding=1)
        self.up = nn.PixelShuffle(scale)

    def forward(self, x):
        f = self.head(x)
        f = f + self.body(f)
        return self.up(self.tail(f)) + F.interpolate(x, scale_factor=self.scale, mode="bilinear",
                                                     align_corners=False)


def fit_identity_sr(model: nn.Module, steps: int = 60, seed: int = 0) -> nn.Module:
    """A few Adam steps towards bilinear-upscaling-plus-detail targets so weights are not random noise
    (deterministic; ~1 s on CPU at 24x24)."""
    from lipt_export.validation.inputs import synthetic_image

    torch.manual_seed(seed)
    hr = torch.stack([torch.from_numpy(synthetic_image(48, 48, seed + k)).permute(2, 0, 1) for k in range(4)])
    lr = F.interpolate(hr, scale_factor=0.5, mode="bicubic", align_corners=False, antialias=True)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(steps):
        opt.zero_grad()
        loss = F.l1_loss(model(lr), hr)
        loss.backward()
        opt.step()
    return model.eval()


def synthetic_image_folder(folder: Path, count: int = 5, size: int = 96, seed: int = 0) -> Path:
    """PNG images (smooth noise + gradients + edges) for calibration without ../shared."""
    from PIL import Image

    from lipt_export.validation.inputs import synthetic_image

    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        img = (synthetic_image(size, size + 16 * k, seed * 100 + k) * 255).round().astype(np.uint8)
        Image.fromarray(img).save(folder / f"img_{k:03d}.png")
    return folder
