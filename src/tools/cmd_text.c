/* cmd_text.c: tokenize, detokenize, convert (being written). */
#include <stdio.h>

#include "tools/commands.h"

int tern_cmd_tokenize(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "tokenize: not built yet\n");
    return 1;
}
int tern_cmd_detokenize(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "detokenize: not built yet\n");
    return 1;
}
int tern_cmd_convert(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "convert: not built yet\n");
    return 1;
}
