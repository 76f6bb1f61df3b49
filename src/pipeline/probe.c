/* probe.c: measures one pipeline hop over the transport in use (tern_hop_probe in engine.h):
 * rank 0 and rank 1 ping-pong activation-sized messages through comm.c, the path every step
 * takes. Collective over every rank (the others only join the barrier). */
#include <stdlib.h>

#include "pipeline/comm.h"
#include "ternpipe/engine.h"

int tern_hop_probe(const size_t *floats, int n_sizes, int reps, double *one_way_s)
{
    int rank = tern_comm_rank(), size = tern_comm_size();
    if (size < 2) return 0;
    size_t most = 0;
    for (int k = 0; k < n_sizes; k++) most = floats[k] > most ? floats[k] : most;
    float *buf = calloc(most ? most : 1, sizeof *buf);
    if (!buf) return -1;
    tern_req r = {0};
    tern_comm_barrier();
    for (int k = 0; k < n_sizes; k++) {
        double best = 1e30;
        for (int i = 0; i < reps; i++) {
            double t0 = tern_comm_now();
            if (rank == 0) {
                tern_comm_isend_act(1, buf, floats[k], &r);
                tern_comm_wait(&r, NULL);
                tern_comm_irecv_act(1, buf, most, &r);
                tern_comm_wait(&r, NULL);
            } else if (rank == 1) {
                tern_comm_irecv_act(0, buf, most, &r);
                tern_comm_wait(&r, NULL);
                tern_comm_isend_act(0, buf, floats[k], &r);
                tern_comm_wait(&r, NULL);
            }
            double dt = (tern_comm_now() - t0) / 2;
            if (dt < best) best = dt; /* the transport's own cost: the least disturbed trip */
        }
        if (one_way_s) one_way_s[k] = best;
    }
    tern_comm_barrier();
    tern_comm_req_free(&r);
    free(buf);
    return rank == 0 ? n_sizes : 0;
}
