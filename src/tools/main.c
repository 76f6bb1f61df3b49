/* main.c: the ternpipe command-line entry point; dispatches to subcommands. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "tools/commands.h"

typedef struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
} command;

static const command commands[] = {
    {"info", tern_cmd_info, "info FILE                      model file summary and tensor table"},
    {"tokenize", tern_cmd_tokenize,
     "tokenize [-m FILE] [--no-bos] [--parse-special]   stdin text -> ids"},
    {"detokenize", tern_cmd_detokenize, "detokenize [-m FILE]         stdin ids -> text"},
    {"convert", tern_cmd_convert,
     "convert --tiktoken RANKS | --hf DIR [--type i2_s|tq2_0|tq1_0] -o OUT.gguf"},
    {"generate", tern_cmd_generate,
     "generate [-m FILE] -p TEXT [-n N] [--temp T] [--top-k K] [--top-p P] [--seed S] [--chat]"},
    {"logits", tern_cmd_logits,
     "logits [-m FILE] --ids \"ID ...\" --out OUT   fp32 logits per position"},
    {"bench", tern_cmd_bench, "bench [-m FILE] [--threads N] [--json]   throughput, RSS, roofline"},
    {"synth", tern_cmd_synth,
     "synth --shape 2b4t|tiny [--seed S] -o OUT.gguf   random model, official layout"},
    {"serve", tern_cmd_serve,
     "serve [-m FILE] [--host H] [--port P] [--api-key K]   OpenAI-compatible HTTP server"},
    {"plan", tern_cmd_plan,
     "plan [-m FILE | --shape 2b4t] [--ranks A..B] [--bw GB/s]   predicted pipeline plans"},
    {"simulate", tern_cmd_simulate,
     "simulate --profile FILE --ranks N [--npl S,...] [--link 25g]   predicted throughput"},
    {"chat", tern_cmd_chat, "chat [-m FILE | --url URL]     interactive chat in the terminal"},
    {"demo", tern_cmd_demo,
     "demo [-m FILE]                 model summary, prompt tokens, a generated story"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: ternpipe COMMAND [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %s\n", commands[i].help);
}

const char *tern_default_model_path(void)
{
    static const char *const candidates[] = {TERN_DEFAULT_MODEL_SOURCE,
                                             TERN_DEFAULT_MODEL_INSTALLED};
    for (size_t i = 0; i < sizeof candidates / sizeof candidates[0]; i++)
        if (access(candidates[i], R_OK) == 0) return candidates[i];
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") ||
        !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "ternpipe: unknown command '%s' (try 'ternpipe --help')\n", argv[1]);
    return 2;
}
