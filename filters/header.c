/*
 * header.c -- header fields of a message for the plugins (filter_header in
 * filter.h): a bounded scan of the header block of the mapped message, no
 * copy. A field runs from its name to the CRLF that is not followed by
 * white space (RFC 5322 folding); the header ends at the first empty line.
 */
#include <string.h>
#include <strings.h>
#include "filter.h"

const char *
filter_header(const struct filter_msg *m, const char *name, size_t nth, size_t *len_r)
{
    const char *p = m->data, *end = m->data ? m->data + m->len : NULL;
    size_t nlen = strlen(name);
    while (p && p < end) {
        if (*p == '\r' || *p == '\n')
            return NULL;                        /* the empty line: end of the header */
        const char *start = p, *q = p;
        /* the field, with its continuation lines */
        for (;;) {
            const char *nl = memchr(q, '\n', (size_t)(end - q));
            if (nl == NULL) {
                q = end;
                break;
            }
            q = nl + 1;
            if (q >= end || (*q != ' ' && *q != '\t'))
                break;
        }
        p = q;
        if ((size_t)(q - start) <= nlen || strncasecmp(start, name, nlen) != 0)
            continue;
        const char *v = start + nlen;
        while (v < q && (*v == ' ' || *v == '\t'))
            v++;
        if (v >= q || *v != ':')
            continue;
        if (nth-- > 0)
            continue;
        v++;
        const char *ve = q;
        if (ve > v && ve[-1] == '\n')
            ve--;
        if (ve > v && ve[-1] == '\r')
            ve--;
        *len_r = (size_t)(ve - v);
        return v;
    }
    return NULL;
}
