"""Calibration for the precision artifacts.

- :mod:`.data`: LR calibration patches and held-out (LR, HR) pairs cut from a folder of images.
- :mod:`.activations`: every intermediate tensor of an ONNX model, observed in ONNX Runtime.
- :mod:`.ranges`: ONNX Runtime calibrators (minmax / entropy / percentile) and the JSON range cache.
- :mod:`.sensitivity`: per-node INT8 sensitivity and the float-fallback search on held-out images.
"""
