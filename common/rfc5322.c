/*
 * rfc5322.c -- the one walk over the header fields of a message (RFC 5322
 * 2.2): a bounded scan of bytes in memory, no copy, no I/O. A field runs
 * from its name to the line end that is not followed by white space
 * (folding, 2.2.3); the header ends at the first empty line, CRLF or a
 * bare LF (what broken mail has). Every role reads headers with it: the
 * gateway (Message-ID, From, the Authentication-Results it removes), the
 * filters (filter_header and the plugins' walk on top), delivery (loops,
 * the spam flag, the bounce's copy of the header), the mail store's MIME
 * structure and the web role's message view.
 */
#include <string.h>
#include <strings.h>
#include "mail.h"

/* Is p the start of the empty line that ends the header? */
static bool
empty_line(const char *p, const char *end)
{
    return *p == '\n' || (*p == '\r' && p + 1 < end && p[1] == '\n');
}

const char *
rfc5322_next(const char *p, const char *end, struct rfc5322_field *f)
{
    memset(f, 0, sizeof(*f));
    if (p == NULL || p >= end || empty_line(p, end))
        return NULL;
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
    const char *colon = memchr(start, ':', (size_t)(q - start));
    if (colon && colon > start) {
        f->name = start;
        f->nlen = (size_t)(colon - start);
        while (f->nlen && (start[f->nlen - 1] == ' ' || start[f->nlen - 1] == '\t'))
            f->nlen--;
        f->val = colon + 1;
        const char *ve = q;
        if (ve > f->val && ve[-1] == '\n')
            ve--;
        if (ve > f->val && ve[-1] == '\r')
            ve--;
        f->vlen = (size_t)(ve - f->val);
    }
    return q;
}

bool
rfc5322_is(const struct rfc5322_field *f, const char *name)
{
    size_t n = strlen(name);
    return f->name && f->nlen == n && strncasecmp(f->name, name, n) == 0;
}

const char *
rfc5322_find(const char *p, const char *end, const char *name, size_t nth, size_t *len_r)
{
    struct rfc5322_field f;
    while ((p = rfc5322_next(p, end, &f)) != NULL) {
        if (!rfc5322_is(&f, name) || nth-- > 0)
            continue;
        *len_r = f.vlen;
        return f.val;
    }
    return NULL;
}

size_t
rfc5322_header_len(const char *p, size_t n)
{
    if (p == NULL)
        return 0;
    const char *q = p, *next;
    struct rfc5322_field f;
    while ((next = rfc5322_next(q, p + n, &f)) != NULL)
        q = next;
    return (size_t)(q - p);
}
