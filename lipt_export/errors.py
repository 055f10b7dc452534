"""Every problem the user can fix is a :class:`LiptExportError`: the CLI prints it as one line
``lipt-export: error: ...`` and exits 2. Anything else that escapes is a bug and keeps its traceback.

Each class also derives from the builtin it replaced (ValueError, RuntimeError) so library callers that
caught those keep working.
"""
from __future__ import annotations


class LiptExportError(Exception):
    """Base of every user-facing error: the message is one line naming the problem and the fix."""


class ModelError(LiptExportError, ValueError):
    """Unknown model, variant or scale."""


class CheckpointError(LiptExportError, ValueError):
    """A checkpoint that cannot be read or does not fit the chosen model."""


class ExportError(LiptExportError, RuntimeError):
    """An export stage failed (exporter, simplifier, parity gate, option check)."""


class CalibrationDataError(LiptExportError, ValueError):
    """Calibration images missing, unreadable or too small."""


class ArtifactError(LiptExportError, ValueError):
    """A problem with an artifact path or choice (missing, unknown format, wrong precision)."""


class ManifestError(ArtifactError):
    """An export directory or manifest that cannot be trusted (schema, version, paths, sha256)."""


class TilingError(ArtifactError):
    """A tile/overlap choice that cannot work for this artifact's model."""


class EngineError(LiptExportError, RuntimeError):
    """TensorRT missing, an engine that does not fit this machine, or a failed build."""


class ProfileError(LiptExportError, ValueError):
    """A bad --shapes/--batch value or a profile TensorRT cannot build."""


class DatasetError(LiptExportError, ValueError):
    """A dataset folder that cannot be evaluated as given."""


class EvalError(LiptExportError, ValueError):
    """A bad --weights/--artifact/--scale combination, or an artifact that misbehaves on the dataset."""


class ImageError(LiptExportError, ValueError):
    """An image that cannot be read or written."""


class UpscaleError(LiptExportError, ValueError):
    """A problem with an upscale input or output."""


class DiskFullError(UpscaleError):
    """The disk filled up while writing an output: the message says what was finished (nothing is half-written)."""


class TritonError(LiptExportError, ValueError):
    """A problem generating a Triton model repository."""


class UsageError(LiptExportError, ValueError):
    """A command-line value that is out of range or inconsistent with another."""
