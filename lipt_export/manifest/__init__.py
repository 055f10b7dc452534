"""manifest.json: the contract between an export directory and whatever serves it.

The on-disk schema (``schema_version`` 1) is documented in docs/manifest.md. In memory a manifest is a
:class:`Manifest` of frozen dataclasses (:mod:`.schema`); what the export stages record about each artifact is read
through typed records (:mod:`.details`: engine runtime and profile, parity, FP16 islands, INT8 budget, lint,
the runtime choice), never by string keys elsewhere. :func:`read_manifest` is the one reader: it checks the schema
and version and the fields every consumer relies on, and :meth:`Manifest.artifact_path` keeps every artifact path
inside the export directory and verifies its sha256 before anything uses the file.

The model description (everything but the artifact list) is also written into each ONNX file's
``metadata_props`` under ``lipt_export.model`` so a lone .onnx file still describes itself.
"""
from lipt_export.manifest.details import (FLAVOR_NAMES, Bf16Details, Bf16Island, EngineDetails, Fp16Details,
                                          Fp32Island, Int8Details, Int8Speed, LintSummary, Parity, PrecisionAudit,
                                          PrecisionAuto, ProfileSpec, QdqDetails, RuntimeCandidate, RuntimeChoice,
                                          TargetChoice)
from lipt_export.manifest.schema import (FORMATS, MANIFEST_NAME, METADATA_KEY, REPORT_NAME, SCHEMA, SCHEMA_VERSION,
                                         ArtifactEntry, IOContract, Manifest, ModelInfo, demo_weights_warning,
                                         embed_onnx_metadata, export_files, manifest_path, onnx_manifest,
                                         onnx_metadata, onnx_precision, onnx_properties, read_manifest,
                                         replaceable_problem, versions, write_manifest)

__all__ = ["FLAVOR_NAMES", "FORMATS", "MANIFEST_NAME", "METADATA_KEY", "REPORT_NAME", "SCHEMA", "SCHEMA_VERSION",
           "ArtifactEntry", "Bf16Details", "Bf16Island", "PrecisionAuto", "QdqDetails", "TargetChoice", "EngineDetails", "Fp16Details", "Fp32Island", "IOContract", "Int8Details", "Int8Speed",
           "LintSummary", "Manifest", "ModelInfo", "Parity", "PrecisionAudit", "ProfileSpec", "RuntimeCandidate",
           "RuntimeChoice", "demo_weights_warning", "embed_onnx_metadata", "export_files", "manifest_path",
           "onnx_manifest", "onnx_metadata", "onnx_precision", "onnx_properties", "read_manifest",
           "replaceable_problem", "versions", "write_manifest"]
