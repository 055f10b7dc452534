"""TensorRT engines from the precision-carrying ONNX artifacts, built with polygraphy's loaders.

Nothing here imports TensorRT at module level: every entry point first asks
:func:`lipt_export.runtime.trt.tensorrt_status` and fails with its one line when TensorRT or a GPU is missing.

* Networks are strongly typed (the only mode in TensorRT 11; requested explicitly on 10.x): the FP16 and
  INT8 (Q/DQ) ONNX files carry their precision, no builder precision flags are used.
* One optimization profile from ``--shapes``/``--batch``; the max shape is checked against the 2^31-element
  limit on the fp32 ONNX before any build (:mod:`lipt_export.engines.shapes`).
* ``--workspace`` (GiB), ``--builder-opt-level`` and a timing cache file shared by every build.
* ``model.<precision>.engine`` is the plan exactly as TensorRT serialized it (trtexec, Triton and C++ load it
  as is); everything else lives in the manifest entry, which loading checks.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from lipt_export.engines.shapes import ProfileSpec, check_max_shape, parse_profile
from lipt_export.errors import EngineError
from lipt_export.fileio import sha256_file
from lipt_export.manifest import ArtifactEntry, Manifest
from lipt_export.runtime.base import Runner
from lipt_export.runtime.ort import OnnxRuntimeRunner
from lipt_export.runtime.trt import current_environment, load_engine_runner, require_tensorrt
from lipt_export.validation.parity import compare

logger = logging.getLogger(__name__)

# An engine must stay within 1 dB of the ONNX it came from (both against the eager model), unless it is
# already this close to the eager model.
ENGINE_PSNR_SLACK_DB = 1.0
ENGINE_PSNR_EXCELLENT_DB = 60.0


@dataclass(frozen=True)
class EngineOptions:
    """How engines are built; the defaults are the CLI's defaults (validated by :meth:`profile`)."""

    shapes: str = "32x32:256x256:512x512"  # LR MINxMIN:OPTxOPT:MAXxMAX
    batch: str = "1:1:1"
    workspace_gib: float = 4.0
    builder_opt_level: int = 3
    timing_cache: Optional[str] = None

    def profile(self) -> ProfileSpec:
        return parse_profile(self.shapes, self.batch)

    def as_dict(self):
        return asdict(self)


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


def build_engines_for_export(root: Path, onnx_entries: Sequence[ArtifactEntry], manifest: Manifest,
                             options: EngineOptions, parity_inputs: Sequence[np.ndarray],
                             reference_runner: Runner) -> List[ArtifactEntry]:
    """Called by the export pipeline with the finished ONNX artifacts (paths relative to ``root``): build one
    engine per artifact, validate each against the eager reference through the same comparator path as the
    ONNX files, and return their manifest entries."""
    require_tensorrt()
    profile = options.profile()
    input_name = manifest.io.input_name
    fp32 = next(Path(root) / e.path for e in onnx_entries if e.precision == "fp32")
    report = check_max_shape(fp32, profile)  # before any build: minutes saved, clear message
    logger.info(f"[engine] profile {profile.as_dict(input_name)}; largest tensor at max shape: {report.tensor} "
                f"{report.largest:,} elements")
    cache = Path(options.timing_cache or (Path(root).parent / ".trt-timing.cache"))
    env = current_environment()
    entries: List[ArtifactEntry] = []
    for source in onnx_entries:
        onnx_path = Path(root) / source.path
        engine_path = Path(root) / f"model.{source.precision}.engine"
        logger.info(f"[engine] building {engine_path.name} from {onnx_path.name} (TensorRT "
                    f"{env['tensorrt_version']}, {env['gpu']})")
        seconds = build_engine(onnx_path, engine_path, profile, input_name=input_name,
                               workspace_gib=options.workspace_gib, builder_opt_level=options.builder_opt_level,
                               timing_cache=cache)
        entry = ArtifactEntry.for_file(
            engine_path, root, fmt="tensorrt", precision=source.precision, source_onnx=onnx_path.name,
            source_onnx_sha256=sha256_file(onnx_path), profile=profile.as_dict(input_name), **env,
            builder={"strongly_typed": True, "workspace_gib": options.workspace_gib,
                     "builder_opt_level": options.builder_opt_level,
                     "timing_cache": cache.name, "build_s": round(seconds, 2), "polygraphy_loaders": True},
            **({"fp16_io": source.get("fp16_io")} if source.get("fp16_io") else {}))
        runner = load_engine_runner(engine_path, entry, manifest)
        onnx_runner = OnnxRuntimeRunner(onnx_path, name=onnx_path.name, precision=source.precision)
        onnx_par, eng_par = compare(reference_runner, [onnx_runner, runner], parity_inputs)
        runner.runner.close()  # free GPU memory before the next build
        entry = entry.with_details(parity=eng_par.as_dict())
        if not engine_parity_ok(eng_par.psnr_db, onnx_par.psnr_db, eng_par.finite):
            raise EngineError(f"{engine_path.name} does not match the eager model: PSNR {eng_par.psnr_db:.1f} dB vs "
                              f"{onnx_par.psnr_db:.1f} dB for {onnx_path.name}; no artifact written")
        logger.info(f"[engine] {engine_path.name}: {seconds:.1f}s build, PSNR {eng_par.psnr_db:.1f} dB vs eager")
        entries.append(entry)
    return entries
