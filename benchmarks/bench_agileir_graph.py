"""AgileIR's graph diet, before/after in one run: the SwinIR formulation (tokens (B, H*W, C); per block roll,
6-D window partition/merge and size arithmetic; per head Slice/Split/3 reshapes/scale Mul) against the graph
lipt-export exports (window-order tokens, gathers for shifted windows, Conv1d heads, folded q scale). Both
compute the same function (float64-equal, tests/test_agileir.py). Prints a table and writes JSON.

    .venv/bin/python benchmarks/bench_agileir_graph.py --variant normal --scale 2 --sizes 64,128 --runs 9 \
        --extra-onnx "38a38a1 export=/tmp/old/exports/agileir-normal-x2/model.onnx"

``--extra-onnx LABEL=PATH`` adds an ONNX file of the same model and weights (e.g. exported by an earlier
lipt-export: ``git worktree add /tmp/old 38a38a1`` and run its ``lipt-export --model agileir --variant normal
--scale 2 --backend onnxruntime --out /tmp/old/exports``) as ONNX Runtime rows.

Rows: eager deploy graph in each formulation, and each formulation exported (TorchScript, opset 17, onnxsim)
and run on ONNX Runtime (and OpenVINO f32 when installed). Demo weights (`init_for_tests`, seed 0). Median of
--runs interleaved rounds after a warm-up, 0.1 s pause between runners (validation.bench.interleaved_stats).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import onnx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from helpers.agileir_reference import swinir_forward  # noqa: E402
from lipt_export.export.onnx_export import export_onnx  # noqa: E402
from lipt_export.export.simplify import simplify_onnx  # noqa: E402
from lipt_export.models import agileir  # noqa: E402
from lipt_export.models.io import UnitRangeIO  # noqa: E402
from lipt_export.models.reparam import reparameterize_model  # noqa: E402
from lipt_export.report import format_table  # noqa: E402
from lipt_export.runtime.eager import TorchRunner  # noqa: E402
from lipt_export.runtime.loader import onnx_runner  # noqa: E402
from lipt_export.runtime.openvino import openvino_status  # noqa: E402
from lipt_export.validation.bench import interleaved_stats  # noqa: E402
from lipt_export.validation.inputs import natural_inputs  # noqa: E402
from lipt_export.validation.parity import rel_l2  # noqa: E402


class SwinIRFormulation(torch.nn.Module):
    """The same deploy-form modules, run the SwinIR way."""

    def __init__(self, model: agileir.AgileIR):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return swinir_forward(self.model, x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="normal")
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--sizes", default="64,128", help="LR H = W, comma-separated")
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--extra-onnx", action="append", default=[], metavar="LABEL=PATH",
                    help="another ONNX file of the same model and weights, run on ONNX Runtime")
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/bench_agileir_graph.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = agileir.build(args.variant, args.scale)
    agileir.init_for_tests(model, 0)
    deploy = reparameterize_model(model.eval())
    forms = {"swinir formulation": UnitRangeIO(SwinIRFormulation(deploy), 1.0).eval(),
             "lipt-export graph": UnitRangeIO(deploy, 1.0).eval()}
    runtimes = ["onnxruntime"] + (["openvino-f32"] if openvino_status()[0] else [])
    results = {"variant": args.variant, "scale": args.scale, "threads": args.threads, "runs": args.runs,
               "forms": {}, "latency": {}}
    with tempfile.TemporaryDirectory() as tmp:
        runners = []
        for label, module in forms.items():
            raw, path = Path(tmp) / f"{len(runners)}.raw.onnx", Path(tmp) / f"{len(runners)}.onnx"
            t0 = time.perf_counter()
            export_onnx(module, raw, sample_hw=(64, 64))
            simplify_onnx(raw, path)
            nodes = len(onnx.load(str(path)).graph.node)
            results["forms"][label] = {"nodes": nodes, "export_s": round(time.perf_counter() - t0, 1)}
            print(f"{label}: {nodes} nodes after onnxsim, exported in {results['forms'][label]['export_s']} s")
            runners.append(TorchRunner(module, name=f"eager deploy, {label}"))
            for rt in runtimes:
                runners.append(onnx_runner(path, rt, threads=args.threads))
                runners[-1].name = f"ONNX {label} @ {rt}"
        for item in args.extra_onnx:
            label, _, path = item.partition("=")
            results["forms"][label] = {"nodes": len(onnx.load(path).graph.node), "path": path}
            runners.append(onnx_runner(path, "onnxruntime", threads=args.threads))
            runners[-1].name = f"ONNX {label} @ onnxruntime"
        rows = []
        for size in (int(s) for s in args.sizes.split(",")):
            x = natural_inputs([(size, size)], seed=1)[0]
            outs = [r.infer(x) for r in runners]
            stats = interleaved_stats(runners, x, args.runs, warmup=1, say=print)
            base = stats[runners[0].name]["median_ms"]  # eager deploy, SwinIR formulation
            for r, y in zip(runners, outs):
                ms = stats[r.name]["median_ms"]
                rows.append([f"{size}x{size}", r.name, f"{ms:.1f}", f"{base / ms:.2f}x", f"{rel_l2(y, outs[0]):.1e}"])
                results["latency"].setdefault(f"{size}x{size}", {})[r.name] = {
                    "median_ms": round(ms, 2), "p90_ms": round(stats[r.name]["p90_ms"], 2),
                    "rel_l2_vs_swinir_eager": float(rel_l2(y, outs[0]))}
    print(format_table(("LR", "runner", "median ms", "x eager deploy (SwinIR form)", "rel-L2 vs it"), rows))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
