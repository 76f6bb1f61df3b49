/* log.c: rank-prefixed one-line logging to stderr. */
#include "ternpipe/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int g_rank = 0;
static tern_log_level g_level = TERN_LOG_INFO;
static tern_abort_hook g_abort_hook = NULL;

void tern_log_set_rank(int rank)
{
    g_rank = rank;
}
void tern_log_set_level(tern_log_level level)
{
    g_level = level;
}
tern_log_level tern_log_get_level(void)
{
    return g_level;
}
void tern_set_abort_hook(tern_abort_hook hook)
{
    g_abort_hook = hook;
}

static void emit(const char *tag, const char *fmt, va_list ap)
{
    char line[1024];
    int n = snprintf(line, sizeof line, "[r%d] %s", g_rank, tag);
    if (n < 0) return;
    int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    if (m < 0) return;
    size_t len = strlen(line);
    if (len + 1 >= sizeof line) len = sizeof line - 2;
    line[len++] = '\n';
    /* a single write keeps lines from different threads or ranks whole */
    ssize_t w = write(2, line, len);
    (void)w;
}

void tern_log(tern_log_level level, const char *fmt, ...)
{
    static const char *const tags[TERN_LOG_LEVEL_COUNT] = {"error: ", "warning: ", "", "debug: "};
    if (level > g_level) return;
    va_list ap;
    va_start(ap, fmt);
    emit(tags[level], fmt, ap);
    va_end(ap);
}

_Noreturn void tern_die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    emit("fatal: ", fmt, ap);
    va_end(ap);
    if (g_abort_hook) g_abort_hook();
    abort();
}
