/* tmat.c: building the internal ternary layout (kernels-internal.h) from GGUF blobs (I2_S,
 * TQ2_0, TQ1_0) or plain trits, and the int8 LM-head matrix from F16.
 *
 * Every source is decoded to trits one row group (16 rows) at a time and packed by one
 * function, so the layouts cannot disagree. Blobs come from files: sizes, codes and scales
 * are validated and rejected with a status, never trusted. TQ block scales collapse to one
 * alpha when they are all equal (kernels.h explains why that is exact); otherwise they are
 * kept per row and block as r = d / D with D the row's largest-magnitude scale.
 */
#include <math.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "kernels/kernels-internal.h"
#include "ternpipe/log.h"

#define TERN_HUGE_PAGE ((uint64_t)2 << 20)

/* 64-byte aligned; a matrix of 4 MiB or more is 2 MiB aligned and advised to transparent huge
 * pages (they are streamed every token: 4 KiB pages stop the hardware prefetchers at every
 * page and cost a TLB miss each; advice only, ignored where THP is off) */
static void *alloc64(uint64_t bytes)
{
    void *p = NULL;
    if (bytes == 0) bytes = 64;
    bytes = (bytes + 63) & ~(uint64_t)63;
    const bool huge = bytes >= 2 * TERN_HUGE_PAGE;
    if (posix_memalign(&p, huge ? (size_t)TERN_HUGE_PAGE : 64, (size_t)bytes) != 0) return NULL;
#ifdef MADV_HUGEPAGE
    if (huge) (void)madvise(p, (size_t)(bytes & ~(TERN_HUGE_PAGE - 1)), MADV_HUGEPAGE);
#endif
    return p;
}

void tern_tmat_free(tern_tmat *m)
{
    if (!m) return;
    free(m->codes);
    free(m->rs);
    free(m->dmax);
    free(m);
}

static tern_code check_shape(int64_t k, int64_t n, int64_t kmul, tern_status *st)
{
    if (k < TERN_TG_COLS || k > TERN_TMAT_MAX_K || k % kmul != 0)
        return tern_status_set(st, TERN_EINVAL,
                               "ternary matrix: got %lld columns, expected a multiple of %lld in "
                               "[%d, %d]",
                               (long long)k, (long long)kmul, TERN_TG_COLS, TERN_TMAT_MAX_K);
    if (n < 1 || n > (INT64_C(1) << 31))
        return tern_status_set(st, TERN_EINVAL, "ternary matrix: got %lld rows, expected 1..2^31",
                               (long long)n);
    return TERN_OK;
}

static tern_code tmat_alloc(tern_tmat **out, int64_t k, int64_t n, bool blocks, tern_status *st)
{
    tern_tmat *m = calloc(1, sizeof *m);
    if (!m) goto fail;
    m->n = n;
    m->k = k;
    m->n_groups = (n + TERN_TG_ROWS - 1) / TERN_TG_ROWS;
    m->kc = k / TERN_TG_COLS;
    uint64_t code_bytes = (uint64_t)m->n_groups * (uint64_t)m->kc * TERN_TG_BYTES;
    m->codes = alloc64(code_bytes);
    if (!m->codes) goto fail;
    m->bytes = code_bytes;
    m->blocks = blocks;
    if (blocks) {
        m->nb = k / TERN_TBLOCK;
        uint64_t nr = (uint64_t)m->n_groups * TERN_TG_ROWS;
        m->rs = alloc64(nr * (uint64_t)m->nb * sizeof(float));
        m->dmax = alloc64(nr * sizeof(float));
        if (!m->rs || !m->dmax) goto fail;
        for (uint64_t i = 0; i < nr * (uint64_t)m->nb; i++) m->rs[i] = 0.0f;
        for (uint64_t i = 0; i < nr; i++) m->dmax[i] = 0.0f;
        m->bytes += nr * (uint64_t)m->nb * sizeof(float) + nr * sizeof(float);
    }
    *out = m;
    return TERN_OK;
fail:
    tern_tmat_free(m);
    return tern_status_set(st, TERN_ENOMEM, "ternary matrix: out of memory for %lld x %lld",
                           (long long)n, (long long)k);
}

/* Packs trits tg [16][k] (rows past n already zero) into group g. */
static void pack_group(tern_tmat *m, int64_t g, const int8_t *tg)
{
    const int64_t k = m->k;
    uint8_t *dst = m->codes + g * m->kc * TERN_TG_BYTES;
    for (int64_t c = 0; c < m->kc; c++) {
        uint8_t *b = dst + c * TERN_TG_BYTES;
        for (int r = 0; r < TERN_TG_ROWS; r++) {
            const int8_t *t = tg + r * k + c * TERN_TG_COLS;
            for (int j = 0; j < 4; j++)
                b[r * 4 + j] = (uint8_t)((t[j] + 1) | (t[4 + j] + 1) << 2 | (t[8 + j] + 1) << 4 |
                                         (t[12 + j] + 1) << 6);
        }
    }
}

/* Decodes row o of a blob into trits t[k]; false when a code is invalid. */
typedef bool (*row_decoder)(const uint8_t *data, int64_t k, int64_t o, int8_t *t);

static bool decode_i2s(const uint8_t *data, int64_t k, int64_t o, int8_t *t)
{
    /* spec 3.4: elements flattened row-major, 128-element blocks of 32 bytes; byte j holds
     * elements j, j+32, j+64, j+96 in bits 7-6, 5-4, 3-2, 1-0; code 0,1,2 = -1,0,+1 */
    bool ok = true;
    if (k % 128 != 0) {
        /* rows that do not start on a block (the 3B sibling's 8640 columns): element by
         * element from its flat index */
        for (int64_t c = 0; c < k; c++) {
            uint64_t e = (uint64_t)o * (uint64_t)k + (uint64_t)c, i = e % 128;
            int code = (data[e / 128 * 32 + i % 32] >> (6 - 2 * (int)(i / 32))) & 3;
            ok &= code != 3;
            t[c] = (int8_t)(code - 1);
        }
        return ok;
    }
    const uint8_t *row = data + (uint64_t)o * (uint64_t)k / 4;
    for (int64_t b = 0; b < k / 128; b++)
        for (int j = 0; j < 32; j++) {
            uint8_t v = row[b * 32 + j];
            for (int grp = 0; grp < 4; grp++) {
                int code = (v >> (6 - 2 * grp)) & 3;
                ok &= code != 3;
                t[b * 128 + grp * 32 + j] = (int8_t)(code - 1);
            }
        }
    return ok;
}

static bool decode_tq2(const uint8_t *data, int64_t k, int64_t o, int8_t *t)
{
    /* spec 3.5: 66-byte blocks of 256, qs[64] then f16 d; each 32-byte half (128 elements):
     * byte m holds m, m+32, m+64, m+96 in bits 1-0, 3-2, 5-4, 7-6 */
    const uint8_t *row = data + (uint64_t)o * (uint64_t)(k / 256) * 66;
    bool ok = true;
    for (int64_t b = 0; b < k / 256; b++) {
        const uint8_t *qs = row + b * 66;
        for (int h = 0; h < 2; h++)
            for (int l = 0; l < 4; l++)
                for (int mm = 0; mm < 32; mm++) {
                    int code = (qs[h * 32 + mm] >> (2 * l)) & 3;
                    ok &= code != 3;
                    t[b * 256 + h * 128 + l * 32 + mm] = (int8_t)(code - 1);
                }
    }
    return ok;
}

static int tq1_trit(uint8_t byte, int n)
{
    static const uint8_t pow3[5] = {1, 3, 9, 27, 81};
    uint8_t q = (uint8_t)(byte * pow3[n]);
    return ((uint16_t)q * 3) >> 8;
}

static bool decode_tq1(const uint8_t *data, int64_t k, int64_t o, int8_t *t)
{
    /* spec 3.5: 54-byte blocks, qs[48], qh[4], f16 d; base-3 digits, most significant first,
     * stored as ceil(q * 256 / 243); any byte decodes to digits 0..2 */
    const uint8_t *row = data + (uint64_t)o * (uint64_t)(k / 256) * 54;
    for (int64_t b = 0; b < k / 256; b++) {
        const uint8_t *qs = row + b * 54, *qh = qs + 48;
        int8_t *tb = t + b * 256;
        for (int n = 0; n < 5; n++)
            for (int mm = 0; mm < 32; mm++) tb[n * 32 + mm] = (int8_t)(tq1_trit(qs[mm], n) - 1);
        for (int n = 0; n < 5; n++)
            for (int mm = 0; mm < 16; mm++)
                tb[160 + n * 16 + mm] = (int8_t)(tq1_trit(qs[32 + mm], n) - 1);
        for (int n = 0; n < 4; n++)
            for (int j = 0; j < 4; j++) tb[240 + n * 4 + j] = (int8_t)(tq1_trit(qh[j], n) - 1);
    }
    return true;
}

/* Shared packing loop: decodes 16 rows at a time into a scratch group and packs it. */
static tern_code pack_all(tern_tmat *m, const uint8_t *data, row_decoder dec, const char *what,
                          tern_status *st)
{
    const int64_t k = m->k;
    int8_t *tg = malloc((size_t)(TERN_TG_ROWS * k));
    if (!tg) return tern_status_set(st, TERN_ENOMEM, "%s: out of memory", what);
    for (int64_t g = 0; g < m->n_groups; g++) {
        for (int r = 0; r < TERN_TG_ROWS; r++) {
            int64_t o = g * TERN_TG_ROWS + r;
            int8_t *t = tg + r * k;
            if (o >= m->n) {
                memset(t, 0, (size_t)k);
            } else if (!dec(data, k, o, t)) {
                free(tg);
                return tern_status_set(st, TERN_EFORMAT,
                                       "%s: row %lld holds code 3, expected codes 0..2", what,
                                       (long long)o);
            }
        }
        pack_group(m, g, tg);
    }
    free(tg);
    return TERN_OK;
}

/* TQ block scales: d[o][b] at byte offset (o * nb + b) * bsize + doff. */
static tern_code tq_scales(tern_tmat **out, const uint8_t *data, int64_t k, int64_t n,
                           uint64_t bsize, uint64_t doff, const char *what, tern_status *st)
{
    const int64_t nb = k / TERN_TBLOCK;
    uint16_t h0 = 0;
    bool all_equal = true;
    for (int64_t i = 0; i < n * nb; i++) {
        uint16_t h;
        memcpy(&h, data + (uint64_t)i * bsize + doff, 2);
        if ((h & 0x7c00) == 0x7c00)
            return tern_status_set(st, TERN_EFORMAT,
                                   "%s: block %lld scale is inf or NaN (0x%04x), expected finite",
                                   what, (long long)i, h);
        if (i == 0) h0 = h;
        /* bitwise, so +0 and -0 (different signs of zero in y) do not collapse */
        if (h != h0) all_equal = false;
    }
    tern_code rc = tmat_alloc(out, k, n, !all_equal, st);
    if (rc != TERN_OK) return rc;
    tern_tmat *m = *out;
    if (all_equal) {
        m->alpha = tern_f16_to_f32_1(h0);
        return TERN_OK;
    }
    for (int64_t o = 0; o < n; o++) {
        float dm = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            uint16_t h;
            memcpy(&h, data + (uint64_t)(o * nb + b) * bsize + doff, 2);
            float d = tern_f16_to_f32_1(h);
            if (fabsf(d) > fabsf(dm)) dm = d;
        }
        float *r = m->rs + (o / 16) * nb * 16 + o % 16;
        for (int64_t b = 0; b < nb; b++) {
            uint16_t h;
            memcpy(&h, data + (uint64_t)(o * nb + b) * bsize + doff, 2);
            float d = tern_f16_to_f32_1(h);
            /* a row of zero scales: r = 1 keeps y = (A / s) * 0 well defined */
            r[b * 16] = dm == 0.0f ? 1.0f : d / dm;
        }
        m->dmax[o] = dm;
    }
    return TERN_OK;
}

tern_code tern_tmat_from_ggml(tern_tmat **out, tern_ggml_type type, const void *data,
                              uint64_t nbytes, int64_t k, int64_t n, tern_status *st)
{
    *out = NULL;
    const tern_type_traits *tr = tern_type_traits_of(type);
    const char *name = tr ? tr->name : "unknown";
    if (!tr || !tr->ternary)
        return tern_status_set(st, TERN_EUNSUPPORTED,
                               "ternary matrix: got type %s (%d), expected I2_S, TQ2_0 or TQ1_0",
                               name, (int)type);
    /* TQ rows are whole blocks (the decoders walk a row block by block); I2_S blocks run over
     * the flattened tensor, so its rows only need the layout's 16 columns */
    tern_code rc = check_shape(k, n, tr->flat ? TERN_TG_COLS : tr->blck, st);
    if (rc != TERN_OK) return rc;
    uint64_t need = 0;
    if (!tern_ggml_nbytes(type, (uint64_t)k, (uint64_t)k * (uint64_t)n, &need) || nbytes != need)
        return tern_status_set(
            st, TERN_EFORMAT, "ternary matrix %s %lld x %lld: got %llu bytes, expected %llu", name,
            (long long)n, (long long)k, (unsigned long long)nbytes, (unsigned long long)need);
    if (!data) return tern_status_set(st, TERN_EINVAL, "ternary matrix: no data");
    const uint8_t *p = data;
    tern_tmat *m = NULL;
    if (type == TERN_TYPE_I2_S) {
        float alpha;
        memcpy(&alpha, p + (uint64_t)k * (uint64_t)n / 4, 4);
        if (!isfinite(alpha))
            return tern_status_set(st, TERN_EFORMAT, "I2_S: scale is %g, expected finite",
                                   (double)alpha);
        rc = tmat_alloc(&m, k, n, false, st);
        if (rc != TERN_OK) return rc;
        m->alpha = alpha;
        rc = pack_all(m, p, decode_i2s, "I2_S", st);
    } else if (type == TERN_TYPE_TQ2_0) {
        rc = tq_scales(&m, p, k, n, tr->bytes, tr->bytes - 2, "TQ2_0", st);
        if (rc != TERN_OK) return rc;
        rc = pack_all(m, p, decode_tq2, "TQ2_0", st);
    } else {
        rc = tq_scales(&m, p, k, n, tr->bytes, tr->bytes - 2, "TQ1_0", st);
        if (rc != TERN_OK) return rc;
        rc = pack_all(m, p, decode_tq1, "TQ1_0", st);
    }
    if (rc != TERN_OK) {
        tern_tmat_free(m);
        return rc;
    }
    *out = m;
    return TERN_OK;
}

static bool decode_trits(const uint8_t *data, int64_t k, int64_t o, int8_t *t)
{
    memcpy(t, data + (uint64_t)o * (uint64_t)k, (size_t)k);
    return true;
}

tern_code tern_tmat_from_trits(tern_tmat **out, const int8_t *t, int64_t n, int64_t k, float alpha,
                               tern_status *st)
{
    *out = NULL;
    tern_code rc = check_shape(k, n, TERN_TG_COLS, st);
    if (rc != TERN_OK) return rc;
    if (!isfinite(alpha))
        return tern_status_set(st, TERN_EINVAL, "trits: scale is %g, expected finite",
                               (double)alpha);
    for (int64_t i = 0; i < n * k; i++)
        if (t[i] < -1 || t[i] > 1)
            return tern_status_set(st, TERN_EINVAL,
                                   "trits: element %lld is %d, expected -1, 0 or 1", (long long)i,
                                   t[i]);
    tern_tmat *m = NULL;
    rc = tmat_alloc(&m, k, n, false, st);
    if (rc != TERN_OK) return rc;
    m->alpha = alpha;
    rc = pack_all(m, (const uint8_t *)t, decode_trits, "trits", st);
    if (rc != TERN_OK) {
        tern_tmat_free(m);
        return rc;
    }
    *out = m;
    return TERN_OK;
}

int64_t tern_tmat_rows(const tern_tmat *m)
{
    return m->n;
}
int64_t tern_tmat_cols(const tern_tmat *m)
{
    return m->k;
}
int64_t tern_tmat_row_granularity(const tern_tmat *m)
{
    (void)m;
    return TERN_TG_ROWS;
}
uint64_t tern_tmat_bytes(const tern_tmat *m)
{
    return m->bytes;
}
bool tern_tmat_block_scales(const tern_tmat *m)
{
    return m->blocks;
}
float tern_tmat_alpha(const tern_tmat *m)
{
    return m->blocks ? 0.0f : m->alpha;
}

void tern_tmat_unpack_row(const tern_tmat *m, int64_t row, int8_t *t)
{
    TERN_ASSERT(row >= 0 && row < m->n);
    for (int64_t c = 0; c < m->k; c++) t[c] = (int8_t)(tern_tmat_code(m, row, c) - 1);
}

/* ---- int8 LM head ---- */

void tern_i8mat_free(tern_i8mat *m)
{
    if (!m) return;
    if (!m->view) {
        free(m->qu);
        free(m->scale);
        free(m->bscale);
    }
    free(m);
}

/* Both constructors: n x k codes, all zero (biased: 0x80), and zero scales: a float a row, or
 * with blocks an F16 a 32-column block. */
static tern_code i8mat_create(tern_i8mat **out, int64_t n, int64_t k, bool blocks, tern_status *st)
{
    const int64_t kmul = blocks ? 32 : 4;
    const char *what = blocks ? "int8 head (Q8_0 blocks)" : "int8 head";
    *out = NULL;
    if (n < 1 || k < kmul || k % kmul || k > TERN_I8MAT_MAX_K || n > INT64_MAX / 16 / (k + 8))
        return tern_status_set(st, TERN_EINVAL,
                               "%s: got %lld x %lld, expected >= 1 row of a multiple of %lld "
                               "columns, at most %d",
                               what, (long long)n, (long long)k, (long long)kmul, TERN_I8MAT_MAX_K);
    tern_i8mat *m = calloc(1, sizeof *m);
    if (m) {
        m->n = n;
        m->k = k;
        m->n_groups = (n + 15) / 16;
        m->kc = k / 4;
        m->nb = blocks ? k / 32 : 0;
        const uint64_t rows = (uint64_t)m->n_groups * 16;
        const uint64_t sbytes =
            blocks ? rows * (uint64_t)m->nb * sizeof(uint16_t) : rows * sizeof(float);
        m->qu = alloc64(rows * (uint64_t)k);
        void *sc = alloc64(sbytes);
        if (m->qu) memset(m->qu, 0x80, rows * (uint64_t)k); /* q = 0 */
        if (sc) memset(sc, 0, sbytes);
        if (blocks)
            m->bscale = sc;
        else
            m->scale = sc;
    }
    if (!m || !m->qu || !(m->scale || m->bscale)) {
        tern_i8mat_free(m);
        return tern_status_set(st, TERN_ENOMEM, "%s: out of memory for %lld x %lld", what,
                               (long long)n, (long long)k);
    }
    *out = m;
    return TERN_OK;
}

tern_code tern_i8mat_new(tern_i8mat **out, int64_t n, int64_t k, tern_status *st)
{
    return i8mat_create(out, n, k, false, st);
}

tern_code tern_i8mat_new_q8_0(tern_i8mat **out, int64_t n, int64_t k, tern_status *st)
{
    return i8mat_create(out, n, k, true, st);
}

bool tern_i8mat_set_row_q8_0(tern_i8mat *m, int64_t o, const void *blocks)
{
    TERN_ASSERT(m->bscale && o >= 0 && o < m->n);
    const uint8_t *b = blocks;
    uint8_t *q = m->qu + (o / 16) * m->kc * 64 + (o % 16) * 4; /* + c * 64 + j: column 4c + j */
    uint16_t *d = m->bscale + (o / 16) * m->nb * 16 + o % 16;  /* + blk * 16 */
    for (int64_t blk = 0; blk < m->nb; blk++)
        if ((b[blk * 34 + 1] & 0x7c) == 0x7c) return false; /* F16 exponent 31: Inf or NaN */
    for (int64_t blk = 0; blk < m->nb; blk++) {
        const uint8_t *bb = b + blk * 34;
        d[blk * 16] = (uint16_t)(bb[0] | bb[1] << 8);
        for (int i = 0; i < 32; i++) {
            const int64_t col = blk * 32 + i;
            q[(col / 4) * 64 + col % 4] = (uint8_t)(bb[2 + i] ^ 0x80);
        }
    }
    return true;
}

bool tern_i8mat_q8_0(const tern_i8mat *m)
{
    return m->bscale != NULL;
}

void tern_i8mat_row(const tern_i8mat *m, int64_t o, float *x)
{
    TERN_ASSERT(o >= 0 && o < m->n);
    for (int64_t i = 0; i < m->k; i++) {
        const float q = (float)tern_i8mat_q(m, o, i);
        x[i] = m->bscale ? tern_i8mat_d(m, o, i / 32) * q : q * m->scale[o];
    }
}

tern_code tern_i8mat_view(tern_i8mat **out, const tern_i8mat *m, int64_t row0, int64_t n,
                          tern_status *st)
{
    *out = NULL;
    if (row0 < 0 || row0 % 16 || n < 1 || n > m->n - row0)
        return tern_status_set(st, TERN_EINVAL,
                               "int8 head view: got rows [%lld, %lld) of %lld, expected a start "
                               "that is a multiple of 16",
                               (long long)row0, (long long)(row0 + n), (long long)m->n);
    tern_i8mat *v = malloc(sizeof *v);
    if (!v) return tern_status_set(st, TERN_ENOMEM, "int8 head view: out of memory");
    *v = *m;
    v->view = true;
    v->n = n;
    v->n_groups = (n + 15) / 16;
    v->qu = m->qu + (row0 / 16) * m->kc * 64;
    if (m->scale) v->scale = m->scale + row0;
    if (m->bscale) v->bscale = m->bscale + (row0 / 16) * m->nb * 16;
    *out = v;
    return TERN_OK;
}

bool tern_i8mat_set_row(tern_i8mat *m, int64_t o, const float *w)
{
    TERN_ASSERT(m->scale && o >= 0 && o < m->n);
    const int64_t k = m->k;
    uint8_t *q = m->qu + (o / 16) * m->kc * 64 + (o % 16) * 4; /* + c * 64 + j: column 4c + j */
    float amax = 0.0f;
    bool finite = true;
    for (int64_t i = 0; i < k; i++) {
        const float a = fabsf(w[i]);
        if (!isfinite(a))
            finite = false;
        else if (a > amax)
            amax = a;
    }
    m->scale[o] = 0.0f;
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    for (int64_t i = 0; i < k; i++) {
        float v = finite ? tern_round_half_even(w[i] * inv) : 0.0f;
        int b = v > 127.0f ? 127 : v < -127.0f ? -127 : (int)v;
        q[(i / 4) * 64 + i % 4] = (uint8_t)(b + 128);
    }
    if (!finite) return false;
    m->scale[o] = amax / 127.0f;
    return true;
}

tern_code tern_i8mat_from_f16(tern_i8mat **out, const uint16_t *w, int64_t n, int64_t k,
                              tern_status *st)
{
    tern_code rc = tern_i8mat_new(out, n, k, st);
    if (rc) return rc;
    float *row = malloc((size_t)k * sizeof(float));
    if (!row) {
        tern_i8mat_free(*out);
        *out = NULL;
        return tern_status_set(st, TERN_ENOMEM, "int8 head: out of memory for %lld x %lld",
                               (long long)n, (long long)k);
    }
    for (int64_t o = 0; o < n; o++) {
        tern_f16_to_f32(w + o * k, row, k);
        if (!tern_i8mat_set_row(*out, o, row)) {
            free(row);
            tern_i8mat_free(*out);
            *out = NULL;
            return tern_status_set(st, TERN_EFORMAT, "int8 head: row %lld is not finite",
                                   (long long)o);
        }
    }
    free(row);
    return TERN_OK;
}

int64_t tern_i8mat_rows(const tern_i8mat *m)
{
    return m->n;
}
int64_t tern_i8mat_cols(const tern_i8mat *m)
{
    return m->k;
}
uint64_t tern_i8mat_bytes(const tern_i8mat *m)
{
    /* codes, then a float a row or an F16 a block (padding rows of the last group included) */
    const uint64_t extra = m->bscale ? (uint64_t)m->nb * sizeof(uint16_t) : sizeof(float);
    return (uint64_t)m->n_groups * 16 * ((uint64_t)m->k + extra);
}
