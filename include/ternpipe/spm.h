/* spm.h: a SentencePiece model file (tokenizer.model, a serialized ModelProto) as plain C
 * data: pieces with scores and types, the trainer and normalizer settings encoding needs.
 *
 * The protobuf is parsed by protobuf-c (src/formats/spm-model.c is its only user on this side)
 * and then checked: piece count in 1..2^24 and equal to trainer_spec.vocab_size, every piece
 * non-empty with a known type and a finite score, special ids in range, both specs present (a
 * truncated file cannot pass as a shorter model). Errors are one line:
 * "sentencepiece: FILE: WHAT: got X, expected Y". Whether the settings are supported (BPE,
 * identity normalizer) is the tokenizer's decision, not the reader's.
 */
#ifndef TERNPIPE_SPM_H
#define TERNPIPE_SPM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ternpipe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Piece types, numbered as in sentencepiece_model.proto (and GGUF token_type). */
typedef enum tern_spm_type {
    TERN_SPM_NORMAL = 1,
    TERN_SPM_UNKNOWN = 2,
    TERN_SPM_CONTROL = 3,
    TERN_SPM_USER_DEFINED = 4,
    TERN_SPM_UNUSED = 5,
    TERN_SPM_BYTE = 6,
    TERN_SPM_TYPE_COUNT
} tern_spm_type;

/* trainer_spec.model_type */
enum { TERN_SPM_UNIGRAM = 1, TERN_SPM_BPE = 2, TERN_SPM_WORD = 3, TERN_SPM_CHAR = 4 };

typedef struct tern_spm_piece {
    char *text; /* NUL-terminated UTF-8; "▁" (U+2581) stands for a space */
    uint32_t len;
    float score;
    tern_spm_type type;
} tern_spm_piece;

typedef struct tern_spm_model {
    tern_spm_piece *pieces; /* [n_pieces] */
    int32_t n_pieces;
    int32_t model_type; /* TERN_SPM_UNIGRAM .. TERN_SPM_CHAR */
    bool byte_fallback, split_digits, treat_whitespace_as_suffix;
    char normalizer[32];           /* normalizer_spec.name ("identity", "nmt_nfkc", ...) */
    uint64_t precompiled_charsmap; /* its size in bytes (0: no normalization table) */
    bool add_dummy_prefix, remove_extra_whitespaces, escape_whitespaces;
    int32_t unk_id, bos_id, eos_id, pad_id; /* -1: none */
} tern_spm_model;

tern_code tern_spm_model_parse(const void *data, size_t len, const char *name, tern_spm_model *m,
                               tern_status *st);
tern_code tern_spm_model_read(const char *path, tern_spm_model *m, tern_status *st);
void tern_spm_model_free(tern_spm_model *m); /* zeroes m; a zeroed model is fine */

/* What a Hugging Face directory says beside the model. */
typedef struct tern_spm_hf {
    int32_t bos, eos; /* by the text of tokenizer_config.json's bos_token/eos_token */
    bool add_bos;     /* add_bos_token (default true) */
    bool legacy;      /* legacy (default true): false = no dummy space after special tokens */
    int32_t n_added;  /* tokens appended after the model's pieces */
} tern_spm_hf;

/* DIR/tokenizer.model with DIR/added_tokens.json and DIR/tokenizer_config.json (both optional):
 * the pieces get the added tokens (special ones as CONTROL, others USER_DEFINED, score -1000),
 * keyed by text: an id inside the model must name a piece with the same text, ids past it
 * must continue without gaps. */
tern_code tern_spm_model_read_dir(const char *dir, tern_spm_model *m, tern_spm_hf *hf,
                                  tern_status *st);

#ifdef __cplusplus
}
#endif
#endif
