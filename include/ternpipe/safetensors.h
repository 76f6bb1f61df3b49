/* safetensors.h: validated safetensors reader (one file, or the shards of a Hugging Face
 * checkpoint through model.safetensors.index.json) and the HF config.json reader.
 *
 * A safetensors file is an 8-byte little-endian header length N, an N-byte JSON header
 * {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the
 * data (offsets relative to the data start; spec 3.1). Opening maps each file and checks,
 * before anything is used, with overflow-safe arithmetic: the header length against the file,
 * the JSON, every dtype, shape and offset pair, each tensor's byte count against its dtype and
 * shape, that tensors neither overlap nor leave holes and that they cover the data section
 * exactly (the official library's rules), unique names, and, for shards, that the index and the
 * files agree tensor for tensor. A bad file yields one line
 * "safetensors: FILE: tensor 'x': WHAT: got X, expected Y" (or "safetensors: FILE: WHAT: ...").
 * Data pointers point into the mapping (no copy, so a rank touches only the pages of the
 * tensors it reads) and may be unaligned: read them with memcpy or the tern_st_read_* helpers.
 * They stay valid until tern_st_close().
 * Thread-safety: a tern_st is immutable after open; concurrent readers are fine.
 */
#ifndef TERNPIPE_SAFETENSORS_H
#define TERNPIPE_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ternpipe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Element types, as the header spells them. */
typedef enum tern_st_dtype {
    TERN_ST_BOOL = 0,
    TERN_ST_U8,
    TERN_ST_I8,
    TERN_ST_F8_E4M3,
    TERN_ST_F8_E5M2,
    TERN_ST_I16,
    TERN_ST_U16,
    TERN_ST_F16,
    TERN_ST_BF16,
    TERN_ST_I32,
    TERN_ST_U32,
    TERN_ST_F32,
    TERN_ST_I64,
    TERN_ST_U64,
    TERN_ST_F64,
    TERN_ST_DTYPE_COUNT
} tern_st_dtype;

#define TERN_ST_MAX_DIMS 8
/* the official library's limit on the header length */
#define TERN_ST_MAX_HEADER 100000000u

typedef struct tern_st_tensor {
    const char *name; /* NUL-terminated */
    tern_st_dtype dtype;
    uint32_t n_dims;                  /* 0 for a scalar */
    uint64_t shape[TERN_ST_MAX_DIMS]; /* row-major: shape[n_dims-1] is the fastest; unused = 1 */
    uint64_t n_elements;
    uint64_t nbytes;
    uint64_t offset;  /* from the start of its file */
    const void *data; /* into the mapping; maybe unaligned */
    uint32_t file;    /* index of the shard holding it */
} tern_st_tensor;

typedef struct tern_st tern_st;

/* One .safetensors file. On failure *out is NULL and st holds the one-line error. */
tern_code tern_st_open(tern_st **out, const char *path, tern_status *st);
/* Same over a caller-owned buffer (fuzzing, tests); it must outlive the handle. */
tern_code tern_st_open_memory(tern_st **out, const void *data, size_t size, const char *name,
                              tern_status *st);
/* A checkpoint directory: DIR/model.safetensors.index.json (shards named in its weight_map,
 * plain file names inside DIR) when present, else DIR/model.safetensors. */
tern_code tern_st_open_dir(tern_st **out, const char *dir, tern_status *st);
void tern_st_close(tern_st *s); /* NULL ok */

uint64_t tern_st_n_tensors(const tern_st *s);
const tern_st_tensor *tern_st_tensor_at(const tern_st *s, uint64_t i);  /* sorted by name */
const tern_st_tensor *tern_st_find(const tern_st *s, const char *name); /* NULL if absent */
/* A string of the first file's __metadata__; NULL if absent. */
const char *tern_st_metadata(const tern_st *s, const char *key);
const char *tern_st_path(const tern_st *s); /* the file or directory opened */
uint32_t tern_st_n_files(const tern_st *s);
const char *tern_st_file_path(const tern_st *s, uint32_t file);
/* Drops the file pages of a tensor that has been copied out (see tern_gguf_drop_pages). */
void tern_st_drop_pages(const tern_st *s, const tern_st_tensor *t);

const char *tern_st_dtype_name(tern_st_dtype d); /* "F32"...; "?" out of range */
size_t tern_st_dtype_size(tern_st_dtype d);      /* bytes per element; 0 out of range */
/* Elements [i0, i0 + n) of a float tensor (F32, F16 or BF16) converted to f32. */
void tern_st_read_f32(const tern_st_tensor *t, uint64_t i0, uint64_t n, float *out);

/* ---- Hugging Face config.json ---- */
typedef struct tern_hf_config {
    char architecture[64]; /* architectures[0] */
    char model_type[32];
    char hidden_act[16]; /* "silu", "relu2", ... */
    int32_t hidden_size, intermediate_size, num_hidden_layers;
    int32_t num_attention_heads, num_key_value_heads; /* kv defaults to the head count */
    int32_t head_dim;                                 /* 0: hidden_size / heads */
    int32_t max_position_embeddings, vocab_size;
    int32_t bos_token_id, eos_token_id, pad_token_id; /* -1 when absent or null */
    float rms_norm_eps, rope_theta;
    bool tie_word_embeddings;
    char torch_dtype[16];
} tern_hf_config;

/* Reads and checks config.json: required integers in 1..2^24, floats finite and positive,
 * rope_scaling null or absent (others are refused as unsupported). Errors name the file and
 * the key: "config: FILE: key 'x': got ..., expected ...". */
tern_code tern_hf_config_read(const char *path, tern_hf_config *cfg, tern_status *st);
/* The same over a buffer (tests). */
tern_code tern_hf_config_parse(const char *json, size_t len, const char *name, tern_hf_config *cfg,
                               tern_status *st);

/* ---- Hugging Face checkpoint -> GGUF (src/formats/hf-gguf.c) ----
 * DIR (config.json, safetensors, tokenizer.model + added tokens when present) -> out_path:
 * 2B-4T (hidden_act relu2) in the official layout (arch bitnet-b1.58), the 1bitLLM models
 * (silu) in upstream llama.cpp's bitnet layout; projections ternary as `type` (I2_S, TQ2_0 or
 * TQ1_0; packed U8 + weight_scale unpacked exactly, float masters ternarized as spec 7.3),
 * embedding F16, norms F32. tern_gguf_open() on a directory opens the same GGUF without
 * writing it: the tensors are converted one by one as tern_gguf_tensor_read() asks, so a
 * pipeline rank converts only its slice. */
tern_code tern_hf_convert(const char *dir, const char *out_path, int type /* tern_ggml_type */,
                          tern_status *st);
/* The same, calling progress (optional) after each tensor with the bytes written so far and
 * in all. */
tern_code tern_hf_convert_progress(const char *dir, const char *out_path, int type,
                                   void (*progress)(void *user, int64_t done, int64_t total),
                                   void *user, tern_status *st);

#ifdef __cplusplus
}
#endif
#endif
