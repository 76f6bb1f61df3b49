/* limits.c: see limits.h. */
#include "pipeline/limits.h"

#include <string.h>

#include "ternpipe/sampler.h"

tern_code tern_limits_compute(tern_limits *l, int32_t n_ranks, int32_t n_vocab, int32_t d,
                              int32_t n_layer, int32_t max_seqs, int32_t batch_tokens,
                              int32_t n_ctx, int32_t kv_blocks, int32_t inflight, tern_status *st)
{
    memset(l, 0, sizeof *l);
    if (max_seqs < 1 || max_seqs > TERN_MAX_SEQS_LIMIT)
        return tern_status_set(st, TERN_EINVAL, "--max-seqs: got %d, expected 1..%d", max_seqs,
                               TERN_MAX_SEQS_LIMIT);
    if (batch_tokens < 1 || batch_tokens > TERN_BATCH_TOKENS_LIMIT)
        return tern_status_set(st, TERN_EINVAL, "--batch: got %d, expected 1..%d", batch_tokens,
                               TERN_BATCH_TOKENS_LIMIT);
    if (inflight < 1 || inflight > TERN_INFLIGHT_LIMIT)
        return tern_status_set(st, TERN_EINVAL, "--inflight: got %d, expected 1..%d", inflight,
                               TERN_INFLIGHT_LIMIT);
    if (n_ctx < 1 || kv_blocks < 1 || n_ranks < 1 || n_vocab < 1 || d < 1)
        return tern_status_set(st, TERN_EINVAL,
                               "limits: got ctx %d, KV blocks %d, ranks %d, expected >= 1", n_ctx,
                               kv_blocks, n_ranks);
    l->n_ranks = n_ranks, l->n_vocab = n_vocab, l->d = d, l->n_layer = n_layer;
    l->max_seqs = max_seqs, l->batch_tokens = batch_tokens, l->n_ctx = n_ctx;
    l->cache_slots = max_seqs;
    l->kv_blocks = kv_blocks, l->inflight = inflight;
    l->queue_cap = 4 * max_seqs + 64;
    /* a sequence is in at most one micro-batch, with at least one token */
    int32_t seqs = max_seqs < batch_tokens ? max_seqs : batch_tokens;
    l->step_entries = max_seqs + l->cache_slots + seqs;
    l->head_rows = batch_tokens;
    /* sampled rows: one per sequence, or the last token and its drafts when speculative */
    int64_t rows = (int64_t)seqs * (1 + TERN_SPEC_MAX_DRAFT);
    l->sample_rows = (int32_t)(rows < batch_tokens ? rows : batch_tokens);
    l->full_rows = TERN_FULL_ROWS < batch_tokens ? TERN_FULL_ROWS : batch_tokens;
    /* a row's adjusted ids: its window or history, and the logit biases; distinct ids */
    int64_t row = (int64_t)n_ctx + TERN_MAX_LOGIT_BIAS;
    l->pen_row = (int32_t)(row < n_vocab ? row : n_vocab);
    /* a step carries the windows of its sampled rows up to this many ids; the scheduler
     * defers a row that does not fit (one whole window always fits) */
    int64_t pen = (int64_t)seqs * 64;
    if (pen < l->pen_row) pen = l->pen_row;
    if (pen > (1 << 20)) pen = 1 << 20 > l->pen_row ? 1 << 20 : l->pen_row;
    l->pen_ids = (int32_t)pen;
    /* protobuf worst cases: a SeqEntry is at most ~100 bytes of varints, doubles and tags;
     * each adjusted id at most 5 bytes and 4 for its addition; per-rank stats 3 x 10 bytes */
    l->ctl_bytes =
        256 + (size_t)l->step_entries * 112 + (size_t)l->pen_ids * 5 + (size_t)n_ranks * 40;
    /* unpacked: per entry the struct and its pointer, per adjusted id 8 bytes, per rank 3 x 8
     * bytes, alignment slack */
    l->arena_bytes = 4096 + (size_t)l->step_entries * (128 + 16) + (size_t)l->pen_ids * 8 +
                     (size_t)n_ranks * 32 + 64 * 16;
    return TERN_OK;
}
