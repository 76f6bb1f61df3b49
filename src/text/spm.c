/* spm.c: SentencePiece BPE with byte fallback (spec 8.2), as sentencepiece's bpe_model.cc and
 * llama.cpp's llm_tokenizer_spm implement it.
 *
 * Encode one fragment: optional dummy-prefix space, every space -> U+2581, split into UTF-8
 * characters, then repeatedly merge the adjacent pair whose concatenation is a piece with the
 * highest score (ties: leftmost) using a max-heap with stale-entry checks (O(n log n)).
 * Remaining symbols are emitted as their piece; an UNUSED piece is split back into the two
 * symbols it was merged from; a character that is no piece becomes its UTF-8 bytes as
 * <0xNN> pieces (byte fallback), or <unk> without byte pieces.
 * Mergeable pieces are NORMAL, USER_DEFINED and UNUSED (sentencepiece's "normal" set);
 * CONTROL, UNKNOWN and BYTE pieces are never produced by merging text.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text/text-internal.h"

#define SPACE_UTF8 "\xe2\x96\x81"    /* U+2581 */
#define UNK_SURFACE " \xe2\x81\x87 " /* sentencepiece's default unk_surface */

typedef struct pmap {
    uint64_t h;
    int32_t id; /* -1: empty */
} pmap;

struct tern_spm_tok {
    int32_t n;
    const char **text;
    uint32_t *len;
    float *score;
    uint8_t *type;
    const char **bytes; /* decoded: U+2581 -> space, <0xNN> -> the byte */
    uint32_t *bytes_len;
    char *arena;
    pmap *map; /* mergeable pieces by text */
    size_t mask;
    int32_t byte_id[256];
    int32_t unk;
    bool byte_fallback, add_dummy_prefix, space_after_special;
    tern_spm_special *specials; /* longest first */
    int32_t n_specials;
};

static uint64_t hash(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 1099511628211ULL;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h;
}

static int32_t lookup(const tern_spm_tok *s, const char *p, size_t n)
{
    uint64_t h = hash(p, n);
    for (size_t i = (size_t)h & s->mask;; i = (i + 1) & s->mask) {
        const pmap *e = &s->map[i];
        if (e->id < 0) return -1;
        if (e->h == h && s->len[e->id] == n && !memcmp(s->text[e->id], p, n)) return e->id;
    }
}

static bool mergeable(uint8_t type)
{
    return type == TERN_SPM_NORMAL || type == TERN_SPM_USER_DEFINED || type == TERN_SPM_UNUSED;
}

static int hexv(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int cmp_special(const void *a, const void *b)
{
    const tern_spm_special *x = a, *y = b;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return x->id - y->id;
}

void tern_spm_tok_free(tern_spm_tok *s)
{
    if (!s) return;
    free(s->text), free(s->len), free(s->score), free(s->type), free(s->bytes);
    free(s->bytes_len), free(s->arena), free(s->map), free(s->specials);
    free(s);
}

tern_code tern_spm_tok_build(tern_spm_tok **out, const tern_spm_piece *pieces, int32_t n,
                             const tern_spm_opts *o, const char *name, tern_status *st)
{
    *out = NULL;
    if (n < 1 || n > (1 << 24))
        return tern_status_set(st, TERN_EFORMAT, "tokenizer: %s: pieces: got %d, expected 1..2^24",
                               name, n);
    tern_spm_tok *s = calloc(1, sizeof *s);
    if (!s) return tern_status_set(st, TERN_ENOMEM, "tokenizer: out of memory");
    tern_code rc = TERN_OK;
    size_t total = 0;
    for (int32_t i = 0; i < n; i++) total += 2 * (size_t)pieces[i].len + sizeof UNK_SURFACE;
    s->n = n;
    s->text = calloc((size_t)n, sizeof *s->text);
    s->len = calloc((size_t)n, sizeof *s->len);
    s->score = calloc((size_t)n, sizeof *s->score);
    s->type = calloc((size_t)n, sizeof *s->type);
    s->bytes = calloc((size_t)n, sizeof *s->bytes);
    s->bytes_len = calloc((size_t)n, sizeof *s->bytes_len);
    s->arena = malloc(total + 1);
    size_t cap = 16;
    while (cap < 2 * (size_t)n) cap <<= 1;
    s->mask = cap - 1;
    s->map = malloc(cap * sizeof *s->map);
    s->specials = calloc((size_t)n, sizeof *s->specials);
    if (!s->text || !s->len || !s->score || !s->type || !s->bytes || !s->bytes_len || !s->arena ||
        !s->map || !s->specials) {
        rc = tern_status_set(st, TERN_ENOMEM, "tokenizer: out of memory");
        goto fail;
    }
    for (size_t i = 0; i < cap; i++) s->map[i].id = -1;
    for (int b = 0; b < 256; b++) s->byte_id[b] = -1;
    s->unk = -1;
    char *ap = s->arena;
    bool have_bytes = false;
    for (int32_t i = 0; i < n; i++) {
        const tern_spm_piece *p = &pieces[i];
        if (p->len == 0 || p->len > 65536 || p->type < TERN_SPM_NORMAL ||
            p->type >= TERN_SPM_TYPE_COUNT) {
            rc = tern_status_set(st, TERN_EFORMAT,
                                 "tokenizer: %s: piece %d: got length %u type %d, expected "
                                 "length 1..65536 and type 1..6",
                                 name, i, p->len, (int)p->type);
            goto fail;
        }
        memcpy(ap, p->text, p->len);
        s->text[i] = ap, s->len[i] = p->len, ap += p->len;
        s->score[i] = p->score;
        s->type[i] = (uint8_t)p->type;
        char *bp = ap;
        if (p->type == TERN_SPM_BYTE) {
            int hi = p->len == 6 ? hexv(p->text[3]) : -1, lo = p->len == 6 ? hexv(p->text[4]) : -1;
            if (hi < 0 || lo < 0 || memcmp(p->text, "<0x", 3) || p->text[5] != '>') {
                char shown[24];
                snprintf(shown, sizeof shown, "%.*s", (int)(p->len > 16 ? 16 : p->len), p->text);
                rc = tern_status_set(st, TERN_EFORMAT,
                                     "tokenizer: %s: piece %d (BYTE): got '%s', expected <0xNN> "
                                     "(uppercase hex)",
                                     name, i, shown);
                goto fail;
            }
            int b = hi * 16 + lo;
            if (s->byte_id[b] < 0) s->byte_id[b] = i;
            *bp++ = (char)b;
            have_bytes = true;
        } else if (p->type == TERN_SPM_CONTROL) {
            /* decodes to nothing: BOS/EOS do not appear in text */
        } else if (p->type == TERN_SPM_UNKNOWN) {
            if (s->unk < 0) s->unk = i;
            memcpy(bp, UNK_SURFACE, sizeof UNK_SURFACE - 1);
            bp += sizeof UNK_SURFACE - 1;
        } else {
            for (uint32_t k = 0; k < p->len;) {
                if (k + 3 <= p->len && !memcmp(p->text + k, SPACE_UTF8, 3)) {
                    *bp++ = ' ';
                    k += 3;
                } else {
                    *bp++ = p->text[k++];
                }
            }
        }
        s->bytes[i] = ap, s->bytes_len[i] = (uint32_t)(bp - ap), ap = bp;
        if (mergeable(s->type[i])) {
            uint64_t h = hash(s->text[i], s->len[i]);
            for (size_t k = (size_t)h & s->mask;; k = (k + 1) & s->mask) {
                pmap *e = &s->map[k];
                if (e->id < 0) {
                    *e = (pmap){h, i};
                    break;
                }
                /* a duplicate keeps the first id, as sentencepiece refuses and llama.cpp keeps */
                if (e->h == h && s->len[e->id] == s->len[i] &&
                    !memcmp(s->text[e->id], s->text[i], s->len[i]))
                    break;
            }
        }
        /* split out of the text before BPE: USER_DEFINED always, CONTROL on request */
        if (p->type == TERN_SPM_USER_DEFINED || p->type == TERN_SPM_CONTROL)
            s->specials[s->n_specials++] =
                (tern_spm_special){s->text[i], s->len[i], i, p->type == TERN_SPM_USER_DEFINED};
    }
    qsort(s->specials, (size_t)s->n_specials, sizeof *s->specials, cmp_special);
    s->byte_fallback = o->byte_fallback && have_bytes;
    s->add_dummy_prefix = o->add_dummy_prefix;
    s->space_after_special = o->space_after_special;
    if (s->unk < 0 && !s->byte_fallback) {
        rc = tern_status_set(st, TERN_EFORMAT,
                             "tokenizer: %s: got no UNKNOWN piece and no byte fallback, expected "
                             "one of them (text outside the vocab could not be encoded)",
                             name);
        goto fail;
    }
    *out = s;
    return TERN_OK;
fail:
    tern_spm_tok_free(s);
    return rc;
}

int32_t tern_spm_tok_find(const tern_spm_tok *s, const char *text, size_t len)
{
    for (int32_t i = 0; i < s->n; i++)
        if (s->len[i] == len && !memcmp(s->text[i], text, len)) return i;
    return -1;
}

int32_t tern_spm_tok_type(const tern_spm_tok *s, int32_t id)
{
    return id >= 0 && id < s->n ? s->type[id] : 0;
}

const char *tern_spm_tok_bytes(const tern_spm_tok *s, int32_t id, size_t *len)
{
    if (id < 0 || id >= s->n) {
        *len = 0;
        return NULL;
    }
    *len = s->bytes_len[id];
    return s->bytes[id];
}

/* ---- encoding ---- */

typedef struct node { /* a symbol: a byte range of the escaped text; children when merged */
    uint32_t start, len;
    int32_t prev, next;  /* live list; -1 ends */
    int32_t left, right; /* the two nodes merged into this one; -1 for a character */
} node;

typedef struct cand {
    float score;
    int32_t left, right; /* node indices when queued */
    uint32_t len;        /* their total length then: stale when it changed */
} cand;

typedef struct work {
    char *buf;
    node *nodes;
    cand *heap;
    size_t cap;
} work;

static bool better(const cand *a, const cand *b)
{
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static void push(cand *h, size_t *n, cand c)
{
    size_t i = (*n)++;
    h[i] = c;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!better(&h[i], &h[p])) break;
        cand t = h[i];
        h[i] = h[p], h[p] = t;
        i = p;
    }
}

static cand pop(cand *h, size_t *n)
{
    cand top = h[0];
    h[0] = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < *n && better(&h[l], &h[m])) m = l;
        if (r < *n && better(&h[r], &h[m])) m = r;
        if (m == i) break;
        cand t = h[i];
        h[i] = h[m], h[m] = t;
        i = m;
    }
    return top;
}

static tern_code emit(tern_tokens *out, int32_t id, tern_status *st)
{
    return tern_tokens_push(out, id) ? tern_status_set(st, TERN_ENOMEM, "tokenizer: out of memory")
                                     : TERN_OK;
}

/* Emits node k: its piece, its children for an UNUSED piece, else byte fallback / unk. */
static tern_code emit_node(const tern_spm_tok *s, const work *w, int32_t k, tern_tokens *out,
                           tern_status *st)
{
    const node *nd = &w->nodes[k];
    int32_t id = lookup(s, w->buf + nd->start, nd->len);
    if (id >= 0 && s->type[id] == TERN_SPM_UNUSED && nd->left >= 0) {
        tern_code rc = emit_node(s, w, nd->left, out, st);
        return rc ? rc : emit_node(s, w, nd->right, out, st);
    }
    if (id >= 0) return emit(out, id, st);
    if (s->byte_fallback) {
        for (uint32_t i = 0; i < nd->len; i++) {
            int32_t b = s->byte_id[(unsigned char)w->buf[nd->start + i]];
            tern_code rc = emit(out, b >= 0 ? b : s->unk, st);
            if (rc) return rc;
        }
        return TERN_OK;
    }
    return emit(out, s->unk, st);
}

static tern_code work_fit(work *w, size_t n)
{
    if (n <= w->cap) return TERN_OK;
    size_t cap = n < 256 ? 256 : n;
    char *b = realloc(w->buf, cap);
    if (b) w->buf = b;
    node *nd = realloc(w->nodes, 2 * cap * sizeof *nd);
    if (nd) w->nodes = nd;
    cand *h = realloc(w->heap, 3 * cap * sizeof *h); /* m-1 pairs + 2 per merge */
    if (h) w->heap = h;
    if (!b || !nd || !h) return TERN_ENOMEM;
    w->cap = cap;
    return TERN_OK;
}

static void try_pair(const tern_spm_tok *s, work *w, size_t *hn, int32_t l)
{
    if (l < 0) return;
    int32_t r = w->nodes[l].next;
    if (r < 0) return;
    const node *a = &w->nodes[l], *b = &w->nodes[r];
    int32_t id = lookup(s, w->buf + a->start, a->len + b->len);
    if (id < 0) return;
    push(w->heap, hn, (cand){s->score[id], l, r, a->len + b->len});
}

/* BPE over one plain fragment (no special tokens in it). */
static tern_code encode_fragment(const tern_spm_tok *s, const char *text, size_t len, bool prefix,
                                 work *w, tern_tokens *out, tern_status *st)
{
    size_t spaces = prefix;
    for (size_t i = 0; i < len; i++) spaces += text[i] == ' ';
    size_t n = len + prefix + 2 * spaces; /* each space grows by 2 bytes */
    if (n == 0) return TERN_OK;
    if (n > UINT32_MAX / 4 || work_fit(w, n))
        return tern_status_set(st, TERN_ENOMEM, "tokenizer: out of memory for %zu bytes", len);
    size_t m = 0;
    if (prefix) memcpy(w->buf, SPACE_UTF8, 3), m = 3;
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ')
            memcpy(w->buf + m, SPACE_UTF8, 3), m += 3;
        else
            w->buf[m++] = text[i];
    }
    /* characters: a lead byte's length, clipped at the end; stray bytes stand alone */
    int32_t nn = 0;
    for (size_t i = 0; i < m;) {
        unsigned char c = (unsigned char)w->buf[i];
        size_t cl = c < 0x80             ? 1
                    : (c & 0xe0) == 0xc0 ? 2
                    : (c & 0xf0) == 0xe0 ? 3
                    : (c & 0xf8) == 0xf0 ? 4
                                         : 1;
        if (cl > m - i) cl = m - i;
        w->nodes[nn] = (node){(uint32_t)i, (uint32_t)cl, nn - 1, -1, -1, -1};
        if (nn > 0) w->nodes[nn - 1].next = nn;
        nn++;
        i += cl;
    }
    size_t hn = 0;
    for (int32_t i = 0; i + 1 < nn; i++) try_pair(s, w, &hn, i);
    int32_t first = 0;
    while (hn > 0) {
        cand c = pop(w->heap, &hn);
        node *a = &w->nodes[c.left];
        if (a->len == 0 || a->next != c.right || a->len + w->nodes[c.right].len != c.len)
            continue; /* stale */
        node *b = &w->nodes[c.right];
        /* the merged symbol is a new node (its children stay for UNUSED resegmentation) */
        node *mnode = &w->nodes[nn];
        *mnode = (node){a->start, c.len, a->prev, b->next, c.left, c.right};
        if (a->prev >= 0)
            w->nodes[a->prev].next = nn;
        else
            first = nn;
        if (b->next >= 0) w->nodes[b->next].prev = nn;
        a->len = 0, b->len = 0, a->next = -1, b->next = -1;
        int32_t k = nn++;
        try_pair(s, w, &hn, w->nodes[k].prev);
        try_pair(s, w, &hn, k);
    }
    for (int32_t k = first; k >= 0; k = w->nodes[k].next) {
        tern_code rc = emit_node(s, w, k, out, st);
        if (rc) return rc;
    }
    return TERN_OK;
}

tern_code tern_spm_tok_encode(const tern_spm_tok *s, const char *text, size_t len, unsigned flags,
                              tern_tokens *out, tern_status *st)
{
    work w = {0};
    tern_code rc = TERN_OK;
    size_t start = 0;
    bool after_special = false;
    for (size_t i = 0; i < len && !rc;) {
        const tern_spm_special *hit = NULL;
        for (int32_t k = 0; k < s->n_specials && !hit; k++) {
            const tern_spm_special *sp = &s->specials[k];
            if ((sp->always || (flags & TERN_TOK_PARSE_SPECIAL)) && sp->len <= len - i &&
                sp->text[0] == text[i] && !memcmp(sp->text, text + i, sp->len))
                hit = sp;
        }
        if (!hit) {
            i++;
            continue;
        }
        if (i > start) {
            bool prefix = s->add_dummy_prefix && (start == 0 || s->space_after_special);
            rc = encode_fragment(s, text + start, i - start, prefix, &w, out, st);
        }
        if (!rc) rc = emit(out, hit->id, st);
        i += hit->len;
        start = i;
        after_special = true;
    }
    if (!rc && start < len) {
        bool prefix =
            s->add_dummy_prefix && (start == 0 || (after_special && s->space_after_special));
        rc = encode_fragment(s, text + start, len - start, prefix, &w, out, st);
    }
    free(w.buf), free(w.nodes), free(w.heap);
    return rc;
}
