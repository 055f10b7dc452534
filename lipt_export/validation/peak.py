"""This CPU's arithmetic peak per precision, measured with register-only kernels (``peak_kernels.c`` beside this
file), so "% of peak" compares a model with what the cores can do, not with a library's matmul.

* fp32: independent ``vfmadd231ps`` chains, AVX-512 where the CPU has it, else AVX2 + FMA;
* int8: the dot-product sequence CPU runtimes use: ``vpdpbusd`` (AVX512-VNNI, else AVX-VNNI), else
  ``vpmaddubsw`` + ``vpmaddwd`` + ``vpaddd`` (AVX512BW, else AVX2);
* bf16: ``vdpbf16ps`` (AVX512_BF16);
* AMX (``tdpbusd`` int8, ``tdpbf16ps`` bf16) as rows of their own, where the CPU has it and Linux grants the tile
  state (``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``).

The ISA comes from ``/proc/cpuinfo``'s flags at run time; ``isa_cap`` ("avx2", "avx512") measures as a CPU
without the newer extensions would (the AVX2 path of an AMD Zen 3 on an AVX-512 machine). The C file is compiled
at first use with the system compiler (``$CC``, else ``cc``/``gcc``/``clang``) into a cache folder keyed by the
source's hash, the compiler and the CPU flags, and loaded with ctypes; without a compiler (or on a CPU that is
not x86-64) every peak is *not measured*, with the reason: never a guess. Each rate is the best of a few short
calls (one thread, then ``threads`` Python threads at once, at most the usable cores: ctypes releases the GIL),
each thread's operations over its own CPU time, so time slices taken by other processes on a shared machine do
not lower it (a slower all-core clock or a busy SMT sibling still do).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

SOURCE = Path(__file__).with_name("peak_kernels.c")
ISA_CAPS = ("native", "avx512", "avx2")
# flags an ISA cap removes (the CPU is measured as one without them)
_CAPPED = {"native": (), "avx512": ("amx",), "avx2": ("amx", "avx512", "avx_vnni")}


@dataclass(frozen=True)
class Kernel:
    precision: str  # the peak it measures: fp32, int8, bf16, amx-int8, amx-bf16
    symbol: str  # the C function
    isa: str
    instruction: str
    needs: Tuple[str, ...]  # /proc/cpuinfo flags


# per precision, the first kernel whose flags the CPU has is the one measured
KERNELS = (
    Kernel("fp32", "fp32_avx512", "AVX-512F", "vfmadd231ps zmm, 12 chains", ("avx512f",)),
    Kernel("fp32", "fp32_avx2", "AVX2+FMA", "vfmadd231ps ymm, 12 chains", ("avx2", "fma")),
    Kernel("int8", "int8_vnni512", "AVX512-VNNI", "vpdpbusd zmm, 12 chains", ("avx512f", "avx512_vnni")),
    Kernel("int8", "int8_avxvnni", "AVX-VNNI", "vpdpbusd ymm, 12 chains", ("avx2", "avx_vnni")),
    Kernel("int8", "int8_avx512bw", "AVX512BW", "vpmaddubsw+vpmaddwd+vpaddd zmm, 10 chains", ("avx512f", "avx512bw")),
    Kernel("int8", "int8_avx2", "AVX2", "vpmaddubsw+vpmaddwd+vpaddd ymm, 10 chains", ("avx2",)),
    Kernel("bf16", "bf16_avx512", "AVX512_BF16", "vdpbf16ps zmm, 12 chains", ("avx512f", "avx512_bf16")),
    Kernel("amx-int8", "amx_int8", "AMX-INT8", "tdpbusd, 4 accumulator tiles", ("amx_tile", "amx_int8")),
    Kernel("amx-bf16", "amx_bf16", "AMX-BF16", "tdpbf16ps, 4 accumulator tiles", ("amx_tile", "amx_bf16")),
)
PRECISIONS = ("fp32", "int8", "bf16", "amx-int8", "amx-bf16")
UNITS = {"fp32": "GFLOP/s", "bf16": "GFLOP/s", "amx-bf16": "GFLOP/s", "int8": "GOP/s", "amx-int8": "GOP/s"}


@dataclass(frozen=True)
class Peak:
    """One precision's peak in G operations per second (2 per multiply-accumulate), or why it was not measured."""

    precision: str
    isa: Optional[str] = None
    instruction: Optional[str] = None
    single_thread: Optional[float] = None
    all_threads: Optional[float] = None
    threads: int = 1
    unit: str = "GFLOP/s"
    not_measured: Optional[str] = None
    # the threads' operations over the wall time: below ``all_threads`` when other work shared the cores (or the
    # host runs two of these CPUs on one physical core)
    all_threads_wall: Optional[float] = None

    @property
    def value(self) -> Optional[float]:
        """The peak a run on ``threads`` threads is compared with."""
        return self.all_threads

    def describe(self) -> str:
        if self.not_measured:
            return f"{self.precision}: not measured ({self.not_measured})"
        return (f"{self.precision} {self.isa} {self.all_threads:.0f} {self.unit} on {self.threads} threads "
                f"({self.single_thread:.0f} on one, {self.all_threads_wall:.0f} by the wall clock; {self.instruction})")


@dataclass(frozen=True)
class PeakReport:
    cpu: str
    isa_cap: str
    method: str
    peaks: Dict[str, Peak] = field(default_factory=dict)
    not_measured: Optional[str] = None  # why nothing was measured (no compiler, not x86-64, ...)

    def value(self, precision: str) -> Optional[float]:
        p = self.peaks.get(precision)
        return p.value if p is not None else None

    def to_dict(self) -> Dict[str, Any]:
        return {"cpu": self.cpu, "isa_cap": self.isa_cap, "method": self.method, "not_measured": self.not_measured,
                "peaks": {k: asdict(v) for k, v in self.peaks.items()}}

    def lines(self) -> List[str]:
        if self.not_measured:
            return [f"peaks not measured: {self.not_measured}"]
        return [p.describe() for p in self.peaks.values()]


def cpu_flags() -> Tuple[str, Tuple[str, ...]]:
    """(CPU model name, flags) from /proc/cpuinfo; ("", ()) where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", ()
    model, flags = "", ()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = tuple(value.split())
    return model, flags


def capped_flags(flags: Sequence[str], isa_cap: str = "native") -> Tuple[str, ...]:
    if isa_cap not in _CAPPED:
        raise ValueError(f"isa_cap must be one of {', '.join(ISA_CAPS)}, not '{isa_cap}'")
    return tuple(f for f in flags if not f.startswith(_CAPPED[isa_cap]))


def choose_kernels(flags: Sequence[str]) -> Dict[str, Kernel]:
    """The kernel measured per precision for these flags (precisions the flags cannot run are absent)."""
    have = set(flags)
    chosen: Dict[str, Kernel] = {}
    for k in KERNELS:
        if k.precision not in chosen and all(n in have for n in k.needs):
            chosen[k.precision] = k
    return chosen


def cache_dir() -> Path:
    root = os.environ.get("LIPT_EXPORT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "lipt-export")
    return Path(root) / "peak"


def find_compiler() -> Optional[str]:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def build_library(flags: Sequence[str], compiler: Optional[str] = None) -> Tuple[Optional[Path], Optional[str]]:
    """(the compiled kernels, None) or (None, why not). Cached by source hash + compiler + CPU flags."""
    compiler = compiler or find_compiler()
    if compiler is None:
        return None, "no C compiler (cc, gcc or clang; or $CC) to build the peak kernels"
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"the C compiler {compiler} does not run ({exc})"
    key = hashlib.sha256(SOURCE.read_bytes() + compiler.encode() + version.encode()
                         + " ".join(sorted(flags)).encode()).hexdigest()[:16]
    lib = cache_dir() / f"peak-{key}.so"
    if lib.is_file():
        return lib, None
    lib.parent.mkdir(parents=True, exist_ok=True)
    tmp = lib.with_name(f".{lib.name}.{os.getpid()}.tmp")
    try:
        proc = subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(tmp), str(SOURCE)],
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
            return None, f"{Path(compiler).name} could not build the peak kernels: {last}"
        os.replace(tmp, lib)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"{Path(compiler).name} could not build the peak kernels ({exc})"
    finally:
        tmp.unlink(missing_ok=True)
    return lib, None


def _function(lib: ctypes.CDLL, symbol: str):
    fn = getattr(lib, symbol)
    fn.restype = ctypes.c_double
    fn.argtypes = [ctypes.c_int64, ctypes.POINTER(ctypes.c_float)]
    return fn


def _rate(fn, iters: int, threads: int) -> Tuple[float, float]:
    """G operations per second of ``threads`` simultaneous calls of ``iters`` iterations: (each thread's operations
    over its own CPU time (``time.thread_time``), summed: time slices given to other processes on a shared machine
    do not count against it (an SMT sibling or a slower all-core clock still do); all operations over the wall
    time: what the threads achieved together, lowered by any other work)."""
    start = threading.Barrier(threads + 1)
    rates, ops = [0.0] * threads, [0.0] * threads

    def work(i: int) -> None:
        sink = ctypes.c_float()
        start.wait()
        t0 = time.thread_time()
        ops[i] = fn(iters, ctypes.byref(sink))
        rates[i] = ops[i] / max(time.thread_time() - t0, 1e-9)

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    return sum(rates) / 1e9, sum(ops) / (time.perf_counter() - t0) / 1e9


def _measure(fn, threads: int, seconds: float, repeats: int) -> Tuple[float, float, float]:
    """(one thread, ``threads`` threads, ``threads`` threads by the wall clock), each the best of ``repeats`` calls
    of about ``seconds``."""
    iters, dt = 256, 0.0
    while dt < 0.01:  # calibrate: a call long enough to time
        t0 = time.perf_counter()
        sink = ctypes.c_float()
        fn(iters, ctypes.byref(sink))
        dt = time.perf_counter() - t0
        if dt < 0.01:
            iters *= 4
    iters = max(1, int(iters * seconds / dt))
    single = max(_rate(fn, iters, 1)[0] for _ in range(repeats))
    multi = [_rate(fn, iters, threads) for _ in range(repeats)]
    return single, max(m[0] for m in multi), max(m[1] for m in multi)


def default_peak_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@lru_cache(maxsize=8)
def measure_peaks(threads: Optional[int] = None, isa_cap: str = "native", seconds: float = 0.1,
                  repeats: int = 3) -> PeakReport:
    """Every precision's peak on this CPU (see the module doc); ``threads``: the all-threads row (default: the
    cores this process may use). Cached per process."""
    # per-thread CPU time adds up to a peak only for threads that can run at once: at most the usable cores
    threads = min(threads or default_peak_threads(), default_peak_threads())
    model, flags = cpu_flags()
    method = (f"register-only kernels (peak_kernels.c), best of {repeats} calls of ~{seconds:g} s, one thread and "
              f"{threads} threads at once, each timed by its own CPU time; ISA from /proc/cpuinfo"
              + ("" if isa_cap == "native" else f", capped at {isa_cap}"))
    if not flags:
        return PeakReport(model, isa_cap, method, not_measured="no CPU flags (/proc/cpuinfo) to choose kernels from")
    native_flags, flags = flags, capped_flags(flags, isa_cap)
    kernels = choose_kernels(flags)
    if not kernels:
        return PeakReport(model, isa_cap, method, not_measured="this CPU has no AVX2 (nor newer x86 vector ISA)")
    path, why = build_library(native_flags)  # one build serves every cap
    if path is None:
        return PeakReport(model, isa_cap, method, not_measured=why)
    lib = ctypes.CDLL(str(path))
    if not lib.lipt_peak_x86():
        return PeakReport(model, isa_cap, method, not_measured="not an x86-64 CPU: no peak kernels for it")
    peaks: Dict[str, Peak] = {}
    amx_refused = None
    if any(p.startswith("amx") for p in kernels):
        lib.amx_request.restype = ctypes.c_int
        if lib.amx_request() != 0:
            amx_refused = ("the CPU has AMX but Linux refused the tile state (arch_prctl ARCH_REQ_XCOMP_PERM): "
                           "kernel older than 5.16?")
    for precision in PRECISIONS:
        k = kernels.get(precision)
        unit = UNITS[precision]
        if k is None:
            peaks[precision] = Peak(precision, unit=unit, threads=threads,
                                    not_measured=f"this CPU has no {precision.upper()} instructions"
                                    + (f" (capped at {isa_cap})" if isa_cap != "native" else ""))
            continue
        if precision.startswith("amx") and amx_refused:
            peaks[precision] = Peak(precision, k.isa, k.instruction, unit=unit, threads=threads,
                                    not_measured=amx_refused)
            continue
        fn = _function(lib, k.symbol)
        if fn(1, ctypes.byref(ctypes.c_float())) < 0:
            peaks[precision] = Peak(precision, k.isa, k.instruction, unit=unit, threads=threads,
                                    not_measured=f"the compiler has no {k.isa} intrinsics")
            continue
        single, multi, wall = _measure(fn, threads, seconds, repeats)
        peaks[precision] = Peak(precision, k.isa, k.instruction, single, multi, threads, unit, all_threads_wall=wall)
    return PeakReport(model, isa_cap, method, peaks)


def peak_for_row(report: PeakReport, precision: str, runtime: str) -> Tuple[Optional[float], str]:
    """(the peak a bench row is compared with, its name): the peak of the instructions the runtime's kernels use for
    that arithmetic on this CPU. INT8 files: AMX-INT8 where measured (ONNX Runtime's MLAS and oneDNN run int8
    GEMMs on AMX where the CPU has it), else the vector int8 peak (VNNI, else vpmaddubsw); OpenVINO's bf16
    execution: AMX-BF16, else AVX512_BF16, else fp32; everything else (fp32; fp16 and fp8 files, which CPU runtimes
    compute in fp32) against the fp32 FMA peak."""
    if precision == "int8":
        order = ("amx-int8", "int8")
    elif runtime.endswith("bf16"):
        order = ("amx-bf16", "bf16", "fp32")
    else:
        order = ("fp32",)
    for key in order:
        p = report.peaks.get(key)
        if p is not None and p.value:
            return p.value, f"{key} {p.isa}" if not key.startswith("amx") else p.isa
    return None, order[-1]
