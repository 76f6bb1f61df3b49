/* worker.c: a worker rank's loop. Receives a step from the previous rank, applies its releases,
 * runs this rank's layers, (last layer rank) norms the head rows and starts the sampler
 * records, (head ranks) folds its head slice into them and sends full rows to rank 0, and
 * forwards header, activations and records to the next rank.
 *
 * Buffers: NB sets, so one set receives while one computes and one is still being sent.
 * What is forwarded: the activations [n_tokens][d] up to the last layer rank, the normed head
 * rows [n_head][d] after it, and the records [n_sample] after it.
 */
#include <stdlib.h>
#include <string.h>

#include "pipeline/engine-internal.h"
#include "ternpipe/kernels.h"
#include "ternpipe/log.h"

enum { NB = 3 };

typedef struct wbuf {
    uint8_t *ctl_in, *ctl_out;
    float *act;         /* [batch_tokens][d]: what arrives (and is forwarded before the head) */
    float *hx;          /* [head_rows][d]: the normed head rows (last layer rank) */
    tern_row_sum *sums; /* [sample_rows] */
    float *full;        /* [full_rows][v1 - v0]: full rows for rank 0 */
    tern_req rc_in, ra_in, rs_in, rc_out, ra_out, rs_out, rl_out;
} wbuf;

/* Applies release entries (KV of finished/cancelled/new slots) and returns the token entries
 * as tern_batch_seq (same order). */
static int32_t apply_step(tern_ctx *c, const tern_step *s, tern_batch_seq *out)
{
    int32_t n = 0;
    for (int32_t i = 0; i < s->n_seqs; i++) {
        const tern_step_seq *q = &s->seqs[i];
        tern_status kst = {0};
        if (tern_stage_apply_kv(c, q, &kst))
            tern_die("engine: step %llu: %s", (unsigned long long)s->id, kst.msg);
        if (q->n_tokens > 0)
            out[n++] = (tern_batch_seq){.slot = q->slot, .pos0 = q->pos0, .n_tokens = q->n_tokens};
    }
    return n;
}

static void post_recv(const tern_engine_fixed *f, wbuf *b, int prev)
{
    const tern_limits *L = &f->lim;
    tern_comm_irecv_ctl(prev, b->ctl_in, L->ctl_bytes, &b->rc_in);
    tern_comm_irecv_act(prev, b->act, (size_t)L->batch_tokens * (size_t)L->d, &b->ra_in);
    tern_comm_irecv_sum(prev, b->sums, (size_t)L->sample_rows * sizeof(tern_row_sum), &b->rs_in);
}

tern_code tern_worker_run(tern_engine_fixed *f, tern_status *st)
{
    const tern_limits *L = &f->lim;
    const int prev = f->rank - 1, next = (f->rank + 1) % f->n_ranks;
    const bool after_layers = f->rank > f->last_layer; /* receives head rows, not activations */
    const bool is_last = f->rank == f->last_layer;
    const bool has_layers = f->plan.layer_end[f->rank] > f->plan.layer_start[f->rank];
    const size_t d = (size_t)L->d, nv = (size_t)(f->v1 - f->v0);
    wbuf b[NB];
    memset(b, 0, sizeof b);
    tern_step step = {0};
    step.cap_seqs = L->step_entries;
    step.seqs = calloc((size_t)step.cap_seqs, sizeof *step.seqs);
    step.cap_pen = L->pen_ids;
    step.pen_ids = calloc((size_t)step.cap_pen, sizeof *step.pen_ids);
    step.cap_hops = f->n_ranks;
    step.hop_at = calloc((size_t)f->n_ranks, sizeof(double));
    step.busy_s = calloc((size_t)f->n_ranks, sizeof(double));
    step.peak_rss = calloc((size_t)f->n_ranks, sizeof(uint64_t));
    tern_batch_seq *bs = calloc((size_t)step.cap_seqs, sizeof *bs);
    void *arena = malloc(L->arena_bytes);
    tern_stage stage;
    tern_code rc = tern_stage_init(&stage, f, st);
    bool ok = !rc && step.seqs && step.pen_ids && step.hop_at && step.busy_s && step.peak_rss &&
              bs && arena;
    for (int i = 0; i < NB; i++) {
        b[i].ctl_in = malloc(L->ctl_bytes), b[i].ctl_out = malloc(L->ctl_bytes);
        b[i].act = malloc((size_t)L->batch_tokens * d * sizeof(float));
        b[i].hx = is_last ? malloc((size_t)L->head_rows * d * sizeof(float)) : NULL;
        b[i].sums = malloc((size_t)L->sample_rows * sizeof(tern_row_sum));
        b[i].full = nv ? malloc((size_t)L->full_rows * nv * sizeof(float)) : NULL;
        ok = ok && b[i].ctl_in && b[i].ctl_out && b[i].act && (!is_last || b[i].hx) && b[i].sums &&
             (!nv || b[i].full);
    }
    /* every rank allocated at open; running out here leaves no way to tell rank 0 in-band */
    if (!ok) tern_die("worker: out of memory for pipeline buffers");
    double busy = 0;
    int i = 0;
    post_recv(f, &b[0], prev);
    for (;;) {
        wbuf *w = &b[i];
        size_t n_ctl = 0, n_act = 0, n_sum = 0;
        tern_comm_wait(&w->rc_in, &n_ctl);
        tern_comm_wait(&w->ra_in, &n_act);
        tern_comm_wait(&w->rs_in, &n_sum);
        double t_recv = tern_comm_now();
        if ((rc = tern_ctl_unpack_step(w->ctl_in, n_ctl, L, &step, arena, L->arena_bytes, st))) {
            tern_log(TERN_LOG_ERROR, "from rank %d: %s", prev, st->msg);
            tern_dist_abort(1);
        }
        size_t want_act = (size_t)(after_layers ? step.n_head : step.n_tokens) * d;
        size_t want_sum = after_layers ? (size_t)step.n_sample * sizeof(tern_row_sum) : 0;
        if (n_act != want_act || n_sum != want_sum) {
            tern_log(TERN_LOG_ERROR,
                     "from rank %d: step %llu: got %zu activations and %zu record bytes, expected "
                     "%zu and %zu",
                     prev, (unsigned long long)step.id, n_act, n_sum, want_act, want_sum);
            tern_dist_abort(1);
        }
        int j = (i + 1) % NB;
        tern_comm_wait(&b[j].rc_out, NULL);
        tern_comm_wait(&b[j].ra_out, NULL);
        tern_comm_wait(&b[j].rs_out, NULL);
        if (!step.shutdown) post_recv(f, &b[j], prev);
        double t0 = tern_comm_now();
        int32_t n_bs = apply_step(f->c, &step, bs);
        const float *payload = w->act;
        size_t n_payload = want_act;
        if (has_layers && n_bs > 0 && tern_forward(f->c, bs, n_bs, w->act, st)) {
            tern_log(TERN_LOG_ERROR, "step %llu: %s", (unsigned long long)step.id, st->msg);
            tern_dist_abort(1);
        }
        const float *hx = w->act;
        if (is_last) {
            int32_t nh = tern_stage_head_rows(&step, stage.rows);
            tern_final_norm(f->c, w->act, stage.rows, nh, w->hx);
            for (int32_t k = 0; k < step.n_sample; k++) tern_row_sum_init(&w->sums[k]);
            hx = payload = w->hx;
            n_payload = (size_t)nh * d;
        }
        if (nv && (is_last || after_layers)) {
            tern_comm_wait(&w->rl_out, NULL); /* this set's full rows of NB steps ago */
            tern_stage_head(&stage, f, &step, hx, w->sums, w->full, nv, 0);
            if (step.n_full > 0)
                tern_comm_isend_logits(0, w->full, (size_t)step.n_full * nv, &w->rl_out);
        }
        busy += tern_comm_now() - t0;
        if (step.n_hops < step.cap_hops) {
            step.hop_at[step.n_hops] = t_recv - step.sent_at; /* this hop's latency */
            step.busy_s[step.n_hops] = busy;
            step.peak_rss[step.n_hops] = tern_peak_rss();
            step.n_hops++;
        }
        step.sent_at = tern_comm_now();
        size_t len = tern_ctl_pack_step(&step, w->ctl_out, L->ctl_bytes);
        if (!len) tern_die("worker: step header does not fit %zu bytes", L->ctl_bytes);
        size_t n_sums = is_last || after_layers ? (size_t)step.n_sample : 0;
        tern_comm_isend_ctl(next, w->ctl_out, len, &w->rc_out);
        tern_comm_isend_act(next, payload, n_payload, &w->ra_out);
        tern_comm_isend_sum(next, w->sums, n_sums * sizeof(tern_row_sum), &w->rs_out);
        if (step.shutdown) break;
        i = j;
    }
    for (int k = 0; k < NB; k++) {
        tern_comm_wait(&b[k].rc_out, NULL), tern_comm_wait(&b[k].ra_out, NULL);
        tern_comm_wait(&b[k].rs_out, NULL), tern_comm_wait(&b[k].rl_out, NULL);
        tern_req *rs[] = {&b[k].rc_in,  &b[k].ra_in,  &b[k].rs_in, &b[k].rc_out,
                          &b[k].ra_out, &b[k].rs_out, &b[k].rl_out};
        for (size_t r = 0; r < sizeof rs / sizeof rs[0]; r++) tern_comm_req_free(rs[r]);
        free(b[k].ctl_in), free(b[k].ctl_out), free(b[k].act), free(b[k].hx);
        free(b[k].sums), free(b[k].full);
    }
    tern_stage_free(&stage);
    free(step.seqs), free(step.pen_ids), free(step.hop_at), free(step.busy_s);
    free(step.peak_rss), free(bs), free(arena);
    return TERN_OK;
}
