"""TensorRT here (import-guarded): which TensorRT this machine has, the one place that picks the module, and
the engine runner.

Two TensorRTs, both strongly typed (the ONNX carries the precision):

* ``tensorrt`` (datacenter TensorRT 10/11): NVIDIA's wheels and a CUDA GPU; builds for that GPU and runs.
* ``tensorrt-rtx`` (TensorRT-RTX, from PyPI on Linux x86-64): builds ahead of time for chosen compute
  capabilities with no GPU at all; running its engines needs a matching GPU.

Every entry point asks :func:`tensorrt_status` / :func:`tensorrt_rtx_status` first and fails with one line
saying what is missing. TensorRT itself is imported inside functions only: it is optional.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from lipt_export.errors import EngineError
from lipt_export.fileio import sha256_file
from lipt_export.manifest import ArtifactEntry, Manifest
from lipt_export.runtime.base import Runner
from lipt_export.runtime.tiling import ProfileFitRunner

INSTALL_HINT = ("install TensorRT with `pip install -c constraints.txt -e .[trt]` (NVIDIA's wheels; needs "
                "network access to NVIDIA's index) on a machine with an NVIDIA GPU and driver")


def tensorrt_status() -> Tuple[bool, str]:
    """(usable, reason). Usable = `tensorrt` imports and torch sees a CUDA device."""
    if importlib.util.find_spec("tensorrt") is None:
        return False, f"TensorRT backend unavailable: the 'tensorrt' Python package is not installed; {INSTALL_HINT}"
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # stub packages without libnvinfer raise here
        return False, (f"TensorRT backend unavailable: 'import tensorrt' failed "
                       f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); {INSTALL_HINT}")
    import torch

    if not torch.cuda.is_available():
        return False, "TensorRT backend unavailable: no CUDA GPU is visible (torch.cuda.is_available() is False)"
    return True, "ok"


def tensorrt_rtx_status() -> Tuple[bool, str]:
    """(usable for building, reason). TensorRT-RTX builds ahead of time without a GPU."""
    if importlib.util.find_spec("tensorrt_rtx") is None:
        return False, ("TensorRT-RTX unavailable: the 'tensorrt_rtx' package is not installed; `pip install -c "
                       "constraints.txt tensorrt-rtx` (Linux x86-64 wheels on PyPI)")
    try:
        import tensorrt_rtx  # noqa: F401
    except Exception as exc:
        return False, (f"TensorRT-RTX unavailable: 'import tensorrt_rtx' failed ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0][:120] if str(exc) else ''})")
    return True, "ok"


FLAVORS = ("tensorrt", "tensorrt-rtx")
_MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}


def select_tensorrt(flavor: str):
    """Import and return the TensorRT module of ``flavor`` and point polygraphy's TensorRT loaders at it.
    The one place the choice is made: polygraphy binds its TensorRT module when its TensorRT backend is first
    imported, so one process uses one flavor."""
    import sys

    from polygraphy import config as polygraphy_config

    want_rtx = flavor == "tensorrt-rtx"
    if "polygraphy.backend.trt" in sys.modules and polygraphy_config.USE_TENSORRT_RTX != want_rtx:
        raise EngineError(f"this process already uses {'TensorRT-RTX' if not want_rtx else 'TensorRT'} through "
                          f"polygraphy; build {flavor} engines in a separate run")
    polygraphy_config.USE_TENSORRT_RTX = want_rtx
    os.environ["POLYGRAPHY_USE_TENSORRT_RTX"] = "1" if want_rtx else "0"
    return importlib.import_module(_MODULES[flavor])


def require_tensorrt() -> None:
    ok, why = tensorrt_status()
    if not ok:
        raise EngineError(why)


def current_environment() -> Dict[str, str]:
    """What an engine is tied to: TensorRT version, GPU name and compute capability (device 0)."""
    import tensorrt as trt
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return {"tensorrt_version": trt.__version__, "gpu": torch.cuda.get_device_name(0),
            "compute_capability": f"{major}.{minor}"}


def check_engine_compat(entry: Dict[str, object], env: Dict[str, str]) -> None:
    """Refuse an engine built for another TensorRT version, GPU architecture or GPU model: plans are not
    portable across any of them. Raises :class:`EngineError` naming the mismatch and the fix."""
    problems = []
    for key, label in (("tensorrt_version", "TensorRT"), ("compute_capability", "compute capability"),
                       ("gpu", "GPU")):
        if entry.get(key) != env.get(key):
            problems.append(f"{label} {entry.get(key)!r} (this machine: {env.get(key)!r})")
    if problems:
        raise EngineError(f"{entry.get('path', 'engine')} was built for {', '.join(problems)}; rebuild it here with "
                          f"`lipt-export ... --backend tensorrt` (TensorRT plans are not portable)")


class EngineRunner(Runner):
    """One TensorRT engine through polygraphy's TrtRunner; inputs must fit the engine's profile."""

    def __init__(self, path: Path, input_name: str, output_name: str, name: str, precision: str):
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner
        from polygraphy.datatype import DataType

        self.name, self.precision, self.device = name, precision, "cuda"
        self.input_name, self.output_name = input_name, output_name
        self._runner = TrtRunner(EngineFromBytes(BytesFromPath(str(path))))
        self._runner.activate()
        self.input_dtype = np.dtype(DataType.to_dtype(self._runner.get_input_metadata()[input_name].dtype, "numpy"))

    def infer(self, lr: np.ndarray) -> np.ndarray:
        out = self._runner.infer({self.input_name: np.ascontiguousarray(lr, dtype=self.input_dtype)})
        # polygraphy reuses its host output buffers between calls: copy before the next inference.
        return np.array(out[self.output_name], dtype=np.float32, order="C", copy=True)

    def close(self) -> None:
        if self._runner.is_active:
            self._runner.deactivate()


def engine_runtime_status(entry: ArtifactEntry) -> Tuple[bool, str]:
    """(this machine can run the engine, why not): its TensorRT flavor importable, a CUDA GPU, and for
    TensorRT-RTX plans a compute capability the plan was built for."""
    engine = entry.engine
    if engine.runtime != "tensorrt-rtx":
        return tensorrt_status()
    caps = list(engine.compute_capabilities)
    ok, why = tensorrt_rtx_status()
    if not ok:
        return False, why
    import torch

    if not torch.cuda.is_available():
        return False, f"needs a GPU with compute capability in [{', '.join(caps)}]; this machine has no CUDA GPU"
    major, minor = torch.cuda.get_device_capability(0)
    if f"{major}.{minor}" not in caps:
        return False, f"built for compute capability [{', '.join(caps)}], this GPU is {major}.{minor}"
    return True, "ok"


def load_engine_runner(path: Path, entry: Optional[ArtifactEntry], manifest: Optional[Manifest],
                       name: Optional[str] = None, overlap: Optional[int] = None) -> Runner:
    """A runner for ``model.<precision>.engine`` after checking it against its manifest entry and this
    machine. Inputs outside the engine's profile are tiled (too large) or padded (too small)."""
    if not entry or manifest is None:  # nothing to check the plan against
        require_tensorrt()
        raise EngineError(f"{path} has no manifest entry; engines are loaded through their export directory")
    ok, why = engine_runtime_status(entry)
    if not ok:
        raise EngineError(why)
    if manifest.root is not None:
        path = manifest.artifact_path(entry)  # inside the export directory, sha256 as recorded
    elif sha256_file(path) != entry.sha256:
        raise EngineError(f"{path} does not match its manifest entry (sha256 differs); rebuild the engine")
    engine = entry.engine
    trt = select_tensorrt(engine.runtime)
    if engine.datacenter:
        check_engine_compat(entry.to_dict(), current_environment())
    elif engine.version != trt.__version__:
        raise EngineError(f"{path.name} was built with {engine.label}, this machine has TensorRT-RTX "
                          f"{trt.__version__}; rebuild it or install that version")
    io, profile = manifest.io, engine.profile
    raw = EngineRunner(path, io.input_name, io.output_name, name or path.name, entry.precision)
    return ProfileFitRunner(raw, io.scale, profile.min_hw, profile.max_hw, profile.batch[2],
                            multiple_of=io.multiple_of, overlap=io.tiling.overlap if overlap is None else int(overlap))
