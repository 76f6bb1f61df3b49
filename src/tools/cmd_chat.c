/* cmd_chat.c: `ternpipe chat`: an interactive terminal chat that keeps the conversation and
 * streams each reply. It talks to a running `ternpipe serve` (--url, or the default address
 * when a server answers there), or loads the model in this process with the pipeline engine
 * (-m FILE, or when no server answers; under mpirun the other ranks serve the layers).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ternpipe/server.h"
#include "ternpipe/tokenizer.h"
#include "tools/commands.h"
#include "tools/run.h"
#include "tools/serve.h"

#define DEFAULT_URL "http://127.0.0.1:8080"

typedef struct history {
    tern_chat_message *m;
    int32_t n, cap;
} history;

static int push(history *h, tern_chat_role role, const char *text)
{
    if (h->n == h->cap) {
        int32_t cap = h->cap ? 2 * h->cap : 16;
        tern_chat_message *m = realloc(h->m, (size_t)cap * sizeof *m);
        if (!m) return -1;
        h->m = m;
        h->cap = cap;
    }
    char *c = strdup(text);
    if (!c) return -1;
    h->m[h->n++] = (tern_chat_message){role, c};
    return 0;
}

static void pop(history *h)
{
    if (h->n > 0) free(h->m[--h->n].content);
}

/* keeps the system message (if any), drops the rest */
static void reset(history *h)
{
    while (h->n > 0 && !(h->n == 1 && h->m[0].role == TERN_ROLE_SYSTEM)) pop(h);
}

static void history_free(history *h)
{
    while (h->n) pop(h);
    free(h->m);
}

/* the oldest user/assistant turn after the system message */
static void drop_oldest(history *h)
{
    int32_t i = h->n > 0 && h->m[0].role == TERN_ROLE_SYSTEM ? 1 : 0;
    if (i >= h->n) return;
    free(h->m[i].content);
    memmove(h->m + i, h->m + i + 1, (size_t)(h->n - i - 1) * sizeof *h->m);
    h->n--;
}

static void print_text(void *user, const char *s, size_t n)
{
    (void)user;
    fwrite(s, 1, n, stdout);
    fflush(stdout);
}

/* one line from stdin without its newline; NULL at EOF */
static char *read_input(bool tty)
{
    if (tty) {
        fputs("> ", stdout);
        fflush(stdout);
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, stdin);
    if (n < 0) {
        free(line);
        return NULL;
    }
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
    return line;
}

/* 1: quit, 0: handled, -1: not a command */
static int command(const char *line, history *h)
{
    if (!strcmp(line, "/quit") || !strcmp(line, "/exit") || !strcmp(line, "/q")) return 1;
    if (!strcmp(line, "/reset")) {
        reset(h);
        printf("(conversation cleared)\n");
        return 0;
    }
    if (!strcmp(line, "/help")) {
        printf("/reset clears the conversation, /quit (or end of input) leaves\n");
        return 0;
    }
    return -1;
}

/* Reads lines until one is a user turn (appended to h; commands handled here). 1: a turn,
 * 0: quit or end of input, -1: out of memory (reported). */
static int next_turn(history *h, bool tty)
{
    for (;;) {
        char *line = read_input(tty);
        if (!line) return 0;
        int c = command(line, h);
        if (c >= 0 || !*line) {
            free(line);
            if (c == 1) return 0;
            continue;
        }
        int pr = push(h, TERN_ROLE_USER, line);
        free(line);
        if (pr) {
            fprintf(stderr, "ternpipe chat: out of memory\n");
            return -1;
        }
        return 1;
    }
}

/* ------------------------------------------------------------------ against a server */

static int chat_remote(const tern_client_opts *co, history *h, bool tty)
{
    for (;;) {
        int turn = next_turn(h, tty);
        if (turn <= 0) return turn < 0 ? 1 : 0;
        char *reply = NULL, finish[32];
        tern_status st = {0};
        if (tern_client_chat(co, h->m, h->n, print_text, NULL, &reply, finish, sizeof finish,
                             &st)) {
            printf("\n");
            fprintf(stderr, "ternpipe chat: %s\n", st.msg);
            pop(h); /* the turn did not happen */
            continue;
        }
        printf("\n");
        if (!strcmp(finish, "length")) fprintf(stderr, "(reply cut at max tokens)\n");
        fflush(stdout);
        int pr = push(h, TERN_ROLE_ASSISTANT, reply ? reply : "");
        free(reply);
        if (pr) return 1;
    }
}

/* ------------------------------------------------------------------ in this process */

typedef struct local_job {
    const tern_tokenizer *tok;
    tern_detok dt;
    struct {
        char *s;
        size_t len, cap;
    } reply;
    tern_finish why;
    bool done;
    int32_t n_tokens;
} local_job;

static void lj_add(local_job *j, const char *s, size_t n)
{
    if (j->reply.len + n + 1 > j->reply.cap) {
        size_t cap = j->reply.cap ? j->reply.cap * 2 : 1024;
        while (cap < j->reply.len + n + 1) cap *= 2;
        char *p = realloc(j->reply.s, cap);
        if (!p) return;
        j->reply.s = p;
        j->reply.cap = cap;
    }
    memcpy(j->reply.s + j->reply.len, s, n);
    j->reply.len += n;
    j->reply.s[j->reply.len] = '\0';
    print_text(NULL, s, n);
}

static void lj_token(void *user, int32_t tok)
{
    local_job *j = user;
    j->n_tokens++;
    char buf[8192];
    size_t w = tern_detok_push(j->tok, &j->dt, tok, buf, sizeof buf);
    lj_add(j, buf, w);
}

static void lj_done(void *user, tern_finish why, const char *err)
{
    local_job *j = user;
    j->done = true;
    j->why = why;
    if (err) fprintf(stderr, "ternpipe chat: %s\n", err);
}

static int chat_local(tern_engine *e, const tern_tokenizer *tok, history *h, int32_t max_tokens,
                      const tern_sampling *sp, bool tty)
{
    int32_t n_ctx = tern_engine_n_ctx(e);
    for (;;) {
        int turn = next_turn(h, tty);
        if (turn <= 0) return turn < 0 ? 1 : 0;
        tern_status st = {0};
        tern_tokens ids = {0};
        /* an old conversation loses its oldest turns so the prompt and the reply fit */
        for (;;) {
            tern_tokens_free(&ids);
            memset(&ids, 0, sizeof ids);
            tern_chat_msg *msgs = calloc((size_t)h->n, sizeof *msgs);
            static const char *const roles[TERN_ROLE_COUNT] = {"system", "user", "assistant"};
            if (!msgs) return 1;
            for (int32_t i = 0; i < h->n; i++)
                msgs[i] = (tern_chat_msg){roles[h->m[i].role], h->m[i].content};
            tern_code rc = tern_chat_encode(tok, msgs, (size_t)h->n, true, &ids, &st);
            free(msgs);
            if (rc) break;
            int32_t sys = h->n > 0 && h->m[0].role == TERN_ROLE_SYSTEM;
            if ((int32_t)ids.n + (max_tokens < n_ctx / 2 ? max_tokens : n_ctx / 2) <= n_ctx ||
                h->n - sys <= 1)
                break;
            drop_oldest(h);
        }
        if (st.code || (int32_t)ids.n >= n_ctx) {
            fprintf(stderr, "ternpipe chat: %s\n",
                    st.code ? st.msg : "the message alone is longer than the context");
            tern_tokens_free(&ids);
            pop(h);
            continue;
        }
        int32_t n_new = n_ctx - (int32_t)ids.n < max_tokens ? n_ctx - (int32_t)ids.n : max_tokens;
        local_job j = {.tok = tok};
        double t0 = tern_now();
        tern_request rq = {.prompt = ids.ids,
                           .n_prompt = (int32_t)ids.n,
                           .sampling = *sp,
                           .max_new = n_new,
                           .on_token = lj_token,
                           .on_done = lj_done,
                           .user = &j};
        rq.stop[rq.n_stop++] = tern_tokenizer_eos(tok);
        if (tern_tokenizer_eot(tok) >= 0) rq.stop[rq.n_stop++] = tern_tokenizer_eot(tok);
        rq.sampling.seed += (uint64_t)h->n; /* a different draw each turn, still reproducible */
        tern_code rc = tern_engine_submit(e, &rq, NULL, &st);
        if (!rc) rc = tern_engine_run(e, &st);
        tern_tokens_free(&ids);
        if (rc) {
            fprintf(stderr, "ternpipe chat: %s\n", st.msg);
            free(j.reply.s);
            pop(h);
            continue;
        }
        char buf[64];
        size_t w = tern_detok_flush(&j.dt, buf, sizeof buf);
        lj_add(&j, buf, w);
        printf("\n");
        if (j.why == TERN_FINISH_LENGTH) fprintf(stderr, "(reply cut at max tokens)\n");
        if (tty) {
            double dt = tern_now() - t0;
            fprintf(stderr, "(%d tokens, %.1f tok/s)\n", j.n_tokens,
                    dt > 0 ? j.n_tokens / dt : 0.0);
        }
        fflush(stdout);
        int pr = push(h, TERN_ROLE_ASSISTANT, j.reply.s ? j.reply.s : "");
        free(j.reply.s);
        if (pr) return 1;
    }
}

static void usage(void)
{
    fprintf(stderr,
            "usage: ternpipe chat [--url http://HOST:PORT] [--api-key KEY] [--system TEXT]\n"
            "                     [--max-tokens N] [--temp T] [--seed S] %s [-m FILE %s]\n"
            "  talks to the server at --url (default %s when one answers there);\n"
            "  with -m, or when no server answers, loads the model in this process.\n"
            "  /reset clears the conversation; /quit or end of input leaves; on a terminal each\n"
            "  reply ends with its token count and tok/s (in-process).\n",
            tern_sampling_opts_usage(), "(engine options)", DEFAULT_URL);
}

int tern_cmd_chat(int argc, char **argv)
{
    tern_engine_opts eo = {.max_seqs = 1};
    tern_client_opts co = {.url = NULL, .temperature = -1.0f};
    const char *system = NULL;
    int32_t max_tokens = 256;
    tern_sampling sp;
    tern_sampling_default(&sp);
    sp.temperature = 0.7f;
    sp.seed = 1;
    bool temp_given = false;
    co.api_key = getenv("TERNPIPE_API_KEY");
    for (int i = 1; i < argc; i++) {
        int r = tern_parse_engine_opt(argc, argv, &i, &eo);
        /* --temp and --seed below also tell the client mode they were given */
        if (r == 0 && strcmp(argv[i], "--temp") && strcmp(argv[i], "--seed"))
            r = tern_parse_sampling_opt(argc, argv, &i, &sp);
        if (r < 0) return 2;
        if (r) continue;
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage();
            return 0;
        }
        if (!v) {
            usage();
            return 2;
        }
        char *end = NULL;
        if (!strcmp(a, "--url")) {
            co.url = v;
        } else if (!strcmp(a, "--api-key")) {
            co.api_key = v;
        } else if (!strcmp(a, "--system")) {
            system = v;
        } else if (!strcmp(a, "--max-tokens")) {
            long x = strtol(v, &end, 10);
            if (*end || x < 1 || x > (1 << 24)) {
                fprintf(stderr, "ternpipe chat: --max-tokens: got '%s', expected 1..%d\n", v,
                        1 << 24);
                return 2;
            }
            max_tokens = (int32_t)x;
        } else if (!strcmp(a, "--temp")) {
            sp.temperature = strtof(v, &end);
            temp_given = true;
            if (*end || !(sp.temperature >= 0)) {
                fprintf(stderr, "ternpipe chat: --temp: got '%s', expected a number >= 0\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--seed")) {
            sp.seed = strtoull(v, &end, 10);
            co.has_seed = true;
            if (*end) {
                fprintf(stderr, "ternpipe chat: --seed: got '%s', expected an integer\n", v);
                return 2;
            }
        } else {
            usage();
            return 2;
        }
        i++;
    }
    bool tty = isatty(0) && isatty(1);
    history h = {0};
    if (system && push(&h, TERN_ROLE_SYSTEM, system)) return 1;
    int rc;
    bool remote = co.url != NULL;
    bool launched;
    tern_launcher_rank(&launched);
    if (!remote && !eo.model_path && !launched) {
        /* no choice made: use a server on the default address if one is up (not under mpirun,
         * where every rank must make the same choice: they all load the model) */
        tern_client_opts probe = co;
        probe.url = DEFAULT_URL;
        probe.timeout_s = 2;
        tern_status st = {0};
        if (tern_client_health(&probe, &st) == TERN_OK) {
            co.url = DEFAULT_URL;
            remote = true;
        } else {
            fprintf(stderr, "ternpipe chat: no server at %s (%s); loading the model here\n",
                    DEFAULT_URL, st.msg);
        }
    }
    if (remote) {
        co.max_tokens = max_tokens;
        co.temperature = temp_given ? sp.temperature : -1.0f;
        co.seed = sp.seed;
        co.sampling = &sp;
        tern_status st = {0};
        if (tern_client_health(&co, &st)) {
            fprintf(stderr, "ternpipe chat: %s\n", st.msg);
            history_free(&h);
            return 1;
        }
        if (tty) fprintf(stderr, "connected to %s; /quit to leave\n", co.url);
        rc = chat_remote(&co, &h, tty);
        history_free(&h);
        return rc;
    }
    tern_engine *e = NULL;
    int rank = 0;
    if (tern_run_open(&argc, &argv, &eo, &e, &rank)) {
        history_free(&h);
        return 1;
    }
    rc = 0;
    if (rank == 0) {
        tern_tokenizer *tok = NULL;
        tern_status st = {0};
        if (tern_tokenizer_load(&tok, tern_engine_gguf(e), &st)) {
            fprintf(stderr, "ternpipe chat: %s\n", st.msg);
            rc = 1;
        } else {
            if (tty) fprintf(stderr, "model loaded; /quit to leave\n");
            rc = chat_local(e, tok, &h, max_tokens, &sp, tty);
        }
        tern_tokenizer_free(tok);
    }
    history_free(&h);
    tern_run_close(e);
    return rc;
}
