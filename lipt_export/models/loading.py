"""From (family, variant, scale, checkpoint) to the training graph and its deploy graph: the one place every
command builds a model (export, eval, checkpoint runners)."""
from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional

import torch.nn as nn

from lipt_export.fileio import sha256_file
from lipt_export.models.checkpoint import load_weights, read_state_dict
from lipt_export.models.registry import ModelSpec, build_model
from lipt_export.models.reparam import reparameterize_model


class PreparedModel(NamedTuple):
    train: Optional[nn.Module]  # None when the checkpoint was already in deploy form
    deploy: nn.Module
    weights: Dict[str, Any]  # description for the manifest


def prepare_model(spec: ModelSpec, variant: str, scale: int, weights: Optional[str], seed: int = 0
                  ) -> PreparedModel:
    """Build the model, load ``weights`` (train or deploy form) or the demo init, and reparameterize."""
    _, _, train = build_model(spec.name, variant, scale)
    label = f"{spec.name}-{variant} x{scale}"
    if weights:
        sd = spec.remap_checkpoint_keys(read_state_dict(weights))
        loaded, form = load_weights(train, sd, model_label=label, ignore=spec.ignored_checkpoint_keys)
        info = {"source": "checkpoint", "path": str(weights), "sha256": sha256_file(weights), "form": form}
        if form == "deploy":
            return PreparedModel(None, loaded, info)
        train = loaded
    else:
        if spec.init_for_tests is not None:
            spec.init_for_tests(train, seed)
        info = {"source": "demo-init", "seed": seed,
                "note": "no --weights given: deterministic demo weights, for pipeline checks only"}
    return PreparedModel(train, reparameterize_model(train), info)
