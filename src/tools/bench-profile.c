/* bench-profile.c: `ternpipe bench --profile [-m FILE] [--threads N] [--out FILE]`: the stage
 * costs of this machine and model, for the simulator (`ternpipe simulate`) and scaling studies:
 * - one layer's forward pass per micro-batch size (PROF_LAYERS layers timed together, so
 *   their weights come from memory as in a slice), as decodes (n sequences of one token at
 *   position 16) and as prefill (one sequence of n tokens);
 * - the LM head per number of rows (the whole vocabulary; a slice costs its share of rows), the
 *   final norm and the embedding lookup per row;
 * - the sampler's fold of one full row, greedy and sampling;
 * - under mpirun, one hop between rank 0 and rank 1 for activation messages of the sizes a step
 *   sends, over the transport in use, with latency and bandwidth fitted.
 * Medians of repeated timings. JSON on stdout (or --out FILE). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ternpipe/gguf.h"
#include "ternpipe/kernels.h"
#include "ternpipe/model.h"
#include "ternpipe/rng.h"
#include "ternpipe/runtime.h"
#include "ternpipe/sampler.h"
#include "tools/bench.h"
#include "tools/commands.h"
#include "tools/run.h"

#define PROF_REPS 5
#define PROF_POS 16   /* context each decode attends to */
#define PROF_LAYERS 8 /* layers timed together (their weights exceed the caches) */

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static double med(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return v[n / 2];
}

static void print_list(FILE *f, const char *name, const double *v, int n, const char *fmt)
{
    fprintf(f, "\"%s\": [", name);
    for (int i = 0; i < n; i++) {
        fprintf(f, i ? ", " : "");
        fprintf(f, fmt, v[i]);
    }
    fprintf(f, "]");
}

int tern_bench_profile(int argc, char **argv)
{
    const char *path = NULL, *out_path = NULL;
    int n_threads = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--profile")) continue;
        if (!strcmp(argv[i], "-m") && i + 1 < argc)
            path = argv[++i];
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            n_threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--out") && i + 1 < argc)
            out_path = argv[++i];
        else {
            fprintf(stderr, "usage: ternpipe bench --profile [-m FILE] [--threads N] [--out F]\n");
            return 2;
        }
    }
    int rank = 0, size = 1;
    tern_status st = {0};
    if (tern_dist_init(&argc, &argv, &rank, &size, &st)) {
        fprintf(stderr, "ternpipe: %s\n", st.msg);
        return 1;
    }
    if (!path) path = tern_default_model_path();
    tern_gguf *g = NULL;
    tern_topo *topo = NULL;
    tern_pool *pool = NULL;
    tern_model *m = NULL;
    tern_ctx *c = NULL;
    float *x = NULL, *hx = NULL, *logits = NULL;
    int rc = 1;
    /* hops first: every rank takes part */
    enum { NH = 6 };
    static const int hop_tokens[NH] = {1, 4, 16, 64, 256, 512};
    size_t hop_floats[NH];
    double hop_s[NH] = {0};
    tern_hparams hp0 = {0};
    if (!path || tern_gguf_open(&g, path, &st) || tern_hparams_read(g, &hp0, &st)) {
        if (rank == 0) fprintf(stderr, "ternpipe: %s\n", path ? st.msg : "no model (-m FILE)");
        goto out;
    }
    for (int k = 0; k < NH; k++) hop_floats[k] = (size_t)hop_tokens[k] * (size_t)hp0.d;
    int have_hops = tern_hop_probe(hop_floats, NH, 20, hop_s) > 0;
    if (rank != 0) {
        rc = 0;
        goto out;
    }
    tern_kernels_init();
    if (tern_topo_discover(&topo, &st) || tern_pool_create(&pool, topo, n_threads, &st)) goto err;
    /* several layers, timed together: one layer alone would stay in the cache and look
     * faster than a layer of a real slice, whose weights stream from memory */
    int32_t n_probe = hp0.n_layer < PROF_LAYERS ? hp0.n_layer : PROF_LAYERS;
    tern_model_opts mo = {.l0 = 0, .l1 = n_probe, .embed = true, .head = true, .topo = topo};
    if (tern_model_load(&m, g, &mo, &st)) goto err;
    const tern_hparams *hp = tern_model_hparams(m);
    enum { NT = 10, MAXT = 512, NR = 7 };
    static const int toks[NT] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512};
    static const int rows[NR] = {1, 2, 4, 8, 16, 32, 64};
    tern_ctx_opts co = {.max_tokens = MAXT, .max_seqs = 64, .n_ctx = MAXT + PROF_POS + 1};
    if (co.n_ctx > hp->n_ctx) co.n_ctx = hp->n_ctx;
    if (tern_ctx_create(&c, m, pool, &co, &st)) goto err;
    const size_t d = (size_t)hp->d;
    x = malloc((size_t)MAXT * d * sizeof *x);
    hx = malloc(64 * d * sizeof *hx);
    logits = malloc(64 * (size_t)hp->n_vocab * sizeof *logits);
    if (!x || !hx || !logits) {
        tern_status_set(&st, TERN_ENOMEM, "profile: out of memory");
        goto err;
    }
    tern_rng rng;
    tern_rng_seed(&rng, 77);
    int32_t ids[MAXT];
    for (int i = 0; i < MAXT; i++) ids[i] = (int32_t)tern_rng_below(&rng, (uint64_t)hp->n_vocab);
    tern_batch_seq bs[64];
    /* history for 64 decode slots */
    for (int s = 0; s < 64; s++) {
        tern_embed(c, ids, PROF_POS, x);
        bs[0] = (tern_batch_seq){.slot = s, .pos0 = 0, .n_tokens = PROF_POS};
        if (tern_forward(c, bs, 1, x, &st)) goto err;
    }
    double dec[NT] = {0}, pre[NT] = {0}, v[PROF_REPS];
    int n_tok = 0;
    for (int k = 0; k < NT && toks[k] + PROF_POS < co.n_ctx; k++, n_tok++) {
        int n = toks[k];
        for (int r = 0; r < PROF_REPS; r++) { /* prefill: slot 0 rewritten from position 0 */
            tern_embed(c, ids, n, x);
            bs[0] = (tern_batch_seq){.slot = 0, .pos0 = 0, .n_tokens = n};
            double t0 = tern_now();
            if (tern_forward(c, bs, 1, x, &st)) goto err;
            v[r] = (tern_now() - t0) / n_probe;
        }
        pre[k] = med(v, PROF_REPS);
        if (n <= 64) {
            for (int r = 0; r < PROF_REPS; r++) { /* decodes at position 16 (rewritten alike) */
                tern_embed(c, ids, n, x);
                for (int s = 0; s < n; s++)
                    bs[s] = (tern_batch_seq){.slot = s, .pos0 = PROF_POS, .n_tokens = 1};
                double t0 = tern_now();
                if (tern_forward(c, bs, n, x, &st)) goto err;
                v[r] = (tern_now() - t0) / n_probe;
            }
            dec[k] = med(v, PROF_REPS);
        } else {
            dec[k] = pre[k];
        }
        /* slot 0's history back to PROF_POS positions for the decodes */
        tern_embed(c, ids, PROF_POS, x);
        bs[0] = (tern_batch_seq){.slot = 0, .pos0 = 0, .n_tokens = PROF_POS};
        if (tern_forward(c, bs, 1, x, &st)) goto err;
    }
    double head[NR], norm[NR];
    int32_t rowidx[64];
    for (int i = 0; i < 64; i++) rowidx[i] = i;
    for (int k = 0; k < NR; k++) {
        for (int r = 0; r < PROF_REPS; r++) {
            double t0 = tern_now();
            tern_final_norm(c, x, rowidx, rows[k], hx);
            double t1 = tern_now();
            tern_head_slice(c, hx, rows[k], logits);
            v[r] = tern_now() - t1;
            norm[k] = t1 - t0;
        }
        head[k] = med(v, PROF_REPS);
    }
    double te[PROF_REPS];
    for (int r = 0; r < PROF_REPS; r++) {
        double t0 = tern_now();
        tern_embed(c, ids, 64, x);
        te[r] = (tern_now() - t0) / 64;
    }
    double fold[2];
    for (int kind = 0; kind < 2; kind++) {
        tern_sampling sp;
        tern_sampling_default(&sp);
        if (kind) sp.temperature = 0.8f, sp.top_k = 40;
        tern_row_params rp;
        tern_row_params_make(&sp, 0, &rp);
        rp.adj = NULL, rp.n_adj = 0;
        for (int r = 0; r < PROF_REPS; r++) {
            tern_row_sum s;
            tern_row_sum_init(&s);
            double t0 = tern_now();
            tern_row_sum_fold(&s, &rp, logits, 0, hp->n_vocab);
            v[r] = tern_now() - t0;
        }
        fold[kind] = med(v, PROF_REPS);
    }
    double bw = tern_bench_read_bandwidth(n_threads);
    FILE *f = out_path ? fopen(out_path, "w") : stdout;
    if (!f) {
        fprintf(stderr, "ternpipe: %s: cannot write\n", out_path);
        goto out;
    }
    fprintf(f,
            "{\"model\": \"%s\", \"threads\": %d, \"read_bandwidth_gbs\": %.3f, \"hparams\": "
            "{\"n_layer\": %d, \"d\": %d, "
            "\"n_ff\": %d, \"n_vocab\": %d, \"n_head\": %d, \"n_head_kv\": %d, \"head_dim\": "
            "%d, \"n_ctx\": %d},\n",
            path, tern_pool_size(pool), bw, hp->n_layer, hp->d, hp->n_ff, hp->n_vocab, hp->n_head,
            hp->n_head_kv, hp->head_dim, hp->n_ctx);
    double tk[NT], rw[NR];
    for (int k = 0; k < NT; k++) tk[k] = toks[k];
    for (int k = 0; k < NR; k++) rw[k] = rows[k];
    fprintf(f, " \"layer\": {");
    print_list(f, "tokens", tk, n_tok, "%.0f");
    fprintf(f, ", ");
    print_list(f, "decode_s", dec, n_tok, "%.9f");
    fprintf(f, ", ");
    print_list(f, "prefill_s", pre, n_tok, "%.9f");
    fprintf(f, ", \"decode_position\": %d, \"layers_timed\": %d},\n \"head\": {", PROF_POS,
            n_probe);
    print_list(f, "rows", rw, NR, "%.0f");
    fprintf(f, ", ");
    print_list(f, "s", head, NR, "%.9f");
    fprintf(f, ", ");
    print_list(f, "final_norm_s", norm, NR, "%.9f");
    fprintf(f,
            ", \"vocab\": %d},\n \"embed_per_token_s\": %.9f, \"fold_greedy_s\": %.9f, "
            "\"fold_sample_s\": %.9f,\n \"hop\": {",
            hp->n_vocab, med(te, PROF_REPS), fold[0], fold[1]);
    if (have_hops) {
        double hb[NH];
        for (int k = 0; k < NH; k++) hb[k] = (double)hop_floats[k] * 4;
        /* least squares: t = latency + bytes / bandwidth */
        double sx = 0, sy = 0, sxx = 0, sxy = 0;
        for (int k = 0; k < NH; k++)
            sx += hb[k], sy += hop_s[k], sxx += hb[k] * hb[k], sxy += hb[k] * hop_s[k];
        double slope = (NH * sxy - sx * sy) / (NH * sxx - sx * sx);
        double lat = (sy - slope * sx) / NH;
        if (lat < 0) lat = hop_s[0];
        fprintf(f, "\"ranks\": %d, ", size);
        print_list(f, "bytes", hb, NH, "%.0f");
        fprintf(f, ", ");
        print_list(f, "one_way_s", hop_s, NH, "%.9f");
        fprintf(f, ", \"latency_s\": %.9f, \"bandwidth_gbs\": %.4f", lat,
                slope > 0 ? 1e-9 / slope : 0.0);
    } else {
        fprintf(f, "\"ranks\": 1");
    }
    fprintf(f, "}}\n");
    if (f != stdout) fclose(f);
    rc = 0;
    goto out;
err:
    fprintf(stderr, "ternpipe: profile: %s\n", st.msg);
out:
    free(x), free(hx), free(logits);
    tern_ctx_free(c);
    tern_model_free(m);
    tern_pool_free(pool);
    tern_topo_free(topo);
    tern_gguf_close(g);
    tern_dist_finalize();
    return rc;
}
