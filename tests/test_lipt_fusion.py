"""LIPT re-parameterization, proven in float64 (rel err <= 1e-9): every HRM branch type, a whole 6-branch
conv, an HRM, the NVSM project_inp BN fold, and the whole network, with random non-trivial BN statistics."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lipt_export.models.lipt.hrm import HRM, RepConv3x3
from lipt_export.models.lipt import build_lipt, count_parameters, init_lipt_for_tests
from lipt_export.models.lipt.nvsm import NVSMAttention
from lipt_export.models.reparam import is_deploy, reparameterize_model

TOL = 1e-9


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@torch.no_grad()
def randomize(module: nn.Module, seed: int) -> nn.Module:
    """Random weights AND random BN running statistics / affine, Sobel scale/bias and identity-conv W, so that
    no fusion term is trivially zero or one. Eval mode, float64."""
    g = torch.Generator().manual_seed(seed)
    module = module.double().eval()
    for name, p in module.named_parameters():
        p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g, dtype=torch.float64))
            m.running_var.copy_(0.2 + 2 * torch.rand(n, generator=g, dtype=torch.float64))
            m.weight.copy_(0.5 + torch.rand(n, generator=g, dtype=torch.float64))
            m.bias.copy_(torch.randn(n, generator=g, dtype=torch.float64))
    return module


def branch_output(block: RepConv3x3, name: str, x: torch.Tensor) -> torch.Tensor:
    return getattr(block, {"origin": "dbb_origin", "1x1": "dbb_1x1", "avg": "dbb_avg", "1x1_kxk": "dbb_1x1_kxk",
                           "sobelx": "dbb_sobelx", "sobely": "dbb_sobely"}[name])(x)


@pytest.mark.parametrize("name", ["origin", "1x1", "avg", "1x1_kxk", "sobelx", "sobely"])
def test_each_branch_fuses_exactly(name):
    block = randomize(RepConv3x3(5, 7), seed=1)
    x = torch.randn(2, 5, 11, 13, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 3
    kernel, bias = block.branch_kernels()[name]
    assert kernel.shape == (7, 5, 3, 3)
    with torch.no_grad():
        fused = F.conv2d(x, kernel, bias, padding=1)
        assert rel_err(fused, branch_output(block, name, x)) <= TOL


def test_border_fills_matter():
    """The border-filled BN / b0 padding is what makes the 1x1->3x3 compositions exact at the border: with a
    plain zero pad the fused conv would differ there (guards against a silently simplified branch)."""
    block = randomize(RepConv3x3(4, 4), seed=3)
    x = torch.randn(1, 4, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        seq = block.dbb_1x1_kxk
        zero_pad = seq.bn2(seq.conv2(F.pad(seq.bn1.bn(seq.idconv1(x)), [1] * 4)))
        assert rel_err(zero_pad, seq(x)) > 1e-3
        assert rel_err(zero_pad[..., 1:-1, 1:-1], seq(x)[..., 1:-1, 1:-1]) <= TOL


def test_whole_block_and_hrm_fuse_exactly():
    x = torch.randn(2, 6, 10, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 5
    block = randomize(RepConv3x3(6, 6), seed=5)
    hrm = randomize(HRM(6, exp_ratio=2), seed=6)
    with torch.no_grad():
        for module in (block, hrm):
            ref = module(x)
            fused = reparameterize_model(module)
            assert is_deploy(fused) and rel_err(fused(x), ref) <= TOL
    names = set(reparameterize_model(block).state_dict())
    assert names == {"weight", "bias"} == set(RepConv3x3(6, 6, deploy=True).state_dict())


@pytest.mark.parametrize("shift", [False, True])
def test_nvsm_bn_fold_exact(shift):
    """Both unit kinds: unit 0 (C -> 2C, computes the maps) and a reusing unit (C -> C, values only)."""
    first = randomize(NVSMAttention(8, shift=shift, window_sizes=(4, 4), calc_attn=True), seed=7)
    reuse = randomize(NVSMAttention(8, shift=shift, window_sizes=(4, 4), calc_attn=False), seed=8)
    x = torch.randn(1, 8, 8, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        ref, ref_atns = first(x)
        ref2, _ = reuse(x, ref_atns)
        fused_first, fused_reuse = reparameterize_model(first), reparameterize_model(reuse)
        got, atns = fused_first(x)
        got2, _ = fused_reuse(x, atns)
    for fused, proj in ((fused_first, 16), (fused_reuse, 8)):
        assert isinstance(fused.project_inp, nn.Conv2d) and fused.deploy
        assert fused.project_inp.out_channels == proj
        assert set(fused.state_dict()) == {"project_inp.weight", "project_inp.bias", "project_out.weight",
                                           "project_out.bias"}
    assert rel_err(got, ref) <= TOL and rel_err(got2, ref2) <= TOL
    assert all(rel_err(a, b) <= TOL for a, b in zip(atns, ref_atns))


@pytest.fixture(scope="module")
def tiny_pair():
    train = init_lipt_for_tests(build_lipt("tiny", 2).eval(), seed=0)
    return train, reparameterize_model(train)


def test_whole_lipt_train_equals_deploy_float64(tiny_pair):
    train, _ = tiny_pair
    train64 = copy.deepcopy(train).double().eval()
    deploy64 = reparameterize_model(train64)  # fused in float64 too
    x = torch.rand(1, 3, 13, 21, dtype=torch.float64, generator=torch.Generator().manual_seed(9)) * 255
    with torch.no_grad():
        ref, got = train64(x), deploy64(x)
    assert got.shape == (1, 3, 26, 42)
    assert rel_err(got, ref) <= TOL
    # nothing of the training branches remains: only 3x3 convs with bias and 1x1 projections
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deploy64.modules())
    assert set(deploy64.state_dict()) == set(build_lipt("tiny", 2, deploy=True).state_dict())


def test_reparameterize_copy_leaves_original_and_is_idempotent(tiny_pair):
    train, deploy = tiny_pair
    before = {k: v.clone() for k, v in train.state_dict().items()}
    again = reparameterize_model(train)
    assert not is_deploy(train) and all(torch.equal(before[k], v) for k, v in train.state_dict().items())
    twice = reparameterize_model(deploy)  # already fused: a no-op
    for k, v in deploy.state_dict().items():
        assert torch.equal(v, twice.state_dict()[k]) and torch.equal(v, again.state_dict()[k])
    inplace = copy.deepcopy(train)
    reparameterize_model(inplace, inplace=True)
    assert is_deploy(inplace)


def test_deploy_constructor_loads_fused_weights(tiny_pair):
    _, deploy = tiny_pair
    direct = build_lipt("tiny", 2, deploy=True).eval()
    direct.load_state_dict(deploy.state_dict(), strict=True)
    x = torch.rand(1, 3, 24, 16) * 255
    with torch.no_grad():
        assert torch.equal(direct(x), deploy(x))


@pytest.mark.parametrize("variant,scale,expected", [("tiny", 2, 265_260), ("small", 2, 2_328_396),
                                                    ("small", 4, 2_813_104), ("small", 3, 2_800_987)])
def test_deploy_parameter_counts_match_official_modules(variant, scale, expected):
    # Counts from instantiating the official modules (reference notes 1.7); the frozen mean-shift convs are
    # not trainable and not counted there.
    assert count_parameters(build_lipt(variant, scale, deploy=True)) == expected


@pytest.mark.parametrize("scale", [1, 3])
def test_other_scales_shapes(scale):
    model = build_lipt("tiny", scale, deploy=True).eval()
    with torch.no_grad():
        y = model(torch.rand(1, 3, 13, 21) * 255)
    assert y.shape == (1, 3, 13 * scale, 21 * scale)
    if scale == 1:
        assert not any(isinstance(m, nn.PixelShuffle) for m in model.modules())
        assert model.tail[0].out_channels == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_reparameterize_on_cuda(tiny_pair):
    train, _ = tiny_pair
    cuda = copy.deepcopy(train).cuda().double()
    x = torch.rand(1, 3, 16, 24, dtype=torch.float64, device="cuda") * 255
    with torch.no_grad():
        ref = cuda(x)
        fused = reparameterize_model(cuda)
        assert next(fused.parameters()).is_cuda and rel_err(fused(x), ref) <= TOL
