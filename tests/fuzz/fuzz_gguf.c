/* fuzz_gguf.c: libFuzzer target for the GGUF reader.
 *
 * Opens the input with tern_gguf_open_memory. A rejected input must carry the one-line
 * "gguf: NAME: WHAT: got X, expected Y" error; an accepted one is walked completely (every
 * string byte range, every scalar array element, every tensor's first and last data byte)
 * so ASan sees any pointer the reader handed out that leaves the input, and the reader's
 * promises (unique names, aligned in-bounds tensor data, sizes per type) are asserted:
 * a broken promise aborts, which libFuzzer reports like a crash.
 *
 * The input is copied to an exact-size heap buffer first: libFuzzer's own buffer is also
 * exact-size, but the copy keeps that property independent of the driver.
 */
#include "ternpipe/gguf.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LOOKUPS 64

static volatile uint64_t sink; /* keeps the reads from being optimized away */

#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_gguf: broken promise: %s (line %d)\n", #cond, __LINE__);         \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static void touch_str(tern_gguf_str s)
{
    if (s.len) sink += (uint8_t)s.ptr[0] + (uint8_t)s.ptr[s.len - 1];
}

static void walk_value(const tern_gguf_value *v, int depth)
{
    /* the reader bounds nesting; a deeper value means the bound was not enforced */
    REQUIRE(depth <= 16);
    REQUIRE(v->type >= 0 && v->type < TERN_GGUF_VTYPE_COUNT);
    sink += (uintptr_t)tern_gguf_vtype_name(v->type);
    switch (v->type) {
    case TERN_GGUF_STRING:
        touch_str(v->v.str);
        break;
    case TERN_GGUF_ARRAY: {
        tern_gguf_vtype et = v->v.arr.type;
        REQUIRE(et >= 0 && et < TERN_GGUF_VTYPE_COUNT);
        if (et == TERN_GGUF_STRING || et == TERN_GGUF_ARRAY) {
            for (uint64_t i = 0; i < v->v.arr.n; i++) {
                REQUIRE(v->v.arr.items[i].type == et);
                walk_value(&v->v.arr.items[i], depth + 1);
            }
        } else if (et == TERN_GGUF_FLOAT32 || et == TERN_GGUF_FLOAT64) {
            for (uint64_t i = 0; i < v->v.arr.n; i++) {
                /* bits, not a conversion: NaN or huge values must not matter here */
                double d = tern_gguf_arr_float(v, i);
                uint64_t bits;
                memcpy(&bits, &d, sizeof bits);
                sink ^= bits;
            }
        } else {
            for (uint64_t i = 0; i < v->v.arr.n; i++) {
                int64_t x = tern_gguf_arr_int(v, i);
                if (et == TERN_GGUF_BOOL) REQUIRE(x == 0 || x == 1);
                sink ^= (uint64_t)x;
            }
        }
        break;
    }
    case TERN_GGUF_BOOL:
        REQUIRE(v->v.u64 <= 1);
        break;
    default:
        sink ^= v->v.u64;
        break;
    }
}

/* NUL-terminated copy of a name for the lookup functions; false when the name has an
 * embedded NUL or is too long (a lookup by C string cannot name it). */
static bool cstr(tern_gguf_str s, char *buf, size_t cap)
{
    if (s.len >= cap || (s.len && memchr(s.ptr, '\0', s.len))) return false;
    if (s.len) memcpy(buf, s.ptr, s.len);
    buf[s.len] = '\0';
    return true;
}

static void check_getters(const tern_gguf *g, const char *key, const tern_gguf_value *v)
{
    tern_status st;
    uint32_t u;
    int32_t i;
    float f;
    bool b;
    tern_gguf_str s;
    const tern_gguf_value *arr;
    tern_code rc[6] = {
        tern_gguf_get_u32(g, key, &u, &st),
        tern_gguf_get_i32(g, key, &i, &st),
        tern_gguf_get_f32(g, key, &f, &st),
        tern_gguf_get_bool(g, key, &b, &st),
        tern_gguf_get_str(g, key, &s, &st),
        tern_gguf_get_arr(g, key, v->type == TERN_GGUF_ARRAY ? v->v.arr.type : TERN_GGUF_UINT8,
                          &arr, &st),
    };
    /* a string key always reads back as itself */
    if (v->type == TERN_GGUF_STRING)
        REQUIRE(rc[4] == TERN_OK && s.ptr == v->v.str.ptr && s.len == v->v.str.len);
    if (v->type == TERN_GGUF_ARRAY) REQUIRE(rc[5] == TERN_OK && arr == v);
    if (v->type == TERN_GGUF_BOOL) REQUIRE(rc[3] == TERN_OK && b == (v->v.u64 != 0));
    sink += (uint64_t)rc[0] + (uint64_t)rc[1] + (uint64_t)rc[2];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    if (size) memcpy(buf, data, size);

    tern_gguf *g = NULL;
    tern_status st;
    memset(&st, 0, sizeof st);
    tern_code rc = tern_gguf_open_memory(&g, buf, size, "fuzz.gguf", &st);
    if (rc != TERN_OK) {
        REQUIRE(g == NULL);
        REQUIRE(st.code == rc);
        /* the error contract: one line, named file, a got/expected pair (allocation
         * failures have their own wording and are not format errors) */
        if (rc == TERN_EFORMAT) {
            REQUIRE(strncmp(st.msg, "gguf: fuzz.gguf: ", 17) == 0);
            REQUIRE(strstr(st.msg, ": got ") != NULL);
            REQUIRE(strstr(st.msg, ", expected ") != NULL);
            REQUIRE(strchr(st.msg, '\n') == NULL && strchr(st.msg, '\r') == NULL);
        }
        free(buf);
        return 0;
    }
    REQUIRE(g != NULL);
    uint32_t align = tern_gguf_alignment(g);
    REQUIRE(align != 0 && (align & (align - 1)) == 0);
    REQUIRE(tern_gguf_version(g) == 2 || tern_gguf_version(g) == 3);
    REQUIRE(tern_gguf_file_size(g) == size);

    char name[256];
    for (uint64_t i = 0; i < tern_gguf_n_kv(g); i++) {
        const tern_gguf_kv *kv = tern_gguf_kv_at(g, i);
        touch_str(kv->key);
        walk_value(&kv->value, 0);
        /* lookups are linear: checking the first LOOKUPS keeps an input with thousands of
         * keys from turning into a quadratic slow unit */
        if (i < LOOKUPS && cstr(kv->key, name, sizeof name)) {
            /* keys are unique, so the lookup finds this very value */
            REQUIRE(tern_gguf_find(g, name) == &kv->value);
            check_getters(g, name, &kv->value);
        }
    }
    REQUIRE(tern_gguf_kv_at(g, tern_gguf_n_kv(g)) == NULL);

    for (uint64_t i = 0; i < tern_gguf_n_tensors(g); i++) {
        const tern_gguf_tensor *t = tern_gguf_tensor_at(g, i);
        touch_str(t->name);
        REQUIRE(t->n_dims >= 1 && t->n_dims <= TERN_GGUF_MAX_DIMS);
        REQUIRE(tern_ggml_type_name(t->type) != NULL);
        uint64_t n_el = 1, nbytes = 0;
        for (uint32_t d = 0; d < TERN_GGUF_MAX_DIMS; d++) {
            REQUIRE(t->ne[d] >= 1);
            REQUIRE(n_el <= UINT64_MAX / t->ne[d]);
            n_el *= t->ne[d];
        }
        REQUIRE(tern_ggml_nbytes(t->type, t->ne[0], n_el, &nbytes) && nbytes == t->nbytes);
        REQUIRE(t->nbytes > 0 && t->offset % align == 0);
        const uint8_t *p = t->data;
        REQUIRE(p >= buf && (uint64_t)(p - buf) <= size && t->nbytes <= size - (size_t)(p - buf));
        REQUIRE((uint64_t)(p - buf) % align == 0);
        sink += p[0] + p[t->nbytes - 1];
        if (i < LOOKUPS && cstr(t->name, name, sizeof name))
            REQUIRE(tern_gguf_find_tensor(g, name) == t);
    }
    REQUIRE(tern_gguf_tensor_at(g, tern_gguf_n_tensors(g)) == NULL);
    tern_gguf_close(g);
    free(buf);
    return 0;
}
