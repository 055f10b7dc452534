"""Deterministic re-initialisation for tests and demo exports (no checkpoint needed)."""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn

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
