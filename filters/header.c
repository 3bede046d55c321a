/*
 * header.c -- header fields of a message for the plugins, on top of the
 * one header walk (common/rfc5322.c): filter_header in filter.h, the nth
 * field of a name; header_next in filters.h, the fields one by one for
 * the built-in plugins that read many (the rules, the Bayes tokenizer),
 * which see no mail.h; and the author domain of the From field.
 */
#include <stdbool.h>
#include <string.h>
#include <strings.h>
#include "filters.h"
#include "../common/mail.h"

const char *
header_next(const char *p, const char *end, struct header_field *f)
{
    struct rfc5322_field r;
    p = rfc5322_next(p, end, &r);
    *f = (struct header_field){ r.name, r.nlen, r.val, r.vlen };
    return p;
}

const char *
filter_header(const struct filter_msg *m, const char *name, size_t nth, size_t *len_r)
{
    if (m->data == NULL)
        return NULL;
    return rfc5322_find(m->data, m->data + m->len, name, nth, len_r);
}

/* The addr-spec of one mailbox: the part in angle brackets if any, else
 * the text without comments. Returns the number of addresses seen. */
static int
mailbox_domain(const char *v, size_t n, char *out, size_t outsize)
{
    char buf[1024];
    size_t o = 0;
    int depth = 0, addrs = 0;
    bool quoted = false, angle = false, have_angle = false;
    for (size_t i = 0; i < n; i++) {
        char c = v[i];
        if (quoted) {
            if (c == '\\' && i + 1 < n)
                i++;
            else if (c == '"')
                quoted = false;
            continue;
        }
        if (depth > 0) {
            if (c == '\\' && i + 1 < n)
                i++;
            else if (c == '(')
                depth++;
            else if (c == ')')
                depth--;
            continue;
        }
        switch (c) {
        case '"': quoted = true; continue;
        case '(': depth = 1; continue;
        case '<':
            angle = have_angle = true;
            o = 0;
            continue;
        case '>': angle = false; continue;
        case ',':
            if (!angle) {
                if (o > 0 || have_angle)
                    addrs++;
                o = 0;
                have_angle = false;
                continue;
            }
            break;
        case ' ': case '\t': case '\r': case '\n':
            continue;
        default:
            break;
        }
        if (have_angle && !angle)
            continue;           /* text after the bracketed address */
        if (o + 1 < sizeof(buf))
            buf[o++] = c;
    }
    if (o > 0 || have_angle)
        addrs++;
    buf[o] = '\0';
    const char *at = strrchr(buf, '@');
    if (at == NULL || at[1] == '\0') {
        out[0] = '\0';
        return addrs;
    }
    size_t k = 0;
    for (const char *p = at + 1; *p && k + 1 < outsize; p++)
        out[k++] = (char)((*p >= 'A' && *p <= 'Z') ? *p + 32 : *p);
    while (k > 0 && out[k - 1] == '.')
        k--;
    out[k] = '\0';
    return addrs;
}

int
filter_from_domain(const struct filter_msg *m, char *out, size_t outsize)
{
    size_t len;
    out[0] = '\0';
    const char *v = filter_header(m, "From", 0, &len);
    if (v == NULL)
        return -1;
    size_t len2;
    if (filter_header(m, "From", 1, &len2) != NULL)
        return -2;
    int n = mailbox_domain(v, len, out, outsize);
    if (n > 1) {
        out[0] = '\0';
        return -2;
    }
    return out[0] ? 0 : -1;
}
