"""`lipt-export eval`: PSNR-Y / SSIM-Y of the eager model and of every artifact on an SR benchmark folder."""
from __future__ import annotations

import click

from lipt_export.cli.options import arch_options, check_output_file, parse_runtimes
from lipt_export.fileio import write_json_atomic
from lipt_export.validation.evaluate import format_results, run_eval


@click.command("eval")
@click.option("--model", "-m", default="lipt", show_default=True, help="Model family of the weights/artifacts.")
@click.option("--variant", "-v", default=None, help="Model variant (default: the family's default).")
@click.option("--scale", "-s", default=4, show_default=True, type=int, help="Upscaling factor.")
@click.option("--weights", "-w", default=None, type=click.Path(),
              help="Checkpoint for the eager reference; without it, deterministic demo weights (scores meaningless).")
@click.option("--config", "config_file", default=None, type=click.Path(),
              help="The official config the checkpoint was trained with (see `lipt-export export --help`).")
@click.option("--agileir-attention", default="auto", show_default=True,
              type=click.Choice(["auto", "public", "intended"]), help="AgileIR attention semantics (see export).")
@click.option("--dataset", "-d", required=True, type=click.Path(),
              help="Folder with HR/ and optionally LR_bicubic/X{scale}/ (else LR is made with MATLAB-style imresize).")
@click.option("--lr-dir", default=None, type=click.Path(), help="LR folder instead of DATASET/LR_bicubic/X{scale}.")
@click.option("--artifact", "-a", "artifacts", multiple=True, type=click.Path(),
              help="Export directory, manifest.json or .onnx (repeatable); a directory expands to all its ONNX files.")
@click.option("--no-eager", is_flag=True, help="Skip the eager PyTorch reference.")
@click.option("--tile", default=None, type=int,
              help="LR tile size (0 = whole images). Default: the model's recommended tile when it requires tiling "
                   "(ESRT), else 512 (bounded memory; smaller images run whole). Eager and artifacts tile alike.")
@click.option("--parity-extras", is_flag=True,
              help="Also compute model-specific parity figures on the dataset (SMSR: spatial-mask flips).")
@click.option("--limit", default=None, type=click.IntRange(min=1), help="Only the first N images (sorted by name).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the demo weights.")
@click.option("--runtimes", default="onnxruntime", show_default=True,
              help="Comma-separated CPU runtimes for the ONNX artifacts (onnxruntime, openvino-f32, openvino-bf16): "
                   "one row per artifact and runtime.")
@click.option("--json", "json_path", default=None, type=click.Path(), help="Write the results as JSON here.")
def command(model, variant, scale, weights, config_file, agileir_attention, dataset, lr_dir, artifacts, no_eager,
            tile, parity_extras, limit, seed, runtimes, json_path):
    """PSNR-Y/SSIM-Y of the eager model and of each artifact on an SR benchmark folder."""
    if json_path:
        check_output_file(json_path, "--json")  # before minutes of evaluation, not after
    report = run_eval(model, variant, scale, weights, dataset, lr_dir, artifacts, no_eager, tile, parity_extras,
                      limit, seed, config_file=config_file, options=arch_options(model, agileir_attention),
                      runtimes=parse_runtimes(runtimes))
    for note in report["notes"]:
        click.echo(f"lipt-export: note: {note}", err=True)
    click.echo(format_results(report))
    extra_cols = [r for r in report["results"] if "mask_flips" in r]
    for r in extra_cols:
        click.echo(f"  {r['artifact']}: spatial-mask flips vs eager {r['mask_flips']} of {r['mask_pixels']} pixels")
    if json_path:
        write_json_atomic(json_path, report)
        click.echo(f"results: {json_path}")
