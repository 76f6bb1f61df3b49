/* test_control.c: control messages round-trip through protobuf-c (hello with the plan, step with
 * sequences, sampling parameters, penalty ids, per-hop latency, busy seconds and peak RSS); a
 * step from another rank is validated like file input: every out-of-range slot, position,
 * count, flag or id gives a one-line error naming it, and bad bytes give a status. */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "pipeline/control.h"

static tern_limits lim;

static tern_step make_step(tern_step_seq *seqs, tern_adjust *pen, double *hops, double *busy,
                           uint64_t *rss, int cap)
{
    tern_step s = {.seqs = seqs,
                   .cap_seqs = cap,
                   .pen_ids = pen,
                   .cap_pen = 64,
                   .hop_at = hops,
                   .busy_s = busy,
                   .peak_rss = rss,
                   .cap_hops = 3};
    return s;
}

/* packs s, corrupts with f, expects an error containing what */
static void expect_bad(const tern_step *good, void (*f)(tern_step *), const char *what)
{
    static uint8_t buf[1 << 16], arena[1 << 20];
    tern_step_seq seqs[8], seqs2[8];
    tern_adjust pen[64], pen2[64];
    double h[3], b[3], h2[3], b2[3];
    uint64_t r[3], r2[3];
    tern_step s = make_step(seqs, pen, h, b, r, 8);
    s.id = good->id, s.n_seqs = good->n_seqs, s.n_tokens = good->n_tokens;
    s.n_pen = good->n_pen, s.n_hops = good->n_hops, s.sent_at = good->sent_at;
    memcpy(seqs, good->seqs, sizeof seqs);
    memcpy(pen, good->pen_ids, sizeof pen);
    memcpy(h, good->hop_at, sizeof h), memcpy(b, good->busy_s, sizeof b);
    memcpy(r, good->peak_rss, sizeof r);
    f(&s);
    size_t n = tern_ctl_pack_step(&s, buf, sizeof buf);
    CHECK(n > 0);
    tern_step s2 = make_step(seqs2, pen2, h2, b2, r2, 8);
    tern_status st = {0};
    tern_code rc = tern_ctl_unpack_step(buf, n, &lim, &s2, arena, sizeof arena, &st);
    CHECKF(rc == TERN_EFORMAT, "%s: accepted", what);
    CHECKF(strstr(st.msg, what) != NULL, "expected '%s' in '%s'", what, st.msg);
    CHECK(strchr(st.msg, '\n') == NULL);
}

static void bad_slot(tern_step *s)
{
    s->seqs[1].slot = 64; /* a prefix-cache slot cannot carry tokens */
}
static void bad_save_src(tern_step *s)
{
    s->seqs[2].flags = TERN_SEQ_SAVE, s->seqs[2].src = 3; /* not a cache slot */
}
static void bad_share_pos(tern_step *s)
{
    s->seqs[0].n_share = 1, s->seqs[0].src = 64; /* pos0 0: the shared block is not skipped */
}
static void bad_keep(tern_step *s)
{
    s->seqs[2].flags = TERN_SEQ_KEEP, s->seqs[2].src = 70, s->seqs[2].n_share = 0;
}
static void bad_pos(tern_step *s)
{
    s->seqs[1].pos0 = 4096;
}
static void bad_count(tern_step *s)
{
    s->n_tokens = 18;
}
static void bad_batch(tern_step *s)
{
    s->seqs[0].n_tokens = 600, s->n_tokens = 603;
}
static void bad_flags(tern_step *s)
{
    s->seqs[0].flags |= 64;
}
static void bad_head(tern_step *s)
{
    s->seqs[1].n_head = 2;
}
static void bad_sample(tern_step *s)
{
    s->seqs[1].n_head = 0;
}
static void bad_pen_id(tern_step *s)
{
    s->pen_ids[1].id = 32000;
}
static void bad_pen_sum(tern_step *s)
{
    s->seqs[1].n_pen = 1;
}
static void bad_logprobs(tern_step *s)
{
    s->seqs[1].n_logprobs = 21;
}
static void bad_order(tern_step *s)
{
    s->pen_ids[1].id = 5; /* not ascending */
}
static void bad_temp(tern_step *s)
{
    s->seqs[1].penalty = -1.0f;
}
static void bad_hops(tern_step *s)
{
    s->n_hops = 3, s->cap_hops = 3;
}

int main(void)
{
    tern_status st = {0};
    static uint8_t buf[65536];
    static uint8_t arena[1 << 20];
    CHECK(tern_limits_compute(&lim, 2, 32000, 2560, 30, 64, 512, 4096, 777, 2, &st) == TERN_OK);

    /* hello with the plan */
    tern_hparams hp = {.n_layer = 30, .n_vocab = 32000};
    tern_plan p, p2, p1;
    CHECK(tern_plan_init(&p, 3, &hp, &st) == TERN_OK);
    CHECK(tern_plan_init(&p2, 3, &hp, &st) == TERN_OK);
    CHECK(tern_plan_init(&p1, 2, &hp, &st) == TERN_OK);
    p.layer_start[1] = 0, p.layer_end[1] = 15, p.layer_start[2] = 15, p.layer_end[2] = 30;
    p.vocab_start[2] = 0, p.vocab_end[2] = 16000, p.vocab_start[0] = 16000, p.vocab_end[0] = 32000;
    tern_hello h = {.protocol_version = TERN_PROTOCOL_VERSION,
                    .model_checksum = 0x0123456789abcdefULL,
                    .n_layers = 30,
                    .n_ranks = 3,
                    .batch_tokens = 512,
                    .max_seqs = 64,
                    .n_ctx = 4096,
                    .kv_blocks = 777,
                    .inflight = 4,
                    .plan = &p};
    size_t n = tern_ctl_pack_hello(&h, buf, sizeof buf);
    CHECK(n > 0);
    tern_hello h2 = {.plan = &p2};
    CHECK(tern_ctl_unpack_hello(buf, n, &h2, &st) == TERN_OK);
    CHECK(h2.protocol_version == h.protocol_version && h2.model_checksum == h.model_checksum);
    CHECK(h2.n_ranks == 3 && p2.layer_end[1] == 15 && p2.layer_start[2] == 15 &&
          p2.layer_end[2] == 30 && p2.vocab_end[2] == 16000 && p2.vocab_start[0] == 16000);
    CHECK(h2.batch_tokens == 512 && h2.max_seqs == 64 && h2.n_ctx == 4096 && h2.kv_blocks == 777 &&
          h2.inflight == 4);
    CHECK(tern_ctl_pack_hello(&h, buf, 4) == 0); /* does not fit */
    /* a receiver with another rank count refuses the plan */
    tern_hello h1 = {.plan = &p1};
    CHECK(tern_ctl_unpack_hello(buf, n, &h1, &st) == TERN_EFORMAT && strstr(st.msg, "ranks"));
    /* a plan whose head rows come before the last layer is refused */
    p.vocab_start[1] = 0, p.vocab_end[1] = 16, p.vocab_start[2] = 16;
    n = tern_ctl_pack_hello(&h, buf, sizeof buf);
    CHECK(tern_ctl_unpack_hello(buf, n, &h2, &st) == TERN_EINVAL && strstr(st.msg, "head"));

    tern_step_seq seqs[8], seqs2[8];
    tern_adjust pen[64] = {{5, 0.0f, true}, {77, -0.5f, false}}, pen2[64];
    double hops[3] = {0.001, 0.002}, busy[3] = {1.5, 2.5}, hops2[3], busy2[3];
    uint64_t rss[3] = {303000000ULL, 5000000000ULL}, rss2[3];
    tern_step s = make_step(seqs, pen, hops, busy, rss, 8);
    s.id = 42, s.n_seqs = 3, s.n_tokens = 17, s.sent_at = 123.25, s.n_hops = 2, s.n_pen = 2;
    seqs[0] = (tern_step_seq){.slot = 0, .pos0 = 0, .n_tokens = 16, .flags = TERN_SEQ_NEW};
    seqs[1] = (tern_step_seq){.slot = 5,
                              .pos0 = 300,
                              .n_tokens = 1,
                              .flags = TERN_SEQ_SAMPLE | TERN_SEQ_FULL,
                              .n_head = 1,
                              .temperature = 0.8f,
                              .penalty = 1.1f,
                              .n_cand = 128,
                              .n_logprobs = 20,
                              .gumbel = true,
                              .seed = 0xfeedfacecafebeefULL,
                              .n_pen = 2};
    seqs[2] = (tern_step_seq){.slot = 63, .pos0 = 7, .n_tokens = 0, .flags = TERN_SEQ_CANCELLED};
    n = tern_ctl_pack_step(&s, buf, sizeof buf);
    CHECK(n > 0);
    tern_step s2 = make_step(seqs2, pen2, hops2, busy2, rss2, 8);
    CHECKF(tern_ctl_unpack_step(buf, n, &lim, &s2, arena, sizeof arena, &st) == TERN_OK, "%s",
           st.msg);
    CHECK(s2.id == 42 && s2.n_seqs == 3 && s2.n_tokens == 17 && s2.sent_at == 123.25 &&
          !s2.shutdown);
    CHECK(s2.seqs[1].slot == 5 && s2.seqs[1].pos0 == 300 && s2.seqs[1].n_tokens == 1);
    CHECK(s2.seqs[0].flags == TERN_SEQ_NEW && s2.seqs[2].flags == TERN_SEQ_CANCELLED);
    CHECK(s2.seqs[1].temperature == 0.8f && s2.seqs[1].penalty == 1.1f &&
          s2.seqs[1].n_cand == 128 && s2.seqs[1].n_logprobs == 20 && s2.seqs[1].gumbel &&
          s2.seqs[1].seed == 0xfeedfacecafebeefULL && s2.seqs[1].n_pen == 2);
    CHECK(s2.n_pen == 2 && s2.pen_ids[0].id == 5 && s2.pen_ids[1].id == 77);
    CHECK(s2.pen_ids[0].rep && !s2.pen_ids[1].rep && s2.pen_ids[1].add == -0.5f);
    CHECK(s2.n_head == 1 && s2.n_sample == 1 && s2.n_full == 1);
    CHECK(s2.n_hops == 2 && s2.hop_at[1] == 0.002 && s2.busy_s[0] == 1.5);
    CHECK(s2.peak_rss[0] == 303000000ULL && s2.peak_rss[1] == 5000000000ULL);

    /* validation: each field out of range, one line naming it */
    expect_bad(&s, bad_slot, "slot");
    expect_bad(&s, bad_save_src, "prefix cache");
    expect_bad(&s, bad_share_pos, "prefix cache");
    expect_bad(&s, bad_keep, "prefix cache");
    {
        /* the prefix cache's valid entries: an evicted cache slot, a save, a shared start */
        tern_step_seq cs[8], cs2[8];
        tern_adjust cp[64], cp2[64];
        double ch[3], cb[3], ch2[3], cb2[3];
        uint64_t cr[3], cr2[3];
        tern_step c = make_step(cs, cp, ch, cb, cr, 8);
        c.n_seqs = 3, c.n_tokens = 16;
        cs[0] = (tern_step_seq){.slot = 100, .flags = TERN_SEQ_FINISHED};
        cs[1] = (tern_step_seq){.slot = 3, .flags = TERN_SEQ_SAVE, .src = 100};
        cs[2] = (tern_step_seq){
            .slot = 3, .pos0 = 64, .n_tokens = 16, .flags = TERN_SEQ_NEW, .src = 100, .n_share = 2};
        static uint8_t cbuf[1 << 16];
        size_t cn = tern_ctl_pack_step(&c, cbuf, sizeof cbuf);
        tern_step c2 = make_step(cs2, cp2, ch2, cb2, cr2, 8);
        CHECKF(cn > 0 &&
                   tern_ctl_unpack_step(cbuf, cn, &lim, &c2, arena, sizeof arena, &st) == TERN_OK,
               "%s", st.msg);
        CHECK(c2.seqs[0].slot == 100 && c2.seqs[1].flags == TERN_SEQ_SAVE &&
              c2.seqs[1].src == 100 && c2.seqs[2].n_share == 2 && c2.seqs[2].src == 100);
    }
    expect_bad(&s, bad_pos, "positions");
    expect_bad(&s, bad_count, "tokens");
    expect_bad(&s, bad_batch, "batch");
    expect_bad(&s, bad_flags, "flags");
    expect_bad(&s, bad_head, "head rows");
    expect_bad(&s, bad_sample, "head rows");
    expect_bad(&s, bad_pen_id, "penalty id");
    expect_bad(&s, bad_pen_sum, "penalty ids");
    expect_bad(&s, bad_logprobs, "sampling");
    expect_bad(&s, bad_temp, "sampling");
    expect_bad(&s, bad_order, "ascending");
    expect_bad(&s, bad_hops, "hop records");

    /* more sequences than the receiver holds, and bytes that are not a Step */
    tern_step small = make_step(seqs2, pen2, hops2, busy2, rss2, 2);
    CHECK(tern_ctl_unpack_step(buf, n, &lim, &small, arena, sizeof arena, &st) != TERN_OK);
    CHECK(strstr(st.msg, "entries") != NULL);
    /* an arena too small for the message: an error, not an overrun */
    CHECK(tern_ctl_unpack_step(buf, n, &lim, &s2, arena, 64, &st) != TERN_OK);
    memset(buf, 0xff, 64);
    CHECK(tern_ctl_unpack_step(buf, 64, &lim, &s2, arena, sizeof arena, &st) != TERN_OK);
    CHECK(strstr(st.msg, "step") != NULL);
    size_t hn = tern_ctl_pack_hello(&h, buf, sizeof buf);
    CHECK(tern_ctl_unpack_step(buf, hn, &lim, &s2, arena, sizeof arena, &st) != TERN_OK);

    /* limits refuse what they cannot hold, naming the option */
    tern_limits l2;
    CHECK(tern_limits_compute(&l2, 1, 100, 64, 2, 5000, 512, 512, 10, 1, &st) == TERN_EINVAL &&
          strstr(st.msg, "--max-seqs"));
    CHECK(tern_limits_compute(&l2, 1, 100, 64, 2, 4096, 512, 512, 10, 1, &st) == TERN_OK);
    CHECK(l2.step_entries == 4096 + 4096 + 512 && l2.sample_rows == 512); /* + cache slots */
    tern_plan_free(&p), tern_plan_free(&p2), tern_plan_free(&p1);
    return tern_test_finish("test_control");
}
