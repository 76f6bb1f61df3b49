/* bench_kernels.c: throughput of the kernels (medians of repeated runs).
 *
 *   bench_kernels [layout|gemm|head|all] [max_seconds_per_case]
 *
 * layout: the internal 2-bit code layout (the library's tgemm, per variant) against a
 *         bit-plane layout (+1 mask and -1 mask per 32 columns, applied with masked int16
 *         adds on AVX-512 and with byte masks on AVX2) implemented only here, both on
 *         2560x6912 and 6912x2560 (k x n) at n_tok 1, 16, 64.
 * gemm:   the chosen tgemm on 2560x2560, 2560x6912, 6912x2560 at n_tok 1, 16, 64, on one
 *         thread and on two (pthreads splitting rows at the row granularity).
 * head:   F16 and int8 LM head 128256x2560 at n_tok 1, 16, 64, one and two threads.
 * GB/s counts weight bytes streamed per call; tok/s is n_tok per call time.
 */
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ternpipe/kernels.h"

static double g_budget = 1.0; /* seconds per case */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t g_rng = 42;
static uint64_t rnd(void)
{
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return g_rng * 0x2545f4914f6cdd1dull;
}
static float rndf(void)
{
    return (float)((double)(rnd() >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median seconds of fn(arg): at least 3 runs, more while within the budget (max 41). */
static double median_time(void (*fn)(void *), void *arg)
{
    double t[41];
    int n = 0;
    fn(arg); /* warm up: page faults, caches */
    double start = now();
    while (n < 41 && (n < 3 || now() - start < g_budget)) {
        double t0 = now();
        fn(arg);
        t[n++] = now() - t0;
    }
    qsort(t, (size_t)n, sizeof t[0], cmp_double);
    return t[n / 2];
}

/* ---- two threads splitting rows ---- */

typedef void (*rows_fn)(void *ctx, int64_t o0, int64_t o1);
typedef struct {
    rows_fn fn;
    void *ctx;
    int64_t o0, o1;
} split_arg;

static void *split_main(void *p)
{
    split_arg *a = p;
    a->fn(a->ctx, a->o0, a->o1);
    return NULL;
}

/* Rows [0, n) over nthreads, boundaries at multiples of gran. A fresh thread per call keeps
 * this simple; the spawn cost (~20 us) is included and small against these calls. */
static void run_split(rows_fn fn, void *ctx, int64_t n, int64_t gran, int nthreads)
{
    if (nthreads == 1) {
        fn(ctx, 0, n);
        return;
    }
    int64_t groups = (n + gran - 1) / gran, mid = (groups / 2) * gran;
    split_arg a = {fn, ctx, mid, n};
    pthread_t th;
    if (pthread_create(&th, NULL, split_main, &a) != 0) {
        fn(ctx, 0, n);
        return;
    }
    fn(ctx, 0, mid);
    pthread_join(th, NULL);
}

/* ---- ternary GEMM cases ---- */

typedef struct {
    tern_tmat *m;
    int64_t k, n, n_tok;
    int8_t *q;
    float *s, *y;
    int32_t *qsum;
    int threads;
} tcase;

static void tgemm_rows(void *p, int64_t o0, int64_t o1)
{
    tcase *c = p;
    tern_tgemm(c->m, c->q, c->s, c->qsum, c->n_tok, c->y, c->n, o0, o1);
}
static void tgemm_call(void *p)
{
    tcase *c = p;
    run_split(tgemm_rows, c, c->n, tern_tmat_row_granularity(c->m), c->threads);
}

static tern_tmat *random_tmat(int64_t k, int64_t n)
{
    int8_t *t = malloc((size_t)(n * k));
    for (int64_t i = 0; i < n * k; i++) t[i] = (int8_t)(rnd() % 3) - 1;
    tern_tmat *m = NULL;
    tern_status st;
    if (tern_tmat_from_trits(&m, t, n, k, 0.02f, &st) != TERN_OK) {
        fprintf(stderr, "tmat: %s\n", st.msg);
        exit(1);
    }
    free(t);
    return m;
}

static void random_acts(int64_t n_tok, int64_t k, int8_t *q, float *s, int32_t *qsum)
{
    float *x = malloc((size_t)(n_tok * k) * sizeof(float));
    for (int64_t i = 0; i < n_tok * k; i++) x[i] = rndf();
    tern_act_quant(x, n_tok, k, q, s, qsum);
    free(x);
}

/* ---- bit-plane layout (benchmark only) ----
 * Row o, chunk c of 32 columns: two uint32 masks at planes[(o * kc32 + c) * 2 + {0,1}]
 * (bit j: column 32c + j is +1, resp. -1). Same 2 bits per weight as the codes. */

typedef struct {
    int64_t k, n;
    uint32_t *planes;
    float alpha;
} plane_mat;

static plane_mat plane_from_tmat(const tern_tmat *m)
{
    plane_mat p = {tern_tmat_cols(m), tern_tmat_rows(m), NULL, 0.02f};
    int64_t kc = p.k / 32;
    p.planes = aligned_alloc(64, (size_t)(p.n * kc * 2 * 4 + 64));
    int8_t *row = malloc((size_t)p.k);
    for (int64_t o = 0; o < p.n; o++) {
        tern_tmat_unpack_row(m, o, row);
        for (int64_t c = 0; c < kc; c++) {
            uint32_t plus = 0, minus = 0;
            for (int j = 0; j < 32; j++) {
                plus |= (uint32_t)(row[c * 32 + j] == 1) << j;
                minus |= (uint32_t)(row[c * 32 + j] == -1) << j;
            }
            p.planes[(o * kc + c) * 2] = plus;
            p.planes[(o * kc + c) * 2 + 1] = minus;
        }
    }
    free(row);
    return p;
}

#define AVX512_ATTR __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
#define AVX2_ATTR __attribute__((target("avx2,fma")))

/* AVX-512: int16 lanes over 32 columns; masked add for +1, masked sub for -1. q is widened
 * to int16 once per call (q16). Tiles of 2 rows x TB tokens. |acc lane| <= 128 * k / 32, fine
 * for k <= 8160 (bench shapes only). */
AVX512_ATTR static inline __attribute__((always_inline)) void
plane512_tile(const plane_mat *p, int64_t o, const int16_t *q16, const float *s, int64_t t0,
              const int TB, float *y, int64_t ldy)
{
    const int64_t kc = p->k / 32;
    __m512i acc[2][8];
#pragma GCC unroll 2
    for (int r = 0; r < 2; r++)
#pragma GCC unroll 8
        for (int t = 0; t < TB; t++) acc[r][t] = _mm512_setzero_si512();
    const uint32_t *w0 = p->planes + o * kc * 2, *w1 = w0 + kc * 2;
    for (int64_t c = 0; c < kc; c++) {
        __mmask32 p0 = _cvtu32_mask32(w0[2 * c]), m0 = _cvtu32_mask32(w0[2 * c + 1]);
        __mmask32 p1 = _cvtu32_mask32(w1[2 * c]), m1 = _cvtu32_mask32(w1[2 * c + 1]);
#pragma GCC unroll 8
        for (int t = 0; t < TB; t++) {
            __m512i qv = _mm512_loadu_si512((const void *)(q16 + (t0 + t) * p->k + c * 32));
            acc[0][t] = _mm512_mask_add_epi16(acc[0][t], p0, acc[0][t], qv);
            acc[0][t] = _mm512_mask_sub_epi16(acc[0][t], m0, acc[0][t], qv);
            acc[1][t] = _mm512_mask_add_epi16(acc[1][t], p1, acc[1][t], qv);
            acc[1][t] = _mm512_mask_sub_epi16(acc[1][t], m1, acc[1][t], qv);
        }
    }
    const __m512i ones = _mm512_set1_epi16(1);
#pragma GCC unroll 2
    for (int r = 0; r < 2; r++)
#pragma GCC unroll 8
        for (int t = 0; t < TB; t++) {
            int32_t a = _mm512_reduce_add_epi32(_mm512_madd_epi16(acc[r][t], ones));
            y[(t0 + t) * ldy + o + r] = ((float)a / s[t0 + t]) * p->alpha;
        }
}

AVX512_ATTR static void plane512_rows(const plane_mat *p, const int16_t *q16, const float *s,
                                      int64_t n_tok, float *y, int64_t o0, int64_t o1)
{
    for (int64_t o = o0; o + 2 <= o1; o += 2)
        for (int64_t t0 = 0; t0 < n_tok; t0 += 8) {
            if (n_tok - t0 >= 8)
                plane512_tile(p, o, q16, s, t0, 8, y, p->n);
            else
                for (int64_t t = t0; t < n_tok; t++) plane512_tile(p, o, q16, s, t, 1, y, p->n);
        }
}

AVX512_ATTR static void widen_q(const int8_t *q, int64_t n, int16_t *q16)
{
    for (int64_t i = 0; i < n; i += 32)
        _mm512_storeu_si512((void *)(q16 + i),
                            _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(q + i))));
}

/* AVX2: each 32-bit mask is expanded to 32 byte masks (broadcast, shuffle, test bit), the
 * two planes give t in {-1,0,1} bytes, sign(q, t) applies it (valid as act-quant never
 * yields -128) and maddubs/madd sum into int32. Tiles of 1 row x TB tokens. */
AVX2_ATTR static inline __attribute__((always_inline)) __m256i expand_mask(uint32_t m)
{
    const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2,
                                          2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)m), shuf);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
}

AVX2_ATTR static inline __attribute__((always_inline)) void
plane2_tile(const plane_mat *p, int64_t o, const int8_t *q, const float *s, int64_t t0,
            const int TB, float *y, int64_t ldy)
{
    const int64_t kc = p->k / 32;
    __m256i acc[8];
#pragma GCC unroll 8
    for (int t = 0; t < TB; t++) acc[t] = _mm256_setzero_si256();
    const uint32_t *w = p->planes + o * kc * 2;
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    for (int64_t c = 0; c < kc; c++) {
        /* +1 -> 1, -1 -> -1: (minus mask) - (plus mask) */
        __m256i t = _mm256_sub_epi8(expand_mask(w[2 * c + 1]), expand_mask(w[2 * c]));
#pragma GCC unroll 8
        for (int i = 0; i < TB; i++) {
            __m256i qv = _mm256_loadu_si256((const __m256i *)(q + (t0 + i) * p->k + c * 32));
            __m256i prod = _mm256_sign_epi8(qv, t);
            acc[i] = _mm256_add_epi32(acc[i],
                                      _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, prod), ones16));
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < TB; i++) {
        __m128i s4 =
            _mm_add_epi32(_mm256_castsi256_si128(acc[i]), _mm256_extracti128_si256(acc[i], 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
        y[(t0 + i) * ldy + o] = ((float)_mm_cvtsi128_si32(s4) / s[t0 + i]) * p->alpha;
    }
}

AVX2_ATTR static void plane2_rows(const plane_mat *p, const int8_t *q, const float *s,
                                  int64_t n_tok, float *y, int64_t o0, int64_t o1)
{
    for (int64_t o = o0; o < o1; o++)
        for (int64_t t0 = 0; t0 < n_tok; t0 += 8) {
            if (n_tok - t0 >= 8)
                plane2_tile(p, o, q, s, t0, 8, y, p->n);
            else
                for (int64_t t = t0; t < n_tok; t++) plane2_tile(p, o, q, s, t, 1, y, p->n);
        }
}

typedef struct {
    plane_mat *p;
    tcase *c;
    int16_t *q16;
    int avx512;
} pcase;

static void plane_call(void *arg)
{
    pcase *pc = arg;
    if (pc->avx512) {
        widen_q(pc->c->q, pc->c->n_tok * pc->c->k, pc->q16);
        plane512_rows(pc->p, pc->q16, pc->c->s, pc->c->n_tok, pc->c->y, 0, pc->p->n);
    } else {
        plane2_rows(pc->p, pc->c->q, pc->c->s, pc->c->n_tok, pc->c->y, 0, pc->p->n);
    }
}

static void bench_layout(void)
{
    static const int64_t shapes[][2] = {{2560, 6912}, {6912, 2560}};
    static const int64_t toks[] = {1, 16, 64};
    printf(
        "\n== layout: (a) 2-bit codes, library tgemm  vs  (b) bit planes (bench only), 1 thread\n");
    printf("%-10s %-5s %-7s %-10s %10s %10s %12s\n", "k x n", "n_tok", "layout", "simd", "ms",
           "GB/s", "tok/s");
    for (int si = 0; si < 2; si++) {
        int64_t k = shapes[si][0], n = shapes[si][1];
        tern_tmat *m = random_tmat(k, n);
        plane_mat p = plane_from_tmat(m);
        for (int ti = 0; ti < 3; ti++) {
            int64_t nt = toks[ti];
            tcase c = {m,
                       k,
                       n,
                       nt,
                       malloc((size_t)(nt * k)),
                       malloc((size_t)nt * 4),
                       malloc((size_t)(nt * n) * 4),
                       malloc((size_t)nt * 4),
                       1};
            random_acts(nt, k, c.q, c.s, c.qsum);
            int16_t *q16 = aligned_alloc(64, (size_t)(nt * k) * 2 + 64);
            float *ya = malloc((size_t)(nt * n) * 4);
            for (int v = TERN_SIMD_AVX2; v <= TERN_SIMD_AVX512; v++) {
                if (!tern_simd_supported((tern_simd)v)) continue;
                tern_kernels_force((tern_simd)v, NULL);
                double ta = median_time(tgemm_call, &c);
                memcpy(ya, c.y, (size_t)(nt * n) * 4);
                pcase pc = {&p, &c, q16, v == TERN_SIMD_AVX512};
                double tb = median_time(plane_call, &pc);
                int same = memcmp(ya, c.y, (size_t)(nt * n) * 4) == 0;
                double ba = (double)tern_tmat_bytes(m), bb = (double)(n * k / 4);
                printf("%4lldx%-5lld %-5lld %-7s %-10s %10.3f %10.2f %12.1f\n", (long long)k,
                       (long long)n, (long long)nt, "codes", tern_simd_name((tern_simd)v), ta * 1e3,
                       ba / ta * 1e-9, (double)nt / ta);
                printf("%4lldx%-5lld %-5lld %-7s %-10s %10.3f %10.2f %12.1f %s\n", (long long)k,
                       (long long)n, (long long)nt, "planes", tern_simd_name((tern_simd)v),
                       tb * 1e3, bb / tb * 1e-9, (double)nt / tb,
                       same ? "(same y)" : "(y DIFFERS)");
            }
            free(c.q);
            free(c.s);
            free(c.y);
            free(c.qsum);
            free(q16);
            free(ya);
        }
        free(p.planes);
        tern_tmat_free(m);
    }
}

static void bench_gemm(void)
{
    static const int64_t shapes[][2] = {{2560, 2560}, {2560, 6912}, {6912, 2560}};
    static const int64_t toks[] = {1, 16, 64};
    tern_simd best = tern_kernels_init();
    tern_kernels_force(best, NULL);
    printf("\n== tgemm (%s, internal layout)\n", tern_simd_name(best));
    printf("%-10s %-5s %-3s %10s %10s %12s %14s\n", "k x n", "n_tok", "thr", "ms", "GB/s", "tok/s",
           "GMAC/s");
    for (int si = 0; si < 3; si++) {
        int64_t k = shapes[si][0], n = shapes[si][1];
        tern_tmat *m = random_tmat(k, n);
        for (int ti = 0; ti < 3; ti++) {
            int64_t nt = toks[ti];
            tcase c = {m,
                       k,
                       n,
                       nt,
                       malloc((size_t)(nt * k)),
                       malloc((size_t)nt * 4),
                       malloc((size_t)(nt * n) * 4),
                       malloc((size_t)nt * 4),
                       1};
            random_acts(nt, k, c.q, c.s, c.qsum);
            for (int th = 1; th <= 2; th++) {
                c.threads = th;
                double t = median_time(tgemm_call, &c);
                printf("%4lldx%-5lld %-5lld %-3d %10.3f %10.2f %12.1f %14.1f\n", (long long)k,
                       (long long)n, (long long)nt, th, t * 1e3,
                       (double)tern_tmat_bytes(m) / t * 1e-9, (double)nt / t,
                       (double)(nt * n * k) / t * 1e-9);
            }
            free(c.q);
            free(c.s);
            free(c.y);
            free(c.qsum);
        }
        tern_tmat_free(m);
    }
}

/* ---- LM head ---- */

typedef struct {
    const uint16_t *w16;
    const tern_i8mat *w8;
    const float *x;
    const int8_t *xq; /* the int8 head's activations (tern_head_quant) */
    const float *xs;
    const int32_t *xsum;
    float *y;
    int64_t n, k, n_tok;
    int threads;
} hcase;

static void head_rows(void *p, int64_t o0, int64_t o1)
{
    hcase *h = p;
    if (h->w8)
        tern_gemm_i8(h->w8, h->xq, h->xs, h->xsum, h->n_tok, h->y, h->n, o0, o1);
    else
        tern_gemm_f16(h->w16, h->x, h->n_tok, h->k, h->y, h->n, o0, o1);
}
static void head_call(void *p)
{
    hcase *h = p;
    run_split(head_rows, h, h->n, 64, h->threads);
}

static void bench_head(void)
{
    const int64_t n = 128256, k = 2560;
    static const int64_t toks[] = {1, 16, 64};
    tern_simd best = tern_kernels_init();
    tern_kernels_force(best, NULL);
    uint16_t *w = malloc((size_t)(n * k) * 2);
    float *row = malloc((size_t)k * 4);
    for (int64_t o = 0; o < n; o++) {
        for (int64_t i = 0; i < k; i++) row[i] = rndf() * 0.05f;
        tern_f32_to_f16(row, w + o * k, k);
    }
    free(row);
    tern_i8mat *w8 = NULL;
    tern_status st;
    double tq = now();
    if (tern_i8mat_from_f16(&w8, w, n, k, &st) != TERN_OK) {
        fprintf(stderr, "int8 head: %s\n", st.msg);
        exit(1);
    }
    tq = now() - tq;
    printf("\n== LM head %lldx%lld (%s); int8 quantization took %.2f s\n", (long long)n,
           (long long)k, tern_simd_name(best), tq);
    printf("%-6s %-5s %-3s %10s %10s %12s %10s\n", "head", "n_tok", "thr", "ms", "GB/s", "tok/s",
           "GMAC/s");
    float *x = malloc((size_t)(64 * k) * 4), *y = malloc((size_t)(64 * n) * 4),
          *y16 = malloc((size_t)(64 * n) * 4), *xs = malloc(64 * 4);
    int8_t *xq = malloc((size_t)(64 * k));
    int32_t xsum[64];
    for (int64_t i = 0; i < 64 * k; i++) x[i] = rndf();
    tern_head_quant(x, 64, k, xq, xs, xsum);
    double saved = g_budget;
    for (int ti = 0; ti < 3; ti++) {
        int64_t nt = toks[ti];
        for (int kind = 0; kind < 2; kind++)
            for (int th = 1; th <= 2; th++) {
                hcase h = {w, kind ? w8 : NULL, x, xq, xs, xsum, kind ? y : y16, n, k, nt, th};
                g_budget = nt >= 64 ? saved / 2 : saved;
                double t = median_time(head_call, &h);
                double bytes = kind ? (double)tern_i8mat_bytes(w8) : (double)(n * k * 2);
                printf("%-6s %-5lld %-3d %10.2f %10.2f %12.1f %10.1f\n", kind ? "int8" : "f16",
                       (long long)nt, th, t * 1e3, bytes / t * 1e-9, (double)nt / t,
                       (double)(nt * n * k) / t * 1e-9);
            }
        /* logit error of the int8 head against the F16 head, per token, relative to range */
        double worst = 0.0, mean = 0.0;
        for (int64_t t = 0; t < nt; t++) {
            float lo = INFINITY, hi = -INFINITY;
            double e = 0.0;
            for (int64_t o = 0; o < n; o++) {
                lo = fminf(lo, y16[t * n + o]);
                hi = fmaxf(hi, y16[t * n + o]);
                e = fmax(e, fabs((double)y[t * n + o] - y16[t * n + o]));
            }
            worst = fmax(worst, e / (hi - lo));
            mean += e / (hi - lo) / (double)nt;
        }
        printf("int8 vs f16 logits (n_tok %lld): max |diff| / range: worst %.4g, mean %.4g\n",
               (long long)nt, worst, mean);
    }
    g_budget = saved;
    free(x);
    free(xq);
    free(xs);
    free(y);
    free(y16);
    free(w);
    tern_i8mat_free(w8);
}

int main(int argc, char **argv)
{
    const char *what = argc > 1 ? argv[1] : "all";
    if (argc > 2) g_budget = atof(argv[2]);
    tern_kernels_init();
    if (!strcmp(what, "layout") || !strcmp(what, "all")) bench_layout();
    if (!strcmp(what, "gemm") || !strcmp(what, "all")) bench_gemm();
    if (!strcmp(what, "head") || !strcmp(what, "all")) bench_head();
    return 0;
}
