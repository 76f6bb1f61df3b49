/* test_sim.c: the pipeline simulator (src/pipeline/sim.h) with synthetic costs: one stage's time
 * is the sum of its costs; P identical stages with enough micro-batches reach P times one
 * stage's throughput; the slowest stage bounds throughput; a slow link adds its latency per hop;
 * ranks sharing too few cores slow down by their share; results are deterministic. */
#include <math.h>
#include <string.h>

#include "harness.h"
#include "pipeline/sim.h"

/* layers cost fixed + 0.01 ms per token; no norm, no fold, no embedding */
static tern_sim_costs costs(int n_layer, double head_s, double fixed)
{
    tern_sim_costs c = {.d = 64, .n_vocab = 1024, .n_layer = n_layer, .n_tok = 2, .n_rows = 2};
    c.tokens[0] = 1, c.tokens[1] = 1001;
    c.decode_s[0] = c.prefill_s[0] = fixed + 1e-5;
    c.decode_s[1] = c.prefill_s[1] = fixed + 1001e-5;
    c.rows[0] = 1, c.rows[1] = 1001;
    c.head_s[0] = head_s, c.head_s[1] = head_s * 1001;
    return c;
}

static int g_cores, g_threads; /* cores per host, threads per rank (0: enough cores) */

static tern_sim_result run(const tern_sim_costs *c, tern_plan *p, const char *split,
                           const double *speed, tern_sim_link net, int rph, int streams, int npp,
                           int ntg, int inflight, double *busy)
{
    tern_status st = {0};
    tern_plan_costs pc = {1, 1e-9};
    CHECKF(tern_plan_make(split, &pc, speed, p, &st) == TERN_OK, "%s", st.msg);
    tern_sim_opts o = {.plan = p,
                       .speed = speed,
                       .shm = {0, 1e9},
                       .net = net,
                       .ranks_per_host = rph,
                       .cores_per_host = g_cores,
                       .threads = g_threads,
                       .streams = streams,
                       .npp = npp,
                       .ntg = ntg,
                       .batch_tokens = 4096,
                       .inflight = inflight,
                       .max_seqs = streams > 64 ? streams : 64,
                       .n_ctx = npp + ntg + 1};
    tern_sim_result r = {.busy = busy};
    CHECKF(tern_sim_run(c, &o, &r, &st) == TERN_OK, "%s", st.msg);
    return r;
}

int main(void)
{
    tern_status st = {0};
    tern_hparams hp = {.n_layer = 4, .n_vocab = 1024, .d = 64};
    tern_sim_link zero = {0, 1e9};
    double busy[8];

    /* one stage: one stream, a 10-token prompt and 3 new tokens: 3 steps of 4 layers
     * (10 tokens, then 1, then 1) plus the head rows */
    tern_sim_costs c = costs(4, 1e-4, 1e-3);
    tern_plan p1;
    CHECK(tern_plan_init(&p1, 1, &hp, &st) == TERN_OK);
    tern_sim_result r = run(&c, &p1, "auto", NULL, zero, 1, 1, 10, 3, 1, busy);
    double want = 4 * (1e-3 + 10e-5) + 4 * (1e-3 + 1e-5) * 2 + 3 * 1e-4;
    CHECKF(fabs(r.wall_s - want) < 1e-12, "one stage: %.9f s, expected %.9f", r.wall_s, want);
    CHECK(r.tokens == 3 && r.steps == 3 && fabs(busy[0] - 1.0) < 1e-9);

    /* P identical stages (rank 0 idle: no layers, no head cost; costs per token only, so the
     * micro-batch size does not matter) reach P x one stage */
    tern_sim_costs c0 = costs(4, 0, 0);
    tern_sim_result one = run(&c0, &p1, "auto", NULL, zero, 1, 64, 4, 64, 1, busy);
    tern_plan p5;
    CHECK(tern_plan_init(&p5, 5, &hp, &st) == TERN_OK);
    tern_sim_result five = run(&c0, &p5, "1,2,3,4", NULL, zero, 1, 64, 4, 64, 8, busy);
    /* 1 rank: 4 layers per micro-batch in turn; 5 ranks: 4 workers of one layer, pipelined */
    double ratio = five.decode_tok_s / one.decode_tok_s;
    CHECKF(ratio > 3.8 && ratio <= 4.0 + 1e-9, "4 stages: %.3f x one stage, expected 4", ratio);

    /* the slowest stage bounds throughput: worker 2 at half speed */
    double sp[5] = {1, 1, 0.5, 1, 1};
    tern_sim_result slow = run(&c0, &p5, "1,2,3,4", sp, zero, 1, 64, 4, 64, 8, busy);
    /* one layer at speed 0.5: 2e-5 s per token */
    double bound = 1.0 / 2e-5;
    /* every token fed passes the slow stage: the 256 of the prompts and all generated ones but
     * each stream's last (drawn, never fed) */
    const double fed = 256 + 4096 - 64;
    CHECKF(slow.tok_s <= bound * 4096 / fed * (1 + 1e-9),
           "slow stage: %.1f tok/s above its bound %.1f", slow.tok_s, bound);
    CHECKF(slow.tok_s > 0.9 * bound * 4096 / fed, "slow stage: %.1f tok/s, expected near %.1f",
           slow.tok_s, bound);
    CHECK(busy[2] > 0.9 && busy[1] < 0.6);

    /* a slow link adds its latency per hop: one stream, one token, 5 hops round the ring */
    tern_sim_link lan = {1e-3, 1e9};
    tern_sim_result near = run(&c0, &p5, "1,2,3,4", NULL, zero, 1, 1, 4, 1, 5, busy);
    tern_sim_result far = run(&c0, &p5, "1,2,3,4", NULL, lan, 1, 1, 4, 1, 5, busy);
    double added = far.wall_s - near.wall_s;
    CHECKF(fabs(added - 5e-3) < 5e-6, "5 hops of 1 ms added %.6f s", added);
    /* ranks on one host use the shared-memory link: two per host leaves 3 network hops */
    tern_sim_result pairs = run(&c0, &p5, "1,2,3,4", NULL, lan, 2, 1, 4, 1, 5, busy);
    CHECKF(fabs(pairs.wall_s - near.wall_s - 3e-3) < 5e-6, "2 ranks per host added %.6f s",
           pairs.wall_s - near.wall_s);

    /* 5 one-thread ranks sharing a 2-core host run at 2/5 of their speed */
    g_cores = 2, g_threads = 1;
    tern_sim_result shared = run(&c0, &p5, "1,2,3,4", NULL, zero, 5, 64, 4, 64, 8, busy);
    g_cores = g_threads = 0;
    double share = shared.decode_tok_s / five.decode_tok_s;
    CHECKF(fabs(share - 0.4) < 0.02, "2 cores for 5 ranks: %.3f of the speed, expected 0.4", share);

    /* deterministic */
    tern_sim_result a = run(&c, &p5, "auto", NULL, lan, 2, 33, 17, 9, 5, busy);
    tern_sim_result b = run(&c, &p5, "auto", NULL, lan, 2, 33, 17, 9, 5, busy);
    CHECK(memcmp(&a.wall_s, &b.wall_s, sizeof(double)) == 0 && a.tokens == b.tokens &&
          a.ttft_p99_s == b.ttft_p99_s && a.itl_p50_s == b.itl_p50_s && a.tokens == 33 * 9);

    tern_sim_link l;
    CHECK(tern_sim_link_parse("25g", &l, &st) == TERN_OK && fabs(l.bandwidth_gbs - 3.125) < 1e-9);
    CHECK(tern_sim_link_parse("50:2.5", &l, &st) == TERN_OK && fabs(l.latency_s - 5e-5) < 1e-12);
    CHECK(tern_sim_link_parse("fast", &l, &st) == TERN_EINVAL && strstr(st.msg, "link"));
    tern_plan_free(&p1), tern_plan_free(&p5);
    return tern_test_finish("test_sim");
}
