"""SMSR: official key layout, the dense-masked hard-mask form against an independent gather/scatter
implementation of the official sparse convolution, channel-mask fusion (float64), odd sizes, the Gumbel
training form, ONNX parity at two sizes and the spatial-mask flip counter.

Weights: ``smsr_init_for_tests`` (deterministic; both channel kinds in every layer, about half the pixels
masked). Tests with the official checkpoint live in test_smsr_acceptance.py.
"""
from __future__ import annotations

import copy

import onnx
import pytest
import torch
import torch.nn.functional as F

from lipt_export.export.onnx_export import export_onnx
from lipt_export.errors import CheckpointError
from lipt_export.models.checkpoint import load_weights, read_state_dict
from lipt_export.models.io import UnitRangeIO
from lipt_export.models.registry import build_model, get_spec
from lipt_export.models.reparam import is_deploy, reparameterize_model
from lipt_export.models.smsr import SparseMaskBody, SparseMaskModule, hard_channel_masks, hard_spatial_mask
from lipt_export.validation.extras import smsr_parity_extras
from lipt_export.runtime.eager import TorchRunner
from lipt_export.runtime.ort import OnnxRuntimeRunner
from lipt_export.validation.inputs import natural_inputs
from lipt_export.validation.parity import compare, rel_l2

SEED = 5



def _model(scale=2, seed=SEED):
    spec, _, model = build_model("smsr", None, scale)
    spec.init_for_tests(model, seed)
    return model.eval()


def _input(h, w, seed=0, dtype=torch.float64):
    return torch.from_numpy(natural_inputs([(h, w)], seed=seed)[0]).to(dtype) * 255.0


def test_official_key_layout(shared):
    for scale in (2, 3, 4):
        sd = build_model("smsr", None, scale)[2].state_dict()
        assert len(sd) == 99
        assert sd["tail.0.weight"].shape == (3 * scale * scale, 64, 3, 3)
    sd = build_model("smsr", None, 2)[2].state_dict()
    for k in range(5):
        assert sd[f"body.{k}.body.ch_mask"].shape == (1, 64, 4, 2)
        assert sd[f"body.{k}.spa_mask.5.weight"].shape == (16, 2, 3, 3)  # ConvTranspose layout
        assert sd[f"body.{k}.body.collect.weight"].shape == (64, 256, 1, 1)
    assert sd["collect.0.weight"].shape == (64, 320, 1, 1)
    ckpt = shared.find("checkpoints/smsr/SMSR_x2_official.pt")
    if ckpt is not None:
        assert set(read_state_dict(ckpt)) == set(sd)


def test_test_weights_exercise_both_mask_kinds():
    model = _model().double()
    masks = []
    hooks = [m.spa_mask.register_forward_hook(lambda mod, i, o: masks.append(hard_spatial_mask(o)))
             for m in model.modules() if isinstance(m, SparseMaskModule)]
    with torch.no_grad():
        model(_input(32, 40))
    for h in hooks:
        h.remove()
    densities = [float(m.mean()) for m in masks]
    assert all(0.1 < d < 0.9 for d in densities), densities
    for body in (m for m in model.modules() if isinstance(m, SparseMaskBody)):
        d, s = hard_channel_masks(body.ch_mask)
        assert (d.sum(1) > 0).all() and (s.sum(1) > 0).all()


def _sparse_reference(body: SparseMaskBody, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """The official inference algorithm, written independently: dense channels are full maps, sparse
    channels are values at the masked pixels only (gathered with nonzero); 3x3 convs as unfold + matmul;
    contributions of sparse inputs are scattered back to the masked pixels. Batch 1."""
    d, s = (t > 0.5 for t in hard_channel_masks(body.ch_mask))
    _, c, h, w = x.shape
    idx = torch.nonzero(m[0, 0].flatten() > 0.5).flatten()
    dense_in, sparse_in = x[0].reshape(c, -1), None  # (Cd, HW), (Cs, N)
    in_d, in_s = torch.ones(c, dtype=torch.bool), torch.zeros(c, dtype=torch.bool)
    dense_outs, sparse_outs = [], []
    for i, conv in enumerate(body.body):
        wgt = conv.weight
        cols_d = F.unfold(dense_in.reshape(1, -1, h, w), 3, padding=1)[0]  # (Cd*9, HW)
        y_d = wgt[d[i]][:, in_d].reshape(int(d[i].sum()), -1) @ cols_d
        y_s = wgt[s[i]][:, in_d].reshape(int(s[i].sum()), -1) @ cols_d[:, idx]
        if sparse_in is not None and sparse_in.shape[0] > 0:
            canvas = torch.zeros(sparse_in.shape[0], h * w, dtype=x.dtype)
            canvas[:, idx] = sparse_in
            cols_s = F.unfold(canvas.reshape(1, -1, h, w), 3, padding=1)[0][:, idx]
            y_d[:, idx] += wgt[d[i]][:, in_s].reshape(int(d[i].sum()), -1) @ cols_s
            y_s = y_s + wgt[s[i]][:, in_s].reshape(int(s[i].sum()), -1) @ cols_s
        dense_in, sparse_in = F.relu(y_d), F.relu(y_s)
        dense_outs.append((i, dense_in))
        sparse_outs.append((i, sparse_in))
        in_d, in_s = d[i], s[i]
    wc = body.collect.weight[:, :, 0, 0]
    out = body.collect.bias[:, None].expand(-1, h * w).clone()
    for i, t in dense_outs:
        out += wc[:, i * c:(i + 1) * c][:, d[i]] @ t
    for i, t in sparse_outs:
        out[:, idx] += wc[:, i * c:(i + 1) * c][:, s[i]] @ t
    return out.reshape(1, c, h, w)


def test_dense_masked_form_equals_official_sparse_algorithm():
    model = _model().double()
    smm = model.body[1]
    feat = torch.randn(1, 64, 18, 22, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    m = hard_spatial_mask(smm.spa_mask(feat))
    assert 0 < float(m.mean()) < 1
    with torch.no_grad():
        dense_masked = smm.body(feat, m)
        sparse = _sparse_reference(smm.body, feat, m)
    assert rel_l2(dense_masked.numpy(), sparse.numpy()) <= 1e-12


@pytest.mark.parametrize("hw", [(24, 32), (17, 23)])
def test_channel_mask_fusion_is_exact_in_float64(hw):
    train = _model().double()
    deploy = reparameterize_model(train)
    assert is_deploy(deploy) and not is_deploy(train)
    assert all(not hasattr(b, "ch_mask") and b.dense_out.dtype == torch.int64
               for b in deploy.modules() if isinstance(b, SparseMaskBody))
    x = _input(*hw)
    with torch.no_grad():
        assert rel_l2(deploy(x).numpy(), train(x).numpy()) <= 1e-9


def test_deploy_checkpoint_round_trip():
    spec = get_spec("smsr")
    deploy = reparameterize_model(_model())
    fresh = build_model("smsr", None, 2)[2]
    loaded, form = load_weights(fresh, deploy.state_dict(), model_label="smsr")
    assert form == "deploy"
    x = _input(20, 26, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(loaded(x), deploy(x))
    assert spec.size_multiple("base") == 2


def test_odd_sizes_pad_inside_and_crop():
    model = _model().double()
    x = _input(17, 23)
    with torch.no_grad():
        y = model(x)
        y_even = model(F.pad(x, (0, 1, 0, 1), mode="replicate"))
    assert y.shape == (1, 3, 34, 46)
    # Padding inside = replicate-padding outside and cropping (the bicubic residual clamps at the border,
    # which is what replicate padding does).
    assert rel_l2(y.numpy(), y_even[:, :, :34, :46].numpy()) <= 1e-12
    for hw in ((1, 1), (3, 2)):
        assert model(_input(*hw)[..., : hw[0], : hw[1]]).shape[2:] == (2 * hw[0], 2 * hw[1])


def test_gumbel_training_form_trains_masks():
    model = _model().train()
    x = _input(16, 16, dtype=torch.float32)
    torch.manual_seed(0)  # the Gumbel noise
    sr, sparsity = model(x)
    assert sr.shape == (1, 3, 32, 32)
    assert sparsity.shape == (5, 64 * 4, 16, 16)  # per SMM: layers x channels, as the official model
    # s * M + d with s + d = 1 (softmax) and M in [0, 1]: within [0, 1] up to float rounding
    assert float(sparsity.detach().min()) >= 0 and float(sparsity.detach().max()) <= 1 + 1e-6
    (sr.abs().mean() + sparsity.mean()).backward()
    assert model.body[0].body.ch_mask.grad.abs().sum() > 0
    assert model.body[0].spa_mask[5].weight.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    deploy = reparameterize_model(_model())
    path = tmp_path_factory.mktemp("smsr") / "smsr.onnx"
    export_onnx(UnitRangeIO(deploy, 255.0), path, sample_hw=(32, 32))
    return deploy, path


def test_onnx_parity_and_graph(exported):
    deploy, path = exported
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"Greater", "Resize", "ConvTranspose"} <= ops and not ops & {"NonZero", "ScatterND", "ScatterElements"}
    inputs = natural_inputs([(32, 32), (21, 27)], seed=2)
    (par,) = compare(TorchRunner(UnitRangeIO(deploy, 255.0), name="eager"), [OnnxRuntimeRunner(path)], inputs)
    assert par.rel_l2 <= 1e-5, par
    extras = smsr_parity_extras(deploy, path, inputs)
    assert extras["mask_pixels"] == 5 * (32 * 32 + 22 * 28)
    assert extras["mask_flips"] == 0


def test_mask_flip_counter_sees_a_changed_mask(exported, tmp_path):
    deploy, path = exported
    model = onnx.load(str(path))
    first = next(n for n in model.graph.node if n.op_type == "Greater")
    first.input[0], first.input[1] = first.input[1], first.input[0]  # mask of SMM 1 inverted
    broken = tmp_path / "inverted.onnx"
    onnx.save(model, str(broken))
    inputs = natural_inputs([(24, 24)], seed=3)
    extras = smsr_parity_extras(deploy, broken, inputs)
    assert extras["mask_pixels"] == 5 * 24 * 24
    assert extras["mask_flips"] >= 24 * 24 - 2  # every pixel of SMM 1 except exact ties


def test_wrong_scale_checkpoint_names_scale(tmp_path):
    ckpt = tmp_path / "smsr_x2.pt"
    torch.save(_model(2).state_dict(), ckpt)
    with pytest.raises(CheckpointError, match="--scale"):
        load_weights(build_model("smsr", None, 3)[2], read_state_dict(ckpt), model_label="smsr x3")
    train, form = load_weights(build_model("smsr", None, 2)[2], read_state_dict(ckpt))
    assert form == "train"
    x = _input(12, 14, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(train(x), copy.deepcopy(_model(2))(x))


def test_every_mask_layer_is_one_full_conv_plus_a_dense_input_conv(exported):
    """Deploy form: per SMB layer one conv over all 64 input channels (never a conv on the sparse channel
    slice), plus, only where a layer has dense inputs and dense outputs, one small conv from the dense inputs to
    the dense outputs; the mask selects between the two by arithmetic."""
    deploy, path = exported
    proto = onnx.load(str(path))
    shapes = {i.name: tuple(i.dims) for i in proto.graph.initializer}
    shapes.update({n.output[0]: tuple(n.attribute[0].t.dims) for n in proto.graph.node if n.op_type == "Constant"})
    convs = sorted(shapes[n.input[1]][:2] for n in proto.graph.node
                   if n.op_type == "Conv" and shapes.get(n.input[1], (0, 0, 0))[2:] == (3, 3))
    small = []
    for body in (m for m in deploy.modules() if isinstance(m, SparseMaskBody)):
        n_in = 64
        for n_out in body.dense_out.tolist():
            small += [(n_out, n_in)] if 0 < n_in < 64 and n_out else []
            n_in = n_out
    assert small, "the test weights must exercise the dense-input conv"
    q = 16  # the mask branch's two 3x3 convs per SMM
    # head (3 -> 64, 64 -> 64), 5 SMMs x (4 full layers + mask branch), the collect's 3x3, the tail (64 -> 12)
    expected = [(64, 3), (64, 64)] + 5 * ([(64, 64)] * 4 + [(q, 64), (q, q)]) + [(64, 64), (12, 64)] + small
    assert convs == sorted(expected)
    assert "Where" not in {n.op_type for n in proto.graph.node}
