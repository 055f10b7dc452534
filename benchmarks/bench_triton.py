"""Load on a real Triton server (127.0.0.1 only): requests/s and p50/p95 latency for the plain model, the same
model with 2 ONNX Runtime threads, 2 instances of 1 thread, dynamic batching, and the tiled BLS model.

One server holds every variant (written by the real `lipt-export triton`), so the variants are interleaved
within each round: round r runs N/R requests from K concurrent clients against each variant in turn, in a
rotated order. Throughput is the median over rounds; latencies are pooled. Requests use Triton's binary
tensor extension. Default artifact: a fresh LIPT-tiny x2 export (demo weights); needs `lipt-export serve --setup`.

    .venv/bin/python benchmarks/bench_triton.py                          # 200 requests, 4 clients, 64x64
    .venv/bin/python benchmarks/bench_triton.py --requests 400 --clients 8 --size 64 --tiled-size 256

Results: a table on stdout and benchmarks/results/triton.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lipt_export.cli import main as cli_main  # noqa: E402
from lipt_export.engines.triton_client import TritonHttpClient  # noqa: E402
from lipt_export.engines.triton_server import (TritonServer, free_port_block, open_server_env,  # noqa: E402
                                               prepare_backends)
from lipt_export.report import format_table  # noqa: E402


def write_repo(export_dir: Path, repo: Path, tile: int) -> dict:
    variants = {"plain_t1": ["--threads", "1"], "plain_t2": ["--threads", "2"],
                "inst2_t1": ["--threads", "1", "--instances", "2"],
                "dynbatch_t1": ["--threads", "1", "--max-batch", "8", "--dynamic-batching",
                                "--max-queue-delay-us", "2000"],
                "tiledsrc": ["--threads", "1", "--tiled", "--tile", str(tile)]}
    for name, extra in variants.items():
        try:
            cli_main(["triton", str(export_dir), "--repo", str(repo), "--name", name, *extra],
                     standalone_mode=False)
        except SystemExit as exc:
            if exc.code:
                raise
    return variants


def load(client: TritonHttpClient, model: str, x: np.ndarray, n: int, clients: int):
    """(seconds, latencies) of n requests spread over `clients` threads."""
    latencies, errors = [], []
    lock = threading.Lock()
    counter = iter(range(n))

    def worker():
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            t0 = time.perf_counter()
            try:
                client.infer(model, {"lr": x}, ["sr"])
            except Exception as exc:  # reported after the run
                errors.append(exc)
                return
            with lock:
                latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"{model}: {errors[0]}")
    return time.perf_counter() - t0, latencies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", default=None, help="export directory (default: a fresh LIPT-tiny x2 export)")
    ap.add_argument("--requests", type=int, default=200, help="requests per variant (split over the rounds)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", type=int, default=64, help="LR side of the plain requests")
    ap.add_argument("--tiled-size", type=int, default=160, help="LR side of the tiled model's requests")
    ap.add_argument("--tiled-requests", type=int, default=20, help="requests to the tiled model (each is many tiles)")
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "triton.json"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-triton-"))
    export_dir = Path(args.export) if args.export else None
    if export_dir is None:
        from lipt_export.export.pipeline import ExportConfig, run_export

        export_dir = Path(run_export(ExportConfig(model="lipt", variant="tiny", scale=2, out=str(work / "exports"),
                                                  backend="onnxruntime")).out_dir)
    write_repo(export_dir, work / "repo", args.tile)
    env = open_server_env()
    server = TritonServer(env, work / "repo", prepare_backends(env, work / "backends"), port=free_port_block(),
                          log_path=work / "tritonserver.log")
    ready_s = server.start(models=["plain_t1", "plain_t2", "inst2_t1", "dynbatch_t1", "tiledsrc", "tiledsrc_tiled"])
    client = TritonHttpClient(server.http_url, server.metrics_url)
    rng = np.random.default_rng(0)
    small = rng.random((1, 3, args.size, args.size), dtype=np.float32)
    big = rng.random((1, 3, args.tiled_size, args.tiled_size), dtype=np.float32)
    runs = {"plain, 1 thread": ("plain_t1", small), "plain, 2 threads": ("plain_t2", small),
            "2 instances, 1 thread each": ("inst2_t1", small),
            "dynamic batching (max 8), 1 thread": ("dynbatch_t1", small),
            f"tiled BLS, tile {args.tile}": ("tiledsrc_tiled", big)}
    per_round = {k: max(1, (args.tiled_requests if m.endswith("_tiled") else args.requests) // args.rounds)
                 for k, (m, _) in runs.items()}
    throughput = {k: [] for k in runs}
    latencies = {k: [] for k in runs}
    try:
        for key, (model, x) in runs.items():  # warm-up, excluded
            load(client, model, x, min(args.clients, per_round[key]), args.clients)
        before = client.metrics()
        for r in range(args.rounds):
            keys = list(runs)
            keys = keys[r % len(keys):] + keys[:r % len(keys)]
            for key in keys:
                model, x = runs[key]
                seconds, lat = load(client, model, x, per_round[key], args.clients)
                throughput[key].append(per_round[key] / seconds)
                latencies[key] += lat
        after = client.metrics()
    finally:
        stop_s = server.stop()
    rows, results = [], []
    for key, (model, x) in runs.items():
        lat = sorted(latencies[key])
        m_after, m_before = after.get(model, {}), before.get(model, {})
        count = m_after.get("nv_inference_count", 0) - m_before.get("nv_inference_count", 0)
        execs = m_after.get("nv_inference_exec_count", 0) - m_before.get("nv_inference_exec_count", 0)
        res = {"variant": key, "model": model, "lr": list(x.shape[2:]), "requests": len(lat),
               "req_per_s": statistics.median(throughput[key]),
               "p50_ms": 1000 * lat[len(lat) // 2], "p95_ms": 1000 * lat[min(len(lat) - 1, int(0.95 * len(lat)))],
               "avg_batch": count / execs if execs else None}
        results.append(res)
        rows.append([key, "x".join(map(str, x.shape[2:])), res["requests"], f"{res['req_per_s']:.2f}",
                     f"{res['p50_ms']:.0f}", f"{res['p95_ms']:.0f}",
                     f"{res['avg_batch']:.2f}" if res["avg_batch"] else "-"])
    print(format_table(["variant", "LR", "requests", "req/s (median of rounds)", "p50 ms", "p95 ms",
                        "avg batch"], rows))
    load_avg = os.getloadavg()
    print(f"\n{args.clients} clients, {args.rounds} interleaved rounds; server ready in {ready_s:.1f} s, stopped in "
          f"{stop_s:.1f} s; load average {load_avg[0]:.2f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "clients": args.clients,
                                           "rounds": args.rounds, "ready_s": ready_s, "stop_s": stop_s,
                                           "load_avg": load_avg, "results": results}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
