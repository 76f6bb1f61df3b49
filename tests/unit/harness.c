/* harness.c: see harness.h. */
#include "harness.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ternpipe/kernels.h"

int tern_test_failures = 0;
int tern_test_checks = 0;
static int g_skipped = 0;

const char *tern_test_fixture(const char *rel)
{
    static char buf[4096];
    const char *root = getenv("TERN_FIXTURES");
    if (!root || !*root) root = "../shared/fixtures";
    snprintf(buf, sizeof buf, "%s/%s", root, rel);
    return buf;
}

int tern_test_need(const char *rel)
{
    const char *path = tern_test_fixture(rel);
    if (access(path, R_OK) == 0) return 1;
    printf("SKIP: fixture %s is missing (set TERN_FIXTURES to the shared fixtures folder)\n", path);
    g_skipped = 1;
    return 0;
}

const char *tern_test_tmpdir(void)
{
    static char dir[256];
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "/tmp/ternpipe-test-%d", (int)getpid());
        mkdir(dir, 0700);
    }
    return dir;
}

unsigned char *tern_test_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = 0;
        *len = (size_t)n;
    }
    return buf;
}

int tern_test_finish(const char *name)
{
    printf("%s: %d checks, %d failed\n", name, tern_test_checks, tern_test_failures);
    if (tern_test_failures) return 1;
    return g_skipped ? 77 : 0;
}

void tern_test_ggml_dequant(int type, const unsigned char *b, long long k, float *y)
{
    if (type == TERN_TYPE_Q8_0) {
        for (long long i = 0; i < k / 32; i++, b += 34) {
            uint16_t h;
            memcpy(&h, b, 2);
            const float d = tern_f16_to_f32_1(h);
            for (int j = 0; j < 32; j++) *y++ = (float)(int8_t)b[2 + j] * d;
        }
        return;
    }
    for (long long i = 0; i < k / 256; i++, b += 210) {
        uint16_t h;
        memcpy(&h, b + 208, 2);
        const float d = tern_f16_to_f32_1(h);
        const uint8_t *ql = b, *qh = b + 128;
        const int8_t *sc = (const int8_t *)(b + 192);
        for (int n = 0; n < 256; n += 128) {
            for (int l = 0; l < 32; ++l) {
                int is = l / 16;
                const int8_t q1 = (int8_t)((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int8_t q2 = (int8_t)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int8_t q3 = (int8_t)((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int8_t q4 = (int8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l + 0] = d * sc[is + 0] * q1;
                y[l + 32] = d * sc[is + 2] * q2;
                y[l + 64] = d * sc[is + 4] * q3;
                y[l + 96] = d * sc[is + 6] * q4;
            }
            y += 128, ql += 64, qh += 32, sc += 8;
        }
    }
}
