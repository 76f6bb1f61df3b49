/* harness.c: see harness.h. */
#include "harness.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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
