"""Static TensorRT-compatibility lint for ONNX artifacts (no TensorRT needed).

Checks every node against ``lipt_export/data/trt_onnx_ops.json`` (TensorRT 10 and 11 ONNX parser support,
with its sources listed in the file): operator coverage and opset range, the per-op restrictions that
matter for SR graphs (Resize and Pad modes, pooling dilations, ...), the Q/DQ rules of TensorRT's
explicit quantization (INT8 with zero point 0, positive finite scales, per-channel only on weights along
the output-channel axis, Q/DQ on both inputs of Conv/MatMul), shape computations TensorRT's shape-tensor
layers cannot evaluate, and static spatial dims on the graph input/output.

``lipt-export lint MODEL.onnx`` prints the findings and exits 1 when there is any error.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from google.protobuf.message import DecodeError

from lipt_export.engines.tensorrt import parser_findings
from lipt_export.errors import ExportError
from lipt_export.export.graph import consumers, producers, tensor_types
from lipt_export.report import format_table

DATA_FILE = Path(__file__).resolve().parents[1] / "data" / "trt_onnx_ops.json"
WEIGHTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
REDUCE_OPS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
              "ReduceProd", "ReduceSum", "ReduceSumSquare")
# Inputs that TensorRT consumes as shape tensors (index lists per op).
SHAPE_INPUTS = {"Reshape": [1], "Expand": [1], "Tile": [1], "Slice": [1, 2, 3, 4], "Resize": [1, 2, 3],
                "ConstantOfShape": [0], "Range": [0, 1, 2], "Pad": [1, 3], "Unsqueeze": [1], "Squeeze": [1],
                "Split": [1], "TopK": [1], "OneHot": [1], "Upsample": [1], **{op: [1] for op in REDUCE_OPS}}
INT32_MAX = 2 ** 31 - 1


@lru_cache(maxsize=1)
def load_support_data(path: Optional[str] = None) -> Dict[str, object]:
    return json.loads(Path(path or DATA_FILE).read_text())


@dataclass
class Finding:
    severity: str  # "error" | "warning"
    node: str
    reason: str
    rule: str

    def as_dict(self) -> Dict[str, str]:
        return asdict(self)


@dataclass
class LintReport:
    path: str
    findings: List[Finding] = field(default_factory=list)
    opset: Optional[int] = None
    nodes: int = 0
    parser: str = "not run"  # TensorRT's own ONNX parser: "tensorrt-rtx" when it ran

    @property
    def errors(self) -> List[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> List[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def status(self) -> str:
        return "errors" if self.errors else ("warnings" if self.warnings else "clean")

    def summary(self) -> Dict[str, object]:
        return {"status": self.status(), "errors": len(self.errors), "warnings": len(self.warnings),
                "findings": [{"severity": f.severity, "node": f.node, "reason": f.reason} for f in self.findings],
                "checked": f"TensorRT 10/11 ONNX parser rules ({DATA_FILE.name}), opset {self.opset}, "
                           f"{self.nodes} nodes; TensorRT parser: {self.parser}"}

    def table(self) -> str:
        if not self.findings:
            return f"{self.path}: clean ({self.nodes} nodes, opset {self.opset})"
        rows = [[f.severity, f.node, f.reason] for f in sorted(self.findings, key=lambda f: f.severity)]
        return (f"{self.path}: {len(self.errors)} error(s), {len(self.warnings)} warning(s)\n"
                + format_table(("severity", "node", "reason"), rows))


class _Graph:
    """Lookups over one graph: constants, producers, consumers, types."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.graph = model.graph
        self.init = {i.name: i for i in self.graph.initializer}
        self.producer = producers(self.graph)
        self.consumers = consumers(self.graph)
        self.types = tensor_types(model)
        self.io_names = {v.name for v in list(self.graph.input) + list(self.graph.output)}

    def const(self, name: str) -> Optional[np.ndarray]:
        if not name:
            return None
        if name in self.init:
            return numpy_helper.to_array(self.init[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
                if a.name in ("value_float", "value_int"):
                    return np.asarray(a.f if a.name == "value_float" else a.i)
                if a.name in ("value_floats", "value_ints"):
                    return np.asarray(list(a.floats) if a.name == "value_floats" else list(a.ints))
        if node is not None and node.op_type == "Identity":
            return self.const(node.input[0])
        return None

    def dtype(self, name: str) -> Optional[int]:
        if name in self.init:
            return self.init[name].data_type
        arr = self.const(name)
        if arr is not None:
            return onnx.helper.np_dtype_to_tensor_dtype(arr.dtype)
        return self.types.get(name)


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _s(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _label(node: onnx.NodeProto) -> str:
    return node.name or f"<{node.op_type} -> {node.output[0] if node.output else '?'}>"


class _Linter:
    def __init__(self, model: onnx.ModelProto, data: Dict[str, object], path: str):
        self.g = _Graph(model)
        self.data = data
        self.report = LintReport(path=path, nodes=len(model.graph.node))

    def add(self, severity: str, node: str, reason: str, rule: str) -> None:
        self.report.findings.append(Finding(severity, node, reason, rule))

    # --- model level ------------------------------------------------------------------------------------
    def check_opset(self) -> None:
        opset = next((o.version for o in self.g.model.opset_import if o.domain in ("", "ai.onnx")), None)
        self.report.opset = opset
        trt = self.data["tensorrt"]
        lo, hi10, hi11 = trt["10"]["opset_min"], trt["10"]["opset_max"], trt["11"]["opset_max"]
        if opset is None:
            self.add("error", "<model>", "no default-domain opset import", "opset")
        elif opset < lo:
            self.add("error", "<model>", f"opset {opset} < {lo}, the oldest opset TensorRT parses", "opset")
        elif opset > hi11:
            self.add("error", "<model>", f"opset {opset} > {hi11}: no TensorRT release parses it (re-export "
                                         f"with --opset 17)", "opset")
        elif opset > hi10:
            self.add("warning", "<model>", f"opset {opset} needs TensorRT 11.5+ (TensorRT 10 parses up to "
                                           f"{hi10})", "opset")
        elif opset > trt["10"]["opset_max_first_release"]:
            self.add("warning", "<model>", f"opset {opset} needs a recent TensorRT 10 (10.0 parses up to "
                                           f"{trt['10']['opset_max_first_release']})", "opset")

    def check_io(self) -> None:
        for kind, values in (("input", self.g.graph.input), ("output", self.g.graph.output)):
            for v in values:
                if v.name in self.g.init:
                    continue
                dims = v.type.tensor_type.shape.dim
                if len(dims) == 4:
                    static = [d.dim_value for d in dims[2:4] if not d.dim_param]
                    if static:
                        self.add("error", f"<{kind} {v.name}>", f"spatial dims are static ({'x'.join(map(str, static))}):"
                                 f" the TensorRT profile cannot vary H/W; re-export with dynamic axes", "io")
                elif v.type.tensor_type.HasField("shape") and len(dims) != 4:
                    self.add("warning", f"<{kind} {v.name}>", f"rank {len(dims)} (expected NCHW)", "io")

    def check_types(self) -> None:
        for name, t in self.g.types.items():
            if name in self.g.io_names or name in self.g.init:
                continue
            if t == TensorProto.UINT8:
                self.add("error", name, "internal UINT8 tensor: TensorRT takes UINT8 only as network input/output "
                                        "(asymmetric UINT8 quantization is DLA-only)", "types")
            elif t == TensorProto.DOUBLE:
                self.add("warning", name, "DOUBLE tensor: TensorRT casts it down to FLOAT", "types")

    # --- nodes ------------------------------------------------------------------------------------------
    def check_node(self, node: onnx.NodeProto) -> None:
        label = _label(node)
        if node.domain not in ("", "ai.onnx"):
            self.add("error", label, f"{node.domain}::{node.op_type} is not a standard ONNX op; TensorRT needs a "
                                     f"plugin for it (export without framework-specific fusions)", "ops")
            return
        entry = self.data["ops"].get(node.op_type)
        if entry is None:
            self.add("warning", label, f"{node.op_type} is not in TensorRT's ONNX operator table", "ops")
        elif not entry["trt10"] and not entry["trt11"]:
            reason = entry.get("reason", f"{node.op_type} is not supported by TensorRT's ONNX parser")
            self.add("error", label, reason, "ops")
        elif not entry["trt10"]:
            self.add("warning", label, f"{node.op_type} needs TensorRT {entry.get('since', '11')}+", "ops")
        restrict = self.data["restrictions"]
        op = node.op_type
        if op == "Resize":
            self._resize(node, label, restrict["Resize"])
        elif op == "Pad":
            mode = _s(_attr(node, "mode", b"constant"))
            if mode not in restrict["Pad"]["mode"]:
                self.add("error", label, f"Pad mode '{mode}' is not supported (TensorRT: "
                                         f"{', '.join(restrict['Pad']['mode'])})", "Pad")
        elif op in ("AveragePool", "MaxPool", "LpPool"):
            dil = _attr(node, "dilations", None)
            if dil and any(d != 1 for d in dil):
                self.add("error", label, f"{op} with dilations {list(dil)}: TensorRT needs all ones", op)
            if op == "MaxPool" and len([o for o in node.output if o]) > 1:
                self.add("error", label, "MaxPool Indices output is unsupported", op)
        elif op == "ScatterND" and _s(_attr(node, "reduction", b"none")) != "none":
            self.add("error", label, "ScatterND with a reduction is not supported", op)
        elif op == "TopK" and _attr(node, "sorted", 1) != 1:
            self.add("error", label, "TopK needs sorted=1", op)
        elif op == "LayerNormalization" and any(o and self.g.consumers.get(o) for o in node.output[1:]):
            self.add("error", label, "only the first LayerNormalization output is supported", op)
        elif op in REDUCE_OPS and len(node.input) > 1 and node.input[1] and self.g.const(node.input[1]) is None:
            self.add("error", label, f"{op} axes must be a constant", op)
        elif op in restrict and "severity" in restrict[op]:
            self.add(restrict[op]["severity"], label, restrict[op]["reason"], op)

    def _resize(self, node: onnx.NodeProto, label: str, rules: Dict[str, object]) -> None:
        mode = _s(_attr(node, "mode", b"nearest"))
        ctm = _s(_attr(node, "coordinate_transformation_mode", b"half_pixel"))
        if mode not in rules["mode"]:
            self.add("error", label, f"Resize mode '{mode}' is not supported", "Resize")
        if ctm not in rules["coordinate_transformation_mode"]:
            self.add("error", label, f"Resize coordinate_transformation_mode '{ctm}' is not supported", "Resize")
        if _attr(node, "antialias", 0):
            self.add("error", label, "antialiased Resize is not supported", "Resize")
        policy = _s(_attr(node, "keep_aspect_ratio_policy", b"stretch"))
        if policy not in rules["keep_aspect_ratio_policy"]:
            self.add("error", label, f"keep_aspect_ratio_policy '{policy}' is not supported", "Resize")
        scales = self.g.const(node.input[2]) if len(node.input) > 2 else None
        inner = rules["innermost_dims"].get(mode)
        if inner and scales is not None and scales.size:
            outer = [float(s) for s in np.asarray(scales).ravel()[:-inner]]
            if any(s != 1.0 for s in outer):
                self.add("error", label, f"{mode} Resize scales {np.asarray(scales).ravel().tolist()}: TensorRT "
                                         f"resizes only the {inner} innermost dims in {mode} mode", "Resize")

    # --- quantization -----------------------------------------------------------------------------------
    def check_qdq(self, node: onnx.NodeProto) -> None:
        label, is_dq = _label(node), node.op_type == "DequantizeLinear"
        scale = self.g.const(node.input[1]) if len(node.input) > 1 else None
        if scale is None:
            self.add("warning", label, "scale is computed at runtime; TensorRT cannot verify it at build time", "qdq")
        elif not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
            self.add("error", label, "scales must be positive and finite (TensorRT: 'Scale coefficients must all "
                                     "be positive')", "qdq")
        zp_name = node.input[2] if len(node.input) > 2 else ""
        data_name = node.input[0]
        qtype = self.g.dtype(zp_name) if zp_name else None
        if qtype is None and is_dq:
            qtype = self.g.dtype(data_name)
        if qtype is None and not zp_name:
            qtype = _attr(node, "output_dtype", None) if not is_dq else None
        allowed = {TensorProto.INT8, TensorProto.FLOAT8E4M3FN, TensorProto.INT4,
                   getattr(TensorProto, "FLOAT4E2M1", -1)}
        tname = TensorProto.DataType.Name(qtype) if qtype else "UINT8 (ONNX default without zero point)"
        if qtype is None:
            self.add("warning", label, "no zero point: ONNX means UINT8, TensorRT imports INT8", "qdq")
        elif qtype not in allowed:
            hint = "keep biases in float (QuantizeBias=False)" if qtype == TensorProto.INT32 else \
                "use symmetric INT8 (zero point 0)"
            self.add("error", label, f"{tname} quantization: TensorRT's Q/DQ takes INT8/FP8/INT4/FP4 only; {hint}",
                     "qdq")
        if zp_name:
            zp = self.g.const(zp_name)
            if zp is None:
                self.add("warning", label, "zero point is computed at runtime", "qdq")
            elif np.any(zp != 0):
                self.add("error", label, "non-zero zero point (asymmetric quantization): TensorRT requires zero "
                                         "point 0", "qdq")
        if scale is not None and np.asarray(scale).size > 1:
            self._per_channel(node, label, np.asarray(scale))

    def _per_channel(self, node: onnx.NodeProto, label: str, scale: np.ndarray) -> None:
        axis = int(_attr(node, "axis", 1))
        data = self.g.const(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if data is None and node.op_type == "QuantizeLinear":
            data = self.g.const(node.input[0])
        src = self.g.producer.get(node.input[0])
        if data is None and src is not None and src.op_type == "QuantizeLinear":
            data = self.g.const(src.input[0])  # a weight quantized in the graph (Q -> DQ on an initializer: ModelOpt)
        if data is None:
            self.add("error", label, f"per-channel scales ({scale.size}) on an activation: TensorRT quantizes "
                                     f"activations per-tensor", "qdq")
            return
        axis = axis + data.ndim if axis < 0 else axis
        if axis >= data.ndim or data.shape[axis] != scale.size:
            self.add("error", label, f"{scale.size} scales for axis {axis} of a {list(data.shape)} weight", "qdq")
            return
        want = self.data["quantization"]["weight_per_channel_axis"]
        users = self.g.consumers.get(node.output[0], [])
        for user in users:
            expected = want.get(user.op_type)
            if expected is not None and axis != expected:
                self.add("error", label, f"per-channel weight axis {axis} for {user.op_type}; TensorRT expects the "
                                         f"output-channel axis {expected}", "qdq")

    def check_weighted_pairs(self, node: onnx.NodeProto) -> None:
        ins = [i for i in node.input[:2] if i]
        dq = [i for i in ins if (self.g.producer.get(i) is not None
                                and self.g.producer[i].op_type == "DequantizeLinear")]
        if len(dq) == 1 and len(ins) == 2:
            other = next(i for i in ins if i not in dq)
            self.add("warning", _label(node), f"{node.op_type} has Q/DQ on one input only ('{other}' is float): "
                                              f"TensorRT runs it unquantized and the lone Q/DQ only adds rounding",
                     "qdq-pairs")

    # --- shape computations -----------------------------------------------------------------------------
    def check_shape_inputs(self, node: onnx.NodeProto) -> None:
        allowed = set(self.data["shape_ops"])
        forbidden = self.data["shape_ops_forbidden"]
        for idx in SHAPE_INPUTS.get(node.op_type, []):
            if idx >= len(node.input) or not node.input[idx]:
                continue
            name = node.input[idx]
            value = self.g.const(name)
            if value is not None:
                if (value.dtype == np.int64 and node.op_type not in ("Slice",) and value.size
                        and np.abs(value).max() > INT32_MAX):
                    self.add("warning", _label(node), f"int64 constant '{name}' exceeds the INT32 range in a shape "
                                                      f"input", "shape")
                continue
            seen, stack = set(), [name]
            while stack:
                t = stack.pop()
                if t in seen:
                    continue
                seen.add(t)
                prod = self.g.producer.get(t)
                if prod is None or prod.op_type in ("Shape", "Size", "Constant"):
                    continue
                if prod.op_type in forbidden:
                    self.add("error", _label(prod), f"{forbidden[prod.op_type]} (feeds the shape input of "
                                                    f"{_label(node)})", "shape")
                elif prod.op_type not in allowed and prod.op_type not in WEIGHTED_OPS:
                    self.add("warning", _label(prod), f"{prod.op_type} computes a shape input of {_label(node)}; "
                                                      f"TensorRT shape tensors come from shape/elementwise/gather/"
                                                      f"concat/slice/reduce layers", "shape")
                stack.extend(i for i in prod.input if i and i not in self.g.init)

    def check_reshape_zero(self, node: onnx.NodeProto) -> None:
        """A Reshape whose shape is computed at run time with allowzero=0: a runtime 0 would copy the input
        dimension, so TensorRT cannot prove the dim is not a placeholder and warns (ESRT's segment reshapes
        did). PyTorch never means "copy" by 0: export with allowzero=1 (lipt-export does)."""
        if len(node.input) < 2 or self.g.const(node.input[1]) is not None:
            return
        if _attr(node, "allowzero", 0) == 0:
            self.add("warning", _label(node), "shape computed at run time with allowzero=0: TensorRT cannot tell a "
                                              "runtime 0 from a copy-placeholder and warns; set allowzero=1 "
                                              "(PyTorch's reshape semantics)", "reshape-zero")

    def run(self) -> LintReport:
        self.check_opset()
        self.check_io()
        self.check_types()
        for node in self.g.graph.node:
            self.check_node(node)
            if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                self.check_qdq(node)
            if node.op_type in WEIGHTED_OPS:
                self.check_weighted_pairs(node)
            self.check_shape_inputs(node)
            if node.op_type == "Reshape":
                self.check_reshape_zero(node)
        seen, unique = set(), []
        for f in self.report.findings:  # shape walks can reach one producer from several consumers
            key = (f.severity, f.node, f.reason)
            if key not in seen:
                seen.add(key)
                unique.append(f)
        self.report.findings = unique
        return self.report


def lint_onnx(model: str | Path | onnx.ModelProto, data_file: Optional[str | Path] = None,
              use_parser: bool = True) -> LintReport:
    """Lint one ONNX model (path or ModelProto) against TensorRT 10/11 ONNX parser rules; with ``use_parser``
    and TensorRT-RTX installed, TensorRT's own parser runs too and its errors and warnings join the findings
    (rule ``tensorrt-parser``): the oracle the static rules explain."""
    path = "<model>" if isinstance(model, onnx.ModelProto) else str(model)
    if isinstance(model, onnx.ModelProto):
        proto = model
    else:
        try:  # with its external data (the rules read constants), which must be where the file says
            proto = onnx.load(str(model))
        except (DecodeError, OSError, ValueError, onnx.checker.ValidationError) as exc:
            detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            raise ExportError(f"cannot read '{model}' as ONNX ({type(exc).__name__}{': ' + detail if detail else ''}); "
                              f"pass a complete .onnx model (with its external data files beside it)") from None
    report = _Linter(proto, load_support_data(str(data_file) if data_file else None), path).run()
    if use_parser and not isinstance(model, onnx.ModelProto):
        verdict = parser_findings(Path(model))
        report.parser = "tensorrt-rtx" if verdict is not None else "not installed"
        for severity in ("errors", "warnings"):
            for msg in (verdict or {}).get(severity, []):
                report.findings.append(Finding(severity[:-1], "<tensorrt parser>", msg, "tensorrt-parser"))
    return report
