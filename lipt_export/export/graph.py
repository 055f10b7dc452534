"""ONNX graph utilities shared by the export stages: loading, value types, and the one producer/consumer map."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import onnx


def load_model(model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


def producers(graph: onnx.GraphProto) -> Dict[str, onnx.NodeProto]:
    """Tensor name -> the node that writes it."""
    return {o: n for n in graph.node for o in n.output if o}


def consumers(graph: onnx.GraphProto) -> Dict[str, List[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it, in graph order."""
    users: Dict[str, List[onnx.NodeProto]] = {}
    for node in graph.node:
        for i in node.input:
            if i:
                users.setdefault(i, []).append(node)
    return users


def tensor_types(model: onnx.ModelProto) -> Dict[str, int]:
    """elem_type of every named value in the graph (inputs, outputs, value_info after shape inference,
    initializers)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a model shape inference cannot handle: fall back to what is declared
        inferred = model
    types: Dict[str, int] = {}
    graph = inferred.graph
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    for node in graph.node:  # Constant nodes are not always in value_info
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t is not None:
                    types[node.output[0]] = attr.t.data_type
    return types


def constant_names(graph: onnx.GraphProto) -> set:
    """Tensors known before run time: initializers and Constant outputs."""
    return {i.name for i in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant"}


def reshape_allowzero(model: onnx.ModelProto) -> int:
    """Give every Reshape whose target shape is computed at run time ``allowzero=1``: PyTorch's reshape never
    copies a dimension for a 0 (ONNX's default does), so this is the exact encoding of the traced op, and it
    tells TensorRT no runtime 0 is a placeholder (else it warns that such a dim "might or might not be zero").
    Reshapes with constant shapes are left as exported. Returns how many nodes changed (opset >= 14)."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 14:
        return 0
    known = constant_names(model.graph)
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] in known:
            continue
        attr = next((a for a in node.attribute if a.name == "allowzero"), None)
        if attr is None:
            node.attribute.append(onnx.helper.make_attribute("allowzero", 1))
            changed += 1
        elif attr.i == 0:
            attr.i = 1
            changed += 1
    return changed
