"""`lipt-export upscale` on videos (PyAV): every frame upscaled, everything else kept; bit-identical frames for
identical inputs and no seam flicker on a pan; pipelined and memory-bounded; killed, failed and bad runs leave
nothing under the final name and say one line. Clips are made here with PyAV (a few frames of 64x48 and up)."""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from helpers.cli import assert_one_line_error, run_cli, tree
from helpers.video import decoded, make_clip, packets
from lipt_export.images import to_codes
from lipt_export.runtime.pipeline import run_pipeline
from lipt_export.validation.inputs import synthetic_image

ORT = ["--runtime", "onnxruntime", "-q"]  # every run here and its reference: one execution


def _rng_frames(n: int, h: int, w: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    base = (synthetic_image(h, w, seed) * 255).round().astype(np.uint8)
    return [np.clip(base.astype(int) + rng.integers(-30, 30, (h, w, 3)), 0, 255).astype(np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def export(tiny_export):
    return tiny_export  # read-only here


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """12 frames of 64x48 (H.264 in Matroska, BT.709 tags, rotated 90 degrees) with AAC audio and SubRip subtitles."""
    root = tmp_path_factory.mktemp("clip")
    return make_clip(root / "in.mkv", _rng_frames(12, 48, 64), rotation=90,
                     subtitles=[(100, "one"), (500, "two")])


def test_every_frame_is_upscaled_and_everything_else_kept(export, clip, tmp_path):
    out = tmp_path / "out.mkv"
    res = run_cli("upscale", export, clip, out, "--lossless", *ORT)
    assert res.exit_code == 0, res.output
    assert "upscaled 1 video(s) (12 frames" in res.output
    src_frames, src_pts, src_tb, src_rate, src_rot, src_tags = decoded(clip)
    frames, pts, tb, rate, rot, tags = decoded(out)
    assert len(frames) == 12 and [p * tb for p in pts] == [p * src_tb for p in src_pts]
    assert rate == src_rate == 12 and rot == src_rot == 90
    assert tags[:2] == src_tags[:2] == (1, 1) and tags[2:] == (0, 2)  # BT.709 primaries/transfer; RGB, full range
    assert packets(out) == packets(clip) and len(packets(clip)) > 10  # audio remuxed, byte for byte
    assert packets(out, "subtitle") == packets(clip, "subtitle") == [(100, 100, b"one"), (500, 500, b"two")]
    assert frames[0].shape == (96, 128, 3)
    # each output frame equals `upscale` of that decoded frame (ffv1 stores the RGB exactly)
    stills = tmp_path / "stills"
    stills.mkdir()
    for i, rgb in enumerate(src_frames):
        Image.fromarray(rgb).save(stills / f"{i:02d}.png")
    res = run_cli("upscale", export, stills, tmp_path / "up", *ORT)
    assert res.exit_code == 0, res.output
    for i, rgb in enumerate(frames):
        assert np.array_equal(rgb, np.asarray(Image.open(tmp_path / "up" / f"{i:02d}.png"))), i
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mkv", "stills", "up"]  # no temp left


def test_mp4_default_codec_keeps_variable_timestamps_and_colour_tags(export, tmp_path):
    pts = [0, 40, 120, 130, 300, 310, 500]  # ms: a variable frame rate
    src = make_clip(tmp_path / "vfr.mp4", _rng_frames(len(pts), 48, 64, seed=2), pts=pts, audio=False,
                    colour=(5, 6, 5, 1))
    out = tmp_path / "up.mp4"
    res = run_cli("upscale", export, src, out, *ORT)
    assert res.exit_code == 0, res.output
    s_frames, s_pts, s_tb, _, _, s_tags = decoded(src)
    frames, o_pts, o_tb, _, _, tags = decoded(out)
    assert [p * o_tb for p in o_pts] == [p * s_tb for p in s_pts] == [Fraction(p, 1000) for p in pts]
    assert tags == s_tags == (5, 6, 5, 1)  # BT.601 PAL primaries, SMPTE 170M transfer, BT.470BG matrix, TV range
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"
    assert all(f.shape == (96, 128, 3) for f in frames)


def test_start_and_duration_cut_a_clip_starting_at_zero(export, clip, tmp_path):
    out = tmp_path / "cut.mkv"
    res = run_cli("upscale", export, clip, out, "--start", "0.25", "--duration", "0.5", "--lossless", *ORT)
    assert res.exit_code == 0, res.output
    frames, pts, tb, *_ = decoded(out)
    src_frames, src_pts, src_tb, *_ = decoded(clip)
    kept = [i for i, p in enumerate(src_pts) if Fraction(1, 4) <= p * src_tb < Fraction(3, 4)]
    assert len(frames) == len(kept) == 6
    assert pts[0] == 0
    audio = packets(out)
    assert audio and all(0 <= p * Fraction(1, 1000) < Fraction(1, 2) for p, _, _ in audio)


def _tiled_clip(path: Path, frames) -> Path:
    return make_clip(path, frames, codec="ffv1", pix_fmt="bgr0", audio=False, colour=(2, 2, 2, 0))


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino-f32"])
def test_the_same_frame_gives_bit_identical_output_wherever_it_appears(export, tmp_path, runtime):
    """A, B, A, C, A, B: every A (and every B) upscales to the same bits, tiled (3 tiles of 128), batched or not,
    on both CPU runtimes (`auto` picks either)."""
    from lipt_export.runtime.openvino import installed_cpu_runtimes

    if runtime not in installed_cpu_runtimes():
        pytest.skip(f"{runtime} is not installed")
    a, b, c = _rng_frames(3, 80, 136, seed=5)
    src = _tiled_clip(tmp_path / "rep.mkv", [a, b, a, c, a, b])
    outs = {}
    for batch in ("1", "3"):
        out = tmp_path / f"rep{batch}.mkv"
        res = run_cli("upscale", export, src, out, "--lossless", "--tile", "128", "--batch", batch, "--runtime",
                      runtime, "-q")
        assert res.exit_code == 0, res.output
        outs[batch] = decoded(out)[0]
    frames = outs["1"]
    assert np.array_equal(frames[0], frames[2]) and np.array_equal(frames[0], frames[4])
    assert np.array_equal(frames[1], frames[5]) and not np.array_equal(frames[0], frames[1])
    assert all(np.array_equal(x, y) for x, y in zip(frames, outs["3"]))  # batching tiles across frames: same bits


def test_a_slow_pan_has_no_seam_flicker(export, tmp_path):
    """Each tiled output frame of a 1-pixel-per-frame pan against the whole-frame inference of the same frame:
    within the tiled-vs-whole bound proven for images (2 codes for LIPT, tests/test_matrix.py)."""
    from lipt_export import load_runner

    scene = (synthetic_image(80, 144, 9) * 255).round().astype(np.uint8)
    frames = [np.ascontiguousarray(scene[:, k:k + 136]) for k in range(8)]
    src = _tiled_clip(tmp_path / "pan.mkv", frames)
    out = tmp_path / "pan_x2.mkv"
    res = run_cli("upscale", export, src, out, "--lossless", "--tile", "128", *ORT)
    assert res.exit_code == 0, res.output
    whole = load_runner(export, tile=0)
    tiled = decoded(out)[0]
    assert len(tiled) == len(frames)
    worst = 0
    for rgb, got in zip(frames, tiled):
        ref = to_codes(whole.infer(rgb.transpose(2, 0, 1)[None].astype(np.float32) / 255)[0], 8)
        worst = max(worst, int(np.abs(got.astype(int) - ref).max()))
    assert worst <= 2, worst


def test_a_folder_mixes_images_and_videos_and_never_feeds_outputs_back(export, clip, tmp_path):
    folder = tmp_path / "media"
    folder.mkdir()
    Image.fromarray(_rng_frames(1, 20, 24)[0]).save(folder / "a.png")
    (folder / "b.mkv").write_bytes(clip.read_bytes())
    res = run_cli("upscale", export, folder, folder / "x2", *ORT)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (folder / "x2").iterdir()) == ["a.png", "b.mkv"]
    assert "1 image(s) and 1 video(s) (12 frames" in res.output
    res = run_cli("upscale", export, folder / "x2", folder / "x2", *ORT)  # its own outputs: skipped
    assert res.exit_code == 2 and "no images or videos to upscale" in res.stderr


def test_a_killed_run_leaves_no_final_file(export, tmp_path):
    src = _tiled_clip(tmp_path / "long.mkv", _rng_frames(200, 80, 136, seed=3))
    out = tmp_path / "out.mkv"
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        proc = subprocess.Popen([sys.executable, "-m", "lipt_export.cli", "upscale", str(export), str(src), str(out),
                                 "--tile", "0", "--lossless", *ORT], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            temps = list(tmp_path.glob(".out.mkv.*.tmp"))
            if temps and temps[0].stat().st_size > 200_000:  # some frames are in
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert not out.exists()
        if sig == signal.SIGTERM:  # unwinds like Ctrl-C: temp removed, one line with the count
            assert proc.returncode == 130, err
            lines = [ln for ln in err.splitlines() if ln.strip()]
            assert len(lines) == 1 and "interrupted:" in lines[0] and "of 200 frames of out.mkv were done" in lines[0]
            assert not list(tmp_path.glob(".out.mkv.*"))
        else:  # nothing can run on SIGKILL: the temp stays until the next run into the same name removes it
            assert list(tmp_path.glob(".out.mkv.*.tmp"))
    res = run_cli("upscale", export, src, out, "--duration", "0.1", "--lossless", *ORT)
    assert res.exit_code == 0, res.output
    assert "removed 1 temp file(s)" in res.stderr and not list(tmp_path.glob(".out.mkv.*"))


def test_bad_videos_and_options_are_one_line_and_write_nothing(export, clip, tmp_path):
    (tmp_path / "notes.mp4").write_text("not a video")
    cases = [
        (("notes.mp4", "o1.mkv"), (), ["cannot read video", "notes.mp4"]),
        ((clip, "o2.mp4"), ("--lossless",), ["lossless video is ffv1", ".mkv"]),
        ((clip, "o3.webm"), ("--codec", "libx265"), [".webm cannot hold libx265", ".mkv"]),
        ((clip, "o4.webm"), (), ["audio stream #1 (aac)", "cannot be copied into .webm", ".mkv"]),
        ((clip, "o4.mp4"), (), ["subtitle stream #2 (subrip)", "cannot be copied into .mp4", ".mkv"]),
        ((clip, "o5.mkv"), ("--lossless", "--crf", "10"), ["--crf is for", "lossless"]),
        ((clip, "o6.mkv"), ("--crf", "70"), ["outside libx264's range 0..51"]),
        ((clip, "o7.mkv"), ("--pix-fmt", "rgb24"), ["libx264 cannot encode --pix-fmt rgb24"]),
        ((clip, "o8.mkv"), ("--start", "5"), ["past the end", "1.00 s long"]),
        ((clip, "o9.png"), (), ["in.mkv is a video", "not 'o9.png'"]),
        ((clip, "o10.mkv"), ("--codec", "nonesuch"), ["unknown video encoder"]),
    ]
    before = tree(tmp_path)
    for (src, dst), extra, needles in cases:
        src = tmp_path / src if isinstance(src, str) else src
        assert_one_line_error(run_cli("upscale", export, src, tmp_path / dst, *extra, *ORT), *needles)
    assert tree(tmp_path) == before
    img = tmp_path / "still.png"
    Image.fromarray(_rng_frames(1, 20, 24)[0]).save(img)
    assert_one_line_error(run_cli("upscale", export, img, tmp_path / "s.png", "--crf", "20", *ORT),
                          "--crf is for videos")


def test_a_truncated_video_keeps_the_frames_before_the_damage(export, tmp_path):
    src = _tiled_clip(tmp_path / "full.mkv", _rng_frames(24, 48, 64, seed=4))
    data = src.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[:len(data) * 6 // 10])
    out = tmp_path / "out.mkv"
    line = assert_one_line_error(run_cli("upscale", export, cut, out, "--lossless", *ORT),
                                 "cut.mkv ends at frame", "of 2.00 s declared", "truncated or damaged")
    kept = int(line.split("ends at frame ")[1].split()[0])
    assert 5 < kept < 24 and f"the {kept} frame(s) before it were upscaled into" in line
    assert len(decoded(out)[0]) == kept  # a complete video of what could be read
    assert not list(tmp_path.glob(".out.mkv.*"))


def test_a_frame_size_the_encoder_cannot_take(tmp_path):
    """x3 of an odd frame is odd: 4:2:0 output refuses it before any frame runs, naming the fix."""
    from helpers.serving_toys import ConvSR, make_export

    toy = make_export(tmp_path / "toy", ConvSR(scale=3), scale=3, name="toy-x3")
    src = make_clip(tmp_path / "odd.mkv", _rng_frames(3, 47, 63), codec="ffv1", pix_fmt="bgr0", audio=False,
                    colour=(2, 2, 2, 0))
    before = tree(tmp_path)
    assert_one_line_error(run_cli("upscale", toy, src, tmp_path / "o.mkv", *ORT),
                          "libx264 cannot encode 189x141 frames (x3 of 63x47) as yuv420p", "width not divisible by 2",
                          "--pix-fmt yuv444p or --lossless")
    assert tree(tmp_path) == before
    res = run_cli("upscale", toy, src, tmp_path / "o.mkv", "--pix-fmt", "yuv444p", *ORT)
    assert res.exit_code == 0, res.output


def test_read_only_output_and_full_disk(export, clip, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        target = locked if not os.access(locked, os.W_OK) else Path("/proc/sys")  # root ignores modes
        if os.access(target, os.W_OK):
            pytest.skip("no read-only folder to write into here")
        assert_one_line_error(run_cli("upscale", export, clip, target / "o.mkv", *ORT), "is not writable")
    finally:
        locked.chmod(0o755)

    def limit():  # writes past the limit fail with EFBIG: a disk that is full for this process
        resource.setrlimit(resource.RLIMIT_FSIZE, (15_000, 15_000))

    out = tmp_path / "full.mkv"
    res = subprocess.run([sys.executable, "-m", "lipt_export.cli", "upscale", str(export), str(clip), str(out),
                          "--lossless", *ORT], capture_output=True, text=True, preexec_fn=limit, timeout=300)
    assert_one_line_error(res, "disk full writing", "full.mkv", "of 12 frames were done",
                          "nothing is half-written under full.mkv")
    assert not out.exists() and not list(tmp_path.glob(".full.mkv.*"))


def test_the_pipeline_is_ordered_bounded_and_stops_on_any_failure():
    produced, consumed, ahead = [0], [], [0]

    def source():
        for i in range(40):
            produced[0] += 1
            ahead[0] = max(ahead[0], produced[0] - len(consumed))
            yield i

    def sink(x):
        time.sleep(0.002)
        consumed.append(x)

    stats = run_pipeline(source(), lambda x: x * 2, sink, depth=2)
    assert consumed == [2 * i for i in range(40)] and stats.items == 40
    assert ahead[0] <= 2 + 2 + 3  # two queues of 2, one item in each stage
    for stage in ("source", "work", "sink"):
        def boom(x, where=stage):
            if x == 5:
                raise RuntimeError(f"{where} failed")
            return x

        def gen():
            for i in range(100):
                yield boom(i) if stage == "source" else i

        before = threading.active_count()
        with pytest.raises(RuntimeError, match=f"{stage} failed"):
            run_pipeline(gen(), boom if stage == "work" else (lambda x: x),
                         boom if stage == "sink" else (lambda x: None), depth=2)
        assert threading.active_count() == before  # every stage stopped


def test_a_failure_in_inference_still_writes_what_was_already_inferred():
    """Item 1 waits in front of a slow encoder when inference fails on item 2: it is still written (a full disk in
    one image's spill file must not lose the previous image), then the inference failure is raised; Ctrl-C is not
    held up this way."""
    written = []

    def sink(x):
        time.sleep(0.3 if x == 0 else 0)
        written.append(x)

    def work(x):
        if x == 2:
            raise OSError("no space left")
        return x

    with pytest.raises(OSError, match="no space left"):
        run_pipeline(iter(range(5)), work, sink, depth=1)
    assert written == [0, 1]
