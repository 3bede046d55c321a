/* Fuzz target: the DSN parameters of MAIL (RET, ENVID) and RCPT (NOTIFY,
 * ORCPT) as the gateway parses them (gateway/smtp_parser.c, RFC 3461):
 * the input is the parameter text after an address. What is accepted must
 * be what the queue file may carry: xtext only, bounded, ORCPT typed. */
#include <ctype.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "../../gateway/gateway.h"

static bool
xtext(const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '+') {
            if (!isxdigit((unsigned char)s[1]) || !isxdigit((unsigned char)s[2]))
                return false;
            s += 2;
        } else if (c < 33 || c > 126 || c == '=') {
            return false;
        }
    }
    return true;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096)
        return 0;
    char line[4200];
    const char *why = NULL;
    size_t n = strnlen((const char *)data, size);   /* a command line has no NUL */
    memcpy(line, "FROM:<a@b.example> ", 19);
    memcpy(line + 19, data, n);
    line[19 + n] = '\0';
    struct smtp_mail_args m;
    if (smtp_parser_mail(line, &m, &why) == 0) {
        if (strnlen(m.envid, sizeof(m.envid)) == sizeof(m.envid) || !xtext(m.envid))
            __builtin_trap();
    } else if (why == NULL) {
        __builtin_trap();
    }
    memcpy(line, "TO:<c@d.example> ", 17);
    memcpy(line + 17, data, n);
    line[17 + n] = '\0';
    struct smtp_rcpt_args r;
    why = NULL;
    if (smtp_parser_rcpt(line, &r, &why) == 0) {
        if (strnlen(r.orcpt, sizeof(r.orcpt)) == sizeof(r.orcpt) ||
            strnlen(r.notify, sizeof(r.notify)) == sizeof(r.notify))
            __builtin_trap();
        if (r.orcpt[0]) {
            const char *semi = strchr(r.orcpt, ';');
            if (semi == NULL || semi == r.orcpt || !xtext(semi + 1))
                __builtin_trap();
        }
        bool never = false, other = false;
        char tmp[64];
        memcpy(tmp, r.notify, sizeof(tmp));
        for (char *save, *t = strtok_r(tmp, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            if (strcasecmp(t, "NEVER") == 0)
                never = true;
            else if (strcasecmp(t, "SUCCESS") == 0 || strcasecmp(t, "FAILURE") == 0 ||
                     strcasecmp(t, "DELAY") == 0)
                other = true;
            else
                __builtin_trap();
        }
        if (never && other)
            __builtin_trap();
    } else if (why == NULL) {
        __builtin_trap();
    }
    return 0;
}
