/* test_server.c: the server's pure parts: request parsing (fields, defaults, type and range
 * errors with the offending parameter, nesting depth, trailing text) and stop-string matching
 * (split across pieces, held-back prefixes, the earliest of several stops). The HTTP side is
 * tested end to end by tests/server/test_server.sh. */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "server/server-internal.h"
#include "ternpipe/server.h"

static tern_code parse(const char *body, bool chat, tern_parsed_request *r, char *param)
{
    char err[256];
    tern_code rc =
        tern_server_parse_request(body, strlen(body), chat, r, err, sizeof err, param, 64);
    if (rc) CHECKF(err[0] != '\0', "no message for %s", body);
    return rc;
}

static void expect_error(const char *body, bool chat, const char *want_param)
{
    tern_parsed_request r;
    char param[64];
    tern_code rc = parse(body, chat, &r, param);
    CHECKF(rc == TERN_EINVAL, "accepted: %s", body);
    CHECKF(!strcmp(param, want_param), "%s: param '%s', expected '%s'", body, param, want_param);
    tern_parsed_request_free(&r);
}

static void test_completion_fields(void)
{
    tern_parsed_request r;
    char param[64];
    const char *b =
        "{\"prompt\": \"Once upon\", \"max_tokens\": 7, \"temperature\": 0.5, "
        "\"top_p\": 0.9, \"top_k\": 40, \"min_p\": 0.1, \"seed\": 99, \"stream\": true, "
        "\"stream_options\": {\"include_usage\": true}, \"stop\": [\"\\n\", \"\", \"x\"], "
        "\"unknown\": {\"deep\": [1, 2]}, \"user\": null}";
    CHECK(parse(b, false, &r, param) == TERN_OK);
    CHECK(r.prompt && !strcmp(r.prompt, "Once upon") && r.prompt_len == 9 && !r.prompt_ids);
    CHECK(r.max_tokens == 7 && r.stream && r.include_usage && r.has_seed && r.sampling.seed == 99);
    CHECK(r.sampling.temperature == 0.5f && r.sampling.top_k == 40);
    CHECK(r.n_stop == 2 && !strcmp(r.stop[0], "\n") && !strcmp(r.stop[1], "x")); /* "" dropped */
    tern_parsed_request_free(&r);

    CHECK(parse("{\"prompt\": [1, 2, 3]}", false, &r, param) == TERN_OK);
    CHECK(r.n_prompt_ids == 3 && r.prompt_ids[2] == 3 && !r.prompt);
    CHECK(r.max_tokens == -1 && !r.stream && !r.has_seed && r.sampling.temperature == 1.0f);
    tern_parsed_request_free(&r);
    CHECK(parse("{\"prompt\": [\"one\"], \"stop\": \"END\", \"seed\": null}", false, &r, param) ==
          TERN_OK);
    CHECK(r.prompt && !strcmp(r.prompt, "one") && r.n_stop == 1 && !r.has_seed);
    tern_parsed_request_free(&r);
}

static void test_chat_fields(void)
{
    tern_parsed_request r;
    char param[64];
    const char *b = "{\"messages\": [{\"role\": \"developer\", \"content\": \"sys\"}, "
                    "{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"a\"}, "
                    "{\"type\": \"text\", \"text\": \"b\"}]}, {\"role\": \"assistant\", "
                    "\"content\": null}], \"max_completion_tokens\": 5}";
    CHECK(parse(b, true, &r, param) == TERN_OK);
    CHECK(r.n_messages == 3 && r.messages[0].role == TERN_ROLE_SYSTEM);
    CHECK(r.messages[1].role == TERN_ROLE_USER && !strcmp(r.messages[1].content, "ab"));
    CHECK(r.messages[2].role == TERN_ROLE_ASSISTANT && !strcmp(r.messages[2].content, ""));
    CHECK(r.max_tokens == 5);
    tern_parsed_request_free(&r);
}

static void test_errors(void)
{
    expect_error("", false, "");
    expect_error("{\"prompt\": \"x\",", false, "");
    expect_error("{\"prompt\": \"x\"} {}", false, "");
    expect_error("[1]", false, "");
    expect_error("{}", false, "prompt");
    expect_error("{\"prompt\": {}}", false, "prompt");
    expect_error("{\"prompt\": []}", false, "prompt");
    expect_error("{\"prompt\": [1, -2]}", false, "prompt");
    expect_error("{\"prompt\": [1, 2.5]}", false, "prompt");
    expect_error("{\"prompt\": \"x\", \"temperature\": \"hot\"}", false, "temperature");
    expect_error("{\"prompt\": \"x\", \"temperature\": -1}", false, "temperature");
    expect_error("{\"prompt\": \"x\", \"max_tokens\": 1.5}", false, "max_tokens");
    expect_error("{\"prompt\": \"x\", \"max_tokens\": -3}", false, "max_tokens");
    expect_error("{\"prompt\": \"x\", \"top_p\": 0}", false, "top_p");
    expect_error("{\"prompt\": \"x\", \"top_k\": true}", false, "top_k");
    expect_error("{\"prompt\": \"x\", \"stream\": 1}", false, "stream");
    expect_error("{\"prompt\": \"x\", \"stop\": [1]}", false, "stop");
    expect_error("{\"prompt\": \"x\", \"n\": 17}", false, "n");
    expect_error("{\"prompt\": \"x\", \"n\": 0}", false, "n");
    {
        tern_parsed_request nr;
        char np[64];
        CHECK(parse("{\"prompt\": \"x\", \"n\": 16}", false, &nr, np) == TERN_OK && nr.n == 16);
        tern_parsed_request_free(&nr);
        CHECK(parse("{\"prompt\": \"x\"}", false, &nr, np) == TERN_OK && nr.n == 1);
        tern_parsed_request_free(&nr);
    }
    expect_error("{\"prompt\": \"x\", \"frequency_penalty\": 2.5}", false, "frequency_penalty");
    expect_error("{\"prompt\": \"x\", \"presence_penalty\": -3}", false, "presence_penalty");
    expect_error("{\"prompt\": \"x\", \"logit_bias\": {\"12\": 101}}", false, "logit_bias");
    expect_error("{\"prompt\": \"x\", \"logit_bias\": {\"a\": 1}}", false, "logit_bias");
    expect_error("{\"prompt\": \"x\", \"logit_bias\": [1]}", false, "logit_bias");
    expect_error("{\"prompt\": \"x\", \"logprobs\": 21}", false, "logprobs");
    expect_error("{\"prompt\": \"x\", \"top_logprobs\": 2}", false, "top_logprobs");
    expect_error("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"top_logprobs\": 2}",
                 true, "top_logprobs");
    expect_error("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"logprobs\": 3}",
                 true, "logprobs");
    expect_error("{\"prompt\": \"x\", \"seed\": 1e300}", false, "seed");
    expect_error("{\"prompt\": \"x\", \"model\": 3}", false, "model");
    expect_error("{\"messages\": {}}", true, "messages");
    expect_error("{\"messages\": [{\"role\": \"tool\", \"content\": \"x\"}]}", true,
                 "messages[0].role");
    expect_error("{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}]}",
                 true, "messages[0].content");
    /* deeper than the limit: refused before cJSON recurses */
    char deep[400];
    size_t n = 0;
    n += (size_t)snprintf(deep, sizeof deep, "{\"prompt\": \"x\", \"e\": ");
    for (int i = 0; i < 70; i++) deep[n++] = '[';
    for (int i = 0; i < 70; i++) deep[n++] = ']';
    deep[n++] = '}';
    deep[n] = '\0';
    expect_error(deep, false, "");
    CHECK(tern_json_depth("{\"a\": \"[[[[\"}", 13, 64) == 1); /* brackets in strings */
    CHECK(tern_json_depth("[[]][[[]]]", 10, 64) == 3);
}

/* "\u0000" in a prompt is a NUL byte inside it, not its end (issue 10, item 5) */
static void test_nul_prompt(void)
{
    tern_parsed_request r;
    char param[64];
    CHECK(parse("{\"prompt\": \"a\\u0000b\\u0000\"}", false, &r, param) == TERN_OK);
    CHECKF(r.prompt && r.prompt_len == 4 && !memcmp(r.prompt, "a\0b\0", 5), "prompt_len %zu",
           r.prompt_len);
    tern_parsed_request_free(&r);
    /* the private-use stand-in must not collide with the same character in the text, raw or
     * escaped; an escaped backslash before u0000 is text, not an escape */
    const char *b = "{\"prompt\": \"\xee\x80\x80\\ue001\\u0000\\\\u0000\"}";
    CHECK(parse(b, false, &r, param) == TERN_OK);
    const char want[] = "\xee\x80\x80\xee\x80\x81\0\\u0000";
    CHECKF(r.prompt && r.prompt_len == sizeof want - 1 && !memcmp(r.prompt, want, sizeof want),
           "prompt_len %zu", r.prompt_len);
    tern_parsed_request_free(&r);
    /* text the chat template cannot carry is refused, not cut */
    expect_error("{\"messages\": [{\"role\": \"user\", \"content\": \"a\\u0000b\"}]}", true,
                 "messages[0].content");
    expect_error("{\"prompt\": \"x\", \"stop\": [\"\\u0000\"]}", false, "stop");
}

/* generated bytes, NUL included, become a JSON string of the same text (item 5) */
static void test_json_quote(void)
{
    tern_sbuf b = {0};
    tern_json_quote(&b, "a\0b\"\\\n\x01\xff\xc3\xa9", 10);
    const char want[] = "\"a\\u0000b\\\"\\\\\\n\\u0001\xef\xbf\xbd\xc3\xa9\"";
    CHECKF(b.s && b.len == sizeof want - 1 && !memcmp(b.s, want, sizeof want), "got %s",
           b.s ? b.s : "(null)");
    tern_sbuf_free(&b);
}

/* fields this server does not implement are refused, naming them; "off" values pass (item 8) */
static void test_unsupported_fields(void)
{
    static const char *const refused[][2] = {
        {"tools", "[{\"type\": \"function\"}]"},
        {"tool_choice", "\"auto\""},
        {"response_format", "{\"type\": \"json_schema\", \"json_schema\": {\"schema\": "
                            "{\"anyOf\": []}}}"},
        {"response_format", "{\"type\": \"xml\"}"},
        {"suffix", "\"end\""},
        {"best_of", "3"},
        {"functions", "[{\"name\": \"f\"}]"},
    };
    char b[256];
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        for (int chat = 0; chat < 2; chat++) {
            snprintf(b, sizeof b, "{%s, \"%s\": %s}",
                     chat ? "\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]"
                          : "\"prompt\": \"x\"",
                     refused[i][0], refused[i][1]);
            expect_error(b, chat, refused[i][0]);
        }
    }
    tern_parsed_request r;
    char param[64];
    const char *ok = "{\"prompt\": \"x\", \"tools\": [], \"tool_choice\": \"none\", "
                     "\"response_format\": {\"type\": \"text\"}, \"logit_bias\": {}, "
                     "\"suffix\": null, \"best_of\": 1, \"top_logprobs\": 0, \"logprobs\": false}";
    CHECK(parse(ok, false, &r, param) == TERN_OK && r.response_format == NULL);
    tern_parsed_request_free(&r);
    /* json_object and a schema are kept, as compact JSON, for the engine */
    CHECK(parse("{\"prompt\": \"x\", \"response_format\": {\"type\": \"json_object\"}}", false, &r,
                param) == TERN_OK &&
          r.response_format && !strcmp(r.response_format, "{\"type\":\"json_object\"}"));
    tern_parsed_request_free(&r);
}

static int head(const char *h)
{
    char msg[256];
    size_t len = 0;
    msg[0] = '\0';
    int st = tern_http_check_head(h, strlen(h), &len, msg, sizeof msg);
    CHECKF(st == 0 || st == 200 || msg[0], "no message for status %d", st);
    CHECKF(st != 200 || len <= strlen(h), "head length %zu", len);
    return st;
}

/* request heads checked before libmicrohttpd sees them (issue 10, item 10) */
static void test_http_head(void)
{
    CHECK(head("GET /health HTTP/1.1\r\nHost: x\r\n\r\n") == 200);
    CHECK(head("\r\nGET /health HTTP/1.0\r\n\r\n") == 200);
    CHECK(head("GET /health HTTP/1.1\nHost: x\n\n") == 200); /* bare LF, as libmicrohttpd */
    CHECK(head("GET /health HTTP/1.1\r\nHost: x\r\n") == 0); /* incomplete */
    CHECK(head("GET /hea") == 0);
    CHECK(head("GARBAGE\r\n\r\n") == 400);
    CHECK(head("GET  / HTTP/1.1\r\nHost: x\r\n\r\n") == 400);
    CHECK(head("GET / HTTP/1.1 x\r\nHost: x\r\n\r\n") == 400);
    CHECK(head("GET / HTTP/2.0\r\nHost: x\r\n\r\n") == 505);
    CHECK(head("GET / HTTP/0.9\r\n\r\n") == 505);
    CHECK(head("GET / HTTX/1.1\r\nHost: x\r\n\r\n") == 400);
    CHECK(head("GET / HTTP/1.1\r\n\r\n") == 400); /* no Host */
    CHECK(head("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n") == 400);
    CHECK(head("GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n") == 400);
    CHECK(head("GET / HTTP/1.1\r\nHost: x\r\nNo colon\r\n\r\n") == 400);
    CHECK(head("GET / HTTP/1.1\r\nHost: x\r\nA: b\x01\r\n\r\n") == 400);
    /* Content-Length: equal duplicates are one length; different ones are a smuggling risk */
    CHECK(head("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-length: 5\r\n\r\n") ==
          200);
    CHECK(head("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n") ==
          400);
    CHECK(head("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\n") == 400);
    CHECK(head("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n") == 200);
    CHECK(head("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n") == 400);
    CHECK(head("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n") ==
          400);
    CHECK(head("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: "
               "chunked\r\n\r\n") == 400);
    /* sizes: a long URI is 414, long or many header fields 431 */
    size_t big = TERN_HTTP_MAX_HEAD + 100;
    char *b = malloc(big + 1);
    CHECK(b != NULL);
    if (!b) return;
    memcpy(b, "GET /", 5);
    memset(b + 5, 'a', big - 5);
    b[big] = '\0';
    char msg[256];
    size_t len;
    CHECK(tern_http_check_head(b, TERN_HTTP_MAX_HEAD, &len, msg, sizeof msg) == 414);
    int n = snprintf(b, big, "GET /%0*d HTTP/1.1\r\nHost: x\r\n\r\n", TERN_HTTP_MAX_URI, 0);
    CHECK(tern_http_check_head(b, (size_t)n, &len, msg, sizeof msg) == 414);
    n = snprintf(b, big, "GET / HTTP/1.1\r\nHost: x\r\nX: ");
    memset(b + n, 'b', big - (size_t)n);
    CHECK(tern_http_check_head(b, TERN_HTTP_MAX_HEAD, &len, msg, sizeof msg) == 431);
    n = snprintf(b, big, "GET / HTTP/1.1\r\nHost: x\r\n");
    for (int i = 0; i < TERN_HTTP_MAX_FIELDS; i++)
        n += snprintf(b + n, big - (size_t)n, "X: y\r\n");
    snprintf(b + n, big - (size_t)n, "\r\n");
    CHECK(head(b) == 431);
    free(b);
}

/* feeds text in pieces of `step` bytes; returns the final visible length, *hit on a stop */
static size_t feed(const char *const *stops, int32_t n_stop, const char *text, size_t step,
                   bool *hit)
{
    tern_stop_match m;
    tern_stop_init(&m, stops, n_stop);
    size_t len = strlen(text), have = 0, vis = 0, shown = 0;
    *hit = false;
    while (have < len) {
        have = have + step < len ? have + step : len;
        *hit = tern_stop_scan(&m, text, have, &vis);
        if (*hit) break;
        CHECK(vis >= shown);
        shown = vis;
    }
    CHECK(!*hit || vis >= shown);
    return vis;
}

static void test_stop_strings(void)
{
    const char *s1[] = {"The end"};
    bool hit;
    for (size_t step = 1; step <= 12; step++) {
        size_t v = feed(s1, 1, "and so. The end of it", step, &hit);
        CHECKF(hit && v == 8, "step %zu: hit %d at %zu", step, hit, v);
    }
    size_t v = feed(s1, 1, "no stop here. The en", 3, &hit);
    CHECK(!hit && v == 14); /* "The en" could still become the stop string */
    const char *s2[] = {"xyz", "b", "\n\n"};
    v = feed(s2, 3, "aaa\n\nbxyz", 2, &hit);
    CHECK(hit && v == 3); /* the earliest of several */
    const char *s3[] = {"aab"};
    v = feed(s3, 1, "aaaab", 1, &hit); /* overlapping prefixes */
    CHECK(hit && v == 2);
    v = feed(s3, 0, "aaaab", 1, &hit);
    CHECK(!hit && v == 5);
}

int main(void)
{
    test_completion_fields();
    test_chat_fields();
    test_errors();
    test_stop_strings();
    test_nul_prompt();
    test_json_quote();
    test_unsupported_fields();
    test_http_head();
    return tern_test_finish("test_server");
}
