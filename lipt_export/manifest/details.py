"""Typed views of what the export stages record about an artifact (the ``details`` of an ``ArtifactEntry``) and of
the runtime choice: every consumer reads these records, not string keys. Each record reads its JSON block and
writes it back unchanged (schema v1 round-trips), and a malformed block is a :class:`ManifestError` when the
manifest is read, not a KeyError somewhere later.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from lipt_export.errors import ManifestError

FLAVOR_NAMES = {"tensorrt": "TensorRT", "tensorrt-rtx": "TensorRT-RTX"}


def _need(d: Any, key: str, kind, where: str) -> Any:
    if not isinstance(d, Mapping) or key not in d:
        raise ManifestError(f"{where} has no '{key}' (edited or truncated); re-export")
    value = d[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float, (int, float))):
        raise ManifestError(f"{where}: '{key}' is {value!r} (edited); re-export")
    return value


@dataclass(frozen=True)
class ProfileSpec:
    """One optimization profile: LR H x W and batch, each as (min, opt, max)."""

    min_hw: Tuple[int, int]
    opt_hw: Tuple[int, int]
    max_hw: Tuple[int, int]
    batch: Tuple[int, int, int] = (1, 1, 1)
    channels: int = 3
    input_name: str = "lr"

    def shape(self, which: str) -> List[int]:
        i = ("min", "opt", "max").index(which)
        hw = (self.min_hw, self.opt_hw, self.max_hw)[i]
        return [self.batch[i], self.channels, hw[0], hw[1]]

    def as_dict(self, input_name: Optional[str] = None) -> Dict[str, object]:
        return {"input": input_name or self.input_name, **{k: self.shape(k) for k in ("min", "opt", "max")}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "profile") -> "ProfileSpec":
        try:
            mn, op, mx = (list(map(int, d[k])) for k in ("min", "opt", "max"))
            if not len(mn) == len(op) == len(mx) == 4:
                raise ValueError("rank")
        except (KeyError, TypeError, ValueError):
            raise ManifestError(f"{where}: 'profile' needs min/opt/max NCHW shapes (edited); re-export") from None
        return cls((mn[2], mn[3]), (op[2], op[3]), (mx[2], mx[3]), (mn[0], op[0], mx[0]), mn[1],
                   str(d.get("input", "lr")))


@dataclass
class Parity:
    """An artifact against the eager model, worst case over the parity inputs (the ``parity`` block)."""

    artifact: str
    precision: str
    rel_l2: float
    max_abs: float
    psnr_db: float
    sizes: List[List[int]]
    finite: bool = True
    extra: Dict[str, object] = field(default_factory=dict)  # model-specific figures (SMSR: mask flips)

    def as_dict(self) -> Dict[str, object]:
        d = {"artifact": self.artifact, "precision": self.precision, "rel_l2": self.rel_l2, "max_abs": self.max_abs,
             "psnr_db": self.psnr_db, "sizes": [list(s) for s in self.sizes], "finite": self.finite}
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> "Parity":
        core = ("artifact", "precision", "rel_l2", "max_abs", "psnr_db", "sizes", "finite")
        try:
            return cls(str(d["artifact"]), str(d["precision"]), float(d["rel_l2"]), float(d["max_abs"]),
                       float(d["psnr_db"]), [list(map(int, s)) for s in d["sizes"]], bool(d.get("finite", True)),
                       {k: v for k, v in d.items() if k not in core})
        except (KeyError, TypeError, ValueError):
            raise ManifestError(f"{where}: 'parity' is malformed (edited); re-export") from None


@dataclass(frozen=True)
class PrecisionAudit:
    """The engine's compute layers by the precision they run in (the ``precision_audit`` block)."""

    compute_layers: int
    by_precision: Mapping[str, int]
    shares: Mapping[str, float]
    fp32_layers: Union[str, Tuple[str, ...]]  # "all" for an fp32 engine

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> "PrecisionAudit":
        try:
            fp32 = d.get("fp32_layers", ())
            return cls(int(d["compute_layers"]), dict(d["by_precision"]), dict(d["shares"]),
                       fp32 if isinstance(fp32, str) else tuple(fp32))
        except (KeyError, TypeError, ValueError):
            raise ManifestError(f"{where}: 'precision_audit' is malformed (edited); re-export") from None


@dataclass(frozen=True)
class EngineDetails:
    """What a TensorRT / TensorRT-RTX engine entry records: which TensorRT built it (``runtime`` is "tensorrt" for
    datacenter TensorRT, "tensorrt-rtx" for TensorRT-RTX), its version, the compute capabilities it runs on, its
    optimization profile and I/O dtype; datacenter plans also the GPU they were built on."""

    runtime: str
    version: str
    compute_capabilities: Tuple[str, ...]
    profile: ProfileSpec
    io_dtype: str = "float32"
    gpu: Optional[str] = None
    compute_capability: Optional[str] = None
    build_s: float = 0.0
    audit: Optional[PrecisionAudit] = None
    skipped: Tuple[Tuple[str, str], ...] = ()  # (compute capability, why) asked for but not built


    @property
    def label(self) -> str:
        """As people read it, e.g. "TensorRT-RTX 1.7.1.116": every message names an engine's runtime so."""
        return f"{FLAVOR_NAMES.get(self.runtime, self.runtime)} {self.version or '(version unknown)'}"

    @property
    def datacenter(self) -> bool:
        """Built with datacenter TensorRT: what Triton's TensorRT backend (libnvinfer) can load."""
        return self.runtime == "tensorrt"

    @classmethod
    def from_details(cls, d: Mapping[str, Any], where: str) -> "EngineDetails":
        runtime = str(d.get("runtime", "tensorrt"))
        if runtime not in FLAVOR_NAMES:
            raise ManifestError(f"{where}: unknown engine runtime '{runtime}' (known: {', '.join(FLAVOR_NAMES)}); "
                                f"re-export")
        caps = d.get("compute_capabilities") or ([d["compute_capability"]] if d.get("compute_capability") else [])
        audit = d.get("precision_audit")
        try:
            skipped = tuple((str(x["compute_capability"]), str(x["why"])) for x in d.get("targets_skipped") or [])
        except (KeyError, TypeError):
            raise ManifestError(f"{where}: 'targets_skipped' is malformed (edited); re-export") from None
        return cls(runtime, str(d.get("tensorrt_version") or ""), tuple(map(str, caps)),
                   ProfileSpec.from_dict(_need(d, "profile", Mapping, where), where), io_dtype_of(d),
                   d.get("gpu"), d.get("compute_capability"), float(d.get("build_s") or 0.0),
                   PrecisionAudit.from_dict(audit, where) if isinstance(audit, Mapping) else None, skipped)


def io_dtype_of(d: Mapping[str, Any]) -> str:
    """The artifact's input/output dtype: float16 only for files exported with --fp16-io (``fp16_io``)."""
    return "float16" if d.get("fp16_io") == "float16" else "float32"


@dataclass(frozen=True)
class Fp32Island:
    node: str
    op: str
    max_abs: float


@dataclass(frozen=True)
class Fp16Details:
    """An FP16 file: the nodes kept in FP32 (measured islands) and how it was converted."""

    islands: Tuple[Fp32Island, ...]
    converter: str
    io_dtype: str

    @classmethod
    def from_details(cls, d: Mapping[str, Any], where: str) -> "Fp16Details":
        try:
            islands = tuple(Fp32Island(str(i["node"]), str(i["op"]), float(i["max_abs"]))
                            for i in d.get("fp16_islands") or [])
        except (KeyError, TypeError, ValueError):
            raise ManifestError(f"{where}: 'fp16_islands' is malformed (edited); re-export") from None
        return cls(islands, str(d.get("fp16_converter", "")), io_dtype_of(d))


@dataclass(frozen=True)
class QdqDetails:
    """A Q/DQ file (the ``int8`` or ``fp8`` block): its PSNR-Y budget and outcome, the nodes left in float;
    ``report``: the whole block (calibration, sensitivity table) for report.md."""

    max_psnr_drop_db: float
    psnr_drop_db: float
    budget_met: bool
    nodes_in_float: Tuple[str, ...]
    report: Mapping[str, Any]
    key: str = "int8"

    @classmethod
    def from_details(cls, d: Mapping[str, Any], where: str, key: str = "int8") -> "QdqDetails":
        q = _need(d, key, Mapping, where)
        try:
            return cls(float(q["max_psnr_drop_db"]), float(q["psnr_drop_db"]), bool(q["budget_met"]),
                       tuple(str(n["node"]) for n in q.get("nodes_in_float") or []), q, key)
        except (KeyError, TypeError, ValueError):
            raise ManifestError(f"{where}: '{key}' is malformed (edited); re-export") from None


Int8Details = QdqDetails  # the INT8 file's record (the name consumers used before FP8 shared it)


@dataclass(frozen=True)
class Bf16Island:
    node: str
    op: str
    reason: str


@dataclass(frozen=True)
class Bf16Details:
    """A BF16 file (the ``bf16`` block): its opset, the measured FP32 islands (and the compute nodes among them, what
    an engine runs in FP32), the held-out PSNR-Y drop and budget; ``report``: the whole block for report.md."""

    opset: int
    islands: Tuple[Bf16Island, ...]
    fp32_compute_nodes: Tuple[str, ...]
    psnr_drop_db: float
    max_psnr_drop_db: float
    budget_met: bool
    report: Mapping[str, Any]

    @classmethod
    def from_details(cls, d: Mapping[str, Any], where: str) -> "Bf16Details":
        b = _need(d, "bf16", Mapping, where)
        try:
            return cls(int(b["opset"]), tuple(Bf16Island(str(i["node"]), str(i["op"]), str(i["reason"]))
                                              for i in b.get("islands") or []),
                       tuple(map(str, b.get("fp32_compute_nodes") or [])), float(b["psnr_drop_db"]),
                       float(b["max_psnr_drop_db"]), bool(b["budget_met"]), b)
        except (KeyError, TypeError, ValueError):
            raise ManifestError(f"{where}: 'bf16' is malformed (edited); re-export") from None


@dataclass(frozen=True)
class TargetChoice:
    """``--precision auto`` for one compute capability: the precision chosen and why."""

    compute_capability: str
    precision: str
    why: str
    candidates: Tuple[str, ...]  # the precisions this target runs, in the auto order


@dataclass(frozen=True)
class PrecisionAuto:
    """``--precision auto`` (the export's ``precision_auto`` block): the budget, every candidate's measured PSNR-Y drop
    against the fp32 file on the held-out pairs, and the choice per target."""

    max_psnr_drop_db: float
    heldout: str
    drops_db: Mapping[str, float]
    targets: Tuple[TargetChoice, ...]
    notes: Tuple[str, ...] = ()

    def to_dict(self) -> Dict[str, Any]:
        return {"max_psnr_drop_db": self.max_psnr_drop_db, "heldout": self.heldout, "drops_db": dict(self.drops_db),
                "targets": [{"compute_capability": t.compute_capability, "precision": t.precision, "why": t.why,
                             "candidates": list(t.candidates)} for t in self.targets], "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> "PrecisionAuto":
        try:
            return cls(float(d["max_psnr_drop_db"]), str(d.get("heldout", "")),
                       {str(k): float(v) for k, v in d["drops_db"].items()},
                       tuple(TargetChoice(str(t["compute_capability"]), str(t["precision"]), str(t["why"]),
                                          tuple(map(str, t.get("candidates") or []))) for t in d["targets"]),
                       tuple(map(str, d.get("notes") or [])))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ManifestError(f"{where}: 'precision_auto' is malformed (edited); re-export") from None


@dataclass(frozen=True)
class Int8Speed:
    """Whether the INT8 file earned its place: faster than every other precision on the runtime measured."""

    recommended: bool
    runtime: str
    probe_hw: Tuple[int, int]
    median_ms: Mapping[str, float]

    @property
    def fastest_other(self) -> str:
        others = {k: v for k, v in self.median_ms.items() if k != "int8"}
        return min(others, key=others.get)

    @classmethod
    def from_details(cls, d: Mapping[str, Any], where: str) -> "Int8Speed":
        s = _need(d, "speed", Mapping, where)
        try:
            return cls(bool(d.get("recommended")), str(s["runtime"]), tuple(s["probe_hw"]), dict(s["median_ms"]))
        except (KeyError, TypeError, ValueError):
            raise ManifestError(f"{where}: 'speed' is malformed (edited); re-export") from None


@dataclass(frozen=True)
class LintFinding:
    severity: str
    node: str
    reason: str


@dataclass(frozen=True)
class LintSummary:
    status: str  # clean | warnings | errors
    findings: Tuple[LintFinding, ...]
    checked: str

    @classmethod
    def from_details(cls, d: Mapping[str, Any], where: str) -> "LintSummary":
        lint = _need(d, "lint", Mapping, where)
        try:
            return cls(str(lint["status"]), tuple(LintFinding(str(f["severity"]), str(f["node"]), str(f["reason"]))
                                                  for f in lint.get("findings") or []), str(lint.get("checked", "")))
        except (KeyError, TypeError, ValueError):
            raise ManifestError(f"{where}: 'lint' is malformed (edited); re-export") from None


# -- the runtime choice (manifest.runtime_choice[precision]) ---------------------------------------------------

@dataclass(frozen=True)
class RuntimeCandidate:
    """One CPU execution of a file, judged against its accuracy budget (and timed when eligible)."""

    runtime: str
    rel_l2: float
    within_budget: bool
    delta_psnr_y_db: Optional[float] = None
    against: Optional[str] = None
    budget_db: Optional[float] = None
    median_ms: Optional[float] = None

    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"runtime": self.runtime, "rel_l2": self.rel_l2, "within_budget": self.within_budget}
        if self.delta_psnr_y_db is not None or self.against is not None:
            d.update(delta_psnr_y_db=self.delta_psnr_y_db, against=self.against, budget_db=self.budget_db)
        if self.median_ms is not None:
            d["median_ms"] = self.median_ms
        return d

    def _reference(self) -> str:
        return self.against if str(self.against).startswith("this ") else f"the {self.against}"

    def describe(self) -> str:
        if not self.within_budget:
            why = (f"rel-L2 {self.rel_l2:.1e}" if self.delta_psnr_y_db is None else
                   f"{self.delta_psnr_y_db:+.3f} dB PSNR-Y against {self._reference()}, budget "
                   + (f"{self.budget_db:g} dB" if self.budget_db is not None else "unknown"))
            return f"{self.runtime} outside the budget ({why})"
        if self.delta_psnr_y_db is not None and self.median_ms is not None:
            return f"{self.runtime} {self.median_ms:.1f} ms ({self.delta_psnr_y_db:+.3f} dB PSNR-Y)"
        if self.median_ms is not None:
            return f"{self.runtime} {self.median_ms:.1f} ms"
        return self.runtime


@dataclass(frozen=True)
class RuntimeChoice:
    """The CPU execution measured fastest for one file within its accuracy budget, with the machine it was
    measured on (``--runtime auto`` trusts it only there) and what was left out and why."""

    runtime: str
    machine: str
    budget: str
    candidates: Tuple[RuntimeCandidate, ...]
    left_out: Tuple[Tuple[str, str], ...] = ()  # (runtime, why)
    probe_hw: Optional[Tuple[int, int]] = None
    measured: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)  # later fields, kept as written
    # why the timing cannot be trusted (the machine was busy while it ran), or None; absent in older manifests
    provisional: Optional[str] = None

    def summary(self) -> str:
        return ", ".join(c.describe() for c in self.candidates)

    def provisional_warning(self, precision: str) -> Optional[str]:
        """One line for ``upscale`` when this choice was timed on a busy machine."""
        if not self.provisional:
            return None
        return (f"the CPU runtime chosen for the {precision} file ({self.runtime}) is provisional: "
                f"{self.provisional.split(' (', 1)[0]} at export; pass --runtime to pick one, or re-export on a "
                f"quiet machine")

    def to_dict(self) -> Dict[str, Any]:
        return {"runtime": self.runtime, "machine": self.machine, "budget": self.budget,
                "candidates": [c.to_dict() for c in self.candidates],
                "left_out": [{"runtime": r, "why": w} for r, w in self.left_out],
                "probe_hw": list(self.probe_hw) if self.probe_hw else None, "measured": self.measured,
                **({"provisional": self.provisional} if self.provisional else {}), **dict(self.extra)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> "RuntimeChoice":
        known = ("runtime", "machine", "budget", "candidates", "left_out", "probe_hw", "measured", "provisional")
        try:
            cands = tuple(RuntimeCandidate(str(c["runtime"]), float(c["rel_l2"]), bool(c["within_budget"]),
                                           c.get("delta_psnr_y_db"), c.get("against"), c.get("budget_db"),
                                           c.get("median_ms")) for c in d.get("candidates") or [])
            return cls(str(d["runtime"]), str(d.get("machine", "")), str(d.get("budget", "")), cands,
                       tuple((str(x["runtime"]), str(x["why"])) for x in d.get("left_out") or []),
                       tuple(d["probe_hw"]) if d.get("probe_hw") else None, str(d.get("measured", "")),
                       {k: v for k, v in d.items() if k not in known},
                       str(d["provisional"]) if d.get("provisional") else None)
        except (KeyError, TypeError, ValueError):
            raise ManifestError(f"{where}: 'runtime_choice' is malformed (edited); re-export") from None


def parse_runtime_choices(d: Any, where: str) -> Dict[str, RuntimeChoice]:
    if not isinstance(d, Mapping) or not all(isinstance(v, (Mapping, RuntimeChoice)) for v in d.values()):
        raise ManifestError(f"{where}: 'runtime_choice' must map precisions to records; re-export")
    return {str(k): v if isinstance(v, RuntimeChoice) else RuntimeChoice.from_dict(v, where) for k, v in d.items()}


def plain_choices(choices: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: v.to_dict() if isinstance(v, RuntimeChoice) else dict(v) for k, v in choices.items()}


def pending_parity(d: Mapping[str, Any]) -> Optional[str]:
    """An engine built ahead of time records where to check it instead of a measured parity."""
    par = d.get("parity")
    return par if isinstance(par, str) else None
