/* simd-avx512.h: what the AVX-512 kernel files (compiled with AVX-512 flags) share. */
#ifndef TERN_KERNELS_SIMD_AVX512_H
#define TERN_KERNELS_SIMD_AVX512_H

#include <immintrin.h>

#include "kernels/kernels-internal.h"

#define AI static inline __attribute__((always_inline))

void tern_avx512_act_quant(const float *x, int64_t n, int64_t k, int8_t *q, float *s,
                           int32_t *qsum);
void tern_avx512_kv_quant_q8(const float *x, int64_t n, int64_t d, int8_t *q, float *scale,
                             int32_t *sum);
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

/* Up to 16 floats (8 doubles, 16 halves) at p, `left` of them wanted: full vectors unmasked.
 * A masked store does not forward its data to a later load (the load waits until the store
 * has left the store buffer: 4.5 ns a softmax element against 0.9), so everything that is
 * read back soon is stored unmasked wherever the vector is full, and loaded so too. */
AI __m512 load_n(const float *p, int64_t left)
{
    return left >= 16 ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(tail16(left), p);
}
AI void store_n(float *p, __m512 v, int64_t left)
{
    if (left >= 16)
        _mm512_storeu_ps(p, v);
    else
        _mm512_mask_storeu_ps(p, tail16(left), v);
}
AI void store_nd(double *p, __m512d v, int64_t left)
{
    if (left >= 8)
        _mm512_storeu_pd(p, v);
    else
        _mm512_mask_storeu_pd(p, tail8(left), v);
}
AI __m512 load_nh(const void *p, int64_t left) /* halves as floats */
{
    return _mm512_cvtph_ps(left >= 16 ? _mm256_loadu_si256((const __m256i *)p)
                                      : _mm256_maskz_loadu_epi16(tail16(left), p));
}

#endif
