/* forward.c: one layer slice over one micro-batch, the paged KV cache, embedding lookup and
 * the LM head (the attention step is attention.c's).
 *
 * Work split: every parallel step divides whole output rows (GEMMs, LM head), whole tokens
 * (norms, quantization, RoPE) or attention's units (attention.c) among the pool's threads;
 * each result element is computed by exactly one thread with the same instruction sequence,
 * so results do not depend on the thread count or the layer split.
 * Memory: every buffer is sized at tern_ctx_create; nothing allocates in here afterwards.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/ctx-internal.h"
#include "ternpipe/log.h"

#define MAXF(a, b) ((a) > (b) ? (a) : (b))

static const char *const kv_names[TERN_KV_TYPE_COUNT] = {"f16", "f32", "q8"};
static const size_t kv_elem_bytes[TERN_KV_TYPE_COUNT] = {2, 4, 1};
/* the attention kernels' name for each KV type */

const char *tern_kv_type_name(tern_kv_type t)
{
    return t >= 0 && t < TERN_KV_TYPE_COUNT ? kv_names[t] : "?";
}

tern_kv_type tern_kv_type_parse(const char *name)
{
    int t = 0;
    while (t < TERN_KV_TYPE_COUNT && strcmp(name, kv_names[t]) != 0) t++;
    return (tern_kv_type)t;
}

/* one (layer, K or V) part of a block */
static uint64_t kv_part_bytes(const tern_hparams *hp, tern_kv_type t)
{
    uint64_t rows = (uint64_t)TERN_KV_BLOCK * (uint64_t)hp->n_head_kv;
    uint64_t data = rows * (uint64_t)hp->head_dim * kv_elem_bytes[t];
    return data + (t == TERN_KV_Q8 ? rows * sizeof(float) : 0);
}

uint64_t tern_kv_block_bytes(const tern_hparams *hp, int32_t n_layers, tern_kv_type t)
{
    TERN_ASSERT(t >= 0 && t < TERN_KV_TYPE_COUNT && n_layers >= 0);
    return (uint64_t)n_layers * 2 * kv_part_bytes(hp, t);
}

static void *xcalloc(size_t n, size_t size)
{
    return calloc(n ? n : 1, size);
}

tern_code tern_ctx_create(tern_ctx **out, const tern_model *m, tern_pool *pool,
                          const tern_ctx_opts *o, tern_status *st)
{
    *out = NULL;
    const tern_hparams *hp = &m->hp;
    tern_ctx *c = calloc(1, sizeof *c);
    if (!c) return tern_status_set(st, TERN_ENOMEM, "ctx: out of memory");
    c->m = m;
    c->pool = pool;
    c->n_threads = tern_pool_size(pool);
    c->max_tokens = o->max_tokens > 0 ? o->max_tokens : 512;
    c->max_seqs = o->max_seqs > 0 ? o->max_seqs : 64;
    c->n_ctx = o->n_ctx > 0 ? o->n_ctx : hp->n_ctx;
    c->n_local = m->l1 - m->l0;
    c->kv_dim = hp->n_head_kv * hp->head_dim;
    c->max_blocks_per_seq = (c->n_ctx + TERN_KV_BLOCK - 1) / TERN_KV_BLOCK;
    c->n_blocks = o->kv_blocks > 0 ? o->kv_blocks : c->max_seqs * c->max_blocks_per_seq;
    if (o->kv_type < 0 || o->kv_type >= TERN_KV_TYPE_COUNT) {
        free(c);
        return tern_status_set(st, TERN_EINVAL, "ctx: KV type: got %d, expected 0..%d",
                               (int)o->kv_type, TERN_KV_TYPE_COUNT - 1);
    }
    if (hp->head_dim > TERN_ATTN_MAX_HD) {
        free(c);
        return tern_status_set(st, TERN_EUNSUPPORTED, "ctx: head_dim: got %d, expected at most %d",
                               hp->head_dim, TERN_ATTN_MAX_HD);
    }
    c->kv_type = o->kv_type;
    c->kv_elem = kv_elem_bytes[c->kv_type];
    c->kv_part = (size_t)kv_part_bytes(hp, c->kv_type);
    c->block_bytes = (size_t)tern_kv_block_bytes(hp, c->n_local, c->kv_type);
    const size_t T = (size_t)c->max_tokens, d = (size_t)hp->d, ff = (size_t)hp->n_ff;
    const size_t wide = MAXF(d, ff), kvd = (size_t)c->kv_dim, half = (size_t)hp->head_dim / 2;
    if (c->n_local > 0) {
        /* untouched anonymous memory: pages are placed on first touch by this rank's own
         * (bound) threads, and only the blocks in use count in RSS (blocks are used in order,
         * so a 2 MiB page adds at most its tail) */
        size_t bytes = (size_t)c->n_blocks * c->block_bytes;
        c->kv_pool = bytes ? tern_topo_reserve(bytes) : NULL;
        if (bytes && !c->kv_pool) {
            free(c);
            return tern_status_set(st, TERN_ENOMEM, "ctx: KV cache of %zu bytes: out of memory",
                                   bytes);
        }
    }
    c->free_blocks = xcalloc((size_t)c->n_blocks, sizeof(int32_t));
    c->block_ref = xcalloc((size_t)c->n_blocks, sizeof(int32_t));
    c->block_table = xcalloc((size_t)c->max_seqs * (size_t)c->max_blocks_per_seq, sizeof(int32_t));
    c->seq_blocks = xcalloc((size_t)c->max_seqs, sizeof(int32_t));
    c->rope_cos = xcalloc((size_t)c->n_ctx * half, sizeof(float));
    c->rope_sin = xcalloc((size_t)c->n_ctx * half, sizeof(float));
    c->h = xcalloc(T * wide, sizeof(float));
    c->q8 = xcalloc(T * wide, 1);
    c->qs = xcalloc(T, sizeof(float));
    c->qsum = xcalloc(T, sizeof(int32_t));
    c->q = xcalloc(T * d, sizeof(float));
    c->k = xcalloc(T * kvd, sizeof(float));
    c->v = xcalloc(T * kvd, sizeof(float));
    c->att = xcalloc(T * d, sizeof(float));
    c->g = xcalloc(T * ff, sizeof(float));
    c->u = xcalloc(T * ff, sizeof(float));
    c->o = xcalloc(T * wide, sizeof(float));
    {
        /* rows per attention unit: a whole GQA group (or TERN_ATTN_MAX_ROWS of it) for as many
         * tokens as keep each thread's scores within 4 MiB */
        const int32_t group = hp->n_head / hp->n_head_kv;
        c->unit_heads = group < TERN_ATTN_MAX_ROWS ? group : TERN_ATTN_MAX_ROWS;
        int32_t rows = (int32_t)((1u << 20) / (uint32_t)c->n_ctx);
        rows = rows > TERN_ATTN_MAX_ROWS ? TERN_ATTN_MAX_ROWS : rows;
        c->chunk_tokens = rows / c->unit_heads > 1 ? rows / c->unit_heads : 1;
    }
    c->scores =
        xcalloc((size_t)c->n_threads * (size_t)(c->chunk_tokens * c->unit_heads) * (size_t)c->n_ctx,
                sizeof(float));
    c->blk = xcalloc((size_t)c->n_threads * 2 * (size_t)c->max_blocks_per_seq, sizeof(void *));
    c->blks = xcalloc((size_t)c->n_threads * 2 * (size_t)c->max_blocks_per_seq, sizeof(float *));
    c->chunk = xcalloc(T + 1, sizeof(int32_t));
    c->chunk_cost = xcalloc(T + 1, sizeof(int64_t));
    c->tok_pos = xcalloc(T, sizeof(int32_t));
    c->tok_slot = xcalloc(T, sizeof(int32_t));
    c->tok_seq = xcalloc(T, sizeof(int32_t));
    c->head_x = xcalloc(T * d, sizeof(float));
    c->own_stride = (wide + 63) / 64 * 64;
    const size_t nt = (size_t)c->n_threads, own = nt * TERN_OWN_NORM_TOKENS;
    c->own_h = xcalloc(own * c->own_stride, sizeof(float));
    c->own_q8 = xcalloc(own * c->own_stride, 1);
    c->own_qs = xcalloc(own, sizeof(float));
    c->own_qsum = xcalloc(own, sizeof(int32_t));
    if (!c->free_blocks || !c->block_ref || !c->block_table || !c->seq_blocks || !c->rope_cos ||
        !c->rope_sin || !c->h || !c->q8 || !c->qs || !c->qsum || !c->q || !c->k || !c->v ||
        !c->att || !c->g || !c->u || !c->o || !c->scores || !c->blk || !c->blks || !c->chunk ||
        !c->chunk_cost || !c->tok_pos || !c->tok_slot || !c->tok_seq || !c->head_x || !c->own_h ||
        !c->own_q8 || !c->own_qs || !c->own_qsum) {
        tern_ctx_free(c);
        return tern_status_set(st, TERN_ENOMEM, "ctx: out of memory for scratch");
    }
    for (int32_t b = 0; b < c->n_blocks; b++) c->free_blocks[b] = c->n_blocks - 1 - b;
    c->n_free = c->n_blocks;
    for (size_t i = 0; i < (size_t)c->max_seqs * (size_t)c->max_blocks_per_seq; i++)
        c->block_table[i] = -1;
    tern_rope_table(c->rope_cos, c->rope_sin, 0, c->n_ctx, hp->head_dim, (double)hp->rope_theta);
    *out = c;
    return TERN_OK;
}

void tern_ctx_free(tern_ctx *c)
{
    if (!c) return;
    tern_topo_free_mem(NULL, c->kv_pool, (size_t)c->n_blocks * c->block_bytes);
    free(c->free_blocks), free(c->block_ref), free(c->block_table), free(c->seq_blocks);
    free(c->rope_cos), free(c->rope_sin);
    free(c->h), free(c->q8), free(c->qs), free(c->qsum), free(c->q), free(c->k), free(c->v);
    free(c->att), free(c->g), free(c->u), free(c->o), free(c->scores), free(c->blk), free(c->blks),
        free(c->chunk);
    free(c->chunk_cost);
    free(c->tok_pos), free(c->tok_slot), free(c->tok_seq), free(c->head_x);
    free(c->own_h), free(c->own_q8), free(c->own_qs), free(c->own_qsum);
    free(c);
}

int32_t tern_ctx_n_ctx(const tern_ctx *c)
{
    return c->n_ctx;
}
int32_t tern_kv_blocks_used(const tern_ctx *c)
{
    return c->n_blocks - c->n_free;
}
int32_t tern_kv_blocks_total(const tern_ctx *c)
{
    return c->n_blocks;
}

tern_code tern_kv_reserve(tern_ctx *c, int32_t slot, int32_t n_pos, tern_status *st)
{
    if (slot < 0 || slot >= c->max_seqs)
        return tern_status_set(st, TERN_EINVAL, "kv: slot: got %d, expected 0..%d", slot,
                               c->max_seqs - 1);
    if (n_pos > c->n_ctx)
        return tern_status_set(st, TERN_ERANGE,
                               "kv: positions: got %d, expected at most the context %d", n_pos,
                               c->n_ctx);
    if (c->n_local == 0) return TERN_OK;
    int32_t need = (n_pos + TERN_KV_BLOCK - 1) / TERN_KV_BLOCK;
    int32_t *table = c->block_table + (size_t)slot * (size_t)c->max_blocks_per_seq;
    if (need - c->seq_blocks[slot] > c->n_free)
        return tern_status_set(st, TERN_EBUSY, "kv: blocks: got %d free, expected %d more",
                               c->n_free, need - c->seq_blocks[slot]);
    while (c->seq_blocks[slot] < need) {
        int32_t b = c->free_blocks[--c->n_free];
        c->block_ref[b] = 1;
        table[c->seq_blocks[slot]++] = b;
    }
    return TERN_OK;
}

void tern_kv_release(tern_ctx *c, int32_t slot)
{
    if (slot < 0 || slot >= c->max_seqs) return;
    int32_t *table = c->block_table + (size_t)slot * (size_t)c->max_blocks_per_seq;
    while (c->seq_blocks[slot] > 0) {
        int32_t b = table[--c->seq_blocks[slot]];
        table[c->seq_blocks[slot]] = -1;
        if (--c->block_ref[b] == 0) c->free_blocks[c->n_free++] = b;
    }
}

static tern_code kv_slots_ok(const tern_ctx *c, int32_t dst, int32_t src, tern_status *st)
{
    if (dst < 0 || dst >= c->max_seqs || src < 0 || src >= c->max_seqs || dst == src)
        return tern_status_set(st, TERN_EINVAL, "kv: slots: got %d from %d, expected two of 0..%d",
                               dst, src, c->max_seqs - 1);
    return TERN_OK;
}

tern_code tern_kv_share(tern_ctx *c, int32_t dst, int32_t src, int32_t n_blocks, tern_status *st)
{
    tern_code rc = kv_slots_ok(c, dst, src, st);
    if (rc) return rc;
    tern_kv_release(c, dst);
    if (c->n_local == 0) return TERN_OK;
    if (n_blocks < 0 || n_blocks > c->seq_blocks[src])
        return tern_status_set(st, TERN_ERANGE, "kv: share: got %d blocks, expected 0..%d",
                               n_blocks, c->seq_blocks[src]);
    const int32_t *from = c->block_table + (size_t)src * (size_t)c->max_blocks_per_seq;
    int32_t *to = c->block_table + (size_t)dst * (size_t)c->max_blocks_per_seq;
    for (int32_t i = 0; i < n_blocks; i++) to[i] = from[i], c->block_ref[from[i]]++;
    c->seq_blocks[dst] = n_blocks;
    return TERN_OK;
}

tern_code tern_kv_move(tern_ctx *c, int32_t dst, int32_t src, tern_status *st)
{
    tern_code rc = kv_slots_ok(c, dst, src, st);
    if (rc) return rc;
    tern_kv_release(c, dst);
    int32_t *from = c->block_table + (size_t)src * (size_t)c->max_blocks_per_seq;
    int32_t *to = c->block_table + (size_t)dst * (size_t)c->max_blocks_per_seq;
    for (int32_t i = 0; i < c->seq_blocks[src]; i++) to[i] = from[i], from[i] = -1;
    c->seq_blocks[dst] = c->seq_blocks[src];
    c->seq_blocks[src] = 0;
    return TERN_OK;
}

/* appends one position's K or V row (kv_dim floats) in the cache's type */
static void kv_store(const tern_ctx *c, int32_t li, int32_t slot, int32_t p, int which,
                     const float *x)
{
    uint8_t *part = tern_kv_part(c, li, slot, p, which);
    const size_t r = (size_t)(p % TERN_KV_BLOCK), esz = c->kv_elem;
    const int32_t nh = c->m->hp.n_head_kv, hd = c->m->hp.head_dim;
    _Alignas(64) uint8_t tmp[TERN_ATTN_MAX_HD * sizeof(float)]; /* a K row, then its columns */
    for (int32_t h = 0; h < nh; h++) {
        uint8_t *row = which ? tern_kv_head_row(c, part, h, r) : tmp;
        const float *xh = x + (size_t)h * (size_t)hd;
        switch (c->kv_type) {
        case TERN_KV_F32:
            memcpy(row, xh, (size_t)hd * sizeof(float));
            break;
        case TERN_KV_F16:
            tern_f32_to_f16(xh, (uint16_t *)(void *)row, hd);
            break;
        case TERN_KV_Q8:
            tern_kv_quant_q8(xh, 1, hd, (int8_t *)row,
                             tern_kv_scales(c, part) + r * (size_t)nh + h);
            break;
        default:
            TERN_ASSERT(0);
        }
        if (which) continue;
        uint8_t *col = tern_kv_head_row(c, part, h, 0) + r * esz; /* K: column r */
        const size_t ld = (size_t)TERN_KV_BLOCK * esz;
        if (esz == 1)
            for (int32_t i = 0; i < hd; i++) col[(size_t)i * ld] = tmp[i];
        else if (esz == 2)
            for (int32_t i = 0; i < hd; i++) memcpy(col + (size_t)i * ld, tmp + (size_t)i * 2, 2);
        else
            for (int32_t i = 0; i < hd; i++) memcpy(col + (size_t)i * ld, tmp + (size_t)i * 4, 4);
    }
}

/* ---- parallel steps ---- */

/* what a GEMM task does with its rows of the output once they are done: the elementwise
 * steps need nothing but those rows, so they take no phase of their own */
typedef enum {
    GEMM_PLAIN,
    GEMM_RESIDUAL, /* resid += out[0] */
    GEMM_ACT,      /* out[0] = act(out[0]) * out[1] (gate, up; spec 7.3) */
} gemm_epi;

typedef struct job {
    tern_ctx *c;
    int32_t n_tok;
    int32_t li; /* local layer */
    const tern_layer *L;
    /* norm + quant */
    const float *in;
    const float *w;
    int32_t width;
    /* gemms: up to 3 matrices sharing the quantized input */
    int32_t n_mat;
    const tern_tmat *mat[3];
    float *out[3];
    int32_t ldy[3];
    gemm_epi epi;
    float *resid;  /* GEMM_RESIDUAL: the residual stream */
    bool own_norm; /* every task normalizes and quantizes in, w, width itself (own rows) */
    /* head */
    const float *hx;
    const int32_t *rows;
    float *logits;
    float *normed; /* [n_tok][d] output of the final norm */
} job;

/* RMSNorm (w; NULL: a copy) and int8 quantization of rows [t0, t1) of in into h, q8, qs, qsum */
static void norm_quant_rows(const tern_ctx *c, const float *in, const float *w, int32_t width,
                            int64_t t0, int64_t t1, float *h, int8_t *q8, float *qs, int32_t *qsum)
{
    if (t1 <= t0) return;
    const size_t wd = (size_t)width;
    if (w)
        tern_rmsnorm_rows(in + (size_t)t0 * wd, t1 - t0, width, w, c->m->hp.eps,
                          h + (size_t)t0 * wd);
    else
        memcpy(h + (size_t)t0 * wd, in + (size_t)t0 * wd, (size_t)(t1 - t0) * wd * sizeof(float));
    tern_act_quant(h + (size_t)t0 * wd, t1 - t0, width, q8 + (size_t)t0 * wd, qs + t0, qsum + t0);
}

static void task_norm_quant(void *arg, int task, int n_tasks, int thread)
{
    (void)thread;
    job *j = arg;
    tern_ctx *c = j->c;
    int64_t t0, t1;
    tern_split_rows(j->n_tok, 1, task, n_tasks, &t0, &t1);
    norm_quant_rows(c, j->in, j->w, j->width, t0, t1, c->h, c->q8, c->qs, c->qsum);
}

/* rows [r0, r1) of every matrix (they share one shape where an epilogue pairs them), then the
 * epilogue on them */
static void task_gemm(void *arg, int task, int n_tasks, int thread)
{
    job *j = arg;
    tern_ctx *c = j->c;
    const int8_t *q8 = c->q8;
    const float *qs = c->qs;
    const int32_t *qsum = c->qsum;
    if (j->own_norm) {
        const size_t o = (size_t)thread * TERN_OWN_NORM_TOKENS;
        norm_quant_rows(c, j->in, j->w, j->width, 0, j->n_tok, c->own_h + o * c->own_stride,
                        c->own_q8 + o * c->own_stride, c->own_qs + o, c->own_qsum + o);
        q8 = c->own_q8 + o * c->own_stride, qs = c->own_qs + o, qsum = c->own_qsum + o;
    }
    int64_t r0 = 0, r1 = 0;
    for (int32_t mi = 0; mi < j->n_mat; mi++) {
        const tern_tmat *w = j->mat[mi];
        tern_split_rows(tern_tmat_rows(w), tern_tmat_row_granularity(w), task, n_tasks, &r0, &r1);
        if (r1 > r0) tern_tgemm(w, q8, qs, qsum, j->n_tok, j->out[mi], j->ldy[mi], r0, r1);
    }
    if (r1 <= r0 || j->epi == GEMM_PLAIN) return;
    const size_t ld = (size_t)j->ldy[0], n = (size_t)(r1 - r0);
    const bool silu = c->m->hp.act == TERN_ACT_SILU;
    for (int64_t t = 0; t < j->n_tok; t++) {
        float *y = j->out[0] + (size_t)t * ld + (size_t)r0;
        if (j->epi == GEMM_RESIDUAL) {
            float *x = j->resid + (size_t)t * ld + (size_t)r0;
            for (size_t i = 0; i < n; i++) x[i] += y[i];
        } else {
            const float *u = j->out[1] + (size_t)t * ld + (size_t)r0;
            if (silu)
                tern_silu_mul(y, u, (int64_t)n, y);
            else
                tern_relu2_mul(y, u, (int64_t)n, y);
        }
    }
}

/* RoPE on q and k, then append k and v to the cache */
static void task_rope_store(void *arg, int task, int n_tasks, int thread)
{
    (void)thread;
    job *j = arg;
    tern_ctx *c = j->c;
    const tern_hparams *hp = &c->m->hp;
    const size_t half = (size_t)hp->head_dim / 2, d = (size_t)hp->d, kvd = (size_t)c->kv_dim;
    int64_t t0, t1;
    tern_split_rows(j->n_tok, 1, task, n_tasks, &t0, &t1);
    for (int64_t t = t0; t < t1; t++) {
        int32_t p = c->tok_pos[t];
        const float *cs = c->rope_cos + (size_t)p * half, *sn = c->rope_sin + (size_t)p * half;
        tern_rope_neox(c->q + (size_t)t * d, hp->n_head, hp->head_dim, cs, sn);
        tern_rope_neox(c->k + (size_t)t * kvd, hp->n_head_kv, hp->head_dim, cs, sn);
        kv_store(c, j->li, c->tok_slot[t], p, 0, c->k + (size_t)t * kvd);
        kv_store(c, j->li, c->tok_slot[t], p, 1, c->v + (size_t)t * kvd);
    }
}

static void run(tern_ctx *c, tern_pool_fn fn, job *j)
{
    tern_pool_run(c->pool, fn, j, c->n_threads);
}

/* the input of the GEMMs that follow: normalized and quantized in a phase of its own, or by
 * every GEMM task for itself (micro-batches of TERN_OWN_NORM_TOKENS tokens) */
static void gemm_input(tern_ctx *c, job *j, const float *in, const float *w, int32_t width)
{
    j->in = in;
    j->w = w;
    j->width = width;
    j->own_norm = j->n_tok <= TERN_OWN_NORM_TOKENS;
    if (!j->own_norm) run(c, task_norm_quant, j);
}

static void gemm(tern_ctx *c, job *j, int32_t n, const tern_tmat *const *mats, float *const *outs,
                 const int32_t *ldys, gemm_epi epi)
{
    TERN_ASSERT(epi != GEMM_ACT ||
                (n == 2 && tern_tmat_rows(mats[0]) == tern_tmat_rows(mats[1]) &&
                 tern_tmat_row_granularity(mats[0]) == tern_tmat_row_granularity(mats[1])));
    j->n_mat = n;
    j->epi = epi;
    for (int32_t i = 0; i < n; i++) {
        j->mat[i] = mats[i];
        j->out[i] = outs[i];
        j->ldy[i] = ldys[i];
    }
    run(c, task_gemm, j);
}

tern_code tern_forward(tern_ctx *c, const tern_batch_seq *seqs, int32_t n_seqs, float *x,
                       tern_status *st)
{
    const tern_hparams *hp = &c->m->hp;
    int32_t n_tok = 0;
    for (int32_t s = 0; s < n_seqs; s++) {
        const tern_batch_seq *b = &seqs[s];
        if (b->n_tokens < 1 || n_tok + b->n_tokens > c->max_tokens)
            return tern_status_set(st, TERN_EINVAL,
                                   "forward: tokens in micro-batch: got %d, expected 1..%d",
                                   n_tok + b->n_tokens, c->max_tokens);
        if (b->pos0 < 0 || b->pos0 + b->n_tokens > c->n_ctx)
            return tern_status_set(st, TERN_ERANGE,
                                   "forward: positions: got %d..%d, expected below the context %d",
                                   b->pos0, b->pos0 + b->n_tokens - 1, c->n_ctx);
        tern_code rc = tern_kv_reserve(c, b->slot, b->pos0 + b->n_tokens, st);
        if (rc) return rc;
        for (int32_t i = 0; i < b->n_tokens; i++) {
            c->tok_pos[n_tok + i] = b->pos0 + i;
            c->tok_slot[n_tok + i] = b->slot;
            c->tok_seq[n_tok + i] = s;
        }
        n_tok += b->n_tokens;
    }
    const bool split = tern_attn_plan(c, n_tok);
    const int32_t d = hp->d, ff = hp->n_ff, kvd = c->kv_dim;
    job j = {.c = c, .n_tok = n_tok};
    for (int32_t li = 0; li < c->n_local; li++) {
        const tern_layer *L = &c->m->layers[li];
        j.li = li;
        j.L = L;
        /* attention block */
        gemm_input(c, &j, x, L->attn_norm, d);
        const tern_tmat *qkv[3] = {L->wq, L->wk, L->wv};
        float *qkv_out[3] = {c->q, c->k, c->v};
        const int32_t qkv_ld[3] = {d, kvd, kvd};
        gemm(c, &j, 3, qkv, qkv_out, qkv_ld, GEMM_PLAIN);
        run(c, task_rope_store, &j);
        tern_attn_run(c, li, split);
        gemm_input(c, &j, c->att, L->attn_sub_norm, d);
        const tern_tmat *wo[1] = {L->wo};
        float *o_out[1] = {c->o};
        const int32_t o_ld[1] = {d};
        j.resid = x;
        gemm(c, &j, 1, wo, o_out, o_ld, GEMM_RESIDUAL);
        /* FFN block */
        gemm_input(c, &j, x, L->ffn_norm, d);
        const tern_tmat *gu[2] = {L->wgate, L->wup};
        float *gu_out[2] = {c->g, c->u};
        const int32_t gu_ld[2] = {ff, ff};
        gemm(c, &j, 2, gu, gu_out, gu_ld, GEMM_ACT);
        gemm_input(c, &j, c->g, L->ffn_sub_norm, ff);
        const tern_tmat *wd[1] = {L->wdown};
        gemm(c, &j, 1, wd, o_out, o_ld, GEMM_RESIDUAL);
    }
    return TERN_OK;
}

void tern_embed(const tern_ctx *c, const int32_t *ids, int32_t n, float *x)
{
    const tern_model *m = c->m;
    const size_t d = (size_t)m->hp.d;
    for (int32_t i = 0; i < n; i++) {
        if (m->qembd) { /* the Q8_0 table's blocks: d * q, as ggml dequantizes */
            tern_i8mat_row(m->qembd, ids[i], x + (size_t)i * d);
            continue;
        }
        const void *row = (const uint8_t *)m->embd + (size_t)ids[i] * m->embd_row;
        if (m->embd_type == TERN_TYPE_F16)
            tern_f16_to_f32(row, x + (size_t)i * d, (int64_t)d);
        else /* exactly ggml's dequantized values */
            tern_dequant_row(m->embd_type, row, (int64_t)d, x + (size_t)i * d);
    }
}

static void task_head_norm(void *arg, int task, int n_tasks, int thread)
{
    (void)thread;
    job *j = arg;
    tern_ctx *c = j->c;
    const size_t d = (size_t)c->m->hp.d;
    int64_t t0, t1;
    tern_split_rows(j->n_tok, 1, task, n_tasks, &t0, &t1);
    for (int64_t t = t0; t < t1; t++)
        tern_rmsnorm(j->hx + (size_t)j->rows[t] * d, c->m->output_norm, (int64_t)d, c->m->hp.eps,
                     j->normed + (size_t)t * d);
}

static void task_head(void *arg, int task, int n_tasks, int thread)
{
    (void)thread;
    job *j = arg;
    tern_ctx *c = j->c;
    const tern_model *m = c->m;
    const int64_t nv = m->head_v1 - m->head_v0;
    int64_t r0, r1;
    /* rows in multiples of 16 keep the vector loops whole (slices start at multiples of 16) */
    tern_split_rows(nv, 16, task, n_tasks, &r0, &r1);
    if (r1 <= r0) return;
    if (m->qhead) /* the activations were quantized by tern_head_slice */
        tern_gemm_i8(m->qhead, c->q8, c->qs, c->qsum, j->n_tok, j->logits, nv, r0, r1);
    else if (m->head_wtype == TERN_TYPE_F16)
        tern_gemm_f16(m->head, j->hx, j->n_tok, m->hp.d, j->logits, nv, r0, r1);
    else
        tern_gemm_q(m->head_wtype, m->head, m->hp.d, j->hx, j->n_tok, j->logits, nv, r0, r1);
}

void tern_final_norm(tern_ctx *c, const float *x, const int32_t *rows, int32_t n, float *out)
{
    job j = {.c = c, .n_tok = n, .hx = x, .rows = rows, .normed = out};
    if (n > 0) run(c, task_head_norm, &j);
}

void tern_head_slice(tern_ctx *c, const float *hx, int32_t n, float *logits)
{
    const tern_model *m = c->m;
    const size_t d = (size_t)m->hp.d, nv = (size_t)(m->head_v1 - m->head_v0);
    if (n <= 0 || nv == 0) return;
    /* in chunks of the scratch the int8 head quantizes its activations into (c->q8, c->qs,
     * c->qsum: the layers' scratch, free once they are done) */
    for (int32_t done = 0; done < n;) {
        const int32_t k = n - done < c->max_tokens ? n - done : c->max_tokens;
        job j = {
            .c = c, .n_tok = k, .hx = hx + (size_t)done * d, .logits = logits + (size_t)done * nv};
        if (m->qhead) tern_head_quant(j.hx, k, (int64_t)d, c->q8, c->qs, c->qsum);
        run(c, task_head, &j);
        done += k;
    }
}

void tern_head(tern_ctx *c, const float *x, const int32_t *rows, int32_t n, float *logits)
{
    /* in chunks of the scratch size */
    for (int32_t done = 0; done < n;) {
        int32_t k = n - done < c->max_tokens ? n - done : c->max_tokens;
        tern_final_norm(c, x, rows + done, k, c->head_x);
        tern_head_slice(c, c->head_x, k, logits + (size_t)done * (size_t)c->m->hp.n_vocab);
        done += k;
    }
}
