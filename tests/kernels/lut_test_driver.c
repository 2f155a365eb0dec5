/* Randomised checks of the LUT kernels, compiled with the kernel source included directly so it
 * runs anywhere a C compiler targets (host with AddressSanitizer, aarch64 under qemu):
 *   fast path == _ref twin bit for bit, row-subset == full GEMV rows, and every row within the
 *   worst-case table-rounding bound of a double product with the dequantized weights;
 *   the forward pass: prefill == token-by-token decode, independent of threads, bad arguments
 *   refused; the neuron-bundle FFN (every code width, one token and several) within float
 *   rounding of a double product with the bundles decoded here, the same for any thread count.
 *   Prints "N passed, N failed". */
#include <stdio.h>
#include <stdlib.h>

#include "../../kernels_neon/edgert_forward.h"
#include "../../kernels_neon/attn_vec.h"

static uint64_t rng_state = 88172645463325252ull;
static uint64_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
static float frand(void) { return (float)((rnd() >> 11) * (1.0 / 9007199254740992.0)) * 2.f - 1.f; }

static int failures = 0, passes = 0;

static void check(int ok, const char *what, int64_t m, int64_t k, int bits, int group, int fmt) {
    if (ok) {
        passes++;
    } else {
        failures++;
        printf("FAIL %s m=%lld k=%lld bits=%d group=%d fmt=%d\n", what, (long long)m, (long long)k,
               bits, group, fmt);
    }
}

/* the code of tile t's row rr at column col, read from its bit-planes (the layout of
 * edgert_kernels.h) */
static int plane_code(const uint8_t *planes, const shape_t *s, int64_t t, int64_t rr, int64_t col) {
    int q = 0;
    for (int j = 0; j < s->bits; j++) {
        const uint8_t byte = planes[((t * s->k4 + col / 4) * s->bits + j) * 16 + rr % 16];
        const int nib = rr < 16 ? byte & 15 : byte >> 4;
        q |= ((nib >> (col % 4)) & 1) << j;
    }
    return q;
}

static void one_case(int64_t m, int64_t k, int bits, int group, int fmt, int64_t n, int threads) {
    shape_t s;
    make_shape(&s, k, bits, group, fmt);
    int64_t tiles = (m + T - 1) / T, per = fmt == EDGERT_FMT_HLQ ? bits : 1;
    size_t np_ = (size_t)(tiles * s.k4 * bits * 16), ns = (size_t)(tiles * s.groups * per * T),
           nz = (size_t)(tiles * s.groups * T);
    uint8_t *planes = malloc(np_);
    uint16_t *scale = malloc(ns * 2), *zero = malloc(nz * 2);
    float *x = malloc((size_t)(n * k) * 4), *y = malloc((size_t)(n * m) * 4),
          *yr = malloc((size_t)(n * m) * 4), *ys = malloc((size_t)m * 4);
    int32_t *rows = malloc((size_t)m * 4);
    for (size_t i = 0; i < np_; i++) planes[i] = (uint8_t)rnd();
    for (size_t i = 0; i < ns; i++) scale[i] = f2h(0.01f + 0.05f * (frand() + 1.f));
    for (size_t i = 0; i < nz; i++) zero[i] = f2h(fmt == EDGERT_FMT_HLQ ? 0.1f * frand() : 8.f * (frand() + 1.f));
    for (int64_t i = 0; i < n * k; i++) x[i] = frand();
    edgert_lut_gemm(y, x, n, m, k, planes, scale, zero, bits, group, fmt, threads);
    edgert_lut_gemm_ref(yr, x, n, m, k, planes, scale, zero, bits, group, fmt, 1);
    check(memcmp(y, yr, (size_t)(n * m) * 4) == 0, "fast == ref", m, k, bits, group, fmt);
    int64_t r = 0;
    for (int64_t i = 0; i < m; i += 1 + (int64_t)(rnd() % 7)) rows[r++] = (int32_t)i;
    edgert_lut_gemv_rows(ys, x, m, k, rows, r, planes, scale, zero, bits, group, fmt, threads);
    int same = 1;
    for (int64_t i = 0; i < r; i++) same &= ys[i] == y[rows[i]];
    check(same, "rows == gemv", m, k, bits, group, fmt);
    /* float reference: dequantize every weight (columns >= k are padding) and dot in double.
     * Each table entry is within half a table step (ts) of its exact value, so row y's error is
     * at most sum over groups of per * ts / 2 * sum_j |coefficient of plane j| (uniform:
     * scale * 2^j, HLQ: alpha_j), plus float rounding (1e-5 of sum |w x|). */
    uint8_t *tb = malloc((size_t)(s.k4 * 32));
    float *ts = malloc((size_t)s.groups * 4), *xs = malloc((size_t)s.groups * 4);
    edgert_build_tables_ref(x, &s, tb, ts, xs);
    int close = 1;
    for (int64_t row = 0; row < m; row++) {
        int64_t t = row / T, rr = row % T;
        double acc = 0, absacc = 0, bound = 0;
        for (int64_t g = 0; g < s.groups; g++) {
            const uint16_t *sc = scale_at(scale, t, g, &s);
            double coef = 0;
            for (int j = 0; j < bits; j++)
                coef += fabs(fmt == EDGERT_FMT_UNIFORM ? h2f(sc[rr]) * (double)(1 << j)
                                                       : (double)h2f(sc[j * T + rr]));
            bound += (group / 4) * 0.5 * ts[g] * coef;
        }
        for (int64_t col = 0; col < k; col++) {
            int64_t g = col / group;
            const int q = plane_code(planes, &s, t, rr, col);
            double w;
            const uint16_t *sc = scale_at(scale, t, g, &s), *zr = zero_at(zero, t, g, &s);
            if (fmt == EDGERT_FMT_UNIFORM) {
                w = h2f(sc[rr]) * (q - (double)h2f(zr[rr]));
            } else {
                w = h2f(zr[rr]);
                for (int j = 0; j < bits; j++) w += ((q >> j) & 1) * (double)h2f(sc[j * T + rr]);
            }
            acc += w * x[col];
            absacc += fabs(w * x[col]);
        }
        close &= fabs(acc - y[row]) <= bound + 1e-5 * absacc + 1e-30;
    }
    check(close, "close to float", m, k, bits, group, fmt);
    free(tb); free(ts); free(xs);
    free(planes); free(scale); free(zero); free(x); free(y); free(yr); free(ys); free(rows);
}

/* the int8 prefill path (uniform weights, many rows): the SIMD kernel == its scalar twin bit for
 * bit, the LUT entry points take it from EDGERT_I8_MIN_ROWS rows on (alone and in a multi call),
 * and every row is within the activations' rounding of the float product: each activation moves
 * by at most half its group's step d = amax / 127, so row y's error is at most
 * sum_i |w_i| d_i / 2, plus float rounding (1e-5 of sum |w x|). */
static void i8_case(int64_t m, int64_t k, int bits, int group, int64_t n, int threads) {
    shape_t s;
    make_shape(&s, k, bits, group, EDGERT_FMT_UNIFORM);
    const int64_t tiles = (m + T - 1) / T;
    const size_t np_ = (size_t)(tiles * s.k4 * bits * 16), ns = (size_t)(tiles * s.groups * T);
    uint8_t *planes = malloc(np_);
    uint16_t *scale = malloc(ns * 2), *zero = malloc(ns * 2);
    float *x = malloc((size_t)(n * k) * 4), *y = malloc((size_t)(n * m) * 4),
          *yr = malloc((size_t)(n * m) * 4), *yl = malloc((size_t)(n * m) * 4),
          *y2[2] = {malloc((size_t)(n * m) * 4), malloc((size_t)(n * m) * 4)};
    for (size_t i = 0; i < np_; i++) planes[i] = (uint8_t)rnd();
    for (size_t i = 0; i < ns; i++) scale[i] = f2h(0.01f + 0.05f * (frand() + 1.f));
    for (size_t i = 0; i < ns; i++) zero[i] = f2h((float)((1 << bits) - 1) * 0.5f * (frand() + 1.f));
    /* rows of different ranges, one all zero */
    for (int64_t i = 0; i < n * k; i++) x[i] = i / k == 1 ? 0.f : frand() * (float)(1 + i / k % 5);
    edgert_i8_gemm(y, x, n, m, k, planes, scale, zero, bits, group, threads);
    edgert_i8_gemm_ref(yr, x, n, m, k, planes, scale, zero, bits, group, 1);
    check(memcmp(y, yr, (size_t)(n * m) * 4) == 0, "i8 fast == ref", m, k, bits, group, (int)n);
    edgert_lut_gemm(yl, x, n, m, k, planes, scale, zero, bits, group, EDGERT_FMT_UNIFORM, threads);
    const int via_i8 = n >= EDGERT_I8_MIN_ROWS && strcmp(edgert_i8_kernel(), "scalar") != 0;
    if (via_i8) {
        check(memcmp(y, yl, (size_t)(n * m) * 4) == 0, "lut_gemm takes the i8 path", m, k, bits,
              group, (int)n);
        const int64_t ms[2] = {m, m};
        const uint8_t *pl[2] = {planes, planes};
        const uint16_t *sc[2] = {scale, scale}, *zr[2] = {zero, zero};
        edgert_lut_gemm_multi(2, y2, x, n, ms, k, pl, sc, zr, bits, group, EDGERT_FMT_UNIFORM,
                              threads);
        check(!memcmp(y2[0], y, (size_t)(n * m) * 4) && !memcmp(y2[1], y, (size_t)(n * m) * 4),
              "i8 multi == single", m, k, bits, group, (int)n);
    }
    int close = 1;
    float *amax = calloc((size_t)(n * s.groups), sizeof(float)); /* per row and group */
    for (int64_t i = 0; i < n * k; i++)
        amax[i / k * s.groups + i % k / group] =
            fmaxf(amax[i / k * s.groups + i % k / group], fabsf(x[i]));
    for (int64_t a = 0; a < n; a++) {
        for (int64_t row = 0; row < m; row++) {
            const int64_t t = row / T, rr = row % T;
            double acc = 0, absacc = 0, bound = 0;
            for (int64_t col = 0; col < k; col++) {
                const int64_t g = col / group;
                const int q = plane_code(planes, &s, t, rr, col);
                const double w = h2f(scale_at(scale, t, g, &s)[rr]) *
                                 (q - (double)h2f(zero_at(zero, t, g, &s)[rr]));
                acc += w * x[a * k + col];
                absacc += fabs(w * x[a * k + col]);
                bound += fabs(w) * amax[a * s.groups + g] / 127.0 / 2;
            }
            close &= fabs(acc - y[a * m + row]) <= bound + 1e-5 * absacc + 1e-30;
        }
    }
    check(close, "i8 close to float", m, k, bits, group, (int)n);
    free(amax);
    free(planes); free(scale); free(zero); free(x); free(y); free(yr); free(yl);
    free(y2[0]); free(y2[1]);
}

/* 8-bit rows: the SIMD path within float rounding of its scalar twin */
static void q8_case(int64_t m, int64_t k, int64_t n) {
    int64_t kpad = (k + 31) / 32 * 32;
    int8_t *q = malloc((size_t)(m * kpad));
    float *sc = malloc((size_t)(m * kpad / 32) * 4), *x = malloc((size_t)(n * k) * 4);
    float *y = malloc((size_t)(n * m) * 4), *yr = malloc((size_t)(n * m) * 4);
    for (int64_t i = 0; i < m * kpad; i++) q[i] = (int8_t)(rnd() % 255 - 127);
    for (int64_t i = 0; i < m * kpad / 32; i++) sc[i] = 0.001f + 0.01f * (frand() + 1.f);
    for (int64_t i = 0; i < n * k; i++) x[i] = frand();
    edgert_q8_gemm(y, x, n, m, k, q, sc, 2);
    edgert_q8_gemm_ref(yr, x, n, m, k, q, sc, 1);
    double err = 0, mag = 0;
    for (int64_t i = 0; i < n * m; i++) {
        err += (y[i] - yr[i]) * (double)(y[i] - yr[i]);
        mag += (double)yr[i] * yr[i];
    }
    check(err <= 1e-10 * mag + 1e-12, "q8 fast ~ ref", m, k, 8, 32, -1);
    free(q); free(sc); free(x); free(y); free(yr);
}

/* a small dense model: float32 projections with biases, q/k norms and partial rotary, 8-bit head */
static float *rand_vec(int64_t n, float scale, float offset) {
    float *v = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) v[i] = offset + scale * frand();
    return v;
}

static edgert_weight f32_weight(int64_t m, int64_t k) {
    edgert_weight w = {EDGERT_W_F32, 32, 0, 0, m, k, rand_vec(m * k, 1.f / (float)k, 0.f), 0, 0};
    return w;
}

/* the prompt in one call, or (split) in calls of 4 and 3 tokens; logits of every token */
static int prefill(const edgert_model *m, float *x, const float *emb, int64_t n, int64_t d,
                   const float *cs, const float *sn, int64_t half, float *out, int64_t v,
                   int split, int threads) {
    memcpy(x, emb, (size_t)(n * d) * sizeof(float));
    if (!split) return edgert_forward(m, x, n, 0, cs, sn, 0, out, NULL, threads);
    const int64_t a = 4;
    int rc = edgert_forward(m, x, a, 0, cs, sn, 0, out, NULL, threads);
    return rc | edgert_forward(m, x + a * d, n - a, a, cs + a * half, sn + a * half, 0, out + a * v,
                               NULL, threads);
}

/* gemma: per-head q/k norms, post norms, GeGLU, scaled scores, layer 0 sliding over 3 positions
 * in a ring of 6 rows (the prompt comes in calls of 4 and 3 tokens: the ring wraps), layer 1
 * without RoPE; else norms over the projections, SwiGLU, RoPE */
static void forward_case(int neox, int gemma) {
    enum { L = 2, D = 40, H = 4, KV = 2, HD = 10, F = 24, V = 37, CTX = 12, N = 7, W = 3 };
    edgert_layer layers[L];
    memset(layers, 0, sizeof layers); /* every optional part (biases, norms, sparse FFN) off */
    for (int l = 0; l < L; l++) {
        edgert_layer *y = &layers[l];
        y->wq = f32_weight(H * HD, D);
        y->wk = f32_weight(KV * HD, D);
        y->wv = f32_weight(KV * HD, D);
        y->wo = f32_weight(D, H * HD);
        y->gate = f32_weight(F, D);
        y->up = f32_weight(F, D);
        y->down = f32_weight(D, F);
        y->attn_norm = rand_vec(D, 0.1f, 1.f);
        y->ffn_norm = rand_vec(D, 0.1f, 1.f);
        y->bq = rand_vec(H * HD, 0.1f, 0.f);
        y->bk = rand_vec(KV * HD, 0.1f, 0.f);
        y->bv = rand_vec(KV * HD, 0.1f, 0.f);
        y->q_norm = rand_vec(H * HD, 0.1f, 1.f);
        y->k_norm = rand_vec(KV * HD, 0.1f, 1.f);
        y->kv_cap = CTX;
        if (gemma) {
            y->post_attn_norm = rand_vec(D, 0.1f, 1.f);
            y->post_ffn_norm = rand_vec(D, 0.1f, 1.f);
        }
    }
    if (gemma) {
        layers[0].window = W;
        layers[0].kv_cap = W + 4 - 1;
        layers[1].rope = -1;
    }
    int8_t *hq = malloc(V * 64);
    float *hs = rand_vec(V * 2, 0.001f, 0.01f);
    for (int i = 0; i < V * 64; i++) hq[i] = (int8_t)(rnd() % 255 - 127);
    /* the layers' caches interleaved position by position (any stride will do) */
    float *kc = calloc(L * CTX * KV * HD, sizeof(float)), *vc = calloc(L * CTX * KV * HD, sizeof(float));
    for (int l = 0; l < L; l++) {
        layers[l].k_cache = (uint8_t *)(kc + l * KV * HD);
        layers[l].v_cache = (uint8_t *)(vc + l * KV * HD);
        layers[l].k_stride = layers[l].v_stride = L * KV * HD * (int64_t)sizeof(float);
    }
    edgert_model m = {.n_layers = L, .dim = D, .n_heads = H, .n_kv_heads = KV, .head_dim = HD,
                      .ffn_dim = F, .rope_dim = 6, .rope_neox = neox, .n_rope = 1,
                      .qk_norm_head = gemma, .act = gemma ? EDGERT_ACT_GELU_TANH : EDGERT_ACT_SILU,
                      .max_ctx = CTX, .rms_eps = 1e-5f, .attn_scale = gemma ? 0.3f : 0.f,
                      .layers = layers, .output_norm = rand_vec(D, 0.1f, 1.f),
                      .head = {EDGERT_W_Q8, 8, 32, 0, V, D, hq, hs, 0}};
    float *emb = rand_vec(N * D, 1.f, 0.f), *cs = rand_vec(N * 3, 1.f, 0.f), *sn = rand_vec(N * 3, 1.f, 0.f);
    float *x = malloc(N * D * sizeof(float)), *all = malloc(N * V * sizeof(float));
    float *one = malloc(V * sizeof(float)), *again = malloc(N * V * sizeof(float));
    int rc = prefill(&m, x, emb, N, D, cs, sn, 3, all, V, gemma, 3);
    check(rc == 0, "forward prefill", N, D, 32, gemma, neox);
    double err = 0, mag = 0;
    double times[2 * L + 2] = {0};
    for (int i = 0; i < N; i++) { /* token by token (threads 1) == prefill (threads 3) */
        memcpy(x, emb + i * D, D * sizeof(float));
        rc |= edgert_forward(&m, x, 1, i, cs + 3 * i, sn + 3 * i, 1, one, times, 1);
        for (int j = 0; j < V; j++) {
            err += (one[j] - all[i * V + j]) * (double)(one[j] - all[i * V + j]);
            mag += (double)all[i * V + j] * all[i * V + j];
        }
    }
    check(rc == 0 && err <= 1e-10 * mag && mag > 0, "forward decode == prefill", N, D, 32, gemma, neox);
    check(times[2 * L] > 0 && times[0] > 0, "forward times", N, D, 32, 0, neox);
    rc = prefill(&m, x, emb, N, D, cs, sn, 3, again, V, gemma, 1);
    check(rc == 0 && !memcmp(again, all, N * V * sizeof(float)), "forward threads 1 == 3", N, D,
          32, 0, neox);
    check(edgert_forward(&m, x, N, CTX - N + 1, cs, sn, 0, all, NULL, 1) == -1,
          "forward refuses positions past the context", N, D, 32, 0, neox);
    layers[1].wo.m = D + 1;
    check(edgert_forward(&m, x, 1, 0, cs, sn, 0, all, NULL, 1) == -1,
          "forward refuses mismatched weights", N, D, 32, 0, neox);
    layers[1].wo.m = D;
    m.k_type = EDGERT_KV_Q8; /* blocks of 32 values within a head of 10 */
    check(edgert_forward(&m, x, 1, 0, cs, sn, 0, all, NULL, 1) == -1,
          "forward refuses a quantized cache across heads", N, D, 32, 0, neox);
    m.k_type = EDGERT_KV_F32;
    check(edgert_kv_row_bytes(EDGERT_KV_Q4, 64) == 40 && edgert_kv_row_bytes(EDGERT_KV_Q8, 64) == 68
          && edgert_kv_row_bytes(EDGERT_KV_F16, 10) == 20 && edgert_kv_row_bytes(9, 64) == -1,
          "kv row bytes", N, D, 32, 0, neox);
    { /* the quantized cache's rotation: orthonormal, its own inverse, one block at a time */
        float r[64], x0[64];
        for (int j = 0; j < 64; j++) x0[j] = r[j] = j == 0 ? 2.f : j == 40 ? -1.f : 0.f;
        edgert_kv_rotate(r, 64);
        int ok = 1;
        for (int j = 0; j < 64; j++) /* e0 and e8 of 32: constant, and signs by bit 3 of j */
            ok &= fabsf(r[j] - (j < 32 ? 2.f : ((j & 8) ? 1.f : -1.f)) / sqrtf(32.f)) < 1e-6f;
        edgert_kv_rotate(r, 64);
        for (int j = 0; j < 64; j++) ok &= fabsf(r[j] - x0[j]) < 1e-6f;
        check(ok, "kv rotation", N, D, 32, 0, neox);
    }
    if (gemma) { /* 3 tokens at position 4: the first sees position 2, which a ring of 4 rows
                  * would overwrite with position 6 */
        layers[0].kv_cap = 4;
        check(edgert_forward(&m, x, 3, 4, cs, sn, 0, all, NULL, 1) == -1,
              "forward refuses a ring smaller than window + tokens - 1", N, D, 32, 1, neox);
        layers[0].kv_cap = W + 4 - 1;
    }
    for (int l = 0; l < L; l++) {
        const edgert_weight *w[7] = {&layers[l].wq, &layers[l].wk, &layers[l].wv, &layers[l].wo,
                                     &layers[l].gate, &layers[l].up, &layers[l].down};
        for (int j = 0; j < 7; j++) free((void *)w[j]->p0);
        const float *v[9] = {layers[l].attn_norm, layers[l].ffn_norm, layers[l].bq, layers[l].bk,
                             layers[l].bv, layers[l].q_norm, layers[l].k_norm,
                             layers[l].post_attn_norm, layers[l].post_ffn_norm};
        for (int j = 0; j < 9; j++) free((void *)v[j]);
    }
    free(hq); free(hs); free(kc); free(vc); free((void *)m.output_norm);
    free(emb); free(cs); free(sn); free(x); free(all); free(one); free(again);
}

/* element i's code in a bundle's codes (low bits first) */
static int bundle_code(const uint8_t *codes, int bits, int64_t i) {
    return (codes[i * bits / 8] >> (i * bits % 8)) & ((1 << bits) - 1);
}

static void bundle_case(int bits, int64_t dim, int64_t n, int64_t count, int64_t dg) {
    const int32_t g = 32;
    const int64_t dp = (dim + g - 1) / g * g, groups = dp / g, cb = dp * bits / 8;
    const int64_t nb = 2 * cb + 4 * groups, f = count + 3, nd = (f + dg - 1) / dg;
    uint8_t *all = malloc((size_t)(f * nb));
    uint16_t *ds = malloc((size_t)(nd * dim) * 2), *dz = malloc((size_t)(nd * dim) * 2);
    const uint8_t **ptr = malloc((size_t)count * sizeof *ptr);
    int32_t *neurons = malloc((size_t)count * 4);
    float *x = malloc((size_t)(n * dim) * 4), *a = malloc((size_t)(n * f) * 4);
    float *h = malloc((size_t)(n * count) * 4), *y = malloc((size_t)(n * dim) * 4),
          *y1 = malloc((size_t)(n * dim) * 4);
    double *want = calloc((size_t)(n * dim), sizeof(double));
    const float top = (float)((1 << bits) - 1);
    for (int64_t j = 0; j < f; j++) {
        uint8_t *b = all + j * nb;
        for (int64_t i = 0; i < 2 * cb; i++) b[i] = (uint8_t)rnd();
        uint16_t *sc = (uint16_t *)(b + 2 * cb);
        for (int64_t q = 0; q < groups; q++) {
            sc[q] = f2h(0.02f * (frand() + 1.5f));
            sc[groups + q] = f2h(top * 0.5f * (frand() + 1.f));
        }
    }
    for (int64_t i = 0; i < nd * dim; i++) {
        ds[i] = f2h(0.02f * (frand() + 1.5f));
        dz[i] = f2h(top * 0.5f * (frand() + 1.f));
    }
    for (int64_t i = 0; i < n * dim; i++) x[i] = frand();
    for (int64_t i = 0; i < n * f; i++) a[i] = frand();
    for (int64_t c = 0; c < count; c++) { /* neurons 3.. in reverse: any order is allowed */
        neurons[c] = (int32_t)(f - 1 - c);
        ptr[c] = all + neurons[c] * nb;
    }
    edgert_sparse_ffn sp = {0.25f, bits, g, dp, NULL, NULL, dg, ds, dz};
    double mag = 0;
    for (int64_t c = 0; c < count; c++) {
        const uint8_t *b = ptr[c];
        const uint16_t *sc = (const uint16_t *)(b + 2 * cb);
        const int64_t blk = neurons[c] / dg;
        for (int64_t t = 0; t < n; t++) {
            const float at = a[t * f + neurons[c]];
            if (fabsf(at) <= sp.threshold) continue;
            double u = 0;
            for (int64_t i = 0; i < dim; i++)
                u += (double)h2f(sc[i / g]) * (bundle_code(b, bits, i) - h2f(sc[groups + i / g])) *
                     x[t * dim + i];
            for (int64_t i = 0; i < dim; i++) {
                const double w = (double)h2f(ds[blk * dim + i]) *
                                 (bundle_code(b + cb, bits, i) - h2f(dz[blk * dim + i]));
                want[t * dim + i] += at * u * w;
                mag = fmax(mag, fabs(at * u * w));
            }
        }
    }
    edgert_bundle_ffn(y, x, a, n, dim, f, &sp, neurons, ptr, count, h, 1);
    edgert_bundle_ffn(y1, x, a, n, dim, f, &sp, neurons, ptr, count, h, 3);
    double err = 0;
    int same = 1;
    for (int64_t i = 0; i < n * dim; i++) {
        err = fmax(err, fabs(y[i] - want[i]));
        same &= y[i] == y1[i];
    }
    check(err <= 1e-4 * mag * (double)count, "bundle ffn", n, dim, bits, (int)dg, (int)count);
    check(same, "bundle ffn threads", n, dim, bits, (int)dg, (int)count);
    free(all); free(ds); free(dz); free(ptr); free(neurons); free(x); free(a); free(h); free(y);
    free(y1); free(want);
}

/* vec.h: each helper equals its _ref twin bit for bit, for every length around the vector widths */
static void vec_case(void) {
    enum { N = 300 };
    float a[N], b[N], y0[N], y1[N];
    uint8_t codes[N];
    for (int i = 0; i < N; i++) {
        a[i] = frand();
        b[i] = frand();
        codes[i] = (uint8_t)rnd();
    }
    for (int64_t n = 0; n <= 70; n++) {
        const float d0 = dot(a, b, n), d1 = dot_ref(a, b, n);
        check(memcmp(&d0, &d1, sizeof d0) == 0, "dot == dot_ref", n, 0, 0, 0, 0);
        const float s = frand();
        memcpy(y0, b, sizeof y0);
        memcpy(y1, b, sizeof y1);
        axpy(y0, s, a, n);
        axpy_ref(y1, s, a, n);
        check(memcmp(y0, y1, sizeof y0) == 0, "axpy == axpy_ref", n, 0, 0, 0, 0);
        uint16_t sc[N], zr[N];
        for (int i = 0; i < N; i++) {
            sc[i] = f2h(frand());
            zr[i] = f2h(8.f * frand());
        }
        memcpy(y0, b, sizeof y0);
        memcpy(y1, b, sizeof y1);
        affine_acc(y0, sc, zr, a, s, n);
        affine_acc_ref(y1, sc, zr, a, s, n);
        check(memcmp(y0, y1, sizeof y0) == 0, "affine_acc == affine_acc_ref", n, 0, 0, 0, 0);
    }
    /* a KV head's rows for its group of query heads: == the _ref twin (hence dot, axpy) bit for
     * bit for float, float16 and q8 rows in a ring (5 rows of 3 heads' values, from row 3),
     * however many heads and rows (the register tiles' edges), prefetching or not; values in
     * blocks of rows == all rows at once */
    {
        enum { CAP = 5, RB = 3 * 140, QH = 5 * (2 + EDGERT_KV_BLOCK) /* a q8 head: 160 values */ };
        float kf[CAP * RB], q[8 * 160], s0[8 * 16], s1[8 * 16], o0[8 * 161], o1[8 * 161],
            w[8 * 16];
        uint16_t kh[CAP * RB];
        uint8_t k8[CAP * 3 * QH];
        for (int i = 0; i < CAP * RB; i++) {
            kh[i] = f2h(frand());
            kf[i] = frand();
        }
        for (int i = 0; i < CAP * 3 * QH; i++) k8[i] = (uint8_t)(rnd() % 255 + 129);
        for (int i = 0; i < CAP * 3 * QH; i += 2 + EDGERT_KV_BLOCK) { /* each block's scale */
            const uint16_t d = f2h(0.01f * frand());
            memcpy(k8 + i, &d, 2);
        }
        for (int i = 0; i < 8 * 160; i++) q[i] = frand();
        for (int i = 0; i < 8 * 16; i++) w[i] = frand();
        const int64_t ns[] = {0, 5, 16, 37, 64, 70, 128}, counts[] = {0, 1, 3, 4, 7, 13};
        const int64_t ns8[] = {0, 32, 64, 96, 128, 160, 160}; /* q8: whole blocks */
        for (int kind = 0; kind <= EDGERT_KV_Q8; kind++)
            for (int64_t nq = 1; nq <= 8; nq++)
                for (int in = 0; in < 7; in++)
                    for (int ic = 0; ic < 6; ic++) {
                        const int64_t n = kind == EDGERT_KV_Q8 ? ns8[in] : ns[in];
                        const int64_t count = counts[ic];
                        const int64_t rb = kind == EDGERT_KV_Q8 ? 3 * QH : RB * (kind ? 2 : 4);
                        /* the second KV head's values of each row */
                        const uint8_t *base = kind == EDGERT_KV_Q8 ? k8 + QH
                                              : kind ? (const uint8_t *)(kh + 140)
                                                     : (const uint8_t *)(kf + 140);
                        const int64_t pf = ic % 2 ? 3 : 0;
                        memset(s0, 0, sizeof s0);
                        memset(s1, 0, sizeof s1);
                        dot_group(s0, 16, q, nq, base, rb, 3, CAP, count, n, kind, pf);
                        dot_group_ref(s1, 16, q, nq, base, rb, 3, CAP, count, n, kind);
                        check(memcmp(s0, s1, sizeof s0) == 0, "dot_group == _ref", n, count,
                              (int)nq, kind, 0);
                        for (int first = 0; first < 2; first++) {
                            for (int i = 0; i < 8 * 161; i++) o0[i] = o1[i] = frand();
                            weighted_group_acc(o0, 161, w, 16, nq, base, rb, 3, CAP, count, n,
                                               first, kind, pf);
                            weighted_group_acc_ref(o1, 161, w, 16, nq, base, rb, 3, CAP, count, n,
                                                   first, kind);
                            check(memcmp(o0, o1, sizeof o0) == 0, "weighted_group_acc == _ref", n,
                                  count, (int)nq, kind, first);
                        }
                        /* the same rows in two blocks, the ring going on */
                        const int64_t c1 = count / 2;
                        weighted_group_acc(o0, 161, w, 16, nq, base, rb, 3, CAP, c1, n, 1, kind, pf);
                        weighted_group_acc(o0, 161, w + c1, 16, nq, base, rb, (3 + c1) % CAP, CAP,
                                           count - c1, n, 0, kind, pf);
                        weighted_group_acc_ref(o1, 161, w, 16, nq, base, rb, 3, CAP, count, n, 1,
                                               kind);
                        check(memcmp(o0, o1, sizeof o0) == 0, "weighted_group_acc in blocks", n,
                              count, (int)nq, kind, 0);
                    }
        /* and the twin is dot on the rows converted to float (q8: as edgert_kv_load gives them) */
        float row[160];
        for (int64_t in = 1; in < 7; in++) {
            const int64_t n = ns[in], n8 = ns8[in];
            for (int64_t i = 0; i < n; i++) row[i] = h2f(kh[2 * RB + 140 + i]);
            dot_group_ref(s1, 16, q, 2, (const uint8_t *)(kh + 140), RB * 2, 2, CAP, 1, n, 1);
            const float d0 = dot(q, row, n), d1 = dot(q + n, row, n);
            check(memcmp(&s1[0], &d0, 4) == 0 && memcmp(&s1[16], &d1, 4) == 0,
                  "dot_group_ref == dot", n, 1, 2, 1, 0);
            edgert_kv_load(EDGERT_KV_Q8, row, k8 + 2 * 3 * QH + QH, 0, n8);
            dot_group_ref(s1, 16, q, 2, k8 + QH, 3 * QH, 2, CAP, 1, n8, EDGERT_KV_Q8);
            const float e0 = dot(q, row, n8), e1 = dot(q + n8, row, n8);
            check(memcmp(&s1[0], &e0, 4) == 0 && memcmp(&s1[16], &e1, 4) == 0,
                  "dot_group_ref == dot on kv_load (q8)", n8, 1, 2, 2, 0);
        }
    }
    /* softmax's pieces: scale_max and sub_scalar == the scalar loops (exact, any order) */
    for (int64_t n = 0; n <= 70; n += 5) {
        for (int k = 0; k < 2; k++) {
            const float mul = k ? 0.125f : 0.f, div = 8.f;
            float mx = -INFINITY;
            memcpy(y0, a, sizeof y0);
            for (int64_t i = 0; i < n; i++) {
                y1[i] = mul != 0.f ? a[i] * mul : a[i] / div;
                mx = y1[i] > mx ? y1[i] : mx;
            }
            const float got = scale_max(y0, n, mul, div);
            check(got == mx && memcmp(y0, y1, (size_t)n * sizeof(float)) == 0, "scale_max", n, k,
                  0, 0, 0);
        }
        sub_scalar(y0, a, 0.3f, n);
        int same = 1;
        for (int64_t i = 0; i < n; i++) same &= y0[i] == a[i] - 0.3f;
        check(same, "sub_scalar", n, 0, 0, 0, 0);
    }
    /* exp: the SIMD lanes == the scalar twin, within 2 ulp of expf over softmax's and SiLU's
     * ranges, clamped (finite, >= 0) beyond them */
    float e[N];
    for (int i = 0; i < N; i++) e[i] = 100.f * frand();
    e[0] = -1e30f;
    e[1] = 1e30f;
    e[2] = 0.f;
    for (int64_t n = 0; n <= 70; n += 7) {
        exp_array(y0, e, n);
        exp_array_ref(y1, e, n);
        check(memcmp(y0, y1, (size_t)n * sizeof(float)) == 0, "exp_array == exp_array_ref", n, 0,
              0, 0, 0);
    }
    exp_array(y0, e, N - 1); /* a scalar tail on every ISA */
    int near = y0[2] == 1.f && y0[0] >= 0.f && y0[1] > 1e38f && isfinite(y0[1]);
    for (int i = 3; i < N - 1; i++)
        if (e[i] > -87.f && e[i] < 88.f) near &= fabs(y0[i] - (double)expf(e[i])) <= 2.5e-7 * expf(e[i]);
    check(near, "exp_array near expf", N, 0, 0, 0, 0);
    for (int bits = 2; bits <= 8; bits *= 2)
        for (int64_t begin = 0; begin <= 48; begin += 8 / bits * 8)
            for (int64_t end = begin; end <= 200; end += 8) {
                unpack_codes(y0, codes, bits, begin, end);
                unpack_codes_ref(y1, codes, bits, begin, end);
                check(memcmp(y0, y1, (size_t)(end - begin) * sizeof(float)) == 0,
                      "unpack_codes == unpack_codes_ref", end - begin, begin, bits, 0, 0);
            }
}

int main(void) {
    vec_case();
    static const int64_t q8_shapes[][2] = {{1, 1}, {3, 31}, {7, 32}, {33, 70}, {100, 576}};
    for (size_t i = 0; i < sizeof q8_shapes / sizeof q8_shapes[0]; i++)
        q8_case(q8_shapes[i][0], q8_shapes[i][1], 1 + (int64_t)(rnd() % 3));
    // 300 rows: 10 tiles, the last partial, so a thread's run of 4-10 goes in pairs of tiles
    static const int64_t shapes[][2] = {{1, 4}, {7, 33}, {31, 100}, {32, 64}, {33, 129},
                                        {96, 576}, {65, 1000}, {128, 130}, {300, 257}};
    // 12: an odd number of 4-column chunks per group (AVX-512 pairs chunks for 2 planes)
    // 16: llama.cpp's Q2_K / Q3_K / Q6_K sub-blocks; uniform 5 and 6 bits: Q5_* / Q6_K imported
    static const int groups[] = {32, 64, 128, 8, 12, 16};
    for (int fmt = 0; fmt < 2; fmt++)
        for (int bits = fmt ? 2 : 1; bits <= (fmt ? 4 : EDGERT_MAX_BITS); bits++)
            for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
                for (size_t gi = 0; gi < sizeof groups / sizeof groups[0]; gi++)
                    one_case(shapes[si][0], shapes[si][1], bits, groups[gi], fmt,
                             1 + (int64_t)(rnd() % 3), 1 + (int)(rnd() % 3));
    // many rows of codes wider than this build's int8 kernel sums exactly: the LUT path
    for (int bits = edgert_i8_max_bits() + 1; bits <= EDGERT_MAX_BITS; bits++)
        one_case(96, 576, bits, 32, 0, EDGERT_I8_MIN_ROWS + 4, 2);
    /* the int8 path: odd row counts (the kernels' remainders), partial tiles, k not a multiple
     * of the group, groups of 8 chunks and more (the AVX2 kernel's 16-bit sums) */
    static const int64_t i8_shapes[][3] = {{7, 33, 9}, {33, 129, 13}, {96, 576, 64},
                                           {65, 1000, 70}, {300, 257, 8}};
    for (int bits = 1; bits <= edgert_i8_max_bits(); bits++)
        for (size_t si = 0; si < sizeof i8_shapes / sizeof i8_shapes[0]; si++)
            for (size_t gi = 0; gi < sizeof groups / sizeof groups[0]; gi++)
                i8_case(i8_shapes[si][0], i8_shapes[si][1], bits, groups[gi], i8_shapes[si][2],
                        1 + (int)(rnd() % 3));
    forward_case(0, 0);
    forward_case(1, 0);
    forward_case(1, 1);
    static const int64_t bundle_shapes[][3] = {{100, 1, 2}, {100, 1, 37}, {576, 1, 300},
                                               {72, 3, 37}, {33, 2, 9}};
    for (int bits = 2; bits <= 8; bits *= 2)
        for (size_t i = 0; i < sizeof bundle_shapes / sizeof bundle_shapes[0]; i++)
            for (int64_t dg = 16; dg <= 32; dg *= 2) /* down groups of 16 and 32 neurons */
                bundle_case(bits, bundle_shapes[i][0], bundle_shapes[i][1], bundle_shapes[i][2], dg);
    printf("isa %s (int8 %s)\n%d passed, %d failed\n", edgert_kernels_isa(), edgert_i8_kernel(), passes, failures);
    return failures != 0;
}
