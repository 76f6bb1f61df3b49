/* cmd_bench.c: `ternpipe bench`: prefill and decode throughput through the pipeline engine
 * (one rank or under mpirun), peak RSS, this machine's read bandwidth and decode b=1 as a
 * fraction of the bandwidth roofline, and with several ranks the per-stage busy %, bubble
 * fraction and hop latency. Medians of repeated runs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ternpipe/rng.h"
#include "ternpipe/runtime.h"
#include "tools/bench.h"
#include "tools/commands.h"
#include "tools/run.h"

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

typedef struct counter {
    int64_t tokens;
    int32_t first_done, done;
    double t_all_first;
    int32_t n_seqs;
} counter;

typedef struct seq_user {
    counter *c;
    bool got_first;
} seq_user;

static void on_token(void *user, int32_t tok)
{
    (void)tok;
    seq_user *u = user;
    u->c->tokens++;
    if (!u->got_first) {
        u->got_first = true;
        if (++u->c->first_done == u->c->n_seqs) u->c->t_all_first = tern_now();
    }
}
static void on_done(void *user, tern_finish why, const char *err)
{
    (void)why, (void)err;
    ((seq_user *)user)->c->done++;
}

/* runs S sequences of `prompt` tokens and `gen` new tokens; returns decode tok/s counted from
 * the moment every sequence has its first token (prefill excluded) */
static int run_batch(tern_engine *e, const int32_t *ids, int S, int prompt, int gen, double *tps,
                     double *ttft)
{
    counter c = {.n_seqs = S};
    seq_user users[64];
    tern_status st = {0};
    tern_sampling sp;
    tern_sampling_default(&sp);
    double t0 = tern_now();
    for (int s = 0; s < S; s++) {
        users[s] = (seq_user){.c = &c};
        tern_request rq = {.prompt = ids + s * 7,
                           .n_prompt = prompt,
                           .sampling = sp,
                           .max_new = gen,
                           .on_token = on_token,
                           .on_done = on_done,
                           .user = &users[s]};
        if (tern_engine_submit(e, &rq, NULL, &st)) {
            fprintf(stderr, "ternpipe: bench: %s\n", st.msg);
            return 1;
        }
    }
    if (tern_engine_run(e, &st)) {
        fprintf(stderr, "ternpipe: bench: %s\n", st.msg);
        return 1;
    }
    double t1 = tern_now();
    if (ttft) *ttft = c.t_all_first - t0;
    int64_t after_first = c.tokens - S;
    *tps = after_first > 0 ? (double)after_first / (t1 - c.t_all_first) : 0;
    return 0;
}

/* "1,16,64" -> values; returns the count */
static int parse_list(const char *s, int32_t *v, int cap)
{
    int n = 0;
    while (*s && n < cap) {
        char *e;
        long x = strtol(s, &e, 10);
        if (e == s || x < 1 || x > 1 << 20) return -1;
        v[n++] = (int32_t)x;
        s = *e == ',' ? e + 1 : e;
        if (*e && *e != ',') return -1;
    }
    return n;
}

/* tokens a second with a MACs a token at rate ra (GMAC/s) and b at rb; 0 where a rate is unknown */
static double ceiling(double a, double ra, double b, double rb)
{
    return ra > 0 && rb > 0 ? 1.0 / (a / (ra * 1e9) + b / (rb * 1e9)) : 0.0;
}

int tern_cmd_bench(int argc, char **argv)
{
    bool json = false;
    int reps = 3;
    int32_t npl[64], npp = 64, ntg = 32;
    tern_sampling draw; /* the workloads' requests: greedy unless asked */
    tern_sampling_default(&draw);
    int n_npl = 0;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--profile")) return tern_bench_profile(argc, argv);
    /* the prefix cache off unless asked: repeated runs of one prompt would measure the cache,
     * not the prefill (--prefix-cache on measures it) */
    tern_engine_opts eo = {.max_seqs = 64, .batch_tokens = 512, .prefix_cache = -1};
    for (int i = 1; i < argc; i++) {
        int r = tern_parse_engine_opt(argc, argv, &i, &eo);
        if (r == 0) r = tern_parse_sampling_opt(argc, argv, &i, &draw);
        if (r < 0) return 2;
        if (r) continue;
        if (!strcmp(argv[i], "--json"))
            json = true;
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--npl") && i + 1 < argc) {
            if ((n_npl = parse_list(argv[++i], npl, 64)) < 1) {
                fprintf(stderr, "ternpipe: --npl: got '%s', expected counts like 1,16,64\n",
                        argv[i]);
                return 2;
            }
        } else if (!strcmp(argv[i], "--npp") && i + 1 < argc)
            npp = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--ntg") && i + 1 < argc)
            ntg = atoi(argv[++i]);
        else {
            fprintf(stderr,
                    "usage: ternpipe bench [--json] [--reps R] [--npl S1,S2,... [--npp P] [--ntg "
                    "G] [sampling]] [--profile ...] %s\nsampling (the workloads' streams): %s\n",
                    tern_engine_opts_usage(), tern_sampling_opts_usage());
            return 2;
        }
    }
    tern_status st;
    if (tern_sampling_validate(&draw, &st)) {
        fprintf(stderr, "ternpipe: bench: %s\n", st.msg);
        return 2;
    }
    if (n_npl > 0) {
        /* workloads only: S sequences of P + G tokens each */
        int32_t most = 0;
        for (int k = 0; k < n_npl; k++) most = npl[k] > most ? npl[k] : most;
        if (eo.max_seqs < most) eo.max_seqs = most;
        tern_engine *e;
        int rank;
        if (tern_run_open(&argc, &argv, &eo, &e, &rank)) return 1;
        /* a warm-up run first: the first tokens after open pay page faults and thread wake-ups */
        int rc = rank == 0 ? tern_bench_workload(e, 1, npp, 2, &draw, false, true) : 0;
        for (int k = 0; rank == 0 && k < n_npl && !rc; k++)
            for (int r = 0; r < reps && !rc; r++)
                rc = tern_bench_workload(e, npl[k], npp, ntg, &draw, json, false);
        tern_run_close(e);
        return rc;
    }
    if (reps < 1) reps = 1;
    if (reps > 15) reps = 15;
    if (eo.max_seqs < 64) eo.max_seqs = 64;
    tern_engine *e;
    int rank;
    if (tern_run_open(&argc, &argv, &eo, &e, &rank)) return 1;
    if (rank != 0) {
        tern_run_close(e);
        return 0;
    }
    int rc = 1;
    const tern_hparams *hp = tern_engine_hparams(e);
    int32_t n_ctx = tern_engine_n_ctx(e);
    int32_t *ids = malloc(8192 * sizeof *ids);
    tern_rng rng;
    tern_rng_seed(&rng, 1234);
    for (int i = 0; i < 8192; i++) ids[i] = (int32_t)tern_rng_below(&rng, (uint64_t)hp->n_vocab);
    static const int prefill_sizes[2] = {128, 512};
    static const int decode_seqs[4] = {1, 4, 16, 64};
    double prefill_tps[2] = {0}, decode_tps[4] = {0}, v[16];
    long rss_single = 0;
    int n_ranks = tern_engine_n_ranks(e);
    size_t nr = (size_t)n_ranks;
    double *busy = calloc(4 * nr, sizeof *busy), bubble[4] = {0}, p50[4] = {0}, p99[4] = {0};
    tern_rank_stats *rk0 = calloc(nr, sizeof *rk0), *rk1 = calloc(nr, sizeof *rk1);
    char *rss_list = calloc(nr, 24);
    if (!ids || !busy || !rk0 || !rk1 || !rss_list) {
        fprintf(stderr, "ternpipe: out of memory\n");
        goto done;
    }
    tern_progress_line pl = {0};
    for (int pi = 0; pi < 2; pi++) {
        tern_progress(&pl, "bench: prefill and decode runs", pi, 6);
        int n = prefill_sizes[pi];
        if (n + 2 > n_ctx) continue;
        for (int r = 0; r < reps; r++) {
            double tps, ttft;
            if (run_batch(e, ids, 1, n, 1, &tps, &ttft)) goto done;
            v[r] = n / ttft;
        }
        prefill_tps[pi] = median(v, reps);
    }
    for (int di = 0; di < 4; di++) {
        tern_progress(&pl, "bench: prefill and decode runs", 2 + di, 6);
        int S = decode_seqs[di], gen = S == 1 ? 33 : 17;
        if (16 + gen > n_ctx) gen = n_ctx - 16;
        tern_engine_stats s0 = {.ranks = rk0, .cap_ranks = n_ranks},
                          s1 = {.ranks = rk1, .cap_ranks = n_ranks};
        for (int r = 0; r < reps; r++) {
            tern_engine_stats_get(e, &s0);
            if (run_batch(e, ids, S, 16, gen, &v[r], NULL)) goto done;
            tern_engine_stats_get(e, &s1);
            double wall = s1.wall_s - s0.wall_s, sum = 0;
            for (int k = 0; k < s1.n_ranks; k++) {
                double b = wall > 0 ? (s1.ranks[k].busy_s - s0.ranks[k].busy_s) / wall : 0;
                busy[di * nr + (size_t)k] += b / reps;
                sum += b;
            }
            bubble[di] += (1.0 - sum / s1.n_ranks) / reps;
            p50[di] = s1.hop_p50_ms, p99[di] = s1.hop_p99_ms;
        }
        decode_tps[di] = median(v, reps);
        if (di == 0) { /* weights + one sequence's KV, before the concurrent runs grow the KV */
            rss_single = (long)s1.ranks[0].peak_rss;
        }
    }
    tern_engine_stats fin = {.ranks = rk1, .cap_ranks = n_ranks};
    tern_engine_stats_get(e, &fin);
    double bpt = tern_engine_bytes_per_token(e);
    long rss = (long)fin.ranks[0].peak_rss;
    tern_progress(&pl, "bench: prefill and decode runs", 6, 6);
    double bw = tern_bench_read_bandwidth(eo.n_threads);
    double roof = bw > 0 ? bw * 1e9 / bpt : 0;
    /* the compute ceilings (one rank's, so meaningful for one rank): MACs per token of the
     * layers (ternary: int8 multiply-adds at the int8 dot instruction's peak) and of the head
     * (F16: one fp32 FMA a MAC, at the FMA peak; q8_0: int8 MACs at the int8 peak); the
     * kernels' own rates on their probe are reported beside the peaks */
    tern_bench_rates cr;
    tern_bench_compute(eo.n_threads, &cr);
    const bool q8_head = eo.head_type == TERN_HEAD_Q8_0;
    const double pk = cr.int8_peak, head_rate = q8_head ? cr.int8_peak : cr.fp32_peak;
    double mac_layers = (double)hp->n_layer * ((double)hp->d * hp->d * 2 +
                                               (double)hp->d * hp->n_head_kv * hp->head_dim * 2 +
                                               (double)hp->d * hp->n_ff * 3);
    double mac_head = (double)hp->d * hp->n_vocab;
    /* prefill: the layers alone; batched decode: layers and head. Each at the int8 peak, and
     * again at the vector int8 dot's (another instruction only under tiles; the F16 head stays
     * at the FMA peak) */
    const double vpk = cr.int8_vec_peak, vhead = q8_head ? vpk : cr.fp32_peak;
    double ceil_prefill = ceiling(mac_layers, pk, 0, 1),
           ceil_prefill_vec = ceiling(mac_layers, vpk, 0, 1),
           ceil_prefill_min = ceiling(mac_layers, cr.int8_peak_min, 0, 1);
    double ceil_batch = ceiling(mac_layers, pk, mac_head, head_rate),
           ceil_batch_vec = ceiling(mac_layers, vpk, mac_head, vhead);
#define FRAC(x, lim) ((lim) > 0 ? (x) / (lim) : 0.0)
    for (int k = 0, o = 0; k < n_ranks && o < (int)(nr * 24) - 24; k++)
        o += snprintf(rss_list + o, nr * 24 - (size_t)o, "%s%llu", k ? ", " : "",
                      (unsigned long long)fin.ranks[k].peak_rss);
    if (json) {
        printf("{\"ranks\": %d, \"prefill\": [", n_ranks);
        for (int i = 0; i < 2; i++)
            printf("%s{\"tokens\": %d, \"tok_s\": %.2f}", i ? ", " : "", prefill_sizes[i],
                   prefill_tps[i]);
        printf("], \"decode\": [");
        for (int i = 0; i < 4; i++) {
            printf("%s{\"sequences\": %d, \"tok_s\": %.2f, \"bubble_fraction\": %.3f, \"busy\": [",
                   i ? ", " : "", decode_seqs[i], decode_tps[i], bubble[i]);
            for (int k = 0; k < n_ranks; k++)
                printf("%s%.3f", k ? ", " : "", busy[(size_t)i * nr + (size_t)k]);
            printf("], \"hop_p50_ms\": %.3f, \"hop_p99_ms\": %.3f}", p50[i], p99[i]);
        }
        printf(
            "], \"peak_rss_bytes\": %ld, \"peak_rss_single_sequence_bytes\": %ld, "
            "\"peak_rss_per_rank\": [%s], \"read_bandwidth_gbs\": %.2f, \"bytes_per_token\": %.0f, "
            "\"roofline_tok_s\": %.2f, \"roofline_fraction\": %.3f, \"int8_peak_gmacs\": %.1f, "
            "\"int8_vec_peak_gmacs\": %.1f, \"fp32_peak_gmacs\": %.1f, \"tgemm_gmacs\": %.1f, "
            "\"f16_head_gmacs\": %.1f, \"i8_head_gmacs\": %.1f, \"head_type\": \"%s\", "
            "\"prefill_ceiling_tok_s\": %.1f, "
            "\"prefill128_fraction\": %.3f, \"prefill512_fraction\": %.3f, "
            "\"prefill_vec_ceiling_tok_s\": %.1f, \"batched_ceiling_tok_s\": %.1f, "
            "\"decode64_fraction\": %.3f, \"batched_vec_ceiling_tok_s\": %.1f, "
            "\"decode64_vec_fraction\": %.3f, \"int8_peak_min_gmacs\": %.1f, "
            "\"fp32_peak_min_gmacs\": %.1f, \"prefill_ceiling_min_tok_s\": %.1f, "
            "\"kv_type\": \"%s\"}\n",
            rss, rss_single, rss_list, bw, bpt, roof, FRAC(decode_tps[0], roof), cr.int8_peak,
            cr.int8_vec_peak, cr.fp32_peak, cr.tgemm, cr.f16_head, cr.i8_head,
            q8_head ? "q8_0" : "f16", ceil_prefill, FRAC(prefill_tps[0], ceil_prefill),
            FRAC(prefill_tps[1], ceil_prefill), ceil_prefill_vec, ceil_batch,
            FRAC(decode_tps[3], ceil_batch), ceil_batch_vec, FRAC(decode_tps[3], ceil_batch_vec),
            cr.int8_peak_min, cr.fp32_peak_min, ceil_prefill_min, tern_kv_type_name(eo.kv_type));
    } else {
        printf("ranks: %d, weights read per token: %.1f MB\n", n_ranks, bpt / 1e6);
        for (int i = 0; i < 2; i++)
            printf("prefill %4d tokens: %8.1f tok/s\n", prefill_sizes[i], prefill_tps[i]);
        for (int i = 0; i < 4; i++) {
            printf("decode %3d sequences: %8.1f tok/s", decode_seqs[i], decode_tps[i]);
            if (n_ranks > 1) {
                printf("  busy");
                for (int k = 0; k < n_ranks; k++)
                    printf(" r%d %.0f%%", k, 100 * busy[(size_t)i * nr + (size_t)k]);
                printf("  bubble %.0f%%  hop p50 %.3f ms p99 %.3f ms", 100 * bubble[i], p50[i],
                       p99[i]);
            }
            printf("\n");
        }
        printf(
            "read bandwidth: %.1f GB/s -> decode roofline %.1f tok/s; decode b=1 at %.2f of it\n",
            bw, roof, FRAC(decode_tps[0], roof));
        printf("compute peaks (every thread, register loops, best of %d probes; the slowest): "
               "int8 dot %.0f GMAC/s (%.0f)",
               TERN_BENCH_PEAK_PROBES, cr.int8_peak, cr.int8_peak_min);
        if (cr.tiles) printf(" (AMX tiles; the vector dot %.0f)", cr.int8_vec_peak);
        printf(", fp32 FMA %.0f GMAC/s (%.0f); kernels: ternary GEMM %.0f GMAC/s (%.2f of the "
               "int8 peak), int8 head %.0f (%.2f), F16 head %.0f (%.2f of the FMA peak)\n",
               cr.fp32_peak, cr.fp32_peak_min, cr.tgemm, FRAC(cr.tgemm, pk), cr.i8_head,
               FRAC(cr.i8_head, pk), cr.f16_head, FRAC(cr.f16_head, cr.fp32_peak));
        printf(
            "compute ceilings: prefill %.1f tok/s (layers at the int8 peak; prefill 128 at %.2f "
            "of it, 512 at %.2f), batched decode %.1f tok/s (layers + %s head at the %s peak; 64 "
            "sequences at %.2f of it)\n",
            ceil_prefill, FRAC(prefill_tps[0], ceil_prefill), FRAC(prefill_tps[1], ceil_prefill),
            ceil_batch, q8_head ? "int8" : "F16", q8_head ? "int8" : "FMA",
            FRAC(decode_tps[3], ceil_batch));
        if (cr.tiles)
            printf("the same at the vector int8 dot's peak: prefill %.1f tok/s (prefill 128 at "
                   "%.2f of it, 512 at %.2f), batched decode %.1f tok/s (64 sequences at %.2f)\n",
                   ceil_prefill_vec, FRAC(prefill_tps[0], ceil_prefill_vec),
                   FRAC(prefill_tps[1], ceil_prefill_vec), ceil_batch_vec,
                   FRAC(decode_tps[3], ceil_batch_vec));
        printf("the same at the slowest probe's int8 rate: prefill %.1f tok/s (prefill 128 at %.2f "
               "of it, 512 at %.2f)\n",
               ceil_prefill_min, FRAC(prefill_tps[0], ceil_prefill_min),
               FRAC(prefill_tps[1], ceil_prefill_min));
        printf("peak RSS (rank 0): %.1f MB; %.1f MB after the prefill and single-sequence runs "
               "(the rest is %s KV of the concurrent sequences)\n",
               (double)rss / 1e6, (double)rss_single / 1e6, tern_kv_type_name(eo.kv_type));
        if (n_ranks > 1) {
            printf("peak RSS per rank:");
            for (int k = 0; k < n_ranks; k++)
                printf(" r%d %.1f MB", k, (double)fin.ranks[k].peak_rss / 1e6);
            printf("\n");
            printf("plan (bytes read per token):");
            for (int k = 0; k < n_ranks; k++)
                printf(" r%d layers [%d,%d) head [%d,%d) %.1f MB", k, fin.ranks[k].layer_start,
                       fin.ranks[k].layer_end, fin.ranks[k].vocab_start, fin.ranks[k].vocab_end,
                       fin.ranks[k].predicted / 1e6);
            printf("\n");
        }
    }
#undef FRAC
    rc = 0;
done:
    free(ids), free(busy), free(rk0), free(rk1), free(rss_list);
    tern_run_close(e);
    return rc;
}
