/* spm-dir.c: the SentencePiece vocabulary of a Hugging Face directory: tokenizer.model plus
 * added_tokens.json and tokenizer_config.json.
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

#include "ternpipe/spm.h"

#define JSON_MAX (16u << 20)

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

tern_code tern_spm_model_read_dir(const char *dir, tern_spm_model *out, tern_spm_hf *hf,
                                  tern_status *st)
{
    memset(out, 0, sizeof *out);
    memset(hf, 0, sizeof *hf);
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
    if ((rc = tern_spm_model_read(mp, &m, st))) goto out;
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
    int32_t n_model = m.n_pieces;
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
        char *copy = strdup(a->text);
        if (!copy) {
            rc = tern_status_set(st, TERN_ENOMEM, "tokenizer: out of memory");
            goto out;
        }
        pieces[a->id] = (tern_spm_piece){copy, (uint32_t)len, -1000.0f,
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
    hf->bos = bos, hf->eos = eos, hf->add_bos = add_bos, hf->legacy = legacy;
    hf->n_added = n - n_model;
    /* the model takes the extended piece list (its own texts and the added copies) */
    free(m.pieces);
    m.pieces = pieces, m.n_pieces = n;
    pieces = NULL;
    *out = m;
    memset(&m, 0, sizeof m);
out:
    if (pieces)
        for (int32_t i = m.n_pieces; i < n; i++) free(pieces[i].text);
    free(pieces);
    free(adds);
    cJSON_Delete(aj);
    cJSON_Delete(cj);
    tern_spm_model_free(&m);
    free(mp), free(ap), free(cp);
    return rc;
}
