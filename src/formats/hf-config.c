/* hf-config.c: Hugging Face config.json (the keys a BitNet checkpoint uses, spec 7.1 and 1.1).
 *
 * Every value is type- and range-checked; a key of the wrong type is an error, never a
 * silent default. Defaults are HF LlamaConfig's for the keys that may be absent. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/formats-internal.h"
#include "ternpipe/safetensors.h"

#define CFG_MAX_BYTES (1u << 20)

static tern_code bad(tern_status *st, const char *name, const char *key, const char *got,
                     const char *want)
{
    return tern_status_set(st, TERN_EFORMAT, "config: %s: key '%s': got %s, expected %s", name, key,
                           got, want);
}

/* integer key in [lo, hi]; absent: dflt when dflt >= lo, else an error */
static tern_code get_int(const cJSON *root, const char *name, const char *key, int64_t lo,
                         int64_t hi, int64_t dflt, int32_t *out, tern_status *st)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!j || cJSON_IsNull(j)) {
        if (dflt < lo) return bad(st, name, key, j ? "null" : "nothing", "the key");
        *out = (int32_t)dflt;
        return TERN_OK;
    }
    if (cJSON_IsArray(j) && cJSON_GetArraySize(j) > 0) j = j->child; /* eos_token_id: [a, b] */
    char got[64], want[64];
    snprintf(want, sizeof want, "an integer in %lld..%lld", (long long)lo, (long long)hi);
    if (!cJSON_IsNumber(j)) return bad(st, name, key, tern_json_kind(j), want);
    double d = j->valuedouble;
    if (d != floor(d) || d < (double)lo || d > (double)hi) {
        snprintf(got, sizeof got, "%.17g", d);
        return bad(st, name, key, got, want);
    }
    *out = (int32_t)d;
    return TERN_OK;
}

static tern_code get_float(const cJSON *root, const char *name, const char *key, double lo,
                           double hi, float dflt, float *out, tern_status *st)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!j) {
        *out = dflt;
        return TERN_OK;
    }
    char got[64], want[64];
    snprintf(want, sizeof want, "a number in (%g, %g)", lo, hi);
    if (!cJSON_IsNumber(j)) return bad(st, name, key, tern_json_kind(j), want);
    double d = j->valuedouble;
    if (!(d > lo && d < hi)) {
        snprintf(got, sizeof got, "%.17g", d);
        return bad(st, name, key, got, want);
    }
    *out = (float)d;
    return TERN_OK;
}

static tern_code get_str(const cJSON *root, const char *name, const char *key, char *out,
                         size_t cap, tern_status *st)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!j || cJSON_IsNull(j)) return TERN_OK;
    if (!cJSON_IsString(j)) return bad(st, name, key, tern_json_kind(j), "a string");
    if (strlen(j->valuestring) >= cap) {
        char want[48];
        snprintf(want, sizeof want, "at most %zu bytes", cap - 1);
        return bad(st, name, key, "a longer string", want);
    }
    snprintf(out, cap, "%s", j->valuestring);
    return TERN_OK;
}

tern_code tern_hf_config_parse(const char *json, size_t len, const char *name, tern_hf_config *cfg,
                               tern_status *st)
{
    memset(cfg, 0, sizeof *cfg);
    cJSON *root = cJSON_ParseWithLength(json, len);
    tern_code rc = TERN_OK;
    if (!cJSON_IsObject(root)) {
        rc = tern_status_set(st, TERN_EFORMAT, "config: %s: got %s, expected a JSON object", name,
                             root ? tern_json_kind(root) : "invalid JSON");
        goto out;
    }
    /* cJSON keeps both copies of a repeated key and finds the first: refuse the ambiguity
     * (the pairwise check is bounded by the key count) */
    if (cJSON_GetArraySize(root) > 1024) {
        char got[32];
        snprintf(got, sizeof got, "%d keys", cJSON_GetArraySize(root));
        rc = tern_status_set(st, TERN_EFORMAT, "config: %s: got %s, expected at most 1024", name,
                             got);
        goto out;
    }
    for (const cJSON *a = root->child; a; a = a->next)
        for (const cJSON *b = a->next; b; b = b->next)
            if (!strcmp(a->string, b->string)) {
                char k[64];
                snprintf(k, sizeof k, "%.40s", a->string);
                rc = bad(st, name, k, "it twice", "it once");
                goto out;
            }
    const cJSON *arch = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    if (arch && !cJSON_IsNull(arch)) {
        if (!cJSON_IsArray(arch) || !cJSON_IsString(arch->child) ||
            strlen(arch->child->valuestring) >= sizeof cfg->architecture) {
            rc = bad(st, name, "architectures", tern_json_kind(arch), "an array of class names");
            goto out;
        }
        snprintf(cfg->architecture, sizeof cfg->architecture, "%s", arch->child->valuestring);
    }
    const int64_t M = INT64_C(1) << 24;
    if ((rc = get_str(root, name, "model_type", cfg->model_type, sizeof cfg->model_type, st)) ||
        (rc = get_str(root, name, "torch_dtype", cfg->torch_dtype, sizeof cfg->torch_dtype, st)) ||
        (rc = get_int(root, name, "hidden_size", 1, M, 0, &cfg->hidden_size, st)) ||
        (rc = get_int(root, name, "intermediate_size", 1, M, 0, &cfg->intermediate_size, st)) ||
        (rc = get_int(root, name, "num_hidden_layers", 1, 4096, 0, &cfg->num_hidden_layers, st)) ||
        (rc = get_int(root, name, "num_attention_heads", 1, 4096, 0, &cfg->num_attention_heads,
                      st)) ||
        (rc = get_int(root, name, "num_key_value_heads", 1, 4096, cfg->num_attention_heads,
                      &cfg->num_key_value_heads, st)) ||
        (rc = get_int(root, name, "head_dim", 0, 4096, 0, &cfg->head_dim, st)) ||
        (rc = get_int(root, name, "max_position_embeddings", 1, M, 2048,
                      &cfg->max_position_embeddings, st)) ||
        (rc = get_int(root, name, "vocab_size", 1, M, 0, &cfg->vocab_size, st)) ||
        (rc = get_int(root, name, "bos_token_id", -1, M, -1, &cfg->bos_token_id, st)) ||
        (rc = get_int(root, name, "eos_token_id", -1, M, -1, &cfg->eos_token_id, st)) ||
        (rc = get_int(root, name, "pad_token_id", -1, M, -1, &cfg->pad_token_id, st)) ||
        (rc = get_float(root, name, "rms_norm_eps", 0.0, 1.0, 1e-6f, &cfg->rms_norm_eps, st)) ||
        (rc = get_float(root, name, "rope_theta", 1.0, 1e12, 10000.0f, &cfg->rope_theta, st)))
        goto out;
    snprintf(cfg->hidden_act, sizeof cfg->hidden_act, "silu"); /* LlamaConfig's default */
    if ((rc = get_str(root, name, "hidden_act", cfg->hidden_act, sizeof cfg->hidden_act, st)))
        goto out;
    const cJSON *tie = cJSON_GetObjectItemCaseSensitive(root, "tie_word_embeddings");
    if (tie && !cJSON_IsBool(tie)) {
        rc = bad(st, name, "tie_word_embeddings", tern_json_kind(tie), "a bool");
        goto out;
    }
    /* HF's default is false, but then lm_head.weight must exist; the loader checks that */
    cfg->tie_word_embeddings = tie && cJSON_IsTrue(tie);
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    if (rs && !cJSON_IsNull(rs)) {
        rc = tern_status_set(st, TERN_EUNSUPPORTED,
                             "config: %s: key 'rope_scaling': got %s, expected null (no RoPE "
                             "scaling in BitNet)",
                             name, tern_json_kind(rs));
        goto out;
    }
out:
    cJSON_Delete(root);
    return rc;
}

tern_code tern_hf_config_read(const char *path, tern_hf_config *cfg, tern_status *st)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return tern_status_set(st, TERN_EIO, "config: %s: open: got %s, expected a readable file",
                               path, strerror(errno));
    char *buf = malloc(CFG_MAX_BYTES + 1);
    size_t n = buf ? fread(buf, 1, CFG_MAX_BYTES + 1, f) : 0;
    fclose(f);
    if (!buf) return tern_status_set(st, TERN_ENOMEM, "config: %s: out of memory", path);
    if (n > CFG_MAX_BYTES) {
        free(buf);
        return tern_status_set(st, TERN_EFORMAT,
                               "config: %s: size: got more than %u bytes, expected less", path,
                               CFG_MAX_BYTES);
    }
    tern_code rc = tern_hf_config_parse(buf, n, path, cfg, st);
    free(buf);
    return rc;
}
