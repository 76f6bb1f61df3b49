/* plan.c: see plan.h. */
#include "dist/plan.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

double tern_plan_layer_cost(const tern_hparams *hp)
{
    /* ternary weights at 2 bits (the kernels stream 2-bit codes) plus the norms; the MACs
     * are proportional to the same element count, so bytes stand for both */
    double d = hp->d, ff = hp->n_ff, kv = (double)hp->n_head_kv * hp->head_dim;
    double elems = d * d * 2 + d * kv * 2 + d * ff * 3;
    return elems / 4.0 + (3 * d + ff) * 4.0;
}

double tern_plan_head_cost(const tern_hparams *hp)
{
    return (double)hp->n_vocab * hp->d * 2.0;
}

/* Splits layers [l0, L) over ranks 1..n_ranks-1, each at least one layer, minimizing the
 * slowest worker's time (layer cost / speed); fills s/e[1..] and returns that time. */
static double balance_workers(double lc, int l0, int L, int n_ranks, const double *speed,
                              int32_t *s, int32_t *e)
{
    const int W = n_ranks - 1;
    double min_sp = 1.0;
    for (int r = 1; speed && r < n_ranks; r++)
        min_sp = r == 1 || speed[r] < min_sp ? speed[r] : min_sp;
    if (!(min_sp > 0)) min_sp = 1.0;
    double lo = 0, hi = lc * (L - l0) / min_sp * 1.01, best = hi;
    int32_t bs[TERN_PLAN_MAX], be[TERN_PLAN_MAX];
    for (int it = 0; it < 100; it++) {
        double T = it == 0 ? hi : 0.5 * (lo + hi);
        int l = l0;
        bool ok = true;
        double worst = 0;
        for (int r = 1; r <= W && ok; r++) {
            double sp = speed && speed[r] > 0 ? speed[r] : 1.0, cost = lc;
            bs[r] = l++;
            if (r == W) {
                cost = lc * (L - bs[r]);
                l = L;
            } else {
                while (l < L - (W - r) && (cost + lc) / sp <= T) cost += lc, l++;
            }
            be[r] = l;
            ok = cost / sp <= T;
            if (cost / sp > worst) worst = cost / sp;
        }
        if (ok) {
            hi = T, best = worst;
            memcpy(s + 1, bs + 1, sizeof(int32_t) * (size_t)W);
            memcpy(e + 1, be + 1, sizeof(int32_t) * (size_t)W);
        } else {
            lo = T;
        }
    }
    return best;
}

tern_code tern_plan_make(const char *spec, int n_ranks, const tern_hparams *hp, const double *speed,
                         int32_t *start, int32_t *end, tern_status *st)
{
    const int L = hp->n_layer;
    if (n_ranks < 1 || n_ranks > L + 1)
        return tern_status_set(st, TERN_EINVAL, "plan: ranks: got %d, expected 1..%d (layers + 1)",
                               n_ranks, L + 1);
    if (n_ranks == 1) {
        start[0] = 0, end[0] = L;
        return TERN_OK;
    }
    if (!spec || !strcmp(spec, "even")) {
        start[0] = end[0] = 0;
        int W = n_ranks - 1;
        for (int w = 0; w < W; w++) {
            start[w + 1] = (int32_t)((int64_t)L * w / W);
            end[w + 1] = (int32_t)((int64_t)L * (w + 1) / W);
        }
        return TERN_OK;
    }
    if (!strcmp(spec, "auto")) {
        /* rank 0 carries the head and may take a prefix of k0 layers; for each k0 the other
         * layers are split over the workers as evenly as their speeds allow (min-max by
         * binary search on the stage time). The plan with the smallest slowest stage wins,
         * ties going to the one whose slowest worker is fastest: when the head alone is the
         * bottleneck, the workers still share the layers evenly. */
        double lc = tern_plan_layer_cost(hp), hc = tern_plan_head_cost(hp);
        const int W = n_ranks - 1;
        double best_all = -1, best_w = -1;
        int32_t ws[TERN_PLAN_MAX], we[TERN_PLAN_MAX];
        for (int k0 = 0; k0 <= L - W; k0++) {
            double sp0 = speed && speed[0] > 0 ? speed[0] : 1.0;
            double t0 = (hc + lc * k0) / sp0;
            if (best_all >= 0 && t0 > best_all) break; /* only grows with k0 */
            double tw = balance_workers(lc, k0, L, n_ranks, speed, ws, we);
            double t_all = t0 > tw ? t0 : tw;
            if (best_all < 0 || t_all < best_all * (1 - 1e-12) ||
                (t_all <= best_all * (1 + 1e-12) && tw < best_w * (1 - 1e-12))) {
                best_all = t_all, best_w = tw;
                start[0] = 0, end[0] = k0;
                memcpy(start + 1, ws + 1, sizeof(int32_t) * (size_t)W);
                memcpy(end + 1, we + 1, sizeof(int32_t) * (size_t)W);
            }
        }
        return TERN_OK;
    }
    /* explicit first layers of ranks 1..N-1 */
    const char *p = spec;
    int32_t firsts[TERN_PLAN_MAX];
    int n = 0;
    while (*p) {
        char *e;
        errno = 0;
        long v = strtol(p, &e, 10);
        if (e == p || errno || n >= TERN_PLAN_MAX)
            return tern_status_set(
                st, TERN_EINVAL, "plan: --split: got '%s', expected even, auto or L1,L2,...", spec);
        firsts[n++] = (int32_t)v;
        p = *e == ',' ? e + 1 : e;
        if (*e && *e != ',')
            return tern_status_set(
                st, TERN_EINVAL, "plan: --split: got '%s', expected comma-separated layers", spec);
    }
    if (n != n_ranks - 1)
        return tern_status_set(
            st, TERN_EINVAL,
            "plan: --split: got %d layer starts, expected %d (one per worker rank)", n,
            n_ranks - 1);
    start[0] = 0;
    for (int r = 1; r < n_ranks; r++) {
        int32_t prev = r == 1 ? 0 : firsts[r - 2];
        if (firsts[r - 1] < prev || firsts[r - 1] >= L || (r > 1 && firsts[r - 1] <= prev))
            return tern_status_set(st, TERN_EINVAL,
                                   "plan: --split: layer %d for rank %d: got it out of order, "
                                   "expected increasing starts in 0..%d",
                                   firsts[r - 1], r, L - 1);
        start[r] = firsts[r - 1];
        end[r - 1] = start[r];
    }
    end[n_ranks - 1] = L;
    return TERN_OK;
}
