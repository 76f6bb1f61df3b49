/* engine-internal.h: the engine's state, split by who touches it (as Lua's lstate.h splits global
 * and per-thread state):
 * - tern_engine_fixed: decided at open (handshake, plan, limits, model) and never changed; read
 *   by every file of the pipeline.
 * - the scheduler (scheduler.h): rank 0's sequences; its inbox is the only state other threads
 *   touch (under its lock).
 * - tern_coord (coordinator.c): rank 0's engine-thread state: micro-batches in flight, return
 *   buffers, stats.
 * - a worker's buffers live in worker.c's loop.
 * - tern_stage (stage.c): the head work every rank with head rows does on a step.
 */
#ifndef TERN_PIPELINE_ENGINE_INTERNAL_H
#define TERN_PIPELINE_ENGINE_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "pipeline/comm.h"
#include "pipeline/control.h"
#include "pipeline/limits.h"
#include "pipeline/plan.h"
#include "pipeline/scheduler.h"
#include "ternpipe/engine.h"
#include "ternpipe/gguf.h"
#include "ternpipe/runtime.h"
#include "ternpipe/sampler.h"

#define TERN_HEAD_CHUNK 64 /* head rows computed at once (bounds the logits scratch) */

/* The step deadline on rank 0 (coordinator.c step_bound): a micro-batch in flight longer than
 * FACTOR times the slowest recent round trip per token (times its tokens) has met a hung or
 * dead rank. Never below FLOOR_S (noise: scheduling, page faults, a loaded host), never above
 * the ceiling: --step-timeout, or CEIL_S, which also bounds steps before one was measured. */
#define TERN_STEP_TIMEOUT_FLOOR_S 5.0
#define TERN_STEP_TIMEOUT_CEIL_S 120.0
#define TERN_STEP_TIMEOUT_FACTOR 20.0
#define TERN_STEP_RATE_DECAY 0.999 /* per step: an old slow step fades out */
#define TERN_ENGINE_ABORT_CODE 3   /* exit status of every rank after a failed engine */
/* The longest one tern_coord_step waits for a return (how late the serving loop sees a stop) */
#define TERN_COORD_SLICE_S 0.05

typedef struct tern_engine_fixed {
    tern_engine_opts o;
    int rank, n_ranks;
    tern_limits lim;
    tern_plan plan;
    int last_layer; /* rank that runs the last layer and the final norm */
    int32_t v0, v1; /* this rank's head rows */
    tern_gguf *g;
    tern_topo *topo;
    tern_pool *pool;
    tern_model *m;
    tern_ctx *c;
    const tern_hparams *hp;
} tern_engine_fixed;

typedef struct tern_stage {
    int32_t *rows;           /* [head_rows] index in the activations of each head row */
    float *logits;           /* [TERN_HEAD_CHUNK][v1 - v0] */
    tern_row_params *params; /* [sample_rows] */
} tern_stage;

tern_code tern_stage_init(tern_stage *s, const tern_engine_fixed *f, tern_status *st);
void tern_stage_free(tern_stage *s);
/* The rows of x [n_tokens][d] that need the head, in entry order. */
int32_t tern_stage_head_rows(const tern_step *step, int32_t *rows);
/* What an entry does to the KV slots before the forward pass, on every rank in entry order:
 * a release (finished, cancelled, an evicted cache slot), a save into the prefix cache, a new
 * sequence (empty, or starting with shared cache blocks). A refusal is a broken invariant. */
tern_code tern_stage_apply_kv(tern_ctx *c, const tern_step_seq *q, tern_status *st);
/* The head ranks' sampling parameters of each sampled entry (pen_ids point into step). */
void tern_stage_params(const tern_step *step, tern_row_params *p);
/* This rank's head slice over the normed head rows hx [n_head][d]: folds each sampled row into
 * sums[k] and copies full rows into full + j * full_ld (+ col0). */
void tern_stage_head(tern_stage *s, const tern_engine_fixed *f, const tern_step *step,
                     const float *hx, tern_row_sum *sums, float *full, size_t full_ld, size_t col0);
/* Peak resident set of this process in bytes. */
uint64_t tern_peak_rss(void);

typedef struct tern_coord tern_coord;
tern_code tern_coord_create(tern_coord **out, tern_engine_fixed *f, tern_sched *sched,
                            tern_status *st);
/* Drains what is in flight and stops every worker. */
void tern_coord_shutdown(tern_coord *c);
void tern_coord_free(tern_coord *c);
tern_code tern_coord_step(tern_coord *c, bool *idle, tern_status *st);
/* True once a step missed its deadline (st, optional, gets why): nothing more is sent. */
bool tern_coord_failed(const tern_coord *c, tern_status *st);
void tern_coord_stats(tern_coord *c, tern_engine_stats *s);

/* A worker's loop: serves steps until the shutdown step has passed. */
tern_code tern_worker_run(tern_engine_fixed *f, tern_status *st);

#endif
