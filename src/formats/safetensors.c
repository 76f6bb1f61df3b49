/* safetensors.c: validated safetensors reader (single file and sharded checkpoints).
 *
 * Invariants: the header length is checked against the file before the header is read; the
 * header is parsed by cJSON from a NUL-terminated copy (so a NUL inside it is refused first);
 * every number taken from it is an integer in [0, 2^53] before it becomes a uint64_t; byte
 * counts are compared as "need <= remaining" (never as sums that could wrap); a file's tensors
 * tile its data section exactly. Every failure leaves one line
 * "safetensors: FILE: [tensor 'x': ]WHAT: got X, expected Y" in the status.
 */
#include "ternpipe/safetensors.h"
#include "formats/formats-internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_NAME 1024
#define ST_MAX_INDEX (64u << 20) /* bytes of model.safetensors.index.json */

typedef struct st_file {
    char *path;
    const uint8_t *base;
    size_t size;
    bool mapped;
    uint64_t data_start; /* 8 + header length */
} st_file;

struct tern_st {
    char *path;
    st_file *files;
    uint32_t n_files;
    tern_st_tensor *tensors;
    uint64_t n_tensors, cap_tensors;
    char **meta; /* key, value pairs of file 0's __metadata__ */
    size_t n_meta;
};

static const struct {
    const char *name;
    uint8_t size;
} DTYPES[TERN_ST_DTYPE_COUNT] = {
    [TERN_ST_BOOL] = {"BOOL", 1},       [TERN_ST_U8] = {"U8", 1},
    [TERN_ST_I8] = {"I8", 1},           [TERN_ST_F8_E4M3] = {"F8_E4M3", 1},
    [TERN_ST_F8_E5M2] = {"F8_E5M2", 1}, [TERN_ST_I16] = {"I16", 2},
    [TERN_ST_U16] = {"U16", 2},         [TERN_ST_F16] = {"F16", 2},
    [TERN_ST_BF16] = {"BF16", 2},       [TERN_ST_I32] = {"I32", 4},
    [TERN_ST_U32] = {"U32", 4},         [TERN_ST_F32] = {"F32", 4},
    [TERN_ST_I64] = {"I64", 8},         [TERN_ST_U64] = {"U64", 8},
    [TERN_ST_F64] = {"F64", 8},
};

const char *tern_st_dtype_name(tern_st_dtype d)
{
    return (d >= 0 && d < TERN_ST_DTYPE_COUNT) ? DTYPES[d].name : "?";
}

size_t tern_st_dtype_size(tern_st_dtype d)
{
    return (d >= 0 && d < TERN_ST_DTYPE_COUNT) ? DTYPES[d].size : 0;
}

/* printable, bounded copy of a name for messages */
static const char *show(const char *s, char *buf, size_t cap)
{
    size_t i = 0;
    for (; s[i] && i + 1 < cap; i++) {
        unsigned char ch = (unsigned char)s[i];
        buf[i] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
    }
    buf[i] = '\0';
    return buf;
}

static tern_code fail(tern_status *st, const char *file, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static tern_code fail(tern_status *st, const char *file, const char *fmt, ...)
{
    char what[TERN_STATUS_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return tern_status_set(st, TERN_EFORMAT, "safetensors: %s: %s", file, what);
}

static tern_code nomem(tern_status *st, const char *file)
{
    return tern_status_set(st, TERN_ENOMEM, "safetensors: %s: out of memory", file);
}

/* An integer in [0, 2^53] from a JSON number (cJSON keeps doubles: 2^53 is where they stop
 * being exact). */
static bool json_u64(const cJSON *j, uint64_t *out)
{
    if (!cJSON_IsNumber(j)) return false;
    double d = j->valuedouble;
    if (!(d >= 0.0 && d <= 9007199254740992.0) || d != floor(d)) return false;
    *out = (uint64_t)d;
    return true;
}

const char *tern_json_kind(const cJSON *j)
{
    if (!j) return "nothing";
    if (cJSON_IsNumber(j)) return "a number";
    if (cJSON_IsString(j)) return "a string";
    if (cJSON_IsArray(j)) return "an array";
    if (cJSON_IsObject(j)) return "an object";
    if (cJSON_IsBool(j)) return "a bool";
    if (cJSON_IsNull(j)) return "null";
    return "something else";
}

static tern_code push_tensor(tern_st *s, tern_st_tensor **t, const char *file, tern_status *st)
{
    if (s->n_tensors == s->cap_tensors) {
        uint64_t cap = s->cap_tensors ? 2 * s->cap_tensors : 64;
        tern_st_tensor *nt = realloc(s->tensors, (size_t)cap * sizeof *nt);
        if (!nt) return nomem(st, file);
        s->tensors = nt;
        s->cap_tensors = cap;
    }
    *t = &s->tensors[s->n_tensors++];
    memset(*t, 0, sizeof **t);
    return TERN_OK;
}

/* One tensor entry of a header: dtype, shape and data_offsets, each exactly once. */
static tern_code parse_entry(tern_st *s, uint32_t fi, const cJSON *e, uint64_t data_size,
                             tern_status *st)
{
    const st_file *f = &s->files[fi];
    char nb[96];
    const char *key = e->string;
    size_t klen = strlen(key);
    if (klen == 0 || klen > ST_MAX_NAME)
        return fail(st, f->path, "tensor name length: got %zu, expected 1..%d", klen, ST_MAX_NAME);
    const char *nm = show(key, nb, sizeof nb);
    if (!cJSON_IsObject(e))
        return fail(st, f->path, "tensor '%s': got %s, expected an object", nm, tern_json_kind(e));
    const cJSON *dtype = NULL, *shape = NULL, *offs = NULL;
    for (const cJSON *c = e->child; c; c = c->next) {
        const cJSON **slot = !strcmp(c->string, "dtype")          ? &dtype
                             : !strcmp(c->string, "shape")        ? &shape
                             : !strcmp(c->string, "data_offsets") ? &offs
                                                                  : NULL;
        char kb[64];
        if (!slot)
            return fail(st, f->path,
                        "tensor '%s': key '%s': got an unknown key, expected dtype, shape or "
                        "data_offsets",
                        nm, show(c->string, kb, sizeof kb));
        if (*slot)
            return fail(st, f->path, "tensor '%s': key '%s': got it twice, expected it once", nm,
                        c->string);
        *slot = c;
    }
    if (!dtype || !shape || !offs)
        return fail(st, f->path, "tensor '%s': %s: got nothing, expected the key", nm,
                    !dtype   ? "dtype"
                    : !shape ? "shape"
                             : "data_offsets");
    tern_st_tensor *t = NULL;
    tern_code rc = push_tensor(s, &t, f->path, st);
    if (rc) return rc;
    t->file = fi;
    t->dtype = TERN_ST_DTYPE_COUNT;
    if (cJSON_IsString(dtype))
        for (int d = 0; d < TERN_ST_DTYPE_COUNT; d++)
            if (!strcmp(dtype->valuestring, DTYPES[d].name)) t->dtype = (tern_st_dtype)d;
    if (t->dtype == TERN_ST_DTYPE_COUNT) {
        char db[32], got[40];
        if (cJSON_IsString(dtype))
            snprintf(got, sizeof got, "'%s'", show(dtype->valuestring, db, sizeof db));
        else
            snprintf(got, sizeof got, "%s", tern_json_kind(dtype));
        return fail(st, f->path,
                    "tensor '%s': dtype: got %s, expected one of BOOL U8 I8 F8_E4M3 F8_E5M2 "
                    "I16 U16 F16 BF16 I32 U32 F32 I64 U64 F64",
                    nm, got);
    }
    if (!cJSON_IsArray(shape))
        return fail(st, f->path, "tensor '%s': shape: got %s, expected an array", nm,
                    tern_json_kind(shape));
    int nd = cJSON_GetArraySize(shape);
    if (nd > TERN_ST_MAX_DIMS)
        return fail(st, f->path, "tensor '%s': shape: got %d dims, expected at most %d", nm, nd,
                    TERN_ST_MAX_DIMS);
    t->n_dims = (uint32_t)nd;
    for (int d = 0; d < TERN_ST_MAX_DIMS; d++) t->shape[d] = 1;
    /* a product over data_size can never fit: checked per factor, so it cannot wrap */
    uint64_t n_el = 1, es = DTYPES[t->dtype].size;
    bool zero = false, big = false;
    int d = 0;
    for (const cJSON *c = shape->child; c; c = c->next, d++) {
        if (!json_u64(c, &t->shape[d]))
            return fail(
                st, f->path, "tensor '%s': shape[%d]: got %s, expected an integer >= 0", nm, d,
                cJSON_IsNumber(c) ? "a negative, fractional or huge number" : tern_json_kind(c));
        if (t->shape[d] == 0) zero = true;
        if (!big && t->shape[d] && n_el > (data_size / es) / t->shape[d])
            big = true;
        else if (!big)
            n_el *= t->shape[d];
    }
    if (zero) n_el = 0;
    if (big && !zero)
        return fail(st, f->path,
                    "tensor '%s': shape: got more elements than the %" PRIu64
                    "-byte data section holds, expected at most %" PRIu64,
                    nm, data_size, data_size / es);
    t->n_elements = n_el;
    t->nbytes = n_el * es;
    uint64_t b, en;
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 || !json_u64(offs->child, &b) ||
        !json_u64(offs->child->next, &en))
        return fail(st, f->path,
                    "tensor '%s': data_offsets: got %s, expected [begin, end] (two integers >= 0)",
                    nm, cJSON_IsArray(offs) ? "another array" : tern_json_kind(offs));
    if (b > en || en > data_size)
        return fail(st, f->path,
                    "tensor '%s': data_offsets: got [%" PRIu64 ", %" PRIu64
                    "], expected begin <= end <= %" PRIu64 " (the data section)",
                    nm, b, en, data_size);
    if (en - b != t->nbytes)
        return fail(st, f->path,
                    "tensor '%s': data_offsets: got %" PRIu64 " bytes, expected %" PRIu64
                    " (%s, %" PRIu64 " elements)",
                    nm, en - b, t->nbytes, DTYPES[t->dtype].name, n_el);
    t->offset = f->data_start + b;
    t->data = f->base + t->offset;
    t->name = strdup(key);
    if (!t->name) return nomem(st, f->path);
    return TERN_OK;
}

static int cmp_offset(const void *a, const void *b)
{
    const tern_st_tensor *x = *(const tern_st_tensor *const *)a;
    const tern_st_tensor *y = *(const tern_st_tensor *const *)b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

/* The tensors [first, n_tensors) of file fi must tile its data section exactly. */
static tern_code check_tiling(tern_st *s, uint32_t fi, uint64_t first, uint64_t data_size,
                              tern_status *st)
{
    const st_file *f = &s->files[fi];
    uint64_t n = s->n_tensors - first;
    if (n == 0) {
        if (data_size != 0)
            return fail(st, f->path,
                        "data section: got %" PRIu64 " bytes and no tensors, expected 0 bytes",
                        data_size);
        return TERN_OK;
    }
    const tern_st_tensor **order = malloc((size_t)n * sizeof *order);
    if (!order) return nomem(st, f->path);
    for (uint64_t i = 0; i < n; i++) order[i] = &s->tensors[first + i];
    qsort(order, (size_t)n, sizeof *order, cmp_offset);
    uint64_t at = f->data_start;
    tern_code rc = TERN_OK;
    for (uint64_t i = 0; i < n && !rc; i++) {
        char nb[96], pb[96];
        if (order[i]->offset != at)
            rc = fail(st, f->path,
                      "tensor '%s': data_offsets begin: got %" PRIu64 ", expected %" PRIu64
                      " (%s after %s%s%s)",
                      show(order[i]->name, nb, sizeof nb), order[i]->offset - f->data_start,
                      at - f->data_start, order[i]->offset > at ? "a hole" : "an overlap",
                      i ? "tensor '" : "the start",
                      i ? show(order[i - 1]->name, pb, sizeof pb) : "", i ? "'" : "");
        at = order[i]->offset + order[i]->nbytes;
    }
    free(order);
    if (!rc && at - f->data_start != data_size)
        rc = fail(st, f->path,
                  "data section: got %" PRIu64 " bytes, expected %" PRIu64
                  " (the end of the last tensor)",
                  data_size, at - f->data_start);
    return rc;
}

static tern_code parse_file(tern_st *s, uint32_t fi, tern_status *st)
{
    st_file *f = &s->files[fi];
    if (f->size < 8)
        return fail(st, f->path, "file size: got %zu bytes, expected at least 8 (header length)",
                    f->size);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | f->base[i];
    if (hl > f->size - 8)
        return fail(st, f->path,
                    "header length: got %" PRIu64 ", expected at most %zu (bytes left; truncated "
                    "file)",
                    hl, f->size - 8);
    if (hl < 2 || hl > TERN_ST_MAX_HEADER)
        return fail(st, f->path, "header length: got %" PRIu64 ", expected 2..%u", hl,
                    TERN_ST_MAX_HEADER);
    const char *h = (const char *)f->base + 8;
    if (h[0] != '{')
        return fail(st, f->path, "header: got first byte 0x%02x, expected '{'",
                    (unsigned char)h[0]);
    const char *nul = memchr(h, '\0', (size_t)hl);
    if (nul) return fail(st, f->path, "header: got a NUL byte at %td, expected JSON text", nul - h);
    f->data_start = 8 + hl;
    uint64_t data_size = f->size - f->data_start;
    char *copy = malloc((size_t)hl + 1);
    if (!copy) return nomem(st, f->path);
    memcpy(copy, h, (size_t)hl);
    copy[hl] = '\0';
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(copy, (size_t)hl + 1, &end, 0);
    tern_code rc = TERN_OK;
    if (!root) {
        rc = fail(st, f->path, "header: got invalid JSON at byte %td, expected a JSON object",
                  end ? end - copy : (ptrdiff_t)0);
        goto out;
    }
    /* after the object: padding spaces only (writers pad the header to a multiple of 8) */
    for (const char *p = end; *p; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            rc = fail(st, f->path,
                      "header: got 0x%02x at byte %td after the object, expected only spaces",
                      (unsigned char)*p, p - copy);
            goto out;
        }
    if (!cJSON_IsObject(root)) {
        rc = fail(st, f->path, "header: got %s, expected an object", tern_json_kind(root));
        goto out;
    }
    uint64_t first = s->n_tensors;
    bool had_meta = false;
    for (const cJSON *e = root->child; e && !rc; e = e->next) {
        if (strcmp(e->string, "__metadata__") != 0) {
            rc = parse_entry(s, fi, e, data_size, st);
            continue;
        }
        if (had_meta) {
            rc = fail(st, f->path, "__metadata__: got it twice, expected it once");
            break;
        }
        had_meta = true;
        if (!cJSON_IsObject(e)) {
            rc = fail(st, f->path, "__metadata__: got %s, expected an object of strings",
                      tern_json_kind(e));
            break;
        }
        size_t n = 0;
        for (const cJSON *c = e->child; c; c = c->next, n++)
            if (!cJSON_IsString(c)) {
                char kb[64];
                rc = fail(st, f->path, "__metadata__ '%s': got %s, expected a string",
                          show(c->string, kb, sizeof kb), tern_json_kind(c));
                break;
            }
        if (rc || fi != 0) continue;
        s->meta = calloc(2 * n + 1, sizeof *s->meta);
        if (!s->meta) {
            rc = nomem(st, f->path);
            break;
        }
        for (const cJSON *c = e->child; c; c = c->next) {
            s->meta[2 * s->n_meta] = strdup(c->string);
            s->meta[2 * s->n_meta + 1] = strdup(c->valuestring);
            s->n_meta++;
            if (!s->meta[2 * s->n_meta - 2] || !s->meta[2 * s->n_meta - 1]) {
                rc = nomem(st, f->path);
                break;
            }
        }
    }
    if (!rc) rc = check_tiling(s, fi, first, data_size, st);
out:
    cJSON_Delete(root);
    free(copy);
    return rc;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(((const tern_st_tensor *)a)->name, ((const tern_st_tensor *)b)->name);
}

/* Sorts by name (for lookups) and refuses a name given twice, in one file or across shards. */
static tern_code finish(tern_st *s, tern_status *st)
{
    if (s->n_tensors > 1) qsort(s->tensors, (size_t)s->n_tensors, sizeof *s->tensors, cmp_name);
    for (uint64_t i = 1; i < s->n_tensors; i++)
        if (!strcmp(s->tensors[i - 1].name, s->tensors[i].name)) {
            char nb[96];
            return fail(st, s->files[s->tensors[i].file].path,
                        "tensor '%s': got it twice%s, expected unique names",
                        show(s->tensors[i].name, nb, sizeof nb),
                        s->tensors[i - 1].file != s->tensors[i].file ? " (in two shards)" : "");
        }
    return TERN_OK;
}

static tern_code map_file(st_file *f, const char *path, tern_status *st)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return tern_status_set(st, TERN_EIO,
                               "safetensors: %s: open: got %s, expected a readable file", path,
                               strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return tern_status_set(st, TERN_EIO,
                               "safetensors: %s: file type: got %s, expected a regular file", path,
                               S_ISDIR(sb.st_mode) ? "a directory" : "a special file");
    }
    f->path = strdup(path);
    if (!f->path) {
        close(fd);
        return nomem(st, path);
    }
    f->size = (size_t)sb.st_size;
    if (f->size == 0) { /* mmap refuses 0 bytes: parse_file reports the size */
        close(fd);
        f->base = (const uint8_t *)"";
        return TERN_OK;
    }
    void *p = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED)
        return tern_status_set(st, TERN_EIO, "safetensors: %s: mmap: got %s, expected a mapping",
                               path, strerror(errno));
    f->base = p;
    f->mapped = true;
    return TERN_OK;
}

static tern_st *st_new(const char *path, uint32_t n_files)
{
    tern_st *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->path = strdup(path);
    s->files = calloc(n_files ? n_files : 1, sizeof *s->files);
    if (!s->path || !s->files) {
        tern_st_close(s);
        return NULL;
    }
    s->n_files = n_files;
    return s;
}

static tern_code done(tern_st **out, tern_st *s, tern_code rc)
{
    if (rc) {
        tern_st_close(s);
        return rc;
    }
    *out = s;
    return TERN_OK;
}

tern_code tern_st_open(tern_st **out, const char *path, tern_status *st)
{
    *out = NULL;
    tern_st *s = st_new(path, 1);
    if (!s) return nomem(st, path);
    tern_code rc = map_file(&s->files[0], path, st);
    if (!rc) rc = parse_file(s, 0, st);
    if (!rc) rc = finish(s, st);
    return done(out, s, rc);
}

tern_code tern_st_open_memory(tern_st **out, const void *data, size_t size, const char *name,
                              tern_status *st)
{
    *out = NULL;
    if (!name) name = "<memory>";
    tern_st *s = st_new(name, 1);
    if (!s || !(s->files[0].path = strdup(name))) {
        tern_st_close(s);
        return nomem(st, name);
    }
    s->files[0].base = size ? data : (const uint8_t *)"";
    s->files[0].size = size;
    tern_code rc = parse_file(s, 0, st);
    if (!rc) rc = finish(s, st);
    return done(out, s, rc);
}

static char *join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

/* Reads a whole small file into a NUL-terminated buffer. */
static tern_code slurp(const char *path, size_t max, char **out, size_t *len, const char *who,
                       tern_status *st)
{
    *out = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return tern_status_set(st, TERN_EIO, "%s: %s: open: got %s, expected a readable file", who,
                               path, strerror(errno));
    size_t cap = 4096, n = 0;
    char *b = malloc(cap + 1);
    while (b) {
        if (n == cap) {
            if (cap >= max) break;
            cap = cap * 2 > max ? max : cap * 2;
            char *nb = realloc(b, cap + 1);
            if (!nb) {
                free(b);
                b = NULL;
                break;
            }
            b = nb;
        }
        size_t r = fread(b + n, 1, cap - n, fp);
        n += r;
        if (r == 0) break;
    }
    bool more = b && n == cap && fgetc(fp) != EOF;
    fclose(fp);
    if (!b) return tern_status_set(st, TERN_ENOMEM, "%s: %s: out of memory", who, path);
    if (more) {
        free(b);
        return tern_status_set(st, TERN_EFORMAT,
                               "%s: %s: size: got more than %zu bytes, expected less", who, path,
                               max);
    }
    b[n] = '\0';
    *out = b;
    *len = n;
    return TERN_OK;
}

/* Sharded checkpoint: the index's weight_map names each tensor's file. */
static tern_code open_index(tern_st **out, const char *dir, const char *ipath, tern_status *st)
{
    char *text = NULL;
    size_t len = 0;
    tern_code rc = slurp(ipath, ST_MAX_INDEX, &text, &len, "safetensors", st);
    if (rc) return rc;
    tern_st *s = NULL;
    char **names = NULL; /* distinct shard file names, in order of first appearance */
    uint32_t n_names = 0;
    cJSON *root = cJSON_ParseWithLength(text, len);
    const cJSON *wm = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!root || !cJSON_IsObject(root)) {
        rc = fail(st, ipath, "index: got %s, expected a JSON object",
                  root ? tern_json_kind(root) : "invalid JSON");
        goto out;
    }
    if (!cJSON_IsObject(wm)) {
        rc = fail(st, ipath, "index: weight_map: got %s, expected an object", tern_json_kind(wm));
        goto out;
    }
    int n_map = cJSON_GetArraySize(wm);
    names = calloc((size_t)n_map + 1, sizeof *names);
    if (!names) {
        rc = nomem(st, ipath);
        goto out;
    }
    for (const cJSON *e = wm->child; e; e = e->next) {
        char nb[96], fb[96];
        const char *fn = cJSON_IsString(e) ? e->valuestring : NULL;
        if (!fn || !fn[0] || strchr(fn, '/') || !strcmp(fn, ".") || !strcmp(fn, "..")) {
            rc = fail(st, ipath,
                      "index: tensor '%s': file: got %s%s%s, expected a file name inside the "
                      "directory",
                      show(e->string, nb, sizeof nb), fn ? "'" : "",
                      fn ? show(fn, fb, sizeof fb) : tern_json_kind(e), fn ? "'" : "");
            goto out;
        }
        uint32_t k = 0;
        while (k < n_names && strcmp(names[k], fn)) k++;
        if (k == n_names) names[n_names++] = e->valuestring;
    }
    if (n_names == 0) {
        rc = fail(st, ipath, "index: weight_map: got no tensors, expected at least one");
        goto out;
    }
    s = st_new(dir, n_names);
    if (!s) {
        rc = nomem(st, ipath);
        goto out;
    }
    for (uint32_t k = 0; k < n_names && !rc; k++) {
        char *p = join(dir, names[k]);
        if (!p) {
            rc = nomem(st, ipath);
            break;
        }
        rc = map_file(&s->files[k], p, st);
        free(p);
        if (!rc) rc = parse_file(s, k, st);
    }
    if (!rc) rc = finish(s, st);
    /* the index and the files must agree, tensor for tensor */
    for (const cJSON *e = wm->child; e && !rc; e = e->next) {
        const tern_st_tensor *t = tern_st_find(s, e->string);
        char nb[96];
        if (!t)
            rc = fail(st, ipath, "index: tensor '%s': got it in no shard, expected it in %s",
                      show(e->string, nb, sizeof nb), e->valuestring);
        else if (strcmp(names[t->file], e->valuestring) != 0)
            rc = fail(st, ipath, "index: tensor '%s': got it in %s, expected it in %s",
                      show(e->string, nb, sizeof nb), names[t->file], e->valuestring);
    }
    if (!rc && s->n_tensors != (uint64_t)n_map) {
        for (uint64_t i = 0; i < s->n_tensors; i++)
            if (!cJSON_GetObjectItemCaseSensitive(wm, s->tensors[i].name)) {
                char nb[96];
                rc = fail(st, s->files[s->tensors[i].file].path,
                          "tensor '%s': got it in the shard, expected it in the index's weight_map",
                          show(s->tensors[i].name, nb, sizeof nb));
                break;
            }
    }
out:
    free(names);
    cJSON_Delete(root);
    free(text);
    if (rc) {
        tern_st_close(s);
        return rc;
    }
    *out = s;
    return TERN_OK;
}

tern_code tern_st_open_dir(tern_st **out, const char *dir, tern_status *st)
{
    *out = NULL;
    char *ipath = join(dir, "model.safetensors.index.json");
    if (!ipath) return nomem(st, dir);
    tern_code rc;
    if (access(ipath, F_OK) == 0) {
        rc = open_index(out, dir, ipath, st);
    } else {
        char *p = join(dir, "model.safetensors");
        rc = p ? tern_st_open(out, p, st) : nomem(st, dir);
        free(p);
    }
    free(ipath);
    return rc;
}

void tern_st_close(tern_st *s)
{
    if (!s) return;
    for (uint32_t i = 0; s->files && i < s->n_files; i++) {
        if (s->files[i].mapped) munmap((void *)s->files[i].base, s->files[i].size);
        free(s->files[i].path);
    }
    for (uint64_t i = 0; i < s->n_tensors; i++) free((char *)s->tensors[i].name);
    for (size_t i = 0; i < 2 * s->n_meta; i++) free(s->meta[i]);
    free(s->meta);
    free(s->tensors);
    free(s->files);
    free(s->path);
    free(s);
}

uint64_t tern_st_n_tensors(const tern_st *s)
{
    return s->n_tensors;
}

const tern_st_tensor *tern_st_tensor_at(const tern_st *s, uint64_t i)
{
    return i < s->n_tensors ? &s->tensors[i] : NULL;
}

const tern_st_tensor *tern_st_find(const tern_st *s, const char *name)
{
    uint64_t lo = 0, hi = s->n_tensors;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        int c = strcmp(s->tensors[mid].name, name);
        if (c == 0) return &s->tensors[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const char *tern_st_metadata(const tern_st *s, const char *key)
{
    for (size_t i = 0; i < s->n_meta; i++)
        if (!strcmp(s->meta[2 * i], key)) return s->meta[2 * i + 1];
    return NULL;
}

const char *tern_st_path(const tern_st *s)
{
    return s->path;
}
uint32_t tern_st_n_files(const tern_st *s)
{
    return s->n_files;
}
const char *tern_st_file_path(const tern_st *s, uint32_t file)
{
    return file < s->n_files ? s->files[file].path : NULL;
}

void tern_st_drop_pages(const tern_st *s, const tern_st_tensor *t)
{
    tern_st_drop_range(s, t, 0, t->nbytes);
}

void tern_st_drop_range(const tern_st *s, const tern_st_tensor *t, uint64_t off, uint64_t n)
{
    const st_file *f = &s->files[t->file];
    if (!f->mapped || off >= t->nbytes) return;
    if (n > t->nbytes - off) n = t->nbytes - off; /* clipped to the tensor */
    long pg = sysconf(_SC_PAGESIZE);
    uintptr_t a0 = (uintptr_t)t->data + (uintptr_t)off, a1 = a0 + (uintptr_t)n;
    uintptr_t a = (a0 + (uintptr_t)pg - 1) & ~((uintptr_t)pg - 1);
    uintptr_t b = a1 & ~((uintptr_t)pg - 1);
    if (b > a) (void)madvise((void *)a, b - a, MADV_DONTNEED);
}

static float half_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 0x1f, m = h & 0x3ff, u;
    if (e == 0x1f) {
        u = sign | 0x7f800000u | (m << 13);
    } else if (e == 0) {
        float v = ldexpf((float)m, -24); /* zero or subnormal: exact in f32 */
        return sign ? -v : v;
    } else {
        u = sign | ((e + 112) << 23) | (m << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

void tern_st_read_f32(const tern_st_tensor *t, uint64_t i0, uint64_t n, float *out)
{
    const uint8_t *p = t->data;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t k = i0 + i;
        if (t->dtype == TERN_ST_F32) {
            memcpy(&out[i], p + 4 * k, 4);
        } else {
            uint16_t h;
            memcpy(&h, p + 2 * k, 2);
            if (t->dtype == TERN_ST_BF16) {
                uint32_t u = (uint32_t)h << 16;
                memcpy(&out[i], &u, 4);
            } else {
                out[i] = half_to_f32(h);
            }
        }
    }
}
