"""Graph rewrites for BF16: which nodes may hold bfloat16 in an opset, the *rounding model* the measurement runs
(an FP32 graph in which chosen nodes round what they read and write to bfloat16: ONNX Runtime has no BF16 Conv, but
it casts to and from bfloat16 exactly as IEEE round-to-nearest-even, which is what a BF16 engine stores), and the
typed rewrite that writes the BF16 file.

The storage model both share: a tensor is bfloat16 when the node writing it runs in BF16; a BF16 node reads every
float input as bfloat16 (an FP32 tensor is rounded on the way in) and an FP32 node reads bfloat16 exactly (the
widening cast is lossless). Value-preserving nodes (reshapes, slices, concatenations, Relu, max-pooling: their
output holds only input values) never add rounding: they take the type of what they read.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lipt_export.catalog import BF16_FP32_OPS


# Nodes whose output holds only values of their input: they round nothing, so they follow their input's type.
VALUE_PRESERVING = {"Reshape", "Transpose", "Slice", "Concat", "Split", "Pad", "DepthToSpace", "SpaceToDepth",
                    "Squeeze", "Unsqueeze", "Flatten", "Gather", "GatherElements", "GatherND", "Identity", "Expand",
                    "Tile", "Relu", "MaxPool", "Max", "Min", "Where", "Neg", "Abs"}
# Nodes that are not arithmetic on activations: left as they are (shape computations, explicit casts).
NOT_CONVERTED = {"Constant", "Shape", "Size", "Cast", "CastLike", "ConstantOfShape", "Range", "NonZero"}
ROUND = "lipt_bf16"


def bf16_slots(node: onnx.NodeProto, opset: int) -> Optional[Tuple[List[bool], List[bool]]]:
    """Per input and per output slot: may it hold tensor(bfloat16) in ``opset``? None when the op is unknown or
    no output may (the node must stay FP32)."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain or "")
    except onnx.defs.SchemaError:
        return None
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}

    def slots(formals, n: int) -> List[bool]:
        out = []
        for i in range(n):
            if not formals:
                out.append(False)
                continue
            formal = formals[min(i, len(formals) - 1)]
            out.append("tensor(bfloat16)" in allowed.get(formal.type_str, {formal.type_str}))
        return out

    ins, outs = slots(schema.inputs, len(node.input)), slots(schema.outputs, len(node.output))
    return (ins, outs) if any(outs) else None


def is_float(types: Dict[str, int], name: str) -> bool:
    return bool(name) and types.get(name) == TensorProto.FLOAT


def compute_nodes(model: onnx.ModelProto, types: Dict[str, int], opset: int
                  ) -> Tuple[List[onnx.NodeProto], Dict[str, str]]:
    """(the arithmetic nodes that could run in BF16, {node: why it must stay FP32} for those that cannot)."""
    candidates, forced = [], {}
    for node in model.graph.node:
        if node.op_type in NOT_CONVERTED or node.op_type in VALUE_PRESERVING:
            continue
        if not any(is_float(types, o) for o in node.output):
            continue
        if bf16_slots(node, opset) is None:
            forced[node.name] = f"{node.op_type} has no bfloat16 in ONNX opset {opset}"
            continue
        if node.op_type in BF16_FP32_OPS:
            forced[node.name] = BF16_FP32_OPS[node.op_type]
            continue
        candidates.append(node)
    return candidates, forced


def rounding_model(model: onnx.ModelProto, types: Dict[str, int], units: Sequence[Sequence[str]],
                   selector: str) -> onnx.ModelProto:
    """The FP32 graph in which node k of unit u rounds its float inputs and outputs to bfloat16 when
    ``selector[u]`` is true (one boolean graph input answers every "which nodes are BF16" question)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    index = {name: k for k, unit in enumerate(units) for name in unit}
    rounded: Dict[str, str] = {}
    conds: Set[str] = set()
    nodes: List[onnx.NodeProto] = []

    def round_of(name: str) -> str:
        if name not in rounded:
            mid, back = f"{name}__{ROUND}_b", f"{name}__{ROUND}_r"
            nodes.append(helper.make_node("Cast", [name], [mid], name=f"{mid}_cast", to=TensorProto.BFLOAT16))
            nodes.append(helper.make_node("Cast", [mid], [back], name=f"{back}_cast", to=TensorProto.FLOAT))
            rounded[name] = back
        return rounded[name]

    def cond_of(k: int) -> str:
        cond = f"{selector}_{k}"
        if cond not in conds:
            conds.add(cond)
            graph.initializer.append(numpy_helper.from_array(np.array(k, np.int64), f"{cond}_idx"))
            nodes.append(helper.make_node("Gather", [selector, f"{cond}_idx"], [cond], name=f"{cond}_gather"))
        return cond

    for node in list(graph.node):
        k = index.get(node.name)
        if k is None:
            nodes.append(node)
            continue
        cond = cond_of(k)
        for slot, name in enumerate(node.input):
            if is_float(types, name):
                switched = f"{name}__{ROUND}_{node.name}"
                nodes.append(helper.make_node("Where", [cond, round_of(name), name], [switched],
                                              name=f"{switched}_where"))
                node.input[slot] = switched
        post = []
        for slot, name in enumerate(node.output):
            if is_float(types, name):
                raw = f"{name}__{ROUND}_raw"
                node.output[slot] = raw
                mid, back = f"{raw}_b", f"{raw}_r"
                post += [helper.make_node("Cast", [raw], [mid], name=f"{mid}_cast", to=TensorProto.BFLOAT16),
                         helper.make_node("Cast", [mid], [back], name=f"{back}_cast", to=TensorProto.FLOAT),
                         helper.make_node("Where", [cond, back, raw], [name], name=f"{name}__{ROUND}_where")]
        nodes.append(node)
        nodes += post
    del graph.node[:]
    graph.node.extend(nodes)
    graph.input.append(helper.make_tensor_value_info(selector, TensorProto.BOOL, [len(units)]))
    del graph.value_info[:]
    return out


def _constant_values(graph: onnx.GraphProto) -> Dict[str, np.ndarray]:
    values = {i.name: i for i in graph.initializer}
    out = {}
    for node in graph.node:
        if node.op_type == "Constant":
            attr = next((a for a in node.attribute if a.name == "value"), None)
            if attr is not None:
                values[node.output[0]] = attr.t
    for name, tensor in values.items():
        if tensor.data_type == TensorProto.FLOAT:
            out[name] = numpy_helper.to_array(tensor)
    return out


def write_bf16(model: onnx.ModelProto, types: Dict[str, int], fp32_nodes: Iterable[str], opset: int
               ) -> Tuple[onnx.ModelProto, Dict[str, int]]:
    """The typed BF16 graph (``model`` already at ``opset``): every convertible node outside ``fp32_nodes`` in
    BF16, value-preserving nodes following their input, Casts only where an FP32 and a BF16 region meet, float
    constants read in BF16 stored as bfloat16 copies, graph input and output float32. Returns (model,
    {"bf16_nodes", "fp32_nodes", "casts"})."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    keep = set(fp32_nodes)
    consts = _constant_values(graph)
    dtype: Dict[str, int] = {}  # float activations: FLOAT or BFLOAT16 as written
    for vi in graph.input:
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            dtype[vi.name] = TensorProto.FLOAT
    casts: Dict[Tuple[str, int], str] = {}
    twins: Dict[str, str] = {}
    nodes: List[onnx.NodeProto] = []
    counts = {"bf16_nodes": 0, "fp32_nodes": 0, "casts": 0}

    def as_type(name: str, to: int) -> str:
        if name in consts:
            if to == TensorProto.FLOAT:
                return name
            if name not in twins:
                twins[name] = f"{name}__bf16"
                graph.initializer.append(helper.make_tensor(twins[name], TensorProto.BFLOAT16, consts[name].shape,
                                                            vals=_bf16_bits(consts[name]).tobytes(), raw=True))
            return twins[name]
        if dtype.get(name, to) == to:
            return name
        key = (name, to)
        if key not in casts:
            casts[key] = f"{name}__to_{'bf16' if to == TensorProto.BFLOAT16 else 'fp32'}"
            nodes.append(helper.make_node("Cast", [name], [casts[key]], name=f"{casts[key]}_cast", to=to))
            dtype[casts[key]] = to
            counts["casts"] += 1
        return casts[key]

    for node in list(graph.node):
        slots = bf16_slots(node, opset)
        float_ins = [k for k, n in enumerate(node.input) if is_float(types, n) and n not in consts]
        if node.op_type in NOT_CONVERTED or slots is None:
            in_bf16 = False
        elif node.op_type in VALUE_PRESERVING:  # follows what it reads; mixed or no activation input: FP32
            in_bf16 = bool(float_ins) and all(dtype.get(node.input[k]) == TensorProto.BFLOAT16 and slots[0][k]
                                              for k in float_ins)
        else:
            in_bf16 = node.name not in keep and any(is_float(types, o) for o in node.output)
        if in_bf16:
            ins, outs = slots
            for k, name in enumerate(node.input):
                if is_float(types, name) and name != "":
                    node.input[k] = as_type(name, TensorProto.BFLOAT16 if ins[k] else TensorProto.FLOAT)
            for k, name in enumerate(node.output):
                if is_float(types, name):
                    dtype[name] = TensorProto.BFLOAT16 if outs[k] else TensorProto.FLOAT
            counts["bf16_nodes"] += 1
        else:
            for k, name in enumerate(node.input):
                if dtype.get(name) == TensorProto.BFLOAT16:
                    node.input[k] = as_type(name, TensorProto.FLOAT)
            for name in node.output:
                if is_float(types, name):
                    dtype[name] = TensorProto.FLOAT
            if any(is_float(types, o) for o in node.output):
                counts["fp32_nodes"] += 1
        nodes.append(node)
    for vi in graph.output:  # graph outputs stay float32: the last BF16 tensor is cast under the output's name
        if dtype.get(vi.name) == TensorProto.BFLOAT16:
            inner = f"{vi.name}__bf16"
            for n in nodes:
                for k, o in enumerate(n.output):
                    if o == vi.name:
                        n.output[k] = inner
                for k, i in enumerate(n.input):
                    if i == vi.name:
                        n.input[k] = inner
            nodes.append(helper.make_node("Cast", [inner], [vi.name], name=f"{vi.name}_to_fp32", to=TensorProto.FLOAT))
            counts["casts"] += 1
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    used = {i for n in graph.node for i in n.input}
    inits = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    return out, counts


def _bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounded to nearest even (as a Cast would)."""
    import ml_dtypes

    return np.asarray(values, np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)

