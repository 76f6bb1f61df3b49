/* sampler.c: the split sampler of sampler.h: counter-based uniforms, the per-slice fold and the
 * resolution on rank 0.
 *
 * Cost per row and slice of n ids: greedy rows are one pass of the vector kernel
 * tern_gumbel_max (its top only); Gumbel rows the same pass with a hash and two logs per id;
 * truncated rows a candidate pass (a heap of TERN_SAMPLE_CANDS, blocks of ids that beat no
 * full list skipped) and one exp per id in tern_lse_lanes; logprob rows one more lanes pass.
 */
#include "ternpipe/sampler.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void tern_sampling_default(tern_sampling *p)
{
    memset(p, 0, sizeof *p);
    p->temperature = 0.0f;
    p->top_k = 0;
    p->top_p = 1.0f;
    p->min_p = 0.0f;
    p->repeat_penalty = 1.0f;
    p->repeat_last_n = 64;
    p->seed = 0;
    p->n_logprobs = 0;
}

tern_code tern_sampling_validate(const tern_sampling *p, tern_status *st)
{
    /* written as !(in range) so NaN is rejected too */
    if (!(p->temperature >= 0.0f && p->temperature <= FLT_MAX))
        return tern_status_set(st, TERN_EINVAL,
                               "temperature: got %g, expected a finite value >= 0 (0 = greedy)",
                               (double)p->temperature);
    if (p->top_k < 0 || p->top_k > TERN_MAX_TOP_K)
        return tern_status_set(st, TERN_EINVAL, "top_k: got %d, expected 0..%d (0 = off)",
                               (int)p->top_k, TERN_MAX_TOP_K);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return tern_status_set(st, TERN_EINVAL, "top_p: got %g, expected 0 < top_p <= 1",
                               (double)p->top_p);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return tern_status_set(st, TERN_EINVAL, "min_p: got %g, expected 0 <= min_p <= 1",
                               (double)p->min_p);
    if (!(p->repeat_penalty > 0.0f && p->repeat_penalty <= FLT_MAX))
        return tern_status_set(st, TERN_EINVAL,
                               "repeat_penalty: got %g, expected a finite value > 0 (1 = off)",
                               (double)p->repeat_penalty);
    if (p->repeat_last_n < -1)
        return tern_status_set(st, TERN_EINVAL,
                               "repeat_last_n: got %d, expected >= -1 (0 = none, -1 = all)",
                               (int)p->repeat_last_n);
    if (p->n_logprobs < 0 || p->n_logprobs > TERN_MAX_LOGPROBS)
        return tern_status_set(st, TERN_EINVAL, "logprobs: got %d, expected 0..%d",
                               (int)p->n_logprobs, TERN_MAX_LOGPROBS);
    if (!(p->presence_penalty >= -2.0f && p->presence_penalty <= 2.0f))
        return tern_status_set(st, TERN_EINVAL, "presence_penalty: got %g, expected -2..2",
                               (double)p->presence_penalty);
    if (!(p->frequency_penalty >= -2.0f && p->frequency_penalty <= 2.0f))
        return tern_status_set(st, TERN_EINVAL, "frequency_penalty: got %g, expected -2..2",
                               (double)p->frequency_penalty);
    if (p->n_logit_bias < 0 || p->n_logit_bias > TERN_MAX_LOGIT_BIAS ||
        (p->n_logit_bias > 0 && !p->logit_bias))
        return tern_status_set(st, TERN_EINVAL, "logit_bias: got %d entries, expected 0..%d",
                               (int)p->n_logit_bias, TERN_MAX_LOGIT_BIAS);
    for (int32_t i = 0; i < p->n_logit_bias; i++)
        if (!(p->logit_bias[i].bias >= -100.0f && p->logit_bias[i].bias <= 100.0f) ||
            p->logit_bias[i].id < 0)
            return tern_status_set(st, TERN_EINVAL,
                                   "logit_bias: token %d: got bias %g, expected a token id >= 0 "
                                   "and a bias in -100..100",
                                   (int)p->logit_bias[i].id, (double)p->logit_bias[i].bias);
    return TERN_OK;
}

/* ------------------------------------------------------------------ counter-based uniforms */

double tern_sample_uniform(uint64_t seed, int64_t pos, int64_t id)
{
    return tern_noise_uniform(tern_noise_key(seed, pos), id);
}

/* ------------------------------------------------------------------ adjusted ids */

static int cmp_adj(const void *a, const void *b)
{
    const tern_adjust *x = a, *y = b;
    return x->id < y->id ? -1 : x->id > y->id;
}

int32_t tern_adjust_scratch(const tern_sampling *sp, int32_t n_history, int32_t n_prompt)
{
    int32_t gen = n_history > n_prompt ? n_history - n_prompt : 0;
    return n_history + gen + sp->n_logit_bias + 1;
}

int32_t tern_row_adjust(const tern_sampling *sp, const int32_t *history, int32_t n_history,
                        int32_t n_prompt, int32_t n_vocab, tern_adjust *scratch, tern_adjust *out,
                        int32_t cap)
{
    int32_t n = 0;
    if (sp->repeat_penalty != 1.0f && sp->repeat_last_n != 0 && history) {
        int32_t start = 0;
        if (sp->repeat_last_n > 0 && n_history > sp->repeat_last_n)
            start = n_history - sp->repeat_last_n;
        for (int32_t j = start; j < n_history; j++)
            if (history[j] >= 0 && history[j] < n_vocab)
                scratch[n++] = (tern_adjust){history[j], 0.0f, true};
    }
    /* presence and frequency: one entry per generated token; merged below into counts */
    const bool pf = sp->presence_penalty != 0.0f || sp->frequency_penalty != 0.0f;
    for (int32_t j = n_prompt; pf && history && j < n_history; j++)
        if (history[j] >= 0 && history[j] < n_vocab)
            scratch[n++] = (tern_adjust){history[j], 1.0f, false}; /* add marks a count */
    for (int32_t j = 0; j < sp->n_logit_bias; j++)
        if (sp->logit_bias[j].id >= 0 && sp->logit_bias[j].id < n_vocab)
            scratch[n++] = (tern_adjust){sp->logit_bias[j].id, 0.0f, false};
    /* the bias values, by id, come from the request again after the sort (they carry no
     * count): sort entries of every kind together, then fold each id's run */
    qsort(scratch, (size_t)n, sizeof *scratch, cmp_adj);
    int32_t m = 0;
    for (int32_t i = 0; i < n;) {
        int32_t id = scratch[i].id, count = 0;
        bool rep = false;
        for (; i < n && scratch[i].id == id; i++) {
            rep |= scratch[i].rep;
            count += !scratch[i].rep && scratch[i].add == 1.0f;
        }
        float bias = 0.0f;
        bool biased = false;
        for (int32_t j = 0; j < sp->n_logit_bias; j++)
            if (sp->logit_bias[j].id == id) bias = sp->logit_bias[j].bias, biased = true;
        /* OpenAI: mu - c * frequency - [c > 0] * presence, in float as the fold adds it */
        float add =
            bias - (float)count * sp->frequency_penalty - (count > 0 ? sp->presence_penalty : 0.0f);
        if (!rep && add == 0.0f && !biased) continue;
        if (m >= cap) break;
        out[m++] = (tern_adjust){id, add, rep && sp->repeat_penalty != 1.0f};
    }
    return m;
}

void tern_row_params_make(const tern_sampling *sp, int32_t pos, tern_row_params *p)
{
    bool greedy = !(sp->temperature > 0.0f);
    p->temperature = greedy ? 0.0f : sp->temperature;
    p->penalty = sp->repeat_penalty;
    p->n_logprobs = sp->n_logprobs;
    p->gumbel = !greedy && sp->top_k == 0 && !(sp->top_p < 1.0f) && !(sp->min_p > 0.0f);
    /* a Gumbel row is resolved by its best score: the best candidate only serves a row with
     * nothing finite to weigh */
    p->n_cand = greedy || p->gumbel ? 1 : TERN_SAMPLE_CANDS;
    p->seed = sp->seed;
    p->pos = pos;
}

/* ------------------------------------------------------------------ the fold */

/* the total order: a before b when its value is larger, then when its id is smaller */
static inline bool before_v(const tern_cand *a, const tern_cand *b)
{
    return a->v > b->v || (a->v == b->v && a->id < b->id);
}
static inline bool before_raw(const tern_cand *a, const tern_cand *b)
{
    return a->raw > b->raw || (a->raw == b->raw && a->id < b->id);
}

typedef bool (*order_fn)(const tern_cand *, const tern_cand *);

/* min-heap of the kept candidates: the root is the one that comes last in the order */
static void sift(tern_cand *h, int32_t n, int32_t i, order_fn before)
{
    tern_cand x = h[i];
    for (;;) {
        int32_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && before(&h[c], &h[c + 1])) c++;
        if (!before(&x, &h[c])) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = x;
}

static void heapify(tern_cand *h, int32_t n, order_fn before)
{
    for (int32_t i = n / 2; i-- > 0;) sift(h, n, i, before);
}

/* sorted best-first list -> heap, and back (a heap sort of at most TERN_SAMPLE_CANDS) */
static void heap_to_sorted(tern_cand *h, int32_t n, order_fn before)
{
    for (int32_t m = n; m > 1; m--) {
        tern_cand t = h[0];
        h[0] = h[m - 1];
        h[m - 1] = t;
        sift(h, m - 1, 0, before);
    }
}

/* offers c to the heap h of size *n and capacity cap */
static inline void offer(tern_cand *h, int32_t *n, int32_t cap, const tern_cand *c, order_fn before)
{
    if (*n < cap) {
        /* sift up */
        int32_t i = (*n)++;
        while (i > 0) {
            int32_t parent = (i - 1) / 2;
            if (!before(&h[parent], c)) break;
            h[i] = h[parent];
            i = parent;
        }
        h[i] = *c;
    } else if (cap > 0 && before(c, &h[0])) {
        h[0] = *c;
        sift(h, *n, 0, before);
    }
}

/* The raw logit (NaN as -inf) and its adjusted value; *pk walks p->adj along ascending ids. */
static inline tern_cand adjusted(const tern_row_params *p, const float *logits, int32_t i,
                                 int32_t id, int32_t *pk)
{
    float raw = logits[i];
    raw = raw == raw ? raw : -INFINITY;
    float v = raw;
    if (*pk < p->n_adj && p->adj[*pk].id == id) {
        if (p->adj[*pk].rep) v = v > 0.0f ? v / p->penalty : v * p->penalty;
        v += p->adj[*pk].add;
        (*pk)++;
    }
    return (tern_cand){v, raw, id};
}

void tern_row_sum_init(tern_row_sum *s)
{
    memset(s, 0, sizeof *s);
    s->mx = -INFINITY, s->z = 0.0;
    s->mraw = -INFINITY, s->zraw = 0.0;
    for (int l = 0; l < TERN_LSE_LANES; l++)
        s->lm[l] = s->rlm[l] = -INFINITY, s->lz[l] = s->rlz[l] = 0.0;
    s->g = -INFINITY;
    s->gc = (tern_cand){-INFINITY, -INFINITY, -1};
}

#define SKIP_BLOCK 16 /* ids a candidate pass skips at once */

/* the end of the run of unadjusted ids from i on (the next adjusted id's index, or n) */
static inline int32_t run_end(const tern_row_params *p, int32_t pk, int32_t v0, int32_t n)
{
    return pk < p->n_adj && p->adj[pk].id < v0 + n ? p->adj[pk].id - v0 : n;
}

/* the max and sum a record's lanes make, in lane order */
static void lanes_total(const double *lm, const double *lz, double *m, double *z)
{
    double mx = -INFINITY, sum = 0.0;
    for (int l = 0; l < TERN_LSE_LANES; l++) mx = lm[l] > mx ? lm[l] : mx;
    for (int l = 0; l < TERN_LSE_LANES; l++)
        if (lm[l] > -INFINITY) sum += lz[l] * tern_exp_det(lm[l] - mx);
    *m = mx, *z = sum;
}

/* A summing row's sum over ids [v0, v0 + n) by the kernel's lanes (tern_lse_lanes), an
 * adjusted id with its value through the same kernel; then the max and sum the lanes make, in
 * lane order. */
static void fold_sum(tern_row_sum *s, const tern_row_params *p, const float *logits, int32_t v0,
                     int32_t n, int32_t pk, double inv_t)
{
    for (int32_t i = 0; i < n;) {
        const int32_t stop = run_end(p, pk, v0, n);
        if (stop > i) tern_lse_lanes(logits + i, stop - i, v0 + i, inv_t, s->lm, s->lz);
        if ((i = stop) < n) {
            const tern_cand c = adjusted(p, logits, i, v0 + i, &pk);
            tern_lse_lanes(&c.v, 1, v0 + i, inv_t, s->lm, s->lz);
            i++;
        }
    }
    lanes_total(s->lm, s->lz, &s->mx, &s->z);
}

/* A Gumbel row's draw over ids [v0, v0 + n): the max of x (no sum: the draw needs none) and
 * the best score, in id order (strictly greater wins: the lowest id on ties); a greedy row's
 * (inv_t 0) only its candidate. The runs between adjusted ids go to the vector kernel
 * (tern_gumbel_max: the same bits as one id at a time), the adjusted ids one by one; with top1,
 * the row's candidate (it keeps one) as well. */
static void fold_runs(tern_row_sum *s, const tern_row_params *p, const float *logits, int32_t v0,
                      int32_t n, int32_t pk, double inv_t, uint64_t key, bool top1)
{
    for (int32_t i = 0; i < n;) {
        const int32_t stop = run_end(p, pk, v0, n);
        if (stop > i) {
            tern_gumbel_run r;
            tern_gumbel_max(logits + i, stop - i, v0 + i, inv_t, key, &r);
            if (top1) {
                const tern_cand t = {r.top, r.top, v0 + i + (int32_t)r.top_i};
                offer(s->cand, &s->n_cand, 1, &t, before_v);
            }
            if (r.mx > s->mx) s->mx = r.mx;
            if (r.g_i >= 0 && r.g > s->g) {
                const float v = logits[i + r.g_i];
                s->g = r.g, s->gc = (tern_cand){v, v, v0 + i + (int32_t)r.g_i};
            }
            i = stop;
        }
        if (i < n) {
            const tern_cand c = adjusted(p, logits, i, v0 + i, &pk);
            if (top1) offer(s->cand, &s->n_cand, 1, &c, before_v);
            const double x = (double)c.v * inv_t;
            if (inv_t > 0.0 && x > -INFINITY) {
                if (x > s->mx) s->mx = x;
                const double g = x + tern_noise_gumbel(key, c.id);
                if (g > s->g) s->g = g, s->gc = c;
            }
            i++;
        }
    }
}

void tern_row_sum_fold(tern_row_sum *s, const tern_row_params *p, const float *logits, int32_t v0,
                       int32_t n)
{
    const bool sampling = p->temperature > 0.0f;
    const double inv_t = sampling ? fmin(1.0 / (double)p->temperature, 1e30) : 0.0;
    int32_t cap = p->n_cand < 1 ? 1 : p->n_cand > TERN_SAMPLE_CANDS ? TERN_SAMPLE_CANDS : p->n_cand;
    int32_t rcap = p->n_logprobs < 0                   ? 0
                   : p->n_logprobs > TERN_MAX_LOGPROBS ? TERN_MAX_LOGPROBS
                                                       : p->n_logprobs;
    const bool gumbel = sampling && p->gumbel;
    /* the lists are kept sorted between folds; a heap during one */
    heapify(s->cand, s->n_cand, before_v);
    heapify(s->rawc, s->n_raw, before_raw);
    int32_t pk = 0; /* next adjusted id at or after v0 */
    while (pk < p->n_adj && p->adj[pk].id < v0) pk++;
    const int32_t pk0 = pk;
    /* a Gumbel or greedy row's draw and (keeping one) its candidate by the kernel */
    const bool runs = gumbel || (!sampling && cap == 1);
    if (runs)
        fold_runs(s, p, logits, v0, n, pk0, inv_t, gumbel ? tern_noise_key(p->seed, p->pos) : 0,
                  cap == 1);
    /* the candidates (but those) and the log-probabilities */
    const bool offers = !runs || cap > 1;
    if (offers || rcap)
        for (int32_t i = 0; i < n; i++) {
            /* a block of unadjusted ids none of which beats a full list's last (the root: the
             * ids come in order, so only a larger value enters) adds nothing */
            while ((!offers || s->n_cand == cap) && (!rcap || s->n_raw == rcap) &&
                   n - i >= SKIP_BLOCK && run_end(p, pk, v0, n) - i >= SKIP_BLOCK) {
                float bm = -INFINITY;
                for (int j = 0; j < SKIP_BLOCK; j++) bm = logits[i + j] > bm ? logits[i + j] : bm;
                if ((offers && bm > s->cand[0].v) || (rcap && bm > s->rawc[0].raw)) break;
                i += SKIP_BLOCK;
            }
            if (i >= n) break;
            tern_cand c = adjusted(p, logits, i, v0 + i, &pk);
            if (offers) offer(s->cand, &s->n_cand, cap, &c, before_v);
            if (rcap) offer(s->rawc, &s->n_raw, rcap, &c, before_raw);
        }
    if (sampling && !gumbel) fold_sum(s, p, logits, v0, n, pk0, inv_t);
    if (rcap && n > 0) { /* the raw logits' sum by lanes, as a summing row's */
        tern_lse_lanes(logits, n, v0, 1.0, s->rlm, s->rlz);
        lanes_total(s->rlm, s->rlz, &s->mraw, &s->zraw);
    }
    heap_to_sorted(s->cand, s->n_cand, before_v);
    heap_to_sorted(s->rawc, s->n_raw, before_raw);
    s->n_seen = v0 + n;
}

/* ------------------------------------------------------------------ resolution */

static void fill_logprobs(const tern_row_sum *s, const tern_sampling *sp, float chosen_raw,
                          tern_pick *out)
{
    out->n_top = 0;
    out->logprob = 0.0f;
    if (sp->n_logprobs <= 0) return;
    const double lz = s->mraw + log(s->zraw);
    out->logprob = (float)((double)chosen_raw - lz);
    for (int32_t j = 0; j < s->n_raw && j < sp->n_logprobs; j++)
        out->top[out->n_top++] =
            (tern_logprob){s->rawc[j].id, (float)((double)s->rawc[j].raw - lz)};
}

/* The choice from a record whose candidates are cand[0..n) (the exact best n of the order);
 * complete: they are every id. Returns false when the kept set may reach past cand[n-1]. */
static bool resolve_core(const tern_row_sum *s, const tern_cand *cand, int32_t n, bool complete,
                         const tern_sampling *sp, const tern_row_params *p, tern_pick *out)
{
    if (n < 1) return false;
    if (!(p->temperature > 0.0f) || !isfinite(s->mx)) {
        /* greedy, or nothing finite to weigh (all -inf, or +inf dominating) */
        out->token = cand[0].id;
        fill_logprobs(s, sp, cand[0].raw, out);
        return true;
    }
    if (p->gumbel) {
        out->token = s->gc.id;
        fill_logprobs(s, sp, s->gc.raw, out);
        return true;
    }
    const double inv_t = fmin(1.0 / (double)p->temperature, 1e30);
    int32_t limit = n;
    bool have_k = false;
    if (sp->top_k > 0) {
        if (sp->top_k <= n)
            limit = sp->top_k, have_k = true;
        else if (!complete)
            return false;
    }
    double zref = s->z;
    if (sp->top_k > 0) {
        zref = 0.0;
        for (int32_t j = 0; j < limit; j++) zref += exp((double)cand[j].v * inv_t - s->mx);
    }
    const double target = sp->top_p < 1.0f ? (double)sp->top_p * zref : INFINITY;
    double cum = 0.0;
    int32_t kept = 0;
    bool ended = false;
    for (int32_t j = 0; j < limit; j++) {
        double w = exp((double)cand[j].v * inv_t - s->mx);
        if (j > 0 && w < (double)sp->min_p) {
            ended = true;
            break;
        }
        kept = j + 1;
        cum += w;
        if (cum >= target) {
            ended = true;
            break;
        }
    }
    if (!ended && !have_k && !complete) return false;
    /* Gumbel-max over the kept prefix */
    const uint64_t key = tern_noise_key(p->seed, p->pos);
    double best = -INFINITY;
    int32_t bj = 0;
    for (int32_t j = 0; j < kept; j++) {
        double x = (double)cand[j].v * inv_t;
        if (!(x > -INFINITY)) continue;
        double g = x + tern_noise_gumbel(key, cand[j].id);
        if (g > best || (g == best && cand[j].id < cand[bj].id)) best = g, bj = j;
    }
    out->token = cand[bj].id;
    fill_logprobs(s, sp, cand[bj].raw, out);
    return true;
}

bool tern_row_resolve(const tern_row_sum *s, const tern_sampling *sp, const tern_row_params *p,
                      int32_t n_vocab, tern_pick *out)
{
    bool complete = s->n_cand >= n_vocab;
    return resolve_core(s, s->cand, s->n_cand, complete, sp, p, out);
}

static int cmp_cand(const void *a, const void *b)
{
    const tern_cand *x = a, *y = b;
    return before_v(x, y) ? -1 : before_v(y, x) ? 1 : 0;
}

void tern_row_resolve_full(const float *logits, const tern_sampling *sp, const tern_row_params *p,
                           int32_t n_vocab, tern_cand *scratch, tern_pick *out)
{
    tern_row_sum s;
    tern_row_sum_init(&s);
    tern_row_sum_fold(&s, p, logits, 0, n_vocab);
    /* every id as a candidate, with the values the fold used */
    int32_t pk = 0;
    for (int32_t i = 0; i < n_vocab; i++) scratch[i] = adjusted(p, logits, i, i, &pk);
    qsort(scratch, (size_t)n_vocab, sizeof *scratch, cmp_cand);
    if (!resolve_core(&s, scratch, n_vocab, true, sp, p, out)) {
        out->token = scratch[0].id; /* unreachable: a complete list always resolves */
        fill_logprobs(&s, sp, scratch[0].raw, out);
    }
}
