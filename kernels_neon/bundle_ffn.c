/* A dense FFN over neuron bundles (edgert_forward.h): the FFN of the tokens' active neurons
 * only, each neuron's up row and down column dequantized from its bundle once. Results do not
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

/* w[0, groups * g) = scale * code + min per group of g: one bundle row or column */
static void dequantize(float *w, const uint8_t *codes, const uint16_t *scale, const uint16_t *mn,
                       int32_t bits, int64_t groups, int64_t g) {
    unpack_codes(w, codes, bits, 0, groups * g);
    for (int64_t q = 0; q < groups; q++) {
        const float s = h2f(scale[q]), m0 = h2f(mn[q]);
        for (int64_t i = q * g; i < (q + 1) * g; i++) w[i] = s * w[i] + m0;
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
        const uint16_t *scale = (const uint16_t *)(b + 2 * cb), *mn = scale + c->groups;
        int unpacked = 0;
        for (int64_t t = 0; t < c->n; t++) {
            const float at = c->a[t * c->f + j];
            float acc = 0.f;
            if (fabsf(at) > sp->threshold) {
                if (!unpacked) {
                    dequantize(w, b, scale, mn, sp->bits, c->groups, g);
                    unpacked = 1;
                }
                acc = at * dot(w, c->x + t * c->dim, c->dim);
            }
            c->h[t * c->count + k] = acc;
        }
    }
}

/* y[t, group q] = sum over c of h[t, c] down_j[group q], for groups [begin, end) */
static void bundle_down(void *vctx, int64_t begin, int64_t end) {
    const bundle_ctx *c = vctx;
    const edgert_sparse_ffn *sp = c->sp;
    const int64_t g = sp->group, dp = sp->dim_pad, cb = dp * sp->bits / 8;
    float w[EDGERT_BUNDLE_GROUP_MAX];
    for (int64_t q = begin; q < end; q++) {
        const int64_t lo = q * g, hi = lo + g <= c->dim ? lo + g : c->dim;
        for (int64_t t = 0; t < c->n; t++) memset(c->y + t * c->dim + lo, 0, (size_t)(hi - lo) * 4);
        for (int64_t k = 0; k < c->count; k++) {
            const uint8_t *b = c->bundles[k];
            const uint16_t *scale = (const uint16_t *)(b + 2 * cb) + 2 * c->groups;
            const uint16_t *mn = scale + c->groups;
            int any = 0;
            for (int64_t t = 0; t < c->n && !any; t++) any = c->h[t * c->count + k] != 0.f;
            if (!any) continue;
            dequantize(w, b + cb + lo * sp->bits / 8, scale + q, mn + q, sp->bits, 1, g);
            for (int64_t t = 0; t < c->n; t++) {
                const float ht = c->h[t * c->count + k];
                if (ht != 0.f) axpy(c->y + t * c->dim + lo, ht, w, hi - lo);
            }
        }
    }
}

/* one token: part[p] = sum over share p of the neurons of h[c] down_j, each column dequantized
 * once (the group-wise walk above would dequantize every column once per group) */
static void bundle_down_parts(void *vctx, int64_t begin, int64_t end) {
    const bundle_ctx *c = vctx;
    const edgert_sparse_ffn *sp = c->sp;
    const int64_t g = sp->group, dp = sp->dim_pad, cb = dp * sp->bits / 8;
    float w[EDGERT_BUNDLE_DIM_MAX];
    for (int64_t p = begin; p < end; p++) {
        float *yp = c->part + p * c->dim;
        memset(yp, 0, (size_t)c->dim * 4);
        for (int64_t k = p * c->count / BUNDLE_PARTS; k < (p + 1) * c->count / BUNDLE_PARTS;
             k++) {
            const float ht = c->h[k];
            if (ht == 0.f) continue;
            const uint8_t *b = c->bundles[k];
            const uint16_t *scale = (const uint16_t *)(b + 2 * cb) + 2 * c->groups;
            const uint16_t *mn = scale + c->groups;
            dequantize(w, b + cb, scale, mn, sp->bits, c->groups, g);
            axpy(yp, ht, w, c->dim);
        }
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
    c.part = n == 1 ? malloc((size_t)BUNDLE_PARTS * (size_t)dim * 4) : NULL;
    if (!c.part) { /* a prompt (each column used by several tokens), or no memory */
        edgert_parallel_for(groups, t, bundle_down, &c);
        return;
    }
    edgert_parallel_for(BUNDLE_PARTS, t, bundle_down_parts, &c);
    for (int64_t i = 0; i < dim; i++) {
        float acc = 0.f;
        for (int p = 0; p < BUNDLE_PARTS; p++) acc += c.part[p * dim + i];
        y[i] = acc;
    }
    free(c.part);
}
