"""Files copied into Triton's directories, not imported by the package: ``onnxruntime_backend.py`` (a
Python-based ``onnxruntime`` backend for servers without ``libtriton_onnxruntime.so``) and ``tiled_model.py``
(the BLS model that serves any image size through the project's tiling). Both run inside the server's own
Python (numpy < 2, no torch) and import nothing from the package except the vendored tiling modules."""
