"""LIPT-tiny x2 deploy graph -> ONNX -> simplified, run in ONNX Runtime against eager PyTorch.

Weights: ``init_for_tests`` (documented in lipt_export.models.lipt.init_lipt_for_tests): deterministic,
random non-trivial BN statistics, attention logits calibrated to a few units. With PyTorch's default init
LIPT's unscaled q.q^T logits make every softmax a hard argmax and fp32 parity would measure chaos; the test
below also checks that the chosen init is not in that regime (fp32 vs fp64 of the same network agree).
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch

from lipt_export.export.onnx_export import export_onnx, spatial_dims
from lipt_export.export.simplify import simplify_onnx
from lipt_export.models.io import UnitRangeIO
from lipt_export.models.lipt import build_lipt, init_lipt_for_tests
from lipt_export.models.lipt.nvsm import NVSMAttention
from lipt_export.models.reparam import reparameterize_model
from lipt_export.runtime.eager import TorchRunner
from lipt_export.runtime.ort import OnnxRuntimeRunner
from lipt_export.validation.inputs import natural_inputs
from lipt_export.validation.parity import compare

SIZES = [(32, 32), (37, 51)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    train = init_lipt_for_tests(build_lipt("tiny", 2).eval(), seed=0)
    deploy = reparameterize_model(train)
    folder = tmp_path_factory.mktemp("lipt_onnx")
    raw, simple = folder / "raw.onnx", folder / "model.onnx"
    info = export_onnx(UnitRangeIO(deploy, 255).eval(), raw, sample_hw=(32, 32))
    result = simplify_onnx(raw, simple)
    return train, deploy, raw, simple, info, result


def test_simplified_onnx_matches_eager_at_two_sizes(exported):
    train, deploy, _, simple, _, result = exported
    assert result.tool in ("onnxsim", "onnxslim", "none")
    inputs = natural_inputs(SIZES, seed=5)
    parity = compare(TorchRunner(UnitRangeIO(deploy, 255), name="eager-deploy"),
                     [OnnxRuntimeRunner(simple, name="ort-fp32"),
                      TorchRunner(UnitRangeIO(copy.deepcopy(train), 255), name="eager-train")], inputs)
    for p in parity:
        assert p.finite and p.rel_l2 <= 1e-4, p
        assert p.sizes == [[32, 32], [37, 51]]
    out = OnnxRuntimeRunner(simple).infer(inputs[1])
    assert out.shape == (1, 3, 74, 102)


def test_dims_stay_symbolic_and_graph_is_fused(exported):
    _, _, raw, simple, info, result = exported
    assert info.exporter.endswith("(torchscript)") and info.opset == 17
    model = onnx.load(str(simple))
    assert all(isinstance(d, str) for d in spatial_dims(model))
    ops = [n.op_type for n in model.graph.node]
    assert "BatchNormalization" not in ops and not {"Unfold", "Col2Im", "NonZero", "ScatterND"} & set(ops)
    # 4 blocks x 2 units x 3 HRMs x 2 convs, + per block 3 project_inp (unit 0 projects its dense and sparse
    # halves as two convs) + 2 project_out, + head, tail, 2 mean
    assert ops.count("Conv") == 4 * 2 * 3 * 2 + 4 * 5 + 2 + 2
    assert "Gather" in ops and "DepthToSpace" in ops
    assert result.nodes_after <= result.nodes_before


def test_init_is_not_chaotic(exported):
    """fp32 and fp64 of the same deploy network agree and attention is neither argmax nor uniform."""
    _, deploy, *_ = exported
    x = torch.from_numpy(natural_inputs([(40, 48)], seed=9)[0]) * 255
    maxprob = []

    def hook(mod, inp, out):
        if mod.calc_attn:
            maxprob.extend(float(a.max(-1).values.mean()) for a in out[1])

    handles = [m.register_forward_hook(hook) for m in deploy.modules() if isinstance(m, NVSMAttention)]
    with torch.no_grad():
        y32 = deploy(x).double()
    for h in handles:
        h.remove()
    with torch.no_grad():
        y64 = copy.deepcopy(deploy).double()(x.double())
    assert float((y32 - y64).norm() / y64.norm()) < 1e-5
    assert 1.5 / 64 < float(np.mean(maxprob)) < 0.6
    assert float(y64.std()) > 5.0  # output carries detail, not just the mean shift
