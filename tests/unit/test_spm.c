/* test_spm.c: SentencePiece BPE with byte fallback (spec 8).
 *
 * Vectors: llama.cpp's 46 Llama-2 cases (ids from HF's tokenizer) on the vocab-only GGUF, and
 * the official sentencepiece library's ids for the 41 cases of spm-tinystories.model, read
 * from the ModelProto itself; decode round trips on both; special tokens; streaming decode of
 * byte-fallback UTF-8; the tiny-large-hf directory (added tokens, BOS/EOS by text) against
 * its reference ids; every truncation and targeted corruptions of a tokenizer.model. */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "ternpipe/spm.h"
#include "ternpipe/tokenizer.h"

static const char *SEP = "\n__ggml_vocab_test__\n";

/* Runs the .inp/.out cases; returns the number that matched. */
static int run_vectors(const tern_tokenizer *tok, const char *inp_rel, const char *out_rel,
                       int want_cases, const char *label)
{
    size_t li, lo;
    char *inp = (char *)tern_test_read_file(tern_test_fixture(inp_rel), &li);
    char *out = (char *)tern_test_read_file(tern_test_fixture(out_rel), &lo);
    CHECK(inp && out);
    if (!inp || !out) {
        free(inp), free(out);
        return 0;
    }
    char *p = inp, *q = out;
    int cases = 0, ok = 0, trips = 0;
    for (;;) {
        char *e = strstr(p, SEP);
        char *nl = strchr(q, '\n');
        if (!e || !nl) break;
        *nl = 0;
        size_t n = (size_t)(e - p);
        tern_tokens ids = {0};
        tern_status st = {0};
        CHECK(tern_tokenizer_encode(tok, p, n, 0, &ids, &st) == TERN_OK);
        char got[8192];
        size_t g = 0;
        got[0] = 0;
        for (size_t i = 0; i < ids.n && g + 16 < sizeof got; i++)
            g += (size_t)snprintf(got + g, sizeof got - g, " %d", ids.ids[i]);
        bool same = !strcmp(got, q);
        CHECKF(same, "%s case %d '%.*s': got '%s', expected '%s'", label, cases, (int)n, p, got, q);
        ok += same;
        /* decode gives the text back, except that a literal U+2581 reads as a space */
        char *back = malloc(n + 64);
        size_t bl = tern_tokenizer_decode(tok, ids.ids, ids.n, back, n + 64);
        bool has_2581 = false;
        for (size_t i = 0; i + 2 < n; i++) has_2581 |= !memcmp(p + i, "\xe2\x96\x81", 3);
        if (!has_2581) {
            CHECKF(bl == n && !memcmp(back, p, n), "%s case %d: decode '%.*s'", label, cases,
                   (int)bl, back);
            trips++;
        }
        free(back);
        tern_tokens_free(&ids);
        cases++;
        p = e + strlen(SEP);
        q = nl + 1;
    }
    CHECK(cases == want_cases);
    printf("%s vectors: %d/%d, decode round trips: %d\n", label, ok, cases, trips);
    free(inp), free(out);
    return ok;
}

static void test_llama_gguf(void)
{
    if (!tern_test_need("tokenizer/ggml-vocab-llama-spm.gguf")) return;
    tern_gguf *g = NULL;
    tern_tokenizer *tok = NULL;
    tern_status st = {0};
    CHECK(tern_gguf_open(&g, tern_test_fixture("tokenizer/ggml-vocab-llama-spm.gguf"), &st) ==
          TERN_OK);
    CHECKF(g && tern_tokenizer_load(&tok, g, &st) == TERN_OK, "%s", st.msg);
    if (!tok) {
        tern_gguf_close(g);
        return;
    }
    CHECK(tern_tokenizer_n_vocab(tok) == 32000 && tern_tokenizer_bos(tok) == 1 &&
          tern_tokenizer_eos(tok) == 2 && tern_tokenizer_add_bos(tok));
    int ok = run_vectors(tok, "tokenizer/ggml-vocab-llama-spm.gguf.inp",
                         "tokenizer/ggml-vocab-llama-spm.gguf.out", 46, "llama-spm");
    CHECK(ok == 46);
    /* spec 8.3's examples, and BOS */
    tern_tokens ids = {0};
    CHECK(tern_tokenizer_encode(tok, "Hello world", 11, TERN_TOK_ADD_BOS, &ids, &st) == TERN_OK);
    CHECK(ids.n == 3 && ids.ids[0] == 1 && ids.ids[1] == 15043 && ids.ids[2] == 3186);
    tern_tokens_free(&ids);
    /* special text: plain text unless asked; then CONTROL ids, and llama.cpp's dummy space
     * after a special token */
    CHECK(tern_tokenizer_encode(tok, "<s>Hi", 5, TERN_TOK_PARSE_SPECIAL, &ids, &st) == TERN_OK);
    tern_tokens hi = {0};
    CHECK(tern_tokenizer_encode(tok, "Hi", 2, 0, &hi, &st) == TERN_OK);
    CHECK(ids.n == hi.n + 1 && ids.ids[0] == 1 && !memcmp(ids.ids + 1, hi.ids, hi.n * 4));
    tern_tokens_free(&ids);
    CHECK(tern_tokenizer_encode(tok, "<s>", 3, 0, &ids, &st) == TERN_OK);
    bool has1 = false;
    for (size_t i = 0; i < ids.n; i++) has1 |= ids.ids[i] == 1;
    CHECK(ids.n > 1 && !has1);
    /* CONTROL pieces decode to nothing; byte pieces to their byte */
    size_t len;
    CHECK(tern_tokenizer_token_bytes(tok, 1, &len) && len == 0);
    const char *b = tern_tokenizer_token_bytes(tok, 3 + 0x41, &len);
    CHECK(b && len == 1 && b[0] == 'A');
    CHECK(tern_tokenizer_token_bytes(tok, 32000, &len) == NULL && len == 0);
    tern_tokens_free(&ids), tern_tokens_free(&hi);
    tern_tokenizer_free(tok);
    tern_gguf_close(g);
}

static void test_tinystories_model(void)
{
    if (!tern_test_need("tokenizer/spm-tinystories.model")) return;
    tern_tokenizer *tok = NULL;
    tern_status st = {0};
    CHECKF(tern_tokenizer_load_spm_file(&tok, tern_test_fixture("tokenizer/spm-tinystories.model"),
                                        &st) == TERN_OK,
           "%s", st.msg);
    if (!tok) return;
    CHECK(tern_tokenizer_n_vocab(tok) == 2000 && tern_tokenizer_bos(tok) == 1 &&
          tern_tokenizer_eos(tok) == 2);
    int ok = run_vectors(tok, "tokenizer/spm-tinystories.inp", "tokenizer/spm-tinystories.out", 41,
                         "spm-tinystories");
    CHECK(ok == 41);
    /* streaming decode: byte-fallback pieces of multi-byte characters are held back until
     * complete, and the stream equals the whole decode (plus the dummy space) */
    const char *text = "h\xc3\xa9llo \xf0\x9f\xa6\x99 \xe4\xb8\x96\xe7\x95\x8c!";
    tern_tokens ids = {0};
    CHECK(tern_tokenizer_encode(tok, text, strlen(text), 0, &ids, &st) == TERN_OK);
    int bytes = 0;
    for (size_t i = 0; i < ids.n; i++) bytes += ids.ids[i] >= 3 && ids.ids[i] < 259;
    CHECK(bytes >= 4); /* the emoji at least goes through byte fallback */
    tern_detok d = {0};
    char buf[256], chunk[64];
    size_t n = 0;
    bool clean = true;
    for (size_t i = 0; i < ids.n; i++) {
        size_t k = tern_detok_push(tok, &d, ids.ids[i], chunk, sizeof chunk);
        /* a chunk never ends inside a UTF-8 sequence */
        if (k && (unsigned char)chunk[k - 1] >= 0xc0) clean = false;
        memcpy(buf + n, chunk, k);
        n += k;
    }
    n += tern_detok_flush(&d, buf + n, sizeof buf - n);
    CHECK(clean);
    CHECKF(n == strlen(text) + 1 && buf[0] == ' ' && !memcmp(buf + 1, text, n - 1), "'%.*s'",
           (int)n, buf);
    tern_tokens_free(&ids);
    tern_tokenizer_free(tok);
}

static void test_hf_dir(void)
{
    if (!tern_test_need("reference/tiny-large-hf/tokenizer.model") ||
        !tern_test_need("reference/tiny-large-hf/ids.txt"))
        return;
    tern_tokenizer *tok = NULL;
    tern_status st = {0};
    CHECKF(tern_tokenizer_load_dir(&tok, tern_test_fixture("reference/tiny-large-hf"), &st) ==
               TERN_OK,
           "%s", st.msg);
    if (!tok) return;
    CHECK(tern_tokenizer_n_vocab(tok) == 2002 && tern_tokenizer_bos(tok) == 1 &&
          tern_tokenizer_eos(tok) == 2);
    size_t len;
    const char *b = tern_tokenizer_token_bytes(tok, 2001, &len);
    CHECK(b && len == 0); /* </line> is special: CONTROL */
    /* the reference ids: BOS, the prompt's ids, then </line> (2001) */
    size_t pl, il;
    char *prompt =
        (char *)tern_test_read_file(tern_test_fixture("reference/tiny-large-hf/prompt.txt"), &pl);
    char *idt =
        (char *)tern_test_read_file(tern_test_fixture("reference/tiny-large-hf/ids.txt"), &il);
    CHECK(prompt && idt);
    if (prompt && idt) {
        int32_t want[256];
        int nw = 0;
        for (char *p = idt, *e; nw < 256; p = e) {
            long v = strtol(p, &e, 10);
            if (e == p) break;
            want[nw++] = (int32_t)v;
        }
        char *with = malloc(pl + 16);
        memcpy(with, prompt, pl);
        memcpy(with + pl, "</line>", 7);
        tern_tokens ids = {0};
        CHECK(tern_tokenizer_encode(tok, with, pl + 7, TERN_TOK_ADD_BOS | TERN_TOK_PARSE_SPECIAL,
                                    &ids, &st) == TERN_OK);
        CHECKF(nw == 39 && ids.n == (size_t)nw && !memcmp(ids.ids, want, (size_t)nw * 4),
               "got %zu ids, expected %d", ids.n, nw);
        /* legacy false: no dummy space after a special token */
        tern_tokens a = {0}, c = {0};
        CHECK(tern_tokenizer_encode(tok, "</line>Once", 11, TERN_TOK_PARSE_SPECIAL, &a, &st) == 0);
        CHECK(tern_tokenizer_encode(tok, "Once", 4, 0, &c, &st) == 0);
        CHECK(a.n >= 2 && a.ids[0] == 2001);
        size_t cb = 0;
        const char *fb = c.n ? tern_tokenizer_token_bytes(tok, c.ids[0], &cb) : NULL;
        const char *ab = a.n > 1 ? tern_tokenizer_token_bytes(tok, a.ids[1], &len) : NULL;
        CHECK(fb && cb && fb[0] == ' ' && ab && !(len && ab[0] == ' '));
        tern_tokens_free(&a), tern_tokens_free(&c), tern_tokens_free(&ids);
        free(with);
    }
    free(prompt), free(idt);
    tern_tokenizer_free(tok);
}

/* ---- a hand-encoded ModelProto, for corruptions ---- */

typedef struct pb {
    unsigned char b[4096];
    size_t n;
} pb;

static void varint(pb *p, uint64_t v)
{
    while (v >= 0x80) p->b[p->n++] = (unsigned char)(v | 0x80), v >>= 7;
    p->b[p->n++] = (unsigned char)v;
}
static void key(pb *p, int field, int wt)
{
    varint(p, (uint64_t)(field << 3 | wt));
}
static void bytes(pb *p, int field, const void *d, size_t n)
{
    key(p, field, 2);
    varint(p, n);
    memcpy(p->b + p->n, d, n);
    p->n += n;
}
static void f32(pb *p, int field, float f)
{
    key(p, field, 5);
    memcpy(p->b + p->n, &f, 4);
    p->n += 4;
}

typedef struct spec {
    int n_pieces;
    int bad_type_at, empty_at, nan_at, badbyte_at;
    int model_type, vocab_size; /* vocab_size 0: the piece count */
    int unk_id, bos_id;
    const char *normalizer;
    int charsmap, remove_ws;
    bool no_trainer, no_normalizer, wire_error;
} spec;

/* pieces: <unk> <s> </s> <0x00>..<0x03> then "▁a" "b" ... */
static size_t build(const spec *s, unsigned char *out)
{
    pb m = {.n = 0};
    static const char *normal[] = {"\xe2\x96\x81", "a", "b", "c",
                                   ("\xe2\x96\x81"
                                    "a")};
    for (int i = 0; i < s->n_pieces; i++) {
        pb pc = {.n = 0};
        char text[16];
        int type = i == 0 ? 2 : i < 3 ? 3 : i < 7 ? 6 : 1;
        if (i == 0)
            snprintf(text, sizeof text, "<unk>");
        else if (i < 3)
            snprintf(text, sizeof text, i == 1 ? "<s>" : "</s>");
        else if (i < 7)
            snprintf(text, sizeof text, "<0x%02X>", i - 3);
        else
            snprintf(text, sizeof text, "%s", normal[(i - 7) % 5]);
        if (i == s->badbyte_at) snprintf(text, sizeof text, "<0xZZ>");
        if (i == s->bad_type_at) type = 9;
        if (i != s->empty_at) bytes(&pc, 1, text, strlen(text));
        f32(&pc, 2, i == s->nan_at ? 0.0f / 0.0f : -(float)i);
        key(&pc, 3, 0);
        varint(&pc, (uint64_t)type);
        bytes(&m, 1, pc.b, pc.n);
    }
    if (s->wire_error) {
        key(&m, 1, 0); /* pieces as a varint */
        varint(&m, 5);
    }
    if (!s->no_trainer) {
        pb t = {.n = 0};
        key(&t, 3, 0), varint(&t, (uint64_t)s->model_type);
        key(&t, 4, 0), varint(&t, (uint64_t)(s->vocab_size ? s->vocab_size : s->n_pieces));
        key(&t, 35, 0), varint(&t, 1);
        key(&t, 40, 0), varint(&t, (uint64_t)(int64_t)s->unk_id);
        key(&t, 41, 0), varint(&t, (uint64_t)(int64_t)s->bos_id);
        key(&t, 42, 0), varint(&t, 2);
        bytes(&m, 2, t.b, t.n);
    }
    if (!s->no_normalizer) {
        pb nz = {.n = 0};
        bytes(&nz, 1, s->normalizer, strlen(s->normalizer));
        if (s->charsmap) bytes(&nz, 2, "\x01\x02\x03\x04", 4);
        key(&nz, 3, 0), varint(&nz, 1);
        key(&nz, 4, 0), varint(&nz, (uint64_t)s->remove_ws);
        bytes(&m, 3, nz.b, nz.n);
    }
    memcpy(out, m.b, m.n);
    return m.n;
}

static tern_code load_bytes(const unsigned char *b, size_t n, tern_status *st)
{
    char path[512];
    snprintf(path, sizeof path, "%s/t.model", tern_test_tmpdir());
    FILE *f = fopen(path, "wb");
    if (n) fwrite(b, 1, n, f);
    fclose(f);
    tern_tokenizer *tok = NULL;
    tern_code rc = tern_tokenizer_load_spm_file(&tok, path, st);
    if (!rc) {
        /* the made model works: "▁a" merges, unknown characters fall back to bytes */
        tern_tokens ids = {0};
        CHECK(tern_tokenizer_encode(tok, "a\x01", 2, 0, &ids, st) == TERN_OK);
        CHECK(ids.n == 2 && ids.ids[0] == 11 && ids.ids[1] == 4);
        tern_tokens_free(&ids);
    }
    tern_tokenizer_free(tok);
    return rc;
}

static bool one_line(const char *m)
{
    return strstr(m, ": got ") && strstr(m, ", expected ") && !strchr(m, '\n') &&
           (!strncmp(m, "sentencepiece: ", 15) || !strncmp(m, "tokenizer: ", 11));
}

static void test_corruptions(void)
{
    const spec good = {.n_pieces = 12,
                       .bad_type_at = -1,
                       .empty_at = -1,
                       .nan_at = -1,
                       .badbyte_at = -1,
                       .model_type = 2,
                       .unk_id = 0,
                       .bos_id = 1,
                       .normalizer = "identity"};
    unsigned char buf[4096];
    tern_status st = {0};
    size_t n = build(&good, buf);
    CHECKF(load_bytes(buf, n, &st) == TERN_OK, "%s", st.msg);
    /* every truncation */
    int bad = 0;
    for (size_t k = 0; k < n; k++) {
        tern_code rc = load_bytes(buf, k, &st);
        if ((rc != TERN_EFORMAT || !one_line(st.msg)) && bad++ < 5)
            fprintf(stderr, "cut at %zu: rc %d '%s'\n", k, rc, st.msg);
    }
    CHECKF(bad == 0, "%d of %zu truncations accepted or unclear", bad, n);
    /* the real model, every truncation too */
    if (tern_test_need("tokenizer/spm-tinystories.model")) {
        size_t rl;
        unsigned char *real =
            tern_test_read_file(tern_test_fixture("tokenizer/spm-tinystories.model"), &rl);
        int rbad = 0;
        for (size_t k = 0; real && k < rl; k += (k < 64 || rl - k < 256) ? 1 : 97) {
            tern_spm_model m;
            tern_code rc = tern_spm_model_parse(real, k, "real", &m, &st);
            if ((rc != TERN_EFORMAT || !one_line(st.msg)) && rbad++ < 5)
                fprintf(stderr, "real cut at %zu: rc %d '%s'\n", k, rc, st.msg);
            tern_spm_model_free(&m);
        }
        CHECK(real && rbad == 0);
        free(real);
    }
    struct {
        spec s;
        tern_code rc;
        const char *want;
    } cs[] = {
        {good, TERN_OK, NULL},
        {good, TERN_EFORMAT, "piece 8: type: got 9, expected 1..6"},
        {good, TERN_EFORMAT, "piece 9: length: got 0"},
        {good, TERN_EFORMAT, "piece 10: score: got "},
        {good, TERN_EFORMAT, "piece 4 (BYTE): got '<0xZZ>'"},
        {good, TERN_EUNSUPPORTED, "model_type: got UNIGRAM (1), expected BPE (2)"},
        {good, TERN_EFORMAT, "pieces: got 12, expected trainer_spec.vocab_size 13"},
        {good, TERN_EFORMAT, "piece 1 (unk_id): type: got 3, expected 2"},
        {good, TERN_EFORMAT, "trainer_spec.bos_id: got 12, expected -1..11"},
        {good, TERN_EUNSUPPORTED, "normalizer_spec: got 'nmt_nfkc' with a 4-byte charsmap"},
        {good, TERN_EUNSUPPORTED, "remove_extra_whitespaces 1"},
        {good, TERN_EFORMAT, "trainer_spec: got nothing"},
        {good, TERN_EFORMAT, "normalizer_spec: got nothing"},
        {good, TERN_EFORMAT, "do not parse as a ModelProto"},
        {good, TERN_EFORMAT, "pieces: got 0, expected 1.."},
    };
    cs[1].s.bad_type_at = 8;
    cs[2].s.empty_at = 9;
    cs[3].s.nan_at = 10;
    cs[4].s.badbyte_at = 4;
    cs[5].s.model_type = 1;
    cs[6].s.vocab_size = 13;
    cs[7].s.unk_id = 1;
    cs[8].s.bos_id = 12;
    cs[9].s.normalizer = "nmt_nfkc", cs[9].s.charsmap = 1;
    cs[10].s.remove_ws = 1;
    cs[11].s.no_trainer = true;
    cs[12].s.no_normalizer = true;
    cs[13].s.wire_error = true;
    cs[14].s.n_pieces = 0;
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++) {
        n = build(&cs[i].s, buf);
        tern_code rc = load_bytes(buf, n, &st);
        CHECKF(rc == cs[i].rc, "corruption %zu: rc %d '%s'", i, rc, st.msg);
        if (cs[i].want)
            CHECKF(one_line(st.msg) && strstr(st.msg, cs[i].want), "corruption %zu: '%s'", i,
                   st.msg);
    }
    tern_tokenizer *tok = NULL;
    CHECK(tern_tokenizer_load_spm_file(&tok, "/nonexistent.model", &st) == TERN_EIO && !tok);
    CHECK(tern_tokenizer_load_dir(&tok, "/nonexistent", &st) == TERN_EUNSUPPORTED && !tok);
    CHECKF(one_line(st.msg), "'%s'", st.msg);
}

int main(void)
{
    test_llama_gguf();
    test_tinystories_model();
    test_hf_dir();
    test_corruptions();
    return tern_test_finish("test_spm");
}
