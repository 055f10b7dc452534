"""The export stage functions on small real networks: dynamic dims, the static-size guard, simplifiers,
checkpoint normalisation and the parity metrics."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lipt_export.errors import ExportError
from lipt_export.export.onnx_export import export_onnx, node_count, spatial_dims
from lipt_export.export.simplify import simplify_onnx
from lipt_export.errors import CheckpointError
from lipt_export.models.checkpoint import load_weights, normalize_state_dict
from lipt_export.runtime.eager import TorchRunner
from lipt_export.runtime.ort import OnnxRuntimeRunner
from lipt_export.validation.inputs import natural_inputs
from lipt_export.validation.metrics import psnr
from lipt_export.validation.parity import compare, rel_l2


class SmallSR(nn.Module):
    """Conv -> ReLU -> Conv -> PixelShuffle plus a bicubic skip: the shape of most SR tails."""

    def __init__(self, scale=2):
        super().__init__()
        self.scale = scale
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 3 * scale * scale, 3,
                                                                                        padding=1))
        self.up = nn.PixelShuffle(scale)

    def forward(self, x):
        skip = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return self.up(self.body(x)) + skip


class BakedSize(SmallSR):
    """Uses Python ints from the input shape: the tracer freezes them, so the graph only fits one size."""

    def forward(self, x):
        h, w = int(x.shape[2]), int(x.shape[3])
        return F.interpolate(x, size=(h * self.scale, w * self.scale), mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = SmallSR().eval()
    path = tmp_path_factory.mktemp("stages") / "small.onnx"
    info = export_onnx(model, path, sample_hw=(32, 32))
    return model, path, info


def test_export_is_dynamic_and_matches(small_onnx):
    model, path, info = small_onnx
    assert info.exporter.endswith("(torchscript)") and info.opset == 17
    proto = onnx.load(str(path))
    assert all(isinstance(d, str) for d in spatial_dims(proto))
    (par,) = compare(TorchRunner(model), [OnnxRuntimeRunner(path)], natural_inputs([(32, 32), (37, 51)], seed=1))
    assert par.rel_l2 < 1e-5 and par.sizes == [[32, 32], [37, 51]]


def test_baked_size_is_refused(tmp_path):
    with pytest.raises(ExportError, match="not size-generic"):
        export_onnx(BakedSize().eval(), tmp_path / "baked.onnx", sample_hw=(32, 32))


@pytest.mark.parametrize("tool", ["onnxsim", "onnxslim", "auto"])
def test_simplifiers_keep_dims_and_numerics(small_onnx, tmp_path, tool):
    model, path, _ = small_onnx
    out = tmp_path / f"{tool}.onnx"
    res = simplify_onnx(path, out, tool)
    assert res.tool in ("onnxsim", "onnxslim") and res.nodes_after <= res.nodes_before
    assert res.nodes_after == node_count(out)
    assert all(isinstance(d, str) for d in spatial_dims(onnx.load(str(out))))
    (par,) = compare(TorchRunner(model), [OnnxRuntimeRunner(out)], natural_inputs([(24, 40), (33, 29)], seed=2))
    assert par.rel_l2 < 1e-5


def test_normalize_state_dict_layouts():
    t = torch.ones(2)
    assert normalize_state_dict({"model_state_dict": {"module.a": t}, "epoch": 3}) == {"a": t}
    assert normalize_state_dict({"params": {"b": t}}) == {"b": t}
    assert normalize_state_dict({"c": t, "step": 1}) == {"c": t}
    with pytest.raises(CheckpointError, match="holds no state_dict"):
        normalize_state_dict({"epoch": 3})


def test_load_weights_reports_all_three_kinds():
    model = SmallSR()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd.pop("body.0.bias")
    sd["body.2.weight"] = torch.zeros(5, 16, 3, 3)
    sd["extra.w"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        load_weights(SmallSR(), sd, model_label="small")
    msg = str(err.value)
    assert "1 missing (body.0.bias)" in msg and "1 unexpected (extra.w)" in msg
    assert "1 misshaped (body.2.weight (5, 16, 3, 3) vs (12, 16, 3, 3))" in msg
    assert "\n" not in msg


def test_metrics_behave():
    rng = np.random.default_rng(0)
    ref = rng.random((1, 3, 8, 8)).astype(np.float32)
    assert rel_l2(ref, ref) == 0 and psnr(ref, ref) == 200.0
    noisy = ref + 0.01
    assert abs(psnr(noisy, ref) - 40.0) < 1e-3
    assert abs(rel_l2(2 * ref, ref) - 1.0) < 1e-6
