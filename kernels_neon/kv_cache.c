/* The KV cache's row formats (edgert_forward.h: EDGERT_KV_*): a position's keys or values stored
 * in a row, and read back from one. */
#include "edgert_forward.h"
#include "vec.h"

int64_t edgert_kv_row_bytes(int32_t type, int64_t n) {
    if (n < 0) return -1;
    switch (type) {
    case EDGERT_KV_F32: return n * 4;
    case EDGERT_KV_F16: return n * 2;
    case EDGERT_KV_Q8: return n % EDGERT_KV_BLOCK ? -1 : n / EDGERT_KV_BLOCK * 34;
    case EDGERT_KV_Q4: return n % EDGERT_KV_BLOCK ? -1 : n / EDGERT_KV_BLOCK * 20;
    default: return -1;
    }
}

/* grouped Q4 keys: bytes of one KV head's part of a group */
#define KEY_HEAD_BYTES(hd) (4 * (hd) + EDGERT_KV_KEY_GROUP * (hd) / 2)

int64_t edgert_kv_key_row_bytes(int32_t type, int64_t n) {
    if (type != EDGERT_KV_Q4) return edgert_kv_row_bytes(type, n);
    return n < 0 || n % EDGERT_KV_BLOCK ? -1 : n / 2 + 4 * n / EDGERT_KV_KEY_GROUP;
}

/* Each block of EDGERT_KV_BLOCK values of x (n a multiple of it) replaced by its orthonormal
 * Walsh-Hadamard transform: butterflies (a, b) -> (a + b, a - b) over pairs 1, 2, 4, 8 and 16
 * apart, then times 1 / sqrt(32). In this order in edgert.format.kvcache too (bit for bit). */
void edgert_kv_rotate(float *x, int64_t n) {
    const float s = (float)(1.0 / sqrt((double)EDGERT_KV_BLOCK));
    for (int64_t b = 0; b < n; b += EDGERT_KV_BLOCK) {
        float *y = x + b;
        for (int h = 1; h < EDGERT_KV_BLOCK; h *= 2)
            for (int i = 0; i < EDGERT_KV_BLOCK; i += 2 * h)
                for (int j = i; j < i + h; j++) {
                    const float a = y[j], c = y[j + h];
                    y[j] = a + c;
                    y[j + h] = a - c;
                }
        for (int j = 0; j < EDGERT_KV_BLOCK; j++) y[j] *= s;
    }
}

/* Q4's parameters for values in [lo, hi]: scale d = (hi - lo) / 15 and minimum m = lo as float16,
 * and as the codes use them (m0, 1 / d; 0 for a constant range) */
typedef struct {
    uint16_t dh, mh;
    float m0, id;
} q4_range;

static inline q4_range q4_range_of(float lo, float hi) {
    q4_range r = {f2h((hi - lo) / 15.f), f2h(lo), 0.f, 0.f};
    const float d = h2f(r.dh);
    r.m0 = h2f(r.mh);
    r.id = d != 0.f ? 1.f / d : 0.f;
    return r;
}

/* x's 4-bit code: (x - m) / d rounded to nearest, ties to even, clamped to 0 .. 15 */
static inline int q4_code(q4_range r, float x) {
    const float q = round_even((x - r.m0) * r.id);
    return q > 15.f ? 15 : q < 0.f ? 0 : (int)q;
}

/* row = the n values x (n a multiple of the block for the quantized types, whose blocks are
 * rotated first) */
void edgert_kv_store(int32_t type, uint8_t *row, const float *x, int64_t n) {
    float rot[EDGERT_KV_BLOCK];
    if (type == EDGERT_KV_F32) {
        memcpy(row, x, (size_t)n * sizeof(float));
    } else if (type == EDGERT_KV_F16) {
        for (int64_t i = 0; i < n; i++) {
            const uint16_t h = f2h(x[i]);
            memcpy(row + 2 * i, &h, 2);
        }
    } else if (type == EDGERT_KV_Q8) {
        for (int64_t b = 0; b < n; b += EDGERT_KV_BLOCK, row += 34) {
            memcpy(rot, x + b, sizeof(rot));
            edgert_kv_rotate(rot, EDGERT_KV_BLOCK);
            float amax = 0.f;
            for (int j = 0; j < EDGERT_KV_BLOCK; j++) {
                const float a = fabsf(rot[j]);
                if (a > amax) amax = a;
            }
            const uint16_t dh = f2h(amax / 127.f);
            const float d = h2f(dh), id = d != 0.f ? 1.f / d : 0.f;
            memcpy(row, &dh, 2);
            for (int j = 0; j < EDGERT_KV_BLOCK; j++) {
                float q = round_even(rot[j] * id);
                q = q > 127.f ? 127.f : q < -127.f ? -127.f : q;
                row[2 + j] = (uint8_t)(int8_t)q;
            }
        }
    } else { /* EDGERT_KV_Q4 */
        for (int64_t b = 0; b < n; b += EDGERT_KV_BLOCK, row += 20) {
            memcpy(rot, x + b, sizeof(rot));
            edgert_kv_rotate(rot, EDGERT_KV_BLOCK);
            float lo = rot[0], hi = rot[0];
            for (int j = 1; j < EDGERT_KV_BLOCK; j++) {
                if (rot[j] < lo) lo = rot[j];
                if (rot[j] > hi) hi = rot[j];
            }
            const q4_range r = q4_range_of(lo, hi);
            memcpy(row, &r.dh, 2);
            memcpy(row + 2, &r.mh, 2);
            for (int j = 0; j < EDGERT_KV_BLOCK / 2; j++)
                row[4 + j] = (uint8_t)(q4_code(r, rot[2 * j]) | q4_code(r, rot[2 * j + 1]) << 4);
        }
    }
}

/* out (n,) = values off .. off + n of a row of a quantized or float16 type (off and n multiples
 * of the block): a quantized type's values as stored, that is rotated */
void edgert_kv_load(int32_t type, float *out, const uint8_t *row, int64_t off, int64_t n) {
    if (type == EDGERT_KV_F16) {
        h2f_row(out, (const uint16_t *)(row + 2 * off), n);
    } else if (type == EDGERT_KV_Q8) {
        const uint8_t *b = row + off / EDGERT_KV_BLOCK * 34;
        for (int64_t i = 0; i < n; i += EDGERT_KV_BLOCK, b += 34) {
            uint16_t dh;
            memcpy(&dh, b, 2);
            const float d = h2f(dh);
            const int8_t *q = (const int8_t *)(b + 2);
            for (int j = 0; j < EDGERT_KV_BLOCK; j++) out[i + j] = d * (float)q[j];
        }
    } else { /* EDGERT_KV_Q4 */
        const uint8_t *b = row + off / EDGERT_KV_BLOCK * 20;
        for (int64_t i = 0; i < n; i += EDGERT_KV_BLOCK, b += 20) {
            uint16_t dh, mh;
            memcpy(&dh, b, 2);
            memcpy(&mh, b + 2, 2);
            const float d = h2f(dh), m0 = h2f(mh);
            for (int j = 0; j < EDGERT_KV_BLOCK / 2; j++) {
                out[i + 2 * j] = d * (float)(b[4 + j] & 15) + m0;
                out[i + 2 * j + 1] = d * (float)(b[4 + j] >> 4) + m0;
            }
        }
    }
}

/* value j of position t's keys: from the tail (t before pos) or k, rounded to float16 */
static inline float key_f16(const uint16_t *tail, const float *k, int64_t t, int64_t pos, int64_t n,
                            int64_t j) {
    return t < pos ? h2f(tail[t % EDGERT_KV_KEY_GROUP * n + j]) : h2f(f2h(k[(t - pos) * n + j]));
}

void edgert_kv_key_groups(uint8_t *kc, int64_t stride, int64_t cap, const uint16_t *tail,
                          const float *k, int64_t count, int64_t pos, int64_t heads, int64_t hd) {
    const int64_t G = EDGERT_KV_KEY_GROUP, n = heads * hd;
    float x[EDGERT_KV_KEY_GROUP];
    for (int64_t g = pos / G; g < (pos + count) / G; g++) { /* the groups ending in this call */
        uint8_t *base = kc + (g * G % cap) * stride;
        for (int64_t h = 0; h < heads; h++) {
            uint8_t *hb = base + h * KEY_HEAD_BYTES(hd), *codes = hb + 4 * hd;
            for (int64_t c = 0; c < hd; c++) {
                float lo = INFINITY, hi = -INFINITY;
                for (int64_t u = 0; u < G; u++) {
                    x[u] = key_f16(tail, k, g * G + u, pos, n, h * hd + c);
                    lo = x[u] < lo ? x[u] : lo;
                    hi = x[u] > hi ? x[u] : hi;
                }
                const q4_range r = q4_range_of(lo, hi);
                memcpy(hb + 2 * c, &r.dh, 2);
                memcpy(hb + 2 * (hd + c), &r.mh, 2);
                for (int64_t u = 0; u < G; u++) {
                    const int q = q4_code(r, x[u]);
                    uint8_t *b = codes + u * (hd / 2) + c / 2;
                    *b = c % 2 ? (uint8_t)(*b | q << 4) : (uint8_t)q; /* low nibble first */
                }
            }
        }
    }
}

void edgert_kv_key_tail(uint16_t *tail, const float *k, int64_t count, int64_t pos, int64_t n) {
    const int64_t G = EDGERT_KV_KEY_GROUP, t1 = pos + count;
    for (int64_t t = t1 / G * G > pos ? t1 / G * G : pos; t < t1; t++)
        for (int64_t j = 0; j < n; j++) tail[t % G * n + j] = f2h(k[(t - pos) * n + j]);
}

void edgert_kv_key_load(float *out, const uint8_t *group, int64_t h, int64_t hd, int64_t u0,
                        int64_t count) {
    const uint8_t *hb = group + h * KEY_HEAD_BYTES(hd), *codes = hb + 4 * hd + u0 * (hd / 2);
    float d[hd], m0[hd];
    h2f_row(d, (const uint16_t *)hb, hd);
    h2f_row(m0, (const uint16_t *)(hb + 2 * hd), hd);
    for (int64_t u = 0; u < count; u++, codes += hd / 2, out += hd)
        for (int64_t j = 0; j < hd / 2; j++) {
            out[2 * j] = d[2 * j] * (float)(codes[j] & 15) + m0[2 * j];
            out[2 * j + 1] = d[2 * j + 1] * (float)(codes[j] >> 4) + m0[2 * j + 1];
        }
}
