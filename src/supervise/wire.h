/* wire.h: the supervisor's socket protocol with rank 0 (proto/supervise.proto): plain C
 * messages, frames of a 4-byte little-endian length and a protobuf Frame, and an incremental
 * reader for a byte stream. The only protobuf-c user of src/supervise. What arrives from the
 * socket is input: every length, count and id is checked against the limits before use, and a
 * bad frame is a one-line error (the caller drops the connection).
 */
#ifndef TERN_SUPERVISE_WIRE_H
#define TERN_SUPERVISE_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ternpipe/engine.h"
#include "ternpipe/sampler.h"
#include "ternpipe/status.h"

#define TERN_SV_VERSION 1
#define TERN_SV_MAX_FRAME (4u << 20) /* bytes of one frame: a full-context prompt fits */
#define TERN_SV_MAX_TOKENS 1048576   /* ids in one Submit or Tokens */
#define TERN_SV_MAX_ERROR 512        /* bytes of a Done's or a failed Heartbeat's error text */
#define TERN_SV_MAX_RANKS 4096       /* ranks in one Stats (the pipeline's own bound) */
#define TERN_SV_MAX_TOKEN 128        /* bytes of a hello's token */
#define TERN_SV_TOKEN_ENV "TERNPIPE_SUPERVISOR_TOKEN" /* the job's secret, set by the supervisor   \
                                                       */

typedef enum tern_sv_kind {
    TERN_SV_HELLO = 1,
    TERN_SV_SUBMIT,
    TERN_SV_CANCEL,
    TERN_SV_TOKENS,
    TERN_SV_DONE,
    TERN_SV_HEARTBEAT,
    TERN_SV_STATS,
    TERN_SV_KIND_COUNT
} tern_sv_kind;

typedef struct tern_sv_msg {
    tern_sv_kind kind;
    uint64_t id; /* request (submit, cancel, tokens, done) or heartbeat sequence */
    /* hello */
    uint32_t version, n_ctx, n_vocab, max_seqs, n_ranks;
    const char *token; /* hello: the job's secret, or NULL */
    uint64_t model_checksum;
    /* submit: ids are the prompt; tokens: ids are the tokens drawn */
    const int32_t *ids;
    int32_t n_ids;
    /* tokens: the log-probabilities of its one token (requests with n_logprobs), or NULL */
    const tern_pick *pick;
    tern_sampling sampling; /* submit; its logit_bias points into the message's storage */
    int32_t max_new, resumed;
    int32_t stop[4], n_stop;
    const char *response_format; /* submit: NUL-terminated JSON text (grammar.h), or NULL */
    /* done; heartbeat in state 2 (failed) */
    uint32_t finish;
    char error[TERN_SV_MAX_ERROR];
    /* heartbeat */
    uint32_t state;
    /* stats: stats.ranks points at [stats.n_ranks] entries (the message's storage when read) */
    tern_engine_stats stats;
} tern_sv_msg;

/* Packs m as one frame (length prefix included) into buf; returns its size, 0 when it does not
 * fit cap or TERN_SV_MAX_FRAME. Allocates nothing (rank 0 packs on every token). */
size_t tern_sv_pack(const tern_sv_msg *m, uint8_t *buf, size_t cap);

/* An incremental reader: bytes go in as they come from the socket; whole frames come out. */
typedef struct tern_sv_reader tern_sv_reader;
/* n_vocab bounds the ids a frame may carry (0: no bound, for the supervisor's side). */
tern_code tern_sv_reader_create(tern_sv_reader **out, int32_t n_vocab, tern_status *st);
void tern_sv_reader_free(tern_sv_reader *r);
/* Appends bytes; TERN_EFORMAT when the stream cannot be a frame (a length past the limit). */
tern_code tern_sv_reader_feed(tern_sv_reader *r, const uint8_t *data, size_t n, tern_status *st);
/* The next whole frame: TERN_OK with *got true and m filled (valid until the next call), TERN_OK
 * with *got false when more bytes are needed, or an error naming what is wrong. */
tern_code tern_sv_reader_next(tern_sv_reader *r, tern_sv_msg *m, bool *got, tern_status *st);

#endif
