"""LIPT checkpoint layouts: raw state_dict, {'model_state_dict': ...}, ``module.`` prefix, deploy form,
.safetensors, the official convert.py output (``.dbb_reparam`` keys, project_inp BN unfused), and a wrong
scale giving one CheckpointError that lists the misshaped keys. Weights: the documented deterministic
``init_for_tests`` initialisation (random non-trivial BN statistics, moderate attention logits)."""
from __future__ import annotations

import copy
import re

import pytest
import torch

from lipt_export.errors import CheckpointError
from lipt_export.models.checkpoint import load_weights, read_state_dict
from lipt_export.models.lipt.hrm import RepConv3x3
from lipt_export.models.lipt import build_lipt
from lipt_export.models.registry import get_spec
from lipt_export.models.reparam import reparameterize_model

SPEC = get_spec("lipt")


@pytest.fixture(scope="module")
def source():
    model = build_lipt("tiny", 2).eval()
    SPEC.init_for_tests(model, 3)
    x = torch.rand(1, 3, 16, 24, generator=torch.Generator().manual_seed(1)) * 255
    deploy = reparameterize_model(model)
    with torch.no_grad():
        return model, deploy, x, deploy(x)


def load(path_or_sd, scale=2):
    sd = read_state_dict(path_or_sd) if not isinstance(path_or_sd, dict) else path_or_sd
    target = build_lipt("tiny", scale).eval()
    return load_weights(target, SPEC.remap_checkpoint_keys(sd), model_label=f"lipt-tiny x{scale}",
                        ignore=SPEC.ignored_checkpoint_keys)


def assert_same_output(loaded, form, source, expected_form):
    _, _, x, ref = source
    assert form == expected_form
    with torch.no_grad():
        out = reparameterize_model(loaded)(x)
    assert float((out - ref).norm() / ref.norm()) < 1e-6


@pytest.mark.parametrize("layout", ["raw", "wrapped", "module_prefix"])
def test_train_form_layouts(source, tmp_path, layout):
    model = source[0]
    sd = model.state_dict()
    obj = {"raw": sd, "wrapped": {"epoch": 5, "model_state_dict": sd},
           "module_prefix": {"model_state_dict": {f"module.{k}": v for k, v in sd.items()}}}[layout]
    path = tmp_path / "ckpt.pt"
    torch.save(obj, path)
    assert_same_output(*load(path), source, "train")


def test_deploy_form_and_safetensors(source, tmp_path):
    from safetensors.torch import save_file

    deploy = source[1]
    path = tmp_path / "deploy.pt"
    torch.save(deploy.state_dict(), path)
    assert_same_output(*load(path), source, "deploy")
    st = tmp_path / "train.safetensors"
    save_file({k: v.contiguous() for k, v in source[0].state_dict().items()}, str(st))
    assert_same_output(*load(st), source, "train")


def official_convert_output(model):
    """What the official convert.py writes: DBBs fused into ``<conv>.dbb_reparam.{weight,bias}``, the
    project_inp conv + BN left as they are (convert.py never fuses them)."""
    half = copy.deepcopy(model)
    for m in half.modules():
        if isinstance(m, RepConv3x3):
            m.reparameterize()
    pattern = re.compile(r"(\.modules_hrm_[abc]\.lcs_[abc]_\d+\.conv[01])\.(weight|bias)$")
    return {pattern.sub(r"\1.dbb_reparam.\2", k): v for k, v in half.state_dict().items()}


def test_official_convert_py_output(source, tmp_path):
    sd = official_convert_output(source[0])
    assert any(k.endswith("conv0.dbb_reparam.weight") for k in sd)
    assert any(".project_inp.1.running_var" in k for k in sd)
    path = tmp_path / "converted.pth"
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    assert_same_output(*load(path), source, "deploy")


def test_wrong_scale_lists_misshaped_keys(source):
    with pytest.raises(CheckpointError) as err:
        load(source[0].state_dict(), scale=3)
    msg = str(err.value)
    assert "\n" not in msg and "misshaped" in msg and "tail.0.weight" in msg and "(27, 24, 3, 3)" in msg


def test_truncated_checkpoint_lists_missing_keys(source):
    sd = dict(source[1].state_dict())
    sd.pop("head.0.weight")
    with pytest.raises(CheckpointError, match=r"1 missing \(head\.0\.weight\)"):
        load(sd)
