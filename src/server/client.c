/* client.c: a minimal blocking HTTP/1.1 client for `ternpipe chat` (see server.h).
 *
 * One request per connection (Connection: close), Content-Length or chunked bodies, and a
 * line-based reader for server-sent events. Every read waits at most timeout_s, so a server
 * that stops answering ends the chat turn with a message instead of a hang.
 */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "server/server-internal.h"
#include "ternpipe/server.h"

typedef struct url {
    char host[256];
    char port[16];
    char prefix[256];
} url;

typedef struct conn_rd {
    int fd;
    int timeout_ms;
    char buf[8192];
    size_t off, len;
    bool eof;
} conn_rd;

static tern_code parse_url(const char *s, url *u, tern_status *st)
{
    if (!s || strncmp(s, "http://", 7) != 0)
        return tern_status_set(st, TERN_EINVAL, "--url: got '%s', expected http://HOST[:PORT]",
                               s ? s : "(null)");
    const char *h = s + 7, *end;
    if (*h == '[') { /* [v6 address] */
        end = strchr(h, ']');
        if (!end) return tern_status_set(st, TERN_EINVAL, "--url: got '%s', expected ']'", s);
        snprintf(u->host, sizeof u->host, "%.*s", (int)(end - h - 1), h + 1);
        end++;
    } else {
        end = h + strcspn(h, ":/");
        snprintf(u->host, sizeof u->host, "%.*s", (int)(end - h), h);
    }
    if (!u->host[0]) return tern_status_set(st, TERN_EINVAL, "--url: got '%s', expected a host", s);
    snprintf(u->port, sizeof u->port, "80");
    if (*end == ':') {
        size_t n = strcspn(end + 1, "/");
        if (n == 0 || n >= sizeof u->port)
            return tern_status_set(st, TERN_EINVAL, "--url: got '%s', expected a port number", s);
        snprintf(u->port, sizeof u->port, "%.*s", (int)n, end + 1);
        end += 1 + n;
    }
    snprintf(u->prefix, sizeof u->prefix, "%s", end);
    size_t n = strlen(u->prefix);
    while (n && u->prefix[n - 1] == '/') u->prefix[--n] = '\0';
    return TERN_OK;
}

static tern_code dial(const url *u, int timeout_ms, int *fd_out, tern_status *st)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai = NULL;
    int gai = getaddrinfo(u->host, u->port, &hints, &ai);
    if (gai)
        return tern_status_set(st, TERN_EIO, "connect: host '%s': %s", u->host, gai_strerror(gai));
    int err = ECONNREFUSED;
    for (struct addrinfo *a = ai; a; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) continue;
        int rc = connect(fd, a->ai_addr, a->ai_addrlen);
        if (rc < 0 && errno == EINPROGRESS) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            rc = poll(&p, 1, timeout_ms) == 1 ? 0 : -1;
            int so = 0;
            socklen_t sl = sizeof so;
            if (rc == 0 && (getsockopt(fd, SOL_SOCKET, SO_ERROR, &so, &sl) < 0 || so)) {
                errno = so ? so : errno;
                rc = -1;
            } else if (rc < 0) {
                errno = ETIMEDOUT;
            }
        }
        if (rc == 0) {
            freeaddrinfo(ai);
            *fd_out = fd;
            return TERN_OK;
        }
        err = errno;
        close(fd);
    }
    freeaddrinfo(ai);
    return tern_status_set(st, TERN_EIO, "connect: http://%s:%s: %s", u->host, u->port,
                           strerror(err));
}

static bool wait_fd(int fd, short ev, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = ev};
    int rc;
    do rc = poll(&p, 1, timeout_ms);
    while (rc < 0 && errno == EINTR);
    return rc == 1;
}

static tern_code send_all(int fd, const char *s, size_t n, int timeout_ms, tern_status *st)
{
    while (n) {
        if (!wait_fd(fd, POLLOUT, timeout_ms))
            return tern_status_set(st, TERN_EIO, "send: timed out");
        ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
        if (w < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (w <= 0) return tern_status_set(st, TERN_EIO, "send: %s", strerror(errno));
        s += w, n -= (size_t)w;
    }
    return TERN_OK;
}

static tern_code fill(conn_rd *c, tern_status *st)
{
    if (c->off < c->len || c->eof) return TERN_OK;
    for (;;) {
        if (!wait_fd(c->fd, POLLIN, c->timeout_ms))
            return tern_status_set(st, TERN_EIO, "read: no answer for %d s", c->timeout_ms / 1000);
        ssize_t n = recv(c->fd, c->buf, sizeof c->buf, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (n < 0) return tern_status_set(st, TERN_EIO, "read: %s", strerror(errno));
        c->off = 0;
        c->len = (size_t)n;
        c->eof = n == 0;
        return TERN_OK;
    }
}

/* a line without its CR LF; false at the end of the stream */
static tern_code read_line(conn_rd *c, tern_sbuf *line, bool *got, tern_status *st)
{
    line->len = 0;
    if (line->s) line->s[0] = '\0';
    *got = false;
    for (;;) {
        tern_code rc = fill(c, st);
        if (rc) return rc;
        if (c->off >= c->len) return TERN_OK; /* eof: a last unterminated line is dropped */
        char *nl = memchr(c->buf + c->off, '\n', c->len - c->off);
        size_t n = nl ? (size_t)(nl - (c->buf + c->off)) : c->len - c->off;
        tern_sbuf_add(line, c->buf + c->off, n);
        c->off += n + (nl ? 1 : 0);
        if (line->len > (1u << 20))
            return tern_status_set(st, TERN_EFORMAT, "read: got a line over 1 MiB, expected less");
        if (nl) {
            if (line->len && line->s[line->len - 1] == '\r') line->s[--line->len] = '\0';
            if (!line->s) tern_sbuf_add(line, "", 0);
            *got = true;
            return TERN_OK;
        }
    }
}

/* body bytes (chunked or not) in pieces, handed to sink until the end or an error */
typedef struct body_rd {
    conn_rd *c;
    bool chunked;
    long long left; /* of this chunk, or of Content-Length; -1: until close */
    bool done;
} body_rd;

static tern_code body_read(body_rd *b, char *out, size_t cap, size_t *got, tern_status *st)
{
    *got = 0;
    tern_code rc;
    if (b->done) return TERN_OK;
    if (b->chunked && b->left == 0) {
        tern_sbuf line = {0};
        bool ok;
        rc = read_line(b->c, &line, &ok, st);
        if (!rc && ok && line.len == 0) rc = read_line(b->c, &line, &ok, st); /* CRLF after data */
        long long n = ok && line.s ? strtoll(line.s, NULL, 16) : 0;
        tern_sbuf_free(&line);
        if (rc) return rc;
        if (!ok || n <= 0) {
            b->done = true;
            return TERN_OK;
        }
        b->left = n;
    }
    if ((rc = fill(b->c, st))) return rc;
    conn_rd *c = b->c;
    size_t avail = c->len - c->off;
    if (avail == 0) {
        b->done = true;
        return TERN_OK;
    }
    size_t n = avail < cap ? avail : cap;
    if (b->left >= 0 && (long long)n > b->left) n = (size_t)b->left;
    memcpy(out, c->buf + c->off, n);
    c->off += n;
    if (b->left >= 0) b->left -= (long long)n;
    if (!b->chunked && b->left == 0) b->done = true;
    *got = n;
    return TERN_OK;
}

typedef struct http_resp {
    int status;
    body_rd body;
    conn_rd c;
} http_resp;

static tern_code request(const tern_client_opts *o, const char *method, const char *path,
                         const char *body, http_resp *r, tern_status *st)
{
    url u;
    memset(r, 0, sizeof *r);
    r->c.fd = -1;
    tern_code rc = parse_url(o->url, &u, st);
    if (rc) return rc;
    int tmo = (int)((o->timeout_s > 0 ? o->timeout_s : 300) * 1000);
    r->c.timeout_ms = tmo;
    if ((rc = dial(&u, tmo < 10000 ? tmo : 10000, &r->c.fd, st))) return rc;
    tern_sbuf req = {0};
    tern_sbuf_printf(&req, "%s %s%s HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n", method,
                     u.prefix, path, u.host, u.port);
    tern_sbuf_printf(&req, "Accept: application/json, text/event-stream\r\n");
    if (o->api_key) tern_sbuf_printf(&req, "Authorization: Bearer %s\r\n", o->api_key);
    if (body)
        tern_sbuf_printf(&req, "Content-Type: application/json\r\nContent-Length: %zu\r\n",
                         strlen(body));
    tern_sbuf_add(&req, "\r\n", 2);
    if (body) tern_sbuf_add(&req, body, strlen(body));
    rc = req.oom ? tern_status_set(st, TERN_ENOMEM, "request: out of memory")
                 : send_all(r->c.fd, req.s, req.len, tmo, st);
    tern_sbuf_free(&req);
    if (rc) return rc;
    tern_sbuf line = {0};
    bool ok;
    if ((rc = read_line(&r->c, &line, &ok, st))) goto out;
    if (!ok || sscanf(line.s, "HTTP/%*d.%*d %d", &r->status) != 1) {
        rc = tern_status_set(st, TERN_EFORMAT, "response: got '%.80s', expected an HTTP status",
                             ok ? line.s : "");
        goto out;
    }
    r->body.c = &r->c;
    r->body.left = -1;
    for (;;) {
        if ((rc = read_line(&r->c, &line, &ok, st))) goto out;
        if (!ok || line.len == 0) break;
        if (!strncasecmp(line.s, "content-length:", 15))
            r->body.left = strtoll(line.s + 15, NULL, 10);
        if (!strncasecmp(line.s, "transfer-encoding:", 18) && strcasestr(line.s + 18, "chunked"))
            r->body.chunked = true;
    }
    if (r->body.chunked) r->body.left = 0;
out:
    tern_sbuf_free(&line);
    return rc;
}

static void close_resp(http_resp *r)
{
    if (r->c.fd >= 0) close(r->c.fd);
    r->c.fd = -1;
}

static tern_code read_body(http_resp *r, tern_sbuf *out, tern_status *st)
{
    char buf[4096];
    for (;;) {
        size_t n;
        tern_code rc = body_read(&r->body, buf, sizeof buf, &n, st);
        if (rc) return rc;
        if (n == 0) return TERN_OK;
        tern_sbuf_add(out, buf, n);
        if (out->len > (8u << 20))
            return tern_status_set(st, TERN_EFORMAT, "response: got over 8 MiB, expected less");
    }
}

static tern_code server_error(int status, const char *body, tern_status *st)
{
    cJSON *j = body ? cJSON_Parse(body) : NULL;
    const cJSON *m =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "error"), "message");
    tern_code code = status == 429 || status == 503 ? TERN_EBUSY : TERN_EINVAL;
    tern_status_set(st, code, "server: HTTP %d: %s", status,
                    cJSON_IsString(m) ? m->valuestring
                    : body && *body   ? body
                                      : "(no message)");
    cJSON_Delete(j);
    return code;
}

tern_code tern_client_health(const tern_client_opts *o, tern_status *st)
{
    http_resp r;
    tern_code rc = request(o, "GET", "/health", NULL, &r, st);
    if (!rc && r.status != 200) {
        tern_sbuf b = {0};
        read_body(&r, &b, st);
        rc = server_error(r.status, b.s, st);
        tern_sbuf_free(&b);
    }
    close_resp(&r);
    return rc;
}

tern_code tern_client_chat(const tern_client_opts *o, const tern_chat_message *msgs, int32_t n_msgs,
                           void (*on_text)(void *user, const char *s, size_t n), void *user,
                           char **reply, char *finish, size_t finish_cap, tern_status *st)
{
    static const char *const roles[TERN_ROLE_COUNT] = {"system", "user", "assistant"};
    if (reply) *reply = NULL;
    if (finish && finish_cap) finish[0] = '\0';
    cJSON *j = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(j, "messages");
    for (int32_t i = 0; i < n_msgs; i++) {
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "role", roles[msgs[i].role]);
        cJSON_AddStringToObject(m, "content", msgs[i].content ? msgs[i].content : "");
        cJSON_AddItemToArray(arr, m);
    }
    cJSON_AddBoolToObject(j, "stream", true);
    if (o->max_tokens > 0) cJSON_AddNumberToObject(j, "max_tokens", o->max_tokens);
    if (o->temperature >= 0) cJSON_AddNumberToObject(j, "temperature", o->temperature);
    if (o->has_seed) cJSON_AddNumberToObject(j, "seed", (double)o->seed);
    const tern_sampling *sp = o->sampling;
    if (sp) {
        tern_sampling d;
        tern_sampling_default(&d);
        if (sp->top_k != d.top_k) cJSON_AddNumberToObject(j, "top_k", sp->top_k);
        if (sp->top_p != d.top_p) cJSON_AddNumberToObject(j, "top_p", sp->top_p);
        if (sp->min_p != d.min_p) cJSON_AddNumberToObject(j, "min_p", sp->min_p);
        if (sp->repeat_penalty != d.repeat_penalty)
            cJSON_AddNumberToObject(j, "repeat_penalty", sp->repeat_penalty);
        if (sp->presence_penalty != 0)
            cJSON_AddNumberToObject(j, "presence_penalty", sp->presence_penalty);
        if (sp->frequency_penalty != 0)
            cJSON_AddNumberToObject(j, "frequency_penalty", sp->frequency_penalty);
        if (sp->n_logit_bias > 0) {
            cJSON *lb = cJSON_AddObjectToObject(j, "logit_bias");
            for (int32_t i = 0; i < sp->n_logit_bias; i++) {
                char id[16];
                snprintf(id, sizeof id, "%d", sp->logit_bias[i].id);
                cJSON_AddNumberToObject(lb, id, sp->logit_bias[i].bias);
            }
        }
    }
    char *body = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!body) return tern_status_set(st, TERN_ENOMEM, "request: out of memory");
    http_resp r;
    tern_code rc = request(o, "POST", "/v1/chat/completions", body, &r, st);
    free(body);
    tern_sbuf all = {0}, pend = {0};
    if (rc) goto out;
    if (r.status != 200) {
        tern_sbuf b = {0};
        read_body(&r, &b, st);
        rc = server_error(r.status, b.s, st);
        tern_sbuf_free(&b);
        goto out;
    }
    /* server-sent events: "data: {json}" lines, blank lines between events */
    bool finished = false;
    while (!finished) {
        char buf[4096];
        size_t n;
        if ((rc = body_read(&r.body, buf, sizeof buf, &n, st))) goto out;
        if (n == 0) break;
        tern_sbuf_add(&pend, buf, n);
        char *line = pend.s, *nl;
        while (!finished && (nl = memchr(line, '\n', pend.len - (size_t)(line - pend.s)))) {
            *nl = '\0';
            if (nl > line && nl[-1] == '\r') nl[-1] = '\0';
            if (!strncmp(line, "data:", 5)) {
                const char *d = line + 5 + (line[5] == ' ');
                if (!strcmp(d, "[DONE]")) {
                    finished = true;
                    break;
                }
                cJSON *ev = cJSON_Parse(d);
                const cJSON *err = cJSON_GetObjectItemCaseSensitive(ev, "error");
                if (err) {
                    const cJSON *m = cJSON_GetObjectItemCaseSensitive(err, "message");
                    rc = tern_status_set(st, TERN_EIO, "server: %s",
                                         cJSON_IsString(m) ? m->valuestring : "stream error");
                    cJSON_Delete(ev);
                    goto out;
                }
                const cJSON *c0 =
                    cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(ev, "choices"), 0);
                const cJSON *delta = cJSON_GetObjectItemCaseSensitive(c0, "delta");
                const cJSON *content = cJSON_GetObjectItemCaseSensitive(delta, "content");
                const cJSON *fr = cJSON_GetObjectItemCaseSensitive(c0, "finish_reason");
                if (cJSON_IsString(content) && content->valuestring[0]) {
                    size_t k = strlen(content->valuestring);
                    tern_sbuf_add(&all, content->valuestring, k);
                    if (on_text) on_text(user, content->valuestring, k);
                }
                if (cJSON_IsString(fr) && finish && finish_cap)
                    snprintf(finish, finish_cap, "%s", fr->valuestring);
                cJSON_Delete(ev);
            }
            line = nl + 1;
        }
        size_t rest = pend.len - (size_t)(line - pend.s);
        memmove(pend.s, line, rest);
        pend.len = rest;
    }
    if (!finished) rc = tern_status_set(st, TERN_EIO, "server: the stream ended without [DONE]");
out:
    close_resp(&r);
    if (!rc && reply) {
        *reply = all.s ? all.s : calloc(1, 1);
        all.s = NULL;
    }
    tern_sbuf_free(&all);
    tern_sbuf_free(&pend);
    return rc;
}
