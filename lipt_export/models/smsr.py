"""SMSR (Sparse Mask Super-Resolution; Wang et al., CVPR 2021), loading the official checkpoint unchanged.

State-dict keys follow the official ``model/smsr.py`` (LongguangWang/SMSR): ``sub_mean``, ``head.{0,2}``,
``body.{k}.spa_mask.{0,3,5}``, ``body.{k}.body.ch_mask``, ``body.{k}.body.body.{0..3}``,
``body.{k}.body.collect``, ``body.{k}.ca.conv_du.{0,2}``, ``collect.{0,2}``, ``tail.0``, ``add_mean``.

Forms of the sparse mask body (:class:`SparseMaskBody`), one class with two forms (see docs/models.md):

- training form, ``train()`` mode: Gumbel-softmax spatial and channel masks, as in the paper; the forward
  returns ``(sr, sparsity)`` like the official model.
- training form, ``eval()`` mode: hard masks (spatial ``M = logit1 > logit0``, channel masks
  ``round(softmax(ch_mask))``) applied densely: the *dense-masked equivalent* of the official sparse
  convolution (which gathers masked pixels with ``nonzero`` and exports with baked pixel counts).
- deploy form (``reparameterize()``): the channel masks are baked in. Output channels of every layer are
  permuted so dense ones come first, the conv weights are permuted to match, and each layer runs as one
  conv over all input channels selected by the mask against a small dense-input conv
  (``SparseMaskBody._forward_deploy``); the 1x1 collect conv takes the permuted concatenation. Weight shapes
  do not change, so a fused checkpoint loads into the deploy graph of any SMSR; ``ch_mask`` is replaced by the
  int buffer ``dense_out``.

Native range 0..255. Any H, W: the mask branch halves and doubles the resolution, so odd sizes are
replicate-padded to even inside the model and the output is cropped; the bicubic residual is computed on
the unpadded input.
"""
from __future__ import annotations

import math
from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from lipt_export.catalog import FAMILIES
from lipt_export.models.arch import fixed_arch_arguments
from lipt_export.models.demo_init import deterministic_init
from lipt_export.models.layers import ChannelAttention, MeanShift
from lipt_export.models.registry import ModelSpec, catalog_facts, register

RGB_RANGE = 255.0
N_FEATS = 64
N_MODULES = 5
N_LAYERS = 4
SCALES = FAMILIES["smsr"].scales


def gumbel_softmax(logits: torch.Tensor, dim: int, tau: float) -> torch.Tensor:
    """Soft Gumbel-softmax sample (no straight-through), as the official training code uses."""
    u = torch.rand_like(logits).clamp_min(torch.finfo(logits.dtype).tiny)
    gumbel = -torch.log(-torch.log(u))
    return ((logits + gumbel) / tau).softmax(dim)


def hard_channel_masks(ch_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(dense, sparse) 0/1 masks of shape (layers, channels) from the (1, C, L, 2) logits.

    ``round(softmax)`` exactly as the official ``_prepare``: a logit tie rounds 0.5 to 0, giving a channel
    that is neither dense nor sparse (it then outputs zero)."""
    hard = ch_mask.softmax(-1).round()[0]  # (C, L, 2)
    return hard[..., 0].t().contiguous(), hard[..., 1].t().contiguous()


def hard_spatial_mask(logits: torch.Tensor) -> torch.Tensor:
    """M = 1 where the 'sparse' logit beats the 'dense' one; (B, 1, H, W) in the logits' dtype."""
    return (logits[:, 1:] > logits[:, :1]).to(logits.dtype)




class SparseMaskBody(nn.Module):
    """SMB: four bias-free 3x3 convs with per-layer channel masks, then a 1x1 ``collect`` over all four."""

    def __init__(self, channels: int = N_FEATS, n_layers: int = N_LAYERS, deploy: bool = False):
        super().__init__()
        self.channels, self.n_layers, self.deploy = channels, n_layers, deploy
        self.tau = 1.0
        self.body = nn.Sequential(*[nn.Conv2d(channels, channels, 3, 1, 1, bias=False) for _ in range(n_layers)])
        self.collect = nn.Conv2d(channels * n_layers, channels, 1)
        if deploy:
            self.register_buffer("dense_out", torch.zeros(n_layers, dtype=torch.int64))
        else:
            self.ch_mask = nn.Parameter(torch.rand(1, channels, n_layers, 2))

    # -- training form -----------------------------------------------------------------------------
    def _forward_gumbel(self, x: torch.Tensor, m: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        ch = gumbel_softmax(self.ch_mask, 3, self.tau)  # (1, C, L, 2)
        d = [ch[:, :, i, 0, None, None] for i in range(self.n_layers)]  # (1, C, 1, 1) each
        s = [ch[:, :, i, 1, None, None] for i in range(self.n_layers)]
        outs, fea = [], x
        for i, conv in enumerate(self.body):
            if i == 0:
                y = conv(fea)
                fea = y * s[0] * m + y * d[0]
            else:
                y_d, y_s = conv(fea * d[i - 1]), conv(fea * s[i - 1])
                fea = y_d * (s[i] * m + d[i]) + y_s * (s[i] * m + d[i] * m)
            fea = F.relu(fea)
            outs.append(fea)
        return self.collect(torch.cat(outs, 1)), ch

    def _forward_hard(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        d_all, s_all = hard_channel_masks(self.ch_mask)
        d = [d_all[i].view(1, -1, 1, 1) for i in range(self.n_layers)]
        s = [s_all[i].view(1, -1, 1, 1) for i in range(self.n_layers)]
        outs, fea = [], x
        for i, conv in enumerate(self.body):
            # sparse input channels only contribute at masked pixels (the official gather/scatter)
            y = conv(fea) if i == 0 else conv(fea * d[i - 1]) + m * conv(fea * s[i - 1])
            # sparse output channels exist only at masked pixels
            fea = F.relu(y * d[i] + y * s[i] * m)
            outs.append(fea)
        return self.collect(torch.cat(outs, 1))

    # -- deploy form -------------------------------------------------------------------------------
    def _forward_deploy(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Each layer is ONE conv over all 64 input channels, masked by arithmetic (issue 26).

        With hard masks, at a masked pixel every input channel contributes (Y = conv(F)); outside the mask only
        the dense inputs do, and only the dense outputs exist. So, with channels dense-first (reparameterize):

            out = m * relu(conv(F, W)) + (1 - m) * [relu(conv(F_dense, W_dense,dense)); 0]

        (relu commutes with the 0/1 mask). The second conv is small (n_in dense inputs -> n_out dense outputs,
        zero-padded to C channels) and exists only where a layer has both. Where every input is dense (layer 0)
        the dense rows of the first conv are the second term. Same MACs as the split form plus n_in * n_out
        per pixel, but no conv on a 24/40-style channel slice and no slice/concat of activations."""
        counts = [int(c) for c in self.dense_out.tolist()]  # constants: traced as such on export
        c = self.channels
        m_out = 1 - m
        fea, n_in = x, c
        outs: List[torch.Tensor] = []
        for i, conv in enumerate(self.body):
            w = conv.weight
            n_out = counts[i]
            z = F.relu(F.conv2d(fea, w, padding=1))
            if n_in == c and n_out == c:  # all dense in and out: no mask
                out = z
            elif n_in == 0 or n_out == 0:  # only masked pixels carry anything
                out = z * m
            else:
                if n_in == c:  # outside the mask the dense rows see every input: they are z's own rows
                    dense = z * (torch.arange(c, device=w.device) < n_out).to(w.dtype).view(1, c, 1, 1)
                else:
                    dense = F.pad(F.relu(F.conv2d(fea[:, :n_in], w[:n_out, :n_in], padding=1)),
                                  (0, 0, 0, 0, 0, c - n_out))
                out = z * m + dense * m_out
            outs.append(out)
            fea, n_in = out, n_out
        return self.collect(torch.cat(outs, 1))

    def extra_macs(self, h: int, w: int) -> int:
        """MACs the deploy form spends beyond the dense-masked work: the small dense-input convs."""
        if not self.deploy:
            return 0
        n_in, total = self.channels, 0
        for n_out in (int(v) for v in self.dense_out.tolist()):
            if 0 < n_in < self.channels and n_out:
                total += n_in * n_out * 9
            n_in = n_out
        return total * h * w

    def forward(self, x: torch.Tensor, m: torch.Tensor):
        if self.deploy:
            return self._forward_deploy(x, m)
        if self.training:
            return self._forward_gumbel(x, m)
        return self._forward_hard(x, m)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Bake the hard channel masks: dense-first channel order per layer, weights permuted to match.

        Layer i's output channel order is ``perm[i]`` (dense channels, then sparse ones); its conv weight
        rows follow ``perm[i]`` and its input columns ``perm[i-1]``; the collect conv's columns follow the
        concatenation order. Channels that are neither dense nor sparse (a logit tie) get zero rows: they
        output relu(0) = 0 exactly as in the masked form."""
        if self.deploy:
            return
        d_all, s_all = hard_channel_masks(self.ch_mask)
        c = self.channels
        perms, counts = [], []
        for i in range(self.n_layers):
            dense_idx = torch.nonzero(d_all[i] > 0.5).flatten()
            sparse_idx = torch.nonzero(s_all[i] > 0.5).flatten()
            dead_idx = torch.nonzero((d_all[i] < 0.5) & (s_all[i] < 0.5)).flatten()
            perms.append((torch.cat([dense_idx, dead_idx, sparse_idx]), len(dense_idx) + len(dead_idx),
                          dead_idx))
            counts.append(len(dense_idx) + len(dead_idx))
        prev = torch.arange(c)
        for i, conv in enumerate(self.body):
            perm, _, dead = perms[i]
            w = conv.weight.clone()
            w[dead] = 0
            conv.weight.copy_(w[perm][:, prev])
            prev = perm
        cols = torch.cat([perm + i * c for i, (perm, _, _) in enumerate(perms)])
        self.collect.weight.copy_(self.collect.weight[:, cols].clone())
        del self.ch_mask
        self.register_buffer("dense_out", torch.tensor(counts, dtype=torch.int64, device=self.collect.weight.device))
        self.deploy = True


class SparseMaskModule(nn.Module):
    """SMM: spatial-mask branch, sparse mask body, channel attention, residual."""

    def __init__(self, channels: int = N_FEATS, deploy: bool = False):
        super().__init__()
        q = channels // 4
        self.spa_mask = nn.Sequential(
            nn.Conv2d(channels, q, 3, 1, 1), nn.ReLU(inplace=True), nn.AvgPool2d(2),
            nn.Conv2d(q, q, 3, 1, 1), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(q, 2, 3, 2, 1, output_padding=1))
        self.body = SparseMaskBody(channels, N_LAYERS, deploy=deploy)
        self.ca = ChannelAttention(channels)
        self.tau = 1.0

    def forward(self, x: torch.Tensor):
        logits = self.spa_mask(x)
        if self.training and not self.body.deploy:
            m = gumbel_softmax(logits, 1, self.tau)[:, 1:]
            out, ch = self.body(x, m)
            return self.ca(out) + x, m, ch
        return self.ca(self.body(x, hard_spatial_mask(logits))) + x


class SMSR(nn.Module):
    def __init__(self, scale: int = 2, n_feats: int = N_FEATS, deploy: bool = False):
        super().__init__()
        self.scale = scale
        self.sub_mean = MeanShift(RGB_RANGE, -1.0)
        self.head = nn.Sequential(nn.Conv2d(3, n_feats, 3, 1, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(n_feats, n_feats, 3, 1, 1))
        self.body = nn.Sequential(*[SparseMaskModule(n_feats, deploy=deploy) for _ in range(N_MODULES)])
        self.collect = nn.Sequential(nn.Conv2d(n_feats * N_MODULES, n_feats, 1), nn.ReLU(inplace=True),
                                     nn.Conv2d(n_feats, n_feats, 3, 1, 1))
        self.tail = nn.Sequential(nn.Conv2d(n_feats, 3 * scale * scale, 3, 1, 1), nn.PixelShuffle(scale))
        self.add_mean = MeanShift(RGB_RANGE, 1.0)

    def set_tau(self, tau: float) -> None:
        """Gumbel temperature for training (the official trainer meant to anneal it but never did)."""
        for m in self.modules():
            if isinstance(m, (SparseMaskModule, SparseMaskBody)):
                m.tau = float(tau)

    def forward(self, x: torch.Tensor):
        h, w = x.shape[2], x.shape[3]
        x0 = self.sub_mean(x)
        # The mask branch pools by 2 and upsamples by 2: pad odd sizes to even, crop the output below.
        feat = self.head(F.pad(x0, (0, w % 2, 0, h % 2), mode="replicate"))
        gumbel = self.training and not self.body[0].body.deploy
        fea, feats, sparsity = feat, [], []
        for smm in self.body:
            if gumbel:
                fea, m, ch = smm(fea)
                sparsity.append(m * ch[..., 1].view(1, -1, 1, 1) + ch[..., 0].view(1, -1, 1, 1))
            else:
                fea = smm(fea)
            feats.append(fea)
        fea = self.collect(torch.cat(feats, 1)) + feat
        sr = self.tail(fea)[:, :, : h * self.scale, : w * self.scale]
        sr = self.add_mean(sr + F.interpolate(x0, scale_factor=self.scale, mode="bicubic", align_corners=False))
        if gumbel:
            return sr, torch.cat(sparsity, 0)
        return sr


def build_smsr(variant: str, scale: int, deploy: bool = False) -> SMSR:
    return SMSR(scale, deploy=deploy)


@torch.no_grad()
def smsr_init_for_tests(model: nn.Module, seed: int) -> None:
    """Deterministic weights that exercise every path: conv weights PyTorch-scale, channel-mask logits
    drawn so each layer has both dense and sparse channels, and mask logits spread wide so that roughly
    half the pixels are masked and few sit near the threshold (float rounding must not flip them)."""

    g = torch.Generator().manual_seed(int(seed))

    def convt_rule(name, module, gen):
        if isinstance(module, nn.ConvTranspose2d):
            bound = 8.0 / math.sqrt(module.weight.shape[0] * 9)
            module.weight.copy_(torch.rand(module.weight.shape, generator=gen, dtype=torch.float64)
                                .mul(2 * bound).sub(bound).to(module.weight.dtype))
            module.bias.zero_()
            return True
        return False

    # MeanShift holds frozen constants (the dataset mean), not weights: keep them.
    deterministic_init(model, seed, rules={nn.ConvTranspose2d: convt_rule, MeanShift: lambda *a: True})
    for m in model.modules():
        if isinstance(m, SparseMaskBody) and not m.deploy:
            m.ch_mask.copy_(torch.randn(m.ch_mask.shape, generator=g, dtype=torch.float64).to(m.ch_mask.dtype))


# -- spatial-mask flips between eager and an ONNX artifact ------------------------------------------------

def read_smsr_arch(sd) -> dict:
    """SMSR's architecture is fixed (64 features, 5 SMMs); its checkpoint tells the scale (tail conv 3s^2)."""
    if "tail.0.weight" not in sd:
        return {}  # not SMSR's layout: the strict load lists what is missing
    return {"scale": round((int(sd["tail.0.weight"].shape[0]) / 3) ** 0.5)}


register(ModelSpec(
    **catalog_facts("smsr"),
    build=build_smsr,
    rgb_range=RGB_RANGE,
    description="SMSR: Sparse Mask Super-Resolution (hard spatial/channel masks, dense-masked inference form)",
    size_multiple=lambda variant: 2,
    init_for_tests=smsr_init_for_tests,
    read_arch=read_smsr_arch,
    read_config_file=fixed_arch_arguments("SMSR", {"n_feats": N_FEATS}),
))
