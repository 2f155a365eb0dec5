/* The NEON kernels (Armv8-A; the Armv8.2-A+dotprod build runs them too: the inner loop is table
 * lookups, which dot-product instructions do not speed up). Each does the operations of its
 * scalar twin in lut_ref.c in the same order: bit-identical results.
 *
 * Per group and plane: look up the high (signed) and low (unsigned) table bytes for 32 rows with
 * tbl, sum them in 16-bit lanes over the group, combine to int32 (256 * hi + lo) in
 * acc[plane][row]; then the vector epilogue. */
#include "lut_internal.h"

#if defined(EDGERT_NEON)
/* tables: the operations of build_tables_ref, four entries per vector */
void edgert_build_tables_fast(const float *x, const shape_t *s, uint8_t *tbl, float *ts,
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

void edgert_tile_fast(float *y, int64_t tile, const uint8_t *planes, const uint16_t *scale,
                      const uint16_t *zero, const uint8_t *tbl, const float *ts, const float *xs,
                      const shape_t *s) {
    const int per = s->group / 4, b = s->bits;
    float32x4_t yv[8];
    int32_t acc[EDGERT_MAX_BITS * T];
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

/* pair kernels (two tiles in turn) are measured on AVX-512 only; NEON takes tiles one at a time */
pair_fn edgert_pair_of(const shape_t *s) {
    (void)s;
    return NULL;
}

/* ---- 8-bit rows ------------------------------------------------------------------------- */
static inline void q8_rows_neon(float *out, const int16_t *xq, const int8_t *q, const float *sc,
                                int64_t kpad, int nr) {
    const int64_t nb = kpad / 32;
    for (int r = 0; r < nr; r++) {
        const int8_t *qr = q + r * kpad;
        const float *sr = sc + r * nb;
        float32x4_t a = vdupq_n_f32(0.f);
        for (int64_t b = 0; b < nb; b++) {
            __builtin_prefetch(qr + 32 * b + EDGERT_Q8_PREFETCH_BYTES);
            if (EDGERT_Q8_PREFETCH_FAR_BYTES > 0)
                __builtin_prefetch(qr + 32 * b + EDGERT_Q8_PREFETCH_FAR_BYTES, 0, 2);  // into L2
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
}

void edgert_q8_range_fast(void *ctx, int64_t begin, int64_t end) {
    q8_range_with(ctx, begin, end, q8_rows_neon);
}

/* ---- memory read probe ------------------------------------------------------------------ */
uint64_t edgert_read_block(const uint8_t *p, int64_t lo, int64_t hi) {
    uint64_t s = 0;
    int64_t i = lo;
    uint8x16_t a0 = vdupq_n_u8(0), a1 = a0, a2 = a0, a3 = a0;
    for (; i + 64 <= hi; i += 64) {
        a0 = veorq_u8(a0, vld1q_u8(p + i));
        a1 = veorq_u8(a1, vld1q_u8(p + i + 16));
        a2 = veorq_u8(a2, vld1q_u8(p + i + 32));
        a3 = veorq_u8(a3, vld1q_u8(p + i + 48));
    }
    const uint64x2_t v = vreinterpretq_u64_u8(veorq_u8(veorq_u8(a0, a1), veorq_u8(a2, a3)));
    s += vgetq_lane_u64(v, 0) ^ vgetq_lane_u64(v, 1);
    for (; i < hi; i++) s += p[i];
    return s;
}
#endif
