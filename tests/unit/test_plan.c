/* test_plan.c: the layer plan. `auto` against an exhaustive search over every contiguous split
 * (small models, random speeds): the same slowest stage, and among such plans the fastest
 * slowest worker; the 2B-4T shape on 3 ranks gives each worker 15 layers; `even` and explicit
 * splits, and their errors. */
#include <math.h>
#include <string.h>

#include "dist/plan.h"
#include "harness.h"

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

/* stage times of a plan */
static void times(const tern_hparams *hp, int n, const double *sp, const int32_t *s,
                  const int32_t *e, double *all, double *workers)
{
    double lc = tern_plan_layer_cost(hp), hc = tern_plan_head_cost(hp);
    *all = 0, *workers = 0;
    for (int r = 0; r < n; r++) {
        double t = (lc * (e[r] - s[r]) + (r == 0 ? hc : 0)) / sp[r];
        if (t > *all) *all = t;
        if (r > 0 && t > *workers) *workers = t;
    }
}

/* exhaustive: rank 0 takes [0,k0), workers each >= 1 layer, contiguous */
static void brute(const tern_hparams *hp, int n, const double *sp, int r, int l, int32_t *s,
                  int32_t *e, double *best_all, double *best_w)
{
    int L = hp->n_layer;
    if (r == n) {
        if (l != L) return;
        double a, w;
        times(hp, n, sp, s, e, &a, &w);
        if (a < *best_all - 1e-9 || (fabs(a - *best_all) <= 1e-9 && w < *best_w - 1e-9))
            *best_all = a, *best_w = w;
        return;
    }
    int min_len = r == 0 ? 0 : 1, left = n - 1 - r;
    for (int len = min_len; l + len <= L - left; len++) {
        if (r == n - 1 && l + len != L) continue;
        s[r] = l, e[r] = l + len;
        brute(hp, n, sp, r + 1, l + len, s, e, best_all, best_w);
    }
}

int main(void)
{
    tern_status st = {0};
    int32_t s[TERN_PLAN_MAX], e[TERN_PLAN_MAX], bs[TERN_PLAN_MAX], be[TERN_PLAN_MAX];

    /* 2B-4T: the F16 head (657 MB) outweighs all 30 layers (520 MB): rank 0 runs none and
     * the workers split the layers evenly */
    tern_hparams b = {.n_vocab = 128256,
                      .d = 2560,
                      .n_layer = 30,
                      .n_ff = 6912,
                      .n_head = 20,
                      .n_head_kv = 5,
                      .head_dim = 128};
    CHECK(tern_plan_make("auto", 3, &b, NULL, s, e, &st) == TERN_OK);
    CHECKF(e[0] == 0 && s[1] == 0 && e[1] == 15 && s[2] == 15 && e[2] == 30,
           "2b4t auto np3: got r0 [0,%d) r1 [%d,%d) r2 [%d,%d)", e[0], s[1], e[1], s[2], e[2]);
    CHECK(tern_plan_make("auto", 7, &b, NULL, s, e, &st) == TERN_OK);
    for (int r = 1; r < 7; r++)
        CHECKF(e[r] - s[r] == 5, "2b4t auto np7: rank %d has %d layers", r, e[r] - s[r]);

    /* exhaustive comparison on small shapes with random speeds */
    uint64_t x = 88172645463325252ull;
    int cases = 0;
    for (int L = 1; L <= 9; L++)
        for (int n = 1; n <= L + 1 && n <= 5; n++)
            for (int rep = 0; rep < 6; rep++) {
                /* head cost from cheap to dominant */
                int vocab = rep % 3 == 0 ? 64 : rep % 3 == 1 ? 4096 : 200000;
                tern_hparams hp = shape(L, 256, 768, vocab);
                double sp[8];
                for (int r = 0; r < n; r++) {
                    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                    sp[r] = rep < 3 ? 1.0 : 0.5 + (double)(x % 1000) / 1000.0;
                }
                CHECK(tern_plan_make("auto", n, &hp, rep < 3 ? NULL : sp, s, e, &st) == TERN_OK);
                /* a valid plan: contiguous, covering, workers non-empty */
                int ok = s[0] == 0 && e[n - 1] == L;
                for (int r = 0; r < n; r++) ok &= e[r] >= s[r] && (r == 0 || n == 1 || e[r] > s[r]);
                for (int r = 1; r < n; r++) ok &= s[r] == e[r - 1];
                CHECKF(ok, "L %d n %d rep %d: invalid plan", L, n, rep);
                double a, w, ba = INFINITY, bw = INFINITY;
                times(&hp, n, sp, s, e, &a, &w);
                if (n == 1) {
                    CHECK(s[0] == 0 && e[0] == L);
                    continue;
                }
                brute(&hp, n, sp, 0, 0, bs, be, &ba, &bw);
                CHECKF(fabs(a - ba) <= 1e-9 * ba, "L %d n %d rep %d: slowest stage %.1f, best %.1f",
                       L, n, rep, a, ba);
                CHECKF(fabs(w - bw) <= 1e-9 * bw + 1e-9,
                       "L %d n %d rep %d: slowest worker %.1f, best %.1f", L, n, rep, w, bw);
                cases++;
            }
    CHECK(cases > 100);

    /* even and explicit */
    tern_hparams six = shape(6, 256, 768, 4096);
    CHECK(tern_plan_make("even", 3, &six, NULL, s, e, &st) == TERN_OK);
    CHECK(e[0] == 0 && s[1] == 0 && e[1] == 3 && s[2] == 3 && e[2] == 6);
    CHECK(tern_plan_make("2,4", 3, &six, NULL, s, e, &st) == TERN_OK);
    CHECK(e[0] == 2 && s[1] == 2 && e[1] == 4 && s[2] == 4 && e[2] == 6);
    CHECK(tern_plan_make("4,2", 3, &six, NULL, s, e, &st) != TERN_OK && strstr(st.msg, "--split"));
    CHECK(tern_plan_make("1,x", 3, &six, NULL, s, e, &st) != TERN_OK && strstr(st.msg, "--split"));
    CHECK(tern_plan_make("even", 8, &six, NULL, s, e, &st) != TERN_OK && strstr(st.msg, "ranks"));
    return tern_test_finish("test_plan");
}
