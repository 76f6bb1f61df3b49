/* head-f16.h: the F16 LM head (kernels.h, tern_gemm_f16), one driver for the AVX2 and AVX-512
 * files: tiles of R rows x T tokens of fp32 accumulators (8 rows for one token, else 4; up to
 * HF_TT tokens), rows in blocks of 64 that stay in L1/L2 while every token tile passes over
 * them. Lane j of an accumulator sums the columns i % HF_LANES == j in increasing order with one
 * fma each, then HF_HSUM adds the lanes in the file's fixed order: a row's logit does not depend
 * on the row range or the token count.
 *
 * The including file defines: HF_V (the float vector), HF_LANES, HF_ZERO(), HF_FMA(a, b, c)
 * (a * b + c), HF_LOADX(p) / HF_LOADX_TAIL(p, left) (activations: HF_LANES floats, or the
 * last left < HF_LANES with zeros after), HF_LOADW(p) / HF_LOADW_TAIL(p, left) (F16 weights
 * as floats, the same), HF_HSUM(v) and HF_TT.
 */
#ifndef TERN_KERNELS_HEAD_F16_H
#define TERN_KERNELS_HEAD_F16_H

#if !defined(HF_V) || !defined(HF_LANES) || !defined(HF_ZERO) || !defined(HF_FMA) ||               \
    !defined(HF_LOADX) || !defined(HF_LOADX_TAIL) || !defined(HF_LOADW) ||                         \
    !defined(HF_LOADW_TAIL) || !defined(HF_HSUM) || !defined(HF_TT) || HF_TT > 6
#error "head-f16.h: define the HF_ vector operations first"
#endif

#include "kernels/kernels-internal.h"

static inline __attribute__((always_inline)) void tern_hf_tile(const uint16_t *w, int64_t o,
                                                               const int R, const float *x,
                                                               int64_t t0, const int T, int64_t k,
                                                               float *y, int64_t ldy)
{
    HF_V acc[8][HF_TT];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 6
        for (int t = 0; t < T; t++) acc[r][t] = HF_ZERO();
    const float *xt = x + t0 * k;
    int64_t i = 0;
    for (; i + HF_LANES <= k; i += HF_LANES) {
        HF_V xv[HF_TT];
#pragma GCC unroll 6
        for (int t = 0; t < T; t++) xv[t] = HF_LOADX(xt + t * k + i);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            const HF_V wv = HF_LOADW(w + (o + r) * k + i);
#pragma GCC unroll 6
            for (int t = 0; t < T; t++) acc[r][t] = HF_FMA(wv, xv[t], acc[r][t]);
        }
    }
    if (i < k) {
        HF_V xv[HF_TT];
#pragma GCC unroll 6
        for (int t = 0; t < T; t++) xv[t] = HF_LOADX_TAIL(xt + t * k + i, k - i);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            const HF_V wv = HF_LOADW_TAIL(w + (o + r) * k + i, k - i);
#pragma GCC unroll 6
            for (int t = 0; t < T; t++) acc[r][t] = HF_FMA(wv, xv[t], acc[r][t]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 6
        for (int t = 0; t < T; t++) y[(t0 + t) * ldy + o + r] = HF_HSUM(acc[r][t]);
}

#define TERN_HF_CASE(TV, RM)                                                                       \
    case TV: {                                                                                     \
        int64_t o = o0;                                                                            \
        for (; o + (RM) <= o1; o += (RM)) tern_hf_tile(w, o, (RM), x, t0, (TV), k, y, ldy);        \
        for (; o < o1; o++) tern_hf_tile(w, o, 1, x, t0, (TV), k, y, ldy);                         \
    } break

static void tern_hf_rows(const uint16_t *w, const float *x, int64_t n_tok, int64_t k, float *y,
                         int64_t ldy, int64_t o0, int64_t o1)
{
    for (int64_t t0 = 0; t0 < n_tok; t0 += HF_TT) {
        const int64_t tb = n_tok - t0 < HF_TT ? n_tok - t0 : HF_TT;
        switch (tb) {
            TERN_HF_CASE(1, 8);
            TERN_HF_CASE(2, 4);
            TERN_HF_CASE(3, 4);
#if HF_TT > 3
            TERN_HF_CASE(4, 4);
            TERN_HF_CASE(5, 4);
            TERN_HF_CASE(6, 4);
#endif
        default:
            TERN_ASSERT(0);
        }
    }
}

static void tern_hf_gemm(const uint16_t *w, const float *x, int64_t n_tok, int64_t k, float *y,
                         int64_t ldy, int64_t o0, int64_t o1)
{
    for (int64_t o = o0; o < o1; o += 64)
        tern_hf_rows(w, x, n_tok, k, y, ldy, o, o + 64 < o1 ? o + 64 : o1);
}

#undef TERN_HF_CASE
#endif
