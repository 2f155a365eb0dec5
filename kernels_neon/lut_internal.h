/* What the kernel files share and do not export: the ISA this build targets, the shape of a
 * LUT GEMM, the activation tables' layout, small inline helpers, and the functions each ISA file
 * provides (hidden from the library's users; a test program may call them).
 *
 * Files: lut_ref.c (the scalar _ref twins, always compiled, and the scalar build's fast paths),
 * lut_neon.c (Armv8 NEON), lut_x86.c (AVX2, and AVX-512 for 2 and 4 bits), threadpool.c,
 * lut_gemm.c (the entry points of edgert_kernels.h), i8_gemm.c (the int8 prefill GEMM, its x86
 * kernels) and i8_neon.c (its arm64 kernels), forward.c and bundle_ffn.c (the forward pass of
 * edgert_forward.h, with vec.h's vector helpers), platform.c (what they need of the C library and
 * the OS). Only one ISA file has code in a build. */
#ifndef EDGERT_LUT_INTERNAL_H
#define EDGERT_LUT_INTERNAL_H
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "edgert_kernels.h"
#include "tuning.h"

#if defined(__ARM_NEON)
#include <arm_neon.h>
#include <stdatomic.h>
#include <sys/auxv.h>
#define EDGERT_NEON 1
#define EDGERT_ISA "neon"
#elif defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>
#define EDGERT_AVX2 1
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define EDGERT_AVX512 1
#define EDGERT_ISA "avx512"
#else
#define EDGERT_ISA "avx2"
#endif
#else
#define EDGERT_ISA "scalar"
#endif

#define EDGERT_HIDDEN __attribute__((visibility("hidden")))

/* ---- the C library and the OS (platform.c) ------------------------------------------------ */
/* a check kept in every build: what failed goes to stderr, then abort (the C libraries' own
 * assert calls differ: platform.c) */
EDGERT_HIDDEN void edgert_check_failed(const char *what);
#define EDGERT_CHECK(c) ((c) ? (void)0 : edgert_check_failed(#c " (" __FILE__ ")"))
/* the CPUs this process may run on */
EDGERT_HIDDEN int edgert_cpu_count(void);
/* a 64-byte aligned buffer of at least `bytes` that the calling thread keeps for its next call
 * with the same slot (grown as needed, freed when the thread exits): what a decode step needs,
 * allocated by the first step only. A slot's buffer is live until the caller's next use of
 * that slot, so a function holding one calls nothing that takes the same slot. */
enum {
    EDGERT_SCRATCH_TABLES,  /* lut_gemm.c: activation tables */
    EDGERT_SCRATCH_CODES,   /* i8_gemm.c: quantized activations */
    EDGERT_SCRATCH_FORWARD, /* forward.c: a call's activations */
    EDGERT_SCRATCH_MOE,     /* forward.c: a layer's routing and expert activations */
    EDGERT_SCRATCH_ATTN,    /* attention.c: scores and dequantized rows, per worker */
    EDGERT_SCRATCH_BUNDLE,  /* bundle_ffn.c: decode's partial sums */
    EDGERT_SCRATCH_SLOTS
};
EDGERT_HIDDEN void *edgert_thread_scratch(int slot, size_t bytes);
/* arm64 hwcap bits the tile kernels' levels are chosen by (i8_neon.c) */
#define EDGERT_HWCAP_ASIMDDP (1ul << 20)
#define EDGERT_HWCAP2_I8MM (1ul << 13)
#define T EDGERT_TILE

/* ---- float16 -> float32 (exact) ---------------------------------------------------------- */
static inline float h2f(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ffu, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400u)) { man <<= 1; exp--; }
            bits = sign | (exp << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* x rounded to an integer, ties to even, for |x| < 2^22 (no libm: Android builds link none) */
static inline float round_even(float x) {
    const float magic = 12582912.0f; /* 1.5 * 2^23: the sum's ulp is 1 */
    return (x + magic) - magic;
}

/* ---- float32 -> float16, rounded to nearest, ties to even (numpy's float16 cast) -------- */
static inline uint16_t f2h(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u, a = x & 0x7fffffffu;
    if (a >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (a > 0x7f800000u ? 0x200u : 0u));
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* 65520 and up: infinity */
    if (a < 0x38800000u) {                                    /* below 2^-14: subnormal */
        float v;
        memcpy(&v, &a, 4);
        return (uint16_t)(sign | (uint32_t)round_even(v * 16777216.0f)); /* units of 2^-24 */
    }
    /* rebias the exponent (127 -> 15) and round the 13 dropped bits to even */
    return (uint16_t)(sign | ((a + 0xc8000fffu + ((a >> 13) & 1u)) >> 13));
}

/* ---- a LUT GEMM's shape and the functions that compute it --------------------------------- */
typedef struct {
    int64_t k, kpad, k4, groups;
    int group, bits, fmt;
    int shared_zero; /* EDGERT_FMT_SHARED_ZERO was given: one zero [32] for every tile and group */
} shape_t;
/* a tile kernel: W tile `tile` (32, kpad) of b bit-planes, tables (k4, 32) -> y (32,); a pair
 * kernel: the same for two tiles (of the same or other weights of one shape) at once */
typedef void (*tile_fn)(float *, int64_t, const uint8_t *, const uint16_t *, const uint16_t *,
                        const uint8_t *, const float *, const float *, const shape_t *);
typedef void (*pair_fn)(float *const *, const int64_t *, const uint8_t *const *,
                        const uint16_t *const *, const uint16_t *const *, const uint8_t *,
                        const float *, const float *, const shape_t *);
/* x (k,) -> tbl [k4][32], ts, xs [groups] (see build_tables_ref in lut_ref.c) */
typedef void (*table_fn)(const float *, const shape_t *, uint8_t *, float *, float *);
typedef void (*range_fn)(void *ctx, int64_t begin, int64_t end);

#define MAX_PER 64 /* group <= 256 */
/* the table entries of a group of `per` chunks are rounded to |q| <= TBL_LIMIT(per), so one
 * plane's sums over a group fit int16 (4095 at group 32, 2047 at 64, 1023 at 128) */
#define TBL_LIMIT(per) (32767 / (per))
/* the SIMD table builders take this many groups per pass: each stage runs over all of them, so
 * one group's reduction and scale overlap the next group's work instead of stalling it (k =
 * 4096, group 64: AVX-512 2.2 -> 1.6 us, AVX2 3.1 -> 2.65 us) */
#define TABLE_GROUPS 8

/* bit-planes a weight may have: 1-4 from the quantizers, 5 and 6 for llama.cpp's Q5_0 / Q5_1 /
 * Q5_K / Q6_K imported as they are (the lookups are per plane, so any width works; a plane sum
 * shifted by 5 stays far inside int32) */
#define EDGERT_MAX_BITS 6

static inline int make_shape(shape_t *s, int64_t k, int32_t bits, int32_t group, int32_t fmt) {
    if (bits < 1 || bits > EDGERT_MAX_BITS || group < 4 || group % 4 || group > 4 * MAX_PER || k < 1) return 0;
    const int shared_zero = (fmt & EDGERT_FMT_SHARED_ZERO) != 0;
    fmt &= ~EDGERT_FMT_SHARED_ZERO;
    if (fmt != EDGERT_FMT_UNIFORM && fmt != EDGERT_FMT_HLQ) return 0;
    s->k = k;
    s->groups = (k + group - 1) / group;
    s->kpad = s->groups * group;
    s->k4 = s->kpad / 4;
    s->group = group;
    s->bits = bits;
    s->fmt = fmt;
    s->shared_zero = shared_zero;
    return 1;
}

/* the prefetch distance for the weight streams of u (1 or 2) tiles in turn: the tuned one, but at
 * most half a tile's planes, so a small matrix split over threads does not read much past a
 * thread's tiles (2-thread decode of SmolLM2 lost 9% to full-length prefetches) */
static inline int64_t prefetch_ahead(const shape_t *s, int u) {
    const int64_t half = s->k4 * s->bits * 8;
    const int64_t want = u == 1 ? EDGERT_PREFETCH_BYTES : EDGERT_PAIR_PREFETCH_BYTES;
    return half < want ? (half + 63) / 64 * 64 : want;
}

static inline void chunk_x(float v[4], const float *x, int64_t c, int64_t k) {
    for (int i = 0; i < 4; i++) v[i] = 4 * c + i < k ? x[4 * c + i] : 0.f;
}

/* chunk c's four activations: in x itself, or (the last, partial chunk) zero-padded in v */
static inline const float *chunk_at(float v[4], const float *x, int64_t c, int64_t k) {
    if (4 * c + 4 <= k) return x + 4 * c;
    chunk_x(v, x, c, k);
    return v;
}

/* a group's table scale ts = amax / lim and sum of x (every builder); returns lim / amax, the
 * factor its partial sums are rounded with */
static inline float group_scale(float amax, float sum, int lim, float *ts, float *xs) {
    *ts = amax / (float)lim;
    *xs = sum;
    return amax > 0.f ? (float)lim / amax : 0.f;
}

static inline int32_t tbl_value(const uint8_t *tb, int idx) { /* the int16 entry idx */
    return (int32_t)(int8_t)tb[idx] * 256 + (int32_t)tb[16 + idx];
}

static inline const uint16_t *scale_at(const uint16_t *scale, int64_t tile, int64_t g,
                                       const shape_t *s) {
    int per = s->fmt == EDGERT_FMT_HLQ ? s->bits : 1;
    return scale + ((tile * s->groups + g) * per) * T;
}

static inline const uint16_t *zero_at(const uint16_t *zero, int64_t tile, int64_t g,
                                      const shape_t *s) {
    return s->shared_zero ? zero : zero + (tile * s->groups + g) * T;
}

/* ---- weights of one shape family (same k, bits, group, format) applied to the same x --------- */
/* up to EDGERT_MAX_MULTI of them, their tiles numbered one after the other (first[j] ..
 * first[j+1]); y[j] (n, m[j]) receives weight j's rows */
typedef struct {
    int count;
    float *y[EDGERT_MAX_MULTI];
    int64_t m[EDGERT_MAX_MULTI], first[EDGERT_MAX_MULTI + 1];
    const uint8_t *planes[EDGERT_MAX_MULTI];
    const uint16_t *scale[EDGERT_MAX_MULTI], *zero[EDGERT_MAX_MULTI];
} family_t;

/* f = the count weights (checked: EDGERT_CHECK); returns their tiles in all */
static inline int64_t make_family(family_t *f, int count, float *const *y, const int64_t *m,
                                  const uint8_t *const *planes, const uint16_t *const *scale,
                                  const uint16_t *const *zero) {
    EDGERT_CHECK(y && planes && scale && zero && count >= 1 && count <= EDGERT_MAX_MULTI);
    f->count = count;
    f->first[0] = 0;
    for (int j = 0; j < count; j++) {
        EDGERT_CHECK(y[j] && planes[j] && scale[j] && zero[j] && m[j] >= 0);
        f->y[j] = y[j];
        f->m[j] = m[j];
        f->planes[j] = planes[j];
        f->scale[j] = scale[j];
        f->zero[j] = zero[j];
        f->first[j + 1] = f->first[j] + (m[j] + T - 1) / T;
    }
    return f->first[count];
}

/* tile g of the family: weight j, tile t of it */
static inline void locate(const family_t *f, int64_t g, int *j, int64_t *t) {
    int w = 0;
    while (g >= f->first[w + 1]) w++;
    *j = w;
    *t = g - f->first[w];
}

/* ---- 8-bit rows (see lut_gemm.c) --------------------------------------------------------- */
typedef struct {
    float *y;
    const int16_t *xq;    /* [n][kpad] */
    const float *xscale;  /* [n] */
    int64_t n, m, kpad;
    const int8_t *q;
    const float *scale;
} q8_ctx;

/* a row's dot product: blocks of 32 summed exactly in int32, then in float block by block */
static inline float q8_row_ref(const int16_t *xq, const int8_t *q, const float *sc, int64_t kpad) {
    float acc = 0.f;
    for (int64_t b = 0; b * 32 < kpad; b++) {
        int32_t s = 0;
        for (int64_t i = b * 32; i < b * 32 + 32; i++) s += (int32_t)xq[i] * (int32_t)q[i];
        acc += (float)s * sc[b];
    }
    return acc;
}

/* rows r0 .. r0+nr-1 (nr <= 2 share the activation loads) -> out[0 .. nr-1] */
typedef void (*q8_rows_fn)(float *out, const int16_t *xq, const int8_t *q, const float *sc,
                           int64_t kpad, int nr);

/* rows [begin, end) of a q8 GEMM in pairs (each ISA file instantiates it with its rows) */
static inline __attribute__((always_inline)) void q8_range_with(const q8_ctx *c, int64_t begin,
                                                                int64_t end, q8_rows_fn rows) {
    const int64_t nb = c->kpad / 32;
    for (int64_t r = begin; r < end; r += 2) {
        const int nr = r + 1 < end ? 2 : 1;
        for (int64_t i = 0; i < c->n; i++) {
            float out[2];
            rows(out, c->xq + i * c->kpad, c->q + r * c->kpad, c->scale + r * nb, c->kpad, nr);
            for (int j = 0; j < nr; j++) c->y[i * c->m + r + j] = out[j] * c->xscale[i];
        }
    }
}

/* ---- what each file provides ------------------------------------------------------------- */
/* lut_ref.c: the scalar twins */
EDGERT_HIDDEN void edgert_build_tables_ref(const float *x, const shape_t *s, uint8_t *tbl,
                                           float *ts, float *xs);
EDGERT_HIDDEN void edgert_tile_ref(float *y, int64_t tile, const uint8_t *planes,
                                   const uint16_t *scale, const uint16_t *zero,
                                   const uint8_t *tbl, const float *ts, const float *xs,
                                   const shape_t *s);
/* the ISA file of this build (lut_ref.c in a scalar build): the fast paths, bit-identical to the
 * twins above; edgert_pair_of gives a shape's pair kernel, or NULL (tiles go one at a time) */
EDGERT_HIDDEN void edgert_build_tables_fast(const float *x, const shape_t *s, uint8_t *tbl,
                                            float *ts, float *xs);
EDGERT_HIDDEN void edgert_tile_fast(float *y, int64_t tile, const uint8_t *planes,
                                    const uint16_t *scale, const uint16_t *zero,
                                    const uint8_t *tbl, const float *ts, const float *xs,
                                    const shape_t *s);
EDGERT_HIDDEN pair_fn edgert_pair_of(const shape_t *s);
/* q8 rows [begin, end) of the q8_ctx at ctx (a parallel range function) */
EDGERT_HIDDEN void edgert_q8_range_fast(void *ctx, int64_t begin, int64_t end);
/* reads p[lo, hi) with wide loads; a checksum of the bytes */
EDGERT_HIDDEN uint64_t edgert_read_block(const uint8_t *p, int64_t lo, int64_t hi);
/* i8_gemm.c: a family of uniform weights (shape s) times x (n, k) by int8 dot products on
 * unpacked tiles (fast: this build's SIMD kernel, else the scalar twin) */
EDGERT_HIDDEN void edgert_i8_gemm_impl(const family_t *w, const float *x, int64_t n,
                                       const shape_t *s, int32_t threads, int fast);
/* the widest codes this build's int8 kernel sums exactly (wider ones take the LUT path) */
EDGERT_HIDDEN int edgert_i8_max_bits(void);
/* whether this build has a SIMD int8 kernel (the LUT path serves prefill otherwise) */
#if defined(EDGERT_AVX2) || defined(EDGERT_NEON)
#define EDGERT_I8_FAST 1
#else
#define EDGERT_I8_FAST 0
#endif
/* threadpool.c: n items in chunks of n / (per_thread x threads), taken in turn by whichever
 * thread is free (threads <= 0: $EDGERT_THREADS or all cores); parallel_for: per_thread 4 */
EDGERT_HIDDEN void edgert_parallel_chunks(int64_t n, int threads, int per_thread, range_fn fn,
                                          void *ctx);
EDGERT_HIDDEN void edgert_parallel_for(int64_t n, int threads, range_fn fn, void *ctx);
/* the threads a parallel section asked for `threads` gets at most (threads <= 0: the default) */
EDGERT_HIDDEN int edgert_threads(int threads);

/* ---- the int8 GEMM's tile kernels (i8_gemm.c, i8_neon.c) ---------------------------------- */
typedef void (*i8_kernel_fn)(float *y, int64_t ldy, const uint8_t *codes, const float *sc, const float *sz,
                             const int8_t *x8, const float *d, const float *dsx, int64_t na,
                             const shape_t *s);
EDGERT_HIDDEN void edgert_i8_kernel_ref(float *y, int64_t ldy, const uint8_t *codes,
                                       const float *sc, const float *sz, const int8_t *x8,
                                       const float *d, const float *dsx, int64_t na,
                                       const shape_t *s);
/* arm64: a tile's codes [k4][32][4] from its bit-planes; the tile kernel for this CPU's level
 * ("neon", "neon-dotprod" or "neon-i8mm": edgert_i8_neon_name) */
EDGERT_HIDDEN void edgert_i8_unpack_neon(uint8_t *codes, const uint8_t *planes, int64_t tile,
                                        const shape_t *s);
EDGERT_HIDDEN i8_kernel_fn edgert_i8_neon_kernel(const shape_t *s);
EDGERT_HIDDEN const char *edgert_i8_neon_name(void);
#endif
