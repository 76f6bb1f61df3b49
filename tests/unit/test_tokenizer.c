/* test_tokenizer.c: the Llama-3 tokenizer against the 46 llama.cpp vectors (vocab built by
 * tern_vocab_add_tiktoken from the real rank file), round trips on those and on random bytes,
 * the BitNet chat format ids, special-token parsing, streaming decode of split UTF-8, and the
 * GPT-2 vocab file written by another implementation. */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "ternpipe/rng.h"
#include "ternpipe/tokenizer.h"

static tern_tokenizer *tok;

static void roundtrip(const char *text, size_t len)
{
    tern_tokens ids = {0};
    tern_status st = {0};
    CHECK(tern_tokenizer_encode(tok, text, len, 0, &ids, &st) == TERN_OK);
    char *back = malloc(len + 64);
    size_t n = 0;
    for (size_t i = 0; i < ids.n; i++) {
        size_t bl;
        const char *b = tern_tokenizer_token_bytes(tok, ids.ids[i], &bl);
        if (n + bl > len + 64) break;
        memcpy(back + n, b, bl);
        n += bl;
    }
    CHECKF(n == len && !memcmp(back, text, len), "round trip of %zu bytes", len);
    free(back);
    tern_tokens_free(&ids);
}

static void test_vectors(void)
{
    size_t li, lo;
    char *inp = (char *)tern_test_read_file(tern_test_fixture("tokenizer/llama-bpe.inp"), &li);
    char *out = (char *)tern_test_read_file(tern_test_fixture("tokenizer/llama-bpe.out"), &lo);
    CHECK(inp && out);
    if (!inp || !out) return;
    const char *sep = "\n__ggml_vocab_test__\n";
    char *p = inp, *q = out;
    int cases = 0, ok = 0;
    for (;;) {
        char *e = strstr(p, sep);
        if (!e) break;
        char *nl = strchr(q, '\n');
        if (!nl) break;
        *nl = 0;
        tern_tokens ids = {0};
        tern_status st = {0};
        CHECK(tern_tokenizer_encode(tok, p, (size_t)(e - p), 0, &ids, &st) == TERN_OK);
        char got[8192];
        size_t g = 0;
        got[0] = 0;
        for (size_t i = 0; i < ids.n && g + 16 < sizeof got; i++)
            g += (size_t)snprintf(got + g, sizeof got - g, " %d", ids.ids[i]);
        bool same = !strcmp(got, q);
        CHECKF(same, "case %d '%.*s': got '%s', expected '%s'", cases, (int)(e - p), p, got, q);
        ok += same;
        roundtrip(p, (size_t)(e - p));
        tern_tokens_free(&ids);
        cases++;
        p = e + strlen(sep);
        q = nl + 1;
    }
    CHECK(cases == 46);
    printf("llama-bpe vectors: %d/%d\n", ok, cases);
    free(inp), free(out);
}

static void test_random_roundtrip(void)
{
    tern_rng r;
    tern_rng_seed(&r, 7);
    char buf[600];
    for (int k = 0; k < 300; k++) {
        size_t n = (size_t)tern_rng_below(&r, sizeof buf);
        for (size_t i = 0; i < n; i++) {
            /* mix ASCII, spaces/newlines, UTF-8 lead/continuation bytes, and arbitrary bytes */
            uint64_t c = tern_rng_below(&r, 10);
            buf[i] = c < 5   ? (char)(' ' + tern_rng_below(&r, 95))
                     : c < 6 ? ' '
                     : c < 7 ? '\n'
                             : (char)tern_rng_below(&r, 256);
        }
        roundtrip(buf, n);
    }
    static const char utf[] = "Cửa Việt 🦙 Ελληνικά 中文 \xff\xfe\xc3 broken";
    roundtrip(utf, sizeof utf - 1);
}

static void test_chat_and_specials(void)
{
    tern_tokens ids = {0};
    tern_status st = {0};
    tern_chat_msg m = {"user", "How are you?"};
    CHECK(tern_chat_encode(tok, &m, 1, true, &ids, &st) == TERN_OK);
    static const int32_t want[] = {128000, 1502, 25, 2650, 527, 499, 30, 128009, 72803, 25, 220};
    CHECKF(ids.n == 11 && !memcmp(ids.ids, want, sizeof want), "chat ids (%zu)", ids.n);
    tern_tokens_free(&ids);
    const char *txt = "hi<|eot_id|>";
    CHECK(tern_tokenizer_encode(tok, txt, strlen(txt), TERN_TOK_PARSE_SPECIAL, &ids, &st) ==
          TERN_OK);
    CHECK(ids.n >= 2 && ids.ids[ids.n - 1] == 128009);
    size_t with = ids.n;
    tern_tokens_free(&ids);
    CHECK(tern_tokenizer_encode(tok, txt, strlen(txt), 0, &ids, &st) == TERN_OK);
    bool has = false;
    for (size_t i = 0; i < ids.n; i++) has |= ids.ids[i] == 128009;
    CHECK(!has && ids.n > with);
    tern_tokens_free(&ids);
    CHECK(tern_tokenizer_encode(tok, "x", 1, TERN_TOK_ADD_BOS, &ids, &st) == TERN_OK);
    CHECK(ids.n == 2 && ids.ids[0] == 128000);
    tern_tokens_free(&ids);
    CHECK(tern_tokenizer_is_stop(tok, 128001) && tern_tokenizer_is_stop(tok, 128009) &&
          !tern_tokenizer_is_stop(tok, 128000));
    tern_chat_msg bad = {"robot", "x"};
    CHECK(tern_chat_encode(tok, &bad, 1, true, &ids, &st) == TERN_EINVAL &&
          strstr(st.msg, "robot"));
    tern_tokens_free(&ids);
}

static void test_streaming(void)
{
    /* "é" (c3 a9) and an emoji (f0 9f a6 99) as byte tokens: the decoder must hold partial
     * sequences back and release them whole */
    tern_tokens ids = {0};
    tern_status st = {0};
    const char *txt = "é🦙";
    CHECK(tern_tokenizer_encode(tok, txt, strlen(txt), 0, &ids, &st) == TERN_OK);
    /* force byte-level ids: the token of each single byte */
    int32_t bytes_ids[8];
    size_t nb = strlen(txt);
    for (size_t i = 0; i < nb; i++) {
        char one[1] = {txt[i]};
        tern_tokens b = {0};
        /* a lone byte of invalid UTF-8 still encodes to its byte token */
        CHECK(tern_tokenizer_encode(tok, one, 1, 0, &b, &st) == TERN_OK && b.n == 1);
        bytes_ids[i] = b.n ? b.ids[0] : 0;
        tern_tokens_free(&b);
    }
    tern_detok d = {0};
    char out[64], all[64];
    size_t total = 0;
    for (size_t i = 0; i < nb; i++) {
        size_t w = tern_detok_push(tok, &d, bytes_ids[i], out, sizeof out);
        if (i == 0 || (i >= 2 && i < 5)) CHECKF(w == 0, "byte %zu released early", i);
        memcpy(all + total, out, w);
        total += w;
    }
    total += tern_detok_flush(&d, all + total, sizeof all - total);
    CHECK(total == nb && !memcmp(all, txt, nb));
    tern_tokens_free(&ids);
}

static void test_gpt2_fixture(void)
{
    if (!tern_test_need("gguf/ggml-vocab-gpt-2.gguf")) return;
    tern_status st = {0};
    tern_gguf *g;
    CHECK(tern_gguf_open(&g, tern_test_fixture("gguf/ggml-vocab-gpt-2.gguf"), &st) == TERN_OK);
    if (!g) return;
    CHECK(tern_gguf_n_kv(g) == 16);
    tern_tokenizer *t2;
    CHECK(tern_tokenizer_load(&t2, g, &st) == TERN_OK);
    if (t2) {
        CHECK(tern_tokenizer_n_vocab(t2) == 50257);
        CHECK(!strcmp(tern_tokenizer_pre_name(t2), "gpt-2"));
        tern_tokens ids = {0};
        const char *txt = "Hello world, it's 2024!";
        CHECK(tern_tokenizer_encode(t2, txt, strlen(txt), 0, &ids, &st) == TERN_OK);
        /* GPT-2: Hello=15496, Ġworld=995, ,=11, Ġit=340, 's=338 (the ' s contraction of the
         * GPT-2 regex), then " 2024" and "!"=0 */
        static const int32_t want[] = {15496, 995, 11, 340, 338};
        CHECKF(ids.n == 7 && !memcmp(ids.ids, want, sizeof want) && ids.ids[6] == 0,
               "gpt-2 ids (%zu)", ids.n);
        size_t bl;
        const char *b = tern_tokenizer_token_bytes(t2, ids.ids[5], &bl);
        CHECK(bl == 5 && !memcmp(b, " 2024", 5));
        tern_tokens_free(&ids);
        tern_tokenizer_free(t2);
    }
    tern_gguf_close(g);
}

int main(void)
{
    if (!tern_test_need("tokenizer/llama3.tiktoken") || !tern_test_need("tokenizer/llama-bpe.inp"))
        return tern_test_finish("test_tokenizer");
    char path[512];
    snprintf(path, sizeof path, "%s/llama3.gguf", tern_test_tmpdir());
    tern_status st = {0};
    tern_gguf_writer *w = tern_gguf_writer_new();
    tern_gguf_writer_add_str(w, "general.architecture", "llama");
    CHECK(tern_vocab_add_tiktoken(w, tern_test_fixture("tokenizer/llama3.tiktoken"), &st) ==
          TERN_OK);
    CHECK(tern_gguf_writer_write(w, path, &st) == TERN_OK);
    tern_gguf_writer_free(w);
    tern_gguf *g;
    CHECK(tern_gguf_open(&g, path, &st) == TERN_OK);
    if (!g) return tern_test_finish("test_tokenizer");
    const tern_gguf_value *merges = tern_gguf_find(g, "tokenizer.ggml.merges");
    CHECK(merges && merges->v.arr.n == 280147);
    CHECK(tern_tokenizer_load(&tok, g, &st) == TERN_OK);
    if (tok) {
        CHECK(tern_tokenizer_n_vocab(tok) == 128256);
        test_vectors();
        test_random_roundtrip();
        test_chat_and_specials();
        test_streaming();
    }
    test_gpt2_fixture();
    tern_tokenizer_free(tok);
    tern_gguf_close(g);
    remove(path);
    return tern_test_finish("test_tokenizer");
}
