/* remote-internal.h: the state of the supervisor's remote engine, shared by remote.c (the
 * job, its frames and the replay) and remote-api.c (the backend's entry points and the life
 * cycle). Nothing outside src/supervise includes it. */
#ifndef TERN_SUPERVISE_REMOTE_INTERNAL_H
#define TERN_SUPERVISE_REMOTE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "supervise/job.h"
#include "supervise/journal.h"
#include "supervise/remote.h"
#include "supervise/sock.h"
#include "supervise/wire.h"

#define POLL_MS 20   /* a busy step waits this long at most for frames */
#define SLOT_BITS 20 /* request ids: generation << SLOT_BITS | slot + 1 */
#define N_BUCKETS 10

enum { R_LAUNCHING = 0, R_READY, R_DOWN, R_FAILED };

/* bucket bounds of the detection and recovery histograms (remote-api.c) */
extern const double tern_rm_le[N_BUCKETS];

typedef struct hist {
    uint64_t count[N_BUCKETS + 1];
    double sum;
} hist;

typedef struct slot {
    uint64_t id; /* 0: free */
    void (*on_token)(void *user, int32_t token);
    void (*on_logprobs)(void *user, const tern_pick *pick);
    void (*on_done)(void *user, tern_finish why, const char *error);
    void *user;
    bool sent;      /* submitted to the current job */
    bool ever_sent; /* to an earlier one: its next submit is a replay */
    bool cancel;    /* asked (under mu) */
    int32_t next_free;
} slot;

struct tern_remote {
    tern_remote_opts o;
    char *const *argv;
    tern_journal *j;
    pthread_mutex_t mu; /* slots' ids and flags, the send queue, counters, the state's text */
    slot *slots;        /* [cap] */
    int32_t cap, free_head, n_open;
    uint64_t gen;
    int32_t *queue; /* [cap] slots to send, FIFO */
    int32_t q_head, q_n, n_cancel;
    int wake[2]; /* self-pipe: submit and cancel wake the serving thread */
    /* the serving thread's */
    int lfd, fd;
    tern_sv_reader *rd;
    tern_sv_out out;
    tern_job job;
    atomic_int state;
    bool have_hello, recovering;
    bool impostor;   /* the connection said hello without the job's token */
    double t_accept; /* when the connection was accepted */
    uint32_t n_ctx, n_vocab, max_seqs, n_ranks;
    uint64_t checksum;
    double t_launch, t_ready, t_relaunch, t_detect, last_heard, last_progress, last_ping;
    uint64_t ping_seq;
    int32_t failures; /* in a row */
    int n_procs;      /* the job's processes on this machine when it said hello */
    double last_scan;
    char why[TERN_STATUS_MSG_MAX];
    tern_engine_stats stats; /* rank 0's last Stats */
    tern_rank_stats *ranks;  /* [cap_ranks] */
    int32_t cap_ranks;
    int32_t *finish;         /* [cap] slots to answer here (outside the locks) */
    tern_finish *finish_why; /* [cap] and how */
    /* metrics, under mu */
    uint64_t restarts, replayed, reprefilled, hosts_dropped;
    hist detect, recover;
};

static inline void tern_rm_observe(hist *h, double v)
{
    int k = 0;
    while (k < N_BUCKETS && v > tern_rm_le[k]) k++;
    h->count[k]++;
    h->sum += v;
}

static inline slot *tern_rm_lookup(tern_remote *r, uint64_t id)
{
    uint64_t k = (id & ((1u << SLOT_BITS) - 1));
    if (k < 1 || k > (uint64_t)r->cap) return NULL;
    slot *s = &r->slots[k - 1];
    return s->id == id ? s : NULL;
}

/* remote.c */
tern_code tern_rm_launch(tern_remote *r, tern_status *st);
void tern_rm_drop_connection(tern_remote *r);
tern_code tern_rm_step(void *self, bool *idle, tern_status *st);
/* remote-api.c */
void tern_rm_wait(void *self, int timeout_ms);

#endif
