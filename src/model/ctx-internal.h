/* ctx-internal.h: the layout of tern_ctx (the scratch and paged KV cache of one layer slice),
 * shared by forward.c (the layers, embedding and head) and attention.c (causal attention over
 * the cache). */
#ifndef TERN_CTX_INTERNAL_H
#define TERN_CTX_INTERNAL_H

#include "model/model-internal.h"

/* Micro-batches of at most this many tokens (a one-stream decode step) do without the phases
 * that normalize and quantize each GEMM's input: every thread does it for itself before its
 * rows, the same operations on the same input, so the same bits (forward.c). */
#define TERN_OWN_NORM_TOKENS 1

struct tern_ctx {
    const tern_model *m;
    tern_pool *pool;
    int32_t max_tokens, max_seqs, n_ctx;
    int32_t n_local; /* layers in the slice */
    int32_t kv_dim;
    /* paged KV: block b holds, for every local layer, TERN_KV_BLOCK positions of K then V,
     * each part kv_part bytes: n_head_kv heads of TERN_KV_BLOCK x head_dim elements of kv_type
     * (a head's together: attention reads one head's, which come from memory as one run, not
     * as head_dim elements of every kv_dim), V by rows [TERN_KV_BLOCK][head_dim], K by columns
     * [head_dim][TERN_KV_BLOCK] (element i of the block's positions side by side: the scores
     * load one element of many keys at once, tern_attn_scores_cols), then (q8 only) their
     * scales [TERN_KV_BLOCK][n_head_kv] float. kv_pool[b][layer][2][kv_part] */
    uint8_t *kv_pool;
    tern_kv_type kv_type;
    size_t kv_elem; /* bytes per element */
    size_t kv_part; /* bytes of one (layer, K or V) part of a block */
    size_t block_bytes;
    int32_t n_blocks;
    int32_t *free_blocks; /* stack of free block ids */
    int32_t *block_ref;   /* [n_blocks] slots holding each block (the prefix cache shares) */
    int32_t n_free;
    int32_t *block_table; /* [max_seqs][max_blocks_per_seq], -1 = none */
    int32_t *seq_blocks;  /* [max_seqs] blocks held */
    int32_t max_blocks_per_seq;
    /* RoPE tables [n_ctx][head_dim/2] */
    float *rope_cos, *rope_sin;
    /* scratch, [max_tokens][...] */
    float *h;           /* [T][max(d, n_ff)] normed input */
    int8_t *q8;         /* [T][max(d, n_ff)] */
    float *qs;          /* [T] activation scales */
    int32_t *qsum;      /* [T] */
    float *q, *k, *v;   /* [T][d], [T][kv], [T][kv] */
    float *att;         /* [T][d] */
    float *g, *u;       /* [T][n_ff] */
    float *o;           /* [T][max(d, n_ff)] projection output */
    float *scores;      /* [n_threads][chunk_tokens * unit_heads][n_ctx] */
    const void **blk;   /* [n_threads][2][max_blocks_per_seq]: a unit's K and V blocks */
    const float **blks; /* [n_threads][2][max_blocks_per_seq]: their scales (q8) */
    int32_t *chunk;     /* [max_tokens + 1]: first token of each attention chunk, then n_tok */
    int32_t n_chunks;
    int64_t *chunk_cost; /* [max_tokens + 1]: the attention cost of the chunks before each */
    /* attention units: up to chunk_tokens consecutive tokens of one sequence x unit_heads
     * heads of one KV head (a GQA group, or a part of it) */
    int32_t unit_heads, chunk_tokens;
    int32_t *tok_pos;  /* [T] position of each token */
    int32_t *tok_slot; /* [T] */
    int32_t *tok_seq;  /* [T] index of the token's sequence in the batch */
    float *head_x;     /* [T][d] normed rows for the head */
    int32_t n_threads;
    /* micro-batches of TERN_OWN_NORM_TOKENS tokens: every thread normalizes and quantizes a
     * GEMM's input itself, into its own rows [n_threads][own_stride] (forward.c) */
    size_t own_stride; /* elements: max(d, n_ff) rounded up to whole cache lines */
    float *own_h;
    int8_t *own_q8;
    float *own_qs;     /* [n_threads][TERN_OWN_NORM_TOKENS] */
    int32_t *own_qsum; /* [n_threads][TERN_OWN_NORM_TOKENS] */
};

/* the attention kernels' element type of each KV type */
static inline tern_attn_elem tern_kv_attn_elem(tern_kv_type t)
{
    return t == TERN_KV_F32 ? TERN_ATTN_F32 : t == TERN_KV_Q8 ? TERN_ATTN_Q8 : TERN_ATTN_F16;
}

/* The K (which = 0) or V (1) part of local layer li in the block of slot holding position p:
 * rows of positions p - p % TERN_KV_BLOCK onwards */
static inline uint8_t *tern_kv_part(const tern_ctx *c, int32_t li, int32_t slot, int32_t p,
                                    int which)
{
    int32_t b =
        c->block_table[(size_t)slot * (size_t)c->max_blocks_per_seq + (size_t)(p / TERN_KV_BLOCK)];
    return c->kv_pool + (size_t)b * c->block_bytes + ((size_t)li * 2 + (size_t)which) * c->kv_part;
}

/* q8 parts: the scales [TERN_KV_BLOCK][n_head_kv] after the int8 rows */
static inline float *tern_kv_scales(const tern_ctx *c, uint8_t *part)
{
    return (float *)(void *)(part + (size_t)TERN_KV_BLOCK * (size_t)c->kv_dim);
}

/* head h's row r of a part: its head_dim elements */
static inline uint8_t *tern_kv_head_row(const tern_ctx *c, uint8_t *part, int32_t h, size_t r)
{
    const size_t hd = (size_t)c->m->hp.head_dim;
    return part + ((size_t)h * TERN_KV_BLOCK + r) * hd * c->kv_elem;
}

/* attention.c: the micro-batch's attention units (from tok_pos, tok_slot, tok_seq of its
 * n_tok tokens), and whether one decoding sequence's leftover units are split over the threads;
 * then local layer li's attention, c->q against the cache into c->att */
bool tern_attn_plan(tern_ctx *c, int32_t n_tok);
void tern_attn_run(tern_ctx *c, int32_t li, bool split);

#endif
