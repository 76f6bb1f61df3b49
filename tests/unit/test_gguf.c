/* test_gguf.c: GGUF reader and writer.
 *
 * What is proved here: a real file from another implementation parses; the writer round-trips
 * every value type and tensor type; and no malformed input crashes the reader or escapes the
 * one-line error "gguf: FILE: WHAT: got X, expected Y". Every parse of untrusted bytes runs on
 * an exact-size heap copy so that ASan (CI build) flags any read past the end of the input.
 * Corrupt files are assembled byte by byte (the writer cannot make them) so every field is
 * under the test's control.
 */
#include "harness.h"
#include "ternpipe/gguf.h"

#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- seeded RNG (xorshift64*): reproducible tensor bytes ---- */

static uint64_t rng_state = UINT64_C(0x9E3779B97F4A7C15);

static uint64_t rng_next(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * UINT64_C(0x2545F4914F6CDD1D);
}

static void rng_fill(void *p, size_t n)
{
    uint8_t *b = p;
    for (size_t i = 0; i < n; i++) b[i] = (uint8_t)(rng_next() >> 56);
}

/* ---- message and failure checks ---- */

/* The error contract: "gguf: " prefix, a "got"/"expected" pair, a single line. */
static bool msg_ok(const char *msg)
{
    return strncmp(msg, "gguf: ", 6) == 0 && strstr(msg, ": got ") && strstr(msg, ", expected ") &&
           !strchr(msg, '\n') && !strchr(msg, '\r');
}

static uint8_t *dup_exact(const void *data, size_t size)
{
    /* malloc(0) may return NULL; one spare byte keeps the pointer valid but is never read
     * because the size passed to the reader stays 0 */
    uint8_t *p = malloc(size ? size : 1);
    if (p && size) memcpy(p, data, size);
    return p;
}

/* Opens `size` bytes and expects failure with `want`, a well-formed message and `kw` in it. */
static void expect_fail(const char *label, const void *data, size_t size, tern_code want,
                        const char *kw)
{
    uint8_t *copy = dup_exact(data, size);
    tern_gguf *g = NULL;
    tern_status st = {0};
    tern_code rc = tern_gguf_open_memory(&g, copy, size, "bad.gguf", &st);
    CHECKF(rc == want, "%s: got %s, want %s (%s)", label, tern_code_name(rc), tern_code_name(want),
           st.msg);
    CHECKF(g == NULL, "%s: handle not NULL on failure", label);
    CHECKF(st.code == rc, "%s: status code %d != rc %d", label, (int)st.code, (int)rc);
    CHECKF(msg_ok(st.msg), "%s: malformed message '%s'", label, st.msg);
    CHECKF(strncmp(st.msg, "gguf: bad.gguf: ", 16) == 0, "%s: message lacks file name: '%s'", label,
           st.msg);
    if (kw) CHECKF(strstr(st.msg, kw) != NULL, "%s: message '%s' lacks '%s'", label, st.msg, kw);
    if (g) tern_gguf_close(g);
    free(copy);
}

/* Opens the bytes and expects success (controls for the corruption cases). */
static tern_gguf *expect_ok(const char *label, const void *data, size_t size)
{
    tern_gguf *g = NULL;
    tern_status st = {0};
    tern_code rc = tern_gguf_open_memory(&g, data, size, "ok.gguf", &st);
    CHECKF(rc == TERN_OK && g, "%s: open failed: %s", label, st.msg);
    return rc == TERN_OK ? g : NULL;
}

/* ---- byte builder for hand-made files ---- */

typedef struct bytes {
    uint8_t *p;
    size_t n, cap;
} bytes;

static void b_put(bytes *b, const void *p, size_t n)
{
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n) cap *= 2;
        uint8_t *np = realloc(b->p, cap);
        if (!np) abort(); /* a test machine out of memory is not a result */
        b->p = np;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, p, n);
    b->n += n;
}
static void b_u8(bytes *b, uint8_t v)
{
    b_put(b, &v, 1);
}
static void b_u32(bytes *b, uint32_t v)
{
    b_put(b, &v, 4);
}
static void b_u64(bytes *b, uint64_t v)
{
    b_put(b, &v, 8);
}
static void b_str(bytes *b, const char *s)
{
    b_u64(b, strlen(s));
    b_put(b, s, strlen(s));
}
static void b_zeros(bytes *b, size_t n)
{
    for (size_t i = 0; i < n; i++) b_u8(b, 0);
}
static void b_align(bytes *b, size_t a)
{
    b_zeros(b, (a - b->n % a) % a);
}
static void b_free(bytes *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}
static void b_hdr(bytes *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
    b_put(b, "GGUF", 4);
    b_u32(b, version);
    b_u64(b, n_tensors);
    b_u64(b, n_kv);
}
static void b_key(bytes *b, const char *key, uint32_t type)
{
    b_str(b, key);
    b_u32(b, type);
}
static void b_kv_u32(bytes *b, const char *key, uint32_t v)
{
    b_key(b, key, TERN_GGUF_UINT32);
    b_u32(b, v);
}
static void b_kv_str(bytes *b, const char *key, const char *v)
{
    b_key(b, key, TERN_GGUF_STRING);
    b_str(b, v);
}

/* A tensor info as written in the file; ne has room for a 5th dim to test n_dims 5. */
typedef struct tspec {
    const char *name;
    uint32_t n_dims;
    uint64_t ne[5];
    uint32_t type;
    uint64_t offset;
} tspec;

/* v3 file: one string kv, the tensor infos, padding to 32 and `data_bytes` of data.
 * Returns the header end (before the padding). */
static size_t b_tensor_file(bytes *b, const tspec *ts, size_t nt, uint64_t data_bytes)
{
    b_hdr(b, 3, nt, 1);
    b_kv_str(b, "general.name", "t");
    for (size_t i = 0; i < nt; i++) {
        b_str(b, ts[i].name);
        b_u32(b, ts[i].n_dims);
        for (uint32_t d = 0; d < ts[i].n_dims && d < 5; d++) b_u64(b, ts[i].ne[d]);
        b_u32(b, ts[i].type);
        b_u64(b, ts[i].offset);
    }
    size_t head = b->n;
    b_align(b, 32);
    for (uint64_t i = 0; i < data_bytes; i++) b_u8(b, (uint8_t)i);
    return head;
}

static void tensor_case(const char *label, const tspec *ts, size_t nt, uint64_t data_bytes,
                        const char *kw)
{
    bytes b = {0};
    b_tensor_file(&b, ts, nt, data_bytes);
    expect_fail(label, b.p, b.n, TERN_EFORMAT, kw);
    b_free(&b);
}

/* ---- value comparison ---- */

static bool is_signed_t(tern_gguf_vtype t)
{
    return t == TERN_GGUF_INT8 || t == TERN_GGUF_INT16 || t == TERN_GGUF_INT32 ||
           t == TERN_GGUF_INT64;
}

/* Independent decode of element i of raw little-endian data, to check tern_gguf_arr_int. */
static int64_t raw_int(tern_gguf_vtype t, const void *data, uint64_t i)
{
    const uint8_t *p = (const uint8_t *)data + i * tern_gguf_vtype_size(t);
    switch (t) {
    case TERN_GGUF_UINT8:
    case TERN_GGUF_BOOL:
        return p[0];
    case TERN_GGUF_INT8:
        return (int8_t)p[0];
    case TERN_GGUF_UINT16:
        return (uint16_t)(p[0] | p[1] << 8);
    case TERN_GGUF_INT16:
        return (int16_t)(uint16_t)(p[0] | p[1] << 8);
    case TERN_GGUF_UINT32:
    case TERN_GGUF_INT32: {
        uint32_t x =
            (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
        return t == TERN_GGUF_INT32 ? (int64_t)(int32_t)x : (int64_t)x;
    }
    default: {
        uint64_t x = 0;
        for (int k = 7; k >= 0; k--) x = x << 8 | p[k];
        return (int64_t)x;
    }
    }
}

static bool value_eq(const tern_gguf_value *a, const tern_gguf_value *b)
{
    if (a->type != b->type) return false;
    switch (a->type) {
    case TERN_GGUF_STRING:
        return a->v.str.len == b->v.str.len &&
               (a->v.str.len == 0 || memcmp(a->v.str.ptr, b->v.str.ptr, a->v.str.len) == 0);
    case TERN_GGUF_ARRAY: {
        if (a->v.arr.type != b->v.arr.type || a->v.arr.n != b->v.arr.n) return false;
        size_t es = tern_gguf_vtype_size(a->v.arr.type);
        if (es) {
            if (a->v.arr.n && memcmp(a->v.arr.data, b->v.arr.data, a->v.arr.n * es) != 0)
                return false;
            for (uint64_t i = 0; i < a->v.arr.n; i++) {
                if (a->v.arr.type == TERN_GGUF_FLOAT32 || a->v.arr.type == TERN_GGUF_FLOAT64)
                    continue; /* raw bytes compared above; floats checked by the callers */
                if (tern_gguf_arr_int(b, i) != raw_int(a->v.arr.type, a->v.arr.data, i))
                    return false;
            }
            return true;
        }
        for (uint64_t i = 0; i < a->v.arr.n; i++)
            if (!value_eq(&a->v.arr.items[i], &b->v.arr.items[i])) return false;
        return true;
    }
    case TERN_GGUF_FLOAT32:
    case TERN_GGUF_FLOAT64:
        return a->v.f64 == b->v.f64;
    default:
        return is_signed_t(a->type) ? a->v.i64 == b->v.i64 : a->v.u64 == b->v.u64;
    }
}

static tern_gguf_value sv_u(tern_gguf_vtype t, uint64_t u)
{
    tern_gguf_value v = {.type = t};
    v.v.u64 = u;
    return v;
}
static tern_gguf_value sv_i(tern_gguf_vtype t, int64_t i)
{
    tern_gguf_value v = {.type = t};
    v.v.i64 = i;
    return v;
}
static tern_gguf_value sv_f(tern_gguf_vtype t, double f)
{
    tern_gguf_value v = {.type = t};
    v.v.f64 = f;
    return v;
}
static tern_gguf_value sv_s(const char *s, uint64_t len)
{
    tern_gguf_value v = {.type = TERN_GGUF_STRING};
    v.v.str.ptr = s;
    v.v.str.len = len;
    return v;
}
static tern_gguf_value sv_arr(tern_gguf_vtype et, uint64_t n, const void *data)
{
    tern_gguf_value v = {.type = TERN_GGUF_ARRAY};
    v.v.arr.type = et;
    v.v.arr.n = n;
    v.v.arr.data = data;
    return v;
}
static tern_gguf_value sv_items(tern_gguf_vtype et, uint64_t n, const tern_gguf_value *items)
{
    tern_gguf_value v = {.type = TERN_GGUF_ARRAY};
    v.v.arr.type = et;
    v.v.arr.n = n;
    v.v.arr.items = items;
    return v;
}

/* Expected key/value pairs of the round-trip file, in write order. */
#define MAX_EXP 80
static struct {
    const char *key;
    tern_gguf_value v;
} exp_kv[MAX_EXP];
static int n_exp;

static void expect_kv(const char *key, tern_gguf_value v)
{
    if (n_exp >= MAX_EXP) abort(); /* test table too small: a bug in this file */
    exp_kv[n_exp].key = key;
    exp_kv[n_exp].v = v;
    n_exp++;
}

static void check_kvs(tern_gguf *g, const char *label)
{
    CHECKF(tern_gguf_n_kv(g) == (uint64_t)n_exp, "%s: n_kv %" PRIu64 ", want %d", label,
           tern_gguf_n_kv(g), n_exp);
    for (int i = 0; i < n_exp && (uint64_t)i < tern_gguf_n_kv(g); i++) {
        const tern_gguf_kv *kv = tern_gguf_kv_at(g, (uint64_t)i);
        CHECKF(tern_gguf_str_eq(kv->key, exp_kv[i].key), "%s: kv %d key", label, i);
        CHECKF(value_eq(&exp_kv[i].v, &kv->value), "%s: kv '%s' value differs", label,
               exp_kv[i].key);
        CHECKF(tern_gguf_find(g, exp_kv[i].key) == &kv->value, "%s: find '%s'", label,
               exp_kv[i].key);
    }
}

/* Writes every kv of `src` through tern_gguf_writer_add_value and re-reads the copy; the
 * copy must hold equal values in the same order. */
static void check_copy_via_add_value(tern_gguf *src, const char *path, const char *label)
{
    tern_gguf_writer *w = tern_gguf_writer_new();
    CHECK(w != NULL);
    if (!w) return;
    for (uint64_t i = 0; i < tern_gguf_n_kv(src); i++) {
        const tern_gguf_kv *kv = tern_gguf_kv_at(src, i);
        char key[256];
        size_t n = kv->key.len < sizeof key - 1 ? (size_t)kv->key.len : sizeof key - 1;
        memcpy(key, kv->key.ptr, n);
        key[n] = '\0';
        CHECK(tern_gguf_writer_add_value(w, key, &kv->value) == TERN_OK);
    }
    tern_status st = {0};
    CHECKF(tern_gguf_writer_write(w, path, &st) == TERN_OK, "%s: write: %s", label, st.msg);
    tern_gguf_writer_free(w);
    tern_gguf *g = NULL;
    CHECKF(tern_gguf_open(&g, path, &st) == TERN_OK, "%s: reopen: %s", label, st.msg);
    if (!g) return;
    CHECKF(tern_gguf_n_kv(g) == tern_gguf_n_kv(src), "%s: n_kv", label);
    for (uint64_t i = 0; i < tern_gguf_n_kv(src) && i < tern_gguf_n_kv(g); i++) {
        const tern_gguf_kv *a = tern_gguf_kv_at(src, i), *b = tern_gguf_kv_at(g, i);
        CHECKF(a->key.len == b->key.len && memcmp(a->key.ptr, b->key.ptr, a->key.len) == 0,
               "%s: key %" PRIu64, label, i);
        CHECKF(value_eq(&a->value, &b->value), "%s: value %" PRIu64 " differs", label, i);
    }
    tern_gguf_close(g);
}

static char *tmp_path(const char *name)
{
    static char buf[8][512];
    static int k;
    char *p = buf[k++ % 8];
    snprintf(p, 512, "%s/%s", tern_test_tmpdir(), name);
    return p;
}

static bool write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) return false;
    bool ok = fwrite(data, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

/* ---- the real file ---- */

static void test_gpt2_fixture(void)
{
    if (!tern_test_need("gguf/ggml-vocab-gpt-2.gguf")) return;
    const char *path = tern_test_fixture("gguf/ggml-vocab-gpt-2.gguf");
    tern_gguf *g = NULL;
    tern_status st = {0};
    tern_code rc = tern_gguf_open(&g, path, &st);
    CHECKF(rc == TERN_OK, "open %s: %s", path, st.msg);
    if (rc) return;
    CHECK(tern_gguf_version(g) == 3);
    CHECK(tern_gguf_n_kv(g) == 16);
    CHECK(tern_gguf_n_tensors(g) == 0);
    CHECK(tern_gguf_alignment(g) == 32);
    CHECK(strcmp(tern_gguf_path(g), path) == 0);

    const tern_gguf_value *tok = NULL, *merges = NULL, *types = NULL;
    CHECK(tern_gguf_get_arr(g, "tokenizer.ggml.tokens", TERN_GGUF_STRING, &tok, &st) == TERN_OK);
    CHECK(tern_gguf_get_arr(g, "tokenizer.ggml.merges", TERN_GGUF_STRING, &merges, &st) == TERN_OK);
    CHECK(tern_gguf_get_arr(g, "tokenizer.ggml.token_type", TERN_GGUF_INT32, &types, &st) ==
          TERN_OK);
    if (tok) {
        CHECK(tok->v.arr.n == 50257);
        if (tok->v.arr.n == 50257) {
            CHECK(tern_gguf_str_eq(tok->v.arr.items[0].v.str, "!"));
            CHECK(tern_gguf_str_eq(tok->v.arr.items[1].v.str, "\""));
            CHECK(tern_gguf_str_eq(tok->v.arr.items[50255].v.str, "\xc4\xa0gazed"));
            CHECK(tern_gguf_str_eq(tok->v.arr.items[50256].v.str, "<|endoftext|>"));
        }
    }
    if (merges) {
        CHECK(merges->v.arr.n == 50000);
        if (merges->v.arr.n == 50000) {
            CHECK(tern_gguf_str_eq(merges->v.arr.items[0].v.str, "\xc4\xa0 t"));
            CHECK(tern_gguf_str_eq(merges->v.arr.items[2].v.str, "h e"));
            CHECK(tern_gguf_str_eq(merges->v.arr.items[49999].v.str, "\xc4\xa0g azed"));
        }
    }
    if (types) {
        CHECK(types->v.arr.n == 50257);
        if (types->v.arr.n == 50257) {
            CHECK(tern_gguf_arr_int(types, 0) == 1);
            CHECK(tern_gguf_arr_int(types, 50256) == 3);
        }
    }
    tern_gguf_str s;
    CHECK(tern_gguf_get_str(g, "tokenizer.ggml.pre", &s, &st) == TERN_OK &&
          tern_gguf_str_eq(s, "gpt-2"));
    CHECK(tern_gguf_get_str(g, "general.architecture", &s, &st) == TERN_OK &&
          tern_gguf_str_eq(s, "gpt2"));
    uint32_t u = 0;
    CHECK(tern_gguf_get_u32(g, "gpt2.context_length", &u, &st) == TERN_OK && u == 1024);
    CHECK(tern_gguf_get_u32(g, "gpt2.embedding_length", &u, &st) == TERN_OK && u == 768);
    CHECK(tern_gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &u, &st) == TERN_OK && u == 50256);
    int32_t i32 = 0;
    CHECK(tern_gguf_get_i32(g, "gpt2.block_count", &i32, &st) == TERN_OK && i32 == 12);
    float f = 0;
    CHECK(tern_gguf_get_f32(g, "gpt2.attention.layer_norm_epsilon", &f, &st) == TERN_OK &&
          f == 1e-5f);

    /* a copy made by our writer must equal llama.cpp's original value for value */
    check_copy_via_add_value(g, tmp_path("gpt2-copy.gguf"), "gpt2 copy");

    /* the file ends exactly at its last value, so every prefix is an error; a sample keeps
     * the test fast on a 1.7 MB file */
    size_t len = 0;
    unsigned char *all = tern_test_read_file(path, &len);
    CHECK(all != NULL && len == tern_gguf_file_size(g));
    if (all) {
        size_t cuts[] = {0, 3, 4, 8, 16, 23, 24, 25, 40, 1000, 100000, len / 2, len - 9, len - 1};
        for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++)
            expect_fail("gpt2 prefix", all, cuts[i], TERN_EFORMAT, NULL);
        for (int i = 0; i < 40; i++)
            expect_fail("gpt2 random prefix", all, (size_t)(rng_next() % len), TERN_EFORMAT, NULL);
        tern_gguf *m = expect_ok("gpt2 in memory", all, len);
        if (m) {
            CHECK(tern_gguf_n_kv(m) == 16);
            tern_gguf_close(m);
        }
        free(all);
    }
    tern_gguf_close(g);
}

/* ---- writer round trip ---- */

typedef struct wt {
    const char *name;
    tern_ggml_type type;
    uint32_t n_dims;
    uint64_t ne[4];
    uint64_t nbytes; /* expected, per the spec's sizes */
    uint8_t *data;
} wt;

static void add_tensors(tern_gguf_writer *w, wt *ts, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        ts[i].data = malloc(ts[i].nbytes);
        if (!ts[i].data) abort();
        rng_fill(ts[i].data, ts[i].nbytes);
        uint64_t nb = 0, n_el = 1;
        for (uint32_t d = 0; d < ts[i].n_dims; d++) n_el *= ts[i].ne[d];
        CHECKF(tern_ggml_nbytes(ts[i].type, ts[i].ne[0], n_el, &nb) && nb == ts[i].nbytes,
               "nbytes of %s: %" PRIu64 ", want %" PRIu64, ts[i].name, nb, ts[i].nbytes);
        tern_status st = {0};
        CHECKF(tern_gguf_writer_add_tensor(w, ts[i].name, ts[i].type, ts[i].n_dims, ts[i].ne,
                                           ts[i].data, &st) == TERN_OK,
               "add %s: %s", ts[i].name, st.msg);
    }
}

/* Tensor names, types, shapes, sizes, bytes and alignment as read back. `base` is the start
 * of the buffer when the file was opened from memory (NULL: skip the address check). */
static void check_tensors(tern_gguf *g, const wt *ts, size_t n, const uint8_t *base, uint32_t align)
{
    CHECK(tern_gguf_n_tensors(g) == n);
    for (size_t i = 0; i < n && i < tern_gguf_n_tensors(g); i++) {
        const tern_gguf_tensor *t = tern_gguf_tensor_at(g, i);
        CHECKF(tern_gguf_str_eq(t->name, ts[i].name), "tensor %zu name", i);
        CHECKF(t->type == ts[i].type, "%s type %d", ts[i].name, (int)t->type);
        CHECKF(t->n_dims == ts[i].n_dims, "%s n_dims %u", ts[i].name, t->n_dims);
        for (uint32_t d = 0; d < TERN_GGUF_MAX_DIMS; d++)
            CHECKF(t->ne[d] == (d < ts[i].n_dims ? ts[i].ne[d] : 1), "%s ne[%u]", ts[i].name, d);
        CHECKF(t->nbytes == ts[i].nbytes, "%s nbytes %" PRIu64, ts[i].name, t->nbytes);
        CHECKF(t->offset % align == 0, "%s offset %" PRIu64, ts[i].name, t->offset);
        CHECKF(memcmp(t->data, ts[i].data, ts[i].nbytes) == 0, "%s data differs", ts[i].name);
        if (base)
            CHECKF(((uintptr_t)((const uint8_t *)t->data - base)) % align == 0,
                   "%s data not aligned in file", ts[i].name);
        CHECK(tern_gguf_find_tensor(g, ts[i].name) == t);
    }
    CHECK(tern_gguf_tensor_at(g, n) == NULL);
    CHECK(tern_gguf_find_tensor(g, "no.such.tensor") == NULL);
}

/* storage that must outlive the writer calls and the comparison */
static uint8_t arr_data[TERN_GGUF_VTYPE_COUNT][5 * 8];
static const float arr_f32[5] = {0.5f, -1.25f, 1e30f, -0.0f, 3.0f};
static const double arr_f64[5] = {1e-300, -2.5, 1e300, 0.0, 123456.789};
static const int32_t nest_i32_a[3] = {1, 2, 3}, nest_i32_c[1] = {-7};
static const uint8_t nest_u8[2] = {9, 8};
static tern_gguf_value nest_i32[3], nest_s_a[2], nest_s_c[2], nest_s[3], nest3_mid[2],
    nest3_inner[1], nest3[1];

static void test_roundtrip(void)
{
    n_exp = 0;
    tern_gguf_writer *w = tern_gguf_writer_new();
    CHECK(w != NULL);
    if (!w) return;

    /* scalars: the typed adders and add_scalar for the rest */
    uint8_t u8 = 0xAB;
    int8_t i8 = -5;
    uint16_t u16 = 0xBEEF;
    int16_t i16 = -12345;
    int64_t i64 = INT64_MIN + 1;
    double f64 = -1.0e300;
    uint8_t b0 = 0;
    CHECK(tern_gguf_writer_add_scalar(w, "s.u8", TERN_GGUF_UINT8, &u8) == TERN_OK);
    expect_kv("s.u8", sv_u(TERN_GGUF_UINT8, 0xAB));
    CHECK(tern_gguf_writer_add_scalar(w, "s.i8", TERN_GGUF_INT8, &i8) == TERN_OK);
    expect_kv("s.i8", sv_i(TERN_GGUF_INT8, -5));
    CHECK(tern_gguf_writer_add_scalar(w, "s.u16", TERN_GGUF_UINT16, &u16) == TERN_OK);
    expect_kv("s.u16", sv_u(TERN_GGUF_UINT16, 0xBEEF));
    CHECK(tern_gguf_writer_add_scalar(w, "s.i16", TERN_GGUF_INT16, &i16) == TERN_OK);
    expect_kv("s.i16", sv_i(TERN_GGUF_INT16, -12345));
    CHECK(tern_gguf_writer_add_u32(w, "s.u32", 0xDEADBEEFu) == TERN_OK);
    expect_kv("s.u32", sv_u(TERN_GGUF_UINT32, 0xDEADBEEFu));
    CHECK(tern_gguf_writer_add_i32(w, "s.i32", -123456789) == TERN_OK);
    expect_kv("s.i32", sv_i(TERN_GGUF_INT32, -123456789));
    CHECK(tern_gguf_writer_add_f32(w, "s.f32", 3.25f) == TERN_OK);
    expect_kv("s.f32", sv_f(TERN_GGUF_FLOAT32, 3.25));
    CHECK(tern_gguf_writer_add_bool(w, "s.true", true) == TERN_OK);
    expect_kv("s.true", sv_u(TERN_GGUF_BOOL, 1));
    CHECK(tern_gguf_writer_add_scalar(w, "s.false", TERN_GGUF_BOOL, &b0) == TERN_OK);
    expect_kv("s.false", sv_u(TERN_GGUF_BOOL, 0));
    CHECK(tern_gguf_writer_add_str(w, "s.str", "hello, world") == TERN_OK);
    expect_kv("s.str", sv_s("hello, world", 12));
    CHECK(tern_gguf_writer_add_str(w, "s.str.empty", "") == TERN_OK);
    expect_kv("s.str.empty", sv_s("", 0));
    CHECK(tern_gguf_writer_add_u64(w, "s.u64", UINT64_C(0xFEDCBA9876543210)) == TERN_OK);
    expect_kv("s.u64", sv_u(TERN_GGUF_UINT64, UINT64_C(0xFEDCBA9876543210)));
    CHECK(tern_gguf_writer_add_scalar(w, "s.i64", TERN_GGUF_INT64, &i64) == TERN_OK);
    expect_kv("s.i64", sv_i(TERN_GGUF_INT64, INT64_MIN + 1));
    CHECK(tern_gguf_writer_add_scalar(w, "s.f64", TERN_GGUF_FLOAT64, &f64) == TERN_OK);
    expect_kv("s.f64", sv_f(TERN_GGUF_FLOAT64, -1.0e300));

    /* arrays of every scalar type: random integer bytes, fixed floats (no NaN surprises) */
    static const char *const arr_keys[TERN_GGUF_VTYPE_COUNT] = {
        "a.u8",   "a.i8", "a.u16", "a.i16", "a.u32", "a.i32", "a.f32",
        "a.bool", NULL,   NULL,    "a.u64", "a.i64", "a.f64"};
    for (int t = 0; t < TERN_GGUF_VTYPE_COUNT; t++) {
        if (!arr_keys[t]) continue;
        size_t es = tern_gguf_vtype_size((tern_gguf_vtype)t);
        if (t == TERN_GGUF_FLOAT32)
            memcpy(arr_data[t], arr_f32, sizeof arr_f32);
        else if (t == TERN_GGUF_FLOAT64)
            memcpy(arr_data[t], arr_f64, sizeof arr_f64);
        else if (t == TERN_GGUF_BOOL)
            for (int i = 0; i < 5; i++) arr_data[t][i] = (uint8_t)(rng_next() & 1);
        else
            rng_fill(arr_data[t], 5 * es);
        CHECK(tern_gguf_writer_add_arr(w, arr_keys[t], (tern_gguf_vtype)t, arr_data[t], 5) ==
              TERN_OK);
        expect_kv(arr_keys[t], sv_arr((tern_gguf_vtype)t, 5, arr_data[t]));
    }
    /* empty arrays; NULL data with n = 0 is a legitimate call */
    CHECK(tern_gguf_writer_add_arr(w, "a.empty.u32", TERN_GGUF_UINT32, NULL, 0) == TERN_OK);
    expect_kv("a.empty.u32", sv_arr(TERN_GGUF_UINT32, 0, NULL));
    CHECK(tern_gguf_writer_add_arr(w, "a.empty.f64", TERN_GGUF_FLOAT64, arr_f64, 0) == TERN_OK);
    expect_kv("a.empty.f64", sv_arr(TERN_GGUF_FLOAT64, 0, NULL));
    CHECK(tern_gguf_writer_add_arr_str(w, "a.empty.str", NULL, NULL, 0) == TERN_OK);
    expect_kv("a.empty.str", sv_items(TERN_GGUF_STRING, 0, NULL));

    /* strings with an embedded NUL, empty, multibyte and long */
    static char long_str[300];
    memset(long_str, 'x', sizeof long_str - 1);
    static const char *strs[5];
    static uint64_t lens[5];
    static tern_gguf_value str_items[5];
    strs[0] = "alpha", lens[0] = 5;
    strs[1] = "", lens[1] = 0;
    strs[2] = "with\0nul", lens[2] = 8;
    strs[3] = "\xc3\xbcnic\xc3\xb6"
              "de",
    lens[3] = 9;
    strs[4] = long_str, lens[4] = sizeof long_str - 1;
    for (int i = 0; i < 5; i++) str_items[i] = sv_s(strs[i], lens[i]);
    CHECK(tern_gguf_writer_add_arr_str(w, "a.str", strs, lens, 5) == TERN_OK);
    expect_kv("a.str", sv_items(TERN_GGUF_STRING, 5, str_items));
    /* lens NULL: lengths by strlen */
    static const char *const strs2[2] = {"one", "two"};
    static tern_gguf_value str2_items[2];
    str2_items[0] = sv_s("one", 3);
    str2_items[1] = sv_s("two", 3);
    CHECK(tern_gguf_writer_add_arr_str(w, "a.str.strlen", strs2, NULL, 2) == TERN_OK);
    expect_kv("a.str.strlen", sv_items(TERN_GGUF_STRING, 2, str2_items));

    /* nested: arrays of arrays of i32 (one empty), of strings, three deep, and empty */
    nest_i32[0] = sv_arr(TERN_GGUF_INT32, 3, nest_i32_a);
    nest_i32[1] = sv_arr(TERN_GGUF_INT32, 0, NULL);
    nest_i32[2] = sv_arr(TERN_GGUF_INT32, 1, nest_i32_c);
    tern_gguf_value v = sv_items(TERN_GGUF_ARRAY, 3, nest_i32);
    CHECK(tern_gguf_writer_add_value(w, "n.i32", &v) == TERN_OK);
    expect_kv("n.i32", v);
    nest_s_a[0] = sv_s("a", 1);
    nest_s_a[1] = sv_s("bc", 2);
    nest_s_c[0] = sv_s("", 0);
    nest_s_c[1] = sv_s("xyz", 3);
    nest_s[0] = sv_items(TERN_GGUF_STRING, 2, nest_s_a);
    nest_s[1] = sv_items(TERN_GGUF_STRING, 0, NULL);
    nest_s[2] = sv_items(TERN_GGUF_STRING, 2, nest_s_c);
    v = sv_items(TERN_GGUF_ARRAY, 3, nest_s);
    CHECK(tern_gguf_writer_add_value(w, "n.str", &v) == TERN_OK);
    expect_kv("n.str", v);
    nest3_inner[0] = sv_arr(TERN_GGUF_UINT8, 2, nest_u8);
    nest3_mid[0] = sv_items(TERN_GGUF_ARRAY, 1, nest3_inner);
    nest3_mid[1] = sv_items(TERN_GGUF_ARRAY, 0, NULL);
    nest3[0] = sv_items(TERN_GGUF_ARRAY, 2, nest3_mid);
    v = sv_items(TERN_GGUF_ARRAY, 1, nest3);
    CHECK(tern_gguf_writer_add_value(w, "n.deep", &v) == TERN_OK);
    expect_kv("n.deep", v);
    v = sv_items(TERN_GGUF_ARRAY, 0, NULL);
    CHECK(tern_gguf_writer_add_value(w, "n.empty", &v) == TERN_OK);
    expect_kv("n.empty", v);

    /* one tensor of every supported type, sizes per spec 3.3-3.5; odd sizes force padding */
    wt ts[] = {
        {"f32", TERN_TYPE_F32, 2, {7, 3}, 7 * 3 * 4, NULL},
        {"f16", TERN_TYPE_F16, 1, {5}, 10, NULL},
        {"bf16", TERN_TYPE_BF16, 3, {3, 2, 2}, 24, NULL},
        {"q8_0", TERN_TYPE_Q8_0, 2, {64, 2}, 4 * 34, NULL},
        {"tq1_0", TERN_TYPE_TQ1_0, 4, {256, 1, 1, 2}, 2 * 54, NULL},
        {"tq2_0", TERN_TYPE_TQ2_0, 1, {512}, 2 * 66, NULL},
        {"i2_s", TERN_TYPE_I2_S, 2, {256, 3}, 768 / 4 + 32, NULL},
    };
    size_t nt = sizeof ts / sizeof ts[0];
    add_tensors(w, ts, nt);

    const char *path = tmp_path("roundtrip.gguf");
    tern_status st = {0};
    CHECKF(tern_gguf_writer_write(w, path, &st) == TERN_OK, "write: %s", st.msg);
    tern_gguf_writer_free(w);

    tern_gguf *g = NULL;
    CHECKF(tern_gguf_open(&g, path, &st) == TERN_OK, "open roundtrip: %s", st.msg);
    if (g) {
        CHECK(tern_gguf_version(g) == 3);
        CHECK(tern_gguf_alignment(g) == 32);
        check_kvs(g, "roundtrip");
        CHECK(tern_gguf_kv_at(g, tern_gguf_n_kv(g)) == NULL);
        CHECK(tern_gguf_find(g, "no.such.key") == NULL);
        /* float elements through the accessor */
        const tern_gguf_value *a = tern_gguf_find(g, "a.f32");
        if (a)
            for (int i = 0; i < 5; i++) CHECK(tern_gguf_arr_float(a, i) == arr_f32[i]);
        a = tern_gguf_find(g, "a.f64");
        if (a)
            for (int i = 0; i < 5; i++) CHECK(tern_gguf_arr_float(a, i) == arr_f64[i]);
        a = tern_gguf_find(g, "n.i32");
        if (a) CHECK(tern_gguf_arr_int(&a->v.arr.items[2], 0) == -7);
        check_tensors(g, ts, nt, NULL, 32);

        /* getters: successes, then the one-line errors naming the key */
        uint32_t u = 0;
        int32_t i = 0;
        float f = 0;
        bool b = false;
        tern_gguf_str s;
        const tern_gguf_value *arr = NULL;
        CHECK(tern_gguf_get_u32(g, "s.u8", &u, &st) == TERN_OK && u == 0xAB);
        CHECK(tern_gguf_get_u32(g, "s.u32", &u, &st) == TERN_OK && u == 0xDEADBEEFu);
        CHECK(tern_gguf_get_i32(g, "s.i8", &i, &st) == TERN_OK && i == -5);
        CHECK(tern_gguf_get_i32(g, "s.u16", &i, &st) == TERN_OK && i == 0xBEEF);
        CHECK(tern_gguf_get_f32(g, "s.f32", &f, &st) == TERN_OK && f == 3.25f);
        CHECK(tern_gguf_get_bool(g, "s.true", &b, &st) == TERN_OK && b);
        CHECK(tern_gguf_get_bool(g, "s.false", &b, &st) == TERN_OK && !b);
        CHECK(tern_gguf_get_str(g, "s.str", &s, &st) == TERN_OK &&
              tern_gguf_str_eq(s, "hello, world"));
        CHECK(tern_gguf_get_arr(g, "a.str", TERN_GGUF_STRING, &arr, &st) == TERN_OK && arr &&
              arr->v.arr.n == 5);
        /* each failing getter gets its own status so every message is checked */
#define GETTER_FAILS(call, want, key, kw)                                                          \
    do {                                                                                           \
        tern_status gs = {0};                                                                      \
        tern_code grc = (call);                                                                    \
        CHECKF(grc == (want), "%s: got %s (%s)", #call, tern_code_name(grc), gs.msg);              \
        CHECKF(msg_ok(gs.msg), "%s: malformed message '%s'", #call, gs.msg);                       \
        CHECKF(strstr(gs.msg, key) && strstr(gs.msg, kw), "%s: message '%s' lacks %s / %s", #call, \
               gs.msg, key, kw);                                                                   \
    } while (0)
        GETTER_FAILS(tern_gguf_get_u32(g, "missing.key", &u, &gs), TERN_EFORMAT, "'missing.key'",
                     "got nothing");
        GETTER_FAILS(tern_gguf_get_u32(g, "s.str", &u, &gs), TERN_EFORMAT, "'s.str'",
                     "got string, expected an integer");
        GETTER_FAILS(tern_gguf_get_u32(g, "s.i8", &u, &gs), TERN_ERANGE, "'s.i8'", "got -5");
        GETTER_FAILS(tern_gguf_get_u32(g, "s.u64", &u, &gs), TERN_ERANGE, "'s.u64'",
                     "got 18364758544493064720");
        GETTER_FAILS(tern_gguf_get_i32(g, "s.u32", &i, &gs), TERN_ERANGE, "'s.u32'",
                     "got 3735928559");
        GETTER_FAILS(tern_gguf_get_i32(g, "s.i64", &i, &gs), TERN_ERANGE, "'s.i64'",
                     "got -9223372036854775807");
        GETTER_FAILS(tern_gguf_get_i32(g, "s.f32", &i, &gs), TERN_EFORMAT, "'s.f32'",
                     "got float32");
        GETTER_FAILS(tern_gguf_get_i32(g, "a.i32", &i, &gs), TERN_EFORMAT, "'a.i32'", "got array");
        GETTER_FAILS(tern_gguf_get_i32(g, "s.true", &i, &gs), TERN_EFORMAT, "'s.true'", "got bool");
        GETTER_FAILS(tern_gguf_get_f32(g, "s.u32", &f, &gs), TERN_EFORMAT, "'s.u32'", "got uint32");
        GETTER_FAILS(tern_gguf_get_f32(g, "nope", &f, &gs), TERN_EFORMAT, "'nope'", "got nothing");
        GETTER_FAILS(tern_gguf_get_bool(g, "s.u8", &b, &gs), TERN_EFORMAT, "'s.u8'",
                     "got uint8, expected bool");
        GETTER_FAILS(tern_gguf_get_str(g, "s.u32", &s, &gs), TERN_EFORMAT, "'s.u32'",
                     "expected string");
        GETTER_FAILS(tern_gguf_get_str(g, "", &s, &gs), TERN_EFORMAT, "''", "got nothing");
        GETTER_FAILS(tern_gguf_get_arr(g, "a.str", TERN_GGUF_INT32, &arr, &gs), TERN_EFORMAT,
                     "'a.str'", "got array of string, expected array of int32");
        GETTER_FAILS(tern_gguf_get_arr(g, "s.u32", TERN_GGUF_UINT32, &arr, &gs), TERN_EFORMAT,
                     "'s.u32'", "got uint32, expected array of uint32");
#undef GETTER_FAILS
        /* a failed getter leaves the output alone */
        u = 77;
        CHECK(tern_gguf_get_u32(g, "s.i8", &u, NULL) == TERN_ERANGE && u == 77);

        /* from memory too: same values, and tensor data aligned within the buffer */
        size_t len = 0;
        unsigned char *all = tern_test_read_file(path, &len);
        CHECK(all != NULL && len == tern_gguf_file_size(g));
        tern_gguf *m = all ? expect_ok("roundtrip in memory", all, len) : NULL;
        if (m) {
            check_kvs(m, "roundtrip memory");
            check_tensors(m, ts, nt, all, 32);
            tern_gguf_close(m);
        }
        free(all);

        /* add_value covers every type when it copies this file */
        check_copy_via_add_value(g, tmp_path("roundtrip-copy.gguf"), "roundtrip copy");
        tern_gguf_close(g);
    }
    for (size_t k = 0; k < nt; k++) free(ts[k].data);
}

static void test_alignment64(void)
{
    tern_gguf_writer *w = tern_gguf_writer_new();
    CHECK(w != NULL);
    if (!w) return;
    tern_gguf_writer_set_alignment(w, 64);
    CHECK(tern_gguf_writer_add_str(w, "general.name", "aligned") == TERN_OK);
    wt ts[] = {
        {"a", TERN_TYPE_F32, 1, {3}, 12, NULL},
        {"b", TERN_TYPE_I2_S, 2, {128, 1}, 64, NULL},
        {"c", TERN_TYPE_F16, 2, {40, 1}, 80, NULL},
        {"d", TERN_TYPE_Q8_0, 1, {32}, 34, NULL},
    };
    size_t nt = sizeof ts / sizeof ts[0];
    add_tensors(w, ts, nt);
    const char *path = tmp_path("align64.gguf");
    tern_status st = {0};
    CHECKF(tern_gguf_writer_write(w, path, &st) == TERN_OK, "write: %s", st.msg);
    tern_gguf_writer_free(w);
    size_t len = 0;
    unsigned char *all = tern_test_read_file(path, &len);
    CHECK(all != NULL);
    tern_gguf *g = all ? expect_ok("align64", all, len) : NULL;
    if (g) {
        CHECK(tern_gguf_alignment(g) == 64);
        uint32_t a = 0;
        CHECK(tern_gguf_get_u32(g, "general.alignment", &a, &st) == TERN_OK && a == 64);
        check_tensors(g, ts, nt, all, 64);
        tern_gguf_close(g);
    }
    free(all);
    for (size_t k = 0; k < nt; k++) free(ts[k].data);
}

/* ---- every truncation ---- */

static void test_truncations(void)
{
    tern_gguf_writer *w = tern_gguf_writer_new();
    CHECK(w != NULL);
    if (!w) return;
    CHECK(tern_gguf_writer_add_str(w, "general.architecture", "bitnet-b1.58") == TERN_OK);
    CHECK(tern_gguf_writer_add_u32(w, "bitnet-b1.58.context_length", 256) == TERN_OK);
    CHECK(tern_gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", true) == TERN_OK);
    static const char *const toks[] = {"<s>", "a", "", "hello"};
    CHECK(tern_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", toks, NULL, 4) == TERN_OK);
    static const int32_t types[] = {3, 1, 1, 1};
    CHECK(tern_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", TERN_GGUF_INT32, types, 4) ==
          TERN_OK);
    /* the I2_S tensor is last and 96 bytes (a multiple of 32), so the file has no trailing
     * padding: every strict prefix cuts real data */
    wt ts[] = {
        {"token_embd.weight", TERN_TYPE_F16, 2, {8, 3}, 48, NULL},
        {"output_norm.weight", TERN_TYPE_F32, 1, {5}, 20, NULL},
        {"blk.0.ffn_up.weight", TERN_TYPE_Q8_0, 1, {32}, 34, NULL},
        {"blk.0.attn_q.weight", TERN_TYPE_I2_S, 2, {128, 2}, 96, NULL},
    };
    size_t nt = sizeof ts / sizeof ts[0];
    add_tensors(w, ts, nt);
    const char *path = tmp_path("trunc-src.gguf");
    tern_status st = {0};
    CHECKF(tern_gguf_writer_write(w, path, &st) == TERN_OK, "write: %s", st.msg);
    tern_gguf_writer_free(w);
    size_t size = 0;
    unsigned char *all = tern_test_read_file(path, &size);
    CHECK(all != NULL);
    if (!all) goto out;
    tern_gguf *g = expect_ok("truncation source", all, size);
    if (!g) goto out;
    const tern_gguf_tensor *last = tern_gguf_tensor_at(g, nt - 1);
    size_t data_start = (size_t)((const uint8_t *)last->data - all) - (size_t)last->offset;
    CHECKF((const uint8_t *)last->data + last->nbytes == all + size,
           "test file has trailing bytes after the last tensor");
    tern_gguf_close(g);

    /* every prefix from memory, each on its own exact-size heap copy */
    int n_checked = 0;
    for (size_t n = 0; n < size; n++) {
        uint8_t *copy = dup_exact(all, n);
        tern_gguf *t = NULL;
        tern_status ts_ = {0};
        tern_code rc = tern_gguf_open_memory(&t, copy, n, "cut.gguf", &ts_);
        CHECKF(rc == TERN_EFORMAT && t == NULL, "prefix %zu of %zu: got %s (%s)", n, size,
               tern_code_name(rc), ts_.msg);
        CHECKF(msg_ok(ts_.msg), "prefix %zu: malformed message '%s'", n, ts_.msg);
        /* cuts inside the tensor data or exactly at the data start name the missing data */
        if (n >= data_start)
            CHECKF(strstr(ts_.msg, "out of file") != NULL, "prefix %zu: '%s'", n, ts_.msg);
        if (t) tern_gguf_close(t);
        free(copy);
        n_checked++;
    }
    CHECK(n_checked == (int)size);
    /* a sample through files and tern_gguf_open (mmap path) */
    const char *cut = tmp_path("trunc.gguf");
    for (size_t n = 0; n < size; n += (n < 30 ? 1 : 37)) {
        size_t len = n;
        CHECK(write_file(cut, all, len));
        tern_gguf *t = NULL;
        tern_status fs = {0};
        tern_code rc = tern_gguf_open(&t, cut, &fs);
        CHECKF(rc == TERN_EFORMAT || (len < 24 && rc == TERN_EIO), "file prefix %zu: got %s (%s)",
               len, tern_code_name(rc), fs.msg);
        CHECKF(t == NULL && msg_ok(fs.msg), "file prefix %zu: '%s'", len, fs.msg);
        CHECKF(strncmp(fs.msg + 6, cut, strlen(cut)) == 0, "file prefix %zu: no path: '%s'", len,
               fs.msg);
        if (t) tern_gguf_close(t);
    }
    CHECK(write_file(cut, all, size - 1));
    {
        tern_gguf *t = NULL;
        tern_status fs = {0};
        CHECK(tern_gguf_open(&t, cut, &fs) == TERN_EFORMAT && t == NULL && msg_ok(fs.msg));
        CHECK(strstr(fs.msg, "out of file") != NULL);
    }
    CHECK(write_file(cut, all, size));
    {
        tern_gguf *t = NULL;
        tern_status fs = {0};
        CHECKF(tern_gguf_open(&t, cut, &fs) == TERN_OK, "full file: %s", fs.msg);
        if (t) tern_gguf_close(t);
    }
out:
    free(all);
    for (size_t k = 0; k < nt; k++) free(ts[k].data);
}

/* ---- targeted corruptions ---- */

static void test_header_corruptions(void)
{
    bytes b = {0};
    /* control: a header-only file is valid */
    b_hdr(&b, 3, 0, 0);
    tern_gguf *g = expect_ok("empty v3", b.p, b.n);
    if (g) tern_gguf_close(g);
    b.n = 0;
    b_hdr(&b, 2, 0, 1);
    b_kv_u32(&b, "k", 1);
    g = expect_ok("v2", b.p, b.n);
    if (g) {
        CHECK(tern_gguf_version(g) == 2);
        tern_gguf_close(g);
    }

    expect_fail("no bytes", "", 0, TERN_EFORMAT, "magic: got 0 bytes left");
    b.n = 0;
    b_hdr(&b, 3, 0, 0);
    memcpy(b.p, "GGUX", 4);
    expect_fail("magic", b.p, b.n, TERN_EFORMAT, "magic: got 47 47 55 58");
    memcpy(b.p, "FUGG", 4); /* a byte-swapped writer */
    expect_fail("magic reversed", b.p, b.n, TERN_EFORMAT, "magic");
    memcpy(b.p, "\0\0\0\0", 4);
    expect_fail("magic zero", b.p, b.n, TERN_EFORMAT, "magic");

    uint32_t versions[] = {0, 1, 4, 0x03000000u, 0xFFFFFFFFu};
    for (size_t i = 0; i < sizeof versions / sizeof versions[0]; i++) {
        b.n = 0;
        b_hdr(&b, versions[i], 0, 0);
        expect_fail("version", b.p, b.n, TERN_EFORMAT, "version: got ");
    }
    b.n = 0;
    b_hdr(&b, 1, 0, 0);
    expect_fail("version 1", b.p, b.n, TERN_EFORMAT, "version: got 1, expected 2 or 3");

    uint64_t huge[] = {UINT64_MAX, UINT64_C(1) << 40, UINT64_C(1) << 63, 1000};
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
        b.n = 0;
        b_hdr(&b, 3, huge[i], 0);
        b_zeros(&b, 64);
        expect_fail("tensor count", b.p, b.n, TERN_EFORMAT, "tensor count: got ");
        b.n = 0;
        b_hdr(&b, 3, 0, huge[i]);
        b_zeros(&b, 64);
        expect_fail("metadata count", b.p, b.n, TERN_EFORMAT, "metadata count: got ");
    }
    b_free(&b);
}

/* key "k" of type `type` followed by the raw value bytes the caller appends */
static void kv_file(bytes *b, uint64_t n_kv, const char *key, uint32_t type)
{
    b->n = 0;
    b_hdr(b, 3, 0, n_kv);
    b_key(b, key, type);
}

/* an array kv nested `levels` deep around an empty u8 array */
static void nested_file(bytes *b, int levels)
{
    kv_file(b, 1, "nest", TERN_GGUF_ARRAY);
    for (int i = 0; i < levels - 1; i++) {
        b_u32(b, TERN_GGUF_ARRAY);
        b_u64(b, 1);
    }
    b_u32(b, TERN_GGUF_UINT8);
    b_u64(b, 0);
}

static void test_kv_corruptions(void)
{
    bytes b = {0};
    /* string lengths */
    uint64_t lens[] = {UINT64_MAX, UINT64_C(1) << 40, UINT64_MAX - 7, 100};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        b.n = 0;
        b_hdr(&b, 3, 0, 1);
        b_u64(&b, lens[i]);
        b_zeros(&b, 32);
        expect_fail("key length", b.p, b.n, TERN_EFORMAT, "metadata 0 key: string length: got");
        kv_file(&b, 1, "k", TERN_GGUF_STRING);
        b_u64(&b, lens[i]);
        b_zeros(&b, 32);
        expect_fail("value length", b.p, b.n, TERN_EFORMAT, "metadata 'k': string length: got");
        /* a string inside an array */
        kv_file(&b, 1, "k", TERN_GGUF_ARRAY);
        b_u32(&b, TERN_GGUF_STRING);
        b_u64(&b, 2);
        b_str(&b, "ok");
        b_u64(&b, lens[i]);
        b_zeros(&b, 32);
        expect_fail("array string length", b.p, b.n, TERN_EFORMAT, "string length: got");
    }

    /* array counts: a count times the element size can wrap 64 bits (2^62 x 8) */
    struct {
        uint32_t et;
        uint64_t n;
    } counts[] = {
        {TERN_GGUF_UINT8, UINT64_MAX},         {TERN_GGUF_UINT64, UINT64_C(1) << 62},
        {TERN_GGUF_UINT32, UINT64_C(1) << 62}, {TERN_GGUF_STRING, UINT64_C(1) << 40},
        {TERN_GGUF_STRING, UINT64_MAX},        {TERN_GGUF_ARRAY, UINT64_MAX},
        {TERN_GGUF_ARRAY, UINT64_C(1) << 61},  {TERN_GGUF_BOOL, 1000},
    };
    for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++) {
        kv_file(&b, 1, "arr", TERN_GGUF_ARRAY);
        b_u32(&b, counts[i].et);
        b_u64(&b, counts[i].n);
        b_zeros(&b, 48);
        expect_fail("array count", b.p, b.n, TERN_EFORMAT, "metadata 'arr': array count: got");
    }

    /* types */
    uint32_t etypes[] = {13, 99, 0xFFFFFFFFu};
    for (size_t i = 0; i < sizeof etypes / sizeof etypes[0]; i++) {
        kv_file(&b, 1, "arr", TERN_GGUF_ARRAY);
        b_u32(&b, etypes[i]);
        b_u64(&b, 1);
        b_zeros(&b, 16);
        expect_fail("array element type", b.p, b.n, TERN_EFORMAT, "array element type: got ");
        kv_file(&b, 1, "k", etypes[i]);
        b_zeros(&b, 16);
        expect_fail("kv type", b.p, b.n, TERN_EFORMAT, "metadata 'k' type: got ");
    }
    kv_file(&b, 1, "k", 99);
    b_zeros(&b, 16);
    expect_fail("kv type 99", b.p, b.n, TERN_EFORMAT, "type: got 99, expected 0..12");
    kv_file(&b, 1, "arr", TERN_GGUF_ARRAY);
    b_u32(&b, 13);
    b_u64(&b, 0);
    expect_fail("array element type 13", b.p, b.n, TERN_EFORMAT, "got 13, expected 0..12");

    /* nesting: the limit (8 arrays) parses, one more fails; a very deep one fails early
     * without exhausting the stack */
    nested_file(&b, 8);
    tern_gguf *g = expect_ok("nesting 8", b.p, b.n);
    if (g) {
        const tern_gguf_value *v = tern_gguf_find(g, "nest");
        int depth = 0;
        while (v && v->type == TERN_GGUF_ARRAY) {
            depth++;
            v = v->v.arr.type == TERN_GGUF_ARRAY ? &v->v.arr.items[0] : NULL;
        }
        CHECK(depth == 8);
        tern_gguf_close(g);
    }
    nested_file(&b, 9);
    expect_fail("nesting 9", b.p, b.n, TERN_EFORMAT, "nesting depth: got ");
    nested_file(&b, 100000);
    expect_fail("nesting 100000", b.p, b.n, TERN_EFORMAT, "nesting depth");

    /* bools */
    kv_file(&b, 1, "flag", TERN_GGUF_BOOL);
    b_u8(&b, 2);
    expect_fail("bool 2", b.p, b.n, TERN_EFORMAT, "metadata 'flag': bool: got 2, expected 0 or 1");
    kv_file(&b, 1, "flag", TERN_GGUF_BOOL);
    b_u8(&b, 0xFF);
    expect_fail("bool 255", b.p, b.n, TERN_EFORMAT, "bool: got 255");
    kv_file(&b, 1, "flags", TERN_GGUF_ARRAY);
    b_u32(&b, TERN_GGUF_BOOL);
    b_u64(&b, 3);
    b_u8(&b, 0), b_u8(&b, 1), b_u8(&b, 2);
    expect_fail("bool array", b.p, b.n, TERN_EFORMAT, "bool element 2: got 2");

    /* general.alignment */
    uint32_t aligns[] = {0, 3, 48, 1u << 21, 0x80000000u};
    for (size_t i = 0; i < sizeof aligns / sizeof aligns[0]; i++) {
        b.n = 0;
        b_hdr(&b, 3, 0, 1);
        b_kv_u32(&b, "general.alignment", aligns[i]);
        expect_fail("alignment", b.p, b.n, TERN_EFORMAT, "general.alignment: got ");
    }
    b.n = 0;
    b_hdr(&b, 3, 0, 1);
    b_kv_u32(&b, "general.alignment", 0);
    expect_fail("alignment 0", b.p, b.n, TERN_EFORMAT, "general.alignment: got 0, expected");
    b.n = 0;
    b_hdr(&b, 3, 0, 1);
    b_kv_str(&b, "general.alignment", "32");
    expect_fail("alignment string", b.p, b.n, TERN_EFORMAT,
                "general.alignment type: got string, expected uint32");
    kv_file(&b, 1, "general.alignment", TERN_GGUF_UINT64);
    b_u64(&b, 32);
    expect_fail("alignment u64", b.p, b.n, TERN_EFORMAT, "general.alignment type: got uint64");
    b.n = 0;
    b_hdr(&b, 3, 0, 1);
    b_kv_u32(&b, "general.alignment", 1);
    g = expect_ok("alignment 1", b.p, b.n);
    if (g) {
        CHECK(tern_gguf_alignment(g) == 1);
        tern_gguf_close(g);
    }

    /* duplicate keys, also with unprintable bytes that must not reach the message raw */
    b.n = 0;
    b_hdr(&b, 3, 0, 3);
    b_kv_u32(&b, "a", 1);
    b_kv_u32(&b, "b", 2);
    b_kv_str(&b, "a", "again");
    expect_fail("duplicate key", b.p, b.n, TERN_EFORMAT,
                "metadata key: got 'a' twice, expected unique names");
    b.n = 0;
    b_hdr(&b, 3, 0, 2);
    b_kv_u32(&b, "x\ny\r", 1);
    b_kv_u32(&b, "x\ny\r", 2);
    expect_fail("duplicate odd key", b.p, b.n, TERN_EFORMAT, "got 'x?y?' twice");
    b.n = 0;
    b_hdr(&b, 3, 0, 2);
    b_kv_u32(&b, "same", 1);
    b_kv_u32(&b, "same.", 2); /* a prefix is not a duplicate */
    g = expect_ok("near-duplicate keys", b.p, b.n);
    if (g) tern_gguf_close(g);

    /* truncation inside a scalar names the key */
    kv_file(&b, 1, "ctx", TERN_GGUF_UINT64);
    b_u32(&b, 7);
    expect_fail("short scalar", b.p, b.n, TERN_EFORMAT, "metadata 'ctx': got 4 bytes left");
    b_free(&b);
}

static void test_tensor_corruptions(void)
{
    /* control: two valid tensors */
    tspec ok[] = {{"a", 2, {32, 2}, TERN_TYPE_F32, 0}, {"b", 1, {128}, TERN_TYPE_I2_S, 256}};
    bytes b = {0};
    size_t head = b_tensor_file(&b, ok, 2, 320);
    tern_gguf *g = expect_ok("tensor control", b.p, b.n);
    if (g) {
        const tern_gguf_tensor *t = tern_gguf_find_tensor(g, "b");
        CHECK(t && t->nbytes == 64 &&
              (const uint8_t *)t->data == b.p + 32 * ((head + 31) / 32) + 256);
        tern_gguf_close(g);
    }
    /* the header ends before a padding gap; a file cut there lacks the data section */
    CHECK(head % 32 != 0);
    expect_fail("data section start", b.p, head, TERN_EFORMAT, "data section start: got ");
    b_free(&b);

    tspec t1[1];
#define ONE(label, kw, data_bytes, ...)                                                            \
    do {                                                                                           \
        tspec one_ = __VA_ARGS__;                                                                  \
        t1[0] = one_;                                                                              \
        tensor_case(label, t1, 1, data_bytes, kw);                                                 \
    } while (0)
    ONE("type 2 (Q4_0)", "type: got 2, expected a known type", 128, {"w", 1, {32}, 2, 0});
    ONE("type 999", "unknown tensor type", 128, {"w", 1, {32}, 999, 0});
    ONE("type 37", "unknown tensor type", 128, {"w", 1, {32}, 37, 0});
    ONE("type 31", "unknown tensor type", 128, {"w", 1, {32}, 31, 0});
    ONE("n_dims 0", "tensor 'w' n_dims: got 0, expected 1..4", 128, {"w", 0, {0}, 0, 0});
    ONE("n_dims 5", "tensor 'w' n_dims: got 5, expected 1..4", 128,
        {"w", 5, {1, 1, 1, 1, 1}, 0, 0});
    ONE("n_dims huge", "n_dims: got 4294967295", 128, {"w", 0xFFFFFFFFu, {1}, 0, 0});
    ONE("ne 0", "tensor 'w' ne[1]: got 0", 128, {"w", 2, {32, 0}, 0, 0});
    ONE("ne huge", "tensor 'w' ne[0]: got 18446744073709551615", 128, {"w", 1, {UINT64_MAX}, 0, 0});
    ONE("element count", "tensor 'w' element count: got ", 128,
        {"w", 3, {UINT64_C(1) << 40, UINT64_C(1) << 40, UINT64_C(1) << 40}, 0, 0});
    ONE("element count 4d", "element count", 128,
        {"w", 4, {1 << 20, 1 << 20, 1 << 20, 1 << 20}, 0, 0});
    ONE("I2_S 192", "tensor 'w' element count: got 192, expected a multiple of 128", 256,
        {"w", 2, {64, 3}, TERN_TYPE_I2_S, 0});
    ONE("I2_S 100", "multiple of 128", 256, {"w", 1, {100}, TERN_TYPE_I2_S, 0});
    ONE("Q8_0 ne0 48", "tensor 'w' ne[0]: got 48, expected a multiple of the Q8_0 block size", 256,
        {"w", 2, {48, 2}, TERN_TYPE_Q8_0, 0});
    ONE("TQ2_0 ne0 128", "TQ2_0 block size", 256, {"w", 2, {128, 2}, TERN_TYPE_TQ2_0, 0});
    ONE("TQ1_0 ne0 255", "TQ1_0 block size", 256, {"w", 1, {255}, TERN_TYPE_TQ1_0, 0});
    ONE("misaligned", "tensor 'w' offset: got 16, expected a multiple of 32 (misaligned)", 128,
        {"w", 1, {8}, TERN_TYPE_F32, 16});
    ONE("misaligned 1", "misaligned", 128, {"w", 1, {8}, TERN_TYPE_F32, 1});
    ONE("offset past end", "out of file", 64, {"w", 1, {8}, TERN_TYPE_F32, 64});
    ONE("offset far past end", "out of file", 64, {"w", 1, {8}, TERN_TYPE_F32, UINT64_C(1) << 40});
    /* offset + size wraps 64 bits: the check must not, and the message must not either */
    ONE("offset wraps", "offset 18446744073709551584", 64,
        {"w", 1, {8}, TERN_TYPE_F32, UINT64_MAX - 31});
    ONE("size past end", "tensor 'w' data: got 64 bytes at offset 0, expected within", 32,
        {"w", 1, {16}, TERN_TYPE_F32, 0});
    ONE("I2_S missing tail", "out of file", 64, {"w", 1, {256}, TERN_TYPE_I2_S, 0});
    ONE("no data at all", "out of file", 0, {"w", 1, {8}, TERN_TYPE_F32, 0});
#undef ONE

    /* a tensor name whose length field is huge: write it by hand */
    b.n = 0;
    b_hdr(&b, 3, 1, 0);
    b_u64(&b, UINT64_MAX);
    b_zeros(&b, 64);
    expect_fail("tensor name length", b.p, b.n, TERN_EFORMAT, "tensor 0 name: string length: got");
    b_free(&b);

    /* overlaps: partial, identical offsets, containment, and adjacency (valid) */
    tspec ov1[] = {{"a", 1, {32}, TERN_TYPE_F32, 0}, {"b", 1, {32}, TERN_TYPE_F32, 96}};
    tensor_case("overlap", ov1, 2, 256,
                "tensor 'b' data: got offset 96, expected >= 128 "
                "(overlaps tensor 'a')");
    tspec ov2[] = {{"a", 1, {8}, TERN_TYPE_F32, 32}, {"b", 1, {8}, TERN_TYPE_F32, 32}};
    tensor_case("same offset", ov2, 2, 256, "overlaps tensor");
    tspec ov3[] = {{"big", 1, {64}, TERN_TYPE_F32, 0},
                   {"x", 1, {8}, TERN_TYPE_F32, 64},
                   {"y", 1, {8}, TERN_TYPE_F32, 192}};
    tensor_case("contained", ov3, 3, 256, "overlaps tensor 'big'");
    tspec ov4[] = {{"late", 1, {8}, TERN_TYPE_F32, 128}, {"early", 1, {32}, TERN_TYPE_F32, 0}};
    b.n = 0;
    b_tensor_file(&b, ov4, 2, 160);
    g = expect_ok("adjacent out of order", b.p, b.n);
    if (g) tern_gguf_close(g);
    b_free(&b);

    /* duplicate tensor names */
    tspec dup[] = {{"w", 1, {8}, TERN_TYPE_F32, 0},
                   {"v", 1, {8}, TERN_TYPE_F32, 32},
                   {"w", 1, {8}, TERN_TYPE_F32, 64}};
    tensor_case("duplicate tensor", dup, 3, 96,
                "tensor name: got 'w' twice, expected unique names");

    /* a tensor after general.alignment = 64 must honour 64, not the default 32 */
    b.n = 0;
    b_hdr(&b, 3, 1, 1);
    b_kv_u32(&b, "general.alignment", 64);
    b_str(&b, "w");
    b_u32(&b, 1);
    b_u64(&b, 8);
    b_u32(&b, TERN_TYPE_F32);
    b_u64(&b, 32);
    b_align(&b, 64);
    b_zeros(&b, 128);
    expect_fail("misaligned for 64", b.p, b.n, TERN_EFORMAT, "expected a multiple of 64");
    b_free(&b);
}

/* ---- open() paths, type facts and writer argument errors ---- */

static void alarm_handler(int sig)
{
    (void)sig;
    static const char msg[] = "test_gguf: timed out (tern_gguf_open blocked?)\n";
    ssize_t r = write(2, msg, sizeof msg - 1);
    (void)r;
    _exit(1);
}

static void test_open_paths(void)
{
    tern_gguf *g = NULL;
    tern_status st = {0};
    const char *missing = tmp_path("does-not-exist.gguf");
    CHECK(tern_gguf_open(&g, missing, &st) == TERN_EIO && g == NULL);
    CHECKF(msg_ok(st.msg) && strstr(st.msg, missing), "missing file: '%s'", st.msg);
    CHECK(tern_gguf_open(&g, tern_test_tmpdir(), &st) == TERN_EIO && g == NULL);
    CHECKF(msg_ok(st.msg), "directory: '%s'", st.msg);

    /* a FIFO must be refused at once, not block open() waiting for a writer */
    const char *fifo = tmp_path("fifo.gguf");
    unlink(fifo);
    if (mkfifo(fifo, 0600) == 0) {
        signal(SIGALRM, alarm_handler);
        alarm(20);
        CHECK(tern_gguf_open(&g, fifo, &st) == TERN_EIO && g == NULL);
        alarm(0);
        CHECKF(msg_ok(st.msg), "fifo: '%s'", st.msg);
        unlink(fifo);
    }
}

static void test_type_facts(void)
{
    uint64_t n = 0;
    CHECK(tern_ggml_nbytes(TERN_TYPE_F32, 7, 21, &n) && n == 84);
    CHECK(tern_ggml_nbytes(TERN_TYPE_F16, 3, 3, &n) && n == 6);
    CHECK(tern_ggml_nbytes(TERN_TYPE_BF16, 3, 6, &n) && n == 12);
    CHECK(tern_ggml_nbytes(TERN_TYPE_Q8_0, 64, 128, &n) && n == 4 * 34);
    CHECK(!tern_ggml_nbytes(TERN_TYPE_Q8_0, 33, 66, &n));
    CHECK(tern_ggml_nbytes(TERN_TYPE_Q6_K, 2560, 2560 * 2, &n) && n == 20 * 210);
    CHECK(!tern_ggml_nbytes(TERN_TYPE_Q6_K, 3200, 3200, &n)); /* 3200 % 256 != 0 */
    CHECK(tern_type_is_quant(TERN_TYPE_Q8_0) && tern_type_is_quant(TERN_TYPE_Q6_K));
    CHECK(!tern_type_is_quant(TERN_TYPE_F16) && !tern_type_is_quant((tern_ggml_type)2));
    CHECK(tern_ggml_nbytes(TERN_TYPE_TQ1_0, 256, 512, &n) && n == 108);
    CHECK(tern_ggml_nbytes(TERN_TYPE_TQ2_0, 256, 256, &n) && n == 66);
    CHECK(!tern_ggml_nbytes(TERN_TYPE_TQ2_0, 128, 256, &n));
    /* I2_S: n/4 + 32 (spec 3.4), e.g. a 2560x2560 projection */
    CHECK(tern_ggml_nbytes(TERN_TYPE_I2_S, 2560, 2560 * 2560, &n) && n == 2560 * 640 + 32);
    CHECK(tern_ggml_nbytes(TERN_TYPE_I2_S, 128, 128, &n) && n == 64);
    CHECK(!tern_ggml_nbytes(TERN_TYPE_I2_S, 64, 64, &n));
    CHECK(!tern_ggml_nbytes((tern_ggml_type)2, 32, 32, &n));
    CHECK(strcmp(tern_ggml_type_name(TERN_TYPE_I2_S), "I2_S") == 0);
    CHECK(strcmp(tern_ggml_type_name(TERN_TYPE_TQ1_0), "TQ1_0") == 0);
    CHECK(tern_ggml_type_name((tern_ggml_type)2) == NULL);
    /* the traits table: the ternary types are exactly I2_S, TQ1_0, TQ2_0; the type list in
     * messages names every known id and only those */
    int known = 0;
    char want[160] = "";
    for (int t = -1; t <= TERN_TYPE_ID_COUNT; t++) {
        const tern_type_traits *tr = tern_type_traits_of((tern_ggml_type)t);
        bool tern = t == TERN_TYPE_I2_S || t == TERN_TYPE_TQ1_0 || t == TERN_TYPE_TQ2_0;
        CHECKF(tern_type_is_ternary((tern_ggml_type)t) == tern, "type %d", t);
        if (!tr) continue;
        known++;
        CHECK(tr->blck >= 1 && tr->bytes >= 1 && tr->ternary == tern);
        CHECK(tr->is_float == (t == TERN_TYPE_F32 || t == TERN_TYPE_F16 || t == TERN_TYPE_BF16));
        snprintf(want + strlen(want), sizeof want - strlen(want), "%s%s %d", known > 1 ? ", " : "",
                 tr->name, t);
    }
    CHECK(known == 8);
    CHECKF(strcmp(tern_type_list(), want) == 0, "'%s' vs '%s'", tern_type_list(), want);
    CHECK(strcmp(tern_gguf_vtype_name(TERN_GGUF_FLOAT64), "float64") == 0);
    CHECK(strcmp(tern_gguf_vtype_name((tern_gguf_vtype)99), "unknown") == 0);
    tern_gguf_str s = {"abc", 3};
    CHECK(tern_gguf_str_eq(s, "abc") && !tern_gguf_str_eq(s, "ab") && !tern_gguf_str_eq(s, "abcd"));
    tern_gguf_str e = {NULL, 0};
    CHECK(tern_gguf_str_eq(e, ""));
}

static void test_writer_errors(void)
{
    tern_gguf_writer *w = tern_gguf_writer_new();
    CHECK(w != NULL);
    if (!w) return;
    tern_status st = {0};
    uint64_t ne[5] = {32, 1, 1, 1, 1};
    float data[32] = {0};
    CHECK(tern_gguf_writer_add_tensor(w, "x", TERN_TYPE_F32, 0, ne, data, &st) == TERN_EINVAL);
    CHECKF(strchr(st.msg, '\n') == NULL && strstr(st.msg, "n_dims: got 0"), "'%s'", st.msg);
    CHECK(tern_gguf_writer_add_tensor(w, "x", TERN_TYPE_F32, 5, ne, data, &st) == TERN_EINVAL);
    uint64_t ne30[1] = {30};
    CHECK(tern_gguf_writer_add_tensor(w, "q", TERN_TYPE_Q8_0, 1, ne30, data, &st) == TERN_EINVAL);
    CHECKF(strstr(st.msg, "'q'") && strstr(st.msg, "got "), "'%s'", st.msg);
    CHECK(tern_gguf_writer_add_scalar(w, "s", TERN_GGUF_STRING, "x") == TERN_EINVAL);
    CHECK(tern_gguf_writer_add_arr(w, "s", TERN_GGUF_ARRAY, data, 1) == TERN_EINVAL);
    CHECK(tern_gguf_writer_write(w, tmp_path("no/such/dir/x.gguf"), &st) == TERN_EIO);
    CHECK(strchr(st.msg, '\n') == NULL);
    tern_gguf_writer_free(w);
    tern_gguf_writer_free(NULL);
    tern_gguf_close(NULL);
}

/* Dropping copied-out pages: a file mapping reads them back unchanged; memory the caller
 * owns (tern_gguf_open_memory) is never discarded; the checksum does not change. */
static void test_drop_pages(void)
{
    enum { N = 65536 }; /* 256 KiB: many whole pages */
    float *v = malloc(N * sizeof(float));
    for (int i = 0; i < N; i++) v[i] = (float)i * 0.5f - 7.0f;
    tern_status st = {0};
    tern_gguf_writer *w = tern_gguf_writer_new();
    uint64_t ne[1] = {N};
    CHECK(tern_gguf_writer_add_tensor(w, "v", TERN_TYPE_F32, 1, ne, v, &st) == TERN_OK);
    const char *path = tmp_path("drop.gguf");
    CHECK(tern_gguf_writer_write(w, path, &st) == TERN_OK);
    tern_gguf_writer_free(w);
    tern_gguf *g = NULL;
    CHECK(tern_gguf_open(&g, path, &st) == TERN_OK);
    size_t size = g ? (size_t)tern_gguf_file_size(g) : 0;
    uint8_t *mem = malloc(size ? size : 1);
    FILE *fp = fopen(path, "rb");
    CHECK(fp && fread(mem, 1, size, fp) == size);
    if (fp) fclose(fp);
    tern_gguf *gm = g ? expect_ok("drop in memory", mem, size) : NULL;
    tern_gguf *both[2] = {g, gm};
    uint64_t sum = g ? tern_gguf_checksum(g) : 0;
    for (int k = 0; k < 2; k++) {
        if (!both[k]) continue;
        const tern_gguf_tensor *t = tern_gguf_find_tensor(both[k], "v");
        CHECK(t && t->nbytes == N * sizeof(float));
        if (!t) continue;
        tern_gguf_drop_pages(both[k], t->data, t->nbytes);
        CHECKF(memcmp(t->data, v, N * sizeof(float)) == 0, "%s: data changed after dropping pages",
               k ? "memory" : "file");
        CHECK(tern_gguf_checksum(both[k]) == sum);
        tern_gguf_drop_pages(both[k], (const uint8_t *)t->data - 4096, 1u << 30); /* clipped */
        CHECK(memcmp(t->data, v, N * sizeof(float)) == 0);
    }
    tern_gguf_close(gm);
    tern_gguf_close(g);
    free(mem);
    free(v);
}

int main(void)
{
    test_type_facts();
    test_gpt2_fixture();
    test_roundtrip();
    test_drop_pages();
    test_alignment64();
    test_truncations();
    test_header_corruptions();
    test_kv_corruptions();
    test_tensor_corruptions();
    test_open_paths();
    test_writer_errors();
    return tern_test_finish("test_gguf");
}
