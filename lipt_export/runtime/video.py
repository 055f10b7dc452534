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

import io
import logging
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from lipt_export.catalog import (CONTAINER_VIDEO_CODEC, DEFAULT_VIDEO_CODEC, FAMILIES, LOSSLESS_CONTAINERS,
                                 LOSSLESS_VIDEO_CODEC, VIDEO_CONTAINERS, VIDEO_CRF, VIDEO_PIX_FMTS)
from lipt_export.errors import DiskFullError, UpscaleError
from lipt_export.fileio import disk_full, save_atomic
from lipt_export.images import SOFTWARE_MARK, UPSCALE_MARK, CodedRGB, to_codes
from lipt_export.runtime.base import Runner
from lipt_export.runtime.memory import whole_image_problem
from lipt_export.runtime.pipeline import PipelineStats, run_pipeline
from lipt_export.runtime.tiling import TiledRunner

COLOUR_TAGS = ("color_primaries", "color_trc", "colorspace", "color_range")
UNSPECIFIED = 2  # AVCOL_*_UNSPECIFIED for primaries, transfer and matrix (range: 0)
RGB_MATRIX, FULL_RANGE = 0, 2  # AVCOL_SPC_RGB, AVCOL_RANGE_JPEG
DROPPED_METADATA = {"encoder", "major_brand", "minor_version", "compatible_brands", "duration", "comment"}
CODEC_HINT = "libx264, libx265, libvpx-vp9, libsvtav1, ffv1, prores_ks"


def _av():
    """PyAV, with FFmpeg's own logging kept off the terminal: its errors reach us as exceptions (PyAV appends
    the last error line to them), the rest would break the one-line error contract."""
    import av  # deferred: only video runs pay for FFmpeg

    if av.logging.get_level() is None:
        av.logging.set_level(av.logging.ERROR)
        lib = logging.getLogger("libav")
        lib.addHandler(logging.NullHandler())
        lib.propagate = False
    return av


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if "last error log:" in text:  # PyAV: "...: 'avcodec_open2(...)'; last error log: [libx264] width not ..."
        text = text.split("last error log:", 1)[1].strip()
    return text[:200] or type(exc).__name__


@dataclass(frozen=True)
class VideoOptions:
    """What the user chose for a video output (``None``: the defaults of :func:`plan_video`)."""

    codec: Optional[str] = None
    crf: Optional[int] = None
    lossless: bool = False
    pix_fmt: Optional[str] = None
    start: Optional[float] = None  # seconds
    duration: Optional[float] = None  # seconds
    batch: int = 1  # frames whose tiles run through the runtime as one batch


@dataclass
class VideoProbe:
    """What an input video is, read from its header (no frame decoded)."""

    path: Path
    width: int
    height: int
    codec: str
    pix_fmt: str
    bits: int
    rate: Optional[Fraction]
    time_base: Fraction
    start_s: float
    duration_s: Optional[float]  # the video stream's own duration when the container says it, else the file's
    frames: int  # from the header, 0 when unknown
    colour: Dict[str, int]
    streams: List[Tuple[int, str, str]]  # (index, type, codec) of the other streams
    comment: str = ""

    def frames_estimate(self, start: Optional[float] = None, duration: Optional[float] = None) -> int:
        span = self.duration_s
        if span is not None:
            span = max(0.0, span - (start or 0.0))
            if duration is not None:
                span = min(span, duration)
        elif duration is not None:
            span = duration
        if span is None or not self.rate:
            return self.frames
        guess = int(round(span * float(self.rate)))
        return min(guess, self.frames) if self.frames and start is None and duration is None else guess


@dataclass
class VideoPlan:
    """How the output is written: container, codec and its options, pixel format, colour tags, what is copied."""

    dst: Path
    muxer: str
    codec: str
    pix_fmt: str
    options: Dict[str, str]
    width: int
    height: int
    decode_format: str  # rgb24 | rgb48le: what frames are converted to for the model
    out_bits: int  # 8 | 16: how the model's output is quantised
    copied: List[int]  # indices of the input streams copied
    notes: List[str] = field(default_factory=list)
    start: Optional[float] = None
    duration: Optional[float] = None
    batch: int = 1


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


def probe_video(path: Path) -> VideoProbe:
    """Open ``path`` and describe its first video stream; one line naming the file when it is not a video."""
    av = _av()
    path = Path(path)
    try:
        with av.open(str(path), metadata_errors="replace") as c:
            videos = [s for s in c.streams if s.type == "video"]
            if not videos:
                kinds = ", ".join(sorted({s.type for s in c.streams})) or "no streams"
                raise UpscaleError(f"{path} has no video stream ({kinds}); give a video or an image")
            v = videos[0]
            cc = v.codec_context
            if not v.width or not v.height or cc.pix_fmt is None:
                raise UpscaleError(f"cannot read video {path}: its video stream has no frame size or pixel format "
                                   f"(codec {cc.name}); replace or re-mux it")
            fmt = av.VideoFormat(cc.pix_fmt)
            bits = max(comp.bits for comp in fmt.components)
            tb = v.time_base or Fraction(1, 1000)
            start = float(v.start_time * tb) if v.start_time is not None else 0.0
            duration = _stream_duration(v, c)
            comment = next((str(val) for key, val in c.metadata.items() if key.lower() == "comment"), "")
            return VideoProbe(
                path=path, width=v.width, height=v.height, codec=cc.name, pix_fmt=cc.pix_fmt, bits=bits,
                rate=v.average_rate or v.guessed_rate, time_base=tb, start_s=start, duration_s=duration,
                frames=v.frames or 0, colour={k: int(getattr(cc, k)) for k in COLOUR_TAGS},
                streams=[(s.index, s.type, s.codec_context.name if s.codec_context else "?")
                         for s in c.streams if s is not v], comment=comment)
    except av.error.FFmpegError as exc:
        raise UpscaleError(f"cannot read video {path} ({_reason(exc)}): not a video FFmpeg reads, or damaged "
                           f"before its first frame; replace or remove it") from None


def _stream_duration(v, c) -> Optional[float]:
    if v.duration:
        return float(v.duration * v.time_base)
    tag = next((str(val) for key, val in v.metadata.items() if key.upper() == "DURATION"), None)
    if tag:  # Matroska: "HH:MM:SS.nnnnnnnnn" per stream
        try:
            h, m, s = tag.split(":")
            return int(h) * 3600 + int(m) * 60 + float(s)
        except ValueError:
            pass
    return c.duration / 1_000_000 if c.duration else None


def written_by_upscale_video(path: Path) -> bool:
    """True when the video's container comment carries the upscale mark (an output of this command)."""
    try:
        return SOFTWARE_MARK in probe_video(path).comment
    except UpscaleError:
        return False


def _supported(muxer: str) -> set:
    av = _av()
    with av.open(io.BytesIO(), "w", format=muxer) as c:
        return set(c.supported_codecs)


def _containers_for(codec_names: List[str]) -> List[str]:
    return [suffix for suffix, muxer in VIDEO_CONTAINERS.items() if set(codec_names) <= _supported(muxer)]


def codec_options(codec: str, crf: Optional[int]) -> Dict[str, str]:
    """Encoder options: crf and preset for the codecs that take them (catalog.VIDEO_CRF), quiet encoders."""
    opts: Dict[str, str] = {}
    if codec in VIDEO_CRF:
        default, _, preset = VIDEO_CRF[codec]
        opts["crf"] = str(default if crf is None else crf)
        if preset:
            opts["preset"] = preset
    if codec == "libvpx-vp9":
        opts.update({"b": "0", "row-mt": "1"})  # constant quality: crf with no bitrate target
    if codec == "libx265":
        opts["x265-params"] = "log-level=error"  # x265 prints to stderr itself otherwise
    if codec == "ffv1":
        opts.update({"level": "3", "slicecrc": "1"})  # version 3: sliced (threads), each slice checksummed
    return opts


def plan_video(probe: VideoProbe, dst: Path, scale: int, options: VideoOptions = VideoOptions()) -> VideoPlan:
    """Decide the output and refuse, in one line each, what cannot work, before any frame is upscaled: an unknown
    container or codec, a codec the container cannot hold, lossless into MP4, --crf for a codec without it, a
    pixel format the encoder lacks, a stream that cannot be copied, a window outside the video, and any frame
    size the encoder refuses (it is opened once at the output size)."""
    av = _av()
    dst = Path(dst)
    suffix = dst.suffix.lower()
    muxer = VIDEO_CONTAINERS.get(suffix)
    if muxer is None:
        raise UpscaleError(f"cannot write a video as '{dst.name}': use one of {', '.join(VIDEO_CONTAINERS)}")
    codec = options.codec or (LOSSLESS_VIDEO_CODEC if options.lossless else
                              CONTAINER_VIDEO_CODEC.get(suffix, DEFAULT_VIDEO_CODEC))
    if options.lossless and codec != LOSSLESS_VIDEO_CODEC:
        raise UpscaleError(f"--lossless writes {LOSSLESS_VIDEO_CODEC}; leave out --codec {codec} (or keep it and "
                           f"choose a --crf)")
    try:
        enc = av.codec.Codec(codec, "w")
    except (av.error.FFmpegError, ValueError):
        raise UpscaleError(f"unknown video encoder --codec {codec}; encoders here include {CODEC_HINT}") from None
    if enc.type != "video":
        raise UpscaleError(f"--codec {codec} is a {enc.type} encoder; choose a video one ({CODEC_HINT})")
    if codec == LOSSLESS_VIDEO_CODEC and suffix not in LOSSLESS_CONTAINERS:
        raise UpscaleError(f"lossless video is {LOSSLESS_VIDEO_CODEC}, which {suffix} players do not take: write "
                           f"{' or '.join(LOSSLESS_CONTAINERS)} instead of {dst.name}")
    supported = _supported(muxer)
    if enc.canonical_name not in supported:
        takers = _containers_for([enc.canonical_name])
        raise UpscaleError(f"{suffix} cannot hold {codec} video: write "
                           + (f"{' or '.join(takers)}" if takers else "another container")
                           + f" or choose another --codec")
    if options.crf is not None:
        if codec not in VIDEO_CRF:
            raise UpscaleError(f"--crf is for {', '.join(VIDEO_CRF)}; {codec} takes none"
                               + (" (it is lossless)" if codec == LOSSLESS_VIDEO_CODEC else ""))
        lo, hi = VIDEO_CRF[codec][1]
        if not lo <= options.crf <= hi:
            raise UpscaleError(f"--crf {options.crf} is outside {codec}'s range {lo}..{hi} (lower is better; "
                               f"default {VIDEO_CRF[codec][0]})")
    formats = [f.name for f in enc.video_formats or []]
    if options.pix_fmt:
        pix_fmt = options.pix_fmt
        if formats and pix_fmt not in formats:
            raise UpscaleError(f"{codec} cannot encode --pix-fmt {pix_fmt}; it takes {', '.join(formats[:12])}")
    else:
        low, high = VIDEO_PIX_FMTS.get(codec, VIDEO_PIX_FMTS["*"])
        pix_fmt = high if probe.bits > 8 and (not formats or high in formats) else low
        if formats and pix_fmt not in formats:
            pix_fmt = formats[0]
    out_fmt = av.VideoFormat(pix_fmt)
    out_bits = 16 if max(comp.bits for comp in out_fmt.components) > 8 else 8
    decode_format = "rgb48le" if probe.bits > 8 else "rgb24"
    # the other streams: copied when the container holds them; audio and subtitles are never dropped silently
    copied, notes, refused = [], [], []
    for index, kind, name in probe.streams:
        if kind not in ("audio", "subtitle", "data"):
            notes.append(f"{probe.path.name}: stream #{index} ({kind}, {name}) is not copied (only the first video "
                         f"stream is upscaled)")
        elif name in supported:
            copied.append(index)
        elif kind == "data":
            notes.append(f"{probe.path.name}: data stream #{index} ({name}) cannot be held by {suffix}; dropped")
        else:
            refused.append((index, kind, name))
    if refused:
        index, kind, name = refused[0]
        takers = [s for s in _containers_for([enc.canonical_name] + [n for _, _, n in refused]) if s != suffix]
        raise UpscaleError(f"the {kind} stream #{index} ({name}) of {probe.path.name} cannot be copied into {suffix}: "
                           f"write " + (" or ".join(takers[:2]) if takers else "another container")
                           + " (streams are copied, never re-encoded)")
    if options.start is not None and options.start < 0 or options.duration is not None and options.duration <= 0:
        raise UpscaleError("--start must be >= 0 and --duration > 0 (seconds)")
    if options.start and probe.duration_s is not None and options.start >= probe.duration_s:
        raise UpscaleError(f"--start {options.start:g} s is past the end of {probe.path.name} "
                           f"({probe.duration_s:.2f} s long)")
    if options.batch < 1:
        raise UpscaleError(f"--batch must be >= 1, got {options.batch}")
    w, h = probe.width * scale, probe.height * scale
    opts = codec_options(codec, options.crf)
    ctx = av.CodecContext.create(codec, "w")
    ctx.width, ctx.height, ctx.pix_fmt = w, h, pix_fmt
    ctx.time_base = probe.time_base
    if probe.rate:
        ctx.framerate = probe.rate
    ctx.options = dict(opts)
    try:
        ctx.open()  # the encoder's own checks (frame size, chroma subsampling, level limits), at no cost
    except av.error.FFmpegError as exc:
        hint = ""
        if (w % 2 or h % 2) and out_fmt.name.startswith(("yuv420", "yuv422", "yuv411", "yuv410", "nv")):
            hint = f"; {pix_fmt} needs even sides: use --pix-fmt yuv444p or --lossless"
        raise UpscaleError(f"{codec} cannot encode {w}x{h} frames (x{scale} of {probe.width}x{probe.height}) "
                           f"as {pix_fmt}: {_reason(exc)}{hint}") from None
    finally:
        del ctx
    return VideoPlan(dst=dst, muxer=muxer, codec=codec, pix_fmt=pix_fmt, options=opts, width=w, height=h,
                     decode_format=decode_format, out_bits=out_bits, copied=copied, notes=notes,
                     start=options.start, duration=options.duration, batch=options.batch)


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
        av = _av()
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
                self.damage = f"{probe.path.name} is damaged at frame {index} ({at}: {_reason(exc)})"
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


class VideoWriter:
    """The output container (in the pipeline's encoder thread): streams are made at the first job (the display
    matrix comes with the first decoded frame), copied packets are muxed as they come, frames encoded."""

    def __init__(self, tmp: str, probe: VideoProbe, plan: VideoPlan, source: FrameSource, count: FrameCount,
                 progress: Optional[Callable[[int], None]] = None):
        av = _av()
        self.av, self.probe, self.plan, self.source, self.count, self.progress = av, probe, plan, source, count, progress
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
        s = out.add_stream(plan.codec, rate=probe.rate) if probe.rate else out.add_stream(plan.codec)
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
        rng = probe.colour["color_range"]
        if not rgb:
            yuvj = probe.pix_fmt.startswith("yuvj")
            self.reformat = {"format": plan.pix_fmt,
                             "dst_colorspace": probe.colour["colorspace"] if probe.colour["colorspace"] not in
                             (UNSPECIFIED, RGB_MATRIX) else None,
                             "dst_color_range": FULL_RANGE if yuvj else rng or None}
        else:
            self.reformat = {"format": plan.pix_fmt}
        self.shift = int(round(self.source.offset_s / probe.time_base))

    def write(self, job: FrameJob) -> None:
        if self.stream is None:
            self._open()
        av = self.av
        for index, pkt in job.packets:
            if self.source.offset_s:
                delta = int(round(self.source.offset_s / pkt.time_base))
                if pkt.pts is not None:
                    pkt.pts -= delta
                if pkt.dts is not None:
                    pkt.dts -= delta
            pkt.stream = self.copies[index]
            self.container.mux(pkt)
        if job.codes is None:
            return
        frame = av.VideoFrame.from_ndarray(job.codes, format="rgb48le" if self.plan.out_bits == 16 else "rgb24")
        frame = frame.reformat(**self.reformat)
        frame.pts = job.pts - self.shift
        frame.time_base = self.probe.time_base
        for pkt in self.stream.encode(frame):
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


def _groups(source, k: int) -> Iterator[List[FrameJob]]:
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

    av = _av()
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
                stats.append(run_pipeline(_groups(source, plan.batch), infer, sink, depth))
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
            raise DiskFullError(f"disk full writing {dst} ({exc.strerror or _reason(exc)}): {count.done} of "
                               f"{count.total or '?'} frames were done, nothing is half-written under {dst.name}; "
                               f"free space and rerun") from None
        except av.error.FFmpegError as exc:
            raise UpscaleError(f"writing {dst.name} with {plan.codec} failed after {count.done} frame(s) "
                               f"({_reason(exc)}); nothing is written under {dst.name}") from None
    seconds = time.perf_counter() - t0
    if source.damage:
        raise UpscaleError(f"{source.damage}; the {count.done} frame(s) before it were upscaled into {dst} "
                           f"(a complete video); replace the input to get the rest")
    return VideoResult(count.done, seconds, stats[0], plan)
