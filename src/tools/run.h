/* run.h: shared set-up of the commands that run a model through the engine (generate,
 * logits, bench, serve): MPI start, option parsing, engine open/close. */
#ifndef TERN_TOOLS_RUN_H
#define TERN_TOOLS_RUN_H

#include <stdbool.h>

#include "ternpipe/engine.h"

/* Parses an engine option at argv[*i] (advancing *i past its value); returns 1 when it was
 * one, 0 when not, -1 on a bad value (message printed). */
int tern_parse_engine_opt(int argc, char **argv, int *i, tern_engine_opts *o);
const char *tern_engine_opts_usage(void);
/* The same for sampling options: --temp --top-k --top-p --min-p --repeat-penalty
 * --repeat-last-n --seed --logprobs (values range-checked later by tern_sampling_validate). */
int tern_parse_sampling_opt(int argc, char **argv, int *i, tern_sampling *sp);
const char *tern_sampling_opts_usage(void);

/* MPI init + engine open. On worker ranks it serves and returns 0 with *e NULL; on rank 0
 * with *e set. Prints the one-line error itself (rank 0) and returns non-zero on failure. */
int tern_run_open(int *argc, char ***argv, const tern_engine_opts *o, tern_engine **e, int *rank);
/* engine close + MPI finalize */
void tern_run_close(tern_engine *e);
double tern_now(void);

/* A progress line on a terminal (stderr) for runs over a second: "what: done/total (p%) t s". */
typedef struct tern_progress_line {
    double t0, last;
    bool shown;
} tern_progress_line;
void tern_progress(tern_progress_line *p, const char *what, int64_t done, int64_t total);

#endif
