"""Command line: `lipt-export [export options]` exports; sub-commands hang off the same group.

Every command module lives in this package and is loaded when used (``COMMANDS`` below), so a command's
heavy imports are only paid when it runs. :class:`DefaultGroup` is the one error wrapper: a
:class:`~lipt_export.errors.LiptExportError` (or an ``OSError``, with its path) becomes one line
``lipt-export: error: ...`` and exit 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys

# Torch and ONNX Runtime both keep OpenMP threads spinning between ops; on small CPU boxes (and with both
# runtimes in one process) that spinning starves the other pool. Passive waiting is set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import click  # noqa: E402

from lipt_export.cli.options import write_models_table  # noqa: E402
from lipt_export.errors import LiptExportError  # noqa: E402

COMMANDS = {
    "export": "lipt_export.cli.export",
    "eval": "lipt_export.cli.eval",
    "upscale": "lipt_export.cli.upscale",
    "lint": "lipt_export.cli.lint",
    "triton": "lipt_export.cli.triton",
    "bench": "lipt_export.cli.bench",
    "verify": "lipt_export.cli.verify",
    "serve": "lipt_export.cli.serve",
}


def fail(message: str) -> None:
    """One line on stderr, exit 2."""
    click.echo(f"lipt-export: error: {message}", err=True)
    sys.exit(2)


def one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _ConsoleHandler(logging.Handler):
    """Progress (INFO) to stdout, warnings and worse to stderr; streams looked up per record so test
    runners that swap sys.stdout/sys.stderr see the output."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            click.echo(f"lipt-export: warning: {record.getMessage()}", err=True)
        else:
            click.echo(record.getMessage())


def configure_logging() -> None:
    """The CLI's logging: the package logger prints, libraries' root-logger chatter (ONNX Runtime's quantizer
    hints) is dropped. Library code never touches the root logger."""
    pkg = logging.getLogger("lipt_export")
    pkg.setLevel(logging.INFO)
    pkg.propagate = False
    if not any(isinstance(h, _ConsoleHandler) for h in pkg.handlers):
        pkg.addHandler(_ConsoleHandler())
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.NullHandler())


class DefaultGroup(click.Group):
    """A group whose default command is `export`: `lipt-export --model lipt --fp16` works as is. It also
    turns project errors into one line (see the module doc)."""

    default_command = "export"

    def parse_args(self, ctx, args):
        if not args:  # a bare `lipt-export` shows what it does instead of exporting into ./exports
            click.echo(ctx.get_help())
            ctx.exit(0)
        if args[0] not in self.list_commands(ctx) and args[0] not in ("--help", "-h", "--version"):
            if not args[0].startswith("-"):  # a mistyped command must not fall through to an export
                fail(f"unknown command '{args[0]}'; commands: {', '.join(self.list_commands(ctx))} (an export takes "
                     f"options only: lipt-export --model lipt ...)")
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)

    def format_epilog(self, ctx, formatter):
        write_models_table(formatter)

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        return importlib.import_module(COMMANDS[name]).command

    def invoke(self, ctx):
        configure_logging()
        try:
            return super().invoke(ctx)
        except (LiptExportError, OSError) as exc:
            fail(one_line(exc))
        except click.UsageError as exc:  # a bad option value: one line too, not click's usage block
            command = f"lipt-export {exc.ctx.info_name}" if exc.ctx and exc.ctx.parent else "lipt-export"
            message = exc.format_message()
            fail(f"{message[:1].lower()}{message[1:].rstrip('.')} (see `{command} --help`)")


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lipt-export")
def main():
    """Turn an SR/restoration checkpoint into verified, reparameterized ONNX (FP32/FP16/INT8) and
    TensorRT artifacts with a manifest. Without a sub-command, exports (see `lipt-export export --help`)."""


if __name__ == "__main__":  # pragma: no cover
    main()
