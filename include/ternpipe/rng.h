/* rng.h: small seeded pseudo-random generator (xoshiro256**, seeded through splitmix64).
 *
 * Contract: a tern_rng is plain state owned by its user (a sampler, a test); same seed, same
 * sequence, on every platform. Not thread-safe: one generator per thread or sequence. Not for
 * anything security-related.
 */
#ifndef TERNPIPE_RNG_H
#define TERNPIPE_RNG_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tern_rng {
    uint64_t s[4];
} tern_rng;

/* Any seed is fine, 0 included. */
void tern_rng_seed(tern_rng *r, uint64_t seed);
uint64_t tern_rng_next(tern_rng *r);
/* Uniform in [0, 1) with 24 random bits (every value exactly representable). */
float tern_rng_uniform(tern_rng *r);
/* Uniform in [0, 1) with 53 random bits. */
double tern_rng_uniform_double(tern_rng *r);
/* Uniform integer in [0, n), unbiased; n == 0 gives 0. */
uint64_t tern_rng_below(tern_rng *r, uint64_t n);

#ifdef __cplusplus
}
#endif
#endif
