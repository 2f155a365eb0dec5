/* Runs an artifact's lib/model.so without Python: dlopen, then edgert_forward over a "forward
 * image" (tests/device/test_android_lib.py writes it on the host: the model's structs and weights
 * in one file, pointers as offsets into it, the token embeddings and rotary tables of the
 * tokens). Prefill of the first n_prefill tokens in one call, then one token per call; every
 * position's logits go to OUT. Built against musl (not glibc) for the emulated arm64 device: a
 * library that needs glibc does not load here, as it would not on Android.
 *
 *   forward_image_driver LIB IMAGE OUT THREADS
 * prints "i8 <kernel>" (the int8 tile kernel the library picked for this CPU) and "ok". */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int (*forward_fn)(const void *m, float *x, int64_t n, int64_t pos, const float *cos,
                          const float *sin, int32_t last_only, float *logits, double *times,
                          int32_t threads);

enum { F_RELOCS, F_MODEL, F_X, F_COS, F_SIN, F_TOKENS, F_PREFILL, F_DIM, F_VOCAB, F_ROPES,
       F_HALF, F_DATA, F_COUNT };

static int fail(const char *what, const char *detail) {
    fprintf(stderr, "%s: %s\n", what, detail ? detail : "");
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 5) return fail("usage", "forward_image_driver LIB IMAGE OUT THREADS");
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) return fail("dlopen", dlerror());
    forward_fn forward = (forward_fn)dlsym(lib, "edgert_forward");
    const char *(*i8_kernel)(void) = (const char *(*)(void))dlsym(lib, "edgert_i8_kernel");
    if (!forward || !i8_kernel) return fail("dlsym", dlerror());

    FILE *f = fopen(argv[2], "rb");
    if (!f) return fail("open", argv[2]);
    char magic[8];
    uint64_t h[F_COUNT];
    if (fread(magic, 1, 8, f) != 8 || memcmp(magic, "EDGIMG01", 8) ||
        fread(h, 8, F_COUNT, f) != F_COUNT)
        return fail("image", "bad header");
    uint64_t *relocs = malloc(h[F_RELOCS] * 8 + 8);
    if (!relocs || fread(relocs, 8, h[F_RELOCS], f) != h[F_RELOCS]) return fail("image", "relocs");
    fseek(f, 0, SEEK_END);
    const long end = ftell(f);
    const uint64_t size = (uint64_t)end - h[F_DATA];
    uint8_t *base;
    if (posix_memalign((void **)&base, 64, size)) return fail("image", "out of memory");
    fseek(f, (long)h[F_DATA], SEEK_SET);
    if (fread(base, 1, size, f) != size) return fail("image", "short data");
    fclose(f);
    for (uint64_t i = 0; i < h[F_RELOCS]; i++) { /* offsets into the data -> addresses */
        uint64_t v;
        memcpy(&v, base + relocs[i], 8);
        v += (uint64_t)(uintptr_t)base;
        memcpy(base + relocs[i], &v, 8);
    }

    const int64_t n = (int64_t)h[F_TOKENS], pre = (int64_t)h[F_PREFILL], dim = (int64_t)h[F_DIM];
    const int64_t vocab = (int64_t)h[F_VOCAB], ropes = (int64_t)h[F_ROPES], half = (int64_t)h[F_HALF];
    float *x = (float *)(base + h[F_X]);
    const float *cos = (const float *)(base + h[F_COS]), *sin = (const float *)(base + h[F_SIN]);
    float *logits = malloc((size_t)(n * vocab) * sizeof(float));
    float *cs = malloc((size_t)(ropes * n * half + 1) * sizeof(float));
    float *sn = malloc((size_t)(ropes * n * half + 1) * sizeof(float));
    if (!logits || !cs || !sn) return fail("driver", "out of memory");
    const int threads = atoi(argv[4]);
    for (int64_t s = 0; s < n;) {
        const int64_t e = s == 0 ? pre : s + 1;
        /* the rotary tables of positions s .. e-1: (ropes, e - s, half) */
        for (int64_t r = 0; r < ropes; r++) {
            memcpy(cs + r * (e - s) * half, cos + (r * n + s) * half, (size_t)((e - s) * half) * 4);
            memcpy(sn + r * (e - s) * half, sin + (r * n + s) * half, (size_t)((e - s) * half) * 4);
        }
        const int rc = forward(base + h[F_MODEL], x + s * dim, e - s, s, cs, sn, 0,
                               logits + s * vocab, NULL, threads);
        if (rc) {
            fprintf(stderr, "edgert_forward returned %d at %lld\n", rc, (long long)s);
            return 1;
        }
        s = e;
    }
    FILE *o = fopen(argv[3], "wb");
    if (!o || fwrite(logits, sizeof(float), (size_t)(n * vocab), o) != (size_t)(n * vocab))
        return fail("write", argv[3]);
    fclose(o);
    printf("i8 %s\nok\n", i8_kernel());
    return 0;
}
