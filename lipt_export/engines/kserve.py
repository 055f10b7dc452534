"""A KServe ``InferenceService`` for a Triton model repository written by ``lipt-export triton``.

KServe's ``kserve-tritonserver`` ClusterServingRuntime runs ``tritonserver --model-store=/mnt/models`` on the
folder its storage initializer downloads from ``storageUri``, so the manifest describes the whole repository:

* ``modelFormat``: ``onnx`` when every model is an ONNX Runtime model, ``tensorrt`` when every one is a TensorRT plan,
  else ``triton`` (a Triton repository of several kinds, e.g. the ``--tiled`` BLS model on the Python backend next
  to the model it calls); the runtime is named explicitly (``runtime: kserve-tritonserver``), protocol v2.
* resources: a GPU (``nvidia.com/gpu: 1``) when a model needs one (a plan, ``KIND_GPU``), else CPU and memory;
* readiness and liveness on Triton's KServe v2 endpoints (``/v2/health/ready``, ``/v2/health/live``, port 8080 as
  the runtime starts it); ``minReplicas``/``maxReplicas`` as asked.

The file is written beside the repository (a file inside it would sit among Triton's models), atomically; an
existing one is replaced only with ``--force`` and only when this tool wrote it. The kserve SDK is not a
dependency (it pins protobuf < 7): the tests validate the file with the SDK's own model classes in a separate venv.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Optional

from lipt_export.catalog import (KSERVE_API_VERSION, KSERVE_CPU_RESOURCES, KSERVE_GPU_RESOURCES,
                                 KSERVE_MANIFEST_SUFFIX, KSERVE_MODEL_FORMATS, KSERVE_REPOSITORY_FORMAT,
                                 KSERVE_RUNTIME)
from lipt_export.errors import TritonError
from lipt_export.fileio import save_atomic

WRITTEN_BY = "lipt-export.io/written-by"  # the annotation that marks a manifest this tool wrote
KSERVE_HTTP_PORT = 8080  # the kserve-tritonserver runtime's --http-port
DEFAULT_STORAGE_URI = "s3://CHANGE-ME/{repo}"  # where the user uploads the repository; printed as a reminder
_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
PLATFORM_FORMATS = {"onnxruntime_onnx": "onnx", "onnxruntime": "onnx", "tensorrt_plan": "tensorrt",
                    "tensorrt": "tensorrt", "python": "python"}


def check_kserve_options(name: str, min_replicas: int, max_replicas: Optional[int]) -> None:
    """Everything about ``--kserve`` that needs no repository: checked before the repository is written."""
    if not _NAME.fullmatch(name) or len(name) > 63:
        raise TritonError(f"--kserve {name!r} is not a Kubernetes name: lower-case letters, digits and '-', starting "
                          f"with a letter, at most 63 characters (e.g. lipt-small-x4)")
    if min_replicas < 0:
        raise TritonError(f"--min-replicas must be >= 0 (0: scale to zero), got {min_replicas}")
    if max_replicas is not None and max_replicas < max(1, min_replicas):
        raise TritonError(f"--max-replicas {max_replicas} is below --min-replicas {min_replicas} (or 1)")


def kserve_manifest_path(repo: Path, name: str) -> Path:
    return Path(repo).resolve().parent / f"{name}{KSERVE_MANIFEST_SUFFIX}"


def check_replaceable_manifest(repo: Path, name: str, force: bool) -> Path:
    """The manifest's path; an existing file there is replaced only with ``force`` and only when this tool wrote
    it (checked before the repository is written, too)."""
    import yaml  # deferred: only --kserve reads YAML

    path = kserve_manifest_path(repo, name)
    if path.exists() or path.is_symlink():
        if not force:
            raise TritonError(f"{path} already exists; pass --force to replace it")
        try:
            old = yaml.safe_load(path.read_text()) if path.is_file() and not path.is_symlink() else None
        except (yaml.YAMLError, UnicodeDecodeError, OSError):
            old = None
        if not (isinstance(old, dict) and WRITTEN_BY in ((old.get("metadata") or {}).get("annotations") or {})):
            raise TritonError(f"--force replaces only a manifest this tool wrote, and {path} is not one; choose "
                              f"another --kserve name")
    return path


def repository_models(repo: Path) -> List[Dict[str, Any]]:
    """Every model of the repository: name, its kind (onnx | tensorrt | python | other) and whether it asks for a
    GPU instance, read from its config.pbtxt."""
    models = []
    for config in sorted(Path(repo).glob("*/config.pbtxt")):
        text = config.read_text()
        m = re.search(r'^\s*(?:platform|backend)\s*:\s*"([^"]+)"', text, re.M)
        kind = PLATFORM_FORMATS.get(m.group(1), "other") if m else "other"
        models.append({"name": config.parent.name, "kind": kind,
                       "gpu": kind == "tensorrt" or re.search(r"kind\s*:\s*KIND_GPU", text) is not None})
    return models


def inference_service(name: str, repo: Path, storage_uri: Optional[str] = None, min_replicas: int = 1,
                      max_replicas: Optional[int] = None) -> Dict[str, Any]:
    """The InferenceService as a dict (what the YAML holds)."""
    check_kserve_options(name, min_replicas, max_replicas)
    models = repository_models(repo)
    if not models:
        raise TritonError(f"{repo} holds no Triton model (no */config.pbtxt); write one with `lipt-export triton`")
    kinds = {m["kind"] for m in models}
    fmt, version = (KSERVE_MODEL_FORMATS.get(kinds.pop()) if len(kinds) == 1 else None) or KSERVE_REPOSITORY_FORMAT
    gpu = any(m["gpu"] for m in models)
    requests = dict(KSERVE_GPU_RESOURCES if gpu else KSERVE_CPU_RESOURCES)
    limits = {k: (v if k == "nvidia.com/gpu" else _twice(v)) for k, v in requests.items()}
    probe = {"initialDelaySeconds": 10, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 6}
    predictor: Dict[str, Any] = {"minReplicas": min_replicas}
    if max_replicas is not None:
        predictor["maxReplicas"] = max_replicas
    predictor["model"] = {
        "name": "kserve-container",  # the runtime's container name
        "modelFormat": {"name": fmt, "version": version},
        "runtime": KSERVE_RUNTIME,
        "protocolVersion": "v2",
        "storageUri": storage_uri or DEFAULT_STORAGE_URI.format(repo=Path(repo).resolve().name),
        "resources": {"requests": requests, "limits": limits},
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": KSERVE_HTTP_PORT}, **probe},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": KSERVE_HTTP_PORT}, **probe},
    }
    return {"apiVersion": KSERVE_API_VERSION, "kind": "InferenceService",
            "metadata": {"name": name, "annotations": {
                WRITTEN_BY: "lipt-export triton --kserve",
                "lipt-export.io/models": ",".join(m["name"] for m in models)}},
            "spec": {"predictor": predictor}}


def _twice(quantity: str) -> str:
    m = re.fullmatch(r"(\d+)(\D*)", quantity)
    return f"{int(m.group(1)) * 2}{m.group(2)}" if m else quantity


def write_inference_service(repo: Path, name: str, storage_uri: Optional[str] = None, min_replicas: int = 1,
                            max_replicas: Optional[int] = None, force: bool = False) -> Dict[str, Any]:
    """Write ``<repo's parent>/<name>.inferenceservice.yaml``; returns {"path", "manifest", "format", "gpu",
    "storage_uri_set"}."""
    import yaml  # deferred: only --kserve writes YAML

    doc = inference_service(name, repo, storage_uri, min_replicas, max_replicas)
    path = check_replaceable_manifest(repo, name, force)
    text = ("# KServe InferenceService for the Triton repository " + str(Path(repo).resolve()) + "\n"
            "# written by `lipt-export triton --kserve`; upload the repository to storageUri, then kubectl apply -f\n"
            + yaml.safe_dump(doc, sort_keys=False))
    save_atomic(path, lambda tmp: Path(tmp).write_text(text))
    model = doc["spec"]["predictor"]["model"]
    return {"path": path, "manifest": doc, "format": model["modelFormat"]["name"],
            "gpu": "nvidia.com/gpu" in model["resources"]["requests"], "storage_uri_set": storage_uri is not None}
