"""FP32 ONNX -> BF16 ONNX (opset 22) with FP32 islands chosen by measurement.

BF16 has FP32's exponent range, so nothing overflows where FP16 would; what it loses is precision (8 significant
bits: a 0..1 pixel is stored to about 1/256, once per tensor that is written in BF16). Which nodes must stay FP32
is therefore measured as INT8's float fallback is, on held-out pairs (:mod:`.calibration.heldout`):

1. The *rounding model* (:func:`lipt_export.export.precision.bf16_graph.rounding_model`) is the FP32 graph in which
   each arithmetic node, switched by a boolean graph input, rounds what it reads and writes to bfloat16 (round to
   nearest even, as the BF16 file stores it; arithmetic inside a node stays FP32 as in BF16 tensor cores, which
   accumulate in FP32). ONNX Runtime runs it on the CPU although it has no BF16 Conv.
2. Each node's own contribution (output MSE versus FP32 with only that node in BF16) orders the nodes; the shortest
   prefix kept in FP32 whose held-out PSNR-Y drop meets the BF16 budget is searched exactly as INT8's fallback
   (:func:`~lipt_export.export.precision.calibration.sensitivity.search_fallback`). Softmax logits, normalisations
   and large reductions are where BF16 loses in transformers; in SMSR it is the hard masks and the image-facing
   convolutions. The measurement decides, not a list.
3. The FP32 graph is converted to opset 22 (onnx's version converter; the checker checks the result) and typed
   (:func:`~lipt_export.export.precision.bf16_graph.write_bf16`): every other node in BF16, Casts where regions
   meet, graph I/O float32. Nodes whose op has no bfloat16 in opset 22 stay FP32 and are listed with that reason.
4. The file itself is run where it can run on a CPU (OpenVINO; ONNX Runtime cannot), and its drop is recorded next
   to the rounding model's.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import onnx

from lipt_export.catalog import BF16_MAX_PSNR_DROP_DB, PRECISION_OPSETS
from lipt_export.engines.audit import COMPUTE_OPS
from lipt_export.errors import ExportError
from lipt_export.export.graph import tensor_types
from lipt_export.export.precision.bf16_graph import compute_nodes, rounding_model, write_bf16
from lipt_export.export.precision.calibration.heldout import HeldOut
from lipt_export.export.precision.calibration.sensitivity import (SELECTOR, SearchResult, SwitchRunner,
                                                                  build_search_inputs, make_units,
                                                                  measure_sensitivity, search_fallback, unit_label)
from lipt_export.runtime.base import Runner
from lipt_export.validation.metrics import psnr_from_mse

logger = logging.getLogger(__name__)

ISLAND_TABLE = 12
MAX_UNITS = 256  # arithmetic nodes measured one by one up to this many (SMSR 146, LIPT-tiny 139), else in groups


def convert_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """``model`` at ``opset`` or its own, whichever is newer (onnx's version converter), checked; a graph it cannot
    convert is an ExportError."""
    from onnx import checker, version_converter

    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    if current >= opset:
        return model
    try:
        converted = version_converter.convert_version(model, opset)
        checker.check_model(converted, full_check=True)
    except Exception as exc:  # the converter's and checker's own errors: the graph, not our code, is at fault
        raise ExportError(f"onnx cannot convert this graph from opset {current} to {opset}: "
                          f"{' '.join(str(exc).split())[:200]}; export without this precision") from None
    return converted


def convert_bf16(src: Path, dst: Path, *, held: HeldOut, max_psnr_drop: float = BF16_MAX_PSNR_DROP_DB,
                 artifact_runner: Optional[Callable[[Path], Optional[Runner]]] = None,
                 max_islands: Optional[int] = None) -> Dict[str, object]:
    """Write the BF16 model to ``dst``; returns ``{"bf16": {...}}`` for the manifest entry. ``artifact_runner(path)``
    returns a runner that executes a BF16 file on this machine (None: none can; the rounding model's figure
    stands alone)."""
    import onnxruntime

    t0 = time.perf_counter()
    opset = PRECISION_OPSETS["bf16"]
    fp32 = onnx.load(str(src))
    types = tensor_types(fp32)
    candidates, forced = compute_nodes(fp32, types, opset)
    node_ops = {n.name: n.op_type for n in candidates}
    units = make_units(list(node_ops), MAX_UNITS)
    held.measure_fp32()
    converted = convert_opset(fp32, opset)
    opset = next(o.version for o in converted.opset_import if o.domain in ("", "ai.onnx"))
    converted_types = tensor_types(converted)

    def write(islands: List[str]) -> Dict[str, int]:
        model, counts = write_bf16(converted, converted_types, set(islands) | set(forced), opset)
        try:
            onnx.checker.check_model(model, full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"the BF16 graph does not pass onnx's checker ({' '.join(str(exc).split())[:200]}); "
                              f"export without --bf16") from None
        onnx.save(model, str(dst))
        return counts

    def measure_file() -> Optional[Dict[str, object]]:
        runner = artifact_runner(dst) if artifact_runner else None
        return {"runtime": runner.runtime, "psnr_drop_db": round(held.drop(runner), 4)} if runner else None

    # The file with every convertible node in BF16 first: when it meets the budget (AgileIR, LIPT here) there is
    # nothing to rank and the rounding model (several times the graph) is never built.
    counts = write([])
    artifact = measure_file()
    cap = max_islands if max_islands is not None else max(1, len(units) // 2)
    if artifact is not None and artifact["psnr_drop_db"] <= max_psnr_drop:
        drop = float(artifact["psnr_drop_db"])
        search = SearchResult(list(range(len(units))), [float("nan")] * len(units), 0, drop, drop, [(0, drop)])
    else:
        switch = SwitchRunner(rounding_model(fp32, types, units, SELECTOR), len(units))
        crops = build_search_inputs(held.lr, n=2, crop=48)  # a ranking; the budget is checked on every pair
        refs = [held.fp32_output(x).astype(np.float64) for x in crops]
        mse = measure_sensitivity(switch, len(units), crops, refs, label="bf16")
        order = sorted(range(len(units)), key=lambda u: -mse[u])

        def drop_of(k: int) -> float:
            sel = np.ones(len(units), bool)
            sel[order[:k]] = False
            return held.drop_of(lambda x: switch.infer(x, sel))

        search = search_fallback(drop_of, mse, max_psnr_drop, cap, label="bf16")
        islands = [n for u in search.order[:search.kept_units] for n in units[u]]
        counts = write(islands)
        artifact = measure_file()
    islands = [n for u in search.order[:search.kept_units] for n in units[u]]
    budget_met = search.drop <= max_psnr_drop
    if not budget_met:
        logger.warning(f"[bf16] held-out PSNR-Y drop {search.drop:.3f} dB exceeds the budget {max_psnr_drop:.3f} dB "
                       f"with {len(islands)} FP32 island(s) (cap {cap}); the BF16 artifact is written anyway")
    logger.info(f"[bf16] {len(islands)} of {len(node_ops)} arithmetic node(s) kept FP32; held-out PSNR-Y drop "
                f"{search.drop:.4f} dB" + (f"; the file on {artifact['runtime']}: {artifact['psnr_drop_db']:.4f} dB"
                                           if artifact else ""))
    mse_by_unit = dict(enumerate(search.output_mse))
    island_rows = [{"node": n, "op": node_ops[n], "reason": "measured: with only this node in BF16 the output is "
                    f"{_db_alone(mse_by_unit[u])} dB PSNR from FP32, among the most sensitive (held-out ranking)",
                    "output_psnr_db_alone": _db_alone(mse_by_unit[u])}
                   for u in search.order[:search.kept_units] for n in units[u]]
    island_rows += [{"node": n, "op": next(x.op_type for x in fp32.graph.node if x.name == n), "reason": why}
                    for n, why in forced.items()]
    return {"bf16": {
        "opset": opset, "converter": f"onnx.version_converter to opset {opset} + lipt-export typed rewrite "
                                     f"(onnx {onnx.__version__})",
        "measured_with": f"rounding model on onnxruntime {onnxruntime.__version__} (bfloat16 storage, FP32 "
                         f"arithmetic inside nodes)",
        "io": "float32", "heldout": held.source, "heldout_psnr_y_fp32": round(float(np.mean(held.fp32_psnr)), 4),
        "arithmetic_nodes": len(node_ops), "islands": island_rows,
        "fp32_compute_nodes": sorted(n["node"] for n in island_rows if n["op"] in COMPUTE_OPS),
        "nodes": counts, "psnr_drop_all_bf16_db": round(search.drop_all, 4),
        "psnr_drop_db": round(search.drop, 4), "artifact": artifact, "max_psnr_drop_db": max_psnr_drop,
        "budget_met": budget_met,
        "search": {"units": len(units), "search_evaluations": [{"units_in_fp32": k, "drop_db": round(d, 4)}
                                                               for k, d in search.evaluations],
                   "cap_units": cap, "seconds": round(time.perf_counter() - t0, 2)},
        "sensitivity_top": [{"node": unit_label(units[u]), "output_psnr_db_alone": _db_alone(mse_by_unit[u]),
                             "kept_fp32": k < search.kept_units}
                            for k, u in enumerate(search.order[:ISLAND_TABLE]) if np.isfinite(mse_by_unit[u])],
        "sensitivity": "measured" if search.kept_units or np.isfinite(search.output_mse).any() else
                       "skipped: the all-BF16 file meets the budget",
    }}


def _db_alone(mse: float) -> float:
    return round(psnr_from_mse(mse), 2)


def report_lines(path: str, b: Dict[str, object]) -> List[str]:
    """Markdown for report.md: the BF16 outcome and its FP32 islands."""
    from lipt_export.report import format_table  # deferred: only reports need it

    art = b.get("artifact")
    lines = [f"### BF16 ({path})", "",
             f"Opset {b['opset']}; measured on {b['heldout']}: FP32 PSNR-Y {b['heldout_psnr_y_fp32']:.3f} dB; all "
             f"{b['arithmetic_nodes']} arithmetic nodes BF16: drop {b['psnr_drop_all_bf16_db']:.4f} dB; with "
             f"{len(b['islands'])} FP32 island(s): drop **{b['psnr_drop_db']:.4f} dB** (rounding model; budget "
             f"{b['max_psnr_drop_db']:.3f} dB, {'met' if b['budget_met'] else 'NOT met'})"
             + (f"; the file on {art['runtime']}: {art['psnr_drop_db']:.4f} dB" if art else "") + ".", ""]
    if b["islands"]:
        lines += [format_table(("node", "op", "why FP32"), [[i["node"], i["op"], i["reason"]] for i in b["islands"]],
                               markdown=True), ""]
    return lines
