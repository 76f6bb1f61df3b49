/* gate.c: the server's own accept loop in front of libmicrohttpd (see server-internal.h).
 *
 * Why it exists: libmicrohttpd 0.9.75 (Debian 12) answers protocol errors (bad request line,
 * 414, 431, 505) with fixed HTML bodies it compiles in, resets connections past its
 * connection limit, has only an idle time-out that every byte restarts, and no per-address
 * limit that answers. So every connection is accepted here first: its head (request line and
 * headers) is read with MSG_PEEK, leaving the bytes in the socket for libmicrohttpd, and
 * checked by tern_http_check_head; only a well-formed head within its deadline from a client
 * under the limits is handed over (MHD_add_connection). Everything else gets a JSON error
 * written here, then a lingering close (our side shut, the client's bytes read and dropped
 * for a moment) so the answer is not destroyed by a reset.
 *
 * Every response carries "Connection: close", so each request on the wire passes this gate
 * (a kept-alive connection would bring its next request to libmicrohttpd unchecked).
 *
 * Thread: one gate thread owns the listening socket and the pending and lingering sockets. The
 * connection counts are shared with libmicrohttpd's threads (tern_gate_release, under mu).
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <microhttpd.h>

#include "server/server-internal.h"
#include "ternpipe/log.h"

#define ACCEPT_BATCH 64 /* connections accepted per wake-up, so pending ones are served too */
/* refused connections answered and drained at once; past this they are closed unanswered
 * (only under a flood far beyond every limit) */
#define LINGER_MAX 256
#define LINGER_S 2.0  /* how long a refused client may take to read its answer */
#define FD_RESERVE 64 /* descriptors kept for everything else (MPI, model file, logs) */

typedef struct pending {
    int fd;
    uint8_t key[16];
    double t0;
    size_t peeked; /* bytes seen last time (SO_RCVLOWAT waits for more) */
} pending;

typedef struct lingering {
    int fd;
    double until;
} lingering;

typedef struct ipcount {
    uint8_t key[16];
    int32_t n;
} ipcount;

struct tern_gate {
    tern_gate_limits lim;
    int lfd, wake[2];
    struct MHD_Daemon *d;
    pthread_t th;
    bool started, stopped;
    pthread_mutex_t mu; /* n_conns, ips, fdinfo */
    int32_t n_conns;    /* pending here + handed to libmicrohttpd */
    ipcount *ips;       /* [max_conns] addresses holding a connection */
    int32_t n_ips;
    tern_gate_conn *fdinfo; /* [n_fd] by descriptor: set before a hand-over */
    int n_fd;
    pending *pend; /* [max_conns] */
    int32_t n_pend;
    lingering ling[LINGER_MAX];
    int32_t n_ling;
    uint64_t refused[3];          /* 429, 503, unanswered */
    char buf[TERN_HTTP_MAX_HEAD]; /* the head being looked at (gate thread) */
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------ the head of a request */

static bool tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

static int head_fail(char *msg, size_t cap, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int head_fail(char *msg, size_t cap, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, cap, fmt, ap);
    va_end(ap);
    return status;
}

/* up to 60 bytes of what the client sent, printable ASCII only (it goes into JSON) */
static const char *shown(const char *s, size_t n, char out[64])
{
    size_t k = 0;
    for (size_t i = 0; i < n && k < 60; i++)
        out[k++] = (unsigned char)s[i] >= 0x20 && (unsigned char)s[i] < 0x7f ? s[i] : '?';
    out[k] = '\0';
    return out;
}

/* the comma-separated Content-Length list in v[n]: every element the same decimal number */
static bool content_length(const char *v, size_t n, long long *out, bool *seen)
{
    size_t i = 0;
    for (;;) {
        while (i < n && (v[i] == ' ' || v[i] == '\t')) i++;
        size_t d = 0;
        long long x = 0;
        while (i < n && v[i] >= '0' && v[i] <= '9') {
            if (++d > 18) return false;
            x = x * 10 + (v[i++] - '0');
        }
        if (d == 0) return false;
        if (*seen && x != *out) return false;
        *out = x;
        *seen = true;
        while (i < n && (v[i] == ' ' || v[i] == '\t')) i++;
        if (i == n) return true;
        if (v[i++] != ',') return false;
    }
}

int tern_http_check_head(const char *b, size_t n, size_t *head_len, char *msg, size_t cap)
{
    size_t i = 0;
    while (i < n && (b[i] == '\r' || b[i] == '\n')) i++; /* RFC 9112 2.2: blank lines first */
    const char *line = b + i;
    const char *eol = memchr(line, '\n', n - i);
    if (!eol) {
        if (n - i > TERN_HTTP_MAX_URI + 64)
            return head_fail(msg, cap, 414, "request line: got more than %d bytes, expected less",
                             TERN_HTTP_MAX_URI);
        if (n >= TERN_HTTP_MAX_HEAD)
            return head_fail(msg, cap, 400,
                             "request: got %zu bytes of blank lines, expected a "
                             "request line",
                             n);
        return 0;
    }
    size_t ll = (size_t)(eol - line);
    if (ll && line[ll - 1] == '\r') ll--;
    /* method SP target SP HTTP/d.d */
    size_t m = 0;
    while (m < ll && tchar((unsigned char)line[m])) m++;
    const char *sp1 = m < ll && line[m] == ' ' ? line + m : NULL;
    const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', ll - m - 1) : NULL;
    char got[64];
    if (m == 0 || !sp1 || !sp2 || sp2 == sp1 + 1)
        return head_fail(msg, cap, 400, "request line: got '%s', expected 'METHOD /path HTTP/1.1'",
                         shown(line, ll, got));
    size_t tl = (size_t)(sp2 - sp1 - 1);
    if (tl > TERN_HTTP_MAX_URI)
        return head_fail(msg, cap, 414, "URI: got %zu bytes, expected at most %d", tl,
                         TERN_HTTP_MAX_URI);
    for (const char *p = sp1 + 1; p < sp2; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f)
            return head_fail(msg, cap, 400, "URI: got a control character, expected none");
    const char *v = sp2 + 1;
    size_t vl = (size_t)(line + ll - v);
    if (vl != 8 || memcmp(v, "HTTP/", 5) || v[5] < '0' || v[5] > '9' || v[6] != '.' || v[7] < '0' ||
        v[7] > '9')
        return head_fail(msg, cap, 400, "request line: got '%s', expected 'METHOD /path HTTP/1.1'",
                         shown(line, ll, got));
    if (v[5] != '1')
        return head_fail(msg, cap, 505, "HTTP version: got %s, expected HTTP/1.0 or HTTP/1.1",
                         shown(v, vl, got));
    bool http11 = v[7] != '0';
    /* header fields up to the empty line */
    const char *p = eol + 1;
    int lines = 0, hosts = 0;
    bool cl_seen = false, te = false;
    long long cl = 0;
    for (;;) {
        size_t left = (size_t)(b + n - p);
        const char *e = memchr(p, '\n', left);
        if (!e) {
            if (n >= TERN_HTTP_MAX_HEAD)
                return head_fail(msg, cap, 431, "header: got more than %d bytes, expected less",
                                 TERN_HTTP_MAX_HEAD);
            return 0;
        }
        size_t hl = (size_t)(e - p);
        if (hl && p[hl - 1] == '\r') hl--;
        if (hl == 0) {
            *head_len = (size_t)(e + 1 - b);
            break;
        }
        if ((size_t)(e + 1 - b) > TERN_HTTP_MAX_HEAD)
            return head_fail(msg, cap, 431, "header: got more than %d bytes, expected less",
                             TERN_HTTP_MAX_HEAD);
        if (++lines > TERN_HTTP_MAX_FIELDS)
            return head_fail(msg, cap, 431, "header: got more than %d fields, expected at most %d",
                             TERN_HTTP_MAX_FIELDS, TERN_HTTP_MAX_FIELDS);
        if (p[0] == ' ' || p[0] == '\t')
            return head_fail(msg, cap, 400,
                             "header: got a folded line (obsolete), expected one line per field");
        size_t k = 0;
        while (k < hl && tchar((unsigned char)p[k])) k++;
        if (k == 0 || k == hl || p[k] != ':')
            return head_fail(msg, cap, 400, "header: got '%s', expected 'Name: value'",
                             shown(p, hl, got));
        for (size_t j = k + 1; j < hl; j++)
            if (((unsigned char)p[j] < 0x20 && p[j] != '\t') || p[j] == 0x7f)
                return head_fail(msg, cap, 400,
                                 "header: got a control character in a value, expected text");
        if (k == 14 && !strncasecmp(p, "Content-Length", 14)) {
            /* two different lengths make a proxy and this server disagree on where the
             * body ends: the rest would be read as a second, smuggled request */
            if (!content_length(p + k + 1, hl - k - 1, &cl, &cl_seen))
                return head_fail(msg, cap, 400,
                                 "Content-Length: got '%s' (conflicting or malformed), expected "
                                 "one decimal length",
                                 shown(p + k + 1, hl - k - 1, got));
        } else if (k == 17 && !strncasecmp(p, "Transfer-Encoding", 17)) {
            te = true;
        } else if (k == 4 && !strncasecmp(p, "Host", 4)) {
            hosts++;
        }
        p = e + 1;
    }
    if (te && cl_seen)
        return head_fail(msg, cap, 400,
                         "header: got both Transfer-Encoding and Content-Length, expected one");
    if (hosts > 1 || (http11 && hosts == 0))
        return head_fail(msg, cap, 400, "Host: got %s, expected exactly one in HTTP/1.1",
                         hosts ? "several" : "none");
    return 200;
}

/* ------------------------------------------------------------------ answers written here */

static const char *reason_of(int status)
{
    switch (status) {
    case 400:
        return "Bad Request";
    case 408:
        return "Request Timeout";
    case 414:
        return "URI Too Long";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 503:
        return "Service Unavailable";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Error";
    }
}

/* the same OpenAI-style body as the server's other errors */
static size_t error_response(char *out, size_t cap, int status, const char *msg)
{
    cJSON *j = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(j, "error");
    cJSON_AddStringToObject(e, "message", msg);
    cJSON_AddStringToObject(e, "type",
                            status == 429   ? "rate_limit_error"
                            : status >= 500 ? "server_error"
                                            : "invalid_request_error");
    cJSON_AddNullToObject(e, "param");
    if (status == 429)
        cJSON_AddStringToObject(e, "code", "rate_limit_exceeded");
    else
        cJSON_AddNullToObject(e, "code");
    char *body = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    int n = snprintf(out, cap,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                     "%sConnection: close\r\n\r\n%s",
                     status, reason_of(status), body ? strlen(body) : 0,
                     status == 429 || status == 503 ? "Retry-After: 1\r\n" : "", body ? body : "");
    free(body);
    return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

static void key_of(const struct sockaddr_storage *a, uint8_t key[16])
{
    memset(key, 0, 16);
    if (a->ss_family == AF_INET) {
        /* as ::ffff:a.b.c.d, so v4 clients on a dual-stack socket count the same */
        key[10] = key[11] = 0xff;
        memcpy(key + 12, &((const struct sockaddr_in *)a)->sin_addr, 4);
    } else if (a->ss_family == AF_INET6) {
        memcpy(key, &((const struct sockaddr_in6 *)a)->sin6_addr, 16);
    }
}

/* mu held: the count of key, after adding delta */
static int32_t ip_add(tern_gate *g, const uint8_t key[16], int32_t delta)
{
    for (int32_t i = 0; i < g->n_ips; i++) {
        if (memcmp(g->ips[i].key, key, 16)) continue;
        int32_t n = g->ips[i].n += delta;
        if (n <= 0) g->ips[i] = g->ips[--g->n_ips];
        return n;
    }
    if (delta <= 0 || g->n_ips >= g->lim.max_conns) return 0;
    memcpy(g->ips[g->n_ips].key, key, 16);
    g->ips[g->n_ips++].n = delta;
    return delta;
}

void tern_gate_release(tern_gate *g, const uint8_t key[16])
{
    pthread_mutex_lock(&g->mu);
    g->n_conns--;
    ip_add(g, key, -1);
    pthread_mutex_unlock(&g->mu);
}

bool tern_gate_conn_info(tern_gate *g, int fd, tern_gate_conn *out)
{
    pthread_mutex_lock(&g->mu);
    bool ok = fd >= 0 && fd < g->n_fd && g->fdinfo[fd].t0 > 0;
    if (ok) {
        *out = g->fdinfo[fd];
        g->fdinfo[fd].t0 = 0;
    }
    pthread_mutex_unlock(&g->mu);
    return ok;
}

/* answers fd with status and msg, then drains it for a moment (or closes it when full) */
static void refuse(tern_gate *g, int fd, int status, const char *msg)
{
    char buf[1024];
    size_t n = error_response(buf, sizeof buf, status, msg);
    /* a fresh socket's send buffer takes this small answer whole */
    ssize_t w = send(fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)w;
    shutdown(fd, SHUT_WR);
    if (g->n_ling >= LINGER_MAX) {
        close(fd);
        g->refused[2]++;
        return;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof one);
    g->ling[g->n_ling++] = (lingering){fd, now_s() + LINGER_S};
}

static void drop_pending(tern_gate *g, int32_t i)
{
    pthread_mutex_lock(&g->mu);
    g->n_conns--;
    ip_add(g, g->pend[i].key, -1);
    pthread_mutex_unlock(&g->mu);
    g->pend[i] = g->pend[--g->n_pend];
}

static void accept_some(tern_gate *g)
{
    for (int k = 0; k < ACCEPT_BATCH; k++) {
        struct sockaddr_storage a;
        socklen_t al = sizeof a;
        int fd = accept4(g->lfd, (struct sockaddr *)&a, &al, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return; /* EAGAIN, or out of descriptors: the backlog keeps them */
        uint8_t key[16];
        key_of(&a, key);
        pthread_mutex_lock(&g->mu);
        int status = 0;
        int32_t have = 0;
        if (g->n_conns >= g->lim.max_conns || fd >= g->n_fd) {
            status = 503;
        } else {
            have = ip_add(g, key, 0);
            if (g->lim.max_per_ip > 0 && have >= g->lim.max_per_ip)
                status = 429;
            else {
                ip_add(g, key, 1);
                g->n_conns++;
            }
        }
        int32_t total = g->n_conns;
        pthread_mutex_unlock(&g->mu);
        char msg[200];
        if (status == 503) {
            g->refused[1]++;
            snprintf(msg, sizeof msg,
                     "server: got %d open connections, expected at most %d (--max-conns); retry "
                     "later",
                     (int)total, g->lim.max_conns);
            refuse(g, fd, 503, msg);
        } else if (status == 429) {
            g->refused[0]++;
            snprintf(msg, sizeof msg,
                     "connections: got %d open from your address, expected at most %d "
                     "(--max-conns-per-ip); retry later",
                     (int)have, g->lim.max_per_ip);
            refuse(g, fd, 429, msg);
        } else {
            pending *p = &g->pend[g->n_pend++];
            p->fd = fd;
            memcpy(p->key, key, 16);
            p->t0 = now_s();
            p->peeked = 0;
        }
    }
}

/* reads the head of pending i without consuming it; hands it over, refuses it or waits */
static void look(tern_gate *g, int32_t i)
{
    pending *p = &g->pend[i];
    char *buf = g->buf;
    ssize_t n = recv(p->fd, buf, TERN_HTTP_MAX_HEAD, MSG_PEEK);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) { /* left before asking */
        close(p->fd);
        drop_pending(g, i);
        return;
    }
    if (n < 0) return;
    char msg[200];
    size_t head = 0;
    int st = tern_http_check_head(buf, (size_t)n, &head, msg, sizeof msg);
    if (st == 0) {
        /* wake up only once more than this has arrived (poll is level-triggered and the
         * peeked bytes stay readable) */
        p->peeked = (size_t)n;
        int want = (int)n + 1;
        setsockopt(p->fd, SOL_SOCKET, SO_RCVLOWAT, &want, sizeof want);
        return;
    }
    if (st != 200) {
        int fd = p->fd;
        drop_pending(g, i);
        refuse(g, fd, st, msg);
        return;
    }
    int one = 1;
    setsockopt(p->fd, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof one);
    struct sockaddr_storage a;
    socklen_t al = sizeof a;
    getpeername(p->fd, (struct sockaddr *)&a, &al);
    int fd = p->fd;
    tern_gate_conn info;
    memcpy(info.key, p->key, 16);
    info.t0 = p->t0;
    pthread_mutex_lock(&g->mu);
    g->fdinfo[fd] = info;
    pthread_mutex_unlock(&g->mu);
    g->pend[i] = g->pend[--g->n_pend];
    /* from here libmicrohttpd owns fd (it closes it on failure too) and tern_gate_release,
     * from its close notification, gives the place back */
    if (MHD_add_connection(g->d, fd, (struct sockaddr *)&a, al) != MHD_YES) {
        pthread_mutex_lock(&g->mu);
        g->fdinfo[fd].t0 = 0;
        pthread_mutex_unlock(&g->mu);
        tern_gate_release(g, info.key);
    }
}

static void *gate_main(void *arg)
{
    tern_gate *g = arg;
    int32_t cap = 2 + g->lim.max_conns + LINGER_MAX;
    struct pollfd *fds = calloc((size_t)cap, sizeof *fds);
    if (!fds) {
        tern_log(TERN_LOG_ERROR, "http: out of memory for the accept loop");
        return NULL;
    }
    for (;;) {
        double t = now_s(), next = t + 1.0;
        /* deadlines: a head not complete in time gets 408; a drained refusal is closed */
        for (int32_t i = 0; i < g->n_pend;) {
            double due = g->pend[i].t0 + g->lim.request_timeout_s;
            if (due <= t) {
                int fd = g->pend[i].fd;
                char msg[200];
                snprintf(msg, sizeof msg,
                         "request: got no complete header within %g s, expected it sooner "
                         "(--request-timeout)",
                         g->lim.request_timeout_s);
                drop_pending(g, i);
                refuse(g, fd, 408, msg);
                continue;
            }
            if (due < next) next = due;
            i++;
        }
        for (int32_t i = 0; i < g->n_ling;) {
            if (g->ling[i].until <= t) {
                close(g->ling[i].fd);
                g->ling[i] = g->ling[--g->n_ling];
                continue;
            }
            if (g->ling[i].until < next) next = g->ling[i].until;
            i++;
        }
        int32_t nf = 0;
        fds[nf++] = (struct pollfd){.fd = g->wake[0], .events = POLLIN};
        fds[nf++] = (struct pollfd){.fd = g->lfd, .events = POLLIN};
        for (int32_t i = 0; i < g->n_pend; i++)
            fds[nf++] = (struct pollfd){.fd = g->pend[i].fd, .events = POLLIN | POLLRDHUP};
        for (int32_t i = 0; i < g->n_ling; i++)
            fds[nf++] = (struct pollfd){.fd = g->ling[i].fd, .events = POLLIN};
        int ms = (int)((next - t) * 1000) + 1;
        int r = poll(fds, (nfds_t)nf, ms);
        if (r < 0 && errno != EINTR) break;
        if (r <= 0) continue;
        if (fds[0].revents) break; /* stop */
        /* lingering first (indices shift as entries are removed: walk from the end) */
        int32_t np = g->n_pend;
        for (int32_t i = g->n_ling - 1; i >= 0; i--) {
            if (!fds[2 + np + i].revents) continue;
            char junk[4096];
            ssize_t n = recv(g->ling[i].fd, junk, sizeof junk, MSG_DONTWAIT);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
                close(g->ling[i].fd);
                g->ling[i] = g->ling[--g->n_ling];
            }
        }
        for (int32_t i = np - 1; i >= 0; i--)
            if (fds[2 + i].revents) look(g, i);
        if (fds[1].revents) accept_some(g);
    }
    free(fds);
    return NULL;
}

/* ------------------------------------------------------------------ life cycle */

int tern_gate_fd_budget(int max_conns)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl)) return max_conns;
    rlim_t want = (rlim_t)max_conns + LINGER_MAX + FD_RESERVE;
    if (rl.rlim_cur < want) {
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= want ? want : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur >= want) return max_conns;
    long fit = (long)rl.rlim_cur - LINGER_MAX - FD_RESERVE;
    return fit > 1 ? (int)fit : 1;
}

tern_code tern_gate_start(tern_gate **out, int lfd, struct MHD_Daemon *d,
                          const tern_gate_limits *lim, tern_status *st)
{
    *out = NULL;
    tern_gate *g = calloc(1, sizeof *g);
    if (!g) return tern_status_set(st, TERN_ENOMEM, "server: out of memory");
    g->lim = *lim;
    g->lfd = lfd;
    g->d = d;
    g->wake[0] = g->wake[1] = -1;
    struct rlimit rl;
    g->n_fd =
        getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (1u << 24) ? (int)rl.rlim_cur : 1 << 16;
    g->ips = calloc((size_t)lim->max_conns, sizeof *g->ips);
    g->pend = calloc((size_t)lim->max_conns, sizeof *g->pend);
    g->fdinfo = calloc((size_t)g->n_fd, sizeof *g->fdinfo);
    pthread_mutex_init(&g->mu, NULL);
    if (!g->ips || !g->pend || !g->fdinfo || pipe2(g->wake, O_CLOEXEC | O_NONBLOCK)) {
        tern_gate_free(g);
        return tern_status_set(st, TERN_ENOMEM, "server: out of memory or descriptors");
    }
    if (pthread_create(&g->th, NULL, gate_main, g)) {
        tern_gate_free(g);
        return tern_status_set(st, TERN_EIO, "server: could not start the accept thread");
    }
    g->started = true;
    *out = g;
    return TERN_OK;
}

void tern_gate_stop(tern_gate *g)
{
    if (!g || g->stopped) return;
    g->stopped = true;
    if (g->started) {
        ssize_t w = write(g->wake[1], "x", 1);
        (void)w;
        pthread_join(g->th, NULL);
    }
    for (int32_t i = 0; i < g->n_pend; i++) close(g->pend[i].fd);
    for (int32_t i = 0; i < g->n_ling; i++) close(g->ling[i].fd);
    if (g->refused[0] + g->refused[1] + g->refused[2])
        tern_log(TERN_LOG_INFO,
                 "http: refused %llu connections per address (429), %llu when full (503), %llu "
                 "unanswered",
                 (unsigned long long)g->refused[0], (unsigned long long)g->refused[1],
                 (unsigned long long)g->refused[2]);
    if (g->wake[0] >= 0) close(g->wake[0]);
    if (g->wake[1] >= 0) close(g->wake[1]);
    g->wake[0] = g->wake[1] = -1;
}

void tern_gate_free(tern_gate *g)
{
    if (!g) return;
    tern_gate_stop(g);
    pthread_mutex_destroy(&g->mu);
    free(g->ips);
    free(g->pend);
    free(g->fdinfo);
    free(g);
}
