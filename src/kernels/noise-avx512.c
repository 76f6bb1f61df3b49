/* noise-avx512.c: the Gumbel-max over a run of logits (kernels.h, tern_gumbel_max) with
 * AVX-512 (DQ: 64-bit multiplies and conversions), eight ids at a time in double lanes: the
 * reference's hash, uniform and tern_log_det step for step (the same correctly rounded
 * operations), so every g has the reference's bits; each lane keeps its best in id order
 * (strictly greater wins) and the lanes merge by (value, lowest id): EXACT. About 2 ns an id
 * against the reference's 15-20 (its two calls of log). */
#include <math.h>

#include "kernels/simd-avx512.h"

AI __m512i nz_mix(__m512i z)
{
    z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 30)),
                           _mm512_set1_epi64((long long)TERN_NOISE_M1));
    z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 27)),
                           _mm512_set1_epi64((long long)TERN_NOISE_M2));
    return _mm512_xor_si512(z, _mm512_srli_epi64(z, 31));
}

AI __m512d nz_log(__m512d x) /* tern_log_det, lane for lane */
{
    const __m512i b = _mm512_castpd_si512(x);
    __m512i e = _mm512_sub_epi64(_mm512_srli_epi64(b, 52), _mm512_set1_epi64(1023));
    __m512i mb = _mm512_or_si512(_mm512_and_si512(b, _mm512_set1_epi64(0x000fffffffffffffLL)),
                                 _mm512_set1_epi64(0x3ff0000000000000LL));
    const __mmask8 hi =
        _mm512_cmpgt_epu64_mask(mb, _mm512_set1_epi64((long long)TERN_LOG_SQRT2_BITS));
    mb = _mm512_mask_sub_epi64(mb, hi, mb, _mm512_set1_epi64(0x0010000000000000LL));
    e = _mm512_mask_add_epi64(e, hi, e, _mm512_set1_epi64(1));
    const __m512d one = _mm512_set1_pd(1.0), m = _mm512_castsi512_pd(mb);
    const __m512d f = _mm512_sub_pd(m, one);
    const __m512d s = _mm512_div_pd(f, _mm512_add_pd(_mm512_set1_pd(2.0), f));
    const __m512d r = _mm512_add_pd(s, s), z = _mm512_mul_pd(s, s);
    __m512d q;
    TERN_LOG_SERIES(q, z, _mm512_set1_pd, _mm512_fmadd_pd, _mm512_mul_pd);
    const __m512d ed = _mm512_cvtepi64_pd(e);
    return _mm512_fmadd_pd(
        ed, _mm512_set1_pd(TERN_LN2_HI),
        _mm512_fmadd_pd(ed, _mm512_set1_pd(TERN_LN2_LO), _mm512_fmadd_pd(r, q, r)));
}

void tern_avx512_gumbel_max(const float *v, int64_t n, int64_t id0, double inv_t, uint64_t key,
                            tern_gumbel_run *out)
{
    const __m512d ninf = _mm512_set1_pd(-INFINITY), vt = _mm512_set1_pd(inv_t);
    const bool noise = inv_t > 0.0; /* else greedy: the top only */
    const __m512i none = _mm512_set1_epi64(-1), step = _mm512_set1_epi64(8);
    const __m512i k3 = _mm512_set1_epi64((long long)TERN_NOISE_K3);
    const __m512i kk = _mm512_set1_epi64((long long)key);
    __m512d mx = ninf, best = ninf, top = ninf;
    __m512i bi = none, ti = none, idx = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
    /* id * K3 + K4 for the lanes' ids, advanced by 8 * K3 (wrapping, as the reference) */
    __m512i hid = _mm512_add_epi64(
        _mm512_mullo_epi64(_mm512_add_epi64(idx, _mm512_set1_epi64((long long)id0)), k3),
        _mm512_set1_epi64((long long)TERN_NOISE_K4));
    const __m512i hstep = _mm512_mullo_epi64(step, k3);
    for (int64_t i = 0; i < n; i += 8) {
        const __mmask8 in = tail8(n - i);
        __m512d vd = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(in, v + i));
        vd = _mm512_mask_mov_pd(vd, _mm512_cmp_pd_mask(vd, vd, _CMP_UNORD_Q), ninf);
        /* top: strictly greater, or the lane's first */
        const __mmask8 tk = _mm512_mask_cmp_pd_mask(in, vd, top, _CMP_GT_OQ) |
                            (in & _mm512_cmpeq_epi64_mask(ti, none));
        top = _mm512_mask_mov_pd(top, tk, vd);
        ti = _mm512_mask_mov_epi64(ti, tk, idx);
        const __m512d x = _mm512_mul_pd(vd, vt);
        const __mmask8 ok = _mm512_mask_cmp_pd_mask(noise ? in : 0, x, ninf, _CMP_GT_OQ);
        if (ok) {
            mx = _mm512_mask_max_pd(mx, ok, mx, x);
            const __m512i h = nz_mix(_mm512_xor_si512(kk, hid));
            const __m512d u = _mm512_min_pd(
                _mm512_mul_pd(_mm512_add_pd(_mm512_cvtepu64_pd(_mm512_srli_epi64(h, 11)),
                                            _mm512_set1_pd(0.5)),
                              _mm512_set1_pd(0x1p-53)),
                _mm512_set1_pd(TERN_NOISE_U_MAX));
            /* negation flips the sign bit, as the reference's unary minus */
            const __m512d sign = _mm512_set1_pd(-0.0);
            const __m512d g =
                _mm512_add_pd(x, _mm512_xor_pd(nz_log(_mm512_xor_pd(nz_log(u), sign)), sign));
            const __mmask8 bt = _mm512_mask_cmp_pd_mask(ok, g, best, _CMP_GT_OQ);
            best = _mm512_mask_mov_pd(best, bt, g);
            bi = _mm512_mask_mov_epi64(bi, bt, idx);
        }
        idx = _mm512_add_epi64(idx, step);
        hid = _mm512_add_epi64(hid, hstep);
    }
    _Alignas(64) double mxs[8], bs[8], ts[8];
    _Alignas(64) int64_t bis[8], tis[8];
    _mm512_store_pd(mxs, mx);
    _mm512_store_pd(bs, best);
    _mm512_store_pd(ts, top);
    _mm512_store_si512(bis, bi);
    _mm512_store_si512(tis, ti);
    *out = tern_gumbel_lanes(8, mxs, bs, bis, ts, tis);
}

AI __m512d nz_exp(__m512d d) /* tern_exp_det, lane for lane (a NaN lane counts as the floor) */
{
    d = _mm512_max_pd(d, _mm512_set1_pd(TERN_EXP_MIN));
    const __m512d n = _mm512_roundscale_pd(_mm512_mul_pd(d, _mm512_set1_pd(TERN_LOG2E)),
                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512d r = _mm512_fnmadd_pd(n, _mm512_set1_pd(TERN_LN2_HI), d);
    r = _mm512_fnmadd_pd(n, _mm512_set1_pd(TERN_LN2_LO), r);
    __m512d p;
    TERN_EXP_TAYLOR13(p, r, _mm512_set1_pd, _mm512_fmadd_pd);
    const __m512i b =
        _mm512_slli_epi64(_mm512_add_epi64(_mm512_cvtpd_epi64(n), _mm512_set1_epi64(1023)), 52);
    return _mm512_mul_pd(p, _mm512_castsi512_pd(b));
}

/* One block of the lanes' ids (lane j: the block's j-th id), the lanes `in` present. */
AI void lse_block(const float *v, __mmask8 in, __m512d vt, __m512d *m, __m512d *z)
{
    const __m512d ninf = _mm512_set1_pd(-INFINITY);
    __m512d vd = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(in, v));
    vd = _mm512_mask_mov_pd(vd, _mm512_cmp_pd_mask(vd, vd, _CMP_UNORD_Q), ninf);
    const __m512d x = _mm512_mul_pd(vd, vt);
    const __mmask8 ok = _mm512_mask_cmp_pd_mask(in, x, ninf, _CMP_GT_OQ);
    if (!ok) return;
    const __mmask8 gt = _mm512_mask_cmp_pd_mask(ok, x, *m, _CMP_GT_OQ), le = ok & ~gt;
    const __m512d e = nz_exp(_mm512_mask_sub_pd(_mm512_sub_pd(x, *m), gt, *m, x));
    const __m512d zg = _mm512_add_pd(_mm512_mul_pd(*z, e), _mm512_set1_pd(1.0));
    *z = _mm512_mask_mov_pd(_mm512_mask_add_pd(*z, le, *z, e), gt, zg);
    *m = _mm512_mask_mov_pd(*m, gt, x);
}

void tern_avx512_lse_lanes(const float *v, int64_t n, int64_t id0, double inv_t, double *m,
                           double *z)
{
    _Static_assert(TERN_LSE_LANES == 8, "one vector of lanes");
    const __m512d vt = _mm512_set1_pd(inv_t);
    __m512d mv = _mm512_loadu_pd(m), zv = _mm512_loadu_pd(z);
    float head[TERN_LSE_LANES];
    int s0;
    const int64_t i0 = tern_lse_head(v, n, id0, head, &s0);
    if (i0) lse_block(head, (__mmask8)(((1u << i0) - 1) << s0), vt, &mv, &zv);
    int64_t i = i0;
    for (; i < n; i += 8) lse_block(v + i, tail8(n - i), vt, &mv, &zv);
    _mm512_storeu_pd(m, mv);
    _mm512_storeu_pd(z, zv);
}
