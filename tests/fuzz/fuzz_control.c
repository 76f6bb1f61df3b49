/* fuzz_control.c: libFuzzer target for the control messages other ranks send
 * (tern_ctl_unpack_step, tern_ctl_unpack_hello).
 *
 * Invariants checked (a violation aborts, which libFuzzer reports):
 * - bytes either unpack into a step that respects the limits (slots, positions within the
 *   context, entry token counts summing to the step's, head rows within entries, penalty ids
 *   within the vocabulary and summing to the entries' counts) or fail with a one-line message;
 * - an accepted step packs again and unpacks to the same step;
 * - a hello either fails or yields a plan that passes tern_plan_check.
 */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline/control.h"
#include "ternpipe/model.h"

#define REQUIRE(c)                                                                                 \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fuzz_control: invariant failed: %s (line %d)\n", #c, __LINE__);       \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

enum { CAP = 64, RANKS = 3 };

typedef struct bufs {
    tern_step_seq seqs[CAP];
    tern_adjust pen[256];
    double hop[RANKS], busy[RANKS];
    uint64_t rss[RANKS];
} bufs;

static tern_step step_of(bufs *b)
{
    return (tern_step){.seqs = b->seqs,
                       .cap_seqs = CAP,
                       .pen_ids = b->pen,
                       .cap_pen = 256,
                       .hop_at = b->hop,
                       .busy_s = b->busy,
                       .peak_rss = b->rss,
                       .cap_hops = RANKS};
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t arena[1 << 18], out[1 << 16];
    static tern_limits lim;
    static int init;
    tern_status st = {0};
    if (!init) {
        REQUIRE(tern_limits_compute(&lim, RANKS, 1000, 64, 6, 32, 48, 128, 64, 2, &st) == TERN_OK);
        init = 1;
    }
    static bufs b1, b2;
    tern_step s = step_of(&b1);
    if (tern_ctl_unpack_step(data, size, &lim, &s, arena, sizeof arena, &st) == TERN_OK) {
        int64_t tokens = 0, pen = 0;
        REQUIRE(s.n_seqs >= 0 && s.n_seqs <= CAP && s.n_pen <= 256 && s.n_hops <= RANKS);
        for (int32_t i = 0; i < s.n_seqs; i++) {
            const tern_step_seq *q = &s.seqs[i];
            /* running slots carry tokens; an evicted prefix-cache slot only a release */
            bool release =
                q->n_tokens == 0 && (q->flags & (TERN_SEQ_FINISHED | TERN_SEQ_CANCELLED));
            REQUIRE(q->slot >= 0 && q->slot < lim.max_seqs + (release ? lim.cache_slots : 0));
            bool cache_src = q->src >= lim.max_seqs && q->src < lim.max_seqs + lim.cache_slots;
            if (q->flags & (TERN_SEQ_SAVE | TERN_SEQ_KEEP)) REQUIRE(cache_src && q->n_tokens == 0);
            if (q->n_share && !(q->flags & TERN_SEQ_KEEP))
                REQUIRE((q->flags & TERN_SEQ_NEW) && cache_src &&
                        q->pos0 == q->n_share * TERN_KV_BLOCK);
            REQUIRE(q->pos0 >= 0 && q->n_tokens >= 0 && q->pos0 + q->n_tokens <= lim.n_ctx);
            REQUIRE(q->n_head >= 0 && q->n_head <= q->n_tokens);
            tokens += q->n_tokens;
            if (q->flags & TERN_SEQ_SAMPLE) pen += q->n_pen;
        }
        REQUIRE(tokens == s.n_tokens && s.n_tokens <= lim.batch_tokens && pen == s.n_pen);
        for (int32_t i = 0; i < s.n_pen; i++)
            REQUIRE(s.pen_ids[i].id >= 0 && s.pen_ids[i].id < 1000 && isfinite(s.pen_ids[i].add));
        size_t n = tern_ctl_pack_step(&s, out, sizeof out);
        REQUIRE(n > 0);
        tern_step s2 = step_of(&b2);
        REQUIRE(tern_ctl_unpack_step(out, n, &lim, &s2, arena, sizeof arena, &st) == TERN_OK);
        REQUIRE(s2.id == s.id && s2.n_seqs == s.n_seqs && s2.n_tokens == s.n_tokens &&
                s2.n_pen == s.n_pen && s2.shutdown == s.shutdown);
        for (int32_t i = 0; i < s.n_seqs; i++)
            REQUIRE(s2.seqs[i].slot == s.seqs[i].slot && s2.seqs[i].pos0 == s.seqs[i].pos0 &&
                    s2.seqs[i].flags == s.seqs[i].flags && s2.seqs[i].n_head == s.seqs[i].n_head);
    } else {
        REQUIRE(st.msg[0] != 0 && strchr(st.msg, '\n') == NULL);
    }
    tern_hparams hp = {.n_layer = 6, .n_vocab = 1000};
    tern_plan p;
    if (tern_plan_init(&p, RANKS, &hp, &st) == TERN_OK) {
        tern_hello h = {.plan = &p};
        if (tern_ctl_unpack_hello(data, size, &h, &st) == TERN_OK)
            REQUIRE(tern_plan_check(&p, &st) == TERN_OK);
        tern_plan_free(&p);
    }
    return 0;
}
