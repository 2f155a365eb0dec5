/* Vector helpers of the forward pass, inline (attention calls them per key): each fast helper has
 * a scalar _ref twin that does the same float operations in the same order for this build's ISA
 * (the SIMD lanes as separate partial sums, reduced as the SIMD code reduces them), so the two
 * are bit-identical on every build (tests/kernels/lut_test_driver.c checks it). */
#ifndef EDGERT_VEC_H
#define EDGERT_VEC_H
#include "lut_internal.h"

/* ---- dot product: a (n,) . b (n,) ---------------------------------------------------------- */
#if defined(EDGERT_AVX2)
#define DOT_STEP 16 /* two 8-lane accumulators */
#elif defined(EDGERT_NEON)
#define DOT_STEP 8 /* two 4-lane accumulators */
#else
#define DOT_STEP 0
#endif

static inline float dot_ref(const float *a, const float *b, int64_t n) {
    int64_t i = 0;
    float r = 0.f;
#if DOT_STEP
    enum { L = DOT_STEP / 2 };
    float s0[L] = {0}, s1[L] = {0}, l[L];
    for (; i + DOT_STEP <= n; i += DOT_STEP)
        for (int j = 0; j < L; j++) {
            s0[j] = s0[j] + a[i + j] * b[i + j];
            s1[j] = s1[j] + a[i + L + j] * b[i + L + j];
        }
    for (int j = 0; j < L; j++) l[j] = s0[j] + s1[j];
#if defined(EDGERT_AVX2)
    for (int j = 0; j < L; j++) r += l[j];
#else /* NEON's pairwise reduction */
    r = (l[0] + l[1]) + (l[2] + l[3]);
#endif
#endif
    for (; i < n; i++) r += a[i] * b[i];
    return r;
}

static inline float dot(const float *a, const float *b, int64_t n) {
    int64_t i = 0;
    float r = 0.f;
#if defined(EDGERT_AVX2)
    __m256 s0 = _mm256_setzero_ps(), s1 = s0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_add_ps(s0, _mm256_mul_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
        s1 = _mm256_add_ps(s1,
                           _mm256_mul_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8)));
    }
    float l[8];
    _mm256_storeu_ps(l, _mm256_add_ps(s0, s1));
    for (int j = 0; j < 8; j++) r += l[j];
#elif defined(EDGERT_NEON)
    float32x4_t s0 = vdupq_n_f32(0.f), s1 = s0;
    for (; i + 8 <= n; i += 8) {
        s0 = vaddq_f32(s0, vmulq_f32(vld1q_f32(a + i), vld1q_f32(b + i)));
        s1 = vaddq_f32(s1, vmulq_f32(vld1q_f32(a + i + 4), vld1q_f32(b + i + 4)));
    }
    r = vaddvq_f32(vaddq_f32(s0, s1));
#endif
    for (; i < n; i++) r += a[i] * b[i];
    return r;
}

/* ---- y (n,) += a x (n,) ---------------------------------------------------------------------- */
static inline void axpy_ref(float *y, float a, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

static inline void axpy(float *y, float a, const float *x, int64_t n) {
    int64_t i = 0;
#if defined(EDGERT_AVX2)
    const __m256 av = _mm256_set1_ps(a);
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i),
                                              _mm256_mul_ps(av, _mm256_loadu_ps(x + i))));
#elif defined(EDGERT_NEON)
    const float32x4_t av = vdupq_n_f32(a);
    for (; i + 4 <= n; i += 4)
        vst1q_f32(y + i, vaddq_f32(vld1q_f32(y + i), vmulq_f32(av, vld1q_f32(x + i))));
#endif
    for (; i < n; i++) y[i] += a * x[i];
}

/* ---- codes [0, 2^bits) of elements [begin, end) (a whole number of bytes) as floats --------- */
/* (low bits first: element i in byte i * bits / 8; bits 2, 4 or 8) */
static inline void unpack_codes_ref(float *out, const uint8_t *codes, int32_t bits, int64_t begin,
                                    int64_t end) {
    const int per = 8 / bits, mask = (1 << bits) - 1;
    for (int64_t i = begin; i < end; i++)
        out[i - begin] = (float)((codes[i / per] >> (bits * (i % per))) & mask);
}

static inline void unpack_codes(float *out, const uint8_t *codes, int32_t bits, int64_t begin,
                                int64_t end) {
    int64_t i = begin;
    if (bits == 8) {
#if defined(EDGERT_AVX2)
        for (; i + 8 <= end; i += 8) {
            const __m128i b = _mm_loadl_epi64((const __m128i *)(codes + i));
            _mm256_storeu_ps(out + i - begin, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b)));
        }
#elif defined(EDGERT_NEON)
        for (; i + 8 <= end; i += 8) {
            const uint16x8_t b = vmovl_u8(vld1_u8(codes + i));
            vst1q_f32(out + i - begin, vcvtq_f32_u32(vmovl_u16(vget_low_u16(b))));
            vst1q_f32(out + i - begin + 4, vcvtq_f32_u32(vmovl_u16(vget_high_u16(b))));
        }
#endif
        for (; i < end; i++) out[i - begin] = (float)codes[i];
    } else if (bits == 4) {
        /* 16 codes from 8 bytes: low nibble first */
#if defined(EDGERT_AVX2)
        const __m128i m4 = _mm_set1_epi8(15);
        for (; i + 16 <= end; i += 16) {
            const __m128i b = _mm_loadl_epi64((const __m128i *)(codes + i / 2));
            const __m128i lo = _mm_and_si128(b, m4), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m4);
            const __m128i v = _mm_unpacklo_epi8(lo, hi);
            _mm256_storeu_ps(out + i - begin, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)));
            _mm256_storeu_ps(out + i - begin + 8,
                             _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(v, 8))));
        }
#elif defined(EDGERT_NEON)
        for (; i + 16 <= end; i += 16) {
            const uint8x8_t b = vld1_u8(codes + i / 2);
            const uint8x8x2_t z = vzip_u8(vand_u8(b, vdup_n_u8(15)), vshr_n_u8(b, 4));
            const uint16x8_t a0 = vmovl_u8(z.val[0]), a1 = vmovl_u8(z.val[1]);
            float *o = out + i - begin;
            vst1q_f32(o, vcvtq_f32_u32(vmovl_u16(vget_low_u16(a0))));
            vst1q_f32(o + 4, vcvtq_f32_u32(vmovl_u16(vget_high_u16(a0))));
            vst1q_f32(o + 8, vcvtq_f32_u32(vmovl_u16(vget_low_u16(a1))));
            vst1q_f32(o + 12, vcvtq_f32_u32(vmovl_u16(vget_high_u16(a1))));
        }
#endif
        for (; i < end; i += 2) {
            const uint8_t b = codes[i / 2];
            out[i - begin] = (float)(b & 15);
            out[i - begin + 1] = (float)(b >> 4);
        }
    } else { /* 2 */
        for (; i < end; i += 4) {
            const uint8_t b = codes[i / 4];
            for (int j = 0; j < 4; j++) out[i - begin + j] = (float)((b >> (2 * j)) & 3);
        }
    }
}

#endif
