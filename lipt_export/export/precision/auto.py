"""``--precision auto``: per target GPU, the cheapest precision whose measured PSNR-Y drop stays in the budget.

Every candidate file (fp16, bf16, int8, fp8) is measured on the same held-out pairs (:mod:`.calibration.heldout`:
the calibration folder's held-out images, never used for ranges) against the fp32 file, each executed on the CPU
as lipt-export executes it (ONNX Runtime; BF16 widened, see :func:`lipt_export.runtime.ort.widen_bf16`). A target
then takes the first precision of ``catalog.AUTO_ORDER`` (FP8 > INT8 > FP16 > BF16 > FP32: cheapest first as the GPU
executes it) that it can run (``catalog.precision_skip_reason``: no FP8 below 8.9, no BF16 below 8.0) and whose drop
is within ``--max-psnr-drop``; FP32 always qualifies.

On TensorRT-RTX INT8 is weight-only (``catalog.RTX_INT8_NOTE``): INT8 ranks above FP16 for the smaller engine and
memory, not for INT8 tensor-core speed, and every choice of INT8 says so.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Mapping, Sequence

from lipt_export.catalog import AUTO_ORDER, RTX_INT8_NOTE, precision_skip_reason
from lipt_export.export.precision.calibration.heldout import HeldOut
from lipt_export.manifest import PrecisionAuto, TargetChoice


def measure_drops(held: HeldOut, files: Mapping[str, Path]) -> Dict[str, float]:
    """PSNR-Y drop of each file (precision -> path) against the fp32 file on the held-out pairs (fp32: 0)."""
    held.measure_fp32()
    return {p: (0.0 if p == "fp32" else round(held.drop(path), 4)) for p, path in files.items()}


def choose(drops: Mapping[str, float], capabilities: Sequence[str], budget: float, heldout: str,
           flavor: str = "tensorrt-rtx") -> PrecisionAuto:
    """The choice per compute capability (see the module doc)."""
    rtx = flavor != "tensorrt"  # the targets are TensorRT-RTX's unless datacenter TensorRT builds for this GPU
    targets = []
    for cc in capabilities:
        runs = [p for p in AUTO_ORDER if p in drops and precision_skip_reason(cc, p) is None]
        passed = [p for p in runs if p == "fp32" or drops[p] <= budget]
        pick = passed[0] if passed else "fp32"
        before = [p for p in runs[:runs.index(pick)]] if pick in runs else []
        why = f"{pick}: drop {drops.get(pick, 0.0):.3f} dB <= {budget:g} dB"
        if before:
            why += "; cheaper but over the budget: " + ", ".join(f"{p} {drops[p]:.3f} dB" for p in before)
        cannot = [p for p in AUTO_ORDER if p in drops and p not in runs]
        if cannot:
            why += f"; {cc} cannot run " + ", ".join(cannot)
        if pick == "int8" and rtx:
            why += " (weight-only INT8 on TensorRT-RTX: a smaller engine, not INT8 tensor-core speed)"
        targets.append(TargetChoice(cc, pick, why, tuple(runs)))
    notes = (RTX_INT8_NOTE,) if rtx and "int8" in drops else ()
    return PrecisionAuto(budget, heldout, dict(drops), tuple(targets), notes)


def summary_lines(auto: PrecisionAuto) -> list:
    """One line per target: the choice and the measured drop of every candidate."""
    drops = ", ".join(f"{p} {auto.drops_db[p]:.3f}" for p in AUTO_ORDER if p in auto.drops_db and p != "fp32")
    lines = [f"precision auto (budget {auto.max_psnr_drop_db:g} dB PSNR-Y drop vs fp32 on {auto.heldout}): "
             f"measured drops {drops} dB"]
    for t in auto.targets:
        lines.append(f"  {t.compute_capability}: {t.precision}  ({t.why})")
    lines += [f"  note: {note}" for note in auto.notes]
    return lines
