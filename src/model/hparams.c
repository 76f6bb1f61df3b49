/* hparams.c: hyperparameters of the BitNet b1.58 graph from GGUF metadata. */
#include <stdio.h>
#include <string.h>

#include "ternpipe/log.h"
#include "ternpipe/model.h"

static tern_code get_u32_key(const tern_gguf *g, const char *arch, const char *suffix, int32_t *out,
                             bool required, int32_t dflt, tern_status *st)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    if (!tern_gguf_find(g, key)) {
        if (required)
            return tern_status_set(st, TERN_EFORMAT,
                                   "model: %s: metadata '%s': got nothing, expected the key",
                                   tern_gguf_path(g), key);
        *out = dflt;
        return TERN_OK;
    }
    uint32_t v;
    tern_code rc = tern_gguf_get_u32(g, key, &v, st);
    if (rc) return rc;
    if (v == 0 || v > (1u << 24))
        return tern_status_set(st, TERN_ERANGE, "model: %s: %s: got %u, expected 1..16777216",
                               tern_gguf_path(g), key, v);
    *out = (int32_t)v;
    return TERN_OK;
}

static tern_code get_f32_key(const tern_gguf *g, const char *arch, const char *suffix, float *out,
                             float dflt, tern_status *st)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    if (!tern_gguf_find(g, key)) {
        *out = dflt;
        return TERN_OK;
    }
    return tern_gguf_get_f32(g, key, out, st);
}

tern_code tern_hparams_read(const tern_gguf *g, tern_hparams *hp, tern_status *st)
{
    memset(hp, 0, sizeof *hp);
    const char *path = tern_gguf_path(g);
    tern_gguf_str arch;
    tern_code rc = tern_gguf_get_str(g, "general.architecture", &arch, st);
    if (rc) return rc;
    bool upstream = tern_gguf_str_eq(arch, "bitnet");
    if (!tern_gguf_str_eq(arch, "bitnet-b1.58") && !tern_gguf_str_eq(arch, "bitnet-25") &&
        !upstream) {
        char shown[40];
        snprintf(shown, sizeof shown, "%.*s", (int)(arch.len > 32 ? 32 : arch.len), arch.ptr);
        return tern_status_set(st, TERN_EUNSUPPORTED,
                               "model: %s: architecture: got '%s', expected 'bitnet-b1.58', "
                               "'bitnet-25' or 'bitnet'",
                               path, shown);
    }
    snprintf(hp->arch, sizeof hp->arch, "%.*s", (int)arch.len, arch.ptr);
    if ((rc = get_u32_key(g, hp->arch, "embedding_length", &hp->d, true, 0, st)) ||
        (rc = get_u32_key(g, hp->arch, "block_count", &hp->n_layer, true, 0, st)) ||
        (rc = get_u32_key(g, hp->arch, "feed_forward_length", &hp->n_ff, true, 0, st)) ||
        (rc = get_u32_key(g, hp->arch, "attention.head_count", &hp->n_head, true, 0, st)) ||
        (rc = get_u32_key(g, hp->arch, "attention.head_count_kv", &hp->n_head_kv, false, hp->n_head,
                          st)) ||
        (rc = get_u32_key(g, hp->arch, "context_length", &hp->n_ctx, false, 4096, st)) ||
        (rc = get_f32_key(g, hp->arch, "attention.layer_norm_rms_epsilon", &hp->eps, 1e-5f, st)) ||
        (rc = get_f32_key(g, hp->arch, "rope.freq_base", &hp->rope_theta, 10000.0f, st)))
        return rc;
    /* vocab: the key, else the token embedding's rows (checked against the tensor later) */
    const tern_gguf_tensor *emb = tern_gguf_find_tensor(g, "token_embd.weight");
    int32_t vocab_dflt =
        emb && emb->n_dims == 2 && emb->ne[1] < (1u << 24) ? (int32_t)emb->ne[1] : 0;
    if ((rc =
             get_u32_key(g, hp->arch, "vocab_size", &hp->n_vocab, vocab_dflt == 0, vocab_dflt, st)))
        return rc;
    if (hp->d % hp->n_head != 0)
        return tern_status_set(st, TERN_EFORMAT,
                               "model: %s: embedding_length %d: got a remainder mod head_count %d, "
                               "expected a multiple",
                               path, hp->d, hp->n_head);
    hp->head_dim = hp->d / hp->n_head;
    if (hp->n_head % hp->n_head_kv != 0)
        return tern_status_set(st, TERN_EFORMAT,
                               "model: %s: head_count_kv: got %d, expected a divisor of "
                               "head_count %d",
                               path, hp->n_head_kv, hp->n_head);
    int32_t rope_dims;
    if ((rc =
             get_u32_key(g, hp->arch, "rope.dimension_count", &rope_dims, false, hp->head_dim, st)))
        return rc;
    if (rope_dims != hp->head_dim || hp->head_dim % 2 != 0)
        return tern_status_set(st, TERN_EUNSUPPORTED,
                               "model: %s: rope.dimension_count: got %d, expected head_dim %d "
                               "(even; partial rotary is not part of BitNet)",
                               path, rope_dims, hp->head_dim);
    /* the ternary layout packs 16 input columns per chunk (any multiple of 16 works: the 3B
     * sibling's 3200 and 8640 are not multiples of 256 or even 128) */
    if (hp->d % 16 != 0 || hp->n_ff % 16 != 0)
        return tern_status_set(st, TERN_EUNSUPPORTED,
                               "model: %s: embedding_length %d / feed_forward_length %d: got "
                               "sizes that are not multiples of 16, expected multiples of 16",
                               path, hp->d, hp->n_ff);
    if (!(hp->eps > 0.0f && hp->eps < 1.0f))
        return tern_status_set(st, TERN_ERANGE,
                               "model: %s: layer_norm_rms_epsilon: got %g, expected (0, 1)", path,
                               (double)hp->eps);
    /* the FFN activation (spec 7.4) */
    char key[64];
    snprintf(key, sizeof key, "%s.hidden_act", hp->arch);
    tern_gguf_str act, tm = {"", 0};
    if (tern_gguf_find(g, key)) {
        if ((rc = tern_gguf_get_str(g, key, &act, st))) return rc;
        if (!tern_gguf_str_eq(act, "silu") && !tern_gguf_str_eq(act, "relu2"))
            return tern_status_set(st, TERN_EUNSUPPORTED,
                                   "model: %s: %s: got '%.*s', expected 'silu' or 'relu2'", path,
                                   key, (int)(act.len > 16 ? 16 : act.len), act.ptr);
        hp->act = tern_gguf_str_eq(act, "silu") ? TERN_ACT_SILU : TERN_ACT_RELU2;
        snprintf(hp->act_rule, sizeof hp->act_rule, "the key <arch>.hidden_act");
    } else if (upstream) {
        hp->act = TERN_ACT_SILU;
        snprintf(hp->act_rule, sizeof hp->act_rule, "arch bitnet without a key");
    } else {
        tern_gguf_get_str(g, "tokenizer.ggml.model", &tm, NULL);
        bool spm_shapes = hp->n_head_kv == hp->n_head && tern_gguf_str_eq(tm, "llama");
        hp->act = spm_shapes ? TERN_ACT_SILU : TERN_ACT_RELU2;
        snprintf(hp->act_rule, sizeof hp->act_rule, "%s",
                 spm_shapes ? "1bitLLM shapes (no GQA, SentencePiece vocab)"
                            : "2B-4T layout (arch default)");
    }
    const tern_gguf_tensor *ht = tern_gguf_find_tensor(g, "output.weight");
    if (!ht) ht = tern_gguf_find_tensor(g, "token_embd.weight");
    hp->head_table = ht && tern_type_is_quant(ht->type) ? ht->type : (tern_ggml_type)0;
    tern_log(TERN_LOG_DEBUG, "model: %s: FFN activation %s (%s)", path,
             hp->act == TERN_ACT_SILU ? "silu" : "relu2", hp->act_rule);
    if (!(hp->rope_theta > 1.0f))
        return tern_status_set(st, TERN_ERANGE, "model: %s: rope.freq_base: got %g, expected > 1",
                               path, (double)hp->rope_theta);
    return TERN_OK;
}
