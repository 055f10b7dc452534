"""Graph simplification: onnxsim first, onnxslim when onnxsim fails or grows the graph."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import onnx

from lipt_export.export.graph import reshape_allowzero
from lipt_export.export.onnx_export import check_onnx


@dataclass
class SimplifyResult:
    tool: str  # "onnxsim", "onnxslim" or "none"
    nodes_before: int
    nodes_after: int
    note: str = ""


def _onnxsim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxsim

    simplified, ok = onnxsim.simplify(model, check_n=0)
    if not ok:
        raise RuntimeError("onnxsim's own check failed")
    return simplified


def _onnxslim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim

    return onnxslim.slim(model)


def simplify_onnx(src: str | Path, dst: str | Path, tool: str = "auto") -> SimplifyResult:
    """Simplify ``src`` into ``dst``. ``tool``: auto | onnxsim | onnxslim. The result must keep symbolic
    H/W and pass the checker, else the next tool is tried; if none works the original is kept."""
    model = onnx.load(str(src))
    before = len(model.graph.node)
    order = {"auto": ["onnxsim", "onnxslim"], "onnxsim": ["onnxsim"], "onnxslim": ["onnxslim"]}[tool]
    notes = []
    chosen: Optional[onnx.ModelProto] = None
    used = "none"
    for name in order:
        try:
            candidate = (_onnxsim if name == "onnxsim" else _onnxslim)(onnx.load(str(src)))
            check_onnx(candidate)
        except Exception as exc:  # fall back, and say why
            notes.append(f"{name} failed: {str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}")
            continue
        if len(candidate.graph.node) > before:
            notes.append(f"{name} grew the graph ({before} -> {len(candidate.graph.node)} nodes)")
            continue
        chosen, used = candidate, name
        break
    final = chosen if chosen is not None else model
    reshape_allowzero(final)  # simplifiers rebuild Reshapes with the default allowzero=0
    onnx.save(final, str(dst))
    after = len(chosen.graph.node) if chosen is not None else before
    return SimplifyResult(tool=used, nodes_before=before, nodes_after=after, note="; ".join(notes))
