/* fuzz_request.c: libFuzzer target for the request parser (tern_server_parse_request, both
 * routes), the JSON depth scan and the incremental stop-string matcher.
 *
 * The HTTP request-head check (tern_http_check_head) runs on the same input.
 *
 * Invariants checked (a violation aborts, which libFuzzer reports):
 * - a request either parses into a consistent struct or fails with a message (a prompt may
 *   hold NUL bytes from \u0000 and carries its length; chat text and stop strings never do);
 * - the stop matcher, fed the text in arbitrary pieces, finds exactly the earliest occurrence
 *   of any stop string, never shows text it later takes back, and never shows a byte of a
 *   stop string.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/server-internal.h"
#include "ternpipe/server.h"

#define REQUIRE(c)                                                                                 \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fuzz_request: invariant failed: %s (line %d)\n", #c, __LINE__);       \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static void check_parse(const char *s, size_t n, bool chat)
{
    char err[256], param[64];
    tern_parsed_request r;
    tern_code rc = tern_server_parse_request(s, n, chat, &r, err, sizeof err, param, sizeof param);
    if (rc == TERN_OK) {
        REQUIRE(r.chat == chat);
        if (chat) {
            REQUIRE(r.n_messages > 0 && r.messages);
            for (int32_t i = 0; i < r.n_messages; i++) {
                REQUIRE(r.messages[i].content);
                REQUIRE(r.messages[i].role >= 0 && r.messages[i].role < TERN_ROLE_COUNT);
            }
        } else {
            REQUIRE((r.prompt != NULL) != (r.prompt_ids != NULL));
            /* NUL bytes from \u0000 are part of the prompt: the length is explicit */
            if (r.prompt)
                REQUIRE(r.prompt[r.prompt_len] == '\0' && strlen(r.prompt) <= r.prompt_len);
            if (r.prompt_ids) REQUIRE(r.n_prompt_ids > 0);
        }
        REQUIRE(r.n_stop >= 0 && r.n_stop <= TERN_SERVER_MAX_STOP);
        for (int32_t i = 0; i < r.n_stop; i++)
            REQUIRE(r.stop[i] && r.stop[i][0] && strlen(r.stop[i]) <= TERN_SERVER_MAX_STOP_LEN);
        REQUIRE(r.max_tokens >= -1);
        REQUIRE(tern_sampling_validate(&r.sampling, NULL) == TERN_OK);
    } else {
        REQUIRE(err[0] != '\0');
        REQUIRE(r.prompt == NULL && r.messages == NULL && r.n_stop == 0);
    }
    tern_parsed_request_free(&r);
}

static size_t first_match(const char *const *stops, int32_t n_stop, const char *text, size_t len)
{
    size_t best = SIZE_MAX;
    for (int32_t i = 0; i < n_stop; i++) {
        size_t k = strlen(stops[i]);
        for (size_t q = 0; q + k <= len && q < best; q++)
            if (!memcmp(text + q, stops[i], k)) best = q;
    }
    return best;
}

/* pieces separated by 0xff: up to 3 stop strings, then the text; chunk sizes from the text */
static void check_stop(const uint8_t *d, size_t n)
{
    const char *stops[3];
    char *copy = malloc(n + 1);
    if (!copy) return;
    memcpy(copy, d, n);
    copy[n] = '\0';
    int32_t n_stop = 0;
    char *p = copy;
    while (n_stop < 3) {
        char *sep = memchr(p, 0xff, (size_t)(copy + n - p));
        if (!sep) break;
        *sep = '\0';
        if (*p && !memchr(p, '\0', (size_t)(sep - p)) && strlen(p) <= 32) stops[n_stop++] = p;
        p = sep + 1;
    }
    const char *text = p;
    size_t len = (size_t)(copy + n - p);
    if (n_stop == 0) {
        free(copy);
        return;
    }
    /* reference for a prefix of `have` bytes: the earliest start of a stop string that lies
     * wholly inside it (a stop completed by a later piece cannot have been seen yet) */
    tern_stop_match m;
    tern_stop_init(&m, stops, n_stop);
    size_t have = 0, shown = 0, vis = 0;
    bool hit = false;
    while (have < len && !hit) {
        size_t step = 1 + (unsigned char)text[have] % 7;
        have = have + step < len ? have + step : len;
        hit = tern_stop_scan(&m, text, have, &vis);
        REQUIRE(vis <= have);
        size_t want = first_match(stops, n_stop, text, have);
        REQUIRE(hit == (want != SIZE_MAX));
        if (hit) REQUIRE(vis == want);
        if (!hit) {
            REQUIRE(vis >= shown);
            shown = vis;
        }
    }
    if (hit) REQUIRE(vis >= shown); /* nothing shown that the stop takes back */
    /* nothing shown can be part of a stop string that was still incomplete */
    if (!hit)
        for (int32_t i = 0; i < n_stop; i++) {
            size_t k = strlen(stops[i]);
            for (size_t q = 0; q < shown; q++) {
                size_t t = len - q < k ? len - q : k;
                REQUIRE(q + k <= len || memcmp(text + q, stops[i], t) != 0);
            }
        }
    free(copy);
}

/* the HTTP head check: a status from its set, a head length inside the input */
static void check_head(const char *s, size_t n)
{
    char msg[256];
    size_t len = SIZE_MAX;
    int st = tern_http_check_head(s, n, &len, msg, sizeof msg);
    REQUIRE(st == 0 || st == 200 || st == 400 || st == 414 || st == 431 || st == 505);
    if (st == 200) REQUIRE(len <= n && len > 0 && s[len - 1] == '\n');
    if (st != 0 && st != 200) REQUIRE(msg[0] != '\0' && strlen(msg) < sizeof msg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    check_head(s, size);
    int d = tern_json_depth(s, size, TERN_SERVER_MAX_DEPTH);
    REQUIRE(d >= 0);
    check_parse(s, size, false);
    check_parse(s, size, true);
    check_stop(data, size);
    return 0;
}
