"""Engines: TensorRT builds from the precision-carrying ONNX artifacts (import-guarded; see
:mod:`lipt_export.engines.tensorrt`), optimization-profile shapes, and Triton model repositories."""
from lipt_export.runtime.trt import tensorrt_status  # noqa: F401  (the one answer to "is TensorRT usable here")
