"""LIPT (Latency-aware Image Processing Transformer; Qiao et al., arXiv 2404.06075 / IEEE TIP 2025).

Training graph as the official code (Lucien66/LIPT): ELAN-style skeleton, LIPT blocks of
(HRM_a, HRM_c, NVSM-SA, HRM_b) units, HRM 3x3 convs as 6-branch re-parameterizable blocks
(:mod:`lipt_export.models.hrm`), NVSM-SA with the fixed sparse permutation (:mod:`lipt_export.models.nvsm`).
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

from lipt_export.models.common import MeanShift
from lipt_export.models.hrm import HRM, RepConv3x3, bn_affine
from lipt_export.models.nvsm import NVSMAttention, WindowIndex
from lipt_export.models.registry import ModelError, ModelSpec, register

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

VARIANTS = ("tiny", "small", "base")
SCALES = (1, 2, 3, 4)


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


# -- deterministic test initialisation -----------------------------------------------------------------------

Q_NORM2_TARGET = 4.0  # mean per-token |q|^2 after init: logits q_i.q_j of a few units, softmax far from argmax
HRM_GAIN = 0.25  # each HRM / attention residual adds ~25% of the stream's std
TAIL_STD = 30.0  # output detail amplitude in 0..255 units


def _calibration_image(seed: int, size: int) -> torch.Tensor:
    """A smooth natural-looking 0..255 RGB image (low-frequency noise + gradient + edges), from the seed."""
    g = torch.Generator().manual_seed(10_000 + seed)
    coarse = torch.rand(1, 3, max(2, size // 6), max(2, size // 6), generator=g)
    img = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    img = 0.6 * img + 0.2 * (xx + yy)[None, None] / 2 + 0.2 * (torch.sin(17 * xx + 9 * yy) > 0).float()
    return (img.clamp(0, 1) * RGB_RANGE).float()


@torch.no_grad()
def init_lipt_for_tests(model: LIPT, seed: int = 0) -> LIPT:
    """Deterministic, non-degenerate weights for tests and demo exports (in place; returns the model).

    Why not the default init: LIPT's attention logits q.q^T are unscaled. With PyTorch's default init on
    0..255 inputs the per-token |q|^2 reaches ~2e5, so every softmax is a hard argmax that flips on 1e-6
    perturbations: fp64 and fp32 of the *same* network disagree, and parity measures chaos, not the export.

    What this does (seeded, so the same seed gives the same weights):
    1. Random draws for everything trainable: conv kernels ~ N(0, 1/fan_in), conv biases ~ N(0, 0.1^2);
       BatchNorm statistics random and non-trivial (running_mean ~ N(0, 0.2^2), running_var ~ U(0.5, 2),
       gamma ~ U(0.5, 1.5), beta ~ N(0, 0.1^2)) so every fusion rule is exercised; identity-conv W ~
       N(0, 0.1^2 / C) (so W + I is not I); Sobel scale ~ N(0, 0.3^2) and bias ~ N(0, 0.05^2) (the official
       1e-3 would make those branches invisible).
    2. One calibration pass (eval mode, LSUV-style) on a synthetic smooth 0..255 image derived from the
       seed, rescaling exactly (by a scalar on the last affine op, which keeps the graph's structure): the
       head to unit-std features; each HRM and attention output to HRM_GAIN x its input's std; the query
       channels of every attention unit 0 to a mean per-token |q|^2 of Q_NORM2_TARGET (~4, so logits are a
       few units and the softmax is smooth on natural images); the tail to a TAIL_STD output amplitude.
    Works on the training form (scales BN gamma/beta) and on a ``deploy=True`` model (scales the fused
    weights); the model's device and dtype are kept.
    """
    if not isinstance(model, LIPT):
        raise TypeError(f"init_lipt_for_tests expects a LIPT model, got {type(model).__name__}")
    g = torch.Generator().manual_seed(seed)
    param = next(model.parameters())
    device, dtype = param.device, param.dtype

    def draw(shape, std=1.0, mean=0.0):
        return (torch.randn(shape, generator=g, dtype=torch.float64) * std + mean).to(device, dtype)

    def uniform(shape, lo, hi):
        return (lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float64)).to(device, dtype)

    frozen = {id(model.sub_mean), id(model.add_mean)}
    for name, m in model.named_modules():
        if id(m) in frozen:
            continue
        if isinstance(m, nn.Conv2d):
            fan_in = m.weight[0].numel()
            m.weight.copy_(draw(m.weight.shape, fan_in ** -0.5))
            if m.bias is not None:
                m.bias.copy_(draw(m.bias.shape, 0.1))
        elif isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(draw(m.running_mean.shape, 0.2))
            m.running_var.copy_(uniform(m.running_var.shape, 0.5, 2.0))
            m.weight.copy_(uniform(m.weight.shape, 0.5, 1.5))
            m.bias.copy_(draw(m.bias.shape, 0.1))
        elif isinstance(m, RepConv3x3):
            if m.deploy:
                m.weight.copy_(draw(m.weight.shape, (9 * m.in_channels) ** -0.5))
                m.bias.copy_(draw(m.bias.shape, 0.1))
            else:
                idc = m.dbb_1x1_kxk.idconv1
                idc.weight.copy_(draw(idc.weight.shape, 0.1 * m.in_channels ** -0.5))
                for sob in (m.dbb_sobelx, m.dbb_sobely):
                    sob.k0.copy_(draw(sob.k0.shape, m.in_channels ** -0.5))
                    sob.b0.copy_(draw(sob.b0.shape, 0.1))
                    sob.scale.copy_(draw(sob.scale.shape, 0.3))
                    sob.bias.copy_(draw(sob.bias.shape, 0.05))
    _calibrate(model, _calibration_image(seed, 32).to(device, dtype))
    return model


def _std(t: torch.Tensor) -> float:
    return float(t.double().std().clamp_min(1e-12))


def _calibrate(model: LIPT, image: torch.Tensor) -> None:
    handles = []

    def head_hook(mod, inp, out):
        f = 1.0 / _std(out)
        mod.weight.mul_(f)
        mod.bias.mul_(f)
        return out * f

    def hrm_hook(mod, inp, out):
        f = HRM_GAIN * _std(inp[0]) / _std(out)
        mod.conv1.scale_output_(f)
        return out * f

    def make_proj_hook(att: NVSMAttention):
        def hook(mod, inp, out):
            out = out.clone()
            half = att.split // 2  # per branch: first half queries, second half values
            for start in (0, att.split):
                q = out[:, start:start + half]
                f = (Q_NORM2_TARGET / float(q.double().pow(2).sum(1).mean().clamp_min(1e-12))) ** 0.5
                att.scale_input_channels_(slice(start, start + half), f)
                out[:, start:start + half] *= f
            return out
        return hook

    def att_hook(mod, inp, out):
        y, atns = out
        f = HRM_GAIN * _std(inp[0]) / _std(y)
        mod.scale_output_(f)
        return y * f, atns

    def tail_hook(mod, inp, out):
        f = TAIL_STD / _std(out)
        mod.weight.mul_(f)
        mod.bias.mul_(f)
        return out * f

    handles.append(model.head[0].register_forward_hook(head_hook))
    handles.append(model.tail[0].register_forward_hook(tail_hook))
    for m in model.modules():
        if isinstance(m, HRM):
            handles.append(m.register_forward_hook(hrm_hook))
        elif isinstance(m, NVSMAttention):
            handles.append(m.register_forward_hook(att_hook))
            if m.calc_attn:
                handles.append(m.project_inp.register_forward_hook(make_proj_hook(m)))
    was_training = model.training
    model.eval()
    try:
        model(image)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


register(ModelSpec(
    name="lipt",
    build=build_lipt,
    variants=VARIANTS,
    scales=SCALES,
    default_variant="small",
    rgb_range=RGB_RANGE,
    description="LIPT: Latency-aware Image Processing Transformer (HRM re-param convs + NVSM sparse attention)",
    size_multiple=lambda variant: lipt_config(variant, 2).window,
    # Reflect padding needs pad < size: pad <= window - 1 and, for size < window, pad = window - size < size
    # iff size > window / 2; 9 satisfies both for windows 8 and 16.
    min_size=9,
    recommended_tile=256,
    init_for_tests=init_lipt_for_tests,
    remap_checkpoint_keys=remap_lipt_keys,
    extra={"window": {v: lipt_config(v, 2).window for v in VARIANTS}},
))
