/*
 * arc_set.c -- what ARC reads of a message (RFC 8617 4): the tag=value
 * lists of its fields (RFC 6376 3.2), the header fields and body, and the
 * ARC sets, ARC-Authentication-Results, ARC-Message-Signature and
 * ARC-Seal of one instance each, checked for form (5.2 steps 1-2). Pure
 * and bounded: the fuzz target fuzz_arc drives it with any bytes.
 */
#include <string.h>
#include <strings.h>
#include "arc.h"
#include "filters.h"

static bool
fws(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static bool
tag_name_char(char c, bool first)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (!first && ((c >= '0' && c <= '9') || c == '_'));
}

int
arc_tags_parse(const char *s, size_t len, struct arc_tags *t)
{
    t->n = 0;
    size_t i = 0;
    while (i < len) {
        size_t start = i;
        const char *semi = memchr(s + i, ';', len - i);
        size_t e = semi ? (size_t)(semi - s) : len;
        i = semi ? e + 1 : len;
        /* one tag-spec, s[start..e): [FWS] name [FWS] "=" [FWS] value [FWS] */
        size_t a = start, b = e;
        while (a < b && fws(s[a]))
            a++;
        while (b > a && fws(s[b - 1]))
            b--;
        if (a == b) {
            if (semi == NULL)
                break;          /* a final ";" is allowed */
            return -1;
        }
        size_t n0 = a;
        while (a < b && tag_name_char(s[a], a == n0))
            a++;
        size_t nlen = a - n0;
        while (a < b && fws(s[a]))
            a++;
        if (nlen == 0 || a == b || s[a] != '=')
            return -1;
        a++;
        while (a < b && fws(s[a]))
            a++;
        for (size_t k = 0; k < t->n; k++)
            if (t->t[k].nlen == nlen && memcmp(t->t[k].name, s + n0, nlen) == 0)
                return -1;      /* twice: RFC 6376 3.2 */
        if (t->n == ARC_MAX_TAGS)
            return -1;
        t->t[t->n++] = (struct arc_tag){ s + n0, nlen, s + a, b - a };
    }
    return 0;
}

const char *
arc_tag(const struct arc_tags *t, const char *name, size_t *vlen_r)
{
    size_t n = strlen(name);
    for (size_t k = 0; k < t->n; k++)
        if (t->t[k].nlen == n && memcmp(t->t[k].name, name, n) == 0) {
            *vlen_r = t->t[k].vlen;
            return t->t[k].val;
        }
    return NULL;
}

/* "N" with nothing else: 1..50, else 0. */
static unsigned
instance_number(const char *v, size_t n)
{
    if (n == 0 || n > 2 || v[0] == '0')
        return 0;
    unsigned x = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return 0;
        x = x * 10 + (unsigned)(v[i] - '0');
    }
    return x >= 1 && x <= ARC_MAX_I ? x : 0;
}

unsigned
arc_instance(enum arc_kind k, const char *val, size_t vlen)
{
    if (k == ARC_AAR) {
        /* "i=N; authserv-id; results": only the first tag is one */
        const char *semi = memchr(val, ';', vlen);
        struct arc_tags t;
        size_t l;
        if (semi == NULL || arc_tags_parse(val, (size_t)(semi - val), &t) < 0 || t.n != 1)
            return 0;
        const char *v = arc_tag(&t, "i", &l);
        return v ? instance_number(v, l) : 0;
    }
    struct arc_tags t;
    size_t l;
    if (arc_tags_parse(val, vlen, &t) < 0)
        return 0;
    const char *v = arc_tag(&t, "i", &l);
    return v ? instance_number(v, l) : 0;
}

size_t
arc_strip_b(const char *val, size_t vlen, char *out, size_t outsize)
{
    size_t o = 0, i = 0;
    bool found = false;
    while (i < vlen) {
        const char *semi = memchr(val + i, ';', vlen - i);
        size_t e = semi ? (size_t)(semi - val) : vlen;
        size_t a = i;
        while (a < e && fws(val[a]))
            a++;
        size_t keep_to = e;     /* copy val[i..keep_to) */
        if (!found && a < e && val[a] == 'b') {
            size_t q = a + 1;
            while (q < e && fws(val[q]))
                q++;
            if (q < e && val[q] == '=') {
                keep_to = q + 1;        /* "b=" stays, its value goes */
                found = true;
            }
        }
        size_t n = keep_to - i;
        if (o + n + 2 > outsize)
            return 0;
        memcpy(out + o, val + i, n);
        o += n;
        if (semi)
            out[o++] = ';';
        i = semi ? e + 1 : vlen;
    }
    out[o] = '\0';
    return found ? o : 0;
}

static const char *const kind_name[] = { "ARC-Authentication-Results", "ARC-Message-Signature",
                                         "ARC-Seal" };

int
arc_msg_parse(const char *msg, size_t len, struct arc_msg *m)
{
    memset(m, 0, sizeof(*m));
    const char *p = msg, *end = msg + len, *next;
    struct header_field f;
    while ((next = header_next(p, end, &f)) != NULL) {
        p = next;
        if (f.name == NULL)
            continue;           /* a line without a colon: not a field */
        if (m->nfield == ARC_MAX_FIELDS)
            return -1;
        m->field[m->nfield++] = (struct arc_field){ f.name, f.nlen, f.val, f.vlen };
        for (int k = 0; k < 3; k++) {
            if (f.nlen != strlen(kind_name[k]) || strncasecmp(f.name, kind_name[k], f.nlen) != 0)
                continue;
            unsigned i = arc_instance((enum arc_kind)k, f.val, f.vlen);
            if (i == 0) {
                m->bad = "an ARC field without a valid instance (i=1..50)";
            } else if (m->set[i].f[k].name != NULL) {
                m->bad = "two ARC fields of one kind in one instance";
            } else {
                m->set[i].f[k] = (struct arc_field){ f.name, f.nlen, f.val, f.vlen };
                if (i > m->n)
                    m->n = i;
            }
        }
    }
    /* the body: after the empty line (CRLF or a bare LF) */
    if (p < end && *p == '\r')
        p++;
    if (p < end && *p == '\n')
        p++;
    m->body = p;
    m->body_len = (size_t)(end - p);
    if (m->bad && m->n == 0)
        m->n = 1;               /* ARC fields there, all unreadable: a chain that fails */
    for (unsigned i = 1; i <= m->n && m->bad == NULL; i++)
        for (int k = 0; k < 3; k++)
            if (m->set[i].f[k].name == NULL)
                m->bad = "an ARC set is incomplete or missing";
    return 0;
}
