/* journal.h: the supervisor's record of every accepted request that has not finished: its
 * prompt, sampling parameters, budget and stop ids, the tokens generated so far and how much of
 * its text the client already has. After the engine job dies the journal gives, for each
 * request, the resubmission that continues it exactly (engine.h `resumed`: the prompt plus the
 * generated tokens, the same seed, the rest of the budget; counter-based sampling makes the
 * continuation bitwise the unfaulted one), and where its text resumes so nothing is sent twice.
 *
 * Threads: one lock; any thread may call. Bounded: at most max_requests entries of at most
 * max_tokens tokens (prompt + generated) each, checked on add.
 */
#ifndef TERN_SUPERVISE_JOURNAL_H
#define TERN_SUPERVISE_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ternpipe/sampler.h"
#include "ternpipe/status.h"

typedef struct tern_journal tern_journal;

typedef struct tern_jrequest {
    uint64_t id;
    const int32_t *prompt;
    int32_t n_prompt;
    tern_sampling sampling; /* logit_bias copied */
    int32_t max_new;
    int32_t stop[4], n_stop;
    const char *response_format; /* copied (NULL: none) */
} tern_jrequest;

/* What a replay submits (views into the journal, valid until the next journal call). */
typedef struct tern_jreplay {
    uint64_t id;
    const int32_t *ids; /* prompt then the tokens generated so far */
    int32_t n_ids, resumed, max_new;
    const tern_sampling *sampling;
    const int32_t *stop;
    int32_t n_stop;
    const char *response_format;
    uint64_t text_sent; /* bytes of text the client has: resume the stream after them */
} tern_jreplay;

tern_code tern_journal_create(tern_journal **out, int32_t max_requests, int32_t max_tokens,
                              tern_status *st);
void tern_journal_free(tern_journal *j);
/* TERN_EBUSY when full, TERN_ERANGE when prompt + max_new exceeds max_tokens, TERN_EINVAL for a
 * duplicate id. */
tern_code tern_journal_add(tern_journal *j, const tern_jrequest *r, tern_status *st);
/* A token drawn for id (in order); TERN_ERANGE past its budget, TERN_EINVAL for an unknown id. */
tern_code tern_journal_token(tern_journal *j, uint64_t id, int32_t token, tern_status *st);
/* The client has `bytes` bytes of the request's text now (monotonic). */
void tern_journal_sent(tern_journal *j, uint64_t id, uint64_t bytes);
void tern_journal_finish(tern_journal *j, uint64_t id);
int32_t tern_journal_count(tern_journal *j);
/* Calls fn for every request still open, oldest first, with its resubmission; returns the
 * count. A request whose budget is spent is still listed (max_new 0: it only needs its Done). */
int32_t tern_journal_replay(tern_journal *j, void (*fn)(void *user, const tern_jreplay *r),
                            void *user);
/* The same for one request (fn is called under the journal's lock: it must not call the
 * journal); false when id is not open. */
bool tern_journal_replay_one(tern_journal *j, uint64_t id,
                             void (*fn)(void *user, const tern_jreplay *r), void *user);

#endif
