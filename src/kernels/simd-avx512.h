/* simd-avx512.h: what the AVX-512 kernel files (compiled with AVX-512 flags) share. */
#ifndef TERN_KERNELS_SIMD_AVX512_H
#define TERN_KERNELS_SIMD_AVX512_H

#include <immintrin.h>

#include "kernels/kernels-internal.h"

#define AI static inline __attribute__((always_inline))

void tern_avx512_act_quant(const float *x, int64_t n, int64_t k, int8_t *q, float *s,
                           int32_t *qsum);
void tern_avx512_tgemm(const tern_tmat *w, const int8_t *q, const float *s, const int32_t *qsum,
                       int64_t n_tok, float *y, int64_t ldy, int64_t o0, int64_t o1);

/* lane mask for a tail of `left` 32-bit elements */
static inline __mmask16 tail16(int64_t left)
{
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
}
/* the same for 8 elements (64-bit lanes, or 256-bit halves) */
static inline __mmask8 tail8(int64_t left)
{
    return left >= 8 ? (__mmask8)0xff : (__mmask8)((1u << left) - 1);
}

#endif
