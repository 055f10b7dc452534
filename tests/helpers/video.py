"""Short clips made with PyAV for the video tests, and what a decoded video holds."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def make_clip(path: Path, frames, *, rate=12, pts=None, codec="libx264", pix_fmt="yuv420p", audio=True,
              rotation=0, colour=(1, 1, 1, 1), subtitles=(), keyint=None) -> Path:
    """A clip of ``frames`` (uint8 HxWx3 RGB) with optional AAC audio, SubRip subtitles ((ms, text) pairs), display
    rotation and colour tags; ``keyint``: a keyframe every that many frames (x264), e.g. to cut it into segments."""
    fmt = {".mkv": "matroska", ".mp4": "mp4", ".webm": "webm"}[path.suffix]
    with av.open(str(path), "w", format=fmt) as out:
        v = out.add_stream(codec, rate=rate)
        h, w = frames[0].shape[:2]
        v.width, v.height, v.pix_fmt = w, h, pix_fmt
        if pts is not None:
            v.codec_context.time_base = Fraction(1, 1000)
        for key, value in zip(("color_primaries", "color_trc", "colorspace", "color_range"), colour):
            setattr(v.codec_context, key, value)
        if codec == "libx264":
            v.codec_context.options = {"crf": "10", "preset": "ultrafast", **({"g": str(keyint)} if keyint else {})}
        if rotation:
            v.set_display_rotation(rotation)
        a = out.add_stream("aac", rate=48000) if audio else None
        sub = out.add_mux_stream("subrip") if subtitles else None
        if sub is not None:
            sub.time_base = Fraction(1, 1000)
        if a is not None:
            a.layout = "stereo"
        for i, rgb in enumerate(frames):
            f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if not av.VideoFormat(pix_fmt).is_rgb:
                f = f.reformat(format=pix_fmt, dst_colorspace=colour[2], dst_color_range=colour[3])
            else:
                f = f.reformat(format=pix_fmt)
            f.pts = i if pts is None else pts[i]
            if pts is not None:
                f.time_base = Fraction(1, 1000)
            for p in v.encode(f):
                out.mux(p)
        if a is not None:
            t = np.arange(int(48000 * len(frames) / rate)) / 48000
            tone = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
            for k in range(0, len(tone) - 1024 + 1, 1024):
                af = av.AudioFrame.from_ndarray(np.repeat(tone[k:k + 1024], 2)[None], format="s16", layout="stereo")
                af.sample_rate, af.pts = 48000, k
                for p in a.encode(af):
                    out.mux(p)
            for p in a.encode(None):
                out.mux(p)
        for p in v.encode(None):
            out.mux(p)
        for ms, text in subtitles:
            p = av.Packet(text.encode())
            p.stream, p.pts, p.dts, p.duration, p.time_base = sub, ms, ms, 200, Fraction(1, 1000)
            out.mux(p)
    return path


def decoded(path: Path):
    """(frames as rgb24, their pts, time base, average rate, first frame's rotation, the stream's colour tags)."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        cc = v.codec_context
        tags = tuple(int(getattr(cc, k)) for k in ("color_primaries", "color_trc", "colorspace", "color_range"))
        frames = list(c.decode(v))
        return ([f.to_ndarray(format="rgb24") for f in frames], [f.pts for f in frames], v.time_base,
                v.average_rate, frames[0].rotation if frames else None, tags)


def packets(path: Path, kind: str = "audio"):
    with av.open(str(path)) as c:
        s = [x for x in c.streams if x.type == kind][0]
        return [(p.pts, p.dts, bytes(p)) for p in c.demux(s) if p.size]
