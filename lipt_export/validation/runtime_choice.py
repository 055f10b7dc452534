"""Which CPU execution of an ONNX artifact is fastest within its accuracy budget: measured at export for every
ONNX artifact, used by `--runtime auto`.

Candidates: ONNX Runtime (the execution the export validated), OpenVINO at f32, and OpenVINO at bf16 where the
CPU really compiles bf16 (read back; elsewhere it would be the f32 execution again and is left out, saying so).
An execution within the fp32 gate of ONNX Runtime's output (rel-L2 <= 1e-4) keeps the file's own numerics and
is eligible. One that does not (bf16 arithmetic; OpenVINO running an INT8 Q/DQ file with INT8 kernels) is
judged by PSNR-Y on image pairs: |PSNR-Y - the file on ONNX Runtime| <= 0.01 dB for fp32/fp16 files, and for the
INT8 file a drop against the fp32 file on ONNX Runtime within the export's INT8 budget (``--max-psnr-drop``).
The pairs are synthetic natural HR images ``scale`` x the golden sizes, downscaled by MATLAB-style bicubic, so
the LR sizes are the golden ones. The fastest eligible execution (interleaved rounds on the largest golden
input) is chosen.

The record names the machine it was measured on (CPU model, cores, runtime versions); on another machine
``auto`` measures again rather than trusting it, and says so. The timing drops rounds while other processes or
steal load the machine (:func:`lipt_export.validation.bench.interleaved_timing`); when too few rounds were quiet
it measures once more, and if the machine is still busy the record says the choice is *provisional* (why, and
the conditions), which ``upscale`` repeats in one warning line.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from lipt_export.catalog import FLOAT_RUNTIME_BUDGET_DB
from lipt_export.manifest import ArtifactEntry, RuntimeChoice
from lipt_export.runtime.loader import Artifact, onnx_runner
from lipt_export.runtime.openvino import installed_cpu_runtimes
from lipt_export.runtime.resolve import machine_fingerprint
from lipt_export.validation.bench import interleaved_timing
from lipt_export.validation.imresize import imresize
from lipt_export.validation.inputs import natural_inputs
from lipt_export.validation.metrics import psnr_y_nchw
from lipt_export.validation.parity import FP32_REL_L2_LIMIT, rel_l2
from lipt_export.validation.verify import load_golden

QDQ_PRECISIONS = ("int8", "fp8")  # judged by their drop against the fp32 file, within the export's budget
BUDGET = (f"rel-L2 <= {FP32_REL_L2_LIMIT:g} against ONNX Runtime on the golden inputs (the file's own numerics), "
          f"else |delta PSNR-Y| <= {FLOAT_RUNTIME_BUDGET_DB} dB against the file on ONNX Runtime (INT8 file: its drop "
          f"against fp32 within the export's INT8 budget) on synthetic HR/LR pairs")


def accuracy_pairs(inputs: Sequence[np.ndarray], scale: int, seed: int = 11
                   ) -> List[Tuple[np.ndarray, np.ndarray]]:
    """(LR, HR) NCHW float32 pairs whose LR sizes are the golden inputs' sizes."""
    pairs = []
    for x in inputs:
        h, w = x.shape[2:]
        (hr,) = natural_inputs([(h * scale, w * scale)], seed=seed)
        lr = hr if scale == 1 else np.clip(imresize(hr[0].transpose(1, 2, 0), 1 / scale), 0, 1)
        lr = np.ascontiguousarray(np.asarray(lr, np.float32).reshape(h, w, 3).transpose(2, 0, 1)[None])
        pairs.append((lr, hr))
    return pairs


def mean_psnr_y(runner, pairs, shave: int) -> float:
    return float(np.mean([psnr_y_nchw(runner.infer(lr), hr, shave) for lr, hr in pairs]))


def measure_runtime_choice(path: Path, precision: str, inputs: Sequence[np.ndarray], threads: Optional[int] = None,
                           runs: int = 3, *, scale: int = 1, fp32_path: Optional[Path] = None,
                           int8_budget_db: Optional[float] = None) -> RuntimeChoice:
    """The record stored in the manifest's ``runtime_choice[precision]`` for the ONNX file at ``path``.
    ``fp32_path`` and ``int8_budget_db`` are needed to judge executions of an INT8 file."""
    runners, left_out = {}, []
    for rt in installed_cpu_runtimes():
        r = onnx_runner(path, rt, precision=precision, threads=threads)
        if rt == "openvino-bf16" and r.inference_precision != "bf16":
            left_out.append({"runtime": rt, "why": "this CPU has no bf16: OpenVINO compiles f32 (= openvino-f32)"})
            continue
        r.name = rt
        runners[rt] = r
    ref = [runners["onnxruntime"].infer(x) for x in inputs]
    pairs, shave, base = None, max(scale, 1), None
    candidates: List[Dict[str, Any]] = []
    for rt, r in runners.items():
        err = 0.0 if rt == "onnxruntime" else max(rel_l2(r.infer(x), y) for x, y in zip(inputs, ref))
        cand = {"runtime": rt, "rel_l2": err, "within_budget": bool(err <= FP32_REL_L2_LIMIT)}
        if not cand["within_budget"]:  # a different arithmetic: judged by what it does to PSNR-Y
            if pairs is None:
                pairs = accuracy_pairs(inputs, scale)
                base_runner = runners["onnxruntime"]
                if precision in QDQ_PRECISIONS and fp32_path is not None:
                    base_runner = onnx_runner(fp32_path, "onnxruntime", threads=threads)
                base = mean_psnr_y(base_runner, pairs, shave)
            delta = mean_psnr_y(r, pairs, shave) - base
            if precision in QDQ_PRECISIONS:
                budget = int8_budget_db if int8_budget_db is not None and fp32_path is not None else None
                cand.update(delta_psnr_y_db=round(delta, 4), against="fp32 file on onnxruntime",
                            budget_db=budget, within_budget=bool(budget is not None and -delta <= budget))
            else:
                cand.update(delta_psnr_y_db=round(delta, 4), against="this file on onnxruntime",
                            budget_db=FLOAT_RUNTIME_BUDGET_DB,
                            within_budget=bool(abs(delta) <= FLOAT_RUNTIME_BUDGET_DB))
        candidates.append(cand)
    eligible = [runners[c["runtime"]] for c in candidates if c["within_budget"]]
    provisional = None
    if len(eligible) > 1:
        probe = max(inputs, key=lambda x: x.size)
        timing = interleaved_timing(eligible, probe, runs, warmup=1)
        if timing.noisy:  # once more, after a moment: a busy spell may have passed
            first = timing
            timing = interleaved_timing(eligible, probe, runs, warmup=1)
            if timing.noisy:
                provisional = (f"timed on a busy machine twice (first: {first.quiet} of {first.rounds} rounds "
                               f"quiet, then {timing.quiet} of {timing.rounds}; {timing.summary()})")
        stats = timing.stats
        for c in candidates:
            if c["runtime"] in stats:
                c["median_ms"] = round(stats[c["runtime"]]["median_ms"], 2)
        best = min(stats, key=lambda k: stats[k]["median_ms"])
        probe_hw = list(probe.shape[2:])
    else:
        best, probe_hw = "onnxruntime", None
    return RuntimeChoice.from_dict({"runtime": best, "machine": machine_fingerprint(), "budget": BUDGET,
                                    "candidates": candidates, "left_out": left_out, "probe_hw": probe_hw,
                                    "measured": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                                    **({"provisional": provisional} if provisional else {})},
                                   "runtime choice")


def int8_budget_db(entry: ArtifactEntry) -> Optional[float]:
    """The PSNR-Y drop the export allowed an INT8/FP8 file (``--max-psnr-drop``); None for other files."""
    qdq = entry.qdq()
    return qdq.max_psnr_drop_db if qdq is not None else None


def measure_export_choices(root: Path, entries: Sequence[ArtifactEntry], inputs: Sequence[np.ndarray], scale: int,
                           threads: Optional[int] = None) -> Dict[str, RuntimeChoice]:
    """``runtime_choice`` for every ONNX artifact of an export (files under ``root``)."""
    onnx = {e.precision: e for e in entries if e.format == "onnx"}
    fp32 = root / onnx["fp32"].path if "fp32" in onnx else None
    return {precision: measure_runtime_choice(root / e.path, precision, inputs, threads, scale=scale, fp32_path=fp32,
                                              int8_budget_db=int8_budget_db(e)) for precision, e in onnx.items()}


def measure_artifact(art: Artifact, threads: Optional[int] = None) -> RuntimeChoice:
    """A fresh choice for an export's ONNX file on this machine, on its golden inputs (not written back: exports
    are not changed after the fact). The ``measure`` that :mod:`lipt_export.runtime.resolve` is given."""
    manifest, entry = art.manifest, art.entry
    inputs, _ = load_golden(manifest)
    fp32 = manifest.select("onnx", "fp32")
    return measure_runtime_choice(art.path, entry.precision, inputs, threads, scale=manifest.model.scale,
                                  fp32_path=manifest.artifact_path(fp32[0]) if fp32 else None,
                                  int8_budget_db=int8_budget_db(entry))


def int8_recommendation(paths: Dict[str, Path], inputs: Sequence[np.ndarray], threads: Optional[int] = None,
                        runs: int = 3) -> Dict[str, Any]:
    """Whether the INT8 file earns its place on the runtime the export targets on the CPU (ONNX Runtime):
    ``paths`` maps precision -> ONNX file (fp32, int8, and fp16 when exported); all run interleaved on the
    largest golden input. ``recommended`` is true only when INT8 is faster than every other precision."""
    probe = max(inputs, key=lambda x: x.size)
    runners = [onnx_runner(path, precision=precision, threads=threads, name=precision)
               for precision, path in paths.items()]
    timing = interleaved_timing(runners, probe, runs, warmup=1)
    stats = timing.stats
    ms = {k: round(v["median_ms"], 2) for k, v in stats.items()}
    others = {k: v for k, v in ms.items() if k != "int8"}
    fastest = min(others, key=others.get)
    return {"recommended": bool(ms["int8"] < others[fastest]), "runtime": "onnxruntime",
            "probe_hw": list(probe.shape[2:]), "median_ms": ms,
            "speedup_vs_" + fastest: round(others[fastest] / ms["int8"], 2), "machine": machine_fingerprint(),
            "timing": timing.summary()}
