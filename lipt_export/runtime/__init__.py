"""Everything that executes a model: runners (ONNX Runtime, eager torch, TensorRT), the tiling policy, the
loader that opens artifacts and export directories, and file upscaling."""
