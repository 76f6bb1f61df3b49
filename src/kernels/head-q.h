/* head-q.h: the LM head over a block-quantized table (Q8_0, Q6_K; kernels.h, tern_gemm_q), one
 * driver for the AVX2 and AVX-512 files (it uses 8-lane AVX2/F16C intrinsics only, so both
 * variants give the same bits).
 *
 * For each group of 4 rows and block of up to 64 tokens, the table is dequantized in chunks of
 * up to 256 columns into a stack buffer (exactly ggml's values: every product is exact in
 * float), and each chunk is applied to tiles of 4 rows x 3 tokens of 8-lane fp32
 * accumulators, kept in a stack buffer between chunks. Lane j of a row's accumulator sums the
 * columns i % 8 == j in increasing order with one fma each, then the 8 lanes are added in a
 * fixed tree: a row's logit does not depend on the row range, the token count or the chunking,
 * so any split of rows (threads, ranks) gives the same bits. Each weight is dequantized once
 * per 64 tokens, not once per token tile. Nothing is allocated (12 KiB of stack).
 */
#ifndef TERN_KERNELS_HEAD_Q_H
#define TERN_KERNELS_HEAD_Q_H

#include <immintrin.h>
#include <string.h>

#include "kernels/kernels-internal.h"

#define TERN_HQ_R 4   /* rows per group */
#define TERN_HQ_T 64  /* tokens per block */
#define TERN_HQ_C 256 /* columns per chunk */

static inline float tern_hq_f16(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h); /* exact, as tern_f16_to_f32_1 */
}

/* columns [c0, c0 + n) of one row (c0 and n multiples of the block) into out[n] */
static inline void tern_hq_dequant(tern_ggml_type type, const uint8_t *row, int64_t c0, int64_t n,
                                   float *out)
{
    if (type == TERN_TYPE_Q8_0) {
        const uint8_t *b = row + c0 / 32 * TERN_Q8_0_BYTES;
        for (int64_t i = 0; i < n; i += 32, b += TERN_Q8_0_BYTES) {
            const __m256 d = _mm256_set1_ps(tern_hq_f16(b));
            for (int s = 0; s < 4; s++) {
                __m128i q = _mm_loadl_epi64((const __m128i *)(const void *)(b + 2 + 8 * s));
                __m256 w = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
                _mm256_storeu_ps(out + i + 8 * s, _mm256_mul_ps(d, w));
            }
        }
        return;
    }
    /* Q6_K: 16 columns share a scale sc[j], j = 16-column group of the super-block */
    const __m256i m15 = _mm256_set1_epi32(15), m3 = _mm256_set1_epi32(3);
    const __m256i c32 = _mm256_set1_epi32(32);
    for (int64_t i = 0; i < n; i += 256) {
        const uint8_t *b = row + (c0 + i) / 256 * TERN_Q6_K_BYTES;
        const float d = tern_hq_f16(b + TERN_Q6_K_D);
        for (int j = 0; j < 16; j++) {
            const int h = j / 8, g = (j % 8) / 2;
            const __m256 ds = _mm256_set1_ps(d * (float)(int8_t)b[TERN_Q6_K_SC + j]);
            const __m128i lsh = _mm_cvtsi32_si128(4 * (g >> 1)), hsh = _mm_cvtsi32_si128(2 * g);
            for (int s = 0; s < 2; s++) {
                const int l = (j % 2) * 16 + 8 * s;
                __m256i lo = _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                    (const __m128i *)(const void *)(b + 64 * h + 32 * (g & 1) + l)));
                __m256i hi = _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                    (const __m128i *)(const void *)(b + TERN_Q6_K_QH + 32 * h + l)));
                lo = _mm256_and_si256(_mm256_srl_epi32(lo, lsh), m15);
                hi = _mm256_slli_epi32(_mm256_and_si256(_mm256_srl_epi32(hi, hsh), m3), 4);
                __m256i q = _mm256_sub_epi32(_mm256_or_si256(lo, hi), c32);
                _mm256_storeu_ps(out + i + 16 * j + 8 * s,
                                 _mm256_mul_ps(ds, _mm256_cvtepi32_ps(q)));
            }
        }
    }
}

static inline __attribute__((always_inline)) void tern_hq_tile(const float *wbuf, int64_t n,
                                                               const float *x, int64_t k,
                                                               int64_t c0, const int T,
                                                               float *acc /* [T][R][8] */)
{
    __m256 a[TERN_HQ_R][3];
#pragma GCC unroll 4
    for (int r = 0; r < TERN_HQ_R; r++)
#pragma GCC unroll 3
        for (int t = 0; t < T; t++) a[r][t] = _mm256_loadu_ps(acc + (t * TERN_HQ_R + r) * 8);
    for (int64_t i = 0; i < n; i += 8) {
        __m256 xv[3];
#pragma GCC unroll 3
        for (int t = 0; t < T; t++) xv[t] = _mm256_loadu_ps(x + t * k + c0 + i);
#pragma GCC unroll 4
        for (int r = 0; r < TERN_HQ_R; r++) {
            __m256 w = _mm256_loadu_ps(wbuf + r * TERN_HQ_C + i);
#pragma GCC unroll 3
            for (int t = 0; t < T; t++) a[r][t] = _mm256_fmadd_ps(w, xv[t], a[r][t]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < TERN_HQ_R; r++)
#pragma GCC unroll 3
        for (int t = 0; t < T; t++) _mm256_storeu_ps(acc + (t * TERN_HQ_R + r) * 8, a[r][t]);
}

static inline float tern_hq_hsum8(const float *v)
{
    return ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
}

static void tern_hq_gemm(tern_ggml_type type, const void *w, int64_t k, const float *x,
                         int64_t n_tok, float *y, int64_t ldy, int64_t o0, int64_t o1)
{
    const int64_t blk = type == TERN_TYPE_Q8_0 ? 32 : 256;
    const int64_t rb = k / blk * (type == TERN_TYPE_Q8_0 ? TERN_Q8_0_BYTES : TERN_Q6_K_BYTES);
    float wbuf[TERN_HQ_R * TERN_HQ_C] __attribute__((aligned(32)));
    float acc[TERN_HQ_T * TERN_HQ_R * 8] __attribute__((aligned(32)));
    for (int64_t o = o0; o < o1; o += TERN_HQ_R) {
        const int nr = o1 - o < TERN_HQ_R ? (int)(o1 - o) : TERN_HQ_R;
        if (nr < TERN_HQ_R) memset(wbuf, 0, sizeof wbuf); /* rows past o1: zeros, not stored */
        for (int64_t t0 = 0; t0 < n_tok; t0 += TERN_HQ_T) {
            const int64_t nt = n_tok - t0 < TERN_HQ_T ? n_tok - t0 : TERN_HQ_T;
            memset(acc, 0, (size_t)nt * TERN_HQ_R * 8 * sizeof(float));
            for (int64_t c0 = 0; c0 < k; c0 += TERN_HQ_C) {
                const int64_t n = k - c0 < TERN_HQ_C ? k - c0 : TERN_HQ_C; /* a multiple of blk */
                for (int r = 0; r < nr; r++)
                    tern_hq_dequant(type, (const uint8_t *)w + (o + r) * rb, c0, n,
                                    wbuf + r * TERN_HQ_C);
                const float *xt = x + t0 * k;
                int64_t t = 0;
                for (; t + 3 <= nt; t += 3)
                    tern_hq_tile(wbuf, n, xt + t * k, k, c0, 3, acc + t * TERN_HQ_R * 8);
                if (nt - t == 2)
                    tern_hq_tile(wbuf, n, xt + t * k, k, c0, 2, acc + t * TERN_HQ_R * 8);
                else if (nt - t == 1)
                    tern_hq_tile(wbuf, n, xt + t * k, k, c0, 1, acc + t * TERN_HQ_R * 8);
            }
            for (int64_t t = 0; t < nt; t++)
                for (int r = 0; r < nr; r++)
                    y[(t0 + t) * ldy + o + r] = tern_hq_hsum8(acc + (t * TERN_HQ_R + r) * 8);
        }
    }
    (void)blk;
}

#endif
