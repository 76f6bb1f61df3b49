/* tokenizer.c: byte-level BPE (spec 4.2-4.5).
 *
 * Load builds: the GPT-2 byte<->unicode maps, a hash from token text to id, a hash from an
 * id pair to (merge rank, merged id), each token's raw bytes, and the special-token list.
 * Encode: optional special-token split, then the pre-tokenizer regex (PCRE2, UTF+UCP, JIT;
 * invalid UTF-8 is matched around, and unmatched bytes become pre-tokens of their own), then
 * per pre-token: ignore_merges lookup, else lowest-rank-then-leftmost merging with a heap
 * (O(n log n) even for pathological runs).
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "ternpipe/tokenizer.h"
#include "text/text-internal.h"

#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOKEN_TYPE_CONTROL 3
#define TOKEN_TYPE_USER_DEFINED 4

static const char *const RE_LLAMA3 =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char *const RE_GPT2 =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

typedef struct tok_entry { /* text -> id; length and text inline: one cache miss per probe */
    uint64_t hash;
    const char *text;
    uint32_t len;
    int32_t id; /* -1 empty */
} tok_entry;

typedef struct merge_entry { /* (left, right) -> rank, merged */
    uint64_t key;
    int32_t rank, merged; /* rank -1: empty */
} merge_entry;

typedef struct special {
    const char *text;
    size_t len;
    int32_t id;
} special;

struct tern_tokenizer {
    int32_t n_vocab;
    const char **text; /* token text (mapped alphabet), pointers into `arena` */
    uint32_t *text_len;
    const char **bytes; /* raw bytes */
    uint32_t *bytes_len;
    char *arena;
    tok_entry *tokmap;
    size_t tokmap_mask;
    merge_entry *merges;
    size_t merges_mask;
    int32_t byte_token[256];
    char byte_utf8[256][3]; /* mapped char of each byte, UTF-8 */
    uint8_t byte_utf8_len[256];
    special *specials; /* longest first */
    int32_t n_specials;
    int32_t bos, eos, eot;
    bool add_bos, ignore_merges;
    char pre[32];
    pcre2_code *re;
    bool jit;          /* JIT compiled: match with pcre2_jit_match (no per-call option checks) */
    tern_spm_tok *spm; /* SentencePiece: encode, bytes and ids come from it (spm.c) */
    bool spm_dummy_prefix;
};

/* ---- GPT-2 bytes_to_unicode (spec 4.3) ---- */
static uint32_t byte_to_cp(int b)
{
    if ((b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff))
        return (uint32_t)b;
    int n = 0;
    for (int x = 0; x < b; x++)
        if (!((x >= 0x21 && x <= 0x7e) || (x >= 0xa1 && x <= 0xac) || (x >= 0xae && x <= 0xff)))
            n++;
    return 256u + (uint32_t)n;
}

static int utf8_put(uint32_t cp, char *o)
{
    if (cp < 0x80) return o[0] = (char)cp, 1;
    if (cp < 0x800) return o[0] = (char)(0xc0 | (cp >> 6)), o[1] = (char)(0x80 | (cp & 0x3f)), 2;
    o[0] = (char)(0xe0 | (cp >> 12)), o[1] = (char)(0x80 | ((cp >> 6) & 0x3f)),
    o[2] = (char)(0x80 | (cp & 0x3f));
    return 3;
}

void tern_gpt2_byte_maps(char utf8[256][3], uint8_t len[256], int16_t *cp_to_byte)
{
    for (int i = 0; cp_to_byte && i < 512; i++) cp_to_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        uint32_t cp = byte_to_cp(b);
        len[b] = (uint8_t)utf8_put(cp, utf8[b]);
        if (cp_to_byte) cp_to_byte[cp] = (int16_t)b;
    }
}

static uint64_t mix64(uint64_t x);

/* FNV-1a, then a full 64-bit mix: FNV's low bits alone (the table index) cluster badly */
static uint64_t fnv(const void *p, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ULL;
    return mix64(h) | 1; /* never 0 */
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static int32_t tok_lookup(const tern_tokenizer *t, const char *s, size_t n)
{
    uint64_t h = fnv(s, n);
    for (size_t i = (size_t)h & t->tokmap_mask;; i = (i + 1) & t->tokmap_mask) {
        const tok_entry *e = &t->tokmap[i];
        if (e->id < 0) return -1;
        if (e->hash == h && e->len == n && !memcmp(e->text, s, n)) return e->id;
    }
}

static void tok_insert(tern_tokenizer *t, int32_t id)
{
    uint64_t h = fnv(t->text[id], t->text_len[id]);
    for (size_t i = (size_t)h & t->tokmap_mask;; i = (i + 1) & t->tokmap_mask) {
        tok_entry *e = &t->tokmap[i];
        if (e->id < 0) {
            *e = (tok_entry){h, t->text[id], t->text_len[id], id};
            return;
        }
        /* duplicates keep the first id (as llama.cpp does) */
        if (e->hash == h && t->text_len[e->id] == t->text_len[id] &&
            !memcmp(t->text[e->id], t->text[id], t->text_len[id]))
            return;
    }
}

static const merge_entry *merge_lookup(const tern_tokenizer *t, int32_t a, int32_t b)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (size_t i = (size_t)mix64(key) & t->merges_mask;; i = (i + 1) & t->merges_mask) {
        const merge_entry *e = &t->merges[i];
        if (e->rank < 0) return NULL;
        if (e->key == key) return e;
    }
}

static size_t pow2_at_least(size_t n)
{
    size_t p = 16;
    while (p < n) p <<= 1;
    return p;
}

static tern_code tok_err(tern_status *st, const tern_gguf *g, const char *what)
{
    return tern_status_set(st, TERN_EFORMAT, "tokenizer: %s: %s", tern_gguf_path(g), what);
}

tern_code tern_tokens_push(tern_tokens *t, int32_t id)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 64;
        int32_t *p = realloc(t->ids, cap * sizeof *p);
        if (!p) return TERN_ENOMEM;
        t->ids = p;
        t->cap = cap;
    }
    t->ids[t->n++] = id;
    return TERN_OK;
}

void tern_tokens_free(tern_tokens *t)
{
    free(t->ids);
    t->ids = NULL;
    t->n = t->cap = 0;
}

static int cmp_special(const void *a, const void *b)
{
    const special *x = a, *y = b;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return x->id - y->id;
}

tern_code tern_tokenizer_load(tern_tokenizer **out, const tern_gguf *g, tern_status *st)
{
    *out = NULL;
    tern_gguf_str model;
    tern_code rc = tern_gguf_get_str(g, "tokenizer.ggml.model", &model, st);
    if (rc) return rc;
    if (tern_gguf_str_eq(model, "llama")) return tern_spm_load_gguf(out, g, st);
    if (!tern_gguf_str_eq(model, "gpt2"))
        return tern_status_set(st, TERN_EUNSUPPORTED,
                               "tokenizer: %s: tokenizer.ggml.model: got '%.*s', expected 'gpt2' "
                               "or 'llama'",
                               tern_gguf_path(g), (int)(model.len > 32 ? 32 : model.len),
                               model.ptr);
    const tern_gguf_value *tokens, *merges;
    if ((rc = tern_gguf_get_arr(g, "tokenizer.ggml.tokens", TERN_GGUF_STRING, &tokens, st)) ||
        (rc = tern_gguf_get_arr(g, "tokenizer.ggml.merges", TERN_GGUF_STRING, &merges, st)))
        return rc;
    uint64_t n = tokens->v.arr.n;
    if (n == 0 || n > (1u << 24))
        return tok_err(st, g, "token count: got 0 or more than 2^24, expected 1..16777216");
    tern_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return tern_status_set(st, TERN_ENOMEM, "tokenizer: out of memory");
    t->n_vocab = (int32_t)n;
    int16_t cp_to_byte[512];
    tern_gpt2_byte_maps(t->byte_utf8, t->byte_utf8_len, cp_to_byte);
    size_t text_total = 0;
    for (uint64_t i = 0; i < n; i++) text_total += tokens->v.arr.items[i].v.str.len;
    t->text = calloc(n, sizeof *t->text);
    t->text_len = calloc(n, sizeof *t->text_len);
    t->bytes = calloc(n, sizeof *t->bytes);
    t->bytes_len = calloc(n, sizeof *t->bytes_len);
    t->arena = malloc(2 * text_total + 16);
    t->tokmap_mask = pow2_at_least(2 * n) - 1;
    t->tokmap = malloc((t->tokmap_mask + 1) * sizeof *t->tokmap);
    if (!t->text || !t->text_len || !t->bytes || !t->bytes_len || !t->arena || !t->tokmap) {
        rc = tern_status_set(st, TERN_ENOMEM, "tokenizer: out of memory");
        goto fail;
    }
    for (size_t i = 0; i <= t->tokmap_mask; i++) t->tokmap[i].id = -1;
    const tern_gguf_value *types = NULL;
    if (tern_gguf_find(g, "tokenizer.ggml.token_type") &&
        (rc = tern_gguf_get_arr(g, "tokenizer.ggml.token_type", TERN_GGUF_INT32, &types, st)))
        goto fail;
    if (types && types->v.arr.n != n) {
        rc = tok_err(st, g, "token_type count differs from the token count");
        goto fail;
    }
    char *ap = t->arena;
    int32_t n_special = 0;
    for (uint64_t i = 0; i < n; i++) {
        tern_gguf_str s = tokens->v.arr.items[i].v.str;
        if (s.len > 65536) {
            rc = tok_err(st, g, "token length: got more than 65536 bytes, expected less");
            goto fail;
        }
        memcpy(ap, s.ptr, (size_t)s.len);
        t->text[i] = ap;
        t->text_len[i] = (uint32_t)s.len;
        ap += s.len;
        int32_t type = types ? (int32_t)tern_gguf_arr_int(types, i) : 1;
        bool is_special = type == TOKEN_TYPE_CONTROL || type == TOKEN_TYPE_USER_DEFINED;
        n_special += is_special;
        /* raw bytes: reverse the byte mapping; special tokens are their own text */
        char *bp = ap;
        const unsigned char *p = (const unsigned char *)s.ptr, *e = p + s.len;
        bool mapped = !is_special;
        while (mapped && p < e) {
            uint32_t cp;
            int k;
            if (p[0] < 0x80)
                cp = p[0], k = 1;
            else if ((p[0] & 0xe0) == 0xc0 && p + 1 < e)
                cp = ((uint32_t)(p[0] & 0x1f) << 6) | (p[1] & 0x3f), k = 2;
            else if ((p[0] & 0xf0) == 0xe0 && p + 2 < e)
                cp = ((uint32_t)(p[0] & 0x0f) << 12) | ((uint32_t)(p[1] & 0x3f) << 6) |
                     (p[2] & 0x3f),
                k = 3;
            else {
                mapped = false;
                break;
            }
            if (cp >= 512 || cp_to_byte[cp] < 0) {
                mapped = false;
                break;
            }
            *bp++ = (char)cp_to_byte[cp];
            p += k;
        }
        if (!mapped) { /* not in the byte alphabet: keep the text as it is */
            memcpy(ap, s.ptr, (size_t)s.len);
            bp = ap + s.len;
        }
        t->bytes[i] = ap;
        t->bytes_len[i] = (uint32_t)(bp - ap);
        ap = bp;
        tok_insert(t, (int32_t)i);
    }
    for (int b = 0; b < 256; b++)
        t->byte_token[b] = tok_lookup(t, t->byte_utf8[b], t->byte_utf8_len[b]);
    /* specials, longest first for greedy matching */
    t->specials = calloc((size_t)n_special + 1, sizeof *t->specials);
    if (!t->specials) {
        rc = tern_status_set(st, TERN_ENOMEM, "tokenizer: out of memory");
        goto fail;
    }
    for (uint64_t i = 0; i < n && types; i++) {
        int32_t type = (int32_t)tern_gguf_arr_int(types, i);
        if ((type == TOKEN_TYPE_CONTROL || type == TOKEN_TYPE_USER_DEFINED) && t->text_len[i] > 0)
            t->specials[t->n_specials++] = (special){t->text[i], t->text_len[i], (int32_t)i};
    }
    qsort(t->specials, (size_t)t->n_specials, sizeof *t->specials, cmp_special);
    /* merges: "left right" in rank order */
    uint64_t nm = merges->v.arr.n;
    t->merges_mask = pow2_at_least(2 * nm + 16) - 1;
    t->merges = malloc((t->merges_mask + 1) * sizeof *t->merges);
    if (!t->merges) {
        rc = tern_status_set(st, TERN_ENOMEM, "tokenizer: out of memory");
        goto fail;
    }
    for (size_t i = 0; i <= t->merges_mask; i++) t->merges[i].rank = -1;
    char *buf = malloc(2 * 65536 + 2);
    if (!buf) {
        rc = tern_status_set(st, TERN_ENOMEM, "tokenizer: out of memory");
        goto fail;
    }
    for (uint64_t r = 0; r < nm; r++) {
        tern_gguf_str m = merges->v.arr.items[r].v.str;
        const char *sp = m.len ? memchr(m.ptr + 1, ' ', (size_t)m.len - 1) : NULL;
        if (!sp || m.len > 2 * 65536) {
            free(buf);
            rc =
                tern_status_set(st, TERN_EFORMAT,
                                "tokenizer: %s: merge %llu: got no 'left right' pair, expected one",
                                tern_gguf_path(g), (unsigned long long)r);
            goto fail;
        }
        size_t ll = (size_t)(sp - m.ptr), rl = (size_t)m.len - ll - 1;
        int32_t a = tok_lookup(t, m.ptr, ll), b = tok_lookup(t, sp + 1, rl);
        memcpy(buf, m.ptr, ll);
        memcpy(buf + ll, sp + 1, rl);
        int32_t c = tok_lookup(t, buf, ll + rl);
        if (a < 0 || b < 0 || c < 0) continue; /* merges of tokens not in the vocab never apply */
        uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
        for (size_t i = (size_t)mix64(key) & t->merges_mask;; i = (i + 1) & t->merges_mask) {
            merge_entry *e = &t->merges[i];
            if (e->rank < 0) {
                *e = (merge_entry){key, (int32_t)r, c};
                break;
            }
            if (e->key == key) break; /* the lowest rank wins */
        }
    }
    free(buf);
    /* ids and flags */
    uint32_t v;
    t->bos = tern_gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &v, NULL) ? -1 : (int32_t)v;
    t->eos = tern_gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &v, NULL) ? -1 : (int32_t)v;
    t->eot = tern_gguf_get_u32(g, "tokenizer.ggml.eot_token_id", &v, NULL) ? -1 : (int32_t)v;
    if (t->eot < 0) t->eot = tok_lookup(t, "<|eot_id|>", 10);
    if (t->bos >= t->n_vocab || t->eos >= t->n_vocab || t->eot >= t->n_vocab) {
        rc = tok_err(
            st, g, "bos/eos/eot id: got one outside the vocab, expected ids below the token count");
        goto fail;
    }
    t->add_bos = true;
    bool ab;
    if (!tern_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &ab, NULL)) t->add_bos = ab;
    /* pre-tokenizer: the key, else Llama-3 rules for BitNet files (the official file lacks
     * the key; llama.cpp's "default" fallback there is a known bug, spec 4.2) */
    tern_gguf_str pre = {"", 0}, arch = {"", 0};
    bool has_pre = !tern_gguf_get_str(g, "tokenizer.ggml.pre", &pre, NULL);
    tern_gguf_get_str(g, "general.architecture", &arch, NULL);
    const char *re;
    if (has_pre && (tern_gguf_str_eq(pre, "llama-bpe") || tern_gguf_str_eq(pre, "llama3") ||
                    tern_gguf_str_eq(pre, "llama-v3"))) {
        re = RE_LLAMA3, t->ignore_merges = true;
        snprintf(t->pre, sizeof t->pre, "%.*s", (int)pre.len, pre.ptr);
    } else if (has_pre && (tern_gguf_str_eq(pre, "gpt-2") || tern_gguf_str_eq(pre, "gpt2"))) {
        re = RE_GPT2;
        snprintf(t->pre, sizeof t->pre, "gpt-2");
    } else if (!has_pre &&
               (tern_gguf_str_eq(arch, "bitnet-b1.58") || tern_gguf_str_eq(arch, "bitnet-25"))) {
        re = RE_LLAMA3, t->ignore_merges = true;
        snprintf(t->pre, sizeof t->pre, "llama-bpe (bitnet default)");
    } else if (!has_pre) {
        re = RE_GPT2;
        snprintf(t->pre, sizeof t->pre, "gpt-2 (default)");
    } else {
        rc = tern_status_set(
            st, TERN_EUNSUPPORTED,
            "tokenizer: %s: tokenizer.ggml.pre: got '%.*s', expected llama-bpe, llama3 or gpt-2",
            tern_gguf_path(g), (int)(pre.len > 32 ? 32 : pre.len), pre.ptr);
        goto fail;
    }
    int err;
    PCRE2_SIZE off;
    t->re = pcre2_compile((PCRE2_SPTR)re, PCRE2_ZERO_TERMINATED,
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &off, NULL);
    if (!t->re) {
        rc = tern_status_set(st, TERN_EINVAL,
                             "tokenizer: pre-tokenizer regex: PCRE2 error %d at %zu", err,
                             (size_t)off);
        goto fail;
    }
    /* optional speed-up; the interpreter is exact too */
    t->jit = pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE) == 0;
    *out = t;
    return TERN_OK;
fail:
    tern_tokenizer_free(t);
    return rc;
}

tern_code tern_tokenizer_wrap_spm(tern_tokenizer **out, tern_spm_tok *spm, int32_t n_vocab,
                                  int32_t bos, int32_t eos, bool add_bos, bool dummy_prefix,
                                  const char *pre, tern_status *st)
{
    *out = NULL;
    tern_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        tern_spm_tok_free(spm);
        return tern_status_set(st, TERN_ENOMEM, "tokenizer: out of memory");
    }
    t->spm = spm;
    t->n_vocab = n_vocab;
    t->bos = bos, t->eos = eos, t->eot = -1;
    t->add_bos = add_bos;
    t->spm_dummy_prefix = dummy_prefix;
    snprintf(t->pre, sizeof t->pre, "%s", pre);
    *out = t;
    return TERN_OK;
}

void tern_tokenizer_free(tern_tokenizer *t)
{
    if (!t) return;
    tern_spm_tok_free(t->spm);
    free(t->text), free(t->text_len), free(t->bytes), free(t->bytes_len), free(t->arena);
    free(t->tokmap), free(t->merges), free(t->specials);
    if (t->re) pcre2_code_free(t->re);
    free(t);
}

int32_t tern_tokenizer_n_vocab(const tern_tokenizer *t)
{
    return t->n_vocab;
}
int32_t tern_tokenizer_bos(const tern_tokenizer *t)
{
    return t->bos;
}
int32_t tern_tokenizer_eos(const tern_tokenizer *t)
{
    return t->eos;
}
int32_t tern_tokenizer_eot(const tern_tokenizer *t)
{
    return t->eot;
}
bool tern_tokenizer_add_bos(const tern_tokenizer *t)
{
    return t->add_bos;
}
const char *tern_tokenizer_pre_name(const tern_tokenizer *t)
{
    return t->pre;
}
bool tern_tokenizer_is_stop(const tern_tokenizer *t, int32_t id)
{
    return id >= 0 && (id == t->eos || id == t->eot);
}

bool tern_tokenizer_is_special(const tern_tokenizer *t, int32_t id)
{
    if (id < 0 || id >= t->n_vocab) return false;
    if (id == t->bos || id == t->eos || id == t->eot) return true;
    for (int32_t i = 0; i < t->n_specials; i++)
        if (t->specials[i].id == id) return true;
    return false;
}

const char *tern_tokenizer_token_bytes(const tern_tokenizer *t, int32_t id, size_t *len)
{
    if (id < 0 || id >= t->n_vocab) {
        *len = 0;
        return NULL;
    }
    if (t->spm) return tern_spm_tok_bytes(t->spm, id, len);
    *len = t->bytes_len[id];
    return t->bytes[id];
}

size_t tern_tokenizer_decode(const tern_tokenizer *t, const int32_t *ids, size_t n, char *out,
                             size_t cap)
{
    size_t m = 0;
    bool first = true;
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const char *b = tern_tokenizer_token_bytes(t, ids[i], &len);
        /* the dummy prefix: the first text piece's leading space is not part of the text */
        bool text = len > 0; /* CONTROL pieces (BOS) decode to nothing and do not count */
        if (t->spm && t->spm_dummy_prefix && first && len && b[0] == ' ') b++, len--;
        if (text) first = false;
        if (len > cap - m) len = cap - m;
        if (len) memcpy(out + m, b, len);
        m += len;
    }
    return m;
}

/* ---- BPE of one pre-token ---- */

typedef struct sym {
    int32_t id;
    int32_t prev, next; /* -1 ends */
} sym;

typedef struct cand {
    int32_t rank, left; /* merge rank, index of the left symbol */
    int32_t lid, rid;   /* ids when queued: stale if they changed */
} cand;

typedef struct scratch {
    sym *syms;
    cand *heap;
    char *mapped;
    size_t cap; /* bytes of the pre-token this scratch holds */
} scratch;

static bool cand_less(const cand *a, const cand *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static void heap_push(cand *h, size_t *n, cand c)
{
    size_t i = (*n)++;
    h[i] = c;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&h[i], &h[p])) break;
        cand tmp = h[i];
        h[i] = h[p], h[p] = tmp;
        i = p;
    }
}

static cand heap_pop(cand *h, size_t *n)
{
    cand top = h[0];
    h[0] = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < *n && cand_less(&h[l], &h[m])) m = l;
        if (r < *n && cand_less(&h[r], &h[m])) m = r;
        if (m == i) break;
        cand tmp = h[i];
        h[i] = h[m], h[m] = tmp;
        i = m;
    }
    return top;
}

static tern_code scratch_fit(scratch *s, size_t n)
{
    if (n <= s->cap) return TERN_OK;
    size_t cap = n < 256 ? 256 : n;
    sym *sy = realloc(s->syms, cap * sizeof *sy);
    if (sy) s->syms = sy;
    cand *h = realloc(s->heap, 2 * cap * sizeof *h);
    if (h) s->heap = h;
    char *m = realloc(s->mapped, 3 * cap);
    if (m) s->mapped = m;
    if (!sy || !h || !m) return TERN_ENOMEM;
    s->cap = cap;
    return TERN_OK;
}

static void try_queue(const tern_tokenizer *t, scratch *s, size_t *hn, int32_t left)
{
    int32_t right = s->syms[left].next;
    if (right < 0) return;
    const merge_entry *m = merge_lookup(t, s->syms[left].id, s->syms[right].id);
    if (m) heap_push(s->heap, hn, (cand){m->rank, left, s->syms[left].id, s->syms[right].id});
}

static tern_code bpe(const tern_tokenizer *t, const unsigned char *p, size_t n, scratch *s,
                     tern_tokens *out, tern_status *st)
{
    if (scratch_fit(s, n)) return tern_status_set(st, TERN_ENOMEM, "tokenizer: out of memory");
    if (t->ignore_merges) {
        size_t m = 0;
        for (size_t i = 0; i < n; i++) {
            memcpy(s->mapped + m, t->byte_utf8[p[i]], t->byte_utf8_len[p[i]]);
            m += t->byte_utf8_len[p[i]];
        }
        int32_t id = tok_lookup(t, s->mapped, m);
        if (id >= 0)
            return tern_tokens_push(out, id)
                       ? tern_status_set(st, TERN_ENOMEM, "tokenizer: out of memory")
                       : TERN_OK;
    }
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_token[p[i]];
        if (id < 0)
            return tern_status_set(
                st, TERN_EUNSUPPORTED,
                "tokenizer: byte 0x%02x: got no token for it, expected a byte-level vocab", p[i]);
        s->syms[i] = (sym){id, (int32_t)i - 1, i + 1 < n ? (int32_t)i + 1 : -1};
    }
    size_t hn = 0;
    for (size_t i = 0; i + 1 < n; i++) try_queue(t, s, &hn, (int32_t)i);
    while (hn > 0) {
        cand c = heap_pop(s->heap, &hn);
        sym *l = &s->syms[c.left];
        if (l->id != c.lid || l->next < 0 || s->syms[l->next].id != c.rid) continue; /* stale */
        const merge_entry *m = merge_lookup(t, c.lid, c.rid);
        int32_t r = l->next;
        l->id = m->merged;
        l->next = s->syms[r].next;
        if (l->next >= 0) s->syms[l->next].prev = c.left;
        s->syms[r].id = -1; /* dead */
        if (l->prev >= 0) try_queue(t, s, &hn, l->prev);
        try_queue(t, s, &hn, c.left);
    }
    for (int32_t i = 0; i >= 0; i = s->syms[i].next)
        if (tern_tokens_push(out, s->syms[i].id))
            return tern_status_set(st, TERN_ENOMEM, "tokenizer: out of memory");
    return TERN_OK;
}

/* pre-tokenize text (no specials) and BPE every piece; unmatched bytes (invalid UTF-8) form
 * pieces of their own */
static tern_code encode_plain(const tern_tokenizer *t, const char *text, size_t len, scratch *s,
                              pcre2_match_data *md, tern_tokens *out, tern_status *st)
{
    size_t pos = 0;
    while (pos < len) {
        int rc = t->jit ? pcre2_jit_match(t->re, (PCRE2_SPTR)text, len, pos, 0, md, NULL)
                        : pcre2_match(t->re, (PCRE2_SPTR)text, len, pos, 0, md, NULL);
        size_t ms = len, me = len;
        if (rc >= 0) {
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            ms = ov[0], me = ov[1];
            if (me == ms) me = ms + 1 <= len ? ms + 1 : len; /* never loop on empty matches */
        } else if (rc != PCRE2_ERROR_NOMATCH) {
            return tern_status_set(st, TERN_EINVAL,
                                   "tokenizer: regex match failed (PCRE2 error %d)", rc);
        }
        tern_code e;
        if (ms > pos && (e = bpe(t, (const unsigned char *)text + pos, ms - pos, s, out, st)))
            return e;
        if (me > ms && (e = bpe(t, (const unsigned char *)text + ms, me - ms, s, out, st)))
            return e;
        pos = me;
    }
    return TERN_OK;
}

tern_code tern_tokenizer_encode(const tern_tokenizer *t, const char *text, size_t len,
                                unsigned flags, tern_tokens *out, tern_status *st)
{
    if ((flags & TERN_TOK_ADD_BOS) && t->bos >= 0 && tern_tokens_push(out, t->bos))
        return tern_status_set(st, TERN_ENOMEM, "tokenizer: out of memory");
    if (t->spm) return tern_spm_tok_encode(t->spm, text, len, flags, out, st);
    scratch s = {0};
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(t->re, NULL);
    if (!md) return tern_status_set(st, TERN_ENOMEM, "tokenizer: out of memory");
    tern_code rc = TERN_OK;
    size_t start = 0;
    if (flags & TERN_TOK_PARSE_SPECIAL) {
        for (size_t i = 0; i < len && !rc;) {
            const special *hit = NULL;
            for (int32_t k = 0; k < t->n_specials && !hit; k++) {
                const special *sp = &t->specials[k];
                if (sp->len <= len - i && sp->text[0] == text[i] &&
                    !memcmp(sp->text, text + i, sp->len))
                    hit = sp;
            }
            if (!hit) {
                i++;
                continue;
            }
            if (i > start) rc = encode_plain(t, text + start, i - start, &s, md, out, st);
            if (!rc && tern_tokens_push(out, hit->id))
                rc = tern_status_set(st, TERN_ENOMEM, "tokenizer: out of memory");
            i += hit->len;
            start = i;
        }
    }
    if (!rc && start < len) rc = encode_plain(t, text + start, len - start, &s, md, out, st);
    pcre2_match_data_free(md);
    free(s.syms), free(s.heap), free(s.mapped);
    return rc;
}

/* ---- streaming decode ---- */

/* length of the trailing incomplete UTF-8 sequence of p[0..n) (0 when complete/invalid) */
static size_t incomplete_tail(const unsigned char *p, size_t n)
{
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        unsigned char c = p[n - back];
        if ((c & 0xc0) == 0x80) continue; /* continuation: look further back */
        size_t need = (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 1;
        return need > back ? back : 0;
    }
    return 0;
}

size_t tern_detok_push(const tern_tokenizer *t, tern_detok *d, int32_t id, char *out, size_t cap)
{
    size_t len;
    const char *b = tern_tokenizer_token_bytes(t, id, &len);
    size_t n = 0;
    if (d->n_pending + len > cap) len = cap > d->n_pending ? cap - d->n_pending : 0;
    memcpy(out, d->pending, d->n_pending);
    n = d->n_pending;
    if (len) memcpy(out + n, b, len);
    n += len;
    size_t hold = incomplete_tail((const unsigned char *)out, n);
    memcpy(d->pending, out + n - hold, hold);
    d->n_pending = hold;
    return n - hold;
}

size_t tern_detok_flush(tern_detok *d, char *out, size_t cap)
{
    size_t n = d->n_pending < cap ? d->n_pending : cap;
    memcpy(out, d->pending, n);
    d->n_pending = 0;
    return n;
}

/* ---- chat format (spec 4.6) ---- */

bool tern_tokenizer_has_chat(const tern_tokenizer *t)
{
    /* the BitNet chat format belongs to the Llama-3 style byte-level BPE vocabularies (2B-4T and
     * the default model); a SentencePiece base model (1bitLLM) has no chat template, and none
     * is made up for it */
    return t->spm == NULL;
}

tern_code tern_chat_encode(const tern_tokenizer *t, const tern_chat_msg *msgs, size_t n,
                           bool add_generation_prompt, tern_tokens *out, tern_status *st)
{
    if (!tern_tokenizer_has_chat(t))
        return tern_status_set(st, TERN_EUNSUPPORTED,
                               "chat: this model has no chat template (a base model), expected "
                               "plain completions (/v1/completions)");
    if (t->bos >= 0 && tern_tokens_push(out, t->bos))
        return tern_status_set(st, TERN_ENOMEM, "tokenizer: out of memory");
    for (size_t i = 0; i < n; i++) {
        const char *role = msgs[i].role, *hdr;
        if (!strcmp(role, "system"))
            hdr = "System: ";
        else if (!strcmp(role, "user"))
            hdr = "User: ";
        else if (!strcmp(role, "assistant"))
            hdr = "Assistant: ";
        else
            return tern_status_set(
                st, TERN_EINVAL,
                "chat: message %zu role: got '%.32s', expected system, user or assistant", i, role);
        const char *c = msgs[i].content ? msgs[i].content : "";
        size_t len = strlen(c);
        while (len && (c[0] == ' ' || c[0] == '\t' || c[0] == '\n' || c[0] == '\r')) c++, len--;
        while (len && (c[len - 1] == ' ' || c[len - 1] == '\t' || c[len - 1] == '\n' ||
                       c[len - 1] == '\r'))
            len--;
        /* header and content as one string, as the HF template renders it: "User: How" gives
         * ... 25 2650 (":", " How"), not ChatFormat's separate ... 25 220 4438 */
        size_t hl = strlen(hdr);
        char *msg = malloc(hl + len + 1);
        if (!msg) return tern_status_set(st, TERN_ENOMEM, "tokenizer: out of memory");
        memcpy(msg, hdr, hl);
        memcpy(msg + hl, c, len);
        tern_code rc = tern_tokenizer_encode(t, msg, hl + len, 0, out, st);
        free(msg);
        if (rc) return rc;
        int32_t end = t->eot >= 0 ? t->eot : t->eos;
        if (end >= 0 && tern_tokens_push(out, end))
            return tern_status_set(st, TERN_ENOMEM, "tokenizer: out of memory");
    }
    if (add_generation_prompt) return tern_tokenizer_encode(t, "Assistant: ", 11, 0, out, st);
    return TERN_OK;
}
