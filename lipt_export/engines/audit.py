"""Precision audit of a parsed, strongly typed TensorRT network, and its cross-check against what the precision
stages recorded (users' first complaint about TensorRT 11: FP16 builds that silently stay FP32).

Compute layers are convolutions, deconvolutions and matrix multiplies. A layer counts as int8 (fp8) when its data and
weight inputs both come from dequantize layers reading int8 (fp8); otherwise it computes in its data input's type
(fp32, fp16, bf16).
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

from lipt_export.errors import EngineError

COMPUTE_TYPES = ("CONVOLUTION", "DECONVOLUTION", "MATRIX_MULTIPLY")
COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


AUDITED = ("fp32", "fp16", "bf16", "int8", "fp8")


def audit_network(trt, network) -> Dict[str, Any]:
    """{"compute_layers", "by_precision": {fp32, fp16, bf16, int8, fp8}, "<precision>_layers": [...] for each}."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    producer = {layer.get_output(k).name: layer for layer in layers for k in range(layer.num_outputs)}
    compute = {getattr(trt.LayerType, t) for t in COMPUTE_TYPES}
    names = {trt.DataType.FLOAT: "fp32", trt.DataType.HALF: "fp16", trt.DataType.BF16: "bf16"}

    # layers that only move values: the parser puts a shuffle between a weight's DequantizeLinear and a batched
    # MatMul (ESRT's 3-D x 2-D attention projections), which still computes on the dequantized INT8/FP8 values
    moves = {getattr(trt.LayerType, t) for t in ("SHUFFLE", "IDENTITY") if hasattr(trt.LayerType, t)}

    def dequantized_from(tensor) -> Any:
        src = producer.get(tensor.name) if tensor is not None else None
        for _ in range(4):
            if src is None or src.type not in moves or src.get_input(0) is None:
                break
            src = producer.get(src.get_input(0).name)
        if src is None or src.type != trt.LayerType.DEQUANTIZE or src.get_input(0) is None:
            return None
        return src.get_input(0).dtype

    quantized = {trt.DataType.INT8: "int8", getattr(trt.DataType, "FP8", None): "fp8"}
    by: Dict[str, List[str]] = {k: [] for k in AUDITED}
    for layer in layers:
        if layer.type not in compute:
            continue
        data = layer.get_input(0)
        weight = layer.get_input(1) if layer.num_inputs > 1 else None
        q_data, q_weight = dequantized_from(data), dequantized_from(weight)
        if q_data is not None and q_data == q_weight and q_data in quantized:
            kind = quantized[q_data]
        else:
            kind = names.get(data.dtype, str(data.dtype).rsplit(".", 1)[-1].lower())
        by.setdefault(kind, []).append(layer.name)
    total = sum(len(v) for v in by.values())
    return {"compute_layers": total, "by_precision": {k: len(v) for k, v in by.items()},
            **{f"{k}_layers": sorted(by[k]) for k in AUDITED}}


def audit_summary(audit: Mapping[str, Any], precision: str) -> Dict[str, Any]:
    """The manifest's ``precision_audit``: counts, shares, and the names of the FP32 compute layers (every
    compute layer of an fp32 engine is FP32, so those are not listed one by one)."""
    n = max(1, audit["compute_layers"])
    return {"compute_layers": audit["compute_layers"], "by_precision": dict(audit["by_precision"]),
            "shares": {k: round(v / n, 4) for k, v in audit["by_precision"].items()},
            "fp32_layers": "all" if precision == "fp32" else list(audit["fp32_layers"])}


def cross_check(artifact: str, audit: Mapping[str, Any], claims: Mapping[str, Optional[Sequence[str]]]) -> None:
    """Fail naming the layers where the engine's precision differs from what the export recorded. ``claims``
    maps "fp32"/"fp16"/"bf16"/"int8"/"fp8" to the compute-node names the export says run in that precision (None: no claim)."""
    problems = []
    found = {k: set(audit.get(f"{k}_layers", ())) for k in AUDITED}
    for kind, want in claims.items():
        if want is None:
            continue
        have = found[kind]
        extra, missing = sorted(have - set(want)), sorted(set(want) - have)
        if extra:
            problems.append(f"{kind} in the engine but not recorded: {', '.join(extra[:4])}"
                            + (f" (+{len(extra) - 4})" if len(extra) > 4 else ""))
        if missing:
            problems.append(f"recorded {kind} but not in the engine: {', '.join(missing[:4])}"
                            + (f" (+{len(missing) - 4})" if len(missing) > 4 else ""))
    if problems:
        raise EngineError(f"precision audit of {artifact} disagrees with the export: {'; '.join(problems)}")


def qdq_compute_nodes(model) -> List[Any]:
    """Compute nodes (``COMPUTE_OPS``) of an ONNX model with an input from a DequantizeLinear: what an INT8 Q/DQ
    file runs in INT8 (the INT8 stage quantizes exactly these op types)."""
    dq_out = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return [n for n in model.graph.node if n.op_type in COMPUTE_OPS and any(i in dq_out for i in n.input)]


def precision_claims(onnx_path, entry) -> Dict[str, Optional[set]]:
    """What the precision stages recorded about an ONNX artifact (an ``ArtifactEntry`` of the file at
    ``onnx_path``), for :func:`cross_check`: compute nodes that run in FP32 (fp16/bf16: exactly the recorded FP32
    islands) and in INT8/FP8 (exactly the Q/DQ'd nodes, the recorded float fallbacks excluded). None = no claim."""
    none_of = {k: set() for k in AUDITED}
    if entry.precision == "fp16":
        islands = {i.node for i in (entry.fp16.islands if entry.fp16 else ()) if i.op in COMPUTE_OPS}
        return {**none_of, "fp32": islands, "fp16": None}
    if entry.precision == "bf16":
        return {**none_of, "fp32": set(entry.bf16.fp32_compute_nodes) if entry.bf16 else None, "bf16": None}
    if entry.precision in ("int8", "fp8"):
        import onnx  # deferred: only Q/DQ files are read here

        nodes = {n.name for n in qdq_compute_nodes(onnx.load(str(onnx_path)))}
        return {**none_of, entry.precision: nodes, "fp32": None}
    return {**none_of, "fp32": None}


def claimed_share(audit: Mapping[str, Any], precision: str) -> float:
    """The share of compute layers an engine runs in its artifact's precision (fp32 engines: fp32)."""
    n = max(1, audit["compute_layers"])
    return audit["by_precision"].get(precision, 0) / n
