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
