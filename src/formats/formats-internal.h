/* formats-internal.h: what the formats module's files share and nothing outside uses. */
#ifndef TERN_FORMATS_INTERNAL_H
#define TERN_FORMATS_INTERNAL_H

#include <stdint.h>

#include "ternpipe/gguf.h"

/* DIR/tokenizer.json (HF tokenizers, byte-level BPE) -> tokenizer.ggml.* keys for n_vocab
 * embedding rows (hf-tokjson.c). TERN_OK without adding anything when the file is absent. */
tern_code tern_hf_tokjson_add(tern_gguf_writer *w, const char *dir, int32_t n_vocab,
                              tern_status *st);

#endif
