/* kernels.h: the compute kernels of a BitNet b1.58 forward pass (BITNET_SPEC.md 2.2-2.7).
 *
 * Contract:
 * - Every kernel has a scalar reference ("ref", the specification) and SIMD variants chosen at
 *   run time (tern_kernels_init; env TERN_SIMD=ref|avx2|avx512 forces one). Kernels marked EXACT
 *   give bit-identical results in every variant: activation quantization, the ternary GEMM,
 *   RMSNorm, RoPE, relu2_mul, axpy/attn_mix (V in f32, f16 or int8), the KV int8 quantizer and
 *   the f16 conversions. The others state an error bound against their reference next to their
 *   declaration.
 * - Kernels allocate nothing (callers own scratch and outputs), keep no mutable state, are safe
 *   to call from many threads at once, and never exit. Row-range kernels compute output rows
 *   [o0, o1) and write nothing else, so a thread pool may split rows between threads and the
 *   result does not depend on how it splits (each output element is computed the same way
 *   whoever computes it).
 * - Arguments that come from code (shapes, ranges, pointers) are checked with TERN_ASSERT;
 *   data that comes from files (ternary blobs) is validated and rejected with a tern_status.
 * - tern_kernels_force switches the variant of the whole process: call it only while no kernel
 *   runs (tests, benchmarks).
 *
 * Numerics (spec 2.3): activations are quantized per token, amax = max(max_k |x|, 1e-5f),
 * s = 127.0f / amax, q = clamp(round_half_even(x * s), -128, 127). A ternary matrix holds
 * t[o][k] in {-1, 0, +1} and either one scale alpha (I2_S, plain trits, or TQ files whose block
 * scales are all equal) or per-256-block scales (other TQ files). With acc = sum_k t*q (exact
 * int32) the output is
 *     single scale:  y = ((float)acc / s) * alpha
 *     block scales:  A = 0.0f; for b in order: A = A + (float)acc_b * r[o][b];  y = (A / s) * D[o]
 * where D[o] is the row's block scale of largest magnitude (first one) and r[o][b] = d[o][b] / D[o]
 * (float division at load time). When every block scale of a row is equal, r = 1 and the
 * block formula gives exactly the single-scale result (the partial sums are integers below
 * 2^24, hence the limit k <= 131072), so a model reads the same from I2_S, TQ2_0 and TQ1_0.
 */
#ifndef TERNPIPE_KERNELS_H
#define TERNPIPE_KERNELS_H

#include <stdbool.h>
#include <stdint.h>

#include "ternpipe/gguf.h"
#include "ternpipe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- variant selection ---- */

typedef enum tern_simd {
    TERN_SIMD_REF,
    TERN_SIMD_AVX2,
    TERN_SIMD_AVX512,
    TERN_SIMD_AMX, /* avx512 with the ternary GEMM on AMX tiles for many tokens */
    TERN_SIMD_COUNT
} tern_simd;

/* Once at start: the variant named by env TERN_SIMD, else the best one the CPU supports; logs
 * the choice once. Returns the active variant, or TERN_SIMD_COUNT when TERN_SIMD names an
 * unknown or unsupported variant (the error is logged and the best supported variant is active,
 * so kernels still work; callers should treat it as a start-up error). Kernels called before
 * init initialize lazily. */
tern_simd tern_kernels_init(void);
/* Same, reporting a bad TERN_SIMD through st (TERN_EINVAL unknown name, TERN_EUNSUPPORTED
 * when the CPU lacks it). */
tern_code tern_kernels_init_checked(tern_simd *out, tern_status *st);
/* Tests and benchmarks: switch variant; TERN_EUNSUPPORTED if the CPU (or build) lacks it. */
tern_code tern_kernels_force(tern_simd v, tern_status *st);
tern_simd tern_kernels_active(void);
bool tern_simd_supported(tern_simd v);
const char *tern_simd_name(tern_simd v); /* "ref", "avx2", "avx512", "amx"; "?" out of range */

/* ---- ternary matrices (internal layout, built at load) ----
 * Rows are packed in groups of tern_tmat_row_granularity() rows (16): 2-bit codes t+1, 64 bytes
 * per group per 16 columns, so one 4-byte activation broadcast serves 16 rows. Rows past n in
 * the last group are zero. Any row range works; ranges starting at multiples of the
 * granularity avoid computing a shared group twice. Immutable after construction. */
typedef struct tern_tmat tern_tmat;

/* From a GGUF tensor blob: type I2_S (36, spec 3.4), TQ2_0 (35) or TQ1_0 (34, spec 3.5).
 * k = ne0 (columns, input features), n = ne1 (rows, outputs). Requires k % 16 == 0 (k % 256
 * for TQ types; I2_S's 128-blocks run over the flattened tensor, so its rows need not start on
 * one: the 3B sibling's 8640 columns), 16 <= k <= 131072, n >= 1, nbytes equal to the type's
 * exact size, codes in
 * {-1,0,+1} (I2_S/TQ2_0 code 3 is rejected) and finite scales. */
tern_code tern_tmat_from_ggml(tern_tmat **out, tern_ggml_type type, const void *data,
                              uint64_t nbytes, int64_t k, int64_t n, tern_status *st);
/* From plain trits (tests, synth): t values in {-1,0,+1}, one scale alpha (finite). */
tern_code tern_tmat_from_trits(tern_tmat **out, const int8_t *t /* [n][k] */, int64_t n, int64_t k,
                               float alpha, tern_status *st);
void tern_tmat_free(tern_tmat *m); /* NULL ok */
int64_t tern_tmat_rows(const tern_tmat *m);
int64_t tern_tmat_cols(const tern_tmat *m);
int64_t tern_tmat_row_granularity(const tern_tmat *m); /* efficient split points: multiples */
uint64_t tern_tmat_bytes(const tern_tmat *m);          /* bytes streamed per full GEMM pass */
bool tern_tmat_block_scales(const tern_tmat *m);       /* true: per-256-block scales kept */
float tern_tmat_alpha(const tern_tmat *m);             /* single scale; 0 with block scales */
void tern_tmat_unpack_row(const tern_tmat *m, int64_t row, int8_t *t /* [k] */); /* tests */

/* ---- activation quantization and ternary GEMM (EXACT) ---- */

/* Per token (row) int8 quantization (spec 2.3). s[i] = 127/amax_i, qsum[i] = sum_k q[i][k].
 * x may hold any finite values (NaN elements quantize to -128 and do not count for amax). */
void tern_act_quant(const float *x /* [n][k] */, int64_t n, int64_t k, int8_t *q /* [n][k] */,
                    float *s /* [n] */, int32_t *qsum /* [n] */);

/* y[t][o] for t < n_tok and o in [o0, o1) (formula at the top). q, s and qsum must come from
 * one tern_act_quant call with the matrix's k (the SIMD kernels use qsum to turn the t+1
 * codes back into t). Requires 0 <= o0 < o1 <= rows, n_tok >= 1, ldy >= o1 (if n_tok > 1).
 * Each weight group is read once per call and applied to blocks of tokens (register
 * blocking), so batched decode and prefill cost little more than one token. */
void tern_tgemm(const tern_tmat *w, const int8_t *q /* [n_tok][k] */, const float *s /* [n_tok] */,
                const int32_t *qsum /* [n_tok] */, int64_t n_tok, float *y /* [n_tok][ldy] */,
                int64_t ldy, int64_t o0, int64_t o1);

/* ---- float ops ---- */

/* RMSNorm (spec 2.2), EXACT: ss = sum of x^2 in double over 8 interleaved lanes (lane j takes
 * i % 8 == j, in order) added as ((l0+l4)+(l2+l6))+((l1+l5)+(l3+l7)); scale = 1.0f /
 * sqrtf((float)(ss / n) + eps); y[i] = (x[i] * scale) * w[i]. y may alias x. */
void tern_rmsnorm(const float *x /* [n] */, const float *w /* [n] */, int64_t n, float eps,
                  float *y /* [n] */);
/* tern_rmsnorm of each of n_rows contiguous rows (EXACT: the same bits as row by row; several
 * rows' sums run side by side, each a dependency chain of its own). y may alias x. */
void tern_rmsnorm_rows(const float *x /* [n_rows][n] */, int64_t n_rows, int64_t n, const float *w,
                       float eps, float *y /* [n_rows][n] */);

/* RoPE tables (spec 2.5) for positions pos0 .. pos0+n_pos-1: angle = p * theta^(-2j/head_dim)
 * computed in double, cos and sin rounded to float. */
void tern_rope_table(float *cos_t /* [n_pos][head_dim/2] */, float *sin_t /* [n_pos][head_dim/2] */,
                     int64_t pos0, int64_t n_pos, int64_t head_dim, double theta);
/* NEOX rotation of n_heads vectors at one position (pairs j and j + head_dim/2), EXACT:
 * x'[j] = x[j]*c - x[j+h]*s, x'[j+h] = x[j]*s + x[j+h]*c (no fused multiply-add). head_dim
 * even. Against the exact double formula the error is at most 3 * 2^-24 * (|x[j]| + |x[j+h]|). */
void tern_rope_neox(float *x /* [n_heads][head_dim] */, int64_t n_heads, int64_t head_dim,
                    const float *cos_row /* [head_dim/2] */,
                    const float *sin_row /* [head_dim/2] */);

/* In-place softmax, max-subtracted, fp32 in and out, n >= 1. Reference: d = x[i] - m in
 * float, e[i] = (float)exp((double)d), sum of the e[i] in double, x[i] = e[i] * (float)(1/sum);
 * e[i] and x[i] below FLT_MIN become 0 (subnormal weights would slow every product with V
 * by a microcode assist, and change nothing that matters).
 * SIMD does the same operations with a double-precision polynomial exp (a few double ulps) and
 * lane sums in double, so it equals the reference except where a double result lies within
 * ~1e-16 (relative) of a float rounding boundary ("REFERENCE-EQUAL"; tests demand equality on
 * their random data). The bound that always holds: |y - ref| <= 2^-23 * ref + 1e-37. This
 * keeps the int8 quantizer downstream from flipping between variants (tests/golden). */
void tern_softmax(float *x /* [n] */, int64_t n);

/* m = max(g, 0)^2 * u, as (r * r) * u, EXACT. m may alias g or u. */
void tern_relu2_mul(const float *g /* [n] */, const float *u /* [n] */, int64_t n,
                    float *m /* [n] */);
/* m = silu(g) * u = (g / (1 + expf(-g))) * u (the 1bitLLM models' gated SiLU, spec 7.3), one
 * scalar implementation in every variant (so EXACT by construction). m may alias g or u. */
void tern_silu_mul(const float *g /* [n] */, const float *u /* [n] */, int64_t n,
                   float *m /* [n] */);

/* Attention helpers (the model loops over heads and KV blocks). fp32 K/V rows with a stride.
 * tern_dot_f32: products exact in double, sums in double, rounded once to float; SIMD sums
 * in double lanes (another order): REFERENCE-EQUAL as tern_softmax, and always
 *   |dot - ref| <= 2^-24 * |ref| + n * 2^-52 * sum_i |a_i * b_i|. */
float tern_dot_f32(const float *a /* [n] */, const float *b /* [n] */, int64_t n);
/* y[i] = y[i] + a * x[i] (no fma), EXACT. */
void tern_axpy_f32(float *y /* [n] */, float a, const float *x /* [n] */, int64_t n);

/* Scores and value mixes over K/V rows of fp32, F16 (IEEE binary16) or int8 with one float
 * scale per row (one head at one position). Converting an element to double is exact and so is
 * its product with a float, so every variant sums in order i = 0 .. d-1 in double exactly as
 * the reference: all of these are EXACT.
 * - scores: out[j] = (float)(sum_i (double)q[i] * (double)k[j][i]) * scale; for int8 rows
 *   ((float)(sum ...) * ks[j*ldks]) * scale;
 * - mixes: out[i] = out[i] + w_j * v[j][i] for j in order, no fma, w_j = p[j] (fp32, F16) or
 *   p[j] * vs[j*ldvs] (int8), in flush-to-zero arithmetic: a product or sum below FLT_MIN in
 *   magnitude is 0, and so is such an input (every variant and reference alike; otherwise an
 *   underflowing product, a small weight times a small V element, costs a microcode assist:
 *   1.7x the mix's time in a 512-token prefill). Against IEEE gradual underflow an element
 *   differs only where a product, weight or partial sum lies below FLT_MIN, by amounts of
 *   the order of n * FLT_MIN * max(1, |v|) (the weights from tern_softmax are never below it).
 * The _rows forms take P <= TERN_ATTN_MAX_ROWS query rows at once (the heads of a GQA group for
 * a few tokens of one sequence: each K/V row is converted once for all of them), d <=
 * TERN_ATTN_MAX_HD, over keys held in blocks of blk rows (a paged cache): key j is row j % blk
 * of block k[j / blk] (int8: its scale at ks[j / blk] + (j % blk) * ldks); row r's scores go to
 * out + r * ldo, and its mix takes keys j < len[r] (p + r * ldp) into out[r]. Each row's result
 * is the single-row function's over the same keys, bit for bit. */
typedef enum tern_attn_elem { TERN_ATTN_F32, TERN_ATTN_F16, TERN_ATTN_Q8 } tern_attn_elem;
#define TERN_ATTN_MAX_ROWS 32
#define TERN_ATTN_MAX_HD 256
void tern_attn_scores_rows(tern_attn_elem e, const float *const *q /* [P] rows of d */, int P,
                           const void *const *k /* blocks of [blk][ldk] */,
                           const float *const *ks /* q8: blocks of [blk][ldks] */, int64_t ldks,
                           int64_t n, int64_t blk, int64_t d, int64_t ldk, float scale,
                           float *out /* [P][ldo] */, int64_t ldo);
/* The same scores (EXACT, the bits of tern_attn_scores_rows over the same keys) with K held by
 * columns, as the model's cache holds it: key j is column j % blk of block k[j / blk], whose
 * row i (stride ldk >= blk elements) holds element i of its keys side by side; int8: key j's
 * scale at ks[j / blk] + (j % blk) * ldks. A vector load then takes one element of several
 * keys, each lane one key, for any number of rows. */
void tern_attn_scores_cols(tern_attn_elem e, const float *const *q /* [P] rows of d */, int P,
                           const void *const *k /* blocks of [d][ldk] */,
                           const float *const *ks /* q8: blocks of [blk][ldks] */, int64_t ldks,
                           int64_t n, int64_t blk, int64_t d, int64_t ldk, float scale,
                           float *out /* [P][ldo] */, int64_t ldo);
void tern_attn_mix_rows(tern_attn_elem e, const float *p /* [P][ldp] */, int64_t ldp, int P,
                        const int32_t *len /* [P] */, const void *const *v /* blocks [blk][ldv] */,
                        const float *const *vs /* q8: blocks [blk][ldvs] */, int64_t ldvs,
                        int64_t blk, int64_t d, int64_t ldv, float *const *out /* [P] rows of d */);
void tern_attn_scores(const float *q /* [d] */, const float *k /* [n][ldk] */, int64_t n, int64_t d,
                      int64_t ldk, float scale, float *out /* [n] */);
void tern_attn_mix(const float *p /* [n] */, const float *v /* [n][ldv] */, int64_t n, int64_t d,
                   int64_t ldv, float *out /* [d] */);
void tern_attn_scores_f16(const float *q /* [d] */, const uint16_t *k /* [n][ldk] */, int64_t n,
                          int64_t d, int64_t ldk, float scale, float *out /* [n] */);
void tern_attn_mix_f16(const float *p /* [n] */, const uint16_t *v /* [n][ldv] */, int64_t n,
                       int64_t d, int64_t ldv, float *out /* [d] */);
void tern_attn_scores_q8(const float *q /* [d] */, const int8_t *k /* [n][ldk] */,
                         const float *ks /* [n][ldks] */, int64_t ldks, int64_t n, int64_t d,
                         int64_t ldk, float scale, float *out /* [n] */);
void tern_attn_mix_q8(const float *p /* [n] */, const int8_t *v /* [n][ldv] */,
                      const float *vs /* [n][ldvs] */, int64_t ldvs, int64_t n, int64_t d,
                      int64_t ldv, float *out /* [d] */);
/* int8 KV rows: for each of n rows of d values, amax = max_i |x_i|; when amax is positive and
 * finite, scale = amax / 127 and q_i = clamp(round_half_even(x_i * (127 / amax)), -127, 127),
 * else scale = 0 and q = 0 (NaN elements quantize to 0). EXACT: every variant repeats these
 * float operations lane by lane (max, one product, round half to even, clamp), so a row
 * quantizes the same on every rank, thread and variant. */
void tern_kv_quant_q8(const float *x /* [n][d] */, int64_t n, int64_t d, int8_t *q /* [n][d] */,
                      float *scale /* [n] */);

/* The compute peak of the active variant: `iters` rounds of its widest int8 dot-product
 * instruction (TDPBSUD on AMX tiles: 16384 multiply-adds; vpdpbusd on AVX-512 VNNI: 64;
 * vpmaddubsw + vpaddw on AVX2, which has no dot-accumulate instruction: 32; a scalar
 * multiply-add for ref) or of fp32 FMA, on 16 independent accumulators (AVX2: 12, which fit its
 * registers; AMX: 4 tiles x 4) with nothing from memory. TERN_PEAK_INT8_VEC is the widest
 * vector int8 dot (vpdpbusd for amx; TERN_PEAK_INT8 elsewhere). Returns the multiply-adds done:
 * timed on every thread at once, the GMAC/s no kernel of this variant can pass (the ceilings
 * `ternpipe bench` reports). */
typedef enum tern_peak_kind { TERN_PEAK_INT8, TERN_PEAK_FP32, TERN_PEAK_INT8_VEC } tern_peak_kind;
uint64_t tern_compute_peak(tern_peak_kind kind, int64_t iters);

/* ---- LM head ---- */

/* F16 x F32: y[t][o] = sum_k w[o][k] * x[t][k] for o in [o0, o1), fp32 accumulation, weights
 * read once per call for all tokens. Reference sums in double:
 *   |y - ref| <= (k/8 + 8) * 2^-24 * sum_k |w[o][k] * x[t][k]|.
 * Requires k >= 1, 0 <= o0 < o1, ldy >= o1 (if n_tok > 1). w is ggml row-major F16. */
void tern_gemm_f16(const uint16_t *w /* [n][k] */, const float *x /* [n_tok][k] */, int64_t n_tok,
                   int64_t k, float *y /* [n_tok][ldy] */, int64_t ldy, int64_t o0, int64_t o1);

/* Opt-in int8 head (--head-type q8_0): each row of a table as int8 with a float scale,
 * amax = max_k |w[o][k]|, scale = amax / 127, q = clamp(round_half_even(w * (127 / amax)),
 * -127, 127) (scale 0 and q 0 for a zero row), half the bytes of F16; activations quantized per
 * token by the same rule (tern_head_quant: xq, xs, and xsum = sum_k xq). The GEMM is integer:
 *   y[t][o] = (float)((double)S * ((double)scale[o] * (double)xs[t])),
 *   S = sum_k q[o][k] * xq[t][k]   (exact in int32: k <= TERN_I8MAT_MAX_K),
 * EXACT: every variant gives the reference's bits, whatever the row range or token count.
 * Error against the float head of the unquantized w and x, per logit:
 *   |y - sum w x| <= sum_k (|w| xs / 2 + |xq xs| scale / 2) + 2^-23 |y|.
 * k must be a multiple of 4 (rows are stored in the ternary GEMM's interleaved shape). */
#define TERN_I8MAT_MAX_K 65536 /* 255 * 127 * k < 2^31: vpdpbusd's biased sums stay in int32 */
typedef struct tern_i8mat tern_i8mat;
/* n x k rows (k % 4 == 0), all zero until tern_i8mat_set_row fills them */
tern_code tern_i8mat_new(tern_i8mat **out, int64_t n, int64_t k, tern_status *st);
/* Quantizes row o from k floats; false (row left zero) when one is not finite. */
bool tern_i8mat_set_row(tern_i8mat *m, int64_t o, const float *w /* [k] */);
tern_code tern_i8mat_from_f16(tern_i8mat **out, const uint16_t *w /* [n][k] */, int64_t n,
                              int64_t k, tern_status *st);
/* Rows kept as ggml Q8_0 blocks (32 int8 codes q and an F16 scale d each), the table's own
 * data: one copy serves the head and the lookup (tern_i8mat_row: d * q, the ggml dequantization
 * bit for bit). Then the GEMM sums each block exactly and folds the blocks in order in float:
 *   A = 0; for each block b: A = fmaf(d_b, (float)S_b, A),  S_b = sum_{k in b} q[o][k] xq[t][k]
 *   y[t][o] = (float)((double)A * (double)xs[t]),
 * EXACT too (every variant folds the same way; xsum is not used). Error against the float head
 * of the table's values and the unquantized x: sum_k |d q| xs / 2 + (k/32 + 1) 2^-24 sum_k
 * |d q xq xs|. k must be a multiple of 32. */
tern_code tern_i8mat_new_q8_0(tern_i8mat **out, int64_t n, int64_t k, tern_status *st);
/* Row o from its k/32 ggml Q8_0 blocks (34 bytes each); false (row left zero) for a scale that
 * is not finite. */
bool tern_i8mat_set_row_q8_0(tern_i8mat *m, int64_t o, const void *blocks);
bool tern_i8mat_q8_0(const tern_i8mat *m); /* rows kept as Q8_0 blocks */
/* Row o as k floats (Q8_0: d * q exactly as ggml; per-row scales: q * scale). */
void tern_i8mat_row(const tern_i8mat *m, int64_t o, float *x /* [k] */);
/* Rows [row0, row0 + n) of m as a matrix of their own, sharing m's memory (row0 % 16 == 0;
 * m must outlive it); freed with tern_i8mat_free, which then frees the view only. */
tern_code tern_i8mat_view(tern_i8mat **out, const tern_i8mat *m, int64_t row0, int64_t n,
                          tern_status *st);
void tern_i8mat_free(tern_i8mat *m); /* NULL ok */
int64_t tern_i8mat_rows(const tern_i8mat *m);
int64_t tern_i8mat_cols(const tern_i8mat *m);
uint64_t tern_i8mat_bytes(const tern_i8mat *m);
/* n_tok rows of k floats: tern_kv_quant_q8 (xq, xs) and each row's sum of xq (xsum) */
void tern_head_quant(const float *x /* [n_tok][k] */, int64_t n_tok, int64_t k,
                     int8_t *xq /* [n_tok][k] */, float *xs /* [n_tok] */,
                     int32_t *xsum /* [n_tok] */);
void tern_gemm_i8(const tern_i8mat *w, const int8_t *xq /* [n_tok][k] */,
                  const float *xs /* [n_tok] */, const int32_t *xsum /* [n_tok] */, int64_t n_tok,
                  float *y /* [n_tok][ldy] */, int64_t ldy, int64_t o0, int64_t o1);

/* Block-quantized tables used as they are (ggml Q8_0 and Q6_K, as --token-embedding-type
 * writes them): rows of k elements, k a multiple of the type's block (32, 256), a row is
 * tern_ggml_nbytes(type, k, k) bytes. Dequantization, as ggml's dequantize_row_*:
 *   Q8_0 (34-byte blocks: f16 d, int8 q[32]):  w[i] = d * q[i]
 *   Q6_K (210-byte super-blocks: ql[128], qh[64], int8 sc[16], f16 d): for element e of the
 *   block, h = e / 128, g = (e % 128) / 32, l = e % 32,
 *     q = ((ql[64h + 32(g & 1) + l] >> 4(g >> 1)) & 15) | (((qh[32h + l] >> 2g) & 3) << 4),
 *     w[e] = (d * sc[8h + 2g + l / 16]) * (q - 32)
 * Every such product is exact in float (at most 11 + 8 + 6 significant bits), so the
 * dequantized value does not depend on the order of the products: ggml's value exactly.
 * tern_dequant_row: one scalar implementation in every variant (EXACT by construction).
 * tern_gemm_q: y[t][o] = sum_k w[o][k] * x[t][k] over the dequantized w, for o in [o0, o1) with
 * w pointing at row 0; fp32 accumulation, each row summed the same way whatever the range
 * (so a head split across ranks gives the same bits). Reference: the products and sum in
 * double, rounded once. Bound, as tern_gemm_f16 with w dequantized:
 *   |y - ref| <= (k/8 + 8) * 2^-24 * sum_k |w[o][k] * x[t][k]|.
 * Scales must be finite (the loader checks them). */
void tern_dequant_row(tern_ggml_type type, const void *row, int64_t k, float *out /* [k] */);
void tern_gemm_q(tern_ggml_type type, const void *w /* [n] rows */, int64_t k,
                 const float *x /* [n_tok][k] */, int64_t n_tok, float *y /* [n_tok][ldy] */,
                 int64_t ldy, int64_t o0, int64_t o1);

/* ---- sampling noise (sampler.h's counter-based draws) ----
 * A row's key hashes (seed, position); an id's uniform hashes (key, id) with splitmix64's
 * finalizer (mix) into one of 2^53 equal cells of (0, 1) (tern_noise_cell):
 *   key = mix(mix(seed + K0) ^ (pos * K1 + K2)),  cell = mix(key ^ (id * K3 + K4)) >> 11,
 *   u = min((double)(cell + 0.5) / 2^53, 1 - 2^-53)
 * (the constants in kernels-internal.h; cell + 0.5 rounds to a double, up to 2^53 for the last
 * cell, hence the min: u < 1 always). Its Gumbel noise is g = -log(-log(u)) with tern_log_det,
 * so every variant, compiler and C library computes the same bits. */
uint64_t tern_noise_key(uint64_t seed, int64_t pos);
double tern_noise_cell(uint64_t cell);
double tern_noise_uniform(uint64_t key, int64_t id);
double tern_noise_gumbel(uint64_t key, int64_t id);
/* Natural log of a positive normal double, within 2 ulp, the same bits everywhere: m in
 * [sqrt(1/2), sqrt(2)) and e with x = m * 2^e, s = (m - 1) / (m + 1), log m = 2s (1 + s^2/3 +
 * ... + s^18/19) in Horner form (fma), e * ln2 in two parts. Outside that domain: undefined. */
double tern_log_det(double x);

/* e^d for d <= 0 (d below -700, or NaN, counts as -700), within 2 ulp, the same bits
 * everywhere: n = round(d log2 e), r = d - n ln2 (two parts, fma), the Taylor series of e^r to
 * r^13 (Horner, fma), times 2^n (exact: n >= -1010). */
double tern_exp_det(double d);
/* The online softmax sums of a run of logits in TERN_LSE_LANES lanes by id: for i in [0, n),
 * with x = (double)v[i] * inv_t (v NaN as -inf) above -inf and l = (id0 + i) % TERN_LSE_LANES,
 * in id order:  x > m[l]: z[l] = z[l] * tern_exp_det(m[l] - x) + 1, m[l] = x;
 *               else:     z[l] = z[l] + tern_exp_det(x - m[l])
 * (no fma), m and z updated in place (a lane starts at -inf, 0). A lane's state depends on
 * its ids alone, so runs cut anywhere give the same lanes. EXACT: every variant gives the
 * reference's bits. */
#define TERN_LSE_LANES 8
void tern_lse_lanes(const float *v, int64_t n, int64_t id0, double inv_t, double *m, double *z);

/* The Gumbel-max of a run of logits v[0..n) with ids id0..id0+n-1 (n >= 1): v NaN counts as
 * -inf; x = (double)v * inv_t (inv_t > 0; 0: a greedy row, only top and top_i are computed,
 * the rest left as for no x). mx: the largest x above -inf (-inf: none);
 * g, g_i: the largest x + tern_noise_gumbel(key, id) over x > -inf and its index in the run,
 * the lowest on ties (-inf, -1: none); top, top_i: the largest v and its index, the lowest on
 * ties (the run's first when every v is -inf). EXACT: every variant gives the reference's
 * (sequential) result. */
typedef struct tern_gumbel_run {
    double mx, g;
    int64_t g_i;
    float top;
    int64_t top_i;
} tern_gumbel_run;
void tern_gumbel_max(const float *v, int64_t n, int64_t id0, double inv_t, uint64_t key,
                     tern_gumbel_run *out);

/* ---- f16 <-> f32 (EXACT; IEEE binary16, round to nearest even, as F16C) ---- */
void tern_f16_to_f32(const uint16_t *h /* [n] */, float *f /* [n] */, int64_t n);
void tern_f32_to_f16(const float *f /* [n] */, uint16_t *h /* [n] */, int64_t n);
float tern_f16_to_f32_1(uint16_t h);
uint16_t tern_f32_to_f16_1(float f);

#ifdef __cplusplus
}
#endif
#endif
