"""`lipt-export bench`: latency of artifacts on natural inputs (median after warm-up), as a table + JSON."""
from __future__ import annotations

import click

from lipt_export.cli.options import parse_size
from lipt_export.errors import UsageError
from lipt_export.fileio import write_json_atomic
from lipt_export.report import format_table
from lipt_export.runtime.loader import load_runner
from lipt_export.validation.bench import expand_artifacts, time_runner
from lipt_export.validation.inputs import natural_inputs


@click.command("bench")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path())
@click.option("--size", default="128x128", show_default=True, help="LR input HxW.")
@click.option("--runs", default=10, show_default=True, type=int)
@click.option("--warmup", default=2, show_default=True, type=int)
@click.option("--threads", default=None, type=int, help="ONNX Runtime intra-op threads (default: all cores, max 8).")
@click.option("--json", "json_path", default=None, type=click.Path(), help="Also write the results here.")
def command(artifacts, size, runs, warmup, threads, json_path):
    """Time ARTIFACTS (ONNX files, engines, or export directories = every artifact in them)."""
    h, w = parse_size(size)
    if runs < 1:
        raise UsageError("--runs must be at least 1")
    x = natural_inputs([(h, w)], seed=0)[0]
    results = []
    paths = [p for a in artifacts for p in expand_artifacts(a)]
    for path in paths:
        runner = load_runner(path, threads=threads)
        stats = time_runner(runner, x, runs, warmup)
        results.append({"artifact": str(path), "precision": runner.precision, "device": runner.device,
                        **{k: round(v, 3) for k, v in stats.items()}})
    click.echo(f"LR {h}x{w}, median of {runs} runs after {warmup} warm-ups")
    click.echo(format_table(("artifact", "precision", "device", "median ms", "min ms", "p90 ms"),
                            [[r["artifact"], r["precision"], r["device"], f"{r['median_ms']:.1f}",
                              f"{r['min_ms']:.1f}", f"{r['p90_ms']:.1f}"] for r in results]))
    if json_path:
        write_json_atomic(json_path, {"size": [h, w], "runs": runs, "results": results})
