"""Small parsers shared by the commands."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import click

from lipt_export.catalog import FAMILIES
from lipt_export.errors import UsageError
from lipt_export.fileio import writable_dir_problem


def parse_size(text: str) -> Tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"'{text}' is not HxW (e.g. 37x51)") from None
    if h < 1 or w < 1:
        raise click.BadParameter(f"'{text}': sizes must be positive")
    return h, w


def parse_int_list(text: Optional[str]) -> List[int]:
    if not text:
        return []
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"'{text}' is not a comma-separated list of integers") from None


def parse_runtimes(text: Optional[str]) -> Optional[List[str]]:
    """A --runtimes list ("onnxruntime,openvino-f32") as names, or None when not given."""
    return [r.strip() for r in text.split(",") if r.strip()] if text else None


def arch_options(model: str, agileir_attention: str) -> Dict[str, str]:
    """Architecture overrides from family-specific flags (left to the checkpoint when 'auto')."""
    if agileir_attention == "auto":
        return {}
    if model.lower() != "agileir":
        raise UsageError(f"--agileir-attention is for --model agileir, not {model}")
    return {"attention": agileir_attention}


def check_output_file(path: str, flag: str) -> None:
    """A file the command will write at the end: its folder must exist (or be creatable) and be writable."""
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{flag} {path} is a folder; pass a file name")
    problem = writable_dir_problem(target.parent if str(target.parent) else Path("."))
    if problem:
        raise UsageError(f"cannot write {flag} {path}: {problem}")


def write_models_table(formatter) -> None:
    """The model table (families, variants, scales, default variant) at the end of a command's help."""
    formatter.write("\nModels (variants; scales):\n")
    for name, fam in sorted(FAMILIES.items()):
        formatter.write(f"  {name:8s} {', '.join(fam.variants)}; x{', x'.join(map(str, fam.scales))}"
                        f"  (default variant {fam.default_variant})\n")
