/* prefix-cache.c: the scheduler's prefix cache (scheduler.h, tern_sched_set_prefix_cache):
 * entries in the cache slots after the running ones, what they hold, matching a prompt,
 * keeping a running sequence's prompt for requests waiting on it, eviction. Rank 0 only decides;
 * every rank follows the SAVE, KEEP and shared NEW entries of the steps (stage.c). */
#include <string.h>

#include "pipeline/sched-internal.h"

bool tern_pc_release_room(const tern_sched *s)
{
    return s->n_releases < s->cap_releases;
}

void tern_pc_evict(tern_sched *s, int32_t i)
{
    centry *e = &s->cache[i];
    s->releases[s->n_releases++] =
        (tern_step_seq){.slot = s->lim.max_seqs + i, .flags = TERN_SEQ_FINISHED};
    s->kv_cached -= e->phys;
    e->used = false;
    s->pc_evictions++;
}

/* the least recently used entry no sequence shares (other than keep), or -1 */
static int32_t lru(const tern_sched *s, int32_t keep)
{
    int32_t best = -1;
    for (int32_t i = 0; i < s->lim.cache_slots; i++) {
        const centry *e = &s->cache[i];
        if (e->used && !e->pins && i != keep && (best < 0 || e->last < s->cache[best].last))
            best = i;
    }
    return best;
}

bool tern_pc_evict_lru(tern_sched *s, int32_t keep)
{
    int32_t i = tern_pc_release_room(s) ? lru(s, keep) : -1;
    if (i >= 0) tern_pc_evict(s, i);
    return i >= 0;
}

/* The finished sequence q's whole blocks into the cache: an entry (a free one, or the least
 * recently used one, whose old blocks the move drops); entries it extends are dropped. Returns
 * the entry, or -1 (the cache is off, full of shared entries, or q has no whole block). */
int32_t tern_pc_save(tern_sched *s, const seq *q)
{
    int32_t full = q->n_past / TERN_KV_BLOCK * TERN_KV_BLOCK;
    /* a sequence never sent (fresh) holds nothing on the ranks yet */
    if (!s->cache_on || q->fresh || full < TERN_KV_BLOCK || s->n_releases + 2 > s->cap_releases)
        return -1;
    int32_t ce = -1;
    for (int32_t i = 0; i < s->lim.cache_slots && ce < 0; i++)
        if (!s->cache[i].used) ce = i;
    if (ce < 0 && (ce = lru(s, -1)) >= 0) {
        s->kv_cached -= s->cache[ce].phys; /* the move into it releases its blocks */
        s->cache[ce].used = false;
        s->pc_evictions++;
    }
    if (ce < 0) return -1;
    centry *e = &s->cache[ce];
    memcpy(e->tokens, q->tokens, (size_t)full * sizeof *e->tokens);
    *e = (centry){.used = true,
                  .tokens = e->tokens,
                  .n_tok = full,
                  .phys = blocks_for(q->n_past),
                  .last = ++s->clock};
    s->kv_cached += e->phys;
    /* an entry this one extends only holds blocks twice */
    for (int32_t i = 0; i < s->lim.cache_slots && tern_pc_release_room(s); i++) {
        centry *o = &s->cache[i];
        if (i != ce && o->used && !o->pins && o->n_tok <= full &&
            !memcmp(o->tokens, e->tokens, (size_t)o->n_tok * sizeof *o->tokens))
            tern_pc_evict(s, i);
    }
    return ce;
}

/* The entry with the most whole blocks in common with the prompt (at least its last token is
 * left to feed: its logits are needed), or -1; *blocks gets them. */
int32_t tern_pc_match(const tern_sched *s, const tern_request *r, int32_t *blocks)
{
    *blocks = 0;
    if (!s->cache_on || r->all_logits) return -1;
    int32_t best = -1;
    for (int32_t i = 0; i < s->lim.cache_slots; i++) {
        const centry *e = &s->cache[i];
        if (!e->used) continue;
        int32_t m = e->n_tok < r->n_prompt - 1 ? e->n_tok : r->n_prompt - 1, l = 0;
        while (l < m && e->tokens[l] == r->prompt[l]) l++;
        int32_t k = l / TERN_KV_BLOCK;
        if (k > *blocks || (k == *blocks && k > 0 && e->last > s->cache[best].last))
            *blocks = k, best = i;
    }
    return *blocks > 0 ? best : -1;
}

/* A running sequence still prefilling a prompt that p's starts with (a whole block or more
 * beyond what the cache offers): p waits for it and then shares its blocks (n > 1, or many
 * requests with one system prompt, prefill once). */
bool tern_pc_leader(const tern_sched *s, const tern_request *r, int32_t cached)
{
    if (!s->cache_on || r->all_logits) return false;
    for (int32_t i = 0; i < s->lim.max_seqs; i++) {
        const seq *q = &s->seqs[i];
        if (!q->used || q->cancelled || q->n_past >= q->req.n_prompt) continue;
        int32_t m = q->req.n_prompt < r->n_prompt - 1 ? q->req.n_prompt : r->n_prompt - 1, l = 0;
        while (l < m && q->tokens[l] == r->prompt[l]) l++;
        if (l / TERN_KV_BLOCK > cached) return true;
    }
    return false;
}

/* A cache entry keeps the whole prompt blocks of running sequence q now (shared while q goes
 * on; q has prefilled them). */
static void keep_now(tern_sched *s, seq *q)
{
    int32_t full = q->req.n_prompt / TERN_KV_BLOCK * TERN_KV_BLOCK;
    if (!s->cache_on || full < TERN_KV_BLOCK || s->n_releases + 2 > s->cap_releases) return;
    int32_t ce = -1;
    for (int32_t i = 0; i < s->lim.cache_slots && ce < 0; i++)
        if (!s->cache[i].used) ce = i;
    if (ce < 0 && (ce = lru(s, -1)) >= 0) {
        s->kv_cached -= s->cache[ce].phys; /* sharing into it releases its blocks */
        s->cache[ce].used = false;
        s->pc_evictions++;
    }
    if (ce < 0) return;
    centry *e = &s->cache[ce];
    memcpy(e->tokens, q->tokens, (size_t)full * sizeof *e->tokens);
    *e = (centry){.used = true,
                  .tokens = e->tokens,
                  .n_tok = full,
                  .phys = full / TERN_KV_BLOCK, /* also in q's reservation: counted twice */
                  .last = ++s->clock};
    s->kv_cached += e->phys;
    s->releases[s->n_releases++] = (tern_step_seq){.slot = (int32_t)(q - s->seqs),
                                                   .flags = TERN_SEQ_KEEP,
                                                   .src = s->lim.max_seqs + ce,
                                                   .n_share = full / TERN_KV_BLOCK};
}

/* the whole blocks of a prompt that r's starts with */
static int32_t common_blocks(const int32_t *a, int32_t na, const tern_request *r)
{
    int32_t m = na < r->n_prompt - 1 ? na : r->n_prompt - 1, l = 0;
    while (l < m && a[l] == r->prompt[l]) l++;
    return l / TERN_KV_BLOCK;
}

/* q has just prefilled its prompt: if a waiting request starts with it, keep its blocks */
void tern_pc_keep(tern_sched *s, seq *q)
{
    for (const pending *p = s->wait_head; p; p = p->next)
        if (common_blocks(q->tokens, q->req.n_prompt, &p->req) > 0) {
            keep_now(s, q);
            return;
        }
}

/* admission of r: a running sequence that has prefilled more of r's prompt than the cache
 * holds gives its blocks to the cache first (then r shares them) */
void tern_pc_keep_running(tern_sched *s, const tern_request *r, int32_t cached)
{
    if (!s->cache_on || r->all_logits) return;
    seq *best = NULL;
    int32_t most = cached;
    for (int32_t i = 0; i < s->lim.max_seqs; i++) {
        seq *q = &s->seqs[i];
        if (!q->used || q->cancelled || q->fresh || q->n_past < q->req.n_prompt) continue;
        int32_t k = common_blocks(q->tokens, q->req.n_prompt / TERN_KV_BLOCK * TERN_KV_BLOCK, r);
        if (k > most) most = k, best = q;
    }
    if (best) keep_now(s, best);
}

void tern_sched_set_prefix_cache(tern_sched *s, bool on)
{
    s->cache_on = on && s->lim.cache_slots > 0;
}
