/* tgemm-avx2.c: activation quantization and the ternary GEMM with AVX2.
 *
 * Bit-identical to tgemm-ref.c (same float operations in the same order, exact integer dot
 * products). A 64-byte chunk of a row group is two 32-byte halves of 8 rows; each half is
 * unpacked into four code vectors and multiplied with broadcast activations by maddubs.
 * Overflow: a maddubs lane is c_a*q_a + c_b*q_b with codes <= 2 and |q| <= 128, so
 * |lane| <= 512; eight chunks (32 maddubs, |sum| <= 16384) add up in int16 registers before
 * madd against ones widens them into exact int32 sums kept on the stack. Tiles are H halves x
 * TB tokens (4 x 2, 2 x 3, 2 x 4: H * TB <= 8 int16 accumulators, see tile_single; one token:
 * 4 halves with two accumulators each and codes masked in place, see tile_gemv4); the cache
 * blocking (four groups, passes over 1024 columns, chunks of 64 tokens) is
 * tgemm-avx512.c's.
 */

#include <math.h>

#include "kernels/simd-avx2.h"

void tern_avx2_act_quant(const float *x, int64_t n, int64_t k, int8_t *q, float *s, int32_t *qsum)
{
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 lo = _mm256_set1_ps(-128.0f), hi = _mm256_set1_ps(127.0f);
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * k;
        int8_t *qi = q + i * k;
        /* max(|x|, acc) keeps acc for a NaN |x|, as the reference ignores NaN */
        __m256 m0 = _mm256_setzero_ps(), m1 = _mm256_setzero_ps();
        int64_t j = 0;
        for (; j + 16 <= k; j += 16) {
            m0 = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(xi + j), absmask), m0);
            m1 = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(xi + j + 8), absmask), m1);
        }
        for (; j < k; j += 8) {
            __m256 v = _mm256_maskload_ps(xi + j, tail8(k - j));
            m0 = _mm256_max_ps(_mm256_and_ps(v, absmask), m0);
        }
        m0 = _mm256_max_ps(m0, m1);
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m0), _mm256_extractf128_ps(m0, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
        float amax = _mm_cvtss_f32(m4);
        if (amax < 1e-5f) amax = 1e-5f;
        const float sc = 127.0f / amax;
        const __m256 vs = _mm256_set1_ps(sc);
        __m256i sum = _mm256_setzero_si256();
        for (j = 0; j < k; j += 8) {
            __m256i m = tail8(k - j);
            __m256 v = _mm256_mul_ps(_mm256_maskload_ps(xi + j, m), vs);
            v = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            v = _mm256_min_ps(_mm256_max_ps(v, lo), hi); /* max(NaN, lo) = lo */
            __m256i iv = _mm256_cvtps_epi32(v);          /* integral already: exact */
            sum = _mm256_add_epi32(sum, iv);             /* masked lanes are 0 */
            __m128i p16 =
                _mm_packs_epi32(_mm256_castsi256_si128(iv), _mm256_extracti128_si256(iv, 1));
            __m128i p8 = _mm_packs_epi16(p16, p16);
            if (k - j >= 8) {
                _mm_storel_epi64((__m128i *)(void *)(qi + j), p8);
            } else {
                int8_t tmp[16];
                _mm_storeu_si128((__m128i *)(void *)tmp, p8);
                memcpy(qi + j, tmp, (size_t)(k - j));
            }
        }
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
        s[i] = sc;
        qsum[i] = _mm_cvtsi128_si32(s4);
    }
}

/* kernels.h's int8 KV quantizer, the reference's operations lane by lane (see
 * tgemm-avx512.c); a tail shorter than 8 takes the reference's scalar steps. */
void tern_avx2_kv_quant_q8(const float *x, int64_t n, int64_t d, int8_t *q, float *scale,
                           int32_t *sum)
{
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
    for (int64_t r = 0; r < n; r++) {
        const float *xr = x + r * d;
        int8_t *qr = q + r * d;
        __m256 m = _mm256_setzero_ps();
        int64_t i = 0;
        for (; i + 8 <= d; i += 8)
            m = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(xr + i), absmask), m);
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
        float amax = _mm_cvtss_f32(m4);
        for (; i < d; i++) {
            const float a = fabsf(xr[i]);
            if (a > amax) amax = a;
        }
        if (tern_kv_zero_row(amax, qr, d, scale + r, sum ? sum + r : NULL)) continue;
        const float sc = 127.0f / amax;
        const __m256 vs = _mm256_set1_ps(sc);
        __m256i acc = _mm256_setzero_si256();
        for (i = 0; i + 8 <= d; i += 8) {
            __m256 v = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(xr + i), vs),
                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            v = _mm256_and_ps(v, _mm256_cmp_ps(v, v, _CMP_ORD_Q)); /* NaN -> 0 */
            const __m256i iv = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, lo), hi));
            acc = _mm256_add_epi32(acc, iv);
            const __m128i p16 =
                _mm_packs_epi32(_mm256_castsi256_si128(iv), _mm256_extracti128_si256(iv, 1));
            _mm_storel_epi64((__m128i *)(void *)(qr + i), _mm_packs_epi16(p16, p16));
        }
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
        int32_t total = _mm_cvtsi128_si32(s4);
        for (; i < d; i++) total += qr[i] = tern_kv_code(xr[i], sc);
        if (sum) sum[r] = total;
        scale[r] = amax / 127.0f;
    }
}

AI void unpack(const uint8_t *p, __m256i c[4])
{
    const __m256i m3 = _mm256_set1_epi8(3);
    __m256i v = _mm256_load_si256((const __m256i *)(const void *)p);
    c[0] = _mm256_and_si256(v, m3);
    c[1] = _mm256_and_si256(_mm256_srli_epi16(v, 2), m3);
    c[2] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m3);
    c[3] = _mm256_and_si256(_mm256_srli_epi16(v, 6), m3);
}

/* sum over one chunk of code*q for 8 rows, as int32 lanes (see the overflow note above). */
AI __m256i chunk_dot(const __m256i c[4], const int8_t *qc)
{
    __m256i p = _mm256_maddubs_epi16(c[0], _mm256_set1_epi32(tern_load_i32(qc)));
    p = _mm256_add_epi16(p, _mm256_maddubs_epi16(c[1], _mm256_set1_epi32(tern_load_i32(qc + 4))));
    p = _mm256_add_epi16(p, _mm256_maddubs_epi16(c[2], _mm256_set1_epi32(tern_load_i32(qc + 8))));
    p = _mm256_add_epi16(p, _mm256_maddubs_epi16(c[3], _mm256_set1_epi32(tern_load_i32(qc + 12))));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

/* Stores the 8 rows of half hb that fall in [o0, o1). */
static inline void store_half(float *dst, __m256 f, int64_t hb, int64_t o0, int64_t o1)
{
    int64_t r0 = hb * 8, lo = o0 > r0 ? o0 - r0 : 0, hi = o1 - r0 < 8 ? o1 - r0 : 8;
    if (lo == 0 && hi == 8) {
        _mm256_storeu_ps(dst, f);
        return;
    }
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i m = _mm256_and_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32((int)hi), idx),
                                 _mm256_cmpgt_epi32(idx, _mm256_set1_epi32((int)lo - 1)));
    _mm256_maskstore_ps(dst, m, f);
}

/* Half hb (8 rows) starts at byte (hb/2)*gstride + (hb%2)*32 of the codes. */
static inline const uint8_t *half_base(const tern_tmat *w, int64_t hb)
{
    return w->codes + (hb / 2) * w->kc * TERN_TG_BYTES + (hb % 2) * 32;
}

/* One pass of the single-scale GEMM over chunks [c0, c1) (c0 a multiple of 8). Exact int32 sums
 * live in part[token - tbase][half - hbase][8] across passes. */
typedef struct {
    const tern_tmat *w;
    const int8_t *q;
    const float *s;
    const int32_t *qsum;
    float *y;
    int64_t ldy, o0, o1;
    int64_t c0, c1;
    int32_t *part;
    int64_t hbase, tbase;
    bool first, last;
} pass;

/* Tile with one scale: halves [h, h+H), tokens [t0, t0+TB). Eight chunks at a time add
 * into int16 registers (32 maddubs, |lane| <= 32 * 512 = 16384), which are then widened by
 * madd into the int32 sums in part. AVX2 has 16 vector registers, and GCC, left to itself,
 * hoists the loads of a chunk's codes and spills accumulators: with one token the tile keeps
 * 8 halves' accumulators, four broadcasts and one half's codes live (an empty asm pins each
 * accumulator after its half); with several it keeps H * TB <= 8 accumulators, the H halves'
 * code vectors of one shift and one broadcast, each code vector loaded again from L1 for its
 * shift (the loads in asm, so they are not merged and hoisted). Measured on Zen 3 against
 * 8-token tiles with all codes unpacked up front: 1.07-1.17x at 64 tokens, 1.3x at 4. */
#define TERN_SRLW_LOAD(v, p, imm)                                                                  \
    __asm__("vmovdqa %1, %0\n\tvpsrlw $" #imm ", %0, %0"                                           \
            : "=x"(v)                                                                              \
            : "m"(*(const __m256i *)(const void *)(p)))
AI __m256i unpack_sh(const uint8_t *p, int sh, __m256i m3)
{
    __m256i v;
    switch (sh) {
    case 0:
        __asm__("vpand %1, %2, %0" : "=x"(v) : "m"(*(const __m256i *)(const void *)p), "x"(m3));
        return v;
    case 1:
        TERN_SRLW_LOAD(v, p, 2);
        break;
    case 2:
        TERN_SRLW_LOAD(v, p, 4);
        break;
    default:
        TERN_SRLW_LOAD(v, p, 6);
        break;
    }
    return _mm256_and_si256(v, m3);
}
#undef TERN_SRLW_LOAD

/* The last pass: the exact sums in part minus qsum, scaled, stored for halves [h, h+H) and
 * tokens [t0, t0+TB). */
AI void tile_store(const pass *p, int64_t h, const int H, int64_t t0, const int TB)
{
    const int32_t *part = p->part + (t0 - p->tbase) * 64 + (h - p->hbase) * 8;
    const __m256 alpha = _mm256_set1_ps(p->w->alpha);
#pragma GCC unroll 8
    for (int hi = 0; hi < H; hi++)
#pragma GCC unroll 4
        for (int ti = 0; ti < TB; ti++) {
            __m256i a = _mm256_load_si256((const __m256i *)(const void *)(part + ti * 64 + hi * 8));
            a = _mm256_sub_epi32(a, _mm256_set1_epi32(p->qsum[t0 + ti]));
            __m256 f = _mm256_div_ps(_mm256_cvtepi32_ps(a), _mm256_set1_ps(p->s[t0 + ti]));
            f = _mm256_mul_ps(f, alpha);
            store_half(p->y + (t0 + ti) * p->ldy + (h + hi) * 8, f, h + hi, p->o0, p->o1);
        }
}

/* Prefetch distance of the code streams (a group's chunks are consecutive 64-byte lines): 16
 * chunks ahead. Measured on Zen 2 with the weights in DRAM, interleaved in one process,
 * medians: 0 B 66.8-80.4, 512 B 86.5, 1024 B 77.5-97.8, 2048 B 71.7-95.5 GMAC/s (2 threads).
 * The tiles of several tokens prefetch too: Intel Xeon VM with AMX, TERN_SIMD=avx2, 2
 * threads, the 30 layers of a 2B-4T decode step of n sequences: n = 2 41.6 -> 29.1 ms, 3 97.8
 * -> 41.7, 4 94.0 -> 47.5 (one pass instead of passes of SEG chunks: 41.9), 8 133 -> 81. */
#define GEMV_PF 1024
/* p + off may lie past the codes (the last tiles): an address, not a pointer into them */
AI void prefetch_at(const void *p, int64_t off)
{
    _mm_prefetch((const char *)((uintptr_t)p + (uintptr_t)off), _MM_HINT_T0);
}
AI void tile_single(const pass *p, int64_t h, const int H, int64_t t0, const int TB)
{
    const int64_t k = p->w->k;
    const int8_t *qt = p->q + t0 * k;
    int32_t *part = p->part + (t0 - p->tbase) * 64 + (h - p->hbase) * 8;
    const uint8_t *base[8];
    const __m256i m3 = _mm256_set1_epi8(3);
#pragma GCC unroll 8
    for (int hi = 0; hi < H; hi++) base[hi] = half_base(p->w, h + hi);
    if (p->first)
#pragma GCC unroll 8
        for (int hi = 0; hi < H; hi++)
#pragma GCC unroll 8
            for (int ti = 0; ti < TB; ti++)
                _mm256_store_si256((__m256i *)(void *)(part + ti * 64 + hi * 8),
                                   _mm256_setzero_si256());
    for (int64_t c8 = p->c0; c8 < p->c1; c8 += 8) {
        __m256i a16[8][4];
#pragma GCC unroll 8
        for (int hi = 0; hi < H; hi++)
#pragma GCC unroll 4
            for (int ti = 0; ti < TB; ti++) a16[hi][ti] = _mm256_setzero_si256();
        /* up to 8 chunks: fewer at the end of k when k % 128 != 0 (the 3B sibling's 8640) */
        const int64_t cend = c8 + 8 < p->c1 ? c8 + 8 : p->c1;
        for (int64_t c = c8; c < cend; c++) {
            const int8_t *qc = qt + c * 16;
            const int64_t off = c * TERN_TG_BYTES;
            /* each group's line once (two halves share it), GEMV_PF ahead: into the next
             * pass's chunks of the group */
#pragma GCC unroll 8
            for (int hi = 0; hi < H; hi++)
                if ((h + hi) % 2 == 0 || hi == 0) prefetch_at(base[hi], off + GEMV_PF);
            if (TB == 1) {
                __m256i b[4];
#pragma GCC unroll 4
                for (int sh = 0; sh < 4; sh++)
                    b[sh] = _mm256_set1_epi32(tern_load_i32(qc + sh * 4));
#pragma GCC unroll 8
                for (int hi = 0; hi < H; hi++) {
                    __m256i cc[4];
                    unpack(base[hi] + off, cc);
#pragma GCC unroll 4
                    for (int sh = 0; sh < 4; sh++)
                        a16[hi][0] =
                            _mm256_add_epi16(a16[hi][0], _mm256_maddubs_epi16(cc[sh], b[sh]));
                    __asm__ volatile("" : "+x"(a16[hi][0]));
                }
            } else {
#pragma GCC unroll 4
                for (int sh = 0; sh < 4; sh++) {
                    __m256i cc[8];
#pragma GCC unroll 8
                    for (int hi = 0; hi < H; hi++) cc[hi] = unpack_sh(base[hi] + off, sh, m3);
#pragma GCC unroll 4
                    for (int ti = 0; ti < TB; ti++) {
                        const __m256i b = _mm256_set1_epi32(tern_load_i32(qc + ti * k + sh * 4));
#pragma GCC unroll 8
                        for (int hi = 0; hi < H; hi++)
                            a16[hi][ti] =
                                _mm256_add_epi16(a16[hi][ti], _mm256_maddubs_epi16(cc[hi], b));
                    }
#pragma GCC unroll 8
                    for (int hi = 0; hi < H; hi++)
#pragma GCC unroll 4
                        for (int ti = 0; ti < TB; ti++) __asm__ volatile("" : "+x"(a16[hi][ti]));
                }
            }
        }
        const __m256i ones = _mm256_set1_epi16(1);
#pragma GCC unroll 8
        for (int hi = 0; hi < H; hi++)
#pragma GCC unroll 4
            for (int ti = 0; ti < TB; ti++) {
                __m256i *pp = (__m256i *)(void *)(part + ti * 64 + hi * 8);
                _mm256_store_si256(pp, _mm256_add_epi32(_mm256_load_si256(pp),
                                                        _mm256_madd_epi16(a16[hi][ti], ones)));
            }
    }
    if (p->last) tile_store(p, h, H, t0, TB);
}

/* One token (decode): codes are masked in place instead of shifted into bits 1..0. Of a byte's
 * four codes, the ones at bits 1..0 and 5..4 (after one 16-bit shift by 4) are masked with 3;
 * the ones at bits 3..2 and 7..6 with 12, i.e. taken as 4 * code, and add into a second int16
 * accumulator: per maddubs lane 4 * (c_a*q_a + c_b*q_b) is in [-2048, 2032], and eight chunks
 * (16 maddubs) stay in [-32768, 32512]; that sum is a multiple of 4, so an arithmetic shift by 2
 * is exact, and with the first accumulator (|.| <= 16 * 512) it fits int16 before madd widens
 * it. Per 32 bytes of codes: 1 load, 1 shift, 4 ands, 4 maddubs, 4 adds instead of 3 shifts
 * and 4 ands (measured on Zen 2 in register loops: 34 instead of 42 cycles per 32 maddubs, the
 * maddubs bound being 32). Two accumulators per half: 4 halves = 8 registers, with four
 * broadcasts, two masks and two temporaries all 16, so the chunk is one asm block (register
 * allocation left to the compiler spills). */
#define TERN_GEMV_HALF(lo, hi, src)                                                                \
    "vmovdqa " src ", %[v]\n\t"                                                                    \
    "vpand %[m3], %[v], %[t]\n\t"                                                                  \
    "vpmaddubsw %[b0], %[t], %[t]\n\t"                                                             \
    "vpaddw %[t], %[" lo "], %[" lo "]\n\t"                                                        \
    "vpand %[m12], %[v], %[t]\n\t"                                                                 \
    "vpmaddubsw %[b1], %[t], %[t]\n\t"                                                             \
    "vpaddw %[t], %[" hi "], %[" hi "]\n\t"                                                        \
    "vpsrlw $4, %[v], %[v]\n\t"                                                                    \
    "vpand %[m3], %[v], %[t]\n\t"                                                                  \
    "vpmaddubsw %[b2], %[t], %[t]\n\t"                                                             \
    "vpaddw %[t], %[" lo "], %[" lo "]\n\t"                                                        \
    "vpand %[m12], %[v], %[t]\n\t"                                                                 \
    "vpmaddubsw %[b3], %[t], %[t]\n\t"                                                             \
    "vpaddw %[t], %[" hi "], %[" hi "]\n\t"

/* int32 sums of the two accumulators (lo + hi / 4, exact: see above) added into part */
AI void gemv_flush(int32_t *dst, __m256i lo, __m256i hi)
{
    const __m256i s = _mm256_add_epi16(lo, _mm256_srai_epi16(hi, 2));
    __m256i *pp = (__m256i *)(void *)dst;
    _mm256_store_si256(
        pp, _mm256_add_epi32(_mm256_load_si256(pp), _mm256_madd_epi16(s, _mm256_set1_epi16(1))));
}

/* Tile of halves [h, h+4) (h even: two whole groups) and one token t0. */
static void tile_gemv4(const pass *p, int64_t h, int64_t t0)
{
    const int8_t *qt = p->q + t0 * p->w->k;
    int32_t *part = p->part + (t0 - p->tbase) * 64 + (h - p->hbase) * 8;
    const uint8_t *g0 = half_base(p->w, h), *g1 = half_base(p->w, h + 2);
    const __m256i m3 = _mm256_set1_epi8(3), m12 = _mm256_set1_epi8(12);
    /* the streams run GEMV_PF ahead, so the next tile's first group is on its way when this
     * one ends, but not its second: its first lines now (k = 2560: +4-10%; all four streams
     * now: no gain) */
    const int64_t next = 2 * p->w->kc * TERN_TG_BYTES + p->c0 * TERN_TG_BYTES;
    for (int l = 0; l < GEMV_PF; l += 64) prefetch_at(g1, next + l);
    if (p->first)
        for (int hi = 0; hi < 4; hi++)
            _mm256_store_si256((__m256i *)(void *)(part + hi * 8), _mm256_setzero_si256());
    for (int64_t c8 = p->c0; c8 < p->c1; c8 += 8) {
        __m256i l0 = _mm256_setzero_si256(), l1 = l0, l2 = l0, l3 = l0;
        __m256i h0 = l0, h1 = l0, h2 = l0, h3 = l0;
        const int64_t cend = c8 + 8 < p->c1 ? c8 + 8 : p->c1;
        for (int64_t c = c8; c < cend; c++) {
            const int8_t *qc = qt + c * 16;
            const uint8_t *a = g0 + c * TERN_TG_BYTES, *b = g1 + c * TERN_TG_BYTES;
            prefetch_at(a, GEMV_PF);
            prefetch_at(b, GEMV_PF);
            __m256i b0, b1, b2, b3, v, t;
            __asm__("vpbroadcastd (%[q]), %[b0]\n\t"
                    "vpbroadcastd 4(%[q]), %[b1]\n\t"
                    "vpbroadcastd 8(%[q]), %[b2]\n\t"
                    "vpbroadcastd 12(%[q]), %[b3]\n\t" TERN_GEMV_HALF("l0", "h0", "(%[a])")
                        TERN_GEMV_HALF("l1", "h1", "32(%[a])") TERN_GEMV_HALF("l2", "h2", "(%[b])")
                            TERN_GEMV_HALF("l3", "h3", "32(%[b])")
                    : [l0] "+x"(l0), [l1] "+x"(l1), [l2] "+x"(l2), [l3] "+x"(l3), [h0] "+x"(h0),
                      [h1] "+x"(h1), [h2] "+x"(h2), [h3] "+x"(h3), [b0] "=&x"(b0), [b1] "=&x"(b1),
                      [b2] "=&x"(b2), [b3] "=&x"(b3), [v] "=&x"(v), [t] "=&x"(t)
                    : [q] "r"(qc), [a] "r"(a), [b] "r"(b), [m3] "x"(m3), [m12] "x"(m12)
                    : "memory");
        }
        gemv_flush(part, l0, h0);
        gemv_flush(part + 8, l1, h1);
        gemv_flush(part + 16, l2, h2);
        gemv_flush(part + 24, l3, h3);
    }
    if (p->last) tile_store(p, h, 4, t0, 1);
}

#define RUN_SINGLE(TBV, HM)                                                                        \
    case TBV: {                                                                                    \
        int64_t hh = h;                                                                            \
        for (; hh + (HM) <= h1; hh += (HM)) tile_single(p, hh, (HM), t0, (TBV));                   \
        for (; hh < h1; hh++) tile_single(p, hh, 1, t0, (TBV));                                    \
    } break

/* Token blocks of up to 4; decode takes 8 halves (four groups) at once. */
#define TBMAX 4
static void run_single(const pass *p, int64_t h, int64_t h1, int64_t t0, int tb)
{
    switch (tb) {
    case 1: {
        int64_t hh = h; /* whole group pairs: the masked-code tile; the rest one half at a time */
        if (hh % 2 && hh < h1) tile_single(p, hh++, 1, t0, 1);
        for (; hh + 4 <= h1; hh += 4) tile_gemv4(p, hh, t0);
        for (; hh < h1; hh++) tile_single(p, hh, 1, t0, 1);
    } break;
        RUN_SINGLE(2, 4);
        RUN_SINGLE(3, 2);
        RUN_SINGLE(4, 2);
    default:
        TERN_ASSERT(0);
    }
}

#define SEG 64 /* chunks per pass: 1024 columns */

/* Batches of four groups (eight halves); chunks of 64 tokens; passes over segments of k so
 * that the activations of a token block stay in L1 (see tgemm-avx512.c). */
static void gemm_single(const tern_tmat *w, const int8_t *q, const float *s, const int32_t *qsum,
                        int64_t n_tok, float *y, int64_t ldy, int64_t o0, int64_t o1)
{
    const int64_t h0 = o0 / 8, hend = (o1 + 7) / 8, kc = w->kc;
    _Alignas(32) int32_t part[64 * 8 * 8];
    pass p = {w, q, s, qsum, y, ldy, o0, o1, 0, kc, part, 0, 0, true, true};
    /* one block of tokens: a single pass (its activations, at most TBMAX x k bytes, from L1 or
     * L2); passes keep a segment's codes in L1 for the blocks after the first */
    const int64_t seg = n_tok <= TBMAX ? kc : SEG;
    for (int64_t tc = 0; tc < n_tok; tc += 64) {
        int64_t tend = tc + 64 < n_tok ? tc + 64 : n_tok;
        p.tbase = tc;
        for (int64_t h = h0; h < hend; h += 8) {
            int64_t h1 = h + 8 < hend ? h + 8 : hend;
            p.hbase = h;
            for (int64_t c0 = 0; c0 < kc; c0 += seg) {
                p.c0 = c0;
                p.c1 = c0 + seg < kc ? c0 + seg : kc;
                p.first = c0 == 0;
                p.last = p.c1 == kc;
                for (int64_t t0 = tc; t0 < tend; t0 += TBMAX)
                    run_single(&p, h, h1, t0, tend - t0 < TBMAX ? (int)(tend - t0) : TBMAX);
            }
        }
    }
}

/* ---- block scales (TQ sources) ---- */

AI void tile_blocks(const tern_tmat *w, int64_t h, const int8_t *q, const float *s,
                    const int32_t *qsb, int64_t nb_ld, int64_t t0, const int TB, float *y,
                    int64_t ldy, int64_t o0, int64_t o1)
{
    const int64_t k = w->k, nb = w->nb;
    const int8_t *qt = q + t0 * k;
    const uint8_t *base = half_base(w, h);
    __m256 fa[4];
#pragma GCC unroll 4
    for (int ti = 0; ti < TB; ti++) fa[ti] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i acc[4];
#pragma GCC unroll 4
        for (int ti = 0; ti < TB; ti++) acc[ti] = _mm256_setzero_si256();
        for (int64_t c = b * 16; c < b * 16 + 16; c++) {
            __m256i cc[4];
            unpack(base + c * TERN_TG_BYTES, cc);
#pragma GCC unroll 4
            for (int ti = 0; ti < TB; ti++)
                acc[ti] = _mm256_add_epi32(acc[ti], chunk_dot(cc, qt + ti * k + c * 16));
        }
        const __m256 r = _mm256_loadu_ps(w->rs + ((h / 2) * nb + b) * 16 + (h % 2) * 8);
#pragma GCC unroll 4
        for (int ti = 0; ti < TB; ti++) {
            __m256i a = _mm256_sub_epi32(acc[ti], _mm256_set1_epi32(qsb[ti * nb_ld + b]));
            fa[ti] = _mm256_add_ps(fa[ti], _mm256_mul_ps(_mm256_cvtepi32_ps(a), r));
        }
    }
    const __m256 dm = _mm256_loadu_ps(w->dmax + h * 8);
#pragma GCC unroll 4
    for (int ti = 0; ti < TB; ti++) {
        __m256 f = _mm256_mul_ps(_mm256_div_ps(fa[ti], _mm256_set1_ps(s[t0 + ti])), dm);
        store_half(y + (t0 + ti) * ldy + h * 8, f, h, o0, o1);
    }
}

static void run_blocks(const tern_tmat *w, int64_t h, const int8_t *q, const float *s,
                       const int32_t *qsb, int64_t nb_ld, int64_t t0, int tb, float *y, int64_t ldy,
                       int64_t o0, int64_t o1)
{
    switch (tb) {
    case 1:
        tile_blocks(w, h, q, s, qsb, nb_ld, t0, 1, y, ldy, o0, o1);
        break;
    case 2:
        tile_blocks(w, h, q, s, qsb, nb_ld, t0, 2, y, ldy, o0, o1);
        break;
    case 3:
        tile_blocks(w, h, q, s, qsb, nb_ld, t0, 3, y, ldy, o0, o1);
        break;
    case 4:
        tile_blocks(w, h, q, s, qsb, nb_ld, t0, 4, y, ldy, o0, o1);
        break;
    default:
        TERN_ASSERT(0);
    }
}

static void block_sums(const int8_t *q, int64_t k, int64_t t0, int64_t nt, int32_t *qsb)
{
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    const int64_t nb = k / TERN_TBLOCK;
    for (int64_t t = 0; t < nt; t++)
        for (int64_t b = 0; b < nb; b++) {
            const int8_t *p = q + (t0 + t) * k + b * TERN_TBLOCK;
            __m256i a = _mm256_setzero_si256();
            for (int i = 0; i < 8; i++) {
                __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(p + 32 * i));
                /* 1*q_a + 1*q_b per int16 lane: |.| <= 256, widened at once */
                a = _mm256_add_epi32(a, _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, v), ones16));
            }
            __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
            qsb[t * nb + b] = _mm_cvtsi128_si32(s4);
        }
}

void tern_avx2_tgemm(const tern_tmat *w, const int8_t *q, const float *s, const int32_t *qsum,
                     int64_t n_tok, float *y, int64_t ldy, int64_t o0, int64_t o1)
{
    if (!w->blocks) {
        gemm_single(w, q, s, qsum, n_tok, y, ldy, o0, o1);
        return;
    }
    const int64_t h0 = o0 / 8, hend = (o1 + 7) / 8;
    int32_t qsb[4096]; /* see tgemm-avx512.c */
    const int64_t nb = w->nb, tchunk = 4096 / nb;
    for (int64_t tc = 0; tc < n_tok; tc += tchunk) {
        int64_t nt = n_tok - tc < tchunk ? n_tok - tc : tchunk;
        block_sums(q, w->k, tc, nt, qsb);
        for (int64_t h = h0; h < hend; h++)
            for (int64_t t0 = 0; t0 < nt; t0 += 4) {
                int tb = nt - t0 < 4 ? (int)(nt - t0) : 4;
                run_blocks(w, h, q, s, qsb + t0 * nb, nb, tc + t0, tb, y, ldy, o0, o1);
            }
    }
}
