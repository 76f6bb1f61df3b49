/* plan.c: see plan.h. */
#include "pipeline/plan.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

tern_code tern_plan_init(tern_plan *p, int n_ranks, const tern_hparams *hp, tern_status *st)
{
    memset(p, 0, sizeof *p);
    if (n_ranks < 1)
        return tern_status_set(st, TERN_EINVAL, "plan: ranks: got %d, expected at least 1",
                               n_ranks);
    p->n_ranks = n_ranks;
    p->n_layer = hp->n_layer;
    p->n_vocab = hp->n_vocab;
    size_t n = (size_t)n_ranks;
    p->layer_start = calloc(n, sizeof(int32_t));
    p->layer_end = calloc(n, sizeof(int32_t));
    p->vocab_start = calloc(n, sizeof(int32_t));
    p->vocab_end = calloc(n, sizeof(int32_t));
    p->cost = calloc(n, sizeof(double));
    if (!p->layer_start || !p->layer_end || !p->vocab_start || !p->vocab_end || !p->cost) {
        tern_plan_free(p);
        return tern_status_set(st, TERN_ENOMEM, "plan: out of memory for %d ranks", n_ranks);
    }
    return TERN_OK;
}

void tern_plan_free(tern_plan *p)
{
    if (!p) return;
    free(p->layer_start), free(p->layer_end), free(p->vocab_start), free(p->vocab_end);
    free(p->cost);
    memset(p, 0, sizeof *p);
}

double tern_plan_layer_cost(const tern_hparams *hp)
{
    /* ternary weights at 2 bits (the kernels stream 2-bit codes) plus the norms */
    double d = hp->d, ff = hp->n_ff, kv = (double)hp->n_head_kv * hp->head_dim;
    double elems = d * d * 2 + d * kv * 2 + d * ff * 3;
    return elems / 4.0 + (3 * d + ff) * 4.0;
}

double tern_plan_head_row_cost(const tern_hparams *hp, tern_head_type type)
{
    /* --head-type q8_0: int8 rows and a float scale each (tern_i8mat_bytes), unless the table's
     * own Q8_0 blocks serve; else the table as it is (a Q8_0/Q6_K table's blocks' bytes per
     * row, or F16) */
    if (type == TERN_HEAD_Q8_0 && !tern_head_keeps_q8_0(hp, type))
        return (double)hp->d + (double)sizeof(float);
    const tern_type_traits *tr = tern_type_traits_of(hp->head_table);
    if (tr && tr->quant) return (double)hp->d / tr->blck * tr->bytes;
    return (double)hp->d * 2.0;
}

int tern_plan_last_layer_rank(const tern_plan *p)
{
    int last = 0;
    for (int r = 0; r < p->n_ranks; r++)
        if (p->layer_end[r] > p->layer_start[r]) last = r;
    return last;
}

double tern_plan_stage_costs(tern_plan *p, const tern_plan_costs *c, const double *speed)
{
    double worst = 0;
    for (int r = 0; r < p->n_ranks; r++) {
        double sp = speed && speed[r] > 0 ? speed[r] : 1.0;
        p->cost[r] = (c->layer * (p->layer_end[r] - p->layer_start[r]) +
                      c->head_row * (p->vocab_end[r] - p->vocab_start[r])) /
                     sp;
        if (p->cost[r] > worst) worst = p->cost[r];
    }
    return worst;
}

tern_code tern_plan_check(const tern_plan *p, tern_status *st)
{
    const int N = p->n_ranks;
    int32_t l = 0;
    for (int r = 0; r < N; r++) {
        if (p->layer_start[r] != l || p->layer_end[r] < l || p->layer_end[r] > p->n_layer)
            return tern_status_set(st, TERN_EINVAL,
                                   "plan: rank %d layers: got [%d, %d), expected to start at %d "
                                   "and end within %d",
                                   r, p->layer_start[r], p->layer_end[r], l, p->n_layer);
        l = p->layer_end[r];
    }
    if (l != p->n_layer)
        return tern_status_set(st, TERN_EINVAL, "plan: layers: got %d covered, expected %d", l,
                               p->n_layer);
    /* head rows in ring order: ranks 1..N-1, then 0 */
    int32_t v = 0;
    const int last = tern_plan_last_layer_rank(p);
    for (int k = 1; k <= N; k++) {
        int r = k % N;
        int32_t a = p->vocab_start[r], b = p->vocab_end[r];
        if (a != v || b < a || b > p->n_vocab || (b != p->n_vocab && b % TERN_PLAN_ROW_GRAIN))
            return tern_status_set(st, TERN_EINVAL,
                                   "plan: rank %d head rows: got [%d, %d), expected to start at "
                                   "%d and end at a multiple of %d or at %d",
                                   r, a, b, v, TERN_PLAN_ROW_GRAIN, p->n_vocab);
        if (r != 0 && b > a && r < last)
            return tern_status_set(st, TERN_EINVAL,
                                   "plan: rank %d holds head rows but comes before rank %d, which "
                                   "runs layers (the head follows the last layer)",
                                   r, last);
        v = b;
    }
    if (v != p->n_vocab)
        return tern_status_set(st, TERN_EINVAL, "plan: head rows: got %d covered, expected %d", v,
                               p->n_vocab);
    return TERN_OK;
}

/* ---- auto: layers then head rows, one linear sequence of work split over the ring ---- */

/* Greedy fill for a stage bound T: rank 0 takes layers [0, k0) and the rows [v0, V) its budget
 * leaves; ranks 1..N-1 take as many of the remaining units, in order, as fit. Greedy is optimal
 * for "does a split with every stage <= T exist" over a linear sequence. */
static bool fill(const tern_plan_costs *c, const double *sp, int k0, double T, tern_plan *p)
{
    const int N = p->n_ranks, L = p->n_layer, V = p->n_vocab, G = TERN_PLAN_ROW_GRAIN;
    double b0 = T * sp[0] - c->layer * k0;
    if (b0 < 0) return false;
    double maxrows = floor(b0 / c->head_row);
    int32_t v0 = maxrows >= V ? 0 : (int32_t)(ceil((V - maxrows) / G) * G);
    if (v0 > V) v0 = V;
    if (N == 1 && (k0 != L || v0 != 0)) return false;
    p->layer_start[0] = 0, p->layer_end[0] = k0;
    p->vocab_start[0] = v0, p->vocab_end[0] = V;
    int32_t l = k0, v = 0;
    for (int r = 1; r < N; r++) {
        double budget = T * sp[r];
        p->layer_start[r] = l;
        while (l < L && budget >= c->layer) budget -= c->layer, l++;
        p->layer_end[r] = l;
        p->vocab_start[r] = v;
        if (l == L && v < v0) {
            double rows = floor(budget / c->head_row);
            int32_t take = rows >= v0 - v ? v0 - v : (int32_t)(floor(rows / G) * G);
            v += take;
        }
        p->vocab_end[r] = v;
    }
    return l == L && v == v0;
}

static void plan_auto(const tern_plan_costs *c, const double *speed, tern_plan *p)
{
    const int N = p->n_ranks, L = p->n_layer;
    double min_sp = 1.0;
    double *spd = malloc(sizeof(double) * (size_t)N);
    if (!spd) return; /* the caller's check reports the empty plan */
    for (int r = 0; r < N; r++) {
        spd[r] = speed && speed[r] > 0 ? speed[r] : 1.0;
        if (r == 0 || spd[r] < min_sp) min_sp = spd[r];
    }
    double total = c->layer * L + c->head_row * p->n_vocab;
    double lo = 0, hi = total / min_sp * (1 + 1e-12) + c->layer + c->head_row * TERN_PLAN_ROW_GRAIN;
    int best_k0 = L;
    for (int it = 0; it < 200 && hi - lo > hi * 1e-13; it++) {
        double T = 0.5 * (lo + hi);
        int found = -1;
        for (int k0 = 0; k0 <= L && found < 0; k0++)
            if (fill(c, spd, k0, T, p)) found = k0;
        if (found >= 0)
            hi = T, best_k0 = found;
        else
            lo = T;
    }
    /* the smallest feasible bound found; recompute its split */
    bool ok = false;
    for (int k0 = best_k0; k0 <= L && !ok; k0++) ok = fill(c, spd, k0, hi, p);
    for (int k0 = 0; k0 <= L && !ok; k0++) ok = fill(c, spd, k0, hi * 2, p);
    free(spd);
}

/* ---- explicit specs ---- */

static tern_code parse_list(const char *s, size_t len, int32_t *out, int n, const char *what,
                            tern_status *st)
{
    char buf[4096];
    if (len >= sizeof buf)
        return tern_status_set(st, TERN_EINVAL,
                               "plan: --split %s: got %zu characters, expected "
                               "at most %zu",
                               what, len, sizeof buf - 1);
    memcpy(buf, s, len);
    buf[len] = 0;
    const char *p = buf;
    int k = 0;
    while (*p) {
        char *e;
        errno = 0;
        long v = strtol(p, &e, 10);
        if (e == p || errno || v < 0 || v > INT32_MAX || (*e && *e != ',') || k >= n)
            return tern_status_set(st, TERN_EINVAL,
                                   "plan: --split %s: got '%s', expected %d comma-separated "
                                   "non-negative integers (one per rank 1..%d)",
                                   what, buf, n, n);
        out[k++] = (int32_t)v;
        p = *e == ',' ? e + 1 : e;
    }
    if (k != n)
        return tern_status_set(st, TERN_EINVAL,
                               "plan: --split %s: got %d values, expected %d (one per rank 1..%d)",
                               what, k, n, n);
    return TERN_OK;
}

tern_code tern_plan_make(const char *spec, const tern_plan_costs *costs, const double *speed,
                         tern_plan *p, tern_status *st)
{
    const int N = p->n_ranks, L = p->n_layer, V = p->n_vocab;
    if (!spec || !*spec) spec = "auto";
    const char *colon = strchr(spec, ':');
    size_t llen = colon ? (size_t)(colon - spec) : strlen(spec);
    const char *head = colon ? colon + 1 : "";
    tern_code rc = TERN_OK;
    int32_t *tmp = calloc((size_t)N + 1, sizeof(int32_t));
    if (!tmp) return tern_status_set(st, TERN_ENOMEM, "plan: out of memory");
    for (int r = 0; r < N; r++) p->vocab_start[r] = p->vocab_end[r] = 0;
    if (llen == 4 && !strncmp(spec, "auto", 4)) {
        if (colon) {
            rc = tern_status_set(st, TERN_EINVAL,
                                 "plan: --split: got '%s', expected no head part with auto "
                                 "(auto places the head too)",
                                 spec);
            goto out;
        }
        plan_auto(costs, speed, p);
        goto check;
    }
    if (llen == 4 && !strncmp(spec, "even", 4)) {
        if (N == 1) {
            p->layer_start[0] = 0, p->layer_end[0] = L;
        } else {
            p->layer_start[0] = p->layer_end[0] = 0;
            int W = N - 1;
            for (int w = 0; w < W; w++) {
                p->layer_start[w + 1] = (int32_t)((int64_t)L * w / W);
                p->layer_end[w + 1] = (int32_t)((int64_t)L * (w + 1) / W);
            }
        }
    } else {
        if (N == 1) {
            rc = tern_status_set(st, TERN_EINVAL,
                                 "plan: --split: got '%s' for 1 rank, expected even or auto", spec);
            goto out;
        }
        if ((rc = parse_list(spec, llen, tmp, N - 1, "layers", st))) goto out;
        p->layer_start[0] = 0;
        for (int r = 1; r < N; r++) {
            int32_t prev = r == 1 ? 0 : tmp[r - 2];
            if (tmp[r - 1] < prev || tmp[r - 1] > L) {
                rc = tern_status_set(st, TERN_EINVAL,
                                     "plan: --split: layer %d for rank %d: got it out of order, "
                                     "expected non-decreasing starts in 0..%d",
                                     tmp[r - 1], r, L);
                goto out;
            }
            p->layer_start[r] = tmp[r - 1];
            p->layer_end[r - 1] = tmp[r - 1];
        }
        p->layer_end[N - 1] = L;
    }
    /* the head */
    if (!*head) {
        p->vocab_start[0] = 0, p->vocab_end[0] = V;
    } else if (!strcmp(head, "even")) {
        int last = tern_plan_last_layer_rank(p);
        int first = last > 0 ? last : 1; /* ranks first..N-1 then 0 */
        int nh = N - first + 1;
        if (N == 1) first = N, nh = 1;
        int32_t v = 0;
        for (int k = 0; k < nh; k++) {
            int r = (first + k) % N;
            int32_t e = k == nh - 1 ? V
                                    : (int32_t)((int64_t)V * (k + 1) / nh / TERN_PLAN_ROW_GRAIN *
                                                TERN_PLAN_ROW_GRAIN);
            if (e < v) e = v;
            p->vocab_start[r] = v, p->vocab_end[r] = e;
            v = e;
        }
    } else {
        if (N == 1) {
            rc = tern_status_set(st, TERN_EINVAL, "plan: --split: got a head part '%s' for 1 rank",
                                 head);
            goto out;
        }
        if ((rc = parse_list(head, strlen(head), tmp, N - 1, "head rows", st))) goto out;
        int64_t v = 0;
        for (int r = 1; r < N; r++) {
            p->vocab_start[r] = (int32_t)v;
            v += tmp[r - 1];
            if (v > V) {
                rc = tern_status_set(st, TERN_EINVAL,
                                     "plan: --split head rows: got %lld rows on ranks 1..%d, "
                                     "expected at most the vocabulary %d",
                                     (long long)v, r, V);
                goto out;
            }
            p->vocab_end[r] = (int32_t)v;
        }
        p->vocab_start[0] = (int32_t)v, p->vocab_end[0] = V;
    }
check:
    rc = tern_plan_check(p, st);
    if (!rc) tern_plan_stage_costs(p, costs, speed);
out:
    free(tmp);
    return rc;
}

void tern_plan_describe(const tern_plan *p, char *buf, size_t cap)
{
    size_t n = 0;
    buf[0] = 0;
    for (int r = 0; r < p->n_ranks && n + 1 < cap; r++) {
        int w = snprintf(buf + n, cap - n, "%s r%d", r ? "," : "", r);
        if (w < 0) return;
        n += (size_t)w;
        if (n + 1 >= cap) break;
        if (r == 0) {
            w = snprintf(buf + n, cap - n, " embed");
            n += w > 0 ? (size_t)w : 0;
        }
        if (n + 1 < cap && p->layer_end[r] > p->layer_start[r]) {
            w = snprintf(buf + n, cap - n, " layers [%d,%d)", p->layer_start[r], p->layer_end[r]);
            n += w > 0 ? (size_t)w : 0;
        }
        if (n + 1 < cap && p->vocab_end[r] > p->vocab_start[r]) {
            w = snprintf(buf + n, cap - n, " head [%d,%d)", p->vocab_start[r], p->vocab_end[r]);
            n += w > 0 ? (size_t)w : 0;
        }
        if (n >= cap) n = cap - 1;
    }
}
