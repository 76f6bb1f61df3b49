/* kernels-internal.h: what the kernel variants share: the internal ternary layout, the
 * int8 head matrix, and the table of entry points each variant fills.
 *
 * Ternary layout (tern_tmat): rows in groups of TERN_TG_ROWS = 16, columns in chunks of
 * TERN_TG_COLS = 16. Chunk c of group g is 64 bytes at codes + (g * kc + c) * 64; byte r*4 + j
 * holds, in bits 2s+1..2s, the code t+1 (0, 1, 2; never 3) of row 16g + r and column
 * 16c + 4s + j. So the int32 lane r of a 64-byte vector shifted right by 2s and masked with 3
 * holds four codes of row r that pair with the four activations q[16c+4s .. 16c+4s+3]: one
 * broadcast of those 4 bytes feeds 16 rows (vpdpbusd) or 8 rows (two 32-byte halves, maddubs).
 * Padding rows (past n) hold code 1 (t = 0). Block scales (when kept): rs[(g * nb + b) * 16 + r]
 * = r[o][b] and dmax[o] = D[o] (formula in kernels.h), nb = k / 256.
 *
 * Invariants: k % 16 == 0 (k % 256 with block scales), 16 <= k <= TERN_TMAT_MAX_K, n >= 1,
 * codes <= 2, buffers 64-byte
 * aligned, immutable after construction.
 */
#ifndef TERN_KERNELS_INTERNAL_H
#define TERN_KERNELS_INTERNAL_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "ternpipe/kernels.h"
#include "ternpipe/log.h"

/* Every float operation of the EXACT kernels must round on its own: clang would contract
 * a*b+c into fma where FMA is enabled (the SIMD files, -march=native). GCC keeps
 * -ffp-contract=off in ISO C mode (-std=c11, which the build uses). */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

/* The value mixes run in flush-to-zero arithmetic in every variant, the references included
 * (kernels.h): x86's MXCSR FTZ (a result below FLT_MIN is 0) and DAZ (such an input reads as
 * 0), set around each call and restored after. A small weight times a small V element
 * underflows, and each underflowing vector product cost a microcode assist of ~150 cycles: in
 * a 512-token prefill of a random 2B-4T model they made the mix 1.7x slower. Elsewhere the
 * arithmetic stays IEEE, so a call begins and ends the mode. */
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define TERN_MXCSR_FTZ_DAZ 0x8040u
static inline unsigned tern_ftz_begin(void)
{
    const unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | TERN_MXCSR_FTZ_DAZ);
    return csr;
}
static inline void tern_ftz_end(unsigned csr)
{
    _mm_setcsr(csr);
}
#else /* IEEE gradual underflow where no such mode is known (only the references run there) */
static inline unsigned tern_ftz_begin(void)
{
    return 0;
}
static inline void tern_ftz_end(unsigned csr)
{
    (void)csr;
}
#endif

#if defined(__x86_64__) || defined(__i386__)
/* A range of bytes brought into L2 a few lines at a time, spread over `calls` steps of a loop:
 * the heads' next rows while the current ones compute (head-f16.h, head-i8.h; attention takes
 * tern_pf_lines a row at a time, attn-rows.h). step: lines per step, 0 (nothing) when off or
 * with no steps. */
typedef struct tern_pf {
    const uint8_t *p, *end;
    int64_t step;
} tern_pf;
static inline tern_pf tern_pf_spread(const uint8_t *p, const uint8_t *end, int64_t calls, bool on)
{
    tern_pf f = {p, end, 0};
    if (on && calls > 0) f.step = ((end - p) / 64 + calls - 1) / calls;
    return f;
}
/* every cache line of [p, p + len) towards L2 */
static inline void tern_pf_lines(const uint8_t *p, int64_t len)
{
    const uintptr_t end = (uintptr_t)(p + len);
    for (uintptr_t x = (uintptr_t)p & ~(uintptr_t)63; x < end; x += 64)
        _mm_prefetch((const char *)x, _MM_HINT_T1);
}
static inline void tern_pf_run(tern_pf *f)
{
    const int64_t n = f->end - f->p < f->step * 64 ? f->end - f->p : f->step * 64;
    if (n <= 0) return;
    tern_pf_lines(f->p, n);
    f->p += n;
}
#endif

#define TERN_TG_ROWS 16
#define TERN_TG_COLS 16
#define TERN_TG_BYTES 64
#define TERN_TBLOCK 256
/* 128 * k must stay below 2^24 so int32 dot products and their float partial sums are exact
 * (kernels.h: the block-scale formula reduces exactly to the single-scale one). */
#define TERN_TMAT_MAX_K 131072

struct tern_tmat {
    int64_t n, k;     /* rows (outputs), columns (inputs) */
    int64_t n_groups; /* ceil(n / 16) */
    int64_t kc;       /* k / 16 */
    uint8_t *codes;   /* [n_groups][kc][64] */
    bool blocks;      /* block scales kept (rs, dmax) instead of alpha */
    float alpha;      /* single scale */
    int64_t nb;       /* k / 256 when blocks */
    float *rs;        /* [n_groups][nb][16] */
    float *dmax;      /* [n_groups * 16] */
    uint64_t bytes;   /* streamed per pass: codes + scales */
};

/* int8 head rows in the ternary layout's shape with bytes for codes: rows in groups of 16,
 * columns in chunks of 4; chunk c of group g is 64 bytes at qu + (g * kc + c) * 64 and byte
 * r * 4 + j holds q[16g + r][4c + j] + 128 (biased to an unsigned byte, 1..255). So int32 lane
 * r of a 64-byte vector is four weights of row r that pair with one broadcast int32 of four
 * signed activations (vpdpbusd: 16 rows, the activations' sum times 128 taken off; maddubs: 8
 * rows per 32-byte half, unbiased first), and no lane sums are needed. Rows past n are zero
 * (bytes 128). k % 4 == 0. */
struct tern_i8mat {
    int64_t n, k;
    int64_t n_groups, kc; /* ceil(n / 16), k / 4 */
    uint8_t *qu;          /* [n_groups][kc][64] */
    float *scale;         /* per-row scales: [n_groups * 16] (0 past n); NULL with blocks */
    uint16_t *bscale;     /* Q8_0 blocks: F16 d of [n_groups][nb][16] (0 past n); else NULL */
    int64_t nb;           /* k / 32 with blocks, else 0 */
    bool view;            /* rows of another matrix: its memory is not ours */
};

static inline int8_t tern_i8mat_q(const tern_i8mat *m, int64_t o, int64_t i)
{
    return (int8_t)(m->qu[((o / 16) * m->kc + i / 4) * 64 + (o % 16) * 4 + i % 4] ^ 0x80);
}

/* The F16 scale of block b of row o of a Q8_0-block matrix, as a float. */
static inline float tern_i8mat_d(const tern_i8mat *m, int64_t o, int64_t b)
{
    return tern_f16_to_f32_1(m->bscale[((o / 16) * m->nb + b) * 16 + o % 16]);
}

float tern_round_half_even(float v);

/* kernels.h's int8 KV code of x at s = 127 / amax: round half to even, NaN to 0, clamp to
 * [-127, 127] (the reference's steps; SIMD variants use them for tails) */
static inline int8_t tern_kv_code(float x, float s)
{
    float v = tern_round_half_even(x * s);
    if (!(v >= -127.0f)) v = v != v ? 0.0f : -127.0f;
    if (v > 127.0f) v = 127.0f;
    return (int8_t)(int32_t)v;
}

/* A row whose amax is not positive and finite quantizes to zeros with scale 0 (sum 0):
 * true when it did. */
static inline bool tern_kv_zero_row(float amax, int8_t *q, int64_t d, float *scale, int32_t *sum)
{
    if (sum) *sum = 0;
    if (amax > 0.0f && isfinite(amax)) return false;
    memset(q, 0, (size_t)d);
    *scale = 0.0f;
    return true;
}

/* Bytes of one K/V element of the attention kernels. */
static inline size_t tern_attn_elem_bytes(tern_attn_elem e)
{
    return e == TERN_ATTN_F32 ? 4 : e == TERN_ATTN_F16 ? 2 : 1;
}

/* The int8 head's logit from its exact integer sum: the one formula of every variant. */
static inline float tern_i8_logit(int32_t isum, float ws, float xs)
{
    return (float)((double)isum * ((double)ws * (double)xs));
}

/* t + 1 of row o, column c (tests and the reference). */
static inline int tern_tmat_code(const tern_tmat *m, int64_t o, int64_t c)
{
    const uint8_t *chunk = m->codes + ((o / 16) * m->kc + c / 16) * TERN_TG_BYTES;
    int r = (int)(o % 16), s = (int)((c % 16) / 4), j = (int)(c % 4);
    return (chunk[r * 4 + j] >> (2 * s)) & 3;
}

/* Unaligned 4-byte load without aliasing trouble. */
static inline int32_t tern_load_i32(const void *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

typedef struct tern_kernel_vtable {
    void (*act_quant)(const float *x, int64_t n, int64_t k, int8_t *q, float *s, int32_t *qsum);
    /* kernels.h's tern_kv_quant_q8, and each row's sum of codes where sum is not NULL */
    void (*kv_quant_q8)(const float *x, int64_t n, int64_t d, int8_t *q, float *scale,
                        int32_t *sum);
    void (*tgemm)(const tern_tmat *w, const int8_t *q, const float *s, const int32_t *qsum,
                  int64_t n_tok, float *y, int64_t ldy, int64_t o0, int64_t o1);
    void (*rmsnorm)(const float *x, const float *w, int64_t n, float eps, float *y);
    /* rows at once (NULL: row by row) */
    void (*rmsnorm_rows)(const float *x, int64_t n_rows, int64_t n, const float *w, float eps,
                         float *y);
    void (*rope_neox)(float *x, int64_t n_heads, int64_t head_dim, const float *c, const float *s);
    void (*softmax)(float *x, int64_t n);
    void (*relu2_mul)(const float *g, const float *u, int64_t n, float *m);
    float (*dot)(const float *a, const float *b, int64_t n);
    void (*axpy)(float *y, float a, const float *x, int64_t n);
    void (*attn_scores_rows)(tern_attn_elem e, const float *const *q, int P, const void *const *k,
                             const float *const *ks, int64_t ldks, int64_t n, int64_t blk,
                             int64_t d, int64_t ldk, float scale, float *out, int64_t ldo);
    void (*attn_scores_cols)(tern_attn_elem e, const float *const *q, int P, const void *const *k,
                             const float *const *ks, int64_t ldks, int64_t n, int64_t blk,
                             int64_t d, int64_t ldk, float scale, float *out, int64_t ldo);
    void (*attn_mix_rows)(tern_attn_elem e, const float *p, int64_t ldp, int P, const int32_t *len,
                          const void *const *v, const float *const *vs, int64_t ldvs, int64_t blk,
                          int64_t d, int64_t ldv, float *const *out);
    void (*gemm_f16)(const uint16_t *w, const float *x, int64_t n_tok, int64_t k, float *y,
                     int64_t ldy, int64_t o0, int64_t o1);
    void (*gemm_i8)(const tern_i8mat *w, const int8_t *xq, const float *xs, const int32_t *xsum,
                    int64_t n_tok, float *y, int64_t ldy, int64_t o0, int64_t o1);
    void (*gemm_q)(tern_ggml_type type, const void *w, int64_t k, const float *x, int64_t n_tok,
                   float *y, int64_t ldy, int64_t o0, int64_t o1);
    void (*gumbel_max)(const float *v, int64_t n, int64_t id0, double inv_t, uint64_t key,
                       tern_gumbel_run *out);
    void (*lse_lanes)(const float *v, int64_t n, int64_t id0, double inv_t, double *m, double *z);
    void (*f16_to_f32)(const uint16_t *h, float *f, int64_t n);
    void (*f32_to_f16)(const float *f, uint16_t *h, int64_t n);
    /* kernels.h's peaks, each returning its multiply-adds: the widest int8 dot, fp32 FMA, and
     * the widest vector int8 dot where that is another instruction (NULL: peak_int8's) */
    uint64_t (*peak_int8)(int64_t iters);
    uint64_t (*peak_fp32)(int64_t iters);
    uint64_t (*peak_int8_vec)(int64_t iters);
} tern_kernel_vtable;

extern volatile int32_t tern_peak_sink; /* the peak loops' results go here */

/* 16 (or 12) register accumulators x `iters` rounds of one instruction (the peak loops): OP(i)
 * names accumulator i; peak.h writes their sum to tern_peak_sink so that nothing is optimized
 * away. */
#define TERN_PEAK_12(OP) OP(0) OP(1) OP(2) OP(3) OP(4) OP(5) OP(6) OP(7) OP(8) OP(9) OP(10) OP(11)
#define TERN_PEAK_16(OP) TERN_PEAK_12(OP) OP(12) OP(13) OP(14) OP(15)

extern const tern_kernel_vtable tern_kernels_ref;
extern const tern_kernel_vtable tern_kernels_avx2;
extern const tern_kernel_vtable tern_kernels_avx512;
/* gemm-amx.c: the ternary GEMM and the int8 head on AMX tiles (the vtable's contracts; few
 * tokens, block scales and k % 64 != 0 go to the AVX-512 kernels) and the tile peak's
 * multiply-adds (16 x 16384 a round) */
void tern_amx_tgemm(const tern_tmat *w, const int8_t *q, const float *s, const int32_t *qsum,
                    int64_t n_tok, float *y, int64_t ldy, int64_t o0, int64_t o1);
void tern_amx_gemm_i8(const tern_i8mat *w, const int8_t *xq, const float *xs, const int32_t *xsum,
                      int64_t n_tok, float *y, int64_t ldy, int64_t o0, int64_t o1);
uint64_t tern_amx_peak_int8(int64_t iters);

/* The active table (dispatch.c); initializes on first use. */
const tern_kernel_vtable *tern_kernels_vt(void);

/* Reference entry points, also used by SIMD variants for tails and fallbacks. */
void tern_ref_act_quant(const float *x, int64_t n, int64_t k, int8_t *q, float *s, int32_t *qsum);
void tern_ref_kv_quant_q8(const float *x, int64_t n, int64_t d, int8_t *q, float *scale,
                          int32_t *sum);
void tern_ref_tgemm(const tern_tmat *w, const int8_t *q, const float *s, const int32_t *qsum,
                    int64_t n_tok, float *y, int64_t ldy, int64_t o0, int64_t o1);
void tern_ref_rmsnorm(const float *x, const float *w, int64_t n, float eps, float *y);
void tern_ref_rope_neox(float *x, int64_t n_heads, int64_t head_dim, const float *c,
                        const float *s);
void tern_ref_softmax(float *x, int64_t n);
void tern_ref_relu2_mul(const float *g, const float *u, int64_t n, float *m);
float tern_ref_dot(const float *a, const float *b, int64_t n);
void tern_ref_attn_scores(const float *q, const float *k, int64_t n, int64_t d, int64_t ldk,
                          float scale, float *out);
void tern_ref_attn_mix(const float *p, const float *v, int64_t n, int64_t d, int64_t ldv,
                       float *out);
void tern_ref_axpy(float *y, float a, const float *x, int64_t n);
void tern_ref_attn_scores_f16(const float *q, const uint16_t *k, int64_t n, int64_t d, int64_t ldk,
                              float scale, float *out);
void tern_ref_attn_mix_f16(const float *p, const uint16_t *v, int64_t n, int64_t d, int64_t ldv,
                           float *out);
void tern_ref_attn_scores_q8(const float *q, const int8_t *k, const float *ks, int64_t ldks,
                             int64_t n, int64_t d, int64_t ldk, float scale, float *out);
void tern_ref_attn_mix_q8(const float *p, const int8_t *v, const float *vs, int64_t ldvs, int64_t n,
                          int64_t d, int64_t ldv, float *out);
void tern_ref_attn_scores_rows(tern_attn_elem e, const float *const *q, int P, const void *const *k,
                               const float *const *ks, int64_t ldks, int64_t n, int64_t blk,
                               int64_t d, int64_t ldk, float scale, float *out, int64_t ldo);
void tern_ref_attn_scores_cols(tern_attn_elem e, const float *const *q, int P, const void *const *k,
                               const float *const *ks, int64_t ldks, int64_t n, int64_t blk,
                               int64_t d, int64_t ldk, float scale, float *out, int64_t ldo);
void tern_ref_attn_mix_rows(tern_attn_elem e, const float *p, int64_t ldp, int P,
                            const int32_t *len, const void *const *v, const float *const *vs,
                            int64_t ldvs, int64_t blk, int64_t d, int64_t ldv, float *const *out);
void tern_ref_gemm_f16(const uint16_t *w, const float *x, int64_t n_tok, int64_t k, float *y,
                       int64_t ldy, int64_t o0, int64_t o1);
void tern_ref_gemm_i8(const tern_i8mat *w, const int8_t *xq, const float *xs, const int32_t *xsum,
                      int64_t n_tok, float *y, int64_t ldy, int64_t o0, int64_t o1);
void tern_ref_gemm_q(tern_ggml_type type, const void *w, int64_t k, const float *x, int64_t n_tok,
                     float *y, int64_t ldy, int64_t o0, int64_t o1);
void tern_ref_f16_to_f32(const uint16_t *h, float *f, int64_t n);
void tern_ref_f32_to_f16(const float *f, uint16_t *h, int64_t n);

/* ggml block layouts (kernels.h): bytes per block, offsets inside a Q6_K super-block */
#define TERN_Q8_0_BYTES 34
#define TERN_Q6_K_BYTES 210
#define TERN_Q6_K_QH 128
#define TERN_Q6_K_SC 192
#define TERN_Q6_K_D 208

/* ---- sampling noise (noise.c, noise-avx2.c, noise-avx512.c): kernels.h's constants and
 * tern_log_det's steps, for every variant ---- */
#define TERN_NOISE_K0 0x9e3779b97f4a7c15ULL
#define TERN_NOISE_K1 0xd1b54a32d192ed03ULL
#define TERN_NOISE_K2 0x8cb92ba72f3d8dd7ULL
#define TERN_NOISE_K3 0xaef17502108ef2d9ULL
#define TERN_NOISE_K4 0x632be59bd9b4e019ULL
#define TERN_NOISE_M1 0xbf58476d1ce4e5b9ULL /* splitmix64's finalizer */
#define TERN_NOISE_M2 0x94d049bb133111ebULL
#define TERN_NOISE_U_MAX (1.0 - 0x1p-53)          /* the largest double below 1 */
#define TERN_LOG_SQRT2_BITS 0x3ff6a09e667f3bcdULL /* sqrt(2) rounded, as bits */
/* q = z * (1/3 + z * (1/5 + ... + z / 19)): truncation below 3e-17 for z <= (3 - 2 sqrt 2)^2 */
#define TERN_LOG_SERIES(q, z, SET, FMA, MUL)                                                       \
    do {                                                                                           \
        (q) = SET(1.0 / 19.0);                                                                     \
        (q) = FMA((q), (z), SET(1.0 / 17.0));                                                      \
        (q) = FMA((q), (z), SET(1.0 / 15.0));                                                      \
        (q) = FMA((q), (z), SET(1.0 / 13.0));                                                      \
        (q) = FMA((q), (z), SET(1.0 / 11.0));                                                      \
        (q) = FMA((q), (z), SET(1.0 / 9.0));                                                       \
        (q) = FMA((q), (z), SET(1.0 / 7.0));                                                       \
        (q) = FMA((q), (z), SET(1.0 / 5.0));                                                       \
        (q) = FMA((q), (z), SET(1.0 / 3.0));                                                       \
        (q) = MUL((q), (z));                                                                       \
    } while (0)
/* The SIMD files' lanes merged (each lane's best in id order, run indices, -1: none) by
 * (value, lowest index), as the sequential reference's result. */
static inline tern_gumbel_run tern_gumbel_lanes(int lanes, const double *mx, const double *g,
                                                const int64_t *gi, const double *top,
                                                const int64_t *ti)
{
    tern_gumbel_run r = {-INFINITY, -INFINITY, -1, -INFINITY, -1};
    for (int l = 0; l < lanes; l++) {
        if (mx[l] > r.mx) r.mx = mx[l];
        if (gi[l] >= 0 && (r.g_i < 0 || g[l] > r.g || (g[l] == r.g && gi[l] < r.g_i)))
            r.g = g[l], r.g_i = gi[l];
        if (ti[l] >= 0 &&
            (r.top_i < 0 || top[l] > r.top || (top[l] == (double)r.top && ti[l] < r.top_i)))
            r.top = (float)top[l], r.top_i = ti[l];
    }
    return r;
}
void tern_ref_gumbel_max(const float *v, int64_t n, int64_t id0, double inv_t, uint64_t key,
                         tern_gumbel_run *out);
void tern_ref_lse_lanes(const float *v, int64_t n, int64_t id0, double inv_t, double *m, double *z);
void tern_avx2_lse_lanes(const float *v, int64_t n, int64_t id0, double inv_t, double *m,
                         double *z);
void tern_avx512_lse_lanes(const float *v, int64_t n, int64_t id0, double inv_t, double *m,
                           double *z);
/* The ids of a run before its first whole block of TERN_LSE_LANES (the lanes' block starts at
 * an id that is a multiple of them), copied to their lanes of head (zeros elsewhere): their
 * count, 0 when the run starts a block; *lane: the first one's lane. */
static inline int tern_lse_head(const float *v, int64_t n, int64_t id0, float *head, int *lane)
{
    const int s0 = (int)((uint64_t)id0 % TERN_LSE_LANES);
    const int cnt = s0 == 0 ? 0 : n < TERN_LSE_LANES - s0 ? (int)n : TERN_LSE_LANES - s0;
    for (int j = 0; j < TERN_LSE_LANES; j++) head[j] = 0.0f;
    for (int j = 0; j < cnt; j++) head[s0 + j] = v[j];
    *lane = s0;
    return cnt;
}
#define TERN_EXP_MIN (-700.0) /* tern_exp_det's floor: 2^n stays a normal number */
void tern_avx2_gumbel_max(const float *v, int64_t n, int64_t id0, double inv_t, uint64_t key,
                          tern_gumbel_run *out);
void tern_avx512_gumbel_max(const float *v, int64_t n, int64_t id0, double inv_t, uint64_t key,
                            tern_gumbel_run *out);

/* ln 2 in two parts (the high one has 32 significant bits, so n * it is exact for |n| < 2^21)
 * and log2 e: the range reductions of the exp and log kernels */
#define TERN_LN2_HI 6.93147180369123816490e-01
#define TERN_LN2_LO 1.90821492927058770002e-10
#define TERN_LOG2E 1.4426950408889634

/* exp(r) for |r| <= ln2/2 by its Taylor series to r^13 (truncation < 2e-16), Horner form, in
 * the SIMD double type of the caller: SET broadcasts a constant, FMA(a, b, c) = a * b + c. */
#define TERN_EXP_TAYLOR13(p, r, SET, FMA)                                                          \
    do {                                                                                           \
        static const double c_[14] = {1.0 / 6227020800.0,                                          \
                                      1.0 / 479001600.0,                                           \
                                      1.0 / 39916800.0,                                            \
                                      1.0 / 3628800.0,                                             \
                                      1.0 / 362880.0,                                              \
                                      1.0 / 40320.0,                                               \
                                      1.0 / 5040.0,                                                \
                                      1.0 / 720.0,                                                 \
                                      1.0 / 120.0,                                                 \
                                      1.0 / 24.0,                                                  \
                                      1.0 / 6.0,                                                   \
                                      0.5,                                                         \
                                      1.0,                                                         \
                                      1.0};                                                        \
        (p) = SET(c_[0]);                                                                          \
        for (int i_ = 1; i_ < 14; i_++) (p) = FMA((p), (r), SET(c_[i_]));                          \
    } while (0)

#endif
