/* cmd_text.c: `ternpipe tokenize`, `detokenize`, `convert --tiktoken` and `convert --hf`. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ternpipe/model.h"
#include "ternpipe/runtime.h"
#include "ternpipe/safetensors.h"
#include "ternpipe/tokenizer.h"
#include "tools/commands.h"
#include "tools/run.h"

static char *read_all(FILE *f, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t k = fread(buf + n, 1, cap - n, f);
        n += k;
        if (n < cap) break;
        char *nb = realloc(buf, cap * 2);
        if (!nb) {
            free(buf);
            return NULL;
        }
        buf = nb, cap *= 2;
    }
    if (buf) *len = n;
    return buf;
}

static int open_tok(const char *model, tern_gguf **g, tern_tokenizer **tok)
{
    tern_status st = {0};
    if (!model) model = tern_default_model_path();
    if (!model) {
        fprintf(stderr, "ternpipe: no model given (-m FILE) and no default model found\n");
        return 1;
    }
    if (tern_gguf_open(g, model, &st) || tern_tokenizer_load(tok, *g, &st)) {
        fprintf(stderr, "ternpipe: %s\n", st.msg);
        tern_gguf_close(*g);
        *g = NULL;
        return 1;
    }
    return 0;
}

int tern_cmd_tokenize(int argc, char **argv)
{
    const char *model = NULL;
    bool no_bos = false, special = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-m") && i + 1 < argc)
            model = argv[++i];
        else if (!strcmp(argv[i], "--no-bos"))
            no_bos = true;
        else if (!strcmp(argv[i], "--parse-special"))
            special = true;
        else {
            fprintf(stderr,
                    "usage: ternpipe tokenize [-m FILE] [--no-bos] [--parse-special] < TEXT\n");
            return 2;
        }
    }
    tern_gguf *g;
    tern_tokenizer *tok;
    if (open_tok(model, &g, &tok)) return 1;
    size_t len;
    char *text = read_all(stdin, &len);
    tern_tokens ids = {0};
    tern_status st = {0};
    int rc = 1;
    unsigned flags = (!no_bos && tern_tokenizer_add_bos(tok) ? TERN_TOK_ADD_BOS : 0) |
                     (special ? TERN_TOK_PARSE_SPECIAL : 0);
    if (!text)
        fprintf(stderr, "ternpipe: reading stdin failed\n");
    else if (tern_tokenizer_encode(tok, text, len, flags, &ids, &st))
        fprintf(stderr, "ternpipe: %s\n", st.msg);
    else {
        for (size_t i = 0; i < ids.n; i++) printf(i ? " %d" : "%d", ids.ids[i]);
        printf("\n");
        rc = 0;
    }
    free(text);
    tern_tokens_free(&ids);
    tern_tokenizer_free(tok);
    tern_gguf_close(g);
    return rc;
}

int tern_cmd_detokenize(int argc, char **argv)
{
    const char *model = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-m") && i + 1 < argc)
            model = argv[++i];
        else {
            fprintf(stderr, "usage: ternpipe detokenize [-m FILE] < IDS\n");
            return 2;
        }
    }
    tern_gguf *g;
    tern_tokenizer *tok;
    if (open_tok(model, &g, &tok)) return 1;
    size_t len;
    char *text = read_all(stdin, &len);
    int rc = text ? 0 : 1;
    for (size_t i = 0; text && i < len && rc == 0;) {
        while (i < len && (text[i] == ' ' || text[i] == '\n' || text[i] == '\t' || text[i] == '\r'))
            i++;
        if (i >= len) break;
        char *end;
        errno = 0;
        long id = strtol(text + i, &end, 10);
        if (end == text + i || errno || id < 0 || id >= tern_tokenizer_n_vocab(tok) ||
            (end < text + len && *end != ' ' && *end != '\n' && *end != '\t' && *end != '\r')) {
            fprintf(stderr, "ternpipe: detokenize: token '%.*s': got it, expected an id 0..%d\n",
                    (int)((end > text + i ? end : text + i + 1) - (text + i)), text + i,
                    tern_tokenizer_n_vocab(tok) - 1);
            rc = 1;
            break;
        }
        size_t bl;
        const char *b = tern_tokenizer_token_bytes(tok, (int32_t)id, &bl);
        fwrite(b, 1, bl, stdout);
        i = (size_t)(end - text);
    }
    free(text);
    tern_tokenizer_free(tok);
    tern_gguf_close(g);
    return rc;
}

/* logits [n][vocab] of ids 1..n as one sequence (the read-back check of convert --hf) */
static float *probe_logits(const tern_gguf *g, int n, int *vocab, tern_status *st)
{
    tern_topo *topo = NULL;
    tern_pool *pool = NULL;
    tern_model *m = NULL;
    tern_ctx *c = NULL;
    float *out = NULL, *x = NULL;
    tern_model_opts mo = {.l0 = 0, .l1 = -1, .embed = true, .head = true};
    tern_ctx_opts co = {.max_tokens = n, .max_seqs = 1};
    if (tern_topo_discover(&topo, st) || tern_pool_create(&pool, topo, 0, st) ||
        tern_model_load(&m, g, &mo, st) || tern_ctx_create(&c, m, pool, &co, st))
        goto done;
    const tern_hparams *hp = tern_model_hparams(m);
    int32_t ids[16], rows[16];
    for (int i = 0; i < n; i++) ids[i] = (i + 1) % hp->n_vocab, rows[i] = i;
    *vocab = hp->n_vocab;
    out = malloc(sizeof(float) * (size_t)n * (size_t)hp->n_vocab);
    x = malloc(sizeof(float) * (size_t)n * (size_t)hp->d);
    tern_batch_seq b = {.slot = 0, .pos0 = 0, .n_tokens = n};
    if (!out || !x) {
        tern_status_set(st, TERN_ENOMEM, "convert: out of memory");
        goto fail;
    }
    tern_embed(c, ids, n, x);
    if (tern_forward(c, &b, 1, x, st)) goto fail;
    tern_head(c, x, rows, n, out);
    goto done;
fail:
    free(out);
    out = NULL;
done:
    free(x);
    tern_ctx_free(c);
    tern_model_free(m);
    tern_pool_free(pool);
    tern_topo_free(topo);
    return out;
}

static void convert_progress(void *user, int64_t done, int64_t total)
{
    int64_t mb = done >> 20, all = (total >> 20) + 1; /* 100% only once all is written */
    tern_progress(user, "convert: writing tensors (MB)", done < total ? mb : all, all);
}

/* convert --hf: write, read back, compare with the directory on 16 positions */
static int convert_hf(const char *dir, const char *out, const char *type)
{
    int t = !strcmp(type, "i2_s")    ? TERN_TYPE_I2_S
            : !strcmp(type, "tq2_0") ? TERN_TYPE_TQ2_0
            : !strcmp(type, "tq1_0") ? TERN_TYPE_TQ1_0
            : !strcmp(type, "f16")   ? TERN_TYPE_F16
                                     : -1;
    if (t < 0) {
        fprintf(stderr, "ternpipe convert: --type: got '%s', expected i2_s, tq2_0, tq1_0 or f16\n",
                type);
        return 2;
    }
    tern_status st = {0};
    tern_gguf *a = NULL, *b = NULL;
    float *la = NULL, *lb = NULL;
    int va = 0, vb = 0, rc = 1;
    tern_progress_line pl = {0};
    if (tern_hf_convert_progress(dir, out, t, convert_progress, &pl, &st) ||
        tern_gguf_open(&a, out, &st) || tern_gguf_open(&b, dir, &st) ||
        !(la = probe_logits(a, 16, &va, &st)) || !(lb = probe_logits(b, 16, &vb, &st))) {
        fprintf(stderr, "ternpipe: %s\n", st.msg);
        goto out;
    }
    size_t n = (size_t)16 * (size_t)va;
    float lo = lb[0], hi = lb[0], md = 0.0f;
    for (size_t i = 0; i < n; i++) {
        lo = lb[i] < lo ? lb[i] : lo, hi = lb[i] > hi ? lb[i] : hi;
        float dd = la[i] > lb[i] ? la[i] - lb[i] : lb[i] - la[i];
        md = dd > md ? dd : md;
    }
    bool same = va == vb && !memcmp(la, lb, n * sizeof(float));
    printf("%s: %llu tensors, %llu bytes; read back: logits of 16 positions %s", out,
           (unsigned long long)tern_gguf_n_tensors(a), (unsigned long long)tern_gguf_file_size(a),
           same ? "bitwise equal to the directory's\n" : "");
    if (!same)
        printf("differ from the directory's by at most %g (%.4f of the range; %s keeps the scale "
               "as f16)\n",
               (double)md, (double)(md / (hi - lo)), type);
    /* I2_S and F16 (trits + an F32 scale) hold alpha exactly; TQ types round it to f16 */
    rc = same || (t != TERN_TYPE_I2_S && t != TERN_TYPE_F16) ? 0 : 1;
    if (rc) fprintf(stderr, "ternpipe convert: read-back logits differ (a bug)\n");
out:
    free(la), free(lb);
    tern_gguf_close(a);
    tern_gguf_close(b);
    return rc;
}

int tern_cmd_convert(int argc, char **argv)
{
    const char *ranks = NULL, *out = NULL, *hf = NULL, *type = "i2_s";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tiktoken") && i + 1 < argc)
            ranks = argv[++i];
        else if (!strcmp(argv[i], "--hf") && i + 1 < argc)
            hf = argv[++i];
        else if (!strcmp(argv[i], "--type") && i + 1 < argc)
            type = argv[++i];
        else if (!strcmp(argv[i], "-o") && i + 1 < argc)
            out = argv[++i];
        else {
            fprintf(stderr, "usage: ternpipe convert --tiktoken RANKS -o OUT.gguf\n"
                            "       ternpipe convert --hf DIR -o OUT.gguf [--type "
                            "i2_s|tq2_0|tq1_0|f16]\n");
            return 2;
        }
    }
    if (hf && out) return convert_hf(hf, out, type);
    if (!ranks || !out) {
        fprintf(stderr, "ternpipe convert: --tiktoken RANKS (or --hf DIR) and -o OUT.gguf are "
                        "required\n");
        return 2;
    }
    tern_status st = {0};
    tern_gguf_writer *w = tern_gguf_writer_new();
    if (!w) {
        fprintf(stderr, "ternpipe: out of memory\n");
        return 1;
    }
    tern_gguf_writer_add_str(w, "general.architecture", "llama");
    tern_gguf_writer_add_str(w, "general.name", "llama3-vocab");
    int rc = 0;
    if (tern_vocab_add_tiktoken(w, ranks, &st) || tern_gguf_writer_write(w, out, &st)) {
        fprintf(stderr, "ternpipe: %s\n", st.msg);
        rc = 1;
    }
    tern_gguf_writer_free(w);
    return rc;
}
