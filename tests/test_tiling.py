"""Tiled inference: layout and blending invariants, and tiled == whole-image inference on real networks
(eager PyTorch) wherever the receptive field fits in the overlap margin."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from lipt_export.runtime.eager import TorchRunner
from lipt_export.runtime.tiling import ProfileFitRunner, TiledRunner, axis_arcs, axis_weights
from lipt_export.validation.inputs import natural_inputs
from lipt_export.validation.parity import rel_l2
from helpers.serving_toys import ConvSR, CyclicSR, WindowSR


def _unrolled(arc):
    return arc.start, arc.start + arc.size


@pytest.mark.parametrize("align", [1, 8])
def test_axis_arcs_cover_the_cycle_aligned_and_overlapping(align):
    for length, tile, overlap in itertools.product((5, 64, 65, 100, 257, 1000), (48, 64, 128), (0, 8, 16)):
        arcs = axis_arcs(length, tile, overlap, align)
        if length <= tile:
            assert [(a.start, a.size) for a in arcs] == [(0, length)]
            continue
        assert arcs[0].start == 0
        for a in arcs:
            assert a.size <= tile and a.start % align == 0 and a.head % align == 0
            assert sum(e - s for s, e in a.segments()) == a.size
        nexts = [a.start for a in arcs[1:]] + [length]  # the last arc meets the first across the border
        for a, nxt in zip(arcs, nexts):
            assert a.start < nxt and _unrolled(a)[1] - nxt >= overlap


def test_axis_arcs_reject_tile_too_small_for_overlap():
    with pytest.raises(ValueError, match="too small"):
        axis_arcs(500, 40, 32, 8)


@pytest.mark.parametrize("blend", [0.0, 0.25, 1.0])
def test_axis_weights_are_a_partition_of_unity_with_clean_margins(blend):
    scale, overlap, length = 3, 16, 300
    arcs = axis_arcs(length, 64, overlap, 8)
    weights = axis_weights(arcs, scale, blend)
    total = np.zeros(length * scale)
    margin = int(scale * overlap * (1 - blend) / 2)  # output pixels next to a tile's inner edge never count
    for a, w in zip(arcs, weights):
        assert w.shape == (scale * a.size,)
        pos = 0
        for s, e in a.segments():  # weights come in stacking order
            total[scale * s:scale * e] += w[pos:pos + scale * (e - s)]
            pos += scale * (e - s)
        unrolled = np.concatenate([w[scale * a.head:], w[:scale * a.head]]) if a.head else w
        if margin:
            assert np.all(unrolled[:margin] == 0) and np.all(unrolled[-margin:] == 0)
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


@pytest.fixture(scope="module")
def conv_runner():
    return TorchRunner(ConvSR(scale=2), name="conv")


@pytest.mark.parametrize("hw,tile,overlap", [((70, 93), 32, 8), ((64, 64), 40, 12), ((37, 130), (24, 48), 8)])
def test_tiled_equals_whole_image_for_limited_receptive_field(conv_runner, hw, tile, overlap):
    (x,) = natural_inputs([hw], seed=5)
    whole = conv_runner.infer(x)
    tiled = TiledRunner(conv_runner, scale=2, tile=tile, overlap=overlap)
    assert tiled.count_tiles(*hw) > 1
    out = tiled.infer(x)
    assert out.shape == whole.shape
    assert rel_l2(out, whole) < 1e-6


def test_too_little_overlap_shows_seams(conv_runner):
    """The equality above is not automatic: with no overlap the tile borders differ from whole-image."""
    (x,) = natural_inputs([(70, 93)], seed=5)
    out = TiledRunner(conv_runner, scale=2, tile=32, overlap=0, blend=0.0).infer(x)
    assert rel_l2(out, conv_runner.infer(x)) > 1e-3


def test_window_model_needs_window_aligned_tiles():
    runner = TorchRunner(WindowSR(scale=2), name="window")
    (x,) = natural_inputs([(75, 101)], seed=2)
    whole = runner.infer(x)
    aligned = TiledRunner(runner, scale=2, tile=64, overlap=32, multiple_of=8).infer(x)
    unaligned = TiledRunner(runner, scale=2, tile=64, overlap=32, multiple_of=1).infer(x)
    assert rel_l2(aligned, whole) < 1e-6
    assert rel_l2(unaligned, whole) > 1e-3


def test_cyclic_model_is_exact_up_to_the_borders():
    """A model that rolls its features cyclically (like LIPT's shifted windows) makes each border depend on
    the opposite one; tiles that wrap around the border reproduce that exactly."""
    runner = TorchRunner(CyclicSR(scale=2), name="cyclic")
    (x,) = natural_inputs([(75, 101)], seed=6)
    whole = runner.infer(x)
    out = TiledRunner(runner, scale=2, tile=48, overlap=24, multiple_of=8).infer(x)
    assert rel_l2(out, whole) < 1e-6
    # Stacking the border tile as [head; tail] matters: taken in image order it breaks the wrap.
    assert rel_l2(runner.infer(np.concatenate([x[:, :, :, 80:], x[:, :, :, :24]], axis=3))[:, :, :, 42:],
                  whole[:, :, :, :48]) > 1e-3


def test_batch_scale_probe_and_preallocated_output(conv_runner):
    xs = np.concatenate(natural_inputs([(40, 52), (40, 52)], seed=9))
    tiled = TiledRunner(conv_runner, scale=None, tile=24, overlap=8)  # scale measured from the first tile
    out = tiled.infer(xs)
    assert tiled.scale == 2 and out.shape == (2, 3, 80, 104)
    assert rel_l2(out, conv_runner.infer(xs)) < 1e-6
    buf = np.full((3, 80, 104), 7.0, np.float32)
    res = tiled.infer_into(xs[1], out=buf)
    assert res is buf and rel_l2(buf, out[1]) < 1e-7
    with pytest.raises(ValueError, match="expected"):
        tiled.infer_into(xs[1], out=np.zeros((3, 80, 100), np.float32))


def test_profile_fit_runner_tiles_pads_and_splits(conv_runner):
    fit = ProfileFitRunner(conv_runner, scale=2, min_hw=(16, 16), max_hw=(32, 32), max_batch=1, overlap=8)
    big = np.concatenate(natural_inputs([(45, 70), (45, 70)], seed=4))
    assert fit.infer(big).shape == (2, 3, 90, 140)
    assert rel_l2(fit.infer(big), conv_runner.infer(big)) < 1e-6  # batch split + tiled, still exact
    (small,) = natural_inputs([(9, 12)], seed=4)
    out = fit.infer(small)
    assert out.shape == (1, 3, 18, 24)
    # Padding only changes pixels within the receptive field of the padded border.
    assert rel_l2(out[:, :, :12, :18], conv_runner.infer(small)[:, :, :12, :18]) < 1e-6


def test_tiles_summed_in_a_file_equal_the_streamed_rows(tmp_path):
    """upscale's path (weighted tiles summed in a temporary file) gives the rows infer_rows gives, wrap-around
    tiles included, and leaves no file behind."""
    from lipt_export.runtime.spill import ROW_BLOCK_BYTES, infer_rows_spilled

    runner = TiledRunner(TorchRunner(WindowSR(2).eval()), 2, 32, 8, 8)
    lr = natural_inputs([(70, 45)], seed=5)[0][0]
    expected = runner.infer_into(lr)
    got = np.full_like(expected, np.nan)
    firsts = []

    def sink(r0, block):
        firsts.append(r0)
        got[:, r0:r0 + block.shape[1]] = block

    infer_rows_spilled(runner, lr, sink, tmp_path)
    assert firsts == sorted(firsts) and firsts[0] == 0
    assert np.abs(got - expected).max() <= 1e-6  # the same terms, summed in another order where 4 tiles meet
    assert list(tmp_path.iterdir()) == []
    assert ROW_BLOCK_BYTES >= 4 * 3 * got.shape[2]


def test_images_are_held_as_their_codes_and_read_as_the_float_image(tmp_path):
    from PIL import Image

    from lipt_export.images import load_image, read_rgb

    rng = np.random.default_rng(0)
    rgb8 = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    gray16 = rng.integers(0, 65536, (13, 17), dtype=np.uint16)
    Image.fromarray(rgb8).save(tmp_path / "rgb.png")
    Image.fromarray(gray16).save(tmp_path / "gray16.png")
    img = load_image(tmp_path / "rgb.png")
    assert img.rgb.codes.dtype == np.uint8 and img.rgb.shape == (3, 13, 17)
    full = rgb8.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    assert np.array_equal(np.asarray(img.rgb), full)
    assert np.array_equal(img.rgb[None, :, 2:9, 3:11], full[None, :, 2:9, 3:11])
    assert np.array_equal(img.rgb[:, 4:6], full[:, 4:6])
    assert np.array_equal(read_rgb(tmp_path / "rgb.png"), rgb8)
    g = load_image(tmp_path / "gray16.png")
    assert g.gray and g.bits == 16 and g.rgb.codes.dtype == np.uint16
    assert np.array_equal(np.asarray(g.rgb), np.repeat((gray16.astype(np.float32) / np.float32(65535.0))[None], 3, 0))
