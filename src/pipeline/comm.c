/* comm.c: see comm.h. The only MPI user besides tern_dist_init/finalize (engine entry). */
#include "pipeline/comm.h"

#include <mpi.h>
#include <stdlib.h>
#include <time.h>

#include "ternpipe/engine.h"
#include "ternpipe/log.h"

enum { TAG_CTL = 11, TAG_ACT = 12, TAG_SUM = 13, TAG_LOGITS = 14 };

static bool g_mpi_up = false;
static int g_rank = 0, g_size = 1;

static void abort_hook(void)
{
    MPI_Abort(MPI_COMM_WORLD, 1);
}

tern_code tern_dist_init(int *argc, char ***argv, int *rank, int *size, tern_status *st)
{
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
    MPI_Abort(MPI_COMM_WORLD, code);
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

void tern_comm_wait(tern_req *r, size_t *count)
{
    if (!r->active) return;
    MPI_Status s;
    MPI_Wait(req_of(r), &s);
    r->active = false;
    if (count) *count = count_of(&s);
}

void tern_comm_cancel(tern_req *r)
{
    if (!r->active) return;
    MPI_Cancel(req_of(r));
    MPI_Wait(req_of(r), MPI_STATUS_IGNORE);
    r->active = false;
}

void tern_comm_req_free(tern_req *r)
{
    free(r->impl);
    r->impl = NULL;
    r->active = false;
}

void tern_comm_bcast(void *buf, size_t n, int root)
{
    MPI_Bcast(buf, (int)n, MPI_BYTE, root, MPI_COMM_WORLD);
}
void tern_comm_allgather_u64(uint64_t mine, uint64_t *all)
{
    MPI_Allgather(&mine, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, MPI_COMM_WORLD);
}
void tern_comm_allgather_f64(double mine, double *all)
{
    MPI_Allgather(&mine, 1, MPI_DOUBLE, all, 1, MPI_DOUBLE, MPI_COMM_WORLD);
}
void tern_comm_barrier(void)
{
    MPI_Barrier(MPI_COMM_WORLD);
}
