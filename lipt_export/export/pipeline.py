"""The export pipeline; :func:`run_export` only composes its stages, each a plain function timed and logged by
:class:`Stages`, in this order:

1. model: build the training graph, load the checkpoint (or demo weights), reparameterize, float64 check;
2. onnx, simplify: ``model.onnx`` (dynamic H/W); with engines to build, the profile's max shape is checked on it
   at once (engines/shapes.py);
3. fp16, bf16, int8, fp8: the precision variants (export/precision/); with ``--precision auto`` all four, their
   drops measured on the held-out pairs and a precision chosen per target (export/precision/auto.py);
4. parity: every ONNX file against the eager deploy graph, under the gates of validation/parity.py;
5. lint; golden.npz; runtime: the CPU runtime choice per file and whether INT8 earns its place;
6. engine: TensorRT / TensorRT-RTX engines (engines/tensorrt.py: backend resolution, audit against the precision
   claims, builds);
7. manifest.json and report.md, then the staged folder replaces the output folder (fileio.staged_dir).

Stages pass :class:`~lipt_export.manifest.ArtifactEntry` values (path relative to the export directory,
format, precision, sha256, details) and add details with ``with_details``.
"""
from __future__ import annotations

import copy
import logging
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from lipt_export.catalog import (AUTO_PRECISIONS, BF16_MAX_PSNR_DROP_DB, CALIB_COUNT, CALIB_METHOD, CALIB_METHODS,
                                 CALIB_SIZE, DEFAULT_OPSET, DEFAULT_PARITY_SIZES, DEFAULT_SCALE, EXPORT_BACKENDS,
                                 MAX_PSNR_DROP_DB, artifact_name, check_opset, family)
from lipt_export.engines.audit import precision_claims
from lipt_export.engines.shapes import check_max_shape
from lipt_export.engines.tensorrt import (EngineOptions, build_engines_for_export, engine_targets,
                                          resolve_engine_backend)
from lipt_export.errors import ExportError
from lipt_export.export.lint import lint_onnx
from lipt_export.export.onnx_export import export_onnx, node_count
from lipt_export.export.precision import auto as precision_auto
from lipt_export.export.precision.bf16 import convert_bf16
from lipt_export.export.precision.calibration.heldout import HeldOut, heldout_pairs
from lipt_export.export.precision.fp8 import quantize_fp8
from lipt_export.export.precision.fp16 import Fp16Options, convert_fp16
from lipt_export.export.precision.int8 import quantize_int8
from lipt_export.export.simplify import simplify_onnx
from lipt_export.export.summary import render_report
from lipt_export.fileio import (disk_full, exclusive_lock, save_atomic, sha256_file, staged_dir, writable_dir_problem,
                                write_text_atomic)
from lipt_export.images import check_image_folder
from lipt_export.manifest import (REPORT_NAME, ArtifactEntry, Manifest, ModelInfo, Parity, embed_onnx_metadata,
                                  replaceable_problem, write_manifest)
from lipt_export.models.checkpoint import check_checkpoint_file
from lipt_export.models.io import UnitRangeIO
from lipt_export.models.loading import PreparedModel, prepare_model
from lipt_export.models.registry import ModelSpec, get_spec, resolve_variant
from lipt_export.models.reparam import is_deploy, reparameterize_model
from lipt_export.runtime.eager import TorchRunner
from lipt_export.runtime.loader import io_contract_for
from lipt_export.runtime.ort import OnnxRuntimeRunner
from lipt_export.validation.extras import parity_extras_for
from lipt_export.validation.inputs import natural_inputs
from lipt_export.validation.parity import compare, gate_parity, rel_l2
from lipt_export.validation.runtime_choice import int8_recommendation, measure_export_choices

logger = logging.getLogger(__name__)

SIMPLIFIERS = ("auto", "onnxsim", "onnxslim", "none")
GOLDEN_NAME = "golden.npz"


@dataclass(frozen=True)
class ExportConfig:
    """Every export option, defaults in one place, validated once (:meth:`validate`, called by run_export)."""

    model: str = "lipt"
    variant: Optional[str] = None  # None: as the checkpoint says (else the family's default variant)
    scale: int = DEFAULT_SCALE
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
    bf16: bool = False
    fp8: bool = False
    precision: str = "explicit"  # "auto": every reduced precision, measured, one chosen per engine target
    calib: Optional[str] = None
    calib_lr: bool = False
    calib_count: int = CALIB_COUNT
    calib_size: int = CALIB_SIZE
    calib_method: str = CALIB_METHOD
    max_psnr_drop: float = MAX_PSNR_DROP_DB
    bf16_max_psnr_drop: float = BF16_MAX_PSNR_DROP_DB
    # engines: auto = TensorRT with a GPU, else TensorRT-RTX ahead of time, else ONNX only
    backend: str = "auto"
    engine: EngineOptions = field(default_factory=EngineOptions)
    lint: bool = True
    overwrite: bool = False  # replace an existing export folder (atomically, the old one kept until then)

    def __post_init__(self):
        if self.fp16_io and not self.fp16:  # an FP16-I/O model is an FP16 model
            object.__setattr__(self, "fp16", True)
        if self.precision == "auto":  # auto measures every reduced precision
            for name in AUTO_PRECISIONS:
                object.__setattr__(self, name, True)

    def validate(self) -> None:
        """Every check that needs no model: wrong values fail here, before any heavy work."""
        if self.simplify not in SIMPLIFIERS:
            raise ExportError(f"unknown simplifier '{self.simplify}'; choose one of {', '.join(SIMPLIFIERS)}")
        if self.backend not in EXPORT_BACKENDS:
            raise ExportError(f"unknown backend '{self.backend}'; choose one of {', '.join(EXPORT_BACKENDS)}")
        if len(self.parity_sizes) < 2:
            raise ExportError("parity needs at least two --parity-size values (one not a multiple of the window), "
                              "e.g. --parity-size 64x64 --parity-size 37x51")
        check_opset(self.opset, self.dynamo)
        least = family(self.model).min_size
        small = [f"{h}x{w}" for h, w in self.parity_sizes if min(h, w) < least]
        if small:
            raise ExportError(f"--parity-size {', '.join(small)} is below {self.model.lower()}'s smallest input "
                              f"{least}x{least}; use sizes of at least that, e.g. 64x64 and 37x51")
        if self.precision not in ("explicit", "auto"):
            raise ExportError(f"unknown --precision '{self.precision}'; use auto (or the per-precision flags)")
        if self.precision == "auto" and not self.calib:
            raise ExportError("--precision auto measures every precision on held-out images: pass --calib DIR (a "
                              "folder of natural photos)")
        for flag, on in (("INT8", self.int8), ("FP8", self.fp8)):
            if on and not self.calib:
                raise ExportError(f"{flag} needs representative images: pass --calib DIR (a folder of natural "
                                  f"photos)")
        if self.max_psnr_drop <= 0 or self.bf16_max_psnr_drop <= 0:
            raise ExportError(f"--max-psnr-drop must be a positive number of dB, got {self.max_psnr_drop:g}")
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
        if self.fp16:
            self.fp16_options().validate()
        if self.int8 or self.fp8 or (self.bf16 and self.calib):
            check_image_folder(self.calib, "--calib")
        if self.parity_images is not None:
            check_image_folder(self.parity_images, "--parity-images")

    def precisions(self) -> List[str]:
        """The precisions this export writes, fp32 first."""
        return ["fp32"] + [p for p in ("fp16", "bf16", "int8", "fp8") if getattr(self, p)]

    def heldout(self, fp32_path: Path, multiple_of: int) -> HeldOut:
        """The held-out pairs BF16 and ``--precision auto`` measure on (INT8/FP8 draw the same ones)."""
        return heldout_pairs(fp32_path, self.scale, calib=self.calib, calib_lr=self.calib_lr, count=self.calib_count,
                             size=self.calib_size, seed=self.seed, multiple_of=multiple_of)

    def fp16_options(self) -> Fp16Options:
        """FP16's own options: the activation ranges for its FP32 islands come from --calib (when given) at
        --calib-size, else from synthetic images."""
        return Fp16Options(images=self.calib, patch_size=self.calib_size, io_fp16=self.fp16_io)


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
    fp32_path = tmp_dir / artifact_name("onnx", "fp32")
    if tool == "none":
        shutil.copyfile(raw, fp32_path)
        simp = {"tool": "none", "nodes_before": node_count(raw), "nodes_after": node_count(raw)}
    else:
        s = simplify_onnx(raw, fp32_path, tool)
        simp = {"tool": s.tool, "nodes_before": s.nodes_before, "nodes_after": s.nodes_after, "note": s.note}
    raw.unlink()
    return fp32_path, simp


def fp16_stage(fp32_path: Path, tmp_dir: Path, manifest: Manifest, options: Fp16Options, seed: int = 0
               ) -> ArtifactEntry:
    path = tmp_dir / artifact_name("onnx", "fp16")
    size = max(options.patch_size, manifest.io.multiple_of)
    # activation ranges for the FP32 islands: the calibration images when given, else synthetic inputs
    calib_inputs = natural_inputs([(size, size)] * options.count, options.images, seed=seed + 1)
    details = convert_fp16(fp32_path, path, calib_inputs=calib_inputs, keep_io_fp32=not options.io_fp16)
    return _entry(path, tmp_dir, manifest, "fp16", details)


def _opset(path: Path) -> int:
    import onnx  # deferred: the opset of a written file only

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _entry(path: Path, tmp_dir: Path, manifest: Manifest, precision: str, details) -> ArtifactEntry:
    embed_onnx_metadata(path, manifest, {"precision": precision})
    return ArtifactEntry.for_file(path, tmp_dir, fmt="onnx", precision=precision, nodes=node_count(path),
                                  opset=_opset(path), **details)


def qdq_stage(precision: str, fp32_path: Path, tmp_dir: Path, manifest: Manifest, cfg: ExportConfig
              ) -> ArtifactEntry:
    """``model.int8.onnx`` or ``model.fp8.onnx``: the same calibration, cache and fallback search."""
    path = tmp_dir / artifact_name("onnx", precision)
    quantize = quantize_fp8 if precision == "fp8" else quantize_int8
    details = quantize(fp32_path, path, calib_dir=cfg.calib, calib_lr=cfg.calib_lr, count=cfg.calib_count,
                       size=cfg.calib_size, method=cfg.calib_method, scale=cfg.scale, seed=cfg.seed,
                       max_psnr_drop=cfg.max_psnr_drop, cache_dir=Path(cfg.out) / ".calib-cache")
    return _entry(path, tmp_dir, manifest, precision, details)


def int8_stage(fp32_path: Path, tmp_dir: Path, manifest: Manifest, cfg: ExportConfig) -> ArtifactEntry:
    return qdq_stage("int8", fp32_path, tmp_dir, manifest, cfg)


def bf16_stage(fp32_path: Path, tmp_dir: Path, manifest: Manifest, cfg: ExportConfig, held: HeldOut
               ) -> ArtifactEntry:
    """``model.bf16.onnx`` (opset 22) with FP32 islands measured on ``held``; the file itself is re-measured on ONNX
    Runtime (widened: its exact bfloat16 values, FP32 arithmetic)."""
    path = tmp_dir / artifact_name("onnx", "bf16")
    details = convert_bf16(fp32_path, path, held=held, max_psnr_drop=cfg.bf16_max_psnr_drop,
                           artifact_runner=lambda p: OnnxRuntimeRunner(p, name=p.name, precision="bf16"))
    return _entry(path, tmp_dir, manifest, "bf16", details)


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
    out = []
    for e, par, flag in zip(entries, results, gate_parity(results)):
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
    engine_backend, backend_why = resolve_engine_backend(cfg.backend)  # fails fast when a TensorRT is missing
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


def _auto_targets(cfg: ExportConfig, engine_backend: str) -> List[str]:
    """The targets ``--precision auto`` chooses for: the engine targets (TensorRT-RTX: --compute-capabilities;
    datacenter TensorRT: this GPU), or --compute-capabilities when no engine is built."""
    if engine_backend == "tensorrt":
        from lipt_export.runtime.trt import current_environment  # deferred: needs the GPU's TensorRT

        return [current_environment()["compute_capability"]]
    return list(cfg.engine.compute_capabilities)


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
    arch, out_root = prepared.arch, final_dir.parent

    def stale(path: Path) -> None:  # we hold the lock: its owner is a killed export
        logger.info(f"removed {path.name}, the temp folder of an export that was killed")

    try:
        # files dropped into the old export meanwhile are not lost either: checked again before the swap
        with staged_dir(final_dir, before_swap=lambda: check_target(final_dir, cfg.overwrite),
                        on_stale=stale) as tmp_dir:
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
                                              nodes=node_count(fp32_path), opset=_opset(fp32_path))]
            held = cfg.heldout(fp32_path, manifest.io.multiple_of) if cfg.bf16 or cfg.precision == "auto" else None
            if cfg.fp16:
                with stage("fp16"):
                    entries.append(fp16_stage(fp32_path, tmp_dir, manifest, cfg.fp16_options(), cfg.seed))
            if cfg.bf16:
                with stage("bf16"):
                    entries.append(bf16_stage(fp32_path, tmp_dir, manifest, cfg, held))
            for precision in ("int8", "fp8"):
                if getattr(cfg, precision):
                    with stage(precision):
                        entries.append(qdq_stage(precision, fp32_path, tmp_dir, manifest, cfg))
            auto = None
            if cfg.precision == "auto":
                with stage("auto"):
                    drops = precision_auto.measure_drops(held, {e.precision: tmp_dir / e.path for e in entries})
                    auto = precision_auto.choose(drops, _auto_targets(cfg, engine_backend), cfg.max_psnr_drop,
                                                 held.source, engine_backend)
                for line in precision_auto.summary_lines(auto):
                    logger.info(line)
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
            engine_info = {"backend": engine_backend, "why": backend_why}
            if engine_backend != "onnxruntime":
                with stage("engine"):
                    chosen = {t.compute_capability: t.precision for t in auto.targets} if auto else None
                    targets = engine_targets(engine_backend, cfg.engine, [e.precision for e in entries], chosen)
                    engines = build_engines_for_export(tmp_dir, entries, manifest, cfg.engine, parity_inputs,
                                                       reference, flavor=engine_backend, max_shape=max_shape,
                                                       claims=lambda e: precision_claims(tmp_dir / e.path, e),
                                                       targets=targets)
                    engine_info["skipped"] = targets.skipped_engines()
            manifest = replace(manifest.with_artifacts([*entries, *engines]), golden=golden,
                               runtime_choice=runtime_choice).with_export(
                engines=engine_info, timings_s={k: round(v, 3) for k, v in stage.timings.items()},
                opsets={e.path: e.opset for e in entries},
                **({"precision_auto": auto.to_dict()} if auto else {}))
            write_manifest(tmp_dir, manifest)
            write_text_atomic(tmp_dir / REPORT_NAME, render_report(manifest))
    except OSError as exc:
        if not disk_full(exc):
            raise
        done = ", ".join(stage.timings) or "none"
        raise ExportError(f"disk full while writing {exc.filename or out_root} ({exc.strerror}); stages finished: "
                          f"{done}; nothing was written to {final_dir} (the temp folder is removed): free space "
                          f"under {out_root} and export again") from None
    return ExportResult(out_dir=final_dir, manifest=replace(manifest, root=final_dir), timings=stage.timings,
                        parity=results)
