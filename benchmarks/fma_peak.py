"""fp32 FMA peak of this CPU, measured with a tiny C kernel compiled at run time (issue 26 parts 2/3).

Register-only loop of independent ``vfmadd`` accumulators (AVX-512 when /proc/cpuinfo has avx512f, else
AVX2+FMA), one pthread per thread. A stand-in until `bench`'s own peak kernel lands (issue 26 part 1): the
integrator may switch callers to that one.

    .venv/bin/python benchmarks/fma_peak.py --threads 2
"""
from __future__ import annotations

import argparse
import ctypes
import functools
import subprocess
import tempfile
from pathlib import Path

KERNEL = r"""
#include <immintrin.h>
#include <pthread.h>
#include <time.h>
#if defined(__AVX512F__)
typedef __m512 vec; enum { LANES = 16 };
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ADD _mm512_add_ps
#define STORE _mm512_storeu_ps
#else
typedef __m256 vec; enum { LANES = 8 };
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ADD _mm256_add_ps
#define STORE _mm256_storeu_ps
#endif
enum { ACC = 16 };  /* independent chains: > FMA latency x ports, so the loop is throughput-bound */
static long g_iters;
static void *work(void *out) {
    vec a[ACC]; vec m = SET1(0.999999f), c = SET1(1e-7f);
    for (int i = 0; i < ACC; i++) a[i] = SET1((float)i);
    for (long it = 0; it < g_iters; it++) {
        #pragma GCC unroll 16
        for (int i = 0; i < ACC; i++) a[i] = FMA(a[i], m, c);
    }
    vec s = a[0];
    for (int i = 1; i < ACC; i++) s = ADD(s, a[i]);
    float tmp[LANES]; STORE(tmp, s); *(float *)out = tmp[0];
    return 0;
}
/* GFLOP/s over `threads` threads, each running `iters` iterations of ACC vector FMAs */
double fma_gflops(int threads, long iters) {
    pthread_t t[64]; float sink[64]; struct timespec a, b;
    g_iters = iters;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < threads; i++) pthread_create(&t[i], 0, work, &sink[i]);
    for (int i = 0; i < threads; i++) pthread_join(t[i], 0);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double s = (b.tv_sec - a.tv_sec) + 1e-9 * (b.tv_nsec - a.tv_nsec);
    return 2.0 * ACC * LANES * (double)iters * threads / s / 1e9;
}
int lanes(void) { return LANES; }
"""


def isa() -> str:
    flags = Path("/proc/cpuinfo").read_text()
    return "avx512f" if " avx512f" in flags else "avx2+fma"


@functools.lru_cache(maxsize=None)
def _lib():
    tmp = Path(tempfile.mkdtemp(prefix="fma_peak-"))
    src, so = tmp / "fma.c", tmp / "fma.so"
    src.write_text(KERNEL)
    arch = ["-mavx512f"] if isa() == "avx512f" else ["-mavx2", "-mfma"]
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-pthread", *arch, str(src), "-o", str(so)], check=True)
    lib = ctypes.CDLL(str(so))
    lib.fma_gflops.restype = ctypes.c_double
    lib.fma_gflops.argtypes = [ctypes.c_int, ctypes.c_long]
    return lib


def fma_peak_gflops(threads: int = 2, iters: int = 20_000_000, repeats: int = 5) -> float:
    """Best of ``repeats`` runs (the peak is a ceiling: noise only lowers it)."""
    lib = _lib()
    lib.fma_gflops(threads, iters // 10)  # warm the cores up (frequency)
    return max(lib.fma_gflops(threads, iters) for _ in range(repeats))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print(f"{isa()}: fp32 FMA peak {fma_peak_gflops(args.threads):.1f} GFLOP/s on {args.threads} threads")


if __name__ == "__main__":
    main()
