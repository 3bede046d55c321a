/*
 * smtp_parser.c -- the SMTP command parser (RFC 5321, 1870, 3461, 6152,
 * 6531, 3030). It takes one command line without its CRLF and returns the
 * verb and checked arguments; it does no I/O.
 */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "gateway.h"
#include "../common/util.h"

static const struct {
    const char *name;
    enum smtp_verb verb;
} verbs[] = {
    { "HELO", SMTP_HELO }, { "EHLO", SMTP_EHLO }, { "MAIL", SMTP_MAIL }, { "RCPT", SMTP_RCPT },
    { "DATA", SMTP_DATA }, { "BDAT", SMTP_BDAT }, { "RSET", SMTP_RSET }, { "NOOP", SMTP_NOOP },
    { "QUIT", SMTP_QUIT }, { "VRFY", SMTP_VRFY }, { "EXPN", SMTP_EXPN }, { "HELP", SMTP_HELP },
    { "STARTTLS", SMTP_STARTTLS }, { "AUTH", SMTP_AUTH },
};

enum smtp_verb
smtp_parser_verb(const char *line, const char **args_r)
{
    size_t n = strcspn(line, " ");
    const char *args = line + n;
    while (*args == ' ')
        args++;
    *args_r = args;
    for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
        if (strlen(verbs[i].name) == n && strncasecmp(line, verbs[i].name, n) == 0)
            return verbs[i].verb;
    return SMTP_UNKNOWN;
}

static bool
atext(unsigned char c)
{
    return c != 0 && (isalnum(c) || strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

/* Domain or address literal. utf8 allows U-labels (SMTPUTF8). */
static bool
valid_domain(const char *d, size_t n, bool utf8)
{
    if (n == 0 || n > 255)
        return false;
    if (d[0] == '[') {          /* address literal: [1.2.3.4] or [IPv6:...] */
        if (d[n - 1] != ']' || n < 3)
            return false;
        for (size_t i = 1; i < n - 1; i++)
            if (!(isalnum((unsigned char)d[i]) || d[i] == '.' || d[i] == ':'))
                return false;
        return true;
    }
    size_t label = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)d[i];
        if (c == '.') {
            if (label == 0 || d[i - 1] == '-')
                return false;
            label = 0;
            continue;
        }
        if (!(isalnum(c) || c == '-' || c == '_' || (utf8 && c >= 0x80)))
            return false;
        if (label == 0 && c == '-')
            return false;
        if (++label > 63)
            return false;
    }
    return label > 0 || (n > 1);    /* allow one trailing dot */
}

static bool
valid_local(const char *l, size_t n, bool utf8)
{
    if (n == 0 || n > 64 * 4)
        return false;
    if (l[0] == '"') {              /* quoted-string */
        if (n < 2 || l[n - 1] != '"')
            return false;
        for (size_t i = 1; i < n - 1; i++) {
            unsigned char c = (unsigned char)l[i];
            if (c == '\\') {
                if (++i >= n - 1 || (unsigned char)l[i] < 0x20)
                    return false;
            } else if (c < 0x20 || c == '"' || c == 0x7f || (c >= 0x80 && !utf8)) {
                return false;
            }
        }
        return true;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)l[i];
        if (c == '.') {
            if (i == 0 || i == n - 1 || l[i - 1] == '.')
                return false;
        } else if (!atext(c) && !(utf8 && c >= 0x80)) {
            return false;
        }
    }
    return true;
}

/* Parse "<path>" at *sp (after "FROM:" / "TO:"). Accepts a space after the
 * colon and an address without brackets, as deployed clients send them. */
static int
parse_path(const char **sp, char *out, bool allow_null, bool utf8, const char **why)
{
    const char *s = *sp;
    while (*s == ' ')
        s++;
    bool bracket = *s == '<';
    if (bracket)
        s++;
    const char *start = s;
    bool inquote = false;
    while (*s && (inquote || (*s != '>' && *s != ' '))) {
        if (*s == '"')
            inquote = !inquote;
        else if (*s == '\\' && inquote && s[1])
            s++;
        s++;
    }
    if (bracket) {
        if (*s != '>') {
            *why = "missing '>'";
            return -1;
        }
    }
    size_t n = (size_t)(s - start);
    if (bracket)
        s++;
    if (*s && *s != ' ') {
        *why = "garbage after address";
        return -1;
    }
    /* Source routes "@a,@b:user@d" are ignored (RFC 5321 4.1.2). */
    if (n > 0 && start[0] == '@') {
        const char *colon = memchr(start, ':', n);
        if (colon == NULL) {
            *why = "bad source route";
            return -1;
        }
        n -= (size_t)(colon + 1 - start);
        start = colon + 1;
    }
    if (n == 0) {
        if (!allow_null || !bracket) {
            *why = "empty address";
            return -1;
        }
        out[0] = '\0';
        *sp = s;
        return 0;
    }
    if (n > SMTP_ADDR_MAX) {
        *why = "address too long";
        return -1;
    }
    const char *at = NULL;
    for (const char *p = start + n - 1; p >= start; p--)
        if (*p == '@') {
            at = p;
            break;
        }
    if (at == NULL) {
        *why = "address needs a domain";
        return -1;
    }
    if (!valid_local(start, (size_t)(at - start), utf8) ||
        !valid_domain(at + 1, (size_t)(start + n - at - 1), utf8)) {
        *why = utf8 ? "bad address syntax" : "bad address syntax (8-bit needs SMTPUTF8)";
        return -1;
    }
    memcpy(out, start, n);
    out[n] = '\0';
    *sp = s;
    return 0;
}

static bool
has_8bit(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80)
            return true;
    return false;
}

/* xtext (RFC 3461): printable ASCII except '+' and '=', or "+HH". */
static bool
valid_xtext(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '+') {
            if (i + 2 >= n || !isxdigit((unsigned char)s[i + 1]) || !isxdigit((unsigned char)s[i + 2]))
                return false;
            i += 2;
        } else if (c < 33 || c > 126 || c == '=') {
            return false;
        }
    }
    return true;
}

/* Iterate "KEY[=VALUE]" parameters separated by spaces. */
static int
next_param(const char **sp, char *key, size_t ksize, char *val, size_t vsize)
{
    const char *s = *sp;
    while (*s == ' ')
        s++;
    if (*s == '\0')
        return 0;
    size_t n = strcspn(s, " ");
    const char *eq = memchr(s, '=', n);
    size_t kl = eq ? (size_t)(eq - s) : n;
    if (kl == 0 || kl >= ksize)
        return -1;
    memcpy(key, s, kl);
    key[kl] = '\0';
    val[0] = '\0';
    if (eq) {
        size_t vl = n - kl - 1;
        if (vl >= vsize)
            return -1;
        memcpy(val, eq + 1, vl);
        val[vl] = '\0';
    }
    *sp = s + n;
    return 1;
}

int
smtp_parser_mail(const char *args, struct smtp_mail_args *out, const char **why)
{
    memset(out, 0, sizeof(*out));
    if (!str_iprefix(args, "FROM:")) {
        *why = "use MAIL FROM:<address>";
        return -1;
    }
    const char *s = args + 5;
    /* SMTPUTF8 may appear after the address: look ahead for it first. */
    bool utf8 = strcasestr(s, " SMTPUTF8") != NULL;
    if (parse_path(&s, out->addr, true, utf8, why) < 0)
        return -1;
    char key[32], val[600];
    int r;
    while ((r = next_param(&s, key, sizeof(key), val, sizeof(val))) > 0) {
        if (str_ieq(key, "SIZE")) {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(val, &end, 10);
            if (val[0] == '\0' || *end || errno || val[0] == '-') {
                *why = "bad SIZE value";
                return -1;
            }
            out->has_size = true;
            out->size = v;
        } else if (str_ieq(key, "BODY")) {
            if (str_ieq(val, "7BIT"))
                out->body = SMTP_BODY_7BIT;
            else if (str_ieq(val, "8BITMIME"))
                out->body = SMTP_BODY_8BITMIME;
            else {
                *why = "BODY must be 7BIT or 8BITMIME";
                return -1;
            }
        } else if (str_ieq(key, "SMTPUTF8") && val[0] == '\0') {
            out->smtputf8 = true;
        } else if (str_ieq(key, "REQUIRETLS") && val[0] == '\0') {
            out->requiretls = true;     /* RFC 8689; smtp_tx.c wants TLS */
        } else if (str_ieq(key, "RET")) {
            if (str_ieq(val, "FULL"))
                out->ret_full = true;
            else if (str_ieq(val, "HDRS"))
                out->ret_hdrs = true;
            else {
                *why = "RET must be FULL or HDRS";
                return -1;
            }
        } else if (str_ieq(key, "ENVID")) {
            if (strlen(val) >= sizeof(out->envid) || !valid_xtext(val, strlen(val))) {
                *why = "bad ENVID";
                return -1;
            }
            str_copy(out->envid, val, sizeof(out->envid));
        } else if (str_ieq(key, "AUTH")) {
            if (strlen(val) >= sizeof(out->auth)) {
                *why = "bad AUTH parameter";
                return -1;
            }
            str_copy(out->auth, val, sizeof(out->auth));
        } else {
            *why = "unsupported MAIL parameter";
            return -2;
        }
    }
    if (r < 0) {
        *why = "bad parameter syntax";
        return -1;
    }
    if (!out->smtputf8 && has_8bit(out->addr)) {
        *why = "8-bit address needs SMTPUTF8";
        return -1;
    }
    return 0;
}

int
smtp_parser_rcpt(const char *args, struct smtp_rcpt_args *out, const char **why)
{
    memset(out, 0, sizeof(*out));
    if (!str_iprefix(args, "TO:")) {
        *why = "use RCPT TO:<address>";
        return -1;
    }
    const char *s = args + 3;
    if (parse_path(&s, out->addr, false, true, why) < 0)
        return -1;
    char key[32], val[600];
    int r;
    while ((r = next_param(&s, key, sizeof(key), val, sizeof(val))) > 0) {
        if (str_ieq(key, "NOTIFY")) {
            /* NEVER, or a list of SUCCESS, FAILURE, DELAY */
            if (strlen(val) >= sizeof(out->notify) || val[0] == '\0') {
                *why = "bad NOTIFY";
                return -1;
            }
            char tmp[64];
            str_copy(tmp, val, sizeof(tmp));
            bool never = false, other = false;
            for (char *save, *t = strtok_r(tmp, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                if (str_ieq(t, "NEVER"))
                    never = true;
                else if (str_ieq(t, "SUCCESS") || str_ieq(t, "FAILURE") || str_ieq(t, "DELAY"))
                    other = true;
                else {
                    *why = "bad NOTIFY";
                    return -1;
                }
            }
            if (never && other) {
                *why = "NOTIFY=NEVER cannot be combined";
                return -1;
            }
            str_copy(out->notify, val, sizeof(out->notify));
        } else if (str_ieq(key, "ORCPT")) {
            const char *semi = strchr(val, ';');
            if (semi == NULL || semi == val || strlen(val) >= sizeof(out->orcpt) ||
                !valid_xtext(semi + 1, strlen(semi + 1))) {
                *why = "bad ORCPT";
                return -1;
            }
            str_copy(out->orcpt, val, sizeof(out->orcpt));
        } else {
            *why = "unsupported RCPT parameter";
            return -2;
        }
    }
    if (r < 0) {
        *why = "bad parameter syntax";
        return -1;
    }
    return 0;
}

int
smtp_parser_helo(const char *args, char *domain, size_t size, const char **why)
{
    size_t n = strcspn(args, " ");
    if (n == 0) {
        *why = "hostname required";
        return -1;
    }
    if (n >= size || !valid_domain(args, n, true)) {
        *why = "invalid hostname";
        return -1;
    }
    memcpy(domain, args, n);
    domain[n] = '\0';
    return 0;
}

int
smtp_parser_bdat(const char *args, uint64_t *size, bool *last, const char **why)
{
    char *end;
    errno = 0;
    if (!isdigit((unsigned char)args[0])) {
        *why = "BDAT needs a chunk size";
        return -1;
    }
    unsigned long long v = strtoull(args, &end, 10);
    if (errno || (end - args) > 19) {
        *why = "bad chunk size";
        return -1;
    }
    while (*end == ' ')
        end++;
    *last = false;
    if (str_ieq(end, "LAST"))
        *last = true;
    else if (*end) {
        *why = "garbage after chunk size";
        return -1;
    }
    *size = v;
    return 0;
}

const char *
smtp_parser_domain(const char *addr)
{
    const char *at = strrchr(addr, '@');
    return at ? at + 1 : "";
}
