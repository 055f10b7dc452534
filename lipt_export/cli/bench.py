"""`lipt-export bench`: latency of artifacts on natural inputs (median after warm-up), as a table + JSON."""
from __future__ import annotations

import click

from lipt_export.cli.options import parse_size
from lipt_export.errors import UsageError
from lipt_export.fileio import write_json_atomic
from lipt_export.report import format_table
from lipt_export.runtime.loader import load_runner
from lipt_export.runtime.openvino import check_runtime
from lipt_export.validation.bench import expand_artifacts, interleaved_stats
from lipt_export.validation.inputs import natural_inputs


@click.command("bench")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path())
@click.option("--size", default="128x128", show_default=True, help="LR input HxW.")
@click.option("--runs", default=10, show_default=True, type=int)
@click.option("--warmup", default=2, show_default=True, type=int)
@click.option("--threads", default=None, type=int, help="ONNX Runtime intra-op threads (default: all cores, max 8).")
@click.option("--runtimes", default="onnxruntime", show_default=True,
              help="Comma-separated CPU runtimes for ONNX artifacts: onnxruntime, openvino-f32, openvino-bf16. "
                   "Runners take turns within every round (interleaved).")
@click.option("--json", "json_path", default=None, type=click.Path(), help="Also write the results here.")
def command(artifacts, size, runs, warmup, threads, runtimes, json_path):
    """Time ARTIFACTS (ONNX files, engines, or export directories = every artifact in them) on each runtime."""
    h, w = parse_size(size)
    if runs < 1:
        raise UsageError("--runs must be at least 1")
    wanted = [r.strip() for r in runtimes.split(",") if r.strip()]
    for rt in wanted:
        check_runtime(rt)
    x = natural_inputs([(h, w)], seed=0)[0]
    paths = [p for a in artifacts for p in expand_artifacts(a)]
    runners, sources = [], {}
    for path in paths:
        for rt in (wanted if str(path).endswith(".onnx") else ["onnxruntime"]):
            runner = load_runner(path, threads=threads, runtime=rt, tile=0)
            # OpenVINO's runner names the precision it compiled for, e.g. model.onnx@openvino-f32(asked bf16)
            label = runner.name.split("@", 1)[1] if "@" in runner.name else rt
            runner.name = f"{path.parent.name}/{path.name}@{label}"
            runners.append(runner)
            sources[runner.name] = (str(path), label)
    stats = interleaved_stats(runners, x, runs, warmup)
    results = [{"artifact": sources[r.name][0], "runtime": sources[r.name][1], "label": r.name,
                "precision": r.precision, "device": r.device,
                **{k: round(v, 3) for k, v in stats[r.name].items()}} for r in runners]
    click.echo(f"LR {h}x{w}, median of {runs} interleaved rounds after {warmup} warm-ups")
    click.echo(format_table(("artifact@runtime", "precision", "device", "median ms", "min ms", "p90 ms"),
                            [[r["label"], r["precision"], r["device"], f"{r['median_ms']:.1f}",
                              f"{r['min_ms']:.1f}", f"{r['p90_ms']:.1f}"] for r in results]))
    if json_path:
        write_json_atomic(json_path, {"size": [h, w], "runs": runs, "results": results})
