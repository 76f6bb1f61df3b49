/* text-internal.h: what the tokenizer and the tiktoken vocab builder share. */
#ifndef TERN_TEXT_INTERNAL_H
#define TERN_TEXT_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ternpipe/spm.h"
#include "ternpipe/tokenizer.h"

/* GPT-2 bytes_to_unicode (spec 4.3): for every byte, the UTF-8 text of its code point
 * (utf8[b], len[b] bytes) and, when cp_to_byte is not NULL, the inverse map (512 entries,
 * -1 where no byte maps). */
void tern_gpt2_byte_maps(char utf8[256][3], uint8_t len[256], int16_t *cp_to_byte);

/* ---- SentencePiece BPE (spm.c), wrapped by tern_tokenizer ---- */
typedef struct tern_spm_tok tern_spm_tok;

typedef struct tern_spm_opts {
    bool byte_fallback;       /* <0xNN> pieces for characters outside the vocab */
    bool add_dummy_prefix;    /* one space before the text */
    bool space_after_special; /* also after each special token (llama.cpp; HF legacy) */
} tern_spm_opts;

typedef struct tern_spm_special {
    const char *text;
    size_t len;
    int32_t id;
    bool always; /* USER_DEFINED: split out even without TERN_TOK_PARSE_SPECIAL */
} tern_spm_special;

/* Pieces are copied. CONTROL pieces decode to nothing, UNKNOWN to " \u2047 ", BYTE pieces to
 * their byte, others to their text with U+2581 as a space. */
tern_code tern_spm_tok_build(tern_spm_tok **out, const tern_spm_piece *pieces, int32_t n,
                             const tern_spm_opts *o, const char *name, tern_status *st);
void tern_spm_tok_free(tern_spm_tok *s);
tern_code tern_spm_tok_encode(const tern_spm_tok *s, const char *text, size_t len, unsigned flags,
                              tern_tokens *out, tern_status *st);
const char *tern_spm_tok_bytes(const tern_spm_tok *s, int32_t id, size_t *len);
int32_t tern_spm_tok_find(const tern_spm_tok *s, const char *text, size_t len); /* any type */
int32_t tern_spm_tok_type(const tern_spm_tok *s, int32_t id);

/* A tern_tokenizer over a SentencePiece model (takes spm, frees it on failure). */
tern_code tern_tokenizer_wrap_spm(tern_tokenizer **out, tern_spm_tok *spm, int32_t n_vocab,
                                  int32_t bos, int32_t eos, bool add_bos, bool dummy_prefix,
                                  const char *pre, tern_status *st);
/* tokenizer.ggml.model = "llama" (spm-load.c) */
tern_code tern_spm_load_gguf(tern_tokenizer **out, const tern_gguf *g, tern_status *st);

#endif
