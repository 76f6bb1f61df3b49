/* gguf.c: validated GGUF v2/v3 reader.
 *
 * Invariants: nothing read from the file is used before it is checked against the bytes
 * that remain (overflow-safe: every check is written as "need <= remaining"); counts bound
 * the allocations they cause (an element needs at least its minimal encoded size, so no
 * count can ask for more memory than a small multiple of the file size); nesting is
 * bounded. Every failure leaves "gguf: FILE: WHAT: got X, expected Y" in the status.
 */
#include "formats/formats-internal.h"
#include "ternpipe/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_MAGIC "GGUF"
#define GGUF_MAX_DEPTH 8
#define GGUF_MIN_KV_BYTES 13     /* key length (8) + type (4) + smallest value (1) */
#define GGUF_MIN_TENSOR_BYTES 24 /* name length (8) + n_dims (4) + type (4) + offset (8) */

typedef struct cursor {
    const uint8_t *base;
    size_t size;
    size_t pos;
    const char *name;
    tern_status *st;
    tern_gguf *g;
} cursor;

static tern_code fail(cursor *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static tern_code fail(cursor *c, const char *fmt, ...)
{
    char what[TERN_STATUS_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return tern_status_set(c->st, TERN_EFORMAT, "gguf: %s: %s", c->name, what);
}

static size_t remaining(const cursor *c)
{
    return c->size - c->pos;
}

static tern_code need(cursor *c, uint64_t n, const char *what)
{
    if (n > remaining(c))
        return fail(c,
                    "%s: got %zu bytes left at offset %zu, expected %" PRIu64 " (truncated file)",
                    what, remaining(c), c->pos, n);
    return TERN_OK;
}

static tern_code rd(cursor *c, void *out, size_t n, const char *what)
{
    tern_code rc = need(c, n, what);
    if (rc) return rc;
    memcpy(out, c->base + c->pos, n);
    c->pos += n;
    return TERN_OK;
}

static tern_code rd_u32(cursor *c, uint32_t *v, const char *what)
{
    return rd(c, v, 4, what);
}
static tern_code rd_u64(cursor *c, uint64_t *v, const char *what)
{
    return rd(c, v, 8, what);
}

static tern_code rd_str(cursor *c, tern_gguf_str *s, const char *what)
{
    uint64_t len;
    tern_code rc = rd_u64(c, &len, what);
    if (rc) return rc;
    if (len > remaining(c))
        return fail(c, "%s: string length: got %" PRIu64 ", expected at most %zu (bytes left)",
                    what, len, remaining(c));
    s->ptr = (const char *)c->base + c->pos;
    s->len = len;
    c->pos += (size_t)len;
    return TERN_OK;
}

size_t tern_gguf_vtype_size(tern_gguf_vtype t)
{
    /* metadata value types: bytes of one scalar (0: string, array) */
    static const uint8_t size[TERN_GGUF_VTYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    return (t >= 0 && t < TERN_GGUF_VTYPE_COUNT) ? size[t] : 0;
}

void tern_gguf_decode_scalar(tern_gguf_vtype t, const uint8_t *p, tern_gguf_value *v)
{
    v->type = t;
    switch (t) {
    case TERN_GGUF_UINT8:
        v->v.u64 = p[0];
        break;
    case TERN_GGUF_BOOL:
        v->v.u64 = p[0];
        break;
    case TERN_GGUF_INT8:
        v->v.i64 = (int8_t)p[0];
        break;
    case TERN_GGUF_UINT16: {
        uint16_t x;
        memcpy(&x, p, 2);
        v->v.u64 = x;
    } break;
    case TERN_GGUF_INT16: {
        int16_t x;
        memcpy(&x, p, 2);
        v->v.i64 = x;
    } break;
    case TERN_GGUF_UINT32: {
        uint32_t x;
        memcpy(&x, p, 4);
        v->v.u64 = x;
    } break;
    case TERN_GGUF_INT32: {
        int32_t x;
        memcpy(&x, p, 4);
        v->v.i64 = x;
    } break;
    case TERN_GGUF_FLOAT32: {
        float x;
        memcpy(&x, p, 4);
        v->v.f64 = x;
    } break;
    case TERN_GGUF_UINT64: {
        uint64_t x;
        memcpy(&x, p, 8);
        v->v.u64 = x;
    } break;
    case TERN_GGUF_INT64: {
        int64_t x;
        memcpy(&x, p, 8);
        v->v.i64 = x;
    } break;
    case TERN_GGUF_FLOAT64: {
        double x;
        memcpy(&x, p, 8);
        v->v.f64 = x;
    } break;
    default:
        break;
    }
}

static tern_gguf_value *alloc_items(cursor *c, uint64_t n)
{
    tern_gguf *g = c->g;
    if (g->n_blocks == g->cap_blocks) {
        size_t cap = g->cap_blocks ? g->cap_blocks * 2 : 16;
        tern_gguf_value **nb = realloc(g->blocks, cap * sizeof *nb);
        if (!nb) return NULL;
        g->blocks = nb;
        g->cap_blocks = cap;
    }
    tern_gguf_value *items = calloc(n ? (size_t)n : 1, sizeof *items);
    if (items) g->blocks[g->n_blocks++] = items;
    return items;
}

static tern_code rd_value(cursor *c, tern_gguf_vtype t, tern_gguf_value *v, int depth,
                          const char *what);

static tern_code rd_array(cursor *c, tern_gguf_value *v, int depth, const char *what)
{
    uint32_t et;
    uint64_t n;
    tern_code rc = rd_u32(c, &et, what);
    if (rc) return rc;
    if (et >= TERN_GGUF_VTYPE_COUNT)
        return fail(c, "%s: array element type: got %u, expected 0..%d", what, et,
                    TERN_GGUF_VTYPE_COUNT - 1);
    if ((rc = rd_u64(c, &n, what))) return rc;
    v->type = TERN_GGUF_ARRAY;
    v->v.arr.type = (tern_gguf_vtype)et;
    v->v.arr.n = n;
    v->v.arr.data = NULL;
    v->v.arr.items = NULL;
    size_t es = tern_gguf_vtype_size((tern_gguf_vtype)et);
    if (es) {
        if (n > remaining(c) / es)
            return fail(c,
                        "%s: array count: got %" PRIu64 ", expected at most %zu (bytes left / %zu)",
                        what, n, remaining(c) / es, es);
        v->v.arr.data = c->base + c->pos;
        if (et == TERN_GGUF_BOOL)
            for (uint64_t i = 0; i < n; i++)
                if (c->base[c->pos + i] > 1)
                    return fail(c, "%s: bool element %" PRIu64 ": got %u, expected 0 or 1", what, i,
                                c->base[c->pos + i]);
        c->pos += (size_t)(n * es);
        return TERN_OK;
    }
    /* strings need >= 8 bytes each, arrays >= 12: the count bounds the allocation */
    size_t min_elem = et == TERN_GGUF_STRING ? 8 : 12;
    if (n > remaining(c) / min_elem)
        return fail(c, "%s: array count: got %" PRIu64 ", expected at most %zu (bytes left / %zu)",
                    what, n, remaining(c) / min_elem, min_elem);
    if (et == TERN_GGUF_ARRAY && depth + 1 >= GGUF_MAX_DEPTH)
        return fail(c, "%s: array nesting depth: got %d, expected at most %d", what, depth + 2,
                    GGUF_MAX_DEPTH);
    tern_gguf_value *items = alloc_items(c, n);
    if (!items)
        return tern_status_set(c->st, TERN_ENOMEM,
                               "gguf: %s: %s: out of memory for %" PRIu64 " array items", c->name,
                               what, n);
    v->v.arr.items = items;
    for (uint64_t i = 0; i < n; i++)
        if ((rc = rd_value(c, (tern_gguf_vtype)et, &items[i], depth + 1, what))) return rc;
    return TERN_OK;
}

static tern_code rd_value(cursor *c, tern_gguf_vtype t, tern_gguf_value *v, int depth,
                          const char *what)
{
    if (t == TERN_GGUF_STRING) {
        v->type = t;
        return rd_str(c, &v->v.str, what);
    }
    if (t == TERN_GGUF_ARRAY) return rd_array(c, v, depth, what);
    size_t es = tern_gguf_vtype_size(t);
    tern_code rc = need(c, es, what);
    if (rc) return rc;
    if (t == TERN_GGUF_BOOL && c->base[c->pos] > 1)
        return fail(c, "%s: bool: got %u, expected 0 or 1", what, c->base[c->pos]);
    tern_gguf_decode_scalar(t, c->base + c->pos, v);
    c->pos += es;
    return TERN_OK;
}

static bool str_eq(tern_gguf_str a, tern_gguf_str b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, (size_t)a.len) == 0);
}

bool tern_gguf_str_eq(tern_gguf_str s, const char *cstr)
{
    size_t n = strlen(cstr);
    return s.len == n && (n == 0 || memcmp(s.ptr, cstr, n) == 0);
}

/* printable, bounded copy of a name for messages */
static const char *show(tern_gguf_str s, char *buf, size_t cap)
{
    size_t n = s.len < cap - 1 ? (size_t)s.len : cap - 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s.ptr[i];
        buf[i] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
    }
    buf[n] = '\0';
    return buf;
}

static int cmp_offset(const void *a, const void *b)
{
    const tern_gguf_tensor *x = *(const tern_gguf_tensor *const *)a;
    const tern_gguf_tensor *y = *(const tern_gguf_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static int cmp_name(const void *a, const void *b)
{
    const tern_gguf_str *x = *(const tern_gguf_str *const *)a;
    const tern_gguf_str *y = *(const tern_gguf_str *const *)b;
    size_t n = x->len < y->len ? (size_t)x->len : (size_t)y->len;
    int r = n ? memcmp(x->ptr, y->ptr, n) : 0;
    if (r) return r;
    return x->len < y->len ? -1 : x->len > y->len;
}

/* Rejects duplicate names among n strings reached through ptrs (sorted in place). */
static tern_code check_unique(cursor *c, const tern_gguf_str **ptrs, uint64_t n, const char *what)
{
    qsort(ptrs, (size_t)n, sizeof *ptrs, cmp_name);
    for (uint64_t i = 1; i < n; i++)
        if (str_eq(*ptrs[i - 1], *ptrs[i])) {
            char buf[80];
            return fail(c, "%s: got '%s' twice, expected unique names", what,
                        show(*ptrs[i], buf, sizeof buf));
        }
    return TERN_OK;
}

static tern_code parse(tern_gguf *g, tern_status *st)
{
    cursor c = {.base = g->base, .size = g->size, .pos = 0, .name = g->path, .st = st, .g = g};
    tern_code rc;
    char magic[4];
    if ((rc = rd(&c, magic, 4, "magic"))) return rc;
    if (memcmp(magic, GGUF_MAGIC, 4) != 0)
        return fail(&c, "magic: got %02x %02x %02x %02x, expected 47 47 55 46 (\"GGUF\")",
                    (unsigned char)magic[0], (unsigned char)magic[1], (unsigned char)magic[2],
                    (unsigned char)magic[3]);
    if ((rc = rd_u32(&c, &g->version, "version"))) return rc;
    if (g->version != 2 && g->version != 3)
        return fail(&c, "version: got %u, expected 2 or 3", g->version);
    if ((rc = rd_u64(&c, &g->n_tensors, "tensor count"))) return rc;
    if ((rc = rd_u64(&c, &g->n_kv, "metadata count"))) return rc;
    if (g->n_kv > remaining(&c) / GGUF_MIN_KV_BYTES)
        return fail(&c, "metadata count: got %" PRIu64 ", expected at most %zu for the file size",
                    g->n_kv, remaining(&c) / GGUF_MIN_KV_BYTES);
    if (g->n_tensors > remaining(&c) / GGUF_MIN_TENSOR_BYTES)
        return fail(&c, "tensor count: got %" PRIu64 ", expected at most %zu for the file size",
                    g->n_tensors, remaining(&c) / GGUF_MIN_TENSOR_BYTES);

    g->kvs = calloc(g->n_kv ? (size_t)g->n_kv : 1, sizeof *g->kvs);
    g->tensors = calloc(g->n_tensors ? (size_t)g->n_tensors : 1, sizeof *g->tensors);
    if (!g->kvs || !g->tensors)
        return tern_status_set(st, TERN_ENOMEM, "gguf: %s: out of memory", g->path);

    g->alignment = TERN_GGUF_DEFAULT_ALIGNMENT;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        tern_gguf_kv *kv = &g->kvs[i];
        char what[160], buf[80];
        snprintf(what, sizeof what, "metadata %" PRIu64 " key", i);
        if ((rc = rd_str(&c, &kv->key, what))) return rc;
        uint32_t t;
        snprintf(what, sizeof what, "metadata '%s' type", show(kv->key, buf, sizeof buf));
        if ((rc = rd_u32(&c, &t, what))) return rc;
        if (t >= TERN_GGUF_VTYPE_COUNT)
            return fail(&c, "%s: got %u, expected 0..%d", what, t, TERN_GGUF_VTYPE_COUNT - 1);
        snprintf(what, sizeof what, "metadata '%s'", show(kv->key, buf, sizeof buf));
        if ((rc = rd_value(&c, (tern_gguf_vtype)t, &kv->value, 0, what))) return rc;
        if (tern_gguf_str_eq(kv->key, "general.alignment")) {
            if (t != TERN_GGUF_UINT32)
                return fail(&c, "general.alignment type: got %s, expected uint32",
                            tern_gguf_vtype_name((tern_gguf_vtype)t));
            uint64_t a = kv->value.v.u64;
            if (a == 0 || (a & (a - 1)) != 0 || a > (1u << 20))
                return fail(
                    &c, "general.alignment: got %" PRIu64 ", expected a power of two up to 1048576",
                    a);
            g->alignment = (uint32_t)a;
        }
    }
    if (g->n_kv > 1) {
        const tern_gguf_str **ptrs = malloc((size_t)g->n_kv * sizeof *ptrs);
        if (!ptrs) return tern_status_set(st, TERN_ENOMEM, "gguf: %s: out of memory", g->path);
        for (uint64_t i = 0; i < g->n_kv; i++) ptrs[i] = &g->kvs[i].key;
        rc = check_unique(&c, ptrs, g->n_kv, "metadata key");
        free(ptrs);
        if (rc) return rc;
    }

    for (uint64_t i = 0; i < g->n_tensors; i++) {
        tern_gguf_tensor *t = &g->tensors[i];
        char what[160], buf[80];
        snprintf(what, sizeof what, "tensor %" PRIu64 " name", i);
        if ((rc = rd_str(&c, &t->name, what))) return rc;
        const char *nm = show(t->name, buf, sizeof buf);
        snprintf(what, sizeof what, "tensor '%s' dims", nm);
        if ((rc = rd_u32(&c, &t->n_dims, what))) return rc;
        if (t->n_dims < 1 || t->n_dims > TERN_GGUF_MAX_DIMS)
            return fail(&c, "tensor '%s' n_dims: got %u, expected 1..%d", nm, t->n_dims,
                        TERN_GGUF_MAX_DIMS);
        uint64_t n_el = 1;
        for (uint32_t d = 0; d < TERN_GGUF_MAX_DIMS; d++) t->ne[d] = 1;
        for (uint32_t d = 0; d < t->n_dims; d++) {
            if ((rc = rd_u64(&c, &t->ne[d], what))) return rc;
            if (t->ne[d] == 0 || t->ne[d] > (UINT64_C(1) << 40))
                return fail(&c, "tensor '%s' ne[%u]: got %" PRIu64 ", expected 1..2^40", nm, d,
                            t->ne[d]);
            if (n_el > (UINT64_C(1) << 50) / t->ne[d])
                return fail(&c, "tensor '%s' element count: got more than 2^50, expected less", nm);
            n_el *= t->ne[d];
        }
        uint32_t type;
        snprintf(what, sizeof what, "tensor '%s' type", nm);
        if ((rc = rd_u32(&c, &type, what))) return rc;
        if (type >= TERN_TYPE_ID_COUNT || !tern_type_traits_of((tern_ggml_type)type))
            return fail(&c,
                        "tensor '%s' type: got %u, expected a known type (%s) (unknown "
                        "tensor type)",
                        nm, type, tern_type_list());
        t->type = (tern_ggml_type)type;
        snprintf(what, sizeof what, "tensor '%s' offset", nm);
        if ((rc = rd_u64(&c, &t->offset, what))) return rc;
        if (!tern_ggml_nbytes(t->type, t->ne[0], n_el, &t->nbytes)) {
            const tern_type_traits *tr = tern_type_traits_of(t->type);
            if (tr->flat)
                return fail(&c,
                            "tensor '%s' element count: got %" PRIu64
                            ", expected a multiple of %u for %s",
                            nm, n_el, tr->blck, tr->name);
            return fail(
                &c, "tensor '%s' ne[0]: got %" PRIu64 ", expected a multiple of the %s block size",
                nm, t->ne[0], tern_ggml_type_name(t->type));
        }
        if (t->offset % g->alignment != 0)
            return fail(
                &c, "tensor '%s' offset: got %" PRIu64 ", expected a multiple of %u (misaligned)",
                nm, t->offset, g->alignment);
    }
    if (g->n_tensors > 1) {
        const tern_gguf_str **ptrs = malloc((size_t)g->n_tensors * sizeof *ptrs);
        if (!ptrs) return tern_status_set(st, TERN_ENOMEM, "gguf: %s: out of memory", g->path);
        for (uint64_t i = 0; i < g->n_tensors; i++) ptrs[i] = &g->tensors[i].name;
        rc = check_unique(&c, ptrs, g->n_tensors, "tensor name");
        free(ptrs);
        if (rc) return rc;
    }

    /* data section: starts at the next multiple of the alignment */
    uint64_t pad = (g->alignment - c.pos % g->alignment) % g->alignment;
    g->data_offset = c.pos + pad;
    if (g->n_tensors == 0) return TERN_OK;
    /* a directory's header describes data that is made on demand */
    const uint64_t file_size = g->hf ? g->file_size : (uint64_t)g->size;
    if (g->data_offset > file_size)
        return fail(&c,
                    "data section start: got %" PRIu64 ", expected at most the file size %" PRIu64,
                    g->data_offset, file_size);
    uint64_t data_size = file_size - g->data_offset;
    const tern_gguf_tensor **order = malloc((size_t)g->n_tensors * sizeof *order);
    if (!order) return tern_status_set(st, TERN_ENOMEM, "gguf: %s: out of memory", g->path);
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        tern_gguf_tensor *t = &g->tensors[i];
        char buf[80];
        if (t->offset > data_size || t->nbytes > data_size - t->offset) {
            free(order);
            /* offset + nbytes may wrap: print the two terms, not their sum */
            return fail(&c,
                        "tensor '%s' data: got %" PRIu64 " bytes at offset %" PRIu64
                        ", expected within the %" PRIu64 "-byte data section (out of file)",
                        show(t->name, buf, sizeof buf), t->nbytes, t->offset, data_size);
        }
        t->data = g->hf ? NULL : g->base + g->data_offset + t->offset;
        order[i] = t;
    }
    qsort(order, (size_t)g->n_tensors, sizeof *order, cmp_offset);
    for (uint64_t i = 1; i < g->n_tensors; i++) {
        const tern_gguf_tensor *a = order[i - 1], *b = order[i];
        if (a->offset + a->nbytes > b->offset) {
            char ba[80], bb[80];
            rc = fail(&c,
                      "tensor '%s' data: got offset %" PRIu64 ", expected >= %" PRIu64
                      " (overlaps tensor '%s')",
                      show(b->name, bb, sizeof bb), b->offset, a->offset + a->nbytes,
                      show(a->name, ba, sizeof ba));
            free(order);
            return rc;
        }
    }
    free(order);
    return TERN_OK;
}

static tern_code open_common(tern_gguf **out, tern_gguf *g, tern_status *st)
{
    tern_code rc = parse(g, st);
    if (rc) {
        tern_gguf_close(g);
        *out = NULL;
        return rc;
    }
    *out = g;
    return TERN_OK;
}

/* A Hugging Face checkpoint directory: hf-gguf.c checks it against config.json and lays out
 * the GGUF it converts to (metadata and tensor table, parsed here like a file's header); the
 * tensors are converted when tern_gguf_tensor_read asks for them, so each rank reads only the
 * tensors of its slice. Messages name the directory. Every rank lays out the same files the
 * same way, so the checksum handshake still compares like with like. */
static tern_code open_hf_dir(tern_gguf **out, const char *dir, unsigned flags, tern_status *st)
{
    char cfg[4096];
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    if (access(cfg, F_OK) != 0)
        return tern_status_set(st, TERN_EIO,
                               "gguf: %s: file type: got a directory without config.json, "
                               "expected a regular file or a Hugging Face checkpoint directory",
                               dir);
    tern_gguf *g = calloc(1, sizeof *g);
    tern_gguf_writer *w = tern_gguf_writer_new();
    uint8_t *head = NULL;
    size_t len = 0;
    tern_code rc = TERN_OK;
    if (!g || !w || !(g->path = strdup(dir))) {
        rc = tern_status_set(st, TERN_ENOMEM, "gguf: %s: out of memory", dir);
        goto fail;
    }
    if ((rc = tern_hf_open(&g->hf, dir, TERN_TYPE_I2_S, flags & TERN_GGUF_WEIGHTS_ONLY, w, st)) ||
        (rc = tern_gguf_writer_header(w, &head, &len, &g->file_size, st)))
        goto fail;
    tern_gguf_writer_free(w);
    g->base = head, g->size = len, g->owned = true;
    return open_common(out, g, st);
fail:
    tern_gguf_writer_free(w);
    tern_gguf_close(g);
    return rc;
}

tern_code tern_gguf_open(tern_gguf **out, const char *path, tern_status *st)
{
    return tern_gguf_open_flags(out, path, 0, st);
}

tern_code tern_gguf_open_flags(tern_gguf **out, const char *path, unsigned flags, tern_status *st)
{
    *out = NULL;
    /* O_NONBLOCK: opening a FIFO would otherwise block until a writer appears; it has no
     * effect on the regular files we accept */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return tern_status_set(st, TERN_EIO, "gguf: %s: open: got %s, expected a readable file",
                               path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return tern_status_set(st, TERN_EIO, "gguf: %s: stat: got %s, expected a readable file",
                               path, strerror(e));
    }
    if (S_ISDIR(sb.st_mode)) {
        close(fd);
        return open_hf_dir(out, path, flags, st);
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return tern_status_set(st, TERN_EIO, "gguf: %s: file type: got %s, expected a regular file",
                               path, S_ISDIR(sb.st_mode) ? "a directory" : "a special file");
    }
    if (sb.st_size < 24) {
        close(fd);
        return tern_status_set(st, TERN_EFORMAT,
                               "gguf: %s: file size: got %lld bytes, expected at least 24", path,
                               (long long)sb.st_size);
    }
    void *p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED)
        return tern_status_set(st, TERN_EIO, "gguf: %s: mmap: got %s, expected a mapping", path,
                               strerror(errno));
    tern_gguf *g = calloc(1, sizeof *g);
    char *name = strdup(path);
    if (!g || !name) {
        munmap(p, (size_t)sb.st_size);
        free(g);
        free(name);
        return tern_status_set(st, TERN_ENOMEM, "gguf: %s: out of memory", path);
    }
    g->path = name;
    g->base = p;
    g->size = (size_t)sb.st_size;
    g->mapped = true;
    return open_common(out, g, st);
}

tern_code tern_gguf_open_memory(tern_gguf **out, const void *data, size_t size, const char *name,
                                tern_status *st)
{
    *out = NULL;
    tern_gguf *g = calloc(1, sizeof *g);
    char *nm = strdup(name ? name : "<memory>");
    if (!g || !nm) {
        free(g);
        free(nm);
        return tern_status_set(st, TERN_ENOMEM, "gguf: out of memory");
    }
    g->path = nm;
    g->base = data;
    g->size = size;
    return open_common(out, g, st);
}

void tern_gguf_close(tern_gguf *g)
{
    if (!g) return;
    if (g->mapped && g->base) munmap((void *)g->base, g->size);
    if (g->owned) free((void *)g->base);
    tern_hf_close(g->hf);
    for (size_t i = 0; i < g->n_blocks; i++) free(g->blocks[i]);
    free(g->blocks);
    free(g->kvs);
    free(g->tensors);
    free(g->path);
    free(g);
}
