/* gguf-writer.c: GGUF v3 writer (used by convert and synth). Metadata is serialized as it is
 * added; tensor data is borrowed and streamed at write time, each blob aligned. */
#include "formats/formats-internal.h"
#include "ternpipe/gguf.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct wtensor {
    char *name;
    tern_ggml_type type;
    uint32_t n_dims;
    uint64_t ne[TERN_GGUF_MAX_DIMS];
    uint64_t nbytes;
    const void *data;
} wtensor;

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
    bool oom;
} buf;

struct tern_gguf_writer {
    buf meta;
    uint64_t n_kv;
    uint32_t alignment;
    wtensor *tensors;
    size_t n_tensors, cap_tensors;
};

static void put(buf *b, const void *p, size_t n)
{
    /* n == 0 may come with p == NULL (an empty array): memcpy must not see it */
    if (b->oom || n == 0) return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n) cap *= 2;
        uint8_t *np = realloc(b->p, cap);
        if (!np) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
}
static void put_u32(buf *b, uint32_t v)
{
    put(b, &v, 4);
}
static void put_u64(buf *b, uint64_t v)
{
    put(b, &v, 8);
}
static void put_str(buf *b, const char *s, uint64_t len)
{
    put_u64(b, len);
    put(b, s, (size_t)len);
}

tern_gguf_writer *tern_gguf_writer_new(void)
{
    tern_gguf_writer *w = calloc(1, sizeof *w);
    if (w) w->alignment = TERN_GGUF_DEFAULT_ALIGNMENT;
    return w;
}

void tern_gguf_writer_free(tern_gguf_writer *w)
{
    if (!w) return;
    for (size_t i = 0; i < w->n_tensors; i++) free(w->tensors[i].name);
    free(w->tensors);
    free(w->meta.p);
    free(w);
}

static tern_code key_header(tern_gguf_writer *w, const char *key, tern_gguf_vtype type)
{
    put_str(&w->meta, key, strlen(key));
    put_u32(&w->meta, (uint32_t)type);
    w->n_kv++;
    return w->meta.oom ? TERN_ENOMEM : TERN_OK;
}

void tern_gguf_writer_set_alignment(tern_gguf_writer *w, uint32_t alignment)
{
    w->alignment = alignment;
    tern_gguf_writer_add_u32(w, "general.alignment", alignment);
}

tern_code tern_gguf_writer_add_scalar(tern_gguf_writer *w, const char *key, tern_gguf_vtype type,
                                      const void *raw)
{
    size_t n = tern_gguf_vtype_size(type);
    if (!n) return TERN_EINVAL;
    key_header(w, key, type);
    put(&w->meta, raw, n);
    return w->meta.oom ? TERN_ENOMEM : TERN_OK;
}

tern_code tern_gguf_writer_add_u32(tern_gguf_writer *w, const char *key, uint32_t v)
{
    return tern_gguf_writer_add_scalar(w, key, TERN_GGUF_UINT32, &v);
}
tern_code tern_gguf_writer_add_i32(tern_gguf_writer *w, const char *key, int32_t v)
{
    return tern_gguf_writer_add_scalar(w, key, TERN_GGUF_INT32, &v);
}
tern_code tern_gguf_writer_add_u64(tern_gguf_writer *w, const char *key, uint64_t v)
{
    return tern_gguf_writer_add_scalar(w, key, TERN_GGUF_UINT64, &v);
}
tern_code tern_gguf_writer_add_f32(tern_gguf_writer *w, const char *key, float v)
{
    return tern_gguf_writer_add_scalar(w, key, TERN_GGUF_FLOAT32, &v);
}
tern_code tern_gguf_writer_add_bool(tern_gguf_writer *w, const char *key, bool v)
{
    uint8_t b = v ? 1 : 0;
    return tern_gguf_writer_add_scalar(w, key, TERN_GGUF_BOOL, &b);
}
tern_code tern_gguf_writer_add_str(tern_gguf_writer *w, const char *key, const char *v)
{
    key_header(w, key, TERN_GGUF_STRING);
    put_str(&w->meta, v, strlen(v));
    return w->meta.oom ? TERN_ENOMEM : TERN_OK;
}

tern_code tern_gguf_writer_add_arr(tern_gguf_writer *w, const char *key, tern_gguf_vtype type,
                                   const void *data, uint64_t n)
{
    size_t es = tern_gguf_vtype_size(type);
    if (!es) return TERN_EINVAL;
    key_header(w, key, TERN_GGUF_ARRAY);
    put_u32(&w->meta, (uint32_t)type);
    put_u64(&w->meta, n);
    put(&w->meta, data, (size_t)(n * es));
    return w->meta.oom ? TERN_ENOMEM : TERN_OK;
}

tern_code tern_gguf_writer_add_arr_str(tern_gguf_writer *w, const char *key,
                                       const char *const *strs, const uint64_t *lens, uint64_t n)
{
    key_header(w, key, TERN_GGUF_ARRAY);
    put_u32(&w->meta, TERN_GGUF_STRING);
    put_u64(&w->meta, n);
    for (uint64_t i = 0; i < n; i++) put_str(&w->meta, strs[i], lens ? lens[i] : strlen(strs[i]));
    return w->meta.oom ? TERN_ENOMEM : TERN_OK;
}

/* serializes a value body (no key, no outer type) */
static void put_value(buf *b, const tern_gguf_value *v)
{
    switch (v->type) {
    case TERN_GGUF_STRING:
        put_str(b, v->v.str.ptr, v->v.str.len);
        break;
    case TERN_GGUF_ARRAY: {
        put_u32(b, (uint32_t)v->v.arr.type);
        put_u64(b, v->v.arr.n);
        size_t es = tern_gguf_vtype_size(v->v.arr.type);
        if (es)
            put(b, v->v.arr.data, (size_t)(v->v.arr.n * es));
        else
            for (uint64_t i = 0; i < v->v.arr.n; i++) put_value(b, &v->v.arr.items[i]);
        break;
    }
    case TERN_GGUF_FLOAT32: {
        float f = (float)v->v.f64;
        put(b, &f, 4);
        break;
    }
    case TERN_GGUF_FLOAT64:
        put(b, &v->v.f64, 8);
        break;
    default: {
        /* integers and bool: little-endian low bytes of the 64-bit value */
        uint64_t u = v->v.u64;
        put(b, &u, tern_gguf_vtype_size(v->type));
        break;
    }
    }
}

tern_code tern_gguf_writer_add_value(tern_gguf_writer *w, const char *key, const tern_gguf_value *v)
{
    key_header(w, key, v->type);
    put_value(&w->meta, v);
    return w->meta.oom ? TERN_ENOMEM : TERN_OK;
}

tern_code tern_gguf_writer_add_tensor(tern_gguf_writer *w, const char *name, tern_ggml_type type,
                                      uint32_t n_dims, const uint64_t *ne, const void *data,
                                      tern_status *st)
{
    if (n_dims < 1 || n_dims > TERN_GGUF_MAX_DIMS)
        return tern_status_set(st, TERN_EINVAL,
                               "gguf writer: tensor '%s' n_dims: got %u, expected 1..4", name,
                               n_dims);
    uint64_t n_el = 1;
    for (uint32_t d = 0; d < n_dims; d++) n_el *= ne[d];
    uint64_t nbytes;
    if (!tern_ggml_nbytes(type, ne[0], n_el, &nbytes))
        return tern_status_set(st, TERN_EINVAL,
                               "gguf writer: tensor '%s': got type %d with ne0 %llu, expected a "
                               "size that fits the type's blocks",
                               name, (int)type, (unsigned long long)ne[0]);
    if (w->n_tensors == w->cap_tensors) {
        size_t cap = w->cap_tensors ? w->cap_tensors * 2 : 64;
        wtensor *nt = realloc(w->tensors, cap * sizeof *nt);
        if (!nt) return tern_status_set(st, TERN_ENOMEM, "gguf writer: out of memory");
        w->tensors = nt;
        w->cap_tensors = cap;
    }
    wtensor *t = &w->tensors[w->n_tensors];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    if (!t->name) return tern_status_set(st, TERN_ENOMEM, "gguf writer: out of memory");
    t->type = type;
    t->n_dims = n_dims;
    for (uint32_t d = 0; d < TERN_GGUF_MAX_DIMS; d++) t->ne[d] = d < n_dims ? ne[d] : 1;
    t->nbytes = nbytes;
    t->data = data;
    w->n_tensors++;
    return TERN_OK;
}

static uint64_t align_up(uint64_t x, uint64_t a)
{
    return (x + a - 1) / a * a;
}

tern_code tern_gguf_writer_set_data(tern_gguf_writer *w, uint64_t i, const void *data,
                                    tern_status *st)
{
    if (i >= w->n_tensors)
        return tern_status_set(st, TERN_EINVAL, "gguf writer: tensor %llu: got no such tensor",
                               (unsigned long long)i);
    w->tensors[i].data = data;
    return TERN_OK;
}

/* magic, counts, metadata, tensor infos, padding to the alignment; *size: the whole file */
static tern_code header(tern_gguf_writer *w, buf *head, uint64_t *size, tern_status *st)
{
    if (w->meta.oom) return tern_status_set(st, TERN_ENOMEM, "gguf writer: out of memory");
    put(head, "GGUF", 4);
    put_u32(head, 3);
    put_u64(head, w->n_tensors);
    put_u64(head, w->n_kv);
    put(head, w->meta.p, w->meta.n);
    uint64_t off = 0;
    for (size_t i = 0; i < w->n_tensors; i++) {
        wtensor *t = &w->tensors[i];
        put_str(head, t->name, strlen(t->name));
        put_u32(head, t->n_dims);
        for (uint32_t d = 0; d < t->n_dims; d++) put_u64(head, t->ne[d]);
        put_u32(head, (uint32_t)t->type);
        put_u64(head, off);
        if (t->nbytes > UINT64_MAX - off - w->alignment) {
            free(head->p);
            return tern_status_set(st, TERN_EINVAL,
                                   "gguf writer: tensor '%s': got a data "
                                   "section over 2^64 bytes, expected less",
                                   t->name);
        }
        off = align_up(off + t->nbytes, w->alignment);
    }
    static const uint8_t zeros[64] = {0};
    uint64_t pad = align_up(head->n, w->alignment) - head->n;
    while (pad > 0) {
        size_t k = pad > sizeof zeros ? sizeof zeros : (size_t)pad;
        put(head, zeros, k);
        pad -= k;
    }
    if (head->oom) {
        free(head->p);
        return tern_status_set(st, TERN_ENOMEM, "gguf writer: out of memory");
    }
    *size = head->n + off;
    return TERN_OK;
}

tern_code tern_gguf_writer_header(tern_gguf_writer *w, uint8_t **out, size_t *len,
                                  uint64_t *file_size, tern_status *st)
{
    buf head = {0};
    tern_code rc = header(w, &head, file_size, st);
    *out = rc ? NULL : head.p;
    *len = rc ? 0 : head.n;
    return rc;
}

tern_code tern_gguf_writer_write(tern_gguf_writer *w, const char *path, tern_status *st)
{
    buf head = {0};
    uint64_t size;
    tern_code rc = header(w, &head, &size, st);
    if (rc) return rc;
    for (size_t i = 0; i < w->n_tensors; i++)
        if (!w->tensors[i].data && w->tensors[i].nbytes) {
            free(head.p);
            return tern_status_set(st, TERN_EINVAL,
                                   "gguf writer: tensor '%s': got no data, expected its bytes",
                                   w->tensors[i].name);
        }
    static const uint8_t zeros[64] = {0};
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(head.p);
        return tern_status_set(st, TERN_EIO, "gguf writer: %s: %s", path, strerror(errno));
    }
    bool ok = fwrite(head.p, 1, head.n, f) == head.n;
    free(head.p);
    for (size_t i = 0; ok && i < w->n_tensors; i++) {
        wtensor *t = &w->tensors[i];
        ok = fwrite(t->data, 1, (size_t)t->nbytes, f) == t->nbytes;
        uint64_t tpad = align_up(t->nbytes, w->alignment) - t->nbytes;
        while (ok && tpad > 0) {
            size_t k = tpad > sizeof zeros ? sizeof zeros : (size_t)tpad;
            ok = fwrite(zeros, 1, k, f) == k;
            tpad -= k;
        }
    }
    if (fclose(f) != 0) ok = false;
    if (!ok)
        return tern_status_set(st, TERN_EIO, "gguf writer: %s: write failed: %s", path,
                               strerror(errno));
    return TERN_OK;
}
