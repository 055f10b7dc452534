"""`lipt-export export` (the default command): reparameterize, ONNX, simplify, precision variants, engines,
validate, manifest."""
from __future__ import annotations

import click

from lipt_export.catalog import (CALIB_COUNT, CALIB_METHOD, CALIB_METHODS, CALIB_SIZE, COMPUTE_CAPABILITIES,
                                 DEFAULT_OPSET, DEFAULT_PARITY_SIZES, DEFAULT_SCALE, ENGINE_BATCH, ENGINE_OPT_LEVEL,
                                 ENGINE_WORKSPACE_GIB, EXPORT_BACKENDS, FAMILIES, MAX_PSNR_DROP_DB, OPSETS,
                                 PRECISION_OPSETS, check_choice, check_opset)
from lipt_export.errors import UsageError
from lipt_export.cli.options import arch_options, check_output_file, parse_size, write_models_table
from lipt_export.engines.shapes import check_profile_fits, default_shapes, parse_profile
from lipt_export.fileio import write_json_atomic
from lipt_export.report import format_table



class _ExportCommand(click.Command):
    def format_epilog(self, ctx, formatter):
        write_models_table(formatter)


@click.command("export", cls=_ExportCommand)
@click.option("--model", "-m", default="lipt", show_default=True, help="Model family (see list below).")
@click.option("--variant", "-v", default=None, help="Model variant (default: the family's default).")
@click.option("--scale", "-s", default=DEFAULT_SCALE, show_default=True, type=int, help="Upscaling factor (1 = restoration).")
@click.option("--weights", "-w", default=None, type=click.Path(), help="Checkpoint (.pt/.pth/.safetensors), "
              "train or deploy form; its architecture (blocks, channels, heads, scale, ...) is read from it. Without "
              "it, deterministic demo weights are exported (pipeline checks only).")
@click.option("--config", "config_file", default=None, type=click.Path(),
              help="The official config the checkpoint was trained with (LIPT config/*.yml, AgileIR KAIR options "
                   "*.json): sets what weights cannot tell (e.g. LIPT's window).")
@click.option("--agileir-attention", default="auto", show_default=True,
              type=click.Choice(["auto", "public", "intended"]),
              help="AgileIR: auto = public-code semantics when the checkpoint's attention-output BatchNorms are all "
                   "zero (trained with the public code), else the paper's attention.")
@click.option("--out", "-o", default="exports", show_default=True, help="Output root; artifacts go to OUT/<model>-<variant>-x<scale>/.")
@click.option("--name", default=None, help="Output folder name instead of <model>-<variant>-x<scale>.")
@click.option("--overwrite", is_flag=True, help="Replace an existing export folder of the same name (atomically: "
              "the old one stays until the new one is complete). Without it an existing folder is an error.")
@click.option("--opset", default=DEFAULT_OPSET, show_default=True, type=int,
              help=f"ONNX opset ({OPSETS['torchscript'][0]}..{OPSETS['torchscript'][1]}; with --dynamo "
                   f"{OPSETS['dynamo'][0]}..{OPSETS['dynamo'][1]}).")
@click.option("--dynamo/--torchscript", default=False, show_default=True, help="ONNX exporter.")
@click.option("--simplify", "simplifier", default="auto", show_default=True,
              type=click.Choice(["auto", "onnxsim", "onnxslim"]), help="auto = onnxsim, onnxslim fallback.")
@click.option("--no-simplify", is_flag=True, help="Skip graph simplification.")
@click.option("--fp16", is_flag=True, help="Also produce an FP16 ONNX (FP32 islands where activations overflow).")
@click.option("--fp16-io", is_flag=True, help="Make the FP16 model's input/output float16 too.")
@click.option("--int8", is_flag=True, help="Also produce an INT8 explicit Q/DQ ONNX (needs --calib).")
@click.option("--bf16", is_flag=True, help=f"Also produce a BF16 ONNX (opset {PRECISION_OPSETS['bf16']}; FP32 islands "
              "measured on held-out pairs: --calib when given, else synthetic). Engines only for compute capability "
              ">= 8.0.")
@click.option("--fp8", is_flag=True, help=f"Also produce an FP8 E4M3 explicit Q/DQ ONNX (opset "
              f"{PRECISION_OPSETS['fp8']}; needs --calib; INT8's fallback and --max-psnr-drop). Engines only for "
              "compute capability >= 8.9.")
@click.option("--precision", "precision_mode", default=None, type=click.Choice(["auto"]),
              help="auto: export fp16, bf16, int8 and fp8, measure each one's PSNR-Y drop against fp32 on the "
                   "held-out --calib images, and build per target (--compute-capabilities) the cheapest within "
                   "--max-psnr-drop (FP8 > INT8 > FP16 > BF16 > FP32). Needs --calib.")
@click.option("--calib", default=None, type=click.Path(), help="Folder of representative HR images (LR with --calib-lr).")
@click.option("--calib-lr", is_flag=True, help="--calib images are already LR inputs.")
@click.option("--calib-count", default=CALIB_COUNT, show_default=True, type=int, help="Calibration patches.")
@click.option("--calib-size", default=CALIB_SIZE, show_default=True, type=int, help="LR calibration patch size.")
@click.option("--calib-method", default=CALIB_METHOD, show_default=True, type=click.Choice(CALIB_METHODS))
@click.option("--max-psnr-drop", default=MAX_PSNR_DROP_DB, show_default=True, type=float,
              help="INT8/FP8 budget (and --precision auto's): PSNR-Y drop vs FP32 (dB) on held-out images before nodes "
                   "fall back to float.")
@click.option("--backend", default="auto", show_default=True, type=click.Choice(EXPORT_BACKENDS),
              help="Engines: tensorrt = TensorRT for this machine's GPU; tensorrt-rtx = TensorRT-RTX ahead of time "
                   "for --compute-capabilities (no GPU needed); auto = TensorRT with a GPU, else TensorRT-RTX when "
                   "installed, else ONNX only; onnxruntime = ONNX only.")
@click.option("--compute-capabilities", default=",".join(COMPUTE_CAPABILITIES), show_default=True,
              help="TensorRT-RTX targets (RTX 30xx 8.6, RTX 40xx 8.9, RTX 50xx 12.0; also 7.5, 8.0, 12.1).")
@click.option("--shapes", default=None,
              help="TensorRT profile MINxMIN:OPTxOPT:MAXxMAX (LR H x W). Default: from the model's tile policy ("
                   + "; ".join(f"{m} {default_shapes(m)}" for m in sorted(FAMILIES)) + "): ESRT up to its "
                   "tile (attention grows with (H*W)^2), AgileIR static at its tile (TensorRT-RTX builds its "
                   "dynamic range 8x slower); serving tiles/pads inputs to the profile. A MAX that cannot build "
                   "is refused at once with the largest that fits.")
@click.option("--batch", default=ENGINE_BATCH, show_default=True, help="TensorRT batch range MIN:OPT:MAX.")
@click.option("--workspace", default=ENGINE_WORKSPACE_GIB, show_default=True, type=float,
              help="TensorRT workspace (GiB).")
@click.option("--builder-opt-level", default=ENGINE_OPT_LEVEL, show_default=True, type=int)
@click.option("--timing-cache", default=None, type=click.Path(), help="TensorRT timing cache file (reused).")
@click.option("--parity-size", "parity_sizes", multiple=True, help="Parity input size HxW (repeatable; "
              "default " + " and ".join(f"{h}x{w}" for h, w in DEFAULT_PARITY_SIZES) + ").")
@click.option("--parity-images", default=None, type=click.Path(), help="Images for parity inputs "
              "(default: deterministic synthetic images).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--no-lint", is_flag=True, help="Skip the TensorRT-compatibility lint.")
@click.option("--json", "json_path", default=None, type=click.Path(), help="Also write the summary JSON here.")
def command(model, variant, scale, weights, config_file, agileir_attention, out, name, overwrite, opset, dynamo, simplifier,
            no_simplify, fp16, fp16_io, int8, bf16, fp8, precision_mode, calib, calib_lr, calib_count, calib_size, calib_method, max_psnr_drop,
            backend, compute_capabilities, shapes, batch, workspace, builder_opt_level, timing_cache, parity_sizes,
            parity_images, seed, no_lint, json_path):
    """Export a model: reparameterize, ONNX, simplify, precision variants, engines, validate, manifest."""
    check_choice(model, variant, scale)  # seconds before torch is imported
    check_opset(opset, dynamo)
    check_profile_fits(model, scale, parse_profile(shapes or default_shapes(model), batch))
    needs_calib = [flag for flag, on in (("INT8", int8), ("FP8", fp8), ("--precision auto", precision_mode)) if on]
    if needs_calib and not calib:
        raise UsageError(f"{' and '.join(needs_calib)} need{'s' if len(needs_calib) == 1 else ''} representative "
                         f"images: pass --calib DIR (a folder of natural photos like those the model will upscale)")
    if max_psnr_drop <= 0:
        raise UsageError(f"--max-psnr-drop must be a positive number of dB, got {max_psnr_drop:g}")
    if json_path:
        check_output_file(json_path, "--json")  # before minutes of work, not after
    # deferred: torch and the whole pipeline load only once the cheap checks passed
    from lipt_export.engines.tensorrt import EngineOptions, parse_capabilities
    from lipt_export.export.pipeline import ExportConfig, run_export

    sizes = [parse_size(s) for s in parity_sizes] or list(DEFAULT_PARITY_SIZES)
    cfg = ExportConfig(model=model, variant=variant, scale=scale, weights=weights, config=config_file,
                       arch_options=arch_options(model, agileir_attention), out=out, name=name, overwrite=overwrite,
                       opset=opset, dynamo=dynamo, simplify="none" if no_simplify else simplifier,
                       parity_sizes=sizes, parity_images=parity_images, seed=seed, fp16=fp16, fp16_io=fp16_io,
                       int8=int8, bf16=bf16, fp8=fp8, precision=precision_mode or "explicit", calib=calib, calib_lr=calib_lr, calib_count=calib_count, calib_size=calib_size,
                       calib_method=calib_method, max_psnr_drop=max_psnr_drop, backend=backend, lint=not no_lint,
                       engine=EngineOptions(shapes=shapes, batch=batch, workspace_gib=workspace,
                                            builder_opt_level=builder_opt_level, timing_cache=timing_cache,
                                            compute_capabilities=parse_capabilities(compute_capabilities)))
    result = run_export(cfg)
    print_summary(result)
    if json_path:
        write_json_atomic(json_path, result.manifest.to_dict())


def print_summary(result) -> None:
    from lipt_export.export.summary import (ARTIFACT_HEADER, ENGINE_HEADER, engine_rows,  # deferred: as above
                                            flag_lines, summary_rows)

    man = result.manifest
    click.echo("")
    click.echo(f"Exported {man.model.name}-{man.model.variant} x{man.model.scale} -> {result.out_dir}")
    if man.model.weights.get("source") != "checkpoint":
        click.echo("  note: no --weights given; demo weights were exported (pipeline check, not a real model)")
    arch = man.model.get("architecture") or {}
    if arch.get("description"):
        from_ck = sorted(k for k, v in arch["sources"].items() if v == "checkpoint")
        click.echo(f"  architecture: {arch['description']}"
                   + (f" (from the checkpoint: {', '.join(from_ck)})" if from_ck else ""))
    for note in arch.get("notes", []):
        click.echo(f"  note: {note}")
    click.echo(format_table(ARTIFACT_HEADER, summary_rows(man)))
    for line in flag_lines(man):
        click.echo(f"  {line}")
    engines = man.select("tensorrt")
    backend = man.export.get("engines") or {}
    click.echo(f"\nengines: {backend.get('backend', '-')} ({backend.get('why', '')})")
    if engines:
        click.echo(format_table(ENGINE_HEADER, engine_rows(man)))
        pending = [e for e in engines if e.parity_pending]
        if pending:
            engine = pending[0].engine
            caps = sorted({c for e in pending for c in e.engine.compute_capabilities}, key=lambda c: tuple(
                int(v) for v in c.split(".")))
            click.echo(f"  these engines run on GPUs of compute capability {', '.join(caps)} "
                       f"with {engine.label}; check them there with `lipt-export verify {result.out_dir}` (Triton's "
                       f"TensorRT backend cannot load TensorRT-RTX plans: `lipt-export triton` serves the ONNX file)")
    auto_only = [x["precision"] for x in man.engines_skipped if x["why"].startswith("--precision auto")
                 and x["why"].count("--precision auto") == len(x["compute_capabilities"])]
    if auto_only:
        click.echo(f"  no {', '.join(auto_only)} engine: --precision auto builds each target's chosen precision only")
    for skip in man.engines_skipped:
        if skip["precision"] not in auto_only:
            click.echo(f"  no {skip['precision']} engine: {skip['why']}")
    for e in engines:
        for cc, why in e.engine.skipped:
            if not why.startswith("--precision auto"):
                click.echo(f"  {e.path}: not built for {cc}: {why}")
    if any(e.precision == "int8" and e.engine.runtime == "tensorrt-rtx" for e in engines):
        from lipt_export.catalog import RTX_INT8_NOTE  # deferred: as above

        click.echo(f"  int8 engine: {RTX_INT8_NOTE}")
    auto = man.precision_auto
    if auto is not None:
        from lipt_export.export.precision.auto import summary_lines  # deferred: as above

        click.echo("")
        for line in summary_lines(auto):
            click.echo(line)
    for e in man.select("onnx", "int8"):
        speed = e.int8_speed
        if speed:
            verdict = "recommended" if speed.recommended else f"NOT recommended (no faster than {speed.fastest_other})"
            click.echo(f"int8: {verdict} on {speed.runtime} here, {speed.probe_hw[0]}x{speed.probe_hw[1]}: "
                       + ", ".join(f"{k} {v:.1f} ms" for k, v in speed.median_ms.items()))
    for e in man.select("onnx"):
        choice = man.runtime_choice.get(e.precision)
        if choice:
            click.echo(f"cpu runtime: {choice.runtime} for {e.path} (`--runtime auto`: fastest within its "
                       f"accuracy budget here: {choice.summary()})")
            if choice.provisional:
                click.echo(f"  PROVISIONAL: {choice.provisional}")
    left_out = {rt: why for rec in man.runtime_choice.values() for rt, why in rec.left_out}
    for rt, why in left_out.items():
        click.echo(f"  not a candidate: {rt} ({why})")
    click.echo("")
    click.echo(format_table(("stage", "seconds"), [[k, f"{v:.2f}"] for k, v in result.timings.items()]))
    click.echo(f"\nmanifest: {result.out_dir / 'manifest.json'}   report: {result.out_dir / 'report.md'}")
