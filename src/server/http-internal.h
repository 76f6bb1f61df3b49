/* http-internal.h: the state server.c, request.c, respond.c and routes.c share (the HTTP front
 * end; see server.c for threads and ownership). Nothing outside src/server/ includes it. */
#ifndef TERN_HTTP_INTERNAL_H
#define TERN_HTTP_INTERNAL_H

#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <cjson/cJSON.h>
#include <microhttpd.h>

#include "server/server-internal.h"
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
    volatile sig_atomic_t stop;        /* set from signal handlers */
    tern_backend b;                    /* set at attach; b.self NULL before */
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
    /* n > 1 (set before submit, then read-only): each choice is a request of its own; the first
     * is the connection's and holds a reference to each other one (sibs), and each other one
     * holds one to the first (first), whose cv hears their news too */
    int32_t index;
    req **sibs; /* first choice: [n_sibs] */
    int32_t n_sibs;
    req *first;
    /* HTTP thread only */
    tern_parsed_request pr; /* other choices: a shallow copy of the first's (pr_shared) */
    bool pr_shared;
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
    bool finished, stop_hit, failed, sent_role, sent_final, sse_done, aborted;
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

/* ------------------------------------------------ request objects and the engine's callbacks
 * (request.c) */
double tern_srv_mono_now(void);
uint64_t tern_srv_mix64(uint64_t x);
/* ids and default seeds: unique per request, not reproducible (that is what "seed" is for) */
uint64_t tern_srv_next_random(tern_server *s);
void tern_srv_req_release(req *r);
void tern_srv_req_ref(req *r, int delta);
req *tern_srv_req_new(tern_server *s, struct MHD_Connection *c);
/* unlinks r from the active list (s->mu held) */
void tern_srv_unlist(tern_server *s, req *r);
/* Takes a place among the accepted requests (lists r): 0, or 503 while not serving, 429 when
 * full. */
int tern_srv_reserve(tern_server *s, req *r);
/* undoes it for a request that never reached the engine */
void tern_srv_unreserve(tern_server *s, req *r);
/* Submits choice r (listed) to the engine; on failure the engine holds no reference to it. */
tern_code tern_srv_submit_choice(tern_server *s, req *r, const int32_t *prompt, int32_t n_prompt,
                                 tern_status *st);
/* n > 1: choices 1..n-1 of r, each its own request sampled with seed + i, listed and submitted
 * (the prompt is prefilled for each). */
tern_code tern_srv_more_choices(tern_server *s, req *r, const int32_t *prompt, int32_t n_prompt,
                                tern_status *st);
void tern_srv_on_token(void *user, int32_t tok);
/* just before on_token of the same token: its pick goes at the index that token takes */
void tern_srv_on_logprobs(void *user, const tern_pick *pick);
void tern_srv_on_done(void *user, tern_finish why, const char *err);
/* r has news (r->mu not held): wakes its waiter, and the first choice's for another choice */
void tern_srv_notify(req *r);
/* the choices of a request: r itself, then its other choices (0 <= i < 1 + r->n_sibs) */
static inline req *tern_srv_choice(req *r, int32_t i)
{
    return i == 0 ? r : r->sibs[i - 1];
}
void tern_srv_cancel_req(req *r, tern_cancel_reason why);
/* every choice of r */
void tern_srv_cancel_choices(req *r, tern_cancel_reason why);
/* tern_srv_consume on every choice: whether all have finished, whether one failed */
void tern_srv_consume_choices(req *r, bool *all_finished, bool *any_failed);
/* Moves newly generated tokens into r->text, matching stop strings after every token so the
 * count of tokens (usage) does not depend on how tokens were batched. */
void tern_srv_consume(req *r);
/* Waits up to WAIT_MS for news from the engine; false when the client went away or the server
 * is closing for good. The client is checked on every wake-up, tokens or not: with tokens
 * flowing faster than one per WAIT_MS a check only on time-outs would never run, and a
 * non-streamed request of a client that left would run to max_tokens. */
bool tern_srv_wait_more(req *r);

/* ------------------------------------------------------- JSON, SSE and answers (respond.c) */
/* Generated text may hold any byte, NUL included: the JSON string is written here with its
 * explicit length and added as a raw value, because cJSON's strings end at the first NUL. */
cJSON *tern_srv_add_text(cJSON *obj, const char *name, const char *s, size_t n);
cJSON *tern_srv_usage_json(const req *r);
/* a finished choice as an element of a non-streamed answer's choices */
void tern_srv_add_choice(cJSON *choices, req *q);
cJSON *tern_srv_envelope(const req *r, const char *object);
cJSON *tern_srv_error_json(const char *type, const char *param, const char *code, const char *msg);
const char *tern_srv_failure_message(req *r);
/* A token's piece as JSON text: bytes of an incomplete UTF-8 sequence become U+FFFD (the exact
 * bytes go in "bytes" for chat) */
void tern_srv_add_piece(cJSON *o, const char *name, const char *p, size_t n);
/* OpenAI's logprobs object for taken tokens [from, to): completions' tokens / token_logprobs /
 * top_logprobs / text_offset, or chat's content list; NULL when the request did not ask */
cJSON *tern_srv_logprobs_json(req *r, int32_t from, int32_t to);
/* tokens whose piece begins inside the visible text (a stop string cuts the rest) */
int32_t tern_srv_visible_tokens(const req *r);
ssize_t tern_srv_sse_reader(void *cls, uint64_t pos, char *buf, size_t max);
void tern_srv_sse_free(void *cls);
enum MHD_Result tern_srv_send_body(tern_server *s, struct MHD_Connection *c, conn *k, int status,
                                   const char *type, const char *body, size_t len);
enum MHD_Result tern_srv_send_json(tern_server *s, struct MHD_Connection *c, conn *k, int status,
                                   cJSON *j);
enum MHD_Result tern_srv_send_error(tern_server *s, struct MHD_Connection *c, conn *k, int status,
                                    const char *param, const char *msg);

/* ---------------------------------------------------- routes and libmicrohttpd's callbacks
 * (routes.c) */
/* ---------------------------------------------------------------------- pages (pages.c) */
/* GET / (chat) or /pipeline (the live view) */
enum MHD_Result tern_srv_page(tern_server *s, struct MHD_Connection *c, conn *k, const char *url);
/* GET /pipeline.json; status as /health says it */
enum MHD_Result tern_srv_pipeline_json(tern_server *s, struct MHD_Connection *c, conn *k,
                                       const char *status);

enum MHD_Result tern_srv_handler(void *cls, struct MHD_Connection *c, const char *url,
                                 const char *method, const char *version, const char *upload,
                                 size_t *upload_size, void **con_cls);
void tern_srv_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                        enum MHD_RequestTerminationCode toe);
/* libmicrohttpd took over (or closed) a connection the gate handed it */
void tern_srv_notify_conn(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code);
void tern_srv_mhd_log(void *cls, const char *fmt, va_list ap);

#endif
