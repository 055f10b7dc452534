"""One command for a CUDA GPU host (< 5 minutes): the eager deploy graph of each family in FP32/FP16/BF16 with the host's
own PyTorch, against golden outputs made in FP32 on the CPU (an export's golden.npz with --exports, else computed here
first), NaN/Inf, latency at the LIPT paper's setting (LIPT-small x4 to a 1280x720 output: the paper reports 31 ms),
and which TensorRT flavours import. Prints a table and writes JSON.

    python benchmarks/gpu_check.py                          # on the GPU host (device cuda)
    python benchmarks/gpu_check.py --device cpu --latency-hw 32x32 --families lipt   # the CPU dry run (tested)

TensorRT-RTX supports no Hopper GPU (no SM90): its engines are not expected to run on an H100/H200; this script
reports the import and the compute capability and leaves engines to `lipt-export verify` on an RTX GPU.
Demo weights unless --weights FAMILY=PATH is given: parity and NaN/Inf are about the arithmetic, not the pictures.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lipt_export.models.io import UnitRangeIO  # noqa: E402
from lipt_export.models.loading import prepare_model  # noqa: E402
from lipt_export.models.registry import get_spec  # noqa: E402
from lipt_export.report import format_table  # noqa: E402
from lipt_export.validation.inputs import natural_inputs  # noqa: E402
from lipt_export.validation.metrics import psnr  # noqa: E402

FAMILIES = {"lipt": ("small", 4), "smsr": ("base", 2), "esrt": ("base", 2), "agileir": ("light", 2)}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PAPER = "LIPT-small x4, 320x180 LR -> 1280x720: 31 ms in the LIPT paper"


def tensorrt_flavours() -> dict:
    out = {}
    for name in ("tensorrt", "tensorrt_rtx"):
        try:
            mod = importlib.import_module(name)
            out[name] = f"imports: {getattr(mod, '__version__', '?')}"
        except Exception as exc:  # any import failure is the answer being reported
            out[name] = f"does not import: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    return out


def golden_for(family: str, model: torch.nn.Module, export: Path | None):
    """(inputs, fp32 CPU outputs): the export's golden.npz when given, else computed here on the CPU in FP32."""
    if export is not None:
        with np.load(export / "golden.npz") as g:
            n = len([k for k in g.files if k.startswith("input_")])
            return [g[f"input_{k}"] for k in range(n)], [g[f"output_{k}"] for k in range(n)]
    inputs = natural_inputs([(48, 48), (37, 51)], seed=0)
    with torch.no_grad():
        return inputs, [model.cpu().float()(torch.from_numpy(x)).numpy() for x in inputs]


def latency_ms(model, x, device: str, runs: int) -> float:
    times = []
    with torch.no_grad():
        for i in range(runs + 2):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(x)
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= 2:
                times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--exports", nargs="*", default=[], help="export folders (their golden.npz): FAMILY=DIR")
    ap.add_argument("--weights", nargs="*", default=[], help="checkpoints: FAMILY=PATH")
    ap.add_argument("--latency-hw", default="180x320", help="LR size for the LIPT-small x4 latency (paper: 180x320)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--json", default="gpu_check.json")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device visible to this PyTorch; use --device cpu for the dry run", file=sys.stderr)
        return 2
    device = args.device
    exports = dict(e.split("=", 1) for e in args.exports)
    weights = dict(w.split("=", 1) for w in args.weights)
    env = {"torch": torch.__version__, "device": device, "tensorrt": tensorrt_flavours()}
    if device == "cuda":
        env.update(gpu=torch.cuda.get_device_name(0),
                   compute_capability=".".join(map(str, torch.cuda.get_device_capability(0))))
    rows, results = [], []
    for family in args.families.split(","):
        variant, scale = FAMILIES[family]
        spec = get_spec(family)
        prepared = prepare_model(spec, variant, scale, weights.get(family), seed=0)
        model = UnitRangeIO(prepared.deploy, spec.rgb_range).eval()
        inputs, golden = golden_for(family, model, Path(exports[family]) if family in exports else None)
        for name, dtype in DTYPES.items():
            if device == "cpu" and name == "fp16":
                continue  # CPU PyTorch has few FP16 kernels; the dry run checks the plumbing with fp32/bf16
            m = model.to(device=device, dtype=dtype)
            with torch.no_grad():
                outs = [m(torch.from_numpy(x).to(device, dtype)).float().cpu().numpy() for x in inputs]
            finite = all(np.isfinite(o).all() for o in outs)
            worst = min(psnr(o, g) for o, g in zip(outs, golden)) if finite else float("nan")
            result = {"family": family, "variant": variant, "scale": scale, "precision": name,
                      "psnr_vs_golden_db": round(worst, 2), "finite": finite}
            if family == "lipt":
                h, w = (int(v) for v in args.latency_hw.split("x"))
                x = torch.rand(1, 3, h, w, device=device, dtype=dtype)
                result["latency_ms"] = round(latency_ms(m, x, device, args.runs), 2)
                result["latency_lr"] = [h, w]
            results.append(result)
            rows.append([f"{family}-{variant} x{scale}", name, f"{result['psnr_vs_golden_db']:.1f}",
                         "yes" if finite else "NO", f"{result['latency_ms']:.1f}" if "latency_ms" in result else "-"])
        model.to("cpu", torch.float32)
    print(f"torch {env['torch']} on {env.get('gpu', device)}; " + "; ".join(f"{k}: {v}" for k, v in
                                                                           env["tensorrt"].items()))
    print(format_table(("model", "precision", "PSNR vs golden dB", "finite", f"latency ms ({args.latency_hw} LR)"),
                       rows))
    print(f"paper: {PAPER}")
    Path(args.json).write_text(json.dumps({"environment": env, "results": results}, indent=2))
    return 0 if all(r["finite"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
