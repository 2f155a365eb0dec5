/* LUT GEMM / GEMV for bit-plane weights (see edgert_kernels.h for the formats).
 *
 * Every fast path has a scalar _ref twin, always compiled; both share the table builder and the
 * float epilogue order, so results are bit-identical (build with -ffp-contract=off).
 * Define EDGERT_KERNELS_NO_MAIN_API to #include this file into a test program.
 */
#include "edgert_kernels.h"

#include <assert.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__ARM_NEON)
#include <arm_neon.h>
#define EDGERT_ISA "neon"
#elif defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>
#define EDGERT_ISA "avx2"
#else
#define EDGERT_ISA "scalar"
#endif

#define T EDGERT_TILE

const char *edgert_kernels_isa(void) { return EDGERT_ISA; }

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

/* ---- activation tables --------------------------------------------------------------------- */
typedef struct {
    int64_t k, kpad, k4, groups;
    int group, bits, fmt;
} shape_t;

/* x (k,) -> tbl [k4][32]: each 16-entry table of partial sums as int16 v = 256 * hi + lo, stored
 * as hi bytes (int8, [0..15]) then lo bytes (uint8, [16..31]); ts [groups] table scale (amax /
 * 32767), xs [groups] sum of x. 16-bit tables keep the kernel error at ~1e-5 relative. */
static void build_tables(const float *x, const shape_t *s, uint8_t *tbl, float *ts, float *xs) {
    const int per = s->group / 4;
    for (int64_t g = 0; g < s->groups; g++) {
        float amax = 0.f, sum = 0.f;
        for (int64_t c = g * per; c < (g + 1) * per; c++) {
            float pos = 0.f, neg = 0.f;  /* largest |partial sum| = max(sum of +, -sum of -) */
            for (int i = 0; i < 4; i++) {
                int64_t col = 4 * c + i;
                float v = col < s->k ? x[col] : 0.f;
                sum += v;
                if (v > 0.f) pos += v; else neg -= v;
            }
            if (pos > amax) amax = pos;
            if (neg > amax) amax = neg;
        }
        float inv = amax > 0.f ? 32767.f / amax : 0.f;
        ts[g] = amax / 32767.f;
        xs[g] = sum;
        for (int64_t c = g * per; c < (g + 1) * per; c++) {
            float v[4];
            for (int i = 0; i < 4; i++) {
                int64_t col = 4 * c + i;
                v[i] = col < s->k ? x[col] : 0.f;
            }
            for (int idx = 0; idx < 16; idx++) {
                float a = 0.f;
                for (int i = 0; i < 4; i++)
                    if (idx >> i & 1) a += v[i];
                long q = lrintf(a * inv);
                q = q > 32767 ? 32767 : (q < -32767 ? -32767 : q);
                tbl[c * 32 + idx] = (uint8_t)(int8_t)(q >> 8);   /* floor(q / 256) */
                tbl[c * 32 + 16 + idx] = (uint8_t)(q & 255);
            }
        }
    }
}

static inline int32_t tbl_value(const uint8_t *tb, int idx) {
    return (int32_t)(int8_t)tb[idx] * 256 + (int32_t)tb[16 + idx];
}

/* ---- epilogue: int32 plane sums of 32 rows of one group -> y (shared by every path) -------- */
/* acc [bits][32]; sc/zr point at this tile+group's parameters */
static inline void epilogue_ref(float *y, const int32_t *acc, const uint16_t *sc,
                                const uint16_t *zr, float ts, float xs, const shape_t *s) {
    for (int r = 0; r < T; r++) {
        if (s->fmt == EDGERT_FMT_UNIFORM) {
            int32_t tot = 0;
            for (int j = 0; j < s->bits; j++) tot += acc[j * T + r] * (1 << j);
            float t1 = ts * (float)tot, t2 = h2f(zr[r]) * xs;
            y[r] += h2f(sc[r]) * (t1 - t2);
        } else {
            float a = 0.f;
            for (int j = 0; j < s->bits; j++) a += h2f(sc[j * T + r]) * (float)acc[j * T + r];
            float t1 = ts * a, t2 = h2f(zr[r]) * xs;
            y[r] += t1 + t2;
        }
    }
}

static inline const uint16_t *scale_at(const uint16_t *scale, int64_t tile, int64_t g,
                                       const shape_t *s) {
    int per = s->fmt == EDGERT_FMT_HLQ ? s->bits : 1;
    return scale + ((tile * s->groups + g) * per) * T;
}
static inline const uint16_t *zero_at(const uint16_t *zero, int64_t tile, int64_t g,
                                      const shape_t *s) {
    return zero + (tile * s->groups + g) * T;
}

/* ---- one tile, scalar ---------------------------------------------------------------------- */
// W tile (32, kpad) bit-planes, tables (k4, 32) -> y (32,)
static void tile_ref(float *y, int64_t tile, const uint8_t *planes, const uint16_t *scale,
                     const uint16_t *zero, const uint8_t *tbl, const float *ts, const float *xs,
                     const shape_t *s) {
    const int per = s->group / 4, b = s->bits;
    int32_t acc[4 * T];
    for (int r = 0; r < T; r++) y[r] = 0.f;
    for (int64_t g = 0; g < s->groups; g++) {
        memset(acc, 0, sizeof acc);
        for (int64_t c = g * per; c < (g + 1) * per; c++) {
            const uint8_t *tb = tbl + c * 32;
            for (int j = 0; j < b; j++) {
                const uint8_t *p = planes + ((tile * s->k4 + c) * b + j) * 16;
                for (int i = 0; i < 16; i++) {
                    acc[j * T + i] += tbl_value(tb, p[i] & 15);
                    acc[j * T + i + 16] += tbl_value(tb, p[i] >> 4);
                }
            }
        }
        epilogue_ref(y, acc, scale_at(scale, tile, g, s), zero_at(zero, tile, g, s), ts[g], xs[g],
                     s);
    }
}

/* ---- one tile, SIMD ------------------------------------------------------------------------ */
/* Per group and plane: look up the high (signed) and low (unsigned) table bytes for 32 rows, sum
 * them in 16-bit lanes over the group, combine to int32 (256 * hi + lo) in acc[plane][row]; then
 * the vector epilogue (same float operations, in the same order, as epilogue_ref). */
#if defined(__ARM_NEON)
static inline void planes_neon(int32_t *acc, const uint8_t *p, int64_t stride, const uint8_t *tbl,
                               int per) {
    const uint8x16_t m15 = vdupq_n_u8(15);
    int16x8_t h[4] = {vdupq_n_s16(0), vdupq_n_s16(0), vdupq_n_s16(0), vdupq_n_s16(0)};
    uint16x8_t l[4] = {vdupq_n_u16(0), vdupq_n_u16(0), vdupq_n_u16(0), vdupq_n_u16(0)};
    for (int c = 0; c < per; c++, p += stride, tbl += 32) {
        const int8x16_t th = vld1q_s8((const int8_t *)tbl);
        const uint8x16_t tl = vld1q_u8(tbl + 16);
        const uint8x16_t pk = vld1q_u8(p);
        const uint8x16_t lo = vandq_u8(pk, m15), hi = vshrq_n_u8(pk, 4);
        const int8x16_t a = vqtbl1q_s8(th, lo), c2 = vqtbl1q_s8(th, hi);
        const uint8x16_t b = vqtbl1q_u8(tl, lo), d = vqtbl1q_u8(tl, hi);
        h[0] = vaddw_s8(h[0], vget_low_s8(a));
        h[1] = vaddw_high_s8(h[1], a);
        h[2] = vaddw_s8(h[2], vget_low_s8(c2));
        h[3] = vaddw_high_s8(h[3], c2);
        l[0] = vaddw_u8(l[0], vget_low_u8(b));
        l[1] = vaddw_high_u8(l[1], b);
        l[2] = vaddw_u8(l[2], vget_low_u8(d));
        l[3] = vaddw_high_u8(l[3], d);
    }
    for (int q = 0; q < 4; q++) {  // rows 8q .. 8q+7
        int32x4_t h0 = vmovl_s16(vget_low_s16(h[q])), h1 = vmovl_high_s16(h[q]);
        int32x4_t l0 = vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(l[q])));
        int32x4_t l1 = vreinterpretq_s32_u32(vmovl_high_u16(l[q]));
        vst1q_s32(acc + 8 * q, vaddq_s32(vshlq_n_s32(h0, 8), l0));
        vst1q_s32(acc + 8 * q + 4, vaddq_s32(vshlq_n_s32(h1, 8), l1));
    }
}

static void tile_fast(float *y, int64_t tile, const uint8_t *planes, const uint16_t *scale,
                      const uint16_t *zero, const uint8_t *tbl, const float *ts, const float *xs,
                      const shape_t *s) {
    const int per = s->group / 4, b = s->bits;
    float32x4_t yv[8];
    int32_t acc[4 * T];
    for (int i = 0; i < 8; i++) yv[i] = vdupq_n_f32(0.f);
    for (int64_t g = 0; g < s->groups; g++) {
        const uint8_t *p = planes + (tile * s->k4 + g * per) * b * 16;
        for (int j = 0; j < b; j++)
            planes_neon(acc + j * T, p + j * 16, (int64_t)b * 16, tbl + g * per * 32, per);
        const uint16_t *sc = scale_at(scale, tile, g, s), *zr = zero_at(zero, tile, g, s);
        const float32x4_t tsv = vdupq_n_f32(ts[g]), xsv = vdupq_n_f32(xs[g]);
        for (int q = 0; q < 8; q++) {  // 4 rows at a time
            const float32x4_t z = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(zr + 4 * q)));
            if (s->fmt == EDGERT_FMT_UNIFORM) {
                int32x4_t tot = vld1q_s32(acc + 4 * q);
                for (int j = 1; j < b; j++)
                    tot = vaddq_s32(tot, vshlq_s32(vld1q_s32(acc + j * T + 4 * q), vdupq_n_s32(j)));
                const float32x4_t sv = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(sc + 4 * q)));
                float32x4_t t1 = vmulq_f32(tsv, vcvtq_f32_s32(tot));
                float32x4_t t2 = vmulq_f32(z, xsv);
                yv[q] = vaddq_f32(yv[q], vmulq_f32(sv, vsubq_f32(t1, t2)));
            } else {
                float32x4_t a = vdupq_n_f32(0.f);
                for (int j = 0; j < b; j++) {
                    const float32x4_t al =
                        vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(sc + j * T + 4 * q)));
                    a = vaddq_f32(a, vmulq_f32(al, vcvtq_f32_s32(vld1q_s32(acc + j * T + 4 * q))));
                }
                float32x4_t t1 = vmulq_f32(tsv, a), t2 = vmulq_f32(z, xsv);
                yv[q] = vaddq_f32(yv[q], vaddq_f32(t1, t2));
            }
        }
    }
    for (int q = 0; q < 8; q++) vst1q_f32(y + 4 * q, yv[q]);
}
#elif defined(__AVX2__) && defined(__F16C__)
static inline void planes_avx2(int32_t *acc, const uint8_t *p, int64_t stride, const uint8_t *tbl,
                               int per) {
    const __m128i m15 = _mm_set1_epi8(15);
    __m256i h0 = _mm256_setzero_si256(), h1 = h0, l0 = h0, l1 = h0;  // rows 0-15 / 16-31
    for (int c = 0; c < per; c++, p += stride, tbl += 32) {
        const __m256i tb = _mm256_loadu_si256((const __m256i *)tbl);  // lane0 hi, lane1 lo bytes
        const __m128i pk = _mm_loadu_si128((const __m128i *)p);
        const __m128i lo = _mm_and_si128(pk, m15);
        const __m128i hi = _mm_and_si128(_mm_srli_epi16(pk, 4), m15);
        const __m256i va = _mm256_shuffle_epi8(tb, _mm256_set_m128i(lo, lo));  // rows 0-15
        const __m256i vb = _mm256_shuffle_epi8(tb, _mm256_set_m128i(hi, hi));  // rows 16-31
        h0 = _mm256_add_epi16(h0, _mm256_cvtepi8_epi16(_mm256_castsi256_si128(va)));
        l0 = _mm256_add_epi16(l0, _mm256_cvtepu8_epi16(_mm256_extracti128_si256(va, 1)));
        h1 = _mm256_add_epi16(h1, _mm256_cvtepi8_epi16(_mm256_castsi256_si128(vb)));
        l1 = _mm256_add_epi16(l1, _mm256_cvtepu8_epi16(_mm256_extracti128_si256(vb, 1)));
    }
    const __m256i hs[2] = {h0, h1}, ls[2] = {l0, l1};
    for (int q = 0; q < 4; q++) {  // rows 8q .. 8q+7
        const __m128i hq = (q & 1) ? _mm256_extracti128_si256(hs[q >> 1], 1)
                                   : _mm256_castsi256_si128(hs[q >> 1]);
        const __m128i lq = (q & 1) ? _mm256_extracti128_si256(ls[q >> 1], 1)
                                   : _mm256_castsi256_si128(ls[q >> 1]);
        const __m256i v = _mm256_add_epi32(_mm256_slli_epi32(_mm256_cvtepi16_epi32(hq), 8),
                                           _mm256_cvtepu16_epi32(lq));
        _mm256_storeu_si256((__m256i *)(acc + 8 * q), v);
    }
}

static void tile_fast(float *y, int64_t tile, const uint8_t *planes, const uint16_t *scale,
                      const uint16_t *zero, const uint8_t *tbl, const float *ts, const float *xs,
                      const shape_t *s) {
    const int per = s->group / 4, b = s->bits;
    __m256 yv[4];
    int32_t acc[4 * T];
    for (int i = 0; i < 4; i++) yv[i] = _mm256_setzero_ps();
    for (int64_t g = 0; g < s->groups; g++) {
        const uint8_t *p = planes + (tile * s->k4 + g * per) * b * 16;
        for (int j = 0; j < b; j++)
            planes_avx2(acc + j * T, p + j * 16, (int64_t)b * 16, tbl + g * per * 32, per);
        const uint16_t *sc = scale_at(scale, tile, g, s), *zr = zero_at(zero, tile, g, s);
        const __m256 tsv = _mm256_set1_ps(ts[g]), xsv = _mm256_set1_ps(xs[g]);
        for (int q = 0; q < 4; q++) {  // 8 rows at a time
            const __m256 z = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(zr + 8 * q)));
            if (s->fmt == EDGERT_FMT_UNIFORM) {
                __m256i tot = _mm256_loadu_si256((const __m256i *)(acc + 8 * q));
                for (int j = 1; j < b; j++)
                    tot = _mm256_add_epi32(
                        tot, _mm256_slli_epi32(
                                 _mm256_loadu_si256((const __m256i *)(acc + j * T + 8 * q)), j));
                const __m256 sv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sc + 8 * q)));
                const __m256 t1 = _mm256_mul_ps(tsv, _mm256_cvtepi32_ps(tot));
                const __m256 t2 = _mm256_mul_ps(z, xsv);
                yv[q] = _mm256_add_ps(yv[q], _mm256_mul_ps(sv, _mm256_sub_ps(t1, t2)));
            } else {
                __m256 a = _mm256_setzero_ps();
                for (int j = 0; j < b; j++) {
                    const __m256 al =
                        _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sc + j * T + 8 * q)));
                    const __m256i aj = _mm256_loadu_si256((const __m256i *)(acc + j * T + 8 * q));
                    a = _mm256_add_ps(a, _mm256_mul_ps(al, _mm256_cvtepi32_ps(aj)));
                }
                const __m256 t1 = _mm256_mul_ps(tsv, a), t2 = _mm256_mul_ps(z, xsv);
                yv[q] = _mm256_add_ps(yv[q], _mm256_add_ps(t1, t2));
            }
        }
    }
    for (int q = 0; q < 4; q++) _mm256_storeu_ps(y + 8 * q, yv[q]);
}
#else
#define tile_fast tile_ref
#endif

/* ---- a small persistent thread pool ------------------------------------------------------ */
typedef void (*range_fn)(void *ctx, int64_t begin, int64_t end);
enum { MAX_THREADS = 64 };
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int nworkers;
    uint64_t generation;
    range_fn fn;
    void *ctx;
    int64_t n, chunk;
    atomic_llong next;
    atomic_int busy;  // workers that may still be running chunks of the current job
    int active;       // workers allowed to join the current job
    int started;      // workers that joined it
} pool = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static void run_chunks(void) {
    for (;;) {
        int64_t b = atomic_fetch_add(&pool.next, pool.chunk);
        if (b >= pool.n) break;
        int64_t e = b + pool.chunk < pool.n ? b + pool.chunk : pool.n;
        pool.fn(pool.ctx, b, e);
    }
}

static void *worker(void *arg) {
    (void)arg;
    uint64_t seen = 0;
    for (;;) {
        pthread_mutex_lock(&pool.mu);
        while (pool.generation == seen) pthread_cond_wait(&pool.cv, &pool.mu);
        seen = pool.generation;
        int take = pool.started < pool.active;
        if (take) pool.started++;
        pthread_mutex_unlock(&pool.mu);
        if (take) {
            run_chunks();
            atomic_fetch_sub(&pool.busy, 1);
        }
    }
    return NULL;
}

static int default_threads(void) {
    static int n = 0;
    if (!n) {
        const char *e = getenv("EDGERT_THREADS");
        n = e && atoi(e) > 0 ? atoi(e) : (int)sysconf(_SC_NPROCESSORS_ONLN);
        if (n < 1) n = 1;
        if (n > MAX_THREADS) n = MAX_THREADS;
    }
    return n;
}

static pthread_mutex_t job_mu = PTHREAD_MUTEX_INITIALIZER;

static void parallel_for(int64_t n, int threads, range_fn fn, void *ctx) {
    if (threads <= 0) threads = default_threads();
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > n) threads = (int)n;
    if (threads <= 1) {
        fn(ctx, 0, n);
        return;
    }
    pthread_mutex_lock(&job_mu);  // one job at a time through the pool
    pthread_mutex_lock(&pool.mu);
    while (pool.nworkers < threads - 1) {
        pthread_t th;
        if (pthread_create(&th, NULL, worker, NULL) != 0) break;
        pthread_detach(th);
        pool.nworkers++;
    }
    int helpers = threads - 1 < pool.nworkers ? threads - 1 : pool.nworkers;
    pool.fn = fn;
    pool.ctx = ctx;
    pool.n = n;
    pool.chunk = (n + 4 * threads - 1) / (4 * threads);
    atomic_store(&pool.next, 0);
    atomic_store(&pool.busy, helpers);
    pool.active = helpers;
    pool.started = 0;
    pool.generation++;
    pthread_cond_broadcast(&pool.cv);
    pthread_mutex_unlock(&pool.mu);
    run_chunks();
    /* close the job: helpers that have not woken yet (a busy machine) are not waited for */
    pthread_mutex_lock(&pool.mu);
    atomic_fetch_sub(&pool.busy, pool.active - pool.started);
    pool.active = pool.started;
    pthread_mutex_unlock(&pool.mu);
    while (atomic_load(&pool.busy) > 0) sched_yield();
    pthread_mutex_unlock(&job_mu);
}

/* ---- GEMM ---------------------------------------------------------------------------------- */
typedef void (*tile_fn)(float *, int64_t, const uint8_t *, const uint16_t *, const uint16_t *,
                        const uint8_t *, const float *, const float *, const shape_t *);
typedef struct {
    float *y;
    int64_t n, m;
    const uint8_t *planes;
    const uint16_t *scale, *zero;
    const uint8_t *tbl;  // [n][k4][32]
    const float *ts, *xs;  // [n][groups]
    const shape_t *s;
    tile_fn tile;
} gemm_ctx;

static void gemm_range(void *vctx, int64_t begin, int64_t end) {
    gemm_ctx *c = vctx;
    const shape_t *s = c->s;
    float buf[T];
    for (int64_t t = begin; t < end; t++) {
        for (int64_t i = 0; i < c->n; i++) {
            c->tile(buf, t, c->planes, c->scale, c->zero, c->tbl + i * s->k4 * 32,
                    c->ts + i * s->groups, c->xs + i * s->groups, s);
            int64_t rows = c->m - t * T < T ? c->m - t * T : T;
            memcpy(c->y + i * c->m + t * T, buf, rows * sizeof(float));
        }
    }
}

static int make_shape(shape_t *s, int64_t k, int32_t bits, int32_t group, int32_t fmt) {
    if (bits < 1 || bits > 4 || group < 4 || group % 4 || group > 256 || k < 1) return 0;
    if (fmt != EDGERT_FMT_UNIFORM && fmt != EDGERT_FMT_HLQ) return 0;
    s->k = k;
    s->groups = (k + group - 1) / group;
    s->kpad = s->groups * group;
    s->k4 = s->kpad / 4;
    s->group = group;
    s->bits = bits;
    s->fmt = fmt;
    return 1;
}

static void gemm_impl(float *y, const float *x, int64_t n, int64_t m, int64_t k,
                      const uint8_t *planes, const uint16_t *scale, const uint16_t *zero,
                      int32_t bits, int32_t group, int32_t fmt, int32_t threads, tile_fn tile) {
    shape_t s;
    assert(y && x && planes && scale && zero && n >= 0 && m >= 0);
    if (!make_shape(&s, k, bits, group, fmt)) abort();  // validated by the caller
    if (n == 0 || m == 0) return;
    uint8_t *tbl = malloc((size_t)(n * s.k4 * 32));
    float *ts = malloc((size_t)(n * s.groups) * sizeof(float));
    float *xs = malloc((size_t)(n * s.groups) * sizeof(float));
    if (!tbl || !ts || !xs) abort();
    for (int64_t i = 0; i < n; i++)
        build_tables(x + i * k, &s, tbl + i * s.k4 * 32, ts + i * s.groups, xs + i * s.groups);
    gemm_ctx c = {y, n, m, planes, scale, zero, tbl, ts, xs, &s, tile};
    parallel_for((m + T - 1) / T, threads, gemm_range, &c);
    free(tbl);
    free(ts);
    free(xs);
}

void edgert_lut_gemm(float *y, const float *x, int64_t n, int64_t m, int64_t k,
                     const uint8_t *planes, const uint16_t *scale, const uint16_t *zero,
                     int32_t bits, int32_t group, int32_t fmt, int32_t threads) {
    gemm_impl(y, x, n, m, k, planes, scale, zero, bits, group, fmt, threads, tile_fast);
}

void edgert_lut_gemm_ref(float *y, const float *x, int64_t n, int64_t m, int64_t k,
                         const uint8_t *planes, const uint16_t *scale, const uint16_t *zero,
                         int32_t bits, int32_t group, int32_t fmt, int32_t threads) {
    gemm_impl(y, x, n, m, k, planes, scale, zero, bits, group, fmt, threads, tile_ref);
}

/* ---- row-subset GEMV: only the tiles holding selected rows are computed ------------------- */
static void gemv_rows_impl(float *y, const float *x, int64_t m, int64_t k, const int32_t *rows,
                           int64_t r, const uint8_t *planes, const uint16_t *scale,
                           const uint16_t *zero, int32_t bits, int32_t group, int32_t fmt,
                           int32_t threads, tile_fn tile) {
    shape_t s;
    (void)threads;
    if (!make_shape(&s, k, bits, group, fmt)) abort();
    uint8_t *tbl = malloc((size_t)(s.k4 * 32));
    float *ts = malloc((size_t)s.groups * sizeof(float)), *xs = malloc((size_t)s.groups * sizeof(float));
    if (!tbl || !ts || !xs) abort();
    build_tables(x, &s, tbl, ts, xs);
    float buf[T];
    int64_t last = -1;
    for (int64_t i = 0; i < r; i++) {
        assert(rows[i] >= 0 && rows[i] < m);
        int64_t t = rows[i] / T;
        if (t != last) {
            tile(buf, t, planes, scale, zero, tbl, ts, xs, &s);
            last = t;
        }
        y[i] = buf[rows[i] % T];
    }
    free(tbl);
    free(ts);
    free(xs);
}

void edgert_lut_gemv_rows(float *y, const float *x, int64_t m, int64_t k, const int32_t *rows,
                          int64_t r, const uint8_t *planes, const uint16_t *scale,
                          const uint16_t *zero, int32_t bits, int32_t group, int32_t fmt,
                          int32_t threads) {
    gemv_rows_impl(y, x, m, k, rows, r, planes, scale, zero, bits, group, fmt, threads, tile_fast);
}

void edgert_lut_gemv_rows_ref(float *y, const float *x, int64_t m, int64_t k,
                              const int32_t *rows, int64_t r, const uint8_t *planes,
                              const uint16_t *scale, const uint16_t *zero, int32_t bits,
                              int32_t group, int32_t fmt, int32_t threads) {
    gemv_rows_impl(y, x, m, k, rows, r, planes, scale, zero, bits, group, fmt, threads, tile_ref);
}

/* ---- 8-bit rows (token embeddings / output head): y (n, m) = x (n, k) . dequant(q)^T ------- */
/* q int8 [m][kpad], scale float [m][kpad/32]: w = q * scale of its 32-column block */
typedef struct {
    float *y;
    const float *x;
    int64_t n, m, k, kpad;
    const int8_t *q;
    const float *scale;
} q8_ctx;

static inline float q8_row_ref(const float *x, const int8_t *q, const float *sc, int64_t k) {
    float acc = 0.f;
    for (int64_t b = 0; b * 32 < k; b++) {
        float s = 0.f;
        for (int64_t i = b * 32; i < b * 32 + 32 && i < k; i++) s += x[i] * (float)q[i];
        acc += s * sc[b];
    }
    return acc;
}

static inline float q8_row_fast(const float *x, const int8_t *q, const float *sc, int64_t k) {
#if defined(__AVX2__)
    __m256 acc = _mm256_setzero_ps();
    int64_t b = 0;
    for (; (b + 1) * 32 <= k; b++) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(q + b * 32));
        __m256 s = _mm256_setzero_ps();
        for (int h = 0; h < 4; h++) {
            const __m128i part = h < 2 ? _mm256_castsi256_si128(v) : _mm256_extracti128_si256(v, 1);
            const __m128i p8 = (h & 1) ? _mm_srli_si128(part, 8) : part;
            const __m256 w = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(p8));
            s = _mm256_add_ps(s, _mm256_mul_ps(w, _mm256_loadu_ps(x + b * 32 + 8 * h)));
        }
        acc = _mm256_add_ps(acc, _mm256_mul_ps(s, _mm256_set1_ps(sc[b])));
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, acc);
    float r = 0.f;
    for (int i = 0; i < 8; i++) r += lanes[i];
    if (b * 32 < k) r += q8_row_ref(x + b * 32, q + b * 32, sc + b, k - b * 32);
    return r;
#elif defined(__ARM_NEON)
    float32x4_t acc = vdupq_n_f32(0.f);
    int64_t b = 0;
    for (; (b + 1) * 32 <= k; b++) {
        float32x4_t s = vdupq_n_f32(0.f);
        for (int h = 0; h < 2; h++) {
            const int8x16_t v = vld1q_s8(q + b * 32 + 16 * h);
            const int16x8_t lo = vmovl_s8(vget_low_s8(v)), hi = vmovl_high_s8(v);
            const int16x8_t p[2] = {lo, hi};
            for (int j = 0; j < 2; j++) {
                const float32x4_t w0 = vcvtq_f32_s32(vmovl_s16(vget_low_s16(p[j])));
                const float32x4_t w1 = vcvtq_f32_s32(vmovl_high_s16(p[j]));
                const float *xp = x + b * 32 + 16 * h + 8 * j;
                s = vaddq_f32(s, vmulq_f32(w0, vld1q_f32(xp)));
                s = vaddq_f32(s, vmulq_f32(w1, vld1q_f32(xp + 4)));
            }
        }
        acc = vaddq_f32(acc, vmulq_f32(s, vdupq_n_f32(sc[b])));
    }
    float r = vaddvq_f32(acc);
    if (b * 32 < k) r += q8_row_ref(x + b * 32, q + b * 32, sc + b, k - b * 32);
    return r;
#else
    return q8_row_ref(x, q, sc, k);
#endif
}

static void q8_range(void *vctx, int64_t begin, int64_t end) {
    q8_ctx *c = vctx;
    for (int64_t r = begin; r < end; r++)
        for (int64_t i = 0; i < c->n; i++)
            c->y[i * c->m + r] = q8_row_fast(c->x + i * c->k, c->q + r * c->kpad,
                                             c->scale + r * (c->kpad / 32), c->k);
}

void edgert_q8_gemm(float *y, const float *x, int64_t n, int64_t m, int64_t k, const int8_t *q,
                    const float *scale, int32_t threads) {
    assert(y && x && q && scale && k > 0);
    q8_ctx c = {y, x, n, m, k, (k + 31) / 32 * 32, q, scale};
    parallel_for(m, threads, q8_range, &c);
}

void edgert_q8_gemm_ref(float *y, const float *x, int64_t n, int64_t m, int64_t k,
                        const int8_t *q, const float *scale, int32_t threads) {
    (void)threads;
    int64_t kpad = (k + 31) / 32 * 32;
    for (int64_t r = 0; r < m; r++)
        for (int64_t i = 0; i < n; i++)
            y[i * m + r] = q8_row_ref(x + i * k, q + r * kpad, scale + r * (kpad / 32), k);
}
