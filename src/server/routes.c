/* routes.c: the routes (generation, models, tokenize, props, health, metrics), the API key
 * check and libmicrohttpd's per-request callbacks. */
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

static enum MHD_Result generate(tern_server *s, struct MHD_Connection *c, conn *k)
{
    char err[512], param[64];
    req *r = tern_srv_req_new(s, c);
    if (!r) return tern_srv_send_error(s, c, k, 500, NULL, "server: out of memory");
    k->r = r;
    r->chat = k->route == TERN_ROUTE_CHAT;
    if (tern_server_parse_request(k->body, k->len, r->chat, &r->pr, err, sizeof err, param,
                                  sizeof param))
        return tern_srv_send_error(s, c, k, 400, param, err);
    /* one model is served: absent or "" means it, any other name is an error, not served by
     * whatever happens to be loaded */
    if (r->pr.model && r->pr.model[0] && strcmp(r->pr.model, s->model) != 0)
        return model_not_found(s, c, k, r->pr.model);
    r->stream = r->pr.stream;
    int busy = tern_srv_reserve(s, r);
    if (busy == 503) return tern_srv_send_error(s, c, k, 503, NULL, not_serving(s));
    if (busy == 429) {
        char msg[160];
        snprintf(msg, sizeof msg,
                 "server: got %d requests in flight, expected at most %d (--max-seqs + "
                 "--max-queue); retry later",
                 s->cap_active, s->cap_active);
        return tern_srv_send_error(s, c, k, 429, NULL, msg);
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
            tern_srv_unreserve(s, r);
            tern_tokens_free(&ids);
            return tern_srv_send_error(s, c, k, 400, r->chat ? "messages" : "prompt", st.msg);
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
            tern_srv_unreserve(s, r);
            tern_tokens_free(&ids);
            snprintf(err, sizeof err,
                     "context: prompt: got %d tokens, expected fewer than the context size %d",
                     n_prompt, s->n_ctx);
            return tern_srv_send_error(s, c, k, 400, r->chat ? "messages" : "prompt", err);
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
        tern_srv_unreserve(s, r);
        tern_tokens_free(&ids);
        return tern_srv_send_error(s, c, k, 500, NULL, "server: out of memory");
    }
    tern_stop_init(&r->sm, (const char *const *)r->pr.stop, r->pr.n_stop);
    if (!r->pr.has_seed) r->pr.sampling.seed = tern_srv_next_random(s);
    uint64_t rid = tern_srv_next_random(s);
    snprintf(r->cid, sizeof r->cid, "%s-%016llx", r->chat ? "chatcmpl" : "cmpl",
             (unsigned long long)rid);
    r->created = (long long)time(NULL);

    tern_code rc = tern_srv_submit_choice(s, r, prompt, n_prompt, &st);
    if (!rc && r->pr.n > 1) rc = tern_srv_more_choices(s, r, prompt, n_prompt, &st);
    tern_tokens_free(&ids);
    if (rc) {
        if (r->submitted || r->n_sibs)
            tern_srv_cancel_choices(r, TERN_CANCEL_CLIENT);
        else
            tern_srv_unreserve(s, r);
        if (rc == TERN_EBUSY) return tern_srv_send_error(s, c, k, 429, NULL, st.msg);
        if (rc == TERN_ERANGE || rc == TERN_EINVAL) {
            const char *p = !strncmp(st.msg, "context", 7) || !strncmp(st.msg, "kv", 2)
                                ? (r->pr.max_tokens >= 0 ? "max_tokens" : "prompt")
                            : !strncmp(st.msg, "prompt", 6) ? "prompt"
                                                            : NULL;
            return tern_srv_send_error(s, c, k, 400, p, st.msg);
        }
        return tern_srv_send_error(s, c, k, 500, NULL, st.msg);
    }

    if (r->stream) {
        tern_srv_req_ref(r, 1); /* the response's */
        struct MHD_Response *resp = MHD_create_response_from_callback(
            MHD_SIZE_UNKNOWN, 4096, tern_srv_sse_reader, r, tern_srv_sse_free);
        if (!resp) {
            tern_srv_req_release(r);
            tern_srv_cancel_req(r, TERN_CANCEL_CLIENT);
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
    /* non-streaming: this connection thread waits for the whole answer, every choice */
    bool all = false, bad = false;
    for (;;) {
        tern_srv_consume_choices(r, &all, &bad);
        if (all || bad) break;
        if (!tern_srv_wait_more(r)) {
            tern_srv_cancel_choices(r, TERN_CANCEL_CLIENT);
            tern_metrics_request(&s->m, k->route, 499);
            return MHD_NO;
        }
    }
    for (int32_t i = 0; bad && i <= r->n_sibs; i++) {
        req *q = tern_srv_choice(r, i);
        if (!q->failed) continue;
        /* the engine failed for good, or the server is draining: unavailable */
        tern_srv_cancel_choices(r, TERN_CANCEL_CLIENT);
        int state = atomic_load(&s->state);
        return tern_srv_send_error(s, c, k, state == ST_DRAINING || state == ST_FAILED ? 503 : 500,
                                   NULL, tern_srv_failure_message(q));
    }
    cJSON *j = tern_srv_envelope(r, r->chat ? "chat.completion" : "text_completion");
    cJSON *choices = cJSON_AddArrayToObject(j, "choices");
    for (int32_t i = 0; i <= r->n_sibs; i++) tern_srv_add_choice(choices, tern_srv_choice(r, i));
    cJSON_AddItemToObject(j, "usage", tern_srv_usage_json(r));
    return tern_srv_send_json(s, c, k, 200, j);
}

/* ------------------------------------------------------------------ other routes */

static enum MHD_Result model_not_found(tern_server *s, struct MHD_Connection *c, conn *k,
                                       const char *id)
{
    char msg[400];
    snprintf(msg, sizeof msg, "model: got '%.200s', expected '%s' (the model this server serves)",
             id, s->model);
    return tern_srv_send_json(
        s, c, k, 404,
        tern_srv_error_json("invalid_request_error", "model", "model_not_found", msg));
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
    return tern_srv_send_json(s, c, k, 200, j);
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
        return tern_srv_send_error(s, c, k, 400, "content",
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
        return tern_srv_send_error(s, c, k, 400, "content",
                                   st.msg[0] ? st.msg : "tokenize: failed");
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
        tern_srv_add_piece(t, "piece", p ? p : "", p ? n : 0);
        cJSON_AddItemToArray(a, t);
    }
    tern_tokens_free(&ids);
    return tern_srv_send_json(s, c, k, 200, j);
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
        return tern_srv_send_error(s, c, k, 400, "tokens", msg);
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
            return tern_srv_send_error(s, c, k, 400, "tokens", msg);
        }
        ids[i] = (int32_t)t->valuedouble;
    }
    cJSON_Delete(in);
    size_t cap = (size_t)n * 64 + 16;
    char *out = ids ? malloc(cap) : NULL;
    if (!out) {
        free(ids);
        return tern_srv_send_error(s, c, k, 500, NULL, "server: out of memory");
    }
    size_t len = tern_tokenizer_decode(s->tok, ids, (size_t)n, out, cap);
    cJSON *j = cJSON_CreateObject();
    tern_srv_add_piece(j, "content", out, len);
    free(ids), free(out);
    return tern_srv_send_json(s, c, k, 200, j);
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
    return tern_srv_send_json(s, c, k, 200, j);
}

/* the backend's reason not to serve right now (a supervised job recovering), or NULL */
static const char *backend_health(tern_server *s)
{
    return s->b.health && atomic_load(&s->state) == ST_READY ? s->b.health(s->b.self) : NULL;
}

static const char *status_text(tern_server *s)
{
    int st = atomic_load(&s->state);
    const char *busy = backend_health(s);
    return busy               ? busy
           : st == ST_READY   ? "ok"
           : st == ST_LOADING ? "loading"
           : st == ST_FAILED  ? "failed"
                              : "stopping";
}

static enum MHD_Result health(tern_server *s, struct MHD_Connection *c, conn *k)
{
    int st = atomic_load(&s->state);
    const char *busy = backend_health(s);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "status", status_text(s));
    if (st == ST_FAILED) cJSON_AddStringToObject(j, "reason", s->failure);
    return tern_srv_send_json(s, c, k, st == ST_READY && !busy ? 200 : 503, j);
}

static void emit_metrics(void *ctx, const char *text, size_t n)
{
    tern_sbuf_add(ctx, text, n);
}

static enum MHD_Result metrics(tern_server *s, struct MHD_Connection *c, conn *k)
{
    tern_sbuf b = {0};
    int st = atomic_load(&s->state);
    tern_metrics_render(&s->m, s->model, backend_health(s) ? ST_LOADING : st, &b);
    if (s->b.metrics && st != ST_LOADING) s->b.metrics(s->b.self, emit_metrics, &b);
    if (b.oom) {
        tern_sbuf_free(&b);
        return tern_srv_send_error(s, c, k, 500, NULL, "server: out of memory");
    }
    enum MHD_Result ok = tern_srv_send_body(
        s, c, k, 200, "text/plain; version=0.0.4; charset=utf-8", b.s ? b.s : "", b.len);
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
    if (!strcmp(url, "/") || !strcmp(url, "/index.html") || !strcmp(url, "/pipeline"))
        return TERN_ROUTE_PAGE;
    if (!strcmp(url, "/pipeline.json")) return TERN_ROUTE_PIPELINE;
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
    cJSON *j =
        tern_srv_error_json("invalid_request_error", NULL, NULL,
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

enum MHD_Result tern_srv_handler(void *cls, struct MHD_Connection *c, const char *url,
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
            double left = k->deadline - tern_srv_mono_now();
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
            return tern_srv_send_error(s, c, k, 413, NULL, msg);
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
        if (k->deadline > 0 && tern_srv_mono_now() > k->deadline) return body_late(s, c, k);
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
        return tern_srv_send_error(s, c, k, 413, NULL, msg);
    }
    switch (k->route) {
    case TERN_ROUTE_HEALTH:
        if (!k->get) return tern_srv_send_error(s, c, k, 405, NULL, "method: expected GET");
        return health(s, c, k);
    case TERN_ROUTE_METRICS:
        if (!k->get) return tern_srv_send_error(s, c, k, 405, NULL, "method: expected GET");
        return metrics(s, c, k);
    case TERN_ROUTE_PAGE: /* public: the chat page asks for the key itself */
        if (!k->get) return tern_srv_send_error(s, c, k, 405, NULL, "method: expected GET");
        return tern_srv_page(s, c, k, url);
    case TERN_ROUTE_PIPELINE:
        if (!k->get) return tern_srv_send_error(s, c, k, 405, NULL, "method: expected GET");
        return tern_srv_pipeline_json(s, c, k, status_text(s));
    case TERN_ROUTE_OTHER: {
        char msg[512];
        snprintf(
            msg, sizeof msg,
            "route: got %.16s %.200s, expected one of POST /v1/completions, "
            "POST /v1/chat/completions, GET /v1/models[/ID], POST /tokenize, POST /detokenize, "
            "GET /props, /health, /metrics, /, /pipeline, /pipeline.json",
            method, url);
        return tern_srv_send_error(s, c, k, 404, NULL, msg);
    }
    default:
        break;
    }
    if (s->api_key && !key_ok(s, c))
        return tern_srv_send_error(s, c, k, 401, NULL,
                                   "authorization: got no or a wrong API key, expected the header "
                                   "\"Authorization: Bearer KEY\"");
    if (k->route == TERN_ROUTE_MODELS) {
        if (!k->get) return tern_srv_send_error(s, c, k, 405, NULL, "method: expected GET");
        return models(s, c, k);
    }
    if (k->route == TERN_ROUTE_PROPS) {
        if (!k->get) return tern_srv_send_error(s, c, k, 405, NULL, "method: expected GET");
        if (atomic_load(&s->state) == ST_LOADING)
            return tern_srv_send_error(s, c, k, 503, NULL, not_serving(s));
        return props(s, c, k);
    }
    if ((k->route == TERN_ROUTE_TOKENIZE || k->route == TERN_ROUTE_DETOKENIZE) && !k->post)
        return tern_srv_send_error(s, c, k, 405, NULL, "method: expected POST");
    if (k->route == TERN_ROUTE_TOKENIZE || k->route == TERN_ROUTE_DETOKENIZE) {
        if (atomic_load(&s->state) == ST_LOADING)
            return tern_srv_send_error(s, c, k, 503, NULL, not_serving(s));
        return k->route == TERN_ROUTE_TOKENIZE ? tokenize_route(s, c, k)
                                               : detokenize_route(s, c, k);
    }
    if (!k->post) return tern_srv_send_error(s, c, k, 405, NULL, "method: expected POST");
    if (atomic_load(&s->state) != ST_READY)
        return tern_srv_send_error(s, c, k, 503, NULL, not_serving(s));
    return generate(s, c, k);
}

void tern_srv_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                        enum MHD_RequestTerminationCode toe)
{
    tern_server *s = cls;
    conn *k = *con_cls;
    (void)c;
    if (!k) return;
    req *r = k->r;
    for (int32_t i = r ? r->n_sibs : -1; i >= 0; i--) {
        req *q = tern_srv_choice(r, i);
        /* a client that left before the end: free its sequences on every rank */
        if (!(toe == MHD_REQUEST_TERMINATED_COMPLETED_OK && q->finished))
            tern_srv_cancel_req(q, TERN_CANCEL_CLIENT);
        pthread_mutex_lock(&s->mu);
        if (q->open_counted) s->n_open--;
        q->open_counted = false;
        pthread_mutex_unlock(&s->mu);
        tern_srv_req_release(q); /* the connection's (the first's, for the other choices) */
    }
    free(k->body);
    free(k->model_id);
    free(k);
    *con_cls = NULL;
}

/* libmicrohttpd took over (or closed) a connection the gate handed it */
void tern_srv_notify_conn(void *cls, struct MHD_Connection *c, void **socket_context,
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

void tern_srv_mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    if (tern_log_get_level() < TERN_LOG_DEBUG) return;
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
    tern_log(TERN_LOG_DEBUG, "http: %s", line);
}
