/* sampler.c: repetition penalty, greedy, top-k, temperature, top-p, min-p and the seeded draw.
 *
 * Work happens in `work` (a copy of the logits, NaN mapped to -inf, penalties applied), then in
 * probability space: work[i] = exp((logit_i - max) / T), so the most likely token has weight 1
 * and min-p is simply "weight >= min_p". Candidates are ordered by (weight or logit descending,
 * id ascending), a total order, so results never depend on sort stability.
 *
 * Cost per token for a 128k vocabulary: greedy is one linear pass (two when a penalty hits the
 * favourite). Top-k keeps a k-element heap in one pass. Without top-k, one exp pass gives the
 * normalizer and top-p adds two passes (a mass histogram, then collection) plus a heap over the
 * one histogram bin where the nucleus ends; nothing sorts the vocabulary.
 */
#include "ternpipe/sampler.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ternpipe/rng.h"

/* weight_bin() of weights in [0, 1] is at most 1016 */
#define SAMPLER_BINS 1024

typedef struct cand {
    float v; /* logit, or weight once in probability space */
    int32_t id;
} cand;

struct tern_sampler {
    tern_sampling p; /* as given */
    /* effective values, clamped so sample() is safe even with unvalidated parameters */
    float temperature, top_p, min_p, penalty;
    int32_t top_k, last_n;
    int32_t n_vocab;
    tern_rng rng;
    float *work;     /* [n_vocab] */
    cand *cand;      /* [n_vocab] */
    uint32_t *stamp; /* [n_vocab] epoch of the last penalty applied to each token */
    uint32_t epoch;
    double bin_mass[SAMPLER_BINS]; /* top-p histogram, see weight_bin() */
};

void tern_sampling_default(tern_sampling *p)
{
    p->temperature = 0.0f;
    p->top_k = 0;
    p->top_p = 1.0f;
    p->min_p = 0.0f;
    p->repeat_penalty = 1.0f;
    p->repeat_last_n = 64;
    p->seed = 0;
}

tern_code tern_sampling_validate(const tern_sampling *p, tern_status *st)
{
    /* written as !(in range) so NaN is rejected too */
    if (!(p->temperature >= 0.0f && p->temperature <= FLT_MAX))
        return tern_status_set(st, TERN_EINVAL,
                               "temperature: got %g, expected a finite value >= 0 (0 = greedy)",
                               (double)p->temperature);
    if (p->top_k < 0)
        return tern_status_set(st, TERN_EINVAL, "top_k: got %d, expected top_k >= 0 (0 = off)",
                               (int)p->top_k);
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
    return TERN_OK;
}

void tern_sampler_free(tern_sampler *s)
{
    if (!s) return;
    free(s->work);
    free(s->cand);
    free(s->stamp);
    free(s);
}

void tern_sampler_reset(tern_sampler *s, const tern_sampling *p)
{
    s->p = *p;
    s->temperature = p->temperature > 0.0f ? p->temperature : 0.0f; /* NaN -> greedy */
    s->top_k = p->top_k > 0 && p->top_k < s->n_vocab ? p->top_k : 0;
    s->top_p = p->top_p < 1.0f ? (p->top_p > 0.0f ? p->top_p : 0.0f) : 1.0f;
    s->min_p = p->min_p > 0.0f ? (p->min_p < 1.0f ? p->min_p : 1.0f) : 0.0f;
    s->penalty =
        p->repeat_penalty > 0.0f && p->repeat_penalty <= FLT_MAX ? p->repeat_penalty : 1.0f;
    s->last_n = p->repeat_last_n;
    tern_rng_seed(&s->rng, p->seed);
}

tern_code tern_sampler_create(tern_sampler **out, const tern_sampling *p, int32_t n_vocab,
                              tern_status *st)
{
    *out = NULL;
    tern_code rc = tern_sampling_validate(p, st);
    if (rc != TERN_OK) return rc;
    if (n_vocab <= 0)
        return tern_status_set(st, TERN_EINVAL, "n_vocab: got %d, expected > 0", (int)n_vocab);
    tern_sampler *s = calloc(1, sizeof *s);
    if (!s) return tern_status_set(st, TERN_ENOMEM, "sampler: out of memory");
    s->n_vocab = n_vocab;
    s->work = malloc((size_t)n_vocab * sizeof *s->work);
    s->cand = malloc((size_t)n_vocab * sizeof *s->cand);
    s->stamp = calloc((size_t)n_vocab, sizeof *s->stamp);
    if (!s->work || !s->cand || !s->stamp) {
        tern_sampler_free(s);
        return tern_status_set(st, TERN_ENOMEM, "sampler: out of memory for %d tokens",
                               (int)n_vocab);
    }
    tern_sampler_reset(s, p);
    *out = s;
    return TERN_OK;
}

/* ---- heap on the total order "a before b" = larger value, then smaller id ---- */

static inline int before(cand a, cand b)
{
    return a.v > b.v || (a.v == b.v && a.id < b.id);
}

/* Min-heap when worst_on_top: root is the candidate that comes last (top-k selection).
 * Max-heap otherwise: root comes first (popping the nucleus in order). */
static void sift_down(cand *h, size_t n, size_t i, int worst_on_top)
{
    cand x = h[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && (worst_on_top ? before(h[c], h[c + 1]) : before(h[c + 1], h[c]))) c++;
        if (!(worst_on_top ? before(x, h[c]) : before(h[c], x))) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = x;
}

static void heapify(cand *h, size_t n, int worst_on_top)
{
    for (size_t i = n / 2; i-- > 0;) sift_down(h, n, i, worst_on_top);
}

/* The k best (logit, id) of work, sorted best first into c[0..k). */
static void select_top_k(const float *work, int32_t n, cand *c, int32_t k)
{
    for (int32_t i = 0; i < k; i++) c[i] = (cand){work[i], i};
    heapify(c, (size_t)k, 1);
    for (int32_t i = k; i < n; i++) {
        /* ids only grow, so an equal logit never beats the root: ties keep the lowest ids */
        if (work[i] > c[0].v) {
            c[0] = (cand){work[i], i};
            sift_down(c, (size_t)k, 0, 1);
        }
    }
    /* heap sort: the worst goes to the end each time, leaving c best-first */
    for (size_t m = (size_t)k; m > 1; m--) {
        cand t = c[0];
        c[0] = c[m - 1];
        c[m - 1] = t;
        sift_down(c, m - 1, 0, 1);
    }
}

/* Draws from c[0..m) with weights c[].v. */
static int32_t draw_cands(const cand *c, size_t m, double u)
{
    double total = 0.0;
    for (size_t j = 0; j < m; j++) total += c[j].v;
    double r = u * total, cum = 0.0;
    size_t last = 0;
    for (size_t j = 0; j < m; j++) {
        if (c[j].v <= 0.0f) continue;
        cum += c[j].v;
        last = j;
        if (r < cum) return c[j].id;
    }
    return c[last].id; /* r fell past the end by rounding */
}

/* Draws from the whole vocabulary, in id order, with weights w[] >= min_w. */
static int32_t draw_vocab(const float *w, int32_t n, float min_w, double total, double u)
{
    double r = u * total, cum = 0.0;
    int32_t last = -1;
    for (int32_t i = 0; i < n; i++) {
        if (w[i] < min_w || w[i] <= 0.0f) continue;
        cum += w[i];
        last = i;
        if (r < cum) return i;
    }
    return last;
}

static int32_t argmax(const float *w, int32_t n)
{
    int32_t best = 0;
    float bv = w[0];
    for (int32_t i = 1; i < n; i++)
        if (w[i] > bv) bv = w[i], best = i; /* strict: lowest id wins ties */
    return best;
}

/* exp(x) for x <= 0, flushed to 0 where it would be subnormal (below 1e-38 of the most likely
 * token: no draw can tell) so no later arithmetic runs on the slow subnormal path. */
static inline float weight(float x)
{
    return x > -87.0f ? expf(x) : 0.0f;
}

/* Returns whether any logit changed. */
static int apply_penalty(tern_sampler *s, const int32_t *history, size_t n_history)
{
    if (s->penalty == 1.0f || s->last_n == 0 || !history || n_history == 0) return 0;
    size_t start = 0;
    if (s->last_n > 0 && n_history > (size_t)s->last_n) start = n_history - (size_t)s->last_n;
    /* the stamp marks tokens already penalized in this call: once per distinct token, as
     * llama.cpp does, however often it repeats */
    if (++s->epoch == 0) {
        memset(s->stamp, 0, (size_t)s->n_vocab * sizeof *s->stamp);
        s->epoch = 1;
    }
    int changed = 0;
    for (size_t j = start; j < n_history; j++) {
        int32_t t = history[j];
        if (t < 0 || t >= s->n_vocab || s->stamp[t] == s->epoch) continue;
        s->stamp[t] = s->epoch;
        float v = s->work[t];
        s->work[t] = v > 0.0f ? v / s->penalty : v * s->penalty;
        changed = 1;
    }
    return changed;
}

/* Histogram bin of a weight in [0, 1]: for non-negative floats the bit pattern orders like the
 * value, so the exponent and top 3 mantissa bits give 8 bins per octave (1.0 is bin 1016). */
static inline uint32_t weight_bin(float w)
{
    uint32_t bits;
    memcpy(&bits, &w, sizeof bits);
    return bits >> 20;
}

/* Top-p (and min-p) over the whole vocabulary; work[] holds weights, z their sum. One pass builds
 * a histogram of the mass per bin; walking it from the top finds the bin where the cumulative
 * mass reaches the target. Every token in a higher bin is in the nucleus (they form a prefix with
 * less than the target), every token in a lower bin is out, and only the crossing bin, whose
 * weights lie within 9% of each other, is heapified and popped in order. Linear, no sort of the
 * vocabulary. */
static int32_t sample_top_p_vocab(tern_sampler *s, double z, double u)
{
    const int32_t n = s->n_vocab;
    const float *w = s->work;
    const double target = (double)s->top_p * z;
    memset(s->bin_mass, 0, sizeof s->bin_mass);
    for (int32_t i = 0; i < n; i++) s->bin_mass[weight_bin(w[i])] += w[i];
    uint32_t cross = 0;
    double above = 0.0; /* mass of the bins above `cross` */
    for (uint32_t b = SAMPLER_BINS; b-- > 0;) {
        if (above + s->bin_mass[b] >= target) {
            cross = b;
            break;
        }
        above += s->bin_mass[b];
    }
    /* sure tokens go to the front of cand (id order), the crossing bin to the back */
    size_t n_sure = 0;
    cand *back = s->cand + n;
    for (int32_t i = 0; i < n; i++) {
        uint32_t b = weight_bin(w[i]);
        if (b < cross) continue;
        /* min-p and top-p both keep a prefix of the order, so the result is the shorter one:
         * filtering by min-p here is the same as applying it after top-p */
        if (w[i] < s->min_p) continue;
        if (b > cross)
            s->cand[n_sure++] = (cand){w[i], i};
        else
            *--back = (cand){w[i], i};
    }
    const size_t n_cross = (size_t)(s->cand + n - back);
    /* pop the crossing bin in order until the target is reached (popped items collect at its
     * end); a token dropped by min-p above ends the nucleus anyway, since everything after it
     * in the order is smaller */
    heapify(back, n_cross, 0);
    double cum = above;
    size_t size = n_cross;
    while (size > 0 && cum < target) {
        cand top = back[0];
        back[0] = back[size - 1];
        back[size - 1] = top;
        size--;
        sift_down(back, size, 0, 0);
        cum += top.v;
    }
    size_t popped = n_cross - size;
    memmove(s->cand + n_sure, back + size, popped * sizeof *back);
    size_t kept = n_sure + popped;
    if (kept == 0) return argmax(w, n); /* top_p rounded to 0: the most likely token */
    return draw_cands(s->cand, kept, u);
}

int32_t tern_sampler_sample(tern_sampler *s, const float *logits, const int32_t *history,
                            size_t n_history)
{
    const int32_t n = s->n_vocab;
    float *w = s->work;
    int32_t best = 0;
    float max = -INFINITY;
    for (int32_t i = 0; i < n; i++) {
        float v = logits[i];
        v = v == v ? v : -INFINITY;
        w[i] = v;
        if (v > max) max = v, best = i; /* strict: lowest id wins ties */
    }
    if (apply_penalty(s, history, n_history)) {
        best = argmax(w, n);
        max = w[best];
    }
    /* greedy, or nothing finite to sample from (all -inf, or +inf dominating) */
    if (s->temperature <= 0.0f || !isfinite(max)) return best;

    /* clamped so a tiny temperature gives 0 * scale = 0 for the max, never NaN */
    const float scale = (float)fmin(1.0 / (double)s->temperature, 1e30);
    const double u = tern_rng_uniform_double(&s->rng);

    if (s->top_k > 0) {
        const int32_t k = s->top_k;
        select_top_k(w, n, s->cand, k);
        double z = 0.0;
        for (int32_t j = 0; j < k; j++) {
            s->cand[j].v = weight((s->cand[j].v - max) * scale);
            z += s->cand[j].v;
        }
        const double target = s->top_p < 1.0f ? (double)s->top_p * z : INFINITY;
        double cum = 0.0;
        int32_t kept = 0;
        for (int32_t j = 0; j < k; j++) {
            if (j > 0 && s->cand[j].v < s->min_p) break;
            kept++;
            cum += s->cand[j].v;
            if (cum >= target) break;
        }
        return draw_cands(s->cand, (size_t)kept, u);
    }

    double z = 0.0;
    for (int32_t i = 0; i < n; i++) {
        w[i] = weight((w[i] - max) * scale);
        z += w[i];
    }
    if (s->top_p < 1.0f) return sample_top_p_vocab(s, z, u);
    if (s->min_p > 0.0f) {
        z = 0.0;
        for (int32_t i = 0; i < n; i++)
            if (w[i] >= s->min_p) z += w[i];
    }
    int32_t tok = draw_vocab(w, n, s->min_p, z, u);
    return tok >= 0 ? tok : best;
}
