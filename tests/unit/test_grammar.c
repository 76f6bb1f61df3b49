/* test_grammar.c: constrained JSON output (include/ternpipe/grammar.h). Documents are accepted
 * or refused byte by byte as a JSON parser and the schema say; the mask over the default
 * model's vocabulary allows exactly the tokens whose bytes continue the document (checked
 * against feeding every token alone); random walks through the mask always end in a document
 * that parses (cJSON) and follows the schema; unsupported schema keywords are refused by name.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "harness.h"
#include "ternpipe/gguf.h"
#include "ternpipe/grammar.h"
#include "ternpipe/rng.h"
#include "ternpipe/tokenizer.h"

#define SCHEMA                                                                                     \
    "{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"p\",\"schema\":{\"type\":\"object\","   \
    "\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":5},\"age\":{\"type\":"            \
    "\"integer\"},\"tags\":{\"type\":\"array\",\"items\":{\"enum\":[\"a\",\"bc\"]},\"maxItems\":"  \
    "2},\"ok\":{\"type\":\"boolean\"},\"w\":{\"type\":[\"number\",\"null\"]}},\"required\":["      \
    "\"name\",\"age\"]}}}"

static tern_grammar *make(const char *spec)
{
    tern_status st = {0};
    tern_grammar *g = NULL;
    CHECKF(tern_grammar_compile(&g, spec, strlen(spec), &st) == TERN_OK && g, "%s: %s", spec,
           st.msg);
    return g;
}

/* doc fed in one piece: accepted and whole (want 2), accepted but not whole (1), refused (0) */
static int run(const char *spec, const char *doc)
{
    tern_grammar *g = make(spec);
    if (!g) return -1;
    int r = !tern_grammar_accept(g, doc, strlen(doc)) ? 0 : tern_grammar_done(g) ? 2 : 1;
    tern_grammar_free(g);
    return r;
}

static void test_documents(void)
{
    const char *obj = "{\"type\":\"json_object\"}";
    struct {
        const char *spec, *doc;
        int want;
    } cases[] = {
        {SCHEMA, "{\"name\":\"bob\",\"age\":42,\"tags\":[\"a\",\"bc\"],\"ok\":true,\"w\":-1.5}", 2},
        {SCHEMA, "{\"name\":\"\",\"age\":0,\"tags\":[],\"ok\":false,\"w\":null}", 2},
        {SCHEMA, "{\"name\":\"b\\u00e9\\n\",\"age\":-7,\"tags\":[\"bc\"],\"ok\":true,\"w\":0}", 2},
        {SCHEMA, "{\"name\":\"bob\",\"age\":42", 1},
        {SCHEMA, "{\"age\":42}", 0},                /* the schema's order */
        {SCHEMA, "{\"name\":\"bobbyb\"", 0},        /* maxLength 5 */
        {SCHEMA, "{\"name\":\"b\",\"age\":01", 0},  /* leading zero */
        {SCHEMA, "{\"name\":\"b\",\"age\":1.5", 0}, /* integer */
        {SCHEMA, "{\"name\":\"b\",\"age\":1,\"tags\":[\"a\",\"a\",\"a\"", 0}, /* maxItems */
        {SCHEMA, "{\"name\":\"b\",\"age\":1,\"tags\":[\"c\"", 0},             /* enum */
        {SCHEMA, "{\"name\":\"b\",\"age\":1,\"tags\":[\"a\",]", 0},           /* trailing comma */
        {SCHEMA, "{ \"name\"", 0},                                            /* compact only */
        {obj, "{\"a\":[1,2.25,{\"b\":null}],\"c\":\"x\",\"d\":true}", 2},
        {obj, "{}", 2},
        {obj, "[1]", 0},
        {obj, "{\"a\":1}}", 0},
        {obj, "{\"a\":\"\x01\"}", 0},     /* a control character in a string */
        {obj, "{\"a\":\"\xc3\xa9\"}", 2}, /* UTF-8 */
        {obj, "{\"a\":\"\xc3\"}", 0},     /* a broken one */
        {obj, "{\"a\":tru", 1},
        {"{\"type\":\"json_schema\",\"json_schema\":{\"schema\":{\"type\":\"integer\"}}}", "12", 2},
        {"{\"type\":\"json_schema\",\"json_schema\":{\"schema\":{\"const\":{\"k\":[1,\"x\"]}}}}",
         "{\"k\":[1,\"x\"]}", 2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int got = run(cases[i].spec, cases[i].doc);
        CHECKF(got == cases[i].want, "%s: got %d, expected %d", cases[i].doc, got, cases[i].want);
    }
    /* refused schemas name what is wrong */
    struct {
        const char *spec, *want;
    } bad[] = {
        {"{\"type\":\"json_schema\",\"json_schema\":{\"schema\":{\"anyOf\":[]}}}", "anyOf"},
        {"{\"type\":\"json_schema\",\"json_schema\":{\"schema\":{\"type\":\"date\"}}}", "type"},
        {"{\"type\":\"json_schema\",\"json_schema\":{\"schema\":{\"type\":\"array\",\"minItems\":3,"
         "\"maxItems\":2}}}",
         "minItems"},
        {"{\"type\":\"json_schema\",\"json_schema\":{\"schema\":{\"type\":\"object\","
         "\"properties\":"
         "{\"a\":{}},\"required\":[\"b\"]}}}",
         "required"},
        {"{\"type\":\"json_schema\"}", "schema"},
        {"{\"type\":\"xml\"}", "type"},
        {"[1]", "object"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tern_status st = {0};
        tern_grammar *g = NULL;
        CHECKF(tern_grammar_compile(&g, bad[i].spec, strlen(bad[i].spec), &st) == TERN_EINVAL &&
                   !g && strstr(st.msg, bad[i].want) && !strchr(st.msg, '\n'),
               "%s: got '%s', expected a message naming %s", bad[i].spec, st.msg, bad[i].want);
    }
    tern_status st = {0};
    tern_grammar *g = (tern_grammar *)1;
    CHECK(tern_grammar_compile(&g, "{\"type\":\"text\"}", 15, &st) == TERN_OK && g == NULL);
}

/* a compiled grammar fed prefix, then token id alone: does it continue? (the reference) */
static bool alone(const char *spec, const char *prefix, size_t plen, const char *tb, size_t tl)
{
    tern_grammar *g = make(spec);
    bool ok = g && tern_grammar_accept(g, prefix, plen) && tern_grammar_accept(g, tb, tl);
    tern_grammar_free(g);
    return ok;
}

static void check_schema_value(const cJSON *j)
{
    CHECK(cJSON_IsObject(j));
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(j, "name");
    const cJSON *age = cJSON_GetObjectItemCaseSensitive(j, "age");
    const cJSON *tags = cJSON_GetObjectItemCaseSensitive(j, "tags");
    const cJSON *ok = cJSON_GetObjectItemCaseSensitive(j, "ok");
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(j, "w");
    CHECK(cJSON_IsString(name) && cJSON_IsNumber(age) &&
          age->valuedouble == floor(age->valuedouble));
    CHECK(cJSON_IsArray(tags) && cJSON_GetArraySize(tags) <= 2 && cJSON_IsBool(ok) &&
          (cJSON_IsNumber(w) || cJSON_IsNull(w)));
    for (const cJSON *t = tags ? tags->child : NULL; t; t = t->next)
        CHECK(cJSON_IsString(t) && (!strcmp(t->valuestring, "a") || !strcmp(t->valuestring, "bc")));
}

static void test_mask(void)
{
    tern_status st = {0};
    tern_gguf *gg = NULL;
    tern_tokenizer *tok = NULL;
    if (tern_gguf_open(&gg, "models/tinystories-bitnet.gguf", &st) ||
        tern_tokenizer_load(&tok, gg, &st)) {
        CHECKF(0, "default model: %s", st.msg);
        tern_gguf_close(gg);
        return;
    }
    tern_vocab_index *vi = NULL;
    CHECK(tern_vocab_index_create(&vi, tok, &st) == TERN_OK);
    int32_t nv = tern_tokenizer_n_vocab(tok), eos = tern_tokenizer_eos(tok);
    float *lg = malloc((size_t)nv * sizeof *lg);
    const char *specs[2] = {SCHEMA, "{\"type\":\"json_object\"}"};
    /* the mask equals feeding each token alone, at several points of a document */
    const char *prefixes[] = {
        "", "{\"na", "{\"name\":\"bo", "{\"name\":\"bob\",\"age\":4",
        "{\"name\":\"bob\",\"age\":4,\"tags\":[\"a\",\"bc\"],\"ok\":true,\"w\":1"};
    for (size_t p = 0; p < sizeof prefixes / sizeof prefixes[0]; p++) {
        tern_grammar *g = make(SCHEMA);
        CHECK(tern_grammar_accept(g, prefixes[p], strlen(prefixes[p])));
        for (int32_t i = 0; i < nv; i++) lg[i] = 1.0f;
        int32_t n = tern_grammar_mask(g, vi, &eos, 1, lg, nv);
        int32_t bad = 0, allowed = 0;
        for (int32_t i = 0; i < nv; i++) {
            size_t l = 0;
            const char *b = tern_vocab_index_bytes(vi, i, &l);
            bool want = b && alone(SCHEMA, prefixes[p], strlen(prefixes[p]), b, l);
            bool got = lg[i] == 1.0f;
            if (i == eos) want = false;
            bad += want != got, allowed += got;
        }
        CHECKF(bad == 0 && allowed == n && n > 0, "prefix '%s': %d tokens differ, %d allowed",
               prefixes[p], bad, allowed);
        tern_grammar_free(g);
    }
    /* random walks through the mask end in documents that parse and follow the schema */
    tern_rng rng;
    tern_rng_seed(&rng, 12345);
    int whole = 0;
    for (int walk = 0; walk < 40; walk++) {
        const char *spec = specs[walk % 2];
        tern_grammar *g = make(spec);
        char doc[8192];
        size_t len = 0;
        bool ended = false;
        for (int t = 0; t < 400 && !ended; t++) {
            for (int32_t i = 0; i < nv; i++) lg[i] = 0.0f;
            int32_t n = tern_grammar_mask(g, vi, &eos, 1, lg, nv);
            CHECK(n > 0);
            /* a random allowed token, the end of text preferred once it is allowed */
            int32_t pick = -1;
            if (lg[eos] == 0.0f && tern_rng_next(&rng) % 4 == 0) pick = eos;
            for (int32_t k = (int32_t)(tern_rng_next(&rng) % (uint64_t)nv), c = 0;
                 pick < 0 && c < nv; c++, k = (k + 1) % nv)
                if (lg[k] == 0.0f) pick = k;
            if (pick == eos) {
                ended = true;
                break;
            }
            size_t l = 0;
            const char *b = tern_vocab_index_bytes(vi, pick, &l);
            CHECKF(b && tern_grammar_accept(g, b, l), "walk %d: a masked-in token refused", walk);
            if (len + l >= sizeof doc) break;
            memcpy(doc + len, b, l);
            len += l;
        }
        if (ended) {
            CHECK(tern_grammar_done(g));
            cJSON *j = cJSON_ParseWithLength(doc, len);
            CHECKF(j != NULL, "walk %d: '%.*s' does not parse", walk, (int)len, doc);
            if (j && walk % 2 == 0) check_schema_value(j);
            if (j && walk % 2 == 1) CHECK(cJSON_IsObject(j));
            cJSON_Delete(j);
            whole++;
        }
        tern_grammar_free(g);
    }
    CHECKF(whole >= 10, "only %d of 40 walks ended", whole);
    free(lg);
    tern_vocab_index_free(vi);
    tern_tokenizer_free(tok);
    tern_gguf_close(gg);
}

int main(void)
{
    test_documents();
    test_mask();
    return tern_test_finish("test_grammar");
}
