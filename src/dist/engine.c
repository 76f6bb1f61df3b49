/* engine.c: the pipeline engine (DESIGN.md sections 1-3): handshake and plan, the worker
 * loop, and rank 0's scheduler with continuous batching, chunked prefill and micro-batches
 * in flight.
 *
 * Invariants:
 * - Each live sequence owns one KV slot; it is in at most one micro-batch at a time.
 * - KV blocks for a sequence's whole budget (prompt + max_tokens) are reserved on admission,
 *   so no stage can run out mid-flight; rank 0's count mirrors every stage's pool.
 * - Releases of finished or cancelled slots ride in the next step header and are applied
 *   before that step's forward pass on every worker; pipeline order (MPI non-overtaking)
 *   makes it safe to reuse a slot right away.
 * - Every token is computed by the same code whatever the batch composition, so the logits
 *   are bitwise identical for any rank count, split or micro-batch size.
 * - After tern_engine_open returns, nothing on the step path allocates.
 */
#include "ternpipe/engine.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "dist/comm.h"
#include "dist/control.h"
#include "dist/plan.h"
#include "ternpipe/kernels.h"
#include "ternpipe/log.h"

#define CTL_CAP (64 * 1024)
#define ARENA_CAP (256 * 1024)
#define HOP_RING 4096
/* entries of a step: releases (at most one per slot between steps) + one per sequence */
#define SEQ_CAP(e) (2 * (e)->max_seqs + 4)

typedef struct pending {
    struct pending *next;
    int64_t id;
    tern_request req;
    int32_t *prompt; /* owned copy */
} pending;

typedef struct seq {
    bool used;
    int64_t id;
    tern_request req;
    int32_t *tokens; /* [n_ctx]: prompt then generated */
    int32_t n_tokens, n_prompt, n_past, n_gen, kv_blocks;
    bool inflight, cancelled, fresh;
    tern_sampler *smp;
} seq;

typedef struct mbatch {
    bool busy;
    tern_step step;
    tern_step_seq *ents; /* [max_seqs * 2] */
    int32_t *ids;        /* [max_tokens] */
    float *x;            /* [max_tokens][d] */
    uint8_t *ctl;
    tern_req req_ctl, req_act;
} mbatch;

struct tern_engine {
    tern_engine_opts o;
    int rank, n_ranks;
    tern_gguf *g;
    tern_topo *topo;
    tern_pool *pool;
    tern_model *m;
    tern_ctx *c;
    const tern_hparams *hp;
    int32_t start[TERN_MAX_RANKS], end[TERN_MAX_RANKS];
    int32_t max_tokens, max_seqs, n_ctx, kv_blocks, inflight_target;
    /* rank 0 */
    pthread_mutex_t mu;
    pthread_cond_t cv; /* signalled when the inbox gets work */
    pending *inbox_head, *inbox_tail;
    int32_t inbox_n;
    int64_t *cancels;
    int32_t n_cancels, cap_cancels;
    pending *wait_head, *wait_tail;
    int32_t wait_n, queue_cap;
    int64_t next_id;
    seq *seqs;
    int32_t n_running;
    int32_t kv_reserved;
    tern_step_seq *releases; /* [max_seqs] */
    int32_t n_releases;
    mbatch *mbs;
    int32_t n_inflight;
    uint64_t next_mb;
    uint64_t next_complete; /* id of the micro-batch expected back next */
    float *logits;          /* [logit_rows][n_vocab] */
    int32_t logit_rows;
    int32_t *rows, *row_ent, *row_pos; /* [max_tokens] */
    /* returns from the last rank */
    uint8_t *ret_ctl[2];
    float *ret_x[2];
    tern_req ret_req_ctl[2], ret_req_act[2];
    int ret_i;
    tern_step ret_step;
    tern_step_seq *ret_ents;
    void *arena;
    /* stats */
    double t_start, busy0;
    double worker_busy[TERN_MAX_RANKS];
    uint64_t worker_rss[TERN_MAX_RANKS];
    float hops[HOP_RING];
    int64_t n_hops;
    int64_t steps, tok_prompt, tok_gen;
    int32_t rot;     /* rank 0: first slot the next micro-batch looks at */
    bool workers_up; /* rank 0: workers are in their loop and need a shutdown step */
};

int tern_launcher_rank(bool *launched)
{
    static const char *const vars[] = {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) {
            if (launched) *launched = true;
            return atoi(v);
        }
    }
    if (launched) *launched = false;
    return 0;
}

/* this process's peak resident set in bytes (Linux reports kilobytes) */
static uint64_t peak_rss(void)
{
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) == 0 ? (uint64_t)ru.ru_maxrss * 1024u : 0;
}

static double now(void)
{
    return tern_comm_now();
}

/* ------------------------------------------------------------------ set-up */

/* A short probe of this rank's ternary GEMM speed for the auto split. */
static double speed_probe(tern_pool *pool)
{
    enum { N = 1024, K = 1024, T = 8 };
    int8_t *tr = malloc((size_t)N * K);
    int8_t *q = malloc((size_t)T * K);
    float *y = malloc(sizeof(float) * T * N), s[T];
    int32_t qs[T];
    double best = 0;
    tern_tmat *w = NULL;
    if (tr && q && y) {
        for (size_t i = 0; i < (size_t)N * K; i++)
            tr[i] = (int8_t)((i * 2654435761u >> 13) % 3) - 1;
        for (size_t i = 0; i < (size_t)T * K; i++) q[i] = (int8_t)(i * 7 % 255 - 127);
        for (int t = 0; t < T; t++) s[t] = 1.0f, qs[t] = 0;
        if (!tern_tmat_from_trits(&w, tr, N, K, 1.0f, NULL)) {
            for (int r = 0; r < 5; r++) {
                double t0 = now();
                for (int k = 0; k < 20; k++) tern_tgemm(w, q, s, qs, T, y, N, 0, N);
                double dt = now() - t0;
                if (dt > 0 && 1.0 / dt > best) best = 1.0 / dt;
            }
        }
    }
    (void)pool;
    tern_tmat_free(w);
    free(tr), free(q), free(y);
    return best > 0 ? best : 1.0;
}

static tern_code handshake(tern_engine *e, tern_status *st)
{
    tern_status lst = {0};
    tern_code rc = tern_gguf_open(&e->g, e->o.model_path, &lst);
    tern_hparams hp = {0};
    if (!rc) rc = tern_hparams_read(e->g, &hp, &lst);
    uint64_t mine = rc ? 0 : tern_gguf_checksum(e->g);
    if (rc && e->rank != 0) tern_log(TERN_LOG_ERROR, "%s", lst.msg);
    uint64_t sums[TERN_MAX_RANKS], codes[TERN_MAX_RANKS];
    tern_comm_allgather_u64(mine, sums);
    tern_comm_allgather_u64((uint64_t)rc, codes);
    for (int r = 0; r < e->n_ranks; r++) {
        if (codes[r] != TERN_OK) {
            if (r == e->rank)
                return tern_status_set(st, (tern_code)codes[r], "rank %d: %s", r, lst.msg);
            return tern_status_set(
                st, TERN_EINVAL,
                "handshake: rank %d could not open the model %s (its own error is in its log)", r,
                e->o.model_path);
        }
        if (sums[r] != sums[0])
            return tern_status_set(
                st, TERN_EINVAL,
                "handshake: rank %d model checksum: got %016llx, expected %016llx "
                "(rank 0's; every rank needs the same model file)",
                r, (unsigned long long)sums[r], (unsigned long long)sums[0]);
    }
    /* plan: rank 0 decides and sends it in the Hello; every rank checks version and sum */
    if (e->n_ctx <= 0 || e->n_ctx > hp.n_ctx) e->n_ctx = hp.n_ctx;
    if (e->kv_blocks <= 0) {
        /* enough for max_seqs full contexts, but at most the memory budget (sized for a rank
         * holding every layer; ranks with a slice use proportionally less) */
        int64_t full = (int64_t)e->max_seqs * ((e->n_ctx + TERN_KV_BLOCK - 1) / TERN_KV_BLOCK);
        double block_bytes =
            (double)hp.n_layer * 2 * TERN_KV_BLOCK * hp.n_head_kv * hp.head_dim * 4;
        double budget = (e->o.kv_mem_mb > 0 ? e->o.kv_mem_mb : 2048) * 1048576.0;
        int64_t fit = (int64_t)(budget / block_bytes);
        int64_t one = (e->n_ctx + TERN_KV_BLOCK - 1) / TERN_KV_BLOCK;
        e->kv_blocks = (int32_t)(full < fit ? full : (fit > one ? fit : one));
    }
    double speeds[TERN_MAX_RANKS];
    bool probe = e->o.split && !strcmp(e->o.split, "auto") && e->n_ranks > 1;
    double my_speed = probe ? speed_probe(e->pool) : 1.0;
    tern_comm_allgather_f64(my_speed, speeds);
    uint8_t buf[4096];
    uint64_t len = 0;
    tern_code prc = TERN_OK;
    if (e->rank == 0) {
        tern_hello h = {.protocol_version = TERN_PROTOCOL_VERSION,
                        .model_checksum = sums[0],
                        .n_layers = (uint32_t)hp.n_layer,
                        .n_ranks = e->n_ranks,
                        .max_tokens = (uint32_t)e->max_tokens,
                        .max_seqs = (uint32_t)e->max_seqs,
                        .n_ctx = (uint32_t)e->n_ctx,
                        .kv_blocks = (uint32_t)e->kv_blocks};
        prc = tern_plan_make(e->o.split, e->n_ranks, &hp, probe ? speeds : NULL, h.layer_start,
                             h.layer_end, &lst);
        if (!prc) len = tern_ctl_pack_hello(&h, buf, sizeof buf);
    }
    tern_comm_bcast(&len, sizeof len, 0);
    if (len == 0) {
        if (e->rank == 0) return tern_status_set(st, prc ? prc : TERN_EINVAL, "%s", lst.msg);
        return tern_status_set(st, TERN_EINVAL, "handshake: rank 0 could not make a plan");
    }
    tern_comm_bcast(buf, (size_t)len, 0);
    tern_hello h;
    if ((rc = tern_ctl_unpack_hello(buf, (size_t)len, &h, st))) return rc;
    if (h.protocol_version != TERN_PROTOCOL_VERSION || h.model_checksum != mine ||
        h.n_ranks != e->n_ranks)
        return tern_status_set(
            st, TERN_EINVAL,
            "handshake: rank %d: protocol %u / checksum %016llx: got them, expected %u / %016llx",
            e->rank, h.protocol_version, (unsigned long long)h.model_checksum,
            TERN_PROTOCOL_VERSION, (unsigned long long)mine);
    for (int r = 0; r < e->n_ranks; r++) e->start[r] = h.layer_start[r], e->end[r] = h.layer_end[r];
    e->max_tokens = (int32_t)h.max_tokens, e->max_seqs = (int32_t)h.max_seqs;
    e->n_ctx = (int32_t)h.n_ctx, e->kv_blocks = (int32_t)h.kv_blocks;
    if (probe && e->rank == 0) {
        char line[512];
        int n = snprintf(line, sizeof line, "speed probe (relative):");
        for (int r = 0; r < e->n_ranks && n < (int)sizeof line; r++)
            n += snprintf(line + n, sizeof line - (size_t)n, " r%d %.2f", r, speeds[r] / speeds[0]);
        tern_log(TERN_LOG_INFO, "%s", line);
    }
    return TERN_OK;
}

static tern_code alloc_mbatch(tern_engine *e, mbatch *b, tern_status *st)
{
    b->ents = calloc((size_t)SEQ_CAP(e), sizeof *b->ents);
    b->ids = calloc((size_t)e->max_tokens, sizeof *b->ids);
    b->x = calloc((size_t)e->max_tokens * (size_t)e->hp->d, sizeof *b->x);
    b->ctl = malloc(CTL_CAP);
    b->step.seqs = b->ents;
    b->step.cap_seqs = SEQ_CAP(e);
    if (!b->ents || !b->ids || !b->x || !b->ctl)
        return tern_status_set(st, TERN_ENOMEM, "engine: out of memory for micro-batch buffers");
    return TERN_OK;
}

static void free_mbatch(mbatch *b)
{
    free(b->ents), free(b->ids), free(b->x), free(b->ctl);
    tern_comm_req_free(&b->req_ctl);
    tern_comm_req_free(&b->req_act);
}

static tern_code worker_loop(tern_engine *e, tern_status *st);

tern_code tern_engine_open(tern_engine **out, const tern_engine_opts *o, tern_status *st)
{
    *out = NULL;
    tern_engine *e = calloc(1, sizeof *e);
    if (!e) return tern_status_set(st, TERN_ENOMEM, "engine: out of memory");
    e->o = *o;
    e->rank = tern_comm_rank();
    e->n_ranks = tern_comm_size();
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    tern_code rc;
    tern_kernels_init();
    if (e->n_ranks > TERN_MAX_RANKS) {
        rc = tern_status_set(st, TERN_EINVAL, "engine: ranks: got %d, expected at most %d",
                             e->n_ranks, TERN_MAX_RANKS);
        goto fail;
    }
    if ((rc = tern_topo_discover(&e->topo, st)) ||
        (rc = tern_pool_create(&e->pool, e->topo, o->n_threads, st)))
        goto fail;
    e->max_tokens = o->max_tokens > 0 ? o->max_tokens : 512;
    e->max_seqs = o->max_seqs > 0 ? o->max_seqs : 64;
    e->n_ctx = o->n_ctx;
    e->kv_blocks = o->kv_blocks;
    if ((rc = handshake(e, st))) goto fail;
    {
        tern_model_opts mo = {.l0 = e->start[e->rank],
                              .l1 = e->end[e->rank],
                              .embed = e->rank == 0,
                              .head = e->rank == 0,
                              .head_type = o->head_type,
                              .topo = e->topo};
        tern_status lst = {0};
        rc = tern_model_load(&e->m, e->g, &mo, &lst);
        if (!rc) {
            e->hp = tern_model_hparams(e->m);
            tern_ctx_opts co = {.max_tokens = e->max_tokens,
                                .max_seqs = e->max_seqs,
                                .kv_blocks = e->kv_blocks,
                                .n_ctx = e->n_ctx};
            rc = tern_ctx_create(&e->c, e->m, e->pool, &co, &lst);
        }
        if (!rc) e->kv_blocks = tern_kv_blocks_total(e->c);
        /* the model pages are copied: a rank needs its file only for the tokenizer */
        uint64_t codes[TERN_MAX_RANKS];
        tern_comm_allgather_u64((uint64_t)rc, codes);
        for (int r = 0; r < e->n_ranks; r++)
            if (codes[r]) {
                if (r == e->rank) {
                    tern_status_set(st, rc, "rank %d: %s", r, lst.msg);
                    if (r != 0) tern_log(TERN_LOG_ERROR, "%s", st->msg);
                } else
                    tern_status_set(st, TERN_EINVAL, "engine: rank %d failed to load its layers",
                                    r);
                rc = rc ? rc : TERN_EINVAL;
                goto fail;
            }
    }
    e->workers_up = e->n_ranks > 1;
    if (e->o.verbose || e->rank == 0) {
        char topo[512];
        tern_topo_describe(e->topo, topo, sizeof topo);
        if (e->o.verbose) tern_log(TERN_LOG_INFO, "%s; %d threads", topo, tern_pool_size(e->pool));
        if (e->rank == 0) {
            char line[1024];
            int n = snprintf(line, sizeof line, "plan (%d ranks, %s):", e->n_ranks,
                             e->o.split ? e->o.split : "even");
            for (int r = 0; r < e->n_ranks && n < (int)sizeof line; r++)
                n += snprintf(line + n, sizeof line - (size_t)n, " r%d [%d,%d)%s", r, e->start[r],
                              e->end[r], r == 0 ? "+embed+head" : "");
            tern_log(TERN_LOG_INFO, "%s", line);
        }
    }
    if (e->o.verbose)
        tern_log(TERN_LOG_INFO, "layers [%d,%d): %.1f MB of weights, KV pool %d blocks",
                 e->start[e->rank], e->end[e->rank], (double)tern_model_weight_bytes(e->m) / 1e6,
                 e->kv_blocks);
    if (e->rank != 0) {
        rc = worker_loop(e, st);
        tern_engine_close(e);
        return rc;
    }
    /* rank 0 state */
    e->inflight_target = o->inflight > 0 ? o->inflight : e->n_ranks;
    e->queue_cap = 4 * e->max_seqs + 64;
    e->seqs = calloc((size_t)e->max_seqs, sizeof *e->seqs);
    e->mbs = calloc((size_t)e->inflight_target, sizeof *e->mbs);
    e->releases = calloc((size_t)SEQ_CAP(e), sizeof *e->releases);
    e->logit_rows = e->max_seqs > 64 ? e->max_seqs : 64;
    e->logits = malloc((size_t)e->logit_rows * (size_t)e->hp->n_vocab * sizeof(float));
    e->rows = calloc((size_t)e->max_tokens, sizeof(int32_t));
    e->row_ent = calloc((size_t)e->max_tokens, sizeof(int32_t));
    e->row_pos = calloc((size_t)e->max_tokens, sizeof(int32_t));
    e->cap_cancels = 256;
    e->cancels = calloc((size_t)e->cap_cancels, sizeof *e->cancels);
    e->arena = malloc(ARENA_CAP);
    e->ret_ents = calloc((size_t)SEQ_CAP(e), sizeof *e->ret_ents);
    e->ret_step.seqs = e->ret_ents;
    e->ret_step.cap_seqs = SEQ_CAP(e);
    if (!e->seqs || !e->mbs || !e->releases || !e->logits || !e->rows || !e->row_ent ||
        !e->row_pos || !e->cancels || !e->arena || !e->ret_ents) {
        rc = tern_status_set(st, TERN_ENOMEM, "engine: out of memory");
        goto fail;
    }
    for (int32_t i = 0; i < e->max_seqs; i++) {
        seq *s = &e->seqs[i];
        s->tokens = malloc((size_t)e->n_ctx * sizeof(int32_t));
        tern_sampling sp;
        tern_sampling_default(&sp);
        if (!s->tokens || (rc = tern_sampler_create(&s->smp, &sp, e->hp->n_vocab, st))) {
            rc = rc ? rc : tern_status_set(st, TERN_ENOMEM, "engine: out of memory");
            goto fail;
        }
    }
    for (int32_t i = 0; i < e->inflight_target; i++)
        if ((rc = alloc_mbatch(e, &e->mbs[i], st))) goto fail;
    if (e->n_ranks > 1) {
        for (int k = 0; k < 2; k++) {
            e->ret_ctl[k] = malloc(CTL_CAP);
            e->ret_x[k] = malloc((size_t)e->max_tokens * (size_t)e->hp->d * sizeof(float));
            if (!e->ret_ctl[k] || !e->ret_x[k]) {
                rc = tern_status_set(st, TERN_ENOMEM, "engine: out of memory");
                goto fail;
            }
        }
        tern_comm_irecv_ctl(e->n_ranks - 1, e->ret_ctl[0], CTL_CAP, &e->ret_req_ctl[0]);
        tern_comm_irecv_act(e->n_ranks - 1, e->ret_x[0], (size_t)e->max_tokens * (size_t)e->hp->d,
                            &e->ret_req_act[0]);
    }
    e->t_start = now();
    *out = e;
    return TERN_OK;
fail:
    /* until the load check above every rank fails together; after it, rank 0 alone can fail
     * (memory) and must still stop the workers, which are in their loop */
    tern_engine_close(e);
    return rc;
}

/* ------------------------------------------------------------------ worker */

/* Applies release entries (KV of finished/cancelled/new slots) and returns the token
 * entries as tern_batch_seq (in place, same order). */
static int32_t apply_step(tern_ctx *c, const tern_step *s, tern_batch_seq *out)
{
    int32_t n = 0;
    for (int32_t i = 0; i < s->n_seqs; i++) {
        const tern_step_seq *q = &s->seqs[i];
        if (q->flags & (TERN_SEQ_FINISHED | TERN_SEQ_CANCELLED | TERN_SEQ_NEW))
            tern_kv_release(c, q->slot);
        if (q->n_tokens > 0)
            out[n++] = (tern_batch_seq){.slot = q->slot, .pos0 = q->pos0, .n_tokens = q->n_tokens};
    }
    return n;
}

static tern_code worker_loop(tern_engine *e, tern_status *st)
{
    const int prev = e->rank - 1, next = (e->rank + 1) % e->n_ranks;
    const size_t act_cap = (size_t)e->max_tokens * (size_t)e->hp->d;
    enum { NB = 3 }; /* receive into one buffer while computing in one and sending from one */
    uint8_t *ctl_in[NB], *ctl_out[NB];
    float *act[NB];
    tern_req rc_in[NB] = {{0}}, ra_in[NB] = {{0}}, rc_out[NB] = {{0}}, ra_out[NB] = {{0}};
    tern_step step = {0};
    step.cap_seqs = SEQ_CAP(e);
    step.seqs = calloc((size_t)step.cap_seqs, sizeof *step.seqs);
    tern_batch_seq *bs = calloc((size_t)step.cap_seqs, sizeof *bs);
    void *arena = malloc(ARENA_CAP);
    bool ok = step.seqs && bs && arena;
    for (int i = 0; i < NB; i++) {
        ctl_in[i] = malloc(CTL_CAP), ctl_out[i] = malloc(CTL_CAP);
        act[i] = malloc(act_cap * sizeof(float));
        ok = ok && ctl_in[i] && ctl_out[i] && act[i];
    }
    if (!ok) tern_die("worker: out of memory for pipeline buffers");
    double busy = 0;
    int i = 0;
    tern_comm_irecv_ctl(prev, ctl_in[0], CTL_CAP, &rc_in[0]);
    tern_comm_irecv_act(prev, act[0], act_cap, &ra_in[0]);
    tern_code rc = TERN_OK;
    for (;;) {
        size_t n_ctl = 0, n_act = 0;
        tern_comm_wait(&rc_in[i], &n_ctl);
        tern_comm_wait(&ra_in[i], &n_act);
        double t_recv = now();
        if ((rc = tern_ctl_unpack_step(ctl_in[i], n_ctl, &step, arena, ARENA_CAP, st))) {
            tern_log(TERN_LOG_ERROR, "%s", st->msg);
            tern_dist_abort(1);
        }
        int j = (i + 1) % NB;
        tern_comm_wait(&rc_out[j], NULL);
        tern_comm_wait(&ra_out[j], NULL);
        if (!step.shutdown) {
            tern_comm_irecv_ctl(prev, ctl_in[j], CTL_CAP, &rc_in[j]);
            tern_comm_irecv_act(prev, act[j], act_cap, &ra_in[j]);
        }
        if (n_act != (size_t)step.n_tokens * (size_t)e->hp->d)
            tern_die("worker: step %llu: got %zu activations, expected %d rows of %d",
                     (unsigned long long)step.id, n_act, step.n_tokens, e->hp->d);
        int32_t n_bs = apply_step(e->c, &step, bs);
        if (n_bs > 0) {
            double t0 = now();
            if (tern_forward(e->c, bs, n_bs, act[i], st)) {
                tern_log(TERN_LOG_ERROR, "step %llu: %s", (unsigned long long)step.id, st->msg);
                tern_dist_abort(1);
            }
            busy += now() - t0;
        }
        if (step.n_hops < TERN_MAX_RANKS) {
            step.hop_at[step.n_hops] = t_recv - step.sent_at; /* this hop's latency */
            step.busy_s[step.n_hops] = busy;
            step.peak_rss[step.n_hops] = peak_rss();
            step.n_hops++;
        }
        step.sent_at = now();
        size_t len = tern_ctl_pack_step(&step, ctl_out[i], CTL_CAP);
        if (!len) tern_die("worker: step header does not fit %d bytes", CTL_CAP);
        tern_comm_isend_ctl(next, ctl_out[i], len, &rc_out[i]);
        tern_comm_isend_act(next, act[i], (size_t)step.n_tokens * (size_t)e->hp->d, &ra_out[i]);
        if (step.shutdown) break;
        i = j;
    }
    for (int k = 0; k < NB; k++) {
        tern_comm_wait(&rc_out[k], NULL), tern_comm_wait(&ra_out[k], NULL);
        tern_comm_req_free(&rc_in[k]), tern_comm_req_free(&ra_in[k]);
        tern_comm_req_free(&rc_out[k]), tern_comm_req_free(&ra_out[k]);
        free(ctl_in[k]), free(ctl_out[k]), free(act[k]);
    }
    free(step.seqs), free(bs), free(arena);
    return rc;
}

/* ------------------------------------------------------------------ rank 0: requests */

static int32_t blocks_for(const tern_engine *e, int32_t n_pos)
{
    (void)e;
    return (n_pos + TERN_KV_BLOCK - 1) / TERN_KV_BLOCK;
}

tern_code tern_engine_submit(tern_engine *e, const tern_request *r, int64_t *id, tern_status *st)
{
    if (r->n_prompt < 1)
        return tern_status_set(st, TERN_EINVAL, "prompt: got 0 tokens, expected at least 1");
    if (r->max_tokens < 0)
        return tern_status_set(st, TERN_EINVAL, "max_tokens: got %d, expected >= 0", r->max_tokens);
    int64_t total = (int64_t)r->n_prompt + r->max_tokens;
    if (total > e->n_ctx)
        return tern_status_set(
            st, TERN_ERANGE,
            "context: prompt (%d tokens) + max_tokens (%d) = %lld, expected at most %d",
            r->n_prompt, r->max_tokens, (long long)total, e->n_ctx);
    if (blocks_for(e, (int32_t)total) > e->kv_blocks)
        return tern_status_set(st, TERN_ERANGE,
                               "kv: request needs %d blocks, expected at most the pool's %d",
                               blocks_for(e, (int32_t)total), e->kv_blocks);
    for (int32_t i = 0; i < r->n_prompt; i++)
        if (r->prompt[i] < 0 || r->prompt[i] >= e->hp->n_vocab)
            return tern_status_set(st, TERN_ERANGE, "prompt token %d: got id %d, expected 0..%d", i,
                                   r->prompt[i], e->hp->n_vocab - 1);
    tern_status sst = {0};
    if (tern_sampling_validate(&r->sampling, &sst))
        return tern_status_set(st, TERN_EINVAL, "%s", sst.msg);
    pending *p = calloc(1, sizeof *p);
    int32_t *copy = malloc((size_t)r->n_prompt * sizeof *copy);
    if (!p || !copy) {
        free(p), free(copy);
        return tern_status_set(st, TERN_ENOMEM, "engine: out of memory");
    }
    memcpy(copy, r->prompt, (size_t)r->n_prompt * sizeof *copy);
    p->req = *r;
    p->prompt = copy;
    p->req.prompt = copy;
    pthread_mutex_lock(&e->mu);
    if (e->inbox_n + e->wait_n >= e->queue_cap) {
        pthread_mutex_unlock(&e->mu);
        free(p), free(copy);
        return tern_status_set(st, TERN_EBUSY,
                               "queue: got %d waiting requests, expected fewer than %d",
                               e->queue_cap, e->queue_cap);
    }
    p->id = ++e->next_id;
    int64_t new_id = p->id; /* p belongs to the engine thread once unlocked */
    if (e->inbox_tail)
        e->inbox_tail->next = p;
    else
        e->inbox_head = p;
    e->inbox_tail = p;
    e->inbox_n++;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    if (id) *id = new_id;
    return TERN_OK;
}

void tern_engine_cancel(tern_engine *e, int64_t id)
{
    pthread_mutex_lock(&e->mu);
    if (e->n_cancels == e->cap_cancels) {
        /* grows on the caller's (client) thread, never on the step path */
        int64_t *nc = realloc(e->cancels, (size_t)e->cap_cancels * 2 * sizeof *nc);
        if (nc) e->cancels = nc, e->cap_cancels *= 2;
    }
    if (e->n_cancels < e->cap_cancels) e->cancels[e->n_cancels++] = id;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

void tern_engine_wait(tern_engine *e, int timeout_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    pthread_mutex_lock(&e->mu);
    if (e->inbox_n == 0 && e->n_cancels == 0) pthread_cond_timedwait(&e->cv, &e->mu, &ts);
    pthread_mutex_unlock(&e->mu);
}

static void finish(tern_engine *e, seq *s, tern_finish why, const char *err)
{
    int32_t slot = (int32_t)(s - e->seqs);
    if (s->req.on_done) s->req.on_done(s->req.user, why, err);
    if (e->end[0] > e->start[0] || e->n_ranks == 1) tern_kv_release(e->c, slot);
    /* workers never saw a slot that was not launched yet (its NEW flag resets it anyway) */
    if (e->n_ranks > 1 && !s->fresh)
        e->releases[e->n_releases++] = (tern_step_seq){
            .slot = slot,
            .flags = why == TERN_FINISH_CANCELLED ? TERN_SEQ_CANCELLED : TERN_SEQ_FINISHED};
    e->kv_reserved -= s->kv_blocks;
    s->used = false;
    e->n_running--;
}

/* moves the inbox to the wait queue, applies cancels, admits what fits */
static void admit(tern_engine *e)
{
    pthread_mutex_lock(&e->mu);
    pending *in = e->inbox_head;
    int32_t n_in = e->inbox_n;
    e->inbox_head = e->inbox_tail = NULL;
    e->inbox_n = 0;
    if (in) {
        if (e->wait_tail)
            e->wait_tail->next = in;
        else
            e->wait_head = in;
        while (in->next) in = in->next;
        e->wait_tail = in;
        e->wait_n += n_in;
    }
    pthread_mutex_unlock(&e->mu);
    for (;;) {
        int64_t cancels[256];
        pthread_mutex_lock(&e->mu);
        int32_t n_c = e->n_cancels < 256 ? e->n_cancels : 256;
        memcpy(cancels, e->cancels, (size_t)n_c * sizeof *cancels);
        memmove(e->cancels, e->cancels + n_c, (size_t)(e->n_cancels - n_c) * sizeof *cancels);
        e->n_cancels -= n_c;
        pthread_mutex_unlock(&e->mu);
        if (n_c == 0) break;
        for (int32_t k = 0; k < n_c; k++) {
            int64_t id = cancels[k];
            for (int32_t i = 0; i < e->max_seqs; i++) {
                seq *s = &e->seqs[i];
                if (s->used && s->id == id) {
                    if (s->inflight)
                        s->cancelled = true; /* finished when its step returns */
                    else
                        finish(e, s, TERN_FINISH_CANCELLED, NULL);
                }
            }
            pthread_mutex_lock(&e->mu);
            for (pending **pp = &e->wait_head, *prevp = NULL; *pp; prevp = *pp, pp = &(*pp)->next)
                if ((*pp)->id == id) {
                    pending *p = *pp;
                    *pp = p->next;
                    if (e->wait_tail == p) e->wait_tail = prevp;
                    e->wait_n--;
                    pthread_mutex_unlock(&e->mu);
                    if (p->req.on_done) p->req.on_done(p->req.user, TERN_FINISH_CANCELLED, NULL);
                    free(p->prompt), free(p);
                    pthread_mutex_lock(&e->mu);
                    break;
                }
            pthread_mutex_unlock(&e->mu);
        }
    }
    /* FIFO admission: the head waits until its slot and KV fit (no overtaking) */
    for (;;) {
        pthread_mutex_lock(&e->mu);
        pending *p = e->wait_head;
        pthread_mutex_unlock(&e->mu);
        if (!p) break;
        int32_t need = blocks_for(e, p->req.n_prompt + p->req.max_tokens);
        int32_t slot = -1;
        for (int32_t i = 0; i < e->max_seqs && slot < 0; i++)
            if (!e->seqs[i].used) slot = i;
        if (slot < 0 || e->kv_reserved + need > e->kv_blocks) break;
        pthread_mutex_lock(&e->mu);
        e->wait_head = p->next;
        if (!e->wait_head) e->wait_tail = NULL;
        e->wait_n--;
        pthread_mutex_unlock(&e->mu);
        seq *s = &e->seqs[slot];
        s->used = true;
        s->id = p->id;
        s->req = p->req;
        memcpy(s->tokens, p->prompt, (size_t)p->req.n_prompt * sizeof(int32_t));
        s->req.prompt = s->tokens;
        s->n_tokens = s->n_prompt = p->req.n_prompt;
        s->n_past = s->n_gen = 0;
        s->kv_blocks = need;
        s->inflight = s->cancelled = false;
        s->fresh = true;
        tern_sampler_reset(s->smp, &p->req.sampling);
        e->kv_reserved += need;
        e->n_running++;
        e->tok_prompt += p->req.n_prompt;
        free(p->prompt), free(p);
    }
}

/* ------------------------------------------------------------------ rank 0: steps */

/* Builds the next micro-batch from ready sequences: decode tokens and prefill chunks share
 * the token budget; ready sequences are spread over the micro-batches still to launch. */
static bool build(tern_engine *e, mbatch *b)
{
    tern_step *st = &b->step;
    st->n_seqs = 0;
    st->n_tokens = 0;
    st->n_hops = 0;
    st->shutdown = 0;
    int32_t n_ready = 0;
    for (int32_t i = 0; i < e->max_seqs; i++) {
        seq *s = &e->seqs[i];
        n_ready += s->used && !s->inflight && s->n_past < s->n_tokens;
    }
    int32_t free_mbs = e->inflight_target - e->n_inflight;
    int32_t share = free_mbs > 0 ? (n_ready + free_mbs - 1) / free_mbs : n_ready;
    /* releases first: they are applied before the forward pass */
    for (int32_t i = 0; i < e->n_releases; i++) st->seqs[st->n_seqs++] = e->releases[i];
    e->n_releases = 0;
    /* rotate the starting slot so no sequence starves under a tight budget */
    int32_t taken = 0, rot = e->rot;
    for (int32_t k = 0; k < e->max_seqs && taken < share && st->n_tokens < e->max_tokens; k++) {
        int32_t i = (rot + k) % e->max_seqs;
        seq *s = &e->seqs[i];
        if (!s->used || s->inflight || s->n_past >= s->n_tokens) continue;
        int32_t n = s->n_tokens - s->n_past;
        if (n > e->max_tokens - st->n_tokens) n = e->max_tokens - st->n_tokens;
        memcpy(b->ids + st->n_tokens, s->tokens + s->n_past, (size_t)n * sizeof(int32_t));
        st->seqs[st->n_seqs++] = (tern_step_seq){
            .slot = i, .pos0 = s->n_past, .n_tokens = n, .flags = s->fresh ? TERN_SEQ_NEW : 0};
        s->fresh = false;
        s->inflight = true;
        st->n_tokens += n;
        taken++;
    }
    e->rot = (rot + 1) % e->max_seqs;
    return st->n_seqs > 0;
}

/* rank 0's own stage: embedding and its layer prefix */
static void run_local(tern_engine *e, mbatch *b)
{
    tern_step *st = &b->step;
    double t0 = now();
    if (st->n_tokens > 0) tern_embed(e->c, b->ids, st->n_tokens, b->x);
    tern_batch_seq bs[1024];
    int32_t n = 0;
    for (int32_t i = 0; i < st->n_seqs && n < 1024; i++) {
        const tern_step_seq *q = &st->seqs[i];
        if (q->n_tokens > 0)
            bs[n++] = (tern_batch_seq){.slot = q->slot, .pos0 = q->pos0, .n_tokens = q->n_tokens};
    }
    if (n > 0 && e->end[0] > e->start[0]) {
        tern_status fst = {0};
        if (tern_forward(e->c, bs, n, b->x, &fst)) tern_die("engine: forward: %s", fst.msg);
    }
    e->busy0 += now() - t0;
}

/* logits, sampling and bookkeeping for a micro-batch whose activations are final */
static void complete(tern_engine *e, const tern_step *st, const float *x)
{
    double t0 = now();
    const int32_t V = e->hp->n_vocab;
    /* rows needed: every prompt position of prompt_logits requests, and the last token of
     * each sequence whose known tokens are now all processed */
    int32_t n_rows = 0, row = 0;
    for (int32_t i = 0; i < st->n_seqs; i++) {
        const tern_step_seq *q = &st->seqs[i];
        if (q->n_tokens == 0) continue;
        seq *s = &e->seqs[q->slot];
        for (int32_t k = 0; k < q->n_tokens; k++) {
            int32_t pos = q->pos0 + k;
            bool last = pos == s->n_tokens - 1;
            bool want =
                !s->cancelled && (s->req.all_logits || (last && s->req.max_tokens > s->n_gen));
            if (want) {
                e->rows[n_rows] = row + k;
                e->row_ent[n_rows] = i;
                e->row_pos[n_rows] = pos;
                n_rows++;
            }
        }
        row += q->n_tokens;
    }
    for (int32_t done = 0; done < n_rows; done += e->logit_rows) {
        int32_t k = n_rows - done < e->logit_rows ? n_rows - done : e->logit_rows;
        tern_head(e->c, x, e->rows + done, k, e->logits);
        for (int32_t r = 0; r < k; r++) {
            const tern_step_seq *q = &st->seqs[e->row_ent[done + r]];
            seq *s = &e->seqs[q->slot];
            int32_t pos = e->row_pos[done + r];
            const float *lg = e->logits + (size_t)r * (size_t)V;
            if (s->req.all_logits && s->req.on_logits) s->req.on_logits(s->req.user, pos, lg);
            if (pos == s->n_tokens - 1 && s->req.max_tokens > s->n_gen) {
                int32_t tok = tern_sampler_sample(s->smp, lg, s->tokens, (size_t)s->n_tokens);
                bool stop = false;
                for (int32_t k2 = 0; k2 < s->req.n_stop && k2 < 4; k2++)
                    stop |= tok == s->req.stop[k2];
                if (stop) {
                    s->n_gen = -1; /* marks: stopped */
                    continue;
                }
                s->tokens[s->n_tokens++] = tok;
                s->n_gen++;
                e->tok_gen++;
                if (s->req.on_token) s->req.on_token(s->req.user, tok);
            }
        }
    }
    for (int32_t i = 0; i < st->n_seqs; i++) {
        const tern_step_seq *q = &st->seqs[i];
        if (q->n_tokens == 0) continue;
        seq *s = &e->seqs[q->slot];
        s->inflight = false;
        s->n_past = q->pos0 + q->n_tokens;
        if (s->cancelled)
            finish(e, s, TERN_FINISH_CANCELLED, NULL);
        else if (s->n_gen < 0)
            finish(e, s, TERN_FINISH_STOP, NULL);
        else if (s->n_past >= s->n_tokens && s->n_gen >= s->req.max_tokens)
            finish(e, s, TERN_FINISH_LENGTH, NULL);
        else if (s->n_tokens >= e->n_ctx && s->n_past >= s->n_tokens)
            finish(e, s, TERN_FINISH_LENGTH, NULL);
    }
    e->steps++;
    e->busy0 += now() - t0;
}

static void launch(tern_engine *e, mbatch *b)
{
    run_local(e, b);
    if (e->n_ranks == 1) {
        complete(e, &b->step, b->x);
        return;
    }
    b->step.id = e->next_mb++;
    b->step.sent_at = now();
    size_t len = tern_ctl_pack_step(&b->step, b->ctl, CTL_CAP);
    if (!len) tern_die("engine: step header does not fit %d bytes", CTL_CAP);
    tern_comm_isend_ctl(1, b->ctl, len, &b->req_ctl);
    tern_comm_isend_act(1, b->x, (size_t)b->step.n_tokens * (size_t)e->hp->d, &b->req_act);
    b->busy = true;
    e->n_inflight++;
}

/* a step came back from the last rank: complete the oldest micro-batch */
static bool poll_return(tern_engine *e, bool block)
{
    int k = e->ret_i;
    size_t n_ctl = 0, n_act = 0;
    if (block) {
        tern_comm_wait(&e->ret_req_ctl[k], &n_ctl);
    } else if (!tern_comm_test(&e->ret_req_ctl[k], &n_ctl)) {
        return false;
    }
    tern_comm_wait(&e->ret_req_act[k], &n_act);
    double t_recv = now();
    tern_status st = {0};
    if (tern_ctl_unpack_step(e->ret_ctl[k], n_ctl, &e->ret_step, e->arena, ARENA_CAP, &st))
        tern_die("engine: %s", st.msg);
    /* post the next receive before computing the head, so the pipeline keeps moving */
    int k2 = 1 - k;
    if (!e->ret_step.shutdown) {
        tern_comm_irecv_ctl(e->n_ranks - 1, e->ret_ctl[k2], CTL_CAP, &e->ret_req_ctl[k2]);
        tern_comm_irecv_act(e->n_ranks - 1, e->ret_x[k2], (size_t)e->max_tokens * (size_t)e->hp->d,
                            &e->ret_req_act[k2]);
    }
    e->ret_i = k2;
    tern_step *rs = &e->ret_step;
    for (int32_t h = 0; h < rs->n_hops; h++) {
        e->hops[e->n_hops++ % HOP_RING] = (float)rs->hop_at[h];
        e->worker_busy[h + 1] = rs->busy_s[h];
        e->worker_rss[h + 1] = rs->peak_rss[h];
    }
    e->hops[e->n_hops++ % HOP_RING] = (float)(t_recv - rs->sent_at);
    if (rs->shutdown) return true;
    /* find the micro-batch: steps come back in launch order */
    mbatch *b = NULL;
    for (int32_t i = 0; i < e->inflight_target; i++)
        if (e->mbs[i].busy && e->mbs[i].step.id == rs->id) b = &e->mbs[i];
    if (!b)
        tern_die("engine: step %llu came back but is not in flight", (unsigned long long)rs->id);
    tern_comm_wait(&b->req_ctl, NULL);
    tern_comm_wait(&b->req_act, NULL);
    complete(e, &b->step, e->ret_x[k]);
    b->busy = false;
    e->n_inflight--;
    return true;
}

tern_code tern_engine_step(tern_engine *e, bool *idle, tern_status *st)
{
    (void)st;
    admit(e);
    bool launched = false;
    /* One rank completes each micro-batch at once: a step runs at most inflight_target of
     * them, so a serving loop gets control back between steps (signals, stats) even under
     * endless load. */
    int32_t n_launched = 0;
    while (e->n_ranks > 1 ? e->n_inflight < e->inflight_target : n_launched < e->inflight_target) {
        mbatch *b = NULL;
        for (int32_t i = 0; i < e->inflight_target && !b; i++)
            if (!e->mbs[i].busy) b = &e->mbs[i];
        if (!b || !build(e, b)) break;
        launch(e, b);
        launched = true;
        n_launched++;
        if (e->n_ranks == 1) admit(e); /* finished sequences free slots for waiting ones */
    }
    if (e->n_ranks > 1 && e->n_inflight > 0) {
        /* block only when nothing else can happen: every stage is busy or nothing is ready */
        bool got = poll_return(e, false);
        if (!got && !launched) poll_return(e, true);
        while (poll_return(e, false)) {
        }
    }
    pthread_mutex_lock(&e->mu);
    bool queued = e->inbox_n + e->wait_n > 0;
    pthread_mutex_unlock(&e->mu);
    *idle = e->n_running == 0 && e->n_inflight == 0 && !queued;
    /* releases with no step left to carry them: send an empty step */
    if (*idle && e->n_releases > 0 && e->n_ranks > 1) {
        mbatch *b = &e->mbs[0];
        build(e, b);
        launch(e, b);
        poll_return(e, true);
    }
    return TERN_OK;
}

tern_code tern_engine_run(tern_engine *e, tern_status *st)
{
    for (;;) {
        bool idle;
        tern_code rc = tern_engine_step(e, &idle, st);
        if (rc || idle) return rc;
    }
}

static void shutdown_pipeline(tern_engine *e)
{
    mbatch *b = &e->mbs[0];
    b->step.n_seqs = 0, b->step.n_tokens = 0, b->step.n_hops = 0, b->step.shutdown = 1;
    b->step.sent_at = now();
    size_t len = tern_ctl_pack_step(&b->step, b->ctl, CTL_CAP);
    tern_comm_isend_ctl(1, b->ctl, len, &b->req_ctl);
    tern_comm_isend_act(1, b->x, 0, &b->req_act);
    tern_comm_wait(&b->req_ctl, NULL);
    tern_comm_wait(&b->req_act, NULL);
    /* the shutdown travels the ring and comes back: then every worker has stopped */
    poll_return(e, true);
}

void tern_engine_close(tern_engine *e)
{
    if (!e) return;
    if (e->rank == 0 && e->workers_up) {
        tern_status st = {0};
        tern_engine_run(e, &st);
        if (e->mbs && e->ret_ctl[0]) shutdown_pipeline(e);
        e->workers_up = false;
    }
    if (e->seqs)
        for (int32_t i = 0; i < e->max_seqs; i++) {
            free(e->seqs[i].tokens);
            tern_sampler_free(e->seqs[i].smp);
        }
    if (e->mbs)
        for (int32_t i = 0; i < e->inflight_target; i++) free_mbatch(&e->mbs[i]);
    for (int k = 0; k < 2; k++) {
        free(e->ret_ctl[k]), free(e->ret_x[k]);
        tern_comm_req_free(&e->ret_req_ctl[k]), tern_comm_req_free(&e->ret_req_act[k]);
    }
    for (pending *p = e->inbox_head, *n; p; p = n) n = p->next, free(p->prompt), free(p);
    for (pending *p = e->wait_head, *n; p; p = n) n = p->next, free(p->prompt), free(p);
    free(e->seqs), free(e->mbs), free(e->releases), free(e->logits), free(e->rows);
    free(e->row_ent), free(e->row_pos), free(e->cancels), free(e->arena), free(e->ret_ents);
    tern_ctx_free(e->c);
    tern_model_free(e->m);
    tern_pool_free(e->pool);
    tern_topo_free(e->topo);
    tern_gguf_close(e->g);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    free(e);
}

const tern_hparams *tern_engine_hparams(const tern_engine *e)
{
    return e->hp;
}
const tern_gguf *tern_engine_gguf(const tern_engine *e)
{
    return e->g;
}
int32_t tern_engine_n_ctx(const tern_engine *e)
{
    return e->n_ctx;
}
int32_t tern_engine_max_seqs(const tern_engine *e)
{
    return e->max_seqs;
}
double tern_engine_bytes_per_token(const tern_engine *e)
{
    double head = e->o.head_type == TERN_HEAD_Q8_0
                      ? (double)e->hp->n_vocab * (e->hp->d + 4) /* int8 rows + scales */
                      : tern_plan_head_cost(e->hp);
    return tern_plan_layer_cost(e->hp) * e->hp->n_layer + head;
}
int tern_engine_n_ranks(const tern_engine *e)
{
    return e->n_ranks;
}

static int cmp_f(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

void tern_engine_stats_get(tern_engine *e, tern_engine_stats *s)
{
    memset(s, 0, sizeof *s);
    s->n_ranks = e->n_ranks;
    s->running = e->n_running;
    pthread_mutex_lock(&e->mu);
    s->queued = e->inbox_n + e->wait_n;
    pthread_mutex_unlock(&e->mu);
    s->steps = e->steps;
    s->tokens_prompt = e->tok_prompt;
    s->tokens_generated = e->tok_gen;
    s->wall_s = now() - e->t_start;
    s->busy_s[0] = e->busy0;
    s->peak_rss[0] = peak_rss();
    for (int r = 0; r < e->n_ranks; r++) {
        if (r > 0) s->busy_s[r] = e->worker_busy[r], s->peak_rss[r] = e->worker_rss[r];
        s->kv_used[r] = e->kv_reserved;
        s->kv_total[r] = e->kv_blocks;
        s->layer_start[r] = e->start[r];
        s->layer_end[r] = e->end[r];
    }
    int64_t n = e->n_hops < HOP_RING ? e->n_hops : HOP_RING;
    if (n > 0) {
        static float sorted[HOP_RING];
        memcpy(sorted, e->hops, (size_t)n * sizeof(float));
        qsort(sorted, (size_t)n, sizeof(float), cmp_f);
        s->hop_p50_ms = sorted[n / 2] * 1e3;
        s->hop_p99_ms = sorted[(n * 99) / 100 < n ? (n * 99) / 100 : n - 1] * 1e3;
    }
}
