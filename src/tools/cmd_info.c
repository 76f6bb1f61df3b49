/* cmd_info.c: `ternpipe info FILE`: architecture, hyperparameters, tokenizer summary and the
 * tensor table of a GGUF file. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "ternpipe/gguf.h"
#include "tools/commands.h"

static void print_value(const tern_gguf_value *v)
{
    switch (v->type) {
    case TERN_GGUF_STRING: {
        uint64_t n = v->v.str.len > 80 ? 80 : v->v.str.len;
        printf("\"");
        for (uint64_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)v->v.str.ptr[i];
            if (c == '\n')
                printf("\\n");
            else if (c < 0x20)
                printf("\\x%02x", c);
            else
                putchar(c);
        }
        printf("\"%s", v->v.str.len > 80 ? "..." : "");
        break;
    }
    case TERN_GGUF_ARRAY:
        printf("[%s x %" PRIu64 "]", tern_gguf_vtype_name(v->v.arr.type), v->v.arr.n);
        break;
    case TERN_GGUF_FLOAT32:
    case TERN_GGUF_FLOAT64:
        printf("%g", v->v.f64);
        break;
    case TERN_GGUF_BOOL:
        printf("%s", v->v.u64 ? "true" : "false");
        break;
    case TERN_GGUF_INT8:
    case TERN_GGUF_INT16:
    case TERN_GGUF_INT32:
    case TERN_GGUF_INT64:
        printf("%" PRId64, v->v.i64);
        break;
    default:
        printf("%" PRIu64, v->v.u64);
        break;
    }
}

int tern_cmd_info(int argc, char **argv)
{
    if (argc != 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: ternpipe info FILE\n");
        return 2;
    }
    tern_status st = {0};
    tern_gguf *g;
    if (tern_gguf_open(&g, argv[1], &st)) {
        fprintf(stderr, "%s\n", st.msg);
        return 1;
    }
    tern_gguf_str arch = {"", 0};
    tern_gguf_get_str(g, "general.architecture", &arch, NULL);
    printf("file: %s\n", argv[1]);
    printf("gguf version: %u, alignment: %u, size: %" PRIu64 " bytes\n", tern_gguf_version(g),
           tern_gguf_alignment(g), tern_gguf_file_size(g));
    printf("architecture: %.*s\n", (int)arch.len, arch.ptr);

    printf("\nmetadata (%" PRIu64 " pairs):\n", tern_gguf_n_kv(g));
    for (uint64_t i = 0; i < tern_gguf_n_kv(g); i++) {
        const tern_gguf_kv *kv = tern_gguf_kv_at(g, i);
        if (kv->key.len > 14 && !memcmp(kv->key.ptr, "tokenizer.", 10)) continue;
        printf("  %.*s = ", (int)kv->key.len, kv->key.ptr);
        print_value(&kv->value);
        printf("\n");
    }

    const tern_gguf_value *tokens = tern_gguf_find(g, "tokenizer.ggml.tokens");
    const tern_gguf_value *merges = tern_gguf_find(g, "tokenizer.ggml.merges");
    tern_gguf_str model = {"(none)", 6}, pre = {"(absent)", 8};
    tern_gguf_get_str(g, "tokenizer.ggml.model", &model, NULL);
    tern_gguf_get_str(g, "tokenizer.ggml.pre", &pre, NULL);
    uint32_t bos = 0, eos = 0;
    bool has_bos = !tern_gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &bos, NULL);
    bool has_eos = !tern_gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &eos, NULL);
    printf("\ntokenizer: model %.*s, pre %.*s, %" PRIu64 " tokens, %" PRIu64 " merges",
           (int)model.len, model.ptr, (int)pre.len, pre.ptr,
           tokens && tokens->type == TERN_GGUF_ARRAY ? tokens->v.arr.n : 0,
           merges && merges->type == TERN_GGUF_ARRAY ? merges->v.arr.n : 0);
    if (has_bos) printf(", bos %u", bos);
    if (has_eos) printf(", eos %u", eos);
    printf("\n");

    uint64_t total = 0;
    printf("\ntensors (%" PRIu64 "):\n", tern_gguf_n_tensors(g));
    printf("  %-32s %-6s %-24s %14s\n", "name", "type", "shape", "bytes");
    for (uint64_t i = 0; i < tern_gguf_n_tensors(g); i++) {
        const tern_gguf_tensor *t = tern_gguf_tensor_at(g, i);
        char shape[64];
        int n = snprintf(shape, sizeof shape, "{");
        for (uint32_t d = 0; d < t->n_dims && n < (int)sizeof shape; d++)
            n += snprintf(shape + n, sizeof shape - (size_t)n, "%s%" PRIu64, d ? ", " : "",
                          t->ne[d]);
        if (n < (int)sizeof shape) snprintf(shape + n, sizeof shape - (size_t)n, "}");
        printf("  %-32.*s %-6s %-24s %14" PRIu64 "\n", (int)t->name.len, t->name.ptr,
               tern_ggml_type_name(t->type), shape, t->nbytes);
        total += t->nbytes;
    }
    printf("  total tensor bytes: %" PRIu64 "\n", total);
    tern_gguf_close(g);
    return 0;
}
