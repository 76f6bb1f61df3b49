/* serve.h: the serving commands. `ternpipe serve` runs the OpenAI-compatible HTTP server on rank
 * 0 (workers serve the pipeline); `ternpipe chat` is an interactive terminal chat against a
 * running server or a model loaded in-process. Both return the process exit code and print
 * their one-line errors to stderr. */
#ifndef TERN_TOOLS_SERVE_H
#define TERN_TOOLS_SERVE_H

int tern_cmd_serve(int argc, char **argv);
int tern_cmd_chat(int argc, char **argv);

#endif
