/* tokenizer.h: byte-level BPE tokenizer built from GGUF metadata (GPT-2 / Llama-3 style) and
 * SentencePiece BPE with byte fallback (spec 8: GGUF tokenizer.ggml.model = "llama", or a
 * tokenizer.model with the HF added-token files), the BitNet chat format, streaming
 * detokenization, and the Llama-3 vocab from a tiktoken rank file.
 *
 * A tern_tokenizer is immutable after load: encode/decode may run on many threads at once
 * (each call uses its own scratch).
 */
#ifndef TERNPIPE_TOKENIZER_H
#define TERNPIPE_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ternpipe/gguf.h"
#include "ternpipe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tern_tokenizer tern_tokenizer;

/* A growable id list; zero-initialized is empty. */
typedef struct tern_tokens {
    int32_t *ids;
    size_t n, cap;
} tern_tokens;
tern_code tern_tokens_push(tern_tokens *t, int32_t id); /* TERN_ENOMEM on failure */
void tern_tokens_free(tern_tokens *t);

enum { TERN_TOK_ADD_BOS = 1u, TERN_TOK_PARSE_SPECIAL = 2u };

/* From GGUF metadata: tokenizer.ggml.model "gpt2" (byte-level BPE) or "llama" (SentencePiece). */
tern_code tern_tokenizer_load(tern_tokenizer **out, const tern_gguf *g, tern_status *st);
/* A SentencePiece tokenizer.model (BPE only: a unigram model, a normalizer other than
 * "identity" or whitespace rewriting is refused with TERN_EUNSUPPORTED and a clear message). */
tern_code tern_tokenizer_load_spm_file(tern_tokenizer **out, const char *path, tern_status *st);
/* A Hugging Face directory: tokenizer.model plus added_tokens.json and tokenizer_config.json
 * (added tokens keyed by text; special ones split out only with TERN_TOK_PARSE_SPECIAL;
 * bos/eos named by text; legacy false: no dummy space after a special token). */
tern_code tern_tokenizer_load_dir(tern_tokenizer **out, const char *dir, tern_status *st);
void tern_tokenizer_free(tern_tokenizer *tok);
/* Appends the ids of text to out. */
tern_code tern_tokenizer_encode(const tern_tokenizer *tok, const char *text, size_t len,
                                unsigned flags, tern_tokens *out, tern_status *st);
int32_t tern_tokenizer_n_vocab(const tern_tokenizer *tok);
int32_t tern_tokenizer_bos(const tern_tokenizer *tok);
int32_t tern_tokenizer_eos(const tern_tokenizer *tok);
int32_t tern_tokenizer_eot(const tern_tokenizer *tok); /* -1 if none */
bool tern_tokenizer_add_bos(const tern_tokenizer *tok);
bool tern_tokenizer_is_stop(const tern_tokenizer *tok, int32_t id);
/* A special (control) token: BOS, EOS, EOT, reserved and added special tokens. */
bool tern_tokenizer_is_special(const tern_tokenizer *tok, int32_t id);
const char *tern_tokenizer_pre_name(const tern_tokenizer *tok);
/* Whether the vocabulary has the BitNet chat format (byte-level BPE, not SentencePiece); chat
 * encoding for a base model without one is refused. */
bool tern_tokenizer_has_chat(const tern_tokenizer *tok);
/* Raw bytes of a token (byte mapping reversed; special tokens give their text). NULL and
 * *len 0 for an id out of range. */
const char *tern_tokenizer_token_bytes(const tern_tokenizer *tok, int32_t id, size_t *len);

/* Whole-sequence decode into out (at most cap bytes; returns bytes written). SentencePiece:
 * the dummy-prefix space before the first piece is dropped, CONTROL pieces give nothing. */
size_t tern_tokenizer_decode(const tern_tokenizer *tok, const int32_t *ids, size_t n, char *out,
                             size_t cap);

/* Streaming decoder: holds back an incomplete UTF-8 sequence until the next token. */
typedef struct tern_detok {
    unsigned char pending[4];
    size_t n_pending;
} tern_detok;
/* Writes complete UTF-8 to out (cap >= token length + 4); returns bytes written. */
size_t tern_detok_push(const tern_tokenizer *tok, tern_detok *d, int32_t id, char *out, size_t cap);
size_t tern_detok_flush(tern_detok *d, char *out, size_t cap);

/* BitNet chat format (spec 4.6, HF template): [BOS] + per message encode("Role: " +
 * content.strip()) + [EOT]; + encode("Assistant: ") when add_generation_prompt. One user
 * message "How are you?" gives 128000 1502 25 2650 527 499 30 128009 72803 25 220. */
typedef struct tern_chat_msg {
    const char *role; /* system, user or assistant */
    const char *content;
} tern_chat_msg;
tern_code tern_chat_encode(const tern_tokenizer *tok, const tern_chat_msg *msgs, size_t n,
                           bool add_generation_prompt, tern_tokens *out, tern_status *st);

/* Adds the Llama-3 vocab of a tiktoken rank file to a writer: 128000 ranked tokens in the
 * GPT-2 byte alphabet, merges derived from the ranks, 256 special tokens, ids and flags. */
tern_code tern_vocab_add_tiktoken(tern_gguf_writer *w, const char *ranks_path, tern_status *st);

#ifdef __cplusplus
}
#endif
#endif
