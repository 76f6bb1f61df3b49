/* pages.c: the pages a person looks at (issue 15): the chat page at / and the live pipeline
 * view at /pipeline (web/chat.html and web/pipeline.html, embedded at build time by
 * cmake/embed.cmake), and the small JSON route the view refreshes from, /pipeline.json (one entry
 * per rank: its layers and head rows, busy fraction over the last second, KV blocks, peak RSS; the
 * hop latency). The pages hold no secret: the chat page sends the API key the person types, as any
 * client would. */
#include <stdio.h>
#include <string.h>

#include "server/http-internal.h"

extern const unsigned char tern_web_chat[], tern_web_pipeline[];
extern const size_t tern_web_chat_len, tern_web_pipeline_len;

/* the pages load nothing from elsewhere and run only their own inline script */
#define PAGE_CSP                                                                                   \
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src "      \
    "'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

enum MHD_Result tern_srv_page(tern_server *s, struct MHD_Connection *c, conn *k, const char *url)
{
    bool pipeline = !strcmp(url, "/pipeline");
    const unsigned char *p = pipeline ? tern_web_pipeline : tern_web_chat;
    size_t n = pipeline ? tern_web_pipeline_len : tern_web_chat_len;
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(n, (void *)(uintptr_t)p, MHD_RESPMEM_PERSISTENT);
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", "text/html; charset=utf-8");
    MHD_add_response_header(resp, "Content-Security-Policy", PAGE_CSP);
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    MHD_add_response_header(resp, "Connection", "close");
    enum MHD_Result ok = MHD_queue_response(c, 200, resp);
    MHD_destroy_response(resp);
    k->responded = true;
    tern_metrics_request(&s->m, k->route, 200);
    return ok;
}

static cJSON *pair(int a, int b)
{
    cJSON *x = cJSON_CreateArray();
    cJSON_AddItemToArray(x, cJSON_CreateNumber(a));
    cJSON_AddItemToArray(x, cJSON_CreateNumber(b));
    return x;
}

enum MHD_Result tern_srv_pipeline_json(tern_server *s, struct MHD_Connection *c, conn *k,
                                       const char *status)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "model", s->model);
    cJSON_AddStringToObject(j, "status", status);
    pthread_mutex_lock(&s->m.mu);
    const tern_engine_stats *es = &s->m.stats;
    bool have = s->m.have_stats;
    cJSON_AddNumberToObject(j, "running", have ? es->running : 0);
    cJSON_AddNumberToObject(j, "queued", have ? es->queued : 0);
    cJSON_AddNumberToObject(j, "tokens_generated", (double)s->m.generated_tokens);
    cJSON_AddNumberToObject(j, "hop_p50_ms", have ? es->hop_p50_ms : 0);
    cJSON_AddNumberToObject(j, "hop_p99_ms", have ? es->hop_p99_ms : 0);
    cJSON_AddNumberToObject(j, "uptime_s", have ? es->wall_s : 0);
    cJSON *ranks = cJSON_AddArrayToObject(j, "ranks");
    int n = have ? (es->n_ranks < s->m.n_ranks ? es->n_ranks : s->m.n_ranks) : 0;
    for (int r = 0; r < n; r++) {
        const tern_rank_stats *rk = &s->m.ranks[r];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "rank", r);
        cJSON_AddItemToObject(o, "layers", pair(rk->layer_start, rk->layer_end));
        cJSON_AddItemToObject(o, "head_rows", pair(rk->vocab_start, rk->vocab_end));
        cJSON_AddNumberToObject(o, "busy", s->m.busy_frac[r]);
        cJSON_AddNumberToObject(o, "busy_s", rk->busy_s);
        cJSON_AddNumberToObject(o, "kv_used", rk->kv_used);
        cJSON_AddNumberToObject(o, "kv_total", rk->kv_total);
        cJSON_AddNumberToObject(o, "peak_rss", (double)rk->peak_rss);
        cJSON_AddItemToArray(ranks, o);
    }
    pthread_mutex_unlock(&s->m.mu);
    return tern_srv_send_json(s, c, k, 200, j);
}
