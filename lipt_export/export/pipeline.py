"""The export pipeline: model -> deploy graph -> ONNX -> simplified -> precision variants -> engine ->
validation -> manifest. Each stage is a plain function elsewhere; this module only composes them, times
them, and makes the result atomic (everything is written to a temp directory renamed on success).
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from lipt_export import manifest as mf
from lipt_export.export.onnx_export import DEFAULT_OPSET, ExportError, export_onnx, node_count
from lipt_export.export.simplify import simplify_onnx
from lipt_export.models.checkpoint import load_weights, read_state_dict
from lipt_export.models.io import UnitRangeIO
from lipt_export.models.registry import ModelSpec, build_model
from lipt_export.models.reparam import is_deploy, reparameterize_model
from lipt_export.runners import OnnxRuntimeRunner, TorchRunner
from lipt_export.validation import Parity, compare, natural_inputs, rel_l2

FP32_REL_L2_LIMIT = 1e-4
DEFAULT_PARITY_SIZES: Tuple[Tuple[int, int], ...] = ((64, 64), (37, 51))


@dataclass
class ExportConfig:
    model: str = "lipt"
    variant: Optional[str] = None
    scale: int = 4
    weights: Optional[str] = None
    out: str = "exports"
    name: Optional[str] = None  # output folder name; default <model>-<variant>-x<scale>
    opset: int = DEFAULT_OPSET
    dynamo: bool = False
    simplify: str = "auto"  # auto | onnxsim | onnxslim | none
    parity_sizes: Sequence[Tuple[int, int]] = DEFAULT_PARITY_SIZES
    parity_images: Optional[str] = None  # folder of images for parity inputs (default: shared calib set)
    seed: int = 0
    # precision variants
    fp16: bool = False
    fp16_io: bool = False
    int8: bool = False
    calib: Optional[str] = None
    calib_lr: bool = False
    calib_count: int = 32
    calib_size: int = 64
    calib_method: str = "minmax"
    max_psnr_drop: float = 0.10
    # engines
    backend: str = "onnxruntime"  # onnxruntime | tensorrt | auto
    engine_options: Dict[str, Any] = field(default_factory=dict)
    lint: bool = True


@dataclass
class ExportResult:
    out_dir: Path
    manifest: Dict[str, Any]
    timings: Dict[str, float]
    parity: List[Parity]


class Stopwatch:
    def __init__(self, log: Callable[[str], None]):
        self.timings: Dict[str, float] = {}
        self.log = log

    @contextmanager
    def stage(self, name: str):
        self.log(f"[{name}] ...")
        t0 = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - t0
        self.log(f"[{name}] done in {self.timings[name]:.2f}s")


def prepare_model(spec: ModelSpec, variant: str, scale: int, weights: Optional[str], seed: int
                  ) -> Tuple[Optional[torch.nn.Module], torch.nn.Module, Dict[str, Any]]:
    """Returns (training graph or None, deploy graph, weights description for the manifest)."""
    _, _, train = build_model(spec.name, variant, scale)
    label = f"{spec.name}-{variant} x{scale}"
    if weights:
        sd = spec.remap_checkpoint_keys(read_state_dict(weights))
        loaded, form = load_weights(train, sd, model_label=label,
                                    ignore=spec.ignored_checkpoint_keys)
        info = {"source": "checkpoint", "path": str(weights), "sha256": mf.sha256_file(weights), "form": form}
        if form == "deploy":
            return None, loaded, info
        train = loaded
    else:
        if spec.init_for_tests is not None:
            spec.init_for_tests(train, seed)
        info = {"source": "demo-init", "seed": seed,
                "note": "no --weights given: deterministic demo weights, for pipeline checks only"}
    return train, reparameterize_model(train), info


def reparam_check(train: torch.nn.Module, rgb_range: float, seed: int) -> float:
    """Train graph vs its deploy graph, both in float64 (fused in float64 too), on a natural input:
    proves the fusion algebra rather than measuring fp32 rounding."""
    import copy

    x = torch.from_numpy(natural_inputs([(32, 40)], seed=seed + 7)[0]).double() * rgb_range
    train64 = copy.deepcopy(train).double().eval()
    deploy64 = reparameterize_model(train64)
    with torch.no_grad():
        return rel_l2(deploy64(x).numpy(), train64(x).numpy())


def _default_log(msg: str) -> None:
    print(msg, flush=True)


def run_export(cfg: ExportConfig, log: Callable[[str], None] = _default_log) -> ExportResult:
    from lipt_export.models.registry import get_spec, resolve_variant

    spec = get_spec(cfg.model)
    variant = resolve_variant(spec, cfg.variant, cfg.scale)
    name = cfg.name or f"{spec.name}-{variant}-x{cfg.scale}"
    out_root = Path(cfg.out)
    final_dir = out_root / name
    if cfg.int8 and not cfg.calib:
        raise ExportError("INT8 needs representative images: pass --calib DIR (e.g. "
                          "../shared/datasets/calib_urban100_001-010)")
    engine_backend = _resolve_backend(cfg.backend)  # fails fast when TensorRT is asked for and missing
    if engine_backend == "tensorrt":
        from lipt_export.engines.shapes import parse_profile

        parse_profile(cfg.engine_options.get("shapes", ""), cfg.engine_options.get("batch", "1:1:1"))
    sw = Stopwatch(log)
    out_root.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=str(out_root)))
    try:
        with sw.stage("model"):
            train, deploy, weights_info = prepare_model(spec, variant, cfg.scale, cfg.weights, cfg.seed)
            if not is_deploy(deploy):
                raise ExportError("reparameterization left training branches in the deploy graph")
            reparam_err = reparam_check(train, spec.rgb_range, cfg.seed) if train is not None else None
        wrapped = UnitRangeIO(deploy, spec.rgb_range).eval()
        m = spec.size_multiple(variant)
        with sw.stage("onnx"):
            raw = tmp_dir / "model.raw.onnx"
            info = export_onnx(wrapped, raw, opset=cfg.opset, sample_hw=(max(64, m), max(64, m)),
                               dynamo=cfg.dynamo)
        with sw.stage("simplify"):
            fp32_path = tmp_dir / "model.onnx"
            if cfg.simplify == "none":
                shutil.copyfile(raw, fp32_path)
                simp = {"tool": "none", "nodes_before": node_count(raw), "nodes_after": node_count(raw)}
            else:
                s = simplify_onnx(raw, fp32_path, cfg.simplify)
                simp = {"tool": s.tool, "nodes_before": s.nodes_before, "nodes_after": s.nodes_after,
                        "note": s.note}
            raw.unlink()
        manifest = mf.new_manifest(
            model={"name": spec.name, "variant": variant, "scale": cfg.scale, "description": spec.description,
                   "params_deploy": sum(p.numel() for p in deploy.parameters()),
                   "native_rgb_range": spec.rgb_range, "weights": weights_info,
                   "reparam_rel_l2_fp64": reparam_err},
            io=mf.io_contract(cfg.scale, size_multiple=m, min_size=spec.min_size,
                              recommended_tile=spec.recommended_tile, tile_required=spec.tile_required,
                              # windowed models see several windows away: 8 windows of overlap keeps tiled
                              # output at fp32-noise level (docs/benchmarks.md, tiled upscaling)
                              tile_overlap=max(16, 8 * m) if m > 1 else 16),
            export={"opset": info.opset, "exporter": info.exporter, "simplifier": simp})
        mf.embed_onnx_metadata(fp32_path, manifest)
        artifacts: List[Tuple[Path, str, Dict[str, Any]]] = [(fp32_path, "fp32", {})]

        parity_inputs = natural_inputs(cfg.parity_sizes, cfg.parity_images, seed=cfg.seed)
        if cfg.fp16:
            with sw.stage("fp16"):
                from lipt_export.export.fp16 import convert_fp16

                path = tmp_dir / "model.fp16.onnx"
                extra = convert_fp16(fp32_path, path, calib_inputs=_calib_for_ranges(cfg, spec),
                                     keep_io_fp32=not cfg.fp16_io, log=log)
                mf.embed_onnx_metadata(path, manifest, {"precision": "fp16"})
                artifacts.append((path, "fp16", extra))
        if cfg.int8:
            with sw.stage("int8"):
                from lipt_export.export.int8 import quantize_int8

                path = tmp_dir / "model.int8.onnx"
                extra = quantize_int8(fp32_path, path, calib_dir=cfg.calib, calib_lr=cfg.calib_lr,
                                      count=cfg.calib_count, size=cfg.calib_size, method=cfg.calib_method,
                                      scale=cfg.scale, max_psnr_drop=cfg.max_psnr_drop,
                                      cache_dir=out_root / ".calib-cache", log=log)
                mf.embed_onnx_metadata(path, manifest, {"precision": "int8"})
                artifacts.append((path, "int8", extra))

        with sw.stage("parity"):
            reference = TorchRunner(wrapped, name="eager-deploy")
            candidates = [OnnxRuntimeRunner(p, name=p.name, precision=prec) for p, prec, _ in artifacts]
            results = compare(reference, candidates, parity_inputs)
            if train is not None:
                train_ref = TorchRunner(UnitRangeIO(train, spec.rgb_range), name="eager-train")
                results_train = compare(train_ref, candidates[:1], parity_inputs)
            else:
                results_train = []
            if spec.parity_extras is not None:
                for (path, _, _), par in zip(artifacts, results):
                    par.extra.update(spec.parity_extras(deploy, path, parity_inputs))
        fp32_par = results[0]
        if not fp32_par.finite or fp32_par.rel_l2 > FP32_REL_L2_LIMIT:
            raise ExportError(f"fp32 ONNX does not match the eager model: rel-L2 {fp32_par.rel_l2:.2e} > "
                              f"{FP32_REL_L2_LIMIT:.0e} (max |err| {fp32_par.max_abs:.2e}); no artifact written")
        for par in results[1:]:
            if not par.finite:
                raise ExportError(f"{par.artifact} produces inf/NaN on natural inputs; no artifact written")

        lint_results: Dict[str, Any] = {}
        if cfg.lint:
            with sw.stage("lint"):
                from lipt_export.export.lint import lint_onnx

                for path, _, _ in artifacts:
                    lint_results[path.name] = lint_onnx(path)

        engines: List[Dict[str, Any]] = []
        if engine_backend == "tensorrt":
            with sw.stage("engine"):
                from lipt_export.engines.tensorrt import build_engines_for_export

                engines = build_engines_for_export(tmp_dir, artifacts, manifest, cfg.engine_options,
                                                   parity_inputs, reference, log=log)

        for (path, prec, extra), par in zip(artifacts, results):
            entry = mf.artifact_entry(path, tmp_dir, fmt="onnx", precision=prec, nodes=node_count(path),
                                      parity=par.as_dict(), **extra)
            if prec == "fp32" and results_train:
                entry["parity_vs_train_graph"] = results_train[0].as_dict()
            if path.name in lint_results:
                entry["lint"] = lint_results[path.name].summary()
            manifest["artifacts"].append(entry)
        manifest["artifacts"].extend(engines)
        manifest["export"]["timings_s"] = {k: round(v, 3) for k, v in sw.timings.items()}
        mf.write_json_atomic(tmp_dir / mf.MANIFEST_NAME, manifest)
        (tmp_dir / "report.md").write_text(render_report(manifest))
        _replace_dir(tmp_dir, final_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return ExportResult(out_dir=final_dir, manifest=manifest, timings=sw.timings, parity=results)


def _calib_for_ranges(cfg: ExportConfig, spec: ModelSpec) -> List[np.ndarray]:
    """Inputs for measuring activation ranges (FP16 islands): the calibration images when given, else
    the default natural inputs, at a modest size."""
    size = max(cfg.calib_size, spec.size_multiple(cfg.variant or spec.default_variant))
    return natural_inputs([(size, size)] * 4, cfg.calib, seed=cfg.seed + 1)


def _resolve_backend(backend: str) -> str:
    if backend == "onnxruntime":
        return backend
    from lipt_export.engines import tensorrt_status

    ok, why = tensorrt_status()
    if backend == "tensorrt":
        if not ok:
            raise ExportError(why)
        return "tensorrt"
    if backend == "auto":
        return "tensorrt" if ok else "onnxruntime"
    raise ExportError(f"unknown backend '{backend}'; choose onnxruntime, tensorrt or auto")


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the finished temp dir into place; an older export of the same name is replaced."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{int(time.time())}")
        dst.rename(old)
    src.rename(dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _fmt_db(v: Any) -> str:
    return "-" if v is None else f"{v:.1f}"


def summary_rows(manifest: Dict[str, Any]) -> List[List[str]]:
    rows = []
    for a in manifest["artifacts"]:
        par = a.get("parity", {})
        rows.append([a["path"], a["precision"], str(a.get("nodes", "-")), f"{a['bytes'] / 1e6:.2f} MB",
                     "-" if not par else f"{par['rel_l2']:.1e}", _fmt_db(par.get("psnr_db")),
                     a.get("lint", {}).get("status", "-") if isinstance(a.get("lint"), dict) else "-"])
    return rows


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool = False) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    if markdown:
        lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
                 "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        lines += ["| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    else:
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)),
                 "  ".join("-" * w for w in widths)]
        lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


ARTIFACT_HEADER = ("artifact", "precision", "nodes", "size", "rel-L2", "PSNR dB", "lint")


def render_report(manifest: Dict[str, Any]) -> str:
    m, io, ex = manifest["model"], manifest["io"], manifest["export"]
    lines = [f"# {m['name']}-{m['variant']} x{m['scale']}", "",
             f"Exported {manifest['created']} with {ex['exporter']}, opset {ex['opset']}, simplifier "
             f"{ex['simplifier']['tool']} ({ex['simplifier']['nodes_before']} -> "
             f"{ex['simplifier']['nodes_after']} nodes).", "",
             f"Weights: {json.dumps(m['weights'])}", "",
             f"I/O: `{io['input']['name']}` float32 NCHW RGB [0,1] -> `{io['output']['name']}` x{io['scale']}, "
             f"any H/W (padded internally to a multiple of {io['size']['multiple_of']}).", ""]
    if m.get("reparam_rel_l2_fp64") is not None:
        lines += [f"Reparameterization (train vs deploy graph, float64): rel-L2 {m['reparam_rel_l2_fp64']:.2e}", ""]
    lines += ["## Artifacts (parity vs eager deploy graph, worst case over inputs)", "",
              format_table(ARTIFACT_HEADER, summary_rows(manifest), markdown=True), ""]
    for a in manifest["artifacts"]:
        if a.get("parity_vs_train_graph"):
            t = a["parity_vs_train_graph"]
            lines += [f"{a['path']} vs the eager *training* graph (before reparameterization): rel-L2 "
                      f"{t['rel_l2']:.1e}, max |err| {t['max_abs']:.1e}, PSNR {_fmt_db(t['psnr_db'])} dB", ""]
    sizes = {tuple(map(tuple, a["parity"]["sizes"])) for a in manifest["artifacts"] if a.get("parity")}
    if sizes:
        lines += [f"Parity input sizes (LR HxW): {', '.join(f'{h}x{w}' for h, w in sorted(sizes)[0])}", ""]
    for a in manifest["artifacts"]:
        if a.get("fp16_islands"):
            lines += [f"### FP32 islands in {a['path']}", "",
                      format_table(("node", "op", "observed max |x|"),
                                   [[i["node"], i["op"], f"{i['max_abs']:.3g}"] for i in a["fp16_islands"]],
                                   markdown=True), ""]
        if a.get("int8"):
            from lipt_export.export.int8 import report_lines

            lines += report_lines(a)
        if isinstance(a.get("lint"), dict) and a["lint"].get("findings"):
            lines += [f"### Lint findings for {a['path']}", "",
                      format_table(("severity", "node", "reason"),
                                   [[f["severity"], f["node"], f["reason"]] for f in a["lint"]["findings"]],
                                   markdown=True), ""]
    lines += ["## Stage timings", "",
              format_table(("stage", "seconds"), [[k, f"{v:.2f}"] for k, v in ex.get("timings_s", {}).items()],
                           markdown=True), ""]
    return "\n".join(lines)
