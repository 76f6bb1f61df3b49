/* fuzz_supervise.c: libFuzzer target for what the supervisor and rank 0 read from their socket
 * (src/supervise/wire.h). Invariants (a violation aborts, which libFuzzer reports):
 * - bytes fed in arbitrary pieces give whole messages or a one-line error, never a crash;
 * - a submit that is accepted has ids below the vocabulary, resumed below its prompt length and
 *   sampling parameters that validate, and packs again to a frame the reader accepts. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "supervise/wire.h"

#define REQUIRE(c)                                                                                 \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fuzz_supervise: invariant failed: %s (line %d)\n", #c, __LINE__);     \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static tern_sv_reader *r, *r2;
    static uint8_t out[1 << 20];
    tern_status st = {0};
    if (!r) {
        REQUIRE(tern_sv_reader_create(&r, 1000, &st) == TERN_OK);
        REQUIRE(tern_sv_reader_create(&r2, 1000, &st) == TERN_OK);
    }
    tern_sv_reader_free(r);
    REQUIRE(tern_sv_reader_create(&r, 1000, &st) == TERN_OK);
    size_t piece = size > 0 ? 1 + data[0] % 7 : 1;
    for (size_t off = 0; off < size;) {
        size_t n = size - off < piece ? size - off : piece;
        if (tern_sv_reader_feed(r, data + off, n, &st)) return 0;
        off += n;
        for (int guard = 0; guard < 1000; guard++) {
            tern_sv_msg m;
            bool got;
            if (tern_sv_reader_next(r, &m, &got, &st) != TERN_OK) {
                REQUIRE(st.msg[0] && !strchr(st.msg, '\n'));
                return 0;
            }
            if (!got) break;
            if (m.kind == TERN_SV_SUBMIT) {
                for (int32_t i = 0; i < m.n_ids; i++) REQUIRE(m.ids[i] >= 0 && m.ids[i] < 1000);
                REQUIRE(m.resumed >= 0 && (m.n_ids == 0 ? m.resumed == 0 : m.resumed < m.n_ids));
                REQUIRE(tern_sampling_validate(&m.sampling, &st) == TERN_OK);
                size_t k = tern_sv_pack(&m, out, sizeof out);
                REQUIRE(k > 0);
                tern_sv_reader_free(r2);
                REQUIRE(tern_sv_reader_create(&r2, 1000, &st) == TERN_OK);
                REQUIRE(tern_sv_reader_feed(r2, out, k, &st) == TERN_OK);
                tern_sv_msg m2;
                bool got2;
                REQUIRE(tern_sv_reader_next(r2, &m2, &got2, &st) == TERN_OK && got2);
                REQUIRE(m2.kind == TERN_SV_SUBMIT && m2.n_ids == m.n_ids && m2.id == m.id);
            }
        }
    }
    return 0;
}
