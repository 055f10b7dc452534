"""`lipt-export lint`: TensorRT-compatibility lint of ONNX models."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import click

from lipt_export.cli.options import check_output_file
from lipt_export.errors import UsageError
from lipt_export.export.lint import lint_onnx
from lipt_export.fileio import write_json_atomic


@click.command("lint")
@click.argument("models", nargs=-1, required=True, type=click.Path())
@click.option("--json", "json_path", default=None, type=click.Path(), help="Write the reports as JSON here.")
def command(models: Sequence[str], json_path: Optional[str]):
    """TensorRT-compatibility lint of ONNX models (exit 1 on any error). An export directory lints
    every .onnx file in it."""
    if json_path:
        check_output_file(json_path, "--json")
    paths: List[Path] = []
    for m in models:
        p = Path(m)
        if p.is_dir():
            found = sorted(p.glob("*.onnx"))
            if not found:
                raise UsageError(f"'{p}' has no .onnx files; pass an ONNX model or an export directory")
            paths += found
        elif not p.is_file():
            raise UsageError(f"'{p}' does not exist; pass an ONNX model (e.g. exports/lipt-small-x4/model.onnx)")
        else:
            paths.append(p)
    reports = [lint_onnx(p) for p in paths]
    for r in reports:
        click.echo(r.table())
    if json_path:
        write_json_atomic(json_path, {r.path: r.summary() for r in reports})
    if any(r.errors for r in reports):
        raise SystemExit(1)
