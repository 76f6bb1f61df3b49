/* test_scheduler.c: the MPI-free scheduler (src/pipeline/scheduler.h) driven directly: admission
 * under KV pressure (FIFO, no overtaking), cancelling a queued and a running request, a
 * sequence finishing mid-micro-batch, a long prompt not starving decodes and decodes not
 * starving prefill, 4,096 sequences in one micro-batch, releases reaching the next step,
 * the full-row retry, and the submit errors. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "pipeline/scheduler.h"

typedef struct rec {
    int done, tokens;
    tern_finish why;
} rec;

static void on_token(void *u, int32_t t)
{
    (void)t;
    ((rec *)u)->tokens++;
}
static void on_done(void *u, tern_finish why, const char *err)
{
    (void)err;
    ((rec *)u)->done++;
    ((rec *)u)->why = why;
}

static tern_step g_step;
static int32_t *g_ids;
static tern_pick *g_picks;
static bool *g_ok;

static tern_sched *make(int32_t max_seqs, int32_t batch, int32_t n_ctx, int32_t kv_blocks)
{
    tern_limits L;
    tern_status st = {0};
    CHECK(tern_limits_compute(&L, 1, 1000, 64, 2, max_seqs, batch, n_ctx, kv_blocks, 1, &st) ==
          TERN_OK);
    tern_sched *s = NULL;
    CHECK(tern_sched_create(&s, &L, &st) == TERN_OK);
    free(g_step.seqs), free(g_step.pen_ids), free(g_ids), free(g_picks), free(g_ok);
    memset(&g_step, 0, sizeof g_step);
    g_step.cap_seqs = L.step_entries;
    g_step.seqs = calloc((size_t)L.step_entries, sizeof *g_step.seqs);
    g_step.cap_pen = L.pen_ids;
    g_step.pen_ids = calloc((size_t)L.pen_ids, sizeof *g_step.pen_ids);
    g_ids = calloc((size_t)batch, sizeof *g_ids);
    g_picks = calloc((size_t)L.sample_rows, sizeof *g_picks);
    g_ok = calloc((size_t)L.sample_rows, sizeof *g_ok);
    return s;
}

static int64_t submit(tern_sched *s, int32_t n_prompt, int32_t max_new, rec *r, tern_code want)
{
    int32_t prompt[2048];
    for (int32_t i = 0; i < n_prompt && i < 2048; i++) prompt[i] = (i * 37) % 1000;
    tern_request rq = {.prompt = prompt,
                       .n_prompt = n_prompt,
                       .max_new = max_new,
                       .stop = {999},
                       .n_stop = 1,
                       .on_token = on_token,
                       .on_done = on_done,
                       .user = r};
    tern_sampling_default(&rq.sampling);
    int64_t id = -1;
    tern_status st = {0};
    tern_code rc = tern_sched_submit(s, &rq, &id, &st);
    CHECKF(rc == want, "submit: got %d (%s), expected %d", rc, st.msg, want);
    return id;
}

/* completes the built step: every sampled row picks `tok` (stop_slot's rows pick the stop id) */
static void complete(tern_sched *s, int32_t tok, int32_t stop_slot, bool resolved)
{
    int32_t k = 0;
    for (int32_t i = 0; i < g_step.n_seqs; i++)
        if (g_step.seqs[i].flags & TERN_SEQ_SAMPLE) {
            int32_t rows = g_step.seqs[i].flags & TERN_SEQ_SPEC ? g_step.seqs[i].n_head : 1;
            for (int32_t r = 0; r < rows; r++, k++) {
                g_picks[k].token = g_step.seqs[i].slot == stop_slot ? 999 : tok;
                g_ok[k] = resolved;
            }
        }
    CHECK(k == g_step.n_sample);
    tern_sched_complete(s, &g_step, g_picks, g_ok);
}

/* speculative decoding: the "model" continues a fixed script; drafts come from the sequence's
 * own n-grams, the emitted tokens are exactly the script whatever was drafted, and a repeating
 * script needs fewer steps than tokens */
static int32_t script(int32_t pos) /* the token the model draws at position pos */
{
    static const int32_t period[5] = {11, 12, 13, 14, 15};
    return pos < 40 ? period[pos % 5] : 20 + pos % 7; /* repeating, then a new pattern */
}

typedef struct scripted {
    int32_t got[128], n;
} scripted;
static void on_script(void *u, int32_t t)
{
    scripted *q = u;
    if (q->n < 128) q->got[q->n++] = t;
}

static void test_speculative(void)
{
    tern_sched *s = make(4, 64, 256, 100);
    int32_t prompt[5] = {11, 12, 13, 14, 15};
    scripted out = {{0}, 0};
    tern_request rq = {
        .prompt = prompt, .n_prompt = 5, .max_new = 60, .on_token = on_script, .user = &out};
    tern_sampling_default(&rq.sampling);
    tern_status st = {0};
    CHECK(tern_sched_submit(s, &rq, NULL, &st) == TERN_OK);
    tern_sched_admit(s);
    int steps = 0, spec_steps = 0;
    while (tern_sched_build(s, 1, &g_step, g_ids) && steps < 200) {
        steps += g_step.n_tokens > 0;
        int32_t k = 0;
        for (int32_t i = 0; i < g_step.n_seqs; i++) {
            const tern_step_seq *e = &g_step.seqs[i];
            if (!(e->flags & TERN_SEQ_SAMPLE)) continue;
            int32_t rows = e->flags & TERN_SEQ_SPEC ? e->n_head : 1;
            spec_steps += rows > 1;
            if (rows > 1) CHECK(e->n_tokens == rows && g_step.n_sample == rows);
            for (int32_t r = 0; r < rows; r++, k++) {
                /* row r has seen the fed tokens up to pos0 + n_tokens - rows + r */
                int32_t pos = e->pos0 + e->n_tokens - rows + r + 1;
                g_picks[k].token = script(pos);
                g_ok[k] = true;
            }
        }
        tern_sched_complete(s, &g_step, g_picks, g_ok);
        tern_sched_admit(s);
    }
    CHECK(out.n == 60);
    int bad = 0;
    for (int32_t i = 0; i < out.n; i++) bad += out.got[i] != script(5 + i);
    CHECKF(bad == 0, "%d of 60 tokens differ from the script", bad);
    tern_sched_stats ss;
    tern_sched_stats_get(s, &ss);
    CHECKF(spec_steps > 0 && ss.accepted > 20 && steps < 45,
           "%d steps (%d speculative) for 60 tokens, %lld of %lld drafts accepted", steps,
           spec_steps, (long long)ss.accepted, (long long)ss.drafted);
    printf("speculative: 60 tokens in %d steps, %lld of %lld drafts accepted\n", steps,
           (long long)ss.accepted, (long long)ss.drafted);
    tern_sched_free(s);

    /* off: one token per step */
    s = make(4, 64, 256, 100);
    tern_sched_set_spec(s, 0);
    scripted out2 = {{0}, 0};
    rq.user = &out2;
    CHECK(tern_sched_submit(s, &rq, NULL, &st) == TERN_OK);
    tern_sched_admit(s);
    steps = 0;
    while (tern_sched_build(s, 1, &g_step, g_ids) && steps < 200) {
        steps += g_step.n_tokens > 0; /* not the last, release-only step */
        CHECK(g_step.n_sample <= 1 && !(g_step.seqs[g_step.n_seqs - 1].flags & TERN_SEQ_SPEC));
        g_picks[0].token =
            script(g_step.seqs[g_step.n_seqs - 1].pos0 + g_step.seqs[g_step.n_seqs - 1].n_tokens);
        g_ok[0] = true;
        tern_sched_complete(s, &g_step, g_picks, g_ok);
        tern_sched_admit(s);
    }
    CHECK(out2.n == 60 && memcmp(out.got, out2.got, sizeof(int32_t) * 60) == 0 && steps == 60);
    tern_sched_free(s);
}

static int32_t count_flag(uint32_t flag)
{
    int32_t n = 0;
    for (int32_t i = 0; i < g_step.n_seqs; i++) n += (g_step.seqs[i].flags & flag) != 0;
    return n;
}

static void test_kv_pressure(void)
{
    /* 10 blocks of 32 positions; each request needs 100 positions = 4 blocks */
    tern_sched *s = make(8, 64, 512, 10);
    rec r[5] = {{0}};
    for (int i = 0; i < 4; i++) submit(s, 30, 70, &r[i], TERN_OK); /* 100 positions */
    submit(s, 300, 100, &r[4], TERN_ERANGE); /* 13 blocks: more than the pool */
    tern_sched_admit(s);
    tern_sched_stats ss;
    tern_sched_stats_get(s, &ss);
    CHECK(ss.running == 2 && ss.queued == 2 && ss.kv_reserved == 8);
    /* run the first two to the end: 70 new tokens each, in lockstep */
    for (int it = 0; it < 100 && (r[0].done == 0 || r[1].done == 0); it++) {
        CHECK(tern_sched_build(s, 1, &g_step, g_ids));
        complete(s, 5, -1, true);
        tern_sched_admit(s);
    }
    CHECK(r[0].done == 1 && r[0].why == TERN_FINISH_LENGTH && r[0].tokens == 70);
    CHECK(r[1].done == 1 && r[1].tokens == 70);
    tern_sched_stats_get(s, &ss);
    CHECK(ss.running == 2 && ss.queued == 0 && ss.kv_reserved == 8); /* 2 and 3 admitted */
    /* the releases of 0 and 1 lead the next step */
    CHECK(tern_sched_build(s, 1, &g_step, g_ids));
    CHECK(g_step.seqs[0].flags == TERN_SEQ_FINISHED && g_step.seqs[1].flags == TERN_SEQ_FINISHED);
    CHECK(count_flag(TERN_SEQ_NEW) == 2);
    tern_sched_free(s);
}

/* the prefix cache: a finished sequence's whole blocks are saved into a cache slot; a prompt
 * that starts with the same tokens starts with them (fewer blocks reserved, prefill from the
 * first position after them); an entry the new one extends is dropped; the pool's room comes
 * first (entries are evicted for an admission) */
static void test_prefix_cache(void)
{
    tern_sched *s = make(4, 64, 512, 12);
    tern_sched_set_prefix_cache(s, true);
    rec a = {0}, b = {0}, c = {0};
    submit(s, 70, 10, &a, TERN_OK); /* 80 positions: 3 blocks */
    tern_sched_admit(s);
    for (int it = 0; it < 40 && !a.done; it++) {
        CHECK(tern_sched_build(s, 1, &g_step, g_ids));
        complete(s, 5, -1, true);
        tern_sched_admit(s);
    }
    CHECK(a.done && a.tokens == 10);
    submit(s, 70, 10, &b, TERN_OK); /* the same prompt */
    tern_sched_admit(s);
    tern_sched_stats ss;
    tern_sched_stats_get(s, &ss);
    /* a fed 79 positions (its last token needs no KV): 2 whole blocks saved, 3 held */
    CHECK(ss.prefix_hits == 1 && ss.prefix_tokens == 64 && ss.kv_cached == 3);
    CHECK(ss.kv_reserved == 1); /* 3 blocks for b, 2 of them shared */
    CHECK(tern_sched_build(s, 1, &g_step, g_ids));
    CHECK(g_step.seqs[0].flags == TERN_SEQ_SAVE && g_step.seqs[0].src >= 4 && g_step.seqs[0].src < 8);
    const tern_step_seq *nb = &g_step.seqs[1];
    CHECKF(nb->flags & TERN_SEQ_NEW && nb->n_share == 2 && nb->pos0 == 64 &&
               nb->src == g_step.seqs[0].src && nb->n_tokens == 6,
           "new entry: flags %#x, %d shared from %d at %d, %d tokens", nb->flags, nb->n_share,
           nb->src, nb->pos0, nb->n_tokens);
    complete(s, 5, -1, true);
    for (int it = 0; it < 40 && !b.done; it++) {
        CHECK(tern_sched_build(s, 1, &g_step, g_ids));
        complete(s, 5, -1, true);
        tern_sched_admit(s);
    }
    CHECK(b.done && b.tokens == 10);
    /* b's entry extends a's (the same tokens): a's is dropped once b is saved */
    CHECK(tern_sched_build(s, 1, &g_step, g_ids) || tern_sched_pending_releases(s) >= 0);
    tern_sched_stats_get(s, &ss);
    CHECK(ss.prefix_evictions >= 1 && ss.kv_cached == 3);
    /* a request that needs the whole pool: the cache makes room */
    submit(s, 200, 180, &c, TERN_OK); /* 380 positions: 12 blocks, a different prompt */
    tern_sched_admit(s);
    tern_sched_stats_get(s, &ss);
    CHECK(ss.running == 1 && ss.kv_cached == 0 && ss.prefix_evictions >= 2);
    tern_sched_free(s);

    /* two requests with one prompt at once (n > 1): the second waits for the first's prefill,
     * whose prompt blocks the cache then keeps (KEEP), and shares them */
    s = make(4, 64, 512, 40);
    tern_sched_set_prefix_cache(s, true);
    rec d = {0}, e = {0};
    submit(s, 70, 10, &d, TERN_OK);
    submit(s, 70, 10, &e, TERN_OK);
    tern_sched_admit(s);
    tern_sched_stats_get(s, &ss);
    CHECK(ss.running == 1 && ss.queued == 1); /* the second waits for the leader */
    for (int it = 0; it < 4 && ss.running < 2; it++) { /* the prompt in two chunks */
        CHECK(tern_sched_build(s, 1, &g_step, g_ids));
        complete(s, 5, -1, true);
        tern_sched_admit(s);
        tern_sched_stats_get(s, &ss);
    }
    CHECK(ss.running == 2 && ss.prefix_hits == 1 && ss.prefix_tokens == 64);
    CHECK(tern_sched_build(s, 1, &g_step, g_ids));
    CHECK(g_step.seqs[0].flags == TERN_SEQ_KEEP && g_step.seqs[0].n_share == 2 &&
          g_step.seqs[0].src >= 4);
    bool shared = false;
    for (int32_t i = 1; i < g_step.n_seqs; i++)
        shared |= (g_step.seqs[i].flags & TERN_SEQ_NEW) && g_step.seqs[i].n_share == 2 &&
                  g_step.seqs[i].src == g_step.seqs[0].src && g_step.seqs[i].pos0 == 64;
    CHECK(shared);
    tern_sched_free(s);
}

static void test_fifo(void)
{
    /* a big request at the head blocks smaller ones behind it (no overtaking) */
    tern_sched *s = make(8, 64, 512, 12);
    rec r[3] = {{0}};
    submit(s, 200, 50, &r[0], TERN_OK); /* 8 blocks */
    submit(s, 200, 50, &r[1], TERN_OK); /* 8 blocks: waits */
    submit(s, 10, 5, &r[2], TERN_OK);   /* 1 block: would fit, but waits behind 1 */
    tern_sched_admit(s);
    tern_sched_stats ss;
    tern_sched_stats_get(s, &ss);
    CHECK(ss.running == 1 && ss.queued == 2);
    tern_sched_free(s);
}

static void test_cancel(void)
{
    tern_sched *s = make(2, 64, 512, 100);
    rec r[4] = {{0}};
    int64_t a = submit(s, 10, 20, &r[0], TERN_OK);
    int64_t b = submit(s, 10, 20, &r[1], TERN_OK);
    int64_t c = submit(s, 10, 20, &r[2], TERN_OK); /* queued: only 2 slots */
    tern_sched_admit(s);
    CHECK(tern_sched_build(s, 1, &g_step, g_ids) && g_step.n_seqs == 2);
    /* cancel the queued one: done at once, never built */
    tern_sched_cancel(s, c);
    tern_sched_admit(s);
    CHECK(r[2].done == 1 && r[2].why == TERN_FINISH_CANCELLED && r[2].tokens == 0);
    /* cancel a running one while its micro-batch is in flight: it ends when the step returns */
    tern_sched_cancel(s, a);
    tern_sched_admit(s);
    CHECK(r[0].done == 0);
    complete(s, 5, -1, true);
    CHECK(r[0].done == 1 && r[0].why == TERN_FINISH_CANCELLED && r[0].tokens == 0);
    CHECK(r[1].tokens == 1);
    /* the release carries CANCELLED to every stage in the next step */
    CHECK(tern_sched_pending_releases(s) == 1);
    CHECK(tern_sched_build(s, 1, &g_step, g_ids));
    CHECK(g_step.seqs[0].flags == TERN_SEQ_CANCELLED && g_step.seqs[0].n_tokens == 0);
    complete(s, 5, -1, true);
    /* cancel one that is not in flight */
    tern_sched_cancel(s, b);
    tern_sched_admit(s);
    CHECK(r[1].done == 1 && r[1].why == TERN_FINISH_CANCELLED);
    CHECK(tern_sched_idle(s) && tern_sched_pending_releases(s) == 1);
    tern_sched_cancel(s, 12345); /* unknown ids are ignored */
    tern_sched_admit(s);
    tern_sched_free(s);
    (void)r[3];
}

static void test_finish_mid_batch(void)
{
    tern_sched *s = make(4, 64, 512, 100);
    rec r[3] = {{0}};
    for (int i = 0; i < 3; i++) submit(s, 5, 10, &r[i], TERN_OK);
    tern_sched_admit(s);
    CHECK(tern_sched_build(s, 1, &g_step, g_ids) && g_step.n_sample == 3);
    int32_t stop_slot = g_step.seqs[1].slot;
    complete(s, 5, stop_slot, true);
    int stopped = -1;
    for (int i = 0; i < 3; i++)
        if (r[i].done) stopped = i;
    CHECK(stopped >= 0 && r[stopped].why == TERN_FINISH_STOP && r[stopped].tokens == 0);
    CHECK(tern_sched_build(s, 1, &g_step, g_ids));
    CHECK(g_step.seqs[0].slot == stop_slot && g_step.seqs[0].flags == TERN_SEQ_FINISHED);
    CHECK(g_step.n_sample == 2 && g_step.n_tokens == 2);
    complete(s, 5, -1, true);
    tern_sched_free(s);
}

static void test_starvation(void)
{
    /* 8 decoding sequences and a 1000-token prompt, budget 64: all decodes go every step and
     * the prompt advances by the rest */
    tern_sched *s = make(16, 64, 2048, 1000);
    rec r[9] = {{0}};
    for (int i = 0; i < 8; i++) submit(s, 3, 50, &r[i], TERN_OK);
    tern_sched_admit(s);
    CHECK(tern_sched_build(s, 1, &g_step, g_ids)); /* their prompts */
    complete(s, 5, -1, true);
    submit(s, 1000, 5, &r[8], TERN_OK);
    tern_sched_admit(s);
    for (int it = 0; it < 10; it++) {
        CHECK(tern_sched_build(s, 1, &g_step, g_ids));
        int32_t dec = 0, pre = 0;
        for (int32_t i = 0; i < g_step.n_seqs; i++)
            if (g_step.seqs[i].n_tokens == 1)
                dec++;
            else
                pre += g_step.seqs[i].n_tokens;
        CHECKF(dec == 8 && pre == 56, "step %d: %d decodes, %d prefill tokens", it, dec, pre);
        complete(s, 5, -1, true);
    }
    tern_sched_free(s);
    /* 70 decoding sequences with budget 64: the waiting prompt still gets its 1/8 share */
    s = make(80, 64, 2048, 5000);
    rec q[71] = {{0}};
    for (int i = 0; i < 70; i++) submit(s, 1, 200, &q[i], TERN_OK);
    tern_sched_admit(s);
    for (int it = 0; it < 3; it++) {
        CHECK(tern_sched_build(s, 1, &g_step, g_ids));
        complete(s, 5, -1, true);
    }
    submit(s, 500, 5, &q[70], TERN_OK);
    tern_sched_admit(s);
    int32_t served[80] = {0};
    for (int it = 0; it < 8; it++) {
        CHECK(tern_sched_build(s, 1, &g_step, g_ids));
        int32_t pre = 0;
        for (int32_t i = 0; i < g_step.n_seqs; i++) {
            if (g_step.seqs[i].n_tokens > 1) pre += g_step.seqs[i].n_tokens;
            if (g_step.seqs[i].n_tokens == 1) served[g_step.seqs[i].slot]++;
        }
        CHECKF(pre >= 64 / TERN_SCHED_PREFILL_SHARE, "step %d: prefill got %d tokens", it, pre);
        CHECK(g_step.n_tokens <= 64);
        complete(s, 5, -1, true);
    }
    /* rotation: over 8 steps of 56 decodes each, every one of the 70 was served */
    int32_t never = 0;
    for (int i = 0; i < 70; i++) never += served[i] == 0;
    CHECKF(never == 0, "%d decoding sequences were never served", never);
    tern_sched_free(s);
}

static void test_4096(void)
{
    tern_sched *s = make(4096, 4096, 64, 4096);
    static rec r[4096];
    memset(r, 0, sizeof r);
    for (int i = 0; i < 4096; i++) submit(s, 1, 2, &r[i], TERN_OK);
    tern_sched_admit(s);
    CHECK(tern_sched_build(s, 1, &g_step, g_ids));
    CHECK(g_step.n_seqs == 4096 && g_step.n_tokens == 4096 && g_step.n_sample == 4096);
    complete(s, 5, -1, true);
    CHECK(tern_sched_build(s, 1, &g_step, g_ids) && g_step.n_seqs == 4096);
    complete(s, 5, -1, true);
    int ok = 0;
    for (int i = 0; i < 4096; i++) ok += r[i].done == 1 && r[i].tokens == 2;
    CHECKF(ok == 4096, "%d finished with 2 tokens (r[0]: done %d, %d tokens)", ok, r[0].done,
           r[0].tokens);
    CHECK(tern_sched_pending_releases(s) == 4096);
    CHECK(tern_sched_build(s, 1, &g_step, g_ids) && g_step.n_seqs == 4096 && g_step.n_tokens == 0);
    CHECK(count_flag(TERN_SEQ_FINISHED) == 4096 && tern_sched_idle(s));
    tern_sched_free(s);
}

static void test_retry_and_errors(void)
{
    tern_sched *s = make(2, 64, 128, 100);
    rec r[2] = {{0}};
    submit(s, 4, 3, &r[0], TERN_OK);
    tern_sched_admit(s);
    CHECK(tern_sched_build(s, 1, &g_step, g_ids));
    CHECK(g_step.seqs[0].n_tokens == 4 && !(g_step.seqs[0].flags & TERN_SEQ_FULL));
    complete(s, 5, -1, false); /* unresolved: the last token again, with its full row */
    CHECK(r[0].tokens == 0);
    CHECK(tern_sched_build(s, 1, &g_step, g_ids));
    CHECK(g_step.seqs[0].pos0 == 3 && g_step.seqs[0].n_tokens == 1 &&
          (g_step.seqs[0].flags & TERN_SEQ_FULL) && g_step.n_full == 1);
    complete(s, 5, -1, true);
    CHECK(r[0].tokens == 1);
    CHECK(tern_sched_build(s, 1, &g_step, g_ids) && !(g_step.seqs[0].flags & TERN_SEQ_FULL));
    complete(s, 5, -1, true);
    tern_sched_stats ss;
    tern_sched_stats_get(s, &ss);
    CHECK(ss.retries == 1);
    /* errors */
    submit(s, 100, 29, &r[1], TERN_ERANGE); /* context 128 */
    submit(s, 0, 5, &r[1], TERN_EINVAL);
    int32_t bad[2] = {5, 1000};
    tern_request rq = {.prompt = bad, .n_prompt = 2, .max_new = 1};
    tern_sampling_default(&rq.sampling);
    tern_status st = {0};
    CHECK(tern_sched_submit(s, &rq, NULL, &st) == TERN_EINVAL && strstr(st.msg, "got id 1000"));
    rq.prompt = bad, rq.n_prompt = 1, rq.sampling.top_p = 2.0f;
    CHECK(tern_sched_submit(s, &rq, NULL, &st) == TERN_EINVAL && strstr(st.msg, "top_p"));
    /* the queue is bounded */
    rq.sampling.top_p = 1.0f;
    int busy = 0;
    for (int i = 0; i < 200 && !busy; i++)
        busy = tern_sched_submit(s, &rq, NULL, &st) == TERN_EBUSY;
    CHECK(busy && strstr(st.msg, "queue"));
    tern_sched_free(s);
}

int main(void)
{
    test_kv_pressure();
    test_prefix_cache();
    test_fifo();
    test_cancel();
    test_finish_mid_batch();
    test_starvation();
    test_4096();
    test_retry_and_errors();
    test_speculative();
    free(g_step.seqs), free(g_step.pen_ids), free(g_ids), free(g_picks), free(g_ok);
    return tern_test_finish("test_scheduler");
}
