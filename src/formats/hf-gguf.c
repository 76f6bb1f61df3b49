/* hf-gguf.c: a Hugging Face BitNet checkpoint directory -> GGUF (spec 3.1-3.3, 7).
 *
 * Reads config.json, the safetensors (one file or shards) and the tokenizer files, and writes
 * the GGUF the official tools read: 2B-4T (hidden_act relu2) in the official layout (arch
 * bitnet-b1.58, I2_S), the 1bitLLM models (hidden_act silu) in upstream llama.cpp's `bitnet`
 * layout. Projections become ternary with one scale per matrix:
 *   - packed U8 [out/4, in] + weight_scale (2B-4T, spec 3.1): unpacked exactly;
 *   - F32/F16/BF16 masters [out, in] (spec 3.2, 7.3): alpha = max(mean|W|, 1e-5) (the mean in
 *     double, rounded to float), t = clamp(rint(W / alpha), -1, 1) in float.
 * Then encoded as I2_S (exact: one f32 scale), TQ2_0 or TQ1_0 (one f16 scale per 256-block,
 * all equal to alpha rounded to f16). The embedding (and an untied lm_head) are written as F16
 * (F32 and BF16 are rounded to nearest even; a value beyond F16's range is refused), norms as
 * F32. Every tensor's name, dtype and shape is checked against config.json first. The vocab:
 * tokenizer.model (+ added tokens) as llama.cpp's "llama" vocab, else tokenizer.json as a
 * byte-level BPE ("gpt2") vocab (hf-tokjson.c).
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/formats-internal.h"
#include "ternpipe/gguf.h"
#include "ternpipe/safetensors.h"
#include "ternpipe/spm.h"

typedef struct conv {
    const char *dir;
    tern_st *st;
    tern_hf_config cfg;
    tern_gguf_writer *w;
    tern_ggml_type type;
    void **bufs; /* data the writer borrows until write */
    size_t n_bufs, cap_bufs;
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

static tern_code nomem(conv *c)
{
    return tern_status_set(c->status, TERN_ENOMEM, "convert: %s: out of memory", c->dir);
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
    const tern_st_tensor *t = tern_st_find(c->st, name);
    *rc = TERN_OK;
    if (!t) {
        *rc = tern_status_set(c->status, TERN_EFORMAT,
                              "convert: %s: tensor '%s': got nothing, expected the tensor", c->dir,
                              name);
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
                              c->dir, name, got, want);
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
                           c->dir, t->name, tern_st_dtype_name(t->dtype));
}

static tern_code add(conv *c, const char *name, tern_ggml_type type, uint32_t nd,
                     const uint64_t *ne, const void *data)
{
    return tern_gguf_writer_add_tensor(c->w, name, type, nd, ne, data, c->status);
}

/* norms and other small float vectors: F32 */
static tern_code norm(conv *c, const char *hf, const char *gg, uint64_t n)
{
    tern_code rc;
    const tern_st_tensor *t = need(c, hf, n, 0, &rc);
    if (!t || (rc = want_float(c, t))) return rc;
    float *p = keep(c, (size_t)n * 4);
    if (!p) return nomem(c);
    tern_st_read_f32(t, 0, n, p);
    uint64_t ne[1] = {n};
    return add(c, gg, TERN_TYPE_F32, 1, ne, p);
}

/* [rows][cols] float matrix -> F16 */
static tern_code f16_matrix(conv *c, const tern_st_tensor *t, const char *gg)
{
    tern_code rc = want_float(c, t);
    if (rc) return rc;
    uint64_t rows = t->shape[0], cols = t->shape[1];
    uint16_t *p = keep(c, (size_t)(rows * cols) * 2);
    if (!p) return nomem(c);
    if (t->dtype == TERN_ST_F16) {
        memcpy(p, t->data, (size_t)(rows * cols) * 2); /* stored unchanged: exact */
    } else {
        float buf[1024];
        for (uint64_t i = 0; i < rows * cols; i += 1024) {
            uint64_t k = rows * cols - i < 1024 ? rows * cols - i : 1024;
            tern_st_read_f32(t, i, k, buf);
            for (uint64_t j = 0; j < k; j++) {
                p[i + j] = f32_to_f16(buf[j]);
                if ((p[i + j] & 0x7c00u) == 0x7c00u)
                    return tern_status_set(c->status, TERN_ERANGE,
                                           "convert: %s: tensor '%s' element %" PRIu64
                                           ": got %g, expected a value F16 can hold",
                                           c->dir, t->name, i + j, (double)buf[j]);
            }
        }
    }
    uint64_t ne[2] = {cols, rows};
    return add(c, gg, TERN_TYPE_F16, 2, ne, p);
}

/* ---- ternary encoders (the decoders are in src/kernels/tmat.c) ---- */

static void enc_i2s(const int8_t *t, uint64_t n, float alpha, uint8_t *out)
{
    /* spec 3.4: 128-element blocks of 32 bytes; byte j holds j, j+32, j+64, j+96 in bits
     * 7-6, 5-4, 3-2, 1-0; code t+1; the f32 scale at n/4, then 28 zero bytes */
    for (uint64_t b = 0; b < n / 128; b++)
        for (int j = 0; j < 32; j++) {
            const int8_t *e = t + b * 128 + j;
            out[b * 32 + (uint64_t)j] =
                (uint8_t)((e[0] + 1) << 6 | (e[32] + 1) << 4 | (e[64] + 1) << 2 | (e[96] + 1));
        }
    memcpy(out + n / 4, &alpha, 4);
}

static void enc_tq2(const int8_t *t, uint64_t n, uint16_t d, uint8_t *out)
{
    /* spec 3.5: 66-byte blocks: qs[64] then f16 d; per 32-byte half (128 elements) byte m holds
     * m, m+32, m+64, m+96 in bits 1-0, 3-2, 5-4, 7-6 */
    for (uint64_t b = 0; b < n / 256; b++) {
        uint8_t *q = out + b * 66;
        const int8_t *e = t + b * 256;
        for (int h = 0; h < 2; h++)
            for (int m = 0; m < 32; m++) {
                const int8_t *x = e + h * 128 + m;
                q[h * 32 + m] =
                    (uint8_t)((x[0] + 1) | (x[32] + 1) << 2 | (x[64] + 1) << 4 | (x[96] + 1) << 6);
            }
        memcpy(q + 64, &d, 2);
    }
}

static uint8_t tq1_byte(const int8_t *e, int stride, int count)
{
    /* count trits, most significant first, then scaled to 5 digits and stored as
     * ceil(q * 256 / 243) (spec 3.5) */
    unsigned q = 0;
    for (int i = 0; i < count; i++) q = q * 3 + (unsigned)(e[i * stride] + 1);
    for (int i = count; i < 5; i++) q *= 3;
    return (uint8_t)((q * 256 + 242) / 243);
}

static void enc_tq1(const int8_t *t, uint64_t n, uint16_t d, uint8_t *out)
{
    for (uint64_t b = 0; b < n / 256; b++) {
        uint8_t *q = out + b * 54;
        const int8_t *e = t + b * 256;
        for (int m = 0; m < 32; m++) q[m] = tq1_byte(e + m, 32, 5);
        for (int m = 0; m < 16; m++) q[32 + m] = tq1_byte(e + 160 + m, 16, 5);
        for (int j = 0; j < 4; j++) q[48 + j] = tq1_byte(e + 240 + j, 4, 4);
        memcpy(q + 52, &d, 2);
    }
}

/* One projection [out][in] -> a ternary GGUF tensor. */
static tern_code projection(conv *c, const char *hf, const char *gg, uint64_t out, uint64_t in)
{
    tern_code rc;
    const tern_st_tensor *t = tern_st_find(c->st, hf);
    uint64_t n = out * in;
    int8_t *tr = malloc((size_t)n);
    if (!tr) return nomem(c);
    float alpha = 0.0f;
    if (t && t->dtype == TERN_ST_U8) {
        /* spec 3.1: t[i*P + r][col] = ((B[r][col] >> 2i) & 3) - 1, P = out / 4 */
        if (out % 4 || !(t = need(c, hf, out / 4, in, &rc))) {
            free(tr);
            return out % 4 ? tern_status_set(c->status, TERN_EFORMAT,
                                             "convert: %s: tensor '%s': got %" PRIu64
                                             " rows, expected a multiple of 4 (packed U8)",
                                             c->dir, hf, out)
                           : rc;
        }
        char sn[160];
        snprintf(sn, sizeof sn, "%.*s_scale", (int)strlen(hf), hf); /* weight -> weight_scale */
        const tern_st_tensor *s = tern_st_find(c->st, sn);
        if (!s || s->n_elements != 1 || want_float(c, s)) {
            free(tr);
            return tern_status_set(c->status, TERN_EFORMAT,
                                   "convert: %s: tensor '%s': got %s, expected one float "
                                   "(the packed weight's scale)",
                                   c->dir, sn, s ? "another shape or dtype" : "nothing");
        }
        tern_st_read_f32(s, 0, 1, &alpha);
        const uint8_t *B = t->data;
        uint64_t P = out / 4;
        for (uint64_t r = 0; r < P; r++)
            for (uint64_t col = 0; col < in; col++) {
                uint8_t v = B[r * in + col];
                for (int i = 0; i < 4; i++) {
                    int code = (v >> (2 * i)) & 3;
                    if (code == 3) {
                        free(tr);
                        return tern_status_set(c->status, TERN_EFORMAT,
                                               "convert: %s: tensor '%s' byte [%" PRIu64
                                               "][%" PRIu64 "]: got code 3, expected 0..2",
                                               c->dir, hf, r, col);
                    }
                    tr[((uint64_t)i * P + r) * in + col] = (int8_t)(code - 1);
                }
            }
    } else {
        if (!(t = need(c, hf, out, in, &rc)) || (rc = want_float(c, t))) {
            free(tr);
            return rc;
        }
        /* spec 7.3: alpha over the whole matrix, mean in double rounded to float */
        float *row = malloc((size_t)in * 4);
        if (!row) {
            free(tr);
            return nomem(c);
        }
        double sum = 0.0;
        for (uint64_t o = 0; o < out; o++) {
            tern_st_read_f32(t, o * in, in, row);
            for (uint64_t k = 0; k < in; k++) sum += fabs((double)row[k]);
        }
        alpha = (float)(sum / (double)n);
        if (!(alpha >= 1e-5f)) alpha = 1e-5f; /* also NaN: caught below */
        if (!isfinite(sum)) {
            free(row), free(tr);
            return tern_status_set(c->status, TERN_EFORMAT,
                                   "convert: %s: tensor '%s': got non-finite values, expected "
                                   "finite masters",
                                   c->dir, hf);
        }
        for (uint64_t o = 0; o < out; o++) {
            tern_st_read_f32(t, o * in, in, row);
            for (uint64_t k = 0; k < in; k++) {
                float v = rintf(row[k] / alpha);
                tr[o * in + k] = (int8_t)(v > 1.0f ? 1 : v < -1.0f ? -1 : (int)v);
            }
        }
        free(row);
    }
    if (!isfinite(alpha)) {
        free(tr);
        return tern_status_set(c->status, TERN_EFORMAT,
                               "convert: %s: tensor '%s' scale: got %g, expected finite", c->dir,
                               hf, (double)alpha);
    }
    uint64_t nbytes = 0, ne[2] = {in, out};
    if (!tern_ggml_nbytes(c->type, in, n, &nbytes)) {
        free(tr);
        return tern_status_set(c->status, TERN_EUNSUPPORTED,
                               "convert: %s: tensor '%s': got %" PRIu64 " columns, expected a "
                               "multiple of %s's block size",
                               c->dir, hf, in, tern_ggml_type_name(c->type));
    }
    uint8_t *blob = keep(c, (size_t)nbytes);
    if (!blob) {
        free(tr);
        return nomem(c);
    }
    if (c->type == TERN_TYPE_I2_S)
        enc_i2s(tr, n, alpha, blob);
    else if (c->type == TERN_TYPE_TQ2_0)
        enc_tq2(tr, n, f32_to_f16(alpha), blob);
    else
        enc_tq1(tr, n, f32_to_f16(alpha), blob);
    free(tr);
    return add(c, gg, c->type, 2, ne, blob);
}

/* tokenizer.model + added tokens -> tokenizer.ggml.* (llama.cpp's "llama" vocab) */
static tern_code tokenizer(conv *c, const char *arch_unused)
{
    (void)arch_unused;
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.model", c->dir);
    /* no SentencePiece vocab: tokenizer.json when present, else weights only */
    if (access(path, F_OK) != 0)
        return tern_hf_tokjson_add(c->w, c->dir, c->cfg.vocab_size, c->status);
    tern_spm_model m;
    tern_spm_hf hf;
    tern_code rc = tern_spm_model_read_dir(c->dir, &m, &hf, c->status);
    if (rc) return rc;
    int32_t n = m.n_pieces, nv = c->cfg.vocab_size;
    if (n > nv) {
        tern_spm_model_free(&m);
        return tern_status_set(c->status, TERN_EFORMAT,
                               "convert: %s: tokenizer: got %d tokens, expected at most "
                               "vocab_size %d",
                               c->dir, n, nv);
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
    if (c->cfg.pad_token_id >= 0 && c->cfg.pad_token_id < nv)
        tern_gguf_writer_add_u32(w, "tokenizer.ggml.padding_token_id",
                                 (uint32_t)c->cfg.pad_token_id);
    tern_gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", hf.add_bos);
    tern_gguf_writer_add_bool(w, "tokenizer.ggml.add_eos_token", false);
    rc = tern_gguf_writer_add_bool(w, "tokenizer.ggml.add_space_prefix", m.add_dummy_prefix)
             ? nomem(c)
             : TERN_OK;
    tern_spm_model_free(&m);
    return rc;
}

static tern_code convert(conv *c)
{
    const tern_hf_config *h = &c->cfg;
    bool silu = !strcmp(h->hidden_act, "silu");
    if (!silu && strcmp(h->hidden_act, "relu2"))
        return tern_status_set(c->status, TERN_EUNSUPPORTED,
                               "convert: %s: hidden_act: got '%s', expected 'silu' or 'relu2'",
                               c->dir, h->hidden_act);
    if (h->hidden_size % h->num_attention_heads ||
        h->num_attention_heads % h->num_key_value_heads ||
        (h->head_dim && h->head_dim != h->hidden_size / h->num_attention_heads))
        return tern_status_set(c->status, TERN_EUNSUPPORTED,
                               "convert: %s: heads: got hidden %d, %d heads, %d kv heads, head_dim "
                               "%d, expected head_dim = hidden / heads and heads %% kv heads = 0",
                               c->dir, h->hidden_size, h->num_attention_heads,
                               h->num_key_value_heads, h->head_dim);
    /* 1bitLLM: upstream llama.cpp's layout; 2B-4T: the official one */
    const char *arch = silu ? "bitnet" : "bitnet-b1.58";
    const uint64_t d = (uint64_t)h->hidden_size, ff = (uint64_t)h->intermediate_size,
                   nv = (uint64_t)h->vocab_size, hd = d / (uint64_t)h->num_attention_heads,
                   kv = hd * (uint64_t)h->num_key_value_heads;
    tern_gguf_writer *w = c->w;
    char key[128], hn[160], gn[96];
#define KEY(s) (snprintf(key, sizeof key, "%s." s, arch), key)
    tern_gguf_writer_add_str(w, "general.architecture", arch);
    const char *base = strrchr(c->dir, '/');
    tern_gguf_writer_add_str(w, "general.name", base && base[1] ? base + 1 : c->dir);
    if (c->type == TERN_TYPE_I2_S) tern_gguf_writer_add_u32(w, "general.file_type", 40);
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
    if ((rc = norm(c, "model.norm.weight", "output_norm.weight", d))) return rc;
    const tern_st_tensor *lm = tern_st_find(c->st, "lm_head.weight");
    if (lm && !h->tie_word_embeddings) {
        if (!(lm = need(c, "lm_head.weight", nv, d, &rc)) ||
            (rc = f16_matrix(c, lm, "output.weight")))
            return rc;
    } else if (!h->tie_word_embeddings) {
        return tern_status_set(c->status, TERN_EFORMAT,
                               "convert: %s: lm_head.weight: got nothing and "
                               "tie_word_embeddings false, expected one of them",
                               c->dir);
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
        if ((rc = norm(c, HF("input_layernorm.weight"), GG("attn_norm"), d)) ||
            (rc = projection(c, HF("self_attn.q_proj.weight"), GG("attn_q"), d, d)) ||
            (rc = projection(c, HF("self_attn.k_proj.weight"), GG("attn_k"), kv, d)) ||
            (rc = projection(c, HF("self_attn.v_proj.weight"), GG("attn_v"), kv, d)) ||
            (rc = projection(c, HF("self_attn.o_proj.weight"), GG("attn_output"), d, d)) ||
            (rc = norm(c, an, GG("attn_sub_norm"), d)) ||
            (rc = norm(c, HF("post_attention_layernorm.weight"), GG("ffn_norm"), d)) ||
            (rc = projection(c, HF("mlp.gate_proj.weight"), GG("ffn_gate"), ff, d)) ||
            (rc = projection(c, HF("mlp.up_proj.weight"), GG("ffn_up"), ff, d)) ||
            (rc = projection(c, HF("mlp.down_proj.weight"), GG("ffn_down"), d, ff)) ||
            (rc = norm(c, fn, GG("ffn_sub_norm"), ff)))
            return rc;
#undef HF
#undef GG
    }
    return tokenizer(c, arch);
}

tern_code tern_hf_convert(const char *dir, const char *out_path, int type_id, tern_status *st)
{
    tern_ggml_type type = (tern_ggml_type)type_id;
    if (type != TERN_TYPE_I2_S && type != TERN_TYPE_TQ2_0 && type != TERN_TYPE_TQ1_0)
        return tern_status_set(st, TERN_EUNSUPPORTED,
                               "convert: type: got %s, expected I2_S, TQ2_0 or TQ1_0",
                               tern_ggml_type_name(type) ? tern_ggml_type_name(type) : "unknown");
    conv c = {.dir = dir, .type = type, .status = st};
    char cp[4096];
    snprintf(cp, sizeof cp, "%s/config.json", dir);
    tern_code rc = tern_hf_config_read(cp, &c.cfg, st);
    if (!rc) rc = tern_st_open_dir(&c.st, dir, st);
    if (!rc && !(c.w = tern_gguf_writer_new())) rc = nomem(&c);
    if (!rc) rc = convert(&c);
    if (!rc) rc = tern_gguf_writer_write(c.w, out_path, st);
    tern_gguf_writer_free(c.w);
    tern_st_close(c.st);
    for (size_t i = 0; i < c.n_bufs; i++) free(c.bufs[i]);
    free(c.bufs);
    return rc;
}
