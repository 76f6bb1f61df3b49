/* status.c: tern_status formatting. */
#include "ternpipe/status.h"

#include <stdio.h>
#include <string.h>

tern_code tern_status_vset(tern_status *st, tern_code code, const char *fmt, va_list ap)
{
    if (st) {
        st->code = code;
        vsnprintf(st->msg, sizeof st->msg, fmt, ap);
        /* one line: an error message never spans lines */
        for (char *p = st->msg; *p; p++)
            if (*p == '\n' || *p == '\r') *p = ' ';
    }
    return code;
}

tern_code tern_status_set(tern_status *st, tern_code code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    tern_status_vset(st, code, fmt, ap);
    va_end(ap);
    return code;
}

void tern_status_clear(tern_status *st)
{
    if (st) {
        st->code = TERN_OK;
        st->msg[0] = '\0';
    }
}

const char *tern_code_name(tern_code code)
{
    static const char *const names[TERN_CODE_COUNT] = {
        [TERN_OK] = "ok",
        [TERN_EINVAL] = "invalid argument",
        [TERN_EIO] = "i/o error",
        [TERN_EFORMAT] = "bad format",
        [TERN_ENOMEM] = "out of memory",
        [TERN_EUNSUPPORTED] = "unsupported",
        [TERN_ERANGE] = "out of range",
        [TERN_EBUSY] = "busy",
        [TERN_ECANCELLED] = "cancelled",
    };
    return (code >= 0 && code < TERN_CODE_COUNT) ? names[code] : "unknown";
}
