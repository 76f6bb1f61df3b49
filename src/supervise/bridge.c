/* bridge.c: see bridge.h. */
#define _POSIX_C_SOURCE 200809L
#include "supervise/bridge.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "supervise/sock.h"
#include "supervise/wire.h"
#include "ternpipe/gguf.h"
#include "ternpipe/log.h"

typedef struct breq breq;
typedef struct bridge bridge;

/* a request the supervisor sent, from its Submit to its Done */
struct breq {
    bridge *b;
    uint64_t sid; /* the supervisor's id */
    int64_t eid;  /* the engine's */
    bool has_pick;
    tern_pick pick; /* the pick of the token on_token is about to deliver */
    breq *prev, *next;
};

struct bridge {
    tern_engine *e;
    int fd;
    tern_sv_out out;
    tern_sv_reader *rd;
    breq *head;
    int32_t n_open;
    tern_code err; /* a send failed inside a callback: the run ends with it */
    tern_status est;
    double silence_s;
    tern_rank_stats *ranks; /* [n_ranks] */
    int32_t n_ranks;
};

static void put(bridge *b, const tern_sv_msg *m)
{
    if (b->err) return;
    b->err = tern_sv_out_put(&b->out, b->fd, m, b->silence_s, &b->est);
}

static void unlink_req(bridge *b, breq *q)
{
    if (q->prev)
        q->prev->next = q->next;
    else
        b->head = q->next;
    if (q->next) q->next->prev = q->prev;
    b->n_open--;
}

static void on_logprobs(void *user, const tern_pick *pick)
{
    breq *q = user;
    q->pick = *pick;
    q->has_pick = true;
}

static void on_token(void *user, int32_t token)
{
    breq *q = user;
    tern_sv_msg m = {.kind = TERN_SV_TOKENS, .id = q->sid, .ids = &token, .n_ids = 1};
    if (q->has_pick) m.pick = &q->pick;
    q->has_pick = false;
    put(q->b, &m);
}

static void on_done(void *user, tern_finish why, const char *error)
{
    breq *q = user;
    tern_sv_msg m = {.kind = TERN_SV_DONE, .id = q->sid, .finish = (uint32_t)why};
    if (error) snprintf(m.error, sizeof m.error, "%s", error);
    put(q->b, &m);
    unlink_req(q->b, q);
    free(q);
}

static void submit(bridge *b, const tern_sv_msg *m)
{
    breq *q = calloc(1, sizeof *q);
    tern_sv_msg done = {.kind = TERN_SV_DONE, .id = m->id, .finish = TERN_FINISH_ERROR};
    if (!q) {
        snprintf(done.error, sizeof done.error, "rank 0: out of memory for a request");
        put(b, &done);
        return;
    }
    q->b = b, q->sid = m->id;
    tern_request r = {.prompt = m->ids,
                      .n_prompt = m->n_ids,
                      .sampling = m->sampling,
                      .max_new = m->max_new,
                      .resumed = m->resumed,
                      .n_stop = m->n_stop,
                      .response_format = m->response_format,
                      .on_token = on_token,
                      .on_logprobs = m->sampling.n_logprobs > 0 ? on_logprobs : NULL,
                      .on_done = on_done,
                      .user = q};
    memcpy(r.stop, m->stop, sizeof r.stop);
    /* listed first: the engine calls back on this thread only, inside a later step */
    q->next = b->head;
    if (b->head) b->head->prev = q;
    b->head = q;
    b->n_open++;
    tern_status st = {0};
    if (tern_engine_submit(b->e, &r, &q->eid, &st)) {
        unlink_req(b, q);
        free(q);
        snprintf(done.error, sizeof done.error, "%s", st.msg);
        put(b, &done);
    }
}

static void cancel(bridge *b, uint64_t sid)
{
    for (breq *q = b->head; q; q = q->next)
        if (q->sid == sid) {
            tern_engine_cancel(b->e, q->eid);
            return;
        }
}

static void cancel_all(bridge *b)
{
    for (breq *q = b->head; q; q = q->next) tern_engine_cancel(b->e, q->eid);
}

static void send_stats(bridge *b)
{
    tern_engine_stats s = {.ranks = b->ranks, .cap_ranks = b->n_ranks};
    tern_engine_stats_get(b->e, &s);
    tern_sv_msg m = {.kind = TERN_SV_STATS, .stats = s};
    put(b, &m);
}

/* the frames that have arrived; *closed when the supervisor hung up */
static tern_code take_input(bridge *b, bool *closed, double *last_heard, tern_status *st)
{
    bool eof = false;
    tern_code rc = tern_sv_read(b->fd, b->rd, &eof, st);
    if (rc) return rc;
    for (;;) {
        tern_sv_msg m;
        bool got = false;
        if ((rc = tern_sv_reader_next(b->rd, &m, &got, st))) return rc;
        if (!got) break;
        *last_heard = tern_sv_now();
        if (m.kind == TERN_SV_SUBMIT)
            submit(b, &m);
        else if (m.kind == TERN_SV_CANCEL)
            cancel(b, m.id);
        else if (m.kind != TERN_SV_HEARTBEAT)
            return tern_status_set(st, TERN_EFORMAT,
                                   "rank 0: got a frame of kind %d from the supervisor, expected "
                                   "submit, cancel or heartbeat",
                                   (int)m.kind);
    }
    if (eof) *closed = true;
    return TERN_OK;
}

static tern_code serve(bridge *b, const tern_bridge_opts *o, tern_status *st)
{
    double hb_s = o->heartbeat_s > 0 ? o->heartbeat_s : TERN_BRIDGE_HEARTBEAT_S;
    double now = tern_sv_now(), last_heard = now, last_hb = 0, last_stats = 0;
    double drain_until = 0;
    bool closing = false, idle = true;
    uint64_t seq = 0;
    tern_code rc = TERN_OK;
    for (;;) {
        if (!closing) {
            struct pollfd p = {.fd = b->fd, .events = POLLIN | (b->out.n ? POLLOUT : 0)};
            poll(&p, 1, idle ? 50 : 0);
            bool closed = false;
            if ((rc = take_input(b, &closed, &last_heard, st))) return rc;
            if (closed || (o->stop && *o->stop)) {
                /* the supervisor is gone (or asked us to stop): end what is running */
                tern_log(TERN_LOG_INFO, "rank 0: the supervisor %s; cancelling %d requests",
                         closed ? "closed the connection" : "stopped us", b->n_open);
                cancel_all(b);
                closing = true;
                drain_until = tern_sv_now() + TERN_BRIDGE_DRAIN_S;
            }
        }
        tern_status est = {0};
        if (tern_engine_step(b->e, &idle, &est)) {
            tern_sv_msg m = {.kind = TERN_SV_HEARTBEAT, .id = ++seq, .state = 2};
            snprintf(m.error, sizeof m.error, "%s", est.msg);
            if (!closing && !b->err) {
                put(b, &m);
                tern_sv_out_flush(&b->out, b->fd, 1.0, &b->est);
            }
            return tern_status_set(st, est.code, "%s", est.msg);
        }
        now = tern_sv_now();
        if (closing) {
            if (idle || now > drain_until) return TERN_OK;
            continue;
        }
        if (b->err) return tern_status_set(st, b->err, "%s", b->est.msg);
        if (now - last_heard > o->silence_s)
            return tern_status_set(st, TERN_EIO,
                                   "rank 0: the supervisor was silent for %.1f s (limit %.1f s)",
                                   now - last_heard, o->silence_s);
        if (now - last_hb >= hb_s) {
            tern_sv_msg m = {.kind = TERN_SV_HEARTBEAT, .id = ++seq, .state = 1};
            put(b, &m);
            last_hb = now;
        }
        if (now - last_stats >= TERN_BRIDGE_STATS_S) {
            send_stats(b);
            last_stats = now;
        }
        if (b->out.n && (rc = tern_sv_out_flush(&b->out, b->fd, 0, st))) return rc;
        if (b->err) return tern_status_set(st, b->err, "%s", b->est.msg);
    }
}

tern_code tern_bridge_run(tern_engine *e, const tern_bridge_opts *o, tern_status *st)
{
    bridge b = {.e = e, .fd = -1};
    tern_bridge_opts oo = *o;
    if (oo.silence_s <= 0) oo.silence_s = TERN_BRIDGE_SILENCE_S;
    b.silence_s = oo.silence_s;
    b.n_ranks = tern_engine_n_ranks(e);
    b.ranks = calloc((size_t)b.n_ranks, sizeof *b.ranks);
    const tern_hparams *hp = tern_engine_hparams(e);
    tern_code rc = !b.ranks ? tern_status_set(st, TERN_ENOMEM, "rank 0: out of memory")
                            : tern_sv_out_init(&b.out, st);
    if (!rc) rc = tern_sv_reader_create(&b.rd, hp->n_vocab, st);
    if (!rc) rc = tern_sock_connect(oo.addr, TERN_BRIDGE_CONNECT_S, &b.fd, st);
    if (!rc) {
        tern_sv_msg h = {.kind = TERN_SV_HELLO,
                         .version = TERN_SV_VERSION,
                         .model_checksum = tern_gguf_checksum(tern_engine_gguf(e)),
                         .n_ctx = (uint32_t)tern_engine_n_ctx(e),
                         .n_vocab = (uint32_t)hp->n_vocab,
                         .max_seqs = (uint32_t)tern_engine_max_seqs(e),
                         .n_ranks = (uint32_t)b.n_ranks,
                         .token = getenv(TERN_SV_TOKEN_ENV)};
        rc = tern_sv_out_put(&b.out, b.fd, &h, oo.silence_s, st);
        if (!rc) rc = tern_sv_out_flush(&b.out, b.fd, oo.silence_s, st);
    }
    if (!rc) {
        tern_log(TERN_LOG_INFO, "rank 0: reporting to the supervisor at %s (process %d, %d ranks)",
                 oo.addr, (int)getpid(), b.n_ranks);
        rc = serve(&b, &oo, st);
    }
    if (rc == TERN_OK && b.out.n) tern_sv_out_flush(&b.out, b.fd, 1.0, &b.est);
    while (b.head) { /* a failed run: the engine calls nobody back any more */
        breq *q = b.head;
        b.head = q->next;
        free(q);
    }
    if (b.fd >= 0) close(b.fd);
    tern_sv_reader_free(b.rd);
    tern_sv_out_free(&b.out);
    free(b.ranks);
    return rc;
}
