"""TensorRT layer. What needs no TensorRT runs here for real: profile parsing, the 2^31-element guard
(pure ONNX shape inference), the compatibility check of an engine's manifest entry, the parity rule and the
fail-at-once path. Building and running engines needs TensorRT and a GPU; those tests skip with the one
line from `tensorrt_status()` (docs/serving.md lists the commands for a TensorRT machine)."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from lipt_export.engines import tensorrt_status
from lipt_export.engines.shapes import MAX_ELEMENTS, ProfileSpec, check_max_shape, largest_tensor, parse_profile
from lipt_export.errors import ProfileError
from lipt_export.engines.tensorrt import engine_parity_ok
from lipt_export.errors import EngineError
from lipt_export.runtime.trt import check_engine_compat
from helpers.serving_toys import ConvSR, WindowSR, make_export

TRT_OK, TRT_WHY = tensorrt_status()
needs_trt = pytest.mark.skipif(not TRT_OK, reason=TRT_WHY)


def test_parse_profile():
    p = parse_profile("32x48:256x256:512x1024", "1:2:4")
    assert p.shape("min") == [1, 3, 32, 48] and p.shape("opt") == [2, 3, 256, 256]
    assert p.shape("max") == [4, 3, 512, 1024]
    assert ProfileSpec.from_dict(p.as_dict()) == p
    assert parse_profile("32:256:512").shape("max") == [1, 3, 512, 512]  # one number = square
    for shapes, batch, msg in [("32x32:256x256", "1:1:1", "three sizes"), ("32x32:16x16:64x64", "1:1:1", "min <= opt"),
                               ("axb:1:2", "1:1:1", "not a size"), ("8:8:8", "2:1:1", "min <= opt"),
                               ("8:8:8", "0:1:1", "positive")]:
        with pytest.raises(ProfileError, match=msg):
            parse_profile(shapes, batch)


@pytest.fixture(scope="module")
def window_onnx(tmp_path_factory):
    # WindowSR computes its reflect padding from the input shape with Mod, like LIPT: the guard must fold
    # that arithmetic to see the shapes behind it.
    return make_export(tmp_path_factory.mktemp("trt"), WindowSR(scale=2)) / "model.onnx"


def test_largest_tensor_resolves_every_shape(window_onnx):
    rep = largest_tensor(window_onnx, [1, 3, 37, 51])
    assert rep.unresolved == []
    # Biggest tensor: the 16-channel hidden conv output on the window-padded 40x56 map.
    assert rep.largest == 16 * 40 * 56 and rep.shape == [1, 16, 40, 56]
    assert largest_tensor(window_onnx, [2, 3, 64, 64]).largest == 2 * 16 * 64 * 64


def test_max_shape_guard_refuses_huge_profiles(window_onnx):
    ok = check_max_shape(window_onnx, parse_profile("32x32:256x256:4096x4096"))
    assert ok.largest == 16 * 4096 * 4096 < MAX_ELEMENTS
    with pytest.raises(ProfileError, match=r"tensor '.*' 1x16x16384x16384 = 4,294,967,296 elements .* 2\^31"):
        check_max_shape(window_onnx, parse_profile("32x32:256x256:16384x16384"))
    with pytest.raises(ProfileError, match="lower the MAX"):
        check_max_shape(window_onnx, parse_profile("32:256:4096", "1:1:8"))  # batch counts too


def test_engine_compatibility_check():
    entry = {"path": "model.fp16.engine", "tensorrt_version": "11.4.0", "gpu": "NVIDIA H100 80GB HBM3",
             "compute_capability": "9.0"}
    check_engine_compat(entry, dict(entry))
    with pytest.raises(EngineError, match=r"TensorRT '11.4.0' \(this machine: '10.16.1'\).*rebuild"):
        check_engine_compat(entry, {**entry, "tensorrt_version": "10.16.1"})
    with pytest.raises(EngineError, match=r"compute capability '9.0' \(this machine: '8.9'\), GPU"):
        check_engine_compat(entry, {**entry, "compute_capability": "8.9", "gpu": "NVIDIA L4"})


def test_engine_parity_rule():
    assert engine_parity_ok(75.0, 120.0)  # excellent in absolute terms (TF32-free fp32 engine)
    assert engine_parity_ok(44.5, 45.0) and not engine_parity_ok(43.0, 45.0)  # within 1 dB of its ONNX
    assert not engine_parity_ok(80.0, 80.0, finite=False) and not engine_parity_ok(float("nan"), 40.0)


@pytest.mark.skipif(TRT_OK, reason="TensorRT is usable here; the missing-TensorRT path cannot be shown")
def test_without_tensorrt_everything_fails_at_once(tmp_path):
    from lipt_export.cli import main
    from lipt_export.engines.tensorrt import build_engines_for_export
    from lipt_export.runtime.trt import load_engine_runner

    res = CliRunner().invoke(main, ["--model", "lipt", "--scale", "4", "--backend", "tensorrt",
                                    "--out", str(tmp_path / "out")])
    assert res.exit_code != 0 and res.output.strip() == f"lipt-export: error: {TRT_WHY}"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    for call in (lambda: load_engine_runner(tmp_path / "m.engine", {}, {}),
                 lambda: build_engines_for_export(tmp_path, [], {}, {}, [], None)):
        with pytest.raises(EngineError) as err:
            call()
        assert str(err.value) == TRT_WHY


@needs_trt
def test_engine_build_load_and_parity(tmp_path):
    """On a TensorRT machine: fp32 engine from a real ONNX, pure plan on disk, parity via the comparator,
    tiling beyond the profile, and the manifest checks on load."""
    from lipt_export import manifest as mf
    from lipt_export.engines.tensorrt import EngineOptions, build_engines_for_export
    from lipt_export.runtime.trt import load_engine_runner
    from lipt_export.runtime.eager import TorchRunner
    from lipt_export.validation.inputs import natural_inputs
    from lipt_export.validation.parity import rel_l2

    model = ConvSR(scale=2)
    d = make_export(tmp_path, model)
    man = mf.read_manifest(d)
    inputs = natural_inputs([(64, 64), (37, 51)], seed=0)
    entries = build_engines_for_export(d, man.select("onnx", "fp32"), man,
                                       EngineOptions(shapes="32x32:64x64:96x96", batch="1:1:2"), inputs,
                                       TorchRunner(model))
    (typed_entry,) = entries
    entry = typed_entry.to_dict()
    plan = (d / entry["path"]).read_bytes()
    assert entry["format"] == "tensorrt" and entry["sha256"] == mf.sha256_file(d / entry["path"])
    assert entry["parity"]["rel_l2"] < 1e-4
    import tensorrt as trt

    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    assert runtime.deserialize_cuda_engine(plan) is not None  # the file is the plan, nothing prepended
    runner = load_engine_runner(d / entry["path"], typed_entry, man)
    (big,) = natural_inputs([(150, 200)], seed=1)  # beyond the 96x96 profile: tiled
    assert rel_l2(runner.infer(big), TorchRunner(model).infer(big)) < 1e-4
    with pytest.raises(EngineError, match="rebuild"):
        load_engine_runner(d / entry["path"], typed_entry.with_details(tensorrt_version="0.0"), man)
    assert np.isfinite(runner.infer(big)).all()
