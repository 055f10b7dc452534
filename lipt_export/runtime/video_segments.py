"""A video in segments, for runs spread over many workers (:mod:`lipt_export.runtime.distributed`): cut at the
source's keyframes without decoding (:func:`split_segments`), each segment decoded, upscaled and encoded on its own
(:func:`upscale_segment`, the same stages and encoder settings as :func:`lipt_export.runtime.video.upscale_video`),
and the encoded packets joined into one file without re-encoding (:class:`SegmentJoiner`), the audio and subtitle
streams remuxed from the source once.

* **Cuts.** A segment starts at a keyframe packet (in decode order) and holds the packets up to the next cut, so it
  decodes alone; the frames it decodes must be exactly the frames whose packets it holds (their timestamps are
  compared), else the video cannot be cut there (open GOPs) and is refused in one line.
* **Same frames, same times.** Each frame is decoded with the source's codec parameters and colour tags, converted
  and upscaled as a local run does it, and encoded with its own pts; so the frame count, every timestamp and the
  copied streams' packets equal a local run's. The encoded bytes equal it for codecs whose frames do not depend on
  earlier ones of the same encoder; otherwise (x264, and FFV1, whose frames share context state inside its GOP) each
  segment starts its own GOP: the same frames, encoded differently (lossless outputs decode to identical pixels).
* **Joined without re-encoding.** Every segment's encoder must produce the same codec header (extradata) as the
  output stream's; each segment starts with a keyframe, so its packets follow the previous segment's as they are.
"""
from __future__ import annotations

import io
import math
import os
import tempfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

from lipt_export.catalog import RAY_MIN_SEGMENT_FRAMES, RAY_SEGMENTS_PER_WORKER
from lipt_export.errors import UpscaleError
from lipt_export.fileio import temp_prefix, umask_mode
from lipt_export.runtime.pipeline import run_pipeline
from lipt_export.runtime.tiling import TiledRunner
from lipt_export.runtime.video import (FrameCount, FrameJob, VideoWriter, _display_matrix, add_video_stream,
                                       check_frame_fits, encode_frame, frame_groups, frame_inference)
from lipt_export.runtime.video_plan import COLOUR_TAGS, VideoPlan, VideoProbe, ffmpeg_reason, pyav

EncodedPacket = Tuple[bytes, Optional[int], Optional[int], int, bool]  # data, pts, dts, duration, keyframe


@dataclass
class SegmentInput:
    """What a worker needs to decode one segment: the codec's parameters and the segment's packets."""

    index: int
    codec: str
    extradata: Optional[bytes]
    width: int
    height: int
    pix_fmt: str
    time_base: Fraction
    packets: List[Tuple[bytes, Optional[int], Optional[int], bool]]  # data, pts, dts, keyframe (decode order)

    @property
    def pts(self) -> List[int]:
        return sorted(p[1] for p in self.packets)

    @property
    def start_s(self) -> float:
        return float(min(self.pts) * self.time_base)


@dataclass
class SegmentResult:
    """A segment's encoded packets (in the encoder's order) and what the joiner checks."""

    index: int
    frames: int
    time_base: Fraction
    extradata: Optional[bytes]
    packets: List[EncodedPacket]
    rotation: List[int] = field(default_factory=list)  # the first frame's display matrix


def segment_frames(probe: VideoProbe, workers: int) -> int:
    """Frames per segment: about :data:`RAY_SEGMENTS_PER_WORKER` segments per worker, never fewer frames than
    :data:`RAY_MIN_SEGMENT_FRAMES` (cuts fall on the next keyframe, so a segment is at least one GOP)."""
    total = probe.frames_estimate() or RAY_MIN_SEGMENT_FRAMES
    return max(RAY_MIN_SEGMENT_FRAMES, math.ceil(total / max(1, workers * RAY_SEGMENTS_PER_WORKER)))


def split_segments(probe: VideoProbe, frames_per_segment: int) -> Iterator[SegmentInput]:
    """The source's video packets cut at keyframes into segments of at least ``frames_per_segment`` packets,
    demuxed only (no decoding), one segment at a time (memory: one segment's compressed packets)."""
    av = pyav()
    try:
        with av.open(str(probe.path), metadata_errors="replace") as c:
            v = c.streams.video[0]
            cc = v.codec_context
            extradata = bytes(cc.extradata) if cc.extradata else None

            def segment(index: int, packets) -> SegmentInput:
                return SegmentInput(index, cc.name, extradata, cc.width, cc.height, cc.pix_fmt, v.time_base,
                                    packets)

            current: List[Tuple[bytes, Optional[int], Optional[int], bool]] = []
            index = 0
            for pkt in c.demux(v):
                if pkt.size == 0 or (pkt.pts is None and pkt.dts is None):
                    continue  # the demuxer's end-of-stream marker
                if pkt.pts is None:
                    raise UpscaleError(f"{probe.path.name} has video packets without timestamps, so it cannot be "
                                       f"cut into segments; upscale it without --ray")
                if pkt.is_keyframe and len(current) >= frames_per_segment:
                    yield segment(index, current)
                    current, index = [], index + 1
                current.append((bytes(pkt), pkt.pts, pkt.dts, bool(pkt.is_keyframe)))
            if current:
                yield segment(index, current)
    except av.error.FFmpegError as exc:
        raise UpscaleError(f"cannot cut {probe.path.name} into segments ({ffmpeg_reason(exc)}); upscale it "
                           f"without --ray") from None


def _decoder(probe: VideoProbe, seg: SegmentInput):
    """A decoder with the source stream's parameters (what opening the file would give it, colour tags included:
    the RGB conversion reads them)."""
    av = pyav()
    ctx = av.CodecContext.create(seg.codec, "r")
    if seg.extradata:
        ctx.extradata = seg.extradata
    ctx.width, ctx.height = seg.width, seg.height
    if seg.pix_fmt:
        ctx.pix_fmt = seg.pix_fmt
    for key in COLOUR_TAGS:
        setattr(ctx, key, probe.colour[key])
    ctx.thread_type = "AUTO"
    return ctx


def upscale_segment(runner: TiledRunner, probe: VideoProbe, plan: VideoPlan, seg: SegmentInput) -> SegmentResult:
    """Decode -> infer -> encode one segment (pipelined as a local video), returning the encoded packets."""
    av = pyav()
    check_frame_fits(runner, probe)  # a frame run whole must fit this worker's memory, as locally
    ctx = _decoder(probe, seg)
    rotation: List[List[int]] = []
    decoded: List[int] = []

    def source() -> Iterator[FrameJob]:
        def frames():
            for data, pts, dts, key in seg.packets:
                pkt = av.Packet(data)
                pkt.pts, pkt.dts, pkt.time_base, pkt.is_keyframe = pts, dts, seg.time_base, key
                yield from ctx.decode(pkt)
            yield from ctx.decode(None)

        for frame in frames():
            if (frame.width, frame.height) != (probe.width, probe.height):
                raise UpscaleError(f"{probe.path.name}: a frame at {float(frame.pts * seg.time_base):.3f} s is "
                                   f"{frame.width}x{frame.height}, the video started at {probe.width}x{probe.height}")
            if not rotation:
                rotation.append(_display_matrix(frame))
            decoded.append(frame.pts)
            yield FrameJob(len(decoded) - 1, frame.pts, frame.to_ndarray(format=plan.decode_format), [])

    container = av.open(io.BytesIO(), "w", format=plan.muxer)  # the output's muxer: the same codec flags
    stream, reformat = add_video_stream(container, probe, plan)
    packets: List[EncodedPacket] = []
    time_base: List[Fraction] = []

    def keep(pkts) -> None:
        for p in pkts:
            time_base[:1] = [p.time_base]
            packets.append((bytes(p), p.pts, p.dts, p.duration or 0, bool(p.is_keyframe)))

    def sink(jobs: List[FrameJob]) -> None:
        for job in jobs:
            if job.codes is not None:
                keep(encode_frame(stream, reformat, plan, job.codes, job.pts, probe.time_base))

    try:
        run_pipeline(frame_groups(source(), plan.batch), frame_inference(runner, plan), sink, depth=2)
        keep(stream.encode(None))
        extradata = bytes(stream.codec_context.extradata) if stream.codec_context.extradata else None
    except av.error.FFmpegError as exc:
        raise UpscaleError(f"{probe.path.name}: the segment at {seg.start_s:.2f} s failed ({ffmpeg_reason(exc)}); "
                           f"upscale it without --ray to keep the frames before the damage") from None
    finally:
        try:
            container.close()
        except Exception:  # noqa: BLE001 - nothing was written to it; the failure above is what counts
            pass
    if sorted(decoded) != seg.pts:
        raise UpscaleError(f"{probe.path.name}: the segment at {seg.start_s:.2f} s decodes to {len(decoded)} frame(s) "
                           f"but holds {len(seg.packets)} packet(s): the video cannot be cut at its keyframes (open "
                           f"GOPs); upscale it without --ray")
    return SegmentResult(seg.index, len(decoded), time_base[0] if time_base else probe.time_base, extradata,
                         packets, rotation[0] if rotation else [])


class _JoinSource:
    """What :class:`VideoWriter` reads of its frame source: the display matrix and the clip offset (none)."""

    def __init__(self, rotation: List[int]):
        self.rotation, self.offset_s = rotation, 0.0


class SegmentJoiner:
    """The output of one video: segments' packets muxed in order as they arrive (out-of-order ones wait), the
    source's other streams remuxed between them by time, all under a temp name renamed when complete."""

    def __init__(self, probe: VideoProbe, plan: VideoPlan, count: Optional[FrameCount] = None):
        self.probe, self.plan = probe, plan
        self.count = count if count is not None else FrameCount()
        self.dst = Path(plan.dst)
        fd, self.tmp = tempfile.mkstemp(prefix=temp_prefix(f".{self.dst.name}."), suffix=".tmp",
                                        dir=str(self.dst.parent))
        os.close(fd)
        self.writer: Optional[VideoWriter] = None
        self.next = 0
        self.waiting = {}
        self.copied = None  # (index, packet) of the copied streams, in the source's order
        self.peek = None
        self.delay: Optional[int] = None  # the video's reorder depth, from its first segment
        self.shown: List[int] = []  # every joined frame's pts, in presentation order
        self.decoded = 0  # packets joined so far

    def add(self, result: SegmentResult) -> int:
        """Take a finished segment; returns how many frames were joined now."""
        self.waiting[result.index] = result
        joined = 0
        while self.next in self.waiting:
            joined += self._join(self.waiting.pop(self.next))
            self.next += 1
        return joined

    def _copied_until(self, t: Optional[float]) -> None:
        """Mux the copied streams' packets that come before time ``t`` (all of them: None)."""
        while True:
            if self.peek is None:
                self.peek = next(self.copied, None)
                if self.peek is None:
                    return
            _, pkt = self.peek
            ts = pkt.dts if pkt.dts is not None else pkt.pts
            if t is not None and ts is not None and float(ts * pkt.time_base) >= t:
                return
            self.writer.mux_copied([self.peek])
            self.peek = None

    def _decode_times(self, seg: SegmentResult) -> List[Optional[int]]:
        """The dts of the segment's packets as one encoder over the whole video gives them: packet ``i`` (in decode
        order, counted over the video) decodes at the presentation time of frame ``i - delay``, where ``delay`` is the
        first segment's reorder depth (its packets decoded before its first frame is shown; B-frames). Each
        segment's own encoder starts that count afresh (a short segment may have no B-frames at all), which would
        leave jumps in the dts where segments meet; a segment reordering deeper than the first keeps its own."""
        if self.delay is None:
            first = min(p[1] for p in seg.packets)
            self.delay = sum(1 for p in seg.packets if p[2] is not None and p[2] < first)
        self.shown.extend(sorted(p[1] for p in seg.packets))
        out = []
        for data, pts, dts, duration, key in seg.packets:
            i = self.decoded - self.delay
            out.append(dts if i < 0 else self.shown[i])
            self.decoded += 1
        if any(d is not None and d > p[1] for d, p in zip(out, seg.packets)):
            return [p[2] for p in seg.packets]
        return out

    def _join(self, seg: SegmentResult) -> int:
        av = pyav()
        if self.writer is None:
            self.writer = VideoWriter(self.tmp, self.probe, self.plan, _JoinSource(seg.rotation), self.count)
            self.writer._open()
            self.copied = self._copied_packets()
        stream = self.writer.stream
        for (data, pts, _, duration, key), dts in zip(seg.packets, self._decode_times(seg)):
            self._copied_until(float((dts if dts is not None else pts) * seg.time_base))
            pkt = av.Packet(data)
            pkt.pts, pkt.dts, pkt.duration, pkt.time_base, pkt.is_keyframe = pts, dts, duration, seg.time_base, key
            pkt.stream = stream
            self.writer.container.mux(pkt)
            header = stream.codec_context.extradata
            if (bytes(header) if header else None) != seg.extradata:
                raise UpscaleError(f"{self.dst.name}: segment {seg.index} was encoded with another codec header "
                                   f"than the output's ({self.plan.codec} settings differ between workers), so the "
                                   f"segments cannot be joined without re-encoding; upscale it without --ray")
        self.count.done += seg.frames
        return seg.frames

    def _copied_packets(self) -> Iterator[Tuple[int, Any]]:
        if not self.plan.copied:
            return iter(())
        av = pyav()

        def gen():
            with av.open(str(self.probe.path), metadata_errors="replace") as c:
                streams = [s for s in c.streams if s.index in self.plan.copied]
                for pkt in c.demux(streams):
                    if pkt.dts is None and pkt.pts is None:
                        continue  # the demuxer's end-of-stream marker
                    yield pkt.stream.index, pkt

        return gen()

    def finish(self, segments: int) -> None:
        """All ``segments`` joined: the rest of the copied streams, the trailer, the rename."""
        if self.next != segments or self.writer is None:
            raise UpscaleError(f"{self.dst.name}: {self.next} of {segments} segment(s) joined; nothing written")
        self._copied_until(None)
        self.writer.finish()
        self.writer.close()
        self.copied = None
        os.chmod(self.tmp, umask_mode())
        os.replace(self.tmp, self.dst)

    def abort(self) -> None:
        """Remove the temp output (a failure or Ctrl-C): nothing half-written is left under the output's name."""
        if self.writer is not None:
            self.writer.close()
        self.copied = None
        Path(self.tmp).unlink(missing_ok=True)
