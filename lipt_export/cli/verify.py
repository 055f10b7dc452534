"""`lipt-export verify DIR`: check an export where it is (sha256, manifest, golden outputs on every runtime here)."""
from __future__ import annotations

import click

from lipt_export.cli.options import check_output_file, parse_runtimes
from lipt_export.fileio import write_json_atomic
from lipt_export.report import format_table
from lipt_export.validation.verify import VERIFY_HEADER, verify_export


@click.command("verify")
@click.argument("export_dir", type=click.Path())
@click.option("--require-all", is_flag=True, help="Also fail when an artifact cannot run here (e.g. an engine "
              "without a matching GPU).")
@click.option("--threads", default=None, type=int, help="ONNX Runtime intra-op threads.")
@click.option("--runtimes", default=None, help="Comma-separated CPU runtimes for the ONNX artifacts: onnxruntime, "
              "openvino-f32, openvino-bf16 [default: onnxruntime, where the export measured its gates].")
@click.option("--json", "json_path", default=None, type=click.Path(), help="Also write the rows as JSON here.")
def command(export_dir, require_all, threads, runtimes, json_path):
    """Verify EXPORT_DIR: every artifact's sha256, then every artifact this machine can run against the golden
    outputs stored at export (exit 1 on any failure; with --require-all also on anything skipped)."""
    if json_path:
        check_output_file(json_path, "--json")
    rows = verify_export(export_dir, threads=threads, runtimes=parse_runtimes(runtimes))
    click.echo(format_table(VERIFY_HEADER, [r.cells() for r in rows]))
    failed = [r for r in rows if r.status == "fail"]
    skipped = [r for r in rows if r.status == "skipped"]
    measured = [r for r in rows if r.status == "measured"]
    click.echo(f"\n{len(rows) - len(failed) - len(skipped) - len(measured)} passed, {len(failed)} failed, "
               f"{len(skipped)} skipped" + (f", {len(measured)} measured (no gate)" if measured else ""))
    if json_path:
        write_json_atomic(json_path, {"export": str(export_dir), "rows": [r.as_dict() for r in rows]})
    if failed or (require_all and skipped):
        raise SystemExit(1)
