/* coordinator.c: rank 0's engine thread. Launches micro-batches built by the scheduler
 * (embedding lookup and rank 0's layers), sends them round the ring, and completes those that
 * come back: its own head slice (the last in vocabulary order), the full rows the head ranks
 * sent, the final choice of every sampled row (sampler.h), and the scheduler's bookkeeping.
 * With one rank, a micro-batch is launched and completed in place by the same code.
 *
 * Deadlines (issue 10): every wait is a test loop that gives up at the step deadline of the
 * oldest micro-batch in flight (step_bound: adaptive to the measured round trips, within a
 * floor and a ceiling), and a step blocks at most TERN_COORD_SLICE_S, so the serving loop
 * sees its stop flag even while the pipeline is stuck. A micro-batch past its deadline fails
 * the engine: every later step returns that error, no request gets another callback, and
 * closing the engine ends every rank instead of the shutdown step (engine.c).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline/engine-internal.h"
#include "ternpipe/log.h"

#define HOP_RING 4096

typedef struct mbatch {
    bool busy;
    double deadline; /* tern_comm_now() by which it must be back */
    tern_step step;
    int32_t *ids;       /* [batch_tokens] */
    float *x;           /* [batch_tokens][d] */
    float *hx;          /* [head_rows][d] (rank 0 runs the last layer) */
    tern_row_sum *sums; /* [sample_rows] */
    uint8_t *ctl;
    tern_req req_ctl, req_act, req_sum;
} mbatch;

struct tern_coord {
    tern_engine_fixed *f;
    tern_sched *sched;
    mbatch *mbs; /* [inflight] */
    int32_t n_inflight;
    uint64_t next_mb;
    tern_batch_seq *bs; /* [step_entries] */
    /* returns from the last rank, two sets */
    uint8_t *ret_ctl[2];
    float *ret_x[2];
    tern_row_sum *ret_sum[2];
    tern_req ret_rc[2], ret_ra[2], ret_rs[2];
    int ret_i;
    tern_step ret_step;
    void *arena;
    /* completion */
    tern_stage stage;
    float *full;    /* [full_rows][n_vocab] */
    float *staging; /* [full_rows][largest worker slice] */
    tern_req lreq;
    tern_pick *picks;
    bool *resolved;
    tern_cand *scratch; /* [n_vocab] */
    /* stats */
    double t_start, busy0;
    double *worker_busy;     /* [n_ranks] */
    uint64_t *worker_rss;    /* [n_ranks] */
    float *hops, *hops_sort; /* [HOP_RING] */
    int64_t n_hops, steps;
    bool workers_up;
    /* step deadline */
    double rate_s;            /* slowest recent round trip per token (decaying); 0: none yet */
    double shutdown_deadline; /* while the shutdown step travels */
    bool failed;
    tern_status fail; /* why, once failed */
};

/* The longest a micro-batch of n_tokens may be in flight: TERN_STEP_TIMEOUT_FACTOR times what
 * the slowest recent step took per token, never below the floor (scheduling noise, page
 * faults, a busy host) nor above the ceiling (--step-timeout), which also holds until a step
 * has been measured (the first prefill of a large model on a slow rank). */
static double step_bound(const tern_coord *c, int32_t n_tokens)
{
    double ceil_s = c->f->o.step_timeout_s > 0 ? c->f->o.step_timeout_s : TERN_STEP_TIMEOUT_CEIL_S;
    double floor_s = TERN_STEP_TIMEOUT_FLOOR_S < ceil_s ? TERN_STEP_TIMEOUT_FLOOR_S : ceil_s;
    if (c->rate_s <= 0) return ceil_s;
    double b = TERN_STEP_TIMEOUT_FACTOR * c->rate_s * (double)(n_tokens > 1 ? n_tokens : 1);
    return b < floor_s ? floor_s : b > ceil_s ? ceil_s : b;
}

static int fail(tern_coord *c, const char *fmt, ...)
{
    if (!c->failed) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->fail.msg, sizeof c->fail.msg, fmt, ap);
        va_end(ap);
        c->fail.code = TERN_EIO;
        c->failed = true;
        tern_log(TERN_LOG_ERROR, "%s", c->fail.msg);
    }
    return -1;
}

/* the oldest micro-batch in flight (returns come back in launch order) */
static mbatch *oldest(tern_coord *c)
{
    mbatch *o = NULL;
    for (int32_t i = 0; i < c->f->lim.inflight; i++)
        if (c->mbs[i].busy && (!o || c->mbs[i].step.id < o->step.id)) o = &c->mbs[i];
    return o;
}

static double deadline_now(tern_coord *c)
{
    mbatch *o = oldest(c);
    if (o) return o->deadline;
    if (c->shutdown_deadline > 0) return c->shutdown_deadline;
    return tern_comm_now() + step_bound(c, 0);
}

static int step_timeout(tern_coord *c)
{
    mbatch *o = oldest(c);
    double now = tern_comm_now();
    if (!o)
        return fail(c,
                    "engine: the shutdown step: got no answer from the ring within %.1f s, "
                    "expected one (a rank stopped answering)",
                    now - (c->shutdown_deadline - step_bound(c, 0)));
    return fail(c,
                "engine: step %llu (%d sequences, %d tokens): in flight for %.1f s, expected at "
                "most %.1f s (--step-timeout): a rank stopped answering",
                (unsigned long long)o->step.id, o->step.n_seqs, o->step.n_tokens,
                now - o->step.sent_at, o->deadline - o->step.sent_at);
}

static bool alloc_step(tern_step *s, const tern_limits *L)
{
    s->cap_seqs = L->step_entries;
    s->seqs = calloc((size_t)s->cap_seqs, sizeof *s->seqs);
    s->cap_pen = L->pen_ids;
    s->pen_ids = calloc((size_t)s->cap_pen, sizeof *s->pen_ids);
    s->cap_hops = L->n_ranks;
    s->hop_at = calloc((size_t)L->n_ranks, sizeof(double));
    s->busy_s = calloc((size_t)L->n_ranks, sizeof(double));
    s->peak_rss = calloc((size_t)L->n_ranks, sizeof(uint64_t));
    return s->seqs && s->pen_ids && s->hop_at && s->busy_s && s->peak_rss;
}

static void free_step(tern_step *s)
{
    free(s->seqs), free(s->pen_ids), free(s->hop_at), free(s->busy_s), free(s->peak_rss);
}

static void post_return(tern_coord *c, int k)
{
    const tern_limits *L = &c->f->lim;
    int last = c->f->n_ranks - 1;
    tern_comm_irecv_ctl(last, c->ret_ctl[k], L->ctl_bytes, &c->ret_rc[k]);
    tern_comm_irecv_act(last, c->ret_x[k], (size_t)L->head_rows * (size_t)L->d, &c->ret_ra[k]);
    tern_comm_irecv_sum(last, c->ret_sum[k], (size_t)L->sample_rows * sizeof(tern_row_sum),
                        &c->ret_rs[k]);
}

tern_code tern_coord_create(tern_coord **out, tern_engine_fixed *f, tern_sched *sched,
                            tern_status *st)
{
    *out = NULL;
    const tern_limits *L = &f->lim;
    const size_t d = (size_t)L->d, V = (size_t)L->n_vocab;
    tern_coord *c = calloc(1, sizeof *c);
    if (!c) return tern_status_set(st, TERN_ENOMEM, "engine: out of memory");
    c->f = f;
    c->sched = sched;
    c->workers_up = f->n_ranks > 1;
    tern_code rc = tern_stage_init(&c->stage, f, st);
    if (rc) {
        free(c);
        return rc;
    }
    c->mbs = calloc((size_t)L->inflight, sizeof *c->mbs);
    c->bs = calloc((size_t)L->step_entries, sizeof *c->bs);
    c->arena = malloc(L->arena_bytes);
    c->full = malloc((size_t)L->full_rows * V * sizeof(float));
    int32_t widest = 0;
    for (int r = 1; r < f->n_ranks; r++) {
        int32_t w = f->plan.vocab_end[r] - f->plan.vocab_start[r];
        if (w > widest) widest = w;
    }
    c->staging = widest ? malloc((size_t)L->full_rows * (size_t)widest * sizeof(float)) : NULL;
    c->picks = calloc((size_t)L->sample_rows, sizeof *c->picks);
    c->resolved = calloc((size_t)L->sample_rows, sizeof *c->resolved);
    c->scratch = malloc(V * sizeof *c->scratch);
    c->worker_busy = calloc((size_t)f->n_ranks, sizeof(double));
    c->worker_rss = calloc((size_t)f->n_ranks, sizeof(uint64_t));
    c->hops = calloc(HOP_RING, sizeof(float));
    c->hops_sort = calloc(HOP_RING, sizeof(float));
    bool ok = c->mbs && c->bs && c->arena && c->full && (!widest || c->staging) && c->picks &&
              c->resolved && c->scratch && c->worker_busy && c->worker_rss && c->hops &&
              c->hops_sort && alloc_step(&c->ret_step, L);
    for (int32_t i = 0; ok && i < L->inflight; i++) {
        mbatch *b = &c->mbs[i];
        ok = alloc_step(&b->step, L);
        b->ids = calloc((size_t)L->batch_tokens, sizeof *b->ids);
        b->x = calloc((size_t)L->batch_tokens * d, sizeof *b->x);
        b->hx = calloc((size_t)L->head_rows * d, sizeof *b->hx);
        b->sums = calloc((size_t)L->sample_rows, sizeof *b->sums);
        b->ctl = malloc(L->ctl_bytes);
        ok = ok && b->ids && b->x && b->hx && b->sums && b->ctl;
    }
    if (ok && f->n_ranks > 1)
        for (int k = 0; k < 2 && ok; k++) {
            c->ret_ctl[k] = malloc(L->ctl_bytes);
            c->ret_x[k] = malloc((size_t)L->head_rows * d * sizeof(float));
            c->ret_sum[k] = malloc((size_t)L->sample_rows * sizeof(tern_row_sum));
            ok = c->ret_ctl[k] && c->ret_x[k] && c->ret_sum[k];
        }
    if (!ok) {
        tern_coord_free(c);
        return tern_status_set(st, TERN_ENOMEM, "engine: out of memory for rank 0's buffers");
    }
    if (f->n_ranks > 1) post_return(c, 0);
    c->t_start = tern_comm_now();
    *out = c;
    return TERN_OK;
}

/* ------------------------------------------------------------------ completion */

/* logits, sampling and bookkeeping for a step whose head rows hx are final; false when the
 * head ranks' full rows did not come by deadline (<= 0: none) */
static bool complete(tern_coord *c, const tern_step *st, const float *hx, tern_row_sum *sums,
                     double deadline)
{
    tern_engine_fixed *f = c->f;
    const size_t V = (size_t)f->lim.n_vocab;
    double t0 = tern_comm_now();
    /* rank 0's slice, the last in vocabulary order */
    tern_stage_head(&c->stage, f, st, hx, sums, c->full, V, (size_t)f->v0);
    /* full rows from the head ranks, in ring order */
    if (st->n_full > 0)
        for (int r = 1; r < f->n_ranks; r++) {
            size_t w = (size_t)(f->plan.vocab_end[r] - f->plan.vocab_start[r]);
            if (!w) continue;
            size_t got = 0;
            tern_comm_irecv_logits(r, c->staging, (size_t)st->n_full * w, &c->lreq);
            /* on a time-out the receive stays posted: the engine fails and the job ends */
            if (!tern_comm_wait_until(&c->lreq, &got, deadline)) return false;
            if (got != (size_t)st->n_full * w)
                tern_die("engine: step %llu: rank %d sent %zu logits, expected %zu",
                         (unsigned long long)st->id, r, got, (size_t)st->n_full * w);
            for (int32_t j = 0; j < st->n_full; j++)
                memcpy(c->full + (size_t)j * V + (size_t)f->plan.vocab_start[r],
                       c->staging + (size_t)j * w, w * sizeof(float));
        }
    tern_stage_params(st, c->stage.params);
    int32_t k = 0, j = 0;
    for (int32_t i = 0; i < st->n_seqs; i++) {
        const tern_step_seq *q = &st->seqs[i];
        if (q->n_head == 0) continue;
        const tern_request *r = tern_sched_request(c->sched, q->slot);
        bool full = q->flags & TERN_SEQ_FULL;
        if (full && r->all_logits)
            for (int32_t h = 0; h < q->n_head; h++)
                tern_sched_deliver_logits(c->sched, q->slot, q->pos0 + q->n_tokens - q->n_head + h,
                                          c->full + (size_t)(j + h) * V);
        /* a speculative entry samples every row (never with full rows); others their last */
        int32_t rows = !(q->flags & TERN_SEQ_SAMPLE) ? 0 : q->flags & TERN_SEQ_SPEC ? q->n_head : 1;
        tern_grammar *gram = full ? tern_sched_grammar(c->sched, q->slot) : NULL;
        for (int32_t h = 0; h < rows; h++, k++) {
            if (gram) { /* constrained: drawn from the full row, masked */
                float *row = c->full + (size_t)(j + q->n_head - 1) * V;
                tern_grammar_mask(gram, tern_sched_vocab(c->sched), r->stop, r->n_stop, row,
                                  (int32_t)V);
                tern_row_resolve_full(row, &r->sampling, &c->stage.params[k], (int32_t)V,
                                      c->scratch, &c->picks[k]);
                c->resolved[k] = true;
                continue;
            }
            c->resolved[k] = tern_row_resolve(&sums[k], &r->sampling, &c->stage.params[k],
                                              (int32_t)V, &c->picks[k]);
            if (!c->resolved[k] && full) {
                tern_row_resolve_full(c->full + (size_t)(j + q->n_head - 1) * V, &r->sampling,
                                      &c->stage.params[k], (int32_t)V, c->scratch, &c->picks[k]);
                c->resolved[k] = true;
            }
        }
        if (full) j += q->n_head;
    }
    tern_sched_complete(c->sched, st, c->picks, c->resolved);
    c->steps++;
    c->busy0 += tern_comm_now() - t0;
    return true;
}

/* ------------------------------------------------------------------ launch and return */

static void launch(tern_coord *c, mbatch *b)
{
    tern_engine_fixed *f = c->f;
    tern_step *st = &b->step;
    const size_t d = (size_t)f->lim.d;
    double t0 = tern_comm_now();
    if (st->n_tokens > 0) tern_embed(f->c, b->ids, st->n_tokens, b->x);
    int32_t n = 0;
    for (int32_t i = 0; i < st->n_seqs; i++) {
        const tern_step_seq *q = &st->seqs[i];
        tern_status kst = {0};
        if (tern_stage_apply_kv(f->c, q, &kst))
            tern_die("engine: step %llu: %s", (unsigned long long)st->id, kst.msg);
        if (q->n_tokens > 0)
            c->bs[n++] =
                (tern_batch_seq){.slot = q->slot, .pos0 = q->pos0, .n_tokens = q->n_tokens};
    }
    if (n > 0 && f->plan.layer_end[0] > 0) {
        tern_status fst = {0};
        if (tern_forward(f->c, c->bs, n, b->x, &fst)) tern_die("engine: forward: %s", fst.msg);
    }
    const float *payload = b->x;
    size_t n_payload = (size_t)st->n_tokens * d, n_sums = 0;
    if (f->last_layer == 0) {
        int32_t nh = tern_stage_head_rows(st, c->stage.rows);
        tern_final_norm(f->c, b->x, c->stage.rows, nh, b->hx);
        for (int32_t k = 0; k < st->n_sample; k++) tern_row_sum_init(&b->sums[k]);
        payload = b->hx, n_payload = (size_t)nh * d, n_sums = (size_t)st->n_sample;
    }
    c->busy0 += tern_comm_now() - t0;
    if (f->n_ranks == 1) {
        complete(c, st, b->hx, b->sums, 0);
        return;
    }
    st->id = c->next_mb++;
    st->sent_at = tern_comm_now();
    b->deadline = st->sent_at + step_bound(c, st->n_tokens);
    size_t len = tern_ctl_pack_step(st, b->ctl, f->lim.ctl_bytes);
    if (!len) tern_die("engine: step header does not fit %zu bytes", f->lim.ctl_bytes);
    tern_comm_isend_ctl(1, b->ctl, len, &b->req_ctl);
    tern_comm_isend_act(1, payload, n_payload, &b->req_act);
    tern_comm_isend_sum(1, b->sums, n_sums * sizeof(tern_row_sum), &b->req_sum);
    b->busy = true;
    c->n_inflight++;
}

/* A step came back from the last rank: complete its micro-batch. until <= 0: only test;
 * otherwise wait up to until. 1: completed one (or the shutdown step came back), 0: nothing
 * yet, -1: the oldest micro-batch is past its deadline and the engine failed. */
static int poll_return(tern_coord *c, double until)
{
    tern_engine_fixed *f = c->f;
    int k = c->ret_i;
    size_t n_ctl = 0, n_act = 0, n_sum = 0;
    double dl = deadline_now(c);
    bool got = until <= 0 ? tern_comm_test(&c->ret_rc[k], &n_ctl)
                          : tern_comm_wait_until(&c->ret_rc[k], &n_ctl, until < dl ? until : dl);
    if (!got) return tern_comm_now() >= dl ? step_timeout(c) : 0;
    if (!tern_comm_wait_until(&c->ret_ra[k], &n_act, dl) ||
        !tern_comm_wait_until(&c->ret_rs[k], &n_sum, dl))
        return step_timeout(c);
    double t_recv = tern_comm_now();
    tern_status st = {0};
    tern_step *rs = &c->ret_step;
    if (tern_ctl_unpack_step(c->ret_ctl[k], n_ctl, &f->lim, rs, c->arena, f->lim.arena_bytes, &st))
        tern_die("engine: from rank %d: %s", f->n_ranks - 1, st.msg);
    if (n_act != (size_t)rs->n_head * (size_t)f->lim.d ||
        n_sum != (size_t)rs->n_sample * sizeof(tern_row_sum))
        tern_die("engine: step %llu came back with %zu activations and %zu record bytes, expected "
                 "%d head rows and %d records",
                 (unsigned long long)rs->id, n_act, n_sum, rs->n_head, rs->n_sample);
    /* post the next receive before computing the head, so the pipeline keeps moving */
    int k2 = 1 - k;
    if (!rs->shutdown) post_return(c, k2);
    c->ret_i = k2;
    for (int32_t h = 0; h < rs->n_hops && h + 1 < f->n_ranks; h++) {
        c->hops[c->n_hops++ % HOP_RING] = (float)rs->hop_at[h];
        c->worker_busy[h + 1] = rs->busy_s[h];
        c->worker_rss[h + 1] = rs->peak_rss[h];
    }
    c->hops[c->n_hops++ % HOP_RING] = (float)(t_recv - rs->sent_at);
    if (rs->shutdown) return 1;
    mbatch *b = NULL;
    for (int32_t i = 0; i < f->lim.inflight; i++)
        if (c->mbs[i].busy && c->mbs[i].step.id == rs->id) b = &c->mbs[i];
    if (!b)
        tern_die("engine: step %llu came back but is not in flight", (unsigned long long)rs->id);
    if (!tern_comm_wait_until(&b->req_ctl, NULL, dl) ||
        !tern_comm_wait_until(&b->req_act, NULL, dl) ||
        !tern_comm_wait_until(&b->req_sum, NULL, dl))
        return step_timeout(c);
    /* the step deadline learns from this round trip (per token: prefill and decode differ) */
    double per = (t_recv - b->step.sent_at) / (double)(b->step.n_tokens > 1 ? b->step.n_tokens : 1);
    c->rate_s = per > c->rate_s * TERN_STEP_RATE_DECAY ? per : c->rate_s * TERN_STEP_RATE_DECAY;
    /* the returned header is the one we sent (validated): complete with ours */
    if (!complete(c, &b->step, c->ret_x[k], c->ret_sum[k], dl)) return step_timeout(c);
    b->busy = false;
    c->n_inflight--;
    return 1;
}

tern_code tern_coord_step(tern_coord *c, bool *idle, tern_status *st)
{
    *idle = false;
    if (c->failed) return tern_status_set(st, c->fail.code, "%s", c->fail.msg);
    tern_engine_fixed *f = c->f;
    tern_sched_admit(c->sched);
    bool launched = false;
    /* One rank completes each micro-batch at once: a step runs at most `inflight` of them, so a
     * serving loop gets control back between steps (signals, stats) even under endless load. */
    int32_t n_launched = 0;
    while (f->n_ranks > 1 ? c->n_inflight < f->lim.inflight : n_launched < f->lim.inflight) {
        mbatch *b = NULL;
        for (int32_t i = 0; i < f->lim.inflight && !b; i++)
            if (!c->mbs[i].busy) b = &c->mbs[i];
        if (!b || !tern_sched_build(c->sched, f->lim.inflight - c->n_inflight, &b->step, b->ids))
            break;
        launch(c, b);
        launched = true;
        n_launched++;
        if (f->n_ranks == 1) tern_sched_admit(c->sched); /* finished ones free slots */
    }
    if (f->n_ranks > 1 && c->n_inflight > 0) {
        /* wait only when nothing else can happen: every stage is busy or nothing is ready;
         * and only for a slice, so the caller sees signals while the pipeline is slow */
        int got = poll_return(c, 0);
        if (!got && !launched) got = poll_return(c, tern_comm_now() + TERN_COORD_SLICE_S);
        while (got > 0) got = poll_return(c, 0);
        if (got < 0) return tern_status_set(st, c->fail.code, "%s", c->fail.msg);
    }
    *idle = c->n_inflight == 0 && tern_sched_idle(c->sched);
    /* releases with no step left to carry them: send an empty step (the next steps bring it
     * back; the engine is not idle until then) */
    if (*idle && tern_sched_pending_releases(c->sched) > 0 && f->n_ranks > 1) {
        mbatch *b = NULL;
        for (int32_t i = 0; i < f->lim.inflight && !b; i++)
            if (!c->mbs[i].busy) b = &c->mbs[i];
        if (b && tern_sched_build(c->sched, 1, &b->step, b->ids)) {
            launch(c, b);
            *idle = false;
        }
    }
    return TERN_OK;
}

bool tern_coord_failed(const tern_coord *c, tern_status *st)
{
    if (!c || !c->failed) return false;
    if (st) tern_status_set(st, c->fail.code, "%s", c->fail.msg);
    return true;
}

void tern_coord_shutdown(tern_coord *c)
{
    if (!c || !c->workers_up || c->failed) return;
    tern_status st = {0};
    for (int guard = 0; guard < 1 << 30; guard++) {
        bool idle;
        if (tern_coord_step(c, &idle, &st)) return; /* failed: engine close ends the ranks */
        if (idle) break;
    }
    mbatch *b = &c->mbs[0];
    b->step.n_seqs = 0, b->step.n_tokens = 0, b->step.n_hops = 0, b->step.n_pen = 0;
    b->step.shutdown = 1;
    tern_ctl_step_totals(&b->step);
    b->step.sent_at = tern_comm_now();
    c->shutdown_deadline = b->step.sent_at + step_bound(c, 0);
    size_t len = tern_ctl_pack_step(&b->step, b->ctl, c->f->lim.ctl_bytes);
    tern_comm_isend_ctl(1, b->ctl, len, &b->req_ctl);
    tern_comm_isend_act(1, b->x, 0, &b->req_act);
    tern_comm_isend_sum(1, b->sums, 0, &b->req_sum);
    double dl = c->shutdown_deadline;
    if (!tern_comm_wait_until(&b->req_ctl, NULL, dl) ||
        !tern_comm_wait_until(&b->req_act, NULL, dl) ||
        !tern_comm_wait_until(&b->req_sum, NULL, dl)) {
        step_timeout(c);
        return;
    }
    /* the shutdown travels the ring and comes back: then every worker has stopped */
    int got = 0;
    for (int guard = 0; guard < 1 << 30 && got == 0; guard++) got = poll_return(c, dl);
    if (got > 0) c->workers_up = false;
}

void tern_coord_free(tern_coord *c)
{
    if (!c) return;
    if (c->mbs)
        for (int32_t i = 0; i < c->f->lim.inflight; i++) {
            mbatch *b = &c->mbs[i];
            free_step(&b->step);
            free(b->ids), free(b->x), free(b->hx), free(b->sums), free(b->ctl);
            tern_comm_req_free(&b->req_ctl), tern_comm_req_free(&b->req_act);
            tern_comm_req_free(&b->req_sum);
        }
    for (int k = 0; k < 2; k++) {
        free(c->ret_ctl[k]), free(c->ret_x[k]), free(c->ret_sum[k]);
        tern_comm_req_free(&c->ret_rc[k]), tern_comm_req_free(&c->ret_ra[k]);
        tern_comm_req_free(&c->ret_rs[k]);
    }
    tern_comm_req_free(&c->lreq);
    free_step(&c->ret_step);
    tern_stage_free(&c->stage);
    free(c->mbs), free(c->bs), free(c->arena), free(c->full), free(c->staging);
    free(c->picks), free(c->resolved), free(c->scratch), free(c->worker_busy);
    free(c->worker_rss), free(c->hops), free(c->hops_sort);
    free(c);
}

static int cmp_f(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

void tern_coord_stats(tern_coord *c, tern_engine_stats *s)
{
    tern_engine_fixed *f = c->f;
    tern_sched_stats ss;
    tern_sched_stats_get(c->sched, &ss);
    s->n_ranks = f->n_ranks;
    s->running = ss.running;
    s->queued = ss.queued;
    s->steps = c->steps;
    s->tokens_prompt = ss.tokens_prompt;
    s->tokens_generated = ss.tokens_generated;
    s->retries = ss.retries;
    s->prefix_hits = ss.prefix_hits, s->prefix_misses = ss.prefix_misses;
    s->prefix_evictions = ss.prefix_evictions, s->prefix_tokens = ss.prefix_tokens;
    s->kv_cached = ss.kv_cached;
    s->wall_s = tern_comm_now() - c->t_start;
    for (int r = 0; r < f->n_ranks && r < s->cap_ranks; r++) {
        s->ranks[r].busy_s = r == 0 ? c->busy0 : c->worker_busy[r];
        s->ranks[r].peak_rss = r == 0 ? tern_peak_rss() : c->worker_rss[r];
        s->ranks[r].kv_used = ss.kv_reserved;
        s->ranks[r].kv_total = f->lim.kv_blocks;
        s->ranks[r].layer_start = f->plan.layer_start[r];
        s->ranks[r].layer_end = f->plan.layer_end[r];
        s->ranks[r].vocab_start = f->plan.vocab_start[r];
        s->ranks[r].vocab_end = f->plan.vocab_end[r];
        s->ranks[r].predicted = f->plan.cost[r];
    }
    int64_t n = c->n_hops < HOP_RING ? c->n_hops : HOP_RING;
    s->hop_p50_ms = s->hop_p99_ms = 0;
    if (n > 0) {
        memcpy(c->hops_sort, c->hops, (size_t)n * sizeof(float));
        qsort(c->hops_sort, (size_t)n, sizeof(float), cmp_f);
        s->hop_p50_ms = c->hops_sort[n / 2] * 1e3;
        s->hop_p99_ms = c->hops_sort[(n * 99) / 100 < n ? (n * 99) / 100 : n - 1] * 1e3;
    }
}
