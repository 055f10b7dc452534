"""PSNR-Y / SSIM-Y of the eager model and of every artifact on an SR benchmark folder.

:func:`evaluate` takes runners (eager PyTorch, ONNX Runtime, tiled, ...) and a dataset folder and returns
``{"dataset", "scale", "lr_source", "results": [{"artifact", "precision", "psnr_y", "ssim_y", "images",
"delta_psnr_y", "seconds_per_image", "per_image"}]}``; metrics as in :mod:`lipt_export.validation.metrics`
(literature convention). :func:`run_eval` builds the runners from ``--model/--weights`` and ``--artifact``
paths (an export directory or its manifest.json expands to all of its ONNX artifacts).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from lipt_export.errors import EvalError
from lipt_export.fileio import sha256_file
from lipt_export.manifest import Manifest, versions
from lipt_export.models.io import UnitRangeIO
from lipt_export.models.loading import prepare_model
from lipt_export.models.registry import get_spec, resolve_variant
from lipt_export.report import format_table
from lipt_export.runtime.base import Runner
from lipt_export.runtime.eager import TorchRunner
from lipt_export.runtime.loader import onnx_runner, open_onnx_artifacts, tiling_for
from lipt_export.runtime.openvino import check_runtime
from lipt_export.runtime.tiling import TiledRunner, tiled
from lipt_export.tiling import POLICY_TILE
from lipt_export.validation.datasets import open_dataset
from lipt_export.validation.extras import parity_extras_for
from lipt_export.validation.metrics import sr_scores, to_uint8

EVAL_HEADER = ("artifact", "precision", "PSNR-Y dB", "SSIM-Y", "ΔPSNR dB", "s/image")


@dataclass
class EvalTarget:
    """A runner plus what the report says about it."""

    runner: Runner
    artifact: str
    precision: str
    kind: str  # pytorch | onnxruntime
    info: Dict[str, Any] = field(default_factory=dict)


def _as_target(r: Runner | EvalTarget) -> EvalTarget:
    if isinstance(r, EvalTarget):
        return r
    return EvalTarget(r, r.name, r.precision, "pytorch" if "Torch" in type(r).__name__ else type(r).__name__)


def run_sr(runner: Runner, lr_uint8: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 LR -> float32 HxWx3 SR on [0, 1] through the artifact I/O contract."""
    x = np.ascontiguousarray(lr_uint8.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255.0)
    y = runner.infer(x)
    return np.asarray(y[0]).transpose(1, 2, 0)


def evaluate(runners: Sequence[Runner | EvalTarget], dataset_dir: str | Path, scale: int, *,
             lr_dir: Optional[str | Path] = None, limit: Optional[int] = None, reference: Optional[str] = None,
             progress: bool = True) -> Dict[str, Any]:
    """Score every runner on the dataset; ``reference`` (default: the first runner) anchors ΔPSNR."""
    from tqdm import tqdm

    targets = [_as_target(r) for r in runners]
    if not targets:
        raise EvalError("nothing to evaluate: give at least one runner")
    names = [t.artifact for t in targets]
    if len(set(names)) != len(names):
        raise EvalError(f"artifact names must be unique, got {names}")
    data = open_dataset(dataset_dir, scale, lr_dir=lr_dir, limit=limit)
    per_image: Dict[str, List[Dict[str, Any]]] = {n: [] for n in names}
    seconds: Dict[str, float] = {n: 0.0 for n in names}
    bar = tqdm(total=len(data) * len(targets), desc=f"eval {data.name} x{scale}", unit="img", file=sys.stderr,
               disable=not progress, leave=False)
    try:
        for sample in data:
            want = sample.hr.shape[:2]
            for t in targets:
                bar.set_postfix_str(f"{sample.name} / {t.artifact}", refresh=False)
                t0 = time.perf_counter()
                sr = run_sr(t.runner, sample.lr)
                seconds[t.artifact] += time.perf_counter() - t0
                if sr.shape[:2] != want:
                    raise EvalError(f"{t.artifact} returned {sr.shape[0]}x{sr.shape[1]} for a "
                                     f"{sample.lr.shape[0]}x{sample.lr.shape[1]} LR image, expected "
                                     f"{want[0]}x{want[1]}; check --scale")
                if not np.isfinite(sr).all():
                    raise EvalError(f"{t.artifact} produced inf/NaN on {sample.name}")
                p, s = sr_scores(to_uint8(sr), sample.hr, scale)
                per_image[t.artifact].append({"name": sample.name, "psnr_y": p, "ssim_y": s})
                bar.update(1)
    finally:
        bar.close()
    ref = reference or names[0]
    results = []
    for t in targets:
        imgs = per_image[t.artifact]
        psnr = float(np.mean([i["psnr_y"] for i in imgs]))
        results.append({"artifact": t.artifact, "precision": t.precision, "kind": t.kind, "psnr_y": psnr,
                        "ssim_y": float(np.mean([i["ssim_y"] for i in imgs])), "images": len(imgs),
                        "seconds_per_image": seconds[t.artifact] / len(imgs), "per_image": imgs, **t.info})
    ref_psnr = next((r["psnr_y"] for r in results if r["artifact"] == ref), None)
    for r in results:
        r["delta_psnr_y"] = None if ref_psnr is None else r["psnr_y"] - ref_psnr
    return {"dataset": str(data.root), "dataset_name": data.name, "scale": scale, "lr_source": data.lr_source,
            "images": len(data), "reference": ref, "results": results}


def format_results(report: Dict[str, Any]) -> str:
    rows = []
    for r in report["results"]:
        delta = "ref" if r["artifact"] == report["reference"] else (
            "-" if r["delta_psnr_y"] is None else f"{r['delta_psnr_y']:+.5f}")
        rows.append([r["artifact"], r["precision"], f"{r['psnr_y']:.4f}", f"{r['ssim_y']:.4f}", delta,
                     f"{r['seconds_per_image']:.3f}"])
    return format_table(EVAL_HEADER, rows)


# -- building the runners from the command line ---------------------------------------------------------

def load_eager(model: str, variant: Optional[str], scale: int, weights: Optional[str], seed: int = 0,
               config_file: Optional[str] = None, options: Optional[Dict[str, Any]] = None):
    """(spec, architecture, deploy graph, weights info); the architecture is read from the checkpoint."""
    spec = get_spec(model)
    prepared = prepare_model(spec, variant, scale, weights, seed, config_file=config_file, options=options)
    return spec, prepared.arch, prepared.deploy, prepared.weights


def artifact_targets(paths: Sequence[str], model: str, scale: int, tile: Optional[int] = None,
                     weights_sha: Optional[str] = None, runtimes: Sequence[str] = ("onnxruntime",)
                     ) -> Tuple[List[EvalTarget], List[str]]:
    """Runners for ``paths`` (export dirs / manifest.json expand to all their ONNX artifacts), one per artifact
    and CPU runtime (an execution is numerically an artifact of its own: a bf16 run of the fp32 file is not the
    fp32 file), and notes (skipped engines, weight mismatches)."""
    for rt in runtimes:
        check_runtime(rt)
    targets: List[EvalTarget] = []
    notes: List[str] = []
    for raw in paths:
        arts, others = open_onnx_artifacts(raw)
        notes += [f"skipped {o}: evaluate it where it runs" for o in others]
        label, man = arts[0].path.parent.name, arts[0].manifest
        _check_artifact_model(Path(raw), man, model, scale)
        w = man.model.weights if man else {}
        if weights_sha and w.get("sha256") and w["sha256"] != weights_sha:
            notes.append(f"{label}: exported from different weights ({w.get('path')}) than --weights")
        for art, rt in ((a, r) for a in arts for r in runtimes):
            # no ONNX Runtime arena: several sessions over images of varying size would each keep their largest
            # run's memory
            runner = onnx_runner(art.path, rt, precision=art.precision, name=f"{label}/{art.path.name}",
                                 memory_arena=False)
            kind = runner.runtime  # for OpenVINO: the precision it compiled for
            name = f"{label}/{art.path.name}" + ("" if rt == "onnxruntime" else f"@{kind}")
            runner = tiled(runner, art.tiling, scale, tile, default_tile=POLICY_TILE)
            info = {"path": str(art.path), "runtime": kind}
            if isinstance(runner, TiledRunner):
                info["tile"] = runner.tile
            targets.append(EvalTarget(runner, name, art.precision, "onnxruntime" if rt == "onnxruntime" else
                                      "openvino", info))
    return targets, notes


def _check_artifact_model(path: Path, man: Optional[Manifest], model: str, scale: int) -> None:
    if man is None:
        return
    if man.model.name != model.lower():
        raise EvalError(f"artifact {path} is a '{man.model.name}' export but --model is '{model}'; pass "
                        f"--model {man.model.name}")
    if man.model.scale != scale:
        raise EvalError(f"artifact {path} upscales x{man.model.scale} but --scale is {scale}; pass "
                        f"--scale {man.model.scale}")


def extras_for(spec, deploy, targets: Sequence[EvalTarget], dataset_dir, scale: int, lr_dir=None,
               limit=None) -> None:
    """Adds the model's parity extras (SMSR: spatial-mask flips) on the dataset's LR images to each ONNX
    target's result info. An extra eager and ONNX pass per artifact."""
    extras = parity_extras_for(spec.name)
    if extras is None:
        return
    data = open_dataset(dataset_dir, scale, lr_dir=lr_dir, limit=limit)
    inputs = [np.ascontiguousarray(s.lr.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255.0)
              for s in data]
    for t in targets:
        if t.kind == "onnxruntime" and "path" in t.info:
            t.info.update(extras(deploy, t.info["path"], inputs))


def run_eval(model: str, variant: Optional[str], scale: int, weights: Optional[str], dataset: str,
             lr_dir: Optional[str] = None, artifacts: Sequence[str] = (), no_eager: bool = False,
             tile: Optional[int] = None, parity_extras: bool = False, limit: Optional[int] = None, seed: int = 0,
             config_file: Optional[str] = None, options: Optional[Dict[str, Any]] = None,
             runtimes: Sequence[str] = ("onnxruntime",)) -> Dict[str, Any]:
    """The eval command as a function: builds the eager reference and the artifact runners, scores them all.
    ``report["notes"]`` lists what the caller should tell the user (demo weights, skipped engines, ...)."""
    open_dataset(dataset, scale, lr_dir=lr_dir, limit=limit)  # fail on the data before loading anything
    if no_eager and not artifacts:
        raise EvalError("nothing to evaluate: --no-eager needs at least one --artifact")
    spec = get_spec(model)
    resolve_variant(spec, variant or spec.default_variant, scale)  # bad --variant/--scale: before any work
    weights_sha = sha256_file(weights) if weights and Path(weights).is_file() else None
    arts, notes = artifact_targets(artifacts, spec.name, scale, tile, weights_sha=weights_sha, runtimes=runtimes)
    deploy, info, arch = None, {"source": "none"}, None
    if not no_eager or parity_extras:
        spec, arch, deploy, info = load_eager(model, variant, scale, weights, seed, config_file, options)
    targets: List[EvalTarget] = []
    if not no_eager:
        if info["source"] != "checkpoint":
            notes.insert(0, "no --weights given; the eager model uses demo weights (scores are meaningless)")
        # the same tiling policy as the artifacts', so ΔPSNR measures the artifact, not the tiling
        eager = tiled(TorchRunner(UnitRangeIO(deploy, spec.rgb_range), name="eager"), tiling_for(spec, arch), scale,
                      tile, default_tile=POLICY_TILE)
        tile_info = {"tile": eager.tile} if isinstance(eager, TiledRunner) else {}
        targets.append(EvalTarget(eager, "eager (pytorch)", "fp32", "pytorch", {"weights": info, **tile_info}))
    targets.extend(arts)
    if parity_extras:
        extras_for(spec, deploy, targets, dataset, scale, lr_dir, limit)
    report = evaluate(targets, dataset, scale, lr_dir=lr_dir, limit=limit)
    report["model"] = {"name": spec.name, "variant": arch.variant if arch else variant, "scale": scale,
                       "weights": info, **({"architecture": arch.to_dict()} if arch else {})}
    report["versions"] = versions()
    report["notes"] = notes
    return report
