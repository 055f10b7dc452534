"""A Triton BLS model (Python backend) that upscales an image of any size: it cuts tiles with lipt-export's
tiling (the same ``lipt_export.runtime.tiling`` module, vendored beside this file), sends each tile to the
served model named by the ``target_model`` parameter, and blends them. Memory in the served model is bounded
by the tile, whatever the image size; outputs equal ``lipt-export upscale --tile T --overlap O`` locally.

Parameters (config.pbtxt, written by ``lipt-export triton --tiled``): ``target_model``, ``target_input``,
``target_output``, ``target_dtype`` (the target's I/O dtype), ``scale``, ``tile``, ``overlap``,
``multiple_of``, ``min_height``/``min_width`` (smaller tiles are padded up to them, as ``upscale`` does).
Input and output are float32 NCHW; images in one request run one after another.
"""
import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils


class _TargetRunner:
    """The served model, called per tile through BLS; the runner interface lipt-export's tiling expects."""

    def __init__(self, model, input_name, output_name, dtype):
        self.model, self.input_name, self.output_name, self.dtype = model, input_name, output_name, dtype
        self.name, self.precision, self.device, self.runtime = model, str(dtype), "triton", "triton"

    def infer(self, lr):
        request = pb_utils.InferenceRequest(
            model_name=self.model, requested_output_names=[self.output_name],
            inputs=[pb_utils.Tensor(self.input_name, np.ascontiguousarray(lr, dtype=self.dtype))])
        response = request.exec()
        if response.has_error():
            raise pb_utils.TritonModelException(f"{self.model}: {response.error().message()}")
        out = pb_utils.get_output_tensor_by_name(response, self.output_name)
        return np.asarray(out.as_numpy(), dtype=np.float32)


class TritonPythonModel:
    def initialize(self, args):
        here = os.path.join(args["model_repository"], args["model_version"])
        if here in sys.path:  # the Python backend appends it; the vendored copy must win over any other
            sys.path.remove(here)
        sys.path.insert(0, here)
        # deferred: the vendored copy beside this file is importable only once its folder is on sys.path
        from lipt_export.runtime import tiling

        pb_utils.Logger.log_info(f"{args['model_name']}: tiling from {tiling.__file__}")

        config = json.loads(args["model_config"])
        p = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        target = _TargetRunner(p["target_model"], p["target_input"], p["target_output"], np.dtype(p["target_dtype"]))
        min_hw = (int(p.get("min_height", 1)), int(p.get("min_width", 1)))
        if max(min_hw) > 1:  # the served graph (or a plan's profile) takes nothing smaller: pad, then crop
            target = tiling.PadToMin(target, int(p["scale"]), min_hw)
        self.tiled = tiling.TiledRunner(target, int(p["scale"]), int(p["tile"]), int(p["overlap"]), int(p["multiple_of"]))
        self.input_name, self.output_name = config["input"][0]["name"], config["output"][0]["name"]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                lr = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
                if lr.ndim != 4 or lr.shape[1] != 3 or min(lr.shape[2:]) < 1:
                    raise ValueError(f"expected a float32 [N, 3, H, W] image, got shape {list(lr.shape)}")
                sr = self.tiled.infer(np.asarray(lr, dtype=np.float32))
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, sr)]))
            except Exception as exc:  # one bad request gets an error; the model keeps serving
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message)))
        return responses
