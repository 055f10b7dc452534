"""Activation-range collection with ONNX Runtime's calibrators, and the calibration cache.

Ranges are collected once per (FP32 graph, method, calibration data) and saved as JSON; any later
quantization of the same graph with the same data reuses them (the sensitivity loop re-quantizes many
times, and a second export run skips calibration entirely). The cache key is the SHA-256 of the FP32
*graph* (metadata_props excluded, so re-embedding the manifest does not invalidate it), the method and
options, and the data fingerprint from :mod:`lipt_export.export.precision.calibration.data`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import onnx

from lipt_export.catalog import CALIB_METHODS
from lipt_export.fileio import write_json_atomic

logger = logging.getLogger(__name__)

CACHE_SCHEMA = "lipt-export/calibration-cache"
CACHE_VERSION = 1
CHUNK = 4  # calibration inputs per collect_data call: bounds the intermediate outputs kept in memory


def graph_sha256(model: onnx.ModelProto | str | Path) -> str:
    """SHA-256 of what determines activations: graph and opsets, not metadata or producer strings."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    h = hashlib.sha256()
    h.update(model.graph.SerializeToString(deterministic=True))
    for op in sorted((o.domain, o.version) for o in model.opset_import):
        h.update(repr(op).encode())
    return h.hexdigest()


def ort_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    table = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}
    if method not in table:
        raise ValueError(f"unknown calibration method '{method}'; choose one of {', '.join(CALIB_METHODS)}")
    return table[method]


class ListReader:
    """ORT CalibrationDataReader over a list of NCHW arrays."""

    def __init__(self, input_name: str, inputs: Sequence[np.ndarray]):
        self.input_name = input_name
        self.inputs = list(inputs)
        self.pos = 0

    def get_next(self):
        if self.pos >= len(self.inputs):
            return None
        self.pos += 1
        return {self.input_name: self.inputs[self.pos - 1]}

    def __len__(self) -> int:
        return len(self.inputs)


def cache_path(cache_dir: str | Path, model_sha: str, method: str, data_fp: str) -> Path:
    return Path(cache_dir) / f"ranges-{model_sha[:16]}-{method}-{data_fp[:16]}.json"


def collect_ranges(model_path: str | Path, inputs: Sequence[np.ndarray], method: str, op_types: Sequence[str],
                   options: Dict[str, object], progress: bool = True):
    """Run ORT's calibrator over ``inputs`` in chunks (one tqdm step per chunk) -> TensorsData."""
    from onnxruntime.quantization.calibrate import create_calibrator

    model = onnx.load(str(model_path), load_external_data=False)
    input_name = model.graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="lipt-calib-") as tmp:
        calibrator = create_calibrator(Path(model_path), list(op_types),
                                       augmented_model_path=os.path.join(tmp, "augmented.onnx"),
                                       calibrate_method=ort_method(method), extra_options=dict(options))
        chunks = [inputs[i:i + CHUNK] for i in range(0, len(inputs), CHUNK)]
        iterator = chunks
        if progress:
            from tqdm import tqdm

            iterator = tqdm(chunks, desc=f"calibrating ({method})", unit="chunk", leave=False)
        for chunk in iterator:
            calibrator.collect_data(ListReader(input_name, chunk))
        ranges = calibrator.compute_data()
        del calibrator
    return ranges


def _to_jsonable(tensors_data) -> Dict[str, object]:
    from onnxruntime.quantization.calibrate import CalibrationCacheEncoder

    return json.loads(json.dumps(tensors_data.to_dict(), cls=CalibrationCacheEncoder))


def load_or_collect(model_path: str | Path, inputs: Sequence[np.ndarray], *, method: str, op_types: Sequence[str],
                    options: Dict[str, object], model_sha: str, data_fp: str, cache_dir: Optional[str | Path]) -> Tuple[object, Optional[Path], bool, Dict[str, object]]:
    """(TensorsData, cache file, hit?, key). A cache whose key differs is recomputed and overwritten."""
    from onnxruntime.quantization.calibrate import TensorsData

    key = {"fp32_graph_sha256": model_sha, "method": method, "data_fingerprint": data_fp,
           "op_types": sorted(op_types), "options": {k: options[k] for k in sorted(options)}}
    path = cache_path(cache_dir, model_sha, method, data_fp) if cache_dir else None
    if path is not None and path.is_file():
        try:
            payload = json.loads(path.read_text())
            if payload.get("schema") == CACHE_SCHEMA and payload.get("key") == key:
                logger.info(f"[int8] calibration cache hit: {path} (ranges reused, calibration skipped)")
                return TensorsData.from_dict(payload["ranges"]), path, True, key
            logger.info(f"[int8] calibration cache {path} has a different key; recalibrating")
        except (ValueError, KeyError, TypeError) as exc:
            logger.info(f"[int8] ignoring unreadable calibration cache {path} ({type(exc).__name__})")
    ranges = collect_ranges(model_path, inputs, method, op_types, options)
    if path is not None:
        write_cache(path, ranges, key)
        logger.info(f"[int8] calibration cache written: {path}")
    return ranges, path, False, key


def write_cache(path: str | Path, ranges, key: Dict[str, object]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"schema": CACHE_SCHEMA, "version": CACHE_VERSION, "key": key,
                             "ranges": _to_jsonable(ranges)})


def write_ort_cache(path: str | Path, ranges) -> None:
    """The file format ``quantize_static(calibration_cache_path=...)`` loads."""
    from onnxruntime.quantization.calibrate import save_tensors_data

    save_tensors_data(ranges, Path(path))
