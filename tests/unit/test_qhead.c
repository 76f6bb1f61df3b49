/* test_qhead.c: the int8 head on a Q8_0 table's own blocks (kernels.h, tern_i8mat_new_q8_0).
 * - lookup rows (tern_i8mat_row) equal ggml's Q8_0 dequantization (the harness's copy of
 *   ggml's loop) bit for bit, codes -128..127 and any finite F16 scale included;
 * - the GEMM of every variant equals kernels.h's formula (exact block sums, an fmaf chain over
 *   the blocks, one double product), written here from the codes, for any row range, token
 *   count and view, and stays within the stated bound of the float head on the unquantized
 *   activations;
 * - a block scale that is not finite is refused; the shape rules are enforced. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "kernels/kernels-internal.h"
#include "ternpipe/gguf.h"
#include "ternpipe/kernels.h"

static uint64_t g_rng = 0x9e3779b97f4a7c15ULL;
static uint64_t rnd(void)
{
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    return g_rng;
}
static int64_t rndi(int64_t lo, int64_t hi) /* [lo, hi] */
{
    return lo + (int64_t)(rnd() % (uint64_t)(hi - lo + 1));
}
static float rndn(void)
{
    double s = 0;
    for (int i = 0; i < 4; i++) s += (double)(rnd() >> 11) * 0x1p-53;
    return (float)((s - 2.0) * 1.7320508);
}
static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) abort();
    return p;
}

/* n rows of k/32 Q8_0 blocks: scales of many magnitudes (zero too), codes over the whole
 * int8 range in some rows */
static uint8_t *make_q8_0(int64_t n, int64_t k, int it)
{
    const int64_t nb = k / 32;
    uint8_t *b = xmalloc((size_t)(n * nb * 34));
    for (int64_t r = 0; r < n; r++)
        for (int64_t j = 0; j < nb; j++) {
            uint8_t *p = b + (r * nb + j) * 34;
            float d = it % 4 == 0 ? ldexpf(1.0f, (int)rndi(-20, 10)) : fabsf(rndn()) * 0.002f;
            if (rndi(0, 30) == 0) d = 0.0f;
            const uint16_t h = tern_f32_to_f16_1(rndi(0, 1) ? d : -d);
            p[0] = (uint8_t)(h & 0xff), p[1] = (uint8_t)(h >> 8);
            for (int i = 0; i < 32; i++)
                p[2 + i] = (uint8_t)(int8_t)(r % 5 == 0 ? rndi(-128, 127) : rndi(-40, 40));
        }
    return b;
}

/* kernels.h's formula, from the matrix's codes and scales */
static float want_logit(const tern_i8mat *m, int64_t o, const int8_t *xq, float xs)
{
    float A = 0.0f;
    for (int64_t b = 0; b < m->nb; b++) {
        int64_t S = 0;
        for (int64_t i = b * 32; i < b * 32 + 32; i++) S += (int64_t)tern_i8mat_q(m, o, i) * xq[i];
        const float d = tern_f16_to_f32_1(m->bscale[((o / 16) * m->nb + b) * 16 + o % 16]);
        A = fmaf(d, (float)S, A);
    }
    return (float)((double)A * (double)xs);
}

static void test_blocks(void)
{
    tern_simd vars[TERN_SIMD_COUNT];
    int nv = 0;
    tern_status st;
    for (int v = 0; v < TERN_SIMD_COUNT; v++)
        if (tern_simd_supported((tern_simd)v)) vars[nv++] = (tern_simd)v;
    double worst = 0.0;
    for (int it = 0; it < 40; it++) {
        const int64_t k = it % 3 == 0 ? 32 * rndi(1, 6) : (it % 3 == 1 ? 2560 : 32 * rndi(7, 90));
        /* one token alone first, on up to 400 rows (the one-token tiles take rows from
         * several segments) */
        const int64_t n = it < 6 ? rndi(1, 400) : rndi(1, 120),
                      n_tok = it < 6 ? 1 : rndi(1, it % 4 == 0 ? 70 : 14);
        const int64_t ldy = n + 3;
        uint8_t *blocks = make_q8_0(n, k, it);
        tern_i8mat *m;
        CHECK(tern_i8mat_new_q8_0(&m, n, k, &st) == TERN_OK);
        CHECK(tern_i8mat_q8_0(m) && tern_i8mat_rows(m) == n && tern_i8mat_cols(m) == k);
        float *row = xmalloc((size_t)k * 4), *ref = xmalloc((size_t)k * 4);
        for (int64_t o = 0; o < n; o++) {
            CHECK(tern_i8mat_set_row_q8_0(m, o, blocks + o * (k / 32) * 34));
            tern_i8mat_row(m, o, row);
            tern_test_ggml_dequant(TERN_TYPE_Q8_0, blocks + o * (k / 32) * 34, k, ref);
            CHECKF(memcmp(row, ref, (size_t)k * 4) == 0, "Q8_0 lookup row %lld k=%lld",
                   (long long)o, (long long)k);
        }
        float *x = xmalloc((size_t)(n_tok * k) * 4), *xs = xmalloc((size_t)n_tok * 4);
        int8_t *xq = xmalloc((size_t)(n_tok * k));
        int32_t *xsum = xmalloc((size_t)n_tok * 4);
        for (int64_t i = 0; i < n_tok * k; i++) x[i] = rndn();
        tern_head_quant(x, n_tok, k, xq, xs, xsum);
        const size_t ny = (size_t)(n_tok * ldy);
        float *y0 = xmalloc(ny * 4), *y1 = xmalloc(ny * 4);
        for (size_t i = 0; i < ny; i++) y0[i] = -7.0f;
        for (int64_t t = 0; t < n_tok; t++)
            for (int64_t o = 0; o < n; o++) {
                const float want = want_logit(m, o, xq + t * k, xs[t]);
                y0[t * ldy + o] = want;
                /* the bound against the float head of the table's values and unquantized x */
                tern_test_ggml_dequant(TERN_TYPE_Q8_0, blocks + o * (k / 32) * 34, k, ref);
                double exact = 0.0, bound = 0.0, mag = 0.0;
                for (int64_t i = 0; i < k; i++) {
                    exact += (double)ref[i] * x[t * k + i];
                    bound += fabs((double)ref[i]) * xs[t] / 2;
                    mag += fabs((double)ref[i] * xq[t * k + i] * xs[t]);
                }
                const double lim = bound + (double)(k / 32 + 1) * 0x1p-24 * mag + 1e-30;
                const double e = fabs(want - exact);
                CHECKF(e <= lim, "Q8_0 head k=%lld: |y - sum w x| %g > %g", (long long)k, e, lim);
                if (e / lim > worst) worst = e / lim;
            }
        for (int vi = 0; vi < nv; vi++) {
            CHECK(tern_kernels_force(vars[vi], &st) == TERN_OK);
            for (size_t i = 0; i < ny; i++) y1[i] = -7.0f;
            tern_gemm_i8(m, xq, xs, xsum, n_tok, y1, ldy, 0, n);
            CHECKF(memcmp(y0, y1, ny * 4) == 0, "Q8_0 head %s n=%lld k=%lld n_tok=%lld",
                   tern_simd_name(vars[vi]), (long long)n, (long long)k, (long long)n_tok);
            /* a row range in two calls, split anywhere */
            const int64_t a = rndi(1, n);
            for (size_t i = 0; i < ny; i++) y1[i] = -7.0f;
            tern_gemm_i8(m, xq, xs, xsum, n_tok, y1, ldy, 0, a);
            if (a < n) tern_gemm_i8(m, xq, xs, xsum, n_tok, y1, ldy, a, n);
            CHECKF(memcmp(y0, y1, ny * 4) == 0, "Q8_0 head %s split at %lld",
                   tern_simd_name(vars[vi]), (long long)a);
            /* a view of the rows from a multiple of 16 */
            if (n > 16) {
                const int64_t r0 = 16 * rndi(1, (n - 1) / 16);
                tern_i8mat *vw;
                CHECK(tern_i8mat_view(&vw, m, r0, n - r0, &st) == TERN_OK);
                float *yv = xmalloc((size_t)(n_tok * (n - r0)) * 4);
                tern_gemm_i8(vw, xq, xs, xsum, n_tok, yv, n - r0, 0, n - r0);
                bool same = true;
                for (int64_t t = 0; t < n_tok; t++)
                    same = same &&
                           memcmp(yv + t * (n - r0), y0 + t * ldy + r0, (size_t)(n - r0) * 4) == 0;
                CHECKF(same, "Q8_0 head view %s from row %lld", tern_simd_name(vars[vi]),
                       (long long)r0);
                tern_i8mat_row(vw, 0, row);
                tern_i8mat_row(m, r0, ref);
                CHECK(memcmp(row, ref, (size_t)k * 4) == 0);
                free(yv);
                tern_i8mat_free(vw);
            }
        }
        CHECK(tern_i8mat_bytes(m) == (uint64_t)((n + 15) / 16) * 16 * (uint64_t)(k + k / 32 * 2));
        free(blocks), free(row), free(ref), free(x), free(xs), free(xq), free(xsum), free(y0);
        free(y1);
        tern_i8mat_free(m);
    }
    printf("Q8_0 head: worst error %.3f of the bound\n", worst);
    CHECK(worst > 0.0);
}

static void test_reject(void)
{
    tern_status st;
    tern_i8mat *m;
    CHECK(tern_i8mat_new_q8_0(&m, 4, 48, &st) == TERN_EINVAL && m == NULL); /* k % 32 */
    CHECK(tern_i8mat_new_q8_0(&m, 0, 64, &st) == TERN_EINVAL);
    CHECK(tern_i8mat_new_q8_0(&m, 20, 64, &st) == TERN_OK);
    uint8_t b[2 * 34] = {0};
    for (int i = 0; i < 32; i++) b[2 + i] = 1, b[36 + i] = 2;
    b[0] = 0x00, b[1] = 0x3c;   /* 1.0 */
    b[34] = 0x00, b[35] = 0x7c; /* +Inf */
    CHECK(!tern_i8mat_set_row_q8_0(m, 3, b));
    float r[64];
    tern_i8mat_row(m, 3, r);
    for (int i = 0; i < 64; i++) CHECK(r[i] == 0.0f); /* left zero */
    b[35] = 0xfe;                                     /* NaN, sign set */
    CHECK(!tern_i8mat_set_row_q8_0(m, 3, b));
    b[35] = 0x40; /* 2.0 */
    CHECK(tern_i8mat_set_row_q8_0(m, 3, b));
    tern_i8mat_row(m, 3, r);
    CHECK(r[0] == 1.0f && r[40] == 4.0f);
    tern_i8mat *v;
    CHECK(tern_i8mat_view(&v, m, 8, 4, &st) == TERN_EINVAL && v == NULL); /* not % 16 */
    CHECK(tern_i8mat_view(&v, m, 16, 5, &st) == TERN_EINVAL);             /* past the end */
    CHECK(tern_i8mat_view(&v, m, 16, 4, &st) == TERN_OK);
    tern_i8mat_free(v);
    tern_i8mat_free(m);
}

int main(void)
{
    tern_kernels_init();
    test_blocks();
    test_reject();
    return tern_test_finish("test_qhead");
}
