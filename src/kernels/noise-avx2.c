/* noise-avx2.c: the Gumbel-max over a run of logits (kernels.h, tern_gumbel_max) with AVX2 +
 * FMA, four ids at a time in double lanes: the reference's hash, uniform and tern_log_det
 * step for step (noise.c), with what AVX2 lacks built from exact pieces: 64-bit
 * products from three 32 x 32-bit ones (mod 2^64, as C's), integers below 2^53 to double
 * through the 2^52 bias, the exponent through 32-bit lanes. So every g has the reference's
 * bits; lanes keep their best in id order and merge by (value, lowest id): EXACT. */
#include <math.h>

#include "kernels/simd-avx2.h"

/* a * b mod 2^64, b given as its halves */
AI __m256i nz_mul(__m256i a, __m256i blo, __m256i bhi)
{
    const __m256i ll = _mm256_mul_epu32(a, blo);
    const __m256i mid =
        _mm256_add_epi64(_mm256_mul_epu32(a, bhi), _mm256_mul_epu32(_mm256_srli_epi64(a, 32), blo));
    return _mm256_add_epi64(ll, _mm256_slli_epi64(mid, 32));
}
#define NZ_HALVES(c)                                                                               \
    _mm256_set1_epi64x((long long)((c)&0xffffffffULL)), _mm256_set1_epi64x((long long)((c) >> 32))

AI __m256i nz_mix(__m256i z)
{
    z = nz_mul(_mm256_xor_si256(z, _mm256_srli_epi64(z, 30)), NZ_HALVES(TERN_NOISE_M1));
    z = nz_mul(_mm256_xor_si256(z, _mm256_srli_epi64(z, 27)), NZ_HALVES(TERN_NOISE_M2));
    return _mm256_xor_si256(z, _mm256_srli_epi64(z, 31));
}

/* an integer below 2^53 as a double, exactly */
AI __m256d nz_u53(__m256i x)
{
    const __m256i bias = _mm256_set1_epi64x(0x4330000000000000LL); /* 2^52 */
    const __m256d two52 = _mm256_set1_pd(0x1p52);
    const __m256d lo =
        _mm256_sub_pd(_mm256_castsi256_pd(_mm256_or_si256(
                          _mm256_and_si256(x, _mm256_set1_epi64x(0xffffffffLL)), bias)),
                      two52);
    const __m256d hi =
        _mm256_sub_pd(_mm256_castsi256_pd(_mm256_or_si256(_mm256_srli_epi64(x, 32), bias)), two52);
    return _mm256_fmadd_pd(hi, _mm256_set1_pd(0x1p32), lo); /* exact: below 2^53 */
}

AI __m256d nz_log(__m256d x) /* tern_log_det, lane for lane */
{
    const __m256i b = _mm256_castpd_si256(x);
    __m256i mb = _mm256_or_si256(_mm256_and_si256(b, _mm256_set1_epi64x(0x000fffffffffffffLL)),
                                 _mm256_set1_epi64x(0x3ff0000000000000LL));
    const __m256i hi = _mm256_cmpgt_epi64(mb, _mm256_set1_epi64x((long long)TERN_LOG_SQRT2_BITS));
    mb = _mm256_sub_epi64(mb, _mm256_and_si256(hi, _mm256_set1_epi64x(0x0010000000000000LL)));
    /* e = (b >> 52) - 1023 + [hi] (hi is -1 where set), small: through 32-bit lanes */
    const __m256i e64 =
        _mm256_sub_epi64(_mm256_sub_epi64(_mm256_srli_epi64(b, 52), _mm256_set1_epi64x(1023)), hi);
    const __m128i e32 = _mm256_castsi256_si128(
        _mm256_permutevar8x32_epi32(e64, _mm256_setr_epi32(0, 2, 4, 6, 0, 0, 0, 0)));
    const __m256d ed = _mm256_cvtepi32_pd(e32);
    const __m256d m = _mm256_castsi256_pd(mb), one = _mm256_set1_pd(1.0);
    const __m256d f = _mm256_sub_pd(m, one);
    const __m256d s = _mm256_div_pd(f, _mm256_add_pd(_mm256_set1_pd(2.0), f));
    const __m256d r = _mm256_add_pd(s, s), z = _mm256_mul_pd(s, s);
    __m256d q;
    TERN_LOG_SERIES(q, z, _mm256_set1_pd, _mm256_fmadd_pd, _mm256_mul_pd);
    return _mm256_fmadd_pd(
        ed, _mm256_set1_pd(TERN_LN2_HI),
        _mm256_fmadd_pd(ed, _mm256_set1_pd(TERN_LN2_LO), _mm256_fmadd_pd(r, q, r)));
}

AI __m256d sel(__m256d mask, __m256d yes, __m256d no)
{
    return _mm256_blendv_pd(no, yes, mask);
}
AI __m256i seli(__m256d mask, __m256i yes, __m256i no)
{
    return _mm256_castpd_si256(
        _mm256_blendv_pd(_mm256_castsi256_pd(no), _mm256_castsi256_pd(yes), mask));
}

void tern_avx2_gumbel_max(const float *v, int64_t n, int64_t id0, double inv_t, uint64_t key,
                          tern_gumbel_run *out)
{
    const __m256d ninf = _mm256_set1_pd(-INFINITY), vt = _mm256_set1_pd(inv_t);
    const bool noise = inv_t > 0.0; /* else greedy: the top only */
    const __m256d sign = _mm256_set1_pd(-0.0);
    const __m256i none = _mm256_set1_epi64x(-1), step = _mm256_set1_epi64x(4);
    const __m256i kk = _mm256_set1_epi64x((long long)key);
    __m256d mx = ninf, best = ninf, top = ninf;
    __m256i bi = none, ti = none, idx = _mm256_setr_epi64x(0, 1, 2, 3);
    /* id * K3 + K4 for the lanes' ids, advanced by 4 * K3 (wrapping, as the reference) */
    __m256i hid = _mm256_add_epi64(
        nz_mul(_mm256_add_epi64(idx, _mm256_set1_epi64x((long long)id0)), NZ_HALVES(TERN_NOISE_K3)),
        _mm256_set1_epi64x((long long)TERN_NOISE_K4));
    const __m256i hstep = _mm256_set1_epi64x((long long)(4 * TERN_NOISE_K3));
    for (int64_t i = 0; i < n; i += 4) {
        const int64_t left = n - i;
        const __m128i lm =
            _mm_cmpgt_epi32(_mm_set1_epi32(left >= 4 ? 4 : (int)left), _mm_setr_epi32(0, 1, 2, 3));
        const __m256d in = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(lm));
        __m256d vd = _mm256_cvtps_pd(_mm_maskload_ps(v + i, lm));
        vd = sel(_mm256_cmp_pd(vd, vd, _CMP_UNORD_Q), ninf, vd);
        /* top: strictly greater, or the lane's first */
        const __m256d tk =
            _mm256_and_pd(in, _mm256_or_pd(_mm256_cmp_pd(vd, top, _CMP_GT_OQ),
                                           _mm256_castsi256_pd(_mm256_cmpeq_epi64(ti, none))));
        top = sel(tk, vd, top);
        ti = seli(tk, idx, ti);
        const __m256d x = _mm256_mul_pd(vd, vt);
        const __m256d ok =
            _mm256_and_pd(noise ? in : _mm256_setzero_pd(), _mm256_cmp_pd(x, ninf, _CMP_GT_OQ));
        if (!_mm256_testz_pd(ok, ok)) {
            mx = sel(ok, _mm256_max_pd(mx, x), mx);
            const __m256i h = nz_mix(_mm256_xor_si256(kk, hid));
            const __m256d u = _mm256_min_pd(
                _mm256_mul_pd(_mm256_add_pd(nz_u53(_mm256_srli_epi64(h, 11)), _mm256_set1_pd(0.5)),
                              _mm256_set1_pd(0x1p-53)),
                _mm256_set1_pd(TERN_NOISE_U_MAX));
            const __m256d g =
                _mm256_add_pd(x, _mm256_xor_pd(nz_log(_mm256_xor_pd(nz_log(u), sign)), sign));
            const __m256d bt = _mm256_and_pd(ok, _mm256_cmp_pd(g, best, _CMP_GT_OQ));
            best = sel(bt, g, best);
            bi = seli(bt, idx, bi);
        }
        idx = _mm256_add_epi64(idx, step);
        hid = _mm256_add_epi64(hid, hstep);
    }
    _Alignas(32) double mxs[4], bs[4], ts[4];
    _Alignas(32) int64_t bis[4], tis[4];
    _mm256_store_pd(mxs, mx);
    _mm256_store_pd(bs, best);
    _mm256_store_pd(ts, top);
    _mm256_store_si256((__m256i *)bis, bi);
    _mm256_store_si256((__m256i *)tis, ti);
    *out = tern_gumbel_lanes(4, mxs, bs, bis, ts, tis);
}

AI __m256d nz_exp(__m256d d) /* tern_exp_det, lane for lane (a NaN lane counts as the floor) */
{
    d = _mm256_max_pd(d, _mm256_set1_pd(TERN_EXP_MIN));
    const __m256d n = _mm256_round_pd(_mm256_mul_pd(d, _mm256_set1_pd(TERN_LOG2E)),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256d r = _mm256_fnmadd_pd(n, _mm256_set1_pd(TERN_LN2_HI), d);
    r = _mm256_fnmadd_pd(n, _mm256_set1_pd(TERN_LN2_LO), r);
    __m256d p;
    TERN_EXP_TAYLOR13(p, r, _mm256_set1_pd, _mm256_fmadd_pd);
    const __m256i b = _mm256_slli_epi64(
        _mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_cvtpd_epi32(n)), _mm256_set1_epi64x(1023)),
        52);
    return _mm256_mul_pd(p, _mm256_castsi256_pd(b));
}

/* Four lanes of a block (lane j: the j-th id of v), those in `lm` (32-bit lanes) present. */
AI void lse_half(const float *v, __m128i lm, __m256d vt, __m256d *m, __m256d *z)
{
    const __m256d ninf = _mm256_set1_pd(-INFINITY);
    __m256d vd = _mm256_cvtps_pd(_mm_maskload_ps(v, lm));
    vd = sel(_mm256_cmp_pd(vd, vd, _CMP_UNORD_Q), ninf, vd);
    const __m256d x = _mm256_mul_pd(vd, vt);
    const __m256d in = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(lm));
    const __m256d ok = _mm256_and_pd(in, _mm256_cmp_pd(x, ninf, _CMP_GT_OQ));
    if (_mm256_testz_pd(ok, ok)) return;
    const __m256d gt = _mm256_and_pd(ok, _mm256_cmp_pd(x, *m, _CMP_GT_OQ));
    const __m256d le = _mm256_andnot_pd(gt, ok);
    const __m256d e = nz_exp(sel(gt, _mm256_sub_pd(*m, x), _mm256_sub_pd(x, *m)));
    const __m256d zg = _mm256_add_pd(_mm256_mul_pd(*z, e), _mm256_set1_pd(1.0));
    *z = sel(gt, zg, sel(le, _mm256_add_pd(*z, e), *z));
    *m = sel(gt, x, *m);
}

AI __m128i lanes4(int lo, int hi) /* 32-bit lanes [lo, hi) of 4 */
{
    const __m128i j = _mm_setr_epi32(0, 1, 2, 3);
    return _mm_and_si128(_mm_cmpgt_epi32(_mm_set1_epi32(hi), j),
                         _mm_cmpgt_epi32(j, _mm_set1_epi32(lo - 1)));
}

/* one block of eight ids: lanes [lo, hi) present */
AI void lse_block(const float *v, int lo, int hi, __m256d vt, __m256d *m, __m256d *z)
{
    if (lo < 4) lse_half(v, lanes4(lo, hi), vt, m, z);
    if (hi > 4) lse_half(v + 4, lanes4(lo - 4, hi - 4), vt, m + 1, z + 1);
}

void tern_avx2_lse_lanes(const float *v, int64_t n, int64_t id0, double inv_t, double *m, double *z)
{
    _Static_assert(TERN_LSE_LANES == 8, "two vectors of lanes");
    const __m256d vt = _mm256_set1_pd(inv_t);
    __m256d mv[2] = {_mm256_loadu_pd(m), _mm256_loadu_pd(m + 4)};
    __m256d zv[2] = {_mm256_loadu_pd(z), _mm256_loadu_pd(z + 4)};
    float head[TERN_LSE_LANES];
    int s0;
    const int64_t i0 = tern_lse_head(v, n, id0, head, &s0);
    if (i0) lse_block(head, s0, s0 + (int)i0, vt, mv, zv);
    int64_t i = i0;
    for (; i < n; i += 8) lse_block(v + i, 0, n - i < 8 ? (int)(n - i) : 8, vt, mv, zv);
    _mm256_storeu_pd(m, mv[0]);
    _mm256_storeu_pd(m + 4, mv[1]);
    _mm256_storeu_pd(z, zv[0]);
    _mm256_storeu_pd(z + 4, zv[1]);
}
