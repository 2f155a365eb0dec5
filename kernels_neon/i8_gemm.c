/* Prefill GEMM for uniform bit-plane weights by int8 dot products (many activation rows at once).
 *
 * The LUT kernels read a weight once per activation row: right for decode, where the weights
 * stream from DRAM, but a waste when one call holds many rows. Here each thread unpacks a tile's
 * bit-planes once into byte codes and reuses them over every row:
 *   activations: per row and weight group, d = amax / 127, x8 = rint(x * 127 / amax) in
 *     [-127, 127], sx = sum of x8 (quantize_row below: every path shares it);
 *   weights: codes q in [0, 2^bits) of one tile as [k4][32 rows][4 columns] bytes, and per group
 *     the float scale sc and sc * zero;
 *   y[r] = sum over groups, in order, of  acc = fma(S, sc * d, acc); acc = fma(-sc*zero, d * sx,
 *     acc)  with S = sum q x8 over the group, exact in int32 (codes of up to 6 bits, groups <= 256).
 * The integer sums are exact and every path does the same float operations in the same order, so
 * the SIMD kernels equal the scalar _ref twin bit for bit. The error against float weights is the
 * activations' rounding: at most d / 2 per element, as llama.cpp's Q8_0 / Q8_K activations.
 *
 * Kernels: AVX-512 VNNI (vpdpbusd: 64 products per instruction), AVX2 (vpmaddubsw, 16-bit sums of
 * up to 8 chunks, then vpmaddwd), scalar; on arm64 (i8_neon.c) smull and pairwise adds, sdot or
 * smmla, whichever the CPU has. */
#include <stdlib.h>

#include "lut_internal.h"

/* ---- activations: shared by every path ----------------------------------------------------- */
/* max |x[i]| over [lo, hi), and x rounded to int8 by inv (rint, then clamped to +-127) with the
 * sum of the results: SIMD where the build has it (the same values in any order: max and the
 * integer sum are exact, rint is the vector convert's round-to-nearest-even) */
static float absmax(const float *x, int64_t lo, int64_t hi) {
    float amax = 0.f;
    int64_t i = lo;
#if defined(EDGERT_AVX2)
    const __m256 sign = _mm256_set1_ps(-0.f);
    __m256 m = _mm256_setzero_ps();
    for (; i + 8 <= hi; i += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
    amax = _mm_cvtss_f32(h);
#elif defined(EDGERT_NEON)
    float32x4_t m = vdupq_n_f32(0.f);
    for (; i + 4 <= hi; i += 4) m = vmaxq_f32(m, vabsq_f32(vld1q_f32(x + i)));
    amax = vmaxvq_f32(m);
#endif
    for (; i < hi; i++) {
        const float a = fabsf(x[i]);
        amax = a > amax ? a : amax;
    }
    return amax;
}

static int32_t round_codes(int8_t *q, const float *x, int64_t lo, int64_t hi, float inv) {
    int32_t sum = 0;
    int64_t i = lo;
#if defined(EDGERT_AVX2)
    const __m256 vi = _mm256_set1_ps(inv);
    const __m256i top = _mm256_set1_epi32(127), bottom = _mm256_set1_epi32(-127);
    __m256i acc = _mm256_setzero_si256();
    for (; i + 8 <= hi; i += 8) {
        __m256i r = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i), vi));
        r = _mm256_max_epi32(_mm256_min_epi32(r, top), bottom);
        acc = _mm256_add_epi32(acc, r);
        const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
        _mm_storel_epi64((__m128i *)(q + i), _mm_packs_epi16(w, w));
    }
    __m128i h = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4e));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0xb1));
    sum = _mm_cvtsi128_si32(h);
#elif defined(EDGERT_NEON)
    const float32x4_t vi = vdupq_n_f32(inv);
    int32x4_t acc = vdupq_n_s32(0);
    for (; i + 4 <= hi; i += 4) {
        int32x4_t r = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(x + i), vi));
        r = vmaxq_s32(vminq_s32(r, vdupq_n_s32(127)), vdupq_n_s32(-127));
        acc = vaddq_s32(acc, r);
        const int16x4_t w = vmovn_s32(r);
        const int8x8_t b = vmovn_s16(vcombine_s16(w, w));
        int32_t word = vget_lane_s32(vreinterpret_s32_s8(b), 0);
        memcpy(q + i, &word, 4);
    }
    sum = vaddvq_s32(acc);
#endif
    for (; i < hi; i++) {
        long v = lrintf(x[i] * inv);
        v = v > 127 ? 127 : v < -127 ? -127 : v;
        q[i] = (int8_t)v;
        sum += (int32_t)v;
    }
    return sum;
}

static void quantize_row(const float *x, const shape_t *s, int8_t *x8, float *d, float *dsx) {
    for (int64_t g = 0; g < s->groups; g++) {
        const int64_t lo = g * s->group, hi = lo + s->group < s->k ? lo + s->group : s->k;
        const float amax = absmax(x, lo, hi), inv = amax > 0.f ? 127.f / amax : 0.f;
        const int32_t sum = round_codes(x8, x, lo, hi, inv);
        memset(x8 + hi, 0, (size_t)(lo + s->group - hi));
        d[g] = amax / 127.f;
        dsx[g] = d[g] * (float)sum;
    }
}

/* ---- weights: a tile's codes and float group parameters ------------------------------------ */
/* codes [k4][32][4]: row r's columns 4c .. 4c+3 at codes + (c * 32 + r) * 4 */
static void unpack_codes_scalar(uint8_t *codes, const uint8_t *planes, int64_t tile,
                                const shape_t *s) {
    const int b = s->bits;
    for (int64_t c = 0; c < s->k4; c++) {
        uint8_t *out = codes + c * 128;
        memset(out, 0, 128);
        for (int j = 0; j < b; j++) {
            const uint8_t *p = planes + ((tile * s->k4 + c) * b + j) * 16;
            for (int i = 0; i < 16; i++)
                for (int col = 0; col < 4; col++) {
                    out[i * 4 + col] |= (uint8_t)(((p[i] >> col) & 1) << j);
                    out[(i + 16) * 4 + col] |= (uint8_t)(((p[i] >> (4 + col)) & 1) << j);
                }
        }
    }
}

/* sc [groups][32] = the scales as floats, sz = sc * zero (float16 converted exactly: h2f, or the
 * F16C / NEON conversion where the build has it) */
static void group_params(float *sc, float *sz, const uint16_t *scale, const uint16_t *zero,
                         int64_t tile, const shape_t *s) {
    for (int64_t g = 0; g < s->groups; g++) {
        const uint16_t *a = scale_at(scale, tile, g, s), *z = zero_at(zero, tile, g, s);
        int r = 0;
#if defined(EDGERT_AVX2)
        for (; r < T; r += 8) {
            const __m256 av = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + r)));
            const __m256 zv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(z + r)));
            _mm256_storeu_ps(sc + g * T + r, av);
            _mm256_storeu_ps(sz + g * T + r, _mm256_mul_ps(av, zv));
        }
#elif defined(EDGERT_NEON)
        for (; r < T; r += 4) {
            const float32x4_t av = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(a + r)));
            const float32x4_t zv = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(z + r)));
            vst1q_f32(sc + g * T + r, av);
            vst1q_f32(sz + g * T + r, vmulq_f32(av, zv));
        }
#endif
        for (; r < T; r++) {
            sc[g * T + r] = h2f(a[r]);
            sz[g * T + r] = sc[g * T + r] * h2f(z[r]);
        }
    }
}

/* y [na][32] (row a at y + a * ldy) = the tile's rows for activation rows x8 [na][kpad] (d, dsx
 * [na][groups]) */
EDGERT_HIDDEN void edgert_i8_kernel_ref(float *y, int64_t ldy, const uint8_t *codes,
                                       const float *sc, const float *sz, const int8_t *x8,
                                       const float *d, const float *dsx, int64_t na,
                                       const shape_t *s) {
    const int per = s->group / 4;
    for (int64_t a = 0; a < na; a++) {
        const int8_t *xa = x8 + a * s->kpad;
        for (int r = 0; r < T; r++) {
            float acc = 0.f;
            for (int64_t g = 0; g < s->groups; g++) {
                int32_t sum = 0;
                for (int64_t c = g * per; c < (g + 1) * per; c++)
                    for (int col = 0; col < 4; col++)
                        sum += (int32_t)codes[(c * T + r) * 4 + col] * (int32_t)xa[4 * c + col];
                const float *da = d + a * s->groups, *xa_s = dsx + a * s->groups;
                acc = fmaf((float)sum, sc[g * T + r] * da[g], acc);
                acc = fmaf(-sz[g * T + r], xa_s[g], acc);
            }
            y[a * ldy + r] = acc;
        }
    }
}

#define kernel_ref edgert_i8_kernel_ref

/* ---- SIMD kernels ---------------------------------------------------------------------------- */
#if defined(EDGERT_AVX2)
/* 16 rows' nibbles (bytes 0..15 of v, 0..15) -> each row's nibble in 4 bytes, 8 rows per ymm */
static inline void unpack_codes_avx2(uint8_t *codes, const uint8_t *planes, int64_t tile,
                                     const shape_t *s) {
    const int b = s->bits;
    const __m256i spread0 = _mm256_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4,
                                             4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7);
    const __m256i spread1 = _mm256_add_epi8(spread0, _mm256_set1_epi8(8));
    const __m256i bit = _mm256_set1_epi32(0x08040201), one = _mm256_set1_epi8(1),
                  low = _mm256_set1_epi8(15);
    for (int64_t c = 0; c < s->k4; c++) {
        __m256i out[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                          _mm256_setzero_si256()};
        for (int j = 0; j < b; j++) {
            const __m128i p =
                _mm_loadu_si128((const __m128i *)(planes + ((tile * s->k4 + c) * b + j) * 16));
            const __m256i both = _mm256_broadcastsi128_si256(p);
            const __m256i lo = _mm256_and_si256(both, low),
                          hi = _mm256_and_si256(_mm256_srli_epi16(both, 4), low);
            const __m256i rep[4] = {_mm256_shuffle_epi8(lo, spread0), _mm256_shuffle_epi8(lo, spread1),
                                    _mm256_shuffle_epi8(hi, spread0), _mm256_shuffle_epi8(hi, spread1)};
            for (int q = 0; q < 4; q++) {
                const __m256i set = _mm256_min_epu8(_mm256_and_si256(rep[q], bit), one);
                out[q] = _mm256_or_si256(out[q], _mm256_slli_epi16(set, j));
            }
        }
        for (int q = 0; q < 4; q++) _mm256_storeu_si256((__m256i *)(codes + c * 128 + q * 32), out[q]);
    }
}
#if defined(EDGERT_AVX512)
/* 16 rows per zmm: the plane's 16 bytes in every 128-bit lane, each lane spreading 4 rows'
 * nibbles to 4 bytes; a byte mask of the set bits adds the plane's weight */
static inline void unpack_codes_avx512(uint8_t *codes, const uint8_t *planes, int64_t tile,
                                       const shape_t *s) {
    const int b = s->bits;
    const __m512i spread = _mm512_set_epi32(
        0x0f0f0f0f, 0x0e0e0e0e, 0x0d0d0d0d, 0x0c0c0c0c, 0x0b0b0b0b, 0x0a0a0a0a, 0x09090909,
        0x08080808, 0x07070707, 0x06060606, 0x05050505, 0x04040404, 0x03030303, 0x02020202,
        0x01010101, 0x00000000);
    const __m512i bit = _mm512_set1_epi32(0x08040201), low = _mm512_set1_epi8(15);
    for (int64_t c = 0; c < s->k4; c++) {
        __m512i out0 = _mm512_setzero_si512(), out1 = out0;
        for (int j = 0; j < b; j++) {
            const __m512i p = _mm512_broadcast_i32x4(
                _mm_loadu_si128((const __m128i *)(planes + ((tile * s->k4 + c) * b + j) * 16)));
            const __m512i lo = _mm512_and_si512(p, low),
                          hi = _mm512_and_si512(_mm512_srli_epi16(p, 4), low);
            const __m512i w = _mm512_set1_epi8((char)(1 << j));
            out0 = _mm512_mask_add_epi8(out0, _mm512_test_epi8_mask(_mm512_shuffle_epi8(lo, spread), bit),
                                        out0, w);
            out1 = _mm512_mask_add_epi8(out1, _mm512_test_epi8_mask(_mm512_shuffle_epi8(hi, spread), bit),
                                        out1, w);
        }
        _mm512_store_si512(codes + c * 128, out0);
        _mm512_store_si512(codes + c * 128 + 64, out1);
    }
}
#define unpack_codes_fast unpack_codes_avx512
#else
#define unpack_codes_fast unpack_codes_avx2
#endif

#if defined(__AVX512VNNI__) && defined(EDGERT_AVX512)
#define I8_KERNEL "avx512vnni"
/* 4 activation rows x 32 weight rows: 8 int32 and 8 float accumulators in registers (named,
 * not arrays: gcc kept arrays of vectors in moves and spills, at 26 products per cycle) */
#define I8_DOT(i)                                                                             \
    {                                                                                         \
        int32_t xv;                                                                           \
        memcpy(&xv, x0 + (i) * kpad + 4 * c, 4);                                             \
        const __m512i xb = _mm512_set1_epi32(xv);                                             \
        s##i##0 = _mm512_dpbusd_epi32(s##i##0, w0, xb);                                       \
        s##i##1 = _mm512_dpbusd_epi32(s##i##1, w1, xb);                                       \
    }
#define I8_EPI(i)                                                                             \
    {                                                                                         \
        const __m512 di = _mm512_set1_ps(d[(a + (i)) * G + g]);                               \
        const __m512 xi = _mm512_set1_ps(dsx[(a + (i)) * G + g]);                             \
        f##i##0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s##i##0), _mm512_mul_ps(c0, di), f##i##0); \
        f##i##1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s##i##1), _mm512_mul_ps(c1, di), f##i##1); \
        f##i##0 = _mm512_fnmadd_ps(z0, xi, f##i##0);                                          \
        f##i##1 = _mm512_fnmadd_ps(z1, xi, f##i##1);                                          \
    }
static void kernel_fast(float *y, int64_t ldy, const uint8_t *codes, const float *sc, const float *sz,
                        const int8_t *x8, const float *d, const float *dsx, int64_t na,
                        const shape_t *s) {
    const int per = s->group / 4;
    const int64_t G = s->groups, kpad = s->kpad;
    int64_t a = 0;
    for (; a + 4 <= na; a += 4) {
        __m512 f00 = _mm512_setzero_ps(), f01 = f00, f10 = f00, f11 = f00, f20 = f00, f21 = f00,
               f30 = f00, f31 = f00;
        const int8_t *x0 = x8 + a * kpad;
        for (int64_t g = 0; g < G; g++) {
            __m512i s00 = _mm512_setzero_si512(), s01 = s00, s10 = s00, s11 = s00, s20 = s00,
                    s21 = s00, s30 = s00, s31 = s00;
            for (int64_t c = g * per; c < (g + 1) * per; c++) {
                const __m512i w0 = _mm512_load_si512(codes + c * 128),
                              w1 = _mm512_load_si512(codes + c * 128 + 64);
                I8_DOT(0) I8_DOT(1) I8_DOT(2) I8_DOT(3)
            }
            const __m512 c0 = _mm512_loadu_ps(sc + g * T), c1 = _mm512_loadu_ps(sc + g * T + 16);
            const __m512 z0 = _mm512_loadu_ps(sz + g * T), z1 = _mm512_loadu_ps(sz + g * T + 16);
            I8_EPI(0) I8_EPI(1) I8_EPI(2) I8_EPI(3)
        }
        _mm512_storeu_ps(y + a * ldy, f00);
        _mm512_storeu_ps(y + a * ldy + 16, f01);
        _mm512_storeu_ps(y + (a + 1) * ldy, f10);
        _mm512_storeu_ps(y + (a + 1) * ldy + 16, f11);
        _mm512_storeu_ps(y + (a + 2) * ldy, f20);
        _mm512_storeu_ps(y + (a + 2) * ldy + 16, f21);
        _mm512_storeu_ps(y + (a + 3) * ldy, f30);
        _mm512_storeu_ps(y + (a + 3) * ldy + 16, f31);
    }
    if (a < na)
        kernel_ref(y + a * ldy, ldy, codes, sc, sz, x8 + a * kpad, d + a * G, dsx + a * G, na - a,
                   s);
}
#else
#define I8_KERNEL "avx2"
/* 2 activation rows x 32 weight rows: 16-bit sums of up to 8 chunks (|sum| <= 8 x 2 x 15 x 127
 * = 30480), widened to int32 by vpmaddwd, float accumulators in y */
static void kernel_fast(float *y, int64_t ldy, const uint8_t *codes, const float *sc, const float *sz,
                        const int8_t *x8, const float *d, const float *dsx, int64_t na,
                        const shape_t *s) {
    const int per = s->group / 4;
    const int64_t G = s->groups, kpad = s->kpad;
    const __m256i ones = _mm256_set1_epi16(1);
    int64_t a = 0;
    for (; a + 2 <= na; a += 2) {
        __m256 f[2][4];
        for (int i = 0; i < 2; i++)
            for (int q = 0; q < 4; q++) f[i][q] = _mm256_setzero_ps();
        const int8_t *x0 = x8 + a * kpad;
        for (int64_t g = 0; g < G; g++) {
            __m256i acc[2][4];
            for (int i = 0; i < 2; i++)
                for (int q = 0; q < 4; q++) acc[i][q] = _mm256_setzero_si256();
            for (int64_t c0 = g * per; c0 < (g + 1) * per; c0 += 8) {
                const int64_t c1 = c0 + 8 < (g + 1) * per ? c0 + 8 : (g + 1) * per;
                __m256i h[2][4];
                for (int i = 0; i < 2; i++)
                    for (int q = 0; q < 4; q++) h[i][q] = _mm256_setzero_si256();
                for (int64_t c = c0; c < c1; c++) {
                    int32_t xv[2];
                    memcpy(&xv[0], x0 + 4 * c, 4);
                    memcpy(&xv[1], x0 + kpad + 4 * c, 4);
                    const __m256i xb0 = _mm256_set1_epi32(xv[0]), xb1 = _mm256_set1_epi32(xv[1]);
                    for (int q = 0; q < 4; q++) {
                        const __m256i w = _mm256_loadu_si256((const __m256i *)(codes + c * 128 + q * 32));
                        h[0][q] = _mm256_add_epi16(h[0][q], _mm256_maddubs_epi16(w, xb0));
                        h[1][q] = _mm256_add_epi16(h[1][q], _mm256_maddubs_epi16(w, xb1));
                    }
                }
                for (int i = 0; i < 2; i++)
                    for (int q = 0; q < 4; q++)
                        acc[i][q] = _mm256_add_epi32(acc[i][q], _mm256_madd_epi16(h[i][q], ones));
            }
            for (int i = 0; i < 2; i++) {
                const __m256 di = _mm256_set1_ps(d[(a + i) * G + g]);
                const __m256 xi = _mm256_set1_ps(dsx[(a + i) * G + g]);
                for (int q = 0; q < 4; q++) {
                    const __m256 sq = _mm256_loadu_ps(sc + g * T + 8 * q),
                                 zq = _mm256_loadu_ps(sz + g * T + 8 * q);
                    f[i][q] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[i][q]), _mm256_mul_ps(sq, di), f[i][q]);
                    f[i][q] = _mm256_fnmadd_ps(zq, xi, f[i][q]);
                }
            }
        }
        for (int i = 0; i < 2; i++)
            for (int q = 0; q < 4; q++) _mm256_storeu_ps(y + (a + i) * ldy + 8 * q, f[i][q]);
    }
    if (a < na)
        kernel_ref(y + a * ldy, ldy, codes, sc, sz, x8 + a * kpad, d + a * G, dsx + a * G, na - a,
                   s);
}
#endif

#elif defined(EDGERT_NEON)
/* the NEON tile kernels, one per arm64 feature level chosen when the library loads: i8_neon.c */
#define unpack_codes_fast edgert_i8_unpack_neon
#define kernel_fast_for edgert_i8_neon_kernel
const char *edgert_i8_kernel(void) { return edgert_i8_neon_name(); }
#else
#define I8_KERNEL "scalar"
#define unpack_codes_fast unpack_codes_scalar
#define kernel_fast kernel_ref
#endif

#if !defined(EDGERT_NEON)
#define kernel_fast_for(s) kernel_fast
const char *edgert_i8_kernel(void) { return I8_KERNEL; }
#endif

/* vpdpbusd, sdot, smmla and smull + pairwise adds sum each product in int32 (codes up to 6 bits
 * are exact as unsigned or signed bytes); the AVX2 kernel sums pairs of products over 8 chunks in
 * 16-bit lanes (15 x 127 x 16 < 2^15): 4-bit codes at most */
EDGERT_HIDDEN int edgert_i8_max_bits(void) {
#if defined(EDGERT_NEON) || (defined(__AVX512VNNI__) && defined(EDGERT_AVX512)) || !EDGERT_I8_FAST
    return EDGERT_MAX_BITS;
#else
    return 4;
#endif
}

/* ---- the GEMM: tiles over threads, each thread unpacking its tiles once --------------------- */
typedef struct {
    const family_t *w;
    int64_t n;
    const int8_t *x8;
    const float *d, *dsx;
    const shape_t *s;
    int fast;
} i8_ctx;

/* activation rows per kernel call: their outputs (rows x 32 floats) stay in L1 */
#define I8_ROWS 64

static void i8_range(void *vctx, int64_t begin, int64_t end) {
    const i8_ctx *c = vctx;
    const shape_t *s = c->s;
    const size_t cbytes = (size_t)(s->k4 * 128), pbytes = (size_t)(s->groups * T) * sizeof(float);
    const size_t need = cbytes + 2 * pbytes + (size_t)(I8_ROWS * T) * sizeof(float);
    uint8_t *codes = edgert_thread_scratch(EDGERT_SCRATCH_CODES, need);
    float *sc = (float *)(codes + cbytes), *sz = sc + s->groups * T, *out = sz + s->groups * T;
    for (int64_t g = begin; g < end; g++) {
        int j;
        int64_t t;
        locate(c->w, g, &j, &t);
        const int64_t m = c->w->m[j], rows = m - t * T < T ? m - t * T : T;
        if (c->fast)
            unpack_codes_fast(codes, c->w->planes[j], t, s);
        else
            unpack_codes_scalar(codes, c->w->planes[j], t, s);
        group_params(sc, sz, c->w->scale[j], c->w->zero[j], t, s);
        const i8_kernel_fn kernel = c->fast ? kernel_fast_for(s) : kernel_ref;
        for (int64_t a0 = 0; a0 < c->n; a0 += I8_ROWS) {
            const int64_t na = c->n - a0 < I8_ROWS ? c->n - a0 : I8_ROWS;
            float *y = c->w->y[j] + a0 * m + t * T;
            const int8_t *x8 = c->x8 + a0 * s->kpad;
            const float *d = c->d + a0 * s->groups, *dsx = c->dsx + a0 * s->groups;
            if (rows == T) { /* a whole tile: straight into y */
                kernel(y, m, codes, sc, sz, x8, d, dsx, na, s);
                continue;
            }
            kernel(out, T, codes, sc, sz, x8, d, dsx, na, s);
            for (int64_t a = 0; a < na; a++)
                memcpy(y + a * m, out + a * T, (size_t)rows * sizeof(float));
        }
    }
}

typedef struct {
    const float *x;
    const shape_t *s;
    int8_t *x8;
    float *d, *dsx;
} quant_ctx;

static void quant_range(void *vctx, int64_t begin, int64_t end) {
    const quant_ctx *q = vctx;
    for (int64_t i = begin; i < end; i++)
        quantize_row(q->x + i * q->s->k, q->s, q->x8 + i * q->s->kpad, q->d + i * q->s->groups,
                     q->dsx + i * q->s->groups);
}

EDGERT_HIDDEN void edgert_i8_gemm_impl(const family_t *w, const float *x, int64_t n,
                                       const shape_t *s, int32_t threads, int fast) {
    const int64_t tiles = w->first[w->count];
    if (n == 0 || tiles == 0) return;
    int8_t *x8 = malloc((size_t)(n * s->kpad));
    float *d = malloc((size_t)(n * s->groups) * sizeof(float));
    float *dsx = malloc((size_t)(n * s->groups) * sizeof(float));
    if (!x8 || !d || !dsx) abort();
    quant_ctx q = {x, s, x8, d, dsx};
    edgert_parallel_for(n, threads, quant_range, &q);
    i8_ctx c = {w, n, x8, d, dsx, s, fast};
    edgert_parallel_chunks(tiles, threads, 2, i8_range, &c);
    free(x8);
    free(d);
    free(dsx);
}

/* the entry points of edgert_kernels.h: one weight */
static void i8_gemm_one(float *y, const float *x, int64_t n, int64_t m, int64_t k,
                        const uint8_t *planes, const uint16_t *scale, const uint16_t *zero,
                        int32_t bits, int32_t group, int32_t threads, int fast) {
    shape_t s;
    family_t w;
    EDGERT_CHECK(x && n >= 0);
    if (!make_shape(&s, k, bits, group, EDGERT_FMT_UNIFORM) || (fast && bits > edgert_i8_max_bits()))
        abort();  // validated by the caller
    make_family(&w, 1, &y, &m, &planes, &scale, &zero);
    edgert_i8_gemm_impl(&w, x, n, &s, threads, fast);
}

void edgert_i8_gemm(float *y, const float *x, int64_t n, int64_t m, int64_t k,
                    const uint8_t *planes, const uint16_t *scale, const uint16_t *zero,
                    int32_t bits, int32_t group, int32_t threads) {
    i8_gemm_one(y, x, n, m, k, planes, scale, zero, bits, group, threads, 1);
}

void edgert_i8_gemm_ref(float *y, const float *x, int64_t n, int64_t m, int64_t k,
                        const uint8_t *planes, const uint16_t *scale, const uint16_t *zero,
                        int32_t bits, int32_t group, int32_t threads) {
    i8_gemm_one(y, x, n, m, k, planes, scale, zero, bits, group, threads, 0);
}
