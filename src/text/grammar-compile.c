/* grammar-compile.c: response_format -> the node table of grammar-internal.h (see grammar.h
 * for the schema subset); every keyword outside it is refused by name. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "text/grammar-internal.h"

/* ------------------------------------------------------------------ compiling */

#define BAD(...) (tern_status_set(g->st, TERN_EINVAL, __VA_ARGS__), -1)

static int32_t new_node(tern_grammar *g, node n)
{
    if (g->n_nodes >= TERN_GRAMMAR_MAX_NODES)
        return BAD("response_format: json_schema: got more than %d schema nodes",
                   TERN_GRAMMAR_MAX_NODES);
    g->nodes[g->n_nodes] = n;
    return g->n_nodes++;
}

static int32_t add_lit(tern_grammar *g, const char *s, size_t n)
{
    if (g->n_lits >= TERN_GRAMMAR_MAX_LITS || n == 0 || n > TERN_GRAMMAR_MAX_SPEC)
        return BAD("response_format: json_schema: got more than %d enum values and keys",
                   TERN_GRAMMAR_MAX_LITS);
    if (g->arena_len + n > g->arena_cap) {
        size_t cap = g->arena_cap ? g->arena_cap : 4096;
        while (cap < g->arena_len + n) cap *= 2;
        char *a = realloc(g->arena, cap);
        if (!a) return BAD("response_format: out of memory");
        g->arena = a, g->arena_cap = cap;
    }
    memcpy(g->arena + g->arena_len, s, n);
    g->lit_off[g->n_lits] = (int32_t)g->arena_len;
    g->lit_len[g->n_lits] = (int32_t)n;
    g->arena_len += n;
    return g->n_lits++;
}

/* a JSON value as its compact text, a literal */
static int32_t add_value_lit(tern_grammar *g, const cJSON *v)
{
    char *t = cJSON_PrintUnformatted(v);
    if (!t) return BAD("response_format: out of memory");
    int32_t k = add_lit(g, t, strlen(t));
    free(t);
    return k;
}

static int32_t literals_node(tern_grammar *g, const cJSON *values, const char *what)
{
    int32_t a = g->n_lits, n = 0;
    for (const cJSON *v = values; v; v = v->next, n++) {
        if (n >= TERN_GRAMMAR_MAX_ENUM)
            return BAD("response_format: json_schema: %s: got more than %d values", what,
                       TERN_GRAMMAR_MAX_ENUM);
        if (add_value_lit(g, v) < 0) return -1;
    }
    if (!n) return BAD("response_format: json_schema: %s: got no values", what);
    return new_node(g, (node){.kind = K_LITERALS, .a = a, .n = n});
}

static bool get_count(tern_grammar *g, const cJSON *s, const char *key, int32_t lo, int32_t hi,
                      int32_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(s, key);
    if (!v) return true;
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < lo ||
        v->valuedouble > hi) {
        (void)BAD("response_format: json_schema: %s: expected an integer in [%d, %d]", key, lo, hi);
        return false;
    }
    *out = (int32_t)v->valuedouble;
    return true;
}

static int32_t compile(tern_grammar *g, const cJSON *s, int depth);

static int32_t compile_type(tern_grammar *g, const cJSON *s, const char *type, int depth)
{
    if (!strcmp(type, "object")) {
        const cJSON *props = cJSON_GetObjectItemCaseSensitive(s, "properties");
        const cJSON *req = cJSON_GetObjectItemCaseSensitive(s, "required");
        if (props && !cJSON_IsObject(props))
            return BAD("response_format: json_schema: properties: expected an object");
        if (req && !cJSON_IsArray(req))
            return BAD("response_format: json_schema: required: expected an array of names");
        for (const cJSON *r = req ? req->child : NULL; r; r = r->next)
            if (!cJSON_IsString(r) || !props ||
                !cJSON_GetObjectItemCaseSensitive(props, r->valuestring))
                return BAD("response_format: json_schema: required: got '%.64s', expected a "
                           "name of properties",
                           cJSON_IsString(r) ? r->valuestring : "?");
        if (!props || !props->child) return N_ANY_OBJECT;
        int32_t n = cJSON_GetArraySize(props);
        if (g->n_props + n > TERN_GRAMMAR_MAX_NODES)
            return BAD("response_format: json_schema: got more than %d properties",
                       TERN_GRAMMAR_MAX_NODES);
        int32_t a = g->n_props;
        g->n_props += n;
        int32_t i = 0;
        for (const cJSON *p = props->child; p; p = p->next, i++) {
            if (strlen(p->string) > TERN_GRAMMAR_MAX_KEY)
                return BAD("response_format: json_schema: a property name of more than %d bytes",
                           TERN_GRAMMAR_MAX_KEY);
            cJSON *k = cJSON_CreateString(p->string);
            char *t = k ? cJSON_PrintUnformatted(k) : NULL;
            cJSON_Delete(k);
            if (!t) return BAD("response_format: out of memory");
            size_t tl = strlen(t);
            char *kl = malloc(tl + 2);
            if (!kl) {
                free(t);
                return BAD("response_format: out of memory");
            }
            memcpy(kl, t, tl);
            kl[tl] = ':';
            free(t);
            int32_t key = add_lit(g, kl, tl + 1);
            free(kl);
            if (key < 0) return -1;
            int32_t v = compile(g, p, depth + 1);
            if (v < 0) return -1;
            g->props[a + i] = (prop){key, v};
        }
        return new_node(g, (node){.kind = K_OBJECT, .a = a, .n = n});
    }
    if (!strcmp(type, "array")) {
        const cJSON *items = cJSON_GetObjectItemCaseSensitive(s, "items");
        int32_t it = items ? compile(g, items, depth + 1) : N_ANY;
        if (it < 0) return -1;
        int32_t lo = 0, hi = TERN_GRAMMAR_MAX_ITEMS;
        if (!get_count(g, s, "minItems", 0, TERN_GRAMMAR_MAX_ITEMS, &lo) ||
            !get_count(g, s, "maxItems", 0, TERN_GRAMMAR_MAX_ITEMS, &hi))
            return -1;
        if (lo > hi) return BAD("response_format: json_schema: minItems %d > maxItems %d", lo, hi);
        return new_node(g, (node){.kind = K_ARRAY, .item = it, .lo = lo, .hi = hi});
    }
    if (!strcmp(type, "string")) {
        int32_t lo = 0, hi = TERN_GRAMMAR_MAX_STRING;
        if (!get_count(g, s, "minLength", 0, 4096, &lo) ||
            !get_count(g, s, "maxLength", 0, 4096, &hi))
            return -1;
        if (lo > hi)
            return BAD("response_format: json_schema: minLength %d > maxLength %d", lo, hi);
        return new_node(g, (node){.kind = K_STRING, .lo = lo, .hi = hi});
    }
    if (!strcmp(type, "integer")) return new_node(g, (node){.kind = K_INTEGER});
    if (!strcmp(type, "number")) return N_ANY_NUMBER;
    if (!strcmp(type, "boolean") || !strcmp(type, "null")) {
        int32_t a = g->n_lits;
        if (!strcmp(type, "null")) {
            if (add_lit(g, "null", 4) < 0) return -1;
            return new_node(g, (node){.kind = K_LITERALS, .a = a, .n = 1});
        }
        if (add_lit(g, "true", 4) < 0 || add_lit(g, "false", 5) < 0) return -1;
        return new_node(g, (node){.kind = K_LITERALS, .a = a, .n = 2});
    }
    return BAD("response_format: json_schema: type: got '%.32s', expected object, array, "
               "string, integer, number, boolean or null",
               type);
}

static int32_t compile(tern_grammar *g, const cJSON *s, int depth)
{
    if (depth > TERN_GRAMMAR_MAX_DEPTH - 2)
        return BAD("response_format: json_schema: nested deeper than %d",
                   TERN_GRAMMAR_MAX_DEPTH - 2);
    if (cJSON_IsTrue(s)) return N_ANY;
    if (!cJSON_IsObject(s)) return BAD("response_format: json_schema: a schema must be an object");
    static const char *const known[] = {
        "type",      "properties", "required",    "items",
        "minItems",  "maxItems",   "enum",        "const",
        "minLength", "maxLength",  "description", "title",
        "default",   "examples",   "$schema",     "additionalProperties",
        "$id"};
    for (const cJSON *k = s->child; k; k = k->next) {
        bool ok = false;
        for (size_t i = 0; i < sizeof known / sizeof known[0] && !ok; i++)
            ok = !strcmp(k->string, known[i]);
        if (!ok)
            return BAD("response_format: json_schema: '%.40s' is not supported (supported: "
                       "type, properties, required, items, minItems, maxItems, enum, const, "
                       "minLength, maxLength)",
                       k->string);
        if (!strcmp(k->string, "additionalProperties") && !cJSON_IsBool(k))
            return BAD("response_format: json_schema: additionalProperties: only true or false "
                       "(none are generated) is supported");
    }
    const cJSON *en = cJSON_GetObjectItemCaseSensitive(s, "enum");
    if (en) {
        if (!cJSON_IsArray(en)) return BAD("response_format: json_schema: enum: expected an array");
        return literals_node(g, en->child, "enum");
    }
    const cJSON *cn = cJSON_GetObjectItemCaseSensitive(s, "const");
    if (cn) {
        cJSON *one = cJSON_Duplicate(cn, 1);
        if (!one) return BAD("response_format: out of memory");
        int32_t r = literals_node(g, one, "const");
        cJSON_Delete(one);
        return r;
    }
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(s, "type");
    if (!t) return N_ANY;
    if (cJSON_IsString(t)) return compile_type(g, s, t->valuestring, depth);
    if (!cJSON_IsArray(t) || !t->child)
        return BAD("response_format: json_schema: type: expected a name or a list of names");
    int32_t a = g->n_alts, n = 0;
    for (const cJSON *x = t->child; x; x = x->next, n++) {
        if (!cJSON_IsString(x)) return BAD("response_format: json_schema: type: expected names");
        for (const cJSON *y = t->child; y != x; y = y->next)
            if (!strcmp(y->valuestring, x->valuestring))
                return BAD("response_format: json_schema: type: '%s' twice", x->valuestring);
        int32_t k = compile_type(g, s, x->valuestring, depth);
        if (k < 0) return -1;
        if (g->n_alts >= TERN_GRAMMAR_MAX_NODES)
            return BAD("response_format: json_schema: too many types");
        g->alts[g->n_alts++] = k;
    }
    return new_node(g, (node){.kind = K_UNION, .a = a, .n = n});
}

static void builtins(tern_grammar *g)
{
    g->nodes[N_ANY] = (node){.kind = K_ANY};
    g->nodes[N_ANY_OBJECT] = (node){.kind = K_ANY_OBJECT, .hi = TERN_GRAMMAR_ANY_ITEMS};
    g->nodes[N_ANY_ARRAY] =
        (node){.kind = K_ARRAY, .item = N_ANY, .lo = 0, .hi = TERN_GRAMMAR_ANY_ITEMS};
    g->nodes[N_ANY_STRING] = (node){.kind = K_STRING, .lo = 0, .hi = TERN_GRAMMAR_ANY_STRING};
    g->nodes[N_ANY_KEY] = (node){.kind = K_STRING, .lo = 0, .hi = TERN_GRAMMAR_ANY_KEY};
    g->nodes[N_ANY_NUMBER] = (node){.kind = K_NUMBER};
    int32_t a = g->n_lits;
    add_lit(g, "true", 4), add_lit(g, "false", 5), add_lit(g, "null", 4);
    g->nodes[N_TFN] = (node){.kind = K_LITERALS, .a = a, .n = 3};
    g->n_nodes = N_BUILTIN;
}

void tern_grammar_free(tern_grammar *g)
{
    if (!g) return;
    free(g->props), free(g->arena), free(g->ok), free(g->sts), free(g);
}

tern_code tern_grammar_compile(tern_grammar **out, const char *spec, size_t len, tern_status *st)
{
    *out = NULL;
    if (len > TERN_GRAMMAR_MAX_SPEC)
        return tern_status_set(st, TERN_EINVAL,
                               "response_format: got %zu bytes, expected at most %d", len,
                               TERN_GRAMMAR_MAX_SPEC);
    cJSON *j = cJSON_ParseWithLength(spec, len);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return tern_status_set(st, TERN_EINVAL, "response_format: expected an object");
    }
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(j, "type");
    const char *t = cJSON_IsString(type) ? type->valuestring : "";
    if (!strcmp(t, "text")) {
        cJSON_Delete(j);
        return TERN_OK;
    }
    if (strcmp(t, "json_object") && strcmp(t, "json_schema")) {
        tern_status_set(st, TERN_EINVAL,
                        "response_format: type: got '%.32s', expected text, json_object or "
                        "json_schema",
                        t);
        cJSON_Delete(j); /* t points into it */
        return TERN_EINVAL;
    }
    tern_grammar *g = calloc(1, sizeof *g);
    if (g) g->props = calloc(TERN_GRAMMAR_MAX_NODES, sizeof *g->props);
    if (!g || !g->props) {
        tern_grammar_free(g);
        cJSON_Delete(j);
        return tern_status_set(st, TERN_ENOMEM, "response_format: out of memory");
    }
    g->st = st;
    builtins(g);
    if (!strcmp(t, "json_object")) {
        g->root = N_ANY_OBJECT;
    } else {
        const cJSON *js = cJSON_GetObjectItemCaseSensitive(j, "json_schema");
        const cJSON *schema = js ? cJSON_GetObjectItemCaseSensitive(js, "schema") : NULL;
        g->root = schema ? compile(g, schema, 0)
                         : BAD("response_format: json_schema: expected {\"schema\": {...}}");
    }
    cJSON_Delete(j);
    g->st = NULL;
    if (g->root < 0) {
        tern_grammar_free(g);
        return TERN_EINVAL;
    }
    tern_grammar_reset(g);
    *out = g;
    return TERN_OK;
}
