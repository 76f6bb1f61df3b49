/* job.h: the engine job as the supervisor sees it: a process tree it starts (mpirun, or the
 * ternpipe binary itself for one local rank), watches and tears down completely. The job runs
 * in its own session so one signal reaches the whole local tree; after it, a sweep of /proc
 * ends any process of the job that escaped the group (a rank re-parented by a dead mpirun, an
 * Open MPI daemon that daemonized itself on an emulated host): each carries the job's marker,
 * an argument equal to its value (the ranks have "--supervisor ADDR", mpirun and its daemons
 * the MCA parameter "--mca ternpipe_supervisor ADDR", which Open MPI ignores). */
#ifndef TERN_SUPERVISE_JOB_H
#define TERN_SUPERVISE_JOB_H

#include <stdbool.h>
#include <sys/types.h>

#include "ternpipe/status.h"

#define TERN_JOB_TERM_S 1.0 /* after SIGTERM, how long the job may take to go before SIGKILL */

typedef struct tern_job {
    pid_t pid;  /* the leader (its session and process group); 0: none */
    int status; /* wait status once reaped */
    bool reaped;
} tern_job;

/* Starts argv (argv[0] looked up in PATH) in a new session; stdin from /dev/null, stdout and
 * stderr inherited. */
tern_code tern_job_start(tern_job *j, char *const argv[], tern_status *st);
/* Whether the leader has exited (reaps it once). */
bool tern_job_exited(tern_job *j);
/* Waits up to timeout_s for the leader to exit; true when it has. */
bool tern_job_wait(tern_job *j, double timeout_s);
/* Ends the job: gently (SIGTERM to its process group, SIGKILL after TERN_JOB_TERM_S) or at
 * once (SIGKILL: a failed job has nothing left to save), reaps the leader, then kills every
 * process on this machine with an argument equal to marker_value (NULL: no sweep; marker_flag
 * names the ranks' form of it, for messages). Ranks on other hosts end with their launcher
 * daemon when it loses mpirun. Returns how many the sweep had to kill. */
int tern_job_kill(tern_job *j, const char *marker_flag, const char *marker_value, bool gently);
/* The sweep alone: processes with an argument equal to marker_value, other than this one.
 * kill_them: SIGKILL them too. Returns the count. */
int tern_job_sweep(const char *marker_flag, const char *marker_value, bool kill_them);
/* "exited with status 1", "killed by signal 9" */
void tern_job_describe(const tern_job *j, char *out, size_t cap);

#endif
