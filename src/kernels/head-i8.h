/* head-i8.h: the int8 LM head (kernels.h, tern_gemm_i8), one driver for the AVX2 and AVX-512
 * files. Every product and sum is an integer, so the result does not depend on the order, the
 * tiling, the variant or the row range: bitwise the reference on any split of rows.
 *
 * Layout (kernels-internal.h): lane r of a weight vector holds four weights of one row, so a
 * broadcast of four activation bytes feeds HI_L rows at once and each lane ends as one row's
 * sum (no lane sums). The including file defines its dot step first:
 *   HI_L            rows per weight vector (16: vpdpbusd on 64 bytes; 8: maddubs on 32)
 *   HI_V, HI_X      the integer vector; what a broadcast of four activations becomes
 *   HI_ZERO()       a zero accumulator; HI_LOADP(p), HI_STOREP(p, a) an accumulator's
 *                   HI_L int32 partial sums from / to p (aligned)
 *   HI_LOADW(p)     the weight vector at p (aligned; biased bytes, kernels-internal.h)
 *   HI_BCAST(p)     HI_X from the four activation bytes at p
 *   HI_DOT(a, x, w) a + the 4-byte dot products of x and w, per int32 lane
 *   HI_STORE(a, xsum, scale, xs, out, lo, hi)  the logits of lanes [lo, hi) (kernels.h's
 *                   formula; the token's activation sum times the weights' bias taken off
 *                   first where the dot keeps it)
 *   HI_G1           weight vectors per tile for one token; HI_G x HI_T the tile for several
 * Rows kept as Q8_0 blocks (w->bscale) take their own tile, HI_BG vectors x HI_BT tokens
 * (one token alone: HI_BG1 vectors from as many segments of the rows, in a single pass):
 *   HI_BIAS         what the dot adds per activation (128: biased weights; 0: none), so that
 *                   HI_BIAS x a block's activation sum comes off each block's sum
 *   HI_VF           a float vector of HI_L lanes; HI_ZEROF(), HI_LOADPF(p), HI_STOREPF(p, A)
 *   HI_LOADD(p)     the HI_L F16 block scales at p as floats
 *   HI_FOLD(A, a, xb, d)  A + d * (float)(a - xb) with one fma per lane (kernels.h)
 *   HI_STOREB(A, xs, out, lo, hi)  (float)((double)A * (double)xs) for lanes [lo, hi)
 * One token streams HI_G1 vectors of rows at once (bandwidth-bound: the weights are read
 * once); several tokens take HI_G vectors of rows and run every tile of HI_T tokens over
 * them, in passes of TERN_HI_SEG chunks (the exact partial sums of up to 64 tokens wait on the
 * stack, 16 KiB) so the weights of a pass stay in L1 for every token tile. Lanes outside
 * [o0, o1) are computed and not stored. Nothing is allocated.
 */
#ifndef TERN_KERNELS_HEAD_I8_H
#define TERN_KERNELS_HEAD_I8_H

#if !defined(HI_L) || !defined(HI_V) || !defined(HI_X) || !defined(HI_ZERO) ||                     \
    !defined(HI_LOADW) || !defined(HI_BCAST) || !defined(HI_DOT) || !defined(HI_STORE) ||          \
    !defined(HI_G1) || !defined(HI_G) || !defined(HI_T) || !defined(HI_LOADP) ||                   \
    !defined(HI_STOREP) || HI_T > 12 || !defined(HI_BIAS) || !defined(HI_VF) ||                    \
    !defined(HI_ZEROF) || !defined(HI_LOADPF) || !defined(HI_STOREPF) || !defined(HI_LOADD) ||     \
    !defined(HI_FOLD) || !defined(HI_STOREB) || !defined(HI_BG) || !defined(HI_BT) ||              \
    !defined(HI_BG1)
#error "head-i8.h: define the HI_ dot step first"
#endif

#include "kernels/kernels-internal.h"

#define TERN_HI_SUB (16 / HI_L)                         /* weight vectors per 64-byte chunk */
#define TERN_HI_GMAX (HI_G1 > HI_G ? HI_G1 : HI_G)      /* weight vectors in a tile, at most */
#define TERN_HI_BGMAX (HI_BG1 > HI_BG ? HI_BG1 : HI_BG) /* the same, Q8_0 blocks */

/* One pass over chunks [c0, c1) of a tile; with several passes the exact int32 partial sums
 * wait in part[token - tb][vector - vb][HI_L] between them, and the logits come on the last. */
typedef struct {
    const tern_i8mat *w;
    const int8_t *xq;
    const float *xs;
    const int32_t *xsum;
    float *y;
    int64_t ldy, o0, o1;
    int64_t c0, c1;
    int32_t *part; /* NULL: one pass */
    int64_t vb, tb;
    bool first, last;
    const int32_t *xb; /* Q8_0 blocks: HI_BIAS x each block's activation sum, [token - tb][nb] */
} tern_hi_pass;

/* One chunk c of a tile (G vectors at wp[], T tokens at xt, k apart): a[s][j] += the dots of
 * token j's four activations with vector s; G and T constants after inlining. */
#define TERN_HI_CHUNK(a, c)                                                                        \
    do {                                                                                           \
        HI_V wv_[TERN_HI_GMAX];                                                                    \
        _Pragma("GCC unroll 16") for (int s = 0; s < G; s++) wv_[s] = HI_LOADW(wp[s] + (c)*64);    \
        _Pragma("GCC unroll 12") for (int j = 0; j < T; j++)                                       \
        {                                                                                          \
            const HI_X xb_ = HI_BCAST(xt + j * k + (c)*4);                                         \
            _Pragma("GCC unroll 16") for (int s = 0; s < G; s++) a[s][j] =                         \
                HI_DOT(a[s][j], xb_, wv_[s]);                                                      \
        }                                                                                          \
    } while (0)

/* The first row of weight vector vs and its lanes [lo, hi) that fall in [o0, o1). */
static inline int64_t tern_hi_lanes(const tern_hi_pass *p, int64_t vs, int *lo, int *hi)
{
    const int64_t r0 = vs * HI_L;
    *lo = p->o0 > r0 ? (int)(p->o0 - r0) : 0;
    *hi = p->o1 - r0 < HI_L ? (int)(p->o1 - r0) : HI_L;
    return r0;
}

/* G weight vectors of rows from vector index v (rows v * HI_L ...) x T tokens from t */
static inline __attribute__((always_inline)) void tern_hi_tile(const tern_hi_pass *p, int64_t v,
                                                               const int G, int64_t t, const int T)
{
    const tern_i8mat *w = p->w;
    const int64_t k = w->k, kc = w->kc;
    const uint8_t *wp[TERN_HI_GMAX];
    HI_V a[TERN_HI_GMAX][HI_T];
    int32_t *part = p->part ? p->part + ((t - p->tb) * HI_G + (v - p->vb)) * HI_L : NULL;
#pragma GCC unroll 16
    for (int s = 0; s < G; s++) {
        const int64_t vs = v + s;
        wp[s] = w->qu + (vs / TERN_HI_SUB) * kc * 64 + (vs % TERN_HI_SUB) * HI_L * 4;
#pragma GCC unroll 12
        for (int j = 0; j < T; j++)
            a[s][j] = p->first ? HI_ZERO() : HI_LOADP(part + (j * HI_G + s) * HI_L);
    }
    const int8_t *xt = p->xq + t * k;
    for (int64_t c = p->c0; c < p->c1; c++) TERN_HI_CHUNK(a, c);
    if (!p->last) {
#pragma GCC unroll 16
        for (int s = 0; s < G; s++)
#pragma GCC unroll 12
            for (int j = 0; j < T; j++) HI_STOREP(part + (j * HI_G + s) * HI_L, a[s][j]);
        return;
    }
#pragma GCC unroll 16
    for (int s = 0; s < G; s++) {
        int lo, hi;
        const int64_t r0 = tern_hi_lanes(p, v + s, &lo, &hi);
        if (lo >= hi) continue;
#pragma GCC unroll 12
        for (int j = 0; j < T; j++)
            HI_STORE(a[s][j], p->xsum[t + j], w->scale + r0, p->xs[t + j],
                     p->y + (t + j) * p->ldy + r0, lo, hi);
    }
}

/* The Q8_0-block tile: G vectors of rows, vector indices v + s * vs (vs > 1: one token in a
 * single pass only), x T tokens from t; each block's 8 chunks summed exactly, then folded into
 * the float accumulators in block order (kernels.h). The float partial sums wait in part (as
 * floats) between passes, which hold whole blocks. */
static inline __attribute__((always_inline)) void
tern_hi_tile_b(const tern_hi_pass *p, int64_t v, const int G, int64_t vs, int64_t t, const int T)
{
    const tern_i8mat *w = p->w;
    const int64_t k = w->k, kc = w->kc, nb = w->nb;
    const uint8_t *wp[TERN_HI_BGMAX];
    const uint16_t *dp[TERN_HI_BGMAX];
    HI_VF A[TERN_HI_BGMAX][HI_BT];
    float *part =
        p->part ? (float *)(void *)p->part + ((t - p->tb) * HI_G + (v - p->vb)) * HI_L : NULL;
#pragma GCC unroll 4
    for (int s = 0; s < G; s++) {
        const int64_t vi = v + s * vs;
        wp[s] = w->qu + (vi / TERN_HI_SUB) * kc * 64 + (vi % TERN_HI_SUB) * HI_L * 4;
        dp[s] = w->bscale + (vi / TERN_HI_SUB) * nb * 16 + (vi % TERN_HI_SUB) * HI_L;
#pragma GCC unroll 12
        for (int j = 0; j < T; j++)
            A[s][j] = p->first ? HI_ZEROF() : HI_LOADPF(part + (j * HI_G + s) * HI_L);
    }
    const int8_t *xt = p->xq + t * k;
    for (int64_t b = p->c0 / 8; b < p->c1 / 8; b++) {
        HI_V a[TERN_HI_BGMAX][HI_BT];
#pragma GCC unroll 4
        for (int s = 0; s < G; s++)
#pragma GCC unroll 12
            for (int j = 0; j < T; j++) a[s][j] = HI_ZERO();
        for (int64_t c = b * 8; c < b * 8 + 8; c++) TERN_HI_CHUNK(a, c);
#pragma GCC unroll 4
        for (int s = 0; s < G; s++) {
            const HI_VF d = HI_LOADD(dp[s] + b * 16);
#pragma GCC unroll 12
            for (int j = 0; j < T; j++)
                A[s][j] =
                    HI_FOLD(A[s][j], a[s][j], HI_BIAS ? p->xb[(t + j - p->tb) * nb + b] : 0, d);
        }
    }
    if (!p->last) {
#pragma GCC unroll 4
        for (int s = 0; s < G; s++)
#pragma GCC unroll 12
            for (int j = 0; j < T; j++) HI_STOREPF(part + (j * HI_G + s) * HI_L, A[s][j]);
        return;
    }
#pragma GCC unroll 4
    for (int s = 0; s < G; s++) {
        int lo, hi;
        const int64_t r0 = tern_hi_lanes(p, v + s * vs, &lo, &hi);
        if (lo >= hi) continue;
#pragma GCC unroll 12
        for (int j = 0; j < T; j++)
            HI_STOREB(A[s][j], p->xs[t + j], p->y + (t + j) * p->ldy + r0, lo, hi);
    }
}

#define TERN_HI_CASE(GV, TV)                                                                       \
    case TV:                                                                                       \
        tern_hi_tile(&p, v, GV, t, TV);                                                            \
        break

/* tokens [t, t + nt), nt <= HI_T, on G vectors of rows: the tile instantiated per count */
#define TERN_HI_TOKENS(GV)                                                                         \
    switch (nt) {                                                                                  \
        TERN_HI_CASE(GV, HI_T);                                                                    \
        HI_TAIL_CASES(GV)                                                                          \
        TERN_HI_CASE(GV, 1);                                                                       \
    default:                                                                                       \
        TERN_ASSERT(0);                                                                            \
    }

/* the counts below HI_T (HI_T <= 12) */
#if HI_T > 11
#define HI_TC11(GV) TERN_HI_CASE(GV, 11);
#else
#define HI_TC11(GV)
#endif
#if HI_T > 10
#define HI_TC10(GV) TERN_HI_CASE(GV, 10);
#else
#define HI_TC10(GV)
#endif
#if HI_T > 9
#define HI_TC9(GV) TERN_HI_CASE(GV, 9);
#else
#define HI_TC9(GV)
#endif
#if HI_T > 8
#define HI_TC8(GV) TERN_HI_CASE(GV, 8);
#else
#define HI_TC8(GV)
#endif
#if HI_T > 7
#define HI_TC7(GV) TERN_HI_CASE(GV, 7);
#else
#define HI_TC7(GV)
#endif
#if HI_T > 6
#define HI_TC6(GV) TERN_HI_CASE(GV, 6);
#else
#define HI_TC6(GV)
#endif
#if HI_T > 5
#define HI_TC5(GV) TERN_HI_CASE(GV, 5);
#else
#define HI_TC5(GV)
#endif
#if HI_T > 4
#define HI_TC4(GV) TERN_HI_CASE(GV, 4);
#else
#define HI_TC4(GV)
#endif
#if HI_T > 3
#define HI_TC3(GV) TERN_HI_CASE(GV, 3);
#else
#define HI_TC3(GV)
#endif
#if HI_T > 2
#define HI_TC2(GV) TERN_HI_CASE(GV, 2);
#else
#define HI_TC2(GV)
#endif
#define HI_TAIL_CASES(GV)                                                                          \
    HI_TC11(GV)                                                                                    \
    HI_TC10(GV)                                                                                    \
    HI_TC9(GV) HI_TC8(GV) HI_TC7(GV) HI_TC6(GV) HI_TC5(GV) HI_TC4(GV) HI_TC3(GV) HI_TC2(GV)

#define TERN_HI_TB 64 /* tokens whose partial sums wait between passes */
/* chunks per pass (HI_G vectors: 8 KiB of weights stay in L1 beside the 16 KiB of partial sums
 * and the activations). Against 64: Intel Xeon VM without AMX (48 KiB L1d), full-size table, 2
 * threads of a pool, interleaved: 32 tokens 412-421 -> 480-518 GMAC/s, 16 and 64 tokens even
 * (540-570 at 64); 16 and 24 chunks no better, 128 0.93x. */
#define TERN_HI_SEG 32

#define TERN_HI_XB 8192 /* int32 block sums of the activations on the stack (32 KiB) */
/* tokens above which the next group's weights are prefetched into L2 during a group's tiles
 * (with a single token tile the lines come too close together, as head-f16.h's); from 3 * HI_T
 * down to 2 * HI_T: 16 tokens 251-311 -> 325-337 GMAC/s (the same run as TERN_HI_SEG's) */
#define TERN_HI_PF_TOKENS (2 * HI_T)

/* The next group's weights, vectors [vg + HI_G, vg + 2 HI_G) below v1 (whole chunks of
 * TERN_HI_SUB vectors), to prefetch into L2 while the group's `calls` tiles run (with n_tok
 * above TERN_HI_PF_TOKENS). Full-size head, 64 tokens, 4 x 6 tiles, 2 threads, Zen 5:
 * 1.10-1.15x; the rows come from memory for the first token tile of a pass otherwise. */
static inline tern_pf tern_hi_pf_next(const tern_i8mat *w, int64_t vg, int64_t v1, int64_t n_tok,
                                      int64_t calls)
{
    const int64_t kc = w->kc, vq = vg + HI_G < v1 ? vg + HI_G : v1,
                  vr = vq + HI_G < v1 ? vq + HI_G : v1;
    return tern_pf_spread(w->qu + vq / TERN_HI_SUB * kc * 64,
                          w->qu + (vr + TERN_HI_SUB - 1) / TERN_HI_SUB * kc * 64, calls,
                          n_tok > TERN_HI_PF_TOKENS);
}

/* the Q8_0-block tile for nt <= HI_BT tokens on G <= HI_BG vectors, instantiated per count */
static void tern_hi_run_b(const tern_hi_pass *p, int64_t v, int G, int64_t t, int nt)
{
#define TERN_HI_B(GV, TV)                                                                          \
    if (G == (GV) && nt == (TV)) {                                                                 \
        tern_hi_tile_b(p, v, (GV), 1, t, (TV));                                                    \
        return;                                                                                    \
    }
#define TERN_HI_BG(GV)                                                                             \
    TERN_HI_B(GV, 1);                                                                              \
    if (HI_BT >= 2) TERN_HI_B(GV, 2 <= HI_BT ? 2 : 1);                                             \
    if (HI_BT >= 3) TERN_HI_B(GV, 3 <= HI_BT ? 3 : 1);                                             \
    if (HI_BT >= 4) TERN_HI_B(GV, 4 <= HI_BT ? 4 : 1);                                             \
    if (HI_BT >= 5) TERN_HI_B(GV, 5 <= HI_BT ? 5 : 1);                                             \
    if (HI_BT >= 6) TERN_HI_B(GV, 6 <= HI_BT ? 6 : 1)
    TERN_HI_BG(1);
    if (HI_BG >= 2) {
        TERN_HI_BG(HI_BG >= 2 ? 2 : 1);
    }
#undef TERN_HI_BG
#undef TERN_HI_B
    TERN_ASSERT(0);
}

/* xb[t - t0][b] = HI_BIAS x block b's activation sum of token t, for tokens [t0, t1) */
static void tern_hi_block_sums(const int8_t *xq, int64_t k, int64_t nb, int64_t t0, int64_t t1,
                               int32_t *xb)
{
    if (!HI_BIAS) return;
    for (int64_t t = t0; t < t1; t++)
        for (int64_t b = 0; b < nb; b++) {
            int32_t sx = 0;
            for (int64_t i = b * 32; i < b * 32 + 32; i++) sx += xq[t * k + i];
            xb[(t - t0) * nb + b] = HI_BIAS * sx;
        }
}

static void tern_hi_gemm_b(const tern_i8mat *w, const int8_t *xq, const float *xs, float *y,
                           int64_t n_tok, int64_t ldy, int64_t o0, int64_t o1)
{
    const int64_t v0 = o0 / HI_L, v1 = (o1 + HI_L - 1) / HI_L, k = w->k, nb = w->nb;
    tern_hi_pass p = {w, xq, xs, NULL, y, ldy, o0, o1, 0, w->kc, NULL, 0, 0, true, true, NULL};
    int32_t xb[TERN_HI_XB];
    if (n_tok == 1) {
        /* one token: a single pass, the vectors in HI_BG1 segments, a tile taking the j-th of
         * each, so that each weight stream runs on through its segment (head-f16.h's one-token
         * head). Before, passes of 64 chunks over 4 vectors in turn: full-size table, Zen 5
         * VM, 2 threads, 10 interleaved pairs: median 1.17x (0.97-1.93x), 40 against 33 GB/s */
        tern_hi_block_sums(xq, k, nb, 0, 1, xb);
        p.xb = xb;
        const int64_t len = (v1 - v0) / HI_BG1;
        for (int64_t j = 0; j < len; j++) tern_hi_tile_b(&p, v0 + j, HI_BG1, len, 0, 1);
        for (int64_t v = v0 + HI_BG1 * len; v < v1; v++) tern_hi_tile_b(&p, v, 1, 1, 0, 1);
        return;
    }
    int32_t part[TERN_HI_TB * HI_G * HI_L] __attribute__((aligned(64)));
    p.part = w->kc > TERN_HI_SEG ? part : NULL;
    const int64_t tbn = TERN_HI_XB / nb < TERN_HI_TB ? TERN_HI_XB / nb : TERN_HI_TB; /* >= 4 */
    for (int64_t tb = 0; tb < n_tok; tb += tbn) {
        const int64_t te = n_tok - tb < tbn ? n_tok : tb + tbn;
        tern_hi_block_sums(xq, k, nb, tb, te, xb);
        p.tb = tb, p.xb = xb;
        const int64_t calls =
            (te - tb + HI_BT - 1) / HI_BT * ((w->kc + TERN_HI_SEG - 1) / TERN_HI_SEG);
        for (int64_t vg = v0; vg < v1; vg += HI_G) {
            const int64_t ve = v1 - vg < HI_G ? v1 : vg + HI_G;
            p.vb = vg;
            tern_pf pf = tern_hi_pf_next(w, vg, v1, te - tb, calls);
            for (int64_t c0 = 0; c0 < w->kc; c0 += TERN_HI_SEG) {
                p.c0 = c0, p.c1 = w->kc - c0 < TERN_HI_SEG ? w->kc : c0 + TERN_HI_SEG;
                p.first = c0 == 0, p.last = p.c1 == w->kc;
                for (int64_t t = tb; t < te; t += HI_BT, tern_pf_run(&pf))
                    for (int64_t v = vg; v < ve; v += HI_BG)
                        tern_hi_run_b(&p, v, ve - v < HI_BG ? (int)(ve - v) : HI_BG, t,
                                      te - t < HI_BT ? (int)(te - t) : HI_BT);
            }
        }
    }
}

static void tern_hi_gemm(const tern_i8mat *w, const int8_t *xq, const float *xs,
                         const int32_t *xsum, int64_t n_tok, float *y, int64_t ldy, int64_t o0,
                         int64_t o1)
{
    if (w->bscale) {
        tern_hi_gemm_b(w, xq, xs, y, n_tok, ldy, o0, o1);
        return;
    }
    const int64_t v0 = o0 / HI_L, v1 = (o1 + HI_L - 1) / HI_L;
    tern_hi_pass p = {w, xq, xs, xsum, y, ldy, o0, o1, 0, w->kc, NULL, 0, 0, true, true, NULL};
    if (n_tok == 1) {
        int64_t v = v0;
        for (; v + HI_G1 <= v1; v += HI_G1) tern_hi_tile(&p, v, HI_G1, 0, 1);
        for (; v < v1; v++) tern_hi_tile(&p, v, 1, 0, 1);
        return;
    }
    int32_t part[TERN_HI_TB * HI_G * HI_L] __attribute__((aligned(64)));
    p.part = w->kc > TERN_HI_SEG ? part : NULL;
    /* the tiles of one group of vectors, over which the next group's prefetch is spread */
    const int64_t calls = (n_tok + HI_T - 1) / HI_T * ((w->kc + TERN_HI_SEG - 1) / TERN_HI_SEG);
    for (int64_t vg = v0; vg < v1; vg += HI_G) {
        const int64_t vn = v1 - vg < HI_G ? v1 - vg : HI_G;
        p.vb = vg;
        tern_pf pf = tern_hi_pf_next(w, vg, v1, n_tok, calls);
        for (int64_t tb = 0; tb < n_tok; tb += TERN_HI_TB) {
            const int64_t te = n_tok - tb < TERN_HI_TB ? n_tok : tb + TERN_HI_TB;
            p.tb = tb;
            for (int64_t c0 = 0; c0 < w->kc; c0 += TERN_HI_SEG) {
                p.c0 = c0, p.c1 = w->kc - c0 < TERN_HI_SEG ? w->kc : c0 + TERN_HI_SEG;
                p.first = c0 == 0, p.last = p.c1 == w->kc;
                for (int64_t t = tb; t < te; t += HI_T) {
                    const int64_t nt = te - t < HI_T ? te - t : HI_T;
                    tern_pf_run(&pf);
                    int64_t v = vg;
                    if (vn == HI_G) {
                        TERN_HI_TOKENS(HI_G)
                    } else {
                        for (; v < vg + vn; v++) TERN_HI_TOKENS(1)
                    }
                }
            }
        }
    }
}

#undef TERN_HI_CASE
#undef TERN_HI_TOKENS
#undef HI_TAIL_CASES
#undef HI_TC11
#undef HI_TC10
#undef HI_TC9
#undef HI_TC8
#undef HI_TC7
#undef HI_TC6
#undef HI_TC5
#undef HI_TC4
#undef HI_TC3
#undef HI_TC2
#undef TERN_HI_SUB
#undef TERN_HI_GMAX
#undef TERN_HI_BGMAX
#undef TERN_HI_TB
#undef TERN_HI_SEG
#undef TERN_HI_XB
#undef TERN_HI_PF_TOKENS
#undef TERN_HI_CHUNK
#endif
