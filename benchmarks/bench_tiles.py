"""Default tile per family: peak memory and time of `lipt-export upscale` on a 1920x1080 image at several tiles.

For each family on its default variant (demo weights; SMSR x2 from the official checkpoint when given) one FP32
export (ONNX Runtime only), then interleaved rounds: in every round each tile runs once, in a rotated order, as its
own child process (`lipt-export upscale EXPORT in.png out.png --tile T --runtime onnxruntime -q`), so peak RSS
(ru_maxrss from os.wait4) is that run's alone and load from other work hits every tile alike. Medians over rounds;
the load average and CPU steal are recorded around every run.

    flock /work/locks/bench.lock .venv/bin/python benchmarks/bench_tiles.py \
        --smsr-weights ../shared/checkpoints/smsr/SMSR_x2_official.pt --rounds 3

Results: a table on stdout and benchmarks/results/tiles.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_memory import CLI, run_child, run_timed  # noqa: E402
from lipt_export.report import format_table  # noqa: E402
from lipt_export.validation.machine_load import parse_proc_stat  # noqa: E402

# family -> (variant, tiles; 0 = whole image). ESRT must run tiled (quadratic attention: 8 N^2 bytes per tile of
# N pixels: 2 GiB at 128x128), so its candidates are around its recommended 64.
PLANS = {"lipt": ("small", [128, 192, 256, 384, 512, 0]),
         "smsr": ("base", [128, 192, 256, 384, 512, 0]),
         "esrt": ("base", [48, 64, 96, 128]),
         "agileir": ("normal", [128, 192, 256, 512])}


def steal_jiffies() -> int:
    with open("/proc/stat") as f:
        return parse_proc_stat(f.read())[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default=",".join(PLANS))
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--size", default="1920x1080", help="input W x H")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tiles", default=None, help="override every family's tile list (0 = whole image)")
    ap.add_argument("--family-size", default="", help="per-family input sizes, e.g. 'agileir=960x540'")
    ap.add_argument("--plan", default="", help="per-family tile lists, e.g. 'lipt=128,256;agileir=128,256'")
    ap.add_argument("--smsr-weights", default=None, help="SMSR checkpoint (x2 official) instead of demo weights")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget-min", type=float, default=25.0, help="per family: no new round after this")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tiles.json"))
    args = ap.parse_args()
    sizes = dict(p.split("=", 1) for p in args.family_size.split(";") if p)
    results, summary = [], []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for fam in args.families.split(","):
            w, h = (int(v) for v in sizes.get(fam, args.size).lower().split("x"))
            src = tmp / f"in_{w}x{h}.png"
            if not src.exists():  # in a child: a child's ru_maxrss starts at its parent's RSS (fork)
                run_child([sys.executable, str(ROOT / "benchmarks" / "bench_memory.py"), "--make-image", str(src),
                           str(w), str(h)])
            variant, tiles = PLANS[fam]
            plan = dict(p.split("=", 1) for p in args.plan.split(";") if p)
            if args.tiles or fam in plan:
                tiles = [int(t) for t in (plan.get(fam) or args.tiles).split(",")]
            cmd = [*CLI, "export", "--model", fam, "--variant", variant, "--scale", str(args.scale),
                   "--backend", "onnxruntime", "--no-lint", "--out", str(tmp), "--overwrite"]
            if fam == "smsr" and args.smsr_weights:
                cmd += ["--weights", args.smsr_weights]
            secs, _ = run_child(cmd)
            print(f"exported {fam}-{variant}-x{args.scale} in {secs:.0f} s", flush=True)
            export = tmp / f"{fam}-{variant}-x{args.scale}"
            runs = {t: [] for t in tiles}
            t_start = time.monotonic()
            for rnd in range(args.rounds):
                if rnd >= 2 and time.monotonic() - t_start > 60 * args.budget_min:
                    print(f"{fam}: time budget reached after {rnd} rounds", flush=True)
                    break
                order = tiles[rnd % len(tiles):] + tiles[:rnd % len(tiles)]
                for t in order:
                    dst = tmp / "out.png"
                    load0, steal0, wall0 = os.getloadavg()[0], steal_jiffies(), time.monotonic()
                    seconds, cpu, rss = run_timed([*CLI, "upscale", str(export), str(src), str(dst), "--tile", str(t),
                                              "--runtime", "onnxruntime", "--threads", str(args.threads), "-q"])
                    steal_pct = 100 * (steal_jiffies() - steal0) / os.sysconf("SC_CLK_TCK") / (
                        (time.monotonic() - wall0) * os.cpu_count())
                    rec = {"family": fam, "variant": variant, "scale": args.scale, "input": [w, h], "tile": t,
                           "round": rnd, "cpu_seconds": round(cpu, 2),
                           "seconds": round(seconds, 2), "peak_rss_mib": round(rss, 1), "load_before": load0,
                           "load_after": os.getloadavg()[0], "steal_pct": round(steal_pct, 2)}
                    runs[t].append(rec)
                    results.append(rec)
                    dst.unlink(missing_ok=True)
                    print(f"  {fam} tile {t or 'whole'} round {rnd}: {seconds:.1f} s ({cpu:.1f} s CPU), {rss:.0f} "
                          f"MiB, load {load0:.2f} -> {rec['load_after']:.2f}, steal {steal_pct:.1f} %", flush=True)
                    out.write_text(json.dumps({"results": results}, indent=2) + "\n")
            base = statistics.median(r["seconds"] for r in runs[tiles[0]])
            for t in tiles:
                secs = [r["seconds"] for r in runs[t]]
                cpus = [r["cpu_seconds"] for r in runs[t]]
                rss = [r["peak_rss_mib"] for r in runs[t]]
                summary.append({"family": fam, "variant": variant, "input": [w, h], "tile": t, "rounds": len(secs),
                                "median_s": statistics.median(secs), "min_s": min(secs), "max_s": max(secs),
                                "median_cpu_s": statistics.median(cpus), "median_rss_mib": statistics.median(rss),
                                "max_rss_mib": max(rss),
                                "time_vs_first": statistics.median(secs) / base})
    rows = [[s["family"] + "-" + s["variant"], "x".join(map(str, s["input"])), s["tile"] or "whole", s["rounds"],
             f"{s['median_rss_mib']:.0f}", f"{s['max_rss_mib']:.0f}", f"{s['median_s']:.1f}",
             f"{s['min_s']:.1f}-{s['max_s']:.1f}", f"{s['median_cpu_s']:.1f}", f"{s['time_vs_first']:.2f}"]
            for s in summary]
    print()
    print(format_table(("model", "input", "tile", "rounds", "peak RSS MiB (median)", "max", "seconds (median)",
                        "min-max", "CPU s (median)", "time / first tile"), rows))
    loads = [r["load_before"] for r in results] + [r["load_after"] for r in results]
    print(f"\nx{args.scale}, {args.threads} threads, load average {min(loads):.2f}-{max(loads):.2f}, "
          f"steal max {max(r['steal_pct'] for r in results):.1f} %")
    out.write_text(json.dumps({"scale": args.scale, "threads": args.threads, "results": results,
                               "summary": summary}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
