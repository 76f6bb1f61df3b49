/* ops-avx2.c: AVX2 + FMA + F16C float kernels and the avx2 entry table.
 *
 * Same rules as ops-avx512.c: EXACT kernels repeat the reference's operations in its order
 * (no fma where the reference rounds twice; scalar tails call the same scalar operations),
 * the others keep fp32 lane sums with fma within the bounds of kernels.h.
 */
#include <float.h>
#include <math.h>

#include "kernels/simd-avx2.h"

AI float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* up to 8 floats, full vectors unmasked (a masked store does not forward to later loads) */
AI __m256 ar_loadf(const float *p, int64_t n)
{
    return n >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, tail8(n));
}
AI void ar_storef(float *p, __m256 v, int64_t n)
{
    if (n >= 8)
        _mm256_storeu_ps(p, v);
    else
        _mm256_maskstore_ps(p, tail8(n), v);
}

static void rmsnorm(const float *x, const float *w, int64_t n, float eps, float *y)
{
    /* acc0 lanes = reference l[0..3], acc1 = l[4..7] */
    __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
    for (int64_t i = 0; i < n; i += 8) {
        __m256 v = ar_loadf(x + i, n - i);
        __m256d a = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
        __m256d b = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
        acc0 = _mm256_fmadd_pd(a, a, acc0); /* a*a exact in double */
        acc1 = _mm256_fmadd_pd(b, b, acc1);
    }
    __m256d t = _mm256_add_pd(acc0, acc1);
    __m128d u = _mm_add_pd(_mm256_castpd256_pd128(t), _mm256_extractf128_pd(t, 1));
    double ss = _mm_cvtsd_f64(u) + _mm_cvtsd_f64(_mm_unpackhi_pd(u, u));
    float mean = (float)(ss / (double)n);
    const float sc = 1.0f / sqrtf(mean + eps);
    const __m256 scale = _mm256_set1_ps(sc);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), scale),
                                              _mm256_loadu_ps(w + i)));
    for (; i < n; i++) y[i] = (x[i] * sc) * w[i];
}

static void rope_neox(float *x, int64_t n_heads, int64_t head_dim, const float *c, const float *s)
{
    const int64_t half = head_dim / 2;
    for (int64_t h = 0; h < n_heads; h++) {
        float *z = x + h * head_dim;
        int64_t j = 0;
        for (; j + 8 <= half; j += 8) {
            __m256 a = _mm256_loadu_ps(z + j), b = _mm256_loadu_ps(z + half + j);
            __m256 cv = _mm256_loadu_ps(c + j), sv = _mm256_loadu_ps(s + j);
            _mm256_storeu_ps(z + j, _mm256_sub_ps(_mm256_mul_ps(a, cv), _mm256_mul_ps(b, sv)));
            _mm256_storeu_ps(z + half + j,
                             _mm256_add_ps(_mm256_mul_ps(a, sv), _mm256_mul_ps(b, cv)));
        }
        for (; j < half; j++) {
            float a = z[j], b = z[j + half];
            float ac = a * c[j], bs = b * s[j], as = a * s[j], bc = b * c[j];
            z[j] = ac - bs;
            z[j + half] = as + bc;
        }
    }
}

/* exp(x) in double for x <= 0: see ops-avx512.c (2^n in two factors, each a normal double) */
#define SET(v) _mm256_set1_pd(v)
#define FMA(a, b, c) _mm256_fmadd_pd(a, b, c)
AI __m256d exp_pd(__m256d x)
{
    x = _mm256_max_pd(x, SET(-110.0));
    __m256d n = _mm256_round_pd(_mm256_mul_pd(x, SET(TERN_LOG2E)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256d r = _mm256_fnmadd_pd(n, SET(TERN_LN2_HI), x);
    r = _mm256_fnmadd_pd(n, SET(TERN_LN2_LO), r);
    __m256d p;
    TERN_EXP_TAYLOR13(p, r, SET, FMA);
    __m128i ni = _mm256_cvtpd_epi32(n), h1 = _mm_srai_epi32(ni, 1), h2 = _mm_sub_epi32(ni, h1);
    const __m256i bias = _mm256_set1_epi64x(1023);
    __m256d f1 = _mm256_castsi256_pd(
        _mm256_slli_epi64(_mm256_add_epi64(_mm256_cvtepi32_epi64(h1), bias), 52));
    __m256d f2 = _mm256_castsi256_pd(
        _mm256_slli_epi64(_mm256_add_epi64(_mm256_cvtepi32_epi64(h2), bias), 52));
    return _mm256_mul_pd(_mm256_mul_pd(p, f1), f2);
}
#undef SET
#undef FMA

AI double hsum4d(__m256d t)
{
    __m128d u = _mm_add_pd(_mm256_castpd256_pd128(t), _mm256_extractf128_pd(t, 1));
    return _mm_cvtsd_f64(u) + _mm_cvtsd_f64(_mm_unpackhi_pd(u, u));
}

/* the reference's operations (see ops-avx512.c), four values at a time */
static void softmax(float *x, int64_t n)
{
    float mx = x[0];
    __m256 mv = _mm256_set1_ps(mx);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) mv = _mm256_max_ps(_mm256_loadu_ps(x + i), mv);
    for (; i < n; i++)
        if (x[i] > mx) mx = x[i];
    float lanes[8];
    _mm256_storeu_ps(lanes, mv);
    for (int j = 0; j < 8; j++)
        if (lanes[j] > mx) mx = lanes[j];
    const __m128 m = _mm_set1_ps(mx);
    __m256d sum = _mm256_setzero_pd();
    for (i = 0; i < n; i += 4) {
        int64_t left = n - i;
        __m128i k =
            _mm_cmpgt_epi32(_mm_set1_epi32(left < 4 ? (int)left : 4), _mm_setr_epi32(0, 1, 2, 3));
        __m128 d = _mm_sub_ps(left >= 4 ? _mm_loadu_ps(x + i) : _mm_maskload_ps(x + i, k), m);
        __m128 e = _mm_and_ps(_mm_castsi128_ps(k), _mm256_cvtpd_ps(exp_pd(_mm256_cvtps_pd(d))));
        e = _mm_and_ps(e, _mm_cmpge_ps(e, _mm_set1_ps(FLT_MIN)));
        if (left >= 4) /* unmasked where full: a masked store does not forward */
            _mm_storeu_ps(x + i, e);
        else
            _mm_maskstore_ps(x + i, k, e);
        sum = _mm256_add_pd(sum, _mm256_cvtps_pd(e));
    }
    const float inv = (float)(1.0 / hsum4d(sum));
    const __m256 iv = _mm256_set1_ps(inv);
    const __m256 tiny = _mm256_set1_ps(FLT_MIN);
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 p = _mm256_mul_ps(_mm256_loadu_ps(x + i), iv);
        _mm256_storeu_ps(x + i, _mm256_and_ps(p, _mm256_cmp_ps(p, tiny, _CMP_GE_OQ)));
    }
    for (; i < n; i++) {
        float p = x[i] * inv;
        x[i] = p >= FLT_MIN ? p : 0.0f;
    }
}

static void relu2_mul(const float *g, const float *u, int64_t n, float *m)
{
    const __m256 zero = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 r = _mm256_max_ps(_mm256_loadu_ps(g + i), zero); /* NaN -> 0 as the ref */
        _mm256_storeu_ps(m + i, _mm256_mul_ps(_mm256_mul_ps(r, r), _mm256_loadu_ps(u + i)));
    }
    for (; i < n; i++) {
        float r = g[i] > 0.0f ? g[i] : 0.0f;
        m[i] = (r * r) * u[i];
    }
}

/* dot products in double as the reference (see ops-avx512.c) */
static float dot(const float *a, const float *b, int64_t n)
{
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        s0 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(a + i)),
                             _mm256_cvtps_pd(_mm_loadu_ps(b + i)), s0);
        s1 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(a + i + 4)),
                             _mm256_cvtps_pd(_mm_loadu_ps(b + i + 4)), s1);
    }
    double tail = 0.0;
    for (; i < n; i++) tail += (double)a[i] * (double)b[i];
    return (float)(hsum4d(_mm256_add_pd(s0, s1)) + tail);
}

/* ---- attention over several query rows (attn-rows.h): 4 double lanes, 8 float lanes ---- */

/* n <= 8 elements of a K/V row as floats, zeros after (exact conversions) */
AI __m256 ar_loadv(tern_attn_elem e, const void *p, int64_t n)
{
    if (n >= 8) {
        if (e == TERN_ATTN_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
        if (e == TERN_ATTN_Q8)
            return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
        return _mm256_loadu_ps((const float *)p);
    }
    float b[8] = {0};
    for (int64_t i = 0; i < n; i++)
        b[i] = e == TERN_ATTN_F16  ? tern_f16_to_f32_1(((const uint16_t *)p)[i])
               : e == TERN_ATTN_Q8 ? (float)((const int8_t *)p)[i]
                                   : ((const float *)p)[i];
    return _mm256_loadu_ps(b);
}
/* whole vectors are stored in place, a tail through t: a memcpy of every 8 elements (a run-time
 * length) became a rep movsq, whose start-up made the conversion half the scores' time on Zen 3 */
AI void ar_cvt_row(tern_attn_elem e, const void *p, int64_t d, double *out)
{
    const size_t esz = tern_attn_elem_bytes(e);
    for (int64_t i = 0; i < d; i += 8) {
        const int64_t m = d - i < 8 ? d - i : 8;
        const __m256 f = ar_loadv(e, (const uint8_t *)p + (size_t)i * esz, m);
        double t[8], *dst = m == 8 ? out + i : t;
        _mm256_storeu_pd(dst, _mm256_cvtps_pd(_mm256_castps256_ps128(f)));
        _mm256_storeu_pd(dst + 4, _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1)));
        if (m < 8) memcpy(out + i, t, (size_t)m * sizeof(double));
    }
}
/* rows r0 .. r0+3 of q as doubles, row in the lane (zeros for rows from P on) */
AI void ar_qt_group(const float *const *q, int r0, int P, int64_t d, double *dst)
{
    for (int64_t i = 0; i < d; i++)
        for (int l = 0; l < 4; l++) dst[i * 4 + l] = r0 + l < P ? (double)q[r0 + l][i] : 0.0;
}
/* one row group's scores: row l's nk keys ((float)sum [* ks]) * scale, as the reference */
AI void ar_store_scores(const __m256d acc[8], int nk, const float *ksv, float scale, float *out,
                        int64_t ldo, int rows)
{
    double s[8][4];
    for (int kk = 0; kk < 8; kk++) _mm256_storeu_pd(s[kk], acc[kk]);
    for (int l = 0; l < rows; l++)
        for (int kk = 0; kk < nk; kk++) {
            float v = (float)s[kk][l];
            if (ksv) v = v * ksv[kk];
            out[l * ldo + kk] = v * scale;
        }
}
/* the columns kernel's epilogue: nk <= 4 keys of one row, as the reference */
AI void ar_store_cols(__m256d v, int nk, const float *ksv, float scale, float *out)
{
    __m128 f = _mm256_cvtpd_ps(v);
    if (nk == 4) {
        if (ksv) f = _mm_mul_ps(f, _mm_loadu_ps(ksv));
        _mm_storeu_ps(out, _mm_mul_ps(f, _mm_set1_ps(scale)));
        return;
    }
    float t[4];
    _mm_storeu_ps(t, f);
    for (int l = 0; l < nk; l++) out[l] = (ksv ? t[l] * ksv[l] : t[l]) * scale;
}
#define AR_CR 4 /* rows of a columns tile: 8 accumulators */
#define AR_LOADK2(e, p, n, k0, k1)                                                                 \
    do {                                                                                           \
        const __m256 f_ = ar_loadv((e), (p), (n));                                                 \
        (k0) = _mm256_cvtps_pd(_mm256_castps256_ps128(f_));                                        \
        (k1) = _mm256_cvtps_pd(_mm256_extractf128_ps(f_, 1));                                      \
    } while (0)
#define AR_STORE_COLS ar_store_cols
#define AR_DL 4
#define AR_QT_GROUP ar_qt_group
#define AR_STORE_SCORES ar_store_scores
#define AR_VD __m256d
#define AR_ZERO_PD _mm256_setzero_pd
#define AR_LOAD_PD _mm256_load_pd
#define AR_SET1_PD _mm256_set1_pd
#define AR_FMA_PD _mm256_fmadd_pd
#define AR_CVT_ROW ar_cvt_row
#define AR_FL 8
#define AR_VF __m256
#define AR_LOADV ar_loadv
#define AR_LOADF ar_loadf
#define AR_STOREF ar_storef
#define AR_ADD_PS _mm256_add_ps
#define AR_MUL_PS _mm256_mul_ps
#define AR_SET1_PS _mm256_set1_ps
#define AR_MIX_ACC 8 /* mix sums a pass keeps in registers */
#include "kernels/attn-rows.h"

static void axpy(float *y, float a, const float *x, int64_t n)
{
    const __m256 av = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i),
                                              _mm256_mul_ps(av, _mm256_loadu_ps(x + i))));
    for (; i < n; i++) y[i] = y[i] + a * x[i];
}

/* the quantized-table head (head-q.h) at this file's vector width */
#define HQ_V __m256
#define HQ_LANES 8
#define HQ_LOAD _mm256_loadu_ps
#define HQ_STORE _mm256_storeu_ps
#define HQ_FMA _mm256_fmadd_ps
#define HQ_TT 3
#define HQ_V_I __m256i
#define HQ_SET0 _mm256_setzero_ps
#include "kernels/head-q.h"

/* ---- LM head GEMMs ---- */

/* the last k % 8 columns of the F16 head: copied to zero-padded buffers */
AI __m256 hf_loadw_tail(const uint16_t *p, int64_t left)
{
    uint16_t b[8] = {0};
    memcpy(b, p, (size_t)left * 2);
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)b));
}
/* the F16 head (head-f16.h) at 8 lanes */
#define HF_V __m256
#define HF_LANES 8
#define HF_ZERO _mm256_setzero_ps
#define HF_FMA _mm256_fmadd_ps
#define HF_LOADX(p) _mm256_loadu_ps(p)
#define HF_LOADX_TAIL(p, left) _mm256_maskload_ps((p), tail8(left))
#define HF_LOADW(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(p)))
#define HF_LOADW_TAIL hf_loadw_tail
#define HF_LOADF(p) _mm256_load_ps(p)
#define HF_STOREF(p, v) _mm256_store_ps((p), (v))
#define HF_HSUM hsum8
#define HF_TT 5
#define HF_RW 2
#define HF_NREG 16
#include "kernels/head-f16.h"

/* the int8 head (head-i8.h): the weights unbiased (xor 0x80) as loaded, maddubs on |x| and w
 * with x's sign (pairs stay within int16: 2 * 127 * 127 < 2^15), then pairs of int16 to
 * int32; eight rows per 32-byte half chunk */
AI __m256i hi_bcast(const int8_t *p)
{
    return _mm256_set1_epi32(tern_load_i32(p));
}
/* |w| (unsigned, 128 for a Q8_0 code of -128) times x with w's sign: maddubs of the unsigned
 * and signed bytes; |x| <= 127, so the pairs stay below 2^15 (abs(w) is the same for every
 * token of a tile: computed once) */
AI __m256i hi_dot(__m256i a, __m256i x, __m256i w)
{
    const __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
    return _mm256_add_epi32(a, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}
/* the 8 logits of two double halves, lanes [lo, hi) stored */
AI void hi_out(__m256d d0, __m256d d1, float *out, int lo, int hi)
{
    const __m256 r = _mm256_set_m128(_mm256_cvtpd_ps(d1), _mm256_cvtpd_ps(d0));
    if (lo == 0 && hi == 8) {
        _mm256_storeu_ps(out, r);
        return;
    }
    float v[8];
    _mm256_storeu_ps(v, r);
    for (int i = lo; i < hi; i++) out[i] = v[i];
}
/* kernels.h's formula in double lanes: (float)((double)S * ((double)scale * (double)xs)) */
AI void hi_store(__m256i S, int32_t xsum, const float *sc, float xs, float *out, int lo, int hi)
{
    (void)xsum; /* the weights were unbiased: nothing to take off */
    const __m256d xd = _mm256_set1_pd((double)xs);
    const __m256d w0 = _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(sc)), xd);
    const __m256d w1 = _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(sc + 4)), xd);
    hi_out(_mm256_mul_pd(_mm256_cvtepi32_pd(_mm256_castsi256_si128(S)), w0),
           _mm256_mul_pd(_mm256_cvtepi32_pd(_mm256_extracti128_si256(S, 1)), w1), out, lo, hi);
}
#define HI_L 8
#define HI_V __m256i
#define HI_X __m256i
#define HI_ZERO _mm256_setzero_si256
#define HI_LOADW(p)                                                                                \
    _mm256_xor_si256(_mm256_load_si256((const __m256i *)(const void *)(p)),                        \
                     _mm256_set1_epi8((char)0x80))
#define HI_LOADP(p) _mm256_load_si256((const __m256i *)(const void *)(p))
#define HI_STOREP(p, a) _mm256_store_si256((__m256i *)(void *)(p), (a))
#define HI_BCAST hi_bcast
#define HI_DOT hi_dot
#define HI_STORE hi_store
#define HI_G1 4
#define HI_G 4
#define HI_T 2
/* Q8_0 blocks: the dot is of the unbiased weights; 2 x 2 tiles */
AI void hi_storeb(__m256 A, float xs, float *out, int lo, int hi)
{
    const __m256d xd = _mm256_set1_pd((double)xs);
    hi_out(_mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(A)), xd),
           _mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(A, 1)), xd), out, lo, hi);
}
#define HI_BIAS 0
#define HI_VF __m256
#define HI_ZEROF _mm256_setzero_ps
#define HI_LOADPF(p) _mm256_load_ps(p)
#define HI_STOREPF(p, a) _mm256_store_ps((p), (a))
#define HI_LOADD(p) _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(const void *)(p)))
#define HI_FOLD(A, a, xb, d) ((void)(xb), _mm256_fmadd_ps((d), _mm256_cvtepi32_ps(a), (A)))
#define HI_STOREB hi_storeb
#define HI_BG 2
#define HI_BG1 4 /* vectors of a one-token tile, from four segments */
#define HI_BT 2
#include "kernels/head-i8.h"

static void f16_to_f32(const uint16_t *h, float *f, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(f + i,
                         _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(h + i))));
    for (; i < n; i++) f[i] = tern_f16_to_f32_1(h[i]);
}

static void f32_to_f16(const float *f, uint16_t *h, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128(
            (__m128i *)(void *)(h + i),
            _mm256_cvtps_ph(_mm256_loadu_ps(f + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; i++) h[i] = tern_f32_to_f16_1(f[i]);
}

/* kernels.h's peak loops: the int8 dot-accumulate, vpmaddubsw ymm + vpaddw (32 int8
 * multiply-adds: AVX2 has no instruction that multiplies and accumulates, and vpmaddubsw alone
 * only forms the products' pair sums, so a dot costs both; on Zen 3 the pair runs at 0.70 of
 * vpmaddubsw's rate alone), or vfmadd231ps ymm (8); 12 accumulators, the two operands and the
 * products fit the 16 registers (16 spilled three FMA chains through the stack: 0.56 of the
 * rate on Zen 3) */
#define PK_NAME peak_int8
#define PK_ACC TERN_PEAK_12
#define PK_MACS 32
#define PK_V __m256i
#define PK_SET(i) _mm256_set1_epi32(i)
#define PK_B _mm256_set1_epi32(0x01010101)
#define PK_C _mm256_set1_epi32(0x02020202)
#define PK_OP(a)                                                                                   \
    do {                                                                                           \
        __m256i pk_p;                                                                              \
        __asm__ volatile("vpmaddubsw %2, %3, %1\n\tvpaddw %1, %0, %0"                              \
                         : "+x"(a), "=&x"(pk_p)                                                    \
                         : "x"(pk_b), "x"(pk_c));                                                  \
    } while (0)
#define PK_ADD _mm256_add_epi32
#define PK_SUM(v) _mm256_extract_epi32(v, 0)
#include "kernels/peak.h"
#define PK_NAME peak_fp32
#define PK_ACC TERN_PEAK_12
#define PK_MACS 8
#define PK_V __m256
#define PK_SET(i) _mm256_set1_ps((float)(i))
#define PK_B _mm256_set1_ps(1.0f)
#define PK_C _mm256_set1_ps(0x1p-30f)
#define PK_OP(a) __asm__ volatile("vfmadd231ps %2, %1, %0" : "+x"(a) : "x"(pk_b), "x"(pk_c))
#define PK_ADD _mm256_add_ps
#define PK_SUM(v) (int32_t) _mm256_cvtss_f32(v)
#include "kernels/peak.h"

const tern_kernel_vtable tern_kernels_avx2 = {
    .act_quant = tern_avx2_act_quant,
    .kv_quant_q8 = tern_avx2_kv_quant_q8,
    .tgemm = tern_avx2_tgemm,
    .rmsnorm = rmsnorm,
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
    .gumbel_max = tern_avx2_gumbel_max,
    .lse_lanes = tern_avx2_lse_lanes,
    .f16_to_f32 = f16_to_f32,
    .f32_to_f16 = f32_to_f16,
    .peak_int8 = peak_int8,
    .peak_fp32 = peak_fp32,
};
