"""Opening what will run: ``open_artifact(path)`` resolves an export directory (or its ``manifest.json``), a
``.onnx`` file, a ``.engine`` file (checked against its sidecar manifest) or a PyTorch checkpoint to one checked
:class:`Artifact`, and :func:`runner_for` builds the runner for it on a named execution. Which execution and which
tiling is :mod:`lipt_export.runtime.resolve`'s job; ``lipt_export.load_runner`` composes the three (open -> resolve
-> run).

Export directories are opened through :func:`lipt_export.manifest.read_manifest` only, and every file is checked
(inside the directory, sha256 as recorded) before it is used. Which artifact of an export runs is decided by
:func:`select_entry`, the one rule for every consumer: ``auto`` takes an engine of the precision that the consumer
can run (this machine: its TensorRT and GPU; a Triton server: datacenter TensorRT plans only), else the ONNX file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, Tuple

from lipt_export.catalog import SERVING_BACKENDS
from lipt_export.errors import ArtifactError, ManifestError
from lipt_export.manifest import (MANIFEST_NAME, ArtifactEntry, IOContract, Manifest, ModelInfo, onnx_manifest,
                                  onnx_precision, read_manifest)
from lipt_export.runtime.base import Runner
from lipt_export.runtime.eager import TorchRunner
from lipt_export.runtime.openvino import OV_PRECISIONS, OpenVinoRunner, check_runtime
from lipt_export.runtime.ort import OnnxRuntimeRunner
from lipt_export.runtime.tiling import PadToMin
from lipt_export.runtime.trt import engine_runtime_status, load_engine_runner
from lipt_export.tiling import TilingPolicy

if TYPE_CHECKING:  # types only: serving ONNX files must not import torch
    from lipt_export.models.arch import Architecture
    from lipt_export.models.registry import ModelSpec

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")
ENGINE_SUFFIXES = (".engine", ".plan")


@dataclass
class Artifact:
    """What a runner runs: the file, its export's manifest (or the ONNX-embedded description) and its entry."""

    path: Path
    format: str  # onnx | tensorrt | torch
    precision: str
    manifest: Optional[Manifest] = None
    entry: Optional[ArtifactEntry] = None

    @property
    def io(self) -> Optional[IOContract]:
        return self.manifest.io if self.manifest else None

    @property
    def scale(self) -> Optional[int]:
        return self.io.scale if self.io else None

    @property
    def multiple_of(self) -> int:
        return self.io.multiple_of if self.io else 1

    @property
    def tiling(self) -> TilingPolicy:
        return self.io.tiling if self.io else TilingPolicy()


EngineCheck = Callable[[ArtifactEntry], Tuple[bool, str]]


def runnable_here(entry: ArtifactEntry) -> Tuple[bool, str]:
    """Whether this machine can run an engine: its TensorRT flavor, a CUDA GPU of a compute capability it was built
    for (the reason when not)."""
    return engine_runtime_status(entry)


def select_entry(manifest: Manifest, precision: Optional[str] = None, backend: str = "auto",
                 can_run: EngineCheck = runnable_here) -> ArtifactEntry:
    """The artifact of ``precision`` (default fp32) a consumer runs: ``auto`` an engine ``can_run`` accepts, else
    the ONNX file; ``tensorrt`` an engine or a one-line error saying why none can run; ``onnxruntime`` the ONNX
    file. The one rule for every consumer (this machine by default; Triton passes its own ``can_run``)."""
    if backend not in SERVING_BACKENDS:
        raise ArtifactError(f"unknown backend '{backend}'; choose one of {', '.join(SERVING_BACKENDS)}")
    precision = precision or "fp32"
    onnx, engines = manifest.select("onnx", precision), manifest.select("tensorrt", precision)
    usable = [e for e in engines if can_run(e)[0]]
    if backend == "tensorrt" or (backend == "auto" and usable):
        if usable:
            return usable[0]
        if engines:
            raise ArtifactError(can_run(engines[0])[1])
        have = sorted(a.path for a in manifest.select("tensorrt"))
        raise ArtifactError(f"{manifest.root} has no {precision} TensorRT engine (engines: "
                            f"{', '.join(have) or 'none'}); export with --backend tensorrt on a GPU machine, or use "
                            f"--backend onnxruntime")
    if onnx:
        return onnx[0]
    have = sorted({a.precision for a in manifest.select("onnx")})
    raise ArtifactError(f"{manifest.root} has no {precision} ONNX artifact; available precisions: "
                        f"{', '.join(have) or 'none'}")


def open_export(path: str | os.PathLike) -> Manifest:
    """An export directory or its manifest.json -> its checked :class:`Manifest`."""
    p = Path(path)
    return read_manifest(p if p.is_dir() else p.parent)


def open_artifact(path: str | os.PathLike, precision: Optional[str] = None, backend: str = "auto") -> Artifact:
    """Resolve ``path`` (export dir, manifest.json, .onnx, .engine, checkpoint) to one checked :class:`Artifact`."""
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"no such artifact: {p} (pass an export directory, manifest.json, .onnx or .engine file)")
    if p.is_dir() or p.name == MANIFEST_NAME:
        man = open_export(p)
        return checked_artifact(man, select_entry(man, precision, backend))
    suffix = p.suffix.lower()
    if suffix == ".onnx":
        man, entry = _sidecar(p)
        if man is None:
            man = onnx_manifest(p)  # a lone ONNX file still describes itself
        prec = entry.precision if entry else onnx_precision(p)
        if precision and precision != prec:
            raise ArtifactError(f"{p.name} is a {prec} model, not {precision}")
        return Artifact(p, "onnx", prec, man, entry)
    if suffix in ENGINE_SUFFIXES:
        man, entry = _sidecar(p)
        if entry is None or entry.format != "tensorrt":
            raise ArtifactError(f"{p} is not listed as a TensorRT engine in {p.parent / MANIFEST_NAME}; engines are "
                                f"loaded with the manifest written beside them by `lipt-export --backend tensorrt`")
        return Artifact(p, "tensorrt", entry.precision, man, entry)
    if suffix in CHECKPOINT_SUFFIXES:
        return Artifact(p, "torch", precision or "fp32")
    raise ArtifactError(f"don't know how to run '{p.name}': expected an export directory, manifest.json, .onnx, "
                        f".engine or a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})")


def checked_artifact(man: Manifest, entry: ArtifactEntry) -> Artifact:
    """The entry's file (inside the export, sha256 as recorded) and, for ONNX, the model description it carries
    agreeing with the manifest (an edited manifest cannot change what a file computes)."""
    path = man.artifact_path(entry)
    if entry.format == "onnx":
        own = onnx_manifest(path)
        if own is not None and (own.io.scale, own.model.name) != (man.io.scale, man.model.name):
            raise ManifestError(f"{man.root / MANIFEST_NAME} says {man.model.name} x{man.io.scale} but {entry.path} was "
                                f"exported as {own.model.name} x{own.io.scale}: the manifest was edited; re-export")
    return Artifact(path, entry.format, entry.precision, man, entry)


def open_onnx_artifacts(path: str | os.PathLike) -> Tuple[List[Artifact], List[str]]:
    """Every ONNX artifact ``path`` names, for tools that compare them all (``eval``): an export directory or
    its manifest.json expands to all of its ONNX entries (each checked), a ``.onnx`` file is itself (as
    :func:`open_artifact`). Also returns the manifest's non-ONNX entries, as ``dir/file (format)``."""
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"no such artifact: {p} (pass an export directory, its manifest.json or a .onnx file)")
    if p.suffix.lower() == ".onnx":
        return [open_artifact(p)], []
    if not (p.is_dir() or p.name == MANIFEST_NAME):
        raise ArtifactError(f"cannot use '{p.name}' here: expected an export directory, manifest.json or .onnx")
    man = open_export(p)
    arts = [checked_artifact(man, a) for a in man.select("onnx")]
    if not arts:
        raise ArtifactError(f"{man.root} lists no ONNX artifacts")
    others = [f"{man.root.name}/{a.path} ({a.format})" for a in man.artifacts if a.format != "onnx"]
    return arts, others


def _sidecar(path: Path) -> Tuple[Optional[Manifest], Optional[ArtifactEntry]]:
    """The manifest beside a lone artifact file and the file's entry in it (sha256 checked), if listed."""
    if not (path.parent / MANIFEST_NAME).is_file():
        return None, None
    man = read_manifest(path.parent)
    entry = man.find(path.name)
    if entry is None:
        return None, None
    if entry.format == "onnx":
        man.artifact_path(entry)  # raises when the file was changed after export
    return man, entry


def onnx_runner(path: str | os.PathLike, runtime: str = "onnxruntime", *, precision: str = "fp32",
                threads: Optional[int] = None, name: Optional[str] = None,
                providers: Optional[Sequence[Any]] = None, memory_arena: bool = True) -> Runner:
    """One ONNX file on one runtime by name (:data:`lipt_export.catalog.CPU_RUNTIMES`); ``runner.runtime``
    says what executes it (for OpenVINO the precision it compiled for). ``providers``/``memory_arena`` are ONNX
    Runtime's (default: :func:`~lipt_export.runtime.ort.ort_providers`, arena on)."""
    check_runtime(runtime)
    if runtime in OV_PRECISIONS:
        return OpenVinoRunner(path, OV_PRECISIONS[runtime], name=name, precision=precision, threads=threads)
    return OnnxRuntimeRunner(path, name=name, precision=precision, providers=providers, threads=threads,
                             memory_arena=memory_arena)


def padded_to_min_size(runner: Runner, io: IOContract) -> Runner:
    """``runner`` taking images below the graph's minimum size too: padded up to it, output cropped."""
    if io.min_size > 1:
        return PadToMin(runner, io.scale, (io.min_size, io.min_size))
    return runner


def runner_for(art: Artifact, *, providers: Optional[Sequence[str]] = None, threads: Optional[int] = None,
               model: Optional[str] = None, variant: Optional[str] = None, scale: Optional[int] = None,
               name: Optional[str] = None, runtime: str = "onnxruntime") -> Runner:
    """The runner for one resolved artifact (not tiled). ``runtime`` (ONNX artifacts): "onnxruntime",
    "openvino-f32" or "openvino-bf16" (OpenVINO with that inference precision; never OpenVINO's own default)."""
    check_runtime(runtime)
    if runtime != "onnxruntime" and art.format != "onnx":
        raise ArtifactError(f"--runtime {runtime} runs ONNX artifacts; {art.path.name} is {art.format}")
    if art.format == "onnx":
        runner = onnx_runner(art.path, runtime, precision=art.precision, threads=threads, name=name,
                             providers=providers)
        if art.io is not None:
            runner = padded_to_min_size(runner, art.io)
    elif art.format == "tensorrt":
        runner = load_engine_runner(art.path, art.entry, art.manifest, name=name)
    elif art.format == "torch":
        runner = _checkpoint_runner(art, model, variant, scale, name)
    else:
        raise ArtifactError(f"unknown artifact format '{art.format}'")
    runner.artifact = art
    return runner


def _checkpoint_runner(art: Artifact, model: Optional[str], variant: Optional[str], scale: Optional[int],
                       name: Optional[str]) -> Runner:
    if not model or not scale:
        raise ArtifactError(f"{art.path.name} is a PyTorch checkpoint: pass model=, scale= (and variant=) so it "
                            f"can be built, e.g. load_runner(path, model='lipt', variant='small', scale=4)")
    # deferred: only checkpoints need torch and the model code; ONNX and engine serving must not pay for them
    from lipt_export.models.io import UnitRangeIO
    from lipt_export.models.loading import prepare_model
    from lipt_export.models.registry import get_spec

    spec = get_spec(model)
    prepared = prepare_model(spec, variant, scale, str(art.path), seed=0)
    art.manifest = Manifest(ModelInfo(spec.name, prepared.arch.variant, scale), io_contract_for(spec, prepared.arch))
    return TorchRunner(UnitRangeIO(prepared.deploy, spec.rgb_range), name=name or f"eager:{art.path.name}")


def tiling_for(spec: "ModelSpec", arch: "Architecture") -> TilingPolicy:
    """The model's tiling policy (what export writes into the manifest's io.tiling)."""
    return TilingPolicy.for_model(arch.size_multiple, spec.recommended_tile, spec.tile_required,
                                  default_tile=spec.default_tile)


def io_contract_for(spec: "ModelSpec", arch: "Architecture") -> IOContract:
    """The I/O contract of every artifact exported from ``spec`` with architecture ``arch``."""
    return IOContract(scale=arch.scale, tiling=tiling_for(spec, arch), min_size=spec.min_size)
