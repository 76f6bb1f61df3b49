/* head-q.h: the LM head over a block-quantized table (Q8_0, Q6_K; kernels.h, tern_gemm_q), one
 * driver for the AVX2 and AVX-512 files: the dequantization is 8-lane AVX2/F16C in both, the
 * FMA tiles take the including file's vector width (8 lanes x 3 tokens, 16 lanes x 6).
 *
 * For each group of 4 rows and block of up to 64 tokens, the table is dequantized in chunks of
 * up to 256 columns into a stack buffer (exactly ggml's values: every product is exact in
 * float), and each chunk is applied to tiles of 4 rows x HQ_TT tokens of fp32
 * accumulators, kept in a stack buffer between chunks. Lane j of a row's accumulator sums the
 * columns i % lanes == j in increasing order with one fma each, then the lanes are added in a
 * fixed tree: a row's logit does not depend on the row range, the token count or the chunking,
 * so any split of rows (threads, ranks) gives the same bits. Each weight is dequantized once
 * per 64 tokens, not once per token tile. Nothing is allocated (at most 20 KiB of stack).
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

/* The tile and driver are instantiated by the including file, which defines the vector type
 * first: HQ_V (and its integer type HQ_V_I), HQ_LANES (8 or 16), HQ_LOAD, HQ_STORE, HQ_FMA
 * (fmadd), HQ_SET0 and HQ_TT (tokens per tile, 3 or 6). Lane j of a row sums the columns i %
 * HQ_LANES == j in order; the lanes are added by halving (lane i + lane i + L/2, repeated), so the
 * bits depend on the width only. */
#if !defined(HQ_V) || !defined(HQ_LANES) || !defined(HQ_LOAD) || !defined(HQ_STORE) ||             \
    !defined(HQ_FMA) || !defined(HQ_TT)
#error "head-q.h: define HQ_V, HQ_V_I, HQ_LANES, HQ_LOAD, HQ_STORE, HQ_FMA, HQ_SET0, HQ_TT first"
#endif

/* rows per group for one token: as many as the registers hold (32 zmm, 16 ymm) */
#define TERN_HQ_R1 (HQ_LANES == 16 ? 8 : 4)

static inline __attribute__((always_inline)) void tern_hq_tile(const float *wbuf, int64_t n,
                                                               const float *x, int64_t k,
                                                               int64_t c0, const int T,
                                                               float *acc /* [T][R][L] */)
{
    HQ_V a[TERN_HQ_R][HQ_TT];
#pragma GCC unroll 4
    for (int r = 0; r < TERN_HQ_R; r++)
#pragma GCC unroll 6
        for (int t = 0; t < T; t++) a[r][t] = HQ_LOAD(acc + (t * TERN_HQ_R + r) * HQ_LANES);
    for (int64_t i = 0; i < n; i += HQ_LANES) {
        HQ_V xv[HQ_TT];
#pragma GCC unroll 6
        for (int t = 0; t < T; t++) xv[t] = HQ_LOAD(x + t * k + c0 + i);
#pragma GCC unroll 4
        for (int r = 0; r < TERN_HQ_R; r++) {
            HQ_V w = HQ_LOAD(wbuf + r * TERN_HQ_C + i);
#pragma GCC unroll 6
            for (int t = 0; t < T; t++) a[r][t] = HQ_FMA(w, xv[t], a[r][t]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < TERN_HQ_R; r++)
#pragma GCC unroll 6
        for (int t = 0; t < T; t++) HQ_STORE(acc + (t * TERN_HQ_R + r) * HQ_LANES, a[r][t]);
}

static inline float tern_hq_hsum(const float *v)
{
    float s[HQ_LANES];
    memcpy(s, v, sizeof s);
    for (int h = HQ_LANES / 2; h >= 1; h /= 2)
        for (int i = 0; i < h; i++) s[i] = s[i] + s[i + h];
    return s[0];
}

#if HQ_LANES == 16
#define HQ_CVT8(p) _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(p)))
#define HQ_CVTU8(p) _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(p)))
#define HQ_SET1I _mm512_set1_epi32
#define HQ_AND _mm512_and_si512
#define HQ_OR _mm512_or_si512
#define HQ_SRL _mm512_srl_epi32
#define HQ_SLLI _mm512_slli_epi32
#define HQ_SUB _mm512_sub_epi32
#define HQ_TOPS _mm512_cvtepi32_ps
#define HQ_MUL _mm512_mul_ps
#define HQ_SET1 _mm512_set1_ps
#else
#define HQ_CVT8(p) _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(p)))
#define HQ_CVTU8(p) _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(p)))
#define HQ_SET1I _mm256_set1_epi32
#define HQ_AND _mm256_and_si256
#define HQ_OR _mm256_or_si256
#define HQ_SRL _mm256_srl_epi32
#define HQ_SLLI _mm256_slli_epi32
#define HQ_SUB _mm256_sub_epi32
#define HQ_TOPS _mm256_cvtepi32_ps
#define HQ_MUL _mm256_mul_ps
#define HQ_SET1 _mm256_set1_ps
#endif

/* One token: rows [o, o + nr) dequantized in registers, no buffers; each lane's fma sequence
 * is the buffered path's, so the bits are the same (a token alone = the token in a batch). */
static inline void tern_hq_one(tern_ggml_type type, const uint8_t *w, int64_t rb, int64_t k,
                               const float *x, float *y, int64_t o, int nr)
{
    HQ_V a[TERN_HQ_R1];
    const uint8_t *row[TERN_HQ_R1];
    float d[TERN_HQ_R1];
#pragma GCC unroll 8
    for (int r = 0; r < TERN_HQ_R1; r++) {
        a[r] = HQ_SET0();
        row[r] = w + (o + (r < nr ? r : 0)) * rb; /* past o1: row o again, not stored */
    }
    /* block by block, each scale converted once: the values are tern_hq_dq's (d * q, or
     * (d * sc) * q), in the same column order */
    if (type == TERN_TYPE_Q8_0) {
        for (int64_t i = 0; i < k; i += 32) {
            const int64_t off = i / 32 * TERN_Q8_0_BYTES;
#pragma GCC unroll 8
            for (int r = 0; r < TERN_HQ_R1; r++) d[r] = tern_hq_f16(row[r] + off);
#pragma GCC unroll 4
            for (int s = 0; s < 32 / HQ_LANES; s++) {
                const HQ_V xv = HQ_LOAD(x + i + s * HQ_LANES);
#pragma GCC unroll 8
                for (int r = 0; r < TERN_HQ_R1; r++) {
                    HQ_V q = HQ_TOPS(HQ_CVT8(row[r] + off + 2 + s * HQ_LANES));
                    a[r] = HQ_FMA(HQ_MUL(HQ_SET1(d[r]), q), xv, a[r]);
                }
            }
        }
    } else {
        for (int64_t i = 0; i < k; i += 256) {
            const int64_t off = i / 256 * TERN_Q6_K_BYTES;
#pragma GCC unroll 8
            for (int r = 0; r < TERN_HQ_R1; r++) d[r] = tern_hq_f16(row[r] + off + TERN_Q6_K_D);
#pragma GCC unroll 16
            for (int j = 0; j < 16; j++) {
                const int h = j / 8, g = (j % 8) / 2;
#pragma GCC unroll 2
                for (int s = 0; s < 16 / HQ_LANES; s++) {
                    const int l = (j % 2) * 16 + s * HQ_LANES;
                    const HQ_V xv = HQ_LOAD(x + i + 16 * j + s * HQ_LANES);
#pragma GCC unroll 8
                    for (int r = 0; r < TERN_HQ_R1; r++) {
                        const uint8_t *bb = row[r] + off;
                        HQ_V_I lo = HQ_CVTU8(bb + 64 * h + 32 * (g & 1) + l);
                        HQ_V_I hi = HQ_CVTU8(bb + TERN_Q6_K_QH + 32 * h + l);
                        lo = HQ_AND(HQ_SRL(lo, _mm_cvtsi32_si128(4 * (g >> 1))), HQ_SET1I(15));
                        hi = HQ_SLLI(HQ_AND(HQ_SRL(hi, _mm_cvtsi32_si128(2 * g)), HQ_SET1I(3)), 4);
                        HQ_V q = HQ_TOPS(HQ_SUB(HQ_OR(lo, hi), HQ_SET1I(32)));
                        const float ds = d[r] * (float)(int8_t)bb[TERN_Q6_K_SC + j];
                        a[r] = HQ_FMA(HQ_MUL(HQ_SET1(ds), q), xv, a[r]);
                    }
                }
            }
        }
    }
    float v[HQ_LANES];
    for (int r = 0; r < nr; r++) {
        HQ_STORE(v, a[r]);
        y[o + r] = tern_hq_hsum(v);
    }
}

#define TERN_HQ_TAIL(TV)                                                                           \
    case TV:                                                                                       \
        tern_hq_tile(wbuf, n, xt + t * k, k, c0, TV, acc + t * TERN_HQ_R * HQ_LANES);              \
        break

static void tern_hq_gemm(tern_ggml_type type, const void *w, int64_t k, const float *x,
                         int64_t n_tok, float *y, int64_t ldy, int64_t o0, int64_t o1)
{
    const int64_t blk = type == TERN_TYPE_Q8_0 ? 32 : 256;
    const int64_t rb = k / blk * (type == TERN_TYPE_Q8_0 ? TERN_Q8_0_BYTES : TERN_Q6_K_BYTES);
    float wbuf[TERN_HQ_R * TERN_HQ_C] __attribute__((aligned(64)));
    float acc[TERN_HQ_T * TERN_HQ_R * HQ_LANES] __attribute__((aligned(64)));
    if (n_tok == 1) {
        for (int64_t o = o0; o < o1; o += TERN_HQ_R1)
            tern_hq_one(type, w, rb, k, x, y, o, o1 - o < TERN_HQ_R1 ? (int)(o1 - o) : TERN_HQ_R1);
        return;
    }
    for (int64_t o = o0; o < o1; o += TERN_HQ_R) {
        const int nr = o1 - o < TERN_HQ_R ? (int)(o1 - o) : TERN_HQ_R;
        if (nr < TERN_HQ_R) memset(wbuf, 0, sizeof wbuf); /* rows past o1: zeros, not stored */
        for (int64_t t0 = 0; t0 < n_tok; t0 += TERN_HQ_T) {
            const int64_t nt = n_tok - t0 < TERN_HQ_T ? n_tok - t0 : TERN_HQ_T;
            memset(acc, 0, (size_t)nt * TERN_HQ_R * HQ_LANES * sizeof(float));
            for (int64_t c0 = 0; c0 < k; c0 += TERN_HQ_C) {
                /* a multiple of the block (32), so of either lane width */
                const int64_t n = k - c0 < TERN_HQ_C ? k - c0 : TERN_HQ_C;
                for (int r = 0; r < nr; r++)
                    tern_hq_dequant(type, (const uint8_t *)w + (o + r) * rb, c0, n,
                                    wbuf + r * TERN_HQ_C);
                const float *xt = x + t0 * k;
                int64_t t = 0;
                for (; t + HQ_TT <= nt; t += HQ_TT)
                    tern_hq_tile(wbuf, n, xt + t * k, k, c0, HQ_TT, acc + t * TERN_HQ_R * HQ_LANES);
                switch (nt - t) {
                case 0:
                    break;
#if HQ_TT > 3
                    TERN_HQ_TAIL(5);
                    TERN_HQ_TAIL(4);
                    TERN_HQ_TAIL(3);
#endif
                    TERN_HQ_TAIL(2);
                    TERN_HQ_TAIL(1);
                default:
                    TERN_ASSERT(0);
                }
            }
            for (int64_t t = 0; t < nt; t++)
                for (int r = 0; r < nr; r++)
                    y[(t0 + t) * ldy + o + r] = tern_hq_hsum(acc + (t * TERN_HQ_R + r) * HQ_LANES);
        }
    }
}

#undef TERN_HQ_TAIL
#undef TERN_HQ_R1
#undef HQ_CVT8
#undef HQ_CVTU8
#undef HQ_SET1I
#undef HQ_AND
#undef HQ_OR
#undef HQ_SRL
#undef HQ_SLLI
#undef HQ_SUB
#undef HQ_TOPS
#undef HQ_MUL
#undef HQ_SET1
#endif
