"""Tiled upscaling benchmark: tiled vs whole-image output, and peak memory at a 4K output.

Everything runs through the real CLI (`lipt-export upscale`) in child processes, so the peak resident set
size (ru_maxrss of each child, from os.wait4) is the whole command's: Python, ONNX Runtime, the image, the
output buffer. Default artifact: a fresh LIPT-tiny x2 export (demo weights).

    .venv/bin/python benchmarks/bench_upscale.py                  # LIPT-tiny x2, 1000x700 and 1920x1080 -> 4K
    .venv/bin/python benchmarks/bench_upscale.py --artifact exports/lipt-tiny-x2 --overlaps 32,64

Parity: whole-image (`--tile 0`) vs tiled `.npy` outputs (raw float32): relative L2 over the whole image
and over the interior (more than --band LR pixels from the image border), max |diff|, and the share of
pixels whose 8-bit value differs. Results: a table on stdout and benchmarks/results/upscale.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # helpers.shared: where ../shared is

from lipt_export.report import format_table  # noqa: E402
from helpers.shared import default_calibration_dir  # noqa: E402
from lipt_export.validation.inputs import synthetic_image  # noqa: E402
from lipt_export.validation.parity import rel_l2  # noqa: E402

CLI = [sys.executable, "-m", "lipt_export.cli"]


def run_child(args, env=None):
    """Run a command; return (seconds, peak RSS in MiB, stdout+stderr)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(map(str, args))}\n{out[-2000:]}")
    return seconds, usage.ru_maxrss / 1024.0, out  # ru_maxrss is KiB on Linux


def make_image(path: Path, w: int, h: int) -> str:
    from PIL import Image

    calib = default_calibration_dir()
    if calib is not None:
        src = Image.open(calib / "img_002.png").convert("RGB")
        if src.width < w or src.height < h:
            src = src.resize((max(w, src.width), max(h, src.height)), Image.BICUBIC)
        src.crop((0, 0, w, h)).save(path)
        return f"crop of {calib.name}/img_002.png"
    Image.fromarray((synthetic_image(h, w, 0) * 255).round().astype(np.uint8)).save(path)
    return "synthetic"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", default=None, help="export directory (default: export LIPT-tiny x2 now)")
    ap.add_argument("--size", default="1000x700", help="parity image W x H")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--overlaps", default="32,64,96")
    ap.add_argument("--band", type=int, default=64, help="LR border band excluded from the interior figures")
    ap.add_argument("--skip-4k", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "upscale.json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-upscale-"))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    artifact = args.artifact
    if artifact is None:
        secs, _, _ = run_child([*CLI, "--model", "lipt", "--variant", "tiny", "--scale", "2", "--out", str(tmp),
                                "--no-lint", "--backend", "onnxruntime"], env)
        artifact = str(tmp / "lipt-tiny-x2")
        print(f"exported {artifact} in {secs:.0f}s", file=sys.stderr)
    w, h = (int(v) for v in args.size.lower().split("x"))
    src = tmp / f"in_{w}x{h}.png"
    source = make_image(src, w, h)
    report = {"artifact": artifact, "image": {"size": [w, h], "source": source}, "parity": [], "memory": []}

    secs, rss, _ = run_child([*CLI, "upscale", "-q", artifact, str(src), str(tmp / "whole.npy"), "--tile", "0"], env)
    whole = np.load(tmp / "whole.npy")
    report["memory"].append({"run": f"{w}x{h} whole image", "output": list(whole.shape[1::-1]), "seconds": secs,
                             "peak_rss_mib": rss})
    s = whole.shape[0] // h
    band = s * args.band
    inner = (slice(band, -band), slice(band, -band))
    q = lambda a: np.clip(a * 255 + 0.5, 0, 255).astype(np.uint8)  # noqa: E731 - what the PNG would hold
    for ov in (int(v) for v in args.overlaps.split(",")):
        out = tmp / f"tiled_o{ov}.npy"
        secs, rss, _ = run_child([*CLI, "upscale", "-q", artifact, str(src), str(out), "--tile", str(args.tile),
                                  "--overlap", str(ov)], env)
        tiled = np.load(out)
        report["parity"].append({
            "tile": args.tile, "overlap": ov, "seconds": secs, "peak_rss_mib": rss,
            "rel_l2": rel_l2(tiled, whole), "rel_l2_interior": rel_l2(tiled[inner], whole[inner]),
            "max_abs": float(np.abs(tiled - whole).max()), "max_abs_interior": float(np.abs(tiled - whole)[inner].max()),
            "uint8_pixels_differing": float(np.mean(q(tiled) != q(whole)))})
        report["memory"].append({"run": f"{w}x{h} tile {args.tile} overlap {ov}", "output": list(tiled.shape[1::-1]),
                                 "seconds": secs, "peak_rss_mib": rss})

    if not args.skip_4k:
        src4k = tmp / "in_1920x1080.png"
        make_image(src4k, 1920, 1080)
        for tile in (args.tile, 256):
            secs, rss, _ = run_child([*CLI, "upscale", "-q", artifact, str(src4k), str(tmp / "out4k.png"),
                                      "--tile", str(tile), "--overlap", "64"], env)
            report["memory"].append({"run": f"1920x1080 -> 4K PNG, tile {tile} overlap 64",
                                     "output": [1920 * s, 1080 * s], "seconds": secs, "peak_rss_mib": rss})

    print(f"\nParity at {w}x{h} ({source}), tiled vs whole image; interior = more than {args.band} LR px from "
          f"the border")
    print(format_table(("tile", "overlap", "rel-L2", "rel-L2 interior", "max |d|", "max |d| interior",
                        "8-bit px differing"),
                       [[r["tile"], r["overlap"], f"{r['rel_l2']:.2e}", f"{r['rel_l2_interior']:.2e}",
                         f"{r['max_abs']:.2e}", f"{r['max_abs_interior']:.2e}",
                         f"{100 * r['uint8_pixels_differing']:.3f}%"] for r in report["parity"]]))
    print("\nTime and peak RSS of the whole `lipt-export upscale` process")
    print(format_table(("run", "output", "seconds", "peak RSS MiB"),
                       [[m["run"], "x".join(map(str, m["output"])), f"{m['seconds']:.1f}", f"{m['peak_rss_mib']:.0f}"]
                        for m in report["memory"]]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"\nsaved {args.out}")


if __name__ == "__main__":
    main()
