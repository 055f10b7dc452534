"""The Python serving API: ``load_runner(path)`` picks the right runner for an artifact.

``path`` may be an export directory or its ``manifest.json`` (the fp32 ONNX by default, ``precision=`` to
choose; a TensorRT engine of that precision when ``backend`` is ``tensorrt``, or ``auto`` with TensorRT
usable), a ``.onnx`` file, a ``.engine`` file (checked against its sidecar manifest) or a PyTorch checkpoint
(``model=``, ``variant=``, ``scale=`` required; runs the reparameterized deploy graph eagerly).

Every runner has ``infer(lr) -> sr`` on float32 NCHW [0, 1] arrays plus ``name``/``precision``/``device``
(:mod:`lipt_export.runners`), and ``artifact`` (:class:`Artifact`) describing what it runs. ``tile=`` wraps it
in a :class:`~lipt_export.tiling.TiledRunner`; models whose manifest says tiling is required (ESRT) are
tiled by default.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from lipt_export import manifest as mf
from lipt_export.runners import OnnxRuntimeRunner, Runner

BACKENDS = ("auto", "onnxruntime", "tensorrt")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")
ENGINE_SUFFIXES = (".engine", ".plan")


class ArtifactError(ValueError):
    """A user-facing problem with an artifact path or choice (one line, says how to fix it)."""


@dataclass
class Artifact:
    """What a runner runs: the file, its export directory's manifest and its manifest entry."""

    path: Path
    format: str  # onnx | tensorrt | torch
    precision: str
    manifest: Optional[Dict[str, Any]] = None  # whole manifest, or the ONNX-embedded description
    entry: Optional[Dict[str, Any]] = None  # the artifact's entry in manifest["artifacts"]
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def io(self) -> Dict[str, Any]:
        return (self.manifest or {}).get("io", {})

    @property
    def scale(self) -> Optional[int]:
        return self.io.get("scale")

    @property
    def multiple_of(self) -> int:
        return int(self.io.get("size", {}).get("multiple_of", 1))

    @property
    def tiling(self) -> Dict[str, Any]:
        return self.io.get("tiling", {})


def _choose_entry(manifest: Dict[str, Any], root: Path, precision: Optional[str], backend: str
                  ) -> Dict[str, Any]:
    precision = precision or "fp32"
    by_fmt = {fmt: [a for a in manifest["artifacts"] if a["format"] == fmt and a["precision"] == precision]
              for fmt in ("onnx", "tensorrt")}
    if backend == "tensorrt" or (backend == "auto" and by_fmt["tensorrt"]):
        if by_fmt["tensorrt"]:
            from lipt_export.engines import tensorrt_status

            ok, why = tensorrt_status()
            if ok or backend == "tensorrt":
                return by_fmt["tensorrt"][0]  # the engine runner explains a missing TensorRT itself
        elif backend == "tensorrt":
            have = sorted(a["path"] for a in manifest["artifacts"] if a["format"] == "tensorrt")
            raise ArtifactError(f"{root} has no {precision} TensorRT engine (engines: {', '.join(have) or 'none'}); "
                                f"export with --backend tensorrt on a GPU machine, or use --backend onnxruntime")
    if by_fmt["onnx"]:
        return by_fmt["onnx"][0]
    have = sorted({a["precision"] for a in manifest["artifacts"] if a["format"] == "onnx"})
    raise ArtifactError(f"{root} has no {precision} ONNX artifact; available precisions: {', '.join(have) or 'none'}")


def open_artifact(path: str | os.PathLike, precision: Optional[str] = None, backend: str = "auto") -> Artifact:
    """Resolve ``path`` (export dir, manifest.json, .onnx, .engine, checkpoint) to one :class:`Artifact`."""
    if backend not in BACKENDS:
        raise ArtifactError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"no such artifact: {p} (pass an export directory, manifest.json, .onnx or .engine file)")
    if p.is_dir() or p.name == mf.MANIFEST_NAME:
        root, man = _read_export_dir(p)
        entry = _choose_entry(man, root, precision, backend)
        return Artifact(root / entry["path"], entry["format"], entry["precision"], man, entry)
    suffix = p.suffix.lower()
    if suffix == ".onnx":
        man, entry = _sidecar(p)
        if man is None:
            desc = mf.onnx_metadata(p)  # a lone ONNX file still describes itself
            man = desc or None
        prec = (entry or {}).get("precision") or onnx_precision(p)
        if precision and precision != prec:
            raise ArtifactError(f"{p.name} is a {prec} model, not {precision}")
        return Artifact(p, "onnx", prec, man, entry)
    if suffix in ENGINE_SUFFIXES:
        man, entry = _sidecar(p)
        if entry is None or entry.get("format") != "tensorrt":
            raise ArtifactError(f"{p} is not listed as a TensorRT engine in {p.parent / mf.MANIFEST_NAME}; engines are "
                                f"loaded with the manifest written beside them by `lipt-export --backend tensorrt`")
        return Artifact(p, "tensorrt", entry["precision"], man, entry)
    if suffix in CHECKPOINT_SUFFIXES:
        return Artifact(p, "torch", precision or "fp32")
    raise ArtifactError(f"don't know how to run '{p.name}': expected an export directory, manifest.json, .onnx, "
                        f".engine or a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})")


def open_onnx_artifacts(path: str | os.PathLike) -> Tuple[List[Artifact], List[str]]:
    """Every ONNX artifact ``path`` names, for tools that compare them all (``eval``): an export directory or
    its manifest.json expands to all of its ONNX entries, a ``.onnx`` file is itself (as :func:`open_artifact`).
    Also returns the manifest's non-ONNX entries, as ``dir/file (format)``, for the caller to report."""
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"no such artifact: {p} (pass an export directory, its manifest.json or a .onnx file)")
    if p.suffix.lower() == ".onnx":
        return [open_artifact(p)], []
    if not (p.is_dir() or p.name == mf.MANIFEST_NAME):
        raise ArtifactError(f"cannot use '{p.name}' here: expected an export directory, manifest.json or .onnx")
    root, man = _read_export_dir(p)
    arts = [Artifact(root / a["path"], "onnx", a["precision"], man, a) for a in man["artifacts"]
            if a["format"] == "onnx"]
    if not arts:
        raise ArtifactError(f"{root} lists no ONNX artifacts")
    others = [f"{root.name}/{a['path']} ({a['format']})" for a in man["artifacts"] if a["format"] != "onnx"]
    return arts, others


def _read_export_dir(path: Path) -> Tuple[Path, Dict[str, Any]]:
    """(export directory, its manifest) for a directory or its manifest.json."""
    root = path if path.is_dir() else path.parent
    try:
        return root, mf.read_manifest(root)
    except (FileNotFoundError, ValueError) as exc:
        raise ArtifactError(str(exc)) from None


def _sidecar(path: Path) -> Tuple[Optional[Dict[str, Any]], Optional[Dict[str, Any]]]:
    if not (path.parent / mf.MANIFEST_NAME).is_file():
        return None, None
    try:
        man = mf.read_manifest(path.parent)
    except ValueError:
        return None, None
    entry = mf.find_artifact(man, path.name)
    if entry is None:
        return None, None
    if entry.get("format") == "onnx" and entry.get("sha256") and mf.sha256_file(path) != entry["sha256"]:
        raise ArtifactError(f"{path} does not match its manifest entry (sha256 differs): the file was changed "
                            f"after export; re-export it or move it out of the export directory")
    return man, entry


def onnx_precision(path: Path) -> str:
    """The precision an ONNX artifact declares in its metadata_props (fp32 when it declares none)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    return props.get("precision", "fp32")


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
        from lipt_export.engines import tensorrt_status

        if use is not None or tensorrt_status()[0]:
            cache = str(cache_dir or Path.home() / ".cache" / "lipt-export" / "ort-trt")
            out.append(("TensorrtExecutionProvider", {"trt_engine_cache_enable": "True",
                                                      "trt_engine_cache_path": cache,
                                                      "trt_timing_cache_enable": "True"}))
    if "cuda" in wanted and "CUDAExecutionProvider" in available:
        out.append("CUDAExecutionProvider")
    out.append("CPUExecutionProvider")
    return out


def runner_for(art: Artifact, *, providers: Optional[Sequence[str]] = None, threads: Optional[int] = None,
               model: Optional[str] = None, variant: Optional[str] = None, scale: Optional[int] = None,
               name: Optional[str] = None) -> Runner:
    """The runner for one resolved artifact (not tiled)."""
    if art.format == "onnx":
        runner = OnnxRuntimeRunner(art.path, name=name or art.path.name, precision=art.precision,
                                   providers=ort_providers(providers), threads=threads)
    elif art.format == "tensorrt":
        from lipt_export.engines.tensorrt import load_engine_runner

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
    from lipt_export.export.pipeline import prepare_model
    from lipt_export.models.io import UnitRangeIO
    from lipt_export.models.registry import get_spec, resolve_variant
    from lipt_export.runners import TorchRunner

    spec = get_spec(model)
    variant = resolve_variant(spec, variant, scale)
    _, deploy, _ = prepare_model(spec, variant, scale, str(art.path), seed=0)
    art.manifest = {"io": mf.io_contract(scale, size_multiple=spec.size_multiple(variant), min_size=spec.min_size,
                                         recommended_tile=spec.recommended_tile, tile_required=spec.tile_required),
                    "model": {"name": spec.name, "variant": variant, "scale": scale}}
    return TorchRunner(UnitRangeIO(deploy, spec.rgb_range), name=name or f"eager:{art.path.name}")


WINDOWS_OF_CONTEXT = 8


def default_overlap(io: Dict[str, Any]) -> int:
    """The manifest's ``io.tiling.overlap``, but at least 8 windows for windowed models: their receptive field
    spans several windows (LIPT-tiny, window 8: overlap 64 gives rel-L2 5.6e-6 against whole-image inference,
    96 gives 9e-8; docs/serving.md)."""
    multiple = int(io.get("size", {}).get("multiple_of", 1))
    base = int(io.get("tiling", {}).get("overlap", 16))
    return max(base, WINDOWS_OF_CONTEXT * multiple) if multiple > 1 else base


def resolve_tiling(art: Artifact, tile: Optional[int], overlap: Optional[int]) -> Tuple[Optional[int], int]:
    """(tile or None for whole images, overlap): explicit values win; else the manifest's recommendation
    when it says tiling is required (ESRT), else whole images. A required tile cannot be switched off."""
    tiling = art.tiling
    required, recommended = bool(tiling.get("required")), tiling.get("recommended_tile")
    overlap = default_overlap(art.io) if overlap is None else int(overlap)
    if tile is None:
        return (int(recommended) if required and recommended else None), overlap
    if tile == 0:
        if required:
            raise ArtifactError(f"this model must run tiled (memory grows quadratically with the image); use a "
                                f"tile of at most {recommended} instead of 0")
        return None, overlap
    if tile < 0:
        raise ArtifactError(f"tile must be >= 0, got {tile}")
    return int(tile), overlap


def load_runner(path: Any, precision: Optional[str] = None, backend: str = "auto", tile: Optional[int] = None,
                overlap: Optional[int] = None, providers: Optional[Sequence[str]] = None,
                threads: Optional[int] = None, model: Optional[str] = None, variant: Optional[str] = None,
                scale: Optional[int] = None, name: Optional[str] = None) -> Runner:
    """A ready runner for ``path`` (see the module doc). ``tile``: LR tile size (0 = whole images;
    None = as the manifest says). ``overlap``: LR pixels shared by neighbouring tiles."""
    import torch.nn as nn

    if isinstance(path, nn.Module):
        from lipt_export.runners import TorchRunner

        return TorchRunner(path, name=name or "eager")
    art = open_artifact(path, precision=precision, backend=backend)
    runner = runner_for(art, providers=providers, threads=threads, model=model, variant=variant, scale=scale,
                        name=name)
    tile_size, ov = resolve_tiling(art, tile, overlap)
    if tile_size is None:
        return runner
    from lipt_export.tiling import TiledRunner

    tiled = TiledRunner(runner, art.scale, tile_size, ov, art.multiple_of)
    tiled.artifact = art
    return tiled
