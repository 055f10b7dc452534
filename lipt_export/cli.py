"""Command line: `lipt-export [export options]` exports; sub-commands hang off the same group.

Sub-commands are loaded lazily (module:attribute below) so `lipt-export --help` stays fast and a
command's heavy imports are only paid when it runs.
"""
from __future__ import annotations

import importlib
import os
import sys

# Torch and ONNX Runtime both keep OpenMP threads spinning between ops; on small CPU boxes (and with both
# runtimes in one process) that spinning starves the other pool. Passive waiting is set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from typing import List, Optional, Tuple

import click

LAZY_COMMANDS = {
    "eval": ("lipt_export.evaluate", "eval_command"),
    "upscale": ("lipt_export.upscale", "upscale_command"),
    "lint": ("lipt_export.export.lint", "lint_command"),
    "triton": ("lipt_export.engines.triton", "triton_command"),
    "bench": ("lipt_export.bench", "bench_command"),
}

USER_ERRORS: Tuple[type, ...] = (ValueError, FileNotFoundError, RuntimeError, OSError)


class DefaultGroup(click.Group):
    """A group whose default command is `export`: `lipt-export --model lipt --fp16` works as is."""

    default_command = "export"

    def parse_args(self, ctx, args):
        if not args or (args[0] not in self.list_commands(ctx) and args[0] not in ("--help", "-h", "--version")):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)

    def list_commands(self, ctx):
        import importlib.util

        lazy = [n for n, (mod, _) in LAZY_COMMANDS.items() if importlib.util.find_spec(mod) is not None]
        return sorted(set(super().list_commands(ctx)) | set(lazy))

    def get_command(self, ctx, name):
        cmd = super().get_command(ctx, name)
        if cmd is None and name in LAZY_COMMANDS:
            mod, attr = LAZY_COMMANDS[name]
            try:
                cmd = getattr(importlib.import_module(mod), attr)
            except (ImportError, AttributeError):
                return None
        return cmd


def _models_epilog() -> str:
    from lipt_export.models.registry import available_models

    lines = ["Models (variants; scales):"]
    for name, spec in sorted(available_models().items()):
        lines.append(f"  {name:8s} {', '.join(spec.variants)}; x{', x'.join(map(str, spec.scales))}"
                     f"  (default variant {spec.default_variant})")
    return "\n".join(lines)


def _parse_size(text: str) -> Tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"'{text}' is not HxW (e.g. 37x51)") from None
    if h < 1 or w < 1:
        raise click.BadParameter(f"'{text}': sizes must be positive")
    return h, w


def fail(message: str) -> None:
    """One line on stderr, non-zero exit."""
    click.echo(f"lipt-export: error: {message}", err=True)
    sys.exit(2)


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lipt-export")
def main():
    """Turn an SR/restoration checkpoint into verified, reparameterized ONNX (FP32/FP16/INT8) and
    TensorRT artifacts with a manifest. Without a sub-command, exports (see `lipt-export export --help`)."""


class _ExportCommand(click.Command):
    def format_epilog(self, ctx, formatter):
        formatter.write("\n")
        for line in _models_epilog().splitlines():
            formatter.write(line + "\n")


@main.command("export", cls=_ExportCommand)
@click.option("--model", "-m", default="lipt", show_default=True, help="Model family (see list below).")
@click.option("--variant", "-v", default=None, help="Model variant (default: the family's default).")
@click.option("--scale", "-s", default=4, show_default=True, type=int, help="Upscaling factor (1 = restoration).")
@click.option("--weights", "-w", default=None, type=click.Path(), help="Checkpoint (.pt/.pth/.safetensors), "
              "train or deploy form. Without it, deterministic demo weights are exported (pipeline checks only).")
@click.option("--out", "-o", default="exports", show_default=True, help="Output root; artifacts go to OUT/<model>-<variant>-x<scale>/.")
@click.option("--name", default=None, help="Output folder name instead of <model>-<variant>-x<scale>.")
@click.option("--opset", default=17, show_default=True, type=int)
@click.option("--dynamo/--torchscript", default=False, show_default=True, help="ONNX exporter.")
@click.option("--simplify", "simplifier", default="auto", show_default=True,
              type=click.Choice(["auto", "onnxsim", "onnxslim"]), help="auto = onnxsim, onnxslim fallback.")
@click.option("--no-simplify", is_flag=True, help="Skip graph simplification.")
@click.option("--fp16", is_flag=True, help="Also produce an FP16 ONNX (FP32 islands where activations overflow).")
@click.option("--fp16-io", is_flag=True, help="Make the FP16 model's input/output float16 too.")
@click.option("--int8", is_flag=True, help="Also produce an INT8 explicit Q/DQ ONNX (needs --calib).")
@click.option("--calib", default=None, type=click.Path(), help="Folder of representative HR images (LR with --calib-lr).")
@click.option("--calib-lr", is_flag=True, help="--calib images are already LR inputs.")
@click.option("--calib-count", default=32, show_default=True, type=int, help="Calibration patches.")
@click.option("--calib-size", default=64, show_default=True, type=int, help="LR calibration patch size.")
@click.option("--calib-method", default="minmax", show_default=True,
              type=click.Choice(["minmax", "entropy", "percentile"]))
@click.option("--max-psnr-drop", default=0.10, show_default=True, type=float,
              help="INT8 budget: PSNR-Y drop vs FP32 (dB) on held-out images before nodes fall back to float.")
@click.option("--backend", default="onnxruntime", show_default=True,
              type=click.Choice(["onnxruntime", "tensorrt", "auto"]),
              help="auto = TensorRT engines when TensorRT and a GPU exist, else ONNX Runtime only.")
@click.option("--shapes", default="32x32:256x256:512x512", show_default=True,
              help="TensorRT profile MINxMIN:OPTxOPT:MAXxMAX (LR H x W).")
@click.option("--batch", default="1:1:1", show_default=True, help="TensorRT batch range MIN:OPT:MAX.")
@click.option("--workspace", default=4.0, show_default=True, type=float, help="TensorRT workspace (GiB).")
@click.option("--builder-opt-level", default=3, show_default=True, type=int)
@click.option("--timing-cache", default=None, type=click.Path(), help="TensorRT timing cache file (reused).")
@click.option("--parity-size", "parity_sizes", multiple=True, help="Parity input size HxW (repeatable; "
              "default 64x64 and 37x51).")
@click.option("--parity-images", default=None, type=click.Path(), help="Images for parity inputs "
              "(default: ../shared calibration images when present, else synthetic).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--no-lint", is_flag=True, help="Skip the TensorRT-compatibility lint.")
@click.option("--json", "json_path", default=None, type=click.Path(), help="Also write the summary JSON here.")
def export_command(model, variant, scale, weights, out, name, opset, dynamo, simplifier, no_simplify, fp16,
                   fp16_io, int8, calib, calib_lr, calib_count, calib_size, calib_method, max_psnr_drop, backend,
                   shapes, batch, workspace, builder_opt_level, timing_cache, parity_sizes, parity_images, seed,
                   no_lint, json_path):
    """Export a model: reparameterize, ONNX, simplify, precision variants, engines, validate, manifest."""
    from lipt_export.export.pipeline import DEFAULT_PARITY_SIZES, ExportConfig, run_export

    sizes = [_parse_size(s) for s in parity_sizes] or list(DEFAULT_PARITY_SIZES)
    if len(sizes) < 2:
        fail("parity needs at least two --parity-size values (one not a multiple of the window), e.g. "
             "--parity-size 64x64 --parity-size 37x51")
    cfg = ExportConfig(model=model, variant=variant, scale=scale, weights=weights, out=out, name=name,
                       opset=opset, dynamo=dynamo, simplify="none" if no_simplify else simplifier,
                       parity_sizes=sizes, parity_images=parity_images, seed=seed, fp16=fp16 or fp16_io,
                       fp16_io=fp16_io, int8=int8, calib=calib, calib_lr=calib_lr, calib_count=calib_count,
                       calib_size=calib_size, calib_method=calib_method, max_psnr_drop=max_psnr_drop,
                       backend=backend, lint=not no_lint,
                       engine_options={"shapes": shapes, "batch": batch, "workspace_gib": workspace,
                                       "builder_opt_level": builder_opt_level, "timing_cache": timing_cache})
    try:
        result = run_export(cfg)
    except USER_ERRORS as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    print_summary(result)
    if json_path:
        from lipt_export.manifest import write_json_atomic

        write_json_atomic(json_path, result.manifest)


def print_summary(result) -> None:
    from lipt_export.export.pipeline import ARTIFACT_HEADER, format_table, summary_rows

    man = result.manifest
    click.echo("")
    click.echo(f"Exported {man['model']['name']}-{man['model']['variant']} x{man['model']['scale']} -> "
               f"{result.out_dir}")
    if man["model"]["weights"]["source"] != "checkpoint":
        click.echo("  note: no --weights given; demo weights were exported (pipeline check, not a real model)")
    click.echo(format_table(ARTIFACT_HEADER, summary_rows(man)))
    click.echo("")
    click.echo(format_table(("stage", "seconds"), [[k, f"{v:.2f}"] for k, v in result.timings.items()]))
    click.echo(f"\nmanifest: {result.out_dir / 'manifest.json'}   report: {result.out_dir / 'report.md'}")


if __name__ == "__main__":  # pragma: no cover
    main()
