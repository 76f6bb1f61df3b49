/* tgemm-amx.c: the ternary GEMM for many tokens with AMX tiles (Sapphire Rapids and later):
 * the "amx" variant is avx512 with this GEMM and the tile peak (dispatch.c).
 *
 * One TDPBSUD multiplies a tile of 16 tokens x 64 signed activations (A: rows of q, stride k,
 * loaded in place) by a tile of 64 x 16 unsigned codes (B: 16 rows of 64 bytes, row kk holding
 * four codes of each of 16 weight rows, columns 4kk..4kk+3) into 16 x 16 exact int32 sums:
 * 16384 multiply-adds, against vpdpbusd's 64. B is what unpack() makes of four chunks of the
 * packed layout (kernels-internal.h), in order, so codes need no shuffling. The sums are the
 * same exact integers as the reference's sum code*q, and the float epilogue is the reference's
 * (simd-avx512.h tgemm_float): bit-identical to tgemm-ref.c.
 *
 * Blocking: a chunk of up to TERN_AMX_CHUNK tokens; for each pair of row groups (32 rows) and
 * segment of TERN_AMX_SEG steps (64 columns each), the pair's codes are unpacked once into an
 * L1 buffer (32 KiB) and every token pair (32 tokens: four C tiles, two A, two B) runs the
 * segment; exact int32 partial sums wait in part between segments. A last block of fewer than
 * 16 tokens runs with a tile configuration of that many rows (nothing past q is read). The
 * block-scale layout (TQ sources), k % 64 != 0 and fewer than TERN_AMX_MIN tokens go to the
 * AVX-512 GEMM.
 */

#include <immintrin.h>
#include <string.h>

#include "kernels/simd-avx512.h"

#define TERN_AMX_MIN 16 /* tokens from which the tiles pay */
#define TERN_AMX_LD 32  /* int32 sums a token in the C scratch (two groups) */
/* activations of a chunk of tokens that every pair of groups re-reads: kept within L2 */
#define TERN_AMX_ACT_BYTES (768 * 1024)

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
    _tile_loadconfig(&c);
}

typedef struct {
    const tern_tmat *w;
    const int8_t *q;
    const float *s;
    const int32_t *qsum;
    float *y;
    int64_t ldy, o0, o1;
    int64_t g;     /* the pair's first group */
    int32_t *cs;   /* [32][TERN_AMX_LD]: a block's sums */
    __m512i *ring; /* [2][2][16]: two steps' codes of the pair */
} amx_pass;

/* step st's codes of groups [g, g+NG) (four chunks each) into ring slot st % 2 */
AI void amx_codes(const amx_pass *p, int64_t st, const int NG)
{
    const int64_t gstride = p->w->kc * TERN_TG_BYTES;
    __m512i *slot = p->ring + (st & 1) * 32;
#pragma GCC unroll 2
    for (int gi = 0; gi < NG; gi++)
#pragma GCC unroll 4
        for (int cc = 0; cc < 4; cc++)
            unpack(p->w->codes + (p->g + gi) * gstride + (st * 4 + cc) * TERN_TG_BYTES,
                   slot + gi * 16 + cc * 4);
}

/* C tile (ti, gi) in cs: rows are tokens, 16 sums of group gi each */
#define AMX_CS(ti, gi) (p->cs + 16 * (ti)*TERN_AMX_LD + 16 * (gi))

/* TI token blocks (tokens t0..) x NG groups over all of k (both 1 or 2, constants after
 * inlining; tile numbers are immediates): C(ti, gi) is tile ti * 2 + gi. Codes are unpacked
 * one step ahead into the ring, so the vector unit unpacks while the tiles multiply. */
AI void amx_block(const amx_pass *p, int64_t t0, const int TI, const int NG)
{
    const int64_t k = p->w->k, ld = TERN_AMX_LD * 4, steps = k / 64;
    _tile_zero(0);
    if (NG == 2) _tile_zero(1);
    if (TI == 2) _tile_zero(2);
    if (TI == 2 && NG == 2) _tile_zero(3);
    const int8_t *a = p->q + t0 * k;
    amx_codes(p, 0, NG);
    for (int64_t st = 0; st < steps; st++) {
        if (st + 1 < steps) amx_codes(p, st + 1, NG);
        const __m512i *slot = p->ring + (st & 1) * 32;
        _tile_loadd(6, slot, 64);
        _tile_loadd(4, a + st * 64, k);
        _tile_dpbsud(0, 4, 6);
        if (NG == 2) {
            _tile_loadd(7, slot + 16, 64);
            _tile_dpbsud(1, 4, 7);
        }
        if (TI == 2) {
            _tile_loadd(5, a + 16 * k + st * 64, k);
            _tile_dpbsud(2, 5, 6);
            if (NG == 2) _tile_dpbsud(3, 5, 7);
        }
    }
    _tile_stored(0, AMX_CS(0, 0), ld);
    if (NG == 2) _tile_stored(1, AMX_CS(0, 1), ld);
    if (TI == 2) _tile_stored(2, AMX_CS(1, 0), ld);
    if (TI == 2 && NG == 2) _tile_stored(3, AMX_CS(1, 1), ld);
}

/* tokens [t0, t1) of a block's sums: the reference's epilogue into y */
static void amx_out(const amx_pass *p, int ng, int64_t t0, int64_t t1)
{
    for (int64_t t = t0; t < t1; t++)
        for (int gi = 0; gi < ng; gi++) {
            const __m512i a =
                _mm512_load_si512((const void *)(p->cs + (t - t0) * TERN_AMX_LD + 16 * gi));
            store_rows(p->y + t * p->ldy + (p->g + gi) * 16, row_mask(p->g + gi, p->o0, p->o1),
                       tgemm_float(a, p->qsum[t], p->s[t], p->w->alpha));
        }
}

#define AMX_BLOCK(TI)                                                                              \
    do {                                                                                           \
        if (ng == 2)                                                                               \
            amx_block(p, t0, (TI), 2);                                                             \
        else                                                                                       \
            amx_block(p, t0, (TI), 1);                                                             \
    } while (0)

/* All tokens for one pair of groups: pairs of full blocks, one full block, then a partial
 * block under a configuration of its rows (nothing past q is read). */
static void amx_pair(const amx_pass *p, int ng, int64_t n_tok)
{
    int64_t t0 = 0;
    for (; t0 + 32 <= n_tok; t0 += 32) {
        AMX_BLOCK(2);
        amx_out(p, ng, t0, t0 + 32);
    }
    if (t0 + 16 <= n_tok) {
        AMX_BLOCK(1);
        amx_out(p, ng, t0, t0 + 16);
        t0 += 16;
    }
    if (t0 < n_tok) {
        amx_config((int)(n_tok - t0));
        AMX_BLOCK(1);
        amx_config(16);
        amx_out(p, ng, t0, n_tok);
    }
}
#undef AMX_BLOCK

void tern_amx_tgemm(const tern_tmat *w, const int8_t *q, const float *s, const int32_t *qsum,
                    int64_t n_tok, float *y, int64_t ldy, int64_t o0, int64_t o1)
{
    if (w->blocks || n_tok < TERN_AMX_MIN || w->k % 64 != 0) {
        tern_avx512_tgemm(w, q, s, qsum, n_tok, y, ldy, o0, o1);
        return;
    }
    _Alignas(64) int32_t cs[32 * TERN_AMX_LD];
    _Alignas(64) __m512i ring[2 * 2 * 16];
    const int64_t g0 = o0 / 16, gend = (o1 + 15) / 16;
    amx_pass p = {w, q, s, qsum, y, ldy, o0, o1, 0, cs, ring};
    /* a multiple of 32 tokens, at least 32 */
    const int64_t chunk =
        (TERN_AMX_ACT_BYTES / w->k) / 32 * 32 > 32 ? (TERN_AMX_ACT_BYTES / w->k) / 32 * 32 : 32;
    amx_config(16);
    for (int64_t tc = 0; tc < n_tok; tc += chunk) {
        const int64_t nt = n_tok - tc < chunk ? n_tok - tc : chunk;
        p.q = q + tc * w->k;
        p.s = s + tc;
        p.qsum = qsum + tc;
        p.y = y + tc * ldy;
        for (int64_t g = g0; g < gend; g += 2) {
            p.g = g;
            amx_pair(&p, gend - g < 2 ? 1 : 2, nt);
        }
    }
    _tile_release();
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
