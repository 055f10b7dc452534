"""ESRT: exact parameter counts, Unfold/Fold as one-hot convs, the dynamic FSM segmentation against the
official torch.split semantics, the official key layout (strict), eager vs ONNX Runtime parity with one
dynamic file, and the CLI export.

Weights: `esrt.init_for_tests` (deterministic, every learnable gain drawn in [0.7, 1.3]).
"""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

from lipt_export.cli import main
from lipt_export.engines.shapes import MAX_ELEMENTS, check_max_shape, largest_tensor, parse_profile
from lipt_export.errors import ProfileError
from lipt_export.export.onnx_export import spatial_dims
from lipt_export.models import esrt
from lipt_export.errors import CheckpointError
from lipt_export.models.checkpoint import load_weights, read_state_dict
from lipt_export.models.io import UnitRangeIO
from lipt_export.models.registry import build_model, get_spec
from lipt_export.runtime.eager import TorchRunner
from lipt_export.runtime.ort import OnnxRuntimeRunner
from lipt_export.validation.inputs import natural_inputs
from lipt_export.validation.parity import compare, rel_l2

# models.md §2.2 (analytic from the official code; the paper's 677K / 770K / 751K)
PARAMS = {2: 677_783, 3: 770_263, 4: 751_767}


def _model(scale=2, seed=0, dtype=torch.float32):
    spec, _, model = build_model("esrt", None, scale)
    spec.init_for_tests(model, seed)
    return model.to(dtype).eval()


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_parameter_counts_match_the_official_model(scale):
    _, _, model = build_model("esrt", None, scale)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[scale]


def test_one_hot_convs_equal_unfold_and_fold():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 32, 7, 10, generator=g, dtype=torch.float64)
    cols = esrt.PatchUnfold(32).double()(x)
    ref_cols = nn.Unfold(kernel_size=3, padding=1)(x)  # the official `extract_image_patches(..., 'same')`
    assert torch.equal(cols.flatten(2), ref_cols)  # one 1.0 tap per output: bit-exact

    tokens = torch.randn(2, 288, 7 * 10, generator=g, dtype=torch.float64)
    folded = esrt.PatchFold(32).double()(tokens.reshape(2, 288, 7, 10))
    ref_fold = nn.Fold(output_size=(7, 10), kernel_size=3, padding=1)(tokens)  # official `reverse_patches`
    assert torch.allclose(folded, ref_fold, rtol=0, atol=1e-12)  # sums of 9 terms, no division
    # Fold after Unfold multiplies each pixel by its number of covering windows (9 inside, fewer at borders)
    cover = nn.Fold((7, 10), 3, padding=1)(nn.Unfold(3, padding=1)(torch.ones(1, 1, 7, 10, dtype=torch.float64)))
    assert torch.allclose(esrt.PatchFold(32).double()(cols), x * cover, atol=1e-12)


def _official_segment_attention(q, k, v, scale):
    """The official EffAttention loop: torch.split along the sequence into chunks of N // 4 tokens."""
    n = q.shape[-2]
    outs = []
    for qs, ks, vs in zip(torch.split(q, math.ceil(n // 4), dim=-2), torch.split(k, n // 4, dim=-2),
                          torch.split(v, n // 4, dim=-2)):
        outs.append(torch.softmax((qs @ ks.transpose(-2, -1)) * scale, dim=-1) @ vs)
    return torch.cat(outs, dim=-2)


@pytest.mark.parametrize("n", [4, 7, 15, 16, 1024, 960, 1887])
def test_segment_attention_matches_the_official_split(n):
    # 1024 / 960: N/4 differs, 4 | N (empty remainder); 1887 = 37x51: short 5th segment; 7, 15: N < 16,
    # where split(N // 4) yields more than 5 chunks.
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(1, 8, n, 18, generator=g, dtype=torch.float64) for _ in range(3))
    got = esrt.segment_attention(q, k, v, 1 / 6)
    ref = _official_segment_attention(q, k, v, 1 / 6)
    assert torch.allclose(got, ref, rtol=0, atol=1e-12)
    # and the segmentation is real: global attention differs
    assert not torch.allclose(got, torch.softmax(q @ k.transpose(-2, -1) / 6, -1) @ v, atol=1e-6)


def official_keys(scale: int):
    """The state-dict keys listed in models.md §2.3 (written out from the notes, not from our module)."""
    ups = ["0"] if scale in (2, 3) else ["0", "2"]
    keys = [f"up.0.{i}.{p}" for i in ups for p in ("weight", "bias")] + ["up.1.conv.weight"]
    keys += ["head.0.weight", "head.0.bias"]
    arfb = [f"layer{l}.{p}" for l in (1, 2) for p in ("conv.weight", "conv.bias", "conv1.weight", "conv1.bias",
                                                      "relu.weight", "weight1.scale", "weight2.scale")]
    arfb += ["layer4.conv.weight", "alise.conv.weight"]
    arfb += [f"atten.conv_du.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
    arfb += [f"weight{i}.scale" for i in range(1, 6)]
    for e in (1, 2, 3):
        pre = f"body.0.encoder{e}"
        keys += [f"{pre}.{m}.{k}" for m in ("encoder", "decoder_low", "decoder_high", "alise") for k in arfb]
        keys += [f"{pre}.alise2.conv.weight"]
        keys += [f"{pre}.att.conv_du.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
    keys += ["body.0.reduce.weight", "body.0.reduce.bias", "body.0.weight1.scale", "body.0.weight2.scale"]
    att = ["atten.reduce.weight", "atten.qkv.weight", "atten.proj.weight", "atten.proj.bias"]
    att += [f"{m}.{p}" for m in ("norm1", "mlp.fc1", "mlp.fc2", "norm2") for p in ("weight", "bias")]
    keys += [f"body.0.attention.{k}" for k in att]
    keys += ["body.0.alise.weight", "body.0.alise.bias"]
    keys += [f"tail.0.{i}.{p}" for i in ups for p in ("weight", "bias")] + ["tail.1.weight", "tail.1.bias"]
    keys += ["reduce.weight", "reduce.bias"]
    return keys


@pytest.mark.parametrize("scale", [2, 4])
def test_official_key_layout_loads_strictly(scale, tmp_path):
    _, _, model = build_model("esrt", None, scale)
    own = model.state_dict()
    keys = official_keys(scale)
    assert len(keys) == len(set(keys)) and set(keys) == set(own)
    g = torch.Generator().manual_seed(scale)
    synthetic = {f"module.{k}": torch.randn(own[k].shape, generator=g) for k in keys}  # DataParallel save
    path = tmp_path / "epoch_990.pth"
    torch.save(synthetic, path)
    loaded, form = load_weights(model, read_state_dict(path), model_label="esrt")
    assert form == "train"
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, synthetic[f"module.{k}"]), k
    sd = read_state_dict(path)
    with pytest.raises(CheckpointError, match="missing"):
        load_weights(model, {k: v for k, v in sd.items() if k != "body.0.weight2.scale"})
    with pytest.raises(CheckpointError, match="unexpected"):
        load_weights(model, {**sd, "body.0.extra.weight": torch.zeros(1)})


def test_demo_weights_are_deterministic_and_not_degenerate():
    a, b, c = _model(seed=0).state_dict(), _model(seed=0).state_dict(), _model(seed=1).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["head.0.weight"], c["head.0.weight"])
    gains = torch.cat([v for k, v in a.items() if k.endswith(".scale")])
    assert gains.std() > 0.05 and (gains - 1).abs().max() < 0.31
    x = torch.from_numpy(natural_inputs([(24, 24)], seed=5)[0])
    with torch.no_grad():
        y0, y1 = _model(seed=0)(x), _model(seed=1)(x)
    assert torch.isfinite(y0).all() and y0.std() > 1e-2 and rel_l2(y1.numpy(), y0.numpy()) > 1e-2


def test_spec_records_tiling():
    spec = get_spec("esrt")
    assert spec.tile_required and spec.recommended_tile == 64 and spec.rgb_range == 1.0


@pytest.fixture(scope="module")
def cli_export(tmp_path_factory):
    """One CLI export (x4, demo weights seed 0, traced at 64x64) shared by the artifact and parity tests."""
    out = tmp_path_factory.mktemp("esrt")
    result = CliRunner().invoke(main, ["--model", "esrt", "--scale", "4", "--out", str(out), "--no-lint",
                                       "--backend", "onnxruntime"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out / "esrt-base-x4"


def test_cli_export_manifest(cli_export):
    man = json.loads((cli_export / "manifest.json").read_text())
    assert man["io"]["tiling"]["required"] is True and man["io"]["tiling"]["recommended_tile"] == 64
    (art,) = man["artifacts"]
    assert art["parity"]["rel_l2"] <= 1e-5 and [37, 51] in art["parity"]["sizes"]
    assert man["model"]["params_deploy"] == PARAMS[4]


def test_onnx_parity_one_dynamic_file(cli_export):
    path = cli_export / "model.onnx"
    proto = onnx.load(str(path))
    ops = {n.op_type for n in proto.graph.node}
    assert "Col2Im" not in ops and all(isinstance(d, str) for d in spatial_dims(proto))
    model = UnitRangeIO(_model(scale=4, seed=0), 1.0).eval()  # the CLI's demo weights (seed 0)
    # Traced at 64x64. 32x32: N/4 = 256; 24x40: N/4 = 240; 37x51: 4 does not divide N, odd H and W.
    inputs = natural_inputs([(32, 32), (24, 40), (37, 51)], seed=11)
    (par,) = compare(TorchRunner(model), [OnnxRuntimeRunner(path, threads=2)], inputs)
    assert par.finite and par.rel_l2 <= 1e-5, par


def _manual_tiled_reference(model, lr, scale, plan, max_tile):
    """Reference assembly written out here: each planned tile is gathered from its source row/column ranges
    (stacking order), run eagerly, weighted and added at its output pixels. Also checks the plan itself:
    tiles no larger than ``max_tile`` and weights summing to 1 at every output pixel."""
    out = np.zeros((1, 3, scale * lr.shape[2], scale * lr.shape[3]), np.float64)
    cover = np.zeros(out.shape[2:], np.float64)
    for t in plan:
        rows = np.concatenate([np.arange(a, b) for a, b in t.rows])
        cols = np.concatenate([np.arange(a, b) for a, b in t.cols])
        assert len(rows) <= max_tile and len(cols) <= max_tile
        with torch.no_grad():
            y = model(torch.from_numpy(np.ascontiguousarray(lr[:, :, rows][:, :, :, cols]))).numpy()
        out_rows = (rows[:, None] * scale + np.arange(scale)).ravel()
        out_cols = (cols[:, None] * scale + np.arange(scale)).ravel()
        weight = np.outer(t.wy, t.wx)
        out[:, :, out_rows[:, None], out_cols[None, :]] += y * weight
        cover[out_rows[:, None], out_cols[None, :]] += weight
    assert np.allclose(cover, 1.0, atol=1e-6)
    return out


def test_runtime_tiles_by_default_and_matches_manual_tiling(cli_export):
    from lipt_export import load_runner
    from lipt_export.runtime.tiling import TiledRunner

    runner = load_runner(cli_export, backend="onnxruntime", threads=2)
    assert isinstance(runner, TiledRunner) and runner.tile == 64 and runner.overlap == 16
    lr = natural_inputs([(80, 112)], seed=21)[0]  # several tiles along both axes
    plan = runner.plan(80, 112)
    assert len(plan) >= 4
    got = runner.infer(lr)
    eager = UnitRangeIO(_model(scale=4, seed=0), 1.0).eval()
    ref = _manual_tiled_reference(eager, lr, 4, plan, max_tile=64)
    assert rel_l2(got, ref) <= 1e-5
    # tiling is not a no-op for ESRT (attention spans a quarter of whatever it is given)
    with torch.no_grad():
        whole = eager(torch.from_numpy(lr)).numpy()
    assert rel_l2(whole, ref) > 1e-4


def test_a_profile_esrt_cannot_build_is_refused_before_torch_loads(cli_export, tmp_path):
    """`--shapes` whose MAX makes ESRT's attention pass 2^31 elements: one line with the largest MAX that fits,
    from the catalog alone (torch never imported), and nothing written."""
    code = ("import sys\nfrom lipt_export.cli import main\ntry:\n    main(sys.argv[1:], prog_name='lipt-export')\n"
            "except SystemExit as exc:\n    print('exit', exc.code, 'torch loaded:', 'torch' in sys.modules)\n")
    res = subprocess.run([sys.executable, "-c", code, "--model", "esrt", "--scale", "4", "--shapes",
                          "32x32:64x64:512x512", "--out", str(tmp_path / "out")], capture_output=True, text=True,
                         timeout=120)
    assert "exit 2 torch loaded: False" in res.stdout, res.stdout + res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("lipt-export: error: --shapes max 512x512") and "largest MAX that fits is 181x181" in line
    assert not (tmp_path / "out").exists()
    # the bound the refusal used is the graph's: 181x181 fits, 182x182 does not (measured on the exported file)
    onnx_path = cli_export / "model.onnx"
    assert largest_tensor(onnx_path, [1, 3, 181, 181]).largest < MAX_ELEMENTS
    assert largest_tensor(onnx_path, [1, 3, 182, 182]).largest >= MAX_ELEMENTS


def test_the_exact_check_names_the_largest_max_of_the_graph(cli_export):
    """After export, the exact check measures the graph and names the largest square MAX it can hold."""
    with pytest.raises(ProfileError, match=r"largest MAX that fits is 181x181"):
        check_max_shape(cli_export / "model.onnx", parse_profile("32x32:64x64:200x200"))
    assert check_max_shape(cli_export / "model.onnx", parse_profile("32x32:64x64:64x64")).largest < MAX_ELEMENTS
