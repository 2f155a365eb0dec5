/* A small persistent thread pool: every kernel and the forward pass split their work over it
 * (see lut_internal.h). One job runs at a time; the caller takes chunks too; helpers that have
 * not woken when the work is done are not waited for. Results never depend on the thread
 * count: work is split by output rows or items, never inside a sum. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "lut_internal.h"

enum { MAX_THREADS = 64 };
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int nworkers;
    atomic_ullong generation;  // bumped (under mu) for every job
    range_fn fn;
    void *ctx;
    int64_t n, chunk;
    atomic_llong next;
    atomic_int busy;  // workers that may still be running chunks of the current job
    int active;       // workers allowed to join the current job
    int started;      // workers that joined it
} pool = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static void run_chunks(void) {
    for (;;) {
        int64_t b = atomic_fetch_add(&pool.next, pool.chunk);
        if (b >= pool.n) break;
        int64_t e = b + pool.chunk < pool.n ? b + pool.chunk : pool.n;
        pool.fn(pool.ctx, b, e);
    }
}

static inline void cpu_relax(void) {
#if defined(__aarch64__)
    __asm__ __volatile__("yield");
#elif defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec * 1e-3;
}

static void *worker(void *arg) {
    (void)arg;
    uint64_t seen = 0;
    for (;;) {
        const double t0 = now_us();
        for (int i = 1; atomic_load_explicit(&pool.generation, memory_order_acquire) == seen; i++) {
            cpu_relax();
            if (!(i & 63) && now_us() - t0 > EDGERT_SPIN_US) break;
        }
        pthread_mutex_lock(&pool.mu);
        while (pool.generation == seen) pthread_cond_wait(&pool.cv, &pool.mu);
        seen = pool.generation;
        int take = pool.started < pool.active;
        if (take) pool.started++;
        pthread_mutex_unlock(&pool.mu);
        if (take) {
            run_chunks();
            atomic_fetch_sub(&pool.busy, 1);
        }
    }
    return NULL;
}

static int default_threads(void) {
    static int n = 0;
    if (!n) {
        const char *e = getenv("EDGERT_THREADS");
        n = e && atoi(e) > 0 ? atoi(e) : edgert_cpu_count();
        if (n < 1) n = 1;
        if (n > MAX_THREADS) n = MAX_THREADS;
    }
    return n;
}

int edgert_threads(int threads) {
    if (threads <= 0) threads = default_threads();
    return threads > MAX_THREADS ? MAX_THREADS : threads;
}

static pthread_mutex_t job_mu = PTHREAD_MUTEX_INITIALIZER;

/* n items in chunks of n / (per_thread x threads), taken in turn by whichever thread is free */
void edgert_parallel_chunks(int64_t n, int threads, int per_thread, range_fn fn, void *ctx) {
    threads = edgert_threads(threads);
    if (threads > n) threads = (int)n;
    if (threads <= 1) {
        fn(ctx, 0, n);
        return;
    }
    pthread_mutex_lock(&job_mu);  // one job at a time through the pool
    pthread_mutex_lock(&pool.mu);
    while (pool.nworkers < threads - 1) {
        pthread_t th;
        if (pthread_create(&th, NULL, worker, NULL) != 0) break;
        pthread_detach(th);
        pool.nworkers++;
    }
    int helpers = threads - 1 < pool.nworkers ? threads - 1 : pool.nworkers;
    pool.fn = fn;
    pool.ctx = ctx;
    pool.n = n;
    pool.chunk = (n + (int64_t)per_thread * threads - 1) / ((int64_t)per_thread * threads);
    atomic_store(&pool.next, 0);
    atomic_store(&pool.busy, helpers);
    pool.active = helpers;
    pool.started = 0;
    pool.generation++;
    pthread_cond_broadcast(&pool.cv);
    pthread_mutex_unlock(&pool.mu);
    run_chunks();
    /* close the job: helpers that have not woken yet (a busy machine) are not waited for */
    pthread_mutex_lock(&pool.mu);
    atomic_fetch_sub(&pool.busy, pool.active - pool.started);
    pool.active = pool.started;
    pthread_mutex_unlock(&pool.mu);
    while (atomic_load(&pool.busy) > 0) sched_yield();
    pthread_mutex_unlock(&job_mu);
}

void edgert_parallel_for(int64_t n, int threads, range_fn fn, void *ctx) {
    edgert_parallel_chunks(n, threads, 4, fn, ctx);
}
