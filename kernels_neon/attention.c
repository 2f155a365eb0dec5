/* Attention over the KV cache (edgert_forward.h's edgert_attention), for the C forward pass.
 * Results do not depend on the thread count: work is split by tokens and by fixed chunks of keys,
 * combined in a fixed order. */
#include "attn_vec.h"
#include "edgert_forward.h"
#include "tuning.h"

/* ---- attention over the cache ---------------------------------------------------------------- */
/* A token's keys are taken in chunks of ATTN_CHUNK positions. A chunk gives each head the largest
 * of its scores m, l = sum of e = exp(score - m) and o = sum of (e / l) v, the chunk's own softmax;
 * a token's chunks are then combined in order (M = the largest m, out = sum e^(m - M) l o / sum
 * e^(m - M) l; with one chunk, o: the softmax of the whole row, in the same operations). The
 * chunking depends neither on the threads nor on how many tokens a call takes: an item is a token
 * (its chunks one after another) or, where a call has few tokens (decode), a (token, chunk) pair
 * (so that long contexts spread over the threads), with the same results bit for bit. Within a
 * chunk keys and values are read in blocks of ATTN_BLOCK positions, KV head by KV head, each row
 * loaded once for all of that KV head's query heads (attn_vec.h), float16 and q8 rows converted
 * in registers (q4 rows and grouped q4 keys dequantized into a buffer first). The next block's
 * rows (all KV heads) are asked into L2 before a block is used, and each KV head's rows into L1
 * ATTN_AHEAD rows before they are used. SmolLM2 at 2048 tokens of context, 1 thread, on a 2-core AMD EPYC:
 * float16 cache 63 -> 78 tok/s, q8 59 -> 73, float32 60 -> 60 (the block into L1 alone, the
 * earlier scheme: 58 -> 65 from none for float32; the block into L1 with rows ahead into L1, or
 * rows ahead alone, measured slower for float32). q8 rows converted in registers rather than
 * dequantized into a buffer, on a 2-core Intel Xeon: 59 -> 68 tok/s (medians of 3 in turns;
 * float16 70 there). */
#define ATTN_CHUNK 256
#define ATTN_BLOCK 64
#define ATTN_AHEAD 8 /* rows read from the cache: asked into L1 this many rows ahead */
#define ATTN_SPLIT_TOKENS 8 /* calls with up to this many tokens: an item per (token, chunk) */

typedef struct {
    const edgert_model *m;
    const float *q;  /* (n, heads, hd) */
    float *out;      /* (n, heads, hd) */
    const uint8_t *kc, *vc; /* this layer's cache: position t at kc + (t % cap) * k_stride */
    int64_t k_stride, v_stride, cap;
    const uint16_t *k_tail; /* grouped keys: the incomplete group's float16 rows */
    const float *k_new;     /* grouped keys: the call's own keys, (n, kv heads, hd) */
    int64_t pos;
    int32_t window;
    int64_t chunks; /* the most chunks a token of the call has */
    float *part;    /* split calls: (n, chunks, heads, hd + 2) partials; else NULL */
} attn_ctx;

/* rows of the types attn_vec.h reads where they are (float, float16, q8: converted in
 * registers); q4 rows and grouped q4 keys are dequantized into a buffer first */
#define KV_IN_PLACE(type) ((type) <= EDGERT_KV_Q8)
/* keys the cache holds by channel over groups of positions (edgert_forward.h) */
#define KEYS_GROUPED(type) ((type) == EDGERT_KV_Q4)
/* the types whose blocks the cache holds rotated (edgert_forward.h): q8 keys, q8 and q4 values */
#define KEYS_ROTATED(type) ((type) == EDGERT_KV_Q8)
#define VALUES_ROTATED(type) ((type) >= EDGERT_KV_Q8)

/* `len` cache rows from ring row r (of cap) of KV head values off .. off + hd, as attn_vec.h's
 * rows (*base, *rb, *r0, *rcap; *kind): the cache's own rows where attn_vec.h reads its type,
 * else the rows dequantized into buf (len x hd floats, not a ring), each asked into L1
 * ATTN_AHEAD rows before. Returns how many rows ahead the caller asks rows into L1 as it reads
 * them: ATTN_AHEAD for the cache's own rows, 0 for buf (there already). */
static int64_t kv_rows(int32_t type, const uint8_t *cache, int64_t row_bytes, int64_t r,
                       int64_t cap, int64_t len, int64_t off, int64_t hd, float *buf,
                       const uint8_t **base, int64_t *rb, int64_t *r0, int64_t *rcap, int *kind) {
    if (KV_IN_PLACE(type)) {
        *kind = type;
        *base = cache + KV_BYTES(type, off);
        *rb = row_bytes;
        *r0 = r;
        *rcap = cap;
        return ATTN_AHEAD;
    }
    const int64_t first = edgert_kv_row_bytes(type, off), bytes = edgert_kv_row_bytes(type, hd);
    for (int64_t u = 0; u < len; u++, r = RING_NEXT(r, cap)) {
        ring_prefetch(cache + first, row_bytes, r + ATTN_AHEAD, cap, bytes);
        edgert_kv_load(type, buf + u * hd, cache + r * row_bytes, off, hd);
    }
    *base = (const uint8_t *)buf;
    *rb = hd * (int64_t)sizeof(float);
    *r0 = 0;
    *rcap = len;
    *kind = EDGERT_KV_F32;
    return 0;
}

/* grouped keys of positions t .. t + len - 1, KV head g, as token i sees them, into buf (len, hd):
 * the groups complete at the token's position dequantized, the later positions' float16 values
 * (the tail's for positions before the call, the call's own keys rounded to float16) */
static void key_rows(const attn_ctx *c, int64_t i, int64_t t, int64_t len, int g, float *buf) {
    const int64_t hd = c->m->head_dim, kd = (int64_t)c->m->n_kv_heads * hd;
    const int64_t G = EDGERT_KV_KEY_GROUP, done = (c->pos + i + 1) / G * G;
    for (int64_t u = 0; u < len;) {
        const int64_t p = t + u, u0 = p % G;
        float *o = buf + u * hd;
        if (p < done) { /* the rest of its group, or of the block */
            const int64_t count = G - u0 < len - u ? G - u0 : len - u;
            edgert_kv_key_load(o, c->kc + (p - u0) % c->cap * c->k_stride, g, hd, u0, count);
            u += count;
            continue;
        }
        if (p < c->pos) {
            h2f_row(o, c->k_tail + u0 * kd + g * hd, hd);
        } else {
            const float *k = c->k_new + (p - c->pos) * kd + g * hd;
            for (int64_t j = 0; j < hd; j++) o[j] = h2f(f2h(k[j]));
        }
        u++;
    }
}

/* asks for `len` ring rows from row r (of cap), row_bytes each (every KV head), to be brought
 * into L2 (the rows are then asked into L1 a few at a time, ATTN_AHEAD before they are used) */
static void kv_prefetch(const uint8_t *cache, int64_t row_bytes, int64_t r, int64_t cap,
                        int64_t len) {
    for (int64_t u = 0; u < len; u++, r = RING_NEXT(r, cap))
        for (int64_t b = 0; b < row_bytes; b += 64)
            __builtin_prefetch(cache + r * row_bytes + b, 0, 1);
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
        for (int g = 0; g < kv; g++) { /* the block's keys scored for the group's heads */
            const uint8_t *kb = (const uint8_t *)kbuf;
            int64_t rb = hd * (int64_t)sizeof(float), r = 0, kcap = b1 - b0, pf = 0;
            int kind = EDGERT_KV_F32;
            if (KEYS_GROUPED(m->k_type))
                key_rows(c, i, t0 + c0 + b0, b1 - b0, g, kbuf);
            else
                pf = kv_rows(m->k_type, c->kc, c->k_stride, (r0 + b0) % c->cap, c->cap, b1 - b0,
                             (int64_t)g * hd, hd, kbuf, &kb, &rb, &r, &kcap, &kind);
            dot_group(s + (int64_t)g * group * ATTN_CHUNK + b0, ATTN_CHUNK,
                      c->q + (i * nh + g * group) * hd, group, kb, rb, r, kcap, b1 - b0, hd, kind,
                      pf);
        }
    }
    const float scale = (float)sqrt((double)hd), mul = m->attn_scale;
    for (int h = 0; h < nh; h++) {
        float *sh = s + (int64_t)h * ATTN_CHUNK, *ph = part + (int64_t)h * (hd + 2);
        const float mx = scale_max(sh, len, mul, scale);
        sub_scalar(sh, sh, mx, len);
        exp_array(sh, sh, len);
        float sum = 0.f; /* in order: a token with one chunk gets a whole row's softmax */
        for (int64_t u = 0; u < len; u++) sum += sh[u];
        for (int64_t u = 0; u < len; u++) sh[u] /= sum;
        ph[0] = mx;
        ph[1] = sum;
    }
    for (int64_t b0 = 0; b0 < len; b0 += ATTN_BLOCK) {
        const int64_t bl = len - b0 < ATTN_BLOCK ? len - b0 : ATTN_BLOCK;
        if (b0 + bl < len)
            kv_prefetch(c->vc, c->v_stride, (r0 + b0 + bl) % c->cap, c->cap,
                        len - b0 - bl < ATTN_BLOCK ? len - b0 - bl : ATTN_BLOCK);
        for (int g = 0; g < kv; g++) {
            const uint8_t *vb;
            int64_t rb, r, vcap;
            int kind;
            const int64_t pf = kv_rows(m->v_type, c->vc, c->v_stride, (r0 + b0) % c->cap,
                                       c->cap, bl, (int64_t)g * hd, hd, vbuf, &vb, &rb, &r, &vcap,
                                       &kind);
            weighted_group_acc(part + (int64_t)g * group * (hd + 2) + 2, hd + 2,
                               s + (int64_t)g * group * ATTN_CHUNK + b0, ATTN_CHUNK, group, vb,
                               rb, r, vcap, bl, hd, b0 == 0, kind, pf);
        }
    }
}

/* token i's output (heads, hd) from its chunks' partials, chunk ch of head h at
 * part + (ch * heads + h) * (hd + 2): a single chunk's o as it is, else sum over chunks of
 * e^(m - M) l o / sum of e^(m - M) l (M: the largest m) */
static void attn_combine(const attn_ctx *c, int64_t i, const float *part) {
    const int hd = c->m->head_dim, nh = c->m->n_heads;
    int64_t t0;
    const int64_t chunks = (attn_span(c, i, &t0) + ATTN_CHUNK - 1) / ATTN_CHUNK;
    for (int h = 0; h < nh; h++) {
        float *o = c->out + (i * nh + h) * hd, mx = -INFINITY, total = 0.f;
        if (chunks == 1) {
            memcpy(o, part + (int64_t)h * (hd + 2) + 2, (size_t)hd * sizeof(float));
            continue;
        }
        for (int64_t ch = 0; ch < chunks; ch++) {
            const float mc = part[(ch * nh + h) * (hd + 2)];
            mx = mc > mx ? mc : mx;
        }
        for (int64_t ch = 0; ch < chunks; ch++) {
            const float *ph = part + (ch * nh + h) * (hd + 2);
            total += exp_one(ph[0] - mx) * ph[1];
        }
        memset(o, 0, (size_t)hd * sizeof(float));
        for (int64_t ch = 0; ch < chunks; ch++) {
            const float *ph = part + (ch * nh + h) * (hd + 2);
            axpy(o, exp_one(ph[0] - mx) * ph[1] / total, ph + 2, hd);
        }
    }
}

/* items: tokens (part NULL) or (token, chunk) pairs (their partials into c->part) */
static void attn_items(void *vctx, int64_t begin, int64_t end) {
    attn_ctx *c = vctx;
    const edgert_model *m = c->m;
    const int64_t hd = m->head_dim, nh = m->n_heads;
    const int deq = !KV_IN_PLACE(m->k_type) || !KV_IN_PLACE(m->v_type); /* q4 */
    const int64_t own = c->part ? 0 : c->chunks * nh * (hd + 2); /* a token's partials */
    const int64_t floats = nh * ATTN_CHUNK + (deq ? 2 * ATTN_BLOCK * hd : 0) + own;
    float *p = edgert_thread_scratch(EDGERT_SCRATCH_ATTN, (size_t)floats * sizeof(float));
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
}

int64_t edgert_attention_parts(const edgert_model *m, int64_t n, int64_t pos) {
    const int64_t chunks = (pos + n + ATTN_CHUNK - 1) / ATTN_CHUNK;
    return n <= ATTN_SPLIT_TOKENS ? n * chunks * m->n_heads * (m->head_dim + 2) : 0;
}

void edgert_attention(const edgert_model *m, float *q, float *out, int64_t n, int64_t pos,
                      const uint8_t *kc, const uint8_t *vc, int64_t k_stride, int64_t v_stride,
                      int64_t cap, int32_t window, const uint16_t *k_tail, const float *k_new,
                      float *part, int32_t threads) {
    const int64_t hd = m->head_dim;
    if (KEYS_ROTATED(m->k_type)) /* keys held rotated: q . k = rotated q . rotated k */
        edgert_kv_rotate(q, n * m->n_heads * hd);
    const int64_t span = window && window < pos + n ? window : pos + n;
    const int64_t work = n * m->n_heads * span * hd;
    const int att_threads = work >= EDGERT_PARALLEL_MIN_WORK ? edgert_threads(threads) : 1;
    const int64_t chunks = (span + ATTN_CHUNK - 1) / ATTN_CHUNK;
    const int split = n <= ATTN_SPLIT_TOKENS && chunks > 1;
    attn_ctx ac = {m, q, out, kc, vc, k_stride, v_stride, cap, k_tail, k_new, pos, window,
                   chunks, split ? part : NULL};
    edgert_parallel_for(split ? n * chunks : n, att_threads, attn_items, &ac);
    for (int64_t i = 0; split && i < n; i++)
        attn_combine(&ac, i, part + i * chunks * m->n_heads * (hd + 2));
    if (VALUES_ROTATED(m->v_type)) /* a sum of rotated values, rotated back */
        edgert_kv_rotate(out, n * m->n_heads * hd);
}
