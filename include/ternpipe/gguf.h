/* gguf.h: GGUF v2/v3 reader (validated, read-only mapping) and writer.
 *
 * The reader maps the file (or borrows a caller's buffer) and validates every count,
 * length, offset and size against the file size with overflow-safe arithmetic before use.
 * A Hugging Face checkpoint directory opens as the GGUF it converts to, its tensors made on
 * demand by tern_gguf_tensor_read (their data pointers are NULL).
 * A bad file yields one line "gguf: FILE: WHAT: got X, expected Y" in the tern_status.
 * All pointers handed out (strings, array data, tensor data) point into the mapping and
 * stay valid until tern_gguf_close(). Strings are NOT NUL-terminated: use (ptr, len).
 * Scalar array data may be unaligned: read it with the tern_gguf_arr_* accessors.
 * Thread-safety: a tern_gguf is immutable after open (but for a directory's record of what
 * was read, which is locked); concurrent readers are fine.
 *
 * The writer collects metadata and tensors (data pointers are borrowed until write) and
 * writes a GGUF v3 file with the given alignment; it round-trips with the reader.
 */
#ifndef TERNPIPE_GGUF_H
#define TERNPIPE_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ternpipe/status.h"
#include "ternpipe/types.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Metadata value types, numbered as in the GGUF specification. */
typedef enum tern_gguf_vtype {
    TERN_GGUF_UINT8 = 0,
    TERN_GGUF_INT8 = 1,
    TERN_GGUF_UINT16 = 2,
    TERN_GGUF_INT16 = 3,
    TERN_GGUF_UINT32 = 4,
    TERN_GGUF_INT32 = 5,
    TERN_GGUF_FLOAT32 = 6,
    TERN_GGUF_BOOL = 7,
    TERN_GGUF_STRING = 8,
    TERN_GGUF_ARRAY = 9,
    TERN_GGUF_UINT64 = 10,
    TERN_GGUF_INT64 = 11,
    TERN_GGUF_FLOAT64 = 12,
    TERN_GGUF_VTYPE_COUNT
} tern_gguf_vtype;

#define TERN_GGUF_MAX_DIMS 4
#define TERN_GGUF_DEFAULT_ALIGNMENT 32

typedef struct tern_gguf_str {
    const char *ptr; /* not NUL-terminated */
    uint64_t len;
} tern_gguf_str;

/* One metadata value. Arrays of scalars point at raw little-endian data in the file;
 * arrays of strings or arrays carry a parsed item list. */
typedef struct tern_gguf_value {
    tern_gguf_vtype type;
    union {
        uint64_t u64; /* UINT8/16/32/64 and BOOL */
        int64_t i64;  /* INT8/16/32/64 */
        double f64;   /* FLOAT32/64 */
        tern_gguf_str str;
        struct {
            tern_gguf_vtype type;                /* element type */
            uint64_t n;                          /* element count */
            const void *data;                    /* scalar elements: raw, maybe unaligned */
            const struct tern_gguf_value *items; /* STRING/ARRAY elements: [n] */
        } arr;
    } v;
} tern_gguf_value;

typedef struct tern_gguf_kv {
    tern_gguf_str key;
    tern_gguf_value value;
} tern_gguf_kv;

typedef struct tern_gguf_tensor {
    tern_gguf_str name;
    uint32_t n_dims;
    uint64_t ne[TERN_GGUF_MAX_DIMS]; /* ne[0] is the fastest (input) dimension; unused = 1 */
    tern_ggml_type type;
    uint64_t offset; /* relative to the data section */
    uint64_t nbytes;
    const void *data; /* into the mapping; NULL for a directory: use tern_gguf_tensor_read */
} tern_gguf_tensor;

typedef struct tern_gguf tern_gguf;

/* Opens and validates a file. On failure *out is NULL and st holds the one-line error. */
tern_code tern_gguf_open(tern_gguf **out, const char *path, tern_status *st);
/* Same over a caller-owned buffer (fuzzing, tests); the buffer must outlive the handle. */
tern_code tern_gguf_open_memory(tern_gguf **out, const void *data, size_t size, const char *name,
                                tern_status *st);
/* Flags of tern_gguf_open_flags. WEIGHTS_ONLY: a directory's tokenizer files are not read
 * (no tokenizer.* keys), for a process that never tokenizes (a pipeline worker); the checksum
 * is the same with or without it. Files ignore it. */
#define TERN_GGUF_WEIGHTS_ONLY 1u
tern_code tern_gguf_open_flags(tern_gguf **out, const char *path, unsigned flags, tern_status *st);
void tern_gguf_close(tern_gguf *g);

/* Drops this process's mapping of the file pages under [data, data + nbytes) (whole pages
 * inside the range; the part outside the file is ignored): for data that has been copied out,
 * so that it neither counts in RSS nor is kept resident. They are read again if touched. A
 * no-op for tern_gguf_open_memory, whose memory belongs to the caller. */
void tern_gguf_drop_pages(const tern_gguf *g, const void *data, uint64_t nbytes);
/* FNV-1a over the tensor table, the file size and the tensor data (whole tensors in files up
 * to 64 MiB, 64 bytes every 256 KiB above): tells two model files apart in the pipeline
 * handshake without reading the whole file again. */
uint64_t tern_gguf_checksum(const tern_gguf *g);

uint32_t tern_gguf_version(const tern_gguf *g);
uint32_t tern_gguf_alignment(const tern_gguf *g);
uint64_t tern_gguf_file_size(const tern_gguf *g);
const char *tern_gguf_path(const tern_gguf *g);

uint64_t tern_gguf_n_kv(const tern_gguf *g);
const tern_gguf_kv *tern_gguf_kv_at(const tern_gguf *g, uint64_t i);
/* NULL when the key is absent. */
const tern_gguf_value *tern_gguf_find(const tern_gguf *g, const char *key);

/* Rows [r0, r1) of tensor t (a row: ne[0] elements; an I2_S tensor only whole, its scale
 * being a tail of the whole) in its GGUF encoding, copied into dst. From a file: out of the
 * mapping in 16 MiB pieces, each piece's pages dropped once copied. From a Hugging Face
 * directory (tern_gguf_open on a directory), whose tensors have data == NULL: converted from
 * the checkpoint tensors when asked (safetensors.h, tern_hf_convert), so a process reads only
 * what it asks for; errors only the data shows (a packed code 3, non-finite masters) come
 * from here, naming the checkpoint tensor. Safe from several threads. */
tern_code tern_gguf_tensor_read(const tern_gguf *g, const tern_gguf_tensor *t, uint64_t r0,
                                uint64_t r1, void *dst, tern_status *st);
/* For a directory: "read T of N checkpoint tensors (X of Y MB): layers [a,b), <name> rows
 * [v0,v1), ...", what tern_gguf_tensor_read has converted so far (the length snprintf would
 * write); for a file 0 and an empty string. */
size_t tern_gguf_describe_reads(const tern_gguf *g, char *buf, size_t cap);

uint64_t tern_gguf_n_tensors(const tern_gguf *g);
const tern_gguf_tensor *tern_gguf_tensor_at(const tern_gguf *g, uint64_t i);
const tern_gguf_tensor *tern_gguf_find_tensor(const tern_gguf *g, const char *name);

/* Typed getters with a clear error naming the key when it is missing or of the wrong type.
 * Integer getters accept any integer type whose value fits. */
tern_code tern_gguf_get_u32(const tern_gguf *g, const char *key, uint32_t *out, tern_status *st);
tern_code tern_gguf_get_i32(const tern_gguf *g, const char *key, int32_t *out, tern_status *st);
tern_code tern_gguf_get_f32(const tern_gguf *g, const char *key, float *out, tern_status *st);
tern_code tern_gguf_get_bool(const tern_gguf *g, const char *key, bool *out, tern_status *st);
tern_code tern_gguf_get_str(const tern_gguf *g, const char *key, tern_gguf_str *out,
                            tern_status *st);
/* An array of element type `type` (any length); *out points at the value. */
tern_code tern_gguf_get_arr(const tern_gguf *g, const char *key, tern_gguf_vtype type,
                            const tern_gguf_value **out, tern_status *st);

/* Element accessors for scalar arrays (bounds are the caller's job: i < arr.n). */
int64_t tern_gguf_arr_int(const tern_gguf_value *arr, uint64_t i);  /* any integer/bool type */
double tern_gguf_arr_float(const tern_gguf_value *arr, uint64_t i); /* FLOAT32/64 */

/* String helpers. */
bool tern_gguf_str_eq(tern_gguf_str s, const char *cstr);

/* Type facts. */
const char *tern_gguf_vtype_name(tern_gguf_vtype t);
/* Bytes of one scalar of type t; 0 for STRING, ARRAY and unknown types. */
size_t tern_gguf_vtype_size(tern_gguf_vtype t);
/* Tensor types: ternpipe/types.h (tern_type_traits_of, tern_ggml_nbytes). */

/* ---- writer ---- */
typedef struct tern_gguf_writer tern_gguf_writer;

tern_gguf_writer *tern_gguf_writer_new(void); /* NULL only when out of memory */
void tern_gguf_writer_free(tern_gguf_writer *w);
void tern_gguf_writer_set_alignment(tern_gguf_writer *w, uint32_t alignment);

/* Scalars (the value is copied). */
tern_code tern_gguf_writer_add_u32(tern_gguf_writer *w, const char *key, uint32_t v);
tern_code tern_gguf_writer_add_i32(tern_gguf_writer *w, const char *key, int32_t v);
tern_code tern_gguf_writer_add_u64(tern_gguf_writer *w, const char *key, uint64_t v);
tern_code tern_gguf_writer_add_f32(tern_gguf_writer *w, const char *key, float v);
tern_code tern_gguf_writer_add_bool(tern_gguf_writer *w, const char *key, bool v);
tern_code tern_gguf_writer_add_str(tern_gguf_writer *w, const char *key, const char *v);
/* Generic scalar of any scalar vtype, raw little-endian bytes of its size. */
tern_code tern_gguf_writer_add_scalar(tern_gguf_writer *w, const char *key, tern_gguf_vtype type,
                                      const void *raw);
/* Array of scalars: `n` elements of `type`, raw data copied. */
tern_code tern_gguf_writer_add_arr(tern_gguf_writer *w, const char *key, tern_gguf_vtype type,
                                   const void *data, uint64_t n);
/* Array of strings given as pointers and lengths (copied). */
tern_code tern_gguf_writer_add_arr_str(tern_gguf_writer *w, const char *key,
                                       const char *const *strs, const uint64_t *lens, uint64_t n);
/* Any value, including nested arrays, copied from a reader's value. */
tern_code tern_gguf_writer_add_value(tern_gguf_writer *w, const char *key,
                                     const tern_gguf_value *v);

/* A tensor; `data` (nbytes as tern_ggml_nbytes says) is borrowed until write. */
tern_code tern_gguf_writer_add_tensor(tern_gguf_writer *w, const char *name, tern_ggml_type type,
                                      uint32_t n_dims, const uint64_t *ne, const void *data,
                                      tern_status *st);
tern_code tern_gguf_writer_write(tern_gguf_writer *w, const char *path, tern_status *st);

#ifdef __cplusplus
}
#endif
#endif
