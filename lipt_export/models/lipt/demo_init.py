"""Deterministic, calibrated LIPT weights for tests and demo exports (no LIPT weights are published).

Kept apart from the model: it is test and demo support, not part of the network.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lipt_export.models.lipt.hrm import HRM, RepConv3x3
from lipt_export.models.lipt.model import LIPT, RGB_RANGE
from lipt_export.models.lipt.nvsm import NVSMAttention

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


