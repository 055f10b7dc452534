"""manifest.json: the contract between an export directory and whatever serves it.

Schema (``schema_version`` 1) is documented in docs/manifest.md. Later stages append to ``artifacts``.
The model description (everything but the artifact list) is also written into each ONNX file's
``metadata_props`` under ``lipt_export.model`` so a lone .onnx file still describes itself.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

SCHEMA = "lipt-export/manifest"
SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
METADATA_KEY = "lipt_export.model"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> Dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    from lipt_export import __version__

    return {"lipt_export": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


def new_manifest(*, model: Dict[str, Any], io: Dict[str, Any], export: Dict[str, Any]) -> Dict[str, Any]:
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model": model, "io": io, "export": {**export, "versions": versions()}, "artifacts": []}


def io_contract(scale: int, *, size_multiple: int, min_size: int, recommended_tile: int,
                tile_required: bool, input_name: str = "lr", output_name: str = "sr",
                tile_overlap: int = 16) -> Dict[str, Any]:
    out_hw = ["height", "width"] if scale == 1 else [f"height*{scale}", f"width*{scale}"]
    return {
        "input": {"name": input_name, "dtype": "float32", "layout": "NCHW", "color": "RGB",
                  "shape": ["batch", 3, "height", "width"], "value_range": [0.0, 1.0]},
        "output": {"name": output_name, "dtype": "float32", "layout": "NCHW", "color": "RGB",
                   "shape": ["batch", 3, *out_hw], "value_range": [0.0, 1.0], "clamped": False},
        "scale": scale,
        # The graph pads to `multiple_of` internally and crops; any size >= `min` is accepted.
        "size": {"multiple_of": size_multiple, "padded_internally": True, "min": min_size},
        "tiling": {"recommended_tile": recommended_tile, "overlap": tile_overlap, "required": tile_required},
    }


def artifact_entry(path: str | Path, root: str | Path, *, fmt: str, precision: str, **extra: Any
                   ) -> Dict[str, Any]:
    path, root = Path(path), Path(root)
    entry: Dict[str, Any] = {"path": str(path.relative_to(root)), "format": fmt, "precision": precision,
                             "sha256": sha256_file(path), "bytes": path.stat().st_size}
    entry.update(extra)
    return entry


def write_json_atomic(path: str | Path, data: Any) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "as_dict"):
        return obj.as_dict()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def manifest_path(target: str | Path) -> Path:
    target = Path(target)
    return target / MANIFEST_NAME if target.is_dir() else target


def read_manifest(target: str | Path) -> Dict[str, Any]:
    path = manifest_path(target)
    if not path.is_file():
        raise FileNotFoundError(f"no manifest at {path} (pass an export directory or its manifest.json)")
    data = json.loads(path.read_text())
    if data.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not a lipt-export manifest (schema={data.get('schema')!r})")
    return data


def find_artifact(manifest: Dict[str, Any], path: str) -> Optional[Dict[str, Any]]:
    return next((a for a in manifest["artifacts"] if a["path"] == path), None)


def embed_onnx_metadata(onnx_path: str | Path, manifest: Dict[str, Any], extra: Dict[str, str] | None = None
                        ) -> None:
    """Write the model description into the ONNX file's metadata_props (replacing older entries)."""
    import onnx

    model = onnx.load(str(onnx_path))
    desc = {k: manifest[k] for k in ("schema", "schema_version", "model", "io")}
    desc["export"] = {k: v for k, v in manifest["export"].items()}
    props = {METADATA_KEY: json.dumps(desc, default=_json_default), "scale": str(manifest["io"]["scale"]),
             "model": manifest["model"]["name"], "variant": str(manifest["model"].get("variant")),
             "value_range": "0,1", **(extra or {})}
    keep = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "lipt-export"
    onnx.save(model, str(onnx_path))


def onnx_metadata(onnx_path: str | Path) -> Dict[str, Any]:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    return json.loads(props[METADATA_KEY]) if METADATA_KEY in props else {}


def artifact_list(manifest: Dict[str, Any], fmt: Optional[str] = None) -> List[Dict[str, Any]]:
    return [a for a in manifest["artifacts"] if fmt is None or a["format"] == fmt]
