/* scheduler.c: see scheduler.h. */
#include "pipeline/scheduler.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pipeline/sched-internal.h"

static void pending_free(pending *p)
{
    tern_grammar_free(p->gram);
    free(p->prompt), free(p->bias), free(p);
}

tern_code tern_sched_create(tern_sched **out, const tern_limits *lim, tern_status *st)
{
    *out = NULL;
    tern_sched *s = calloc(1, sizeof *s);
    if (!s) return tern_status_set(st, TERN_ENOMEM, "scheduler: out of memory");
    s->lim = *lim;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->next_id = 1;
    s->spec_max = TERN_SPEC_MAX_DRAFT;
    s->cap_cancels = lim->queue_cap + lim->max_seqs;
    s->cancels = calloc((size_t)s->cap_cancels, sizeof *s->cancels);
    s->seqs = calloc((size_t)lim->max_seqs, sizeof *s->seqs);
    s->cap_releases = 2 * (lim->max_seqs + lim->cache_slots);
    s->releases = calloc((size_t)s->cap_releases, sizeof *s->releases);
    s->cache = calloc((size_t)lim->cache_slots, sizeof *s->cache);
    s->cache_on = false; /* the engine turns it on (tern_sched_set_prefix_cache) */
    s->adj_scratch =
        malloc(((size_t)lim->n_ctx * 2 + TERN_MAX_LOGIT_BIAS + 1) * sizeof *s->adj_scratch);
    bool ok = s->cancels && s->seqs && s->releases && s->adj_scratch && s->cache;
    for (int32_t i = 0; ok && i < lim->max_seqs; i++) {
        s->seqs[i].tokens = malloc((size_t)lim->n_ctx * sizeof(int32_t));
        ok = s->seqs[i].tokens != NULL;
    }
    for (int32_t i = 0; ok && i < lim->cache_slots; i++) {
        s->cache[i].tokens = malloc((size_t)lim->n_ctx * sizeof(int32_t));
        ok = s->cache[i].tokens != NULL;
    }
    if (!ok) {
        tern_sched_free(s);
        return tern_status_set(st, TERN_ENOMEM,
                               "scheduler: out of memory for %d sequences of %d positions",
                               lim->max_seqs, lim->n_ctx);
    }
    *out = s;
    return TERN_OK;
}

void tern_sched_free(tern_sched *s)
{
    if (!s) return;
    if (s->seqs)
        for (int32_t i = 0; i < s->lim.max_seqs; i++)
            free(s->seqs[i].tokens), free(s->seqs[i].bias), tern_grammar_free(s->seqs[i].gram);
    if (s->cache)
        for (int32_t i = 0; i < s->lim.cache_slots; i++) free(s->cache[i].tokens);
    free(s->cache);
    for (pending *p = s->inbox_head, *n; p; p = n) n = p->next, pending_free(p);
    for (pending *p = s->wait_head, *n; p; p = n) n = p->next, pending_free(p);
    free(s->seqs), free(s->releases), free(s->cancels), free(s->adj_scratch);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}

tern_code tern_sched_submit(tern_sched *s, const tern_request *r, int64_t *id, tern_status *st)
{
    const tern_limits *L = &s->lim;
    if (r->n_prompt < 1)
        return tern_status_set(st, TERN_EINVAL, "prompt: got 0 tokens, expected at least 1");
    if (r->max_new < 0)
        return tern_status_set(st, TERN_EINVAL, "max_new: got %d, expected >= 0", r->max_new);
    if ((int64_t)r->n_prompt + r->max_new > L->n_ctx)
        return tern_status_set(st, TERN_ERANGE,
                               "context: got %d prompt tokens + %d new, expected at most %d",
                               r->n_prompt, r->max_new, L->n_ctx);
    if (blocks_for(r->n_prompt + r->max_new) > L->kv_blocks)
        return tern_status_set(st, TERN_ERANGE,
                               "KV cache: got a request needing %d blocks, expected at most %d "
                               "(the pool)",
                               blocks_for(r->n_prompt + r->max_new), L->kv_blocks);
    if (r->resumed < 0 || r->resumed >= r->n_prompt)
        return tern_status_set(st, TERN_EINVAL,
                               "resumed: got %d tokens, expected 0..%d (fewer than the prompt)",
                               r->resumed, r->n_prompt - 1);
    if (r->n_stop < 0 || r->n_stop > 4)
        return tern_status_set(st, TERN_EINVAL, "stop ids: got %d, expected 0..4", r->n_stop);
    tern_code rc = tern_sampling_validate(&r->sampling, st);
    if (rc) return rc;
    for (int32_t i = 0; i < r->n_prompt; i++)
        if (r->prompt[i] < 0 || r->prompt[i] >= L->n_vocab)
            return tern_status_set(st, TERN_EINVAL, "prompt token %d: got id %d, expected 0..%d", i,
                                   r->prompt[i], L->n_vocab - 1);
    for (int32_t i = 0; i < r->sampling.n_logit_bias; i++)
        if (r->sampling.logit_bias[i].id >= L->n_vocab)
            return tern_status_set(st, TERN_EINVAL, "logit_bias: token %d: got it, expected 0..%d",
                                   r->sampling.logit_bias[i].id, L->n_vocab - 1);
    tern_grammar *gram = NULL;
    if (r->response_format) {
        if (!s->vocab)
            return tern_status_set(st, TERN_EINVAL,
                                   "response_format: this model has no vocabulary to constrain "
                                   "output with");
        tern_code grc =
            tern_grammar_compile(&gram, r->response_format, strlen(r->response_format), st);
        if (grc) return grc;
        /* a replay: the document continues after the tokens generated before */
        for (int32_t i = r->n_prompt - r->resumed; gram && i < r->n_prompt; i++) {
            size_t l = 0;
            const char *b = tern_vocab_index_bytes(s->vocab, r->prompt[i], &l);
            if (!b || !tern_grammar_accept(gram, b, l)) {
                tern_grammar_free(gram);
                return tern_status_set(st, TERN_EINVAL,
                                       "response_format: resumed token %d (id %d) does not "
                                       "continue the document",
                                       i, r->prompt[i]);
            }
        }
    }
    pending *p = calloc(1, sizeof *p);
    if (p)
        p->gram = gram;
    else
        tern_grammar_free(gram);
    int32_t *prompt = p ? malloc((size_t)r->n_prompt * sizeof(int32_t)) : NULL;
    size_t nb = (size_t)r->sampling.n_logit_bias;
    tern_logit_bias *bias = nb ? malloc(nb * sizeof *bias) : NULL;
    if (!prompt || (nb && !bias)) {
        free(p), free(prompt), free(bias);
        return tern_status_set(st, TERN_ENOMEM, "scheduler: out of memory for a request");
    }
    memcpy(prompt, r->prompt, (size_t)r->n_prompt * sizeof(int32_t));
    if (nb) memcpy(bias, r->sampling.logit_bias, nb * sizeof *bias);
    p->req = *r;
    p->prompt = prompt;
    p->req.prompt = prompt;
    p->bias = bias;
    p->req.sampling.logit_bias = bias;
    pthread_mutex_lock(&s->mu);
    if (s->inbox_n + s->wait_n >= L->queue_cap) {
        pthread_mutex_unlock(&s->mu);
        pending_free(p);
        return tern_status_set(st, TERN_EBUSY, "queue: got %d waiting requests, expected < %d",
                               L->queue_cap, L->queue_cap);
    }
    p->id = s->next_id++;
    if (s->inbox_tail)
        s->inbox_tail->next = p;
    else
        s->inbox_head = p;
    s->inbox_tail = p;
    s->inbox_n++;
    if (id) *id = p->id;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return TERN_OK;
}

void tern_sched_cancel(tern_sched *s, int64_t id)
{
    pthread_mutex_lock(&s->mu);
    if (s->n_cancels < s->cap_cancels) s->cancels[s->n_cancels++] = id;
    /* a full list only happens with more cancels than requests: the extra ones are stale */
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

void tern_sched_wait(tern_sched *s, int timeout_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    pthread_mutex_lock(&s->mu);
    while (!s->inbox_n && !s->n_cancels)
        if (pthread_cond_timedwait(&s->cv, &s->mu, &ts) == ETIMEDOUT) break;
    pthread_mutex_unlock(&s->mu);
}

/* A sequence ends: callback, and its KV slot is released on every stage by the next step. */
/* ------------------------------------------------------------------ finishing */

static void finish(tern_sched *s, seq *q, tern_finish why)
{
    if (q->shared_from >= 0) s->cache[q->shared_from].pins--;
    int32_t ce = tern_pc_save(s, q);
    s->releases[s->n_releases++] =
        (tern_step_seq){.slot = (int32_t)(q - s->seqs),
                        .flags = ce >= 0                        ? TERN_SEQ_SAVE
                                 : why == TERN_FINISH_CANCELLED ? TERN_SEQ_CANCELLED
                                                                : TERN_SEQ_FINISHED,
                        .src = ce >= 0 ? s->lim.max_seqs + ce : 0};
    q->used = false;
    free(q->bias);
    q->bias = NULL;
    tern_grammar_free(q->gram);
    q->gram = NULL;
    s->kv_reserved -= q->kv_blocks;
    s->n_running--;
    if (q->req.on_done) q->req.on_done(q->req.user, why, NULL);
}

void tern_sched_admit(tern_sched *s)
{
    /* take the inbox and the cancels in one go */
    pthread_mutex_lock(&s->mu);
    pending *in = s->inbox_head;
    int32_t n_in = s->inbox_n;
    s->inbox_head = s->inbox_tail = NULL;
    s->inbox_n = 0;
    if (in) {
        pending *t = in;
        while (t->next) t = t->next;
        if (s->wait_tail)
            s->wait_tail->next = in;
        else
            s->wait_head = in;
        s->wait_tail = t;
        s->wait_n += n_in;
    }
    int32_t nc = s->n_cancels;
    s->n_cancels = 0;
    pthread_mutex_unlock(&s->mu);
    for (int32_t c = 0; c < nc; c++) {
        int64_t id = s->cancels[c];
        bool found = false;
        for (int32_t i = 0; i < s->lim.max_seqs && !found; i++) {
            seq *q = &s->seqs[i];
            if (q->used && q->id == id) {
                found = true;
                q->cancelled = true;
                if (!q->inflight) finish(s, q, TERN_FINISH_CANCELLED);
            }
        }
        for (pending **pp = &s->wait_head; !found && *pp; pp = &(*pp)->next) {
            pending *p = *pp;
            if (p->id != id) continue;
            found = true;
            pthread_mutex_lock(&s->mu);
            *pp = p->next;
            if (s->wait_tail == p) {
                s->wait_tail = NULL;
                for (pending *t = s->wait_head; t; t = t->next) s->wait_tail = t;
            }
            s->wait_n--;
            pthread_mutex_unlock(&s->mu);
            if (p->req.on_done) p->req.on_done(p->req.user, TERN_FINISH_CANCELLED, NULL);
            pending_free(p);
            break;
        }
    }
    /* FIFO admission: the head waits until a slot and its KV fit */
    while (s->wait_head) {
        pending *p = s->wait_head;
        int32_t need = blocks_for(p->req.n_prompt + p->req.max_new);
        int32_t slot = -1;
        for (int32_t i = 0; i < s->lim.max_seqs && slot < 0; i++)
            if (!s->seqs[i].used) slot = i;
        if (slot < 0) break;
        /* a prompt that starts like a cached sequence shares its blocks: fewer to reserve */
        int32_t k = 0, ce = tern_pc_match(s, &p->req, &k);
        if (tern_pc_leader(s, &p->req, k)) break; /* it will share the leader's prompt */
        tern_pc_keep_running(s, &p->req, k);
        ce = tern_pc_match(s, &p->req, &k);
        int32_t fresh = need - k;
        while (s->kv_reserved + s->kv_cached + fresh > s->lim.kv_blocks &&
               tern_pc_evict_lru(s, ce)) {
        }
        if (s->kv_reserved + s->kv_cached + fresh > s->lim.kv_blocks && ce >= 0 &&
            !s->cache[ce].pins && tern_pc_release_room(s)) {
            tern_pc_evict(s, ce); /* its blocks are worth less than the room they take */
            ce = -1, k = 0, fresh = need;
            while (s->kv_reserved + s->kv_cached + fresh > s->lim.kv_blocks &&
                   tern_pc_evict_lru(s, -1)) {
            }
        }
        if (s->kv_reserved + s->kv_cached + fresh > s->lim.kv_blocks) break;
        pthread_mutex_lock(&s->mu);
        s->wait_head = p->next;
        if (!s->wait_head) s->wait_tail = NULL;
        s->wait_n--;
        pthread_mutex_unlock(&s->mu);
        seq *q = &s->seqs[slot];
        int32_t *tokens = q->tokens;
        *q = (seq){.used = true,
                   .spec_k = TERN_SPEC_MAX_DRAFT / 2,
                   .id = p->id,
                   .req = p->req,
                   .tokens = tokens,
                   .bias = p->bias,
                   .gram = p->gram,
                   .n_tokens = p->req.n_prompt,
                   .n_past = k * TERN_KV_BLOCK,
                   .kv_blocks = fresh,
                   .shared_from = ce,
                   .fresh = true};
        if (ce >= 0) {
            s->cache[ce].pins++;
            s->cache[ce].last = ++s->clock;
            s->pc_hits++;
            s->pc_tokens += k * TERN_KV_BLOCK;
        } else if (s->cache_on && !p->req.all_logits) {
            s->pc_misses++;
        }
        p->bias = NULL, p->gram = NULL; /* the sequence owns them now */
        memcpy(q->tokens, p->prompt, (size_t)p->req.n_prompt * sizeof(int32_t));
        q->req.prompt = q->tokens;
        s->kv_reserved += fresh;
        s->n_running++;
        s->tok_prompt += p->req.n_prompt;
        pending_free(p);
    }
}

void tern_sched_set_vocab(tern_sched *s, const tern_vocab_index *v)
{
    s->vocab = v;
}

tern_grammar *tern_sched_grammar(const tern_sched *s, int32_t slot)
{
    return slot >= 0 && slot < s->lim.max_seqs && s->seqs[slot].used ? s->seqs[slot].gram : NULL;
}

const tern_vocab_index *tern_sched_vocab(const tern_sched *s)
{
    return s->vocab;
}

int32_t tern_sched_pending_releases(const tern_sched *s)
{
    return s->n_releases;
}

static bool ready(const seq *q)
{
    return q->used && !q->inflight && !q->cancelled && q->n_past < q->n_tokens;
}

void tern_sched_set_spec(tern_sched *s, int32_t max_drafts)
{
    s->spec_max = max_drafts < 0                     ? 0
                  : max_drafts > TERN_SPEC_MAX_DRAFT ? TERN_SPEC_MAX_DRAFT
                                                     : max_drafts;
}

/* May q's next decode verify drafts? Only where every row's adjustments are the same (they
 * must not depend on the history the drafts would change), only for few streams (one batched
 * pass of 1 + k tokens costs about one token's weight reads only while decoding is
 * bandwidth-bound), and not while a row is redrawn from its full logits. */
static bool spec_ok(const tern_sched *s, const seq *q)
{
    const tern_sampling *sp = &q->req.sampling;
    return s->spec_max > 0 && !q->req.all_logits && !q->retry && !q->gram &&
           s->n_running <= TERN_SPEC_SEQS &&
           (sp->repeat_penalty == 1.0f || sp->repeat_last_n == 0) && sp->presence_penalty == 0.0f &&
           sp->frequency_penalty == 0.0f;
}

/* Drafts by n-gram lookup: the tokens that followed the latest earlier occurrence of the
 * sequence's last TERN_SPEC_NGRAM (down to TERN_SPEC_NGRAM_MIN) tokens, at most k. */
static int32_t find_drafts(const int32_t *t, int32_t n, int32_t k, int32_t *out)
{
    for (int32_t g = TERN_SPEC_NGRAM; g >= TERN_SPEC_NGRAM_MIN; g--) {
        if (n <= g) continue;
        const int32_t *tail = t + n - g;
        for (int32_t j = n - g - 1; j >= 0; j--) {
            if (memcmp(t + j, tail, (size_t)g * sizeof *t)) continue;
            int32_t m = 0;
            while (m < k && j + g + m < n) out[m] = t[j + g + m], m++;
            if (m > 0) return m;
        }
    }
    return 0;
}

/* Adds sequence q's next chunk (at most n tokens) to the step; returns its full-logits rows,
 * -1 when nothing could be added. */
static int32_t add_entry(tern_sched *s, seq *q, int32_t n, int32_t full_left, tern_step *st,
                         int32_t *ids)
{
    const tern_request *r = &q->req;
    int32_t pos0 = q->n_past;
    /* an all_logits request needs full rows for every position: its chunk is cut to the rows
     * the step can still carry */
    if (r->all_logits && n > full_left) n = full_left;
    if (n <= 0) return -1;
    bool last = pos0 + n == q->n_tokens;
    bool sample = last && q->n_gen < r->max_new;
    /* speculative: the last token and up to spec_k drafts, each row sampled */
    int32_t nd = 0;
    q->n_draft = 0;
    if (sample && n == 1 && spec_ok(s, q)) {
        if (q->spec_wait > 0) {
            q->spec_wait--;
        } else {
            int32_t k = q->spec_k < s->spec_max ? q->spec_k : s->spec_max;
            int32_t room = s->lim.batch_tokens - st->n_tokens - 1;
            int32_t rows = s->lim.sample_rows - st->n_sample - 1;
            int32_t left = r->max_new - q->n_gen - 1, ctx = s->lim.n_ctx - q->n_tokens - 1;
            k = k < room ? k : room;
            k = k < rows ? k : rows;
            k = k < left ? k : left;
            k = k < ctx ? k : ctx;
            if (k > 0) nd = find_drafts(q->tokens, q->n_tokens, k, q->draft);
        }
    }
    tern_step_seq e = {.slot = (int32_t)(q - s->seqs),
                       .pos0 = pos0,
                       .n_tokens = n + nd,
                       .flags = q->fresh ? TERN_SEQ_NEW : 0};
    if (q->fresh && q->shared_from >= 0) /* it starts with the cache entry's blocks */
        e.src = s->lim.max_seqs + q->shared_from, e.n_share = pos0 / TERN_KV_BLOCK;
    if (nd > 0) {
        e.n_head = 1 + nd;
        e.flags |= TERN_SEQ_SPEC;
        q->n_draft = nd;
        s->drafted += nd;
    } else if (r->all_logits) {
        e.n_head = n;
        e.flags |= TERN_SEQ_FULL;
    } else if (sample) {
        e.n_head = 1;
        if (q->retry || q->gram) e.flags |= TERN_SEQ_FULL; /* a constraint masks the full row */
    }
    if (sample) {
        tern_row_params rp;
        tern_row_params_make(&r->sampling, q->n_tokens, &rp);
        int32_t cap = st->cap_pen - st->n_pen;
        int32_t np = tern_row_adjust(&r->sampling, q->tokens, q->n_tokens, r->n_prompt - r->resumed,
                                     s->lim.n_vocab, s->adj_scratch, st->pen_ids + st->n_pen,
                                     cap < s->lim.pen_row ? cap : s->lim.pen_row);
        e.flags |= TERN_SEQ_SAMPLE;
        e.temperature = rp.temperature, e.penalty = rp.penalty;
        e.n_cand = rp.n_cand, e.n_logprobs = rp.n_logprobs;
        e.gumbel = rp.gumbel, e.seed = rp.seed;
        e.n_pen = np;
        st->n_pen += np;
    }
    memcpy(ids + st->n_tokens, q->tokens + pos0, (size_t)n * sizeof(int32_t));
    if (nd > 0) memcpy(ids + st->n_tokens + n, q->draft, (size_t)nd * sizeof(int32_t));
    st->seqs[st->n_seqs++] = e;
    st->n_tokens += n + nd;
    st->n_sample += sample ? 1 + nd : 0;
    q->fresh = false;
    q->inflight = true;
    return e.flags & TERN_SEQ_FULL ? e.n_head : 0;
}

/* a sampled row's adjusted ids (at most) must fit the step */
static bool pen_fits(const tern_sched *s, const seq *q, const tern_step *st)
{
    const tern_sampling *sp = &q->req.sampling;
    bool any = (sp->repeat_penalty != 1.0f && sp->repeat_last_n != 0) ||
               sp->presence_penalty != 0.0f || sp->frequency_penalty != 0.0f ||
               sp->n_logit_bias > 0;
    if (!any) return true;
    int32_t w = tern_adjust_scratch(sp, q->n_tokens, q->req.n_prompt - q->req.resumed);
    if (w > s->lim.pen_row) w = s->lim.pen_row;
    return st->n_pen + w <= st->cap_pen;
}

bool tern_sched_build(tern_sched *s, int32_t free_mbs, tern_step *st, int32_t *ids)
{
    const tern_limits *L = &s->lim;
    st->n_seqs = st->n_tokens = st->n_hops = st->n_pen = st->n_sample = 0;
    st->shutdown = 0;
    /* releases first: they are applied before the forward pass */
    for (int32_t i = 0; i < s->n_releases; i++) st->seqs[st->n_seqs++] = s->releases[i];
    s->n_releases = 0;
    int32_t n_dec = 0, n_pre = 0;
    for (int32_t i = 0; i < L->max_seqs; i++) {
        const seq *q = &s->seqs[i];
        if (!ready(q)) continue;
        if (q->n_tokens - q->n_past == 1)
            n_dec++;
        else
            n_pre++;
    }
    /* ready sequences are spread over the micro-batches still to launch */
    if (free_mbs < 1) free_mbs = 1;
    int32_t share = (n_dec + n_pre + free_mbs - 1) / free_mbs;
    int32_t budget = L->batch_tokens, full_left = L->full_rows, taken = 0;
    int32_t reserve =
        n_pre > 0 ? (L->batch_tokens + TERN_SCHED_PREFILL_SHARE - 1) / TERN_SCHED_PREFILL_SHARE : 0;
    int32_t rot = s->rot, last = -1;
    /* pass 0: decodes (one token each), leaving the prefill reserve; pass 1: prefill chunks */
    for (int pass = 0; pass < 2; pass++) {
        for (int32_t k = 0; k < L->max_seqs && taken < share && st->n_tokens < budget; k++) {
            seq *q = &s->seqs[(rot + k) % L->max_seqs];
            if (!ready(q)) continue;
            int32_t left = q->n_tokens - q->n_past;
            if ((left == 1) != (pass == 0)) continue;
            int32_t room = budget - st->n_tokens;
            if (pass == 0 && room <= reserve && reserve < budget) continue;
            if (left > room) left = room;
            bool will_sample = q->n_past + left == q->n_tokens && q->n_gen < q->req.max_new;
            if (will_sample && !pen_fits(s, q, st)) continue;
            if (will_sample && q->retry && full_left < 1) continue;
            int32_t full = add_entry(s, q, left, full_left, st, ids);
            if (full >= 0) full_left -= full, taken++, last = (rot + k) % L->max_seqs;
        }
    }
    /* round robin: the next micro-batch starts after the last sequence this one took */
    s->rot = last >= 0 ? (last + 1) % L->max_seqs : (rot + 1) % L->max_seqs;
    tern_ctl_step_totals(st);
    return st->n_seqs > 0;
}

const tern_request *tern_sched_request(const tern_sched *s, int32_t slot)
{
    return &s->seqs[slot].req;
}

void tern_sched_deliver_logits(tern_sched *s, int32_t slot, int32_t pos, const float *logits)
{
    seq *q = &s->seqs[slot];
    if (!q->used || q->cancelled || pos != q->n_logits) return; /* once per position */
    q->n_logits++;
    if (q->req.on_logits) q->req.on_logits(q->req.user, pos, logits);
}

void tern_sched_complete(tern_sched *s, const tern_step *st, const tern_pick *picks,
                         const bool *resolved)
{
    int32_t k = 0;
    for (int32_t i = 0; i < st->n_seqs; i++) {
        const tern_step_seq *e = &st->seqs[i];
        if (e->n_tokens == 0) continue;
        seq *q = &s->seqs[e->slot];
        q->inflight = false;
        bool prefilling = q->n_past < q->req.n_prompt;
        q->n_past = e->pos0 + e->n_tokens;
        if (prefilling && q->n_past >= q->req.n_prompt) tern_pc_keep(s, q);
        if (e->flags & TERN_SEQ_SAMPLE) {
            /* one row, or the last token and its drafts: row r draws position pos0 + r + 1; a
             * draft is kept while the drawn token equals it, so every token is the one plain
             * decoding would draw (same logits, same counter-based draw) */
            int32_t rows = e->flags & TERN_SEQ_SPEC ? e->n_head : 1;
            int32_t nd = rows - 1, used = 0;
            bool retry = false;
            for (int32_t r = 0; r < rows && !q->cancelled; r++) {
                const tern_pick *pk = &picks[k + r];
                used = r + 1;
                if (!resolved[k + r]) {
                    /* the kept set reached past the candidates: the token at this row's input
                     * position runs again and its head row comes back in full (its KV entry is
                     * rewritten with equal values) */
                    retry = true;
                    q->n_past = e->pos0 + e->n_tokens - rows + r;
                    s->retries++;
                    break;
                }
                bool stop = false;
                for (int32_t j = 0; j < q->req.n_stop; j++) stop |= pk->token == q->req.stop[j];
                if (stop) {
                    q->stopped = true;
                    break;
                }
                q->tokens[q->n_tokens++] = pk->token;
                q->n_gen++;
                if (q->gram) { /* drawn from the masked row: it continues the document */
                    size_t l = 0;
                    const char *b = tern_vocab_index_bytes(s->vocab, pk->token, &l);
                    if (b) tern_grammar_accept(q->gram, b, l);
                }
                s->tok_gen++;
                if (q->req.on_logprobs && q->req.sampling.n_logprobs > 0)
                    q->req.on_logprobs(q->req.user, pk);
                if (q->req.on_token) q->req.on_token(q->req.user, pk->token);
                if (q->n_gen >= q->req.max_new || q->n_tokens >= s->lim.n_ctx) break;
                if (r < nd && pk->token != q->draft[r]) break; /* the correction ends it */
                if (r < nd) s->accepted++;
            }
            k += rows;
            q->retry = retry;
            if (nd > 0 && !retry) {
                /* the KV of the fed tokens up to the last row used is valid */
                q->n_past = e->pos0 + used;
                int32_t acc = used - 1;
                if (acc >= nd) {
                    q->spec_k =
                        q->spec_k + 2 < TERN_SPEC_MAX_DRAFT ? q->spec_k + 2 : TERN_SPEC_MAX_DRAFT;
                    q->spec_miss = 0;
                } else if (acc == 0) {
                    q->spec_k = q->spec_k > 2 ? q->spec_k / 2 : 1;
                    q->spec_miss++;
                    /* drafts that keep failing cost a little each time: back off */
                    if (q->spec_miss >= 2)
                        q->spec_wait = 1 << (q->spec_miss < 5 ? q->spec_miss : 5);
                } else {
                    q->spec_k = acc + 1;
                    q->spec_miss = 0;
                }
            }
            q->n_draft = 0;
        }
        /* the last generated token runs through the layers only when its logits are wanted */
        bool done_feeding = q->n_past >= q->n_tokens || !q->req.all_logits;
        if (q->cancelled)
            finish(s, q, TERN_FINISH_CANCELLED);
        else if (q->stopped)
            finish(s, q, TERN_FINISH_STOP);
        else if (done_feeding && (q->n_gen >= q->req.max_new || q->n_tokens >= s->lim.n_ctx))
            finish(s, q, TERN_FINISH_LENGTH);
    }
}

void tern_sched_stats_get(tern_sched *s, tern_sched_stats *out)
{
    pthread_mutex_lock(&s->mu);
    out->queued = s->inbox_n + s->wait_n;
    pthread_mutex_unlock(&s->mu);
    out->running = s->n_running;
    out->kv_reserved = s->kv_reserved;
    out->tokens_prompt = s->tok_prompt;
    out->tokens_generated = s->tok_gen;
    out->retries = s->retries;
    out->drafted = s->drafted;
    out->accepted = s->accepted;
    out->prefix_hits = s->pc_hits, out->prefix_misses = s->pc_misses;
    out->prefix_evictions = s->pc_evictions, out->prefix_tokens = s->pc_tokens;
    out->kv_cached = s->kv_cached;
}

bool tern_sched_idle(tern_sched *s)
{
    pthread_mutex_lock(&s->mu);
    bool queued = s->inbox_n + s->wait_n > 0 || s->n_cancels > 0;
    pthread_mutex_unlock(&s->mu);
    return !queued && s->n_running == 0;
}
