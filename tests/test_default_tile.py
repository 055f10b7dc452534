"""The default tile per family (issue 26, part 4): stated once in the catalog, written into the manifest
(io.tiling.default_tile), and what `upscale`, the Python API with POLICY_TILE and the Triton BLS model use when no
tile is asked for; a manifest without it (made before) keeps the old 512."""
from __future__ import annotations

import json
import shutil

import numpy as np
from PIL import Image

from helpers.cli import run_cli
from lipt_export import catalog
from lipt_export.engines.triton import write_triton_model
from lipt_export.manifest import read_manifest
from lipt_export.runtime.loader import open_artifact
from lipt_export.runtime.resolve import resolve
from lipt_export.tiling import DEFAULT_TILE, POLICY_TILE


def _with_default(tiny_export, d, value):
    shutil.copytree(tiny_export, d)
    man = json.loads((d / "manifest.json").read_text())
    if value is None:
        del man["io"]["tiling"]["default_tile"]
    else:
        man["io"]["tiling"]["default_tile"] = value
    (d / "manifest.json").write_text(json.dumps(man))
    return d


def test_the_catalog_default_reaches_manifest_resolver_upscale_and_triton(tiny_export, tmp_path):
    written = json.loads((tiny_export / "manifest.json").read_text())["io"]["tiling"]["default_tile"]
    assert written == catalog.FAMILIES["lipt"].default_tile
    assert resolve(open_artifact(tiny_export)).tile == written  # upscale's resolution (POLICY_TILE)
    assert resolve(open_artifact(tiny_export), default_tile=None).tile is None  # the API's whole images
    old = _with_default(tiny_export, tmp_path / "old", None)
    assert read_manifest(old).io.tiling.default_tile == DEFAULT_TILE == 512
    assert resolve(open_artifact(old)).tile == 512
    d = _with_default(tiny_export, tmp_path / "d160", 160)
    assert read_manifest(d).io.to_dict()["tiling"]["default_tile"] == 160  # round trip
    src = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((200, 180, 3)) * 255).astype(np.uint8)).save(src)
    res = run_cli("upscale", d, src, tmp_path / "out.png", "--runtime", "onnxruntime", "-q")
    assert res.exit_code == 0, res.output
    assert "tile 160 overlap 64" in res.output
    small = tmp_path / "small.png"
    Image.fromarray((np.random.default_rng(1).random((100, 120, 3)) * 255).astype(np.uint8)).save(small)
    res = run_cli("upscale", d, small, tmp_path / "small_out.png", "--runtime", "onnxruntime", "-q")
    assert res.exit_code == 0 and "tile 160" in res.output  # up to the tile: one whole tile
    repo = tmp_path / "repo"
    made = write_triton_model(d, repo, name="m", tiled=True, threads=1)
    assert made["tiled"]["tile"] == 160 == read_manifest(d).io.tiling.resolve(None, None, POLICY_TILE)[0]
