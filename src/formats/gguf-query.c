/* gguf-query.c: what a caller asks of an opened GGUF file: header fields, the key/value and
 * tensor tables, typed getters that name the key and the expected type on a mismatch, array
 * items, the content checksum ranks compare, and page dropping for mapped files. Parsing and
 * opening live in gguf.c. */
#include "formats/formats-internal.h"
#include "ternpipe/log.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

uint32_t tern_gguf_version(const tern_gguf *g)
{
    return g->version;
}
uint32_t tern_gguf_alignment(const tern_gguf *g)
{
    return g->alignment;
}
uint64_t tern_gguf_file_size(const tern_gguf *g)
{
    return g->hf ? g->file_size : g->size;
}
const char *tern_gguf_path(const tern_gguf *g)
{
    return g->path;
}
uint64_t tern_gguf_n_kv(const tern_gguf *g)
{
    return g->n_kv;
}
const tern_gguf_kv *tern_gguf_kv_at(const tern_gguf *g, uint64_t i)
{
    return i < g->n_kv ? &g->kvs[i] : NULL;
}
uint64_t tern_gguf_n_tensors(const tern_gguf *g)
{
    return g->n_tensors;
}
const tern_gguf_tensor *tern_gguf_tensor_at(const tern_gguf *g, uint64_t i)
{
    return i < g->n_tensors ? &g->tensors[i] : NULL;
}

const tern_gguf_value *tern_gguf_find(const tern_gguf *g, const char *key)
{
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (tern_gguf_str_eq(g->kvs[i].key, key)) return &g->kvs[i].value;
    return NULL;
}

const tern_gguf_tensor *tern_gguf_find_tensor(const tern_gguf *g, const char *name)
{
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (tern_gguf_str_eq(g->tensors[i].name, name)) return &g->tensors[i];
    return NULL;
}

static bool is_int_type(tern_gguf_vtype t)
{
    return t == TERN_GGUF_UINT8 || t == TERN_GGUF_INT8 || t == TERN_GGUF_UINT16 ||
           t == TERN_GGUF_INT16 || t == TERN_GGUF_UINT32 || t == TERN_GGUF_INT32 ||
           t == TERN_GGUF_UINT64 || t == TERN_GGUF_INT64;
}
static bool is_signed(tern_gguf_vtype t)
{
    return t == TERN_GGUF_INT8 || t == TERN_GGUF_INT16 || t == TERN_GGUF_INT32 ||
           t == TERN_GGUF_INT64;
}

static tern_code get_typed(const tern_gguf *g, const char *key, const tern_gguf_value **v,
                           tern_status *st)
{
    *v = tern_gguf_find(g, key);
    if (!*v)
        return tern_status_set(st, TERN_EFORMAT,
                               "gguf: %s: metadata '%s': got nothing, expected the key", g->path,
                               key);
    return TERN_OK;
}

static tern_code get_int(const tern_gguf *g, const char *key, int64_t lo, int64_t hi, int64_t *out,
                         tern_status *st)
{
    const tern_gguf_value *v;
    tern_code rc = get_typed(g, key, &v, st);
    if (rc) return rc;
    if (!is_int_type(v->type))
        return tern_status_set(st, TERN_EFORMAT,
                               "gguf: %s: metadata '%s' type: got %s, expected an integer", g->path,
                               key, tern_gguf_vtype_name(v->type));
    if (is_signed(v->type)) {
        if (v->v.i64 < lo || v->v.i64 > hi)
            return tern_status_set(st, TERN_ERANGE,
                                   "gguf: %s: metadata '%s': got %" PRId64 ", expected %" PRId64
                                   "..%" PRId64,
                                   g->path, key, v->v.i64, lo, hi);
        *out = v->v.i64;
    } else {
        if (v->v.u64 > (uint64_t)hi || (lo > 0 && v->v.u64 < (uint64_t)lo))
            return tern_status_set(st, TERN_ERANGE,
                                   "gguf: %s: metadata '%s': got %" PRIu64 ", expected %" PRId64
                                   "..%" PRId64,
                                   g->path, key, v->v.u64, lo, hi);
        *out = (int64_t)v->v.u64;
    }
    return TERN_OK;
}

tern_code tern_gguf_get_u32(const tern_gguf *g, const char *key, uint32_t *out, tern_status *st)
{
    int64_t x;
    tern_code rc = get_int(g, key, 0, UINT32_MAX, &x, st);
    if (!rc) *out = (uint32_t)x;
    return rc;
}

tern_code tern_gguf_get_i32(const tern_gguf *g, const char *key, int32_t *out, tern_status *st)
{
    int64_t x;
    tern_code rc = get_int(g, key, INT32_MIN, INT32_MAX, &x, st);
    if (!rc) *out = (int32_t)x;
    return rc;
}

tern_code tern_gguf_get_f32(const tern_gguf *g, const char *key, float *out, tern_status *st)
{
    const tern_gguf_value *v;
    tern_code rc = get_typed(g, key, &v, st);
    if (rc) return rc;
    if (v->type != TERN_GGUF_FLOAT32 && v->type != TERN_GGUF_FLOAT64)
        return tern_status_set(st, TERN_EFORMAT,
                               "gguf: %s: metadata '%s' type: got %s, expected float32", g->path,
                               key, tern_gguf_vtype_name(v->type));
    *out = (float)v->v.f64;
    return TERN_OK;
}

tern_code tern_gguf_get_bool(const tern_gguf *g, const char *key, bool *out, tern_status *st)
{
    const tern_gguf_value *v;
    tern_code rc = get_typed(g, key, &v, st);
    if (rc) return rc;
    if (v->type != TERN_GGUF_BOOL)
        return tern_status_set(st, TERN_EFORMAT,
                               "gguf: %s: metadata '%s' type: got %s, expected bool", g->path, key,
                               tern_gguf_vtype_name(v->type));
    *out = v->v.u64 != 0;
    return TERN_OK;
}

tern_code tern_gguf_get_str(const tern_gguf *g, const char *key, tern_gguf_str *out,
                            tern_status *st)
{
    const tern_gguf_value *v;
    tern_code rc = get_typed(g, key, &v, st);
    if (rc) return rc;
    if (v->type != TERN_GGUF_STRING)
        return tern_status_set(st, TERN_EFORMAT,
                               "gguf: %s: metadata '%s' type: got %s, expected string", g->path,
                               key, tern_gguf_vtype_name(v->type));
    *out = v->v.str;
    return TERN_OK;
}

tern_code tern_gguf_get_arr(const tern_gguf *g, const char *key, tern_gguf_vtype type,
                            const tern_gguf_value **out, tern_status *st)
{
    const tern_gguf_value *v;
    tern_code rc = get_typed(g, key, &v, st);
    if (rc) return rc;
    if (v->type != TERN_GGUF_ARRAY || v->v.arr.type != type)
        return tern_status_set(
            st, TERN_EFORMAT, "gguf: %s: metadata '%s' type: got %s%s%s, expected array of %s",
            g->path, key, tern_gguf_vtype_name(v->type), v->type == TERN_GGUF_ARRAY ? " of " : "",
            v->type == TERN_GGUF_ARRAY ? tern_gguf_vtype_name(v->v.arr.type) : "",
            tern_gguf_vtype_name(type));
    *out = v;
    return TERN_OK;
}

int64_t tern_gguf_arr_int(const tern_gguf_value *arr, uint64_t i)
{
    tern_gguf_value v = {0};
    size_t es = tern_gguf_vtype_size(arr->v.arr.type);
    tern_gguf_decode_scalar(arr->v.arr.type, (const uint8_t *)arr->v.arr.data + i * es, &v);
    return is_signed(v.type) ? v.v.i64 : (int64_t)v.v.u64;
}

double tern_gguf_arr_float(const tern_gguf_value *arr, uint64_t i)
{
    tern_gguf_value v = {0};
    size_t es = tern_gguf_vtype_size(arr->v.arr.type);
    tern_gguf_decode_scalar(arr->v.arr.type, (const uint8_t *)arr->v.arr.data + i * es, &v);
    return v.v.f64;
}

void tern_gguf_drop_pages(const tern_gguf *g, const void *data, uint64_t nbytes)
{
    if (!g->mapped) return; /* memory the caller owns: never discard it */
    uintptr_t lo = (uintptr_t)g->base, hi = lo + g->size, a0 = (uintptr_t)data;
    if (a0 < lo || a0 >= hi) return;
    uintptr_t a1 = nbytes > hi - a0 ? hi : a0 + (uintptr_t)nbytes;
    long pg = sysconf(_SC_PAGESIZE);
    uintptr_t a = (a0 + (uintptr_t)pg - 1) & ~((uintptr_t)pg - 1);
    uintptr_t b = a1 & ~((uintptr_t)pg - 1);
    if (b > a) (void)madvise((void *)a, b - a, MADV_DONTNEED);
}

uint64_t tern_gguf_checksum(const tern_gguf *g)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
#define MIX(p, n)                                                                                  \
    for (size_t i_ = 0; i_ < (size_t)(n); i_++)                                                    \
    h = (h ^ ((const uint8_t *)(p))[i_]) * 1099511628211ULL
    uint64_t size = tern_gguf_file_size(g);
    /* a directory's size depends on whether its vocab was read (TERN_GGUF_WEIGHTS_ONLY):
     * tern_hf_checksum mixes the checkpoint's size instead */
    if (!g->hf) MIX(&size, 8);
    for (uint64_t i = 0; i < tern_gguf_n_tensors(g); i++) {
        const tern_gguf_tensor *t = tern_gguf_tensor_at(g, i);
        MIX(t->name.ptr, t->name.len);
        MIX(t->ne, sizeof t->ne);
        MIX(&t->type, sizeof t->type);
        MIX(&t->offset, 8);
        if (g->hf) continue; /* the checkpoint's data is mixed below */
        /* the data: whole tensors in files up to 64 MiB; above that, 64 bytes every 256 KiB
         * and the last 64 (all of it would cost a second read of the model on every rank) */
        const uint8_t *p = t->data;
        uint64_t stride = size <= ((uint64_t)64 << 20) ? 64 : 256 * 1024;
        /* the kernel maps whole large folios around each sampled read: drop them every
         * 16 MiB, or the file would sit in RSS beside the copies made from it */
        const uint64_t piece = (uint64_t)16 << 20;
        for (uint64_t off = 0; off < t->nbytes; off += stride) {
            MIX(p + off, t->nbytes - off < 64 ? t->nbytes - off : 64);
            if (stride > 64 && off % piece + stride >= piece)
                tern_gguf_drop_pages(g, p + off / piece * piece, piece);
        }
        if (t->nbytes >= 64) MIX(p + t->nbytes - 64, 64);
        if (stride > 64) tern_gguf_drop_pages(g, p, t->nbytes);
    }
#undef MIX
    return g->hf ? tern_hf_checksum(g->hf, h) : h;
}

tern_code tern_gguf_tensor_read(const tern_gguf *g, const tern_gguf_tensor *t, uint64_t r0,
                                uint64_t r1, void *dst, tern_status *st)
{
    if (t < g->tensors || t >= g->tensors + g->n_tensors)
        tern_die("gguf: tern_gguf_tensor_read: a tensor of another file");
    const tern_type_traits *tr = tern_type_traits_of(t->type);
    uint64_t rows = t->ne[1] * t->ne[2] * t->ne[3]; /* parse bounded the product by 2^50 */
    if (r0 > r1 || r1 > rows || (tr->flat && (r0 != 0 || r1 != rows)))
        return tern_status_set(st, TERN_EINVAL,
                               "gguf: %s: tensor '%.*s' rows: got [%" PRIu64 ", %" PRIu64
                               "), expected within [0, %" PRIu64 ")%s",
                               g->path, (int)t->name.len, t->name.ptr, r0, r1, rows,
                               tr->flat ? " and whole (its type has a tail)" : "");
    if (g->hf) return tern_hf_read(g->hf, (uint64_t)(t - g->tensors), r0, r1, dst, st);
    /* blocks never straddle rows in a non-flat type, so a row is nbytes / rows */
    const uint64_t row = tr->flat ? t->nbytes : t->nbytes / rows;
    const uint8_t *src = (const uint8_t *)t->data + r0 * row;
    const uint64_t bytes = (r1 - r0) * row;
    /* in 16 MiB pieces, each piece's file pages dropped once copied: the 2B-4T embedding is
     * 657 MB, and holding it twice would be the process's peak RSS */
    const uint64_t piece = (uint64_t)16 << 20;
    for (uint64_t off = 0; off < bytes; off += piece) {
        uint64_t len = bytes - off < piece ? bytes - off : piece;
        memcpy((uint8_t *)dst + off, src + off, (size_t)len);
        tern_gguf_drop_pages(g, src + off, len);
    }
    tern_gguf_drop_pages(g, src, bytes); /* the pages that straddle piece edges */
    return TERN_OK;
}

size_t tern_gguf_describe_reads(const tern_gguf *g, char *buf, size_t cap)
{
    if (!g->hf) {
        if (cap) buf[0] = '\0';
        return 0;
    }
    return tern_hf_describe_reads(g->hf, buf, cap);
}

const char *tern_gguf_vtype_name(tern_gguf_vtype t)
{
    static const char *const names[TERN_GGUF_VTYPE_COUNT] = {
        "uint8", "int8",   "uint16", "int16",  "uint32", "int32",  "float32",
        "bool",  "string", "array",  "uint64", "int64",  "float64"};
    return (t >= 0 && t < TERN_GGUF_VTYPE_COUNT) ? names[t] : "unknown";
}
