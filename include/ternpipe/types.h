/* types.h: tensor element types (ggml ids) and their one traits table.
 *
 * Every reader, writer and repacker asks this table (block size, bytes per block, ternary or
 * not, name) instead of keeping its own switch, so a type is described once. The table is
 * constant: safe from any thread.
 */
#ifndef TERNPIPE_TYPES_H
#define TERNPIPE_TYPES_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Tensor types (ggml ids). Only the ones ternpipe reads are listed; others are rejected
 * as "unknown tensor type". I2_S is bitnet.cpp's id 36 (blob = n/4 + 32 bytes). */
typedef enum tern_ggml_type {
    TERN_TYPE_F32 = 0,
    TERN_TYPE_F16 = 1,
    TERN_TYPE_Q8_0 = 8,
    TERN_TYPE_Q6_K = 14,
    TERN_TYPE_BF16 = 30,
    TERN_TYPE_TQ1_0 = 34,
    TERN_TYPE_TQ2_0 = 35,
    TERN_TYPE_I2_S = 36,
    TERN_TYPE_ID_COUNT = 37 /* sizes id-indexed tables */
} tern_ggml_type;

typedef struct tern_type_traits {
    const char *name; /* "F32", "I2_S", ... */
    uint32_t blck;    /* elements per block */
    uint32_t bytes;   /* bytes per block */
    /* I2_S: blocks run over the flattened tensor (rows need not be whole blocks in the
     * format, though the kernels want them), followed by one `tail` of bytes per tensor that
     * holds the scale (spec 3.4). Other types: blocks per row, no tail. */
    bool flat;
    uint32_t tail;
    bool ternary;  /* codes in {-1, 0, +1} with scales: repacked by tern_tmat_from_ggml */
    bool is_float; /* F32, F16, BF16: plain floating-point elements */
    /* Q8_0, Q6_K: a float table in blocks of small integers times an f16 scale, each block's
     * f16 `d` at byte `scale_at` (ggml's layouts: kernels.h, tern_dequant_row) */
    bool quant;
    uint32_t scale_at;
} tern_type_traits;

/* The traits of type t; NULL when t is not a type ternpipe knows. */
const tern_type_traits *tern_type_traits_of(tern_ggml_type t);
/* Shorthands over the table. */
const char *tern_ggml_type_name(tern_ggml_type t); /* NULL when unknown */
bool tern_type_is_ternary(tern_ggml_type t);       /* false when unknown */
/* Bytes of a tensor of `n_elements` whose rows have `ne0` elements; false when the type is
 * unknown, the shape does not divide into the type's blocks, or the size overflows. */
bool tern_ggml_nbytes(tern_ggml_type t, uint64_t ne0, uint64_t n_elements, uint64_t *out);
/* True for the block-quantized float tables the embedding and head can use (Q8_0, Q6_K). */
bool tern_type_is_quant(tern_ggml_type t);
/* "F32 0, F16 1, ..., I2_S 36": every known type with its id, for error messages. */
const char *tern_type_list(void);

#ifdef __cplusplus
}
#endif
#endif
