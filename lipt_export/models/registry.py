"""Model registry: what can be exported, how to build it, and the facts the manifest needs.

Passive, like timm's ``register_model``: every model family registers a :class:`ModelSpec` when its module
is imported, and ``lipt_export.models`` imports every family, so anything that reaches this module through
the package sees them all. Models are built in their *native* form (their own
value range, the official state-dict naming) so official checkpoints load unchanged; the artifact I/O
contract (float32 NCHW RGB in [0, 1] in and out) is applied by :class:`lipt_export.models.io.UnitRangeIO`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch.nn as nn

from lipt_export.catalog import FAMILIES
from lipt_export.tiling import DEFAULT_TILE, RECOMMENDED_TILE
from lipt_export.errors import ModelError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    # build(variant, scale) -> nn.Module in training form (eval() applied by the caller).
    build: Callable[[str, int], nn.Module]
    variants: Tuple[str, ...]
    scales: Tuple[int, ...]
    default_variant: str
    # Native pixel range of the network: 255 (EDSR-family, LIPT, SMSR) or 1 (SwinIR-family, ESRT).
    rgb_range: float
    description: str
    # Inputs are padded inside the graph to this multiple; the artifact accepts any H, W >= min_size.
    size_multiple: Callable[[str], int] = lambda variant: 1
    min_size: int = 1
    # LR tile (pixels) recommended for tiled serving; `tile_required` = run tiled by default (ESRT).
    recommended_tile: int = RECOMMENDED_TILE
    tile_required: bool = False
    default_tile: int = DEFAULT_TILE  # the tile when none is asked for (catalog: measured per family)
    # Engines default to one static profile at recommended_tile (TensorRT builds this family's dynamic-shape
    # graph far slower; served inputs are tiled/padded to the profile anyway). --shapes overrides.
    static_engine_profile: bool = False
    # Deterministic, non-degenerate weights for tests/benchmarks without a checkpoint (see each model).
    init_for_tests: Optional[Callable[[nn.Module, int], None]] = None
    # Keys of official checkpoints that are accepted and dropped (e.g. size-dependent buffers).
    ignored_checkpoint_keys: Callable[[str], bool] = lambda key: False
    # Maps other official key layouts onto ours (e.g. LIPT convert.py's `.dbb_reparam.`); identity by default.
    remap_checkpoint_keys: Callable[[Dict[str, object]], Dict[str, object]] = lambda sd: sd
    # Architecture hyper-parameters (lipt_export.models.arch): the family's config dataclass for a variant,
    # building from a config, what a state dict determines (always "scale"), the official config files, a
    # one-line description, and notes on fields neither weights nor files can tell. Families with a fixed
    # architecture leave config_for None: their checkpoints only tell the scale.
    config_for: Optional[Callable[[str, int], Any]] = None
    build_config: Optional[Callable[[Any, int], nn.Module]] = None
    read_arch: Optional[Callable[[Mapping[str, Any]], Dict[str, Any]]] = None
    read_config_file: Optional[Callable[[Path], Dict[str, Any]]] = None
    describe: Callable[[Any], str] = lambda config: str(config)
    config_multiple: Callable[[Any], int] = lambda config: 1  # size_multiple of a config (its window)
    arch_notes: Optional[Callable[[Any, Mapping[str, str]], List[str]]] = None
    # config fields the checkpoint decides whatever the variant says (what the weights were trained to compute)
    checkpoint_decides: Tuple[str, ...] = ()
    extra: Dict[str, object] = field(default_factory=dict)


_REGISTRY: Dict[str, ModelSpec] = {}


def catalog_facts(name: str) -> Dict[str, Any]:
    """The ModelSpec fields that live in :mod:`lipt_export.catalog` (the torch-free table the CLI reads)."""
    fam = FAMILIES[name]
    return {"name": name, "variants": fam.variants, "scales": fam.scales, "default_variant": fam.default_variant,
            "min_size": fam.min_size, "recommended_tile": fam.recommended_tile, "tile_required": fam.tile_required,
            "default_tile": fam.default_tile, "static_engine_profile": fam.static_engine_profile}


def register(spec: ModelSpec) -> ModelSpec:
    _REGISTRY[spec.name] = spec
    return spec


def available_models() -> Dict[str, ModelSpec]:
    return dict(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    models = available_models()
    key = name.lower()
    if key not in models:
        raise ModelError(
            f"unknown model '{name}'; choose one of: {', '.join(sorted(models))}")
    return models[key]


def resolve_variant(spec: ModelSpec, variant: Optional[str], scale: int) -> str:
    variant = variant or spec.default_variant
    if variant not in spec.variants:
        raise ModelError(f"model '{spec.name}' has no variant '{variant}'; choose one of: "
                         f"{', '.join(spec.variants)}")
    if scale not in spec.scales:
        raise ModelError(f"model '{spec.name}' does not support scale {scale}; supported scales: "
                         f"{', '.join(map(str, spec.scales))}")
    return variant


def build_model(name: str, variant: Optional[str] = None, scale: int = 4) -> Tuple[ModelSpec, str, nn.Module]:
    """Build a model in training form, in eval mode. Returns (spec, resolved variant, module)."""
    spec = get_spec(name)
    variant = resolve_variant(spec, variant, scale)
    model = spec.build(variant, scale)
    model.eval()
    return spec, variant, model
