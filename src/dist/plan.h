/* plan.h: the layer split of a pipeline. Rank r runs layers [start[r], end[r]); rank 0 also
 * does embedding lookup and the LM head, so its cost includes the head. */
#ifndef TERN_DIST_PLAN_H
#define TERN_DIST_PLAN_H

#include <stdint.h>

#include "ternpipe/model.h"

#define TERN_PLAN_MAX 64

/* spec: "even" (rank 0 none when N > 1, workers near-equal), "auto" (minimise the slowest
 * stage of a cost model: bytes read per token per layer and the head on rank 0, divided by
 * each rank's measured speed) or "L1,L2,..." (first layer of ranks 1..N-1; rank 0 runs
 * [0, L1)). speed[r] > 0 is rank r's relative speed (NULL: all equal). */
tern_code tern_plan_make(const char *spec, int n_ranks, const tern_hparams *hp, const double *speed,
                         int32_t *start, int32_t *end, tern_status *st);
/* Cost model: bytes of weights read per token by one layer, and by the head. */
double tern_plan_layer_cost(const tern_hparams *hp);
double tern_plan_head_cost(const tern_hparams *hp);

#endif
