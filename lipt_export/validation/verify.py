"""`verify`: an export checks itself on whatever machine it was copied to.

Every artifact's sha256 and the manifest are checked (the one reader), every artifact this machine can run is
run on the golden inputs (``golden.npz``, written at export) and compared with the eager model's outputs stored
beside them, under the gates the export used: fp32 rel-L2 <= 1e-4; fp16/int8 (and engines) a PSNR within 1 dB
of what the export measured for that ONNX (or excellent, >= 60 dB). ONNX runs on each CPU runtime asked for
(default: ONNX Runtime, the runtime the gates were measured on), one row per artifact and runtime, since an
execution is an artifact of its own numerically; OpenVINO at f32 computes the file as written and gets the same
gates. A bf16 execution (``openvino-bf16``) is a precision choice, not a defect: its rows are "measured" (PSNR
reported, no gate). Engines run on TensorRT / TensorRT-RTX when this machine has the flavor and a GPU of a
compute capability they were built for.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from lipt_export.errors import EngineError, LiptExportError
from lipt_export.manifest import ArtifactEntry, Manifest, read_manifest
from lipt_export.runtime.loader import checked_artifact, onnx_runner
from lipt_export.runtime.openvino import check_runtime
from lipt_export.runtime.trt import engine_runtime_status, load_engine_runner
from lipt_export.validation.parity import (PSNR_EXCELLENT_DB, PSNR_SLACK_DB, fp32_parity_ok, psnr_parity_ok,
                                           rel_l2)
from lipt_export.validation.metrics import psnr

VERIFY_HEADER = ("artifact", "runtime", "rel-L2", "PSNR dB", "result")


@dataclass
class VerifyRow:
    artifact: str
    runtime: str
    status: str  # pass | fail | skipped | measured
    rel_l2: Optional[float] = None
    psnr_db: Optional[float] = None
    why: str = ""

    def as_dict(self) -> Dict[str, object]:
        return asdict(self)

    def cells(self) -> List[str]:
        result = self.status + (f": {self.why}" if self.why else "")
        return [self.artifact, self.runtime, "-" if self.rel_l2 is None else f"{self.rel_l2:.1e}",
                "-" if self.psnr_db is None else f"{self.psnr_db:.1f}", result]


def load_golden(manifest: Manifest):
    """(inputs, outputs) from the checked golden.npz."""
    with np.load(manifest.golden_path(), allow_pickle=False) as data:
        n = len([k for k in data.files if k.startswith("input_")])
        return [data[f"input_{k}"] for k in range(n)], [data[f"output_{k}"] for k in range(n)]


def _reference_psnr(manifest: Manifest, entry: ArtifactEntry) -> float:
    """The PSNR the export measured for the ONNX of this precision (an engine's own reference)."""
    onnx = next((a for a in manifest.select("onnx", entry.precision)), None)
    par = (onnx or entry).parity
    return par.psnr_db if par is not None else float("inf")


def _judge(manifest: Manifest, entry: ArtifactEntry, runtime: str, outs, golden_outs, gated: bool = True
           ) -> VerifyRow:
    """The row for one execution: under the export's gate for this artifact, or "measured" (``gated=False``,
    a bf16 execution) with the same figures and no verdict."""
    finite = all(np.isfinite(o).all() for o in outs)
    worst_rel = max(rel_l2(o, g) for o, g in zip(outs, golden_outs))
    worst_psnr = min(psnr(o, g) for o, g in zip(outs, golden_outs))
    if not gated:
        return VerifyRow(entry.path, runtime, "measured", worst_rel, worst_psnr, "bf16 execution: no gate")
    if entry.precision == "fp32" and entry.format == "onnx":
        ok, rule = fp32_parity_ok(worst_rel, finite), "fp32 rel-L2 <= 1e-4"
    else:
        ref = _reference_psnr(manifest, entry)
        ok, rule = (psnr_parity_ok(worst_psnr, ref, finite),
                    f"PSNR >= {min(ref - PSNR_SLACK_DB, PSNR_EXCELLENT_DB):.1f} dB")
    return VerifyRow(entry.path, runtime, "pass" if ok else "fail", worst_rel, worst_psnr, "" if ok else rule)


def default_verify_runtimes() -> List[str]:
    """The runtime the export's gates were measured on. Others are asked for by name: an INT8 file runs as
    real INT8 on OpenVINO and can miss the export's budget there (measured: LIPT-tiny x2 46.1 dB on ONNX
    Runtime, 38.0 dB on OpenVINO), which verify then reports as a failure of that execution."""
    return ["onnxruntime"]


def verify_export(directory: str | Path, threads: Optional[int] = None,
                  runtimes: Optional[Sequence[str]] = None) -> List[VerifyRow]:
    """One row per artifact and runtime (see the module doc). The manifest and golden.npz must be intact (else
    a ManifestError: nothing can be verified against a tampered reference)."""
    runtimes = list(runtimes) if runtimes else default_verify_runtimes()
    for rt in runtimes:
        check_runtime(rt)
    manifest = read_manifest(directory)
    inputs, golden_outs = load_golden(manifest)
    rows: List[VerifyRow] = []
    for entry in manifest.artifacts:
        names = runtimes if entry.format == "onnx" else [entry.engine.runtime]
        try:
            path = checked_artifact(manifest, entry).path
        except LiptExportError as exc:
            rows.append(VerifyRow(entry.path, ",".join(names), "fail", why=str(exc).replace(f"{manifest.root}/", "")))
            continue
        if entry.format == "onnx":
            for rt in runtimes:
                runner = onnx_runner(path, rt, precision=entry.precision, threads=threads)
                # OpenVINO at f32 computes the file as written; a bf16 execution is measured, not gated
                gated = getattr(runner, "inference_precision", "f32") == "f32"
                rows.append(_judge(manifest, entry, runner.runtime, [runner.infer(x) for x in inputs], golden_outs,
                                   gated))
            continue
        ok, why = engine_runtime_status(entry)
        if not ok:
            rows.append(VerifyRow(entry.path, names[0], "skipped", why=why))
            continue
        try:
            runner = load_engine_runner(path, entry, manifest)
        except EngineError as exc:
            rows.append(VerifyRow(entry.path, names[0], "fail", why=str(exc)))
            continue
        rows.append(_judge(manifest, entry, names[0], [runner.infer(x) for x in inputs], golden_outs))
    return rows
