/* The forward pass of a transformer in C (see edgert_forward.h).
 *
 * Follows edgert.reference operation by operation: RMSNorm with the mean of squares in double,
 * attention scores divided by sqrt(head_dim) (or times the model's attn_scale), softmax with the
 * running max subtracted, SiLU as x / (1 + exp(-x)) (exp: vec.h's exp_array, within 2 ulp of
 * expf), GELU by its tanh form in float. Linear layers are the kernels of lut_gemm.c, attention
 * over the cache is attention.c's; vector helpers are vec.h's. Results do not depend on the
 * thread count: work is split by output rows, by tokens and by fixed chunks of keys (combined in
 * a fixed order), never inside a sum.
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

/* out[i] = part i (bytes[i] bytes, 64-byte aligned) of the calling thread's scratch `slot`
 * (lut_internal.h: kept for its next call, so decode steps allocate nothing) */
static void scratch_parts(int slot, int count, const size_t *bytes, void **out) {
    size_t total = 0;
    for (int i = 0; i < count; i++) total += (bytes[i] + 63) / 64 * 64;
    uint8_t *s = edgert_thread_scratch(slot, total);
    for (int i = 0; i < count; i++) {
        out[i] = s;
        s += (bytes[i] + 63) / 64 * 64;
    }
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
    const size_t bytes[4] = {
        (size_t)(n * E + n * nE + (E > nE ? E : nE) + n * k + n * nk + 2 * n * d + 2 * n * f) *
            sizeof(float),
        (size_t)(n * k + E + n * nk) * sizeof(int32_t), (size_t)n * sizeof(int64_t),
        (size_t)(3 * E) * sizeof(edgert_weight)};
    void *part[4];
    scratch_parts(EDGERT_SCRATCH_MOE, 4, bytes, part);
    float *buf = part[0];
    int32_t *idx = part[1];
    int64_t *rows = part[2];
    edgert_weight *ws = part[3];
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
            L->k_stride < edgert_kv_key_row_bytes(m->k_type, kd) ||
            L->v_stride < edgert_kv_row_bytes(m->v_type, kd))
            return 0;
        if (L->rope >= m->n_rope || (L->rope >= 0 && m->rope_dim == 0) || L->window < 0) return 0;
        const int64_t need = L->window && L->window + n - 1 < pos + n ? L->window + n - 1 : pos + n;
        if (L->kv_cap < need || L->kv_cap > m->max_ctx) return 0;
        if (m->k_type == EDGERT_KV_Q4) { /* grouped keys: a ring of whole groups, and a tail */
            const int64_t G = EDGERT_KV_KEY_GROUP;
            if (!L->k_tail || (pos + n > L->kv_cap &&
                               (L->kv_cap % G || L->kv_cap / G < (need + G - 1) / G + 1)))
                return 0;
        }
    }
    return m->head.p0 && m->head.k == m->dim && m->output_norm;
}

int edgert_forward(const edgert_model *m, float *x, int64_t n, int64_t pos, const float *cos,
                   const float *sin, int32_t last_only, float *logits, double *times,
                   int32_t threads) {
    if (!valid_model(m, n, pos) || !x || (m->n_rope && (!cos || !sin))) return -1;
    const int64_t d = m->dim, hd = m->head_dim, qd = m->n_heads * hd, kd = m->n_kv_heads * hd;
    const int64_t f = m->ffn_dim, half = m->rope_dim / 2;
    const int64_t parts = edgert_attention_parts(m, n, pos); /* attention's partials */
    const size_t bytes[3] = {
        (size_t)(n * (2 * d + 2 * qd + 2 * kd + 2 * f) + parts) * sizeof(float),
        (size_t)f * sizeof(int32_t), (size_t)f * sizeof(const uint8_t *)};
    void *scratch[3];
    scratch_parts(EDGERT_SCRATCH_FORWARD, 3, bytes, scratch);
    float *buf = scratch[0];
    int32_t *active = scratch[1];
    const uint8_t **bundles = scratch[2];
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
            if (m->k_type != EDGERT_KV_Q4) /* grouped keys are stored by whole groups */
                edgert_kv_store(m->k_type, kc + ((pos + i) % cap) * L->k_stride, ki, kd);
            edgert_kv_store(m->v_type, vc + ((pos + i) % cap) * L->v_stride, vi, kd);
        }
        if (m->k_type == EDGERT_KV_Q4)
            edgert_kv_key_groups(kc, L->k_stride, cap, L->k_tail, k, n, pos, m->n_kv_heads, hd);
        edgert_attention(m, q, att, n, pos, kc, vc, L->k_stride, L->v_stride, cap, L->window,
                         L->k_tail, k, part, threads);
        if (m->k_type == EDGERT_KV_Q4) edgert_kv_key_tail(L->k_tail, k, n, pos, kd);
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
    return rc;
}
