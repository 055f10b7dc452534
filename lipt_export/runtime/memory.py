"""Will a run fit this machine's memory? Checked before the work, so an impossible size is one line, not an
allocation of 120 GB."""
from __future__ import annotations

import os
from typing import Optional

from lipt_export.catalog import family

# A run holds its input, its output and a few intermediates of the largest size at once.
LIVE_TENSORS = 4


def available_memory() -> int:
    """Bytes of memory available to start new work (MemAvailable; the free physical pages elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def whole_image_problem(model: str, scale: int, h: int, w: int) -> Optional[str]:
    """Why running an (h, w) LR image whole through ``model`` cannot fit this machine's memory (None when it may):
    float32 x the largest tensor the graph holds (:meth:`lipt_export.catalog.Family.tensor_elements`) x a few
    live tensors, against the memory available now."""
    need = 4 * LIVE_TENSORS * family(model).tensor_elements(scale, 1, h, w)
    have = available_memory()
    if need <= have:
        return None
    return (f"{h}x{w} run whole through {model} x{scale} needs at least {need / 2**30:,.1f} GiB, this machine has "
            f"{have / 2**30:,.1f} GiB available")
