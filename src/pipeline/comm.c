/* comm.c: see comm.h. The only file that includes <mpi.h>; tern_dist_init/finalize/abort live
 * here too. Without a launcher (one process) MPI is never initialized: the pipeline of one
 * rank sends nothing, and the collectives are copies. */
#include "pipeline/comm.h"

#include <mpi.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ternpipe/engine.h"
#include "ternpipe/log.h"

enum { TAG_CTL = 11, TAG_ACT = 12, TAG_SUM = 13, TAG_LOGITS = 14 };

static bool g_mpi_up = false;
static int g_rank = 0, g_size = 1;

static void abort_hook(void)
{
    MPI_Abort(MPI_COMM_WORLD, 1);
}

/* A comma list holds a name ("self,vader,tcp" holds "tcp") */
static bool list_has(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list; p && *p;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && !strncmp(p, name, n)) return true;
        p = e ? e + 1 : NULL;
    }
    return false;
}

/* Every rank on this host (Open MPI says so in the environment): ranks talk through shared
 * memory (vader wins over tcp for local peers anyway), and the TCP transport would only add
 * a listener on every interface (Open MPI 4.1 binds it to INADDR_ANY whatever
 * btl_tcp_if_include says). So tcp leaves the transport list unless the user's list needs it
 * (no vader in it); then it is kept to loopback unless the user named interfaces. --mca btl
 * reaches the ranks as OMPI_MCA_btl, so a user's choice is seen here and wins. */
static void local_transports(void)
{
    const char *size = getenv("OMPI_COMM_WORLD_SIZE");
    const char *local = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
    if (!size || !local || strcmp(size, local) != 0) return;
    /* Open MPI's default picks UCX where it is built in, and UCX opens TCP listeners on every
     * interface too; one host needs ob1 over shared memory only */
    if (!getenv("OMPI_MCA_pml")) setenv("OMPI_MCA_pml", "ob1", 1);
    const char *btl = getenv("OMPI_MCA_btl");
    char list[TERN_COMM_BTL_LIST];
    if (!btl || !*btl) {
        setenv("OMPI_MCA_btl", "self,vader", 1);
        return;
    }
    if (btl[0] == '^' && !list_has(btl + 1, "vader")) {
        /* "all but X": on one host that is self and shared memory (tcp and ofi would listen) */
        setenv("OMPI_MCA_btl", "self,vader", 1);
        return;
    }
    if (btl[0] != '^' && list_has(btl, "tcp") && list_has(btl, "vader") &&
        strlen(btl) < sizeof list) {
        size_t n = 0;
        list[0] = 0;
        for (const char *p = btl; p && *p;) {
            const char *e = strchr(p, ',');
            size_t len = e ? (size_t)(e - p) : strlen(p);
            if (!(len == 3 && !strncmp(p, "tcp", 3)) && len > 0) {
                n += (size_t)snprintf(list + n, sizeof list - n, "%s%.*s", n ? "," : "", (int)len,
                                      p);
            }
            p = e ? e + 1 : NULL;
        }
        setenv("OMPI_MCA_btl", list, 1);
        return;
    }
    if (!getenv("OMPI_MCA_btl_tcp_if_include") && !getenv("OMPI_MCA_btl_tcp_if_exclude"))
        setenv("OMPI_MCA_btl_tcp_if_include", TERN_COMM_LOCAL_IF, 0);
}

/* the launcher's environment: read before MPI starts (one process started alone has none) */
int tern_launcher_rank(bool *launched)
{
    static const char *const vars[] = {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) {
            if (launched) *launched = true;
            return atoi(v);
        }
    }
    if (launched) *launched = false;
    return 0;
}

tern_code tern_dist_init(int *argc, char ***argv, int *rank, int *size, tern_status *st)
{
    bool launched = false;
    tern_launcher_rank(&launched);
    if (!launched) {
        /* One process and no launcher: no MPI at all. MPI_Init in singleton mode would start
         * an orted and a TCP listener on every interface for a job that never talks to
         * anyone; with one rank the pipeline sends nothing, and the collectives below are
         * copies. */
        g_mpi_up = false;
        g_rank = 0, g_size = 1;
        *rank = 0, *size = 1;
        return TERN_OK;
    }
    local_transports();
    int provided = 0;
    /* one thread calls MPI; the HTTP and pool threads never do */
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
        return tern_status_set(st, TERN_EIO, "mpi: MPI_Init_thread failed");
    g_mpi_up = true;
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    /* errors come back as codes: a failed peer must end the run with a message, not a hang */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_ARE_FATAL);
    tern_log_set_rank(g_rank);
    tern_set_abort_hook(abort_hook);
    *rank = g_rank;
    *size = g_size;
    return TERN_OK;
}

void tern_dist_finalize(void)
{
    if (g_mpi_up) MPI_Finalize();
    g_mpi_up = false;
}

void tern_dist_abort(int code)
{
    if (g_mpi_up) MPI_Abort(MPI_COMM_WORLD, code);
    /* one process without MPI: what MPI_Abort does for a job of one */
    fflush(stderr);
    _exit(code ? code : 1);
}

int tern_comm_rank(void)
{
    return g_rank;
}
int tern_comm_size(void)
{
    return g_size;
}

double tern_comm_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static MPI_Request *req_of(tern_req *r)
{
    if (!g_mpi_up) tern_die("comm: a message without MPI (one rank sends nothing)");
    if (!r->impl) {
        r->impl = malloc(sizeof(MPI_Request)); /* once per request object, at set-up */
        if (!r->impl) tern_die("comm: out of memory");
        *(MPI_Request *)r->impl = MPI_REQUEST_NULL;
    }
    return r->impl;
}

static int icount(size_t n)
{
    if (n > (size_t)0x7fffffff)
        tern_die("comm: message of %zu elements exceeds MPI's int count", n);
    return (int)n;
}

void tern_comm_isend_ctl(int dest, const void *buf, size_t n, tern_req *r)
{
    MPI_Isend(buf, icount(n), MPI_BYTE, dest, TAG_CTL, MPI_COMM_WORLD, req_of(r));
    r->active = true;
}
void tern_comm_isend_act(int dest, const float *buf, size_t n, tern_req *r)
{
    MPI_Isend(buf, icount(n), MPI_FLOAT, dest, TAG_ACT, MPI_COMM_WORLD, req_of(r));
    r->active = true;
}
void tern_comm_isend_sum(int dest, const void *buf, size_t n, tern_req *r)
{
    MPI_Isend(buf, icount(n), MPI_BYTE, dest, TAG_SUM, MPI_COMM_WORLD, req_of(r));
    r->active = true;
}
void tern_comm_irecv_sum(int src, void *buf, size_t cap, tern_req *r)
{
    MPI_Irecv(buf, icount(cap), MPI_BYTE, src, TAG_SUM, MPI_COMM_WORLD, req_of(r));
    r->active = true;
}
void tern_comm_isend_logits(int dest, const float *buf, size_t n, tern_req *r)
{
    MPI_Isend(buf, icount(n), MPI_FLOAT, dest, TAG_LOGITS, MPI_COMM_WORLD, req_of(r));
    r->active = true;
}
void tern_comm_irecv_logits(int src, float *buf, size_t cap, tern_req *r)
{
    MPI_Irecv(buf, icount(cap), MPI_FLOAT, src, TAG_LOGITS, MPI_COMM_WORLD, req_of(r));
    r->active = true;
}

void tern_comm_irecv_ctl(int src, void *buf, size_t cap, tern_req *r)
{
    MPI_Irecv(buf, icount(cap), MPI_BYTE, src, TAG_CTL, MPI_COMM_WORLD, req_of(r));
    r->active = true;
}
void tern_comm_irecv_act(int src, float *buf, size_t cap, tern_req *r)
{
    MPI_Irecv(buf, icount(cap), MPI_FLOAT, src, TAG_ACT, MPI_COMM_WORLD, req_of(r));
    r->active = true;
}

static size_t count_of(MPI_Status *s)
{
    int n = 0;
    MPI_Datatype t = s->MPI_TAG == TAG_ACT || s->MPI_TAG == TAG_LOGITS ? MPI_FLOAT : MPI_BYTE;
    MPI_Get_count(s, t, &n);
    return n < 0 ? 0 : (size_t)n;
}

bool tern_comm_test(tern_req *r, size_t *count)
{
    if (!r->active) return true;
    int flag = 0;
    MPI_Status s;
    MPI_Test(req_of(r), &flag, &s);
    if (!flag) return false;
    r->active = false;
    if (count) *count = count_of(&s);
    return true;
}

/* Sleeps between tests, longer the longer nothing has arrived: MPI_Wait would spin in the
 * progress engine (an idle worker burnt a third of a core), and a wait that returns can have a
 * deadline. The first TERN_COMM_SPIN_S only yield, so a busy pipeline, whose messages come
 * within a step, pays no latency; then each sleep is a TERN_COMM_SLEEP_SHARE of the time
 * waited so far, so a message is seen at most that share late (at most
 * TERN_COMM_SLEEP_MAX_US once idle). */
void tern_comm_backoff(tern_backoff *b)
{
    double t = tern_comm_now();
    if (b->since == 0) b->since = t;
    double waited = t - b->since;
    if (waited < TERN_COMM_SPIN_S) {
        sched_yield(); /* ranks sharing cores (oversubscribed) get the core back at once */
        return;
    }
    long us = (long)(waited * 1e6 / TERN_COMM_SLEEP_SHARE);
    if (us < TERN_COMM_SLEEP_MIN_US) us = TERN_COMM_SLEEP_MIN_US;
    if (us > TERN_COMM_SLEEP_MAX_US) us = TERN_COMM_SLEEP_MAX_US;
    b->sleep_us = us;
    struct timespec ts = {0, us * 1000L};
    nanosleep(&ts, NULL);
}

bool tern_comm_wait_until(tern_req *r, size_t *count, double deadline)
{
    tern_backoff b = {0};
    for (;;) {
        if (tern_comm_test(r, count)) return true;
        if (deadline > 0 && tern_comm_now() >= deadline) return false;
        tern_comm_backoff(&b);
    }
}

void tern_comm_wait(tern_req *r, size_t *count)
{
    tern_comm_wait_until(r, count, 0);
}

void tern_comm_cancel(tern_req *r)
{
    if (!r->active) return;
    MPI_Cancel(req_of(r));
    tern_comm_wait(r, NULL); /* a cancelled request still completes; a test loop, not MPI_Wait */
}

void tern_comm_req_free(tern_req *r)
{
    free(r->impl);
    r->impl = NULL;
    r->active = false;
}

void tern_comm_bcast(void *buf, size_t n, int root)
{
    if (!g_mpi_up) return;
    MPI_Bcast(buf, (int)n, MPI_BYTE, root, MPI_COMM_WORLD);
}
void tern_comm_allgather_u64(uint64_t mine, uint64_t *all)
{
    if (!g_mpi_up) {
        all[0] = mine;
        return;
    }
    MPI_Allgather(&mine, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, MPI_COMM_WORLD);
}
void tern_comm_allgather_f64(double mine, double *all)
{
    if (!g_mpi_up) {
        all[0] = mine;
        return;
    }
    MPI_Allgather(&mine, 1, MPI_DOUBLE, all, 1, MPI_DOUBLE, MPI_COMM_WORLD);
}
void tern_comm_barrier(void)
{
    if (!g_mpi_up) return;
    MPI_Barrier(MPI_COMM_WORLD);
}
