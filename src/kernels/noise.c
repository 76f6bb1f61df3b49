/* noise.c: the sampler's counter-based uniforms and Gumbel noise (kernels.h), and the scalar
 * reference of the Gumbel-max over a run of logits. tern_log_det is built from correctly
 * rounded operations only (+, -, *, /, fma, exact conversions), in an order noise-avx2.c and
 * noise-avx512.c repeat lane for lane, so the noise and the draw have the same bits in every
 * variant and with every C library. */
#include <math.h>
#include <string.h>

#include "kernels/kernels-internal.h"

static inline uint64_t tern_nz_mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * TERN_NOISE_M1;
    z = (z ^ (z >> 27)) * TERN_NOISE_M2;
    return z ^ (z >> 31);
}

double tern_noise_cell(uint64_t cell)
{
    const double u = ((double)cell + 0.5) * 0x1p-53;
    return u < TERN_NOISE_U_MAX ? u : TERN_NOISE_U_MAX;
}

double tern_noise_uniform(uint64_t key, int64_t id)
{
    return tern_noise_cell(tern_nz_mix(key ^ ((uint64_t)id * TERN_NOISE_K3 + TERN_NOISE_K4)) >> 11);
}

#define TERN_NZ_SET(c) (c)
#define TERN_NZ_MUL(a, b) ((a) * (b))
double tern_log_det(double x)
{
    uint64_t b;
    memcpy(&b, &x, sizeof b);
    int64_t e = (int64_t)(b >> 52) - 1023;
    uint64_t mb = (b & 0x000fffffffffffffULL) | 0x3ff0000000000000ULL;
    if (mb > TERN_LOG_SQRT2_BITS) mb -= 0x0010000000000000ULL, e++;
    double m;
    memcpy(&m, &mb, sizeof m);
    const double f = m - 1.0, s = f / (2.0 + f), r = s + s, z = s * s;
    double q;
    TERN_LOG_SERIES(q, z, TERN_NZ_SET, fma, TERN_NZ_MUL);
    const double ed = (double)e;
    return fma(ed, TERN_LN2_HI, fma(ed, TERN_LN2_LO, fma(r, q, r)));
}
#undef TERN_NZ_SET
#undef TERN_NZ_MUL

#define TERN_NZ_SET(c) (c)
double tern_exp_det(double d)
{
    d = d > TERN_EXP_MIN ? d : TERN_EXP_MIN;
    const double n = nearbyint(d * TERN_LOG2E);
    const double r = fma(-n, TERN_LN2_LO, fma(-n, TERN_LN2_HI, d));
    double p;
    TERN_EXP_TAYLOR13(p, r, TERN_NZ_SET, fma);
    const uint64_t b = (uint64_t)((int64_t)n + 1023) << 52;
    double s;
    memcpy(&s, &b, sizeof s);
    return p * s;
}
#undef TERN_NZ_SET

double tern_noise_gumbel(uint64_t key, int64_t id)
{
    return -tern_log_det(-tern_log_det(tern_noise_uniform(key, id)));
}

/* kernels.h's tern_gumbel_max, sequentially (the reference) */
void tern_ref_gumbel_max(const float *v, int64_t n, int64_t id0, double inv_t, uint64_t key,
                         tern_gumbel_run *out)
{
    tern_gumbel_run r = {-INFINITY, -INFINITY, -1, -INFINITY, -1};
    for (int64_t i = 0; i < n; i++) {
        const float vi = v[i] == v[i] ? v[i] : -INFINITY;
        if (r.top_i < 0 || vi > r.top) r.top = vi, r.top_i = i;
        if (inv_t == 0.0) continue; /* greedy */
        const double x = (double)vi * inv_t;
        if (!(x > -INFINITY)) continue;
        if (x > r.mx) r.mx = x;
        const double g = x + tern_noise_gumbel(key, id0 + i);
        if (g > r.g) r.g = g, r.g_i = i;
    }
    *out = r;
}

uint64_t tern_noise_key(uint64_t seed, int64_t pos)
{
    const uint64_t h = tern_nz_mix(seed + TERN_NOISE_K0);
    return tern_nz_mix(h ^ ((uint64_t)pos * TERN_NOISE_K1 + TERN_NOISE_K2));
}

void tern_ref_lse_lanes(const float *v, int64_t n, int64_t id0, double inv_t, double *m, double *z)
{
    for (int64_t i = 0; i < n; i++) {
        const float vi = v[i] == v[i] ? v[i] : -INFINITY;
        const double x = (double)vi * inv_t;
        if (!(x > -INFINITY)) continue;
        const int l = (int)((uint64_t)(id0 + i) % TERN_LSE_LANES);
        if (x > m[l])
            z[l] = z[l] * tern_exp_det(m[l] - x) + 1.0, m[l] = x;
        else
            z[l] = z[l] + tern_exp_det(x - m[l]);
    }
}
