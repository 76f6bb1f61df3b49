/* sim.c: see sim.h. */
#include "pipeline/sim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline/scheduler.h"
#include "ternpipe/stats.h"

tern_code tern_sim_link_parse(const char *s, tern_sim_link *out, tern_status *st)
{
    static const struct {
        const char *name;
        double lat_us, gbs;
    } named[] = {{"shm", 2, 10}, {"10g", 30, 1.25}, {"25g", 20, 3.125}, {"100g", 10, 12.5}};
    for (size_t i = 0; i < sizeof named / sizeof named[0]; i++)
        if (!strcmp(s, named[i].name)) {
            *out = (tern_sim_link){named[i].lat_us * 1e-6, named[i].gbs};
            return TERN_OK;
        }
    double lat, gbs;
    char tail;
    if (sscanf(s, "%lf:%lf%c", &lat, &gbs, &tail) == 2 && lat >= 0 && gbs > 0) {
        *out = (tern_sim_link){lat * 1e-6, gbs};
        return TERN_OK;
    }
    return tern_status_set(st, TERN_EINVAL,
                           "simulate: link: got '%s', expected shm, 10g, 25g, 100g or LAT_US:GBPS",
                           s);
}

/* linear interpolation in a table (x ascending), linear extrapolation past its ends */
static double interp(const double *x, const double *y, int n, double v)
{
    if (n <= 0) return 0;
    if (n == 1) return y[0] * (v / (x[0] > 0 ? x[0] : 1));
    int i = 1;
    while (i < n - 1 && x[i] < v) i++;
    double t = (v - x[i - 1]) / (x[i] - x[i - 1]);
    double r = y[i - 1] + t * (y[i] - y[i - 1]);
    return r > 0 ? r : 0;
}

typedef struct sim_rec {
    double *now;
    double t_first, t_last;
    int32_t n;
    double *itl;
    int64_t *n_itl;
} sim_rec;

static void on_token(void *u, int32_t tok)
{
    (void)tok;
    sim_rec *r = u;
    double t = *r->now;
    if (r->n == 0)
        r->t_first = t;
    else
        r->itl[(*r->n_itl)++] = t - r->t_last;
    r->t_last = t;
    r->n++;
}

typedef struct inflight {
    bool busy;
    double t_back; /* arrival back at rank 0 */
    tern_step step;
} inflight;

/* relative speed of rank r: its own, times the share of cores it gets on its host */
static double speed_of(const tern_sim_opts *o, int r, int n_ranks)
{
    double sp = o->speed && o->speed[r] > 0 ? o->speed[r] : 1.0;
    if (o->cores_per_host > 0 && o->threads > 0) {
        int rph = o->ranks_per_host > 0 ? o->ranks_per_host : n_ranks;
        int first = r / rph * rph, on_host = n_ranks - first < rph ? n_ranks - first : rph;
        double want = (double)on_host * o->threads;
        if (want > o->cores_per_host) sp *= o->cores_per_host / want;
    }
    return sp;
}

static double hop_time(const tern_sim_opts *o, int from, int to, double bytes)
{
    int rph = o->ranks_per_host;
    bool same = rph <= 0 || from / rph == to / rph;
    const tern_sim_link *l = same ? &o->shm : &o->net;
    return l->latency_s + bytes / (l->bandwidth_gbs * 1e9);
}

tern_code tern_sim_run(const tern_sim_costs *c, const tern_sim_opts *o, tern_sim_result *res,
                       tern_status *st)
{
    const tern_plan *p = o->plan;
    const int N = p->n_ranks;
    tern_limits L;
    tern_code rc =
        tern_limits_compute(&L, N, c->n_vocab, c->d, c->n_layer, o->max_seqs, o->batch_tokens,
                            o->n_ctx, o->max_seqs * ((o->n_ctx + 31) / 32), o->inflight, st);
    if (rc) return rc;
    tern_sched *s = NULL;
    if ((rc = tern_sched_create(&s, &L, st))) return rc;
    inflight *mbs = calloc((size_t)L.inflight, sizeof *mbs);
    double *free_at = calloc((size_t)N, sizeof *free_at), *busy = calloc((size_t)N, sizeof *busy);
    int32_t *ids = calloc((size_t)L.batch_tokens, sizeof *ids);
    int32_t *prompt = calloc((size_t)o->npp, sizeof *prompt);
    sim_rec *recs = calloc((size_t)o->streams, sizeof *recs);
    double *itl = calloc((size_t)o->streams * (size_t)(o->ntg > 0 ? o->ntg : 1), sizeof *itl);
    double *ttft = calloc((size_t)o->streams, sizeof *ttft);
    double *hops = calloc(4096, sizeof *hops);
    tern_pick *picks = calloc((size_t)L.sample_rows, sizeof *picks);
    bool *ok = calloc((size_t)L.sample_rows, sizeof *ok);
    bool good =
        mbs && free_at && busy && ids && prompt && recs && itl && ttft && hops && picks && ok;
    for (int32_t i = 0; good && i < L.inflight; i++) {
        tern_step *t = &mbs[i].step;
        t->cap_seqs = L.step_entries;
        t->seqs = calloc((size_t)L.step_entries, sizeof *t->seqs);
        t->cap_pen = L.pen_ids;
        t->pen_ids = calloc((size_t)L.pen_ids, sizeof *t->pen_ids);
        good = t->seqs && t->pen_ids;
    }
    int64_t n_itl = 0, n_hops = 0, steps = 0;
    double now = 0, rank0_free = 0;
    if (!good) {
        rc = tern_status_set(st, TERN_ENOMEM, "simulate: out of memory");
        goto out;
    }
    for (int32_t i = 0; i < o->npp; i++) prompt[i] = (i * 31 + 7) % c->n_vocab;
    for (int32_t k = 0; k < o->streams; k++) {
        recs[k] = (sim_rec){.now = &now, .itl = itl, .n_itl = &n_itl};
        tern_request rq = {.prompt = prompt,
                           .n_prompt = o->npp,
                           .max_new = o->ntg,
                           .on_token = on_token,
                           .user = &recs[k]};
        tern_sampling_default(&rq.sampling);
        if ((rc = tern_sched_submit(s, &rq, NULL, st))) goto out;
    }
    const int last = tern_plan_last_layer_rank(p);
    const double row_bytes = (double)c->d * 4.0;
    int32_t n_inflight = 0;
    for (int64_t guard = 0; guard < (int64_t)1 << 40; guard++) {
        tern_sched_admit(s);
        /* launch while slots are free */
        for (;;) {
            if (n_inflight >= L.inflight) break;
            inflight *b = NULL;
            for (int32_t i = 0; i < L.inflight && !b; i++)
                if (!mbs[i].busy) b = &mbs[i];
            if (!b || !tern_sched_build(s, L.inflight - n_inflight, &b->step, ids)) break;
            const tern_step *t = &b->step;
            bool decodes = true;
            for (int32_t i = 0; i < t->n_seqs; i++)
                if (t->seqs[i].n_tokens > 1) decodes = false;
            double layer = t->n_tokens > 0 ? interp(c->tokens, decodes ? c->decode_s : c->prefill_s,
                                                    c->n_tok, t->n_tokens)
                                           : 0;
            double head_full = t->n_head > 0 ? interp(c->rows, c->head_s, c->n_rows, t->n_head) : 0;
            double norm = t->n_head > 0 ? interp(c->rows, c->norm_s, c->n_rows, t->n_head) : 0;
            double fold_full = c->fold_greedy_s * t->n_sample;
            double arr = 0;
            for (int r = 0; r < N; r++) {
                double sp = speed_of(o, r, N);
                double work = layer * (p->layer_end[r] - p->layer_start[r]);
                if (r == last) work += norm;
                double share = (double)(p->vocab_end[r] - p->vocab_start[r]) / c->n_vocab;
                /* rank 0's head slice runs at completion, below */
                if (r != 0) work += (head_full + fold_full) * share;
                if (r == 0) work += c->embed_tok_s * t->n_tokens;
                work /= sp;
                double start = r == 0 ? rank0_free : (arr > free_at[r] ? arr : free_at[r]);
                double end = start + work;
                if (r == 0)
                    rank0_free = end;
                else
                    free_at[r] = end;
                busy[r] += work;
                double bytes =
                    r < last ? row_bytes * t->n_tokens
                             : row_bytes * t->n_head + (double)t->n_sample * sizeof(tern_row_sum);
                double h = hop_time(o, r, (r + 1) % N, bytes);
                if (N > 1) hops[n_hops++ % 4096] = h;
                arr = N > 1 ? end + h : end;
            }
            b->t_back = arr;
            b->busy = true;
            n_inflight++;
        }
        if (n_inflight == 0) {
            if (tern_sched_idle(s)) break;
            /* queued work that nothing can admit or build: the limits cannot serve it */
            rc = tern_status_set(st, TERN_EINVAL,
                                 "simulate: %d streams of %d + %d tokens do not fit the limits",
                                 o->streams, o->npp, o->ntg);
            goto out;
        }
        /* complete the micro-batch that comes back first (they come back in order) */
        inflight *b = NULL;
        for (int32_t i = 0; i < L.inflight; i++)
            if (mbs[i].busy && (!b || mbs[i].t_back < b->t_back)) b = &mbs[i];
        const tern_step *t = &b->step;
        double sp0 = speed_of(o, 0, N);
        double share0 = (double)(p->vocab_end[0] - p->vocab_start[0]) / c->n_vocab;
        double head_full = t->n_head > 0 ? interp(c->rows, c->head_s, c->n_rows, t->n_head) : 0;
        double work = (head_full + c->fold_greedy_s * t->n_sample) * share0 / sp0;
        double start = b->t_back > rank0_free ? b->t_back : rank0_free;
        rank0_free = start + work;
        busy[0] += work;
        now = rank0_free;
        int32_t k = 0;
        for (int32_t i = 0; i < t->n_seqs; i++)
            if (t->seqs[i].flags & TERN_SEQ_SAMPLE) {
                picks[k] = (tern_pick){.token = 5};
                ok[k] = true;
                k++;
            }
        tern_sched_complete(s, t, picks, ok);
        b->busy = false;
        n_inflight--;
        steps += t->n_tokens > 0; /* release-only steps are not counted */
    }
    int64_t tokens = 0;
    double t_all_first = 0, wall = 0; /* wall: until the last token (not the last release) */
    for (int32_t k = 0; k < o->streams; k++) {
        tokens += recs[k].n;
        ttft[k] = recs[k].t_first;
        if (recs[k].t_first > t_all_first) t_all_first = recs[k].t_first;
        if (recs[k].t_last > wall) wall = recs[k].t_last;
    }
    res->wall_s = wall;
    res->tokens = tokens;
    res->steps = steps;
    res->tok_s = wall > 0 ? (double)tokens / wall : 0;
    res->decode_tok_s = wall > t_all_first && tokens > o->streams
                            ? (double)(tokens - o->streams) / (wall - t_all_first)
                            : 0;
    res->ttft_p50_s = tern_percentile(ttft, o->streams, 0.5);
    res->ttft_p99_s = tern_percentile(ttft, o->streams, 0.99);
    res->itl_p50_s = tern_percentile(itl, n_itl, 0.5);
    res->itl_p99_s = tern_percentile(itl, n_itl, 0.99);
    res->hop_p50_s = tern_percentile(hops, n_hops < 4096 ? n_hops : 4096, 0.5);
    if (res->busy)
        for (int r = 0; r < N; r++) res->busy[r] = wall > 0 ? busy[r] / wall : 0;
out:
    if (mbs)
        for (int32_t i = 0; i < L.inflight; i++) free(mbs[i].step.seqs), free(mbs[i].step.pen_ids);
    free(mbs), free(free_at), free(busy), free(ids), free(prompt), free(recs), free(itl);
    free(ttft), free(hops), free(picks), free(ok);
    tern_sched_free(s);
    return rc;
}
