"""Engines: TensorRT builds from the precision-carrying ONNX artifacts (import-guarded).

TensorRT (>= 10, strongly typed) needs NVIDIA's wheels and a CUDA GPU; neither exists on CPU-only
machines, so every entry point first asks :func:`tensorrt_status` and fails with one line saying what is
missing and how to install it.
"""
from __future__ import annotations

import importlib.util
from typing import Tuple

INSTALL_HINT = ("install TensorRT with `pip install -c constraints.txt -e .[trt]` (NVIDIA's wheels; needs "
                "network access to NVIDIA's index) on a machine with an NVIDIA GPU and driver")


def tensorrt_status() -> Tuple[bool, str]:
    """(usable, reason). Usable = `tensorrt` imports and torch sees a CUDA device."""
    if importlib.util.find_spec("tensorrt") is None:
        return False, f"TensorRT backend unavailable: the 'tensorrt' Python package is not installed; {INSTALL_HINT}"
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # stub packages without libnvinfer raise here
        return False, (f"TensorRT backend unavailable: 'import tensorrt' failed "
                       f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); {INSTALL_HINT}")
    import torch

    if not torch.cuda.is_available():
        return False, "TensorRT backend unavailable: no CUDA GPU is visible (torch.cuda.is_available() is False)"
    return True, "ok"
