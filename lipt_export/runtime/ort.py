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


def ort_session(model: ModelSource, *, threads: Optional[int] = None, providers: Optional[Sequence[Any]] = None,
                memory_arena: bool = True):
    """An InferenceSession on ``model`` (path, bytes or ModelProto). CPU only unless ``providers`` says
    otherwise; ``threads`` intra-op threads (default :func:`default_threads`), one inter-op thread.
    ``memory_arena=False`` returns activation memory after every run instead of keeping the largest run's
    (for many sessions over images of varying size, as ``eval`` has)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
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
