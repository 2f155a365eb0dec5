/* The scalar kernels: the _ref twins every fast path is bit-identical to (always compiled), and
 * the whole path of a build without NEON or AVX2 (see lut_internal.h).
 *
 * Activation tables, x (k,) -> tbl [k4][32]: for each chunk of 4 activations the 16 partial sums
 *   e[idx] = (((0 + [idx&1] x0) + [idx&2] x1) + [idx&4] x2) + [idx&8] x3   (float, this order)
 * rounded to integers q = rint(e * lim / amax) with amax the group's largest |e|, stored as the
 * two bytes of the int16 q: hi bytes (int8, [0..15]) then lo bytes (uint8, [16..31]);
 * ts [groups] = amax / lim, xs [groups] = sum of x (sum of the chunks' e[15], in order);
 * lim = TBL_LIMIT(per) (per = chunks in a group), so one plane's sums over a group fit int16 and
 * the SIMD paths accumulate 16-bit lanes; the tables keep 11-13 bits. The SIMD builders do the
 * same float operations in the same order (no FMA contraction), so every path gets bit-identical
 * tables; the integer sums are exact and the epilogues follow epilogue_ref's order. */
#include <stdio.h>
#include <stdlib.h>

#include "lut_internal.h"

const char *edgert_kernels_isa(void) { return EDGERT_ISA; }

const char *edgert_kernels_config(void) {
    static char text[384];
    snprintf(text, sizeof text,
             "isa=%s prefetch_bytes=%d pair_prefetch_bytes=%d q8_prefetch_bytes=%d "
             "q8_prefetch_far_bytes=%d spin_us=%g pair_min_tiles=%d table_block_bytes=%d "
             "i8_min_rows=%d i8=%s",
             EDGERT_ISA, (int)EDGERT_PREFETCH_BYTES, (int)EDGERT_PAIR_PREFETCH_BYTES,
             (int)EDGERT_Q8_PREFETCH_BYTES, (int)EDGERT_Q8_PREFETCH_FAR_BYTES,
             (double)EDGERT_SPIN_US, (int)EDGERT_PAIR_MIN_TILES, (int)EDGERT_TABLE_BLOCK_BYTES,
             (int)EDGERT_I8_MIN_ROWS, edgert_i8_kernel());
    return text;
}

void edgert_build_tables_ref(const float *x, const shape_t *s, uint8_t *tbl, float *ts,
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

/* ---- epilogue: int32 plane sums of 32 rows of one group -> y (every path's order) ---------- */
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

// W tile (32, kpad) bit-planes, tables (k4, 32) -> y (32,)
void edgert_tile_ref(float *y, int64_t tile, const uint8_t *planes, const uint16_t *scale,
                     const uint16_t *zero, const uint8_t *tbl, const float *ts, const float *xs,
                     const shape_t *s) {
    const int per = s->group / 4, b = s->bits;
    int32_t acc[EDGERT_MAX_BITS * T];
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

#if !defined(EDGERT_NEON) && !defined(EDGERT_AVX2)
/* ---- a build without SIMD: the twins are the fast paths ----------------------------------- */
void edgert_build_tables_fast(const float *x, const shape_t *s, uint8_t *tbl, float *ts,
                              float *xs) {
    edgert_build_tables_ref(x, s, tbl, ts, xs);
}

void edgert_tile_fast(float *y, int64_t tile, const uint8_t *planes, const uint16_t *scale,
                      const uint16_t *zero, const uint8_t *tbl, const float *ts, const float *xs,
                      const shape_t *s) {
    edgert_tile_ref(y, tile, planes, scale, zero, tbl, ts, xs, s);
}

pair_fn edgert_pair_of(const shape_t *s) {
    (void)s;
    return NULL;
}

static void q8_rows_ref(float *out, const int16_t *xq, const int8_t *q, const float *sc,
                        int64_t kpad, int nr) {
    const int64_t nb = kpad / 32;
    for (int r = 0; r < nr; r++) out[r] = q8_row_ref(xq, q + r * kpad, sc + r * nb, kpad);
}

void edgert_q8_range_fast(void *ctx, int64_t begin, int64_t end) {
    q8_range_with(ctx, begin, end, q8_rows_ref);
}

uint64_t edgert_read_block(const uint8_t *p, int64_t lo, int64_t hi) {
    uint64_t s = 0;
    for (int64_t i = lo; i < hi; i++) s += p[i];
    return s;
}
#endif
