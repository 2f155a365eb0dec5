/* A dense FFN over neuron bundles (edgert_forward.h): the FFN of the tokens' active neurons
 * only, each neuron's up row and down column unpacked from its bundle once. Results do not
 * depend on the thread count: a decode step's down projection sums fixed shares of the neurons
 * in order. */
#include <stdlib.h>

#include "edgert_forward.h"
#include "vec.h"

typedef struct {
    const float *x, *a;
    int64_t n, dim, f, groups;
    const edgert_sparse_ffn *sp;
    const int32_t *neurons;
    const uint8_t *const *bundles;
    int64_t count;
    float *h, *y;
    float *part; /* one token: BUNDLE_PARTS partial sums of y, one per share of the neurons */
} bundle_ctx;

/* a decode step's down projection runs over the neurons in this many fixed shares (summed in
 * order afterwards), so results do not depend on the thread count */
#define BUNDLE_PARTS 4
/* a prompt's down projection: output elements per work item */
#define BUNDLE_CHUNK 64

/* w[0, groups * g) = scale * (code - zero) per group of g: a bundle's up row */
static void dequantize(float *w, const uint8_t *codes, const uint16_t *scale, const uint16_t *zero,
                       int32_t bits, int64_t groups, int64_t g) {
    unpack_codes(w, codes, bits, 0, groups * g);
    for (int64_t q = 0; q < groups; q++) {
        const float s = h2f(scale[q]), z = h2f(zero[q]);
        for (int64_t i = q * g; i < (q + 1) * g; i++) w[i] = s * (w[i] - z);
    }
}

/* h[t, c] = a[t, j] (up_j . x[t]) for active (t, j = neurons[c]), else 0; the row is dequantized
 * once per neuron */
static void bundle_up(void *vctx, int64_t begin, int64_t end) {
    const bundle_ctx *c = vctx;
    const edgert_sparse_ffn *sp = c->sp;
    const int64_t g = sp->group, dp = sp->dim_pad, cb = dp * sp->bits / 8;
    float w[EDGERT_BUNDLE_DIM_MAX];
    for (int64_t k = begin; k < end; k++) {
        const int64_t j = c->neurons[k];
        const uint8_t *b = c->bundles[k];
        const uint16_t *scale = (const uint16_t *)(b + 2 * cb), *zero = scale + c->groups;
        int unpacked = 0;
        for (int64_t t = 0; t < c->n; t++) {
            const float at = c->a[t * c->f + j];
            float acc = 0.f;
            if (fabsf(at) > sp->threshold) {
                if (!unpacked) {
                    dequantize(w, b, scale, zero, sp->bits, c->groups, g);
                    unpacked = 1;
                }
                acc = at * dot(w, c->x + t * c->dim, c->dim);
            }
            c->h[t * c->count + k] = acc;
        }
    }
}

/* y[t, chunk q] = sum over c of h[t, c] down_j[chunk q], for chunks [begin, end) of
 * BUNDLE_CHUNK output elements */
static void bundle_down(void *vctx, int64_t begin, int64_t end) {
    const bundle_ctx *c = vctx;
    const edgert_sparse_ffn *sp = c->sp;
    const int64_t dp = sp->dim_pad, cb = dp * sp->bits / 8, dim = c->dim;
    float q[BUNDLE_CHUNK], w[BUNDLE_CHUNK];
    for (int64_t ch = begin; ch < end; ch++) {
        const int64_t lo = ch * BUNDLE_CHUNK, hi = lo + BUNDLE_CHUNK <= dim ? lo + BUNDLE_CHUNK : dim;
        const int64_t hu = lo + BUNDLE_CHUNK <= dp ? lo + BUNDLE_CHUNK : dp; /* whole bytes */
        for (int64_t t = 0; t < c->n; t++) memset(c->y + t * dim + lo, 0, (size_t)(hi - lo) * 4);
        for (int64_t k = 0; k < c->count; k++) {
            int any = 0;
            for (int64_t t = 0; t < c->n && !any; t++) any = c->h[t * c->count + k] != 0.f;
            if (!any) continue;
            const int64_t blk = c->neurons[k] / sp->down_group;
            unpack_codes(q, c->bundles[k] + cb, sp->bits, lo, hu);
            memset(w, 0, sizeof w);
            affine_acc(w, sp->down_scale + blk * dim + lo, sp->down_zero + blk * dim + lo, q, 1.f,
                       hi - lo);
            for (int64_t t = 0; t < c->n; t++) {
                const float ht = c->h[t * c->count + k];
                if (ht != 0.f) axpy(c->y + t * dim + lo, ht, w, hi - lo);
            }
        }
    }
}

/* one token: part[p] = sum over share p of the neurons of h[c] down_j, each column unpacked
 * once: the codes of a run of neurons in one down group summed with their h, then scaled by the
 * group's scales and zeros once (a new run wherever the group changes) */
static void bundle_down_parts(void *vctx, int64_t begin, int64_t end) {
    const bundle_ctx *c = vctx;
    const edgert_sparse_ffn *sp = c->sp;
    const int64_t dp = sp->dim_pad, cb = dp * sp->bits / 8, dim = c->dim;
    float w[EDGERT_BUNDLE_DIM_MAX], acc[EDGERT_BUNDLE_DIM_MAX];
    for (int64_t p = begin; p < end; p++) {
        float *yp = c->part + p * dim;
        memset(yp, 0, (size_t)dim * 4);
        int64_t run = -1; /* the down group of the neurons in acc */
        float hs = 0.f;
        for (int64_t k = p * c->count / BUNDLE_PARTS; k < (p + 1) * c->count / BUNDLE_PARTS;
             k++) {
            const float ht = c->h[k];
            if (ht == 0.f) continue;
            const int64_t blk = c->neurons[k] / sp->down_group;
            if (blk != run) {
                if (run >= 0)
                    affine_acc(yp, sp->down_scale + run * dim, sp->down_zero + run * dim, acc, hs,
                               dim);
                memset(acc, 0, (size_t)dim * 4);
                run = blk;
                hs = 0.f;
            }
            unpack_codes(w, c->bundles[k] + cb, sp->bits, 0, dp);
            axpy(acc, ht, w, dim);
            hs += ht;
        }
        if (run >= 0)
            affine_acc(yp, sp->down_scale + run * dim, sp->down_zero + run * dim, acc, hs, dim);
    }
}

void edgert_bundle_ffn(float *y, const float *x, const float *a, int64_t n, int64_t dim,
                       int64_t ffn_dim, const edgert_sparse_ffn *sp, const int32_t *neurons,
                       const uint8_t *const *bundles, int64_t count, float *h, int32_t threads) {
    const int64_t groups = sp->dim_pad / sp->group;
    bundle_ctx c = {x, a, n, dim, ffn_dim, groups, sp, neurons, bundles, count, h, y, NULL};
    const int64_t work = 2 * n * count * dim;
    const int t = work >= EDGERT_PARALLEL_MIN_WORK ? threads : 1;
    edgert_parallel_for(count, t, bundle_up, &c);
    if (n > 1) { /* a prompt: each column used by several tokens */
        edgert_parallel_for((dim + BUNDLE_CHUNK - 1) / BUNDLE_CHUNK, t, bundle_down, &c);
        return;
    }
    c.part = edgert_thread_scratch(EDGERT_SCRATCH_BUNDLE, (size_t)BUNDLE_PARTS * (size_t)dim * 4);
    edgert_parallel_for(BUNDLE_PARTS, t, bundle_down_parts, &c);
    for (int64_t i = 0; i < dim; i++) {
        float acc = 0.f;
        for (int p = 0; p < BUNDLE_PARTS; p++) acc += c.part[p * dim + i];
        y[i] = acc;
    }
}
