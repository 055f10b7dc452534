"""Peak memory of `lipt-export upscale` against image size: is it bounded by the tile?

Child processes run the real CLI (`lipt-export upscale EXPORT in.png out.EXT --tile 256`) and report their peak
resident set size (ru_maxrss from os.wait4; this parent stays small and makes the input images in children too,
since a forked child's ru_maxrss starts at its parent's RSS): Python, ONNX Runtime, the decoded input, the tiles in flight and the
output's encoding. PNG and .npy outputs are streamed row block by row block; JPEG is encoded by PIL from a whole
8-bit image (shown for comparison). Default artifacts: fresh LIPT-tiny x2 and x4 exports (demo weights).

    .venv/bin/python benchmarks/bench_memory.py                       # 1000x700, 1920x1080, 6000x4000 at x2, x4
    .venv/bin/python benchmarks/bench_memory.py --sizes 1000x700 --scales 2

Results: a table on stdout and benchmarks/results/memory.json.
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

from lipt_export.report import format_table  # noqa: E402

CLI = [sys.executable, "-m", "lipt_export.cli"]


def run_timed(args):
    """(wall seconds, CPU seconds (user + system, all threads), peak RSS MiB) of one command in its own process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(map(str, args))}\n{out[-2000:]}")
    return time.perf_counter() - t0, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0


def run_child(args):
    """(seconds, peak RSS MiB) of one command."""
    seconds, _, rss = run_timed(args)
    return seconds, rss


def make_image(path: Path, w: int, h: int) -> None:
    """A natural-looking image of any size: smooth noise, gradients and edges (deterministic)."""
    from PIL import Image

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(0)
    coarse = rng.random((h // 16 + 2, w // 16 + 2, 3)).astype(np.float32)
    small = Image.fromarray((coarse * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    img = 0.6 * np.asarray(small, np.float32) / 255 + 0.2 * ((xx + yy) / (w + h))[..., None]
    img += 0.2 * (np.sin(xx / 7.0) > 0)[..., None]
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000x700,1920x1080,6000x4000", help="input W x H list")
    ap.add_argument("--scales", default="2,4")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--formats", default="png,jpg")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "memory.json"))
    ap.add_argument("--make-image", nargs=3, metavar=("PATH", "W", "H"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_image:
        path, w, h = args.make_image
        make_image(Path(path), int(w), int(h))
        return
    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for scale in [int(s) for s in args.scales.split(",")]:
            run_child([*CLI, "--model", "lipt", "--variant", "tiny", "--scale", str(scale), "--backend", "onnxruntime",
                       "--no-lint", "--out", str(tmp), "--overwrite"])
            export = tmp / f"lipt-tiny-x{scale}"
            for size in args.sizes.split(","):
                w, h = (int(v) for v in size.lower().split("x"))
                src = tmp / f"in_{w}x{h}.png"
                if not src.exists():  # in a child: a child's ru_maxrss starts at its parent's RSS (fork)
                    run_child([sys.executable, __file__, "--make-image", str(src), str(w), str(h)])
                for fmt in args.formats.split(","):
                    dst = tmp / f"out_{w}x{h}_x{scale}.{fmt}"
                    seconds, rss = run_child([*CLI, "upscale", str(export), str(src), str(dst), "--tile",
                                              str(args.tile), "-q"])
                    out_mib = 3 * (w * scale) * (h * scale) / 2 ** 20
                    results.append({"input": [w, h], "scale": scale, "format": fmt, "tile": args.tile,
                                    "seconds": round(seconds, 1), "peak_rss_mib": round(rss, 1),
                                    "output_rgb8_mib": round(out_mib, 1)})
                    rows.append([f"{w}x{h}", f"x{scale}", fmt, f"{w * scale}x{h * scale}", f"{out_mib:.0f}",
                                 f"{rss:.0f}", f"{seconds:.1f}"])
                    dst.unlink()
                    print(format_table(("input", "scale", "format", "output", "output RGB8 MiB", "peak RSS MiB",
                                        "seconds"), rows[-1:]), flush=True)
    print()
    print(format_table(("input", "scale", "format", "output", "output RGB8 MiB", "peak RSS MiB", "seconds"), rows))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"tile": args.tile, "results": results}, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
