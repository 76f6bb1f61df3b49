/* formats-internal.h: what the formats module's files share and nothing outside uses. */
#ifndef TERN_FORMATS_INTERNAL_H
#define TERN_FORMATS_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ternpipe/gguf.h"

/* DIR/tokenizer.json (HF tokenizers, byte-level BPE) -> tokenizer.ggml.* keys for n_vocab
 * embedding rows (hf-tokjson.c). TERN_OK without adding anything when the file is absent. */
tern_code tern_hf_tokjson_add(tern_gguf_writer *w, const char *dir, int32_t n_vocab,
                              tern_status *st);
/* An opened GGUF file (gguf.c parses it, gguf-query.c answers questions about it). */
struct tern_gguf {
    char *path;
    const uint8_t *base;
    size_t size;
    bool mapped;
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

#endif
