/* The x86-64 kernels: AVX2 (+F16C) for every width, and AVX-512 (F, BW, VL) for 2 and 4 bits
 * where the build targets it. Each does the operations of its scalar twin in lut_ref.c in the
 * same order: bit-identical results.
 *
 * Per group and plane: look up the high (signed) and low (unsigned) table bytes for 32 rows with
 * pshufb, sum them in 16-bit lanes over the group, combine to int32 (256 * hi + lo) in
 * acc[plane][row]; then the vector epilogue. */
#include "lut_internal.h"

#if defined(EDGERT_AVX2)
#if defined(EDGERT_AVX512)
/* tables: the operations of build_tables_ref, a chunk's sixteen entries per vector, TABLE_GROUPS
 * groups at a time (see there) */
void edgert_build_tables_fast(const float *x, const shape_t *s, uint8_t *tbl, float *ts,
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
void edgert_build_tables_fast(const float *x, const shape_t *s, uint8_t *tbl, float *ts,
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
    int32_t acc[EDGERT_MAX_BITS * T];
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
TILE_INSTANCE(avx2, 5, 0)
TILE_INSTANCE(avx2, 6, 0)
TILE_INSTANCE(avx2, 1, 1)
TILE_INSTANCE(avx2, 2, 1)
TILE_INSTANCE(avx2, 3, 1)
TILE_INSTANCE(avx2, 4, 1)
TILE_INSTANCE(avx2, 5, 1)
TILE_INSTANCE(avx2, 6, 1)

#if defined(EDGERT_AVX512)
/* AVX-512 (2 and 4 planes): the steps of group_avx2 on 64-byte vectors. 4 planes: one chunk's
 * planes fill a vector (lane j = plane j) and its tables are broadcast to every lane. 2 planes: two
 * chunks fill a vector (lanes: chunk c planes 0, 1, chunk c+1 planes 0, 1; needs an even number of
 * chunks per group), each chunk's tables in its own two lanes; the two chunks' 16-bit sums are
 * added at the group's end (exact: see TBL_LIMIT). The epilogue then runs on 16 rows at a time in
 * registers: the same float operations, in the same order, as epilogue_ref. u (1 or 2) tiles go
 * chunk by chunk in turn, sharing the table loads (see EDGERT_PAIR_MIN_TILES). */
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

/* the pair kernel of a shape (see EDGERT_PAIR_MIN_TILES), or NULL: tiles go one at a time */
pair_fn edgert_pair_of(const shape_t *s) {
    static const pair_fn fns[2][2] = {{pair_avx512_2_0, pair_avx512_4_0},
                                      {pair_avx512_2_1, pair_avx512_4_1}};
    return avx512_planes(s) ? fns[s->fmt][s->bits / 2 - 1] : NULL;
}
#endif

void edgert_tile_fast(float *y, int64_t tile, const uint8_t *planes, const uint16_t *scale,
                      const uint16_t *zero, const uint8_t *tbl, const float *ts, const float *xs,
                      const shape_t *s) {
    static const tile_fn fns[2][EDGERT_MAX_BITS] = {
#if defined(EDGERT_AVX512)
        {tile_avx2_1_0, tile_avx512_2_0, tile_avx2_3_0, tile_avx512_4_0, tile_avx2_5_0,
         tile_avx2_6_0},
        {tile_avx2_1_1, tile_avx512_2_1, tile_avx2_3_1, tile_avx512_4_1, tile_avx2_5_1,
         tile_avx2_6_1}};
    if (s->bits == 2 && !avx512_planes(s)) {
        (s->fmt ? tile_avx2_2_1 : tile_avx2_2_0)(y, tile, planes, scale, zero, tbl, ts, xs, s);
        return;
    }
#else
        {tile_avx2_1_0, tile_avx2_2_0, tile_avx2_3_0, tile_avx2_4_0, tile_avx2_5_0,
         tile_avx2_6_0},
        {tile_avx2_1_1, tile_avx2_2_1, tile_avx2_3_1, tile_avx2_4_1, tile_avx2_5_1,
         tile_avx2_6_1}};
#endif
    fns[s->fmt][s->bits - 1](y, tile, planes, scale, zero, tbl, ts, xs, s);
}

#if !defined(EDGERT_AVX512)
/* pair kernels (see EDGERT_PAIR_MIN_TILES) exist for AVX-512 only: on AVX2 two tiles in turn ran
 * 2-3% slower (one core's AVX2 kernel is bound by its lookups, 28-29 GB/s, not by DRAM) */
pair_fn edgert_pair_of(const shape_t *s) {
    (void)s;
    return NULL;
}
#endif

/* ---- 8-bit rows ------------------------------------------------------------------------- */
/* a row's weights ahead of p: near into L1, far into L2 (see EDGERT_Q8_PREFETCH_BYTES) */
static inline void q8_prefetch(const int8_t *p) {
    _mm_prefetch((const char *)p + EDGERT_Q8_PREFETCH_BYTES, _MM_HINT_T0);
    if (EDGERT_Q8_PREFETCH_FAR_BYTES > 0)
        _mm_prefetch((const char *)p + EDGERT_Q8_PREFETCH_FAR_BYTES, _MM_HINT_T1);
}

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

/* 8 float partial sums across blocks: equal to q8_row_ref's block-order sum within float
 * rounding (relative 1e-6) */
static inline void q8_rows_avx2(float *out, const int16_t *xq, const int8_t *q, const float *sc,
                                int64_t kpad, int nr) {
    const int64_t nb = kpad / 32;
    if (nr == 2) {
        const int8_t *q1 = q + kpad;
        const float *sc1 = sc + nb;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0;
        for (int64_t b = 0; b < nb; b++) {
            const __m256i x0 = _mm256_loadu_si256((const __m256i *)(xq + 32 * b));
            const __m256i x1 = _mm256_loadu_si256((const __m256i *)(xq + 32 * b + 16));
            q8_prefetch(q + 32 * b);
            q8_prefetch(q1 + 32 * b);
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
}

#if defined(EDGERT_AVX512)
/* one block of 32: the weights widened to int16, multiplied with x and summed in pairs, the 16
 * int32 sums to float, scaled by the block's scale into a */
static inline __m512 q8_block_avx512(__m512 a, const int8_t *q, __m512i x, const float *sc) {
    const __m512i w = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)q));
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_madd_epi16(w, x)), _mm512_set1_ps(*sc), a);
}

/* the AVX2 rows' steps on 64-byte vectors, two blocks per step (four float chains for two rows):
 * 16 float partial sums across blocks, equal to q8_row_ref's within float rounding (relative
 * 1e-6) */
static inline void q8_rows_avx512(float *out, const int16_t *xq, const int8_t *q,
                                  const float *sc, int64_t kpad, int nr) {
    const int64_t nb = kpad / 32;
    const int8_t *q1 = nr == 2 ? q + kpad : q;  // one row: computed twice, stored once
    const float *sc1 = nr == 2 ? sc + nb : sc;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        q8_prefetch(q + 32 * b);
        q8_prefetch(q1 + 32 * b);
        const __m512i x0 = _mm512_loadu_si512(xq + 32 * b), x1 = _mm512_loadu_si512(xq + 32 * b + 32);
        a0 = q8_block_avx512(a0, q + 32 * b, x0, sc + b);
        a1 = q8_block_avx512(a1, q1 + 32 * b, x0, sc1 + b);
        b0 = q8_block_avx512(b0, q + 32 * b + 32, x1, sc + b + 1);
        b1 = q8_block_avx512(b1, q1 + 32 * b + 32, x1, sc1 + b + 1);
    }
    if (b < nb) {
        const __m512i x0 = _mm512_loadu_si512(xq + 32 * b);
        a0 = q8_block_avx512(a0, q + 32 * b, x0, sc + b);
        a1 = q8_block_avx512(a1, q1 + 32 * b, x0, sc1 + b);
    }
    out[0] = _mm512_reduce_add_ps(_mm512_add_ps(a0, b0));
    if (nr == 2) out[1] = _mm512_reduce_add_ps(_mm512_add_ps(a1, b1));
}

void edgert_q8_range_fast(void *ctx, int64_t begin, int64_t end) {
    q8_range_with(ctx, begin, end, q8_rows_avx512);
}
#else
void edgert_q8_range_fast(void *ctx, int64_t begin, int64_t end) {
    q8_range_with(ctx, begin, end, q8_rows_avx2);
}
#endif

/* ---- memory read probe ------------------------------------------------------------------ */
uint64_t edgert_read_block(const uint8_t *p, int64_t lo, int64_t hi) {
    uint64_t s = 0;
    int64_t i = lo;
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (; i + 128 <= hi; i += 128) {
        a0 = _mm256_xor_si256(a0, _mm256_loadu_si256((const __m256i *)(p + i)));
        a1 = _mm256_xor_si256(a1, _mm256_loadu_si256((const __m256i *)(p + i + 32)));
        a2 = _mm256_xor_si256(a2, _mm256_loadu_si256((const __m256i *)(p + i + 64)));
        a3 = _mm256_xor_si256(a3, _mm256_loadu_si256((const __m256i *)(p + i + 96)));
    }
    uint64_t l[4];
    _mm256_storeu_si256((__m256i *)l, _mm256_xor_si256(_mm256_xor_si256(a0, a1),
                                                       _mm256_xor_si256(a2, a3)));
    s += l[0] ^ l[1] ^ l[2] ^ l[3];
    for (; i < hi; i++) s += p[i];
    return s;
}
#endif
