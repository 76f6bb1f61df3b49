/* grammar.h: constrained output for OpenAI's response_format (issue 15): a JSON document, or
 * one that follows a JSON schema, enforced while sampling by masking every token whose bytes
 * cannot continue a valid document (across token boundaries: the state is a byte-level
 * pushdown automaton, fed the bytes of each accepted token).
 *
 * The schema subset: "type" object (with "properties", "required"; additional properties are
 * not generated), array ("items", "minItems", "maxItems"), string ("minLength", "maxLength",
 * "enum"), integer, number, boolean, null; "enum" and "const" of any JSON values; the "type"
 * may be a list of these. What else a schema says is refused with a message naming it
 * ("anyOf", "$ref", "pattern", ...). Output is compact JSON (no white space); an object's
 * properties come in the schema's order, every one of them (the required and the optional).
 * {"type":"json_object"} gives any JSON object within the TERN_GRAMMAR_ANY_* bounds below.
 *
 * Threads: a compiled grammar is one request's (its state changes as tokens are accepted); a
 * vocabulary index is read-only once made and may be shared.
 */
#ifndef TERNPIPE_GRAMMAR_H
#define TERNPIPE_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ternpipe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TERN_GRAMMAR_MAX_SPEC 65536 /* bytes of a response_format */
#define TERN_GRAMMAR_MAX_NODES 512  /* schema nodes (values, properties, literals) */
#define TERN_GRAMMAR_MAX_DEPTH 16   /* nesting of the document */
#define TERN_GRAMMAR_MAX_STRING 256 /* characters of a string its schema does not bound */
#define TERN_GRAMMAR_MAX_ITEMS 32   /* array items or object members, where the schema is silent */
#define TERN_GRAMMAR_MAX_DIGITS 15  /* digits of an integer part; 6 after the point */
#define TERN_GRAMMAR_MAX_ENUM 64    /* values of one enum */
/* json_object (and a schema's untyped parts) are bounded tighter, so that a document ends
 * within a few hundred tokens however the model rambles */
#define TERN_GRAMMAR_ANY_STRING 64 /* characters of a string value */
#define TERN_GRAMMAR_ANY_KEY 32    /* characters of a member name */
#define TERN_GRAMMAR_ANY_ITEMS 8   /* members of an object, items of an array */
#define TERN_GRAMMAR_ANY_DEPTH 3   /* objects and arrays nested in one another */

typedef struct tern_grammar tern_grammar;
typedef struct tern_vocab_index tern_vocab_index;
typedef struct tern_tokenizer tern_tokenizer;

/* spec: the response_format object as JSON text: {"type":"json_object"}, or {"type":
 * "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": ...}}. {"type":"text"}
 * gives *out NULL (no constraint). TERN_EINVAL with a one-line message naming what is wrong
 * or unsupported. */
tern_code tern_grammar_compile(tern_grammar **out, const char *spec, size_t len, tern_status *st);
void tern_grammar_free(tern_grammar *g);
/* Advances by the bytes of an accepted token; false (state unchanged) when they cannot continue
 * the document. */
bool tern_grammar_accept(tern_grammar *g, const char *bytes, size_t n);
/* A whole document has been produced (only an end of text may follow). */
bool tern_grammar_done(const tern_grammar *g);

/* The vocabulary sorted by bytes, special tokens left out, for masking. */
tern_code tern_vocab_index_create(tern_vocab_index **out, const tern_tokenizer *tok,
                                  tern_status *st);
void tern_vocab_index_free(tern_vocab_index *v);
/* A token's bytes as the index holds them (NULL for a special or unknown id). */
const char *tern_vocab_index_bytes(const tern_vocab_index *v, int32_t id, size_t *len);
/* Sets logits[id] = -inf for every token that cannot continue the document from g's state; the
 * stop ids stay exactly when the document is whole. Returns how many tokens stay allowed. Its
 * scratch is allocated on the first call (once per request), not per token. */
int32_t tern_grammar_mask(tern_grammar *g, const tern_vocab_index *v, const int32_t *stop,
                          int32_t n_stop, float *logits, int32_t n_vocab);

#ifdef __cplusplus
}
#endif
#endif
