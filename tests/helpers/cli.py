"""One way to run the command line in tests, and one definition of the bad-input contract."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Sequence, Tuple

from click.testing import CliRunner, Result

from lipt_export.cli import main


def run_cli(*args, cwd=None, catch: bool = True) -> Result:
    """``lipt-export ARGS`` in this process (click's runner; stdout and stderr kept apart)."""
    old = os.getcwd()
    if cwd:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(main, [str(a) for a in args], prog_name="lipt-export", catch_exceptions=catch)
    finally:
        os.chdir(old)


def run_cli_process(*args, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """``lipt-export ARGS`` as its own process (what a user runs; signals, limits and imports are real)."""
    return subprocess.run([sys.executable, "-m", "lipt_export.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def assert_one_line_error(res, *needles: str) -> str:
    """The contract for every bad input: exit 2, exactly one line on stderr, ``lipt-export: error: ...`` naming
    the problem, no traceback. Works for click results and finished processes; returns the line."""
    code = res.exit_code if hasattr(res, "exit_code") else res.returncode
    out = res.output if hasattr(res, "output") else res.stdout + res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert code == 2, out
    assert len(lines) == 1 and lines[0].startswith("lipt-export: error:"), res.stderr
    assert "Traceback" not in out
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def tree(root: Path) -> Dict[str, Tuple[str, int]]:
    """Every file and folder under ``root`` with its content hash and mode: "nothing changed" is equality."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
                                         st.st_mode)
    return out


def one_export(out: Path, exclude: Sequence[str] = ()) -> Path:
    """The single export folder under ``out`` (hidden files and ``exclude`` names aside)."""
    (d,) = [p for p in Path(out).iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in exclude]
    return d
