/* test_control.c: control messages round-trip through protobuf-c (hello, step with sequences,
 * per-hop latency, busy seconds and peak RSS), and bad bytes give a status, not a crash. */
#include <string.h>

#include "dist/control.h"
#include "harness.h"

int main(void)
{
    tern_status st = {0};
    uint8_t buf[65536];
    static uint8_t arena[1 << 20];

    tern_hello h = {.protocol_version = TERN_PROTOCOL_VERSION,
                    .model_checksum = 0x0123456789abcdefULL,
                    .n_layers = 30,
                    .n_ranks = 3,
                    .max_tokens = 512,
                    .max_seqs = 64,
                    .n_ctx = 4096,
                    .kv_blocks = 777};
    h.layer_start[1] = 0, h.layer_end[1] = 15, h.layer_start[2] = 15, h.layer_end[2] = 30;
    size_t n = tern_ctl_pack_hello(&h, buf, sizeof buf);
    CHECK(n > 0);
    tern_hello h2;
    memset(&h2, 0xff, sizeof h2);
    CHECK(tern_ctl_unpack_hello(buf, n, &h2, &st) == TERN_OK);
    CHECK(h2.protocol_version == h.protocol_version && h2.model_checksum == h.model_checksum);
    CHECK(h2.n_ranks == 3 && h2.layer_end[1] == 15 && h2.layer_start[2] == 15 &&
          h2.layer_end[2] == 30);
    CHECK(h2.max_tokens == 512 && h2.max_seqs == 64 && h2.n_ctx == 4096 && h2.kv_blocks == 777);
    CHECK(tern_ctl_pack_hello(&h, buf, 4) == 0); /* does not fit */

    tern_step_seq seqs[8], seqs2[8];
    tern_step s = {.id = 42,
                   .n_seqs = 3,
                   .seqs = seqs,
                   .cap_seqs = 8,
                   .n_tokens = 19,
                   .sent_at = 123.25,
                   .n_hops = 2};
    seqs[0] = (tern_step_seq){.slot = 0, .pos0 = 0, .n_tokens = 16, .flags = TERN_SEQ_NEW};
    seqs[1] = (tern_step_seq){.slot = 5, .pos0 = 300, .n_tokens = 1, .flags = 0};
    seqs[2] = (tern_step_seq){.slot = 63, .pos0 = 7, .n_tokens = 0, .flags = TERN_SEQ_CANCELLED};
    s.hop_at[0] = 0.001, s.hop_at[1] = 0.002;
    s.busy_s[0] = 1.5, s.busy_s[1] = 2.5;
    s.peak_rss[0] = 303000000ULL, s.peak_rss[1] = 5000000000ULL;
    n = tern_ctl_pack_step(&s, buf, sizeof buf);
    CHECK(n > 0);
    tern_step s2 = {.seqs = seqs2, .cap_seqs = 8};
    CHECK(tern_ctl_unpack_step(buf, n, &s2, arena, sizeof arena, &st) == TERN_OK);
    CHECK(s2.id == 42 && s2.n_seqs == 3 && s2.n_tokens == 19 && s2.sent_at == 123.25 &&
          !s2.shutdown);
    CHECK(s2.seqs[1].slot == 5 && s2.seqs[1].pos0 == 300 && s2.seqs[1].n_tokens == 1);
    CHECK(s2.seqs[0].flags == TERN_SEQ_NEW && s2.seqs[2].flags == TERN_SEQ_CANCELLED);
    CHECK(s2.n_hops == 2 && s2.hop_at[1] == 0.002 && s2.busy_s[0] == 1.5);
    CHECK(s2.peak_rss[0] == 303000000ULL && s2.peak_rss[1] == 5000000000ULL);

    /* more sequences than the receiver holds, and bytes that are not a Step */
    tern_step small = {.seqs = seqs2, .cap_seqs = 2};
    CHECK(tern_ctl_unpack_step(buf, n, &small, arena, sizeof arena, &st) != TERN_OK);
    CHECK(strstr(st.msg, "sequences") != NULL);
    memset(buf, 0xff, 64);
    CHECK(tern_ctl_unpack_step(buf, 64, &s2, arena, sizeof arena, &st) != TERN_OK);
    CHECK(strstr(st.msg, "step") != NULL);
    size_t hn = tern_ctl_pack_hello(&h, buf, sizeof buf);
    CHECK(tern_ctl_unpack_step(buf, hn, &s2, arena, sizeof arena, &st) != TERN_OK); /* a Hello */
    return tern_test_finish("test_control");
}
