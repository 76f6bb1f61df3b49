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
    tern_engine_stats stats;
    double busy_frac[64]; /* over the last window of about a second */
    double win_wall, win_busy[64];
} tern_metrics;

void tern_metrics_init(tern_metrics *m);
void tern_metrics_destroy(tern_metrics *m);
void tern_metrics_request(tern_metrics *m, tern_route route, int status);
void tern_metrics_observe(tern_metrics *m, tern_hist *h, double seconds);
/* engine thread: a sequence ended */
void tern_metrics_finish(tern_metrics *m, tern_finish why, tern_cancel_reason cancel);
/* engine thread: a fresh tern_engine_stats_get result */
void tern_metrics_engine(tern_metrics *m, const tern_engine_stats *s);
/* Prometheus text exposition format 0.0.4 */
void tern_metrics_render(tern_metrics *m, const char *model, int state, tern_sbuf *out);

#endif
