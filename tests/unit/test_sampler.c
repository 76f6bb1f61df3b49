/* test_sampler.c: greedy and top-k=1 are argmax, seeds reproduce, empirical frequencies match a
 * brute-force reference of the whole chain (top-k, temperature, top-p, min-p), repetition
 * penalty, validation messages, and the per-token cost on a 128k vocabulary (printed). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "harness.h"
#include "ternpipe/rng.h"
#include "ternpipe/sampler.h"

static tern_sampler *make(const tern_sampling *p, int32_t n_vocab)
{
    tern_sampler *s = NULL;
    tern_status st = {0};
    tern_code rc = tern_sampler_create(&s, p, n_vocab, &st);
    CHECKF(rc == TERN_OK, "%s", st.msg);
    return s;
}

static tern_sampling params(float temp, int32_t top_k, float top_p, float min_p, uint64_t seed)
{
    tern_sampling p;
    tern_sampling_default(&p);
    p.temperature = temp;
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    p.seed = seed;
    return p;
}

static void random_logits(tern_rng *r, float *l, int32_t n, float scale)
{
    for (int32_t i = 0; i < n; i++) l[i] = (tern_rng_uniform(r) * 2.0f - 1.0f) * scale;
}

static int32_t ref_argmax(const float *l, int32_t n)
{
    int32_t b = 0;
    for (int32_t i = 1; i < n; i++)
        if (l[i] > l[b]) b = i;
    return b;
}

static void test_defaults_and_validation(void)
{
    tern_sampling p;
    tern_sampling_default(&p);
    CHECK(p.temperature == 0.0f && p.top_k == 0 && p.top_p == 1.0f && p.min_p == 0.0f);
    CHECK(p.repeat_penalty == 1.0f && p.repeat_last_n == 64 && p.seed == 0);
    tern_status st = {0};
    CHECK(tern_sampling_validate(&p, &st) == TERN_OK);

    struct {
        const char *what;
        tern_sampling p;
    } bad[10];
    int nb = 0;
    for (int i = 0; i < 10; i++) tern_sampling_default(&bad[i].p);
    bad[nb].what = "top_p: got 1.5, expected 0 < top_p <= 1";
    bad[nb++].p.top_p = 1.5f;
    bad[nb].what = "top_p: got 0,";
    bad[nb++].p.top_p = 0.0f;
    bad[nb].what = "temperature: got -1,";
    bad[nb++].p.temperature = -1.0f;
    bad[nb].what = "temperature: got nan";
    bad[nb++].p.temperature = NAN;
    bad[nb].what = "top_k: got -2,";
    bad[nb++].p.top_k = -2;
    bad[nb].what = "min_p: got 2,";
    bad[nb++].p.min_p = 2.0f;
    bad[nb].what = "repeat_penalty: got 0,";
    bad[nb++].p.repeat_penalty = 0.0f;
    bad[nb].what = "repeat_penalty: got inf";
    bad[nb++].p.repeat_penalty = INFINITY;
    bad[nb].what = "repeat_last_n: got -2,";
    bad[nb++].p.repeat_last_n = -2;
    for (int i = 0; i < nb; i++) {
        tern_status_clear(&st);
        CHECK(tern_sampling_validate(&bad[i].p, &st) == TERN_EINVAL);
        CHECKF(strstr(st.msg, bad[i].what) != NULL, "expected '%s', got '%s'", bad[i].what, st.msg);
        tern_sampler *s = NULL;
        CHECK(tern_sampler_create(&s, &bad[i].p, 10, NULL) == TERN_EINVAL && s == NULL);
    }
    tern_sampler *s = NULL;
    CHECK(tern_sampler_create(&s, &p, 0, &st) == TERN_EINVAL && s == NULL);
    CHECKF(strstr(st.msg, "n_vocab: got 0") != NULL, "%s", st.msg);
    tern_sampler_free(NULL);
    /* boundaries are allowed */
    p.top_p = 1.0f;
    p.min_p = 1.0f;
    p.repeat_last_n = -1;
    p.top_k = 1000000;
    CHECK(tern_sampling_validate(&p, NULL) == TERN_OK);
}

static void test_greedy(void)
{
    enum { N = 1000 };
    static float l[N], copy[N];
    tern_rng r;
    tern_rng_seed(&r, 1);
    tern_sampling p;
    tern_sampling_default(&p);
    tern_sampler *s = make(&p, N);
    tern_sampling k1 = params(0.0f, 1, 1.0f, 0.0f, 7);
    tern_sampler *sk[3];
    const float temps[3] = {0.3f, 1.0f, 5.0f};
    for (int j = 0; j < 3; j++) {
        k1.temperature = temps[j];
        sk[j] = make(&k1, N);
    }
    int bad = 0;
    for (int t = 0; t < 200; t++) {
        random_logits(&r, l, N, 10.0f);
        memcpy(copy, l, sizeof l);
        int32_t want = ref_argmax(l, N);
        bad += tern_sampler_sample(s, l, NULL, 0) != want;
        for (int j = 0; j < 3; j++) bad += tern_sampler_sample(sk[j], l, NULL, 0) != want;
        bad += memcmp(copy, l, sizeof l) != 0;
    }
    CHECKF(bad == 0, "%d mismatches", bad);

    /* ties: the lowest id; NaN never wins; all -inf gives a valid id */
    for (int32_t i = 0; i < N; i++) l[i] = 1.0f;
    l[5] = l[900] = 3.0f;
    CHECK(tern_sampler_sample(s, l, NULL, 0) == 5);
    for (int j = 0; j < 3; j++) CHECK(tern_sampler_sample(sk[j], l, NULL, 0) == 5);
    l[2] = NAN;
    CHECK(tern_sampler_sample(s, l, NULL, 0) == 5);
    for (int32_t i = 0; i < N; i++) l[i] = -INFINITY;
    int32_t t = tern_sampler_sample(s, l, NULL, 0);
    CHECK(t >= 0 && t < N);
    tern_sampling hot = params(1.0f, 0, 0.9f, 0.1f, 3);
    tern_sampler *sh = make(&hot, N);
    t = tern_sampler_sample(sh, l, NULL, 0);
    CHECK(t >= 0 && t < N);
    for (int32_t i = 0; i < N; i++) l[i] = NAN;
    t = tern_sampler_sample(sh, l, NULL, 0);
    CHECK(t >= 0 && t < N);
    tern_sampler_free(sh);
    tern_sampler_free(s);
    for (int j = 0; j < 3; j++) tern_sampler_free(sk[j]);
}

static void test_seeds(void)
{
    enum { N = 1000, DRAWS = 200 };
    static float flat[N];
    for (int32_t i = 0; i < N; i++) flat[i] = 0.0f;
    const tern_sampling variants[3] = {params(1.0f, 0, 1.0f, 0.0f, 11),
                                       params(0.8f, 50, 0.95f, 0.0f, 11),
                                       params(1.2f, 0, 0.9f, 0.01f, 11)};
    for (int v = 0; v < 3; v++) {
        tern_sampling p = variants[v];
        tern_sampler *a = make(&p, N), *b = make(&p, N);
        p.seed = 12;
        tern_sampler *c = make(&p, N);
        int32_t sa[DRAWS];
        int same_ab = 0, same_ac = 0, distinct = 0;
        for (int i = 0; i < DRAWS; i++) {
            sa[i] = tern_sampler_sample(a, flat, NULL, 0);
            int32_t tb = tern_sampler_sample(b, flat, NULL, 0);
            int32_t tc = tern_sampler_sample(c, flat, NULL, 0);
            same_ab += sa[i] == tb;
            same_ac += sa[i] == tc;
            distinct += i > 0 && sa[i] != sa[i - 1];
        }
        CHECKF(same_ab == DRAWS, "variant %d: %d of %d equal", v, same_ab, DRAWS);
        CHECKF(same_ac < DRAWS / 10, "variant %d: different seeds agree %d times", v, same_ac);
        CHECK(distinct > DRAWS / 2);
        /* reset reseeds: the same sequence again */
        p.seed = 11;
        tern_sampler_reset(c, &p);
        int again = 0;
        for (int i = 0; i < DRAWS; i++) again += tern_sampler_sample(c, flat, NULL, 0) == sa[i];
        CHECK(again == DRAWS);
        tern_sampler_free(a);
        tern_sampler_free(b);
        tern_sampler_free(c);
    }
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
    for (int32_t j = 0; j < m; j++) {
        e[j] = exp(((double)l[order[j]] - (double)l[order[0]]) / (double)p->temperature);
        z += e[j];
    }
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

/* Samples `draws` times and compares with the reference: no token outside its support, and
 * every frequency within tol of its probability. */
static void check_distribution(const char *name, const float *l, int32_t n, tern_sampling p,
                               int draws, double tol)
{
    double *prob = malloc((size_t)n * sizeof *prob);
    long *hits = calloc((size_t)n, sizeof *hits);
    reference_probs(l, n, &p, prob);
    tern_sampler *s = make(&p, n);
    if (!s) return;
    for (int i = 0; i < draws; i++) hits[tern_sampler_sample(s, l, NULL, 0)]++;
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
    tern_sampler_free(s);
    free(prob);
    free(hits);
}

static void test_distributions(void)
{
    /* softmax at temperature 0.7 on a small vocabulary: std of a frequency <= 0.0011 */
    const float small[5] = {1.0f, 2.0f, 0.5f, -1.0f, 1.5f};
    check_distribution("softmax", small, 5, params(0.7f, 0, 1.0f, 0.0f, 1), 200000, 0.005);
    check_distribution("top_k=3", small, 5, params(1.3f, 3, 1.0f, 0.0f, 2), 200000, 0.005);

    /* exclusions: probabilities 0.5, 0.3, 0.15, 0.05 at temperature 1 */
    const float four[4] = {logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f)};
    /* 0.5 < 0.75 <= 0.8: the nucleus is tokens 0 and 1 */
    check_distribution("top_p=0.75", four, 4, params(1.0f, 0, 0.75f, 0.0f, 3), 100000, 0.006);
    /* 0.15 >= 0.2 * 0.5 > 0.05: token 3 goes */
    check_distribution("min_p=0.2", four, 4, params(1.0f, 0, 1.0f, 0.2f, 4), 100000, 0.006);
    check_distribution("top_p=0.4", four, 4, params(1.0f, 0, 0.4f, 0.0f, 5), 1000, 0.0);
    {
        tern_sampling p = params(1.0f, 0, 0.75f, 0.0f, 6);
        tern_sampler *s = make(&p, 4);
        long hits[4] = {0};
        for (int i = 0; i < 20000; i++) hits[tern_sampler_sample(s, four, NULL, 0)]++;
        CHECK(hits[2] == 0 && hits[3] == 0 && hits[0] > 0 && hits[1] > 0);
        tern_sampler_free(s);
    }

    /* random chains against the reference, both the top-k path and the whole-vocabulary path */
    tern_rng r;
    tern_rng_seed(&r, 99);
    float l[40];
    for (int t = 0; t < 24; t++) {
        random_logits(&r, l, 40, 4.0f);
        tern_sampling p = params(0.5f + tern_rng_uniform(&r) * 1.5f,
                                 t % 2 ? 2 + (int32_t)tern_rng_below(&r, 30) : 0,
                                 t % 3 ? 0.5f + 0.45f * tern_rng_uniform(&r) : 1.0f,
                                 t % 4 >= 2 ? 0.2f * tern_rng_uniform(&r) : 0.0f, (uint64_t)t);
        char name[96];
        snprintf(name, sizeof name, "random %d (T %.2f k %d p %.3f min_p %.3f)", t,
                 (double)p.temperature, (int)p.top_k, (double)p.top_p, (double)p.min_p);
        check_distribution(name, l, 40, p, 60000, 0.012);
    }

    /* a large flat-ish vocabulary: the nucleus is too wide for the first top-p threshold */
    enum { BIG = 5000 };
    static float big[BIG];
    random_logits(&r, big, BIG, 1.0f);
    big[17] = 6.0f;
    big[4000] = 5.5f;
    check_distribution("big top_p=0.9", big, BIG, params(1.0f, 0, 0.9f, 0.0f, 7), 100000, 0.006);
    check_distribution("big top_p=0.3", big, BIG, params(1.0f, 0, 0.3f, 0.0f, 8), 50000, 0.008);
    check_distribution("big top_p+min_p", big, BIG, params(0.8f, 0, 0.95f, 0.05f, 9), 50000, 0.008);
    check_distribution("big min_p", big, BIG, params(1.0f, 0, 1.0f, 0.1f, 10), 50000, 0.008);
    check_distribution("big top_k", big, BIG, params(1.0f, 100, 0.9f, 0.0f, 11), 50000, 0.008);
}

static void test_repeat_penalty(void)
{
    float l[6] = {2.0f, 1.9f, -1.0f, -1.05f, 0.5f, 0.0f};
    float copy[6];
    memcpy(copy, l, sizeof l);
    tern_sampling p;
    tern_sampling_default(&p);
    p.repeat_penalty = 1.2f;
    tern_sampler *s = make(&p, 6);
    CHECK(tern_sampler_sample(s, l, NULL, 0) == 0);
    const int32_t h0[1] = {0};
    CHECK(tern_sampler_sample(s, l, h0, 1) == 1); /* 2.0 / 1.2 < 1.9 */
    CHECK(memcmp(copy, l, sizeof l) == 0);        /* the caller's logits are untouched */
    /* ids outside the vocabulary are ignored */
    const int32_t hbad[3] = {-5, 6, 1000};
    CHECK(tern_sampler_sample(s, l, hbad, 3) == 0);

    /* negative logits are multiplied: -1.0 * 1.2 < -1.05 */
    float neg[2] = {-1.0f, -1.05f};
    tern_sampler *s2 = make(&p, 2);
    CHECK(tern_sampler_sample(s2, neg, NULL, 0) == 0);
    CHECK(tern_sampler_sample(s2, neg, h0, 1) == 1);
    tern_sampler_free(s2);

    /* once per distinct token: 2.0 / 1.05 > 1.9, but 2.0 / 1.05^3 would not be */
    p.repeat_penalty = 1.05f;
    tern_sampler_reset(s, &p);
    const int32_t h3[3] = {0, 0, 0};
    CHECK(tern_sampler_sample(s, l, h3, 3) == 0);

    /* window: only the last repeat_last_n tokens count; -1 means all, 0 none */
    p.repeat_penalty = 1.2f;
    p.repeat_last_n = 2;
    tern_sampler_reset(s, &p);
    const int32_t hw[3] = {0, 4, 5};
    CHECK(tern_sampler_sample(s, l, hw, 3) == 0);
    p.repeat_last_n = -1;
    tern_sampler_reset(s, &p);
    CHECK(tern_sampler_sample(s, l, hw, 3) == 1);
    p.repeat_last_n = 0;
    tern_sampler_reset(s, &p);
    CHECK(tern_sampler_sample(s, l, hw, 3) == 0);

    /* with sampling: penalizing the favourite of a peaked distribution moves the mass */
    float peaked[3] = {5.0f, 0.0f, 0.0f};
    tern_sampling q = params(1.0f, 0, 1.0f, 0.0f, 5);
    q.repeat_penalty = 100.0f;
    tern_sampler *s3 = make(&q, 3);
    int zero = 0;
    for (int i = 0; i < 1000; i++) zero += tern_sampler_sample(s3, peaked, h0, 1) == 0;
    CHECKF(zero < 450, "token 0 drawn %d of 1000 times after penalty", zero);
    tern_sampler_free(s3);
    tern_sampler_free(s);
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Per-token cost on a Llama-3-sized vocabulary; printed, not checked (shared machines). */
static void bench_vocab(void)
{
    enum { N = 128256, REPS = 50 };
    float *l = malloc(N * sizeof *l);
    int32_t hist[64];
    tern_rng r;
    tern_rng_seed(&r, 5);
    for (int32_t i = 0; i < N; i++) {
        /* roughly normal logits (sum of uniforms), like an LM head's */
        float x = 0;
        for (int k = 0; k < 4; k++) x += tern_rng_uniform(&r);
        l[i] = (x - 2.0f) * 6.0f;
    }
    for (int i = 0; i < 64; i++) hist[i] = (int32_t)tern_rng_below(&r, N);
    const struct {
        const char *name;
        tern_sampling p;
    } cases[] = {
        {"greedy", params(0.0f, 0, 1.0f, 0.0f, 1)},
        {"T=0.8", params(0.8f, 0, 1.0f, 0.0f, 1)},
        {"T=0.8 top_k=40", params(0.8f, 40, 1.0f, 0.0f, 1)},
        {"T=0.8 top_k=40 top_p=0.95", params(0.8f, 40, 0.95f, 0.0f, 1)},
        {"T=0.8 top_p=0.9", params(0.8f, 0, 0.9f, 0.0f, 1)},
        {"T=1 top_p=0.99", params(1.0f, 0, 0.99f, 0.0f, 1)},
        {"T=0.8 min_p=0.05", params(0.8f, 0, 1.0f, 0.05f, 1)},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        tern_sampling p = cases[c].p;
        p.repeat_penalty = 1.1f;
        tern_sampler *s = make(&p, N);
        if (!s) continue;
        int32_t t = tern_sampler_sample(s, l, hist, 64);
        CHECK(t >= 0 && t < N);
        double us[REPS];
        for (int i = 0; i < REPS; i++) {
            double t0 = now_us();
            t = tern_sampler_sample(s, l, hist, 64);
            us[i] = now_us() - t0;
        }
        qsort(us, REPS, sizeof us[0], cmp_double);
        printf("sampler 128256 vocab, %-28s median %7.1f us/token\n", cases[c].name, us[REPS / 2]);
        tern_sampler_free(s);
    }
    free(l);
}

int main(void)
{
    test_defaults_and_validation();
    test_greedy();
    test_seeds();
    test_distributions();
    test_repeat_penalty();
    bench_vocab();
    return tern_test_finish("test_sampler");
}
