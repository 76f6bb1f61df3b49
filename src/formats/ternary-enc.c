/* ternary-enc.c: ternary values -> the I2_S, TQ2_0 and TQ1_0 blobs (spec 3.4-3.5); the
 * decoders are in src/kernels/tmat.c. */
#include <string.h>

#include "formats/formats-internal.h"

void tern_enc_i2s(const int8_t *t, uint64_t n, float alpha, uint8_t *out)
{
    /* spec 3.4: 128-element blocks of 32 bytes; byte j holds j, j+32, j+64, j+96 in bits
     * 7-6, 5-4, 3-2, 1-0; code t+1; the f32 scale at n/4, then 28 zero bytes */
    for (uint64_t b = 0; b < n / 128; b++)
        for (int j = 0; j < 32; j++) {
            const int8_t *e = t + b * 128 + j;
            out[b * 32 + (uint64_t)j] =
                (uint8_t)((e[0] + 1) << 6 | (e[32] + 1) << 4 | (e[64] + 1) << 2 | (e[96] + 1));
        }
    memcpy(out + n / 4, &alpha, 4);
}

void tern_enc_tq2(const int8_t *t, uint64_t n, uint16_t d, uint8_t *out)
{
    /* spec 3.5: 66-byte blocks: qs[64] then f16 d; per 32-byte half (128 elements) byte m holds
     * m, m+32, m+64, m+96 in bits 1-0, 3-2, 5-4, 7-6 */
    for (uint64_t b = 0; b < n / 256; b++) {
        uint8_t *q = out + b * 66;
        const int8_t *e = t + b * 256;
        for (int h = 0; h < 2; h++)
            for (int m = 0; m < 32; m++) {
                const int8_t *x = e + h * 128 + m;
                q[h * 32 + m] =
                    (uint8_t)((x[0] + 1) | (x[32] + 1) << 2 | (x[64] + 1) << 4 | (x[96] + 1) << 6);
            }
        memcpy(q + 64, &d, 2);
    }
}

static uint8_t tq1_byte(const int8_t *e, int stride, int count)
{
    /* count trits, most significant first, then scaled to 5 digits and stored as
     * ceil(q * 256 / 243) (spec 3.5) */
    unsigned q = 0;
    for (int i = 0; i < count; i++) q = q * 3 + (unsigned)(e[i * stride] + 1);
    for (int i = count; i < 5; i++) q *= 3;
    return (uint8_t)((q * 256 + 242) / 243);
}

void tern_enc_tq1(const int8_t *t, uint64_t n, uint16_t d, uint8_t *out)
{
    for (uint64_t b = 0; b < n / 256; b++) {
        uint8_t *q = out + b * 54;
        const int8_t *e = t + b * 256;
        for (int m = 0; m < 32; m++) q[m] = tq1_byte(e + m, 32, 5);
        for (int m = 0; m < 16; m++) q[32 + m] = tq1_byte(e + 160 + m, 16, 5);
        for (int j = 0; j < 4; j++) q[48 + j] = tq1_byte(e + 240 + j, 4, 4);
        memcpy(q + 52, &d, 2);
    }
}
