import os
from pathlib import Path
from typing import Optional

import pytest

# See lipt_export/cli/__init__.py: spinning OpenMP pools starve each other on a 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from helpers.shared import shared_dir  # noqa: E402

class SharedData:
    """The developers' ``../shared`` folder, found once; tests ask for what they need and skip, naming it,
    when it is absent."""

    def __init__(self, root: Optional[Path]):
        self.root = root

    def find(self, rel: str) -> Optional[Path]:
        path = self.root / rel if self.root else None
        return path if path is not None and path.exists() else None

    def require(self, *rels: str):
        """The paths, or a skip naming every missing one. One path in, one path out."""
        missing = [r for r in rels if self.find(r) is None]
        if missing:
            where = "../shared is absent" if self.root is None else f"{self.root} lacks {', '.join(missing)}"
            pytest.skip(f"{where} (needs {', '.join(rels)})")
        paths = [self.root / r for r in rels]
        return paths[0] if len(paths) == 1 else paths


@pytest.fixture(scope="session")
def shared() -> SharedData:
    return SharedData(shared_dir())


TINY_ARGS = ["--model", "lipt", "--variant", "tiny", "--scale", "2", "--backend", "onnxruntime", "--no-lint"]


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> Path:
    """One LIPT-tiny x2 export (demo weights, ONNX only) for the whole session, made by the real command. Tests
    read it; a test that edits an export copies it first."""
    from helpers.cli import run_cli

    out = tmp_path_factory.mktemp("tiny-export")
    res = run_cli(*TINY_ARGS, "--out", out)
    assert res.exit_code == 0, res.output
    return out / "lipt-tiny-x2"
