/* stats.c: see stats.h. */
#include "ternpipe/stats.h"

#include <stdlib.h>

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double tern_percentile(double *v, int64_t n, double p)
{
    if (n <= 0) return 0;
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    int64_t i = (int64_t)(p * (double)(n - 1) + 0.5);
    return v[i < n ? i : n - 1];
}
