/* LUT GEMM / GEMV for bit-plane weights and 8-bit rows: the entry points of edgert_kernels.h.
 * They check and split the work (tables per activation row, tiles of 32 output rows over the
 * thread pool) and call the tile kernels of this build's ISA file (lut_neon.c, lut_x86.c, or the
 * scalar lut_ref.c) or, for the _ref entry points, the scalar twins. */
#include <stdatomic.h>
#include <stdlib.h>

#include "lut_internal.h"

/* ---- GEMM ---------------------------------------------------------------------------------- */
/* a family of weights (lut_internal.h) sharing the activation tables */
typedef struct {
    family_t w;
    int64_t n;
    const uint8_t *tbl;  // [n][k4][32]
    const float *ts, *xs;  // [n][groups]
    const shape_t *s;
    tile_fn tile;
    pair_fn pair;    // set: a thread's tiles go two at a time (EDGERT_PAIR_MIN_TILES)
    const float *x;  // set (a few rows): every thread builds the tables of x itself
    table_fn build;
} gemm_ctx;

typedef struct {
    const float *x;
    const shape_t *s;
    uint8_t *tbl;
    float *ts, *xs;
    table_fn build;
} tables_ctx;

static void tables_range(void *vctx, int64_t begin, int64_t end) {
    tables_ctx *c = vctx;
    const shape_t *s = c->s;
    for (int64_t i = begin; i < end; i++)
        c->build(c->x + i * s->k, s, c->tbl + i * s->k4 * 32, c->ts + i * s->groups,
                 c->xs + i * s->groups);
}

/* a few rows' tables are built by every thread for itself: no thread waits for another's part,
 * and no table is read across cores (2-bit 4096x4096 at 2 threads, in rounds taking turns with
 * fp32 BLAS: 12.5-13.0x -> 13.4-13.5x its speed when the two cores have their own memory links,
 * equal (12.0-12.2x) when they share one). Each thread keeps its buffer for the next call: at most
 * (FEW_ROWS - 1) x (k / 4 x 32 + 8 x groups) bytes. */
#define FEW_ROWS 8
/* y_j[i, 32t ..] = the tile's output rows that exist */
static inline void put_rows(const gemm_ctx *c, int j, int64_t t, int64_t i, const float *buf) {
    const int64_t m = c->w.m[j], rows = m - t * T < T ? m - t * T : T;
    memcpy(c->w.y[j] + i * m + t * T, buf, (size_t)rows * sizeof(float));
}

static void gemm_range(void *vctx, int64_t begin, int64_t end) {
    gemm_ctx *c = vctx;
    const shape_t *s = c->s;
    if (c->x) {  // this thread's own tables: tbl [n][k4][32], then ts, xs [n][groups]
        const size_t tbytes = (size_t)(c->n * s->k4 * 32);
        const size_t bytes = tbytes + 2 * (size_t)(c->n * s->groups) * sizeof(float);
        uint8_t *tbl = edgert_thread_scratch(EDGERT_SCRATCH_TABLES, bytes);
        float *ts = (float *)(tbl + tbytes), *xs = ts + c->n * s->groups;
        tables_ctx tc = {c->x, s, tbl, ts, xs, c->build};
        tables_range(&tc, 0, c->n);
        gemm_ctx own = *c;
        own.x = NULL;
        own.tbl = tbl;
        own.ts = ts;
        own.xs = xs;
        gemm_range(&own, begin, end);
        return;
    }
    float buf[2][T];
    float *const ys[2] = {buf[0], buf[1]};
    const int two = c->pair && end - begin >= EDGERT_PAIR_MIN_TILES;
    const int64_t half = two ? (end - begin + 1) / 2 : end - begin;
    int64_t nb = EDGERT_TABLE_BLOCK_BYTES / (s->k4 * 32);
    if (nb < 1) nb = 1;
    for (int64_t i0 = 0; i0 < c->n; i0 += nb) {
        const int64_t i1 = i0 + nb < c->n ? i0 + nb : c->n;
        for (int64_t p = 0; p < half; p++) {
            const int64_t g[2] = {begin + p, begin + half + p};
            const int u = two && g[1] < end ? 2 : 1;
            int j[2];
            int64_t t[2];
            const uint8_t *pl[2];
            const uint16_t *sc[2], *zr[2];
            for (int v = 0; v < u; v++) {
                locate(&c->w, g[v], &j[v], &t[v]);
                pl[v] = c->w.planes[j[v]];
                sc[v] = c->w.scale[j[v]];
                zr[v] = c->w.zero[j[v]];
            }
            for (int64_t i = i0; i < i1; i++) {
                const uint8_t *tbl = c->tbl + i * s->k4 * 32;
                const float *ts = c->ts + i * s->groups, *xs = c->xs + i * s->groups;
                if (u == 2)
                    c->pair(ys, t, pl, sc, zr, tbl, ts, xs, s);
                else
                    c->tile(buf[0], t[0], pl[0], sc[0], zr[0], tbl, ts, xs, s);
                for (int v = 0; v < u; v++) put_rows(c, j[v], t[v], i, buf[v]);
            }
        }
    }
}

/* tables of n activation rows x (n, k) -> tbl [n][k4][32], ts, xs [n][groups], split by rows */
static uint8_t *make_tables(const float *x, int64_t n, const shape_t *s, int threads,
                            table_fn build, float **ts, float **xs) {
    uint8_t *tbl = malloc((size_t)(n * s->k4 * 32));
    *ts = malloc((size_t)(n * s->groups) * sizeof(float));
    *xs = malloc((size_t)(n * s->groups) * sizeof(float));
    if (!tbl || !*ts || !*xs) abort();
    tables_ctx c = {x, s, tbl, *ts, *xs, build};
    edgert_parallel_for(n, threads, tables_range, &c);
    return tbl;
}

// count weights W_j (m_j, k) b-bit planes, x (n, k) -> y_j (n, m_j)
static void gemm_impl(int count, float *const *y, const float *x, int64_t n, const int64_t *m,
                      int64_t k, const uint8_t *const *planes, const uint16_t *const *scale,
                      const uint16_t *const *zero, int32_t bits, int32_t group, int32_t fmt,
                      int32_t threads, tile_fn tile, pair_fn (*pairs)(const shape_t *),
                      table_fn build) {
    shape_t s;
    EDGERT_CHECK(x && n >= 0);
    if (!make_shape(&s, k, bits, group, fmt)) abort();  // validated by the caller
    gemm_ctx c = {.n = n, .s = &s, .tile = tile};
    const int64_t tiles = make_family(&c.w, count, y, m, planes, scale, zero);
    if (n == 0 || tiles == 0) return;
    if (EDGERT_I8_FAST && s.fmt == EDGERT_FMT_UNIFORM && bits <= edgert_i8_max_bits() &&
        n >= EDGERT_I8_MIN_ROWS) {
        /* many rows: int8 dot products on unpacked tiles (i8_gemm.c); the _ref entry point takes
         * the scalar twin of the same path */
        edgert_i8_gemm_impl(&c.w, x, n, &s, threads, tile == edgert_tile_fast);
        return;
    }
    float *ts = NULL, *xs = NULL;
    uint8_t *tbl = NULL;
    if (n < FEW_ROWS) {  // every thread builds its own tables (see FEW_ROWS); tiles in pairs
        c.x = x;
        c.build = build;
        c.pair = pairs ? pairs(&s) : NULL;
    } else {
        tbl = make_tables(x, n, &s, threads, build, &ts, &xs);
        c.tbl = tbl;
        c.ts = ts;
        c.xs = xs;
    }
    /* one run of tiles per thread: every new run restarts the weight stream and its prefetch
     * (2-bit 4096x4096 at 2 threads, in rounds taking turns with fp32 BLAS: 11.9-12.1x its speed
     * with four runs per thread, 12.1-12.7x with one; SmolLM2 decode at 2 threads +7%) */
    edgert_parallel_chunks(tiles, threads, 1, gemm_range, &c);
    free(tbl);
    free(ts);
    free(xs);
}

void edgert_lut_gemm(float *y, const float *x, int64_t n, int64_t m, int64_t k,
                     const uint8_t *planes, const uint16_t *scale, const uint16_t *zero,
                     int32_t bits, int32_t group, int32_t fmt, int32_t threads) {
    gemm_impl(1, &y, x, n, &m, k, &planes, &scale, &zero, bits, group, fmt, threads,
              edgert_tile_fast, edgert_pair_of, edgert_build_tables_fast);
}

void edgert_lut_gemm_multi(int32_t count, float *const *y, const float *x, int64_t n,
                           const int64_t *m, int64_t k, const uint8_t *const *planes,
                           const uint16_t *const *scale, const uint16_t *const *zero,
                           int32_t bits, int32_t group, int32_t fmt, int32_t threads) {
    gemm_impl(count, y, x, n, m, k, planes, scale, zero, bits, group, fmt, threads,
              edgert_tile_fast, edgert_pair_of, edgert_build_tables_fast);
}

void edgert_lut_gemm_ref(float *y, const float *x, int64_t n, int64_t m, int64_t k,
                         const uint8_t *planes, const uint16_t *scale, const uint16_t *zero,
                         int32_t bits, int32_t group, int32_t fmt, int32_t threads) {
    gemm_impl(1, &y, x, n, &m, k, &planes, &scale, &zero, bits, group, fmt, threads,
              edgert_tile_ref, NULL, edgert_build_tables_ref);
}

/* ---- row-subset GEMV: only the tiles holding selected rows are computed ------------------- */
typedef struct {
    float *out;          // [ntiles][32]
    const int64_t *tiles;  // tile indices
    const uint8_t *planes, *tbl;
    const uint16_t *scale, *zero;
    const float *ts, *xs;
    const shape_t *s;
    tile_fn tile;
} rows_ctx;

static void rows_range(void *vctx, int64_t begin, int64_t end) {
    rows_ctx *c = vctx;
    for (int64_t i = begin; i < end; i++)
        c->tile(c->out + i * T, c->tiles[i], c->planes, c->scale, c->zero, c->tbl, c->ts, c->xs,
                c->s);
}

// W (m, k) b-bit planes, x (k,), rows (r,) in [0, m) -> y (r,) = (W x)[rows]
static void gemv_rows_impl(float *y, const float *x, int64_t m, int64_t k, const int32_t *rows,
                           int64_t r, const uint8_t *planes, const uint16_t *scale,
                           const uint16_t *zero, int32_t bits, int32_t group, int32_t fmt,
                           int32_t threads, tile_fn tile, table_fn build) {
    shape_t s;
    EDGERT_CHECK(y && x && rows && planes && scale && zero && r >= 0);
    if (!make_shape(&s, k, bits, group, fmt)) abort();
    if (r == 0) return;
    float *ts, *xs;
    uint8_t *tbl = make_tables(x, 1, &s, 1, build, &ts, &xs);
    /* distinct tiles in order of first use (runs of rows in one tile share it) */
    int64_t *tiles = malloc((size_t)r * sizeof(int64_t)), *slot = malloc((size_t)r * sizeof(int64_t));
    if (!tiles || !slot) abort();
    int64_t nt = 0;
    for (int64_t i = 0; i < r; i++) {
        EDGERT_CHECK(rows[i] >= 0 && rows[i] < m);
        const int64_t t = rows[i] / T;
        if (nt == 0 || tiles[nt - 1] != t) tiles[nt++] = t;
        slot[i] = (nt - 1) * T + rows[i] % T;
    }
    float *out = malloc((size_t)(nt * T) * sizeof(float));
    if (!out) abort();
    rows_ctx c = {out, tiles, planes, tbl, scale, zero, ts, xs, &s, tile};
    edgert_parallel_for(nt, threads, rows_range, &c);
    for (int64_t i = 0; i < r; i++) y[i] = out[slot[i]];
    free(out);
    free(slot);
    free(tiles);
    free(tbl);
    free(ts);
    free(xs);
}

void edgert_lut_gemv_rows(float *y, const float *x, int64_t m, int64_t k, const int32_t *rows,
                          int64_t r, const uint8_t *planes, const uint16_t *scale,
                          const uint16_t *zero, int32_t bits, int32_t group, int32_t fmt,
                          int32_t threads) {
    gemv_rows_impl(y, x, m, k, rows, r, planes, scale, zero, bits, group, fmt, threads,
                   edgert_tile_fast, edgert_build_tables_fast);
}

void edgert_lut_gemv_rows_ref(float *y, const float *x, int64_t m, int64_t k,
                              const int32_t *rows, int64_t r, const uint8_t *planes,
                              const uint16_t *scale, const uint16_t *zero, int32_t bits,
                              int32_t group, int32_t fmt, int32_t threads) {
    (void)threads;
    gemv_rows_impl(y, x, m, k, rows, r, planes, scale, zero, bits, group, fmt, 1,
                   edgert_tile_ref, edgert_build_tables_ref);
}

/* ---- 8-bit rows (token embeddings / output head): y (n, m) = x (n, k) . dequant(q)^T ------- */
/* q int8 [m][kpad], scale float [m][kpad/32]: w = q * scale of its 32-column block.
 * Each activation row is rounded once to int16 with one scale (xq = rint(x * 32767 / max|x|),
 * ~15 bits), so a block's 32 products sum exactly in int32 (|sum| <= 32 * 127 * 32767 < 2^31):
 *   y = xscale * sum_b float(sum_i q_i xq_i) * scale_b
 * The SIMD paths keep 8 (AVX2) or 4 (NEON) float partial sums across blocks, so they differ from
 * the _ref twin's block-order sum only in float rounding (relative 1e-6). */
// x (k,) -> xq (kpad,) int16 (zero padded); returns the scale
static float q8_activations(int16_t *xq, const float *x, int64_t k, int64_t kpad) {
    float amax = 0.f;
    for (int64_t i = 0; i < k; i++) amax = fmaxf(amax, fabsf(x[i]));
    const float inv = amax > 0.f ? 32767.f / amax : 0.f;
    for (int64_t i = 0; i < k; i++) {
        float v = rintf(x[i] * inv);
        v = v > 32767.f ? 32767.f : v < -32767.f ? -32767.f : v;
        xq[i] = (int16_t)v;
    }
    for (int64_t i = k; i < kpad; i++) xq[i] = 0;
    return amax / 32767.f;
}

static int16_t *q8_prepare(const float *x, int64_t n, int64_t k, int64_t kpad, float **xscale) {
    int16_t *xq = malloc((size_t)(n * kpad) * sizeof(int16_t));
    *xscale = malloc((size_t)n * sizeof(float));
    if (!xq || !*xscale) abort();
    for (int64_t i = 0; i < n; i++) (*xscale)[i] = q8_activations(xq + i * kpad, x + i * k, k, kpad);
    return xq;
}

void edgert_q8_gemm(float *y, const float *x, int64_t n, int64_t m, int64_t k, const int8_t *q,
                    const float *scale, int32_t threads) {
    EDGERT_CHECK(y && x && q && scale && k > 0);
    const int64_t kpad = (k + 31) / 32 * 32;
    float *xs;
    int16_t *xq = q8_prepare(x, n, k, kpad, &xs);
    q8_ctx c = {y, xq, xs, n, m, kpad, q, scale};
    /* split in row pairs so every worker's chunk keeps the two-row path */
    edgert_parallel_for(m, threads, edgert_q8_range_fast, &c);
    free(xq);
    free(xs);
}

void edgert_q8_gemm_ref(float *y, const float *x, int64_t n, int64_t m, int64_t k,
                        const int8_t *q, const float *scale, int32_t threads) {
    (void)threads;
    const int64_t kpad = (k + 31) / 32 * 32;
    float *xs;
    int16_t *xq = q8_prepare(x, n, k, kpad, &xs);
    for (int64_t r = 0; r < m; r++)
        for (int64_t i = 0; i < n; i++)
            y[i * m + r] = q8_row_ref(xq + i * kpad, q + r * kpad, scale + r * (kpad / 32), kpad) *
                           xs[i];
    free(xq);
    free(xs);
}

/* ---- memory read bandwidth probe ----------------------------------------------------------- */
/* reads p[0, n) once with `threads` workers (wide loads, independent accumulators, so the loop is
 * bound by memory, not by adds) and returns a checksum of what it read */
typedef struct {
    const uint8_t *p;
    int64_t n;
    _Atomic uint64_t sum;
} read_ctx;

#define READ_BLOCK 4096

static void read_range(void *vctx, int64_t begin, int64_t end) {
    read_ctx *c = vctx;
    uint64_t s = 0;
    for (int64_t b = begin; b < end; b++) {
        const int64_t lo = b * READ_BLOCK, hi = lo + READ_BLOCK < c->n ? lo + READ_BLOCK : c->n;
        s += edgert_read_block(c->p, lo, hi);
    }
    atomic_fetch_add(&c->sum, s);
}

uint64_t edgert_read_bytes(const uint8_t *p, int64_t n, int32_t threads) {
    read_ctx c = {p, n, 0};
    if (n > 0) edgert_parallel_for((n + READ_BLOCK - 1) / READ_BLOCK, threads, read_range, &c);
    return atomic_load(&c.sum);
}
