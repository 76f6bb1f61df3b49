/* cmd_plan.c: `ternpipe plan`: the pipeline plan the engine would make for N ranks (layers and
 * LM head rows per rank, src/pipeline/plan.h) and what its cost model predicts, without MPI or
 * loading weights: weights read per token by the slowest stage, the pipeline speed-up over one
 * rank for many streams (total bytes / slowest stage), and, given a per-rank read bandwidth,
 * tok/s for one stream (every stage in turn) and for many (the slowest stage). Beside it, the
 * same for the head kept on rank 0 (the plan before the head was split). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline/plan.h"
#include "ternpipe/gguf.h"
#include "ternpipe/model.h"
#include "tools/commands.h"

static int usage(void)
{
    fprintf(stderr, "usage: ternpipe plan [-m FILE | --shape 2b4t] [--ranks N | --ranks A..B] "
                    "[--split SPEC] [--head-type f16|q8_0] [--bw GB/s] [--describe]\n");
    return 2;
}

int tern_cmd_plan(int argc, char **argv)
{
    const char *path = NULL, *shape = NULL, *split = "auto";
    int lo = 2, hi = 8;
    double bw = 20.0;
    bool describe = false;
    tern_head_type ht = TERN_HEAD_F16;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has = i + 1 < argc;
        if (!strcmp(a, "-m") && has)
            path = argv[++i];
        else if (!strcmp(a, "--shape") && has)
            shape = argv[++i];
        else if (!strcmp(a, "--split") && has)
            split = argv[++i];
        else if (!strcmp(a, "--bw") && has)
            bw = atof(argv[++i]);
        else if (!strcmp(a, "--describe"))
            describe = true;
        else if (!strcmp(a, "--head-type") && has) {
            const char *v = argv[++i];
            if (!strcmp(v, "q8_0"))
                ht = TERN_HEAD_Q8_0;
            else if (strcmp(v, "f16"))
                return usage();
        } else if (!strcmp(a, "--ranks") && has) {
            const char *v = argv[++i];
            if (sscanf(v, "%d..%d", &lo, &hi) != 2) {
                if (sscanf(v, "%d", &lo) != 1) return usage();
                hi = lo;
            }
        } else {
            return usage();
        }
    }
    tern_hparams hp = {0};
    tern_status st = {0};
    if (shape) {
        if (strcmp(shape, "2b4t")) return usage();
        hp = (tern_hparams){.n_vocab = 128256,
                            .d = 2560,
                            .n_layer = 30,
                            .n_ff = 6912,
                            .n_head = 20,
                            .n_head_kv = 5,
                            .head_dim = 128};
    } else {
        if (!path) path = tern_default_model_path();
        tern_gguf *g = NULL;
        if (!path || tern_gguf_open(&g, path, &st) || tern_hparams_read(g, &hp, &st)) {
            fprintf(stderr, "ternpipe: %s\n", path ? st.msg : "no model (-m FILE)");
            tern_gguf_close(g);
            return 1;
        }
        tern_gguf_close(g);
    }
    if (lo < 1 || hi < lo || hi > 4096) return usage();
    tern_plan_costs c = {tern_plan_layer_cost(&hp), tern_plan_head_row_cost(&hp, ht)};
    double total = c.layer * hp.n_layer + c.head_row * hp.n_vocab;
    printf("model: %d layers, vocab %d; %.1f MB of weights read per token (layers %.1f, head "
           "%.1f); bandwidth %.1f GB/s per rank\n",
           hp.n_layer, hp.n_vocab, total / 1e6, c.layer * hp.n_layer / 1e6,
           c.head_row * hp.n_vocab / 1e6, bw);
    printf("%5s %14s %9s %12s %12s %14s %9s\n", "ranks", "slowest MB", "speed-up", "tok/s 1 str",
           "tok/s many", "head-on-r0 MB", "speed-up");
    for (int n = lo; n <= hi; n++) {
        tern_plan p, e;
        if (tern_plan_init(&p, n, &hp, &st) || tern_plan_init(&e, n, &hp, &st)) return 1;
        if (tern_plan_make(split, &c, NULL, &p, &st)) {
            fprintf(stderr, "ternpipe: %d ranks: %s\n", n, st.msg);
            tern_plan_free(&p), tern_plan_free(&e);
            continue;
        }
        double slow = tern_plan_stage_costs(&p, &c, NULL), slow_e = 0;
        bool have_e = n <= hp.n_layer + 1 && !tern_plan_make("even", &c, NULL, &e, &st);
        if (have_e) slow_e = tern_plan_stage_costs(&e, &c, NULL);
        printf("%5d %14.1f %9.2f %12.1f %12.1f", n, slow / 1e6, total / slow, bw * 1e9 / total,
               bw * 1e9 / slow);
        if (have_e)
            printf(" %14.1f %9.2f\n", slow_e / 1e6, total / slow_e);
        else
            printf(" %14s %9s\n", "-", "-");
        if (describe) {
            size_t cap = 64 + (size_t)n * 64;
            char *line = malloc(cap);
            if (line) {
                tern_plan_describe(&p, line, cap);
                printf("      %s\n", line);
                free(line);
            }
        }
        tern_plan_free(&p), tern_plan_free(&e);
    }
    return 0;
}
