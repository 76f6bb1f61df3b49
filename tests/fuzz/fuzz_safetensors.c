/* fuzz_safetensors.c: libFuzzer target for the safetensors reader.
 *
 * A rejected input must carry the one-line "safetensors: NAME: ... got X, expected Y" error;
 * an accepted one is walked completely: every tensor's first and last data byte (so ASan sees
 * any pointer that leaves the input), and the reader's promises are asserted (sorted unique
 * names that find themselves, byte counts equal to elements x dtype size, tensors tiling the
 * data section). A broken promise aborts, which libFuzzer reports like a crash.
 */
#include "ternpipe/safetensors.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static volatile uint64_t sink;

#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_safetensors: broken promise: %s (line %d)\n", #cond, __LINE__);  \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    if (size) memcpy(buf, data, size);
    tern_st *s = NULL;
    tern_status st;
    memset(&st, 0, sizeof st);
    tern_code rc = tern_st_open_memory(&s, buf, size, "fuzz.st", &st);
    if (rc != TERN_OK) {
        REQUIRE(s == NULL && st.code == rc);
        if (rc == TERN_EFORMAT) {
            REQUIRE(strncmp(st.msg, "safetensors: fuzz.st: ", 22) == 0);
            REQUIRE(strstr(st.msg, ": got ") != NULL && strstr(st.msg, ", expected ") != NULL);
            REQUIRE(strchr(st.msg, '\n') == NULL && strchr(st.msg, '\r') == NULL);
        }
        free(buf);
        return 0;
    }
    uint64_t n = tern_st_n_tensors(s), total = 0, hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | buf[i];
    REQUIRE(size >= 8 && hl <= size - 8);
    for (uint64_t i = 0; i < n; i++) {
        const tern_st_tensor *t = tern_st_tensor_at(s, i);
        REQUIRE(t->name && t->name[0]);
        if (i) REQUIRE(strcmp(tern_st_tensor_at(s, i - 1)->name, t->name) < 0);
        if (i < 64) REQUIRE(tern_st_find(s, t->name) == t);
        REQUIRE(t->dtype >= 0 && t->dtype < TERN_ST_DTYPE_COUNT && t->n_dims <= TERN_ST_MAX_DIMS);
        uint64_t el = 1;
        for (uint32_t d = 0; d < t->n_dims; d++) {
            REQUIRE(el == 0 || t->shape[d] == 0 || el <= UINT64_MAX / t->shape[d]);
            el *= t->shape[d];
        }
        REQUIRE(el == t->n_elements && t->nbytes == el * tern_st_dtype_size(t->dtype));
        const uint8_t *p = t->data;
        REQUIRE(p >= buf + 8 + hl && (uint64_t)(p - buf) == t->offset);
        REQUIRE(t->nbytes <= size - (size_t)(p - buf));
        if (t->nbytes) sink += p[0] + p[t->nbytes - 1];
        if (t->n_elements &&
            (t->dtype == TERN_ST_F32 || t->dtype == TERN_ST_F16 || t->dtype == TERN_ST_BF16)) {
            float f[2];
            tern_st_read_f32(t, 0, 1, f);
            tern_st_read_f32(t, t->n_elements - 1, 1, f + 1);
            uint32_t u[2];
            memcpy(u, f, sizeof u);
            sink ^= u[0] ^ u[1];
        }
        total += t->nbytes;
    }
    REQUIRE(total == size - 8 - hl); /* the tiling promise */
    REQUIRE(tern_st_tensor_at(s, n) == NULL);
    sink += (uintptr_t)tern_st_metadata(s, "format");
    tern_st_close(s);
    free(buf);
    return 0;
}
