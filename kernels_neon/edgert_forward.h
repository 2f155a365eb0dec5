/* edgert forward pass in C: every layer of a dense transformer (RMSNorm, q/k/v/o projections with
 * optional biases and q/k norms, RoPE, grouped-query attention over a float32 KV cache, SwiGLU
 * FFN) and the output head, for n tokens at positions pos .. pos+n-1, in one call.
 *
 * The runtime's fast path: a decode step is one call instead of a few interpreted VM calls per
 * layer. Linear layers run the LUT kernels (edgert_kernels.h), 8-bit rows, or float32 rows.
 * The caller owns every buffer (weights, KV cache); the function allocates its scratch.
 */
#ifndef EDGERT_FORWARD_H
#define EDGERT_FORWARD_H
#include <stdint.h>

#define EDGERT_W_LUT 0 /* p0 planes, p1 scale, p2 zero; bits, group, fmt as edgert_lut_gemm */
#define EDGERT_W_Q8 1  /* p0 int8 q (m, kpad), p1 float scale (m, kpad/32) */
#define EDGERT_W_F32 2 /* p0 float (m, k) */

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int32_t kind, bits, group, fmt;
    int64_t m, k;
    const void *p0, *p1, *p2;
} edgert_weight;

typedef struct {
    edgert_weight wq, wk, wv, wo, gate, up, down;
    const float *attn_norm, *ffn_norm;
    const float *bq, *bk, *bv;    /* NULL: no bias */
    const float *q_norm, *k_norm; /* NULL: no q/k norm (over the whole projection) */
} edgert_layer;

typedef struct {
    int32_t n_layers, dim, n_heads, n_kv_heads, head_dim, ffn_dim, rope_dim, rope_neox;
    int64_t max_ctx;
    float rms_eps;
    const edgert_layer *layers; /* n_layers */
    const float *output_norm;
    edgert_weight head;
    float *k_cache, *v_cache; /* [n_layers][max_ctx][n_kv_heads][head_dim] */
} edgert_model;

/* x (n, dim): the token embeddings in, the final residual stream out. cos/sin (n, rope_dim/2) for
 * the positions. logits (n, vocab), or (1, vocab) of the last token with last_only; NULL: no head.
 * times (NULL: not measured) accumulates seconds: [layer][0] attention, [layer][1] FFN, then
 * [n_layers][0] the head. Returns 0, or -1 on bad arguments, -2 out of memory. */
int edgert_forward(const edgert_model *m, float *x, int64_t n, int64_t pos, const float *cos,
                   const float *sin, int32_t last_only, float *logits, double *times,
                   int32_t threads);

#ifdef __cplusplus
}
#endif
#endif
