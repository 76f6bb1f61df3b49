/* attention.c: causal GQA attention over the paged KV cache for one micro-batch.
 *
 * Work split: a unit is a chunk of consecutive tokens of one sequence x one KV head (x a part
 * of its query heads when the group is larger than TERN_ATTN_MAX_ROWS); units go to the
 * threads by cost, and one decoding sequence's leftover units are split by keys, rows and
 * dimensions. Every score, softmax and mix element is computed by one thread with the
 * single-row kernels' bits, so results do not depend on the thread count.
 * Memory: the scratch is tern_ctx's (sized at tern_ctx_create); nothing allocates here.
 */
#include <math.h>
#include <string.h>

#include "model/ctx-internal.h"

typedef struct attn_job {
    tern_ctx *c;
    int32_t li; /* local layer */
    bool split; /* the units past a multiple of the threads split three ways */
} attn_job;

#define ATTN_ROW_COST 16 /* a query row's work besides its keys (q, softmax, zeroing), in keys */

/* The attention cost of units [0, u) (per: units a chunk, each a chunk's cost). */
static int64_t units_cost(const tern_ctx *c, int64_t per, int64_t u)
{
    const int64_t ch = u / per;
    return c->chunk_cost[ch] * per +
           (u - ch * per) * (ch < c->n_chunks ? c->chunk_cost[ch + 1] - c->chunk_cost[ch] : 0);
}

/* The first of units [0, n) whose units before it cost at least task/n_tasks of them all, so
 * each task's units cost about the same. */
static int64_t unit_at(const tern_ctx *c, int64_t per, int64_t n, int task, int n_tasks)
{
    const int64_t total = units_cost(c, per, n);
    /* total * task / n_tasks without the product (no overflow) */
    const int64_t target = total / n_tasks * task + total % n_tasks * task / n_tasks;
    int64_t lo = 0, hi = n; /* the answer lies in [lo, hi] */
    while (lo < hi) {
        const int64_t u = lo + (hi - lo) / 2;
        if (units_cost(c, per, u) >= target)
            hi = u;
        else
            lo = u + 1;
    }
    return lo;
}

/* One attention unit u: a chunk of consecutive tokens of one sequence x one KV head (x a part
 * of its query heads when the group is larger than TERN_ATTN_MAX_ROWS): its P query rows, their
 * outputs and key counts, the longest count, the KV head and the sequence's slot. */
typedef struct attn_unit {
    const float *q[TERN_ATTN_MAX_ROWS];
    float *out[TERN_ATTN_MAX_ROWS];
    int32_t len[TERN_ATTN_MAX_ROWS];
    int P;
    int32_t kvh, slot, most;
} attn_unit;

static void attn_unit_get(const tern_ctx *c, int64_t u, attn_unit *a)
{
    const tern_hparams *hp = &c->m->hp;
    const int32_t hd = hp->head_dim, group = hp->n_head / hp->n_head_kv, nh = hp->n_head_kv;
    const int32_t uh = c->unit_heads, nsub = (group + uh - 1) / uh;
    const int32_t ch = (int32_t)(u / (nh * nsub));
    a->kvh = (int32_t)(u / nsub % nh);
    const int32_t h0 = a->kvh * group + (int32_t)(u % nsub) * uh;
    const int32_t nhu = group - (h0 - a->kvh * group) < uh ? group - (h0 - a->kvh * group) : uh;
    const int32_t t0 = c->chunk[ch], nt = c->chunk[ch + 1] - t0;
    a->slot = c->tok_slot[t0];
    a->P = 0;
    for (int32_t t = t0; t < t0 + nt; t++)
        for (int32_t h = h0; h < h0 + nhu; h++, a->P++) {
            a->q[a->P] = c->q + (size_t)t * (size_t)hp->d + (size_t)h * (size_t)hd;
            a->out[a->P] = c->att + (size_t)t * (size_t)hp->d + (size_t)h * (size_t)hd;
            a->len[a->P] = c->tok_pos[t] + 1;
        }
    a->most = c->tok_pos[t0 + nt - 1] + 1; /* positions grow within a chunk */
}

/* A thread's lists of one unit's blocks (c->blk, c->blks): K and V, and their int8 scales
 * (NULL for other types, as the kernels take them). */
typedef struct attn_blocks {
    const void **k, **v;
    const float **ks, **vs;
} attn_blocks;

static attn_blocks thread_blocks(const tern_ctx *c, int thread)
{
    const size_t mb = (size_t)c->max_blocks_per_seq;
    const bool q8 = tern_kv_attn_elem(c->kv_type) == TERN_ATTN_Q8;
    const void **k = c->blk + (size_t)thread * 2 * mb;
    const float **ks = c->blks + (size_t)thread * 2 * mb;
    return (attn_blocks){k, k + mb, q8 ? ks : NULL, q8 ? ks + mb : NULL};
}

/* The unit's blocks [b0, b1) of its sequence (K by columns, V by rows: each a contiguous run
 * of its head's elements), V from element `off` of each row on, at index b - b0 of bl. */
static void unit_blocks(const tern_ctx *c, int32_t li, const attn_unit *a, int32_t b0, int32_t b1,
                        size_t off, const attn_blocks *bl)
{
    for (int32_t b = b0; b < b1; b++) {
        uint8_t *kb = tern_kv_part(c, li, a->slot, b * TERN_KV_BLOCK, 0);
        uint8_t *vb = tern_kv_part(c, li, a->slot, b * TERN_KV_BLOCK, 1);
        bl->k[b - b0] = tern_kv_head_row(c, kb, a->kvh, 0);
        bl->v[b - b0] = tern_kv_head_row(c, vb, a->kvh, 0) + off * c->kv_elem;
        if (bl->ks) {
            bl->ks[b - b0] = tern_kv_scales(c, kb) + a->kvh;
            bl->vs[b - b0] = tern_kv_scales(c, vb) + a->kvh;
        }
    }
}

/* Causal GQA attention. A unit (attn_unit) is computed whole by one task: its query rows share
 * each converted K and V row. Every row's scores, softmax and mix are the single-row kernels'
 * bits, so the split into units changes nothing.
 *
 * Few long units (one sequence decoding a token: n_head_kv units for the threads) leave
 * threads idle for most of a unit when only whole units are shared out (5 on 2 threads: 3 and
 * 2). Then (j->split) whole units go out only up to a multiple of the threads, and the rest,
 * fewer than the threads, are split in three steps, each evenly: their scores by blocks of keys
 * (beside the whole units), their softmax by rows, their mix by ranges of the head's
 * dimensions. A score depends on its key alone and a mix element on its dimension alone
 * (kernels.h), so the bits are still those of whole units. */
#define ATTN_SPLIT_KEYS 512 /* keys from which a split unit pays for two more pool runs */
#define ATTN_SPLIT_UNITS 4  /* units a thread from which whole units share out evenly enough */

static int64_t attn_units(const tern_ctx *c)
{
    const tern_hparams *hp = &c->m->hp;
    const int32_t group = hp->n_head / hp->n_head_kv;
    return (int64_t)c->n_chunks * hp->n_head_kv * ((group + c->unit_heads - 1) / c->unit_heads);
}

/* keys of chunk ch's last token: the blocks every unit of the chunk reads */
static int32_t chunk_keys(const tern_ctx *c, int32_t ch)
{
    return c->tok_pos[c->chunk[ch + 1] - 1] + 1;
}

static bool attn_split(const tern_ctx *c, int32_t n_tok)
{
    const int64_t units = attn_units(c), rest = units % c->n_threads, per = units / c->n_chunks;
    /* single-token chunks (decode), few units, and room for the split units' scores after
     * every thread's own (c->scores holds chunk_tokens units a thread, a decode unit uses one) */
    if (c->n_threads < 2 || c->n_chunks != n_tok || rest == 0 ||
        units >= ATTN_SPLIT_UNITS * c->n_threads || c->chunk_tokens < rest + 1)
        return false;
    for (int64_t u = units - rest; u < units; u++)
        if (chunk_keys(c, (int32_t)(u / per)) < ATTN_SPLIT_KEYS) return false;
    return true;
}

/* the scores of split unit i (of the rest), at the end of c->scores */
static float *split_scores(const tern_ctx *c, int64_t i)
{
    const size_t rows = (size_t)c->n_threads * (size_t)(c->chunk_tokens * c->unit_heads);
    return c->scores + (rows - (size_t)(i + 1) * (size_t)c->unit_heads) * (size_t)c->n_ctx;
}

static void task_attention(void *arg, int task, int n_tasks, int thread)
{
    attn_job *j = arg;
    tern_ctx *c = j->c;
    const tern_hparams *hp = &c->m->hp;
    const int32_t hd = hp->head_dim, nh = hp->n_head_kv;
    const float scale = 1.0f / sqrtf((float)hd);
    const size_t ldo = (size_t)c->n_ctx;
    float *scores = c->scores + (size_t)thread * (size_t)(c->chunk_tokens * c->unit_heads) * ldo;
    const tern_attn_elem e = tern_kv_attn_elem(c->kv_type);
    const attn_blocks bl = thread_blocks(c, thread);
    const int64_t units = attn_units(c), per = units / c->n_chunks;
    const int64_t whole = j->split ? units - units % n_tasks : units;
    /* whole units split by cost, not count: a chunk late in a long prompt reads many more keys */
    const int64_t u0 = unit_at(c, per, whole, task, n_tasks);
    const int64_t u1 = task == n_tasks - 1 ? whole : unit_at(c, per, whole, task + 1, n_tasks);
    attn_unit a;
    for (int64_t u = u0; u < u1; u++) {
        attn_unit_get(c, u, &a);
        const int32_t nb = (a.most + TERN_KV_BLOCK - 1) / TERN_KV_BLOCK;
        unit_blocks(c, j->li, &a, 0, nb, 0, &bl);
        tern_attn_scores_cols(e, a.q, a.P, bl.k, bl.ks, nh, a.most, TERN_KV_BLOCK, hd,
                              TERN_KV_BLOCK, scale, scores, (int64_t)ldo);
        for (int r = 0; r < a.P; r++) {
            tern_softmax(scores + (size_t)r * ldo, a.len[r]);
            memset(a.out[r], 0, (size_t)hd * sizeof(float));
        }
        /* out = out + p_s * v_s for s in order (EXACT kernels, so the same in every variant) */
        tern_attn_mix_rows(e, scores, (int64_t)ldo, a.P, a.len, bl.v, bl.vs, nh, TERN_KV_BLOCK, hd,
                           hd, a.out);
    }
    if (!j->split) return;
    /* the split units' blocks of keys, in unit order, split evenly: this task's [g0, g1) */
    int64_t total = 0, g0, g1, g = 0;
    for (int64_t u = whole; u < units; u++)
        total += (chunk_keys(c, (int32_t)(u / per)) + TERN_KV_BLOCK - 1) / TERN_KV_BLOCK;
    tern_split_rows(total, 1, task, n_tasks, &g0, &g1);
    for (int64_t u = whole; u < units && g < g1; u++) {
        attn_unit_get(c, u, &a);
        const int32_t nb = (a.most + TERN_KV_BLOCK - 1) / TERN_KV_BLOCK;
        const int64_t lo = g0 > g ? g0 - g : 0, hi = g1 - g < nb ? g1 - g : nb;
        g += nb;
        if (lo >= hi) continue;
        const int32_t b0 = (int32_t)lo, b1 = (int32_t)hi, k0 = b0 * TERN_KV_BLOCK;
        const int32_t k1 = b1 * TERN_KV_BLOCK < a.most ? b1 * TERN_KV_BLOCK : a.most;
        unit_blocks(c, j->li, &a, b0, b1, 0, &bl);
        tern_attn_scores_cols(e, a.q, a.P, bl.k, bl.ks, nh, k1 - k0, TERN_KV_BLOCK, hd,
                              TERN_KV_BLOCK, scale, split_scores(c, u - whole) + k0, (int64_t)ldo);
    }
}

/* split units, step 2: their rows split evenly, each row's softmax and its output zeroed */
static void task_attn_softmax(void *arg, int task, int n_tasks, int thread)
{
    (void)thread;
    attn_job *j = arg;
    tern_ctx *c = j->c;
    const int64_t units = attn_units(c), whole = units - units % n_tasks, uh = c->unit_heads;
    int64_t r0, r1;
    tern_split_rows((units - whole) * uh, 1, task, n_tasks, &r0, &r1);
    attn_unit a;
    for (int64_t i = r0 / uh; i * uh < r1; i++) {
        attn_unit_get(c, whole + i, &a);
        for (int r = 0; r < a.P; r++) {
            if (i * uh + r < r0 || i * uh + r >= r1) continue;
            tern_softmax(split_scores(c, i) + (size_t)r * (size_t)c->n_ctx, a.len[r]);
            memset(a.out[r], 0, (size_t)c->m->hp.head_dim * sizeof(float));
        }
    }
}

/* split units, step 3: each unit's mix in n_tasks ranges of dimensions (whole vectors of 16),
 * the units x ranges split evenly */
static void task_attn_mix(void *arg, int task, int n_tasks, int thread)
{
    attn_job *j = arg;
    tern_ctx *c = j->c;
    const tern_hparams *hp = &c->m->hp;
    const int32_t hd = hp->head_dim;
    const tern_attn_elem e = tern_kv_attn_elem(c->kv_type);
    const attn_blocks bl = thread_blocks(c, thread);
    const int64_t units = attn_units(c), whole = units - units % n_tasks;
    int64_t i0, i1;
    tern_split_rows((units - whole) * n_tasks, 1, task, n_tasks, &i0, &i1);
    attn_unit a;
    float *out[TERN_ATTN_MAX_ROWS];
    for (int64_t i = i0; i < i1; i++) {
        int64_t d0, d1;
        tern_split_rows(hd, 16, (int)(i % n_tasks), n_tasks, &d0, &d1);
        if (d1 <= d0) continue;
        attn_unit_get(c, whole + i / n_tasks, &a);
        const int32_t nb = (a.most + TERN_KV_BLOCK - 1) / TERN_KV_BLOCK;
        unit_blocks(c, j->li, &a, 0, nb, (size_t)d0, &bl);
        for (int r = 0; r < a.P; r++) out[r] = a.out[r] + d0;
        tern_attn_mix_rows(e, split_scores(c, i / n_tasks), c->n_ctx, a.P, a.len, bl.v, bl.vs,
                           hp->n_head_kv, TERN_KV_BLOCK, d1 - d0, hd, out);
    }
}

bool tern_attn_plan(tern_ctx *c, int32_t n_tok)
{
    /* attention chunks: up to chunk_tokens consecutive tokens of one sequence */
    c->n_chunks = 0;
    for (int32_t t = 0; t < n_tok; t++)
        if (t == 0 || c->tok_seq[t] != c->tok_seq[t - 1] ||
            t - c->chunk[c->n_chunks - 1] == c->chunk_tokens)
            c->chunk[c->n_chunks++] = t;
    c->chunk[c->n_chunks] = n_tok;
    /* a chunk's cost: its rows x the keys its last token reads, plus each row's fixed work */
    c->chunk_cost[0] = 0;
    for (int32_t ch = 0; ch < c->n_chunks; ch++) {
        const int32_t last = c->chunk[ch + 1] - 1, nt = c->chunk[ch + 1] - c->chunk[ch];
        c->chunk_cost[ch + 1] =
            c->chunk_cost[ch] + (int64_t)nt * ((int64_t)c->tok_pos[last] + 1 + ATTN_ROW_COST);
    }
    return attn_split(c, n_tok);
}

void tern_attn_run(tern_ctx *c, int32_t li, bool split)
{
    attn_job j = {c, li, split};
    tern_pool_run(c->pool, task_attention, &j, c->n_threads);
    if (split) {
        tern_pool_run(c->pool, task_attn_softmax, &j, c->n_threads);
        tern_pool_run(c->pool, task_attn_mix, &j, c->n_threads);
    }
}
