"""`lipt-export eval`: PSNR-Y / SSIM-Y of the eager model and of every artifact on an SR benchmark folder.

:func:`evaluate` takes runners (eager PyTorch, ONNX Runtime, tiled, ...) and a dataset folder and returns
``{"dataset", "scale", "lr_source", "results": [{"artifact", "precision", "psnr_y", "ssim_y", "images",
"delta_psnr_y", "seconds_per_image", "per_image"}]}``; metrics as in :mod:`lipt_export.metrics`
(literature convention). ``eval_command`` builds the runners from ``--model/--weights`` and ``--artifact``
paths (an export directory or its manifest.json expands to all of its ONNX artifacts).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import click
import numpy as np

from lipt_export.datasets import open_dataset
from lipt_export.metrics import sr_scores, to_uint8
from lipt_export.runners import Runner

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
        raise ValueError("nothing to evaluate: give at least one runner")
    names = [t.artifact for t in targets]
    if len(set(names)) != len(names):
        raise ValueError(f"artifact names must be unique, got {names}")
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
                    raise ValueError(f"{t.artifact} returned {sr.shape[0]}x{sr.shape[1]} for a "
                                     f"{sample.lr.shape[0]}x{sample.lr.shape[1]} LR image, expected "
                                     f"{want[0]}x{want[1]}; check --scale")
                if not np.isfinite(sr).all():
                    raise ValueError(f"{t.artifact} produced inf/NaN on {sample.name}")
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
    from lipt_export.export.pipeline import format_table

    rows = []
    for r in report["results"]:
        delta = "ref" if r["artifact"] == report["reference"] else (
            "-" if r["delta_psnr_y"] is None else f"{r['delta_psnr_y']:+.5f}")
        rows.append([r["artifact"], r["precision"], f"{r['psnr_y']:.4f}", f"{r['ssim_y']:.4f}", delta,
                     f"{r['seconds_per_image']:.3f}"])
    return format_table(EVAL_HEADER, rows)


# -- building the runners from the command line ---------------------------------------------------------

class EvalSetupError(ValueError):
    """Bad --weights/--artifact/--scale combination (one line)."""


def load_eager(model: str, variant: Optional[str], scale: int, weights: Optional[str], seed: int = 0):
    """(spec, variant, deploy graph, weights info). A checkpoint that does not fit the scale says which
    --scale it fits."""
    from lipt_export.export.pipeline import prepare_model
    from lipt_export.models.checkpoint import CheckpointError
    from lipt_export.models.registry import get_spec, resolve_variant

    spec = get_spec(model)
    variant = resolve_variant(spec, variant, scale)
    try:
        _, deploy, info = prepare_model(spec, variant, scale, weights, seed)
    except CheckpointError as exc:
        hint = _fitting_scale(spec, variant, scale, weights) if weights and "misshaped" in str(exc) else None
        msg = str(exc).splitlines()[0]
        raise EvalSetupError(msg + (f" (this checkpoint fits --scale {hint})" if hint else "")) from None
    return spec, variant, deploy, info


def _fitting_scale(spec, variant: str, scale: int, weights: str) -> Optional[int]:
    """The other scale of the model family the checkpoint loads into, if any (error path only)."""
    from lipt_export.models.checkpoint import load_weights, read_state_dict
    from lipt_export.models.registry import build_model

    sd = spec.remap_checkpoint_keys(read_state_dict(weights))
    for s in spec.scales:
        if s == scale:
            continue
        try:
            load_weights(build_model(spec.name, variant, s)[2], sd, ignore=spec.ignored_checkpoint_keys)
            return s
        except Exception:  # noqa: BLE001 - any failure just means "not this scale"
            continue
    return None


def _tiled(runner: Runner, tiling: Dict[str, Any], scale: int, multiple_of: int, tile: Optional[int]
           ) -> Tuple[Runner, Optional[int]]:
    """Wrap in a TiledRunner when ``tile`` > 0, or when ``tile`` is None and tiling is required."""
    size = tile if tile is not None else (int(tiling.get("recommended_tile") or 0) if tiling.get("required") else 0)
    if not size:
        return runner, None
    from lipt_export.tiling import TiledRunner

    tiled = TiledRunner(runner, scale=scale, tile=size, overlap=int(tiling.get("overlap", 16)),
                        multiple_of=multiple_of)
    return tiled, size


def artifact_targets(paths: Sequence[str], model: str, scale: int, tile: Optional[int] = None,
                     weights_sha: Optional[str] = None) -> Tuple[List[EvalTarget], List[str]]:
    """ONNX runners for ``paths`` (export dirs / manifest.json expand to all their ONNX artifacts) and
    notes (skipped engines, weight mismatches)."""
    from lipt_export.runners import OnnxRuntimeRunner
    from lipt_export.serving import ArtifactError, open_onnx_artifacts

    targets: List[EvalTarget] = []
    notes: List[str] = []
    for raw in paths:
        try:
            arts, others = open_onnx_artifacts(raw)
        except ArtifactError as exc:
            raise EvalSetupError(str(exc)) from None
        notes += [f"skipped {o}: evaluate it where it runs" for o in others]
        label, man = arts[0].path.parent.name, arts[0].manifest
        _check_artifact_model(Path(raw), man, model, scale)
        w = man.get("model", {}).get("weights", {}) if man else {}
        if weights_sha and w.get("sha256") and w["sha256"] != weights_sha:
            notes.append(f"{label}: exported from different weights ({w.get('path')}) than --weights")
        for art in arts:
            runner = OnnxRuntimeRunner(art.path, name=f"{label}/{art.path.name}", precision=art.precision)
            runner, tiled = _tiled(runner, art.tiling, scale, art.multiple_of, tile)
            info = {"path": str(art.path)}
            if tiled:
                info["tile"] = tiled
            targets.append(EvalTarget(runner, f"{label}/{art.path.name}", art.precision, "onnxruntime", info))
    return targets, notes


def _check_artifact_model(path: Path, man: Dict[str, Any], model: str, scale: int) -> None:
    m = (man or {}).get("model", {})
    if m.get("name") and m["name"] != model.lower():
        raise EvalSetupError(f"artifact {path} is a '{m['name']}' export but --model is '{model}'; pass "
                             f"--model {m['name']}")
    if m.get("scale") and int(m["scale"]) != scale:
        raise EvalSetupError(f"artifact {path} upscales x{m['scale']} but --scale is {scale}; pass "
                             f"--scale {m['scale']}")


def extras_for(spec, deploy, targets: Sequence[EvalTarget], dataset_dir, scale: int, lr_dir=None,
               limit=None) -> None:
    """Adds the model's parity extras (SMSR: spatial-mask flips) on the dataset's LR images to each ONNX
    target's result info. An extra eager and ONNX pass per artifact."""
    if spec.parity_extras is None:
        return
    data = open_dataset(dataset_dir, scale, lr_dir=lr_dir, limit=limit)
    inputs = [np.ascontiguousarray(s.lr.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255.0)
              for s in data]
    for t in targets:
        if t.kind == "onnxruntime" and "path" in t.info:
            t.info.update(spec.parity_extras(deploy, t.info["path"], inputs))


@click.command("eval")
@click.option("--model", "-m", default="lipt", show_default=True, help="Model family of the weights/artifacts.")
@click.option("--variant", "-v", default=None, help="Model variant (default: the family's default).")
@click.option("--scale", "-s", default=4, show_default=True, type=int, help="Upscaling factor.")
@click.option("--weights", "-w", default=None, type=click.Path(),
              help="Checkpoint for the eager reference; without it, deterministic demo weights (scores meaningless).")
@click.option("--dataset", "-d", required=True, type=click.Path(),
              help="Folder with HR/ and optionally LR_bicubic/X{scale}/ (else LR is made with MATLAB-style imresize).")
@click.option("--lr-dir", default=None, type=click.Path(), help="LR folder instead of DATASET/LR_bicubic/X{scale}.")
@click.option("--artifact", "-a", "artifacts", multiple=True, type=click.Path(),
              help="Export directory, manifest.json or .onnx (repeatable); a directory expands to all its ONNX files.")
@click.option("--no-eager", is_flag=True, help="Skip the eager PyTorch reference.")
@click.option("--tile", default=None, type=int,
              help="LR tile size (0 = whole images). Default: tiled only when the model requires it (ESRT).")
@click.option("--parity-extras", is_flag=True,
              help="Also compute model-specific parity figures on the dataset (SMSR: spatial-mask flips).")
@click.option("--limit", default=None, type=int, help="Only the first N images (sorted by name).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the demo weights.")
@click.option("--json", "json_path", default=None, type=click.Path(), help="Write the results as JSON here.")
def eval_command(model, variant, scale, weights, dataset, lr_dir, artifacts, no_eager, tile, parity_extras,
                 limit, seed, json_path):
    """PSNR-Y/SSIM-Y of the eager model and of each artifact on an SR benchmark folder."""
    from lipt_export.cli import USER_ERRORS, fail

    try:
        report = _eval(model, variant, scale, weights, dataset, lr_dir, artifacts, no_eager, tile, parity_extras,
                       limit, seed)
    except USER_ERRORS as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    click.echo(format_results(report))
    extra_cols = [r for r in report["results"] if "mask_flips" in r]
    for r in extra_cols:
        click.echo(f"  {r['artifact']}: spatial-mask flips vs eager {r['mask_flips']} of {r['mask_pixels']} pixels")
    if json_path:
        from lipt_export.manifest import write_json_atomic

        write_json_atomic(json_path, report)
        click.echo(f"results: {json_path}")


def _eval(model, variant, scale, weights, dataset, lr_dir, artifacts, no_eager, tile, parity_extras, limit, seed
          ) -> Dict[str, Any]:
    from lipt_export import manifest as mf
    from lipt_export.models.io import UnitRangeIO
    from lipt_export.models.registry import get_spec, resolve_variant
    from lipt_export.runners import TorchRunner

    open_dataset(dataset, scale, lr_dir=lr_dir, limit=limit)  # fail on the data before loading anything
    if no_eager and not artifacts:
        raise EvalSetupError("nothing to evaluate: --no-eager needs at least one --artifact")
    spec = get_spec(model)
    variant = resolve_variant(spec, variant, scale)
    weights_sha = mf.sha256_file(weights) if weights and Path(weights).is_file() else None
    arts, notes = artifact_targets(artifacts, spec.name, scale, tile, weights_sha=weights_sha)
    deploy, info = None, {"source": "none"}
    if not no_eager or parity_extras:
        spec, variant, deploy, info = load_eager(model, variant, scale, weights, seed)
    targets: List[EvalTarget] = []
    if not no_eager:
        if info["source"] != "checkpoint":
            click.echo("lipt-export: note: no --weights given; the eager model uses demo weights (scores are "
                       "meaningless)", err=True)
        eager = TorchRunner(UnitRangeIO(deploy, spec.rgb_range), name="eager")
        tiling = {"required": spec.tile_required, "recommended_tile": spec.recommended_tile, "overlap": 16}
        eager, tiled = _tiled(eager, tiling, scale, spec.size_multiple(variant), tile)
        targets.append(EvalTarget(eager, "eager (pytorch)", "fp32", "pytorch",
                                  {"weights": info, **({"tile": tiled} if tiled else {})}))
    targets.extend(arts)
    for note in notes:
        click.echo(f"lipt-export: note: {note}", err=True)
    if parity_extras:
        extras_for(spec, deploy, targets, dataset, scale, lr_dir, limit)
    report = evaluate(targets, dataset, scale, lr_dir=lr_dir, limit=limit)
    report["model"] = {"name": spec.name, "variant": variant, "scale": scale, "weights": info}
    report["versions"] = mf.versions()
    return report
