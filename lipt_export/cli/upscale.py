"""`lipt-export upscale ARTIFACT INPUT OUTPUT`: upscale an image or a folder of images, tiled (the work is
done by :mod:`lipt_export.runtime.upscale`)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click
from tqdm import tqdm

from lipt_export.catalog import CPU_RUNTIMES, PRECISIONS, SERVING_BACKENDS
from lipt_export.errors import LiptExportError, UpscaleError
from lipt_export.fileio import disk_full
from lipt_export.manifest import demo_weights_warning
from lipt_export.runtime.loader import open_artifact
from lipt_export.runtime.resolve import resolve
from lipt_export.runtime.upscale import plan_outputs, remove_stale_temps, upscale_file
from lipt_export.tiling import DEFAULT_TILE
from lipt_export.validation.runtime_choice import measure_artifact


@click.command("upscale")
@click.argument("artifact", type=click.Path())
@click.argument("input_path", metavar="INPUT", type=click.Path())
@click.argument("output_path", metavar="OUTPUT", type=click.Path())
@click.option("--precision", default=None, type=click.Choice(PRECISIONS),
              help="Artifact precision when ARTIFACT is an export directory (default fp32).")
@click.option("--backend", default="auto", show_default=True, type=click.Choice(SERVING_BACKENDS),
              help="auto = the TensorRT engine when the export has one and TensorRT works, else ONNX Runtime.")
@click.option("--tile", default=None, type=int, help="LR tile size in pixels; 0 = whole image (default: the "
              f"manifest's recommended tile when the model requires tiling, else {DEFAULT_TILE}; smaller images run "
              "whole). Memory is bounded by the tile: tiles are summed in a temp file beside the output (PNG/.npy outputs "
              "are streamed from it).")
@click.option("--overlap", default=None, type=int, help="LR pixels shared by neighbouring tiles (default: the "
              "manifest's, at least 8 windows for windowed models, e.g. 64 for LIPT).")
@click.option("--alpha", "alpha_mode", default="bicubic", show_default=True, type=click.Choice(["bicubic", "model"]),
              help="How the alpha channel is upscaled.")
@click.option("--format", "fmt", default=None, help="Output format for folders (png, jpg, webp, tif, npy).")
@click.option("--threads", default=None, type=int, help="ONNX Runtime threads (default: all cores, at most 8).")
@click.option("--runtime", default="auto", show_default=True,
              type=click.Choice(["auto", *CPU_RUNTIMES]),
              help="CPU runtime for ONNX artifacts. auto: the fastest execution of the artifact within its "
                   "accuracy budget, as measured at export on this machine (else measured now); it says which. "
                   "Within budget: the file's own numerics (ONNX Runtime, OpenVINO f32), or bf16 (CPUs that "
                   "compile it) within 0.01 dB PSNR-Y, or OpenVINO's INT8 kernels within the export's INT8 "
                   "budget. Named runtimes run as asked (a CPU without bf16 runs f32 and says so).")
@click.option("--skip-existing", is_flag=True, help="Leave outputs that already exist alone (resume a large folder).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def command(artifact, input_path, output_path, precision, backend, tile, overlap, alpha_mode, fmt, threads,
            runtime, skip_existing, quiet):
    """Upscale INPUT (an image or a folder of images) with ARTIFACT (export dir, .onnx or .engine) into OUTPUT."""
    pairs, warnings = plan_outputs(Path(input_path), Path(output_path), fmt)
    art = open_artifact(artifact, precision=precision, backend=backend)  # open
    plan = resolve(art, runtime=runtime, tile=tile, overlap=overlap, threads=threads, measure=measure_artifact)
    warnings += plan.warnings + [w for w in [art.manifest and demo_weights_warning(art.manifest)] if w]
    runner = plan.tiled_runner(threads=threads)  # run
    if len(pairs) > 1 or Path(input_path).is_dir():
        Path(output_path).mkdir(parents=True, exist_ok=True)
    else:
        pairs[0][1].parent.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_temps([dst for _, dst in pairs])
    if stale:
        warnings.append(f"removed {stale} temp file(s) an interrupted run left behind")
    skipped = [dst for _, dst in pairs if skip_existing and dst.exists()]
    todo = [(src, dst) for src, dst in pairs if dst not in skipped]
    t0, failures = time.perf_counter(), []
    for i, (src, dst) in enumerate(tqdm(todo, desc="images", unit="img", file=sys.stderr,
                                         disable=quiet or len(todo) <= 1)):
        try:
            upscale_file(runner, src, dst, alpha_mode=alpha_mode, progress_bar=not quiet, warn=warnings.append)
        except LiptExportError as exc:
            if len(pairs) == 1:
                raise
            failures.append(str(exc))
            click.echo(f"lipt-export: error: {exc}", err=True)
        except OSError as exc:
            if not disk_full(exc):
                raise
            raise UpscaleError(f"disk full writing {dst} ({exc.strerror}): {i - len(failures)} of {len(todo)} "
                               f"image(s) were finished, nothing is half-written under {dst.name}; free space and "
                               f"rerun with --skip-existing") from None
    for w in warnings:
        click.echo(f"lipt-export: warning: {w}", err=True)
    done = len(todo) - len(failures)
    tile_txt = f"tile {runner.tile} overlap {runner.overlap}" if runner.tile else "whole image"
    if runtime == "auto":
        click.echo(f"runtime: {plan.runtime} (auto, {plan.why})")
    click.echo(f"upscaled {done} image(s) x{runner.scale} with {runner.runner.name} on {runner.device} ({tile_txt}) "
               f"-> {output_path} in {time.perf_counter() - t0:.1f}s")
    if len(pairs) > 1 or skipped:
        click.echo(f"done {done}, failed {len(failures)}, skipped {len(skipped)} (already there)")
    if failures:
        raise UpscaleError(f"{len(failures)} of {len(pairs)} images failed (see above)")
