/* control.c: see control.h. */
#include "dist/control.h"

#include <string.h>

#include "ternpipe.pb-c.h"

/* bump allocator over a caller's buffer: protobuf-c's unpack allocates per field */
typedef struct arena {
    uint8_t *base;
    size_t cap, used;
} arena;

static void *arena_alloc(void *data, size_t size)
{
    arena *a = data;
    size_t off = (a->used + 15) & ~(size_t)15;
    if (off + size > a->cap) return NULL;
    a->used = off + size;
    return a->base + off;
}
static void arena_free(void *data, void *p)
{
    (void)data, (void)p;
}

size_t tern_ctl_pack_hello(const tern_hello *h, uint8_t *buf, size_t cap)
{
    Ternpipe__Hello hm = TERNPIPE__HELLO__INIT;
    uint32_t starts[TERN_MAX_RANKS], ends[TERN_MAX_RANKS];
    hm.has_protocol_version = 1, hm.protocol_version = h->protocol_version;
    hm.has_model_checksum = 1, hm.model_checksum = h->model_checksum;
    hm.has_n_layers = 1, hm.n_layers = h->n_layers;
    for (int r = 0; r < h->n_ranks; r++)
        starts[r] = (uint32_t)h->layer_start[r], ends[r] = (uint32_t)h->layer_end[r];
    hm.n_layer_start = hm.n_layer_end = (size_t)h->n_ranks;
    hm.layer_start = starts, hm.layer_end = ends;
    hm.has_max_tokens = 1, hm.max_tokens = h->max_tokens;
    hm.has_max_seqs = 1, hm.max_seqs = h->max_seqs;
    hm.has_n_ctx = 1, hm.n_ctx = h->n_ctx;
    hm.has_kv_blocks = 1, hm.kv_blocks = h->kv_blocks;
    Ternpipe__Control c = TERNPIPE__CONTROL__INIT;
    c.body_case = TERNPIPE__CONTROL__BODY_HELLO;
    c.hello = &hm;
    size_t n = ternpipe__control__get_packed_size(&c);
    if (n > cap) return 0;
    return ternpipe__control__pack(&c, buf);
}

size_t tern_ctl_pack_step(const tern_step *s, uint8_t *buf, size_t cap)
{
    Ternpipe__Step sm = TERNPIPE__STEP__INIT;
    /* entries on the stack in chunks would complicate things; steps carry at most a few
     * hundred sequences, so a fixed bound suffices */
    enum { MAXS = 1024 };
    Ternpipe__SeqEntry ents[MAXS];
    Ternpipe__SeqEntry *ptrs[MAXS];
    if (s->n_seqs > MAXS) return 0;
    for (int i = 0; i < s->n_seqs; i++) {
        Ternpipe__SeqEntry e = TERNPIPE__SEQ_ENTRY__INIT;
        e.has_slot = 1, e.slot = (uint32_t)s->seqs[i].slot;
        e.has_pos0 = 1, e.pos0 = (uint32_t)s->seqs[i].pos0;
        e.has_n_tokens = 1, e.n_tokens = (uint32_t)s->seqs[i].n_tokens;
        e.has_flags = 1, e.flags = s->seqs[i].flags;
        ents[i] = e;
        ptrs[i] = &ents[i];
    }
    sm.has_microbatch_id = 1, sm.microbatch_id = s->id;
    sm.n_seqs = (size_t)s->n_seqs, sm.seqs = ptrs;
    sm.has_n_tokens = 1, sm.n_tokens = (uint32_t)s->n_tokens;
    sm.has_sent_at = 1, sm.sent_at = s->sent_at;
    sm.n_hop_at = (size_t)s->n_hops, sm.hop_at = (double *)s->hop_at;
    sm.n_busy_s = (size_t)s->n_hops, sm.busy_s = (double *)s->busy_s;
    sm.n_peak_rss = (size_t)s->n_hops, sm.peak_rss = (uint64_t *)s->peak_rss;
    sm.has_shutdown = 1, sm.shutdown = s->shutdown != 0;
    Ternpipe__Control c = TERNPIPE__CONTROL__INIT;
    c.body_case = TERNPIPE__CONTROL__BODY_STEP;
    c.step = &sm;
    size_t n = ternpipe__control__get_packed_size(&c);
    if (n > cap) return 0;
    return ternpipe__control__pack(&c, buf);
}

tern_code tern_ctl_unpack_hello(const uint8_t *buf, size_t n, tern_hello *h, tern_status *st)
{
    Ternpipe__Control *c = ternpipe__control__unpack(NULL, n, buf);
    if (!c || c->body_case != TERNPIPE__CONTROL__BODY_HELLO) {
        if (c) ternpipe__control__free_unpacked(c, NULL);
        return tern_status_set(
            st, TERN_EFORMAT,
            "handshake: hello message: got %zu undecodable bytes, expected a Hello", n);
    }
    const Ternpipe__Hello *hm = c->hello;
    memset(h, 0, sizeof *h);
    h->protocol_version = hm->protocol_version;
    h->model_checksum = hm->model_checksum;
    h->n_layers = hm->n_layers;
    h->n_ranks = (int32_t)(hm->n_layer_start < TERN_MAX_RANKS ? hm->n_layer_start : TERN_MAX_RANKS);
    for (int r = 0; r < h->n_ranks && (size_t)r < hm->n_layer_end; r++)
        h->layer_start[r] = (int32_t)hm->layer_start[r],
        h->layer_end[r] = (int32_t)hm->layer_end[r];
    h->max_tokens = hm->max_tokens, h->max_seqs = hm->max_seqs;
    h->n_ctx = hm->n_ctx, h->kv_blocks = hm->kv_blocks;
    ternpipe__control__free_unpacked(c, NULL);
    return TERN_OK;
}

tern_code tern_ctl_unpack_step(const uint8_t *buf, size_t n, tern_step *s, void *arena_buf,
                               size_t arena_bytes, tern_status *st)
{
    arena a = {arena_buf, arena_bytes, 0};
    ProtobufCAllocator alloc = {arena_alloc, arena_free, &a};
    Ternpipe__Control *c = ternpipe__control__unpack(&alloc, n, buf);
    if (!c || c->body_case != TERNPIPE__CONTROL__BODY_STEP)
        return tern_status_set(st, TERN_EFORMAT,
                               "pipeline: step message: got %zu undecodable bytes, expected a Step",
                               n);
    const Ternpipe__Step *sm = c->step;
    if ((int64_t)sm->n_seqs > s->cap_seqs || sm->n_hop_at > TERN_MAX_RANKS ||
        sm->n_busy_s > TERN_MAX_RANKS || sm->n_peak_rss > TERN_MAX_RANKS)
        return tern_status_set(st, TERN_EFORMAT,
                               "pipeline: step: got %zu sequences, expected at most %d", sm->n_seqs,
                               s->cap_seqs);
    s->id = sm->microbatch_id;
    s->n_seqs = (int32_t)sm->n_seqs;
    for (size_t i = 0; i < sm->n_seqs; i++) {
        s->seqs[i].slot = (int32_t)sm->seqs[i]->slot;
        s->seqs[i].pos0 = (int32_t)sm->seqs[i]->pos0;
        s->seqs[i].n_tokens = (int32_t)sm->seqs[i]->n_tokens;
        s->seqs[i].flags = sm->seqs[i]->flags;
    }
    s->n_tokens = (int32_t)sm->n_tokens;
    s->sent_at = sm->sent_at;
    s->n_hops = (int32_t)sm->n_hop_at;
    for (size_t i = 0; i < sm->n_hop_at; i++) s->hop_at[i] = sm->hop_at[i];
    for (size_t i = 0; i < sm->n_busy_s && i < sm->n_hop_at; i++) s->busy_s[i] = sm->busy_s[i];
    for (size_t i = 0; i < sm->n_hop_at; i++)
        s->peak_rss[i] = i < sm->n_peak_rss ? sm->peak_rss[i] : 0;
    s->shutdown = sm->shutdown;
    /* the arena is reset by the next call: nothing to free */
    return TERN_OK;
}
