/* head-f16.h: the F16 LM head (kernels.h, tern_gemm_f16), one driver for the AVX2 and AVX-512
 * files: tiles of R rows x T tokens of fp32 accumulators (HF_SEG rows for a token alone, 8 for
 * a one-token tile among several, 4 for 2-3, HF_RW for more; up to HF_TT tokens), rows in blocks of
 * HF_RB that stay in L2 while every token tile passes over them (with several token tiles: in
 * passes of HF_KC columns whose activations stay in L1, the next block prefetched meanwhile; 64
 * tokens 1.15x a thread, bits unchanged). Lane j of an accumulator sums the columns i % HF_LANES ==
 * j in increasing order with one fma each, then HF_HSUM adds the lanes in the file's fixed order: a
 * row's logit does not depend on the row range or the token count.
 *
 * The including file defines: HF_V (the float vector), HF_LANES, HF_ZERO(), HF_FMA(a, b, c)
 * (a * b + c), HF_LOADX(p) / HF_LOADX_TAIL(p, left) (activations: HF_LANES floats, or the
 * last left < HF_LANES with zeros after), HF_LOADW(p) / HF_LOADW_TAIL(p, left) (F16 weights
 * as floats, the same), HF_HSUM(v), HF_TT (at most 6) and, with HF_TT > 3, HF_RW: the rows
 * of a tile of 4 or more tokens. Per column a tile converts R weight vectors (one per row) and
 * does R x T fmas: on Zen 2 a vcvtph2ps from memory issues every other cycle, so 4 rows x 3
 * tokens run at 12 fmas per 10 cycles, 2 rows x 5 tokens at 10 per 5.4 (register loops; the
 * fma peak is 2 a cycle). With 16 registers that is 10 sums, 5 activations and 1 weight;
 * HF_NREG: with R x T + T below it the activations are pinned in registers (else GCC makes them
 * every fma's memory operand, 12 loads per 10 fmas); 0 leaves it to the compiler.
 * Tried on an Intel Xeon VM with AMX (2 threads, 128256 x 2560) and not kept:
 * - AMX-BF16 tiles, exact enough (each F16 weight as two bf16 terms, each activation as three,
 *   four products a column: 2e-7 of sum |w x| against 2e-8 here): 64 tokens 1.8-1.9x, 16
 *   tokens 1.7x, but one token 0.73x (32 against 24 ms: the conversion, 0.56 micro-ops a
 *   weight, does not hide behind the memory stream). Used only for some calls, a logit would
 *   depend on batch company (DESIGN.md 6); used for all, one stream decodes 15% slower.
 * - HF_KC 512 or 256: 0.94-0.97x at 64 tokens.
 * From HF_COPY_TOKENS tokens the first token tile stores each weight vector it converts in a
 * float copy of the block (HF_PANEL floats on the stack, rows HF_RB at most, fewer for long
 * rows; none for rows over HF_PANEL / 8 floats), and the other token tiles load their weights
 * from there: their fmas take both vector ports, where a vcvtph2ps took each port once a row.
 * The copies hold the same floats, so no bit changes. Intel Xeon VM without AMX (2 cores,
 * 2 MiB L2 each), 128256 x 2560 (one thread, bench_kernels, interleaved, 3 rounds): 64 tokens
 * 380-398 -> 334-340 ms (1.15x; 54 -> 62.5 GMAC/s, 0.70 of the fma peak), 48 tokens 1.13x,
 * 40 1.06x, 34 1.01-1.06x, 19-24 0.9x (too few token tiles to pay for the copy's stores: the
 * threshold); the copy of 256 KiB (rows of 24 there) 1.11x at 64 tokens; 384 KiB 1.09x;
 * 640 KiB as 512; the copy's rows prefetched to L1 ahead of the tiles 0.90-1.0x; the copy with
 * HF_KC 512 1.0x, 2048 0.75x. A 64-sequence decode step of the 2B-4T shape: 146-155 -> 147-158
 * tok/s (the head is 40% of it). The AVX2 variant on the same machine: 1.02-1.04x at 48-64
 * tokens, 0.97-0.99x at 34.
 */
#ifndef TERN_KERNELS_HEAD_F16_H
#define TERN_KERNELS_HEAD_F16_H

#if !defined(HF_V) || !defined(HF_LANES) || !defined(HF_ZERO) || !defined(HF_FMA) ||               \
    !defined(HF_LOADX) || !defined(HF_LOADX_TAIL) || !defined(HF_LOADW) ||                         \
    !defined(HF_LOADW_TAIL) || !defined(HF_LOADF) || !defined(HF_STOREF) || !defined(HF_HSUM) ||   \
    !defined(HF_TT) || HF_TT > 6 || (HF_TT > 3 && !defined(HF_RW)) || !defined(HF_NREG)
#error "head-f16.h: define the HF_ vector operations first"
#endif

#include "kernels/kernels-internal.h"

#define HF_RB 64   /* rows per block: their weights stay in L2 while every token tile passes */
#define HF_KC 1024 /* columns per pass of a tile of several tokens (a multiple of HF_LANES) */
#define HF_COPY_TOKENS 34 /* tokens from which a block's weights are copied as floats */
#define HF_PANEL 131072   /* floats of the copy (512 KiB of the stack) */
/* One token: each row stream prefetched HF_GEMV_PF bytes ahead, once a line (HF_LINE_W
 * weights). The hardware's prefetch alone left them waiting: Intel Xeon VM (AMX), 2 threads,
 * 128256 x 2560 in a decode step, 3 interleaved rounds, medians: none 22.4-22.6 ms (29 GB/s),
 * 1 KiB 19.3-19.7, 2 KiB 19.0-19.3 (34 GB/s, above the plain read probe's 29-30; 1.17x),
 * 4 KiB 19.2-19.6. The address may lie past the rows (the last tiles): prefetch does not fault. */
#define HF_GEMV_PF 2048
#define HF_LINE_W 32 /* F16 weights a cache line */

/* Where a tile's weights come from (WM, a constant after inlining): the F16 rows; the F16 rows,
 * each converted vector stored in the block's float copy too; that copy alone. */
enum { HF_W16 = 0, HF_W16_COPY = 1, HF_W32 = 2 };
/* One weight vector: w16 (the F16 row's vector as floats, unused with HF_W32) or the copy's
 * vector at pw + off, which HF_W16_COPY writes; pw is NULL with HF_W16. */
static inline __attribute__((always_inline)) HF_V tern_hf_weight(const int WM, HF_V w16, float *pw,
                                                                 int64_t off)
{
    if (WM == HF_W32) return HF_LOADF(pw + off);
    if (WM == HF_W16_COPY) HF_STOREF(pw + off, w16);
    return w16;
}

/* Columns [i0, i1) of R rows x T tokens, the rows' float copy (WM != HF_W16) at pw, rows pld
 * floats apart. part holds the lane sums between passes (row r, token t at
 * part[r * HF_TT + t]): zeros are not loaded at i0 == 0, and at i1 == k the lanes are added
 * into y. Storing and reloading a lane's fp32 sum leaves its sequence of fmas as one pass's, so
 * the passes change no bit. */
static inline __attribute__((always_inline)) void
tern_hf_tile(const uint16_t *w, int64_t o, const int R, int64_t rs, const int WM, float *pw,
             int64_t pld, const float *x, int64_t t0, const int T, int64_t k, int64_t i0,
             int64_t i1, HF_V *part, float *y, int64_t ldy)
{
    HF_V acc[8][HF_TT];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 6
        for (int t = 0; t < T; t++) acc[r][t] = i0 == 0 ? HF_ZERO() : part[r * HF_TT + t];
    const float *xt = x + t0 * k;
    int64_t i = i0;
    for (; i + HF_LANES <= i1; i += HF_LANES) {
        HF_V xv[HF_TT];
#pragma GCC unroll 6
        for (int t = 0; t < T; t++) {
            xv[t] = HF_LOADX(xt + t * k + i);
            /* in a register: not loaded again for every row as an fma's memory operand */
            if (R * T + T < HF_NREG) __asm__("" : "+x"(xv[t]));
        }
        if (rs > 1 && i % HF_LINE_W == 0) /* segments' row streams (tern_hf_segments) */
#pragma GCC unroll 8
            for (int r = 0; r < R; r++)
                _mm_prefetch((const char *)((uintptr_t)(w + (o + r * rs) * k + i) + HF_GEMV_PF),
                             _MM_HINT_T0);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            const HF_V wv = tern_hf_weight(
                WM, WM == HF_W32 ? HF_ZERO() : HF_LOADW(w + (o + r * rs) * k + i), pw, r * pld + i);
#pragma GCC unroll 6
            for (int t = 0; t < T; t++) acc[r][t] = HF_FMA(wv, xv[t], acc[r][t]);
        }
    }
    if (i < i1) { /* only at k: the passes end on whole vectors before it */
        HF_V xv[HF_TT];
#pragma GCC unroll 6
        for (int t = 0; t < T; t++) xv[t] = HF_LOADX_TAIL(xt + t * k + i, i1 - i);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            /* the copy holds the tail with its zeros, as HF_LOADW_TAIL makes it */
            const HF_V wv = tern_hf_weight(
                WM, WM == HF_W32 ? HF_ZERO() : HF_LOADW_TAIL(w + (o + r * rs) * k + i, i1 - i), pw,
                r * pld + i);
#pragma GCC unroll 6
            for (int t = 0; t < T; t++) acc[r][t] = HF_FMA(wv, xv[t], acc[r][t]);
        }
    }
    if (i1 == k) {
#pragma GCC unroll 8
        for (int r = 0; r < R; r++)
#pragma GCC unroll 6
            for (int t = 0; t < T; t++) y[(t0 + t) * ldy + o + r * rs] = HF_HSUM(acc[r][t]);
    } else {
#pragma GCC unroll 8
        for (int r = 0; r < R; r++)
#pragma GCC unroll 6
            for (int t = 0; t < T; t++) part[r * HF_TT + t] = acc[r][t];
    }
}

/* One token: a single pass (its activations are k floats, in L1); several: passes of kc
 * columns, so a tile's activations (T x HF_KC floats) stay in L1 while the block's row tiles
 * go over them instead of coming from L2 for every row tile (64 tokens: +10% a thread). */
/* the tile's rows in the block's float copy (none with HF_W16: panel is NULL then) */
#define HF_PW(WM) ((WM) == HF_W16 ? NULL : panel + (o - o0) * pld)
#define TERN_HF_PASS(TV, RM, WM)                                                                   \
    for (int64_t i0 = 0; i0 < k; i0 += kc) {                                                       \
        const int64_t i1 = k - i0 <= kc ? k : i0 + kc;                                             \
        int64_t o = o0;                                                                            \
        for (; o + (RM) <= o1; o += (RM)) {                                                        \
            tern_hf_tile(w, o, (RM), 1, (WM), HF_PW(WM), pld, x, t0, (TV), k, i0, i1,              \
                         part + (o - o0) * HF_TT, y, ldy);                                         \
            tern_pf_run(&pf);                                                                      \
        }                                                                                          \
        for (; o < o1; o++)                                                                        \
            tern_hf_tile(w, o, 1, 1, (WM), HF_PW(WM), pld, x, t0, (TV), k, i0, i1,                 \
                         part + (o - o0) * HF_TT, y, ldy);                                         \
    }
#define TERN_HF_CASE(TV, RM)                                                                       \
    case TV: {                                                                                     \
        const int64_t kc = (TV) == 1 ? k : kc_many;                                                \
        if (!panel)                                                                                \
            TERN_HF_PASS(TV, RM, HF_W16)                                                           \
        else if (t0 == 0)                                                                          \
            TERN_HF_PASS(TV, RM, HF_W16_COPY)                                                      \
        else                                                                                       \
            TERN_HF_PASS(TV, RM, HF_W32)                                                           \
    } break

/* Rows [o0, o1), at most HF_RB of them, for more than HF_SEG_TOKENS tokens; panel: their float
 * copy (rows pld floats apart), written by the first token tile, or NULL; [pf_begin,
 * pf_end): the next block's rows, prefetched into L2 a few lines per row tile, spread over
 * this block's tiles: a block's rows come from memory for its first token tile only, which the
 * hardware's prefetch left waiting (T = 64: +5%; with a few token tiles the lines came too
 * close together and cost more than they saved, T = 4, 6: -20%). */
static void tern_hf_rows(const uint16_t *w, const float *x, int64_t n_tok, int64_t k, float *y,
                         int64_t ldy, int64_t o0, int64_t o1, float *panel, int64_t pld,
                         const uint8_t *pf_begin, const uint8_t *pf_end)
{
    HF_V part[HF_RB * HF_TT];
    /* several token tiles share the block from L2, in passes */
    const int64_t kc_many = HF_KC;
    /* the block's calls of the widest tiles, over which the prefetch is spread */
    const int64_t calls = (n_tok + HF_TT - 1) / HF_TT * ((k + HF_KC - 1) / HF_KC) *
                          ((o1 - o0) / (HF_TT > 3 ? HF_RW : 4));
    tern_pf pf = tern_pf_spread(pf_begin, pf_end, calls, true);
    for (int64_t t0 = 0; t0 < n_tok; t0 += HF_TT) {
        const int64_t tb = n_tok - t0 < HF_TT ? n_tok - t0 : HF_TT;
        switch (tb) {
            TERN_HF_CASE(1, 8);
            TERN_HF_CASE(2, 4);
            TERN_HF_CASE(3, 4);
#if HF_TT > 3
            TERN_HF_CASE(4, HF_RW);
            TERN_HF_CASE(5, HF_RW);
#endif
#if HF_TT > 5
            TERN_HF_CASE(6, HF_RW);
#endif
        default:
            TERN_ASSERT(0);
        }
    }
}

/* Up to HF_SEG_TOKENS tokens: the rows in as many segments as a tile has rows, a tile taking
 * the j-th row of each, so that each of its row streams runs on through its segment's
 * consecutive rows (one long sequential read each, which the prefetchers follow best, and the
 * software prefetch runs on into the next tile's rows) instead of ending every 2k bytes beside
 * the other streams' rows; every token tile passes over a tile's rows while they are in L1
 * (their activations come from L2). One token (128256 x 2560, Intel Xeon VM, 2 threads, 8
 * segments: 23-27 -> 29-35 GB/s, 1.28-1.33x in interleaved runs); four segments, not eight:
 * Zen 5 VM, 2 threads, 12 interleaved pairs: median 1.24x (0.84-1.41x), 44 against 36 GB/s (not
 * measured on Intel). 2-18 tokens against blocks of HF_RB rows (Intel Xeon VM with AMX, 2
 * threads, best of 3-5): 2 27.6 -> 20.8 ms, 4 30.8 -> 20.5, 6 32.1 -> 21.1, 8 45.7 -> 28.8, 12
 * 51.3 -> 34.1, 16 56.9 -> 43.3, 18 67.1 -> 47.7; at 19-24 even (60-73 ms either way); at
 * 28-32 the blocks win (78-90 against 84-95); the AVX2 variant, 2 tokens 30.1 -> 21.7 ms, 4
 * 38.9 -> 25.2, 8 64.2 -> 39.9, 12 76.4 -> 56.6, 18 70.0 -> 69.0. The rows left over (fewer than
 * the segments) run alone; a row's sums are its own whichever tile it is in, so no bit changes. */
#define HF_SEG 4 /* rows of a one-token tile (at most 8) */
#define HF_SEG_TOKENS (3 * HF_TT)
/* R rows from segments rs apart x T tokens from t0 */
#define TERN_HF_SEG_TILE(RV, TV)                                                                   \
    case TV:                                                                                       \
        tern_hf_tile(w, o, (RV), rs, HF_W16, NULL, 0, x, t0, (TV), k, 0, k, NULL, y, ldy);         \
        break
static void tern_hf_seg_tile(const uint16_t *w, int64_t o, int R, int64_t rs, const float *x,
                             int64_t t0, int64_t T, int64_t k, float *y, int64_t ldy)
{
    if (R == HF_RW) {
        switch (T) {
            TERN_HF_SEG_TILE(HF_RW, 1);
            TERN_HF_SEG_TILE(HF_RW, 2);
            TERN_HF_SEG_TILE(HF_RW, 3);
#if HF_TT > 3
            TERN_HF_SEG_TILE(HF_RW, 4);
            TERN_HF_SEG_TILE(HF_RW, 5);
#endif
#if HF_TT > 5
            TERN_HF_SEG_TILE(HF_RW, 6);
#endif
        default:
            TERN_ASSERT(0);
        }
    } else if (R == 4) {
        switch (T) {
            TERN_HF_SEG_TILE(4, 1);
            TERN_HF_SEG_TILE(4, 2);
            TERN_HF_SEG_TILE(4, 3);
        default:
            TERN_ASSERT(0);
        }
    } else {
        TERN_ASSERT(R == 1 && T == 1);
        tern_hf_tile(w, o, 1, 1, HF_W16, NULL, 0, x, t0, 1, k, 0, k, NULL, y, ldy);
    }
}
#undef TERN_HF_SEG_TILE
static void tern_hf_segments(const uint16_t *w, const float *x, int64_t n_tok, int64_t k, float *y,
                             int64_t ldy, int64_t o0, int64_t o1)
{
    _Static_assert(HF_SEG == 4 && HF_RW <= 4, "tern_hf_seg_tile instantiates 4 and HF_RW rows");
    /* rows a tile, the same for every token tile: 4 with at most 3 tokens, else HF_RW */
    const int R = n_tok <= 3 ? HF_SEG : HF_RW;
    const int64_t len = (o1 - o0) / R;
    for (int64_t j = 0; j < len; j++)
        for (int64_t t0 = 0; t0 < n_tok; t0 += HF_TT)
            tern_hf_seg_tile(w, o0 + j, R, len, x, t0, n_tok - t0 < HF_TT ? n_tok - t0 : HF_TT, k,
                             y, ldy);
    for (int64_t o = o0 + R * len; o < o1; o++)
        for (int64_t t = 0; t < n_tok; t++) tern_hf_seg_tile(w, o, 1, 1, x, t, 1, k, y, ldy);
}

/* More than HF_SEG_TOKENS tokens: the rows in blocks (tern_hf_rows), from HF_COPY_TOKENS tokens
 * with the block's float copy: rows of pld floats (k rounded up to whole vectors), as many rows
 * as fit in HF_PANEL floats, at most HF_RB, in multiples of 8; fewer than 8 fit: no copy. */
static void tern_hf_blocks(const uint16_t *w, const float *x, int64_t n_tok, int64_t k, float *y,
                           int64_t ldy, int64_t o0, int64_t o1)
{
    _Alignas(64) float panel[HF_PANEL];
    const int64_t pld = (k + HF_LANES - 1) / HF_LANES * HF_LANES, fit = HF_PANEL / pld / 8 * 8;
    const bool copy = fit >= 8 && n_tok >= HF_COPY_TOKENS;
    const int64_t rb = copy && fit < HF_RB ? fit : HF_RB;
    for (int64_t o = o0; o < o1; o += rb) {
        const int64_t ob = o + rb < o1 ? o + rb : o1, on = ob + rb < o1 ? ob + rb : o1;
        tern_hf_rows(w, x, n_tok, k, y, ldy, o, ob, copy ? panel : NULL, pld,
                     (const uint8_t *)(w + ob * k), (const uint8_t *)(w + on * k));
    }
}

static void tern_hf_gemm(const uint16_t *w, const float *x, int64_t n_tok, int64_t k, float *y,
                         int64_t ldy, int64_t o0, int64_t o1)
{
    if (n_tok <= HF_SEG_TOKENS)
        tern_hf_segments(w, x, n_tok, k, y, ldy, o0, o1);
    else
        tern_hf_blocks(w, x, n_tok, k, y, ldy, o0, o1);
}

#undef TERN_HF_CASE
#undef HF_RB
#undef HF_PANEL
#undef HF_COPY_TOKENS
#undef TERN_HF_PASS
#undef HF_PW
#undef HF_KC
#undef HF_SEG
#undef HF_SEG_TOKENS
#undef HF_GEMV_PF
#undef HF_LINE_W
#endif
