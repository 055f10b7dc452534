"""The NVSM sparse re-sampling pi and the attention unit against independent references.

The pi reference below is the official definition (Lucien66/LIPT ``MASK``, 'sparse' mode): pad ws rows at the
bottom and ws columns at the right, fill them with the first ws rows/columns (wrap), unfold 2ws x 2ws patches
with stride ws, keep the offsets of the literal official boolean masks, rearrange
'b c hh hw h w -> b c (hh w) (hw h)'. Our graph uses gathers with computed indices instead.
"""
from __future__ import annotations

import pytest
import torch

from lipt_export.models.lipt.nvsm import NVSMAttention, official_sparse_mask, sparse_indices, sparse_resample

# The literal masks from the official code (mask_1/mask_2 for ws 8, mask_3/mask_4 for ws 16).
OFFICIAL_MASKS = {
    8: [1, 0, 1, 0, 1, 0, 1, 0, 0, 1, 0, 1, 0, 1, 0, 1],
    16: [1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1],
}


def official_pi(x: torch.Tensor, ws: int) -> torch.Tensor:
    mask = torch.tensor(OFFICIAL_MASKS[ws], dtype=torch.bool)
    xp = torch.nn.functional.pad(x, (0, ws, 0, ws))
    xp[:, :, -ws:, :] = xp[:, :, :ws, :]
    xp[:, :, :, -ws:] = xp[:, :, :, :ws]
    un = xp.unfold(3, 2 * ws, ws).unfold(2, 2 * ws, ws)  # b c hh hw (w-offset) (h-offset)
    sel = un[:, :, :, :, mask, :][:, :, :, :, :, mask]
    b, c, hh, hw, nw, nh = sel.shape
    return sel.permute(0, 1, 2, 5, 3, 4).reshape(b, c, hh * nh, hw * nw)


def offsets(ws: int) -> torch.Tensor:
    return NVSMAttention(4, shift=False, window_sizes=(ws, ws)).sparse_offsets


@pytest.mark.parametrize("ws", [8, 16])
def test_mask_generator_matches_official_literal(ws):
    assert official_sparse_mask(ws) == OFFICIAL_MASKS[ws]


# sizes are multiples of ws (the network pads first), with odd and even window counts and a single window
@pytest.mark.parametrize("ws,h,w", [(8, 8, 8), (8, 40, 56), (8, 24, 16), (16, 16, 16), (16, 48, 80),
                                    (16, 32, 64)])
def test_pi_equals_official_definition(ws, h, w):
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h * 1000 + w))
    ours = sparse_resample(x, ws, offsets(ws))
    assert torch.equal(ours, official_pi(x, ws))


@pytest.mark.parametrize("ws,size", [(8, 8), (8, 40), (8, 56), (16, 16), (16, 48), (16, 80)])
def test_pi_is_a_permutation(ws, size):
    idx = sparse_indices(size, ws, offsets(ws))
    assert torch.equal(torch.sort(idx).values, torch.arange(size))
    # each window samples its own window (even offsets) and the next one (odd offsets), wrapping at the end
    assert idx[:ws // 2].tolist() == list(range(0, ws, 2))
    assert idx[size - ws // 2:].tolist() == [(size - ws + o) % size for o in range(ws + 1, 2 * ws, 2)]


def test_pi_after_network_padding_of_odd_sizes():
    """37 x 51 is reflect-padded to 40 x 56 by the network; pi then runs on the padded map."""
    from lipt_export.models.lipt import build_lipt

    model = build_lipt("tiny", 2, deploy=True).eval()
    seen = []
    att = model.body[1].modules_nvsm_sa["smmsa_0"]
    handle = att.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    with torch.no_grad():
        y = model(torch.rand(1, 3, 37, 51) * 255)
    handle.remove()
    assert y.shape == (1, 3, 74, 102) and seen[0][2:] == (40, 56)


def reference_nvsm(att: NVSMAttention, x: torch.Tensor, prev=None):
    """Loop-over-windows reference of one NVSM unit, written from the behaviour description: shared q/k with
    unscaled logits, dense branch 0, branch 1 through the official pi (unit 0 only), roll for shifted blocks,
    no inverse pi."""
    b, _, h, w = x.shape
    proj = att.project_inp(x)
    halves = torch.split(proj, proj.shape[1] // 2, dim=1)
    outs, maps = [], []
    for idx, z in enumerate(halves):
        ws = att.window_sizes[idx]
        if att.shift:
            z = torch.roll(z, (-(ws // 2), -(ws // 2)), (2, 3))
        if prev is None and idx == 1:
            z = official_pi(z, ws)
        y = torch.zeros(b, z.shape[1] if prev is not None else z.shape[1] // 2, h, w, dtype=x.dtype)
        branch_maps, k = [], 0
        for bi in range(b):
            for i in range(h // ws):
                for j in range(w // ws):
                    win = z[bi, :, i * ws:(i + 1) * ws, j * ws:(j + 1) * ws].reshape(z.shape[1], -1).T
                    if prev is None:
                        q, v = win[:, : win.shape[1] // 2], win[:, win.shape[1] // 2:]
                        a = torch.softmax(q @ q.T, dim=-1)
                    else:
                        a, v = prev[idx][k], win
                    branch_maps.append(a)
                    y[bi, :, i * ws:(i + 1) * ws, j * ws:(j + 1) * ws] = (a @ v).T.reshape(-1, ws, ws)
                    k += 1
        if att.shift:
            y = torch.roll(y, (ws // 2, ws // 2), (2, 3))
        outs.append(y)
        maps.append(torch.stack(branch_maps))
    return att.project_out(torch.cat(outs, 1)), maps


@pytest.mark.parametrize("shift", [False, True])
def test_attention_units_match_loop_reference(shift):
    torch.manual_seed(0)
    first = NVSMAttention(8, shift=shift, window_sizes=(8, 8), calc_attn=True, deploy=True).double().eval()
    reuse = NVSMAttention(8, shift=shift, window_sizes=(8, 8), calc_attn=False, deploy=True).double().eval()
    with torch.no_grad():
        for m in (first, reuse):
            m.project_inp.weight.mul_(0.3)  # moderate logits
    x = torch.randn(2, 8, 16, 24, dtype=torch.float64)
    with torch.no_grad():
        y0, atns = first(x)
        r0, ref_atns = reference_nvsm(first, x)
        y1, _ = reuse(x, atns)
        r1, _ = reference_nvsm(reuse, x, ref_atns)
    assert torch.allclose(y0, r0, rtol=1e-12, atol=1e-12) and torch.allclose(y1, r1, rtol=1e-12, atol=1e-12)
    assert all(torch.allclose(a, r, atol=1e-13) for a, r in zip(atns, ref_atns))


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("ws,h,w", [(8, 40, 56), (8, 8, 8), (16, 48, 32)])
def test_composed_window_indices_equal_roll_pi_partition(ws, h, w, shift):
    """The deployed graph's one-gather indices equal the step-by-step roll -> pi -> window partition, and the
    pixel index inverts the dense one (window reverse + roll back)."""
    from lipt_export.models.lipt.nvsm import WindowIndex, to_windows

    x = torch.randn(2, 5, h, w, generator=torch.Generator().manual_seed(ws + h + w))
    s = ws // 2 if shift else 0
    rolled = torch.roll(x, (-s, -s), (2, 3))
    index = WindowIndex.build(h, w, ws, shift, offsets(ws))
    rows = x.permute(0, 2, 3, 1).reshape(2, h * w, 5)
    gathered = {k: rows.index_select(1, getattr(index, k)).reshape(-1, ws * ws, 5) for k in ("dense", "sparse")}
    assert torch.equal(gathered["dense"], to_windows(rolled, ws))
    assert torch.equal(gathered["sparse"], to_windows(sparse_resample(rolled, ws, offsets(ws)), ws))
    assert torch.equal(index.dense[index.pixel], torch.arange(h * w))
