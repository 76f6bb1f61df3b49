/* sock.h: the TCP plumbing the supervisor and rank 0 share: connect and listen on "HOST:PORT",
 * a send buffer flushed without blocking (or with a bounded wait), and reading whatever has
 * arrived into a frame reader. Every wait is bounded. */
#ifndef TERN_SUPERVISE_SOCK_H
#define TERN_SUPERVISE_SOCK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "supervise/wire.h"
#include "ternpipe/status.h"

/* a send buffer holds this much beyond one frame: a peer that stops reading for longer is
 * treated as gone */
#define TERN_SV_OUT_CAP (2 * ((size_t)TERN_SV_MAX_FRAME + 4))

typedef struct tern_sv_out {
    uint8_t *b; /* [TERN_SV_OUT_CAP] */
    size_t n;
} tern_sv_out;

/* "HOST:PORT" (a name or an IPv4/IPv6 address; IPv6 in brackets); retries refused connections
 * until timeout_s. The socket is non-blocking with TCP_NODELAY. */
tern_code tern_sock_connect(const char *addr, double timeout_s, int *fd, tern_status *st);
/* Listens on host (NULL: 127.0.0.1) and port (0: any free one); *port_out is the bound port. */
tern_code tern_sock_listen(const char *host, int port, int *fd, int *port_out, tern_status *st);
/* A connection waiting on a listening socket, made non-blocking with TCP_NODELAY; -1 when
 * none is waiting. */
int tern_sock_accept(int lfd);

tern_code tern_sv_out_init(tern_sv_out *o, tern_status *st);
void tern_sv_out_free(tern_sv_out *o);
/* Packs m at the end of the buffer; when it does not fit, flushes first, waiting up to wait_s.
 * TERN_EIO when the peer is gone or does not read, TERN_EINVAL when m cannot be packed. */
tern_code tern_sv_out_put(tern_sv_out *o, int fd, const tern_sv_msg *m, double wait_s,
                          tern_status *st);
/* Sends what it can; with wait_s > 0 waits until everything is sent or wait_s has passed.
 * TERN_EIO when the connection failed or (with a wait) the bytes did not all go. */
tern_code tern_sv_out_flush(tern_sv_out *o, int fd, double wait_s, tern_status *st);
/* Reads everything that has arrived into r; *eof says the peer closed the connection. */
tern_code tern_sv_read(int fd, tern_sv_reader *r, bool *eof, tern_status *st);

double tern_sv_now(void); /* CLOCK_MONOTONIC seconds */

#endif
