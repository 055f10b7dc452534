"""Architecture from the checkpoint (as spandrel does for its zoo), the official config files, and variants.

Every hyper-parameter a state dict determines (blocks, channels, heads, windows where a table's shape shows
them, the upsampler and so the scale) is read from it (``ModelSpec.read_arch``) and used. What weights cannot
tell (LIPT's window size, for example) comes from ``--config FILE`` (the official repositories' own formats,
``ModelSpec.read_config_file``) or from a variant's defaults. ``--variant`` stays a shortcut: when the checkpoint
disagrees with it, the error says what the checkpoint is.

Precedence: explicit options (e.g. ``--agileir-attention``) > checkpoint > config file > variant defaults; a
checkpoint that contradicts the config file or an explicit ``--variant`` is an error, never silently "fixed".
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from lipt_export.errors import CheckpointError, ModelError
from lipt_export.models.registry import ModelSpec, resolve_variant


@dataclass(frozen=True)
class Architecture:
    """One model instance: the family's config (None for fixed-architecture families), the variant it equals
    (``custom`` when none), where every field came from, and notes for the summary and manifest."""

    family: str
    variant: str
    scale: int
    config: Any
    sources: Mapping[str, str]
    size_multiple: int = 1  # the window: inputs are padded to it inside the graph, tiles align to it
    checkpoint_scale: Optional[int] = None  # what the checkpoint's upsampler says (loading names a mismatch)
    notes: Tuple[str, ...] = ()
    description: str = ""

    def to_dict(self) -> Dict[str, Any]:
        cfg = asdict(self.config) if is_dataclass(self.config) else {}
        return {"variant": self.variant, "config": cfg, "size_multiple": self.size_multiple,
                "description": self.description,
                "sources": dict(self.sources), "notes": list(self.notes)}


def _field_names(config: Any) -> List[str]:
    return [f.name for f in fields(config)] if is_dataclass(config) else []


def _closest_variant(spec: ModelSpec, scale: int, known: Mapping[str, Any]) -> str:
    """The variant whose config at ``scale`` agrees with most of ``known`` (the default on ties)."""
    def score(v: str) -> int:
        cfg = spec.config_for(v, scale)
        return sum(1 for k, val in known.items() if getattr(cfg, k, object()) == val)

    return max(spec.variants, key=lambda v: (score(v), v == spec.default_variant))


def _named_variant(spec: ModelSpec, scale: int, config: Any) -> str:
    """The variant whose config equals ``config`` at this scale, or at any scale (what the checkpoint decides, e.g.
    AgileIR's attention form, aside: a `normal` trained with the public code is a `normal`); else 'custom'."""
    for s in (scale, *spec.scales):
        for v in spec.variants:
            cand = spec.config_for(v, s)
            if replace(config, **{k: getattr(cand, k) for k in spec.checkpoint_decides}) == cand:
                return v
    return "custom"


def resolve_architecture(spec: ModelSpec, variant: Optional[str], scale: int, *,
                         state_dict: Optional[Mapping[str, Any]] = None, config_file: Optional[str] = None,
                         options: Optional[Mapping[str, Any]] = None) -> Architecture:
    """The architecture to build for ``spec`` at ``scale`` (see the module doc for the precedence)."""
    options = {k: v for k, v in (options or {}).items() if v is not None}
    explicit = variant is not None
    if scale not in spec.scales:
        resolve_variant(spec, spec.default_variant, scale)  # raises the ModelError naming the scales
    found = dict(spec.read_arch(state_dict)) if state_dict is not None and spec.read_arch else {}
    if config_file and spec.read_config_file is None:
        raise ModelError(f"--config is not supported for {spec.name}")
    file_fields = dict(spec.read_config_file(Path(config_file))) if config_file else {}
    notes: List[str] = []
    ck_scale = found.pop("scale", None)  # a mismatch is reported by the strict load, with this as the hint
    file_scale = file_fields.pop("scale", None)
    if file_scale is not None and file_scale != scale:
        notes.append(f"config file says scale {file_scale}; --scale {scale} is used (the checkpoint decides "
                     f"when given)")
    if spec.config_for is None:  # fixed architecture: only the scale (checked above) can differ
        if options:
            raise ModelError(f"{spec.name} takes no architecture options ({', '.join(options)})")
        v = resolve_variant(spec, variant, scale)
        return Architecture(spec.name, v, scale, None, {}, spec.size_multiple(v), ck_scale, tuple(notes),
                            f"{spec.name.upper()} x{scale}")
    base = resolve_variant(spec, variant, scale) if explicit else _closest_variant(
        spec, scale, {**file_fields, **found})
    config = spec.config_for(base, scale)
    sources = {k: f"variant {base}" for k in _field_names(config)}
    unknown = sorted(set(file_fields) - set(sources))
    if unknown:
        raise ModelError(f"{config_file}: unsupported settings {', '.join(unknown)} for {spec.name}")
    config = replace(config, **file_fields)
    sources.update({k: "config file" for k in file_fields})
    # what the weights were trained to compute (AgileIR's attention form) is not a size a variant fixes: a variant
    # or config file never conflicts with it, the checkpoint decides it (an explicit option still wins below)
    conflicts = {k: v for k, v in found.items() if getattr(config, k) != v and k not in spec.checkpoint_decides}
    against_file = sorted(k for k in conflicts if k in file_fields)
    if against_file:
        raise CheckpointError(f"checkpoint and --config {config_file} disagree on {', '.join(against_file)} "
                              f"(checkpoint: {', '.join(f'{k}={found[k]}' for k in against_file)}); pass the "
                              f"config the checkpoint was trained with")
    if conflicts and explicit:
        ck = spec.describe(replace(config, **found))
        raise CheckpointError(f"checkpoint is {ck}, x{scale}, but --variant {variant} is {spec.describe(config)} at "
                              f"x{scale}: use --variant {variant} --config YOUR_CONFIG or omit --variant")
    config = replace(config, **found)
    sources.update({k: "checkpoint" for k in found})
    bad = sorted(set(options) - set(sources))
    if bad:
        raise ModelError(f"{spec.name} has no architecture option {', '.join(bad)}")
    for k, v in options.items():
        if getattr(config, k) != v and sources.get(k) == "checkpoint":
            notes.append(f"{k}={v} forced by option (the checkpoint says {getattr(config, k)})")
    config = replace(config, **options)
    sources.update({k: "option" for k in options})
    if spec.arch_notes is not None:
        notes += spec.arch_notes(config, sources)
    return Architecture(spec.name, _named_variant(spec, scale, config), scale, config, sources,
                        spec.config_multiple(config), ck_scale, tuple(notes), spec.describe(config))


# -- official config file formats ---------------------------------------------------------------------------

def read_yaml(path: Path) -> Dict[str, Any]:
    """A YAML mapping (LIPT's config/*.yml)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ModelError(f"cannot read config {path} ({type(exc).__name__}); pass the .yml you trained with") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a YAML mapping of settings; pass the .yml you trained with")
    return data


def read_kair_json(path: Path) -> Dict[str, Any]:
    """A KAIR option file (JSON with // comments, as KAIR's own parser strips them)."""
    try:
        text = "\n".join(line.split("//")[0] for line in path.read_text().splitlines())
        data = json.loads(text)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read option file {path} ({type(exc).__name__}); pass the KAIR .json you trained "
                         f"with") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a KAIR option file")
    return data


def read_arguments(path: Path) -> Dict[str, str]:
    """``--name value`` pairs from a text file of command-line arguments (EDSR-style option sets)."""
    try:
        tokens = path.read_text().split()
    except OSError as exc:
        raise ModelError(f"cannot read argument file {path} ({exc.strerror})") from None
    out: Dict[str, str] = {}
    for i, tok in enumerate(tokens):
        if tok.startswith("--"):
            key, _, val = tok[2:].partition("=")
            if not val and i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                val = tokens[i + 1]
            out[key.replace("-", "_")] = val or "true"
    return out


def count_indices(keys, pattern: str) -> int:
    """How many distinct integers ``(\\d+)`` in ``pattern`` occur among ``keys`` (blocks, units, layers)."""
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in keys for m in [rx.match(k)] if m}
    return max(found) + 1 if found else 0


def fixed_arch_arguments(family: str, fixed: Mapping[str, int]):
    """A ``read_config_file`` for an EDSR-style family with a fixed architecture (SMSR, ESRT): the argument set
    the user trained with (``--scale 2 --n_feats 64 ...`` in a text file) must match the published architecture;
    it contributes its scale."""
    def read(path: Path) -> Dict[str, Any]:
        args = read_arguments(path)
        for key, want in fixed.items():
            if key in args and int(args[key]) != want:
                raise ModelError(f"{path}: --{key} {args[key]} differs from {family}'s published {key} {want}; "
                                 f"only the published architecture is supported")
        return {"scale": int(args["scale"].split("+")[0])} if "scale" in args else {}
    return read
