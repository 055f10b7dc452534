"""Video in ``lipt-export upscale``: every frame through the export's tiled runner, everything else kept.

PyAV reads and writes (FFmpeg is bundled in its wheel; no ``ffmpeg`` binary is needed). A run is
:func:`probe_video` (what the input is) -> :func:`plan_video` (the output's container, codec, pixel format and
options, every refusal checked before the model runs, the encoder test-opened at the output size) ->
:func:`upscale_video` (decode -> infer -> encode, pipelined: :mod:`lipt_export.runtime.pipeline`).

* **Streams.** The first video stream is upscaled. Audio, subtitle and data streams are copied packet by packet
  (remuxed, never re-encoded); a stream the output container cannot hold is refused naming a container that can
  (data streams nothing here can hold are dropped, saying so).
* **Time.** Each frame is encoded with its own pts in the source's time base, so the frame count, the timestamps
  and the frame rate (variable too) are the input's. ``--start``/``--duration`` (seconds) cut a clip: frames whose
  time lies in the window, copied packets likewise (audio is cut at packet boundaries), timestamps shifted so the
  clip starts at 0.
* **Colour.** Frames are converted to RGB with their own matrix and range (swscale; unspecified is FFmpeg's
  default, BT.601 limited range), 8-bit sources as rgb24 and deeper ones as rgb48. The upscaled RGB is quantised
  like an image output (:func:`lipt_export.images.to_codes`: 8 bits, 16 for deeper output formats) and converted
  back with the same matrix and range; the stream carries the source's primaries, transfer, matrix and range tags
  (an RGB pixel format, as ``--lossless`` writes, is tagged RGB). Alpha planes are not kept.
* **Rotation.** Pixels are upscaled as stored; the source's display matrix (rotation and flips) is copied to the
  output stream, so players turn the output exactly as they turned the input.
* **Memory.** A few frames: two waiting on each side of inference, one in each stage (``depth``), plus the
  encoder's own look-ahead (x264 preset medium: up to about 40 frames at the output size), whatever the length.
* **Never half-written.** The output is written under a temp name (``.NAME.<pid>-*.tmp``) and renamed when
  complete; a failure, Ctrl-C or a full disk removes it, and the count of finished frames is kept in
  :class:`FrameCount` for the message. A damaged or truncated input keeps the frames before the damage (a complete
  file) and then raises, saying where.
* **Determinism.** The same input frame gives bit-identical output wherever it appears: the tiling depends only
  on the frame size, conversions are swscale's fixed-point code, and the runtime runs each tile with the same
  settings (tests/test_video.py checks a clip of repeated frames).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from lipt_export.catalog import FAMILIES
from lipt_export.errors import DiskFullError, UpscaleError
from lipt_export.fileio import disk_full, save_atomic
from lipt_export.images import UPSCALE_MARK, CodedRGB, to_codes
from lipt_export.runtime.base import Runner
from lipt_export.runtime.memory import whole_image_problem
from lipt_export.runtime.pipeline import PipelineStats, run_pipeline
from lipt_export.runtime.tiling import TiledRunner
from lipt_export.runtime.video_plan import (COLOUR_TAGS, DROPPED_METADATA, FULL_RANGE, RGB_MATRIX, UNSPECIFIED,
                                            VideoOptions, VideoPlan, VideoProbe, ffmpeg_reason, plan_video,
                                            probe_video, pyav, written_by_upscale_video)

__all__ = ["VideoOptions", "VideoPlan", "VideoProbe", "plan_video", "probe_video", "written_by_upscale_video",
           "FrameCount", "VideoResult", "upscale_video"]


@dataclass
class FrameCount:
    """Frames finished (encoded) of the expected total: what a failure or Ctrl-C reports."""

    done: int = 0
    total: int = 0


@dataclass
class VideoResult:
    frames: int
    seconds: float
    stats: PipelineStats
    plan: VideoPlan


@dataclass
class FrameJob:
    index: int
    pts: Optional[int]
    codes: Optional[np.ndarray]  # (H, W, 3) uint8/uint16 in, upscaled codes out; None: packets only
    packets: List[Tuple[int, Any]]  # (input stream index, packet) of the copied streams, before this frame


def runner_scale(runner: TiledRunner) -> int:
    """The runner's scale (an export's; a foreign model's measured on a small patch)."""
    return runner.scale or runner.ensure_scale(np.zeros((3, 16, 16), np.float32))


def check_frame_fits(runner: TiledRunner, probe: VideoProbe) -> None:
    """A frame run whole (``--tile 0``) must fit this machine's memory: one line before the first frame if not."""
    art = getattr(runner, "artifact", None)
    model = art.manifest.model.name if art is not None and art.manifest is not None else None
    if runner.tile is None and model in FAMILIES:
        problem = whole_image_problem(model, runner_scale(runner), probe.height, probe.width)
        if problem:
            raise UpscaleError(f"{probe.path.name}: each frame {problem}; use --tile (e.g. 512) to bound it")


class FrameSource:
    """Decodes the video (in the pipeline's decoder thread): :class:`FrameJob` per frame in the window, each with
    the copied streams' packets that precede it, and a last job with the packets after the last frame.
    ``damage`` says where decoding stopped early (an error, or the stream ending before its declared end)."""

    def __init__(self, probe: VideoProbe, plan: VideoPlan):
        self.probe, self.plan = probe, plan
        self.damage: Optional[str] = None
        self.rotation: Optional[List[int]] = None  # the display matrix, from the first frame
        self.offset_s = 0.0  # subtracted from every timestamp (a clip starts at 0)

    def __iter__(self) -> Iterator[FrameJob]:
        av = pyav()
        probe, plan = self.probe, self.plan
        start = plan.start or 0.0
        first = probe.start_s + start
        end = first + plan.duration if plan.duration is not None else None
        clip = plan.start is not None or plan.duration is not None
        with av.open(str(probe.path), metadata_errors="replace") as c:
            v = c.streams.video[0]
            v.thread_type = "AUTO"
            streams = [v] + [s for s in c.streams if s.index in plan.copied]
            if plan.start:
                c.seek(int(first / v.time_base), stream=v, backward=True)
            if clip:
                self.offset_s = first
            step = int(round(1 / (probe.rate * v.time_base))) if probe.rate else 1
            pending: List[Any] = []
            index, last_pts, last_t, done = 0, None, None, False
            try:
                for pkt in c.demux(streams):
                    if pkt.stream.index != v.index:
                        t = pkt.pts if pkt.pts is not None else pkt.dts
                        if pkt.dts is None and pkt.pts is None:
                            continue  # the demuxer's end-of-stream marker
                        if clip and not first - 1e-9 <= float(t * pkt.time_base) < (end if end else float("inf")):
                            continue
                        pending.append((pkt.stream.index, pkt))  # the index: the input is closed before the
                        continue  # last packets are muxed, and a packet's stream goes with it
                    for frame in pkt.decode():
                        pts = frame.pts if frame.pts is not None else (0 if last_pts is None else last_pts + step)
                        t = float(pts * v.time_base)
                        if clip and t < first - 1e-9:
                            continue
                        if end is not None and t >= end - 1e-9:
                            done = True
                            break
                        if (frame.width, frame.height) != (probe.width, probe.height):
                            raise UpscaleError(f"{probe.path.name}: frame {index} is {frame.width}x{frame.height}, "
                                               f"the video started at {probe.width}x{probe.height}; one stream cannot "
                                               f"change size: cut the video there (--duration {t - first:.3f})")
                        if self.rotation is None:
                            self.rotation = _display_matrix(frame)
                        codes = frame.to_ndarray(format=plan.decode_format)
                        yield FrameJob(index, pts, codes, pending)
                        pending, index, last_pts, last_t = [], index + 1, pts, t
                    if done:
                        break
            except av.error.FFmpegError as exc:
                at = f"{last_t + float(step * v.time_base):.2f} s" if last_t is not None else "its start"
                self.damage = f"{probe.path.name} is damaged at frame {index} ({at}: {ffmpeg_reason(exc)})"
            if self.damage is None and not done and probe.duration_s and probe.rate and last_t is not None:
                ends = last_t + 1 / float(probe.rate)
                declared = probe.start_s + probe.duration_s
                if (end is None or end > ends) and declared - ends > max(2 / float(probe.rate), 0.1):
                    self.damage = (f"{probe.path.name} ends at frame {index} ({ends - probe.start_s:.2f} s) of "
                                   f"{probe.duration_s:.2f} s declared: it is truncated or damaged there")
            yield FrameJob(index, None, None, pending)


def _display_matrix(frame) -> List[int]:
    for sd in frame.side_data:
        if sd.type.name == "DISPLAYMATRIX":
            return np.frombuffer(bytes(sd), np.int32).tolist()
    return []


def add_video_stream(container, probe: VideoProbe, plan: VideoPlan) -> Tuple[Any, Dict[str, Any]]:
    """The upscaled video's encoder stream in ``container`` (codec, rate, size, pixel format, time base, options,
    colour tags) and the ``reformat`` arguments that turn RGB codes into its pixel format. One function for the
    whole-file writer and for the segments of a distributed run (:mod:`lipt_export.runtime.video_segments`), so
    both encode with the same settings."""
    av = pyav()
    s = container.add_stream(plan.codec, rate=probe.rate) if probe.rate else container.add_stream(plan.codec)
    s.width, s.height, s.pix_fmt = plan.width, plan.height, plan.pix_fmt
    s.time_base = probe.time_base
    s.codec_context.time_base = probe.time_base
    s.codec_context.options = dict(plan.options)
    rgb = av.VideoFormat(plan.pix_fmt).is_rgb
    for key in COLOUR_TAGS:
        value = probe.colour[key]
        if rgb and key == "colorspace":
            value = RGB_MATRIX
        elif rgb and key == "color_range":
            value = FULL_RANGE
        setattr(s.codec_context, key, value)
    if rgb:
        return s, {"format": plan.pix_fmt}
    rng = probe.colour["color_range"]
    yuvj = probe.pix_fmt.startswith("yuvj")
    return s, {"format": plan.pix_fmt,
               "dst_colorspace": probe.colour["colorspace"] if probe.colour["colorspace"] not in
               (UNSPECIFIED, RGB_MATRIX) else None,
               "dst_color_range": FULL_RANGE if yuvj else rng or None}


def encode_frame(stream, reformat: Dict[str, Any], plan: VideoPlan, codes: np.ndarray, pts: int, time_base) -> list:
    """Upscaled RGB codes -> the encoder's packets (none while it looks ahead)."""
    av = pyav()
    frame = av.VideoFrame.from_ndarray(codes, format="rgb48le" if plan.out_bits == 16 else "rgb24")
    frame = frame.reformat(**reformat)
    frame.pts = pts
    frame.time_base = time_base
    return list(stream.encode(frame))


class VideoWriter:
    """The output container (in the pipeline's encoder thread): streams are made at the first job (the display
    matrix comes with the first decoded frame), copied packets are muxed as they come, frames encoded."""

    def __init__(self, tmp: str, probe: VideoProbe, plan: VideoPlan, source: FrameSource, count: FrameCount,
                 progress: Optional[Callable[[int], None]] = None):
        av = pyav()
        self.av, self.probe, self.plan, self.source = av, probe, plan, source
        self.count, self.progress = count, progress
        self.container = av.open(tmp, "w", format=plan.muxer)
        self.stream = None
        self.copies: Dict[int, Any] = {}
        self.input = None

    def _open(self) -> None:
        av, probe, plan = self.av, self.probe, self.plan
        self.input = av.open(str(probe.path), metadata_errors="replace")  # the copied streams' templates
        src_video = self.input.streams.video[0]
        out = self.container
        for key, value in self.input.metadata.items():
            if key.lower() not in DROPPED_METADATA:
                out.metadata[key] = value
        out.metadata["comment"] = f"{probe.comment}; {UPSCALE_MARK}" if probe.comment else UPSCALE_MARK
        s, self.reformat = add_video_stream(out, probe, plan)
        for key, value in src_video.metadata.items():
            if key.lower() in ("language", "title", "handler_name"):
                s.metadata[key] = value
        if self.source.rotation:
            s.set_display_matrix(self.source.rotation)
        self.stream = s
        for index in plan.copied:
            template = self.input.streams[index]
            copy = out.add_stream_from_template(template)
            for key, value in template.metadata.items():
                if key.upper() != "DURATION":
                    copy.metadata[key] = value
            copy.disposition = template.disposition
            self.copies[index] = copy
        self.shift = int(round(self.source.offset_s / probe.time_base))

    def mux_copied(self, packets: List[Tuple[int, Any]]) -> None:
        """The copied streams' packets (``(input stream index, packet)``), shifted when a clip starts later."""
        for index, pkt in packets:
            if self.source.offset_s:
                delta = int(round(self.source.offset_s / pkt.time_base))
                if pkt.pts is not None:
                    pkt.pts -= delta
                if pkt.dts is not None:
                    pkt.dts -= delta
            pkt.stream = self.copies[index]
            self.container.mux(pkt)

    def write(self, job: FrameJob) -> None:
        if self.stream is None:
            self._open()
        self.mux_copied(job.packets)
        if job.codes is None:
            return
        for pkt in encode_frame(self.stream, self.reformat, self.plan, job.codes, job.pts - self.shift,
                                self.probe.time_base):
            self.container.mux(pkt)
        self.count.done += 1
        if self.progress is not None:
            self.progress(1)

    def finish(self) -> None:
        """Flush the encoder and close the file: a write error here (a full disk) is raised, never swallowed
        (FFmpeg reports some write errors only when the trailer is written)."""
        if self.stream is None:
            self._open()
        for pkt in self.stream.encode(None):
            self.container.mux(pkt)
        container, self.container = self.container, None
        container.close()

    def close(self) -> None:
        """Release what is still open after a failure (the failure is what counts, not errors closing)."""
        for c in (self.container, self.input):
            if c is not None:
                try:
                    c.close()
                except Exception:  # noqa: BLE001
                    pass
        self.container = self.input = None


class FrameBatchRunner(Runner):
    """``k`` frames stacked on the channel axis ((1, 3k, h, w), which the tiler treats as one image) run as one
    batch (k, 3, h, w): tiles of k frames share each runtime call."""

    def __init__(self, runner: Runner, k: int):
        self.runner, self.k = runner, k
        self.name, self.precision, self.device = runner.name, runner.precision, runner.device
        self.runtime = getattr(runner, "runtime", "")

    def infer(self, lr: np.ndarray) -> np.ndarray:
        n, c, h, w = lr.shape
        out = self.runner.infer(np.ascontiguousarray(lr.reshape(n * self.k, c // self.k, h, w)))
        return out.reshape(n, c, out.shape[2], out.shape[3])


def frame_inference(runner: TiledRunner, plan: VideoPlan) -> Callable[[List[FrameJob]], List[FrameJob]]:
    """The pipeline's inference stage: a group of frames (``plan.batch``) in, their upscaled codes out."""
    k = plan.batch
    batched = TiledRunner(FrameBatchRunner(runner.runner, k), runner.scale, runner.tile, runner.overlap,
                          runner.multiple_of, runner.blend) if k > 1 else None
    peak = 65535.0 if plan.decode_format == "rgb48le" else 255.0

    def one(job: FrameJob) -> None:
        out = np.empty((plan.height, plan.width, 3), np.uint16 if plan.out_bits == 16 else np.uint8)

        def sink(r0: int, block: np.ndarray) -> None:
            out[r0:r0 + block.shape[1]] = to_codes(block, plan.out_bits)

        runner.infer_rows(CodedRGB(job.codes, peak), sink)
        job.codes = out

    def group(jobs: List[FrameJob]) -> List[FrameJob]:
        frames = [j for j in jobs if j.codes is not None]
        if batched is None or not frames:
            for j in frames:
                one(j)
            return jobs
        stack = [np.asarray(CodedRGB(j.codes, peak)) for j in frames]
        stack += [stack[-1]] * (k - len(stack))  # a short last group runs as a full one: same numerics
        lr = np.concatenate(stack, axis=0)
        outs = [np.empty((plan.height, plan.width, 3), np.uint16 if plan.out_bits == 16 else np.uint8)
                for _ in frames]

        def sink(r0: int, block: np.ndarray) -> None:
            for i, out in enumerate(outs):
                out[r0:r0 + block.shape[1]] = to_codes(block[3 * i:3 * i + 3], plan.out_bits)

        batched.infer_rows(lr, sink)
        for j, out in zip(frames, outs):
            j.codes = out
        return jobs

    return group


def frame_groups(source, k: int) -> Iterator[List[FrameJob]]:
    group: List[FrameJob] = []
    for job in source:
        group.append(job)
        if len(group) == k or job.codes is None:
            yield group
            group = []
    if group:
        yield group


def upscale_video(runner: TiledRunner, src: Path, dst: Path, options: VideoOptions = VideoOptions(), *,
                  plan: Optional[VideoPlan] = None, progress_bar: bool = True, warn=None,
                  count: Optional[FrameCount] = None, depth: int = 2) -> VideoResult:
    """Upscale the video ``src`` into ``dst`` (module doc). ``count`` (optional) is updated as frames finish, so a
    caller that is interrupted can say how many were done. Raises :class:`UpscaleError` for a full disk or an
    encoder failure (nothing written) and, after writing the frames before it, for a damaged input."""
    from tqdm import tqdm

    av = pyav()
    src, dst = Path(src), Path(dst)
    probe = probe_video(src)
    plan = plan or plan_video(probe, dst, runner_scale(runner), options)
    check_frame_fits(runner, probe)
    for note in plan.notes if warn else ():
        warn(note)
    count = count if count is not None else FrameCount()
    count.done, count.total = 0, probe.frames_estimate(plan.start, plan.duration)
    source = FrameSource(probe, plan)
    infer = frame_inference(runner, plan)
    t0 = time.perf_counter()
    stats: List[PipelineStats] = []
    with tqdm(total=count.total or None, desc=src.name, unit="frame", file=sys.stderr, leave=False,
              disable=not progress_bar, dynamic_ncols=True) as bar:

        def write(tmp: str) -> None:
            writer = VideoWriter(tmp, probe, plan, source, count, bar.update)

            def sink(jobs: List[FrameJob]) -> None:
                for job in jobs:
                    writer.write(job)

            try:
                stats.append(run_pipeline(frame_groups(source, plan.batch), infer, sink, depth))
                if count.done == 0:
                    raise UpscaleError(f"no frame of {src.name} lies in --start {plan.start or 0:g} --duration "
                                       f"{plan.duration} (it is {probe.duration_s or 0:.2f} s long); nothing written")
                writer.finish()
            finally:
                writer.close()

        try:
            save_atomic(dst, write)
        except OSError as exc:
            if not disk_full(exc):
                raise
            raise DiskFullError(f"disk full writing {dst} ({exc.strerror or ffmpeg_reason(exc)}): {count.done} of "
                               f"{count.total or '?'} frames were done, nothing is half-written under {dst.name}; "
                               f"free space and rerun") from None
        except av.error.FFmpegError as exc:
            raise UpscaleError(f"writing {dst.name} with {plan.codec} failed after {count.done} frame(s) "
                               f"({ffmpeg_reason(exc)}); nothing is written under {dst.name}") from None
    seconds = time.perf_counter() - t0
    if source.damage:
        raise UpscaleError(f"{source.damage}; the {count.done} frame(s) before it were upscaled into {dst} "
                           f"(a complete video); replace the input to get the rest")
    return VideoResult(count.done, seconds, stats[0], plan)
