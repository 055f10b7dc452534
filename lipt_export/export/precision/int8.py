"""FP32 ONNX -> INT8 explicit-quantization (Q/DQ) ONNX for TensorRT, with a measured PSNR-Y budget.

What TensorRT's ONNX parser accepts (onnx-tensorrt ``QuantDequantLinearHelper``; TensorRT 11 has no
calibrators, so the Q/DQ pairs in the graph *are* the precision): INT8 with zero point 0, positive scales,
per-channel weight scales along the output-channel axis. We therefore quantize with ONNX Runtime's
``quantize_static`` in QDQ format, S8S8 symmetric, per-channel weights, and

* only the inputs of Conv / ConvTranspose / MatMul / Gemm (the layers TensorRT fuses Q/DQ into; Q/DQ
  elsewhere only adds rounding), no Q/DQ on their outputs (like NVIDIA's pytorch-quantization
  placement), biases left in float (TensorRT's DequantizeLinear takes INT8/FP8/INT4, not INT32), and
  every other consumer of a quantized tensor (residual Adds, concats, the mask branch) reading the float
  tensor -- accuracy first: TensorRT then cannot fuse an INT8 residual add, which costs some speed;
* ranges from :mod:`lipt_export.export.precision.calibration.ranges` (cached);
* a sensitivity pass on held-out images (never the calibration images): each quantized node's own
  contribution to the output error is measured with only that node quantized, and the most sensitive
  nodes are kept in float until the held-out PSNR-Y drop versus FP32 is within the budget, or the cap
  (half the quantized nodes by default) is reached, which the report then says
  (:mod:`lipt_export.export.precision.calibration.sensitivity`). The final artifact is re-measured on the held-out set.
"""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx

from lipt_export.engines.audit import COMPUTE_OPS, qdq_compute_nodes
from lipt_export.export.precision.calibration.data import load_calibration_set
from lipt_export.export.precision.calibration.heldout import HeldOut
from lipt_export.export.precision.calibration.ranges import (graph_sha256, load_or_collect, ort_method, write_cache,
                                                             write_ort_cache)
from lipt_export.export.precision.calibration.sensitivity import (FloatSources, SearchResult, SwitchRunner,
                                                                  build_search_inputs, build_switch_model, make_units,
                                                                  measure_sensitivity, search_fallback, unit_label)
from lipt_export.report import format_table
from lipt_export.validation.metrics import psnr_from_mse
from lipt_export.validation.metrics import psnr_y_nchw as psnr_y

logger = logging.getLogger(__name__)

QUANT_OP_TYPES = COMPUTE_OPS  # Q/DQ in front of the compute ops: what an engine runs in INT8
CALIBRATOR_OPTIONS = {"symmetric": True}
SENSITIVITY_TABLE = 12


@dataclass(frozen=True)
class QdqScheme:
    """What the Q/DQ pairs hold. The INT8 graph is always built first (ONNX Runtime's quantizer places the pairs and
    holds the ranges); ``convert(int8 model, fp32 model)`` rewrites it into another scheme (FP8: export/precision/
    fp8.py) before the sensitivity search, so the fallback is measured on the scheme's own arithmetic."""

    name: str
    description: str
    convert: Optional[Callable[[onnx.ModelProto, onnx.ModelProto], onnx.ModelProto]] = None


INT8 = QdqScheme("int8", "S8S8 symmetric (zero point 0), per-channel weights")


def quantizer_options() -> Dict[str, object]:
    # MinimumRealRange: a tensor that is constant zero on the calibration data would get scale 0, which
    # TensorRT rejects ("Scale coefficients must all be positive").
    return {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False, "MinimumRealRange": 1e-4,
            "OpTypesToExcludeOutputQuantization": list(QUANT_OP_TYPES)}


def restore_float_consumers(model: onnx.ModelProto, exclude: Sequence[str] = (),
                            fp32: Optional[onnx.ModelProto] = None) -> int:
    """ORT hands the dequantized tensor to *every* consumer of a quantized tensor, so residual Adds, concats
    and the like silently read INT8-rounded values. Give every consumer that is not a quantized weighted
    layer the original float tensor back (Q/DQ stay only in front of Conv/MatMul/...), and drop Q/DQ pairs
    nobody reads any more. Nodes in ``exclude`` are treated the same way; their INT8 weights are swapped
    back for the FP32 weights of ``fp32`` (the same graph before quantization), which is how a node is
    kept in float without re-running the quantizer. Returns the number of inputs rewired."""
    graph = model.graph
    excluded = set(exclude)
    float_source = FloatSources(graph, fp32)
    rewired = 0
    for node in graph.node:
        if node.op_type in QUANT_OP_TYPES and node.name not in excluded:
            continue
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for k in range(len(node.input)):
            src = float_source(node, k)
            if src is not None:
                node.input[k] = src
                rewired += 1
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    while True:  # drop DQ then Q nodes whose outputs are no longer read
        dead = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)]
        if not dead:
            break
        ids = {id(n) for n in dead}
        keep = [n for n in graph.node if id(n) not in ids]
        del graph.node[:]
        graph.node.extend(keep)
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    live = {i for n in graph.node for i in n.input}
    live |= {g.name for g in graph.input}
    inits = [i for i in graph.initializer if i.name in live]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    return rewired


class Quantizer:
    """quantize_static with fixed options and cached ranges; ``build(exclude, out)`` writes a QDQ model."""

    def __init__(self, pre_path: Path, ranges_path: Path, method: str):
        self.pre_path, self.ranges_path, self.method = pre_path, ranges_path, method

    def build(self, exclude: Sequence[str], out: Path) -> Path:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        # ORT's quantizer logs hints and per-tensor warnings on the root logger; the CLI silences them there.
        quantize_static(str(self.pre_path), str(out), None, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(QUANT_OP_TYPES), per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=list(exclude), calibrate_method=ort_method(self.method),
                        extra_options=quantizer_options(), calibration_cache_path=str(self.ranges_path))
        model = onnx.load(str(out))
        restore_float_consumers(model, exclude)
        onnx.save(model, str(out))
        return out


def nodes_without_finite_range(model: onnx.ModelProto, ranges) -> List[str]:
    """Weighted nodes with an activation input whose calibrated range is missing or not finite (e.g. an
    empty stripe at the calibration size, or a -inf attention mask): they cannot be quantized."""
    inits = {i.name for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type not in QUANT_OP_TYPES:
            continue
        for name in node.input[:2]:
            if not name or name in inits:
                continue
            td = ranges.data.get(name) if hasattr(ranges, "data") else None
            rv = getattr(td, "range_value", None)
            if rv is None or not all(np.all(np.isfinite(np.asarray(v, dtype=np.float64))) for v in rv):
                out.append(node.name)
                break
    return out


def preprocess(src: Path, dst: Path) -> None:
    """ORT's quantization pre-processing without symbolic shape inference (it fails on dynamic H/W,
    environment.md section 6) and without graph optimisation (keeps node names stable)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst), skip_optimization=True, skip_onnx_shape=False,
                      skip_symbolic_shape=True)


def _db_vs_fp32(mse: float) -> float:
    """Output PSNR (peak 1.0) versus FP32 implied by an output MSE."""
    return round(psnr_from_mse(mse), 2)


def keep_in_float(q_all: onnx.ModelProto, fp32: onnx.ModelProto, nodes: Sequence[str]) -> onnx.ModelProto:
    """The fully quantized model with ``nodes`` switched back to float inputs and FP32 weights."""
    model = onnx.ModelProto()
    model.CopyFrom(q_all)
    restore_float_consumers(model, nodes, fp32)
    return model


def sensitivity_and_fallback(q_all: Path, pre: Path, held: HeldOut, budget: float, cap: Optional[int],
                             label: str = "int8") -> Tuple[Dict[str, str], List[List[str]], SearchResult,
                                                           Dict[str, object]]:
    """Measure each unit's output error alone and search the float set, both on the switch model
    (:mod:`lipt_export.export.precision.calibration.sensitivity`)."""
    t0 = time.perf_counter()
    qdq = onnx.load(str(q_all))
    node_ops = {n.name: n.op_type for n in qdq_compute_nodes(qdq)}
    units = make_units(list(node_ops))
    cap = cap if cap is not None else max(1, len(node_ops) // 2)
    if len(units) < len(node_ops):
        # Big graph (grouped units): the switch model is slow to build, so skip it when the fully
        # quantized artifact already meets the budget.
        drop_all = held.drop(q_all)
        if drop_all <= budget:
            logger.info(f"[{label}] all {len(node_ops)} nodes {label.upper()}: held-out PSNR-Y drop {drop_all:.3f} dB, within budget; "
                f"per-unit sensitivity skipped")
            result = SearchResult(list(range(len(units))), [float("nan")] * len(units), 0, drop_all, drop_all,
                                  [(0, drop_all)])
            return node_ops, units, result, {"units": len(units), "nodes_per_unit": len(units[0]),
                                             "sensitivity": "skipped (big graph already within budget)",
                                             "fallback_cap_nodes": cap, "fallback_cap_units": 0,
                                             "seconds": round(time.perf_counter() - t0, 2)}
    switch = SwitchRunner(build_switch_model(qdq, onnx.load(str(pre)), units), len(units))
    crops = build_search_inputs(held.lr, n=4 if len(units) == len(node_ops) else 1, crop=64)
    refs = [held.fp32_output(x).astype(np.float64) for x in crops]
    mse = measure_sensitivity(switch, len(units), crops, refs, label=label)
    order = sorted(range(len(units)), key=lambda u: -mse[u])
    fp32_mean = float(np.mean(held.fp32_psnr))

    def drop_of(k: int) -> float:
        sel = np.ones(len(units), bool)
        sel[order[:k]] = False
        return fp32_mean - float(np.mean([psnr_y(switch.infer(x, sel), y, held.shave)
                                          for x, y in zip(held.lr, held.hr)]))

    cap_units = max(0, min(len(units), cap if len(units) == len(node_ops) else
                           int(cap * len(units) / max(len(node_ops), 1))))
    result = search_fallback(drop_of, mse, budget, cap_units, label=label)
    stats = {"units": len(units), "nodes_per_unit": max(len(u) for u in units) if units else 0,
             "search_crops": [list(c.shape[2:]) for c in crops], "fallback_cap_nodes": cap,
             "fallback_cap_units": cap_units,
             "search_evaluations": [{"units_in_float": k, "drop_db": round(d, 4)} for k, d in result.evaluations],
             "seconds": round(time.perf_counter() - t0, 2)}
    return node_ops, units, result, stats


def quantize_int8(src: Path, dst: Path, *, calib_dir: str | Path, calib_lr: bool = False, count: int = 32,
                  size: int = 64, method: str = "minmax", scale: int = 2, max_psnr_drop: float = 0.10,
                  cache_dir: Optional[str | Path] = None, seed: int = 0,
                  max_fallback: Optional[int] = None, scheme: QdqScheme = INT8) -> Dict[str, object]:
    """Write the Q/DQ model (INT8, or ``scheme``) to ``dst``; returns ``{scheme.name: {...}}`` for the manifest
    artifact entry."""
    import onnxruntime

    src, dst = Path(src), Path(dst)
    ort_method(method)  # validates the name before any work
    data = load_calibration_set(calib_dir, calib_lr=calib_lr, count=count, size=size, scale=scale, seed=seed)
    fp32 = onnx.load(str(src))
    label = scheme.name
    with tempfile.TemporaryDirectory(prefix=f"lipt-{label}-") as tmp_name:
        tmp = Path(tmp_name)
        pre = tmp / "pre.onnx"
        preprocess(src, pre)
        ranges, cache_file, hit, key = load_or_collect(
            pre, data.calib, method=method, op_types=QUANT_OP_TYPES, options=CALIBRATOR_OPTIONS,
            model_sha=graph_sha256(fp32), data_fp=data.fingerprint, cache_dir=cache_dir)
        ort_cache = tmp / "ranges.ort.json"
        write_ort_cache(ort_cache, ranges)
        q = Quantizer(pre, ort_cache, method)
        unquantizable = nodes_without_finite_range(onnx.load(str(pre)), ranges)
        if unquantizable:
            logger.info(f"[{label}] {len(unquantizable)} node(s) have no finite calibrated input range and stay float: "
                + ", ".join(unquantizable[:4]) + (" ..." if len(unquantizable) > 4 else ""))
        q_all = q.build(unquantizable, tmp / "all.int8.onnx")
        if scheme.convert is not None:
            converted = scheme.convert(onnx.load(str(q_all)), onnx.load(str(pre)))
            q_all = tmp / f"all.{label}.onnx"
            onnx.save(converted, str(q_all))
        held = HeldOut(lr=data.heldout_lr, hr=data.heldout_hr, shave=scale, fp32_path=src)
        held.fp32_psnr = held.psnr(src)
        node_ops, units, search, stats = sensitivity_and_fallback(q_all, pre, held, max_psnr_drop, max_fallback,
                                                                      label)
        q_model, pre_model = onnx.load(str(q_all)), onnx.load(str(pre))
        # The switch model computes Q/DQ unfused; the artifact is what the budget is about, so it is
        # re-measured, and the float set grows (next passing search point, else +50 %) if it misses.
        k = search.kept_units
        tries = [k] + [p for p in search.passing(max_psnr_drop) if p > k][:1]
        tries.append(min(stats["fallback_cap_units"], max(k + 1, (3 * k + 1) // 2)))
        verified: List[Tuple[int, float]] = []
        for k in dict.fromkeys(tries):
            kept = [n for u in search.order[:k] for n in units[u]]
            onnx.save(keep_in_float(q_model, pre_model, kept), str(dst))
            drop = held.drop(dst)
            verified.append((k, drop))
            if drop <= max_psnr_drop or search.drop > max_psnr_drop:
                break
            logger.info(f"[{label}] artifact drop {drop:.3f} dB > budget with {len(kept)} node(s) in float; widening")
        stats["artifact_checks"] = [{"units_in_float": k, "drop_db": round(d, 4)} for k, d in verified]
        sidecar = dst.with_name(dst.name.replace(".onnx", "") + ".calib.json")
        write_cache(sidecar, ranges, key)
    drop_all = search.drop_all
    mse_by_unit = dict(enumerate(search.output_mse))
    table = [{"node": unit_label(units[u]), "op": "/".join(sorted({node_ops[n] for n in units[u]})),
              "output_psnr_db_alone": _db_vs_fp32(mse_by_unit[u]), "kept_float": units[u][0] in kept}
             for u in search.order[:SENSITIVITY_TABLE] if np.isfinite(mse_by_unit[u])]
    budget_met = drop <= max_psnr_drop
    if not budget_met:
        logger.warning(f"[{label}] held-out PSNR-Y drop {drop:.3f} dB exceeds the budget {max_psnr_drop:.3f} dB with "
            f"{len(kept)} node(s) in float (cap {stats['fallback_cap_nodes']}); the {label.upper()} artifact is written "
            f"anyway")
    else:
        logger.info(f"[{label}] {len(kept)} of {len(node_ops)} node(s) kept in float; held-out PSNR-Y drop {drop:.3f} dB "
            f"(budget {max_psnr_drop:.3f} dB)")
    final_q = onnx.load(str(dst))
    return {label: {
        "format": "QDQ", "scheme": scheme.description,
        "quantizer": f"onnxruntime.quantization.quantize_static (onnxruntime {onnxruntime.__version__})",
        "op_types": list(QUANT_OP_TYPES), "method": method,
        "calibration": {**data.info, "cache_file": str(cache_file) if cache_file else None,
                        "sidecar": sidecar.name, "key": key},
        "cache": "hit" if hit else "miss",
        "quantized_nodes": len(qdq_compute_nodes(final_q)), "quantizable_nodes": len(node_ops),
        "nodes_in_float": [{"node": n, "op": node_ops[n]} for n in kept],
        "nodes_without_range": unquantizable,
        "sensitivity_top": table,
        "heldout_psnr_y_fp32": round(float(np.mean(held.fp32_psnr)), 4),
        f"psnr_drop_all_{label}_db": round(drop_all, 4), "psnr_drop_db": round(drop, 4),
        "psnr_drop_search_db": round(search.drop, 4),
        "max_psnr_drop_db": max_psnr_drop, "budget_met": budget_met, "search": stats,
    }}


def report_lines(path: str, q: Dict[str, object], label: str = "int8") -> List[str]:
    """Markdown for report.md: a Q/DQ file's outcome (``q``: its ``int8``/``fp8`` block), the nodes kept in float and
    the sensitivity table."""
    cal = q["calibration"]
    lines = [f"### {label.upper()} ({path})", "",
             f"{q['scheme']}, Q/DQ on the inputs of {', '.join(q['op_types'])}; calibration `{q['method']}` on "
             f"{cal['patches']} LR patches of {cal['patch_size_lr']} px from {len(cal['calibration_images'])} "
             f"image(s) in `{cal['folder']}` (cache {q['cache']}); LR made with {cal['downscaler']}.", "",
             f"Held-out ({', '.join(cal['heldout_images'])}, {cal['heldout_pairs']} pairs; {cal['heldout_note']}): "
             f"FP32 PSNR-Y {q['heldout_psnr_y_fp32']:.3f} dB; all {q['quantizable_nodes']} nodes {label.upper()}: "
             f"drop {q[f'psnr_drop_all_{label}_db']:.3f} dB; with {len(q['nodes_in_float'])} node(s) in float: drop "
             f"**{q['psnr_drop_db']:.3f} dB** (budget {q['max_psnr_drop_db']:.3f} dB, "
             f"{'met' if q['budget_met'] else 'NOT met'}).", ""]
    if q["nodes_in_float"]:
        lines += ["Nodes kept in float:", "",
                  format_table(("node", "op"), [[n["node"], n["op"]] for n in q["nodes_in_float"]], markdown=True), ""]
    lines += ["Sensitivity (output PSNR vs FP32 with only that node quantized, held-out crops; lower = more "
              "sensitive):", "",
              format_table(("node", "op", "PSNR alone (dB)", "kept float"),
                           [[r["node"], r["op"], f"{r['output_psnr_db_alone']:.2f}", "yes" if r["kept_float"] else ""]
                            for r in q["sensitivity_top"]], markdown=True), ""]
    return lines
