/* bench-workload.c: `ternpipe bench --npl S1,S2,... --npp P --ntg G`: for each S, S concurrent
 * sequences of P prompt tokens and G new tokens each (llama-batched-bench's -npl/-npp/-ntg),
 * submitted at once. Per configuration: aggregate tok/s (generated tokens over the wall time
 * from submit to the last token, and over the decode phase after every sequence has its first
 * token), time to first token and inter-token latency p50/p99, per-stage busy fraction, bubble,
 * hop latency and peak RSS per rank. One line of text, or one JSON object per line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ternpipe/rng.h"
#include "ternpipe/stats.h"
#include "tools/bench.h"
#include "tools/run.h"

typedef struct wl_seq {
    struct wl_run *run;
    double t_last;
    int32_t n, idx;
} wl_seq;

typedef struct wl_run {
    double t0, t_all_first;
    int32_t first_done, n_seqs;
    int64_t tokens;
    double *ttft; /* [n_seqs] */
    double *itl;  /* [n_seqs * gen] */
    int64_t n_itl;
} wl_run;

static void wl_token(void *user, int32_t tok)
{
    (void)tok;
    wl_seq *q = user;
    wl_run *r = q->run;
    double t = tern_now();
    if (q->n == 0) {
        r->ttft[q->idx] = t - r->t0;
        if (++r->first_done == r->n_seqs) r->t_all_first = t;
    } else {
        r->itl[r->n_itl++] = t - q->t_last;
    }
    q->t_last = t;
    q->n++;
    r->tokens++;
}

static void wl_done(void *user, tern_finish why, const char *err)
{
    (void)user, (void)why;
    if (err) fprintf(stderr, "ternpipe: bench: %s\n", err);
}

int tern_bench_workload(tern_engine *e, int32_t S, int32_t P, int32_t G, const tern_sampling *draw,
                        bool json, bool quiet)
{
    const tern_hparams *hp = tern_engine_hparams(e);
    int n_ranks = tern_engine_n_ranks(e);
    size_t nr = (size_t)n_ranks;
    if ((int64_t)P + G > tern_engine_n_ctx(e) || P < 1 || G < 1 || S < 1) {
        fprintf(stderr,
                "ternpipe: bench: --npp %d + --ntg %d: expected >= 1 each and at most the "
                "context %d\n",
                P, G, tern_engine_n_ctx(e));
        return 1;
    }
    int32_t *prompt = malloc((size_t)P * (size_t)S * sizeof *prompt);
    wl_seq *seqs = calloc((size_t)S, sizeof *seqs);
    wl_run run = {.n_seqs = S};
    run.ttft = calloc((size_t)S, sizeof *run.ttft);
    run.itl = calloc((size_t)S * (size_t)G, sizeof *run.itl);
    tern_rank_stats *r0 = calloc(nr, sizeof *r0), *r1 = calloc(nr, sizeof *r1);
    int rc = 1;
    if (!prompt || !seqs || !run.ttft || !run.itl || !r0 || !r1) goto out;
    tern_rng rng;
    tern_rng_seed(&rng, 1234);
    for (size_t i = 0; i < (size_t)P * (size_t)S; i++)
        prompt[i] = (int32_t)tern_rng_below(&rng, (uint64_t)hp->n_vocab);
    tern_engine_stats s0 = {.ranks = r0, .cap_ranks = n_ranks};
    tern_engine_stats s1 = {.ranks = r1, .cap_ranks = n_ranks};
    tern_engine_stats_get(e, &s0);
    tern_status st = {0};
    run.t0 = tern_now();
    for (int32_t s = 0; s < S; s++) {
        seqs[s].run = &run;
        seqs[s].idx = s;
        tern_request rq = {.prompt = prompt + (size_t)s * (size_t)P,
                           .n_prompt = P,
                           .max_new = G,
                           .on_token = wl_token,
                           .on_done = wl_done,
                           .user = &seqs[s]};
        /* every stream draws as asked (the sampling options), each from its own seed */
        rq.sampling = *draw;
        rq.sampling.seed = draw->seed + (uint64_t)s + 1;
        if (tern_engine_submit(e, &rq, NULL, &st)) {
            fprintf(stderr, "ternpipe: bench: %s\n", st.msg);
            goto out;
        }
    }
    if (tern_engine_run(e, &st)) {
        fprintf(stderr, "ternpipe: bench: %s\n", st.msg);
        goto out;
    }
    double t1 = tern_now();
    tern_engine_stats_get(e, &s1);
    double wall = t1 - run.t0;
    double agg = wall > 0 ? (double)run.tokens / wall : 0;
    double dec = t1 > run.t_all_first && run.tokens > S
                     ? (double)(run.tokens - S) / (t1 - run.t_all_first)
                     : 0;
    double stat_wall = s1.wall_s - s0.wall_s, busy_sum = 0;
    double ttft50 = tern_percentile(run.ttft, S, 0.5), ttft99 = tern_percentile(run.ttft, S, 0.99);
    double itl50 = tern_percentile(run.itl, run.n_itl, 0.5),
           itl99 = tern_percentile(run.itl, run.n_itl, 0.99);
    if (quiet) {
        /* a warm-up: nothing to report */
    } else if (json) {
        printf("{\"ranks\": %d, \"streams\": %d, \"npp\": %d, \"ntg\": %d, \"temp\": %g, "
               "\"top_k\": %d, \"top_p\": %g, "
               "\"tok_s\": %.3f, \"decode_tok_s\": %.3f, \"wall_s\": %.4f, \"ttft_p50_ms\": %.3f, "
               "\"ttft_p99_ms\": %.3f, \"itl_p50_ms\": %.3f, \"itl_p99_ms\": %.3f, \"busy\": [",
               n_ranks, S, P, G, (double)draw->temperature, (int)draw->top_k, (double)draw->top_p,
               agg, dec, wall, ttft50 * 1e3, ttft99 * 1e3, itl50 * 1e3, itl99 * 1e3);
        for (int r = 0; r < n_ranks; r++) {
            double b = stat_wall > 0 ? (r1[r].busy_s - r0[r].busy_s) / stat_wall : 0;
            busy_sum += b;
            printf("%s%.4f", r ? ", " : "", b);
        }
        printf("], \"bubble\": %.4f, \"hop_p50_ms\": %.4f, \"hop_p99_ms\": %.4f, "
               "\"peak_rss_bytes\": [",
               1.0 - busy_sum / n_ranks, s1.hop_p50_ms, s1.hop_p99_ms);
        for (int r = 0; r < n_ranks; r++)
            printf("%s%llu", r ? ", " : "", (unsigned long long)r1[r].peak_rss);
        printf("], \"plan\": [");
        for (int r = 0; r < n_ranks; r++)
            printf("%s{\"layers\": [%d, %d], \"head\": [%d, %d]}", r ? ", " : "", r1[r].layer_start,
                   r1[r].layer_end, r1[r].vocab_start, r1[r].vocab_end);
        printf("]}\n");
    } else {
        printf("streams %4d npp %4d ntg %4d: %8.1f tok/s (decode %8.1f)  TTFT p50 %.1f p99 %.1f "
               "ms  ITL p50 %.1f p99 %.1f ms  busy",
               S, P, G, agg, dec, ttft50 * 1e3, ttft99 * 1e3, itl50 * 1e3, itl99 * 1e3);
        for (int r = 0; r < n_ranks; r++) {
            double b = stat_wall > 0 ? (r1[r].busy_s - r0[r].busy_s) / stat_wall : 0;
            printf(" r%d %.0f%%", r, 100 * b);
        }
        printf("\n");
    }
    fflush(stdout);
    rc = 0;
out:
    free(prompt), free(seqs), free(run.ttft), free(run.itl), free(r0), free(r1);
    return rc;
}
