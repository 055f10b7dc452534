"""A video cut at keyframes, each segment upscaled alone and the segments joined without re-encoding (what
`upscale --ray` does across workers; here in one process, no Ray): the frame count, timestamps, rate, colour tags
and audio equal a local run's, for MKV (FFV1, lossless: the same pixels) and for MP4 with x264's B-frames
(negative dts; a short last segment without B-frames)."""
from __future__ import annotations

import numpy as np
import pytest

from helpers.video import decoded, make_clip, packets
from lipt_export.runtime.loader import open_artifact
from lipt_export.runtime.resolve import resolve
from lipt_export.runtime.video import VideoOptions, plan_video, probe_video, upscale_video
from lipt_export.runtime.video_segments import SegmentJoiner, split_segments, upscale_segment


@pytest.mark.parametrize("suffix,lossless", [(".mkv", True), (".mp4", False)])
def test_segments_join_like_a_local_run(tiny_export, tmp_path, suffix, lossless):
    rng = np.random.default_rng(3)
    src = make_clip(tmp_path / "clip.mkv", [rng.integers(0, 256, (24, 32, 3), np.uint8) for _ in range(14)],
                    keyint=4)
    runner = resolve(open_artifact(tiny_export), runtime="onnxruntime").tiled_runner()
    probe, opts = probe_video(src), VideoOptions(lossless=lossless)
    local, joined = tmp_path / f"local{suffix}", tmp_path / f"joined{suffix}"
    upscale_video(runner, src, local, plan=plan_video(probe, local, 2, opts), progress_bar=False)
    plan = plan_video(probe, joined, 2, opts)
    segments = list(split_segments(probe, 3))
    assert [len(s.packets) for s in segments] == [4, 4, 4, 2]  # cut at every keyframe once 3 frames are in
    joiner = SegmentJoiner(probe, plan)
    for seg in reversed(segments):  # out of order: later segments wait for the earlier ones
        joiner.add(upscale_segment(runner, probe, plan, seg))
    joiner.finish(len(segments))
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]
    a, b = decoded(local), decoded(joined)
    assert len(a[0]) == len(b[0]) == 14 and a[1:] == b[1:]  # timestamps, time base, rate, rotation, colour tags
    if lossless:
        assert all(np.array_equal(x, y) for x, y in zip(a[0], b[0]))
    assert packets(local) == packets(joined)  # the audio, packet for packet
    # the video packets' timestamps: the same pts (in another decode order where the segments' GOPs differ from
    # the single encoder's) and the same dts sequence (the segments' encoder delays joined into one)
    va, vb = packets(local, "video"), packets(joined, "video")
    assert sorted(p[0] for p in va) == sorted(p[0] for p in vb) and [p[1] for p in va] == [p[1] for p in vb]
