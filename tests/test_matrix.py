"""The product is the matrix: every family, at its smallest configuration and on its default options (a small
engine profile aside, for the suite's time), through every command a user runs: export (TensorRT-RTX engines where
installed) -> verify -> upscale of a real image (tiled and whole agree) and of a folder holding an image and a
video -> triton (auto) -> serve, whose answer
equals the local upscale -> eval on two Set5 images. And each family's exact default export command holds an
engine profile its graph can build.

Families: LIPT-tiny x2 and ESRT x2 (demo weights), AgileIR from a small checkpoint in the official KAIR layout
(the architecture read from it), SMSR x2 with the official checkpoint from ../shared (demo weights without it)."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.checkpoints import small_agileir_checkpoint
from helpers.cli import one_export, run_cli
from helpers.video import decoded, make_clip, packets
from lipt_export import load_runner
from lipt_export.engines.shapes import MAX_ELEMENTS, check_max_shape
from lipt_export.engines.triton_client import TritonHttpClient
from lipt_export.engines.triton_server import free_port_block, server_env_problem
from lipt_export.export.pipeline import ExportConfig, build_deploy_graph, onnx_stage, simplify_stage
from lipt_export.models.io import UnitRangeIO
from lipt_export.models.registry import get_spec
from lipt_export.runtime.trt import tensorrt_rtx_status
from lipt_export.validation.inputs import synthetic_image
from lipt_export.validation.metrics import psnr

RTX = tensorrt_rtx_status()[0]
SHAPES = "16x16:32x32:48x48"  # small engine profiles: the suite's time; the defaults are checked below
SMSR_CKPT = "checkpoints/smsr/SMSR_x2_official.pt"
SET5 = "datasets/Set5"


class Family:
    def __init__(self, name: str, args, out: Path, weights=None):
        self.name, self.args, self.out, self.weights = name, [str(a) for a in args], out, weights


@pytest.fixture(scope="module", params=["agileir", "esrt", "lipt", "smsr"])
def family(request, tmp_path_factory, shared):
    name = request.param
    tmp = tmp_path_factory.mktemp(f"matrix-{name}")
    weights = None
    if name == "agileir":
        weights = small_agileir_checkpoint(tmp)
    elif name == "smsr":
        weights = shared.find(SMSR_CKPT)  # demo weights when ../shared is absent
    args = ["--model", name, "--scale", 2, *(["--variant", "tiny"] if name == "lipt" else []),
            *(["--weights", weights] if weights else [])]
    shapes = "32x32:32x32:32x32" if name == "agileir" else SHAPES  # AgileIR's default is static: so is this
    res = run_cli(*args, "--shapes", shapes, "--out", tmp / "out")
    assert res.exit_code == 0, res.output
    fam = Family(name, args, one_export(tmp / "out"), weights)
    fam.export_output, fam.tmp = res.output, tmp
    return fam


@pytest.fixture(scope="module")
def image(tmp_path_factory, shared) -> Path:
    """A real LR image (Set5 woman x2, 114x172) or, without ../shared, a synthetic one of that size."""
    found = shared.find(f"{SET5}/LR_bicubic/X2/woman.png")
    if found is not None:
        return found
    path = tmp_path_factory.mktemp("img") / "woman.png"
    Image.fromarray((synthetic_image(114, 172, 5) * 255).round().astype(np.uint8)).save(path)
    return path


def _manifest(d: Path) -> dict:
    return json.loads((d / "manifest.json").read_text())


def test_export_on_defaults_builds_engines_and_names_their_runtime(family):
    man = _manifest(family.out)
    onnx = [a for a in man["artifacts"] if a["format"] == "onnx"]
    assert [a["precision"] for a in onnx] == ["fp32"] and onnx[0]["parity"]["rel_l2"] <= 1e-4
    engines = [a for a in man["artifacts"] if a["format"] == "tensorrt"]
    if not RTX:
        assert engines == [] and "ONNX artifacts only" in man["export"]["engines"]["why"]
        return
    (e,) = engines
    assert e["runtime"] == "tensorrt-rtx" and e["compute_capabilities"] == ["8.6", "8.9", "12.0"]
    assert e["parser"]["errors"] == [] and e["precision_audit"]["shares"]["fp32"] == 1.0
    assert f"TensorRT-RTX {e['tensorrt_version']}" in family.export_output
    if family.name == "smsr" and family.weights is None or family.name in ("lipt", "esrt"):
        assert "demo weights" in family.export_output


def test_verify_passes(family):
    res = run_cli("verify", family.out)
    assert res.exit_code == 0, res.output
    assert re.search(r"\b1 passed, 0 failed", res.output), res.output


def _upscale(family, image: Path, dst: Path, *extra) -> np.ndarray:
    res = run_cli("upscale", family.out, image, dst, "-q", *extra)
    assert res.exit_code == 0, res.output
    return np.load(dst) if dst.suffix == ".npy" else np.asarray(Image.open(dst)).astype(np.int16)


def test_upscale_of_a_real_image_tiled_and_whole_agree(family, image):
    """Tiled (2x2 tiles of 96, 48 for ESRT; the policy's overlap) against whole-image inference; ESRT must run tiled
    (its attention is quadratic), so its tiled output is compared with the Python API's, which applies the same
    policy."""
    tile = 48 if family.name == "esrt" else 96
    tiled = _upscale(family, image, family.tmp / "tiled.png", "--tile", tile)
    lr = np.asarray(Image.open(image).convert("RGB"), np.float32)
    assert tiled.shape == (2 * lr.shape[0], 2 * lr.shape[1], 3)
    if family.name == "esrt":
        runner = load_runner(family.out, tile=48, runtime="onnxruntime")
        ref = runner.infer(np.ascontiguousarray(lr.transpose(2, 0, 1)[None] / np.float32(255)))[0]
        ref = np.clip(ref.transpose(1, 2, 0) * 255 + 0.5, 0, 255).astype(np.int16)
        auto_runtime = _upscale(family, image, family.tmp / "esrt_onnxruntime.png", "--tile", 48, "--runtime",
                                "onnxruntime")
        assert np.abs(auto_runtime - ref).max() <= 1
        return
    whole = _upscale(family, image, family.tmp / "whole.png", "--tile", 0)
    diff = np.abs(tiled - whole)
    print(f"\n{family.name}: tiled vs whole max {diff.max()} codes, {(diff > 1).mean():.2%} of samples > 1, "
          f"PSNR {psnr(tiled / 255.0, whole / 255.0):.1f} dB")
    if family.name == "smsr":
        # SMSR's channel attention pools over its whole input, so a tile sees other statistics than the image:
        # no overlap makes them equal (measured on Set5 woman, tile 96: 49.4 dB at overlap 16, 49.1 at 64)
        assert psnr(tiled / 255.0, whole / 255.0) >= 45.0
        return
    # the policy's overlap (8 windows) keeps seams at float noise: at most a code or two after rounding
    assert diff.max() <= 2 and (diff > 1).mean() < 0.001, (family.name, diff.max(), (diff > 1).mean())


def test_a_folder_of_an_image_and_a_video_on_defaults(family, tmp_path):
    """`upscale` of a folder mixing an image and a short video (H.264 + AAC), options on their defaults but --lossless
    (FFV1, so frames compare exactly): each output frame equals the upscale of that decoded frame as an image; frame
    count, timestamps and audio kept."""
    rng = np.random.default_rng(3)
    base = (synthetic_image(48, 64, 3) * 255).round().astype(np.uint8)
    frames = [np.clip(base.astype(int) + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
              for _ in range(3)]
    media = tmp_path / "media"
    media.mkdir()
    Image.fromarray(frames[0]).save(media / "still.png")
    clip = make_clip(media / "clip.mkv", frames)
    res = run_cli("upscale", family.out, media, tmp_path / "up", "-q", "--lossless")
    assert res.exit_code == 0, res.output
    assert "1 image(s) and 1 video(s) (3 frames" in res.output, res.output
    src, src_pts, src_tb, *_ = decoded(clip)
    out, pts, tb, *_ = decoded(tmp_path / "up" / "clip.mkv")
    assert len(out) == 3 and [p * tb for p in pts] == [p * src_tb for p in src_pts]
    assert packets(tmp_path / "up" / "clip.mkv") == packets(clip)
    stills = tmp_path / "stills"
    stills.mkdir()
    for i, rgb in enumerate(src):
        Image.fromarray(rgb).save(stills / f"{i}.png")
    assert run_cli("upscale", family.out, stills, tmp_path / "stills_up", "-q").exit_code == 0
    for i, rgb in enumerate(out):
        assert rgb.shape == (96, 128, 3) and np.array_equal(rgb, np.asarray(Image.open(tmp_path / "stills_up" /
                                                                                     f"{i}.png"))), i
    assert np.asarray(Image.open(tmp_path / "up" / "still.png")).shape == (96, 128, 3)


SERVE_PROBLEM = server_env_problem()


@pytest.mark.skipif(SERVE_PROBLEM is not None, reason=f"no Triton server environment: {SERVE_PROBLEM}")
def test_triton_auto_and_serve_answer_like_local_upscale(family, image):
    repo = family.tmp / "repo"
    res = run_cli("triton", family.out, "--repo", repo, "--tiled")
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in repo.iterdir() if not p.name.startswith("."))
    plain = next(n for n in names if not n.endswith("_tiled"))
    assert 'platform: "onnxruntime_onnx"' in (repo / plain / "config.pbtxt").read_text()  # never an RTX plan
    assert (repo / plain / "1" / "model.onnx").is_file() and not (repo / plain / "1" / "model.plan").exists()
    if RTX:
        assert "cannot load TensorRT-RTX plans" in res.stderr
    # the server runs ONNX Runtime, tiled by the export's policy (images below its tile run whole, as locally)
    local = _upscale(family, image, family.tmp / "local.npy", "--runtime", "onnxruntime")
    port = free_port_block()
    proc = subprocess.Popen([sys.executable, "-m", "lipt_export.cli", "serve", str(family.out), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(ln.startswith("Ctrl-C") for ln in lines):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        text = "".join(lines)
        assert "Ctrl-C or SIGTERM" in text, text
        if family.weights is None:
            assert "carries demo weights" in text
        tiled_name = re.search(r"model\s+(\S+_tiled)", text).group(1)
        lr = np.asarray(Image.open(image).convert("RGB"), np.float32).transpose(2, 0, 1)[None] / np.float32(255)
        client = TritonHttpClient(f"http://127.0.0.1:{port}", timeout=120)
        served = client.infer(tiled_name, {"lr": np.ascontiguousarray(lr)}, ["sr"])["sr"][0].transpose(1, 2, 0)
        assert served.shape == local.shape and np.abs(served - local).max() <= 1e-5, np.abs(served - local).max()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_eval_on_two_set5_images(family, shared):
    dataset = shared.require(SET5)
    js = family.tmp / "eval.json"
    res = run_cli("eval", "--model", family.name, "--scale", 2,
                  *(["--variant", "tiny"] if family.name == "lipt" else []),
                  *(["--weights", family.weights] if family.weights else []),
                  "--dataset", dataset, "--limit", 2, "--artifact", family.out, "--json", js)
    assert res.exit_code == 0, res.output
    rows = {r["artifact"]: r for r in json.loads(js.read_text())["results"]}
    eager = next(r for name, r in rows.items() if name.startswith("eager"))
    onnx = next(r for name, r in rows.items() if name.endswith("model.onnx") or "model.onnx" in name)
    assert eager["images"] == onnx["images"] == 2
    assert abs(onnx["psnr_y"] - eager["psnr_y"]) <= 0.01, (eager["psnr_y"], onnx["psnr_y"])
    if family.name == "smsr" and family.weights is not None:
        assert eager["psnr_y"] > 35  # a real model on real images (baby, bird)


@pytest.mark.parametrize("name", ["agileir", "esrt", "lipt", "smsr"])
def test_default_export_command_has_an_engine_profile_its_graph_can_build(name, tmp_path):
    """`lipt-export --model NAME` as typed: default variant, scale 4, default engine profile. Its fp32 graph is
    exported as the command does and every tensor at the profile's max shape is checked against TensorRT's 2^31
    limit (ESRT's default once asked for 1x8x4x65536x65536)."""
    cfg = ExportConfig(model=name)
    spec = get_spec(name)
    cfg.validate()
    engine = cfg.engine.for_model(spec)
    prepared, _ = build_deploy_graph(spec, cfg)
    raw, _ = onnx_stage(UnitRangeIO(prepared.deploy, spec.rgb_range).eval(), tmp_path, cfg, prepared.arch.size_multiple)
    fp32, _ = simplify_stage(raw, tmp_path, cfg.simplify)
    report = check_max_shape(fp32, engine.profile())
    assert 0 < report.largest < MAX_ELEMENTS and not report.unresolved, (name, report)
    print(f"\n{name} x{cfg.scale} default profile {engine.shapes}: largest tensor {report.tensor} {report.shape}")
