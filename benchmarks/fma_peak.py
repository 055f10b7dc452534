"""fp32 FMA peak of this CPU for the graph-speed scripts (issue 26 parts 2/3): the shared register-only kernel of
:mod:`lipt_export.validation.peak` (what `bench` uses), on ``threads`` threads at once, each timed by its own CPU
time. The tables in docs/benchmarks.md from before that module landed used a wall-clock stand-in; see there.

    .venv/bin/python benchmarks/fma_peak.py --threads 2
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lipt_export.validation.peak import measure_peaks  # noqa: E402


def _fp32(threads: int):
    peak = measure_peaks(threads).peaks.get("fp32")
    if peak is None or peak.not_measured:
        raise SystemExit(f"no fp32 FMA peak here: {peak.not_measured if peak else 'no kernels'}")
    return peak


def isa() -> str:
    return str(_fp32(2).isa)


def fma_peak_gflops(threads: int = 2) -> float:
    return float(_fp32(threads).all_threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print(f"{isa()}: fp32 FMA peak {fma_peak_gflops(args.threads):.1f} GFLOP/s on {args.threads} threads")


if __name__ == "__main__":
    main()
