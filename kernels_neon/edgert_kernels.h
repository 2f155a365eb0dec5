/* edgert LUT kernels: low-bit weight x float activation products by table lookup.
 *
 * Weight format (packed offline by edgert.kernels):
 *   W (m, k) with b-bit codes q in [0, 2^b), rows padded to a multiple of 32 (a "tile"), k to a
 *   multiple of the group size g. Codes are split into b bit-planes; for each tile, each run of 4
 *   columns ("nibble" k4) and each plane, 16 bytes hold the 4-bit column patterns of the tile's
 *   32 rows: byte i = row i (low nibble) | row i+16 (high nibble).
 *     planes: uint8 [m_pad/32][k_pad/4][b][16]
 *   Group parameters (float16 bits), per tile and group, 32 rows contiguous:
 *     uniform: scale[m_pad/32][G][32], zero[m_pad/32][G][32]      w = scale * (q - zero)
 *     hlq:     alpha[m_pad/32][G][b][32], beta[m_pad/32][G][32]    w = sum_j alpha_j bit_j + beta
 *   With EDGERT_FMT_SHARED_ZERO or'ed into fmt, zero (or beta) is one [32] for every tile and
 *   group (a symmetric source such as llama.cpp's Q4_0, w = d (q - 8): 0.5 bit per weight less).
 * Activations: for each group of 4 activations the 16 partial sums sum_i bit_i x_i are tabulated
 * and rounded to integers |q| <= 32767 / (g / 4) with one scale per weight group (so the sums of
 * one plane over a group fit int16), kept as the high (int8) and low (uint8) bytes of q; each
 * plane's 4-bit pattern selects entries of both (tbl on NEON, pshufb on AVX2/AVX-512), the bytes are
 * recombined (zip / unpack) or summed separately, accumulated in 16-bit lanes over the group, and
 * planes are shift-added (uniform) or scaled by alpha (HLQ) in the float epilogue of the group.
 * (8-bit tables alone cost ~1.4% relative error per product.) The Armv8.2 dotprod build runs the
 * NEON path: the inner loop is table lookups, which dot-product instructions do not speed up.
 * Threads: every entry point splits rows over `threads` workers of a persistent pool
 * (threads <= 0: $EDGERT_THREADS or all cores); results do not depend on the thread count.
 */
#ifndef EDGERT_KERNELS_H
#define EDGERT_KERNELS_H
#include <stdint.h>

#define EDGERT_TILE 32
#define EDGERT_FMT_UNIFORM 0
#define EDGERT_FMT_HLQ 1
#define EDGERT_FMT_SHARED_ZERO 4 /* a flag on either format: zero / beta [32], shared */
#define EDGERT_MAX_MULTI 4

#ifdef __cplusplus
extern "C" {
#endif

/* y (n, m) = x (n, k) . W^T (GEMV: n = 1; prefill: n up to 512 and beyond) */
void edgert_lut_gemm(float *y, const float *x, int64_t n, int64_t m, int64_t k,
                     const uint8_t *planes, const uint16_t *scale, const uint16_t *zero,
                     int32_t bits, int32_t group, int32_t fmt, int32_t threads);
void edgert_lut_gemm_ref(float *y, const float *x, int64_t n, int64_t m, int64_t k,
                         const uint8_t *planes, const uint16_t *scale, const uint16_t *zero,
                         int32_t bits, int32_t group, int32_t fmt, int32_t threads);
/* count (<= EDGERT_MAX_MULTI) weights with the same k, bits, group and format applied to the same
 * x (a layer's q/k/v or gate/up projections): y[j] (n, m[j]) = x . W_j^T with one table build and
 * one parallel job; each y[j] equals what edgert_lut_gemm computes for W_j alone. */
void edgert_lut_gemm_multi(int32_t count, float *const *y, const float *x, int64_t n,
                           const int64_t *m, int64_t k, const uint8_t *const *planes,
                           const uint16_t *const *scale, const uint16_t *const *zero,
                           int32_t bits, int32_t group, int32_t fmt, int32_t threads);
/* y (r,) = rows of x (k,) . W^T, only the rows listed in rows (r,) */
void edgert_lut_gemv_rows(float *y, const float *x, int64_t m, int64_t k, const int32_t *rows,
                          int64_t r, const uint8_t *planes, const uint16_t *scale,
                          const uint16_t *zero, int32_t bits, int32_t group, int32_t fmt,
                          int32_t threads);
void edgert_lut_gemv_rows_ref(float *y, const float *x, int64_t m, int64_t k,
                              const int32_t *rows, int64_t r, const uint8_t *planes,
                              const uint16_t *scale, const uint16_t *zero, int32_t bits,
                              int32_t group, int32_t fmt, int32_t threads);
/* 8-bit rows (embeddings, output head): y (n, m) = x (n, k) . W^T with W = q * scale,
 * q int8 [m][kpad] (kpad = k rounded up to 32), scale float [m][kpad/32]. */
void edgert_q8_gemm(float *y, const float *x, int64_t n, int64_t m, int64_t k, const int8_t *q,
                    const float *scale, int32_t threads);
void edgert_q8_gemm_ref(float *y, const float *x, int64_t n, int64_t m, int64_t k,
                        const int8_t *q, const float *scale, int32_t threads);
/* Prefill: y (n, m) = x (n, k) . W^T for uniform weights by int8 dot products (i8_gemm.c):
 * activations rounded to int8 per row and group, codes unpacked tile by tile. edgert_lut_gemm
 * and _multi take this path for n >= EDGERT_I8_MIN_ROWS rows (tuning.h) where the build has a
 * SIMD int8 kernel; the _ref twin is its scalar equal, bit for bit. */
void edgert_i8_gemm(float *y, const float *x, int64_t n, int64_t m, int64_t k,
                    const uint8_t *planes, const uint16_t *scale, const uint16_t *zero,
                    int32_t bits, int32_t group, int32_t threads);
void edgert_i8_gemm_ref(float *y, const float *x, int64_t n, int64_t m, int64_t k,
                        const uint8_t *planes, const uint16_t *scale, const uint16_t *zero,
                        int32_t bits, int32_t group, int32_t threads);
/* the int8 kernel this build runs: "avx512vnni", "avx2", "scalar", or on arm64 the level the
 * CPU has, chosen at load: "neon-i8mm", "neon-dotprod" or "neon" */
const char *edgert_i8_kernel(void);
/* the CPU features this build's code needs, as arm64 AT_HWCAP / AT_HWCAP2 bits (0 elsewhere),
 * and the ones this CPU has (getauxval): a runtime refuses a library whose needs are not met
 * before it calls anything else in it */
void edgert_cpu_needs(uint64_t need[2]);
void edgert_cpu_have(uint64_t have[2]);
/* reads n bytes at p once with `threads` workers; returns a checksum (a bandwidth probe) */
uint64_t edgert_read_bytes(const uint8_t *p, int64_t n, int32_t threads);
/* which SIMD path this build uses: "neon", "avx512", "avx2" or "scalar" */
const char *edgert_kernels_isa(void);
/* the build's ISA and tuning values (tuning.h), e.g. "isa=neon prefetch_bytes=2048 ..." */
const char *edgert_kernels_config(void);

#ifdef __cplusplus
}
#endif
#endif
