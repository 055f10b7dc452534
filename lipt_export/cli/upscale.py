"""`lipt-export upscale ARTIFACT INPUT OUTPUT`: upscale an image, a video or a folder of both, tiled (the work is
done by :mod:`lipt_export.runtime.upscale` for images and :mod:`lipt_export.runtime.video` for videos)."""
from __future__ import annotations

import signal
import sys
import time
from contextlib import contextmanager
from itertools import groupby
from pathlib import Path

import click
from tqdm import tqdm

from lipt_export.catalog import (CPU_RUNTIMES, LOSSLESS_CONTAINERS, LOSSLESS_VIDEO_CODEC, PRECISIONS, RAY_AUTO,
                                 SERVING_BACKENDS, VIDEO_CONTAINERS, VIDEO_CRF)
from lipt_export.errors import DiskFullError, LiptExportError, UpscaleError
from lipt_export.manifest import demo_weights_warning
from lipt_export.runtime.distributed import check_address, ray_problem, ray_session, upscale_on_ray
from lipt_export.runtime.loader import open_artifact
from lipt_export.runtime.resolve import resolve
from lipt_export.runtime.upscale import is_video_output, plan_outputs, remove_stale_temps, upscale_images
from lipt_export.runtime.video import FrameCount, VideoOptions, plan_video, probe_video, upscale_video
from lipt_export.validation.runtime_choice import measure_artifact

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


@contextmanager
def _terminate_as_interrupt():
    """SIGTERM (kill, a scheduler's stop) unwinds like Ctrl-C, so temp outputs are removed and the count said."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (an embedding caller): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@click.command("upscale")
@click.argument("artifact", type=click.Path())
@click.argument("input_path", metavar="INPUT", type=click.Path())
@click.argument("output_path", metavar="OUTPUT", type=click.Path())
@click.option("--precision", default=None, type=click.Choice(PRECISIONS),
              help="Artifact precision when ARTIFACT is an export directory (default fp32).")
@click.option("--backend", default="auto", show_default=True, type=click.Choice(SERVING_BACKENDS),
              help="auto = the TensorRT engine when the export has one and TensorRT works, else ONNX Runtime.")
@click.option("--tile", default=None, type=int, help="LR tile size in pixels; 0 = whole image (default: the "
              "manifest's recommended tile when the model requires tiling, else its default tile, measured per family "
              "as the least memory at no cost in speed (docs/benchmarks.md); smaller images run whole). Memory is bounded by the tile: tiles are summed in a temp file beside the output (PNG/.npy outputs "
              "are streamed from it).")
@click.option("--overlap", default=None, type=int, help="LR pixels shared by neighbouring tiles (default: the "
              "manifest's, at least 8 windows for windowed models, e.g. 64 for LIPT).")
@click.option("--alpha", "alpha_mode", default="bicubic", show_default=True, type=click.Choice(["bicubic", "model"]),
              help="How the alpha channel is upscaled.")
@click.option("--format", "fmt", default=None, help="Output format for folders: an image format (png, jpg, webp, "
              f"tif, npy) for the images, a container ({', '.join(s[1:] for s in VIDEO_CONTAINERS)}) for the videos.")
@click.option("--codec", default=None, help="Video encoder (default libx264, libvpx-vp9 for .webm; "
              f"{LOSSLESS_VIDEO_CODEC} with --lossless). Others: libx265, libsvtav1, prores_ks, ffv1.")
@click.option("--crf", default=None, type=int, help="Video quality, lower is better (defaults: "
              + ", ".join(f"{c} {v[0]}" for c, v in VIDEO_CRF.items()) + ").")
@click.option("--lossless", is_flag=True, help=f"Lossless video: {LOSSLESS_VIDEO_CODEC} storing the upscaled RGB "
              f"exactly ({' or '.join(LOSSLESS_CONTAINERS)} outputs).")
@click.option("--pix-fmt", default=None, help="Video pixel format (default yuv420p, yuv420p10le for sources "
              "deeper than 8 bits; bgr0/gbrp16le with --lossless).")
@click.option("--start", default=None, type=float, help="Video: first second to upscale (a clip starts at 0).")
@click.option("--duration", default=None, type=float, help="Video: seconds to upscale from --start.")
@click.option("--batch", default=1, show_default=True, type=int,
              help="Video: frames whose tiles run through the runtime in one call (same output; see "
                   "docs/benchmarks.md for whether it is faster).")
@click.option("--threads", default=None, type=int, help="ONNX Runtime threads (default: all cores, at most 8).")
@click.option("--runtime", default="auto", show_default=True,
              type=click.Choice(["auto", *CPU_RUNTIMES]),
              help="CPU runtime for ONNX artifacts. auto: the fastest execution of the artifact within its "
                   "accuracy budget, as measured at export on this machine (else measured now); it says which. "
                   "Within budget: the file's own numerics (ONNX Runtime, OpenVINO f32), or bf16 (CPUs that "
                   "compile it) within 0.01 dB PSNR-Y, or OpenVINO's INT8 kernels within the export's INT8 "
                   "budget. Named runtimes run as asked (a CPU without bf16 runs f32 and says so).")
@click.option("--ray", "ray_address", default=None, is_flag=False, flag_value=RAY_AUTO, metavar="[auto|ADDRESS]",
              help="Spread the files (and videos, cut at keyframes into segments) over a Ray cluster: auto starts a "
                   "private local Ray on 127.0.0.1 for this run; HOST:PORT joins a running cluster (it has no "
                   "authentication unless configured: keep it on a private network; docs/distributed.md). Outputs "
                   "are written by this process, as a local run writes them.")
@click.option("--skip-existing", is_flag=True, help="Leave outputs that already exist alone (resume a large folder).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def command(artifact, input_path, output_path, precision, backend, tile, overlap, alpha_mode, fmt, codec, crf,
            lossless, pix_fmt, start, duration, batch, threads, runtime, ray_address, skip_existing, quiet):
    """Upscale INPUT (an image, a video or a folder of them) with ARTIFACT (export dir, .onnx or .engine) into
    OUTPUT. Videos keep their audio, subtitles, timestamps, rotation and colour tags; every frame is upscaled."""
    if ray_address is not None:  # before any work: Ray installed, the cluster answering, options it runs
        problem = ray_problem()
        if problem:
            raise UpscaleError(problem)
        if start is not None or duration is not None:
            raise UpscaleError("--start/--duration are not run with --ray (a clip is short: upscale it locally)")
        if ray_address != RAY_AUTO:
            check_address(ray_address)
    pairs, warnings = plan_outputs(Path(input_path), Path(output_path), fmt)
    video_opts = VideoOptions(codec, crf, lossless, pix_fmt, start, duration, batch)
    videos = [(src, dst) for src, dst in pairs if is_video_output(dst)]
    video_flags = [name for name, value in (("--codec", codec), ("--crf", crf), ("--lossless", lossless),
                                            ("--pix-fmt", pix_fmt), ("--start", start), ("--duration", duration),
                                            ("--batch", batch != 1)) if value not in (None, False)]
    if video_flags and not videos:
        raise UpscaleError(f"{video_flags[0]} is for videos and {input_path} holds none; leave it out")
    art = open_artifact(artifact, precision=precision, backend=backend)  # open
    single = len(pairs) == 1 and not Path(input_path).is_dir()
    failures = []
    video_plans = {}
    probes = {}
    for src, dst in videos:  # every video checked before the model runs: one line each, nothing loaded
        try:
            probes[dst] = probe_video(src)
            video_plans[dst] = plan_video(probes[dst], dst, art.scale, video_opts)
        except LiptExportError as exc:
            if single:
                raise
            failures.append(str(exc))
            click.echo(f"lipt-export: error: {exc}", err=True)
    plan = resolve(art, runtime=runtime, tile=tile, overlap=overlap, threads=threads, measure=measure_artifact)
    warnings += plan.warnings + [w for w in [art.manifest and demo_weights_warning(art.manifest)] if w]
    runner = plan.tiled_runner(threads=threads) if ray_address is None else None  # run (here, or on the workers)
    if len(pairs) > 1 or Path(input_path).is_dir():
        Path(output_path).mkdir(parents=True, exist_ok=True)
    else:
        pairs[0][1].parent.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_temps([dst for _, dst in pairs])
    if stale:
        warnings.append(f"removed {stale} temp file(s) an interrupted run left behind")
    skipped = [dst for _, dst in pairs if skip_existing and dst.exists()]
    # videos refused above are not run (their error is already out)
    todo = [(src, dst) for src, dst in pairs if dst not in skipped and (not is_video_output(dst) or dst in video_plans)]
    if ray_address is not None:
        _run_on_ray(ray_address, art, artifact, plan, todo, {d: (probes[d], video_plans[d]) for d in video_plans},
                    pairs, skipped, failures, warnings, single, threads, alpha_mode, quiet, runtime, output_path)
        return
    t0 = time.perf_counter()
    finished = {"images": 0, "videos": 0, "frames": 0}
    count = FrameCount()
    current = {"dst": None}
    bar = tqdm(total=len(todo), desc="files", unit="file", file=sys.stderr, disable=quiet or len(todo) <= 1)

    def image_done(src, dst):
        finished["images"] += 1
        bar.update(1)

    def image_failed(src, dst, exc):
        if single:
            raise exc
        failures.append(str(exc))
        bar.update(1)
        click.echo(f"lipt-export: error: {exc}", err=True)

    def finished_text() -> str:
        return f"{finished['images']} image(s) and {finished['videos']} video(s) of {len(todo)} file(s) were finished"

    try:
        with _terminate_as_interrupt():
            for is_video, group in groupby(todo, key=lambda pair: is_video_output(pair[1])):
                group = list(group)
                if not is_video:
                    current["dst"] = group[0][1].parent
                    upscale_images(runner, group, alpha_mode=alpha_mode, progress_bar=not quiet,
                                   warn=warnings.append, done=image_done, failed=image_failed)
                    continue
                for src, dst in group:
                    current["dst"] = dst
                    try:
                        result = upscale_video(runner, src, dst, plan=video_plans[dst], progress_bar=not quiet,
                                               warn=warnings.append, count=count)
                        finished["videos"] += 1
                        finished["frames"] += result.frames
                    except DiskFullError as exc:
                        raise DiskFullError(f"{exc}" + ("" if single else f" ({finished_text()})")) from None
                    except LiptExportError as exc:
                        if single:
                            raise
                        failures.append(str(exc))
                        click.echo(f"lipt-export: error: {exc}", err=True)
                    bar.update(1)
    except KeyboardInterrupt:
        bar.close()
        dst = current["dst"]
        where = (f"{count.done} of {count.total or '?'} frames of {dst.name} were done, nothing is written under "
                 f"{dst.name}" if dst is not None and is_video_output(dst) else "the image in progress was not written")
        click.echo(f"lipt-export: error: interrupted: {where}; {finished_text()}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    finally:
        bar.close()
    for w in warnings:
        click.echo(f"lipt-export: warning: {w}", err=True)
    tile_txt = f"tile {runner.tile} overlap {runner.overlap}" if runner.tile else "whole image"
    if runtime == "auto":
        click.echo(f"runtime: {plan.runtime} (auto, {plan.why})")
    seconds = time.perf_counter() - t0
    parts = [f"{finished['images']} image(s)"] if finished["images"] or not finished["videos"] else []
    if finished["videos"]:
        parts.append(f"{finished['videos']} video(s) ({finished['frames']} frames, "
                     f"{finished['frames'] / max(seconds, 1e-9):.2f} frames/s)")
    click.echo(f"upscaled {' and '.join(parts)} x{runner.scale} with {runner.runner.name} on {runner.device} "
               f"({tile_txt}) -> {output_path} in {seconds:.1f}s")
    done = finished["images"] + finished["videos"]
    if len(pairs) > 1 or skipped:
        click.echo(f"done {done}, failed {len(failures)}, skipped {len(skipped)} (already there)")
    if failures:
        raise UpscaleError(f"{len(failures)} of {len(pairs)} files failed (see above)")


def _run_on_ray(address, art, artifact, plan, todo, video_plans, pairs, skipped, failures, warnings, single, threads,
                alpha_mode, quiet, runtime, output_path) -> None:
    """``--ray``: the same files, outputs and messages as a local run, the work done by the cluster's workers."""
    t0 = time.perf_counter()

    def failed(src, dst, message):
        if single:
            raise UpscaleError(message)
        failures.append(message)
        click.echo(f"lipt-export: error: {message}", err=True)

    count = FrameCount()
    try:
        with _terminate_as_interrupt(), ray_session(address) as where:
            res = upscale_on_ray(art, artifact, plan, todo, video_plans, threads=threads, alpha_mode=alpha_mode,
                                 progress_bar=not quiet, warn=warnings.append, failed=failed, count=count)
    except KeyboardInterrupt:
        click.echo("lipt-export: error: interrupted: finished outputs are complete, nothing is half-written; rerun "
                   "with --skip-existing to do the rest", err=True)
        sys.exit(EXIT_INTERRUPTED)
    for w in dict.fromkeys(warnings):
        click.echo(f"lipt-export: warning: {w}", err=True)
    if runtime == "auto":
        click.echo(f"runtime: {plan.runtime} (auto, {plan.why})")
    seconds = time.perf_counter() - t0
    parts = [f"{res.images} image(s)"] if res.images or not res.videos else []
    if res.videos:
        parts.append(f"{res.videos} video(s) ({res.frames} frames, {res.frames / max(seconds, 1e-9):.2f} frames/s)")
    tile_txt = f"tile {plan.tile} overlap {plan.overlap}" if plan.tile else "whole image"
    lost = f", {res.restarts} task(s) moved off lost workers" if res.restarts else ""
    click.echo(f"upscaled {' and '.join(parts)} x{art.scale} with {plan.runtime} on {res.workers} Ray worker(s) of "
               f"{where} ({tile_txt}{lost}) -> {output_path} in {seconds:.1f}s")
    if len(pairs) > 1 or skipped:
        click.echo(f"done {res.images + res.videos}, failed {len(failures)}, skipped {len(skipped)} (already there)")
    if failures:
        raise UpscaleError(f"{len(failures)} of {len(pairs)} files failed (see above)")
