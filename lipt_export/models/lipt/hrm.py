"""LIPT's HRM (high-frequency re-parameterization module) and its 6-branch re-parameterizable 3x3 conv.

Training form of every HRM 3x3 conv (official ``DiverseBranchBlock`` + two ``RepSRB`` edge branches, same
state-dict names so official checkpoints load unchanged)::

    dbb_origin : conv3x3 -> BN
    dbb_1x1    : conv1x1 -> BN
    dbb_avg    : conv1x1 -> BN (1-px border filled with the BN's constant output) -> avgpool3x3 (no pad) -> BN
    dbb_1x1_kxk: identity-based conv1x1 (W + I) -> border-filled BN -> conv3x3 (no pad) -> BN
    dbb_sobelx : conv1x1 with bias (k0, b0) -> pad with b0 -> depthwise isotropic Sobel-x * scale + bias
    dbb_sobely : same with Sobel-y

All branches are linear in the input and summed, so (in eval mode) the block equals one 3x3 conv with bias;
:meth:`RepConv3x3.reparameterize` computes it in place. The border fills (BN constant, b0) are what make the
1x1 -> 3x3 compositions exact at the image border too.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from lipt_export.models.layers import bn_affine, fold_bn

SQRT2 = math.sqrt(2.0)
# Isotropic Sobel masks (rows top -> bottom); ECBSR uses 2 where LIPT uses sqrt(2).
SOBEL_X = ((1.0, 0.0, -1.0), (SQRT2, 0.0, -SQRT2), (1.0, 0.0, -1.0))
SOBEL_Y = ((1.0, SQRT2, 1.0), (0.0, 0.0, 0.0), (-1.0, -SQRT2, -1.0))


def _border_fill(y: torch.Tensor, fill: torch.Tensor, pad: int) -> torch.Tensor:
    """Zero-pad ``y`` by ``pad`` px and put the per-channel ``fill`` in the border. The interior stays
    bit-exact (``y + 0``), unlike ``pad(y - fill) + fill``."""
    inner = F.pad(torch.ones_like(y[:1, :1]), [pad] * 4)
    return F.pad(y, [pad] * 4) + (1.0 - inner) * fill.view(1, -1, 1, 1)


def merge_1x1_kxk(k1: torch.Tensor, b1: torch.Tensor, k2: torch.Tensor, b2: torch.Tensor
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """conv1x1(k1, b1) -> pad with b1 -> convKxK(k2, b2, no pad)  ==  convKxK(K, b) with zero pad."""
    kernel = torch.einsum("omuv,mi->oiuv", k2, k1[:, :, 0, 0])
    return kernel, b2 + k2.sum(dim=(2, 3)) @ b1


def pad_1x1_to_3x3(kernel: torch.Tensor) -> torch.Tensor:
    return F.pad(kernel, [1, 1, 1, 1])


class BNAndPad(nn.Module):
    """BN whose output gets a 1-px border holding the BN's response to a zero input (official
    ``BNAndPadLayer``; key ``<name>.bn.*``). The fill uses running statistics in training too, as upstream."""

    def __init__(self, channels: int, pad: int = 1):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(x)
        if self.pad == 0:
            return y
        _, fill = bn_affine(self.bn)
        fill = fill.detach()
        return _border_fill(y, fill, self.pad)


class IdentityConv1x1(nn.Module):
    """1x1 conv whose effective kernel is W + I (W starts at zero), official ``IdentityBasedConv1x1``."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(channels, channels, 1, 1))
        self.register_buffer("identity", torch.eye(channels).view(channels, channels, 1, 1), persistent=False)

    def kernel(self) -> torch.Tensor:
        return self.weight + self.identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernel())


class SobelBranch(nn.Module):
    """1x1 conv (k0, b0) -> pad with b0 -> depthwise (scale * Sobel mask) + bias (official ``RepSRB``).

    ``mask`` is frozen and stored in checkpoints (key ``mask``), so it is a buffer here."""

    def __init__(self, in_channels: int, out_channels: int, direction: str):
        super().__init__()
        if direction not in ("x", "y"):
            raise ValueError(f"Sobel direction must be 'x' or 'y', got {direction!r}")
        conv = nn.Conv2d(in_channels, out_channels, 1)  # default init, as upstream
        self.k0 = nn.Parameter(conv.weight.detach().clone())
        self.b0 = nn.Parameter(conv.bias.detach().clone())
        self.scale = nn.Parameter(torch.randn(out_channels, 1, 1, 1) * 1e-3)
        self.bias = nn.Parameter(torch.randn(out_channels) * 1e-3)
        m = torch.tensor(SOBEL_X if direction == "x" else SOBEL_Y, dtype=torch.float32)
        self.register_buffer("mask", m.expand(out_channels, 1, 3, 3).clone())

    def depthwise_kernel(self) -> torch.Tensor:
        return self.scale * self.mask  # (out, 1, 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y0 = _border_fill(F.conv2d(x, self.k0, self.b0), self.b0, 1)
        return F.conv2d(y0, self.depthwise_kernel(), self.bias, groups=self.mask.shape[0])

    def fused(self) -> Tuple[torch.Tensor, torch.Tensor]:
        dw = self.depthwise_kernel()
        kernel = self.k0 * dw  # (o,i,1,1) * (o,1,3,3): K[o,i] = s_o * M_o * k0[o,i]
        return kernel, self.bias + self.b0 * dw.sum(dim=(1, 2, 3))


def _conv_bn(in_ch: int, out_ch: int, k: int, padding: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(in_ch, out_ch, k, padding=padding, bias=False),
                                     bn=nn.BatchNorm2d(out_ch)))


class RepConv3x3(nn.Module):
    """The HRM 3x3 conv: six training branches, or (``deploy``) a single 3x3 conv with bias.

    Deploy keys are ``weight`` / ``bias`` directly on this module (the official ``deploy=True`` layout,
    i.e. ``...conv0.weight``); training keys follow the official ``DiverseBranchBlock``.
    """

    def __init__(self, in_channels: int, out_channels: int, deploy: bool = False):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.deploy = deploy
        if deploy:
            ref = nn.Conv2d(in_channels, out_channels, 3, padding=1)
            self.weight = nn.Parameter(ref.weight.detach().clone())
            self.bias = nn.Parameter(ref.bias.detach().clone())
            return
        self.dbb_origin = _conv_bn(in_channels, out_channels, 3, padding=1)
        self.dbb_avg = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, 1, bias=False),
            bn=BNAndPad(out_channels, pad=1),
            avg=nn.AvgPool2d(kernel_size=3, stride=1, padding=0),
            avgbn=nn.BatchNorm2d(out_channels)))
        self.dbb_1x1 = _conv_bn(in_channels, out_channels, 1, padding=0)
        self.dbb_1x1_kxk = nn.Sequential(OrderedDict(
            idconv1=IdentityConv1x1(in_channels),
            bn1=BNAndPad(in_channels, pad=1),
            conv2=nn.Conv2d(in_channels, out_channels, 3, padding=0, bias=False),
            bn2=nn.BatchNorm2d(out_channels)))
        self.dbb_sobelx = SobelBranch(in_channels, out_channels, "x")
        self.dbb_sobely = SobelBranch(in_channels, out_channels, "y")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy:
            return F.conv2d(x, self.weight, self.bias, padding=1)
        return (self.dbb_origin(x) + self.dbb_1x1(x) + self.dbb_avg(x) + self.dbb_1x1_kxk(x)
                + self.dbb_sobelx(x) + self.dbb_sobely(x))

    # -- fusion -------------------------------------------------------------------------------------
    def branch_kernels(self) -> "OrderedDict[str, Tuple[torch.Tensor, torch.Tensor]]":
        """Each branch as an equivalent (3x3 kernel, bias), eval-mode BN statistics."""
        out = OrderedDict()
        out["origin"] = fold_bn(self.dbb_origin.conv.weight, self.dbb_origin.bn)
        k, b = fold_bn(self.dbb_1x1.conv.weight, self.dbb_1x1.bn)
        out["1x1"] = (pad_1x1_to_3x3(k), b)
        # avg branch: 1x1+BN, then avg-pool as a constant per-channel kernel folded with its BN
        k1, b1 = fold_bn(self.dbb_avg.conv.weight, self.dbb_avg.bn.bn)
        eye = torch.eye(self.out_channels, dtype=k1.dtype, device=k1.device)
        k_avg = eye.view(self.out_channels, self.out_channels, 1, 1).expand(-1, -1, 3, 3) / 9.0
        k2, b2 = fold_bn(k_avg, self.dbb_avg.avgbn)
        out["avg"] = merge_1x1_kxk(k1, b1, k2, b2)
        seq = self.dbb_1x1_kxk
        k1, b1 = fold_bn(seq.idconv1.kernel(), seq.bn1.bn)
        k2, b2 = fold_bn(seq.conv2.weight, seq.bn2)
        out["1x1_kxk"] = merge_1x1_kxk(k1, b1, k2, b2)
        out["sobelx"] = self.dbb_sobelx.fused()
        out["sobely"] = self.dbb_sobely.fused()
        return out

    def equivalent_kernel_bias(self) -> Tuple[torch.Tensor, torch.Tensor]:
        parts = list(self.branch_kernels().values())
        return sum(k for k, _ in parts), sum(b for _, b in parts)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fuse the six branches into ``weight``/``bias`` in place (any device/dtype). Idempotent."""
        if self.deploy:
            return
        kernel, bias = self.equivalent_kernel_bias()
        for name in ("dbb_origin", "dbb_avg", "dbb_1x1", "dbb_1x1_kxk", "dbb_sobelx", "dbb_sobely"):
            delattr(self, name)
        self.weight = nn.Parameter(kernel.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone())
        self.deploy = True

    # -- used by the deterministic test initialisation -------------------------------------------------
    @torch.no_grad()
    def scale_output_(self, factor: float) -> None:
        """Multiply the block's output by ``factor`` exactly (every branch's last affine op)."""
        if self.deploy:
            self.weight.mul_(factor)
            self.bias.mul_(factor)
            return
        for bn in (self.dbb_origin.bn, self.dbb_1x1.bn, self.dbb_avg.avgbn, self.dbb_1x1_kxk.bn2):
            bn.weight.mul_(factor)
            bn.bias.mul_(factor)
        for sob in (self.dbb_sobelx, self.dbb_sobely):
            sob.scale.mul_(factor)
            sob.bias.mul_(factor)


class HRM(nn.Module):
    """conv1(ReLU(conv0(x))) with both convs re-parameterizable; ``exp_ratio`` widens the middle."""

    def __init__(self, channels: int, exp_ratio: int = 1, deploy: bool = False):
        super().__init__()
        self.conv0 = RepConv3x3(channels, channels * exp_ratio, deploy=deploy)
        self.act = nn.ReLU()
        self.conv1 = RepConv3x3(channels * exp_ratio, channels, deploy=deploy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(self.act(self.conv0(x)))
