/* test_sampler.c: the split sampler (sampler.h).
 * - Split invariance: folding the vocabulary in any slices (random boundaries, multiples of
 *   16) gives bitwise the record of one fold, and so the same token and log-probabilities.
 * - tern_row_resolve agrees with tern_row_resolve_full wherever it resolves.
 * - Empirical frequencies over positions match a brute-force reference of the chain (top-k,
 *   temperature, top-p, min-p): the counter-based draws are a correct sampler.
 * - Greedy is argmax (lowest id on ties); repetition penalty semantics; log-probabilities equal
 *   an independent log-softmax; uniforms depend on (seed, position, id) only; validation.
 * - Cost per row on a 128k vocabulary (printed, not asserted). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "harness.h"
#include "ternpipe/rng.h"
#include "ternpipe/sampler.h"

static tern_sampling params(float temp, int32_t top_k, float top_p, float min_p, uint64_t seed)
{
    tern_sampling p;
    tern_sampling_default(&p);
    p.temperature = temp, p.top_k = top_k, p.top_p = top_p, p.min_p = min_p, p.seed = seed;
    return p;
}

static void random_logits(tern_rng *r, float *l, int32_t n, float scale)
{
    for (int32_t i = 0; i < n; i++) l[i] = (tern_rng_uniform(r) * 2.0f - 1.0f) * scale;
}

/* The whole protocol on slices [cuts[i], cuts[i+1]): fold in order, resolve, and when needed
 * resolve from the full row. */
static tern_cand *g_scratch;
static int32_t g_n_prompt; /* history[g_n_prompt..] is generated text */
static tern_pick draw_split(const float *l, int32_t n, const tern_sampling *sp, int32_t pos,
                            const int32_t *hist, int32_t nh, const int32_t *cuts, int n_cuts,
                            tern_row_sum *out_sum, bool *resolved)
{
    static tern_adjust adj[8192], scratch[8192];
    tern_row_params rp;
    tern_row_params_make(sp, pos, &rp);
    rp.n_adj = tern_row_adjust(sp, hist, nh, g_n_prompt, n, scratch, adj, 8192);
    rp.adj = adj;
    tern_row_sum s;
    tern_row_sum_init(&s);
    for (int c = 0; c + 1 < n_cuts; c++)
        tern_row_sum_fold(&s, &rp, l + cuts[c], cuts[c], cuts[c + 1] - cuts[c]);
    tern_pick pk;
    memset(&pk, 0, sizeof pk);
    bool ok = tern_row_resolve(&s, sp, &rp, n, &pk);
    if (resolved) *resolved = ok;
    if (out_sum) *out_sum = s;
    tern_pick full;
    memset(&full, 0, sizeof full);
    tern_row_resolve_full(l, sp, &rp, n, g_scratch, &full);
    if (ok) {
        CHECKF(pk.token == full.token, "resolve %d, full %d", pk.token, full.token);
        CHECK(pk.n_top == full.n_top && pk.logprob == full.logprob);
        CHECK(memcmp(pk.top, full.top, sizeof pk.top[0] * (size_t)pk.n_top) == 0);
    }
    return ok ? pk : full;
}

static tern_pick draw(const float *l, int32_t n, const tern_sampling *sp, int32_t pos)
{
    int32_t cuts[2] = {0, n};
    return draw_split(l, n, sp, pos, NULL, 0, cuts, 2, NULL, NULL);
}

static void test_validation(void)
{
    tern_sampling p;
    tern_sampling_default(&p);
    CHECK(p.temperature == 0.0f && p.top_k == 0 && p.top_p == 1.0f && p.min_p == 0.0f);
    CHECK(p.repeat_penalty == 1.0f && p.repeat_last_n == 64 && p.seed == 0 && p.n_logprobs == 0);
    tern_status st = {0};
    CHECK(tern_sampling_validate(&p, &st) == TERN_OK);
    struct {
        tern_sampling p;
        const char *what;
    } bad[8];
    for (int i = 0; i < 8; i++) bad[i].p = p;
    bad[0].p.temperature = -1, bad[0].what = "temperature: got -1";
    bad[1].p.temperature = NAN, bad[1].what = "temperature";
    bad[2].p.top_k = -2, bad[2].what = "top_k: got -2";
    bad[3].p.top_p = 0.0f, bad[3].what = "top_p: got 0";
    bad[4].p.min_p = 1.5f, bad[4].what = "min_p: got 1.5";
    bad[5].p.repeat_penalty = 0.0f, bad[5].what = "repeat_penalty: got 0";
    bad[6].p.repeat_last_n = -3, bad[6].what = "repeat_last_n: got -3";
    bad[7].p.n_logprobs = 21, bad[7].what = "logprobs: got 21";
    for (int i = 0; i < 8; i++) {
        CHECK(tern_sampling_validate(&bad[i].p, &st) == TERN_EINVAL);
        CHECKF(strstr(st.msg, bad[i].what) != NULL, "expected '%s', got '%s'", bad[i].what, st.msg);
    }
    /* uniforms: in (0, 1), a function of (seed, pos, id) only */
    double u = tern_sample_uniform(5, 10, 20);
    CHECK(u > 0.0 && u < 1.0 && u == tern_sample_uniform(5, 10, 20));
    CHECK(u != tern_sample_uniform(6, 10, 20) && u != tern_sample_uniform(5, 11, 20) &&
          u != tern_sample_uniform(5, 10, 21));
    double mean = 0;
    for (int i = 0; i < 100000; i++) mean += tern_sample_uniform(1, i / 100, i % 100);
    CHECKF(fabs(mean / 100000 - 0.5) < 0.005, "mean %.4f", mean / 100000);
}

static void test_greedy_and_penalty(void)
{
    tern_sampling g = params(0.0f, 0, 1.0f, 0.0f, 0);
    float l[6] = {2.0f, 1.9f, -1.0f, -1.05f, 0.5f, 2.0f};
    CHECK(draw(l, 6, &g, 0).token == 0); /* tie 0 and 5: lowest id */
    l[5] = 0.0f;
    int32_t cuts[3] = {0, 3, 6};
    const int32_t h0[1] = {0};
    g.repeat_penalty = 1.2f;
    CHECK(draw_split(l, 6, &g, 1, h0, 1, cuts, 3, NULL, NULL).token == 1); /* 2.0 / 1.2 < 1.9 */
    const int32_t hbad[3] = {-5, 6, 1000};                                 /* ignored */
    CHECK(draw_split(l, 6, &g, 1, hbad, 3, cuts, 3, NULL, NULL).token == 0);
    float neg[2] = {-1.0f, -1.05f}; /* negative logits are multiplied */
    int32_t c2[2] = {0, 2};
    CHECK(draw_split(neg, 2, &g, 1, h0, 1, c2, 2, NULL, NULL).token == 1);
    g.repeat_penalty = 1.05f; /* once per distinct token */
    const int32_t h3[3] = {0, 0, 0};
    CHECK(draw_split(l, 6, &g, 1, h3, 3, cuts, 3, NULL, NULL).token == 0);
    g.repeat_penalty = 1.2f, g.repeat_last_n = 2; /* the window */
    const int32_t hw[3] = {0, 4, 5};
    CHECK(draw_split(l, 6, &g, 1, hw, 3, cuts, 3, NULL, NULL).token == 0);
    g.repeat_last_n = -1;
    CHECK(draw_split(l, 6, &g, 1, hw, 3, cuts, 3, NULL, NULL).token == 1);
    g.repeat_last_n = 0;
    CHECK(draw_split(l, 6, &g, 1, hw, 3, cuts, 3, NULL, NULL).token == 0);
    /* NaN counts as -inf; all -inf still gives a token */
    float nan_l[3] = {NAN, -1.0f, NAN};
    CHECK(draw(nan_l, 3, &g, 0).token == 1);
    float ninf[3] = {-INFINITY, -INFINITY, -INFINITY};
    tern_sampling t = params(0.8f, 0, 0.9f, 0.0f, 3);
    int32_t tk = draw(ninf, 3, &t, 0).token;
    CHECK(tk >= 0 && tk < 3);
}

/* Brute-force reference of the chain: probabilities after top-k, temperature, top-p, min-p. */
static void reference_probs(const float *l, int32_t n, const tern_sampling *p, double *prob)
{
    int32_t *order = malloc((size_t)n * sizeof *order);
    for (int32_t i = 0; i < n; i++) order[i] = i;
    for (int32_t i = 1; i < n; i++) { /* insertion sort: value desc, id asc */
        int32_t x = order[i], j = i;
        while (j > 0 && (l[order[j - 1]] < l[x] || (l[order[j - 1]] == l[x] && order[j - 1] > x)))
            order[j] = order[j - 1], j--;
        order[j] = x;
    }
    int32_t m = p->top_k > 0 && p->top_k < n ? p->top_k : n;
    double z = 0.0;
    double *e = calloc((size_t)n, sizeof *e);
    for (int32_t j = 0; j < n; j++)
        e[j] = exp(((double)l[order[j]] - (double)l[order[0]]) / (double)p->temperature);
    for (int32_t j = 0; j < m; j++) z += e[j];
    int32_t kept = 0;
    double cum = 0.0;
    for (int32_t j = 0; j < m; j++) {
        if (j > 0 && e[j] < p->min_p) break;
        kept++;
        cum += e[j];
        if (p->top_p < 1.0f && cum >= p->top_p * z) break;
    }
    for (int32_t i = 0; i < n; i++) prob[i] = 0.0;
    for (int32_t j = 0; j < kept; j++) prob[order[j]] = e[j] / cum;
    free(e);
    free(order);
}

static void check_distribution(const char *name, const float *l, int32_t n, tern_sampling p,
                               int draws, double tol)
{
    double *prob = malloc((size_t)n * sizeof *prob);
    long *hits = calloc((size_t)n, sizeof *hits);
    reference_probs(l, n, &p, prob);
    for (int i = 0; i < draws; i++) hits[draw(l, n, &p, i).token]++;
    long outside = 0;
    double worst = 0.0;
    int32_t worst_id = 0;
    for (int32_t i = 0; i < n; i++) {
        if (prob[i] == 0.0) outside += hits[i];
        double d = fabs((double)hits[i] / draws - prob[i]);
        if (d > worst) worst = d, worst_id = i;
    }
    CHECKF(outside == 0, "%s: %ld draws outside the support", name, outside);
    CHECKF(worst <= tol, "%s: token %d frequency %.4f, expected %.4f", name, (int)worst_id,
           (double)hits[worst_id] / draws, prob[worst_id]);
    free(prob);
    free(hits);
}

static void test_distributions(void)
{
    const float small[5] = {1.0f, 2.0f, 0.5f, -1.0f, 1.5f};
    check_distribution("softmax", small, 5, params(0.7f, 0, 1.0f, 0.0f, 1), 100000, 0.006);
    check_distribution("top_k=3", small, 5, params(1.3f, 3, 1.0f, 0.0f, 2), 100000, 0.006);
    const float four[4] = {logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f)};
    check_distribution("top_p=0.75", four, 4, params(1.0f, 0, 0.75f, 0.0f, 3), 50000, 0.008);
    check_distribution("min_p=0.2", four, 4, params(1.0f, 0, 1.0f, 0.2f, 4), 50000, 0.008);
    check_distribution("top_p=0.4", four, 4, params(1.0f, 0, 0.4f, 0.0f, 5), 1000, 0.0);
    tern_rng r;
    tern_rng_seed(&r, 99);
    float l[300];
    for (int t = 0; t < 16; t++) {
        random_logits(&r, l, 300, 4.0f);
        tern_sampling p = params(0.5f + tern_rng_uniform(&r) * 1.5f,
                                 t % 2 ? 2 + (int32_t)tern_rng_below(&r, 30) : 0,
                                 t % 3 ? 0.5f + 0.45f * tern_rng_uniform(&r) : 1.0f,
                                 t % 4 >= 2 ? 0.2f * tern_rng_uniform(&r) : 0.0f, (uint64_t)t);
        char name[96];
        snprintf(name, sizeof name, "random %d (T %.2f k %d p %.3f min_p %.3f)", t,
                 (double)p.temperature, (int)p.top_k, (double)p.top_p, (double)p.min_p);
        check_distribution(name, l, 300, p, 20000, 0.02);
    }
}

/* presence, frequency and logit bias (OpenAI's definitions) and the repetition penalty change
 * the distribution exactly as defined: draws follow the reference chain on the adjusted logits */
static void test_penalties(void)
{
    const float l[6] = {2.0f, 1.0f, 0.5f, 0.0f, -0.5f, 1.5f};
    /* prompt 0 1, then generated 1 1 2 5: counts 1 -> 2, 2 -> 1, 5 -> 1 (the prompt's 0 and 1
     * do not count) */
    const int32_t hist[6] = {0, 1, 1, 1, 2, 5};
    tern_logit_bias bias[2] = {{3, 2.25f}, {0, -1.0f}};
    tern_sampling sp = params(0.9f, 0, 1.0f, 0.0f, 77);
    sp.presence_penalty = 0.5f, sp.frequency_penalty = 0.25f;
    sp.logit_bias = bias, sp.n_logit_bias = 2;
    sp.repeat_penalty = 1.25f, sp.repeat_last_n = 2; /* window: ids 2 and 5 */
    float want[6];
    memcpy(want, l, sizeof want);
    want[0] += -1.0f;                      /* bias */
    want[1] += -2 * 0.25f - 0.5f;          /* frequency 2, presence */
    want[2] = 0.5f / 1.25f - 0.25f - 0.5f; /* repetition, then frequency 1 and presence */
    want[3] += 2.25f;                      /* bias */
    want[5] = 1.5f / 1.25f - 0.25f - 0.5f;
    static tern_adjust adj[64], scratch[64];
    int32_t n = tern_row_adjust(&sp, hist, 6, 2, 6, scratch, adj, 64);
    CHECK(n == 5 && adj[0].id == 0 && adj[4].id == 5 && adj[2].rep && adj[4].rep && !adj[1].rep);
    /* the fold's adjusted values are exactly these */
    tern_row_params rp;
    tern_row_params_make(&sp, 0, &rp);
    CHECK(rp.gumbel && rp.n_cand == 1); /* a Gumbel row keeps its best candidate only */
    rp.adj = adj, rp.n_adj = n;
    rp.n_cand = TERN_SAMPLE_CANDS; /* here every candidate, to read the adjusted values */
    tern_row_sum sum;
    tern_row_sum_init(&sum);
    tern_row_sum_fold(&sum, &rp, l, 0, 6);
    CHECK(sum.n_cand == 6);
    for (int32_t j = 0; j < sum.n_cand; j++) {
        const tern_cand *c = &sum.cand[j];
        CHECKF(c->v == want[c->id], "id %d: adjusted %g, expected %g", c->id, (double)c->v,
               (double)want[c->id]);
        CHECK(c->raw == l[c->id]);
    }
    /* and draws over positions follow softmax(want / T) */
    double prob[6];
    tern_sampling ref = sp;
    ref.logit_bias = NULL, ref.n_logit_bias = 0, ref.presence_penalty = 0,
    ref.frequency_penalty = 0;
    ref.repeat_penalty = 1.0f;
    reference_probs(want, 6, &ref, prob);
    long hits[6] = {0};
    int32_t cuts[3] = {0, 4, 6};
    g_n_prompt = 2;
    for (int i = 0; i < 40000; i++)
        hits[draw_split(l, 6, &sp, i, hist, 6, cuts, 3, NULL, NULL).token]++;
    for (int i = 0; i < 6; i++)
        CHECKF(fabs(hits[i] / 40000.0 - prob[i]) < 0.01, "id %d: frequency %.4f, expected %.4f", i,
               hits[i] / 40000.0, prob[i]);
    /* greedy: a +100 bias wins, a -100 bias loses */
    tern_sampling g = params(0.0f, 0, 1.0f, 0.0f, 0);
    tern_logit_bias up = {4, 100.0f}, down = {0, -100.0f};
    g.logit_bias = &up, g.n_logit_bias = 1;
    CHECK(draw_split(l, 6, &g, 0, hist, 6, cuts, 3, NULL, NULL).token == 4);
    g.logit_bias = &down;
    CHECK(draw_split(l, 6, &g, 0, hist, 6, cuts, 3, NULL, NULL).token == 5);
    g_n_prompt = 0;
    /* validation */
    tern_status st = {0};
    tern_sampling v = params(0.0f, 0, 1.0f, 0.0f, 0);
    v.presence_penalty = 2.5f;
    CHECK(tern_sampling_validate(&v, &st) == TERN_EINVAL && strstr(st.msg, "presence_penalty"));
    v.presence_penalty = 0, v.frequency_penalty = -3;
    CHECK(tern_sampling_validate(&v, &st) == TERN_EINVAL && strstr(st.msg, "frequency_penalty"));
    tern_logit_bias big = {1, 101.0f};
    v.frequency_penalty = 0, v.logit_bias = &big, v.n_logit_bias = 1;
    CHECK(tern_sampling_validate(&v, &st) == TERN_EINVAL && strstr(st.msg, "logit_bias"));
}

/* every split of the vocabulary gives bitwise the same record and choice */
static void test_split_invariance(void)
{
    enum { V = 4096 };
    static float l[V];
    tern_rng r;
    tern_rng_seed(&r, 2024);
    int32_t hist[200];
    int resolved_n = 0, full_n = 0;
    for (int t = 0; t < 60; t++) {
        random_logits(&r, l, V, t % 3 == 0 ? 12.0f : 3.0f); /* peaked and flat */
        for (int i = 0; i < 200; i++) hist[i] = (int32_t)tern_rng_below(&r, V);
        tern_sampling sp =
            params(t % 5 == 0 ? 0.0f : 0.3f + tern_rng_uniform(&r) * 1.2f,
                   t % 4 == 1 ? 1 + (int32_t)tern_rng_below(&r, 200) : 0,
                   t % 3 ? 0.5f + 0.5f * tern_rng_uniform(&r) : 1.0f,
                   t % 4 == 2 ? 0.1f * tern_rng_uniform(&r) : 0.0f, tern_rng_next(&r));
        if (t % 2) sp.repeat_penalty = 1.1f;
        static tern_logit_bias lb[8];
        if (t % 3 == 1) {
            sp.presence_penalty = 0.4f, sp.frequency_penalty = 0.3f;
            for (int j = 0; j < 8; j++)
                lb[j] = (tern_logit_bias){(int32_t)tern_rng_below(&r, V), (float)(j - 4) * 1.5f};
            sp.logit_bias = lb, sp.n_logit_bias = 8;
        }
        g_n_prompt = 120; /* the last 80 of the 200 history ids are generated */
        sp.n_logprobs = t % 7 == 0 ? 0 : 1 + t % 20;
        if (t == 7) sp.top_p = 0.9f, sp.top_k = 40, sp.min_p = 0.05f, sp.temperature = 0.8f;
        int32_t one[2] = {0, V};
        tern_row_sum ref;
        bool ok_ref;
        tern_pick a = draw_split(l, V, &sp, 100 + t, hist, 200, one, 2, &ref, &ok_ref);
        resolved_n += ok_ref, full_n += !ok_ref;
        for (int k = 2; k <= 5; k++) {
            int32_t cuts[8] = {0};
            for (int c = 1; c < k; c++) {
                int32_t lo = cuts[c - 1], room = (V - lo) / 16 - (k - c);
                cuts[c] = lo + 16 * (room > 0 ? (int32_t)tern_rng_below(&r, (uint64_t)room) : 0);
            }
            cuts[k] = V;
            tern_row_sum s;
            bool ok;
            tern_pick b = draw_split(l, V, &sp, 100 + t, hist, 200, cuts, k + 1, &s, &ok);
            CHECKF(memcmp(&s, &ref, sizeof s) == 0, "t %d, %d slices: records differ", t, k);
            CHECKF(a.token == b.token && ok == ok_ref, "t %d: token %d vs %d", t, a.token, b.token);
            CHECK(a.logprob == b.logprob && a.n_top == b.n_top);
        }
        /* log-probabilities: an independent log-softmax of the raw logits */
        if (sp.n_logprobs > 0) {
            long double m = -INFINITY, z = 0;
            for (int i = 0; i < V; i++) m = l[i] > m ? l[i] : m;
            for (int i = 0; i < V; i++) z += expl((long double)l[i] - m);
            double want = (double)((long double)l[a.token] - m - logl(z));
            CHECKF(fabs(a.logprob - want) < 1e-5, "logprob %.7f, expected %.7f", a.logprob, want);
            CHECK(a.n_top == sp.n_logprobs);
            for (int j = 1; j < a.n_top; j++) CHECK(a.top[j - 1].logprob >= a.top[j].logprob);
            double top0 = (double)((long double)l[a.top[0].id] - m - logl(z));
            CHECK(fabs(a.top[0].logprob - top0) < 1e-5);
        }
    }
    printf("split invariance: %d rows resolved from candidates, %d needed the full row\n",
           resolved_n, full_n);
    CHECK(resolved_n > 10 && full_n > 0); /* both paths were exercised */
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void bench_vocab(void)
{
    enum { N = 128256 };
    static float l[N];
    tern_rng r;
    tern_rng_seed(&r, 5);
    random_logits(&r, l, N, 8.0f);
    const char *names[4] = {"greedy", "T 0.8 top-k 40", "T 0.8 top-p 0.9 (untruncated Gumbel off)",
                            "T 0.8 (Gumbel over all)"};
    tern_sampling sps[4] = {params(0, 0, 1, 0, 1), params(0.8f, 40, 1, 0, 1),
                            params(0.8f, 0, 0.9f, 0, 1), params(0.8f, 0, 1, 0, 1)};
    for (int v = 0; v < 4; v++) {
        tern_row_params rp;
        tern_row_params_make(&sps[v], 0, &rp);
        rp.n_adj = 0, rp.adj = NULL;
        double t0 = now_s();
        tern_row_sum s;
        for (int i = 0; i < 10; i++) {
            tern_row_sum_init(&s);
            tern_row_sum_fold(&s, &rp, l, 0, N);
        }
        printf("fold of a 128256-token row, %s: %.3f ms\n", names[v], (now_s() - t0) * 100);
    }
}

int main(void)
{
    g_scratch = malloc(sizeof(tern_cand) * 128256);
    test_validation();
    test_greedy_and_penalty();
    test_distributions();
    test_penalties();
    test_split_invariance();
    bench_vocab();
    free(g_scratch);
    return tern_test_finish("test_sampler");
}
