/* harness.h: a minimal test harness. CHECK records a failure and continues; main() in each
 * test file calls the test functions and returns tern_test_finish(). */
#ifndef TERN_TEST_HARNESS_H
#define TERN_TEST_HARNESS_H

#include <stddef.h>
#include <stdio.h>

extern int tern_test_failures;
extern int tern_test_checks;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        tern_test_checks++;                                                                        \
        if (!(cond)) {                                                                             \
            tern_test_failures++;                                                                  \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
        }                                                                                          \
    } while (0)

#define CHECKF(cond, ...)                                                                          \
    do {                                                                                           \
        tern_test_checks++;                                                                        \
        if (!(cond)) {                                                                             \
            tern_test_failures++;                                                                  \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

/* Path of a fixture under ../shared/fixtures (or $TERN_FIXTURES); static buffer. */
const char *tern_test_fixture(const char *rel);
/* 1 when the fixture exists; otherwise prints a SKIP line naming it, marks the test as
 * skipped (tern_test_finish then returns 77, which ctest reports as skipped, unless a check
 * failed) and returns 0, so the caller leaves out what needs it. */
int tern_test_need(const char *rel);
/* A scratch directory for this test process (created on first use). */
const char *tern_test_tmpdir(void);
/* Reads a whole file; NULL on failure. Caller frees. */
unsigned char *tern_test_read_file(const char *path, size_t *len);
int tern_test_finish(const char *name);
/* ggml's dequantize_row_q8_0 / dequantize_row_q6_K (type: TERN_TYPE_Q8_0 or TERN_TYPE_Q6_K),
 * written in ggml's own loop order: a reference independent of tern_dequant_row's
 * per-element form. k is a multiple of the type's block. */
void tern_test_ggml_dequant(int type, const unsigned char *row, long long k, float *y);

#endif
