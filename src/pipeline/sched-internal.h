/* sched-internal.h: the scheduler's state, shared by scheduler.c (admission, micro-batches,
 * completion) and prefix-cache.c (the prefix cache's entries, sharing and eviction). Nothing
 * outside src/pipeline includes it. */
#ifndef TERN_PIPELINE_SCHED_INTERNAL_H
#define TERN_PIPELINE_SCHED_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "pipeline/scheduler.h"
#include "ternpipe/model.h"

typedef struct pending {
    struct pending *next;
    int64_t id;
    tern_request req;
    int32_t *prompt;       /* owned copy */
    tern_logit_bias *bias; /* owned copy of req.sampling.logit_bias (or NULL) */
    tern_grammar *gram;    /* response_format (or NULL), at the state after the resumed tokens */
} pending;

typedef struct seq {
    bool used;
    int64_t id;
    tern_request req;
    int32_t *tokens;       /* [n_ctx]: prompt then generated */
    tern_logit_bias *bias; /* owned, from the pending request */
    tern_grammar *gram;    /* owned: constrained output; its rows are sampled from full logits */
    int32_t n_tokens, n_past, n_gen, kv_blocks;
    int32_t n_logits; /* positions whose logits were delivered (all_logits) */
    bool inflight, cancelled, fresh, stopped, retry;
    /* speculative decoding: the drafts in flight, the adaptive draft length, and how many
     * steps to wait after drafts that failed */
    int32_t draft[TERN_SPEC_MAX_DRAFT], n_draft;
    int32_t spec_k, spec_miss, spec_wait;
    int32_t shared_from; /* the prefix-cache entry whose blocks it started with, or -1 */
} seq;

/* A prefix-cache entry: the KV blocks of a finished sequence, kept in cache slot max_seqs + i
 * on every rank, for a later prompt that starts with the same tokens. */
typedef struct centry {
    bool used;
    int32_t *tokens; /* [n_ctx] */
    int32_t n_tok;   /* tokens whose KV it holds in whole blocks (a multiple of TERN_KV_BLOCK) */
    int32_t phys;    /* blocks it holds (KV accounting) */
    uint64_t last;   /* LRU clock */
    int32_t pins;    /* running sequences sharing its blocks: it stays while they run */
} centry;

struct tern_sched {
    tern_limits lim;
    const tern_vocab_index *vocab; /* for constrained output (the engine's; NULL: none) */
    /* the inbox: any thread, under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pending *inbox_head, *inbox_tail;
    int32_t inbox_n;
    int64_t *cancels;
    int32_t n_cancels, cap_cancels;
    int64_t next_id;
    /* engine thread only */
    pending *wait_head, *wait_tail;
    int32_t wait_n; /* read under mu by stats */
    seq *seqs;      /* [max_seqs] */
    int32_t n_running, kv_reserved;
    tern_step_seq *releases; /* [cap_releases] */
    int32_t n_releases, cap_releases;
    centry *cache; /* [lim.cache_slots] */
    bool cache_on;
    int32_t kv_cached; /* blocks the cache holds (over-counted where entries share blocks) */
    uint64_t clock;
    int64_t pc_hits, pc_misses, pc_evictions, pc_tokens;
    int32_t rot;
    int64_t tok_prompt, tok_gen, retries, drafted, accepted;
    int32_t spec_max;         /* draft tokens per step at most; 0: off */
    tern_adjust *adj_scratch; /* [2 * n_ctx + TERN_MAX_LOGIT_BIAS + 1] */
};

static inline int32_t blocks_for(int32_t n_pos)
{
    return (n_pos + TERN_KV_BLOCK - 1) / TERN_KV_BLOCK;
}

/* prefix-cache.c (every function a no-op or -1 while the cache is off) */
bool tern_pc_release_room(const tern_sched *s);
void tern_pc_evict(tern_sched *s, int32_t i);
bool tern_pc_evict_lru(tern_sched *s, int32_t keep);
/* a finished sequence's whole blocks into an entry (the SEQ_SAVE release is the caller's) */
int32_t tern_pc_save(tern_sched *s, const seq *q);
/* the entry sharing the most whole blocks with r's prompt, or -1 (*blocks: how many) */
int32_t tern_pc_match(const tern_sched *s, const tern_request *r, int32_t *blocks);
/* a running sequence prefilling a prompt r's starts with (r waits for it) */
bool tern_pc_leader(const tern_sched *s, const tern_request *r, int32_t cached);
/* q has prefilled its prompt: kept for a waiting request that starts with it */
void tern_pc_keep(tern_sched *s, seq *q);
/* a running sequence that prefilled more of r's prompt than the cache holds gives it blocks */
void tern_pc_keep_running(tern_sched *s, const tern_request *r, int32_t cached);

#endif
