/*
 * arc_canon.c -- the DKIM canonicalizations (RFC 6376 3.4) that ARC signs
 * with (RFC 8617 4.1.3: ARC-Message-Signature as DKIM; ARC-Seal always
 * relaxed): simple and relaxed, for a header field and for the body.
 * libopendkim keeps its own to itself. Pure: bytes in, bytes out.
 */
#include <string.h>
#include <strings.h>
#include "arc.h"

static bool
wsp(char c)
{
    return c == ' ' || c == '\t';
}

int
arc_canon_parse(const char *s, size_t len, enum arc_canon *hdr_r, enum arc_canon *body_r)
{
    const char *slash = memchr(s, '/', len);
    size_t hl = slash ? (size_t)(slash - s) : len;
    enum arc_canon v[2] = { ARC_CANON_SIMPLE, ARC_CANON_SIMPLE };
    const char *part[2] = { s, slash ? slash + 1 : NULL };
    size_t plen[2] = { hl, slash ? len - hl - 1 : 0 };
    for (int i = 0; i < 2; i++) {
        if (part[i] == NULL)
            continue;
        if (plen[i] == 6 && strncasecmp(part[i], "simple", 6) == 0)
            v[i] = ARC_CANON_SIMPLE;
        else if (plen[i] == 7 && strncasecmp(part[i], "relaxed", 7) == 0)
            v[i] = ARC_CANON_RELAXED;
        else
            return -1;
    }
    *hdr_r = v[0];
    *body_r = v[1];
    return 0;
}

size_t
arc_canon_header(enum arc_canon c, const char *name, size_t nlen, const char *val, size_t vlen,
                 bool crlf, char *out, size_t outsize)
{
    size_t o = 0;
    if (c == ARC_CANON_SIMPLE) {
        size_t n = (size_t)(val + vlen - name);
        if (val < name || n + 3 > outsize)
            return 0;
        memcpy(out, name, n);
        o = n;
    } else {
        if (nlen + 4 > outsize)
            return 0;
        for (size_t i = 0; i < nlen; i++)
            out[o++] = (char)(name[i] >= 'A' && name[i] <= 'Z' ? name[i] + 32 : name[i]);
        out[o++] = ':';
        bool space = false, started = false;
        for (size_t i = 0; i < vlen; i++) {
            char ch = val[i];
            if (ch == '\r' || ch == '\n')
                continue;               /* unfold */
            if (wsp(ch)) {
                space = started;        /* none after the colon */
                continue;
            }
            if (o + 2 + 3 > outsize)
                return 0;
            if (space)
                out[o++] = ' ';
            space = false;
            started = true;
            out[o++] = ch;
        }
    }
    if (crlf) {
        out[o++] = '\r';
        out[o++] = '\n';
    }
    out[o] = '\0';
    return o;
}

/* The body: lines are found here and handed out canonicalized; empty
 * lines are held back until a line with text follows, since those at the
 * end are dropped (both canonicalizations). */
void
arc_canon_body(enum arc_canon c, const char *body, size_t len, arc_emit_fn *emit, void *arg)
{
    static const char crlf[] = "\r\n";
    size_t empty = 0;           /* empty lines held back */
    bool any = false;
    char buf[1024];
    const char *p = body, *end = body + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;     /* the line without its end */
        if (le > p && le[-1] == '\r' && nl)
            le--;
        size_t n = (size_t)(le - p);
        if (c == ARC_CANON_RELAXED)         /* trailing blanks go */
            while (n > 0 && wsp(p[n - 1]))
                n--;
        if (n == 0) {
            empty++;
        } else {
            for (; empty > 0; empty--)
                emit(arg, crlf, 2);
            if (c == ARC_CANON_SIMPLE) {
                emit(arg, p, n);
            } else {
                size_t o = 0;
                for (size_t i = 0; i < n; i++) {
                    bool w = wsp(p[i]);
                    if (w && i > 0 && wsp(p[i - 1]))
                        continue;           /* a run of blanks is one space */
                    if (o == sizeof(buf)) {
                        emit(arg, buf, o);
                        o = 0;
                    }
                    buf[o++] = w ? ' ' : p[i];
                }
                emit(arg, buf, o);
            }
            emit(arg, crlf, 2);
            any = true;
        }
        p = nl ? nl + 1 : end;
    }
    /* simple: an empty body is one CRLF (RFC 6376 3.4.3); relaxed: nothing */
    if (!any && c == ARC_CANON_SIMPLE)
        emit(arg, crlf, 2);
}
