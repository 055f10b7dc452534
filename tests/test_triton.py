"""`lipt-export triton`: every generated config.pbtxt is parsed with Triton's own ModelConfig protobuf
(from the tritonclient package) and checked field by field against the manifest / the ONNX graph."""
from __future__ import annotations

import json
import shutil

import onnx
import pytest
from click.testing import CliRunner

from helpers import manifest_json
from lipt_export import manifest as mf
from lipt_export.cli import main
from lipt_export.engines.triton import model_config_pb2, parse_config, write_triton_model
from lipt_export.errors import TritonError
from lipt_export.tiling import POLICY_TILE
from helpers.serving_toys import add_fp16_io_artifact, make_export

pb2 = model_config_pb2()  # tritonclient is a [dev] dependency, as pytest is: always there when the tests run
ONNX_TYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16"}


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    d = make_export(tmp_path_factory.mktemp("triton"))
    add_fp16_io_artifact(d)
    return d


def _load(res):
    return parse_config(res["config"].read_text())


def _check_io_against_onnx(cfg, onnx_path, manifest):
    graph = onnx.load(str(onnx_path)).graph
    (inp,), (out,) = cfg.input, cfg.output
    assert inp.name == graph.input[0].name == manifest["io"]["input"]["name"]
    assert out.name == graph.output[0].name == manifest["io"]["output"]["name"]
    assert pb2.DataType.Name(inp.data_type) == ONNX_TYPES[graph.input[0].type.tensor_type.elem_type]
    assert pb2.DataType.Name(out.data_type) == ONNX_TYPES[graph.output[0].type.tensor_type.elem_type]


@pytest.mark.parametrize("precision,dtype", [("fp32", "TYPE_FP32"), ("fp16", "TYPE_FP16")])
def test_onnx_model_config(export_dir, tmp_path, precision, dtype):
    man = manifest_json(export_dir)
    res = write_triton_model(export_dir, tmp_path / "repo", precision=precision, max_batch=4, instances=2)
    cfg = _load(res)
    entry = res["entry"]
    assert cfg.name == "toy-conv-x2" == res["dir"].name
    assert cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 4
    assert list(cfg.input[0].dims) == [3, -1, -1] and list(cfg.output[0].dims) == [3, -1, -1]
    assert pb2.DataType.Name(cfg.input[0].data_type) == dtype
    _check_io_against_onnx(cfg, export_dir / entry["path"], man)
    (group,) = cfg.instance_group
    assert group.count == 2 and pb2.ModelInstanceGroup.Kind.Name(group.kind) == "KIND_AUTO"
    assert not cfg.HasField("dynamic_batching")
    assert (res["dir"] / "1" / "model.onnx").read_bytes() == (export_dir / entry["path"]).read_bytes()
    assert manifest_json(res["dir"])["model"] == man["model"]


def test_dynamic_batching_and_unbatched_configs(export_dir, tmp_path):
    res = write_triton_model(export_dir, tmp_path / "repo", name="tiles", max_batch=8, dynamic_batching=True,
                             preferred_batch=[4, 8], max_queue_delay_us=250, kind="gpu")
    cfg = _load(res)
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 250
    assert pb2.ModelInstanceGroup.Kind.Name(cfg.instance_group[0].kind) == "KIND_GPU"
    flat = _load(write_triton_model(export_dir, tmp_path / "repo", name="flat", max_batch=0))
    assert flat.max_batch_size == 0 and list(flat.input[0].dims) == [-1, 3, -1, -1]
    with pytest.raises(TritonError, match="needs --max-batch >= 2"):
        write_triton_model(export_dir, tmp_path / "repo", name="bad", max_batch=1, dynamic_batching=True)


def test_plan_config_from_a_tensorrt_manifest_entry(export_dir, tmp_path):
    """Config generation for a TensorRT entry. The file below is placeholder bytes, not a plan: only the
    config and the copy are under test (real plans are built and served in docs/serving.md)."""
    d = tmp_path / "with-plan"
    shutil.copytree(export_dir, d)
    placeholder = d / "model.fp16.engine"
    placeholder.write_bytes(b"placeholder bytes for a config test")
    man = mf.read_manifest(d).with_artifacts([mf.ArtifactEntry.for_file(
        placeholder, d, fmt="tensorrt", precision="fp16", fp16_io="float16", source_onnx="model.fp16.onnx",
        tensorrt_version="11.4.0", gpu="NVIDIA H100", compute_capability="9.0",
        profile={"input": "lr", "min": [1, 3, 32, 32], "opt": [2, 3, 256, 256], "max": [4, 3, 512, 512]})])
    mf.write_manifest(d, man)
    res = write_triton_model(d, tmp_path / "repo", precision="fp16", max_batch=4)
    cfg = _load(res)
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 4
    assert [t.name for t in cfg.input] == ["lr"] and [t.name for t in cfg.output] == ["sr"]
    assert {pb2.DataType.Name(t.data_type) for t in (*cfg.input, *cfg.output)} == {"TYPE_FP16"}
    assert pb2.ModelInstanceGroup.Kind.Name(cfg.instance_group[0].kind) == "KIND_GPU"
    assert (res["dir"] / "1" / "model.plan").read_bytes() == placeholder.read_bytes()
    with pytest.raises(TritonError, match="allows batch 1..4"):
        write_triton_model(d, tmp_path / "repo", name="big", precision="fp16", max_batch=8)
    onnx_cfg = _load(write_triton_model(d, tmp_path / "repo", name="onnx16", precision="fp16", fmt="onnx"))
    assert onnx_cfg.platform == "onnxruntime_onnx"
    # the tiled model of a plan pads tiles up to the profile's minimum and refuses tiles beyond its maximum
    tiled = write_triton_model(d, tmp_path / "repo", name="planbls", precision="fp16", max_batch=4, tiled=True,
                               tile=256)
    params = {k: v.string_value for k, v in parse_config(tiled["tiled"]["config"].read_text()).parameters.items()}
    assert (params["min_height"], params["min_width"], params["tile"]) == ("32", "32", "256")
    before = sorted(p.name for p in (tmp_path / "repo").iterdir())
    with pytest.raises(TritonError, match="--tile 600 exceeds the engine's profile"):
        write_triton_model(d, tmp_path / "repo", name="planbig", precision="fp16", max_batch=4, tiled=True, tile=600)
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == before  # nothing written


def test_cli_writes_repo_and_refuses_to_overwrite(export_dir, tmp_path):
    repo = tmp_path / "repo"
    args = ["triton", str(export_dir), "--repo", str(repo), "--max-batch", "2", "--instances", "3"]
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "tritonserver --model-repository=" in res.output
    cfg = parse_config((repo / "toy-conv-x2" / "config.pbtxt").read_text())
    assert cfg.instance_group[0].count == 3 and cfg.max_batch_size == 2
    again = CliRunner().invoke(main, args, catch_exceptions=False)
    assert again.exit_code != 0 and again.output.strip().count("\n") == 0 and "--force" in again.output
    forced = CliRunner().invoke(main, [*args, "--force"], catch_exceptions=False)
    assert forced.exit_code == 0
    assert sorted(p.name for p in repo.iterdir()) == ["toy-conv-x2"]  # no temp or old dirs left behind
    missing = CliRunner().invoke(main, ["triton", str(tmp_path / "nope"), "--repo", str(repo)])
    assert missing.exit_code != 0 and "lipt-export: error: no manifest" in missing.output


def test_triton_parser_rejects_invalid_configs():
    """The schema check is real: unknown fields and wrong types do not parse."""
    from google.protobuf.text_format import ParseError

    with pytest.raises(ParseError):
        parse_config('name: "x"\nmax_batch_size: "four"\n')
    with pytest.raises(ParseError):
        parse_config('name: "x"\ninput [ { name: "lr" data_type: TYPE_FP33 dims: [ 3 ] } ]\n')
    assert json.dumps(list(parse_config('name: "x"\ninput [ { dims: [ 3, -1, -1 ] } ]').input[0].dims)) == "[3, -1, -1]"


def test_tiled_writes_the_bls_model_with_the_package_tiling_and_checks_before_writing(export_dir, tmp_path):
    from lipt_export.fileio import sha256_file

    repo = tmp_path / "repo"
    res = write_triton_model(export_dir, repo, name="m", tiled=True, threads=1)
    plain_cfg, tiled_cfg = _load(res), parse_config(res["tiled"]["config"].read_text())
    assert plain_cfg.parameters["intra_op_thread_count"].string_value == "1"
    assert tiled_cfg.name == "m_tiled" and tiled_cfg.backend == "python" and tiled_cfg.max_batch_size == 0
    params = {k: v.string_value for k, v in tiled_cfg.parameters.items()}
    manifest = mf.read_manifest(export_dir)
    tile, overlap = manifest.io.tiling.resolve(None, None, POLICY_TILE)  # as local upscale tiles
    assert params == {"target_model": "m", "target_input": manifest.io.input_name,
                      "target_output": manifest.io.output_name, "target_dtype": "float32",
                      "scale": str(manifest.io.scale), "tile": str(tile), "overlap": str(overlap),
                      "multiple_of": str(manifest.io.multiple_of),
                      "min_height": str(manifest.io.min_size), "min_width": str(manifest.io.min_size)}
    version = res["tiled"]["dir"] / "1"
    import lipt_export.runtime.tiling as tiled_runner
    import lipt_export.tiling as tiling

    assert sha256_file(version / "lipt_export" / "runtime" / "tiling.py") == sha256_file(tiled_runner.__file__)
    assert sha256_file(version / "lipt_export" / "tiling.py") == sha256_file(tiling.__file__)
    assert (version / "model.py").is_file()
    # the plain model exists and the tiled one would collide: nothing is written without --force
    (repo / "n_tiled").mkdir()
    with pytest.raises(TritonError, match="n_tiled already exists"):
        write_triton_model(export_dir, repo, name="n", tiled=True)
    assert not (repo / "n").exists()
    from lipt_export.errors import TilingError

    with pytest.raises(TilingError, match="too small for overlap"):
        write_triton_model(export_dir, repo, name="o", tiled=True, tile=4, overlap=16)
    assert not (repo / "o").exists()
