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
        /* binary search the smallest stage time T for which a greedy contiguous fill works;
         * rank 0 carries the head and takes a prefix of layers only when it is cheap */
        double lc = tern_plan_layer_cost(hp), hc = tern_plan_head_cost(hp);
        double min_sp = 1.0;
        for (int r = 0; speed && r < n_ranks; r++)
            min_sp = r == 0 || speed[r] < min_sp ? speed[r] : min_sp;
        if (!(min_sp > 0)) min_sp = 1.0;
        double lo = 0, hi = (hc + lc * L) / min_sp * 1.01; /* every plan fits under it */
        int32_t bs[TERN_PLAN_MAX], be[TERN_PLAN_MAX];
        for (int it = 0; it < 100; it++) {
            double T = it == 0 ? hi : 0.5 * (lo + hi);
            int l = 0;
            bool ok = true;
            for (int r = 0; r < n_ranks && ok; r++) {
                double sp = speed ? speed[r] : 1.0, cost = r == 0 ? hc : 0;
                bs[r] = l;
                if (r == n_ranks - 1) {
                    cost += lc * (L - l);
                    l = L;
                } else {
                    /* a worker runs at least one layer; leave one for each later worker */
                    if (r > 0) cost += lc, l++;
                    while (l < L - (n_ranks - 1 - r) && (cost + lc) / sp <= T) cost += lc, l++;
                }
                be[r] = l;
                ok = cost / sp <= T;
            }
            if (ok) {
                hi = T;
                memcpy(start, bs, sizeof(int32_t) * (size_t)n_ranks);
                memcpy(end, be, sizeof(int32_t) * (size_t)n_ranks);
            } else {
                lo = T;
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
