/* test_supervise.c: the supervisor's journal and socket protocol (src/supervise): every message
 * round-trips; a stream cut anywhere yields whole frames only; bad frames (lengths, ids,
 * sampling, unknown bodies, garbage) give one-line errors; the journal bounds its requests,
 * records tokens and text sent, and replays each open request as prompt + generated tokens with
 * the rest of its budget, oldest first; the serving messages (picks, rank 0's failure, its
 * counters) round-trip and their bad values are refused. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "supervise/journal.h"
#include "supervise/wire.h"

static size_t pack(const tern_sv_msg *m, uint8_t *buf, size_t cap)
{
    size_t n = tern_sv_pack(m, buf, cap);
    CHECK(n > 4);
    return n;
}

static void test_wire(void)
{
    static uint8_t buf[1 << 16];
    tern_status st = {0};
    int32_t prompt[5] = {1, 2, 3, 4, 999};
    tern_logit_bias lb[2] = {{7, 3.5f}, {9, -100.0f}};
    tern_sv_msg ms[6];
    memset(ms, 0, sizeof ms);
    ms[0] = (tern_sv_msg){.kind = TERN_SV_HELLO,
                          .version = TERN_SV_VERSION,
                          .n_ctx = 512,
                          .n_vocab = 1000,
                          .max_seqs = 64,
                          .model_checksum = 0xabcdefULL,
                          .token = "0123abcd"};
    ms[1] = (tern_sv_msg){.kind = TERN_SV_SUBMIT,
                          .id = 42,
                          .ids = prompt,
                          .n_ids = 5,
                          .max_new = 30,
                          .resumed = 2,
                          .stop = {999, 998},
                          .n_stop = 2};
    tern_sampling_default(&ms[1].sampling);
    ms[1].sampling.temperature = 0.7f, ms[1].sampling.seed = 1234567890123ULL;
    ms[1].sampling.top_k = 40, ms[1].sampling.presence_penalty = 0.5f;
    ms[1].sampling.logit_bias = lb, ms[1].sampling.n_logit_bias = 2;
    ms[1].response_format = "{\"type\":\"json_object\"}";
    ms[2] = (tern_sv_msg){.kind = TERN_SV_CANCEL, .id = 42};
    ms[3] = (tern_sv_msg){.kind = TERN_SV_TOKENS, .id = 42, .ids = prompt, .n_ids = 3};
    ms[4] = (tern_sv_msg){.kind = TERN_SV_DONE, .id = 42, .finish = 1};
    strcpy(ms[4].error, "rank 2 hung\nsecond line");
    ms[5] = (tern_sv_msg){.kind = TERN_SV_HEARTBEAT, .id = 77, .state = 1};
    size_t total = 0;
    for (int i = 0; i < 6; i++) total += pack(&ms[i], buf + total, sizeof buf - total);
    /* fed a byte at a time, and all at once: the same six messages */
    for (int mode = 0; mode < 2; mode++) {
        tern_sv_reader *r = NULL;
        CHECK(tern_sv_reader_create(&r, 1000, &st) == TERN_OK);
        int got_n = 0;
        for (size_t off = 0; off < total;) {
            size_t n = mode == 0 ? 1 : total;
            CHECK(tern_sv_reader_feed(r, buf + off, n, &st) == TERN_OK);
            off += n;
            for (;;) {
                tern_sv_msg m;
                bool got;
                CHECKF(tern_sv_reader_next(r, &m, &got, &st) == TERN_OK, "%s", st.msg);
                if (!got) break;
                const tern_sv_msg *w = &ms[got_n++];
                CHECK(m.kind == w->kind && m.id == w->id);
                if (m.kind == TERN_SV_HELLO)
                    CHECK(m.n_ctx == 512 && m.n_vocab == 1000 && m.model_checksum == 0xabcdefULL &&
                          m.token && !strcmp(m.token, "0123abcd"));
                if (m.kind == TERN_SV_SUBMIT) {
                    CHECK(m.n_ids == 5 && memcmp(m.ids, prompt, sizeof prompt) == 0);
                    CHECK(m.max_new == 30 && m.resumed == 2 && m.n_stop == 2 && m.stop[1] == 998);
                    CHECK(m.sampling.temperature == 0.7f && m.sampling.seed == 1234567890123ULL &&
                          m.sampling.top_k == 40 && m.sampling.presence_penalty == 0.5f);
                    CHECK(m.sampling.n_logit_bias == 2 && m.sampling.logit_bias[1].id == 9 &&
                          m.sampling.logit_bias[1].bias == -100.0f);
                    CHECK(m.response_format &&
                          !strcmp(m.response_format, "{\"type\":\"json_object\"}"));
                }
                if (m.kind == TERN_SV_TOKENS) CHECK(m.n_ids == 3 && m.ids[2] == 3);
                if (m.kind == TERN_SV_DONE)
                    CHECK(m.finish == 1 && !strcmp(m.error, "rank 2 hung second line"));
                if (m.kind == TERN_SV_HEARTBEAT) CHECK(m.state == 1);
            }
        }
        CHECK(got_n == 6);
        tern_sv_reader_free(r);
    }
    /* bad frames */
    struct {
        const char *what;
        int field;
    } cases[] = {{"prompt id", 0}, {"top_p", 1}, {"resumed", 2}, {"logit_bias id", 3}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        tern_sv_msg b = ms[1];
        int32_t bad_prompt[5] = {1, 2, 3, 4, 5000};
        tern_logit_bias bad_lb[1] = {{4000, 1.0f}};
        if (cases[c].field == 0) b.ids = bad_prompt;
        if (cases[c].field == 1) b.sampling.top_p = 1.5f;
        if (cases[c].field == 2) b.resumed = 5;
        if (cases[c].field == 3) b.sampling.logit_bias = bad_lb, b.sampling.n_logit_bias = 1;
        size_t n = pack(&b, buf, sizeof buf);
        tern_sv_reader *r = NULL;
        CHECK(tern_sv_reader_create(&r, 1000, &st) == TERN_OK);
        CHECK(tern_sv_reader_feed(r, buf, n, &st) == TERN_OK);
        tern_sv_msg m;
        bool got;
        CHECKF(tern_sv_reader_next(r, &m, &got, &st) == TERN_EFORMAT && !got, "%s accepted",
               cases[c].what);
        CHECKF(strstr(st.msg, cases[c].what) != NULL && !strchr(st.msg, '\n'),
               "expected '%s' in '%s'", cases[c].what, st.msg);
        tern_sv_reader_free(r);
    }
    /* a length past the limit, and garbage */
    tern_sv_reader *r = NULL;
    CHECK(tern_sv_reader_create(&r, 0, &st) == TERN_OK);
    uint8_t huge[4] = {0xff, 0xff, 0xff, 0x7f};
    CHECK(tern_sv_reader_feed(r, huge, 4, &st) == TERN_OK);
    tern_sv_msg m;
    bool got;
    CHECK(tern_sv_reader_next(r, &m, &got, &st) == TERN_EFORMAT && strstr(st.msg, "length"));
    tern_sv_reader_free(r);
    CHECK(tern_sv_reader_create(&r, 0, &st) == TERN_OK);
    uint8_t junk[12] = {8, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    CHECK(tern_sv_reader_feed(r, junk, sizeof junk, &st) == TERN_OK);
    CHECK(tern_sv_reader_next(r, &m, &got, &st) == TERN_EFORMAT && strstr(st.msg, "frame"));
    tern_sv_reader_free(r);
    CHECK(tern_sv_pack(&ms[1], buf, 10) == 0); /* does not fit */
}

/* one frame through a fresh reader: TERN_OK and the message, or the error in st */
static tern_code one_frame(const tern_sv_msg *w, tern_sv_reader **keep, tern_sv_msg *m,
                           tern_status *st)
{
    static uint8_t buf[1 << 16];
    size_t n = tern_sv_pack(w, buf, sizeof buf);
    CHECK(n > 4);
    CHECK(tern_sv_reader_create(keep, 1000, st) == TERN_OK);
    CHECK(tern_sv_reader_feed(*keep, buf, n, st) == TERN_OK);
    bool got = false;
    tern_code rc = tern_sv_reader_next(*keep, m, &got, st);
    CHECK(rc != TERN_OK || got);
    return rc;
}

/* the messages the supervisor serves from: log-probabilities, rank 0's failure, its counters */
static void test_wire_serving(void)
{
    tern_status st = {0};
    tern_sv_reader *r = NULL;
    tern_sv_msg m;
    int32_t tok = 17;
    tern_pick pk = {.token = 17, .logprob = -0.25f, .n_top = 3};
    pk.top[0] = (tern_logprob){17, -0.25f}, pk.top[1] = (tern_logprob){3, -1.5f};
    pk.top[2] = (tern_logprob){999, -INFINITY};
    tern_sv_msg t = {.kind = TERN_SV_TOKENS, .id = 5, .ids = &tok, .n_ids = 1, .pick = &pk};
    CHECKF(one_frame(&t, &r, &m, &st) == TERN_OK, "%s", st.msg);
    CHECK(m.kind == TERN_SV_TOKENS && m.n_ids == 1 && m.ids[0] == 17 && m.pick);
    CHECK(m.pick->token == 17 && m.pick->logprob == -0.25f && m.pick->n_top == 3);
    CHECK(m.pick->top[1].id == 3 && m.pick->top[1].logprob == -1.5f &&
          isinf(m.pick->top[2].logprob));
    tern_sv_reader_free(r);
    /* a pick belongs to exactly one token; more than the limit does not pack */
    int32_t two[2] = {1, 2};
    tern_sv_msg t2 = t;
    t2.ids = two, t2.n_ids = 2;
    uint8_t small[256];
    CHECK(tern_sv_pack(&t2, small, sizeof small) == 0);
    /* bad picks are refused with a message naming them */
    struct {
        const char *what;
        int32_t id;
        float lp;
    } bad[] = {
        {"pick logprob", 3, 0.5f}, {"pick top id", 5000, -1.0f}, {"pick top logprob", 3, NAN}};
    for (size_t c = 0; c < sizeof bad / sizeof bad[0]; c++) {
        tern_pick b = pk;
        if (c == 0) b.logprob = bad[c].lp;
        if (c == 1) b.top[1].id = bad[c].id;
        if (c == 2) b.top[1].logprob = bad[c].lp;
        tern_sv_msg tb = t;
        tb.pick = &b;
        CHECKF(one_frame(&tb, &r, &m, &st) == TERN_EFORMAT && strstr(st.msg, bad[c].what),
               "%s: got '%s'", bad[c].what, st.msg);
        tern_sv_reader_free(r);
    }
    /* rank 0's failure travels in its heartbeat, on one line */
    tern_sv_msg hb = {.kind = TERN_SV_HEARTBEAT, .id = 9, .state = 2};
    strcpy(hb.error, "engine: step 3: in flight for 3.0 s\nrank 2");
    CHECK(one_frame(&hb, &r, &m, &st) == TERN_OK && m.state == 2);
    CHECK(!strcmp(m.error, "engine: step 3: in flight for 3.0 s rank 2"));
    tern_sv_reader_free(r);
    tern_sv_msg hello = {.kind = TERN_SV_HELLO, .version = TERN_SV_VERSION, .n_ranks = 3};
    CHECK(one_frame(&hello, &r, &m, &st) == TERN_OK && m.n_ranks == 3);
    tern_sv_reader_free(r);
    /* the engine's counters, per rank */
    tern_rank_stats rk[3] = {
        {.busy_s = 1.5,
         .peak_rss = 123456789,
         .kv_used = 4,
         .kv_total = 64,
         .layer_start = 0,
         .layer_end = 2,
         .vocab_start = 0,
         .vocab_end = 10},
        {.kv_used = 0,
         .kv_total = 64,
         .layer_start = 2,
         .layer_end = 6,
         .vocab_start = 10,
         .vocab_end = 600,
         .predicted = 2.5e6},
        {.kv_total = 1, .layer_start = 6, .layer_end = 6, .vocab_start = 600, .vocab_end = 1000}};
    tern_sv_msg sm = {.kind = TERN_SV_STATS};
    sm.stats = (tern_engine_stats){.n_ranks = 3,
                                   .running = 2,
                                   .queued = 1,
                                   .steps = 77,
                                   .tokens_prompt = 1000,
                                   .tokens_generated = 2000,
                                   .retries = 1,
                                   .wall_s = 12.5,
                                   .hop_p50_ms = 0.25,
                                   .hop_p99_ms = 2.0,
                                   .ranks = rk};
    CHECKF(one_frame(&sm, &r, &m, &st) == TERN_OK, "%s", st.msg);
    CHECK(m.kind == TERN_SV_STATS && m.stats.n_ranks == 3 && m.stats.running == 2 &&
          m.stats.queued == 1 && m.stats.steps == 77 && m.stats.tokens_generated == 2000 &&
          m.stats.wall_s == 12.5 && m.stats.hop_p99_ms == 2.0);
    CHECK(m.stats.ranks[0].peak_rss == 123456789 && m.stats.ranks[0].busy_s == 1.5 &&
          m.stats.ranks[1].vocab_end == 600 && m.stats.ranks[1].predicted == 2.5e6 &&
          m.stats.ranks[2].layer_start == 6);
    tern_sv_reader_free(r);
    rk[1].kv_used = 65; /* more used than there are */
    CHECK(one_frame(&sm, &r, &m, &st) == TERN_EFORMAT && strstr(st.msg, "stats rank 1"));
    tern_sv_reader_free(r);
}

typedef struct seen {
    tern_jreplay r[8];
    int32_t ids[8][64];
    int n;
} seen;
static void on_replay(void *u, const tern_jreplay *r)
{
    seen *s = u;
    s->r[s->n] = *r;
    memcpy(s->ids[s->n], r->ids, (size_t)r->n_ids * sizeof(int32_t));
    s->n++;
}

static void test_journal(void)
{
    tern_status st = {0};
    tern_journal *j = NULL;
    CHECK(tern_journal_create(&j, 3, 64, &st) == TERN_OK);
    int32_t p1[3] = {10, 11, 12}, p2[2] = {20, 21};
    tern_logit_bias lb = {5, 2.0f};
    tern_jrequest a = {
        .id = 1, .prompt = p1, .n_prompt = 3, .max_new = 10, .stop = {2}, .n_stop = 1};
    tern_sampling_default(&a.sampling);
    a.sampling.seed = 99, a.sampling.logit_bias = &lb, a.sampling.n_logit_bias = 1;
    tern_jrequest b = {.id = 2, .prompt = p2, .n_prompt = 2, .max_new = 5};
    tern_sampling_default(&b.sampling);
    CHECK(tern_journal_add(j, &a, &st) == TERN_OK && tern_journal_add(j, &b, &st) == TERN_OK);
    CHECK(tern_journal_add(j, &a, &st) == TERN_EINVAL && strstr(st.msg, "twice"));
    tern_jrequest big = b;
    big.id = 3, big.max_new = 63;
    CHECK(tern_journal_add(j, &big, &st) == TERN_ERANGE);
    for (int32_t t = 0; t < 4; t++) CHECK(tern_journal_token(j, 1, 100 + t, &st) == TERN_OK);
    CHECK(tern_journal_token(j, 2, 200, &st) == TERN_OK);
    CHECK(tern_journal_token(j, 9, 1, &st) == TERN_EINVAL && strstr(st.msg, "unknown"));
    tern_journal_sent(j, 1, 17);
    tern_journal_sent(j, 1, 12); /* never backwards */
    seen s = {.n = 0};
    CHECK(tern_journal_replay(j, on_replay, &s) == 2 && s.n == 2);
    CHECK(s.r[0].id == 1 && s.r[0].n_ids == 7 && s.r[0].resumed == 4 && s.r[0].max_new == 6);
    CHECK(s.ids[0][2] == 12 && s.ids[0][3] == 100 && s.ids[0][6] == 103 && s.r[0].text_sent == 17);
    CHECK(s.r[0].sampling->seed == 99 && s.r[0].sampling->logit_bias[0].id == 5 &&
          s.r[0].n_stop == 1 && s.r[0].stop[0] == 2);
    CHECK(s.r[1].id == 2 && s.r[1].n_ids == 3 && s.r[1].resumed == 1 && s.r[1].max_new == 4);
    /* the budget bounds the tokens */
    for (int32_t t = 0; t < 4; t++) CHECK(tern_journal_token(j, 2, 201 + t, &st) == TERN_OK);
    CHECK(tern_journal_token(j, 2, 300, &st) == TERN_ERANGE);
    /* full, then a finish frees a place; replay order stays the acceptance order */
    tern_jrequest c = b;
    c.id = 3, c.max_new = 3;
    CHECK(tern_journal_add(j, &c, &st) == TERN_OK);
    tern_jrequest d = b;
    d.id = 4;
    CHECK(tern_journal_add(j, &d, &st) == TERN_EBUSY && strstr(st.msg, "open requests"));
    tern_journal_finish(j, 1);
    CHECK(tern_journal_add(j, &d, &st) == TERN_OK && tern_journal_count(j) == 3);
    s.n = 0;
    CHECK(tern_journal_replay(j, on_replay, &s) == 3);
    CHECK(s.r[0].id == 2 && s.r[1].id == 3 && s.r[2].id == 4 && s.r[0].max_new == 0);
    /* one request's resubmission alone */
    s.n = 0;
    CHECK(tern_journal_replay_one(j, 3, on_replay, &s) && s.n == 1 && s.r[0].id == 3);
    CHECK(!tern_journal_replay_one(j, 1, on_replay, &s) && s.n == 1); /* finished */
    tern_journal_free(j);
}

int main(void)
{
    test_wire();
    test_wire_serving();
    test_journal();
    return tern_test_finish("test_supervise");
}
