/* The forward pass of a transformer in C (see edgert_forward.h).
 *
 * Follows edgert.reference operation by operation: RMSNorm with the mean of squares in double,
 * attention scores divided by sqrt(head_dim) (or times the model's attn_scale), softmax with the
 * running max subtracted, SiLU as x / (1 + exp(-x)) (exp: vec.h's exp_array, within 2 ulp of
 * expf), GELU by its tanh form in float. Linear layers
 * are the kernels of lut_gemm.c; vector helpers are vec.h's. Results do not depend on the thread
 * count: work is split by output rows, by tokens and by fixed chunks of keys (combined in a fixed
 * order), never inside a sum.
 */
#include "edgert_forward.h"

#include <stdlib.h>
#include <time.h>

#include "vec.h"

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void rms_norm(float *out, const float *x, const float *w, int64_t d, float eps) {
    double ss = 0.0;
    for (int64_t i = 0; i < d; i++) ss += (double)x[i] * (double)x[i];
    const double s = sqrt(ss / (double)d + (double)eps);
    for (int64_t i = 0; i < d; i++) out[i] = (float)((double)x[i] / s) * w[i];
}

/* ---- linear layers: y (n, m) = x (n, k) . W^T ---------------------------------------------- */
typedef struct {
    const edgert_weight *w;
    const float *x;
    float *y;
    int64_t n;
} f32_ctx;

static void f32_rows(void *vctx, int64_t begin, int64_t end) {
    const f32_ctx *c = vctx;
    const float *W = c->w->p0;
    for (int64_t r = begin; r < end; r++)
        for (int64_t i = 0; i < c->n; i++)
            c->y[i * c->w->m + r] = dot(c->x + i * c->w->k, W + r * c->w->k, c->w->k);
}

static void linear(const edgert_weight *w, const float *x, int64_t n, float *y, int threads) {
    switch (w->kind) {
    case EDGERT_W_LUT:
        edgert_lut_gemm(y, x, n, w->m, w->k, w->p0, w->p1, w->p2, w->bits, w->group, w->fmt,
                        threads);
        break;
    case EDGERT_W_Q8:
        edgert_q8_gemm(y, x, n, w->m, w->k, w->p0, w->p1, threads);
        break;
    default: {
        f32_ctx c = {w, x, y, n};
        edgert_parallel_for(w->m, w->m * w->k * n >= EDGERT_PARALLEL_MIN_WORK ? threads : 1, f32_rows,
                            &c);
    }
    }
}

/* several weights applied to the same x: LUT weights of one shape family share their tables and
 * one parallel job; anything else runs one by one */
static void linear_multi(int count, const edgert_weight *const *w, const float *x, int64_t n,
                         float *const *y, int threads) {
    int same = count <= EDGERT_MAX_MULTI;
    for (int j = 0; j < count && same; j++)
        same = w[j]->kind == EDGERT_W_LUT && w[j]->k == w[0]->k && w[j]->bits == w[0]->bits &&
               w[j]->group == w[0]->group && w[j]->fmt == w[0]->fmt;
    if (!same) {
        for (int j = 0; j < count; j++) linear(w[j], x, n, y[j], threads);
        return;
    }
    int64_t m[EDGERT_MAX_MULTI];
    const uint8_t *planes[EDGERT_MAX_MULTI];
    const uint16_t *scale[EDGERT_MAX_MULTI], *zero[EDGERT_MAX_MULTI];
    for (int j = 0; j < count; j++) {
        m[j] = w[j]->m;
        planes[j] = w[j]->p0;
        scale[j] = w[j]->p1;
        zero[j] = w[j]->p2;
    }
    edgert_lut_gemm_multi(count, y, x, n, m, w[0]->k, planes, scale, zero, w[0]->bits,
                          w[0]->group, w[0]->fmt, threads);
}

static void rms_norm_rows(float *x, const float *w, int64_t rows, int64_t d, float eps) {
    for (int64_t r = 0; r < rows; r++) rms_norm(x + r * d, x + r * d, w, d, eps);
}

static void activate(float *g, int64_t count, int act) {
    if (act == EDGERT_ACT_GELU_TANH) {
        const float c = 0.7978845608028654f; /* sqrt(2 / pi) */
        for (int64_t j = 0; j < count; j++) {
            const float x = g[j];
            g[j] = 0.5f * x * (1.f + tanhf(c * (x + 0.044715f * x * x * x)));
        }
    } else { /* x / (1 + exp(-x)), exp on a block at a time */
        float e[256];
        for (int64_t j0 = 0; j0 < count; j0 += 256) {
            const int64_t len = count - j0 < 256 ? count - j0 : 256;
            for (int64_t j = 0; j < len; j++) e[j] = -g[j0 + j];
            exp_array(e, e, len);
            for (int64_t j = 0; j < len; j++) g[j0 + j] = g[j0 + j] / (1.f + e[j]);
        }
    }
}

/* ---- rotary embedding of one token's heads (x: heads x head_dim) ---------------------------- */
static void rope(float *x, int heads, int hd, int rd, int neox, const float *cs, const float *sn) {
    const int half = rd / 2;
    for (int h = 0; h < heads; h++) {
        float *v = x + (int64_t)h * hd;
        for (int j = 0; j < half; j++) {
            float *pa = neox ? v + j : v + 2 * j, *pb = neox ? v + j + half : v + 2 * j + 1;
            const float a = *pa, b = *pb;
            *pa = a * cs[j] - b * sn[j];
            *pb = a * sn[j] + b * cs[j];
        }
    }
}

/* ---- attention over the cache ---------------------------------------------------------------- */
/* A token's keys are taken in chunks of ATTN_CHUNK positions. A chunk gives each head the largest
 * of its scores m, l = sum of exp(score - m) and o = sum of exp(score - m) v; a token's chunks are
 * then combined in order (M = the largest m, out = sum e^(m - M) o / sum e^(m - M) l). The
 * chunking depends neither on the threads nor on how many tokens a call takes: an item is a token
 * (its chunks one after another) or, where a call has few tokens (decode), a (token, chunk) pair
 * (so that long contexts spread over the threads), with the same results bit for bit. Within a
 * chunk keys and values are read in blocks of ATTN_BLOCK positions, KV head by KV head, each
 * block used by all of that KV head's query heads while it is in L1 (64 x 64 floats: 16 KiB), the
 * next block's rows (all KV heads) asked for before it: SmolLM2 at 2048 tokens of context, 1
 * thread, 58 -> 65 tok/s (also prefetching the block about to be used, or rows a few ahead spread
 * over the dot products, measured slower). */
#define ATTN_CHUNK 256
#define ATTN_BLOCK 64
#define ATTN_SPLIT_TOKENS 8 /* calls with up to this many tokens: an item per (token, chunk) */

typedef struct {
    const edgert_model *m;
    const float *q;  /* (n, heads, hd) */
    float *out;      /* (n, heads, hd) */
    const uint8_t *kc, *vc; /* this layer's cache: position t at kc + (t % cap) * k_stride */
    int64_t k_stride, v_stride, cap;
    int64_t pos;
    int32_t window;
    int64_t chunks; /* the most chunks a token of the call has */
    float *part;    /* split calls: (n, chunks, heads, hd + 2) partials; else NULL */
    int failed;
} attn_ctx;

/* `len` cache rows from ring row r (of cap) of KV head values off .. off + hd: the float rows
 * where the cache holds floats (*stride, *r0, *rcap: their ring), else the rows dequantized
 * into buf (len x hd, not a ring) */
static const float *kv_rows(int32_t type, const uint8_t *cache, int64_t row_bytes, int64_t r,
                            int64_t cap, int64_t len, int64_t off, int64_t hd, float *buf,
                            int64_t *stride, int64_t *r0, int64_t *rcap) {
    if (type == EDGERT_KV_F32) {
        *stride = row_bytes / (int64_t)sizeof(float);
        *r0 = r;
        *rcap = cap;
        return (const float *)cache + off;
    }
    for (int64_t u = 0; u < len; u++, r = r + 1 == cap ? 0 : r + 1)
        edgert_kv_load(type, buf + u * hd, cache + r * row_bytes, off, hd);
    *stride = hd;
    *r0 = 0;
    *rcap = len;
    return buf;
}

/* asks for `len` ring rows from row r (of cap), row_bytes each (every KV head), to be brought
 * into the caches */
static void kv_prefetch(const uint8_t *cache, int64_t row_bytes, int64_t r, int64_t cap,
                        int64_t len) {
    for (int64_t u = 0; u < len; u++, r = r + 1 == cap ? 0 : r + 1)
        for (int64_t b = 0; b < row_bytes; b += 64) __builtin_prefetch(cache + r * row_bytes + b);
}

/* positions t0 .. t1 - 1 that token i attends to */
static int64_t attn_span(const attn_ctx *c, int64_t i, int64_t *t0) {
    const int64_t t1 = c->pos + i + 1;
    *t0 = c->window && t1 > c->window ? t1 - c->window : 0;
    return t1 - *t0;
}

/* chunk ch of token i: part (heads, hd + 2) = each head's m, l, o (m = -inf, l = 0, o = 0 where
 * the token has fewer chunks); s (heads, ATTN_CHUNK) and kbuf, vbuf (ATTN_BLOCK, hd) scratch */
static void attn_chunk(const attn_ctx *c, int64_t i, int64_t ch, float *part, float *s,
                       float *kbuf, float *vbuf) {
    const edgert_model *m = c->m;
    const int hd = m->head_dim, nh = m->n_heads, kv = m->n_kv_heads, group = nh / kv;
    int64_t t0;
    const int64_t count = attn_span(c, i, &t0), c0 = ch * ATTN_CHUNK;
    if (c0 >= count) {
        for (int h = 0; h < nh; h++) {
            float *ph = part + (int64_t)h * (hd + 2);
            ph[0] = -INFINITY;
            memset(ph + 1, 0, (size_t)(hd + 1) * sizeof(float));
        }
        return;
    }
    const int64_t len = count - c0 < ATTN_CHUNK ? count - c0 : ATTN_CHUNK;
    /* position t0 + c0's row; rows then follow in order, back to 0 after cap - 1 (no division
     * per key: a layer holding every position never wraps) */
    const int64_t r0 = (t0 + c0) % c->cap;
    for (int64_t b0 = 0; b0 < len; b0 += ATTN_BLOCK) {
        const int64_t b1 = len - b0 < ATTN_BLOCK ? len : b0 + ATTN_BLOCK;
        if (b1 < len) /* the next block's keys, all KV heads */
            kv_prefetch(c->kc, c->k_stride, (r0 + b1) % c->cap, c->cap,
                        len - b1 < ATTN_BLOCK ? len - b1 : ATTN_BLOCK);
        else /* the first values */
            kv_prefetch(c->vc, c->v_stride, r0, c->cap, len < ATTN_BLOCK ? len : ATTN_BLOCK);
        for (int g = 0; g < kv; g++) {
            int64_t ks, rb, kcap;
            const float *kr = kv_rows(m->k_type, c->kc, c->k_stride, (r0 + b0) % c->cap, c->cap,
                                      b1 - b0, (int64_t)g * hd, hd, kbuf, &ks, &rb, &kcap);
            for (int j = 0; j < group; j++) {
                const int h = g * group + j;
                const float *q = c->q + (i * nh + h) * hd;
                float *sh = s + (int64_t)h * ATTN_CHUNK;
                int64_t t = b0, r = rb;
                for (; t + 4 <= b1; t += 4) { /* four keys per pass: one reduction for the four */
                    const float *rows[4];
                    for (int u = 0; u < 4; u++, r = r + 1 == kcap ? 0 : r + 1)
                        rows[u] = kr + r * ks;
                    dot4(sh + t, q, rows, hd);
                }
                for (; t < b1; t++, r = r + 1 == kcap ? 0 : r + 1) sh[t] = dot(q, kr + r * ks, hd);
            }
        }
    }
    const float scale = (float)sqrt((double)hd), mul = m->attn_scale;
    for (int h = 0; h < nh; h++) {
        float *sh = s + (int64_t)h * ATTN_CHUNK, *ph = part + (int64_t)h * (hd + 2);
        const float mx = scale_max(sh, len, mul, scale);
        sub_scalar(sh, sh, mx, len);
        exp_array(sh, sh, len);
        ph[0] = mx;
        ph[1] = sum_array(sh, len);
    }
    for (int64_t b0 = 0; b0 < len; b0 += ATTN_BLOCK) {
        const int64_t bl = len - b0 < ATTN_BLOCK ? len - b0 : ATTN_BLOCK;
        if (b0 + bl < len)
            kv_prefetch(c->vc, c->v_stride, (r0 + b0 + bl) % c->cap, c->cap,
                        len - b0 - bl < ATTN_BLOCK ? len - b0 - bl : ATTN_BLOCK);
        for (int g = 0; g < kv; g++) {
            int64_t vs, rv, vcap;
            const float *vr = kv_rows(m->v_type, c->vc, c->v_stride, (r0 + b0) % c->cap, c->cap,
                                      bl, (int64_t)g * hd, hd, vbuf, &vs, &rv, &vcap);
            for (int j = 0; j < group; j++) {
                const int h = g * group + j;
                float *oh = part + (int64_t)h * (hd + 2) + 2;
                weighted_rows_acc(oh, s + (int64_t)h * ATTN_CHUNK + b0, vr, vs, rv, vcap, bl, hd,
                                  b0 == 0);
            }
        }
    }
}

/* token i's output (heads, hd) from its chunks' partials, chunk ch of head h at
 * part + (ch * heads + h) * (hd + 2) */
static void attn_combine(const attn_ctx *c, int64_t i, const float *part) {
    const int hd = c->m->head_dim, nh = c->m->n_heads;
    int64_t t0;
    const int64_t chunks = (attn_span(c, i, &t0) + ATTN_CHUNK - 1) / ATTN_CHUNK;
    for (int h = 0; h < nh; h++) {
        float *o = c->out + (i * nh + h) * hd, mx = -INFINITY, sum = 0.f;
        for (int64_t ch = 0; ch < chunks; ch++) {
            const float mc = part[(ch * nh + h) * (hd + 2)];
            mx = mc > mx ? mc : mx;
        }
        memset(o, 0, (size_t)hd * sizeof(float));
        for (int64_t ch = 0; ch < chunks; ch++) {
            const float *ph = part + (ch * nh + h) * (hd + 2), w = exp_one(ph[0] - mx);
            sum += w * ph[1];
            axpy(o, w, ph + 2, hd);
        }
        for (int e = 0; e < hd; e++) o[e] /= sum;
    }
}

/* items: tokens (part NULL) or (token, chunk) pairs (their partials into c->part) */
static void attn_items(void *vctx, int64_t begin, int64_t end) {
    attn_ctx *c = vctx;
    const edgert_model *m = c->m;
    const int64_t hd = m->head_dim, nh = m->n_heads;
    const int deq = m->k_type != EDGERT_KV_F32 || m->v_type != EDGERT_KV_F32;
    const int64_t own = c->part ? 0 : c->chunks * nh * (hd + 2); /* a token's partials */
    float *p = malloc((size_t)(nh * ATTN_CHUNK + (deq ? 2 * ATTN_BLOCK * hd : 0) + own) *
                      sizeof(float));
    if (!p) {
        c->failed = 1;
        return;
    }
    float *kbuf = p + nh * ATTN_CHUNK, *vbuf = kbuf + ATTN_BLOCK * hd; /* deq only */
    float *mine = kbuf + (deq ? 2 * ATTN_BLOCK * hd : 0);
    for (int64_t it = begin; it < end; it++) {
        if (c->part) {
            attn_chunk(c, it / c->chunks, it % c->chunks, c->part + it * nh * (hd + 2), p, kbuf,
                       vbuf);
            continue;
        }
        int64_t t0;
        const int64_t chunks = (attn_span(c, it, &t0) + ATTN_CHUNK - 1) / ATTN_CHUNK;
        for (int64_t ch = 0; ch < chunks; ch++)
            attn_chunk(c, it, ch, mine + ch * nh * (hd + 2), p, kbuf, vbuf);
        attn_combine(c, it, mine);
    }
    free(p);
}

int32_t edgert_forward_abi(void) { return EDGERT_FORWARD_ABI; }

/* ---- mixture of experts (edgert_forward.h) ------------------------------------------------- */
static int same_shape(const edgert_weight *w, int64_t m, int64_t k) {
    return w->p0 && w->m == m && w->k == k;
}

static int valid_expert(const edgert_weight *w, int64_t f, int64_t d) {
    return same_shape(&w[0], f, d) && same_shape(&w[1], f, d) && same_shape(&w[2], d, f);
}

static int valid_moe(const edgert_moe_ffn *e, int64_t d) {
    if (e->n_experts < 1 || e->n_used < 1 || e->n_used > e->n_experts || e->expert_ffn_dim < 1 ||
        e->weighting < EDGERT_ROUTE_PROBS || e->weighting > EDGERT_ROUTE_UNIT ||
        !same_shape(&e->router, e->n_experts, d) || (!e->experts && !e->fetch))
        return 0;
    for (int32_t j = 0; e->experts && j < e->n_experts; j++)
        if (!valid_expert(e->experts + 3 * j, e->expert_ffn_dim, d)) return 0;
    const int64_t s = e->shared_ffn_dim;
    return s == 0 || (s > 0 && e->sh_inp && valid_expert(e->shared, s, d));
}

/* logits (n, E) -> the kept experts idx (n, k) and their weights w (n, k); p (E) is scratch */
static void route(const edgert_moe_ffn *e, const float *logits, int64_t n, int32_t *idx,
                  float *w, float *p) {
    const int32_t E = e->n_experts, k = e->n_used;
    for (int64_t t = 0; t < n; t++) {
        const float *l = logits + t * E;
        float mx = l[0], sum = 0.f;
        for (int32_t j = 1; j < E; j++) mx = l[j] > mx ? l[j] : mx;
        for (int32_t j = 0; j < E; j++) sum += p[j] = expf(l[j] - mx);
        for (int32_t j = 0; j < E; j++) p[j] /= sum;
        float kept = 0.f;
        for (int32_t s = 0; s < k; s++) { /* the largest left; ties to the lower index */
            int32_t best = -1;
            for (int32_t j = 0; j < E; j++)
                if (p[j] >= 0.f && (best < 0 || p[j] > p[best])) best = j;
            idx[t * k + s] = best;
            w[t * k + s] = p[best];
            kept += p[best];
            p[best] = -1.f;
        }
        for (int32_t s = 0; s < k; s++)
            w[t * k + s] = e->weighting == EDGERT_ROUTE_UNIT   ? 1.f
                           : e->weighting == EDGERT_ROUTE_NORM ? w[t * k + s] / kept
                                                               : w[t * k + s];
    }
}

/* g = act(g) * u over rows [begin, end) of f elements (a parallel range function) */
typedef struct {
    float *g;
    const float *u;
    int64_t f;
    int act;
} glu_ctx;

static void glu_rows(void *vctx, int64_t begin, int64_t end) {
    const glu_ctx *c = vctx;
    float *g = c->g + begin * c->f;
    const float *u = c->u + begin * c->f;
    const int64_t count = (end - begin) * c->f;
    activate(g, count, c->act);
    for (int64_t j = 0; j < count; j++) g[j] *= u[j];
}

/* g (r, f) = act(x gate^T) * (x up^T) (u: scratch); y (r, d) = g down^T */
static void swiglu(const edgert_weight *gate, const edgert_weight *up, const edgert_weight *down,
                   const float *x, int64_t r, float *g, float *u, float *y, int act, int threads) {
    const edgert_weight *gu[2] = {gate, up};
    float *const out[2] = {g, u};
    linear_multi(2, gu, x, r, out, threads);
    const int64_t f = gate->m;
    glu_ctx c = {g, u, f, act}; /* per element: the result does not depend on the split */
    edgert_parallel_for(r, r > 1 && r * f * 16 >= EDGERT_PARALLEL_MIN_WORK ? threads : 1, glu_rows,
                        &c);
    linear(down, g, r, y, threads);
}

/* y (n, d) += the mixture on xn (n, d), x normed; x (n, d): the residual stream entering layer l's
 * FFN (what the next layer's router is guessed on) */
static int moe_ffn(const edgert_model *m, int32_t l, const float *x, float *y, const float *xn,
                   int64_t n, int threads) {
    const edgert_moe_ffn *e = m->layers[l].moe;
    const int64_t d = m->dim, E = e->n_experts, k = e->n_used;
    const int64_t f = e->expert_ffn_dim > e->shared_ffn_dim ? e->expert_ffn_dim : e->shared_ffn_dim;
    const edgert_moe_ffn *next = l + 1 < m->n_layers ? m->layers[l + 1].moe : NULL;
    const int guess = e->fetch && !e->experts && e->predict && next;
    const int64_t nk = next ? next->n_used : 0, nE = next ? next->n_experts : 0;
    float *buf = malloc((size_t)(n * E + n * nE + (E > nE ? E : nE) + n * k + n * nk + 2 * n * d +
                                 2 * n * f) * sizeof(float));
    int32_t *idx = malloc((size_t)(n * k + E + n * nk) * sizeof(int32_t));
    int64_t *rows = malloc((size_t)n * sizeof(int64_t));
    edgert_weight *ws = malloc((size_t)(3 * E) * sizeof(edgert_weight));
    if (!buf || !idx || !rows || !ws) {
        free(buf);
        free(idx);
        free(rows);
        free(ws);
        return -2;
    }
    float *logits = buf, *nl = logits + n * E, *p = nl + n * nE, *w = p + (E > nE ? E : nE);
    float *nw = w + n * k, *xe = nw + n * nk, *ye = xe + n * d, *g = ye + n * d, *u = g + n * f;
    int32_t *chosen = idx + n * k, *nidx = chosen + E;
    int rc = 0;
    linear(&e->router, xn, n, logits, threads);
    route(e, logits, n, idx, w, p);
    int64_t count = 0;
    for (int32_t j = 0; j < E; j++) /* the experts some token chose, ascending */
        for (int64_t q = 0; q < n * k; q++)
            if (idx[q] == j) {
                chosen[count++] = j;
                break;
            }
    if (guess) { /* the next router on this hidden state: what to read ahead */
        for (int64_t t = 0; t < n; t++)
            rms_norm(xe + t * d, x + t * d, m->layers[l + 1].ffn_norm, d, m->rms_eps);
        linear(&next->router, xe, n, nl, threads);
        route(next, nl, n, nidx, nw, p);
    }
    if (e->experts) {
        for (int64_t c = 0; c < count; c++)
            memcpy(ws + 3 * c, e->experts + 3 * chosen[c], 3 * sizeof(edgert_weight));
    } else if (e->fetch(e->ctx, l, chosen, count, guess ? nidx : NULL, n, ws)) {
        rc = -3;
    } else {
        for (int64_t c = 0; c < count && !rc; c++)
            if (!valid_expert(ws + 3 * c, e->expert_ffn_dim, d)) rc = -1;
    }
    for (int64_t c = 0; c < count && !rc; c++) {
        int64_t r = 0;
        for (int64_t t = 0; t < n; t++)
            for (int64_t s = 0; s < k; s++)
                if (idx[t * k + s] == chosen[c]) {
                    rows[r] = t * k + s;
                    memcpy(xe + r * d, xn + t * d, (size_t)d * sizeof(float));
                    r++;
                }
        if (e->counts) e->counts[chosen[c]] += r;
        swiglu(&ws[3 * c], &ws[3 * c + 1], &ws[3 * c + 2], xe, r, g, u, ye, m->act, threads);
        for (int64_t q = 0; q < r; q++) {
            const int64_t t = rows[q] / k;
            axpy(y + t * d, w[rows[q]], ye + q * d, d);
        }
    }
    if (!rc && e->shared_ffn_dim) {
        swiglu(&e->shared[0], &e->shared[1], &e->shared[2], xn, n, g, u, ye, m->act, threads);
        for (int64_t t = 0; t < n; t++) {
            const float s = dot(xn + t * d, e->sh_inp, d);
            axpy(y + t * d, 1.f / (1.f + expf(-s)), ye + t * d, d);
        }
    }
    free(buf);
    free(idx);
    free(rows);
    free(ws);
    return rc;
}

static int valid_sparse(const edgert_sparse_ffn *sp, int64_t dim) {
    return sp->fetch && (sp->bits == 2 || sp->bits == 4 || sp->bits == 8) && sp->group >= 8 &&
           sp->group <= EDGERT_BUNDLE_GROUP_MAX && sp->group % 8 == 0 && sp->dim_pad % sp->group == 0 &&
           sp->dim_pad >= dim && sp->dim_pad < dim + sp->group && sp->dim_pad <= EDGERT_BUNDLE_DIM_MAX &&
           sp->down_group >= 1 && sp->down_scale && sp->down_zero;
}

static int valid_model(const edgert_model *m, int64_t n, int64_t pos) {
    if (!m || !m->layers || n < 1 || pos < 0 || pos + n > m->max_ctx) return 0;
    if (m->n_heads < 1 || m->n_kv_heads < 1 || m->n_heads % m->n_kv_heads || m->rope_dim < 0 ||
        m->rope_dim > m->head_dim || m->rope_dim % 2 || m->n_rope < 0 ||
        (m->act != EDGERT_ACT_SILU && m->act != EDGERT_ACT_GELU_TANH))
        return 0;
    /* a quantized cache's blocks lie within one head; a float one's rows are float-aligned */
    for (int j = 0; j < 2; j++) {
        const int32_t t = j ? m->v_type : m->k_type;
        if (edgert_kv_row_bytes(t, m->head_dim) < 0) return 0;
    }
    const int64_t qd = (int64_t)m->n_heads * m->head_dim, kd = (int64_t)m->n_kv_heads * m->head_dim;
    for (int l = 0; l < m->n_layers; l++) {
        const edgert_layer *L = &m->layers[l];
        const edgert_weight *w[7] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->gate, &L->up, &L->down};
        const int64_t shape[7][2] = {{qd, m->dim}, {kd, m->dim}, {kd, m->dim}, {m->dim, qd},
                                     {m->ffn_dim, m->dim}, {m->ffn_dim, m->dim},
                                     {m->dim, m->ffn_dim}};
        for (int j = 0; j < 7; j++) {
            if ((L->sparse && j >= 5) || (L->moe && j >= 4)) break; /* bundles, or experts */
            if (!same_shape(w[j], shape[j][0], shape[j][1])) return 0;
        }
        if (L->sparse && !valid_sparse(L->sparse, m->dim)) return 0;
        if (L->moe && (L->sparse || !valid_moe(L->moe, m->dim))) return 0;
        if (!L->attn_norm || !L->ffn_norm || !L->k_cache || !L->v_cache ||
            L->k_stride < edgert_kv_row_bytes(m->k_type, kd) ||
            L->v_stride < edgert_kv_row_bytes(m->v_type, kd))
            return 0;
        if (L->rope >= m->n_rope || (L->rope >= 0 && m->rope_dim == 0) || L->window < 0) return 0;
        const int64_t need = L->window && L->window + n - 1 < pos + n ? L->window + n - 1 : pos + n;
        if (L->kv_cap < need || L->kv_cap > m->max_ctx) return 0;
    }
    return m->head.p0 && m->head.k == m->dim && m->output_norm;
}

int edgert_forward(const edgert_model *m, float *x, int64_t n, int64_t pos, const float *cos,
                   const float *sin, int32_t last_only, float *logits, double *times,
                   int32_t threads) {
    if (!valid_model(m, n, pos) || !x || (m->n_rope && (!cos || !sin))) return -1;
    const int64_t d = m->dim, hd = m->head_dim, qd = m->n_heads * hd, kd = m->n_kv_heads * hd;
    const int64_t f = m->ffn_dim, half = m->rope_dim / 2;
    /* attention's partials where a call's items are (token, chunk) pairs */
    const int64_t max_chunks = (pos + n + ATTN_CHUNK - 1) / ATTN_CHUNK;
    const int64_t parts = n <= ATTN_SPLIT_TOKENS ? n * max_chunks * m->n_heads * (hd + 2) : 0;
    float *buf = malloc((size_t)(n * (2 * d + 2 * qd + 2 * kd + 2 * f) + parts) * sizeof(float));
    int32_t *active = malloc((size_t)f * sizeof(int32_t));
    const uint8_t **bundles = malloc((size_t)f * sizeof(*bundles));
    if (!buf || !active || !bundles) {
        free(buf);
        free(active);
        free(bundles);
        return -2;
    }
    float *xn = buf, *q = xn + n * d, *k = q + n * qd, *v = k + n * kd, *att = v + n * kd;
    float *o = att + n * qd, *g = o + n * d, *u = g + n * f, *part = u + n * f;
    double t0 = times ? seconds() : 0.0;
    int rc = 0;
    for (int l = 0; l < m->n_layers && !rc; l++) {
        const edgert_layer *L = &m->layers[l];
        uint8_t *kc = L->k_cache, *vc = L->v_cache;
        const int64_t cap = L->kv_cap;
        for (int64_t i = 0; i < n; i++) rms_norm(xn + i * d, x + i * d, L->attn_norm, d, m->rms_eps);
        {
            const edgert_weight *w[3] = {&L->wq, &L->wk, &L->wv};
            float *const y[3] = {q, k, v};
            linear_multi(3, w, xn, n, y, threads);
        }
        for (int64_t i = 0; i < n; i++) {
            float *qi = q + i * qd, *ki = k + i * kd, *vi = v + i * kd;
            if (L->bq)
                for (int64_t j = 0; j < qd; j++) qi[j] += L->bq[j];
            if (L->bk)
                for (int64_t j = 0; j < kd; j++) ki[j] += L->bk[j];
            if (L->bv)
                for (int64_t j = 0; j < kd; j++) vi[j] += L->bv[j];
            if (m->qk_norm_head) {
                if (L->q_norm) rms_norm_rows(qi, L->q_norm, m->n_heads, hd, m->rms_eps);
                if (L->k_norm) rms_norm_rows(ki, L->k_norm, m->n_kv_heads, hd, m->rms_eps);
            } else {
                if (L->q_norm) rms_norm(qi, qi, L->q_norm, qd, m->rms_eps);
                if (L->k_norm) rms_norm(ki, ki, L->k_norm, kd, m->rms_eps);
            }
            if (half && L->rope >= 0) {
                const float *cs = cos + (L->rope * n + i) * half, *sn = sin + (L->rope * n + i) * half;
                rope(qi, m->n_heads, (int)hd, m->rope_dim, m->rope_neox, cs, sn);
                rope(ki, m->n_kv_heads, (int)hd, m->rope_dim, m->rope_neox, cs, sn);
            }
            edgert_kv_store(m->k_type, kc + ((pos + i) % cap) * L->k_stride, ki, kd);
            edgert_kv_store(m->v_type, vc + ((pos + i) % cap) * L->v_stride, vi, kd);
        }
        const int64_t span = L->window && L->window < pos + n ? L->window : pos + n;
        const int64_t work = n * m->n_heads * span * hd;
        const int att_threads = work >= EDGERT_PARALLEL_MIN_WORK ? edgert_threads(threads) : 1;
        const int64_t chunks = (span + ATTN_CHUNK - 1) / ATTN_CHUNK;
        const int split = n <= ATTN_SPLIT_TOKENS && chunks > 1;
        attn_ctx ac = {m, q, att, kc, vc, L->k_stride, L->v_stride, cap, pos, L->window, chunks,
                       split ? part : NULL, 0};
        edgert_parallel_for(split ? n * chunks : n, att_threads, attn_items, &ac);
        for (int64_t i = 0; split && i < n; i++)
            attn_combine(&ac, i, part + i * chunks * m->n_heads * (hd + 2));
        if (ac.failed) rc = -2;
        linear(&L->wo, att, n, o, threads);
        if (L->post_attn_norm) rms_norm_rows(o, L->post_attn_norm, n, d, m->rms_eps);
        for (int64_t j = 0; j < n * d; j++) x[j] += o[j];
        if (times) {
            const double t = seconds();
            times[2 * l] += t - t0;
            t0 = t;
        }
        for (int64_t i = 0; i < n; i++) rms_norm(xn + i * d, x + i * d, L->ffn_norm, d, m->rms_eps);
        if (L->moe) {
            float *y = x;
            if (L->post_ffn_norm) { /* the mixture alone, normed, then added */
                y = o;
                memset(o, 0, (size_t)(n * d) * sizeof(float));
            }
            rc = moe_ffn(m, l, x, y, xn, n, threads);
            if (rc) break;
            if (L->post_ffn_norm) {
                rms_norm_rows(o, L->post_ffn_norm, n, d, m->rms_eps);
                for (int64_t j = 0; j < n * d; j++) x[j] += o[j];
            }
        } else if (L->sparse) { /* gate, then only the neurons some token activates */
            const edgert_sparse_ffn *sp = L->sparse;
            linear(&L->gate, xn, n, g, threads);
            activate(g, n * f, m->act);
            int64_t count = 0;
            for (int64_t j = 0; j < f; j++)
                for (int64_t i = 0; i < n; i++)
                    if (fabsf(g[i * f + j]) > sp->threshold) {
                        active[count++] = (int32_t)j;
                        break;
                    }
            if (count && sp->fetch(sp->ctx, l, active, count, bundles)) {
                rc = -3;
                break;
            }
            if (count) {
                edgert_bundle_ffn(o, xn, g, n, d, f, sp, active, bundles, count, u, threads);
                if (L->post_ffn_norm) rms_norm_rows(o, L->post_ffn_norm, n, d, m->rms_eps);
                for (int64_t j = 0; j < n * d; j++) x[j] += o[j];
            }
        } else {
            swiglu(&L->gate, &L->up, &L->down, xn, n, g, u, o, m->act, threads);
            if (L->post_ffn_norm) rms_norm_rows(o, L->post_ffn_norm, n, d, m->rms_eps);
            for (int64_t j = 0; j < n * d; j++) x[j] += o[j];
        }
        if (times) {
            const double t = seconds();
            times[2 * l + 1] += t - t0;
            t0 = t;
        }
    }
    if (!rc && logits) {
        const int64_t first = last_only ? n - 1 : 0, rows = n - first;
        for (int64_t i = 0; i < rows; i++)
            rms_norm(xn + i * d, x + (first + i) * d, m->output_norm, d, m->rms_eps);
        linear(&m->head, xn, rows, logits, threads);
        if (times) times[2 * m->n_layers] += seconds() - t0;
    }
    free(buf);
    free(active);
    free(bundles);
    return rc;
}
