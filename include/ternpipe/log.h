/* log.h: one line per event on stderr, prefixed with the rank ("[r0] ...").
 * Thread-safe (each call is one write). Also tern_die() for broken invariants. */
#ifndef TERNPIPE_LOG_H
#define TERNPIPE_LOG_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum tern_log_level {
    TERN_LOG_ERROR = 0,
    TERN_LOG_WARN,
    TERN_LOG_INFO,
    TERN_LOG_DEBUG,
    TERN_LOG_LEVEL_COUNT
} tern_log_level;

void tern_log_set_rank(int rank);
void tern_log_set_level(tern_log_level level);
tern_log_level tern_log_get_level(void);
void tern_log(tern_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Aborts the process (through the installed hook, MPI_Abort once MPI is up). Only for
 * broken invariants, never for bad input. */
typedef void (*tern_abort_hook)(void);
void tern_set_abort_hook(tern_abort_hook hook);
_Noreturn void tern_die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#define TERN_ASSERT(cond)                                                                          \
    do {                                                                                           \
        if (!(cond)) tern_die("%s:%d: assertion failed: %s", __FILE__, __LINE__, #cond);           \
    } while (0)

#ifdef __cplusplus
}
#endif
#endif
