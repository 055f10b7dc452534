"""Small parsers shared by the commands."""
from __future__ import annotations

from typing import List, Optional, Tuple

import click


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
