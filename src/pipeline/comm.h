/* comm.h: the MPI transport of the pipeline. comm.c is the only file that calls MPI; every
 * call comes from the one engine thread of a rank. Control messages travel on TAG_CTL,
 * activations (raw fp32 rows) on TAG_ACT, sampler records on TAG_SUM, full logits on
 * TAG_LOGITS. */
#ifndef TERN_PIPELINE_COMM_H
#define TERN_PIPELINE_COMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Waiting (tern_comm_backoff): test and yield for TERN_COMM_SPIN_S, then sleep between tests
 * for 1/TERN_COMM_SLEEP_SHARE of the time waited so far, from TERN_COMM_SLEEP_MIN_US up to
 * TERN_COMM_SLEEP_MAX_US (how late an idle rank sees a message, and why it wakes about 1000
 * times a second: about 1% of a core). */
#define TERN_COMM_SPIN_S 0.0002
#define TERN_COMM_SLEEP_SHARE 8
#define TERN_COMM_SLEEP_MIN_US 20
#define TERN_COMM_SLEEP_MAX_US 1000
/* One host: the interface of the TCP transport when the user's transports need it and name no
 * interface; the longest OMPI_MCA_btl list rewritten (longer ones are left as they are) */
#define TERN_COMM_LOCAL_IF "lo"
#define TERN_COMM_BTL_LIST 256

typedef struct tern_backoff {
    double since; /* 0: not started */
    long sleep_us;
} tern_backoff;
/* One round of a test loop: returns at once during the spin, then sleeps a growing while. */
void tern_comm_backoff(tern_backoff *b);

typedef struct tern_req {
    void *impl; /* MPI_Request, boxed so <mpi.h> stays in comm.c */
    bool active;
} tern_req;

int tern_comm_rank(void);
int tern_comm_size(void);
double tern_comm_now(void); /* seconds, monotonic (shared by the ranks of one host) */

void tern_comm_isend_ctl(int dest, const void *buf, size_t n, tern_req *r);
void tern_comm_isend_act(int dest, const float *buf, size_t n_floats, tern_req *r);
void tern_comm_irecv_ctl(int src, void *buf, size_t cap, tern_req *r);
void tern_comm_irecv_act(int src, float *buf, size_t cap_floats, tern_req *r);
/* the sampler's per-row records (bytes) along the ring, full logits rows (floats) to rank 0 */
void tern_comm_isend_sum(int dest, const void *buf, size_t n, tern_req *r);
void tern_comm_irecv_sum(int src, void *buf, size_t cap, tern_req *r);
void tern_comm_isend_logits(int dest, const float *buf, size_t n, tern_req *r);
void tern_comm_irecv_logits(int src, float *buf, size_t cap, tern_req *r);
/* true when done; *count = bytes (ctl) or floats (act) received */
bool tern_comm_test(tern_req *r, size_t *count);
/* Test loops with tern_comm_backoff (never MPI_Wait, which spins). wait_until gives up at
 * deadline (tern_comm_now seconds; <= 0: none) and returns false, the request still active. */
void tern_comm_wait(tern_req *r, size_t *count);
bool tern_comm_wait_until(tern_req *r, size_t *count, double deadline);
void tern_comm_cancel(tern_req *r);
void tern_comm_req_free(tern_req *r);

void tern_comm_bcast(void *buf, size_t n, int root);
void tern_comm_allgather_u64(uint64_t mine, uint64_t *all);
void tern_comm_allgather_f64(double mine, double *all);
void tern_comm_barrier(void);

#endif
