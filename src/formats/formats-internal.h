/* formats-internal.h: what the formats module's files share and nothing outside uses. */
#ifndef TERN_FORMATS_INTERNAL_H
#define TERN_FORMATS_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ternpipe/gguf.h"
#include "ternpipe/safetensors.h"

/* DIR/tokenizer.json (HF tokenizers, byte-level BPE) -> tokenizer.ggml.* keys for n_vocab
 * embedding rows (hf-tokjson.c). TERN_OK without adding anything when the file is absent. */
tern_code tern_hf_tokjson_add(tern_gguf_writer *w, const char *dir, int32_t n_vocab,
                              tern_status *st);
/* A Hugging Face checkpoint directory described as a GGUF (hf-gguf.c): tern_hf_open checks
 * config.json against the safetensors, adds the metadata and the tensor table (no data) to w,
 * and keeps the directory open; tern_hf_read converts rows [r0, r1) of tensor i (in the order
 * added; a ternary projection is read whole) into dst in its GGUF encoding. */
typedef struct tern_hf tern_hf;
tern_code tern_hf_open(tern_hf **out, const char *dir, int type /* tern_ggml_type */,
                       bool weights_only /* no tokenizer files */, tern_gguf_writer *w,
                       tern_status *st);
tern_code tern_hf_read(tern_hf *h, uint64_t i, uint64_t r0, uint64_t r1, void *dst,
                       tern_status *st);
uint64_t tern_hf_n_tensors(const tern_hf *h);
/* "read T of N checkpoint tensors (X of Y MB): layers [a,b), model.norm.weight, ...": what
 * tern_hf_read has read so far; the length snprintf would have written. */
size_t tern_hf_describe_reads(const tern_hf *h, char *buf, size_t cap);
/* hash mixed with the checkpoint tensors' names, shapes and (sampled) data */
uint64_t tern_hf_checksum(const tern_hf *h, uint64_t hash);
void tern_hf_close(tern_hf *h); /* NULL ok */

/* The writer's header (everything before the data section, padding included) in a malloc'd
 * buffer, and the size the whole file would have: a GGUF described without its data. */
tern_code tern_gguf_writer_header(tern_gguf_writer *w, uint8_t **out, size_t *len,
                                  uint64_t *file_size, tern_status *st);
/* Sets (borrows) the data of the i-th tensor added, which may have been added without. */
tern_code tern_gguf_writer_set_data(tern_gguf_writer *w, uint64_t i, const void *data,
                                    tern_status *st);

/* Drops the file pages under bytes [off, off + n) of a tensor (clipped to it). */
void tern_st_drop_range(const tern_st *s, const tern_st_tensor *t, uint64_t off, uint64_t n);

/* An opened GGUF file (gguf.c parses it, gguf-query.c answers questions about it), or a
 * Hugging Face directory (hf != NULL): then base holds only the header that tern_hf_open laid
 * out, file_size is the size the converted file would have, and every tensor's data is NULL:
 * tern_gguf_tensor_read converts it on demand. */
struct tern_gguf {
    char *path;
    const uint8_t *base;
    size_t size;
    bool mapped;
    bool owned; /* base is malloc'd (the header of a directory) */
    tern_hf *hf;
    uint64_t file_size;
    uint32_t version;
    uint32_t alignment;
    uint64_t n_kv;
    tern_gguf_kv *kvs;
    uint64_t n_tensors;
    tern_gguf_tensor *tensors;
    uint64_t data_offset;
    /* item arrays of string/array values, freed at close */
    tern_gguf_value **blocks;
    size_t n_blocks, cap_blocks;
};

/* Decodes one scalar of type t from raw little-endian bytes into v. */
void tern_gguf_decode_scalar(tern_gguf_vtype t, const uint8_t *p, tern_gguf_value *v);

/* What a parsed JSON value is, for messages ("a number", "an object", ...; "nothing" for NULL),
 * shared by the safetensors header, index and config.json readers (safetensors.c). */
struct cJSON;
const char *tern_json_kind(const struct cJSON *j);

/* Ternary encoders (ternary-enc.c): n values in -1..1 (n a multiple of the block) into out:
 * I2_S with its f32 scale after the codes, TQ2_0 and TQ1_0 blocks with the f16 scale d. */
void tern_enc_i2s(const int8_t *t, uint64_t n, float alpha, uint8_t *out);
void tern_enc_tq2(const int8_t *t, uint64_t n, uint16_t d, uint8_t *out);
void tern_enc_tq1(const int8_t *t, uint64_t n, uint16_t d, uint8_t *out);

#endif
