/* cmd_logits.c: `ternpipe logits`: fp32 logits of every position of one or more id sequences
 * run concurrently through the pipeline engine (the same code with one rank or under mpirun),
 * optionally with continuations, greedy or sampled (sequence k uses seed S + k), and their
 * log-probabilities. The contract used by tests: one --ids and --out give [n_ids][n_vocab]
 * little-endian fp32; --out-ids one line of ids per sequence; --out-logprobs one line per
 * sequence of "id:logprob" per token (logprobs as exact hex floats), each followed by its top
 * alternatives "|id:logprob". Without --out no logits are kept (the sampler's split path). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tools/commands.h"
#include "tools/run.h"

/* a growable id list */
typedef struct idvec {
    int32_t *ids;
    size_t n, cap;
} idvec;

static int idvec_push(idvec *v, int32_t id)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        int32_t *p = realloc(v->ids, cap * sizeof *p);
        if (!p) return 1;
        v->ids = p;
        v->cap = cap;
    }
    v->ids[v->n++] = id;
    return 0;
}

/* parses a whitespace-separated id list; one-line error on bad input */
static int parse_ids(const char *s, idvec *out)
{
    while (*s) {
        while (*s == ' ' || *s == '\t' || *s == '\n' || *s == ',') s++;
        if (!*s) break;
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (end == s || errno || v < 0 || v > INT32_MAX ||
            (*end && *end != ' ' && *end != '\t' && *end != '\n' && *end != ',')) {
            fprintf(stderr, "ternpipe: --ids: got '%.20s', expected non-negative integers\n", s);
            return 1;
        }
        if (idvec_push(out, (int32_t)v)) {
            fprintf(stderr, "ternpipe: out of memory\n");
            return 1;
        }
        s = end;
    }
    return 0;
}

/* one sequence of the logits command: its rows are collected in memory, in position order */
typedef struct lseq {
    idvec ids;
    int32_t n_gen;
    float *rows; /* [n_prompt + n_gen][n_vocab] */
    int32_t n_rows;
    int32_t n_vocab;
    idvec out;
    char *lp; /* --out-logprobs text */
    size_t lp_n, lp_cap;
    bool done;
    tern_finish why;
} lseq;

static void lseq_logits(void *user, int32_t pos, const float *logits)
{
    lseq *q = user;
    if (pos != q->n_rows) return; /* positions arrive in order; anything else is a bug */
    memcpy(q->rows + (size_t)pos * (size_t)q->n_vocab, logits, (size_t)q->n_vocab * sizeof(float));
    q->n_rows++;
}
static void lp_printf(lseq *q, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void lp_printf(lseq *q, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n <= 0) return;
    if (q->lp_n + (size_t)n + 1 > q->lp_cap) {
        size_t cap = (q->lp_cap + (size_t)n + 1) * 2;
        char *p = realloc(q->lp, cap);
        if (!p) return;
        q->lp = p, q->lp_cap = cap;
    }
    memcpy(q->lp + q->lp_n, tmp, (size_t)n + 1);
    q->lp_n += (size_t)n;
}
static void lseq_logprobs(void *user, const tern_pick *pk)
{
    lseq *q = user;
    lp_printf(q, "%s%d:%a", q->lp_n ? " " : "", pk->token, (double)pk->logprob);
    for (int32_t j = 0; j < pk->n_top; j++)
        lp_printf(q, "|%d:%a", pk->top[j].id, (double)pk->top[j].logprob);
}
static void lseq_token(void *user, int32_t tok)
{
    idvec_push(&((lseq *)user)->out, tok);
}
static void lseq_done(void *user, tern_finish why, const char *err)
{
    lseq *q = user;
    q->done = true;
    q->why = why;
    if (err) fprintf(stderr, "ternpipe: %s\n", err);
}

int tern_cmd_logits(int argc, char **argv)
{
    const char *out_path = NULL, *ids_path = NULL, *n_list = NULL, *lp_path = NULL;
    int32_t resumed = 0; /* the last R ids of every sequence were generated before (a replay) */
    enum { MAXQ = 8192 };
    tern_sampling sp;
    tern_sampling_default(&sp);
    const char *id_args[MAXQ];
    int n_seq = 0;
    tern_engine_opts eo = {0};
    for (int i = 1; i < argc; i++) {
        int r = tern_parse_engine_opt(argc, argv, &i, &eo);
        if (r < 0) return 2;
        if (r) continue;
        if (!strcmp(argv[i], "--ids") && i + 1 < argc && n_seq < MAXQ)
            id_args[n_seq++] = argv[++i];
        else if (!strcmp(argv[i], "--out") && i + 1 < argc)
            out_path = argv[++i];
        else if (!strcmp(argv[i], "--out-ids") && i + 1 < argc)
            ids_path = argv[++i];
        else if (!strcmp(argv[i], "--out-logprobs") && i + 1 < argc)
            lp_path = argv[++i];
        else if (!strcmp(argv[i], "--resumed") && i + 1 < argc)
            resumed = atoi(argv[++i]);
        else if ((r = tern_parse_sampling_opt(argc, argv, &i, &sp)) != 0) {
            if (r < 0) return 2;
        } else if (!strcmp(argv[i], "-n") && i + 1 < argc)
            n_list = argv[++i];
        else {
            fprintf(stderr,
                    "usage: ternpipe logits --ids \"ID ID ...\" [--ids ...] [--out OUT] "
                    "[-n N|N1,N2,...] [--out-ids FILE] [--out-logprobs FILE] [--resumed R] %s %s\n",
                    tern_sampling_opts_usage(), tern_engine_opts_usage());
            return 2;
        }
    }
    if (!n_seq || (!out_path && !ids_path && !lp_path)) {
        fprintf(stderr, "ternpipe logits: --ids and one of --out, --out-ids, --out-logprobs are "
                        "required\n");
        return 2;
    }
    lseq *qs = calloc((size_t)n_seq, sizeof *qs);
    int rc = 1;
    for (int k = 0; k < n_seq; k++) {
        if (parse_ids(id_args[k], &qs[k].ids)) goto free_out;
        if (qs[k].ids.n == 0) {
            fprintf(stderr, "ternpipe: --ids: got 0 ids, expected at least 1\n");
            goto free_out;
        }
    }
    /* -n: greedy tokens to generate, one number for all or one per sequence */
    for (int k = 0; k < n_seq; k++) {
        const char *p = n_list ? n_list : "0";
        for (int skip = 0; skip < k && strchr(p, ','); skip++) p = strchr(p, ',') + 1;
        qs[k].n_gen = atoi(p);
        if (qs[k].n_gen < 0) qs[k].n_gen = 0;
    }
    if (eo.max_seqs < n_seq) eo.max_seqs = n_seq;
    tern_engine *e;
    int rank;
    if (tern_run_open(&argc, &argv, &eo, &e, &rank)) goto free_out;
    if (rank == 0) {
        tern_status st = {0};
        int32_t V = tern_engine_hparams(e)->n_vocab;
        bool ok = true;
        for (int k = 0; k < n_seq && ok; k++) {
            lseq *q = &qs[k];
            q->n_vocab = V;
            if (out_path)
                q->rows = malloc(((size_t)q->ids.n + (size_t)q->n_gen) * (size_t)V * sizeof(float));
            tern_request rq = {.prompt = q->ids.ids,
                               .n_prompt = (int32_t)q->ids.n,
                               .sampling = sp,
                               .max_new = q->n_gen,
                               .all_logits = out_path != NULL,
                               .on_logits = lseq_logits,
                               .on_token = lseq_token,
                               .on_logprobs = lseq_logprobs,
                               .on_done = lseq_done,
                               .user = q};
            rq.sampling.seed = sp.seed + (uint64_t)k;
            rq.resumed = resumed;
            if ((out_path && !q->rows) || tern_engine_submit(e, &rq, NULL, &st)) {
                fprintf(stderr, "ternpipe: --ids: %s\n",
                        !out_path || q->rows ? st.msg : "out of memory");
                ok = false;
            }
        }
        if (ok && tern_engine_run(e, &st)) {
            fprintf(stderr, "ternpipe: %s\n", st.msg);
            ok = false;
        }
        FILE *out = ok && out_path ? fopen(out_path, "wb") : NULL;
        if (ok && out_path && !out) {
            fprintf(stderr, "ternpipe: %s: %s\n", out_path, strerror(errno));
            ok = false;
        }
        for (int k = 0; out && k < n_seq; k++)
            if (fwrite(qs[k].rows, sizeof(float) * (size_t)V, (size_t)qs[k].n_rows, out) !=
                (size_t)qs[k].n_rows)
                ok = false;
        if (out && fclose(out) != 0) ok = false;
        if (ok && lp_path) {
            FILE *f = fopen(lp_path, "w");
            for (int k = 0; f && k < n_seq; k++) fprintf(f, "%s\n", qs[k].lp ? qs[k].lp : "");
            if (!f || fclose(f) != 0) {
                fprintf(stderr, "ternpipe: %s: cannot write\n", lp_path);
                ok = false;
            }
        }
        if (ok && ids_path) {
            FILE *f = fopen(ids_path, "w");
            for (int k = 0; f && k < n_seq; k++) {
                for (size_t i = 0; i < qs[k].out.n; i++)
                    fprintf(f, "%s%d", i ? " " : "", qs[k].out.ids[i]);
                fprintf(f, "\n");
            }
            if (!f || fclose(f) != 0) {
                fprintf(stderr, "ternpipe: %s: cannot write\n", ids_path);
                ok = false;
            }
        }
        rc = ok ? 0 : 1;
    } else {
        rc = 0;
    }
    tern_run_close(e);
free_out:
    for (int k = 0; k < n_seq; k++) {
        free(qs[k].ids.ids);
        free(qs[k].out.ids);
        free(qs[k].rows);
        free(qs[k].lp);
    }
    free(qs);
    return rc;
}
