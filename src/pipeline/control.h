/* control.h: control messages (proto/ternpipe.proto) to and from plain C structs. The only
 * protobuf-c user. Unpacking uses a caller-owned arena, so the per-step path never calls
 * malloc. A message from another rank is input like a file: tern_ctl_unpack_step checks every
 * count, slot, position and flag against the limits before anyone uses it.
 */
#ifndef TERN_PIPELINE_CONTROL_H
#define TERN_PIPELINE_CONTROL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pipeline/limits.h"
#include "pipeline/plan.h"
#include "ternpipe/sampler.h"
#include "ternpipe/status.h"

#define TERN_PROTOCOL_VERSION 3

enum {
    TERN_SEQ_NEW = 1,       /* first tokens: the KV slot starts empty */
    TERN_SEQ_FINISHED = 2,  /* release entry (n_tokens 0) */
    TERN_SEQ_CANCELLED = 4, /* release entry, the client went away */
    TERN_SEQ_SAMPLE = 8,    /* the entry's last row is sampled */
    TERN_SEQ_FULL = 16,     /* its head rows' full logits go to rank 0 */
    TERN_SEQ_SPEC = 32,     /* speculative: every row is sampled (the last token + drafts) */
    TERN_SEQ_SAVE = 64,     /* release entry: the slot's blocks move to prefix-cache slot src */
    TERN_SEQ_KEEP = 128,    /* cache slot src also holds the slot's first n_share blocks (a
                               running sequence's prompt, for requests waiting on it) */
    TERN_SEQ_FLAGS_ALL = 255
};

typedef struct tern_hello {
    uint32_t protocol_version;
    uint64_t model_checksum;
    uint32_t n_layers;
    int32_t n_ranks;
    uint32_t batch_tokens, max_seqs, n_ctx, kv_blocks, inflight;
    tern_plan *plan; /* caller's, tern_plan_init'ed for n_ranks */
} tern_hello;

typedef struct tern_step_seq {
    int32_t slot, pos0, n_tokens;
    uint32_t flags;
    int32_t n_head; /* trailing rows that need the head */
    /* SEQ_SAMPLE */
    float temperature, penalty;
    int32_t n_cand, n_logprobs;
    bool gumbel;
    uint64_t seed;
    int32_t n_pen; /* its adjusted ids: the next n_pen of tern_step.pen_ids */
    /* prefix cache: SEQ_SAVE: the cache slot its blocks go to; SEQ_NEW with n_share > 0: the
     * cache slot whose first n_share blocks it starts with (pos0 = n_share * TERN_KV_BLOCK) */
    int32_t src, n_share;
} tern_step_seq;

typedef struct tern_step {
    uint64_t id;
    int32_t n_seqs;
    tern_step_seq *seqs; /* [cap_seqs], caller-owned */
    int32_t cap_seqs;
    int32_t n_tokens;
    /* derived by pack/unpack from the entries */
    int32_t n_head, n_sample, n_full;
    tern_adjust *pen_ids; /* [cap_pen], caller-owned: the sampled rows' adjusted ids */
    int32_t n_pen, cap_pen;
    double sent_at;
    int32_t n_hops, cap_hops; /* per-rank arrays below: [cap_hops] = n_ranks, caller-owned */
    double *hop_at, *busy_s;
    uint64_t *peak_rss;
    int shutdown;
} tern_step;

/* Packs into buf; returns the size, 0 when it does not fit. */
size_t tern_ctl_pack_hello(const tern_hello *h, uint8_t *buf, size_t cap);
size_t tern_ctl_pack_step(const tern_step *s, uint8_t *buf, size_t cap);
/* Unpacks a Hello into h (h->plan initialised by the caller for its rank count). */
tern_code tern_ctl_unpack_hello(const uint8_t *buf, size_t n, tern_hello *h, tern_status *st);
/* Unpacks and validates a step against lim: slots < max_seqs, positions within n_ctx, token
 * counts summing to n_tokens <= batch_tokens, head rows within entries and limits, known flags,
 * penalty ids < n_vocab, at most n_ranks hops. */
tern_code tern_ctl_unpack_step(const uint8_t *buf, size_t n, const tern_limits *lim, tern_step *s,
                               void *arena, size_t arena_bytes, tern_status *st);
/* Derives n_head/n_sample/n_full of s from its entries (the sender's side). */
void tern_ctl_step_totals(tern_step *s);

#endif
