"""lipt-export: PyTorch checkpoint -> reparameterized, simplified, precision-variant ONNX (and TensorRT engines
where available), validated against the eager model, described by a manifest.

The Python serving API is :func:`load_runner`: open -> resolve -> run, exactly as ``lipt-export upscale`` does
(the same runtime choice, measured again on another machine; the same tiling). The package map is in
docs/architecture.md.
"""
from lipt_export._version import __version__

__all__ = ["__version__", "load_runner"]


def load_runner(path, **options):
    """A ready runner for ``path`` (export directory, manifest.json, .onnx, .engine, checkpoint, torch module); see
    :func:`lipt_export.runtime.resolve.load_runner` for the options. ``runtime="auto"`` is what ``upscale`` runs: the
    export's measured choice on this machine, measured again (on the golden inputs) when the export was made
    elsewhere."""
    # deferred: `import lipt_export` (and the CLI's start-up) must not pull in ONNX Runtime; serving never torch
    from lipt_export.runtime.resolve import load_runner as resolve_and_load
    from lipt_export.validation.runtime_choice import measure_artifact

    options.setdefault("measure", measure_artifact)
    return resolve_and_load(path, **options)
