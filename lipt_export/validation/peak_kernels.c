/* Register-only peak kernels for lipt_export/validation/peak.py: each runs `iters` iterations of independent
 * multiply-accumulate chains that never touch memory, so its rate is the core's arithmetic peak for that
 * instruction sequence. Compiled at run time by peak.py with the system compiler (no -march: every kernel names
 * its ISA in a target attribute, and Python calls only those the CPU's flags allow).
 *
 * Each kernel returns the operations it performed (2 per multiply-accumulate), or -1 when it cannot run here.
 * 12 accumulators: enough to cover FMA latency (4 cycles) x throughput (2 per cycle) with room to spare. */
#include <stdint.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#define UNROLL12(S) S(0) S(1) S(2) S(3) S(4) S(5) S(6) S(7) S(8) S(9) S(10) S(11)

int lipt_peak_x86(void) { return 1; }

/* fp32: vfmadd231ps zmm, 12 chains x 16 lanes */
__attribute__((target("avx512f"))) double fp32_avx512(int64_t iters, float *sink) {
    const __m512 x = _mm512_set1_ps(0.9999f), y = _mm512_set1_ps(1.0001f);
#define D(i) __m512 a##i = _mm512_set1_ps((float)(i));
    UNROLL12(D)
#undef D
    for (int64_t n = 0; n < iters; ++n) {
#define F(i) a##i = _mm512_fmadd_ps(a##i, x, y); __asm__ volatile("" : "+v"(a##i));
        UNROLL12(F)
#undef F
    }
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                             _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
    *sink = _mm512_reduce_add_ps(s);
    return (double)iters * 12 * 16 * 2;
}

/* fp32: vfmadd231ps ymm, 12 chains x 8 lanes (AVX2 + FMA: Haswell and later, Zen) */
__attribute__((target("avx2,fma"))) double fp32_avx2(int64_t iters, float *sink) {
    const __m256 x = _mm256_set1_ps(0.9999f), y = _mm256_set1_ps(1.0001f);
#define D(i) __m256 a##i = _mm256_set1_ps((float)(i));
    UNROLL12(D)
#undef D
    for (int64_t n = 0; n < iters; ++n) {
#define F(i) a##i = _mm256_fmadd_ps(a##i, x, y); __asm__ volatile("" : "+x"(a##i));
        UNROLL12(F)
#undef F
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                             _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
    float out[8];
    _mm256_storeu_ps(out, s);
    *sink = out[0] + out[7];
    return (double)iters * 12 * 8 * 2;
}

/* int8 (u8 x s8 -> s32): vpdpbusd zmm, 12 chains x 16 lanes x 4 products (AVX512-VNNI) */
__attribute__((target("avx512f,avx512vnni"))) double int8_vnni512(int64_t iters, float *sink) {
    const __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-2);
#define D(i) __m512i c##i = _mm512_set1_epi32(i);
    UNROLL12(D)
#undef D
    for (int64_t n = 0; n < iters; ++n) {
#define F(i) c##i = _mm512_dpbusd_epi32(c##i, a, b); __asm__ volatile("" : "+v"(c##i));
        UNROLL12(F)
#undef F
    }
    __m512i s = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(c0, c1), _mm512_add_epi32(c2, c3)),
                                 _mm512_add_epi32(_mm512_add_epi32(c4, c5), _mm512_add_epi32(c6, c7)));
    s = _mm512_add_epi32(s, _mm512_add_epi32(_mm512_add_epi32(c8, c9), _mm512_add_epi32(c10, c11)));
    *sink = (float)_mm512_reduce_add_epi32(s);
    return (double)iters * 12 * 64 * 2;
}

#if (defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11) || (defined(__clang__) && __clang_major__ >= 12)
#define LIPT_HAVE_AVXVNNI 1
/* int8: vpdpbusd ymm, VEX-encoded (AVX-VNNI: Alder Lake, Sapphire Rapids, Zen 5) */
__attribute__((target("avx2,avxvnni"))) double int8_avxvnni(int64_t iters, float *sink) {
    const __m256i a = _mm256_set1_epi8(3), b = _mm256_set1_epi8(-2);
#define D(i) __m256i c##i = _mm256_set1_epi32(i);
    UNROLL12(D)
#undef D
    for (int64_t n = 0; n < iters; ++n) {
#define F(i) c##i = _mm256_dpbusd_avx_epi32(c##i, a, b); __asm__ volatile("" : "+x"(c##i));
        UNROLL12(F)
#undef F
    }
    __m256i s = _mm256_add_epi32(_mm256_add_epi32(_mm256_add_epi32(c0, c1), _mm256_add_epi32(c2, c3)),
                                 _mm256_add_epi32(_mm256_add_epi32(c4, c5), _mm256_add_epi32(c6, c7)));
    s = _mm256_add_epi32(s, _mm256_add_epi32(_mm256_add_epi32(c8, c9), _mm256_add_epi32(c10, c11)));
    *sink = (float)_mm256_extract_epi32(s, 0);
    return (double)iters * 12 * 32 * 2;
}
#else
double int8_avxvnni(int64_t iters, float *sink) { (void)iters; (void)sink; return -1.0; }
#endif

/* int8 without VNNI: vpmaddubsw (u8 x s8 -> s16 pairs) + vpmaddwd (x 1 -> s32) + vpaddd, the sequence ONNX
 * Runtime's MLAS and oneDNN use on AVX2 / AVX512BW; 10 chains (3 instructions per 32 or 64 products). Written as
 * inline asm: with intrinsics the compiler hoists the loop-invariant products out of the loop. */
#define MADD_STEP(R, i, t) "vpmaddubsw %[b], %[a], %%" R t "\n\tvpmaddwd %[one], %%" R t ", %%" R t "\n\t" \
                           "vpaddd %%" R t ", %[c" #i "], %[c" #i "]\n\t"
#define MADD_BODY(R, t0, t1) MADD_STEP(R, 0, t0) MADD_STEP(R, 1, t1) MADD_STEP(R, 2, t0) MADD_STEP(R, 3, t1) \
    MADD_STEP(R, 4, t0) MADD_STEP(R, 5, t1) MADD_STEP(R, 6, t0) MADD_STEP(R, 7, t1) MADD_STEP(R, 8, t0) \
    MADD_STEP(R, 9, t1)
#define MADD_OUTS(C) [c0] C(c0), [c1] C(c1), [c2] C(c2), [c3] C(c3), [c4] C(c4), [c5] C(c5), [c6] C(c6), \
    [c7] C(c7), [c8] C(c8), [c9] C(c9)

__attribute__((target("avx512f,avx512bw"))) double int8_avx512bw(int64_t iters, float *sink) {
    const __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-2), one = _mm512_set1_epi16(1);
#define D(i) __m512i c##i = _mm512_set1_epi32(i);
    D(0) D(1) D(2) D(3) D(4) D(5) D(6) D(7) D(8) D(9)
#undef D
    for (int64_t n = 0; n < iters; ++n) {
        __asm__ volatile(MADD_BODY("zmm", "30", "31") : MADD_OUTS("+v") : [a] "v"(a), [b] "v"(b), [one] "v"(one)
                         : "xmm30", "xmm31");
    }
    __m512i s = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(c0, c1), _mm512_add_epi32(c2, c3)),
                                 _mm512_add_epi32(_mm512_add_epi32(c4, c5), _mm512_add_epi32(c6, c7)));
    s = _mm512_add_epi32(s, _mm512_add_epi32(c8, c9));
    *sink = (float)_mm512_reduce_add_epi32(s);
    return (double)iters * 10 * 64 * 2;
}

__attribute__((target("avx2"))) double int8_avx2(int64_t iters, float *sink) {
    const __m256i a = _mm256_set1_epi8(3), b = _mm256_set1_epi8(-2), one = _mm256_set1_epi16(1);
#define D(i) __m256i c##i = _mm256_set1_epi32(i);
    D(0) D(1) D(2) D(3) D(4) D(5) D(6) D(7) D(8) D(9)
#undef D
    for (int64_t n = 0; n < iters; ++n) {
        __asm__ volatile(MADD_BODY("ymm", "14", "15") : MADD_OUTS("+x") : [a] "x"(a), [b] "x"(b), [one] "x"(one)
                         : "xmm14", "xmm15");
    }
    __m256i s = _mm256_add_epi32(_mm256_add_epi32(_mm256_add_epi32(c0, c1), _mm256_add_epi32(c2, c3)),
                                 _mm256_add_epi32(_mm256_add_epi32(c4, c5), _mm256_add_epi32(c6, c7)));
    s = _mm256_add_epi32(s, _mm256_add_epi32(c8, c9));
    *sink = (float)_mm256_extract_epi32(s, 0);
    return (double)iters * 10 * 32 * 2;
}

/* bf16 pairs -> fp32: vdpbf16ps zmm, 12 chains x 16 lanes x 2 products (AVX512_BF16) */
#if (defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 10) || (defined(__clang__) && __clang_major__ >= 9)
__attribute__((target("avx512f,avx512bf16"))) double bf16_avx512(int64_t iters, float *sink) {
    const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3f7f);
#define D(i) __m512 c##i = _mm512_set1_ps((float)(i));
    UNROLL12(D)
#undef D
    for (int64_t n = 0; n < iters; ++n) {
#define F(i) c##i = _mm512_dpbf16_ps(c##i, a, b); __asm__ volatile("" : "+v"(c##i));
        UNROLL12(F)
#undef F
    }
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(c0, c1), _mm512_add_ps(c2, c3)),
                             _mm512_add_ps(_mm512_add_ps(c4, c5), _mm512_add_ps(c6, c7)));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(c8, c9), _mm512_add_ps(c10, c11)));
    *sink = _mm512_reduce_add_ps(s);
    return (double)iters * 12 * 32 * 2;
}
#else
double bf16_avx512(int64_t iters, float *sink) { (void)iters; (void)sink; return -1.0; }
#endif

/* AMX: Linux hands out the tile data state only on request (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA);
 * returns 0 when granted, else the errno-style result. */
int amx_request(void) {
    return (int)syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */);
}

#if (defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11) || (defined(__clang__) && __clang_major__ >= 12)
struct tile_config {
    uint8_t palette_id, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

__attribute__((target("amx-tile"))) static void amx_config(void) {
    struct tile_config cfg = {0};
    cfg.palette_id = 1;
    for (int t = 0; t < 8; ++t) {  /* 16 rows x 64 bytes: C tiles of 16x16 int32/fp32, A and B of 16x64 bytes */
        cfg.rows[t] = 16;
        cfg.colsb[t] = 64;
    }
    _tile_loadconfig(&cfg);
}

/* int8: tdpbusd, 4 accumulator tiles (t0..t3) from 2 A tiles x 2 B tiles; 16x16x64 products per instruction */
__attribute__((target("amx-tile,amx-int8"))) double amx_int8(int64_t iters, float *sink) {
    static __thread int8_t buf[16 * 64] __attribute__((aligned(64)));
    for (int k = 0; k < 16 * 64; ++k) buf[k] = (int8_t)(k % 7 - 3);
    amx_config();
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    _tile_loadd(4, buf, 64); _tile_loadd(5, buf, 64); _tile_loadd(6, buf, 64); _tile_loadd(7, buf, 64);
    for (int64_t n = 0; n < iters; ++n) {
        _tile_dpbusd(0, 4, 6); _tile_dpbusd(1, 4, 7); _tile_dpbusd(2, 5, 6); _tile_dpbusd(3, 5, 7);
    }
    static __thread int32_t out[16 * 16] __attribute__((aligned(64)));
    _tile_stored(0, out, 64);
    _tile_release();
    *sink = (float)out[0];
    return (double)iters * 4 * 16 * 16 * 64 * 2;
}

/* bf16: tdpbf16ps, same layout; 16x16x32 products per instruction */
__attribute__((target("amx-tile,amx-bf16"))) double amx_bf16(int64_t iters, float *sink) {
    static __thread uint16_t buf[16 * 32] __attribute__((aligned(64)));
    for (int k = 0; k < 16 * 32; ++k) buf[k] = 0x3f80;
    amx_config();
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    _tile_loadd(4, buf, 64); _tile_loadd(5, buf, 64); _tile_loadd(6, buf, 64); _tile_loadd(7, buf, 64);
    for (int64_t n = 0; n < iters; ++n) {
        _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
    }
    static __thread float out[16 * 16] __attribute__((aligned(64)));
    _tile_stored(0, out, 64);
    _tile_release();
    *sink = out[0];
    return (double)iters * 4 * 16 * 16 * 32 * 2;
}
#else
double amx_int8(int64_t iters, float *sink) { (void)iters; (void)sink; return -1.0; }
double amx_bf16(int64_t iters, float *sink) { (void)iters; (void)sink; return -1.0; }
#endif

#else /* not x86-64: nothing to measure (peak.py says so) */
int lipt_peak_x86(void) { return 0; }
#endif
