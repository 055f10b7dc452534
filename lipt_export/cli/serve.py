"""`lipt-export serve`: a real Triton Inference Server for an export (and `--setup` for its environment)."""
from __future__ import annotations

import shutil
import signal
import tempfile
import time
from pathlib import Path

import click

from lipt_export.catalog import PRECISIONS
from lipt_export.engines.triton import write_triton_model
from lipt_export.engines.triton_client import curl_example, example_request
from lipt_export.engines.triton_server import (DEFAULT_PORT, SHM_STEM, TritonServer, check_port,
                                               default_server_env, default_server_threads, open_server_env,
                                               prepare_backends, remove_dead_servers_leftovers, setup_server_env)
from lipt_export.errors import TritonError, UsageError
from lipt_export.fileio import temp_prefix
from lipt_export.manifest import read_manifest


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


@click.command("serve")
@click.argument("export_dir", required=False, type=click.Path())
@click.option("--setup", is_flag=True, help="Create or update the server's own venv (nvidia-pytriton, numpy<2, "
              "onnxruntime) and exit, or go on to serve EXPORT_DIR when given. Idempotent.")
@click.option("--server-env", type=click.Path(), default=None,
              help="Where the server venv lives [default: $LIPT_EXPORT_SERVER_ENV or ~/.cache/lipt-export/"
                   "triton-server].")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=int,
              help="HTTP port; gRPC on PORT+1, metrics on PORT+2.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: all).")
@click.option("--name", default=None, help="Model name (default <model>-<variant>-x<scale>).")
@click.option("--tiled/--no-tiled", default=True, show_default=True,
              help="Also serve NAME_tiled: any image size, cut into tiles inside the server.")
@click.option("--tile", default=None, type=int, help="LR tile of the tiled model [default: the export's "
              "recommended tile].")
@click.option("--overlap", default=None, type=int, help="Tile overlap [default: the export's tiling policy].")
@click.option("--instances", default=1, show_default=True, type=int, help="Instances of the model.")
@click.option("--dynamic-batching", is_flag=True, help="Merge concurrent same-shape requests into batches.")
@click.option("--max-batch", default=None, type=int, help="max_batch_size [default: 8 with --dynamic-batching, "
              "else 1].")
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(PRECISIONS),
              help="Which ONNX artifact of the export to serve.")
@click.option("--threads", default=None, type=int, help="ONNX Runtime intra-op threads per instance "
              "[default: the cores divided among the instances; 0: ONNX Runtime's own default].")
@click.option("--timeout", default=120.0, show_default=True, type=float, help="Seconds to wait for readiness.")
def command(export_dir, setup, server_env, port, host, name, tiled, tile, overlap, instances, dynamic_batching,
            max_batch, precision, threads, timeout):
    """Serve EXPORT_DIR on a real Triton Inference Server until Ctrl-C or SIGTERM."""
    env_root = Path(server_env).expanduser() if server_env else default_server_env()
    if setup:
        t0 = time.perf_counter()
        env, changed = setup_server_env(env_root)
        verb = "set up" if changed else "up to date"
        click.echo(f"server environment {verb}: {env.root} ({_dir_size(env.root) / 2**20:.0f} MiB, "
                   f"{time.perf_counter() - t0:.1f} s)")
        click.echo(f"tritonserver: {env.tritonserver}")
        if export_dir is None:
            return
    elif export_dir is None:
        raise UsageError("give an EXPORT_DIR to serve, or --setup to prepare the server environment")
    check_port(port)  # cheap checks before the export is read
    if instances < 1:
        raise UsageError(f"--instances must be >= 1, got {instances}")
    max_batch = (8 if dynamic_batching else 1) if max_batch is None else max_batch
    threads = default_server_threads(instances) if threads is None else threads
    read_manifest(Path(export_dir))  # a missing or untrusted export fails before anything starts
    env = open_server_env(env_root)

    def on_signal(signum, frame):  # SIGTERM unwinds start-up or serving like Ctrl-C, into the clean-up below
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    remove_dead_servers_leftovers()  # a killed serve's work folder and shared memory (only when its owner is dead)
    work = Path(tempfile.mkdtemp(prefix=temp_prefix(SHM_STEM)))
    server = None
    try:
        repo = work / "repo"
        plain = write_triton_model(export_dir, repo, name=name, max_batch=max_batch, instances=instances,
                                   precision=precision, fmt="onnx", kind="cpu", dynamic_batching=dynamic_batching,
                                   threads=threads, tiled=tiled, tile=tile, overlap=overlap)
        for line in plain["warnings"]:
            click.echo(f"lipt-export: warning: {line}", err=True)
        models = [plain["name"]] + ([plain["tiled"]["name"]] if tiled else [])
        backends = prepare_backends(env, work / "backends")
        server = TritonServer(env, repo, backends, host=host, port=port, log_path=work / "tritonserver.log")
        click.echo(f"starting tritonserver ({env.tritonserver.parent.parent.name} from nvidia-pytriton) with "
                   f"{', '.join(models)}")
        click.echo(f"note: {plain['name']} runs on lipt-export's Python-based onnxruntime backend (this server "
                   f"has no libtriton_onnxruntime.so); ONNX Runtime, {threads or 'default'} intra-op thread(s)")
        seconds = server.start(timeout=timeout, models=models)
        click.echo(f"ready in {seconds:.1f} s")
        click.echo(f"  HTTP     {server.http_url}    (KServe v2: /v2/models/<name>/infer)")
        click.echo(f"  gRPC     {server.grpc_address}")
        click.echo(f"  metrics  {server.metrics_url}")
        click.echo(f"  repo     {repo}  (removed on exit; `lipt-export triton --tiled` writes a lasting one)")
        for m in models:
            click.echo(f"  model    {m}  ->  {server.http_url}/v2/models/{m}")
        manifest = plain["manifest"]
        m = max(1, manifest.io.multiple_of)  # a size every model takes as is: no padding in either model
        side = -(-max(8, manifest.io.min_size, m) // m) * m
        request = example_request(work / "request.json", plain["io"]["input"]["name"], side)
        click.echo(f"try (a grey {side}x{side} image, FP32 NCHW in [0, 1], KServe v2 JSON; any model above):")
        click.echo("  " + curl_example(server.http_url, plain["name"], request))
        click.echo("Ctrl-C or SIGTERM stops the server.")
        while server.running():
            time.sleep(0.25)
        raise TritonError(f"tritonserver stopped by itself (code {server.proc.returncode}): {server.log_error()}")
    except KeyboardInterrupt:
        click.echo("stopping tritonserver ...")
    finally:
        for sig in previous:  # a second Ctrl-C must not interrupt the clean-up
            signal.signal(sig, signal.SIG_IGN)
        if server is not None and server.proc is not None:
            took = server.stop()
            click.echo(f"stopped in {took:.1f} s")
        shutil.rmtree(work, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
