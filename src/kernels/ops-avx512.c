/* ops-avx512.c: AVX-512 float kernels and the avx512 entry table.
 *
 * EXACT kernels (rmsnorm, rope, relu2_mul, axpy, attn_mix, f16 conversion) repeat the
 * reference's operations lane by lane in the reference's order, with no fused multiply-add
 * where the reference rounds twice (fma(x, x, acc) in double is fine: x*x is exact there).
 * Softmax, dot and attention scores compute in double as the reference does (equal to it but
 * for ~1e-16 ties, kernels.h); the F16/int8 GEMMs keep fp32 lane sums with fma and meet the
 * bounds stated in kernels.h. Row-blocked GEMMs read each weight row once per call
 * and apply it to blocks of up to six tokens.
 */
#include <float.h>
#include <math.h>

#include "kernels/simd-avx512.h"

/* R consecutive rows of n (R a constant after inlining): lane j of row r's acc holds the
 * reference's l[j] (elements i with i % 8 == j, in order), v*v exact in double (an fma is the
 * same as mul then add). One row's chain of fmas is latency-bound (8 elements per fma latency),
 * so several rows side by side fill the FMA ports; each row's bits are the same. */
#define RMS_ROWS 4
AI void rms_rows(const float *x, const int R, int64_t n, const float *w, float eps, float *y)
{
    __m512d acc[RMS_ROWS];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_pd();
    for (int64_t i = 0; i < n; i += 8) {
        const __mmask8 m = tail8(n - i);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const float *p = x + r * n + i;
            __m512d v =
                _mm512_cvtps_pd(n - i >= 8 ? _mm256_loadu_ps(p) : _mm256_maskz_loadu_ps(m, p));
            acc[r] = _mm512_fmadd_pd(v, v, acc[r]);
        }
    }
    for (int r = 0; r < R; r++) {
        __m256d t =
            _mm256_add_pd(_mm512_castpd512_pd256(acc[r]), _mm512_extractf64x4_pd(acc[r], 1));
        __m128d u = _mm_add_pd(_mm256_castpd256_pd128(t), _mm256_extractf128_pd(t, 1));
        double ss = _mm_cvtsd_f64(u) + _mm_cvtsd_f64(_mm_unpackhi_pd(u, u));
        float mean = (float)(ss / (double)n);
        const __m512 scale = _mm512_set1_ps(1.0f / sqrtf(mean + eps));
        const float *xr = x + r * n;
        float *yr = y + r * n;
        for (int64_t i = 0; i < n; i += 16) {
            __m512 v = _mm512_mul_ps(load_n(xr + i, n - i), scale);
            store_n(yr + i, _mm512_mul_ps(v, load_n(w + i, n - i)), n - i);
        }
    }
}

static void rmsnorm(const float *x, const float *w, int64_t n, float eps, float *y)
{
    rms_rows(x, 1, n, w, eps, y);
}

static void rmsnorm_rows(const float *x, int64_t n_rows, int64_t n, const float *w, float eps,
                         float *y)
{
    int64_t r = 0;
    for (; r + RMS_ROWS <= n_rows; r += RMS_ROWS)
        rms_rows(x + r * n, RMS_ROWS, n, w, eps, y + r * n);
    for (; r < n_rows; r++) rms_rows(x + r * n, 1, n, w, eps, y + r * n);
}
#undef RMS_ROWS

static void rope_neox(float *x, int64_t n_heads, int64_t head_dim, const float *c, const float *s)
{
    const int64_t half = head_dim / 2;
    for (int64_t h = 0; h < n_heads; h++) {
        float *z = x + h * head_dim;
        for (int64_t j = 0; j < half; j += 16) {
            const int64_t left = half - j;
            __m512 a = load_n(z + j, left), b = load_n(z + half + j, left);
            __m512 cv = load_n(c + j, left), sv = load_n(s + j, left);
            __m512 r0 = _mm512_sub_ps(_mm512_mul_ps(a, cv), _mm512_mul_ps(b, sv));
            __m512 r1 = _mm512_add_ps(_mm512_mul_ps(a, sv), _mm512_mul_ps(b, cv));
            store_n(z + j, r0, left);
            store_n(z + half + j, r1, left);
        }
    }
}

/* exp(x) in double for x <= 0: n = round(x log2 e), r = x - n ln2 (ln2 in two parts, exact
 * for |n| < 2^11), Taylor series to r^13 (truncation < 2e-16 on |r| <= ln2/2), times 2^n.
 * A few double ulps from exp(x), so rounded to float it equals the reference
 * (float)exp((double)x) unless exp(x) lies within ~1e-16 (relative) of a float rounding
 * boundary. Below -110 the float result is 0 either way (exp(-110) < 2^-158). */
#define SET(v) _mm512_set1_pd(v)
#define FMA(a, b, c) _mm512_fmadd_pd(a, b, c)
AI __m512d exp_pd(__m512d x)
{
    x = _mm512_max_pd(x, SET(-110.0));
    __m512d n = _mm512_roundscale_pd(_mm512_mul_pd(x, SET(TERN_LOG2E)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512d r = _mm512_fnmadd_pd(n, SET(TERN_LN2_HI), x);
    r = _mm512_fnmadd_pd(n, SET(TERN_LN2_LO), r);
    __m512d p;
    TERN_EXP_TAYLOR13(p, r, SET, FMA);
    return _mm512_scalef_pd(p, n);
}
#undef SET
#undef FMA

AI __m512d lo_pd(__m512 v)
{
    return _mm512_cvtps_pd(_mm512_castps512_ps256(v));
}
AI __m512d hi_pd(__m512 v)
{
    return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

/* the reference's operations: x - m in float, exp in double rounded to float, the sum of the
 * rounded values in double, one float reciprocal, float products */
static void softmax(float *x, int64_t n)
{
    __m512 mv = _mm512_set1_ps(-INFINITY);
    for (int64_t i = 0; i < n; i += 16)
        mv = _mm512_mask_max_ps(mv, tail16(n - i), load_n(x + i, n - i), mv);
    const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mv));
    __m512d sum = _mm512_setzero_pd();
    const __m256 m8 = _mm512_castps512_ps256(m), tiny8 = _mm256_set1_ps(FLT_MIN);
    for (int64_t i = 0; i < n; i += 8) {
        /* full rows of 8 unmasked: a masked store does not forward to the loads after it */
        const bool full = n - i >= 8;
        const __mmask8 k = tail8(n - i);
        __m256 d = full ? _mm256_loadu_ps(x + i) : _mm256_maskz_loadu_ps(k, x + i);
        __m256 e = _mm512_cvtpd_ps(exp_pd(_mm512_cvtps_pd(_mm256_sub_ps(d, m8))));
        e = _mm256_and_ps(e, _mm256_cmp_ps(e, tiny8, _CMP_GE_OQ));
        if (full)
            _mm256_storeu_ps(x + i, e);
        else
            _mm256_mask_storeu_ps(x + i, k, e);
        sum = _mm512_mask_add_pd(sum, k, sum, _mm512_cvtps_pd(e));
    }
    const __m512 inv = _mm512_set1_ps((float)(1.0 / _mm512_reduce_add_pd(sum)));
    for (int64_t i = 0; i < n; i += 16) {
        __m512 p = _mm512_mul_ps(load_n(x + i, n - i), inv);
        p = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(p, _mm512_set1_ps(FLT_MIN), _CMP_GE_OQ), p);
        store_n(x + i, p, n - i);
    }
}

static void relu2_mul(const float *g, const float *u, int64_t n, float *m)
{
    const __m512 zero = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        __m512 r = _mm512_max_ps(load_n(g + i, n - i), zero); /* NaN -> 0 as the ref */
        store_n(m + i, _mm512_mul_ps(_mm512_mul_ps(r, r), load_n(u + i, n - i)), n - i);
    }
}

/* dot products as the reference: products exact in double, sums in double (8 lanes, then a
 * tree: a different order, so equal to the reference after rounding to float unless the
 * double sum lies within ~1e-16 of a float rounding boundary) */
static float dot(const float *a, const float *b, int64_t n)
{
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    for (int64_t i = 0; i < n; i += 16) {
        __m512 av = load_n(a + i, n - i), bv = load_n(b + i, n - i);
        s0 = _mm512_fmadd_pd(lo_pd(av), lo_pd(bv), s0);
        s1 = _mm512_fmadd_pd(hi_pd(av), hi_pd(bv), s1);
    }
    return (float)_mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
}

/* ---- attention over several query rows (attn-rows.h): 8 double lanes, 16 float lanes ---- */

/* n <= 16 elements of a K/V row as floats, zeros after (exact conversions) */
AI __m512 ar_loadv(tern_attn_elem e, const void *p, int64_t n)
{
    if (e == TERN_ATTN_F16) return load_nh(p, n);
    if (e == TERN_ATTN_Q8)
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
            n >= 16 ? _mm_loadu_si128((const __m128i *)p) : _mm_maskz_loadu_epi8(tail16(n), p)));
    return load_n(p, n);
}
AI void ar_cvt_row(tern_attn_elem e, const void *p, int64_t d, double *out)
{
    const size_t esz = tern_attn_elem_bytes(e);
    for (int64_t i = 0; i < d; i += 16) {
        const __m512 f = ar_loadv(e, (const uint8_t *)p + (size_t)i * esz, d - i);
        store_nd(out + i, lo_pd(f), d - i);
        if (d - i > 8) store_nd(out + i + 8, hi_pd(f), d - i - 8);
    }
}
/* the 8x8 doubles r[0..7] transposed in place: r[i][l] becomes r[l][i] */
AI void tr8x8_pd(__m512d r[8])
{
    __m512d t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm512_unpacklo_pd(r[i], r[i + 1]); /* r_i0 r_(i+1)0 r_i2 r_(i+1)2 ... */
        t[i + 1] = _mm512_unpackhi_pd(r[i], r[i + 1]);
    }
    const __m512i lo = _mm512_set_epi64(13, 12, 5, 4, 9, 8, 1, 0);
    const __m512i hi = _mm512_set_epi64(15, 14, 7, 6, 11, 10, 3, 2);
    for (int i = 0; i < 8; i += 4)
        for (int k = 0; k < 2; k++) {
            u[i + k] = _mm512_permutex2var_pd(t[i + k], lo, t[i + 2 + k]);
            u[i + 2 + k] = _mm512_permutex2var_pd(t[i + k], hi, t[i + 2 + k]);
        }
    /* u[0]: rows 0-3 of columns 0 and 4; u[1]: 1, 5; u[2]: 2, 6; u[3]: 3, 7 (u[4..7]: rows 4-7) */
    for (int k = 0; k < 4; k++) {
        r[k] = _mm512_shuffle_f64x2(u[k], u[4 + k], 0x44);
        r[4 + k] = _mm512_shuffle_f64x2(u[k], u[4 + k], 0xee);
    }
}

/* rows r0 .. r0+7 of q as doubles, row in the lane (zeros for rows from P on) */
AI void ar_qt_group(const float *const *q, int r0, int P, int64_t d, double *dst)
{
    for (int64_t i = 0; i < d; i += 8) {
        const __mmask8 k = tail8(d - i);
        __m512d r[8];
        for (int l = 0; l < 8; l++)
            r[l] = r0 + l < P ? _mm512_cvtps_pd(_mm256_maskz_loadu_ps(k, q[r0 + l] + i))
                              : _mm512_setzero_pd();
        tr8x8_pd(r);
        for (int c = 0; c < 8 && c < d - i; c++) _mm512_store_pd(dst + (i + c) * 8, r[c]);
    }
}

/* one row group's scores: row l's nk keys (float)sum [* ks] * scale, as the reference */
AI void ar_store_scores(const __m512d acc[8], int nk, const float *ksv, float scale, float *out,
                        int64_t ldo, int rows)
{
    __m512d r[8];
    for (int kk = 0; kk < 8; kk++) r[kk] = acc[kk];
    tr8x8_pd(r);
    const __mmask8 k = tail8(nk);
    const __m256 sv = _mm256_set1_ps(scale);
    const __m256 kv = ksv ? _mm256_loadu_ps(ksv) : _mm256_setzero_ps();
    for (int l = 0; l < rows; l++) {
        __m256 v = _mm512_cvtpd_ps(r[l]);
        if (ksv) v = _mm256_mul_ps(v, kv);
        _mm256_mask_storeu_ps(out + l * ldo, k, _mm256_mul_ps(v, sv));
    }
}
/* the columns kernel's epilogue: nk <= 8 keys of one row, as the reference */
AI void ar_store_cols(__m512d v, int nk, const float *ksv, float scale, float *out)
{
    const __mmask8 m = tail8(nk);
    __m256 f = _mm512_cvtpd_ps(v);
    if (ksv) f = _mm256_mul_ps(f, _mm256_maskz_loadu_ps(m, ksv));
    _mm256_mask_storeu_ps(out, m, _mm256_mul_ps(f, _mm256_set1_ps(scale)));
}
#define AR_CR 8 /* rows of a columns tile: 16 accumulators */
#define AR_LOADK2(e, p, n, k0, k1)                                                                 \
    do {                                                                                           \
        const __m512 f_ = ar_loadv((e), (p), (n));                                                 \
        (k0) = lo_pd(f_);                                                                          \
        (k1) = hi_pd(f_);                                                                          \
    } while (0)
#define AR_STORE_COLS ar_store_cols
#define AR_DL 8
#define AR_GP 2
#define AR_QT_GROUP ar_qt_group
#define AR_STORE_SCORES ar_store_scores
#define AR_VD __m512d
#define AR_ZERO_PD _mm512_setzero_pd
#define AR_LOAD_PD _mm512_load_pd
#define AR_SET1_PD _mm512_set1_pd
#define AR_FMA_PD _mm512_fmadd_pd
#define AR_CVT_ROW ar_cvt_row
#define AR_FL 16
#define AR_VF __m512
#define AR_LOADV ar_loadv
#define AR_LOADF load_n
#define AR_STOREF store_n
#define AR_ADD_PS _mm512_add_ps
#define AR_MUL_PS _mm512_mul_ps
#define AR_SET1_PS _mm512_set1_ps
#define AR_MIX_ACC 16 /* mix sums a pass keeps in registers */
#include "kernels/attn-rows.h"

static void axpy(float *y, float a, const float *x, int64_t n)
{
    const __m512 av = _mm512_set1_ps(a);
    for (int64_t i = 0; i < n; i += 16) {
        __m512 r = _mm512_add_ps(load_n(y + i, n - i), _mm512_mul_ps(av, load_n(x + i, n - i)));
        store_n(y + i, r, n - i);
    }
}

/* the quantized-table head (head-q.h) at this file's vector width */
#define HQ_V __m512
#define HQ_LANES 16
#define HQ_LOAD _mm512_loadu_ps
#define HQ_STORE _mm512_storeu_ps
#define HQ_FMA _mm512_fmadd_ps
#define HQ_TT 6
#define HQ_V_I __m512i
#define HQ_SET0 _mm512_setzero_ps
#include "kernels/head-q.h"

/* ---- LM head GEMMs ---- */

/* the F16 head (head-f16.h) at 16 lanes, tails by masked loads */
#define HF_V __m512
#define HF_LANES 16
#define HF_ZERO _mm512_setzero_ps
#define HF_FMA _mm512_fmadd_ps
#define HF_LOADX(p) _mm512_loadu_ps(p)
#define HF_LOADX_TAIL(p, left) _mm512_maskz_loadu_ps(tail16(left), (p))
#define HF_LOADW(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(p)))
#define HF_LOADW_TAIL(p, left) _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tail16(left), (p)))
#define HF_LOADF(p) _mm512_load_ps(p)
#define HF_STOREF(p, v) _mm512_store_ps((p), (v))
#define HF_HSUM _mm512_reduce_add_ps
#define HF_TT 6
#define HF_RW 4
#define HF_NREG 0 /* as the compiler likes */
#include "kernels/head-f16.h"

/* the int8 head (head-i8.h): vpdpbusd of the biased weights (unsigned, w + 128) and four
 * signed activations broadcast to a register (a broadcast from memory in each vpdpbusd was 20%
 * slower: a load per product); sum (w + 128) x = sum w x + 128 sum x, so 128 times the token's
 * activation sum is taken off at the end. Inline assembly: GCC 12 copies the accumulator of
 * _mm512_dpbusd_epi32 around every use in such tiles (two extra moves per product, a third
 * fewer MAC/s); the instruction itself ties it. */
AI __m512i hi_dot(__m512i a, __m512i x, __m512i w)
{
    __asm__("vpdpbusd %2, %1, %0" : "+v"(a) : "v"(w), "v"(x));
    return a;
}
#define HI_L 16
#define HI_V __m512i
#define HI_X __m512i
#define HI_ZERO _mm512_setzero_si512
#define HI_LOADW(p) _mm512_load_si512((const void *)(p))
#define HI_LOADP(p) _mm512_load_si512((const void *)(p))
#define HI_STOREP(p, a) _mm512_store_si512((void *)(p), (a))
#define HI_BCAST(p) _mm512_set1_epi32(tern_load_i32(p))
#define HI_DOT hi_dot
#define HI_STORE(a, xsum, sc, xs, out, lo, hi) hi_store(a, xsum, sc, xs, out, lane_mask(lo, hi))
#define HI_G1 8
#define HI_G 4
#define HI_T 6
/* Q8_0 blocks: the biased dot keeps 128 x the block's activation sum; 2 x 6 tiles (24 int and
 * float accumulators) */
AI void hi_storeb(__m512 A, float xs, float *out, int lo, int hi)
{
    const __m512d xd = _mm512_set1_pd((double)xs);
    const __m512 r =
        _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(_mm512_mul_pd(lo_pd(A), xd))),
                           _mm512_cvtpd_ps(_mm512_mul_pd(hi_pd(A), xd)), 1);
    _mm512_mask_storeu_ps(out, lane_mask(lo, hi), r);
}
#define HI_BIAS 128
#define HI_VF __m512
#define HI_ZEROF _mm512_setzero_ps
#define HI_LOADPF(p) _mm512_load_ps(p)
#define HI_STOREPF(p, a) _mm512_store_ps((p), (a))
#define HI_LOADD(p) _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(const void *)(p)))
#define HI_FOLD(A, a, xb, d)                                                                       \
    _mm512_fmadd_ps((d), _mm512_cvtepi32_ps(_mm512_sub_epi32((a), _mm512_set1_epi32(xb))), (A))
#define HI_STOREB hi_storeb
#define HI_BG 2
#define HI_BG1 4 /* vectors of a one-token tile, from four segments */
#define HI_BT 6
#include "kernels/head-i8.h"

static void f16_to_f32(const uint16_t *h, float *f, int64_t n)
{
    for (int64_t i = 0; i < n; i += 16) {
        store_n(f + i, load_nh(h + i, n - i), n - i);
    }
}

static void f32_to_f16(const float *f, uint16_t *h, int64_t n)
{
    for (int64_t i = 0; i < n; i += 16) {
        __m256i v =
            _mm512_cvtps_ph(load_n(f + i, n - i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        if (n - i >= 16)
            _mm256_storeu_si256((__m256i *)(void *)(h + i), v);
        else
            _mm256_mask_storeu_epi16(h + i, tail16(n - i), v);
    }
}

/* kernels.h's peak loops: vpdpbusd zmm (64 int8 multiply-adds) or vfmadd231ps zmm (16) */
#define PK_NAME peak_int8
#define PK_MACS 64
#define PK_V __m512i
#define PK_SET(i) _mm512_set1_epi32(i)
#define PK_B _mm512_set1_epi32(0x01010101)
#define PK_C _mm512_set1_epi32(0x02020202)
#define PK_OP(a) __asm__ volatile("vpdpbusd %2, %1, %0" : "+v"(a) : "v"(pk_b), "v"(pk_c))
#define PK_ADD _mm512_add_epi32
#define PK_SUM _mm512_reduce_add_epi32
#include "kernels/peak.h"
#define PK_NAME peak_fp32
#define PK_MACS 16
#define PK_V __m512
#define PK_SET(i) _mm512_set1_ps((float)(i))
#define PK_B _mm512_set1_ps(1.0f)
#define PK_C _mm512_set1_ps(0x1p-30f)
#define PK_OP(a) __asm__ volatile("vfmadd231ps %2, %1, %0" : "+v"(a) : "v"(pk_b), "v"(pk_c))
#define PK_ADD _mm512_add_ps
#define PK_SUM(v) (int32_t) _mm512_reduce_add_ps(v)
#include "kernels/peak.h"

const tern_kernel_vtable tern_kernels_avx512 = {
    .act_quant = tern_avx512_act_quant,
    .kv_quant_q8 = tern_avx512_kv_quant_q8,
    .tgemm = tern_avx512_tgemm,
    .rmsnorm = rmsnorm,
    .rmsnorm_rows = rmsnorm_rows,
    .rope_neox = rope_neox,
    .softmax = softmax,
    .relu2_mul = relu2_mul,
    .dot = dot,
    .axpy = axpy,
    .attn_scores_rows = tern_ar_scores,
    .attn_scores_cols = tern_ar_scores_cols,
    .attn_mix_rows = tern_ar_mix,
    .gemm_f16 = tern_hf_gemm,
    .gemm_i8 = tern_hi_gemm,
    .gemm_q = tern_hq_gemm,
    .gumbel_max = tern_avx512_gumbel_max,
    .lse_lanes = tern_avx512_lse_lanes,
    .f16_to_f32 = f16_to_f32,
    .f32_to_f16 = f32_to_f16,
    .peak_int8 = peak_int8,
    .peak_fp32 = peak_fp32,
};
