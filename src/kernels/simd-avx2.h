/* simd-avx2.h: what the AVX2 kernel files (compiled with AVX2/FMA flags) share. */
#ifndef TERN_KERNELS_SIMD_AVX2_H
#define TERN_KERNELS_SIMD_AVX2_H

#include <immintrin.h>

#include "kernels/kernels-internal.h"

#define AI static inline __attribute__((always_inline))

void tern_avx2_act_quant(const float *x, int64_t n, int64_t k, int8_t *q, float *s, int32_t *qsum);
void tern_avx2_kv_quant_q8(const float *x, int64_t n, int64_t d, int8_t *q, float *scale,
                           int32_t *sum);
void tern_avx2_tgemm(const tern_tmat *w, const int8_t *q, const float *s, const int32_t *qsum,
                     int64_t n_tok, float *y, int64_t ldy, int64_t o0, int64_t o1);

/* lane mask for a tail of `left` 32-bit elements (maskload/maskstore) */
static inline __m256i tail8(int64_t left)
{
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(left >= 8 ? 8 : (int)left), idx);
}

#endif
