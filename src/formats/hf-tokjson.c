/* hf-tokjson.c: a Hugging Face tokenizer.json (tokenizers' byte-level BPE: vocab, merges,
 * added tokens, the pre-tokenizer) as GGUF tokenizer.ggml.* keys (gpt2 model), so a 2B-4T
 * directory needs no GGUF vocab (spec 4).
 *
 * Accepted: model.type BPE without byte_fallback; a pre_tokenizer that is the Llama-3 Split
 * regex followed by ByteLevel(use_regex false) -> pre "llama-bpe", or ByteLevel(use_regex
 * true) alone -> "gpt-2". Ids must cover 0..n-1 exactly once (vocab and added tokens
 * together; rows of the embedding past them become UNUSED [PADi] tokens). BOS/EOS come from
 * tokenizer_config.json by text. Everything else is refused with a one-line message. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/formats-internal.h"
#include "ternpipe/gguf.h"

#define TOKJSON_MAX (256u << 20)

static const char *LLAMA3_RE =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

static tern_code bad(tern_status *st, const char *path, const char *what, const char *got,
                     const char *want)
{
    return tern_status_set(st, TERN_EUNSUPPORTED, "tokenizer.json: %s: %s: got %s, expected %s",
                           path, what, got, want);
}

static cJSON *load(const char *path, tern_code *rc, tern_status *st)
{
    FILE *f = fopen(path, "rb");
    *rc = TERN_OK;
    if (!f) return NULL;
    char *b = malloc(TOKJSON_MAX + 1);
    size_t n = b ? fread(b, 1, TOKJSON_MAX + 1, f) : 0;
    fclose(f);
    cJSON *j = b && n <= TOKJSON_MAX ? cJSON_ParseWithLength(b, n) : NULL;
    free(b);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        *rc =
            tern_status_set(st, TERN_EFORMAT,
                            "tokenizer.json: %s: got %s, expected a JSON object of at most %u "
                            "bytes",
                            path, n > TOKJSON_MAX ? "a larger file" : "invalid JSON", TOKJSON_MAX);
    }
    return j;
}

/* "llama-bpe", "gpt-2" or NULL */
static const char *pre_of(const cJSON *pt)
{
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(pt, "type");
    if (!cJSON_IsString(type)) return NULL;
    if (!strcmp(type->valuestring, "ByteLevel")) {
        const cJSON *re = cJSON_GetObjectItemCaseSensitive(pt, "use_regex");
        return cJSON_IsFalse(re) ? NULL : "gpt-2";
    }
    if (strcmp(type->valuestring, "Sequence")) return NULL;
    const cJSON *seq = cJSON_GetObjectItemCaseSensitive(pt, "pretokenizers");
    if (cJSON_GetArraySize(seq) != 2) return NULL;
    const cJSON *split = seq->child, *bl = seq->child->next;
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(split, "pattern");
    const cJSON *re = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(split, "type");
    const cJSON *bt = cJSON_GetObjectItemCaseSensitive(bl, "type");
    if (!cJSON_IsString(st) || strcmp(st->valuestring, "Split") || !cJSON_IsString(re) ||
        strcmp(re->valuestring, LLAMA3_RE) || !cJSON_IsString(bt) ||
        strcmp(bt->valuestring, "ByteLevel") ||
        cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(bl, "use_regex")))
        return NULL;
    return "llama-bpe";
}

static const char *token_text(const cJSON *cfg, const char *key)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (cJSON_IsObject(j)) j = cJSON_GetObjectItemCaseSensitive(j, "content");
    return cJSON_IsString(j) ? j->valuestring : NULL;
}

tern_code tern_hf_tokjson_add(tern_gguf_writer *w, const char *dir, int32_t n_vocab,
                              tern_status *st)
{
    char path[4096], cpath[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    snprintf(cpath, sizeof cpath, "%s/tokenizer_config.json", dir);
    tern_code rc;
    cJSON *j = load(path, &rc, st);
    if (!j) return rc; /* no file: no vocab (rc OK) */
    cJSON *cfg = load(cpath, &rc, st);
    const char **texts = NULL;
    uint64_t *lens = NULL;
    int32_t *types = NULL;
    float *scores = NULL;
    char **mstr = NULL, *pads = NULL;
    uint64_t *mlen = NULL;
    int nm = 0;
    if (rc) goto out;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(j, "model");
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(model, "type");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(j, "added_tokens");
    if (!cJSON_IsString(mt) || strcmp(mt->valuestring, "BPE") || !cJSON_IsObject(vocab) ||
        !cJSON_IsArray(merges)) {
        rc = bad(st, path, "model", "something other than BPE with vocab and merges",
                 "a byte-level BPE model");
        goto out;
    }
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "byte_fallback"))) {
        rc = bad(st, path, "model.byte_fallback", "true", "false (byte-level BPE)");
        goto out;
    }
    const char *pre = pre_of(cJSON_GetObjectItemCaseSensitive(j, "pre_tokenizer"));
    if (!pre) {
        rc = bad(st, path, "pre_tokenizer", "another pre-tokenizer",
                 "the Llama-3 Split regex + ByteLevel, or GPT-2's ByteLevel");
        goto out;
    }
    texts = calloc((size_t)n_vocab, sizeof *texts);
    lens = calloc((size_t)n_vocab, sizeof *lens);
    types = calloc((size_t)n_vocab, sizeof *types);
    scores = calloc((size_t)n_vocab, sizeof *scores);
    pads = calloc((size_t)n_vocab, 16);
    if (!texts || !lens || !types || !scores || !pads) {
        rc = tern_status_set(st, TERN_ENOMEM, "tokenizer.json: out of memory");
        goto out;
    }
    /* vocab then added tokens: every id once */
    for (int pass = 0; pass < 2; pass++)
        for (const cJSON *e = pass ? (cJSON_IsArray(added) ? added->child : NULL) : vocab->child; e;
             e = e->next) {
            const cJSON *idj = pass ? cJSON_GetObjectItemCaseSensitive(e, "id") : e;
            const char *text = pass ? token_text(e, "content") : e->string;
            double id = cJSON_IsNumber(idj) ? idj->valuedouble : -1;
            if (!text || !text[0] || id < 0 || id >= n_vocab || id != (double)(int32_t)id) {
                char got[96];
                snprintf(got, sizeof got, "'%.32s' with id %g", text ? text : "?", id);
                char want[64];
                snprintf(want, sizeof want, "a non-empty token with an id in 0..%d", n_vocab - 1);
                rc = bad(st, path, pass ? "added_tokens" : "model.vocab", got, want);
                goto out;
            }
            int32_t i = (int32_t)id;
            if (texts[i]) {
                if (pass && !strcmp(texts[i], text)) continue; /* the same token listed twice */
                char got[96];
                snprintf(got, sizeof got, "id %d for '%.32s' and '%.32s'", i, texts[i], text);
                rc = bad(st, path, "ids", got, "one token per id");
                goto out;
            }
            texts[i] = text, lens[i] = strlen(text);
            types[i] =
                pass ? (cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(e, "special")) ? 4 : 3) : 1;
            scores[i] = pass ? 0.0f : -(float)i;
        }
    for (int32_t i = 0; i < n_vocab; i++)
        if (!texts[i]) { /* embedding rows without a token */
            char *p = pads + (size_t)i * 16;
            lens[i] = (uint64_t)snprintf(p, 16, "[PAD%d]", i);
            texts[i] = p, types[i] = 5, scores[i] = -1000.0f;
        }
    nm = cJSON_GetArraySize(merges);
    mstr = calloc((size_t)nm + 1, sizeof *mstr);
    mlen = calloc((size_t)nm + 1, sizeof *mlen);
    if (!mstr || !mlen) {
        rc = tern_status_set(st, TERN_ENOMEM, "tokenizer.json: out of memory");
        goto out;
    }
    int k = 0;
    for (const cJSON *e = merges->child; e; e = e->next, k++) {
        /* "a b" (tokenizers < 0.20) or ["a", "b"] (newer) */
        if (cJSON_IsString(e) && strchr(e->valuestring, ' ')) {
            mstr[k] = strdup(e->valuestring);
        } else if (cJSON_GetArraySize(e) == 2 && cJSON_IsString(e->child) &&
                   cJSON_IsString(e->child->next)) {
            size_t a = strlen(e->child->valuestring), b = strlen(e->child->next->valuestring);
            if ((mstr[k] = malloc(a + b + 2)))
                snprintf(mstr[k], a + b + 2, "%s %s", e->child->valuestring,
                         e->child->next->valuestring);
        } else {
            char got[48];
            snprintf(got, sizeof got, "entry %d in another form", k);
            rc = bad(st, path, "model.merges", got, "\"A B\" or [\"A\", \"B\"]");
            goto out;
        }
        if (!mstr[k]) {
            rc = tern_status_set(st, TERN_ENOMEM, "tokenizer.json: out of memory");
            goto out;
        }
        mlen[k] = strlen(mstr[k]);
    }
    tern_gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2");
    tern_gguf_writer_add_str(w, "tokenizer.ggml.pre", pre);
    tern_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", texts, lens, (uint64_t)n_vocab);
    tern_gguf_writer_add_arr(w, "tokenizer.ggml.scores", TERN_GGUF_FLOAT32, scores,
                             (uint64_t)n_vocab);
    tern_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", TERN_GGUF_INT32, types,
                             (uint64_t)n_vocab);
    tern_gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", (const char *const *)mstr, mlen,
                                 (uint64_t)nm);
    const char *names[2] = {cfg ? token_text(cfg, "bos_token") : NULL,
                            cfg ? token_text(cfg, "eos_token") : NULL};
    const char *keys[2] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"};
    for (int b = 0; b < 2; b++) {
        if (!names[b]) continue;
        int32_t id = -1;
        for (int32_t i = 0; i < n_vocab && id < 0; i++)
            if (!strcmp(texts[i], names[b])) id = i;
        if (id < 0) {
            char got[64];
            snprintf(got, sizeof got, "'%.32s'", names[b]);
            rc = bad(st, cpath, b ? "eos_token" : "bos_token", got, "a token of tokenizer.json");
            goto out;
        }
        tern_gguf_writer_add_u32(w, keys[b], (uint32_t)id);
    }
    if (tern_gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", true))
        rc = tern_status_set(st, TERN_ENOMEM, "tokenizer.json: out of memory");
out:
    for (int i = 0; mstr && i < nm; i++) free(mstr[i]);
    free(mstr), free(mlen), free(texts), free(lens), free(types), free(scores), free(pads);
    cJSON_Delete(cfg);
    cJSON_Delete(j);
    return rc;
}
