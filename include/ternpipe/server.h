/* server.h: the OpenAI-compatible HTTP front end of rank 0 (DESIGN.md sections 1-2).
 *
 * Routes: POST /v1/completions, POST /v1/chat/completions (JSON or server-sent events),
 * GET /v1/models, GET /health, GET /metrics (Prometheus text).
 *
 * Ownership: a tern_server owns its HTTP daemon, its request contexts and its metrics. It
 * borrows the engine and the tokenizer given to tern_server_attach; both must outlive the
 * server's run (the caller closes the engine after tern_server_run returns).
 * Threads: the HTTP threads (one per connection, libmicrohttpd) parse, tokenize and call only
 * tern_engine_submit and tern_engine_cancel. Everything else on the engine, and every engine
 * callback, runs on the thread that calls tern_server_run: rank 0's main thread, the only
 * thread that calls MPI. tern_server_stop is async-signal-safe.
 * Life cycle: create (binds and answers /health with 503 "loading") -> attach (engine ready:
 * /health 200) -> run (until stopped: new requests get 503, running ones finish or are
 * cancelled after the grace period) -> free.
 * tern_server_parse_request is a pure function (no engine, no tokenizer, no globals) so it can
 * be fuzzed.
 */
#ifndef TERNPIPE_SERVER_H
#define TERNPIPE_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ternpipe/engine.h"
#include "ternpipe/sampler.h"
#include "ternpipe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tern_tokenizer tern_tokenizer;

/* ------------------------------------------------------------------ request parsing */

#define TERN_SERVER_MAX_STOP 16      /* stop strings per request */
#define TERN_SERVER_MAX_STOP_LEN 256 /* bytes per stop string */
#define TERN_SERVER_MAX_DEPTH 64     /* JSON nesting depth of a request body */
#define TERN_SERVER_MAX_N 16         /* choices per request (n) */

typedef enum tern_chat_role {
    TERN_ROLE_SYSTEM = 0, /* "system" and "developer" */
    TERN_ROLE_USER,
    TERN_ROLE_ASSISTANT,
    TERN_ROLE_COUNT
} tern_chat_role;

typedef struct tern_chat_message {
    tern_chat_role role;
    char *content; /* text parts joined; "" for null content */
} tern_chat_message;

typedef struct tern_parsed_request {
    bool chat;           /* /v1/chat/completions */
    bool stream;         /* server-sent events */
    bool include_usage;  /* stream_options.include_usage */
    bool echo;           /* completions: the prompt's text before the completion */
    char *prompt;        /* completions: text prompt, or NULL when prompt_ids are given */
    size_t prompt_len;   /* bytes of prompt (it may contain NUL characters from \u0000) */
    int32_t *prompt_ids; /* completions: [n_prompt_ids] token ids (range checked by the engine) */
    int32_t n_prompt_ids;
    tern_chat_message *messages; /* chat: [n_messages] */
    int32_t n_messages;
    int32_t max_tokens;          /* -1: not given (the server's default, clamped to the context) */
    tern_sampling sampling;      /* its logit_bias points at logit_bias below */
    tern_logit_bias *logit_bias; /* [sampling.n_logit_bias], owned */
    int32_t logprobs;            /* -1: off; else the top alternatives to report with each token's
                                    log-probability (completions: logprobs N; chat: logprobs true with
                                    top_logprobs N) */
    bool has_seed;
    int32_t n; /* choices, 1..TERN_SERVER_MAX_N; choice i samples with seed + i */
    char *stop[TERN_SERVER_MAX_STOP]; /* non-empty stop strings */
    int32_t n_stop;
    char *model; /* as requested, or NULL */
    /* response_format as compact JSON text (json_object or json_schema: checked, grammar.h), or
     * NULL for none */
    char *response_format;
} tern_parsed_request;

/* Parses and validates a request body (JSON text of len bytes, not necessarily NUL-terminated)
 * for /v1/completions (chat false) or /v1/chat/completions (chat true). Unknown fields are
 * ignored; null means "not given". On failure returns TERN_EINVAL with a one-line message in
 * err ("temperature: got string, expected a number") and the offending field in param ("" when
 * the body as a whole is wrong); out is left empty. Either way free out with
 * tern_parsed_request_free. */
tern_code tern_server_parse_request(const char *body, size_t len, bool chat,
                                    tern_parsed_request *out, char *err, size_t errcap, char *param,
                                    size_t paramcap);
void tern_parsed_request_free(tern_parsed_request *r);

/* The deepest nesting of arrays and objects in the JSON text (strings are skipped), stopping
 * early once it exceeds limit. Malformed text gives a number too; parsing reports the rest. */
int tern_json_depth(const char *s, size_t len, int limit);

/* ------------------------------------------------------------------ stop strings */

/* Incremental stop-string matching on generated text. The caller appends text as it is
 * detokenized; tern_stop_scan says how much of it may be shown now and whether a stop string
 * ended generation. Text that could be the beginning of a stop string is held back until it
 * is known not to be one; the stop string itself and everything after it is never shown. */
typedef struct tern_stop_match {
    const char *const *stop; /* [n_stop] non-empty strings */
    int32_t n_stop;
    size_t max_len; /* longest stop string */
    size_t scanned; /* bytes of text searched for complete matches so far */
} tern_stop_match;

void tern_stop_init(tern_stop_match *m, const char *const *stop, int32_t n_stop);
/* text [len] is all generated text so far. Returns true when a stop string occurs: then
 * *visible is where it starts (the text to return ends there). Otherwise *visible is the
 * length of the prefix that can no longer become part of a stop string. */
bool tern_stop_scan(tern_stop_match *m, const char *text, size_t len, size_t *visible);

/* ------------------------------------------------------------------ the server */

typedef struct tern_server_opts {
    const char *host;           /* bind address; NULL = "127.0.0.1" */
    int port;                   /* 0 = 8080 */
    const char *api_key;        /* NULL: no authentication; else see tern_server_check_api_key */
    const char *model_name;     /* shown in responses and /v1/models; NULL = "ternpipe" */
    int32_t max_queue;          /* requests waiting beyond the engine's max_seqs; 0 = 256, -1 = 0 */
    int32_t default_max_tokens; /* 0 = 128 */
    double grace_s;             /* after a stop, how long running requests may finish; 0 = 30 */
    size_t max_body;            /* request body bytes; 0 = 1 MiB */
    int32_t max_conns;          /* open connections; past it 503; 0 = 1000 */
    int32_t max_conns_per_ip;   /* open connections from one address; past it 429; 0 = 128,
                                   -1 = no limit (behind a proxy every client has its address) */
    double request_timeout_s;   /* from connecting to the whole request received; 0 = 30 */
} tern_server_opts;

typedef struct tern_server tern_server;

/* What a server serves from: the engine of this process (tern_server_attach) or anything with
 * engine.h's contract for submit, cancel, step and wait (threads and callbacks included), such
 * as the supervisor's engine in another process (src/supervise/remote.h). */
typedef struct tern_backend {
    void *self;
    tern_code (*submit)(void *self, const tern_request *r, int64_t *id, tern_status *st);
    void (*cancel)(void *self, int64_t id);
    tern_code (*step)(void *self, bool *idle, tern_status *st);
    void (*wait)(void *self, int timeout_ms);
    /* the engine thread: fills s (s->ranks and s->cap_ranks set by the caller) */
    void (*stats)(void *self, tern_engine_stats *s);
    /* optional, any thread: why it is not serving right now ("recovering"), NULL when it is;
     * requests are still accepted meanwhile (they wait) */
    const char *(*health)(void *self);
    /* optional, any thread: more Prometheus text for GET /metrics, given to emit */
    void (*metrics)(void *self, void (*emit)(void *ctx, const char *text, size_t n), void *ctx);
    int32_t n_ctx, n_vocab, max_seqs, n_ranks;
} tern_backend;

/* A key that no request can match must not start a server that looks protected, and an empty
 * one (an unset shell variable) must not quietly turn authentication off: TERN_EINVAL for an
 * empty or blank key, white space at either end (header values are trimmed) or a control
 * character. what names the source in the message ("--api-key", "TERNPIPE_API_KEY"); the
 * message never contains the key. */
tern_code tern_server_check_api_key(const char *key, const char *what, tern_status *st);

/* Binds and starts the HTTP threads. Until tern_server_attach every route answers 503. A
 * non-NULL api_key is checked with tern_server_check_api_key. */
tern_code tern_server_create(tern_server **out, const tern_server_opts *o, tern_status *st);
/* The engine is open (every rank has joined): requests are accepted from now on. tok is the
 * model's tokenizer (tern_tokenizer_load from tern_engine_gguf). */
void tern_server_attach(tern_server *s, tern_engine *e, const tern_tokenizer *tok);
/* The same over any backend (copied; b->self must outlive the server's run). */
void tern_server_attach_backend(tern_server *s, const tern_backend *b, const tern_tokenizer *tok);
/* The port actually bound (useful with port 0 in opts meaning the default). */
int tern_server_port(const tern_server *s);
/* Serves on the calling thread (the engine thread) until tern_server_stop, then drains:
 * waits for running requests up to grace_s, cancels the rest, and returns once no request
 * holds the engine. Call after tern_server_attach. */
tern_code tern_server_run(tern_server *s, tern_status *st);
/* Asks tern_server_run to drain and return; a second call ends the grace period at once.
 * Async-signal-safe. */
void tern_server_stop(tern_server *s);
/* Stops the HTTP threads and frees everything. NULL is allowed. */
void tern_server_free(tern_server *s);

/* ------------------------------------------------------------------ client */

/* A small blocking HTTP/1.1 client for `ternpipe chat` (plain http only: meant for a server on
 * this machine or a trusted network). It lives here because this module is the home of JSON. */
typedef struct tern_client_opts {
    const char *url;     /* "http://host:port" (a trailing path is used as a prefix) */
    const char *api_key; /* NULL: none */
    int32_t max_tokens;  /* <= 0: the server's default */
    float temperature;   /* < 0: the server's default */
    bool has_seed;
    uint64_t seed;
    double timeout_s; /* connect, and silence while waiting for tokens; 0 = 300 */
    /* the rest of the sampling parameters, sent when not at their defaults (NULL: none) */
    const tern_sampling *sampling;
} tern_client_opts;

/* GET /health: TERN_OK when the server answers 200. */
tern_code tern_client_health(const tern_client_opts *o, tern_status *st);
/* POST /v1/chat/completions with stream: true. on_text gets the reply as it streams; *reply
 * (malloc'd, NUL-terminated; may be NULL) gets all of it and finish (may be NULL) the finish
 * reason. Server errors come back as TERN_EINVAL/TERN_EBUSY with the server's message. */
tern_code tern_client_chat(const tern_client_opts *o, const tern_chat_message *msgs, int32_t n_msgs,
                           void (*on_text)(void *user, const char *s, size_t n), void *user,
                           char **reply, char *finish, size_t finish_cap, tern_status *st);

#ifdef __cplusplus
}
#endif
#endif
