/* dispatch.c: run-time choice of the kernel variant and the public entry points.
 *
 * The active variant is one pointer to an entry table, set once (tern_kernels_init, or lazily
 * by the first kernel call) and changed only by tern_kernels_force in tests. Public functions
 * check the arguments that come from code (TERN_ASSERT: a bad shape is a bug, not input) and
 * call through the table, so every variant sees the same validated arguments.
 */
#include <cpuid.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "kernels/kernels-internal.h"
#include "ternpipe/log.h"

/* amx: avx512's table with the tile GEMMs and the tile peak (filled in init_once) */
static tern_kernel_vtable amx_table;
static const tern_kernel_vtable *const tables[TERN_SIMD_COUNT] = {
    &tern_kernels_ref, &tern_kernels_avx2, &tern_kernels_avx512, &amx_table};
static const char *const names[TERN_SIMD_COUNT] = {"ref", "avx2", "avx512", "amx"};

static _Atomic(const tern_kernel_vtable *) g_vt = NULL;
static _Atomic int g_active = TERN_SIMD_REF;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static tern_code g_init_code = TERN_OK;
static tern_status g_init_status;

const char *tern_simd_name(tern_simd v)
{
    return (v >= 0 && v < TERN_SIMD_COUNT) ? names[v] : "?";
}

static bool has_f16c(void)
{
    /* clang's __builtin_cpu_supports does not know "f16c": CPUID.1:ECX bit 29 */
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
    return (c >> 29) & 1;
}

/* AMX tiles with int8: CPUID.(7,0):EDX bits 24 and 25, the OS saving tile state (XCR0 bits
 * 17 and 18) and, on Linux, this process's permission to use it (asked once; refused, e.g.
 * where a signal stack is too small for the tile state, it reads as unsupported). */
#define TERN_XFEATURE_XTILEDATA 18
#define TERN_ARCH_REQ_XCOMP_PERM 0x1023
static bool amx_permitted;
static void amx_probe(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !((d >> 24) & 1) || !((d >> 25) & 1)) return;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1)) return; /* OSXSAVE */
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if (((lo >> 17) & 3) != 3) return;
#ifdef __linux__
    if (syscall(SYS_arch_prctl, TERN_ARCH_REQ_XCOMP_PERM, TERN_XFEATURE_XTILEDATA) != 0) return;
#endif
    amx_permitted = true;
}

bool tern_simd_supported(tern_simd v)
{
    __builtin_cpu_init();
    switch (v) {
    case TERN_SIMD_REF:
        return true;
    case TERN_SIMD_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c();
    case TERN_SIMD_AVX512:
        return tern_simd_supported(TERN_SIMD_AVX2) && __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni");
    case TERN_SIMD_AMX: {
        static pthread_once_t once = PTHREAD_ONCE_INIT;
        pthread_once(&once, amx_probe);
        return amx_permitted && tern_simd_supported(TERN_SIMD_AVX512);
    }
    default:
        return false;
    }
}

static tern_simd best_supported(void)
{
    for (int v = TERN_SIMD_COUNT - 1; v > 0; v--)
        if (tern_simd_supported((tern_simd)v)) return (tern_simd)v;
    return TERN_SIMD_REF;
}

static void activate(tern_simd v)
{
    atomic_store(&g_active, (int)v);
    atomic_store(&g_vt, tables[v]);
}

static void init_once(void)
{
    amx_table = tern_kernels_avx512;
    amx_table.tgemm = tern_amx_tgemm;
    amx_table.gemm_i8 = tern_amx_gemm_i8;
    amx_table.peak_int8 = tern_amx_peak_int8;
    amx_table.peak_int8_vec = tern_kernels_avx512.peak_int8;
    tern_simd best = best_supported();
    const char *env = getenv("TERN_SIMD");
    if (env && *env) {
        int v = 0;
        while (v < TERN_SIMD_COUNT && strcmp(env, names[v]) != 0) v++;
        if (v == TERN_SIMD_COUNT) {
            g_init_code =
                tern_status_set(&g_init_status, TERN_EINVAL,
                                "TERN_SIMD: got '%s', expected ref, avx2, avx512 or amx", env);
        } else if (!tern_simd_supported((tern_simd)v)) {
            g_init_code = tern_status_set(&g_init_status, TERN_EUNSUPPORTED,
                                          "TERN_SIMD: got %s, but this CPU supports up to %s", env,
                                          names[best]);
        } else {
            activate((tern_simd)v);
            tern_log(TERN_LOG_INFO, "kernels: simd %s (TERN_SIMD)", names[v]);
            return;
        }
        tern_log(TERN_LOG_ERROR, "%s; using %s", g_init_status.msg, names[best]);
        activate(best);
        return;
    }
    activate(best);
    tern_log(TERN_LOG_INFO, "kernels: simd %s (best supported)", names[best]);
}

tern_code tern_kernels_init_checked(tern_simd *out, tern_status *st)
{
    pthread_once(&g_once, init_once);
    if (out) *out = (tern_simd)atomic_load(&g_active);
    if (g_init_code != TERN_OK) return tern_status_set(st, g_init_code, "%s", g_init_status.msg);
    return TERN_OK;
}

tern_simd tern_kernels_init(void)
{
    tern_simd v;
    return tern_kernels_init_checked(&v, NULL) == TERN_OK ? v : TERN_SIMD_COUNT;
}

tern_code tern_kernels_force(tern_simd v, tern_status *st)
{
    pthread_once(&g_once, init_once);
    if (v < 0 || v >= TERN_SIMD_COUNT)
        return tern_status_set(st, TERN_EINVAL, "simd variant: got %d, expected 0..%d", (int)v,
                               TERN_SIMD_COUNT - 1);
    if (!tern_simd_supported(v))
        return tern_status_set(st, TERN_EUNSUPPORTED, "simd variant %s: not supported by this CPU",
                               names[v]);
    activate(v);
    tern_log(TERN_LOG_DEBUG, "kernels: simd %s (forced)", names[v]);
    return TERN_OK;
}

tern_simd tern_kernels_active(void)
{
    pthread_once(&g_once, init_once);
    return (tern_simd)atomic_load(&g_active);
}

const tern_kernel_vtable *tern_kernels_vt(void)
{
    const tern_kernel_vtable *vt = atomic_load_explicit(&g_vt, memory_order_acquire);
    if (__builtin_expect(vt == NULL, 0)) {
        pthread_once(&g_once, init_once);
        vt = atomic_load(&g_vt);
    }
    return vt;
}

/* ---- public entry points ---- */

void tern_act_quant(const float *x, int64_t n, int64_t k, int8_t *q, float *s, int32_t *qsum)
{
    TERN_ASSERT(n >= 0 && k >= 1);
    if (n == 0) return;
    TERN_ASSERT(x && q && s && qsum);
    tern_kernels_vt()->act_quant(x, n, k, q, s, qsum);
}

void tern_tgemm(const tern_tmat *w, const int8_t *q, const float *s, const int32_t *qsum,
                int64_t n_tok, float *y, int64_t ldy, int64_t o0, int64_t o1)
{
    TERN_ASSERT(w && q && s && qsum && y);
    TERN_ASSERT(n_tok >= 1 && o0 >= 0 && o0 < o1 && o1 <= w->n);
    TERN_ASSERT(n_tok == 1 || ldy >= o1);
    tern_kernels_vt()->tgemm(w, q, s, qsum, n_tok, y, ldy, o0, o1);
}

void tern_rmsnorm(const float *x, const float *w, int64_t n, float eps, float *y)
{
    TERN_ASSERT(n >= 1 && x && w && y);
    tern_kernels_vt()->rmsnorm(x, w, n, eps, y);
}

void tern_rmsnorm_rows(const float *x, int64_t n_rows, int64_t n, const float *w, float eps,
                       float *y)
{
    TERN_ASSERT(n >= 1 && n_rows >= 0 && x && w && y);
    const tern_kernel_vtable *vt = tern_kernels_vt();
    if (vt->rmsnorm_rows)
        vt->rmsnorm_rows(x, n_rows, n, w, eps, y);
    else
        for (int64_t r = 0; r < n_rows; r++) vt->rmsnorm(x + r * n, w, n, eps, y + r * n);
}

void tern_rope_neox(float *x, int64_t n_heads, int64_t head_dim, const float *cos_row,
                    const float *sin_row)
{
    TERN_ASSERT(n_heads >= 0 && head_dim >= 2 && head_dim % 2 == 0);
    if (n_heads == 0) return;
    tern_kernels_vt()->rope_neox(x, n_heads, head_dim, cos_row, sin_row);
}

void tern_softmax(float *x, int64_t n)
{
    TERN_ASSERT(n >= 1 && x);
    tern_kernels_vt()->softmax(x, n);
}

void tern_gumbel_max(const float *v, int64_t n, int64_t id0, double inv_t, uint64_t key,
                     tern_gumbel_run *out)
{
    TERN_ASSERT(n >= 1 && v && out && inv_t >= 0.0);
    tern_kernels_vt()->gumbel_max(v, n, id0, inv_t, key, out);
}

void tern_lse_lanes(const float *v, int64_t n, int64_t id0, double inv_t, double *m, double *z)
{
    TERN_ASSERT(n >= 1 && v && m && z && inv_t > 0.0);
    tern_kernels_vt()->lse_lanes(v, n, id0, inv_t, m, z);
}

void tern_relu2_mul(const float *g, const float *u, int64_t n, float *m)
{
    TERN_ASSERT(n >= 0);
    if (n == 0) return;
    tern_kernels_vt()->relu2_mul(g, u, n, m);
}

void tern_silu_mul(const float *g, const float *u, int64_t n, float *m)
{
    TERN_ASSERT(n >= 0);
    for (int64_t i = 0; i < n; i++) m[i] = (g[i] / (1.0f + expf(-g[i]))) * u[i];
}

float tern_dot_f32(const float *a, const float *b, int64_t n)
{
    TERN_ASSERT(n >= 0);
    if (n == 0) return 0.0f;
    return tern_kernels_vt()->dot(a, b, n);
}

void tern_axpy_f32(float *y, float a, const float *x, int64_t n)
{
    TERN_ASSERT(n >= 0);
    if (n == 0) return;
    tern_kernels_vt()->axpy(y, a, x, n);
}

void tern_attn_scores_rows(tern_attn_elem e, const float *const *q, int P, const void *const *k,
                           const float *const *ks, int64_t ldks, int64_t n, int64_t blk, int64_t d,
                           int64_t ldk, float scale, float *out, int64_t ldo)
{
    TERN_ASSERT(P >= 1 && P <= TERN_ATTN_MAX_ROWS && n >= 0 && d >= 1 && d <= TERN_ATTN_MAX_HD);
    TERN_ASSERT(blk >= 1 && (e != TERN_ATTN_Q8 || ks));
    TERN_ASSERT((n <= 1 || (ldk >= d && (e != TERN_ATTN_Q8 || ldks >= 1))) && (P <= 1 || ldo >= n));
    if (n == 0) return;
    tern_kernels_vt()->attn_scores_rows(e, q, P, k, ks, ldks, n, blk, d, ldk, scale, out, ldo);
}

void tern_attn_scores_cols(tern_attn_elem e, const float *const *q, int P, const void *const *k,
                           const float *const *ks, int64_t ldks, int64_t n, int64_t blk, int64_t d,
                           int64_t ldk, float scale, float *out, int64_t ldo)
{
    TERN_ASSERT(P >= 1 && P <= TERN_ATTN_MAX_ROWS && n >= 0 && d >= 1 && d <= TERN_ATTN_MAX_HD);
    TERN_ASSERT(blk >= 1 && (e != TERN_ATTN_Q8 || ks));
    TERN_ASSERT((n <= 1 || (ldk >= (n < blk ? n : blk) && (e != TERN_ATTN_Q8 || ldks >= 1))) &&
                (P <= 1 || ldo >= n));
    if (n == 0) return;
    tern_kernels_vt()->attn_scores_cols(e, q, P, k, ks, ldks, n, blk, d, ldk, scale, out, ldo);
}

void tern_attn_mix_rows(tern_attn_elem e, const float *p, int64_t ldp, int P, const int32_t *len,
                        const void *const *v, const float *const *vs, int64_t ldvs, int64_t blk,
                        int64_t d, int64_t ldv, float *const *out)
{
    TERN_ASSERT(P >= 1 && P <= TERN_ATTN_MAX_ROWS && d >= 1 && d <= TERN_ATTN_MAX_HD);
    TERN_ASSERT(blk >= 1 && (e != TERN_ATTN_Q8 || vs));
    int32_t most = 0;
    for (int r = 0; r < P; r++) {
        TERN_ASSERT(len[r] >= 0);
        most = len[r] > most ? len[r] : most;
    }
    TERN_ASSERT(most <= 1 || (ldv >= d && (e != TERN_ATTN_Q8 || ldvs >= 1)));
    const unsigned csr = tern_ftz_begin(); /* the variant is called, so nothing crosses this */
    tern_kernels_vt()->attn_mix_rows(e, p, ldp, P, len, v, vs, ldvs, blk, d, ldv, out);
    tern_ftz_end(csr);
}

/* the single-row forms: one row of the rows kernels, its keys in one block */
#define ONE_BLOCK(n) ((n) > 0 ? (n) : 1)

void tern_attn_scores(const float *q, const float *k, int64_t n, int64_t d, int64_t ldk,
                      float scale, float *out)
{
    const void *kb = k;
    tern_attn_scores_rows(TERN_ATTN_F32, &q, 1, &kb, NULL, 1, n, ONE_BLOCK(n), d, ldk, scale, out,
                          n);
}

void tern_attn_mix(const float *p, const float *v, int64_t n, int64_t d, int64_t ldv, float *out)
{
    TERN_ASSERT(n >= 0 && n <= INT32_MAX);
    const int32_t len = (int32_t)n;
    const void *vb = v;
    tern_attn_mix_rows(TERN_ATTN_F32, p, n, 1, &len, &vb, NULL, 1, ONE_BLOCK(n), d, ldv, &out);
}

void tern_attn_scores_f16(const float *q, const uint16_t *k, int64_t n, int64_t d, int64_t ldk,
                          float scale, float *out)
{
    const void *kb = k;
    tern_attn_scores_rows(TERN_ATTN_F16, &q, 1, &kb, NULL, 1, n, ONE_BLOCK(n), d, ldk, scale, out,
                          n);
}

void tern_attn_mix_f16(const float *p, const uint16_t *v, int64_t n, int64_t d, int64_t ldv,
                       float *out)
{
    TERN_ASSERT(n >= 0 && n <= INT32_MAX);
    const int32_t len = (int32_t)n;
    const void *vb = v;
    tern_attn_mix_rows(TERN_ATTN_F16, p, n, 1, &len, &vb, NULL, 1, ONE_BLOCK(n), d, ldv, &out);
}

void tern_attn_scores_q8(const float *q, const int8_t *k, const float *ks, int64_t ldks, int64_t n,
                         int64_t d, int64_t ldk, float scale, float *out)
{
    const void *kb = k;
    tern_attn_scores_rows(TERN_ATTN_Q8, &q, 1, &kb, &ks, ldks, n, ONE_BLOCK(n), d, ldk, scale, out,
                          n);
}

void tern_attn_mix_q8(const float *p, const int8_t *v, const float *vs, int64_t ldvs, int64_t n,
                      int64_t d, int64_t ldv, float *out)
{
    TERN_ASSERT(n >= 0 && n <= INT32_MAX);
    const int32_t len = (int32_t)n;
    const void *vb = v;
    tern_attn_mix_rows(TERN_ATTN_Q8, p, n, 1, &len, &vb, &vs, ldvs, ONE_BLOCK(n), d, ldv, &out);
}
#undef ONE_BLOCK

volatile int32_t tern_peak_sink;

uint64_t tern_compute_peak(tern_peak_kind kind, int64_t iters)
{
    TERN_ASSERT((kind == TERN_PEAK_INT8 || kind == TERN_PEAK_FP32 || kind == TERN_PEAK_INT8_VEC) &&
                iters >= 0);
    const tern_kernel_vtable *vt = tern_kernels_vt();
    if (kind == TERN_PEAK_FP32) return vt->peak_fp32(iters);
    if (kind == TERN_PEAK_INT8_VEC && vt->peak_int8_vec) return vt->peak_int8_vec(iters);
    return vt->peak_int8(iters);
}

void tern_kv_quant_q8(const float *x, int64_t n, int64_t d, int8_t *q, float *scale)
{
    TERN_ASSERT(n >= 0 && d >= 1);
    tern_kernels_vt()->kv_quant_q8(x, n, d, q, scale, NULL);
}

void tern_gemm_f16(const uint16_t *w, const float *x, int64_t n_tok, int64_t k, float *y,
                   int64_t ldy, int64_t o0, int64_t o1)
{
    TERN_ASSERT(w && x && y && k >= 1 && n_tok >= 1 && o0 >= 0 && o0 < o1);
    TERN_ASSERT(n_tok == 1 || ldy >= o1);
    tern_kernels_vt()->gemm_f16(w, x, n_tok, k, y, ldy, o0, o1);
}

void tern_head_quant(const float *x, int64_t n_tok, int64_t k, int8_t *xq, float *xs, int32_t *xsum)
{
    TERN_ASSERT(n_tok >= 0 && k >= 1 && xsum);
    tern_kernels_vt()->kv_quant_q8(x, n_tok, k, xq, xs, xsum);
}

void tern_gemm_i8(const tern_i8mat *w, const int8_t *xq, const float *xs, const int32_t *xsum,
                  int64_t n_tok, float *y, int64_t ldy, int64_t o0, int64_t o1)
{
    TERN_ASSERT(w && xq && xs && xsum && y && n_tok >= 1 && o0 >= 0 && o0 < o1 && o1 <= w->n);
    TERN_ASSERT(n_tok == 1 || ldy >= o1);
    tern_kernels_vt()->gemm_i8(w, xq, xs, xsum, n_tok, y, ldy, o0, o1);
}

void tern_gemm_q(tern_ggml_type type, const void *w, int64_t k, const float *x, int64_t n_tok,
                 float *y, int64_t ldy, int64_t o0, int64_t o1)
{
    TERN_ASSERT(type == TERN_TYPE_Q8_0 || type == TERN_TYPE_Q6_K);
    TERN_ASSERT(w && x && y && k >= 1 && n_tok >= 1 && o0 >= 0 && o0 < o1);
    TERN_ASSERT(k % (type == TERN_TYPE_Q8_0 ? 32 : 256) == 0);
    TERN_ASSERT(n_tok == 1 || ldy >= o1);
    tern_kernels_vt()->gemm_q(type, w, k, x, n_tok, y, ldy, o0, o1);
}

void tern_f16_to_f32(const uint16_t *h, float *f, int64_t n)
{
    TERN_ASSERT(n >= 0);
    if (n == 0) return;
    tern_kernels_vt()->f16_to_f32(h, f, n);
}

void tern_f32_to_f16(const float *f, uint16_t *h, int64_t n)
{
    TERN_ASSERT(n >= 0);
    if (n == 0) return;
    tern_kernels_vt()->f32_to_f16(f, h, n);
}
