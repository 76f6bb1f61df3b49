/* peak.h: one peak loop of kernels.h's tern_compute_peak (PK_ACC independent accumulators x
 * iters rounds of one instruction, nothing from memory), included once per loop by a variant
 * file after it defines PK_NAME (the function), PK_V (its vector), PK_SET(i) (a vector of i),
 * PK_B, PK_C (the operands), PK_OP(a) (the instruction on accumulator a and the operands pk_b,
 * pk_c, as inline assembly, so that it is neither moved nor dropped), PK_MACS (its
 * multiply-adds), PK_ADD(a, b) and PK_SUM(v) (the lanes' sum as an int32, stored to
 * tern_peak_sink), and optionally PK_ACC (TERN_PEAK_16, the default, or TERN_PEAK_12: the
 * accumulators and both operands must fit the register file, or the spilled accumulators' store
 * and reload chains bound the loop: AVX2's 16 registers measured 0.56 of the FMA rate with 16).
 * The function returns the multiply-adds done. No include guard: each inclusion makes one
 * function and undefines its parameters. */
#include "kernels/kernels-internal.h"

#ifndef PK_ACC
#define PK_ACC TERN_PEAK_16
#endif

static uint64_t PK_NAME(int64_t iters)
{
    const PK_V pk_b = PK_B, pk_c = PK_C;
#define TERN_PK_DECL(i) PK_V a##i = PK_SET(i);
#define TERN_PK_OP(i) PK_OP(a##i);
#define TERN_PK_ADD(i) t = PK_ADD(t, a##i);
#define TERN_PK_ONE(i) +1
    PK_ACC(TERN_PK_DECL)
    for (int64_t n = 0; n < iters; n++) {
        PK_ACC(TERN_PK_OP)
    }
    PK_V t = PK_SET(0);
    PK_ACC(TERN_PK_ADD)
    tern_peak_sink = PK_SUM(t);
    return (uint64_t)iters * (0 PK_ACC(TERN_PK_ONE)) * PK_MACS;
#undef TERN_PK_DECL
#undef TERN_PK_OP
#undef TERN_PK_ADD
#undef TERN_PK_ONE
}

#undef PK_NAME
#undef PK_ACC
#undef PK_V
#undef PK_SET
#undef PK_B
#undef PK_C
#undef PK_OP
#undef PK_MACS
#undef PK_ADD
#undef PK_SUM
