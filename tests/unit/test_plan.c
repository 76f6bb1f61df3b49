/* test_plan.c: the plan of layers and head rows. `auto` against an exhaustive search over every
 * valid plan (small models, random speeds: the same slowest stage); the 2B-4T shape: auto
 * splits the head and beats the head-on-rank-0 plan; `even`, explicit layer and head splits,
 * and their errors. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "pipeline/plan.h"

static tern_hparams shape(int L, int d, int ff, int vocab)
{
    tern_hparams hp = {.n_vocab = vocab,
                       .d = d,
                       .n_layer = L,
                       .n_ff = ff,
                       .n_head = d / 64,
                       .n_head_kv = d / 256 > 0 ? d / 256 : 1,
                       .head_dim = 64};
    return hp;
}

typedef struct search {
    const tern_plan_costs *c;
    const double *sp;
    int N, L, G, V;
    double best;
} search;

static double rows_of(const search *s, int g0, int g1) /* granules [g0, g1) as rows */
{
    int a = g0 * TERN_PLAN_ROW_GRAIN, b = g1 * TERN_PLAN_ROW_GRAIN;
    if (b > s->V) b = s->V;
    if (a > s->V) a = s->V;
    return b - a;
}

/* ranks r..N-1 split the units [u, L + G0) (layers then granules) contiguously */
static void rec(search *s, int r, int u, int G0, double worst)
{
    int end = s->L + G0;
    if (r == s->N) {
        if (u == end && worst < s->best) s->best = worst;
        return;
    }
    for (int v = u; v <= end; v++) {
        if (r == s->N - 1 && v != end) continue;
        int l0 = u < s->L ? u : s->L, l1 = v < s->L ? v : s->L;
        int g0 = u > s->L ? u - s->L : 0, g1 = v > s->L ? v - s->L : 0;
        double t = (s->c->layer * (l1 - l0) + s->c->head_row * rows_of(s, g0, g1)) / s->sp[r];
        rec(s, r + 1, v, G0, t > worst ? t : worst);
    }
}

static double brute(search *s)
{
    s->best = INFINITY;
    for (int k0 = 0; k0 <= s->L; k0++)
        for (int t0 = 0; t0 <= s->G; t0++) {
            double t = (s->c->layer * k0 + s->c->head_row * rows_of(s, s->G - t0, s->G)) / s->sp[0];
            if (s->N == 1) {
                if (k0 == s->L && t0 == s->G && t < s->best) s->best = t;
                continue;
            }
            rec(s, 1, k0, s->G - t0, t);
        }
    return s->best;
}

int main(void)
{
    tern_status st = {0};
    unsigned seed = 7;
    /* auto == exhaustive optimum */
    int cases = 0;
    for (int N = 1; N <= 4; N++)
        for (int L = 1; L <= 4; L++)
            for (int G = 1; G <= 5; G++) {
                int V = G * TERN_PLAN_ROW_GRAIN - (G % 2 ? 5 : 0); /* a partial last granule too */
                tern_hparams hp = shape(L, 256, 512, V);
                for (int trial = 0; trial < 3; trial++) {
                    double sp[4];
                    for (int r = 0; r < N; r++) {
                        seed = seed * 1103515245u + 12345u;
                        sp[r] = 0.5 + (seed >> 16) % 1000 / 500.0;
                    }
                    tern_plan_costs c = {1000.0 + trial * 700.0, 30.0 + 40.0 * trial};
                    tern_plan p;
                    CHECK(tern_plan_init(&p, N, &hp, &st) == TERN_OK);
                    CHECKF(tern_plan_make("auto", &c, sp, &p, &st) == TERN_OK, "%s", st.msg);
                    double got = tern_plan_stage_costs(&p, &c, sp);
                    search s = {&c, sp, N, L, G, V, 0};
                    double want = brute(&s);
                    CHECKF(fabs(got - want) <= 1e-9 * want, "N %d L %d V %d: auto %.6f, best %.6f",
                           N, L, V, got, want);
                    CHECK(tern_plan_check(&p, &st) == TERN_OK);
                    tern_plan_free(&p);
                    cases++;
                }
            }
    CHECK(cases == 4 * 4 * 5 * 3);

    /* 2B-4T: auto splits the head and is faster than everything on rank 0 */
    tern_hparams big = shape(30, 2560, 6912, 128256);
    big.n_head = 20, big.n_head_kv = 5, big.head_dim = 128;
    tern_plan_costs c = {tern_plan_layer_cost(&big), tern_plan_head_row_cost(&big, TERN_HEAD_F16)};
    /* the head's bytes a row (tables.c's choice): F16 2d; --head-type q8_0 int8 and a float
     * scale, or a Q8_0 table's own blocks (as without it) */
    CHECK(tern_plan_head_row_cost(&big, TERN_HEAD_F16) == 2560 * 2);
    CHECK(tern_plan_head_row_cost(&big, TERN_HEAD_Q8_0) == 2560 + 4);
    tern_hparams bq = big;
    bq.head_table = TERN_TYPE_Q8_0;
    CHECK(tern_plan_head_row_cost(&bq, TERN_HEAD_Q8_0) == 2560 / 32 * 34);
    CHECK(tern_plan_head_row_cost(&bq, TERN_HEAD_F16) == 2560 / 32 * 34);
    bq.head_table = TERN_TYPE_Q6_K;
    CHECK(tern_plan_head_row_cost(&bq, TERN_HEAD_Q8_0) == 2560 + 4);
    for (int N = 2; N <= 31; N++) {
        tern_plan a, e;
        CHECK(tern_plan_init(&a, N, &big, &st) == TERN_OK && tern_plan_init(&e, N, &big, &st) == 0);
        CHECK(tern_plan_make("auto", &c, NULL, &a, &st) == TERN_OK);
        CHECK(tern_plan_make("even", &c, NULL, &e, &st) == TERN_OK);
        double ta = tern_plan_stage_costs(&a, &c, NULL), te = tern_plan_stage_costs(&e, &c, NULL);
        double total = c.layer * 30 + c.head_row * 128256;
        CHECKF(ta < te, "N %d: auto %.0f, even %.0f", N, ta, te);
        /* within one layer of the perfect split */
        CHECKF(ta <= total / N + c.layer, "N %d: auto %.0f, ideal %.0f", N, ta, total / N);
        if (N == 3) CHECK(a.vocab_end[0] - a.vocab_start[0] < 128256);
        tern_plan_free(&a), tern_plan_free(&e);
    }

    /* even and explicit plans on the 6-layer shape with 4096 rows */
    tern_hparams six = shape(6, 384, 1024, 4096);
    tern_plan p;
    CHECK(tern_plan_init(&p, 3, &six, &st) == TERN_OK);
    CHECK(tern_plan_make("even", &c, NULL, &p, &st) == TERN_OK);
    CHECK(p.layer_end[0] == 0 && p.layer_start[1] == 0 && p.layer_end[1] == 3 &&
          p.layer_end[2] == 6 && p.vocab_start[0] == 0 && p.vocab_end[0] == 4096);
    CHECK(tern_plan_make("1,5", &c, NULL, &p, &st) == TERN_OK);
    CHECK(p.layer_end[0] == 1 && p.layer_end[1] == 5 && p.layer_end[2] == 6);
    CHECK(tern_plan_make("2,4:even", &c, NULL, &p, &st) == TERN_OK);
    CHECK(p.vocab_start[2] == 0 && p.vocab_end[2] == 2048 && p.vocab_start[0] == 2048 &&
          p.vocab_end[0] == 4096 && p.vocab_end[1] == p.vocab_start[1]);
    CHECK(tern_plan_make("2,4:0,1024", &c, NULL, &p, &st) == TERN_OK);
    CHECK(p.vocab_end[2] == 1024 && p.vocab_start[0] == 1024);
    /* errors, one line each naming what is wrong */
    struct {
        const char *spec, *what;
    } bad[] = {{"2,4:16,0", "comes before rank 2"},
               {"2,4:0,10", "multiple of 16"},
               {"2,4:0,5000", "at most the vocabulary"},
               {"2,4:16", "got 1 values, expected 2"},
               {"4,2", "out of order"},
               {"2,7", "out of order"},
               {"auto:even", "no head part with auto"},
               {"x", "non-negative integers"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECKF(tern_plan_make(bad[i].spec, &c, NULL, &p, &st) == TERN_EINVAL, "%s accepted",
               bad[i].spec);
        CHECKF(strstr(st.msg, bad[i].what) != NULL, "%s: expected '%s' in '%s'", bad[i].spec,
               bad[i].what, st.msg);
    }
    tern_plan_free(&p);
    /* the head over every rank: layers on ranks 0 and 1 only, five head slices */
    CHECK(tern_plan_init(&p, 5, &six, &st) == TERN_OK);
    CHECKF(tern_plan_make("3,6,6,6:16,32,48,64", &c, NULL, &p, &st) == TERN_OK, "%s", st.msg);
    CHECK(p.vocab_end[1] == 16 && p.vocab_end[4] == 160 && p.vocab_start[0] == 160);
    CHECK(tern_plan_last_layer_rank(&p) == 1);
    char line[512];
    tern_plan_describe(&p, line, sizeof line);
    CHECKF(strstr(line, "r1 layers [3,6) head [0,16)") != NULL, "%s", line);
    tern_plan_free(&p);
    return tern_test_finish("test_plan");
}
