/* cmd_serve.c: `ternpipe serve`: the OpenAI-compatible HTTP server over the pipeline engine.
 * Three ways to run (serve.h): supervised (the default outside mpirun: cmd_supervise.c); in
 * this process (--no-supervise, or started by mpirun: rank 0 serves HTTP and the other ranks
 * their layer slices until rank 0 closes the engine); or as the job of a supervisor
 * (--supervisor ADDR, which the supervisor adds: rank 0 serves it over a socket instead).
 *
 * Rank 0 binds its port before the engine loads, so /health answers 503 "loading" during a
 * long load and a taken port is reported early (rank 0 still joins the engine's collective
 * open and close, so the workers never hang on it).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "supervise/bridge.h"
#include "ternpipe/log.h"
#include "ternpipe/server.h"
#include "ternpipe/tokenizer.h"
#include "tools/commands.h"
#include "tools/run.h"
#include "tools/serve.h"

static tern_server *volatile g_srv;
static volatile sig_atomic_t g_signals, g_stop_bridge;
static volatile sig_atomic_t g_loading = 1;

static void on_signal(int sig)
{
    g_signals++;
    g_stop_bridge = 1;
    if (g_srv) {
        tern_server_stop(g_srv);
    } else if (g_loading && g_signals >= 2) { /* asked twice while loading: give up now */
        signal(sig, SIG_DFL);
        raise(sig);
    }
}

static void usage(void)
{
    fprintf(
        stderr,
        "usage: ternpipe serve [--host ADDR] [--port N] [--api-key KEY] [--max-queue N]\n"
        "                      [--max-tokens N] [--grace S] [--alias NAME] [--max-conns N]\n"
        "                      [--max-conns-per-ip N] [--request-timeout S] %s\n"
        "  --host       address to bind (default 127.0.0.1; 0.0.0.0 for every interface)\n"
        "  --port       TCP port (default 8080)\n"
        "  --api-key    require 'Authorization: Bearer KEY' on /v1/* (or $TERNPIPE_API_KEY;\n"
        "               an empty or blank key is an error, not \"no authentication\")\n"
        "  --max-queue  requests waiting beyond --max-seqs before 429 (default 256)\n"
        "  --max-tokens default max_tokens of a request (default 128)\n"
        "  --grace      seconds running requests may finish after SIGTERM/SIGUSR2 (default 30)\n"
        "  --alias      model name in responses (default: the file name)\n"
        "  --max-conns  open connections before new ones get 503 (default 1000)\n"
        "  --max-conns-per-ip  open connections from one address before 429 (default 128;\n"
        "               0 = no limit, for a reverse proxy in front)\n"
        "  --request-timeout  seconds from connecting to the whole request (default 30)\n"
        "supervised serving (the default unless started by mpirun; cluster/README.md):\n"
        "  --ranks N    pipeline ranks of the engine job (default 1, or one per host)\n"
        "  --hostfile H Open MPI hostfile; hosts that fail a probe are dropped on relaunch\n"
        "  --mpirun P   the launcher program (default mpirun)\n"
        "  --mpirun-arg A  one more launcher argument (repeatable)\n"
        "  --engine-host ADDR  address rank 0 connects back to (default 127.0.0.1)\n"
        "  --restarts N failed recoveries in a row before giving up (default 3)\n"
        "  --heartbeat-timeout S  rank 0 silent this long is hung (default 10)\n"
        "  --start-timeout S  launch to ready, per attempt (default 600)\n"
        "  --no-supervise  serve in this process (no recovery)\n",
        tern_engine_opts_usage());
}

static int int_arg(const char *name, const char *v, long lo, long hi, long *out)
{
    char *end;
    long x = strtol(v, &end, 10);
    if (end == v || *end || x < lo || x > hi) {
        fprintf(stderr, "ternpipe serve: %s: got '%s', expected an integer %ld..%ld\n", name, v, lo,
                hi);
        return -1;
    }
    *out = x;
    return 0;
}

/* "models/tinystories-bitnet.gguf" -> "tinystories-bitnet" */
static void model_name(const char *path, char *out, size_t cap)
{
    const char *b = path ? strrchr(path, '/') : NULL;
    b = b ? b + 1 : path ? path : "ternpipe";
    size_t n = strlen(b);
    if (n > 5 && !strcmp(b + n - 5, ".gguf")) n -= 5;
    snprintf(out, cap, "%.*s", (int)n, b);
}

static int dbl_arg(const char *name, const char *v, double lo, double hi, double *out)
{
    char *end;
    double x = strtod(v, &end);
    if (end == v || *end || !(x >= lo && x <= hi)) {
        fprintf(stderr, "ternpipe serve: %s: got '%s', expected seconds in [%g, %g]\n", name, v, lo,
                hi);
        return -1;
    }
    *out = x;
    return 0;
}

/* a supervisor option at argv[i] (value at v): 1 taken, 0 not one, -1 bad */
static int supervise_opt(const char *a, const char *v, tern_supervise_cli *c)
{
    long x;
    if (!strcmp(a, "--supervisor"))
        c->supervisor = v;
    else if (!strcmp(a, "--ranks")) {
        if (int_arg(a, v, 1, 4096, &x)) return -1;
        c->ranks = (int)x;
    } else if (!strcmp(a, "--hostfile"))
        c->hostfile = v;
    else if (!strcmp(a, "--mpirun"))
        c->mpirun = v;
    else if (!strcmp(a, "--mpirun-arg")) {
        if (c->n_mpirun_args >= TERN_SV_MAX_MPIRUN_ARGS) {
            fprintf(stderr, "ternpipe serve: --mpirun-arg: got more than %d\n",
                    TERN_SV_MAX_MPIRUN_ARGS);
            return -1;
        }
        c->mpirun_args[c->n_mpirun_args++] = v;
    } else if (!strcmp(a, "--engine-host"))
        c->engine_host = v;
    else if (!strcmp(a, "--restarts")) {
        if (int_arg(a, v, 0, 1000, &x)) return -1;
        c->restarts = x == 0 ? -2 : (int)x; /* -2: none (0 means the default in the options) */
    } else if (!strcmp(a, "--heartbeat-timeout")) {
        if (dbl_arg(a, v, 0.1, 86400, &c->heartbeat_timeout)) return -1;
    } else if (!strcmp(a, "--start-timeout")) {
        if (dbl_arg(a, v, 1, 86400, &c->start_timeout)) return -1;
    } else
        return 0;
    return 1;
}

/* rank 0 of a supervisor's job: the engine served over the supervisor's socket */
static int serve_bridge(int argc, char **argv, tern_engine_opts *eo, const char *addr)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
    bool rank0 = tern_launcher_rank(NULL) == 0;
    /* rank 0 stops when asked (SIGTERM: the supervisor's teardown); the workers serve until
     * rank 0 closes the pipeline, as under a plain mpirun */
    sa.sa_handler = rank0 ? on_signal : SIG_IGN;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    tern_engine *e = NULL;
    int rank = 0;
    if (tern_run_open(&argc, &argv, eo, &e, &rank)) return 1;
    if (rank != 0) {
        tern_run_close(NULL);
        return 0;
    }
    tern_bridge_opts bo = {.addr = addr, .stop = &g_stop_bridge};
    tern_status st = {0};
    tern_code rc = tern_bridge_run(e, &bo, &st);
    if (rc) fprintf(stderr, "ternpipe: %s\n", st.msg);
    tern_run_close(e); /* a failed engine ends every rank (MPI_Abort) */
    return rc ? 1 : 0;
}

static int tern_cmd_serve_opts(int argc, char **argv, tern_engine_opts *eo_out,
                               tern_server_opts *so_out, tern_supervise_cli *sc, bool *skip);
static int serve_local(int argc, char **argv, tern_engine_opts *eop, const tern_server_opts *sop);

int tern_cmd_serve(int argc, char **argv)
{
    tern_engine_opts eo = {0};
    tern_server_opts so = {0};
    tern_supervise_cli sc = {.mpirun = "mpirun"};
    bool *skip = calloc((size_t)argc + 1, sizeof *skip);
    if (!skip) return 1;
    int rc = tern_cmd_serve_opts(argc, argv, &eo, &so, &sc, skip);
    if (rc >= 0) {
        free(skip);
        return rc;
    }
    bool launched = false;
    tern_launcher_rank(&launched);
    if (sc.supervisor)
        rc = serve_bridge(argc, argv, &eo, sc.supervisor);
    else if (!launched && !sc.no_supervise)
        rc = tern_serve_supervised(argc, argv, skip, &so, &eo, &sc);
    else
        rc = serve_local(argc, argv, &eo, &so);
    free(skip);
    return rc;
}

/* parses every option; returns -1 to go on, else the exit code (help, bad options) */
static int tern_cmd_serve_opts(int argc, char **argv, tern_engine_opts *eo_out,
                               tern_server_opts *so_out, tern_supervise_cli *sc, bool *skip)
{
    tern_engine_opts eo = {0};
    tern_server_opts so = {0};
    const char *alias = NULL;
    so.api_key = getenv("TERNPIPE_API_KEY");
    const char *key_from = "TERNPIPE_API_KEY";
    for (int i = 1; i < argc; i++) {
        int r = tern_parse_engine_opt(argc, argv, &i, &eo);
        if (r < 0) return 2;
        if (r) continue;
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        long x;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage();
            return 0;
        } else if (!strcmp(a, "--no-supervise")) {
            sc->no_supervise = skip[i] = true;
            continue;
        } else if (!v) {
            usage();
            return 2;
        }
        int sv = supervise_opt(a, v, sc);
        if (sv < 0) return 2;
        if (sv) {
            skip[i] = skip[i + 1] = strcmp(a, "--supervisor") != 0;
            i++;
            continue;
        }
        if (0) {
            usage();
            return 2;
        } else if (!strcmp(a, "--host")) {
            so.host = v;
        } else if (!strcmp(a, "--port")) {
            if (int_arg(a, v, 1, 65535, &x)) return 2;
            so.port = (int)x;
        } else if (!strcmp(a, "--api-key")) {
            so.api_key = v;
            key_from = "--api-key";
        } else if (!strcmp(a, "--max-queue")) {
            if (int_arg(a, v, 0, 1 << 20, &x)) return 2;
            so.max_queue = x == 0 ? -1 : (int32_t)x; /* 0 means none here, default there */
        } else if (!strcmp(a, "--max-tokens")) {
            if (int_arg(a, v, 1, 1 << 24, &x)) return 2;
            so.default_max_tokens = (int32_t)x;
        } else if (!strcmp(a, "--grace")) {
            if (int_arg(a, v, 0, 86400, &x)) return 2;
            so.grace_s = x == 0 ? 1e-9 : (double)x;
        } else if (!strcmp(a, "--alias")) {
            alias = v;
        } else if (!strcmp(a, "--max-conns")) {
            if (int_arg(a, v, 1, 1 << 20, &x)) return 2;
            so.max_conns = (int32_t)x;
        } else if (!strcmp(a, "--max-conns-per-ip")) {
            if (int_arg(a, v, 0, 1 << 20, &x)) return 2;
            so.max_conns_per_ip = x == 0 ? -1 : (int32_t)x; /* 0 means none here */
        } else if (!strcmp(a, "--request-timeout")) {
            if (int_arg(a, v, 1, 3600, &x)) return 2;
            so.request_timeout_s = (double)x;
        } else {
            usage();
            return 2;
        }
        i++;
    }
    /* checked before the (long) model load; an empty key is an error, never "no auth" */
    tern_status kst = {0};
    if (so.api_key && tern_server_check_api_key(so.api_key, key_from, &kst)) {
        fprintf(stderr, "ternpipe serve: %s\n", kst.msg);
        return 2;
    }
    static char name[128];
    if (alias)
        snprintf(name, sizeof name, "%s", alias);
    else
        model_name(eo.model_path ? eo.model_path : tern_default_model_path(), name, sizeof name);
    so.model_name = name;
    *eo_out = eo;
    *so_out = so;
    return -1;
}

/* in this process (rank 0 of mpirun, or alone) */
static int serve_local(int argc, char **argv, tern_engine_opts *eop, const tern_server_opts *sop)
{
    tern_engine_opts eo = *eop;
    tern_server_opts so = *sop;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);

    /* rank 0 listens before the (collective, possibly long) engine open */
    tern_status st = {0};
    tern_server *srv = NULL;
    tern_code bind_rc = TERN_OK;
    bool rank0_guess = tern_launcher_rank(NULL) == 0;
    if (rank0_guess) bind_rc = tern_server_create(&srv, &so, &st);
    /* A graceful stop is SIGTERM or SIGINT to rank 0 (its pid is in the "serving" log line),
     * or SIGUSR2 to mpirun, which forwards it to every rank at once (cluster/launch turns its
     * own SIGTERM into that): rank 0 drains and closes the pipeline, the workers return, and
     * the job exits 0. SIGTERM to mpirun (Open MPI 4.1) instead sends SIGCONT, waits
     * odls_base_sigkill_timeout (1 s by default), sends SIGTERM, waits as long again and
     * kills every rank: rank 0 drains in that second window (--grace shorter than it), the
     * workers ignore it and serve until the shutdown step, and mpirun exits 1 however cleanly
     * the ranks stopped (cluster/README.md). */
    if (rank0_guess) {
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGUSR2, &sa, NULL);
    } else {
        /* mpirun forwards SIGTERM (and turns SIGINT into one) to every rank: a worker keeps
         * serving until rank 0 has drained and sent the shutdown step (the job's end, or
         * mpirun's SIGKILL after odls_base_sigkill_timeout, still stops it) */
        sa.sa_handler = SIG_IGN;
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGUSR2, &sa, NULL);
    }

    tern_engine *e = NULL;
    int rank = 0;
    if (tern_run_open(&argc, &argv, &eo, &e, &rank)) {
        tern_server_free(srv);
        return 1;
    }
    g_loading = 0;   /* from here a signal only asks for an orderly stop */
    if (rank != 0) { /* a worker: the pipeline has been served and closed */
        tern_server_free(srv);
        tern_run_close(NULL);
        return 0;
    }
    if (!rank0_guess) { /* the launcher's variables misled us: bind now */
        bind_rc = tern_server_create(&srv, &so, &st);
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGUSR2, &sa, NULL);
    }
    int rc = 1;
    tern_tokenizer *tok = NULL;
    if (bind_rc) {
        fprintf(stderr, "ternpipe: %s\n", st.msg);
        goto out;
    }
    if (tern_tokenizer_load(&tok, tern_engine_gguf(e), &st)) {
        fprintf(stderr, "ternpipe: %s\n", st.msg);
        goto out;
    }
    tern_server_attach(srv, e, tok);
    g_srv = srv;
    for (int k = 0; k < g_signals; k++) tern_server_stop(srv); /* signalled while loading */
    if (tern_server_run(srv, &st)) {
        fprintf(stderr, "ternpipe: %s\n", st.msg);
        goto out;
    }
    rc = 0;
out:
    g_srv = NULL;
    tern_server_free(srv); /* stops the HTTP threads before the engine goes */
    tern_tokenizer_free(tok);
    tern_run_close(e);
    return rc;
}
