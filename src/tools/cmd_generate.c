/* cmd_generate.c: `ternpipe generate`: streamed sampling from a prompt through the pipeline
 * engine (the same code with one rank or under mpirun). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ternpipe/tokenizer.h"
#include "tools/commands.h"
#include "tools/run.h"

typedef struct job {
    const tern_tokenizer *tok;
    tern_detok dt;
    char *text;
    size_t cap;
    int32_t n_gen;
    double t_first;
    bool done;
    tern_finish why;
} job;

static void on_token(void *user, int32_t tok)
{
    job *j = user;
    if (j->n_gen++ == 0) j->t_first = tern_now();
    size_t w = tern_detok_push(j->tok, &j->dt, tok, j->text, j->cap);
    fwrite(j->text, 1, w, stdout);
    fflush(stdout);
}

static void on_done(void *user, tern_finish why, const char *err)
{
    job *j = user;
    j->done = true;
    j->why = why;
    if (err) fprintf(stderr, "ternpipe: %s\n", err);
}

int tern_cmd_generate(int argc, char **argv)
{
    const char *prompt = NULL;
    int32_t n_predict = 128;
    bool chat = false, ignore_eos = false;
    tern_sampling sp;
    tern_sampling_default(&sp);
    tern_engine_opts eo = {.max_seqs = 1};
    for (int i = 1; i < argc; i++) {
        int r = tern_parse_engine_opt(argc, argv, &i, &eo);
        if (r == 0) r = tern_parse_sampling_opt(argc, argv, &i, &sp);
        if (r < 0) return 2;
        if (r) continue;
        const char *a = argv[i];
        bool has = i + 1 < argc;
        if (!strcmp(a, "-p") && has)
            prompt = argv[++i];
        else if (!strcmp(a, "-n") && has)
            n_predict = atoi(argv[++i]);
        else if (!strcmp(a, "--chat"))
            chat = true;
        else if (!strcmp(a, "--ignore-eos"))
            ignore_eos = true;
        else {
            fprintf(stderr,
                    "usage: ternpipe generate -p TEXT [-n N] [--chat] [--ignore-eos] %s %s\n",
                    tern_sampling_opts_usage(), tern_engine_opts_usage());
            return 2;
        }
    }
    if (!prompt) {
        fprintf(stderr, "ternpipe generate: -p TEXT is required\n");
        return 2;
    }
    tern_status st = {0};
    if (n_predict < 0 || tern_sampling_validate(&sp, &st)) {
        fprintf(stderr, "ternpipe: %s\n", n_predict < 0 ? "-n: expected >= 0" : st.msg);
        return 2;
    }
    tern_engine *e;
    int rank;
    if (tern_run_open(&argc, &argv, &eo, &e, &rank)) return 1;
    int rc = 0;
    if (rank == 0) {
        rc = 1;
        tern_tokens ids = {0};
        job j = {0};
        tern_tokenizer *tok = NULL;
        if (tern_tokenizer_load(&tok, tern_engine_gguf(e), &st)) goto fail;
        j.tok = tok;
        if (chat) {
            tern_chat_msg msg = {"user", prompt};
            if (tern_chat_encode(j.tok, &msg, 1, true, &ids, &st)) goto fail;
        } else if (tern_tokenizer_encode(j.tok, prompt, strlen(prompt),
                                         tern_tokenizer_add_bos(j.tok) ? TERN_TOK_ADD_BOS : 0, &ids,
                                         &st))
            goto fail;
        int32_t n_ctx = tern_engine_n_ctx(e);
        if ((int32_t)ids.n >= n_ctx) {
            tern_status_set(&st, TERN_ERANGE,
                            "prompt: got %zu tokens, expected fewer than the context %d", ids.n,
                            n_ctx);
            goto fail;
        }
        if (n_predict > n_ctx - (int32_t)ids.n) n_predict = n_ctx - (int32_t)ids.n;
        /* the longest token text bounds what one push writes */
        j.cap = 4096;
        j.text = malloc(j.cap);
        if (!j.text) {
            tern_status_set(&st, TERN_ENOMEM, "out of memory");
            goto fail;
        }
        tern_request rq = {.prompt = ids.ids,
                           .n_prompt = (int32_t)ids.n,
                           .sampling = sp,
                           .max_new = n_predict,
                           .on_token = on_token,
                           .on_done = on_done,
                           .user = &j};
        if (!ignore_eos) {
            rq.stop[rq.n_stop++] = tern_tokenizer_eos(tok);
            if (tern_tokenizer_eot(tok) >= 0) rq.stop[rq.n_stop++] = tern_tokenizer_eot(tok);
        }
        if (!chat) { /* the text continues the prompt: show it first, as other engines do */
            fputs(prompt, stdout);
            fflush(stdout);
        }
        double t0 = tern_now();
        if (tern_engine_submit(e, &rq, NULL, &st) || tern_engine_run(e, &st)) goto fail;
        double t1 = tern_now();
        size_t w = tern_detok_flush(&j.dt, j.text, j.cap);
        fwrite(j.text, 1, w, stdout);
        printf("\n");
        fflush(stdout);
        double prompt_s = (j.n_gen ? j.t_first : t1) - t0;
        fprintf(stderr, "prompt: %zu tokens, %.1f tok/s; decode: %d tokens, %.1f tok/s\n", ids.n,
                (double)ids.n / prompt_s, j.n_gen,
                j.n_gen > 1 ? (double)(j.n_gen - 1) / (t1 - j.t_first) : 0.0);
        rc = 0;
        goto out;
    fail:
        fprintf(stderr, "ternpipe: %s\n", st.msg);
    out:
        free(j.text);
        tern_tokens_free(&ids);
        tern_tokenizer_free(tok);
    }
    tern_run_close(e);
    return rc;
}
