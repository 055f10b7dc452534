"""A Python-based Triton backend named ``onnxruntime``: Triton runs ``<backend-dir>/onnxruntime/model.py``
for every model whose platform is ``onnxruntime_onnx`` when ``libtriton_onnxruntime.so`` is absent (the
server bundled in nvidia-pytriton has only the Python backend). ``lipt-export serve`` installs it there.

What it does the way the C++ backend does, for what lipt-export's repositories use: loads
``<version>/<default_model_filename or model.onnx>``; honours the ``intra_op_thread_count`` and
``inter_op_thread_count`` parameters (0 or absent: ONNX Runtime's own default); with ``max_batch_size > 0``
runs requests of the same shape as one batch (what dynamic batching hands over) and splits the result;
returns ONNX Runtime's outputs unchanged, and an error response (not a crash) when ONNX Runtime rejects an
input. What it does not do: CUDA/TensorRT execution providers, ``optimization`` settings, model warm-up,
sequence batching, ragged inputs, string tensors.
"""
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def _param(config, key, default=0):
    value = config.get("parameters", {}).get(key, {}).get("string_value", "")
    return int(value) if value.strip() else default


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        filename = config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        options = ort.SessionOptions()
        options.intra_op_num_threads = _param(config, "intra_op_thread_count")
        options.inter_op_num_threads = _param(config, "inter_op_thread_count")
        level = config.get("parameters", {}).get("graph_optimization_level", {}).get("string_value", "")
        if level == "basic":  # FP8 Q/DQ files: ONNX Runtime's extended optimisations mishandle them
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            options.add_session_config_entry("session.disable_quant_qdq", "1")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.logger = pb_utils.Logger
        self.logger.log_info(f"{args['model_name']}: ONNX Runtime {ort.__version__} (Python-based onnxruntime "
                             f"backend of lipt-export), {options.intra_op_num_threads or 'default'} intra-op threads")

    def execute(self, requests):
        feeds = [{n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs} for r in requests]
        responses = [None] * len(requests)
        groups = {}  # same shapes and dtypes run as one batch, as the C++ backend does
        for i, feed in enumerate(feeds):
            key = tuple((n, a.shape, a.dtype.str) for n, a in sorted(feed.items()))
            groups.setdefault(key, []).append(i)
        for members in groups.values():
            try:
                if not self.batched:  # max_batch_size 0: every request is a whole input of its own
                    for i in members:
                        responses[i] = self._response(self.session.run(self.outputs, feeds[i]))
                    continue
                batch = {n: np.concatenate([feeds[i][n] for i in members]) for n in self.inputs}
                results = self.session.run(self.outputs, batch)
                offset = 0
                for i in members:
                    n = feeds[i][self.inputs[0]].shape[0]
                    responses[i] = self._response([r[offset:offset + n] for r in results])
                    offset += n
            except Exception as exc:  # ONNX Runtime rejected the input: answer with an error, keep serving
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                for i in members:
                    responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
        return responses

    def _response(self, arrays):
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, np.ascontiguousarray(a))
                                                          for n, a in zip(self.outputs, arrays)])

    def finalize(self):
        self.session = None
