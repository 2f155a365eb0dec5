/* Vector helpers of the forward pass, inline (attention calls them per row): each fast helper has
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

/* ---- y (n,) = exp(x) elementwise (y may be x) ----------------------------------------------- */
/* Cephes' expf: x clamped to [-87.3, 88], 2^round(x log2 e) times a degree-5 polynomial of the
 * remainder, each step a separate multiply or add in this order (within 2 ulp of expf; softmax
 * and SiLU call it on whole rows) */
static inline float exp_one(float x) {
    x = x > 88.f ? 88.f : x < -87.3f ? -87.3f : x;
    const float fx = rintf(x * 1.44269504088896341f);
    const float r = (x - fx * 0.693359375f) - fx * -2.12194440e-4f;
    float p = 1.9875691500E-4f;
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    p = p * (r * r) + r + 1.f;
    const uint32_t bits = (uint32_t)((int32_t)fx + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

static inline void exp_array_ref(float *y, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = exp_one(x[i]);
}

static inline void exp_array(float *y, const float *x, int64_t n) {
    int64_t i = 0;
#if defined(EDGERT_AVX2)
    const __m256 hi = _mm256_set1_ps(88.f), lo = _mm256_set1_ps(-87.3f);
#define EXP_C(v) _mm256_set1_ps(v)
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_max_ps(_mm256_min_ps(_mm256_loadu_ps(x + i), hi), lo);
        const __m256 fx = _mm256_round_ps(_mm256_mul_ps(v, EXP_C(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const __m256 r = _mm256_sub_ps(_mm256_sub_ps(v, _mm256_mul_ps(fx, EXP_C(0.693359375f))),
                                       _mm256_mul_ps(fx, EXP_C(-2.12194440e-4f)));
        __m256 p = EXP_C(1.9875691500E-4f);
        p = _mm256_add_ps(_mm256_mul_ps(p, r), EXP_C(1.3981999507E-3f));
        p = _mm256_add_ps(_mm256_mul_ps(p, r), EXP_C(8.3334519073E-3f));
        p = _mm256_add_ps(_mm256_mul_ps(p, r), EXP_C(4.1665795894E-2f));
        p = _mm256_add_ps(_mm256_mul_ps(p, r), EXP_C(1.6666665459E-1f));
        p = _mm256_add_ps(_mm256_mul_ps(p, r), EXP_C(5.0000001201E-1f));
        p = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(p, _mm256_mul_ps(r, r)), r), EXP_C(1.f));
        const __m256i e = _mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
        _mm256_storeu_ps(y + i, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
    }
#undef EXP_C
#elif defined(EDGERT_NEON)
    for (; i + 4 <= n; i += 4) {
        const float32x4_t v = vmaxq_f32(vminq_f32(vld1q_f32(x + i), vdupq_n_f32(88.f)),
                                        vdupq_n_f32(-87.3f));
        const float32x4_t fx = vrndnq_f32(vmulq_n_f32(v, 1.44269504088896341f));
        const float32x4_t r =
            vsubq_f32(vsubq_f32(v, vmulq_n_f32(fx, 0.693359375f)), vmulq_n_f32(fx, -2.12194440e-4f));
        float32x4_t p = vdupq_n_f32(1.9875691500E-4f);
        p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(1.3981999507E-3f));
        p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(8.3334519073E-3f));
        p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(4.1665795894E-2f));
        p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(1.6666665459E-1f));
        p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(5.0000001201E-1f));
        p = vaddq_f32(vaddq_f32(vmulq_f32(p, vmulq_f32(r, r)), r), vdupq_n_f32(1.f));
        const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtnq_s32_f32(fx), vdupq_n_s32(127)), 23);
        vst1q_f32(y + i, vmulq_f32(p, vreinterpretq_f32_s32(e)));
    }
#endif
    for (; i < n; i++) y[i] = exp_one(x[i]);
}

/* ---- softmax's pieces over a row of attention scores ---------------------------------------- */
/* s (n,) = s * mul (mul != 0) or s / div, elementwise; returns the largest (-inf for n = 0): every
 * operation is exact or elementwise, so any lane order gives the same bits */
static inline float scale_max(float *s, int64_t n, float mul, float div) {
    int64_t i = 0;
    float mx = -INFINITY;
#if defined(EDGERT_AVX2)
    __m256 vm = _mm256_set1_ps(-INFINITY);
    const __m256 mv = _mm256_set1_ps(mul), dv = _mm256_set1_ps(div);
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_loadu_ps(s + i);
        const __m256 y = mul != 0.f ? _mm256_mul_ps(x, mv) : _mm256_div_ps(x, dv);
        _mm256_storeu_ps(s + i, y);
        vm = _mm256_max_ps(vm, y);
    }
    float l[8];
    _mm256_storeu_ps(l, vm);
    for (int j = 0; j < 8; j++) mx = l[j] > mx ? l[j] : mx;
#elif defined(EDGERT_NEON)
    float32x4_t vm = vdupq_n_f32(-INFINITY);
    for (; i + 4 <= n; i += 4) {
        const float32x4_t x = vld1q_f32(s + i);
        const float32x4_t y = mul != 0.f ? vmulq_n_f32(x, mul) : vdivq_f32(x, vdupq_n_f32(div));
        vst1q_f32(s + i, y);
        vm = vmaxq_f32(vm, y);
    }
    mx = vmaxvq_f32(vm);
#endif
    for (; i < n; i++) {
        s[i] = mul != 0.f ? s[i] * mul : s[i] / div;
        mx = s[i] > mx ? s[i] : mx;
    }
    return mx;
}

/* y (n,) = x - c elementwise */
static inline void sub_scalar(float *y, const float *x, float c, int64_t n) {
    int64_t i = 0;
#if defined(EDGERT_AVX2)
    const __m256 cv = _mm256_set1_ps(c);
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_sub_ps(_mm256_loadu_ps(x + i), cv));
#elif defined(EDGERT_NEON)
    const float32x4_t cv = vdupq_n_f32(c);
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vsubq_f32(vld1q_f32(x + i), cv));
#endif
    for (; i < n; i++) y[i] = x[i] - c;
}

/* ---- y (n,) += scale * (acc - zero * h), scale and zero (n,) float16 bits --------------------- */
/* (sum over neurons j of h_j * scale * (q_j - zero) = scale * (sum h_j q_j - zero * sum h_j): the
 * down columns of one group of neurons, which share its scales and zeros; h = 1 and y = 0
 * dequantize one column) */
/* o (n,) = the float16 values h (exact) */
static inline void h2f_row(float *o, const uint16_t *h, int64_t n) {
    int64_t i = 0;
#if defined(EDGERT_AVX2)
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(o + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
#elif defined(EDGERT_NEON)
    for (; i + 4 <= n; i += 4) vst1q_f32(o + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h + i))));
#endif
    for (; i < n; i++) o[i] = h2f(h[i]);
}

static inline void affine_acc_ref(float *y, const uint16_t *scale, const uint16_t *zero,
                                  const float *acc, float h, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += h2f(scale[i]) * (acc[i] - h2f(zero[i]) * h);
}

static inline void affine_acc(float *y, const uint16_t *scale, const uint16_t *zero,
                              const float *acc, float h, int64_t n) {
    int64_t i = 0;
#if defined(EDGERT_AVX2)
    const __m256 hv = _mm256_set1_ps(h);
    for (; i + 8 <= n; i += 8) {
        const __m256 s = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(scale + i)));
        const __m256 z = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(zero + i)));
        const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(acc + i), _mm256_mul_ps(z, hv));
        _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_mul_ps(s, d)));
    }
#elif defined(EDGERT_NEON)
    const float32x4_t hv = vdupq_n_f32(h);
    for (; i + 4 <= n; i += 4) {
        const float32x4_t s = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(scale + i)));
        const float32x4_t z = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(zero + i)));
        const float32x4_t d = vsubq_f32(vld1q_f32(acc + i), vmulq_f32(z, hv));
        vst1q_f32(y + i, vaddq_f32(vld1q_f32(y + i), vmulq_f32(s, d)));
    }
#endif
    for (; i < n; i++) y[i] += h2f(scale[i]) * (acc[i] - h2f(zero[i]) * h);
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
