"""Per-node INT8 sensitivity and the float-fallback search, measured on held-out images.

One *switch model* answers every "what if only these nodes were quantized" question without
re-quantizing: it is the fully quantized Q/DQ graph in which each quantized node reads
``Where(qsel[k], dequantized_input, float_input)`` for each of its quantized inputs (the float input is
the tensor before the QuantizeLinear, or the FP32 weight). ``qsel`` is a boolean graph input, so one ONNX
Runtime session evaluates any subset of quantized nodes.

* Sensitivity of node k: the output MSE versus FP32 with *only* node k quantized, on a few held-out
  inputs -- its own contribution to the output error, including everything downstream of it.
* Fallback: nodes ordered by that sensitivity; the shortest prefix kept in float whose held-out PSNR-Y
  drop versus FP32 meets the budget is searched with a start from an additive noise model (calibrated
  on the measured all-INT8 drop) and a few measured steps (doubling / bisection). The drop is not
  strictly monotonic in the prefix length (SMSR's hard spatial mask flips), so the result is the
  shortest prefix *found* to meet the budget, not a proven minimum.
"""
from __future__ import annotations

import logging

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper

from lipt_export.export.graph import producers
from lipt_export.runtime.ort import ort_session

logger = logging.getLogger(__name__)

SELECTOR = "lipt_qsel"


MAX_UNITS = 128  # beyond this many quantized nodes, contiguous groups of nodes are measured together
GROUPS = 32


def make_units(nodes: Sequence[str], max_units: int = MAX_UNITS) -> List[List[str]]:
    """Measurement units: single nodes, or (for big graphs such as AgileIR's ~1000 quantized nodes)
    contiguous runs of nodes in graph order, i.e. roughly one block each."""
    if len(nodes) <= max_units:
        return [[n] for n in nodes]
    size = math.ceil(len(nodes) / GROUPS)
    return [list(nodes[i:i + size]) for i in range(0, len(nodes), size)]


def unit_label(unit: Sequence[str]) -> str:
    return unit[0] if len(unit) == 1 else f"{unit[0]} .. {unit[-1]} ({len(unit)} nodes)"


class FloatSources:
    """The float tensor behind a node input that a DequantizeLinear feeds: the activation its QuantizeLinear
    read, or for an INT8 weight the FP32 initializer the same node has in ``fp32`` (the graph before
    quantization), copied into ``graph`` once. Shared by the switch model and the float fallback."""

    def __init__(self, graph: onnx.GraphProto, fp32: "onnx.ModelProto | None"):
        self.graph = graph
        self.producer = producers(graph)
        self.fp32_nodes = {n.name: n for n in fp32.graph.node} if fp32 is not None else {}
        self.fp32_inits = {i.name: i for i in fp32.graph.initializer} if fp32 is not None else {}
        self.have = {i.name for i in graph.initializer}

    def __call__(self, node: onnx.NodeProto, slot: int) -> "str | None":
        """None when the input is not dequantized or no float source is known."""
        dq = self.producer.get(node.input[slot])
        if dq is None or dq.op_type != "DequantizeLinear":
            return None
        q = self.producer.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            return q.input[0]
        ref = self.fp32_nodes.get(node.name)
        if ref is None or slot >= len(ref.input) or ref.input[slot] not in self.fp32_inits:
            return None
        weight = ref.input[slot]
        if weight not in self.have:
            self.graph.initializer.append(self.fp32_inits[weight])
            self.have.add(weight)
        return weight


def build_switch_model(qdq: onnx.ModelProto, fp32: onnx.ModelProto, units: Sequence[Sequence[str]]
                       ) -> onnx.ModelProto:
    """The switch model described in the module docstring; ``qsel[u]`` switches every node of unit u."""
    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    graph = model.graph
    float_source = FloatSources(graph, fp32)
    index = {name: k for k, unit in enumerate(units) for name in unit}
    n_units = len(units)
    extra: List[onnx.NodeProto] = []
    conds: set = set()
    for node in graph.node:
        k = index.get(node.name)
        if k is None:
            continue
        cond = f"{SELECTOR}_{k}"
        if cond not in conds:  # one Gather per unit, shared by its nodes
            conds.add(cond)
            extra.append(helper.make_node("Gather", [SELECTOR, f"{SELECTOR}_idx_{k}"], [cond],
                                          name=f"{cond}_gather"))
            graph.initializer.append(onnx.numpy_helper.from_array(np.array(k, np.int64), f"{SELECTOR}_idx_{k}"))
        for slot, name in enumerate(node.input):
            float_src = float_source(node, slot)
            if float_src is None:
                continue
            switched = f"{name}_{SELECTOR}_{node.name}"
            extra.append(helper.make_node("Where", [cond, name, float_src], [switched], name=f"{switched}_where"))
            node.input[slot] = switched
    graph.input.append(helper.make_tensor_value_info(SELECTOR, TensorProto.BOOL, [n_units]))
    # Where/Gather nodes must precede their consumers: put each right before the node it feeds.
    feeds: Dict[str, List[onnx.NodeProto]] = {}
    for e in extra:
        feeds.setdefault(e.output[0], []).append(e)
    ordered: List[onnx.NodeProto] = []
    placed = set()

    def place(name: str) -> None:
        for e in feeds.get(name, []):
            if id(e) in placed:
                continue
            for i in e.input:
                place(i)
            placed.add(id(e))
            ordered.append(e)

    for node in list(graph.node):
        for i in node.input:
            place(i)
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    del graph.value_info[:]
    return model


class SwitchRunner:
    def __init__(self, model: onnx.ModelProto, n_units: int):
        self.session = ort_session(model)
        self.n = n_units
        self.input_name = next(i.name for i in self.session.get_inputs() if i.name != SELECTOR)
        self.output_name = self.session.get_outputs()[0].name

    def infer(self, x: np.ndarray, quantized: np.ndarray) -> np.ndarray:
        feed = {self.input_name: np.ascontiguousarray(x, dtype=np.float32), SELECTOR: quantized.astype(bool)}
        return self.session.run([self.output_name], feed)[0]


@dataclass
class SearchResult:
    order: List[int]  # unit indices by measured sensitivity, most sensitive first
    output_mse: List[float]  # per unit: output MSE vs FP32 with only that unit quantized
    kept_units: int  # the first ``kept_units`` of ``order`` stay in float
    drop_all: float
    drop: float
    evaluations: List[Tuple[int, float]] = field(default_factory=list)  # (units kept in float, drop)

    def passing(self, budget: float) -> List[int]:
        return sorted(k for k, d in self.evaluations if d <= budget)


def measure_sensitivity(runner: SwitchRunner, n_units: int, inputs: Sequence[np.ndarray],
                        references: Sequence[np.ndarray], progress: bool = True, label: str = "int8") -> List[float]:
    """Output MSE (RGB, [0,1] units) versus FP32 with only one unit quantized (reduced), per unit."""
    iterator = range(n_units)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc=f"{label} sensitivity", unit="node", leave=False)
    mse: List[float] = []
    for k in iterator:
        sel = np.zeros(n_units, bool)
        sel[k] = True
        errs = [float(np.mean((runner.infer(x, sel).astype(np.float64) - r) ** 2)) for x, r in zip(inputs, references)]
        mse.append(float(np.mean(errs)))
    return mse


def search_fallback(drop_of: Callable[[int], float], output_mse: Sequence[float], budget: float, cap: int,
                    max_evals: int = 8, label: str = "int8") -> SearchResult:
    """Shortest prefix (in units, most sensitive first) to keep in float so that ``drop_of(k) <= budget``."""
    order = sorted(range(len(output_mse)), key=lambda u: -output_mse[u])
    evals: List[Tuple[int, float]] = []

    def measure(k: int) -> float:
        d = drop_of(k)
        evals.append((k, d))
        logger.info(f"[{label}] {k} unit(s) in float -> held-out PSNR-Y drop {d:.3f} dB (budget {budget:.3f})")
        return d

    drop_all = measure(0)
    result = SearchResult(order, list(output_mse), 0, drop_all, drop_all, evals)
    if drop_all <= budget or cap <= 0:
        return result
    # Additive model: drop(k) = 10 log10(1 + c * remaining_mse(k)), c fitted so that drop(0) is exact.
    total = sum(output_mse)
    c = (10 ** (drop_all / 10) - 1) / max(total, 1e-30)
    remaining = total
    k_pred = cap
    for k in range(1, cap + 1):
        remaining -= output_mse[order[k - 1]]
        if 10 * math.log10(1 + c * max(remaining, 0.0)) <= budget:
            k_pred = k
            break
    lo, hi = 0, None  # lo: largest k known to fail; hi: smallest k known to pass
    k = k_pred
    while len(evals) < max_evals:
        d = measure(k)
        if d <= budget:
            hi = k
            result.kept_units, result.drop = k, d
        else:
            lo = k
        if hi is None:
            if k >= cap:
                result.kept_units, result.drop = k, d
                break
            k = min(cap, max(k + 1, 2 * k))
        elif hi - lo <= 1:
            break
        else:
            k = (lo + hi) // 2
    return result


def build_search_inputs(heldout: Sequence[np.ndarray], n: int = 2, crop: int = 32) -> List[np.ndarray]:
    """A few small crops of held-out inputs for the per-node measurements (cheap; the MSE is a relative
    ranking, the budget itself is checked on the full held-out set)."""
    out = []
    for x in heldout[:n]:
        h, w = x.shape[2:]
        out.append(np.ascontiguousarray(x[:, :, :min(crop, h), :min(crop, w)]))
    return out
