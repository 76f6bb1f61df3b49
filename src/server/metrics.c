/* metrics.c: the metrics registry and its Prometheus text rendering (GET /metrics).
 *
 * Per-stage numbers come from the engine's own counters (tern_engine_stats_get), snapshotted on
 * the engine thread; a window of about a second turns cumulative busy seconds into a current
 * busy fraction, which is what an operator watching a dashboard wants.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/server-internal.h"

static const int g_codes[TERN_N_CODES] = {200, 400, 401, 404, 405, 413, 429, 499, 500, 503, 504};
static const char *const g_routes[TERN_ROUTE_COUNT] = {"/v1/completions",
                                                       "/v1/chat/completions",
                                                       "/v1/models",
                                                       "/health",
                                                       "/metrics",
                                                       "/tokenize",
                                                       "/detokenize",
                                                       "/props",
                                                       "pages",
                                                       "/pipeline.json",
                                                       "other"};
static const char *const g_finish[TERN_FM_COUNT] = {
    "stop", "length", "stop_string", "client_gone", "shutdown", "cancelled", "error"};
static const double g_ttft_le[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
static const double g_itl_le[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                  0.05,   0.1,   0.25,   0.5,   1,    2.5};
static const double g_e2e_le[] = {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};

/* ------------------------------------------------------------------ text buffer */

static bool reserve(tern_sbuf *b, size_t extra)
{
    if (b->oom) return false;
    if (b->len + extra + 1 <= b->cap) return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1) cap *= 2;
    char *s = realloc(b->s, cap);
    if (!s) {
        b->oom = true;
        return false;
    }
    b->s = s;
    b->cap = cap;
    return true;
}

void tern_sbuf_add(tern_sbuf *b, const char *s, size_t n)
{
    if (!reserve(b, n)) return;
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

void tern_sbuf_printf(tern_sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char tmp[512];
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof tmp) {
        tern_sbuf_add(b, tmp, (size_t)n);
        return;
    }
    if (!reserve(b, (size_t)n)) return;
    va_start(ap, fmt);
    vsnprintf(b->s + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void tern_sbuf_free(tern_sbuf *b)
{
    free(b->s);
    memset(b, 0, sizeof *b);
}

/* ------------------------------------------------------------------ registry */

static void hist_init(tern_hist *h, const double *le, int n)
{
    memset(h, 0, sizeof *h);
    h->n = n < TERN_HIST_MAX ? n : TERN_HIST_MAX;
    memcpy(h->le, le, (size_t)h->n * sizeof *le);
}

void tern_metrics_init(tern_metrics *m)
{
    memset(m, 0, sizeof *m);
    pthread_mutex_init(&m->mu, NULL);
    hist_init(&m->ttft, g_ttft_le, (int)(sizeof g_ttft_le / sizeof *g_ttft_le));
    hist_init(&m->itl, g_itl_le, (int)(sizeof g_itl_le / sizeof *g_itl_le));
    hist_init(&m->e2e, g_e2e_le, (int)(sizeof g_e2e_le / sizeof *g_e2e_le));
}

void tern_metrics_destroy(tern_metrics *m)
{
    free(m->ranks), free(m->scratch), free(m->busy_frac), free(m->win_busy);
    pthread_mutex_destroy(&m->mu);
}

void tern_metrics_request(tern_metrics *m, tern_route route, int status)
{
    int k = TERN_N_CODES;
    for (int i = 0; i < TERN_N_CODES; i++)
        if (g_codes[i] == status) k = i;
    pthread_mutex_lock(&m->mu);
    m->requests[route][k]++;
    pthread_mutex_unlock(&m->mu);
}

void tern_metrics_observe(tern_metrics *m, tern_hist *h, double v)
{
    pthread_mutex_lock(&m->mu);
    int i = 0;
    while (i < h->n && v > h->le[i]) i++;
    h->count[i]++;
    h->sum += v;
    h->total++;
    pthread_mutex_unlock(&m->mu);
}

void tern_metrics_finish(tern_metrics *m, tern_finish why, tern_cancel_reason cancel)
{
    tern_finish_metric k = why == TERN_FINISH_STOP             ? TERN_FM_STOP
                           : why == TERN_FINISH_LENGTH         ? TERN_FM_LENGTH
                           : why != TERN_FINISH_CANCELLED      ? TERN_FM_ERROR
                           : cancel == TERN_CANCEL_STOP_STRING ? TERN_FM_STOP_STRING
                           : cancel == TERN_CANCEL_CLIENT      ? TERN_FM_CLIENT_GONE
                           : cancel == TERN_CANCEL_SHUTDOWN    ? TERN_FM_SHUTDOWN
                                                               : TERN_FM_CANCELLED;
    pthread_mutex_lock(&m->mu);
    m->finish[k]++;
    m->in_flight--;
    pthread_mutex_unlock(&m->mu);
}

void tern_metrics_snapshot(tern_metrics *m, const tern_backend *be)
{
    int32_t n = be->n_ranks;
    if (m->n_ranks != n) {
        /* once, at attach: the rank count never changes while the engine is open */
        pthread_mutex_lock(&m->mu);
        free(m->ranks), free(m->scratch), free(m->busy_frac), free(m->win_busy);
        m->ranks = calloc((size_t)n, sizeof *m->ranks);
        m->scratch = calloc((size_t)n, sizeof *m->scratch);
        m->busy_frac = calloc((size_t)n, sizeof *m->busy_frac);
        m->win_busy = calloc((size_t)n, sizeof *m->win_busy);
        m->n_ranks = m->ranks && m->scratch && m->busy_frac && m->win_busy ? n : 0;
        m->have_stats = false;
        pthread_mutex_unlock(&m->mu);
        if (!m->n_ranks) return;
    }
    tern_engine_stats s = {.ranks = m->scratch, .cap_ranks = n};
    be->stats(be->self, &s);
    pthread_mutex_lock(&m->mu);
    memcpy(m->ranks, m->scratch, (size_t)n * sizeof *m->ranks);
    m->stats = s;
    m->stats.ranks = m->ranks;
    m->have_stats = true;
    double dt = s.wall_s - m->win_wall;
    if (dt >= 1.0 || m->win_wall == 0) {
        for (int r = 0; r < n; r++) {
            double db = m->ranks[r].busy_s - m->win_busy[r];
            m->busy_frac[r] = dt > 0 && db > 0 ? (db < dt ? db / dt : 1.0) : 0.0;
            m->win_busy[r] = m->ranks[r].busy_s;
        }
        m->win_wall = s.wall_s;
    }
    pthread_mutex_unlock(&m->mu);
}

/* ------------------------------------------------------------------ rendering */

static void head(tern_sbuf *b, const char *name, const char *type, const char *help)
{
    tern_sbuf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void hist(tern_sbuf *b, const char *name, const char *help, const tern_hist *h)
{
    head(b, name, "histogram", help);
    uint64_t cum = 0;
    for (int i = 0; i < h->n; i++) {
        cum += h->count[i];
        tern_sbuf_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, h->le[i], (unsigned long long)cum);
    }
    cum += h->count[h->n];
    tern_sbuf_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
    tern_sbuf_printf(b, "%s_sum %.6f\n%s_count %llu\n", name, h->sum, name,
                     (unsigned long long)h->total);
}

void tern_metrics_render(tern_metrics *m, const char *model, int state, tern_sbuf *b)
{
    pthread_mutex_lock(&m->mu);
    head(b, "ternpipe_up", "gauge", "1 when the engine is open on every rank and serving.");
    tern_sbuf_printf(b, "ternpipe_up{model=\"%s\"} %d\n", model, state == 1);
    head(b, "ternpipe_http_requests_total", "counter", "HTTP requests by route and status code.");
    for (int r = 0; r < TERN_ROUTE_COUNT; r++)
        for (int k = 0; k <= TERN_N_CODES; k++) {
            if (!m->requests[r][k]) continue;
            char code[16];
            if (k < TERN_N_CODES)
                snprintf(code, sizeof code, "%d", g_codes[k]);
            else
                snprintf(code, sizeof code, "other");
            tern_sbuf_printf(b, "ternpipe_http_requests_total{route=\"%s\",code=\"%s\"} %llu\n",
                             g_routes[r], code, (unsigned long long)m->requests[r][k]);
        }
    head(b, "ternpipe_requests_finished_total", "counter", "Generation requests by finish reason.");
    for (int k = 0; k < TERN_FM_COUNT; k++)
        tern_sbuf_printf(b, "ternpipe_requests_finished_total{reason=\"%s\"} %llu\n", g_finish[k],
                         (unsigned long long)m->finish[k]);
    head(b, "ternpipe_prompt_tokens_total", "counter", "Prompt tokens of accepted requests.");
    tern_sbuf_printf(b, "ternpipe_prompt_tokens_total %llu\n",
                     (unsigned long long)m->prompt_tokens);
    head(b, "ternpipe_generation_tokens_total", "counter", "Tokens sampled by the engine.");
    tern_sbuf_printf(b, "ternpipe_generation_tokens_total %llu\n",
                     (unsigned long long)m->generated_tokens);
    hist(b, "ternpipe_time_to_first_token_seconds",
         "From submission to the first sampled token (engine side).", &m->ttft);
    hist(b, "ternpipe_inter_token_latency_seconds",
         "Between consecutive tokens of one sequence (engine side).", &m->itl);
    hist(b, "ternpipe_request_duration_seconds", "From submission to the end of generation.",
         &m->e2e);
    head(b, "ternpipe_requests_in_flight", "gauge",
         "Generation requests accepted and not finished (running or queued).");
    tern_sbuf_printf(b, "ternpipe_requests_in_flight %d\n", m->in_flight);
    if (m->have_stats) {
        const tern_engine_stats *s = &m->stats;
        int n = s->n_ranks < m->n_ranks ? s->n_ranks : m->n_ranks;
        const tern_rank_stats *rk = s->ranks;
        head(b, "ternpipe_queue_depth", "gauge", "Requests waiting for a sequence slot or KV.");
        tern_sbuf_printf(b, "ternpipe_queue_depth %d\n", s->queued);
        head(b, "ternpipe_running_sequences", "gauge", "Sequences admitted to the pipeline.");
        tern_sbuf_printf(b, "ternpipe_running_sequences %d\n", s->running);
        head(b, "ternpipe_engine_steps_total", "counter", "Micro-batches completed.");
        tern_sbuf_printf(b, "ternpipe_engine_steps_total %lld\n", (long long)s->steps);
        head(b, "ternpipe_pipeline_stages", "gauge", "Pipeline stages (MPI ranks).");
        tern_sbuf_printf(b, "ternpipe_pipeline_stages %d\n", s->n_ranks);
        head(b, "ternpipe_stage_layers", "gauge",
             "Layers per stage, with the slice [first, end) as labels.");
        for (int r = 0; r < n; r++)
            tern_sbuf_printf(b, "ternpipe_stage_layers{stage=\"%d\",first=\"%d\",end=\"%d\"} %d\n",
                             r, rk[r].layer_start, rk[r].layer_end,
                             rk[r].layer_end - rk[r].layer_start);
        head(b, "ternpipe_stage_head_rows", "gauge",
             "LM head rows (vocabulary ids) per stage, with the slice [first, end) as labels.");
        for (int r = 0; r < n; r++)
            tern_sbuf_printf(
                b, "ternpipe_stage_head_rows{stage=\"%d\",first=\"%d\",end=\"%d\"} %d\n", r,
                rk[r].vocab_start, rk[r].vocab_end, rk[r].vocab_end - rk[r].vocab_start);
        head(b, "ternpipe_stage_planned_bytes_per_token", "gauge",
             "The plan's cost of each stage: weight bytes read per token over its relative speed.");
        for (int r = 0; r < n; r++)
            tern_sbuf_printf(b, "ternpipe_stage_planned_bytes_per_token{stage=\"%d\"} %.0f\n", r,
                             rk[r].predicted);
        head(b, "ternpipe_kv_blocks_used", "gauge", "KV-cache blocks reserved, per stage.");
        for (int r = 0; r < n; r++)
            tern_sbuf_printf(b, "ternpipe_kv_blocks_used{stage=\"%d\"} %d\n", r, rk[r].kv_used);
        head(b, "ternpipe_kv_blocks_free", "gauge", "KV-cache blocks free, per stage.");
        for (int r = 0; r < n; r++)
            tern_sbuf_printf(b, "ternpipe_kv_blocks_free{stage=\"%d\"} %d\n", r,
                             rk[r].kv_total - rk[r].kv_used);
        head(b, "ternpipe_stage_busy_seconds_total", "counter",
             "Compute time per stage (rank 0 includes embedding, LM head and sampling).");
        for (int r = 0; r < n; r++)
            tern_sbuf_printf(b, "ternpipe_stage_busy_seconds_total{stage=\"%d\"} %.6f\n", r,
                             rk[r].busy_s);
        head(b, "ternpipe_stage_busy_fraction", "gauge",
             "Fraction of wall time each stage computed, over the last second or so.");
        for (int r = 0; r < n; r++)
            tern_sbuf_printf(b, "ternpipe_stage_busy_fraction{stage=\"%d\"} %.4f\n", r,
                             m->busy_frac[r]);
        head(b, "ternpipe_hop_latency_seconds", "gauge",
             "Latency of one pipeline hop (send to receive) over the last 4096 hops.");
        tern_sbuf_printf(b, "ternpipe_hop_latency_seconds{quantile=\"0.5\"} %.9f\n",
                         s->hop_p50_ms / 1e3);
        tern_sbuf_printf(b, "ternpipe_hop_latency_seconds{quantile=\"0.99\"} %.9f\n",
                         s->hop_p99_ms / 1e3);
        head(b, "ternpipe_prefix_cache_hits_total", "counter",
             "Admissions whose prompt shared KV blocks kept from a finished sequence.");
        tern_sbuf_printf(b, "ternpipe_prefix_cache_hits_total %lld\n", (long long)s->prefix_hits);
        head(b, "ternpipe_prefix_cache_misses_total", "counter",
             "Admissions that found no cached prefix.");
        tern_sbuf_printf(b, "ternpipe_prefix_cache_misses_total %lld\n",
                         (long long)s->prefix_misses);
        head(b, "ternpipe_prefix_cache_evictions_total", "counter",
             "Cached prefixes dropped (least recently used, or for room).");
        tern_sbuf_printf(b, "ternpipe_prefix_cache_evictions_total %lld\n",
                         (long long)s->prefix_evictions);
        head(b, "ternpipe_prefix_cache_tokens_total", "counter",
             "Prompt tokens not prefilled thanks to the prefix cache.");
        tern_sbuf_printf(b, "ternpipe_prefix_cache_tokens_total %lld\n",
                         (long long)s->prefix_tokens);
        head(b, "ternpipe_prefix_cache_blocks", "gauge", "KV blocks the prefix cache holds.");
        tern_sbuf_printf(b, "ternpipe_prefix_cache_blocks %d\n", s->kv_cached);
        head(b, "ternpipe_uptime_seconds", "gauge", "Seconds since the engine opened.");
        tern_sbuf_printf(b, "ternpipe_uptime_seconds %.3f\n", s->wall_s);
    }
    pthread_mutex_unlock(&m->mu);
}
