"""Small building blocks shared by the model families: Conv+BN with in-place folding, and a deterministic
re-initialisation for tests and demo exports (no checkpoint needed).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Tuple

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


def fold_bn_into_conv(weight: torch.Tensor, bias: Optional[torch.Tensor], bn: nn.BatchNorm2d
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Conv (weight, bias) followed by BatchNorm in eval mode -> one conv (weight', bias').

    BN(y) = gamma * (y - mean) / sqrt(var + eps) + beta, per output channel, so the factor folds into
    the weight rows and the shift into the bias. Computed in the tensors' own dtype (float64 in tests).
    """
    std = torch.sqrt(bn.running_var.to(weight.dtype) + bn.eps)
    gamma = bn.weight.to(weight.dtype) if bn.affine else torch.ones_like(std)
    beta = bn.bias.to(weight.dtype) if bn.affine else torch.zeros_like(std)
    factor = gamma / std
    conv_bias = bias if bias is not None else torch.zeros_like(std)
    new_weight = weight * factor.reshape(-1, *([1] * (weight.dim() - 1)))
    new_bias = beta + (conv_bias - bn.running_mean.to(weight.dtype)) * factor
    return new_weight, new_bias


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
        weight, bias = fold_bn_into_conv(old.weight, old.bias, self.bn)
        fused = nn.Conv2d(old.in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                          old.dilation, old.groups, bias=True).to(device=weight.device, dtype=weight.dtype)
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
        self.c = fused
        del self.bn
        self.deploy = True


InitRule = Callable[[str, nn.Module, torch.Generator], bool]


def _uniform(t: torch.Tensor, low: float, high: float, g: torch.Generator) -> None:
    t.copy_(torch.rand(t.shape, generator=g, dtype=torch.float64).mul(high - low).add(low).to(t.dtype))


@torch.no_grad()
def deterministic_init(model: nn.Module, seed: int, rules: Optional[Dict[type, InitRule]] = None) -> None:
    """Redraw every parameter and BN statistic from ``seed`` alone (independent of the global RNG state).

    Defaults are chosen so each branch contributes and nothing saturates: conv/linear weights uniform in
    +-1/sqrt(fan_in) (PyTorch's default scale), biases +-0.05; BatchNorm gamma in [0.5, 1.5], beta and
    running mean in +-0.2, running var in [0.5, 1.5] (so folding is a real change); LayerNorm gamma in
    [0.8, 1.2], beta +-0.1; PReLU slopes in [0.1, 0.4]. ``rules`` maps a module type to a callable
    (name, module, generator) that handles that type itself (returns True when it did).
    """
    g = torch.Generator().manual_seed(int(seed))
    for name, module in model.named_modules():
        rule = (rules or {}).get(type(module))
        if rule is not None and rule(name, module, g):
            continue
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in)
            _uniform(module.weight, -bound, bound, g)
            if module.bias is not None:
                _uniform(module.bias, -0.05, 0.05, g)
        elif isinstance(module, nn.BatchNorm2d):
            _uniform(module.weight, 0.5, 1.5, g)
            _uniform(module.bias, -0.2, 0.2, g)
            _uniform(module.running_mean, -0.2, 0.2, g)
            _uniform(module.running_var, 0.5, 1.5, g)
        elif isinstance(module, nn.LayerNorm):
            _uniform(module.weight, 0.8, 1.2, g)
            _uniform(module.bias, -0.1, 0.1, g)
        elif isinstance(module, nn.PReLU):
            _uniform(module.weight, 0.1, 0.4, g)
