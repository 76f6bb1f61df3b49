/* bench.h: the parts of `ternpipe bench` beyond its fixed suite. */
#ifndef TERN_TOOLS_BENCH_H
#define TERN_TOOLS_BENCH_H

#include <stdbool.h>
#include <stdint.h>

#include "ternpipe/engine.h"

/* S concurrent sequences of P prompt and G new tokens (rank 0, engine open); quiet: print
 * nothing (a warm-up). */
int tern_bench_workload(tern_engine *e, int32_t S, int32_t P, int32_t G, const tern_sampling *draw,
                        bool json, bool quiet);
/* GB/s of this machine's read bandwidth with n_threads: of the access patterns tried (1, 4 or 8
 * sequential streams a thread, with or without a software prefetch), the best median of 7
 * passes over 1 GiB. */
double tern_bench_read_bandwidth(int n_threads);
/* GMAC/s with n_threads, every thread at once: the active kernel variant's peaks (its int8 dot
 * and fp32 FMA instructions in register loops, tern_compute_peak: the compute ceilings of
 * prefill and batched decode; the best of TERN_BENCH_PEAK_PROBES short probes, and the
 * slowest: on a shared machine a unit's rate changes from one spell to the next, by 2.5x for
 * the AMX tiles of an Intel Xeon VM), and best of 5 of the kernels on 64 tokens of a 4096 x 2560
 * matrix (the ternary GEMM, the F16 and int8 head GEMMs). */
#define TERN_BENCH_PEAK_PROBES 9
typedef struct tern_bench_rates {
    double int8_peak, fp32_peak, int8_vec_peak; /* int8_vec: the vector dot (kernels.h) */
    double int8_peak_min, fp32_peak_min;        /* the slowest probes */
    bool tiles;                                 /* int8_peak is AMX tiles' (variant amx) */
    double tgemm, f16_head, i8_head;
} tern_bench_rates;
void tern_bench_compute(int n_threads, tern_bench_rates *r);
/* `bench --profile`: stage costs of this machine and model (before the engine opens). */
int tern_bench_profile(int argc, char **argv);

#endif
