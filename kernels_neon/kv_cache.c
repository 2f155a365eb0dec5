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

/* row = the n values x (n a multiple of the block for the quantized types) */
void edgert_kv_store(int32_t type, uint8_t *row, const float *x, int64_t n) {
    if (type == EDGERT_KV_F32) {
        memcpy(row, x, (size_t)n * sizeof(float));
    } else if (type == EDGERT_KV_F16) {
        for (int64_t i = 0; i < n; i++) {
            const uint16_t h = f2h(x[i]);
            memcpy(row + 2 * i, &h, 2);
        }
    } else if (type == EDGERT_KV_Q8) {
        for (int64_t b = 0; b < n; b += EDGERT_KV_BLOCK, row += 34) {
            float amax = 0.f;
            for (int j = 0; j < EDGERT_KV_BLOCK; j++) {
                const float a = fabsf(x[b + j]);
                if (a > amax) amax = a;
            }
            const uint16_t dh = f2h(amax / 127.f);
            const float d = h2f(dh), id = d != 0.f ? 1.f / d : 0.f;
            memcpy(row, &dh, 2);
            for (int j = 0; j < EDGERT_KV_BLOCK; j++) {
                float q = round_even(x[b + j] * id);
                q = q > 127.f ? 127.f : q < -127.f ? -127.f : q;
                row[2 + j] = (uint8_t)(int8_t)q;
            }
        }
    } else { /* EDGERT_KV_Q4 */
        for (int64_t b = 0; b < n; b += EDGERT_KV_BLOCK, row += 20) {
            float lo = x[b], hi = x[b];
            for (int j = 1; j < EDGERT_KV_BLOCK; j++) {
                if (x[b + j] < lo) lo = x[b + j];
                if (x[b + j] > hi) hi = x[b + j];
            }
            const uint16_t dh = f2h((hi - lo) / 15.f), mh = f2h(lo);
            const float d = h2f(dh), m0 = h2f(mh), id = d != 0.f ? 1.f / d : 0.f;
            memcpy(row, &dh, 2);
            memcpy(row + 2, &mh, 2);
            for (int j = 0; j < EDGERT_KV_BLOCK / 2; j++) {
                float q0 = round_even((x[b + 2 * j] - m0) * id);
                float q1 = round_even((x[b + 2 * j + 1] - m0) * id);
                q0 = q0 > 15.f ? 15.f : q0 < 0.f ? 0.f : q0;
                q1 = q1 > 15.f ? 15.f : q1 < 0.f ? 0.f : q1;
                row[4 + j] = (uint8_t)((int)q0 | ((int)q1 << 4));
            }
        }
    }
}

/* out (n,) = values off .. off + n of a row of a quantized or float16 type (off and n multiples
 * of the block) */
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
