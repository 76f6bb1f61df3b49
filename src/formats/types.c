/* types.c: the tensor type traits table (types.h). Sizes per spec 3.4 (I2_S), 3.5 (TQ) and
 * ggml's block layouts (Q8_0, Q6_K). */
#include "ternpipe/types.h"

#include <stddef.h>

static const tern_type_traits TRAITS[TERN_TYPE_ID_COUNT] = {
    [TERN_TYPE_F32] = {.name = "F32", .blck = 1, .bytes = 4, .is_float = true},
    [TERN_TYPE_F16] = {.name = "F16", .blck = 1, .bytes = 2, .is_float = true},
    /* ggml block_q8_0: f16 d, int8 qs[32]; value = d * q */
    [TERN_TYPE_Q8_0] = {.name = "Q8_0", .blck = 32, .bytes = 34, .quant = true, .scale_at = 0},
    /* ggml block_q6_K: uint8 ql[128], qh[64], int8 scales[16], f16 d; value = d * sc * (q - 32) */
    [TERN_TYPE_Q6_K] = {.name = "Q6_K", .blck = 256, .bytes = 210, .quant = true, .scale_at = 208},
    [TERN_TYPE_BF16] = {.name = "BF16", .blck = 1, .bytes = 2, .is_float = true},
    [TERN_TYPE_TQ1_0] = {.name = "TQ1_0", .blck = 256, .bytes = 54, .ternary = true},
    [TERN_TYPE_TQ2_0] = {.name = "TQ2_0", .blck = 256, .bytes = 66, .ternary = true},
    /* bitnet.cpp special case: 2 bits per element in 32-byte blocks of 128 over the whole
     * tensor, then a 32-byte tail whose first 4 bytes are the f32 scale */
    [TERN_TYPE_I2_S] =
        {.name = "I2_S", .blck = 128, .bytes = 32, .flat = true, .tail = 32, .ternary = true},
};

const tern_type_traits *tern_type_traits_of(tern_ggml_type t)
{
    if ((int)t < 0 || (int)t >= TERN_TYPE_ID_COUNT || !TRAITS[t].name) return NULL;
    return &TRAITS[t];
}

const char *tern_ggml_type_name(tern_ggml_type t)
{
    const tern_type_traits *tr = tern_type_traits_of(t);
    return tr ? tr->name : NULL;
}

bool tern_type_is_ternary(tern_ggml_type t)
{
    const tern_type_traits *tr = tern_type_traits_of(t);
    return tr && tr->ternary;
}

bool tern_type_is_quant(tern_ggml_type t)
{
    const tern_type_traits *tr = tern_type_traits_of(t);
    return tr && tr->quant;
}

bool tern_ggml_nbytes(tern_ggml_type t, uint64_t ne0, uint64_t n_elements, uint64_t *out)
{
    const tern_type_traits *tr = tern_type_traits_of(t);
    if (!tr) return false;
    if (n_elements % tr->blck != 0 || (!tr->flat && ne0 % tr->blck != 0)) return false;
    uint64_t blocks = n_elements / tr->blck;
    if (blocks > (UINT64_MAX - tr->tail) / tr->bytes) return false;
    *out = blocks * tr->bytes + tr->tail;
    return true;
}

const char *tern_type_list(void)
{
    /* a literal (no lazy init: callable from any thread); test_gguf checks it against TRAITS */
    return "F32 0, F16 1, Q8_0 8, Q6_K 14, BF16 30, TQ1_0 34, TQ2_0 35, I2_S 36";
}
