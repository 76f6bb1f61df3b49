/* server.c: the HTTP front end (see server.h): its life cycle (create, attach, stop) and the
 * engine-thread serving loop. Requests live in request.c, answers in respond.c, routes and
 * libmicrohttpd's callbacks in routes.c; what they share in http-internal.h.
 *
 * Threads and ownership:
 * - libmicrohttpd runs one thread per connection. Those threads parse, tokenize, submit and
 *   cancel; they never call any other engine function (the engine thread is the MPI thread).
 * - A request (struct req) is shared by three holders, counted in refs: the connection (until
 *   libmicrohttpd reports the request completed), the streaming response (until its free
 *   callback) and the engine (from submit until on_done). Whoever drops the last ref frees it.
 * - The engine's callbacks only append token ids to the request's array (preallocated for
 *   max_tokens, so the engine thread never allocates) and signal its condition variable; the
 *   HTTP thread detokenizes, matches stop strings and writes JSON, so streamed and non-streamed
 *   answers go through the same code and give the same text.
 * - A client that goes away is noticed either by a failed write (libmicrohttpd then reports
 *   the request completed with an error) or, while waiting for tokens, by peeking at its
 *   socket; both cancel the sequence so its KV blocks are freed on every rank in one step.
 * - Shutdown: tern_server_stop sets a flag; the engine loop switches to draining under the
 *   server lock (so no request can slip into the engine afterwards), waits for running
 *   requests up to the grace period, cancels the rest, waits until the engine holds no request
 *   and the last responses are written, then returns.
 * - Engine failure (a step past its deadline: a hung or dead rank): the engine calls nobody
 *   back any more, so the loop answers every request it held itself (an error event and
 *   [DONE] on streams, a 500 on the others), /health says 503 with the reason, new requests
 *   get 503, and once the answers are written (FAIL_FLUSH_S at most) tern_server_run returns
 *   the error; closing the engine then ends every rank.
 */
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

/* ------------------------------------------------------------------ life cycle */

tern_code tern_server_check_api_key(const char *key, const char *what, tern_status *st)
{
    size_t n = strlen(key), blank = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)key[i];
        if (c == ' ' || c == '\t') {
            blank++;
        } else if (c < 0x20 || c == 0x7f) {
            return tern_status_set(st, TERN_EINVAL,
                                   "%s: got a control character at byte %zu, expected a key of "
                                   "printable characters",
                                   what, i);
        }
    }
    if (n == 0)
        return tern_status_set(st, TERN_EINVAL,
                               "%s: got an empty key, expected a non-empty key (leave it unset "
                               "to serve without authentication)",
                               what);
    if (blank == n)
        return tern_status_set(st, TERN_EINVAL, "%s: got a blank key (%zu spaces), expected a key",
                               what, n);
    if (blank && (key[0] == ' ' || key[0] == '\t' || key[n - 1] == ' ' || key[n - 1] == '\t'))
        return tern_status_set(st, TERN_EINVAL,
                               "%s: got white space at the start or end of the key, expected "
                               "none (no request could match it)",
                               what);
    return TERN_OK;
}

tern_code tern_server_create(tern_server **out, const tern_server_opts *o, tern_status *st)
{
    *out = NULL;
    tern_server *s = calloc(1, sizeof *s);
    if (!s) return tern_status_set(st, TERN_ENOMEM, "server: out of memory");
    s->o = *o;
    snprintf(s->host, sizeof s->host, "%s", o->host ? o->host : "127.0.0.1");
    snprintf(s->model, sizeof s->model, "%s", o->model_name ? o->model_name : "ternpipe");
    s->port = o->port > 0 ? o->port : 8080;
    if (s->o.max_queue == 0) s->o.max_queue = 256;
    if (s->o.max_queue < 0) s->o.max_queue = 0;
    if (s->o.default_max_tokens <= 0) s->o.default_max_tokens = 128;
    if (s->o.grace_s <= 0) s->o.grace_s = 30;
    if (s->o.max_body == 0) s->o.max_body = 1u << 20;
    if (s->o.max_conns <= 0) s->o.max_conns = DEFAULT_MAX_CONNS;
    if (s->o.max_conns_per_ip == 0) s->o.max_conns_per_ip = DEFAULT_MAX_CONNS_PER_IP;
    if (s->o.request_timeout_s <= 0) s->o.request_timeout_s = DEFAULT_REQUEST_TIMEOUT_S;
    s->lfd = -1;
    if (o->api_key && tern_server_check_api_key(o->api_key, "api_key", st)) {
        free(s);
        return TERN_EINVAL;
    }
    if (o->api_key) {
        s->api_key = strdup(o->api_key);
        if (!s->api_key) {
            free(s);
            return tern_status_set(st, TERN_ENOMEM, "server: out of memory");
        }
    }
    s->o.host = s->host;
    s->o.api_key = s->api_key;
    s->o.model_name = s->model;
    pthread_mutex_init(&s->mu, NULL);
    tern_metrics_init(&s->m);
    atomic_init(&s->state, ST_LOADING);
    atomic_init(&s->ids, 1);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    s->id_salt = tern_srv_mix64((uint64_t)ts.tv_sec * 1000000007ull ^ (uint64_t)ts.tv_nsec ^
                                (uint64_t)getpid() << 32);
    s->started = (long long)ts.tv_sec;

    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", s->port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    int gai = getaddrinfo(s->host, portstr, &hints, &ai);
    if (gai != 0 || !ai) {
        tern_status_set(st, TERN_EINVAL, "--host: got '%s', expected an address to bind (%s)",
                        s->host, gai_strerror(gai));
        if (ai) freeaddrinfo(ai);
        tern_server_free(s);
        return TERN_EINVAL;
    }
    /* the gate accepts (gate.c): libmicrohttpd gets only connections with a good head */
    s->lfd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (s->lfd >= 0) setsockopt(s->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (s->lfd >= 0 && ai->ai_family == AF_INET6)
        setsockopt(s->lfd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    int bind_errno = 0;
    if (s->lfd < 0 || bind(s->lfd, ai->ai_addr, ai->ai_addrlen) || listen(s->lfd, LISTEN_BACKLOG))
        bind_errno = errno ? errno : EADDRINUSE;
    freeaddrinfo(ai);
    if (bind_errno) {
        tern_status_set(st, TERN_EIO,
                        "server: listening on %s port %d: got an error (%s), expected a free "
                        "port (--port)",
                        s->host, s->port, strerror(bind_errno));
        tern_server_free(s);
        return TERN_EIO;
    }
    struct sockaddr_storage sa;
    socklen_t sl = sizeof sa;
    if (!getsockname(s->lfd, (struct sockaddr *)&sa, &sl))
        s->port = ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&sa)->sin6_port
                                                 : ((struct sockaddr_in *)&sa)->sin_port);
    int max_conns = tern_gate_fd_budget(s->o.max_conns);
    if (max_conns < s->o.max_conns)
        tern_log(TERN_LOG_WARN,
                 "http: open files limit allows %d connections, expected %d (--max-conns; "
                 "raise ulimit -n)",
                 max_conns, s->o.max_conns);
    s->o.max_conns = max_conns;
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_POLL | MHD_USE_ERROR_LOG | MHD_USE_NO_LISTEN_SOCKET | MHD_USE_ITC;
    s->d = MHD_start_daemon(
        flags, 0, NULL, NULL, tern_srv_handler, s, MHD_OPTION_NOTIFY_COMPLETED, tern_srv_completed,
        s, MHD_OPTION_NOTIFY_CONNECTION, tern_srv_notify_conn, s, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)IDLE_TIMEOUT_S, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)(max_conns + MHD_LIMIT_MARGIN), MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)TERN_HTTP_POOL, MHD_OPTION_EXTERNAL_LOGGER, tern_srv_mhd_log, NULL, MHD_OPTION_END);
    if (!s->d) {
        tern_status_set(st, TERN_EIO, "server: starting the HTTP threads: got an error (%s)",
                        strerror(errno ? errno : EIO));
        tern_server_free(s);
        return TERN_EIO;
    }
    tern_gate_limits lim = {.max_conns = max_conns,
                            .max_per_ip = s->o.max_conns_per_ip,
                            .request_timeout_s = s->o.request_timeout_s};
    tern_code grc = tern_gate_start(&s->gate, s->lfd, s->d, &lim, st);
    if (grc) {
        tern_server_free(s);
        return grc;
    }
    *out = s;
    return TERN_OK;
}

int tern_server_port(const tern_server *s)
{
    return s->port;
}

static tern_code local_submit(void *e, const tern_request *r, int64_t *id, tern_status *st)
{
    return tern_engine_submit(e, r, id, st);
}
static void local_cancel(void *e, int64_t id)
{
    tern_engine_cancel(e, id);
}
static tern_code local_step(void *e, bool *idle, tern_status *st)
{
    return tern_engine_step(e, idle, st);
}
static void local_wait(void *e, int timeout_ms)
{
    tern_engine_wait(e, timeout_ms);
}
static void local_stats(void *e, tern_engine_stats *s)
{
    tern_engine_stats_get(e, s);
}

void tern_server_attach(tern_server *s, tern_engine *e, const tern_tokenizer *tok)
{
    tern_backend b = {.self = e,
                      .submit = local_submit,
                      .cancel = local_cancel,
                      .step = local_step,
                      .wait = local_wait,
                      .stats = local_stats,
                      .n_ctx = tern_engine_n_ctx(e),
                      .n_vocab = tern_engine_hparams(e)->n_vocab,
                      .max_seqs = tern_engine_max_seqs(e),
                      .n_ranks = tern_engine_n_ranks(e)};
    tern_server_attach_backend(s, &b, tok);
}

void tern_server_attach_backend(tern_server *s, const tern_backend *b, const tern_tokenizer *tok)
{
    s->b = *b;
    s->tok = tok;
    s->n_ctx = b->n_ctx;
    s->n_vocab = b->n_vocab;
    s->max_seqs = b->max_seqs;
    s->n_ranks = b->n_ranks;
    s->cap_active = s->max_seqs + s->o.max_queue;
    s->n_stop_ids = 0;
    int32_t eos = tern_tokenizer_eos(tok), eot = tern_tokenizer_eot(tok);
    if (eos >= 0) s->stop_ids[s->n_stop_ids++] = eos;
    if (eot >= 0 && eot != eos) s->stop_ids[s->n_stop_ids++] = eot;
    tern_metrics_snapshot(&s->m, &s->b);
    pthread_mutex_lock(&s->mu);
    int expected = ST_LOADING;
    atomic_compare_exchange_strong(&s->state, &expected, ST_READY);
    pthread_mutex_unlock(&s->mu);
}

void tern_server_stop(tern_server *s)
{
    if (s) s->stop = s->stop < 2 ? s->stop + 1 : 2;
}

static void snapshot(tern_server *s)
{
    tern_metrics_snapshot(&s->m, &s->b);
}

/* The engine failed and will call no request back: answer each one it held (or was about to
 * get) as on_done would with an error, and refuse everything from now on. */
static void fail_all(tern_server *s, const char *why)
{
    pthread_mutex_lock(&s->mu);
    snprintf(s->failure, sizeof s->failure, "%s", why);
    atomic_store(&s->state, ST_FAILED);
    int32_t n = 0;
    while (s->active) {
        req *r = s->active;
        tern_srv_unlist(s, r);
        bool held = r->submitted; /* else its HTTP thread drops the engine's ref after submit */
        r->failed_out = true;
        tern_cancel_reason cw = r->cancel_asked ? r->cancel_why : TERN_CANCEL_NONE;
        pthread_mutex_unlock(&s->mu);
        tern_metrics_finish(&s->m, TERN_FINISH_ERROR, cw);
        pthread_mutex_lock(&r->mu);
        r->done = true;
        r->why = TERN_FINISH_ERROR;
        snprintf(r->err, sizeof r->err, "%s", why);
        pthread_mutex_unlock(&r->mu);
        tern_srv_notify(r);
        if (held) tern_srv_req_release(r); /* the engine's */
        n++;
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    tern_log(TERN_LOG_ERROR, "engine failed, %d requests answered with the error: %s", n, why);
}

tern_code tern_server_run(tern_server *s, tern_status *st)
{
    if (!s->b.self) return tern_status_set(st, TERN_EINVAL, "server: run before attach");
    tern_log(TERN_LOG_INFO,
             "serving %s on http://%s:%d (pid %d, %d ranks, context %d, %d slots, API key "
             "authentication %s)",
             s->model, s->host, s->port, (int)getpid(), s->n_ranks, s->n_ctx, s->max_seqs,
             s->api_key ? "on" : "off");
    double last_stats = 0, deadline = 0;
    bool cancelled_all = false;
    tern_code rc = TERN_OK;
    for (;;) {
        bool idle = false;
        tern_status est = {0};
        if (s->b.step(s->b.self, &idle, &est)) {
            rc = tern_status_set(st, est.code, "%s", est.msg);
            fail_all(s, est.msg);
            break;
        }
        double t = tern_srv_mono_now();
        if (idle || t - last_stats >= STATS_PERIOD_S) {
            snapshot(s);
            last_stats = t;
        }
        if (s->stop && atomic_load(&s->state) == ST_READY) {
            pthread_mutex_lock(&s->mu);
            atomic_store(&s->state, ST_DRAINING);
            int32_t n = s->n_active;
            pthread_mutex_unlock(&s->mu);
            deadline = t + s->o.grace_s;
            tern_log(TERN_LOG_INFO, "stopping: %d requests in flight, %.0f s grace", n,
                     s->o.grace_s);
        }
        if (atomic_load(&s->state) == ST_DRAINING) {
            if (s->stop >= 2) deadline = t; /* asked twice: no more grace */
            pthread_mutex_lock(&s->mu);
            int32_t n = s->n_active;
            if (!cancelled_all && t >= deadline && n > 0) {
                /* grace is over: cancel what is left (those not yet submitted see the flag) */
                for (req *r = s->active; r; r = r->next) {
                    if (!r->cancel_asked) r->cancel_why = TERN_CANCEL_SHUTDOWN;
                    r->cancel_asked = true;
                    if (r->submitted) s->b.cancel(s->b.self, r->id);
                }
                cancelled_all = true;
                tern_log(TERN_LOG_WARN, "stopping: grace period over, cancelling %d requests", n);
            }
            pthread_mutex_unlock(&s->mu);
            if (n == 0) break;
        }
        if (idle) s->b.wait(s->b.self, 50);
    }
    /* the engine holds no request now; let the last responses reach their clients */
    double t_end = tern_srv_mono_now();
    double until = t_end + (rc ? FAIL_FLUSH_S : FLUSH_TIMEOUT_S), hold = rc ? FAIL_HOLD_S : 0;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        int32_t n = s->n_open;
        pthread_mutex_unlock(&s->mu);
        double t = tern_srv_mono_now();
        if ((n <= 0 && t >= t_end + hold) || t > until) break;
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    snapshot(s);
    atomic_store(&s->state, ST_CLOSED);
    tern_log(TERN_LOG_INFO, "stopped serving");
    return rc;
}

void tern_server_free(tern_server *s)
{
    if (!s) return;
    atomic_store(&s->state, ST_CLOSED);
    tern_gate_stop(s->gate); /* no new connections first */
    if (s->lfd >= 0) close(s->lfd);
    if (s->d) MHD_stop_daemon(s->d);
    tern_gate_free(s->gate); /* the daemon's connections released their places */
    tern_metrics_destroy(&s->m);
    pthread_mutex_destroy(&s->mu);
    free(s->api_key);
    free(s);
}
