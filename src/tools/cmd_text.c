/* cmd_text.c: `ternpipe tokenize`, `detokenize` and `convert --tiktoken`. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ternpipe/tokenizer.h"
#include "tools/commands.h"

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

int tern_cmd_convert(int argc, char **argv)
{
    const char *ranks = NULL, *out = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tiktoken") && i + 1 < argc)
            ranks = argv[++i];
        else if (!strcmp(argv[i], "-o") && i + 1 < argc)
            out = argv[++i];
        else {
            fprintf(stderr, "usage: ternpipe convert --tiktoken RANKS -o OUT.gguf\n");
            return 2;
        }
    }
    if (!ranks || !out) {
        fprintf(stderr, "ternpipe convert: --tiktoken RANKS and -o OUT.gguf are required\n");
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
