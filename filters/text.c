/*
 * text.c -- the message as text for the content filters (filter_text in
 * filter.h): the text parts in UTF-8 from the shared MIME parse, HTML
 * rendered to text, paragraphs as lines (the form SpamAssassin's body rules
 * expect), and the URLs of the text and of the HTML links with their
 * hosts. Made once per message; every size is bounded: as SpamAssassin 4
 * does, a part contributes at most BODY_PART_MAX bytes of rendered text
 * and RAW_PART_MAX bytes of raw text.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "filters.h"
#include "../common/util.h"

#define BODY_PART_MAX 50000
#define RAW_PART_MAX 500000
#define MAX_URIS 500
#define MAX_URI_LEN 2048

struct buf { char *p; size_t n, cap; };

struct mime_text {
    struct filter_text t;
    struct buf body, raw;
    char *subject;
    char **uris, **hosts;
    size_t nuri;
};

static void
buf_add(struct buf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->p = xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

/* ------------------------------------------------------------------ URIs */

static void
uri_add(struct mime_text *mt, const char *u, size_t n)
{
    while (n && (isspace((unsigned char)*u))) {
        u++;
        n--;
    }
    while (n && isspace((unsigned char)u[n - 1]))
        n--;
    if (n == 0 || n > MAX_URI_LEN || mt->nuri == MAX_URIS)
        return;
    char *s;
    if (strncasecmp(u, "www.", 4) == 0) {
        s = xmalloc(n + 8);
        memcpy(s, "http://", 7);
        memcpy(s + 7, u, n);
        s[n + 7] = '\0';
    } else if (strncasecmp(u, "http://", 7) == 0 || strncasecmp(u, "https://", 8) == 0) {
        s = xstrndup(u, n);
    } else {
        return;                         /* mailto:, cid:, relative links */
    }
    for (size_t i = 0; i < mt->nuri; i++)
        if (strcmp(mt->uris[i], s) == 0) {
            free(s);
            return;
        }
    /* the host: after "//", before the path, port or query; no userinfo */
    const char *h = strstr(s, "//") + 2;
    size_t hl = strcspn(h, "/?#\\");
    const char *at = memchr(h, '@', hl);
    if (at) {
        hl -= (size_t)(at + 1 - h);
        h = at + 1;
    }
    const char *colon = memchr(h, ':', hl);
    if (colon)
        hl = (size_t)(colon - h);
    while (hl && h[hl - 1] == '.')
        hl--;
    char *host = xstrndup(h, hl);
    for (char *p = host; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    if (mt->nuri % 16 == 0) {
        mt->uris = xrealloc(mt->uris, (mt->nuri + 16) * sizeof(char *));
        mt->hosts = xrealloc(mt->hosts, (mt->nuri + 16) * sizeof(char *));
    }
    mt->uris[mt->nuri] = s;
    mt->hosts[mt->nuri++] = host;
}

static void
uri_cb(const char *u, size_t n, void *ctx)
{
    uri_add(ctx, u, n);
}

/* URLs written out in text: http://, https:// and www. at a word start. */
static void
scan_uris(struct mime_text *mt, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char c = (char)(s[i] | 0x20);   /* 'h' or 'w' starts all three */
        if (c != 'h' && c != 'w')
            continue;
        if (i > 0 && (isalnum((unsigned char)s[i - 1]) || s[i - 1] == '.' || s[i - 1] == '/'))
            continue;
        size_t rest = n - i;
        bool hit = (rest > 7 && strncasecmp(s + i, "http://", 7) == 0) ||
                   (rest > 8 && strncasecmp(s + i, "https://", 8) == 0) ||
                   (rest > 4 && strncasecmp(s + i, "www.", 4) == 0);
        if (!hit)
            continue;
        size_t j = i;
        while (j < n && !isspace((unsigned char)s[j]) && !strchr("<>\"'()[]{}|^`", s[j]))
            j++;
        size_t e = j;
        while (e > i && strchr(".,;:!?", s[e - 1]))
            e--;
        uri_add(mt, s + i, e - i);
        i = j;
    }
}

/* ------------------------------------------------------------------ HTML */

static bool
tag_is(const char *name, size_t n, const char *want)
{
    return strlen(want) == n && strncasecmp(name, want, n) == 0;
}

static bool
block_tag(const char *name, size_t n)
{
    static const char *const tags[] = { "p", "br", "div", "tr", "li", "h1", "h2", "h3", "h4",
                                        "h5", "h6", "table", "ul", "ol", "blockquote", "hr",
                                        "title", "td", NULL };
    for (size_t i = 0; tags[i]; i++)
        if (tag_is(name, n, tags[i]))
            return true;
    return false;
}


/* An entity at s ("&amp;", "&#65;", "&#x41;"): its UTF-8 in o (at most 4
 * bytes), *used the bytes taken; 0 when it is no entity we know. */
static size_t
entity(const char *s, size_t n, char *o, size_t *used)
{
    static const struct { const char *name; unsigned long cp; } named[] = {
        { "amp", '&' }, { "lt", '<' }, { "gt", '>' }, { "quot", '"' }, { "apos", '\'' },
        { "nbsp", ' ' }, { "copy", 0xa9 }, { "reg", 0xae }, { "euro", 0x20ac },
        { "shy", 0 }, { "zwnj", 0 }, { "zwj", 0 },
    };
    size_t k = 1;
    while (k < n && k < 12 && s[k] != ';' && (isalnum((unsigned char)s[k]) || s[k] == '#'))
        k++;
    size_t len = k - 1;
    size_t end = k < n && s[k] == ';' ? k + 1 : k;
    if (len >= 2 && s[1] == '#') {
        unsigned long cp;
        char *e;
        if (s[2] == 'x' || s[2] == 'X')
            cp = strtoul(s + 3, &e, 16);
        else
            cp = strtoul(s + 2, &e, 10);
        if (e == s + 2 || cp > 0x10ffff || e > s + k)
            return 0;
        *used = end;
        return cp ? utf8_encode(o, cp) : 0;
    }
    for (size_t i = 0; i < sizeof(named) / sizeof(named[0]); i++)
        if (strlen(named[i].name) == len && strncmp(s + 1, named[i].name, len) == 0) {
            *used = end;
            return named[i].cp ? utf8_encode(o, named[i].cp) : 0;
        }
    return 0;
}

/* The value of attribute attr in a tag's text (between the name and '>'). */
static bool
attr_value(const char *t, size_t n, const char *attr, const char **v, size_t *vl)
{
    size_t al = strlen(attr);
    for (size_t i = 0; i + al < n; i++) {
        if (strncasecmp(t + i, attr, al) != 0 || (i > 0 && !isspace((unsigned char)t[i - 1])))
            continue;
        size_t j = i + al;
        while (j < n && isspace((unsigned char)t[j]))
            j++;
        if (j >= n || t[j] != '=')
            continue;
        j++;
        while (j < n && isspace((unsigned char)t[j]))
            j++;
        char q = j < n && (t[j] == '"' || t[j] == '\'') ? t[j++] : 0;
        size_t s = j;
        while (j < n && (q ? t[j] != q : !isspace((unsigned char)t[j]) && t[j] != '>'))
            j++;
        *v = t + s;
        *vl = j - s;
        return true;
    }
    return false;
}

size_t
html_to_text(const char *h, size_t n, char *out, size_t outsize,
             void (*uri)(const char *u, size_t n, void *ctx), void *ctx)
{
    size_t o = 0;
    const char *skip_until = NULL;      /* inside <script> or <style> */
    if (outsize == 0)
        return 0;
    for (size_t i = 0; i < n && o + 5 < outsize;) {
        char c = h[i];
        if (c == '<') {
            if (i + 3 < n && strncmp(h + i, "<!--", 4) == 0) {
                const char *e = memmem(h + i + 4, n - i - 4, "-->", 3);
                i = e ? (size_t)(e - h) + 3 : n;
                continue;
            }
            const char *gt = memchr(h + i, '>', n - i);
            size_t tend = gt ? (size_t)(gt - h) : n;
            size_t ns = i + 1;
            bool closing = ns < tend && h[ns] == '/';
            if (closing)
                ns++;
            size_t ne = ns;
            while (ne < tend && (isalnum((unsigned char)h[ne])))
                ne++;
            const char *name = h + ns;
            size_t nl = ne - ns;
            if (skip_until) {
                if (closing && tag_is(name, nl, skip_until))
                    skip_until = NULL;
                i = tend + 1;
                continue;
            }
            if (!closing && (tag_is(name, nl, "script") || tag_is(name, nl, "style")))
                skip_until = tag_is(name, nl, "script") ? "script" : "style";
            if (!closing && uri) {
                const char *v;
                size_t vl;
                if ((tag_is(name, nl, "a") || tag_is(name, nl, "area") ||
                     tag_is(name, nl, "link")) && attr_value(h + ne, tend - ne, "href", &v, &vl))
                    uri(v, vl, ctx);
                else if ((tag_is(name, nl, "img") || tag_is(name, nl, "iframe")) &&
                         attr_value(h + ne, tend - ne, "src", &v, &vl))
                    uri(v, vl, ctx);
                else if (tag_is(name, nl, "form") &&
                         attr_value(h + ne, tend - ne, "action", &v, &vl))
                    uri(v, vl, ctx);
            }
            if (block_tag(name, nl) && o > 0 && out[o - 1] != '\n')
                out[o++] = '\n';
            else if (o > 0 && out[o - 1] != ' ' && out[o - 1] != '\n' && !closing &&
                     tag_is(name, nl, "td"))
                out[o++] = ' ';
            i = tend + 1;
            continue;
        }
        if (skip_until || c == '\0') {     /* no NUL in text that is a C string */
            i++;
            continue;
        }
        if (c == '&') {
            char e[4];
            size_t used = 0;
            size_t k = entity(h + i, n - i, e, &used);
            if (used) {
                memcpy(out + o, e, k);
                o += k;
                i += used;
                continue;
            }
        }
        if (isspace((unsigned char)c)) {
            if (o > 0 && out[o - 1] != ' ' && out[o - 1] != '\n')
                out[o++] = ' ';
            i++;
            continue;
        }
        out[o++] = c;
        i++;
    }
    out[o] = '\0';
    return o;
}

/* ----------------------------------------------------------- rendering */

/* Text with its lines into paragraphs: one line each, white space runs as
 * one space; a blank line ends a paragraph. Written straight into room
 * made first: an input byte adds at most two (a space and itself), and
 * the part stops once it has BODY_PART_MAX. */
static void
paragraphs(struct buf *b, const char *s, size_t n)
{
    size_t start = b->n;
    size_t room = (n < BODY_PART_MAX ? 2 * n : 2 * (size_t)BODY_PART_MAX) + 4;
    if (b->n + room > b->cap) {
        b->cap = (b->n + room) * 2;
        b->p = xrealloc(b->p, b->cap);
    }
    char *p = b->p;
    size_t o = b->n;
    bool nl = false, sp = false;
    for (size_t i = 0; i < n && o - start < BODY_PART_MAX; i++) {
        char c = s[i];
        if (c == '\r' || c == '\0')
            continue;
        if (c == '\n') {
            if (nl) {
                if (o > start && p[o - 1] != '\n') {
                    if (p[o - 1] == ' ')
                        o--;
                    p[o++] = '\n';
                }
                sp = false;
                continue;
            }
            nl = true;
            sp = true;
            continue;
        }
        if (c == ' ' || c == '\t') {
            sp = true;
            continue;
        }
        if (sp && o > start && p[o - 1] != '\n')
            p[o++] = ' ';
        nl = sp = false;
        p[o++] = c;
    }
    if (o > start && p[o - 1] != '\n')
        p[o++] = '\n';
    p[o] = '\0';
    b->n = o;
}

static struct mime_text *
render(struct filter_mime *mm, struct filter_result *res)
{
    struct mime_text *mt = xcalloc(1, sizeof(*mt));
    const char *subj = mime_subject(mm);
    mt->subject = xstrdup(subj ? subj : "");
    buf_add(&mt->body, "", 0);
    buf_add(&mt->raw, "", 0);
    paragraphs(&mt->body, mt->subject, strlen(mt->subject));
    if (mt->body.n == 0)
        buf_add(&mt->body, "\n", 1);
    size_t np;
    const struct filter_part *parts = mime_parts(mm, &np);
    for (size_t i = 0; i < np && !filter_expired(res); i++) {
        const char *txt = mime_part_text(mm, i);
        const struct filter_part *p = &parts[i];
        if (txt == NULL || (p->attachment && p->filename[0]))
            continue;
        bool html = strcmp(p->content_type, "text/html") == 0;
        if (!html && strcmp(p->content_type, "text/plain") != 0)
            continue;
        size_t len = strlen(txt);
        buf_add(&mt->raw, txt, len < RAW_PART_MAX ? len : RAW_PART_MAX);
        if (mt->raw.n && mt->raw.p[mt->raw.n - 1] != '\n')
            buf_add(&mt->raw, "\n", 1);
        if (html) {
            size_t cap = len + 16;
            char *r = xmalloc(cap);
            size_t rl = html_to_text(txt, len, r, cap, uri_cb, mt);
            scan_uris(mt, r, rl);
            paragraphs(&mt->body, r, rl);
            free(r);
        } else {
            scan_uris(mt, txt, len);
            paragraphs(&mt->body, txt, len);
        }
    }
    mt->t.subject = mt->subject;
    mt->t.body = mt->body.p;
    mt->t.body_len = mt->body.n;
    mt->t.rawbody = mt->raw.p;
    mt->t.rawbody_len = mt->raw.n;
    mt->t.uris = (const char *const *)mt->uris;
    mt->t.hosts = (const char *const *)mt->hosts;
    mt->t.nuri = mt->nuri;
    return mt;
}

const struct filter_text *
mime_text(struct filter_mime *mm)
{
    return mime_text_until(mm, NULL);
}

const struct filter_text *
mime_text_until(struct filter_mime *mm, struct filter_result *r)
{
    struct mime_text **slot = mime_text_slot(mm);
    if (*slot == NULL) {
        struct mime_text *mt = render(mm, r);
        if (filter_expired(r)) {    /* cut short: not kept for the hooks running beside */
            mime_text_free(&mt);
            return NULL;
        }
        *slot = mt;
    }
    return &(*slot)->t;
}

void
mime_text_free(struct mime_text **tp)
{
    struct mime_text *mt = *tp;
    if (mt == NULL)
        return;
    for (size_t i = 0; i < mt->nuri; i++) {
        free(mt->uris[i]);
        free(mt->hosts[i]);
    }
    free(mt->uris);
    free(mt->hosts);
    free(mt->body.p);
    free(mt->raw.p);
    free(mt->subject);
    free(mt);
    *tp = NULL;
}
