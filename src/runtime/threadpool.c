/* threadpool.c: persistent pool of pinned compute threads, built for many short runs (about ten
 * per layer per token, thousands per second), so a run's round trip is what matters.
 *
 * Protocol (one run):
 *   caller: writes fn/ctx/n_tasks and the per-thread task ranges, sets `active` to the number of
 *           workers, then bumps `gen` (the release that publishes the job) and wakes sleepers;
 *           runs its own share, then waits for `active` to reach 0 (acquire: the workers'
 *           results are visible).
 *   worker: waits for `gen` to change (spinning, then futex), runs its own range, then takes
 *           what is left in the other ranges, then decrements `active`; the last one wakes the
 *           caller if it went to sleep.
 * Sleeping on either side uses a Dekker-style handshake (sleepers / caller_sleeping flag, all
 * seq_cst) so a wake-up cannot be lost: either the sleeper sees the new value before
 * futex_wait, or the waker sees the flag and calls futex_wake; futex_wait re-checks the value
 * atomically in the kernel.
 * A job is never published while workers still read the previous one, because the caller only
 * returns after every worker has decremented `active`, and workers touch nothing after that.
 */
#include "ternpipe/runtime.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "ternpipe/log.h"

#define POOL_MAX_THREADS 1024
#define POOL_DEFAULT_SPIN_US 100
#define CACHE_LINE 64

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield" ::: "memory")
#else
#define cpu_relax() ((void)0)
#endif

/* The tasks of one thread's share; claimed with fetch_add by the owner and by helpers. One cache
 * line each so the owners' claims do not contend. */
typedef struct pool_range {
    _Alignas(CACHE_LINE) atomic_int next;
    int end;
} pool_range;

typedef struct pool_worker {
    struct tern_pool *pool;
    int index;
    int started;
    pthread_t thread;
    tern_code bind_rc;
} pool_worker;

struct tern_pool {
    /* the job: plain fields, published by the release on gen */
    tern_pool_fn fn;
    void *ctx;
    int n_tasks;

    _Alignas(CACHE_LINE) atomic_uint gen; /* futex word the workers wait on */
    atomic_int sleepers;                  /* workers in (or entering) futex_wait on gen */
    atomic_int stop;

    _Alignas(CACHE_LINE) atomic_uint active; /* workers not done with the job; caller's futex */
    atomic_int caller_sleeping;

    _Alignas(CACHE_LINE) atomic_int started; /* workers that have pinned themselves */
    atomic_int in_run;                       /* catches nested or concurrent runs */
    int n_threads;
    int64_t spin_ns; /* how long a waiting thread spins before sleeping in the kernel */
    const tern_topo *topo;
    pool_range *ranges;   /* [n_threads] */
    pool_worker *workers; /* [n_threads]; [0] is the caller */
    pthread_t owner;
    cpu_set_t saved_affinity; /* the creator's binding before it became worker 0 */
    int have_saved;
};

static long futex_wait(atomic_uint *addr, unsigned val)
{
    return syscall(SYS_futex, (unsigned *)addr, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void futex_wake(atomic_uint *addr, int n)
{
    syscall(SYS_futex, (unsigned *)addr, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Spins up to p->spin_ns while `pred` is false; returns whether it became true. The clock is
 * read every 64 iterations only: a pause is tens of cycles, a clock read about as much. */
#define SPIN_UNTIL(p, cond, result)                                                                \
    do {                                                                                           \
        (result) = 0;                                                                              \
        if ((p)->spin_ns <= 0) break;                                                              \
        int64_t deadline_ = now_ns() + (p)->spin_ns;                                               \
        for (unsigned it_ = 1;; it_++) {                                                           \
            if (cond) {                                                                            \
                (result) = 1;                                                                      \
                break;                                                                             \
            }                                                                                      \
            cpu_relax();                                                                           \
            if ((it_ & 63) == 0 && now_ns() > deadline_) break;                                    \
        }                                                                                          \
    } while (0)

/* Waits until gen differs from seen; returns the new value. */
static unsigned wait_new_job(struct tern_pool *p, unsigned seen)
{
    unsigned g = 0;
    int got;
    SPIN_UNTIL(p, (g = atomic_load_explicit(&p->gen, memory_order_acquire)) != seen, got);
    if (got) return g;
    for (;;) {
        atomic_fetch_add(&p->sleepers, 1);
        if (atomic_load(&p->gen) == seen) futex_wait(&p->gen, seen);
        atomic_fetch_sub(&p->sleepers, 1);
        g = atomic_load_explicit(&p->gen, memory_order_acquire);
        if (g != seen) return g;
    }
}

/* Own share first (locality: the same rows land on the same core run after run), then help
 * with whatever the others have not claimed yet (robust to a preempted or slower thread). */
static void run_tasks(struct tern_pool *p, int self)
{
    const int n = p->n_threads;
    tern_pool_fn fn = p->fn;
    void *ctx = p->ctx;
    const int n_tasks = p->n_tasks;
    for (int k = 0; k < n; k++) {
        pool_range *r = &p->ranges[(self + k) % n];
        for (;;) {
            int task = atomic_fetch_add_explicit(&r->next, 1, memory_order_relaxed);
            if (task >= r->end) break;
            fn(ctx, task, n_tasks, self);
        }
    }
}

static void *worker_main(void *arg)
{
    pool_worker *w = arg;
    struct tern_pool *p = w->pool;
    w->bind_rc = p->topo
                     ? tern_topo_bind_thread(p->topo, w->index % tern_topo_n_cores(p->topo), NULL)
                     : TERN_OK;
    atomic_fetch_add(&p->started, 1);
    unsigned seen = 0;
    for (;;) {
        seen = wait_new_job(p, seen);
        if (atomic_load_explicit(&p->stop, memory_order_acquire)) break;
        run_tasks(p, w->index);
        /* after this decrement the job may be replaced: touch nothing of it below */
        if (atomic_fetch_sub(&p->active, 1) == 1 && atomic_load(&p->caller_sleeping))
            futex_wake(&p->active, 1);
    }
    return NULL;
}

/* Outside input: the environment. */
static tern_code env_int(const char *name, long lo, long hi, long *out, tern_status *st)
{
    const char *s = getenv(name);
    if (!s || !*s) return TERN_OK;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return tern_status_set(st, TERN_EINVAL, "%s: got '%s', expected an integer %ld..%ld", name,
                               s, lo, hi);
    *out = v;
    return TERN_OK;
}

static int available_cpus(const tern_topo *topo)
{
    if (topo) return tern_topo_n_cores(topo);
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

void tern_pool_free(tern_pool *p)
{
    if (!p) return;
    atomic_store(&p->stop, 1);
    atomic_fetch_add(&p->gen, 1);
    futex_wake(&p->gen, INT_MAX);
    for (int i = 1; i < p->n_threads; i++)
        if (p->workers[i].started) pthread_join(p->workers[i].thread, NULL);
    if (p->have_saved && pthread_equal(pthread_self(), p->owner))
        pthread_setaffinity_np(p->owner, sizeof p->saved_affinity, &p->saved_affinity);
    free(p->ranges);
    free(p->workers);
    free(p);
}

tern_code tern_pool_create(tern_pool **out, const tern_topo *topo, int n_threads, tern_status *st)
{
    *out = NULL;
    tern_code rc;
    int cpus = available_cpus(topo);
    long n = n_threads;
    if (n <= 0) {
        n = cpus;
        if ((rc = env_int("TERN_THREADS", 1, POOL_MAX_THREADS, &n, st)) != TERN_OK) return rc;
    }
    if (n > POOL_MAX_THREADS)
        return tern_status_set(st, TERN_EINVAL, "threads: got %ld, expected 1..%d", n,
                               POOL_MAX_THREADS);
    long spin_us = POOL_DEFAULT_SPIN_US;
    if ((rc = env_int("TERN_SPIN_US", 0, 1000000, &spin_us, st)) != TERN_OK) return rc;

    struct tern_pool *p =
        aligned_alloc(CACHE_LINE, (sizeof *p + CACHE_LINE - 1) / CACHE_LINE * CACHE_LINE);
    if (!p) return tern_status_set(st, TERN_ENOMEM, "thread pool: out of memory");
    memset(p, 0, sizeof *p);
    p->n_threads = (int)n;
    p->topo = topo;
    /* with more threads than cores a spinning waiter only delays the thread it waits for */
    p->spin_ns = n > cpus ? 0 : (int64_t)spin_us * 1000;
    p->owner = pthread_self();
    p->ranges = aligned_alloc(CACHE_LINE, (size_t)n * sizeof *p->ranges);
    p->workers = calloc((size_t)n, sizeof *p->workers);
    if (!p->ranges || !p->workers) {
        rc = tern_status_set(st, TERN_ENOMEM, "thread pool: out of memory");
        goto fail;
    }
    memset(p->ranges, 0, (size_t)n * sizeof *p->ranges);
    if (n > cpus)
        tern_log(TERN_LOG_WARN, "thread pool: %ld threads on %d core%s; threads share cores", n,
                 cpus, cpus == 1 ? "" : "s");

    p->have_saved =
        pthread_getaffinity_np(p->owner, sizeof p->saved_affinity, &p->saved_affinity) == 0;
    p->workers[0].pool = p;
    p->workers[0].bind_rc = topo ? tern_topo_bind_thread(topo, 0, NULL) : TERN_OK;
    for (int i = 1; i < p->n_threads; i++) {
        pool_worker *w = &p->workers[i];
        w->pool = p;
        w->index = i;
        int err = pthread_create(&w->thread, NULL, worker_main, w);
        if (err) {
            rc = tern_status_set(st, TERN_ENOMEM, "thread pool: creating thread %d of %d: %s", i,
                                 p->n_threads, strerror(err));
            goto fail;
        }
        w->started = 1;
    }
    /* wait for the pins so a binding failure is reported once, here */
    while (atomic_load(&p->started) < p->n_threads - 1) sched_yield();
    int unbound = 0;
    for (int i = 0; i < p->n_threads; i++) unbound += p->workers[i].bind_rc != TERN_OK;
    if (unbound)
        tern_log(TERN_LOG_WARN,
                 "thread pool: %d of %d threads could not be pinned; running unpinned", unbound,
                 p->n_threads);
    *out = p;
    return TERN_OK;
fail:
    tern_pool_free(p);
    return rc;
}

int tern_pool_size(const tern_pool *p)
{
    return p ? p->n_threads : 1;
}

void tern_pool_run(tern_pool *p, tern_pool_fn fn, void *ctx, int n_tasks)
{
    if (n_tasks <= 0) return;
    if (!p || p->n_threads == 1 || n_tasks == 1) {
        /* nothing to share: skip the wake-up round trip */
        for (int i = 0; i < n_tasks; i++) fn(ctx, i, n_tasks, 0);
        return;
    }
    if (atomic_exchange_explicit(&p->in_run, 1, memory_order_acquire))
        tern_die("thread pool: tern_pool_run called from a task or from two threads at once");

    const int n = p->n_threads;
    p->fn = fn;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
    for (int i = 0; i < n; i++) {
        int64_t r0, r1;
        tern_split_rows(n_tasks, 1, i, n, &r0, &r1);
        atomic_store_explicit(&p->ranges[i].next, (int)r0, memory_order_relaxed);
        p->ranges[i].end = (int)r1;
    }
    atomic_store_explicit(&p->active, (unsigned)(n - 1), memory_order_relaxed);
    atomic_fetch_add(&p->gen, 1); /* seq_cst: publishes the job, pairs with sleepers below */
    if (atomic_load(&p->sleepers) > 0) futex_wake(&p->gen, INT_MAX);

    run_tasks(p, 0);

    int done;
    SPIN_UNTIL(p, atomic_load_explicit(&p->active, memory_order_acquire) == 0, done);
    if (!done) {
        atomic_store(&p->caller_sleeping, 1);
        for (;;) {
            unsigned a = atomic_load(&p->active);
            if (a == 0) break;
            futex_wait(&p->active, a);
        }
        atomic_store(&p->caller_sleeping, 0);
    }
    atomic_store_explicit(&p->in_run, 0, memory_order_release);
}

void tern_split_rows(int64_t n_rows, int64_t granularity, int task, int n_tasks, int64_t *r0,
                     int64_t *r1)
{
    TERN_ASSERT(n_rows >= 0 && n_tasks > 0 && task >= 0 && task < n_tasks);
    if (granularity <= 0) granularity = 1;
    /* split whole granules, the first `rem` tasks taking one more; no products, so no overflow */
    int64_t blocks = n_rows / granularity + (n_rows % granularity != 0);
    int64_t base = blocks / n_tasks, rem = blocks % n_tasks;
    int64_t b0 = task * base + (task < rem ? task : rem);
    int64_t b1 = b0 + base + (task < rem);
    int64_t lo = b0 >= blocks ? n_rows : b0 * granularity;
    int64_t hi = b1 >= blocks ? n_rows : b1 * granularity;
    *r0 = lo;
    *r1 = hi;
}
