/* model.h: BitNet b1.58 model: hyperparameters, weights of one layer slice, KV cache and the
 * forward pass of a layer slice [l0, l1) over one micro-batch of tokens from several
 * sequences (DESIGN.md section 2).
 *
 * Ownership: a tern_model holds NUMA-local anonymous copies of the weights it was asked for
 * (its layer slice; the embedding when it does lookup or the LM head); the GGUF mapping can
 * be closed after tern_model_load. A tern_ctx holds all scratch and the paged KV cache for
 * the slice; nothing allocates after tern_ctx_create.
 * Determinism: work is split by whole output rows / heads / tokens, so results are bitwise
 * identical for any thread count and any layer split.
 * Thread-safety: one thread drives a tern_ctx; it uses its own pool internally.
 */
#ifndef TERNPIPE_MODEL_H
#define TERNPIPE_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "ternpipe/gguf.h"
#include "ternpipe/runtime.h"
#include "ternpipe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The FFN's gate activation: relu(g)^2 * u (2B-4T) or silu(g) * u (1bitLLM, spec 7.3). */
typedef enum tern_ffn_act { TERN_ACT_RELU2 = 0, TERN_ACT_SILU, TERN_ACT_COUNT } tern_ffn_act;

typedef struct tern_hparams {
    char arch[32];
    tern_ffn_act act;
    char act_rule[64]; /* which rule chose act (spec 7.4), for logs */
    int32_t n_vocab;
    int32_t n_ctx; /* training context: the maximum positions served */
    int32_t d;     /* hidden size */
    int32_t n_layer;
    int32_t n_ff;
    int32_t n_head;
    int32_t n_head_kv;
    int32_t head_dim;
    float eps;
    float rope_theta;
    /* the type of the head's table (output.weight, else token_embd) when it is Q8_0 or Q6_K,
     * which lookup and head read as they are; else 0 (F16, or converted at load) */
    tern_ggml_type head_table;
} tern_hparams;

/* Reads and validates the hyperparameters (architectures bitnet-b1.58, bitnet-25 and upstream
 * llama.cpp's bitnet). The FFN activation: the key <arch>.hidden_act ("silu" or "relu2") when
 * present; else spec 7.4's rule: arch bitnet -> SiLU (upstream's default); bitnet-b1.58 /
 * bitnet-25 -> relu^2, unless the shapes are 1bitLLM's (no GQA and a SentencePiece vocab),
 * which bitnet.cpp's converter mislabels since 2026-07 -> SiLU. */
tern_code tern_hparams_read(const tern_gguf *g, tern_hparams *hp, tern_status *st);

typedef enum tern_head_type {
    TERN_HEAD_F16 = 0, /* the file's F16 embedding, as bitnet.cpp */
    TERN_HEAD_Q8_0,    /* opt-in: int8 rows with a per-row scale (half the bytes) */
    TERN_HEAD_TYPE_COUNT
} tern_head_type;

/* --head-type q8_0 on a Q8_0 table of whole 32-blocks: the int8 head is the table's own blocks
 * (and, tied, serves the lookup too), at the table's bytes a row; else int8 rows with a scale */
static inline bool tern_head_keeps_q8_0(const tern_hparams *hp, tern_head_type type)
{
    return type == TERN_HEAD_Q8_0 && hp->head_table == TERN_TYPE_Q8_0 && hp->d % 32 == 0;
}

typedef struct tern_model_opts {
    int32_t l0, l1;           /* layer slice [l0, l1); l1 = -1 means all layers */
    bool embed;               /* keep the embedding for lookup */
    bool head;                /* keep output_norm and the LM head rows [head_v0, head_v1) */
    int32_t head_v0, head_v1; /* head rows (vocabulary ids); 0, 0 = every row */
    bool final_norm; /* keep output_norm (the rank that runs the last layer norms for the head) */
    tern_head_type head_type;
    const tern_topo *topo; /* NUMA placement; NULL = plain anonymous memory */
    /* called after each layer and after the embedding/head (done of total steps); NULL: none */
    void (*progress)(void *user, int32_t done, int32_t total);
    void *progress_user;
} tern_model_opts;

typedef struct tern_model tern_model;

tern_code tern_model_load(tern_model **out, const tern_gguf *g, const tern_model_opts *o,
                          tern_status *st);
void tern_model_free(tern_model *m);
const tern_hparams *tern_model_hparams(const tern_model *m);
void tern_model_slice(const tern_model *m, int32_t *l0, int32_t *l1);
/* Bytes of weights one decode step of one token reads in this slice (+ head): the roofline. */
uint64_t tern_model_bytes_per_token(const tern_model *m);
/* Bytes of weight memory held. */
uint64_t tern_model_weight_bytes(const tern_model *m);
/* A checksum of the file's metadata and tensor table (for the pipeline handshake). */

/* One sequence's part of a micro-batch: n_tokens consecutive positions from pos0, in the
 * KV slot `slot`. Tokens of the batch are laid out sequence after sequence. */
typedef struct tern_batch_seq {
    int32_t slot;
    int32_t pos0;
    int32_t n_tokens;
} tern_batch_seq;

/* How the KV cache stores K and V (kernels.h: the attention kernels over each). Every element
 * is converted once, when its token is appended, by an EXACT kernel, so a cache holds the same
 * bits whatever the thread count, rank split or batching, and prefill and decode read alike. */
typedef enum tern_kv_type {
    TERN_KV_F16 = 0, /* IEEE binary16, round to nearest even (the default, as bitnet.cpp) */
    TERN_KV_F32,     /* the activations as computed (the golden reference's arithmetic) */
    TERN_KV_Q8,      /* int8 with one float scale per head and position (absmax / 127) */
    TERN_KV_TYPE_COUNT
} tern_kv_type;

/* "f16", "f32", "q8"; "?" out of range */
const char *tern_kv_type_name(tern_kv_type t);
/* From its name; TERN_KV_TYPE_COUNT for an unknown one. */
tern_kv_type tern_kv_type_parse(const char *name);

typedef struct tern_ctx_opts {
    int32_t max_tokens; /* tokens per micro-batch (token budget) */
    int32_t max_seqs;   /* KV slots */
    int32_t kv_blocks;  /* KV pool size in blocks of TERN_KV_BLOCK positions; 0 = enough for
                           max_seqs full contexts */
    int32_t n_ctx;      /* positions per sequence; 0 = the model's */
    tern_kv_type kv_type;
} tern_ctx_opts;

#define TERN_KV_BLOCK 32

/* Bytes of one KV block (TERN_KV_BLOCK positions, K and V) for n_layers layers of a model
 * stored as type t: what the pool holds per block (memory accounting of kv_blocks). */
uint64_t tern_kv_block_bytes(const tern_hparams *hp, int32_t n_layers, tern_kv_type t);

typedef struct tern_ctx tern_ctx;

tern_code tern_ctx_create(tern_ctx **out, const tern_model *m, tern_pool *pool,
                          const tern_ctx_opts *o, tern_status *st);
void tern_ctx_free(tern_ctx *c);
int32_t tern_ctx_n_ctx(const tern_ctx *c);

/* KV slots: blocks are taken from the pool as positions are reserved. */
/* Makes room for positions [0, n_pos) of slot; TERN_EBUSY when the pool is exhausted. */
tern_code tern_kv_reserve(tern_ctx *c, int32_t slot, int32_t n_pos, tern_status *st);
/* Drops the slot's hold on each of its blocks (sequence finished or cancelled); a block goes
 * back to the pool once no slot holds it. */
void tern_kv_release(tern_ctx *c, int32_t slot);
/* The prefix cache: dst (released first) holds the first n_blocks blocks of src too (each
 * block is then shared: written by neither, as both only write past them). */
tern_code tern_kv_share(tern_ctx *c, int32_t dst, int32_t src, int32_t n_blocks, tern_status *st);
/* dst (released first) takes over every block of src, which is left empty. */
tern_code tern_kv_move(tern_ctx *c, int32_t dst, int32_t src, tern_status *st);
int32_t tern_kv_blocks_used(const tern_ctx *c);
int32_t tern_kv_blocks_total(const tern_ctx *c);

/* x [n_tokens][d] (rows in batch order) <- embeddings of ids (model must have embed). */
void tern_embed(const tern_ctx *c, const int32_t *ids, int32_t n, float *x);
/* Runs the layer slice over the micro-batch in place: x [n_tokens][d]. Reserves KV
 * positions as needed (an error if a slot cannot grow). */
tern_code tern_forward(tern_ctx *c, const tern_batch_seq *seqs, int32_t n_seqs, float *x,
                       tern_status *st);
/* Final norm + LM head for n selected rows of x: logits [n][n_vocab] (the model holds every
 * head row). */
void tern_head(tern_ctx *c, const float *x, const int32_t *rows, int32_t n, float *logits);
/* out [n][d] <- final RMSNorm of rows x[rows[i]] (model with output_norm). */
void tern_final_norm(tern_ctx *c, const float *x, const int32_t *rows, int32_t n, float *out);
/* The model's head rows on n normed rows: logits [n][head_v1 - head_v0]. Each logit is
 * computed the same whatever the slice and thread split (boundaries are multiples of 16). */
void tern_head_slice(tern_ctx *c, const float *hx, int32_t n, float *logits);
/* The head rows this model holds: [*v0, *v1). */
void tern_model_head_rows(const tern_model *m, int32_t *v0, int32_t *v1);

#ifdef __cplusplus
}
#endif
#endif
