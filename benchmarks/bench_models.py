"""ESRT and AgileIR: export wall time (per stage) and latency of the eager graphs vs ONNX Runtime fp32.
Prints a table and writes JSON.

    .venv/bin/python benchmarks/bench_models.py --runs 10 --threads 2

Defaults: ESRT x4 on one 64x64 LR tile (its recommended tile), AgileIR `normal` x2 on 128x128. Demo weights
(`init_for_tests`, seed 0); latency does not depend on the values. Median (and min) of --runs after 2
warm-ups, the runners taking turns in every round.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lipt_export.validation.bench import interleaved_ms  # noqa: E402
from lipt_export.export.pipeline import ExportConfig, run_export  # noqa: E402
from lipt_export.report import format_table  # noqa: E402
from lipt_export.models.io import UnitRangeIO  # noqa: E402
from lipt_export.models.registry import build_model  # noqa: E402
from lipt_export.models.reparam import reparameterize_model  # noqa: E402
from lipt_export.runtime.eager import TorchRunner  # noqa: E402
from lipt_export.runtime.ort import OnnxRuntimeRunner  # noqa: E402
from lipt_export.validation.inputs import natural_inputs  # noqa: E402


def bench_one(model: str, variant: str, scale: int, size: int, runs: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = run_export(ExportConfig(model=model, variant=variant, scale=scale, out=tmp, lint=False,
                                      backend="onnxruntime"))
        export_wall = time.perf_counter() - t0
        spec, variant, train = build_model(model, variant, scale)
        spec.init_for_tests(train, 0)
        deploy = reparameterize_model(train)
        x = natural_inputs([(size, size)], seed=1)[0]
        runners = [TorchRunner(UnitRangeIO(train, spec.rgb_range), name="eager train graph"),
                   TorchRunner(UnitRangeIO(deploy, spec.rgb_range), name="eager deploy graph"),
                   OnnxRuntimeRunner(res.out_dir / "model.onnx", name="ORT fp32", threads=threads)]
        latency, fastest = interleaved_ms(runners, x, runs, say=print)
        nodes = res.manifest["artifacts"][0]["nodes"]
    return {"model": model, "variant": variant, "scale": scale, "size": size, "latency_ms": latency,
            "latency_min_ms": fastest,
            "export_stages_s": res.timings, "export_total_s": export_wall, "onnx_nodes": nodes,
            "params_deploy": sum(p.numel() for p in deploy.parameters()),
            "parity_rel_l2": res.parity[0].rel_l2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--esrt-scale", type=int, default=4)
    ap.add_argument("--esrt-size", type=int, default=64, help="ESRT LR tile H = W")
    ap.add_argument("--agileir-variant", default="normal")
    ap.add_argument("--agileir-scale", type=int, default=2)
    ap.add_argument("--agileir-size", type=int, default=128, help="AgileIR LR input H = W")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="benchmarks/results/bench_models.json")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    results = [bench_one("esrt", "base", args.esrt_scale, args.esrt_size, args.runs, args.threads),
               bench_one("agileir", args.agileir_variant, args.agileir_scale, args.agileir_size, args.runs,
                         args.threads)]
    rows = []
    for r in results:
        lat = r["latency_ms"]
        rows.append([f"{r['model']}-{r['variant']} x{r['scale']}", f"{r['size']}x{r['size']}",
                     f"{r['export_total_s']:.1f}", f"{r['export_stages_s']['onnx']:.1f}", str(r["onnx_nodes"]),
                     f"{lat['eager train graph']:.1f}", f"{lat['eager deploy graph']:.1f}", f"{lat['ORT fp32']:.1f}",
                     f"{r['latency_min_ms']['eager deploy graph']:.1f} / {r['latency_min_ms']['ORT fp32']:.1f}",
                     f"{lat['eager deploy graph'] / lat['ORT fp32']:.2f}x", f"{r['parity_rel_l2']:.1e}"])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{args.threads} threads, median of {args.runs} interleaved runs after 2 warm-ups; "
          f"1-min load average {load:.1f}")
    print(format_table(("model", "LR size", "export s (total)", "onnx stage s", "nodes", "eager train ms",
                        "eager deploy ms", "ORT fp32 ms", "min deploy / ORT ms",
                        "ORT vs eager deploy", "parity rel-L2"), rows))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"threads": args.threads, "runs": args.runs, "load_average_1min": load,
                               "results": results}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
