/* cmd_simulate.c: `ternpipe simulate`: predicts throughput and latency of a pipeline with the
 * discrete-event simulator (src/pipeline/sim.h), which drives the real scheduler with the stage
 * costs measured by `ternpipe bench --profile` and a link model. One JSON object per line, in
 * the same shape as `ternpipe bench --npl ... --json`, so measured and predicted points sit in
 * one table. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline/sim.h"
#include "ternpipe/sampler.h"
#include "tools/commands.h"

static int usage(void)
{
    fprintf(stderr,
            "usage: ternpipe simulate --profile FILE --ranks N [--split SPEC] [--npl S1,S2,...] "
            "[--npp P] [--ntg G] [--batch B] [--inflight K] [--max-seqs M] [--link shm|10g|25g|"
            "100g|LAT_US:GBPS] [--ranks-per-host R] [--cores-per-host C --threads T] "
            "[--speeds s0,s1,... | --speed S] [--json]\n");
    return 2;
}

static int read_list(const cJSON *o, const char *name, double *v, int cap)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, name);
    int n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, a)
    {
        if (n >= cap || !cJSON_IsNumber(e)) return -1;
        v[n++] = e->valuedouble;
    }
    return n;
}

static double num(const cJSON *o, const char *name)
{
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsNumber(e) ? e->valuedouble : -1;
}

/* the profile JSON -> costs; the hop fit, when present, becomes the shared-memory link */
static int load_profile(const char *path, tern_sim_costs *c, tern_hparams *hpo, tern_sim_link *shm,
                        bool *have_hop)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "ternpipe: %s: cannot open the profile\n", path);
        return 1;
    }
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    cJSON *j = cJSON_Parse(buf);
    const cJSON *hp = cJSON_GetObjectItemCaseSensitive(j, "hparams");
    const cJSON *layer = cJSON_GetObjectItemCaseSensitive(j, "layer");
    const cJSON *head = cJSON_GetObjectItemCaseSensitive(j, "head");
    const cJSON *hop = cJSON_GetObjectItemCaseSensitive(j, "hop");
    memset(c, 0, sizeof *c);
    int bad = !j || !hp || !layer || !head;
    if (!bad) {
        c->d = (int32_t)num(hp, "d"), c->n_vocab = (int32_t)num(hp, "n_vocab");
        c->n_layer = (int32_t)num(hp, "n_layer");
        /* the shape, for the engine's own plan cost model */
        *hpo = (tern_hparams){.n_layer = c->n_layer,
                              .n_vocab = c->n_vocab,
                              .d = c->d,
                              .n_ff = (int32_t)num(hp, "n_ff"),
                              .n_head = (int32_t)num(hp, "n_head"),
                              .n_head_kv = (int32_t)num(hp, "n_head_kv"),
                              .head_dim = (int32_t)num(hp, "head_dim")};
        c->n_tok = read_list(layer, "tokens", c->tokens, TERN_SIM_TABLE);
        bad |= read_list(layer, "decode_s", c->decode_s, TERN_SIM_TABLE) != c->n_tok;
        bad |= read_list(layer, "prefill_s", c->prefill_s, TERN_SIM_TABLE) != c->n_tok;
        c->n_rows = read_list(head, "rows", c->rows, TERN_SIM_TABLE);
        bad |= read_list(head, "s", c->head_s, TERN_SIM_TABLE) != c->n_rows;
        bad |= read_list(head, "final_norm_s", c->norm_s, TERN_SIM_TABLE) != c->n_rows;
        c->embed_tok_s = num(j, "embed_per_token_s");
        c->fold_greedy_s = num(j, "fold_greedy_s");
        bad |= c->d < 1 || c->n_vocab < 1 || c->n_layer < 1 || c->n_tok < 1 || c->n_rows < 1 ||
               c->embed_tok_s < 0 || c->fold_greedy_s < 0;
        *have_hop = hop && num(hop, "latency_s") >= 0 && num(hop, "bandwidth_gbs") > 0;
        if (*have_hop) *shm = (tern_sim_link){num(hop, "latency_s"), num(hop, "bandwidth_gbs")};
    }
    cJSON_Delete(j);
    if (bad) {
        fprintf(stderr,
                "ternpipe: %s: profile: got an unreadable or incomplete file, expected "
                "the JSON of ternpipe bench --profile\n",
                path);
        return 1;
    }
    return 0;
}

static int parse_doubles(const char *s, double *v, int cap)
{
    int n = 0;
    while (*s && n < cap) {
        char *e;
        double x = strtod(s, &e);
        if (e == s || !(x > 0)) return -1;
        v[n++] = x;
        s = *e == ',' ? e + 1 : e;
    }
    return n;
}

int tern_cmd_simulate(int argc, char **argv)
{
    const char *prof = NULL, *split = "auto", *link = "25g";
    int ranks = 1, rph = 1, n_npl = 0, n_speeds = 0, cores = 0, threads = 0;
    double speed_all = 0;
    double npl_d[64], speeds[4096];
    int32_t npp = 64, ntg = 32, batch = 512, inflight = 0, max_seqs = 0;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has = i + 1 < argc;
        if (!strcmp(a, "--profile") && has)
            prof = argv[++i];
        else if (!strcmp(a, "--ranks") && has)
            ranks = atoi(argv[++i]);
        else if (!strcmp(a, "--split") && has)
            split = argv[++i];
        else if (!strcmp(a, "--npl") && has)
            n_npl = parse_doubles(argv[++i], npl_d, 64);
        else if (!strcmp(a, "--npp") && has)
            npp = atoi(argv[++i]);
        else if (!strcmp(a, "--ntg") && has)
            ntg = atoi(argv[++i]);
        else if (!strcmp(a, "--batch") && has)
            batch = atoi(argv[++i]);
        else if (!strcmp(a, "--inflight") && has)
            inflight = atoi(argv[++i]);
        else if (!strcmp(a, "--max-seqs") && has)
            max_seqs = atoi(argv[++i]);
        else if (!strcmp(a, "--link") && has)
            link = argv[++i];
        else if (!strcmp(a, "--ranks-per-host") && has)
            rph = atoi(argv[++i]);
        else if (!strcmp(a, "--speeds") && has)
            n_speeds = parse_doubles(argv[++i], speeds, 4096);
        else if (!strcmp(a, "--speed") && has)
            speed_all = atof(argv[++i]);
        else if (!strcmp(a, "--cores-per-host") && has)
            cores = atoi(argv[++i]);
        else if (!strcmp(a, "--threads") && has)
            threads = atoi(argv[++i]);
        else if (!strcmp(a, "--json"))
            json = true;
        else
            return usage();
    }
    if (!prof || ranks < 1 || ranks > 4096 || n_npl < 0 || n_speeds < 0 ||
        (n_speeds && n_speeds != ranks) || speed_all < 0)
        return usage();
    if (speed_all > 0 && !n_speeds)
        for (int r = 0; r < ranks; r++) speeds[r] = speed_all, n_speeds = ranks;
    if (n_npl == 0) npl_d[0] = 1, n_npl = 1;
    tern_sim_costs c;
    tern_sim_link shm = {2e-6, 10}, net;
    bool have_hop = false;
    tern_status st = {0};
    tern_hparams hp = {0};
    if (load_profile(prof, &c, &hp, &shm, &have_hop)) return 1;
    if (tern_sim_link_parse(link, &net, &st)) {
        fprintf(stderr, "ternpipe: %s\n", st.msg);
        return 2;
    }
    if (!strcmp(link, "shm")) net = shm;
    tern_plan p;
    if (tern_plan_init(&p, ranks, &hp, &st)) {
        fprintf(stderr, "ternpipe: %s\n", st.msg);
        return 1;
    }
    /* the engine's own plan: its cost model (bytes read per token) on the model's shape, so a
     * simulated point runs the plan a measured one ran (with equal rank speeds) */
    tern_plan_costs pc = {tern_plan_layer_cost(&hp), tern_plan_head_row_cost(&hp, TERN_HEAD_F16)};
    if (tern_plan_make(split, &pc, n_speeds ? speeds : NULL, &p, &st)) {
        fprintf(stderr, "ternpipe: %s\n", st.msg);
        tern_plan_free(&p);
        return 2;
    }
    double *busy = calloc((size_t)ranks, sizeof *busy);
    int rc = 0;
    for (int k = 0; k < n_npl && busy && !rc; k++) {
        int32_t S = (int32_t)npl_d[k];
        tern_sim_opts o = {.plan = &p,
                           .speed = n_speeds ? speeds : NULL,
                           .shm = shm,
                           .net = net,
                           .ranks_per_host = rph,
                           .cores_per_host = cores,
                           .threads = threads,
                           .streams = S,
                           .npp = npp,
                           .ntg = ntg,
                           .batch_tokens = batch,
                           .inflight = inflight > 0 ? inflight : ranks,
                           .max_seqs = max_seqs > 0 ? max_seqs : (S > 64 ? S : 64),
                           .n_ctx = npp + ntg + 1};
        tern_sim_result r = {.busy = busy};
        if (tern_sim_run(&c, &o, &r, &st)) {
            fprintf(stderr, "ternpipe: %s\n", st.msg);
            rc = 1;
            break;
        }
        double bsum = 0;
        for (int i = 0; i < ranks; i++) bsum += busy[i];
        if (json) {
            printf(
                "{\"simulated\": true, \"ranks\": %d, \"streams\": %d, \"npp\": %d, \"ntg\": %d, "
                "\"link\": \"%s\", \"ranks_per_host\": %d, \"tok_s\": %.3f, \"decode_tok_s\": "
                "%.3f, \"wall_s\": %.4f, \"ttft_p50_ms\": %.3f, \"ttft_p99_ms\": %.3f, "
                "\"itl_p50_ms\": %.3f, \"itl_p99_ms\": %.3f, \"busy\": [",
                ranks, S, npp, ntg, link, rph, r.tok_s, r.decode_tok_s, r.wall_s,
                r.ttft_p50_s * 1e3, r.ttft_p99_s * 1e3, r.itl_p50_s * 1e3, r.itl_p99_s * 1e3);
            for (int i = 0; i < ranks; i++) printf("%s%.4f", i ? ", " : "", busy[i]);
            printf("], \"bubble\": %.4f, \"hop_p50_ms\": %.4f, \"plan\": [", 1 - bsum / ranks,
                   r.hop_p50_s * 1e3);
            for (int i = 0; i < ranks; i++)
                printf("%s{\"layers\": [%d, %d], \"head\": [%d, %d]}", i ? ", " : "",
                       p.layer_start[i], p.layer_end[i], p.vocab_start[i], p.vocab_end[i]);
            printf("]}\n");
        } else {
            printf("ranks %d streams %4d: %8.1f tok/s (decode %8.1f)  TTFT p50 %.1f ms  ITL p50 "
                   "%.2f ms  bubble %.0f%%\n",
                   ranks, S, r.tok_s, r.decode_tok_s, r.ttft_p50_s * 1e3, r.itl_p50_s * 1e3,
                   100 * (1 - bsum / ranks));
        }
    }
    free(busy);
    tern_plan_free(&p);
    return rc;
}
