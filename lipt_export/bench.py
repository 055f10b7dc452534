"""`lipt-export bench`: latency of artifacts on natural inputs (median after warm-up), as a table + JSON."""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Dict, List, Tuple

import click


def time_runner(runner, x, runs: int, warmup: int) -> Dict[str, float]:
    for _ in range(warmup):
        runner.infer(x)
    times: List[float] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        runner.infer(x)
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {"median_ms": statistics.median(times), "min_ms": times[0],
            "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))]}


def _expand(target: str) -> List[Path]:
    """An export directory (or its manifest) stands for every artifact it lists."""
    from lipt_export import manifest as mf

    p = Path(target)
    if p.is_dir() or p.name == mf.MANIFEST_NAME:
        root = p if p.is_dir() else p.parent
        return [root / a["path"] for a in mf.read_manifest(root)["artifacts"]]
    return [p]


def interleaved_ms(runners, x, runs: int, warmup: int = 2) -> Tuple[Dict[str, float], Dict[str, float]]:
    """(median ms, min ms) per runner name. The runners take turns within every round, so drift or load
    from other processes on a shared machine hits all of them alike."""
    for _ in range(warmup):
        for r in runners:
            r.infer(x)
    times: Dict[str, List[float]] = {r.name: [] for r in runners}
    for _ in range(runs):
        for r in runners:
            t0 = time.perf_counter()
            r.infer(x)
            times[r.name].append((time.perf_counter() - t0) * 1e3)
    return ({k: statistics.median(v) for k, v in times.items()}, {k: min(v) for k, v in times.items()})


@click.command("bench")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path())
@click.option("--size", default="128x128", show_default=True, help="LR input HxW.")
@click.option("--runs", default=10, show_default=True, type=int)
@click.option("--warmup", default=2, show_default=True, type=int)
@click.option("--threads", default=None, type=int, help="ONNX Runtime intra-op threads (default: all cores, max 8).")
@click.option("--json", "json_path", default=None, type=click.Path(), help="Also write the results here.")
def bench_command(artifacts, size, runs, warmup, threads, json_path):
    """Time ARTIFACTS (ONNX files, engines, or export directories = every artifact in them)."""
    from lipt_export.cli import _parse_size, fail
    from lipt_export.export.pipeline import format_table
    from lipt_export.manifest import write_json_atomic
    from lipt_export.serving import load_runner
    from lipt_export.validation import natural_inputs

    h, w = _parse_size(size)
    if runs < 1:
        fail("--runs must be at least 1")
    x = natural_inputs([(h, w)], seed=0)[0]
    results = []
    try:
        paths = [p for a in artifacts for p in _expand(a)]
        for path in paths:
            runner = load_runner(path, threads=threads)
            stats = time_runner(runner, x, runs, warmup)
            results.append({"artifact": str(path), "precision": runner.precision, "device": runner.device,
                            **{k: round(v, 3) for k, v in stats.items()}})
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as exc:
        fail(str(exc).splitlines()[0])
    click.echo(f"LR {h}x{w}, median of {runs} runs after {warmup} warm-ups")
    click.echo(format_table(("artifact", "precision", "device", "median ms", "min ms", "p90 ms"),
                            [[r["artifact"], r["precision"], r["device"], f"{r['median_ms']:.1f}",
                              f"{r['min_ms']:.1f}", f"{r['p90_ms']:.1f}"] for r in results]))
    if json_path:
        write_json_atomic(json_path, {"size": [h, w], "runs": runs, "results": results})
