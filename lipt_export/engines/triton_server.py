"""A real Triton Inference Server for an export: its own environment, its backends, its process.

The server is the ``tritonserver`` 2.51 bundled in the ``nvidia-pytriton`` wheel. That wheel needs numpy < 2
(numpy 2 in the server's Python silently corrupts Python-backend tensors), so it lives in its own venv,
created by :func:`setup_server_env` from ``triton_server_constraints.txt`` under
:func:`default_server_env` (``$LIPT_EXPORT_SERVER_ENV``, else ``$XDG_CACHE_HOME/lipt-export/triton-server``,
else ``~/.cache/lipt-export/triton-server``). The bundle has only the Python backend, so
:func:`prepare_backends` installs lipt-export's Python-based ``onnxruntime`` backend beside it: repositories
written by ``lipt-export triton`` load unchanged, and on a Triton with the C++ backends (an NGC container)
the same repositories use those instead.

:class:`TritonServer` starts the binary in its own process group (the Python-backend stubs are its children),
waits until it is ready and stops the whole group on :meth:`TritonServer.stop`, so no stub outlives it.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from lipt_export.engines.triton_client import TritonHttpClient
from lipt_export.errors import TritonError
from lipt_export.fileio import dead_owner_temps, exclusive_lock, sha256_file, temp_prefix, write_json_atomic

log = logging.getLogger(__name__)

SERVER_CONSTRAINTS = Path(__file__).resolve().with_name("triton_server_constraints.txt")
SERVER_PACKAGES = ("nvidia-pytriton", "numpy", "onnxruntime")
STAMP_NAME = "lipt-export-server.json"
ONNXRUNTIME_BACKEND = Path(__file__).resolve().parent / "triton_models" / "onnxruntime_backend.py"
DEFAULT_PORT = 8000


def default_server_threads(instances: int) -> int:
    """ONNX Runtime threads per instance: the cores shared out among the instances. Measured here with
    bench_triton.py (docs/benchmarks.md; LIPT-tiny x2, 64x64, 4 clients on the same 2 cores): 1 instance x 1
    thread 25.4 req/s, 1 x 2 threads 37.2, 2 instances x 1 thread 46.5."""
    return max(1, (os.cpu_count() or 1) // max(1, instances))


def default_server_env() -> Path:
    if os.environ.get("LIPT_EXPORT_SERVER_ENV"):
        return Path(os.environ["LIPT_EXPORT_SERVER_ENV"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "lipt-export" / "triton-server"


@dataclass(frozen=True)
class ServerEnv:
    """A set-up server venv, as recorded in its stamp file."""

    root: Path
    site_packages: Path
    libdir: str  # the interpreter's own LIBDIR: the stub must load this libpython, not the system's
    python_version: str  # "3.11": picks the Python-backend stub
    constraints_sha256: str

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def bundle(self) -> Path:
        return self.site_packages / "pytriton" / "tritonserver"

    @property
    def tritonserver(self) -> Path:
        return self.bundle / "bin" / "tritonserver"

    @property
    def stub(self) -> Path:
        return self.bundle / "python_backend_stubs" / self.python_version / "triton_python_backend_stub"

    def missing(self) -> Optional[str]:
        for path in (self.python, self.tritonserver, self.stub, self.bundle / "backends" / "python"):
            if not path.exists():
                return f"{path} is missing"
        return None


def server_env_problem(root: Optional[Path] = None) -> Optional[str]:
    """Why the server environment at ``root`` cannot be used (with the fix), or None."""
    try:
        open_server_env(root)
    except TritonError as exc:
        return str(exc)
    return None


def open_server_env(root: Optional[Path] = None) -> ServerEnv:
    root = Path(root) if root else default_server_env()
    fix = f"run `lipt-export serve --setup{'' if root == default_server_env() else f' --server-env {root}'}`"
    stamp = root / STAMP_NAME
    try:
        data = json.loads(stamp.read_text())
        env = ServerEnv(root, Path(data["site_packages"]), data["libdir"], data["python_version"],
                        data["constraints_sha256"])
    except FileNotFoundError:
        raise TritonError(f"no Triton server environment at {root}: {fix}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TritonError(f"the Triton server environment at {root} is damaged ({exc}): {fix}") from None
    if env.constraints_sha256 != sha256_file(SERVER_CONSTRAINTS):
        raise TritonError(f"the Triton server environment at {root} was set up from other pins: {fix}")
    problem = env.missing()
    if problem:
        raise TritonError(f"the Triton server environment at {root} is incomplete ({problem}): {fix}")
    return env


_PROBE = ("import json, site, sys, sysconfig, numpy, onnxruntime; print(json.dumps({'site_packages': "
          "site.getsitepackages()[0], 'libdir': sysconfig.get_config_var('LIBDIR') or '', 'python_version': "
          "'%d.%d' % sys.version_info[:2], 'numpy': numpy.__version__, 'onnxruntime': onnxruntime.__version__}))")


def setup_server_env(root: Optional[Path] = None, python: Optional[str] = None) -> tuple[ServerEnv, bool]:
    """Create or update the server venv at ``root`` (idempotent); returns (env, changed).

    A venv whose stamp matches the pinned constraints is left alone. Otherwise it is rebuilt from scratch and
    the stamp written last, so an interrupted setup is never taken for a finished one."""
    root = Path(root) if root else default_server_env()
    try:
        return open_server_env(root), False
    except TritonError:
        pass
    root.parent.mkdir(parents=True, exist_ok=True)
    lock = root.parent / f".{root.name}.lock"
    with exclusive_lock(lock, lambda p, pid: TritonError(f"another setup (pid {pid}) is writing {root}; wait for it")):
        try:  # set up by the process we waited for
            return open_server_env(root), False
        except TritonError:
            pass
        if root.exists():
            shutil.rmtree(root)
        python = python or getattr(sys, "_base_executable", None) or sys.executable
        log.info(f"creating the Triton server venv at {root} (nvidia-pytriton, numpy<2, onnxruntime; ~440 MB)")
        _run([python, "-m", "venv", str(root)], "creating the venv")
        pip = [str(root / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        _run(pip + ["-c", str(SERVER_CONSTRAINTS), *SERVER_PACKAGES], "installing the server packages")
        probe = json.loads(_run([str(root / "bin" / "python"), "-c", _PROBE], "probing the venv").strip()
                           .splitlines()[-1])
        if int(probe["numpy"].split(".")[0]) >= 2:
            raise TritonError(f"the server venv got numpy {probe['numpy']}; Triton's Python backend needs numpy < 2")
        env = ServerEnv(root, Path(probe["site_packages"]), probe["libdir"], probe["python_version"],
                        sha256_file(SERVER_CONSTRAINTS))
        problem = env.missing()
        if problem:
            raise TritonError(f"nvidia-pytriton installed without its server ({problem}); this platform needs "
                              f"manylinux_2_35 x86-64 or aarch64")
        write_json_atomic(root / STAMP_NAME, {**probe, "constraints_sha256": env.constraints_sha256,
                                              "packages": list(SERVER_PACKAGES)})
        return env, True


def _run(cmd: Sequence[str], what: str) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip() and "WARNING" not in ln]
        raise TritonError(f"{what} failed (exit {proc.returncode}): {lines[-1] if lines else 'no output'}")
    return proc.stdout


def prepare_backends(env: ServerEnv, dest: Path) -> Path:
    """A backend directory for the bundled server: the Python backend with the stub for the venv's Python,
    and lipt-export's Python-based ``onnxruntime`` backend (used for ``platform: "onnxruntime_onnx"``)."""
    python_dir = dest / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(env.bundle / "backends" / "python" / name, python_dir / name)
    shutil.copy2(env.stub, python_dir / "triton_python_backend_stub")
    (dest / "onnxruntime").mkdir(exist_ok=True)
    shutil.copyfile(ONNXRUNTIME_BACKEND, dest / "onnxruntime" / "model.py")
    return dest


def check_port(port: int) -> None:
    if not 1 <= port <= 65533:
        raise TritonError(f"--port must be in 1..65533 (the server uses PORT..PORT+2), got {port}")


def ports_in_use(host: str, ports: Sequence[int]) -> list[int]:
    busy = []
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                busy.append(port)
    return busy


def free_port_block(host: str = "127.0.0.1", count: int = 3) -> int:
    """A base port P with P..P+count-1 free now (for tests and benchmarks)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((host, 0))
            base = s.getsockname()[1]
        if base + count < 65536 and not ports_in_use(host, range(base, base + count)):
            return base
    raise TritonError("found no block of free ports")


class TritonServer:
    """``tritonserver`` on ``repo``: HTTP on ``port``, gRPC on ``port + 1``, metrics on ``port + 2``."""

    def __init__(self, env: ServerEnv, repo: Path, backends: Path, *, host: str = "127.0.0.1",
                 port: int = DEFAULT_PORT, log_path: Optional[Path] = None, extra_args: Sequence[str] = ()):
        check_port(port)
        self.env, self.repo, self.backends, self.host, self.port = env, Path(repo), Path(backends), host, port
        self.log_path = Path(log_path) if log_path else self.repo.parent / "tritonserver.log"
        self.extra_args = list(extra_args)
        self.proc: Optional[subprocess.Popen] = None

    @property
    def http_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.port}"

    @property
    def grpc_address(self) -> str:
        return f"{_url_host(self.host)}:{self.port + 1}"

    @property
    def metrics_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.port + 2}/metrics"

    def command(self) -> list[str]:
        p = self.port
        return [str(self.env.tritonserver), f"--model-repository={self.repo}", f"--backend-directory={self.backends}",
                f"--http-address={self.host}", f"--grpc-address={self.host}", f"--metrics-address={self.host}",
                f"--http-port={p}", f"--grpc-port={p + 1}", f"--metrics-port={p + 2}", "--exit-timeout-secs=5",
                "--strict-readiness=true",
                # the Python backend's shared-memory regions carry our PID, so a later start can tell a killed
                # server's leftovers (removed) from a live one's
                f"--backend-config=python,shm-region-prefix-name={temp_prefix(SHM_STEM)}", *self.extra_args]

    def environment(self) -> dict:
        env = dict(os.environ)
        env.pop("PYTHONHOME", None)
        env.pop("PYTHONPATH", None)
        libs = [str(self.env.site_packages / "nvidia_pytriton.libs"), self.env.libdir]
        env["LD_LIBRARY_PATH"] = ":".join(p for p in libs + [env.get("LD_LIBRARY_PATH", "")] if p)
        env["PATH"] = f"{self.env.root / 'bin'}:{env.get('PATH', '')}"  # the stub finds its Python from PATH
        env["VIRTUAL_ENV"] = str(self.env.root)
        return env

    def start(self, timeout: float = 120.0, models: Sequence[str] = ()) -> float:
        """Start and wait until the server and ``models`` are ready; returns the seconds it took."""
        busy = ports_in_use(self.host, (self.port, self.port + 1, self.port + 2))
        if busy:
            raise TritonError(f"port {busy[0]} on {self.host} is in use: choose another --port "
                              f"(the server needs {self.port}..{self.port + 2})")
        remove_dead_servers_leftovers()
        t0 = time.perf_counter()
        with open(self.log_path, "wb") as logf:
            # cwd beside the repository: the stubs' Python must not import modules from the caller's folder
            self.proc = subprocess.Popen(self.command(), stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.environment(), start_new_session=True, cwd=str(self.repo.parent),
                                         preexec_fn=_die_with_parent)
        try:
            self._wait_ready(timeout, models)
        except BaseException:
            self.stop()
            raise
        return time.perf_counter() - t0

    def _wait_ready(self, timeout: float, models: Sequence[str]) -> None:
        deadline = time.monotonic() + timeout
        probe = TritonHttpClient(self.http_url, timeout=2)
        while True:
            code = self.proc.poll()
            if code is not None:
                raise TritonError(f"tritonserver exited during start-up (code {code}): {self.log_error()} "
                                  f"(full log: {self.log_path})")
            if probe.ready() and all(probe.ready(m) for m in models):
                return
            if time.monotonic() > deadline:
                raise TritonError(f"tritonserver was not ready after {timeout:.0f} s: {self.log_error()}")
            time.sleep(0.2)

    def log_error(self) -> str:
        """The last error line of the server log (Triton prefixes errors with E<date>), else its last line."""
        try:
            lines = [ln.strip() for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return "no log"
        errors = [ln for ln in lines if ln[:1] == "E" and ln[1:5].isdigit()]
        text = (errors or lines or ["no output"])[-1]
        return text.split("] ", 1)[-1] if "] " in text else text

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> float:
        """SIGTERM to the server's process group, SIGKILL after ``timeout``; returns the seconds it took."""
        if self.proc is None:
            return 0.0
        t0 = time.perf_counter()
        pgid = self.proc.pid  # start_new_session: the server leads its own group
        _signal_group(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(pgid, signal.SIGKILL)
            self.proc.wait()
        _signal_group(pgid, signal.SIGKILL)  # any stub left behind
        return time.perf_counter() - t0

    def __enter__(self) -> "TritonServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


SHM_STEM = "lipt-serve-"  # shared-memory regions (/dev/shm) and `serve` work folders (temp dir): STEM<pid>-...
SHM_DIR = Path("/dev/shm")


def remove_dead_servers_leftovers() -> List[Path]:
    """What servers started by a process that is gone left behind: its `serve` work folder (temp repository,
    backends, log) and the Python backend's shared-memory regions. Live servers' files are left alone."""
    removed = dead_owner_temps(Path(tempfile.gettempdir()), SHM_STEM) + dead_owner_temps(SHM_DIR, SHM_STEM)
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if removed:
        log.info(f"removed {len(removed)} file(s)/folder(s) a killed server left: "
                 f"{', '.join(p.name for p in removed[:3])}{' ...' if len(removed) > 3 else ''}")
    return removed


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM the server when the process that started it dies, even by SIGKILL
    (Linux prctl PR_SET_PDEATHSIG), so a killed `serve` or test run leaves no server behind."""
    if sys.platform.startswith("linux"):
        import ctypes  # deferred: runs in the forked child only

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host

