"""Is the machine quiet enough to time on? Samples of ``/proc/stat`` (all CPUs' busy and steal time) and of this
process's own CPU time (``/proc/self/stat``, every thread) taken around a timed round give the CPUs that *other*
processes kept busy meanwhile and the share the hypervisor stole; a round where either exceeds
:class:`NoiseLimits` is not a fair measurement. Pure functions on parsed samples, so the rule is testable
without a busy machine; :func:`sample` is None where there is no ``/proc`` (then nothing is dropped, and reports
say the load was not measured).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Optional, Tuple

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class CpuSample:
    wall: float  # time.monotonic()
    busy: int  # jiffies, all CPUs: user + nice + system + irq + softirq (guest time is inside user)
    steal: int
    total: int  # every field of the "cpu" line
    own: int  # this process's utime + stime, all threads


@dataclass(frozen=True)
class Noise:
    """What happened on the machine between two samples."""

    seconds: float
    other_cores: float  # CPUs kept busy by other processes (0 = none, 1 = one whole core)
    steal_pct: float  # of all CPU time

    def describe(self) -> str:
        return f"other processes {self.other_cores:.2f} cores, steal {self.steal_pct:.1f} %"


@dataclass(frozen=True)
class NoiseLimits:
    """A round is dropped when other processes used more than ``max_other_cores`` CPUs or more than
    ``max_steal_pct`` of the CPU time was stolen while it ran."""

    max_other_cores: float = 0.5
    max_steal_pct: float = 5.0


def parse_proc_stat(text: str) -> Tuple[int, int, int]:
    """(busy, steal, total) jiffies from the aggregate ``cpu`` line of /proc/stat."""
    fields = [int(v) for v in text.split("\n", 1)[0].split()[1:]]
    fields += [0] * (8 - len(fields))
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq, steal, sum(fields[:8])


def parse_self_stat(text: str) -> int:
    """utime + stime jiffies from /proc/<pid>/stat (fields after the parenthesised command name)."""
    rest = text.rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])  # fields 14 and 15 of proc(5)


def sample() -> Optional[CpuSample]:
    try:
        with open("/proc/stat") as f:
            stat = f.readline()
        with open("/proc/self/stat") as f:
            own = parse_self_stat(f.read())
    except (OSError, ValueError, IndexError):
        return None
    busy, steal, total = parse_proc_stat(stat)
    return CpuSample(time.monotonic(), busy, steal, total, own)


def noise_between(a: CpuSample, b: CpuSample, clk_tck: int = CLK_TCK) -> Noise:
    seconds = max(b.wall - a.wall, 1e-9)
    others = max(0, (b.busy - a.busy) - (b.own - a.own)) / clk_tck / seconds
    steal = 100.0 * (b.steal - a.steal) / max(1, b.total - a.total)
    return Noise(seconds, others, steal)


def noisy_reason(noise: Noise, limits: NoiseLimits = NoiseLimits()) -> Optional[str]:
    """Why a round measured under ``noise`` does not count, or None."""
    if noise.other_cores > limits.max_other_cores:
        return f"other processes used {noise.other_cores:.2f} cores (> {limits.max_other_cores:g})"
    if noise.steal_pct > limits.max_steal_pct:
        return f"CPU steal {noise.steal_pct:.1f} % (> {limits.max_steal_pct:g} %)"
    return None


def load_average() -> Optional[Tuple[float, float, float]]:
    try:
        return os.getloadavg()
    except OSError:
        return None
