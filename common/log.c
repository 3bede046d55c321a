/*
 * log.c -- one line per event, to stderr or syslog (journald reads both):
 * a Postfix-style line, or (log.format = "json") one JSON object per line
 * with the same content, the message's key=value fields parsed out.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
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
static enum log_format log_format = LOG_FORMAT_TEXT;
static char log_host[256];

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

void
log_set_format(enum log_format format, const char *host)
{
    log_format = format;
    str_copy(log_host, host ? host : "", sizeof(log_host));
}

/* ------------------------------------------------------------ json lines */

#define LOG_LINE 2048
#define LOG_MAX_FIELDS 32
#define LOG_MAX_KEY 32

/*
 * The message formatted the way vsnprintf does, remembering for each byte
 * of it whether it came from the format string (our code) or from an
 * argument (which may be what a client sent). Only the format's own text
 * makes keys and separators, so no address, HELO name or reply text can
 * end a field early or forge one: "to=<%s>" gives the key to whatever %s
 * holds. Returns the length, or -1 for a conversion it does not know (the
 * caller then formats the whole line as arguments).
 */
static int
format_marked(char *out, bool *lit, const char *fmt, va_list ap)
{
    size_t n = 0;
    for (const char *f = fmt; *f && n < LOG_LINE - 1;) {
        if (*f != '%' || f[1] == '%') {
            lit[n] = true;
            out[n++] = *f;
            f += *f == '%' ? 2 : 1;
            continue;
        }
        /* %[flags][width][.precision][length]conversion, '*' from the args */
        char spec[48], len[3] = "";
        size_t k = 0;
        spec[k++] = *f++;
        while (*f && strchr("-+ #0", *f) && k < 8)
            spec[k++] = *f++;
        int width = -1, prec = -1;
        if (*f == '*') {
            width = va_arg(ap, int);
            f++;
        } else if (*f >= '1' && *f <= '9') {
            for (width = 0; *f >= '0' && *f <= '9'; f++)
                width = width < 10000 ? width * 10 + (*f - '0') : width;
        }
        if (*f == '.') {
            f++;
            if (*f == '*') {
                prec = va_arg(ap, int);
                f++;
            } else {
                for (prec = 0; *f >= '0' && *f <= '9'; f++)
                    prec = prec < 10000 ? prec * 10 + (*f - '0') : prec;
            }
        }
        for (size_t i = 0; i < 2 && *f && strchr("hlzjtL", *f); i++)
            len[i] = *f++;
        char conv = *f ? *f++ : '\0';
        if (width >= 0)
            k += (size_t)snprintf(spec + k, sizeof(spec) - k, "%d", width);
        if (prec >= 0)
            k += (size_t)snprintf(spec + k, sizeof(spec) - k, ".%d", prec);
        snprintf(spec + k, sizeof(spec) - k, "%s%c", len, conv);
        size_t room = LOG_LINE - n;
        int w;
        bool l1 = len[0] == 'l' && len[1] == '\0', ll = len[0] == 'l' && len[1] == 'l';
        switch (conv) {
        case 'd': case 'i':
            if (ll) w = snprintf(out + n, room, spec, va_arg(ap, long long));
            else if (l1) w = snprintf(out + n, room, spec, va_arg(ap, long));
            else if (len[0] == 'z') w = snprintf(out + n, room, spec, va_arg(ap, ssize_t));
            else if (len[0] == 'j') w = snprintf(out + n, room, spec, va_arg(ap, intmax_t));
            else if (len[0] == 't') w = snprintf(out + n, room, spec, va_arg(ap, ptrdiff_t));
            else w = snprintf(out + n, room, spec, va_arg(ap, int));
            break;
        case 'u': case 'o': case 'x': case 'X':
            if (ll) w = snprintf(out + n, room, spec, va_arg(ap, unsigned long long));
            else if (l1) w = snprintf(out + n, room, spec, va_arg(ap, unsigned long));
            else if (len[0] == 'z') w = snprintf(out + n, room, spec, va_arg(ap, size_t));
            else if (len[0] == 'j') w = snprintf(out + n, room, spec, va_arg(ap, uintmax_t));
            else if (len[0] == 't') w = snprintf(out + n, room, spec, va_arg(ap, ptrdiff_t));
            else w = snprintf(out + n, room, spec, va_arg(ap, unsigned));
            break;
        case 'f': case 'F': case 'e': case 'E': case 'g': case 'G': case 'a': case 'A':
            if (len[0] == 'L') w = snprintf(out + n, room, spec, va_arg(ap, long double));
            else w = snprintf(out + n, room, spec, va_arg(ap, double));
            break;
        case 'c':
            w = snprintf(out + n, room, spec, va_arg(ap, int));
            break;
        case 's':
            if (len[0])
                return -1;                      /* wide strings: not ours */
            w = snprintf(out + n, room, spec, va_arg(ap, const char *));
            break;
        case 'p':
            w = snprintf(out + n, room, spec, va_arg(ap, void *));
            break;
        default:
            return -1;                          /* %n, %m, ...: not in our logs */
        }
        if (w < 0)
            return -1;
        size_t got = (size_t)w < room ? (size_t)w : room - 1;
        memset(lit + n, 0, got);
        n += got;
    }
    out[n] = '\0';
    return (int)n;
}

static const char *const log_reserved[] = { "time", "host", "program", "role", "pid", "level",
                                            "queue_id", "msg", "detail", NULL };

/* A key of the format's text at p: "key=" with key [a-z][a-z0-9_]*, after
 * the start or a space of the format's; its length, or 0. */
static size_t
key_at(const char *text, const bool *lit, size_t p)
{
    if (!(p == 0 || (text[p - 1] == ' ' && lit[p - 1])))
        return 0;
    size_t n = 0;
    if (!lit[p] || text[p] < 'a' || text[p] > 'z')
        return 0;
    while (lit[p + n] && ((text[p + n] >= 'a' && text[p + n] <= 'z') ||
                          (text[p + n] >= '0' && text[p + n] <= '9') || text[p + n] == '_'))
        if (++n > LOG_MAX_KEY)
            return 0;
    return text[p + n] == '=' && lit[p + n] ? n : 0;
}

/* A JSON number as JSON writes it: -?(0|[1-9][0-9]*)(.[0-9]+)? */
static bool
is_number(const char *v, size_t n)
{
    size_t i = 0;
    if (i < n && v[i] == '-')
        i++;
    if (i == n || v[i] < '0' || v[i] > '9' || (v[i] == '0' && i + 1 < n && v[i + 1] != '.'))
        return false;
    while (i < n && v[i] >= '0' && v[i] <= '9')
        i++;
    if (i < n && v[i] == '.') {
        if (++i == n)
            return false;
        while (i < n && v[i] >= '0' && v[i] <= '9')
            i++;
    }
    return i == n && n <= 24;
}

/* The fields of a Postfix-style message into b: the format's "key=" after a
 * space or at the start, the value up to the next such key (less the
 * format's ", " or ";" before it): from=<a@b>, size=9 or proto=ESMTP
 * helo=<c>. A value the format puts in <...> is what is inside. A remark
 * the format puts in parentheses at the end (the reply after status=sent,
 * "queued" after client=) is "detail". A value that is a number is one.
 * Keys that name the object's own fields, and a key seen before, stay in
 * msg only. */
static void
json_fields(struct jbuf *b, const char *text, const bool *lit, size_t len)
{
    size_t dstart = len, dend = len;
    if (len >= 3 && text[len - 1] == ')' && lit[len - 1]) {
        for (size_t q = len - 1; q-- > 1;)
            if (text[q] == '(' && lit[q] && text[q - 1] == ' ' && lit[q - 1]) {
                dstart = q - 1;
                break;
            }
        if (dstart < len)
            dend = len - 1;
    }
    size_t keys[LOG_MAX_FIELDS], klens[LOG_MAX_FIELDS], nk = 0;
    for (size_t p = 0; p < dstart && nk < LOG_MAX_FIELDS; p++) {
        size_t kl = key_at(text, lit, p);
        if (kl) {
            keys[nk] = p;
            klens[nk++] = kl;
            p += kl;
        }
    }
    for (size_t i = 0; i < nk; i++) {
        size_t k = keys[i], kl = klens[i];
        size_t v = k + kl + 1, ve = i + 1 < nk ? keys[i + 1] : dstart;
        while (ve > v && lit[ve - 1] && strchr(", ;", text[ve - 1]))
            ve--;
        if (ve - v >= 2 && text[v] == '<' && lit[v] && text[ve - 1] == '>' && lit[ve - 1]) {
            v++;
            ve--;
        }
        bool skip = false;
        for (int r = 0; log_reserved[r]; r++)
            if (strlen(log_reserved[r]) == kl && memcmp(log_reserved[r], text + k, kl) == 0)
                skip = true;
        for (size_t j = 0; j < i; j++)
            if (klens[j] == kl && memcmp(text + keys[j], text + k, kl) == 0)
                skip = true;
        if (skip)
            continue;
        char key[LOG_MAX_KEY + 1];
        memcpy(key, text + k, kl);
        key[kl] = '\0';
        jb_key(b, key);
        if (is_number(text + v, ve - v))
            jb_json(b, text + v, ve - v);
        else
            jb_strn(b, text + v, ve - v);
    }
    if (dstart < len) {
        jb_key(b, "detail");
        jb_strn(b, text + dstart + 2, dend - dstart - 2);
    }
}

static const char *
level_name(int prio)
{
    switch (prio) {
    case LOG_DEBUG: return "debug";
    case LOG_INFO: return "info";
    case LOG_WARNING: return "warning";
    case LOG_ERR: return "error";
    default: return "critical";
    }
}

/* The line as one JSON object (no newline) into b. */
static void
json_line(struct jbuf *b, int prio, const char *msg, const bool *lit, size_t len)
{
    char ts[64], zone[8];
    struct timespec now;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &now);
    localtime_r(&now.tv_sec, &tm);
    size_t n = strftime(ts, sizeof(ts) - 16, "%Y-%m-%dT%H:%M:%S", &tm);
    strftime(zone, sizeof(zone), "%z", &tm);       /* +0100 -> +01:00 (RFC 3339) */
    snprintf(ts + n, sizeof(ts) - n, ".%03ld%.3s:%.2s", now.tv_nsec / 1000000, zone, zone + 3);
    jb_obj(b);
    jb_kstr(b, "time", ts);
    if (log_host[0])
        jb_kstr(b, "host", log_host);
    jb_kstr(b, "program", log_ident);
    jb_kstr(b, "role", log_role);
    jb_kint(b, "pid", (long long)getpid());
    jb_kstr(b, "level", level_name(prio));
    /* "ID: ..." where ID is an upper-case hex id (a queue or quarantine id) */
    size_t idlen = strspn(msg, "0123456789ABCDEF");
    if (idlen >= 10 && idlen <= 32 && msg[idlen] == ':' && msg[idlen + 1] == ' ' &&
        lit[idlen] && lit[idlen + 1]) {
        jb_key(b, "queue_id");
        jb_strn(b, msg, idlen);
        msg += idlen + 2;
        lit += idlen + 2;
        len -= idlen + 2;
    }
    jb_kstr(b, "msg", msg);
    json_fields(b, msg, lit, len);
    jb_obj_end(b);
}

static void
log_emit(int prio, const char *fmt, va_list ap)
{
    char msg[LOG_LINE];
    bool lit[LOG_LINE + 1];
    int saved = errno;
    int len = -1;
    if (log_format == LOG_FORMAT_JSON) {
        va_list ap2;
        va_copy(ap2, ap);
        len = format_marked(msg, lit, fmt, ap2);
        va_end(ap2);
    }
    if (len < 0) {
        vsnprintf(msg, sizeof(msg), fmt, ap);
        len = (int)strlen(msg);
        memset(lit, 0, sizeof(lit));
    }
    lit[len] = false;
    /* Never let a control character from the network into a log line. */
    for (char *p = msg; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    if (log_format == LOG_FORMAT_JSON) {
        struct jbuf b = { 0 };
        json_line(&b, prio, msg, lit, (size_t)len);
        if (log_target == LOG_TO_SYSLOG)
            syslog(prio, "%s", b.p);
        else
            fprintf(stderr, "%s\n", b.p);
        jb_free(&b);
    } else if (log_target == LOG_TO_SYSLOG) {
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
