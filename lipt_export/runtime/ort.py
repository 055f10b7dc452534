"""ONNX Runtime: the one session factory (:func:`ort_session`) and the ONNX Runtime runner.

Every ONNX Runtime session in the package is made here, so thread counts, log level and provider choice
are set in one place.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, List, Optional, Sequence, Union

import numpy as np

from lipt_export.errors import ArtifactError
from lipt_export.runtime.base import Runner, default_threads
from lipt_export.runtime.trt import tensorrt_status

ModelSource = Union[str, os.PathLike, bytes, Any]  # a path, serialized bytes, or an onnx.ModelProto


def ort_providers(use: Optional[Sequence[str]] = None, cache_dir: Optional[str | os.PathLike] = None) -> List[Any]:
    """ONNX Runtime execution providers, best first, restricted to the installed build.

    ``use``: any of "tensorrt", "cuda", "cpu" (default: all that exist; the TensorRT EP only when the
    TensorRT libraries import, since otherwise ORT logs errors before falling back). With onnxruntime-gpu
    the CUDA EP runs the same FP32/FP16/INT8 ONNX files; the TensorRT EP builds and caches its own engines
    in ``cache_dir``. The CPU EP always comes last as the fallback.
    """
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    wanted = [u.lower() for u in (use or ("tensorrt", "cuda", "cpu"))]
    out: List[Any] = []
    if "tensorrt" in wanted and "TensorrtExecutionProvider" in available:
        if use is not None or tensorrt_status()[0]:
            cache = str(cache_dir or Path.home() / ".cache" / "lipt-export" / "ort-trt")
            out.append(("TensorrtExecutionProvider", {"trt_engine_cache_enable": "True",
                                                      "trt_engine_cache_path": cache,
                                                      "trt_timing_cache_enable": "True"}))
    if "cuda" in wanted and "CUDAExecutionProvider" in available:
        out.append("CUDAExecutionProvider")
    out.append("CPUExecutionProvider")
    return out


def _proto(model: ModelSource):
    """The ModelProto of a path, bytes or proto (weights of external-data files are not loaded), or None."""
    import onnx

    if hasattr(model, "graph"):
        return model
    try:
        return onnx.load_from_string(model) if isinstance(model, bytes) else \
            onnx.load(str(model), load_external_data=False)
    except Exception:  # unreadable: ONNX Runtime reports it with its own words
        return None


def holds_fp8(proto) -> bool:
    """Whether a model holds FLOAT8 tensors (FP8 Q/DQ). ONNX Runtime 1.31's extended CPU optimisations mishandle them:
    the QDQ fusion turns DQ -> Conv -> Q into a QLinearConv that has no FP8 kernel (INVALID_GRAPH), and with that
    fusion off the remaining extended rewrites still change the result (SMSR x2 FP8: held-out PSNR-Y drop 3.83 dB at
    ORT_ENABLE_ALL against 0.036 dB with basic optimisations or none). Such models run with basic optimisations."""
    import onnx

    fp8 = {onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E4M3FNUZ, onnx.TensorProto.FLOAT8E5M2,
           onnx.TensorProto.FLOAT8E5M2FNUZ}
    return proto is not None and any(i.data_type in fp8 for i in proto.graph.initializer)


def holds_bf16(proto) -> bool:
    """Whether a model computes in bfloat16 (bfloat16 weights or casts to bfloat16)."""
    import onnx

    bf16 = onnx.TensorProto.BFLOAT16
    return proto is not None and (any(i.data_type == bf16 for i in proto.graph.initializer) or any(
        n.op_type == "Cast" and any(a.name == "to" and a.i == bf16 for a in n.attribute) for n in proto.graph.node))


def widen_bf16(proto):
    """A BF16 file as ONNX Runtime's CPU provider can run it (it has no bfloat16 Conv): every node computes in float32
    and every tensor the file stores as bfloat16 is rounded to bfloat16 (nearest even, ONNX Runtime's Cast) where it
    is written, so each value is exactly what the file stores; only arithmetic inside a node is float32, as in BF16
    tensor cores (FP32 accumulation). Weights widen exactly."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    bf16 = TensorProto.BFLOAT16
    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(inferred.graph.value_info)
             + list(inferred.graph.output) + list(inferred.graph.input)}
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    for k, init in enumerate(graph.initializer):
        if init.data_type == bf16:
            values = numpy_helper.to_array(init).astype(np.float32)
            graph.initializer[k].CopyFrom(numpy_helper.from_array(values, init.name))
            types[init.name] = bf16
    nodes = []
    for node in graph.node:
        if node.op_type == "Cast":
            for a in node.attribute:
                if a.name == "to" and a.i == bf16:
                    a.i = TensorProto.FLOAT
        nodes.append(node)
        for k, name in enumerate(node.output):
            if types.get(name) == bf16:
                wide = f"{name}__wide"
                node.output[k] = wide
                nodes += [helper.make_node("Cast", [wide], [f"{name}__bf16"], name=f"{name}__round", to=bf16),
                          helper.make_node("Cast", [f"{name}__bf16"], [name], name=f"{name}__widen",
                                           to=TensorProto.FLOAT)]
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type == bf16:
                    a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float32), a.t.name))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    return model


def ort_session(model: ModelSource, *, threads: Optional[int] = None, providers: Optional[Sequence[Any]] = None,
                memory_arena: bool = True):
    """An InferenceSession on ``model`` (path, bytes or ModelProto). CPU only unless ``providers`` says
    otherwise; ``threads`` intra-op threads (default :func:`default_threads`), one inter-op thread.
    ``memory_arena=False`` returns activation memory after every run instead of keeping the largest run's
    (for many sessions over images of varying size, as ``eval`` has). FP8 Q/DQ models run without the QDQ
    fusion (:func:`holds_fp8`)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    proto = _proto(model) if not isinstance(model, bytes) or len(model) < (1 << 31) else None
    if holds_bf16(proto):
        model = widen_bf16(proto)
    if holds_fp8(proto):
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.enable_cpu_mem_arena = memory_arena
    opts.intra_op_num_threads = threads or default_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    src = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(src, sess_options=opts, providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as exc:  # onnxruntime's Fail/InvalidGraph/NoSuchFile...: the file, not our code, is at fault
        where = "the model" if isinstance(model, bytes) else str(model)
        why = runtime_message(exc)
        hint = " (with its external data files beside it)" if "external" in why.lower() else ""
        raise ArtifactError(f"ONNX Runtime cannot load {where}: {why}; re-export it{hint}") from None


def runtime_message(exc: BaseException, limit: int = 220) -> str:
    """The informative part of a runtime's exception text, on one line (ONNX Runtime prefixes source paths)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = text.split("failed:", 1)[-1].strip() if "failed:" in text else text
    source = re.search(r"\S+\.(?:cc|cpp|h):\d+ ", text)  # "/src/model.cc:256 ns::Model::Model(args...) message"
    if source:
        rest, depth = text[source.end():], 0
        for i, ch in enumerate(rest):
            depth += {"(": 1, ")": -1}.get(ch, 0)
            if ch == ")" and depth == 0:
                text = rest[i + 1:].strip() or text
                break
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


class OnnxRuntimeRunner(Runner):
    """ONNX Runtime session on the best available provider (:func:`ort_providers`: CPU unless onnxruntime-gpu is
    installed)."""

    runtime = "onnxruntime"

    def __init__(self, path: str | Path, name: Optional[str] = None, precision: str = "fp32",
                 providers: Optional[Sequence[Any]] = None, threads: Optional[int] = None, memory_arena: bool = True):
        self.path = Path(path)
        self.session = ort_session(self.path, threads=threads, providers=ort_providers() if providers is None
                                   else providers, memory_arena=memory_arena)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.input_dtype = np.float16 if "float16" in self.session.get_inputs()[0].type else np.float32
        self.name = name or self.path.name
        self.precision = precision
        self.device = "cuda" if self.session.get_providers()[0] != "CPUExecutionProvider" else "cpu"

    def infer(self, lr: np.ndarray) -> np.ndarray:
        feed = {self.input_name: np.ascontiguousarray(lr, dtype=self.input_dtype)}
        (out,) = self.session.run([self.output_name], feed)
        return np.asarray(out, dtype=np.float32)
