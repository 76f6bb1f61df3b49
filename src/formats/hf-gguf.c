/* hf-gguf.c: a Hugging Face BitNet checkpoint directory as a GGUF (spec 3.1-3.3, 7).
 *
 * Reads config.json, the safetensors (one file or shards) and the tokenizer files, and
 * describes the GGUF the official tools read: 2B-4T (hidden_act relu2) in the official layout
 * (arch bitnet-b1.58, I2_S), the 1bitLLM models (hidden_act silu) in upstream llama.cpp's
 * `bitnet` layout. Projections become ternary with one scale per matrix:
 *   - packed U8 [out/4, in] + weight_scale (2B-4T, spec 3.1): unpacked exactly;
 *   - F32/F16/BF16 masters [out, in] (spec 3.2, 7.3): alpha = max(mean|W|, 1e-5) (the mean in
 *     double, rounded to float), t = clamp(rint(W / alpha), -1, 1) in float.
 * Then encoded as I2_S (exact: one f32 scale), TQ2_0 or TQ1_0 (one f16 scale per 256-block,
 * all equal to alpha rounded to f16), or F16 (exact: the trits as -1, 0, +1 and alpha in an
 * F32 [1] tensor blk.N.<proj>.scale, upstream llama.cpp's 2024-08 bitnet layout). The embedding
 * (and an untied lm_head) are F16 (F32 and BF16 are rounded to nearest even; a value beyond F16's
 * range is refused), norms F32. The vocab: tokenizer.model (+ added tokens) as llama.cpp's "llama"
 * vocab, else tokenizer.json as a byte-level BPE ("gpt2") vocab (hf-tokjson.c).
 *
 * Two uses. tern_hf_open() checks every tensor's name, dtype and shape against config.json
 * and lays out the GGUF (metadata and tensor table) without touching tensor data; each
 * tensor is converted when tern_hf_read() asks for it (tern_gguf_open on a directory), so a
 * pipeline rank reads and ternarizes only its layer slice and its head rows. Errors that only
 * the data shows (a code 3, non-finite masters, a value F16 cannot hold) surface there, on the
 * rank that reads the tensor. tern_hf_convert() converts everything into a GGUF file.
 * Thread-safety: reads may run concurrently; the read bookkeeping is under a lock.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/formats-internal.h"
#include "ternpipe/gguf.h"
#include "ternpipe/log.h"
#include "ternpipe/safetensors.h"
#include "ternpipe/spm.h"

/* How a GGUF tensor is made from its checkpoint tensor. */
typedef enum hf_kind {
    HF_NORM = 0, /* float vector -> F32 */
    HF_F16,      /* float matrix [rows][cols] -> F16, by rows */
    HF_PROJ,     /* projection [out][in] -> ternary (the whole matrix: one scale) */
    HF_SCALE,    /* --type f16: a projection's scale, F32 [1], beside its F16 trits */
    HF_KIND_COUNT
} hf_kind;

typedef struct hf_tensor {
    char name[96]; /* the GGUF name */
    hf_kind kind;
    int32_t layer;               /* -1: not in a layer */
    const tern_st_tensor *src;   /* the checkpoint tensor */
    const tern_st_tensor *scale; /* packed U8: its weight_scale; else NULL */
    uint64_t rows, cols;         /* GGUF ne = {cols, rows}; a norm has one row */
    tern_ggml_type type;         /* GGUF type */
    uint64_t nbytes;             /* in the GGUF encoding */
    /* reads so far (under tern_hf.lock): the hull of the rows read */
    bool read;
    uint64_t r0, r1;
} hf_tensor;

struct tern_hf {
    char *dir;
    tern_st *st;
    tern_hf_config cfg;
    tern_ggml_type type; /* of the projections */
    hf_tensor *t;        /* [n] in GGUF order */
    size_t n, cap;
    uint64_t src_bytes; /* checkpoint bytes of all the tensors above */
    pthread_mutex_t lock;
};

/* open-time context: buffers the writer borrows until it serializes */
typedef struct conv {
    tern_hf *h;
    tern_gguf_writer *w;
    void **bufs;
    size_t n_bufs, cap_bufs;
    bool weights_only; /* no tokenizer files read */
    tern_status *status;
} conv;

static void *keep(conv *c, size_t bytes)
{
    if (c->n_bufs == c->cap_bufs) {
        size_t cap = c->cap_bufs ? 2 * c->cap_bufs : 64;
        void **nb = realloc(c->bufs, cap * sizeof *nb);
        if (!nb) return NULL;
        c->bufs = nb, c->cap_bufs = cap;
    }
    void *p = calloc(1, bytes ? bytes : 1);
    if (p) c->bufs[c->n_bufs++] = p;
    return p;
}

static void drop_bufs(conv *c)
{
    for (size_t i = 0; i < c->n_bufs; i++) free(c->bufs[i]);
    free(c->bufs);
    c->bufs = NULL, c->n_bufs = c->cap_bufs = 0;
}

static tern_code oom(const tern_hf *h, tern_status *st)
{
    return tern_status_set(st, TERN_ENOMEM, "convert: %s: out of memory", h->dir);
}

static tern_code nomem(conv *c)
{
    return oom(c->h, c->status);
}

static uint16_t f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u, e = (x >> 23) & 0xff, m = x & 0x7fffffu;
    if (e == 0xff) return (uint16_t)(sign | 0x7c00u | (m ? 0x200u : 0));
    int32_t he = (int32_t)e - 127 + 15;
    if (he >= 0x1f) return (uint16_t)(sign | 0x7c00u); /* overflow: inf */
    if (he <= 0) {                                     /* subnormal or zero */
        if (he < -10) return (uint16_t)sign;
        m |= 0x800000u;
        uint32_t shift = (uint32_t)(14 - he), half = 1u << (shift - 1);
        uint32_t r = m >> shift, rem = m & ((1u << shift) - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = ((uint32_t)he << 10) | (m >> 13), rem = m & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1))) r++; /* may carry into the exponent */
    return (uint16_t)(sign | r);
}

static const tern_st_tensor *need(conv *c, const char *name, uint64_t d0, uint64_t d1,
                                  tern_code *rc)
{
    const tern_st_tensor *t = tern_st_find(c->h->st, name);
    *rc = TERN_OK;
    if (!t) {
        *rc = tern_status_set(c->status, TERN_EFORMAT,
                              "convert: %s: tensor '%s': got nothing, expected the tensor",
                              c->h->dir, name);
        return NULL;
    }
    bool ok = d1 ? (t->n_dims == 2 && t->shape[0] == d0 && t->shape[1] == d1)
                 : (t->n_dims == 1 && t->shape[0] == d0);
    if (!ok) {
        char got[64] = "[", want[48];
        for (uint32_t i = 0; i < t->n_dims && i < 4; i++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%" PRIu64, i ? ", " : "",
                     t->shape[i]);
        strcat(got, "]");
        if (d1)
            snprintf(want, sizeof want, "[%" PRIu64 ", %" PRIu64 "]", d0, d1);
        else
            snprintf(want, sizeof want, "[%" PRIu64 "]", d0);
        *rc = tern_status_set(c->status, TERN_EFORMAT,
                              "convert: %s: tensor '%s' shape: got %s, expected %s (config.json)",
                              c->h->dir, name, got, want);
        return NULL;
    }
    return t;
}

static tern_code want_float(conv *c, const tern_st_tensor *t)
{
    if (t->dtype == TERN_ST_F32 || t->dtype == TERN_ST_F16 || t->dtype == TERN_ST_BF16)
        return TERN_OK;
    return tern_status_set(c->status, TERN_EUNSUPPORTED,
                           "convert: %s: tensor '%s' dtype: got %s, expected F32, F16 or BF16",
                           c->h->dir, t->name, tern_st_dtype_name(t->dtype));
}

/* appends a tensor to the plan; its size in the GGUF encoding is checked here */
static tern_code plan_add(conv *c, const char *gg, hf_kind kind, int32_t layer,
                          const tern_st_tensor *src, const tern_st_tensor *scale, uint64_t rows,
                          uint64_t cols)
{
    tern_hf *h = c->h;
    if (h->n == h->cap) {
        size_t cap = h->cap ? 2 * h->cap : 64;
        hf_tensor *nt = realloc(h->t, cap * sizeof *nt);
        if (!nt) return nomem(c);
        h->t = nt, h->cap = cap;
    }
    hf_tensor *t = &h->t[h->n];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", gg);
    t->kind = kind, t->layer = layer, t->src = src, t->scale = scale;
    t->rows = rows, t->cols = cols;
    t->type = kind == HF_NORM || kind == HF_SCALE ? TERN_TYPE_F32
              : kind == HF_F16                    ? TERN_TYPE_F16
                                                  : h->type;
    /* rows * cols: both come from config.json integers below 2^24 */
    if (!tern_ggml_nbytes(t->type, cols, rows * cols, &t->nbytes))
        return tern_status_set(c->status, TERN_EUNSUPPORTED,
                               "convert: %s: tensor '%s': got %" PRIu64 " columns, expected a "
                               "multiple of %s's block size",
                               h->dir, src->name, cols, tern_ggml_type_name(t->type));
    if (kind != HF_SCALE) h->src_bytes += src->nbytes + (scale ? scale->nbytes : 0);
    h->n++;
    return TERN_OK;
}

/* norms and other small float vectors: F32 */
static tern_code norm(conv *c, const char *hf, const char *gg, int32_t layer, uint64_t n)
{
    tern_code rc;
    const tern_st_tensor *t = need(c, hf, n, 0, &rc);
    if (!t || (rc = want_float(c, t))) return rc;
    return plan_add(c, gg, HF_NORM, layer, t, NULL, 1, n);
}

/* [rows][cols] float matrix -> F16 */
static tern_code f16_matrix(conv *c, const tern_st_tensor *t, const char *gg)
{
    tern_code rc = want_float(c, t);
    return rc ? rc : plan_add(c, gg, HF_F16, -1, t, NULL, t->shape[0], t->shape[1]);
}

/* one projection [out][in]: packed U8 + weight_scale or float masters */
static tern_code projection(conv *c, const char *hf, const char *gg, int32_t layer, uint64_t out,
                            uint64_t in)
{
    tern_code rc;
    const tern_st_tensor *t = tern_st_find(c->h->st, hf), *s = NULL;
    if (t && t->dtype == TERN_ST_U8) {
        if (out % 4)
            return tern_status_set(c->status, TERN_EFORMAT,
                                   "convert: %s: tensor '%s': got %" PRIu64
                                   " rows, expected a multiple of 4 (packed U8)",
                                   c->h->dir, hf, out);
        if (!(t = need(c, hf, out / 4, in, &rc))) return rc;
        char sn[160];
        snprintf(sn, sizeof sn, "%.*s_scale", (int)strlen(hf), hf); /* weight -> weight_scale */
        s = tern_st_find(c->h->st, sn);
        if (!s || s->n_elements != 1 || want_float(c, s))
            return tern_status_set(c->status, TERN_EFORMAT,
                                   "convert: %s: tensor '%s': got %s, expected one float "
                                   "(the packed weight's scale)",
                                   c->h->dir, sn, s ? "another shape or dtype" : "nothing");
    } else if (!(t = need(c, hf, out, in, &rc)) || (rc = want_float(c, t))) {
        return rc;
    }
    if ((rc = plan_add(c, gg, HF_PROJ, layer, t, s, out, in)) || c->h->type != TERN_TYPE_F16)
        return rc;
    /* F16: the trits as -1, 0, +1 and the scale beside them (blk.N.attn_q.scale), upstream
     * llama.cpp's bitnet layout of 2024-08, which its loader still reads (spec 7.4): exact,
     * where t * alpha in F16 would round alpha */
    char sn[96];
    snprintf(sn, sizeof sn, "%.*s.scale", (int)(strlen(gg) - strlen(".weight")), gg);
    return plan_add(c, sn, HF_SCALE, layer, t, s, 1, 1);
}

/* tokenizer.model + added tokens -> tokenizer.ggml.* (llama.cpp's "llama" vocab) */
static tern_code tokenizer(conv *c)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.model", c->h->dir);
    /* no SentencePiece vocab: tokenizer.json when present, else weights only */
    if (access(path, F_OK) != 0)
        return tern_hf_tokjson_add(c->w, c->h->dir, c->h->cfg.vocab_size, c->status);
    tern_spm_model m;
    tern_spm_hf hf;
    tern_code rc = tern_spm_model_read_dir(c->h->dir, &m, &hf, c->status);
    if (rc) return rc;
    int32_t n = m.n_pieces, nv = c->h->cfg.vocab_size;
    if (n > nv) {
        tern_spm_model_free(&m);
        return tern_status_set(c->status, TERN_EFORMAT,
                               "convert: %s: tokenizer: got %d tokens, expected at most "
                               "vocab_size %d",
                               c->h->dir, n, nv);
    }
    char **texts = keep(c, (size_t)nv * sizeof *texts);
    uint64_t *lens = keep(c, (size_t)nv * sizeof *lens);
    float *scores = keep(c, (size_t)nv * 4);
    int32_t *types = keep(c, (size_t)nv * 4);
    char *pads = keep(c, (size_t)(nv - n) * 16 + 1);
    if (!texts || !lens || !scores || !types || !pads) {
        tern_spm_model_free(&m);
        return nomem(c);
    }
    for (int32_t i = 0; i < nv; i++) {
        if (i < n) {
            texts[i] = keep(c, m.pieces[i].len);
            if (!texts[i]) {
                tern_spm_model_free(&m);
                return nomem(c);
            }
            memcpy(texts[i], m.pieces[i].text, m.pieces[i].len);
            lens[i] = m.pieces[i].len, scores[i] = m.pieces[i].score;
            types[i] = (int32_t)m.pieces[i].type;
        } else { /* embedding rows past the vocab: llama.cpp's [PADi] rows, UNUSED */
            char *p = pads + (size_t)(i - n) * 16;
            lens[i] = (uint64_t)snprintf(p, 16, "[PAD%d]", i);
            texts[i] = p, scores[i] = -1000.0f, types[i] = TERN_SPM_UNUSED;
        }
    }
    tern_gguf_writer *w = c->w;
    tern_gguf_writer_add_str(w, "tokenizer.ggml.model", "llama");
    tern_gguf_writer_add_str(w, "tokenizer.ggml.pre", "default");
    tern_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)texts, lens,
                                 (uint64_t)nv);
    tern_gguf_writer_add_arr(w, "tokenizer.ggml.scores", TERN_GGUF_FLOAT32, scores, (uint64_t)nv);
    tern_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", TERN_GGUF_INT32, types, (uint64_t)nv);
    if (hf.bos >= 0) tern_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)hf.bos);
    if (hf.eos >= 0) tern_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)hf.eos);
    if (m.unk_id >= 0)
        tern_gguf_writer_add_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)m.unk_id);
    if (c->h->cfg.pad_token_id >= 0 && c->h->cfg.pad_token_id < nv)
        tern_gguf_writer_add_u32(w, "tokenizer.ggml.padding_token_id",
                                 (uint32_t)c->h->cfg.pad_token_id);
    tern_gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", hf.add_bos);
    tern_gguf_writer_add_bool(w, "tokenizer.ggml.add_eos_token", false);
    rc = tern_gguf_writer_add_bool(w, "tokenizer.ggml.add_space_prefix", m.add_dummy_prefix)
             ? nomem(c)
             : TERN_OK;
    tern_spm_model_free(&m);
    return rc;
}

/* metadata into the writer and every tensor into the plan, nothing read */
static tern_code plan(conv *c)
{
    const tern_hf_config *h = &c->h->cfg;
    const char *dir = c->h->dir;
    bool silu = !strcmp(h->hidden_act, "silu");
    if (!silu && strcmp(h->hidden_act, "relu2"))
        return tern_status_set(c->status, TERN_EUNSUPPORTED,
                               "convert: %s: hidden_act: got '%s', expected 'silu' or 'relu2'", dir,
                               h->hidden_act);
    if (h->hidden_size % h->num_attention_heads ||
        h->num_attention_heads % h->num_key_value_heads ||
        (h->head_dim && h->head_dim != h->hidden_size / h->num_attention_heads))
        return tern_status_set(c->status, TERN_EUNSUPPORTED,
                               "convert: %s: heads: got hidden %d, %d heads, %d kv heads, head_dim "
                               "%d, expected head_dim = hidden / heads and heads %% kv heads = 0",
                               dir, h->hidden_size, h->num_attention_heads, h->num_key_value_heads,
                               h->head_dim);
    /* 1bitLLM: upstream llama.cpp's layout; 2B-4T: the official one */
    const char *arch = silu ? "bitnet" : "bitnet-b1.58";
    const uint64_t d = (uint64_t)h->hidden_size, ff = (uint64_t)h->intermediate_size,
                   nv = (uint64_t)h->vocab_size, hd = d / (uint64_t)h->num_attention_heads,
                   kv = hd * (uint64_t)h->num_key_value_heads;
    tern_gguf_writer *w = c->w;
    char key[128], hn[160], gn[96];
#define KEY(s) (snprintf(key, sizeof key, "%s." s, arch), key)
    tern_gguf_writer_add_str(w, "general.architecture", arch);
    const char *base = strrchr(dir, '/');
    tern_gguf_writer_add_str(w, "general.name", base && base[1] ? base + 1 : dir);
    /* llama.cpp's LLAMA_FTYPE_MOSTLY_F16, bitnet.cpp's MOSTLY_I2_S */
    if (c->h->type == TERN_TYPE_I2_S || c->h->type == TERN_TYPE_F16)
        tern_gguf_writer_add_u32(w, "general.file_type", c->h->type == TERN_TYPE_F16 ? 1 : 40);
    tern_gguf_writer_add_u32(w, "general.quantization_version", 2);
    tern_gguf_writer_add_u32(w, KEY("vocab_size"), (uint32_t)nv);
    tern_gguf_writer_add_u32(w, KEY("context_length"), (uint32_t)h->max_position_embeddings);
    tern_gguf_writer_add_u32(w, KEY("embedding_length"), (uint32_t)d);
    tern_gguf_writer_add_u32(w, KEY("block_count"), (uint32_t)h->num_hidden_layers);
    tern_gguf_writer_add_u32(w, KEY("feed_forward_length"), (uint32_t)ff);
    tern_gguf_writer_add_u32(w, KEY("rope.dimension_count"), (uint32_t)hd);
    tern_gguf_writer_add_u32(w, KEY("attention.head_count"), (uint32_t)h->num_attention_heads);
    tern_gguf_writer_add_u32(w, KEY("attention.head_count_kv"), (uint32_t)h->num_key_value_heads);
    tern_gguf_writer_add_f32(w, KEY("attention.layer_norm_rms_epsilon"), h->rms_norm_eps);
    tern_gguf_writer_add_f32(w, KEY("rope.freq_base"), h->rope_theta);
    /* explicit, so no reader has to guess (spec 7.4); unknown keys are ignored upstream */
    if (tern_gguf_writer_add_str(w, KEY("hidden_act"), silu ? "silu" : "relu2")) return nomem(c);
#undef KEY
    tern_code rc;
    const tern_st_tensor *e = need(c, "model.embed_tokens.weight", nv, d, &rc);
    if (!e || (rc = f16_matrix(c, e, "token_embd.weight"))) return rc;
    if ((rc = norm(c, "model.norm.weight", "output_norm.weight", -1, d))) return rc;
    const tern_st_tensor *lm = tern_st_find(c->h->st, "lm_head.weight");
    if (lm && !h->tie_word_embeddings) {
        if (!(lm = need(c, "lm_head.weight", nv, d, &rc)) ||
            (rc = f16_matrix(c, lm, "output.weight")))
            return rc;
    } else if (!h->tie_word_embeddings) {
        return tern_status_set(c->status, TERN_EFORMAT,
                               "convert: %s: lm_head.weight: got nothing and "
                               "tie_word_embeddings false, expected one of them",
                               dir);
    }
    for (int l = 0; l < h->num_hidden_layers; l++) {
#define HF(s) (snprintf(hn, sizeof hn, "model.layers.%d." s, l), hn)
#define GG(s) (snprintf(gn, sizeof gn, "blk.%d." s ".weight", l), gn)
        /* the sub-norms have other names in the two families (spec 3.1, 7.2) */
        const char *asub = silu ? "self_attn.inner_attn_ln" : "self_attn.attn_sub_norm";
        const char *fsub = silu ? "mlp.ffn_layernorm" : "mlp.ffn_sub_norm";
        char an[96], fn[96];
        snprintf(an, sizeof an, "model.layers.%d.%s.weight", l, asub);
        snprintf(fn, sizeof fn, "model.layers.%d.%s.weight", l, fsub);
        if ((rc = norm(c, HF("input_layernorm.weight"), GG("attn_norm"), l, d)) ||
            (rc = projection(c, HF("self_attn.q_proj.weight"), GG("attn_q"), l, d, d)) ||
            (rc = projection(c, HF("self_attn.k_proj.weight"), GG("attn_k"), l, kv, d)) ||
            (rc = projection(c, HF("self_attn.v_proj.weight"), GG("attn_v"), l, kv, d)) ||
            (rc = projection(c, HF("self_attn.o_proj.weight"), GG("attn_output"), l, d, d)) ||
            (rc = norm(c, an, GG("attn_sub_norm"), l, d)) ||
            (rc = norm(c, HF("post_attention_layernorm.weight"), GG("ffn_norm"), l, d)) ||
            (rc = projection(c, HF("mlp.gate_proj.weight"), GG("ffn_gate"), l, ff, d)) ||
            (rc = projection(c, HF("mlp.up_proj.weight"), GG("ffn_up"), l, ff, d)) ||
            (rc = projection(c, HF("mlp.down_proj.weight"), GG("ffn_down"), l, d, ff)) ||
            (rc = norm(c, fn, GG("ffn_sub_norm"), l, ff)))
            return rc;
#undef HF
#undef GG
    }
    return c->weights_only ? TERN_OK : tokenizer(c);
}

/* ---- reading one tensor ---- */

static tern_code read_norm(const tern_hf *h, const hf_tensor *t, float *dst, tern_status *st)
{
    (void)h, (void)st;
    tern_st_read_f32(t->src, 0, t->cols, dst);
    return TERN_OK;
}

static tern_code read_f16(const tern_hf *h, const hf_tensor *t, uint64_t r0, uint64_t r1,
                          uint16_t *dst, tern_status *st)
{
    const uint64_t cols = t->cols, i0 = r0 * cols, n = (r1 - r0) * cols;
    const uint64_t es = tern_st_dtype_size(t->src->dtype);
    /* in pieces of 4 Mi elements, each piece's checkpoint pages dropped once converted: the
     * 2B-4T embedding is 657 MB, and holding it beside its copy would be the peak RSS */
    const uint64_t piece = (uint64_t)4 << 20;
    float buf[1024];
    for (uint64_t p0 = 0; p0 < n; p0 += piece) {
        const uint64_t pn = n - p0 < piece ? n - p0 : piece;
        if (t->src->dtype == TERN_ST_F16) {
            memcpy(dst + p0, (const uint8_t *)t->src->data + (i0 + p0) * 2, (size_t)pn * 2);
        } else {
            for (uint64_t i = p0; i < p0 + pn; i += 1024) {
                uint64_t k = p0 + pn - i < 1024 ? p0 + pn - i : 1024;
                tern_st_read_f32(t->src, i0 + i, k, buf);
                for (uint64_t j = 0; j < k; j++) {
                    dst[i + j] = f32_to_f16(buf[j]);
                    if ((dst[i + j] & 0x7c00u) == 0x7c00u)
                        return tern_status_set(st, TERN_ERANGE,
                                               "convert: %s: tensor '%s' element %" PRIu64
                                               ": got %g, expected a value F16 can hold",
                                               h->dir, t->src->name, i0 + i + j, (double)buf[j]);
                }
            }
        }
        tern_st_drop_range(h->st, t->src, (i0 + p0) * es, pn * es);
    }
    return TERN_OK;
}

/* trits [out][in] and the scale of a projection */
static tern_code trits(const tern_hf *h, const hf_tensor *t, int8_t *tr, float *alpha_out,
                       tern_status *st)
{
    const char *hf = t->src->name;
    const uint64_t out = t->rows, in = t->cols, n = out * in;
    float alpha = 0.0f;
    if (t->scale) {
        /* spec 3.1: t[i*P + r][col] = ((B[r][col] >> 2i) & 3) - 1, P = out / 4 */
        tern_st_read_f32(t->scale, 0, 1, &alpha);
        const uint8_t *B = t->src->data;
        uint64_t P = out / 4;
        for (uint64_t r = 0; r < P; r++)
            for (uint64_t col = 0; col < in; col++) {
                uint8_t v = B[r * in + col];
                for (int i = 0; i < 4; i++) {
                    int code = (v >> (2 * i)) & 3;
                    if (code == 3)
                        return tern_status_set(st, TERN_EFORMAT,
                                               "convert: %s: tensor '%s' byte [%" PRIu64
                                               "][%" PRIu64 "]: got code 3, expected 0..2",
                                               h->dir, hf, r, col);
                    tr[((uint64_t)i * P + r) * in + col] = (int8_t)(code - 1);
                }
            }
    } else {
        /* spec 7.3: alpha over the whole matrix, mean in double rounded to float */
        float *row = malloc((size_t)in * 4);
        if (!row) return oom(h, st);
        double sum = 0.0;
        for (uint64_t o = 0; o < out; o++) {
            tern_st_read_f32(t->src, o * in, in, row);
            for (uint64_t k = 0; k < in; k++) sum += fabs((double)row[k]);
        }
        alpha = (float)(sum / (double)n);
        if (!(alpha >= 1e-5f)) alpha = 1e-5f; /* also NaN: caught below */
        if (!isfinite(sum)) {
            free(row);
            return tern_status_set(st, TERN_EFORMAT,
                                   "convert: %s: tensor '%s': got non-finite values, expected "
                                   "finite masters",
                                   h->dir, hf);
        }
        for (uint64_t o = 0; o < out; o++) {
            tern_st_read_f32(t->src, o * in, in, row);
            for (uint64_t k = 0; k < in; k++) {
                float v = rintf(row[k] / alpha);
                tr[o * in + k] = (int8_t)(v > 1.0f ? 1 : v < -1.0f ? -1 : (int)v);
            }
        }
        free(row);
    }
    if (!isfinite(alpha))
        return tern_status_set(st, TERN_EFORMAT,
                               "convert: %s: tensor '%s' scale: got %g, expected finite", h->dir,
                               hf, (double)alpha);
    *alpha_out = alpha;
    return TERN_OK;
}

static tern_code read_proj(const tern_hf *h, const hf_tensor *t, uint8_t *dst, tern_status *st)
{
    const uint64_t n = t->rows * t->cols;
    int8_t *tr = malloc((size_t)n);
    if (!tr) return oom(h, st);
    float alpha = 0.0f;
    tern_code rc = trits(h, t, tr, &alpha, st);
    if (!rc) {
        memset(dst, 0, (size_t)t->nbytes);
        if (t->type == TERN_TYPE_F16) {
            uint16_t *o = (uint16_t *)dst; /* -1, 0, +1 in F16 */
            for (uint64_t i = 0; i < n; i++) o[i] = tr[i] > 0 ? 0x3c00u : tr[i] < 0 ? 0xbc00u : 0;
        } else if (t->type == TERN_TYPE_I2_S)
            tern_enc_i2s(tr, n, alpha, dst);
        else if (t->type == TERN_TYPE_TQ2_0)
            tern_enc_tq2(tr, n, f32_to_f16(alpha), dst);
        else
            tern_enc_tq1(tr, n, f32_to_f16(alpha), dst);
    }
    free(tr);
    return rc;
}

/* the scale alone (trits are cheap next to the checkpoint read; one code path for both) */
static tern_code read_scale(const tern_hf *h, const hf_tensor *t, float *dst, tern_status *st)
{
    hf_tensor p = *t;
    p.rows = t->src->dtype == TERN_ST_U8 ? t->src->shape[0] * 4 : t->src->shape[0];
    p.cols = t->src->shape[1];
    int8_t *tr = malloc((size_t)(p.rows * p.cols));
    if (!tr) return oom(h, st);
    tern_code rc = trits(h, &p, tr, dst, st);
    free(tr);
    return rc;
}

tern_code tern_hf_read(tern_hf *h, uint64_t i, uint64_t r0, uint64_t r1, void *dst, tern_status *st)
{
    if (i >= h->n) tern_die("hf: tensor %" PRIu64 " of %zu", i, h->n);
    const hf_tensor *t = &h->t[i];
    /* the caller (tern_gguf_tensor_read) checked the rows; a projection is read whole */
    TERN_ASSERT(r0 <= r1 && r1 <= t->rows && (t->kind != HF_PROJ || (r0 == 0 && r1 == t->rows)));
    tern_code rc = t->kind == HF_NORM    ? read_norm(h, t, dst, st)
                   : t->kind == HF_F16   ? read_f16(h, t, r0, r1, dst, st)
                   : t->kind == HF_SCALE ? read_scale(h, t, dst, st)
                                         : read_proj(h, t, dst, st);
    /* the checkpoint's pages of this tensor are not needed again */
    tern_st_drop_pages(h->st, t->src);
    pthread_mutex_lock(&h->lock);
    hf_tensor *m = &h->t[i];
    if (r1 > r0) {
        m->r0 = m->read && m->r0 < r0 ? m->r0 : r0;
        m->r1 = m->read && m->r1 > r1 ? m->r1 : r1;
        m->read = true;
    }
    pthread_mutex_unlock(&h->lock);
    return rc;
}

/* ---- open, convert, close ---- */

tern_code tern_hf_open(tern_hf **out, const char *dir, int type_id, bool weights_only,
                       tern_gguf_writer *w, tern_status *st)
{
    *out = NULL;
    tern_ggml_type type = (tern_ggml_type)type_id;
    if (type != TERN_TYPE_I2_S && type != TERN_TYPE_TQ2_0 && type != TERN_TYPE_TQ1_0 &&
        type != TERN_TYPE_F16)
        return tern_status_set(st, TERN_EUNSUPPORTED,
                               "convert: type: got %s, expected I2_S, TQ2_0, TQ1_0 or F16",
                               tern_ggml_type_name(type) ? tern_ggml_type_name(type) : "unknown");
    tern_hf *h = calloc(1, sizeof *h);
    if (!h || !(h->dir = strdup(dir))) {
        free(h);
        return tern_status_set(st, TERN_ENOMEM, "convert: %s: out of memory", dir);
    }
    h->type = type;
    pthread_mutex_init(&h->lock, NULL);
    conv c = {.h = h, .w = w, .weights_only = weights_only, .status = st};
    char cp[4096];
    snprintf(cp, sizeof cp, "%s/config.json", dir);
    tern_code rc = tern_hf_config_read(cp, &h->cfg, st);
    if (!rc) rc = tern_st_open_dir(&h->st, dir, st);
    if (!rc) rc = plan(&c);
    /* the writer has copied the vocab */
    drop_bufs(&c);
    if (rc) {
        tern_hf_close(h);
        return rc;
    }
    for (size_t i = 0; i < h->n; i++) {
        const hf_tensor *t = &h->t[i];
        uint64_t ne[2] = {t->cols, t->rows};
        if ((rc = tern_gguf_writer_add_tensor(w, t->name, t->type, t->kind == HF_NORM ? 1 : 2, ne,
                                              NULL, st))) {
            tern_hf_close(h);
            return rc;
        }
    }
    *out = h;
    return TERN_OK;
}

void tern_hf_close(tern_hf *h)
{
    if (!h) return;
    tern_st_close(h->st);
    pthread_mutex_destroy(&h->lock);
    free(h->t);
    free(h->dir);
    free(h);
}

uint64_t tern_hf_n_tensors(const tern_hf *h)
{
    return h->n;
}

/* The header first, then each tensor converted, written and freed in turn: the peak is one
 * tensor (the embedding), not the whole converted model. The bytes are the writer's layout
 * (tensors in table order, each padded to the default alignment). */
tern_code tern_hf_convert(const char *dir, const char *out_path, int type_id, tern_status *st)
{
    return tern_hf_convert_progress(dir, out_path, type_id, NULL, NULL, st);
}

tern_code tern_hf_convert_progress(const char *dir, const char *out_path, int type_id,
                                   void (*progress)(void *user, int64_t done, int64_t total),
                                   void *user, tern_status *st)
{
    tern_hf *h = NULL;
    tern_gguf_writer *w = tern_gguf_writer_new();
    if (!w) return tern_status_set(st, TERN_ENOMEM, "convert: %s: out of memory", dir);
    uint8_t *head = NULL;
    size_t len = 0;
    uint64_t size = 0;
    FILE *f = NULL;
    tern_code rc = tern_hf_open(&h, dir, type_id, false, w, st);
    if (!rc) rc = tern_gguf_writer_header(w, &head, &len, &size, st);
    tern_gguf_writer_free(w);
    if (!rc && !(f = fopen(out_path, "wb")))
        rc = tern_status_set(st, TERN_EIO, "convert: %s: open: got %s, expected a writable file",
                             out_path, strerror(errno));
    bool wrote = !rc && fwrite(head, 1, len, f) == len;
    free(head);
    static const uint8_t zeros[TERN_GGUF_DEFAULT_ALIGNMENT] = {0};
    int64_t total = 0, done = 0;
    for (size_t i = 0; !rc && h && i < h->n; i++) total += (int64_t)h->t[i].nbytes;
    for (size_t i = 0; !rc && wrote && i < h->n; i++) {
        const uint64_t nb = h->t[i].nbytes,
                       pad = (TERN_GGUF_DEFAULT_ALIGNMENT - nb % TERN_GGUF_DEFAULT_ALIGNMENT) %
                             TERN_GGUF_DEFAULT_ALIGNMENT;
        void *data = malloc((size_t)nb ? (size_t)nb : 1);
        if (!data)
            rc = oom(h, st);
        else if (!(rc = tern_hf_read(h, i, 0, h->t[i].rows, data, st)))
            wrote = fwrite(data, 1, (size_t)nb, f) == nb && fwrite(zeros, 1, (size_t)pad, f) == pad;
        free(data);
        done += (int64_t)nb;
        if (progress && !rc) progress(user, done, total);
    }
    if (f && fclose(f) != 0) wrote = false;
    if (!rc && !wrote)
        rc = tern_status_set(st, TERN_EIO, "convert: %s: write: got %s, expected the file written",
                             out_path, strerror(errno));
    if (rc && f) unlink(out_path);
    tern_hf_close(h);
    return rc;
}

/* ---- what was read; the handshake checksum ---- */

size_t tern_hf_describe_reads(const tern_hf *h, char *buf, size_t cap)
{
    tern_hf *m = (tern_hf *)h; /* the lock only */
    pthread_mutex_lock(&m->lock);
    uint64_t n_read = 0, n_all = 0; /* checkpoint tensors: a packed weight's scale too */
    uint64_t bytes = 0;             /* of the rows read, each counted once */
    for (size_t i = 0; i < h->n; i++) {
        const hf_tensor *t = &h->t[i];
        if (t->kind == HF_SCALE) continue; /* its checkpoint tensors are its projection's */
        uint64_t k = t->scale ? 2 : 1;
        n_all += k, n_read += t->read ? k : 0;
        if (t->read)
            bytes += t->kind == HF_F16
                         ? (t->r1 - t->r0) * t->cols * tern_st_dtype_size(t->src->dtype)
                         : t->src->nbytes + (t->scale ? t->scale->nbytes : 0);
    }
    size_t len = 0;
#define PUT(...)                                                                                   \
    do {                                                                                           \
        int k_ = snprintf(buf + len, len < cap ? cap - len : 0, __VA_ARGS__);                      \
        if (k_ > 0) len += (size_t)k_;                                                             \
    } while (0)
    PUT("read %" PRIu64 " of %" PRIu64 " checkpoint tensors (%.1f of %.1f MB): layers", n_read,
        n_all, (double)bytes / 1e6, (double)h->src_bytes / 1e6);
    /* the layers any of whose tensors were read, as ranges [a,b) */
    int32_t nl = h->cfg.num_hidden_layers, run = -1, n_runs = 0;
    for (int32_t l = 0; l <= nl; l++) {
        bool any = false;
        for (size_t i = 0; l < nl && i < h->n; i++) any |= h->t[i].layer == l && h->t[i].read;
        if (any && run < 0) run = l;
        if (!any && run >= 0) {
            PUT("%s[%d,%d)", n_runs++ ? "," : " ", run, l);
            run = -1;
        }
    }
    if (!n_runs) PUT(" none");
    for (size_t i = 0; i < h->n; i++) {
        const hf_tensor *t = &h->t[i];
        if (t->layer >= 0 || !t->read) continue;
        if (t->kind == HF_F16)
            PUT(", %s rows [%" PRIu64 ",%" PRIu64 ")", t->src->name, t->r0, t->r1);
        else
            PUT(", %s", t->src->name);
    }
#undef PUT
    pthread_mutex_unlock(&m->lock);
    return len;
}

uint64_t tern_hf_checksum(const tern_hf *h, uint64_t hash)
{
    /* FNV-1a over the checkpoint tensors the GGUF is made of, with tern_gguf_checksum's
     * rule for the data: whole tensors when they total up to 64 MiB, else 64 bytes every
     * 256 KiB and the last 64, the sampled pages dropped every 16 MiB */
#define MIX(p, n)                                                                                  \
    for (size_t i_ = 0; i_ < (size_t)(n); i_++)                                                    \
    hash = (hash ^ ((const uint8_t *)(p))[i_]) * 1099511628211ULL
    MIX(&h->src_bytes, 8);
    const uint64_t stride = h->src_bytes <= ((uint64_t)64 << 20) ? 64 : 256 * 1024;
    const uint64_t piece = (uint64_t)16 << 20;
    for (size_t i = 0; i < 2 * h->n; i++) {
        const tern_st_tensor *s = i % 2 ? h->t[i / 2].scale : h->t[i / 2].src;
        if (!s || h->t[i / 2].kind == HF_SCALE) continue;
        MIX(s->name, strlen(s->name));
        MIX(&s->dtype, sizeof s->dtype);
        MIX(s->shape, sizeof s->shape);
        const uint8_t *p = s->data;
        for (uint64_t off = 0; off < s->nbytes; off += stride) {
            MIX(p + off, s->nbytes - off < 64 ? s->nbytes - off : 64);
            if (stride > 64 && off % piece + stride >= piece)
                tern_st_drop_range(h->st, s, off / piece * piece, piece);
        }
        if (s->nbytes >= 64) MIX(p + s->nbytes - 64, 64);
        if (stride > 64) tern_st_drop_pages(h->st, s);
    }
#undef MIX
    return hash;
}
