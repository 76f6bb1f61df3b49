/* bridge.h: rank 0's side of a supervised job (DESIGN.md section 1). Instead of an HTTP front
 * end, rank 0 serves its engine to the supervisor over one TCP connection (wire.h): it says
 * hello, takes Submit and Cancel frames, and sends back each request's tokens (with their
 * log-probabilities when asked), its Done, heartbeats and about once a second the engine's
 * counters. Rank 0 still tokenizes nothing new, schedules and samples; the supervisor only
 * remembers what it was sent.
 *
 * Runs on the engine thread (the only thread that calls MPI), so it needs no lock.
 */
#ifndef TERN_SUPERVISE_BRIDGE_H
#define TERN_SUPERVISE_BRIDGE_H

#include <signal.h>

#include "ternpipe/engine.h"
#include "ternpipe/status.h"

#define TERN_BRIDGE_CONNECT_S 10.0  /* to reach the supervisor (it listens before launching) */
#define TERN_BRIDGE_HEARTBEAT_S 0.5 /* default period of rank 0's heartbeats */
#define TERN_BRIDGE_SILENCE_S 30.0  /* default: the supervisor silent this long is gone */
#define TERN_BRIDGE_STATS_S 1.0     /* period of the engine's counters */
#define TERN_BRIDGE_DRAIN_S 10.0    /* after the supervisor left: cancelled requests end by then */

typedef struct tern_bridge_opts {
    const char *addr;            /* "HOST:PORT" of the supervisor */
    double heartbeat_s;          /* 0: TERN_BRIDGE_HEARTBEAT_S */
    double silence_s;            /* 0: TERN_BRIDGE_SILENCE_S */
    volatile sig_atomic_t *stop; /* optional: set by a signal handler, ends the run like a close */
} tern_bridge_opts;

/* Connects, says hello and serves until the supervisor closes the connection or stop is set
 * (TERN_OK once every request it held was cancelled and has ended), or until something fails:
 * the engine (a hung or dead rank: reported to the supervisor in a failed heartbeat first), the
 * socket, or the supervisor's silence past silence_s. */
tern_code tern_bridge_run(tern_engine *e, const tern_bridge_opts *o, tern_status *st);

#endif
