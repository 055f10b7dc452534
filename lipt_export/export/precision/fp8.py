"""FP32 ONNX -> FP8 E4M3 explicit-quantization (Q/DQ) ONNX (opset 19), with INT8's measured PSNR-Y budget.

FP8 is INT8's pipeline with another number format (:class:`~lipt_export.export.precision.int8.QdqScheme`): the same
calibration images, cached ranges, Q/DQ placement (inputs of Conv / ConvTranspose / MatMul / Gemm only, float
consumers restored), the same held-out sensitivity search and float fallback under ``--max-psnr-drop``. The
quantized graph ONNX Runtime's quantizer writes (S8S8) is rewritten here before the search, so every measurement is
of FP8 arithmetic (ONNX Runtime's CPU provider executes FLOAT8E4M3FN Q/DQ):

* the graph goes to opset 19 (the first with FLOAT8E4M3FN QuantizeLinear/DequantizeLinear; onnx's version
  converter, checked);
* activations: one scale per tensor, ``amax / 448`` (E4M3's largest finite value), ``amax`` being the calibrated
  range (the INT8 scale times 127), zero point FLOAT8E4M3FN 0 (what TensorRT requires);
* weights: per output channel, ``max|w| / 448`` from the FP32 weights, stored as FLOAT8E4M3FN (round to nearest even,
  saturating), zero point 0.

TensorRT builds FP8 engines only for compute capability 8.9 and later (catalog.PRECISION_MIN_CC).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lipt_export.catalog import PRECISION_OPSETS
from lipt_export.export.precision.bf16 import convert_opset
from lipt_export.export.precision.int8 import QdqScheme, quantize_int8

E4M3_MAX = 448.0
INT8_MAX = 127.0
QUANTIZED_SUFFIX = "_quantized"  # ONNX Runtime's name for a quantized weight initializer


def _fp8_bytes(values: np.ndarray) -> bytes:
    import ml_dtypes

    clipped = np.clip(np.asarray(values, np.float32), -E4M3_MAX, E4M3_MAX)
    return clipped.astype(ml_dtypes.float8_e4m3fn).view(np.uint8).tobytes()


def _fp8_tensor(name: str, values: np.ndarray) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.FLOAT8E4M3FN, list(np.shape(values)), vals=_fp8_bytes(values),
                              raw=True)


def int8_to_fp8(q_int8: onnx.ModelProto, fp32: onnx.ModelProto) -> onnx.ModelProto:
    """The S8S8 Q/DQ graph ``q_int8`` with every pair holding FLOAT8E4M3FN instead (see the module doc); ``fp32`` is
    the graph before quantization (for the FP32 weights)."""
    model = convert_opset(q_int8, PRECISION_OPSETS["fp8"])
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    weights = {i.name: i for i in fp32.graph.initializer}
    done: Dict[str, bool] = {}
    replace: Dict[str, onnx.TensorProto] = {}
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        data, scale, zero = node.input[:3]
        if zero in done and scale in done:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if node.op_type == "DequantizeLinear" and data in inits:  # a weight: re-quantized from FP32
            int8_scale = numpy_helper.to_array(inits[scale]).astype(np.float32)
            source = data[:-len(QUANTIZED_SUFFIX)] if data.endswith(QUANTIZED_SUFFIX) else None
            if source in weights:
                w = numpy_helper.to_array(weights[source]).astype(np.float32)
            else:  # no FP32 twin known: the INT8 values dequantized (exact up to INT8 rounding)
                raw = numpy_helper.to_array(inits[data]).astype(np.float32)
                w = raw * _broadcast(int8_scale, axis, raw.shape)
            axis = axis % w.ndim if w.ndim else 0
            if int8_scale.ndim == 0:
                s = np.asarray(max(float(np.abs(w).max()), 1e-12) / E4M3_MAX, np.float32)
            else:
                amax = np.abs(np.moveaxis(w, axis, 0)).reshape(w.shape[axis], -1).max(axis=1)
                s = (np.maximum(amax, 1e-12) / E4M3_MAX).astype(np.float32)
            replace[data] = _fp8_tensor(data, w / _broadcast(s, axis, w.shape))
            replace[scale] = numpy_helper.from_array(s, scale)
        else:  # an activation: amax = INT8 scale x 127
            s = numpy_helper.to_array(inits[scale]).astype(np.float32) * (INT8_MAX / E4M3_MAX)
            replace[scale] = numpy_helper.from_array(s, scale)
        replace[zero] = _fp8_tensor(zero, np.zeros(np.shape(numpy_helper.to_array(inits[zero])), np.float32))
        done[zero] = done[scale] = True
    for k, init in enumerate(graph.initializer):
        if init.name in replace:
            graph.initializer[k].CopyFrom(replace[init.name])
    del graph.value_info[:]
    onnx.checker.check_model(model, full_check=True)
    return model


def _broadcast(s: np.ndarray, axis: int, shape) -> np.ndarray:
    s = np.asarray(s, np.float32)
    if s.ndim == 0:
        return s
    view = [1] * len(shape)
    view[axis] = -1
    return s.reshape(view)


FP8 = QdqScheme("fp8", "FP8 E4M3 (FLOAT8E4M3FN), zero point 0, scale amax/448, per-channel weights", int8_to_fp8)


def quantize_fp8(src: Path, dst: Path, **options) -> Dict[str, object]:
    """Write the FP8 Q/DQ model to ``dst``; returns ``{"fp8": {...}}`` for the manifest entry (options: those of
    :func:`~lipt_export.export.precision.int8.quantize_int8`)."""
    return quantize_int8(src, dst, scheme=FP8, **options)
