"""The export pipeline: model -> deploy graph -> ONNX -> simplified -> precision variants -> lint -> engines ->
parity -> manifest. Each stage is a plain function (below or in its own module); :func:`run_export` only
composes them, each timed and logged by :class:`Stages`, and makes the result atomic: everything is written to
a temp directory that replaces the output folder only when the export is complete.

Stages pass :class:`~lipt_export.manifest.ArtifactEntry` values (path relative to the export directory,
format, precision, sha256, details) and add details with ``with_details``.
"""
from __future__ import annotations

import copy
import logging
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
import torch

from lipt_export.catalog import DEFAULT_OPSET, check_opset, family
from lipt_export.engines.audit import COMPUTE_OPS
from lipt_export.engines.shapes import check_max_shape
from lipt_export.engines.tensorrt import EngineOptions, build_engines_for_export
from lipt_export.errors import ExportError
from lipt_export.export.lint import lint_onnx
from lipt_export.export.onnx_export import export_onnx, node_count
from lipt_export.export.precision.calibration.ranges import METHODS as CALIB_METHODS
from lipt_export.export.precision.fp16 import convert_fp16
from lipt_export.export.precision.int8 import quantize_int8, quantized_nodes
from lipt_export.export.simplify import simplify_onnx
from lipt_export.export.summary import render_report
from lipt_export.fileio import (dead_owner_temps, disk_full, exclusive_lock, replace_dir, save_atomic, sha256_file,
                                temp_prefix, writable_dir_problem, write_text_atomic)
from lipt_export.images import IMAGE_SUFFIXES, image_size, list_images
from lipt_export.manifest import (REPORT_NAME, ArtifactEntry, Manifest, ModelInfo, embed_onnx_metadata,
                                  replaceable_problem, write_manifest)
from lipt_export.models.checkpoint import check_checkpoint_file
from lipt_export.models.io import UnitRangeIO
from lipt_export.models.loading import PreparedModel, prepare_model
from lipt_export.models.registry import ModelSpec, get_spec, resolve_variant
from lipt_export.models.reparam import is_deploy, reparameterize_model
from lipt_export.runtime.eager import TorchRunner
from lipt_export.runtime.loader import io_contract_for
from lipt_export.runtime.ort import OnnxRuntimeRunner
from lipt_export.runtime.trt import tensorrt_rtx_status, tensorrt_status
from lipt_export.validation.extras import parity_extras_for
from lipt_export.validation.inputs import natural_inputs
from lipt_export.validation.parity import (FP32_REL_L2_LIMIT, Parity, compare, fp32_parity_ok, precision_flag,
                                          rel_l2)
from lipt_export.validation.runtime_choice import int8_recommendation, measure_export_choices

logger = logging.getLogger(__name__)

DEFAULT_PARITY_SIZES: Tuple[Tuple[int, int], ...] = ((64, 64), (37, 51))
SIMPLIFIERS = ("auto", "onnxsim", "onnxslim", "none")
BACKENDS = ("auto", "onnxruntime", "tensorrt", "tensorrt-rtx")
GOLDEN_NAME = "golden.npz"


@dataclass(frozen=True)
class ExportConfig:
    """Every export option, defaults in one place, validated once (:meth:`validate`, called by run_export)."""

    model: str = "lipt"
    variant: Optional[str] = None  # None: as the checkpoint says (else the family's default variant)
    scale: int = 4
    weights: Optional[str] = None
    config: Optional[str] = None  # the official config file the checkpoint was trained with (LIPT .yml, ...)
    arch_options: Dict[str, str] = field(default_factory=dict)  # e.g. {"attention": "public"} for AgileIR
    out: str = "exports"
    name: Optional[str] = None  # output folder name; default <model>-<variant>-x<scale>
    opset: int = DEFAULT_OPSET
    dynamo: bool = False
    simplify: str = "auto"  # auto | onnxsim | onnxslim | none
    parity_sizes: Sequence[Tuple[int, int]] = DEFAULT_PARITY_SIZES
    parity_images: Optional[str] = None  # folder of images for parity inputs (default: synthetic images)
    seed: int = 0
    # precision variants
    fp16: bool = False
    fp16_io: bool = False  # implies fp16
    int8: bool = False
    calib: Optional[str] = None
    calib_lr: bool = False
    calib_count: int = 32
    calib_size: int = 64
    calib_method: str = "minmax"
    max_psnr_drop: float = 0.10
    # engines: auto = TensorRT with a GPU, else TensorRT-RTX ahead of time, else ONNX only
    backend: str = "auto"
    engine: EngineOptions = field(default_factory=EngineOptions)
    lint: bool = True
    overwrite: bool = False  # replace an existing export folder (atomically, the old one kept until then)

    def __post_init__(self):
        if self.fp16_io and not self.fp16:  # an FP16-I/O model is an FP16 model
            object.__setattr__(self, "fp16", True)

    def validate(self) -> None:
        """Every check that needs no model: wrong values fail here, before any heavy work."""
        if self.simplify not in SIMPLIFIERS:
            raise ExportError(f"unknown simplifier '{self.simplify}'; choose one of {', '.join(SIMPLIFIERS)}")
        if self.backend not in BACKENDS:
            raise ExportError(f"unknown backend '{self.backend}'; choose one of {', '.join(BACKENDS)}")
        if len(self.parity_sizes) < 2:
            raise ExportError("parity needs at least two --parity-size values (one not a multiple of the window), "
                              "e.g. --parity-size 64x64 --parity-size 37x51")
        check_opset(self.opset, self.dynamo)
        least = family(self.model).min_size
        small = [f"{h}x{w}" for h, w in self.parity_sizes if min(h, w) < least]
        if small:
            raise ExportError(f"--parity-size {', '.join(small)} is below {self.model.lower()}'s smallest input "
                              f"{least}x{least}; use sizes of at least that, e.g. 64x64 and 37x51")
        if self.int8 and not self.calib:
            raise ExportError("INT8 needs representative images: pass --calib DIR (a folder of natural photos)")
        if self.calib_method not in CALIB_METHODS:
            raise ExportError(f"unknown calibration method '{self.calib_method}'; choose one of "
                              f"{', '.join(CALIB_METHODS)}")
        if self.calib_count < 1 or self.calib_size < 8:
            raise ExportError("--calib-count must be >= 1 and --calib-size >= 8")
        if self.name is not None and (not self.name or self.name in (".", "..") or self.name.startswith(".")
                                      or "/" in self.name or "\\" in self.name):
            raise ExportError(f"--name '{self.name}' must be a plain folder name (no '/', not starting with '.')")
        self.engine.check_fits(self.model, self.scale)  # a --shapes that cannot build, in milliseconds
        problem = writable_dir_problem(Path(self.out))
        if problem:
            raise ExportError(f"cannot write exports to --out {self.out}: {problem}; pass a writable folder")
        if self.weights is not None:
            check_checkpoint_file(self.weights)
        for flag, folder in (("--calib", self.calib if self.int8 else None), ("--parity-images", self.parity_images)):
            if folder is None:
                continue
            if not Path(folder).is_dir():
                raise ExportError(f"{flag} {folder} is not a folder; pass a folder of images")
            found = list_images(folder)
            if not found:
                raise ExportError(f"{flag} {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); add some")
            for image in found:
                image_size(image)  # unreadable or truncated: one line naming it, before any model work


@dataclass
class ExportResult:
    out_dir: Path
    manifest: Manifest
    timings: Dict[str, float]
    parity: List[Parity]


class Stages:
    """Times and logs each stage (``with stages("onnx"): ...``); the timings go into the manifest."""

    def __init__(self):
        self.timings: Dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        logger.info(f"[{name}] ...")
        t0 = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - t0
        logger.info(f"[{name}] done in {self.timings[name]:.2f}s")


# -- stages ----------------------------------------------------------------------------------------------

def resolve_backend(backend: str) -> Tuple[str, str]:
    """(engine backend this machine will use, why). Fails at once when a TensorRT is asked for and missing."""
    if backend == "onnxruntime":
        return backend, "--backend onnxruntime: ONNX artifacts only"
    trt_ok, trt_why = tensorrt_status()
    rtx_ok, rtx_why = tensorrt_rtx_status()
    if backend == "tensorrt":
        if not trt_ok:
            raise ExportError(trt_why)
        return backend, "--backend tensorrt: TensorRT with this machine's GPU"
    if backend == "tensorrt-rtx":
        if not rtx_ok:
            raise ExportError(rtx_why)
        return backend, "--backend tensorrt-rtx: TensorRT-RTX, ahead of time"
    if trt_ok:
        return "tensorrt", "auto: TensorRT and a CUDA GPU are available"
    if rtx_ok:
        return "tensorrt-rtx", "auto: no datacenter TensorRT with a CUDA GPU here; TensorRT-RTX builds ahead of time"
    return "onnxruntime", "auto: neither TensorRT with a GPU nor TensorRT-RTX here; ONNX artifacts only"


def precision_claims(root: Path, entry: ArtifactEntry) -> Dict[str, Optional[set]]:
    """What the precision stages recorded about an ONNX artifact, for the engine's precision audit: compute
    nodes that run in FP32 (fp16: exactly the recorded FP32 islands) and in INT8 (int8: exactly the Q/DQ'd
    nodes, the recorded float fallbacks excluded). None = no claim."""
    if entry.precision == "fp16":
        islands = {i["node"] for i in entry.get("fp16_islands") or [] if i.get("op") in COMPUTE_OPS}
        return {"fp32": islands, "int8": set()}
    if entry.precision == "int8":
        return {"int8": {n.name for n in quantized_nodes(onnx.load(str(root / entry.path)))}, "fp32": None,
                "fp16": set()}
    return {"fp16": set(), "int8": set()}


def write_golden(tmp_dir: Path, inputs: Sequence[np.ndarray], reference: TorchRunner) -> Dict[str, object]:
    """golden.npz: the parity inputs and the eager model's outputs, for `lipt-export verify` anywhere later."""
    arrays = {}
    for k, x in enumerate(inputs):
        arrays[f"input_{k}"] = x
        arrays[f"output_{k}"] = reference.infer(x)
    path = tmp_dir / GOLDEN_NAME
    save_atomic(path, lambda tmp: np.savez(open(tmp, "wb"), **arrays))
    return {"path": GOLDEN_NAME, "sha256": sha256_file(path), "bytes": path.stat().st_size,
            "sizes": [list(x.shape[2:]) for x in inputs], "reference": "eager deploy graph (float32)"}


def reparam_check(train: torch.nn.Module, rgb_range: float, seed: int) -> float:
    """Train graph vs its deploy graph, both in float64 (fused in float64 too), on a natural input:
    proves the fusion algebra rather than measuring fp32 rounding."""
    x = torch.from_numpy(natural_inputs([(32, 40)], seed=seed + 7)[0]).double() * rgb_range
    train64 = copy.deepcopy(train).double().eval()
    deploy64 = reparameterize_model(train64)
    with torch.no_grad():
        return rel_l2(deploy64(x).numpy(), train64(x).numpy())


def build_deploy_graph(spec: ModelSpec, cfg: ExportConfig) -> Tuple[PreparedModel, Optional[float]]:
    """The model with the user's weights (architecture read from the checkpoint), its deploy graph, and the
    float64 reparameterization error."""
    prepared = prepare_model(spec, cfg.variant, cfg.scale, cfg.weights, cfg.seed, config_file=cfg.config,
                             options=cfg.arch_options)
    if not is_deploy(prepared.deploy):
        raise ExportError("reparameterization left training branches in the deploy graph")
    err = reparam_check(prepared.train, spec.rgb_range, cfg.seed) if prepared.train is not None else None
    return prepared, err


def onnx_stage(wrapped: torch.nn.Module, tmp_dir: Path, cfg: ExportConfig, size_multiple: int
               ) -> Tuple[Path, Dict[str, object]]:
    """The raw dynamic-H/W ONNX export; returns (path, exporter info)."""
    raw = tmp_dir / "model.raw.onnx"
    side = max(64, size_multiple)
    info = export_onnx(wrapped, raw, opset=cfg.opset, sample_hw=(side, side), dynamo=cfg.dynamo)
    return raw, {"opset": info.opset, "exporter": info.exporter}


def simplify_stage(raw: Path, tmp_dir: Path, tool: str) -> Tuple[Path, Dict[str, object]]:
    """``model.onnx`` from the raw export (simplified unless ``tool`` is "none"); returns (path, info)."""
    fp32_path = tmp_dir / "model.onnx"
    if tool == "none":
        shutil.copyfile(raw, fp32_path)
        simp = {"tool": "none", "nodes_before": node_count(raw), "nodes_after": node_count(raw)}
    else:
        s = simplify_onnx(raw, fp32_path, tool)
        simp = {"tool": s.tool, "nodes_before": s.nodes_before, "nodes_after": s.nodes_after, "note": s.note}
    raw.unlink()
    return fp32_path, simp


def fp16_stage(fp32_path: Path, tmp_dir: Path, manifest: Manifest, cfg: ExportConfig) -> ArtifactEntry:
    path = tmp_dir / "model.fp16.onnx"
    size = max(cfg.calib_size, manifest.io.multiple_of)
    # activation ranges for the FP32 islands: the calibration images when given, else synthetic inputs
    calib_inputs = natural_inputs([(size, size)] * 4, cfg.calib, seed=cfg.seed + 1)
    details = convert_fp16(fp32_path, path, calib_inputs=calib_inputs, keep_io_fp32=not cfg.fp16_io)
    embed_onnx_metadata(path, manifest, {"precision": "fp16"})
    return ArtifactEntry.for_file(path, tmp_dir, fmt="onnx", precision="fp16", nodes=node_count(path), **details)


def int8_stage(fp32_path: Path, tmp_dir: Path, manifest: Manifest, cfg: ExportConfig) -> ArtifactEntry:
    path = tmp_dir / "model.int8.onnx"
    details = quantize_int8(fp32_path, path, calib_dir=cfg.calib, calib_lr=cfg.calib_lr, count=cfg.calib_count,
                            size=cfg.calib_size, method=cfg.calib_method, scale=cfg.scale,
                            max_psnr_drop=cfg.max_psnr_drop, cache_dir=Path(cfg.out) / ".calib-cache")
    embed_onnx_metadata(path, manifest, {"precision": "int8"})
    return ArtifactEntry.for_file(path, tmp_dir, fmt="onnx", precision="int8", nodes=node_count(path), **details)


def parity_stage(tmp_dir: Path, entries: Sequence[ArtifactEntry], prepared: PreparedModel, spec: ModelSpec,
                 inputs: Sequence[np.ndarray]) -> Tuple[List[ArtifactEntry], List[Parity], TorchRunner]:
    """Every ONNX artifact against the eager deploy graph (and fp32 against the training graph), with the
    gates: fp32 within FP32_REL_L2_LIMIT, every artifact finite. Returns the entries with parity added."""
    reference = TorchRunner(UnitRangeIO(prepared.deploy, spec.rgb_range), name="eager-deploy")
    candidates = [OnnxRuntimeRunner(tmp_dir / e.path, name=e.path, precision=e.precision) for e in entries]
    results = compare(reference, candidates, inputs)
    vs_train = None
    if prepared.train is not None:
        train_ref = TorchRunner(UnitRangeIO(prepared.train, spec.rgb_range), name="eager-train")
        vs_train = compare(train_ref, candidates[:1], inputs)[0]
    extras = parity_extras_for(spec.name)
    if extras is not None:
        for e, par in zip(entries, results):
            par.extra.update(extras(prepared.deploy, tmp_dir / e.path, inputs))
    fp32 = results[0]
    if not fp32_parity_ok(fp32.rel_l2, fp32.finite):
        raise ExportError(f"fp32 ONNX does not match the eager model: rel-L2 {fp32.rel_l2:.2e} > "
                          f"{FP32_REL_L2_LIMIT:.0e} (max |err| {fp32.max_abs:.2e}); no artifact written")
    for par in results[1:]:
        if not par.finite:
            raise ExportError(f"{par.artifact} produces inf/NaN on natural inputs; no artifact written")
    out = []
    for e, par in zip(entries, results):
        flag = precision_flag(par)
        if flag:
            logger.warning(f"{e.path} is flagged: {flag}")
        out.append(e.with_details(parity=par.as_dict(), **({"flag": flag} if flag else {})))
    if vs_train is not None:
        out[0] = out[0].with_details(parity_vs_train_graph=vs_train.as_dict())
    return out, results, reference


def int8_speed_stage(tmp_dir: Path, entries: Sequence[ArtifactEntry], inputs) -> List[ArtifactEntry]:
    """Marks the INT8 ONNX ``recommended`` (or not) with the measured latencies of every ONNX precision."""
    onnx = {e.precision: tmp_dir / e.path for e in entries if e.format == "onnx"}
    if "int8" not in onnx:
        return list(entries)
    speed = int8_recommendation(onnx, inputs)
    return [e.with_details(recommended=speed["recommended"], speed=speed) if e.format == "onnx" and
            e.precision == "int8" else e for e in entries]


def lint_stage(tmp_dir: Path, entries: Sequence[ArtifactEntry]) -> List[ArtifactEntry]:
    return [e.with_details(lint=lint_onnx(tmp_dir / e.path).summary()) for e in entries]


# -- composition -----------------------------------------------------------------------------------------

def run_export(cfg: ExportConfig) -> ExportResult:
    cfg.validate()
    spec = get_spec(cfg.model)
    cfg = replace(cfg, engine=cfg.engine.for_model(spec))  # --shapes unset: the family's default profile
    if cfg.variant is not None or not cfg.weights:
        resolve_variant(spec, cfg.variant, cfg.scale)  # a bad --variant/--scale fails before any work
    engine_backend, backend_why = resolve_backend(cfg.backend)  # fails fast when a TensorRT is missing
    if engine_backend != "onnxruntime":
        cfg.engine.validate(engine_backend)  # bad --shapes/--batch/--compute-capabilities fail before any work
    out_root = Path(cfg.out)
    if cfg.name or not (cfg.weights or cfg.config):  # the folder name is known before the model is resolved
        check_target(out_root / (cfg.name or f"{spec.name}-{resolve_variant(spec, cfg.variant, cfg.scale)}"
                                               f"-x{cfg.scale}"), cfg.overwrite)
    stage = Stages()
    with stage("model"):
        prepared, reparam_err = build_deploy_graph(spec, cfg)
    arch = prepared.arch
    name = cfg.name or f"{spec.name}-{arch.variant}-x{cfg.scale}"
    final_dir = out_root / name
    check_target(final_dir, cfg.overwrite)
    made_root = not out_root.exists()
    out_root.mkdir(parents=True, exist_ok=True)
    try:
        with exclusive_lock(out_root / f".{name}.lock", _busy):
            check_target(final_dir, cfg.overwrite)  # another export may have finished while we built the model
            return _export_into(cfg, spec, prepared, reparam_err, stage, final_dir, engine_backend, backend_why)
    except BaseException:
        if made_root and not any(out_root.iterdir()):
            out_root.rmdir()  # a failed export leaves no empty --out folder behind
        raise


def check_target(final_dir: Path, overwrite: bool) -> None:
    """``final_dir`` is free, or (``overwrite``) an export of this tool holding nothing else: only that is
    ever replaced."""
    if not final_dir.exists() and not final_dir.is_symlink():
        return
    if not overwrite:
        raise ExportError(f"{final_dir} already exists; pass --overwrite to replace it (the old export stays until "
                          f"the new one is complete) or choose another --name/--out")
    if final_dir.is_symlink() or not final_dir.is_dir():
        raise ExportError(f"{final_dir} exists and is not a folder; remove it or choose another --name/--out")
    problem = replaceable_problem(final_dir)
    if problem:
        raise ExportError(f"--overwrite replaces only an export of this tool, and {final_dir} is not one: {problem}; "
                          f"move your files out or choose another --name/--out")


def _busy(lock: Path, pid: int) -> ExportError:
    return ExportError(f"another export into {lock.parent / lock.name[1:-5]} is running (process {pid}, lock {lock}); "
                       f"wait for it or export under another --name")


def _export_into(cfg: ExportConfig, spec: ModelSpec, prepared: PreparedModel, reparam_err: Optional[float],
                 stage: Stages, final_dir: Path, engine_backend: str, backend_why: str) -> ExportResult:
    """Every stage after the model, into a temp folder that replaces ``final_dir`` when complete."""
    arch, name, out_root = prepared.arch, final_dir.name, final_dir.parent
    for stale in dead_owner_temps(out_root, f".{name}.tmp-"):  # a killed export's (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
        logger.info(f"removed {stale.name}, the temp folder of an export that was killed")
    tmp_dir = Path(tempfile.mkdtemp(prefix=temp_prefix(f".{name}.tmp-"), dir=str(out_root)))
    try:
        wrapped = UnitRangeIO(prepared.deploy, spec.rgb_range).eval()
        with stage("onnx"):
            raw, exporter = onnx_stage(wrapped, tmp_dir, cfg, arch.size_multiple)
        with stage("simplify"):
            fp32_path, simplifier = simplify_stage(raw, tmp_dir, cfg.simplify)
        max_shape = None
        if engine_backend != "onnxruntime":  # a profile this graph cannot hold fails now, not after parity
            max_shape = check_max_shape(fp32_path, cfg.engine.profile())
        model_info = ModelInfo(spec.name, arch.variant, cfg.scale, {
            "description": spec.description, "params_deploy": sum(p.numel() for p in prepared.deploy.parameters()),
            "native_rgb_range": spec.rgb_range, "weights": prepared.weights, "architecture": arch.to_dict(),
            "reparam_rel_l2_fp64": reparam_err})
        manifest = Manifest.new(model=model_info, io=io_contract_for(spec, arch),
                                export={**exporter, "simplifier": simplifier})
        embed_onnx_metadata(fp32_path, manifest)
        entries = [ArtifactEntry.for_file(fp32_path, tmp_dir, fmt="onnx", precision="fp32",
                                          nodes=node_count(fp32_path))]
        if cfg.fp16:
            with stage("fp16"):
                entries.append(fp16_stage(fp32_path, tmp_dir, manifest, cfg))
        if cfg.int8:
            with stage("int8"):
                entries.append(int8_stage(fp32_path, tmp_dir, manifest, cfg))
        parity_inputs = natural_inputs(cfg.parity_sizes, cfg.parity_images, seed=cfg.seed)
        with stage("parity"):
            entries, results, reference = parity_stage(tmp_dir, entries, prepared, spec, parity_inputs)
        if cfg.lint:
            with stage("lint"):
                entries = lint_stage(tmp_dir, entries)
        golden = write_golden(tmp_dir, parity_inputs, reference)
        with stage("runtime"):  # the fastest CPU execution of each ONNX file within budget, for `--runtime auto`
            runtime_choice = measure_export_choices(tmp_dir, entries, parity_inputs, cfg.scale)
            entries = int8_speed_stage(tmp_dir, entries, parity_inputs)
        engines: List[ArtifactEntry] = []
        if engine_backend != "onnxruntime":
            with stage("engine"):
                engines = build_engines_for_export(tmp_dir, entries, manifest, cfg.engine, parity_inputs, reference,
                                                   flavor=engine_backend, max_shape=max_shape,
                                                   claims=lambda e: precision_claims(tmp_dir, e))
        manifest = replace(manifest.with_artifacts([*entries, *engines]), golden=golden,
                           runtime_choice=runtime_choice).with_export(
            engines={"backend": engine_backend, "why": backend_why},
            timings_s={k: round(v, 3) for k, v in stage.timings.items()})
        write_manifest(tmp_dir, manifest)
        write_text_atomic(tmp_dir / REPORT_NAME, render_report(manifest))
        check_target(final_dir, cfg.overwrite)  # files dropped into the old export meanwhile are not lost either
        replace_dir(tmp_dir, final_dir)
    except BaseException as exc:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if disk_full(exc):
            done = ", ".join(stage.timings) or "none"
            raise ExportError(f"disk full while writing {exc.filename or tmp_dir} ({exc.strerror}); stages finished: "
                              f"{done}; nothing was written to {final_dir} (the temp folder is removed): free space "
                              f"under {out_root} and export again") from None
        raise
    return ExportResult(out_dir=final_dir, manifest=replace(manifest, root=final_dir), timings=stage.timings,
                        parity=results)
