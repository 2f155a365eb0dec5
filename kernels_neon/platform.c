/* What the library needs of the C library and the OS, in one place, written so that it links
 * against any of them: glibc (boards, this host), bionic (Android phones) and musl. It uses
 * only functions all three export under the same names and calling conventions, and no value
 * that only a C library's headers know (sysconf's _SC_ numbers differ between glibc and bionic;
 * libc's assert calls glibc's __assert_fail or bionic's __assert2). No thread-local storage
 * either: bionic's loader has no ELF TLS before Android 10, so per-thread buffers hang off
 * pthread keys. */
#define _GNU_SOURCE /* sched_getaffinity, cpu_set_t */
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#if defined(__aarch64__)
#include <sys/auxv.h>
#endif

#include "lut_internal.h"

void edgert_check_failed(const char *what) {
    static const char head[] = "edgert kernels: check failed: ";
    /* the result of write is of no use here: the process aborts either way */
    if (write(2, head, sizeof head - 1) < 0 || write(2, what, strlen(what)) < 0 ||
        write(2, "\n", 1) < 0)
        abort();
    abort();
}

int edgert_cpu_count(void) {
    /* the CPUs this process may run on (a pin to a phone's big cores, taskset, a cgroup's
     * cpuset), counted from the affinity mask's bytes: CPU_COUNT is a glibc function call */
    cpu_set_t set;
    memset(&set, 0, sizeof set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
    const unsigned char *b = (const unsigned char *)&set;
    int n = 0;
    for (size_t i = 0; i < sizeof set; i++) n += __builtin_popcount(b[i]);
    return n > 0 ? n : 1;
}

/* ---- per-thread scratch ---------------------------------------------------------------- */
typedef struct {
    void *p;
    size_t bytes;
} scratch_t;

static pthread_key_t scratch_key[EDGERT_SCRATCH_SLOTS];
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_free(void *v) {
    scratch_t *s = v;
    free(s->p);
    free(s);
}

static void scratch_init(void) {
    for (int i = 0; i < EDGERT_SCRATCH_SLOTS; i++)
        if (pthread_key_create(&scratch_key[i], scratch_free) != 0) abort();
}

void *edgert_thread_scratch(int slot, size_t bytes) {
    pthread_once(&scratch_once, scratch_init);
    scratch_t *s = pthread_getspecific(scratch_key[slot]);
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s || pthread_setspecific(scratch_key[slot], s) != 0) abort();
    }
    if (s->bytes < bytes) {
        free(s->p);
        s->p = NULL;
        /* posix_memalign, not aligned_alloc: bionic has the latter from Android 9 only */
        if (posix_memalign(&s->p, 64, (bytes + 63) / 64 * 64) != 0) abort();
        s->bytes = bytes;
    }
    return s->p;
}

/* ---- the CPU features this build's code needs ------------------------------------------ */
void edgert_cpu_needs(uint64_t need[2]) {
    /* what the compiler flags let the code use (the tile kernels' levels above the build's
     * baseline are chosen at load, i8_gemm.c, and are not counted), as AT_HWCAP / AT_HWCAP2
     * bits (Linux arch/arm64/include/uapi/asm/hwcap.h); the runtime compares them with
     * getauxval before it calls anything else */
    uint64_t h = 0, h2 = 0;
#if defined(__aarch64__)
    h |= 1ull << 0 | 1ull << 1; /* fp, asimd */
#if defined(__ARM_FEATURE_CRC32)
    h |= 1ull << 7;
#endif
#if defined(__ARM_FEATURE_ATOMICS)
    h |= 1ull << 8;
#endif
#if defined(__ARM_FEATURE_FP16_SCALAR_ARITHMETIC)
    h |= 1ull << 9;
#endif
#if defined(__ARM_FEATURE_FP16_VECTOR_ARITHMETIC)
    h |= 1ull << 10;
#endif
#if defined(__ARM_FEATURE_QRDMX)
    h |= 1ull << 12;
#endif
#if defined(__ARM_FEATURE_DOTPROD)
    h |= 1ull << 20;
#endif
#if defined(__ARM_FEATURE_SVE)
    h |= 1ull << 22;
#endif
#if defined(__ARM_FEATURE_SVE2)
    h2 |= 1ull << 1;
#endif
#if defined(__ARM_FEATURE_MATMUL_INT8)
    h2 |= 1ull << 13;
#endif
#endif
    need[0] = h;
    need[1] = h2;
}

void edgert_cpu_have(uint64_t have[2]) {
#if defined(__aarch64__)
    have[0] = getauxval(AT_HWCAP);
    have[1] = getauxval(AT_HWCAP2);
#else
    have[0] = have[1] = 0;
#endif
}
