"""From (family, variant, scale, checkpoint, config file) to the training graph and its deploy graph: the one
place every command builds a model (export, eval, checkpoint runners)."""
from __future__ import annotations

from typing import Any, Dict, Mapping, NamedTuple, Optional

import torch.nn as nn

from lipt_export.errors import CheckpointError
from lipt_export.fileio import sha256_file
from lipt_export.models.arch import Architecture, resolve_architecture
from lipt_export.models.checkpoint import load_weights, read_state_dict
from lipt_export.models.registry import ModelSpec
from lipt_export.models.reparam import reparameterize_model


class PreparedModel(NamedTuple):
    train: Optional[nn.Module]  # None when the checkpoint was already in deploy form
    deploy: nn.Module
    weights: Dict[str, Any]  # description for the manifest
    arch: Optional[Architecture] = None


def build_architecture(spec: ModelSpec, arch: Architecture) -> nn.Module:
    """The training-form model of ``arch``, in eval mode."""
    if arch.config is None:
        model = spec.build(arch.variant, arch.scale)
    else:
        model = spec.build_config(arch.config, arch.scale)
    return model.eval()


def prepare_model(spec: ModelSpec, variant: Optional[str], scale: int, weights: Optional[str], seed: int = 0,
                  config_file: Optional[str] = None, options: Optional[Mapping[str, Any]] = None) -> PreparedModel:
    """Resolve the architecture (checkpoint > config file > variant), build it, load ``weights`` (train or
    deploy form) or the demo init, and reparameterize. ``variant`` None = as the checkpoint says."""
    sd = spec.remap_checkpoint_keys(read_state_dict(weights)) if weights else None
    arch = resolve_architecture(spec, variant, scale, state_dict=sd, config_file=config_file, options=options)
    train = build_architecture(spec, arch)
    if sd is not None:
        label = f"{spec.name}-{arch.variant} x{scale}"
        try:
            loaded, form = load_weights(train, sd, model_label=label, ignore=spec.ignored_checkpoint_keys)
        except CheckpointError as exc:
            if arch.checkpoint_scale not in (None, scale):
                raise CheckpointError(f"{exc} (this checkpoint fits --scale {arch.checkpoint_scale})") from None
            raise
        info = {"source": "checkpoint", "path": str(weights), "sha256": sha256_file(weights), "form": form}
        if form == "deploy":
            return PreparedModel(None, loaded, info, arch)
        train = loaded
    else:
        if spec.init_for_tests is not None:
            spec.init_for_tests(train, seed)
        info = {"source": "demo-init", "seed": seed,
                "note": "no --weights given: deterministic demo weights, for pipeline checks only"}
    return PreparedModel(train, reparameterize_model(train), info, arch)
