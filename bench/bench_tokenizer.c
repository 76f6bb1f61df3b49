/* bench_tokenizer.c: tokenizer throughput (not a test). Usage: bench_tokenizer VOCAB.gguf
 * TEXT [REPEATS]; prints the median MB/s of encoding the whole text on one thread. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ternpipe/tokenizer.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench_tokenizer VOCAB.gguf TEXT [REPEATS]\n");
        return 2;
    }
    int reps = argc > 3 ? atoi(argv[3]) : 5;
    if (reps < 1 || reps > 100) reps = 5;
    tern_status st = {0};
    tern_gguf *g;
    tern_tokenizer *tok;
    if (tern_gguf_open(&g, argv[1], &st) || tern_tokenizer_load(&tok, g, &st)) {
        fprintf(stderr, "%s\n", st.msg);
        return 1;
    }
    FILE *f = fopen(argv[2], "rb");
    if (!f) return 1;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)n);
    if (!text || fread(text, 1, (size_t)n, f) != (size_t)n) return 1;
    fclose(f);
    double t[100];
    size_t n_tok = 0;
    for (int r = 0; r < reps; r++) {
        tern_tokens ids = {0};
        double t0 = now();
        if (tern_tokenizer_encode(tok, text, (size_t)n, 0, &ids, &st)) {
            fprintf(stderr, "%s\n", st.msg);
            return 1;
        }
        t[r] = now() - t0;
        n_tok = ids.n;
        tern_tokens_free(&ids);
    }
    qsort(t, (size_t)reps, sizeof *t, cmp);
    double med = t[reps / 2];
    printf("tokenizer: %ld bytes -> %zu tokens, median %.3f s over %d runs: %.1f MB/s\n", n, n_tok,
           med, reps, (double)n / med / 1e6);
    free(text);
    tern_tokenizer_free(tok);
    tern_gguf_close(g);
    return 0;
}
