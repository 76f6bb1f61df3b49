/* bench.h: the parts of `ternpipe bench` beyond its fixed suite. */
#ifndef TERN_TOOLS_BENCH_H
#define TERN_TOOLS_BENCH_H

#include <stdbool.h>
#include <stdint.h>

#include "ternpipe/engine.h"

/* S concurrent sequences of P prompt and G new tokens (rank 0, engine open); quiet: print
 * nothing (a warm-up). */
int tern_bench_workload(tern_engine *e, int32_t S, int32_t P, int32_t G, bool json, bool quiet);
/* GB/s of this machine's read bandwidth with n_threads (median of 7 passes over 1 GiB). */
double tern_bench_read_bandwidth(int n_threads);
/* Best of 5 GMAC/s of the ternary GEMM (int8 x ternary) and of the F16 head GEMM on 64 tokens of a
 * 4096 x 2560 matrix with n_threads: the compute ceilings of prefill and batched decode. */
void tern_bench_compute(int n_threads, double *tgemm_gmacs, double *f16_gmacs, double *i8_gmacs);
/* `bench --profile`: stage costs of this machine and model (before the engine opens). */
int tern_bench_profile(int argc, char **argv);

#endif
