/* Attention's vector kernels over one KV head's query heads (a group, in grouped-query attention):
 * each key or value row is loaded once (from float, float16 or q8 rows of the cache, converted in
 * registers) and used by every query head of its group. Results are dot's and axpy's bit for bit
 * (vec.h: the same float operations in the same order per head and row), so a group of heads gets
 * the bits it would get one head at a time; each has a scalar _ref twin
 * (tests/kernels/lut_test_driver.c checks them). */
#ifndef EDGERT_ATTN_VEC_H
#define EDGERT_ATTN_VEC_H
#include "edgert_forward.h"
#include "vec.h"

#define EDGERT_INLINE static inline __attribute__((always_inline))

/* Rows: row j of a block at base + ((r0 + j) % cap) * rb bytes (a ring of the cache, rows
 * following each other without a division per row), n values each of a kind: EDGERT_KV_F32,
 * EDGERT_KV_F16 or EDGERT_KV_Q8 (edgert_forward.h's layouts; q8: n a multiple of the block,
 * values d * q as edgert_kv_load gives them) */
#define Q8_BLOCK_BYTES (2 + EDGERT_KV_BLOCK)
static inline float q8_scale(const uint8_t *block) {
    uint16_t dh;
    memcpy(&dh, block, 2);
    return h2f(dh);
}
static inline float kv_at(const uint8_t *row, int64_t i, int kind) {
    if (kind == EDGERT_KV_Q8) {
        const uint8_t *b = row + i / EDGERT_KV_BLOCK * Q8_BLOCK_BYTES;
        return q8_scale(b) * (float)(int8_t)b[2 + i % EDGERT_KV_BLOCK];
    }
    return kind == EDGERT_KV_F16 ? h2f(((const uint16_t *)row)[i]) : ((const float *)row)[i];
}

#define RING_NEXT(r, cap) ((r) + 1 == (cap) ? 0 : (r) + 1)
/* bytes of a row's first i values (q8: up to the block holding value i) */
#define KV_BYTES(kind, i)                                                                   \
    ((kind) == EDGERT_KV_Q8 ? (i) / EDGERT_KV_BLOCK * Q8_BLOCK_BYTES                       \
                            : (i) * ((kind) == EDGERT_KV_F16 ? 2 : 4))

/* asks for `bytes` of ring row r (r < 2 cap: one wrap at most; none if it is further) */
static inline void ring_prefetch(const uint8_t *base, int64_t rb, int64_t r, int64_t cap,
                                 int64_t bytes) {
    r = r >= cap ? r - cap : r;
    if (r < cap)
        for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(base + r * rb + b);
}

/* ---- scores: s[h * ss + j] = dot(q + h * n, row j, n), h < nq, j < count -------------------- */
static inline void dot_group_ref(float *s, int64_t ss, const float *q, int64_t nq,
                                 const uint8_t *base, int64_t rb, int64_t r0, int64_t cap,
                                 int64_t count, int64_t n, int kind) {
    float row[n > 0 ? n : 1];
    for (int64_t j = 0, r = r0; j < count; j++, r = RING_NEXT(r, cap)) {
        for (int64_t i = 0; i < n; i++) row[i] = kv_at(base + r * rb, i, kind);
        for (int64_t h = 0; h < nq; h++) s[h * ss + j] = dot_ref(q + h * n, row, n);
    }
}

#if defined(EDGERT_AVX2)
/* 32 vector registers (AVX-512VL's ymm16-31) hold 3 heads x 4 keys x 2 accumulators */
#if defined(EDGERT_AVX512)
#define GROUP_QK_HEADS 3
#define GROUP_V_HEADS 4
#else
#define GROUP_QK_HEADS 1
#define GROUP_V_HEADS 2
#endif
#define GROUP_V_DIMS 32 /* 4 vectors */

/* values i .. i + 7 (q8: within one block) */
EDGERT_INLINE __m256 kv_ld8(const uint8_t *row, int64_t i, int kind) {
    if (kind == EDGERT_KV_Q8) {
        const uint8_t *b = row + i / EDGERT_KV_BLOCK * Q8_BLOCK_BYTES;
        uint16_t dh;
        memcpy(&dh, b, 2);
        const __m128i q = _mm_loadl_epi64((const __m128i *)(b + 2 + i % EDGERT_KV_BLOCK));
        return _mm256_mul_ps(_mm256_cvtph_ps(_mm_set1_epi16((short)dh)), /* d, exact */
                             _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)));
    }
    return kind == EDGERT_KV_F16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + 2 * i)))
                                 : _mm256_loadu_ps((const float *)row + i);
}

/* the lanes of l0 .. l3 each summed in dot's order (0 + lane 0 + lane 1 + ... + lane 7), the four
 * sums in one vector: lane k of the four in one 4-wide vector (a 4x8 transpose), added k by k */
EDGERT_INLINE __m128 hsum4_ordered(__m256 l0, __m256 l1, __m256 l2, __m256 l3) {
    const __m256 u0 = _mm256_unpacklo_ps(l0, l1), u1 = _mm256_unpackhi_ps(l0, l1),
                 u2 = _mm256_unpacklo_ps(l2, l3), u3 = _mm256_unpackhi_ps(l2, l3);
    /* lanes 0,1 / 4,5 of rows (0,1,2,3): v0 = lane 0 (and 4 in the high half), v1 = lane 1 (5) */
    const __m256 v0 = _mm256_shuffle_ps(u0, u2, 0x44), v1 = _mm256_shuffle_ps(u0, u2, 0xee),
                 v2 = _mm256_shuffle_ps(u1, u3, 0x44), v3 = _mm256_shuffle_ps(u1, u3, 0xee);
    __m128 r = _mm_add_ps(_mm_setzero_ps(), _mm256_castps256_ps128(v0));
    r = _mm_add_ps(r, _mm256_castps256_ps128(v1));
    r = _mm_add_ps(r, _mm256_castps256_ps128(v2));
    r = _mm_add_ps(r, _mm256_castps256_ps128(v3));
    r = _mm_add_ps(r, _mm256_extractf128_ps(v0, 1));
    r = _mm_add_ps(r, _mm256_extractf128_ps(v1, 1));
    r = _mm_add_ps(r, _mm256_extractf128_ps(v2, 1));
    return _mm_add_ps(r, _mm256_extractf128_ps(v3, 1));
}

/* th heads x 4 rows (nk of them stored), the keys loaded once for the th heads */
EDGERT_INLINE void dot_tile(float *s, int64_t ss, const float *q, int th,
                            const uint8_t *const rows[4], int nk, int64_t n, int kind) {
    __m256 a0[GROUP_QK_HEADS][4], a1[GROUP_QK_HEADS][4];
    for (int h = 0; h < th; h++)
        for (int j = 0; j < 4; j++) a0[h][j] = a1[h][j] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 4; j++) {
            const __m256 k0 = kv_ld8(rows[j], i, kind), k1 = kv_ld8(rows[j], i + 8, kind);
            for (int h = 0; h < th; h++) {
                a0[h][j] = _mm256_add_ps(a0[h][j],
                                         _mm256_mul_ps(_mm256_loadu_ps(q + h * n + i), k0));
                a1[h][j] = _mm256_add_ps(a1[h][j],
                                         _mm256_mul_ps(_mm256_loadu_ps(q + h * n + i + 8), k1));
            }
        }
    for (int h = 0; h < th; h++) {
        float out[4];
        _mm_storeu_ps(out, hsum4_ordered(_mm256_add_ps(a0[h][0], a1[h][0]),
                                         _mm256_add_ps(a0[h][1], a1[h][1]),
                                         _mm256_add_ps(a0[h][2], a1[h][2]),
                                         _mm256_add_ps(a0[h][3], a1[h][3])));
        for (int64_t t = i; t < n; t++)
            for (int j = 0; j < 4; j++) out[j] += q[h * n + t] * kv_at(rows[j], t, kind);
        for (int j = 0; j < nk; j++) s[h * ss + j] = out[j];
    }
}
#elif defined(EDGERT_NEON)
#define GROUP_QK_HEADS 3 /* 3 heads x 4 keys x 2 accumulators of 32 registers */
#define GROUP_V_HEADS 4
#define GROUP_V_DIMS 16 /* 4 vectors */

/* values i .. i + 3 (q8: within one block) */
EDGERT_INLINE float32x4_t kv_ld4(const uint8_t *row, int64_t i, int kind) {
    if (kind == EDGERT_KV_Q8) {
        const uint8_t *b = row + i / EDGERT_KV_BLOCK * Q8_BLOCK_BYTES;
        int32_t w;
        uint16_t dh;
        memcpy(&w, b + 2 + i % EDGERT_KV_BLOCK, 4);
        memcpy(&dh, b, 2);
        const int16x8_t q16 = vmovl_s8(vreinterpret_s8_s32(vdup_n_s32(w)));
        return vmulq_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(dh))), /* d, exact */
                         vcvtq_f32_s32(vmovl_s16(vget_low_s16(q16))));
    }
    return kind == EDGERT_KV_F16
               ? vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)row + i)))
               : vld1q_f32((const float *)row + i);
}

EDGERT_INLINE void dot_tile(float *s, int64_t ss, const float *q, int th,
                            const uint8_t *const rows[4], int nk, int64_t n, int kind) {
    float32x4_t a0[GROUP_QK_HEADS][4], a1[GROUP_QK_HEADS][4];
    for (int h = 0; h < th; h++)
        for (int j = 0; j < 4; j++) a0[h][j] = a1[h][j] = vdupq_n_f32(0.f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 4; j++) {
            const float32x4_t k0 = kv_ld4(rows[j], i, kind), k1 = kv_ld4(rows[j], i + 4, kind);
            for (int h = 0; h < th; h++) {
                a0[h][j] = vaddq_f32(a0[h][j], vmulq_f32(vld1q_f32(q + h * n + i), k0));
                a1[h][j] = vaddq_f32(a1[h][j], vmulq_f32(vld1q_f32(q + h * n + i + 4), k1));
            }
        }
    for (int h = 0; h < th; h++)
        for (int j = 0; j < nk; j++) {
            float r = vaddvq_f32(vaddq_f32(a0[h][j], a1[h][j]));
            for (int64_t t = i; t < n; t++) r += q[h * n + t] * kv_at(rows[j], t, kind);
            s[h * ss + j] = r;
        }
}
#endif

static inline void dot_group(float *s, int64_t ss, const float *q, int64_t nq,
                             const uint8_t *base, int64_t rb, int64_t r0, int64_t cap,
                             int64_t count, int64_t n, int kind, int64_t pf) {
#if defined(GROUP_QK_HEADS)
    for (int64_t j = 0, r = r0; j < count; j += 4) {
        const uint8_t *rows[4];
        const int nk = count - j < 4 ? (int)(count - j) : 4;
        for (int u = 0; u < 4; u++) { /* short of 4 rows: the last again (not stored) */
            rows[u] = base + r * rb;
            if (u + 1 < nk) r = RING_NEXT(r, cap);
        }
        r = RING_NEXT(r, cap);
        for (int u = 0; pf && u < 4; u++) /* the rows pf ahead of the next 4 */
            ring_prefetch(base, rb, r + pf + u, cap, KV_BYTES(kind, n));
        for (int64_t h = 0; h < nq; h += GROUP_QK_HEADS) {
            float *sh = s + h * ss + j;
            const float *qh = q + h * n;
            const int64_t th = nq - h < GROUP_QK_HEADS ? nq - h : GROUP_QK_HEADS;
#define DT(TH, K) dot_tile(sh, ss, qh, TH, rows, nk, n, K) /* constants: one body each */
#define DTK(TH) kind == EDGERT_KV_Q8 ? DT(TH, EDGERT_KV_Q8)                                   \
                : kind == EDGERT_KV_F16 ? DT(TH, EDGERT_KV_F16) : DT(TH, EDGERT_KV_F32)
            if (th == 1) DTK(1);
#if GROUP_QK_HEADS >= 3
            else if (th == 2) DTK(2);
            else DTK(3);
#endif
#undef DTK
#undef DT
        }
    }
#else
    dot_group_ref(s, ss, q, nq, base, rb, r0, cap, count, n, kind);
#endif
}

/* ---- values: o[h * os + e] = (first ? 0 : o[h * os + e]) + sum over j of w[h * ws + j] row_j[e],
 * h < nq, e < n, the rows added in order (axpy's bits, row after row) ------------------------ */
static inline void weighted_group_acc_ref(float *o, int64_t os, const float *w, int64_t ws,
                                          int64_t nq, const uint8_t *base, int64_t rb, int64_t r0,
                                          int64_t cap, int64_t count, int64_t n, int first,
                                          int kind) {
    for (int64_t h = 0; h < nq; h++) {
        if (first) memset(o + h * os, 0, (size_t)n * sizeof(float));
        for (int64_t j = 0, r = r0; j < count; j++, r = RING_NEXT(r, cap))
            for (int64_t e = 0; e < n; e++)
                o[h * os + e] += w[h * ws + j] * kv_at(base + r * rb, e, kind);
    }
}

#if defined(GROUP_V_HEADS)
/* th heads x GROUP_V_DIMS values from e, each row loaded once for the th heads */
EDGERT_INLINE void weighted_tile(float *o, int64_t os, const float *w, int64_t ws, int th,
                                 int64_t h0, const uint8_t *base, int64_t rb, int64_t r0,
                                 int64_t cap, int64_t count, int64_t e, int first, int kind,
                                 int64_t pf) {
#if defined(EDGERT_AVX2)
    __m256 acc[GROUP_V_HEADS][4];
    for (int h = 0; h < th; h++)
        for (int v = 0; v < 4; v++)
            acc[h][v] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(o + h * os + e + 8 * v);
    for (int64_t j = 0, r = r0; j < count; j++, r = RING_NEXT(r, cap)) {
        const uint8_t *row = base + r * rb;
        if (pf && h0 == 0) /* this tile's values of the row pf ahead */
            ring_prefetch(base + KV_BYTES(kind, e), rb, r + pf, cap, KV_BYTES(kind, GROUP_V_DIMS));
        const __m256 x0 = kv_ld8(row, e, kind), x1 = kv_ld8(row, e + 8, kind),
                     x2 = kv_ld8(row, e + 16, kind), x3 = kv_ld8(row, e + 24, kind);
        for (int h = 0; h < th; h++) {
            const __m256 wj = _mm256_set1_ps(w[h * ws + j]);
            acc[h][0] = _mm256_add_ps(acc[h][0], _mm256_mul_ps(wj, x0));
            acc[h][1] = _mm256_add_ps(acc[h][1], _mm256_mul_ps(wj, x1));
            acc[h][2] = _mm256_add_ps(acc[h][2], _mm256_mul_ps(wj, x2));
            acc[h][3] = _mm256_add_ps(acc[h][3], _mm256_mul_ps(wj, x3));
        }
    }
    for (int h = 0; h < th; h++)
        for (int v = 0; v < 4; v++) _mm256_storeu_ps(o + h * os + e + 8 * v, acc[h][v]);
#else
    float32x4_t acc[GROUP_V_HEADS][4];
    for (int h = 0; h < th; h++)
        for (int v = 0; v < 4; v++)
            acc[h][v] = first ? vdupq_n_f32(0.f) : vld1q_f32(o + h * os + e + 4 * v);
    for (int64_t j = 0, r = r0; j < count; j++, r = RING_NEXT(r, cap)) {
        const uint8_t *row = base + r * rb;
        if (pf && h0 == 0)
            ring_prefetch(base + KV_BYTES(kind, e), rb, r + pf, cap, KV_BYTES(kind, GROUP_V_DIMS));
        const float32x4_t x0 = kv_ld4(row, e, kind), x1 = kv_ld4(row, e + 4, kind),
                          x2 = kv_ld4(row, e + 8, kind), x3 = kv_ld4(row, e + 12, kind);
        for (int h = 0; h < th; h++) {
            const float32x4_t wj = vdupq_n_f32(w[h * ws + j]);
            acc[h][0] = vaddq_f32(acc[h][0], vmulq_f32(wj, x0));
            acc[h][1] = vaddq_f32(acc[h][1], vmulq_f32(wj, x1));
            acc[h][2] = vaddq_f32(acc[h][2], vmulq_f32(wj, x2));
            acc[h][3] = vaddq_f32(acc[h][3], vmulq_f32(wj, x3));
        }
    }
    for (int h = 0; h < th; h++)
        for (int v = 0; v < 4; v++) vst1q_f32(o + h * os + e + 4 * v, acc[h][v]);
#endif
}
#endif

static inline void weighted_group_acc(float *o, int64_t os, const float *w, int64_t ws, int64_t nq,
                                      const uint8_t *base, int64_t rb, int64_t r0, int64_t cap,
                                      int64_t count, int64_t n, int first, int kind, int64_t pf) {
    int64_t e = 0;
#if defined(GROUP_V_HEADS)
    for (; e + GROUP_V_DIMS <= n; e += GROUP_V_DIMS)
        for (int64_t h = 0; h < nq; h += GROUP_V_HEADS) {
            const int64_t th = nq - h < GROUP_V_HEADS ? nq - h : GROUP_V_HEADS;
            float *oh = o + h * os;
            const float *wh = w + h * ws;
#define WT(TH, K)                                                                           \
    weighted_tile(oh, os, wh, ws, TH, h, base, rb, r0, cap, count, e, first, K, pf)
#define WTK(TH) kind == EDGERT_KV_Q8 ? WT(TH, EDGERT_KV_Q8)                                   \
                : kind == EDGERT_KV_F16 ? WT(TH, EDGERT_KV_F16) : WT(TH, EDGERT_KV_F32)
            if (th == 1) WTK(1);
            else if (th == 2) WTK(2);
#if GROUP_V_HEADS >= 4
            else if (th == 3) WTK(3);
            else WTK(4);
#endif
#undef WTK
#undef WT
        }
#endif
    if (e < n) /* the last values: as the _ref twin, from e on (none for q8: whole blocks) */
        weighted_group_acc_ref(o + e, os, w, ws, nq, base + KV_BYTES(kind, e), rb, r0, cap, count,
                               n - e, first, kind);
}

#undef EDGERT_INLINE
#endif
