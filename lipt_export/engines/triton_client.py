"""A KServe v2 HTTP client with nothing but urllib: health, config, repository index, metrics and inference
(JSON or Triton's binary-data extension). ``tritonclient[grpc]`` pins protobuf < 7, which the project cannot
take, and ``tritonclient[http]`` adds gevent for what a few requests need."""
from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from lipt_export.errors import TritonError
from lipt_export.fileio import write_json_atomic

V2_DTYPES = {np.dtype("float32"): "FP32", np.dtype("float16"): "FP16", np.dtype("int8"): "INT8",
             np.dtype("int32"): "INT32", np.dtype("int64"): "INT64", np.dtype("uint8"): "UINT8"}
NUMPY_DTYPES = {v: k for k, v in V2_DTYPES.items()}


class TritonRequestError(TritonError):
    """The server answered a request with an error (its message is kept)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


class TritonHttpClient:
    def __init__(self, url: str, metrics_url: Optional[str] = None, timeout: float = 120.0):
        self.url, self.metrics_url, self.timeout = url.rstrip("/"), metrics_url, timeout

    def _request(self, path: str, body: Optional[bytes] = None, headers: Optional[Dict[str, str]] = None):
        req = urllib.request.Request(self.url + path, data=body, headers=headers or {},
                                     method="POST" if body is not None else "GET")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                message = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode(errors="replace").strip() or exc.reason
            raise TritonRequestError(exc.code, message) from None

    def ok(self, path: str) -> bool:
        try:
            return self._request(path)[0] == 200
        except (TritonRequestError, urllib.error.URLError, OSError):
            return False

    def live(self) -> bool:
        return self.ok("/v2/health/live")

    def ready(self, model: Optional[str] = None) -> bool:
        return self.ok(f"/v2/models/{model}/ready" if model else "/v2/health/ready")

    def config(self, model: str) -> Dict[str, Any]:
        return json.loads(self._request(f"/v2/models/{model}/config")[2])

    def repository_index(self) -> List[Dict[str, Any]]:
        return json.loads(self._request("/v2/repository/index", b"{}", {"Content-Type": "application/json"})[2])

    def metrics(self) -> Dict[str, Dict[str, float]]:
        """Counters per model: {model: {metric: value}} from the Prometheus endpoint (summed over versions)."""
        if not self.metrics_url:
            raise TritonError("this client was made without a metrics URL")
        with urllib.request.urlopen(self.metrics_url, timeout=self.timeout) as r:
            text = r.read().decode()
        out: Dict[str, Dict[str, float]] = {}
        for m in re.finditer(r'^(nv_inference_\w+)\{[^}]*model="([^"]+)"[^}]*\}\s+([0-9.eE+-]+)$', text, re.M):
            per_model = out.setdefault(m.group(2), {})
            per_model[m.group(1)] = per_model.get(m.group(1), 0.0) + float(m.group(3))
        return out

    def infer(self, model: str, inputs: Dict[str, np.ndarray], outputs: List[str], binary: bool = True
              ) -> Dict[str, np.ndarray]:
        """One inference request; ``binary`` sends and receives tensors as raw bytes (Triton's binary-data
        extension) instead of JSON number lists."""
        specs, blobs = [], []
        for name, arr in inputs.items():
            arr = np.ascontiguousarray(arr)
            if arr.dtype not in V2_DTYPES:
                raise TritonError(f"cannot send a {arr.dtype} tensor")
            spec: Dict[str, Any] = {"name": name, "shape": list(arr.shape), "datatype": V2_DTYPES[arr.dtype]}
            if binary:
                spec["parameters"] = {"binary_data_size": arr.nbytes}
                blobs.append(arr.tobytes())
            else:
                spec["data"] = arr.ravel().tolist()
            specs.append(spec)
        header = json.dumps({"inputs": specs, "outputs": [{"name": n, "parameters": {"binary_data": binary}}
                                                          for n in outputs]}).encode()
        headers = {"Content-Type": "application/octet-stream" if binary else "application/json"}
        if binary:
            headers["Inference-Header-Content-Length"] = str(len(header))
        _, resp_headers, body = self._request(f"/v2/models/{model}/infer", header + b"".join(blobs), headers)
        resp_headers = {k.lower(): v for k, v in resp_headers.items()}
        n = int(resp_headers.get("inference-header-content-length", len(body)))
        result = json.loads(body[:n])
        offset, arrays = n, {}
        for out in result["outputs"]:
            dtype, shape = NUMPY_DTYPES[out["datatype"]], out["shape"]
            size = out.get("parameters", {}).get("binary_data_size")
            if size is not None:
                arrays[out["name"]] = np.frombuffer(body[offset:offset + size], dtype).reshape(shape)
                offset += size
            else:
                arrays[out["name"]] = np.asarray(out["data"], dtype).reshape(shape)
        return arrays


def example_request(path: Path, input_name: str, side: int) -> Path:
    """A KServe v2 JSON request for a grey side x side image (FP32 NCHW in [0, 1]), written to ``path``."""
    body = {"inputs": [{"name": input_name, "shape": [1, 3, side, side], "datatype": "FP32",
                        "data": [0.5] * (3 * side * side)}]}
    write_json_atomic(path, body)
    return path


def curl_example(http_url: str, model: str, request: Path) -> str:
    """A ready-to-paste request that posts the JSON file ``request`` (:func:`example_request`)."""
    return f"curl -s {http_url}/v2/models/{model}/infer -H 'Content-Type: application/json' -d @{request}"
