"""LIPT latency: eager training graph vs eager deploy graph vs ONNX Runtime fp32 (and fp16), plus the
wall time of each export stage. Prints a table and writes JSON.

    .venv/bin/python benchmarks/bench_lipt.py --variant small --scale 4 --size 128 --runs 15 --threads 2 --fp16 --profile
"""
from __future__ import annotations

import argparse
import json
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="lipt")
    ap.add_argument("--variant", default="small")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--size", type=int, default=128, help="LR input H = W")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fp16", action="store_true", help="also time the FP16 ONNX")
    ap.add_argument("--profile", action="store_true",
                    help="also profile ORT fp32 (3 runs) for its Conv share and the ceiling it puts on ORT vs eager")
    ap.add_argument("--json", default="benchmarks/results/bench_lipt.json")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = run_export(ExportConfig(model=args.model, variant=args.variant, scale=args.scale, out=tmp,
                                      fp16=args.fp16, lint=False, backend="onnxruntime"))
        export_wall = time.perf_counter() - t0
        spec, variant, train = build_model(args.model, args.variant, args.scale)
        spec.init_for_tests(train, 0)
        deploy = reparameterize_model(train)
        x = natural_inputs([(args.size, args.size)], seed=1)[0]
        runners = [TorchRunner(UnitRangeIO(train, spec.rgb_range), name="eager train graph"),
                   TorchRunner(UnitRangeIO(deploy, spec.rgb_range), name="eager deploy graph"),
                   OnnxRuntimeRunner(res.out_dir / "model.onnx", name="ORT fp32", threads=args.threads)]
        if args.fp16:
            runners.append(OnnxRuntimeRunner(res.out_dir / "model.fp16.onnx", name="ORT fp16",
                                             threads=args.threads))
        latency, _ = interleaved_ms(runners, x, args.runs, say=print)
        conv_share = None
        if args.profile:
            from profile_ort import profile  # benchmarks/profile_ort.py

            per_op, _, _, _ = profile(res.out_dir / "model.onnx", args.size, 3, args.threads)
            conv_share = per_op.get("Conv", 0.0) / sum(per_op.values())

    base = latency["eager train graph"]
    rows = [[name, f"{ms:.1f}", f"{base / ms:.2f}x"] for name, ms in latency.items()]
    print(f"\n{args.model}-{variant} x{args.scale}, LR {args.size}x{args.size}, {args.threads} threads, "
          f"median of {args.runs} interleaved rounds after 2 warm-ups")
    print(format_table(("runner", "median ms", "speed-up vs train graph"), rows))
    print(f"\ndeploy vs train graph: {base / latency['eager deploy graph']:.2f}x;  ORT fp32 vs eager deploy: "
          f"{latency['eager deploy graph'] / latency['ORT fp32']:.2f}x")
    ceiling = None
    if conv_share is not None:
        # Conv kernels alone, even if every other ORT op took no time, bound ORT's speed-up over eager deploy
        conv_ms = conv_share * latency["ORT fp32"]
        ceiling = latency["eager deploy graph"] / conv_ms
        print(f"ORT fp32 Conv kernels: {100 * conv_share:.1f}% of its time (~{conv_ms:.0f} ms); with every other "
              f"op free ORT would be at most {ceiling:.2f}x faster than eager deploy")
    stages = [[k, f"{v:.2f}"] for k, v in res.timings.items()] + [["total (export + parity)", f"{export_wall:.2f}"]]
    print("\nexport stages (s)")
    print(format_table(("stage", "seconds"), stages))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "variant": variant, "scale": args.scale, "size": args.size,
                               "threads": args.threads, "runs": args.runs, "latency_ms": latency,
                               "export_stages_s": res.timings, "export_total_s": export_wall,
                               "ort_conv_share": conv_share, "ort_vs_eager_deploy_ceiling": ceiling}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
