/* plan.h: where the work of a pipeline runs. Rank r runs layers [layer_start[r], layer_end[r])
 * and holds LM head rows [vocab_start[r], vocab_end[r]).
 *
 * Ring order: a micro-batch travels 0 -> 1 -> ... -> N-1 -> 0. Layers are contiguous in rank
 * order 0..N-1; head rows are contiguous in ring order after the last layer: ranks 1..N-1 in
 * turn, then rank 0 (which completes the ring and makes the final choice), so the head slices
 * are folded in vocabulary order (sampler.h). A rank 1..N-1 holding head rows therefore comes
 * at or after the last rank holding layers. Head slice boundaries are multiples of
 * TERN_PLAN_ROW_GRAIN (the head kernels' row tile), except the vocabulary's end.
 *
 * Every array has n_ranks entries (tern_plan_init); nothing is sized by a fixed rank count.
 */
#ifndef TERN_PIPELINE_PLAN_H
#define TERN_PIPELINE_PLAN_H

#include <stdint.h>

#include "ternpipe/model.h"

#define TERN_PLAN_ROW_GRAIN 16

typedef struct tern_plan {
    int n_ranks;
    int32_t n_layer, n_vocab;
    int32_t *layer_start, *layer_end; /* [n_ranks] */
    int32_t *vocab_start, *vocab_end; /* [n_ranks] */
    double *cost;                     /* [n_ranks] predicted stage time (bytes / speed) */
} tern_plan;

/* The cost model: bytes of weights read per token by one layer, and by one head row (which
 * stand for the MACs too: both are proportional to the weight count). */
typedef struct tern_plan_costs {
    double layer, head_row;
} tern_plan_costs;

tern_code tern_plan_init(tern_plan *p, int n_ranks, const tern_hparams *hp, tern_status *st);
void tern_plan_free(tern_plan *p);

double tern_plan_layer_cost(const tern_hparams *hp);
/* bytes per head row: F16 rows (2 bytes per weight) or int8 rows with a scale; a Q8_0/Q6_K
 * table (hp->head_table) is read as it is: its bytes per row, whatever the type */
double tern_plan_head_row_cost(const tern_hparams *hp, tern_head_type type);

/* spec: LAYERS[:HEAD].
 *   LAYERS: "even" (rank 0 none when N > 1, workers near-equal), "auto" (layers and head rows
 *   placed together to minimise the slowest stage of the cost model divided by each rank's
 *   measured speed; the default when spec is NULL) or "L1,L2,...,L{N-1}" (first layer of
 *   ranks 1..N-1, non-decreasing; rank 0 runs [0, L1)).
 *   HEAD (not with auto): "" or absent = every row on rank 0; "even" = split evenly over rank 0
 *   and the ranks from the last layer rank on; "h1,...,h{N-1}" = rows on ranks 1..N-1 (rank 0
 *   holds the rest).
 * speed[r] > 0 is rank r's relative speed (NULL: all equal). Fills p (from tern_plan_init). */
tern_code tern_plan_make(const char *spec, const tern_plan_costs *costs, const double *speed,
                         tern_plan *p, tern_status *st);
/* Checks the invariants above (a plan received from another rank is input). */
tern_code tern_plan_check(const tern_plan *p, tern_status *st);
/* Fills p->cost from the cost model and speeds; returns the slowest stage. */
double tern_plan_stage_costs(tern_plan *p, const tern_plan_costs *costs, const double *speed);
/* The last rank in ring order whose stage runs layers (0 when rank 0 runs them all) */
int tern_plan_last_layer_rank(const tern_plan *p);
/* One line: "r0 [0,2)+embed+head[96000,128256) r1 [2,16) ...". */
void tern_plan_describe(const tern_plan *p, char *buf, size_t cap);

#endif
