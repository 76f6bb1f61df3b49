/* sampler.h: next-token choice from the LM head's logits (rank 0, DESIGN.md section 2, step 5).
 *
 * Contract: a tern_sampler owns its parameters, its seeded generator and all scratch (sized for
 * n_vocab at creation); tern_sampler_reset() and tern_sampler_sample() never allocate. One
 * sampler per sequence, used by one thread at a time. The caller's logits are never modified.
 *
 * Order (llama.cpp's common chain, temperature placed before top-p/min-p):
 *   repetition penalty on the last repeat_last_n tokens of history (logit > 0 ? logit / penalty
 *   : logit * penalty, once per distinct token)
 *   -> temperature <= 0: argmax, lowest id on ties (the generator is not used)
 *   -> top-k -> softmax(logits / temperature) -> top-p (smallest most-likely set whose mass is
 *   >= top_p, at least one token) -> min-p (drop p < min_p * p_max) -> renormalize -> draw.
 * Same parameters, seed, logits and history give the same tokens.
 */
#ifndef TERNPIPE_SAMPLER_H
#define TERNPIPE_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#include "ternpipe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tern_sampling {
    float temperature;     /* <= 0: greedy */
    int32_t top_k;         /* 0: off */
    float top_p;           /* 1: off; 0 < top_p <= 1 */
    float min_p;           /* 0: off; 0 <= min_p <= 1 */
    float repeat_penalty;  /* 1: off; > 0 */
    int32_t repeat_last_n; /* tokens of history penalized; 0: none, -1: all */
    uint64_t seed;
} tern_sampling;

/* Greedy: temperature 0, top_k 0, top_p 1, min_p 0, repeat_penalty 1, repeat_last_n 64, seed 0. */
void tern_sampling_default(tern_sampling *p);
/* Range checks for parameters from users, e.g. "top_p: got 1.5, expected 0 < top_p <= 1". */
tern_code tern_sampling_validate(const tern_sampling *p, tern_status *st);

typedef struct tern_sampler tern_sampler;

/* Validates p and allocates all scratch for n_vocab tokens. */
tern_code tern_sampler_create(tern_sampler **out, const tern_sampling *p, int32_t n_vocab,
                              tern_status *st);
void tern_sampler_free(tern_sampler *s);
/* Reuse for a new sequence: new parameters (already validated), generator reseeded. */
void tern_sampler_reset(tern_sampler *s, const tern_sampling *p);
/* logits: [n_vocab]. history: the sequence's tokens so far (prompt and generated); ids outside
 * [0, n_vocab) are ignored. NaN logits count as -inf. */
int32_t tern_sampler_sample(tern_sampler *s, const float *logits, const int32_t *history,
                            size_t n_history);

#ifdef __cplusplus
}
#endif
#endif
