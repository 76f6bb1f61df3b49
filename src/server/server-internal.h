/* server-internal.h: pieces shared by the server's files: a growable text buffer, latency
 * histograms and the metrics registry rendered by GET /metrics.
 *
 * Threads: a tern_metrics is updated from HTTP threads (requests by status) and the engine
 * thread (tokens, latencies, the engine stats snapshot); every access holds its mutex.
 */
#ifndef TERN_SERVER_INTERNAL_H
#define TERN_SERVER_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ternpipe/engine.h"
#include "ternpipe/server.h"
#include "ternpipe/status.h"

/* growable NUL-terminated text; on allocation failure it stays short and sets oom */
typedef struct tern_sbuf {
    char *s;
    size_t len, cap;
    bool oom;
} tern_sbuf;

void tern_sbuf_add(tern_sbuf *b, const char *s, size_t n);
void tern_sbuf_printf(tern_sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void tern_sbuf_free(tern_sbuf *b);
/* Appends s[n] (any bytes, NUL included) as a JSON string literal with its quotes: control
 * characters escaped (NUL as \u0000), invalid UTF-8 replaced by U+FFFD. */
void tern_json_quote(tern_sbuf *b, const char *s, size_t n);

#define TERN_HIST_MAX 16

typedef struct tern_hist {
    int n;
    double le[TERN_HIST_MAX];          /* upper bounds, increasing */
    uint64_t count[TERN_HIST_MAX + 1]; /* per bucket (not cumulative); last: +Inf */
    double sum;
    uint64_t total;
} tern_hist;

typedef enum tern_route {
    TERN_ROUTE_COMPLETIONS = 0,
    TERN_ROUTE_CHAT,
    TERN_ROUTE_MODELS,
    TERN_ROUTE_HEALTH,
    TERN_ROUTE_METRICS,
    TERN_ROUTE_TOKENIZE,
    TERN_ROUTE_DETOKENIZE,
    TERN_ROUTE_PROPS,
    TERN_ROUTE_PAGE,     /* GET / and /pipeline (pages.c) */
    TERN_ROUTE_PIPELINE, /* GET /pipeline.json */
    TERN_ROUTE_OTHER,
    TERN_ROUTE_COUNT
} tern_route;

/* why the server cancelled a sequence (for the finish-reason metric) */
typedef enum tern_cancel_reason {
    TERN_CANCEL_NONE = 0,
    TERN_CANCEL_STOP_STRING,
    TERN_CANCEL_CLIENT,
    TERN_CANCEL_SHUTDOWN,
    TERN_CANCEL_COUNT
} tern_cancel_reason;

/* finish reasons counted: the engine's, with cancellations split by their cause */
typedef enum tern_finish_metric {
    TERN_FM_STOP = 0,
    TERN_FM_LENGTH,
    TERN_FM_STOP_STRING,
    TERN_FM_CLIENT_GONE,
    TERN_FM_SHUTDOWN,
    TERN_FM_CANCELLED,
    TERN_FM_ERROR,
    TERN_FM_COUNT
} tern_finish_metric;

/* status codes counted separately; everything else is "other" */
#define TERN_N_CODES 11

typedef struct tern_metrics {
    pthread_mutex_t mu;
    uint64_t requests[TERN_ROUTE_COUNT][TERN_N_CODES + 1];
    uint64_t prompt_tokens, generated_tokens;
    uint64_t finish[TERN_FM_COUNT];
    tern_hist ttft, itl, e2e;
    int32_t in_flight; /* generation requests accepted and not finished */
    /* engine snapshot (engine thread, throttled) */
    bool have_stats;
    tern_engine_stats stats;  /* stats.ranks = ranks */
    tern_rank_stats *ranks;   /* [n_ranks] copies, under mu */
    tern_rank_stats *scratch; /* [n_ranks] the engine thread's fresh snapshot */
    int32_t n_ranks;
    double *busy_frac; /* [n_ranks] over the last window of about a second */
    double win_wall, *win_busy;
} tern_metrics;

void tern_metrics_init(tern_metrics *m);
void tern_metrics_destroy(tern_metrics *m);
void tern_metrics_request(tern_metrics *m, tern_route route, int status);
void tern_metrics_observe(tern_metrics *m, tern_hist *h, double seconds);
/* engine thread: a sequence ended */
void tern_metrics_finish(tern_metrics *m, tern_finish why, tern_cancel_reason cancel);
/* engine thread: takes a fresh tern_engine_stats_get snapshot (arrays sized on first use) */
void tern_metrics_snapshot(tern_metrics *m, const tern_backend *b);
/* Prometheus text exposition format 0.0.4 */
void tern_metrics_render(tern_metrics *m, const char *model, int state, tern_sbuf *out);

/* ------------------------------------------------------------------ the gate (gate.c) */

/* Limits on a request head, checked before libmicrohttpd sees it. A real client sends well
 * under 2 kB of headers (browsers ~1 kB, SDKs ~0.5 kB); 16 kB leaves room for long bearer
 * tokens and cookies while keeping the peek buffer and the per-connection pool small. The
 * head must fit in libmicrohttpd's connection memory (TERN_HTTP_POOL in http-internal.h) with room
 * to spare, so it never answers 431 itself (in HTML). */
#define TERN_HTTP_MAX_HEAD 16384 /* request line + header fields, bytes */
#define TERN_HTTP_MAX_URI 8192   /* request target, bytes (every route is < 100) */
#define TERN_HTTP_MAX_FIELDS 100 /* header fields (clients send < 20) */

/* The head of a request in b[n] (possibly incomplete): 0 when more is needed, 200 when it is
 * well formed (its length in *head_len), else the status to answer (400, 414, 431, 505) with
 * a one-line message. Pure: no state, so it can be fuzzed. Rejects what libmicrohttpd would
 * answer in HTML and what lets a proxy and this server split a stream differently:
 * conflicting Content-Length values, Content-Length with Transfer-Encoding, several Host. */
int tern_http_check_head(const char *b, size_t n, size_t *head_len, char *msg, size_t cap);

struct MHD_Daemon;
typedef struct tern_gate tern_gate;

typedef struct tern_gate_limits {
    int32_t max_conns;        /* connections held at once (being read + handed over) */
    int32_t max_per_ip;       /* of those, from one address; <= 0: no limit */
    double request_timeout_s; /* from accept to the whole head (and, in routes.c, body) */
} tern_gate_limits;

/* what the gate knew of a connection it handed over */
typedef struct tern_gate_conn {
    uint8_t key[16]; /* peer address (IPv4 as ::ffff:a.b.c.d) */
    double t0;       /* accepted at (CLOCK_MONOTONIC seconds); 0: unknown */
} tern_gate_conn;

/* Serves lfd (listening, non-blocking) on a thread of its own, handing good requests to d
 * (started with MHD_USE_NO_LISTEN_SOCKET | MHD_USE_ITC). */
tern_code tern_gate_start(tern_gate **out, int lfd, struct MHD_Daemon *d,
                          const tern_gate_limits *lim, tern_status *st);
/* Stops the thread and closes the sockets it still holds (not lfd); the gate stays for the
 * connections libmicrohttpd still holds (their release). NULL is allowed. */
void tern_gate_stop(tern_gate *g);
/* Frees a stopped gate: after the daemon it hands connections to has stopped (no release can
 * come any more). NULL is allowed. */
void tern_gate_free(tern_gate *g);
/* libmicrohttpd's start notification for fd: takes the gate's record of it */
bool tern_gate_conn_info(tern_gate *g, int fd, tern_gate_conn *out);
/* a handed-over connection closed: its place is free again */
void tern_gate_release(tern_gate *g, const uint8_t key[16]);
/* Raises RLIMIT_NOFILE as far as needed for max_conns (and the gate's own sockets); returns
 * max_conns, or fewer when the hard limit does not allow it. */
int tern_gate_fd_budget(int max_conns);

#endif
