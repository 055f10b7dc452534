"""`lipt-export bench EXPORT_DIR`: latency, accuracy and arithmetic throughput of every way to run an export.

Rows: the eager training graph, the eager deploy graph (reparameterized), a *naive* ONNX of the training graph
(what a generic exporter gives without reparameterization), and every ONNX artifact on every CPU runtime asked for
(OpenVINO rows are named after the precision OpenVINO compiled for). Engines are listed as not runnable when
this machine cannot run them. All runners take turns within every round (interleaved), warm-up excluded.

Columns: median and p90 latency, speed-up vs the eager train and deploy graphs, accuracy (PSNR-Y/SSIM-Y on
``--dataset`` HR images, else output PSNR against the export's golden eager outputs), GMAC per forward, achieved
GFLOP/s (GOP/s for INT8) and its share of this CPU's measured peak for that arithmetic
(:func:`lipt_export.validation.peak.measure_peaks`: register-only FMA / dot-product kernels for the ISA the CPU
has, on the bench's threads) of the instructions the runtime's kernels use: fp32, fp16 and fp8 files against the
fp32 FMA peak (CPU runtimes compute them in fp32), INT8 against AMX-INT8 where the CPU has it, else the int8
dot-product peak (VNNI, else vpmaddubsw), OpenVINO's bf16 execution against AMX-BF16, else AVX512_BF16
(:func:`lipt_export.validation.peak.peak_for_row`); every peak is in the JSON and printed below the table.
Without a C compiler the peaks are *not measured* and the column is empty, saying why. The timing drops rounds
on a busy machine and reports load, steal and spread (:func:`lipt_export.validation.bench.interleaved_timing`).

GMAC are counted with torch's FlopCounterMode on the graph each row executes (the training graph for the eager
train and naive rows, the deploy graph for the rest: the ONNX artifacts are exported from it op for op), at the
protocol's input size: MACs = FLOPs / 2 of the convolutions and matrix products.

Protocols: ``fixed`` (``--sizes``, default 64x64), ``paper`` (LR sized for a 1280x720 output, the LIPT paper's
latency setting), ``ntire`` (every LR image of ``--dataset``, latency = mean over images of each image's median).
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from lipt_export.errors import UsageError
from lipt_export.export.onnx_export import export_onnx
from lipt_export.manifest import Manifest, read_manifest
from lipt_export.models.io import UnitRangeIO
from lipt_export.models.loading import prepare_model
from lipt_export.models.registry import available_models, get_spec
from lipt_export.runtime.base import Runner, default_threads
from lipt_export.runtime.eager import TorchRunner
from lipt_export.runtime.loader import checked_artifact, onnx_runner, padded_to_min_size
from lipt_export.runtime.memory import whole_image_problem
from lipt_export.runtime.openvino import check_runtime, installed_cpu_runtimes
from lipt_export.runtime.trt import engine_runtime_status
from lipt_export.validation.bench import interleaved_timing
from lipt_export.validation.datasets import open_dataset
from lipt_export.validation.evaluate import EvalTarget, evaluate
from lipt_export.validation.inputs import natural_inputs
from lipt_export.validation.metrics import psnr
from lipt_export.validation.peak import measure_peaks, peak_for_row
from lipt_export.validation.verify import load_golden

log = logging.getLogger(__name__)
PROTOCOLS = ("fixed", "paper", "ntire")
PAPER_OUTPUT_HW = (720, 1280)


def count_gmac(module: torch.nn.Module, hw: Tuple[int, int]) -> float:
    """MACs (1e9) of one forward of ``module`` on a (1, 3, H, W) input: FLOPs / 2 as torch counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(torch.rand(1, 3, *hw))
    return counter.get_total_flops() / 2e9


def _weights_path(man: Manifest) -> Optional[str]:
    w = man.model.weights
    if w.get("source") != "checkpoint":
        return None
    path = Path(str(w.get("path", "")))
    if not path.is_file():
        raise UsageError(f"the export's checkpoint {path} is not here (the eager and naive rows need it): run bench "
                         f"from where you exported, or pass --no-eager")
    return str(path)


def _inputs(protocol: str, sizes: Sequence[Tuple[int, int]], scale: int, dataset: Optional[str]
            ) -> List[np.ndarray]:
    if protocol == "fixed":
        return natural_inputs(list(sizes) or [(64, 64)], seed=0)
    if protocol == "paper":
        return natural_inputs([(PAPER_OUTPUT_HW[0] // scale, PAPER_OUTPUT_HW[1] // scale)], seed=0)
    if not dataset:
        raise UsageError("--protocol ntire times the whole images of a dataset: give --dataset DIR")
    return [np.ascontiguousarray(s.lr.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255.0)
            for s in open_dataset(dataset, scale)]


def run_benchmark(export_dir: str | Path, *, runtimes: Optional[Sequence[str]] = None, protocol: str = "fixed",
                  sizes: Sequence[Tuple[int, int]] = (), dataset: Optional[str] = None, threads: Optional[int] = None,
                  runs: int = 5, warmup: int = 1, eager: bool = True, progress: bool = True,
                  peak_isa: str = "native") -> Dict[str, Any]:
    """The bench command as a function: {"rows": [...], "protocol", "inputs", "peaks", "timing", ...}; ``peak_isa``
    caps the ISA the peaks are measured with (``avx2``: as a CPU without AVX-512/AMX/AVX-VNNI)."""
    if protocol not in PROTOCOLS:
        raise UsageError(f"--protocol must be one of {', '.join(PROTOCOLS)}, not '{protocol}'")
    runtimes = list(runtimes) if runtimes else installed_cpu_runtimes()
    for rt in runtimes:
        check_runtime(rt)
    man = read_manifest(export_dir)
    scale = man.io.scale
    for h, w in sizes if protocol == "fixed" else ():
        problem = whole_image_problem(man.model.name, scale, h, w)
        if problem:
            raise UsageError(f"--sizes {h}x{w}: {problem} (bench runs whole images); use smaller --sizes")
    inputs = _inputs(protocol, sizes, scale, dataset)
    threads = threads or default_threads()
    torch.set_num_threads(threads)
    # every artifact checked (inside the export, sha256) before minutes of model building
    onnx_paths = {e.path: checked_artifact(man, e).path for e in man.artifacts if e.format == "onnx"}
    rows: Dict[str, Dict[str, Any]] = {}
    runners: List[Runner] = []
    graphs: Dict[str, torch.nn.Module] = {}
    work = Path(tempfile.mkdtemp(prefix="lipt-bench-"))
    try:
        if eager:
            spec = get_spec(man.model.name)
            prepared = prepare_model(spec, man.model.variant, scale, _weights_path(man),
                                     seed=int(man.model.weights.get("seed", 0)))
            train = UnitRangeIO(prepared.train, spec.rgb_range).eval()
            deploy = UnitRangeIO(prepared.deploy, spec.rgb_range).eval()
            graphs = {"train": train, "deploy": deploy}
            naive = work / "naive_train_graph.onnx"
            export_onnx(train, naive, sample_hw=(64, 64))
            for name, module, graph in (("eager train graph", train, "train"), ("eager deploy graph", deploy, "deploy")):
                runners.append(_named(TorchRunner(module, name=name), name))
                rows[name] = {"row": name, "runtime": "pytorch", "precision": "fp32", "graph": graph}
            name = "naive ONNX (train graph)"
            runners.append(_named(padded_to_min_size(onnx_runner(naive, threads=threads), man.io), name))
            rows[name] = {"row": name, "runtime": "onnxruntime", "precision": "fp32", "graph": "train"}
        for entry in man.artifacts:
            if entry.format != "onnx":
                ok, why = engine_runtime_status(entry)
                rows[entry.path] = {"row": entry.path, "runtime": entry.engine.runtime,
                                    "precision": entry.precision, "skipped": why if not ok else "engines: use verify"}
                continue
            path = onnx_paths[entry.path]
            for rt in runtimes:
                runner = onnx_runner(path, rt, precision=entry.precision, threads=threads)
                name = f"{entry.path} @ {runner.runtime}"
                runners.append(_named(padded_to_min_size(runner, man.io), name))
                rows[name] = {"row": name, "runtime": runner.runtime, "precision": entry.precision,
                              "graph": "deploy"}
        log.info(f"timing {len(runners)} runners on {len(inputs)} input(s), {runs} interleaved rounds")
        with tqdm(total=len(inputs) * (runs + warmup), desc="bench rounds", unit="round", file=sys.stderr,
                  disable=not progress) as bar:  # per round; busy rounds dropped add rounds: the total grows
            def tick(n: int) -> None:
                if bar.total is not None and bar.n + n > bar.total:
                    bar.total = bar.n + n
                bar.update(n)

            timings = [interleaved_timing(runners, x, runs, warmup, progress=tick) for x in inputs]
        per_input = [t.stats for t in timings]
    finally:
        for p in work.iterdir():
            p.unlink()
        work.rmdir()
    for r in runners:
        rows[r.name]["median_ms"] = float(np.mean([s[r.name]["median_ms"] for s in per_input]))
        rows[r.name]["p90_ms"] = float(np.mean([s[r.name]["p90_ms"] for s in per_input]))
        rows[r.name]["iqr_ms"] = float(np.mean([s[r.name]["iqr_ms"] for s in per_input]))
    _accuracy(rows, runners, man, dataset, scale)
    peaks = measure_peaks(threads=threads, isa_cap=peak_isa)
    gmac = {g: float(np.mean([count_gmac(m, tuple(x.shape[2:])) for x in inputs])) for g, m in graphs.items()}
    if not gmac and man.model.name in available_models():  # no eager rows: the deploy graph is what ONNX computes
        spec = get_spec(man.model.name)
        prepared = prepare_model(spec, man.model.variant, scale, None, seed=0)
        gmac["deploy"] = float(np.mean([count_gmac(UnitRangeIO(prepared.deploy, spec.rgb_range).eval(),
                                                   tuple(x.shape[2:])) for x in inputs]))
    base = {k: rows[k]["median_ms"] for k in ("eager train graph", "eager deploy graph") if k in rows}
    for row in rows.values():
        if "median_ms" not in row:
            continue
        row["gmac"] = gmac.get(row["graph"])
        peak, row["peak"] = peak_for_row(peaks, row["precision"], row["runtime"])
        if row["gmac"]:
            row["gflops"] = 2 * row["gmac"] / (row["median_ms"] / 1e3)
            row["pct_peak"] = 100 * row["gflops"] / peak if peak else None
        for k, v in base.items():
            row["speedup_vs_" + k.split()[1]] = v / row["median_ms"]
    return {"export": str(export_dir), "model": man.model.label, "protocol": protocol, "threads": threads,
            "inputs": [list(x.shape[2:]) for x in inputs], "runs": runs, "peak_gflops_fp32": peaks.value("fp32"),
            "peaks": peaks.to_dict(), "timing": [dict(t.to_dict(), summary=t.summary()) for t in timings],
            "load_avg": list(os.getloadavg()), "accuracy": "dataset" if dataset else "golden",
            "rows": list(rows.values())}


def _named(runner: Runner, name: str) -> Runner:
    runner.name = name
    return runner


def _accuracy(rows: Dict[str, Dict[str, Any]], runners: Sequence[Runner], man: Manifest, dataset: Optional[str],
              scale: int) -> None:
    if dataset:
        report = evaluate([EvalTarget(r, r.name, rows[r.name]["precision"], rows[r.name]["runtime"])
                           for r in runners], dataset, scale, progress=False)
        for res in report["results"]:
            rows[res["artifact"]].update(psnr_y=res["psnr_y"], ssim_y=res["ssim_y"])
        ref = rows.get("eager deploy graph", rows[runners[0].name]).get("psnr_y")
        for row in rows.values():
            if "psnr_y" in row:
                row["delta_psnr_y"] = row["psnr_y"] - ref
        return
    if not man.golden:
        return
    inputs, outputs = load_golden(man)
    for r in runners:
        rows[r.name]["psnr_vs_golden"] = float(min(psnr(r.infer(x), y) for x, y in zip(inputs, outputs)))
