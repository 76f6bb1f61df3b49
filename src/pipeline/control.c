/* control.c: see control.h. */
#include "pipeline/control.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ternpipe.pb-c.h"
#include "ternpipe/model.h"
#include "ternpipe/sampler.h"

/* bump allocator over a caller's buffer: protobuf-c's unpack allocates per field */
typedef struct arena {
    uint8_t *base;
    size_t cap, used;
} arena;

static void *arena_alloc(void *data, size_t size)
{
    arena *a = data;
    size_t off = (a->used + 15) & ~(size_t)15;
    if (off > a->cap || size > a->cap - off) return NULL;
    a->used = off + size;
    return a->base + off;
}
static void arena_free(void *data, void *p)
{
    (void)data, (void)p;
}

static size_t pack_control(Ternpipe__Control *c, uint8_t *buf, size_t cap)
{
    size_t n = ternpipe__control__get_packed_size(c);
    if (n > cap) return 0;
    return ternpipe__control__pack(c, buf);
}

size_t tern_ctl_pack_hello(const tern_hello *h, uint8_t *buf, size_t cap)
{
    Ternpipe__Hello hm = TERNPIPE__HELLO__INIT;
    const int N = h->n_ranks;
    uint32_t *v = malloc(sizeof(uint32_t) * 4 * (size_t)(N > 0 ? N : 1));
    if (!v) return 0;
    for (int r = 0; r < N; r++) {
        v[r] = (uint32_t)h->plan->layer_start[r];
        v[N + r] = (uint32_t)h->plan->layer_end[r];
        v[2 * N + r] = (uint32_t)h->plan->vocab_start[r];
        v[3 * N + r] = (uint32_t)h->plan->vocab_end[r];
    }
    hm.has_protocol_version = 1, hm.protocol_version = h->protocol_version;
    hm.has_model_checksum = 1, hm.model_checksum = h->model_checksum;
    hm.has_n_layers = 1, hm.n_layers = h->n_layers;
    hm.n_layer_start = hm.n_layer_end = hm.n_vocab_start = hm.n_vocab_end = (size_t)N;
    hm.layer_start = v, hm.layer_end = v + N, hm.vocab_start = v + 2 * N;
    hm.vocab_end = v + 3 * N;
    hm.has_batch_tokens = 1, hm.batch_tokens = h->batch_tokens;
    hm.has_max_seqs = 1, hm.max_seqs = h->max_seqs;
    hm.has_n_ctx = 1, hm.n_ctx = h->n_ctx;
    hm.has_kv_blocks = 1, hm.kv_blocks = h->kv_blocks;
    hm.has_inflight = 1, hm.inflight = h->inflight;
    hm.has_n_ranks = 1, hm.n_ranks = (uint32_t)N;
    Ternpipe__Control c = TERNPIPE__CONTROL__INIT;
    c.body_case = TERNPIPE__CONTROL__BODY_HELLO;
    c.hello = &hm;
    size_t n = pack_control(&c, buf, cap);
    free(v);
    return n;
}

void tern_ctl_step_totals(tern_step *s)
{
    s->n_head = s->n_sample = s->n_full = 0;
    for (int32_t i = 0; i < s->n_seqs; i++) {
        const tern_step_seq *q = &s->seqs[i];
        s->n_head += q->n_head;
        if (q->flags & TERN_SEQ_SAMPLE) s->n_sample += q->flags & TERN_SEQ_SPEC ? q->n_head : 1;
        if (q->flags & TERN_SEQ_FULL) s->n_full += q->n_head;
    }
}

size_t tern_ctl_pack_step(const tern_step *s, uint8_t *buf, size_t cap)
{
    Ternpipe__Step sm = TERNPIPE__STEP__INIT;
    size_t ns = s->n_seqs > 0 ? (size_t)s->n_seqs : 1;
    Ternpipe__SeqEntry *ents = malloc(ns * sizeof *ents);
    Ternpipe__SeqEntry **ptrs = malloc(ns * sizeof *ptrs);
    uint32_t *pen = malloc((s->n_pen > 0 ? (size_t)s->n_pen : 1) * sizeof *pen);
    float *add = malloc((s->n_pen > 0 ? (size_t)s->n_pen : 1) * sizeof *add);
    size_t n = 0;
    if (!ents || !ptrs || !pen || !add) goto out;
    for (int i = 0; i < s->n_seqs; i++) {
        const tern_step_seq *q = &s->seqs[i];
        Ternpipe__SeqEntry e = TERNPIPE__SEQ_ENTRY__INIT;
        e.has_slot = 1, e.slot = (uint32_t)q->slot;
        e.has_pos0 = 1, e.pos0 = (uint32_t)q->pos0;
        if (q->flags & (TERN_SEQ_SAVE | TERN_SEQ_KEEP | TERN_SEQ_NEW) &&
            (q->n_share || q->flags & (TERN_SEQ_SAVE | TERN_SEQ_KEEP)))
            e.has_src = 1, e.src = (uint32_t)q->src, e.has_n_share = 1,
            e.n_share = (uint32_t)q->n_share;
        e.has_n_tokens = 1, e.n_tokens = (uint32_t)q->n_tokens;
        e.has_flags = 1, e.flags = q->flags;
        if (q->n_head) e.has_n_head = 1, e.n_head = (uint32_t)q->n_head;
        if (q->flags & TERN_SEQ_SAMPLE) {
            e.has_temperature = 1, e.temperature = q->temperature;
            e.has_penalty = 1, e.penalty = q->penalty;
            e.has_n_cand = 1, e.n_cand = (uint32_t)q->n_cand;
            e.has_n_logprobs = 1, e.n_logprobs = (uint32_t)q->n_logprobs;
            e.has_gumbel = 1, e.gumbel = q->gumbel;
            e.has_seed = 1, e.seed = q->seed;
            e.has_n_pen = 1, e.n_pen = (uint32_t)q->n_pen;
        }
        ents[i] = e;
        ptrs[i] = &ents[i];
    }
    /* the id, with the top bit for "the repetition penalty applies" */
    for (int32_t i = 0; i < s->n_pen; i++) {
        pen[i] = (uint32_t)s->pen_ids[i].id | (s->pen_ids[i].rep ? 0x80000000u : 0u);
        add[i] = s->pen_ids[i].add;
    }
    sm.has_microbatch_id = 1, sm.microbatch_id = s->id;
    sm.n_seqs = (size_t)s->n_seqs, sm.seqs = ptrs;
    sm.has_n_tokens = 1, sm.n_tokens = (uint32_t)s->n_tokens;
    sm.has_sent_at = 1, sm.sent_at = s->sent_at;
    sm.n_hop_at = (size_t)s->n_hops, sm.hop_at = s->hop_at;
    sm.n_busy_s = (size_t)s->n_hops, sm.busy_s = s->busy_s;
    sm.n_peak_rss = (size_t)s->n_hops, sm.peak_rss = s->peak_rss;
    sm.has_shutdown = 1, sm.shutdown = s->shutdown != 0;
    sm.n_pen_ids = (size_t)s->n_pen, sm.pen_ids = pen;
    sm.n_pen_add = (size_t)s->n_pen, sm.pen_add = add;
    Ternpipe__Control c = TERNPIPE__CONTROL__INIT;
    c.body_case = TERNPIPE__CONTROL__BODY_STEP;
    c.step = &sm;
    n = pack_control(&c, buf, cap);
out:
    free(ents), free(ptrs), free(pen), free(add);
    return n;
}

tern_code tern_ctl_unpack_hello(const uint8_t *buf, size_t n, tern_hello *h, tern_status *st)
{
    Ternpipe__Control *c = ternpipe__control__unpack(NULL, n, buf);
    tern_code rc = TERN_OK;
    if (!c || c->body_case != TERNPIPE__CONTROL__BODY_HELLO) {
        rc = tern_status_set(
            st, TERN_EFORMAT,
            "handshake: hello message: got %zu undecodable bytes, expected a Hello", n);
        goto out;
    }
    const Ternpipe__Hello *hm = c->hello;
    tern_plan *plan = h->plan;
    h->protocol_version = hm->protocol_version;
    h->model_checksum = hm->model_checksum;
    h->n_layers = hm->n_layers;
    h->n_ranks = (int32_t)hm->n_ranks;
    size_t N = plan ? (size_t)plan->n_ranks : 0;
    if (hm->n_ranks != N || hm->n_layer_start != N || hm->n_layer_end != N ||
        hm->n_vocab_start != N || hm->n_vocab_end != N) {
        rc = tern_status_set(st, TERN_EFORMAT,
                             "handshake: hello plan: got %u ranks (%zu/%zu/%zu/%zu entries), "
                             "expected %zu",
                             hm->n_ranks, hm->n_layer_start, hm->n_layer_end, hm->n_vocab_start,
                             hm->n_vocab_end, N);
        goto out;
    }
    for (size_t r = 0; r < N; r++) {
        if (hm->layer_start[r] > INT32_MAX || hm->layer_end[r] > INT32_MAX ||
            hm->vocab_start[r] > INT32_MAX || hm->vocab_end[r] > INT32_MAX) {
            rc = tern_status_set(st, TERN_EFORMAT, "handshake: hello plan: rank %zu out of range",
                                 r);
            goto out;
        }
        plan->layer_start[r] = (int32_t)hm->layer_start[r];
        plan->layer_end[r] = (int32_t)hm->layer_end[r];
        plan->vocab_start[r] = (int32_t)hm->vocab_start[r];
        plan->vocab_end[r] = (int32_t)hm->vocab_end[r];
    }
    h->batch_tokens = hm->batch_tokens, h->max_seqs = hm->max_seqs;
    h->n_ctx = hm->n_ctx, h->kv_blocks = hm->kv_blocks, h->inflight = hm->inflight;
    rc = tern_plan_check(plan, st);
out:
    if (c) ternpipe__control__free_unpacked(c, NULL);
    return rc;
}

#define BAD(...) (rc = tern_status_set(st, TERN_EFORMAT, __VA_ARGS__))

tern_code tern_ctl_unpack_step(const uint8_t *buf, size_t n, const tern_limits *lim, tern_step *s,
                               void *arena_buf, size_t arena_bytes, tern_status *st)
{
    arena a = {arena_buf, arena_bytes, 0};
    ProtobufCAllocator alloc = {arena_alloc, arena_free, &a};
    tern_code rc = TERN_OK;
    Ternpipe__Control *c = ternpipe__control__unpack(&alloc, n, buf);
    if (!c || c->body_case != TERNPIPE__CONTROL__BODY_STEP)
        return tern_status_set(st, TERN_EFORMAT,
                               "pipeline: step message: got %zu undecodable bytes, expected a Step",
                               n);
    const Ternpipe__Step *sm = c->step;
    if ((int64_t)sm->n_seqs > s->cap_seqs || (int64_t)sm->n_seqs > lim->step_entries)
        return BAD("pipeline: step: got %zu entries, expected at most %d", sm->n_seqs,
                   s->cap_seqs < lim->step_entries ? s->cap_seqs : lim->step_entries);
    if ((int64_t)sm->n_hop_at > s->cap_hops || sm->n_busy_s != sm->n_hop_at ||
        sm->n_peak_rss != sm->n_hop_at || (int64_t)sm->n_hop_at > lim->n_ranks)
        return BAD("pipeline: step: got %zu/%zu/%zu hop records, expected equal counts <= %d",
                   sm->n_hop_at, sm->n_busy_s, sm->n_peak_rss, lim->n_ranks);
    if ((int64_t)sm->n_pen_ids > s->cap_pen || (int64_t)sm->n_pen_ids > lim->pen_ids ||
        sm->n_pen_add != sm->n_pen_ids)
        return BAD("pipeline: step: got %zu penalty ids and %zu additions, expected equal counts "
                   "at most %d",
                   sm->n_pen_ids, sm->n_pen_add, lim->pen_ids);
    if (sm->n_tokens > (uint32_t)lim->batch_tokens)
        return BAD("pipeline: step: got %u tokens, expected at most %d (the batch)", sm->n_tokens,
                   lim->batch_tokens);
    s->id = sm->microbatch_id;
    s->n_seqs = (int32_t)sm->n_seqs;
    int64_t tokens = 0, pen = 0;
    for (size_t i = 0; i < sm->n_seqs; i++) {
        const Ternpipe__SeqEntry *e = sm->seqs[i];
        tern_step_seq *q = &s->seqs[i];
        /* running slots carry tokens; a cache slot only a release (an eviction) */
        bool release = e->n_tokens == 0 && (e->flags & (TERN_SEQ_FINISHED | TERN_SEQ_CANCELLED));
        uint32_t slots = (uint32_t)(lim->max_seqs + (release ? lim->cache_slots : 0));
        if (e->slot >= slots)
            return BAD("pipeline: step entry %zu slot: got %u, expected < %u", i, e->slot, slots);
        bool cache_src = e->src >= (uint32_t)lim->max_seqs &&
                         e->src < (uint32_t)(lim->max_seqs + lim->cache_slots);
        if (((e->flags & (TERN_SEQ_SAVE | TERN_SEQ_KEEP)) && (!cache_src || e->n_tokens)) ||
            ((e->flags & TERN_SEQ_KEEP) &&
             (e->n_share < 1 || e->n_share > (uint32_t)(lim->n_ctx / TERN_KV_BLOCK))) ||
            (e->n_share && !(e->flags & TERN_SEQ_KEEP) &&
             (!(e->flags & TERN_SEQ_NEW) || !cache_src ||
              e->n_share > (uint32_t)(lim->n_ctx / TERN_KV_BLOCK) ||
              e->pos0 != e->n_share * TERN_KV_BLOCK)))
            return BAD("pipeline: step entry %zu prefix cache: got slot %u, %u shared blocks at "
                       "position %u (flags %#x), expected a cache slot in [%d, %d) and the "
                       "sequence starting after the shared blocks",
                       i, e->src, e->n_share, e->pos0, e->flags, lim->max_seqs,
                       lim->max_seqs + lim->cache_slots);
        if (e->pos0 > (uint32_t)lim->n_ctx || e->n_tokens > (uint32_t)lim->n_ctx - e->pos0)
            return BAD("pipeline: step entry %zu positions: got %u + %u, expected within the "
                       "context %d",
                       i, e->pos0, e->n_tokens, lim->n_ctx);
        if (e->flags & ~(uint32_t)TERN_SEQ_FLAGS_ALL)
            return BAD("pipeline: step entry %zu flags: got %#x, expected bits of %#x", i, e->flags,
                       TERN_SEQ_FLAGS_ALL);
        if (e->n_head > e->n_tokens || ((e->flags & TERN_SEQ_SAMPLE) && e->n_head < 1) ||
            ((e->flags & TERN_SEQ_SPEC) &&
             (!(e->flags & TERN_SEQ_SAMPLE) || (e->flags & TERN_SEQ_FULL) ||
              e->n_head != e->n_tokens)))
            return BAD("pipeline: step entry %zu head rows: got %u (flags %#x), expected 0..%u "
                       "(>= 1 when sampled, every row when speculative)",
                       i, e->n_head, e->flags, e->n_tokens);
        if (e->n_cand > TERN_SAMPLE_CANDS || e->n_logprobs > TERN_MAX_LOGPROBS ||
            e->n_pen > (uint32_t)lim->pen_row ||
            ((e->flags & TERN_SEQ_SAMPLE) &&
             (!isfinite(e->temperature) || !(e->penalty > 0.0f && isfinite(e->penalty)))))
            return BAD("pipeline: step entry %zu sampling: got %u candidates, %u logprobs, "
                       "%u penalty ids, temperature %g, penalty %g, expected <= %d, <= %d, "
                       "<= %d, finite, finite > 0",
                       i, e->n_cand, e->n_logprobs, e->n_pen, (double)e->temperature,
                       (double)e->penalty, TERN_SAMPLE_CANDS, TERN_MAX_LOGPROBS, lim->pen_row);
        *q = (tern_step_seq){.slot = (int32_t)e->slot,
                             .pos0 = (int32_t)e->pos0,
                             .n_tokens = (int32_t)e->n_tokens,
                             .flags = e->flags,
                             .n_head = (int32_t)e->n_head,
                             .src = (int32_t)e->src,
                             .n_share = (int32_t)e->n_share};
        if (e->flags & TERN_SEQ_SAMPLE) {
            q->temperature = e->temperature, q->penalty = e->penalty;
            q->n_cand = (int32_t)e->n_cand, q->n_logprobs = (int32_t)e->n_logprobs;
            q->gumbel = e->gumbel, q->seed = e->seed, q->n_pen = (int32_t)e->n_pen;
            pen += e->n_pen;
        }
        tokens += e->n_tokens;
    }
    if (tokens != (int64_t)sm->n_tokens)
        return BAD("pipeline: step: got %lld tokens in its entries, expected %u (its count)",
                   (long long)tokens, sm->n_tokens);
    if (pen != (int64_t)sm->n_pen_ids)
        return BAD("pipeline: step: got %zu penalty ids, expected %lld (its entries' sum)",
                   sm->n_pen_ids, (long long)pen);
    /* each sampled entry's run of ids is ascending (the fold walks them in order) */
    size_t at = 0;
    for (int32_t k = 0; k < s->n_seqs; k++) {
        const tern_step_seq *q = &s->seqs[k];
        if (!(q->flags & TERN_SEQ_SAMPLE)) continue;
        for (int32_t j = 0; j < q->n_pen; j++, at++) {
            uint32_t id = sm->pen_ids[at] & 0x7fffffffu;
            if (id >= (uint32_t)lim->n_vocab || !isfinite(sm->pen_add[at]) ||
                (j > 0 && (int32_t)id <= s->pen_ids[at - 1].id))
                return BAD("pipeline: step penalty id %zu: got %u (add %g), expected ascending "
                           "ids < %d with finite additions",
                           at, id, (double)sm->pen_add[at], lim->n_vocab);
            s->pen_ids[at] =
                (tern_adjust){(int32_t)id, sm->pen_add[at], (sm->pen_ids[at] >> 31) != 0};
        }
    }
    s->n_pen = (int32_t)sm->n_pen_ids;
    s->n_tokens = (int32_t)sm->n_tokens;
    s->sent_at = sm->sent_at;
    s->n_hops = (int32_t)sm->n_hop_at;
    for (size_t i = 0; i < sm->n_hop_at; i++) {
        s->hop_at[i] = sm->hop_at[i];
        s->busy_s[i] = sm->busy_s[i];
        s->peak_rss[i] = sm->peak_rss[i];
    }
    s->shutdown = sm->shutdown;
    tern_ctl_step_totals(s);
    if (s->n_head > lim->head_rows || s->n_sample > lim->sample_rows || s->n_full > lim->full_rows)
        return BAD("pipeline: step: got %d head rows, %d sampled, %d full, expected at most %d, "
                   "%d, %d",
                   s->n_head, s->n_sample, s->n_full, lim->head_rows, lim->sample_rows,
                   lim->full_rows);
    /* the arena is reset by the next call: nothing to free */
    return rc;
}
