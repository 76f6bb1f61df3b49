/* test_golden.c: parity of the engine with the PyTorch model that trained the embedded
 * default model (tests/golden/README.md): logits at stored positions within a tolerance of the
 * logit range and the same 64-token greedy continuations (up to the first step whose reference
 * top-2 margin is inside the measured logit error, where a flip is legitimate), for each KV
 * cache type: f32 (the reference's own arithmetic, so most rows exact), f16 (the default) and
 * q8, whose rounding of K and V the reference does not model (looser bounds, below). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "ternpipe/kernels.h"
#include "ternpipe/model.h"
#include "ternpipe/runtime.h"

/* Logit tolerance as a fraction of the logit range (the 1e-3). The reference is the
 * PyTorch eval model computing in the engine's specified arithmetic (scripts/train/model.py,
 * ARITH = "engine"): with it the reference kernel variant is bit-identical, and the SIMD
 * variants, whose float kernels equal the reference but for ~1e-16 ties, measured 1.2e-7 of
 * the range on these 25 rows. The int8 quantizer is discontinuous: a single flipped code
 * moves the logits by ~2e-3 of the range, so most rows must also be exact (below). */
#define TOL 1e-3
/* The default F16 KV cache rounds every K and V element to binary16 (relative 2^-11), which the
 * fp32 reference does not: measured 3.31e-3 of the range (worst of the 5 prompts; 0 of 25 rows
 * exact, since the rounding moves every row and flips some quantizer codes), all 320 greedy
 * steps equal, in every kernel variant. */
#define TOL_F16 5e-3
/* int8 K and V with a scale per head and position (absmax/127): measured 4.06e-3 of the range,
 * 282 of 320 greedy steps equal before a prompt's first legitimate flip (a reference top-2
 * margin below 2 TOL_Q8 of the range), in every kernel variant. */
#define TOL_Q8 6e-3

static uint32_t rd_u32(const unsigned char **p)
{
    uint32_t v;
    memcpy(&v, *p, 4);
    *p += 4;
    return v;
}

static void run_golden(const unsigned char *buf, const char *model_path, tern_kv_type kvt,
                       double tol, bool need_exact)
{
    const unsigned char *p = buf + 8;
    uint32_t version = rd_u32(&p), V = rd_u32(&p), n_prompts = rd_u32(&p), n_pos = rd_u32(&p);
    uint32_t n_gen = rd_u32(&p);
    rd_u32(&p), rd_u32(&p);
    p += 32;
    CHECK(version == 1 && n_prompts == 5 && n_gen == 64);
    tern_status st = {0};
    tern_gguf *g = NULL;
    tern_topo *topo = NULL;
    tern_pool *pool = NULL;
    tern_model *m = NULL;
    tern_ctx *c = NULL;
    tern_model_opts mo = {.l0 = 0, .l1 = -1, .embed = true, .head = true};
    tern_ctx_opts co = {.max_tokens = 256, .max_seqs = 1, .kv_type = kvt};
    if (tern_gguf_open(&g, model_path, &st) || tern_topo_discover(&topo, &st) ||
        tern_pool_create(&pool, topo, 2, &st) || tern_model_load(&m, g, &mo, &st) ||
        tern_ctx_create(&c, m, pool, &co, &st)) {
        fprintf(stderr, "%s\n", st.msg);
        CHECK(0);
        return;
    }
    const tern_hparams *hp = tern_model_hparams(m);
    CHECK((uint32_t)hp->n_vocab == V);
    const int d = hp->d;
    float *x = malloc(sizeof(float) * 256 * (size_t)d);
    float *lg = malloc(sizeof(float) * 256 * V);
    int32_t rows[256], ids[256 + 64];
    for (int i = 0; i < 256; i++) rows[i] = i;
    double worst = 0;
    float row_diff[64];
    int n_rows = 0;
    int compared = 0, total_gen_ok = 0;
    for (uint32_t q = 0; q < n_prompts; q++) {
        uint32_t L = rd_u32(&p);
        CHECK(L >= 64 && L <= 200);
        for (uint32_t i = 0; i < L; i++) ids[i] = (int32_t)rd_u32(&p);
        uint32_t pos[16];
        for (uint32_t i = 0; i < n_pos; i++) pos[i] = rd_u32(&p);
        const float *ref = (const float *)
            p; /* the file is read into malloc'd memory: aligned enough for memcpy below */
        p += 4ull * n_pos * V;
        uint32_t gen[64];
        float margin[64];
        for (uint32_t i = 0; i < n_gen; i++) gen[i] = rd_u32(&p);
        for (uint32_t i = 0; i < n_gen; i++) memcpy(&margin[i], p + 4 * i, 4);
        p += 4ull * n_gen;
        /* prefill as one batch, logits of every position */
        tern_kv_release(c, 0);
        tern_batch_seq b = {.slot = 0, .pos0 = 0, .n_tokens = (int32_t)L};
        tern_embed(c, ids, (int32_t)L, x);
        CHECK(tern_forward(c, &b, 1, x, &st) == TERN_OK);
        tern_head(c, x, rows, (int32_t)L, lg);
        float lo = INFINITY, hi = -INFINITY, maxd = 0;
        for (uint32_t i = 0; i < n_pos; i++) {
            float pd = 0;
            for (uint32_t v = 0; v < V; v++) {
                float r;
                memcpy(&r, &ref[(size_t)i * V + v], 4);
                lo = fminf(lo, r), hi = fmaxf(hi, r);
                pd = fmaxf(pd, fabsf(r - lg[(size_t)pos[i] * V + v]));
            }
            maxd = fmaxf(maxd, pd);
            row_diff[n_rows++] = pd;
            if (getenv("TERN_TEST_VERBOSE"))
                fprintf(stderr, "prompt %u pos %u: max |diff| %.5f\n", q, pos[i], pd);
        }
        for (int i = n_rows - (int)n_pos; i < n_rows; i++) row_diff[i] /= hi - lo;
        double rel = maxd / (hi - lo);
        if (rel > worst) worst = rel;
        CHECKF(rel <= tol, "kv %s prompt %u: max |diff| %.5f = %.2e of the range (limit %.0e)",
               tern_kv_type_name(kvt), q, maxd, rel, tol);
        /* greedy with the KV cache, one token per step */
        int32_t n = (int32_t)L;
        float *last = lg + (size_t)(L - 1) * V;
        int ok_steps = 0;
        for (uint32_t s = 0; s < n_gen; s++) {
            int best = 0;
            for (uint32_t v = 1; v < V; v++)
                if (last[v] > last[best]) best = (int)v;
            if (best != (int)gen[s]) {
                /* a flip is legitimate only where the reference's top-2 margin is tiny */
                CHECKF(margin[s] < 2 * tol * (hi - lo),
                       "kv %s prompt %u step %u: got %d, expected %u (margin %.4f)",
                       tern_kv_type_name(kvt), q, s, best, gen[s], margin[s]);
                break;
            }
            ok_steps++;
            ids[n] = best;
            tern_batch_seq b1 = {.slot = 0, .pos0 = n, .n_tokens = 1};
            tern_embed(c, &ids[n], 1, x);
            CHECK(tern_forward(c, &b1, 1, x, &st) == TERN_OK);
            tern_head(c, x, rows, 1, lg);
            last = lg;
            n++;
        }
        total_gen_ok += ok_steps;
        compared++;
    }
    /* a systematic error (a wrong op, order or constant) moves every row; the quantizer's flips
     * (see the header) move some. Rows equal to the reference within 1e-5 of the range: */
    int exact = 0;
    for (int i = 0; i < n_rows; i++) exact += row_diff[i] <= 1e-5f;
    if (need_exact)
        CHECKF(exact * 5 >= n_rows * 4,
               "only %d of %d logit rows equal the reference (expected at least 4/5)", exact,
               n_rows);
    printf("golden (kv %s, limit %.0e): %d of %d rows equal to 1e-5 of the range, ",
           tern_kv_type_name(kvt), tol, exact, n_rows);
    printf("%d prompts, worst logit diff %.2e of the range, greedy steps matching %d/%u\n",
           compared, worst, total_gen_ok, n_prompts * n_gen);
    free(x), free(lg);
    tern_ctx_free(c);
    tern_model_free(m);
    tern_pool_free(pool);
    tern_topo_free(topo);
    tern_gguf_close(g);
}

int main(void)
{
    tern_kernels_init();
    const char *src = getenv("TERN_SOURCE_DIR");
    char model_path[4096], golden_path[4096];
    snprintf(model_path, sizeof model_path, "%s/models/tinystories-bitnet.gguf", src ? src : ".");
    snprintf(golden_path, sizeof golden_path, "%s/tests/golden/tinystories-golden.bin",
             src ? src : ".");
    size_t len;
    unsigned char *buf = tern_test_read_file(golden_path, &len);
    CHECK(buf != NULL && len > 68 && !memcmp(buf, "TPGOLDEN", 8));
    if (!buf) return tern_test_finish("test_golden");
    run_golden(buf, model_path, TERN_KV_F32, TOL, true);
    run_golden(buf, model_path, TERN_KV_F16, TOL_F16, false);
    run_golden(buf, model_path, TERN_KV_Q8, TOL_Q8, false);
    free(buf);
    return tern_test_finish("test_golden");
}
