"""lipt-export: PyTorch checkpoint -> reparameterized, simplified, precision-variant ONNX (and TensorRT
engines where available), validated against the eager model, described by a manifest."""
__version__ = "0.1.0"

__all__ = ["__version__", "load_runner"]


def load_runner(path, **kwargs):
    """Pick a runner for an artifact path, export directory or manifest (see lipt_export.serving)."""
    from lipt_export.serving import load_runner as _load

    return _load(path, **kwargs)
