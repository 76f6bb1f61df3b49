/* test_model.c: the forward pass against logits written by bitnet.cpp (fixture
 * reference/tiny-2b4t), bitwise independence of thread count, batching and micro-batch
 * composition, KV reuse, each for every KV cache type (f16, f32, q8), and clear errors for bad
 * models. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "ternpipe/kernels.h"
#include "ternpipe/model.h"
#include "ternpipe/runtime.h"

/* the KV cache type of the runners being opened */
static tern_kv_type g_kvt = TERN_KV_F16;

typedef struct runner {
    tern_topo *topo;
    tern_pool *pool;
    tern_model *m;
    tern_ctx *c;
    const tern_hparams *hp;
} runner;

static int g_n_ctx; /* 0: the model's */

static int runner_open(runner *r, const tern_gguf *g, int threads, tern_head_type ht,
                       int max_tokens)
{
    tern_status st = {0};
    memset(r, 0, sizeof *r);
    tern_model_opts mo = {.l0 = 0, .l1 = -1, .embed = true, .head = true, .head_type = ht};
    tern_ctx_opts co = {
        .max_tokens = max_tokens, .max_seqs = 4, .n_ctx = g_n_ctx, .kv_type = g_kvt};
    if (tern_topo_discover(&r->topo, &st) || tern_pool_create(&r->pool, r->topo, threads, &st) ||
        tern_model_load(&r->m, g, &mo, &st) ||
        (r->hp = tern_model_hparams(r->m), tern_ctx_create(&r->c, r->m, r->pool, &co, &st))) {
        fprintf(stderr, "runner: %s\n", st.msg);
        return 1;
    }
    return 0;
}

static void runner_close(runner *r)
{
    tern_ctx_free(r->c);
    tern_model_free(r->m);
    tern_pool_free(r->pool);
    tern_topo_free(r->topo);
}

/* logits [n][vocab] of ids as one sequence in slot, fed in chunks of `chunk` tokens */
static int run_seq(runner *r, int slot, const int32_t *ids, int n, int chunk, float *logits)
{
    tern_status st = {0};
    const int d = r->hp->d, V = r->hp->n_vocab;
    float *x = malloc(sizeof(float) * (size_t)chunk * (size_t)d);
    int32_t rows[512];
    for (int i = 0; i < chunk; i++) rows[i] = i;
    for (int done = 0; done < n; done += chunk) {
        int k = n - done < chunk ? n - done : chunk;
        tern_batch_seq b = {.slot = slot, .pos0 = done, .n_tokens = k};
        tern_embed(r->c, ids + done, k, x);
        if (tern_forward(r->c, &b, 1, x, &st)) {
            fprintf(stderr, "forward: %s\n", st.msg);
            free(x);
            return 1;
        }
        tern_head(r->c, x, rows, k, logits + (size_t)done * (size_t)V);
    }
    free(x);
    return 0;
}

static int read_ids(const char *path, int32_t *ids, int cap)
{
    size_t len;
    char *s = (char *)tern_test_read_file(path, &len);
    if (!s) return 0;
    int n = 0;
    char *p = s, *end;
    while (n < cap) {
        long v = strtol(p, &end, 10);
        if (end == p) break;
        ids[n++] = (int32_t)v;
        p = end;
    }
    free(s);
    return n;
}

/* logits of the 48 fixture positions against the bitnet.cpp reference: the fixture's
 * tolerance (max 0.05 R, rms 0.08 sd, argmax equal where the reference's margin is wide);
 * returns R */
static float compare_ref(const float *got, const float *ref, int V, const char *what)
{
    float lo = ref[0], hi = ref[0];
    for (int i = 0; i < 48 * V; i++) lo = fminf(lo, ref[i]), hi = fmaxf(hi, ref[i]);
    float R = hi - lo, tol = 0.05f * R, maxdiff = 0;
    double se = 0, sum = 0, sum2 = 0;
    int wide = 0, agree_wide = 0, agree_all = 0;
    for (int p = 0; p < 48; p++) {
        const float *a = got + (size_t)p * (size_t)V, *b = ref + (size_t)p * (size_t)V;
        int am = 0, bm = 0;
        float b1 = -INFINITY, b2 = -INFINITY;
        for (int i = 0; i < V; i++) {
            float dlt = fabsf(a[i] - b[i]);
            maxdiff = fmaxf(maxdiff, dlt);
            se += (double)dlt * dlt;
            sum += b[i], sum2 += (double)b[i] * b[i];
            if (a[i] > a[am]) am = i;
            if (b[i] > b[bm]) bm = i;
            if (b[i] > b1)
                b2 = b1, b1 = b[i];
            else if (b[i] > b2)
                b2 = b[i];
        }
        agree_all += am == bm;
        if (b1 - b2 > tol) {
            wide++;
            agree_wide += am == bm;
            CHECKF(am == bm, "position %d: argmax %d, reference %d (margin %.2f)", p, am, bm,
                   b1 - b2);
        }
    }
    double mean = sum / (48.0 * V), sd = sqrt(sum2 / (48.0 * V) - mean * mean);
    double rms = sqrt(se / (48.0 * V));
    printf("reference (%s): R %.2f, max diff %.3f (%.4f R, limit 0.05 R), rms %.4f sd (limit "
           "0.08), argmax %d/48 (%d/%d wide)\n",
           what, R, maxdiff, maxdiff / R, rms / sd, agree_all, agree_wide, wide);
    CHECKF(maxdiff <= tol, "max diff %.3f > %.3f", maxdiff, tol);
    CHECK(rms <= 0.08 * sd);
    CHECK(wide >= 10);
    return R;
}

/* bitnet.cpp stores its KV cache as F16: measured with f16 0.0131 R max and 0.0202 sd rms,
 * with f32 0.0140 R and 0.0228 sd, with q8 0.0356 R and 0.0453 sd (the limits below hold for
 * every type) */
static void test_reference(tern_kv_type kvt)
{
    g_kvt = kvt;
    tern_status st = {0};
    tern_gguf *g;
    CHECK(tern_gguf_open(&g, tern_test_fixture("reference/tiny-2b4t/model.gguf"), &st) == TERN_OK);
    if (!g) return;
    int32_t ids[64];
    int n = read_ids(tern_test_fixture("reference/tiny-2b4t/ids.txt"), ids, 64);
    CHECK(n == 48);
    size_t ref_len;
    float *ref =
        (float *)tern_test_read_file(tern_test_fixture("reference/tiny-2b4t/logits.f32"), &ref_len);
    CHECK(ref && ref_len == 48u * 1024u * 4u);
    runner r;
    if (runner_open(&r, g, 2, TERN_HEAD_F16, 64)) {
        CHECK(0);
        return;
    }
    const int V = r.hp->n_vocab;
    CHECK(V == 1024);
    /* the pool's accounting: F16 blocks are half the F32 ones, q8 a quarter plus a float per
     * head and position */
    {
        const tern_hparams *hp = r.hp;
        uint64_t f32 = tern_kv_block_bytes(hp, hp->n_layer, TERN_KV_F32);
        CHECK(f32 == (uint64_t)hp->n_layer * 2 * TERN_KV_BLOCK * hp->n_head_kv * hp->head_dim * 4);
        CHECK(tern_kv_block_bytes(hp, hp->n_layer, TERN_KV_F16) * 2 == f32);
        CHECK(tern_kv_block_bytes(hp, hp->n_layer, TERN_KV_Q8) ==
              f32 / 4 + (uint64_t)hp->n_layer * 2 * TERN_KV_BLOCK * hp->n_head_kv * 4);
    }
    float *got = malloc(sizeof(float) * 48 * (size_t)V);
    CHECK(run_seq(&r, 0, ids, n, 48, got) == 0);
    char what[64];
    snprintf(what, sizeof what, "kv %s", tern_kv_type_name(kvt));
    const float R = compare_ref(got, ref, V, what);

    /* token by token and in chunks of 5 give the same bits as one batch */
    float *got2 = malloc(sizeof(float) * 48 * (size_t)V);
    tern_kv_release(r.c, 0);
    CHECK(run_seq(&r, 1, ids, n, 1, got2) == 0);
    CHECK(memcmp(got, got2, sizeof(float) * 48 * (size_t)V) == 0);
    tern_kv_release(r.c, 1);
    CHECK(run_seq(&r, 2, ids, n, 5, got2) == 0);
    CHECK(memcmp(got, got2, sizeof(float) * 48 * (size_t)V) == 0);
    tern_kv_release(r.c, 2);
    CHECK(tern_kv_blocks_used(r.c) == 0);
    runner_close(&r);

    /* 1 and 3 threads give the same bits as 2 */
    for (int th = 1; th <= 3; th += 2) {
        runner r2;
        if (runner_open(&r2, g, th, TERN_HEAD_F16, 64)) {
            CHECK(0);
            continue;
        }
        CHECK(run_seq(&r2, 0, ids, n, 48, got2) == 0);
        CHECKF(memcmp(got, got2, sizeof(float) * 48 * (size_t)V) == 0, "threads %d differ", th);
        runner_close(&r2);
    }

    /* two sequences in one micro-batch equal each run alone */
    {
        runner r3;
        if (!runner_open(&r3, g, 2, TERN_HEAD_F16, 64)) {
            const int d = r3.hp->d;
            /* sequence A = ids[0..20), B = ids[20..48) (as its own sequence from position 0) */
            float *a_alone = malloc(sizeof(float) * 28 * (size_t)V);
            CHECK(run_seq(&r3, 3, ids + 20, 28, 28, a_alone) == 0);
            tern_batch_seq bs[2] = {{.slot = 0, .pos0 = 0, .n_tokens = 20},
                                    {.slot = 1, .pos0 = 0, .n_tokens = 28}};
            int32_t mix_ids[48];
            memcpy(mix_ids, ids, sizeof mix_ids);
            float *x = malloc(sizeof(float) * 48 * (size_t)d);
            int32_t rows[48];
            for (int i = 0; i < 48; i++) rows[i] = i;
            float *mix = malloc(sizeof(float) * 48 * (size_t)V);
            tern_embed(r3.c, mix_ids, 48, x);
            CHECK(tern_forward(r3.c, bs, 2, x, &st) == TERN_OK);
            tern_head(r3.c, x, rows, 48, mix);
            CHECK(memcmp(mix, got, sizeof(float) * 20 * (size_t)V) == 0);
            CHECK(memcmp(mix + 20 * (size_t)V, a_alone, sizeof(float) * 28 * (size_t)V) == 0);
            free(a_alone), free(x), free(mix);
            runner_close(&r3);
        } else
            CHECK(0);
    }

    /* the opt-in int8 head (a Q8_0 lookup table, int8 rows and activations) is within the
     * fixture's tolerance of bitnet.cpp too */
    {
        runner r4;
        if (!runner_open(&r4, g, 2, TERN_HEAD_Q8_0, 64)) {
            CHECK(run_seq(&r4, 0, ids, n, 48, got2) == 0);
            float md = 0;
            for (int i = 0; i < 48 * V; i++) md = fmaxf(md, fabsf(got[i] - got2[i]));
            printf("int8 head: max |logit diff| vs F16 head %.4f (%.5f R)\n", md, md / R);
            CHECK(md > 0.0f && md <= 0.02f * R);
            snprintf(what, sizeof what, "kv %s, --head-type q8_0", tern_kv_type_name(kvt));
            compare_ref(got2, ref, V, what);
            runner_close(&r4);
        } else
            CHECK(0);
    }
    free(got), free(got2), free(ref);
    tern_gguf_close(g);
}

/* ns sequences of LD_N tokens each, prefilled in chunks of 64 up to LD_PRE, then decoding
 * together one token each a step: the last steps read more keys than attention.c's
 * ATTN_SPLIT_KEYS (512), where the units past a multiple of the threads (one unit a sequence
 * here: the fixture has one KV head) are split by keys, rows and dimensions. Logits
 * [ns][LD_N][vocab]. */
#define LD_N 600
#define LD_PRE 500
#define LD_SEQS 3
static int long_decode(runner *r, const int32_t *ids, int ns, float *logits)
{
    tern_status st = {0};
    const int d = r->hp->d, V = r->hp->n_vocab;
    float *x = malloc(sizeof(float) * LD_SEQS * 64 * (size_t)d);
    float *y = malloc(sizeof(float) * LD_SEQS * 64 * (size_t)V);
    int32_t rows[LD_SEQS * 64];
    for (int i = 0; i < LD_SEQS * 64; i++) rows[i] = i;
    int rc = 0;
    for (int done = 0; done < LD_N;) {
        const int k = done < LD_PRE ? (LD_PRE - done < 64 ? LD_PRE - done : 64) : 1;
        tern_batch_seq b[LD_SEQS];
        for (int s = 0; s < ns; s++) {
            b[s] = (tern_batch_seq){.slot = s, .pos0 = done, .n_tokens = k};
            tern_embed(r->c, ids + s * LD_N + done, k, x + (size_t)s * k * d);
        }
        if (tern_forward(r->c, b, ns, x, &st)) {
            fprintf(stderr, "forward: %s\n", st.msg);
            rc = 1;
            break;
        }
        tern_head(r->c, x, rows, ns * k, y);
        for (int s = 0; s < ns; s++)
            memcpy(logits + ((size_t)s * LD_N + (size_t)done) * V, y + (size_t)s * k * V,
                   sizeof(float) * (size_t)k * (size_t)V);
        done += k;
    }
    free(x), free(y);
    return rc;
}

/* decode past 512 keys, 1 and 3 sequences: 2 and 3 threads (split units) give the bits of 1 */
static void test_long_decode(tern_kv_type kvt)
{
    tern_status st = {0};
    tern_gguf *g;
    CHECK(tern_gguf_open(&g, tern_test_fixture("reference/tiny-2b4t/model.gguf"), &st) == TERN_OK);
    if (!g) return;
    g_kvt = kvt;
    g_n_ctx = 640;
    int32_t ids[LD_SEQS * LD_N];
    uint32_t z = 12345;
    for (int i = 0; i < LD_SEQS * LD_N; i++)
        z = z * 1103515245u + 12345u, ids[i] = (int32_t)(z >> 8) % 1024;
    for (int ns = 1; ns <= LD_SEQS; ns += 2) {
        float *want = NULL;
        for (int th = 1; th <= 3; th++) {
            runner r;
            if (runner_open(&r, g, th, TERN_HEAD_F16, LD_SEQS * 64)) {
                CHECK(0);
                break;
            }
            const size_t V = (size_t)r.hp->n_vocab, n = (size_t)ns * LD_N * V;
            float *got = malloc(sizeof(float) * n);
            CHECK(long_decode(&r, ids, ns, got) == 0);
            if (!want)
                want = got;
            else {
                size_t first = n;
                for (size_t i = 0; i < n && first == n; i++)
                    if (memcmp(&got[i], &want[i], sizeof(float))) first = i;
                CHECKF(first == n,
                       "kv %s, %d sequences, %d threads: logits differ from 1 thread's from "
                       "sequence %zu position %zu on",
                       tern_kv_type_name(kvt), ns, th, first / (LD_N * V), first / V % LD_N);
                free(got);
            }
            runner_close(&r);
        }
        free(want);
    }
    g_n_ctx = 0;
    tern_gguf_close(g);
}

/* writes a copy of the fixture model with one change, returns the path */
typedef enum {
    DROP_TENSOR,
    BAD_SHAPE,
    BAD_ARCH,
    BAD_TYPE,
    EMBD_Q8_0,
    EMBD_Q6_K,
    BAD_QSCALE
} mutation;

/* A plain quantizer (any valid blocks serve): Q8_0 d = amax / 127; Q6_K per 16 values
 * s = amax / 31, d = max s / 127, sc = round(s / d), q = round(x / (d sc)) in [-32, 31]. */
static void quantize(tern_ggml_type type, const uint16_t *h, uint64_t n, uint8_t *out)
{
    const int blk = type == TERN_TYPE_Q8_0 ? 32 : 256, bb = type == TERN_TYPE_Q8_0 ? 34 : 210;
    for (uint64_t i = 0; i < n; i += (uint64_t)blk, out += bb) {
        float v[256], s[16] = {0}, smax = 0.0f;
        for (int j = 0; j < blk; j++) {
            v[j] = tern_f16_to_f32_1(h[i + (uint64_t)j]);
            s[j / 16] = fmaxf(s[j / 16], fabsf(v[j]));
        }
        memset(out, 0, (size_t)bb);
        if (type == TERN_TYPE_Q8_0) {
            float amax = fmaxf(s[0], s[1]), d = amax / 127.0f;
            uint16_t dh = tern_f32_to_f16_1(d);
            memcpy(out, &dh, 2);
            for (int j = 0; j < 32; j++)
                out[2 + j] = (uint8_t)(int8_t)lroundf(d > 0 ? v[j] / d : 0);
            continue;
        }
        for (int j = 0; j < 16; j++) smax = fmaxf(smax, s[j] /= 31.0f);
        uint16_t dh = tern_f32_to_f16_1(smax / 127.0f);
        memcpy(out + 208, &dh, 2);
        const float d = tern_f16_to_f32_1(dh);
        for (int j = 0; j < 16; j++)
            out[192 + j] = (uint8_t)(d > 0 ? lroundf(fminf(s[j] / d, 127.0f)) : 0);
        for (int e = 0; e < 256; e++) {
            const int hh = e / 128, g = (e % 128) / 32, l = e % 32;
            const float ds = d * (float)(int8_t)out[192 + 8 * hh + 2 * g + l / 16];
            long q = ds > 0 ? lroundf(v[e] / ds) : 0;
            q = (q < -32 ? -32 : q > 31 ? 31 : q) + 32;
            out[64 * hh + 32 * (g & 1) + l] |= (uint8_t)((q & 15) << (4 * (g >> 1)));
            out[128 + 32 * hh + l] |= (uint8_t)((q >> 4) << (2 * g));
        }
    }
}

static const char *mutate(mutation what)
{
    static char path[512];
    tern_status st = {0};
    tern_gguf *g;
    if (tern_gguf_open(&g, tern_test_fixture("reference/tiny-2b4t/model.gguf"), &st)) return NULL;
    tern_gguf_writer *w = tern_gguf_writer_new();
    uint8_t *qbuf = NULL;
    for (uint64_t i = 0; i < tern_gguf_n_kv(g); i++) {
        const tern_gguf_kv *kv = tern_gguf_kv_at(g, i);
        char key[256];
        snprintf(key, sizeof key, "%.*s", (int)kv->key.len, kv->key.ptr);
        if (what == BAD_ARCH && !strcmp(key, "general.architecture"))
            tern_gguf_writer_add_str(w, key, "llama");
        else
            tern_gguf_writer_add_value(w, key, &kv->value);
    }
    for (uint64_t i = 0; i < tern_gguf_n_tensors(g); i++) {
        const tern_gguf_tensor *t = tern_gguf_tensor_at(g, i);
        char name[128];
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
        if (what == DROP_TENSOR && !strcmp(name, "blk.1.ffn_up.weight")) continue;
        uint64_t ne[4] = {t->ne[0], t->ne[1], t->ne[2], t->ne[3]};
        tern_ggml_type type = t->type;
        if (what == BAD_SHAPE && !strcmp(name, "blk.2.attn_k.weight"))
            ne[1] = 128; /* bytes still fit */
        if (what == BAD_TYPE && !strcmp(name, "blk.0.attn_norm.weight")) type = TERN_TYPE_F16;
        const void *data = t->data;
        if (what >= EMBD_Q8_0 && !strcmp(name, "token_embd.weight")) {
            type = what == EMBD_Q6_K ? TERN_TYPE_Q6_K : TERN_TYPE_Q8_0;
            uint64_t nb = 0;
            tern_ggml_nbytes(type, ne[0], ne[0] * ne[1], &nb);
            uint8_t *q = malloc((size_t)nb);
            quantize(type, t->data, ne[0] * ne[1], q);
            if (what == BAD_QSCALE) memcpy(q + 34 * 8 * 5 + 34 * 3, "\x00\x7c", 2); /* Inf */
            tern_gguf_writer_add_tensor(w, name, type, t->n_dims, ne, q, &st);
            qbuf = q; /* the writer reads it at write time */
            continue;
        }
        tern_gguf_writer_add_tensor(w, name, type, t->n_dims, ne, data, &st);
    }
    snprintf(path, sizeof path, "%s/mut%d.gguf", tern_test_tmpdir(), (int)what);
    tern_code rc = tern_gguf_writer_write(w, path, &st);
    free(qbuf);
    tern_gguf_writer_free(w);
    tern_gguf_close(g);
    return rc ? NULL : path;
}

/* the fixture model with one change, opened (NULL after a failed check) */
static tern_gguf *open_mutated(mutation what)
{
    const char *path = mutate(what);
    CHECK(path != NULL);
    if (!path) return NULL;
    tern_status st = {0};
    tern_gguf *g = NULL;
    CHECK(tern_gguf_open(&g, path, &st) == TERN_OK);
    return g;
}

static void expect_load_error(mutation what, const char *needle)
{
    tern_gguf *g = open_mutated(what);
    if (!g) return;
    tern_status st = {0};
    tern_model *m = NULL;
    tern_model_opts mo = {.l0 = 0, .l1 = -1, .embed = true, .head = true};
    tern_code rc = tern_model_load(&m, g, &mo, &st);
    CHECKF(rc != TERN_OK && strstr(st.msg, needle) && !strchr(st.msg, '\n'),
           "mutation %d: rc %d msg '%s' (want '%s')", (int)what, (int)rc, st.msg, needle);
    tern_model_free(m);
    tern_gguf_close(g);
}

/* token_embd as Q8_0 or Q6_K: lookup gives ggml's dequantized rows bitwise, every logit is
 * within tern_gemm_q's bound of the double sum over the dequantized table (written here), and
 * --head-type q8_0 (the table as int8 rows) stays close. */
static void test_quant_embd(mutation what)
{
    const tern_ggml_type type = what == EMBD_Q6_K ? TERN_TYPE_Q6_K : TERN_TYPE_Q8_0;
    tern_gguf *g = open_mutated(what);
    if (!g) return;
    tern_status st = {0};
    const tern_gguf_tensor *te = tern_gguf_find_tensor(g, "token_embd.weight");
    CHECK(te && te->type == type);
    runner r, r8;
    if (runner_open(&r, g, 2, TERN_HEAD_F16, 8) || runner_open(&r8, g, 3, TERN_HEAD_Q8_0, 8)) {
        CHECK(0);
        tern_gguf_close(g);
        return;
    }
    const int d = r.hp->d, V = r.hp->n_vocab, n = 6;
    const size_t row = te->nbytes / (size_t)V;
    float *deq = malloc(sizeof(float) * (size_t)V * (size_t)d);
    for (int v = 0; v < V; v++)
        tern_test_ggml_dequant(type, (const uint8_t *)te->data + (size_t)v * row, d,
                               deq + (size_t)v * d);
    const int32_t ids[6] = {1, 17, 400, 1023, 5, 77};
    float *x = malloc(sizeof(float) * (size_t)n * (size_t)d);
    float *nx = malloc(sizeof(float) * (size_t)n * (size_t)d);
    float *lg = malloc(sizeof(float) * (size_t)n * (size_t)V);
    float *lg8 = malloc(sizeof(float) * (size_t)n * (size_t)V);
    tern_embed(r.c, ids, n, x);
    for (int i = 0; i < n; i++)
        CHECKF(memcmp(x + (size_t)i * d, deq + (size_t)ids[i] * d, sizeof(float) * (size_t)d) == 0,
               "%s lookup of id %d", tern_ggml_type_name(type), ids[i]);
    tern_batch_seq b = {.slot = 0, .pos0 = 0, .n_tokens = n};
    CHECK(tern_forward(r.c, &b, 1, x, &st) == TERN_OK);
    int32_t rows[6] = {0, 1, 2, 3, 4, 5};
    tern_head(r.c, x, rows, n, lg);
    tern_final_norm(r.c, x, rows, n, nx);
    double worst = 0.0;
    for (int t = 0; t < n; t++)
        for (int v = 0; v < V; v++) {
            double ref = 0.0, sa = 0.0;
            for (int i = 0; i < d; i++) {
                double p = (double)deq[(size_t)v * d + i] * nx[(size_t)t * d + i];
                ref += p, sa += fabs(p);
            }
            double lim = ((double)d / 8 + 8) * 0x1p-24 * sa + 1e-30;
            double e = fabs((double)lg[(size_t)t * V + v] - ref);
            if (e / lim > worst) worst = e / lim;
        }
    printf("%s token_embd: logits worst %.3f of the bound against the dequantized table\n",
           tern_ggml_type_name(type), worst);
    CHECK(worst <= 1.0);
    /* --head-type q8_0 over a quantized table, int8 activations: Q8_0 keeps the table's own
     * blocks for the head and, held once, for the lookup (still ggml's rows bit for bit; the
     * same bytes a row as the table; the weights not a table's size larger); Q6_K gets int8
     * rows (d + 4 bytes a row: int8 and a scale) beside the table. Both close to the table's
     * own logits. */
    tern_embed(r8.c, ids, n, x);
    for (int i = 0; i < n; i++)
        CHECKF(memcmp(x + (size_t)i * d, deq + (size_t)ids[i] * d, sizeof(float) * (size_t)d) == 0,
               "%s lookup of id %d with --head-type q8_0", tern_ggml_type_name(type), ids[i]);
    const uint64_t vpad = ((uint64_t)V + 15) / 16 * 16;
    if (type == TERN_TYPE_Q8_0) {
        CHECK(tern_model_bytes_per_token(r8.m) ==
              tern_model_bytes_per_token(r.m) - (uint64_t)V * row + vpad * row);
        CHECK(tern_model_weight_bytes(r8.m) <=
              tern_model_weight_bytes(r.m) + (vpad - (uint64_t)V) * row);
    } else {
        CHECK(tern_model_bytes_per_token(r8.m) ==
              tern_model_bytes_per_token(r.m) - (uint64_t)V * row + vpad * (uint64_t)(d + 4));
    }
    CHECK(run_seq(&r, 1, ids, n, 4, lg) == 0 && run_seq(&r8, 1, ids, n, 3, lg8) == 0);
    float lo = INFINITY, hi = -INFINITY, md = 0.0f;
    for (size_t i = 0; i < (size_t)n * (size_t)V; i++) {
        lo = fminf(lo, lg[i]), hi = fmaxf(hi, lg[i]);
        md = fmaxf(md, fabsf(lg[i] - lg8[i]));
    }
    printf("%s token_embd, --head-type q8_0: max |logit diff| %.4f (%.5f of the range)\n",
           tern_ggml_type_name(type), md, md / (hi - lo));
    CHECK(md > 0.0f && md <= 0.03f * (hi - lo));
    free(deq), free(x), free(nx), free(lg), free(lg8);
    runner_close(&r);
    runner_close(&r8);
    tern_gguf_close(g);
}

int main(void)
{
    tern_kernels_init();
    if (!tern_test_need("reference/tiny-2b4t/model.gguf")) return tern_test_finish("test_model");
    test_reference(TERN_KV_F16);
    test_reference(TERN_KV_F32);
    test_reference(TERN_KV_Q8);
    test_long_decode(TERN_KV_F16);
    test_long_decode(TERN_KV_F32);
    test_long_decode(TERN_KV_Q8);
    expect_load_error(DROP_TENSOR, "blk.1.ffn_up.weight");
    expect_load_error(BAD_SHAPE, "blk.2.attn_k.weight' shape: got {256, 128}, expected {256, 64}");
    expect_load_error(BAD_ARCH, "architecture: got 'llama'");
    expect_load_error(BAD_TYPE, "blk.0.attn_norm.weight' type: got F16, expected F32");
    test_quant_embd(EMBD_Q8_0);
    test_quant_embd(EMBD_Q6_K);
    expect_load_error(BAD_QSCALE, "tensor 'token_embd.weight': got a Inf block scale at row 5 "
                                  "block 3, expected finite scales");
    return tern_test_finish("test_model");
}
