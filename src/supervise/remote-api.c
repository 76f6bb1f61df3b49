/* remote-api.c: the remote engine's backend entry points (submit, cancel, wait, stats, health,
 * metrics) and its life cycle (start, backend, close); see remote.h. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "supervise/remote-internal.h"
#include "ternpipe/log.h"

const double tern_rm_le[N_BUCKETS] = {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120};

static void wake(tern_remote *r)
{
    char c = 1;
    ssize_t k = write(r->wake[1], &c, 1);
    (void)k;
}

/* frees a slot (mu held) */
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
    slot *s = tern_rm_lookup(r, (uint64_t)id);
    if (s && !s->cancel) s->cancel = true, r->n_cancel++;
    pthread_mutex_unlock(&r->mu);
    if (s) wake(r);
}

void tern_rm_wait(void *self, int timeout_ms)
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
            n = snprintf(line, sizeof line, "%s_bucket{le=\"%g\"} %llu\n", name, tern_rm_le[k],
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

/* ------------------------------------------------------------------ life cycle */

static void rm_free(tern_remote *r)
{
    if (!r) return;
    tern_rm_drop_connection(r);
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
    if ((rc = tern_rm_launch(r, st))) {
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
        if (tern_rm_step(r, &idle, &sst)) {
            tern_status_set(st, TERN_EIO, "%s", sst.msg);
            rm_free(r);
            return TERN_EIO;
        }
        if (atomic_load(&r->state) == R_DOWN) tern_rm_wait(r, 50);
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
                        .step = tern_rm_step,
                        .wait = tern_rm_wait,
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
    tern_rm_drop_connection(r);
    bool clean = tern_job_wait(&r->job, wait_s);
    int status = clean && WIFEXITED(r->job.status) ? WEXITSTATUS(r->job.status) : 1;
    int swept = tern_job_kill(&r->job, r->o.marker_flag, r->o.marker_value, true);
    if (!clean || swept)
        tern_log(TERN_LOG_WARN, "supervisor: the engine job %s; %d strays killed",
                 clean ? "exited" : "did not exit in time and was killed", swept);
    rm_free(r);
    return status;
}
