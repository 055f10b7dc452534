"""Triton Inference Server model repository from an export directory.

``lipt-export triton EXPORT_DIR --repo REPO`` writes ``REPO/<name>/config.pbtxt`` and ``REPO/<name>/1/model.onnx``
(platform ``onnxruntime_onnx``) or ``REPO/<name>/1/model.plan`` (``tensorrt_plan``, from a TensorRT engine
entry), plus a copy of ``manifest.json`` beside the config for clients. I/O names and dtypes come from the
ONNX graph itself (plans: from the manifest), dims are ``[3, -1, -1]`` with the batch dimension implicit.

Dynamic batching only merges requests whose shapes are identical, so it helps SR serving only when
clients send fixed-size tiles; it is off unless asked for.

``--tiled`` adds ``<name>_tiled``, a BLS model on the Python backend that takes an image of any size and
runs it through the served model tile by tile with the project's own tiling module (vendored into the
model's version directory, so the repository needs nothing of lipt-export installed on the server).
"""
from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import lipt_export.errors
import lipt_export.runtime.base
import lipt_export.runtime.tiling
import lipt_export.tiling
from lipt_export.tiling import POLICY_TILE
from lipt_export.catalog import runtime_cannot_run
from lipt_export.errors import ArtifactError, TritonError
from lipt_export.fileio import staged_dir
from lipt_export.manifest import (ArtifactEntry, Manifest, ProfileSpec, demo_weights_warning, read_manifest,
                                  replaceable_problem, write_manifest)
from lipt_export.runtime.loader import checked_artifact, select_entry

TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}
_ONNX_ELEM = {1: "float32", 10: "float16"}
PLATFORMS = {"onnx": ("onnxruntime_onnx", "model.onnx"), "tensorrt": ("tensorrt_plan", "model.plan")}


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


def _plan_io(manifest: Manifest, entry: ArtifactEntry) -> Dict[str, Dict[str, str]]:
    # the engine keeps the I/O dtype of the ONNX it was built from: float16 only for --fp16-io exports
    names = {"input": manifest.io.input_name, "output": manifest.io.output_name}
    return {k: {"name": names[k], "dtype": entry.engine.io_dtype} for k in ("input", "output")}


def servable_by_triton(entry: ArtifactEntry) -> Tuple[bool, str]:
    """Triton's tensorrt_plan backend links datacenter TensorRT: it loads datacenter plans only."""
    engine = entry.engine
    if engine.datacenter:
        return True, "ok"
    return False, (f"the export's {entry.precision} engine {entry.path} is a {engine.label} plan: Triton's "
                   f"tensorrt_plan backend links datacenter TensorRT and cannot load it; serve the ONNX model "
                   f"(--format onnx or auto), or rebuild with --backend tensorrt on a machine with datacenter TensorRT "
                   f"and the target GPU (docs/serving.md: serving TensorRT-RTX engines)")


def choose_triton_entry(manifest: Manifest, precision: str, fmt: str) -> ArtifactEntry:
    """The artifact a Triton model serves, by the one selection rule (:func:`lipt_export.runtime.loader.
    select_entry`) with Triton's own ability: ``auto`` a datacenter plan when there is one, else the ONNX file."""
    try:
        return select_entry(manifest, precision, {"onnx": "onnxruntime"}.get(fmt, fmt), can_run=servable_by_triton)
    except ArtifactError as exc:
        raise TritonError(str(exc)) from None


def render_config(name: str, platform: str, io: Dict[str, Dict[str, str]], max_batch: int, instances: int,
                  kind: str, dynamic_batching: bool, preferred_batch: Sequence[int] = (),
                  max_queue_delay_us: int = 100, parameters: Optional[Dict[str, Any]] = None,
                  backend: Optional[str] = None) -> str:
    dims = "[ 3, -1, -1 ]" if max_batch > 0 else "[ -1, 3, -1, -1 ]"  # batch implicit when batching
    lines = [f'name: "{name}"', f'backend: "{backend}"' if backend else f'platform: "{platform}"',
             f"max_batch_size: {max_batch}"]
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
    for key, value in (parameters or {}).items():
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    return "\n".join(lines) + "\n"


def write_triton_model(export_dir: str | Path, repo: str | Path, *, name: Optional[str] = None, max_batch: int = 1,
                       instances: int = 1, precision: str = "fp32", fmt: str = "auto", kind: str = "auto",
                       dynamic_batching: bool = False, preferred_batch: Sequence[int] = (),
                       max_queue_delay_us: int = 100, threads: Optional[int] = None, tiled: bool = False,
                       tile: Optional[int] = None, overlap: Optional[int] = None,
                       force: bool = False) -> Dict[str, Any]:
    """Write one model into a Triton repository; returns {"dir", "config", "model", "entry", "platform", "io",
    "runtime", "engine", "name", "manifest", "warnings"} and, with ``tiled``, "tiled": the same for ``<name>_tiled`` (+ "tile", "overlap").
    Everything is checked before anything is written.

    ``threads``: ONNX Runtime intra-op threads (the ``intra_op_thread_count`` parameter, which both the C++
    onnxruntime backend and lipt-export's Python-based one read); None leaves ONNX Runtime's default."""
    export_dir, repo = Path(export_dir), Path(repo)
    manifest = read_manifest(export_dir if export_dir.is_dir() else export_dir.parent)
    entry = choose_triton_entry(manifest, precision, fmt)
    fmt = entry.format
    cannot = runtime_cannot_run("onnxruntime", entry.precision) if fmt == "onnx" else None
    if cannot:
        raise TritonError(f"Triton's onnxruntime backend cannot serve {entry.path}: {cannot} (lipt-export runs it "
                          f"locally through a widened graph; Triton loads the file as is); serve --precision fp16 or "
                          f"fp32, or run the bf16 engine with TensorRT-RTX")
    platform, filename = PLATFORMS[fmt]
    source = checked_artifact(manifest, entry).path  # inside the export, sha256 and description as recorded
    if max_batch < 0 or instances < 1:
        raise TritonError("--max-batch must be >= 0 and --instances >= 1")
    if dynamic_batching and max_batch < 2:
        raise TritonError("dynamic batching needs --max-batch >= 2")
    profile = entry.engine.profile if fmt == "tensorrt" else None
    if profile is not None:
        pmin, pmax = profile.batch[0], profile.batch[2]
        if max_batch > pmax or (max_batch > 0 and pmin > 1):
            raise TritonError(f"the engine's profile allows batch {pmin}..{pmax}; use --max-batch <= {pmax} (or "
                              f"rebuild with --batch 1:OPT:{max(max_batch, 1)})")
    io = _onnx_io(source) if fmt == "onnx" else _plan_io(manifest, entry)
    name = name or manifest.model.label
    _check_name(name)
    kind = {"auto": "KIND_GPU" if fmt == "tensorrt" else "KIND_AUTO", "gpu": "KIND_GPU", "cpu": "KIND_CPU"}[kind]
    if fmt == "tensorrt" and kind == "KIND_CPU":
        raise TritonError("a TensorRT plan runs on GPU instances only; drop --kind cpu or use the ONNX model")
    if threads is not None and threads < 0:
        raise TritonError(f"--threads must be >= 0 (0: ONNX Runtime's default), got {threads}")
    params = {"intra_op_thread_count": threads} if threads is not None and fmt == "onnx" else {}
    if fmt == "onnx" and entry.precision == "fp8":  # ORT's extended optimisations mishandle FP8 (runtime/ort.py)
        params["graph_optimization_level"] = "basic"
    text = render_config(name, platform, io, max_batch, instances, kind, dynamic_batching, preferred_batch,
                         max_queue_delay_us, params)
    spec = _tiled_spec(name, io, manifest, tile, overlap, profile) if tiled else None
    for existing in [repo / name] + ([repo / spec["name"]] if spec else []):
        _check_replaceable(existing, force)
    final = _write_model_dir(repo, name, text, {filename: source}, manifest, force)
    result = {"dir": final, "config": final / "config.pbtxt", "model": final / "1" / filename,
              "entry": entry.to_dict(), "platform": platform, "io": io, "name": name, "manifest": manifest,
              "runtime": entry.engine.label if fmt == "tensorrt" else "ONNX",
              "engine": entry.engine if fmt == "tensorrt" else None,
              "warnings": _warnings(manifest, entry, spec)}
    if spec:
        tdir = _write_model_dir(repo, spec["name"], spec["text"], spec["files"], manifest, force)
        result["tiled"] = {"dir": tdir, "config": tdir / "config.pbtxt", "model": tdir / "1" / "model.py",
                           "name": spec["name"], "tile": spec["tile"], "overlap": spec["overlap"], "io": spec["io"]}
    return result


def _write_model_dir(repo: Path, name: str, config_text: str, version_files: Dict[str, Path], manifest: Manifest,
                     force: bool) -> Path:
    """REPO/NAME with config.pbtxt, 1/<files> and the manifest, written under a temp name and renamed."""
    _check_name(name)
    if model_config_pb2() is not None:
        parse_config(config_text)  # Triton's own schema, when tritonclient is installed
    final = repo / name
    _check_replaceable(final, force)
    repo.mkdir(parents=True, exist_ok=True)
    with staged_dir(final, before_swap=lambda: _check_replaceable(final, force)) as tmp:
        for rel, src in version_files.items():
            dest = tmp / "1" / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
        (tmp / "config.pbtxt").write_text(config_text)
        write_manifest(tmp, manifest)
    return final


def _warnings(manifest: Manifest, entry: ArtifactEntry, tiled: Optional[Dict[str, Any]]) -> List[str]:
    """What a user serving this repository should know: demo weights, TensorRT-RTX engines not served, a tile
    overlap below the export's policy."""
    out = [w for w in [demo_weights_warning(manifest)] if w]
    rtx = [e for e in manifest.select("tensorrt", entry.precision) if not e.engine.datacenter]
    if entry.format == "onnx" and rtx:
        out.append(f"{rtx[0].path} ({rtx[0].engine.label}) is not in the repository: Triton's TensorRT "
                   f"backend cannot load TensorRT-RTX plans, so {entry.path} is served (docs/serving.md)")
    if tiled and tiled.get("overlap_warning"):
        out.append(tiled["overlap_warning"])
    return out


def _check_replaceable(model_dir: Path, force: bool) -> None:
    """A model folder is written only where none exists, or (``force``) over one this tool wrote: its config,
    manifest copy and version folder 1/ and nothing else, so a user's own model is never replaced."""
    if not model_dir.exists() and not model_dir.is_symlink():
        return
    if not force:
        raise TritonError(f"{model_dir} already exists; pass --force to replace it")
    problem = "it is not a folder" if model_dir.is_symlink() or not model_dir.is_dir() else replaceable_problem(
        model_dir, lambda rel: rel == "config.pbtxt" or rel == "1" or rel.startswith("1/"))
    if problem:
        raise TritonError(f"--force replaces only a model this tool wrote, and {model_dir} is not one: {problem}; "
                          f"choose another --name or --repo")


def _check_name(name: str) -> None:
    if not name or "/" in name or "\\" in name or '"' in name or name.startswith("."):
        raise TritonError(f"invalid model name '{name}': use letters, digits, '-', '_' or '.' (not first)")


TRITON_MODELS_DIR = Path(__file__).resolve().parent / "triton_models"


def vendored_tiling_files() -> Dict[str, Path]:
    """The package's tiling module and what it imports, as files for a BLS model's version directory."""
    return {"lipt_export/__init__.py": TRITON_MODELS_DIR / "vendored_init.py",
            "lipt_export/errors.py": Path(lipt_export.errors.__file__),
            "lipt_export/tiling.py": Path(lipt_export.tiling.__file__),
            "lipt_export/runtime/__init__.py": TRITON_MODELS_DIR / "vendored_init.py",
            "lipt_export/runtime/base.py": Path(lipt_export.runtime.base.__file__),
            "lipt_export/runtime/tiling.py": Path(lipt_export.runtime.tiling.__file__)}


def _tiled_spec(target_name: str, target_io: Dict[str, Dict[str, str]], manifest: Manifest, tile: Optional[int],
                overlap: Optional[int], profile: Optional[ProfileSpec] = None) -> Dict[str, Any]:
    """Config and files of ``<target>_tiled``, the BLS model that serves any image size through the target.
    Tile and overlap come from the export's tiling policy (unless ``tile`` is given: the recommended tile when
    tiling is required, else the model's default tile, as local ``upscale`` tiles, kept inside a plan's profile).
    Tiles below the smallest input the target takes (the graph's minimum; for a plan also its ``profile``'s,
    e.g. AgileIR's static one) are padded up to it; a plan's tile must fit the profile's maximum."""
    policy = manifest.io.tiling
    size, ov = policy.resolve(tile, overlap, default_tile=POLICY_TILE)
    if size is None:
        raise TritonError("the tiled model needs a tile: use --tile N with N > 0")
    min_hw = (manifest.io.min_size, manifest.io.min_size)
    if profile is not None:
        min_hw = (max(min_hw[0], profile.min_hw[0]), max(min_hw[1], profile.min_hw[1]))
        pmax = profile.max_hw
        if tile is None:  # the default tile, kept inside the engine's profile
            size = min(size, *pmax)
        if size > min(pmax):
            raise TritonError(f"--tile {size} exceeds the engine's profile (LR up to {pmax[0]}x{pmax[1]}); use "
                              f"--tile {min(pmax)} or less, or rebuild the engine with a larger --shapes")
    name = f"{target_name}_tiled"
    in_name, out_name = target_io["input"]["name"], target_io["output"]["name"]
    io = {"input": {"name": in_name, "dtype": "float32"}, "output": {"name": out_name, "dtype": "float32"}}
    params = {"target_model": target_name, "target_input": in_name, "target_output": out_name,
              "target_dtype": target_io["input"]["dtype"], "scale": manifest.io.scale, "tile": size,
              "overlap": ov, "multiple_of": manifest.io.multiple_of, "min_height": min_hw[0], "min_width": min_hw[1]}
    text = render_config(name, "", io, 0, 1, "KIND_CPU", False, parameters=params, backend="python")
    files = {"model.py": TRITON_MODELS_DIR / "tiled_model.py", **vendored_tiling_files()}
    return {"name": name, "text": text, "files": files, "tile": size, "overlap": ov, "io": io,
            "overlap_warning": policy.overlap_warning(ov) if overlap is not None else None}
