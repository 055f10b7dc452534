"""lipt-export: PyTorch checkpoint -> reparameterized, simplified, precision-variant ONNX (and TensorRT
engines where available), validated against the eager model, described by a manifest.

The Python serving API is :func:`lipt_export.runtime.loader.load_runner` (also reachable as
``lipt_export.load_runner``); the package map is in docs/architecture.md.
"""
from lipt_export._version import __version__

__all__ = ["__version__", "load_runner"]


def __getattr__(name):
    if name == "load_runner":
        # deferred: `import lipt_export` (and the CLI's start-up) must not pull in torch and ONNX Runtime
        from lipt_export.runtime.loader import load_runner

        return load_runner
    raise AttributeError(f"module 'lipt_export' has no attribute {name!r}")
