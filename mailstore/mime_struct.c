/*
 * mime_struct.c -- the MIME structure of a stored message as IMAP needs it
 * (BODYSTRUCTURE, BODY[section]): for every part the byte offsets of its
 * header and body, its type, parameters, encoding, size and lines, the
 * parts of a multipart and the message inside a message/rfc822. Offsets
 * into the message as stored, so sections are served byte for byte.
 * Bounded: depth and part count; a part without its closing boundary ends
 * where its parent does (what deployed parsers do with broken mail).
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "mime_struct.h"
#include "../common/mail.h"

#define MAX_PARTS 2000
#define MAX_DEPTH 20

/* The end of the header block: the offset of the empty line's start, and
 * of the body (after it). */
void
mime_split_header(const char *p, size_t n, size_t *hlen, size_t *body)
{
    *hlen = rfc5322_header_len(p, n);
    *body = *hlen == n ? n : *hlen + (p[*hlen] == '\n' ? 1 : 2);
}

const char *
mime_header(const char *p, size_t hlen, const char *name, size_t *len_r)
{
    return rfc5322_find(p, p + hlen, name, 0, len_r);
}

/* Unfold and trim a header value into out. */
static void
unfold(const char *v, size_t n, char *out, size_t size)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o + 1 < size; i++) {
        char c = v[i];
        if (c == '\r' || c == '\n')
            continue;
        if (c == '\t')
            c = ' ';
        out[o++] = c;
    }
    while (o > 0 && out[o - 1] == ' ')
        o--;
    size_t s = 0;
    while (s < o && out[s] == ' ')
        s++;
    memmove(out, out + s, o - s);
    out[o - s] = '\0';
}

/* Content-Type: type/subtype; a=b; c="d" -- into the part. */
static void
parse_ctype(struct mime_part *mp, const char *v, size_t n, bool digest_parent)
{
    char buf[2048];
    unfold(v ? v : "", v ? n : 0, buf, sizeof(buf));
    str_copy(mp->type, digest_parent ? "message" : "text", sizeof(mp->type));
    str_copy(mp->subtype, digest_parent ? "rfc822" : "plain", sizeof(mp->subtype));
    if (v == NULL || buf[0] == '\0')
        return;
    char *p = buf, *semi = strchr(buf, ';');
    if (semi)
        *semi = '\0';
    char *slash = strchr(p, '/');
    if (slash) {
        *slash = '\0';
        char t[64], st[64];
        unfold(p, strlen(p), t, sizeof(t));
        unfold(slash + 1, strlen(slash + 1), st, sizeof(st));
        if (t[0] && st[0]) {
            str_copy(mp->type, t, sizeof(mp->type));
            str_copy(mp->subtype, st, sizeof(mp->subtype));
        }
    }
    for (char *q = mp->type; *q; q++)
        *q = (char)tolower((unsigned char)*q);
    for (char *q = mp->subtype; *q; q++)
        *q = (char)tolower((unsigned char)*q);
    /* parameters */
    char *rest = semi ? semi + 1 : NULL;
    while (rest && *rest && mp->nparams < MIME_MAX_PARAMS) {
        while (*rest == ' ' || *rest == ';')
            rest++;
        char *eq = strchr(rest, '=');
        if (eq == NULL)
            break;
        *eq = '\0';
        char name[64];
        unfold(rest, strlen(rest), name, sizeof(name));
        char *val = eq + 1;
        while (*val == ' ')
            val++;
        char *next;
        char value[512];
        if (*val == '"') {
            size_t o = 0;
            char *q = val + 1;
            while (*q && *q != '"' && o + 1 < sizeof(value)) {
                if (*q == '\\' && q[1])
                    q++;
                value[o++] = *q++;
            }
            value[o] = '\0';
            next = *q ? strchr(q + 1, ';') : NULL;
        } else {
            next = strchr(val, ';');
            if (next)
                *next = '\0';
            unfold(val, strlen(val), value, sizeof(value));
        }
        if (name[0]) {
            str_copy(mp->params[mp->nparams].name, name, sizeof(mp->params[0].name));
            str_copy(mp->params[mp->nparams].value, value, sizeof(mp->params[0].value));
            mp->nparams++;
        }
        rest = next ? next + 1 : NULL;
    }
}

const char *
mime_param(const struct mime_part *mp, const char *name)
{
    for (size_t i = 0; i < mp->nparams; i++)
        if (strcasecmp(mp->params[i].name, name) == 0)
            return mp->params[i].value;
    return NULL;
}

static size_t
count_lines(const char *p, size_t n)
{
    size_t lines = 0;
    for (size_t i = 0; i < n; i++)
        if (p[i] == '\n')
            lines++;
    if (n > 0 && p[n - 1] != '\n')
        lines++;
    return lines;
}

static struct mime_part *
new_part(struct mime_tree *t)
{
    if (t->n == MAX_PARTS)
        return NULL;
    if (t->n == t->cap) {               /* most mail has a handful of parts */
        t->cap = t->cap ? t->cap * 2 : 4;
        t->parts = xrealloc(t->parts, t->cap * sizeof(*t->parts));
    }
    struct mime_part *mp = &t->parts[t->n];
    memset(mp, 0, sizeof(*mp));
    mp->index = t->n++;
    mp->parent = -1;
    return mp;
}

/* Find "--boundary" at a line start from `from`; the offset of the line's
 * start (its preceding CRLF belongs to the boundary), or -1. */
static long
find_boundary(const char *p, size_t n, size_t from, const char *b, size_t bl, bool *closing)
{
    size_t i = from;
    while (i + 2 + bl <= n) {
        if ((i == 0 || p[i - 1] == '\n') && p[i] == '-' && p[i + 1] == '-' &&
            memcmp(p + i + 2, b, bl) == 0) {
            size_t e = i + 2 + bl;
            *closing = e + 1 < n && p[e] == '-' && p[e + 1] == '-';
            /* only white space may follow on the line */
            size_t k = e + (*closing ? 2 : 0);
            while (k < n && (p[k] == ' ' || p[k] == '\t'))
                k++;
            if (k >= n || p[k] == '\r' || p[k] == '\n')
                return (long)i;
        }
        const char *nl = memchr(p + i, '\n', n - i);
        if (nl == NULL)
            break;
        i = (size_t)(nl - p) + 1;
    }
    return -1;
}

static size_t
line_end(const char *p, size_t n, size_t i)
{
    const char *nl = memchr(p + i, '\n', n - i);
    return nl ? (size_t)(nl - p) + 1 : n;
}

static int parse_entity(struct mime_tree *t, const char *p, size_t off, size_t len, int parent,
                        unsigned depth, bool digest_parent);

/* The parts inside part idx. t->parts may move while they are added:
 * only indexes and copies are kept across the recursion. */
static void
parse_body(struct mime_tree *t, int idx, const char *p, unsigned depth)
{
    const struct mime_part *mp = &t->parts[idx];
    size_t boff = mp->body_off, blen = mp->body_len;
    bool multipart = strcmp(mp->type, "multipart") == 0;
    bool rfc822 = strcmp(mp->type, "message") == 0 && strcasecmp(mp->subtype, "rfc822") == 0;
    bool digest = multipart && strcmp(mp->subtype, "digest") == 0;
    char b[512];
    const char *bp = multipart ? mime_param(mp, "boundary") : NULL;
    str_copy(b, bp ? bp : "", sizeof(b));
    if (multipart) {
        if (b[0] == '\0' || depth >= MAX_DEPTH)
            return;
        size_t bl = strlen(b);
        const char *q = p + boff;
        bool closing = false;
        long first = find_boundary(q, blen, 0, b, bl, &closing);
        if (first < 0)
            return;
        size_t start = line_end(q, blen, (size_t)first);
        while (!closing && start <= blen) {
            long next = find_boundary(q, blen, start, b, bl, &closing);
            size_t end = next < 0 ? blen : (size_t)next;
            /* the CRLF before the boundary line belongs to it */
            size_t pe = end;
            if (next >= 0 && pe > start && q[pe - 1] == '\n')
                pe--;
            if (next >= 0 && pe > start && q[pe - 1] == '\r')
                pe--;
            if (parse_entity(t, p, boff + start, pe - start, idx, depth + 1, digest) < 0)
                return;
            if (next < 0)
                break;
            start = line_end(q, blen, (size_t)next);
        }
        return;
    }
    if (rfc822 && depth < MAX_DEPTH)
        parse_entity(t, p, boff, blen, idx, depth + 1, false);
}

static int
parse_entity(struct mime_tree *t, const char *p, size_t off, size_t len, int parent,
             unsigned depth, bool digest_parent)
{
    struct mime_part *mp = new_part(t);
    if (mp == NULL)
        return -1;
    mp->parent = parent;
    mp->off = off;
    size_t hlen, body;
    mime_split_header(p + off, len, &hlen, &body);
    mp->header_len = body;              /* with the empty line */
    mp->body_off = off + body;
    mp->body_len = len - body;
    mp->lines = count_lines(p + mp->body_off, mp->body_len);
    size_t vl;
    const char *v = mime_header(p + off, hlen, "Content-Type", &vl);
    parse_ctype(mp, v, vl, digest_parent && v == NULL);
    char tmp[512];
    if ((v = mime_header(p + off, hlen, "Content-Transfer-Encoding", &vl)) != NULL) {
        unfold(v, vl, tmp, sizeof(tmp));
        for (char *q = tmp; *q; q++)
            *q = (char)toupper((unsigned char)*q);
        str_copy(mp->encoding, tmp, sizeof(mp->encoding));
    } else {
        str_copy(mp->encoding, "7BIT", sizeof(mp->encoding));
    }
    if ((v = mime_header(p + off, hlen, "Content-ID", &vl)) != NULL)
        unfold(v, vl, mp->id, sizeof(mp->id));
    if ((v = mime_header(p + off, hlen, "Content-Description", &vl)) != NULL)
        unfold(v, vl, mp->description, sizeof(mp->description));
    if ((v = mime_header(p + off, hlen, "Content-Disposition", &vl)) != NULL)
        unfold(v, vl, mp->disposition, sizeof(mp->disposition));
    if ((v = mime_header(p + off, hlen, "Content-Language", &vl)) != NULL)
        unfold(v, vl, mp->language, sizeof(mp->language));
    if ((v = mime_header(p + off, hlen, "Content-Location", &vl)) != NULL)
        unfold(v, vl, mp->location, sizeof(mp->location));
    if ((v = mime_header(p + off, hlen, "Content-MD5", &vl)) != NULL)
        unfold(v, vl, mp->md5, sizeof(mp->md5));
    /* link into the parent */
    int idx = mp->index;
    if (parent >= 0) {
        struct mime_part *pp = &t->parts[parent];
        if (pp->nchildren < MIME_MAX_CHILDREN)
            pp->children[pp->nchildren++] = idx;
    }
    parse_body(t, idx, p, depth);
    return 0;
}

struct mime_tree *
mime_parse_struct(const char *p, size_t n)
{
    struct mime_tree *t = xcalloc(1, sizeof(*t));
    parse_entity(t, p, 0, n, -1, 0, false);
    return t;
}

void
mime_tree_free(struct mime_tree **tp)
{
    if (*tp == NULL)
        return;
    free((*tp)->parts);
    free(*tp);
    *tp = NULL;
}

/* "1.2.3" from the root (the message): for a non-multipart message, 1 is
 * its body; the numbers after a message/rfc822 part go on inside the
 * message it carries (RFC 3501 6.4.5), the message itself too when it is
 * one (its body, part 1, is a message). */
const struct mime_part *
mime_section(const struct mime_tree *t, const char *spec, size_t len, size_t *used)
{
    const struct mime_part *cur = &t->parts[0];
    size_t i = 0;
    bool first = true;
    while (i < len && isdigit((unsigned char)spec[i])) {
        unsigned long k = 0;
        while (i < len && isdigit((unsigned char)spec[i]) && k < 100000)
            k = k * 10 + (unsigned long)(spec[i++] - '0');
        if (k == 0)
            return NULL;
        /* a message/rfc822's parts are its message's; the root's own
         * first number names its body, not yet the message inside */
        if (strcmp(cur->type, "message") == 0 && strcmp(cur->subtype, "rfc822") == 0 &&
            cur->nchildren == 1 && !(first && cur == &t->parts[0]))
            cur = &t->parts[cur->children[0]];
        if (strcmp(cur->type, "multipart") == 0) {
            if (k > cur->nchildren)
                return NULL;
            cur = &t->parts[cur->children[k - 1]];
        } else if (k != 1) {
            return NULL;
        }
        first = false;
        if (i < len && spec[i] == '.' && i + 1 < len && isdigit((unsigned char)spec[i + 1]))
            i++;
        else
            break;
    }
    *used = i;
    return cur;
}

void
mime_parse_type(struct mime_part *mp, const char *value)
{
    parse_ctype(mp, value, strlen(value), false);
}

struct mime_tree *
mime_parse_root(const char *p, size_t n)
{
    struct mime_tree *t = xcalloc(1, sizeof(*t));
    t->parts = xmalloc(sizeof(*t->parts));  /* one part, not four (12 KB each) */
    t->cap = 1;
    struct mime_part *mp = new_part(t);
    size_t hlen, body;
    mime_split_header(p, n, &hlen, &body);
    mp->header_len = body;
    mp->body_off = body;
    mp->body_len = n - body;
    str_copy(mp->type, "text", sizeof(mp->type));
    str_copy(mp->subtype, "plain", sizeof(mp->subtype));
    return t;
}
