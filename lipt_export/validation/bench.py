"""Latency measurement: one runner (median after warm-up) or several interleaved within every round."""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from lipt_export.runtime.loader import checked_artifact, open_export


def expand_artifacts(target: str) -> List[Path]:
    """An export directory (or its manifest) stands for every artifact it lists, each checked."""
    p = Path(target)
    if p.is_dir() or p.name == "manifest.json":
        man = open_export(p)
        return [checked_artifact(man, a).path for a in man.artifacts]
    return [p]


def interleaved_ms(runners, x, runs: int, warmup: int = 2) -> Tuple[Dict[str, float], Dict[str, float]]:
    """(median ms, min ms) per runner name, from :func:`interleaved_stats`."""
    stats = interleaved_stats(runners, x, runs, warmup)
    return ({k: v["median_ms"] for k, v in stats.items()}, {k: v["min_ms"] for k, v in stats.items()})


# Between two timed runs: ONNX Runtime's intra-op threads spin after a run; without a pause they steal the cores
# from the next runner (measured: SMSR x2 fp32 82 ms alone, 129 ms interleaved with two other sessions, 84 ms
# with a 0.1 s pause).
PAUSE_S = 0.1


def interleaved_stats(runners, x, runs: int, warmup: int = 2, pause_s: float = PAUSE_S,
                      progress: Optional[Callable[[int], None]] = None) -> Dict[str, Dict[str, float]]:
    """{name: {median_ms, min_ms, p90_ms}}. The runners take turns within every round, so drift or load from
    other processes on a shared machine hits all of them alike; ``pause_s`` before each timed run lets the
    previous runner's spinning threads park. ``progress(1)`` after every round (warm-up rounds included)."""
    for _ in range(warmup):
        for r in runners:
            r.infer(x)
        if progress:
            progress(1)
    times: Dict[str, List[float]] = {r.name: [] for r in runners}
    for _ in range(runs):
        for r in runners:
            if pause_s and len(runners) > 1:
                time.sleep(pause_s)
            t0 = time.perf_counter()
            r.infer(x)
            times[r.name].append((time.perf_counter() - t0) * 1e3)
        if progress:
            progress(1)
    out = {}
    for name, t in times.items():
        t.sort()
        out[name] = {"median_ms": statistics.median(t), "min_ms": t[0], "p90_ms": t[min(len(t) - 1, int(0.9 * len(t)))]}
    return out
