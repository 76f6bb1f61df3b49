/* spm-load.c: SentencePiece tokenizers from their three sources: GGUF metadata
 * (tokenizer.ggml.model = "llama", spec 8.1), a tokenizer.model file, and a Hugging Face
 * directory (tokenizer.model + added_tokens.json + tokenizer_config.json).
 *
 * Added tokens are keyed by text: an id below the piece count must name a piece with the same
 * text, ids above it must continue the vocabulary without gaps. BOS/EOS are found by the text
 * tokenizer_config.json gives them, so a vocabulary whose added tokens come in another order
 * (bitnet.cpp's GGUFs, spec 7.4) still gets the right ids. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "text/text-internal.h"

#define JSON_MAX (16u << 20)

static tern_code from_pieces(tern_tokenizer **out, const tern_spm_piece *pieces, int32_t n,
                             const tern_spm_opts *o, int32_t bos, int32_t eos, bool add_bos,
                             const char *name, const char *pre, tern_status *st)
{
    tern_spm_tok *spm = NULL;
    tern_code rc = tern_spm_tok_build(&spm, pieces, n, o, name, st);
    if (rc) return rc;
    if (bos >= n || eos >= n) {
        tern_spm_tok_free(spm);
        return tern_status_set(st, TERN_EFORMAT,
                               "tokenizer: %s: bos/eos id: got %d/%d, expected ids below %d", name,
                               bos, eos, n);
    }
    return tern_tokenizer_wrap_spm(out, spm, n, bos, eos, add_bos, o->add_dummy_prefix, pre, st);
}

tern_code tern_spm_load_gguf(tern_tokenizer **out, const tern_gguf *g, tern_status *st)
{
    *out = NULL;
    const char *path = tern_gguf_path(g);
    const tern_gguf_value *tokens, *scores = NULL, *types = NULL;
    tern_code rc = tern_gguf_get_arr(g, "tokenizer.ggml.tokens", TERN_GGUF_STRING, &tokens, st);
    if (rc) return rc;
    uint64_t n = tokens->v.arr.n;
    if (n == 0 || n > (1u << 24))
        return tern_status_set(st, TERN_EFORMAT,
                               "tokenizer: %s: token count: got %llu, expected 1..16777216", path,
                               (unsigned long long)n);
    if (tern_gguf_find(g, "tokenizer.ggml.scores") &&
        (rc = tern_gguf_get_arr(g, "tokenizer.ggml.scores", TERN_GGUF_FLOAT32, &scores, st)))
        return rc;
    if (tern_gguf_find(g, "tokenizer.ggml.token_type") &&
        (rc = tern_gguf_get_arr(g, "tokenizer.ggml.token_type", TERN_GGUF_INT32, &types, st)))
        return rc;
    if ((scores && scores->v.arr.n != n) || (types && types->v.arr.n != n))
        return tern_status_set(st, TERN_EFORMAT,
                               "tokenizer: %s: scores/token_type count: got %llu/%llu, expected "
                               "%llu (the token count)",
                               path, (unsigned long long)(scores ? scores->v.arr.n : n),
                               (unsigned long long)(types ? types->v.arr.n : n),
                               (unsigned long long)n);
    tern_spm_piece *pieces = calloc((size_t)n, sizeof *pieces);
    if (!pieces) return tern_status_set(st, TERN_ENOMEM, "tokenizer: out of memory");
    bool bytes = false;
    for (uint64_t i = 0; i < n; i++) {
        tern_gguf_str s = tokens->v.arr.items[i].v.str;
        if (s.len == 0 || s.len > 65536) {
            free(pieces);
            return tern_status_set(st, TERN_EFORMAT,
                                   "tokenizer: %s: token %llu length: got %llu, expected 1..65536",
                                   path, (unsigned long long)i, (unsigned long long)s.len);
        }
        pieces[i].text = (char *)s.ptr; /* copied by the builder */
        pieces[i].len = (uint32_t)s.len;
        pieces[i].score = scores ? (float)tern_gguf_arr_float(scores, i) : 0.0f;
        int64_t ty = types ? tern_gguf_arr_int(types, i) : TERN_SPM_NORMAL;
        pieces[i].type = ty >= TERN_SPM_NORMAL && ty < TERN_SPM_TYPE_COUNT ? (tern_spm_type)ty : 0;
        bytes |= ty == TERN_SPM_BYTE;
    }
    uint32_t v;
    int32_t bos = tern_gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &v, NULL) ? 1 : (int32_t)v;
    int32_t eos = tern_gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &v, NULL) ? 2 : (int32_t)v;
    bool add_bos = true, prefix = true, b;
    if (!tern_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b, NULL)) add_bos = b;
    if (!tern_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &b, NULL)) prefix = b;
    /* llama.cpp's rule: a dummy space after every special token too */
    tern_spm_opts o = {
        .byte_fallback = bytes, .add_dummy_prefix = prefix, .space_after_special = true};
    rc = from_pieces(out, pieces, (int32_t)n, &o, bos, eos, add_bos, path, "spm (gguf)", st);
    free(pieces);
    return rc;
}

/* What ternpipe's SentencePiece encoder implements; anything else is refused by name. */
static tern_code supported(const tern_spm_model *m, const char *path, tern_status *st)
{
    static const char *const kinds[] = {"?", "UNIGRAM", "BPE", "WORD", "CHAR"};
    if (m->model_type != TERN_SPM_BPE)
        return tern_status_set(
            st, TERN_EUNSUPPORTED,
            "tokenizer: %s: trainer_spec.model_type: got %s (%d), expected BPE "
            "(2) (unigram/word/char segmentation is not implemented)",
            path, m->model_type >= 1 && m->model_type <= 4 ? kinds[m->model_type] : "?",
            m->model_type);
    if (m->precompiled_charsmap || (m->normalizer[0] && strcmp(m->normalizer, "identity")))
        return tern_status_set(
            st, TERN_EUNSUPPORTED,
            "tokenizer: %s: normalizer_spec: got '%s' with a %llu-byte charsmap, "
            "expected 'identity' (text normalization is not implemented)",
            path, m->normalizer, (unsigned long long)m->precompiled_charsmap);
    if (m->remove_extra_whitespaces || !m->escape_whitespaces || m->treat_whitespace_as_suffix)
        return tern_status_set(st, TERN_EUNSUPPORTED,
                               "tokenizer: %s: whitespace rules: got remove_extra_whitespaces %d, "
                               "escape_whitespaces %d, treat_whitespace_as_suffix %d, expected 0, "
                               "1, 0 (the Llama-2 settings)",
                               path, m->remove_extra_whitespaces, m->escape_whitespaces,
                               m->treat_whitespace_as_suffix);
    return TERN_OK;
}

tern_code tern_tokenizer_load_spm_file(tern_tokenizer **out, const char *path, tern_status *st)
{
    *out = NULL;
    tern_spm_model m;
    tern_code rc = tern_spm_model_read(path, &m, st);
    if (rc) return rc;
    if (!(rc = supported(&m, path, st))) {
        tern_spm_opts o = {.byte_fallback = m.byte_fallback,
                           .add_dummy_prefix = m.add_dummy_prefix,
                           .space_after_special = true};
        rc = from_pieces(out, m.pieces, m.n_pieces, &o, m.bos_id, m.eos_id, true, path,
                         "spm (tokenizer.model)", st);
    }
    tern_spm_model_free(&m);
    return rc;
}

static char *join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (p) memcpy(p, dir, a), p[a] = '/', memcpy(p + a + 1, name, b + 1);
    return p;
}

/* The JSON object in path; NULL with *rc TERN_OK when the file does not exist. */
static cJSON *read_json(const char *path, tern_code *rc, tern_status *st)
{
    *rc = TERN_OK;
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno != ENOENT)
            *rc = tern_status_set(st, TERN_EIO,
                                  "tokenizer: %s: open: got %s, expected a readable file", path,
                                  strerror(errno));
        return NULL;
    }
    char *b = malloc(JSON_MAX + 1);
    size_t n = b ? fread(b, 1, JSON_MAX + 1, f) : 0;
    fclose(f);
    if (!b) {
        *rc = tern_status_set(st, TERN_ENOMEM, "tokenizer: out of memory");
        return NULL;
    }
    cJSON *j = n <= JSON_MAX ? cJSON_ParseWithLength(b, n) : NULL;
    free(b);
    if (!cJSON_IsObject(j)) {
        *rc = tern_status_set(st, TERN_EFORMAT,
                              "tokenizer: %s: got %s, expected a JSON object of at most %u bytes",
                              path,
                              n > JSON_MAX ? "a larger file"
                              : j          ? "another JSON value"
                                           : "invalid JSON",
                              JSON_MAX);
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}

/* "bos_token": "<s>" or {"content": "<s>", ...}; NULL when absent */
static const char *token_text(const cJSON *cfg, const char *key)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (cJSON_IsObject(j)) j = cJSON_GetObjectItemCaseSensitive(j, "content");
    return cJSON_IsString(j) ? j->valuestring : NULL;
}

typedef struct added {
    const char *text;
    int32_t id;
    bool special;
} added;

static int cmp_added(const void *a, const void *b)
{
    const added *x = a, *y = b;
    return x->id < y->id ? -1 : x->id > y->id;
}

tern_code tern_tokenizer_load_dir(tern_tokenizer **out, const char *dir, tern_status *st)
{
    *out = NULL;
    char *mp = join(dir, "tokenizer.model"), *ap = join(dir, "added_tokens.json"),
         *cp = join(dir, "tokenizer_config.json");
    tern_spm_model m = {0};
    cJSON *aj = NULL, *cj = NULL;
    added *adds = NULL;
    tern_spm_piece *pieces = NULL;
    tern_code rc = TERN_OK;
    if (!mp || !ap || !cp) {
        rc = tern_status_set(st, TERN_ENOMEM, "tokenizer: out of memory");
        goto out;
    }
    if (access(mp, F_OK) != 0) {
        rc = tern_status_set(st, TERN_EUNSUPPORTED,
                             "tokenizer: %s: tokenizer.model: got no such file, expected a "
                             "SentencePiece model in the directory",
                             dir);
        goto out;
    }
    if ((rc = tern_spm_model_read(mp, &m, st)) || (rc = supported(&m, mp, st))) goto out;
    aj = read_json(ap, &rc, st);
    if (rc) goto out;
    cj = read_json(cp, &rc, st);
    if (rc) goto out;
    /* the added tokens of both files, by text */
    const cJSON *dec = cj ? cJSON_GetObjectItemCaseSensitive(cj, "added_tokens_decoder") : NULL;
    const cJSON *extra =
        cj ? cJSON_GetObjectItemCaseSensitive(cj, "additional_special_tokens") : NULL;
    size_t cap = (size_t)cJSON_GetArraySize(aj) + (size_t)cJSON_GetArraySize(dec) + 1, na = 0;
    adds = calloc(cap, sizeof *adds);
    if (!adds) {
        rc = tern_status_set(st, TERN_ENOMEM, "tokenizer: out of memory");
        goto out;
    }
    for (const cJSON *e = dec ? dec->child : NULL; e; e = e->next) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(e, "content");
        const cJSON *sp = cJSON_GetObjectItemCaseSensitive(e, "special");
        char *end = NULL;
        long id = strtol(e->string, &end, 10);
        if (!cJSON_IsString(c) || !c->valuestring[0] || !end || *end || end == e->string ||
            id < 0 || id >= (1L << 24)) {
            rc = tern_status_set(st, TERN_EFORMAT,
                                 "tokenizer: %s: added_tokens_decoder '%.32s': got an entry "
                                 "without content or a bad id, expected \"ID\": {\"content\": ...}",
                                 cp, e->string);
            goto out;
        }
        adds[na++] = (added){c->valuestring, (int32_t)id, !cJSON_IsFalse(sp)};
    }
    for (const cJSON *e = aj ? aj->child : NULL; e; e = e->next) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble >= (double)(1 << 24) ||
            e->valuedouble != (double)(int32_t)e->valuedouble || !e->string[0]) {
            rc = tern_status_set(st, TERN_EFORMAT,
                                 "tokenizer: %s: '%.32s': got a bad id, expected \"TEXT\": ID with "
                                 "ID in 0..2^24",
                                 ap, e->string);
            goto out;
        }
        int32_t id = (int32_t)e->valuedouble;
        size_t k = 0;
        while (k < na && strcmp(adds[k].text, e->string)) k++;
        if (k < na) {
            if (adds[k].id != id) {
                rc = tern_status_set(st, TERN_EFORMAT,
                                     "tokenizer: %s: '%.32s': got id %d, expected %d as in "
                                     "tokenizer_config.json",
                                     ap, e->string, id, adds[k].id);
                goto out;
            }
            continue;
        }
        bool special = false;
        for (const cJSON *x = cJSON_IsArray(extra) ? extra->child : NULL; x; x = x->next)
            special |= cJSON_IsString(x) && !strcmp(x->valuestring, e->string);
        adds[na++] = (added){e->string, id, special};
    }
    qsort(adds, na, sizeof *adds, cmp_added);
    int32_t n = m.n_pieces;
    for (size_t k = 0; k < na; k++)
        if (adds[k].id >= m.n_pieces) n++;
    pieces = calloc((size_t)n, sizeof *pieces);
    if (!pieces) {
        rc = tern_status_set(st, TERN_ENOMEM, "tokenizer: out of memory");
        goto out;
    }
    memcpy(pieces, m.pieces, (size_t)m.n_pieces * sizeof *pieces);
    for (size_t k = 0; k < na; k++) {
        const added *a = &adds[k];
        size_t len = strlen(a->text);
        if (a->id < m.n_pieces) {
            /* a token the model already has: the texts must agree */
            if (m.pieces[a->id].len != len || memcmp(m.pieces[a->id].text, a->text, len)) {
                rc =
                    tern_status_set(st, TERN_EFORMAT,
                                    "tokenizer: %s: added token '%.32s': got id %d, whose piece is "
                                    "'%.32s', expected a piece with the same text",
                                    dir, a->text, a->id, m.pieces[a->id].text);
                goto out;
            }
            continue;
        }
        if (k > 0 && adds[k - 1].id == a->id) {
            rc = tern_status_set(st, TERN_EFORMAT,
                                 "tokenizer: %s: added tokens '%.32s' and '%.32s': got the same id "
                                 "%d, expected one id each",
                                 dir, adds[k - 1].text, a->text, a->id);
            goto out;
        }
        if (a->id >= n) {
            rc = tern_status_set(st, TERN_EFORMAT,
                                 "tokenizer: %s: added token '%.32s': got id %d, expected ids "
                                 "%d..%d without gaps",
                                 dir, a->text, a->id, m.n_pieces, n - 1);
            goto out;
        }
        pieces[a->id] = (tern_spm_piece){(char *)a->text, (uint32_t)len, -1000.0f,
                                         a->special ? TERN_SPM_CONTROL : TERN_SPM_USER_DEFINED};
    }
    for (int32_t i = m.n_pieces; i < n; i++)
        if (!pieces[i].text) {
            rc = tern_status_set(st, TERN_EFORMAT,
                                 "tokenizer: %s: added tokens: got no token with id %d, expected "
                                 "ids %d..%d without gaps",
                                 dir, i, m.n_pieces, n - 1);
            goto out;
        }
    bool add_bos = true, legacy = true;
    const cJSON *j;
    if (cj && cJSON_IsBool(j = cJSON_GetObjectItemCaseSensitive(cj, "add_bos_token")))
        add_bos = cJSON_IsTrue(j);
    if (cj && cJSON_IsBool(j = cJSON_GetObjectItemCaseSensitive(cj, "legacy")))
        legacy = cJSON_IsTrue(j);
    int32_t bos = m.bos_id, eos = m.eos_id;
    const char *names[2] = {cj ? token_text(cj, "bos_token") : NULL,
                            cj ? token_text(cj, "eos_token") : NULL};
    for (int w = 0; w < 2; w++) {
        if (!names[w]) continue;
        int32_t id = -1;
        for (int32_t i = 0; i < n && id < 0; i++)
            if (pieces[i].len == strlen(names[w]) &&
                !memcmp(pieces[i].text, names[w], pieces[i].len))
                id = i;
        if (id < 0) {
            rc = tern_status_set(st, TERN_EFORMAT,
                                 "tokenizer: %s: %s '%.32s': got no token with that text, expected "
                                 "one in the vocabulary",
                                 cp, w ? "eos_token" : "bos_token", names[w]);
            goto out;
        }
        *(w ? &eos : &bos) = id;
    }
    /* HF's non-legacy Llama tokenizer adds no dummy space after a special token (spec 8.2) */
    tern_spm_opts o = {.byte_fallback = m.byte_fallback,
                       .add_dummy_prefix = m.add_dummy_prefix,
                       .space_after_special = legacy};
    rc = from_pieces(out, pieces, n, &o, bos, eos, add_bos, dir, "spm (hf)", st);
out:
    free(pieces);
    free(adds);
    cJSON_Delete(aj);
    cJSON_Delete(cj);
    tern_spm_model_free(&m);
    free(mp), free(ap), free(cp);
    return rc;
}
