/* remote.c: see remote.h; the job, its frames, detection and replay (the entry points and life
 * cycle: remote-api.c). */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "supervise/remote-internal.h"
#include "ternpipe/log.h"

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

/* ------------------------------------------------------------------ the job */

tern_code tern_rm_launch(tern_remote *r, tern_status *st)
{
    r->have_hello = false;
    r->t_launch = tern_sv_now();
    tern_code rc = tern_job_start(&r->job, r->argv, st);
    if (!rc) atomic_store(&r->state, R_LAUNCHING);
    return rc;
}

void tern_rm_drop_connection(tern_remote *r)
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
    tern_rm_drop_connection(r);
    tern_log(TERN_LOG_ERROR, "supervisor: engine job failed: %s (%d open requests)", why,
             r->n_open);
    int swept = tern_job_kill(&r->job, r->o.marker_flag, r->o.marker_value, false);
    char how[64];
    tern_job_describe(&r->job, how, sizeof how);
    r->failures++;
    pthread_mutex_lock(&r->mu);
    double since = r->n_open ? now - r->last_progress : 0;
    if (since < 0) since = 0;
    tern_rm_observe(&r->detect, since);
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
    if (r->o.token && (!m->token || strcmp(m->token, r->o.token) != 0)) {
        r->impostor = true; /* not our job's rank 0: dropped, the real one is still awaited */
        return TERN_OK;
    }
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
        tern_rm_observe(&r->recover, r->t_ready - r->t_detect);
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
    slot *s = tern_rm_lookup(r, m->id); /* the serving thread alone frees slots */
    if (!s) return TERN_OK;             /* answered here meanwhile (a cancel that crossed it) */
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
    slot *s = tern_rm_lookup(r, m->id);
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
                tern_rm_observe(&r->recover, now - r->t_detect);
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
            r->last_heard = r->t_accept = now;
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
        if (!r->have_hello &&
            (rc || eof || r->impostor || now - r->t_accept > TERN_REMOTE_HELLO_S)) {
            /* not (yet) the job's rank 0: a stranger, or a connection that never said hello;
             * the job's own exit or the start timeout catch a rank 0 that died */
            tern_log(TERN_LOG_WARN, "supervisor: dropped a connection that %s",
                     r->impostor ? "said hello without the job's token"
                     : rc        ? "sent no valid hello"
                     : eof       ? "closed before its hello"
                                 : "said no hello in time");
            r->impostor = false;
            close(r->fd);
            r->fd = -1;
            tern_sv_reader_free(r->rd);
            r->rd = NULL;
            return TERN_OK;
        }
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
    return tern_rm_launch(r, st);
}

tern_code tern_rm_step(void *self, bool *idle, tern_status *st)
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
            tern_rm_wait(r, busy ? POLL_MS : 0);
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
