"""Structural reparameterization: the model-level walker.

Each fusable module owns a ``reparameterize()`` method (RepVGG/MobileOne style) that replaces its training
branches by the single equivalent deploy op, in place, keeping the deploy state-dict naming. This helper
copies the model and calls those methods children-first, so a parent may rely on fused children.
"""
from __future__ import annotations

import copy

import torch.nn as nn


def reparameterizable_modules(model: nn.Module):
    return [m for m in model.modules() if m is not model and callable(getattr(m, "reparameterize", None))] + (
        [model] if callable(getattr(model, "reparameterize", None)) else [])


def is_deploy(model: nn.Module) -> bool:
    """True when no module still carries unfused training branches."""
    return all(getattr(m, "deploy", True) for m in reparameterizable_modules(model))


def reparameterize_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Return the deploy graph of ``model``: every fusable module fused, nothing of the branches left.

    Works on any device (fusion math uses the tensors' own device and dtype). Idempotent.
    """
    if not inplace:
        model = copy.deepcopy(model)
    # modules() is pre-order (parents first); reversing gives children before their parents.
    for module in reversed(reparameterizable_modules(model)):
        if not getattr(module, "deploy", False):
            module.reparameterize()
    model.eval()
    return model
