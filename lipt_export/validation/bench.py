"""Latency measurement: several runners interleaved within every round, rounds on a busy machine dropped.

Every timing says what the machine was doing: the load average and CPU steal before and after, how many rounds
ran and how many were dropped and why (other processes' CPU or steal above :class:`NoiseLimits`, sampled around
each round: :mod:`lipt_export.validation.machine_load`), and the spread of what was kept (min-max, IQR). Rounds
continue until ``runs`` quiet rounds give a stable median (every runner's IQR within ``spread_pct`` of its
median), bounded by ``max_rounds`` and ``max_seconds``; when fewer than ``runs`` rounds were quiet, all rounds
count and the report says the machine was busy (:attr:`TimingReport.noisy`).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from lipt_export.runtime.loader import checked_artifact, open_export
from lipt_export.validation.machine_load import NoiseLimits, load_average, noise_between, noisy_reason, sample


def expand_artifacts(target: str) -> List[Path]:
    """An export directory (or its manifest) stands for every artifact it lists, each checked."""
    p = Path(target)
    if p.is_dir() or p.name == "manifest.json":
        man = open_export(p)
        return [checked_artifact(man, a).path for a in man.artifacts]
    return [p]


def interleaved_ms(runners, x, runs: int, warmup: int = 2, say: Optional[Callable[[str], None]] = None
                   ) -> Tuple[Dict[str, float], Dict[str, float]]:
    """(median ms, min ms) per runner name, from :func:`interleaved_stats`."""
    stats = interleaved_stats(runners, x, runs, warmup, say=say)
    return ({k: v["median_ms"] for k, v in stats.items()}, {k: v["min_ms"] for k, v in stats.items()})


# Between two timed runs: ONNX Runtime's intra-op threads spin after a run; without a pause they steal the cores
# from the next runner (measured: SMSR x2 fp32 82 ms alone, 129 ms interleaved with two other sessions, 84 ms
# with a 0.1 s pause).
PAUSE_S = 0.1
SPREAD_PCT = 10.0  # a median is stable when the IQR of the kept rounds is within this share of it
MAX_SECONDS = 120.0  # no new round after this (warm-up excluded), once ``runs`` rounds ran


@dataclass
class TimingReport:
    """Per-runner statistics of the rounds kept, and the conditions they were measured under."""

    stats: Dict[str, Dict[str, float]]
    rounds: int  # timed rounds run
    kept: int  # rounds the statistics come from
    dropped: List[str] = field(default_factory=list)  # "round i: why", one per dropped round
    load_before: Optional[Tuple[float, float, float]] = None
    load_after: Optional[Tuple[float, float, float]] = None
    steal_pct: Optional[float] = None  # over the whole timing
    noisy: Optional[str] = None  # why the result is not to be trusted, or None
    limits: NoiseLimits = field(default_factory=NoiseLimits)

    @property
    def quiet(self) -> int:
        """Rounds no other work disturbed (``kept`` counts every round when too few were quiet)."""
        return self.rounds - len(self.dropped)

    def summary(self) -> str:
        """One line: load and steal around the timing, rounds kept/dropped, spread."""
        load = ("load average not measured" if self.load_before is None else
                f"load average {self.load_before[0]:.2f} -> {self.load_after[0]:.2f}")
        steal = "" if self.steal_pct is None else f", steal {self.steal_pct:.1f} %"
        spread = max((s["iqr_ms"] / s["median_ms"] * 100 for s in self.stats.values() if s["median_ms"] > 0),
                     default=0.0)
        drop = ""
        if self.dropped:
            drop = f", {len(self.dropped)} dropped ({self.dropped[0].split(': ', 1)[1]}" + (
                ", ..." if len(self.dropped) > 1 else "") + ")"
        kept = (f"{self.quiet} of {self.rounds} rounds quiet, all counted" if self.noisy else
                f"{self.kept} of {self.rounds} rounds kept")
        text = f"{load}{steal}; {kept}{drop}; IQR <= {spread:.1f} % of the median"
        return text + (f"; BUSY MACHINE: {self.noisy}" if self.noisy else "")

    def to_dict(self) -> Dict[str, Any]:
        return {"rounds": self.rounds, "kept": self.kept, "dropped": list(self.dropped),
                "load_before": list(self.load_before) if self.load_before else None,
                "load_after": list(self.load_after) if self.load_after else None, "steal_pct": self.steal_pct,
                "noisy": self.noisy, "limits": {"max_other_cores": self.limits.max_other_cores,
                                                "max_steal_pct": self.limits.max_steal_pct}}


def _stats(t: List[float]) -> Dict[str, float]:
    t = sorted(t)
    q = statistics.quantiles(t, n=4, method="inclusive") if len(t) > 1 else [t[0]] * 3
    return {"median_ms": statistics.median(t), "min_ms": t[0], "max_ms": t[-1], "q1_ms": q[0], "q3_ms": q[2],
            "iqr_ms": q[2] - q[0], "p90_ms": t[min(len(t) - 1, int(0.9 * len(t)))], "rounds": len(t)}


def interleaved_timing(runners: Sequence[Any], x, runs: int, warmup: int = 2, pause_s: float = PAUSE_S,
                       progress: Optional[Callable[[int], None]] = None, limits: NoiseLimits = NoiseLimits(),
                       max_rounds: Optional[int] = None, max_seconds: float = MAX_SECONDS,
                       spread_pct: float = SPREAD_PCT) -> TimingReport:
    """Time ``runners`` (objects with ``name`` and ``infer(x)``) taking turns within every round, so drift or load
    from other processes hits all of them alike; ``pause_s`` before each timed run lets the previous runner's
    spinning threads park. At least ``runs`` rounds, at most ``max_rounds`` (default 3 x runs) and no new round
    after ``max_seconds``. ``progress(1)`` after every round (warm-up rounds included)."""
    max_rounds = max(runs, max_rounds if max_rounds is not None else 3 * runs)
    if not runners:
        return TimingReport({}, 0, 0)
    for _ in range(warmup):
        for r in runners:
            r.infer(x)
        if progress:
            progress(1)
    load_before, first = load_average(), sample()
    quiet: Dict[str, List[float]] = {r.name: [] for r in runners}
    every: Dict[str, List[float]] = {r.name: [] for r in runners}
    dropped: List[str] = []
    t_start, rounds = time.monotonic(), 0
    while rounds < max_rounds:
        before = sample()
        times = {}
        for r in runners:
            if pause_s and len(runners) > 1:
                time.sleep(pause_s)
            t0 = time.perf_counter()
            r.infer(x)
            times[r.name] = (time.perf_counter() - t0) * 1e3
        after = sample()
        why = noisy_reason(noise_between(before, after), limits) if before and after else None
        for name, ms in times.items():
            every[name].append(ms)
            if why is None:
                quiet[name].append(ms)
        if why:
            dropped.append(f"round {rounds}: {why}")
        rounds += 1
        if progress:
            progress(1)
        kept = len(quiet[runners[0].name])
        if rounds >= runs and time.monotonic() - t_start > max_seconds:
            break
        if kept >= runs and all(_stats(t)["iqr_ms"] <= spread_pct / 100 * _stats(t)["median_ms"]
                                for t in quiet.values()):
            break
    last = sample()
    kept = len(quiet[runners[0].name])
    noisy = None
    if kept < runs:
        noisy = (f"only {kept} of {rounds} rounds were quiet ({runs} wanted): the medians include busy rounds; "
                 f"time again on a quiet machine")
        use, kept = every, rounds
    else:
        use = quiet
    steal = noise_between(first, last).steal_pct if first and last else None
    return TimingReport({name: _stats(t) for name, t in use.items()}, rounds, kept, dropped, load_before,
                        load_average(), steal, noisy, limits)


def interleaved_stats(runners, x, runs: int, warmup: int = 2, pause_s: float = PAUSE_S,
                      progress: Optional[Callable[[int], None]] = None, say: Optional[Callable[[str], None]] = None
                      ) -> Dict[str, Dict[str, float]]:
    """{name: {median_ms, min_ms, max_ms, q1_ms, q3_ms, iqr_ms, p90_ms, rounds}}: :func:`interleaved_timing`'s
    statistics; ``say`` (e.g. ``print``) is given its one-line summary of the conditions (load, steal, rounds
    dropped, spread)."""
    report = interleaved_timing(runners, x, runs, warmup, pause_s, progress)
    if say is not None:
        say(f"timing: {report.summary()}")
    return report.stats
