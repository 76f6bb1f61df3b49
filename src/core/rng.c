/* rng.c: xoshiro256** (Blackman and Vigna), state filled by splitmix64 so that nearby seeds give
 * unrelated streams and the all-zero state (the one xoshiro cannot leave) never occurs. */
#include "ternpipe/rng.h"

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

void tern_rng_seed(tern_rng *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
}

uint64_t tern_rng_next(tern_rng *r)
{
    uint64_t *s = r->s;
    const uint64_t result = rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

float tern_rng_uniform(tern_rng *r)
{
    /* top 24 bits: a float has 24 bits of mantissa, so the result is exact and never 1.0f */
    return (float)(tern_rng_next(r) >> 40) * (1.0f / 16777216.0f);
}

double tern_rng_uniform_double(tern_rng *r)
{
    return (double)(tern_rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

uint64_t tern_rng_below(tern_rng *r, uint64_t n)
{
    if (n == 0) return 0;
    /* rejection on the top of the range keeps every value equally likely */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = tern_rng_next(r);
    while (x >= limit);
    return x % n;
}
