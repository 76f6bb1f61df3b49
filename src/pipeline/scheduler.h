/* scheduler.h: rank 0's sequences, admission, micro-batch building, token budgets and the only
 * KV accounting of the pipeline. No MPI, no model: unit-tested directly, and the piece a
 * simulator drives.
 *
 * Threads: tern_sched_submit and tern_sched_cancel may be called from any thread (they touch
 * the locked inbox only); everything else, and every request callback, runs on the engine
 * thread.
 * Invariants:
 * - A live sequence owns one KV slot and is in at most one micro-batch at a time.
 * - KV blocks for a sequence's whole budget (prompt + max_new) are reserved on admission, so
 *   no stage can run out mid-flight; admission is FIFO (no overtaking).
 * - Releases of finished or cancelled slots ride in the next built step, before its token
 *   entries. A slot may be reused at once: its old sequence has come back from every stage,
 *   and the new one's first entry (NEW) follows the release in pipeline order.
 * - Decodes go first in a micro-batch, then prefill chunks, and while a prompt waits at least
 *   TERN_SCHED_PREFILL_SHARE of the budget is left for prefill: neither starves the other.
 *   Round robin: each micro-batch starts after the last sequence the previous one took, so a
 *   tight budget serves every sequence in turn.
 * - Exact speculative decoding for few streams: a decode step may feed the last token and up to
 *   TERN_SPEC_MAX_DRAFT drafts found by n-gram lookup in the sequence's own tokens, every row
 *   sampled; drafts are kept while each drawn token equals them. Tokens are bitwise those of
 *   plain decoding (the logits of a position do not depend on the batch, and draws are
 *   counter-based); the draft length adapts to the acceptance, and failing drafts back off.
 * - A sequence ends as soon as its last token is drawn; that token runs through the layers
 *   only for requests that want the logits of every position.
 * - Nothing allocates after tern_sched_create except the inbox entries of submit.
 */
#ifndef TERN_PIPELINE_SCHEDULER_H
#define TERN_PIPELINE_SCHEDULER_H

#include <stdbool.h>
#include <stdint.h>

#include "pipeline/control.h"
#include "pipeline/limits.h"
#include "ternpipe/engine.h"
#include "ternpipe/grammar.h"
#include "ternpipe/sampler.h"

#define TERN_SCHED_PREFILL_SHARE 8 /* 1/8 of a micro-batch's budget kept for waiting prompts */
#define TERN_SPEC_SEQS 4      /* speculative decoding only while at most this many sequences run */
#define TERN_SPEC_NGRAM 3     /* the longest suffix the draft lookup matches */
#define TERN_SPEC_NGRAM_MIN 2 /* and the shortest (one token predicts too poorly) */

typedef struct tern_sched tern_sched;

tern_code tern_sched_create(tern_sched **out, const tern_limits *lim, tern_status *st);
void tern_sched_free(tern_sched *s); /* queued and running requests get no callback */

/* Queues a request (validated here); TERN_EBUSY when the queue is full, TERN_ERANGE when
 * prompt + max_new exceeds the context or the KV pool. */
tern_code tern_sched_submit(tern_sched *s, const tern_request *r, int64_t *id, tern_status *st);
void tern_sched_cancel(tern_sched *s, int64_t id);
/* Blocks up to timeout_ms until the inbox has news. */
void tern_sched_wait(tern_sched *s, int timeout_ms);

/* Moves submissions and cancels in, finishes cancelled waiting requests, admits FIFO. */
void tern_sched_admit(tern_sched *s);
/* Builds a micro-batch for one of free_mbs micro-batches still to launch: releases first, then
 * decodes and prefill chunks within the token budget; ids [batch_tokens] get its tokens.
 * Returns whether the step has entries. */
bool tern_sched_build(tern_sched *s, int32_t free_mbs, tern_step *step, int32_t *ids);
/* Draft tokens per speculative step at most (0 turns speculative decoding off; default
 * TERN_SPEC_MAX_DRAFT). */
void tern_sched_set_spec(tern_sched *s, int32_t max_drafts);
/* The vocabulary constrained output masks with (set once before the first submit; NULL: a
 * request with response_format is refused). */
void tern_sched_set_vocab(tern_sched *s, const tern_vocab_index *v);
const tern_vocab_index *tern_sched_vocab(const tern_sched *s);
/* The constraint of the sequence in slot (NULL: none): its rows come back in full, are masked
 * with it and drawn from the full row. */
tern_grammar *tern_sched_grammar(const tern_sched *s, int32_t slot);
/* Pending releases (an idle engine sends them in an empty step). */
int32_t tern_sched_pending_releases(const tern_sched *s);

/* Results of a completed step: for its k-th sampled entry, picks[k] and resolved[k] (false:
 * the row must be drawn again from its full logits; the sequence retries its last token). */
void tern_sched_complete(tern_sched *s, const tern_step *step, const tern_pick *picks,
                         const bool *resolved);
/* The request of a step entry (for the sampling parameters and logits callbacks). */
const tern_request *tern_sched_request(const tern_sched *s, int32_t slot);
/* Delivers a full logits row of a step entry (all_logits requests; each position once). */
void tern_sched_deliver_logits(tern_sched *s, int32_t slot, int32_t pos, const float *logits);

typedef struct tern_sched_stats {
    int32_t running, queued, kv_reserved;
    int64_t tokens_prompt, tokens_generated, retries, drafted, accepted;
    int64_t prefix_hits, prefix_misses, prefix_evictions, prefix_tokens; /* tokens not prefilled */
    int32_t kv_cached;
} tern_sched_stats;
/* The prefix cache (off until turned on; the engine's default is on): finished sequences' whole KV
 * blocks are kept in the cache slots (lim.cache_slots, least recently used evicted first, and
 * whenever admission needs the room), and a prompt that starts with the same tokens shares them
 * instead of prefilling. */
void tern_sched_set_prefix_cache(tern_sched *s, bool on);
void tern_sched_stats_get(tern_sched *s, tern_sched_stats *out);
bool tern_sched_idle(tern_sched *s);

#endif
