"""The one resolver: given an opened artifact, *what executes it and tiled how*. Every consumer asks it (``upscale``,
``eval``, ``serve`` through Triton's repository writer, the Python API), so a command is open -> resolve -> run and
``lipt_export.load_runner`` behaves exactly as ``lipt-export upscale`` does.

* Runtime. ``auto`` for an ONNX file is the export's measured choice (``manifest.runtime_choice[precision]``) when it
  was measured on this machine (:func:`machine_fingerprint`); on another machine a fresh measurement, when the
  caller passes one (``measure``: measuring lives in :mod:`lipt_export.validation.runtime_choice`, above this
  layer; ``lipt_export.load_runner`` and the CLI pass it), else ONNX Runtime, saying why. A choice timed on a busy
  machine (``RuntimeChoice.provisional``) is followed, with one warning line saying so. Engines run on their own
  TensorRT, checkpoints on PyTorch. A name other than ``auto`` is used as given.
* Tiling. The model's :class:`~lipt_export.tiling.TilingPolicy` resolves the tile and overlap (the model's default
  tile, measured per family, bounds memory; images up to it run whole), warns about an overlap below the policy, and for an engine keeps the
  tile inside its optimization profile (no second tiling inside the engine runner).
"""
from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence, Tuple

from lipt_export.catalog import CPU_RUNTIMES
from lipt_export.errors import ArtifactError
from lipt_export.manifest import RuntimeChoice
from lipt_export.runtime.base import Runner
from lipt_export.runtime.eager import TorchRunner
from lipt_export.runtime.loader import Artifact, open_artifact, runner_for
from lipt_export.runtime.openvino import installed_cpu_runtimes, openvino_status
from lipt_export.runtime.tiling import TiledRunner
from lipt_export.tiling import POLICY_TILE

# measure(artifact, threads) -> a fresh RuntimeChoice for that file on this machine
Measure = Callable[[Artifact, Optional[int]], RuntimeChoice]


def machine_fingerprint() -> str:
    """CPU model, cores and runtime versions: a runtime choice measured elsewhere is not trusted here."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    import onnxruntime  # deferred: serving an engine or a checkpoint need not load it

    versions = f"onnxruntime {onnxruntime.__version__}"
    if openvino_status()[0]:
        import openvino  # deferred: optional runtime

        versions += f", openvino {openvino.get_version().split('-')[0]}"
    return f"{cpu} x{os.cpu_count()}; {versions}"


def resolve_runtime(art: Artifact, runtime: str = "auto", threads: Optional[int] = None,
                    measure: Optional[Measure] = None) -> Tuple[str, str]:
    """(runtime, why) for a resolved artifact; ``why`` says how ``auto`` decided ("" when named)."""
    chosen, why, _ = _resolve_runtime(art, runtime, threads, measure)
    return chosen, why


def _resolve_runtime(art: Artifact, runtime: str, threads: Optional[int], measure: Optional[Measure]
                     ) -> Tuple[str, str, Optional[RuntimeChoice]]:
    """(runtime, why, the measured record ``auto`` followed or None)."""
    if art.format == "tensorrt":
        return art.entry.engine.runtime, f"{art.entry.engine.label}: an engine runs on its own TensorRT", None
    if art.format == "torch":
        return "pytorch", "a checkpoint runs eagerly", None
    if runtime != "auto":
        return runtime, "", None
    record = art.manifest.runtime_choice.get(art.precision) if art.entry is not None and art.manifest else None
    if record is not None and record.machine == machine_fingerprint():
        return record.runtime, f"measured at export on this machine: {record.summary()}", record
    if installed_cpu_runtimes() == ["onnxruntime"]:
        return "onnxruntime", "the only CPU runtime installed", None
    if art.entry is None or art.manifest is None or art.manifest.root is None:
        return "onnxruntime", "a bare ONNX file: nothing measured", None
    if not art.manifest.golden:
        return "onnxruntime", "no golden inputs in this export to measure the others on", None
    if measure is None:
        return "onnxruntime", ("measured at export on another machine; not measured here (lipt_export.load_runner "
                               "and the CLI measure)" if record else "not measured"), None
    fresh = measure(art, threads)
    where = "measured now (the export's record is from another machine)" if record else "measured now"
    return fresh.runtime, f"{where}: {fresh.summary()}", fresh


def resolve_tiling(art: Artifact, tile: Optional[int] = None, overlap: Optional[int] = None,
                   default_tile: Optional[int] = POLICY_TILE) -> Tuple[Optional[int], int, List[str]]:
    """(tile or None for whole images, overlap, warnings) as the model's policy resolves them; an engine's tile
    stays inside its optimization profile."""
    policy = art.tiling
    size, ov = policy.resolve(tile, overlap, default_tile)
    warnings = [w for w in [policy.overlap_warning(ov)] if w and size and overlap is not None]
    if art.format == "tensorrt" and size:
        size = min(size, *art.entry.engine.profile.max_hw)
    return size, ov, warnings


@dataclass
class Plan:
    """What will run: the artifact, the execution (and why), the tiling, and what the user should be told."""

    artifact: Artifact
    runtime: str
    why: str
    tile: Optional[int]
    overlap: int
    warnings: List[str] = field(default_factory=list)
    requested: Tuple[Optional[int], Optional[int], Optional[int]] = (None, None, POLICY_TILE)  # tile, overlap, default

    def runner(self, threads: Optional[int] = None, providers: Optional[Sequence[str]] = None,
               model: Optional[str] = None, variant: Optional[str] = None, scale: Optional[int] = None,
               name: Optional[str] = None) -> Runner:
        """The runner, tiled when a tile was resolved (else the artifact's own runner)."""
        tiled = self.tiled_runner(threads, providers, model, variant, scale, name)
        return tiled if tiled.tile else tiled.runner

    def tiled_runner(self, threads: Optional[int] = None, providers: Optional[Sequence[str]] = None,
                     model: Optional[str] = None, variant: Optional[str] = None, scale: Optional[int] = None,
                     name: Optional[str] = None) -> TiledRunner:
        """Always a :class:`TiledRunner` (whole images when no tile was resolved), for callers that stream tiles."""
        art = self.artifact
        base = runner_for(art, providers=providers, threads=threads, model=model, variant=variant, scale=scale,
                          name=name, runtime=self.runtime if art.format == "onnx" else "onnxruntime")
        if art.format == "torch":  # a checkpoint's tiling policy is known once its model is built
            self.tile, self.overlap, self.warnings = resolve_tiling(art, *self.requested)
        tiled = TiledRunner(base, art.scale, self.tile, self.overlap, art.multiple_of)
        tiled.artifact = art
        return tiled


def resolve(art: Artifact, *, runtime: str = "auto", tile: Optional[int] = None, overlap: Optional[int] = None,
            default_tile: Optional[int] = POLICY_TILE, threads: Optional[int] = None,
            measure: Optional[Measure] = None) -> Plan:
    """Resolve an opened artifact (:func:`lipt_export.runtime.loader.open_artifact`) into a :class:`Plan`."""
    if runtime != "auto" and runtime not in CPU_RUNTIMES:
        raise ArtifactError(f"unknown runtime '{runtime}': use auto or one of {', '.join(CPU_RUNTIMES)}")
    if runtime not in ("auto", "onnxruntime") and art.format != "onnx":
        raise ArtifactError(f"--runtime {runtime} runs ONNX artifacts; {art.path.name} is {art.format}")
    size, ov, warnings = resolve_tiling(art, tile, overlap, default_tile)
    chosen, why, record = _resolve_runtime(art, runtime, threads, measure)
    busy = record.provisional_warning(art.precision) if record is not None else None
    warnings += [busy] if busy else []
    return Plan(art, chosen, why, size, ov, warnings, (tile, overlap, default_tile))


def load_runner(path: Any, precision: Optional[str] = None, backend: str = "auto", tile: Optional[int] = None,
                overlap: Optional[int] = None, providers: Optional[Sequence[str]] = None,
                threads: Optional[int] = None, model: Optional[str] = None, variant: Optional[str] = None,
                scale: Optional[int] = None, name: Optional[str] = None, runtime: str = "onnxruntime",
                default_tile: Optional[int] = None, measure: Optional[Measure] = None) -> Runner:
    """A ready runner for ``path`` (export directory, manifest.json, .onnx, .engine, checkpoint, or a loaded
    torch module): open -> resolve -> run, resolved as ``lipt-export upscale`` resolves it. ``runtime``: ONNX
    Runtime by default (the execution every export's gates were measured on), another by name, or ``"auto"``: the
    same measured choice as ``upscale --runtime auto``. Tiling: ``tile`` as given (0: whole images); unset, whole images unless the model requires
    tiling, or ``default_tile`` (upscale uses :data:`~lipt_export.tiling.POLICY_TILE`: the model's measured default
    tile, ``io.tiling.default_tile``; images up to it run whole, larger ones tiled by the model's policy). ``runner.resolved`` is the :class:`Plan` (what runs and why)."""
    torch = sys.modules.get("torch")  # a module can only be passed if torch is loaded: never import it here
    if torch is not None and isinstance(path, torch.nn.Module):
        return TorchRunner(path, name=name or "eager")
    art = open_artifact(path, precision=precision, backend=backend)
    plan = resolve(art, runtime=runtime, tile=tile, overlap=overlap, default_tile=default_tile, threads=threads,
                   measure=measure)
    runner = plan.runner(threads=threads, providers=providers, model=model, variant=variant, scale=scale, name=name)
    runner.resolved = plan
    return runner
