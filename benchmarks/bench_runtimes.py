"""CPU runtimes x inference precision x intra-op threads for one export: latency and output PSNR.

Rows: every ONNX artifact of the export on ONNX Runtime and on OpenVINO (f32 and bf16 asked; the precision
OpenVINO compiled for is what the row is named after), each at 1 and 2 intra-op threads. All runners are built
first, then take turns within every round (interleaved), warm-up excluded; median and p90 per runner. PSNR is
the output against ONNX Runtime running the fp32 file (clamped to [0, 1]) on the same synthetic input.

    .venv/bin/python benchmarks/bench_runtimes.py exports/lipt-small-x4 --size 64 --runs 15

Results: a table on stdout and benchmarks/results/runtimes.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lipt_export.report import format_table  # noqa: E402
from lipt_export.runtime.loader import checked_artifact, open_export  # noqa: E402
from lipt_export.runtime.openvino import OpenVinoRunner, openvino_status  # noqa: E402
from lipt_export.runtime.ort import OnnxRuntimeRunner  # noqa: E402
from lipt_export.validation.bench import interleaved_stats  # noqa: E402
from lipt_export.validation.inputs import natural_inputs  # noqa: E402
from lipt_export.validation.metrics import psnr  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export")
    ap.add_argument("--size", type=int, default=64, help="LR side")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "runtimes.json"))
    args = ap.parse_args()
    man = open_export(args.export)
    x = natural_inputs([(args.size, args.size)], seed=0)[0]
    runners, meta = [], {}
    for entry in (e for e in man.artifacts if e.format == "onnx"):
        path = checked_artifact(man, entry).path
        for t in (int(v) for v in args.threads.split(",")):
            made = [OnnxRuntimeRunner(path, threads=t)]
            if openvino_status()[0]:
                made += [OpenVinoRunner(path, p, precision=entry.precision, threads=t) for p in ("f32", "bf16")]
            for r in made:
                runtime = "onnxruntime" if isinstance(r, OnnxRuntimeRunner) else r.name.split("@", 1)[1]
                r.name = f"{path.name} {runtime} t{t}"
                runners.append(r)
                meta[r.name] = {"artifact": path.name, "precision": entry.precision, "runtime": runtime, "threads": t}
    ref_runner = next(r for r in runners if meta[r.name]["runtime"] == "onnxruntime"
                      and meta[r.name]["precision"] == "fp32")
    ref = np.clip(ref_runner.infer(x), 0, 1)
    stats = interleaved_stats(runners, x, args.runs, warmup=2, say=print)
    base = stats[ref_runner.name]["median_ms"]
    rows, results = [], []
    for r in runners:
        out = np.clip(r.infer(x), 0, 1)
        res = {**meta[r.name], **{k: round(v, 2) for k, v in stats[r.name].items()},
               "speedup_vs_ort_fp32": round(base / stats[r.name]["median_ms"], 2),
               "psnr_vs_ort_fp32_db": round(float(psnr(out, ref)), 1)}
        results.append(res)
        rows.append([r.name, f"{res['median_ms']:.1f}", f"{res['p90_ms']:.1f}", f"{res['speedup_vs_ort_fp32']:.2f}x",
                     f"{res['psnr_vs_ort_fp32_db']:.1f}"])
    print(f"{man.model.label}, LR {args.size}x{args.size}, median of {args.runs} interleaved rounds; reference: "
          f"{ref_runner.name}")
    print(format_table(["artifact runtime threads", "median ms", "p90 ms", "speed-up", "PSNR vs ORT fp32 dB"], rows))
    load = os.getloadavg()
    print(f"load average {load[0]:.2f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "export": man.model.label,
                                           "size": args.size, "runs": args.runs, "load_avg": load,
                                           "results": results}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
