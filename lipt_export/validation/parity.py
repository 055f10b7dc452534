"""Output parity: reference runner vs artifact runners, through the polygraphy Comparator.

Parity compares a reference runner (eager PyTorch) with artifact runners on the same inputs. It goes
through polygraphy's ``Comparator.run`` so eager-vs-ONNX-Runtime-vs-TensorRT share one code path; the
metrics are ours (relative L2, max |error|, PSNR with a fixed peak of 1.0 — polygraphy's own PSNR uses
the reference's max as peak, which is wrong for images).
"""
from __future__ import annotations

import math
import time
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np

from lipt_export.errors import ExportError
from lipt_export.manifest import Parity
from lipt_export.runtime.base import Runner
from lipt_export.validation.metrics import psnr

# The gates every artifact must pass against the eager model (export, engines, verify).
FP32_REL_L2_LIMIT = 1e-4
# A reduced-precision artifact (or an engine) must stay within 1 dB of its reference PSNR, unless it is
# already this close to the eager model.
PSNR_SLACK_DB = 1.0
PSNR_EXCELLENT_DB = 60.0


# A floating-point reduced-precision file (fp16) this far from the eager model still ships (it passed the gates
# that define it), but flagged in the summary, report.md and the manifest: something in it lost precision badly.
FLAG_REL_L2 = 1e-2


def precision_flag(par: "Parity") -> Optional[str]:
    """Why a reduced-precision float artifact is flagged (its rel-L2 against the eager model above FLAG_REL_L2),
    or None. INT8 and FP8 are judged by their PSNR-Y budget instead."""
    if par.precision in ("fp32", "int8", "fp8") or par.rel_l2 <= FLAG_REL_L2:
        return None
    return (f"rel-L2 {par.rel_l2:.1e} against the eager model (> {FLAG_REL_L2:.0e}, PSNR {par.psnr_db:.1f} dB): look at "
            f"its outputs before shipping it; a float island list or the fp32 file may be needed")


def fp32_parity_ok(rel: float, finite: bool = True) -> bool:
    return finite and math.isfinite(rel) and rel <= FP32_REL_L2_LIMIT


def psnr_parity_ok(psnr_db: float, reference_psnr_db: float, finite: bool = True) -> bool:
    """``psnr_db`` against the eager model is as good as the reference's (within PSNR_SLACK_DB) or excellent."""
    if not finite or math.isnan(psnr_db):
        return False
    return psnr_db >= PSNR_EXCELLENT_DB or psnr_db >= reference_psnr_db - PSNR_SLACK_DB

def rel_l2(out: np.ndarray, ref: np.ndarray) -> float:
    ref64, out64 = ref.astype(np.float64), out.astype(np.float64)
    return float(np.linalg.norm(out64 - ref64) / max(np.linalg.norm(ref64), 1e-30))


def _as_polygraphy(runner: Runner, input_name: str):
    from polygraphy.backend.base import BaseRunner
    from polygraphy.common import TensorMetadata

    class _Adapter(BaseRunner):
        def __init__(self):
            super().__init__(name=runner.name, prefix="lipt-export")

        def activate_impl(self):
            pass

        def deactivate_impl(self):
            pass

        def get_input_metadata_impl(self):
            return TensorMetadata().add(input_name, np.float32, (None, 3, None, None))

        def infer_impl(self, feed_dict):
            t0 = time.perf_counter()
            out = np.ascontiguousarray(runner.infer(feed_dict[input_name]))
            self.inference_time = time.perf_counter() - t0  # polygraphy sums it per runner
            return OrderedDict(sr=out)

    return _Adapter()


def run_all(runners: Sequence[Runner], inputs: Sequence[np.ndarray], input_name: str = "lr"
            ) -> Dict[str, List[np.ndarray]]:
    """Run every runner on every input through polygraphy's Comparator; outputs keyed by runner name."""
    from polygraphy.comparator import Comparator

    names = [r.name for r in runners]
    if len(set(names)) != len(names):
        raise ValueError(f"runner names must be unique, got {names}")
    poly = [_as_polygraphy(r, input_name) for r in runners]
    from polygraphy.logger import G_LOGGER

    with G_LOGGER.verbosity(G_LOGGER.ERROR):  # polygraphy logs every iteration at INFO
        results = Comparator.run(poly, data_loader=[{input_name: x} for x in inputs])
    return {name: [np.asarray(it["sr"]) for it in iters] for name, iters in results.items()}


def compare(reference: Runner, candidates: Sequence[Runner], inputs: Sequence[np.ndarray],
            input_name: str = "lr") -> List[Parity]:
    outputs = run_all([reference, *candidates], inputs, input_name)
    ref_out = outputs[reference.name]
    sizes = [list(x.shape[2:]) for x in inputs]
    report = []
    for cand in candidates:
        outs = outputs[cand.name]
        finite = all(np.isfinite(o).all() for o in outs)
        report.append(Parity(
            artifact=cand.name, precision=cand.precision,
            rel_l2=max(rel_l2(o, r) for o, r in zip(outs, ref_out)),
            max_abs=max(float(np.max(np.abs(o.astype(np.float64) - r))) for o, r in zip(outs, ref_out)),
            psnr_db=min(psnr(o, r) for o, r in zip(outs, ref_out)),
            sizes=sizes, finite=finite))
    return report


def gate_parity(results: Sequence[Parity]) -> List[Optional[str]]:
    """The export's gates on :func:`compare` results (fp32 first): the fp32 file within FP32_REL_L2_LIMIT, every
    file finite; raises :class:`ExportError` otherwise. Returns each file's :func:`precision_flag` (or None)."""
    fp32 = results[0]
    if not fp32_parity_ok(fp32.rel_l2, fp32.finite):
        raise ExportError(f"fp32 ONNX does not match the eager model: rel-L2 {fp32.rel_l2:.2e} > "
                          f"{FP32_REL_L2_LIMIT:.0e} (max |err| {fp32.max_abs:.2e}); no artifact written")
    for par in results[1:]:
        if not par.finite:
            raise ExportError(f"{par.artifact} produces inf/NaN on natural inputs; no artifact written")
    return [precision_flag(par) for par in results]
