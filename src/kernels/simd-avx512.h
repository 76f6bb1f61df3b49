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

/* ---- the GEMMs' pieces (tgemm-avx512.c, ops-avx512.c, gemm-amx.c) ---- */

/* Lanes [lo, hi) of 16. */
AI __mmask16 lane_mask(int lo, int hi)
{
    return (__mmask16)(((1u << hi) - 1) & ~((1u << lo) - 1));
}

/* Four code vectors of one chunk: lane r of c[sh] holds codes of columns 4sh..4sh+3. */
AI void unpack(const uint8_t *p, __m512i c[4])
{
    const __m512i m3 = _mm512_set1_epi8(3);
    __m512i v = _mm512_load_si512((const void *)p);
    c[0] = _mm512_and_si512(v, m3);
    c[1] = _mm512_and_si512(_mm512_srli_epi16(v, 2), m3);
    c[2] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m3);
    c[3] = _mm512_and_si512(_mm512_srli_epi16(v, 6), m3);
}

/* Lanes of group g that fall in [o0, o1). */
AI __mmask16 row_mask(int64_t g, int64_t o0, int64_t o1)
{
    int64_t r0 = g * 16, lo = o0 > r0 ? o0 - r0 : 0, hi = o1 - r0 < 16 ? o1 - r0 : 16;
    return lane_mask((int)lo, (int)hi);
}

/* a tile's results for the rows of mask m (all 16 unmasked: masked stores do not forward) */
AI void store_rows(float *y, __mmask16 m, __m512 f)
{
    if (m == 0xffff)
        _mm512_storeu_ps(y, f);
    else
        _mm512_mask_storeu_ps(y, m, f);
}

/* The reference's float epilogue of one exact sum a per row: (a - qsum) / s * alpha. */
AI __m512 tgemm_float(__m512i a, int32_t qsum, float s, float alpha)
{
    a = _mm512_sub_epi32(a, _mm512_set1_epi32(qsum));
    __m512 f = _mm512_div_ps(_mm512_cvtepi32_ps(a), _mm512_set1_ps(s));
    return _mm512_mul_ps(f, _mm512_set1_ps(alpha));
}

/* The int8 head's logits of the lanes of m from sums of biased weights: kernels.h's formula in
 * double lanes: (float)((double)S * ((double)scale * (double)xs)) */
AI void hi_store(__m512i acc, int32_t xsum, const float *sc, float xs, float *out, __mmask16 m)
{
    const __m512i S = _mm512_sub_epi32(acc, _mm512_set1_epi32(xsum * 128));
    const __m512d xd = _mm512_set1_pd((double)xs);
    const __m512d w0 = _mm512_mul_pd(_mm512_cvtps_pd(_mm256_loadu_ps(sc)), xd);
    const __m512d w1 = _mm512_mul_pd(_mm512_cvtps_pd(_mm256_loadu_ps(sc + 8)), xd);
    const __m512d f0 = _mm512_mul_pd(_mm512_cvtepi32_pd(_mm512_castsi512_si256(S)), w0);
    const __m512d f1 = _mm512_mul_pd(_mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(S, 1)), w1);
    const __m512 r =
        _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(f0)), _mm512_cvtpd_ps(f1), 1);
    _mm512_mask_storeu_ps(out, m, r);
}
#endif
