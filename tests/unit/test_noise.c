/* test_noise.c: the sampler's noise kernels (kernels.h, "sampling noise").
 * - tern_log_det against the C library's log (an independent implementation): within 2 ulp
 *   over the binades the draws reach, and near 1 where log(u) is tiny.
 * - tern_noise_uniform: the documented formula, recomputed here from its constants.
 * - tern_noise_gumbel against -log(-log(u)) by the C library: within 1e-13 (1 + |g|).
 * - tern_gumbel_max: every variant against the sequential reference, field for field and
 *   bit for bit, on runs with NaN, +-inf, ties, all -inf, tails, ids past 2^31 and greedy
 *   rows (inv_t 0); and
 *   against a plain loop here of the documented rule with tern_noise_gumbel.
 * - tern_exp_det against the C library's exp; tern_lse_lanes: every variant against the
 *   reference bit for bit, runs cut anywhere giving the same lanes, and the lanes' sum against a
 *   direct one in long double.
 * - The cost per id of each variant (printed, not asserted). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "harness.h"
#include "ternpipe/kernels.h"
#include "ternpipe/rng.h"

static tern_rng g_rng;
static uint64_t rnd(void)
{
    return tern_rng_next(&g_rng);
}
static double rndu(void) /* [0, 1) */
{
    return tern_rng_uniform_double(&g_rng);
}

/* |a - b| in units of b's last place */
static double ulps(double a, double b)
{
    const double ulp = nextafter(fabs(b), INFINITY) - fabs(b);
    return fabs(a - b) / ulp;
}

static void test_log(void)
{
    double worst = 0.0;
    for (int i = 0; i < 400000; i++) {
        double x;
        switch (i % 4) {
        case 0: /* the uniforms' range, near 1 included */
            x = ((double)(rnd() >> 11) + 0.5) * 0x1p-53;
            break;
        case 1: /* 1 - k 2^-53 and 1 + k 2^-52: log(x) tiny */
            x = i % 8 == 1 ? 1.0 - (double)(rnd() % 100000 + 1) * 0x1p-53
                           : 1.0 + (double)(rnd() % 100000 + 1) * 0x1p-52;
            break;
        case 2: /* -log(u): [1e-16, 37] */
            x = ldexp(1.0 + rndu(), (int)(rnd() % 60) - 54);
            break;
        default: /* any normal binade */
            x = ldexp(1.0 + rndu(), (int)(rnd() % 2000) - 1000);
            break;
        }
        const double got = tern_log_det(x), want = log(x);
        const double e = want == 0.0 ? fabs(got) : ulps(got, want);
        CHECKF(e <= 2.0, "log(%.17g): %.17g against %.17g (%.2f ulp)", x, got, want, e);
        if (e > worst) worst = e;
    }
    CHECK(tern_log_det(1.0) == 0.0 && tern_log_det(2.0) == log(2.0));
    printf("tern_log_det: worst %.2f ulp against the C library's log\n", worst);
}

static void test_uniform_gumbel(void)
{
    /* the formula of kernels.h, recomputed */
    for (int i = 0; i < 1000; i++) {
        const uint64_t seed = rnd(), key = rnd();
        const int64_t pos = (int64_t)(rnd() % 100000), id = (int64_t)(rnd() % 200000);
        uint64_t z = seed + 0x9e3779b97f4a7c15ULL;
        uint64_t h = 0;
        for (int round = 0; round < 2; round++) {
            z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
            z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
            z ^= z >> 31;
            if (round == 0) z ^= (uint64_t)pos * 0xd1b54a32d192ed03ULL + 0x8cb92ba72f3d8dd7ULL;
        }
        CHECK(tern_noise_key(seed, pos) == z);
        h = key ^ ((uint64_t)id * 0xaef17502108ef2d9ULL + 0x632be59bd9b4e019ULL);
        h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ULL;
        h = (h ^ (h >> 27)) * 0x94d049bb133111ebULL;
        h ^= h >> 31;
        const double u = tern_noise_uniform(key, id);
        CHECK(u == fmin(((double)(h >> 11) + 0.5) / 9007199254740992.0, 1.0 - 0x1p-53) && u > 0.0 &&
              u < 1.0);
        const double g = tern_noise_gumbel(key, id), want = -log(-log(u));
        CHECKF(fabs(g - want) <= 1e-13 * (1.0 + fabs(want)), "gumbel %.17g against %.17g", g, want);
    }
    /* the extreme uniforms: 2^-54 and, where (h >> 11) + 0.5 rounds up to 2^53, 1 - 2^-53 */
    const double lo = 0.5 * 0x1p-53, hi = 1.0 - 0x1p-53;
    CHECK(fabs(-tern_log_det(-tern_log_det(lo)) + log(-log(lo))) < 1e-14);
    CHECK(fabs(-tern_log_det(-tern_log_det(hi)) + log(-log(hi))) < 1e-12);
    CHECK(tern_noise_cell(0x1fffffffffffffULL) == hi && tern_noise_cell(0) == lo &&
          tern_noise_cell(1) == 1.5 * 0x1p-53 && tern_noise_cell((1ULL << 52) - 1) < 0.5);
    for (uint64_t c = (1ULL << 53) - 4096; c < (1ULL << 53); c++) {
        const double u = tern_noise_cell(c);
        CHECK(u < 1.0 && isfinite(-tern_log_det(-tern_log_det(u))));
    }
}

static void fill(float *v, int64_t n)
{
    const int mode = (int)(rnd() % 6);
    for (int64_t i = 0; i < n; i++) {
        float x = (float)((rndu() * 2.0 - 1.0) * 12.0);
        if (mode == 1) x = (float)(rnd() % 5); /* ties */
        if (mode == 2) x = -INFINITY;          /* nothing finite */
        const uint64_t r = rnd() % 100;
        if (mode >= 3 && r == 0) x = NAN;
        if (mode >= 3 && r == 1) x = -INFINITY;
        if (mode == 4 && r == 2) x = INFINITY;
        v[i] = x;
    }
}

/* the variants this machine runs */
static int variants(tern_simd *vars)
{
    int nv = 0;
    for (int v = 0; v < TERN_SIMD_COUNT; v++)
        if (tern_simd_supported((tern_simd)v)) vars[nv++] = (tern_simd)v;
    return nv;
}

/* nanoseconds an id of fn over a 128256-id row, the best of 3 (printed, not asserted) */
static void cost(const char *name, tern_simd var, void (*fn)(const float *, int64_t))
{
    static float big[128256];
    for (int64_t i = 0; i < 128256; i++) big[i] = (float)((rndu() * 2.0 - 1.0) * 10.0);
    tern_status st;
    CHECK(tern_kernels_force(var, &st) == TERN_OK);
    double best = 1e9;
    for (int r = 0; r < 3; r++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        fn(big, 128256);
        clock_gettime(CLOCK_MONOTONIC, &b);
        const double t = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) * 1e-9;
        if (t < best) best = t;
    }
    printf("%s %s: %.2f ns an id\n", name, tern_simd_name(var), best * 1e9 / 128256);
}
static void run_gumbel(const float *v, int64_t n)
{
    tern_gumbel_run out;
    tern_gumbel_max(v, n, 0, 1.0, 42, &out);
}
static void run_lse(const float *v, int64_t n)
{
    double m[TERN_LSE_LANES], z[TERN_LSE_LANES];
    for (int l = 0; l < TERN_LSE_LANES; l++) m[l] = -INFINITY, z[l] = 0.0;
    tern_lse_lanes(v, n, 0, 1.25, m, z);
}

static bool same_run(const tern_gumbel_run *a, const tern_gumbel_run *b)
{
    return memcmp(&a->mx, &b->mx, 8) == 0 && memcmp(&a->g, &b->g, 8) == 0 && a->g_i == b->g_i &&
           memcmp(&a->top, &b->top, 4) == 0 && a->top_i == b->top_i;
}

static void test_gumbel_max(void)
{
    tern_simd vars[TERN_SIMD_COUNT];
    const int nv = variants(vars);
    static float v[1200];
    for (int it = 0; it < 600; it++) {
        const int64_t n = it % 5 == 0 ? (int64_t)(rnd() % 9 + 1) : (int64_t)(rnd() % 1200 + 1);
        const int64_t id0 =
            it % 7 == 0 ? (int64_t)(rnd() % 4000000000ull) : (int64_t)(rnd() % 1000);
        /* inv_t 0: a greedy row (the top only) */
        const double inv_t = it % 11 == 0 ? 0.0 : it % 3 == 0 ? 1.0 : 0.2 + rndu() * 3.0;
        const uint64_t key = rnd();
        fill(v, n);
        /* the documented rule, written out here */
        tern_gumbel_run want = {-INFINITY, -INFINITY, -1, -INFINITY, -1};
        for (int64_t i = 0; i < n; i++) {
            const float vi = isnan(v[i]) ? -INFINITY : v[i];
            if (want.top_i < 0 || vi > want.top) want.top = vi, want.top_i = i;
            const double x = (double)vi * inv_t;
            if (inv_t == 0.0 || x == -INFINITY) continue;
            want.mx = fmax(want.mx, x);
            const double g = x + tern_noise_gumbel(key, id0 + i);
            if (g > want.g) want.g = g, want.g_i = i;
        }
        for (int k = 0; k < nv; k++) {
            tern_status st;
            CHECK(tern_kernels_force(vars[k], &st) == TERN_OK);
            tern_gumbel_run got;
            memset(&got, 0x5a, sizeof got);
            tern_gumbel_max(v, n, id0, inv_t, key, &got);
            CHECKF(same_run(&got, &want),
                   "%s n=%lld: mx %.17g/%.17g g %.17g@%lld/%.17g@%lld top %g@%lld/%g@%lld",
                   tern_simd_name(vars[k]), (long long)n, got.mx, want.mx, got.g,
                   (long long)got.g_i, want.g, (long long)want.g_i, (double)got.top,
                   (long long)got.top_i, (double)want.top, (long long)want.top_i);
        }
    }
    for (int k = 0; k < nv; k++) cost("tern_gumbel_max", vars[k], run_gumbel);
}

/* tern_exp_det against the C library, and tern_lse_lanes: variants against the reference bit
 * for bit, one run against the same ids cut in two, and the lanes' sum against a direct one */
static void test_lse(void)
{
    double worst = 0.0;
    for (int i = 0; i < 200000; i++) {
        const double d = i % 2 ? -rndu() * 700.0 : -rndu() * 2.0;
        const double got = tern_exp_det(d), want = exp(d), e = ulps(got, want);
        CHECKF(e <= 2.0, "exp(%.17g): %.17g against %.17g (%.2f ulp)", d, got, want, e);
        if (e > worst) worst = e;
    }
    CHECK(tern_exp_det(0.0) == 1.0 && tern_exp_det(-INFINITY) == tern_exp_det(-700.0) &&
          tern_exp_det(NAN) == tern_exp_det(-700.0));
    printf("tern_exp_det: worst %.2f ulp against the C library's exp\n", worst);
    tern_simd vars[TERN_SIMD_COUNT];
    const int nv = variants(vars);
    static float v[1500];
    for (int it = 0; it < 400; it++) {
        const int64_t n = it % 4 == 0 ? (int64_t)(rnd() % 12 + 1) : (int64_t)(rnd() % 1500 + 1);
        const int64_t id0 = (int64_t)(rnd() % 100000);
        const double inv_t = 0.2 + rndu() * 3.0;
        fill(v, n);
        double m0[TERN_LSE_LANES], z0[TERN_LSE_LANES];
        for (int l = 0; l < TERN_LSE_LANES; l++) {
            const bool fresh = rnd() % 2;
            m0[l] = fresh ? -INFINITY : (rndu() * 2.0 - 1.0) * 10.0;
            z0[l] = fresh ? 0.0 : 1.0 + rndu() * 50.0;
        }
        double mr[TERN_LSE_LANES], zr[TERN_LSE_LANES];
        tern_status st;
        CHECK(tern_kernels_force(TERN_SIMD_REF, &st) == TERN_OK);
        memcpy(mr, m0, sizeof mr), memcpy(zr, z0, sizeof zr);
        tern_lse_lanes(v, n, id0, inv_t, mr, zr);
        for (int k = 0; k < nv; k++) {
            CHECK(tern_kernels_force(vars[k], &st) == TERN_OK);
            double m[TERN_LSE_LANES], z[TERN_LSE_LANES];
            memcpy(m, m0, sizeof m), memcpy(z, z0, sizeof z);
            tern_lse_lanes(v, n, id0, inv_t, m, z);
            CHECKF(memcmp(m, mr, sizeof m) == 0 && memcmp(z, zr, sizeof z) == 0,
                   "lse_lanes %s n=%lld id0=%lld", tern_simd_name(vars[k]), (long long)n,
                   (long long)id0);
            /* cut anywhere: the same lanes */
            const int64_t cut = (int64_t)(rnd() % (uint64_t)n);
            memcpy(m, m0, sizeof m), memcpy(z, z0, sizeof z);
            if (cut > 0) tern_lse_lanes(v, cut, id0, inv_t, m, z);
            tern_lse_lanes(v + cut, n - cut, id0 + cut, inv_t, m, z);
            CHECKF(memcmp(m, mr, sizeof m) == 0 && memcmp(z, zr, sizeof z) == 0,
                   "lse_lanes %s cut at %lld of %lld", tern_simd_name(vars[k]), (long long)cut,
                   (long long)n);
        }
        /* from fresh lanes: the lanes' sum against sum_i exp(x_i - max) in long double */
        double m[TERN_LSE_LANES], z[TERN_LSE_LANES];
        for (int l = 0; l < TERN_LSE_LANES; l++) m[l] = -INFINITY, z[l] = 0.0;
        tern_lse_lanes(v, n, id0, inv_t, m, z);
        double mx = -INFINITY;
        for (int64_t i = 0; i < n; i++)
            if (!isnan(v[i]) && (double)v[i] * inv_t > mx) mx = (double)v[i] * inv_t;
        if (!(mx > -INFINITY) || isinf(mx)) continue;
        long double want = 0.0L, got = 0.0L;
        for (int64_t i = 0; i < n; i++)
            if (!isnan(v[i]) && v[i] > -INFINITY) want += expl((long double)v[i] * inv_t - mx);
        for (int l = 0; l < TERN_LSE_LANES; l++)
            if (m[l] > -INFINITY) got += (long double)z[l] * expl((long double)m[l] - mx);
        CHECKF(fabsl(got - want) <= 1e-13L * want, "lanes' sum %.17Lg against %.17Lg", got, want);
    }
    for (int k = 0; k < nv; k++) cost("tern_lse_lanes", vars[k], run_lse);
}

int main(void)
{
    tern_rng_seed(&g_rng, 0x243f6a8885a308d3ull);
    test_log();
    test_uniform_gumbel();
    test_gumbel_max();
    test_lse();
    return tern_test_finish("test_noise");
}
