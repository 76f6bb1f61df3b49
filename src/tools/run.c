/* run.c: see run.h. */
#include "tools/run.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tools/commands.h"

double tern_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

const char *tern_engine_opts_usage(void)
{
    return "[-m FILE] [--threads N] [--head-type f16|q8_0] [--batch TOKENS] [--max-seqs N] "
           "[--ctx N] [--kv-mem MB] [--kv-type f16|f32|q8] [--split even|auto|L1,L2,...] "
           "[--inflight N] "
           "[--step-timeout SECONDS] [--spec DRAFTS] [--prefix-cache on|off] [--verbose]";
}

static int parse_int(const char *name, const char *v, int lo, int hi, int32_t *out)
{
    char *end;
    long x = strtol(v, &end, 10);
    if (end == v || *end || x < lo || x > hi) {
        fprintf(stderr, "ternpipe: %s: got '%s', expected an integer %d..%d\n", name, v, lo, hi);
        return -1;
    }
    *out = (int32_t)x;
    return 1;
}

int tern_parse_engine_opt(int argc, char **argv, int *i, tern_engine_opts *o)
{
    const char *a = argv[*i];
    bool has = *i + 1 < argc;
    if (!strcmp(a, "--verbose")) {
        o->verbose = true;
        return 1;
    }
    if (!has) return 0;
    const char *v = argv[*i + 1];
    int r = 0;
    int32_t tmp = 0;
    if (!strcmp(a, "-m"))
        o->model_path = v, r = 1;
    else if (!strcmp(a, "--threads"))
        r = parse_int(a, v, 0, 1024, &tmp), o->n_threads = tmp;
    else if (!strcmp(a, "--batch"))
        r = parse_int(a, v, 1, 65536, &o->batch_tokens);
    else if (!strcmp(a, "--max-seqs"))
        r = parse_int(a, v, 1, 1 << 30, &o->max_seqs); /* the engine names its limit */
    else if (!strcmp(a, "--ctx"))
        r = parse_int(a, v, 1, 1 << 20, &o->n_ctx);
    else if (!strcmp(a, "--kv-mem"))
        r = parse_int(a, v, 1, 1 << 24, &o->kv_mem_mb);
    else if (!strcmp(a, "--spec")) {
        r = parse_int(a, v, 0, 64, &tmp); /* 0 = off; the engine clamps to its most */
        o->spec_drafts = tmp == 0 ? -1 : tmp;
    } else if (!strcmp(a, "--inflight"))
        r = parse_int(a, v, 1, 64, &o->inflight);
    else if (!strcmp(a, "--split"))
        o->split = v, r = 1;
    else if (!strcmp(a, "--step-timeout")) {
        /* the ceiling of rank 0's step deadline (engine.h) */
        char *end;
        double x = strtod(v, &end);
        if (end == v || *end || !(x > 0 && x <= 86400)) {
            fprintf(stderr, "ternpipe: --step-timeout: got '%s', expected seconds in (0, 86400]\n",
                    v);
            r = -1;
        } else {
            o->step_timeout_s = x, r = 1;
        }
    } else if (!strcmp(a, "--prefix-cache")) {
        if (strcmp(v, "on") && strcmp(v, "off")) {
            fprintf(stderr, "ternpipe: --prefix-cache: got '%s', expected on or off\n", v);
            r = -1;
        } else {
            o->prefix_cache = strcmp(v, "on") ? -1 : 0, r = 1;
        }
    } else if (!strcmp(a, "--kv-type")) {
        tern_kv_type t = tern_kv_type_parse(v);
        if (t == TERN_KV_TYPE_COUNT) {
            fprintf(stderr, "ternpipe: --kv-type: got '%s', expected f16, f32 or q8\n", v);
            r = -1;
        } else {
            o->kv_type = t, r = 1;
        }
    } else if (!strcmp(a, "--head-type")) {
        if (!strcmp(v, "f16"))
            o->head_type = TERN_HEAD_F16, r = 1;
        else if (!strcmp(v, "q8_0"))
            o->head_type = TERN_HEAD_Q8_0, r = 1;
        else {
            fprintf(stderr, "ternpipe: --head-type: got '%s', expected f16 or q8_0\n", v);
            r = -1;
        }
    }
    if (r == 1) (*i)++;
    return r;
}

const char *tern_sampling_opts_usage(void)
{
    return "[--temp T] [--top-k K] [--top-p P] [--min-p P] [--repeat-penalty R] "
           "[--repeat-last-n N] [--presence-penalty P] [--frequency-penalty F] "
           "[--logit-bias ID:BIAS,...] [--seed S] [--logprobs N]";
}

static int parse_float(const char *name, const char *v, float *out)
{
    char *end;
    float x = strtof(v, &end);
    if (end == v || *end) {
        fprintf(stderr, "ternpipe: %s: got '%s', expected a number\n", name, v);
        return -1;
    }
    *out = x;
    return 1;
}

int tern_parse_sampling_opt(int argc, char **argv, int *i, tern_sampling *sp)
{
    if (*i + 1 >= argc) return 0;
    const char *a = argv[*i], *v = argv[*i + 1];
    int r = 0;
    if (!strcmp(a, "--temp"))
        r = parse_float(a, v, &sp->temperature);
    else if (!strcmp(a, "--top-k"))
        r = parse_int(a, v, 0, 1 << 30, &sp->top_k);
    else if (!strcmp(a, "--top-p"))
        r = parse_float(a, v, &sp->top_p);
    else if (!strcmp(a, "--min-p"))
        r = parse_float(a, v, &sp->min_p);
    else if (!strcmp(a, "--repeat-penalty"))
        r = parse_float(a, v, &sp->repeat_penalty);
    else if (!strcmp(a, "--repeat-last-n"))
        r = parse_int(a, v, -1, 1 << 30, &sp->repeat_last_n);
    else if (!strcmp(a, "--logprobs"))
        r = parse_int(a, v, 0, 1 << 30, &sp->n_logprobs);
    else if (!strcmp(a, "--presence-penalty"))
        r = parse_float(a, v, &sp->presence_penalty);
    else if (!strcmp(a, "--frequency-penalty"))
        r = parse_float(a, v, &sp->frequency_penalty);
    else if (!strcmp(a, "--logit-bias")) {
        /* one list per process: the sampling struct points at it */
        static tern_logit_bias bias[TERN_MAX_LOGIT_BIAS];
        int32_t n = 0;
        const char *q = v;
        while (*q) {
            char *e;
            long id = strtol(q, &e, 10);
            if (e == q || *e != ':' || id < 0 || id > INT32_MAX || n >= TERN_MAX_LOGIT_BIAS) {
                fprintf(stderr,
                        "ternpipe: --logit-bias: got '%s', expected ID:BIAS,... (at most %d)\n", v,
                        TERN_MAX_LOGIT_BIAS);
                return -1;
            }
            q = e + 1;
            float b = strtof(q, &e);
            if (e == q || (*e && *e != ',')) {
                fprintf(stderr, "ternpipe: --logit-bias: got '%s', expected ID:BIAS,...\n", v);
                return -1;
            }
            bias[n++] = (tern_logit_bias){(int32_t)id, b};
            q = *e == ',' ? e + 1 : e;
        }
        sp->logit_bias = bias, sp->n_logit_bias = n;
        r = 1;
    } else if (!strcmp(a, "--seed")) {
        char *end;
        unsigned long long x = strtoull(v, &end, 10);
        if (end == v || *end || *v == '-') {
            fprintf(stderr, "ternpipe: --seed: got '%s', expected a non-negative integer\n", v);
            return -1;
        }
        sp->seed = x;
        r = 1;
    }
    if (r == 1) (*i)++;
    return r;
}

void tern_progress(tern_progress_line *p, const char *what, int64_t done, int64_t total)
{
    /* a terminal only, and only for runs that take over a second: nothing for pipes and logs */
    double t = tern_now();
    if (p->t0 == 0) p->t0 = t;
    if (!isatty(2) || t - p->t0 < 1.0) return;
    if (done < total && t - p->last < 0.1) return;
    p->last = t;
    fprintf(stderr, "\r%s: %lld/%lld (%.0f%%) %.1f s%s", what, (long long)done, (long long)total,
            total > 0 ? 100.0 * (double)done / (double)total : 0.0, t - p->t0,
            done >= total ? "\n" : "");
    p->shown = done < total;
}

static void load_progress(void *user, int32_t done, int32_t total)
{
    tern_progress(user, "loading the model (layers)", done, total);
}

int tern_run_open(int *argc, char ***argv, const tern_engine_opts *o, tern_engine **e, int *rank)
{
    tern_status st = {0};
    int size = 1;
    *e = NULL;
    *rank = 0;
    tern_engine_opts oo = *o;
    static tern_progress_line load_line;
    if (!oo.progress) oo.progress = load_progress, oo.progress_user = &load_line;
    if (!oo.model_path) oo.model_path = tern_default_model_path();
    if (tern_dist_init(argc, argv, rank, &size, &st)) {
        fprintf(stderr, "ternpipe: %s\n", st.msg);
        return 1;
    }
    if (!oo.model_path) {
        if (*rank == 0)
            fprintf(stderr, "ternpipe: no model given (-m FILE) and no default model found\n");
        tern_dist_finalize();
        return 1;
    }
    tern_code rc = tern_engine_open(e, &oo, &st);
    if (rc) {
        if (*rank == 0) fprintf(stderr, "ternpipe: %s\n", st.msg);
        tern_dist_finalize();
        return 1;
    }
    return 0;
}

void tern_run_close(tern_engine *e)
{
    tern_engine_close(e);
    tern_dist_finalize();
}
