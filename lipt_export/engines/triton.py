"""Triton Inference Server model repository from an export directory.

``lipt-export triton EXPORT_DIR --repo REPO`` writes ``REPO/<name>/config.pbtxt`` and ``REPO/<name>/1/model.onnx``
(platform ``onnxruntime_onnx``) or ``REPO/<name>/1/model.plan`` (``tensorrt_plan``, from a TensorRT engine
entry), plus a copy of ``manifest.json`` beside the config for clients. I/O names and dtypes come from the
ONNX graph itself (plans: from the manifest), dims are ``[3, -1, -1]`` with the batch dimension implicit.

Dynamic batching only merges requests whose shapes are identical, so it helps SR serving only when
clients send fixed-size tiles; it is off unless asked for.
"""
from __future__ import annotations

import importlib.util
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import click

from lipt_export import manifest as mf

TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}
_ONNX_ELEM = {1: "float32", 10: "float16"}
PLATFORMS = {"onnx": ("onnxruntime_onnx", "model.onnx"), "tensorrt": ("tensorrt_plan", "model.plan")}


class TritonError(ValueError):
    """A user-facing problem generating the repository (one line)."""


def model_config_pb2():
    """Triton's own ModelConfig protobuf module from the ``tritonclient`` package, or None.

    It lives in ``tritonclient/grpc/model_config_pb2.py``; importing it the normal way runs
    ``tritonclient.grpc.__init__``, which needs grpcio (the ``[grpc]`` extra, which pins protobuf < 7), so
    the generated module is loaded from its file: it only needs protobuf."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "grpc" / "model_config_pb2.py"
    if not path.is_file():
        return None
    import sys

    if "lipt_export._triton_model_config_pb2" in sys.modules:
        return sys.modules["lipt_export._triton_model_config_pb2"]
    mod_spec = importlib.util.spec_from_file_location("lipt_export._triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    sys.modules["lipt_export._triton_model_config_pb2"] = module
    return module


def parse_config(text: str):
    """Parse config.pbtxt text with Triton's ModelConfig message (raises on an invalid config)."""
    pb2 = model_config_pb2()
    if pb2 is None:
        raise TritonError("tritonclient is not installed: `pip install -c constraints.txt tritonclient`")
    from google.protobuf import text_format

    return text_format.Parse(text, pb2.ModelConfig())


def _onnx_io(path: Path) -> Dict[str, Dict[str, str]]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    init = {i.name for i in graph.initializer}

    def desc(v):
        et = v.type.tensor_type.elem_type
        if et not in _ONNX_ELEM:
            raise TritonError(f"{path.name}: tensor '{v.name}' has ONNX element type {et}, not float32/float16")
        return {"name": v.name, "dtype": _ONNX_ELEM[et]}

    ins = [v for v in graph.input if v.name not in init]
    return {"input": desc(ins[0]), "output": desc(graph.output[0])}


def _plan_io(manifest: Dict[str, Any], entry: Dict[str, Any]) -> Dict[str, Dict[str, str]]:
    io_dtype = entry.get("io_dtype") or entry.get("fp16_io") or "float32"
    return {k: {"name": manifest["io"][k]["name"], "dtype": io_dtype} for k in ("input", "output")}


def choose_entry(manifest: Dict[str, Any], precision: str, fmt: str) -> Dict[str, Any]:
    cands = {f: [a for a in manifest["artifacts"] if a["format"] == f and a["precision"] == precision]
             for f in PLATFORMS}
    if fmt == "auto":
        fmt = "tensorrt" if cands["tensorrt"] else "onnx"
    if not cands.get(fmt):
        have = ", ".join(sorted(f"{a['path']}" for a in manifest["artifacts"])) or "none"
        raise TritonError(f"the export has no {precision} {fmt} artifact (it has: {have}); choose --precision/--format")
    return cands[fmt][0]


def render_config(name: str, platform: str, io: Dict[str, Dict[str, str]], max_batch: int, instances: int,
                  kind: str, dynamic_batching: bool, preferred_batch: Sequence[int] = (),
                  max_queue_delay_us: int = 100) -> str:
    dims = "[ 3, -1, -1 ]" if max_batch > 0 else "[ -1, 3, -1, -1 ]"  # batch implicit when batching
    lines = [f'name: "{name}"', f'platform: "{platform}"', f"max_batch_size: {max_batch}"]
    for key, label in (("input", "input"), ("output", "output")):
        t = io[key]
        lines += [f"{label} [", "  {", f'    name: "{t["name"]}"', f"    data_type: {TRITON_DTYPES[t['dtype']]}",
                  f"    dims: {dims}", "  }", "]"]
    lines += ["instance_group [", "  {", f"    count: {instances}", f"    kind: {kind}", "  }", "]"]
    if dynamic_batching:
        lines += ["# Merges only requests of identical shape: send fixed-size tiles to benefit.", "dynamic_batching {"]
        if preferred_batch:
            lines.append(f"  preferred_batch_size: [ {', '.join(str(b) for b in preferred_batch)} ]")
        lines += [f"  max_queue_delay_microseconds: {max_queue_delay_us}", "}"]
    return "\n".join(lines) + "\n"


def write_triton_model(export_dir: str | Path, repo: str | Path, *, name: Optional[str] = None, max_batch: int = 1,
                       instances: int = 1, precision: str = "fp32", fmt: str = "auto", kind: str = "auto",
                       dynamic_batching: bool = False, preferred_batch: Sequence[int] = (),
                       max_queue_delay_us: int = 100, force: bool = False) -> Dict[str, Any]:
    """Write one model into a Triton repository; returns {"dir", "config", "model", "entry", "platform"}."""
    export_dir, repo = Path(export_dir), Path(repo)
    try:
        manifest = mf.read_manifest(export_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise TritonError(str(exc)) from None
    root = export_dir if export_dir.is_dir() else export_dir.parent
    entry = choose_entry(manifest, precision, fmt)
    fmt = entry["format"]
    platform, filename = PLATFORMS[fmt]
    source = root / entry["path"]
    if not source.is_file():
        raise TritonError(f"{source} is listed in the manifest but missing")
    if mf.sha256_file(source) != entry.get("sha256"):
        raise TritonError(f"{source} does not match its manifest entry (sha256 differs); re-export it")
    if max_batch < 0 or instances < 1:
        raise TritonError("--max-batch must be >= 0 and --instances >= 1")
    if dynamic_batching and max_batch < 2:
        raise TritonError("dynamic batching needs --max-batch >= 2")
    if fmt == "tensorrt":
        pmin, pmax = entry["profile"]["min"][0], entry["profile"]["max"][0]
        if max_batch > pmax or (max_batch > 0 and pmin > 1):
            raise TritonError(f"the engine's profile allows batch {pmin}..{pmax}; use --max-batch <= {pmax} (or "
                              f"rebuild with --batch 1:OPT:{max(max_batch, 1)})")
    io = _onnx_io(source) if fmt == "onnx" else _plan_io(manifest, entry)
    model = manifest["model"]
    name = name or f"{model['name']}-{model['variant']}-x{model['scale']}"
    if not name or "/" in name or name.startswith("."):
        raise TritonError(f"invalid model name '{name}'")
    kind = {"auto": "KIND_GPU" if fmt == "tensorrt" else "KIND_AUTO", "gpu": "KIND_GPU", "cpu": "KIND_CPU"}[kind]
    if fmt == "tensorrt" and kind == "KIND_CPU":
        raise TritonError("a TensorRT plan runs on GPU instances only; drop --kind cpu or use the ONNX model")
    text = render_config(name, platform, io, max_batch, instances, kind, dynamic_batching, preferred_batch,
                         max_queue_delay_us)
    if model_config_pb2() is not None:
        parse_config(text)  # Triton's own schema, when tritonclient is installed
    final = repo / name
    if final.exists() and not force:
        raise TritonError(f"{final} already exists; pass --force to replace it")
    repo.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=str(repo)))
    try:
        (tmp / "1").mkdir()
        shutil.copyfile(source, tmp / "1" / filename)
        (tmp / "config.pbtxt").write_text(text)
        mf.write_json_atomic(tmp / mf.MANIFEST_NAME, manifest)
        if final.exists():
            old = final.with_name(f".{name}.old-{int(time.time())}")
            final.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"dir": final, "config": final / "config.pbtxt", "model": final / "1" / filename, "entry": entry,
            "platform": platform, "io": io}


def _batches(text: Optional[str]) -> List[int]:
    if not text:
        return []
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"'{text}' is not a comma-separated list of batch sizes") from None


@click.command("triton")
@click.argument("export_dir", type=click.Path())
@click.option("--repo", required=True, type=click.Path(), help="Triton model repository root.")
@click.option("--name", default=None, help="Model name (default <model>-<variant>-x<scale>).")
@click.option("--max-batch", default=1, show_default=True, type=int,
              help="max_batch_size (0 = no batching; dims then include the batch).")
@click.option("--instances", default=1, show_default=True, type=int, help="Instances (instance_group count).")
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "fp16", "int8"]))
@click.option("--format", "fmt", default="auto", show_default=True, type=click.Choice(["auto", "onnx", "tensorrt"]),
              help="auto = the TensorRT plan when the export has one, else ONNX.")
@click.option("--kind", default="auto", show_default=True, type=click.Choice(["auto", "gpu", "cpu"]),
              help="Instance kind (auto: GPU for plans, KIND_AUTO for ONNX).")
@click.option("--dynamic-batching", is_flag=True, help="Enable dynamic batching (only merges identical shapes: "
              "use with fixed-size tiles).")
@click.option("--preferred-batch", default=None, help="Preferred batch sizes, e.g. 4,8.")
@click.option("--max-queue-delay-us", default=100, show_default=True, type=int)
@click.option("--force", is_flag=True, help="Replace an existing model of the same name.")
def triton_command(export_dir, repo, name, max_batch, instances, precision, fmt, kind, dynamic_batching,
                   preferred_batch, max_queue_delay_us, force):
    """Write a Triton model repository entry (config.pbtxt + model) for EXPORT_DIR."""
    from lipt_export.cli import fail

    try:
        res = write_triton_model(export_dir, repo, name=name, max_batch=max_batch, instances=instances,
                                 precision=precision, fmt=fmt, kind=kind, dynamic_batching=dynamic_batching,
                                 preferred_batch=_batches(preferred_batch), max_queue_delay_us=max_queue_delay_us,
                                 force=force)
    except (TritonError, OSError) as exc:
        fail(str(exc).splitlines()[0])
        return
    click.echo(f"wrote {res['config']}")
    click.echo(f"wrote {res['model']}  ({res['platform']}, from {res['entry']['path']})")
    if res["entry"]["format"] == "tensorrt":
        click.echo(f"note: the plan was built with TensorRT {res['entry'].get('tensorrt_version')} on "
                   f"{res['entry'].get('gpu')}; the Triton container must ship the same TensorRT version")
    click.echo(f"serve: tritonserver --model-repository={Path(repo).resolve()}")
