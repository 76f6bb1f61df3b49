/* job.c: see job.h. */
#define _POSIX_C_SOURCE 200809L
#include "supervise/job.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CMDLINE_MAX 65536 /* bytes of /proc/PID/cmdline read by the sweep */
#define SWEEP_PASSES 5    /* a kill can let a child of the killed start: look again */

static void nap(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

tern_code tern_job_start(tern_job *j, char *const argv[], tern_status *st)
{
    memset(j, 0, sizeof *j);
    pid_t p = fork();
    if (p < 0) return tern_status_set(st, TERN_EIO, "supervise: fork: %s", strerror(errno));
    if (p == 0) {
        setsid();
        int dn = open("/dev/null", O_RDONLY);
        if (dn >= 0) dup2(dn, 0), close(dn);
        signal(SIGPIPE, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execvp(argv[0], argv);
        fprintf(stderr, "ternpipe: supervise: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    j->pid = p;
    return TERN_OK;
}

bool tern_job_exited(tern_job *j)
{
    if (!j->pid || j->reaped) return true;
    int s = 0;
    pid_t r = waitpid(j->pid, &s, WNOHANG);
    if (r == j->pid || (r < 0 && errno == ECHILD)) {
        j->status = s;
        j->reaped = true;
    }
    return j->reaped;
}

bool tern_job_wait(tern_job *j, double timeout_s)
{
    for (int i = 0; i <= (int)(timeout_s / 0.02); i++) {
        if (tern_job_exited(j)) return true;
        nap(0.02);
    }
    return tern_job_exited(j);
}

/* whether the NUL-separated cmdline [n] has an argument equal to value */
static bool has_arg(const char *c, size_t n, const char *value)
{
    size_t vl = strlen(value) + 1;
    for (size_t i = 0; i + vl <= n; i += strlen(c + i) + 1)
        if (!memcmp(c + i, value, vl)) return true;
    return false;
}

int tern_job_sweep(const char *flag, const char *value, bool kill_them)
{
    (void)flag;
    if (!value) return 0;
    char *buf = malloc(CMDLINE_MAX);
    if (!buf) return 0;
    int found = 0;
    for (int pass = 0; pass < (kill_them ? SWEEP_PASSES : 1); pass++) {
        int this_pass = 0;
        DIR *d = opendir("/proc");
        if (!d) break;
        struct dirent *de;
        while ((de = readdir(d))) {
            char *end;
            long pid = strtol(de->d_name, &end, 10);
            if (*end || pid <= 1 || pid == (long)getpid()) continue;
            char path[64];
            snprintf(path, sizeof path, "/proc/%ld/cmdline", pid);
            int fd = open(path, O_RDONLY);
            if (fd < 0) continue;
            ssize_t n = read(fd, buf, CMDLINE_MAX - 1);
            close(fd);
            if (n <= 0) continue;
            buf[n] = 0;
            if (!has_arg(buf, (size_t)n + 1, value)) continue;
            this_pass++;
            if (kill_them) kill((pid_t)pid, SIGKILL);
        }
        closedir(d);
        found += this_pass;
        if (!this_pass) break;
        nap(0.05);
    }
    free(buf);
    return found;
}

int tern_job_kill(tern_job *j, const char *flag, const char *value, bool gently)
{
    if (j->pid && !gently && !tern_job_exited(j)) {
        kill(-j->pid, SIGKILL);
        tern_job_wait(j, 5.0);
    }
    if (j->pid && !tern_job_exited(j)) {
        kill(-j->pid, SIGCONT); /* a stopped process only acts on SIGTERM once continued */
        kill(-j->pid, SIGTERM);
        if (!tern_job_wait(j, TERN_JOB_TERM_S)) {
            kill(-j->pid, SIGKILL);
            tern_job_wait(j, 5.0);
        }
    }
    if (j->pid) kill(-j->pid, SIGKILL); /* what is left of the group (the leader is gone) */
    return tern_job_sweep(flag, value, true);
}

void tern_job_describe(const tern_job *j, char *out, size_t cap)
{
    if (!j->reaped)
        snprintf(out, cap, "still running");
    else if (WIFEXITED(j->status))
        snprintf(out, cap, "exited with status %d", WEXITSTATUS(j->status));
    else if (WIFSIGNALED(j->status))
        snprintf(out, cap, "killed by signal %d", WTERMSIG(j->status));
    else
        snprintf(out, cap, "ended (wait status %d)", j->status);
}
