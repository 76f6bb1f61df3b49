/* serve.h: the serving commands. `ternpipe serve` runs the OpenAI-compatible HTTP server: by
 * default supervised (the front end here, the engine as a job it relaunches on failure:
 * cmd_supervise.c), in-process with --no-supervise or under mpirun (rank 0 serves HTTP, the
 * workers the pipeline); `ternpipe chat` is an interactive terminal chat against a running
 * server or a model loaded in-process. Both return the process exit code and print their
 * one-line errors to stderr. */
#ifndef TERN_TOOLS_SERVE_H
#define TERN_TOOLS_SERVE_H

#include <stdbool.h>

#include "ternpipe/engine.h"
#include "ternpipe/server.h"

#define TERN_SV_MAX_MPIRUN_ARGS 64 /* --mpirun-arg values */

/* the options of supervised serving (none reaches the job) */
typedef struct tern_supervise_cli {
    bool no_supervise;      /* --no-supervise: serve in this process */
    const char *supervisor; /* --supervisor ADDR (set by the supervisor): rank 0 reports there */
    int ranks;              /* --ranks N (0: 1, or one per host of the hostfile) */
    const char *hostfile;   /* --hostfile H */
    const char *mpirun;     /* --mpirun PROGRAM (default mpirun) */
    const char *mpirun_args[TERN_SV_MAX_MPIRUN_ARGS]; /* --mpirun-arg A, repeatable */
    int n_mpirun_args;
    const char *engine_host;  /* --engine-host ADDR: where rank 0 reaches the supervisor */
    int restarts;             /* --restarts N: failed recoveries in a row before giving up */
    double heartbeat_timeout; /* --heartbeat-timeout S: rank 0 silent this long is hung */
    double start_timeout;     /* --start-timeout S: launch to ready */
} tern_supervise_cli;

int tern_cmd_serve(int argc, char **argv);
int tern_cmd_chat(int argc, char **argv);
/* skip[i]: argv[i] is a supervisor option, not passed on to the job */
int tern_serve_supervised(int argc, char **argv, const bool *skip, const tern_server_opts *so,
                          const tern_engine_opts *eo, const tern_supervise_cli *c);

#endif
