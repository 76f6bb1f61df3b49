/* wire.c: see wire.h. */
#include "supervise/wire.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "supervise.pb-c.h"
#include "ternpipe/grammar.h"

struct tern_sv_reader {
    int32_t n_vocab;
    uint8_t *buf; /* [cap] bytes received, not yet consumed */
    size_t n, cap, consumed;
    Ternpipe__Supervise__Frame *last; /* the frame m points into */
    int32_t *ids;                     /* [TERN_SV_MAX_TOKENS] */
    tern_logit_bias bias[TERN_MAX_LOGIT_BIAS];
    tern_pick pick;
    tern_rank_stats *ranks; /* [cap_ranks] */
    int32_t cap_ranks;
};

static size_t put_frame(const Ternpipe__Supervise__Frame *f, uint8_t *buf, size_t cap)
{
    size_t n = ternpipe__supervise__frame__get_packed_size(f);
    if (n > TERN_SV_MAX_FRAME || n + 4 > cap) return 0;
    buf[0] = (uint8_t)n, buf[1] = (uint8_t)(n >> 8), buf[2] = (uint8_t)(n >> 16);
    buf[3] = (uint8_t)(n >> 24);
    return 4 + ternpipe__supervise__frame__pack(f, buf + 4);
}

#define STACK_RANKS 64 /* Stats of this many ranks pack without an allocation */

static void pack_stats(const tern_engine_stats *es, Ternpipe__Supervise__Stats *sx,
                       Ternpipe__Supervise__RankStats *rs, Ternpipe__Supervise__RankStats **rp)
{
    sx->has_running = 1, sx->running = es->running;
    sx->has_queued = 1, sx->queued = es->queued;
    sx->has_steps = 1, sx->steps = (uint64_t)es->steps;
    sx->has_tokens_prompt = 1, sx->tokens_prompt = (uint64_t)es->tokens_prompt;
    sx->has_tokens_generated = 1, sx->tokens_generated = (uint64_t)es->tokens_generated;
    sx->has_retries = 1, sx->retries = (uint64_t)es->retries;
    sx->has_wall_s = 1, sx->wall_s = es->wall_s;
    sx->has_hop_p50_ms = 1, sx->hop_p50_ms = es->hop_p50_ms;
    sx->has_hop_p99_ms = 1, sx->hop_p99_ms = es->hop_p99_ms;
    sx->has_prefix_hits = 1, sx->prefix_hits = (uint64_t)es->prefix_hits;
    sx->has_prefix_misses = 1, sx->prefix_misses = (uint64_t)es->prefix_misses;
    sx->has_prefix_evictions = 1, sx->prefix_evictions = (uint64_t)es->prefix_evictions;
    sx->has_prefix_tokens = 1, sx->prefix_tokens = (uint64_t)es->prefix_tokens;
    sx->has_kv_cached = 1, sx->kv_cached = es->kv_cached;
    for (int32_t i = 0; i < es->n_ranks; i++) {
        const tern_rank_stats *k = &es->ranks[i];
        Ternpipe__Supervise__RankStats x = TERNPIPE__SUPERVISE__RANK_STATS__INIT;
        x.has_busy_s = 1, x.busy_s = k->busy_s;
        x.has_peak_rss = 1, x.peak_rss = k->peak_rss;
        x.has_kv_used = 1, x.kv_used = k->kv_used;
        x.has_kv_total = 1, x.kv_total = k->kv_total;
        x.has_layer_start = 1, x.layer_start = k->layer_start;
        x.has_layer_end = 1, x.layer_end = k->layer_end;
        x.has_vocab_start = 1, x.vocab_start = k->vocab_start;
        x.has_vocab_end = 1, x.vocab_end = k->vocab_end;
        x.has_predicted = 1, x.predicted = k->predicted;
        rs[i] = x, rp[i] = &rs[i];
    }
    sx->n_ranks = (size_t)es->n_ranks, sx->ranks = rp;
}

size_t tern_sv_pack(const tern_sv_msg *m, uint8_t *buf, size_t cap)
{
    Ternpipe__Supervise__Frame f = TERNPIPE__SUPERVISE__FRAME__INIT;
    Ternpipe__Supervise__Hello h = TERNPIPE__SUPERVISE__HELLO__INIT;
    Ternpipe__Supervise__Submit sb = TERNPIPE__SUPERVISE__SUBMIT__INIT;
    Ternpipe__Supervise__Sampling sp = TERNPIPE__SUPERVISE__SAMPLING__INIT;
    Ternpipe__Supervise__Cancel cn = TERNPIPE__SUPERVISE__CANCEL__INIT;
    Ternpipe__Supervise__Tokens tk = TERNPIPE__SUPERVISE__TOKENS__INIT;
    Ternpipe__Supervise__Pick pk = TERNPIPE__SUPERVISE__PICK__INIT;
    Ternpipe__Supervise__Done dn = TERNPIPE__SUPERVISE__DONE__INIT;
    Ternpipe__Supervise__Heartbeat hb = TERNPIPE__SUPERVISE__HEARTBEAT__INIT;
    Ternpipe__Supervise__Stats sx = TERNPIPE__SUPERVISE__STATS__INIT;
    Ternpipe__Supervise__RankStats rs_stack[STACK_RANKS], *rp_stack[STACK_RANKS];
    Ternpipe__Supervise__RankStats *rs = rs_stack, **rp = rp_stack;
    Ternpipe__Supervise__LogitBias lb[TERN_MAX_LOGIT_BIAS], *lbp[TERN_MAX_LOGIT_BIAS];
    uint32_t stop[4], top_ids[TERN_MAX_LOGPROBS];
    float top_lp[TERN_MAX_LOGPROBS];
    if (m->n_ids < 0 || m->n_ids > TERN_SV_MAX_TOKENS || m->n_stop < 0 || m->n_stop > 4 ||
        m->sampling.n_logit_bias < 0 || m->sampling.n_logit_bias > TERN_MAX_LOGIT_BIAS)
        return 0;
    /* ids are never negative: the same bits as uint32 (signed and unsigned variants of one
     * type may alias) */
    uint32_t *ids = (uint32_t *)(uintptr_t)m->ids;
    switch (m->kind) {
    case TERN_SV_HELLO:
        h.has_version = 1, h.version = m->version;
        h.has_model_checksum = 1, h.model_checksum = m->model_checksum;
        h.has_n_ctx = 1, h.n_ctx = m->n_ctx;
        h.has_n_vocab = 1, h.n_vocab = m->n_vocab;
        h.has_max_seqs = 1, h.max_seqs = m->max_seqs;
        h.has_n_ranks = 1, h.n_ranks = m->n_ranks;
        h.token = (char *)(uintptr_t)m->token;
        f.body_case = TERNPIPE__SUPERVISE__FRAME__BODY_HELLO, f.hello = &h;
        break;
    case TERN_SV_SUBMIT: {
        const tern_sampling *s = &m->sampling;
        sp.has_temperature = 1, sp.temperature = s->temperature;
        sp.has_top_k = 1, sp.top_k = (uint32_t)s->top_k;
        sp.has_top_p = 1, sp.top_p = s->top_p;
        sp.has_min_p = 1, sp.min_p = s->min_p;
        sp.has_repeat_penalty = 1, sp.repeat_penalty = s->repeat_penalty;
        sp.has_repeat_last_n = 1, sp.repeat_last_n = s->repeat_last_n;
        sp.has_seed = 1, sp.seed = s->seed;
        sp.has_n_logprobs = 1, sp.n_logprobs = (uint32_t)s->n_logprobs;
        sp.has_presence_penalty = 1, sp.presence_penalty = s->presence_penalty;
        sp.has_frequency_penalty = 1, sp.frequency_penalty = s->frequency_penalty;
        for (int32_t i = 0; i < s->n_logit_bias; i++) {
            Ternpipe__Supervise__LogitBias b = TERNPIPE__SUPERVISE__LOGIT_BIAS__INIT;
            b.has_id = 1, b.id = (uint32_t)s->logit_bias[i].id;
            b.has_bias = 1, b.bias = s->logit_bias[i].bias;
            lb[i] = b, lbp[i] = &lb[i];
        }
        sp.n_logit_bias = (size_t)s->n_logit_bias, sp.logit_bias = lbp;
        sb.has_id = 1, sb.id = m->id;
        sb.n_prompt = (size_t)m->n_ids, sb.prompt = ids;
        sb.sampling = &sp;
        sb.has_max_new = 1, sb.max_new = (uint32_t)m->max_new;
        for (int32_t i = 0; i < m->n_stop; i++) stop[i] = (uint32_t)m->stop[i];
        sb.n_stop = (size_t)m->n_stop, sb.stop = stop;
        sb.has_resumed = 1, sb.resumed = (uint32_t)m->resumed;
        sb.response_format = (char *)(uintptr_t)m->response_format;
        f.body_case = TERNPIPE__SUPERVISE__FRAME__BODY_SUBMIT, f.submit = &sb;
        break;
    }
    case TERN_SV_CANCEL:
        cn.has_id = 1, cn.id = m->id;
        f.body_case = TERNPIPE__SUPERVISE__FRAME__BODY_CANCEL, f.cancel = &cn;
        break;
    case TERN_SV_TOKENS:
        tk.has_id = 1, tk.id = m->id;
        tk.n_tokens = (size_t)m->n_ids, tk.tokens = ids;
        if (m->pick) {
            const tern_pick *p = m->pick;
            if (m->n_ids != 1 || p->n_top < 0 || p->n_top > TERN_MAX_LOGPROBS) return 0;
            pk.has_logprob = 1, pk.logprob = p->logprob;
            for (int32_t i = 0; i < p->n_top; i++)
                top_ids[i] = (uint32_t)p->top[i].id, top_lp[i] = p->top[i].logprob;
            pk.n_top_ids = pk.n_top_logprobs = (size_t)p->n_top;
            pk.top_ids = top_ids, pk.top_logprobs = top_lp;
            tk.pick = &pk;
        }
        f.body_case = TERNPIPE__SUPERVISE__FRAME__BODY_TOKENS, f.tokens = &tk;
        break;
    case TERN_SV_DONE:
        dn.has_id = 1, dn.id = m->id;
        dn.has_finish = 1, dn.finish = m->finish;
        dn.error = m->error[0] ? (char *)m->error : NULL;
        f.body_case = TERNPIPE__SUPERVISE__FRAME__BODY_DONE, f.done = &dn;
        break;
    case TERN_SV_HEARTBEAT:
        hb.has_seq = 1, hb.seq = m->id;
        hb.has_state = 1, hb.state = m->state;
        hb.error = m->error[0] ? (char *)m->error : NULL;
        f.body_case = TERNPIPE__SUPERVISE__FRAME__BODY_HEARTBEAT, f.heartbeat = &hb;
        break;
    case TERN_SV_STATS: {
        int32_t n = m->stats.n_ranks;
        if (n < 0 || n > TERN_SV_MAX_RANKS || (n && !m->stats.ranks)) return 0;
        if (n > STACK_RANKS) { /* once a second at most, never per token */
            rs = malloc((size_t)n * sizeof *rs);
            rp = malloc((size_t)n * sizeof *rp);
            if (!rs || !rp) {
                free(rs), free(rp);
                return 0;
            }
        }
        pack_stats(&m->stats, &sx, rs, rp);
        f.body_case = TERNPIPE__SUPERVISE__FRAME__BODY_STATS, f.stats = &sx;
        break;
    }
    default:
        return 0;
    }
    size_t out = put_frame(&f, buf, cap);
    if (rs != rs_stack) free(rs), free(rp);
    return out;
}

tern_code tern_sv_reader_create(tern_sv_reader **out, int32_t n_vocab, tern_status *st)
{
    *out = NULL;
    tern_sv_reader *r = calloc(1, sizeof *r);
    if (r) r->ids = malloc((size_t)TERN_SV_MAX_TOKENS * sizeof *r->ids);
    if (!r || !r->ids) {
        free(r);
        return tern_status_set(st, TERN_ENOMEM, "supervise: out of memory for a reader");
    }
    r->n_vocab = n_vocab;
    *out = r;
    return TERN_OK;
}

void tern_sv_reader_free(tern_sv_reader *r)
{
    if (!r) return;
    if (r->last) ternpipe__supervise__frame__free_unpacked(r->last, NULL);
    free(r->buf), free(r->ids), free(r->ranks), free(r);
}

tern_code tern_sv_reader_feed(tern_sv_reader *r, const uint8_t *data, size_t n, tern_status *st)
{
    /* drop what was consumed, then grow to hold at most one frame past the unread bytes */
    if (r->consumed) {
        memmove(r->buf, r->buf + r->consumed, r->n - r->consumed);
        r->n -= r->consumed, r->consumed = 0;
    }
    if (n > TERN_SV_MAX_FRAME + 4 || r->n + n > 2 * ((size_t)TERN_SV_MAX_FRAME + 4))
        return tern_status_set(st, TERN_EFORMAT,
                               "supervise: stream: got %zu unread bytes, expected at most two "
                               "frames of %u",
                               r->n + n, TERN_SV_MAX_FRAME);
    if (r->n + n > r->cap) {
        size_t cap = r->cap ? r->cap : 4096;
        while (cap < r->n + n) cap *= 2;
        uint8_t *b = realloc(r->buf, cap);
        if (!b) return tern_status_set(st, TERN_ENOMEM, "supervise: out of memory for a frame");
        r->buf = b, r->cap = cap;
    }
    if (n) memcpy(r->buf + r->n, data, n);
    r->n += n;
    return TERN_OK;
}

#define BAD(...) tern_status_set(st, TERN_EFORMAT, __VA_ARGS__)

static tern_code ids_in(tern_sv_reader *r, const uint32_t *v, size_t n, const char *what,
                        tern_sv_msg *m, tern_status *st)
{
    if (n > TERN_SV_MAX_TOKENS)
        return BAD("supervise: %s: got %zu ids, expected at most %d", what, n, TERN_SV_MAX_TOKENS);
    for (size_t i = 0; i < n; i++) {
        if (v[i] > INT32_MAX || (r->n_vocab > 0 && v[i] >= (uint32_t)r->n_vocab))
            return BAD("supervise: %s id %zu: got %u, expected < %d", what, i, v[i],
                       r->n_vocab > 0 ? r->n_vocab : INT32_MAX);
        r->ids[i] = (int32_t)v[i];
    }
    m->ids = r->ids, m->n_ids = (int32_t)n;
    return TERN_OK;
}

/* one line: control characters become spaces */
static void one_line(const char *src, char *out, size_t cap)
{
    size_t k = 0;
    for (const char *c = src; *c && k + 1 < cap; c++)
        out[k++] = (unsigned char)*c < 0x20 ? ' ' : *c;
    out[k] = 0;
}

static tern_code pick_in(tern_sv_reader *r, const Ternpipe__Supervise__Pick *p, tern_sv_msg *m,
                         tern_status *st)
{
    if (m->n_ids != 1)
        return BAD("supervise: tokens with a pick: got %d tokens, expected 1", m->n_ids);
    if (p->n_top_ids > TERN_MAX_LOGPROBS || p->n_top_ids != p->n_top_logprobs)
        return BAD("supervise: pick: got %zu ids and %zu log-probabilities, expected equal "
                   "counts up to %d",
                   p->n_top_ids, p->n_top_logprobs, TERN_MAX_LOGPROBS);
    /* log-probabilities are <= 0 (-inf for a masked token); NaN and positive values are not */
    if (!(p->logprob <= 0.0f))
        return BAD("supervise: pick logprob: got %g, expected <= 0", (double)p->logprob);
    r->pick.token = m->ids[0];
    r->pick.logprob = p->logprob;
    r->pick.n_top = (int32_t)p->n_top_ids;
    for (size_t i = 0; i < p->n_top_ids; i++) {
        uint32_t id = p->top_ids[i];
        if (id > INT32_MAX || (r->n_vocab > 0 && id >= (uint32_t)r->n_vocab))
            return BAD("supervise: pick top id %zu: got %u, expected < %d", i, id,
                       r->n_vocab > 0 ? r->n_vocab : INT32_MAX);
        if (!(p->top_logprobs[i] <= 0.0f))
            return BAD("supervise: pick top logprob %zu: got %g, expected <= 0", i,
                       (double)p->top_logprobs[i]);
        r->pick.top[i].id = (int32_t)id, r->pick.top[i].logprob = p->top_logprobs[i];
    }
    m->pick = &r->pick;
    return TERN_OK;
}

static tern_code stats_in(tern_sv_reader *r, const Ternpipe__Supervise__Stats *s, tern_sv_msg *m,
                          tern_status *st)
{
    if (s->n_ranks > TERN_SV_MAX_RANKS)
        return BAD("supervise: stats: got %zu ranks, expected at most %d", s->n_ranks,
                   TERN_SV_MAX_RANKS);
    if ((int32_t)s->n_ranks > r->cap_ranks) {
        tern_rank_stats *k = realloc(r->ranks, s->n_ranks * sizeof *k);
        if (!k) return tern_status_set(st, TERN_ENOMEM, "supervise: out of memory for stats");
        r->ranks = k, r->cap_ranks = (int32_t)s->n_ranks;
    }
    if (s->running < 0 || s->queued < 0)
        return BAD("supervise: stats: got %d running and %d queued, expected counts", s->running,
                   s->queued);
    tern_engine_stats *o = &m->stats;
    o->n_ranks = o->cap_ranks = (int32_t)s->n_ranks;
    o->ranks = r->ranks;
    o->running = s->running, o->queued = s->queued;
    o->steps = (int64_t)(s->steps & INT64_MAX);
    o->tokens_prompt = (int64_t)(s->tokens_prompt & INT64_MAX);
    o->tokens_generated = (int64_t)(s->tokens_generated & INT64_MAX);
    o->retries = (int64_t)(s->retries & INT64_MAX);
    o->wall_s = isfinite(s->wall_s) ? s->wall_s : 0;
    o->hop_p50_ms = isfinite(s->hop_p50_ms) ? s->hop_p50_ms : 0;
    o->hop_p99_ms = isfinite(s->hop_p99_ms) ? s->hop_p99_ms : 0;
    o->prefix_hits = (int64_t)(s->prefix_hits & INT64_MAX);
    o->prefix_misses = (int64_t)(s->prefix_misses & INT64_MAX);
    o->prefix_evictions = (int64_t)(s->prefix_evictions & INT64_MAX);
    o->prefix_tokens = (int64_t)(s->prefix_tokens & INT64_MAX);
    o->kv_cached = s->kv_cached < 0 ? 0 : s->kv_cached;
    for (size_t i = 0; i < s->n_ranks; i++) {
        const Ternpipe__Supervise__RankStats *x = s->ranks[i];
        tern_rank_stats *k = &r->ranks[i];
        k->busy_s = isfinite(x->busy_s) ? x->busy_s : 0;
        k->peak_rss = x->peak_rss;
        k->kv_used = x->kv_used, k->kv_total = x->kv_total;
        k->layer_start = x->layer_start, k->layer_end = x->layer_end;
        k->vocab_start = x->vocab_start, k->vocab_end = x->vocab_end;
        k->predicted = isfinite(x->predicted) ? x->predicted : 0;
        if (k->kv_used < 0 || k->kv_total < 0 || k->kv_used > k->kv_total || k->layer_start < 0 ||
            k->layer_end < k->layer_start || k->vocab_start < 0 || k->vocab_end < k->vocab_start)
            return BAD("supervise: stats rank %zu: got KV %d/%d, layers [%d, %d), rows [%d, %d), "
                       "expected ordered ranges",
                       i, k->kv_used, k->kv_total, k->layer_start, k->layer_end, k->vocab_start,
                       k->vocab_end);
    }
    return TERN_OK;
}

tern_code tern_sv_reader_next(tern_sv_reader *r, tern_sv_msg *m, bool *got, tern_status *st)
{
    *got = false;
    if (r->last) ternpipe__supervise__frame__free_unpacked(r->last, NULL), r->last = NULL;
    size_t avail = r->n - r->consumed;
    if (avail < 4) return TERN_OK;
    const uint8_t *p = r->buf + r->consumed;
    uint32_t len =
        (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    if (len > TERN_SV_MAX_FRAME)
        return BAD("supervise: frame length: got %u, expected at most %u", len, TERN_SV_MAX_FRAME);
    if (avail < 4 + (size_t)len) return TERN_OK;
    Ternpipe__Supervise__Frame *f = ternpipe__supervise__frame__unpack(NULL, len, p + 4);
    r->consumed += 4 + (size_t)len;
    if (!f) return BAD("supervise: frame: got %u undecodable bytes, expected a Frame", len);
    r->last = f;
    memset(m, 0, sizeof *m);
    tern_code rc = TERN_OK;
    switch (f->body_case) {
    case TERNPIPE__SUPERVISE__FRAME__BODY_HELLO:
        m->kind = TERN_SV_HELLO;
        m->version = f->hello->version, m->model_checksum = f->hello->model_checksum;
        m->n_ctx = f->hello->n_ctx, m->n_vocab = f->hello->n_vocab;
        m->max_seqs = f->hello->max_seqs, m->n_ranks = f->hello->n_ranks;
        if (f->hello->token && strlen(f->hello->token) > TERN_SV_MAX_TOKEN)
            return BAD("supervise: hello token: got %zu bytes, expected at most %d",
                       strlen(f->hello->token), TERN_SV_MAX_TOKEN);
        m->token = f->hello->token;
        break;
    case TERNPIPE__SUPERVISE__FRAME__BODY_SUBMIT: {
        const Ternpipe__Supervise__Submit *s = f->submit;
        m->kind = TERN_SV_SUBMIT;
        m->id = s->id;
        if ((rc = ids_in(r, s->prompt, s->n_prompt, "submit prompt", m, st))) return rc;
        if (s->n_stop > 4)
            return BAD("supervise: submit stop ids: got %zu, expected at most 4", s->n_stop);
        for (size_t i = 0; i < s->n_stop; i++) {
            if (s->stop[i] > INT32_MAX) return BAD("supervise: submit stop id: got %u", s->stop[i]);
            m->stop[i] = (int32_t)s->stop[i];
        }
        m->n_stop = (int32_t)s->n_stop;
        if (s->max_new > INT32_MAX || s->resumed > INT32_MAX ||
            s->resumed >= s->n_prompt + (s->n_prompt == 0))
            return BAD("supervise: submit: got max_new %u, resumed %u of %zu prompt tokens, "
                       "expected resumed below the prompt length",
                       s->max_new, s->resumed, s->n_prompt);
        m->max_new = (int32_t)s->max_new, m->resumed = (int32_t)s->resumed;
        if (s->response_format && strlen(s->response_format) > TERN_GRAMMAR_MAX_SPEC)
            return BAD("supervise: submit response_format: got %zu bytes, expected at most %d",
                       strlen(s->response_format), TERN_GRAMMAR_MAX_SPEC);
        m->response_format = s->response_format; /* the engine checks it at submit */
        tern_sampling_default(&m->sampling);
        const Ternpipe__Supervise__Sampling *sp = s->sampling;
        if (sp) {
            tern_sampling *o = &m->sampling;
            if (sp->has_temperature) o->temperature = sp->temperature;
            if (sp->has_top_k) o->top_k = sp->top_k > INT32_MAX ? -1 : (int32_t)sp->top_k;
            if (sp->has_top_p) o->top_p = sp->top_p;
            if (sp->has_min_p) o->min_p = sp->min_p;
            if (sp->has_repeat_penalty) o->repeat_penalty = sp->repeat_penalty;
            if (sp->has_repeat_last_n) o->repeat_last_n = sp->repeat_last_n;
            if (sp->has_seed) o->seed = sp->seed;
            if (sp->has_n_logprobs)
                o->n_logprobs = sp->n_logprobs > INT32_MAX ? -1 : (int32_t)sp->n_logprobs;
            if (sp->has_presence_penalty) o->presence_penalty = sp->presence_penalty;
            if (sp->has_frequency_penalty) o->frequency_penalty = sp->frequency_penalty;
            if (sp->n_logit_bias > TERN_MAX_LOGIT_BIAS)
                return BAD("supervise: submit logit_bias: got %zu entries, expected at most %d",
                           sp->n_logit_bias, TERN_MAX_LOGIT_BIAS);
            for (size_t i = 0; i < sp->n_logit_bias; i++) {
                uint32_t id = sp->logit_bias[i]->id;
                if (id > INT32_MAX || (r->n_vocab > 0 && id >= (uint32_t)r->n_vocab))
                    return BAD("supervise: submit logit_bias id: got %u, expected < %d", id,
                               r->n_vocab);
                r->bias[i] = (tern_logit_bias){(int32_t)id, sp->logit_bias[i]->bias};
            }
            o->logit_bias = r->bias, o->n_logit_bias = (int32_t)sp->n_logit_bias;
        }
        if ((rc = tern_sampling_validate(&m->sampling, st))) {
            char why[200];
            snprintf(why, sizeof why, "%.180s", st->msg);
            return BAD("supervise: submit %llu: %s", (unsigned long long)m->id, why);
        }
        break;
    }
    case TERNPIPE__SUPERVISE__FRAME__BODY_CANCEL:
        m->kind = TERN_SV_CANCEL, m->id = f->cancel->id;
        break;
    case TERNPIPE__SUPERVISE__FRAME__BODY_TOKENS:
        m->kind = TERN_SV_TOKENS, m->id = f->tokens->id;
        if ((rc = ids_in(r, f->tokens->tokens, f->tokens->n_tokens, "tokens", m, st))) return rc;
        if (f->tokens->pick && (rc = pick_in(r, f->tokens->pick, m, st))) return rc;
        break;
    case TERNPIPE__SUPERVISE__FRAME__BODY_DONE:
        m->kind = TERN_SV_DONE, m->id = f->done->id, m->finish = f->done->finish;
        if (m->finish >= 8)
            return BAD("supervise: done finish: got %u, expected a reason", m->finish);
        if (f->done->error) one_line(f->done->error, m->error, sizeof m->error);
        break;
    case TERNPIPE__SUPERVISE__FRAME__BODY_HEARTBEAT:
        m->kind = TERN_SV_HEARTBEAT, m->id = f->heartbeat->seq, m->state = f->heartbeat->state;
        if (m->state > 2) return BAD("supervise: heartbeat state: got %u, expected 0..2", m->state);
        if (f->heartbeat->error) one_line(f->heartbeat->error, m->error, sizeof m->error);
        break;
    case TERNPIPE__SUPERVISE__FRAME__BODY_STATS:
        m->kind = TERN_SV_STATS;
        if ((rc = stats_in(r, f->stats, m, st))) return rc;
        break;
    default:
        return BAD("supervise: frame: got body %d, expected a known message", (int)f->body_case);
    }
    *got = true;
    return TERN_OK;
}
