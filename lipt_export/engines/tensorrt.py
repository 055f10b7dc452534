"""TensorRT engines from the precision-carrying ONNX artifacts, built with polygraphy's loaders.

Nothing here imports TensorRT at module level: every entry point first asks
:func:`lipt_export.engines.tensorrt_status` and fails with its one line when TensorRT or a GPU is missing.

* Networks are strongly typed (the only mode in TensorRT 11; requested explicitly on 10.x): the FP16 and
  INT8 (Q/DQ) ONNX files carry their precision, no builder precision flags are used.
* One optimization profile from ``--shapes``/``--batch``; the max shape is checked against the 2^31-element
  limit on the fp32 ONNX before any build (:mod:`lipt_export.engines.shapes`).
* ``--workspace`` (GiB), ``--builder-opt-level`` and a timing cache file shared by every build.
* ``model.<precision>.engine`` is the plan exactly as TensorRT serialized it (trtexec, Triton and C++ load it
  as is); everything else lives in the manifest entry, which loading checks.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from lipt_export import manifest as mf
from lipt_export.engines import tensorrt_status
from lipt_export.engines.shapes import ProfileSpec, check_max_shape, parse_profile
from lipt_export.runners import Runner

# An engine must stay within 1 dB of the ONNX it came from (both against the eager model), unless it is
# already this close to the eager model.
ENGINE_PSNR_SLACK_DB = 1.0
ENGINE_PSNR_EXCELLENT_DB = 60.0


class EngineError(RuntimeError):
    """TensorRT missing, an engine that does not fit this machine, or a failed build (one line)."""


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


def check_engine_compat(entry: Dict[str, Any], env: Dict[str, str]) -> None:
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


def engine_parity_ok(engine_psnr_db: float, onnx_psnr_db: float, finite: bool = True) -> bool:
    if not finite or math.isnan(engine_psnr_db):
        return False
    return engine_psnr_db >= ENGINE_PSNR_EXCELLENT_DB or engine_psnr_db >= onnx_psnr_db - ENGINE_PSNR_SLACK_DB


def build_engine(onnx_path: Path, engine_path: Path, profile: ProfileSpec, *, input_name: str = "lr",
                 workspace_gib: float = 4.0, builder_opt_level: int = 3,
                 timing_cache: Optional[Path] = None) -> float:
    """Build one strongly typed engine with polygraphy's loaders and save the plan; returns build seconds."""
    require_tensorrt()
    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxPath, Profile, SaveEngine

    prof = Profile().add(input_name, min=profile.shape("min"), opt=profile.shape("opt"), max=profile.shape("max"))
    cache = str(timing_cache) if timing_cache else None
    config = CreateConfig(profiles=[prof], builder_optimization_level=builder_opt_level,
                          memory_pool_limits={trt.MemoryPoolType.WORKSPACE: int(workspace_gib * (1 << 30))},
                          load_timing_cache=cache if cache and Path(cache).is_file() else None)
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)
    t0 = time.perf_counter()
    engine = SaveEngine(EngineFromNetwork(network, config=config, save_timing_cache=cache), path=str(engine_path))()
    if engine is None:
        raise EngineError(f"TensorRT could not build {engine_path.name} from {onnx_path.name}; see the log above")
    del engine
    return time.perf_counter() - t0


class _EngineRunner(Runner):
    """One TensorRT engine through polygraphy's TrtRunner; inputs must fit the engine's profile."""

    def __init__(self, path: Path, input_name: str, output_name: str, name: str, precision: str):
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        self.name, self.precision, self.device = name, precision, "cuda"
        self.input_name, self.output_name = input_name, output_name
        self._runner = TrtRunner(EngineFromBytes(BytesFromPath(str(path))))
        self._runner.activate()
        from polygraphy.datatype import DataType

        self.input_dtype = np.dtype(DataType.to_dtype(self._runner.get_input_metadata()[input_name].dtype, "numpy"))

    def infer(self, lr: np.ndarray) -> np.ndarray:
        out = self._runner.infer({self.input_name: np.ascontiguousarray(lr, dtype=self.input_dtype)})
        # polygraphy reuses its host output buffers between calls: copy before the next inference.
        return np.array(out[self.output_name], dtype=np.float32, order="C", copy=True)

    def close(self) -> None:
        if self._runner.is_active:
            self._runner.deactivate()


def load_engine_runner(path: Path, entry: Optional[Dict[str, Any]], manifest: Optional[Dict[str, Any]],
                       name: Optional[str] = None, overlap: Optional[int] = None) -> Runner:
    """A runner for ``model.<precision>.engine`` after checking it against its manifest entry and this
    machine. Inputs outside the engine's profile are tiled (too large) or padded (too small)."""
    require_tensorrt()
    from lipt_export.tiling import ProfileFitRunner

    if entry is None or manifest is None:
        raise EngineError(f"{path} has no manifest entry; engines are loaded through their export directory")
    if mf.sha256_file(path) != entry.get("sha256"):
        raise EngineError(f"{path} does not match its manifest entry (sha256 differs); rebuild the engine")
    check_engine_compat(entry, current_environment())
    from lipt_export.serving import default_overlap

    io = manifest["io"]
    profile = ProfileSpec.from_dict(entry["profile"])
    raw = _EngineRunner(path, io["input"]["name"], io["output"]["name"], name or path.name, entry["precision"])
    return ProfileFitRunner(raw, io["scale"], profile.min_hw, profile.max_hw, profile.batch[2],
                            multiple_of=io.get("size", {}).get("multiple_of", 1),
                            overlap=default_overlap(io) if overlap is None else int(overlap))


def build_engines_for_export(tmp_dir: Path, artifacts: Sequence[Tuple[Path, str, Dict[str, Any]]],
                             manifest: Dict[str, Any], engine_options: Dict[str, Any],
                             parity_inputs: Sequence[np.ndarray], reference_runner: Runner,
                             log: Callable[[str], None] = print) -> List[Dict[str, Any]]:
    """Called by the export pipeline with the finished ONNX artifacts: build one engine per artifact,
    validate each against the eager reference through the same comparator path as the ONNX files, and
    return their manifest entries."""
    require_tensorrt()
    from lipt_export.runners import OnnxRuntimeRunner
    from lipt_export.validation import compare

    profile = parse_profile(engine_options.get("shapes", "32x32:256x256:512x512"), engine_options.get("batch", "1:1:1"))
    input_name = manifest["io"]["input"]["name"]
    fp32 = next(p for p, prec, _ in artifacts if prec == "fp32")
    report = check_max_shape(fp32, profile)  # before any build: minutes saved, clear message
    log(f"[engine] profile {profile.as_dict(input_name)}; largest tensor at max shape: {report.tensor} "
        f"{report.largest:,} elements")
    cache = Path(engine_options.get("timing_cache") or (Path(tmp_dir).parent / ".trt-timing.cache"))
    env = current_environment()
    entries: List[Dict[str, Any]] = []
    for onnx_path, precision, extra in artifacts:
        engine_path = Path(tmp_dir) / f"model.{precision}.engine"
        log(f"[engine] building {engine_path.name} from {onnx_path.name} (TensorRT {env['tensorrt_version']}, "
            f"{env['gpu']})")
        seconds = build_engine(onnx_path, engine_path, profile, input_name=input_name,
                               workspace_gib=float(engine_options.get("workspace_gib", 4.0)),
                               builder_opt_level=int(engine_options.get("builder_opt_level", 3)), timing_cache=cache)
        entry = mf.artifact_entry(
            engine_path, tmp_dir, fmt="tensorrt", precision=precision, source_onnx=onnx_path.name,
            source_onnx_sha256=mf.sha256_file(onnx_path), profile=profile.as_dict(input_name), **env,
            builder={"strongly_typed": True, "workspace_gib": engine_options.get("workspace_gib", 4.0),
                     "builder_opt_level": engine_options.get("builder_opt_level", 3),
                     "timing_cache": cache.name, "build_s": round(seconds, 2), "polygraphy_loaders": True},
            **({"fp16_io": extra["fp16_io"]} if "fp16_io" in extra else {}))
        runner = load_engine_runner(engine_path, entry, manifest)
        onnx_runner = OnnxRuntimeRunner(onnx_path, name=onnx_path.name, precision=precision)
        onnx_par, eng_par = compare(reference_runner, [onnx_runner, runner], parity_inputs)
        runner.runner.close()  # free GPU memory before the next build
        entry["parity"] = eng_par.as_dict()
        if not engine_parity_ok(eng_par.psnr_db, onnx_par.psnr_db, eng_par.finite):
            raise EngineError(f"{engine_path.name} does not match the eager model: PSNR {eng_par.psnr_db:.1f} dB vs "
                              f"{onnx_par.psnr_db:.1f} dB for {onnx_path.name}; no artifact written")
        log(f"[engine] {engine_path.name}: {seconds:.1f}s build, PSNR {eng_par.psnr_db:.1f} dB vs eager")
        entries.append(entry)
    return entries
