/* model-internal.h: the layout of tern_model, shared by model.c, tables.c and the forward
 * pass (forward.c, attention.c; tern_ctx is ctx-internal.h's). */
#ifndef TERN_MODEL_INTERNAL_H
#define TERN_MODEL_INTERNAL_H

#include "ternpipe/kernels.h"
#include "ternpipe/model.h"

typedef struct tern_layer {
    float *attn_norm;     /* [d] */
    float *attn_sub_norm; /* [d] */
    float *ffn_norm;      /* [d] */
    float *ffn_sub_norm;  /* [n_ff] */
    tern_tmat *wq, *wk, *wv, *wo, *wgate, *wup, *wdown;
} tern_layer;

typedef struct tern_alloc {
    void *p;
    size_t bytes;
} tern_alloc;

struct tern_model {
    tern_hparams hp;
    int32_t l0, l1;
    tern_layer *layers; /* [l1 - l0] */
    /* the file's tables as they are: F16, or ggml Q8_0 / Q6_K blocks (no F16 copy is made) */
    const void *embd; /* [n_vocab][d] of embd_type: lookup and the tied head */
    const void *head; /* [head_v1 - head_v0][d] of head_wtype: rows of embd unless output.weight */
    tern_ggml_type embd_type, head_wtype;
    size_t embd_row, head_row; /* bytes per row */
    int32_t head_v0, head_v1;
    float *output_norm; /* [d] */
    tern_head_type head_type;
    /* head_type == TERN_HEAD_Q8_0: this rank's head rows as int8 (from any table type; lookup
     * still reads embd as it is), or, from a Q8_0 table, the table's own blocks: then a tied
     * table on the lookup rank is one matrix (qembd, every row; embd NULL) and qhead a view of
     * its head rows */
    tern_i8mat *qhead, *qembd;
    bool has_embed, has_head;
    const tern_topo *topo;
    tern_alloc *allocs;
    size_t n_allocs, cap_allocs;
    uint64_t weight_bytes;
    uint64_t bytes_per_token;
};

/* model.c's loading helpers, shared with tables.c */
void *tern_model_walloc(tern_model *m, size_t bytes); /* NUMA-local, freed with the model */
tern_code tern_model_find(const tern_gguf *g, const char *name, const tern_gguf_tensor **out,
                          tern_status *st);
tern_code tern_model_check_shape(const tern_gguf *g, const tern_gguf_tensor *t, const char *name,
                                 uint64_t ne0, uint64_t ne1, tern_status *st);
/* n halves at p; first is the element index of p[0] in the tensor */
tern_code tern_model_check_f16(const tern_gguf *g, const char *name, const uint16_t *p, size_t n,
                               uint64_t first, tern_status *st);
/* tables.c: the embedding and head tables of this rank (after the layers and output_norm) */
tern_code tern_model_load_tables(tern_model *m, const tern_gguf *g, tern_status *st);

#endif
