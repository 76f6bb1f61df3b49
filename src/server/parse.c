/* parse.c: request bodies of /v1/completions and /v1/chat/completions -> tern_parsed_request
 * (see server.h), and the incremental stop-string matcher.
 *
 * Pure functions: no engine, tokenizer or global state, so the fuzzer can drive them. The
 * nesting depth is measured before cJSON sees the text, because cJSON recurses once per level
 * and a deep body would otherwise cost stack on an HTTP thread.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "ternpipe/grammar.h"
#include "ternpipe/server.h"

typedef struct perr {
    char *msg;
    size_t cap;
    char *param;
    size_t pcap;
    char nul[4]; /* UTF-8 of the character standing for NUL in this body ("" when none) */
} perr;

static tern_code fail(perr *e, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static tern_code fail(perr *e, const char *param, const char *fmt, ...)
{
    if (e->msg && e->cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, e->cap, fmt, ap);
        va_end(ap);
    }
    if (e->param && e->pcap) snprintf(e->param, e->pcap, "%s", param ? param : "");
    return TERN_EINVAL;
}

static const char *type_name(const cJSON *j)
{
    if (cJSON_IsString(j)) return "string";
    if (cJSON_IsNumber(j)) return "number";
    if (cJSON_IsBool(j)) return cJSON_IsTrue(j) ? "true" : "false";
    if (cJSON_IsNull(j)) return "null";
    if (cJSON_IsArray(j)) return "array";
    if (cJSON_IsObject(j)) return "object";
    return "invalid";
}

int tern_json_depth(const char *s, size_t len, int limit)
{
    int depth = 0, max = 0;
    bool in_str = false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == '{' || c == '[') {
            if (++depth > max) max = depth;
            if (max > limit) return max;
        } else if ((c == '}' || c == ']') && depth > 0) {
            depth--;
        }
    }
    return max;
}

/* null or absent: "not given" */
static const cJSON *field(const cJSON *obj, const char *name)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, name);
    return cJSON_IsNull(j) ? NULL : j;
}

static tern_code get_number(perr *e, const cJSON *obj, const char *name, double lo, double hi,
                            bool *given, double *out)
{
    const cJSON *j = field(obj, name);
    *given = j != NULL;
    if (!j) return TERN_OK;
    if (!cJSON_IsNumber(j))
        return fail(e, name, "%s: got %s, expected a number", name, type_name(j));
    double v = j->valuedouble;
    if (!isfinite(v) || v < lo || v > hi)
        return fail(e, name, "%s: got %g, expected a number in [%g, %g]", name, v, lo, hi);
    *out = v;
    return TERN_OK;
}

static tern_code get_int(perr *e, const cJSON *obj, const char *name, double lo, double hi,
                         bool *given, double *out)
{
    const cJSON *j = field(obj, name);
    *given = j != NULL;
    if (!j) return TERN_OK;
    if (!cJSON_IsNumber(j))
        return fail(e, name, "%s: got %s, expected an integer", name, type_name(j));
    double v = j->valuedouble;
    if (!isfinite(v) || v != floor(v))
        return fail(e, name, "%s: got %g, expected an integer", name, v);
    if (v < lo || v > hi)
        return fail(e, name, "%s: got %.0f, expected an integer in [%.0f, %.0f]", name, v, lo, hi);
    *out = v;
    return TERN_OK;
}

static tern_code get_bool(perr *e, const cJSON *obj, const char *name, bool *out)
{
    const cJSON *j = field(obj, name);
    if (!j) return TERN_OK;
    if (!cJSON_IsBool(j))
        return fail(e, name, "%s: got %s, expected true or false", name, type_name(j));
    *out = cJSON_IsTrue(j);
    return TERN_OK;
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s);
    char *d = malloc(n + 1);
    if (d) memcpy(d, s, n + 1);
    return d;
}

/* cJSON 1.7 keeps strings NUL-terminated without a length, so a "\u0000" escape would cut
 * the string short. Before parsing, each \u0000 escape is rewritten (same length, so byte
 * offsets in messages do not move) to the escape of a private-use character that occurs
 * nowhere in the body, raw or escaped; text taken from the tree maps that character back to
 * a NUL byte and carries an explicit length. */
#define PUA_FIRST 0xe000u
#define PUA_COUNT 0x1900u /* U+E000..U+F8FF */

static int hexval(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

static long hex4(const char *s, size_t avail)
{
    if (avail < 4) return -1;
    long v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(s[i]);
        if (h < 0) return -1;
        v = v * 16 + h;
    }
    return v;
}

/* Rewrites buf[len] in place as above; sets e->nul. False when every private-use character
 * occurs already (then no stand-in exists). */
static bool hide_nuls(char *buf, size_t len, perr *e)
{
    unsigned char used[PUA_COUNT / 8] = {0};
    bool any = false, in_str = false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)buf[i];
        long cp = -1;
        if ((c == 0xee || c == 0xef) && i + 2 < len)
            cp = (long)(c & 0x0fu) << 12 | (long)((unsigned char)buf[i + 1] & 0x3fu) << 6 |
                 ((unsigned char)buf[i + 2] & 0x3fu);
        if (in_str && c == '\\' && i + 1 < len) {
            if (buf[i + 1] == 'u') {
                cp = hex4(buf + i + 2, len - i - 2);
                if (cp == 0) any = true;
            }
            i++;
        } else if (c == '"') {
            in_str = !in_str;
        }
        if (cp >= (long)PUA_FIRST && cp < (long)(PUA_FIRST + PUA_COUNT))
            used[(cp - PUA_FIRST) / 8] |= (unsigned char)(1u << ((cp - PUA_FIRST) % 8));
    }
    e->nul[0] = '\0';
    if (!any) return true;
    unsigned k = 0;
    while (k < PUA_COUNT && (used[k / 8] >> (k % 8) & 1u)) k++;
    if (k == PUA_COUNT) return false;
    unsigned cp = PUA_FIRST + k;
    e->nul[0] = (char)(0xe0u | cp >> 12);
    e->nul[1] = (char)(0x80u | (cp >> 6 & 0x3fu));
    e->nul[2] = (char)(0x80u | (cp & 0x3fu));
    e->nul[3] = '\0';
    char hex[5];
    snprintf(hex, sizeof hex, "%04x", cp);
    in_str = false;
    for (size_t i = 0; i < len; i++) {
        if (in_str && buf[i] == '\\' && i + 1 < len) {
            if (buf[i + 1] == 'u' && hex4(buf + i + 2, len - i - 2) == 0)
                memcpy(buf + i + 2, hex, 4);
            i++;
        } else if (buf[i] == '"') {
            in_str = !in_str;
        }
    }
    return true;
}

/* a copy of a string value with the NUL stand-in mapped back; *n its length */
static char *take_text(const perr *e, const char *s, size_t *n)
{
    size_t len = strlen(s);
    char *d = malloc(len + 1);
    if (!d) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < len;) {
        if (e->nul[0] && i + 3 <= len && !memcmp(s + i, e->nul, 3)) {
            d[k++] = '\0';
            i += 3;
        } else {
            d[k++] = s[i++];
        }
    }
    d[k] = '\0';
    *n = k;
    return d;
}

/* true when the string value holds a NUL character (its byte offset in *at) */
static bool has_nul(const perr *e, const char *s, size_t *at)
{
    const char *p = e->nul[0] ? strstr(s, e->nul) : NULL;
    if (p) *at = (size_t)(p - s);
    return p != NULL;
}

static tern_code parse_prompt(perr *e, const cJSON *j, tern_parsed_request *r)
{
    if (!j) return fail(e, "prompt", "prompt: missing, expected a string or an array of token ids");
    /* a batch of one prompt is how some clients send a single prompt */
    if (cJSON_IsArray(j) && cJSON_GetArraySize(j) == 1 &&
        (cJSON_IsString(j->child) || cJSON_IsArray(j->child)))
        j = j->child;
    if (cJSON_IsString(j)) {
        r->prompt = take_text(e, j->valuestring, &r->prompt_len);
        if (!r->prompt) return fail(e, "prompt", "prompt: out of memory");
        return TERN_OK;
    }
    if (!cJSON_IsArray(j))
        return fail(e, "prompt", "prompt: got %s, expected a string or an array of token ids",
                    type_name(j));
    int n = cJSON_GetArraySize(j);
    if (n == 0)
        return fail(e, "prompt", "prompt: got an empty array, expected at least one token id");
    r->prompt_ids = malloc((size_t)n * sizeof *r->prompt_ids);
    if (!r->prompt_ids) return fail(e, "prompt", "prompt: out of memory");
    int i = 0;
    for (const cJSON *t = j->child; t; t = t->next, i++) {
        if (!cJSON_IsNumber(t))
            return fail(e, "prompt",
                        "prompt[%d]: got %s, expected a token id (one prompt per request)", i,
                        type_name(t));
        double v = t->valuedouble;
        if (!isfinite(v) || v != floor(v) || v < 0 || v > INT32_MAX)
            return fail(e, "prompt", "prompt[%d]: got %g, expected a token id >= 0", i, v);
        r->prompt_ids[i] = (int32_t)v;
    }
    r->n_prompt_ids = n;
    return TERN_OK;
}

/* string, null, or an array of {"type": "text", "text": "..."} parts (joined) */
static tern_code parse_content(perr *e, const cJSON *c, int m, char **out)
{
    char pname[64];
    snprintf(pname, sizeof pname, "messages[%d].content", m);
    if (!c || cJSON_IsNull(c)) {
        *out = dup_str("");
    } else if (cJSON_IsString(c)) {
        *out = dup_str(c->valuestring);
    } else if (cJSON_IsArray(c)) {
        size_t total = 0;
        int k = 0;
        for (const cJSON *p = c->child; p; p = p->next, k++) {
            const cJSON *type = cJSON_GetObjectItemCaseSensitive(p, "type");
            const cJSON *text = cJSON_GetObjectItemCaseSensitive(p, "text");
            if (!cJSON_IsObject(p))
                return fail(e, pname, "%s[%d]: got %s, expected an object", pname, k, type_name(p));
            if (!cJSON_IsString(type) || strcmp(type->valuestring, "text") != 0)
                return fail(e, pname, "%s[%d].type: got %s%s%s, expected \"text\"", pname, k,
                            cJSON_IsString(type) ? "\"" : "",
                            cJSON_IsString(type) ? type->valuestring : type_name(type),
                            cJSON_IsString(type) ? "\"" : "");
            if (!cJSON_IsString(text))
                return fail(e, pname, "%s[%d].text: got %s, expected a string", pname, k,
                            type_name(text));
            total += strlen(text->valuestring);
        }
        *out = malloc(total + 1);
        if (*out) {
            size_t at = 0;
            for (const cJSON *p = c->child; p; p = p->next) {
                const char *t = cJSON_GetObjectItemCaseSensitive(p, "text")->valuestring;
                size_t n = strlen(t);
                memcpy(*out + at, t, n);
                at += n;
            }
            (*out)[at] = '\0';
        }
    } else {
        return fail(e, pname, "%s: got %s, expected a string or an array of text parts", pname,
                    type_name(c));
    }
    if (!*out) return fail(e, pname, "%s: out of memory", pname);
    /* the chat template takes NUL-terminated text: refused rather than cut short */
    size_t at;
    if (has_nul(e, *out, &at))
        return fail(e, pname,
                    "%s: got a NUL character (\\u0000) at byte %zu, expected text without NUL "
                    "(a completions prompt may hold one)",
                    pname, at);
    return TERN_OK;
}

static tern_code parse_messages(perr *e, const cJSON *j, tern_parsed_request *r)
{
    if (!j) return fail(e, "messages", "messages: missing, expected an array of {role, content}");
    if (!cJSON_IsArray(j))
        return fail(e, "messages", "messages: got %s, expected an array of {role, content}",
                    type_name(j));
    int n = cJSON_GetArraySize(j);
    if (n == 0)
        return fail(e, "messages", "messages: got an empty array, expected at least one message");
    r->messages = calloc((size_t)n, sizeof *r->messages);
    if (!r->messages) return fail(e, "messages", "messages: out of memory");
    int i = 0;
    for (const cJSON *m = j->child; m; m = m->next, i++) {
        char pname[64];
        snprintf(pname, sizeof pname, "messages[%d]", i);
        if (!cJSON_IsObject(m))
            return fail(e, pname, "%s: got %s, expected an object {role, content}", pname,
                        type_name(m));
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        snprintf(pname, sizeof pname, "messages[%d].role", i);
        if (!cJSON_IsString(role))
            return fail(e, pname, "%s: got %s, expected \"system\", \"user\" or \"assistant\"",
                        pname, type_name(role));
        const char *rs = role->valuestring;
        tern_chat_role ro;
        if (!strcmp(rs, "system") || !strcmp(rs, "developer"))
            ro = TERN_ROLE_SYSTEM;
        else if (!strcmp(rs, "user"))
            ro = TERN_ROLE_USER;
        else if (!strcmp(rs, "assistant"))
            ro = TERN_ROLE_ASSISTANT;
        else
            return fail(e, pname,
                        "%s: got \"%.64s\", expected \"system\", \"user\" or \"assistant\"", pname,
                        rs);
        r->messages[i].role = ro;
        r->n_messages = i + 1; /* content of this one is freed even when parsing it fails */
        tern_code rc = parse_content(e, cJSON_GetObjectItemCaseSensitive(m, "content"), i,
                                     &r->messages[i].content);
        if (rc) return rc;
    }
    return TERN_OK;
}

static tern_code parse_stop(perr *e, const cJSON *j, tern_parsed_request *r)
{
    if (!j) return TERN_OK;
    const cJSON *one = cJSON_IsString(j) ? j : NULL;
    if (!one && !cJSON_IsArray(j))
        return fail(e, "stop", "stop: got %s, expected a string or an array of strings",
                    type_name(j));
    int n = one ? 1 : cJSON_GetArraySize(j);
    if (n > TERN_SERVER_MAX_STOP)
        return fail(e, "stop", "stop: got %d strings, expected at most %d", n,
                    TERN_SERVER_MAX_STOP);
    int i = 0;
    for (const cJSON *s = one ? one : j->child; s && i < n; s = one ? NULL : s->next, i++) {
        if (!cJSON_IsString(s))
            return fail(e, "stop", "stop[%d]: got %s, expected a string", i, type_name(s));
        size_t len = strlen(s->valuestring), at;
        if (has_nul(e, s->valuestring, &at))
            return fail(e, "stop",
                        "stop[%d]: got a NUL character (\\u0000), expected text without NUL", i);
        if (len > TERN_SERVER_MAX_STOP_LEN)
            return fail(e, "stop", "stop[%d]: got %zu bytes, expected at most %d", i, len,
                        TERN_SERVER_MAX_STOP_LEN);
        if (len == 0) continue; /* matches nothing */
        char *d = dup_str(s->valuestring);
        if (!d) return fail(e, "stop", "stop: out of memory");
        r->stop[r->n_stop++] = d;
    }
    return TERN_OK;
}

/* false, 0, "", [] and {} say "not used" as much as null does */
static bool is_unset(const cJSON *j)
{
    return !j || cJSON_IsFalse(j) || (cJSON_IsNumber(j) && j->valuedouble == 0) ||
           (cJSON_IsString(j) && !j->valuestring[0]) ||
           ((cJSON_IsArray(j) || cJSON_IsObject(j)) && !j->child);
}

/* Fields of the OpenAI API this server does not implement: refused with a 400 naming them, not
 * silently ignored (a client asking for JSON output or a tool call must not get plain text
 * that merely looks like an answer). Their "off" values are accepted, since many clients
 * send them by default. */
static tern_code refuse_unsupported(perr *e, const cJSON *root)
{
    static const char *const names[] = {"tools",         "tool_choice", "functions",
                                        "function_call", "suffix",      "best_of"};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        const char *n = names[k];
        const cJSON *j = field(root, n);
        if (is_unset(j)) continue;
        if (!strcmp(n, "best_of") && cJSON_IsNumber(j) && j->valuedouble == 1) continue;
        if ((!strcmp(n, "tool_choice") || !strcmp(n, "function_call")) && cJSON_IsString(j) &&
            !strcmp(j->valuestring, "none"))
            continue;
        return fail(e, n, "%s: got %s, expected it absent or null (not supported by this server)",
                    n, type_name(j));
    }
    return TERN_OK;
}

/* response_format: checked by compiling it (grammar.h), kept as compact JSON text for the
 * engine ({"type":"text"} and null mean none) */
static tern_code parse_response_format(perr *e, const cJSON *root, tern_parsed_request *r)
{
    const cJSON *j = field(root, "response_format");
    if (is_unset(j)) return TERN_OK;
    if (!cJSON_IsObject(j))
        return fail(e, "response_format", "response_format: got %s, expected an object",
                    type_name(j));
    char *t = cJSON_PrintUnformatted(j);
    if (!t) return fail(e, "response_format", "response_format: out of memory");
    tern_status st = {0};
    tern_grammar *g = NULL;
    if (tern_grammar_compile(&g, t, strlen(t), &st)) {
        free(t);
        return fail(e, "response_format", "%s", st.msg);
    }
    if (g)
        r->response_format = t;
    else
        free(t); /* text: no constraint */
    tern_grammar_free(g);
    return TERN_OK;
}

static tern_code parse_fields(perr *e, const cJSON *root, bool chat, tern_parsed_request *r)
{
    tern_code rc;
    bool given;
    double v;
    if (chat)
        rc = parse_messages(e, field(root, "messages"), r);
    else
        rc = parse_prompt(e, field(root, "prompt"), r);
    if (rc || (rc = parse_response_format(e, root, r))) return rc;

    const cJSON *model = field(root, "model");
    if (model) {
        if (!cJSON_IsString(model))
            return fail(e, "model", "model: got %s, expected a string", type_name(model));
        if (!(r->model = dup_str(model->valuestring))) return fail(e, "model", "out of memory");
    }
    const char *mt =
        chat && field(root, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
    if ((rc = get_int(e, root, mt, 0, 1 << 24, &given, &v))) return rc;
    if (given) r->max_tokens = (int32_t)v;
    if ((rc = get_number(e, root, "temperature", 0, 1e6, &given, &v))) return rc;
    if (given) r->sampling.temperature = (float)v;
    if ((rc = get_number(e, root, "top_p", 0, 1, &given, &v))) return rc;
    if (given) r->sampling.top_p = (float)v;
    if ((rc = get_number(e, root, "min_p", 0, 1, &given, &v))) return rc;
    if (given) r->sampling.min_p = (float)v;
    if ((rc = get_int(e, root, "top_k", 0, INT32_MAX, &given, &v))) return rc;
    if (given) r->sampling.top_k = (int32_t)v;
    if ((rc = get_number(e, root, "repeat_penalty", 0, 1e6, &given, &v))) return rc;
    if (given) r->sampling.repeat_penalty = (float)v;
    /* OpenAI's presence and frequency penalties, -2..2 */
    if ((rc = get_number(e, root, "presence_penalty", -2, 2, &given, &v))) return rc;
    if (given) r->sampling.presence_penalty = (float)v;
    if ((rc = get_number(e, root, "frequency_penalty", -2, 2, &given, &v))) return rc;
    if (given) r->sampling.frequency_penalty = (float)v;
    /* logit_bias: {"token id": bias in -100..100}, at most TERN_MAX_LOGIT_BIAS entries (ids
     * are range-checked against the vocabulary by the engine) */
    const cJSON *lb = field(root, "logit_bias");
    if (lb) {
        if (!cJSON_IsObject(lb))
            return fail(e, "logit_bias", "logit_bias: got %s, expected an object of token ids",
                        type_name(lb));
        int n = cJSON_GetArraySize(lb);
        if (n > TERN_MAX_LOGIT_BIAS)
            return fail(e, "logit_bias", "logit_bias: got %d entries, expected at most %d", n,
                        TERN_MAX_LOGIT_BIAS);
        if (n > 0 && !(r->logit_bias = calloc((size_t)n, sizeof *r->logit_bias)))
            return fail(e, "logit_bias", "out of memory");
        int k = 0;
        for (const cJSON *it = lb->child; it; it = it->next) {
            char *end = NULL;
            long id = it->string ? strtol(it->string, &end, 10) : -1;
            if (!it->string || !*it->string || *end || id < 0 || id > INT32_MAX)
                return fail(e, "logit_bias", "logit_bias: key '%.32s': expected a token id",
                            it->string ? it->string : "");
            if (!cJSON_IsNumber(it) || !(it->valuedouble >= -100 && it->valuedouble <= 100))
                return fail(e, "logit_bias",
                            "logit_bias: token %ld: got %s, expected a number "
                            "in -100..100",
                            id, type_name(it));
            r->logit_bias[k++] = (tern_logit_bias){(int32_t)id, (float)it->valuedouble};
        }
        r->sampling.logit_bias = r->logit_bias, r->sampling.n_logit_bias = k;
    }
    /* seeds above 2^53 lose their low bits in JSON's doubles; any integer is accepted */
    if ((rc = get_int(e, root, "seed", -9223372036854775808.0, 18446744073709551615.0, &given, &v)))
        return rc;
    if (given) {
        r->has_seed = true;
        r->sampling.seed = v < 0                         ? (uint64_t)(int64_t)v
                           : v >= 18446744073709551615.0 ? UINT64_MAX
                                                         : (uint64_t)v;
    }
    r->n = 1;
    if ((rc = get_int(e, root, "n", 1, TERN_SERVER_MAX_N, &given, &v))) return rc;
    if (given) r->n = (int32_t)v;
    if ((rc = get_bool(e, root, "stream", &r->stream))) return rc;
    const cJSON *so = field(root, "stream_options");
    if (so) {
        if (!cJSON_IsObject(so))
            return fail(e, "stream_options", "stream_options: got %s, expected an object",
                        type_name(so));
        const cJSON *iu = field(so, "include_usage");
        if (iu && !cJSON_IsBool(iu))
            return fail(e, "stream_options",
                        "stream_options.include_usage: got %s, expected "
                        "true or false",
                        type_name(iu));
        r->include_usage = cJSON_IsTrue(iu);
    }
    /* log-probabilities: completions take logprobs = N alternatives (0 = the chosen token's
     * only); chat takes logprobs true with top_logprobs = N */
    r->logprobs = -1;
    const cJSON *lp = field(root, "logprobs");
    if (!chat) {
        if (!cJSON_IsFalse(lp)) {
            if ((rc = get_int(e, root, "logprobs", 0, TERN_MAX_LOGPROBS, &given, &v))) return rc;
            if (given) r->logprobs = (int32_t)v;
        }
        if (!is_unset(field(root, "top_logprobs")))
            return fail(e, "top_logprobs",
                        "top_logprobs: got it with /v1/completions, expected logprobs N there");
    } else {
        if (lp && !cJSON_IsBool(lp))
            return fail(e, "logprobs", "logprobs: got %s, expected true or false", type_name(lp));
        if ((rc = get_int(e, root, "top_logprobs", 0, TERN_MAX_LOGPROBS, &given, &v))) return rc;
        if (given && !cJSON_IsTrue(lp) && v > 0)
            return fail(e, "top_logprobs", "top_logprobs: got %g, expected logprobs true with it",
                        v);
        if (cJSON_IsTrue(lp)) r->logprobs = given ? (int32_t)v : 0;
    }
    const cJSON *echo = field(root, "echo");
    if (echo && !cJSON_IsBool(echo))
        return fail(e, "echo", "echo: got %s, expected true or false", type_name(echo));
    if (chat && cJSON_IsTrue(echo))
        return fail(e, "echo",
                    "echo: got true with /v1/chat/completions, expected it only with "
                    "/v1/completions");
    r->echo = cJSON_IsTrue(echo);
    if (r->echo && r->logprobs >= 0)
        return fail(e, "echo",
                    "echo: got true with logprobs, expected one of them (the prompt's "
                    "log-probabilities are not reported)");
    if ((rc = parse_stop(e, field(root, "stop"), r))) return rc;
    if ((rc = refuse_unsupported(e, root))) return rc;
    tern_status sst = {0};
    if (tern_sampling_validate(&r->sampling, &sst)) {
        char p[32];
        size_t k = strcspn(sst.msg, ":");
        snprintf(p, sizeof p, "%.*s", (int)(k < sizeof p - 1 ? k : sizeof p - 1), sst.msg);
        return fail(e, p, "%s", sst.msg);
    }
    return TERN_OK;
}

tern_code tern_server_parse_request(const char *body, size_t len, bool chat,
                                    tern_parsed_request *out, char *err, size_t errcap, char *param,
                                    size_t paramcap)
{
    perr e = {err, errcap, param, paramcap, {0}};
    memset(out, 0, sizeof *out);
    out->chat = chat;
    out->max_tokens = -1;
    out->logprobs = -1;
    tern_sampling_default(&out->sampling);
    out->sampling.temperature = 1.0f; /* OpenAI's default; 0 is greedy */
    if (err && errcap) err[0] = '\0';
    if (param && paramcap) param[0] = '\0';
    if (!body || len == 0) return fail(&e, NULL, "body: got nothing, expected a JSON object");
    int depth = tern_json_depth(body, len, TERN_SERVER_MAX_DEPTH);
    if (depth > TERN_SERVER_MAX_DEPTH)
        return fail(&e, NULL, "body: got JSON nested deeper than %d levels, expected at most %d",
                    TERN_SERVER_MAX_DEPTH, TERN_SERVER_MAX_DEPTH);
    /* cJSON wants a terminated buffer; the copy also makes trailing-garbage checks exact */
    char *buf = malloc(len + 1);
    if (!buf) return fail(&e, NULL, "body: out of memory for %zu bytes", len);
    memcpy(buf, body, len);
    buf[len] = '\0';
    if (!hide_nuls(buf, len, &e)) {
        free(buf);
        return fail(&e, NULL,
                    "body: got \\u0000 together with every private-use character U+E000..U+F8FF, "
                    "expected fewer");
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(buf, len + 1, &end, 0);
    tern_code rc = TERN_OK;
    if (!root) {
        size_t at = end && end >= buf ? (size_t)(end - buf) : 0;
        rc = fail(&e, NULL, "body: got invalid JSON near byte %zu, expected a JSON object", at);
    } else {
        while (end && (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r')) end++;
        if (end != buf + len)
            rc = fail(&e, NULL,
                      "body: got extra text after the JSON value at byte %zu, expected "
                      "one JSON object",
                      (size_t)(end - buf));
        else if (!cJSON_IsObject(root))
            rc = fail(&e, NULL, "body: got %s, expected a JSON object", type_name(root));
        else
            rc = parse_fields(&e, root, chat, out);
    }
    cJSON_Delete(root);
    free(buf);
    if (rc) {
        tern_parsed_request_free(out);
        out->chat = chat;
        out->max_tokens = -1;
        out->logprobs = -1;
    }
    return rc;
}

void tern_parsed_request_free(tern_parsed_request *r)
{
    if (!r) return;
    free(r->response_format);
    free(r->prompt);
    free(r->prompt_ids);
    for (int32_t i = 0; i < r->n_messages; i++) free(r->messages[i].content);
    free(r->messages);
    for (int32_t i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->model);
    free(r->logit_bias);
    memset(r, 0, sizeof *r);
}

/* ------------------------------------------------------------------ stop strings */

void tern_stop_init(tern_stop_match *m, const char *const *stop, int32_t n_stop)
{
    m->stop = stop;
    m->n_stop = n_stop;
    m->max_len = 0;
    m->scanned = 0;
    for (int32_t i = 0; i < n_stop; i++) {
        size_t n = strlen(stop[i]);
        if (n > m->max_len) m->max_len = n;
    }
}

bool tern_stop_scan(tern_stop_match *m, const char *text, size_t len, size_t *visible)
{
    if (m->n_stop == 0 || m->max_len == 0) {
        *visible = len;
        return false;
    }
    /* a match that ends in the new text starts at most max_len - 1 bytes before it */
    size_t from = m->scanned + 1 > m->max_len ? m->scanned + 1 - m->max_len : 0;
    size_t best = SIZE_MAX;
    for (int32_t i = 0; i < m->n_stop; i++) {
        size_t n = strlen(m->stop[i]);
        if (n > len) continue;
        for (size_t p = from; p + n <= len && p < best; p++)
            if (text[p] == m->stop[i][0] && !memcmp(text + p, m->stop[i], n)) {
                best = p;
                break;
            }
    }
    m->scanned = len;
    if (best != SIZE_MAX) {
        *visible = best;
        return true;
    }
    /* hold back the longest suffix that is a proper prefix of some stop string */
    size_t hold = 0;
    for (int32_t i = 0; i < m->n_stop; i++) {
        size_t n = strlen(m->stop[i]);
        for (size_t k = (n - 1 < len ? n - 1 : len); k > hold; k--)
            if (!memcmp(text + len - k, m->stop[i], k)) {
                hold = k;
                break;
            }
    }
    *visible = len - hold;
    return false;
}
