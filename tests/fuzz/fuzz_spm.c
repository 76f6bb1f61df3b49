/* fuzz_spm.c: libFuzzer target for tokenizer.model (SentencePiece ModelProto) parsing and the
 * SentencePiece encoder built from it.
 *
 * A rejected input must carry a one-line "sentencepiece: NAME: ... got X, expected Y" error;
 * an accepted model's promises are asserted (piece count, non-empty pieces, known types, ids
 * in range), then a tokenizer is built from its pieces and encodes a fixed text: every id it
 * emits must be a piece, and decoding must not read outside the pieces.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text/text-internal.h"

#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_spm: broken promise: %s (line %d)\n", #cond, __LINE__);          \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static volatile uint64_t sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tern_spm_model m;
    tern_status st;
    memset(&st, 0, sizeof st);
    tern_code rc = tern_spm_model_parse(data, size, "fuzz.model", &m, &st);
    if (rc != TERN_OK) {
        REQUIRE(st.code == rc && m.pieces == NULL);
        if (rc == TERN_EFORMAT) {
            REQUIRE(strncmp(st.msg, "sentencepiece: fuzz.model: ", 27) == 0);
            REQUIRE(strstr(st.msg, ": got ") && strstr(st.msg, ", expected "));
            REQUIRE(!strchr(st.msg, '\n'));
        }
        return 0;
    }
    REQUIRE(m.n_pieces >= 1);
    for (int32_t i = 0; i < m.n_pieces; i++) {
        REQUIRE(m.pieces[i].len >= 1 && m.pieces[i].len == strlen(m.pieces[i].text));
        REQUIRE(m.pieces[i].type >= TERN_SPM_NORMAL && m.pieces[i].type < TERN_SPM_TYPE_COUNT);
    }
    REQUIRE(m.unk_id >= -1 && m.unk_id < m.n_pieces && m.bos_id < m.n_pieces);
    tern_spm_tok *tok = NULL;
    tern_spm_opts o = {m.byte_fallback, m.add_dummy_prefix, true};
    if (tern_spm_tok_build(&tok, m.pieces, m.n_pieces, &o, "fuzz.model", &st) == TERN_OK) {
        static const char text[] =
            "Once upon a time, \xe2\x96\x81 h\xc3\xa9 \xf0\x9f\xa6\x99 <s>\x01";
        tern_tokens ids = {0};
        if (tern_spm_tok_encode(tok, text, sizeof text - 1, TERN_TOK_PARSE_SPECIAL, &ids, &st) ==
            TERN_OK) {
            for (size_t i = 0; i < ids.n; i++) {
                REQUIRE(ids.ids[i] >= 0 && ids.ids[i] < m.n_pieces);
                size_t len;
                const char *b = tern_spm_tok_bytes(tok, ids.ids[i], &len);
                if (len) sink += (uint8_t)b[0] + (uint8_t)b[len - 1];
            }
        }
        tern_tokens_free(&ids);
        tern_spm_tok_free(tok);
    }
    tern_spm_model_free(&m);
    return 0;
}
