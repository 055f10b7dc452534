"""Where SMSR / ESRT spend their time, and whether a graph form is faster (issue 26, part 2).

Two commands, both on fp32 ONNX files, 2 intra-op threads, LR square inputs, against the fp32 FMA peak
(benchmarks/fma_peak.py; load average printed before and after):

    # per-op breakdown: ONNX Runtime's profiler per node, OpenVINO's per-layer counters (PERF_COUNT)
    .venv/bin/python benchmarks/graph_speed.py profile smsr:EXPORT/smsr-base-x2 esrt:EXPORT/esrt-base-x4 \
        --sizes 128,64 --runs 5
    # the conv kernels' own ceiling: 20 plain 64-channel 3x3 convs + ReLU
    .venv/bin/python benchmarks/graph_speed.py ceiling --sizes 128,64 --runs 7
    # the same model in several forms, every runner interleaved in every round; medians and ratios vs the first
    .venv/bin/python benchmarks/graph_speed.py compare --model smsr --scale 2 base:OLD/smsr-base-x2 \
        new:NEW/smsr-base-x2 --sizes 128,64 --runs 11

Categories: conv (Conv, FusedConv, NchwcConv, ConvTranspose; OpenVINO Convolution), linear (MatMul/Gemm of
weights), attention (activation x activation MatMul, Softmax), layout (Transpose, Reshape, reorders, Slice,
Concat, Split, Gather, Pad, DepthToSpace, and ESRT's one-hot unfold/fold grouped convs), elementwise
(everything else: Mul/Add/Where/Relu/Cast, LayerNorm, pooling, Resize, ...). GFLOP/s = 2 x MACs of today's
deploy graph (torch FlopCounterMode) / median latency, so every form is credited with the same useful work.
Writes benchmarks/results/graph_speed_<command>.json.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from fma_peak import fma_peak_gflops, isa  # noqa: E402
from profile_ort import profile as ort_profile  # noqa: E402
from lipt_export.report import format_table  # noqa: E402
from lipt_export.runtime.loader import checked_artifact, open_export  # noqa: E402
from lipt_export.runtime.openvino import OpenVinoRunner  # noqa: E402
from lipt_export.runtime.ort import OnnxRuntimeRunner  # noqa: E402
from lipt_export.validation.bench import interleaved_stats  # noqa: E402
from lipt_export.validation.inputs import natural_inputs  # noqa: E402

CONV = {"Conv", "FusedConv", "NchwcConv", "ConvTranspose", "Convolution", "GroupConvolution",
        "ConvolutionBackpropData", "Deconvolution"}
MATMUL = {"MatMul", "FusedMatMul", "Gemm", "FullyConnected", "MatMulNBits"}
LAYOUT = {"Transpose", "Reshape", "ReorderInput", "ReorderOutput", "Reorder", "Slice", "StridedSlice", "Concat",
          "Split", "VariadicSplit", "Gather", "Pad", "DepthToSpace", "Squeeze", "Unsqueeze", "Flatten", "Expand",
          "Shape", "ShapeOf", "Identity", "Copy", "Broadcast", "Tile"}
WEIGHT_MATMULS = ("reduce", "qkv", "proj", "fc1", "fc2", "mlp")


def category(op: str, node: str) -> str:
    low = node.lower()
    if op in CONV:
        return "layout" if ("unfold" in low or "/fold" in low) else "conv"
    if op == "Softmax" or op == "SoftMax":
        return "attention"
    if op in MATMUL:
        return "linear" if any(f"/{w}" in low or f"{w}." in low for w in WEIGHT_MATMULS) else "attention"
    if op in LAYOUT:
        return "layout"
    return "elementwise"


CATEGORIES = ("conv", "linear", "attention", "layout", "elementwise")


def load_avg() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def onnx_path(export: str) -> Path:
    man = open_export(export)
    return checked_artifact(man, next(e for e in man.artifacts if e.format == "onnx" and e.precision == "fp32")).path


def useful_gmac(model: str, scale: int, size: int, weights=None) -> dict:
    """MACs (1e9) of the dense(-masked) work at LR size x size: torch FlopCounterMode on the eager deploy graph
    (the checkpoint's when given: SMSR's channel split depends on it), less what a module declares as spent
    beyond that work (``extra_macs(h, w)``: SMSR's small dense-input convs). Total and per kind."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lipt_export.models.loading import prepare_model
    from lipt_export.models.registry import get_spec

    spec = get_spec(model)
    deploy = prepare_model(spec, None, scale, weights).deploy
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        deploy(torch.rand(1, 3, size, size) * spec.rgb_range)
    extra = sum(m.extra_macs(size, size) for m in deploy.modules() if hasattr(m, "extra_macs")) / 1e9
    by_op = {str(k): v / 2e9 for k, v in counter.get_flop_counts()["Global"].items()}
    conv = sum(v for k, v in by_op.items() if "convolution" in k) - extra
    return {"total": counter.get_total_flops() / 2e9 - extra, "conv": conv,
            "matmul": sum(by_op.values()) - conv - extra, "extra": extra}


def weights_of(export: str):
    return open_export(export).model.weights.get("path")


def ov_profile(path: Path, size: int, runs: int, threads: int):
    """(ms per forward by category, ms per OpenVINO layer type, median infer ms) from PERF_COUNT."""
    import time

    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                                   "INFERENCE_NUM_THREADS": threads, "PERF_COUNT": True})
    req = compiled.create_infer_request()
    x = natural_inputs([(size, size)], seed=1)[0]
    req.infer({0: x})  # warm-up
    per_cat, per_type, walls = collections.defaultdict(float), collections.defaultdict(float), []
    for _ in range(runs):
        t0 = time.perf_counter()
        req.infer({0: x})
        walls.append((time.perf_counter() - t0) * 1e3)
        for p in req.profiling_info:
            if p.status != ov.ProfilingInfo.Status.EXECUTED:
                continue
            ms = p.real_time.total_seconds() * 1e3 / runs
            per_type[f"{p.node_type} ({p.exec_type})"] += ms
            per_cat[category(p.node_type, p.node_name)] += ms
    return per_cat, per_type, float(np.median(walls))


def cmd_profile(args) -> dict:
    peak = fma_peak_gflops(args.threads)
    print(f"{isa()} fp32 FMA peak {peak:.1f} GFLOP/s ({args.threads} threads); {load_avg()}")
    results, summary = [], []
    for spec in args.exports:
        family, export = spec.split(":", 1)
        man = open_export(export)
        path = onnx_path(export)
        for size in args.sizes:
            gmac = useful_gmac(family, man.model.scale, size, weights_of(export))
            # ORT: per-node kernel time (first run dropped), categorised by node name and op
            _, _, per_node, runs_ms = ort_profile(path, size, args.runs, args.threads)
            ort_cat = collections.defaultdict(float)
            for (node, op), ms in per_node.items():
                ort_cat[category(op, node)] += ms
            ov_cat, ov_types, ov_wall = ov_profile(path, size, args.runs, args.threads)
            ort_wall = float(np.median(runs_ms))
            for rt, cats, wall in (("onnxruntime", ort_cat, ort_wall), ("openvino-f32", ov_cat, ov_wall)):
                kern = sum(cats.values())
                gflops = 2 * gmac["total"] / wall * 1e3
                conv_gflops = 2 * gmac["conv"] / cats["conv"] * 1e3 if cats["conv"] else 0.0
                row = {"model": f"{family} x{man.model.scale}", "size": size, "runtime": rt, "wall_ms": wall,
                       "kernel_ms": kern, "gmac": gmac, "ms": dict(cats), "gflops": gflops,
                       "pct_peak": 100 * gflops / peak, "conv_gflops": conv_gflops,
                       "conv_pct_peak": 100 * conv_gflops / peak}
                results.append(row)
                summary.append([row["model"], f"{size}", rt, f"{wall:.1f}"]
                               + [f"{100 * cats.get(c, 0) / kern:.1f}%" for c in CATEGORIES]
                               + [f"{gmac['total']:.2f}", f"{gflops:.1f}", f"{row['pct_peak']:.1f}%",
                                  f"{row['conv_pct_peak']:.1f}%"])
            if args.types:
                print(f"{family} {size}: OpenVINO layer types")
                print(format_table(("type (exec)", "ms"), [[k, f"{v:.2f}"] for k, v in
                                                          sorted(ov_types.items(), key=lambda kv: -kv[1])[:12]]))
    print(format_table(("model", "LR", "runtime", "median ms") + CATEGORIES
                       + ("GMAC", "GFLOP/s", "% peak", "conv kernels % peak"), summary))
    print(load_avg())
    return {"peak_gflops": peak, "isa": isa(), "rows": results}


def cmd_compare(args) -> dict:
    peak = fma_peak_gflops(args.threads)
    print(f"{isa()} fp32 FMA peak {peak:.1f} GFLOP/s ({args.threads} threads); {load_avg()}")
    forms = [s.split(":", 1) for s in args.exports]
    results, table = [], []
    for size in args.sizes:
        gmac = useful_gmac(args.model, args.scale, size, weights_of(forms[0][1]))
        x = natural_inputs([(size, size)], seed=2)[0]
        runners, meta = [], {}
        for label, export in forms:
            path = onnx_path(export)
            for r in (OnnxRuntimeRunner(path, threads=args.threads), OpenVinoRunner(path, "f32", threads=args.threads)):
                rt = "onnxruntime" if isinstance(r, OnnxRuntimeRunner) else "openvino-f32"
                r.name = f"{label} {rt}"
                runners.append(r)
                meta[r.name] = (label, rt)
        outs = {r.name: r.infer(x) for r in runners}
        stats = interleaved_stats(runners, x, args.runs, warmup=2)
        for r in runners:
            label, rt = meta[r.name]
            base = f"{forms[0][0]} {rt}"
            ref = outs[base]
            rel = float(np.linalg.norm(outs[r.name] - ref) / np.linalg.norm(ref))
            med = stats[r.name]["median_ms"]
            gflops = 2 * gmac["total"] / med * 1e3
            row = {"size": size, "form": label, "runtime": rt, **stats[r.name], "ratio": stats[base]["median_ms"] / med,
                   "gflops": gflops, "pct_peak": 100 * gflops / peak, "rel_l2_vs_first": rel}
            results.append(row)
            table.append([f"{size}", label, rt, f"{med:.1f}", f"{stats[r.name]['p90_ms']:.1f}",
                          f"{row['ratio']:.2f}x", f"{gflops:.1f}", f"{row['pct_peak']:.1f}%", f"{rel:.1e}"])
    print(format_table(("LR", "form", "runtime", "median ms", "p90 ms", f"speed-up vs {forms[0][0]}", "GFLOP/s",
                        "% FMA peak", "rel-L2 vs first"), table))
    print(load_avg())
    return {"peak_gflops": peak, "isa": isa(), "model": args.model, "rows": results}


def conv_stack_onnx(path: Path, layers: int = 20, channels: int = 64) -> float:
    """A plain stack of 3x3 conv + ReLU, channels -> channels: the best case for a conv-bound graph.
    Returns MACs per input pixel."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((channels, channels, 3, 3)) / (3 * channels ** 0.5)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        prev = f"r{i}"
    graph = helper.make_graph(nodes, "conv_stack",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, "h", "w"])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return layers * channels * channels * 9


def copy_bandwidth_gbs(mbytes: int = 256, repeats: int = 5) -> float:
    """Memory bandwidth as a runtime's elementwise op sees it: torch copy of a 256 MB fp32 tensor on the set
    threads, bytes read + written, best of ``repeats``."""
    import time

    import torch

    a = torch.ones(mbytes * 2 ** 20 // 4)
    b = torch.empty_like(a)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        b.copy_(a)
        best = max(best, 2 * a.numel() * 4 / (time.perf_counter() - t0) / 1e9)
    return best


def cmd_ceiling(args) -> dict:
    """The conv-only ceiling: how close each runtime gets to the FMA peak on 20 plain 64-channel 3x3 convs."""
    import tempfile

    peak = fma_peak_gflops(args.threads)
    print(f"{isa()} fp32 FMA peak {peak:.1f} GFLOP/s ({args.threads} threads); {load_avg()}")
    rows, table = [], []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "conv_stack.onnx"
        macs_px = conv_stack_onnx(path)
        for size in args.sizes:
            x = np.random.default_rng(1).standard_normal((1, 64, size, size)).astype(np.float32)
            runners = [OnnxRuntimeRunner(path, threads=args.threads), OpenVinoRunner(path, "f32", threads=args.threads)]
            runners[0].name, runners[1].name = "onnxruntime", "openvino-f32"
            stats = interleaved_stats(runners, x, args.runs, warmup=2)
            for r in runners:
                med = stats[r.name]["median_ms"]
                gflops = 2 * macs_px * size * size / med / 1e6
                rows.append({"size": size, "runtime": r.name, "median_ms": med, "gflops": gflops,
                             "pct_peak": 100 * gflops / peak})
                table.append([f"{size}", r.name, f"{med:.1f}", f"{gflops:.1f}", f"{100 * gflops / peak:.1f}%"])
    print(format_table(("LR", "runtime", "median ms (20 convs)", "GFLOP/s", "% FMA peak"), table))
    bw = copy_bandwidth_gbs()
    print(f"memory bandwidth (torch copy of 256 MB, {args.threads} threads, read + write): {bw:.1f} GB/s")
    print(load_avg())
    return {"peak_gflops": peak, "isa": isa(), "rows": rows, "copy_gbs": bw}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("profile")
    p.add_argument("exports", nargs="+", help="FAMILY:EXPORT_DIR")
    p.add_argument("--types", action="store_true", help="also list OpenVINO's slowest layer types")
    e = sub.add_parser("ceiling", help="20 plain 64-channel 3x3 convs: the conv kernels' own ceiling")
    c = sub.add_parser("compare")
    c.add_argument("exports", nargs="+", help="LABEL:EXPORT_DIR (the first is the reference)")
    c.add_argument("--model", required=True)
    c.add_argument("--scale", type=int, required=True)
    for q in (p, c, e):
        q.add_argument("--sizes", default="128,64", type=lambda s: [int(v) for v in s.split(",")])
        q.add_argument("--runs", type=int, default=7)
        q.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    before = load_avg()
    result = {"profile": cmd_profile, "compare": cmd_compare, "ceiling": cmd_ceiling}[args.cmd](args)
    result.update({"load_before": before, "load_after": load_avg(), "argv": sys.argv[1:]})
    suffix = f"_{args.model}" if args.cmd == "compare" else ""
    out = ROOT / "benchmarks" / "results" / f"graph_speed_{args.cmd}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
