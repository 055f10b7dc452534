"""AgileIR (Cai et al., arXiv 2409.06206): SwinIR with Group Shifted Window Attention (GSWA).

Key layout and configurations follow the public code (XcloudFance/AgileIR @92e37e3, `models/model_agileir.py`,
KAIR style), but the attention is the paper's INTENDED one, not what the public code computes:

* Public code: the block's attention module returns its *input* (the LN-normalised windows), discarding the
  cascaded-group-attention output, and passes ``mask=None`` (its comment: "it was masks"); every block is
  therefore x + LN1(x), then the MLP. Its (never executed) mask branch would also add the mask twice.
* Here: the GSWA output is used, and the shifted-window mask is added once (Swin semantics: -100 between
  positions of different regions) on every shifted block.

GSWA (EfficientViT's cascaded group attention inside Swin windows, windows kept NCHW): channels split into
``h`` chunks of E/h; head i sees chunk_i + output of head i-1; Conv1x1+BN: E/h -> 2*kd + dv; depthwise 5x5
Conv+BN on q; scores q^T k * kd^-0.5 + that head's relative position bias (Swin table/index); softmax;
out = v A^T; concat -> ReLU -> Conv1x1+BN (E -> E). Every Conv+BN folds into one conv (``reparameterize``).

The shift mask and the shifted blocks' token gathers are built once per ``forward`` from the padded size with
arange arithmetic (never a buffer computed for one size), so a single dynamic-shape ONNX file is right at
every H, W. The body keeps its tokens in window order (see ``window_tokens``); that, and the per-head layout
of ``CascadedGroupAttention``, cut the AgileIR-normal graph from 4,970 to about 3,200 nodes with outputs
equal to SwinIR's roll/partition formulation in float64 (tests/test_agileir.py). Input is reflect-padded to
a multiple of the window and the output cropped. Native range [0, 1] with the DIV2K mean subtracted.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from lipt_export.errors import ModelError
from lipt_export.models.arch import count_indices, read_kair_json
from lipt_export.models.demo_init import deterministic_init
from lipt_export.models.layers import DIV2K_MEAN, ConvBN, Mlp
from lipt_export.models.registry import ModelSpec, catalog_facts, register

ATTENTION_MODES = ("intended", "public")
MASK_VALUE = -100.0  # SwinIR's value between windows' regions (exp(-100) underflows to 0 in fp32 softmax)


@dataclass(frozen=True)
class AgileIRConfig:
    window_size: int
    depths: Tuple[int, ...]
    embed_dim: int
    num_heads: Tuple[int, ...]
    key_dims: Tuple[int, ...]
    mlp_ratio: float = 2.0
    dw_kernel: int = 5
    # "intended": the paper's GSWA (attention output used, shift mask applied). "public": what the public
    # code computes (its attention returns its input, so each block is x + LN1(x), then x + MLP(LN2(x))).
    attention: str = "intended"


# Option files of the public repository (netG sections); every one uses pixelshuffledirect and 1conv.
VARIANTS: Dict[str, AgileIRConfig] = {
    # options/agileir_v2{,_x3,_x4}.json
    "v2": AgileIRConfig(16, (6,) * 6, 180, (6,) * 6, (16,) * 6),
    # options/train_agileir_x2_lightweight_medium.json
    "medium": AgileIRConfig(8, (6,) * 6, 180, (6,) * 6, (16, 16, 16, 16, 16, 32)),
    # options/train_agileir_x2_lightweight_normal.json: four groups of 8 blocks, E 60
    "normal": AgileIRConfig(8, (8,) * 4, 60, (6,) * 4, (16,) * 4),
    # options/train_agileir_x2_lightweight.json (the file itself sets upscale 4)
    "light": AgileIRConfig(16, (6, 8, 6), 96, (12,) * 3, (32,) * 3),
}


def relative_position_index(ws: int) -> torch.Tensor:
    """Swin's (ws*ws, ws*ws) index into the (2ws-1)^2 bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


# The body runs on "window tokens": (B*H*W, C) rows, windows in raster order per image, tokens in raster
# order per window. LayerNorm, MLP and residual adds act per token, so they do not care about the order;
# only the RSTB's 3x3 conv needs the map back. Keeping windows as the layout (instead of partitioning and
# merging in every block, as SwinIR does) removes two 6-D transposes and their shape arithmetic per block,
# and the attention views the rows as (-1, n, C) windows with a static shape.

def window_tokens(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, C, H, W) map -> (B*H*W, C) window tokens."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // ws, ws, w // ws, ws)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(-1, c)


def window_map(t: torch.Tensor, b: int, h: int, w: int, ws: int) -> torch.Tensor:
    """(B*H*W, C) window tokens -> (B, C, H, W) map (inverse of ``window_tokens``)."""
    c = t.shape[-1]
    x = t.reshape(b, h // ws, w // ws, ws, ws, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)


def shift_window_mask(h: int, w: int, ws: int, shift: int, like: torch.Tensor) -> torch.Tensor:
    """The SW-MSA mask for a padded (h, w) map: (nW, ws*ws, ws*ws) with MASK_VALUE between tokens from
    different regions of the rolled map, 0 elsewhere. Identical to SwinIR's `calculate_mask`, but built from
    arange/compare so h, w stay graph values (no Python slicing on sizes, no size-specific buffer)."""
    rows = torch.arange(h, device=like.device)
    cols = torch.arange(w, device=like.device)
    row_region = (rows >= h - ws).long() + (rows >= h - shift).long()  # 0, 1, 2 top to bottom
    col_region = (cols >= w - ws).long() + (cols >= w - shift).long()
    label = (row_region[:, None] * 3 + col_region[None, :]).to(like.dtype)  # (h, w)
    win = window_tokens(label[None, None], ws).reshape(-1, ws * ws)  # (nW, ws*ws)
    return (win[:, None, :] != win[:, :, None]).to(like.dtype) * MASK_VALUE


def shift_gather_indices(b: int, h: int, w: int, ws: int, shift: int, device: torch.device
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Row indices into the flattened (B*H*W, C) window tokens that turn the plain window layout into the
    shifted one (SwinIR's roll by -shift, then partition) and back: int64, (B*nW, ws*ws) into the shifted
    windows (the gather yields windows directly) and (B*H*W,) back to plain rows.

    ``order[r, c]`` is the row of map position (r, c) in the plain layout; rolling that map and laying it
    out in window order gives, for every token of the shifted layout, where it comes from (and rolling the
    other way, the inverse). Built once per forward from the padded size, shared by all shifted blocks."""
    n = ws * ws
    rows = torch.arange(h, device=device)[:, None]
    cols = torch.arange(w, device=device)[None, :]
    order = ((rows // ws) * (w // ws) + cols // ws) * n + (rows % ws) * ws + cols % ws  # (h, w)
    offsets = (torch.arange(b, device=device) * (h * w))[:, None, None]  # batch images are consecutive
    idx = []
    for s in (-shift, shift):
        rolled = torch.roll(order, shifts=(s, s), dims=(0, 1))
        idx.append(window_tokens(rolled[None, None], ws).reshape(1, -1, n) + offsets)
    return idx[0].reshape(-1, n), idx[1].reshape(-1)


@dataclass
class WindowContext:
    """What every block of one forward shares: the padded size, the shifted blocks' mask and gathers."""
    b: int
    h: int
    w: int
    mask: Optional[torch.Tensor] = None  # (B*nW, n, n)
    to_shifted: Optional[torch.Tensor] = None  # (B*nW, n) rows of the flattened plain layout
    to_plain: Optional[torch.Tensor] = None  # (B*H*W,) rows of the flattened shifted windows


class CascadedGroupAttention(nn.Module):
    """EfficientViT cascaded group attention on window tokens (official class name and keys).

    The heads form a sequential cascade, so every node per head is paid 6 x per block: heads work on
    channel-major (B*nW, E/h, n) tokens, their 1x1 convs run as Conv1d (no reshapes to 4-D and back),
    only q is reshaped to the window for its depthwise conv, and the deploy form folds the q scale into
    that conv's taps. (Computing transposed scores with a softmax over axis 1 saved a node per head but
    ran 2x slower in ONNX Runtime; Einsum saved two but ran 1.5x slower.)"""

    def __init__(self, dim: int, key_dim: int, num_heads: int, attn_ratio: float, window_size: int,
                 kernel: int = 5, deploy: bool = False):
        super().__init__()
        self.dim = dim
        self.window_size = window_size  # a Python constant, so the per-head reshapes need no shape ops
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.kernel = kernel
        self.scale = key_dim ** -0.5
        self.d = int(attn_ratio * key_dim)  # the official expression (dv = E/h for every shipped config)
        if self.d != dim // num_heads or dim % num_heads:
            raise ValueError(f"cascade needs dv == E/h: E {dim}, heads {num_heads}, dv {self.d}")
        self.qkvs = nn.ModuleList(ConvBN(dim // num_heads, 2 * key_dim + self.d, deploy=deploy)
                                  for _ in range(num_heads))
        self.dws = nn.ModuleList(ConvBN(key_dim, key_dim, kernel, 1, kernel // 2, groups=key_dim, deploy=deploy)
                                 for _ in range(num_heads))
        # Official init: the output BN's gamma is 0, so a fresh block starts as identity.
        self.proj = nn.Sequential(nn.ReLU(), ConvBN(self.d * num_heads, dim, bn_weight_init=0.0, deploy=deploy))

    def _head(self, i: int, feat: torch.Tensor, bias: torch.Tensor, mask: Optional[torch.Tensor]):
        """One head on (B*nW, E/h, n) channel-major window tokens: returns its output, same shape."""
        ws, n, kd = self.window_size, self.window_size * self.window_size, self.key_dim
        q, k, v = pointwise(self.qkvs[i], feat).split([kd, kd, self.d], dim=1)
        q = q.reshape(-1, kd, ws, ws)
        if self.dws[i].deploy:  # the q scale folds into the depthwise taps (constant on export)
            conv = self.dws[i].c
            q = F.conv2d(q, conv.weight * self.scale, conv.bias * self.scale, padding=self.kernel // 2, groups=kd)
        else:
            q = self.dws[i](q) * self.scale
        scores = q.reshape(-1, kd, n).transpose(1, 2) @ k + bias[i]  # (B*nW, queries, keys)
        if mask is not None:
            scores = scores + mask
        return v @ scores.softmax(dim=-1).transpose(1, 2)

    def forward(self, t: torch.Tensor, bias: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """t: (B*nW, n, E) window tokens; bias: (heads, n, n); mask: None or (B*nW, n, n). Returns
        (B*nW, n, E)."""
        chunks = t.transpose(1, 2).split(self.d, dim=1)  # channel-major (B*nW, E/h, n), one Split node
        outs = []
        for i in range(self.num_heads):
            feat = chunks[i] if i == 0 else outs[-1] + chunks[i]  # cascade: previous head refines this input
            outs.append(self._head(i, feat, bias, mask))
        return pointwise(self.proj[1], self.proj[0](torch.cat(outs, dim=1))).transpose(1, 2)


def pointwise(unit: ConvBN, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 ConvBN on (N, C, L) tokens: one Conv1d in the deploy form (no reshapes to 4-D and back);
    the training form runs its Conv2d + BN on an (N, C, L, 1) view."""
    if unit.deploy:
        return F.conv1d(x, unit.c.weight[..., 0], unit.c.bias)
    return unit(x.unsqueeze(-1)).squeeze(-1)


class EfficientShiftingWindowAttention(nn.Module):
    """Relative-position bias + GSWA. The index is a non-persistent buffer (it depends only on the window
    size; the official persistent copy in checkpoints is ignored on load)."""

    def __init__(self, dim: int, key_dim: int, window_size: int, num_heads: int, kernel: int = 5,
                 deploy: bool = False):
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)
        self.groupatt = CascadedGroupAttention(dim, key_dim, num_heads, dim / (key_dim * num_heads),
                                               window_size, kernel, deploy=deploy)

    def forward(self, t: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        n = self.window_size * self.window_size
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        bias = bias.reshape(n, n, self.num_heads).permute(2, 0, 1)  # (heads, query, key): folds on export
        if t.dim() == 2:  # plain windows arrive as (B*H*W, E); shifted ones already gathered to (B*nW, n, E)
            t = t.reshape(-1, n, self.groupatt.dim)
        return self.groupatt(t, bias, mask)


class GSWABlock(nn.Module):
    """Swin block with GSWA on window tokens: x + attn(LN1(x)) in (shifted) windows, then x + MLP(LN2(x)).

    Shifted blocks gather their tokens into the shifted windows and back (``WindowContext``), which equals
    SwinIR's roll, partition, merge and roll back. ``public=True`` computes what the public code does: its
    attention returns its (normalised, windowed) input, and the shift and window partition are undone, so
    the block is x + LN1(x), then x + MLP(LN2(x)). The attention's weights stay in the module (checkpoints
    carry them) but are not used."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift_size: int, key_dim: int,
                 mlp_ratio: float, kernel: int, deploy: bool = False, public: bool = False):
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.shift_size = shift_size
        self.public = public
        self.norm1 = nn.LayerNorm(dim)
        self.attn = EfficientShiftingWindowAttention(dim, key_dim, window_size, num_heads, kernel, deploy)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, t: torch.Tensor, ctx: WindowContext) -> torch.Tensor:
        if self.public:
            t = t + self.norm1(t)
            return t + self.mlp(self.norm2(t))
        y = self.norm1(t)
        if self.shift_size:
            y = y.reshape(-1, self.dim)[ctx.to_shifted]
        y = self.attn(y, ctx.mask if self.shift_size else None).reshape(-1, self.dim)
        if self.shift_size:
            y = y[ctx.to_plain]
        t = t + y
        return t + self.mlp(self.norm2(t))


class BasicLayer(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, key_dim: int, mlp_ratio: float,
                 kernel: int, deploy: bool = False, public: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList(
            GSWABlock(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, key_dim, mlp_ratio,
                      kernel, deploy, public) for i in range(depth))

    def forward(self, t: torch.Tensor, ctx: WindowContext) -> torch.Tensor:
        for blk in self.blocks:
            t = blk(t, ctx)
        return t


class RSTB(nn.Module):
    """Residual group: blocks, then Conv3x3 on the map, plus the group input (all on window tokens)."""

    def __init__(self, dim: int, **kw):
        super().__init__()
        self.window_size = kw["window_size"]
        self.residual_group = BasicLayer(dim, **kw)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, t: torch.Tensor, ctx: WindowContext) -> torch.Tensor:
        y = window_map(self.residual_group(t, ctx), ctx.b, ctx.h, ctx.w, self.window_size)
        return window_tokens(self.conv(y), self.window_size) + t


class PatchNorm(nn.Module):
    """`patch_embed` of SwinIR with patch size 1: only its LayerNorm has weights (key ``norm``); it acts
    per token, here on window tokens."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.norm(t)


class AgileIR(nn.Module):
    def __init__(self, cfg: AgileIRConfig, upscale: int = 2, deploy: bool = False):
        super().__init__()
        if cfg.attention not in ATTENTION_MODES:
            raise ModelError(f"AgileIR attention '{cfg.attention}' unknown; choose {' or '.join(ATTENTION_MODES)}")
        self.cfg = cfg
        self.upscale = upscale
        self.window_size = cfg.window_size
        e = cfg.embed_dim
        self.register_buffer("mean", torch.tensor(DIV2K_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.conv_first = nn.Conv2d(3, e, 3, 1, 1)
        self.patch_embed = PatchNorm(e)
        self.layers = nn.ModuleList(
            RSTB(e, depth=d, num_heads=nh, window_size=cfg.window_size, key_dim=kd, mlp_ratio=cfg.mlp_ratio,
                 kernel=cfg.dw_kernel, deploy=deploy, public=cfg.attention == "public")
            for d, nh, kd in zip(cfg.depths, cfg.num_heads, cfg.key_dims))
        self.norm = nn.LayerNorm(e)
        self.conv_after_body = nn.Conv2d(e, e, 3, 1, 1)
        # pixelshuffledirect (every shipped option): Conv3x3 E -> 3 s^2, PixelShuffle(s)
        self.upsample = nn.Sequential(nn.Conv2d(e, 3 * upscale * upscale, 3, 1, 1), nn.PixelShuffle(upscale))

    def window_context(self, x: torch.Tensor) -> WindowContext:
        """Per-forward values every block shares: one mask and one pair of gathers for all shifted blocks
        (same padded size, window and shift), repeated per image. The public form needs none."""
        b, _, h, w = x.shape
        ctx = WindowContext(b, h, w)
        if self.cfg.attention == "intended" and any(d > 1 for d in self.cfg.depths):
            ws = self.window_size
            ctx.mask = shift_window_mask(h, w, ws, ws // 2, x).repeat(b, 1, 1)
            ctx.to_shifted, ctx.to_plain = shift_gather_indices(b, h, w, ws, ws // 2, x.device)
        return ctx

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        ctx = self.window_context(x)
        t = self.patch_embed(window_tokens(x, self.window_size))
        for layer in self.layers:
            t = layer(t, ctx)
        return window_map(self.norm(t), ctx.b, ctx.h, ctx.w, self.window_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        ws = self.window_size
        x = F.pad(x, (0, (ws - w % ws) % ws, 0, (ws - h % ws) % ws), mode="reflect")
        mean = self.mean.to(x.dtype)
        x = self.conv_first(x - mean)
        x = self.conv_after_body(self.forward_features(x)) + x
        x = self.upsample(x) + mean
        return x[:, :, :h * self.upscale, :w * self.upscale]


# Official checkpoints hold size- or window-derived buffers we rebuild: `attn_mask` (shaped by the training
# img_size, e.g. (16, 256, 256) for img 64 / ws 16, and wrong for any other size) and
# `relative_position_index` (a fixed function of the window size).
_IGNORED = re.compile(r"(^|\.)(attn_mask|relative_position_index)$")


def ignored_checkpoint_keys(key: str) -> bool:
    return bool(_IGNORED.search(key))


def _init_attention(name: str, module: nn.Module, g: torch.Generator) -> bool:
    table = module.relative_position_bias_table
    table.copy_(torch.rand(table.shape, generator=g, dtype=torch.float64).mul(2).sub(1).to(table.dtype))
    return False  # children (the ConvBNs) are visited by the walker itself


def init_for_tests(model: nn.Module, seed: int = 0) -> None:
    """Deterministic demo weights (see `deterministic_init`: every BN gets non-trivial statistics, so folding
    is exercised, and the output BN's gamma is non-zero so attention contributes) plus relative-position
    bias tables uniform in [-1, 1]."""
    deterministic_init(model, seed, rules={EfficientShiftingWindowAttention: _init_attention})


def build(variant: str, scale: int, deploy: bool = False) -> AgileIR:
    return AgileIR(VARIANTS[variant], upscale=scale, deploy=deploy)


def window_size(variant: str) -> int:
    return VARIANTS[variant].window_size


def _proj_is_zero(sd: Mapping[str, torch.Tensor], prefix: str) -> bool:
    """The attention-output unit of one block outputs exactly 0: BN gamma = beta = 0 (training form) or a
    zero folded conv (deploy form)."""
    names = [f"{prefix}.bn.weight", f"{prefix}.bn.bias"] if f"{prefix}.bn.weight" in sd else \
        [f"{prefix}.c.weight", f"{prefix}.c.bias"]
    return all(n in sd and not torch.count_nonzero(sd[n]) for n in names)


def read_agileir_arch(sd: Mapping[str, torch.Tensor]) -> Dict[str, object]:
    """Everything the state dict shows: embedding width, blocks per group, heads and window (from the
    relative-position tables), key dims (from the q/k/v projections), MLP ratio, depthwise kernel, scale
    (pixelshuffledirect conv), and which attention the checkpoint was trained with (see ``attention``)."""
    keys = list(sd)
    groups = count_indices(keys, r"^layers\.(\d+)\.")
    if "conv_first.weight" not in sd or "upsample.0.weight" not in sd or not groups:
        return {}  # not AgileIR's layout: the strict load lists what is missing
    e = int(sd["conv_first.weight"].shape[0])
    depths = tuple(count_indices(keys, rf"^layers\.{k}\.residual_group\.blocks\.(\d+)\.") for k in range(groups))
    blk = [f"layers.{k}.residual_group.blocks.0.attn" for k in range(groups)]
    heads = tuple(int(sd[f"{b}.relative_position_bias_table"].shape[1]) for b in blk)
    ws = round((int(sd[f"{blk[0]}.relative_position_bias_table"].shape[0]) ** 0.5 + 1) / 2)
    key_dims = tuple((int(sd[f"{b}.groupatt.qkvs.0.c.weight"].shape[0]) - e // h) // 2 for b, h in zip(blk, heads))
    public = all(_proj_is_zero(sd, f"layers.{k}.residual_group.blocks.{j}.attn.groupatt.proj.1")
                 for k in range(groups) for j in range(depths[k]))
    return {"embed_dim": e, "depths": depths, "num_heads": heads, "window_size": ws, "key_dims": key_dims,
            "mlp_ratio": int(sd["layers.0.residual_group.blocks.0.mlp.fc1.weight"].shape[0]) / e,
            "dw_kernel": int(sd[f"{blk[0]}.groupatt.dws.0.c.weight"].shape[-1]),
            "attention": "public" if public else "intended",
            "scale": round((int(sd["upsample.0.weight"].shape[0]) / 3) ** 0.5)}


def read_kair_options(path: Path) -> Dict[str, object]:
    """The netG section of a KAIR option file (options/*.json of the public repository)."""
    net = read_kair_json(path).get("netG") or {}
    if net.get("net_type", "agileir") != "agileir":
        raise ModelError(f"{path} configures net_type '{net.get('net_type')}', not agileir")
    for key, want in (("upsampler", "pixelshuffledirect"), ("resi_connection", "1conv"), ("in_chans", 3)):
        if key in net and net[key] != want:
            raise ModelError(f"{path}: {key} {net[key]!r} is not supported (AgileIR here uses {want!r})")
    out: Dict[str, object] = {}
    for key, name, conv in (("window_size", "window_size", int), ("embed_dim", "embed_dim", int),
                            ("depths", "depths", lambda v: tuple(map(int, v))),
                            ("num_heads", "num_heads", lambda v: tuple(map(int, v))),
                            ("key_dims", "key_dims", lambda v: tuple(map(int, v))),
                            ("mlp_ratio", "mlp_ratio", float), ("upscale", "scale", int)):
        if net.get(key) is not None:
            out[name] = conv(net[key])
    return out


def describe_agileir(c: AgileIRConfig) -> str:
    return (f"AgileIR with embed_dim {c.embed_dim}, depths {list(c.depths)}, heads {list(c.num_heads)}, "
            f"window {c.window_size}, key_dims {list(c.key_dims)}, mlp_ratio {c.mlp_ratio:g}, "
            f"{c.attention} attention")


def agileir_arch_notes(c: AgileIRConfig, sources: Mapping[str, str]) -> List[str]:
    why = {"checkpoint": ("every attention-output BatchNorm in the checkpoint is exactly zero: trained with the "
                          "public code, whose blocks discard the attention (x + LN1(x), then the MLP)"
                          if c.attention == "public" else
                          "the checkpoint's attention-output BatchNorms are trained (non-zero)"),
           "option": "chosen with --agileir-attention"}.get(sources.get("attention", ""),
                                                           "no checkpoint: the paper's intended attention")
    return [f"attention: {c.attention} ({why})"]


register(ModelSpec(
    **catalog_facts("agileir"),
    build=build,
    rgb_range=1.0,
    description="AgileIR (2024): SwinIR with group shifted window attention (cascaded group attention, "
                "Conv+BN folded); the paper's intended attention with the shift mask applied, or the public "
                "code's attention-free blocks for checkpoints trained with it",
    size_multiple=window_size,
    ignored_checkpoint_keys=ignored_checkpoint_keys,
    init_for_tests=init_for_tests,
    config_for=lambda variant, scale: VARIANTS[variant],
    build_config=lambda config, scale: AgileIR(config, upscale=scale),
    read_arch=read_agileir_arch,
    read_config_file=read_kair_options,
    describe=describe_agileir,
    config_multiple=lambda config: config.window_size,
    arch_notes=agileir_arch_notes,
    checkpoint_decides=("attention",),  # a public-code checkpoint is a `normal` one trained attention-free
    extra={"divergence": "public code discards the attention output and passes no shift mask; the intended "
                         "form uses the attention output and applies the mask; the public form reproduces the "
                         "public code (chosen from the checkpoint, --agileir-attention)"},
))

