"""Building blocks shared by the model families: MeanShift, the one BatchNorm fold (``bn_affine``) and
Conv+BN with in-place folding, RCAN channel attention, and the transformer MLP.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn


# DIV2K RGB mean used by EDSR-family and SwinIR-family models (LIPT, SMSR, AgileIR).
DIV2K_MEAN = (0.4488, 0.4371, 0.4040)


class MeanShift(nn.Conv2d):
    """Frozen 1x1 conv adding ``sign * rgb_range * mean`` (EDSR's MeanShift; keys ``sub_mean``/``add_mean``
    ``.weight``/``.bias`` in the official checkpoints)."""

    def __init__(self, rgb_range: float, sign: float):
        super().__init__(3, 3, kernel_size=1)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.bias.copy_(sign * rgb_range * torch.tensor(DIV2K_MEAN))
        for p in self.parameters():
            p.requires_grad = False


def bn_affine(bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as y = a * x + c per channel: the one BN fold every reparameterization uses.

    BN(y) = gamma * (y - mean) / sqrt(var + eps) + beta, so a = gamma / std and c = beta - mean * a.
    Computed in the BN's own dtype (float64 in the fusion tests)."""
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(std)
    beta = bn.bias if bn.affine else torch.zeros_like(std)
    a = gamma / std
    return a, beta - bn.running_mean * a


def fold_bn(kernel: torch.Tensor, bn: nn.BatchNorm2d, bias: Optional[torch.Tensor] = None
            ) -> Tuple[torch.Tensor, torch.Tensor]:
    """conv(kernel, bias) followed by eval-mode BN  ==  conv(kernel', bias')."""
    a, c = bn_affine(bn)
    a, c = a.to(kernel.dtype), c.to(kernel.dtype)
    new_bias = c if bias is None else bias * a + c
    return kernel * a.reshape(-1, *([1] * (kernel.dim() - 1))), new_bias


class ConvBN(nn.Module):
    """Conv2d (no bias) + BatchNorm2d, the EfficientViT/AgileIR `Conv2d_BN` unit.

    Training form: ``c`` (Conv2d, bias=False) and ``bn`` -> keys ``c.weight``, ``bn.*``.
    Deploy form (``deploy=True`` or after :meth:`reparameterize`): ``c`` is a Conv2d WITH bias and ``bn`` is
    gone -> keys ``c.weight``, ``c.bias``. Keeping the conv under the same name means a fused checkpoint
    reads naturally next to the official one.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1, bn_weight_init: float = 1.0, deploy: bool = False):
        super().__init__()
        self.deploy = deploy
        self.c = nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, groups=groups, bias=deploy)
        if not deploy:
            self.bn = nn.BatchNorm2d(out_ch)
            nn.init.constant_(self.bn.weight, bn_weight_init)
            nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(x) if self.deploy else self.bn(self.c(x))

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.deploy:
            return
        old = self.c
        weight, bias = fold_bn(old.weight, self.bn, old.bias)
        fused = nn.Conv2d(old.in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                          old.dilation, old.groups, bias=True).to(device=weight.device, dtype=weight.dtype)
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
        self.c = fused
        del self.bn
        self.deploy = True


class ChannelAttention(nn.Module):
    """RCAN channel attention: x * sigmoid(W2 relu(W1 gap(x))) (ESRT, SMSR; keys ``conv_du.0/2``)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.conv_du = nn.Sequential(nn.Conv2d(channels, channels // reduction, 1), nn.ReLU(),
                                     nn.Conv2d(channels // reduction, channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv_du(x.mean(dim=(2, 3), keepdim=True))


class Mlp(nn.Module):
    """Transformer MLP fc1 -> act -> fc2 (ESRT: ReLU, AgileIR: GELU; keys ``fc1``/``fc2``)."""

    def __init__(self, dim: int, hidden: int, act: type = nn.GELU):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
