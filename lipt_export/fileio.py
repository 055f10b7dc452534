"""Atomic writes and content hashes: a file or folder appears complete under its final name, or not at all."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def json_default(obj: Any) -> Any:
    """JSON for the few non-JSON types results carry (dataclasses with as_dict/to_dict, numpy scalars, paths)."""
    for method in ("to_dict", "as_dict"):
        if hasattr(obj, method):
            return getattr(obj, method)()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def umask_mode(directory: bool = False) -> int:
    """The mode a plain ``open``/``mkdir`` would give under the current umask (0644/0755 by default): temp
    files and folders are private (0600/0700) until they are renamed into place, then get this mode."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def save_atomic(path: str | Path, write: Callable[[str], None]) -> None:
    """``write(tmp_name)`` writes the file; it is renamed to ``path`` only when complete."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: Any) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False, default=json_default)
            f.write("\n")

    save_atomic(path, write)


def write_text_atomic(path: str | Path, text: str) -> None:
    save_atomic(path, lambda tmp: Path(tmp).write_text(text))


def replace_dir(src: Path, dst: Path) -> None:
    """Move the finished temp dir ``src`` into place as ``dst``; an older ``dst`` is kept aside until the
    rename succeeded, then removed."""
    os.chmod(src, umask_mode(directory=True))
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{int(time.time())}")
        dst.rename(old)
    src.rename(dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def exclusive_lock(path: Path, busy: Callable[[Path, int], Exception]) -> Iterator[None]:
    """Hold ``path`` (a lock file holding our PID) for the block. A lock whose process is gone (a killed run) is
    taken over; one held by a live process raises ``busy(path, pid)``."""
    for _ in range(2):
        try:
            fd = os.open(str(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(path.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _pid_alive(pid):
                raise busy(path, pid) from None
            path.unlink(missing_ok=True)  # stale: its export was killed
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
        return
    raise busy(path, 0)


def writable_dir_problem(folder: Path) -> Optional[str]:
    """Why files cannot be created in ``folder`` (or in the nearest existing parent it would be created in),
    or None."""
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        return f"{probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable ({os.strerror(errno.EACCES)})"
    return None
