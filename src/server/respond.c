/* respond.c: the JSON and SSE bodies of answers (OpenAI-style completions, chat chunks,
 * logprobs, errors) and sending them on a connection. */
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
cJSON *tern_srv_add_text(cJSON *obj, const char *name, const char *s, size_t n)
{
    tern_sbuf b = {0};
    tern_json_quote(&b, s, n);
    cJSON *j = cJSON_AddRawToObject(obj, name, b.oom || !b.s ? "\"\"" : b.s);
    tern_sbuf_free(&b);
    return j;
}

/* the prompt once, the completion tokens of every choice */
cJSON *tern_srv_usage_json(const req *r)
{
    int32_t gen = r->n_taken;
    for (int32_t i = 0; i < r->n_sibs; i++) gen += r->sibs[i]->n_taken;
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", r->n_prompt);
    cJSON_AddNumberToObject(u, "completion_tokens", gen);
    cJSON_AddNumberToObject(u, "total_tokens", r->n_prompt + gen);
    return u;
}

cJSON *tern_srv_envelope(const req *r, const char *object)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "id", r->cid);
    cJSON_AddStringToObject(j, "object", object);
    cJSON_AddNumberToObject(j, "created", (double)r->created);
    cJSON_AddStringToObject(j, "model", r->s->model);
    return j;
}

cJSON *tern_srv_error_json(const char *type, const char *param, const char *code, const char *msg)
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

const char *tern_srv_failure_message(req *r)
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
void tern_srv_add_piece(cJSON *o, const char *name, const char *p, size_t n)
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
    tern_srv_add_text(o, name, b.s ? b.s : "", b.len);
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
cJSON *tern_srv_logprobs_json(req *r, int32_t from, int32_t to)
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
            tern_srv_add_piece(t, "token", p ? p : "", p ? n : 0);
            cJSON_AddItemToObject(t, "logprob", lp_number(pk->logprob));
            cJSON_AddItemToObject(t, "bytes", piece_bytes(p ? p : "", p ? n : 0));
            cJSON *top = cJSON_AddArrayToObject(t, "top_logprobs");
            for (int32_t k = 0; k < pk->n_top && k < r->pr.logprobs; k++) {
                size_t m = 0;
                const char *q = tern_tokenizer_token_bytes(tok, pk->top[k].id, &m);
                cJSON *a = cJSON_CreateObject();
                tern_srv_add_piece(a, "token", q ? q : "", q ? m : 0);
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
        tern_srv_add_piece(holder, "t", p ? p : "", p ? n : 0);
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
int32_t tern_srv_visible_tokens(const req *r)
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

/* one chunk of choice q into the stream of r (its first choice) */
static void sse_chunk(req *r, req *q, const char *text, size_t n, const char *finish, bool role,
                      int32_t lp_to)
{
    cJSON *j = tern_srv_envelope(r, r->chat ? "chat.completion.chunk" : "text_completion");
    cJSON *choices = cJSON_AddArrayToObject(j, "choices");
    cJSON *c = cJSON_CreateObject();
    cJSON_AddItemToArray(choices, c);
    cJSON_AddNumberToObject(c, "index", q->index);
    if (r->chat) {
        cJSON *d = cJSON_AddObjectToObject(c, "delta");
        if (role) cJSON_AddStringToObject(d, "role", "assistant");
        if (text) tern_srv_add_text(d, "content", text, n);
    } else {
        tern_srv_add_text(c, "text", text ? text : "", text ? n : 0);
    }
    cJSON *lp = lp_to > q->lp_done ? tern_srv_logprobs_json(q, q->lp_done, lp_to) : NULL;
    if (lp) {
        cJSON_AddItemToObject(c, "logprobs", lp);
        q->lp_done = lp_to;
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

/* the events choice q has for the stream of r; true when it had any */
static bool sse_choice(req *r, req *q)
{
    if (r->chat && !q->sent_role) {
        q->sent_role = true;
        sse_chunk(r, q, "", 0, NULL, true, 0);
        return true;
    }
    if (q->echo.len && !q->sent_role) {
        q->sent_role = true;
        sse_chunk(r, q, q->echo.s, q->echo.len, NULL, false, 0);
        return true;
    }
    tern_srv_consume(q);
    bool any = false;
    if (q->visible > q->emitted) {
        /* the tokens whose pieces the emitted text now holds whole */
        int32_t lp_to = q->lp_done;
        while (q->tok_end && lp_to < q->n_taken && q->tok_end[lp_to] <= (int32_t)q->visible)
            lp_to++;
        sse_chunk(r, q, q->text.s + q->emitted, q->visible - q->emitted, NULL, false, lp_to);
        q->emitted = q->visible;
        any = true;
    }
    if (q->finished && !q->sent_final && !q->failed) {
        q->sent_final = true;
        sse_chunk(r, q, r->chat ? NULL : "", 0, q->finish_reason, false,
                  q->tok_end ? tern_srv_visible_tokens(q) : 0);
        any = true;
    }
    return any;
}

/* Produces the next SSE events into r->out (waiting for tokens when there are none): each
 * choice's in turn, then, once all have finished, the usage and [DONE]. */
static void sse_produce(req *r)
{
    bool any = false, all = true;
    req *bad = NULL;
    for (int32_t i = 0; i <= r->n_sibs; i++) {
        req *q = tern_srv_choice(r, i);
        any |= sse_choice(r, q);
        all &= q->finished;
        if (q->failed && !bad) bad = q;
    }
    if (bad) {
        /* one error for the request: the other choices are ended with it */
        tern_srv_cancel_choices(r, TERN_CANCEL_CLIENT);
        sse_event(r,
                  tern_srv_error_json("server_error", NULL, NULL, tern_srv_failure_message(bad)));
        tern_sbuf_add(&r->out, "data: [DONE]\n\n", 14);
        r->sse_done = true;
        return;
    }
    if (all) {
        if (r->pr.include_usage) {
            cJSON *j = tern_srv_envelope(r, r->chat ? "chat.completion.chunk" : "text_completion");
            cJSON_AddArrayToObject(j, "choices");
            cJSON_AddItemToObject(j, "usage", tern_srv_usage_json(r));
            sse_event(r, j);
        }
        tern_sbuf_add(&r->out, "data: [DONE]\n\n", 14);
        r->sse_done = true;
        return;
    }
    if (any || r->out.len > r->out_off) return;
    if (!tern_srv_wait_more(r)) {
        tern_srv_cancel_choices(r, TERN_CANCEL_CLIENT);
        r->aborted = true;
    }
}

ssize_t tern_srv_sse_reader(void *cls, uint64_t pos, char *buf, size_t max)
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

void tern_srv_sse_free(void *cls)
{
    tern_srv_req_release(cls); /* the response's */
}

/* a finished choice as an element of a non-streamed answer's choices */
void tern_srv_add_choice(cJSON *choices, req *q)
{
    cJSON *ch = cJSON_CreateObject();
    cJSON_AddItemToArray(choices, ch);
    cJSON_AddNumberToObject(ch, "index", q->index);
    const char *text = q->text.s ? q->text.s : "";
    if (q->chat) {
        cJSON *msg = cJSON_AddObjectToObject(ch, "message");
        cJSON_AddStringToObject(msg, "role", "assistant");
        tern_srv_add_text(msg, "content", text, q->visible);
    } else if (q->echo.len) {
        tern_sbuf both = {0};
        tern_sbuf_add(&both, q->echo.s, q->echo.len);
        tern_sbuf_add(&both, text, q->visible);
        tern_srv_add_text(ch, "text", both.s, both.len);
        tern_sbuf_free(&both);
    } else {
        tern_srv_add_text(ch, "text", text, q->visible);
    }
    cJSON *lp = tern_srv_logprobs_json(q, 0, tern_srv_visible_tokens(q));
    if (lp)
        cJSON_AddItemToObject(ch, "logprobs", lp);
    else
        cJSON_AddNullToObject(ch, "logprobs");
    cJSON_AddStringToObject(ch, "finish_reason", q->finish_reason);
}

/* ------------------------------------------------------------------ responses */

enum MHD_Result tern_srv_send_body(tern_server *s, struct MHD_Connection *c, conn *k, int status,
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

enum MHD_Result tern_srv_send_json(tern_server *s, struct MHD_Connection *c, conn *k, int status,
                                   cJSON *j)
{
    char *t = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    if (!t) return MHD_NO;
    size_t n = strlen(t);
    enum MHD_Result ok = tern_srv_send_body(s, c, k, status, "application/json", t, n);
    free(t);
    return ok;
}

enum MHD_Result tern_srv_send_error(tern_server *s, struct MHD_Connection *c, conn *k, int status,
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
    return tern_srv_send_json(s, c, k, status, tern_srv_error_json(type, param, code, msg));
}
