"""Atomic writes and content hashes: a file or folder appears complete under its final name, or not at all."""
from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional


# "the disk is full" in its three forms: no space, quota exceeded, file size limit (RLIMIT_FSIZE)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


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


def temp_prefix(stem: str) -> str:
    """The prefix of a temp file or folder this process makes: ``stem`` + its PID, so that a later run can tell
    a live run's temp (left alone) from a killed run's (removed: :func:`dead_owner_temps`)."""
    return f"{stem}{os.getpid()}-"


def dead_owner_temps(folder: Path, stem: str, suffix: str = "") -> List[Path]:
    """Temps in ``folder`` named ``stem<PID>-...<suffix>`` (:func:`temp_prefix`) whose process is gone."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.glob(f"{glob.escape(stem)}*{glob.escape(suffix)}"):
        m = re.match(re.escape(stem) + r"(\d+)-", p.name)
        if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
            found.append(p)
    return sorted(found)


def save_atomic(path: str | Path, write: Callable[[str], None]) -> None:
    """``write(tmp_name)`` writes the file; it is renamed to ``path`` only when complete. The temp file is
    ``.NAME.<pid>-*.tmp`` beside it (see :func:`dead_owner_temps`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)  # e.g. --json reports/run1.json: the folder is made, as checked
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(f".{path.name}."), suffix=".tmp", dir=str(path.parent))
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


def foreign_files(folder: Path, ours: Callable[[str], bool]) -> List[str]:
    """Paths under ``folder`` (relative, sorted) that ``ours(relative_path)`` does not claim: what replacing or
    removing the folder would destroy of somebody else's. Folders count through their files; an empty folder
    that is not on the way to one of ours counts itself."""
    found = []
    for path in sorted(Path(folder).rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_dir() and not path.is_symlink():
            if not any(path.iterdir()) and not ours(rel):
                found.append(rel + "/")
        elif not ours(rel):
            found.append(rel)
    return found


@contextmanager
def staged_dir(final: Path, before_swap: Callable[[], None] = lambda: None,
               on_stale: Callable[[Path], None] = lambda p: None) -> Iterator[Path]:
    """A private temp folder ``.NAME.tmp-<pid>-*`` beside ``final`` to write into; when the block completes,
    ``before_swap()`` runs (a last check) and the folder replaces ``final`` atomically (:func:`replace_dir`); when
    it fails, the folder is removed and ``final`` is untouched. A killed run's temp folder of the same name (its
    owner dead) is removed first, reported to ``on_stale``. Used by export and by the Triton repository writer."""
    final = Path(final)
    for stale in dead_owner_temps(final.parent, f".{final.name}.tmp-"):
        shutil.rmtree(stale, ignore_errors=True)
        on_stale(stale)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(f".{final.name}.tmp-"), dir=str(final.parent)))
    try:
        yield tmp
        before_swap()
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def pid_alive(pid: int) -> bool:
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
            if pid and pid_alive(pid):
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
