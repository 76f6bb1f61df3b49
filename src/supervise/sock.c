/* sock.c: see sock.h. */
#define _POSIX_C_SOURCE 200809L
#include "supervise/sock.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define READ_CHUNK 65536

double tern_sv_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void tune(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    fcntl(fd, F_SETFD, FD_CLOEXEC);
}

/* "HOST:PORT" or "[V6]:PORT" into host and port */
static tern_code split_addr(const char *addr, char *host, size_t cap, char *port, size_t pcap,
                            tern_status *st)
{
    const char *colon = addr ? strrchr(addr, ':') : NULL;
    if (!colon || colon == addr || !colon[1] || strlen(colon + 1) >= pcap)
        return tern_status_set(st, TERN_EINVAL, "supervise: address: got '%s', expected HOST:PORT",
                               addr ? addr : "(null)");
    const char *h = addr;
    size_t n = (size_t)(colon - addr);
    if (h[0] == '[' && n >= 2 && h[n - 1] == ']') h++, n -= 2;
    if (n >= cap)
        return tern_status_set(st, TERN_EINVAL,
                               "supervise: address: got a %zu-byte host, "
                               "expected at most %zu",
                               n, cap - 1);
    memcpy(host, h, n);
    host[n] = 0;
    snprintf(port, pcap, "%s", colon + 1);
    return TERN_OK;
}

tern_code tern_sock_connect(const char *addr, double timeout_s, int *fd, tern_status *st)
{
    char host[256], port[16];
    *fd = -1;
    tern_code rc = split_addr(addr, host, sizeof host, port, sizeof port, st);
    if (rc) return rc;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int g = getaddrinfo(host, port, &hints, &res);
    if (g) return tern_status_set(st, TERN_EIO, "supervise: %s: %s", addr, gai_strerror(g));
    double until = tern_sv_now() + timeout_s;
    int err = 0;
    for (int attempt = 0;; attempt++) {
        for (struct addrinfo *a = res; a; a = a->ai_next) {
            int s = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
            if (s < 0) {
                err = errno;
                continue;
            }
            if (connect(s, a->ai_addr, a->ai_addrlen) == 0) {
                freeaddrinfo(res);
                tune(s);
                *fd = s;
                return TERN_OK;
            }
            err = errno;
            close(s);
        }
        if (tern_sv_now() >= until || attempt > 10000) break;
        struct timespec ts = {0, 100 * 1000000L};
        nanosleep(&ts, NULL);
    }
    freeaddrinfo(res);
    return tern_status_set(st, TERN_EIO, "supervise: connect to %s: %s (for %.0f s)", addr,
                           strerror(err), timeout_s);
}

tern_code tern_sock_listen(const char *host, int port, int *fd, int *port_out, tern_status *st)
{
    char p[16];
    snprintf(p, sizeof p, "%d", port);
    if (!host) host = "127.0.0.1";
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE},
                    *res = NULL;
    int g = getaddrinfo(host, p, &hints, &res);
    if (g)
        return tern_status_set(st, TERN_EIO, "supervise: listen on %s: %s", host, gai_strerror(g));
    int s = socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC, res->ai_protocol);
    int one = 1;
    if (s >= 0) setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (s < 0 || bind(s, res->ai_addr, res->ai_addrlen) || listen(s, 8)) {
        int e = errno;
        if (s >= 0) close(s);
        freeaddrinfo(res);
        return tern_status_set(st, TERN_EIO, "supervise: listen on %s:%d: %s", host, port,
                               strerror(e));
    }
    freeaddrinfo(res);
    struct sockaddr_storage sa;
    socklen_t sl = sizeof sa;
    getsockname(s, (struct sockaddr *)&sa, &sl);
    *port_out = sa.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&sa)->sin6_port)
                                         : ntohs(((struct sockaddr_in *)&sa)->sin_port);
    fcntl(s, F_SETFL, fcntl(s, F_GETFL) | O_NONBLOCK);
    *fd = s;
    return TERN_OK;
}

int tern_sock_accept(int lfd)
{
    int s = accept(lfd, NULL, NULL);
    if (s >= 0) tune(s);
    return s;
}

tern_code tern_sv_out_init(tern_sv_out *o, tern_status *st)
{
    o->n = 0;
    o->b = malloc(TERN_SV_OUT_CAP);
    if (!o->b) return tern_status_set(st, TERN_ENOMEM, "supervise: out of memory for a buffer");
    return TERN_OK;
}

void tern_sv_out_free(tern_sv_out *o)
{
    free(o->b);
    o->b = NULL, o->n = 0;
}

tern_code tern_sv_out_flush(tern_sv_out *o, int fd, double wait_s, tern_status *st)
{
    double until = tern_sv_now() + wait_s;
    size_t off = 0;
    tern_code rc = TERN_OK;
    while (off < o->n) {
        ssize_t k = send(fd, o->b + off, o->n - off, MSG_NOSIGNAL);
        if (k > 0) {
            off += (size_t)k;
            continue;
        }
        if (k < 0 && errno == EINTR) continue;
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            double left = until - tern_sv_now();
            if (wait_s <= 0) break;
            if (left <= 0) {
                rc = tern_status_set(st, TERN_EIO, "supervise: peer read nothing for %.1f s",
                                     wait_s);
                break;
            }
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            poll(&p, 1, (int)(left * 1000) + 1);
            continue;
        }
        rc = tern_status_set(st, TERN_EIO, "supervise: send: %s",
                             k < 0 ? strerror(errno) : "connection closed");
        break;
    }
    memmove(o->b, o->b + off, o->n - off);
    o->n -= off;
    return rc;
}

tern_code tern_sv_out_put(tern_sv_out *o, int fd, const tern_sv_msg *m, double wait_s,
                          tern_status *st)
{
    for (int round = 0; round < 2; round++) {
        size_t k = tern_sv_pack(m, o->b + o->n, TERN_SV_OUT_CAP - o->n);
        if (k) {
            o->n += k;
            return TERN_OK;
        }
        if (!o->n) break; /* empty and still no room: the message itself is bad */
        tern_code rc = tern_sv_out_flush(o, fd, wait_s, st);
        if (rc) return rc;
    }
    return tern_status_set(st, TERN_EINVAL, "supervise: a frame of kind %d does not pack",
                           (int)m->kind);
}

tern_code tern_sv_read(int fd, tern_sv_reader *r, bool *eof, tern_status *st)
{
    uint8_t buf[READ_CHUNK];
    *eof = false;
    for (int i = 0; i < 64; i++) { /* bounded: at most 4 MiB per call, the rest next time */
        ssize_t k = recv(fd, buf, sizeof buf, 0);
        if (k > 0) {
            tern_code rc = tern_sv_reader_feed(r, buf, (size_t)k, st);
            if (rc) return rc;
            continue;
        }
        if (k == 0) {
            *eof = true;
            return TERN_OK;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return TERN_OK;
        return tern_status_set(st, TERN_EIO, "supervise: recv: %s", strerror(errno));
    }
    return TERN_OK;
}
