"""What a video is and how its upscaled version will be written, decided before any frame runs: :func:`probe_video`
reads the header (size, pixel format and depth, rate, time base, duration, colour tags, the other streams);
:func:`plan_video` picks the container, codec, options and pixel format from the catalog's defaults and the user's
choices, and refuses in one line what cannot work (an unknown or mismatched codec, lossless into MP4, a stream the
container cannot hold, a window outside the video, a frame size the encoder rejects: it is opened once at the output
size). :mod:`lipt_export.runtime.video` runs the plan."""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from lipt_export.catalog import (CONTAINER_VIDEO_CODEC, DEFAULT_VIDEO_CODEC, LOSSLESS_CONTAINERS,
                                 LOSSLESS_VIDEO_CODEC, VIDEO_CONTAINERS, VIDEO_CRF, VIDEO_PIX_FMTS)
from lipt_export.errors import UpscaleError
from lipt_export.images import SOFTWARE_MARK

COLOUR_TAGS = ("color_primaries", "color_trc", "colorspace", "color_range")
UNSPECIFIED = 2  # AVCOL_*_UNSPECIFIED for primaries, transfer and matrix (range: 0)
RGB_MATRIX, FULL_RANGE = 0, 2  # AVCOL_SPC_RGB, AVCOL_RANGE_JPEG
DROPPED_METADATA = {"encoder", "major_brand", "minor_version", "compatible_brands", "duration", "comment"}
CODEC_HINT = "libx264, libx265, libvpx-vp9, libsvtav1, ffv1, prores_ks"


def pyav():
    """PyAV, with FFmpeg's own logging kept off the terminal: its errors reach us as exceptions (PyAV appends
    the last error line to them), the rest would break the one-line error contract."""
    import av  # deferred: only video runs pay for FFmpeg

    if av.logging.get_level() is None:
        av.logging.set_level(av.logging.ERROR)
        lib = logging.getLogger("libav")
        lib.addHandler(logging.NullHandler())
        lib.propagate = False
    return av


def ffmpeg_reason(exc: BaseException) -> str:
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


def probe_video(path: Path) -> VideoProbe:
    """Open ``path`` and describe its first video stream; one line naming the file when it is not a video."""
    av = pyav()
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
                streams=[(s.index, s.type, _codec_name(s))
                         for s in c.streams if s is not v], comment=comment)
    except av.error.FFmpegError as exc:
        raise UpscaleError(f"cannot read video {path} ({ffmpeg_reason(exc)}): not a video FFmpeg reads, or damaged "
                           f"before its first frame; replace or remove it") from None


def _codec_name(stream) -> str:
    """The codec's canonical name (``subrip``, not the decoder's ``srt``): what a muxer lists as supported."""
    cc = stream.codec_context
    codec = getattr(cc, "codec", None) if cc is not None else None
    return codec.canonical_name if codec is not None else (cc.name if cc is not None else "unknown")


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
    av = pyav()
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
    av = pyav()
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
                           + " or choose another --codec")
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
                           f"as {pix_fmt}: {ffmpeg_reason(exc)}{hint}") from None
    finally:
        del ctx
    return VideoPlan(dst=dst, muxer=muxer, codec=codec, pix_fmt=pix_fmt, options=opts, width=w, height=h,
                     decode_format=decode_format, out_bits=out_bits, copied=copied, notes=notes,
                     start=options.start, duration=options.duration, batch=options.batch)
