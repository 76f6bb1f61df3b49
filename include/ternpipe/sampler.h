/* sampler.h: the next-token choice, split across the ranks that hold slices of the LM head
 * (DESIGN.md section 2, steps 5-6).
 *
 * The method (why it is exact for any split):
 * - Every random number is counter-based: tern_sample_uniform(seed, pos, id) hashes the
 *   request's seed, the position of the token being drawn and a vocabulary id (kernels.h's
 *   tern_noise_*: the same bits on every machine). A token
 *   therefore depends on its request alone, never on batch company, the head split or any
 *   per-sequence generator state, and a sequence resumes from its token history alone.
 * - The draw is Gumbel-max: token = argmax over the kept set K of x_i + g_i with x_i = v_i / T
 *   (v = logit after the repetition penalty) and g_i = -log(-log(u_i)). This is an exact draw
 *   from softmax(x) restricted to K and needs only a max, so slices merge by comparison.
 * - v is the raw logit adjusted per id: the repetition penalty (v > 0 ? v / p : v * p for ids
 *   in the window), then one additive term: logit_bias - presence_penalty * [count > 0] -
 *   frequency_penalty * count, with count the id's occurrences in the generated text so far
 *   (OpenAI's definitions). The adjusted ids of a row travel with it (tern_adjust).
 * - K is a prefix of the total order "v descending, id ascending": top-k, then top-p (the
 *   smallest prefix whose mass reaches top_p of the total; of the top-k mass when top-k is on),
 *   then min-p (drop w < min_p * w_max), at least one token.
 * - Each head slice folds its ids, in id order, into a fixed-size record (tern_row_sum): the
 *   running max and sum of exp(x - max) in double (an online softmax, by lanes of ids:
 *   tern_lse_lanes, kernels.h), the best TERN_SAMPLE_CANDS candidates in the total order, the best
 * Gumbel score (for draws without truncation: such a row keeps only the max and one candidate, and
 *   its ids between adjusted ones go through the vector kernel tern_gumbel_max, kernels.h, as
 *   a greedy row's do) and, for log-probabilities, the same max/sum over the raw logits with
 *   the top TERN_MAX_LOGPROBS raw candidates. Slices are folded in vocabulary order (the ring
 *   order of the head ranks), so the record after the last slice is bitwise the record one
 *   rank makes folding the whole vocabulary: the fold is the same sequence of operations.
 * - tern_row_resolve() turns the record into the token. When K provably lies inside the
 *   candidates (top-k <= candidates, or the top-p/min-p prefix ends inside them) or no
 *   truncation applies (Gumbel best), it is resolved. Otherwise (a wide nucleus, typical of
 *   random-weight models) it says so, and the caller asks for the full row (one more pass of
 *   the token) and resolves with tern_row_resolve_full(), which computes the same function
 *   with every id as a candidate. Both paths give the same token where both apply.
 * - Log-probabilities are those of the model: log softmax of the raw logits (no temperature,
 *   no penalty), for the chosen token and the n most likely tokens.
 *
 * Contract: no function allocates; tern_row_sum is plain data (it travels between ranks as
 * bytes; ranks of one job share one architecture). NaN logits count as -inf.
 */
#ifndef TERNPIPE_SAMPLER_H
#define TERNPIPE_SAMPLER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ternpipe/kernels.h"
#include "ternpipe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tern_logit_bias {
    int32_t id;
    float bias; /* added to the logit; -100..100 */
} tern_logit_bias;

typedef struct tern_sampling {
    float temperature;     /* <= 0: greedy */
    int32_t top_k;         /* 0: off */
    float top_p;           /* 1: off; 0 < top_p <= 1 */
    float min_p;           /* 0: off; 0 <= min_p <= 1 */
    float repeat_penalty;  /* 1: off; > 0 */
    int32_t repeat_last_n; /* tokens of history penalized; 0: none, -1: all */
    uint64_t seed;
    int32_t n_logprobs;      /* 0: none; else the chosen token's and this many top log-probs */
    float presence_penalty;  /* -2..2, 0: off */
    float frequency_penalty; /* -2..2, 0: off */
    const tern_logit_bias *logit_bias; /* [n_logit_bias], copied at submit */
    int32_t n_logit_bias;              /* 0..TERN_MAX_LOGIT_BIAS */
} tern_sampling;

#define TERN_SAMPLE_CANDS 128   /* candidates a head slice keeps per sampled row */
#define TERN_MAX_LOGPROBS 20    /* top log-probabilities per token (OpenAI's limit) */
#define TERN_MAX_TOP_K 4096     /* top_k above this is refused */
#define TERN_MAX_LOGIT_BIAS 300 /* logit_bias entries per request (OpenAI's limit) */

/* Greedy: temperature 0, top_k 0, top_p 1, min_p 0, repeat_penalty 1, repeat_last_n 64,
 * seed 0, no logprobs. */
void tern_sampling_default(tern_sampling *p);
/* Range checks for parameters from users, e.g. "top_p: got 1.5, expected 0 < top_p <= 1". */
tern_code tern_sampling_validate(const tern_sampling *p, tern_status *st);

/* Uniform in (0, 1) from (seed, pos, id): 53 bits of a keyed hash, never 0 or 1. */
double tern_sample_uniform(uint64_t seed, int64_t pos, int64_t id);

typedef struct tern_cand {
    float v;   /* logit after the penalty (the sampling order) */
    float raw; /* the model's logit */
    int32_t id;
} tern_cand;

/* One adjusted id of a row: rep = the repetition penalty applies, then add is added. */
typedef struct tern_adjust {
    int32_t id;
    float add;
    bool rep;
} tern_adjust;

/* What the head ranks need to know of one sampled row (filled by tern_row_params_make on
 * rank 0, sent with the step). */
typedef struct tern_row_params {
    float temperature; /* <= 0: greedy (no exp pass) */
    float penalty;     /* 1: off */
    int32_t n_cand;    /* 1 (greedy) .. TERN_SAMPLE_CANDS */
    int32_t n_logprobs;
    bool gumbel; /* no truncation: track the best Gumbel score over every id */
    uint64_t seed;
    int32_t pos;            /* position of the token being drawn */
    const tern_adjust *adj; /* distinct adjusted ids, ascending */
    int32_t n_adj;
} tern_row_params;

typedef struct tern_row_sum {
    double mx, z; /* sampling rows: max of x = v / T and (but Gumbel rows) sum of exp(x - mx) */
    /* a summing row's sum by lanes of ids (kernels.h, tern_lse_lanes), which mx and z are
     * made of after every fold: the same for any slicing */
    double lm[TERN_LSE_LANES], lz[TERN_LSE_LANES];
    double rlm[TERN_LSE_LANES], rlz[TERN_LSE_LANES]; /* the same for mraw and zraw */
    double mraw, zraw; /* logprob rows: the same over the raw logits */
    double g;          /* best Gumbel score (gumbel rows) */
    tern_cand gc;      /* its candidate */
    int32_t n_seen;    /* ids folded so far: [0, n_seen) */
    int32_t n_cand, n_raw, pad;
    tern_cand cand[TERN_SAMPLE_CANDS]; /* best first in the total order */
    tern_cand rawc[TERN_MAX_LOGPROBS]; /* by raw logit, best first */
} tern_row_sum;

/* Entries a row's adjustment needs at most before merging: the repetition window, the
 * generated tokens and the logit biases. */
int32_t tern_adjust_scratch(const tern_sampling *sp, int32_t n_history, int32_t n_prompt);
/* The row's adjusted ids, distinct and ascending, into out[cap] (scratch: at least
 * tern_adjust_scratch entries; out may be scratch): the repetition window (the last
 * repeat_last_n tokens of history, all with -1), the counts of the generated tokens
 * history[n_prompt..] for the presence and frequency penalties, and the logit biases. Ids
 * outside [0, n_vocab) are dropped. Returns the count (at most cap: the lowest ids). */
int32_t tern_row_adjust(const tern_sampling *sp, const int32_t *history, int32_t n_history,
                        int32_t n_prompt, int32_t n_vocab, tern_adjust *scratch, tern_adjust *out,
                        int32_t cap);
/* The head ranks' part of the parameters (adj/n_adj set by the caller). */
void tern_row_params_make(const tern_sampling *sp, int32_t pos, tern_row_params *p);

void tern_row_sum_init(tern_row_sum *s);
/* Folds the logits of ids [v0, v0 + n) into s; v0 must equal s->n_seen (slices in order). */
void tern_row_sum_fold(tern_row_sum *s, const tern_row_params *p, const float *logits, int32_t v0,
                       int32_t n);

typedef struct tern_logprob {
    int32_t id;
    float logprob;
} tern_logprob;

typedef struct tern_pick {
    int32_t token;
    float logprob; /* of token (when n_logprobs > 0) */
    int32_t n_top; /* = n_logprobs */
    tern_logprob top[TERN_MAX_LOGPROBS];
} tern_pick;

/* Resolves a record folded over the whole vocabulary. Returns false (out untouched) when the
 * kept set may extend past the candidates: then call tern_row_resolve_full on the full row. */
bool tern_row_resolve(const tern_row_sum *s, const tern_sampling *sp, const tern_row_params *p,
                      int32_t n_vocab, tern_pick *out);
/* The same choice from the full row of raw logits [n_vocab]; scratch holds n_vocab
 * candidates. Always resolves. */
void tern_row_resolve_full(const float *logits, const tern_sampling *sp, const tern_row_params *p,
                           int32_t n_vocab, tern_cand *scratch, tern_pick *out);

#ifdef __cplusplus
}
#endif
#endif
