/* status.h: error reporting for every ternpipe module.
 *
 * Contract: functions that can fail on outside input (files, network, users) return a
 * tern_code and, when it is not TERN_OK, leave a one-line message in the caller's
 * tern_status ("what: got X, expected Y"). A NULL status pointer is allowed and means
 * "do not record the message". Broken internal invariants abort through tern_die().
 * Thread-safety: a tern_status belongs to one thread at a time.
 */
#ifndef TERNPIPE_STATUS_H
#define TERNPIPE_STATUS_H

#include <stdarg.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum tern_code {
    TERN_OK = 0,
    TERN_EINVAL,       /* bad argument or input value */
    TERN_EIO,          /* open/read/write/mmap failed */
    TERN_EFORMAT,      /* malformed file or message */
    TERN_ENOMEM,       /* allocation failed */
    TERN_EUNSUPPORTED, /* valid but not supported (architecture, tensor type) */
    TERN_ERANGE,       /* value out of the allowed range (context, vocab) */
    TERN_EBUSY,        /* queue full, try later */
    TERN_ECANCELLED,
    TERN_CODE_COUNT
} tern_code;

#define TERN_STATUS_MSG_MAX 512

typedef struct tern_status {
    tern_code code;
    char msg[TERN_STATUS_MSG_MAX];
} tern_status;

/* Records code and a printf-style message; returns code so callers can write
 * `return tern_status_set(st, TERN_EINVAL, "...")`. */
tern_code tern_status_set(tern_status *st, tern_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
tern_code tern_status_vset(tern_status *st, tern_code code, const char *fmt, va_list ap);
void tern_status_clear(tern_status *st);
const char *tern_code_name(tern_code code);

#ifdef __cplusplus
}
#endif
#endif
