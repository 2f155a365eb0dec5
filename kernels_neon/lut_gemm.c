/* LUT GEMM / GEMV for bit-plane weights (see edgert_kernels.h for the formats).
 *
 * Every fast path has a scalar _ref twin, always compiled; the SIMD table builders and epilogues
 * do the float operations of their scalar twins in the same order and the integer sums are
 * exact, so results are bit-identical (build with -ffp-contract=off).
 * A test program may #include this file directly (tests/kernels/lut_test_driver.c): everything
 * but the edgert_* entry points (and the hidden edgert_parallel_for) is static; no main.
 */
#include "edgert_kernels.h"

#include <assert.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__ARM_NEON)
#include <arm_neon.h>
#define EDGERT_ISA "neon"
#elif defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define EDGERT_AVX512 1
#define EDGERT_ISA "avx512"
#else
#define EDGERT_ISA "avx2"
#endif
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

/* shared with forward.c (not exported from the library) */
__attribute__((visibility("hidden"))) float edgert_h2f(uint16_t h);
float edgert_h2f(uint16_t h) { return h2f(h); }

/* ---- activation tables --------------------------------------------------------------------- */
typedef struct {
    int64_t k, kpad, k4, groups;
    int group, bits, fmt;
} shape_t;
/* a tile kernel: W tile `tile` (32, kpad) of b bit-planes, tables (k4, 32) -> y (32,); a pair
 * kernel: the same for two tiles (of the same or other weights of one shape) at once */
typedef void (*tile_fn)(float *, int64_t, const uint8_t *, const uint16_t *, const uint16_t *,
                        const uint8_t *, const float *, const float *, const shape_t *);
typedef void (*pair_fn)(float *const *, const int64_t *, const uint8_t *const *,
                        const uint16_t *const *, const uint16_t *const *, const uint8_t *,
                        const float *, const float *, const shape_t *);

/* x (k,) -> tbl [k4][32]: for each chunk of 4 activations the 16 partial sums
 *   e[idx] = (((0 + [idx&1] x0) + [idx&2] x1) + [idx&4] x2) + [idx&8] x3   (float, this order)
 * rounded to integers q = rint(e * lim / amax) with amax the group's largest |e|, stored as the
 * two bytes of the int16 q: hi bytes (int8, [0..15]) then lo bytes (uint8, [16..31]);
 * ts [groups] = amax / lim, xs [groups] = sum of x (sum of the chunks' e[15], in order).
 * lim = TBL_LIMIT(per) = 32767 / per (per = chunks in a group: 4095 at group 32, 2047 at 64, 1023
 * at 128), so one plane's sums over a group fit int16 and the SIMD paths accumulate 16-bit lanes;
 * the tables keep 11-13 bits. The SIMD builders below do the same float operations in the same
 * order (no FMA contraction), so every path gets bit-identical tables. */
#define TBL_LIMIT(per) (32767 / (per))
/* how far ahead of the kernel the weight stream is prefetched (cold weights come from DRAM): at
 * least DRAM latency x one core's read bandwidth, and no more than L1 holds beside the tables
 * (AVX2: 2 KiB ran at 21 GB/s, 8 KiB at 25, 16 KiB at 28-35 on a 39 GB/s core; AVX-512, 2-bit
 * 4096x4096: 6 KiB 35.5 GB/s, 8 KiB 37.5, 16 KiB 36.2, as prefetched lines and the 32 KiB of
 * tables outgrow a 48 KiB L1; the NEON value is unmeasured on hardware and stays small) */
#ifndef PREFETCH_BYTES
#if defined(__ARM_NEON)
#define PREFETCH_BYTES 2048
#elif defined(EDGERT_AVX512)
#define PREFETCH_BYTES 8192
#else
#define PREFETCH_BYTES 16384
#endif
#endif
#define MAX_PER 64 /* group <= 256 */

/* with two tiles in turn (see PAIR_MIN_TILES), each stream is prefetched this far ahead: the two
 * together keep more lines in flight than one stream did, and less of L1 (2-bit 4096x4096 at 2
 * threads, AVX-512, two streams: 8 KiB each 12.4x fp32 BLAS, 6 KiB 12.6x, 4 KiB 12.6x; 1 thread
 * 13.0-13.3x, 13.4-13.8x, 13.6-13.8x; 4-bit at 2 threads 7.0x, 7.0x, 6.8-6.9x) */
#ifndef PAIR_PREFETCH_BYTES
#define PAIR_PREFETCH_BYTES (PREFETCH_BYTES * 3 / 4)
#endif

/* the prefetch distance for the weight streams of u (1 or 2) tiles in turn: PREFETCH_BYTES or
 * PAIR_PREFETCH_BYTES, but at most half a tile's planes, so a small matrix split over threads
 * does not read much past a thread's tiles (2-thread decode of SmolLM2 lost 9% to full-length
 * prefetches) */
static inline int64_t prefetch_ahead(const shape_t *s, int u) {
    const int64_t half = s->k4 * s->bits * 8, want = u == 1 ? PREFETCH_BYTES : PAIR_PREFETCH_BYTES;
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

/* the SIMD builders take this many groups per pass: each stage runs over all of them, so one
 * group's reduction and scale overlap the next group's work instead of stalling it (k = 4096,
 * group 64: AVX-512 2.2 -> 1.6 us, AVX2 3.1 -> 2.65 us) */
#define TABLE_GROUPS 8

/* a group's table scale ts = amax / lim and sum of x (every builder); returns lim / amax, the
 * factor its partial sums are rounded with */
static inline float group_scale(float amax, float sum, int lim, float *ts, float *xs) {
    *ts = amax / (float)lim;
    *xs = sum;
    return amax > 0.f ? (float)lim / amax : 0.f;
}

static void build_tables_ref(const float *x, const shape_t *s, uint8_t *tbl, float *ts,
                             float *xs) {
    const int per = s->group / 4, lim = TBL_LIMIT(per);
    float e[MAX_PER * 16];
    for (int64_t g = 0; g < s->groups; g++) {
        float amax = 0.f, sum = 0.f;
        for (int c = 0; c < per; c++) {  // stage 1: float partial sums, their range, sum of x
            float v[4];
            chunk_x(v, x, g * per + c, s->k);
            for (int idx = 0; idx < 16; idx++) {
                float a = 0.f;
                for (int i = 0; i < 4; i++) a += (idx >> i & 1) ? v[i] : 0.f;
                e[c * 16 + idx] = a;
                amax = fmaxf(amax, fabsf(a));
            }
            sum += e[c * 16 + 15];
        }
        const float inv = group_scale(amax, sum, lim, ts + g, xs + g);
        for (int c = 0; c < per; c++) {  // stage 2: round, split into bytes
            uint8_t *tb = tbl + (g * per + c) * 32;
            for (int idx = 0; idx < 16; idx++) {
                long q = lrintf(e[c * 16 + idx] * inv);
                q = q > lim ? lim : (q < -lim ? -lim : q);
                tb[idx] = (uint8_t)(int8_t)(q >> 8); /* floor(q / 256) */
                tb[16 + idx] = (uint8_t)(q & 255);
            }
        }
    }
}

static inline int32_t tbl_value(const uint8_t *tb, int idx) {  // the int16 entry idx
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
/* tables: the operations of build_tables_ref, four entries per vector */
static void build_tables_fast(const float *x, const shape_t *s, uint8_t *tbl, float *ts,
                              float *xs) {
    const int per = s->group / 4, lim = TBL_LIMIT(per);
    float e[MAX_PER * 16];
    uint32x4_t mask[4][4];  // [entries 4h .. 4h+3][bit i]
    for (int h = 0; h < 4; h++)
        for (int i = 0; i < 4; i++) {
            uint32_t mk[4];
            for (int l = 0; l < 4; l++) mk[l] = ((4 * h + l) >> i & 1) ? 0xffffffffu : 0u;
            mask[h][i] = vld1q_u32(mk);
        }
    for (int64_t g = 0; g < s->groups; g++) {
        float32x4_t vmax = vdupq_n_f32(0.f);
        float sum = 0.f;
        for (int c = 0; c < per; c++) {
            float v[4];
            chunk_x(v, x, g * per + c, s->k);
            for (int h = 0; h < 4; h++) {
                float32x4_t a = vdupq_n_f32(0.f);
                for (int i = 0; i < 4; i++)
                    a = vaddq_f32(a, vreinterpretq_f32_u32(vandq_u32(
                                         mask[h][i], vreinterpretq_u32_f32(vdupq_n_f32(v[i])))));
                vst1q_f32(e + c * 16 + 4 * h, a);
                vmax = vmaxq_f32(vmax, vabsq_f32(a));
            }
            sum += e[c * 16 + 15];
        }
        const float amax = vmaxvq_f32(vmax);
        const float inv = group_scale(amax, sum, lim, ts + g, xs + g);
        const float32x4_t iv = vdupq_n_f32(inv);
        const int32x4_t hi = vdupq_n_s32(lim), lo = vdupq_n_s32(-lim);
        for (int c = 0; c < per; c++) {
            int16x8_t q16[2];
            for (int h = 0; h < 2; h++) {
                int32x4_t q0 = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(e + c * 16 + 8 * h), iv));
                int32x4_t q1 = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(e + c * 16 + 8 * h + 4), iv));
                q0 = vminq_s32(vmaxq_s32(q0, lo), hi);
                q1 = vminq_s32(vmaxq_s32(q1, lo), hi);
                q16[h] = vcombine_s16(vmovn_s32(q0), vmovn_s32(q1));
            }
            const uint8x16_t b0 = vreinterpretq_u8_s16(q16[0]), b1 = vreinterpretq_u8_s16(q16[1]);
            vst1q_u8(tbl + (g * per + c) * 32, vuzp2q_u8(b0, b1));       // hi bytes
            vst1q_u8(tbl + (g * per + c) * 32 + 16, vuzp1q_u8(b0, b1));  // lo bytes
        }
    }
}

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
    const int64_t pf = prefetch_ahead(s, 1);
    for (int i = 0; i < 8; i++) yv[i] = vdupq_n_f32(0.f);
    for (int64_t g = 0; g < s->groups; g++) {
        const uint8_t *p = planes + (tile * s->k4 + g * per) * b * 16;
        for (int o = 0; o < per * b * 16; o += 64) __builtin_prefetch(p + o + pf);
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
#if defined(EDGERT_AVX512)
/* tables: the operations of build_tables_ref, a chunk's sixteen entries per vector, TABLE_GROUPS
 * groups at a time (see there) */
static void build_tables_fast(const float *x, const shape_t *s, uint8_t *tbl, float *ts,
                              float *xs) {
    const int per = s->group / 4, lim = TBL_LIMIT(per);
    float e[TABLE_GROUPS * MAX_PER * 16];
    // entry idx has x_i where bit i of idx is set
    const __mmask16 mask[4] = {0xAAAA, 0xCCCC, 0xF0F0, 0xFF00};
    const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                           0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    const __m512i hi = _mm512_set1_epi32(lim), lo = _mm512_set1_epi32(-lim);
    for (int64_t g0 = 0; g0 < s->groups; g0 += TABLE_GROUPS) {
        const int ng = s->groups - g0 < TABLE_GROUPS ? (int)(s->groups - g0) : TABLE_GROUPS;
        __m512 vmax[TABLE_GROUPS];
        float sum[TABLE_GROUPS], inv[TABLE_GROUPS];
        for (int gi = 0; gi < ng; gi++) {
            __m512 vm = _mm512_setzero_ps();
            sum[gi] = 0.f;
            for (int c = gi * per; c < (gi + 1) * per; c++) {
                float v[4];
                const float *xc = chunk_at(v, x, g0 * per + c, s->k);
                __m512 a = _mm512_setzero_ps();
                for (int i = 0; i < 4; i++)
                    a = _mm512_add_ps(a, _mm512_maskz_mov_ps(mask[i], _mm512_set1_ps(xc[i])));
                _mm512_storeu_ps(e + c * 16, a);
                vm = _mm512_max_ps(vm, _mm512_abs_ps(a));
                const __m128 a3 = _mm512_extractf32x4_ps(a, 3);
                sum[gi] += _mm_cvtss_f32(_mm_shuffle_ps(a3, a3, 0xFF));  // entry 15
            }
            vmax[gi] = vm;
        }
        for (int gi = 0; gi < ng; gi++)
            inv[gi] = group_scale(_mm512_reduce_max_ps(vmax[gi]), sum[gi], lim, ts + g0 + gi,
                                  xs + g0 + gi);
        for (int gi = 0; gi < ng; gi++) {
            const __m512 iv = _mm512_set1_ps(inv[gi]);
            for (int c = gi * per; c < (gi + 1) * per; c++) {
                __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(e + c * 16), iv));
                q = _mm512_min_epi32(_mm512_max_epi32(q, lo), hi);
                const __m256i b = _mm256_shuffle_epi8(_mm512_cvtepi32_epi16(q), split);
                _mm256_storeu_si256((__m256i *)(tbl + (g0 * per + c) * 32),
                                    _mm256_permute4x64_epi64(b, 0x8D));  // [hi 0-15 | lo 0-15]
            }
        }
    }
}
#else
/* tables: the operations of build_tables_ref, eight entries per vector, TABLE_GROUPS groups at a
 * time */
static void build_tables_fast(const float *x, const shape_t *s, uint8_t *tbl, float *ts,
                              float *xs) {
    const int per = s->group / 4, lim = TBL_LIMIT(per);
    float e[TABLE_GROUPS * MAX_PER * 16];
    __m256 mask[2][4];  // [entries 8h .. 8h+7][bit i]
    for (int h = 0; h < 2; h++)
        for (int i = 0; i < 4; i++) {
            int32_t mk[8];
            for (int l = 0; l < 8; l++) mk[l] = ((8 * h + l) >> i & 1) ? -1 : 0;
            mask[h][i] = _mm256_castsi256_ps(_mm256_loadu_si256((const __m256i *)mk));
        }
    const __m256 sign = _mm256_set1_ps(-0.f);
    // int16 entries -> [lo bytes | hi bytes] per 128-bit lane
    const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                           0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    const __m256i hi = _mm256_set1_epi32(lim), lo = _mm256_set1_epi32(-lim);
    for (int64_t g0 = 0; g0 < s->groups; g0 += TABLE_GROUPS) {
        const int ng = s->groups - g0 < TABLE_GROUPS ? (int)(s->groups - g0) : TABLE_GROUPS;
        float amax[TABLE_GROUPS], sum[TABLE_GROUPS], inv[TABLE_GROUPS];
        for (int gi = 0; gi < ng; gi++) {
            __m256 vmax = _mm256_setzero_ps();
            sum[gi] = 0.f;
            for (int c = gi * per; c < (gi + 1) * per; c++) {
                float v[4];
                const float *xc = chunk_at(v, x, g0 * per + c, s->k);
                __m256 a[2];
                for (int h = 0; h < 2; h++) {
                    a[h] = _mm256_setzero_ps();
                    for (int i = 0; i < 4; i++)
                        a[h] = _mm256_add_ps(a[h],
                                             _mm256_and_ps(mask[h][i], _mm256_set1_ps(xc[i])));
                    _mm256_storeu_ps(e + c * 16 + 8 * h, a[h]);
                    vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, a[h]));
                }
                const __m128 a1 = _mm256_extractf128_ps(a[1], 1);
                sum[gi] += _mm_cvtss_f32(_mm_shuffle_ps(a1, a1, 0xFF));  // entry 15
            }
            float mx[8];
            _mm256_storeu_ps(mx, vmax);
            amax[gi] = 0.f;
            for (int i = 0; i < 8; i++) amax[gi] = fmaxf(amax[gi], mx[i]);
        }
        for (int gi = 0; gi < ng; gi++)
            inv[gi] = group_scale(amax[gi], sum[gi], lim, ts + g0 + gi, xs + g0 + gi);
        for (int gi = 0; gi < ng; gi++) {
            const __m256 iv = _mm256_set1_ps(inv[gi]);
            for (int c = gi * per; c < (gi + 1) * per; c++) {
                __m256i q0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(e + c * 16), iv));
                __m256i q1 =
                    _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(e + c * 16 + 8), iv));
                q0 = _mm256_min_epi32(_mm256_max_epi32(q0, lo), hi);
                q1 = _mm256_min_epi32(_mm256_max_epi32(q1, lo), hi);
                // int16 entries 0-7 | 8-15, then lane 0 [lo 0-7, hi 0-7], lane 1 [lo 8-15, hi 8-15]
                const __m256i q16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(q0, q1), 0xD8);
                const __m256i b = _mm256_shuffle_epi8(q16, split);
                _mm256_storeu_si256((__m256i *)(tbl + (g0 * per + c) * 32),
                                    _mm256_permute4x64_epi64(b, 0x8D));  // [hi 0-15 | lo 0-15]
            }
        }
    }
}

#endif

/* One group, all b planes of a tile: acc [b][32] int32 = per plane and row, the sum over the
 * group's chunks of the table entry the row's 4-bit pattern selects.
 * Planes are taken two at a time (32 contiguous bytes: plane j in lane 0, j+1 in lane 1) with the
 * chunk's tables broadcast to both lanes; pshufb looks up the hi and lo bytes, unpack interleaves
 * them back into the int16 entries, and 16-bit lanes accumulate the group (no overflow: see
 * TBL_LIMIT). An odd last plane runs the same steps on 128-bit vectors. */
static inline __attribute__((always_inline)) void group_avx2(int32_t *acc, const uint8_t *p,
                                                             const uint8_t *tbl, int per,
                                                             const int b, int64_t pf) {
    const __m256i m15 = _mm256_set1_epi8(15);
    for (int q = 0; q < b / 2; q++) {  // planes 2q, 2q+1 (one pass each: no register spills)
        // s[r]: rows 8r .. 8r+7, lane 0 plane 2q, lane 1 plane 2q+1
        __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
        const uint8_t *pq = p + 32 * q, *tb = tbl;
        for (int c = 0; c < per; c++, pq += b * 16, tb += 32) {
            if (q == 0) _mm_prefetch((const char *)pq + pf, _MM_HINT_T0);
            const __m256i th = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)tb));
            const __m256i tl =
                _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(tb + 16)));
            const __m256i pk = _mm256_loadu_si256((const __m256i *)pq);
            const __m256i lo = _mm256_and_si256(pk, m15);                         // rows 0-15
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(pk, 4), m15);  // rows 16-31
            const __m256i al = _mm256_shuffle_epi8(tl, lo), ah = _mm256_shuffle_epi8(th, lo);
            s0 = _mm256_add_epi16(s0, _mm256_unpacklo_epi8(al, ah));
            s1 = _mm256_add_epi16(s1, _mm256_unpackhi_epi8(al, ah));
            const __m256i bl = _mm256_shuffle_epi8(tl, hi), bh = _mm256_shuffle_epi8(th, hi);
            s2 = _mm256_add_epi16(s2, _mm256_unpacklo_epi8(bl, bh));
            s3 = _mm256_add_epi16(s3, _mm256_unpackhi_epi8(bl, bh));
        }
        const __m256i sv[4] = {s0, s1, s2, s3};
        for (int r = 0; r < 4; r++) {
            _mm256_storeu_si256((__m256i *)(acc + 2 * q * T + 8 * r),
                                _mm256_cvtepi16_epi32(_mm256_castsi256_si128(sv[r])));
            _mm256_storeu_si256((__m256i *)(acc + (2 * q + 1) * T + 8 * r),
                                _mm256_cvtepi16_epi32(_mm256_extracti128_si256(sv[r], 1)));
        }
    }
    if (b & 1) {  // odd last plane, 128-bit vectors
        const __m128i m15x = _mm_set1_epi8(15);
        __m128i u0 = _mm_setzero_si128(), u1 = u0, u2 = u0, u3 = u0;  // rows 8r .. 8r+7
        const uint8_t *pq = p + 32 * (b / 2), *tb = tbl;
        for (int c = 0; c < per; c++, pq += b * 16, tb += 32) {
            if (b == 1) _mm_prefetch((const char *)pq + pf, _MM_HINT_T0);
            const __m128i th = _mm_loadu_si128((const __m128i *)tb);
            const __m128i tl = _mm_loadu_si128((const __m128i *)(tb + 16));
            const __m128i pk = _mm_loadu_si128((const __m128i *)pq);
            const __m128i lo = _mm_and_si128(pk, m15x);
            const __m128i hi = _mm_and_si128(_mm_srli_epi16(pk, 4), m15x);
            const __m128i al = _mm_shuffle_epi8(tl, lo), ah = _mm_shuffle_epi8(th, lo);
            u0 = _mm_add_epi16(u0, _mm_unpacklo_epi8(al, ah));
            u1 = _mm_add_epi16(u1, _mm_unpackhi_epi8(al, ah));
            const __m128i bl = _mm_shuffle_epi8(tl, hi), bh = _mm_shuffle_epi8(th, hi);
            u2 = _mm_add_epi16(u2, _mm_unpacklo_epi8(bl, bh));
            u3 = _mm_add_epi16(u3, _mm_unpackhi_epi8(bl, bh));
        }
        const __m128i uv[4] = {u0, u1, u2, u3};
        for (int r = 0; r < 4; r++)
            _mm256_storeu_si256((__m256i *)(acc + (b - 1) * T + 8 * r), _mm256_cvtepi16_epi32(uv[r]));
    }
}

/* the float epilogue of one group (same operations, in the same order, as epilogue_ref) */
static inline __attribute__((always_inline)) void epilogue_avx2(__m256 *yv, const int32_t *acc,
                                                                const uint16_t *sc,
                                                                const uint16_t *zr, float ts,
                                                                float xs, const int b,
                                                                const int fmt) {
    const __m256 tsv = _mm256_set1_ps(ts), xsv = _mm256_set1_ps(xs);
    for (int q = 0; q < 4; q++) {  // 8 rows at a time
        const __m256 z = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(zr + 8 * q)));
        if (fmt == EDGERT_FMT_UNIFORM) {
            __m256i tot = _mm256_loadu_si256((const __m256i *)(acc + 8 * q));
            for (int j = 1; j < b; j++)
                tot = _mm256_add_epi32(
                    tot,
                    _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)(acc + j * T + 8 * q)), j));
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

// W tile (32, kpad) b bit-planes, tables (k4, 32) -> y (32,); b and fmt constant per instance
static inline __attribute__((always_inline)) void tile_avx2(float *y, int64_t tile,
                                                            const uint8_t *planes,
                                                            const uint16_t *scale,
                                                            const uint16_t *zero,
                                                            const uint8_t *tbl, const float *ts,
                                                            const float *xs, const shape_t *s,
                                                            const int b, const int fmt) {
    const int per = s->group / 4;
    __m256 yv[4];
    int32_t acc[4 * T];
    const int64_t pf = prefetch_ahead(s, 1), spf = pf / 4;  // group parameters: pf / 4 ahead
    for (int i = 0; i < 4; i++) yv[i] = _mm256_setzero_ps();
    for (int64_t g = 0; g < s->groups; g++) {
        const uint16_t *sc = scale_at(scale, tile, g, s), *zr = zero_at(zero, tile, g, s);
        _mm_prefetch((const char *)sc + spf, _MM_HINT_T0);
        _mm_prefetch((const char *)zr + spf, _MM_HINT_T0);
        group_avx2(acc, planes + (tile * s->k4 + g * per) * b * 16, tbl + g * per * 32, per, b,
                   pf);
        epilogue_avx2(yv, acc, sc, zr, ts[g], xs[g], b, fmt);
    }
    for (int q = 0; q < 4; q++) _mm256_storeu_ps(y + 8 * q, yv[q]);
}

// tile_<kernel>_<b>_<fmt>: one instance of a tile kernel per plane count and format
#define TILE_INSTANCE(kernel, b, f)                                                              \
    static void tile_##kernel##_##b##_##f(float *y, int64_t tile, const uint8_t *planes,        \
                                          const uint16_t *scale, const uint16_t *zero,          \
                                          const uint8_t *tbl, const float *ts, const float *xs, \
                                          const shape_t *s) {                                   \
        tile_##kernel(y, tile, planes, scale, zero, tbl, ts, xs, s, b, f);                      \
    }
TILE_INSTANCE(avx2, 1, 0)
TILE_INSTANCE(avx2, 2, 0)
TILE_INSTANCE(avx2, 3, 0)
TILE_INSTANCE(avx2, 4, 0)
TILE_INSTANCE(avx2, 1, 1)
TILE_INSTANCE(avx2, 2, 1)
TILE_INSTANCE(avx2, 3, 1)
TILE_INSTANCE(avx2, 4, 1)

#if defined(EDGERT_AVX512)
/* AVX-512 (2 and 4 planes): the steps of group_avx2 on 64-byte vectors. 4 planes: one chunk's
 * planes fill a vector (lane j = plane j) and its tables are broadcast to every lane. 2 planes: two
 * chunks fill a vector (lanes: chunk c planes 0, 1, chunk c+1 planes 0, 1; needs an even number of
 * chunks per group), each chunk's tables in its own two lanes; the two chunks' 16-bit sums are
 * added at the group's end (exact: see TBL_LIMIT). The epilogue then runs on 16 rows at a time in
 * registers: the same float operations, in the same order, as epilogue_ref. u (1 or 2) tiles go
 * chunk by chunk in turn, sharing the table loads (see PAIR_MIN_TILES). */
static inline __attribute__((always_inline)) void tiles_avx512(const int u, float *const *y,
                                                               const int64_t *tile,
                                                               const uint8_t *const *planes,
                                                               const uint16_t *const *scale,
                                                               const uint16_t *const *zero,
                                                               const uint8_t *tbl,
                                                               const float *ts, const float *xs,
                                                               const shape_t *s, const int b,
                                                               const int fmt) {
    const int per = s->group / 4;
    const __m512i m15 = _mm512_set1_epi8(15);
    // 64-bit words of (A, B) -> [A lane 0, B lane 0, A lane 1, B lane 1] and the same for 2, 3
    const __m512i pick01 = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
    const __m512i pick23 = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
    const int64_t pf = prefetch_ahead(s, u), spf = pf / 4;  // group parameters: pf / 4 ahead
    __m512 yv[2][2];  // tile v: rows 0-15, 16-31
    for (int v = 0; v < u; v++) yv[v][0] = yv[v][1] = _mm512_setzero_ps();
    for (int64_t g = 0; g < s->groups; g++) {
        const uint16_t *sc[2], *zr[2];
        const uint8_t *pq[2];
        __m512i sm[2][4];  // sm[v][r]: 16-bit sums of rows 8r .. 8r+7, one plane (and chunk) a lane
        for (int v = 0; v < u; v++) {
            sc[v] = scale_at(scale[v], tile[v], g, s);
            zr[v] = zero_at(zero[v], tile[v], g, s);
            _mm_prefetch((const char *)sc[v] + spf, _MM_HINT_T0);
            _mm_prefetch((const char *)zr[v] + spf, _MM_HINT_T0);
            pq[v] = planes[v] + (tile[v] * s->k4 + g * per) * b * 16;
            sm[v][0] = sm[v][1] = sm[v][2] = sm[v][3] = _mm512_setzero_si512();
        }
        const uint8_t *tb = tbl + g * per * 32;
        for (int c = 0; c < per; c += 4 / b, tb += 32 * (4 / b)) {
            __m512i th, tl;  // the tables, loaded once for the u tiles
            if (b == 4) {
                th = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)tb));
                tl = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(tb + 16)));
            } else {  // [hi c | lo c | hi c+1 | lo c+1] -> hi c, hi c, hi c+1, hi c+1 (and lo)
                const __m512i t = _mm512_loadu_si512(tb);
                th = _mm512_shuffle_i64x2(t, t, _MM_SHUFFLE(2, 2, 0, 0));
                tl = _mm512_shuffle_i64x2(t, t, _MM_SHUFFLE(3, 3, 1, 1));
            }
            for (int v = 0; v < u; v++) {
                _mm_prefetch((const char *)pq[v] + pf, _MM_HINT_T0);
                const __m512i pk = _mm512_loadu_si512(pq[v]);
                pq[v] += 64;
                const __m512i lo = _mm512_and_si512(pk, m15);                         // rows 0-15
                const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(pk, 4), m15);  // 16-31
                const __m512i al = _mm512_shuffle_epi8(tl, lo), ah = _mm512_shuffle_epi8(th, lo);
                sm[v][0] = _mm512_add_epi16(sm[v][0], _mm512_unpacklo_epi8(al, ah));
                sm[v][1] = _mm512_add_epi16(sm[v][1], _mm512_unpackhi_epi8(al, ah));
                const __m512i bl = _mm512_shuffle_epi8(tl, hi), bh = _mm512_shuffle_epi8(th, hi);
                sm[v][2] = _mm512_add_epi16(sm[v][2], _mm512_unpacklo_epi8(bl, bh));
                sm[v][3] = _mm512_add_epi16(sm[v][3], _mm512_unpackhi_epi8(bl, bh));
            }
        }
        const __m512 tsv = _mm512_set1_ps(ts[g]), xsv = _mm512_set1_ps(xs[g]);
        for (int v = 0; v < u; v++)
            for (int h = 0; h < 2; h++) {  // rows 16h .. 16h+15
                const __m512i s0 = sm[v][2 * h], s1 = sm[v][2 * h + 1];
                const __m512i p01 = _mm512_permutex2var_epi64(s0, pick01, s1);
                const __m512i p23 = _mm512_permutex2var_epi64(s0, pick23, s1);
                __m512i a[4];  // int32 sums of plane j
                if (b == 4) {
                    a[0] = _mm512_cvtepi16_epi32(_mm512_castsi512_si256(p01));
                    a[1] = _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(p01, 1));
                    a[2] = _mm512_cvtepi16_epi32(_mm512_castsi512_si256(p23));
                    a[3] = _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(p23, 1));
                } else {  // p01: chunk c, p23: chunk c+1
                    const __m512i p = _mm512_add_epi16(p01, p23);
                    a[0] = _mm512_cvtepi16_epi32(_mm512_castsi512_si256(p));
                    a[1] = _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(p, 1));
                }
                const __m512 z =
                    _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(zr[v] + 16 * h)));
                if (fmt == EDGERT_FMT_UNIFORM) {
                    __m512i tot = a[0];
                    for (int j = 1; j < b; j++)
                        tot = _mm512_add_epi32(tot, _mm512_slli_epi32(a[j], j));
                    const __m512 sv16 =
                        _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(sc[v] + 16 * h)));
                    const __m512 t1 = _mm512_mul_ps(tsv, _mm512_cvtepi32_ps(tot));
                    const __m512 t2 = _mm512_mul_ps(z, xsv);
                    yv[v][h] =
                        _mm512_add_ps(yv[v][h], _mm512_mul_ps(sv16, _mm512_sub_ps(t1, t2)));
                } else {
                    __m512 acc = _mm512_setzero_ps();
                    for (int j = 0; j < b; j++) {
                        const __m512 al16 = _mm512_cvtph_ps(
                            _mm256_loadu_si256((const __m256i *)(sc[v] + j * T + 16 * h)));
                        acc = _mm512_add_ps(acc, _mm512_mul_ps(al16, _mm512_cvtepi32_ps(a[j])));
                    }
                    const __m512 t1 = _mm512_mul_ps(tsv, acc), t2 = _mm512_mul_ps(z, xsv);
                    yv[v][h] = _mm512_add_ps(yv[v][h], _mm512_add_ps(t1, t2));
                }
            }
    }
    for (int v = 0; v < u; v++) {
        _mm512_storeu_ps(y[v], yv[v][0]);
        _mm512_storeu_ps(y[v] + 16, yv[v][1]);
    }
}

static inline __attribute__((always_inline)) void tile_avx512(float *y, int64_t tile,
                                                              const uint8_t *planes,
                                                              const uint16_t *scale,
                                                              const uint16_t *zero,
                                                              const uint8_t *tbl, const float *ts,
                                                              const float *xs, const shape_t *s,
                                                              const int b, const int fmt) {
    tiles_avx512(1, &y, &tile, &planes, &scale, &zero, tbl, ts, xs, s, b, fmt);
}

// pair_avx512_<b>_<fmt>: two tiles in turn
#define PAIR_INSTANCE(b, f)                                                                      \
    static void pair_avx512_##b##_##f(float *const *y, const int64_t *tile,                     \
                                      const uint8_t *const *planes, const uint16_t *const *scale, \
                                      const uint16_t *const *zero, const uint8_t *tbl,          \
                                      const float *ts, const float *xs, const shape_t *s) {     \
        tiles_avx512(2, y, tile, planes, scale, zero, tbl, ts, xs, s, b, f);                    \
    }
TILE_INSTANCE(avx512, 2, 0)
TILE_INSTANCE(avx512, 4, 0)
TILE_INSTANCE(avx512, 2, 1)
TILE_INSTANCE(avx512, 4, 1)
PAIR_INSTANCE(2, 0)
PAIR_INSTANCE(4, 0)
PAIR_INSTANCE(2, 1)
PAIR_INSTANCE(4, 1)

/* the AVX-512 kernels take 2 planes (with an even number of chunks per group: two chunks fill a
 * vector) and 4; the AVX2 ones the rest */
static int avx512_planes(const shape_t *s) {
    return s->bits == 4 || (s->bits == 2 && (s->group / 4) % 2 == 0);
}

/* the pair kernel of a shape (see PAIR_MIN_TILES), or NULL: tiles go one at a time */
static pair_fn pair_of(const shape_t *s) {
    static const pair_fn fns[2][2] = {{pair_avx512_2_0, pair_avx512_4_0},
                                      {pair_avx512_2_1, pair_avx512_4_1}};
    return avx512_planes(s) ? fns[s->fmt][s->bits / 2 - 1] : NULL;
}
#endif

static void tile_fast(float *y, int64_t tile, const uint8_t *planes, const uint16_t *scale,
                      const uint16_t *zero, const uint8_t *tbl, const float *ts, const float *xs,
                      const shape_t *s) {
    static const tile_fn fns[2][4] = {
#if defined(EDGERT_AVX512)
        {tile_avx2_1_0, tile_avx512_2_0, tile_avx2_3_0, tile_avx512_4_0},
        {tile_avx2_1_1, tile_avx512_2_1, tile_avx2_3_1, tile_avx512_4_1}};
    if (s->bits == 2 && !avx512_planes(s)) {
        (s->fmt ? tile_avx2_2_1 : tile_avx2_2_0)(y, tile, planes, scale, zero, tbl, ts, xs, s);
        return;
    }
#else
        {tile_avx2_1_0, tile_avx2_2_0, tile_avx2_3_0, tile_avx2_4_0},
        {tile_avx2_1_1, tile_avx2_2_1, tile_avx2_3_1, tile_avx2_4_1}};
#endif
    fns[s->fmt][s->bits - 1](y, tile, planes, scale, zero, tbl, ts, xs, s);
}
#else
#define tile_fast tile_ref
#define build_tables_fast build_tables_ref
#endif
/* pair kernels (see PAIR_MIN_TILES) exist for AVX-512 only: on AVX2 two tiles in turn ran 2-3%
 * slower (one core's AVX2 kernel is bound by its lookups, 28-29 GB/s, not by DRAM), and NEON is
 * unmeasured on hardware */
#if !defined(EDGERT_AVX512)
#define pair_of NULL
#endif

/* ---- a small persistent thread pool ------------------------------------------------------ */
typedef void (*range_fn)(void *ctx, int64_t begin, int64_t end);
enum { MAX_THREADS = 64 };
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int nworkers;
    atomic_ullong generation;  // bumped (under mu) for every job
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

static inline void cpu_relax(void) {
#if defined(__aarch64__)
    __asm__ __volatile__("yield");
#elif defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec * 1e-3;
}

/* after a job a helper watches for the next one this long before sleeping: decode calls come
 * back to back, and waking a sleeping thread costs tens of microseconds */
#ifndef SPIN_US
#define SPIN_US 50.0
#endif

static void *worker(void *arg) {
    (void)arg;
    uint64_t seen = 0;
    for (;;) {
        const double t0 = now_us();
        for (int i = 1; atomic_load_explicit(&pool.generation, memory_order_acquire) == seen; i++) {
            cpu_relax();
            if (!(i & 63) && now_us() - t0 > SPIN_US) break;
        }
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

/* shared with forward.c (not exported from the library) */
__attribute__((visibility("hidden"))) void edgert_parallel_for(int64_t n, int threads,
                                                               range_fn fn, void *ctx);

/* n items in chunks of n / (per_thread x threads), taken in turn by whichever thread is free */
static void parallel_chunks(int64_t n, int threads, int per_thread, range_fn fn, void *ctx) {
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
    pool.chunk = (n + (int64_t)per_thread * threads - 1) / ((int64_t)per_thread * threads);
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

void edgert_parallel_for(int64_t n, int threads, range_fn fn, void *ctx) {
    parallel_chunks(n, threads, 4, fn, ctx);
}

/* ---- GEMM ---------------------------------------------------------------------------------- */
typedef void (*table_fn)(const float *, const shape_t *, uint8_t *, float *, float *);
/* up to EDGERT_MAX_MULTI weights of one shape family (same k, bits, group, format) sharing the
 * activation tables; their tiles are numbered one after the other (first[j] .. first[j+1]) */
typedef struct {
    int count;
    float *y[EDGERT_MAX_MULTI];
    int64_t m[EDGERT_MAX_MULTI], first[EDGERT_MAX_MULTI + 1];
    const uint8_t *planes[EDGERT_MAX_MULTI];
    const uint16_t *scale[EDGERT_MAX_MULTI], *zero[EDGERT_MAX_MULTI];
    int64_t n;
    const uint8_t *tbl;  // [n][k4][32]
    const float *ts, *xs;  // [n][groups]
    const shape_t *s;
    tile_fn tile;
    pair_fn pair;    // set: a thread's tiles go two at a time (see PAIR_MIN_TILES)
    const float *x;  // set (a few rows): every thread builds the tables of x itself
    table_fn build;
} gemm_ctx;

typedef struct {
    const float *x;
    const shape_t *s;
    uint8_t *tbl;
    float *ts, *xs;
    table_fn build;
} tables_ctx;

static void tables_range(void *vctx, int64_t begin, int64_t end) {
    tables_ctx *c = vctx;
    const shape_t *s = c->s;
    for (int64_t i = begin; i < end; i++)
        c->build(c->x + i * s->k, s, c->tbl + i * s->k4 * 32, c->ts + i * s->groups,
                 c->xs + i * s->groups);
}

/* a few rows' tables are built by every thread for itself: no thread waits for another's part,
 * and no table is read across cores (2-bit 4096x4096 at 2 threads, in rounds taking turns with
 * fp32 BLAS: 12.5-13.0x -> 13.4-13.5x its speed when the two cores have their own memory links,
 * equal (12.0-12.2x) when they share one). Each thread keeps its buffer for the next call: at most
 * (FEW_ROWS - 1) x (k / 4 x 32 + 8 x groups) bytes. */
#define FEW_ROWS 8
static _Thread_local uint8_t *own_tables;
static _Thread_local size_t own_bytes;

static uint8_t *own_table_buffer(size_t bytes) {
    if (own_bytes < bytes) {
        free(own_tables);
        own_tables = malloc(bytes);
        if (!own_tables) abort();
        own_bytes = bytes;
    }
    return own_tables;
}

/* activation rows per pass over a tile: their tables (~256 KiB) stay in L2 while the tile's
 * planes are reused from L1 */
#define TABLE_BLOCK_BYTES (256 << 10)

/* A run of L tiles goes as pairs (i, i + ceil(L/2)), where the ISA has a pair kernel: two weight
 * streams per core, as one read stream leaves DRAM bandwidth unused (reading 1 GiB, one core: one
 * stream 35-36 GB/s, one stream prefetched 8 KiB ahead 38, two streams 40-41; two cores: 63-68,
 * 74, 70-78). AVX-512, in rounds taking turns with fp32 BLAS (three runs, two cores sharing one
 * memory link): 2-bit 4096x4096 11.8-12.3x -> 12.4-12.9x its speed at 2 threads, 13.1-13.3x ->
 * 13.9x at 1; 4-bit 6.7-6.9x -> 6.9-7.1x at 2 threads; 2-bit 4096x11008 11.8-13.3x ->
 * 12.7-14.2x. Runs shorter than this go one tile at a time. */
#define PAIR_MIN_TILES 4

/* tile g of the weights in c (numbered one after the other): weight j, tile t of it */
static inline void locate(const gemm_ctx *c, int64_t g, int *j, int64_t *t) {
    int w = 0;
    while (g >= c->first[w + 1]) w++;
    *j = w;
    *t = g - c->first[w];
}

/* y_j[i, 32t ..] = the tile's output rows that exist */
static inline void put_rows(const gemm_ctx *c, int j, int64_t t, int64_t i, const float *buf) {
    const int64_t m = c->m[j], rows = m - t * T < T ? m - t * T : T;
    memcpy(c->y[j] + i * m + t * T, buf, (size_t)rows * sizeof(float));
}

static void gemm_range(void *vctx, int64_t begin, int64_t end) {
    gemm_ctx *c = vctx;
    const shape_t *s = c->s;
    if (c->x) {  // this thread's own tables: tbl [n][k4][32], then ts, xs [n][groups]
        const size_t tbytes = (size_t)(c->n * s->k4 * 32);
        uint8_t *tbl = own_table_buffer(tbytes + 2 * (size_t)(c->n * s->groups) * sizeof(float));
        float *ts = (float *)(tbl + tbytes), *xs = ts + c->n * s->groups;
        tables_ctx tc = {c->x, s, tbl, ts, xs, c->build};
        tables_range(&tc, 0, c->n);
        gemm_ctx own = *c;
        own.x = NULL;
        own.tbl = tbl;
        own.ts = ts;
        own.xs = xs;
        gemm_range(&own, begin, end);
        return;
    }
    float buf[2][T];
    float *const ys[2] = {buf[0], buf[1]};
    const int two = c->pair && end - begin >= PAIR_MIN_TILES;
    const int64_t half = two ? (end - begin + 1) / 2 : end - begin;
    int64_t nb = TABLE_BLOCK_BYTES / (s->k4 * 32);
    if (nb < 1) nb = 1;
    for (int64_t i0 = 0; i0 < c->n; i0 += nb) {
        const int64_t i1 = i0 + nb < c->n ? i0 + nb : c->n;
        for (int64_t p = 0; p < half; p++) {
            const int64_t g[2] = {begin + p, begin + half + p};
            const int u = two && g[1] < end ? 2 : 1;
            int j[2];
            int64_t t[2];
            const uint8_t *pl[2];
            const uint16_t *sc[2], *zr[2];
            for (int v = 0; v < u; v++) {
                locate(c, g[v], &j[v], &t[v]);
                pl[v] = c->planes[j[v]];
                sc[v] = c->scale[j[v]];
                zr[v] = c->zero[j[v]];
            }
            for (int64_t i = i0; i < i1; i++) {
                const uint8_t *tbl = c->tbl + i * s->k4 * 32;
                const float *ts = c->ts + i * s->groups, *xs = c->xs + i * s->groups;
                if (u == 2)
                    c->pair(ys, t, pl, sc, zr, tbl, ts, xs, s);
                else
                    c->tile(buf[0], t[0], pl[0], sc[0], zr[0], tbl, ts, xs, s);
                for (int v = 0; v < u; v++) put_rows(c, j[v], t[v], i, buf[v]);
            }
        }
    }
}

static int make_shape(shape_t *s, int64_t k, int32_t bits, int32_t group, int32_t fmt) {
    if (bits < 1 || bits > 4 || group < 4 || group % 4 || group > 4 * MAX_PER || k < 1) return 0;
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

/* tables of n activation rows x (n, k) -> tbl [n][k4][32], ts, xs [n][groups], split by rows */
static uint8_t *make_tables(const float *x, int64_t n, const shape_t *s, int threads,
                            table_fn build, float **ts, float **xs) {
    uint8_t *tbl = malloc((size_t)(n * s->k4 * 32));
    *ts = malloc((size_t)(n * s->groups) * sizeof(float));
    *xs = malloc((size_t)(n * s->groups) * sizeof(float));
    if (!tbl || !*ts || !*xs) abort();
    tables_ctx c = {x, s, tbl, *ts, *xs, build};
    edgert_parallel_for(n, threads, tables_range, &c);
    return tbl;
}

// count weights W_j (m_j, k) b-bit planes, x (n, k) -> y_j (n, m_j)
static void gemm_impl(int count, float *const *y, const float *x, int64_t n, const int64_t *m,
                      int64_t k, const uint8_t *const *planes, const uint16_t *const *scale,
                      const uint16_t *const *zero, int32_t bits, int32_t group, int32_t fmt,
                      int32_t threads, tile_fn tile, pair_fn (*pairs)(const shape_t *),
                      table_fn build) {
    shape_t s;
    assert(y && x && planes && scale && zero && n >= 0 && count >= 1 && count <= EDGERT_MAX_MULTI);
    if (!make_shape(&s, k, bits, group, fmt)) abort();  // validated by the caller
    gemm_ctx c = {.count = count, .n = n, .s = &s, .tile = tile};
    for (int j = 0; j < count; j++) {
        assert(y[j] && planes[j] && scale[j] && zero[j] && m[j] >= 0);
        c.y[j] = y[j];
        c.m[j] = m[j];
        c.planes[j] = planes[j];
        c.scale[j] = scale[j];
        c.zero[j] = zero[j];
        c.first[j + 1] = c.first[j] + (m[j] + T - 1) / T;
    }
    if (n == 0 || c.first[count] == 0) return;
    float *ts = NULL, *xs = NULL;
    uint8_t *tbl = NULL;
    if (n < FEW_ROWS) {  // every thread builds its own tables (see FEW_ROWS); tiles in pairs
        c.x = x;
        c.build = build;
        c.pair = pairs ? pairs(&s) : NULL;
    } else {
        tbl = make_tables(x, n, &s, threads, build, &ts, &xs);
        c.tbl = tbl;
        c.ts = ts;
        c.xs = xs;
    }
    /* one run of tiles per thread: every new run restarts the weight stream and its prefetch
     * (2-bit 4096x4096 at 2 threads, in rounds taking turns with fp32 BLAS: 11.9-12.1x its speed
     * with four runs per thread, 12.1-12.7x with one; SmolLM2 decode at 2 threads +7%) */
    parallel_chunks(c.first[count], threads, 1, gemm_range, &c);
    free(tbl);
    free(ts);
    free(xs);
}

void edgert_lut_gemm(float *y, const float *x, int64_t n, int64_t m, int64_t k,
                     const uint8_t *planes, const uint16_t *scale, const uint16_t *zero,
                     int32_t bits, int32_t group, int32_t fmt, int32_t threads) {
    gemm_impl(1, &y, x, n, &m, k, &planes, &scale, &zero, bits, group, fmt, threads, tile_fast,
              pair_of, build_tables_fast);
}

void edgert_lut_gemm_multi(int32_t count, float *const *y, const float *x, int64_t n,
                           const int64_t *m, int64_t k, const uint8_t *const *planes,
                           const uint16_t *const *scale, const uint16_t *const *zero,
                           int32_t bits, int32_t group, int32_t fmt, int32_t threads) {
    gemm_impl(count, y, x, n, m, k, planes, scale, zero, bits, group, fmt, threads, tile_fast,
              pair_of, build_tables_fast);
}

void edgert_lut_gemm_ref(float *y, const float *x, int64_t n, int64_t m, int64_t k,
                         const uint8_t *planes, const uint16_t *scale, const uint16_t *zero,
                         int32_t bits, int32_t group, int32_t fmt, int32_t threads) {
    gemm_impl(1, &y, x, n, &m, k, &planes, &scale, &zero, bits, group, fmt, threads, tile_ref,
              NULL, build_tables_ref);
}

/* ---- row-subset GEMV: only the tiles holding selected rows are computed ------------------- */
typedef struct {
    float *out;          // [ntiles][32]
    const int64_t *tiles;  // tile indices
    const uint8_t *planes, *tbl;
    const uint16_t *scale, *zero;
    const float *ts, *xs;
    const shape_t *s;
    tile_fn tile;
} rows_ctx;

static void rows_range(void *vctx, int64_t begin, int64_t end) {
    rows_ctx *c = vctx;
    for (int64_t i = begin; i < end; i++)
        c->tile(c->out + i * T, c->tiles[i], c->planes, c->scale, c->zero, c->tbl, c->ts, c->xs,
                c->s);
}

// W (m, k) b-bit planes, x (k,), rows (r,) in [0, m) -> y (r,) = (W x)[rows]
static void gemv_rows_impl(float *y, const float *x, int64_t m, int64_t k, const int32_t *rows,
                           int64_t r, const uint8_t *planes, const uint16_t *scale,
                           const uint16_t *zero, int32_t bits, int32_t group, int32_t fmt,
                           int32_t threads, tile_fn tile, table_fn build) {
    shape_t s;
    assert(y && x && rows && planes && scale && zero && r >= 0);
    if (!make_shape(&s, k, bits, group, fmt)) abort();
    if (r == 0) return;
    float *ts, *xs;
    uint8_t *tbl = make_tables(x, 1, &s, 1, build, &ts, &xs);
    /* distinct tiles in order of first use (runs of rows in one tile share it) */
    int64_t *tiles = malloc((size_t)r * sizeof(int64_t)), *slot = malloc((size_t)r * sizeof(int64_t));
    if (!tiles || !slot) abort();
    int64_t nt = 0;
    for (int64_t i = 0; i < r; i++) {
        assert(rows[i] >= 0 && rows[i] < m);
        const int64_t t = rows[i] / T;
        if (nt == 0 || tiles[nt - 1] != t) tiles[nt++] = t;
        slot[i] = (nt - 1) * T + rows[i] % T;
    }
    float *out = malloc((size_t)(nt * T) * sizeof(float));
    if (!out) abort();
    rows_ctx c = {out, tiles, planes, tbl, scale, zero, ts, xs, &s, tile};
    edgert_parallel_for(nt, threads, rows_range, &c);
    for (int64_t i = 0; i < r; i++) y[i] = out[slot[i]];
    free(out);
    free(slot);
    free(tiles);
    free(tbl);
    free(ts);
    free(xs);
}

void edgert_lut_gemv_rows(float *y, const float *x, int64_t m, int64_t k, const int32_t *rows,
                          int64_t r, const uint8_t *planes, const uint16_t *scale,
                          const uint16_t *zero, int32_t bits, int32_t group, int32_t fmt,
                          int32_t threads) {
    gemv_rows_impl(y, x, m, k, rows, r, planes, scale, zero, bits, group, fmt, threads, tile_fast,
                   build_tables_fast);
}

void edgert_lut_gemv_rows_ref(float *y, const float *x, int64_t m, int64_t k,
                              const int32_t *rows, int64_t r, const uint8_t *planes,
                              const uint16_t *scale, const uint16_t *zero, int32_t bits,
                              int32_t group, int32_t fmt, int32_t threads) {
    (void)threads;
    gemv_rows_impl(y, x, m, k, rows, r, planes, scale, zero, bits, group, fmt, 1, tile_ref,
                   build_tables_ref);
}

/* ---- 8-bit rows (token embeddings / output head): y (n, m) = x (n, k) . dequant(q)^T ------- */
/* q int8 [m][kpad], scale float [m][kpad/32]: w = q * scale of its 32-column block.
 * Each activation row is rounded once to int16 with one scale (xq = rint(x * 32767 / max|x|),
 * ~15 bits), so a block's 32 products sum exactly in int32 (|sum| <= 32 * 127 * 32767 < 2^31):
 *   y = xscale * sum_b float(sum_i q_i xq_i) * scale_b
 * The SIMD paths keep 8 (AVX2) or 4 (NEON) float partial sums across blocks, so they differ from
 * the _ref twin's block-order sum only in float rounding (relative 1e-6). */
typedef struct {
    float *y;
    const int16_t *xq;  // [n][kpad]
    const float *xscale;  // [n]
    int64_t n, m, kpad;
    const int8_t *q;
    const float *scale;
} q8_ctx;

// x (k,) -> xq (kpad,) int16 (zero padded); returns the scale
static float q8_activations(int16_t *xq, const float *x, int64_t k, int64_t kpad) {
    float amax = 0.f;
    for (int64_t i = 0; i < k; i++) amax = fmaxf(amax, fabsf(x[i]));
    const float inv = amax > 0.f ? 32767.f / amax : 0.f;
    for (int64_t i = 0; i < k; i++) {
        float v = rintf(x[i] * inv);
        v = v > 32767.f ? 32767.f : v < -32767.f ? -32767.f : v;
        xq[i] = (int16_t)v;
    }
    for (int64_t i = k; i < kpad; i++) xq[i] = 0;
    return amax / 32767.f;
}

static inline float q8_row_ref(const int16_t *xq, const int8_t *q, const float *sc, int64_t kpad) {
    float acc = 0.f;
    for (int64_t b = 0; b * 32 < kpad; b++) {
        int32_t s = 0;
        for (int64_t i = b * 32; i < b * 32 + 32; i++) s += (int32_t)xq[i] * (int32_t)q[i];
        acc += (float)s * sc[b];
    }
    return acc;
}

#if defined(__AVX2__)
static inline __m256i q8_block_avx2(const int8_t *q, __m256i x0, __m256i x1) {
    const __m256i w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)q));
    const __m256i w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(q + 16)));
    return _mm256_add_epi32(_mm256_madd_epi16(w0, x0), _mm256_madd_epi16(w1, x1));
}

static inline float hsum_avx2(__m256 v) {
    float l[8], r = 0.f;
    _mm256_storeu_ps(l, v);
    for (int i = 0; i < 8; i++) r += l[i];
    return r;
}
#endif

/* rows r0 .. r0+nr-1 (nr <= 2 share the activation loads) */
static inline void q8_rows_fast(float *out, const int16_t *xq, const int8_t *q, const float *sc,
                                int64_t kpad, int nr) {
    const int64_t nb = kpad / 32;
#if defined(__AVX2__)
    if (nr == 2) {
        const int8_t *q1 = q + kpad;
        const float *sc1 = sc + nb;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0;
        for (int64_t b = 0; b < nb; b++) {
            const __m256i x0 = _mm256_loadu_si256((const __m256i *)(xq + 32 * b));
            const __m256i x1 = _mm256_loadu_si256((const __m256i *)(xq + 32 * b + 16));
            _mm_prefetch((const char *)(q + 32 * b) + 512, _MM_HINT_T0);
            _mm_prefetch((const char *)(q1 + 32 * b) + 512, _MM_HINT_T0);
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(_mm256_cvtepi32_ps(q8_block_avx2(q + 32 * b, x0, x1)),
                                                 _mm256_broadcast_ss(sc + b)));
            a1 = _mm256_add_ps(a1, _mm256_mul_ps(_mm256_cvtepi32_ps(q8_block_avx2(q1 + 32 * b, x0, x1)),
                                                 _mm256_broadcast_ss(sc1 + b)));
        }
        out[0] = hsum_avx2(a0);
        out[1] = hsum_avx2(a1);
        return;
    }
    __m256 a0 = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const __m256i x0 = _mm256_loadu_si256((const __m256i *)(xq + 32 * b));
        const __m256i x1 = _mm256_loadu_si256((const __m256i *)(xq + 32 * b + 16));
        a0 = _mm256_add_ps(a0, _mm256_mul_ps(_mm256_cvtepi32_ps(q8_block_avx2(q + 32 * b, x0, x1)),
                                             _mm256_broadcast_ss(sc + b)));
    }
    out[0] = hsum_avx2(a0);
#elif defined(__ARM_NEON)
    for (int r = 0; r < nr; r++) {
        const int8_t *qr = q + r * kpad;
        const float *sr = sc + r * nb;
        float32x4_t a = vdupq_n_f32(0.f);
        for (int64_t b = 0; b < nb; b++) {
            int32x4_t s = vdupq_n_s32(0);
            for (int h = 0; h < 2; h++) {
                const int8x16_t w = vld1q_s8(qr + 32 * b + 16 * h);
                const int16x8_t wl = vmovl_s8(vget_low_s8(w)), wh = vmovl_high_s8(w);
                const int16x8_t xl = vld1q_s16(xq + 32 * b + 16 * h);
                const int16x8_t xh = vld1q_s16(xq + 32 * b + 16 * h + 8);
                s = vmlal_s16(s, vget_low_s16(wl), vget_low_s16(xl));
                s = vmlal_high_s16(s, wl, xl);
                s = vmlal_s16(s, vget_low_s16(wh), vget_low_s16(xh));
                s = vmlal_high_s16(s, wh, xh);
            }
            a = vaddq_f32(a, vmulq_n_f32(vcvtq_f32_s32(s), sr[b]));
        }
        out[r] = vaddvq_f32(a);
    }
#else
    for (int r = 0; r < nr; r++) out[r] = q8_row_ref(xq, q + r * kpad, sc + r * nb, kpad);
#endif
}

static void q8_range(void *vctx, int64_t begin, int64_t end) {
    q8_ctx *c = vctx;
    const int64_t nb = c->kpad / 32;
    for (int64_t r = begin; r < end; r += 2) {
        const int nr = r + 1 < end ? 2 : 1;
        for (int64_t i = 0; i < c->n; i++) {
            float out[2];
            q8_rows_fast(out, c->xq + i * c->kpad, c->q + r * c->kpad, c->scale + r * nb,
                         c->kpad, nr);
            for (int j = 0; j < nr; j++) c->y[i * c->m + r + j] = out[j] * c->xscale[i];
        }
    }
}

static int16_t *q8_prepare(const float *x, int64_t n, int64_t k, int64_t kpad, float **xscale) {
    int16_t *xq = malloc((size_t)(n * kpad) * sizeof(int16_t));
    *xscale = malloc((size_t)n * sizeof(float));
    if (!xq || !*xscale) abort();
    for (int64_t i = 0; i < n; i++) (*xscale)[i] = q8_activations(xq + i * kpad, x + i * k, k, kpad);
    return xq;
}

void edgert_q8_gemm(float *y, const float *x, int64_t n, int64_t m, int64_t k, const int8_t *q,
                    const float *scale, int32_t threads) {
    assert(y && x && q && scale && k > 0);
    const int64_t kpad = (k + 31) / 32 * 32;
    float *xs;
    int16_t *xq = q8_prepare(x, n, k, kpad, &xs);
    q8_ctx c = {y, xq, xs, n, m, kpad, q, scale};
    /* split in row pairs so every worker's chunk keeps the two-row path */
    edgert_parallel_for(m, threads, q8_range, &c);
    free(xq);
    free(xs);
}

void edgert_q8_gemm_ref(float *y, const float *x, int64_t n, int64_t m, int64_t k,
                        const int8_t *q, const float *scale, int32_t threads) {
    (void)threads;
    const int64_t kpad = (k + 31) / 32 * 32;
    float *xs;
    int16_t *xq = q8_prepare(x, n, k, kpad, &xs);
    for (int64_t r = 0; r < m; r++)
        for (int64_t i = 0; i < n; i++)
            y[i * m + r] = q8_row_ref(xq + i * kpad, q + r * kpad, scale + r * (kpad / 32), kpad) *
                           xs[i];
    free(xq);
    free(xs);
}

/* ---- memory read bandwidth probe ----------------------------------------------------------- */
/* reads p[0, n) once with `threads` workers (wide loads, independent accumulators, so the loop is
 * bound by memory, not by adds) and returns a checksum of what it read */
typedef struct {
    const uint8_t *p;
    int64_t n;
    _Atomic uint64_t sum;
} read_ctx;

#define READ_BLOCK 4096

static void read_range(void *vctx, int64_t begin, int64_t end) {
    read_ctx *c = vctx;
    uint64_t s = 0;
    for (int64_t b = begin; b < end; b++) {
        const int64_t lo = b * READ_BLOCK, hi = lo + READ_BLOCK < c->n ? lo + READ_BLOCK : c->n;
        int64_t i = lo;
#if defined(__AVX2__)
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
        for (; i + 128 <= hi; i += 128) {
            a0 = _mm256_xor_si256(a0, _mm256_loadu_si256((const __m256i *)(c->p + i)));
            a1 = _mm256_xor_si256(a1, _mm256_loadu_si256((const __m256i *)(c->p + i + 32)));
            a2 = _mm256_xor_si256(a2, _mm256_loadu_si256((const __m256i *)(c->p + i + 64)));
            a3 = _mm256_xor_si256(a3, _mm256_loadu_si256((const __m256i *)(c->p + i + 96)));
        }
        uint64_t l[4];
        _mm256_storeu_si256((__m256i *)l, _mm256_xor_si256(_mm256_xor_si256(a0, a1),
                                                           _mm256_xor_si256(a2, a3)));
        s += l[0] ^ l[1] ^ l[2] ^ l[3];
#elif defined(__ARM_NEON)
        uint8x16_t a0 = vdupq_n_u8(0), a1 = a0, a2 = a0, a3 = a0;
        for (; i + 64 <= hi; i += 64) {
            a0 = veorq_u8(a0, vld1q_u8(c->p + i));
            a1 = veorq_u8(a1, vld1q_u8(c->p + i + 16));
            a2 = veorq_u8(a2, vld1q_u8(c->p + i + 32));
            a3 = veorq_u8(a3, vld1q_u8(c->p + i + 48));
        }
        const uint64x2_t v = vreinterpretq_u64_u8(veorq_u8(veorq_u8(a0, a1), veorq_u8(a2, a3)));
        s += vgetq_lane_u64(v, 0) ^ vgetq_lane_u64(v, 1);
#endif
        for (; i < hi; i++) s += c->p[i];
    }
    atomic_fetch_add(&c->sum, s);
}

uint64_t edgert_read_bytes(const uint8_t *p, int64_t n, int32_t threads) {
    read_ctx c = {p, n, 0};
    if (n > 0) edgert_parallel_for((n + READ_BLOCK - 1) / READ_BLOCK, threads, read_range, &c);
    return atomic_load(&c.sum);
}
