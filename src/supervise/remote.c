/* remote.c: see remote.h. */
#define _POSIX_C_SOURCE 200809L
#include "supervise/remote.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "supervise/job.h"
#include "supervise/journal.h"
#include "supervise/sock.h"
#include "supervise/wire.h"
#include "ternpipe/log.h"

#define POLL_MS 20   /* a busy step waits this long at most for frames */
#define SLOT_BITS 20 /* request ids: generation << SLOT_BITS | slot + 1 */
#define N_BUCKETS 10

enum { R_LAUNCHING = 0, R_READY, R_DOWN, R_FAILED };

static const double g_le[N_BUCKETS] = {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120};

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

static void observe(hist *h, double v)
{
    int k = 0;
    while (k < N_BUCKETS && v > g_le[k]) k++;
    h->count[k]++;
    h->sum += v;
}

static slot *lookup(tern_remote *r, uint64_t id)
{
    uint64_t k = (id & ((1u << SLOT_BITS) - 1));
    if (k < 1 || k > (uint64_t)r->cap) return NULL;
    slot *s = &r->slots[k - 1];
    return s->id == id ? s : NULL;
}

static void wake(tern_remote *r)
{
    char c = 1;
    ssize_t k = write(r->wake[1], &c, 1);
    (void)k;
}

/* frees a slot (mu held) */
static void release(tern_remote *r, slot *s)
{
    s->id = 0;
    if (s->cancel) r->n_cancel--;
    s->cancel = false;
    s->next_free = r->free_head;
    r->free_head = (int32_t)(s - r->slots);
    r->n_open--;
}

/* answers a request here (cancelled before it reached a job, budget spent at a replay) */
static void answer(tern_remote *r, slot *s, tern_finish why, const char *err)
{
    void (*done)(void *, tern_finish, const char *) = s->on_done;
    void *user = s->user;
    tern_journal_finish(r->j, s->id);
    pthread_mutex_lock(&r->mu);
    release(r, s);
    pthread_mutex_unlock(&r->mu);
    done(user, why, err);
}

/* ------------------------------------------------------------------ the backend's entry points */

static tern_code rm_submit(void *self, const tern_request *q, int64_t *id, tern_status *st)
{
    tern_remote *r = self;
    if (q->n_prompt < 1)
        return tern_status_set(st, TERN_EINVAL, "prompt: got 0 tokens, expected at least 1");
    if (q->max_new < 0)
        return tern_status_set(st, TERN_EINVAL, "max_new: got %d, expected >= 0", q->max_new);
    if ((int64_t)q->n_prompt + q->max_new > (int64_t)r->n_ctx)
        return tern_status_set(st, TERN_ERANGE,
                               "context: got %d prompt tokens + %d new, expected at most %u",
                               q->n_prompt, q->max_new, r->n_ctx);
    if (q->all_logits || q->resumed)
        return tern_status_set(st, TERN_EINVAL,
                               "supervise: all_logits and resumed are not served remotely");
    for (int32_t i = 0; i < q->n_prompt; i++)
        if (q->prompt[i] < 0 || (uint32_t)q->prompt[i] >= r->n_vocab)
            return tern_status_set(st, TERN_EINVAL, "prompt token %d: got id %d, expected 0..%u", i,
                                   q->prompt[i], r->n_vocab - 1);
    tern_code rc = tern_sampling_validate(&q->sampling, st);
    if (rc) return rc;
    for (int32_t i = 0; i < q->sampling.n_logit_bias; i++)
        if ((uint32_t)q->sampling.logit_bias[i].id >= r->n_vocab)
            return tern_status_set(st, TERN_EINVAL, "logit_bias: token %d: got it, expected 0..%u",
                                   q->sampling.logit_bias[i].id, r->n_vocab - 1);
    pthread_mutex_lock(&r->mu);
    if (atomic_load(&r->state) == R_FAILED) {
        rc = tern_status_set(st, TERN_EIO, "%s", r->why);
        goto out;
    }
    if (r->free_head < 0) {
        rc = tern_status_set(st, TERN_EBUSY, "queue: got %d open requests, expected < %d", r->cap,
                             r->cap);
        goto out;
    }
    int32_t k = r->free_head;
    slot *s = &r->slots[k];
    uint64_t sid = (++r->gen << SLOT_BITS) | (uint64_t)(k + 1);
    tern_jrequest jr = {.id = sid,
                        .prompt = q->prompt,
                        .n_prompt = q->n_prompt,
                        .sampling = q->sampling,
                        .max_new = q->max_new,
                        .n_stop = q->n_stop,
                        .response_format = q->response_format};
    memcpy(jr.stop, q->stop, sizeof jr.stop);
    if ((rc = tern_journal_add(r->j, &jr, st))) goto out;
    r->free_head = s->next_free;
    *s = (slot){.id = sid,
                .on_token = q->on_token,
                .on_logprobs = q->on_logprobs,
                .on_done = q->on_done,
                .user = q->user};
    r->n_open++;
    r->queue[(r->q_head + r->q_n++) % r->cap] = k;
    *id = (int64_t)sid;
out:
    pthread_mutex_unlock(&r->mu);
    if (!rc) wake(r);
    return rc;
}

static void rm_cancel(void *self, int64_t id)
{
    tern_remote *r = self;
    pthread_mutex_lock(&r->mu);
    slot *s = lookup(r, (uint64_t)id);
    if (s && !s->cancel) s->cancel = true, r->n_cancel++;
    pthread_mutex_unlock(&r->mu);
    if (s) wake(r);
}

static void rm_wait(void *self, int timeout_ms)
{
    tern_remote *r = self;
    struct pollfd p[2] = {{.fd = r->wake[0], .events = POLLIN},
                          {.fd = r->fd >= 0 ? r->fd : r->lfd, .events = POLLIN}};
    poll(p, 2, timeout_ms);
}

static void rm_stats(void *self, tern_engine_stats *s)
{
    tern_remote *r = self;
    tern_rank_stats *ranks = s->ranks;
    int32_t cap = s->cap_ranks;
    *s = r->stats;
    s->ranks = ranks, s->cap_ranks = cap;
    int32_t n = r->stats.n_ranks < cap ? r->stats.n_ranks : cap;
    if (n > 0 && ranks) memcpy(ranks, r->ranks, (size_t)n * sizeof *ranks);
    s->n_ranks = n > 0 ? n : (int32_t)r->n_ranks;
    for (int32_t i = n; i < s->n_ranks && i < cap; i++) memset(&ranks[i], 0, sizeof *ranks);
}

static const char *rm_health(void *self)
{
    tern_remote *r = self;
    int st = atomic_load(&r->state);
    return st == R_READY ? NULL : st == R_FAILED ? "failed" : "recovering";
}

static void emit_hist(void (*emit)(void *, const char *, size_t), void *ctx, const char *name,
                      const char *help, const hist *h)
{
    char line[256];
    int n = snprintf(line, sizeof line, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    emit(ctx, line, (size_t)n);
    uint64_t cum = 0;
    for (int k = 0; k <= N_BUCKETS; k++) {
        cum += h->count[k];
        if (k < N_BUCKETS)
            n = snprintf(line, sizeof line, "%s_bucket{le=\"%g\"} %llu\n", name, g_le[k],
                         (unsigned long long)cum);
        else
            n = snprintf(line, sizeof line, "%s_bucket{le=\"+Inf\"} %llu\n", name,
                         (unsigned long long)cum);
        emit(ctx, line, (size_t)n);
    }
    n = snprintf(line, sizeof line, "%s_sum %.6f\n%s_count %llu\n", name, h->sum, name,
                 (unsigned long long)cum);
    emit(ctx, line, (size_t)n);
}

static void rm_metrics(void *self, void (*emit)(void *, const char *, size_t), void *ctx)
{
    tern_remote *r = self;
    pthread_mutex_lock(&r->mu);
    char b[1024];
    int n = snprintf(
        b, sizeof b,
        "# HELP ternpipe_supervisor_restarts_total Engine jobs relaunched after a failure.\n"
        "# TYPE ternpipe_supervisor_restarts_total counter\n"
        "ternpipe_supervisor_restarts_total %llu\n"
        "# HELP ternpipe_supervisor_requests_replayed_total Open requests resubmitted to a "
        "relaunched job.\n"
        "# TYPE ternpipe_supervisor_requests_replayed_total counter\n"
        "ternpipe_supervisor_requests_replayed_total %llu\n"
        "# HELP ternpipe_supervisor_tokens_reprefilled_total Tokens (prompt and generated) "
        "prefilled again by replays.\n"
        "# TYPE ternpipe_supervisor_tokens_reprefilled_total counter\n"
        "ternpipe_supervisor_tokens_reprefilled_total %llu\n"
        "# HELP ternpipe_supervisor_hosts_dropped_total Hosts left out of a relaunch.\n"
        "# TYPE ternpipe_supervisor_hosts_dropped_total counter\n"
        "ternpipe_supervisor_hosts_dropped_total %llu\n",
        (unsigned long long)r->restarts, (unsigned long long)r->replayed,
        (unsigned long long)r->reprefilled, (unsigned long long)r->hosts_dropped);
    emit(ctx, b, (size_t)n);
    emit_hist(emit, ctx, "ternpipe_supervisor_detection_seconds",
              "From the job's last progress to the supervisor noticing it failed.", &r->detect);
    emit_hist(emit, ctx, "ternpipe_supervisor_recovery_seconds",
              "From detecting a failure to the first token of the relaunched job.", &r->recover);
    pthread_mutex_unlock(&r->mu);
}

/* ------------------------------------------------------------------ the job */

static tern_code launch(tern_remote *r, tern_status *st)
{
    r->have_hello = false;
    r->t_launch = tern_sv_now();
    tern_code rc = tern_job_start(&r->job, r->argv, st);
    if (!rc) atomic_store(&r->state, R_LAUNCHING);
    return rc;
}

static void drop_connection(tern_remote *r)
{
    if (r->fd >= 0) close(r->fd);
    r->fd = -1;
    /* a connection of the dead job still waiting to be accepted would pass for the next one's */
    for (int i = 0, c; i < 64 && (c = tern_sock_accept(r->lfd)) >= 0; i++) close(c);
    r->out.n = 0;
    tern_sv_reader_free(r->rd);
    r->rd = NULL;
}

/* the job failed: tear it down and plan the relaunch (or give up) */
static void failed(tern_remote *r, const char *why)
{
    double now = tern_sv_now();
    drop_connection(r);
    tern_log(TERN_LOG_ERROR, "supervisor: engine job failed: %s (%d open requests)", why,
             r->n_open);
    int swept = tern_job_kill(&r->job, r->o.marker_flag, r->o.marker_value, false);
    char how[64];
    tern_job_describe(&r->job, how, sizeof how);
    r->failures++;
    pthread_mutex_lock(&r->mu);
    double since = r->n_open ? now - r->last_progress : 0;
    if (since < 0) since = 0;
    observe(&r->detect, since);
    for (int32_t i = 0; i < r->cap; i++)
        if (r->slots[i].id && r->slots[i].sent)
            r->slots[i].sent = false, r->slots[i].ever_sent = true;
    bool give_up = r->o.max_restarts >= 0 && r->failures > r->o.max_restarts;
    if (give_up)
        snprintf(r->why, sizeof r->why,
                 "supervisor: the engine job failed %d times in a row, giving up: %s", r->failures,
                 why);
    pthread_mutex_unlock(&r->mu);
    tern_log(TERN_LOG_INFO,
             "supervisor: job torn down (leader %s, %d other processes killed); the failure came "
             "%.2f s after the last progress",
             how, swept, since);
    r->t_detect = now;
    r->recovering = true;
    if (give_up) {
        atomic_store(&r->state, R_FAILED);
        tern_log(TERN_LOG_ERROR, "%s", r->why);
        return;
    }
    double delay = TERN_REMOTE_BACKOFF_S;
    for (int k = 1; k < r->failures && delay < TERN_REMOTE_BACKOFF_MAX_S; k++) delay *= 4;
    if (delay > TERN_REMOTE_BACKOFF_MAX_S) delay = TERN_REMOTE_BACKOFF_MAX_S;
    r->t_relaunch = now + delay;
    atomic_store(&r->state, R_DOWN);
    tern_log(TERN_LOG_WARN, "supervisor: relaunching in %.1f s (attempt %d of %d)", delay,
             r->failures, r->o.max_restarts);
}

typedef struct replay_ctx {
    tern_remote *r;
    tern_code rc;
    tern_status st;
    bool count; /* a replay after a failure (metrics) */
    bool spent; /* its budget was spent before the failure: only its Done was lost */
} replay_ctx;

static void send_one(void *user, const tern_jreplay *q)
{
    replay_ctx *c = user;
    c->spent = q->max_new == 0;
    if (c->rc || c->spent) return;
    tern_sv_msg m = {.kind = TERN_SV_SUBMIT,
                     .id = q->id,
                     .ids = q->ids,
                     .n_ids = q->n_ids,
                     .sampling = *q->sampling,
                     .max_new = q->max_new,
                     .resumed = q->resumed,
                     .n_stop = q->n_stop,
                     .response_format = q->response_format};
    memcpy(m.stop, q->stop, (size_t)q->n_stop * sizeof *m.stop);
    c->rc = tern_sv_out_put(&c->r->out, c->r->fd, &m, c->r->o.heartbeat_timeout_s, &c->st);
    if (!c->rc && c->count) {
        c->r->replayed++;
        c->r->reprefilled += (uint64_t)q->n_ids;
    }
}

/* mu held: sends slot k to the job (a first submit or a replay). Returns the finish to answer
 * it with here instead (cancelled before it was sent, budget spent), or TERN_FINISH_COUNT. */
static tern_finish send_slot(tern_remote *r, int32_t k, replay_ctx *c)
{
    slot *s = &r->slots[k];
    if (!s->id || s->sent) return TERN_FINISH_COUNT;
    if (s->cancel) return TERN_FINISH_CANCELLED;
    c->count = s->ever_sent;
    if (!tern_journal_replay_one(r->j, s->id, send_one, c)) return TERN_FINISH_COUNT;
    if (c->spent) return TERN_FINISH_LENGTH;
    if (!c->rc) s->sent = true;
    return TERN_FINISH_COUNT;
}

/* answers the slots listed in r->finish [n] with why[] (outside the locks) */
static void answer_list(tern_remote *r, int32_t n, const tern_finish *why)
{
    for (int32_t f = 0; f < n; f++) {
        slot *s = &r->slots[r->finish[f]];
        if (s->id) answer(r, s, why[f], NULL);
    }
}

/* sends what is queued (first submits) and the cancels asked; answers here what need not go */
static tern_code flush_inbox(tern_remote *r, bool all, tern_finish *why, tern_status *st)
{
    replay_ctx c = {.r = r};
    int32_t n = 0;
    pthread_mutex_lock(&r->mu);
    if (all) {
        /* rank 0 said hello: every open request goes to it, in acceptance order (ids grow) */
        r->q_head = r->q_n = 0;
        for (int32_t i = 0; i < r->cap; i++)
            if (r->slots[i].id && !r->slots[i].sent) {
                int32_t k = r->q_n++;
                while (k > 0 && r->slots[r->queue[k - 1]].id > r->slots[i].id)
                    r->queue[k] = r->queue[k - 1], k--;
                r->queue[k] = i;
            }
    }
    while (r->q_n && !c.rc) {
        int32_t k = r->queue[r->q_head];
        r->q_head = (r->q_head + 1) % r->cap, r->q_n--;
        tern_finish w = send_slot(r, k, &c);
        if (w != TERN_FINISH_COUNT) r->finish[n] = k, why[n++] = w;
    }
    if (r->n_cancel && !c.rc)
        for (int32_t i = 0; i < r->cap && !c.rc; i++) {
            slot *s = &r->slots[i];
            if (!s->id || !s->cancel || !s->sent) continue;
            tern_sv_msg m = {.kind = TERN_SV_CANCEL, .id = s->id};
            c.rc = tern_sv_out_put(&r->out, r->fd, &m, r->o.heartbeat_timeout_s, &c.st);
            s->cancel = false, r->n_cancel--; /* sent: rank 0 answers with its Done */
        }
    pthread_mutex_unlock(&r->mu);
    answer_list(r, n, why);
    if (c.rc) return tern_status_set(st, c.rc, "%s", c.st.msg);
    return TERN_OK;
}

/* while no job serves: cancels are answered here at once (they never reached one) */
static void answer_cancels(tern_remote *r, tern_finish *why)
{
    int32_t n = 0;
    pthread_mutex_lock(&r->mu);
    if (r->n_cancel)
        for (int32_t i = 0; i < r->cap; i++)
            if (r->slots[i].id && r->slots[i].cancel)
                r->finish[n] = i, why[n++] = TERN_FINISH_CANCELLED;
    pthread_mutex_unlock(&r->mu);
    answer_list(r, n, why);
}

/* ------------------------------------------------------------------ frames from rank 0 */

static tern_code hello(tern_remote *r, const tern_sv_msg *m, tern_status *st)
{
    if (m->version != TERN_SV_VERSION)
        return tern_status_set(st, TERN_EFORMAT, "rank 0 speaks version %u, expected %d",
                               m->version, TERN_SV_VERSION);
    if (m->n_ctx < 1 || m->n_vocab < 1 || m->max_seqs < 1 || m->n_ranks < 1 ||
        m->n_ranks > TERN_SV_MAX_RANKS)
        return tern_status_set(st, TERN_EFORMAT,
                               "rank 0's hello: got context %u, vocabulary %u, %u slots, %u "
                               "ranks, expected positive counts",
                               m->n_ctx, m->n_vocab, m->max_seqs, m->n_ranks);
    if (r->checksum &&
        (m->model_checksum != r->checksum || m->n_ctx != r->n_ctx || m->n_vocab != r->n_vocab))
        return tern_status_set(st, TERN_EFORMAT,
                               "the relaunched job serves another model (checksum %016llx, "
                               "context %u; expected %016llx, context %u)",
                               (unsigned long long)m->model_checksum, m->n_ctx,
                               (unsigned long long)r->checksum, r->n_ctx);
    if (!r->checksum) {
        r->checksum = m->model_checksum;
        r->n_ctx = m->n_ctx, r->n_vocab = m->n_vocab, r->max_seqs = m->max_seqs;
    }
    r->n_ranks = m->n_ranks;
    tern_sv_reader_free(r->rd); /* from now on ids are checked against the vocabulary */
    r->rd = NULL;
    tern_code rc = tern_sv_reader_create(&r->rd, (int32_t)r->n_vocab, st);
    if (rc) return rc;
    r->have_hello = true;
    r->n_procs = tern_job_sweep(r->o.marker_flag, r->o.marker_value, false);
    r->t_ready = tern_sv_now();
    r->last_progress = r->t_ready;
    atomic_store(&r->state, R_READY);
    if (r->recovering && !r->n_open) { /* nothing to continue: recovered once it is up */
        pthread_mutex_lock(&r->mu);
        observe(&r->recover, r->t_ready - r->t_detect);
        pthread_mutex_unlock(&r->mu);
        r->recovering = false;
    }
    tern_log(TERN_LOG_INFO,
             "supervisor: engine job up (%u ranks, context %u, %u slots) after "
             "%.1f s; %d open requests to resubmit",
             m->n_ranks, m->n_ctx, m->max_seqs, r->t_ready - r->t_launch, r->n_open);
    return TERN_OK;
}

static void stats(tern_remote *r, const tern_sv_msg *m)
{
    int32_t n = m->stats.n_ranks;
    if (n > r->cap_ranks) {
        tern_rank_stats *k = realloc(r->ranks, (size_t)n * sizeof *k);
        if (!k) return;
        r->ranks = k, r->cap_ranks = n;
    }
    if (n) memcpy(r->ranks, m->stats.ranks, (size_t)n * sizeof *r->ranks);
    r->stats = m->stats;
    r->stats.ranks = r->ranks;
}

static tern_code tokens(tern_remote *r, const tern_sv_msg *m, tern_status *st)
{
    slot *s = lookup(r, m->id); /* the serving thread alone frees slots */
    if (!s) return TERN_OK;     /* answered here meanwhile (a cancel that crossed it) */
    for (int32_t i = 0; i < m->n_ids; i++) {
        tern_code rc = tern_journal_token(r->j, m->id, m->ids[i], st);
        if (rc) return rc;
        if (m->pick && s->on_logprobs) s->on_logprobs(s->user, m->pick);
        s->on_token(s->user, m->ids[i]);
    }
    return TERN_OK;
}

static void done(tern_remote *r, const tern_sv_msg *m)
{
    slot *s = lookup(r, m->id);
    if (!s) return;
    tern_finish why = m->finish < TERN_FINISH_COUNT ? (tern_finish)m->finish : TERN_FINISH_ERROR;
    void (*cb)(void *, tern_finish, const char *) = s->on_done;
    void *user = s->user;
    tern_journal_finish(r->j, m->id);
    pthread_mutex_lock(&r->mu);
    release(r, s);
    pthread_mutex_unlock(&r->mu);
    cb(user, why, m->error[0] ? m->error : NULL);
}

static tern_code frames(tern_remote *r, bool *eof, tern_status *st)
{
    tern_code rc = tern_sv_read(r->fd, r->rd, eof, st);
    for (int i = 0; !rc && i < 100000; i++) {
        tern_sv_msg m;
        bool got = false;
        if ((rc = tern_sv_reader_next(r->rd, &m, &got, st)) || !got) break;
        double now = tern_sv_now();
        r->last_heard = now;
        if (!r->have_hello && m.kind != TERN_SV_HELLO)
            return tern_status_set(st, TERN_EFORMAT, "rank 0 sent frame kind %d before hello",
                                   (int)m.kind);
        switch (m.kind) {
        case TERN_SV_HELLO:
            if (r->have_hello) return tern_status_set(st, TERN_EFORMAT, "rank 0 said hello twice");
            rc = hello(r, &m, st);
            break;
        case TERN_SV_TOKENS:
            rc = tokens(r, &m, st);
            r->last_progress = now;
            if (r->recovering) { /* the first token since the failure */
                pthread_mutex_lock(&r->mu);
                observe(&r->recover, now - r->t_detect);
                pthread_mutex_unlock(&r->mu);
                tern_log(TERN_LOG_INFO,
                         "supervisor: recovered: first token %.2f s after the "
                         "failure was detected",
                         now - r->t_detect);
                r->recovering = false;
            }
            r->failures = 0;
            break;
        case TERN_SV_DONE:
            done(r, &m);
            r->last_progress = now;
            break;
        case TERN_SV_HEARTBEAT:
            if (m.state == 2)
                return tern_status_set(st, TERN_EIO, "rank 0 reported: %s",
                                       m.error[0] ? m.error : "a failure");
            break;
        case TERN_SV_STATS:
            stats(r, &m);
            break;
        default:
            return tern_status_set(st, TERN_EFORMAT,
                                   "rank 0 sent frame kind %d, expected "
                                   "tokens, done, heartbeat or stats",
                                   (int)m.kind);
        }
    }
    return rc;
}

/* ------------------------------------------------------------------ stepping */

static tern_code step_live(tern_remote *r, bool busy, tern_finish *why, tern_status *st)
{
    double now = tern_sv_now();
    int st0 = atomic_load(&r->state);
    if (r->fd < 0) {
        r->fd = tern_sock_accept(r->lfd);
        if (r->fd >= 0) {
            r->last_heard = now;
            tern_code rc = tern_sv_reader_create(&r->rd, 0, st);
            if (rc) return rc;
        }
    }
    struct pollfd p[2] = {{.fd = r->wake[0], .events = POLLIN},
                          {.fd = r->fd >= 0 ? r->fd : r->lfd,
                           .events = POLLIN | (r->out.n && r->fd >= 0 ? POLLOUT : 0)}};
    poll(p, 2, busy ? POLL_MS : 0);
    if (p[0].revents & POLLIN) {
        char buf[256];
        while (read(r->wake[0], buf, sizeof buf) > 0) {
        }
    }
    if (r->fd >= 0) {
        bool eof = false;
        tern_code rc = frames(r, &eof, st);
        if (rc) return rc;
        if (eof) return tern_status_set(st, TERN_EIO, "rank 0 closed the connection");
    }
    if (st0 == R_LAUNCHING && atomic_load(&r->state) == R_READY) {
        tern_code rc = flush_inbox(r, true, why, st);
        if (rc) return rc;
    } else if (atomic_load(&r->state) == R_READY) {
        tern_code rc = flush_inbox(r, false, why, st);
        if (rc) return rc;
        if (now - r->last_ping >= TERN_REMOTE_PING_S) {
            tern_sv_msg m = {.kind = TERN_SV_HEARTBEAT, .id = ++r->ping_seq, .state = 1};
            if ((rc = tern_sv_out_put(&r->out, r->fd, &m, r->o.heartbeat_timeout_s, st))) return rc;
            r->last_ping = now;
        }
        if (now - r->last_heard > r->o.heartbeat_timeout_s)
            return tern_status_set(st, TERN_EIO, "rank 0 was silent for %.1f s (limit %.1f s)",
                                   now - r->last_heard, r->o.heartbeat_timeout_s);
        if (now - r->t_ready > TERN_REMOTE_STABLE_S) r->failures = 0;
        if (now - r->last_scan >= TERN_REMOTE_SCAN_S) {
            /* a rank of this machine that died is seen here at once, before its launcher
             * notices and ends the job (about 2 s with Open MPI 4.1) */
            int n = tern_job_sweep(r->o.marker_flag, r->o.marker_value, false);
            r->last_scan = now;
            if (n < r->n_procs)
                return tern_status_set(st, TERN_EIO,
                                       "a process of the job ended (%d of its %d here are left)", n,
                                       r->n_procs);
        }
    } else {
        answer_cancels(r, why);
        if (now - r->t_launch > r->o.start_timeout_s)
            return tern_status_set(st, TERN_EIO, "no hello from rank 0 within %.0f s",
                                   r->o.start_timeout_s);
    }
    if (r->out.n && r->fd >= 0) {
        tern_code rc = tern_sv_out_flush(&r->out, r->fd, 0, st);
        if (rc) return rc;
    }
    if (tern_job_exited(&r->job)) {
        char how[64];
        tern_job_describe(&r->job, how, sizeof how);
        return tern_status_set(st, TERN_EIO, "the job's leader (pid %d) %s", (int)r->job.pid, how);
    }
    return TERN_OK;
}

static tern_code relaunch(tern_remote *r, tern_status *st)
{
    if (r->o.before_relaunch) {
        char *const *argv = r->argv;
        int dropped = 0;
        tern_code rc = r->o.before_relaunch(r->o.user, &argv, &dropped, st);
        pthread_mutex_lock(&r->mu);
        r->hosts_dropped += (uint64_t)(dropped > 0 ? dropped : 0);
        pthread_mutex_unlock(&r->mu);
        if (rc) return rc;
        r->argv = argv;
    }
    pthread_mutex_lock(&r->mu);
    r->restarts++;
    pthread_mutex_unlock(&r->mu);
    return launch(r, st);
}

static tern_code rm_step(void *self, bool *idle, tern_status *st)
{
    tern_remote *r = self;
    tern_finish *w = r->finish_why;
    int s = atomic_load(&r->state);
    if (s == R_FAILED) return tern_status_set(st, TERN_EIO, "%s", r->why);
    pthread_mutex_lock(&r->mu);
    bool busy = r->n_open > 0;
    pthread_mutex_unlock(&r->mu);
    *idle = !busy;
    if (s == R_DOWN) {
        answer_cancels(r, w);
        if (tern_sv_now() < r->t_relaunch) {
            rm_wait(r, busy ? POLL_MS : 0);
            return TERN_OK;
        }
        tern_status lst = {0};
        if (relaunch(r, &lst)) failed(r, lst.msg);
        return TERN_OK;
    }
    tern_status lst = {0};
    if (step_live(r, busy, w, &lst)) failed(r, lst.msg);
    if (atomic_load(&r->state) == R_FAILED) return tern_status_set(st, TERN_EIO, "%s", r->why);
    return TERN_OK;
}

/* ------------------------------------------------------------------ life cycle */

static void rm_free(tern_remote *r)
{
    if (!r) return;
    drop_connection(r);
    if (r->lfd >= 0) close(r->lfd);
    if (r->wake[0] >= 0) close(r->wake[0]), close(r->wake[1]);
    tern_journal_free(r->j);
    tern_sv_out_free(&r->out);
    pthread_mutex_destroy(&r->mu);
    free(r->slots), free(r->queue), free(r->finish), free(r->finish_why), free(r->ranks);
    free(r);
}

tern_code tern_remote_start(tern_remote **out, const tern_remote_opts *o,
                            volatile sig_atomic_t *stop, tern_status *st)
{
    *out = NULL;
    if (o->max_requests < 1 || o->max_requests >= (1 << SLOT_BITS) - 1) {
        close(o->listen_fd);
        return tern_status_set(st, TERN_EINVAL, "supervise: got %d open requests, expected 1..%d",
                               o->max_requests, (1 << SLOT_BITS) - 2);
    }
    tern_remote *r = calloc(1, sizeof *r);
    if (!r) {
        close(o->listen_fd);
        return tern_status_set(st, TERN_ENOMEM, "supervise: out of memory");
    }
    r->o = *o;
    if (!r->o.max_restarts) r->o.max_restarts = TERN_REMOTE_MAX_RESTARTS;
    if (r->o.start_timeout_s <= 0) r->o.start_timeout_s = TERN_REMOTE_START_S;
    if (r->o.heartbeat_timeout_s <= 0) r->o.heartbeat_timeout_s = TERN_REMOTE_HEARTBEAT_S;
    r->argv = o->argv;
    r->lfd = o->listen_fd;
    r->fd = -1;
    r->wake[0] = r->wake[1] = -1;
    r->cap = o->max_requests;
    r->free_head = -1;
    pthread_mutex_init(&r->mu, NULL);
    r->slots = calloc((size_t)r->cap, sizeof *r->slots);
    r->queue = calloc((size_t)r->cap, sizeof *r->queue);
    r->finish = calloc((size_t)r->cap, sizeof *r->finish);
    r->finish_why = calloc((size_t)r->cap, sizeof *r->finish_why);
    tern_code rc =
        !r->slots || !r->queue || !r->finish || !r->finish_why
            ? tern_status_set(st, TERN_ENOMEM, "supervise: out of memory for %d requests", r->cap)
            : tern_sv_out_init(&r->out, st);
    if (!rc && pipe(r->wake))
        rc = tern_status_set(st, TERN_EIO, "supervise: pipe: %s", strerror(errno));
    if (rc) {
        rm_free(r);
        return rc;
    }
    for (int i = 0; i < 2; i++) {
        fcntl(r->wake[i], F_SETFL, fcntl(r->wake[i], F_GETFL) | O_NONBLOCK);
        fcntl(r->wake[i], F_SETFD, FD_CLOEXEC);
    }
    for (int32_t i = r->cap - 1; i >= 0; i--)
        r->slots[i].next_free = r->free_head, r->free_head = i;
    if ((rc = launch(r, st))) {
        rm_free(r);
        return rc;
    }
    /* the first hello: the journal is sized by the context it announces */
    while (!r->have_hello) {
        if (stop && *stop) {
            tern_job_kill(&r->job, o->marker_flag, o->marker_value, false);
            rm_free(r);
            return tern_status_set(st, TERN_ECANCELLED, "supervise: stopped while starting");
        }
        bool idle;
        tern_status sst = {0};
        if (rm_step(r, &idle, &sst)) {
            tern_status_set(st, TERN_EIO, "%s", sst.msg);
            rm_free(r);
            return TERN_EIO;
        }
        if (atomic_load(&r->state) == R_DOWN) rm_wait(r, 50);
    }
    if ((rc = tern_journal_create(&r->j, r->cap, (int32_t)r->n_ctx, st))) {
        tern_job_kill(&r->job, o->marker_flag, o->marker_value, false);
        rm_free(r);
        return rc;
    }
    *out = r;
    return TERN_OK;
}

void tern_remote_backend(tern_remote *r, tern_backend *b)
{
    *b = (tern_backend){.self = r,
                        .submit = rm_submit,
                        .cancel = rm_cancel,
                        .step = rm_step,
                        .wait = rm_wait,
                        .stats = rm_stats,
                        .health = rm_health,
                        .metrics = rm_metrics,
                        .n_ctx = (int32_t)r->n_ctx,
                        .n_vocab = (int32_t)r->n_vocab,
                        .max_seqs = (int32_t)r->max_seqs,
                        .n_ranks = (int32_t)r->n_ranks};
}

int tern_remote_close(tern_remote *r, double wait_s)
{
    if (!r) return 0;
    if (r->fd >= 0) {
        tern_status st = {0};
        tern_sv_out_flush(&r->out, r->fd, 1.0, &st);
        shutdown(r->fd, SHUT_RDWR);
    }
    drop_connection(r);
    bool clean = tern_job_wait(&r->job, wait_s);
    int status = clean && WIFEXITED(r->job.status) ? WEXITSTATUS(r->job.status) : 1;
    int swept = tern_job_kill(&r->job, r->o.marker_flag, r->o.marker_value, true);
    if (!clean || swept)
        tern_log(TERN_LOG_WARN, "supervisor: the engine job %s; %d strays killed",
                 clean ? "exited" : "did not exit in time and was killed", swept);
    rm_free(r);
    return status;
}
