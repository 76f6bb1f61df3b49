/* test_runtime.c: topology discovery, NUMA allocation, row splitting and the thread pool (every
 * task exactly once over many tiny runs, to catch races and lost wake-ups). */
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "ternpipe/rng.h"
#include "ternpipe/runtime.h"

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static tern_topo *g_topo;

static void test_topology(void)
{
    tern_status st = {0};
    CHECKF(tern_topo_discover(&g_topo, &st) == TERN_OK, "%s", st.msg);
    if (!g_topo) return;
    int n = tern_topo_n_cores(g_topo);
    CHECK(n >= 1);
    CHECK(tern_topo_numa_node(g_topo) >= -1);
    char line[512];
    tern_topo_describe(g_topo, line, sizeof line);
    CHECK(strlen(line) > 0);
    printf("topology: %s\n", line);
    char tiny[8];
    tern_topo_describe(g_topo, tiny, sizeof tiny);
    CHECK(strlen(tiny) == sizeof tiny - 1);

    CHECK(tern_topo_bind_thread(g_topo, -1, &st) == TERN_EINVAL);
    CHECK(tern_topo_bind_thread(g_topo, n, &st) == TERN_EINVAL);
    CHECKF(strstr(st.msg, "core index: got") != NULL, "%s", st.msg);
    /* pinning the main thread here would shrink what later discoveries see: put it back */
    cpu_set_t saved;
    int have_saved = sched_getaffinity(0, sizeof saved, &saved) == 0;
    tern_code rc = tern_topo_bind_thread(g_topo, n - 1, &st);
    CHECKF(rc == TERN_OK || rc == TERN_EUNSUPPORTED, "%s", st.msg);
    if (have_saved) sched_setaffinity(0, sizeof saved, &saved);
}

/* n fresh bytes at p: page-aligned, zero-filled, and they keep what is written */
static void check_fresh(unsigned char *p, size_t n, const char *what)
{
    CHECK(((uintptr_t)p & 4095) == 0);
    size_t nonzero = 0;
    for (size_t i = 0; i < n; i++) nonzero += p[i] != 0;
    CHECKF(nonzero == 0, "%s %zu: %zu nonzero bytes", what, n, nonzero);
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(i * 31 + 7);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += p[i] != (unsigned char)(i * 31 + 7);
    CHECK(bad == 0);
}

static void test_alloc(void)
{
    const size_t sizes[] = {0, 1, 100, 4095, 4096, 4097, 1 << 20, (5 << 20) + 123};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        for (int with_topo = 0; with_topo < 2; with_topo++) {
            const tern_topo *t = with_topo ? g_topo : NULL;
            size_t n = sizes[k];
            unsigned char *p = tern_topo_alloc(t, n);
            CHECKF(p != NULL, "alloc %zu", n);
            if (!p) continue;
            check_fresh(p, n, "alloc");
            tern_topo_free_mem(t, p, n);
        }
    }
    tern_topo_free_mem(g_topo, NULL, 123);
}

/* resident pages of this process (/proc/self/statm), or -1 */
static long resident_pages(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, res = -1;
    if (f) {
        if (fscanf(f, "%ld %ld", &size, &res) != 2) res = -1;
        fclose(f);
    }
    return res;
}

/* tern_topo_reserve: aligned, zero-filled, writable, and untouched: 64 MiB of it add nothing to
 * RSS until written, and about 64 MiB once every page is */
static void test_reserve(void)
{
    const size_t sizes[] = {1, 4097, (5 << 20) + 123};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t n = sizes[k];
        unsigned char *p = tern_topo_reserve(n);
        CHECKF(p != NULL, "reserve %zu", n);
        if (!p) continue;
        check_fresh(p, n, "reserve");
        tern_topo_free_mem(NULL, p, n);
    }
    const size_t big = (size_t)64 << 20;
    const long page = sysconf(_SC_PAGESIZE) > 0 ? sysconf(_SC_PAGESIZE) : 4096,
               r0 = resident_pages();
    unsigned char *p = tern_topo_reserve(big);
    CHECK(p != NULL);
    if (!p || r0 < 0) return;
    const long r1 = resident_pages();
    for (size_t i = 0; i < big; i += (size_t)page) p[i] = 1;
    const long r2 = resident_pages();
    CHECKF(r1 - r0 < (long)(big / 16) / page, "reserve: %ld pages resident before any write",
           r1 - r0);
    CHECKF(r2 - r1 >= (long)(big / 2) / page, "reserve: %ld pages resident after writing %zu MiB",
           r2 - r1, big >> 20);
    tern_topo_free_mem(NULL, p, big);
}

static void check_split(int64_t n, int64_t g, int tasks, int *fails)
{
    int64_t expect = 0, gg = g <= 0 ? 1 : g;
    int64_t min_blocks = INT64_MAX, max_blocks = 0;
    for (int t = 0; t < tasks; t++) {
        int64_t r0 = -1, r1 = -1;
        tern_split_rows(n, g, t, tasks, &r0, &r1);
        int ok = r0 == expect && r1 >= r0 && r1 <= n && (r0 == n || r0 % gg == 0) &&
                 (r1 == n || r1 % gg == 0);
        if (!ok && (*fails)++ < 5)
            fprintf(stderr, "split n=%lld g=%lld task %d/%d: [%lld,%lld) expected start %lld\n",
                    (long long)n, (long long)g, t, tasks, (long long)r0, (long long)r1,
                    (long long)expect);
        int64_t blocks = (r1 - r0 + gg - 1) / gg;
        if (blocks < min_blocks) min_blocks = blocks;
        if (blocks > max_blocks) max_blocks = blocks;
        expect = r1;
    }
    if ((expect != n || max_blocks - min_blocks > 1) && (*fails)++ < 5)
        fprintf(stderr, "split n=%lld g=%lld tasks %d: end %lld, blocks %lld..%lld\n", (long long)n,
                (long long)g, tasks, (long long)expect, (long long)min_blocks,
                (long long)max_blocks);
}

static void test_split_rows(void)
{
    const int64_t grans[] = {-3, 0, 1, 2, 3, 4, 7, 8, 16, 32, 64, 256};
    int fails = 0;
    for (int64_t n = 0; n <= 600; n++)
        for (size_t k = 0; k < sizeof grans / sizeof grans[0]; k++)
            for (int tasks = 1; tasks <= 17; tasks++) check_split(n, grans[k], tasks, &fails);
    const int64_t big[] = {(int64_t)1 << 40, ((int64_t)1 << 40) + 5, INT64_MAX / 2 + 3};
    for (size_t k = 0; k < 3; k++)
        for (int tasks = 1; tasks <= 64; tasks *= 2) {
            check_split(big[k], 1, tasks, &fails);
            check_split(big[k], 4096, tasks, &fails);
            check_split(big[k], 1000003, tasks + 1, &fails);
        }
    CHECKF(fails == 0, "%d bad splits", fails);
}

/* ---- pool ---- */

#define MAX_TASKS 64

typedef struct count_ctx {
    atomic_int hits[MAX_TASKS];
    atomic_int bad_thread;
    int n_threads;
} count_ctx;

static void count_task(void *vctx, int task, int n_tasks, int thread)
{
    count_ctx *c = vctx;
    if (task < 0 || task >= n_tasks || thread < 0 || thread >= c->n_threads)
        atomic_fetch_add(&c->bad_thread, 1);
    else
        atomic_fetch_add_explicit(&c->hits[task], 1, memory_order_relaxed);
}

/* Each task writes its own slot; the caller reads them right after run() returns. */
typedef struct fill_ctx {
    uint64_t *out;
    uint64_t salt;
    int spin;
} fill_ctx;

static void fill_task(void *vctx, int task, int n_tasks, int thread)
{
    fill_ctx *c = vctx;
    /* uneven task lengths make helpers take tasks from others' shares */
    volatile uint64_t x = (uint64_t)task;
    int iters = c->spin ? (int)((uint64_t)task * 2654435761u % 2000) : 0;
    for (int i = 0; i < iters; i++) x = x * 6364136223846793005ULL + 1;
    c->out[task] = c->salt * 1000003u + (uint64_t)task;
    (void)n_tasks;
    (void)thread;
}

static void test_pool_exactly_once(int n_threads, int runs)
{
    tern_status st = {0};
    tern_pool *pool = NULL;
    CHECKF(tern_pool_create(&pool, g_topo, n_threads, &st) == TERN_OK, "%s", st.msg);
    if (!pool) return;
    CHECK(tern_pool_size(pool) == n_threads);
    static count_ctx c;
    memset(&c, 0, sizeof c);
    c.n_threads = n_threads;
    long wrong = 0;
    tern_rng rng;
    tern_rng_seed(&rng, 42 + (uint64_t)n_threads);
    double t0 = now_us();
    for (int r = 0; r < runs; r++) {
        /* mostly around the thread count, sometimes fewer tasks than threads, sometimes many */
        int n_tasks = (int)tern_rng_below(&rng, 9);
        if (r % 97 == 0) n_tasks = MAX_TASKS;
        tern_pool_run(pool, count_task, &c, n_tasks);
        for (int t = 0; t < MAX_TASKS; t++) {
            int h = atomic_load_explicit(&c.hits[t], memory_order_relaxed);
            if (h != (t < n_tasks)) {
                if (wrong++ < 5)
                    fprintf(stderr, "run %d (%d threads, %d tasks): task %d ran %d times\n", r,
                            n_threads, n_tasks, t, h);
            }
            atomic_store_explicit(&c.hits[t], 0, memory_order_relaxed);
        }
    }
    double dt = now_us() - t0;
    CHECKF(wrong == 0, "%ld wrong task counts", wrong);
    CHECK(atomic_load(&c.bad_thread) == 0);

    /* results written by the tasks are visible on return, with uneven task lengths */
    enum { N = 257 };
    static uint64_t out[N];
    long stale = 0;
    for (int r = 0; r < 300; r++) {
        fill_ctx f = {out, (uint64_t)r, r % 3 == 0};
        int n_tasks = 1 + r % N;
        tern_pool_run(pool, fill_task, &f, n_tasks);
        for (int t = 0; t < n_tasks; t++) stale += out[t] != (uint64_t)r * 1000003u + (uint64_t)t;
    }
    CHECKF(stale == 0, "%ld stale results", stale);
    printf("pool %d threads: %d runs in %.0f ms\n", n_threads, runs, dt / 1e3);
    tern_pool_free(pool);
}

static void noop_task(void *ctx, int task, int n_tasks, int thread)
{
    (void)ctx;
    (void)task;
    (void)n_tasks;
    (void)thread;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Round trip of one run() with trivial tasks: the pool's own overhead. Printed, not checked:
 * the machine running the tests may be shared. */
static void measure_latency(int n_threads)
{
    tern_pool *pool = NULL;
    if (tern_pool_create(&pool, g_topo, n_threads, NULL) != TERN_OK) return;
    enum { RUNS = 20000 };
    static double lat[RUNS];
    for (int i = 0; i < 1000; i++) tern_pool_run(pool, noop_task, NULL, n_threads);
    for (int i = 0; i < RUNS; i++) {
        double t0 = now_us();
        tern_pool_run(pool, noop_task, NULL, n_threads);
        lat[i] = now_us() - t0;
    }
    qsort(lat, RUNS, sizeof lat[0], cmp_double);
    printf("pool %d threads: run() round trip median %.2f us, p90 %.2f us, p99 %.2f us\n",
           n_threads, lat[RUNS / 2], lat[RUNS * 9 / 10], lat[RUNS * 99 / 100]);
    tern_pool_free(pool);
}

static void test_pool_env(void)
{
    tern_status st = {0};
    tern_pool *pool = NULL;
    setenv("TERN_THREADS", "2", 1);
    CHECKF(tern_pool_create(&pool, g_topo, 0, &st) == TERN_OK, "%s", st.msg);
    CHECK(tern_pool_size(pool) == 2);
    tern_pool_free(pool);
    pool = NULL;
    /* an explicit count wins over the environment */
    CHECKF(tern_pool_create(&pool, g_topo, 3, &st) == TERN_OK, "%s", st.msg);
    CHECK(tern_pool_size(pool) == 3);
    tern_pool_free(pool);
    pool = NULL;
    setenv("TERN_THREADS", "two", 1);
    CHECK(tern_pool_create(&pool, g_topo, 0, &st) == TERN_EINVAL);
    CHECKF(strstr(st.msg, "TERN_THREADS: got 'two'") != NULL, "%s", st.msg);
    CHECK(pool == NULL);
    setenv("TERN_THREADS", "0", 1);
    CHECK(tern_pool_create(&pool, g_topo, 0, &st) == TERN_EINVAL);
    unsetenv("TERN_THREADS");
    CHECKF(tern_pool_create(&pool, g_topo, 0, &st) == TERN_OK, "%s", st.msg);
    CHECK(tern_pool_size(pool) == tern_topo_n_cores(g_topo));
    tern_pool_run(pool, noop_task, NULL, 5);
    tern_pool_free(pool);
    tern_pool_free(NULL);
    CHECK(tern_pool_size(NULL) == 1);

    /* no topology: unpinned, still correct */
    pool = NULL;
    CHECKF(tern_pool_create(&pool, NULL, 2, &st) == TERN_OK, "%s", st.msg);
    static count_ctx c;
    memset(&c, 0, sizeof c);
    c.n_threads = 2;
    tern_pool_run(pool, count_task, &c, 7);
    int total = 0;
    for (int t = 0; t < 7; t++) total += atomic_load(&c.hits[t]) == 1;
    CHECK(total == 7);
    tern_pool_free(pool);
}

/* The pool pins the creating thread and restores its binding when freed, so a later discovery
 * still sees every core of the process. */
static void test_binding_restored(void)
{
    tern_topo *again = NULL;
    CHECK(tern_topo_discover(&again, NULL) == TERN_OK);
    if (again) CHECK(tern_topo_n_cores(again) == tern_topo_n_cores(g_topo));
    tern_topo_free(again);
    tern_topo_free(NULL);
}

int main(void)
{
    test_topology();
    test_alloc();
    test_reserve();
    test_split_rows();
    int runs = 100000;
    const char *quick = getenv("TERN_TEST_QUICK");
    if (quick && *quick == '1') runs = 10000;
    for (int n = 1; n <= 3; n++) test_pool_exactly_once(n, runs);
    test_pool_exactly_once(tern_topo_n_cores(g_topo), runs / 10);
    test_pool_env();
    test_binding_restored();
    measure_latency(2);
    if (tern_topo_n_cores(g_topo) > 2) measure_latency(tern_topo_n_cores(g_topo));
    tern_topo_free(g_topo);
    return tern_test_finish("test_runtime");
}
