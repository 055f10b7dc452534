"""Architecture from the checkpoint (issue 14): every official form's layout, built synthetically here, exports
through the CLI without architecture flags and computes what the checkpoint computed (float64 references of the
semantics each should have, at a size that is a multiple of the window and one that is not)."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from lipt_export.cli import main
from lipt_export.errors import CheckpointError, ModelError
from lipt_export.models.agileir import AgileIR, AgileIRConfig, read_agileir_arch
from lipt_export.models.arch import resolve_architecture
from lipt_export.models.layers import DIV2K_MEAN
from lipt_export.models.loading import prepare_model
from lipt_export.models.lipt import LIPT, LIPTConfig, init_lipt_for_tests
from lipt_export.models.registry import get_spec
from lipt_export.runtime.ort import OnnxRuntimeRunner
from lipt_export.validation.inputs import natural_inputs
from lipt_export.validation.parity import rel_l2

SIZES = [(48, 64), (37, 51)]  # one a multiple of every window here, one not
TOL = 1e-5


def _export(tmp_path, *args):
    res = CliRunner().invoke(main, ["--out", str(tmp_path / "out"), "--no-lint", "--backend", "onnxruntime",
                                    "--parity-size", "40x40",
                                    "--parity-size", "37x51", *map(str, args)], catch_exceptions=False)
    return res


def _one_export(tmp_path):
    (d,) = [p for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")]
    return d, json.loads((d / "manifest.json").read_text())


def _onnx_vs(reference, onnx_path, rgb_range):
    """Worst rel-L2 of the ONNX model against ``reference`` (a float64 callable on the native range)."""
    ort = OnnxRuntimeRunner(onnx_path)
    worst = 0.0
    for x in natural_inputs(SIZES, seed=3):
        with torch.no_grad():
            ref = reference(torch.from_numpy(x).double() * rgb_range).numpy() / rgb_range
        worst = max(worst, rel_l2(ort.infer(x), ref))
    print(f"\n{onnx_path.parent.name}: ONNX vs float64 reference, worst rel-L2 {worst:.2e}")
    return worst


# -- LIPT -------------------------------------------------------------------------------------------------

def _lipt_checkpoint(tmp_path, config: LIPTConfig, scale: int, seed: int = 0):
    """The official train.py layout: {"epoch", "model_state_dict": {"module." + key}, ...}."""
    model = LIPT(config, scale).eval()
    init_lipt_for_tests(model, seed)
    path = tmp_path / f"lipt_x{scale}.pt"
    torch.save({"epoch": 1000, "model_state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                "optimizer_state_dict": {}}, path)
    return model, path


def _yaml(tmp_path, m_elan, channels, n_share=1, window=8, scale=2):
    path = tmp_path / "trained_with.yml"
    path.write_text(f"model: 'lipt'\nscale: {scale}\nrgb_range: 255\ncolors: 3\nm_elan: {m_elan}\nc_elan: {channels}\n"
                    f"n_share: {n_share}\nr_expand: 1\ndeploy: False\nact_type: 'relu'\n"
                    f"window_sizes: [{window},{window}]\npatch_size: 512\nbatch_size: 32\n")
    return path


@pytest.fixture(scope="module")
def small_x4_5_blocks(tmp_path_factory):
    """LIPT-small trained at x4 with the 5-block light config (our small x4 default has 6 blocks)."""
    tmp = tmp_path_factory.mktemp("lipt5")
    model, ckpt = _lipt_checkpoint(tmp, LIPTConfig(m_elan=10, channels=64, n_share=1, window=8), 4)
    return model, ckpt, tmp


def test_lipt_5_block_x4_exports_without_flags(small_x4_5_blocks, tmp_path):
    model, ckpt, _ = small_x4_5_blocks
    res = _export(tmp_path, "--model", "lipt", "--scale", 4, "--weights", ckpt)
    assert res.exit_code == 0, res.output
    d, man = _one_export(tmp_path)
    arch = man["model"]["architecture"]
    assert d.name == "lipt-small-x4" and arch["config"]["m_elan"] == 10 and arch["sources"]["m_elan"] == "checkpoint"
    assert arch["sources"]["window"] == "variant small" and any("window 8" in n for n in arch["notes"])
    assert "5 blocks" in res.output  # the summary names the architecture it read
    ref = copy.deepcopy(model).double().eval()
    assert _onnx_vs(ref, d / "model.onnx", 255.0) <= TOL


def test_lipt_explicit_variant_that_disagrees_says_what_the_checkpoint_is(small_x4_5_blocks, tmp_path):
    _, ckpt, _ = small_x4_5_blocks
    res = _export(tmp_path, "--model", "lipt", "--variant", "small", "--scale", 4, "--weights", ckpt)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert "checkpoint is LIPT with 5 blocks" in lines[0] and "64 channels" in lines[0] and "x4" in lines[0]
    assert "--config" in lines[0] and "omit --variant" in lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_lipt_config_file_the_checkpoint_was_trained_with(small_x4_5_blocks, tmp_path):
    model, ckpt, tmp = small_x4_5_blocks
    yml = _yaml(tmp, m_elan=10, channels=64)  # the light config, its scale line still saying 2
    res = _export(tmp_path, "--model", "lipt", "--variant", "small", "--scale", 4, "--weights", ckpt, "--config", yml)
    assert res.exit_code == 0, res.output
    _, man = _one_export(tmp_path)
    arch = man["model"]["architecture"]
    assert arch["sources"]["window"] == "config file" and arch["config"]["m_elan"] == 10
    assert any("scale 2" in n for n in arch["notes"])
    # a config that contradicts the weights is refused, naming the field
    bad = _yaml(tmp, m_elan=12, channels=64)
    with pytest.raises(CheckpointError, match="m_elan"):
        resolve_architecture(get_spec("lipt"), None, 4, state_dict=model.state_dict(), config_file=str(bad))


def test_lipt_non_default_channels_and_window(tmp_path):
    """32 channels, 2 blocks, window 16 from the YAML: no named variant, built exactly as trained."""
    config = LIPTConfig(m_elan=4, channels=32, n_share=1, window=16)
    model, ckpt = _lipt_checkpoint(tmp_path, config, 2, seed=5)
    yml = _yaml(tmp_path, m_elan=4, channels=32, window=16)
    res = _export(tmp_path, "--model", "lipt", "--scale", 2, "--weights", ckpt, "--config", yml)
    assert res.exit_code == 0, res.output
    d, man = _one_export(tmp_path)
    assert d.name == "lipt-custom-x2" and man["model"]["variant"] == "custom"
    assert man["model"]["architecture"]["config"] == {"m_elan": 4, "channels": 32, "n_share": 1, "window": 16,
                                                      "r_expand": 1}
    assert man["io"]["size"]["multiple_of"] == 16 and man["io"]["tiling"]["overlap"] == 128
    ref = copy.deepcopy(model).double().eval()
    assert _onnx_vs(ref, d / "model.onnx", 255.0) <= TOL


def test_lipt_reader_on_a_deploy_checkpoint_and_wrong_family():
    config = LIPTConfig(m_elan=6, channels=24, n_share=2, window=8)
    model = LIPT(config, 3, deploy=True)
    found = get_spec("lipt").read_arch(model.state_dict())
    assert found == {"m_elan": 6, "channels": 24, "n_share": 2, "r_expand": 1, "scale": 3}
    assert get_spec("lipt").read_arch({"conv_first.weight": torch.zeros(1)}) == {}


# -- AgileIR ----------------------------------------------------------------------------------------------

SMALL_AGILEIR = AgileIRConfig(window_size=8, depths=(2, 2), embed_dim=24, num_heads=(3, 3), key_dims=(8, 8))


def _agileir_checkpoint(tmp_path, public: bool, seed: int = 0, config: AgileIRConfig = SMALL_AGILEIR):
    """Official KAIR layout ({step}_G.pth = raw state dict, with the size-dependent attn_mask buffers). A
    public-code checkpoint never trains the attention-output BatchNorm: gamma = beta = 0 (its init)."""
    spec = get_spec("agileir")
    model = AgileIR(config, upscale=2).eval()
    spec.init_for_tests(model, seed)
    sd = model.state_dict()
    for k in list(sd):
        if ".attn.groupatt.proj.1.bn." in k and k.rsplit(".", 1)[1] in ("weight", "bias"):
            if public:
                sd[k] = torch.zeros_like(sd[k])
        if k.endswith("blocks.1.attn.relative_position_bias_table"):
            sd[k.replace("attn.relative_position_bias_table", "attn_mask")] = torch.zeros(16, 64, 64)
    model.load_state_dict({k: v for k, v in sd.items() if not k.endswith("attn_mask")})
    path = tmp_path / ("public_G.pth" if public else "trained_G.pth")
    torch.save(sd, path)
    return model, path


def public_code_reference(model: AgileIR):
    """What the public code computes, written out from the modules' weights: every block is
    x + LN1(x), then x + MLP(LN2(x)); no attention, no shift mask."""
    def forward(x):
        h, w = x.shape[2:]
        ws = model.window_size
        x = F.pad(x, (0, (ws - w % ws) % ws, 0, (ws - h % ws) % ws), mode="reflect")
        mean = torch.tensor(DIV2K_MEAN, dtype=x.dtype).reshape(1, 3, 1, 1)
        feat = model.conv_first(x - mean)
        b, c, hp, wp = feat.shape
        t = model.patch_embed.norm(feat.flatten(2).transpose(1, 2))
        for layer in model.layers:
            y = t
            for blk in layer.residual_group.blocks:
                y = y + blk.norm1(y)
                y = y + blk.mlp(blk.norm2(y))
            t = layer.conv(y.transpose(1, 2).reshape(b, c, hp, wp)).flatten(2).transpose(1, 2) + t
        body = model.norm(t).transpose(1, 2).reshape(b, c, hp, wp)
        out = model.upsample(model.conv_after_body(body) + feat) + mean
        return out[:, :, :h * model.upscale, :w * model.upscale]
    return forward


def _softmax_count(onnx_path):
    import onnx

    return sum(n.op_type == "Softmax" for n in onnx.load(str(onnx_path)).graph.node)


def test_agileir_public_code_checkpoint_exports_public_semantics(tmp_path):
    model, ckpt = _agileir_checkpoint(tmp_path, public=True)
    assert read_agileir_arch(torch.load(ckpt, weights_only=True))["attention"] == "public"
    res = _export(tmp_path, "--model", "agileir", "--scale", 2, "--weights", ckpt)
    assert res.exit_code == 0, res.output
    d, man = _one_export(tmp_path)
    arch = man["model"]["architecture"]
    assert arch["config"]["attention"] == "public" and arch["sources"]["attention"] == "checkpoint"
    assert any("exactly zero" in n for n in arch["notes"]) and "public attention" in res.output
    assert arch["config"]["depths"] == [2, 2] and arch["config"]["key_dims"] == [8, 8]
    assert _softmax_count(d / "model.onnx") == 0  # no attention at all: a smaller graph
    ref = public_code_reference(copy.deepcopy(model).double().eval())
    assert _onnx_vs(ref, d / "model.onnx", 1.0) <= TOL
    # the intended semantics differ on these weights: the check above could not pass by accident
    intended = copy.deepcopy(model).double().eval()
    x = torch.from_numpy(natural_inputs([(37, 51)], seed=3)[0]).double()
    with torch.no_grad():
        assert rel_l2(intended(x).numpy(), ref(x).numpy()) > 1e-2


def test_agileir_trained_attention_exports_the_intended_attention(tmp_path):
    model, ckpt = _agileir_checkpoint(tmp_path, public=False, seed=1)
    res = _export(tmp_path, "--model", "agileir", "--scale", 2, "--weights", ckpt)
    assert res.exit_code == 0, res.output
    d, man = _one_export(tmp_path)
    assert man["model"]["architecture"]["config"]["attention"] == "intended"
    assert _softmax_count(d / "model.onnx") > 0
    assert _onnx_vs(copy.deepcopy(model).double().eval(), d / "model.onnx", 1.0) <= TOL


def test_agileir_attention_can_be_forced_and_the_flag_is_checked(tmp_path):
    model, ckpt = _agileir_checkpoint(tmp_path, public=False, seed=1)
    spec = get_spec("agileir")
    sd = torch.load(ckpt, weights_only=True)
    arch = resolve_architecture(spec, None, 2, state_dict=sd, options={"attention": "public"})
    assert arch.config.attention == "public" and arch.sources["attention"] == "option"
    assert any("forced" in n for n in arch.notes)
    res = _export(tmp_path, "--model", "lipt", "--variant", "tiny", "--scale", 2, "--agileir-attention", "public")
    assert res.exit_code == 2 and "--agileir-attention is for --model agileir" in res.stderr


def test_agileir_kair_option_file(tmp_path):
    opt = tmp_path / "train_small.json"
    opt.write_text('{\n  "netG": {\n    "net_type": "agileir" // the network\n  , "upscale": 2\n  , "window_size": 8\n'
                   '  , "depths": [2, 2], "embed_dim": 24, "num_heads": [3, 3], "key_dims": [8, 8]\n'
                   '  , "mlp_ratio": 2, "upsampler": "pixelshuffledirect", "resi_connection": "1conv"\n  }\n}\n')
    arch = resolve_architecture(get_spec("agileir"), None, 2, config_file=str(opt))
    assert arch.config == SMALL_AGILEIR and arch.variant == "custom" and arch.sources["embed_dim"] == "config file"
    opt.write_text('{"netG": {"net_type": "swinir"}}')
    with pytest.raises(ModelError, match="swinir"):
        resolve_architecture(get_spec("agileir"), None, 2, config_file=str(opt))


def test_fixed_architecture_families_read_the_scale():
    from lipt_export.models.registry import build_model

    for name in ("smsr", "esrt"):
        spec = get_spec(name)
        for s in spec.scales:
            assert spec.read_arch(build_model(name, None, s)[2].state_dict()) == {"scale": s}
    assert np.isclose(get_spec("agileir").read_arch(AgileIR(SMALL_AGILEIR, 4).state_dict())["scale"], 4)


def test_fixed_architecture_families_read_their_argument_sets(tmp_path):
    args = tmp_path / "smsr_args.txt"
    args.write_text("--model SMSR --scale 3 --n_feats 64 --patch_size 96\n")
    arch = resolve_architecture(get_spec("smsr"), None, 2, config_file=str(args))
    assert arch.variant == "base" and any("config file says scale 3" in n for n in arch.notes)
    args.write_text("--scale 2 --n_feats 48\n")
    with pytest.raises(ModelError, match="--n_feats 48 differs from SMSR's published n_feats 64"):
        resolve_architecture(get_spec("smsr"), None, 2, config_file=str(args))
    args.write_text("--scale 4 --n_feats 32\n")
    assert resolve_architecture(get_spec("esrt"), None, 4, config_file=str(args)).notes == ()


def test_agileir_variant_with_a_public_code_checkpoint_of_that_variant_loads(tmp_path):
    """`--variant normal` and a checkpoint of `normal` trained with the public code: the attention form is what
    the weights were trained to compute, not a size the variant fixes, so it loads (as without --variant), also
    with --agileir-attention public and with the KAIR option file of that variant."""
    from lipt_export.models.agileir import VARIANTS

    _, ckpt = _agileir_checkpoint(tmp_path, public=True, config=VARIANTS["normal"])
    kair = tmp_path / "train_agileir_x2_lightweight_normal.json"
    kair.write_text(json.dumps({"netG": {"net_type": "agileir", "upscale": 2, "window_size": 8, "embed_dim": 60,
                                         "depths": [8, 8, 8, 8], "num_heads": [6, 6, 6, 6],
                                         "key_dims": [16, 16, 16, 16], "mlp_ratio": 2}}))
    spec = get_spec("agileir")
    for variant, options, config in ((None, {}, None), ("normal", {}, None), ("normal", {"attention": "public"}, None),
                                     ("normal", {}, str(kair))):
        prepared = prepare_model(spec, variant, 2, str(ckpt), options=options, config_file=config)
        assert prepared.arch.variant == "normal" and prepared.arch.config.attention == "public", (variant, options)
    res = _export(tmp_path, "--model", "agileir", "--variant", "normal", "--scale", 2, "--weights", ckpt,
                  "--config", kair)
    assert res.exit_code == 0, res.output
    d, man = _one_export(tmp_path)
    assert d.name == "agileir-normal-x2" and man["model"]["architecture"]["config"]["attention"] == "public"
    # a real disagreement on a size is still refused, naming what the checkpoint is
    _, small = _agileir_checkpoint(tmp_path, public=True)
    with pytest.raises(CheckpointError, match="but --variant normal is"):
        prepare_model(spec, "normal", 2, str(small))
