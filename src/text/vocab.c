/* vocab.c: the Llama-3 vocab from a tiktoken rank file ("base64 rank" lines) as GGUF
 * tokenizer metadata: tokens in the GPT-2 byte alphabet, merges derived from the ranks (the
 * standard rank-to-merges conversion: every split of a token into two vocab tokens, ordered by
 * the merged token's rank, then by the ranks of the parts), and the 256 special tokens of
 * spec 4.5. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ternpipe/tokenizer.h"
#include "text/text-internal.h"

#define N_SPECIAL 256

typedef struct rtok {
    unsigned char *b;
    uint32_t len;
} rtok;

typedef struct bmap { /* bytes -> rank */
    uint64_t h;
    int32_t rank;
} bmap;

static uint64_t hbytes(const unsigned char *p, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL;
    return h | 1;
}

static int32_t find(const bmap *m, size_t mask, const rtok *toks, const unsigned char *p, size_t n)
{
    uint64_t h = hbytes(p, n);
    for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
        if (m[i].rank < 0) return -1;
        if (m[i].h == h && toks[m[i].rank].len == n && !memcmp(toks[m[i].rank].b, p, n))
            return m[i].rank;
    }
}

static int b64v(int c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* GPT-2 mapped text of raw bytes into out (3 bytes per input byte at most) */
static size_t mapped(const unsigned char *p, size_t n, char *out, const char (*u8)[3],
                     const uint8_t *u8len)
{
    size_t m = 0;
    for (size_t i = 0; i < n; i++) memcpy(out + m, u8[p[i]], u8len[p[i]]), m += u8len[p[i]];
    return m;
}

typedef struct merge {
    int32_t rank, l, r;
} merge;

static int cmp_merge(const void *a, const void *b)
{
    const merge *x = a, *y = b;
    if (x->rank != y->rank) return x->rank < y->rank ? -1 : 1;
    if (x->l != y->l) return x->l < y->l ? -1 : 1;
    return x->r < y->r ? -1 : x->r > y->r;
}

tern_code tern_vocab_add_tiktoken(tern_gguf_writer *w, const char *path, tern_status *st)
{
    FILE *f = fopen(path, "rb");
    if (!f) return tern_status_set(st, TERN_EIO, "vocab: %s: cannot open", path);
    size_t cap = 1 << 17, n = 0;
    rtok *toks = calloc(cap, sizeof *toks);
    char line[4096];
    tern_code rc = TERN_OK;
    long lineno = 0;
    while (toks && fgets(line, sizeof line, f)) {
        lineno++;
        char *sp = strchr(line, ' ');
        if (!sp) {
            if (line[0] == '\n' || line[0] == 0) continue;
            rc = tern_status_set(st, TERN_EFORMAT,
                                 "vocab: %s:%ld: got no 'base64 rank' pair, expected one", path,
                                 lineno);
            break;
        }
        long rank = strtol(sp + 1, NULL, 10);
        if (rank != (long)n) {
            rc = tern_status_set(st, TERN_EFORMAT,
                                 "vocab: %s:%ld: rank: got %ld, expected %zu (consecutive)", path,
                                 lineno, rank, n);
            break;
        }
        size_t el = (size_t)(sp - line);
        unsigned char *b = malloc(el * 3 / 4 + 4);
        size_t bl = 0;
        uint32_t acc = 0;
        int bits = 0;
        for (size_t i = 0; b && i < el; i++) {
            int v = b64v((unsigned char)line[i]);
            if (line[i] == '=') break;
            if (v < 0) {
                free(b);
                b = NULL;
                break;
            }
            acc = (acc << 6) | (uint32_t)v, bits += 6;
            if (bits >= 8) b[bl++] = (unsigned char)(acc >> (bits - 8)), bits -= 8;
        }
        if (!b || bl == 0) {
            free(b);
            rc = tern_status_set(st, TERN_EFORMAT,
                                 "vocab: %s:%ld: token: got invalid base64, expected base64 bytes",
                                 path, lineno);
            break;
        }
        if (n == cap) {
            rtok *nt = realloc(toks, 2 * cap * sizeof *nt);
            if (!nt) break;
            toks = nt, cap *= 2;
        }
        toks[n++] = (rtok){b, (uint32_t)bl};
    }
    fclose(f);
    if (!toks) return tern_status_set(st, TERN_ENOMEM, "vocab: out of memory");
    if (!rc && n == 0)
        rc = tern_status_set(st, TERN_EFORMAT, "vocab: %s: got 0 tokens, expected ranked tokens",
                             path);
    size_t mask = 1;
    while (mask < 2 * n + 16) mask <<= 1;
    mask--;
    bmap *m = NULL;
    merge *merges = NULL;
    size_t n_merges = 0, cap_merges = 0;
    char **strs = NULL;
    uint64_t *lens = NULL;
    char *text = NULL;
    int32_t *types = NULL;
    float *scores = NULL;
    if (rc) goto done;
    m = malloc((mask + 1) * sizeof *m);
    if (!m) goto oom;
    for (size_t i = 0; i <= mask; i++) m[i].rank = -1;
    for (size_t r = 0; r < n; r++) {
        uint64_t h = hbytes(toks[r].b, toks[r].len);
        size_t i = (size_t)h & mask;
        while (m[i].rank >= 0) i = (i + 1) & mask;
        m[i] = (bmap){h, (int32_t)r};
    }
    for (size_t r = 0; r < n; r++) {
        for (uint32_t k = 1; k < toks[r].len; k++) {
            int32_t l = find(m, mask, toks, toks[r].b, k),
                    rr = find(m, mask, toks, toks[r].b + k, toks[r].len - k);
            if (l < 0 || rr < 0) continue;
            if (n_merges == cap_merges) {
                cap_merges = cap_merges ? 2 * cap_merges : 1 << 16;
                merge *nm = realloc(merges, cap_merges * sizeof *nm);
                if (!nm) goto oom;
                merges = nm;
            }
            merges[n_merges++] = (merge){(int32_t)r, l, rr};
        }
    }
    qsort(merges, n_merges, sizeof *merges, cmp_merge);
    /* texts: tokens then specials then merges, in one buffer */
    char u8[256][3];
    uint8_t u8len[256];
    tern_gpt2_byte_maps(u8, u8len, NULL);
    size_t total = 0;
    for (size_t r = 0; r < n; r++) total += 2 * (size_t)toks[r].len + 1;
    for (size_t i = 0; i < n_merges; i++)
        total += 2 * ((size_t)toks[merges[i].l].len + toks[merges[i].r].len) + 2;
    total += N_SPECIAL * 40;
    size_t n_tok = n + N_SPECIAL;
    text = malloc(total);
    strs = malloc((n_tok > n_merges ? n_tok : n_merges) * sizeof *strs);
    lens = malloc((n_tok > n_merges ? n_tok : n_merges) * sizeof *lens);
    types = malloc(n_tok * sizeof *types);
    scores = calloc(n_tok, sizeof *scores);
    if (!text || !strs || !lens || !types || !scores) goto oom;
    char *tp = text;
    for (size_t r = 0; r < n; r++) {
        strs[r] = tp;
        lens[r] = mapped(toks[r].b, toks[r].len, tp, (const char(*)[3])u8, u8len);
        tp += lens[r];
        types[r] = 1;
        scores[r] = -(float)r;
    }
    static const char *const named[10] = {"<|begin_of_text|>",
                                          "<|end_of_text|>",
                                          "<|reserved_special_token_0|>",
                                          "<|reserved_special_token_1|>",
                                          "<|reserved_special_token_2|>",
                                          "<|reserved_special_token_3|>",
                                          "<|start_header_id|>",
                                          "<|end_header_id|>",
                                          "<|reserved_special_token_4|>",
                                          "<|eot_id|>"};
    for (int k = 0; k < N_SPECIAL; k++) {
        int len = k < 10 ? snprintf(tp, 40, "%s", named[k])
                         : snprintf(tp, 40, "<|reserved_special_token_%d|>", k - 5);
        strs[n + (size_t)k] = tp;
        lens[n + (size_t)k] = (uint64_t)len;
        tp += len;
        types[n + (size_t)k] = 3; /* CONTROL */
        scores[n + (size_t)k] = 0;
    }
    tern_gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2");
    tern_gguf_writer_add_str(w, "tokenizer.ggml.pre", "llama-bpe");
    tern_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)strs, lens,
                                 n_tok);
    tern_gguf_writer_add_arr(w, "tokenizer.ggml.scores", TERN_GGUF_FLOAT32, scores, n_tok);
    tern_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", TERN_GGUF_INT32, types, n_tok);
    for (size_t i = 0; i < n_merges; i++) {
        const rtok *l = &toks[merges[i].l], *r = &toks[merges[i].r];
        strs[i] = tp;
        size_t a = mapped(l->b, l->len, tp, (const char(*)[3])u8, u8len);
        tp[a] = ' ';
        size_t b = mapped(r->b, r->len, tp + a + 1, (const char(*)[3])u8, u8len);
        lens[i] = a + 1 + b;
        tp += lens[i];
    }
    tern_gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", (const char *const *)strs, lens,
                                 n_merges);
    tern_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)n);
    tern_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)n + 1);
    tern_gguf_writer_add_u32(w, "tokenizer.ggml.eot_token_id", (uint32_t)n + 9);
    if (tern_gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", true)) goto oom;
    goto done;
oom:
    rc = tern_status_set(st, TERN_ENOMEM, "vocab: out of memory");
done:
    for (size_t r = 0; r < n; r++) free(toks[r].b);
    free(toks), free(m), free(merges), free(strs), free(lens), free(text), free(types),
        free(scores);
    return rc;
}
