"""What can be exported, as plain data: family -> variants, scales, default variant. It lets the command line
check --model/--variant/--scale (and print its help) without importing torch and the model code; a test keeps it
equal to the registry (lipt_export.models.registry), which is the source of truth."""
from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Tuple

from lipt_export.errors import ModelError


class Family(NamedTuple):
    variants: Tuple[str, ...]
    scales: Tuple[int, ...]
    default_variant: str


FAMILIES: Dict[str, Family] = {
    "agileir": Family(("v2", "medium", "normal", "light"), (2, 3, 4), "normal"),
    "esrt": Family(("base",), (2, 3, 4), "base"),
    "lipt": Family(("tiny", "small", "base"), (1, 2, 3, 4), "small"),
    "smsr": Family(("base",), (2, 3, 4), "base"),
}


def check_choice(model: str, variant: Optional[str], scale: int) -> None:
    """The registry's errors, word for word, before anything heavy is imported."""
    family = FAMILIES.get(model.lower())
    if family is None:
        raise ModelError(f"unknown model '{model}'; choose one of: {', '.join(sorted(FAMILIES))}")
    if variant is not None and variant not in family.variants:
        raise ModelError(f"model '{model.lower()}' has no variant '{variant}'; choose one of: "
                         f"{', '.join(family.variants)}")
    if scale not in family.scales:
        raise ModelError(f"model '{model.lower()}' does not support scale {scale}; supported scales: "
                         f"{', '.join(map(str, family.scales))}")
