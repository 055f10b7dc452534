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

pi is two ``index_select`` gathers whose indices are computed in the graph from ``arange``/floor/mod of the
(padded) H, W and a constant offset table, so it exports with symbolic H, W (the official
``Tensor.unfold`` + boolean-mask code does not export).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from lipt_export.models.hrm import bn_affine


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

    def forward(self, x: torch.Tensor, prev_atns: Optional[List[torch.Tensor]] = None
                ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        if self.window_sizes[0] == self.window_sizes[1]:
            return self._forward_shared_windows(x, prev_atns)
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

    def _forward_shared_windows(self, x: torch.Tensor, prev_atns: Optional[List[torch.Tensor]]
                                ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Same function as the per-branch loop, with both branches rolled and windowed together: one
        window partition and one reverse per unit instead of two each (6-D transposes are a large share of
        ONNX Runtime's time on LIPT). Rolling commutes with the channel split; pi touches branch 1 only."""
        b, _, h, w = x.shape
        ws = self.window_sizes[0]
        y = self.project_inp(x)
        if self.shift:
            y = torch.roll(y, shifts=(-(ws // 2), -(ws // 2)), dims=(2, 3))
        dense, sparse = torch.split(y, self.split, dim=1)
        if prev_atns is None:
            sparse = sparse_resample(sparse, ws, self.sparse_offsets)
        tokens = to_windows(torch.cat([dense, sparse], dim=1), ws)
        if prev_atns is None:
            q0, v0, q1, v1 = torch.split(tokens, self.split // 2, dim=-1)
            atns = [torch.softmax(q @ q.transpose(-2, -1), dim=-1) for q in (q0, q1)]  # shared q/k, unscaled
        else:
            # sparse branch: values NOT re-sampled (official quirk)
            v0, v1 = torch.split(tokens, self.split, dim=-1)
            atns = prev_atns
        out = from_windows(torch.cat([atns[0] @ v0, atns[1] @ v1], dim=-1), ws, b, h, w)
        if self.shift:
            out = torch.roll(out, shifts=(ws // 2, ws // 2), dims=(2, 3))
        return self.project_out(out), atns

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
