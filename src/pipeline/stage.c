/* stage.c: the head part of a step, shared by the workers and the coordinator. */
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "pipeline/engine-internal.h"

uint64_t tern_peak_rss(void)
{
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) == 0 ? (uint64_t)ru.ru_maxrss * 1024u : 0;
}

tern_code tern_stage_init(tern_stage *s, const tern_engine_fixed *f, tern_status *st)
{
    memset(s, 0, sizeof *s);
    size_t nv = (size_t)(f->v1 - f->v0);
    s->rows = calloc((size_t)f->lim.head_rows, sizeof *s->rows);
    s->params = calloc((size_t)f->lim.sample_rows, sizeof *s->params);
    s->logits = nv ? malloc((size_t)TERN_HEAD_CHUNK * nv * sizeof(float)) : NULL;
    if (!s->rows || !s->params || (nv && !s->logits)) {
        tern_stage_free(s);
        return tern_status_set(st, TERN_ENOMEM, "engine: out of memory for the head scratch");
    }
    return TERN_OK;
}

void tern_stage_free(tern_stage *s)
{
    free(s->rows), free(s->params), free(s->logits);
    memset(s, 0, sizeof *s);
}

tern_code tern_stage_apply_kv(tern_ctx *c, const tern_step_seq *q, tern_status *st)
{
    if (q->flags & TERN_SEQ_SAVE) return tern_kv_move(c, q->src, q->slot, st);
    if (q->flags & TERN_SEQ_KEEP) return tern_kv_share(c, q->src, q->slot, q->n_share, st);
    if (q->flags & (TERN_SEQ_FINISHED | TERN_SEQ_CANCELLED)) tern_kv_release(c, q->slot);
    if (q->flags & TERN_SEQ_NEW) {
        tern_kv_release(c, q->slot);
        if (q->n_share > 0) return tern_kv_share(c, q->slot, q->src, q->n_share, st);
    }
    return TERN_OK;
}

int32_t tern_stage_head_rows(const tern_step *step, int32_t *rows)
{
    int32_t n = 0, row = 0;
    for (int32_t i = 0; i < step->n_seqs; i++) {
        const tern_step_seq *q = &step->seqs[i];
        for (int32_t k = q->n_tokens - q->n_head; k < q->n_tokens; k++) rows[n++] = row + k;
        row += q->n_tokens;
    }
    return n;
}

void tern_stage_params(const tern_step *step, tern_row_params *p)
{
    int32_t k = 0, pen = 0;
    for (int32_t i = 0; i < step->n_seqs; i++) {
        const tern_step_seq *q = &step->seqs[i];
        if (!(q->flags & TERN_SEQ_SAMPLE)) continue;
        /* a speculative entry samples every row: row r draws the token at pos0 + r + 1 (its
         * adjustments do not depend on history, so every row shares them) */
        int32_t rows = q->flags & TERN_SEQ_SPEC ? q->n_head : 1;
        for (int32_t r = 0; r < rows; r++)
            p[k++] = (tern_row_params){.temperature = q->temperature,
                                       .penalty = q->penalty,
                                       .n_cand = q->n_cand,
                                       .n_logprobs = q->n_logprobs,
                                       .gumbel = q->gumbel,
                                       .seed = q->seed,
                                       .pos = q->pos0 + q->n_tokens - rows + r + 1,
                                       .adj = step->pen_ids + pen,
                                       .n_adj = q->n_pen};
        pen += q->n_pen;
    }
}

typedef struct fold_job {
    const tern_row_params *params;
    tern_row_sum *sums;
    const float *logits;
    const int32_t *row_k; /* per chunk row: its sample index, or -1 */
    size_t nv;
    int32_t v0;
} fold_job;

static void task_fold(void *arg, int task, int n_tasks, int thread)
{
    (void)n_tasks, (void)thread;
    fold_job *j = arg;
    int32_t k = j->row_k[task];
    if (k < 0) return;
    tern_row_sum_fold(&j->sums[k], &j->params[k], j->logits + (size_t)task * j->nv, j->v0,
                      (int32_t)j->nv);
}

void tern_stage_head(tern_stage *s, const tern_engine_fixed *f, const tern_step *step,
                     const float *hx, tern_row_sum *sums, float *full, size_t full_ld, size_t col0)
{
    const size_t nv = (size_t)(f->v1 - f->v0), d = (size_t)f->hp->d;
    if (nv == 0 || step->n_head == 0) return;
    tern_stage_params(step, s->params);
    /* per head row: its sample index (or -1) and its full-row index (or -1) */
    int32_t row_k[TERN_HEAD_CHUNK], row_j[TERN_HEAD_CHUNK];
    int32_t e = 0, in_e = 0, k = 0, j = 0;
    while (e < step->n_seqs && step->seqs[e].n_head == 0) e++;
    for (int32_t done = 0; done < step->n_head;) {
        int32_t n = step->n_head - done < TERN_HEAD_CHUNK ? step->n_head - done : TERN_HEAD_CHUNK;
        for (int32_t r = 0; r < n; r++) {
            const tern_step_seq *q = &step->seqs[e];
            bool last = in_e == q->n_head - 1;
            bool sampled = (q->flags & TERN_SEQ_SAMPLE) && (last || (q->flags & TERN_SEQ_SPEC));
            row_k[r] = sampled ? k++ : -1;
            row_j[r] = q->flags & TERN_SEQ_FULL ? j++ : -1;
            if (last) {
                in_e = 0;
                e++;
                while (e < step->n_seqs && step->seqs[e].n_head == 0) e++;
            } else {
                in_e++;
            }
        }
        tern_head_slice(f->c, hx + (size_t)done * d, n, s->logits);
        fold_job fj = {.params = s->params,
                       .sums = sums,
                       .logits = s->logits,
                       .row_k = row_k,
                       .nv = nv,
                       .v0 = f->v0};
        tern_pool_run(f->pool, task_fold, &fj, n);
        for (int32_t r = 0; r < n; r++)
            if (row_j[r] >= 0)
                memcpy(full + (size_t)row_j[r] * full_ld + col0, s->logits + (size_t)r * nv,
                       nv * sizeof(float));
        done += n;
    }
}
