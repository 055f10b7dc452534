"""Which CPU runtime runs an ONNX artifact fastest *as written*: measured at export, used by `--runtime auto`.

Candidates are the executions that keep the file's own numerics: ONNX Runtime and OpenVINO at f32 (where it is
installed). Each runs the golden inputs; one within the fp32 gate of ONNX Runtime's output (rel-L2 <= 1e-4) is
eligible, and the fastest eligible one (interleaved rounds on the golden inputs) is chosen. bf16 executions are
not candidates: they are a different numerical artifact and are asked for by name (``--runtime openvino-bf16``).

The record names the machine it was measured on (CPU model, cores, runtime versions); on another machine
``auto`` measures again rather than trusting it, and says so.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from lipt_export.manifest import ArtifactEntry, Manifest
from lipt_export.runtime.loader import onnx_runner
from lipt_export.runtime.openvino import openvino_status
from lipt_export.validation.bench import interleaved_stats
from lipt_export.validation.parity import FP32_REL_L2_LIMIT, rel_l2
from lipt_export.validation.verify import load_golden

AUTO_CANDIDATES = ("onnxruntime", "openvino-f32")
BUDGET = f"rel-L2 <= {FP32_REL_L2_LIMIT:g} against ONNX Runtime on the golden inputs (the file's own numerics)"


def machine_fingerprint() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    import onnxruntime

    versions = f"onnxruntime {onnxruntime.__version__}"
    if openvino_status()[0]:
        import openvino

        versions += f", openvino {openvino.get_version().split('-')[0]}"
    return f"{cpu} x{os.cpu_count()}; {versions}"


def measure_runtime_choice(path: Path, precision: str, inputs: Sequence[np.ndarray], threads: Optional[int] = None,
                           runs: int = 3) -> Dict[str, Any]:
    """The record stored in the manifest's ``runtime_choice[precision]``."""
    names = [rt for rt in AUTO_CANDIDATES if rt == "onnxruntime" or openvino_status()[0]]
    runners = {rt: onnx_runner(path, rt, precision=precision, threads=threads) for rt in names}
    for rt, r in runners.items():
        r.name = rt
    ref = [runners["onnxruntime"].infer(x) for x in inputs]
    candidates: List[Dict[str, Any]] = []
    for rt, r in runners.items():
        err = 0.0 if rt == "onnxruntime" else max(rel_l2(r.infer(x), y) for x, y in zip(inputs, ref))
        candidates.append({"runtime": rt, "rel_l2": err, "within_budget": bool(err <= FP32_REL_L2_LIMIT)})
    eligible = [runners[c["runtime"]] for c in candidates if c["within_budget"]]
    if len(eligible) > 1:
        probe = max(inputs, key=lambda x: x.size)
        stats = interleaved_stats(eligible, probe, runs, warmup=1)
        for c in candidates:
            if c["runtime"] in stats:
                c["median_ms"] = round(stats[c["runtime"]]["median_ms"], 2)
        best = min(stats, key=lambda k: stats[k]["median_ms"])
        probe_hw = list(probe.shape[2:])
    else:
        best, probe_hw = "onnxruntime", None
    return {"runtime": best, "machine": machine_fingerprint(), "budget": BUDGET, "candidates": candidates,
            "probe_hw": probe_hw, "measured": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def choose_runtime(manifest: Manifest, entry: ArtifactEntry, path: Path, threads: Optional[int] = None
                   ) -> Tuple[str, str]:
    """(runtime, why) for ``--runtime auto``: the export's record when it was measured on this machine, else a
    fresh measurement on the golden inputs (not written back: exports are not changed after the fact)."""
    record = manifest.runtime_choice.get(entry.precision)
    here = machine_fingerprint()
    if record and record.get("machine") == here:
        return str(record["runtime"]), f"measured at export on this machine: {runtime_summary(record)}"
    if not openvino_status()[0]:
        return "onnxruntime", "the only CPU runtime installed"
    if not manifest.golden:
        return "onnxruntime", "no golden inputs in this export to measure the others on"
    inputs, _ = load_golden(manifest)
    fresh = measure_runtime_choice(path, entry.precision, inputs, threads)
    where = "measured now (the export's record is from another machine)" if record else "measured now"
    return str(fresh["runtime"]), f"{where}: {runtime_summary(fresh)}"


def runtime_summary(record: Dict[str, Any]) -> str:
    parts = []
    for c in record.get("candidates", []):
        if not c.get("within_budget"):
            parts.append(f"{c['runtime']} outside the budget (rel-L2 {c['rel_l2']:.1e})")
        elif "median_ms" in c:
            parts.append(f"{c['runtime']} {c['median_ms']:.1f} ms")
        else:
            parts.append(c["runtime"])
    return ", ".join(parts)


def resolve_runtime(art, runtime: str, threads: Optional[int] = None) -> Tuple[str, str]:
    """(runtime, why) for a resolved artifact (:class:`lipt_export.runtime.loader.Artifact`): ``auto`` becomes
    the export's measured choice for ONNX artifacts (why says how it was chosen), ONNX Runtime for an ONNX file
    without its export; engines and checkpoints keep their own runtime. Other names pass through (why = "")."""
    if runtime != "auto":
        return runtime, ""
    if art.format != "onnx":
        return "onnxruntime", ""
    if art.entry is None or art.manifest is None or art.manifest.root is None:
        return "onnxruntime", "a bare ONNX file: nothing measured"
    return choose_runtime(art.manifest, art.entry, art.path, threads)


def int8_recommendation(paths: Dict[str, Path], inputs: Sequence[np.ndarray], threads: Optional[int] = None,
                        runs: int = 3) -> Dict[str, Any]:
    """Whether the INT8 file earns its place on the runtime the export targets on the CPU (ONNX Runtime):
    ``paths`` maps precision -> ONNX file (fp32, int8, and fp16 when exported); all run interleaved on the
    largest golden input. ``recommended`` is true only when INT8 is faster than every other precision."""
    probe = max(inputs, key=lambda x: x.size)
    runners = [onnx_runner(path, precision=precision, threads=threads, name=precision)
               for precision, path in paths.items()]
    stats = interleaved_stats(runners, probe, runs, warmup=1)
    ms = {k: round(v["median_ms"], 2) for k, v in stats.items()}
    others = {k: v for k, v in ms.items() if k != "int8"}
    fastest = min(others, key=others.get)
    return {"recommended": bool(ms["int8"] < others[fastest]), "runtime": "onnxruntime",
            "probe_hw": list(probe.shape[2:]), "median_ms": ms,
            "speedup_vs_" + fastest: round(others[fastest] / ms["int8"], 2), "machine": machine_fingerprint()}
