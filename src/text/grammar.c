/* grammar.c: see grammar.h (compiling: grammar-compile.c). A compiled schema is a table of nodes;
 * the state is a stack of frames, one per open value, each with the phase it is in. Feeding a byte
 * either consumes it in the top frame, starts a child value (pushed, and the byte fed to it),
 * completes the frame, or (for a number or literal that may end here) ends the frame and offers the
 * byte to the parent. Masking walks the vocabulary in byte order, keeping the state after each
 * prefix, so tokens that share a prefix are fed it once. */
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ternpipe/tokenizer.h"
#include "text/grammar-internal.h"

/* ------------------------------------------------------------------ feeding bytes */

enum { R_FAIL, R_TAKEN, R_DONE, R_END, R_PUSH };

static bool is_digit(unsigned char b)
{
    return b >= '0' && b <= '9';
}

/* whether node k may start with byte b */
static bool starts(const tern_grammar *g, int32_t k, unsigned char b)
{
    const node *n = &g->nodes[k];
    switch (n->kind) {
    case K_OBJECT:
    case K_ANY_OBJECT:
        return b == '{';
    case K_ARRAY:
        return b == '[';
    case K_STRING:
        return b == '"';
    case K_INTEGER:
    case K_NUMBER:
        return b == '-' || is_digit(b);
    case K_LITERALS:
        for (int32_t i = 0; i < n->n; i++)
            if ((unsigned char)g->arena[g->lit_off[n->a + i]] == b) return true;
        return false;
    case K_UNION:
        for (int32_t i = 0; i < n->n; i++)
            if (starts(g, g->alts[n->a + i], b)) return true;
        return false;
    default:
        return b == '{' || b == '[' || b == '"' || b == '-' || is_digit(b) || b == 't' ||
               b == 'f' || b == 'n';
    }
}

/* the concrete node a value of node k that starts with b is, or -1 (nest: open objects and
 * arrays of json_object's kind) */
static int32_t resolve(const tern_grammar *g, int32_t k, unsigned char b, int nest)
{
    const node *n = &g->nodes[k];
    if (n->kind == K_UNION) {
        for (int32_t i = 0; i < n->n; i++)
            if (starts(g, g->alts[n->a + i], b)) return resolve(g, g->alts[n->a + i], b, nest);
        return -1;
    }
    /* json_object's kind of containers nest TERN_GRAMMAR_ANY_DEPTH deep at most */
    if (n->kind == K_ANY && (b == '{' || b == '[') && nest >= TERN_GRAMMAR_ANY_DEPTH) return -1;
    if (n->kind == K_ANY)
        return b == '{'                           ? N_ANY_OBJECT
               : b == '['                         ? N_ANY_ARRAY
               : b == '"'                         ? N_ANY_STRING
               : b == '-' || is_digit(b)          ? N_ANY_NUMBER
               : b == 't' || b == 'f' || b == 'n' ? N_TFN
                                                  : -1;
    return starts(g, k, b) ? k : -1;
}

static int string_byte(const node *n, frame *f, unsigned char b)
{
    if (f->utf8) {
        if (b < 0x80 || b > 0xbf) return R_FAIL;
        f->utf8--;
        return R_TAKEN;
    }
    if (f->esc == 1) {
        if (b == 'u') {
            f->esc = 5; /* four hex digits */
            return R_TAKEN;
        }
        if (!strchr("\"\\/bfnrt", b) || !b) return R_FAIL;
        f->esc = 0;
        return R_TAKEN;
    }
    if (f->esc > 1) {
        bool hex = is_digit(b) || (b >= 'a' && b <= 'f') || (b >= 'A' && b <= 'F');
        if (!hex) return R_FAIL;
        f->esc = f->esc == 2 ? 0 : f->esc - 1;
        return R_TAKEN;
    }
    if (b == '"') return f->count >= n->lo ? R_DONE : R_FAIL;
    if (b < 0x20 || f->count >= n->hi) return R_FAIL;
    if (b == '\\') {
        f->esc = 1, f->count++;
        return R_TAKEN;
    }
    if (b >= 0x80) {
        if (b >= 0xc2 && b <= 0xdf)
            f->utf8 = 1;
        else if (b >= 0xe0 && b <= 0xef)
            f->utf8 = 2;
        else if (b >= 0xf0 && b <= 0xf4)
            f->utf8 = 3;
        else
            return R_FAIL;
    }
    f->count++;
    return R_TAKEN;
}

/* numbers: sub 0 start, 1 after '-', 2 integer digits, 3 a leading 0, 4 after '.', 5 fraction */
static int number_byte(const node *n, frame *f, unsigned char b)
{
    bool frac = n->kind == K_NUMBER;
    switch (f->sub) {
    case 0:
        if (b == '-') return f->sub = 1, R_TAKEN;
        /* fall through */
    case 1:
        if (b == '0') return f->sub = 3, R_TAKEN;
        if (is_digit(b)) return f->sub = 2, f->count = 1, R_TAKEN;
        return R_FAIL;
    case 2:
        if (is_digit(b)) return f->count < TERN_GRAMMAR_MAX_DIGITS ? (f->count++, R_TAKEN) : R_FAIL;
        /* fall through */
    case 3:
        if (b == '.' && frac) return f->sub = 4, R_TAKEN;
        return R_END;
    case 4:
        if (is_digit(b)) return f->sub = 5, f->count = 1, R_TAKEN;
        return R_FAIL;
    default:
        if (is_digit(b)) return f->count < TERN_GRAMMAR_MAX_FRAC ? (f->count++, R_TAKEN) : R_FAIL;
        return R_END;
    }
}

static int literal_byte(const tern_grammar *g, int32_t a, int32_t n, frame *f, unsigned char b)
{
    uint64_t keep = 0;
    bool complete = false;
    for (int32_t i = 0; i < n; i++) {
        if (!(f->live >> i & 1)) continue;
        int32_t l = g->lit_len[a + i];
        if (l == f->pos) complete = true;
        if (l > f->pos && (unsigned char)g->arena[g->lit_off[a + i] + f->pos] == b)
            keep |= 1ull << i;
    }
    if (keep) {
        f->live = keep, f->pos++;
        return R_TAKEN;
    }
    return complete ? R_END : R_FAIL;
}

/* may the frame end here (a number or literal that need not go on) */
static bool may_end(const tern_grammar *g, const frame *f)
{
    if (f->node < 0) return f->phase == 1;
    const node *n = &g->nodes[f->node];
    if (n->kind == K_INTEGER || n->kind == K_NUMBER)
        return f->sub == 2 || f->sub == 3 || f->sub == 5;
    if (n->kind == K_LITERALS)
        for (int32_t i = 0; i < n->n; i++)
            if (f->live >> i & 1 && g->lit_len[n->a + i] == f->pos) return true;
    return false;
}

/* one byte into the top frame; *child gets the node to push for R_PUSH */
static int step(const tern_grammar *g, frame *f, unsigned char b, int32_t *child)
{
    if (f->node < 0) { /* the document */
        if (f->phase) return R_FAIL;
        f->phase = 1;
        *child = g->root;
        return R_PUSH;
    }
    const node *n = &g->nodes[f->node];
    switch (n->kind) {
    case K_OBJECT:
        if (f->phase == 0) {
            if (b != '{') return R_FAIL;
            f->phase = n->n ? 1 : 9;
            return R_TAKEN;
        }
        if (f->phase == 1) { /* the key literal of property count */
            const prop *p = &g->props[n->a + f->count];
            if ((unsigned char)g->arena[g->lit_off[p->key] + f->pos] != b) return R_FAIL;
            if (++f->pos == g->lit_len[p->key]) f->phase = 5; /* its value comes next */
            return R_TAKEN;
        }
        if (f->phase == 5) { /* its value starts here */
            f->phase = 4;
            *child = g->props[n->a + f->count].value;
            return R_PUSH;
        }
        if (f->phase == 4) {
            if (f->count + 1 < n->n) {
                if (b != ',') return R_FAIL;
                f->count++, f->pos = 0, f->phase = 1;
                return R_TAKEN;
            }
            return b == '}' ? R_DONE : R_FAIL;
        }
        return b == '}' ? R_DONE : R_FAIL;
    case K_ANY_OBJECT:
        switch (f->phase) {
        case 0:
            if (b != '{') return R_FAIL;
            f->phase = 1;
            return R_TAKEN;
        case 1: /* first member or the end */
            if (b == '}') return R_DONE;
            /* fall through */
        case 5: /* a key */
            if (b != '"') return R_FAIL;
            f->phase = 2, f->count++;
            *child = N_ANY_KEY;
            return R_PUSH;
        case 2:
            if (b != ':') return R_FAIL;
            f->phase = 3;
            return R_TAKEN;
        case 3:
            f->phase = 4;
            *child = N_ANY;
            return R_PUSH;
        default:
            if (b == '}') return R_DONE;
            if (b != ',' || f->count >= n->hi) return R_FAIL;
            f->phase = 5;
            return R_TAKEN;
        }
    case K_ARRAY:
        if (f->phase == 0) {
            if (b != '[') return R_FAIL;
            f->phase = 1;
            return R_TAKEN;
        }
        if (f->phase == 1 && b == ']') return n->lo == 0 ? R_DONE : R_FAIL;
        if (f->phase == 1 || f->phase == 3) {
            if (f->count >= n->hi) return R_FAIL;
            f->phase = 2, f->count++;
            *child = n->item;
            return R_PUSH;
        }
        if (b == ',' && f->count < n->hi) return f->phase = 3, R_TAKEN;
        if (b == ']' && f->count >= n->lo) return R_DONE;
        return R_FAIL;
    case K_STRING:
        if (f->phase == 0) {
            if (b != '"') return R_FAIL;
            f->phase = 1;
            return R_TAKEN;
        }
        return string_byte(n, f, b);
    case K_INTEGER:
    case K_NUMBER:
        return number_byte(n, f, b);
    case K_LITERALS:
        return literal_byte(g, n->a, n->n, f, b);
    default:
        return R_FAIL;
    }
}

static bool push(const tern_grammar *g, gstate *s, int32_t k, unsigned char b)
{
    int nest = 0;
    for (int32_t i = 1; i < s->depth; i++)
        nest += s->f[i].node == N_ANY_OBJECT || s->f[i].node == N_ANY_ARRAY;
    int32_t c = resolve(g, k, b, nest);
    if (c < 0 || s->depth >= TERN_GRAMMAR_MAX_DEPTH + 1) return false;
    frame *f = &s->f[s->depth++];
    *f = (frame){.node = c};
    if (g->nodes[c].kind == K_LITERALS)
        f->live = g->nodes[c].n >= 64 ? ~0ull : (1ull << g->nodes[c].n) - 1;
    return true;
}

static bool feed(const tern_grammar *g, gstate *s, unsigned char b)
{
    for (int guard = 0; guard < 2 * TERN_GRAMMAR_MAX_DEPTH + 4; guard++) {
        if (s->depth == 0) return false;
        frame *f = &s->f[s->depth - 1];
        int32_t child = -1;
        int r = step(g, f, b, &child);
        if (r == R_TAKEN) return true;
        if (r == R_FAIL) return false;
        if (r == R_DONE) {
            s->depth--;
            return true;
        }
        if (r == R_END) {
            s->depth--;
            continue; /* the byte belongs to the parent */
        }
        if (!push(g, s, child, b)) return false; /* R_PUSH: the byte starts the child */
    }
    return false;
}

void tern_grammar_reset(tern_grammar *g)
{
    g->s.depth = 1; /* f[0]: the document, waiting for its value */
    g->s.f[0] = (frame){.node = -1};
}

bool tern_grammar_accept(tern_grammar *g, const char *bytes, size_t n)
{
    gstate t;
    memcpy(&t, &g->s, offsetof(gstate, f) + (size_t)g->s.depth * sizeof(frame));
    for (size_t i = 0; i < n; i++)
        if (!feed(g, &t, (unsigned char)bytes[i])) return false;
    memcpy(&g->s, &t, offsetof(gstate, f) + (size_t)t.depth * sizeof(frame));
    return true;
}

static bool done(const tern_grammar *g, const gstate *s)
{
    if (s->depth == 1) return s->f[0].phase == 1;
    return s->depth == 2 && s->f[0].phase == 1 && may_end(g, &s->f[1]);
}

bool tern_grammar_done(const tern_grammar *g)
{
    return done(g, &g->s);
}

/* ------------------------------------------------------------------ the vocabulary */

static const tern_vocab_index *g_sort_index; /* qsort has no context argument: under g_sort_mu */
static pthread_mutex_t g_sort_mu = PTHREAD_MUTEX_INITIALIZER;

static int by_bytes(const void *a, const void *b)
{
    const tern_vocab_index *v = g_sort_index;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    size_t lx = v->len[x], ly = v->len[y];
    int c = memcmp(v->bytes[x], v->bytes[y], lx < ly ? lx : ly);
    return c ? c : lx < ly ? -1 : lx > ly ? 1 : x - y;
}

void tern_vocab_index_free(tern_vocab_index *v)
{
    if (!v) return;
    free(v->ids), free(v->lcp), free(v->bytes), free(v->len), free(v->arena), free(v);
}

tern_code tern_vocab_index_create(tern_vocab_index **out, const tern_tokenizer *tok,
                                  tern_status *st)
{
    *out = NULL;
    int32_t nv = tern_tokenizer_n_vocab(tok);
    tern_vocab_index *v = calloc(1, sizeof *v);
    size_t total = 0;
    for (int32_t i = 0; i < nv; i++) {
        size_t l = 0;
        tern_tokenizer_token_bytes(tok, i, &l);
        total += l;
    }
    if (v) {
        v->n_vocab = nv;
        v->ids = malloc((size_t)nv * sizeof *v->ids);
        v->lcp = malloc((size_t)nv * sizeof *v->lcp);
        v->bytes = calloc((size_t)nv, sizeof *v->bytes);
        v->len = calloc((size_t)nv, sizeof *v->len);
        v->arena = malloc(total + 1);
    }
    if (!v || !v->ids || !v->lcp || !v->bytes || !v->len || !v->arena) {
        tern_vocab_index_free(v);
        return tern_status_set(st, TERN_ENOMEM, "grammar: out of memory for the vocabulary");
    }
    size_t off = 0;
    for (int32_t i = 0; i < nv; i++) {
        size_t l = 0;
        const char *p = tern_tokenizer_token_bytes(tok, i, &l);
        if (!p || !l || tern_tokenizer_is_special(tok, i)) continue;
        memcpy(v->arena + off, p, l);
        v->bytes[i] = v->arena + off, v->len[i] = (uint32_t)l;
        off += l;
        if ((int32_t)l > v->max_len) v->max_len = (int32_t)l;
        v->ids[v->n++] = i;
    }
    pthread_mutex_lock(&g_sort_mu);
    g_sort_index = v;
    qsort(v->ids, (size_t)v->n, sizeof *v->ids, by_bytes);
    g_sort_index = NULL;
    pthread_mutex_unlock(&g_sort_mu);
    for (int32_t k = 0; k < v->n; k++) {
        int32_t l = 0;
        if (k > 0) {
            int32_t a = v->ids[k - 1], b = v->ids[k];
            uint32_t m = v->len[a] < v->len[b] ? v->len[a] : v->len[b];
            while ((uint32_t)l < m && v->bytes[a][l] == v->bytes[b][l]) l++;
        }
        v->lcp[k] = l;
    }
    *out = v;
    return TERN_OK;
}

const char *tern_vocab_index_bytes(const tern_vocab_index *v, int32_t id, size_t *len)
{
    if (id < 0 || id >= v->n_vocab || !v->bytes[id]) {
        *len = 0;
        return NULL;
    }
    *len = v->len[id];
    return v->bytes[id];
}

int32_t tern_grammar_mask(tern_grammar *g, const tern_vocab_index *v, const int32_t *stop,
                          int32_t n_stop, float *logits, int32_t n_vocab)
{
    if (!g->ok || g->cap_vocab < n_vocab || g->cap_len < v->max_len) {
        /* once per request (a vocabulary does not change) */
        free(g->ok), free(g->sts);
        g->ok = calloc((size_t)n_vocab, 1);
        g->sts = malloc(((size_t)v->max_len + 1) * sizeof *g->sts);
        g->cap_vocab = n_vocab, g->cap_len = v->max_len;
        if (!g->ok || !g->sts) { /* no memory: the row stays (accept still checks each token) */
            free(g->ok), free(g->sts);
            g->ok = NULL, g->sts = NULL;
            return n_vocab;
        }
    }
    uint8_t *ok = g->ok;
    gstate *sts = g->sts;
    memset(ok, 0, (size_t)n_vocab);
    int32_t n_ok = 0;
    memcpy(&sts[0], &g->s, offsetof(gstate, f) + (size_t)g->s.depth * sizeof(frame));
    /* sts[d] is the state after the first d bytes of the current token, for d <= valid */
    int32_t valid = 0;
    for (int32_t k = 0; k < v->n; k++) {
        int32_t id = v->ids[k], len = (int32_t)v->len[id], d = v->lcp[k];
        const unsigned char *b = (const unsigned char *)v->bytes[id];
        if (d > valid) continue; /* it shares the byte the previous token failed at */
        for (; d < len; d++) {
            memcpy(&sts[d + 1], &sts[d],
                   offsetof(gstate, f) + (size_t)sts[d].depth * sizeof(frame));
            if (!feed(g, &sts[d + 1], b[d])) break;
        }
        valid = d;
        if (d == len && id < n_vocab) ok[id] = 1, n_ok++;
    }
    /* an end of text only where the document is whole (and there always) */
    bool fin = done(g, &g->s);
    for (int32_t i = 0; i < n_stop; i++)
        if (stop[i] >= 0 && stop[i] < n_vocab && ok[stop[i]] != fin) {
            ok[stop[i]] = fin;
            n_ok += fin ? 1 : -1;
        }
    for (int32_t i = 0; i < n_vocab; i++)
        if (!ok[i]) logits[i] = -INFINITY;
    return n_ok;
}
