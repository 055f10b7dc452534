"""Where ONNX Runtime spends its time on one ONNX file: per-op-type kernel time from ORT's own profiler.

    .venv/bin/python benchmarks/profile_ort.py exports/lipt-small-x4/model.onnx --size 128 --runs 3

Prints op type, node count, total ms per forward and share; writes JSON. Use it before changing a graph
for speed: it tells which op kinds are worth the trouble.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lipt_export.report import format_table  # noqa: E402
from lipt_export.validation.inputs import natural_inputs  # noqa: E402


def profile(path: Path, size: int, runs: int, threads: int, level: str = "all"):
    """(ms per forward by op type, node count by op type, ms per node, model_run ms per timed run)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                     "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                     "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = os.path.join(tmp, "ort")
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        x = natural_inputs([(size, size)], seed=1)[0]
        x = x.astype(np.float16 if "float16" in inp.type else np.float32)
        for _ in range(runs + 1):  # the first run is the warm-up, dropped below
            sess.run(None, {inp.name: x})
        events = json.load(open(sess.end_profiling()))
    run_events = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    first_run_end = run_events[0]["ts"] + run_events[0]["dur"] if run_events else 0
    per_op = collections.defaultdict(float)
    count = collections.Counter()
    per_node = collections.defaultdict(float)
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["ts"] < first_run_end:
            continue
        op = e["args"].get("op_name", "?")
        per_op[op] += e["dur"] / 1000.0 / runs
        per_node[(e["name"][: -len("_kernel_time")], op)] += e["dur"] / 1000.0 / runs
    for (_, op) in per_node:
        count[op] += 1
    runs_ms = [e["dur"] / 1000.0 for e in run_events[1:]]
    return per_op, count, per_node, runs_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("onnx", type=Path)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--level", choices=("basic", "extended", "all"), default="all")
    ap.add_argument("--top-nodes", type=int, default=0, help="also list the N slowest nodes")
    ap.add_argument("--json", default="benchmarks/results/profile_ort.json")
    args = ap.parse_args()

    per_op, count, per_node, runs_ms = profile(args.onnx, args.size, args.runs, args.threads, args.level)
    total = sum(per_op.values())
    rows = [[op, str(count[op]), f"{ms:.1f}", f"{100 * ms / total:.1f}%"]
            for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1])]
    print(f"{args.onnx}: LR {args.size}x{args.size}, {args.threads} threads, optimisation '{args.level}', "
          f"mean of {args.runs} runs; model_run median {np.median(runs_ms):.1f} ms, kernels {total:.1f} ms")
    print(format_table(("op (after ORT's optimisations)", "nodes", "ms / forward", "share"), rows))
    if args.top_nodes:
        top = sorted(per_node.items(), key=lambda kv: -kv[1])[: args.top_nodes]
        print(format_table(("node", "op", "ms"), [[n, op, f"{ms:.2f}"] for (n, op), ms in top]))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"onnx": str(args.onnx), "size": args.size, "threads": args.threads,
                               "level": args.level, "model_run_ms": runs_ms,
                               "per_op_ms": per_op, "nodes": count}, indent=2))


if __name__ == "__main__":
    main()
