"""Running TensorRT engines (import-guarded): whether TensorRT is usable here, and the engine runner.

TensorRT (>= 10, strongly typed) needs NVIDIA's wheels and a CUDA GPU; neither exists on CPU-only
machines, so every entry point first asks :func:`tensorrt_status` and fails with one line saying what is
missing and how to install it. TensorRT itself is imported inside functions only: it is optional.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from lipt_export.errors import EngineError
from lipt_export.fileio import sha256_file
from lipt_export.manifest import ArtifactEntry, Manifest
from lipt_export.runtime.base import Runner
from lipt_export.runtime.tiling import ProfileFitRunner, TilingPolicy

INSTALL_HINT = ("install TensorRT with `pip install -c constraints.txt -e .[trt]` (NVIDIA's wheels; needs "
                "network access to NVIDIA's index) on a machine with an NVIDIA GPU and driver")


@dataclass(frozen=True)
class ProfileSpec:
    """One optimization profile: LR H x W and batch, each as (min, opt, max)."""

    min_hw: Tuple[int, int]
    opt_hw: Tuple[int, int]
    max_hw: Tuple[int, int]
    batch: Tuple[int, int, int] = (1, 1, 1)
    channels: int = 3

    def shape(self, which: str) -> List[int]:
        i = ("min", "opt", "max").index(which)
        hw = (self.min_hw, self.opt_hw, self.max_hw)[i]
        return [self.batch[i], self.channels, hw[0], hw[1]]

    def as_dict(self, input_name: str = "lr") -> Dict[str, object]:
        return {"input": input_name, **{k: self.shape(k) for k in ("min", "opt", "max")}}

    @classmethod
    def from_dict(cls, d: Dict[str, Sequence[int]]) -> "ProfileSpec":
        mn, op, mx = d["min"], d["opt"], d["max"]
        return cls((mn[2], mn[3]), (op[2], op[3]), (mx[2], mx[3]), (mn[0], op[0], mx[0]), mn[1])


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


def load_engine_runner(path: Path, entry: Optional[ArtifactEntry], manifest: Optional[Manifest],
                       name: Optional[str] = None, overlap: Optional[int] = None) -> Runner:
    """A runner for ``model.<precision>.engine`` after checking it against its manifest entry and this
    machine. Inputs outside the engine's profile are tiled (too large) or padded (too small)."""
    require_tensorrt()
    if entry is None or manifest is None:
        raise EngineError(f"{path} has no manifest entry; engines are loaded through their export directory")
    if manifest.root is not None:
        path = manifest.artifact_path(entry)  # inside the export directory, sha256 as recorded
    elif sha256_file(path) != entry.sha256:
        raise EngineError(f"{path} does not match its manifest entry (sha256 differs); rebuild the engine")
    check_engine_compat(entry.to_dict(), current_environment())
    io = manifest.io
    profile = ProfileSpec.from_dict(entry.get("profile"))
    raw = EngineRunner(path, io.input_name, io.output_name, name or path.name, entry.precision)
    policy = TilingPolicy.from_io(io)
    return ProfileFitRunner(raw, io.scale, profile.min_hw, profile.max_hw, profile.batch[2],
                            multiple_of=io.multiple_of, overlap=policy.overlap if overlap is None else int(overlap))
