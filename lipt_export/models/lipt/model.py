"""LIPT (Latency-aware Image Processing Transformer; Qiao et al., arXiv 2404.06075 / IEEE TIP 2025).

Training graph as the official code (Lucien66/LIPT): ELAN-style skeleton, LIPT blocks of
(HRM_a, HRM_c, NVSM-SA, HRM_b) units, HRM 3x3 convs as 6-branch re-parameterizable blocks
(:mod:`lipt_export.models.lipt.hrm`), NVSM-SA with the fixed sparse permutation (:mod:`lipt_export.models.lipt.nvsm`).
State-dict keys match the official ``LIPT`` model in both forms, so official checkpoints (training form,
``deploy=True`` form, or the output of the official ``convert.py``) load unchanged.

Native range 0..255 in and out. Any H, W: reflect-padded to the window multiple inside, output cropped.
Variant table and the reasoning behind it: docs/models.md ("LIPT").
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from lipt_export.catalog import FAMILIES
from lipt_export.errors import ModelError
from lipt_export.models.layers import MeanShift, bn_affine
from lipt_export.models.lipt.hrm import HRM
from lipt_export.models.lipt.nvsm import NVSMAttention, WindowIndex

RGB_RANGE = 255.0


@dataclass(frozen=True)
class LIPTConfig:
    m_elan: int  # units in the body; blocks = m_elan // (1 + n_share)
    channels: int
    n_share: int  # units per block that reuse the first unit's attention maps
    window: int
    r_expand: int = 1

    @property
    def blocks(self) -> int:
        return self.m_elan // (1 + self.n_share)


# tiny = config/tinyx2.yml; small = config/lightx2.yml (x1, x2) and 6 blocks for x3/x4 (fits the paper's
# 2.80/2.81 M); base = config/basex2.yml. See docs/models.md for why.
_TINY = LIPTConfig(m_elan=8, channels=24, n_share=1, window=8)
_SMALL = LIPTConfig(m_elan=10, channels=64, n_share=1, window=8)
_SMALL_6 = LIPTConfig(m_elan=12, channels=64, n_share=1, window=8)
_BASE = LIPTConfig(m_elan=22, channels=144, n_share=0, window=16)

VARIANTS = FAMILIES["lipt"].variants
SCALES = FAMILIES["lipt"].scales


def lipt_config(variant: str, scale: int) -> LIPTConfig:
    if variant == "tiny":
        return _TINY
    if variant == "small":
        return _SMALL_6 if scale in (3, 4) else _SMALL
    if variant == "base":
        return _BASE
    raise ModelError(f"LIPT has no variant '{variant}'; choose one of: {', '.join(VARIANTS)}")




class LIPTBlock(nn.Module):
    """(1 + n_share) units of x += HRM_a(x); x += HRM_c(x); x += NVSM(x, A); x += HRM_b(x).
    Unit 0 computes the attention maps A, later units reuse them (ELAN-style shared attention)."""

    def __init__(self, channels: int, exp_ratio: int, shift: bool, window_sizes, shared_depth: int,
                 deploy: bool = False):
        super().__init__()
        self.shared_depth = shared_depth
        units = range(1 + shared_depth)
        self.modules_hrm_a = nn.ModuleDict({f"lcs_a_{j}": HRM(channels, exp_ratio, deploy) for j in units})
        self.modules_hrm_c = nn.ModuleDict({f"lcs_c_{j}": HRM(channels, exp_ratio, deploy) for j in units})
        self.modules_nvsm_sa = nn.ModuleDict({
            f"smmsa_{j}": NVSMAttention(channels, shift, window_sizes, calc_attn=(j == 0), deploy=deploy)
            for j in units})
        self.modules_hrm_b = nn.ModuleDict({f"lcs_b_{j}": HRM(channels, exp_ratio, deploy) for j in units})

    def forward(self, x: torch.Tensor, index: Optional[WindowIndex] = None) -> torch.Tensor:
        """``index``: the block's NVSM gather indices, shared by its units (built from x when absent)."""
        atns = None
        for j in range(1 + self.shared_depth):
            x = self.modules_hrm_a[f"lcs_a_{j}"](x) + x
            x = self.modules_hrm_c[f"lcs_c_{j}"](x) + x
            y, atns = self.modules_nvsm_sa[f"smmsa_{j}"](x, atns, index)
            x = y + x
            x = self.modules_hrm_b[f"lcs_b_{j}"](x) + x
        return x


class LIPT(nn.Module):
    """The full network. ``deploy=True`` builds the fused graph directly (for deploy checkpoints)."""

    def __init__(self, config: LIPTConfig, scale: int, deploy: bool = False, colors: int = 3,
                 rgb_range: float = RGB_RANGE):
        super().__init__()
        if scale not in SCALES:
            raise ModelError(f"LIPT supports scales {', '.join(map(str, SCALES))}, not {scale}")
        self.config, self.scale = config, scale
        self.window = config.window  # lcm of the two branch windows (equal in every config)
        c = config.channels
        self.sub_mean = MeanShift(rgb_range, -1)
        self.add_mean = MeanShift(rgb_range, +1)
        self.head = nn.Sequential(nn.Conv2d(colors, c, 3, padding=1))
        self.body = nn.Sequential(*[
            LIPTBlock(c, config.r_expand, shift=(i % 2 == 1), window_sizes=(config.window, config.window),
                      shared_depth=config.n_share, deploy=deploy)
            for i in range(config.blocks)])
        if scale == 1:  # restoration (denoising / JPEG) variants: no upsampler
            self.tail = nn.Sequential(nn.Conv2d(c, colors, 3, padding=1))
        else:
            self.tail = nn.Sequential(nn.Conv2d(c, colors * scale * scale, 3, padding=1), nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        pad_h = (self.window - h % self.window) % self.window
        pad_w = (self.window - w % self.window) % self.window
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        # NVSM gather indices, once per forward for each shift (from the padded input's shape, not a feature map's)
        indices = {}
        for block in self.body:
            unit = block.modules_nvsm_sa["smmsa_0"]
            if unit.shift not in indices and unit.window_sizes[0] == unit.window_sizes[1]:
                indices[unit.shift] = unit.window_index(x.shape[2], x.shape[3])
        x = self.head(self.sub_mean(x))
        y = x
        for block in self.body:
            y = block(y, indices.get(block.modules_nvsm_sa["smmsa_0"].shift))
        x = y + x
        x = self.add_mean(self.tail(x))
        return x[:, :, : h * self.scale, : w * self.scale]


def build_lipt(variant: str, scale: int, deploy: bool = False) -> LIPT:
    return LIPT(lipt_config(variant, scale), scale, deploy=deploy)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# -- checkpoint layouts ------------------------------------------------------------------------------------

_DBB_REPARAM = re.compile(r"\.dbb_reparam\.(weight|bias)$")
_PROJ_CONV = re.compile(r"^(.*\.project_inp)\.0\.weight$")


def remap_lipt_keys(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Map the official convert.py output onto our deploy layout.

    convert.py fuses only the DBBs, storing ``...conv0.dbb_reparam.{weight,bias}``, and leaves the BN after
    ``project_inp`` unfused (``project_inp.0`` conv + ``project_inp.1`` BN). A checkpoint whose HRM convs
    are fused (no ``dbb_origin`` keys) gets ``.dbb_reparam`` stripped and every project_inp conv+BN folded
    into ``project_inp.{weight,bias}``. Training-form and already-deploy-form checkpoints pass unchanged.
    """
    sd = {_DBB_REPARAM.sub(r".\1", k): v for k, v in sd.items()}
    if any(".dbb_origin." in k for k in sd):
        return sd
    out = dict(sd)
    for key in sd:
        m = _PROJ_CONV.match(key)
        if not m or f"{m.group(1)}.1.running_var" not in sd:
            continue
        p = m.group(1)
        weight = sd[f"{p}.0.weight"].double()
        bias = sd[f"{p}.0.bias"].double() if f"{p}.0.bias" in sd else torch.zeros(weight.shape[0],
                                                                                     dtype=torch.float64)
        bn = nn.BatchNorm2d(weight.shape[0]).double()
        bn.load_state_dict({n: sd[f"{p}.1.{n}"] for n in ("weight", "bias", "running_mean", "running_var",
                                                          "num_batches_tracked") if f"{p}.1.{n}" in sd},
                           strict=False)
        a, c = bn_affine(bn)
        for n in [k for k in sd if k.startswith(f"{p}.0.") or k.startswith(f"{p}.1.")]:
            out.pop(n, None)
        dtype = sd[key].dtype
        out[f"{p}.weight"] = (weight * a.view(-1, 1, 1, 1)).detach().to(dtype)
        out[f"{p}.bias"] = (bias * a + c).detach().to(dtype)
    return out
