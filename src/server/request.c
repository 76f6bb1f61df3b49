/* request.c: request objects (shared by the connection, the streaming response and the engine,
 * counted in refs), the engine's callbacks, and the HTTP thread's side of waiting for tokens,
 * detokenizing them and matching stop strings. */
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "server/http-internal.h"
#include "ternpipe/log.h"

double tern_srv_mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

uint64_t tern_srv_mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* ids and default seeds: unique per request, not reproducible (that is what "seed" is for) */
uint64_t tern_srv_next_random(tern_server *s)
{
    return tern_srv_mix64(atomic_fetch_add(&s->ids, 1) ^ s->id_salt);
}

/* ------------------------------------------------------------------ request objects */

void tern_srv_req_release(req *r)
{
    pthread_mutex_lock(&r->mu);
    int left = --r->refs;
    pthread_mutex_unlock(&r->mu);
    if (left > 0) return;
    if (!r->pr_shared) tern_parsed_request_free(&r->pr);
    free(r->sibs); /* their references were dropped with the connection's (release_choices) */
    if (r->first) tern_srv_req_release(r->first);
    tern_sbuf_free(&r->text);
    tern_sbuf_free(&r->echo);
    tern_sbuf_free(&r->out);
    free(r->toks), free(r->tok_end), free(r->lps);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r);
}

void tern_srv_req_ref(req *r, int delta)
{
    pthread_mutex_lock(&r->mu);
    r->refs += delta;
    pthread_mutex_unlock(&r->mu);
}

req *tern_srv_req_new(tern_server *s, struct MHD_Connection *c)
{
    req *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->s = s;
    r->c = c;
    r->refs = 1; /* the connection's */
    pthread_mutex_init(&r->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->cv, &ca);
    pthread_condattr_destroy(&ca);
    return r;
}

/* unlinks r from the active list (s->mu held) */
void tern_srv_unlist(tern_server *s, req *r)
{
    if (!r->listed) return;
    if (r->prev)
        r->prev->next = r->next;
    else
        s->active = r->next;
    if (r->next) r->next->prev = r->prev;
    r->prev = r->next = NULL;
    r->listed = false;
    s->n_active--;
}

/* ------------------------------------------------------------------ engine callbacks */

void tern_srv_on_token(void *user, int32_t tok)
{
    req *r = user;
    tern_server *s = r->s;
    double t = tern_srv_mono_now();
    pthread_mutex_lock(&r->mu);
    if (r->n_pushed < r->cap) r->toks[r->n_pushed++] = tok;
    pthread_mutex_unlock(&r->mu);
    tern_srv_notify(r);
    bool first = r->t_last == 0;
    double dt = t - (first ? r->t_submit : r->t_last);
    r->t_last = t;
    tern_metrics_observe(&s->m, first ? &s->m.ttft : &s->m.itl, dt);
    pthread_mutex_lock(&s->m.mu);
    s->m.generated_tokens++;
    pthread_mutex_unlock(&s->m.mu);
}

/* just before on_token of the same token: its pick goes at the index that token takes */
void tern_srv_on_logprobs(void *user, const tern_pick *pick)
{
    req *r = user;
    pthread_mutex_lock(&r->mu);
    if (r->lps && r->n_pushed < r->cap) r->lps[r->n_pushed] = *pick;
    pthread_mutex_unlock(&r->mu);
}

void tern_srv_on_done(void *user, tern_finish why, const char *err)
{
    req *r = user;
    tern_server *s = r->s;
    tern_metrics_observe(&s->m, &s->m.e2e, tern_srv_mono_now() - r->t_submit);
    pthread_mutex_lock(&s->mu);
    tern_srv_unlist(s, r);
    tern_cancel_reason cw = r->cancel_asked ? r->cancel_why : TERN_CANCEL_NONE;
    pthread_mutex_unlock(&s->mu);
    tern_metrics_finish(&s->m, why, cw);
    pthread_mutex_lock(&r->mu);
    r->done = true;
    r->why = why;
    if (err) snprintf(r->err, sizeof r->err, "%s", err);
    pthread_mutex_unlock(&r->mu);
    tern_srv_notify(r);
    tern_srv_req_release(r); /* the engine's */
}

void tern_srv_notify(req *r)
{
    pthread_mutex_lock(&r->mu);
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    if (r->first) {
        pthread_mutex_lock(&r->first->mu);
        pthread_cond_broadcast(&r->first->cv);
        pthread_mutex_unlock(&r->first->mu);
    }
}

/* ------------------------------------------------------------------ admission and submission */

/* Takes a place among the accepted requests: 503 while not serving, 429 when full. */
int tern_srv_reserve(tern_server *s, req *r)
{
    pthread_mutex_lock(&s->mu);
    int status = 0;
    int st = atomic_load(&s->state);
    if (st != ST_READY)
        status = 503;
    else if (s->n_active >= s->cap_active)
        status = 429;
    else {
        r->listed = true;
        r->next = s->active;
        if (s->active) s->active->prev = r;
        s->active = r;
        s->n_active++;
        s->n_open++;
        r->open_counted = true;
    }
    pthread_mutex_unlock(&s->mu);
    if (!status) {
        pthread_mutex_lock(&s->m.mu);
        s->m.in_flight++;
        pthread_mutex_unlock(&s->m.mu);
    }
    return status;
}

/* undoes reserve for a request that never reached the engine */
void tern_srv_unreserve(tern_server *s, req *r)
{
    pthread_mutex_lock(&s->mu);
    tern_srv_unlist(s, r);
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_lock(&s->m.mu);
    s->m.in_flight--;
    pthread_mutex_unlock(&s->m.mu);
}

/* Submits choice r (listed by reserve) to the engine. On failure r is neither submitted nor
 * referenced by the engine (the caller unreserves it). */
tern_code tern_srv_submit_choice(tern_server *s, req *r, const int32_t *prompt, int32_t n_prompt,
                                 tern_status *st)
{
    tern_request rq = {.prompt = prompt,
                       .n_prompt = n_prompt,
                       .sampling = r->pr.sampling,
                       .max_new = r->max_tokens,
                       .on_token = tern_srv_on_token,
                       .on_logprobs = r->lps ? tern_srv_on_logprobs : NULL,
                       .on_done = tern_srv_on_done,
                       .response_format = r->pr.response_format,
                       .user = r};
    for (int32_t i = 0; i < s->n_stop_ids; i++) rq.stop[rq.n_stop++] = s->stop_ids[i];
    /* the engine's: taken before submit, the engine may call back at once */
    tern_srv_req_ref(r, 1);
    r->t_submit = tern_srv_mono_now();
    int64_t id = 0;
    tern_code rc = s->b.submit(s->b.self, &rq, &id, st);
    if (rc) {
        tern_srv_req_ref(r, -1);
        return rc;
    }
    pthread_mutex_lock(&s->m.mu);
    s->m.prompt_tokens += (uint64_t)n_prompt;
    pthread_mutex_unlock(&s->m.mu);
    pthread_mutex_lock(&s->mu);
    r->id = id;
    r->submitted = r->listed; /* on_done may already have unlisted it */
    bool cancel = r->cancel_asked && r->listed;
    bool orphan = r->failed_out; /* the engine failed meanwhile and will not call back */
    pthread_mutex_unlock(&s->mu);
    if (orphan) tern_srv_req_ref(r, -1);    /* the engine's (the connection still holds one) */
    if (cancel) s->b.cancel(s->b.self, id); /* the grace period ran out meanwhile */
    return TERN_OK;
}

/* n > 1: choices 1..n-1 of r, each a request of its own sampled with seed + i (README, "seed");
 * the prompt is prefilled for each. */
tern_code tern_srv_more_choices(tern_server *s, req *r, const int32_t *prompt, int32_t n_prompt,
                                tern_status *st)
{
    r->sibs = calloc((size_t)r->pr.n - 1, sizeof *r->sibs);
    if (!r->sibs) return tern_status_set(st, TERN_ENOMEM, "server: out of memory");
    for (int32_t i = 1; i < r->pr.n; i++) {
        req *q = tern_srv_req_new(s, r->c); /* its one reference: the first choice's */
        if (!q) return tern_status_set(st, TERN_ENOMEM, "server: out of memory");
        tern_srv_req_ref(r, 1); /* q's on the first */
        q->first = r;
        q->index = i;
        q->chat = r->chat, q->stream = r->stream, q->created = r->created;
        memcpy(q->cid, r->cid, sizeof q->cid);
        q->pr = r->pr;
        q->pr_shared = true;
        q->pr.sampling.seed = r->pr.sampling.seed + (uint64_t)i;
        q->n_prompt = n_prompt, q->max_tokens = r->max_tokens, q->cap = r->cap;
        r->sibs[r->n_sibs++] = q;
        q->toks = malloc((size_t)q->cap * sizeof *q->toks);
        q->tok_end = malloc((size_t)q->cap * sizeof *q->tok_end);
        if (r->lps) q->lps = calloc((size_t)q->cap, sizeof *q->lps);
        if (r->echo.len) tern_sbuf_add(&q->echo, r->echo.s, r->echo.len);
        if (!q->toks || !q->tok_end || (r->lps && !q->lps) || q->echo.oom)
            return tern_status_set(st, TERN_ENOMEM, "server: out of memory");
        tern_stop_init(&q->sm, (const char *const *)r->pr.stop, r->pr.n_stop);
        if (tern_srv_reserve(s, q)) /* full, or stopping meanwhile */
            return tern_status_set(st, TERN_EBUSY,
                                   "server: the %d choices of this request do not fit the %d "
                                   "places left for requests in flight; retry later",
                                   r->pr.n, s->cap_active);
        tern_code rc = tern_srv_submit_choice(s, q, prompt, n_prompt, st);
        if (rc) {
            tern_srv_unreserve(s, q);
            return rc;
        }
    }
    return TERN_OK;
}

/* ------------------------------------------------------------------ HTTP side of a request */

/* The peer closed (or reset) its side: POLLRDHUP is reported even while unread bytes (a
 * pipelined request) wait in the socket, where a peeked byte would hide the FIN. A client that
 * only half-closes after its request counts as gone too, as it did before. */
static bool client_gone(req *r)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return false;
    struct pollfd p = {.fd = ci->connect_fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return false;
    return (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

void tern_srv_cancel_choices(req *r, tern_cancel_reason why)
{
    for (int32_t i = 0; i <= r->n_sibs; i++) tern_srv_cancel_req(tern_srv_choice(r, i), why);
}

void tern_srv_consume_choices(req *r, bool *all_finished, bool *any_failed)
{
    *all_finished = true, *any_failed = false;
    for (int32_t i = 0; i <= r->n_sibs; i++) {
        req *q = tern_srv_choice(r, i);
        tern_srv_consume(q);
        *all_finished &= q->finished;
        *any_failed |= q->failed;
    }
}

void tern_srv_cancel_req(req *r, tern_cancel_reason why)
{
    tern_server *s = r->s;
    pthread_mutex_lock(&s->mu);
    bool live = r->listed && r->submitted;
    if (!r->cancel_asked) r->cancel_why = why;
    r->cancel_asked = true;
    int64_t id = r->id;
    pthread_mutex_unlock(&s->mu);
    if (live) s->b.cancel(s->b.self, id);
}

static void finish_as(req *r, const char *reason)
{
    r->finished = true;
    r->finish_reason = reason;
}

/* Moves newly generated tokens into r->text, matching stop strings after every token so the
 * count of tokens (usage) does not depend on how tokens were batched. */
void tern_srv_consume(req *r)
{
    if (r->finished) return;
    tern_server *s = r->s;
    pthread_mutex_lock(&r->mu);
    int32_t n = r->n_pushed;
    bool done = r->done;
    tern_finish why = r->why;
    pthread_mutex_unlock(&r->mu);
    char buf[TEXT_CHUNK];
    size_t vis;
    /* token ids below n_pushed are never written again: read them without the lock */
    while (r->n_taken < n) {
        int32_t t = r->toks[r->n_taken++];
        if (r->tok_end) {
            size_t pl = 0;
            tern_tokenizer_token_bytes(s->tok, t, &pl);
            int32_t start = r->n_taken > 1 ? r->tok_end[r->n_taken - 2] : 0;
            r->tok_end[r->n_taken - 1] = start + (int32_t)pl;
        }
        size_t w = tern_detok_push(s->tok, &r->dt, t, buf, sizeof buf);
        tern_sbuf_add(&r->text, buf, w);
        if (tern_stop_scan(&r->sm, r->text.s ? r->text.s : "", r->text.len, &vis)) {
            r->stop_hit = true;
            r->visible = vis;
            tern_srv_cancel_req(r, TERN_CANCEL_STOP_STRING);
            finish_as(r, "stop");
            return;
        }
        if (vis > r->visible) r->visible = vis;
    }
    if (!done) return;
    size_t w = tern_detok_flush(&r->dt, buf, sizeof buf);
    tern_sbuf_add(&r->text, buf, w);
    if (tern_stop_scan(&r->sm, r->text.s ? r->text.s : "", r->text.len, &vis)) {
        r->stop_hit = true;
        r->visible = vis;
        finish_as(r, "stop");
        return;
    }
    r->visible = r->text.len;
    if (why == TERN_FINISH_STOP)
        finish_as(r, "stop");
    else if (why == TERN_FINISH_LENGTH)
        finish_as(r, "length");
    else {
        r->failed = true;
        finish_as(r, NULL);
    }
}

/* Waits up to WAIT_MS for news from the engine; false when the client went away or the server
 * is closing for good. The client is checked on every wake-up, tokens or not: with tokens
 * flowing faster than one per WAIT_MS a check only on time-outs would never run, and a
 * non-streamed request of a client that left would run to max_tokens. */
bool tern_srv_wait_more(req *r)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_nsec += WAIT_MS * 1000000L;
    if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    pthread_mutex_lock(&r->mu);
    bool news = r->n_pushed > r->n_taken || (r->done && !r->finished);
    for (int32_t i = 0; i < r->n_sibs && !news; i++) { /* lock order: first, then the others */
        req *q = r->sibs[i];
        pthread_mutex_lock(&q->mu);
        news = q->n_pushed > q->n_taken || (q->done && !q->finished);
        pthread_mutex_unlock(&q->mu);
    }
    if (!news) pthread_cond_timedwait(&r->cv, &r->mu, &ts);
    pthread_mutex_unlock(&r->mu);
    if (atomic_load(&r->s->state) == ST_CLOSED) return false;
    return !client_gone(r);
}
