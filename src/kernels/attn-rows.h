/* attn-rows.h: attention scores and value mixes for several query rows at once (the heads of a
 * GQA group for a few tokens of one sequence: kernels.h, tern_attn_scores_rows), one driver
 * for the AVX2 and AVX-512 files.
 *
 * Scores: the rows go in the double lanes (qT[i][lane] = (double)q_row[i], built once per
 * call), each key's elements are converted to double once (exact) and broadcast, and each
 * lane sums its products in order i = 0 .. d-1 with one fma each. A product of a float and an
 * F16/int8/float value is exact in double, so fma(q, k, acc) rounds as acc + q*k does: every
 * score is the reference's sequential double sum, EXACT, in any lane, tiling or variant. Eight
 * keys at a time keep eight independent fma chains per row group. With K held by columns
 * (tern_attn_scores_cols, the model's cache) the keys go in the lanes instead, for any number
 * of rows (below).
 * Mixes: dims in the float lanes, each row's accumulator out = out + w * v in key order (no
 * fma: EXACT as the references), a group of up to AR_MR rows sharing each converted V chunk,
 * each broadcast weight serving up to AR_MIX_CH chunks (one AVX-512 thread, f16 V, d = 128, 512
 * keys: 1 row 19 -> 28-38 GMAC/s, 4 rows 47-53 -> 69-73, 32 rows 63 -> 73-75).
 *
 * The including file defines: AR_DL (double lanes), AR_VD (its vector), AR_ZERO_PD(),
 * AR_LOAD_PD(p), AR_SET1_PD(x), AR_FMA_PD(a, b, c) (a * b + c), AR_CVT_ROW
 * (elem, src, d, double *dst: a row's d elements as doubles), AR_FL (float lanes), AR_VF,
 * AR_LOADV(elem, src, n) (n <= AR_FL elements as floats, zeros after), AR_LOADF(p, n),
 * AR_STOREF(p, v, n) (n <= AR_FL floats), AR_ADD_PS, AR_MUL_PS, AR_SET1_PS, AR_MIX_ACC (the
 * mix sums a pass may keep in registers),
 * AR_QT_GROUP(q, r0, P, d, dst) (rows r0 .. r0+AR_DL-1 of q as doubles, row in the lane:
 * dst[i * AR_DL + l] = (double)q[r0+l][i], 0.0 for rows from P on) and
 * AR_STORE_SCORES(acc, nk, ksv, scale, out, ldo, rows) (the references' epilogue of one row
 * group: acc[kk] holds key kk's sums, row in the lane; row l's key kk is stored at
 * out + l * ldo + kk as ((float)sum [* ksv[kk]]) * scale, ksv the int8 rows' scales of the AR_KB
 * keys or NULL, for the first rows lanes and nk keys).
 */
#ifndef TERN_KERNELS_ATTN_ROWS_H
#define TERN_KERNELS_ATTN_ROWS_H

#include "kernels/kernels-internal.h"

#define AR_KB 8     /* keys per block: independent fma chains */
#define AR_MR 8     /* rows per mix group */
#define AR_MIX_CH 8 /* dim chunks of a mix pass, at most */

/* Row j of a block ahead is prefetched (towards L2) while row j of this one is read: the
 * blocks of a paged cache lie anywhere, and one head's block is a few KiB, which ends before
 * the hardware's prefetch has followed it. Scores take the next block, mixes (a pass is a
 * quarter of the work per key) the one after it. One thread, f16, d = 128, 4 rows, 2048 keys
 * of 30 layers from memory in 2 MiB pages (GMAC/s, scores / mixes): none 9-10 / 9-12, each
 * next block whole at its start 11-12 / 25-29 (the requests past the queue are dropped, at
 * any distance), a row at a time 15-19 / 48-53 (16 / 70 from cache). tern_ar_next: the
 * block `ahead` blocks on and its rows (none past n keys). */
#define AR_PF_MIX 2 /* blocks ahead of a mix (1: 33-37 GMAC/s; 4: as 2) */
typedef struct {
    const uint8_t *p;
    int64_t rows, ldb;
} tern_ar_nb;
static inline tern_ar_nb tern_ar_next(const void *const *blocks, int64_t b0, int64_t n, int64_t blk,
                                      int64_t ldb, int ahead)
{
    tern_ar_nb nb = {NULL, 0, ldb};
    const int64_t a0 = b0 + ahead * blk;
    if (a0 < n) nb.p = blocks[a0 / blk], nb.rows = n - a0 < blk ? n - a0 : blk;
    return nb;
}
/* bytes [off, off + len) of row j of that block */
static inline void tern_ar_pf_row(const tern_ar_nb *nb, int64_t j, int64_t off, int64_t len)
{
    if (j >= nb->rows) return;
    tern_pf_lines(nb->p + j * nb->ldb + off, len);
}
#ifndef AR_GP
#define AR_GP 1 /* row groups sharing each broadcast key element (registers allowing) */
#endif

/* Scores of AR_KB keys (converted to doubles in kd) for NG row groups from g (a constant after
 * inlining): each broadcast key element serves NG groups. */
static inline __attribute__((always_inline)) void
tern_ar_scores_groups(tern_attn_elem e, const double *qt, const double *kd, int64_t d, int g,
                      const int NG, int P, int nk, int64_t j0, const float *ks, int64_t ldks,
                      float scale, float *out, int64_t ldo)
{
    AR_VD acc[2][AR_KB];
#pragma GCC unroll 2
    for (int h = 0; h < NG; h++)
#pragma GCC unroll 8
        for (int kk = 0; kk < AR_KB; kk++) acc[h][kk] = AR_ZERO_PD();
    const double *qg = qt + g * d * AR_DL;
    for (int64_t i = 0; i < d; i++) {
        AR_VD qv[2];
#pragma GCC unroll 2
        for (int h = 0; h < NG; h++) qv[h] = AR_LOAD_PD(qg + (h * d + i) * AR_DL);
#pragma GCC unroll 8
        for (int kk = 0; kk < AR_KB; kk++) {
            AR_VD b = AR_SET1_PD(kd[kk * d + i]);
            if (NG > 1) __asm__("" : "+v"(b)); /* one broadcast in a register, not one per fma */
#pragma GCC unroll 2
            for (int h = 0; h < NG; h++) acc[h][kk] = AR_FMA_PD(qv[h], b, acc[h][kk]);
        }
    }
    /* the references' epilogue per element: (float)sum, times ks (q8), times scale */
    float ksv[AR_KB];
    if (e == TERN_ATTN_Q8)
        for (int kk = 0; kk < AR_KB; kk++) ksv[kk] = kk < nk ? ks[(j0 + kk) * ldks] : 1.0f;
#pragma GCC unroll 2
    for (int h = 0; h < NG; h++) {
        const int r0 = (g + h) * AR_DL, rows = P - r0 < AR_DL ? P - r0 : AR_DL;
        if (rows > 0)
            AR_STORE_SCORES(acc[h], nk, e == TERN_ATTN_Q8 ? ksv : NULL, scale,
                            out + (int64_t)r0 * ldo + j0, ldo, rows);
    }
}

/* ---- scores over keys held by columns (kernels.h, tern_attn_scores_cols) ----
 * Lane l of a vector is key j0 + l: per dimension i one load of 2 AR_DL consecutive keys'
 * elements i (a block holds them side by side), converted to doubles, serves a tile of R rows
 * (q_r[i] broadcast), one fma each. Every lane sums its row and key's products in order
 * i = 0 .. d-1 as the reference (the products exact in double): the same bits as the rows
 * kernels on the same keys. No key row is converted on its own (the kernel by rows above
 * converts each key's row to doubles and broadcasts its elements over rows in the lanes, which
 * a GQA group of 4 heads fills by half). The including file defines AR_CR (rows a tile, at most: 2
 * AR_CR accumulators), AR_LOADK2(elem, p, n, k0, k1) (n <= 2 AR_DL elements at p as doubles in k0
 * and k1, zeros after) and AR_STORE_COLS(v, nk, ksv, scale, out) (the references' epilogue
 * of nk <= AR_DL keys of one row: out[l] = ((float)v[l] [* ksv[l]]) * scale). The next block's
 * rows of dimensions are prefetched one a dimension while the first tile of a block runs. */
static inline __attribute__((always_inline)) void
tern_ar_cols_tile(tern_attn_elem e, const double *qd, int64_t d, const int R, const uint8_t *kc,
                  int64_t ldkb, const int nk, const bool PF, const uint8_t *pf, const float *ksv,
                  float scale, float *out, int64_t ldo)
{
    AR_VD acc[AR_CR][2];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = AR_ZERO_PD();
    for (int64_t i = 0; i < d; i++) {
        if (PF) tern_pf_lines(pf + i * ldkb, ldkb);
        AR_VD k0, k1;
        AR_LOADK2(e, kc + i * ldkb, nk, k0, k1);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            const AR_VD qv = AR_SET1_PD(qd[r * d + i]);
            acc[r][0] = AR_FMA_PD(qv, k0, acc[r][0]);
            acc[r][1] = AR_FMA_PD(qv, k1, acc[r][1]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
        AR_STORE_COLS(acc[r][0], nk < AR_DL ? nk : AR_DL, ksv, scale, out + r * ldo);
        if (nk > AR_DL)
            AR_STORE_COLS(acc[r][1], nk - AR_DL, ksv ? ksv + AR_DL : NULL, scale,
                          out + r * ldo + AR_DL);
    }
}

/* a tile of R rows, constants after inlining: the element type and whole vectors of keys (the
 * loads without a branch), and whether it prefetches */
#define AR_COLS_R(E, NK, RV)                                                                       \
    case RV:                                                                                       \
        if (pf)                                                                                    \
            tern_ar_cols_tile((E), qd + r0 * d, d, RV, kc, ldkb, (NK), true, pf, kv, scale, o,     \
                              ldo);                                                                \
        else                                                                                       \
            tern_ar_cols_tile((E), qd + r0 * d, d, RV, kc, ldkb, (NK), false, NULL, kv, scale, o,  \
                              ldo);                                                                \
        break
#if AR_CR > 4
#define AR_COLS_R8(E, NK)                                                                          \
    AR_COLS_R(E, NK, 5);                                                                           \
    AR_COLS_R(E, NK, 6);                                                                           \
    AR_COLS_R(E, NK, 7);                                                                           \
    AR_COLS_R(E, NK, 8)
#else
#define AR_COLS_R8(E, NK) /* AR_CR rows at most */
#endif
#define AR_COLS(E, NK)                                                                             \
    switch (R) {                                                                                   \
        AR_COLS_R(E, NK, 1);                                                                       \
        AR_COLS_R(E, NK, 2);                                                                       \
        AR_COLS_R(E, NK, 3);                                                                       \
        AR_COLS_R(E, NK, 4);                                                                       \
        AR_COLS_R8(E, NK);                                                                         \
    default:                                                                                       \
        TERN_ASSERT(0);                                                                            \
    }

static void tern_ar_scores_cols(tern_attn_elem e, const float *const *q, int P,
                                const void *const *k, const float *const *ks, int64_t ldks,
                                int64_t n, int64_t blk, int64_t d, int64_t ldk, float scale,
                                float *out, int64_t ldo)
{
    double qd[TERN_ATTN_MAX_ROWS * TERN_ATTN_MAX_HD] __attribute__((aligned(64)));
    for (int r = 0; r < P; r++)
        for (int64_t i = 0; i < d; i++) qd[r * d + i] = (double)q[r][i];
    const size_t esz = tern_attn_elem_bytes(e);
    const int64_t ldkb = ldk * (int64_t)esz;
    for (int64_t b0 = 0; b0 < n; b0 += blk) {
        const int64_t nb = n - b0 < blk ? n - b0 : blk;
        const uint8_t *kb = k[b0 / blk];
        const float *ksb = e == TERN_ATTN_Q8 ? ks[b0 / blk] : NULL;
        /* the next block's d rows of dimensions, one a dimension in the block's first tile */
        const uint8_t *next = b0 + blk < n ? (const uint8_t *)k[b0 / blk + 1] : NULL;
        for (int64_t j0 = 0; j0 < nb; j0 += 2 * AR_DL) {
            const int nk = nb - j0 < 2 * AR_DL ? (int)(nb - j0) : 2 * AR_DL;
            float ksv[2 * AR_DL];
            if (ksb)
                for (int l = 0; l < 2 * AR_DL; l++) ksv[l] = l < nk ? ksb[(j0 + l) * ldks] : 1.0f;
            const float *kv = ksb ? ksv : NULL;
            const uint8_t *kc = kb + (size_t)j0 * esz;
            for (int r0 = 0; r0 < P; r0 += AR_CR) {
                const uint8_t *pf = j0 == 0 && r0 == 0 ? next : NULL;
                float *o = out + (int64_t)r0 * ldo + b0 + j0;
                const int R = P - r0 < AR_CR ? P - r0 : AR_CR;
                if (nk < 2 * AR_DL) {
                    AR_COLS(e, nk);
                } else if (e == TERN_ATTN_F16) {
                    AR_COLS(TERN_ATTN_F16, 2 * AR_DL);
                } else if (e == TERN_ATTN_Q8) {
                    AR_COLS(TERN_ATTN_Q8, 2 * AR_DL);
                } else {
                    AR_COLS(TERN_ATTN_F32, 2 * AR_DL);
                }
            }
        }
    }
}
#undef AR_COLS
#undef AR_COLS_R8
#undef AR_COLS_R

static void tern_ar_scores(tern_attn_elem e, const float *const *q, int P, const void *const *k,
                           const float *const *ks, int64_t ldks, int64_t n, int64_t blk, int64_t d,
                           int64_t ldk, float scale, float *out, int64_t ldo)
{
    const int G = (P + AR_DL - 1) / AR_DL; /* row groups */
    double qt[TERN_ATTN_MAX_ROWS * TERN_ATTN_MAX_HD] __attribute__((aligned(64)));
    double kd[AR_KB * TERN_ATTN_MAX_HD] __attribute__((aligned(64)));
    for (int g = 0; g < G; g++) AR_QT_GROUP(q, g * AR_DL, P, d, qt + g * d * AR_DL); /* once */
    const size_t esz = tern_attn_elem_bytes(e);
    for (int64_t b0 = 0; b0 < n; b0 += blk) {
        const int64_t nb = n - b0 < blk ? n - b0 : blk;
        const uint8_t *kb = k[b0 / blk];
        const float *ksb = e == TERN_ATTN_Q8 ? ks[b0 / blk] : NULL;
        const tern_ar_nb kn = tern_ar_next(k, b0, n, blk, ldk * (int64_t)esz, 1);
        float *ob = out + b0;
        for (int64_t j0 = 0; j0 < nb; j0 += AR_KB) {
            const int nk = nb - j0 < AR_KB ? (int)(nb - j0) : AR_KB;
            for (int kk = 0; kk < AR_KB; kk++) { /* past the block: key j0 again, not stored */
                tern_ar_pf_row(&kn, j0 + kk, 0, d * (int64_t)esz);
                AR_CVT_ROW(e, kb + (size_t)(j0 + (kk < nk ? kk : 0)) * ldk * esz, d, kd + kk * d);
            }
            for (int g = 0; g < G; g += AR_GP) {
                if (G - g >= 2 && AR_GP >= 2)
                    tern_ar_scores_groups(e, qt, kd, d, g, 2, P, nk, j0, ksb, ldks, scale, ob, ldo);
                else
                    tern_ar_scores_groups(e, qt, kd, d, g, 1, P, nk, j0, ksb, ldks, scale, ob, ldo);
            }
        }
    }
}

/* tern_ar_mix_dims's key b0 + j into the rows r for which TAKES holds (a macro, so that the
 * accumulators stay in registers) */
#define AR_MIX_KEY(TAKES)                                                                          \
    do {                                                                                           \
        AR_VF vj[AR_MIX_CH];                                                                       \
        tern_ar_pf_row(&vn, j, pf_off, pf_len); /* this pass's dims */                             \
        _Pragma("GCC unroll 8") for (int c = 0; c < CH; c++) vj[c] =                               \
            AR_LOADV(e, vb + ((size_t)j * ldv + (size_t)c * AR_FL) * esz, m);                      \
        const float sj = e == TERN_ATTN_Q8 ? vsb[j * ldvs] : 1.0f;                                 \
        _Pragma("GCC unroll 8") for (int r = 0; r < NR; r++)                                       \
        {                                                                                          \
            if (!(TAKES)) continue;                                                                \
            const float pj = pb[r * ldp + j];                                                      \
            const AR_VF w = AR_SET1_PS(e == TERN_ATTN_Q8 ? pj * sj : pj);                          \
            _Pragma("GCC unroll 8") for (int c = 0; c < CH; c++) acc[r][c] =                       \
                AR_ADD_PS(acc[r][c], AR_MUL_PS(w, vj[c]));                                         \
        }                                                                                          \
    } while (0)

/* Dims [i, i + CH * m) of one group of NR rows over the keys' blocks: CH chunks of m dims
 * (CH > 1: whole chunks), so that each broadcast weight serves CH chunks and NR x CH
 * independent sums hide the add's latency (one row alone in chunks of one: a chain of
 * dependent adds, a quarter of the rate). Every element still adds its keys in order. NR,
 * CH, the element type and (for whole chunks) m are constants after inlining, so the
 * accumulators stay in registers and the loop has no branch on them (with run-time values
 * GCC kept the accumulators on the stack, half the speed, and the type tests in the key loop
 * cost a third more). */
static inline __attribute__((always_inline)) void
tern_ar_mix_dims(const tern_attn_elem e, const float *p, int64_t ldp, const int NR,
                 const int32_t *len, int32_t lo, int32_t hi, const void *const *v,
                 const float *const *vs, int64_t ldvs, int64_t blk, int64_t i, const int CH,
                 const int64_t m, int64_t ldv, float *const *out)
{
    const size_t esz = tern_attn_elem_bytes(e);
    AR_VF acc[AR_MR][AR_MIX_CH];
#pragma GCC unroll 8
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 8
        for (int c = 0; c < CH; c++) acc[r][c] = AR_LOADF(out[r] + i + c * AR_FL, m);
    for (int64_t b0 = 0; b0 < hi; b0 += blk) {
        const uint8_t *vb = (const uint8_t *)v[b0 / blk] + (size_t)i * esz;
        const float *vsb = e == TERN_ATTN_Q8 ? vs[b0 / blk] : NULL;
        const float *pb = p + b0; /* the block's weights; row r's at pb + r * ldp */
        const int64_t e1 = (hi < b0 + blk ? hi : b0 + blk) - b0;
        const int64_t e0 = lo < b0 ? 0 : lo - b0 < e1 ? lo - b0 : e1;
        const tern_ar_nb vn = tern_ar_next(v, b0, hi, blk, ldv * (int64_t)esz, AR_PF_MIX);
        const int64_t pf_off = i * (int64_t)esz, pf_len = ((CH - 1) * AR_FL + m) * (int64_t)esz;
        int64_t j = 0;                                   /* key b0 + j */
        for (; j < e0; j++) AR_MIX_KEY(1);               /* keys every row of the group takes */
        for (; j < e1; j++) AR_MIX_KEY(b0 + j < len[r]); /* rows of a longer context go on alone */
    }
#pragma GCC unroll 8
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 8
        for (int c = 0; c < CH; c++) AR_STOREF(out[r] + i + c * AR_FL, acc[r][c], m);
}
#undef AR_MIX_KEY

/* chunks a pass of NR rows takes: the most (a power of two up to AR_MIX_CH) with NR x CH
 * within AR_MIX_ACC accumulators; the dims left take passes of fewer, halving */
#define AR_CH(NR)                                                                                  \
    (8 * (NR) <= AR_MIX_ACC && AR_MIX_CH >= 8   ? 8                                                \
     : 4 * (NR) <= AR_MIX_ACC && AR_MIX_CH >= 4 ? 4                                                \
     : 2 * (NR) <= AR_MIX_ACC && AR_MIX_CH >= 2 ? 2                                                \
                                                : 1)

static inline __attribute__((always_inline)) void
tern_ar_mix_group(const tern_attn_elem e, const float *p, int64_t ldp, const int NR,
                  const int32_t *len, const void *const *v, const float *const *vs, int64_t ldvs,
                  int64_t blk, int64_t d, int64_t ldv, float *const *out)
{
    int32_t lo = INT32_MAX, hi = 0; /* keys every row of the group takes, and the most */
    for (int r = 0; r < NR; r++) {
        lo = len[r] < lo ? len[r] : lo;
        hi = len[r] > hi ? len[r] : hi;
    }
    const int CH = AR_CH(NR);
    int64_t i = 0;
#define AR_MIX_PASSES(C)                                                                           \
    if (CH >= (C))                                                                                 \
        for (; i + (C)*AR_FL <= d; i += (C)*AR_FL)                                                 \
            tern_ar_mix_dims(e, p, ldp, NR, len, lo, hi, v, vs, ldvs, blk, i, (C), AR_FL, ldv, out);
    AR_MIX_PASSES(8)
    AR_MIX_PASSES(4)
    AR_MIX_PASSES(2)
    AR_MIX_PASSES(1)
#undef AR_MIX_PASSES
    if (i < d)
        tern_ar_mix_dims(e, p, ldp, NR, len, lo, hi, v, vs, ldvs, blk, i, 1, d - i, ldv, out);
}

#define AR_MIX_CASE(N)                                                                             \
    case N:                                                                                        \
        tern_ar_mix_group(e, p + r0 * ldp, ldp, N, len + r0, v, vs, ldvs, blk, d, ldv, out + r0);  \
        break

static inline __attribute__((always_inline)) void
tern_ar_mix_e(const tern_attn_elem e, const float *p, int64_t ldp, int P, const int32_t *len,
              const void *const *v, const float *const *vs, int64_t ldvs, int64_t blk, int64_t d,
              int64_t ldv, float *const *out)
{
    for (int r0 = 0; r0 < P; r0 += AR_MR) {
        switch (P - r0 < AR_MR ? P - r0 : AR_MR) {
            AR_MIX_CASE(1);
            AR_MIX_CASE(2);
            AR_MIX_CASE(3);
            AR_MIX_CASE(4);
            AR_MIX_CASE(5);
            AR_MIX_CASE(6);
            AR_MIX_CASE(7);
            AR_MIX_CASE(8);
        }
    }
}

static void tern_ar_mix(tern_attn_elem e, const float *p, int64_t ldp, int P, const int32_t *len,
                        const void *const *v, const float *const *vs, int64_t ldvs, int64_t blk,
                        int64_t d, int64_t ldv, float *const *out)
{
    if (e == TERN_ATTN_F16)
        tern_ar_mix_e(TERN_ATTN_F16, p, ldp, P, len, v, vs, ldvs, blk, d, ldv, out);
    else if (e == TERN_ATTN_Q8)
        tern_ar_mix_e(TERN_ATTN_Q8, p, ldp, P, len, v, vs, ldvs, blk, d, ldv, out);
    else
        tern_ar_mix_e(TERN_ATTN_F32, p, ldp, P, len, v, vs, ldvs, blk, d, ldv, out);
}
#undef AR_MIX_CASE

#undef AR_GP
#undef AR_KB
#undef AR_MR
#endif
