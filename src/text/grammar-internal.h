/* grammar-internal.h: the compiled schema and the automaton's state, shared by
 * grammar-compile.c (schema -> nodes) and grammar.c (feeding bytes, masking). */
#ifndef TERN_TEXT_GRAMMAR_INTERNAL_H
#define TERN_TEXT_GRAMMAR_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "ternpipe/grammar.h"
#include "ternpipe/status.h"

enum { K_OBJECT, K_ANY_OBJECT, K_ARRAY, K_STRING, K_INTEGER, K_NUMBER, K_LITERALS, K_UNION, K_ANY };
/* built-in nodes of every grammar (json_object and schema parts the schema leaves open) */
enum {
    N_ANY = 0,
    N_ANY_OBJECT,
    N_ANY_ARRAY,
    N_ANY_STRING,
    N_ANY_NUMBER,
    N_TFN,
    N_ANY_KEY,
    N_BUILTIN
};

#define TERN_GRAMMAR_MAX_LITS 2048 /* literals of all enums, consts and keys */
#define TERN_GRAMMAR_MAX_KEY 256   /* bytes of a property name */
#define TERN_GRAMMAR_MAX_FRAC 6    /* digits after the point */

typedef struct node {
    uint8_t kind;
    int32_t a, n;   /* object: props [a, a+n); literals: lits [a, a+n); union: alts */
    int32_t item;   /* array */
    int32_t lo, hi; /* array items, string characters */
} node;

typedef struct prop {
    int32_t key; /* literal "\"name\":" */
    int32_t value;
} prop;

typedef struct frame {
    int32_t node;
    int32_t count; /* string characters, array items, object member (or property) index */
    int32_t pos;   /* bytes of a literal or key matched */
    uint64_t live; /* literals: candidates still matching */
    uint8_t phase, esc, utf8, sub;
} frame;

typedef struct gstate {
    int32_t depth;
    frame f[TERN_GRAMMAR_MAX_DEPTH + 2]; /* f[0]: the document itself */
} gstate;

struct tern_grammar {
    node nodes[TERN_GRAMMAR_MAX_NODES];
    int32_t n_nodes, root;
    prop *props; /* [TERN_GRAMMAR_MAX_NODES] */
    int32_t n_props;
    int32_t lit_off[TERN_GRAMMAR_MAX_LITS], lit_len[TERN_GRAMMAR_MAX_LITS], n_lits;
    char *arena; /* literal bytes */
    size_t arena_len, arena_cap;
    int32_t alts[TERN_GRAMMAR_MAX_NODES];
    int32_t n_alts;
    gstate s;
    tern_status *st; /* compile only */
    uint8_t *ok;     /* mask scratch: [cap_vocab] allowed, [cap_len + 1] states */
    gstate *sts;
    int32_t cap_vocab, cap_len;
};

struct tern_vocab_index {
    int32_t n_vocab, n; /* tokens in the index */
    int32_t *ids;       /* [n] by bytes */
    int32_t *lcp;       /* [n] bytes in common with the previous one */
    const char **bytes; /* [n_vocab] (NULL: left out) */
    uint32_t *len;      /* [n_vocab] */
    char *arena;
    int32_t max_len;
};

/* the document's first frame, waiting for its value (tern_grammar_compile) */
void tern_grammar_reset(tern_grammar *g);

#endif
