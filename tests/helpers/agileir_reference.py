"""AgileIR computed the way SwinIR writes it, from a model's own modules: tokens (B, H*W, C), and in every
block LN, roll by -ws/2 (shifted blocks), window partition, cascaded group attention with the mask added,
window merge, roll back, MLP. No window-order layout, no gathers, no Conv1d, no folded scale: the
independent formulation the optimised `lipt_export.models.agileir` graph must equal (in float64)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lipt_export.models import agileir


def _partition(x, ws):  # (B, H, W, C) -> (B*nW, C, ws, ws)
    b, h, w, c = x.shape
    return x.reshape(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 5, 2, 4).reshape(-1, c, ws, ws)


def _merge(win, b, h, w):  # inverse of _partition
    _, c, ws, _ = win.shape
    return win.reshape(b, h // ws, w // ws, c, ws, ws).permute(0, 1, 4, 2, 5, 3).reshape(b, h, w, c)


def swinir_mask(h, w, ws, shift, dtype=torch.float32):
    """SwinIR's `calculate_mask`: slice assignment of nine region labels on a padded-size image."""
    img = torch.zeros(1, h, w, 1, dtype=dtype)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[:, hs, wsl, :] = cnt
            cnt += 1
    win = img.reshape(1, h // ws, ws, w // ws, ws, 1).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws)
    diff = win[:, None, :] - win[:, :, None]
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


def _attention(att: agileir.EfficientShiftingWindowAttention, x, mask):
    g, ws = att.groupatt, att.window_size
    n = ws * ws
    bias = att.relative_position_bias_table[att.relative_position_index.reshape(-1)]
    bias = bias.reshape(n, n, att.num_heads).permute(2, 0, 1)
    chunks = x.chunk(g.num_heads, dim=1)
    outs, feat = [], chunks[0]
    for i in range(g.num_heads):
        if i > 0:
            feat = feat + chunks[i]
        q, k, v = g.qkvs[i](feat).split([g.key_dim, g.key_dim, g.d], dim=1)
        q = g.dws[i](q)
        q, k, v = q.flatten(2), k.flatten(2), v.flatten(2)
        attn = (q.transpose(-2, -1) @ k) * g.scale + bias[i]
        if mask is not None:
            attn = attn + mask
        feat = (v @ attn.softmax(dim=-1).transpose(-2, -1)).reshape(-1, g.d, ws, ws)
        outs.append(feat)
    return g.proj(torch.cat(outs, dim=1))


def _block(blk: agileir.GSWABlock, x, h, w, mask):
    if blk.public:
        x = x + blk.norm1(x)
        return x + blk.mlp(blk.norm2(x))
    b, _, c = x.shape
    s, ws = blk.shift_size, blk.window_size
    y = blk.norm1(x).reshape(b, h, w, c)
    if s:
        y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
    y = _merge(_attention(blk.attn, _partition(y, ws), mask if s else None), b, h, w)
    if s:
        y = torch.roll(y, shifts=(s, s), dims=(1, 2))
    x = x + y.reshape(b, h * w, c)
    return x + blk.mlp(blk.norm2(x))


@torch.no_grad()
def swinir_forward(model: agileir.AgileIR, x: torch.Tensor) -> torch.Tensor:
    h0, w0 = x.shape[2:]
    ws = model.window_size
    x = F.pad(x, (0, (ws - w0 % ws) % ws, 0, (ws - h0 % ws) % ws), mode="reflect")
    mean = model.mean.to(x.dtype)
    x = model.conv_first(x - mean)
    b, c, h, w = x.shape
    mask = swinir_mask(h, w, ws, ws // 2, x.dtype).repeat(b, 1, 1)
    t = model.patch_embed.norm(x.flatten(2).transpose(1, 2))
    for layer in model.layers:
        y = t
        for blk in layer.residual_group.blocks:
            y = _block(blk, y, h, w, mask)
        t = layer.conv(y.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2) + t
    feat = model.norm(t).transpose(1, 2).reshape(b, c, h, w)
    out = model.upsample(model.conv_after_body(feat) + x) + mean
    return out[:, :, :h0 * model.upscale, :w0 * model.upscale]
