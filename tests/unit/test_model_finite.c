/* test_model_finite.c: a NaN or an Inf in any F16/F32 tensor of the default model (norms,
 * embedding, the head rows) fails the load with one line naming the tensor and the element
 * (issue 10, item 9); a clean copy still loads, and a head slice checks only its own rows. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "ternpipe/gguf.h"
#include "ternpipe/kernels.h"
#include "ternpipe/model.h"

static unsigned char *g_model;
static size_t g_len;

/* Loads a copy of the model with element `at` of tensor `name` set to the bits of `value`
 * (4 bytes for F32, 2 for F16); returns the load's code and its message in msg. */
static tern_code load_patched(const char *name, uint64_t at, uint32_t value, const char *file,
                              const tern_model_opts *mo, char *msg, size_t cap)
{
    unsigned char *buf = malloc(g_len);
    CHECK(buf != NULL);
    if (!buf) return TERN_ENOMEM;
    memcpy(buf, g_model, g_len);
    tern_status st = {0};
    tern_gguf *g = NULL;
    tern_code rc = tern_gguf_open_memory(&g, buf, g_len, file, &st);
    CHECKF(rc == TERN_OK, "%s", st.msg);
    if (rc) {
        free(buf);
        return rc;
    }
    if (name) {
        const tern_gguf_tensor *t = tern_gguf_find_tensor(g, name);
        CHECKF(t != NULL, "no tensor %s", name);
        if (t) {
            unsigned char *p = (unsigned char *)t->data;
            if (t->type == TERN_TYPE_F32) {
                CHECK(at * 4 + 4 <= t->nbytes);
                memcpy(p + at * 4, &value, 4);
            } else {
                uint16_t h = (uint16_t)value;
                CHECK(t->type == TERN_TYPE_F16 && at * 2 + 2 <= t->nbytes);
                memcpy(p + at * 2, &h, 2);
            }
        }
    }
    tern_model *m = NULL;
    rc = tern_model_load(&m, g, mo, &st);
    snprintf(msg, cap, "%s", rc ? st.msg : "");
    tern_model_free(m);
    tern_gguf_close(g);
    free(buf);
    return rc;
}

static void expect_error(const char *name, uint64_t at, uint32_t value, const tern_model_opts *mo,
                         const char *want)
{
    char msg[512];
    tern_code rc = load_patched(name, at, value, "tiny-patched.gguf", mo, msg, sizeof msg);
    CHECKF(rc == TERN_EFORMAT, "%s[%llu]: got code %d (%s)", name, (unsigned long long)at, rc, msg);
    CHECKF(!strcmp(msg, want), "message: got '%s', expected '%s'", msg, want);
}

int main(void)
{
    tern_kernels_init();
    const char *src = getenv("TERN_SOURCE_DIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/models/tinystories-bitnet.gguf", src ? src : ".");
    g_model = tern_test_read_file(path, &g_len);
    CHECKF(g_model != NULL, "cannot read %s", path);
    if (!g_model) return tern_test_finish("test_model_finite");

    const tern_model_opts all = {.l0 = 0, .l1 = -1, .embed = true, .head = true};
    char msg[512];
    CHECKF(load_patched(NULL, 0, 0, "tiny.gguf", &all, msg, sizeof msg) == TERN_OK, "%s", msg);

    expect_error("output_norm.weight", 17, 0x7fc00000u, &all,
                 "model: tiny-patched.gguf: tensor 'output_norm.weight': got NaN at element 17, "
                 "expected finite values");
    expect_error("blk.3.ffn_sub_norm.weight", 1000, 0xff800000u, &all,
                 "model: tiny-patched.gguf: tensor 'blk.3.ffn_sub_norm.weight': got Inf at "
                 "element 1000, expected finite values");
    expect_error("blk.0.attn_norm.weight", 0, 0x7f800000u, &all,
                 "model: tiny-patched.gguf: tensor 'blk.0.attn_norm.weight': got Inf at element "
                 "0, expected finite values");
    /* F16: the embedding (tied head), last row */
    expect_error("token_embd.weight", 384u * 4095u + 5u, 0x7c00u, &all,
                 "model: tiny-patched.gguf: tensor 'token_embd.weight': got Inf at element "
                 "1572485, expected finite values");
    expect_error("token_embd.weight", 0, 0xfe01u, &all,
                 "model: tiny-patched.gguf: tensor 'token_embd.weight': got NaN at element 0, "
                 "expected finite values");

    /* a head rank without the embedding copies rows [2048, 4096) only: the index stays the
     * tensor's, and a bad row outside the slice is another rank's to report */
    const tern_model_opts head = {
        .l0 = 6, .l1 = 6, .head = true, .head_v0 = 2048, .head_v1 = 4096, .final_norm = true};
    expect_error("token_embd.weight", 384u * 3000u + 7u, 0x7c00u, &head,
                 "model: tiny-patched.gguf: tensor 'token_embd.weight': got Inf at element "
                 "1152007, expected finite values");
    CHECKF(load_patched("token_embd.weight", 384u * 100u, 0x7c00u, "tiny-patched.gguf", &head, msg,
                        sizeof msg) == TERN_OK,
           "%s", msg);
    /* a large finite F16 (65504) and a subnormal are fine */
    CHECKF(load_patched("token_embd.weight", 3, 0x7bffu, "tiny-patched.gguf", &all, msg,
                        sizeof msg) == TERN_OK,
           "%s", msg);
    CHECKF(load_patched("token_embd.weight", 4, 0x0001u, "tiny-patched.gguf", &all, msg,
                        sizeof msg) == TERN_OK,
           "%s", msg);

    /* a file on disk names its path */
    {
        unsigned char *buf = malloc(g_len);
        CHECK(buf != NULL);
        if (buf) {
            memcpy(buf, g_model, g_len);
            tern_status st = {0};
            tern_gguf *g = NULL;
            CHECK(tern_gguf_open_memory(&g, buf, g_len, "x", &st) == TERN_OK);
            const tern_gguf_tensor *t = g ? tern_gguf_find_tensor(g, "output_norm.weight") : NULL;
            CHECK(t != NULL);
            size_t off = t ? (size_t)((const unsigned char *)t->data - buf) : 0;
            tern_gguf_close(g);
            uint32_t nan = 0x7fc00000u;
            memcpy(buf + off + 17 * 4, &nan, 4);
            char fpath[4200];
            snprintf(fpath, sizeof fpath, "%s/nan.gguf", tern_test_tmpdir());
            FILE *fp = fopen(fpath, "wb");
            CHECK(fp != NULL);
            if (fp) {
                CHECK(fwrite(buf, 1, g_len, fp) == g_len);
                fclose(fp);
            }
            free(buf);
            CHECK(tern_gguf_open(&g, fpath, &st) == TERN_OK);
            tern_model *m = NULL;
            tern_code rc = g ? tern_model_load(&m, g, &all, &st) : TERN_EIO;
            char want[4400];
            snprintf(want, sizeof want,
                     "model: %s: tensor 'output_norm.weight': got NaN at element 17, expected "
                     "finite values",
                     fpath);
            CHECKF(rc == TERN_EFORMAT && !strcmp(st.msg, want), "got '%s'", st.msg);
            tern_model_free(m);
            tern_gguf_close(g);
        }
    }
    free(g_model);
    return tern_test_finish("test_model_finite");
}
