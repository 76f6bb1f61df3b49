/* server.c: the HTTP front end (see server.h): routes, request life cycle, SSE streaming and
 * the engine-thread serving loop.
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
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <microhttpd.h>

#include "server/server-internal.h"
#include "ternpipe/log.h"
#include "ternpipe/server.h"
#include "ternpipe/tokenizer.h"

enum { ST_LOADING = 0, ST_READY, ST_DRAINING, ST_FAILED, ST_CLOSED };

#define TEXT_CHUNK 8192      /* bytes one detokenized token may produce */
#define WAIT_MS 100          /* how often a waiting HTTP thread checks its client */
#define STATS_PERIOD_S 0.010 /* engine stats snapshots at most this often while busy */
#define HARD_BODY_FACTOR 64  /* bodies beyond max_body are read and dropped up to this */
#define FLUSH_TIMEOUT_S 10.0 /* after draining: time left for the last responses */
#define FAIL_FLUSH_S 5.0     /* after an engine failure: time left for the error answers */
#define FAIL_HOLD_S 1.0      /* and at least this long /health says why (monitors, probes) */
/* Connection limits (issue 10). Every connection is a thread here (libmicrohttpd's thread per
 * connection), so the total bounds threads and descriptors: 1000 is far above what one
 * engine serves at once (--max-seqs + --max-queue = 320 by default), so real clients never
 * meet it, while a flood stops there and is answered 503 instead of exhausting the process.
 * Per address, 128: more than any single client needs at once (a 64-stream benchmark fits
 * twice), so a single host can take at most an eighth of the server; behind a reverse proxy
 * every client shares one address, so it is an option (--max-conns-per-ip, -1 = none).
 * The request deadline counts from accept to the whole request (head and body), and is not
 * restarted by each byte as libmicrohttpd's idle time-out is: 30 s lets a 1 MiB body through
 * a 40 kB/s link, while a client trickling bytes holds its place for at most that long. */
#define DEFAULT_MAX_CONNS 1000
#define DEFAULT_MAX_CONNS_PER_IP 128
#define DEFAULT_REQUEST_TIMEOUT_S 30.0
/* libmicrohttpd's own limit sits above ours, so it never meets it (it would reset) */
#define MHD_LIMIT_MARGIN 16
/* libmicrohttpd's idle time-out, for what comes after the request: a client that stops
 * reading its response for this long is dropped */
#define IDLE_TIMEOUT_S 120
#define TERN_HTTP_POOL (4 * TERN_HTTP_MAX_HEAD) /* libmicrohttpd's memory per connection */
#define LISTEN_BACKLOG 512

typedef struct req req;

struct tern_server {
    tern_server_opts o;
    char host[256];
    char model[128];
    char *api_key;
    struct MHD_Daemon *d;
    int lfd; /* the listening socket (the gate accepts on it) */
    tern_gate *gate;
    int port;
    atomic_int state;
    volatile sig_atomic_t stop; /* set from signal handlers */
    tern_engine *e;
    char failure[TERN_STATUS_MSG_MAX]; /* why the engine failed (ST_FAILED; set before it) */
    const tern_tokenizer *tok;
    int32_t n_ctx, n_vocab, max_seqs, n_ranks, cap_active; /* copied at attach */
    int32_t stop_ids[4], n_stop_ids;
    pthread_mutex_t mu; /* state changes, the active list, n_open */
    req *active;        /* accepted requests the engine may still call back */
    int32_t n_active;
    int32_t n_open; /* requests whose HTTP side is not done */
    atomic_uint_fast64_t ids;
    uint64_t id_salt;
    long long started;
    tern_metrics m;
};

struct req {
    tern_server *s;
    struct MHD_Connection *c;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;
    /* engine -> HTTP, under mu */
    int32_t *toks;  /* [cap] */
    tern_pick *lps; /* [cap] each token's log-probabilities (requests that asked), else NULL */
    int32_t cap, n_pushed;
    bool done;
    tern_finish why;
    char err[TERN_STATUS_MSG_MAX];
    /* engine thread only */
    double t_submit, t_last;
    /* server's active list, under s->mu */
    req *prev, *next;
    bool listed, submitted, cancel_asked, open_counted;
    bool failed_out; /* answered by fail_all: the engine will never call back */
    tern_cancel_reason cancel_why;
    int64_t id;
    /* HTTP thread only */
    tern_parsed_request pr;
    bool chat, stream;
    char cid[64];
    long long created;
    int32_t n_prompt, max_tokens, n_taken;
    tern_detok dt;
    int32_t *tok_end; /* [cap] byte offset in text where each taken token's piece ends */
    int32_t lp_done;  /* tokens whose logprobs were sent (streaming) */
    tern_stop_match sm;
    tern_sbuf text;
    tern_sbuf echo; /* echo: the prompt's text, sent before the completion */
    size_t visible, emitted;
    bool finished, stop_hit, failed, sent_role, sse_done, aborted;
    const char *finish_reason;
    tern_sbuf out;
    size_t out_off;
};

typedef struct conn {
    double deadline; /* the whole request by then (CLOCK_MONOTONIC); 0: none known */
    tern_route route;
    char *model_id; /* GET /v1/models/{id}: the id asked for (NULL for the list) */
    bool post, get;
    char *body;
    size_t len, cap, seen;
    bool too_large, responded;
    req *r;
} conn;

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* ids and default seeds: unique per request, not reproducible (that is what "seed" is for) */
static uint64_t next_random(tern_server *s)
{
    return mix64(atomic_fetch_add(&s->ids, 1) ^ s->id_salt);
}

/* ------------------------------------------------------------------ request objects */

static void req_release(req *r)
{
    pthread_mutex_lock(&r->mu);
    int left = --r->refs;
    pthread_mutex_unlock(&r->mu);
    if (left > 0) return;
    tern_parsed_request_free(&r->pr);
    tern_sbuf_free(&r->text);
    tern_sbuf_free(&r->echo);
    tern_sbuf_free(&r->out);
    free(r->toks), free(r->tok_end), free(r->lps);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r);
}

static void req_ref(req *r, int delta)
{
    pthread_mutex_lock(&r->mu);
    r->refs += delta;
    pthread_mutex_unlock(&r->mu);
}

static req *req_new(tern_server *s, struct MHD_Connection *c)
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
static void unlist(tern_server *s, req *r)
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

static void on_token(void *user, int32_t tok)
{
    req *r = user;
    tern_server *s = r->s;
    double t = mono_now();
    pthread_mutex_lock(&r->mu);
    if (r->n_pushed < r->cap) r->toks[r->n_pushed++] = tok;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    bool first = r->t_last == 0;
    double dt = t - (first ? r->t_submit : r->t_last);
    r->t_last = t;
    tern_metrics_observe(&s->m, first ? &s->m.ttft : &s->m.itl, dt);
    pthread_mutex_lock(&s->m.mu);
    s->m.generated_tokens++;
    pthread_mutex_unlock(&s->m.mu);
}

/* just before on_token of the same token: its pick goes at the index that token takes */
static void on_logprobs(void *user, const tern_pick *pick)
{
    req *r = user;
    pthread_mutex_lock(&r->mu);
    if (r->lps && r->n_pushed < r->cap) r->lps[r->n_pushed] = *pick;
    pthread_mutex_unlock(&r->mu);
}

static void on_done(void *user, tern_finish why, const char *err)
{
    req *r = user;
    tern_server *s = r->s;
    tern_metrics_observe(&s->m, &s->m.e2e, mono_now() - r->t_submit);
    pthread_mutex_lock(&s->mu);
    unlist(s, r);
    tern_cancel_reason cw = r->cancel_asked ? r->cancel_why : TERN_CANCEL_NONE;
    pthread_mutex_unlock(&s->mu);
    tern_metrics_finish(&s->m, why, cw);
    pthread_mutex_lock(&r->mu);
    r->done = true;
    r->why = why;
    if (err) snprintf(r->err, sizeof r->err, "%s", err);
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    req_release(r); /* the engine's */
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

static void cancel_req(req *r, tern_cancel_reason why)
{
    tern_server *s = r->s;
    pthread_mutex_lock(&s->mu);
    bool live = r->listed && r->submitted;
    if (!r->cancel_asked) r->cancel_why = why;
    r->cancel_asked = true;
    int64_t id = r->id;
    pthread_mutex_unlock(&s->mu);
    if (live) tern_engine_cancel(s->e, id);
}

static void finish_as(req *r, const char *reason)
{
    r->finished = true;
    r->finish_reason = reason;
}

/* Moves newly generated tokens into r->text, matching stop strings after every token so the
 * count of tokens (usage) does not depend on how tokens were batched. */
static void consume(req *r)
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
            cancel_req(r, TERN_CANCEL_STOP_STRING);
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
static bool wait_more(req *r)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_nsec += WAIT_MS * 1000000L;
    if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    pthread_mutex_lock(&r->mu);
    if (!(r->n_pushed > r->n_taken || r->done)) pthread_cond_timedwait(&r->cv, &r->mu, &ts);
    pthread_mutex_unlock(&r->mu);
    if (atomic_load(&r->s->state) == ST_CLOSED) return false;
    return !client_gone(r);
}

void tern_json_quote(tern_sbuf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    tern_sbuf_add(b, "\"", 1);
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x80) {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            if (c == '"' || c == '\\') {
                char q[2] = {'\\', (char)c};
                tern_sbuf_add(b, q, 2);
            } else if (c == '\n') {
                tern_sbuf_add(b, "\\n", 2);
            } else if (c == '\r') {
                tern_sbuf_add(b, "\\r", 2);
            } else if (c == '\t') {
                tern_sbuf_add(b, "\\t", 2);
            } else if (c < 0x20 || c == 0x7f) { /* NUL included: never a raw 0 byte */
                tern_sbuf_add(b, e, 6);
            } else {
                tern_sbuf_add(b, s + i, 1);
            }
            i++;
            continue;
        }
        size_t len = (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        bool ok = len > 0 && i + len <= n && !(len == 2 && c < 0xc2);
        for (size_t j = 1; ok && j < len; j++) ok = ((unsigned char)s[i + j] >> 6) == 2;
        if (ok && len == 3) {
            unsigned cp = (c & 0x0fu) << 12 | ((unsigned char)s[i + 1] & 0x3fu) << 6;
            ok = cp >= 0x800 && (cp < 0xd800 || cp > 0xdfff);
        }
        if (ok && len == 4) {
            unsigned cp = (c & 0x07u) << 18 | ((unsigned char)s[i + 1] & 0x3fu) << 12;
            ok = cp >= 0x10000 && cp <= 0x10ffff;
        }
        if (ok) {
            tern_sbuf_add(b, s + i, len);
            i += len;
        } else {
            tern_sbuf_add(b, "\xef\xbf\xbd", 3);
            i++;
        }
    }
    tern_sbuf_add(b, "\"", 1);
}

/* Generated text may hold any byte, NUL included: the JSON string is written here with its
 * explicit length and added as a raw value, because cJSON's strings end at the first NUL. */
static cJSON *add_text(cJSON *obj, const char *name, const char *s, size_t n)
{
    tern_sbuf b = {0};
    tern_json_quote(&b, s, n);
    cJSON *j = cJSON_AddRawToObject(obj, name, b.oom || !b.s ? "\"\"" : b.s);
    tern_sbuf_free(&b);
    return j;
}

static cJSON *usage_json(const req *r)
{
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", r->n_prompt);
    cJSON_AddNumberToObject(u, "completion_tokens", r->n_taken);
    cJSON_AddNumberToObject(u, "total_tokens", r->n_prompt + r->n_taken);
    return u;
}

static cJSON *envelope(const req *r, const char *object)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "id", r->cid);
    cJSON_AddStringToObject(j, "object", object);
    cJSON_AddNumberToObject(j, "created", (double)r->created);
    cJSON_AddStringToObject(j, "model", r->s->model);
    return j;
}

static cJSON *error_json(const char *type, const char *param, const char *code, const char *msg)
{
    cJSON *j = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(j, "error");
    cJSON_AddStringToObject(e, "message", msg);
    cJSON_AddStringToObject(e, "type", type);
    if (param && *param)
        cJSON_AddStringToObject(e, "param", param);
    else
        cJSON_AddNullToObject(e, "param");
    if (code)
        cJSON_AddStringToObject(e, "code", code);
    else
        cJSON_AddNullToObject(e, "code");
    return j;
}

static const char *failure_message(req *r)
{
    if (r->why == TERN_FINISH_CANCELLED)
        return atomic_load(&r->s->state) >= ST_DRAINING
                   ? "server: request cancelled: the server is shutting down"
                   : "server: request cancelled";
    return r->err[0] ? r->err : "engine: generation failed";
}

/* one SSE event: "data: JSON\n\n" (the JSON is consumed) */
/* A token's piece as JSON text: bytes of an incomplete UTF-8 sequence become U+FFFD (the exact
 * bytes go in "bytes" for chat) */
static void add_piece(cJSON *o, const char *name, const char *p, size_t n)
{
    tern_sbuf b = {0};
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)p[i];
        size_t k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        bool ok = k > 0 && i + k <= n;
        for (size_t j = 1; ok && j < k; j++) ok = ((unsigned char)p[i + j] >> 6) == 2;
        if (ok && c) {
            tern_sbuf_add(&b, p + i, k);
            i += k;
        } else {
            tern_sbuf_add(&b, "\xef\xbf\xbd", 3);
            i++;
        }
    }
    add_text(o, name, b.s ? b.s : "", b.len);
    free(b.s);
}

/* a log-probability, printed so it reads back as the exact float (cJSON's 15 digits would not) */
static cJSON *lp_number(float v)
{
    char b[40];
    snprintf(b, sizeof b, "%.17g", (double)v);
    return cJSON_CreateRaw(b);
}

static cJSON *piece_bytes(const char *p, size_t n)
{
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber((unsigned char)p[i]));
    return a;
}

/* OpenAI's logprobs object for taken tokens [from, to): completions' tokens / token_logprobs /
 * top_logprobs / text_offset, or chat's content list; NULL when the request did not ask */
static cJSON *logprobs_json(req *r, int32_t from, int32_t to)
{
    if (!r->lps || r->pr.logprobs < 0) return NULL;
    const tern_tokenizer *tok = r->s->tok;
    cJSON *o = cJSON_CreateObject();
    if (r->chat) {
        cJSON *content = cJSON_AddArrayToObject(o, "content");
        for (int32_t i = from; i < to; i++) {
            const tern_pick *pk = &r->lps[i];
            size_t n = 0;
            const char *p = tern_tokenizer_token_bytes(tok, r->toks[i], &n);
            cJSON *t = cJSON_CreateObject();
            add_piece(t, "token", p ? p : "", p ? n : 0);
            cJSON_AddItemToObject(t, "logprob", lp_number(pk->logprob));
            cJSON_AddItemToObject(t, "bytes", piece_bytes(p ? p : "", p ? n : 0));
            cJSON *top = cJSON_AddArrayToObject(t, "top_logprobs");
            for (int32_t k = 0; k < pk->n_top && k < r->pr.logprobs; k++) {
                size_t m = 0;
                const char *q = tern_tokenizer_token_bytes(tok, pk->top[k].id, &m);
                cJSON *a = cJSON_CreateObject();
                add_piece(a, "token", q ? q : "", q ? m : 0);
                cJSON_AddItemToObject(a, "logprob", lp_number(pk->top[k].logprob));
                cJSON_AddItemToObject(a, "bytes", piece_bytes(q ? q : "", q ? m : 0));
                cJSON_AddItemToArray(top, a);
            }
            cJSON_AddItemToArray(content, t);
        }
        return o;
    }
    cJSON *tokens = cJSON_AddArrayToObject(o, "tokens");
    cJSON *lps = cJSON_AddArrayToObject(o, "token_logprobs");
    cJSON *tops = cJSON_AddArrayToObject(o, "top_logprobs");
    cJSON *offs = cJSON_AddArrayToObject(o, "text_offset");
    for (int32_t i = from; i < to; i++) {
        const tern_pick *pk = &r->lps[i];
        size_t n = 0;
        const char *p = tern_tokenizer_token_bytes(tok, r->toks[i], &n);
        cJSON *holder = cJSON_CreateObject();
        add_piece(holder, "t", p ? p : "", p ? n : 0);
        cJSON_AddItemToArray(tokens, cJSON_DetachItemFromObject(holder, "t"));
        cJSON_Delete(holder);
        cJSON_AddItemToArray(lps, lp_number(pk->logprob));
        cJSON *top = cJSON_CreateObject();
        for (int32_t k = 0; k < pk->n_top && k < r->pr.logprobs; k++) {
            size_t m = 0;
            const char *q = tern_tokenizer_token_bytes(tok, pk->top[k].id, &m);
            tern_sbuf key = {0};
            tern_sbuf_add(&key, q ? q : "", q ? m : 0);
            tern_sbuf_add(&key, "", 1); /* NUL-terminated key; a NUL inside cuts it */
            if (!cJSON_GetObjectItemCaseSensitive(top, key.s))
                cJSON_AddItemToObject(top, key.s, lp_number(pk->top[k].logprob));
            free(key.s);
        }
        cJSON_AddItemToArray(tops, top);
        cJSON_AddItemToArray(offs, cJSON_CreateNumber(i > 0 ? r->tok_end[i - 1] : 0));
    }
    return o;
}

/* tokens whose piece begins inside the visible text (a stop string cuts the rest) */
static int32_t visible_tokens(const req *r)
{
    int32_t n = 0;
    while (n < r->n_taken && (n == 0 ? 0 : r->tok_end[n - 1]) < (int32_t)r->visible) n++;
    return n;
}

static void sse_event(req *r, cJSON *j)
{
    char *t = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    tern_sbuf_add(&r->out, "data: ", 6);
    if (t) tern_sbuf_add(&r->out, t, strlen(t));
    tern_sbuf_add(&r->out, "\n\n", 2);
    free(t);
}

static void sse_chunk(req *r, const char *text, size_t n, const char *finish, bool role,
                      int32_t lp_to)
{
    cJSON *j = envelope(r, r->chat ? "chat.completion.chunk" : "text_completion");
    cJSON *choices = cJSON_AddArrayToObject(j, "choices");
    cJSON *c = cJSON_CreateObject();
    cJSON_AddItemToArray(choices, c);
    cJSON_AddNumberToObject(c, "index", 0);
    if (r->chat) {
        cJSON *d = cJSON_AddObjectToObject(c, "delta");
        if (role) cJSON_AddStringToObject(d, "role", "assistant");
        if (text) add_text(d, "content", text, n);
    } else {
        add_text(c, "text", text ? text : "", text ? n : 0);
    }
    cJSON *lp = lp_to > r->lp_done ? logprobs_json(r, r->lp_done, lp_to) : NULL;
    if (lp) {
        cJSON_AddItemToObject(c, "logprobs", lp);
        r->lp_done = lp_to;
    } else {
        cJSON_AddNullToObject(c, "logprobs");
    }
    if (finish)
        cJSON_AddStringToObject(c, "finish_reason", finish);
    else
        cJSON_AddNullToObject(c, "finish_reason");
    if (r->pr.include_usage) cJSON_AddNullToObject(j, "usage");
    sse_event(r, j);
}

/* Produces the next SSE events into r->out (waiting for tokens when there are none). */
static void sse_produce(req *r)
{
    if (r->chat && !r->sent_role) {
        r->sent_role = true;
        sse_chunk(r, "", 0, NULL, true, 0);
        return;
    }
    if (r->echo.len && !r->sent_role) {
        r->sent_role = true;
        sse_chunk(r, r->echo.s, r->echo.len, NULL, false, 0);
        return;
    }
    consume(r);
    if (r->visible > r->emitted) {
        /* the tokens whose pieces the emitted text now holds whole */
        int32_t lp_to = r->lp_done;
        while (r->tok_end && lp_to < r->n_taken && r->tok_end[lp_to] <= (int32_t)r->visible)
            lp_to++;
        sse_chunk(r, r->text.s + r->emitted, r->visible - r->emitted, NULL, false, lp_to);
        r->emitted = r->visible;
    }
    if (r->finished) {
        if (r->failed) {
            sse_event(r, error_json("server_error", NULL, NULL, failure_message(r)));
        } else {
            sse_chunk(r, r->chat ? NULL : "", 0, r->finish_reason, false,
                      r->tok_end ? visible_tokens(r) : 0);
            if (r->pr.include_usage) {
                cJSON *j = envelope(r, r->chat ? "chat.completion.chunk" : "text_completion");
                cJSON_AddArrayToObject(j, "choices");
                cJSON_AddItemToObject(j, "usage", usage_json(r));
                sse_event(r, j);
            }
        }
        tern_sbuf_add(&r->out, "data: [DONE]\n\n", 14);
        r->sse_done = true;
        return;
    }
    if (r->out.len > r->out_off) return;
    if (!wait_more(r)) {
        cancel_req(r, TERN_CANCEL_CLIENT);
        r->aborted = true;
    }
}

static ssize_t sse_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    req *r = cls;
    (void)pos;
    for (;;) {
        if (r->out.oom) return MHD_CONTENT_READER_END_WITH_ERROR;
        if (r->out.len > r->out_off) {
            size_t n = r->out.len - r->out_off;
            if (n > max) n = max;
            memcpy(buf, r->out.s + r->out_off, n);
            r->out_off += n;
            if (r->out_off == r->out.len) r->out.len = r->out_off = 0;
            return (ssize_t)n;
        }
        if (r->sse_done) return MHD_CONTENT_READER_END_OF_STREAM;
        if (r->aborted) return MHD_CONTENT_READER_END_WITH_ERROR;
        sse_produce(r);
    }
}

static void sse_free(void *cls)
{
    req_release(cls); /* the response's */
}

/* ------------------------------------------------------------------ responses */

static enum MHD_Result send_body(tern_server *s, struct MHD_Connection *c, conn *k, int status,
                                 const char *type, const char *body, size_t len)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", type);
    /* one request per connection, so each passes the gate (gate.c) */
    MHD_add_response_header(resp, "Connection", "close");
    if (status == 429 || status == 503) MHD_add_response_header(resp, "Retry-After", "1");
    if (status == 401) MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
    if (status == 405)
        MHD_add_response_header(resp, "Allow", k->route <= TERN_ROUTE_CHAT ? "POST" : "GET");
    enum MHD_Result ok = MHD_queue_response(c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    k->responded = true;
    tern_metrics_request(&s->m, k->route, status);
    return ok;
}

static enum MHD_Result send_json(tern_server *s, struct MHD_Connection *c, conn *k, int status,
                                 cJSON *j)
{
    char *t = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    if (!t) return MHD_NO;
    size_t n = strlen(t);
    enum MHD_Result ok = send_body(s, c, k, status, "application/json", t, n);
    free(t);
    return ok;
}

static enum MHD_Result send_error(tern_server *s, struct MHD_Connection *c, conn *k, int status,
                                  const char *param, const char *msg)
{
    const char *type = status == 401   ? "authentication_error"
                       : status == 429 ? "rate_limit_error"
                       : status >= 500 ? "server_error"
                                       : "invalid_request_error";
    const char *code = status == 401   ? "invalid_api_key"
                       : status == 404 ? "not_found"
                       : status == 413 ? "request_too_large"
                       : status == 429 ? "rate_limit_exceeded"
                                       : NULL;
    return send_json(s, c, k, status, error_json(type, param, code, msg));
}

/* ------------------------------------------------------------------ generation routes */

static enum MHD_Result model_not_found(tern_server *s, struct MHD_Connection *c, conn *k,
                                       const char *id);

static tern_code tokenize(tern_server *s, req *r, tern_tokens *ids, tern_status *st)
{
    /* the tokenizer is immutable after load: HTTP threads encode concurrently */
    tern_code rc;
    if (r->chat) {
        static const char *const roles[TERN_ROLE_COUNT] = {"system", "user", "assistant"};
        tern_chat_msg *msgs = calloc((size_t)r->pr.n_messages, sizeof *msgs);
        if (!msgs) {
            rc = tern_status_set(st, TERN_ENOMEM, "messages: out of memory");
        } else {
            for (int32_t i = 0; i < r->pr.n_messages; i++) {
                msgs[i].role = roles[r->pr.messages[i].role];
                msgs[i].content = r->pr.messages[i].content;
            }
            rc = tern_chat_encode(s->tok, msgs, (size_t)r->pr.n_messages, true, ids, st);
            free(msgs);
        }
    } else {
        rc = tern_tokenizer_encode(s->tok, r->pr.prompt, r->pr.prompt_len,
                                   tern_tokenizer_add_bos(s->tok) ? TERN_TOK_ADD_BOS : 0, ids, st);
    }
    return rc;
}

/* why a request is refused with 503 */
static const char *not_serving(tern_server *s)
{
    int st = atomic_load(&s->state);
    if (st == ST_LOADING) return "server: the model is loading, try again shortly";
    if (st == ST_FAILED) return s->failure;
    return "server: shutting down, not accepting requests";
}

/* Takes a place among the accepted requests: 503 while not serving, 429 when full. */
static int reserve(tern_server *s, req *r)
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
static void unreserve(tern_server *s, req *r)
{
    pthread_mutex_lock(&s->mu);
    unlist(s, r);
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_lock(&s->m.mu);
    s->m.in_flight--;
    pthread_mutex_unlock(&s->m.mu);
}

static enum MHD_Result generate(tern_server *s, struct MHD_Connection *c, conn *k)
{
    char err[512], param[64];
    req *r = req_new(s, c);
    if (!r) return send_error(s, c, k, 500, NULL, "server: out of memory");
    k->r = r;
    r->chat = k->route == TERN_ROUTE_CHAT;
    if (tern_server_parse_request(k->body, k->len, r->chat, &r->pr, err, sizeof err, param,
                                  sizeof param))
        return send_error(s, c, k, 400, param, err);
    /* one model is served: absent or "" means it, any other name is an error, not served by
     * whatever happens to be loaded */
    if (r->pr.model && r->pr.model[0] && strcmp(r->pr.model, s->model) != 0)
        return model_not_found(s, c, k, r->pr.model);
    r->stream = r->pr.stream;
    int busy = reserve(s, r);
    if (busy == 503) return send_error(s, c, k, 503, NULL, not_serving(s));
    if (busy == 429) {
        char msg[160];
        snprintf(msg, sizeof msg,
                 "server: got %d requests in flight, expected at most %d (--max-seqs + "
                 "--max-queue); retry later",
                 s->cap_active, s->cap_active);
        return send_error(s, c, k, 429, NULL, msg);
    }
    /* from here the request is listed: every exit before submit must unreserve it */
    tern_status st = {0};
    tern_tokens ids = {0};
    const int32_t *prompt;
    int32_t n_prompt;
    if (r->pr.prompt_ids) {
        prompt = r->pr.prompt_ids;
        n_prompt = r->pr.n_prompt_ids;
    } else {
        if (tokenize(s, r, &ids, &st)) {
            unreserve(s, r);
            tern_tokens_free(&ids);
            return send_error(s, c, k, 400, r->chat ? "messages" : "prompt", st.msg);
        }
        prompt = ids.ids;
        n_prompt = (int32_t)ids.n;
    }
    r->n_prompt = n_prompt;
    if (r->pr.echo) {
        if (r->pr.prompt) {
            tern_sbuf_add(&r->echo, r->pr.prompt, r->pr.prompt_len);
        } else {
            size_t cap = (size_t)n_prompt * 64 + 16;
            char *t = malloc(cap);
            if (t)
                tern_sbuf_add(&r->echo, t,
                              tern_tokenizer_decode(s->tok, prompt, (size_t)n_prompt, t, cap));
            free(t);
        }
    }
    int32_t max_tokens = r->pr.max_tokens;
    if (max_tokens < 0) {
        if (n_prompt >= s->n_ctx) {
            unreserve(s, r);
            tern_tokens_free(&ids);
            snprintf(err, sizeof err,
                     "context: prompt: got %d tokens, expected fewer than the context size %d",
                     n_prompt, s->n_ctx);
            return send_error(s, c, k, 400, r->chat ? "messages" : "prompt", err);
        }
        int32_t def = s->o.default_max_tokens;
        max_tokens = def < s->n_ctx - n_prompt ? def : s->n_ctx - n_prompt;
    }
    r->max_tokens = max_tokens;
    r->cap = max_tokens > 0 ? max_tokens : 1;
    r->toks = malloc((size_t)r->cap * sizeof *r->toks);
    r->tok_end = malloc((size_t)r->cap * sizeof *r->tok_end);
    if (r->pr.logprobs >= 0) {
        r->lps = calloc((size_t)r->cap, sizeof *r->lps);
        /* the engine reports the chosen token's log-probability with any n >= 1 */
        r->pr.sampling.n_logprobs = r->pr.logprobs > 0 ? r->pr.logprobs : 1;
    }
    if (!r->toks || !r->tok_end || (r->pr.logprobs >= 0 && !r->lps)) {
        unreserve(s, r);
        tern_tokens_free(&ids);
        return send_error(s, c, k, 500, NULL, "server: out of memory");
    }
    tern_stop_init(&r->sm, (const char *const *)r->pr.stop, r->pr.n_stop);
    if (!r->pr.has_seed) r->pr.sampling.seed = next_random(s);
    uint64_t rid = next_random(s);
    snprintf(r->cid, sizeof r->cid, "%s-%016llx", r->chat ? "chatcmpl" : "cmpl",
             (unsigned long long)rid);
    r->created = (long long)time(NULL);

    tern_request rq = {.prompt = prompt,
                       .n_prompt = n_prompt,
                       .sampling = r->pr.sampling,
                       .max_new = max_tokens,
                       .on_token = on_token,
                       .on_logprobs = r->lps ? on_logprobs : NULL,
                       .on_done = on_done,
                       .user = r};
    for (int32_t i = 0; i < s->n_stop_ids; i++) rq.stop[rq.n_stop++] = s->stop_ids[i];
    req_ref(r, 1); /* the engine's: taken before submit, the engine may call back at once */
    r->t_submit = mono_now();
    int64_t id = 0;
    tern_code rc = tern_engine_submit(s->e, &rq, &id, &st);
    tern_tokens_free(&ids);
    if (rc) {
        req_ref(r, -1);
        unreserve(s, r);
        if (rc == TERN_EBUSY) return send_error(s, c, k, 429, NULL, st.msg);
        if (rc == TERN_ERANGE || rc == TERN_EINVAL) {
            const char *p = !strncmp(st.msg, "context", 7) || !strncmp(st.msg, "kv", 2)
                                ? (r->pr.max_tokens >= 0 ? "max_tokens" : "prompt")
                            : !strncmp(st.msg, "prompt", 6) ? "prompt"
                                                            : NULL;
            return send_error(s, c, k, 400, p, st.msg);
        }
        return send_error(s, c, k, 500, NULL, st.msg);
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
    if (orphan) req_ref(r, -1);               /* the engine's (the connection still holds one) */
    if (cancel) tern_engine_cancel(s->e, id); /* the grace period ran out meanwhile */

    if (r->stream) {
        req_ref(r, 1); /* the response's */
        struct MHD_Response *resp =
            MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, sse_reader, r, sse_free);
        if (!resp) {
            req_release(r);
            cancel_req(r, TERN_CANCEL_CLIENT);
            return MHD_NO;
        }
        MHD_add_response_header(resp, "Content-Type", "text/event-stream");
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        MHD_add_response_header(resp, "X-Accel-Buffering", "no");
        MHD_add_response_header(resp, "Connection", "close");
        enum MHD_Result ok = MHD_queue_response(c, MHD_HTTP_OK, resp);
        MHD_destroy_response(resp);
        k->responded = true;
        tern_metrics_request(&s->m, k->route, 200);
        return ok;
    }
    /* non-streaming: this connection thread waits for the whole answer */
    for (;;) {
        consume(r);
        if (r->finished) break;
        if (!wait_more(r)) {
            cancel_req(r, TERN_CANCEL_CLIENT);
            tern_metrics_request(&s->m, k->route, 499);
            return MHD_NO;
        }
    }
    if (r->failed)
        return send_error(s, c, k, atomic_load(&s->state) == ST_DRAINING ? 503 : 500, NULL,
                          failure_message(r));
    cJSON *j = envelope(r, r->chat ? "chat.completion" : "text_completion");
    cJSON *choices = cJSON_AddArrayToObject(j, "choices");
    cJSON *ch = cJSON_CreateObject();
    cJSON_AddItemToArray(choices, ch);
    cJSON_AddNumberToObject(ch, "index", 0);
    const char *text = r->text.s ? r->text.s : "";
    if (r->chat) {
        cJSON *msg = cJSON_AddObjectToObject(ch, "message");
        cJSON_AddStringToObject(msg, "role", "assistant");
        add_text(msg, "content", text, r->visible);
    } else if (r->echo.len) {
        tern_sbuf both = {0};
        tern_sbuf_add(&both, r->echo.s, r->echo.len);
        tern_sbuf_add(&both, text, r->visible);
        add_text(ch, "text", both.s, both.len);
        tern_sbuf_free(&both);
    } else {
        add_text(ch, "text", text, r->visible);
    }
    cJSON *lp = logprobs_json(r, 0, visible_tokens(r));
    if (lp)
        cJSON_AddItemToObject(ch, "logprobs", lp);
    else
        cJSON_AddNullToObject(ch, "logprobs");
    cJSON_AddStringToObject(ch, "finish_reason", r->finish_reason);
    cJSON_AddItemToObject(j, "usage", usage_json(r));
    return send_json(s, c, k, 200, j);
}

/* ------------------------------------------------------------------ other routes */

static enum MHD_Result model_not_found(tern_server *s, struct MHD_Connection *c, conn *k,
                                       const char *id)
{
    char msg[400];
    snprintf(msg, sizeof msg, "model: got '%.200s', expected '%s' (the model this server serves)",
             id, s->model);
    return send_json(s, c, k, 404,
                     error_json("invalid_request_error", "model", "model_not_found", msg));
}

/* GET /v1/models (the list of one) and GET /v1/models/{id} (that one, or 404) */
static enum MHD_Result models(tern_server *s, struct MHD_Connection *c, conn *k)
{
    if (k->model_id && strcmp(k->model_id, s->model) != 0)
        return model_not_found(s, c, k, k->model_id);
    cJSON *j = NULL, *m = cJSON_CreateObject();
    if (k->model_id) {
        j = m;
    } else {
        j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "object", "list");
        cJSON *data = cJSON_AddArrayToObject(j, "data");
        cJSON_AddItemToArray(data, m);
    }
    cJSON_AddStringToObject(m, "id", s->model);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)s->started);
    cJSON_AddStringToObject(m, "owned_by", "ternpipe");
    if (atomic_load(&s->state) != ST_LOADING) {
        cJSON *meta = cJSON_AddObjectToObject(m, "meta");
        cJSON_AddNumberToObject(meta, "n_ctx", s->n_ctx);
        cJSON_AddNumberToObject(meta, "n_vocab", s->n_vocab);
        cJSON_AddNumberToObject(meta, "max_seqs", s->max_seqs);
        cJSON_AddNumberToObject(meta, "n_ranks", s->n_ranks);
    }
    return send_json(s, c, k, 200, j);
}

/* llama-server's extras. POST /tokenize {"content": text, "add_special": false,
 * "with_pieces": false} -> {"tokens": [ids]} (or [{"id", "piece"}]); POST /detokenize
 * {"tokens": [ids]} -> {"content": text}; GET /props: what this server runs. */
static enum MHD_Result tokenize_route(tern_server *s, struct MHD_Connection *c, conn *k)
{
    cJSON *in = cJSON_ParseWithLength(k->body ? k->body : "", k->len);
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(in, "content");
    if (!cJSON_IsObject(in) || !cJSON_IsString(content)) {
        cJSON_Delete(in);
        return send_error(s, c, k, 400, "content",
                          "content: got no string, expected {\"content\": \"text\"}");
    }
    bool add_special = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(in, "add_special"));
    bool pieces = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(in, "with_pieces"));
    tern_tokens ids = {0};
    tern_status st = {0};
    tern_code rc = TERN_OK;
    if (add_special && tern_tokenizer_add_bos(s->tok) && tern_tokenizer_bos(s->tok) >= 0)
        rc = tern_tokens_push(&ids, tern_tokenizer_bos(s->tok));
    if (!rc)
        rc = tern_tokenizer_encode(s->tok, content->valuestring, strlen(content->valuestring), 0,
                                   &ids, &st);
    cJSON_Delete(in);
    if (rc) {
        tern_tokens_free(&ids);
        return send_error(s, c, k, 400, "content", st.msg[0] ? st.msg : "tokenize: failed");
    }
    cJSON *j = cJSON_CreateObject(), *a = cJSON_AddArrayToObject(j, "tokens");
    for (size_t i = 0; i < ids.n; i++) {
        if (!pieces) {
            cJSON_AddItemToArray(a, cJSON_CreateNumber(ids.ids[i]));
            continue;
        }
        size_t n = 0;
        const char *p = tern_tokenizer_token_bytes(s->tok, ids.ids[i], &n);
        cJSON *t = cJSON_CreateObject();
        cJSON_AddNumberToObject(t, "id", ids.ids[i]);
        add_piece(t, "piece", p ? p : "", p ? n : 0);
        cJSON_AddItemToArray(a, t);
    }
    tern_tokens_free(&ids);
    return send_json(s, c, k, 200, j);
}

static enum MHD_Result detokenize_route(tern_server *s, struct MHD_Connection *c, conn *k)
{
    cJSON *in = cJSON_ParseWithLength(k->body ? k->body : "", k->len);
    const cJSON *toks = cJSON_GetObjectItemCaseSensitive(in, "tokens");
    int n = cJSON_IsArray(toks) ? cJSON_GetArraySize(toks) : -1;
    if (!cJSON_IsObject(in) || n < 0 || n > s->n_ctx) {
        cJSON_Delete(in);
        char msg[160];
        snprintf(msg, sizeof msg, "tokens: got %s, expected an array of at most %d token ids",
                 n < 0 ? "no array" : "too many", s->n_ctx);
        return send_error(s, c, k, 400, "tokens", msg);
    }
    int32_t *ids = malloc(((size_t)n + 1) * sizeof *ids);
    int i = 0;
    for (const cJSON *t = toks ? toks->child : NULL; ids && t; t = t->next, i++) {
        if (!cJSON_IsNumber(t) || t->valuedouble != (double)(int32_t)t->valuedouble ||
            t->valuedouble < 0 || t->valuedouble >= s->n_vocab) {
            free(ids);
            cJSON_Delete(in);
            char msg[160];
            snprintf(msg, sizeof msg, "tokens[%d]: got %s, expected a token id 0..%d", i,
                     cJSON_IsNumber(t) ? "an out-of-range number" : "a non-number", s->n_vocab - 1);
            return send_error(s, c, k, 400, "tokens", msg);
        }
        ids[i] = (int32_t)t->valuedouble;
    }
    cJSON_Delete(in);
    size_t cap = (size_t)n * 64 + 16;
    char *out = ids ? malloc(cap) : NULL;
    if (!out) {
        free(ids);
        return send_error(s, c, k, 500, NULL, "server: out of memory");
    }
    size_t len = tern_tokenizer_decode(s->tok, ids, (size_t)n, out, cap);
    cJSON *j = cJSON_CreateObject();
    add_piece(j, "content", out, len);
    free(ids), free(out);
    return send_json(s, c, k, 200, j);
}

static enum MHD_Result props(tern_server *s, struct MHD_Connection *c, conn *k)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "model", s->model);
    cJSON_AddNumberToObject(j, "n_ctx", s->n_ctx);
    cJSON_AddNumberToObject(j, "n_vocab", s->n_vocab);
    cJSON_AddNumberToObject(j, "total_slots", s->max_seqs);
    cJSON_AddNumberToObject(j, "n_ranks", s->n_ranks);
    cJSON_AddNumberToObject(j, "default_max_tokens", s->o.default_max_tokens);
    pthread_mutex_lock(&s->m.mu);
    cJSON *plan = cJSON_AddArrayToObject(j, "plan");
    for (int r = 0; s->m.have_stats && r < s->m.n_ranks; r++) {
        const tern_rank_stats *rk = &s->m.ranks[r];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "rank", r);
        cJSON *l = cJSON_AddArrayToObject(o, "layers");
        cJSON_AddItemToArray(l, cJSON_CreateNumber(rk->layer_start));
        cJSON_AddItemToArray(l, cJSON_CreateNumber(rk->layer_end));
        cJSON *h = cJSON_AddArrayToObject(o, "head_rows");
        cJSON_AddItemToArray(h, cJSON_CreateNumber(rk->vocab_start));
        cJSON_AddItemToArray(h, cJSON_CreateNumber(rk->vocab_end));
        cJSON_AddItemToArray(plan, o);
    }
    pthread_mutex_unlock(&s->m.mu);
    return send_json(s, c, k, 200, j);
}

static enum MHD_Result health(tern_server *s, struct MHD_Connection *c, conn *k)
{
    int st = atomic_load(&s->state);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "status",
                            st == ST_READY     ? "ok"
                            : st == ST_LOADING ? "loading"
                            : st == ST_FAILED  ? "failed"
                                               : "stopping");
    if (st == ST_FAILED) cJSON_AddStringToObject(j, "reason", s->failure);
    return send_json(s, c, k, st == ST_READY ? 200 : 503, j);
}

static enum MHD_Result metrics(tern_server *s, struct MHD_Connection *c, conn *k)
{
    tern_sbuf b = {0};
    tern_metrics_render(&s->m, s->model, atomic_load(&s->state), &b);
    if (b.oom) {
        tern_sbuf_free(&b);
        return send_error(s, c, k, 500, NULL, "server: out of memory");
    }
    enum MHD_Result ok =
        send_body(s, c, k, 200, "text/plain; version=0.0.4; charset=utf-8", b.s ? b.s : "", b.len);
    tern_sbuf_free(&b);
    return ok;
}

/* constant time in the key's length, so a timing probe learns nothing but the length */
static bool key_ok(const tern_server *s, struct MHD_Connection *c)
{
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return false;
    h += 7;
    while (*h == ' ') h++;
    size_t n = strlen(s->api_key), m = strlen(h);
    unsigned diff = n != m;
    for (size_t i = 0; i < n; i++)
        diff |= (unsigned char)s->api_key[i] ^ (unsigned char)(i < m ? h[i] : 0);
    return diff == 0;
}

static tern_route route_of(const char *url, char **model_id)
{
    static const char *const prefixes[] = {"/v1/models/", "/models/"};
    for (int i = 0; i < 2; i++) {
        size_t n = strlen(prefixes[i]);
        if (!strncmp(url, prefixes[i], n) && url[n]) {
            *model_id = strdup(url + n); /* ids may hold '/' ("org/name") */
            return TERN_ROUTE_MODELS;
        }
    }
    if (!strcmp(url, "/v1/completions") || !strcmp(url, "/completions"))
        return TERN_ROUTE_COMPLETIONS;
    if (!strcmp(url, "/v1/chat/completions") || !strcmp(url, "/chat/completions"))
        return TERN_ROUTE_CHAT;
    if (!strcmp(url, "/v1/models") || !strcmp(url, "/models")) return TERN_ROUTE_MODELS;
    if (!strcmp(url, "/health")) return TERN_ROUTE_HEALTH;
    if (!strcmp(url, "/metrics")) return TERN_ROUTE_METRICS;
    if (!strcmp(url, "/tokenize")) return TERN_ROUTE_TOKENIZE;
    if (!strcmp(url, "/detokenize")) return TERN_ROUTE_DETOKENIZE;
    if (!strcmp(url, "/props")) return TERN_ROUTE_PROPS;
    return TERN_ROUTE_OTHER;
}

/* A body still arriving at the deadline. libmicrohttpd sends a queued response only after the
 * whole body, which a trickling client would postpone at will, so the answer is written here
 * (this is the connection's own thread, and nothing else writes before a response is queued)
 * and the connection closed. */
static enum MHD_Result body_late(tern_server *s, struct MHD_Connection *c, conn *k)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    cJSON *j = error_json("invalid_request_error", NULL, NULL,
                          "request: got no complete body within the deadline, expected it sooner "
                          "(--request-timeout)");
    char *b = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (ci && b) {
        char head[256];
        int n = snprintf(head, sizeof head,
                         "HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
                         "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                         strlen(b));
        if (send(ci->connect_fd, head, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) == n) {
            ssize_t w = send(ci->connect_fd, b, strlen(b), MSG_NOSIGNAL | MSG_DONTWAIT);
            (void)w;
        }
        shutdown(ci->connect_fd, SHUT_WR);
    }
    free(b);
    k->responded = true;
    tern_metrics_request(&s->m, k->route, 408);
    return MHD_NO;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url,
                               const char *method, const char *version, const char *upload,
                               size_t *upload_size, void **con_cls)
{
    tern_server *s = cls;
    conn *k = *con_cls;
    (void)version;
    if (!k) {
        k = calloc(1, sizeof *k);
        if (!k) return MHD_NO;
        *con_cls = k;
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        const tern_gate_conn *gc = ci ? ci->socket_context : NULL;
        if (gc && gc->t0 > 0) {
            /* the body shares the head's deadline; a body that stalls ends there too */
            k->deadline = gc->t0 + s->o.request_timeout_s;
            double left = k->deadline - mono_now();
            MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT,
                                      (unsigned)(left > 1 ? ceil(left) : 1));
        }
        k->route = route_of(url, &k->model_id);
        k->post = !strcmp(method, MHD_HTTP_METHOD_POST);
        k->get = !strcmp(method, MHD_HTTP_METHOD_GET) || !strcmp(method, MHD_HTTP_METHOD_HEAD);
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        const char *ex = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Expect");
        unsigned long long n = cl ? strtoull(cl, NULL, 10) : 0;
        /* a client waiting for "100 Continue" can be refused before it sends the body */
        if (n > s->o.max_body && ex && !strcasecmp(ex, "100-continue")) {
            char msg[160];
            snprintf(msg, sizeof msg, "body: got %llu bytes, expected at most %zu", n,
                     s->o.max_body);
            k->too_large = true;
            return send_error(s, c, k, 413, NULL, msg);
        }
        return MHD_YES;
    }
    if (k->responded) { /* refused early: drop whatever still comes */
        *upload_size = 0;
        return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (k->deadline > 0 && mono_now() > k->deadline) return body_late(s, c, k);
        k->seen += n;
        if (k->too_large || k->len + n > s->o.max_body) {
            /* read and drop it, so the client gets to read our 413 instead of a reset */
            k->too_large = true;
            return k->seen > s->o.max_body * HARD_BODY_FACTOR ? MHD_NO : MHD_YES;
        }
        if (k->len + n + 1 > k->cap) {
            size_t cap = k->cap ? k->cap : 4096;
            while (cap < k->len + n + 1) cap *= 2;
            if (cap > s->o.max_body + 1) cap = s->o.max_body + 1;
            char *b = realloc(k->body, cap);
            if (!b) return MHD_NO;
            k->body = b;
            k->cap = cap;
        }
        memcpy(k->body + k->len, upload, n);
        k->len += n;
        return MHD_YES;
    }
    if (k->deadline > 0) /* all of it is here: the idle time-out covers the answer */
        MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, (unsigned)IDLE_TIMEOUT_S);
    if (k->too_large) {
        char msg[160];
        snprintf(msg, sizeof msg, "body: got %zu bytes, expected at most %zu", k->seen,
                 s->o.max_body);
        return send_error(s, c, k, 413, NULL, msg);
    }
    switch (k->route) {
    case TERN_ROUTE_HEALTH:
        if (!k->get) return send_error(s, c, k, 405, NULL, "method: expected GET");
        return health(s, c, k);
    case TERN_ROUTE_METRICS:
        if (!k->get) return send_error(s, c, k, 405, NULL, "method: expected GET");
        return metrics(s, c, k);
    case TERN_ROUTE_OTHER: {
        char msg[400];
        snprintf(
            msg, sizeof msg,
            "route: got %.16s %.200s, expected one of POST /v1/completions, "
            "POST /v1/chat/completions, GET /v1/models[/ID], POST /tokenize, POST /detokenize, "
            "GET /props, /health, /metrics",
            method, url);
        return send_error(s, c, k, 404, NULL, msg);
    }
    default:
        break;
    }
    if (s->api_key && !key_ok(s, c))
        return send_error(s, c, k, 401, NULL,
                          "authorization: got no or a wrong API key, expected the header "
                          "\"Authorization: Bearer KEY\"");
    if (k->route == TERN_ROUTE_MODELS) {
        if (!k->get) return send_error(s, c, k, 405, NULL, "method: expected GET");
        return models(s, c, k);
    }
    if (k->route == TERN_ROUTE_PROPS) {
        if (!k->get) return send_error(s, c, k, 405, NULL, "method: expected GET");
        if (atomic_load(&s->state) == ST_LOADING)
            return send_error(s, c, k, 503, NULL, not_serving(s));
        return props(s, c, k);
    }
    if ((k->route == TERN_ROUTE_TOKENIZE || k->route == TERN_ROUTE_DETOKENIZE) && !k->post)
        return send_error(s, c, k, 405, NULL, "method: expected POST");
    if (k->route == TERN_ROUTE_TOKENIZE || k->route == TERN_ROUTE_DETOKENIZE) {
        if (atomic_load(&s->state) == ST_LOADING)
            return send_error(s, c, k, 503, NULL, not_serving(s));
        return k->route == TERN_ROUTE_TOKENIZE ? tokenize_route(s, c, k)
                                               : detokenize_route(s, c, k);
    }
    if (!k->post) return send_error(s, c, k, 405, NULL, "method: expected POST");
    if (atomic_load(&s->state) != ST_READY) return send_error(s, c, k, 503, NULL, not_serving(s));
    return generate(s, c, k);
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
    tern_server *s = cls;
    conn *k = *con_cls;
    (void)c;
    if (!k) return;
    req *r = k->r;
    if (r) {
        /* a client that left before the end: free its sequence on every rank */
        if (!(toe == MHD_REQUEST_TERMINATED_COMPLETED_OK && r->finished))
            cancel_req(r, TERN_CANCEL_CLIENT);
        pthread_mutex_lock(&s->mu);
        if (r->open_counted) s->n_open--;
        r->open_counted = false;
        pthread_mutex_unlock(&s->mu);
        req_release(r);
    }
    free(k->body);
    free(k->model_id);
    free(k);
    *con_cls = NULL;
}

/* libmicrohttpd took over (or closed) a connection the gate handed it */
static void notify_conn(void *cls, struct MHD_Connection *c, void **socket_context,
                        enum MHD_ConnectionNotificationCode code)
{
    tern_server *s = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        tern_gate_conn *gc = malloc(sizeof *gc);
        if (gc && ci && tern_gate_conn_info(s->gate, ci->connect_fd, gc)) {
            *socket_context = gc;
        } else {
            free(gc);
            *socket_context = NULL;
        }
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        tern_gate_conn *gc = *socket_context;
        if (gc) tern_gate_release(s->gate, gc->key);
        free(gc);
        *socket_context = NULL;
    }
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    if (tern_log_get_level() < TERN_LOG_DEBUG) return;
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
    tern_log(TERN_LOG_DEBUG, "http: %s", line);
}

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
    s->id_salt = mix64((uint64_t)ts.tv_sec * 1000000007ull ^ (uint64_t)ts.tv_nsec ^
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
    s->d = MHD_start_daemon(flags, 0, NULL, NULL, handler, s, MHD_OPTION_NOTIFY_COMPLETED,
                            completed, s, MHD_OPTION_NOTIFY_CONNECTION, notify_conn, s,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)IDLE_TIMEOUT_S,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)(max_conns + MHD_LIMIT_MARGIN),
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)TERN_HTTP_POOL,
                            MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, MHD_OPTION_END);
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

void tern_server_attach(tern_server *s, tern_engine *e, const tern_tokenizer *tok)
{
    s->e = e;
    s->tok = tok;
    s->n_ctx = tern_engine_n_ctx(e);
    s->n_vocab = tern_engine_hparams(e)->n_vocab;
    s->max_seqs = tern_engine_max_seqs(e);
    s->n_ranks = tern_engine_n_ranks(e);
    s->cap_active = s->max_seqs + s->o.max_queue;
    s->n_stop_ids = 0;
    int32_t eos = tern_tokenizer_eos(tok), eot = tern_tokenizer_eot(tok);
    if (eos >= 0) s->stop_ids[s->n_stop_ids++] = eos;
    if (eot >= 0 && eot != eos) s->stop_ids[s->n_stop_ids++] = eot;
    tern_metrics_snapshot(&s->m, e);
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
    tern_metrics_snapshot(&s->m, s->e);
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
        unlist(s, r);
        bool held = r->submitted; /* else its HTTP thread drops the engine's ref after submit */
        r->failed_out = true;
        tern_cancel_reason cw = r->cancel_asked ? r->cancel_why : TERN_CANCEL_NONE;
        pthread_mutex_unlock(&s->mu);
        tern_metrics_finish(&s->m, TERN_FINISH_ERROR, cw);
        pthread_mutex_lock(&r->mu);
        r->done = true;
        r->why = TERN_FINISH_ERROR;
        snprintf(r->err, sizeof r->err, "%s", why);
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
        if (held) req_release(r); /* the engine's */
        n++;
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    tern_log(TERN_LOG_ERROR, "engine failed, %d requests answered with the error: %s", n, why);
}

tern_code tern_server_run(tern_server *s, tern_status *st)
{
    if (!s->e) return tern_status_set(st, TERN_EINVAL, "server: run before attach");
    tern_log(TERN_LOG_INFO,
             "serving %s on http://%s:%d (pid %d, %d ranks, context %d, %d slots, API key "
             "authentication %s)",
             s->model, s->host, s->port, (int)getpid(), tern_engine_n_ranks(s->e), s->n_ctx,
             s->max_seqs, s->api_key ? "on" : "off");
    double last_stats = 0, deadline = 0;
    bool cancelled_all = false;
    tern_code rc = TERN_OK;
    for (;;) {
        bool idle = false;
        tern_status est = {0};
        if (tern_engine_step(s->e, &idle, &est)) {
            rc = tern_status_set(st, est.code, "%s", est.msg);
            fail_all(s, est.msg);
            break;
        }
        double t = mono_now();
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
                    if (r->submitted) tern_engine_cancel(s->e, r->id);
                }
                cancelled_all = true;
                tern_log(TERN_LOG_WARN, "stopping: grace period over, cancelling %d requests", n);
            }
            pthread_mutex_unlock(&s->mu);
            if (n == 0) break;
        }
        if (idle) tern_engine_wait(s->e, 50);
    }
    /* the engine holds no request now; let the last responses reach their clients */
    double t_end = mono_now();
    double until = t_end + (rc ? FAIL_FLUSH_S : FLUSH_TIMEOUT_S), hold = rc ? FAIL_HOLD_S : 0;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        int32_t n = s->n_open;
        pthread_mutex_unlock(&s->mu);
        double t = mono_now();
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
    tern_metrics_destroy(&s->m);
    pthread_mutex_destroy(&s->mu);
    free(s->api_key);
    free(s);
}
