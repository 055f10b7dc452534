"""`lipt-export eval` and `evaluate()` on a tiny synthetic benchmark folder (no ../shared needed): the
report, LR made by imresize vs LR files, and one clear error line for each bad input.

Model: SMSR x2 with ``init_for_tests`` weights (eager) and its ONNX export (ONNX Runtime)."""
from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from helpers.cli import assert_one_line_error
from lipt_export import manifest as mf
from lipt_export.tiling import TilingPolicy
from lipt_export.cli import main
from lipt_export.validation.evaluate import evaluate
from lipt_export.export.onnx_export import export_onnx
from lipt_export.validation.imresize import imresize
from lipt_export.validation.metrics import crop_to_multiple
from lipt_export.models.io import UnitRangeIO
from lipt_export.models.registry import build_model
from lipt_export.models.reparam import reparameterize_model
from lipt_export.runtime.eager import TorchRunner
from lipt_export.runtime.ort import OnnxRuntimeRunner
from lipt_export.validation.inputs import synthetic_image

SEED = 0



def _write(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """HR only: an RGB image, a grayscale one, and one whose size is not a multiple of 2."""
    root = tmp_path_factory.mktemp("bench") / "Tiny"
    for i, (h, w) in enumerate([(26, 30), (28, 24), (27, 31)]):
        img = (synthetic_image(h, w, seed=10 + i) * 255).round().astype(np.uint8)
        if i == 1:
            img = img.mean(2).round().astype(np.uint8)
        _write(root / "HR" / f"im{i}.png", img)
    return root


def _with_lr(dataset, tmp_path, name_fn=lambda stem: f"{stem}.png", lr_of=None):
    """A copy of the dataset with LR_bicubic/X2 files made by imresize (or ``lr_of``)."""
    root = tmp_path / dataset.name
    shutil.copytree(dataset, root)
    for p in sorted((root / "HR").iterdir()):
        hr = crop_to_multiple(np.asarray(Image.open(p).convert("RGB")), 2)
        _write(root / "LR_bicubic" / "X2" / name_fn(p.stem), (lr_of or (lambda a: imresize(a, 0.5)))(hr))
    return root


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(deploy model, checkpoint path, ONNX path with embedded manifest description)."""
    spec, variant, train = build_model("smsr", None, 2)
    spec.init_for_tests(train, SEED)
    out = tmp_path_factory.mktemp("demo")
    ckpt = out / "smsr_x2_demo.pt"
    torch.save(train.state_dict(), ckpt)
    deploy = reparameterize_model(train)
    onnx_path = out / "smsr-base-x2" / "model.onnx"
    onnx_path.parent.mkdir()
    export_onnx(UnitRangeIO(deploy, spec.rgb_range), onnx_path, sample_hw=(32, 32))
    man = mf.Manifest.new(model=mf.ModelInfo("smsr", variant, 2),
                          io=mf.IOContract(2, TilingPolicy.for_model(2, 256, False)),
                          export={"opset": 17})
    mf.embed_onnx_metadata(onnx_path, man)
    return deploy, ckpt, onnx_path


def _cli(args):
    return CliRunner().invoke(main, ["eval", *args], catch_exceptions=False)


def test_cli_eval_eager_and_onnx(dataset, demo, tmp_path):
    _, ckpt, onnx_path = demo
    out_json = tmp_path / "eval.json"
    res = _cli(["--model", "smsr", "--scale", "2", "--weights", str(ckpt), "--dataset", str(dataset),
                "--artifact", str(onnx_path), "--json", str(out_json)])
    assert res.exit_code == 0, res.output
    assert "PSNR-Y" in res.stdout and "smsr-base-x2/model.onnx" in res.stdout
    report = json.loads(out_json.read_text())
    assert report["scale"] == 2 and report["images"] == 3 and "imresize" in report["lr_source"]
    eager, art = report["results"]
    assert eager["artifact"].startswith("eager") and art["precision"] == "fp32"
    for r in (eager, art):
        assert r["images"] == 3 and 10 < r["psnr_y"] < 100 and 0 < r["ssim_y"] <= 1
        assert [i["name"] for i in r["per_image"]] == ["im0", "im1", "im2"]
    assert eager["weights"]["source"] == "checkpoint"
    assert abs(art["delta_psnr_y"]) < 0.01 and art["delta_psnr_y"] == pytest.approx(art["psnr_y"] - eager["psnr_y"])


def test_lr_files_and_imresize_agree_and_xN_names(dataset, demo, tmp_path):
    deploy = demo[0]
    runner = TorchRunner(UnitRangeIO(deploy, 255.0), name="eager")
    made = evaluate([runner], dataset, 2, progress=False)
    with_files = _with_lr(dataset, tmp_path, name_fn=lambda stem: f"{stem}x2.png")
    read = evaluate([runner], with_files, 2, progress=False)
    assert read["lr_source"].endswith("X2")
    assert [i["psnr_y"] for i in read["results"][0]["per_image"]] == \
        [i["psnr_y"] for i in made["results"][0]["per_image"]]
    # different LR (nearest-neighbour decimation) changes the scores: the LR files are really used
    other = _with_lr(dataset, tmp_path / "nn", lr_of=lambda a: a[::2, ::2])
    assert evaluate([runner], other, 2, progress=False)["results"][0]["psnr_y"] != made["results"][0]["psnr_y"]


def test_evaluate_runner_list(dataset, demo):
    deploy, _, onnx_path = demo
    rep = evaluate([TorchRunner(UnitRangeIO(deploy, 255.0), name="eager"), OnnxRuntimeRunner(onnx_path)],
                   dataset, 2, limit=2, progress=False)
    assert [r["images"] for r in rep["results"]] == [2, 2] and rep["reference"] == "eager"




def _bad(args, tmp_path):
    out_json = tmp_path / "never.json"
    res = _cli(["--model", "smsr", "--scale", "2", *args, "--json", str(out_json)])
    assert not out_json.exists()
    return res


def test_bad_dataset_folders(dataset, tmp_path):
    (tmp_path / "empty" / "HR").mkdir(parents=True)
    assert_one_line_error(_bad(["--dataset", str(tmp_path / "empty")], tmp_path), "no images")
    (tmp_path / "nohr").mkdir()
    assert_one_line_error(_bad(["--dataset", str(tmp_path / "nohr")], tmp_path), "no HR/")

    mismatch = _with_lr(dataset, tmp_path / "m", name_fn=lambda stem: f"{stem}_lr.png")
    assert_one_line_error(_bad(["--dataset", str(mismatch)], tmp_path), "names do not match", "im0.png")

    wrong_size = _with_lr(dataset, tmp_path / "s", lr_of=lambda a: a[::3, ::3])
    assert_one_line_error(_bad(["--dataset", str(wrong_size)], tmp_path), "LR must be", "--scale")

    broken = tmp_path / "b" / "Tiny"
    shutil.copytree(dataset, broken)
    (broken / "HR" / "im1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    assert_one_line_error(_bad(["--dataset", str(broken)], tmp_path), "cannot read image", "im1.png")


def test_checkpoint_for_another_scale(dataset, demo, tmp_path):
    _, ckpt, onnx_path = demo
    res = _cli(["--model", "smsr", "--scale", "3", "--weights", str(ckpt), "--dataset", str(dataset)])
    assert_one_line_error(res, "--scale", "fits --scale 2")
    res = _cli(["--model", "smsr", "--scale", "3", "--no-eager", "--dataset", str(dataset),
                "--artifact", str(onnx_path)])
    assert_one_line_error(res, "x2", "--scale 2")


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="OpenVINO is not installed")
def test_eval_reports_each_artifact_on_each_runtime(dataset, demo, tmp_path):
    _, ckpt, onnx_path = demo
    out_json = tmp_path / "eval.json"
    res = _cli(["--model", "smsr", "--scale", "2", "--weights", str(ckpt), "--dataset", str(dataset),
                "--artifact", str(onnx_path), "--runtimes", "onnxruntime,openvino-f32", "--json", str(out_json)])
    assert res.exit_code == 0, res.output
    eager, ort_row, ov_row = json.loads(out_json.read_text())["results"]
    assert ort_row["artifact"] == "smsr-base-x2/model.onnx" and ort_row["runtime"] == "onnxruntime"
    assert ov_row["artifact"] == "smsr-base-x2/model.onnx@openvino-f32" and ov_row["runtime"] == "openvino-f32"
    assert ov_row["kind"] == "openvino" and ov_row["images"] == 3
    assert abs(ov_row["delta_psnr_y"]) < 0.01  # the fp32 file at f32: the same numbers
    bad = CliRunner().invoke(main, ["eval", "--model", "smsr", "--scale", "2", "--dataset", str(dataset),
                                    "--artifact", str(onnx_path), "--runtimes", "openvino"])
    assert bad.exit_code == 2 and "unknown runtime 'openvino'" in bad.stderr
