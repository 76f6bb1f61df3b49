/* sim.h: a discrete-event simulator of the pipeline that drives the real scheduler
 * (scheduler.h, not a copy) with measured stage costs (`ternpipe bench --profile`) and a link
 * model, so throughput and latency can be predicted for rank counts, links and hosts one does
 * not have. No MPI, no model.
 *
 * What it models, as the coordinator and workers do it (coordinator.c, worker.c):
 * - up to `inflight` micro-batches in flight, built by tern_sched_build as slots free up;
 * - rank 0 is one thread: embedding and its layers when it launches a micro-batch, its head
 *   slice, the sampler's fold and the final choice when one comes back, in time order;
 * - every other rank is a FIFO server: its layers, the final norm (last layer rank), its head
 *   slice and fold (head ranks), in that order, for each micro-batch as it arrives;
 * - each hop costs latency + bytes / bandwidth: activations [n_tokens][d] fp32 up to the last
 *   layer, head rows [n_head][d] and the sampler's records after it; ranks on one host use the
 *   shared-memory link, ranks on different hosts the network link.
 * Layer cost for a micro-batch of n tokens is interpolated in the profile's table (decodes
 * when every entry has one token, prefill otherwise); a head slice costs its share of rows of
 * the whole head's time for that many rows. Every sampled token is taken as non-stop.
 * Wall time runs to the last token drawn. Deterministic: the same inputs give the same results.
 */
#ifndef TERN_PIPELINE_SIM_H
#define TERN_PIPELINE_SIM_H

#include <stdint.h>

#include "pipeline/plan.h"

#define TERN_SIM_TABLE 16

typedef struct tern_sim_costs {
    int32_t d, n_vocab, n_layer;
    int n_tok;
    double tokens[TERN_SIM_TABLE], decode_s[TERN_SIM_TABLE], prefill_s[TERN_SIM_TABLE];
    int n_rows;
    double rows[TERN_SIM_TABLE], head_s[TERN_SIM_TABLE], norm_s[TERN_SIM_TABLE];
    double embed_tok_s, fold_greedy_s; /* fold: one full row */
} tern_sim_costs;

typedef struct tern_sim_link {
    double latency_s, bandwidth_gbs;
} tern_sim_link;

typedef struct tern_sim_opts {
    const tern_plan *plan;
    const double *speed; /* [n_ranks] relative to the profiled machine; NULL = 1 */
    tern_sim_link shm, net;
    int ranks_per_host; /* consecutive ranks share a host; <= 0: all on one */
    /* cores of a host and threads per rank: ranks sharing too few cores run proportionally
     * slower (speed x cores / (ranks on the host x threads)); 0 = enough cores */
    int cores_per_host, threads;
    int32_t streams, npp, ntg;
    int32_t batch_tokens, inflight, max_seqs, n_ctx;
} tern_sim_opts;

typedef struct tern_sim_result {
    double wall_s, tok_s, decode_tok_s;
    double ttft_p50_s, ttft_p99_s, itl_p50_s, itl_p99_s;
    double hop_p50_s;
    int64_t steps, tokens;
    double *busy; /* [n_ranks] fraction of wall time, caller's array */
} tern_sim_result;

tern_code tern_sim_run(const tern_sim_costs *c, const tern_sim_opts *o, tern_sim_result *r,
                       tern_status *st);
/* Named links: "shm" (the profile's own fit when given, else 2 us, 10 GB/s), "10g", "25g",
 * "100g" (Ethernet: 30/20/10 us, line rate), or "LAT_US:GBPS". */
tern_code tern_sim_link_parse(const char *s, tern_sim_link *out, tern_status *st);

#endif
