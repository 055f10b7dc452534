"""Observe every intermediate tensor of an ONNX model in ONNX Runtime.

The FP16 overflow guard and the INT8 sensitivity ranking both need values that the graph does not
output. We re-declare every float node output as a graph output (types from ONNX shape inference) and
run the copy; ORT keeps declared outputs alive through its graph optimisations, so the names match the
original graph.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set

import numpy as np
import onnx
from onnx import TensorProto, helper

from lipt_export.export.graph import load_model, tensor_types
from lipt_export.runtime.ort import ort_session

FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)


def float_activation_names(model: onnx.ModelProto, types: Optional[Dict[str, int]] = None) -> List[str]:
    """Float outputs of non-Constant nodes, in graph (topological) order."""
    types = types if types is not None else tensor_types(model)
    names: List[str] = []
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        names += [o for o in node.output if o and types.get(o) in FLOAT_TYPES]
    return names


def expose(model: onnx.ModelProto, names: Iterable[str], types: Dict[str, int]) -> onnx.ModelProto:
    """A copy of ``model`` with ``names`` added as graph outputs."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    have = {o.name for o in exposed.graph.output}
    for name in names:
        if name not in have:
            exposed.graph.output.append(helper.make_tensor_value_info(name, types[name], None))
            have.add(name)
    return exposed


class TensorObserver:
    """Runs a model with chosen intermediate tensors exposed; ``run(x)`` returns {name: array}."""

    def __init__(self, model: str | Path | onnx.ModelProto, names: Optional[Sequence[str]] = None):
        self.model = load_model(model)
        self.types = tensor_types(self.model)
        self.names = list(names) if names is not None else float_activation_names(self.model, self.types)
        self.names = [n for n in self.names if n in self.types]
        self.session = ort_session(expose(self.model, self.names, self.types))
        self.input_name = self.session.get_inputs()[0].name
        in_type = self.session.get_inputs()[0].type
        self.input_dtype = np.float16 if "float16" in in_type else np.float32
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, x: np.ndarray, only: Optional[Set[str]] = None) -> Dict[str, np.ndarray]:
        wanted = [n for n in self.output_names if only is None or n in only]
        values = self.session.run(wanted, {self.input_name: np.ascontiguousarray(x, dtype=self.input_dtype)})
        return dict(zip(wanted, values))


def max_abs_ranges(model: str | Path | onnx.ModelProto, inputs: Sequence[np.ndarray],
                   progress: Optional[str] = None) -> Dict[str, float]:
    """max |value| of every float intermediate tensor over ``inputs`` (inf when a value is not finite)."""
    obs = TensorObserver(model)
    peaks: Dict[str, float] = {}
    iterator: Iterable[np.ndarray] = inputs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(inputs, desc=progress, unit="img", leave=False)
    for x in iterator:
        for name, value in obs.run(x).items():
            arr = np.asarray(value)
            if arr.size == 0 or arr.dtype.kind != "f":
                continue
            peak = float(np.max(np.abs(arr))) if np.isfinite(arr).all() else float("inf")
            peaks[name] = max(peaks.get(name, 0.0), peak)
    return peaks
