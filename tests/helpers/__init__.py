"""Shared test support: toy networks, export builders and the ../shared locator."""
import json
from pathlib import Path


def manifest_json(export_dir) -> dict:
    """The manifest exactly as written on disk (schema v1 JSON), for tests of the on-disk format."""
    return json.loads((Path(export_dir) / "manifest.json").read_text())
