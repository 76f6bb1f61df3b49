/* model.c: binds and validates the tensors of a layer slice and copies them into anonymous
 * (NUMA-local) memory, repacking ternary tensors into the kernels' layout. File pages are
 * dropped after each copy so peak RSS stays near one copy of the weights. Only the slice's
 * tensors (and the head's rows) are read: from a Hugging Face directory, only they are
 * converted (tern_gguf_tensor_read). The embedding and head tables: tables.c. */
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "model/model-internal.h"
#include "ternpipe/log.h"

void *tern_model_walloc(tern_model *m, size_t bytes)
{
    if (m->n_allocs == m->cap_allocs) {
        size_t cap = m->cap_allocs ? m->cap_allocs * 2 : 64;
        tern_alloc *na = realloc(m->allocs, cap * sizeof *na);
        if (!na) return NULL;
        m->allocs = na;
        m->cap_allocs = cap;
    }
    void *p = m->topo ? tern_topo_alloc(m->topo, bytes) : NULL;
    if (!p) {
        p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return NULL;
        m->allocs[m->n_allocs].p = p;
        m->allocs[m->n_allocs].bytes = bytes | ((size_t)1 << 62); /* mark: plain mmap */
    } else {
        m->allocs[m->n_allocs].p = p;
        m->allocs[m->n_allocs].bytes = bytes;
    }
    m->n_allocs++;
    m->weight_bytes += bytes;
    return p;
}

tern_code tern_model_find(const tern_gguf *g, const char *name, const tern_gguf_tensor **out,
                          tern_status *st)
{
    *out = tern_gguf_find_tensor(g, name);
    if (!*out)
        return tern_status_set(st, TERN_EFORMAT,
                               "model: %s: tensor '%s': got nothing, expected the tensor",
                               tern_gguf_path(g), name);
    return TERN_OK;
}

tern_code tern_model_check_shape(const tern_gguf *g, const tern_gguf_tensor *t, const char *name,
                                 uint64_t ne0, uint64_t ne1, tern_status *st)
{
    uint64_t want_dims = ne1 ? 2 : 1;
    if (t->n_dims != want_dims || t->ne[0] != ne0 || (ne1 && t->ne[1] != ne1)) {
        char got[64], want[64];
        if (t->n_dims >= 2)
            snprintf(got, sizeof got, "{%" PRIu64 ", %" PRIu64 "%s}", t->ne[0], t->ne[1],
                     t->n_dims > 2 ? ", ..." : "");
        else
            snprintf(got, sizeof got, "{%" PRIu64 "}", t->ne[0]);
        if (ne1)
            snprintf(want, sizeof want, "{%" PRIu64 ", %" PRIu64 "}", ne0, ne1);
        else
            snprintf(want, sizeof want, "{%" PRIu64 "}", ne0);
        return tern_status_set(st, TERN_EFORMAT,
                               "model: %s: tensor '%s' shape: got %s, expected %s",
                               tern_gguf_path(g), name, got, want);
    }
    return TERN_OK;
}

/* Non-finite values in a float tensor (a flipped exponent bit, a bad export) would load
 * silently and turn every later activation into NaN: each F16/F32 copy the loader makes anyway
 * is scanned once, and the first bad element is reported with the tensor's name. */
static tern_code bad_value(const tern_gguf *g, const char *name, bool nan, uint64_t at,
                           tern_status *st)
{
    return tern_status_set(st, TERN_EFORMAT,
                           "model: %s: tensor '%s': got %s at element %" PRIu64
                           ", expected finite values",
                           tern_gguf_path(g), name, nan ? "NaN" : "Inf", at);
}

static tern_code check_f32(const tern_gguf *g, const char *name, const float *p, size_t n,
                           tern_status *st)
{
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) { /* no early exit: the common (clean) case vectorizes */
        uint32_t u;
        memcpy(&u, &p[i], 4);
        bad |= (u & 0x7f800000u) == 0x7f800000u;
    }
    if (!bad) return TERN_OK;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(p[i])) return bad_value(g, name, isnan(p[i]), (uint64_t)i, st);
    return TERN_OK;
}

/* n halves at p; first is the element index of p[0] in the tensor */
tern_code tern_model_check_f16(const tern_gguf *g, const char *name, const uint16_t *p, size_t n,
                               uint64_t first, tern_status *st)
{
    unsigned bad = 0;
    for (size_t i = 0; i < n; i++) bad |= (p[i] & 0x7c00u) == 0x7c00u;
    if (!bad) return TERN_OK;
    for (size_t i = 0; i < n; i++)
        if ((p[i] & 0x7c00u) == 0x7c00u)
            return bad_value(g, name, (p[i] & 0x03ffu) != 0, first + i, st);
    return TERN_OK;
}

static tern_code load_norm(tern_model *m, const tern_gguf *g, const char *name, int32_t n,
                           float **out, tern_status *st)
{
    const tern_gguf_tensor *t;
    tern_code rc = tern_model_find(g, name, &t, st);
    if (rc || (rc = tern_model_check_shape(g, t, name, (uint64_t)n, 0, st))) return rc;
    if (t->type != TERN_TYPE_F32)
        return tern_status_set(st, TERN_EFORMAT,
                               "model: %s: tensor '%s' type: got %s, expected F32",
                               tern_gguf_path(g), name, tern_ggml_type_name(t->type));
    float *p = tern_model_walloc(m, (size_t)n * sizeof(float));
    if (!p) return tern_status_set(st, TERN_ENOMEM, "model: out of memory for '%s'", name);
    if ((rc = tern_gguf_tensor_read(g, t, 0, 1, p, st)) ||
        (rc = check_f32(g, name, p, (size_t)n, st)))
        return rc;
    *out = p;
    return TERN_OK;
}

/* blk.N.<proj>.scale beside blk.N.<proj>.weight (upstream llama.cpp's bitnet files, spec
 * 7.4): 1 when absent, else its one finite F32 value */
static tern_code proj_scale(const tern_gguf *g, const char *name, bool ternary, float *out,
                            tern_status *st)
{
    char sn[112];
    size_t stem = strlen(name) > 7 ? strlen(name) - 7 : 0; /* without ".weight" */
    snprintf(sn, sizeof sn, "%.*s.scale", (int)stem, name);
    const tern_gguf_tensor *s = tern_gguf_find_tensor(g, sn);
    *out = 1.0f;
    if (!s) return TERN_OK;
    /* a ternary blob carries its own scales; which of the two wins is not written down */
    if (ternary)
        return tern_status_set(st, TERN_EUNSUPPORTED,
                               "model: %s: tensor '%s': got a scale beside the ternary '%s', "
                               "expected none (only float projections take one)",
                               tern_gguf_path(g), sn, name);
    if (s->type != TERN_TYPE_F32 || s->ne[0] * s->ne[1] * s->ne[2] * s->ne[3] != 1)
        return tern_status_set(st, TERN_EFORMAT,
                               "model: %s: tensor '%s': got %s with %" PRIu64
                               " elements, expected one F32",
                               tern_gguf_path(g), sn, tern_ggml_type_name(s->type),
                               s->ne[0] * s->ne[1] * s->ne[2] * s->ne[3]);
    tern_code rc = tern_gguf_tensor_read(g, s, 0, 1, out, st);
    if (!rc && !(isfinite(*out) && *out > 0.0f))
        return tern_status_set(st, TERN_EFORMAT,
                               "model: %s: tensor '%s': got %g, expected a finite positive scale",
                               tern_gguf_path(g), sn, (double)*out);
    return rc;
}

static float f32_at(const unsigned char *p, size_t i)
{
    float v;
    memcpy(&v, p + 4 * i, 4);
    return v;
}
static uint16_t f16_at(const unsigned char *p, size_t i)
{
    uint16_t v;
    memcpy(&v, p + 2 * i, 2);
    return v;
}

/* A float projection [n][k] (F32 or F16: upstream llama.cpp's bitnet files, convert --type
 * f16), ternarized here. When every value is 0 or +-a for one a (a dequantized ternary t*a, or
 * the trits themselves with a .scale), t is exact and alpha = a; anything else is a master,
 * quantized as spec 7.3 (alpha = max(mean|W|, 1e-5) with the mean in double, t =
 * clamp(rint(W / alpha), -1, 1)). Either alpha is multiplied by the .scale when there is one. */
static tern_code float_trits(const tern_gguf *g, const char *name, tern_ggml_type type,
                             const void *data, int32_t k, int32_t n, int8_t *tr, float *alpha,
                             tern_status *st)
{
    const size_t cnt = (size_t)k * (size_t)n;
    const unsigned char *raw = data; /* a file's alignment may be as small as 1 */
#define AT(i) (type == TERN_TYPE_F32 ? f32_at(raw, i) : tern_f16_to_f32_1(f16_at(raw, i)))
    double sum = 0.0;
    float a = 0.0f;
    bool levels = true; /* every value 0 or +-a */
    for (size_t i = 0; i < cnt; i++) {
        float v = fabsf(AT(i));
        if (!isfinite(v)) return bad_value(g, name, isnan(v), (uint64_t)i, st);
        sum += (double)v;
        if (v != 0.0f && a == 0.0f) a = v;
        levels &= v == 0.0f || v == a;
    }
    float al = levels && a > 0.0f ? a : (float)(sum / (double)cnt);
    if (!(al >= 1e-5f)) al = 1e-5f;
    for (size_t i = 0; i < cnt; i++) {
        float v = rintf(AT(i) / al);
        tr[i] = (int8_t)(v > 1.0f ? 1 : v < -1.0f ? -1 : (int)v);
    }
#undef AT
    *alpha = al;
    return TERN_OK;
}

static tern_code load_ternary(tern_model *m, const tern_gguf *g, const char *name, int32_t k,
                              int32_t n, tern_tmat **out, tern_status *st)
{
    const tern_gguf_tensor *t;
    tern_code rc = tern_model_find(g, name, &t, st);
    if (rc || (rc = tern_model_check_shape(g, t, name, (uint64_t)k, (uint64_t)n, st))) return rc;
    bool fl = t->type == TERN_TYPE_F32 || t->type == TERN_TYPE_F16;
    if (!tern_type_is_ternary(t->type) && !fl)
        return tern_status_set(st, TERN_EUNSUPPORTED,
                               "model: %s: tensor '%s' type: got %s, expected I2_S, TQ2_0, TQ1_0, "
                               "F16 or F32",
                               tern_gguf_path(g), name, tern_ggml_type_name(t->type));
    float scale = 1.0f;
    if ((rc = proj_scale(g, name, !fl, &scale, st))) return rc;
    /* a file's blob is repacked from the mapping; a directory's is converted first */
    void *blob = NULL;
    if (!t->data) {
        if (!(blob = malloc((size_t)t->nbytes)))
            return tern_status_set(st, TERN_ENOMEM, "model: out of memory for '%s'", name);
        if ((rc = tern_gguf_tensor_read(g, t, 0, (uint64_t)n, blob, st))) {
            free(blob);
            return rc;
        }
    }
    tern_status kst = {0};
    if (fl) {
        int8_t *tr = malloc((size_t)k * (size_t)n);
        float alpha = 0.0f;
        if (!tr) {
            free(blob);
            return tern_status_set(st, TERN_ENOMEM, "model: out of memory for '%s'", name);
        }
        rc = float_trits(g, name, t->type, blob ? blob : t->data, k, n, tr, &alpha, st);
        free(blob);
        if (!rc) rc = tern_tmat_from_trits(out, tr, n, k, alpha * scale, &kst);
        free(tr);
        if (rc && !kst.msg[0]) return rc; /* float_trits' own message */
    } else {
        rc = tern_tmat_from_ggml(out, t->type, blob ? blob : t->data, t->nbytes, k, n, &kst);
        free(blob);
    }
    if (rc)
        return tern_status_set(st, rc, "model: %s: tensor '%s': %s", tern_gguf_path(g), name,
                               kst.msg);
    m->weight_bytes += tern_tmat_bytes(*out);
    m->bytes_per_token += tern_tmat_bytes(*out);
    tern_gguf_drop_pages(g, t->data, t->nbytes);
    return TERN_OK;
}

tern_code tern_model_load(tern_model **out, const tern_gguf *g, const tern_model_opts *o,
                          tern_status *st)
{
    *out = NULL;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    tern_model *m = calloc(1, sizeof *m);
    if (!m) return tern_status_set(st, TERN_ENOMEM, "model: out of memory");
    tern_code rc = tern_hparams_read(g, &m->hp, st);
    if (rc) goto fail;
    const tern_hparams *hp = &m->hp;
    m->topo = o->topo;
    m->l0 = o->l0;
    m->l1 = o->l1 < 0 ? hp->n_layer : o->l1;
    if (m->l0 < 0 || m->l0 > m->l1 || m->l1 > hp->n_layer) {
        rc = tern_status_set(st, TERN_EINVAL,
                             "model: layer slice: got [%d, %d), expected within [0, %d]", m->l0,
                             m->l1, hp->n_layer);
        goto fail;
    }
    m->has_embed = o->embed;
    m->has_head = o->head;
    m->head_v0 = 0, m->head_v1 = 0;
    if (o->head) {
        m->head_v0 = o->head_v0, m->head_v1 = o->head_v1;
        if (m->head_v0 == 0 && m->head_v1 == 0) m->head_v1 = hp->n_vocab;
        if (m->head_v0 < 0 || m->head_v0 > m->head_v1 || m->head_v1 > hp->n_vocab) {
            rc = tern_status_set(st, TERN_EINVAL,
                                 "model: head rows: got [%d, %d), expected within [0, %d]",
                                 m->head_v0, m->head_v1, hp->n_vocab);
            goto fail;
        }
    }
    m->head_type = o->head_type;
    int32_t nl = m->l1 - m->l0;
    m->layers = calloc(nl ? (size_t)nl : 1, sizeof *m->layers);
    if (!m->layers) {
        rc = tern_status_set(st, TERN_ENOMEM, "model: out of memory");
        goto fail;
    }
    const int32_t d = hp->d, ff = hp->n_ff, kv = hp->n_head_kv * hp->head_dim;
    for (int32_t l = m->l0; l < m->l1; l++) {
        tern_layer *L = &m->layers[l - m->l0];
        char nm[96];
#define NAME(s) (snprintf(nm, sizeof nm, "blk.%d." s ".weight", l), nm)
        if ((rc = load_norm(m, g, NAME("attn_norm"), d, &L->attn_norm, st)) ||
            (rc = load_ternary(m, g, NAME("attn_q"), d, d, &L->wq, st)) ||
            (rc = load_ternary(m, g, NAME("attn_k"), d, kv, &L->wk, st)) ||
            (rc = load_ternary(m, g, NAME("attn_v"), d, kv, &L->wv, st)) ||
            (rc = load_ternary(m, g, NAME("attn_output"), d, d, &L->wo, st)) ||
            (rc = load_norm(m, g, NAME("attn_sub_norm"), d, &L->attn_sub_norm, st)) ||
            (rc = load_norm(m, g, NAME("ffn_norm"), d, &L->ffn_norm, st)) ||
            (rc = load_ternary(m, g, NAME("ffn_gate"), d, ff, &L->wgate, st)) ||
            (rc = load_ternary(m, g, NAME("ffn_up"), d, ff, &L->wup, st)) ||
            (rc = load_ternary(m, g, NAME("ffn_down"), ff, d, &L->wdown, st)) ||
            (rc = load_norm(m, g, NAME("ffn_sub_norm"), ff, &L->ffn_sub_norm, st)))
            goto fail;
#undef NAME
        if (o->progress) o->progress(o->progress_user, l - m->l0 + 1, m->l1 - m->l0 + 1);
    }
    if (m->has_head || o->final_norm) {
        if ((rc = load_norm(m, g, "output_norm.weight", d, &m->output_norm, st))) goto fail;
    }
    if ((rc = tern_model_load_tables(m, g, st))) goto fail;
    if (o->progress) o->progress(o->progress_user, m->l1 - m->l0 + 1, m->l1 - m->l0 + 1);
    /* a directory: which checkpoint tensors this process converted (its slice's) */
    char reads[512];
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (tern_gguf_describe_reads(g, reads, sizeof reads))
        tern_log(TERN_LOG_INFO, "model: %s: %s; %.2f s", tern_gguf_path(g), reads,
                 (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
    *out = m;
    return TERN_OK;
fail:
    tern_model_free(m);
    return rc;
}

void tern_model_free(tern_model *m)
{
    if (!m) return;
    if (m->layers) {
        for (int32_t i = 0; i < m->l1 - m->l0; i++) {
            tern_layer *L = &m->layers[i];
            tern_tmat_free(L->wq), tern_tmat_free(L->wk), tern_tmat_free(L->wv);
            tern_tmat_free(L->wo), tern_tmat_free(L->wgate), tern_tmat_free(L->wup);
            tern_tmat_free(L->wdown);
        }
    }
    tern_i8mat_free(m->qhead); /* a view of qembd, or its own */
    tern_i8mat_free(m->qembd);
    for (size_t i = 0; i < m->n_allocs; i++) {
        size_t b = m->allocs[i].bytes;
        if (b >> 62)
            munmap(m->allocs[i].p, b & ~((size_t)1 << 62));
        else
            tern_topo_free_mem(m->topo, m->allocs[i].p, b);
    }
    free(m->allocs);
    free(m->layers);
    free(m);
}

const tern_hparams *tern_model_hparams(const tern_model *m)
{
    return &m->hp;
}
void tern_model_slice(const tern_model *m, int32_t *l0, int32_t *l1)
{
    *l0 = m->l0;
    *l1 = m->l1;
}
uint64_t tern_model_bytes_per_token(const tern_model *m)
{
    return m->bytes_per_token;
}
uint64_t tern_model_weight_bytes(const tern_model *m)
{
    return m->weight_bytes;
}
void tern_model_head_rows(const tern_model *m, int32_t *v0, int32_t *v1)
{
    *v0 = m->head_v0;
    *v1 = m->head_v1;
}
