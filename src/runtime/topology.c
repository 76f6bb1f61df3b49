/* topology.c: the cores and NUMA node(s) this process was given, thread pinning, and NUMA-local
 * anonymous memory. The only file in the project that includes <hwloc.h> (DESIGN.md section 4).
 *
 * Invariants: after discovery the struct is read-only, so every function here may be called
 * from any thread; core_sets[i] holds exactly one PU, the one compute thread i is pinned to.
 */
#include "ternpipe/runtime.h"

#include <hwloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ternpipe/log.h"

struct tern_topo {
    hwloc_topology_t topo;
    hwloc_cpuset_t binding;    /* PUs the process may run on */
    hwloc_cpuset_t pus;        /* the one PU per core that threads are pinned to */
    hwloc_cpuset_t *core_sets; /* [n_cores] single-PU sets, in hwloc logical (locality) order */
    int n_cores;
    hwloc_nodeset_t nodeset; /* NUMA nodes local to the binding */
    int numa_node;           /* os index when the binding lies in one node, else -1 */
    uint64_t numa_bytes;     /* memory of the nodes in nodeset */
    hwloc_membind_policy_t policy;
    int membind_ok; /* the OS lets us place memory with that policy */
    int cpubind_ok; /* the OS lets us pin threads (not with synthetic/XML topologies) */
    int bound;      /* the binding came from the OS, not the whole-machine fallback */
    char host[64];
};

void tern_topo_free(tern_topo *t)
{
    if (!t) return;
    if (t->core_sets) {
        for (int i = 0; i < t->n_cores; i++) hwloc_bitmap_free(t->core_sets[i]);
        free(t->core_sets);
    }
    hwloc_bitmap_free(t->binding);
    hwloc_bitmap_free(t->pus);
    hwloc_bitmap_free(t->nodeset);
    if (t->topo) hwloc_topology_destroy(t->topo);
    free(t);
}

/* The process binding: the union over its threads, which is what mpirun set for the rank. Falls
 * back to every PU hwloc knows (unbound process, or a topology that is not this system). */
static void read_binding(tern_topo *t)
{
    hwloc_const_cpuset_t all = hwloc_topology_get_allowed_cpuset(t->topo);
    t->bound = hwloc_get_cpubind(t->topo, t->binding, HWLOC_CPUBIND_PROCESS) == 0;
    if (t->bound) hwloc_bitmap_and(t->binding, t->binding, all);
    if (!t->bound || hwloc_bitmap_iszero(t->binding)) {
        t->bound = 0;
        hwloc_bitmap_copy(t->binding, all);
    }
}

/* One entry per core that has at least one PU in the binding. Where hwloc found no cores (some
 * VMs and containers), the depth below is that of the PUs, so each PU counts as a core. */
static tern_code find_cores(tern_topo *t, tern_status *st)
{
    int depth = hwloc_get_type_or_below_depth(t->topo, HWLOC_OBJ_CORE);
    if (depth < 0) depth = hwloc_get_type_depth(t->topo, HWLOC_OBJ_PU);
    int n = hwloc_get_nbobjs_by_depth(t->topo, depth);
    t->core_sets = calloc(n > 0 ? (size_t)n : 1, sizeof *t->core_sets);
    if (!t->core_sets) return tern_status_set(st, TERN_ENOMEM, "topology: out of memory");
    for (int i = 0; i < n; i++) {
        hwloc_obj_t core = hwloc_get_obj_by_depth(t->topo, depth, (unsigned)i);
        if (!core || !core->cpuset || !hwloc_bitmap_intersects(core->cpuset, t->binding)) continue;
        hwloc_cpuset_t set = hwloc_bitmap_alloc();
        if (!set) return tern_status_set(st, TERN_ENOMEM, "topology: out of memory");
        hwloc_bitmap_and(set, core->cpuset, t->binding);
        /* one PU per compute thread: the sibling hyperthread is left idle by design, and a
         * thread that cannot hop between siblings keeps a stable place for describe/metrics */
        hwloc_bitmap_singlify(set);
        hwloc_bitmap_or(t->pus, t->pus, set);
        t->core_sets[t->n_cores++] = set;
    }
    if (t->n_cores == 0) {
        /* binding outside every core object: pin to its first PU rather than fail */
        hwloc_cpuset_t set = hwloc_bitmap_dup(t->binding);
        if (!set) return tern_status_set(st, TERN_ENOMEM, "topology: out of memory");
        hwloc_bitmap_singlify(set);
        hwloc_bitmap_or(t->pus, t->pus, set);
        t->core_sets[t->n_cores++] = set;
    }
    return TERN_OK;
}

static void find_numa(tern_topo *t)
{
    hwloc_cpuset_to_nodeset(t->topo, t->binding, t->nodeset);
    int weight = hwloc_bitmap_weight(t->nodeset);
    t->numa_node = weight == 1 ? hwloc_bitmap_first(t->nodeset) : -1;
    for (hwloc_obj_t node = hwloc_get_next_obj_by_type(t->topo, HWLOC_OBJ_NUMANODE, NULL); node;
         node = hwloc_get_next_obj_by_type(t->topo, HWLOC_OBJ_NUMANODE, node))
        if (hwloc_bitmap_isset(t->nodeset, node->os_index))
            t->numa_bytes += node->attr->numanode.local_memory;

    const struct hwloc_topology_support *sup = hwloc_topology_get_support(t->topo);
    /* A rank bound across nodes (mpirun --bind-to none on a 2-socket box) touches its memory
     * from all of them; interleaving gives every thread the same average distance. */
    t->policy = weight > 1 ? HWLOC_MEMBIND_INTERLEAVE : HWLOC_MEMBIND_BIND;
    int policy_ok = weight > 1 ? sup->membind->interleave_membind : sup->membind->bind_membind;
    t->membind_ok = weight >= 1 && sup->membind->set_area_membind && policy_ok;
    t->cpubind_ok = sup->cpubind->set_thisthread_cpubind;
}

tern_code tern_topo_discover(tern_topo **out, tern_status *st)
{
    *out = NULL;
    tern_code rc = TERN_OK;
    tern_topo *t = calloc(1, sizeof *t);
    if (!t) return tern_status_set(st, TERN_ENOMEM, "topology: out of memory");
    if (hwloc_topology_init(&t->topo) != 0) {
        t->topo = NULL;
        rc = tern_status_set(st, TERN_EUNSUPPORTED, "topology: hwloc_topology_init failed");
        goto fail;
    }
    if (hwloc_topology_load(t->topo) != 0) {
        rc = tern_status_set(st, TERN_EUNSUPPORTED, "topology: hwloc_topology_load failed");
        goto fail;
    }
    t->binding = hwloc_bitmap_alloc();
    t->pus = hwloc_bitmap_alloc();
    t->nodeset = hwloc_bitmap_alloc();
    if (!t->binding || !t->pus || !t->nodeset) {
        rc = tern_status_set(st, TERN_ENOMEM, "topology: out of memory");
        goto fail;
    }
    read_binding(t);
    rc = find_cores(t, st);
    if (rc != TERN_OK) goto fail;
    find_numa(t);

    const char *host = hwloc_obj_get_info_by_name(hwloc_get_root_obj(t->topo), "HostName");
    if (host)
        snprintf(t->host, sizeof t->host, "%s", host);
    else if (gethostname(t->host, sizeof t->host) != 0)
        snprintf(t->host, sizeof t->host, "?");
    t->host[sizeof t->host - 1] = '\0';
    *out = t;
    return TERN_OK;
fail:
    tern_topo_free(t);
    return rc;
}

int tern_topo_n_cores(const tern_topo *t)
{
    return t ? t->n_cores : 1;
}

int tern_topo_numa_node(const tern_topo *t)
{
    return t ? t->numa_node : -1;
}

void tern_topo_describe(const tern_topo *t, char *buf, size_t cap)
{
    if (!buf || cap == 0) return;
    if (!t) {
        snprintf(buf, cap, "topology unknown");
        return;
    }
    char pus[256], nodes[128];
    hwloc_bitmap_list_snprintf(pus, sizeof pus, t->pus);
    hwloc_bitmap_list_snprintf(nodes, sizeof nodes, t->nodeset);
    double gib = (double)t->numa_bytes / (1024.0 * 1024.0 * 1024.0);
    snprintf(buf, cap, "host %s: %d core%s (cpus %s, %s), NUMA node%s %s (%.1f GiB%s)%s", t->host,
             t->n_cores, t->n_cores == 1 ? "" : "s", pus, t->bound ? "bound" : "unbound",
             t->numa_node >= 0 ? "" : "s", nodes[0] ? nodes : "?", gib,
             t->policy == HWLOC_MEMBIND_INTERLEAVE ? ", interleaved" : "",
             t->membind_ok ? "" : ", no memory binding");
}

tern_code tern_topo_bind_thread(const tern_topo *t, int core_index, tern_status *st)
{
    if (!t) return TERN_OK;
    if (core_index < 0 || core_index >= t->n_cores)
        return tern_status_set(st, TERN_EINVAL, "core index: got %d, expected 0..%d", core_index,
                               t->n_cores - 1);
    if (!t->cpubind_ok)
        return tern_status_set(st, TERN_EUNSUPPORTED, "thread binding: not supported here");
    if (hwloc_set_cpubind(t->topo, t->core_sets[core_index], HWLOC_CPUBIND_THREAD) != 0) {
        char pu[32];
        hwloc_bitmap_list_snprintf(pu, sizeof pu, t->core_sets[core_index]);
        return tern_status_set(st, TERN_EIO, "thread binding: hwloc_set_cpubind to cpu %s failed",
                               pu);
    }
    return TERN_OK;
}

/* Page-rounded length; 0 when bytes is so large that rounding overflows. bytes == 0 still maps
 * one page so that NULL only ever means failure. */
static size_t map_len(size_t bytes)
{
    long ps = sysconf(_SC_PAGESIZE);
    size_t page = ps > 0 ? (size_t)ps : 4096;
    if (bytes == 0) bytes = 1;
    if (bytes > SIZE_MAX - (page - 1)) return 0;
    return (bytes + page - 1) / page * page;
}

/* len bytes (page-rounded, nonzero) of untouched anonymous memory, advised to 2 MiB pages from
 * 4 MiB on: the weights are streamed every token, and attention reads every KV block of a
 * sequence each token (2B-4T at 2048 positions: 157 MB in 8 KiB runs); 4 KiB pages cost those
 * streams a TLB miss each. Advice only: ignored where transparent huge pages are off. */
static void *map_anon(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
#ifdef MADV_HUGEPAGE
    if (len >= (size_t)4 << 20) (void)madvise(p, len, MADV_HUGEPAGE);
#endif
    return p;
}

void *tern_topo_reserve(size_t bytes)
{
    size_t len = map_len(bytes);
    return len ? map_anon(len) : NULL;
}

void *tern_topo_alloc(const tern_topo *t, size_t bytes)
{
    size_t len = map_len(bytes);
    if (len == 0) return NULL;
    /* mmap + set_area_membind rather than hwloc_alloc_membind: it is what hwloc does on Linux
     * anyway, and one allocator for both paths means free needs no record of which one ran */
    void *p = map_anon(len);
    if (!p) return NULL;
    if (t && t->membind_ok &&
        hwloc_set_area_membind(t->topo, p, len, t->nodeset, t->policy, HWLOC_MEMBIND_BYNODESET) !=
            0) {
        /* first touch below is by the calling thread, which is usually pinned on that node */
        tern_log(TERN_LOG_DEBUG, "topology: NUMA binding of %zu bytes failed, using first touch",
                 len);
    }
    /* touch every page now: the policy applies at fault time, and the first token should not
     * pay the faults */
    long ps = sysconf(_SC_PAGESIZE);
    size_t page = ps > 0 ? (size_t)ps : 4096;
    for (size_t off = 0; off < len; off += page) ((volatile char *)p)[off] = 0;
    return p;
}

void tern_topo_free_mem(const tern_topo *t, void *p, size_t bytes)
{
    (void)t;
    if (!p) return;
    size_t len = map_len(bytes);
    if (len && munmap(p, len) != 0)
        tern_die("topology: munmap(%p, %zu) failed: bad pointer or size", p, len);
}
