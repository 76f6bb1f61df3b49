/* noise.c: the sampler's counter-based uniforms and Gumbel noise (kernels.h), and the scalar
 * reference of the Gumbel-max over a run of logits (noise-scalar.h). */
#include "kernels/noise-scalar.h"

uint64_t tern_noise_key(uint64_t seed, int64_t pos)
{
    const uint64_t h = tern_nz_mix(seed + TERN_NOISE_K0);
    return tern_nz_mix(h ^ ((uint64_t)pos * TERN_NOISE_K1 + TERN_NOISE_K2));
}

double tern_noise_cell(uint64_t cell)
{
    return tern_nz_cell(cell);
}

double tern_noise_uniform(uint64_t key, int64_t id)
{
    return tern_nz_uniform(key, id);
}

double tern_log_det(double x)
{
    return tern_nz_log(x);
}

double tern_noise_gumbel(uint64_t key, int64_t id)
{
    return tern_nz_gumbel(key, id);
}

void tern_ref_gumbel_max(const float *v, int64_t n, int64_t id0, double inv_t, uint64_t key,
                         tern_gumbel_run *out)
{
    tern_nz_gumbel_max(v, n, id0, inv_t, key, out);
}
