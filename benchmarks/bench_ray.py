"""`upscale` on this machine vs `upscale --ray` (one node, two nodes) on the same folder, in interleaved rounds.

    flock /work/locks/bench.lock .venv/bin/python benchmarks/bench_ray.py            # 24 images 256x256, 3 rounds
    .venv/bin/python benchmarks/bench_ray.py --images 8 --rounds 1                 # a quick look

Modes, each a fresh `lipt-export upscale EXPORT IN OUT -q --runtime onnxruntime` process (its wall time, start-up and
imports included, the same for all):

* local: no Ray (ONNX Runtime with all cores);
* ray auto: `--ray auto`, a private Ray started (and stopped) by the run: one node with every core, one worker;
* ray 1 node: `--ray ADDRESS` of a one-node cluster (every core) started before the rounds: Ray's cost per file,
  without Ray's start-up;
* ray 2 nodes: `--ray ADDRESS` of a two-node cluster (one CPU each, `ray.cluster_utils.Cluster`, both on this
  machine) started before the rounds: two workers of one thread each.

The clusters run on 127.0.0.1 only. Ratios per round (the runs of a round are close in time), median: each mode
over local (overhead; > 1 is slower), and local over ray 2 nodes (the speed-up of two workers on the same cores).
Every output is checked against the local run's (same bytes). Results: a table on stdout and
benchmarks/results/ray.json. The export is LIPT-tiny x2 (demo weights; made in a temp folder unless --export).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before ray is imported: loopback clusters
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lipt_export.report import format_table  # noqa: E402

MODES = ("local", "ray auto", "ray 1 node", "ray 2 nodes")


def cli(*args) -> list:
    return [sys.executable, "-m", "lipt_export.cli", *map(str, args)]


def make_export(tmp: Path) -> Path:
    subprocess.run(cli("--model", "lipt", "--variant", "tiny", "--scale", "2", "--backend", "onnxruntime",
                       "--no-lint", "--out", tmp), check=True, capture_output=True, env=child_env())
    return tmp / "lipt-tiny-x2"


def make_images(folder: Path, n: int, size: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), np.uint8)).save(folder / f"im{i:03d}.png")


def child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run(mode: str, export: Path, src: Path, out: Path, addresses: dict) -> float:
    shutil.rmtree(out, ignore_errors=True)
    ray = [] if mode == "local" else ["--ray", "auto" if mode == "ray auto" else addresses[mode]]
    env = child_env()
    if mode == "ray auto":  # as a user runs it: nothing of the benchmark's own Ray set-up
        env = {k: v for k, v in env.items() if not k.startswith("RAY_")}
    t0 = time.perf_counter()
    proc = subprocess.run(cli("upscale", export, src, out, "-q", "--runtime", "onnxruntime", *ray),
                          capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stdout}{proc.stderr}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--export", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "ray.json")
    args = ap.parse_args()
    from ray.cluster_utils import Cluster

    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    clusters = []
    try:
        export = args.export or make_export(tmp / "export")
        src = tmp / "in"
        make_images(src, args.images, args.size)
        cores = os.cpu_count() or 1
        one = Cluster(initialize_head=True, head_node_args=dict(num_cpus=cores, node_ip_address="127.0.0.1",
                                                                include_dashboard=False))
        clusters.append(one)
        two = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1, node_ip_address="127.0.0.1",
                                                                include_dashboard=False))
        clusters.append(two)
        two.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        addresses = {"ray 1 node": one.address, "ray 2 nodes": two.address}
        times = {m: [] for m in MODES}
        reference = None
        for r in range(args.rounds):
            order = MODES if r % 2 == 0 else MODES[::-1]  # interleaved, alternating order
            for mode in order:
                out = tmp / f"out-{mode.replace(' ', '-')}"
                times[mode].append(run(mode, export, src, out, addresses))
                outputs = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
                if mode == "local":
                    reference = reference or outputs
                    assert outputs == reference
                elif reference is not None:
                    assert outputs == reference, f"{mode}: outputs differ from the local run's"
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{m} {times[m][-1]:.1f}s" for m in MODES),
                  file=sys.stderr)
        assert all(({p.name: p.read_bytes() for p in sorted((tmp / f"out-{m.replace(' ', '-')}").iterdir())}
                    == reference) for m in MODES)
        load = os.getloadavg()
        rows, result = [], {"images": args.images, "size": args.size, "rounds": args.rounds, "cores": cores,
                            "loadavg": load, "modes": {}}
        for mode in MODES:
            ratio = statistics.median(t / l for t, l in zip(times[mode], times["local"]))
            med = statistics.median(times[mode])
            result["modes"][mode] = {"seconds": times[mode], "median_s": med, "vs_local": ratio,
                                     "images_per_s": args.images / med}
            rows.append([mode, f"{med:.1f}", f"{args.images / med:.2f}", f"{ratio:.2f}",
                         f"{(ratio - 1) * 100:+.0f} %"])
        speedup = statistics.median(l / t for l, t in zip(times["local"], times["ray 2 nodes"]))
        result["two_node_speedup"] = speedup
        print(format_table(["mode", "median s", "images/s", "time / local", "overhead"], rows))
        print(f"two nodes (1 CPU each) vs local ({cores} cores): x{speedup:.2f}; {args.images} images "
              f"{args.size}x{args.size}, LIPT-tiny x2, {args.rounds} rounds; load average "
              f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    finally:
        for c in clusters:
            c.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
