/* stats.h: small summary statistics shared by the benchmarks and the simulator. */
#ifndef TERNPIPE_STATS_H
#define TERNPIPE_STATS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The p-quantile (0..1, nearest rank) of v[0..n); sorts v in place. 0 when n <= 0. */
double tern_percentile(double *v, int64_t n, double p);

#ifdef __cplusplus
}
#endif
#endif
