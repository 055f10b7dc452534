"""Precision variants of the fp32 ONNX: FP16 with measured FP32 islands, INT8 explicit Q/DQ (calibration/)."""
