/* cmd_demo.c: `ternpipe demo`: the README's first command. A short tour on the embedded
 * default model: the file (reader), the prompt's tokens (tokenizer), then a generated story
 * (the engine, as `ternpipe generate` runs it). */
#include <stdio.h>
#include <string.h>

#include "ternpipe/gguf.h"
#include "ternpipe/model.h"
#include "ternpipe/tokenizer.h"
#include "tools/commands.h"

int tern_cmd_demo(int argc, char **argv)
{
    const char *model = NULL, *prompt = "Once upon a time";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-m") && i + 1 < argc)
            model = argv[++i];
        else if (!strcmp(argv[i], "-p") && i + 1 < argc)
            prompt = argv[++i];
        else {
            fprintf(stderr, "usage: ternpipe demo [-m FILE] [-p TEXT]\n");
            return 2;
        }
    }
    if (!model) model = tern_default_model_path();
    if (!model) {
        fprintf(stderr, "ternpipe: no model given (-m FILE) and no default model found\n");
        return 1;
    }
    tern_status st = {0};
    tern_gguf *g = NULL;
    tern_tokenizer *tok = NULL;
    tern_tokens ids = {0};
    tern_hparams hp;
    int rc = 1;
    if (tern_gguf_open(&g, model, &st) || tern_hparams_read(g, &hp, &st) ||
        tern_tokenizer_load(&tok, g, &st) ||
        tern_tokenizer_encode(tok, prompt, strlen(prompt), TERN_TOK_ADD_BOS, &ids, &st)) {
        fprintf(stderr, "ternpipe: %s\n", st.msg);
        goto out;
    }
    uint64_t ternary = 0, other = 0;
    for (uint64_t i = 0; i < tern_gguf_n_tensors(g); i++) {
        const tern_gguf_tensor *t = tern_gguf_tensor_at(g, i);
        uint64_t n = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
        if (tern_type_is_ternary(t->type))
            ternary += n;
        else
            other += n;
    }
    printf("model: %s\n  %s, %d layers, hidden %d, ffn %d, heads %d/%d, context %d, vocab %d\n"
           "  %.2fM ternary weights, %.2fM other parameters, %llu tensors\n",
           model, hp.arch, hp.n_layer, hp.d, hp.n_ff, hp.n_head, hp.n_head_kv, hp.n_ctx, hp.n_vocab,
           (double)ternary / 1e6, (double)other / 1e6, (unsigned long long)tern_gguf_n_tensors(g));
    printf("tokenizer: %s pre-tokenizer, prompt \"%s\" -> %zu tokens:",
           tern_tokenizer_pre_name(tok), prompt, ids.n);
    for (size_t i = 0; i < ids.n; i++) {
        size_t len;
        const char *b = tern_tokenizer_token_bytes(tok, ids.ids[i], &len);
        printf(" %d'%.*s'", ids.ids[i], (int)len, b);
    }
    printf("\ngeneration (greedy, 120 tokens):\n");
    fflush(stdout);
    rc = 0;
out:
    tern_tokens_free(&ids);
    tern_tokenizer_free(tok);
    tern_gguf_close(g);
    if (rc) return rc;
    char *gen_argv[] = {"generate", "-m", (char *)model, "-p", (char *)prompt, "-n", "120", NULL};
    return tern_cmd_generate(7, gen_argv);
}
