/* The int8 GEMM's tile kernels for arm64 NEON (i8_gemm.c has the GEMM, the activations' rounding,
 * the scalar twin and the x86 kernels): a tile's bit-planes unpacked to byte codes, and the tile
 * kernel at the CPU's feature level. */
#include <stdlib.h>

#include "lut_internal.h"

#if defined(EDGERT_NEON)
/* 16 rows' nibbles -> 4 bytes per row (vqtbl1q spreads, vtst tests the column's bit) */
EDGERT_HIDDEN void edgert_i8_unpack_neon(uint8_t *codes, const uint8_t *planes, int64_t tile,
                                        const shape_t *s) {
    const int b = s->bits;
    static const uint8_t spread_idx[4][16] = {
        {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3},
        {4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7},
        {8, 8, 8, 8, 9, 9, 9, 9, 10, 10, 10, 10, 11, 11, 11, 11},
        {12, 12, 12, 12, 13, 13, 13, 13, 14, 14, 14, 14, 15, 15, 15, 15}};
    uint8x16_t spread[4];
    for (int q = 0; q < 4; q++) spread[q] = vld1q_u8(spread_idx[q]);
    const uint8x16_t bit = vreinterpretq_u8_u32(vdupq_n_u32(0x08040201)), low = vdupq_n_u8(15);
    for (int64_t c = 0; c < s->k4; c++) {
        uint8x16_t out[8];
        for (int q = 0; q < 8; q++) out[q] = vdupq_n_u8(0);
        for (int j = 0; j < b; j++) {
            const uint8x16_t p = vld1q_u8(planes + ((tile * s->k4 + c) * b + j) * 16);
            const uint8x16_t half[2] = {vandq_u8(p, low), vshrq_n_u8(p, 4)};
            const uint8x16_t m = vdupq_n_u8((uint8_t)(1 << j));
            for (int h = 0; h < 2; h++)
                for (int q = 0; q < 4; q++) {
                    const uint8x16_t rep = vqtbl1q_u8(half[h], spread[q]);
                    out[4 * h + q] = vorrq_u8(out[4 * h + q], vandq_u8(vtstq_u8(rep, bit), m));
                }
        }
        for (int q = 0; q < 8; q++) vst1q_u8(codes + c * 128 + q * 16, out[q]);
    }
}

/* The tile kernels, one per feature level, chosen when the library loads (i8_select): one
 * library runs on an Armv8.0 core (smull and pairwise adds), uses sdot where the CPU has the
 * dot product (Armv8.2-A+dotprod: Cortex-A55/A76 and later) and smmla where it has the int8
 * matrix multiply (Armv8.6-A i8mm: Cortex-A510/A710/X2 and later), whatever -march it was
 * compiled for. Each level is compiled for its own architecture by a target attribute, so no
 * other function of the library uses its instructions. The integer sums are exact and the float
 * epilogue is the same code, so every level gives the same bits. */

/* one chunk's 4 codes of 4 rows (w) times 4 activations (x, the same 4 bytes in every lane):
 * per-row int32 sums added to acc */
static inline int32x4_t dot4_neon(int32x4_t acc, uint8x16_t w, int8x16_t x) {
    const int8x16_t ws = vreinterpretq_s8_u8(w);
    const int16x8_t lo = vmull_s8(vget_low_s8(ws), vget_low_s8(x)),
                    hi = vmull_s8(vget_high_s8(ws), vget_high_s8(x));
    /* pairs -> int32 per 2 columns, then the two halves of each row's 4 columns */
    const int32x4_t a = vpaddlq_s16(lo), bq = vpaddlq_s16(hi);
    return vaddq_s32(acc, vpaddq_s32(a, bq));
}

#define I8_DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))
#define I8_I8MM __attribute__((target("arch=armv8.2-a+i8mm")))
I8_DOTPROD static inline int32x4_t dot4_dotprod(int32x4_t acc, uint8x16_t w, int8x16_t x) {
    return vdotq_s32(acc, vreinterpretq_s8_u8(w), x); /* codes < 128: exact as signed bytes */
}

/* y{0,1}[4q .. 4q+3] += the group's sums (S) in acc: the epilogue every level shares */
static inline void i8_epilogue(float *yi, const int32x4_t acc, int q, const float *sc,
                               const float *sz, int64_t g, float di, float xi) {
    const float32x4_t sq = vmulq_n_f32(vld1q_f32(sc + g * T + 4 * q), di);
    float32x4_t f = vfmaq_f32(vld1q_f32(yi + 4 * q), vcvtq_f32_s32(acc), sq);
    f = vfmsq_f32(f, vld1q_f32(sz + g * T + 4 * q), vdupq_n_f32(xi));
    vst1q_f32(yi + 4 * q, f);
}

/* 2 activation rows x 32 weight rows by 4-column dot products: 16 int32 accumulators in
 * registers, the float sums in y (32 registers would not hold both) */
#define I8_DOT_KERNEL(NAME, ATTR, DOT4)                                                         \
    ATTR static void NAME(float *y, int64_t ldy, const uint8_t *codes, const float *sc,           \
                          const float *sz, const int8_t *x8, const float *d, const float *dsx,    \
                          int64_t na, const shape_t *s) {                                         \
        const int per = s->group / 4;                                                             \
        const int64_t G = s->groups, kpad = s->kpad;                                              \
        int64_t a = 0;                                                                            \
        for (; a + 2 <= na; a += 2) {                                                             \
            float *y0 = y + a * ldy, *y1 = y + (a + 1) * ldy;                                     \
            memset(y0, 0, T * sizeof(float));                                                     \
            memset(y1, 0, T * sizeof(float));                                                     \
            const int8_t *x0 = x8 + a * kpad;                                                     \
            for (int64_t g = 0; g < G; g++) {                                                     \
                int32x4_t acc[2][8];                                                              \
                for (int i = 0; i < 2; i++)                                                       \
                    for (int q = 0; q < 8; q++) acc[i][q] = vdupq_n_s32(0);                       \
                for (int64_t c = g * per; c < (g + 1) * per; c++) {                               \
                    int32_t xv0, xv1;                                                             \
                    memcpy(&xv0, x0 + 4 * c, 4);                                                  \
                    memcpy(&xv1, x0 + kpad + 4 * c, 4);                                           \
                    const int8x16_t xb0 = vreinterpretq_s8_s32(vdupq_n_s32(xv0)),                 \
                                    xb1 = vreinterpretq_s8_s32(vdupq_n_s32(xv1));                 \
                    for (int q = 0; q < 8; q++) {                                                 \
                        const uint8x16_t w = vld1q_u8(codes + c * 128 + q * 16);                  \
                        acc[0][q] = DOT4(acc[0][q], w, xb0);                                      \
                        acc[1][q] = DOT4(acc[1][q], w, xb1);                                      \
                    }                                                                             \
                }                                                                                 \
                for (int i = 0; i < 2; i++)                                                       \
                    for (int q = 0; q < 8; q++)                                                   \
                        i8_epilogue(i ? y1 : y0, acc[i][q], q, sc, sz, g, d[(a + i) * G + g],     \
                                    dsx[(a + i) * G + g]);                                        \
            }                                                                                     \
        }                                                                                         \
        if (a < na)                                                                               \
            edgert_i8_kernel_ref(y + a * ldy, ldy, codes, sc, sz, x8 + a * kpad, d + a * G, dsx + a * G,    \
                       na - a, s);                                                                \
    }
I8_DOT_KERNEL(kernel_neon, , dot4_neon)
I8_DOT_KERNEL(kernel_dotprod, I8_DOTPROD, dot4_dotprod)

/* The same with smmla: per instruction 2 activation rows x 2 weight rows over 8 columns (two
 * chunks), acc = [x0.w0, x0.w1, x1.w0, x1.w1]. A chunk pair's codes, [row][4 columns] each, are
 * interleaved by 32-bit zips into smmla's [w0 columns 0..7 | w1 columns 0..7]. Groups of an odd
 * number of chunks (group 4, 12, ...) go to the dot-product kernels (i8_kernel_for). */
I8_I8MM static void kernel_i8mm(float *y, int64_t ldy, const uint8_t *codes, const float *sc,
                                const float *sz, const int8_t *x8, const float *d,
                                const float *dsx, int64_t na, const shape_t *s) {
    const int per = s->group / 4;
    const int64_t G = s->groups, kpad = s->kpad;
    int64_t a = 0;
    for (; a + 2 <= na; a += 2) {
        float *y0 = y + a * ldy, *y1 = y + (a + 1) * ldy;
        memset(y0, 0, T * sizeof(float));
        memset(y1, 0, T * sizeof(float));
        const int8_t *x0 = x8 + a * kpad, *x1 = x0 + kpad;
        for (int64_t g = 0; g < G; g++) {
            int32x4_t acc[16];
            for (int q = 0; q < 16; q++) acc[q] = vdupq_n_s32(0);
            for (int64_t c = g * per; c < (g + 1) * per; c += 2) {
                const int8x16_t xv = vcombine_s8(vld1_s8(x0 + 4 * c), vld1_s8(x1 + 4 * c));
                const uint8_t *p = codes + c * 128;
                for (int q = 0; q < 8; q++) {
                    const uint32x4_t lo = vreinterpretq_u32_u8(vld1q_u8(p + q * 16)),
                                     hi = vreinterpretq_u32_u8(vld1q_u8(p + 128 + q * 16));
                    acc[2 * q] =
                        vmmlaq_s32(acc[2 * q], xv, vreinterpretq_s8_u32(vzip1q_u32(lo, hi)));
                    acc[2 * q + 1] =
                        vmmlaq_s32(acc[2 * q + 1], xv, vreinterpretq_s8_u32(vzip2q_u32(lo, hi)));
                }
            }
            /* rows 4q, 4q+1 in acc[2q] and 4q+2, 4q+3 in acc[2q+1]: activation row 0's sums are
             * the low halves, row 1's the high halves */
            for (int q = 0; q < 8; q++) {
                const int64x2_t e = vreinterpretq_s64_s32(acc[2 * q]),
                                o = vreinterpretq_s64_s32(acc[2 * q + 1]);
                i8_epilogue(y0, vreinterpretq_s32_s64(vzip1q_s64(e, o)), q, sc, sz, g, d[a * G + g],
                            dsx[a * G + g]);
                i8_epilogue(y1, vreinterpretq_s32_s64(vzip2q_s64(e, o)), q, sc, sz, g,
                            d[(a + 1) * G + g], dsx[(a + 1) * G + g]);
            }
        }
    }
    if (a < na)
        edgert_i8_kernel_ref(y + a * ldy, ldy, codes, sc, sz, x8 + a * kpad, d + a * G, dsx + a * G, na - a,
                   s);
}

/* the level this CPU runs: its hwcaps (getauxval: glibc, bionic and musl all have it) */
enum { I8_NEON, I8_DOT, I8_MM };
static int i8_level(void) {
    static atomic_int level = -1;
    int l = atomic_load_explicit(&level, memory_order_relaxed);
    if (l < 0) {
        const unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
        l = (hw2 & EDGERT_HWCAP2_I8MM) ? I8_MM : (hw & EDGERT_HWCAP_ASIMDDP) ? I8_DOT : I8_NEON;
        atomic_store_explicit(&level, l, memory_order_relaxed);
    }
    return l;
}

EDGERT_HIDDEN i8_kernel_fn edgert_i8_neon_kernel(const shape_t *s) {
    const int l = i8_level();
    if (l == I8_MM && s->group % 8 == 0) return kernel_i8mm;
    return l >= I8_DOT ? kernel_dotprod : kernel_neon;
}

EDGERT_HIDDEN const char *edgert_i8_neon_name(void) {
    static const char *const names[] = {"neon", "neon-dotprod", "neon-i8mm"};
    return names[i8_level()];
}
#endif
