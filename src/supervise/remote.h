/* remote.h: the supervisor's engine: the HTTP front end's backend (server.h tern_backend) over
 * an engine job in other processes (DESIGN.md section 1, issue 11).
 *
 * It journals every accepted request (journal.h), sends it to rank 0 (bridge.h) and passes the
 * tokens back to the server's callbacks. It detects a failed job by the leader's exit, the
 * connection's end, rank 0's failed heartbeat (its step deadline: a hung or dead worker) and
 * rank 0's silence (a hung rank 0 or host); then it tears the job down completely, relaunches
 * it after a back-off (the caller's before_relaunch may probe hosts and drop the dead ones) and
 * resubmits every open request as its prompt plus the tokens generated so far with the same
 * sampling: the continuation is bitwise the unfaulted one, and since the server's request
 * objects live here, clients see a pause, nothing twice. Past max_restarts failed recoveries in
 * a row step() fails and the server answers every open request with the error.
 *
 * Threads: as engine.h: submit and cancel from any thread; step, wait and the callbacks on the
 * serving thread; health and metrics from any thread.
 */
#ifndef TERN_SUPERVISE_REMOTE_H
#define TERN_SUPERVISE_REMOTE_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "ternpipe/server.h"
#include "ternpipe/status.h"

#define TERN_REMOTE_MAX_RESTARTS 3    /* default failed recoveries in a row before giving up */
#define TERN_REMOTE_START_S 600.0     /* default: launch to rank 0's hello */
#define TERN_REMOTE_HEARTBEAT_S 10.0  /* default: rank 0 silent this long is hung */
#define TERN_REMOTE_PING_S 0.5        /* the supervisor's heartbeats to rank 0 */
#define TERN_REMOTE_HELLO_S 5.0       /* a connection silent this long after accept is dropped */
#define TERN_REMOTE_SCAN_S 0.2        /* how often the job's local processes are counted */
#define TERN_REMOTE_BACKOFF_S 0.1     /* first relaunch delay; x4 per failure in a row */
#define TERN_REMOTE_BACKOFF_MAX_S 8.0 /* ... up to this */
#define TERN_REMOTE_STABLE_S 30.0     /* a job up this long (or making progress) resets the count */

typedef struct tern_remote tern_remote;

typedef struct tern_remote_opts {
    /* the job's command line, NULL-terminated; it must hold the marker pair (job.h) */
    char *const *argv;
    const char *marker_flag, *marker_value;
    int listen_fd;              /* rank 0 connects here; owned by the remote from create on */
    const char *token;          /* the secret rank 0's hello must carry (NULL: none asked) */
    int32_t max_requests;       /* open requests at most (the journal's bound) */
    int32_t max_restarts;       /* 0: TERN_REMOTE_MAX_RESTARTS; -1: none */
    double start_timeout_s;     /* 0: TERN_REMOTE_START_S */
    double heartbeat_timeout_s; /* 0: TERN_REMOTE_HEARTBEAT_S */
    /* optional, on the serving thread before each relaunch: may replace *argv (kept until the
     * next call) after probing hosts; *dropped counts hosts it left out this time. An error
     * makes the recovery fail (no hosts left). */
    tern_code (*before_relaunch)(void *user, char *const **argv, int *dropped, tern_status *st);
    void *user;
} tern_remote_opts;

/* Launches the job and waits for rank 0's hello (relaunching on failures as step would); stop
 * (optional, set by a signal) gives up early. On success the backend is ready to attach. */
tern_code tern_remote_start(tern_remote **out, const tern_remote_opts *o,
                            volatile sig_atomic_t *stop, tern_status *st);
/* The server's backend over r (n_ctx, vocabulary and slots from rank 0's hello). */
void tern_remote_backend(tern_remote *r, tern_backend *b);
/* Ends the job: closes the connection (rank 0 then cancels what it holds and closes the
 * pipeline), waits up to wait_s for the job to exit, then kills what is left. Returns the job's
 * exit status (0 when it ended cleanly). Then frees everything. */
int tern_remote_close(tern_remote *r, double wait_s);

#endif
