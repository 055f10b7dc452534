"""Held-out (LR, HR) pairs and the FP32 file's PSNR-Y on them: what every reduced precision's budget is measured on.

With ``--calib`` the pairs are the calibration folder's held-out images (:mod:`.data`: never used for ranges), the
same pairs for INT8, FP8, BF16 and ``--precision auto``; without it (BF16, FP16 alone) synthetic natural HR images
downscaled with the MATLAB-style bicubic, so the budget still means a PSNR-Y drop on image pairs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Union

import numpy as np

from lipt_export.export.precision.calibration.data import load_calibration_set
from lipt_export.runtime.base import Runner
from lipt_export.runtime.ort import OnnxRuntimeRunner
from lipt_export.validation.metrics import psnr_y_nchw as psnr_y
from lipt_export.validation.runtime_choice import accuracy_pairs

SYNTHETIC_PAIRS = 4


@dataclass
class HeldOut:
    """Held-out pairs and the FP32 model's PSNR-Y on them."""

    lr: List[np.ndarray]
    hr: List[np.ndarray]
    shave: int
    fp32_path: Path
    fp32_psnr: List[float] = field(default_factory=list)
    source: str = ""
    _fp32: object = None

    def psnr(self, model: Union[Path, Runner]) -> List[float]:
        runner = model if isinstance(model, Runner) else OnnxRuntimeRunner(model, name=Path(model).name)
        return [psnr_y(runner.infer(x), y, self.shave) for x, y in zip(self.lr, self.hr)]

    def fp32_output(self, x: np.ndarray) -> np.ndarray:
        if self._fp32 is None:
            self._fp32 = OnnxRuntimeRunner(self.fp32_path, name="fp32")
        return self._fp32.infer(x)

    def measure_fp32(self) -> "HeldOut":
        if not self.fp32_psnr:
            self.fp32_psnr = self.psnr(self.fp32_path)
        return self

    def drop(self, model: Union[Path, Runner]) -> float:
        """Mean PSNR-Y of the FP32 file minus that of ``model`` (a path runs on ONNX Runtime)."""
        self.measure_fp32()
        return float(np.mean(self.fp32_psnr) - np.mean(self.psnr(model)))

    def drop_of(self, infer: Callable[[np.ndarray], np.ndarray]) -> float:
        self.measure_fp32()
        return float(np.mean(self.fp32_psnr) - np.mean([psnr_y(infer(x), y, self.shave)
                                                         for x, y in zip(self.lr, self.hr)]))


def heldout_pairs(fp32_path: Path, scale: int, *, calib: Optional[str] = None, calib_lr: bool = False,
                  count: int = 32, size: int = 64, seed: int = 0, multiple_of: int = 1) -> HeldOut:
    """The held-out pairs of ``calib`` (the same ones INT8 uses for these options), else synthetic pairs of
    ``size`` px LR (rounded up to ``multiple_of``)."""
    if calib:
        data = load_calibration_set(calib, calib_lr=calib_lr, count=count, size=size, scale=scale, seed=seed,
                                    progress=False)
        note = f"held-out images {', '.join(data.info['heldout_images'])} of {data.info['folder']}"
        return HeldOut(data.heldout_lr, data.heldout_hr, scale, Path(fp32_path), source=note)
    side = -(-max(size, 8) // multiple_of) * multiple_of
    shape = np.zeros((1, 3, side, side), np.float32)  # accuracy_pairs reads only the LR size
    pairs = [accuracy_pairs([shape], scale, seed=seed + 31 + k)[0] for k in range(SYNTHETIC_PAIRS)]
    return HeldOut([p[0] for p in pairs], [p[1] for p in pairs], scale, Path(fp32_path),
                   source=f"{len(pairs)} synthetic HR/LR pairs ({side}x{side} LR; no --calib given)")
