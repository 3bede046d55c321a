/* log.c -- one line per event, to stderr or syslog (journald reads both). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>
#include "util.h"

static enum log_target log_target = LOG_TO_STDERR;
static bool log_debug_on;
static char log_ident[32] = "moatd";
static char log_role[32] = "master";

void
log_init(const char *ident, enum log_target target, bool debug)
{
    str_copy(log_ident, ident, sizeof(log_ident));
    log_target = target;
    log_debug_on = debug;
    if (target == LOG_TO_SYSLOG)
        openlog(log_ident, LOG_PID | LOG_NDELAY, LOG_MAIL);
}

void
log_set_role(const char *role)
{
    str_copy(log_role, role, sizeof(log_role));
}

static void
log_emit(int prio, const char *fmt, va_list ap)
{
    char msg[2048];
    int saved = errno;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    /* Never let a control character from the network into a log line. */
    for (char *p = msg; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    if (log_target == LOG_TO_SYSLOG) {
        syslog(prio, "%s: %s", log_role, msg);
    } else {
        char ts[32];
        time_t t = time(NULL);
        struct tm tm;
        localtime_r(&t, &tm);
        strftime(ts, sizeof(ts), "%b %e %H:%M:%S", &tm);
        fprintf(stderr, "%s %s/%s[%d]: %s\n", ts, log_ident, log_role, (int)getpid(), msg);
    }
    errno = saved;
}

#define LOG_FN(name, prio)                          \
    void name(const char *fmt, ...)                 \
    {                                               \
        va_list ap;                                 \
        va_start(ap, fmt);                          \
        log_emit(prio, fmt, ap);                    \
        va_end(ap);                                 \
    }
LOG_FN(log_info, LOG_INFO)
LOG_FN(log_warn, LOG_WARNING)
LOG_FN(log_err, LOG_ERR)

void
log_debug(const char *fmt, ...)
{
    if (!log_debug_on)
        return;
    va_list ap;
    va_start(ap, fmt);
    log_emit(LOG_DEBUG, fmt, ap);
    va_end(ap);
}

void
fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_emit(LOG_CRIT, fmt, ap);
    va_end(ap);
    exit(70);
}
