"""Small checkpoints in the official layouts, for tests that need a real --weights file."""
from __future__ import annotations

from pathlib import Path

import torch


def small_agileir_checkpoint(folder: Path, name: str = "agileir_x2_G.pth") -> Path:
    """A small AgileIR (two groups of two blocks, window 8, E 24) x2 saved as KAIR saves it (a raw state dict),
    trained attention: its architecture is read back from the weights."""
    from lipt_export.models.agileir import AgileIR, AgileIRConfig
    from lipt_export.models.registry import get_spec

    model = AgileIR(AgileIRConfig(8, (2, 2), 24, (3, 3), (8, 8)), upscale=2)
    get_spec("agileir").init_for_tests(model, 0)
    path = Path(folder) / name
    torch.save(model.state_dict(), path)
    return path
