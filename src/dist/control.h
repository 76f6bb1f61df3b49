/* control.h: control messages (proto/ternpipe.proto) to and from plain C structs. The only
 * protobuf-c user. Unpacking uses a caller-owned arena, so the per-step path never calls
 * malloc. */
#ifndef TERN_DIST_CONTROL_H
#define TERN_DIST_CONTROL_H

#include <stddef.h>
#include <stdint.h>

#include "ternpipe/status.h"

#define TERN_PROTOCOL_VERSION 1
#define TERN_MAX_RANKS 64

enum { TERN_SEQ_NEW = 1, TERN_SEQ_FINISHED = 2, TERN_SEQ_CANCELLED = 4 };

typedef struct tern_hello {
    uint32_t protocol_version;
    uint64_t model_checksum;
    uint32_t n_layers;
    int32_t n_ranks;
    int32_t layer_start[TERN_MAX_RANKS], layer_end[TERN_MAX_RANKS]; /* per rank; rank 0 empty */
    uint32_t max_tokens, max_seqs, n_ctx, kv_blocks;
} tern_hello;

typedef struct tern_step_seq {
    int32_t slot, pos0, n_tokens;
    uint32_t flags;
} tern_step_seq;

typedef struct tern_step {
    uint64_t id;
    int32_t n_seqs;
    tern_step_seq *seqs; /* [cap_seqs], caller-owned */
    int32_t cap_seqs;
    int32_t n_tokens;
    double sent_at;
    int32_t n_hops;
    double hop_at[TERN_MAX_RANKS];
    double busy_s[TERN_MAX_RANKS];
    uint64_t peak_rss[TERN_MAX_RANKS];
    int shutdown;
} tern_step;

/* Packs into buf; returns the size, 0 when it does not fit. */
size_t tern_ctl_pack_hello(const tern_hello *h, uint8_t *buf, size_t cap);
size_t tern_ctl_pack_step(const tern_step *s, uint8_t *buf, size_t cap);
/* Unpacks; arena is scratch for protobuf-c (a few KB per sequence entry is plenty). */
tern_code tern_ctl_unpack_hello(const uint8_t *buf, size_t n, tern_hello *h, tern_status *st);
tern_code tern_ctl_unpack_step(const uint8_t *buf, size_t n, tern_step *s, void *arena,
                               size_t arena_bytes, tern_status *st);

#endif
