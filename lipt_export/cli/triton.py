"""`lipt-export triton`: a Triton model repository entry for an export."""
from __future__ import annotations

from pathlib import Path

import click

from lipt_export.catalog import PRECISIONS
from lipt_export.cli.options import parse_int_list
from lipt_export.errors import UsageError
from lipt_export.engines.kserve import check_kserve_options, check_replaceable_manifest, write_inference_service
from lipt_export.engines.triton import write_triton_model


@click.command("triton")
@click.argument("export_dir", type=click.Path())
@click.option("--repo", required=True, type=click.Path(), help="Triton model repository root.")
@click.option("--name", default=None, help="Model name (default <model>-<variant>-x<scale>).")
@click.option("--max-batch", default=1, show_default=True, type=int,
              help="max_batch_size (0 = no batching; dims then include the batch).")
@click.option("--instances", default=1, show_default=True, type=int, help="Instances (instance_group count).")
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(PRECISIONS))
@click.option("--format", "fmt", default="auto", show_default=True, type=click.Choice(["auto", "onnx", "tensorrt"]),
              help="auto = a datacenter TensorRT plan when the export has one (Triton's TensorRT backend cannot load "
                   "TensorRT-RTX plans), else ONNX.")
@click.option("--kind", default="auto", show_default=True, type=click.Choice(["auto", "gpu", "cpu"]),
              help="Instance kind (auto: GPU for plans, KIND_AUTO for ONNX).")
@click.option("--dynamic-batching", is_flag=True, help="Enable dynamic batching (only merges identical shapes: "
              "use with fixed-size tiles).")
@click.option("--preferred-batch", default=None, help="Preferred batch sizes, e.g. 4,8.")
@click.option("--max-queue-delay-us", default=100, show_default=True, type=int)
@click.option("--threads", default=None, type=int, help="ONNX Runtime intra-op threads per instance "
              "(intra_op_thread_count; 0 or unset: ONNX Runtime's default).")
@click.option("--tiled", is_flag=True, help="Also write NAME_tiled: a BLS model (Python backend) that serves any "
              "image size by tiling with the export's tiling policy.")
@click.option("--tile", default=None, type=int, help="LR tile of the tiled model [default: the export's "
              "recommended tile].")
@click.option("--overlap", default=None, type=int, help="Tile overlap [default: the export's tiling policy].")
@click.option("--kserve", "kserve_name", default=None, metavar="NAME",
              help="Also write NAME.inferenceservice.yaml beside REPO: a KServe InferenceService serving the repository "
                   "on the kserve-tritonserver runtime (docs/serving.md, KServe).")
@click.option("--storage-uri", default=None, help="--kserve: where the repository is uploaded (s3://, gs://, pvc://, "
              "https://) [default: a placeholder to edit].")
@click.option("--min-replicas", default=1, show_default=True, type=int, help="--kserve: minReplicas (0: scale to zero).")
@click.option("--max-replicas", default=None, type=int, help="--kserve: maxReplicas [default: KServe's].")
@click.option("--force", is_flag=True, help="Replace an existing model of the same name (and a manifest this tool "
              "wrote).")
def command(export_dir, repo, name, max_batch, instances, precision, fmt, kind, dynamic_batching, preferred_batch,
            max_queue_delay_us, threads, tiled, tile, overlap, kserve_name, storage_uri, min_replicas, max_replicas,
            force):
    """Write a Triton model repository entry (config.pbtxt + model) for EXPORT_DIR."""
    if kserve_name is not None:
        check_kserve_options(kserve_name, min_replicas, max_replicas)  # before anything is written
        check_replaceable_manifest(Path(repo), kserve_name, force)
    elif storage_uri is not None or min_replicas != 1 or max_replicas is not None:
        raise UsageError("--storage-uri, --min-replicas and --max-replicas go with --kserve NAME")
    res = write_triton_model(export_dir, repo, name=name, max_batch=max_batch, instances=instances,
                             precision=precision, fmt=fmt, kind=kind, dynamic_batching=dynamic_batching,
                             preferred_batch=parse_int_list(preferred_batch), max_queue_delay_us=max_queue_delay_us,
                             threads=threads, tiled=tiled, tile=tile, overlap=overlap, force=force)
    for line in res["warnings"]:
        click.echo(f"lipt-export: warning: {line}", err=True)
    click.echo(f"wrote {res['config']}")
    click.echo(f"wrote {res['model']}  ({res['platform']}, from {res['entry']['path']})")
    if res["entry"]["format"] == "tensorrt":
        click.echo(f"note: the plan was built with {res['runtime']} on {res['engine'].gpu}; the Triton "
                   f"container must ship the same TensorRT version and GPU architecture")
    if tiled:
        t = res["tiled"]
        click.echo(f"wrote {t['config']}  (BLS: tile {t['tile']}, overlap {t['overlap']}, through {res['name']})")
    click.echo(f"serve: tritonserver --model-repository={Path(repo).resolve()}")
    if kserve_name is not None:
        k = write_inference_service(Path(repo), kserve_name, storage_uri, min_replicas, max_replicas, force)
        click.echo(f"wrote {k['path']}  (KServe InferenceService: modelFormat {k['format']}, runtime kserve-tritonserver, "
                   f"{'1 GPU' if k['gpu'] else 'CPU'} per replica)")
        if not k["storage_uri_set"]:
            click.echo(f"lipt-export: warning: storageUri is a placeholder: upload {Path(repo).resolve()} and pass "
                       f"--storage-uri (or edit {k['path'].name})", err=True)
        click.echo(f"deploy: kubectl apply -f {k['path']}")
