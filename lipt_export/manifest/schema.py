"""The manifest schema v1 as frozen dataclasses (:class:`Manifest`, :class:`ModelInfo`, :class:`IOContract`,
:class:`ArtifactEntry` with its typed views), the one reader :func:`read_manifest`, the writer, and the model
description every ONNX file carries in its ``metadata_props``. See the package doc and docs/manifest.md."""
from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from lipt_export._version import __version__
from lipt_export.catalog import FORMATS
from lipt_export.errors import ManifestError
from lipt_export.fileio import foreign_files, json_default, sha256_file, write_json_atomic
from lipt_export.manifest.details import (Bf16Details, EngineDetails, Fp16Details, Int8Details, Int8Speed,
                                          LintSummary, Parity, PrecisionAuto, QdqDetails,
                                          RuntimeChoice, io_dtype_of, parse_runtime_choices, pending_parity,
                                          plain_choices)
from lipt_export.tiling import BASE_OVERLAP, DEFAULT_TILE, RECOMMENDED_TILE, TilingPolicy

SCHEMA = "lipt-export/manifest"
SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
REPORT_NAME = "report.md"
METADATA_KEY = "lipt_export.model"


def _frozen(d: Optional[Mapping[str, Any]]) -> Mapping[str, Any]:
    return MappingProxyType(dict(d or {}))


def _plain(value: Any) -> Any:
    """Deep copy of mappings/sequences as plain dicts and lists (for JSON and for callers that mutate)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _need(d: Any, key: str, kind: type | Tuple[type, ...], where: str) -> Any:
    if not isinstance(d, Mapping) or key not in d:
        raise ManifestError(f"{where} has no '{key}' (edited or truncated); re-export")
    if not isinstance(d[key], kind) or isinstance(d[key], bool) and kind is int:
        raise ManifestError(f"{where}: '{key}' is {d[key]!r}, not {getattr(kind, '__name__', kind)} (edited); "
                            f"re-export")
    return d[key]


@dataclass(frozen=True)
class IOContract:
    """Input/output of every artifact of an export: float32 NCHW RGB in [0, 1] -> x``scale``; the graph takes any
    H, W >= ``min_size``; ``tiling`` is the model's :class:`~lipt_export.tiling.TilingPolicy` (its window
    ``multiple_of``, recommended tile, overlap, whether tiling is required)."""

    scale: int
    tiling: TilingPolicy = field(default_factory=TilingPolicy)
    min_size: int = 1
    input_name: str = "lr"
    output_name: str = "sr"

    @property
    def multiple_of(self) -> int:
        return self.tiling.multiple_of

    def to_dict(self) -> Dict[str, Any]:
        s, t = self.scale, self.tiling
        out_hw = ["height", "width"] if s == 1 else [f"height*{s}", f"width*{s}"]
        return {
            "input": {"name": self.input_name, "dtype": "float32", "layout": "NCHW", "color": "RGB",
                      "shape": ["batch", 3, "height", "width"], "value_range": [0.0, 1.0]},
            "output": {"name": self.output_name, "dtype": "float32", "layout": "NCHW", "color": "RGB",
                       "shape": ["batch", 3, *out_hw], "value_range": [0.0, 1.0], "clamped": False},
            "scale": s,
            # The graph pads to `multiple_of` internally and crops; any size >= `min` is accepted.
            "size": {"multiple_of": t.multiple_of, "padded_internally": True, "min": self.min_size},
            "tiling": {"recommended_tile": t.recommended_tile, "overlap": t.overlap, "required": t.required,
                       "default_tile": t.default_tile},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "manifest io") -> "IOContract":
        scale = _need(d, "scale", int, where)
        if scale < 1:
            raise ManifestError(f"{where}: scale {scale} must be >= 1 (edited); re-export")
        size, tiling = d.get("size") or {}, d.get("tiling") or {}
        for key, section in (("size", size), ("tiling", tiling)):
            if not isinstance(section, Mapping):
                raise ManifestError(f"{where}: '{key}' is {section!r}, not an object (edited); re-export")

        def count(section: Mapping[str, Any], key: str, default: int, least: int) -> int:
            value = section.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ManifestError(f"{where}: '{key}' is {value!r}, not an integer >= {least} (edited); re-export")
            return value

        policy = TilingPolicy.for_model(count(size, "multiple_of", 1, 1),
                                        count(tiling, "recommended_tile", RECOMMENDED_TILE, 1),
                                        bool(tiling.get("required", False)),
                                        overlap=count(tiling, "overlap", BASE_OVERLAP, 0),
                                        default_tile=count(tiling, "default_tile", DEFAULT_TILE, 1))
        return cls(scale=scale, tiling=policy, min_size=count(size, "min", 1, 1),
                   input_name=str(_need(d, "input", Mapping, where)["name"]),
                   output_name=str(_need(d, "output", Mapping, where)["name"]))


class _Details:
    """Free-form ``details`` (what a stage adds): frozen on construction, read with :meth:`get`."""

    details: Mapping[str, Any]

    def __post_init__(self):
        object.__setattr__(self, "details", _frozen(self.details))

    def get(self, key: str, default: Any = None) -> Any:
        return self.details.get(key, default)


@dataclass(frozen=True)
class ModelInfo(_Details):
    """What was exported: family, variant, scale, and free-form details (weights, parameter count, ...)."""

    name: str
    variant: str
    scale: int
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def weights(self) -> Mapping[str, Any]:
        return self.get("weights") or {}

    @property
    def label(self) -> str:
        return f"{self.name}-{self.variant}-x{self.scale}"

    @property
    def demo_weights(self) -> bool:
        """Exported without --weights: deterministic demo weights, whose pictures mean nothing."""
        return self.weights.get("source") == "demo-init"

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "variant": self.variant, "scale": self.scale, **_plain(self.details)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "manifest model") -> "ModelInfo":
        name = _need(d, "name", str, where)
        scale = _need(d, "scale", int, where)
        details = {k: v for k, v in d.items() if k not in ("name", "variant", "scale")}
        return cls(name, str(d.get("variant")), scale, details)


@dataclass(frozen=True)
class ArtifactEntry(_Details):
    """One artifact file: where it is (relative to the export directory), what it is, its hash, and the
    stage-specific details (nodes, parity, lint, FP16 islands, INT8 report, engine profile, ...)."""

    path: str
    format: str
    precision: str
    sha256: str
    bytes: int
    details: Mapping[str, Any] = field(default_factory=dict)

    def with_details(self, **more: Any) -> "ArtifactEntry":
        return replace(self, details={**self.details, **more})

    # -- typed views of the details (lipt_export.manifest.details); read here, not by string keys elsewhere --
    @property
    def where(self) -> str:
        return f"artifact '{self.path}'"

    @cached_property
    def engine(self) -> EngineDetails:
        """The engine's runtime, version, targets and profile (a :class:`ManifestError` for other formats)."""
        if self.format != "tensorrt":
            raise ManifestError(f"{self.where} is {self.format}, not a TensorRT engine")
        return EngineDetails.from_details(self.details, self.where)

    @cached_property
    def parity(self) -> Optional[Parity]:
        """Measured parity against the eager model; None when absent or pending (see :attr:`parity_pending`)."""
        par = self.details.get("parity")
        return Parity.from_dict(par, self.where) if isinstance(par, Mapping) else None

    @property
    def parity_pending(self) -> Optional[str]:
        """Where an engine built ahead of time must be checked (its parity could not be measured here)."""
        return pending_parity(self.details)

    @cached_property
    def parity_vs_train_graph(self) -> Optional[Parity]:
        par = self.details.get("parity_vs_train_graph")
        return Parity.from_dict(par, self.where) if isinstance(par, Mapping) else None

    @property
    def io_dtype(self) -> str:
        return io_dtype_of(self.details)

    @cached_property
    def fp16(self) -> Optional[Fp16Details]:
        return Fp16Details.from_details(self.details, self.where) if "fp16_islands" in self.details else None

    @cached_property
    def int8(self) -> Optional[Int8Details]:
        return Int8Details.from_details(self.details, self.where) if "int8" in self.details else None

    @cached_property
    def fp8(self) -> Optional[QdqDetails]:
        return QdqDetails.from_details(self.details, self.where, "fp8") if "fp8" in self.details else None

    @cached_property
    def bf16(self) -> Optional[Bf16Details]:
        return Bf16Details.from_details(self.details, self.where) if "bf16" in self.details else None

    def qdq(self) -> Optional[QdqDetails]:
        """The Q/DQ record of an INT8 or FP8 file (None for other files)."""
        return self.int8 or self.fp8

    @property
    def opset(self) -> Optional[int]:
        """The ONNX opset the file was written in (recorded per ONNX file: BF16 is opset 22, FP8 19)."""
        opset = self.details.get("opset")
        return int(opset) if isinstance(opset, int) else None

    @cached_property
    def int8_speed(self) -> Optional[Int8Speed]:
        return Int8Speed.from_details(self.details, self.where) if "speed" in self.details else None

    @cached_property
    def lint(self) -> Optional[LintSummary]:
        return LintSummary.from_details(self.details, self.where) if "lint" in self.details else None

    @property
    def flag(self) -> Optional[str]:
        """Why this file is shipped but flagged (far from the eager model), or None."""
        flag = self.details.get("flag")
        return str(flag) if flag else None

    @property
    def nodes(self) -> Optional[int]:
        nodes = self.details.get("nodes")
        return int(nodes) if isinstance(nodes, int) else None

    def check_details(self) -> None:
        """Parse every typed view once (the reader calls it): a malformed block fails when the manifest is read."""
        for view in ("parity", "parity_vs_train_graph", "fp16", "int8", "fp8", "bf16", "int8_speed", "lint"):
            getattr(self, view)
        if self.format == "tensorrt":
            self.engine

    def to_dict(self) -> Dict[str, Any]:
        return {"path": self.path, "format": self.format, "precision": self.precision, "sha256": self.sha256,
                "bytes": self.bytes, **_plain(self.details)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "manifest artifact") -> "ArtifactEntry":
        path = _need(d, "path", str, where)
        where = f"{where} '{path}'"
        fmt = _need(d, "format", str, where)
        if fmt not in FORMATS:
            raise ManifestError(f"{where}: unknown format '{fmt}' (known: {', '.join(FORMATS)})")
        core = ("path", "format", "precision", "sha256", "bytes")
        entry = cls(path, fmt, _need(d, "precision", str, where), _need(d, "sha256", str, where),
                    _need(d, "bytes", int, where), {k: v for k, v in d.items() if k not in core})
        entry.check_details()
        return entry

    @classmethod
    def for_file(cls, path: str | Path, root: str | Path, *, fmt: str, precision: str, **details: Any
                 ) -> "ArtifactEntry":
        path, root = Path(path), Path(root)
        return cls(str(path.relative_to(root)), fmt, precision, sha256_file(path), path.stat().st_size, details)


@dataclass(frozen=True)
class Manifest:
    model: ModelInfo
    io: IOContract
    export: Mapping[str, Any] = field(default_factory=dict)
    artifacts: Tuple[ArtifactEntry, ...] = ()
    created: str = ""
    root: Optional[Path] = field(default=None, compare=False)  # the export directory it was read from
    # golden.npz: inputs and the eager model's outputs, so `lipt-export verify` can check every artifact later
    golden: Mapping[str, Any] = field(default_factory=dict)
    # per precision: the CPU execution measured fastest at export within the artifact's accuracy budget, with
    # the machine it was measured on (`upscale --runtime auto` trusts it only on the same machine)
    runtime_choice: Mapping[str, RuntimeChoice] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "export", _frozen(self.export))
        object.__setattr__(self, "artifacts", tuple(self.artifacts))
        object.__setattr__(self, "golden", _frozen(self.golden))
        object.__setattr__(self, "runtime_choice", _frozen(parse_runtime_choices(self.runtime_choice,
                                                                                 "runtime_choice")))

    # -- building --------------------------------------------------------------------------------------
    @classmethod
    def new(cls, *, model: ModelInfo, io: IOContract, export: Mapping[str, Any]) -> "Manifest":
        return cls(model, io, {**export, "versions": versions()},
                   created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    def with_artifacts(self, entries: Iterable[ArtifactEntry]) -> "Manifest":
        return replace(self, artifacts=(*self.artifacts, *entries))

    def with_export(self, **more: Any) -> "Manifest":
        return replace(self, export={**self.export, **more})

    # -- reading ---------------------------------------------------------------------------------------
    def select(self, fmt: Optional[str] = None, precision: Optional[str] = None) -> List[ArtifactEntry]:
        return [a for a in self.artifacts
                if (fmt is None or a.format == fmt) and (precision is None or a.precision == precision)]

    def find(self, path: str) -> Optional[ArtifactEntry]:
        return next((a for a in self.artifacts if a.path == path), None)

    @property
    def precision_auto(self) -> Optional[PrecisionAuto]:
        """``--precision auto``'s choice per target and the drops it was made on (None when not asked for)."""
        d = self.export.get("precision_auto")
        return PrecisionAuto.from_dict(d, "export.precision_auto") if isinstance(d, Mapping) else None

    @property
    def engines_skipped(self) -> List[Dict[str, str]]:
        """Engines not built at all ({precision, compute_capabilities, why}): no target asked for runs them."""
        return [dict(x) for x in (self.export.get("engines") or {}).get("skipped") or []]

    def artifact_path(self, entry: ArtifactEntry, verify: bool = True) -> Path:
        """The entry's file, checked: inside the export directory, present, and (``verify``) with the sha256
        the manifest records. Raises :class:`ManifestError` naming the file and the fix."""
        return self._checked(entry.path, entry.sha256 if verify else None)

    def golden_path(self) -> Path:
        """golden.npz, checked like an artifact; an export without one predates `verify`."""
        if not self.golden:
            raise ManifestError(f"{self.root} has no golden.npz (exported before `lipt-export verify` existed); "
                                f"re-export it")
        return self._checked(str(self.golden.get("path")), str(self.golden.get("sha256")))

    def _checked(self, rel_path: str, sha256: Optional[str]) -> Path:
        if self.root is None:
            raise ManifestError(f"{rel_path}: this manifest was not read from an export directory")
        root = self.root.resolve()
        rel = Path(rel_path)
        target = (root / rel).resolve()
        if rel.is_absolute() or root not in target.parents:
            raise ManifestError(f"{self.root / MANIFEST_NAME}: path '{rel_path}' points outside the export "
                                f"directory; re-export instead of editing the manifest")
        if not target.is_file():
            raise ManifestError(f"{self.root / rel_path} is listed in the manifest but missing; re-export or "
                                f"copy the whole export directory")
        if sha256 is not None and sha256_file(target) != sha256:
            raise ManifestError(f"{self.root / rel_path} does not match its manifest entry (sha256 differs): the "
                                f"file was changed after export; re-export it")
        return self.root / rel_path

    def to_dict(self) -> Dict[str, Any]:
        d = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "created": self.created,
             "model": self.model.to_dict(), "io": self.io.to_dict(), "export": _plain(self.export),
             "artifacts": [a.to_dict() for a in self.artifacts]}
        if self.golden:
            d["golden"] = _plain(self.golden)
        if self.runtime_choice:
            d["runtime_choice"] = plain_choices(self.runtime_choice)
        return d

    def description(self) -> Dict[str, Any]:
        """Everything but the artifact list (what each ONNX file carries in its metadata)."""
        d = self.to_dict()
        for key in ("artifacts", "created", "golden", "runtime_choice"):
            d.pop(key, None)
        return d

    @classmethod
    def from_dict(cls, d: Any, origin: str = "manifest", root: Optional[Path] = None,
                  require_artifacts: bool = True) -> "Manifest":
        if not isinstance(d, Mapping) or d.get("schema") != SCHEMA:
            got = d.get("schema") if isinstance(d, Mapping) else type(d).__name__
            raise ManifestError(f"{origin} is not a lipt-export manifest (schema={got!r})")
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ManifestError(f"{origin} has schema_version {d.get('schema_version')!r}; this lipt-export "
                                f"{__version__} reads version {SCHEMA_VERSION}: re-export with this version")
        try:
            model = ModelInfo.from_dict(_need(d, "model", Mapping, origin), f"{origin}: model")
            io = IOContract.from_dict(_need(d, "io", Mapping, origin), f"{origin}: io")
            if model.scale != io.scale:
                raise ManifestError(f"{origin}: model scale {model.scale} and io scale {io.scale} disagree (edited); "
                                    f"re-export")
            raw = _need(d, "artifacts", list, origin) if require_artifacts else d.get("artifacts") or []
            entries = tuple(ArtifactEntry.from_dict(a, f"{origin}: artifact") for a in raw)
            _check_unique(entries, origin)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ManifestError):
                raise
            raise ManifestError(f"{origin} is malformed ({type(exc).__name__}: {exc}); re-export") from None
        golden = d.get("golden") or {}
        if golden and not (isinstance(golden, Mapping) and isinstance(golden.get("path"), str)
                           and isinstance(golden.get("sha256"), str)):
            raise ManifestError(f"{origin}: 'golden' needs a path and a sha256; re-export")
        choice = parse_runtime_choices(d.get("runtime_choice") or {}, origin)
        auto = (d.get("export") or {}).get("precision_auto")
        if auto is not None:
            PrecisionAuto.from_dict(auto, f"{origin}: export.precision_auto")
        return cls(model, io, d.get("export") or {}, entries, str(d.get("created", "")), root, golden, choice)


def _check_unique(entries: Iterable[ArtifactEntry], origin: str) -> None:
    """One artifact per format and precision (and per path): a second one would be silently ignored by
    whatever picks the first."""
    seen: Dict[Any, str] = {}
    for e in entries:
        for key, what in (((e.format, e.precision), f"two {e.precision} {e.format} artifacts"),
                          (("path", e.path), f"'{e.path}' twice")):
            if key in seen:
                raise ManifestError(f"{origin} lists {what} ('{seen[key]}' and '{e.path}'): a consumer cannot tell "
                                    f"which to run; re-export")
            seen[key] = e.path


def demo_weights_warning(manifest: Manifest) -> Optional[str]:
    """One line for the commands that serve an export made without --weights (its pictures are meaningless)."""
    if not manifest.model.demo_weights:
        return None
    return (f"{manifest.root or 'this model'} carries demo weights (exported without --weights): the pipeline is real, "
            f"the pictures are not; export your checkpoint with --weights")


def versions() -> Dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    return {"lipt_export": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


def manifest_path(target: str | Path) -> Path:
    target = Path(target)
    return target / MANIFEST_NAME if target.is_dir() else target


def read_manifest(target: str | Path) -> Manifest:
    """The one reader: an export directory (or its manifest.json) -> a checked :class:`Manifest`."""
    path = manifest_path(target)
    if not path.is_file():
        raise ManifestError(f"no manifest at {path} (pass an export directory or its manifest.json)")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON ({exc}); re-export") from None
    return Manifest.from_dict(data, str(path), root=path.parent)


def export_files(data: Mapping[str, Any]) -> List[str]:
    """The files an export directory holds by its manifest (as parsed JSON): the manifest, report.md, golden.npz,
    every artifact and the calibration-range sidecar of each INT8/FP8 file."""
    files = [MANIFEST_NAME, REPORT_NAME]
    golden = data.get("golden")
    if isinstance(golden, Mapping) and isinstance(golden.get("path"), str):
        files.append(golden["path"])
    for a in data.get("artifacts") or []:
        if not isinstance(a, Mapping) or not isinstance(a.get("path"), str):
            continue
        files.append(a["path"])
        for key in ("int8", "fp8"):  # the calibration ranges written beside a Q/DQ file (model.<p>.calib.json)
            sidecar = ((a.get(key) or {}).get("calibration") or {}).get("sidecar") if isinstance(a.get(key), Mapping) \
                else None
            if isinstance(sidecar, str) and "/" not in sidecar and not sidecar.startswith("."):
                files.append(sidecar)
    return files


def replaceable_problem(folder: str | Path, extra: Callable[[str], bool] = lambda rel: False) -> Optional[str]:
    """Why ``folder`` is not something this tool wrote and may replace (None when it is): it must hold a
    lipt-export manifest, and nothing beyond the files that manifest accounts for (plus what ``extra`` claims,
    e.g. a Triton model's config and version folder). A user's own files are never replaced."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return "it holds no manifest.json, so it is not an export of this tool"
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return f"its manifest.json cannot be read ({type(exc).__name__})"
    if not isinstance(data, Mapping) or data.get("schema") != SCHEMA:
        return "its manifest.json is not a lipt-export manifest"
    ours = set(export_files(data))
    foreign = foreign_files(folder, lambda rel: rel in ours or extra(rel))
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" (+{len(foreign) - 3} more)" if len(foreign) > 3 else "")
        return f"it holds files this tool did not write: {shown}"
    return None


def write_manifest(directory: str | Path, manifest: Manifest) -> Path:
    path = Path(directory) / MANIFEST_NAME
    write_json_atomic(path, manifest.to_dict())
    return path


def embed_onnx_metadata(onnx_path: str | Path, manifest: Manifest, extra: Mapping[str, str] | None = None) -> None:
    """Write the model description into the ONNX file's metadata_props (replacing older entries)."""
    import onnx

    model = onnx.load(str(onnx_path))
    props = {METADATA_KEY: json.dumps(manifest.description(), default=json_default),
             "scale": str(manifest.io.scale), "model": manifest.model.name, "variant": str(manifest.model.variant),
             "value_range": "0,1", **(extra or {})}
    keep = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "lipt-export"
    onnx.save(model, str(onnx_path))


def onnx_properties(onnx_path: str | Path) -> Dict[str, str]:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def onnx_metadata(onnx_path: str | Path) -> Dict[str, Any]:
    """The description a lone ONNX file carries, as written (empty when it carries none)."""
    props = onnx_properties(onnx_path)
    return json.loads(props[METADATA_KEY]) if METADATA_KEY in props else {}


def onnx_manifest(onnx_path: str | Path) -> Optional[Manifest]:
    """The description a lone ONNX file carries as a :class:`Manifest` (no artifacts), or None."""
    desc = onnx_metadata(onnx_path)
    return Manifest.from_dict(desc, f"{onnx_path} metadata", require_artifacts=False) if desc else None


def onnx_precision(onnx_path: str | Path) -> str:
    """The precision an ONNX artifact declares in its metadata_props (fp32 when it declares none)."""
    return onnx_properties(onnx_path).get("precision", "fp32")
