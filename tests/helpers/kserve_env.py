"""The kserve SDK's own venv for the KServe manifest test (kserve 0.21 pins protobuf < 7; the project pins 7.x, so
it can never share .venv). Like the Triton server's venv: made once from pinned constraints, stamped, reused.

``python tests/helpers/kserve_env.py`` creates or checks it (``make test`` runs it); where it lives:
``$LIPT_EXPORT_KSERVE_ENV`` or ``~/.cache/lipt-export/kserve-sdk``. :func:`kserve_python` is what the tests call:
the venv's python, or the reason there is none (they skip saying it)."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional, Tuple

CONSTRAINTS = Path(__file__).resolve().parents[1] / "kserve_constraints.txt"
PACKAGE = "kserve==0.21.0"


def env_root() -> Path:
    return Path(os.environ.get("LIPT_EXPORT_KSERVE_ENV") or Path.home() / ".cache" / "lipt-export" / "kserve-sdk")


def _stamp() -> str:
    return hashlib.sha256(CONSTRAINTS.read_bytes() + PACKAGE.encode()).hexdigest()


def kserve_python(root: Optional[Path] = None) -> Tuple[Optional[Path], str]:
    """(the venv's python, "") when it is set up with the pinned kserve, else (None, why not)."""
    root = Path(root or env_root())
    python = root / "bin" / "python"
    if not python.is_file():
        return None, f"no kserve SDK venv at {root} (make it: python tests/helpers/kserve_env.py)"
    stamp = root / ".lipt-kserve-stamp"
    if stamp.is_file() and stamp.read_text().strip() == _stamp():
        return python, ""
    probe = subprocess.run([str(python), "-c", "import kserve, kubernetes, yaml; from importlib.metadata import "
                            "version; print(version('kserve'))"], capture_output=True, text=True)
    if probe.returncode != 0 or probe.stdout.strip() != PACKAGE.split("==")[1]:
        return None, f"{root} has no {PACKAGE} ({(probe.stderr or probe.stdout).strip()[-200:]})"
    return python, ""


def setup(root: Optional[Path] = None, python: str = "python3.11") -> Path:
    """Create or update the venv (idempotent: a stamped venv with these constraints is left alone)."""
    root = Path(root or env_root())
    stamp = root / ".lipt-kserve-stamp"
    if kserve_python(root)[0] is not None:  # stamped, or a venv that already holds the pinned kserve
        return root
    if root.exists() and not stamp.is_file():
        raise SystemExit(f"{root} exists and was not made by this script; remove it or set LIPT_EXPORT_KSERVE_ENV")
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([shutil.which(python) or sys.executable, "-m", "venv", str(root)], check=True)
    subprocess.run([str(root / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(CONSTRAINTS), PACKAGE],
                   check=True)
    found, why = kserve_python(root)
    if found is None:
        raise SystemExit(why)
    stamp.write_text(_stamp() + "\n")
    return root


if __name__ == "__main__":
    print(f"kserve SDK venv: {setup()}")
