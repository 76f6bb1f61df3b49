/* tgemm-ref.c: scalar reference for activation quantization and the ternary GEMM. This is
 * the specification (kernels.h, BITNET_SPEC.md 2.3) that every SIMD variant must match bit for
 * bit. It is written for clarity: the dot product is sum t*q with t decoded from the codes,
 * with no use of qsum, and rounding is done without depending on the FPU rounding mode.
 */
#include <math.h>
#include <string.h>

#include "kernels/kernels-internal.h"

float tern_round_half_even(float v)
{
    float a = fabsf(v);
    if (!(a < 8388608.0f)) return v; /* already integral, or NaN */
    float f = floorf(a);
    /* exact: a - f is representable (Sterbenz for a >= 1; f = 0 below) */
    float d = a - f;
    if (d > 0.5f || (d == 0.5f && ((int32_t)f & 1))) f += 1.0f; /* f < 2^23: exact as int */
    return copysignf(f, v);
}

/* max |x_i|; a NaN never compares greater, so it is ignored */
static float row_amax(const float *x, int64_t n)
{
    float amax = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        const float a = fabsf(x[i]);
        if (a > amax) amax = a;
    }
    return amax;
}

void tern_ref_act_quant(const float *x, int64_t n, int64_t k, int8_t *q, float *s, int32_t *qsum)
{
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * k;
        int8_t *qi = q + i * k;
        float amax = row_amax(xi, k);
        if (amax < 1e-5f) amax = 1e-5f;
        float sc = 127.0f / amax;
        int32_t sum = 0;
        for (int64_t j = 0; j < k; j++) {
            float v = tern_round_half_even(xi[j] * sc);
            if (!(v >= -128.0f)) v = -128.0f; /* also NaN, as the SIMD max does */
            if (v > 127.0f) v = 127.0f;
            qi[j] = (int8_t)(int32_t)v;
            sum += qi[j];
        }
        s[i] = sc;
        qsum[i] = sum;
    }
}

/* sum_{c in [c0, c1)} t[o][c] * q[c], exact in int32 (|sum| <= 128 * k < 2^24). */
static int32_t dot_row(const tern_tmat *w, int64_t o, const int8_t *q, int64_t c0, int64_t c1)
{
    const uint8_t *base = w->codes + (o / TERN_TG_ROWS) * w->kc * TERN_TG_BYTES + (o % 16) * 4;
    int32_t acc = 0;
    for (int64_t c = c0; c < c1; c += TERN_TG_COLS) {
        const uint8_t *b = base + (c / TERN_TG_COLS) * TERN_TG_BYTES;
        for (int sh = 0; sh < 4; sh++)
            for (int j = 0; j < 4; j++) {
                int t = ((b[j] >> (2 * sh)) & 3) - 1;
                acc += t * q[c + 4 * sh + j];
            }
    }
    return acc;
}

void tern_ref_tgemm(const tern_tmat *w, const int8_t *q, const float *s, const int32_t *qsum,
                    int64_t n_tok, float *y, int64_t ldy, int64_t o0, int64_t o1)
{
    (void)qsum;
    const int64_t k = w->k;
    for (int64_t t = 0; t < n_tok; t++) {
        const int8_t *qt = q + t * k;
        for (int64_t o = o0; o < o1; o++) {
            float v;
            if (!w->blocks) {
                v = ((float)dot_row(w, o, qt, 0, k) / s[t]) * w->alpha;
            } else {
                const float *r = w->rs + (o / 16) * w->nb * 16 + o % 16;
                float a = 0.0f;
                for (int64_t b = 0; b < w->nb; b++) {
                    int32_t acc = dot_row(w, o, qt, b * TERN_TBLOCK, (b + 1) * TERN_TBLOCK);
                    a = a + (float)acc * r[b * 16];
                }
                v = (a / s[t]) * w->dmax[o];
            }
            y[t * ldy + o] = v;
        }
    }
}

void tern_ref_kv_quant_q8(const float *x, int64_t n, int64_t d, int8_t *q, float *scale,
                          int32_t *sum)
{
    for (int64_t r = 0; r < n; r++) {
        const float *xr = x + r * d;
        int8_t *qr = q + r * d;
        const float amax = row_amax(xr, d);
        if (tern_kv_zero_row(amax, qr, d, scale + r, sum ? sum + r : NULL)) continue;
        const float s = 127.0f / amax;
        int32_t acc = 0;
        for (int64_t i = 0; i < d; i++) acc += qr[i] = tern_kv_code(xr[i], s);
        if (sum) sum[r] = acc;
        scale[r] = amax / 127.0f;
    }
}
