/* cmd_synth.c: `ternpipe synth`: a model with the exact layout of the official
 * ggml-model-i2_s.gguf (keys, names, I2_S ternary tensors with a per-tensor scale, F16
 * token_embd, F32 norms, the Llama-3 vocab) and random weights, for benchmarks and tests;
 * --shape large / 3b: the 1bitLLM shapes (spec 7.1) in llama.cpp's bitnet layout with the
 * Llama-2 SentencePiece vocab (+ <pad>, </line>: 32002) and SiLU. --hf writes the shape as a
 * Hugging Face checkpoint directory instead (random weights, no tokenizer files).
 * --embd-type q8_0|q6_k writes token_embd as ggml Q8_0 or Q6_K blocks (what llama-quantize
 * --token-embedding-type writes), quantized from the F16 table. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ternpipe/gguf.h"
#include "ternpipe/kernels.h"
#include "ternpipe/rng.h"
#include "ternpipe/safetensors.h"
#include "ternpipe/tokenizer.h"
#include "tools/commands.h"
#include "tools/run.h"

typedef struct shape {
    const char *name;
    uint32_t d, n_layer, n_ff, n_head, n_head_kv, n_ctx;
    bool spm; /* 1bitLLM: arch bitnet, SiLU, theta 1e4, SentencePiece vocab of 32002 */
} shape;

static const shape shapes[] = {
    {"2b4t", 2560, 30, 6912, 20, 5, 4096, false},
    {"tiny", 256, 2, 768, 4, 1, 1024, false},
    {"large", 1536, 24, 4096, 16, 16, 2048, true},
    {"3b", 3200, 26, 8640, 32, 32, 2048, true},
};

/* The Llama-2 vocab of a vocab-only GGUF (tokenizer.* keys copied) plus <pad> and </line>
 * as CONTROL tokens at 32000/32001 (HF's order, spec 7.1). Returns the token count. */
static uint32_t add_spm_vocab(tern_gguf_writer *w, const char *path, tern_status *st)
{
    tern_gguf *g = NULL;
    if (tern_gguf_open(&g, path, st)) return 0;
    const tern_gguf_value *tok = NULL, *sc = NULL, *ty = NULL;
    uint32_t n = 0;
    if (tern_gguf_get_arr(g, "tokenizer.ggml.tokens", TERN_GGUF_STRING, &tok, st) ||
        tern_gguf_get_arr(g, "tokenizer.ggml.scores", TERN_GGUF_FLOAT32, &sc, st) ||
        tern_gguf_get_arr(g, "tokenizer.ggml.token_type", TERN_GGUF_INT32, &ty, st))
        goto out;
    uint64_t m = tok->v.arr.n;
    const char **strs = malloc((m + 2) * sizeof *strs);
    uint64_t *lens = malloc((m + 2) * sizeof *lens);
    float *scores = malloc((m + 2) * sizeof *scores);
    int32_t *types = malloc((m + 2) * sizeof *types);
    if (strs && lens && scores && types && sc->v.arr.n == m && ty->v.arr.n == m) {
        for (uint64_t i = 0; i < m; i++) {
            strs[i] = tok->v.arr.items[i].v.str.ptr, lens[i] = tok->v.arr.items[i].v.str.len;
            scores[i] = (float)tern_gguf_arr_float(sc, i);
            types[i] = (int32_t)tern_gguf_arr_int(ty, i);
        }
        strs[m] = "<pad>", lens[m] = 5, strs[m + 1] = "</line>", lens[m + 1] = 7;
        scores[m] = scores[m + 1] = -1000.0f, types[m] = types[m + 1] = 3;
        tern_gguf_writer_add_str(w, "tokenizer.ggml.model", "llama");
        tern_gguf_writer_add_str(w, "tokenizer.ggml.pre", "default");
        tern_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", strs, lens, m + 2);
        tern_gguf_writer_add_arr(w, "tokenizer.ggml.scores", TERN_GGUF_FLOAT32, scores, m + 2);
        tern_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", TERN_GGUF_INT32, types, m + 2);
        tern_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 1);
        tern_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", 2);
        tern_gguf_writer_add_u32(w, "tokenizer.ggml.padding_token_id", (uint32_t)m);
        tern_gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", true);
        n = (uint32_t)m + 2; /* the writer copied everything */
    } else {
        tern_status_set(st, TERN_EFORMAT,
                        "synth: %s: got an unusable vocab, expected tokens, "
                        "scores and types of one length",
                        path);
    }
    free(strs), free(lens), free(scores), free(types);
out:
    tern_gguf_close(g);
    return n;
}

/* I2_S blob (spec 3.4): 128-element blocks, element 128b+32g+j in bits (6-2g) of byte
 * 32b+j, code = t+1; f32 alpha at n/4; 28 zero bytes. Trits: ~1/3 zeros. */
static uint8_t *make_i2s(tern_rng *r, uint64_t n, float alpha)
{
    uint8_t *p = calloc(1, n / 4 + 32);
    if (!p) return NULL;
    for (uint64_t b = 0; b < n / 128; b++)
        for (int g = 0; g < 4; g++)
            for (int j = 0; j < 32; j++) {
                uint32_t code = (uint32_t)(tern_rng_next(r) % 3); /* 0,1,2 = -1,0,+1 */
                p[b * 32 + (uint64_t)j] |= (uint8_t)(code << (6 - 2 * g));
            }
    memcpy(p + n / 4, &alpha, 4);
    return p;
}

static float uniform(tern_rng *r, float lo, float hi)
{
    return lo + (hi - lo) * tern_rng_uniform(r);
}

static float *make_norm(tern_rng *r, uint32_t n, float lo, float hi)
{
    float *p = malloc(n * sizeof *p);
    if (p)
        for (uint32_t i = 0; i < n; i++) p[i] = uniform(r, lo, hi);
    return p;
}

/* ---- --hf: a Hugging Face checkpoint directory of the shape (config.json and one
 * model.safetensors, no tokenizer files: run it with --ids). The 1bitLLM shapes get float
 * masters [out, in] (--dtype f32, the real checkpoints' type, or f16 / bf16) and their names
 * (spec 7.2); 2b4t and tiny get 2B-4T's packed U8 [out/4, in] with a BF16 weight_scale and
 * BF16 embedding and norms (spec 3.1). ---- */

typedef struct hf_entry {
    char name[96];
    tern_st_dtype dtype;
    uint64_t d0, d1; /* d1 == 0: a vector */
    uint8_t what;    /* 0 norm, 1 embedding, 2 projection master, 3 packed, 4 scale */
    float lo, hi;
} hf_entry;

static uint64_t hf_bytes(const hf_entry *e)
{
    return e->d0 * (e->d1 ? e->d1 : 1) * tern_st_dtype_size(e->dtype);
}

static void hf_put(tern_st_dtype dt, float v, uint8_t *p)
{
    if (dt == TERN_ST_F32) {
        memcpy(p, &v, 4);
    } else if (dt == TERN_ST_F16) {
        uint16_t h = tern_f32_to_f16_1(v);
        memcpy(p, &h, 2);
    } else { /* BF16, rounded to nearest even */
        uint32_t u;
        memcpy(&u, &v, 4);
        uint16_t h = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
        memcpy(p, &h, 2);
    }
}

static int synth_hf(const shape *sh, const char *dir, uint64_t seed, const char *dtype_name)
{
    tern_st_dtype mdt = !strcmp(dtype_name, "f32")    ? TERN_ST_F32
                        : !strcmp(dtype_name, "f16")  ? TERN_ST_F16
                        : !strcmp(dtype_name, "bf16") ? TERN_ST_BF16
                                                      : TERN_ST_DTYPE_COUNT;
    if (mdt == TERN_ST_DTYPE_COUNT) {
        fprintf(stderr, "ternpipe synth: --dtype: got '%s', expected f32, f16 or bf16\n",
                dtype_name);
        return 2;
    }
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "ternpipe synth: %s: mkdir: %s\n", dir, strerror(errno));
        return 1;
    }
    const bool packed = !sh->spm;
    const tern_st_dtype fdt = packed ? TERN_ST_BF16 : mdt;
    const uint64_t d = sh->d, ff = sh->n_ff, kv = (uint64_t)sh->d / sh->n_head * sh->n_head_kv;
    const uint64_t nv = sh->spm ? 32002 : 128256;
    size_t n = 0, cap = 2 + (size_t)sh->n_layer * 18;
    hf_entry *es = calloc(cap, sizeof *es);
    if (!es) {
        fprintf(stderr, "ternpipe: out of memory\n");
        return 1;
    }
#define ADD(nm_, dt_, d0_, d1_, what_, lo_, hi_)                                                   \
    do {                                                                                           \
        hf_entry *e_ = &es[n++];                                                                   \
        snprintf(e_->name, sizeof e_->name, "%s", nm_);                                            \
        e_->dtype = dt_, e_->d0 = d0_, e_->d1 = d1_, e_->what = what_, e_->lo = lo_, e_->hi = hi_; \
    } while (0)
    ADD("model.embed_tokens.weight", fdt, nv, d, 1, 0, 0);
    ADD("model.norm.weight", fdt, d, 0, 0, 0.5f, 1.5f);
    for (uint32_t l = 0; l < sh->n_layer; l++) {
        char nm[96];
        static const char *const proj[7] = {
            "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
        const uint64_t out[7] = {d, kv, kv, d, ff, ff, d}, in[7] = {d, d, d, d, d, d, ff};
        const char *norms[4] = {"input_layernorm", "post_attention_layernorm",
                                packed ? "self_attn.attn_sub_norm" : "self_attn.inner_attn_ln",
                                packed ? "mlp.ffn_sub_norm" : "mlp.ffn_layernorm"};
        for (int i = 0; i < 4; i++) {
            snprintf(nm, sizeof nm, "model.layers.%u.%s.weight", l, norms[i]);
            ADD(nm, fdt, i == 3 ? ff : d, 0, 0, 0.5f, 1.5f);
        }
        for (int i = 0; i < 7; i++) {
            snprintf(nm, sizeof nm, "model.layers.%u.%s.weight", l, proj[i]);
            if (packed) {
                ADD(nm, TERN_ST_U8, out[i] / 4, in[i], 3, 0, 0);
                snprintf(nm, sizeof nm, "model.layers.%u.%s.weight_scale", l, proj[i]);
                ADD(nm, TERN_ST_BF16, 1, 0, 4, 0.3f, 2.0f);
            } else {
                ADD(nm, mdt, out[i], in[i], 2, 0, 0);
            }
        }
    }
#undef ADD
    /* the header: offsets in table order, padded with spaces to 8 bytes */
    size_t hcap = 256 + n * 192, hl = 0;
    char *hdr = malloc(hcap);
    uint64_t off = 0, big = 0;
    int rc = 1;
    FILE *f = NULL;
    uint8_t *buf = NULL;
    char path[4096];
    if (!hdr) goto oom;
    hl += (size_t)snprintf(hdr + hl, hcap - hl, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (size_t i = 0; i < n; i++) {
        const hf_entry *e = &es[i];
        char shp[64];
        if (e->d1)
            snprintf(shp, sizeof shp, "[%llu,%llu]", (unsigned long long)e->d0,
                     (unsigned long long)e->d1);
        else
            snprintf(shp, sizeof shp, "[%llu]", (unsigned long long)e->d0);
        uint64_t b = hf_bytes(e);
        hl +=
            (size_t)snprintf(hdr + hl, hcap - hl,
                             ",\"%s\":{\"dtype\":\"%s\",\"shape\":%s,\"data_offsets\":[%llu,%llu]}",
                             e->name, tern_st_dtype_name(e->dtype), shp, (unsigned long long)off,
                             (unsigned long long)(off + b));
        off += b, big = b > big ? b : big;
    }
    hl += (size_t)snprintf(hdr + hl, hcap - hl, "}");
    while (hl % 8) hdr[hl++] = ' ';
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (!(f = fopen(path, "wb")) || !(buf = malloc((size_t)big))) {
        fprintf(stderr, "ternpipe synth: %s: %s\n", path, f ? "out of memory" : strerror(errno));
        goto done;
    }
    uint64_t hl64 = hl;
    bool ok = fwrite(&hl64, 8, 1, f) == 1 && fwrite(hdr, 1, hl, f) == hl;
    tern_rng r;
    tern_rng_seed(&r, seed);
    tern_progress_line pl = {0};
    for (size_t i = 0; ok && i < n; i++) {
        const hf_entry *e = &es[i];
        tern_progress(&pl, "synth: writing tensors", (int32_t)i, (int32_t)n);
        uint64_t cnt = e->d0 * (e->d1 ? e->d1 : 1), es_ = tern_st_dtype_size(e->dtype);
        if (e->what == 3) { /* four 2-bit codes 0..2 per byte */
            for (uint64_t j = 0; j < cnt; j++) {
                uint64_t x = tern_rng_next(&r);
                uint8_t v = 0;
                for (int k = 0; k < 4; k++) v |= (uint8_t)(((x >> (16 * k)) % 3) << (2 * k));
                buf[j] = v;
            }
        } else {
            /* masters of a projection ~ U(-1, 1) / sqrt(in), the embedding ~ U(-1, 1) */
            float sc = e->what == 2 ? 1.0f / sqrtf((float)e->d1) : 1.0f;
            for (uint64_t j = 0; j < cnt; j++) {
                float v = e->what == 0 || e->what == 4 ? uniform(&r, e->lo, e->hi)
                                                       : sc * uniform(&r, -1.0f, 1.0f);
                hf_put(e->dtype, v, buf + j * es_);
            }
        }
        ok = fwrite(buf, 1, (size_t)hf_bytes(e), f) == hf_bytes(e);
    }
    tern_progress(&pl, "synth: writing tensors", (int32_t)n, (int32_t)n);
    if (fclose(f) != 0) ok = false;
    f = NULL;
    if (!ok) {
        fprintf(stderr, "ternpipe synth: %s: write failed: %s\n", path, strerror(errno));
        goto done;
    }
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (!(f = fopen(path, "w"))) {
        fprintf(stderr, "ternpipe synth: %s: %s\n", path, strerror(errno));
        goto done;
    }
    fprintf(f,
            "{\n  \"architectures\": [\"%s\"],\n  \"model_type\": \"%s\",\n"
            "  \"hidden_act\": \"%s\",\n  \"hidden_size\": %u,\n  \"intermediate_size\": %u,\n"
            "  \"num_hidden_layers\": %u,\n  \"num_attention_heads\": %u,\n"
            "  \"num_key_value_heads\": %u,\n  \"max_position_embeddings\": %u,\n"
            "  \"vocab_size\": %llu,\n  \"rms_norm_eps\": 1e-05,\n  \"rope_theta\": %s,\n"
            "  \"rope_scaling\": null,\n  \"tie_word_embeddings\": true,\n"
            "  \"bos_token_id\": %d,\n  \"eos_token_id\": %d,\n  \"torch_dtype\": \"%s\"\n}\n",
            packed ? "BitNetForCausalLM" : "BitnetForCausalLM", packed ? "bitnet" : "llama",
            packed ? "relu2" : "silu", sh->d, sh->n_ff, sh->n_layer, sh->n_head, sh->n_head_kv,
            sh->n_ctx, (unsigned long long)nv, packed ? "500000.0" : "10000.0", packed ? 128000 : 1,
            packed ? 128001 : 2,
            packed ? "bfloat16" : (mdt == TERN_ST_F32 ? "float32" : "float16"));
    rc = fclose(f) == 0 ? 0 : 1;
    f = NULL;
    if (rc) fprintf(stderr, "ternpipe synth: %s: write failed\n", path);
    goto done;
oom:
    fprintf(stderr, "ternpipe: out of memory\n");
done:
    if (f) fclose(f);
    free(buf);
    free(hdr);
    free(es);
    return rc;
}

/* ggml's quantize_row_q8_0_ref: d = amax / 127, q = roundf(x / d), d stored as f16 */
static void quant_q8_0(const uint16_t *h, uint64_t n, uint8_t *out)
{
    for (uint64_t i = 0; i < n; i += 32, out += 34) {
        float v[32], amax = 0.0f;
        for (int j = 0; j < 32; j++) {
            v[j] = tern_f16_to_f32_1(h[i + j]);
            amax = fmaxf(amax, fabsf(v[j]));
        }
        const float d = amax / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
        uint16_t dh = tern_f32_to_f16_1(d);
        memcpy(out, &dh, 2);
        for (int j = 0; j < 32; j++) out[2 + j] = (uint8_t)(int8_t)roundf(v[j] * id);
    }
}

/* A plain Q6_K quantizer (ggml's block layout, not its scale search: any valid block serves a
 * synthetic model): per 16 values s = amax / 31, d = max s / 127 as f16, sc = round(s / d),
 * q = clamp(round(x / (d * sc)), -32, 31). */
static void quant_q6_k(const uint16_t *h, uint64_t n, uint8_t *out)
{
    for (uint64_t i = 0; i < n; i += 256, out += 210) {
        float v[256], s[16], smax = 0.0f;
        for (int j = 0; j < 16; j++) {
            float amax = 0.0f;
            for (int e = 0; e < 16; e++) {
                v[16 * j + e] = tern_f16_to_f32_1(h[i + 16 * j + e]);
                amax = fmaxf(amax, fabsf(v[16 * j + e]));
            }
            s[j] = amax / 31.0f;
            smax = fmaxf(smax, s[j]);
        }
        memset(out, 0, 210);
        uint16_t dh = tern_f32_to_f16_1(smax / 127.0f);
        memcpy(out + 208, &dh, 2);
        const float d = tern_f16_to_f32_1(dh);
        for (int j = 0; j < 16; j++) {
            long sc = d > 0.0f ? lroundf(s[j] / d) : 0;
            sc = sc > 127 ? 127 : sc;
            out[192 + j] = (uint8_t)(int8_t)sc;
        }
        for (int e = 0; e < 256; e++) {
            const int hh = e / 128, g = (e % 128) / 32, l = e % 32;
            const float ds = d * (float)(int8_t)out[192 + (8 * hh + 2 * g + l / 16)];
            long q = ds > 0.0f ? lroundf(v[e] / ds) : 0;
            q = (q < -32 ? -32 : q > 31 ? 31 : q) + 32;
            out[64 * hh + 32 * (g & 1) + l] |= (uint8_t)((q & 15) << (4 * (g >> 1)));
            out[128 + 32 * hh + l] |= (uint8_t)((q >> 4) << (2 * g));
        }
    }
}

int tern_cmd_synth(int argc, char **argv)
{
    const char *shape_name = NULL, *out = NULL, *tiktoken = NULL, *spm_vocab = NULL;
    const char *dtype = "f32", *embd_type = "f16";
    bool hf = false;
    uint64_t seed = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--shape") && i + 1 < argc)
            shape_name = argv[++i];
        else if (!strcmp(argv[i], "-o") && i + 1 < argc)
            out = argv[++i];
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc)
            seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--tiktoken") && i + 1 < argc)
            tiktoken = argv[++i];
        else if (!strcmp(argv[i], "--vocab") && i + 1 < argc)
            spm_vocab = argv[++i];
        else if (!strcmp(argv[i], "--hf"))
            hf = true;
        else if (!strcmp(argv[i], "--dtype") && i + 1 < argc)
            dtype = argv[++i];
        else if (!strcmp(argv[i], "--embd-type") && i + 1 < argc)
            embd_type = argv[++i];
        else {
            fprintf(stderr, "usage: ternpipe synth --shape 2b4t|tiny|large|3b [--seed S] "
                            "[--tiktoken RANKS | --vocab SPM.gguf]\n"
                            "                      [--embd-type f16|q8_0|q6_k] -o OUT.gguf\n"
                            "       ternpipe synth --shape ... --hf [--dtype f32|f16|bf16] "
                            "[--seed S] -o DIR\n");
            return 2;
        }
    }
    const shape *sh = NULL;
    for (size_t i = 0; shape_name && i < sizeof shapes / sizeof shapes[0]; i++)
        if (!strcmp(shape_name, shapes[i].name)) sh = &shapes[i];
    if (!sh || !out) {
        fprintf(stderr,
                "ternpipe synth: --shape 2b4t|tiny|large|3b and -o OUT.gguf are required\n");
        return 2;
    }
    tern_ggml_type et = TERN_TYPE_F16;
    if (!strcmp(embd_type, "q8_0"))
        et = TERN_TYPE_Q8_0;
    else if (!strcmp(embd_type, "q6_k"))
        et = TERN_TYPE_Q6_K;
    else if (strcmp(embd_type, "f16")) {
        fprintf(stderr, "ternpipe synth: --embd-type: got '%s', expected f16, q8_0 or q6_k\n",
                embd_type);
        return 2;
    }
    if (et != TERN_TYPE_F16 && sh->d % tern_type_traits_of(et)->blck) {
        fprintf(stderr,
                "ternpipe synth: --embd-type %s: got hidden size %u, expected a multiple "
                "of %u\n",
                embd_type, sh->d, tern_type_traits_of(et)->blck);
        return 2;
    }
    if (hf) {
        if (et != TERN_TYPE_F16) {
            fprintf(stderr,
                    "ternpipe synth: --embd-type: got %s with --hf, expected f16 "
                    "(checkpoints hold float tables)\n",
                    embd_type);
            return 2;
        }
        return synth_hf(sh, out, seed, dtype);
    }
    static char default_rank[4096], default_spm[4096];
    const char *fx = getenv("TERN_FIXTURES");
    if (!tiktoken) {
        snprintf(default_rank, sizeof default_rank, "%s/tokenizer/llama3.tiktoken",
                 fx && *fx ? fx : "../shared/fixtures");
        tiktoken = default_rank;
    }
    if (!spm_vocab) {
        snprintf(default_spm, sizeof default_spm, "%s/tokenizer/ggml-vocab-llama-spm.gguf",
                 fx && *fx ? fx : "../shared/fixtures");
        spm_vocab = default_spm;
    }
    tern_status st = {0};
    tern_gguf_writer *w = tern_gguf_writer_new();
    if (!w) {
        fprintf(stderr, "ternpipe: out of memory\n");
        return 1;
    }
    const char *arch = sh->spm ? "bitnet" : "bitnet-b1.58";
    uint32_t n_vocab = 128256;
    if (sh->spm && !(n_vocab = add_spm_vocab(w, spm_vocab, &st))) {
        fprintf(stderr, "ternpipe: %s\n", st.msg);
        tern_gguf_writer_free(w);
        return 1;
    }
    char key[128];
#define K(s) (snprintf(key, sizeof key, "%s." s, arch), key)
    tern_gguf_writer_add_str(w, "general.architecture", arch);
    char name[64];
    snprintf(name, sizeof name, "ternpipe-synth-%s-seed%llu", sh->name, (unsigned long long)seed);
    tern_gguf_writer_add_str(w, "general.name", name);
    tern_gguf_writer_add_u32(w, K("vocab_size"), n_vocab);
    tern_gguf_writer_add_u32(w, K("context_length"), sh->n_ctx);
    tern_gguf_writer_add_u32(w, K("embedding_length"), sh->d);
    tern_gguf_writer_add_u32(w, K("block_count"), sh->n_layer);
    tern_gguf_writer_add_u32(w, K("feed_forward_length"), sh->n_ff);
    tern_gguf_writer_add_u32(w, K("rope.dimension_count"), sh->d / sh->n_head);
    tern_gguf_writer_add_u32(w, K("attention.head_count"), sh->n_head);
    tern_gguf_writer_add_u32(w, K("attention.head_count_kv"), sh->n_head_kv);
    tern_gguf_writer_add_f32(w, K("attention.layer_norm_rms_epsilon"), 1e-5f);
    tern_gguf_writer_add_f32(w, K("rope.freq_base"), sh->spm ? 10000.0f : 500000.0f);
    if (sh->spm) tern_gguf_writer_add_str(w, K("hidden_act"), "silu");
    tern_gguf_writer_add_u32(w, "general.file_type", 40);
    tern_gguf_writer_add_u32(w, "general.quantization_version", 2);
#undef K
    int rc = 1;
    if (!sh->spm && tern_vocab_add_tiktoken(w, tiktoken, &st)) {
        fprintf(stderr, "ternpipe: %s\n", st.msg);
        tern_gguf_writer_free(w);
        return 1;
    }
    tern_rng r;
    tern_rng_seed(&r, seed);
    /* every buffer lives until the write; freed at the end */
    void **bufs = calloc(16 + (size_t)sh->n_layer * 11, sizeof *bufs);
    size_t n_bufs = 0;
    const uint64_t d = sh->d, ff = sh->n_ff, kv = (uint64_t)sh->d / sh->n_head * sh->n_head_kv;
    /* embedding: normal(0, 1) in F16 (Box-Muller) */
    uint16_t *emb = malloc(d * n_vocab * sizeof *emb);
    bufs[n_bufs++] = emb;
    if (!emb) goto oom;
    for (uint64_t i = 0; i < d * n_vocab; i += 2) {
        float u1 = tern_rng_uniform(&r), u2 = tern_rng_uniform(&r);
        float rad = sqrtf(-2.0f * logf(u1 > 1e-12f ? u1 : 1e-12f));
        float v[2] = {rad * cosf(6.2831853f * u2), rad * sinf(6.2831853f * u2)};
        tern_f32_to_f16(v, emb + i, 2);
    }
    uint64_t ne_emb[2] = {d, n_vocab};
    const void *emb_data = emb;
    if (et != TERN_TYPE_F16) {
        uint64_t nb = 0;
        if (!tern_ggml_nbytes(et, d, d * n_vocab, &nb)) goto oom;
        uint8_t *qe = malloc((size_t)nb);
        bufs[n_bufs++] = qe;
        if (!qe) goto oom;
        (et == TERN_TYPE_Q8_0 ? quant_q8_0 : quant_q6_k)(emb, d * n_vocab, qe);
        emb_data = qe;
    }
    if (tern_gguf_writer_add_tensor(w, "token_embd.weight", et, 2, ne_emb, emb_data, &st))
        goto fail;
    float *onorm = make_norm(&r, sh->d, 0.5f, 1.5f);
    bufs[n_bufs++] = onorm;
    if (!onorm) goto oom;
    uint64_t ne_d[1] = {d};
    if (tern_gguf_writer_add_tensor(w, "output_norm.weight", TERN_TYPE_F32, 1, ne_d, onorm, &st))
        goto fail;
    tern_progress_line pl = {0};
    for (uint32_t l = 0; l < sh->n_layer; l++) {
        tern_progress(&pl, "synth: making layers", l, sh->n_layer);
        struct {
            const char *name;
            uint64_t k, n; /* ne0 (input), ne1 (output); n == 0: a norm of width k */
            float lo, hi;
        } ts[] = {
            {"attn_norm", d, 0, 0.05f, 0.15f},     {"attn_q", d, d, 0.3f, 2.0f},
            {"attn_k", d, kv, 0.3f, 2.0f},         {"attn_v", d, kv, 0.3f, 2.0f},
            {"attn_output", d, d, 0.3f, 2.0f},     {"attn_sub_norm", d, 0, 0.1f, 0.3f},
            {"ffn_norm", d, 0, 0.5f, 1.5f},        {"ffn_gate", d, ff, 0.3f, 2.0f},
            {"ffn_up", d, ff, 0.3f, 2.0f},         {"ffn_down", ff, d, 0.3f, 2.0f},
            {"ffn_sub_norm", ff, 0, 0.02f, 0.06f},
        };
        for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) {
            char tn[96];
            snprintf(tn, sizeof tn, "blk.%u.%s.weight", l, ts[i].name);
            void *p;
            if (ts[i].n) {
                p = make_i2s(&r, ts[i].k * ts[i].n, uniform(&r, ts[i].lo, ts[i].hi));
                uint64_t ne[2] = {ts[i].k, ts[i].n};
                bufs[n_bufs++] = p;
                if (!p) goto oom;
                if (tern_gguf_writer_add_tensor(w, tn, TERN_TYPE_I2_S, 2, ne, p, &st)) goto fail;
            } else {
                p = make_norm(&r, (uint32_t)ts[i].k, ts[i].lo, ts[i].hi);
                uint64_t ne[1] = {ts[i].k};
                bufs[n_bufs++] = p;
                if (!p) goto oom;
                if (tern_gguf_writer_add_tensor(w, tn, TERN_TYPE_F32, 1, ne, p, &st)) goto fail;
            }
        }
    }
    tern_progress(&pl, "synth: making layers", sh->n_layer, sh->n_layer);
    if (tern_gguf_writer_write(w, out, &st)) goto fail;
    rc = 0;
    goto done;
oom:
    tern_status_set(&st, TERN_ENOMEM, "synth: out of memory");
fail:
    fprintf(stderr, "ternpipe: %s\n", st.msg);
done:
    for (size_t i = 0; i < n_bufs; i++) free(bufs[i]);
    free(bufs);
    tern_gguf_writer_free(w);
    return rc;
}
