"""Video throughput: end-to-end `upscale` (decode -> infer -> encode, pipelined) vs inference only, on the same
frames and tiles, in interleaved rounds (medians), plus whether batching tiles across frames helps.

    .venv/bin/python benchmarks/bench_video.py                       # SMSR x2 1280x720 and LIPT-small x4 640x360
    .venv/bin/python benchmarks/bench_video.py --frames 10 --rounds 2 --exports exports

Exports are looked up under --exports (made when missing: SMSR x2 from ../shared's official checkpoint, LIPT-small
x4 with demo weights). Each clip is a slow pan over an Urban100 image (../shared; a synthetic image otherwise),
H.264 crf 18 in MP4 with an AAC track, made here with PyAV. Every mode uses the runner `lipt-export upscale` builds
(open -> resolve -> run, `--runtime auto`):

* inference only: the frames decoded beforehand (the conversion upscale does), then `TiledRunner.infer_rows` per
  frame with a sink that drops the rows: the runtime on the same tiles and nothing else;
* end to end: `runtime.video.upscale_video` into an MP4 (default libx264 crf 18 preset medium, audio copied);
* batch k: the inference stage with k frames' tiles per runtime call (`--batch k`), against k = 1, on the first
  2k frames.

Ratios: end-to-end over inference-only frames/s, per round (the two runs of a round are close in time), median;
and the CPU ratio, inference-only over end-to-end process CPU seconds per frame: on a machine whose cores the runtime
saturates, the throughput ratio the extra work (decode, conversions, encode) allows, whatever the other load.
Where the rest goes: the end-to-end run's pipeline accounting (inference stage time per frame, time it waited for
the decoder or the encoder, decoder and encoder busy time) and the process CPU time per frame of both modes.
Results: a table on stdout and benchmarks/results/video.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # helpers.shared: where ../shared is

from helpers.shared import default_calibration_dir, shared_dir  # noqa: E402
from lipt_export.images import CodedRGB  # noqa: E402
from lipt_export.report import format_table  # noqa: E402
from lipt_export.runtime.loader import open_artifact  # noqa: E402
from lipt_export.runtime.resolve import resolve  # noqa: E402
from lipt_export.runtime.video import (FrameJob, FrameSource, VideoOptions, frame_inference, plan_video,  # noqa: E402
                                       probe_video, upscale_video)
from lipt_export.validation.inputs import synthetic_image  # noqa: E402
from lipt_export.validation.runtime_choice import measure_artifact  # noqa: E402

CASES = [("smsr-base-x2", 1280, 720), ("lipt-small-x4", 640, 360)]
EXPORT_ARGS = {
    "smsr-base-x2": ["--model", "smsr", "--scale", "2", "--weights", "checkpoints/smsr/SMSR_x2_official.pt"],
    "lipt-small-x4": ["--model", "lipt", "--variant", "small", "--scale", "4"],
}


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def make_clip(path: Path, w: int, h: int, frames: int, step: int = 2) -> str:
    """A pan (``step`` px per frame) over an Urban100 image, H.264 crf 18 + AAC in MP4."""
    import av
    from PIL import Image

    calib = default_calibration_dir()
    if calib is not None:
        im = Image.open(sorted(calib.glob("*.png"))[0]).convert("RGB")
        im = im.resize((w + step * frames, h), Image.BICUBIC) if im.width < w + step * frames or im.height < h \
            else im.crop((0, 0, w + step * frames, h))
        scene, what = np.asarray(im), f"pan over {calib.name}/{sorted(calib.glob('*.png'))[0].name}"
    else:
        scene, what = (synthetic_image(h, w + step * frames, 0) * 255).round().astype(np.uint8), "synthetic pan"
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=24)
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        v.codec_context.options = {"crf": "18", "preset": "medium"}
        a = out.add_stream("aac", rate=48000)
        a.layout = "stereo"
        for i in range(frames):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(scene[:, step * i:step * i + w]), format="rgb24")
            f.pts = i
            out.mux(v.encode(f.reformat(format="yuv420p")))
        out.mux(v.encode(None))
        n = int(48000 * frames / 24)
        for k in range(0, n - 1023, 1024):
            af = av.AudioFrame.from_ndarray(np.zeros((1, 2048), np.int16), format="s16", layout="stereo")
            af.sample_rate, af.pts = 48000, k
            out.mux(a.encode(af))
        out.mux(a.encode(None))
    return what


def ensure_export(root: Path, name: str) -> Path:
    d = root / name
    if (d / "manifest.json").is_file():
        return d
    args = list(EXPORT_ARGS[name])
    if "--weights" in args:
        i = args.index("--weights") + 1
        args[i] = str(shared_dir() / args[i])
    subprocess.run([sys.executable, "-m", "lipt_export.cli", *args, "--backend", "onnxruntime", "--no-lint",
                    "--out", str(root)], check=True)
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exports", default=str(ROOT / "exports"))
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2, help="k of the batched inference stage (0: skip)")
    ap.add_argument("--cases", default=",".join(c[0] for c in CASES))
    ap.add_argument("--size", default=None, help="WxH for every case instead of its own (a quick check)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "video.json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-video-"))
    rows, results = [], []
    cases = [c for c in CASES if c[0] in args.cases.split(",")]
    if args.size:
        cases = [(c[0], *map(int, args.size.lower().split("x"))) for c in cases]
    for name, w, h in cases:
        export = ensure_export(Path(args.exports), name)
        clip = tmp / f"{name}.mp4"
        what = make_clip(clip, w, h, args.frames)
        art = open_artifact(export)
        plan = resolve(art, measure=measure_artifact)
        runner = plan.tiled_runner()
        probe = probe_video(clip)
        vplan = plan_video(probe, tmp / "out.mp4", art.scale, VideoOptions())
        codes = [job.codes for job in FrameSource(probe, vplan) if job.codes is not None]
        assert len(codes) == args.frames, len(codes)
        bplan = (plan_video(probe, tmp / "out.mp4", art.scale, VideoOptions(batch=args.batch))
                 if args.batch > 1 else None)
        load0 = os.getloadavg()
        timing = {"infer": [], "e2e": [], "stage1": [], "stagek": []}
        cpu = {"infer": [], "e2e": []}
        stats = []
        runner.infer_rows(CodedRGB(codes[0], 255.0), lambda r0, block: None)  # warm-up: first-shape compilation
        few = codes[:max(2, args.batch * 2)]

        def infer_only() -> None:
            t0, c0 = time.perf_counter(), cpu_seconds()
            for frame in codes:  # the runtime on the same tiles, nothing else
                runner.infer_rows(CodedRGB(frame, 255.0), lambda r0, block: None)
            timing["infer"].append(time.perf_counter() - t0)
            cpu["infer"].append(cpu_seconds() - c0)

        def end_to_end() -> None:
            t0, c0 = time.perf_counter(), cpu_seconds()
            res = upscale_video(runner, clip, tmp / "out.mp4", progress_bar=False)
            timing["e2e"].append(time.perf_counter() - t0)
            cpu["e2e"].append(cpu_seconds() - c0)
            stats.append(res.stats)

        for r in range(args.rounds):
            for mode in ((infer_only, end_to_end) if r % 2 == 0 else (end_to_end, infer_only)):  # drift cancels
                mode()
            if bplan is not None:  # the inference stage with and without frames batched (same code as upscale)
                for key, p in ((("stage1", vplan), ("stagek", bplan)) if r % 2 == 0 else
                               (("stagek", bplan), ("stage1", vplan))):
                    stage = frame_inference(runner, p)
                    jobs = [FrameJob(i, i, c.copy(), []) for i, c in enumerate(few)]
                    t0 = time.perf_counter()
                    for g in range(0, len(jobs), p.batch):
                        stage(jobs[g:g + p.batch])
                    timing[key].append(time.perf_counter() - t0)
            print(f"{name} round {r + 1}: infer {args.frames / timing['infer'][-1]:.3f} fps, end-to-end "
                  f"{args.frames / timing['e2e'][-1]:.3f} fps", flush=True)
        load1 = os.getloadavg()
        n = args.frames
        med = {k: statistics.median(v) for k, v in timing.items() if v}
        st = stats[int(np.argsort(timing["e2e"])[len(stats) // 2])]  # the median round's accounting
        fps_i, fps_e = n / med["infer"], n / med["e2e"]
        # each round's two runs are minutes apart at most: their ratio is steadier than a ratio of medians
        ratio_rounds = [ti / te for ti, te in zip(timing["infer"], timing["e2e"])]
        cpu_i, cpu_e = statistics.median(cpu["infer"]) / n, statistics.median(cpu["e2e"]) / n
        result = {
            "case": name, "clip": f"{w}x{h}, {n} frames, H.264 crf 18 + AAC ({what})", "runtime": plan.runtime,
            "runner": runner.name, "tile": runner.tile, "overlap": runner.overlap,
            "tiles_per_frame": runner.count_tiles(h, w), "codec": vplan.codec, "pix_fmt": vplan.pix_fmt,
            "fps_inference_only": fps_i, "fps_end_to_end": fps_e, "ratio_of_medians": fps_e / fps_i,
            "ratio_per_round": ratio_rounds, "ratio": statistics.median(ratio_rounds),
            "cpu_ratio": cpu_i / cpu_e,
            "rounds": {k: v for k, v in timing.items() if v},
            "cpu_s_per_frame": {"infer": cpu_i, "e2e": cpu_e},
            "median_round_stats": st.as_dict(), "loadavg_before": load0, "loadavg_after": load1,
        }
        if bplan is not None:
            result["batch"] = {"k": args.batch, "frames": len(few), "stage_fps_k1": len(few) / med["stage1"],
                               "stage_fps_k": len(few) / med["stagek"], "speedup": med["stage1"] / med["stagek"]}
        results.append(result)
        rows.append([name, f"{w}x{h} x{art.scale}", plan.runtime, f"{result['tiles_per_frame']} x {runner.tile}",
                     f"{fps_i:.3f}", f"{fps_e:.3f}",
                     f"{100 * result['ratio']:.1f} % ({', '.join(f'{100 * x:.0f}' for x in ratio_rounds)})",
                     f"{100 * cpu_i / cpu_e:.1f} %",
                     f"{st.infer_s / n:.2f} / {st.starved_s / n:.3f} / {st.blocked_s / n:.3f}",
                     f"{st.decode_s / n:.3f} / {st.encode_s / n:.3f}",
                     f"{cpu_i:.2f} / {cpu_e:.2f}",
                     f"{result['batch']['speedup']:.3f}x" if bplan is not None else "-",
                     f"{load0[0]:.1f} -> {load1[0]:.1f}"])
    headers = ["export", "clip", "runtime", "tiles", "infer-only fps", "end-to-end fps", "ratio (rounds)", "CPU ratio",
               "e2e s/frame: infer / starved / blocked", "decode / encode busy s/frame", "CPU s/frame infer / e2e",
               f"batch {args.batch} vs 1", "load avg (1 min)"]
    print(format_table(headers, rows))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
