/* commands.h: the ternpipe subcommands. Each returns the process exit code (0 = success)
 * and prints its one-line error to stderr itself. */
#ifndef TERN_TOOLS_COMMANDS_H
#define TERN_TOOLS_COMMANDS_H

int tern_cmd_info(int argc, char **argv);
int tern_cmd_tokenize(int argc, char **argv);
int tern_cmd_detokenize(int argc, char **argv);
int tern_cmd_convert(int argc, char **argv);
int tern_cmd_demo(int argc, char **argv);
int tern_cmd_logits(int argc, char **argv);
int tern_cmd_bench(int argc, char **argv);
int tern_cmd_generate(int argc, char **argv);
int tern_cmd_synth(int argc, char **argv);
int tern_cmd_serve(int argc, char **argv);
int tern_cmd_chat(int argc, char **argv);
int tern_cmd_plan(int argc, char **argv);
int tern_cmd_simulate(int argc, char **argv);

/* The model used when -m is not given: the embedded default (models/ in the source tree or
 * the installed copy). NULL when neither exists. */
const char *tern_default_model_path(void);

#endif
