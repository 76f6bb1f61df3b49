/* runtime.h: where this rank runs. Hardware topology (the cores mpirun bound the process to and
 * their NUMA node), NUMA-local anonymous memory, and a persistent thread pool with one pinned
 * compute thread per core.
 *
 * Contract:
 * - tern_topo owns the hwloc topology; src/runtime/topology.c is the only hwloc user. After
 *   tern_topo_discover() it is read-only: every tern_topo_* function may be called from any
 *   thread concurrently. It must outlive every pool and allocation made from it.
 * - tern_topo_alloc() returns page-aligned, zero-filled anonymous memory placed on the local NUMA
 *   node (interleaved over the nodes when the binding spans several): the weights live there
 *   (DESIGN.md section 3). tern_topo_reserve() maps the same kind untouched, for the KV pool,
 *   whose pages are placed by the first touch of the rank's bound threads and count in RSS only
 *   once used. Free either with tern_topo_free_mem() and the same size.
 * - tern_pool owns n_threads - 1 worker threads; the thread that created it is worker 0 and is
 *   pinned as well (its previous binding is restored by tern_pool_free() when called from that
 *   same thread). tern_pool_run() is called by one thread at a time, normally the creator, and
 *   must not be called from inside a task (that would deadlock; it aborts instead). Tasks of one
 *   run execute concurrently on different threads.
 * - Environment: TERN_THREADS=<n> sets the pool size when the caller passes n_threads <= 0
 *   (default: one thread per core of the binding). TERN_SPIN_US=<us> sets how long idle threads
 *   spin before sleeping in the kernel (default 100; spinning is off when threads outnumber the
 *   cores, where it would only steal time from the thread being waited for).
 */
#ifndef TERNPIPE_RUNTIME_H
#define TERNPIPE_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#include "ternpipe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- topology ---- */

typedef struct tern_topo tern_topo;

/* Discovers the cores this process may use (its CPU binding as mpirun --bind-to/--map-by left
 * it, or the whole machine when unbound) and the NUMA node(s) they belong to. */
tern_code tern_topo_discover(tern_topo **out, tern_status *st);
void tern_topo_free(tern_topo *t);

/* Physical cores in the binding (at least 1). Hyperthread siblings count once. */
int tern_topo_n_cores(const tern_topo *t);
/* OS index of the local NUMA node, or -1 when the binding spans several nodes. A machine
 * without NUMA information reports node 0. */
int tern_topo_numa_node(const tern_topo *t);
/* One line for --verbose: host, cores (OS indexes of the PUs the threads use), NUMA node(s)
 * and their memory. Always NUL-terminated (truncated to cap). */
void tern_topo_describe(const tern_topo *t, char *buf, size_t cap);
/* Pins the calling thread to core core_index (0 <= core_index < n_cores). */
tern_code tern_topo_bind_thread(const tern_topo *t, int core_index, tern_status *st);

/* Zero-filled anonymous memory bound to the local NUMA node, every page already touched so it
 * is really placed (and the first token does not pay the page faults). t may be NULL (no
 * placement). bytes == 0 is allowed. NULL on failure. */
void *tern_topo_alloc(const tern_topo *t, size_t bytes);
/* Zero-filled anonymous memory, untouched (each page is placed by its first writer, and counts
 * in RSS from then on), advised to huge pages as tern_topo_alloc's. bytes == 0 is allowed.
 * NULL on failure. */
void *tern_topo_reserve(size_t bytes);
/* Releases memory from tern_topo_alloc() or tern_topo_reserve(); bytes must be the size passed
 * there. NULL is a no-op. */
void tern_topo_free_mem(const tern_topo *t, void *p, size_t bytes);

/* ---- thread pool ---- */

typedef struct tern_pool tern_pool;

/* One task of a run. `thread` (0..size-1) is for per-thread scratch only: results must depend on
 * `task` alone, since which thread runs which task varies from run to run. */
typedef void (*tern_pool_fn)(void *ctx, int task, int n_tasks, int thread);

/* n_threads <= 0: $TERN_THREADS if set, else one per core of topo. Thread i is pinned to core
 * i % n_cores (topo may be NULL: no pinning). The calling thread becomes worker 0. */
tern_code tern_pool_create(tern_pool **out, const tern_topo *topo, int n_threads, tern_status *st);
/* Stops and joins the workers. NULL is a no-op. */
void tern_pool_free(tern_pool *p);
int tern_pool_size(const tern_pool *p);

/* Runs fn for tasks 0..n_tasks-1 spread over the pool's threads (the caller takes part) and
 * returns when all are done, with their writes visible to the caller. No allocation. Each thread
 * first takes the tasks of its own contiguous share (so repeated runs touch the same rows from
 * the same core) and then helps with the others' remaining tasks. */
void tern_pool_run(tern_pool *p, tern_pool_fn fn, void *ctx, int n_tasks);

/* Range [*r0, *r1) of whole rows for task `task` of `n_tasks`: the ranges of tasks 0..n_tasks-1
 * are contiguous, cover [0, n_rows) exactly, differ in size by at most one granule, and every
 * boundary except n_rows itself is a multiple of granularity (<= 0 counts as 1). A task may get
 * an empty range. */
void tern_split_rows(int64_t n_rows, int64_t granularity, int task, int n_tasks, int64_t *r0,
                     int64_t *r1);

#ifdef __cplusplus
}
#endif
#endif
