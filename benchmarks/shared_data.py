"""Where the developers' ``shared/`` folder is (checkpoints, datasets): benchmarks pass it to the library
explicitly. Library code never looks for it."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]


def shared_dir() -> Optional[Path]:
    """``shared/`` beside the checkout (or $LIPT_EXPORT_SHARED), if present."""
    env = os.environ.get("LIPT_EXPORT_SHARED")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared")
    return next((c for c in candidates if c.is_dir()), None)


def default_calibration_dir() -> Optional[Path]:
    root = shared_dir()
    cand = root / "datasets" / "calib_urban100_001-010" if root else None
    return cand if cand is not None and cand.is_dir() else None
