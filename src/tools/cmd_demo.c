/* cmd_demo.c: placeholder until the tokenizer lands. */
#include <stdio.h>

#include "tools/commands.h"

int tern_cmd_demo(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return 1;
}
