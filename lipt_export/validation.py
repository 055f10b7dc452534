"""Validation: natural test inputs, output-parity metrics, and the polygraphy Comparator bridge.

Parity compares a reference runner (eager PyTorch) with artifact runners on the same inputs. It goes
through polygraphy's ``Comparator.run`` so eager-vs-ONNX-Runtime-vs-TensorRT share one code path; the
metrics are ours (relative L2, max |error|, PSNR with a fixed peak of 1.0 — polygraphy's own PSNR uses
the reference's max as peak, which is wrong for images).
"""
from __future__ import annotations

import math
import os
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from lipt_export.runners import Runner

PSNR_CAP_DB = 200.0  # identical outputs: report a finite number so JSON stays standard
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def shared_dir() -> Optional[Path]:
    """The ``shared/`` folder beside the checkout (or $LIPT_EXPORT_SHARED), if present."""
    env = os.environ.get("LIPT_EXPORT_SHARED")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared")
    candidates.append(Path.cwd().parent / "shared")
    return next((c for c in candidates if c.is_dir()), None)


def default_calibration_dir() -> Optional[Path]:
    root = shared_dir()
    cand = root / "datasets" / "calib_urban100_001-010" if root else None
    return cand if cand is not None and cand.is_dir() else None


def list_images(folder: str | Path) -> List[Path]:
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _load_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def synthetic_image(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth, natural-looking HWC image in [0, 1]: upsampled low-frequency noise plus gradients/edges."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(2, h // 8), max(2, w // 8), generator=g)
    img = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = 0.6 * img + 0.25 * (xx + yy)[None, None] / 2 + 0.15 * (torch.sin(xx * 25 + seed) > 0).float()
    return img.clamp(0, 1)[0].permute(1, 2, 0).numpy().astype(np.float32)


def natural_inputs(sizes: Sequence[Tuple[int, int]], image_dir: Optional[str | Path] = None,
                   seed: int = 0, per_size: int = 1) -> List[np.ndarray]:
    """LR-like NCHW inputs in [0, 1]: crops of real images downscaled x2 (when a folder is given or the
    shared calibration images exist), else synthetic smooth images. Deterministic for a seed."""
    image_dir = Path(image_dir) if image_dir else default_calibration_dir()
    paths = list_images(image_dir) if image_dir and Path(image_dir).is_dir() else []
    rng = np.random.default_rng(seed)
    out = []
    for i, (h, w) in enumerate(sizes):
        for j in range(per_size):
            k = i * per_size + j
            if paths:
                from PIL import Image

                img = _load_rgb(paths[k % len(paths)])
                H, W = img.shape[:2]
                ch, cw = min(2 * h, H), min(2 * w, W)
                y0, x0 = int(rng.integers(0, H - ch + 1)), int(rng.integers(0, W - cw + 1))
                crop = Image.fromarray((img[y0:y0 + ch, x0:x0 + cw] * 255).round().astype(np.uint8))
                lr = np.asarray(crop.resize((w, h), Image.BICUBIC), dtype=np.float32) / 255.0
            else:
                lr = synthetic_image(h, w, seed * 1000 + k)
            out.append(np.ascontiguousarray(lr.transpose(2, 0, 1)[None]))
    return out


def rel_l2(out: np.ndarray, ref: np.ndarray) -> float:
    ref64, out64 = ref.astype(np.float64), out.astype(np.float64)
    return float(np.linalg.norm(out64 - ref64) / max(np.linalg.norm(ref64), 1e-30))


def psnr(out: np.ndarray, ref: np.ndarray, peak: float = 1.0) -> float:
    mse = float(np.mean((out.astype(np.float64) - ref.astype(np.float64)) ** 2))
    if not math.isfinite(mse):
        return float("nan")
    return PSNR_CAP_DB if mse <= 0 else min(PSNR_CAP_DB, 10 * math.log10(peak * peak / mse))


@dataclass
class Parity:
    """Worst case over all inputs of one candidate against the reference."""

    artifact: str
    precision: str
    rel_l2: float
    max_abs: float
    psnr_db: float
    sizes: List[List[int]]
    finite: bool = True
    extra: Dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, object]:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


def _as_polygraphy(runner: Runner, input_name: str):
    from polygraphy.backend.base import BaseRunner
    from polygraphy.common import TensorMetadata

    class _Adapter(BaseRunner):
        def __init__(self):
            super().__init__(name=runner.name, prefix="lipt-export")

        def activate_impl(self):
            pass

        def deactivate_impl(self):
            pass

        def get_input_metadata_impl(self):
            return TensorMetadata().add(input_name, np.float32, (None, 3, None, None))

        def infer_impl(self, feed_dict):
            t0 = time.perf_counter()
            out = np.ascontiguousarray(runner.infer(feed_dict[input_name]))
            self.inference_time = time.perf_counter() - t0  # polygraphy sums it per runner
            return OrderedDict(sr=out)

    return _Adapter()


def run_all(runners: Sequence[Runner], inputs: Sequence[np.ndarray], input_name: str = "lr"
            ) -> Dict[str, List[np.ndarray]]:
    """Run every runner on every input through polygraphy's Comparator; outputs keyed by runner name."""
    from polygraphy.comparator import Comparator

    names = [r.name for r in runners]
    if len(set(names)) != len(names):
        raise ValueError(f"runner names must be unique, got {names}")
    poly = [_as_polygraphy(r, input_name) for r in runners]
    from polygraphy.logger import G_LOGGER

    with G_LOGGER.verbosity(G_LOGGER.ERROR):  # polygraphy logs every iteration at INFO
        results = Comparator.run(poly, data_loader=[{input_name: x} for x in inputs])
    return {name: [np.asarray(it["sr"]) for it in iters] for name, iters in results.items()}


def compare(reference: Runner, candidates: Sequence[Runner], inputs: Sequence[np.ndarray],
            input_name: str = "lr") -> List[Parity]:
    outputs = run_all([reference, *candidates], inputs, input_name)
    ref_out = outputs[reference.name]
    sizes = [list(x.shape[2:]) for x in inputs]
    report = []
    for cand in candidates:
        outs = outputs[cand.name]
        finite = all(np.isfinite(o).all() for o in outs)
        report.append(Parity(
            artifact=cand.name, precision=cand.precision,
            rel_l2=max(rel_l2(o, r) for o, r in zip(outs, ref_out)),
            max_abs=max(float(np.max(np.abs(o.astype(np.float64) - r))) for o, r in zip(outs, ref_out)),
            psnr_db=min(psnr(o, r) for o, r in zip(outs, ref_out)),
            sizes=sizes, finite=finite))
    return report
