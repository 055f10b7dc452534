"""TensorRT engines from the precision-carrying ONNX artifacts, built with polygraphy's loaders, for either
TensorRT (datacenter, needs its GPU) or TensorRT-RTX (ahead of time for chosen compute capabilities, no GPU).

Nothing here imports TensorRT at module level; :func:`lipt_export.runtime.trt.select_tensorrt` picks the module.

* Networks are strongly typed (the only mode in TensorRT 11 and TensorRT-RTX): the FP16 and INT8 (Q/DQ) ONNX
  files carry their precision, no builder precision flags are used.
* Each ONNX is parsed once with a logger that keeps the parser's errors and warnings (they go into the
  manifest; an error fails the export), then audited (:mod:`lipt_export.engines.audit`), then built.
* One optimization profile from ``--shapes``/``--batch``; the max shape is checked against the 2^31-element
  limit on the fp32 ONNX before any build (:mod:`lipt_export.engines.shapes`).
* ``model.<precision>.engine`` is the plan exactly as TensorRT serialized it (trtexec, Triton and C++ load it
  as is); everything else lives in the manifest entry, which loading checks.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from lipt_export.catalog import (COMPUTE_CAPABILITIES, ENGINE_BATCH, ENGINE_OPT_LEVEL, ENGINE_WORKSPACE_GIB,
                                 EXPORT_BACKENDS, RTX_INT8_NOTE, artifact_name, precision_skip_reason)
from lipt_export.engines.audit import audit_network, audit_summary, cross_check
from lipt_export.engines.shapes import (DEFAULT_SHAPES, ElementReport, check_max_shape, check_profile_fits,
                                        default_shapes, parse_profile)
from lipt_export.errors import EngineError
from lipt_export.fileio import save_atomic, sha256_file
from lipt_export.manifest import ArtifactEntry, Manifest, ProfileSpec
from lipt_export.models.registry import ModelSpec
from lipt_export.runtime.base import Runner
from lipt_export.runtime.ort import OnnxRuntimeRunner
from lipt_export.runtime.trt import (current_environment, load_engine_runner, require_tensorrt, select_tensorrt,
                                     tensorrt_rtx_status, tensorrt_status)
from lipt_export.validation.parity import compare, psnr_parity_ok

logger = logging.getLogger(__name__)
FLAVOR_LABELS = {"tensorrt": "TensorRT", "tensorrt-rtx": "TensorRT-RTX"}

# Ampere (RTX 30xx, A-series), Ada (RTX 40xx, L4/L40), Blackwell consumer (RTX 50xx): the cards TensorRT-RTX
# targets today (catalog.COMPUTE_CAPABILITIES). Each extra capability adds its kernels to the plan.


def engine_parity_ok(engine_psnr_db: float, onnx_psnr_db: float, finite: bool = True) -> bool:
    """An engine must stay within 1 dB of the ONNX it came from (both against the eager model)."""
    return psnr_parity_ok(engine_psnr_db, onnx_psnr_db, finite)


def parse_capabilities(text: str | Sequence[str]) -> Tuple[str, ...]:
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if not items or any(not re.fullmatch(r"\d+\.\d+", t) for t in items):
        raise EngineError(f"--compute-capabilities '{text}' must be MAJOR.MINOR values, e.g. "
                          f"{','.join(COMPUTE_CAPABILITIES)}")
    return tuple(dict.fromkeys(items))


@dataclass(frozen=True)
class EngineOptions:
    """How engines are built; the defaults are the CLI's defaults (validated by :meth:`validate`)."""

    shapes: Optional[str] = None  # LR MINxMIN:OPTxOPT:MAXxMAX; None: the model family's default (for_model)
    batch: str = ENGINE_BATCH
    workspace_gib: float = ENGINE_WORKSPACE_GIB
    builder_opt_level: int = ENGINE_OPT_LEVEL
    timing_cache: Optional[str] = None
    compute_capabilities: Tuple[str, ...] = field(default=COMPUTE_CAPABILITIES)  # TensorRT-RTX targets

    def profile(self) -> ProfileSpec:
        return parse_profile(self.shapes or DEFAULT_SHAPES, self.batch)

    def for_model(self, spec: ModelSpec) -> "EngineOptions":
        """``shapes`` as given, else the family's default from its tile policy
        (:func:`lipt_export.engines.shapes.default_shapes`; inputs are tiled/padded to the profile when served)."""
        return self if self.shapes is not None else replace(self, shapes=default_shapes(spec.name))

    def check_fits(self, model: str, scale: int) -> None:
        """The profile (``shapes`` or the family's default) parses and its max shape can build for this family;
        from the catalog alone, so before any model work."""
        check_profile_fits(model, scale, parse_profile(self.shapes or default_shapes(model), self.batch))

    def validate(self, flavor: str) -> None:
        """Everything checkable before any work: the profile, and for TensorRT-RTX the targets."""
        self.profile()
        if flavor == "tensorrt-rtx":
            check_capabilities(select_tensorrt(flavor), self.compute_capabilities)

    def as_dict(self):
        return asdict(self)


def resolve_engine_backend(backend: str) -> Tuple[str, str]:
    """(engine backend this machine will use, why) for ``--backend``. Fails at once when a TensorRT is asked for
    and missing."""
    if backend not in EXPORT_BACKENDS:
        raise EngineError(f"unknown backend '{backend}'; choose one of {', '.join(EXPORT_BACKENDS)}")
    if backend == "onnxruntime":
        return backend, "--backend onnxruntime: ONNX artifacts only"
    trt_ok, trt_why = tensorrt_status()
    rtx_ok, rtx_why = tensorrt_rtx_status()
    if backend == "tensorrt":
        if not trt_ok:
            raise EngineError(trt_why)
        return backend, "--backend tensorrt: TensorRT with this machine's GPU"
    if backend == "tensorrt-rtx":
        if not rtx_ok:
            raise EngineError(rtx_why)
        return backend, "--backend tensorrt-rtx: TensorRT-RTX, ahead of time"
    if trt_ok:
        return "tensorrt", "auto: TensorRT and a CUDA GPU are available"
    if rtx_ok:
        return "tensorrt-rtx", "auto: no datacenter TensorRT with a CUDA GPU here; TensorRT-RTX builds ahead of time"
    return "onnxruntime", "auto: neither TensorRT with a GPU nor TensorRT-RTX here; ONNX artifacts only"


@dataclass
class ParsedNetwork:
    builder: Any
    network: Any
    parser: Any
    errors: List[str]
    warnings: List[str]


_CAPTURE: Dict[str, Any] = {}


def _capture_logger(trt):
    """One logger per TensorRT module and process: TensorRT keeps the first logger any builder was created
    with and ignores later ones, so parse messages are read from this one (cleared before each parse)."""
    if trt.__name__ not in _CAPTURE:
        class _Capture(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.messages: List[Tuple[Any, str]] = []

            def log(self, severity, msg):
                self.messages.append((severity, msg))

        _CAPTURE[trt.__name__] = _Capture()
    return _CAPTURE[trt.__name__]


def parse_onnx(trt, onnx_path: Path, strongly_typed_flag: bool) -> ParsedNetwork:
    """Parse with TensorRT's own ONNX parser, keeping its errors and warnings."""
    log = _capture_logger(trt)
    log.messages.clear()
    builder = trt.Builder(log)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed_flag else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log)
    ok = parser.parse_from_file(str(onnx_path))
    errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
    severe = (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR)
    errors += [m for s, m in log.messages if s in severe and m not in errors]
    if not ok and not errors:
        errors = ["the parser rejected the model without a message"]
    warnings = [m for s, m in log.messages if s == trt.ILogger.Severity.WARNING and "logger passed into" not in m]
    return ParsedNetwork(builder, network, parser, errors, warnings)


def parser_findings(onnx_path: Path) -> Optional[Dict[str, List[str]]]:
    """TensorRT-RTX's parser verdict on ``onnx_path`` ({"errors", "warnings"}), or None when it is not installed:
    the lint's oracle (no GPU needed)."""
    if not tensorrt_rtx_status()[0]:
        return None
    parsed = parse_onnx(select_tensorrt("tensorrt-rtx"), onnx_path, strongly_typed_flag=False)
    return {"errors": parsed.errors, "warnings": parsed.warnings}


def _build_plan(flavor: str, parsed: ParsedNetwork, profile: ProfileSpec, input_name: str, options: EngineOptions,
                timing_cache: Optional[Path]) -> bytes:
    """Build the serialized plan through polygraphy's loaders."""
    trt = select_tensorrt(flavor)
    from polygraphy.backend.trt import EngineBytesFromNetwork, Profile
    from polygraphy.logger import G_LOGGER

    prof = Profile().add(input_name, min=profile.shape("min"), opt=profile.shape("opt"), max=profile.shape("max"))
    cache = str(timing_cache) if timing_cache else None
    common = dict(profiles=[prof], builder_optimization_level=options.builder_opt_level,
                  load_timing_cache=cache if cache and Path(cache).is_file() else None)
    if flavor == "tensorrt-rtx":
        from polygraphy.backend.tensorrt_rtx import CreateConfigRTX

        # No workspace limit: building ahead of time, TensorRT-RTX reserves a workspace-sized host buffer
        # (ESRT with a 4 GiB limit: "OutOfMemory, requested 4299136516 bytes" on this 24 GiB machine).
        caps = [tuple(int(v) for v in c.split(".")) for c in options.compute_capabilities]
        config = CreateConfigRTX(compute_capabilities=caps, **common)
    else:
        from polygraphy.backend.trt import CreateConfig

        config = CreateConfig(memory_pool_limits={trt.MemoryPoolType.WORKSPACE: int(options.workspace_gib * (1 << 30))},
                              **common)
    from polygraphy.exception import PolygraphyException

    log = _capture_logger(trt)
    try:
        with G_LOGGER.verbosity(G_LOGGER.ERROR):
            plan = EngineBytesFromNetwork((parsed.builder, parsed.network, parsed.parser), config=config,
                                          save_timing_cache=cache)()
    except PolygraphyException:
        plan = None
    if plan is None:
        severe = (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR)
        errors = [" ".join(m.split())[:300] for sv, m in log.messages if sv in severe]
        raise EngineError(f"{FLAVOR_LABELS.get(flavor, flavor)} could not build the engine: "
                          f"{errors[-1] if errors else 'no message'}")
    return bytes(plan)


def check_capabilities(trt, capabilities: Sequence[str]) -> Tuple[str, ...]:
    """The targets, each one this TensorRT-RTX can build for."""
    caps = parse_capabilities(capabilities)
    missing = [c for c in caps if not hasattr(trt.ComputeCapability, "SM" + c.replace(".", ""))]
    if missing:
        have = sorted(n[2:-1] + "." + n[-1] for n in dir(trt.ComputeCapability) if re.fullmatch(r"SM\d+", n))
        raise EngineError(f"TensorRT-RTX {trt.__version__} cannot target compute capability {', '.join(missing)}; "
                          f"choose from {', '.join(have)}")
    return caps


def _targets(flavor: str, options: EngineOptions, trt) -> Dict[str, Any]:
    """What the plan is tied to: TensorRT-RTX: the compute capabilities built for; TensorRT: this GPU."""
    if flavor == "tensorrt-rtx":
        caps = check_capabilities(trt, options.compute_capabilities)
        return {"runtime": "tensorrt-rtx", "tensorrt_version": trt.__version__, "compute_capabilities": list(caps)}
    env = current_environment()
    return {"runtime": "tensorrt", **env, "compute_capabilities": [env["compute_capability"]]}


@dataclass
class EngineTargets:
    """Per precision: the compute capabilities its engine is built for, and those asked for but skipped, with why
    (a GPU that cannot run the precision, or ``--precision auto`` chose another precision for it)."""

    build: Dict[str, List[str]]
    skipped: Dict[str, List[Dict[str, str]]]

    def skipped_engines(self) -> List[Dict[str, Any]]:
        """Precisions with no engine at all: every target skipped."""
        return [{"precision": p, "compute_capabilities": [x["compute_capability"] for x in why],
                 "why": "; ".join(dict.fromkeys(x["why"] for x in why))}
                for p, why in self.skipped.items() if not self.build.get(p)]


def engine_targets(flavor: str, options: EngineOptions, precisions: Sequence[str],
                   chosen: Optional[Mapping[str, str]] = None) -> EngineTargets:
    """Which targets each precision's engine is built for: TensorRT-RTX's ``--compute-capabilities`` (datacenter
    TensorRT: this GPU), minus those that cannot run the precision (catalog.precision_skip_reason) and, with
    ``chosen`` (compute capability -> precision, from ``--precision auto``), those that chose another precision."""
    caps = list(options.compute_capabilities) if flavor == "tensorrt-rtx" else \
        [current_environment()["compute_capability"]]
    build: Dict[str, List[str]] = {}
    skipped: Dict[str, List[Dict[str, str]]] = {}
    for precision in precisions:
        for cc in caps:
            why = precision_skip_reason(cc, precision)
            if why is None and chosen is not None and chosen.get(cc, precision) != precision:
                why = f"--precision auto chose {chosen[cc]} for {cc}"
            if why is None:
                build.setdefault(precision, []).append(cc)
            else:
                skipped.setdefault(precision, []).append({"compute_capability": cc, "why": why})
    return EngineTargets(build, skipped)


def build_engines_for_export(root: Path, onnx_entries: Sequence[ArtifactEntry], manifest: Manifest,
                             options: EngineOptions, parity_inputs: Sequence[np.ndarray],
                             reference_runner: Runner, flavor: str = "tensorrt",
                             claims: Optional[Callable[[ArtifactEntry], Mapping[str, Any]]] = None,
                             max_shape: Optional[ElementReport] = None,
                             targets: Optional[EngineTargets] = None) -> List[ArtifactEntry]:
    """Called by the export pipeline with the finished ONNX artifacts (paths relative to ``root``): parse, audit
    (cross-checked against ``claims(entry)``: what the precision stages recorded), build one engine each for the
    targets ``targets`` gives its precision (default: all; a precision with none is not built), and validate it
    against the eager reference where it can run here. ``max_shape``: the fp32 graph's 2^31 check for this profile
    when the caller already ran it. Returns the engines' manifest entries."""
    if flavor == "tensorrt":
        require_tensorrt()
    else:
        ok, why = tensorrt_rtx_status()
        if not ok:
            raise EngineError(why)
    trt = select_tensorrt(flavor)
    profile = options.profile()
    input_name = manifest.io.input_name
    fp32 = next(Path(root) / e.path for e in onnx_entries if e.precision == "fp32")
    report = max_shape or check_max_shape(fp32, profile)  # before any build: minutes saved, clear message
    logger.info(f"[engine] {flavor} {trt.__version__}; profile {profile.as_dict(input_name)}; largest tensor at max "
                f"shape: {report.tensor} {report.largest:,} elements")
    # Timing caches are no-ops in TensorRT-RTX (deprecated since 1.2; using one only adds warnings).
    cache = None if flavor == "tensorrt-rtx" else Path(options.timing_cache or (Path(root).parent / ".trt-timing.cache"))
    entries: List[ArtifactEntry] = []
    for source in onnx_entries:
        caps = targets.build.get(source.precision, []) if targets is not None else None
        skipped = targets.skipped.get(source.precision, []) if targets is not None else []
        for x in skipped:
            logger.info(f"[engine] {source.precision} not built for {x['compute_capability']}: {x['why']}")
        if caps is not None and not caps:
            continue
        these = replace(options, compute_capabilities=tuple(caps)) if caps is not None else options
        target_info = _targets(flavor, these, trt)
        onnx_path = Path(root) / source.path
        engine_path = Path(root) / artifact_name("tensorrt", source.precision)
        parsed = parse_onnx(trt, onnx_path, strongly_typed_flag=flavor == "tensorrt")
        if parsed.errors:
            raise EngineError(f"TensorRT's parser rejects {onnx_path.name}: {parsed.errors[0]}")
        audit = audit_network(trt, parsed.network)
        if claims is not None:
            cross_check(onnx_path.name, audit, claims(source))
        logger.info(f"[engine] building {engine_path.name} from {onnx_path.name} for "
                    f"{', '.join(target_info['compute_capabilities'])}")
        t0 = time.perf_counter()
        plan = _build_plan(flavor, parsed, profile, input_name, these, cache)
        seconds = time.perf_counter() - t0
        log = _capture_logger(trt)  # parse + build messages of this network
        build_warnings = [m for sv, m in log.messages if sv == trt.ILogger.Severity.WARNING
                          and m not in parsed.warnings and "logger passed into" not in m]
        save_atomic(engine_path, lambda tmp: Path(tmp).write_bytes(plan))
        entry = ArtifactEntry.for_file(
            engine_path, root, fmt="tensorrt", precision=source.precision, source_onnx=onnx_path.name,
            source_onnx_sha256=sha256_file(onnx_path), profile=profile.as_dict(input_name), **target_info,
            targets_skipped=skipped,
            builder={"strongly_typed": True, "workspace_gib": options.workspace_gib,
                     "builder_opt_level": options.builder_opt_level, "timing_cache": cache.name if cache else None,
                     "polygraphy_loaders": True},
            build_s=round(seconds, 2), parser={"errors": parsed.errors, "warnings": parsed.warnings},
            build_warnings=build_warnings,
            precision_audit=audit_summary(audit, source.precision),
            **({"note": RTX_INT8_NOTE} if flavor == "tensorrt-rtx" and source.precision == "int8" else {}),
            **({"fp16_io": source.io_dtype} if source.io_dtype != "float32" else {}))
        entry = entry.with_details(parity=_engine_parity(flavor, engine_path, entry, manifest, onnx_path, source,
                                                         parity_inputs, reference_runner))
        logger.info(f"[engine] {engine_path.name}: {seconds:.1f}s build, {engine_path.stat().st_size / 1e6:.1f} MB, "
                    f"compute layers {audit['by_precision']}")
        entries.append(entry)
    return entries


def _engine_parity(flavor: str, engine_path: Path, entry: ArtifactEntry, manifest: Manifest, onnx_path: Path,
                   source: ArtifactEntry, parity_inputs, reference_runner) -> Any:
    """Parity against the eager model where the engine runs here (TensorRT with its GPU); a TensorRT-RTX plan
    built ahead of time says where to check it."""
    if flavor == "tensorrt-rtx":
        caps = ", ".join(entry.engine.compute_capabilities)
        return (f"pending: needs a GPU with compute capability in [{caps}]; run lipt-export verify on it")
    runner = load_engine_runner(engine_path, entry, manifest)
    onnx_runner = OnnxRuntimeRunner(onnx_path, name=onnx_path.name, precision=source.precision)
    onnx_par, eng_par = compare(reference_runner, [onnx_runner, runner], parity_inputs)
    runner.runner.close()  # free GPU memory before the next build
    if not engine_parity_ok(eng_par.psnr_db, onnx_par.psnr_db, eng_par.finite):
        raise EngineError(f"{engine_path.name} does not match the eager model: PSNR {eng_par.psnr_db:.1f} dB vs "
                          f"{onnx_par.psnr_db:.1f} dB for {onnx_path.name}; no artifact written")
    return eng_par.as_dict()
