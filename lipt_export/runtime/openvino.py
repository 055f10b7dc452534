"""OpenVINO as a CPU runtime for the ONNX artifacts.

On this project's CPUs (AVX-512 with AMX) OpenVINO runs our ONNX files several times faster than ONNX Runtime's
CPU provider, mostly because its default CPU inference precision there is **bf16**, a different numerical
artifact from the fp32 file. The precision is therefore never left to OpenVINO: every runner is made for an
explicit ``f32`` or ``bf16`` inference precision, and the precision OpenVINO actually compiled for is read back
(a CPU without bf16 runs f32 whatever was asked) and named in the runner. INT8 Q/DQ files run as real INT8
(OpenVINO's low-precision transformations), with the rest at the chosen precision.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from lipt_export.catalog import CPU_RUNTIMES
from lipt_export.errors import ArtifactError
from lipt_export.runtime.base import Runner, default_threads
from lipt_export.runtime.ort import runtime_message

# --runtime values (catalog.CPU_RUNTIMES): for OpenVINO the inference precision, chosen explicitly
OV_PRECISIONS = {"openvino-f32": "f32", "openvino-bf16": "bf16"}


def openvino_status() -> Tuple[bool, str]:
    if importlib.util.find_spec("openvino") is None:
        return False, "OpenVINO is not installed: `pip install -c constraints.txt openvino`"
    return True, "ok"


def installed_cpu_runtimes() -> List[str]:
    """The CPU runtimes of :data:`lipt_export.catalog.CPU_RUNTIMES` this machine has (ONNX Runtime always)."""
    return [rt for rt in CPU_RUNTIMES if rt == "onnxruntime" or openvino_status()[0]]


def check_runtime(runtime: str) -> None:
    """Raise a one-line error for an unknown or unavailable runtime name."""
    if runtime not in CPU_RUNTIMES:
        raise ArtifactError(f"unknown runtime '{runtime}': use one of {', '.join(CPU_RUNTIMES)} (or auto)")
    if runtime.startswith("openvino"):
        ok, why = openvino_status()
        if not ok:
            raise ArtifactError(why)


class OpenVinoRunner(Runner):
    """An ONNX file compiled by OpenVINO for the CPU at an explicit inference precision ("f32" or "bf16")."""

    def __init__(self, path: str | Path, inference_precision: str, name: Optional[str] = None,
                 precision: str = "fp32", threads: Optional[int] = None):
        import openvino as ov

        if inference_precision not in ("f32", "bf16"):
            raise ArtifactError(f"OpenVINO inference precision must be f32 or bf16, not '{inference_precision}'")
        self.path = Path(path)
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": inference_precision, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_NUM_THREADS": int(threads or default_threads())}
        try:
            model = core.read_model(str(self.path))
            self.compiled = core.compile_model(model, "CPU", config)
        except RuntimeError as exc:  # OpenVINO's exceptions for files it cannot read or compile
            raise ArtifactError(f"OpenVINO cannot load {self.path}: {runtime_message(exc)}; re-export it or use "
                                f"--runtime onnxruntime") from None
        self.request = self.compiled.create_infer_request()
        # what OpenVINO compiled for: a CPU without bf16 support runs f32 whatever was asked
        self.inference_precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        self.requested_precision = inference_precision
        self.input_dtype = np.float16 if model.inputs[0].get_element_type() == ov.Type.f16 else np.float32
        self.precision = precision
        self.device = "cpu"
        asked = "" if self.inference_precision == inference_precision else f"(asked {inference_precision})"
        self.runtime = f"openvino-{self.inference_precision}{asked}"
        self.name = f"{name or self.path.name}@{self.runtime}"

    def infer(self, lr: np.ndarray) -> np.ndarray:
        out = self.request.infer({0: np.ascontiguousarray(lr, dtype=self.input_dtype)})
        return np.array(out[self.compiled.outputs[0]], dtype=np.float32, copy=True)
