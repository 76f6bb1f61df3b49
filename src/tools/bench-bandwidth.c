/* bench-bandwidth.c: this machine's limits, measured in the same run as the benchmarks: the read
 * bandwidth (every pool thread sums its share of a 1 GiB buffer: the decode roofline) and the
 * compute ceilings of the ternary GEMM and the F16 head GEMM on 64 tokens; see bench.h. */
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#include "ternpipe/kernels.h"
#include "ternpipe/runtime.h"
#include "tools/bench.h"
#include "tools/run.h"

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* ---- read bandwidth: every pool thread sums its share of a large buffer ---- */
/* The share is read as BW_STREAMS[pattern] interleaved sequential streams (its equal parts, a
 * 64-byte line of each in turn), each prefetched BW_PF[pattern] bytes ahead or not at all: a core
 * with one stream leaves memory idle where the prefetchers follow several (Intel Xeon VM, 2
 * threads: 1 stream 20-21 GB/s, 4 streams 24-26, 8 streams 26-28), and the hardware's prefetch
 * alone leaves the streams waiting where a software prefetch 2 KiB ahead does not (Intel Xeon VM
 * with AMX, 2 threads, medians of 7: 1 stream 26.7-26.9, 8 streams 28.7-28.8; prefetched 2 KiB
 * ahead: 1 stream 30.3, 2 streams 32.5, 4 streams 33.7-34.4, 8 streams 33.6-33.7, 16 streams
 * 33.0-33.4; 4 streams 1 KiB ahead 33.4-33.9, 4 KiB 32.8-33.2). The kernels read several rows
 * at once, prefetched so (tgemm-avx512.c, head-f16.h), so the roofline is the best pattern's. */
#define BW_PATTERNS 4
static const int BW_STREAMS[BW_PATTERNS] = {1, 8, 4, 8};
static const int64_t BW_PF[BW_PATTERNS] = {0, 0, 2048, 2048};

typedef struct bw_job {
    const uint64_t *buf;
    size_t n;
    int streams;
    int64_t pf;
    uint64_t sums[256];
} bw_job;

/* AVX2 where the CPU has it (a scalar or SSE2 loop cannot keep enough loads in flight to
 * saturate memory, which would understate the roofline); SSE2 otherwise. n: a multiple of
 * 8 * streams words (64 bytes a stream). */
__attribute__((target("avx2"))) static uint64_t sum_avx2(const uint64_t *p, int64_t n, int streams,
                                                         int64_t pf)
{
    __m256i s0 = _mm256_setzero_si256(), s1 = s0;
    const int64_t m = n / streams;
    for (int64_t i = 0; i < m; i += 8)
        for (int st = 0; st < streams; st++) {
            const __m256i *q = (const __m256i *)(p + st * m + i);
            if (pf) _mm_prefetch((const char *)((uintptr_t)q + (uintptr_t)pf), _MM_HINT_T0);
            s0 = _mm256_add_epi64(s0, _mm256_load_si256(q));
            s1 = _mm256_add_epi64(s1, _mm256_load_si256(q + 1));
        }
    const __m256i s = _mm256_add_epi64(s0, s1);
    uint64_t out[4];
    _mm256_storeu_si256((__m256i *)out, s);
    return out[0] + out[1] + out[2] + out[3];
}

static uint64_t sum_sse2(const uint64_t *p, int64_t n, int streams, int64_t pf)
{
    __m128i s0 = _mm_setzero_si128(), s1 = s0, s2 = s0, s3 = s0;
    const int64_t m = n / streams;
    for (int64_t i = 0; i < m; i += 8)
        for (int st = 0; st < streams; st++) {
            const __m128i *q = (const __m128i *)(p + st * m + i);
            if (pf) _mm_prefetch((const char *)((uintptr_t)q + (uintptr_t)pf), _MM_HINT_T0);
            s0 = _mm_add_epi64(s0, _mm_load_si128(q));
            s1 = _mm_add_epi64(s1, _mm_load_si128(q + 1));
            s2 = _mm_add_epi64(s2, _mm_load_si128(q + 2));
            s3 = _mm_add_epi64(s3, _mm_load_si128(q + 3));
        }
    const __m128i s = _mm_add_epi64(_mm_add_epi64(s0, s1), _mm_add_epi64(s2, s3));
    uint64_t out[2];
    _mm_storeu_si128((__m128i *)out, s);
    return out[0] + out[1];
}

static void bw_task(void *arg, int task, int n_tasks, int thread)
{
    (void)thread;
    bw_job *j = arg;
    int64_t a, b;
    tern_split_rows((int64_t)j->n, 8 * j->streams, task, n_tasks, &a, &b);
    if (b <= a) return;
    j->sums[task & 255] = __builtin_cpu_supports("avx2")
                              ? sum_avx2(j->buf + a, b - a, j->streams, j->pf)
                              : sum_sse2(j->buf + a, b - a, j->streams, j->pf);
}

double tern_bench_read_bandwidth(int n_threads)
{
    tern_topo *topo = NULL;
    tern_pool *pool = NULL;
    double bw = 0;
    if (tern_topo_discover(&topo, NULL) || tern_pool_create(&pool, topo, n_threads, NULL)) goto out;
    size_t bytes = (size_t)1 << 30;
    uint64_t *buf = aligned_alloc(64, bytes);
    if (!buf) goto out;
    memset(buf, 1, bytes);
    /* the patterns in turn, so that a slow spell of a shared machine falls on both */
    double v[BW_PATTERNS][7];
    for (int r = 0; r < 7; r++)
        for (int pt = 0; pt < BW_PATTERNS; pt++) {
            bw_job j = {.buf = buf, .n = bytes / 8, .streams = BW_STREAMS[pt], .pf = BW_PF[pt]};
            double t0 = tern_now();
            tern_pool_run(pool, bw_task, &j, tern_pool_size(pool));
            v[pt][r] = (double)bytes / (tern_now() - t0) / 1e9;
        }
    for (int pt = 0; pt < BW_PATTERNS; pt++) {
        qsort(v[pt], 7, sizeof v[pt][0], cmp_d);
        if (v[pt][3] > bw) bw = v[pt][3];
    }
    free(buf);
out:
    tern_pool_free(pool);
    tern_topo_free(topo);
    return bw;
}

/* ---- compute rates: the ternary GEMM (int8 MACs: the VNNI ceiling), the F16 head GEMM (fp32
 * FMA) and the int8 head GEMM (--head-type q8_0) ---- */

typedef struct gemm_job {
    const tern_tmat *w;
    const int8_t *q;
    const float *s;
    const int32_t *qs;
    const uint16_t *h; /* F16 head rows */
    const tern_i8mat *h8;
    const int8_t *xq; /* the int8 head's activations */
    const float *xs;
    const int32_t *xsum;
    const float *x;
    float *y;
    int64_t n, k, t;
} gemm_job;

static void tgemm_task(void *arg, int task, int n_tasks, int thread)
{
    (void)thread;
    gemm_job *j = arg;
    int64_t r0, r1;
    tern_split_rows(j->n, tern_tmat_row_granularity(j->w), task, n_tasks, &r0, &r1);
    if (r1 > r0) tern_tgemm(j->w, j->q, j->s, j->qs, j->t, j->y, j->n, r0, r1);
}

static void f16_task(void *arg, int task, int n_tasks, int thread)
{
    (void)thread;
    gemm_job *j = arg;
    int64_t r0, r1;
    tern_split_rows(j->n, 16, task, n_tasks, &r0, &r1);
    if (r1 > r0) tern_gemm_f16(j->h, j->x, j->t, j->k, j->y, j->n, r0, r1);
}

static void i8_task(void *arg, int task, int n_tasks, int thread)
{
    (void)thread;
    gemm_job *j = arg;
    int64_t r0, r1;
    tern_split_rows(j->n, 16, task, n_tasks, &r0, &r1);
    if (r1 > r0) tern_gemm_i8(j->h8, j->xq, j->xs, j->xsum, j->t, j->y, j->n, r0, r1);
}

typedef struct peak_job {
    tern_peak_kind kind;
    int64_t iters;
    uint64_t macs[256];
} peak_job;

static void peak_task(void *arg, int task, int n_tasks, int thread)
{
    (void)n_tasks, (void)thread;
    peak_job *j = arg;
    j->macs[task] = tern_compute_peak(j->kind, j->iters);
}

void tern_bench_compute(int n_threads, tern_bench_rates *out)
{
    enum { N = 4096, K = 2560, T = 64 };
    *out = (tern_bench_rates){0};
    tern_topo *topo = NULL;
    tern_pool *pool = NULL;
    int8_t *tr = malloc((size_t)N * K), *q = malloc((size_t)T * K);
    float *x = malloc(sizeof(float) * T * K), *y = malloc(sizeof(float) * T * N), s[T];
    uint16_t *h = malloc(sizeof(uint16_t) * (size_t)N * K);
    int32_t qs[T];
    tern_tmat *w = NULL;
    tern_i8mat *h8 = NULL;
    int8_t *xq = malloc((size_t)T * K);
    float xs[T];
    int32_t xsum[T];
    if (!tr || !q || !x || !y || !h || !xq || tern_topo_discover(&topo, NULL) ||
        tern_pool_create(&pool, topo, n_threads, NULL))
        goto out;
    uint64_t z = 88172645463325252ULL;
    for (size_t i = 0; i < (size_t)N * K; i++) {
        z ^= z << 13, z ^= z >> 7, z ^= z << 17;
        tr[i] = (int8_t)(z % 3) - 1;
        h[i] = tern_f32_to_f16_1((float)((int)(z >> 20) % 200 - 100) * 1e-3f);
    }
    for (size_t i = 0; i < (size_t)T * K; i++) x[i] = (float)((int)(i * 7919 % 201) - 100) * 0.01f;
    tern_act_quant(x, T, K, q, s, qs);
    tern_head_quant(x, T, K, xq, xs, xsum);
    if (tern_tmat_from_trits(&w, tr, N, K, 1.0f, NULL) || tern_i8mat_from_f16(&h8, h, N, K, NULL))
        goto out;
    gemm_job j = {.w = w,
                  .q = q,
                  .s = s,
                  .qs = qs,
                  .h = h,
                  .h8 = h8,
                  .xq = xq,
                  .xs = xs,
                  .xsum = xsum,
                  .x = x,
                  .y = y,
                  .n = N,
                  .k = K,
                  .t = T};
    /* the peaks: probes of 2^19 rounds of 16 instructions (about 3-10 ms; tiles 2^18, 30-70 ms,
     * shorter than a spell of the tiles' slow rate, 0.1-0.2 s), the best and the slowest */
    double *const peaks[3] = {&out->int8_peak, &out->fp32_peak, &out->int8_vec_peak};
    double *const mins[3] = {&out->int8_peak_min, &out->fp32_peak_min, NULL};
    const int n_tasks = tern_pool_size(pool) < 256 ? tern_pool_size(pool) : 256;
    out->tiles = tern_kernels_active() == TERN_SIMD_AMX;
    for (int kind = 0; kind < (out->tiles ? 3 : 2); kind++)
        for (int r = 0; r < TERN_BENCH_PEAK_PROBES; r++) {
            peak_job pj = {.kind = (tern_peak_kind)kind,
                           .iters = kind == TERN_PEAK_INT8 && out->tiles ? 1 << 18 : 1 << 19};
            double t0 = tern_now();
            tern_pool_run(pool, peak_task, &pj, n_tasks);
            double dt = tern_now() - t0;
            double macs = 0;
            for (int t = 0; t < n_tasks; t++) macs += (double)pj.macs[t];
            const double rate = dt > 0 ? macs / dt / 1e9 : 0;
            if (rate > *peaks[kind]) *peaks[kind] = rate;
            if (mins[kind] && (r == 0 || rate < *mins[kind])) *mins[kind] = rate;
        }
    if (!out->tiles) out->int8_vec_peak = out->int8_peak; /* one instruction */
    static void (*const tasks[3])(void *, int, int, int) = {tgemm_task, f16_task, i8_task};
    double *const rates[3] = {&out->tgemm, &out->f16_head, &out->i8_head};
    for (int kind = 0; kind < 3; kind++) {
        double best = 0;
        for (int r = 0; r < 5; r++) {
            double t0 = tern_now();
            tern_pool_run(pool, tasks[kind], &j, tern_pool_size(pool));
            double dt = tern_now() - t0;
            double rate = dt > 0 ? (double)N * K * T / dt / 1e9 : 0;
            if (rate > best) best = rate;
        }
        *rates[kind] = best;
    }
out:
    tern_tmat_free(w);
    tern_i8mat_free(h8);
    free(xq);
    tern_pool_free(pool);
    tern_topo_free(topo);
    free(tr), free(q), free(x), free(y), free(h);
}
