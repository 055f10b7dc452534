"""`lipt-export verify DIR`: check an export where it is (sha256, manifest, golden outputs on every runtime here)."""
from __future__ import annotations

import click

from lipt_export.fileio import write_json_atomic
from lipt_export.report import format_table
from lipt_export.validation.verify import VERIFY_HEADER, verify_export


@click.command("verify")
@click.argument("export_dir", type=click.Path())
@click.option("--require-all", is_flag=True, help="Also fail when an artifact cannot run here (e.g. an engine "
              "without a matching GPU).")
@click.option("--threads", default=None, type=int, help="ONNX Runtime intra-op threads.")
@click.option("--json", "json_path", default=None, type=click.Path(), help="Also write the rows as JSON here.")
def command(export_dir, require_all, threads, json_path):
    """Verify EXPORT_DIR: every artifact's sha256, then every artifact this machine can run against the golden
    outputs stored at export (exit 1 on any failure; with --require-all also on anything skipped)."""
    rows = verify_export(export_dir, threads=threads)
    click.echo(format_table(VERIFY_HEADER, [r.cells() for r in rows]))
    failed = [r for r in rows if r.status == "fail"]
    skipped = [r for r in rows if r.status == "skipped"]
    click.echo(f"\n{len(rows) - len(failed) - len(skipped)} passed, {len(failed)} failed, {len(skipped)} skipped")
    if json_path:
        write_json_atomic(json_path, {"export": str(export_dir), "rows": [r.as_dict() for r in rows]})
    if failed or (require_all and skipped):
        raise SystemExit(1)
