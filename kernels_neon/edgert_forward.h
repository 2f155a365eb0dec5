/* edgert forward pass in C: every layer of a transformer (RMSNorm, q/k/v/o projections with
 * optional biases and q/k norms over the whole projection or per head, RoPE from one of the
 * caller's tables or none, grouped-query attention over a float32 KV cache, whole or over a
 * sliding window, optional norms on the attention's and the FFN's outputs, a SwiGLU or GeGLU
 * FFN or a mixture of experts) and the output head, for n tokens at positions pos .. pos+n-1,
 * in one call.
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

/* Neuron bundles (a layer's FFN on its active neurons only; edgert.sparse writes them): neuron j's
 * up-projection row and down-projection column, each dim_pad uniform `bits`-bit codes (2, 4 or 8;
 * element i in byte i*bits/8, low bits first), then the up row's float16 scale and zero per
 * group of `group` elements (w = scale * (q - zero)): [up codes][down codes][up scale][up zero].
 * The down column's element i is down_scale[b][i] * (q - down_zero[b][i]) with b = j / down_group
 * (the down projection's own groups run along the FFN; tables (ceil(ffn_dim / down_group), dim)). */
#define EDGERT_FORWARD_ABI 8
#define EDGERT_BUNDLE_GROUP_MAX 256 /* the largest bundle group */
#define EDGERT_BUNDLE_DIM_MAX 16384 /* the largest model dimension with bundles */

/* Fills bundles[0..count) with the addresses of the listed neurons' bundles (valid until the
 * layer's FFN is done); nonzero stops the forward pass, which then returns -3. */
typedef int32_t (*edgert_fetch_fn)(void *ctx, int32_t layer, const int32_t *neurons, int64_t count,
                                   const uint8_t **bundles);

typedef struct {
    float threshold;   /* a neuron is active for a token when |act(gate)| > threshold */
    int32_t bits, group;
    int64_t dim_pad;   /* dim rounded up to a multiple of group */
    edgert_fetch_fn fetch;
    void *ctx;
    int64_t down_group;
    const uint16_t *down_scale, *down_zero; /* this layer's tables, float16 bits */
} edgert_sparse_ffn;

/* A mixture-of-experts FFN: per token the router keeps the n_used experts of highest softmax
 * probability (ties to the lower index) and adds their SwiGLU outputs, weighted as `weighting`
 * says; a shared expert (shared_ffn_dim > 0) is added behind a sigmoid gate. */
#define EDGERT_ROUTE_PROBS 0 /* the kept probabilities as they are (Qwen2-MoE, OLMoE) */
#define EDGERT_ROUTE_NORM 1  /* renormalised to sum to 1 (Mixtral) */
#define EDGERT_ROUTE_UNIT 2  /* weight 1 (experts split from one dense FFN) */

/* Fills weights[3c .. 3c+2] with the gate, up and down projections of experts[c], c < count
 * (valid until the layer's FFN is done). next (n, next layer's n_used): the experts the next
 * layer's router picks on this layer's FFN input, per token, most probable first: a guess at
 * what that layer will want; NULL on the last layer or without `predict`. Nonzero stops the
 * forward pass, which then returns -3. */
typedef int32_t (*edgert_experts_fn)(void *ctx, int32_t layer, const int32_t *experts,
                                     int64_t count, const int32_t *next, int64_t n,
                                     edgert_weight *weights);

typedef struct {
    int32_t n_experts, n_used, weighting, predict;
    int64_t expert_ffn_dim, shared_ffn_dim; /* shared_ffn_dim 0: no shared expert */
    edgert_weight router;                   /* (n_experts, dim) */
    const edgert_weight *experts; /* n_experts x (gate, up, down); NULL: ask fetch per layer */
    edgert_experts_fn fetch;
    void *ctx;
    edgert_weight shared[3]; /* the shared expert's gate, up and down projections */
    const float *sh_inp;     /* (dim): the shared expert's gate */
    int64_t *counts;     /* NULL, or (n_experts): tokens routed to each expert are added */
} edgert_moe_ffn;

typedef struct {
    edgert_weight wq, wk, wv, wo, gate, up, down; /* gate, up, down unused with moe */
    const float *attn_norm, *ffn_norm;
    const float *bq, *bk, *bv;    /* NULL: no bias */
    const float *q_norm, *k_norm; /* NULL: no q/k norm; else over the whole projection, or per
                                   * head (the model's qk_norm_head) */
    const float *post_attn_norm, *post_ffn_norm; /* NULL: none (Gemma 3) */
    const edgert_sparse_ffn *sparse; /* NULL: the dense FFN (gate, up, down); else gate + bundles */
    const edgert_moe_ffn *moe;       /* NULL: not a mixture of experts */
    /* this layer's K and V cache: position p's (n_kv_heads, head_dim) row, in the model's
     * k_type / v_type (EDGERT_KV_*), at k_cache + (p % kv_cap) * k_stride bytes (v_cache, v_stride
     * the same; a stride is at least edgert_kv_row_bytes). A layer that attends to all positions
     * needs kv_cap >= pos + n; a sliding one, min(pos + n, window + n - 1): a ring of its window
     * and one call's tokens */
    uint8_t *k_cache, *v_cache;
    int64_t k_stride, v_stride, kv_cap;
    /* q4 keys (grouped, below): the float16 rows (EDGERT_KV_KEY_GROUP, n_kv_heads * head_dim)
     * of the positions whose group is not complete yet, position p at row p % the group; NULL
     * for the other key types */
    uint16_t *k_tail;
    int32_t rope;   /* the rotary table the layer applies (cos/sin of edgert_forward); -1: none */
    int32_t window; /* a query sees the last `window` positions, its own included; 0: all */
} edgert_layer;

/* How the KV cache holds a row of n values (n = n_kv_heads * head_dim). The quantized types go
 * by blocks of EDGERT_KV_BLOCK values of one head (head_dim must be a multiple of it), each
 * with float16 scales, as written at that position (per token, per head):
 *   F32  n floats;  F16  n float16;
 *   Q8   per block: scale d (f16), 32 int8 q;                  x = d * q      (34 bytes)
 *   Q4   per block: scale d (f16), min m (f16), 16 bytes of    x = d * q + m  (20 bytes)
 *        4-bit q, value 2j in byte j's low nibble, 2j + 1 in its high nibble.
 * Rounding to the codes is to nearest, ties to even, of x / d (Q8, d = max|x| / 127) or
 * (x - m) / d (Q4, m = min x, d = (max x - min x) / 15), d and m first rounded to float16.
 * These rows hold each block rotated (x = edgert_kv_rotate of the block's values): the
 * transform spreads a channel that is large in every token (keys after the rotary embedding
 * have such channels) over the block, so that one scale per block fits all of its values.
 * Attention scores rotated queries against rotated keys and rotates what it sums of rotated
 * values back (the transform is orthonormal and its own inverse).
 *
 * Keys in Q4 go by channel instead (Q4 values keep the rows above), unrotated: even rotated, one
 * scale per token's block spans those channels badly (SmolLM2 +5.0% perplexity at ctx 2048),
 * while one channel varies little over neighbouring positions. Positions come in groups of
 * EDGERT_KV_KEY_GROUP (group g: positions g G .. g G + G - 1); a complete group is stored at the
 * cache's row (g G) % kv_cap (kv_cap a multiple of G where the layer's ring wraps), in the bytes
 * of its G rows, KV head by KV head (4 head_dim + G head_dim / 2 bytes each):
 *   head_dim scales d (f16), head_dim minimums m (f16), then per position u of the group
 *   head_dim / 2 bytes of 4-bit q (channel 2j in byte j's low nibble);  x = d[c] * q + m[c]
 * with m[c] = min over the group's positions of channel c, d[c] = (max - min) / 15, rounded as
 * Q4's. The positions of the group not yet complete are kept in float16 in the layer's k_tail,
 * and a group is quantized from those float16 values (a key's value does not depend on whether it
 * came in a prompt or one token at a time). A query at position p reads the keys of the groups
 * complete at p (positions below (p + 1) / G * G) quantized, and the later ones in float16: the
 * same keys whether the tokens came one call at a time or all at once. */
#define EDGERT_KV_F32 0
#define EDGERT_KV_F16 1
#define EDGERT_KV_Q8 2
#define EDGERT_KV_Q4 3
#define EDGERT_KV_BLOCK 32
#define EDGERT_KV_KEY_GROUP 64

/* Bytes of one cache row of n values of `type`; -1 for a type not listed or n not a multiple
 * of a quantized type's block. */
int64_t edgert_kv_row_bytes(int32_t type, int64_t n);
/* The same for keys: a grouped Q4 key cache's bytes per position (its G rows hold a group) */
int64_t edgert_kv_key_row_bytes(int32_t type, int64_t n);
/* Each block of EDGERT_KV_BLOCK values of x (n a multiple of it) replaced by its orthonormal
 * Walsh-Hadamard transform (its own inverse). */
void edgert_kv_rotate(float *x, int64_t n);
/* row = the n values x in `type`'s layout (n a multiple of the block for the quantized types) */
void edgert_kv_store(int32_t type, uint8_t *row, const float *x, int64_t n);
/* out (n,) = values off .. off + n of a row of a float16 or quantized type (off and n multiples
 * of the block), as the row holds them (a quantized type's blocks rotated) */
void edgert_kv_load(int32_t type, float *out, const uint8_t *row, int64_t off, int64_t n);
/* Grouped Q4 keys of rows of n = heads * hd values: the groups that positions pos .. pos + count
 * - 1 (keys in k, count rows) complete, quantized into the cache (rows at kc + (t % cap) * stride)
 * from the tail's float16 rows (positions before pos) and k's rows rounded to float16. */
void edgert_kv_key_groups(uint8_t *kc, int64_t stride, int64_t cap, const uint16_t *tail,
                          const float *k, int64_t count, int64_t pos, int64_t heads, int64_t hd);
/* ... then the positions of pos .. pos + count - 1 in the group left incomplete into the tail */
void edgert_kv_key_tail(uint16_t *tail, const float *k, int64_t count, int64_t pos, int64_t n);
/* out (count, hd) = KV head h's keys of positions u0 .. u0 + count - 1 of a stored group (within
 * it) */
void edgert_kv_key_load(float *out, const uint8_t *group, int64_t h, int64_t hd, int64_t u0,
                        int64_t count);

#define EDGERT_ACT_SILU 0 /* the FFN's gate: silu (SwiGLU) */
#define EDGERT_ACT_GELU_TANH 1 /* gelu, tanh approximation (GeGLU) */

typedef struct {
    int32_t n_layers, dim, n_heads, n_kv_heads, head_dim, ffn_dim, rope_dim, rope_neox;
    int32_t n_rope;       /* rotary tables in cos/sin */
    int32_t qk_norm_head; /* q/k norms per head (head_dim wide), else over the projection */
    int32_t act;          /* EDGERT_ACT_* */
    int32_t k_type, v_type; /* EDGERT_KV_*: how every layer's cache holds keys, values */
    int64_t max_ctx;
    float rms_eps;
    float attn_scale; /* scores times this; 0: divided by sqrt(head_dim) */
    const edgert_layer *layers; /* n_layers */
    const float *output_norm;
    edgert_weight head;
} edgert_model;

/* The layout version of the structs above (an artifact's module and the runtime must agree). */
int32_t edgert_forward_abi(void);

/* y (n, dim) = the FFN of x (n, dim) over `count` neurons (ids in neurons, bundle addresses in
 * bundles), given a (n, ffn_dim) = act(gate x): sum over the listed neurons j active for token t
 * of a[t, j] (up_j . x[t]) down_j. h (n, count) is scratch. */
void edgert_bundle_ffn(float *y, const float *x, const float *a, int64_t n, int64_t dim,
                       int64_t ffn_dim, const edgert_sparse_ffn *sp, const int32_t *neurons,
                       const uint8_t *const *bundles, int64_t count, float *h, int32_t threads);

/* out (n, heads, head_dim) = attention of the queries q (n, heads, head_dim) of positions pos ..
 * pos + n - 1 over one layer's cache (kc, vc: position t's row at (t % cap) * stride bytes, the
 * tokens' own rows written; window: the last `window` positions only, 0 all). Grouped Q4 keys:
 * the complete groups stored (edgert_kv_key_groups), the others read from k_tail (positions
 * before pos) and k_new (the call's keys, (n, n_kv_heads, head_dim)). part: scratch of
 * edgert_attention_parts(m, n, pos) floats. q is scratch too: rotated in place where the keys
 * are held rotated. */
int64_t edgert_attention_parts(const edgert_model *m, int64_t n, int64_t pos);
void edgert_attention(const edgert_model *m, float *q, float *out, int64_t n, int64_t pos,
                      const uint8_t *kc, const uint8_t *vc, int64_t k_stride, int64_t v_stride,
                      int64_t cap, int32_t window, const uint16_t *k_tail, const float *k_new,
                      float *part, int32_t threads);

/* x (n, dim): the token embeddings in, the final residual stream out. cos/sin (n_rope, n,
 * rope_dim/2): each rotary table for the positions. logits (n, vocab), or (1, vocab) of the last token with last_only; NULL: no head.
 * times (NULL: not measured) accumulates seconds: [layer][0] attention, [layer][1] FFN, then
 * [n_layers][0] the head. Returns 0, or -1 on bad arguments (fetched experts included), -3 when a
 * sparse layer's or an expert layer's fetch failed. Its buffers are each thread's own, kept from
 * call to call (a decode step allocates nothing after the first; no memory for them aborts, as
 * for the kernels' tables). */
int edgert_forward(const edgert_model *m, float *x, int64_t n, int64_t pos, const float *cos,
                   const float *sin, int32_t last_only, float *logits, double *times,
                   int32_t threads);

#ifdef __cplusplus
}
#endif
#endif
