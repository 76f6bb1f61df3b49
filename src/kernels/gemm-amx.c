/* gemm-amx.c: the ternary GEMM and the int8 head for many tokens on AMX tiles (Sapphire
 * Rapids and later): the "amx" variant is avx512 with these two and the tile peak
 * (dispatch.c).
 *
 * One TDPBSUD multiplies a tile of 16 tokens x 64 signed activations (A: rows of the int8
 * activations, stride k, loaded in place) by a tile of 64 x 16 unsigned bytes (B: 16 rows of
 * 64 bytes, row kk holding four bytes of each of 16 weight rows, columns 4kk..4kk+3) into
 * 16 x 16 exact int32 sums: 16384 multiply-adds, against vpdpbusd's 64.
 * - Ternary GEMM: B is what unpack() makes of four chunks of the packed codes
 *   (kernels-internal.h), in order, so codes need no shuffling; the sums are the reference's
 *   sum code*q, and the float epilogue is the reference's (simd-avx512.h tgemm_float).
 * - int8 head (per-row scales): the biased weights (w + 128) of 16 chunks are a B tile as
 *   they lie in memory; sum (w + 128) x less 128 x the token's activation sum is the exact
 *   sum w x, and the logit is kernels.h's formula (simd-avx512.h hi_store).
 * So both are bit-identical to their references.
 *
 * Blocking: tokens in chunks whose activations stay in L2 (TERN_AMX_ACT_BYTES); for each pair
 * of row groups (32 rows), every pair of token blocks (32 tokens: four C tiles, two A, two B)
 * runs over all of k, so no partial sums wait anywhere (K segments with partial sums in memory
 * measured half the speed: a tile store waits for its products). The ternary codes are unpacked
 * TERN_AMX_AHEAD steps ahead into a ring in L1 (the vector unit unpacks while the tiles
 * multiply; unpacking a pair's codes whole into a buffer first cost a third of the time, in its
 * stores), and a block's epilogue runs during the next block's steps. A last block of
 * fewer than 16 tokens runs under a tile configuration of that many rows (nothing past the
 * activations is read). The block-scale layouts (TQ sources, Q8_0 head blocks), k % 64 != 0
 * and fewer than TERN_AMX_MIN tokens go to the AVX-512 kernels.
 * Tried on an Intel Xeon VM (2560 x 6912, 6912 x 2560, 2560 x 2560 at 64-512 tokens, one
 * thread, interleaved with this kernel; all bit-identical) and slower or no better: slabs of
 * 1024 columns whose 32 tokens stay in L1 while 8 pairs of groups pass, their sums in memory
 * between slabs (0.72-0.92x); the same with every pair per slab (0.85-1.0x); a slab's unpacked
 * codes shared by every block of 128 tokens (0.83-1.03x); a pair's unpacked codes kept for
 * all of k in L2 (0.97-1.05x); activations in tile-contiguous blocks (1.02-1.05x); A lines
 * prefetched into L1 1-4 steps ahead (0.95-1.10x). Skipping the unpacking (wrong sums: the
 * bound of what unpacking costs) is 1.19-1.43x. That VM's tile unit runs at 880 or 2200
 * GMAC/s a thread from one 0.1-0.2 s spell to the next, and this kernel at 0.38-0.46 of the
 * spell's rate in either.
 */

#include <immintrin.h>
#include <string.h>

#include "kernels/simd-avx512.h"

/* tokens from which the tiles pay (2560 x 6912: 1.3x vpdpbusd at 8, 2.2x at 12) */
#define TERN_AMX_MIN 8
#define TERN_AMX_LD 32 /* int32 sums a token in the C scratch (two groups) */
/* activations of a chunk of tokens, which every pair of groups re-reads: kept within L2 */
#define TERN_AMX_ACT_BYTES (768 * 1024)
/* steps the codes are unpacked ahead of their tile loads, and the ring's slots (a power of
 * two above it): a tile load waits for the vector stores before it to leave the store
 * buffer, which they do only after the (long) tile products ahead of them retire */
#define TERN_AMX_AHEAD 3
#define TERN_AMX_RING 4

/* palette 1: tiles 0-3 C (rows x 64 bytes), 4-5 A (rows x 64), 6-7 B (16 x 64) */
typedef struct {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_cfg;

static void amx_config(int rows)
{
    amx_cfg c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int i = 0; i < 8; i++) {
        c.colsb[i] = 64;
        c.rows[i] = (uint8_t)(i < 6 ? rows : 16);
    }
    /* all 64 bytes are read: GCC 12 takes _tile_loadconfig for a read of fewer, drops the
     * zeroing of the last 32 (tiles 8-15) and leaves the stack's bytes there, which a
     * nonzero byte makes an invalid configuration (a fault) */
    __asm__ volatile("" : : "m"(c) : "memory");
    _tile_loadconfig(&c);
}

/* A block's finished sums whose epilogue is pending: tokens [t0, t0 + nt) of the chunk at
 * (q, s, qsum, y) for groups [g, g + ng), in cs. */
typedef struct {
    const int32_t *cs;
    const float *s;
    const int32_t *qsum;
    float *y;
    int64_t g, t0, nt;
    int ng;
} amx_pend;

/* One call of either GEMM: the chunk of tokens in use and the pair of groups at g. */
typedef struct {
    const tern_tmat *tw;  /* ternary GEMM, or NULL */
    const tern_i8mat *hw; /* int8 head, or NULL */
    const int8_t *q;      /* the chunk's activations [nt][k] */
    const float *s;       /* their scales */
    const int32_t *qsum;  /* their sums */
    float *y;             /* the chunk's first output row */
    int64_t k, ldy, o0, o1;
    int64_t g;     /* the pair's first group */
    int32_t *cs2;  /* [2][32][TERN_AMX_LD]: two blocks' sums (the pending and the running) */
    int32_t *cs;   /* the running block's half of cs2 */
    __m512i *ring; /* ternary: [TERN_AMX_RING][2][16], steps' codes of the pair */
    amx_pend pend; /* the previous block's, done while this one multiplies (nt 0: none) */
} amx_job;

/* step st's codes of groups [g, g+NG) (four chunks each) into ring slot st % TERN_AMX_RING */
AI void amx_codes(const amx_job *p, int64_t st, const int NG)
{
    const int64_t gstride = p->tw->kc * TERN_TG_BYTES;
    __m512i *slot = p->ring + (st & (TERN_AMX_RING - 1)) * 32;
#pragma GCC unroll 2
    for (int gi = 0; gi < NG; gi++)
#pragma GCC unroll 4
        for (int cc = 0; cc < 4; cc++)
            unpack(p->tw->codes + (p->g + gi) * gstride + (st * 4 + cc) * TERN_TG_BYTES,
                   slot + gi * 16 + cc * 4);
}

/* Output vector e (token e / ng, group e % ng) of the pending block: the reference's
 * epilogue into y. */
static inline void amx_out1(const amx_job *p, int64_t e)
{
    const amx_pend *d = &p->pend;
    const int64_t t = d->t0 + e / d->ng, gi = e % d->ng, g = d->g + gi, r0 = g * 16;
    const __m512i a =
        _mm512_load_si512((const void *)(d->cs + (t - d->t0) * TERN_AMX_LD + 16 * gi));
    float *out = d->y + t * p->ldy + r0;
    const __mmask16 m = row_mask(g, p->o0, p->o1);
    if (p->tw)
        store_rows(out, m, tgemm_float(a, d->qsum[t], d->s[t], p->tw->alpha));
    else
        hi_store(a, d->qsum[t], p->hw->scale + r0, d->s[t], out, m);
}

/* C tile (ti, gi) in cs: rows are tokens, 16 sums of group gi each */
#define AMX_CS(ti, gi) (p->cs + 16 * (ti)*TERN_AMX_LD + 16 * (gi))

/* TI token blocks (tokens t0..) x NG groups over all of k (both 1 or 2, constants after
 * inlining; tile numbers are immediates): C(ti, gi) is tile ti * 2 + gi. HEAD (a constant
 * too) takes B from the head's rows in place, else from the ring of unpacked codes. Codes are
 * unpacked TERN_AMX_AHEAD steps ahead, and the pending block's epilogue is spread over the steps,
 * so the vector unit works while the tiles multiply (after the loop, its epilogue cost a fifth). */
AI void amx_block(const amx_job *p, int64_t t0, const int TI, const int NG, const bool HEAD)
{
    const int64_t k = p->k, ld = TERN_AMX_LD * 4, steps = k / 64;
    const int64_t E = p->pend.nt * p->pend.ng, per = (E + steps - 1) / steps;
    int64_t e = 0;
    _tile_zero(0);
    if (NG == 2) _tile_zero(1);
    if (TI == 2) _tile_zero(2);
    if (TI == 2 && NG == 2) _tile_zero(3);
    const int8_t *a = p->q + t0 * k;
    const uint8_t *hb = HEAD ? p->hw->qu + p->g * p->hw->kc * 64 : NULL;
    const int64_t hstride = HEAD ? p->hw->kc * 64 : 0;
    if (!HEAD)
        for (int64_t st = 0; st < TERN_AMX_AHEAD && st < steps; st++) amx_codes(p, st, NG);
    for (int64_t st = 0; st < steps; st++) {
        const void *b0, *b1;
        if (HEAD) {
            b0 = hb + st * 1024;
            b1 = hb + hstride + st * 1024;
        } else {
            b0 = p->ring + (st & (TERN_AMX_RING - 1)) * 32;
            b1 = p->ring + (st & (TERN_AMX_RING - 1)) * 32 + 16;
        }
        _tile_loadd(6, b0, 64);
        _tile_loadd(4, a + st * 64, k);
        _tile_dpbsud(0, 4, 6);
        if (NG == 2) {
            _tile_loadd(7, b1, 64);
            _tile_dpbsud(1, 4, 7);
        }
        if (TI == 2) {
            _tile_loadd(5, a + 16 * k + st * 64, k);
            _tile_dpbsud(2, 5, 6);
            if (NG == 2) _tile_dpbsud(3, 5, 7);
        }
        if (!HEAD && st + TERN_AMX_AHEAD < steps) amx_codes(p, st + TERN_AMX_AHEAD, NG);
        for (int64_t u = 0; u < per && e < E; u++, e++) amx_out1(p, e);
    }
    for (; e < E; e++) amx_out1(p, e);
    _tile_stored(0, AMX_CS(0, 0), ld);
    if (NG == 2) _tile_stored(1, AMX_CS(0, 1), ld);
    if (TI == 2) _tile_stored(2, AMX_CS(1, 0), ld);
    if (TI == 2 && NG == 2) _tile_stored(3, AMX_CS(1, 1), ld);
}

/* the block shapes: [head][ng - 1][ti - 1] */
typedef void (*amx_block_fn)(const amx_job *p, int64_t t0);
#define AMX_FN(H, NG, TI)                                                                          \
    static void amx_b##H##NG##TI(const amx_job *p, int64_t t0)                                     \
    {                                                                                              \
        amx_block(p, t0, TI, NG, H);                                                               \
    }
AMX_FN(0, 1, 1)
AMX_FN(0, 1, 2)
AMX_FN(0, 2, 1)
AMX_FN(0, 2, 2)
AMX_FN(1, 1, 1)
AMX_FN(1, 1, 2)
AMX_FN(1, 2, 1)
AMX_FN(1, 2, 2)
#undef AMX_FN
static const amx_block_fn amx_blocks[2][2][2] = {{{amx_b011, amx_b012}, {amx_b021, amx_b022}},
                                                 {{amx_b111, amx_b112}, {amx_b121, amx_b122}}};

/* Block (tokens [t0, t0 + nt) of the chunk, ng groups): runs with the previous block's
 * epilogue, then becomes the pending one, its sums in the other half of cs2. */
static void amx_step(amx_job *p, amx_block_fn fn, int ng, int64_t t0, int64_t nt)
{
    fn(p, t0);
    p->pend = (amx_pend){p->cs, p->s, p->qsum, p->y, p->g, t0, nt, ng};
    p->cs = p->cs == p->cs2 ? p->cs2 + 32 * TERN_AMX_LD : p->cs2;
}

/* All n_tok tokens of the job's chunk for one pair of groups: pairs of full blocks, one full
 * block, then a partial block under a configuration of its rows. */
static void amx_pair(amx_job *p, int ng, int64_t n_tok)
{
    const amx_block_fn *blk = amx_blocks[p->hw != NULL][ng - 1];
    int64_t t0 = 0;
    for (; t0 + 32 <= n_tok; t0 += 32) amx_step(p, blk[1], ng, t0, 32);
    if (t0 + 16 <= n_tok) {
        amx_step(p, blk[0], ng, t0, 16);
        t0 += 16;
    }
    if (t0 < n_tok) {
        amx_config((int)(n_tok - t0));
        amx_step(p, blk[0], ng, t0, n_tok - t0);
        amx_config(16);
    }
}

/* Every chunk of tokens x every pair of groups covering rows [o0, o1), then the last block's
 * epilogue. */
static void amx_run(amx_job *p, int64_t n_tok)
{
    _Alignas(64) int32_t cs2[2 * 32 * TERN_AMX_LD];
    _Alignas(64) __m512i ring[TERN_AMX_RING * 2 * 16];
    p->cs = p->cs2 = cs2;
    p->ring = ring;
    p->pend.nt = 0;
    const int8_t *q = p->q;
    const float *s = p->s;
    const int32_t *qsum = p->qsum;
    float *y = p->y;
    const int64_t g0 = p->o0 / 16, gend = (p->o1 + 15) / 16;
    /* a multiple of 32 tokens, at least 32 */
    const int64_t fit = TERN_AMX_ACT_BYTES / p->k / 32 * 32, chunk = fit > 32 ? fit : 32;
    amx_config(16);
    for (int64_t tc = 0; tc < n_tok; tc += chunk) {
        const int64_t nt = n_tok - tc < chunk ? n_tok - tc : chunk;
        p->q = q + tc * p->k;
        p->s = s + tc;
        p->qsum = qsum + tc;
        p->y = y + tc * p->ldy;
        for (int64_t g = g0; g < gend; g += 2) {
            p->g = g;
            amx_pair(p, gend - g < 2 ? 1 : 2, nt);
        }
    }
    _tile_release();
    for (int64_t e = 0; e < p->pend.nt * p->pend.ng; e++) amx_out1(p, e);
}

void tern_amx_tgemm(const tern_tmat *w, const int8_t *q, const float *s, const int32_t *qsum,
                    int64_t n_tok, float *y, int64_t ldy, int64_t o0, int64_t o1)
{
    if (w->blocks || n_tok < TERN_AMX_MIN || w->k % 64 != 0) {
        tern_avx512_tgemm(w, q, s, qsum, n_tok, y, ldy, o0, o1);
        return;
    }
    amx_job p = {
        .tw = w, .q = q, .s = s, .qsum = qsum, .y = y, .k = w->k, .ldy = ldy, .o0 = o0, .o1 = o1};
    amx_run(&p, n_tok);
}

void tern_amx_gemm_i8(const tern_i8mat *w, const int8_t *xq, const float *xs, const int32_t *xsum,
                      int64_t n_tok, float *y, int64_t ldy, int64_t o0, int64_t o1)
{
    if (w->bscale || n_tok < TERN_AMX_MIN || w->k % 64 != 0) {
        tern_kernels_avx512.gemm_i8(w, xq, xs, xsum, n_tok, y, ldy, o0, o1);
        return;
    }
    amx_job p = {
        .hw = w, .q = xq, .s = xs, .qsum = xsum, .y = y, .k = w->k, .ldy = ldy, .o0 = o0, .o1 = o1};
    amx_run(&p, n_tok);
}

/* The tile peak: 4 accumulator tiles x 4 TDPBSUD a round (16 x 16384 multiply-adds), on
 * tiles loaded once; the sums go to tern_peak_sink. */
uint64_t tern_amx_peak_int8(int64_t iters)
{
    _Alignas(64) int8_t a[16 * 64];
    _Alignas(64) int32_t c[16 * 16];
    memset(a, 1, sizeof a);
    amx_config(16);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    _tile_loadd(4, a, 64);
    _tile_loadd(5, a, 64);
    _tile_loadd(6, a, 64);
    _tile_loadd(7, a, 64);
    for (int64_t n = 0; n < iters; n++)
        for (int r = 0; r < 4; r++) {
            _tile_dpbsud(0, 4, 6);
            _tile_dpbsud(1, 4, 7);
            _tile_dpbsud(2, 5, 6);
            _tile_dpbsud(3, 5, 7);
        }
    _tile_stored(0, c, 64);
    _tile_release();
    tern_peak_sink = c[0];
    return (uint64_t)iters * 16 * 16384;
}
