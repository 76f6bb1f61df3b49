/* cmd_supervise.c: `ternpipe serve` supervised (the default outside mpirun; issue 11): this
 * process holds the HTTP front end and the journal of accepted requests, and runs the engine
 * as a separate job (mpirun, or this binary for one local rank) whose rank 0 serves it over a
 * socket (src/supervise/bridge.h). When the job fails it is torn down, relaunched (on the hosts
 * that still answer) and every open request continues where it was (src/supervise/remote.h).
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pipeline/limits.h"
#include "supervise/job.h"
#include "supervise/remote.h"
#include "supervise/sock.h"
#include "supervise/wire.h"
#include "ternpipe/gguf.h"
#include "ternpipe/log.h"
#include "ternpipe/server.h"
#include "ternpipe/tokenizer.h"
#include "tools/commands.h"
#include "tools/serve.h"

#define MAX_HOSTS 256     /* lines of a hostfile */
#define HOST_LINE 512     /* bytes of one */
#define PROBE_S 10.0      /* a host that does not run `true` within this is gone */
#define MAX_ARGV 512      /* the job's command line */
#define CLOSE_WAIT_S 15.0 /* after serving: the job's own clean exit */

static tern_server *volatile g_srv;
static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
    if (g_srv) tern_server_stop(g_srv);
}

typedef struct sup {
    const tern_supervise_cli *c;
    char *argv[MAX_ARGV]; /* the job's command line; strings owned by argv_own */
    char *argv_own[MAX_ARGV];
    int n_own;
    int hostfile_at, np_at; /* indices in argv of the hostfile path and -np value (-1: none) */
    char hosts[MAX_HOSTS][HOST_LINE];
    bool alive[MAX_HOSTS];
    int n_hosts, n_alive, ranks0;
    char hostfile[PATH_MAX]; /* the survivors' hostfile written for relaunches */
    char np[16];
    char addr[300];
} sup;

static char *own(sup *s, const char *text)
{
    if (s->n_own >= MAX_ARGV) return NULL;
    char *p = strdup(text);
    if (p) s->argv_own[s->n_own++] = p;
    return p;
}

static tern_code read_hosts(sup *s, const char *path, tern_status *st)
{
    FILE *f = fopen(path, "r");
    if (!f) return tern_status_set(st, TERN_EIO, "--hostfile %s: %s", path, strerror(errno));
    char line[HOST_LINE];
    while (fgets(line, sizeof line, f)) {
        char *p = line;
        while (*p == ' ' || *p == '\t') p++;
        size_t n = strcspn(p, "\r\n");
        p[n] = 0;
        if (!*p || *p == '#') continue;
        if (s->n_hosts >= MAX_HOSTS) {
            fclose(f);
            return tern_status_set(st, TERN_ERANGE, "--hostfile %s: got more than %d hosts", path,
                                   MAX_HOSTS);
        }
        snprintf(s->hosts[s->n_hosts], HOST_LINE, "%s", p);
        s->alive[s->n_hosts++] = true;
    }
    fclose(f);
    if (!s->n_hosts) return tern_status_set(st, TERN_EINVAL, "--hostfile %s: no hosts in it", path);
    s->n_alive = s->n_hosts;
    return TERN_OK;
}

/* the host name of a hostfile line ("node1 slots=4" -> "node1") */
static void host_name(const char *line, char *out, size_t cap)
{
    size_t n = strcspn(line, " \t");
    snprintf(out, cap, "%.*s", (int)n, line);
}

/* before each relaunch: every host still listed must run `true` through the launcher */
static tern_code probe_hosts(void *user, char *const **argv, int *dropped, tern_status *st)
{
    sup *s = user;
    *dropped = 0;
    if (!s->n_hosts) return TERN_OK;
    tern_job jobs[MAX_HOSTS];
    char np1[] = "1", hflag[] = "--host", tru[] = "true";
    for (int h = 0; h < s->n_hosts; h++) {
        memset(&jobs[h], 0, sizeof jobs[h]);
        if (!s->alive[h]) continue;
        char name[HOST_LINE];
        host_name(s->hosts[h], name, sizeof name);
        char *pv[MAX_ARGV];
        int k = 0;
        pv[k++] = (char *)s->c->mpirun;
        pv[k++] = (char *)"-np";
        pv[k++] = np1;
        pv[k++] = hflag;
        pv[k++] = name;
        for (int i = 0; i < s->c->n_mpirun_args && k < MAX_ARGV - 2; i++)
            pv[k++] = (char *)s->c->mpirun_args[i];
        pv[k++] = tru;
        pv[k] = NULL;
        tern_status pst = {0};
        if (tern_job_start(&jobs[h], pv, &pst)) memset(&jobs[h], 0, sizeof jobs[h]);
    }
    double until = tern_sv_now() + PROBE_S;
    for (int h = 0; h < s->n_hosts; h++) {
        if (!s->alive[h]) continue;
        double left = until - tern_sv_now();
        bool ok = jobs[h].pid && tern_job_wait(&jobs[h], left > 0 ? left : 0) &&
                  WIFEXITED(jobs[h].status) && WEXITSTATUS(jobs[h].status) == 0;
        if (!ok) {
            char how[64];
            tern_job_describe(&jobs[h], how, sizeof how);
            tern_job_kill(&jobs[h], NULL, NULL, false);
            s->alive[h] = false, s->n_alive--, (*dropped)++;
            tern_log(TERN_LOG_WARN,
                     "supervisor: host '%s' failed its probe (%s within %.0f s): "
                     "dropped",
                     s->hosts[h], how, PROBE_S);
        }
    }
    if (!s->n_alive)
        return tern_status_set(st, TERN_EIO, "supervisor: no hosts left: all %d failed their probe",
                               s->n_hosts);
    if (*dropped) {
        FILE *f = fopen(s->hostfile, "w");
        if (!f) return tern_status_set(st, TERN_EIO, "%s: %s", s->hostfile, strerror(errno));
        for (int h = 0; h < s->n_hosts; h++)
            if (s->alive[h]) fprintf(f, "%s\n", s->hosts[h]);
        if (fclose(f)) return tern_status_set(st, TERN_EIO, "%s: write failed", s->hostfile);
        int ranks = (int)((long)s->ranks0 * s->n_alive / s->n_hosts);
        snprintf(s->np, sizeof s->np, "%d", ranks < 1 ? 1 : ranks);
        s->argv[s->hostfile_at] = s->hostfile;
        s->argv[s->np_at] = s->np;
        tern_log(TERN_LOG_WARN, "supervisor: relaunching on %d of %d hosts with %s ranks",
                 s->n_alive, s->n_hosts, s->np);
    }
    *argv = s->argv;
    return TERN_OK;
}

/* the job: [mpirun -np N [--hostfile H] ARGS...] SELF serve OPTIONS... --supervisor ADDR */
static tern_code build_argv(sup *s, int argc, char **argv, const bool *skip, tern_status *st)
{
    const tern_supervise_cli *c = s->c;
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return tern_status_set(st, TERN_EIO, "supervisor: /proc/self/exe: %s", strerror(errno));
    self[n] = 0;
    int k = 0;
    s->hostfile_at = s->np_at = -1;
    bool mpi = c->ranks > 1 || c->hostfile;
    if (mpi) {
        snprintf(s->np, sizeof s->np, "%d", s->ranks0);
        s->argv[k++] = (char *)c->mpirun;
        s->argv[k++] = (char *)"-np";
        s->np_at = k;
        s->argv[k++] = s->np;
        if (c->hostfile) {
            s->argv[k++] = (char *)"--hostfile";
            s->hostfile_at = k;
            s->argv[k++] = (char *)c->hostfile;
        }
        for (int i = 0; i < c->n_mpirun_args; i++) s->argv[k++] = (char *)c->mpirun_args[i];
        s->argv[k++] = (char *)"-x"; /* the job's secret reaches rank 0 on any host */
        s->argv[k++] = (char *)TERN_SV_TOKEN_ENV;
        /* the job's marker on mpirun's daemons too (job.h), so none can outlive the job */
        s->argv[k++] = (char *)"--mca";
        s->argv[k++] = (char *)"ternpipe_supervisor";
        s->argv[k++] = s->addr;
    }
    s->argv[k++] = own(s, self);
    s->argv[k++] = (char *)"serve";
    for (int i = 1; i < argc && k < MAX_ARGV - 4; i++)
        if (!skip[i]) s->argv[k++] = argv[i];
    if (k >= MAX_ARGV - 4)
        return tern_status_set(st, TERN_ERANGE,
                               "supervisor: got a command line of more than %d "
                               "arguments",
                               MAX_ARGV - 4);
    s->argv[k++] = (char *)"--supervisor";
    s->argv[k++] = s->addr;
    s->argv[k] = NULL;
    for (int i = 0; i < k; i++)
        if (!s->argv[i]) return tern_status_set(st, TERN_ENOMEM, "supervisor: out of memory");
    return TERN_OK;
}

static tern_code make_token(char *out, size_t cap, tern_status *st)
{
    unsigned char b[16];
    FILE *f = fopen("/dev/urandom", "rb");
    size_t n = f ? fread(b, 1, sizeof b, f) : 0;
    if (f) fclose(f);
    if (n != sizeof b || cap < 2 * sizeof b + 1)
        return tern_status_set(st, TERN_EIO, "supervisor: /dev/urandom: no random bytes");
    for (size_t i = 0; i < sizeof b; i++) snprintf(out + 2 * i, 3, "%02x", b[i]);
    return TERN_OK;
}

static tern_code load_tokenizer(const char *model, tern_gguf **g, tern_tokenizer **tok,
                                tern_status *st)
{
    struct stat sb;
    if (!stat(model, &sb) && S_ISDIR(sb.st_mode)) return tern_tokenizer_load_dir(tok, model, st);
    tern_code rc = tern_gguf_open(g, model, st);
    return rc ? rc : tern_tokenizer_load(tok, *g, st);
}

int tern_serve_supervised(int argc, char **argv, const bool *skip, const tern_server_opts *so,
                          const tern_engine_opts *eo, const tern_supervise_cli *c)
{
    static sup s; /* large (hostfile lines); one per process */
    memset(&s, 0, sizeof s);
    s.c = c;
    s.ranks0 = c->ranks > 0 ? c->ranks : 1;
    tern_status st = {0};
    tern_gguf *g = NULL;
    tern_tokenizer *tok = NULL;
    tern_server *srv = NULL;
    tern_remote *rm = NULL;
    int lfd = -1, port = 0, rc = 1;
    const char *model = eo->model_path ? eo->model_path : tern_default_model_path();
    if (!model) {
        fprintf(stderr, "ternpipe serve: no model given (-m FILE) and no default model found\n");
        return 2;
    }
    if (c->hostfile) {
        if (read_hosts(&s, c->hostfile, &st)) goto fail;
        if (c->ranks <= 0) s.ranks0 = s.n_hosts;
        snprintf(s.hostfile, sizeof s.hostfile, "%s/ternpipe-hosts-%d",
                 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid());
    }
    /* the tokenizer is the front end's own (text in and out); weights stay with the job */
    if (load_tokenizer(model, &g, &tok, &st)) goto fail;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGUSR2, &sa, NULL);
    if (tern_server_create(&srv, so, &st)) goto fail;
    g_srv = srv;
    const char *listen_on = c->engine_host ? c->engine_host : "127.0.0.1";
    if (tern_sock_listen(listen_on, 0, &lfd, &port, &st)) goto fail;
    snprintf(s.addr, sizeof s.addr, strchr(listen_on, ':') ? "[%s]:%d" : "%s:%d", listen_on, port);
    /* the job's secret: rank 0 proves with it that it is ours (the engine port is local or on
     * the cluster network, where anyone could connect first) */
    char token[2 * 16 + 1];
    if (make_token(token, sizeof token, &st)) goto fail;
    setenv(TERN_SV_TOKEN_ENV, token, 1);
    if (build_argv(&s, argc, argv, skip, &st)) goto fail;
    tern_remote_opts ro = {.argv = s.argv,
                           .marker_flag = "--supervisor",
                           .marker_value = s.addr,
                           .listen_fd = lfd,
                           .token = token,
                           .max_requests = 0,
                           .max_restarts = c->restarts,
                           .start_timeout_s = c->start_timeout,
                           .heartbeat_timeout_s = c->heartbeat_timeout,
                           .before_relaunch = c->hostfile ? probe_hosts : NULL,
                           .user = &s};
    int32_t mq = so->max_queue == 0 ? 256 : so->max_queue < 0 ? 0 : so->max_queue;
    /* the journal holds what the server may accept: the job's slots and the server's queue */
    ro.max_requests = (eo->max_seqs > 0 ? eo->max_seqs : TERN_DEFAULT_SEQS) + mq;
    tern_log(TERN_LOG_INFO,
             "supervisor: starting the engine job (%s%s%d ranks; rank 0 reports "
             "to %s)",
             c->hostfile ? "hosts from " : "", c->hostfile ? c->hostfile : "", s.ranks0, s.addr);
    lfd = -1; /* the remote owns it from here */
    if (tern_remote_start(&rm, &ro, &g_stop, &st)) goto fail;
    tern_backend b;
    tern_remote_backend(rm, &b);
    if (b.max_seqs + mq > ro.max_requests) {
        /* the job has more slots than assumed: the server admits no more than the journal */
        tern_log(TERN_LOG_WARN, "supervisor: %d slots and a queue of %d exceed the journal's %d",
                 b.max_seqs, mq, ro.max_requests);
    }
    tern_server_attach_backend(srv, &b, tok);
    if (g_stop) tern_server_stop(srv);
    tern_code run_rc = tern_server_run(srv, &st);
    if (run_rc) fprintf(stderr, "ternpipe: %s\n", st.msg);
    g_srv = NULL;
    tern_server_free(srv);
    srv = NULL;
    int job_rc = tern_remote_close(rm, CLOSE_WAIT_S);
    rm = NULL;
    rc = run_rc ? 1 : job_rc ? 1 : 0;
    if (!run_rc && job_rc)
        fprintf(stderr, "ternpipe: the engine job exited with status %d\n", job_rc);
    goto out;
fail:
    fprintf(stderr, "ternpipe: %s\n", st.msg);
out:
    g_srv = NULL;
    tern_server_free(srv);
    if (rm) tern_remote_close(rm, 0);
    if (lfd >= 0) close(lfd);
    tern_tokenizer_free(tok);
    tern_gguf_close(g);
    if (s.hostfile[0]) unlink(s.hostfile);
    for (int i = 0; i < s.n_own; i++) free(s.argv_own[i]);
    return rc;
}
