/* test_kernels.c: every kernel variant against the scalar reference.
 *
 * Integer kernels (act-quant, ternary GEMM) and the EXACT float kernels must equal the
 * reference bit for bit; the others must stay within the bounds stated in kernels.h. The
 * repacking tests encode one random ternary matrix as I2_S, TQ2_0 and TQ1_0 with encoders
 * written here from the spec (3.4, 3.5) and demand the same trits and the same GEMM output as
 * from_trits. Seeded RNG only.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "kernels/kernels-internal.h"
#include "ternpipe/kernels.h"

/* ---- helpers ---- */

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return g_rng * 0x2545f4914f6cdd1dull;
}
static int64_t rndi(int64_t lo, int64_t hi) /* [lo, hi] */
{
    return lo + (int64_t)(rnd() % (uint64_t)(hi - lo + 1));
}
static float rndf(void) /* [-1, 1) */
{
    return (float)((double)(rnd() >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}
static float rndn(void) /* roughly normal */
{
    return (rndf() + rndf() + rndf()) * 1.2f;
}
static uint32_t f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static float u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static bool same_bits(const float *a, const float *b, int64_t n)
{
    return memcmp(a, b, (size_t)n * sizeof(float)) == 0;
}
static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) abort();
    return p;
}

static tern_simd g_variants[TERN_SIMD_COUNT];
static int g_nvariants;

static void use(tern_simd v)
{
    tern_status st;
    tern_code rc = tern_kernels_force(v, &st);
    CHECKF(rc == TERN_OK, "force %s: %s", tern_simd_name(v), st.msg);
}

/* ---- dispatch ---- */

/* TERN_SIMD is read once per process: check it in a child (before any thread exists). */
static int env_child(const char *value)
{
    pid_t pid = fork();
    if (pid == 0) {
        setenv("TERN_SIMD", value, 1);
        tern_simd v = TERN_SIMD_COUNT;
        tern_status st;
        tern_code rc = tern_kernels_init_checked(&v, &st);
        if (rc == TERN_OK) _exit(v == tern_kernels_active() ? 10 + (int)v : 99);
        _exit(tern_kernels_init() == TERN_SIMD_COUNT ? 20 + (int)rc : 98);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return -1;
    return WEXITSTATUS(status);
}

static void test_dispatch(void)
{
    /* first, while this process has not initialized the kernels (children inherit that) */
    CHECK(env_child("ref") == 10 + TERN_SIMD_REF);
    CHECK(env_child("bogus") == 20 + TERN_EINVAL);
    CHECK(env_child("avx512") ==
          (tern_simd_supported(TERN_SIMD_AVX512) ? 10 + TERN_SIMD_AVX512 : 20 + TERN_EUNSUPPORTED));
    CHECK(env_child("amx") ==
          (tern_simd_supported(TERN_SIMD_AMX) ? 10 + TERN_SIMD_AMX : 20 + TERN_EUNSUPPORTED));
    CHECK(tern_simd_supported(TERN_SIMD_REF));
    CHECK(strcmp(tern_simd_name(TERN_SIMD_AVX512), "avx512") == 0);
    CHECK(strcmp(tern_simd_name(TERN_SIMD_COUNT), "?") == 0);
    tern_simd init = tern_kernels_init();
    CHECK(init < TERN_SIMD_COUNT);
    CHECK(tern_kernels_active() == init);
    tern_status st;
    CHECK(tern_kernels_force(TERN_SIMD_COUNT, &st) == TERN_EINVAL);
    for (int v = 0; v < TERN_SIMD_COUNT; v++) {
        if (tern_simd_supported((tern_simd)v)) {
            g_variants[g_nvariants++] = (tern_simd)v;
            CHECK(tern_kernels_force((tern_simd)v, &st) == TERN_OK);
            CHECK(tern_kernels_active() == (tern_simd)v);
        } else {
            CHECK(tern_kernels_force((tern_simd)v, &st) == TERN_EUNSUPPORTED);
        }
    }
    /* the peak loops count the multiply-adds of their instruction: one per accumulator a round
     * (16; AVX2's 12 fit its 16 registers with the operands) */
    static const uint64_t per_op[TERN_SIMD_COUNT][2] = {{1, 1}, {32, 8}, {64, 16}, {16384, 16}};
    static const uint64_t accs[TERN_SIMD_COUNT] = {16, 12, 16, 16};
    for (int i = 0; i < g_nvariants; i++) {
        CHECK(tern_kernels_force(g_variants[i], &st) == TERN_OK);
        for (int kind = 0; kind < 2; kind++)
            CHECKF(tern_compute_peak((tern_peak_kind)kind, 1000) ==
                       1000 * accs[g_variants[i]] * per_op[g_variants[i]][kind],
                   "peak %s kind %d", tern_simd_name(g_variants[i]), kind);
        /* the vector int8 dot: the tiles' variant has avx512's */
        const int vec = g_variants[i] == TERN_SIMD_AMX ? TERN_SIMD_AVX512 : g_variants[i];
        CHECK(tern_compute_peak(TERN_PEAK_INT8_VEC, 1000) == 1000 * accs[vec] * per_op[vec][0]);
    }
    printf("variants:");
    for (int i = 0; i < g_nvariants; i++) printf(" %s", tern_simd_name(g_variants[i]));
    printf("\n");
}

/* ---- activation quantization ---- */

static void fill_x(float *x, int64_t k, int kind)
{
    float mag = powf(10.0f, (float)rndi(-8, 30));
    for (int64_t j = 0; j < k; j++) {
        switch (kind) {
        case 0:
            x[j] = rndn();
            break;
        case 1:
            x[j] = rndn() * mag;
            break;
        case 2:
            x[j] = 0.0f;
            break;
        case 3:
            x[j] = rndf() * 1e-6f;
            break; /* amax below the 1e-5 clamp */
        case 4:
            x[j] = (float)rndi(-127, 126) + 0.5f;
            break; /* ties: amax 127 -> s = 1 */
        case 5:
            x[j] = (float)(2 * rndi(-63, 63) + 1);
            break; /* ties after s = 0.5 */
        case 6:
            x[j] = rndf() * FLT_MAX;
            break;
        case 7:
            x[j] = u2f((uint32_t)rnd() & 0x807fffffu);
            break; /* subnormals */
        default:
            x[j] = j % 3 == 0 ? NAN : rndn();
            break;
        }
    }
    if (kind == 4) x[rndi(0, k - 1)] = 127.0f; /* pin amax so that s is exactly 1 */
    if (kind == 5) x[rndi(0, k - 1)] = -254.0f;
}

static void test_act_quant(void)
{
    int bad = 0, ties = 0;
    for (int it = 0; it < 600; it++) {
        int64_t n = rndi(1, 4), k = it % 5 == 0 ? rndi(1, 40) : rndi(1, 3000);
        if (it % 7 == 0) k = 128 * rndi(1, 20);
        float *x = xmalloc((size_t)(n * k) * sizeof(float));
        int kind = it % 9;
        for (int64_t i = 0; i < n; i++) fill_x(x + i * k, k, i == 0 ? kind : (int)rndi(0, 7));
        int8_t *q0 = xmalloc((size_t)(n * k)), *q1 = xmalloc((size_t)(n * k));
        float s0[4], s1[4];
        int32_t c0[4], c1[4];
        tern_ref_act_quant(x, n, k, q0, s0, c0);
        /* the reference itself: spec 2.3 with rint (default rounding mode is to nearest even) */
        for (int64_t i = 0; i < n && kind < 8; i++) {
            float amax = 0.0f;
            for (int64_t j = 0; j < k; j++) amax = fmaxf(amax, fabsf(x[i * k + j]));
            amax = fmaxf(amax, 1e-5f);
            float sc = 127.0f / amax;
            CHECK(f2u(sc) == f2u(s0[i]));
            int32_t sum = 0;
            for (int64_t j = 0; j < k; j++) {
                float v = rintf(x[i * k + j] * sc);
                int qv = (int)fminf(fmaxf(v, -128.0f), 127.0f);
                if (fabsf(x[i * k + j] * sc - truncf(x[i * k + j] * sc)) == 0.5f) ties++;
                bad += qv != q0[i * k + j];
                sum += qv;
            }
            CHECK(sum == c0[i]);
        }
        for (int vi = 0; vi < g_nvariants; vi++) {
            use(g_variants[vi]);
            memset(q1, 0x55, (size_t)(n * k));
            tern_act_quant(x, n, k, q1, s1, c1);
            CHECKF(memcmp(q0, q1, (size_t)(n * k)) == 0 && same_bits(s0, s1, n) &&
                       memcmp(c0, c1, (size_t)n * 4) == 0,
                   "act_quant %s n=%lld k=%lld kind=%d", tern_simd_name(g_variants[vi]),
                   (long long)n, (long long)k, kind);
        }
        free(x);
        free(q0);
        free(q1);
    }
    CHECKF(bad == 0, "%d quantized values differ from rintf", bad);
    CHECKF(ties > 1000, "only %d ties exercised", ties);
    /* rounding helper on its own */
    CHECK(tern_round_half_even(0.5f) == 0.0f && tern_round_half_even(1.5f) == 2.0f);
    CHECK(tern_round_half_even(-2.5f) == -2.0f && tern_round_half_even(-3.5f) == -4.0f);
    CHECK(tern_round_half_even(0.49999997f) == 0.0f && tern_round_half_even(-126.5f) == -126.0f);
}

/* The int8 KV / head quantizer: the reference against kernels.h's rule written with rintf,
 * then every variant bitwise against the reference (codes, scales, and the head's row sums)
 * on the same inputs as the activation quantizer, with infinities and NaN mixed in. */
static void test_kv_quant(void)
{
    int bad = 0;
    for (int it = 0; it < 400; it++) {
        int64_t n = rndi(1, 4), d = it % 3 == 0 ? rndi(1, 40) : rndi(1, 3000);
        if (it % 7 == 0) d = 128 * rndi(1, 20);
        float *x = xmalloc((size_t)(n * d) * sizeof(float));
        for (int64_t i = 0; i < n; i++) fill_x(x + i * d, d, (int)rndi(0, 8));
        if (it % 11 == 0) x[rndi(0, n * d - 1)] = it % 2 ? INFINITY : -INFINITY;
        int8_t *q0 = xmalloc((size_t)(n * d)), *q1 = xmalloc((size_t)(n * d));
        float s0[4], s1[4];
        int32_t c0[4], c1[4];
        tern_ref_kv_quant_q8(x, n, d, q0, s0, c0);
        for (int64_t i = 0; i < n; i++) {
            float amax = 0.0f;
            for (int64_t j = 0; j < d; j++)
                if (fabsf(x[i * d + j]) > amax) amax = fabsf(x[i * d + j]);
            const bool zero = !(amax > 0.0f) || isinf(amax);
            CHECK(f2u(s0[i]) == f2u(zero ? 0.0f : amax / 127.0f));
            int32_t sum = 0;
            for (int64_t j = 0; j < d; j++) {
                float v = zero ? 0.0f : rintf(x[i * d + j] * (127.0f / amax));
                int qv = isnan(v) ? 0 : (int)fminf(fmaxf(v, -127.0f), 127.0f);
                bad += qv != q0[i * d + j];
                sum += qv;
            }
            CHECK(sum == c0[i]);
        }
        for (int vi = 0; vi < g_nvariants; vi++) {
            use(g_variants[vi]);
            memset(q1, 0x55, (size_t)(n * d));
            tern_head_quant(x, n, d, q1, s1, c1);
            CHECKF(memcmp(q0, q1, (size_t)(n * d)) == 0 && same_bits(s0, s1, n) &&
                       memcmp(c0, c1, (size_t)n * 4) == 0,
                   "head_quant %s n=%lld d=%lld", tern_simd_name(g_variants[vi]), (long long)n,
                   (long long)d);
            memset(q1, 0x55, (size_t)(n * d));
            tern_kv_quant_q8(x, n, d, q1, s1);
            CHECKF(memcmp(q0, q1, (size_t)(n * d)) == 0 && same_bits(s0, s1, n),
                   "kv_quant_q8 %s n=%lld d=%lld", tern_simd_name(g_variants[vi]), (long long)n,
                   (long long)d);
        }
        free(x);
        free(q0);
        free(q1);
    }
    CHECKF(bad == 0, "%d int8 KV codes differ from rintf", bad);
}

/* ---- ternary matrices: encoders from the spec ---- */

static void rand_trits(int8_t *t, int64_t n, int mode)
{
    for (int64_t i = 0; i < n; i++) {
        switch (mode) {
        case 0:
            t[i] = (int8_t)rndi(-1, 1);
            break;
        case 1:
            t[i] = 1;
            break;
        case 2:
            t[i] = -1;
            break;
        default:
            t[i] = (int8_t)(rnd() % 8 == 0 ? rndi(-1, 1) : 0);
            break;
        }
    }
}

/* I2_S (spec 3.4): 128-element blocks, byte j = elements j, j+32, j+64, j+96 in bits 7-6, 5-4,
 * 3-2, 1-0; code t+1; f32 alpha at n/4, 32-byte tail. */
static uint8_t *enc_i2s(const int8_t *t, int64_t n, int64_t k, float alpha, uint64_t *nbytes)
{
    uint64_t ne = (uint64_t)(n * k);
    *nbytes = ne / 4 + 32;
    uint8_t *b = xmalloc(*nbytes);
    memset(b, 0, *nbytes);
    for (uint64_t e = 0; e < ne; e++) {
        uint64_t blk = e / 128, i = e % 128;
        b[blk * 32 + i % 32] |= (uint8_t)((t[e] + 1) << (6 - 2 * (i / 32)));
    }
    memcpy(b + ne / 4, &alpha, 4);
    return b;
}

/* TQ2_0 (spec 3.5, ggml quantize_row_tq2_0_ref order): qs[64] then f16 d. */
static uint8_t *enc_tq2(const int8_t *t, int64_t n, int64_t k, const uint16_t *d, uint64_t *nbytes)
{
    int64_t nb = n * k / 256;
    *nbytes = (uint64_t)nb * 66;
    uint8_t *b = xmalloc(*nbytes);
    for (int64_t blk = 0; blk < nb; blk++) {
        const int8_t *x = t + blk * 256;
        uint8_t *qs = b + blk * 66;
        for (int j = 0; j < 64; j += 32)
            for (int m = 0; m < 32; m++) {
                uint8_t q = 0;
                for (int l = 0; l < 4; l++) q |= (uint8_t)((x[j * 4 + l * 32 + m] + 1) << (2 * l));
                qs[j + m] = q;
            }
        memcpy(qs + 64, &d[blk], 2);
    }
    return b;
}

/* TQ1_0 (spec 3.5, ggml quantize_row_tq1_0_ref). */
static uint8_t *enc_tq1(const int8_t *t, int64_t n, int64_t k, const uint16_t *d, uint64_t *nbytes)
{
    int64_t nb = n * k / 256;
    *nbytes = (uint64_t)nb * 54;
    uint8_t *b = xmalloc(*nbytes);
    for (int64_t blk = 0; blk < nb; blk++) {
        const int8_t *x = t + blk * 256;
        uint8_t *qs = b + blk * 54, *qh = qs + 48;
        for (int m = 0; m < 32; m++) {
            unsigned q = 0;
            for (int e = 0; e < 5; e++) q = q * 3 + (unsigned)(x[m + e * 32] + 1);
            qs[m] = (uint8_t)((q * 256 + 242) / 243);
        }
        x += 160;
        for (int m = 0; m < 16; m++) {
            unsigned q = 0;
            for (int e = 0; e < 5; e++) q = q * 3 + (unsigned)(x[m + e * 16] + 1);
            qs[32 + m] = (uint8_t)((q * 256 + 242) / 243);
        }
        x += 80;
        for (int j = 0; j < 4; j++) {
            unsigned q = 0;
            for (int m = 0; m < 4; m++) q = q * 3 + (unsigned)(x[j + m * 4] + 1);
            q *= 3;
            qh[j] = (uint8_t)((q * 256 + 242) / 243);
        }
        memcpy(qs + 52, &d[blk], 2);
    }
    return b;
}

/* Random activations for a GEMM: from act_quant, or extremes straight into q. */
static void make_q(int8_t *q, float *s, int32_t *qsum, int64_t n_tok, int64_t k, int mode)
{
    if (mode < 2) {
        float *x = xmalloc((size_t)(n_tok * k) * sizeof(float));
        for (int64_t i = 0; i < n_tok; i++) fill_x(x + i * k, k, mode == 0 ? 0 : (int)rndi(0, 7));
        tern_ref_act_quant(x, n_tok, k, q, s, qsum);
        free(x);
        return;
    }
    for (int64_t i = 0; i < n_tok; i++) {
        int32_t sum = 0;
        for (int64_t j = 0; j < k; j++) {
            int8_t v = mode == 2 ? -128 : mode == 3 ? 127 : (int8_t)(rnd() % 2 ? -128 : 127);
            q[i * k + j] = v;
            sum += v;
        }
        s[i] = 127.0f / (float)rndi(1, 1000);
        qsum[i] = sum;
    }
}

/* y = ((float)sum t*q / s) * alpha, straight from the trits: checks the reference's layout. */
static void naive_tgemm(const int8_t *t, int64_t n, int64_t k, float alpha, const int8_t *q,
                        const float *s, int64_t n_tok, float *y)
{
    for (int64_t i = 0; i < n_tok; i++)
        for (int64_t o = 0; o < n; o++) {
            int32_t acc = 0;
            for (int64_t j = 0; j < k; j++) acc += t[o * k + j] * q[i * k + j];
            y[i * n + o] = ((float)acc / s[i]) * alpha;
        }
}

/* Runs every variant on rows [o0, o1) and compares with the reference; the rest of y must
 * stay untouched. */
static void check_tgemm(const tern_tmat *m, const int8_t *q, const float *s, const int32_t *qsum,
                        int64_t n_tok, int64_t o0, int64_t o1, const char *what)
{
    int64_t n = tern_tmat_rows(m), ldy = n + 3;
    size_t ny = (size_t)(n_tok * ldy);
    float *y0 = xmalloc(ny * sizeof(float)), *y1 = xmalloc(ny * sizeof(float));
    for (size_t i = 0; i < ny; i++) y0[i] = -777.0f;
    tern_ref_tgemm(m, q, s, qsum, n_tok, y0, ldy, o0, o1);
    for (int vi = 0; vi < g_nvariants; vi++) {
        use(g_variants[vi]);
        for (size_t i = 0; i < ny; i++) y1[i] = -777.0f;
        tern_tgemm(m, q, s, qsum, n_tok, y1, ldy, o0, o1);
        CHECKF(same_bits(y0, y1, (int64_t)ny),
               "tgemm %s %s n=%lld k=%lld n_tok=%lld rows [%lld,%lld)",
               tern_simd_name(g_variants[vi]), what, (long long)n, (long long)tern_tmat_cols(m),
               (long long)n_tok, (long long)o0, (long long)o1);
    }
    free(y0);
    free(y1);
}

/* One token (decode's GEMV tiles): rows past whole group pairs, odd and misaligned row ranges,
 * k with a short last run of chunks, every trit +1 or -1 against every activation -128 or 127
 * (a GEMV accumulator's int16 bounds, reached exactly) and random mixes. */
static void test_tgemv_bounds(void)
{
    static const int64_t ns[] = {32, 64, 100, 200};
    static const int64_t ks[] = {16, 128, 2560, 8640};
    for (int it = 0; it < 48; it++) {
        const int64_t n = ns[it % 4], k = ks[(it / 4) % 4];
        const int tmode = it % 3, qmode = 2 + (it / 16) % 3; /* trits random, +1, -1 */
        int8_t *t = xmalloc((size_t)(n * k));
        rand_trits(t, n * k, tmode);
        tern_tmat *m;
        tern_status st;
        CHECK(tern_tmat_from_trits(&m, t, n, k, 0.5f, &st) == TERN_OK);
        int8_t *q = xmalloc((size_t)k);
        float s;
        int32_t qsum;
        make_q(q, &s, &qsum, 1, k, qmode);
        float *yn = xmalloc((size_t)n * sizeof(float)), *yr = xmalloc((size_t)n * sizeof(float));
        naive_tgemm(t, n, k, 0.5f, q, &s, 1, yn);
        tern_ref_tgemm(m, q, &s, &qsum, 1, yr, n, 0, n);
        CHECKF(same_bits(yn, yr, n), "ref tgemv vs trits n=%lld k=%lld", (long long)n,
               (long long)k);
        check_tgemm(m, q, &s, &qsum, 1, 0, n, "gemv");
        check_tgemm(m, q, &s, &qsum, 1, 8, n - 8, "gemv odd halves");
        check_tgemm(m, q, &s, &qsum, 1, 16, n, "gemv from a group");
        free(yn);
        free(yr);
        free(q);
        tern_tmat_free(m);
        free(t);
    }
}

static void test_tgemm_random(void)
{
    /* 16 * odd, 3200 and 8640: the 3B sibling's hidden and intermediate sizes (not multiples
     * of 256, 8640 not even of 128) */
    static const int64_t ks[] = {128, 256, 384, 512, 640, 1024, 2560, 16, 208, 3200, 8640};
    for (int it = 0; it < 160; it++) {
        /* it % 16 == 9: several hundred rows (many pairs of groups of the tile kernels) */
        int64_t k = it < 4 ? 128 : it % 16 == 9 ? 2560 : ks[rndi(0, 10)];
        int64_t n = it < 4 ? 1 : it % 16 == 9 ? rndi(300, 700) : rndi(1, it % 3 ? 70 : 200);
        int64_t n_tok = it < 4 ? 1 : it == 7 ? 300 : (it % 5 == 0 ? rndi(60, 90) : rndi(1, 35));
        int8_t *t = xmalloc((size_t)(n * k));
        rand_trits(t, n * k, it % 4);
        float alpha = it % 6 == 0 ? -0.75f : rndf() * 2.0f;
        tern_tmat *m;
        tern_status st;
        CHECK(tern_tmat_from_trits(&m, t, n, k, alpha, &st) == TERN_OK);
        int8_t *q = xmalloc((size_t)(n_tok * k));
        float *s = xmalloc((size_t)n_tok * sizeof(float));
        int32_t *qsum = xmalloc((size_t)n_tok * sizeof(int32_t));
        make_q(q, s, qsum, n_tok, k, it % 5);
        /* reference against the trits */
        float *yn = xmalloc((size_t)(n_tok * n) * sizeof(float));
        float *yr = xmalloc((size_t)(n_tok * n) * sizeof(float));
        naive_tgemm(t, n, k, alpha, q, s, n_tok, yn);
        tern_ref_tgemm(m, q, s, qsum, n_tok, yr, n, 0, n);
        CHECKF(same_bits(yn, yr, n_tok * n), "ref tgemm vs trits n=%lld k=%lld", (long long)n,
               (long long)k);
        check_tgemm(m, q, s, qsum, n_tok, 0, n, "full");
        int64_t o0 = rndi(0, n - 1), o1 = rndi(o0 + 1, n);
        check_tgemm(m, q, s, qsum, n_tok, o0, o1, "range");
        if (n > 16) check_tgemm(m, q, s, qsum, n_tok, 16 * rndi(1, (n - 1) / 16), n, "group range");
        /* row split and batch split give the same bits as one call */
        int64_t a = rndi(1, n), tsplit = rndi(1, n_tok);
        float *y1 = xmalloc((size_t)(n_tok * n) * sizeof(float));
        for (int vi = 0; vi < g_nvariants; vi++) {
            use(g_variants[vi]);
            tern_tgemm(m, q, s, qsum, n_tok, yr, n, 0, n);
            if (a < n) {
                tern_tgemm(m, q, s, qsum, n_tok, y1, n, 0, a);
                tern_tgemm(m, q, s, qsum, n_tok, y1, n, a, n);
            } else {
                tern_tgemm(m, q, s, qsum, n_tok, y1, n, 0, n);
            }
            CHECKF(same_bits(yr, y1, n_tok * n), "row split %s at %lld",
                   tern_simd_name(g_variants[vi]), (long long)a);
            tern_tgemm(m, q, s, qsum, tsplit, y1, n, 0, n);
            if (tsplit < n_tok)
                tern_tgemm(m, q + tsplit * k, s + tsplit, qsum + tsplit, n_tok - tsplit,
                           y1 + tsplit * n, n, 0, n);
            CHECKF(same_bits(yr, y1, n_tok * n), "token split %s at %lld",
                   tern_simd_name(g_variants[vi]), (long long)tsplit);
            /* a token alone (the one-token path: groups in segments) over a row range: the
             * batch's bits, nothing outside the range */
            const int64_t ta = rndi(0, n_tok - 1), r0 = rndi(0, n - 1), r1 = rndi(r0 + 1, n);
            for (int64_t o = 0; o < n; o++) y1[o] = -777.0f;
            tern_tgemm(m, q + ta * k, s + ta, qsum + ta, 1, y1, n, r0, r1);
            CHECKF(same_bits(yr + ta * n + r0, y1 + r0, r1 - r0), "one token %s rows [%lld, %lld)",
                   tern_simd_name(g_variants[vi]), (long long)r0, (long long)r1);
            for (int64_t o = 0; o < n; o++) CHECK(o >= r0 && o < r1 ? 1 : y1[o] == -777.0f);
        }
        free(y1);
        free(yn);
        free(yr);
        free(q);
        free(s);
        free(qsum);
        free(t);
        tern_tmat_free(m);
    }
}

/* I2_S rows that do not start on a 128-block (k % 128 != 0): the flat layout decodes to the
 * same trits as the plain path, and the GEMM agrees with the trits. */
static void test_i2s_flat(void)
{
    static const int64_t ks[] = {16, 48, 208, 8640};
    for (int it = 0; it < 12; it++) {
        int64_t k = ks[it % 4], n = 8 * rndi(1, it % 4 == 3 ? 3 : 9);
        int8_t *t = xmalloc((size_t)(n * k)), *row = xmalloc((size_t)k);
        rand_trits(t, n * k, it % 4);
        uint64_t nb;
        uint8_t *i2 = enc_i2s(t, n, k, 0.625f, &nb);
        tern_tmat *a = NULL, *b = NULL;
        tern_status st;
        CHECKF(tern_tmat_from_ggml(&a, TERN_TYPE_I2_S, i2, nb, k, n, &st) == TERN_OK, "%s", st.msg);
        CHECK(tern_tmat_from_trits(&b, t, n, k, 0.625f, &st) == TERN_OK);
        bool same = a && b;
        for (int64_t o = 0; same && o < n; o++) {
            tern_tmat_unpack_row(a, o, row);
            same = !memcmp(row, t + o * k, (size_t)k);
        }
        CHECKF(same, "I2_S flat k=%lld n=%lld", (long long)k, (long long)n);
        if (a) {
            int64_t n_tok = rndi(1, 9);
            int8_t *q = xmalloc((size_t)(n_tok * k));
            float *s = xmalloc((size_t)n_tok * 4), *yn = xmalloc((size_t)(n_tok * n) * 4);
            int32_t *qsum = xmalloc((size_t)n_tok * 4);
            make_q(q, s, qsum, n_tok, k, it % 5);
            naive_tgemm(t, n, k, 0.625f, q, s, n_tok, yn);
            check_tgemm(a, q, s, qsum, n_tok, 0, n, "flat");
            float *y = xmalloc((size_t)(n_tok * n) * 4);
            tern_ref_tgemm(a, q, s, qsum, n_tok, y, n, 0, n);
            CHECK(same_bits(yn, y, n_tok * n));
            free(q), free(s), free(yn), free(qsum), free(y);
        }
        tern_tmat_free(a), tern_tmat_free(b);
        free(t), free(row), free(i2);
    }
}

/* One random matrix through I2_S, TQ2_0 and TQ1_0 with all d = alpha. */
static void test_repack(void)
{
    for (int it = 0; it < 24; it++) {
        int64_t k = 256 * rndi(1, 5), n = it == 0 ? 1 : rndi(1, 60);
        int8_t *t = xmalloc((size_t)(n * k));
        rand_trits(t, n * k, it % 4);
        uint16_t dh = tern_f32_to_f16_1(it % 5 == 0 ? -0.375f : 0.001f + fabsf(rndf()));
        float alpha = tern_f16_to_f32_1(dh);
        int64_t nb = n * k / 256;
        uint16_t *d = xmalloc((size_t)nb * 2);
        for (int64_t i = 0; i < nb; i++) d[i] = dh;
        uint64_t b1, b2, b3;
        uint8_t *i2 = enc_i2s(t, n, k, alpha, &b1), *tq2 = enc_tq2(t, n, k, d, &b2),
                *tq1 = enc_tq1(t, n, k, d, &b3);
        tern_tmat *m[4] = {0};
        tern_status st;
        CHECK(tern_tmat_from_trits(&m[0], t, n, k, alpha, &st) == TERN_OK);
        CHECKF(tern_tmat_from_ggml(&m[1], TERN_TYPE_I2_S, i2, b1, k, n, &st) == TERN_OK, "%s",
               st.msg);
        CHECKF(tern_tmat_from_ggml(&m[2], TERN_TYPE_TQ2_0, tq2, b2, k, n, &st) == TERN_OK, "%s",
               st.msg);
        CHECKF(tern_tmat_from_ggml(&m[3], TERN_TYPE_TQ1_0, tq1, b3, k, n, &st) == TERN_OK, "%s",
               st.msg);
        if (!m[1] || !m[2] || !m[3]) goto next;
        int8_t *row = xmalloc((size_t)k);
        for (int i = 0; i < 4; i++) {
            CHECK(tern_tmat_rows(m[i]) == n && tern_tmat_cols(m[i]) == k);
            CHECK(!tern_tmat_block_scales(m[i]) && f2u(tern_tmat_alpha(m[i])) == f2u(alpha));
            CHECK(tern_tmat_row_granularity(m[i]) == 16);
            for (int64_t o = 0; o < n; o++) {
                tern_tmat_unpack_row(m[i], o, row);
                CHECKF(memcmp(row, t + o * k, (size_t)k) == 0, "unpack source %d row %lld", i,
                       (long long)o);
            }
        }
        free(row);
        int64_t n_tok = rndi(1, 20);
        int8_t *q = xmalloc((size_t)(n_tok * k));
        float *s = xmalloc((size_t)n_tok * 4), *y0 = xmalloc((size_t)(n_tok * n) * 4),
              *y1 = xmalloc((size_t)(n_tok * n) * 4);
        int32_t *qsum = xmalloc((size_t)n_tok * 4);
        make_q(q, s, qsum, n_tok, k, 0);
        for (int vi = 0; vi < g_nvariants; vi++) {
            use(g_variants[vi]);
            tern_tgemm(m[0], q, s, qsum, n_tok, y0, n, 0, n);
            for (int i = 1; i < 4; i++) {
                tern_tgemm(m[i], q, s, qsum, n_tok, y1, n, 0, n);
                CHECKF(same_bits(y0, y1, n_tok * n), "repack %d gemm %s", i,
                       tern_simd_name(g_variants[vi]));
            }
        }
        free(q);
        free(s);
        free(y0);
        free(y1);
        free(qsum);
    next:
        for (int i = 0; i < 4; i++) tern_tmat_free(m[i]);
        free(i2);
        free(tq2);
        free(tq1);
        free(d);
        free(t);
    }
}

/* TQ2_0 / TQ1_0 with differing block scales: the block-scale path. */
static void test_block_scales(void)
{
    for (int it = 0; it < 40; it++) {
        int64_t k = 256 * rndi(1, 6), n = rndi(2, 50), nb = n * k / 256; /* nb >= 2 */
        int8_t *t = xmalloc((size_t)(n * k));
        rand_trits(t, n * k, it % 4 == 3 ? 3 : 0);
        uint16_t *d = xmalloc((size_t)nb * 2);
        for (int64_t i = 0; i < nb; i++) {
            float v = rndf() * 0.1f;
            if (it % 3 == 0 && i % 5 == 0) v = 0.0f;
            d[i] = tern_f32_to_f16_1(v);
        }
        if (it % 7 == 0) /* one row of zero scales */
            for (int64_t i = 0; i < k / 256; i++) d[i] = 0;
        /* scales that all agree make a single-scale matrix (another test's path): draws that
         * happen to agree (a zero row alone with zero draws) get a last scale of their own */
        bool agree = true;
        for (int64_t i = 1; i < nb; i++) agree = agree && d[i] == d[0];
        if (agree) d[nb - 1] = tern_f32_to_f16_1(tern_f16_to_f32_1(d[0]) + 0.0625f);
        uint64_t nbytes;
        uint8_t *blob = it % 2 ? enc_tq2(t, n, k, d, &nbytes) : enc_tq1(t, n, k, d, &nbytes);
        tern_tmat *m;
        tern_status st;
        CHECKF(tern_tmat_from_ggml(&m, it % 2 ? TERN_TYPE_TQ2_0 : TERN_TYPE_TQ1_0, blob, nbytes, k,
                                   n, &st) == TERN_OK,
               "%s", st.msg);
        CHECK(tern_tmat_block_scales(m));
        CHECK(tern_tmat_alpha(m) == 0.0f);
        int64_t n_tok = it % 4 == 0 ? rndi(20, 40) : rndi(1, 12);
        int8_t *q = xmalloc((size_t)(n_tok * k));
        float *s = xmalloc((size_t)n_tok * 4);
        int32_t *qsum = xmalloc((size_t)n_tok * 4);
        make_q(q, s, qsum, n_tok, k, it % 5);
        /* the reference against the formula of kernels.h, from the trits and d */
        float *yr = xmalloc((size_t)(n_tok * n) * 4);
        tern_ref_tgemm(m, q, s, qsum, n_tok, yr, n, 0, n);
        int bad = 0;
        for (int64_t o = 0; o < n; o++) {
            const int64_t kb = k / 256;
            float dm = 0.0f;
            for (int64_t b = 0; b < kb; b++) {
                float v = tern_f16_to_f32_1(d[o * kb + b]);
                if (fabsf(v) > fabsf(dm)) dm = v;
            }
            for (int64_t i = 0; i < n_tok; i++) {
                float a = 0.0f;
                for (int64_t b = 0; b < kb; b++) {
                    int32_t acc = 0;
                    for (int64_t j = b * 256; j < b * 256 + 256; j++)
                        acc += t[o * k + j] * q[i * k + j];
                    float r = dm == 0.0f ? 1.0f : tern_f16_to_f32_1(d[o * kb + b]) / dm;
                    a = a + (float)acc * r;
                }
                float y = (a / s[i]) * dm;
                bad += f2u(y) != f2u(yr[i * n + o]);
            }
        }
        CHECKF(bad == 0, "block-scale reference: %d outputs differ from the formula", bad);
        check_tgemm(m, q, s, qsum, n_tok, 0, n, "blocks");
        int64_t o0 = rndi(0, n - 1);
        check_tgemm(m, q, s, qsum, n_tok, o0, rndi(o0 + 1, n), "blocks range");
        free(yr);
        free(q);
        free(s);
        free(qsum);
        free(blob);
        free(d);
        free(t);
        tern_tmat_free(m);
    }
}

static void test_reject(void)
{
    int64_t n = 3, k = 256;
    int8_t *t = xmalloc((size_t)(n * k));
    rand_trits(t, n * k, 0);
    uint16_t d[3] = {0x3c00, 0x3c00, 0x3c00};
    uint64_t b1, b2, b3;
    uint8_t *i2 = enc_i2s(t, n, k, 0.5f, &b1), *tq2 = enc_tq2(t, n, k, d, &b2),
            *tq1 = enc_tq1(t, n, k, d, &b3);
    tern_tmat *m = (tern_tmat *)(uintptr_t)1;
    tern_status st;
    /* sizes */
    CHECK(tern_tmat_from_ggml(&m, TERN_TYPE_I2_S, i2, b1 - 1, k, n, &st) == TERN_EFORMAT && !m);
    CHECK(tern_tmat_from_ggml(&m, TERN_TYPE_I2_S, i2, b1 + 1, k, n, &st) == TERN_EFORMAT);
    CHECK(tern_tmat_from_ggml(&m, TERN_TYPE_I2_S, i2, b1 - 32, k, n, &st) == TERN_EFORMAT);
    CHECK(tern_tmat_from_ggml(&m, TERN_TYPE_TQ2_0, tq2, b2 - 66, k, n, &st) == TERN_EFORMAT);
    CHECK(tern_tmat_from_ggml(&m, TERN_TYPE_TQ1_0, tq1, b3 + 54, k, n, &st) == TERN_EFORMAT);
    /* shapes */
    CHECK(tern_tmat_from_ggml(&m, TERN_TYPE_I2_S, i2, b1, 200, 4, &st) == TERN_EINVAL);
    CHECK(tern_tmat_from_ggml(&m, TERN_TYPE_TQ2_0, tq2, b2, 128, 6, &st) == TERN_EINVAL);
    CHECK(tern_tmat_from_ggml(&m, TERN_TYPE_I2_S, i2, b1, k, 0, &st) == TERN_EINVAL);
    CHECK(tern_tmat_from_ggml(&m, TERN_TYPE_I2_S, i2, b1, 0, n, &st) == TERN_EINVAL);
    CHECK(tern_tmat_from_ggml(&m, TERN_TYPE_F16, i2, b1, k, n, &st) == TERN_EUNSUPPORTED);
    CHECK(tern_tmat_from_ggml(&m, (tern_ggml_type)99, i2, b1, k, n, &st) == TERN_EUNSUPPORTED);
    /* code 3 */
    i2[77] |= 0x0c;
    CHECK(tern_tmat_from_ggml(&m, TERN_TYPE_I2_S, i2, b1, k, n, &st) == TERN_EFORMAT);
    CHECKF(strstr(st.msg, "code 3") != NULL, "%s", st.msg);
    tq2[66 + 5] |= 0xc0;
    CHECK(tern_tmat_from_ggml(&m, TERN_TYPE_TQ2_0, tq2, b2, k, n, &st) == TERN_EFORMAT);
    tq2[66 + 5] &= 0x3f;
    /* scales */
    float bad = NAN;
    uint8_t *i2b = enc_i2s(t, n, k, 0.5f, &b1);
    memcpy(i2b + n * k / 4, &bad, 4);
    CHECK(tern_tmat_from_ggml(&m, TERN_TYPE_I2_S, i2b, b1, k, n, &st) == TERN_EFORMAT);
    uint16_t inf = 0x7c00;
    memcpy(tq1 + 54 + 52, &inf, 2);
    CHECK(tern_tmat_from_ggml(&m, TERN_TYPE_TQ1_0, tq1, b3, k, n, &st) == TERN_EFORMAT);
    /* trits */
    t[5] = 2;
    CHECK(tern_tmat_from_trits(&m, t, n, k, 1.0f, &st) == TERN_EINVAL && !m);
    t[5] = 0;
    CHECK(tern_tmat_from_trits(&m, t, n, k, INFINITY, &st) == TERN_EINVAL);
    CHECK(tern_tmat_from_trits(&m, t, n, 100, 1.0f, &st) == TERN_EINVAL);
    CHECK(tern_tmat_from_ggml(&m, TERN_TYPE_TQ2_0, tq2, b2, k, n, &st) == TERN_OK);
    tern_tmat_free(m);
    tern_tmat_free(NULL);
    free(i2);
    free(i2b);
    free(tq2);
    free(tq1);
    free(t);
}

/* ---- float kernels ---- */

static void test_f16(void)
{
    float *f0 = xmalloc(65536 * 4), *f1 = xmalloc(65536 * 4);
    uint16_t *h = xmalloc(65536 * 2), *h0 = xmalloc(65536 * 2), *h1 = xmalloc(65536 * 2);
    for (int i = 0; i < 65536; i++) h[i] = (uint16_t)i;
    tern_ref_f16_to_f32(h, f0, 65536);
    /* every value is exact: back to f16 gives the same bits (NaNs come back quiet) */
    tern_ref_f32_to_f16(f0, h0, 65536);
    int bad = 0;
    for (int i = 0; i < 65536; i++)
        bad += (i & 0x7c00) != 0x7c00 || !(i & 0x3ff) ? h0[i] != i : (h0[i] | 0x200) != (i | 0x200);
    CHECKF(bad == 0, "f16 round trip: %d", bad);
    for (int vi = 0; vi < g_nvariants; vi++) {
        use(g_variants[vi]);
        tern_f16_to_f32(h, f1, 65536);
        CHECKF(same_bits(f0, f1, 65536), "f16_to_f32 %s", tern_simd_name(g_variants[vi]));
    }
    /* f32 -> f16: specials, boundaries, random bit patterns */
    const int n = 65536;
    for (int i = 0; i < n; i++) {
        uint32_t u = (uint32_t)rnd();
        if (i % 4 == 1) u = (u & 0x80000000u) | (0x33000000u + (u & 0x0fffffffu) % 0x14800000u);
        f0[i] = u2f(u);
    }
    static const float spec[] = {
        0.0f,           -0.0f,          65504.0f,    65519.99f,      65520.0f,       1e9f,
        INFINITY,       -INFINITY,      NAN,         6.1035156e-05f, 6.0975552e-05f, 2.9802322e-08f,
        2.9802326e-08f, 5.9604645e-08f, 1.0f / 3.0f, -1.00048828125f};
    memcpy(f0, spec, sizeof spec);
    f0[20] = u2f(0x7f800001u); /* signalling NaN */
    f0[21] = u2f(0xffc12345u);
    tern_ref_f32_to_f16(f0, h0, n);
    for (int vi = 0; vi < g_nvariants; vi++) {
        use(g_variants[vi]);
        tern_f32_to_f16(f0, h1, n);
        bad = 0;
        for (int i = 0; i < n; i++) bad += h0[i] != h1[i];
        CHECKF(bad == 0, "f32_to_f16 %s: %d differ", tern_simd_name(g_variants[vi]), bad);
        tern_f32_to_f16(f0 + 1, h1, 37); /* odd length tails */
        CHECK(memcmp(h1, h0 + 1, 37 * 2) == 0);
    }
    CHECK(tern_f32_to_f16_1(65520.0f) == 0x7c00 && tern_f32_to_f16_1(65519.99f) == 0x7bff);
    CHECK(tern_f32_to_f16_1(2.9802322e-08f) == 0 && tern_f32_to_f16_1(2.9802326e-08f) == 1);
    free(f0);
    free(f1);
    free(h);
    free(h0);
    free(h1);
}

static void test_rmsnorm(void)
{
    double worst = 0.0;
    for (int it = 0; it < 200; it++) {
        int64_t n = it % 4 == 0 ? rndi(1, 20) : rndi(1, 7000);
        if (it % 9 == 0) n = it % 2 ? 2560 : 6912;
        float *x = xmalloc((size_t)n * 4), *w = xmalloc((size_t)n * 4),
              *y0 = xmalloc((size_t)n * 4), *y1 = xmalloc((size_t)n * 4);
        float mag = powf(10.0f, (float)rndi(-6, 6));
        for (int64_t i = 0; i < n; i++) {
            x[i] = rndn() * mag;
            w[i] = rndn();
        }
        const float eps = 1e-5f;
        tern_ref_rmsnorm(x, w, n, eps, y0);
        double ss = 0.0;
        for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
        double sc = 1.0 / sqrt(ss / (double)n + (double)eps);
        for (int64_t i = 0; i < n; i++) {
            double yd = (double)w[i] * (double)x[i] * sc;
            double err = fabs(y0[i] - yd) / (fabs(yd) + 1e-38);
            if (err > worst) worst = err;
        }
        for (int vi = 0; vi < g_nvariants; vi++) {
            use(g_variants[vi]);
            tern_rmsnorm(x, w, n, eps, y1);
            CHECKF(same_bits(y0, y1, n), "rmsnorm %s n=%lld", tern_simd_name(g_variants[vi]),
                   (long long)n);
            memcpy(y1, x, (size_t)n * 4);
            tern_rmsnorm(y1, w, n, eps, y1); /* in place */
            CHECK(same_bits(y0, y1, n));
        }
        /* rows at once: each row the single row's bits, in place too */
        if (it % 5 == 0) {
            const int64_t nr = rndi(1, 11);
            float *xr = xmalloc((size_t)(nr * n) * 4), *yr = xmalloc((size_t)(nr * n) * 4),
                  *y2 = xmalloc((size_t)n * 4);
            for (int64_t i = 0; i < nr * n; i++) xr[i] = rndn() * mag;
            for (int vi = 0; vi < g_nvariants; vi++) {
                use(g_variants[vi]);
                tern_rmsnorm_rows(xr, nr, n, w, eps, yr);
                for (int64_t r = 0; r < nr; r++) {
                    tern_ref_rmsnorm(xr + r * n, w, n, eps, y2);
                    CHECKF(same_bits(y2, yr + r * n, n), "rmsnorm_rows %s row %lld of %lld",
                           tern_simd_name(g_variants[vi]), (long long)r, (long long)nr);
                }
                memcpy(yr, xr, (size_t)(nr * n) * 4);
                tern_rmsnorm_rows(yr, nr, n, w, eps, yr);
                tern_ref_rmsnorm(xr + (nr - 1) * n, w, n, eps, y2);
                CHECK(same_bits(y2, yr + (nr - 1) * n, n));
            }
            free(xr), free(yr), free(y2);
        }
        free(x);
        free(w);
        free(y0);
        free(y1);
    }
    CHECKF(worst <= 4.0 * 0x1p-24, "rmsnorm vs double: %g", worst);
    printf("rmsnorm: ref vs double max rel err %.3g (%.2f ulp)\n", worst, worst / 0x1p-24);
}

static void test_rope(void)
{
    static const int64_t hds[] = {128, 64, 6, 2, 80};
    double worst = 0.0;
    for (int it = 0; it < 60; it++) {
        int64_t hd = hds[it % 5], half = hd / 2, nh = rndi(1, 24);
        int64_t pos = it % 6 == 0 ? 0 : rndi(1, it % 2 ? 200 : 131072);
        double theta = it % 3 ? 500000.0 : 10000.0;
        float *c = xmalloc((size_t)half * 4), *s = xmalloc((size_t)half * 4);
        tern_rope_table(c, s, pos, 1, hd, theta);
        float *x = xmalloc((size_t)(nh * hd) * 4), *x0 = xmalloc((size_t)(nh * hd) * 4),
              *x1 = xmalloc((size_t)(nh * hd) * 4);
        for (int64_t i = 0; i < nh * hd; i++) x[i] = rndn() * 3.0f;
        memcpy(x0, x, (size_t)(nh * hd) * 4);
        tern_ref_rope_neox(x0, nh, hd, c, s);
        /* spec 2.5 in double */
        for (int64_t h = 0; h < nh; h++)
            for (int64_t j = 0; j < half; j++) {
                double th = (double)pos * pow(theta, -2.0 * (double)j / (double)hd);
                double a = x[h * hd + j], b = x[h * hd + j + half];
                double r0 = a * cos(th) - b * sin(th), r1 = a * sin(th) + b * cos(th);
                double lim = 0x1p-24 * (fabs(a) + fabs(b));
                double e = fmax(fabs(x0[h * hd + j] - r0), fabs(x0[h * hd + j + half] - r1)) / lim;
                if (e > worst) worst = e;
                if (pos == 0) CHECK(x0[h * hd + j] == x[h * hd + j]);
            }
        for (int vi = 0; vi < g_nvariants; vi++) {
            use(g_variants[vi]);
            memcpy(x1, x, (size_t)(nh * hd) * 4);
            tern_rope_neox(x1, nh, hd, c, s);
            CHECKF(same_bits(x0, x1, nh * hd), "rope %s hd=%lld", tern_simd_name(g_variants[vi]),
                   (long long)hd);
        }
        free(c);
        free(s);
        free(x);
        free(x0);
        free(x1);
    }
    CHECKF(worst <= 3.0, "rope vs double: %.3f x 2^-24 (|a|+|b|)", worst);
    printf("rope: ref vs double max err %.3f x 2^-24 (|a|+|b|)\n", worst);
    /* a table row equals the one-position call */
    float c4[4 * 64], s4[4 * 64], c1[64], s1[64];
    tern_rope_table(c4, s4, 1000, 4, 128, 500000.0);
    tern_rope_table(c1, s1, 1002, 1, 128, 500000.0);
    CHECK(same_bits(c4 + 2 * 64, c1, 64) && same_bits(s4 + 2 * 64, s1, 64));
}

static void test_softmax(void)
{
    double worst = 0.0;
    for (int it = 0; it < 300; it++) {
        int64_t n = it % 3 == 0 ? rndi(1, 40) : rndi(1, 5000);
        float *x = xmalloc((size_t)n * 4), *y0 = xmalloc((size_t)n * 4),
              *y1 = xmalloc((size_t)n * 4);
        float mag = it % 4 == 0 ? 100.0f : it % 4 == 1 ? 1.0f : 20.0f;
        for (int64_t i = 0; i < n; i++) x[i] = rndn() * mag;
        /* a masked score (never all of a row: the causal mask leaves the diagonal) */
        if (it % 10 == 0 && n > 1) x[rndi(0, n - 1)] = -INFINITY;
        memcpy(y0, x, (size_t)n * 4);
        tern_ref_softmax(y0, n);
        double sum = 0.0;
        for (int64_t i = 0; i < n; i++) sum += y0[i];
        CHECK(fabs(sum - 1.0) < 1e-5);
        for (int vi = 0; vi < g_nvariants; vi++) {
            use(g_variants[vi]);
            memcpy(y1, x, (size_t)n * 4);
            tern_softmax(y1, n);
            for (int64_t i = 0; i < n; i++) {
                double err = fabs((double)y1[i] - y0[i]);
                CHECKF(err <= 0x1p-23 * y0[i] + 1e-37, "softmax %s n=%lld i=%lld: %g vs %g",
                       tern_simd_name(g_variants[vi]), (long long)n, (long long)i, y1[i], y0[i]);
                /* REFERENCE-EQUAL (kernels.h): a difference needs a ~1e-16 tie */
                CHECKF(y1[i] == y0[i], "softmax %s n=%lld i=%lld: %a, reference %a",
                       tern_simd_name(g_variants[vi]), (long long)n, (long long)i, y1[i], y0[i]);
                if (y0[i] > 1e-30 && err / y0[i] > worst) worst = err / y0[i];
            }
        }
        free(x);
        free(y0);
        free(y1);
    }
    printf("softmax: SIMD vs ref max rel err %.3g (%.2f ulp)\n", worst, worst / 0x1p-24);
}

static void test_elementwise(void)
{
    for (int it = 0; it < 100; it++) {
        int64_t n = it % 2 ? rndi(1, 50) : rndi(1, 7000);
        float *g = xmalloc((size_t)n * 4), *u = xmalloc((size_t)n * 4),
              *m0 = xmalloc((size_t)n * 4), *m1 = xmalloc((size_t)n * 4);
        for (int64_t i = 0; i < n; i++) {
            g[i] = rndn() * 10.0f;
            u[i] = rndn() * 10.0f;
        }
        g[0] = -0.0f;
        if (n > 2) g[2] = NAN;
        tern_ref_relu2_mul(g, u, n, m0);
        CHECK(m0[0] == 0.0f);
        for (int vi = 0; vi < g_nvariants; vi++) {
            use(g_variants[vi]);
            tern_relu2_mul(g, u, n, m1);
            CHECKF(same_bits(m0, m1, n), "relu2_mul %s", tern_simd_name(g_variants[vi]));
            memcpy(m1, g, (size_t)n * 4);
            tern_relu2_mul(m1, u, n, m1);
            CHECK(same_bits(m0, m1, n));
        }
        /* silu_mul against double precision; every variant gives the same bits, aliasing ok */
        if (n > 2) g[2] = 1.0f;
        tern_silu_mul(g, u, n, m0);
        double worst = 0.0;
        for (int64_t i = 0; i < n; i++) {
            double x = g[i], want = x / (1.0 + exp(-x)) * (double)u[i];
            double err = fabs(m0[i] - want) / (fabs(want) + 1e-30);
            if (want != 0.0 && err > worst) worst = err;
        }
        CHECKF(worst < 4e-7, "silu_mul: relative error %g", worst);
        for (int vi = 0; vi < g_nvariants; vi++) {
            use(g_variants[vi]);
            memcpy(m1, g, (size_t)n * 4);
            tern_silu_mul(m1, u, n, m1);
            CHECK(same_bits(m0, m1, n));
        }
        /* axpy */
        float a = rndn();
        memcpy(m0, u, (size_t)n * 4);
        tern_ref_axpy(m0, a, g + (n > 2 ? 3 : 0), n > 2 ? n - 3 : n);
        for (int vi = 0; vi < g_nvariants; vi++) {
            use(g_variants[vi]);
            memcpy(m1, u, (size_t)n * 4);
            tern_axpy_f32(m1, a, g + (n > 2 ? 3 : 0), n > 2 ? n - 3 : n);
            CHECKF(same_bits(m0, m1, n), "axpy %s", tern_simd_name(g_variants[vi]));
        }
        free(g);
        free(u);
        free(m0);
        free(m1);
    }
}

static void test_attention(void)
{
    double worst = 0.0;
    for (int it = 0; it < 120; it++) {
        int64_t d = it % 3 ? 128 : rndi(1, 200), nk = rndi(1, 70), ld = d + rndi(0, 9) * (it % 2);
        float *q = xmalloc((size_t)d * 4), *kv = xmalloc((size_t)(nk * ld) * 4),
              *p = xmalloc((size_t)nk * 4), *o0 = xmalloc((size_t)nk * 4),
              *o1 = xmalloc((size_t)nk * 4);
        for (int64_t i = 0; i < d; i++) q[i] = rndn();
        for (int64_t i = 0; i < nk * ld; i++) kv[i] = rndn();
        for (int64_t i = 0; i < nk; i++) p[i] = fabsf(rndf());
        float scale = 1.0f / sqrtf((float)d);
        tern_ref_attn_scores(q, kv, nk, d, ld, scale, o0);
        float *m0 = xmalloc((size_t)d * 4), *m1 = xmalloc((size_t)d * 4);
        for (int64_t i = 0; i < d; i++) m0[i] = rndf();
        memcpy(m1, m0, (size_t)d * 4);
        float *mi = xmalloc((size_t)d * 4);
        memcpy(mi, m0, (size_t)d * 4);
        tern_ref_attn_mix(p, kv, nk, d, ld, m0);
        for (int vi = 0; vi < g_nvariants; vi++) {
            use(g_variants[vi]);
            tern_attn_scores(q, kv, nk, d, ld, scale, o1);
            for (int64_t j = 0; j < nk; j++) {
                double sa = 0.0;
                for (int64_t i = 0; i < d; i++) sa += fabs((double)q[i] * kv[j * ld + i]);
                double lim = ((double)d / 8 + 8) * 0x1p-24 * sa * scale + 0x1p-24 * fabs(o0[j]);
                double err = fabs((double)o1[j] - o0[j]);
                CHECKF(err <= lim, "attn_scores %s d=%lld: %g > %g", tern_simd_name(g_variants[vi]),
                       (long long)d, err, lim);
                CHECKF(o1[j] == o0[j], "attn_scores %s d=%lld: %a, reference %a (REFERENCE-EQUAL)",
                       tern_simd_name(g_variants[vi]), (long long)d, o1[j], o0[j]);
                if (err / lim > worst) worst = err / lim;
                float dv = tern_dot_f32(q, kv + j * ld, d);
                double ld2 = ((double)d / 8 + 8) * 0x1p-24 * sa;
                CHECK(fabs((double)dv - tern_ref_dot(q, kv + j * ld, d)) <= ld2);
                CHECK(dv == tern_ref_dot(q, kv + j * ld, d));
            }
            memcpy(m1, mi, (size_t)d * 4);
            tern_attn_mix(p, kv, nk, d, ld, m1);
            CHECKF(same_bits(m0, m1, d), "attn_mix %s d=%lld n=%lld",
                   tern_simd_name(g_variants[vi]), (long long)d, (long long)nk);
        }
        free(q);
        free(kv);
        free(p);
        free(o0);
        free(o1);
        free(m0);
        free(m1);
        free(mi);
    }
    printf("attn_scores: worst error %.3f of the bound\n", worst);
}

/* Attention over F16 and int8 KV rows: scores REFERENCE-EQUAL (and within the bound of
 * kernels.h), mixes bit-identical to the reference; the int8 quantizer's rows reconstruct
 * within half a step and match its definition. */
static void test_attention_kv(void)
{
    double worst = 0.0;
    for (int it = 0; it < 120; it++) {
        int64_t d = it % 3 ? 128 : rndi(1, 200), nk = rndi(1, 70), ld = d + rndi(0, 9) * (it % 2);
        int64_t lds = 1 + rndi(0, 6);
        float *q = xmalloc((size_t)d * 4), *x = xmalloc((size_t)(nk * ld) * 4),
              *p = xmalloc((size_t)nk * 4), *o0 = xmalloc((size_t)nk * 4),
              *o1 = xmalloc((size_t)nk * 4), *ks = xmalloc((size_t)(nk * lds) * 4);
        uint16_t *kh = xmalloc((size_t)(nk * ld) * 2);
        int8_t *k8 = xmalloc((size_t)(nk * ld));
        for (int64_t i = 0; i < d; i++) q[i] = rndn();
        for (int64_t i = 0; i < nk * ld; i++) x[i] = rndn();
        for (int64_t i = 0; i < nk; i++) p[i] = fabsf(rndf());
        tern_ref_f32_to_f16(x, kh, nk * ld);
        /* rows quantized one by one, each scale at stride lds */
        for (int64_t j = 0; j < nk; j++) {
            float sc;
            tern_kv_quant_q8(x + j * ld, 1, d, k8 + j * ld, &sc);
            ks[j * lds] = sc;
            float amax = 0;
            for (int64_t i = 0; i < d; i++) amax = fmaxf(amax, fabsf(x[j * ld + i]));
            CHECK(sc == amax / 127.0f);
            for (int64_t i = 0; i < d; i++) {
                float r = tern_round_half_even(x[j * ld + i] * (127.0f / amax));
                CHECK(k8[j * ld + i] == (int8_t)(int32_t)r);
                CHECK(fabsf((float)k8[j * ld + i] * sc - x[j * ld + i]) <= 0.5f * sc * 1.0001f);
            }
            for (int64_t i = d; i < ld; i++) k8[j * ld + i] = (int8_t)rndi(-127, 127);
        }
        float scale = 1.0f / sqrtf((float)d);
        float *m0 = xmalloc((size_t)d * 4), *m1 = xmalloc((size_t)d * 4),
              *mi = xmalloc((size_t)d * 4);
        for (int64_t i = 0; i < d; i++) mi[i] = rndf();
        for (int kt = 0; kt < 2; kt++) {
            if (kt == 0)
                tern_ref_attn_scores_f16(q, kh, nk, d, ld, scale, o0);
            else
                tern_ref_attn_scores_q8(q, k8, ks, lds, nk, d, ld, scale, o0);
            memcpy(m0, mi, (size_t)d * 4);
            if (kt == 0)
                tern_ref_attn_mix_f16(p, kh, nk, d, ld, m0);
            else
                tern_ref_attn_mix_q8(p, k8, ks, lds, nk, d, ld, m0);
            for (int vi = 0; vi < g_nvariants; vi++) {
                use(g_variants[vi]);
                const char *vn = tern_simd_name(g_variants[vi]);
                if (kt == 0)
                    tern_attn_scores_f16(q, kh, nk, d, ld, scale, o1);
                else
                    tern_attn_scores_q8(q, k8, ks, lds, nk, d, ld, scale, o1);
                for (int64_t j = 0; j < nk; j++) {
                    double sa = 0.0, sk = kt ? ks[j * lds] : 1.0;
                    for (int64_t i = 0; i < d; i++)
                        sa += fabs((double)q[i] * (kt ? (double)k8[j * ld + i]
                                                      : (double)tern_f16_to_f32_1(kh[j * ld + i])));
                    double lim = (double)d * 0x1p-52 * sa * sk * scale + 0x1p-22 * fabs(o0[j]);
                    double err = fabs((double)o1[j] - o0[j]);
                    CHECKF(err <= lim, "attn_scores_%s %s d=%lld: %g > %g", kt ? "q8" : "f16", vn,
                           (long long)d, err, lim);
                    CHECKF(o1[j] == o0[j], "attn_scores_%s %s d=%lld: %a, reference %a",
                           kt ? "q8" : "f16", vn, (long long)d, o1[j], o0[j]);
                    if (lim > 0 && err / lim > worst) worst = err / lim;
                }
                memcpy(m1, mi, (size_t)d * 4);
                if (kt == 0)
                    tern_attn_mix_f16(p, kh, nk, d, ld, m1);
                else
                    tern_attn_mix_q8(p, k8, ks, lds, nk, d, ld, m1);
                CHECKF(same_bits(m0, m1, d), "attn_mix_%s %s d=%lld n=%lld", kt ? "q8" : "f16", vn,
                       (long long)d, (long long)nk);
            }
        }
        /* f16 scores equal the f32 kernel on the converted rows */
        {
            float *kf = xmalloc((size_t)(nk * ld) * 4);
            tern_ref_f16_to_f32(kh, kf, nk * ld);
            tern_ref_attn_scores(q, kf, nk, d, ld, scale, o1);
            tern_ref_attn_scores_f16(q, kh, nk, d, ld, scale, o0);
            CHECK(same_bits(o0, o1, nk));
            free(kf);
        }
        free(q), free(x), free(p), free(o0), free(o1), free(ks), free(kh), free(k8);
        free(m0), free(m1), free(mi);
    }
    /* quantizer edge cases: zero, non-finite and NaN elements */
    {
        float sc[2];
        int8_t qz[16];
        float rows[16] = {0}; /* a zero row, then one with an infinity */
        rows[8] = 1, rows[9] = 2, rows[10] = INFINITY;
        tern_kv_quant_q8(rows, 2, 8, qz, sc);
        CHECK(sc[0] == 0.0f && sc[1] == 0.0f);
        for (int i = 0; i < 16; i++) CHECK(qz[i] == 0);
        float nan_row[4] = {NAN, 1.0f, -2.0f, 0.5f};
        tern_kv_quant_q8(nan_row, 1, 4, qz, sc);
        CHECK(sc[0] == 2.0f / 127.0f && qz[0] == 0 && qz[2] == -127 && qz[1] == 64);
    }
    printf("attn_scores f16/q8: worst error %.3f of the bound\n", worst);
}

/* The rows kernels (several query rows over shared K/V rows): every row's scores and mix are
 * its single-row reference's bits, for any row count, context lengths, element type, row
 * stride, block size (the keys in blocks scattered in memory, as the paged cache holds them)
 * and variant. */
static void test_attention_rows(void)
{
    int checked = 0;
    for (int it = 0; it < 90; it++) {
        const tern_attn_elem e = (tern_attn_elem)(it % 3);
        const int64_t d = it % 4 ? (it % 2 ? 128 : 64) : rndi(1, TERN_ATTN_MAX_HD);
        const int64_t n = rndi(1, 40), ld = d + rndi(0, 5), lds = 1 + rndi(0, 4);
        const int P = (int)(it < 6 ? 1 + it : rndi(1, TERN_ATTN_MAX_ROWS));
        const size_t esz = e == TERN_ATTN_F32 ? 4 : e == TERN_ATTN_F16 ? 2 : 1;
        uint8_t *kv = xmalloc((size_t)(n * ld) * esz);
        float *ks = xmalloc((size_t)(n * lds) * 4);
        for (int64_t i = 0; i < n * ld; i++) {
            const float x = rndn();
            if (e == TERN_ATTN_F32)
                memcpy(kv + i * 4, &x, 4);
            else if (e == TERN_ATTN_F16) {
                uint16_t h = tern_f32_to_f16_1(x);
                memcpy(kv + i * 2, &h, 2);
            } else
                kv[i] = (uint8_t)(int8_t)rndi(-127, 127);
        }
        for (int64_t i = 0; i < n * lds; i++) ks[i] = fabsf(rndf()) * 0.02f;
        const float *q[TERN_ATTN_MAX_ROWS];
        float *qb = xmalloc((size_t)P * (size_t)d * 4);
        for (int64_t i = 0; i < P * d; i++) qb[i] = rndn();
        for (int r = 0; r < P; r++) q[r] = qb + (int64_t)(P - 1 - r) * d; /* any row order */
        const int64_t ldo = n + rndi(0, 3);
        float *s0 = xmalloc((size_t)(P * ldo) * 4), *s1 = xmalloc((size_t)(P * ldo) * 4);
        /* the keys as one block, and copied into blocks of blk rows in reverse order with gaps */
        const void *one_k = kv;
        const float *one_s = ks;
        const int64_t blk = it % 3 == 1 ? n : rndi(1, 12), nbk = (n + blk - 1) / blk;
        const size_t kbytes = (size_t)(blk * ld) * esz + 16, sbytes = (size_t)(blk * lds) * 4 + 16;
        uint8_t *kvb = xmalloc(kbytes * (size_t)nbk);
        float *ksb = xmalloc(sbytes * (size_t)nbk);
        const void *kbp[40];
        const float *ksp[40];
        for (int64_t b = 0; b < nbk; b++) {
            const int64_t rows = n - b * blk < blk ? n - b * blk : blk;
            uint8_t *dst = kvb + (size_t)(nbk - 1 - b) * kbytes;
            float *sdst = (float *)(void *)((uint8_t *)ksb + (size_t)(nbk - 1 - b) * sbytes);
            memcpy(dst, kv + (size_t)(b * blk * ld) * esz, (size_t)(rows * ld) * esz);
            memcpy(sdst, ks + b * blk * lds, (size_t)(rows * lds) * 4);
            kbp[b] = dst, ksp[b] = sdst;
        }
        tern_ref_attn_scores_rows(e, q, P, &one_k, &one_s, lds, n, n, d, ld, 0.125f, s0, ldo);
        tern_ref_attn_scores_rows(e, q, P, kbp, ksp, lds, n, blk, d, ld, 0.125f, s1, ldo);
        for (int r = 0; r < P; r++)
            CHECKF(same_bits(s0 + r * ldo, s1 + r * ldo, n), "ref scores in blocks of %lld",
                   (long long)blk);
        /* the same keys by columns (tern_attn_scores_cols): block b's row i holds element i of
         * its keys side by side, ldc >= blk apart; the columns past n hold NaNs */
        const int64_t ldc = blk + rndi(0, 3);
        const size_t cbytes = (size_t)(d * ldc) * esz + 16;
        uint8_t *kcb = xmalloc(cbytes * (size_t)nbk);
        memset(kcb, 0xff, cbytes * (size_t)nbk);
        const void *kcp[40];
        for (int64_t b = 0; b < nbk; b++) {
            uint8_t *dst = kcb + (size_t)(nbk - 1 - b) * cbytes;
            for (int64_t c = 0; c < blk && b * blk + c < n; c++)
                for (int64_t i = 0; i < d; i++)
                    memcpy(dst + (size_t)(i * ldc + c) * esz,
                           kv + (size_t)((b * blk + c) * ld + i) * esz, esz);
            kcp[b] = dst;
        }
        tern_ref_attn_scores_cols(e, q, P, kcp, ksp, lds, n, blk, d, ldc, 0.125f, s1, ldo);
        for (int r = 0; r < P; r++)
            CHECKF(same_bits(s0 + r * ldo, s1 + r * ldo, n),
                   "ref scores by columns, blocks of %lld", (long long)blk);
        /* the mix: weights, lengths 0..n, accumulators with a start value */
        const int64_t ldp = n + rndi(0, 2);
        float *pw = xmalloc((size_t)(P * ldp) * 4), *ob = xmalloc((size_t)P * (size_t)d * 4),
              *o0 = xmalloc((size_t)P * (size_t)d * 4);
        int32_t len[TERN_ATTN_MAX_ROWS];
        float *out[TERN_ATTN_MAX_ROWS];
        for (int64_t i = 0; i < P * ldp; i++) pw[i] = fabsf(rndf());
        for (int r = 0; r < P; r++) len[r] = (int32_t)(it % 5 ? rndi(0, n) : n);
        for (int64_t i = 0; i < P * d; i++) ob[i] = rndf();
        memcpy(o0, ob, (size_t)P * (size_t)d * 4);
        for (int r = 0; r < P; r++) out[r] = o0 + (int64_t)r * d;
        tern_ref_attn_mix_rows(e, pw, ldp, P, len, &one_k, &one_s, lds, n, d, ld, out);
        {
            float *ob2 = xmalloc((size_t)P * (size_t)d * 4);
            float *out2[TERN_ATTN_MAX_ROWS];
            memcpy(ob2, ob, (size_t)P * (size_t)d * 4);
            for (int r = 0; r < P; r++) out2[r] = ob2 + (int64_t)r * d;
            tern_ref_attn_mix_rows(e, pw, ldp, P, len, kbp, ksp, lds, blk, d, ld, out2);
            CHECKF(same_bits(o0, ob2, P * d), "ref mix in blocks of %lld", (long long)blk);
            free(ob2);
        }
        float *o1 = xmalloc((size_t)P * (size_t)d * 4);
        for (int vi = 0; vi < g_nvariants; vi++) {
            use(g_variants[vi]);
            const char *vn = tern_simd_name(g_variants[vi]);
            tern_attn_scores_rows(e, q, P, kbp, ksp, lds, n, blk, d, ld, 0.125f, s1, ldo);
            for (int r = 0; r < P; r++)
                CHECKF(same_bits(s0 + r * ldo, s1 + r * ldo, n),
                       "attn_scores_rows %s elem %d P=%d d=%lld n=%lld blk=%lld row %d", vn, (int)e,
                       P, (long long)d, (long long)n, (long long)blk, r);
            memset(s1, 0, (size_t)(P * ldo) * 4);
            tern_attn_scores_cols(e, q, P, kcp, ksp, lds, n, blk, d, ldc, 0.125f, s1, ldo);
            for (int r = 0; r < P; r++)
                CHECKF(same_bits(s0 + r * ldo, s1 + r * ldo, n),
                       "attn_scores_cols %s elem %d P=%d d=%lld n=%lld blk=%lld ldc=%lld row %d",
                       vn, (int)e, P, (long long)d, (long long)n, (long long)blk, (long long)ldc,
                       r);
            memcpy(o1, ob, (size_t)P * (size_t)d * 4);
            for (int r = 0; r < P; r++) out[r] = o1 + (int64_t)r * d;
            tern_attn_mix_rows(e, pw, ldp, P, len, kbp, ksp, lds, blk, d, ld, out);
            CHECKF(same_bits(o0, o1, P * d), "attn_mix_rows %s elem %d P=%d d=%lld n=%lld blk=%lld",
                   vn, (int)e, P, (long long)d, (long long)n, (long long)blk);
            /* row 0 alone through the single-row form */
            float *one = xmalloc((size_t)n * 4);
            if (e == TERN_ATTN_F16)
                tern_attn_scores_f16(q[0], (const uint16_t *)(void *)kv, n, d, ld, 0.125f, one);
            else if (e == TERN_ATTN_Q8)
                tern_attn_scores_q8(q[0], (const int8_t *)kv, ks, lds, n, d, ld, 0.125f, one);
            else
                tern_attn_scores(q[0], (const float *)(void *)kv, n, d, ld, 0.125f, one);
            CHECK(same_bits(one, s0, n));
            free(one);
            checked++;
        }
        free(kv), free(ks), free(qb), free(s0), free(s1), free(pw), free(ob), free(o0), free(o1);
        free(kvb), free(ksb), free(kcb);
    }
    printf("attention rows: %d cases bitwise equal to the single-row references\n", checked);
}

/* The mixes' flush-to-zero arithmetic (kernels.h): products and partial sums that underflow
 * are 0 in every variant and the reference, against a model of the rule built here from IEEE
 * float operations (the test's own mode) and an explicit flush; the values lie far from
 * FLT_MIN, where both readings of the rule agree. The IEEE result differs (checked), so the
 * cases exercise the rule, and each call leaves the caller's MXCSR as it was. */
static float flush(float x)
{
    return fabsf(x) < FLT_MIN ? 0.0f : x;
}

static void test_attention_underflow(void)
{
    enum { N = 5, D = 40, P = 3 };
    static const float w_of[4] = {0.25f, 2e-31f, 1e-30f, 0.0625f};
    const unsigned csr0 = _mm_getcsr();
    CHECKF(!(csr0 & TERN_MXCSR_FTZ_DAZ), "the test starts in IEEE mode (MXCSR %#x)", csr0);
    int checked = 0;
    for (int e = TERN_ATTN_F32; e <= TERN_ATTN_Q8; e++) {
        float vf[N][D], vsc[N], pw[P][N], init[P][D], want[P][D], ieee[P][D];
        uint8_t vraw[N * D * 4];
        for (int j = 0; j < N; j++) {
            vsc[j] = j % 2 ? 1e-36f : 0.5f; /* q8: 1e-3 * 1e-36 underflows */
            for (int i = 0; i < D; i++) {
                /* three classes of element, a normal one and two small ones (only those from
                 * D / 2 on, so there the tiny products are all an element gets) */
                const int c = i >= D / 2 ? 1 + (i + j) % 2 : (i + j) % 3;
                if (e == TERN_ATTN_F32) {
                    vf[j][i] = c == 0 ? 0.5f : c == 1 ? 3e-9f : -7e-10f;
                    memcpy(vraw + (j * D + i) * 4, &vf[j][i], 4);
                } else if (e == TERN_ATTN_F16) { /* 0.5, 2^-20 (a binary16 subnormal), -2^-22 */
                    const uint16_t h = c == 0 ? 0x3800 : c == 1 ? 0x0010 : 0x8004;
                    memcpy(vraw + (j * D + i) * 2, &h, 2);
                    vf[j][i] = tern_f16_to_f32_1(h);
                } else {
                    const int8_t q = (int8_t)(c == 0 ? 100 : c == 1 ? 1 : -3);
                    vraw[j * D + i] = (uint8_t)q;
                    vf[j][i] = (float)q;
                }
            }
        }
        for (int r = 0; r < P; r++) {
            for (int j = 0; j < N; j++) /* row 0: only weights whose products underflow */
                pw[r][j] = e == TERN_ATTN_Q8 ? (r || j % 2 ? 1e-3f : 0.0f)
                           : r == 0          ? 1e-33f
                                             : w_of[(r + j * 2) % 4];
            for (int i = 0; i < D; i++) init[r][i] = r == 0 ? 0.0f : 0.01f * (float)(i - 20);
        }
        for (int r = 0; r < P; r++)
            for (int i = 0; i < D; i++) {
                float a = init[r][i], b = init[r][i];
                for (int j = 0; j < N; j++) {
                    const float w = e == TERN_ATTN_Q8 ? pw[r][j] * vsc[j] : pw[r][j];
                    a = flush(a + flush(flush(w) * vf[j][i]));
                    b = b + w * vf[j][i];
                }
                want[r][i] = a, ieee[r][i] = b;
            }
        CHECKF(!same_bits(&want[0][0], &ieee[0][0], P * D), "elem %d: the cases underflow", e);
        const void *vb = vraw;
        const float *vsb = vsc;
        const int32_t len[P] = {N, N, N};
        for (int vi = -1; vi < g_nvariants; vi++) {
            float o[P][D];
            float *out[P] = {o[0], o[1], o[2]};
            memcpy(o, init, sizeof o);
            if (vi < 0)
                tern_ref_attn_mix_rows(e, &pw[0][0], N, P, len, &vb, &vsb, 1, N, D, D, out);
            else {
                use(g_variants[vi]);
                tern_attn_mix_rows(e, &pw[0][0], N, P, len, &vb, &vsb, 1, N, D, D, out);
            }
            CHECKF(_mm_getcsr() == csr0, "mix restores MXCSR (got %#x)", _mm_getcsr());
            CHECKF(same_bits(&want[0][0], &o[0][0], P * D), "flush-to-zero mix, elem %d, %s", e,
                   vi < 0 ? "reference" : tern_simd_name(g_variants[vi]));
            checked++;
        }
    }
    printf("attention mixes flush underflow to zero: %d cases\n", checked);
}

/* The F16 head and the int8 head, each against its reference; int8 against F16. */
static void test_head(void)
{
    double worst16 = 0.0, worst8 = 0.0, headerr = 0.0;
    for (int it = 0; it < 60; it++) {
        /* the int8 head's rows are whole 4-column chunks (the F16 head takes any k) */
        int64_t k = it % 3 == 0 ? 4 * rndi(1, 10) : (it % 3 == 1 ? 2560 : 4 * rndi(25, 175));
        /* from 8 tokens the tile kernels (amx) take k % 64 == 0: it % 3 == 1 has it */
        /* it % 12 == 7 (k 2560, 15-70 tokens): several hundred rows */
        int64_t n = it % 12 == 7 ? rndi(300, 600) : rndi(1, 150);
        int64_t n_tok = it < 2 ? 1 : it % 4 == 3 ? rndi(15, 70) : rndi(1, 14);
        if (it == 59) { /* rows too long for the F16 head's float copy of a block (many tokens) */
            k = 4 * rndi(5000, 5100);
            n = rndi(9, 40);
            n_tok = rndi(34, 40);
        }
        int64_t ldy = n + 1;
        uint16_t *w = xmalloc((size_t)(n * k) * 2);
        float *x = xmalloc((size_t)(n_tok * k) * 4);
        for (int64_t i = 0; i < n * k; i++) w[i] = tern_f32_to_f16_1(rndn() * 0.05f);
        for (int64_t i = 0; i < n_tok * k; i++) x[i] = rndn();
        size_t ny = (size_t)(n_tok * ldy);
        float *y0 = xmalloc(ny * 4), *y1 = xmalloc(ny * 4), *y2 = xmalloc(ny * 4);
        for (size_t i = 0; i < ny; i++) y0[i] = y1[i] = y2[i] = -5.0f;
        tern_ref_gemm_f16(w, x, n_tok, k, y0, ldy, 0, n);
        tern_i8mat *m8;
        tern_status st;
        CHECK(tern_i8mat_from_f16(&m8, w, n, k, &st) == TERN_OK);
        CHECK(tern_i8mat_rows(m8) == n && tern_i8mat_cols(m8) == k);
        for (int64_t o = 0; o < n; o++)
            for (int64_t i = 0; i < k; i++) {
                float wf = tern_f16_to_f32_1(w[o * k + i]);
                CHECK(fabsf(wf - tern_i8mat_q(m8, o, i) * m8->scale[o]) <= m8->scale[o] * 0.5001f);
            }
        /* the int8 head: activations per token by tern_kv_quant_q8, the sum in int64 here */
        int8_t *xq = xmalloc((size_t)(n_tok * k));
        float *xs = xmalloc((size_t)n_tok * 4), *y8 = xmalloc(ny * 4);
        int32_t *xsum = xmalloc((size_t)n_tok * 4);
        tern_head_quant(x, n_tok, k, xq, xs, xsum);
        {
            int8_t *q2 = xmalloc((size_t)(n_tok * k));
            float *s2 = xmalloc((size_t)n_tok * 4);
            tern_kv_quant_q8(x, n_tok, k, q2, s2);
            CHECK(memcmp(q2, xq, (size_t)(n_tok * k)) == 0 &&
                  memcmp(s2, xs, (size_t)n_tok * 4) == 0);
            for (int64_t t = 0; t < n_tok; t++) {
                int64_t sum = 0;
                for (int64_t i = 0; i < k; i++) sum += xq[t * k + i];
                CHECK(xsum[t] == sum);
            }
            free(q2), free(s2);
        }
        for (int64_t t = 0; t < n_tok; t++)
            for (int64_t o = 0; o < n; o++) {
                int64_t S = 0;
                double bound = 0.0, exact = 0.0;
                for (int64_t i = 0; i < k; i++) {
                    const double wf = tern_f16_to_f32_1(w[o * k + i]);
                    S += (int64_t)tern_i8mat_q(m8, o, i) * xq[t * k + i];
                    exact += wf * x[t * k + i];
                    bound += fabs(wf) * xs[t] / 2 +
                             fabs((double)xq[t * k + i] * xs[t]) * m8->scale[o] / 2;
                }
                const float want = (float)((double)S * ((double)m8->scale[o] * (double)xs[t]));
                y8[t * ldy + o] = want;
                const double e = fabs(want - exact), lim = bound + 0x1p-23 * fabs(want) + 1e-30;
                CHECKF(e <= lim, "int8 head k=%lld: |y - sum w x| %g > %g", (long long)k, e, lim);
                if (e / lim > worst8) worst8 = e / lim;
            }
        for (size_t i = 0; i < ny; i++) y2[i] = -5.0f;
        tern_ref_gemm_i8(m8, xq, xs, xsum, n_tok, y2, ldy, 0, n);
        for (int64_t t = 0; t < n_tok; t++) CHECK(same_bits(y2 + t * ldy, y8 + t * ldy, n));
        for (int vi = 0; vi < g_nvariants; vi++) {
            use(g_variants[vi]);
            tern_gemm_f16(w, x, n_tok, k, y1, ldy, 0, n);
            for (size_t i = 0; i < ny; i++) y2[i] = -5.0f;
            tern_gemm_i8(m8, xq, xs, xsum, n_tok, y2, ldy, 0, n);
            for (int64_t t = 0; t < n_tok; t++)
                CHECKF(same_bits(y2 + t * ldy, y8 + t * ldy, n), "gemm_i8 %s k=%lld n_tok=%lld",
                       tern_simd_name(g_variants[vi]), (long long)k, (long long)n_tok);
            for (int64_t t = 0; t < n_tok; t++)
                for (int64_t o = 0; o < n; o++) {
                    double sa = 0.0;
                    for (int64_t i = 0; i < k; i++)
                        sa += fabs((double)tern_f16_to_f32_1(w[o * k + i]) * x[t * k + i]);
                    double lim = ((double)k / 8 + 8) * 0x1p-24 * sa + 1e-30;
                    double e = fabs((double)y1[t * ldy + o] - y0[t * ldy + o]);
                    CHECKF(e <= lim, "gemm_f16 %s k=%lld: %g > %g", tern_simd_name(g_variants[vi]),
                           (long long)k, e, lim);
                    if (e / lim > worst16) worst16 = e / lim;
                }
            for (int64_t t = 0; t < n_tok; t++)
                CHECK(y1[t * ldy + n] == -5.0f && y2[t * ldy + n] == -5.0f);
            /* row split and batch independence: bitwise */
            int64_t a = rndi(1, n);
            float *ys = xmalloc(ny * 4);
            tern_gemm_f16(w, x, n_tok, k, ys, ldy, 0, a);
            if (a < n) tern_gemm_f16(w, x, n_tok, k, ys, ldy, a, n);
            for (int64_t t = 0; t < n_tok; t++) CHECK(same_bits(ys + t * ldy, y1 + t * ldy, n));
            int64_t tt = rndi(0, n_tok - 1);
            tern_gemm_f16(w, x + tt * k, 1, k, ys, ldy, 0, n);
            CHECK(same_bits(ys, y1 + tt * ldy, n));
            /* any range of rows, one token alone and several, bitwise; nothing outside it */
            int64_t b = rndi(a, n);
            for (size_t i = 0; i < ny; i++) ys[i] = -7.0f;
            tern_gemm_i8(m8, xq + tt * k, xs + tt, xsum + tt, 1, ys, ldy, a - 1, b);
            CHECK(same_bits(ys + a - 1, y8 + tt * ldy + a - 1, b - a + 1));
            CHECK((a == 1 || ys[a - 2] == -7.0f) && (b == n || ys[b] == -7.0f));
            tern_gemm_i8(m8, xq, xs, xsum, n_tok, ys, ldy, a - 1, b);
            for (int64_t t = 0; t < n_tok; t++)
                CHECK(same_bits(ys + t * ldy + a - 1, y8 + t * ldy + a - 1, b - a + 1) &&
                      (a == 1 || ys[t * ldy + a - 2] == -7.0f) &&
                      (b == n || ys[t * ldy + b] == -7.0f));
            free(ys);
        }
        /* int8 head vs F16 head, relative to the logit range of the token (over enough rows
         * for a range to mean something: with two rows it can be as small as one error) */
        if (k >= 100 && n >= 32)
            for (int64_t t = 0; t < n_tok; t++) {
                float lo = INFINITY, hi = -INFINITY;
                double e = 0.0;
                for (int64_t o = 0; o < n; o++) {
                    lo = fminf(lo, y0[t * ldy + o]);
                    hi = fmaxf(hi, y0[t * ldy + o]);
                    e = fmax(e, fabs((double)y8[t * ldy + o] - y0[t * ldy + o]));
                }
                if (hi > lo && e / (hi - lo) > headerr) headerr = e / (hi - lo);
            }
        tern_i8mat_free(m8);
        free(xq);
        free(xs);
        free(xsum);
        free(w);
        free(x);
        free(y0);
        free(y1);
        free(y2);
        free(y8);
    }
    printf("gemm_f16: worst %.3f of the bound; int8 head: worst %.3f of its bound against the "
           "unquantized sum\n",
           worst16, worst8);
    printf("int8 head vs F16 head: max |diff| / logit range %.4g\n", headerr);
    CHECK(headerr < 0.05);
    tern_i8mat *m;
    tern_status st;
    uint16_t bad[4] = {0x3c00, 0x7c00, 0, 0};
    CHECK(tern_i8mat_from_f16(&m, bad, 1, 4, &st) == TERN_EFORMAT);
    CHECK(tern_i8mat_from_f16(&m, bad, 0, 4, &st) == TERN_EINVAL);
    CHECK(tern_i8mat_new(&m, 1, TERN_I8MAT_MAX_K + 4, &st) == TERN_EINVAL);
    CHECK(tern_i8mat_new(&m, 1, 6, &st) == TERN_EINVAL && strstr(st.msg, "multiple of 4"));
    tern_i8mat_free(NULL);
    /* the largest sums at the longest rows: +-127 everywhere (vpdpbusd's biased sums reach
     * 255 * 127 * k), bitwise the exact value in every variant */
    const int64_t K = TERN_I8MAT_MAX_K;
    CHECK(tern_i8mat_new(&m, 2, K, &st) == TERN_OK);
    float *big = xmalloc((size_t)K * 4);
    for (int64_t i = 0; i < K; i++) big[i] = 1.0f;
    CHECK(tern_i8mat_set_row(m, 0, big));
    for (int64_t i = 0; i < K; i++) big[i] = -1.0f;
    CHECK(tern_i8mat_set_row(m, 1, big));
    CHECK(tern_i8mat_q(m, 0, K - 1) == 127 && tern_i8mat_q(m, 1, 0) == -127);
    int8_t *xq = xmalloc((size_t)(2 * K));
    float xs[2] = {1.0f, 0.5f}, y[4], yr[4];
    int32_t xsum[2] = {(int32_t)(127 * K), (int32_t)(-127 * K)};
    for (int64_t i = 0; i < K; i++) xq[i] = 127, xq[K + i] = -127;
    tern_ref_gemm_i8(m, xq, xs, xsum, 2, yr, 2, 0, 2);
    const double S = 127.0 * 127.0 * (double)K, sc = m->scale[0];
    CHECK(yr[0] == (float)(S * sc) && yr[1] == (float)(-S * sc) && yr[2] == (float)(-S * sc * 0.5));
    for (int vi = 0; vi < g_nvariants; vi++) {
        use(g_variants[vi]);
        tern_gemm_i8(m, xq, xs, xsum, 2, y, 2, 0, 2);
        CHECKF(memcmp(y, yr, sizeof y) == 0, "gemm_i8 %s at k = %lld",
               tern_simd_name(g_variants[vi]), (long long)K);
    }
    float nanrow[4] = {1, NAN, 0, 0};
    tern_i8mat_free(m);
    CHECK(tern_i8mat_new(&m, 1, 4, &st) == TERN_OK);
    CHECK(!tern_i8mat_set_row(m, 0, nanrow) && m->scale[0] == 0.0f);
    tern_i8mat_free(m);
    free(big);
    free(xq);
}

/* ---- block-quantized head (Q8_0, Q6_K) ---- */

/* random blocks: any quant bytes, finite f16 scales of either sign and wide range */
static void rand_qrows(tern_ggml_type type, uint8_t *p, int64_t n, int64_t k)
{
    const int64_t bb = type == TERN_TYPE_Q8_0 ? 34 : 210,
                  nb = n * (k / (type == TERN_TYPE_Q8_0 ? 32 : 256));
    for (int64_t i = 0; i < nb * bb; i++) p[i] = (uint8_t)rnd();
    for (int64_t b = 0; b < nb; b++) {
        uint16_t h = tern_f32_to_f16_1(rndf() * ldexpf(1.0f, (int)rndi(-20, 4)));
        if (rndi(0, 40) == 0) h = (uint16_t)rndi(0, 0x3ff); /* subnormal d */
        memcpy(p + b * bb + (type == TERN_TYPE_Q8_0 ? 0 : 208), &h, 2);
    }
}

static void test_head_q(void)
{
    const tern_ggml_type types[2] = {TERN_TYPE_Q8_0, TERN_TYPE_Q6_K};
    double worst = 0.0;
    for (int it = 0; it < 40; it++) {
        const tern_ggml_type type = types[it % 2];
        const int64_t blk = type == TERN_TYPE_Q8_0 ? 32 : 256,
                      bb = type == TERN_TYPE_Q8_0 ? 34 : 210;
        int64_t k = it % 4 < 2 ? 2560 : blk * rndi(1, type == TERN_TYPE_Q8_0 ? 40 : 5);
        int64_t n = rndi(1, 70), n_tok = it < 4 ? 1 : rndi(1, it % 5 == 0 ? 140 : 10), ldy = n + 1;
        const int64_t rb = k / blk * bb;
        uint8_t *w = xmalloc((size_t)(n * rb));
        rand_qrows(type, w, n, k);
        float *wf = xmalloc((size_t)(n * k) * 4), *wd = xmalloc((size_t)k * 4);
        for (int64_t o = 0; o < n; o++) {
            tern_test_ggml_dequant(type, w + o * rb, k, wf + o * k);
            tern_dequant_row(type, w + o * rb, k, wd);
            CHECKF(same_bits(wd, wf + o * k, k), "dequant %s row %lld", tern_ggml_type_name(type),
                   (long long)o);
        }
        float *x = xmalloc((size_t)(n_tok * k) * 4);
        for (int64_t i = 0; i < n_tok * k; i++) x[i] = rndn();
        size_t ny = (size_t)(n_tok * ldy);
        float *y0 = xmalloc(ny * 4), *y1 = xmalloc(ny * 4), *ys = xmalloc(ny * 4);
        for (size_t i = 0; i < ny; i++) y1[i] = -5.0f;
        for (int vi = 0; vi < g_nvariants; vi++) {
            use(g_variants[vi]);
            tern_gemm_q(type, w, k, x, n_tok, y1, ldy, 0, n);
            for (int64_t t = 0; t < n_tok; t++) {
                CHECK(y1[t * ldy + n] == -5.0f);
                for (int64_t o = 0; o < n; o++) {
                    double ref = 0.0, sa = 0.0;
                    for (int64_t i = 0; i < k; i++) {
                        ref += (double)wf[o * k + i] * x[t * k + i];
                        sa += fabs((double)wf[o * k + i] * x[t * k + i]);
                    }
                    double lim = ((double)k / 8 + 8) * 0x1p-24 * sa + 1e-37;
                    double e = fabs((double)y1[t * ldy + o] - (double)(float)ref);
                    CHECKF(e <= lim, "gemm_q %s %s k=%lld: %g > %g", tern_ggml_type_name(type),
                           tern_simd_name(g_variants[vi]), (long long)k, e, lim);
                    if (e / lim > worst) worst = e / lim;
                }
            }
            /* row split, one token alone: bitwise (a head split over ranks or threads) */
            int64_t a = rndi(1, n);
            tern_gemm_q(type, w, k, x, n_tok, ys, ldy, 0, a);
            if (a < n) tern_gemm_q(type, (const uint8_t *)w + 0, k, x, n_tok, ys, ldy, a, n);
            for (int64_t t = 0; t < n_tok; t++) CHECK(same_bits(ys + t * ldy, y1 + t * ldy, n));
            int64_t tt = rndi(0, n_tok - 1);
            tern_gemm_q(type, w + (a - 1) * rb, k, x + tt * k, 1, ys, ldy, 0, n - a + 1);
            CHECK(same_bits(ys, y1 + tt * ldy + a - 1, n - a + 1));
        }
        tern_ref_gemm_q(type, w, k, x, n_tok, y0, ldy, 0, n);
        for (int64_t t = 0; t < n_tok; t++)
            for (int64_t o = 0; o < n; o++) {
                double ref = 0.0;
                for (int64_t i = 0; i < k; i++) ref += (double)wf[o * k + i] * x[t * k + i];
                CHECK(y0[t * ldy + o] == (float)ref);
            }
        free(w), free(wf), free(wd), free(x), free(y0), free(y1), free(ys);
    }
    printf("gemm_q (Q8_0, Q6_K): worst %.3f of the bound\n", worst);
}

int main(void)
{
    test_dispatch();
    test_act_quant();
    test_kv_quant();
    test_tgemm_random();
    test_tgemv_bounds();
    test_repack();
    test_i2s_flat();
    test_block_scales();
    test_reject();
    test_f16();
    test_rmsnorm();
    test_rope();
    test_softmax();
    test_elementwise();
    test_attention();
    test_attention_kv();
    test_attention_rows();
    test_attention_underflow();
    test_head();
    test_head_q();
    return tern_test_finish("test_kernels");
}
