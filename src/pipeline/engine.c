/* engine.c: the public engine (engine.h): open with the handshake (every rank opens the model,
 * checks its checksum, receives rank 0's plan and limits, loads its slice), close, and the
 * calls that hand over to the scheduler (rank 0's requests), the coordinator (rank 0's engine
 * thread) and the worker loop (ranks 1..N-1).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline/engine-internal.h"
#include "ternpipe/grammar.h"
#include "ternpipe/kernels.h"
#include "ternpipe/log.h"
#include "ternpipe/tokenizer.h"

struct tern_engine {
    tern_engine_fixed f;
    tern_sched *sched;       /* rank 0 */
    tern_coord *coord;       /* rank 0 */
    tern_vocab_index *vocab; /* rank 0: constrained output (NULL: the model has no vocabulary) */
};

/* Rank 0's vocabulary for constrained output (response_format); a model without one still
 * serves, and refuses those requests. */
static void open_vocab(tern_engine *e)
{
    tern_status vst = {0};
    tern_tokenizer *tok = NULL;
    if (tern_tokenizer_load(&tok, e->f.g, &vst) || tern_vocab_index_create(&e->vocab, tok, &vst))
        tern_log(TERN_LOG_INFO, "engine: no constrained output: %s", vst.msg);
    tern_tokenizer_free(tok);
    tern_sched_set_vocab(e->sched, e->vocab);
}

/* A short probe of this rank's ternary GEMM speed for the auto split. */
static double speed_probe(void)
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
                double t0 = tern_comm_now();
                for (int k = 0; k < 20; k++) tern_tgemm(w, q, s, qs, T, y, N, 0, N);
                double dt = tern_comm_now() - t0;
                if (dt > 0 && 1.0 / dt > best) best = 1.0 / dt;
            }
        }
    }
    tern_tmat_free(w);
    free(tr), free(q), free(y);
    return best > 0 ? best : 1.0;
}

/* every rank reports its code; the first failing rank's story is told once */
static tern_code agree(tern_engine_fixed *f, tern_code mine, const char *what, tern_status *lst,
                       tern_status *st)
{
    uint64_t *codes = calloc((size_t)f->n_ranks, sizeof *codes);
    if (!codes) tern_die("engine: out of memory");
    tern_comm_allgather_u64((uint64_t)mine, codes);
    tern_code rc = TERN_OK;
    for (int r = 0; r < f->n_ranks && !rc; r++)
        if (codes[r] != TERN_OK) {
            if (r == f->rank) {
                rc = tern_status_set(st, mine, "rank %d: %s", r, lst->msg);
                if (r != 0) tern_log(TERN_LOG_ERROR, "%s", st->msg);
            } else {
                rc = tern_status_set(st, TERN_EINVAL,
                                     "engine: rank %d %s (its own error is in its "
                                     "log)",
                                     r, what);
            }
        }
    free(codes);
    return rc;
}

static tern_code handshake(tern_engine_fixed *f, tern_status *st)
{
    tern_status lst = {0};
    const tern_engine_opts *o = &f->o;
    /* a worker needs the weights alone (rank 0 also the vocabulary: tokens, constrained
     * output); the checksum is the same either way */
    tern_code rc =
        tern_gguf_open_flags(&f->g, o->model_path, f->rank ? TERN_GGUF_WEIGHTS_ONLY : 0, &lst);
    tern_hparams hp = {0};
    if (!rc) rc = tern_hparams_read(f->g, &hp, &lst);
    uint64_t mine = rc ? 0 : tern_gguf_checksum(f->g);
    if ((rc = agree(f, rc, "could not open the model", &lst, st))) return rc;
    uint64_t *sums = calloc((size_t)f->n_ranks, sizeof *sums);
    uint64_t *kvt = calloc((size_t)f->n_ranks, sizeof *kvt);
    double *speeds = calloc((size_t)f->n_ranks, sizeof *speeds);
    uint8_t *buf = NULL;
    if (!sums || !kvt || !speeds) tern_die("engine: out of memory");
    tern_comm_allgather_u64(mine, sums);
    for (int r = 0; r < f->n_ranks; r++)
        if (sums[r] != sums[0]) {
            rc = tern_status_set(st, TERN_EINVAL,
                                 "handshake: rank %d model checksum: got %016llx, expected %016llx "
                                 "(rank 0's; every rank needs the same model file)",
                                 r, (unsigned long long)sums[r], (unsigned long long)sums[0]);
            goto out;
        }
    /* every rank stores its KV as rank 0 does (the Hello has no field for it: each rank reads
     * it from its own command line, so check that they agree) */
    tern_comm_allgather_u64((uint64_t)o->kv_type, kvt);
    for (int r = 0; r < f->n_ranks; r++)
        if (kvt[r] != kvt[0] || kvt[r] >= TERN_KV_TYPE_COUNT) {
            rc = tern_status_set(
                st, TERN_EINVAL, "handshake: rank %d KV type: got %s, expected %s (rank 0's)", r,
                tern_kv_type_name((tern_kv_type)kvt[r]), tern_kv_type_name((tern_kv_type)kvt[0]));
            goto out;
        }
    if ((rc = tern_plan_init(&f->plan, f->n_ranks, &hp, st))) goto out;
    /* rank 0 decides the sizes and the plan and sends them in the Hello */
    int32_t n_ctx = o->n_ctx > 0 && o->n_ctx < hp.n_ctx ? o->n_ctx : hp.n_ctx;
    int32_t max_seqs = o->max_seqs > 0 ? o->max_seqs : TERN_DEFAULT_SEQS;
    int32_t batch = o->batch_tokens > 0 ? o->batch_tokens : TERN_DEFAULT_BATCH;
    int32_t inflight = o->inflight > 0 ? o->inflight : f->n_ranks;
    int32_t kv_blocks = o->kv_blocks;
    if (kv_blocks <= 0) {
        /* enough for max_seqs full contexts, but at most the memory budget (sized for a rank
         * holding every layer; ranks with a slice use proportionally less) */
        int64_t one = (n_ctx + TERN_KV_BLOCK - 1) / TERN_KV_BLOCK;
        int64_t full = (int64_t)max_seqs * one;
        double block_bytes = (double)tern_kv_block_bytes(&hp, hp.n_layer, o->kv_type);
        double budget = (o->kv_mem_mb > 0 ? o->kv_mem_mb : TERN_DEFAULT_KV_MB) * 1048576.0;
        int64_t fit = (int64_t)(budget / block_bytes);
        int64_t kb = full < fit ? full : (fit > one ? fit : one);
        kv_blocks = kb > INT32_MAX ? INT32_MAX : (int32_t)kb;
    }
    tern_plan_costs costs = {tern_plan_layer_cost(&hp), tern_plan_head_row_cost(&hp, o->head_type)};
    bool probe = f->n_ranks > 1 && (!o->split || !strncmp(o->split, "auto", 4));
    tern_comm_allgather_f64(probe ? speed_probe() : 1.0, speeds);
    uint64_t len = 0;
    size_t cap = 4096 + (size_t)f->n_ranks * 64;
    buf = malloc(cap);
    if (!buf) tern_die("engine: out of memory");
    tern_code prc = TERN_OK;
    if (f->rank == 0) {
        tern_limits chk;
        prc = tern_limits_compute(&chk, f->n_ranks, hp.n_vocab, hp.d, hp.n_layer, max_seqs, batch,
                                  n_ctx, kv_blocks, inflight, &lst);
        if (!prc) prc = tern_plan_make(o->split, &costs, probe ? speeds : NULL, &f->plan, &lst);
        tern_hello h = {.protocol_version = TERN_PROTOCOL_VERSION,
                        .model_checksum = sums[0],
                        .n_layers = (uint32_t)hp.n_layer,
                        .n_ranks = f->n_ranks,
                        .batch_tokens = (uint32_t)batch,
                        .max_seqs = (uint32_t)max_seqs,
                        .n_ctx = (uint32_t)n_ctx,
                        .kv_blocks = (uint32_t)kv_blocks,
                        .inflight = (uint32_t)inflight,
                        .plan = &f->plan};
        if (!prc) len = tern_ctl_pack_hello(&h, buf, cap);
    }
    tern_comm_bcast(&len, sizeof len, 0);
    if (len == 0 || len > cap) {
        if (f->rank == 0)
            rc = tern_status_set(st, prc ? prc : TERN_EINVAL, "%s", lst.msg);
        else
            rc = tern_status_set(st, TERN_EINVAL, "handshake: rank 0 could not make a plan");
        goto out;
    }
    tern_comm_bcast(buf, (size_t)len, 0);
    tern_hello h = {.plan = &f->plan};
    if ((rc = tern_ctl_unpack_hello(buf, (size_t)len, &h, st))) goto out;
    if (h.protocol_version != TERN_PROTOCOL_VERSION || h.model_checksum != mine ||
        h.n_ranks != f->n_ranks || h.n_layers != (uint32_t)hp.n_layer) {
        rc = tern_status_set(
            st, TERN_EINVAL,
            "handshake: rank %d: protocol %u / checksum %016llx: got them, expected %u / %016llx",
            f->rank, h.protocol_version, (unsigned long long)h.model_checksum,
            TERN_PROTOCOL_VERSION, (unsigned long long)mine);
        goto out;
    }
    if ((rc = tern_limits_compute(&f->lim, f->n_ranks, hp.n_vocab, hp.d, hp.n_layer,
                                  (int32_t)h.max_seqs, (int32_t)h.batch_tokens, (int32_t)h.n_ctx,
                                  (int32_t)h.kv_blocks, (int32_t)h.inflight, st)))
        goto out;
    if (h.n_ctx > (uint32_t)hp.n_ctx) {
        rc = tern_status_set(st, TERN_EINVAL, "handshake: context: got %u, expected <= %d", h.n_ctx,
                             hp.n_ctx);
        goto out;
    }
    /* speeds relative to rank 0's, so a stage's cost reads as bytes per token */
    for (int r = f->n_ranks; probe && r-- > 0;)
        speeds[r] = speeds[0] > 0 ? speeds[r] / speeds[0] : 1.0;
    tern_plan_stage_costs(&f->plan, &costs, probe ? speeds : NULL);
    f->last_layer = tern_plan_last_layer_rank(&f->plan);
    f->v0 = f->plan.vocab_start[f->rank], f->v1 = f->plan.vocab_end[f->rank];
    if (probe && f->rank == 0) {
        char line[512];
        int n = snprintf(line, sizeof line, "speed probe (relative):");
        for (int r = 0; r < f->n_ranks && n > 0 && n < (int)sizeof line; r++)
            n += snprintf(line + n, sizeof line - (size_t)n, " r%d %.2f", r, speeds[r] / speeds[0]);
        tern_log(TERN_LOG_INFO, "%s", line);
    }
out:
    free(sums), free(kvt), free(speeds), free(buf);
    return rc;
}

tern_code tern_engine_open(tern_engine **out, const tern_engine_opts *o, tern_status *st)
{
    *out = NULL;
    tern_engine *e = calloc(1, sizeof *e);
    if (!e) return tern_status_set(st, TERN_ENOMEM, "engine: out of memory");
    tern_engine_fixed *f = &e->f;
    f->o = *o;
    f->rank = tern_comm_rank();
    f->n_ranks = tern_comm_size();
    tern_code rc;
    tern_kernels_init();
    if ((rc = tern_topo_discover(&f->topo, st)) ||
        (rc = tern_pool_create(&f->pool, f->topo, o->n_threads, st)))
        goto fail;
    if ((rc = handshake(f, st))) goto fail;
    {
        bool head = f->v1 > f->v0;
        tern_model_opts mo = {.l0 = f->plan.layer_start[f->rank],
                              .l1 = f->plan.layer_end[f->rank],
                              .embed = f->rank == 0,
                              .head = head,
                              .head_v0 = f->v0,
                              .head_v1 = f->v1,
                              .final_norm = f->rank == f->last_layer,
                              .head_type = o->head_type,
                              .topo = f->topo,
                              .progress = f->rank == 0 ? o->progress : NULL,
                              .progress_user = o->progress_user};
        tern_status lst = {0};
        rc = tern_model_load(&f->m, f->g, &mo, &lst);
        if (!rc) {
            f->hp = tern_model_hparams(f->m);
            tern_ctx_opts co = {.max_tokens = f->lim.batch_tokens,
                                .max_seqs =
                                    f->lim.max_seqs + f->lim.cache_slots, /* + the prefix cache */
                                .kv_blocks = f->lim.kv_blocks,
                                .n_ctx = f->lim.n_ctx,
                                .kv_type = o->kv_type};
            rc = tern_ctx_create(&f->c, f->m, f->pool, &co, &lst);
        }
        if ((rc = agree(f, rc, "failed to load its slice", &lst, st))) goto fail;
    }
    if (o->verbose || f->rank == 0) {
        char topo[512];
        tern_topo_describe(f->topo, topo, sizeof topo);
        if (o->verbose) tern_log(TERN_LOG_INFO, "%s; %d threads", topo, tern_pool_size(f->pool));
        if (f->rank == 0) {
            size_t cap = 64 + (size_t)f->n_ranks * 64;
            char *line = malloc(cap);
            if (line) {
                tern_plan_describe(&f->plan, line, cap);
                tern_log(TERN_LOG_INFO, "plan (%d ranks, %s):%s", f->n_ranks,
                         o->split ? o->split : "auto", line);
                free(line);
            }
        }
    }
    if (o->verbose)
        tern_log(
            TERN_LOG_INFO,
            "layers [%d,%d), head rows [%d,%d): %.1f MB of weights, KV pool %d "
            "blocks of %s (%.1f MB)",
            f->plan.layer_start[f->rank], f->plan.layer_end[f->rank], f->v0, f->v1,
            (double)tern_model_weight_bytes(f->m) / 1e6, f->lim.kv_blocks,
            tern_kv_type_name(o->kv_type),
            (double)f->lim.kv_blocks *
                (double)tern_kv_block_bytes(
                    f->hp, f->plan.layer_end[f->rank] - f->plan.layer_start[f->rank], o->kv_type) /
                1e6);
    if (f->rank != 0) {
        rc = tern_worker_run(f, st);
        tern_engine_close(e);
        return rc;
    }
    if (!(rc = tern_sched_create(&e->sched, &f->lim, st)) && o->spec_drafts)
        tern_sched_set_spec(e->sched, o->spec_drafts < 0 ? 0 : o->spec_drafts);
    if (!rc) open_vocab(e);
    if (!rc) tern_sched_set_prefix_cache(e->sched, o->prefix_cache >= 0);
    if (rc || (rc = tern_coord_create(&e->coord, f, e->sched, st))) {
        /* rank 0 alone failed (memory) while the workers are in their loop: stop them */
        if (!e->coord && f->n_ranks > 1) tern_die("engine: %s", st->msg);
        goto fail;
    }
    *out = e;
    return TERN_OK;
fail:
    tern_engine_close(e);
    return rc;
}

void tern_engine_close(tern_engine *e)
{
    if (!e) return;
    tern_engine_fixed *f = &e->f;
    if (e->sched) {
        tern_sched_stats ss;
        tern_sched_stats_get(e->sched, &ss);
        if (ss.retries > 0)
            tern_log(TERN_LOG_INFO, "sampler: %lld rows drawn again from their full logits",
                     (long long)ss.retries);
        if (ss.drafted > 0)
            tern_log(TERN_LOG_INFO, "speculative decoding: %lld of %lld drafts accepted",
                     (long long)ss.accepted, (long long)ss.drafted);
    }
    if (e->coord) tern_coord_shutdown(e->coord);
    tern_status fst = {0};
    if (f->n_ranks > 1 && tern_coord_failed(e->coord, &fst)) {
        /* a rank does not answer: the shutdown step would never come back and MPI_Finalize
         * would wait for it forever. The clients have been told (the server answers every
         * request it held before it closes the engine); end the job. */
        tern_log(TERN_LOG_ERROR, "engine: ending every rank of the job after: %s", fst.msg);
        tern_dist_abort(TERN_ENGINE_ABORT_CODE);
    }
    tern_coord_free(e->coord);
    tern_sched_free(e->sched);
    tern_vocab_index_free(e->vocab);
    tern_ctx_free(f->c);
    tern_model_free(f->m);
    tern_pool_free(f->pool);
    tern_topo_free(f->topo);
    tern_gguf_close(f->g);
    tern_plan_free(&f->plan);
    free(e);
}

tern_code tern_engine_submit(tern_engine *e, const tern_request *r, int64_t *id, tern_status *st)
{
    return tern_sched_submit(e->sched, r, id, st);
}
void tern_engine_cancel(tern_engine *e, int64_t id)
{
    tern_sched_cancel(e->sched, id);
}
void tern_engine_wait(tern_engine *e, int timeout_ms)
{
    tern_sched_wait(e->sched, timeout_ms);
}
tern_code tern_engine_step(tern_engine *e, bool *idle, tern_status *st)
{
    return tern_coord_step(e->coord, idle, st);
}
tern_code tern_engine_run(tern_engine *e, tern_status *st)
{
    for (;;) {
        bool idle;
        tern_code rc = tern_engine_step(e, &idle, st);
        if (rc || idle) return rc;
    }
}

const tern_hparams *tern_engine_hparams(const tern_engine *e)
{
    return e->f.hp;
}
const tern_gguf *tern_engine_gguf(const tern_engine *e)
{
    return e->f.g;
}
int32_t tern_engine_n_ctx(const tern_engine *e)
{
    return e->f.lim.n_ctx;
}
int32_t tern_engine_max_seqs(const tern_engine *e)
{
    return e->f.lim.max_seqs;
}
double tern_engine_bytes_per_token(const tern_engine *e)
{
    const tern_hparams *hp = e->f.hp;
    return tern_plan_layer_cost(hp) * hp->n_layer +
           tern_plan_head_row_cost(hp, e->f.o.head_type) * hp->n_vocab;
}
int tern_engine_n_ranks(const tern_engine *e)
{
    return e->f.n_ranks;
}
void tern_engine_stats_get(tern_engine *e, tern_engine_stats *s)
{
    tern_coord_stats(e->coord, s);
}
