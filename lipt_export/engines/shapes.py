"""Optimization-profile shapes and the 2^31-element guard, in pure ONNX (no TensorRT needed).

TensorRT refuses (or silently overflows in some kernels) tensors with 2^31 or more elements. An SR
network's largest tensor is usually far bigger than its input (e.g. the 3*s^2-channel map before
PixelShuffle, or a window-attention matrix), so the profile's max shape is checked on the fp32 ONNX with
that shape substituted and every intermediate shape inferred, BEFORE spending minutes on a build.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from lipt_export.catalog import family
from lipt_export.errors import ProfileError
from lipt_export.manifest import ProfileSpec

MAX_ELEMENTS = 2 ** 31
DEFAULT_SHAPES = "32x32:256x256:512x512"  # LR profile of families that run whole images


def default_shapes(model: str) -> str:
    """The family's engine profile when --shapes is not given, from its tile policy: one static profile at the
    tile where the family asks for it (AgileIR); up to the tile where tiling is required (ESRT: its attention
    grows with (H*W)^2, and served inputs are tiled to the profile anyway); else :data:`DEFAULT_SHAPES`."""
    fam = family(model)
    t = fam.recommended_tile
    if fam.static_engine_profile:
        return f"{t}x{t}:{t}x{t}:{t}x{t}"
    if fam.tile_required:
        low = min(32, t)
        return f"{low}x{low}:{t}x{t}:{t}x{t}"
    return DEFAULT_SHAPES


def largest_square(fits, start: int = 1, stop: int = 1 << 16) -> int:
    """The largest side s in [start, stop) with ``fits(s)`` (monotone: true up to some side), 0 if none."""
    if not fits(start):
        return 0
    lo, hi = start, stop
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def check_profile_fits(model: str, scale: int, profile: ProfileSpec, limit: int = MAX_ELEMENTS) -> None:
    """Refuse, before any model work, a profile whose max shape cannot build: a tensor of the family's graph
    reaches TensorRT's 2^31-element limit. Names the largest square MAX that fits at the profile's max batch."""
    b, _, h, w = profile.shape("max")
    need = family(model).tensor_elements(scale, b, h, w)
    if need < limit:
        return
    side = largest_square(lambda s: family(model).tensor_elements(scale, b, s, s) < limit)
    raise ProfileError(f"--shapes max {h}x{w} (batch {b}) cannot build for {model.lower()} x{scale}: its graph holds "
                       f"a tensor of at least {need:,} elements, TensorRT's limit is 2^31; the largest MAX that fits "
                       f"is {side}x{side} (default profile {default_shapes(model)}; larger images are tiled to the "
                       f"profile at run time)")


def _hw(text: str) -> Tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", text)
    if not m:
        raise ProfileError(f"'{text}' is not a size: use H x W such as 256x256 (or one number for a square)")
    h = int(m.group(1))
    return h, int(m.group(2) or h)


def parse_profile(shapes: str, batch: str = "1:1:1") -> ProfileSpec:
    """``--shapes MINxMIN:OPTxOPT:MAXxMAX`` (LR H x W) and ``--batch MIN:OPT:MAX`` -> one profile."""
    parts = shapes.split(":")
    if len(parts) != 3:
        raise ProfileError(f"--shapes '{shapes}' needs three sizes MIN:OPT:MAX, e.g. 32x32:256x256:512x512")
    mn, op, mx = (_hw(p) for p in parts)
    try:
        b = tuple(int(v) for v in batch.split(":"))
    except ValueError:
        b = ()
    if len(b) == 1:
        b = (b[0],) * 3
    if len(b) != 3 or min(b) < 1:
        raise ProfileError(f"--batch '{batch}' must be MIN:OPT:MAX positive integers, e.g. 1:1:4")
    for i, axis in enumerate(("height", "width")):
        if not (1 <= mn[i] <= op[i] <= mx[i]):
            raise ProfileError(f"--shapes '{shapes}': {axis} must satisfy 1 <= min <= opt <= max")
    if not (b[0] <= b[1] <= b[2]):
        raise ProfileError(f"--batch '{batch}' must satisfy min <= opt <= max")
    return ProfileSpec(mn, op, mx, b)  # type: ignore[arg-type]


@dataclass
class ElementReport:
    largest: int
    tensor: str
    shape: List[int]
    unresolved: List[str]
    method: str


def _concrete(model, input_shape: Sequence[int]):
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())  # never touch the caller's copy
    inp = model.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    if len(dims) != len(input_shape):
        raise ProfileError(f"input '{inp.name}' has rank {len(dims)}, the profile shape rank {len(input_shape)}")
    for d, v in zip(dims, input_shape):
        d.ClearField("dim_param")
        d.dim_value = int(v)
    del model.graph.value_info[:]
    for o in model.graph.output:  # let inference recompute output shapes from the new input
        o.type.tensor_type.ClearField("shape")
    return model


def _collect(model) -> Tuple[Dict[str, List[Optional[int]]], List[str]]:
    shapes: Dict[str, List[Optional[int]]] = {}
    for vi in list(model.graph.value_info) + list(model.graph.output):
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            shapes[vi.name] = [None]
            continue
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    produced = [o for n in model.graph.node for o in n.output if o]
    return shapes, produced


_NEVER_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"}
_SMALL = 1 << 20  # largest value (elements) worth folding into the graph


def _fold_size_bound(node, known) -> float:
    """Output elements of ops that can grow a small shape into a large data tensor (checked before
    evaluating them); other ops are bounded by their (small) inputs."""
    import numpy as np

    vals = [known[i] for i in node.input if i]
    if node.op_type == "ConstantOfShape":
        return float(np.prod(vals[0])) if vals[0].size else 1.0
    if node.op_type == "Expand":
        return float(np.prod(np.broadcast_shapes(vals[0].shape, tuple(int(v) for v in vals[1]))))
    if node.op_type == "Tile":
        return float(vals[0].size * np.prod(vals[1]))
    if node.op_type == "Range":
        start, limit, delta = (float(v) for v in vals)
        return abs((limit - start) / delta) if delta else math.inf
    return float(sum(v.size for v in vals))


def _fold_shape_arithmetic(model, rounds: int = 12):
    """Evaluate the graph's shape arithmetic (Shape -> Gather/Mod/Sub/Concat/Range ... -> Pad/Reshape
    inputs) for the concrete input shape and bake the results in as initializers, so that ONNX shape
    inference can resolve every tensor. ONNX's own data propagation stops at ops such as Mod, which the
    pad-to-window-multiple and the sparse-attention index arithmetic use."""
    import numpy as np
    import onnx
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    for _ in range(rounds):
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        static: Dict[str, List[int]] = {}
        for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
            t = vi.type.tensor_type
            if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
                static[vi.name] = [d.dim_value for d in t.shape.dim]
        known = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        folded, keep = {}, []
        for node in model.graph.node:
            value = None
            try:
                if node.op_type == "Shape" and node.input[0] in static:
                    dims = np.array(static[node.input[0]], dtype=np.int64)
                    attrs = {a.name: a.i for a in node.attribute}
                    value = [dims[attrs.get("start", 0):attrs.get("end", len(dims))]]
                elif (node.op_type not in _NEVER_FOLD and all(i in known for i in node.input if i)
                      and _fold_size_bound(node, known) <= _SMALL):
                    value = ReferenceEvaluator(node).run(None, {i: known[i] for i in node.input if i})
            except Exception:  # an op the reference evaluator lacks: leave it to shape inference
                value = None
            if value is not None and all(np.asarray(v).size <= _SMALL for v in value):
                for name, v in zip(node.output, value):
                    known[name] = folded[name] = np.asarray(v)
            else:
                keep.append(node)
        if not folded:
            return model
        del model.graph.node[:]
        model.graph.node.extend(keep)
        model.graph.initializer.extend(numpy_helper.from_array(v, name) for name, v in folded.items())
        del model.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)


def largest_tensor(onnx_path: str | Path, input_shape: Sequence[int]) -> ElementReport:
    """Infer every tensor's shape for a concrete input shape (ONNX shape inference after folding the
    shape arithmetic); report the largest element count and any tensor whose shape stayed unknown."""
    import onnx

    base = onnx.load(str(onnx_path), load_external_data=False)
    model = _concrete(base, input_shape)
    try:
        inferred = _fold_shape_arithmetic(model)
    except Exception as exc:
        raise ProfileError(f"shape inference failed on {Path(onnx_path).name} ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:100]}); cannot check the profile's max shape") from None
    shapes, produced = _collect(inferred)
    largest, tensor, shape, unresolved = 0, "", [], []
    for name in produced:
        dims = shapes.get(name)
        if dims is None or any(d is None for d in dims):
            unresolved.append(name)
            continue
        n = 1
        for d in dims:
            n *= int(d)
        if n > largest:
            largest, tensor, shape = n, name, [int(d) for d in dims]
    return ElementReport(largest, tensor, shape, unresolved, "onnx shape inference + folded shape arithmetic")


def check_max_shape(onnx_path: str | Path, profile: ProfileSpec, limit: int = MAX_ELEMENTS) -> ElementReport:
    """Raise :class:`ProfileError` when the profile's max shape makes any tensor reach ``limit`` elements, naming
    the largest square MAX that fits this graph (measured on it)."""
    report = largest_tensor(onnx_path, profile.shape("max"))
    if report.largest >= limit:
        mx = profile.shape("max")
        side = largest_square(lambda s: largest_tensor(onnx_path, [mx[0], mx[1], s, s]).largest < limit,
                              stop=max(mx[2], mx[3]))
        raise ProfileError(
            f"max shape {mx[0]}x{mx[2]}x{mx[3]} makes tensor '{report.tensor}' {'x'.join(map(str, report.shape))} = "
            f"{report.largest:,} elements (TensorRT's limit is 2^31 = {limit:,}); the largest MAX that fits is "
            f"{side}x{side}: lower the MAX in --shapes or --batch (larger images are tiled at run time)")
    return report
