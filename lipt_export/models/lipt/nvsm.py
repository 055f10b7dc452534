"""LIPT's NVSM-SA (non-volatile sparse masking self-attention) and the sparse re-sampling pi.

Behaviour reproduced from the official code (Lucien66/LIPT, ``NVSM_SA``), quirks included:

* ``project_inp``: 1x1 conv + BN (training) / 1x1 conv with bias (deploy). Unit 0 projects C -> 2C, the
  units that reuse its attention project C -> C (values only).
* Channels split in two halves: branch 0 = dense local window attention, branch 1 = sparse large-window
  attention. In each ws x ws window the first half of a branch's channels are the queries, the second half
  the values; keys ARE the queries and the logits q q^T are NOT scaled; one head, no position bias.
* Shifted blocks roll by (-ws/2, -ws/2) before and (+ws/2, +ws/2) after.
* Branch 1 re-samples its (rolled) map with the fixed permutation pi before windowing; its output is NOT
  mapped back through pi^-1, and in units >= 1 its values are taken from the un-resampled map although the
  reused attention was computed among re-sampled tokens (official behaviour, kept for checkpoint parity).

pi's indices are computed in the graph from ``arange``/floor/mod of the (padded) H, W and a constant offset
table, so it exports with symbolic H, W (the official ``Tensor.unfold`` + boolean-mask code does not export).
With equal branch windows (every LIPT config) roll, pi and window partition are composed into one row
gather per branch (:class:`WindowIndex`); :func:`sparse_resample` / :func:`to_windows` serve the general path.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from lipt_export.models.layers import bn_affine


def official_sparse_mask(window: int) -> List[int]:
    """The official boolean mask over a 2*ws span: even offsets in the own window, odd ones in the next
    (``[1,0]*(ws/2) + [0,1]*(ws/2)``; for ws = 8: 1,0,1,0,1,0,1,0, 0,1,0,1,0,1,0,1)."""
    if window % 2:
        raise ValueError(f"sparse mask needs an even window size, got {window}")
    return [1, 0] * (window // 2) + [0, 1] * (window // 2)


def sparse_offsets(window: int) -> List[int]:
    """Offsets kept by the mask: (0, 2, ..., ws-2, ws+1, ws+3, ..., 2ws-1)."""
    return [i for i, keep in enumerate(official_sparse_mask(window)) if keep]


def sparse_indices(size: int | torch.Tensor, window: int, offsets: torch.Tensor) -> torch.Tensor:
    """pi along one axis: r -> (ws * floor(r / ws) + offsets[r mod ws]) mod size. ``size`` must be a
    multiple of ``window`` (the network pads first). Computed with tensor ops so tracing keeps it symbolic."""
    r = torch.arange(size, device=offsets.device)
    phase = torch.remainder(r, window)
    return torch.remainder(r - phase + offsets[phase], size)


def sparse_resample(x: torch.Tensor, window: int, offsets: torch.Tensor) -> torch.Tensor:
    """x_sparse[:, :, r, c] = x[:, :, pi_H(r), pi_W(c)]."""
    x = x.index_select(2, sparse_indices(x.shape[2], window, offsets))
    return x.index_select(3, sparse_indices(x.shape[3], window, offsets))


def to_windows(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, C, H, W) -> (B * H/ws * W/ws, ws*ws, C). Channels go last in a 4-D permute first: ONNX Runtime
    runs that and the 6-D permute that keeps C innermost ~3x faster than one 6-D permute moving C."""
    b, c, h, w = x.shape
    x = x.permute(0, 2, 3, 1).reshape(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)


def from_windows(y: torch.Tensor, ws: int, b: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`to_windows` (same two-step layout)."""
    c = y.shape[-1]
    y = y.reshape(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return y.reshape(b, h, w, c).permute(0, 3, 1, 2)


def window_token_index(h, w, ws: int, shift: bool, offsets: Optional[torch.Tensor],
                       device: torch.device) -> torch.Tensor:
    """For every token slot (windows row-major, then ws x ws positions row-major), the flat index h*W + w of
    the source pixel in the un-rolled map: roll by -ws/2 when ``shift``, then pi when ``offsets`` is given,
    then window partition. H, W must be multiples of ws. Separable, so it is built from two 1-D indices."""
    s = ws // 2 if shift else 0
    if offsets is None:
        rows, cols = torch.arange(h, device=device), torch.arange(w, device=device)
    else:
        rows, cols = sparse_indices(h, ws, offsets), sparse_indices(w, ws, offsets)
    rows = torch.remainder(rows + s, h)
    cols = torch.remainder(cols + s, w)
    return (rows.reshape(-1, 1, ws, 1) * w + cols.reshape(1, -1, 1, ws)).reshape(-1)


def window_pixel_index(h, w, ws: int, shift: bool, device: torch.device) -> torch.Tensor:
    """Inverse of the dense :func:`window_token_index`: for every output pixel, its token slot after window
    reverse and roll back by +ws/2 when ``shift``. (Indices are >= 0, so truncating division is floor.)"""
    s = ws // 2 if shift else 0
    i = torch.remainder(torch.arange(h, device=device) - s, h)
    j = torch.remainder(torch.arange(w, device=device) - s, w)
    row = torch.div(i, ws, rounding_mode="trunc") * (w * ws) + torch.remainder(i, ws) * ws
    col = torch.div(j, ws, rounding_mode="trunc") * (ws * ws) + torch.remainder(j, ws)
    return (row.reshape(-1, 1) + col.reshape(1, -1)).reshape(-1)


class WindowIndex(NamedTuple):
    """The gather indices of one (H, W, ws, shift): built once per forward and shared by every NVSM unit of
    that shift, so the exported graph computes them once instead of per unit (and needs no Shape of the
    feature maps, which in ONNX Runtime would force a layout conversion just to read a shape)."""
    h: torch.Tensor | int
    w: torch.Tensor | int
    dense: torch.Tensor  # token slot -> pixel, rolled
    sparse: torch.Tensor  # token slot -> pixel, rolled then pi
    pixel: torch.Tensor  # pixel -> token slot, window reverse then roll back

    @classmethod
    def build(cls, h, w, ws: int, shift: bool, offsets: torch.Tensor) -> "WindowIndex":
        device = offsets.device
        return cls(h, w, window_token_index(h, w, ws, shift, None, device),
                   window_token_index(h, w, ws, shift, offsets, device),
                   window_pixel_index(h, w, ws, shift, device))


def _gather_tokens(y: torch.Tensor, index: torch.Tensor, hw, ws: int) -> torch.Tensor:
    """(B, C, H, W) -> (B * windows, ws*ws, C): channels last, then one row gather."""
    c = y.shape[1]
    rows = y.permute(0, 2, 3, 1).reshape(-1, hw, c)
    return rows.index_select(1, index).reshape(-1, ws * ws, c)


class NVSMAttention(nn.Module):
    """One NVSM-SA unit. ``calc_attn=True`` computes and returns the attention maps; otherwise the maps of
    the block's first unit are passed in and only values are projected. Input H, W must be multiples of
    the window sizes (the network pads)."""

    def __init__(self, channels: int, shift: bool, window_sizes: Sequence[int] = (8, 8),
                 calc_attn: bool = True, deploy: bool = False):
        super().__init__()
        if len(window_sizes) != 2:
            raise ValueError("NVSM-SA has exactly two branches (dense, sparse)")
        self.channels = channels
        self.shift = bool(shift)
        self.window_sizes = tuple(int(w) for w in window_sizes)
        self.calc_attn = calc_attn
        self.deploy = deploy
        proj = 2 * channels if calc_attn else channels
        self.split = proj // 2
        if deploy:
            self.project_inp = nn.Conv2d(channels, proj, 1)
        else:
            self.project_inp = nn.Sequential(OrderedDict([("0", nn.Conv2d(channels, proj, 1)),
                                                          ("1", nn.BatchNorm2d(proj))]))
        self.project_out = nn.Conv2d(channels, channels, 1)
        ws_sparse = self.window_sizes[1]
        self.register_buffer("sparse_offsets", torch.tensor(sparse_offsets(ws_sparse), dtype=torch.long),
                             persistent=False)

    def forward(self, x: torch.Tensor, prev_atns: Optional[List[torch.Tensor]] = None,
                index: Optional[WindowIndex] = None) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """``index``: this unit's :class:`WindowIndex` (see :meth:`window_index`); built from x when absent."""
        if self.window_sizes[0] == self.window_sizes[1]:
            if index is None:
                index = self.window_index(x.shape[2], x.shape[3])
            return self._forward_shared_windows(x, prev_atns, index)
        b, _, h, w = x.shape
        xs = torch.split(self.project_inp(x), self.split, dim=1)
        ys, atns = [], []
        for idx, branch in enumerate(xs):
            ws = self.window_sizes[idx]
            if self.shift:
                branch = torch.roll(branch, shifts=(-(ws // 2), -(ws // 2)), dims=(2, 3))
            if prev_atns is None:
                if idx == 1:
                    branch = sparse_resample(branch, ws, self.sparse_offsets)
                tokens = to_windows(branch, ws)
                q, v = torch.split(tokens, tokens.shape[-1] // 2, dim=-1)
                atn = torch.softmax(q @ q.transpose(-2, -1), dim=-1)  # shared q/k, unscaled (official)
                atns.append(atn)
            else:
                atn = prev_atns[idx]
                v = to_windows(branch, ws)  # sparse branch: values NOT re-sampled (official quirk)
            y = from_windows(atn @ v, ws, b, h, w)
            if self.shift:
                y = torch.roll(y, shifts=(ws // 2, ws // 2), dims=(2, 3))
            ys.append(y)
        out = self.project_out(torch.cat(ys, dim=1))
        return out, (atns if prev_atns is None else prev_atns)

    def window_index(self, h, w) -> WindowIndex:
        return WindowIndex.build(h, w, self.window_sizes[0], self.shift, self.sparse_offsets)

    def _forward_shared_windows(self, x: torch.Tensor, prev_atns: Optional[List[torch.Tensor]],
                                index: WindowIndex) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Same function as the per-branch loop, with roll, pi and window partition done as ONE row gather.

        All three are pixel permutations, so each branch's tokens are ``index_select`` of the channels-last
        map with a composed index (:func:`window_token_index`), and the window reverse plus roll-back is one
        more gather (:func:`window_pixel_index`). Rows are C contiguous floats, which both ONNX Runtime and
        PyTorch copy at memory speed; the roll/pi/6-D-transpose chain this replaces moved every value 4-6
        times. Output identical up to float summation order (tested against a loop reference)."""
        ws, hw = self.window_sizes[0], index.h * index.w
        if prev_atns is None:
            dense, sparse = self._project_branches(x)
            q0, v0 = torch.split(_gather_tokens(dense, index.dense, hw, ws), self.split // 2, dim=-1)
            q1, v1 = torch.split(_gather_tokens(sparse, index.sparse, hw, ws), self.split // 2, dim=-1)
            atns = [torch.softmax(q @ q.transpose(-2, -1), dim=-1) for q in (q0, q1)]  # shared q/k, unscaled
        else:
            # sparse branch: values NOT re-sampled (official quirk), so both halves share the dense index
            v0, v1 = torch.split(_gather_tokens(self.project_inp(x), index.dense, hw, ws), self.split, dim=-1)
            atns = prev_atns
        tokens = torch.cat([atns[0] @ v0, atns[1] @ v1], dim=-1)  # (B * windows, ws*ws, C)
        pixels = tokens.reshape(-1, hw, self.channels).index_select(1, index.pixel)
        return self.project_out(pixels.reshape(-1, index.h, index.w, self.channels).permute(0, 3, 1, 2)), atns

    def _project_branches(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """project_inp split into the dense and sparse halves. Deployed: two 1x1 convs on the rows of the
        one fused weight, so each half comes out of its own conv (no channel slice copy before the gathers)."""
        if not self.deploy:
            return torch.split(self.project_inp(x), self.split, dim=1)
        weight, bias = self.project_inp.weight, self.project_inp.bias
        return (F.conv2d(x, weight[: self.split], bias[: self.split]),
                F.conv2d(x, weight[self.split:], bias[self.split:]))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the BN after ``project_inp`` into the 1x1 conv (``project_inp.{weight,bias}``)."""
        if self.deploy:
            return
        conv, bn = self.project_inp[0], self.project_inp[1]
        a, c = bn_affine(bn)
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, 1).to(device=conv.weight.device,
                                                                     dtype=conv.weight.dtype)
        fused.weight.copy_(conv.weight * a.view(-1, 1, 1, 1))
        fused.bias.copy_(conv.bias * a + c)
        self.project_inp = fused
        self.deploy = True

    # -- used by the deterministic test initialisation -------------------------------------------------
    def input_affine(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The last per-channel scale/shift of project_inp (BN weight/bias, or conv rows/bias when fused)."""
        if self.deploy:
            return self.project_inp.weight, self.project_inp.bias
        return self.project_inp[1].weight, self.project_inp[1].bias

    @torch.no_grad()
    def scale_input_channels_(self, channels: slice, factor: float) -> None:
        weight, bias = self.input_affine()
        weight[channels].mul_(factor)
        bias[channels].mul_(factor)

    @torch.no_grad()
    def scale_output_(self, factor: float) -> None:
        self.project_out.weight.mul_(factor)
        self.project_out.bias.mul_(factor)
