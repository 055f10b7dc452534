"""ESRT (Lu et al., CVPRW 2022): lightweight CNN backbone (LCB) + lightweight Transformer backbone (LTB).

Same graph as the official code (luissen/ESRT @311c6b3, `model/esrt.py`, `util/transformer.py`), with the
official state-dict naming, rewritten for export:

* ``nn.Unfold`` / ``nn.Fold`` (3x3, padding 1, stride 1) are fixed one-hot grouped convolutions: Fold exports
  as ``Col2Im`` (opset >= 18), which TensorRT cannot parse. Both convs are exact (a single 1.0 tap each).
* The feature split module (FSM) splits the token sequence into chunks of ``N // 4`` tokens (torch.split
  semantics: ``N // (N // 4)`` full chunks plus a short remainder). The chunk size, the chunk count and the
  remainder are computed from the traced shape, so one ONNX file is correct for every H, W.

Native range [0, 1] (rgb_range 1; the official MeanShift lines are commented out). Any H, W >= 2 runs as in
the official model (no padding: AvgPool floors odd sizes and the bilinear upsample goes back to the exact
size, the official behaviour). EMHA memory is quadratic in H*W: see docs/models.md and run it tiled.
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from lipt_export.models.arch import fixed_arch_arguments
from lipt_export.models.demo_init import deterministic_init
from lipt_export.models.layers import ChannelAttention, Mlp
from lipt_export.models.registry import ModelSpec, catalog_facts, register

N_FEATS = 32
ET_DIM = N_FEATS * 9  # 288: a 3x3 neighbourhood of 32 channels per token
ET_HEADS = 8


class Scale(nn.Module):
    """A learnable scalar gain (official `common.Scale`, key ``scale``, shape (1,))."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([float(init_value)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class ConvAct(nn.Module):
    """Official `BasicConv` as ESRT uses it: Conv (no bias) + ReLU. Key: ``conv.weight``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


class ResidualUnit(nn.Module):
    """RU (official `one_conv`): lambda_a * x + lambda_b * Conv(PReLU(Conv(x))), halving then restoring C."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels // 2, 3, padding=1)
        self.conv1 = nn.Conv2d(channels // 2, channels, 3, padding=1)
        self.relu = nn.PReLU(channels // 2)
        self.weight1 = Scale(1)
        self.weight2 = Scale(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight1(x) + self.weight2(self.conv1(self.relu(self.conv(x))))


class ARFB(nn.Module):
    """Adaptive residual feature block (official `one_module`). ``weight1`` exists in the official model
    (and its checkpoints) but is never used in its forward; kept for key compatibility."""

    def __init__(self, channels: int):
        super().__init__()
        self.layer1 = ResidualUnit(channels)
        self.layer2 = ResidualUnit(channels)
        self.layer4 = ConvAct(channels, channels, 3)
        self.alise = ConvAct(2 * channels, channels, 1)
        self.atten = ChannelAttention(channels)
        self.weight1 = Scale(1)  # unused by the official forward
        self.weight2 = Scale(1)
        self.weight3 = Scale(1)
        self.weight4 = Scale(1)
        self.weight5 = Scale(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.layer1(x)
        x2 = self.layer2(x1)
        z = self.alise(torch.cat([self.weight2(x2), self.weight3(x1)], dim=1))
        z = self.layer4(self.atten(z))
        return self.weight4(x) + self.weight5(z)


class HPB(nn.Module):
    """High-preserving block (official `Updownblock`) with the high-frequency filtering module (HFM)."""

    LOW_PASSES = 5  # the official forward applies `decoder_low` five times with shared weights

    def __init__(self, channels: int):
        super().__init__()
        self.encoder = ARFB(channels)
        self.decoder_low = ARFB(channels)
        self.decoder_high = ARFB(channels)
        self.alise = ARFB(channels)
        self.alise2 = ConvAct(2 * channels, channels, 1)
        self.down = nn.AvgPool2d(kernel_size=2)
        self.att = ChannelAttention(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        x1 = self.encoder(x)
        low = self.down(x1)
        high = x1 - F.interpolate(low, size=size, mode="bilinear", align_corners=True)
        for _ in range(self.LOW_PASSES):
            low = self.decoder_low(low)
        high = self.decoder_high(high)
        low = F.interpolate(low, size=size, mode="bilinear", align_corners=True)
        return self.alise(self.att(self.alise2(torch.cat([low, high], dim=1)))) + x


def unfold_kernel(channels: int, k: int = 3) -> torch.Tensor:
    """Grouped-conv weight equal to nn.Unfold(k, padding=k//2): output channel c*k*k + t copies input
    channel c shifted by tap t = ky*k + kx (channel-major, the Unfold order)."""
    w = torch.zeros(channels * k * k, 1, k, k)
    for t in range(k * k):
        w[t::k * k, 0, t // k, t % k] = 1.0
    return w


def fold_kernel(channels: int, k: int = 3) -> torch.Tensor:
    """Grouped-conv weight equal to nn.Fold(k, padding=k//2) (stride 1): the spatially flipped one-hot taps;
    a plain sum of the k*k overlapping contributions, no averaging."""
    w = torch.zeros(channels, k * k, k, k)
    for t in range(k * k):
        w[:, t, k - 1 - t // k, k - 1 - t % k] = 1.0
    return w


class _PatchConv(nn.Module):
    """A per-channel grouped 3x3 conv with a fixed 0/1 kernel (unfold or fold as a conv, which exports)."""

    def __init__(self, channels: int, kernel: torch.Tensor):
        super().__init__()
        self.channels = channels
        self.register_buffer("kernel", kernel, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernel.to(x.dtype), padding=1, groups=self.channels)


class PatchUnfold(_PatchConv):
    """(B, C, H, W) -> (B, C*9, H, W), exactly nn.Unfold(3, padding=1) reshaped to a map."""

    def __init__(self, channels: int):
        super().__init__(channels, unfold_kernel(channels))


class PatchFold(_PatchConv):
    """(B, C*9, H, W) -> (B, C, H, W), exactly nn.Fold(output_size=(H, W), 3, padding=1)."""

    def __init__(self, channels: int):
        super().__init__(channels, fold_kernel(channels))


def segment_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Softmax attention inside consecutive segments of ``N // 4`` tokens, as
    ``torch.split(t, N // 4, dim=-2)`` in the official FSM: ``N // (N // 4)`` full segments (4, or more when
    N < 16) plus one short remainder segment of ``N mod (N // 4)`` tokens. q, k, v: (B, heads, N, d).

    All sizes come from the tensor shapes, so the tracer records them as graph arithmetic.
    """
    b, h, n, d = q.shape
    seg = n // 4
    count = n // seg
    full = count * seg

    def attend(qs, ks, vs):
        attn = torch.softmax((qs @ ks.transpose(-2, -1)) * scale, dim=-1)
        return attn @ vs

    out_full = attend(q[:, :, :full].reshape(b, h, count, seg, d), k[:, :, :full].reshape(b, h, count, seg, d),
                      v[:, :, :full].reshape(b, h, count, seg, d)).reshape(b, h, full, d)
    # The remainder may be empty (4 | N): zero-sized MatMul/Softmax are valid in torch and ONNX Runtime.
    out_rest = attend(q[:, :, full:], k[:, :, full:], v[:, :, full:])
    return torch.cat([out_full, out_rest], dim=2)


class EffAttention(nn.Module):
    """EMHA: Linear reduction 288 -> 144, qkv 144 -> 432 (8 heads x 18), FSM segment attention, proj -> 288.
    The scale is (288 / 8) ** -0.5 = 1/6, computed from the unreduced dim as in the official code."""

    def __init__(self, dim: int = ET_DIM, num_heads: int = ET_HEADS):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.reduce = nn.Linear(dim, dim // 2, bias=False)
        self.qkv = nn.Linear(dim // 2, dim // 2 * 3, bias=False)
        self.proj = nn.Linear(dim // 2, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = segment_attention(qkv[0], qkv[1], qkv[2], self.scale)  # (B, heads, N, d)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class MLABlock(nn.Module):
    """The efficient Transformer (ET): 3x3 patch tokens (dim 288), pre-LN EMHA and MLP (288 -> 72 -> 288).
    Takes a (B, 32, H, W) map, returns tokens (B, N, 288)."""

    def __init__(self, n_feat: int = N_FEATS, dim: int = ET_DIM):
        super().__init__()
        self.unfold = PatchUnfold(n_feat)
        self.atten = EffAttention(dim)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim // 4, act=nn.ReLU)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.unfold(x).flatten(2).transpose(1, 2)
        t = t + self.atten(self.norm1(t))
        return t + self.mlp(self.norm2(t))


class LCBLTB(nn.Module):
    """Official `Un`: three HPBs, concat -> reduce, ET, fold back, `alise` conv; lambda1*h + lambda2*out."""

    def __init__(self, n_feats: int = N_FEATS):
        super().__init__()
        self.encoder1 = HPB(n_feats)
        self.encoder2 = HPB(n_feats)
        self.encoder3 = HPB(n_feats)
        self.reduce = nn.Conv2d(3 * n_feats, n_feats, 3, padding=1)
        self.weight2 = Scale(1)
        self.weight1 = Scale(1)
        self.attention = MLABlock(n_feats, n_feats * 9)
        self.fold = PatchFold(n_feats)
        self.alise = nn.Conv2d(n_feats, n_feats, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.encoder1(x)
        x2 = self.encoder2(x1)
        x3 = self.encoder3(x2)
        tokens = self.attention(self.reduce(torch.cat([x1, x2, x3], dim=1)))  # (B, N, 288)
        b, _, h, w = x3.shape
        out = self.fold(tokens.transpose(1, 2).reshape(b, -1, h, w))
        return self.weight1(x) + self.weight2(self.alise(out))


def upsampler(scale: int, n_feats: int) -> nn.Sequential:
    """EDSR-style Upsampler: log2(s) x [Conv 3x3 C -> 4C, PixelShuffle(2)] or [Conv C -> 9C, PixelShuffle(3)]."""
    layers = []
    if scale & (scale - 1) == 0:
        for _ in range(int(math.log2(scale))):
            layers += [nn.Conv2d(n_feats, 4 * n_feats, 3, padding=1), nn.PixelShuffle(2)]
    elif scale == 3:
        layers += [nn.Conv2d(n_feats, 9 * n_feats, 3, padding=1), nn.PixelShuffle(3)]
    else:
        raise ValueError(f"ESRT supports scales 2, 3, 4; got {scale}")
    return nn.Sequential(*layers)


class ESRT(nn.Module):
    """out = tail(reduce(body(head(x)))) + up(head(x)), where `up` ends in Conv(no bias) + ReLU."""

    def __init__(self, upscale: int = 4, n_feats: int = N_FEATS):
        super().__init__()
        self.scale = upscale
        self.up = nn.Sequential(upsampler(upscale, n_feats), ConvAct(n_feats, 3, 3))
        self.head = nn.Sequential(nn.Conv2d(3, n_feats, 3, padding=1))
        self.body = nn.Sequential(LCBLTB(n_feats))
        self.tail = nn.Sequential(upsampler(upscale, n_feats), nn.Conv2d(n_feats, 3, 3, padding=1))
        self.reduce = nn.Conv2d(n_feats, n_feats, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        return self.tail(self.reduce(self.body(h))) + self.up(h)


def _init_scale(name: str, module: nn.Module, g: torch.Generator) -> bool:
    # Gains around 1 but all different, so a swapped or dropped gain changes the output.
    module.scale.copy_(torch.rand(1, generator=g, dtype=torch.float64).mul(0.6).add(0.7).to(module.scale.dtype))
    return True


def init_for_tests(model: nn.Module, seed: int = 0) -> None:
    """Deterministic demo weights (see `deterministic_init`) plus every learnable gain drawn in [0.7, 1.3]."""
    deterministic_init(model, seed, rules={Scale: _init_scale})


def build(variant: str, scale: int) -> ESRT:
    return ESRT(upscale=scale)


def read_esrt_arch(sd) -> dict:
    """ESRT's architecture is fixed; the checkpoint's upsampler tells the scale (one conv to 9C: x3; one to
    4C: x2; two: x4)."""
    convs = sorted(k for k in sd if re.fullmatch(r"tail\.0\.\d+\.weight", k))
    if not convs or "head.0.weight" not in sd:
        return {}  # not ESRT's layout: the strict load lists what is missing
    feats = int(sd["head.0.weight"].shape[0])
    if len(convs) == 1 and int(sd[convs[0]].shape[0]) == 9 * feats:
        return {"scale": 3}
    return {"scale": 2 ** len(convs)}


register(ModelSpec(
    **catalog_facts("esrt"),
    build=build,
    rgb_range=1.0,
    description="ESRT (CVPRW 2022): CNN backbone with HPB/ARFB + efficient Transformer (EMHA/FSM); "
                "Unfold/Fold as one-hot grouped convs; attention is quadratic in the tile area, so run tiled",
    size_multiple=lambda variant: 1,
    init_for_tests=init_for_tests,
    read_arch=read_esrt_arch,
    read_config_file=fixed_arch_arguments("ESRT", {"n_feats": N_FEATS}),
    extra={"attention": "global inside each quarter of the H*W token sequence",
           "emha_score_bytes_fp32": "8 * N^2 per image (N = tile H*W): 8 heads x 4 segments x (N/4)^2 x 4 B"},
))
