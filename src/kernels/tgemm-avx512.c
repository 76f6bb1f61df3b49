/* tgemm-avx512.c: activation quantization and the ternary GEMM with AVX-512 + VNNI.
 *
 * Bit-identical to tgemm-ref.c: the quantizer uses the same float operations (multiply,
 * round half to even by immediate, clamp), and the GEMM computes the same exact int32 dot
 * products, then the same float epilogue in the same order (no fused multiply-add).
 *
 * GEMM shape: one 64-byte chunk of a row group (16 rows x 16 columns of 2-bit codes, layout
 * in kernels-internal.h) is unpacked into four vectors of codes (shift + mask), each paired by
 * vpdpbusd with one broadcast int32 of four activations, so the int32 lane r accumulates
 * sum code*q for row r. sum t*q = sum code*q - sum q (qsum). Codes are <= 2 and vpdpbusd adds
 * four u8*s8 products straight into int32, so nothing narrower than int32 accumulates.
 * Register blocking: a tile is G groups x TB tokens of accumulators (TB <= 8, G = 2 for
 * TB >= 4, else 4); each unpacked chunk serves all TB tokens. Cache blocking: a batch of four
 * groups (64 rows) takes passes over segments of 1024 columns; in each pass every block of
 * 8 tokens (of a chunk of 64) reuses the segment's weights from L1, and its own activations
 * (8 KiB) stay in L1 too. Exact int32 partial sums wait on the stack between passes. So
 * weights come from memory once per 64 tokens, and decode (n_tok = 1) makes a single pass.
 */

#include <math.h>
#include <string.h>

#include "kernels/simd-avx512.h"

void tern_avx512_act_quant(const float *x, int64_t n, int64_t k, int8_t *q, float *s, int32_t *qsum)
{
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    const __m512 lo = _mm512_set1_ps(-128.0f), hi = _mm512_set1_ps(127.0f);
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * k;
        int8_t *qi = q + i * k;
        /* max(|x|, acc): a NaN |x| yields acc, as the reference ignores NaN */
        __m512 m0 = _mm512_setzero_ps(), m1 = _mm512_setzero_ps();
        int64_t j = 0;
        for (; j + 32 <= k; j += 32) {
            m0 = _mm512_max_ps(_mm512_and_ps(_mm512_loadu_ps(xi + j), absmask), m0);
            m1 = _mm512_max_ps(_mm512_and_ps(_mm512_loadu_ps(xi + j + 16), absmask), m1);
        }
        for (; j < k; j += 16) {
            __m512 v = _mm512_maskz_loadu_ps(tail16(k - j), xi + j);
            m0 = _mm512_max_ps(_mm512_and_ps(v, absmask), m0);
        }
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
        if (amax < 1e-5f) amax = 1e-5f;
        const float sc = 127.0f / amax;
        const __m512 vs = _mm512_set1_ps(sc);
        __m512i sum = _mm512_setzero_si512();
        for (j = 0; j < k; j += 16) {
            __mmask16 m = tail16(k - j);
            __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, xi + j), vs);
            v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            v = _mm512_min_ps(_mm512_max_ps(v, lo), hi); /* max(NaN, lo) = lo */
            __m512i iv = _mm512_cvtps_epi32(v);          /* integral already: exact */
            sum = _mm512_add_epi32(sum, iv);             /* masked lanes are 0 */
            if (k - j >= 16) /* unmasked where full: a masked store does not forward */
                _mm_storeu_si128((__m128i *)(void *)(qi + j), _mm512_cvtepi32_epi8(iv));
            else
                _mm512_mask_cvtepi32_storeu_epi8(qi + j, m, iv);
        }
        s[i] = sc;
        qsum[i] = _mm512_reduce_add_epi32(sum);
    }
}

/* kernels.h's int8 KV quantizer, the reference's operations lane by lane: max ignoring NaN
 * (max_ps keeps its second operand then), one product, round half to even, NaN to 0, clamp. */
void tern_avx512_kv_quant_q8(const float *x, int64_t n, int64_t d, int8_t *q, float *scale,
                             int32_t *sum)
{
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    const __m512 lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
    for (int64_t r = 0; r < n; r++) {
        const float *xr = x + r * d;
        int8_t *qr = q + r * d;
        __m512 m = _mm512_setzero_ps();
        for (int64_t i = 0; i < d; i += 16)
            m = _mm512_max_ps(_mm512_and_ps(load_n(xr + i, d - i), absmask), m);
        const float amax = _mm512_reduce_max_ps(m);
        if (tern_kv_zero_row(amax, qr, d, scale + r, sum ? sum + r : NULL)) continue;
        const __m512 vs = _mm512_set1_ps(127.0f / amax);
        __m512i acc = _mm512_setzero_si512();
        for (int64_t i = 0; i < d; i += 16) {
            __m512 v = _mm512_roundscale_ps(_mm512_mul_ps(load_n(xr + i, d - i), vs),
                                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), v); /* NaN -> 0 */
            const __m512i iv = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(v, lo), hi));
            acc = _mm512_add_epi32(acc, iv); /* lanes past d are 0 */
            if (d - i >= 16)
                _mm_storeu_si128((__m128i *)(void *)(qr + i), _mm512_cvtepi32_epi8(iv));
            else
                _mm512_mask_cvtepi32_storeu_epi8(qr + i, tail16(d - i), iv);
        }
        if (sum) sum[r] = _mm512_reduce_add_epi32(acc);
        scale[r] = amax / 127.0f;
    }
}

/* acc + the 4-byte dot products of c (unsigned) and b, per int32 lane. Inline assembly: GCC 12
 * copies the accumulator of _mm512_dpbusd_epi32 around uses in large tiles (ops-avx512.c). */
AI __m512i dpbusd(__m512i acc, __m512i c, __m512i b)
{
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(c), "v"(b));
    return acc;
}

/* One pass of the single-scale GEMM: chunks [c0, c1) of every tile. With several passes
 * (first/last), int32 partial sums wait in part[token - tbase][group - gbase][16]. */
typedef struct {
    const tern_tmat *w;
    const int8_t *q;
    const float *s;
    const int32_t *qsum;
    float *y;
    int64_t ldy, o0, o1;
    int64_t c0, c1;
    int32_t *part;
    int64_t gbase, tbase;
    bool first, last;
} pass;

/* The exact sum a of group g + gi, token t0 + ti after a pass: waits in part, or (last pass)
 * becomes the reference's float epilogue (a - qsum) / s * alpha, stored for the rows in
 * [o0, o1). */
AI void tile_out(const pass *p, int64_t g, int gi, int64_t t0, int ti, __m512i a)
{
    if (!p->last) {
        _mm512_store_si512((void *)(p->part + (t0 + ti - p->tbase) * 64 + (g + gi - p->gbase) * 16),
                           a);
        return;
    }
    store_rows(p->y + (t0 + ti) * p->ldy + (g + gi) * 16, row_mask(g + gi, p->o0, p->o1),
               tgemm_float(a, p->qsum[t0 + ti], p->s[t0 + ti], p->w->alpha));
}

/* Prefetch distance of the tiles' code streams, in chunks (32: 2 KiB ahead). The hardware's
 * prefetch alone left the streams waiting: Intel Xeon VM (AMX), 2 threads, the 30 layers of a
 * 2B-4T decode step, 3 interleaved rounds, medians: none 20.4-20.9 ms, 12 chunks 17.2-17.9, 16
 * 17.6-18.0, 24 17.1-17.5, 32 17.1-17.5, 48 17.2-17.5 (1.18x; 30 GB/s, the read probe's rate);
 * 9-12 sequences in passes (AVX-512 alone) 68-74 -> 43-52 ms. The address may lie past the
 * codes (the last tiles): an address, not a pointer into them; prefetch does not fault. */
#define GEMV_PF 32
AI void prefetch_at(const void *p, int64_t off)
{
    _mm_prefetch((const char *)((uintptr_t)p + (uintptr_t)off), _MM_HINT_T0);
}

/* Tile with one scale: groups g + gs * gi for gi < G, tokens [t0, t0+TB). G and TB are constants
 * after inlining; the pragmas make the accumulator arrays registers. TB == 1 splits each
 * accumulator in two to halve the dependency chain. */
AI void tile_single(const pass *p, int64_t g, const int G, int64_t gs, int64_t t0, const int TB)
{
    const int NS = TB == 1 ? 2 : 1;
    const int64_t kc = p->w->kc, k = p->w->k, gstride = kc * TERN_TG_BYTES;
    const uint8_t *wg = p->w->codes + g * gstride;
    const int8_t *qt = p->q + t0 * k;
    /* group g + gi * gs's sums at part + (group - gbase) * 16 */
    int32_t *part = p->part ? p->part + (t0 - p->tbase) * 64 + (g - p->gbase) * 16 : NULL;
    __m512i acc[4][16][2];
#pragma GCC unroll 4
    for (int gi = 0; gi < G; gi++)
#pragma GCC unroll 16
        for (int ti = 0; ti < TB; ti++) {
            acc[gi][ti][0] = p->first
                                 ? _mm512_setzero_si512()
                                 : _mm512_load_si512((const void *)(part + ti * 64 + gi * gs * 16));
            if (NS == 2) acc[gi][ti][1] = _mm512_setzero_si512();
        }
    for (int64_t c = p->c0; c < p->c1; c++) {
        __m512i cc[4][4];
        /* the streams run on past a group's end into the next tile's group (gs > 1) or the
         * next pass's chunks of the same group */
#pragma GCC unroll 4
        for (int gi = 0; gi < G; gi++)
            prefetch_at(wg, gi * gs * gstride + (c + GEMV_PF) * TERN_TG_BYTES);
#pragma GCC unroll 4
        for (int gi = 0; gi < G; gi++) unpack(wg + gi * gs * gstride + c * TERN_TG_BYTES, cc[gi]);
#pragma GCC unroll 16
        for (int ti = 0; ti < TB; ti++)
#pragma GCC unroll 4
            for (int sh = 0; sh < 4; sh++) {
                __m512i b = _mm512_set1_epi32(tern_load_i32(qt + ti * k + c * 16 + sh * 4));
#pragma GCC unroll 4
                for (int gi = 0; gi < G; gi++)
                    acc[gi][ti][sh % NS] = _mm512_dpbusd_epi32(acc[gi][ti][sh % NS], cc[gi][sh], b);
            }
    }
#pragma GCC unroll 4
    for (int gi = 0; gi < G; gi++)
#pragma GCC unroll 16
        for (int ti = 0; ti < TB; ti++)
            tile_out(p, g + gi * gs, 0, t0, ti,
                     NS == 2 ? _mm512_add_epi32(acc[gi][ti][0], acc[gi][ti][1]) : acc[gi][ti][0]);
}

/* Groups [g, g1) for tokens [t0, t0+TB): the groups in GM segments, a tile taking the j-th
 * group of each (the rest alone), so that in a single pass over k each code stream runs on
 * through its segment (one long sequential read, which the prefetchers follow best) instead
 * of ending every kc * 64 bytes beside the others, as head-f16.h's one-token head (one token,
 * Intel Xeon VM, 2 threads, 40 matrices in turn: 1.10x median over 9 interleaved pairs,
 * 0.96-1.43x). */
#define RUN_SINGLE(TBV, GM)                                                                        \
    case TBV: {                                                                                    \
        const int64_t len = (g1 - g) / (GM);                                                       \
        for (int64_t j = 0; j < len; j++) tile_single(p, g + j, (GM), len, t0, (TBV));             \
        for (int64_t gg = g + (GM)*len; gg < g1; gg++) tile_single(p, gg, 1, 1, t0, (TBV));        \
    } break

static void run_single(const pass *p, int64_t g, int64_t g1, int64_t t0, int tb)
{
    switch (tb) {
        RUN_SINGLE(1, 4);
        RUN_SINGLE(2, 4);
        RUN_SINGLE(3, 4);
        RUN_SINGLE(4, 2);
        RUN_SINGLE(5, 2);
        RUN_SINGLE(6, 2);
        RUN_SINGLE(7, 2);
        RUN_SINGLE(8, 2);
    default:
        TERN_ASSERT(0);
    }
}
#undef RUN_SINGLE

/* ---- many tokens: the codes of a segment unpacked once into L1 ---- */

/* Unpacking costs 7 vector operations a chunk, on the ports vpdpbusd needs; the tiles above
 * pay them once per 8 tokens (0.77 of the VNNI rate measured). For many tokens the codes of
 * four groups x TERN_BSEG chunks are unpacked once per TERN_BCHUNK tokens into a 32 KiB
 * buffer (4 vectors a chunk and group), and tiles of TERN_BTG groups x TERN_BTB tokens load
 * them from there: 10 loads (2 code vectors, 8 broadcasts) feed 16 vpdpbusd, no other vector
 * operation. Register loops alone on Zen 5 (one thread, vpdpbusd peak 490 GMAC/s): 2 x 8 at
 * 481-493, 3 x 6 at 478-485, 4 x 6 (the tile before, 24 sums) at 446-451; in the GEMM
 * (6912x2560 at 64 tokens, 2560x6912 at 256, interleaved runs) 2 x 8 is 1.03-1.08x of 4 x 6.
 * The sums are the same exact integers. */
#define TERN_BSEG 32
/* Below TERN_BSEG_FEW_TOKENS tokens, segments of TERN_BSEG_FEW chunks: the buffer's 16 KiB
 * leave L1 room for the partial sums and activations of the few token tiles. 6912 x 2560 in L3,
 * one thread, Intel Xeon VM without AMX, 3 interleaved rounds: 16 tokens 264-270 -> 296-303
 * GMAC/s, 32 303-308 -> 322-327, 64 even (326-339); 128 and 256 0.97-1.0x, so they keep 32. */
#define TERN_BSEG_FEW 16
#define TERN_BSEG_FEW_TOKENS 64
#define TERN_BTB 8
#define TERN_BTG 2
#define TERN_BCHUNK 256 /* tokens per unpacking (their partial sums: 64 KiB on the stack) */
#define TERN_BMIN 16    /* tokens from which the buffer pays (16: two tiles over it) */

/* buf[((c - c0) * 4 + gi) * 4 + sh]: chunk c's codes of columns 4sh.. of group g + gi */
static void unpack_buf(const pass *p, int64_t g, int ng, __m512i *buf)
{
    const int64_t kc = p->w->kc, gstride = kc * TERN_TG_BYTES, ngroups = (p->w->n + 15) / 16;
    /* the next segment's codes (same groups, or the next four groups' first) to L2 meanwhile */
    const bool same = p->c1 < kc;
    for (int64_t c = p->c0; c < p->c1; c++)
        for (int gi = 0; gi < ng; gi++) {
            const int64_t pg = same ? g + gi : g + 4 + gi,
                          pc = same ? c + (p->c1 - p->c0) : c - p->c0;
            if (pg < ngroups && pc < kc)
                _mm_prefetch((const char *)(p->w->codes + pg * gstride + pc * TERN_TG_BYTES),
                             _MM_HINT_T1);
            unpack(p->w->codes + (g + gi) * gstride + c * TERN_TG_BYTES,
                   buf + ((c - p->c0) * 4 + gi) * 4);
        }
}

/* Tile over the buffer: groups [g + g0, g + g0 + G) x tokens [t0, t0+TB), G and TB constants
 * after inlining. */
AI void tile_buf(const pass *p, const __m512i *buf, int64_t g, int g0, const int G, int64_t t0,
                 const int TB)
{
    const int64_t k = p->w->k;
    const int8_t *qt = p->q + t0 * k;
    __m512i acc[TERN_BTG][TERN_BTB];
#pragma GCC unroll 4
    for (int gi = 0; gi < G; gi++)
#pragma GCC unroll 8
        for (int ti = 0; ti < TB; ti++)
            acc[gi][ti] =
                p->first ? _mm512_setzero_si512()
                         : _mm512_load_si512((const void *)(p->part + (t0 + ti - p->tbase) * 64 +
                                                            (g + g0 + gi - p->gbase) * 16));
    for (int64_t c = p->c0; c < p->c1; c++) {
        const __m512i *bc = buf + (c - p->c0) * 16 + g0 * 4;
#pragma GCC unroll 4
        for (int sh = 0; sh < 4; sh++) {
            __m512i cv[TERN_BTG];
#pragma GCC unroll 4
            for (int gi = 0; gi < G; gi++) cv[gi] = _mm512_load_si512(bc + gi * 4 + sh);
#pragma GCC unroll 8
            for (int ti = 0; ti < TB; ti++) {
                const __m512i b = _mm512_set1_epi32(tern_load_i32(qt + ti * k + c * 16 + sh * 4));
#pragma GCC unroll 4
                for (int gi = 0; gi < G; gi++) acc[gi][ti] = dpbusd(acc[gi][ti], cv[gi], b);
            }
        }
    }
#pragma GCC unroll 4
    for (int gi = 0; gi < G; gi++)
#pragma GCC unroll 8
        for (int ti = 0; ti < TB; ti++) tile_out(p, g, g0 + gi, t0, ti, acc[gi][ti]);
}

#define BUF_TB(GV, TBV)                                                                            \
    case TBV:                                                                                      \
        tile_buf(p, buf, g, g0, (GV), t0, (TBV));                                                  \
        break
#define BUF_G(GV)                                                                                  \
    case GV:                                                                                       \
        switch (tb) {                                                                              \
            BUF_TB(GV, 1);                                                                         \
            BUF_TB(GV, 2);                                                                         \
            BUF_TB(GV, 3);                                                                         \
            BUF_TB(GV, 4);                                                                         \
            BUF_TB(GV, 5);                                                                         \
            BUF_TB(GV, 6);                                                                         \
            BUF_TB(GV, 7);                                                                         \
            BUF_TB(GV, 8);                                                                         \
        }                                                                                          \
        break

static void run_buf(const pass *p, const __m512i *buf, int64_t g, int ng, int64_t t0, int tb)
{
    TERN_ASSERT(ng >= 1 && ng <= 4 && tb >= 1 && tb <= TERN_BTB);
    _Static_assert(TERN_BTG == 2, "run_buf instantiates tiles of one and two groups");
    for (int g0 = 0; g0 < ng; g0 += TERN_BTG) {
        switch (ng - g0 < TERN_BTG ? ng - g0 : TERN_BTG) {
            BUF_G(1);
            BUF_G(2);
        }
    }
}
#undef BUF_G
#undef BUF_TB

/* Measured on Cascade Lake: token blocks of 8 over two groups beat 16 over one (the
 * activations of 8 tokens stay in L1), and passes of 64 chunks (1024 columns) keep them there
 * for any k; without passes n_tok >= 64 ran at half speed. */
#define TERN_SEG 64
#define TERN_TBMAX 8

/* One block of tokens (at most TERN_TBMAX) takes a single pass over k, its groups in segments
 * (run_single). For 2-8 tokens this replaced the passes over segments of TERN_SEG chunks, whose
 * weights stay in L1 for the token blocks after the first, of which there are none (Intel Xeon
 * VM with AMX, 2 threads, the 30 layers of a 2B-4T decode step of n sequences, both
 * prefetched: n = 2 20.5 -> 19.1 ms, 4 27.1 -> 22.9, 7 33.6 -> 29.4; before either, 22.3,
 * 34.3, 52.7). The activations of 4 or more tokens outgrow L1 for k = 6912 and come from L2
 * then, which the broadcasts do not wait for. */
static void gemm_single(const tern_tmat *w, const int8_t *q, const float *s, const int32_t *qsum,
                        int64_t n_tok, float *y, int64_t ldy, int64_t o0, int64_t o1)
{
    const int64_t g0 = o0 / 16, gend = (o1 + 15) / 16, kc = w->kc;
    pass p = {w, q, s, qsum, y, ldy, o0, o1, 0, kc, NULL, 0, 0, true, true};
    if (n_tok <= TERN_TBMAX) {
        run_single(&p, g0, gend, 0, (int)n_tok);
        return;
    }
    /* Passes over segments of chunks keep a token block's activations (and the segment's
     * weights, or from 16 tokens on its unpacked codes) in L1 while every token block of a
     * chunk of up to TERN_BCHUNK tokens uses them; partial sums (exact int32) wait in part
     * between passes. */
    const bool buffered = n_tok >= TERN_BMIN;
    const int64_t seg = !buffered                      ? TERN_SEG
                        : n_tok < TERN_BSEG_FEW_TOKENS ? TERN_BSEG_FEW
                                                       : TERN_BSEG;
    _Alignas(64) int32_t part[TERN_BCHUNK * 4 * 16];
    _Alignas(64) __m512i buf[TERN_BSEG * 16];
    p.part = part;
    for (int64_t tc = 0; tc < n_tok; tc += TERN_BCHUNK) {
        const int64_t tend = tc + TERN_BCHUNK < n_tok ? tc + TERN_BCHUNK : n_tok;
        p.tbase = tc;
        for (int64_t g = g0; g < gend; g += 4) {
            const int ng = gend - g < 4 ? (int)(gend - g) : 4;
            p.gbase = g;
            for (int64_t c0 = 0; c0 < kc; c0 += seg) {
                p.c0 = c0;
                p.c1 = c0 + seg < kc ? c0 + seg : kc;
                p.first = c0 == 0;
                p.last = p.c1 == kc;
                if (buffered) {
                    unpack_buf(&p, g, ng, buf);
                    for (int64_t t0 = tc; t0 < tend; t0 += TERN_BTB)
                        run_buf(&p, buf, g, ng, t0,
                                tend - t0 < TERN_BTB ? (int)(tend - t0) : TERN_BTB);
                } else {
                    for (int64_t t0 = tc; t0 < tend; t0 += TERN_TBMAX)
                        run_single(&p, g, g + ng, t0,
                                   tend - t0 < TERN_TBMAX ? (int)(tend - t0) : TERN_TBMAX);
                }
            }
        }
    }
}

/* ---- block scales (TQ sources) ---- */

/* One block (16 chunks) for TB tokens; A += (float)(acc - qsum_b) * r. */
AI void tile_blocks(const tern_tmat *w, int64_t g, const int8_t *q, const float *s,
                    const int32_t *qsb, int64_t nb_ld, int64_t t0, const int TB, float *y,
                    int64_t ldy, int64_t o0, int64_t o1)
{
    const int NS = TB == 1 ? 4 : TB == 2 ? 2 : 1;
    const int64_t kc = w->kc, k = w->k, nb = w->nb;
    const uint8_t *wg = w->codes + g * kc * TERN_TG_BYTES;
    const int8_t *qt = q + t0 * k;
    __m512 fa[8];
#pragma GCC unroll 8
    for (int ti = 0; ti < TB; ti++) fa[ti] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m512i acc[8][4];
#pragma GCC unroll 8
        for (int ti = 0; ti < TB; ti++)
#pragma GCC unroll 4
            for (int ns = 0; ns < NS; ns++) acc[ti][ns] = _mm512_setzero_si512();
        for (int64_t c = b * 16; c < b * 16 + 16; c++) {
            __m512i cc[4];
            unpack(wg + c * TERN_TG_BYTES, cc);
#pragma GCC unroll 8
            for (int ti = 0; ti < TB; ti++)
#pragma GCC unroll 4
                for (int sh = 0; sh < 4; sh++) {
                    __m512i bq = _mm512_set1_epi32(tern_load_i32(qt + ti * k + c * 16 + sh * 4));
                    acc[ti][sh % NS] = _mm512_dpbusd_epi32(acc[ti][sh % NS], cc[sh], bq);
                }
        }
        const __m512 r = _mm512_load_ps(w->rs + (g * nb + b) * 16);
#pragma GCC unroll 8
        for (int ti = 0; ti < TB; ti++) {
            __m512i a = acc[ti][0];
#pragma GCC unroll 4
            for (int ns = 1; ns < NS; ns++) a = _mm512_add_epi32(a, acc[ti][ns]);
            a = _mm512_sub_epi32(a, _mm512_set1_epi32(qsb[ti * nb_ld + b]));
            fa[ti] = _mm512_add_ps(fa[ti], _mm512_mul_ps(_mm512_cvtepi32_ps(a), r));
        }
    }
    const __m512 dm = _mm512_load_ps(w->dmax + g * 16);
    __mmask16 m = row_mask(g, o0, o1);
#pragma GCC unroll 8
    for (int ti = 0; ti < TB; ti++) {
        __m512 f = _mm512_mul_ps(_mm512_div_ps(fa[ti], _mm512_set1_ps(s[t0 + ti])), dm);
        store_rows(y + (t0 + ti) * ldy + g * 16, m, f);
    }
}

#define RUN_BLOCKS(TBV)                                                                            \
    case TBV:                                                                                      \
        tile_blocks(w, g, q, s, qsb, nb_ld, t0, (TBV), y, ldy, o0, o1);                            \
        break

static void run_blocks(const tern_tmat *w, int64_t g, const int8_t *q, const float *s,
                       const int32_t *qsb, int64_t nb_ld, int64_t t0, int tb, float *y, int64_t ldy,
                       int64_t o0, int64_t o1)
{
    switch (tb) {
        RUN_BLOCKS(1);
        RUN_BLOCKS(2);
        RUN_BLOCKS(3);
        RUN_BLOCKS(4);
        RUN_BLOCKS(5);
        RUN_BLOCKS(6);
        RUN_BLOCKS(7);
        RUN_BLOCKS(8);
    default:
        TERN_ASSERT(0);
    }
}

/* sum of the 256 activations of each block, for tokens [t0, t0+nt): qsb[t][b]. */
static void block_sums(const int8_t *q, int64_t k, int64_t t0, int64_t nt, int32_t *qsb)
{
    const __m512i ones = _mm512_set1_epi8(1);
    const int64_t nb = k / TERN_TBLOCK;
    for (int64_t t = 0; t < nt; t++)
        for (int64_t b = 0; b < nb; b++) {
            const int8_t *p = q + (t0 + t) * k + b * TERN_TBLOCK;
            __m512i a = _mm512_setzero_si512();
            for (int i = 0; i < 4; i++)
                a = _mm512_dpbusd_epi32(a, ones, _mm512_loadu_si512((const void *)(p + 64 * i)));
            qsb[t * nb + b] = _mm512_reduce_add_epi32(a);
        }
}

void tern_avx512_tgemm(const tern_tmat *w, const int8_t *q, const float *s, const int32_t *qsum,
                       int64_t n_tok, float *y, int64_t ldy, int64_t o0, int64_t o1)
{
    if (!w->blocks) {
        gemm_single(w, q, s, qsum, n_tok, y, ldy, o0, o1);
        return;
    }
    const int64_t g0 = o0 / 16, gend = (o1 + 15) / 16;
    /* Block sums for a chunk of tokens live on the stack (16 KiB); k <= 131072 gives
     * nb <= 512, so a chunk holds at least 8 tokens and weights are re-read once per chunk. */
    int32_t qsb[4096];
    const int64_t nb = w->nb, tchunk = 4096 / nb;
    for (int64_t tc = 0; tc < n_tok; tc += tchunk) {
        int64_t nt = n_tok - tc < tchunk ? n_tok - tc : tchunk;
        block_sums(q, w->k, tc, nt, qsb);
        for (int64_t g = g0; g < gend; g++)
            for (int64_t t0 = 0; t0 < nt; t0 += 8) {
                int tb = nt - t0 < 8 ? (int)(nt - t0) : 8;
                run_blocks(w, g, q, s, qsb + t0 * nb, nb, tc + t0, tb, y, ldy, o0, o1);
            }
    }
}
