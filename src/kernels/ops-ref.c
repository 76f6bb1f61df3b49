/* ops-ref.c: scalar references for the float kernels (norm, RoPE, softmax, relu^2, attention
 * helpers over f32/f16/int8 KV, F16/int8 LM head, f16 conversion) and the reference entry table.
 * EXACT kernels (kernels.h) fix an operation order here that the SIMD variants reproduce; the
 * others are computed as accurately as is simple (double sums) and SIMD results are held to a
 * bound.
 */
#include <float.h>
#include <math.h>

#include "kernels/kernels-internal.h"

static uint32_t f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static float u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* IEEE binary16 to binary32, as vcvtph2ps (exact; NaNs come out quiet). */
float tern_f16_to_f32_1(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0x1f) return u2f(sign | 0x7f800000 | (m << 13) | (m ? 0x400000 : 0));
    if (e != 0) return u2f(sign | ((e + 112) << 23) | (m << 13));
    if (m == 0) return u2f(sign);
    /* subnormal: m * 2^-24, exact in float */
    float v = (float)m * 5.9604644775390625e-8f;
    return u2f(sign | f2u(v));
}

/* binary32 to binary16, round to nearest even, as vcvtps2ph with imm 0. */
uint16_t tern_f32_to_f16_1(float f)
{
    uint32_t x = f2u(f);
    uint32_t sign = (x >> 16) & 0x8000, ax = x & 0x7fffffff;
    if (ax > 0x7f800000) return (uint16_t)(sign | 0x7e00 | ((ax >> 13) & 0x3ff));
    if (ax >= 0x477ff000) return (uint16_t)(sign | 0x7c00); /* >= 65520 rounds to inf */
    if (ax >= 0x38800000) {                                 /* normal half */
        uint32_t h = (((ax >> 23) - 112) << 10) | ((ax >> 13) & 0x3ff);
        uint32_t rem = ax & 0x1fff;
        if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++; /* carry may bump the exponent */
        return (uint16_t)(sign | h);
    }
    if (ax <= 0x33000000) return (uint16_t)sign; /* <= 2^-25: ties to even zero */
    uint32_t m = (ax & 0x7fffff) | 0x800000;
    uint32_t shift = 126 - (ax >> 23); /* 14..24 */
    uint32_t h = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

void tern_ref_f16_to_f32(const uint16_t *h, float *f, int64_t n)
{
    for (int64_t i = 0; i < n; i++) f[i] = tern_f16_to_f32_1(h[i]);
}

void tern_ref_f32_to_f16(const float *f, uint16_t *h, int64_t n)
{
    for (int64_t i = 0; i < n; i++) h[i] = tern_f32_to_f16_1(f[i]);
}

void tern_ref_rmsnorm(const float *x, const float *w, int64_t n, float eps, float *y)
{
    double l[8] = {0};
    for (int64_t i = 0; i < n; i++) l[i % 8] += (double)x[i] * (double)x[i]; /* product exact */
    double ss = ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
    float mean = (float)(ss / (double)n);
    float scale = 1.0f / sqrtf(mean + eps);
    for (int64_t i = 0; i < n; i++) y[i] = (x[i] * scale) * w[i];
}

void tern_rope_table(float *cos_t, float *sin_t, int64_t pos0, int64_t n_pos, int64_t head_dim,
                     double theta)
{
    TERN_ASSERT(head_dim >= 2 && head_dim % 2 == 0 && n_pos >= 0 && pos0 >= 0 && theta > 0);
    int64_t half = head_dim / 2;
    for (int64_t p = 0; p < n_pos; p++)
        for (int64_t j = 0; j < half; j++) {
            double inv = pow(theta, -2.0 * (double)j / (double)head_dim);
            double a = (double)(pos0 + p) * inv;
            cos_t[p * half + j] = (float)cos(a);
            sin_t[p * half + j] = (float)sin(a);
        }
}

void tern_ref_rope_neox(float *x, int64_t n_heads, int64_t head_dim, const float *c, const float *s)
{
    int64_t half = head_dim / 2;
    for (int64_t h = 0; h < n_heads; h++) {
        float *z = x + h * head_dim;
        for (int64_t j = 0; j < half; j++) {
            float a = z[j], b = z[j + half];
            float ac = a * c[j], bs = b * s[j], as = a * s[j], bc = b * c[j];
            z[j] = ac - bs;
            z[j + half] = as + bc;
        }
    }
}

void tern_ref_softmax(float *x, int64_t n)
{
    float m = x[0];
    for (int64_t i = 1; i < n; i++)
        if (x[i] > m) m = x[i];
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        float e = (float)exp((double)(x[i] - m)); /* correctly rounded but for ~1e-16 ties */
        x[i] = e >= FLT_MIN ? e : 0.0f; /* no subnormals: they would slow every later product */
        sum += x[i];
    }
    float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < n; i++) {
        float p = x[i] * inv;
        x[i] = p >= FLT_MIN ? p : 0.0f;
    }
}

void tern_ref_relu2_mul(const float *g, const float *u, int64_t n, float *m)
{
    for (int64_t i = 0; i < n; i++) {
        float r = g[i] > 0.0f ? g[i] : 0.0f;
        m[i] = (r * r) * u[i];
    }
}

float tern_ref_dot(const float *a, const float *b, int64_t n)
{
    double acc = 0.0;
    for (int64_t i = 0; i < n; i++) acc += (double)a[i] * (double)b[i];
    return (float)acc;
}

void tern_ref_attn_scores(const float *q, const float *k, int64_t n, int64_t d, int64_t ldk,
                          float scale, float *out)
{
    for (int64_t j = 0; j < n; j++) out[j] = tern_ref_dot(q, k + j * ldk, d) * scale;
}

/* The mixes' loops, each called between tern_ftz_begin and tern_ftz_end (noinline, so the
 * compiler cannot move their arithmetic across the mode switch) */
static __attribute__((noinline)) void mix_f32(const float *p, const float *v, int64_t n, int64_t d,
                                              int64_t ldv, float *out)
{
    for (int64_t j = 0; j < n; j++)
        for (int64_t i = 0; i < d; i++) out[i] = out[i] + p[j] * v[j * ldv + i];
}

static __attribute__((noinline)) void mix_f16(const float *p, const uint16_t *v, int64_t n,
                                              int64_t d, int64_t ldv, float *out)
{
    for (int64_t j = 0; j < n; j++)
        for (int64_t i = 0; i < d; i++) out[i] = out[i] + p[j] * tern_f16_to_f32_1(v[j * ldv + i]);
}

static __attribute__((noinline)) void mix_q8(const float *p, const int8_t *v, const float *vs,
                                             int64_t ldvs, int64_t n, int64_t d, int64_t ldv,
                                             float *out)
{
    for (int64_t j = 0; j < n; j++) {
        const float w = p[j] * vs[j * ldvs];
        for (int64_t i = 0; i < d; i++) out[i] = out[i] + w * (float)v[j * ldv + i];
    }
}

void tern_ref_attn_mix(const float *p, const float *v, int64_t n, int64_t d, int64_t ldv,
                       float *out)
{
    const unsigned csr = tern_ftz_begin();
    mix_f32(p, v, n, d, ldv, out);
    tern_ftz_end(csr);
}

void tern_ref_axpy(float *y, float a, const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) y[i] = y[i] + a * x[i];
}

/* KV in F16 or int8: every element converts exactly to float, so these are the f32 kernels'
 * operations on the converted values (kernels.h) */
void tern_ref_attn_scores_f16(const float *q, const uint16_t *k, int64_t n, int64_t d, int64_t ldk,
                              float scale, float *out)
{
    for (int64_t j = 0; j < n; j++) {
        const uint16_t *kj = k + j * ldk;
        double acc = 0.0;
        for (int64_t i = 0; i < d; i++) acc += (double)q[i] * (double)tern_f16_to_f32_1(kj[i]);
        out[j] = (float)acc * scale;
    }
}

void tern_ref_attn_mix_f16(const float *p, const uint16_t *v, int64_t n, int64_t d, int64_t ldv,
                           float *out)
{
    const unsigned csr = tern_ftz_begin();
    mix_f16(p, v, n, d, ldv, out);
    tern_ftz_end(csr);
}

void tern_ref_attn_scores_q8(const float *q, const int8_t *k, const float *ks, int64_t ldks,
                             int64_t n, int64_t d, int64_t ldk, float scale, float *out)
{
    for (int64_t j = 0; j < n; j++) {
        const int8_t *kj = k + j * ldk;
        double acc = 0.0;
        for (int64_t i = 0; i < d; i++) acc += (double)q[i] * (double)kj[i];
        out[j] = ((float)acc * ks[j * ldks]) * scale;
    }
}

void tern_ref_attn_mix_q8(const float *p, const int8_t *v, const float *vs, int64_t ldvs, int64_t n,
                          int64_t d, int64_t ldv, float *out)
{
    const unsigned csr = tern_ftz_begin();
    mix_q8(p, v, vs, ldvs, n, d, ldv, out);
    tern_ftz_end(csr);
}

void tern_ref_gemm_f16(const uint16_t *w, const float *x, int64_t n_tok, int64_t k, float *y,
                       int64_t ldy, int64_t o0, int64_t o1)
{
    for (int64_t o = o0; o < o1; o++) {
        const uint16_t *wo = w + o * k;
        for (int64_t t = 0; t < n_tok; t++) {
            const float *xt = x + t * k;
            double acc = 0.0;
            for (int64_t i = 0; i < k; i++) acc += (double)tern_f16_to_f32_1(wo[i]) * (double)xt[i];
            y[t * ldy + o] = (float)acc;
        }
    }
}

void tern_ref_gemm_i8(const tern_i8mat *w, const int8_t *xq, const float *xs, const int32_t *xsum,
                      int64_t n_tok, float *y, int64_t ldy, int64_t o0, int64_t o1)
{
    (void)xsum; /* the reference sums the unbiased products */
    const int64_t k = w->k;
    if (w->bscale) { /* kernels.h: blocks summed exactly, folded in order by fmaf */
        for (int64_t o = o0; o < o1; o++)
            for (int64_t t = 0; t < n_tok; t++) {
                const int8_t *xt = xq + t * k;
                float A = 0.0f;
                for (int64_t b = 0; b < w->nb; b++) {
                    int32_t S = 0;
                    for (int64_t i = b * 32; i < b * 32 + 32; i++)
                        S += (int32_t)tern_i8mat_q(w, o, i) * (int32_t)xt[i];
                    const float d = tern_i8mat_d(w, o, b);
                    A = fmaf(d, (float)S, A);
                }
                y[t * ldy + o] = (float)((double)A * (double)xs[t]);
            }
        return;
    }
    for (int64_t o = o0; o < o1; o++)
        for (int64_t t = 0; t < n_tok; t++) {
            const int8_t *xt = xq + t * k;
            int32_t acc = 0;
            for (int64_t i = 0; i < k; i++) acc += (int32_t)tern_i8mat_q(w, o, i) * (int32_t)xt[i];
            y[t * ldy + o] = tern_i8_logit(acc, w->scale[o], xs[t]);
        }
}

/* the rows forms: each row by its single-row reference, block by block (each score is its own
 * sum, and a mix takes the blocks' keys in order) */
void tern_ref_attn_scores_rows(tern_attn_elem e, const float *const *q, int P, const void *const *k,
                               const float *const *ks, int64_t ldks, int64_t n, int64_t blk,
                               int64_t d, int64_t ldk, float scale, float *out, int64_t ldo)
{
    for (int r = 0; r < P; r++)
        for (int64_t b0 = 0; b0 < n; b0 += blk) {
            const int64_t nb = n - b0 < blk ? n - b0 : blk;
            const void *kb = k[b0 / blk];
            float *o = out + (int64_t)r * ldo + b0;
            if (e == TERN_ATTN_F16)
                tern_ref_attn_scores_f16(q[r], kb, nb, d, ldk, scale, o);
            else if (e == TERN_ATTN_Q8)
                tern_ref_attn_scores_q8(q[r], kb, ks[b0 / blk], ldks, nb, d, ldk, scale, o);
            else
                tern_ref_attn_scores(q[r], kb, nb, d, ldk, scale, o);
        }
}

/* keys by columns: element i of key j is column j % blk of row i of block j / blk; the sums of
 * the single-row references, in the same order */
void tern_ref_attn_scores_cols(tern_attn_elem e, const float *const *q, int P, const void *const *k,
                               const float *const *ks, int64_t ldks, int64_t n, int64_t blk,
                               int64_t d, int64_t ldk, float scale, float *out, int64_t ldo)
{
    for (int r = 0; r < P; r++)
        for (int64_t j = 0; j < n; j++) {
            const void *kb = k[j / blk];
            const int64_t c = j % blk;
            double acc = 0.0;
            for (int64_t i = 0; i < d; i++) {
                const int64_t x = i * ldk + c;
                const double kv = e == TERN_ATTN_F16
                                      ? (double)tern_f16_to_f32_1(((const uint16_t *)kb)[x])
                                  : e == TERN_ATTN_Q8 ? (double)((const int8_t *)kb)[x]
                                                      : (double)((const float *)kb)[x];
                acc += (double)q[r][i] * kv;
            }
            float s = (float)acc;
            if (e == TERN_ATTN_Q8) s = s * ks[j / blk][c * ldks];
            out[(int64_t)r * ldo + j] = s * scale;
        }
}

void tern_ref_attn_mix_rows(tern_attn_elem e, const float *p, int64_t ldp, int P,
                            const int32_t *len, const void *const *v, const float *const *vs,
                            int64_t ldvs, int64_t blk, int64_t d, int64_t ldv, float *const *out)
{
    for (int r = 0; r < P; r++)
        for (int64_t b0 = 0; b0 < len[r]; b0 += blk) {
            const int64_t nb = len[r] - b0 < blk ? len[r] - b0 : blk;
            const float *pr = p + (int64_t)r * ldp + b0;
            const void *vb = v[b0 / blk];
            if (e == TERN_ATTN_F16)
                tern_ref_attn_mix_f16(pr, vb, nb, d, ldv, out[r]);
            else if (e == TERN_ATTN_Q8)
                tern_ref_attn_mix_q8(pr, vb, vs[b0 / blk], ldvs, nb, d, ldv, out[r]);
            else
                tern_ref_attn_mix(pr, vb, nb, d, ldv, out[r]);
        }
}

static uint16_t u16_at(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

/* One scalar dequantization for every variant (kernels.h gives the formulas). */
void tern_dequant_row(tern_ggml_type type, const void *row, int64_t k, float *out)
{
    TERN_ASSERT(type == TERN_TYPE_Q8_0 || type == TERN_TYPE_Q6_K);
    const uint8_t *b = row;
    if (type == TERN_TYPE_Q8_0) {
        TERN_ASSERT(k % 32 == 0);
        for (int64_t i = 0; i < k; i += 32, b += TERN_Q8_0_BYTES) {
            const float d = tern_f16_to_f32_1(u16_at(b));
            for (int j = 0; j < 32; j++) out[i + j] = d * (float)(int8_t)b[2 + j];
        }
        return;
    }
    TERN_ASSERT(k % 256 == 0);
    for (int64_t i = 0; i < k; i += 256, b += TERN_Q6_K_BYTES) {
        const float d = tern_f16_to_f32_1(u16_at(b + TERN_Q6_K_D));
        const uint8_t *qh = b + TERN_Q6_K_QH;
        const int8_t *sc = (const int8_t *)(b + TERN_Q6_K_SC);
        for (int e = 0; e < 256; e++) {
            const int h = e / 128, g = (e % 128) / 32, l = e % 32;
            const int lo = (b[64 * h + 32 * (g & 1) + l] >> (4 * (g >> 1))) & 15;
            const int hi = (qh[32 * h + l] >> (2 * g)) & 3;
            out[i + e] = (d * (float)sc[8 * h + 2 * g + l / 16]) * (float)((lo | hi << 4) - 32);
        }
    }
}

void tern_ref_gemm_q(tern_ggml_type type, const void *w, int64_t k, const float *x, int64_t n_tok,
                     float *y, int64_t ldy, int64_t o0, int64_t o1)
{
    const int64_t blk = type == TERN_TYPE_Q8_0 ? 32 : 256;
    const int64_t bb = type == TERN_TYPE_Q8_0 ? TERN_Q8_0_BYTES : TERN_Q6_K_BYTES;
    const int64_t rb = k / blk * bb;
    float buf[256]; /* one block dequantized (no allocation) */
    for (int64_t o = o0; o < o1; o++) {
        const uint8_t *wo = (const uint8_t *)w + o * rb;
        for (int64_t t = 0; t < n_tok; t++) {
            const float *xt = x + t * k;
            double acc = 0.0;
            for (int64_t i = 0; i < k; i += blk) {
                tern_dequant_row(type, wo + i / blk * bb, blk, buf);
                for (int64_t j = 0; j < blk; j++) acc += (double)buf[j] * (double)xt[i + j];
            }
            y[t * ldy + o] = (float)acc;
        }
    }
}

/* kernels.h's peak loops: scalar integer (unsigned: it wraps) or float multiply-adds */
static uint64_t ref_peak(tern_peak_kind kind, int64_t iters)
{
    uint32_t a[16];
    float f[16];
    for (int i = 0; i < 16; i++) a[i] = (uint32_t)i, f[i] = (float)i;
    volatile uint32_t b = 3;
    volatile float x = 1.0f;
    const uint32_t bb = b;
    const float xx = x;
    for (int64_t n = 0; n < iters; n++)
        for (int i = 0; i < 16; i++) {
            if (kind == TERN_PEAK_INT8)
                a[i] = a[i] * bb + 1u;
            else
                f[i] = f[i] * xx + 0x1p-30f;
        }
    uint32_t t = 0;
    for (int i = 0; i < 16; i++) t += a[i] + (uint32_t)(int32_t)f[i];
    tern_peak_sink = (int32_t)(t & 0x7fffffffu);
    return (uint64_t)iters * 16;
}
static uint64_t ref_peak_int8(int64_t iters)
{
    return ref_peak(TERN_PEAK_INT8, iters);
}
static uint64_t ref_peak_fp32(int64_t iters)
{
    return ref_peak(TERN_PEAK_FP32, iters);
}

const tern_kernel_vtable tern_kernels_ref = {
    .act_quant = tern_ref_act_quant,
    .kv_quant_q8 = tern_ref_kv_quant_q8,
    .tgemm = tern_ref_tgemm,
    .rmsnorm = tern_ref_rmsnorm,
    .rope_neox = tern_ref_rope_neox,
    .softmax = tern_ref_softmax,
    .relu2_mul = tern_ref_relu2_mul,
    .dot = tern_ref_dot,
    .axpy = tern_ref_axpy,
    .attn_scores_rows = tern_ref_attn_scores_rows,
    .attn_scores_cols = tern_ref_attn_scores_cols,
    .attn_mix_rows = tern_ref_attn_mix_rows,
    .gemm_f16 = tern_ref_gemm_f16,
    .gemm_i8 = tern_ref_gemm_i8,
    .gemm_q = tern_ref_gemm_q,
    .gumbel_max = tern_ref_gumbel_max,
    .lse_lanes = tern_ref_lse_lanes,
    .f16_to_f32 = tern_ref_f16_to_f32,
    .f32_to_f16 = tern_ref_f32_to_f16,
    .peak_int8 = ref_peak_int8,
    .peak_fp32 = ref_peak_fp32,
};
