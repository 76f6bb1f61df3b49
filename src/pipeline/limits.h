/* limits.h: every size of the pipeline, computed once at open from the options, the model and
 * the rank count (DESIGN.md section 5: "every limit one named constant or one computed
 * struct"). Rank 0 computes it and sends the options that decide it in the Hello, so every
 * rank sizes its buffers alike; control messages from other ranks are checked against it.
 */
#ifndef TERN_PIPELINE_LIMITS_H
#define TERN_PIPELINE_LIMITS_H

#include <stddef.h>
#include <stdint.h>

#include "ternpipe/status.h"

#define TERN_MAX_SEQS_LIMIT 4096      /* --max-seqs */
#define TERN_BATCH_TOKENS_LIMIT 65536 /* --batch */
#define TERN_INFLIGHT_LIMIT 64        /* --inflight */
#define TERN_FULL_ROWS 64             /* rows of full logits per micro-batch (logits, retries) */
#define TERN_DEFAULT_BATCH 512
#define TERN_DEFAULT_SEQS 64
#define TERN_DEFAULT_KV_MB 2048
#define TERN_SPEC_MAX_DRAFT 8 /* draft tokens a speculative decode step verifies at most */

typedef struct tern_limits {
    int32_t n_ranks;
    int32_t n_vocab, d, n_layer;
    int32_t max_seqs;     /* KV slots of running sequences */
    int32_t cache_slots;  /* KV slots of the prefix cache after them (= max_seqs): [max_seqs,
                             max_seqs + cache_slots) hold finished sequences' blocks */
    int32_t batch_tokens; /* token budget of one micro-batch */
    int32_t n_ctx;        /* positions per sequence */
    int32_t kv_blocks;    /* per rank */
    int32_t inflight;     /* micro-batches in flight */
    int32_t queue_cap;    /* requests waiting for a slot */
    int32_t step_entries; /* entries of one step: releases (<= max_seqs + cache_slots: finished,
                             saved and evicted) + sequences */
    int32_t head_rows;    /* rows of a step that need the head (<= batch_tokens) */
    int32_t sample_rows;  /* sampled rows of a step */
    int32_t full_rows;    /* rows of a step whose full logits go to rank 0 */
    int32_t pen_ids;      /* penalty ids carried by one step (>= one row's whole window) */
    int32_t pen_row;      /* penalty ids of one row (the window, at most n_ctx) */
    size_t ctl_bytes;     /* a packed step message, worst case */
    size_t arena_bytes;   /* unpacking it */
} tern_limits;

/* Fills l; refuses options it cannot support with a message naming the limit. */
tern_code tern_limits_compute(tern_limits *l, int32_t n_ranks, int32_t n_vocab, int32_t d,
                              int32_t n_layer, int32_t max_seqs, int32_t batch_tokens,
                              int32_t n_ctx, int32_t kv_blocks, int32_t inflight, tern_status *st);

#endif
