/* engine.h: the pipeline engine: one model served by N MPI ranks (DESIGN.md sections 1-3).
 *
 * Rank 0 (coordinator) owns the sequences, the scheduler, embedding lookup and the final choice
 * of each token; ranks 1..N-1 (workers) each own a contiguous slice of layers and its KV cache
 * and, after the last layer, slices of the LM head's rows (src/pipeline/plan.h). With one rank,
 * rank 0 runs every layer and the whole head itself through the same code.
 *
 * Collectives: tern_dist_init, tern_engine_open and tern_engine_close are called by every
 * rank. On a worker rank tern_engine_open serves until rank 0 closes the engine and then
 * returns with *out == NULL.
 * Threads: tern_engine_submit and tern_engine_cancel may be called from any thread (they only
 * touch a locked inbox); everything else, and every callback, runs on the thread that calls
 * tern_engine_step/run (the only thread that calls MPI).
 */
#ifndef TERNPIPE_ENGINE_H
#define TERNPIPE_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "ternpipe/model.h"
#include "ternpipe/sampler.h"
#include "ternpipe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* MPI set-up; harmless without mpirun (one rank). */
tern_code tern_dist_init(int *argc, char ***argv, int *rank, int *size, tern_status *st);
void tern_dist_finalize(void);
/* Aborts every rank (broken invariant only). */
void tern_dist_abort(int code);

typedef struct tern_engine_opts {
    const char *model_path;
    int n_threads; /* per rank; <= 0: one per core of the rank's binding */
    tern_head_type head_type;
    int32_t batch_tokens;  /* token budget of one micro-batch (chunked prefill); 0 = 512 */
    int32_t max_seqs;      /* concurrent sequences (KV slots) */
    int32_t n_ctx;         /* positions per sequence; 0 = the model's */
    int32_t kv_blocks;     /* per rank; 0 = max_seqs full contexts within kv_mem_mb */
    int32_t kv_mem_mb;     /* KV budget for the default kv_blocks; 0 = 2048 */
    const char *split;     /* plan.h: "auto" (default), "even" or "L1,L2,...", optionally
                              ":even" or ":h1,h2,..." for the head rows */
    int32_t inflight;      /* micro-batches in flight; 0 = number of ranks */
    int32_t spec_drafts;   /* speculative decoding: draft tokens per step at most; 0 = the
                              default (8), -1 = off */
    double step_timeout_s; /* ceiling of the step deadline (a hung rank becomes an error);
                              0 = 120 s; the deadline adapts below it, to at least 5 s */
    bool verbose;
} tern_engine_opts;

typedef enum tern_finish {
    TERN_FINISH_STOP = 0, /* a stop token */
    TERN_FINISH_LENGTH,   /* max_tokens or the context */
    TERN_FINISH_CANCELLED,
    TERN_FINISH_ERROR,
    TERN_FINISH_COUNT
} tern_finish;

typedef struct tern_request {
    const int32_t *prompt; /* copied at submit */
    int32_t n_prompt;
    tern_sampling sampling;
    int32_t max_new; /* new tokens to generate (0: prompt only, e.g. logits) */
    bool all_logits; /* deliver the logits of every position (prompt and generated) */
    int32_t stop[4]; /* stop token ids (EOS, EOT): generation ends there, unemitted */
    int32_t n_stop;
    /* callbacks on the engine thread */
    void (*on_logits)(void *user, int32_t pos, const float *logits); /* with all_logits */
    void (*on_token)(void *user, int32_t token);
    /* with sampling.n_logprobs > 0: each generated token's pick, just before on_token */
    void (*on_logprobs)(void *user, const tern_pick *pick);
    void (*on_done)(void *user, tern_finish why, const char *error);
    void *user;
} tern_request;

typedef struct tern_engine tern_engine;

tern_code tern_engine_open(tern_engine **out, const tern_engine_opts *o, tern_status *st);
/* Rank 0: stops every worker and frees everything. */
void tern_engine_close(tern_engine *e);

/* Queues a request; *id identifies it for cancel. TERN_EBUSY when the queue is full,
 * TERN_ERANGE when prompt + max_new exceeds the context. */
tern_code tern_engine_submit(tern_engine *e, const tern_request *r, int64_t *id, tern_status *st);
void tern_engine_cancel(tern_engine *e, int64_t id);
/* One scheduling iteration: admits queued requests, launches micro-batches, completes those
 * that came back; it waits for the pipeline a short while at most (50 ms). Returns TERN_OK;
 * *idle says nothing is queued or running.
 * A micro-batch in flight past its step deadline (opts.step_timeout_s: a rank hung or died)
 * fails the engine: this and every later call return TERN_EIO with a one-line message, and
 * no callback comes any more for the requests the engine held (the caller answers them,
 * on_done included, since it knows them). tern_engine_close of a failed engine ends every rank
 * of the job (MPI_Abort) instead of the shutdown step that would never come back. */
tern_code tern_engine_step(tern_engine *e, bool *idle, tern_status *st);
/* Blocks up to timeout_ms until a request or cancel arrives (for an idle serving loop). */
void tern_engine_wait(tern_engine *e, int timeout_ms);
/* Steps until idle. */
tern_code tern_engine_run(tern_engine *e, tern_status *st);

const tern_hparams *tern_engine_hparams(const tern_engine *e);
const tern_gguf *tern_engine_gguf(const tern_engine *e); /* rank 0's open model file */
int32_t tern_engine_n_ctx(const tern_engine *e);
int32_t tern_engine_max_seqs(const tern_engine *e);
/* weights read per decoded token by the whole pipeline (the bandwidth roofline) */
double tern_engine_bytes_per_token(const tern_engine *e);
int tern_engine_n_ranks(const tern_engine *e);

/* Collective: ranks 0 and 1 ping-pong messages of floats[k] fp32 values through the pipeline's
 * transport (the path of activations); rank 0 gets the least one-way time of reps trips per
 * size in one_way_s. Returns n_sizes on rank 0, 0 elsewhere or with one rank, -1 without memory.
 * Call after tern_dist_init, outside an open engine. */
int tern_hop_probe(const size_t *floats, int n_sizes, int reps, double *one_way_s);

/* This process's rank as its MPI launcher (mpirun, PMIx, PMI) announced it in the environment,
 * readable before the engine starts MPI; 0 when no launcher started it. *launched (optional)
 * says whether one did. */
int tern_launcher_rank(bool *launched);

typedef struct tern_rank_stats {
    double busy_s;     /* cumulative compute seconds */
    uint64_t peak_rss; /* bytes (workers: as of their last step) */
    int32_t kv_used, kv_total;
    int32_t layer_start, layer_end, vocab_start, vocab_end; /* the plan */
    double predicted; /* the plan's cost of this stage (bytes per token / relative speed) */
} tern_rank_stats;

typedef struct tern_engine_stats {
    int32_t n_ranks;
    int32_t running, queued;
    int64_t steps, tokens_prompt, tokens_generated, retries;
    double wall_s;
    tern_rank_stats *ranks; /* caller's array of cap_ranks (tern_engine_n_ranks) entries */
    int32_t cap_ranks;
    double hop_p50_ms, hop_p99_ms;
} tern_engine_stats;
/* Collects stats into s (s->ranks and s->cap_ranks set by the caller; the rest is filled). Call
 * on the engine thread. */
void tern_engine_stats_get(tern_engine *e, tern_engine_stats *s);

#ifdef __cplusplus
}
#endif
#endif
