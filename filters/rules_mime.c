/*
 * rules_mime.c -- the MIME tree of a message as SpamAssassin's rules see
 * it (Mail::SpamAssassin::Message and ::Node of SpamAssassin 4.0, Apache
 * License 2.0; written anew here): the parts cut by their boundaries the
 * way Message.pm cuts them (its leniencies and flags included), each
 * leaf's raw lines, decoded (QP, base64) and rendered (charset to UTF-8,
 * HTML to text), and from them the texts the rules match: body (the
 * Subject and every rendered text part, paragraphs as lines, split into
 * lines of at most 2048 bytes as SpamAssassin splits them), rawbody (each
 * text or message part decoded but not converted, in SpamAssassin's
 * paragraphs of 2 to 4 KB) and the facts of MIMEEval's _check_attachments.
 *
 * One room though long: the tree, its decoding and the texts cut from it
 * are the one pass Message.pm makes; they share the node state.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <ctype.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "rules_eval.h"
#include "../common/util.h"

#define MAX_PARTS 1000
#define MAX_SUBPARSE 20
#define BODY_SCAN 50000
#define RAWBODY_SCAN 500000

struct sb { char *p; size_t n, cap; };

static void
sb_add(struct sb *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->p = xrealloc(b->p, b->cap);
    }
    if (n)
        memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

/* --------------------------------------------------- the content type */

/* Util.pm's parse_content_type over the last value of Content-Type. */
void
sa_content_type(const char *ct_in, char *type, size_t tsize, char **boundary_r,
                char **charset_r, char **name_r, bool *missing_r)
{
    bool missing = false;
    const char *ct = ct_in;
    if (ct == NULL || ct[0] == '\0') {
        missing = true;
        ct = "text/plain; charset=us-ascii";
    }
    const size_t *ov;
    int rc;
    if (boundary_r) {
        *boundary_r = NULL;
        rc = rules_re_exec(rules_re("\\bboundary\\s*=\\s*(\"[^\"]+|[^\\s\";]+(?=[\\s;]|$))",
                                    PCRE2_CASELESS), ct, strlen(ct), 0, &ov);
        if (rc > 0) {
            struct sb b = { 0 };
            sb_add(&b, "", 0);
            for (size_t i = ov[2]; i < ov[3]; i++)
                if (ct[i] != '"')
                    sb_add(&b, ct + i, 1);
            *boundary_r = b.p;
        }
    }
    if (charset_r) {
        *charset_r = NULL;
        rc = rules_re_exec(rules_re("\\bcharset\\s*=\\s*[\"']?(.*?)[\"']?(?:;|$)", PCRE2_CASELESS),
                           ct, strlen(ct), 0, &ov);
        if (rc > 0)
            *charset_r = xstrndup(ct + ov[2], ov[3] - ov[2]);
    }
    if (name_r) {
        *name_r = NULL;
        rc = rules_re_exec(rules_re("\\b(?:file)?name\\s*=\\s*[\"']?(.*?)[\"']?(?:;|$)",
                                    PCRE2_CASELESS), ct, strlen(ct), 0, &ov);
        if (rc > 0)
            *name_r = xstrndup(ct + ov[2], ov[3] - ov[2]);
    }
    /* the type: up to the first ';', "x/y" */
    const char *p = ct;
    while (isspace((unsigned char)*p))
        p++;
    size_t l = strcspn(p, ";");
    char t[256];
    snprintf(t, sizeof(t), "%.*s", (int)(l < 255 ? l : 255), p);
    rc = rules_re_exec(rules_re("^([^/]+(?:/[^/\\s]*)?)", PCRE2_DOTALL), t, strlen(t), 0, &ov);
    if (rc > 0)
        t[ov[3]] = '\0';
    for (char *q = t; *q; q++)
        *q = (char)tolower((unsigned char)*q);
    if (t[0] == '\0')
        missing = true;
    if (t[0] == '\0' ||
        (rules_re_exec(rules_re("^text\\b", 0), t, strlen(t), 0, &ov) > 0 &&
         strcmp(t, "text/x-vcard") != 0 && strcmp(t, "text/calendar") != 0 &&
         strcmp(t, "text/html") != 0))
        str_copy(t, "text/plain", sizeof(t));
    /* tr/\000-\040\177-\377\042\050\051\054\072-\077\100\133-\135//d */
    size_t o = 0;
    for (size_t i = 0; t[i]; i++) {
        unsigned char ch = (unsigned char)t[i];
        if (ch <= 040 || ch >= 0177 || ch == 042 || ch == 050 || ch == 051 || ch == 054 ||
            (ch >= 072 && ch <= 077) || ch == 0100 || (ch >= 0133 && ch <= 0135))
            continue;
        t[o++] = t[i];
    }
    t[o] = '\0';
    str_copy(type, t, tsize);
    if (missing_r)
        *missing_r = missing;
}

/* ------------------------------------------------------------ the tree */

struct rnode {
    char *type;
    char *charset;              /* NULL: none declared */
    char *name;
    char *boundary;             /* multipart: its boundary */
    struct rfield *f;           /* this node's fields (the root: the message's, not owned) */
    size_t nf;
    bool own_fields;
    int parent;
    int *kids;
    size_t nkids;
    bool leaf;
    struct sb raw;              /* a leaf's lines, as Message.pm keeps them */
    bool dec_done;
    struct sb dec;
    bool rend_done;
    char *rendered;             /* UTF-8, NULL: not a text part it renders */
    size_t rendered_len;        /* (it may hold NUL bytes) */
    bool rendered_html;
    bool rendered_chars;        /* Perl characters (else a byte string) */
    struct rhtml *html;         /* rendered as HTML: what HTML.pm found */
};

struct rmime {
    struct rnode *n;
    size_t nn;
    bool missing_mime_headers, missing_head_body_sep, epilogue, limit;
    struct { char *b; int state; } *bstate;
    size_t nb;
};

static int
node_new(struct rmime *M, int parent)
{
    M->n = xrealloc(M->n, (M->nn + 1) * sizeof(*M->n));
    struct rnode *n = &M->n[M->nn];
    memset(n, 0, sizeof(*n));
    n->parent = parent;
    n->leaf = true;
    if (parent >= 0) {
        struct rnode *p = &M->n[parent];
        p->kids = xrealloc(p->kids, (p->nkids + 1) * sizeof(int));
        p->kids[p->nkids++] = (int)M->nn;
        p->leaf = false;
    }
    return (int)M->nn++;
}

/* The last decoded value of a node's field, or NULL. */
static const char *
node_header(struct rmsg *c, struct rmime *M, int ni, const char *name)
{
    struct rnode *n = &M->n[ni];
    for (size_t i = n->nf; i-- > 0;)
        if (strcasecmp(n->f[i].name, name) == 0) {
            if (n->f[i].dec == NULL)
                n->f[i].dec = sa_decode_header(n->f[i].raw, strlen(n->f[i].raw), n->f[i].name);
            return n->f[i].dec;
        }
    (void)c;
    return NULL;
}

static void
node_field(struct rnode *n, const char *key, size_t kl, const char *val, size_t vl)
{
    if (n->nf % 8 == 0)
        n->f = xrealloc(n->f, (n->nf + 8) * sizeof(*n->f));
    n->f[n->nf].name = xstrndup(key, kl);
    n->f[n->nf].raw = xstrndup(val, vl);
    n->f[n->nf].dec = NULL;
    n->nf++;
    n->own_fields = true;
}

/* A body as lines: [start, end) pairs over one buffer. */
struct lines {
    const char **s;
    size_t *l;
    size_t n;
};

static void
lines_add(struct lines *L, const char *s, size_t l)
{
    if (L->n % 64 == 0) {
        L->s = xrealloc(L->s, (L->n + 64) * sizeof(char *));
        L->l = xrealloc(L->l, (L->n + 64) * sizeof(size_t));
    }
    L->s[L->n] = s;
    L->l[L->n++] = l;
}

/* The lines of a text (each with its "\n", the last maybe without). */
static void
lines_of(struct lines *L, const char *p, size_t n)
{
    const char *end = p + n;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *e = nl ? nl + 1 : end;
        lines_add(L, p, (size_t)(e - p));
        p = e;
    }
}

static bool
field_line(const char *s, size_t l, bool allow_ws)
{
    /* /^[\041-\071\073-\176]+[ \t]*:/ (or without the [ \t]*) */
    size_t i = 0;
    while (i < l && s[i] >= 041 && s[i] <= 0176 && s[i] != ':')
        i++;
    if (i == 0)
        return false;
    if (allow_ws)
        while (i < l && (s[i] == ' ' || s[i] == '\t'))
            i++;
    return i < l && s[i] == ':';
}

static bool
boundary_line(const char *s, size_t l, const char *b, bool *end_r)
{
    /* /^--\Q$boundary\E(--)?\s*$/ */
    size_t bl = strlen(b);
    if (l < 2 + bl || s[0] != '-' || s[1] != '-' || memcmp(s + 2, b, bl) != 0)
        return false;
    size_t i = 2 + bl;
    bool end = false;
    if (end_r && i + 1 < l + 1 && l - i >= 2 && s[i] == '-' && s[i + 1] == '-') {
        end = true;
        i += 2;
    }
    for (; i < l; i++)
        if (!isspace((unsigned char)s[i])) {
            if (end_r && end) {     /* "--b--x": not an end; "--b" then "--x"? no */
                return false;
            }
            return false;
        }
    if (end_r)
        *end_r = end;
    return true;
}

static void
bstate_add(struct rmime *M, const char *b, int d)
{
    for (size_t i = 0; i < M->nb; i++)
        if (strcmp(M->bstate[i].b, b) == 0) {
            if (d > 0)
                M->bstate[i].state = 1;
            else
                M->bstate[i].state += d;
            return;
        }
    M->bstate = xrealloc(M->bstate, (M->nb + 1) * sizeof(*M->bstate));
    M->bstate[M->nb].b = xstrdup(b);
    M->bstate[M->nb].state = d > 0 ? 1 : d;
    M->nb++;
}

struct job { int node; char *boundary; struct lines body; char *buf; int subparse; };

struct queue { struct job *j; size_t n, head; };

static void
push_job(struct queue *Q, int node, const char *boundary, struct lines body, char *buf, int subparse)
{
    Q->j = xrealloc(Q->j, (Q->n + 1) * sizeof(*Q->j));
    Q->j[Q->n++] = (struct job){ node, boundary ? xstrdup(boundary) : NULL, body, buf, subparse };
}

static void set_type(struct rmsg *c, struct rmime *M, int ni, bool keep_if_missing);

/* Message.pm's new() for the root or an attached message: its header,
 * then its body queued. (The root's header is the message's, cut by
 * rules_header.c.) */
static void
start_message(struct rmsg *c, struct rmime *M, struct queue *Q, int ni, const char *body,
              size_t blen, char *buf, int subparse)
{
    struct lines L = { 0 };
    lines_of(&L, body, blen);
    /* bug 6845: a multipart body that starts with neither a blank line
     * nor its boundary gets a blank line in front */
    set_type(c, M, ni, false);
    struct rnode *n = &M->n[ni];
    if (strncmp(n->type, "multipart/", 10) == 0 && L.n > 1) {
        bool nonblank = false;
        for (size_t i = 0; i < L.l[0]; i++)
            nonblank |= !isspace((unsigned char)L.s[0][i]);
        bool starts = n->boundary && L.l[0] >= 2 + strlen(n->boundary) &&
                      L.s[0][0] == '-' && L.s[0][1] == '-' &&
                      memcmp(L.s[0] + 2, n->boundary, strlen(n->boundary)) == 0;
        if (nonblank && !starts) {
            struct lines L2 = { 0 };
            lines_add(&L2, "\n", 1);
            for (size_t i = 0; i < L.n; i++)
                lines_add(&L2, L.s[i], L.l[i]);
            free(L.s);
            free(L.l);
            L = L2;
        }
    }
    push_job(Q, ni, n->boundary, L, buf, subparse);
}

static void
set_type(struct rmsg *c, struct rmime *M, int ni, bool keep_if_missing)
{
    struct rnode *n = &M->n[ni];
    char type[256];
    bool missing;
    char *b = NULL, *cs = NULL, *nm = NULL;
    sa_content_type(node_header(c, M, ni, "Content-Type"), type, sizeof(type), &b, &cs, &nm,
                    &missing);
    if (!(keep_if_missing && missing && n->type)) {
        free(n->type);
        n->type = xstrdup(type);
    }
    free(n->boundary);
    n->boundary = b;
    free(n->charset);
    n->charset = cs;
    free(n->name);
    n->name = nm;
}

/* A header a multipart's part: "key: value" lines, continuations in. */
static void
part_header(struct rnode *n, const char *h, size_t hl)
{
    /* split(/:\s* /, $header, 2) */
    const char *colon = memchr(h, ':', hl);
    if (colon == NULL)
        return;
    const char *v = colon + 1;
    while (v < h + hl && isspace((unsigned char)*v))
        v++;
    node_field(n, h, (size_t)(colon - h), v, (size_t)(h + hl - v));
}

static void
parse_multipart(struct rmsg *c, struct rmime *M, struct queue *Q, struct job *J)
{
    const char *boundary = J->boundary;
    int subparse = J->subparse - 1;
    struct lines *B = &J->body;
    size_t start = 0;
    /* the preamble goes, up to the opening boundary */
    size_t line;
    for (line = 0; line < B->n; line++) {
        if (boundary_line(B->s[line], B->l[line], boundary, NULL)) {
            bstate_add(M, boundary, 1);
            if (line + 1 < B->n && !field_line(B->s[line + 1], B->l[line + 1], false))
                M->missing_mime_headers = true;
            break;
        }
    }
    if (line < B->n)
        start = line + 1;
    int part = node_new(M, J->node);
    bool in_body = false, nested = false;
    const char *header = NULL;
    struct sb hbuf = { 0 };
    struct lines arr = { 0 };
    bool have_arr = false;
    int partcnt = 0;
    size_t remaining = B->n - start;
    for (size_t i = start; i < B->n; i++) {
        const char *s = B->s[i];
        size_t l = B->l[i];
        bool last_end = false;
        bool found_end = boundary && l >= 2 && s[0] == '-' && s[1] == '-' &&
                         boundary_line(s, l, boundary, &last_end);
        if (found_end && nested) {
            found_end = false;
            if (last_end)
                nested = false;
            last_end = false;
        }
        remaining--;
        if (remaining == 0 || found_end) {
            if (!found_end) {
                lines_add(&arr, s, l);
                have_arr = true;
            } else if (have_arr && arr.n) {
                /* the line break before a boundary belongs to it */
                size_t k = arr.n - 1;
                if (arr.l[k] && arr.s[k][arr.l[k] - 1] == '\n')
                    arr.l[k]--;
                if (arr.l[k] == 0)
                    arr.n--;
            }
            /* a field still pending at the boundary is lost, as in
             * Message.pm (it is stored only when the next line comes) */
            header = NULL;
            struct rnode *pn = &M->n[part];
            char type[256];
            bool missing;
            char *pb = NULL;
            sa_content_type(node_header(c, M, part, "Content-Type"), type, sizeof(type), &pb,
                            NULL, NULL, &missing);
            free(pn->type);
            pn->type = xstrdup(missing && strcmp(M->n[J->node].type, "multipart/digest") == 0
                               ? "message/rfc822" : type);
            if (pb == NULL && boundary)
                pb = xstrdup(boundary);
            push_job(Q, part, pb, arr, NULL, subparse);
            free(pb);
            memset(&arr, 0, sizeof(arr));
            have_arr = false;
            if (boundary) {
                if (last_end) {
                    bstate_add(M, boundary, -1);
                    break;
                } else if (remaining && !field_line(B->s[i + 1], B->l[i + 1], false)) {
                    M->missing_mime_headers = true;
                }
            }
            if (++partcnt == MAX_PARTS || M->nn >= MAX_PARTS * 2) {
                M->limit = true;
                free(hbuf.p);
                return;
            }
            in_body = false;
            part = node_new(M, J->node);
            hbuf.n = 0;
            continue;
        }
        if (!in_body) {
            if (field_line(s, l, true)) {
                if (header)
                    part_header(&M->n[part], hbuf.p, hbuf.n);
                hbuf.n = 0;
                sb_add(&hbuf, s, l);
                header = hbuf.p;
                continue;
            }
            if ((s[0] == ' ' || s[0] == '\t') && header) {
                sb_add(&hbuf, s, l);
                header = hbuf.p;
                continue;
            }
            if (header) {
                part_header(&M->n[part], hbuf.p, hbuf.n);
                header = NULL;
                const char *ct = node_header(c, M, part, "Content-Type");
                if (boundary && ct && hbuf.n >= 12 && strncasecmp(hbuf.p, "content-type", 12) == 0) {
                    char t[256];
                    char *nb = NULL;
                    sa_content_type(ct, t, sizeof(t), &nb, NULL, NULL, NULL);
                    if (nb && strcmp(nb, boundary) == 0)
                        nested = true;
                    free(nb);
                }
            }
            in_body = true;
            if ((l == 1 && s[0] == '\n') || (l == 2 && s[0] == '\r' && s[1] == '\n'))
                continue;
            M->missing_head_body_sep = true;
        }
        lines_add(&arr, s, l);
        have_arr = true;
    }
    free(hbuf.p);
    /* the part node made after the last boundary holds nothing: drop it */
    struct rnode *pp = &M->n[J->node];
    if (pp->nkids && pp->kids[pp->nkids - 1] == part && M->n[part].nf == 0 && M->n[part].type == NULL) {
        pp->nkids--;
        M->nn--;
        if (pp->nkids == 0)
            pp->leaf = false;
    }
    free(arr.s);
    free(arr.l);
    /* an epilogue: anything but white space and dots after the end */
    for (size_t i = B->n - remaining; remaining && i < B->n; i++)
        for (size_t k = 0; k < B->l[i]; k++)
            if (!isspace((unsigned char)B->s[i][k]) && B->s[i][k] != '.') {
                M->epilogue = true;
                i = B->n;
                break;
            }
}

static void decode(struct rmsg *c, struct rmime *M, int ni);

static void
parse_normal(struct rmsg *c, struct rmime *M, struct queue *Q, struct job *J)
{
    struct rnode *n = &M->n[J->node];
    char type[256];
    bool missing;
    char *b = NULL, *cs = NULL, *nm = NULL;
    sa_content_type(node_header(c, M, J->node, "Content-Type"), type, sizeof(type), &b, &cs, &nm,
                    &missing);
    free(b);
    if (!missing || n->type == NULL) {
        free(n->type);
        n->type = xstrdup(strncmp(type, "multipart/", 10) != 0 || J->boundary ? type : "text/plain");
    }
    free(n->charset);
    n->charset = cs;
    const char *disp = node_header(c, M, J->node, "Content-Disposition");
    const size_t *ov;
    free(n->name);
    n->name = NULL;
    if (disp && rules_re_exec(rules_re("name=\\s*\"?([^\";]+)\"?", PCRE2_CASELESS), disp,
                              strlen(disp), 0, &ov) > 0)
        n->name = xstrndup(disp + ov[2], ov[3] - ov[2]);
    else
        n->name = nm, nm = NULL;
    free(nm);
    free(n->boundary);
    n->boundary = J->boundary ? xstrdup(J->boundary) : NULL;
    n->leaf = true;
    for (size_t i = 0; i < J->body.n; i++) {
        /* lines over 2048 bytes cut, each piece ending in "\n" */
        const char *s = J->body.s[i];
        size_t l = J->body.l[i];
        while (l > SA_MAX_BODY_LINE) {
            sb_add(&n->raw, s, SA_MAX_BODY_LINE);
            sb_add(&n->raw, "\n", 1);
            s += SA_MAX_BODY_LINE;
            l -= SA_MAX_BODY_LINE;
        }
        sb_add(&n->raw, s, l);
    }
    if (n->raw.p == NULL)
        sb_add(&n->raw, "", 0);
    if (strncmp(n->type, "message/", 8) == 0 && strcmp(n->type, "message/partial") != 0 &&
        J->subparse > 0 && (strcmp(n->type, "message/rfc822") == 0 ||
                            strcmp(n->type, "message/global") == 0)) {
        decode(c, M, J->node);
        if (n->dec.n) {
            /* an attached message: a node of its own, header and body */
            char *buf = xstrndup(n->dec.p, n->dec.n);
            int inner = node_new(M, J->node);
            n = &M->n[J->node];
            struct rmsg sub = { 0 };
            struct filter_msg sm = { .data = buf, .len = n->dec.n };
            rmsg_cut(&sub, &sm);
            struct rnode *in = &M->n[inner];
            in->f = sub.f;
            in->nf = sub.nf;
            in->own_fields = true;
            start_message(c, M, Q, inner, sub.body, sub.body_len, buf, J->subparse - 1);
            free(n->raw.p);
            memset(&n->raw, 0, sizeof(n->raw));
            n->leaf = false;
        }
    }
}

/* ------------------------------------------------------------ decoding */

static int
hexv(int ch)
{
    return ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
         : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1;
}

/* Util.pm's qp_decode, then CRLF as LF */
static void
qp(struct sb *out, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (ch == ' ' || ch == '\t') {
            /* trailing white space of a line goes */
            size_t k = i;
            while (k < n && (s[k] == ' ' || s[k] == '\t'))
                k++;
            if (k == n || s[k] == '\n' || (s[k] == '\r' && k + 1 < n && s[k + 1] == '\n')) {
                i = k - 1;
                continue;
            }
        }
        if (ch == '=') {
            if (i + 1 < n && s[i + 1] == '\n') {
                i++;
                continue;
            }
            if (i + 2 < n && s[i + 1] == '\r' && s[i + 2] == '\n') {
                i += 2;
                continue;
            }
            if (i + 2 < n && hexv((unsigned char)s[i + 1]) >= 0 && hexv((unsigned char)s[i + 2]) >= 0) {
                char v = (char)(hexv((unsigned char)s[i + 1]) * 16 + hexv((unsigned char)s[i + 2]));
                sb_add(out, &v, 1);
                i += 2;
                continue;
            }
        }
        if (ch == '\r' && i + 1 < n && s[i + 1] == '\n')
            continue;
        sb_add(out, &ch, 1);
    }
}

static void
b64(struct sb *out, const char *s, size_t n, bool text)
{
    char *d;
    size_t dl;
    sa_base64_decode(s, n, &d, &dl);
    for (size_t i = 0; i < dl; i++) {
        /* text and message parts: CRLF as LF */
        if (text && d[i] == '\r' && i + 1 < dl && d[i + 1] == '\n')
            continue;
        sb_add(out, d + i, 1);
    }
    free(d);
}

static void
decode(struct rmsg *c, struct rmime *M, int ni)
{
    struct rnode *n = &M->n[ni];
    if (n->dec_done)
        return;
    n->dec_done = true;
    sb_add(&n->dec, "", 0);
    if (!n->leaf || n->raw.p == NULL)
        return;
    const char *cte = node_header(c, M, ni, "Content-Transfer-Encoding");
    char e[64] = "";
    if (cte) {
        snprintf(e, sizeof(e), "%s", cte);
        for (char *p = e; *p; p++)
            *p = (char)tolower((unsigned char)*p);
    }
    if (strcmp(e, "quoted-printable") == 0)
        qp(&n->dec, n->raw.p, n->raw.n);
    else if (strcmp(e, "base64") == 0)
        b64(&n->dec, n->raw.p, n->raw.n, strncmp(n->type, "text", 4) == 0 ||
                                          strncmp(n->type, "message", 7) == 0);
    else
        sb_add(&n->dec, n->raw.p, n->raw.n);
}

static const char *
effective_type(const struct rnode *n)
{
    const size_t *ov;
    if (n->name && rules_re_exec(rules_re("\\.s?html?$", PCRE2_CASELESS), n->name, strlen(n->name),
                                 0, &ov) > 0)
        return "text/html";
    return n->type ? n->type : "text/plain";
}

/* Node.pm's rendered(): text/plain and text/html only, in UTF-8. */
static void
render(struct rmsg *c, struct rmime *M, int ni)
{
    struct rnode *n = &M->n[ni];
    if (n->rend_done)
        return;
    n->rend_done = true;
    const char *type = effective_type(n);
    if (strcmp(type, "text/plain") != 0 && strcmp(type, "text/html") != 0)
        return;
    decode(c, M, ni);
    n = &M->n[ni];
    bool chars;
    size_t ulen;
    char *u = sa_normalize_len(n->dec.p, n->dec.n, n->charset ? n->charset : "us-ascii", false,
                               &chars, &ulen);
    n->rendered_chars = chars;
    if (strcmp(type, "text/html") == 0 && n->dec.n) {
        n->rendered_html = true;
        n->html = rhtml_parse(u, strlen(u), chars);
        n->rendered_chars = n->html->flagged;
        n->html->ratio = ((double)n->dec.n - (double)n->html->html_length) / (double)n->dec.n;
        n->html->have_ratio = true;
        n->rendered = xstrdup(n->html->text);
        n->rendered_len = strlen(n->rendered);
        free(u);
    } else {
        n->rendered = u;
        n->rendered_len = ulen;
    }
}

/* ------------------------------------------------------------ the tree */

struct rmime *
rmime_parse(struct rmsg *c)
{
    struct rmime *M = xcalloc(1, sizeof(*M));
    struct queue Q = { 0 };
    int root = node_new(M, -1);
    M->n[root].f = c->f;
    M->n[root].nf = c->nf;
    /* the body's lines with LF ends, as Message.pm keeps them of a CRLF
     * message (the copy lives as long as the tree) */
    char *body = NULL;
    size_t blen = c->body_len;
    if (c->crlf) {
        body = xmalloc(c->body_len + 1);
        blen = 0;
        for (size_t i = 0; i < c->body_len; i++) {
            if (c->body[i] == '\r' && i + 1 < c->body_len && c->body[i + 1] == '\n')
                continue;
            body[blen++] = c->body[i];
        }
        body[blen] = '\0';
    }
    start_message(c, M, &Q, root, body ? body : c->body, blen, body, MAX_SUBPARSE);
    while (Q.head < Q.n) {
        struct job J = Q.j[Q.head++];
        struct rnode *n = &M->n[J.node];
        if (n->type && strncmp(n->type, "multipart/", 10) == 0 && J.boundary && J.subparse > 0)
            parse_multipart(c, M, &Q, &J);
        else
            parse_normal(c, M, &Q, &J);
        free(J.body.s);
        free(J.body.l);
        free(J.boundary);
        /* J.buf (an attached message's text) lives as long as the tree */
        if (J.buf) {
            M->bstate = xrealloc(M->bstate, (M->nb + 1) * sizeof(*M->bstate));
            M->bstate[M->nb].b = J.buf;
            M->bstate[M->nb].state = 0x7fffffff;     /* not a boundary: memory to free */
            M->nb++;
        }
    }
    free(Q.j);
    return M;
}

void
rmime_free(struct rmime **mp)
{
    struct rmime *M = *mp;
    if (M == NULL)
        return;
    for (size_t i = 0; i < M->nn; i++) {
        struct rnode *n = &M->n[i];
        if (n->own_fields) {
            for (size_t k = 0; k < n->nf; k++) {
                free(n->f[k].name);
                free(n->f[k].raw);
                free(n->f[k].dec);
            }
            free(n->f);
        }
        free(n->type);
        free(n->charset);
        free(n->name);
        free(n->boundary);
        free(n->kids);
        free(n->raw.p);
        free(n->dec.p);
        free(n->rendered);
        rhtml_free(&n->html);
    }
    for (size_t i = 0; i < M->nb; i++)
        free(M->bstate[i].b);
    free(M->bstate);
    free(M->n);
    free(M);
    *mp = NULL;
}

/* Parts in Node.pm's find_parts order (document order); leaves only or all. */
size_t
rmime_parts(const struct rmime *M, bool leaves, int *out, size_t max)
{
    size_t n = 0;
    int stack[MAX_PARTS * 2 + 8];
    size_t sp = 0;
    stack[sp++] = 0;
    while (sp && n < max) {
        int i = stack[--sp];
        const struct rnode *p = &M->n[i];
        if (!leaves || p->leaf)
            out[n++] = i;
        for (size_t k = p->nkids; k-- > 0 && sp < sizeof(stack) / sizeof(stack[0]);)
            stack[sp++] = p->kids[k];
    }
    return n;
}

/* ------------------------------------------------------------ the texts */

/* A UTF-8 character at s that Perl's \s matches in a character string:
 * its length, else 0. */
static size_t
uspace(const unsigned char *s, size_t n)
{
    if (n && (s[0] == ' ' || (s[0] >= '\t' && s[0] <= '\r')))
        return 1;
    if (n >= 2 && s[0] == 0xc2 && (s[1] == 0x85 || s[1] == 0xa0))
        return 2;
    if (n >= 3 && s[0] == 0xe1 && s[1] == 0x9a && s[2] == 0x80)
        return 3;
    if (n >= 3 && s[0] == 0xe2 && s[1] == 0x80 &&
        (s[2] <= 0x8a || s[2] == 0xa8 || s[2] == 0xa9 || s[2] == 0xaf))
        return 3;
    if (n >= 3 && s[0] == 0xe2 && s[1] == 0x81 && s[2] == 0x9f)
        return 3;
    if (n >= 3 && s[0] == 0xe3 && s[1] == 0x80 && s[2] == 0x80)
        return 3;
    return 0;
}

static bool
has_high(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s & 0x80)
            return true;
    return false;
}

/* Truncate a part's text to size as Message.pm does: at a line break
 * (or, first[1], '>') or a space within 1 KB after it, else there. */
static size_t
scan_cut(const char *s, size_t n, size_t size, bool gt)
{
    if (size == 0 || n <= size)
        return n;
    const char *p = memchr(s + size, '\n', n - size);
    if (p && (size_t)(p - s) - size <= 1024)
        return (size_t)(p - s) + 1;
    if (gt) {
        p = memchr(s + size, '>', n - size);
        if (p && (size_t)(p - s) - size <= 1024)
            return (size_t)(p - s) + 1;
    }
    p = memchr(s + size, ' ', n - size);
    if (p && (size_t)(p - s) - size <= 1024)
        return (size_t)(p - s) + 1;
    return size;
}

static void
add_piece(size_t **off, size_t **len, size_t *n, size_t o, size_t l)
{
    if (*n % 64 == 0) {
        *off = xrealloc(*off, (*n + 64) * sizeof(size_t));
        *len = xrealloc(*len, (*n + 64) * sizeof(size_t));
    }
    (*off)[*n] = o;
    (*len)[(*n)++] = l;
}

void
rmsg_texts(struct rmsg *c)
{
    if (c->mime)
        return;
    c->mime = rmime_parse(c);
    struct rmime *M = c->mime;
    int *lv = xcalloc(M->nn + 1, sizeof(int));
    size_t nl = rmime_parts(M, true, lv, M->nn);
    /* body: get_body_text_array_common('rendered') */
    /* Perl joins a byte string into characters by their Latin-1 value:
     * when one part is characters, the others' high bytes are upgraded */
    bool any_chars = false;
    for (size_t k = 0; k < nl; k++) {
        render(c, M, lv[k]);
        any_chars |= M->n[lv[k]].rendered && M->n[lv[k]].rendered_chars;
    }
    for (size_t k = 0; k < nl && any_chars; k++) {
        struct rnode *n = &M->n[lv[k]];
        if (n->rendered && !n->rendered_chars && has_high(n->rendered)) {
            char *u = rhtml_upgrade(n->rendered, strlen(n->rendered));
            free(n->rendered);
            n->rendered = u;
            n->rendered_len = strlen(u);
        }
    }
    struct sb text = { 0 };
    sb_add(&text, "", 0);
    for (size_t k = 0; k < nl; k++) {
        if (text.n)
            sb_add(&text, "\n", 1);
        const struct rnode *n = &M->n[lv[k]];
        if (n->html) {
            c->html_all = xrealloc(c->html_all, (c->nhtml + 1) * sizeof(*c->html_all));
            c->html_all[c->nhtml++] = n->html;
        }
        if (n->rendered) {
            size_t l = n->rendered_len;
            sb_add(&text, n->rendered, scan_cut(n->rendered, l, BODY_SCAN, false));
        }
    }
    /* s/\n+\s*\n+/\0/g; s/\s+/ /g; tr/\0/\n/ */
    /* (written in place: a run of white space becomes at most as many
     * bytes, " \n " from four at least) */
    const unsigned char *t = (const unsigned char *)text.p;
    size_t tn = text.n;
    struct sb norm = { xmalloc(tn + 1), 0, tn + 1 };
    for (size_t i = 0; i < tn;) {
        if (t[i] > ' ' && t[i] < 0x80) {
            /* a run of printable ASCII (uspace 0, no NUL): copied as it is */
            size_t s0 = i;
            while (i < tn && t[i] > ' ' && t[i] < 0x80)
                i++;
            memcpy(norm.p + norm.n, t + s0, i - s0);
            norm.n += i - s0;
            continue;
        }
        size_t w = uspace(t + i, tn - i);
        if (w == 0) {
            /* a NUL of the text: Message.pm marks paragraphs with NUL and
             * turns them all into line breaks at the end */
            norm.p[norm.n++] = t[i] ? (char)t[i] : '\n';
            i++;
            continue;
        }
        /* a run of white space: \n+\s*\n+ (from its first line break to
         * its last, two at least) is a paragraph break, what is before
         * and after that a space each */
        size_t j = i, breaks = 0, first_nl = (size_t)-1, last_nl = 0;
        while (j < tn && (w = uspace(t + j, tn - j)) > 0) {
            if (t[j] == '\n') {
                breaks++;
                if (first_nl == (size_t)-1)
                    first_nl = j;
                last_nl = j;
            }
            j += w;
        }
        if (breaks >= 2) {
            if (first_nl > i)
                norm.p[norm.n++] = ' ';
            norm.p[norm.n++] = '\n';
            if (last_nl + 1 < j)
                norm.p[norm.n++] = ' ';
        } else {
            norm.p[norm.n++] = ' ';
        }
        i = j;
    }
    norm.p[norm.n] = '\0';
    free(text.p);
    /* the Subject, then the text, in lines of at most 2048 bytes */
    const char *subj = NULL;
    unsigned sh = rmsg_name_hash("Subject", 7);
    for (size_t i = c->nf; i-- > 0;)
        if (rmsg_field_is(c, i, "Subject", sh)) {
            subj = rmsg_decoded(c, i);
            break;
        }
    struct sb all = { 0 };
    if (subj && subj[0]) {
        sb_add(&all, subj, strlen(subj));
        sb_add(&all, "\n", 1);
    } else {
        sb_add(&all, "\n", 1);
    }
    sb_add(&all, norm.p, norm.n);
    free(norm.p);
    c->sbody = all.p;
    c->sbody_len = all.n;
    for (size_t o = 0; o < all.n;) {
        const char *nlp = memchr(all.p + o, '\n', all.n - o);
        size_t e = nlp ? (size_t)(nlp - all.p) + 1 : all.n;
        while (e - o > SA_MAX_BODY_LINE) {
            size_t cut = 0;
            for (size_t k = SA_MAX_BODY_LINE + 1; k-- > 0;)
                if (all.p[o + k] == ' ') {
                    cut = k + 1;
                    break;
                }
            if (cut == 0)
                cut = SA_MAX_BODY_LINE;
            add_piece(&c->bline_off, &c->bline_len, &c->nbline, o, cut);
            c->body_split = true;
            o += cut;
        }
        add_piece(&c->bline_off, &c->bline_len, &c->nbline, o, e - o);
        o = e;
    }
    /* rawbody: get_decoded_body_text_array */
    struct sb raw = { 0 };
    sb_add(&raw, "", 0);
    for (size_t k = 0; k < nl; k++) {
        struct rnode *n = &M->n[lv[k]];
        const char *et = effective_type(n);
        if (strncmp(et, "text", 4) != 0 && strncmp(et, "message", 7) != 0)
            continue;
        if (et[strncmp(et, "text", 4) == 0 ? 4 : 7] != '/' && et[strncmp(et, "text", 4) == 0 ? 4 : 7] != '\0')
            continue;
        if (n->type && strcmp(n->type, "text/calendar") == 0)
            continue;
        decode(c, M, lv[k]);
        n = &M->n[lv[k]];
        size_t l = scan_cut(n->dec.p, n->dec.n, RAWBODY_SCAN, true);
        /* split_into_array_of_short_paragraphs */
        const char *s = n->dec.p;
        size_t ofs = 0;
        if (l <= SA_MAX_BODY_LINE) {
            if (raw.n && raw.p[raw.n - 1] != '\n')
                sb_add(&raw, "\n", 1);
            add_piece(&c->rchunk_off, &c->rchunk_len, &c->nrchunk, raw.n, l);
            sb_add(&raw, s, l);
            continue;
        }
        while (l - ofs > 2 * SA_MAX_BODY_LINE) {
            const char *p = memchr(s + ofs + SA_MAX_BODY_LINE, '\n', l - ofs - SA_MAX_BODY_LINE);
            size_t j = p ? (size_t)(p - s) : (size_t)-1;
            if (j == (size_t)-1 || j - ofs + 1 > 2 * SA_MAX_BODY_LINE) {
                p = memchr(s + ofs + SA_MAX_BODY_LINE, '>', l - ofs - SA_MAX_BODY_LINE);
                j = p ? (size_t)(p - s) : (size_t)-1;
                if (j == (size_t)-1 || j - ofs + 1 > 2 * SA_MAX_BODY_LINE) {
                    p = memchr(s + ofs + SA_MAX_BODY_LINE, ' ', l - ofs - SA_MAX_BODY_LINE);
                    j = p ? (size_t)(p - s) : (size_t)-1;
                    if (j == (size_t)-1 || j - ofs + 1 > 2 * SA_MAX_BODY_LINE)
                        j = ofs + SA_MAX_BODY_LINE;
                }
            }
            if (raw.n && raw.p[raw.n - 1] != '\n')
                sb_add(&raw, "\n", 1);
            add_piece(&c->rchunk_off, &c->rchunk_len, &c->nrchunk, raw.n, j - ofs + 1);
            sb_add(&raw, s + ofs, j - ofs + 1);
            ofs = j + 1;
        }
        if (ofs < l) {
            if (raw.n && raw.p[raw.n - 1] != '\n')
                sb_add(&raw, "\n", 1);
            add_piece(&c->rchunk_off, &c->rchunk_len, &c->nrchunk, raw.n, l - ofs);
            sb_add(&raw, s + ofs, l - ofs);
        }
    }
    c->sraw = raw.p;
    c->sraw_len = raw.n;
    free(lv);
}

void
rmsg_texts_free(struct rmsg *c)
{
    rmime_free(&c->mime);
    if (c->mfacts)
        free(c->mfacts->html_charsets);
    free(c->mfacts);
    free(c->html_all);
    free(c->sbody);
    free(c->sraw);
    free(c->bline_off);
    free(c->bline_len);
    free(c->rchunk_off);
    free(c->rchunk_len);
}

/* ------------------------------------------------------------ the facts */

static const char *
node_last_chomped(struct rmsg *c, struct rmime *M, int ni, const char *name, char *out, size_t size)
{
    const char *v = node_header(c, M, ni, name);
    snprintf(out, size, "%s", v ? v : "");
    for (char *p = out; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return out;
}

static bool
contains(const char *s, const char *what)
{
    return strstr(s, what) != NULL;
}

/* MIMEEval's _check_mime_header */
static void
mime_header(struct rmime_facts *F, const char *ctype, const char *cte, const char *cd,
            const char *charset)
{
    const size_t *ov;
    if (strcmp(ctype, "text/html") == 0)
        F->body_html_count++;
    else if (strncasecmp(ctype, "text", 4) == 0)
        F->body_text_count++;
    if (contains(cte, "base64"))
        F->base64_count++;
    else if (contains(cte, "quoted-printable"))
        F->qp_count_hdr++;
    if (cd[0] && contains(cd, "attachment"))
        F->attachment++;
    if (strncmp(ctype, "text", 4) == 0 && contains(cte, "base64") &&
        (!charset[0] || rules_re_exec(rules_re("(?:us-ascii|ansi_x3\\.4-1968|iso-ir-6|ansi_x3\\.4-1986|"
                                               "iso_646\\.irv:1991|ascii|iso646-us|us|ibm367|cp367|csascii)", 0),
                                      charset, strlen(charset), 0, &ov) > 0) &&
        !(cd[0] && (strncmp(cd, "attachment", 10) == 0 || strncmp(cd, "inline", 6) == 0)))
        F->base64_encoded_text = 1;
    if (rules_re_exec(rules_re("iso-\\S+-\\S+\\b", PCRE2_CASELESS), charset, strlen(charset), 0, &ov) > 0 &&
        rules_re_exec(rules_re("iso-(?:8859-\\d{1,2}|2022-(?:jp|kr))\\b", 0), charset, strlen(charset), 0,
                      &ov) <= 0)
        F->bad_iso_charset = 1;
    bool alpha = false;
    for (const char *p = charset; *p; p++)
        alpha |= isalpha((unsigned char)*p) != 0;
    if (alpha) {
        size_t ol = F->html_charsets ? strlen(F->html_charsets) : 0;
        F->html_charsets = xrealloc(F->html_charsets, ol + strlen(charset) + 2);
        if (ol)
            F->html_charsets[ol++] = ' ';
        memcpy(F->html_charsets + ol, charset, strlen(charset) + 1);
    }
    /* mime_faraway_charset: never, with ok_locales all (10_default_prefs.cf) */
}

/* the words of a rendered text that have a word character, counted: each
 * word once (a pointer into the text, which outlives the count), found
 * through an open-addressing table of indexes (a list searched from the
 * start made a long part quadratic) */
struct wc {
    const char **w;
    size_t *l, *n, nw, cap;
    unsigned *slot;             /* index + 1 into w; 0: free */
    size_t nslot;               /* a power of two, at least twice nw */
};

static size_t
wc_hash(const char *s, size_t l)
{
    size_t h = 2166136261u;                     /* FNV-1a */
    for (size_t i = 0; i < l; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

/* The slot of word [s, s + l): its index + 1 there, or 0 where it goes. */
static unsigned *
wc_slot(const struct wc *W, const char *s, size_t l)
{
    size_t h = wc_hash(s, l) & (W->nslot - 1);
    for (; W->slot[h]; h = (h + 1) & (W->nslot - 1)) {
        size_t i = W->slot[h] - 1;
        if (W->l[i] == l && memcmp(W->w[i], s, l) == 0)
            break;
    }
    return &W->slot[h];
}

/* The index of word [s, s + l), -1 when it is not there. */
static long
wc_find(const struct wc *W, const char *s, size_t l)
{
    if (W->nslot == 0)
        return -1;
    unsigned i = *wc_slot(W, s, l);
    return i ? (long)i - 1 : -1;
}

static void
wc_add(struct wc *W, const char *s, size_t l)
{
    if (2 * (W->nw + 1) > W->nslot) {
        free(W->slot);
        W->nslot = W->nslot ? W->nslot * 2 : 64;
        W->slot = xcalloc(W->nslot, sizeof(*W->slot));
        for (size_t i = 0; i < W->nw; i++)
            *wc_slot(W, W->w[i], W->l[i]) = (unsigned)i + 1;
    }
    unsigned *sl = wc_slot(W, s, l);
    if (*sl == 0) {
        if (W->nw == W->cap) {
            W->cap = W->cap ? W->cap * 2 : 32;
            W->w = xrealloc(W->w, W->cap * sizeof(*W->w));
            W->l = xrealloc(W->l, W->cap * sizeof(*W->l));
            W->n = xrealloc(W->n, W->cap * sizeof(*W->n));
        }
        W->w[W->nw] = s;
        W->l[W->nw] = l;
        W->n[W->nw++] = 0;
        *sl = (unsigned)W->nw;
    }
    W->n[*sl - 1]++;
}

static void
words(struct wc *W, const char *t)
{
    const char *p = t;
    while (*p) {
        while (*p && isspace((unsigned char)*p))
            p++;
        const char *b = p;
        while (*p && !isspace((unsigned char)*p))
            p++;
        if (p == b)
            break;
        bool word = false;
        for (const char *q = b; q < p && !word; q++)
            word = isalnum((unsigned char)*q) || *q == '_';
        if (word)
            wc_add(W, b, (size_t)(p - b));
    }
}

static void
wc_free(struct wc *W)
{
    free(W->w);
    free(W->l);
    free(W->n);
    free(W->slot);
}

/* BodyEval's _multipart_alternative_difference */
static void
madiff(struct rmsg *c, struct rmime *M, struct rmime_facts *F)
{
    int *all = xcalloc(M->nn + 1, sizeof(int));
    size_t na = rmime_parts(M, false, all, M->nn);
    /* content_summary: an Exchange meeting request (m/a, text/html,
     * text/calendar as the only parts) is left alone */
    if (M->nn == 3 && M->n[0].type && strcmp(M->n[0].type, "multipart/alternative") == 0 &&
        M->n[0].nkids == 2 && M->n[1].type && strcmp(M->n[1].type, "text/html") == 0 &&
        M->n[2].type && strcmp(M->n[2].type, "text/calendar") == 0) {
        free(all);
        return;
    }
    for (size_t k = 0; k < na; k++) {
        struct rnode *ma = &M->n[all[k]];
        if (ma->type == NULL || strncmp(ma->type, "multipart/alternative", 21) != 0 ||
            (ma->type[21] && isalnum((unsigned char)ma->type[21])))
            continue;
        struct wc H = { 0 }, T = { 0 };
        /* the text parts under it, in order */
        int *sub = xcalloc(M->nn + 1, sizeof(int));
        size_t ns = 0;
        int stack[256];
        size_t sp = 0;
        stack[sp++] = all[k];
        while (sp) {
            int i = stack[--sp];
            const struct rnode *p = &M->n[i];
            if (p->type && strncmp(p->type, "text", 4) == 0 && (p->type[4] == '/' || p->type[4] == '\0'))
                sub[ns++] = i;
            for (size_t q = p->nkids; q-- > 0 && sp < 256;)
                stack[sp++] = p->kids[q];
        }
        for (size_t q = 0; q < ns; q++) {
            render(c, M, sub[q]);
            struct rnode *p = &M->n[sub[q]];
            if (p->rendered == NULL)
                continue;
            if (p->rendered_html) {
                words(&H, p->rendered);
                bool img = false;
                if (H.nw == 0 && p->html && (rhtml_inside(p->html, "img", &img), img))
                    wc_add(&H, "\n", 1);   /* a word no text has */
            } else {
                words(&T, p->rendered);
            }
        }
        free(sub);
        if (H.nw) {
            size_t orig = H.nw, left = 0;
            F->madiff_html = (int)orig;
            F->madiff_text = (int)T.nw;
            for (size_t i = 0; i < H.nw; i++) {
                long j = wc_find(&T, H.w[i], H.l[i]);
                left += !(j >= 0 && (double)H.n[i] - (double)T.n[j] < 1);
            }
            double d = (double)left / (double)orig * 100;
            if (d > F->madiff)
                F->madiff = d;
        }
        wc_free(&H);
        wc_free(&T);
    }
    free(all);
}

const struct rmime_facts *
rmsg_mime_facts(struct rmsg *c)
{
    rmsg_texts(c);
    struct rmime *M = c->mime;
    if (c->mfacts)
        return c->mfacts;
    struct rmime_facts *F = c->mfacts = xcalloc(1, sizeof(*F));
    F->multipart_ratio = 1.0;
    int *all = xcalloc(M->nn + 1, sizeof(int));
    size_t na = rmime_parts(M, false, all, M->nn);
    size_t qp_bytes = 0, normal = 0, unicode = 0;
    double qp_count = 0;
    int part = -1;
    char **ptype = xcalloc(na + 1, sizeof(char *));
    long *pbytes = xcalloc(na + 1, sizeof(long));
    for (size_t k = 0; k < na; k++) {
        int ni = all[k];
        char ctype[256];
        char *charset = NULL;
        sa_content_type(node_header(c, M, ni, "Content-Type"), ctype, sizeof(ctype), NULL, &charset,
                        NULL, NULL);
        char cs[256];
        snprintf(cs, sizeof(cs), "%s", charset ? charset : "");
        for (char *p = cs; *p; p++)
            *p = (char)tolower((unsigned char)*p);
        free(charset);
        if (strcmp(ctype, "multipart/alternative") == 0)
            F->multipart_alternative = 1;
        char cte[128], cd[256];
        node_last_chomped(c, M, ni, "Content-Transfer-Encoding", cte, sizeof(cte));
        node_last_chomped(c, M, ni, "Content-Disposition", cd, sizeof(cd));
        mime_header(F, ctype, cte, cd, cs);
        struct rnode *n = &M->n[ni];
        if (!n->leaf)
            continue;
        part++;
        ptype[part] = xstrdup(ctype);
        pbytes[part] = strstr(cd, "attachment") ? -1 : 0;
        bool alt_text = F->multipart_alternative && !strstr(cd, "attachment") &&
                        (strcmp(ctype, "text/plain") == 0 || strcmp(ctype, "text/html") == 0);
        bool ascii_plain = strcmp(ctype, "text/plain") == 0 && (!cs[0] || strcmp(cs, "us-ascii") == 0);
        bool uni = strcmp(ctype, "text/plain") == 0 && (!cte[0] || strcmp(cte, "7bit") == 0 ||
                                                        strcmp(cte, "8bit") == 0);
        bool isqp = strcmp(cte, "quoted-printable") == 0;
        const char *s = n->raw.p ? n->raw.p : "";
        size_t len = n->raw.n;
        if (strcmp(cte, "base64") == 0 && strcmp(ctype, "application/ics") != 0) {
            for (size_t o = 0; o < len;) {
                const char *nl = memchr(s + o, '\n', len - o);
                size_t e = nl ? (size_t)(nl - s) + 1 : len;
                if (e - o > F->base64_length)
                    F->base64_length = e - o;
                o = e;
            }
        }
        for (size_t o = 0; o < len;) {
            const char *nl = memchr(s + o, '\n', len - o);
            size_t e = nl ? (size_t)(nl - s) + 1 : len;
            const char *l = s + o;
            size_t ll = e - o;
            o = e;
            if (alt_text && pbytes[part] >= 0)
                pbytes[part] += (long)ll;
            if (isqp && !(ll >= 6 && strncmp(l, "SPAM: ", 6) == 0)) {
                if (ll > 78 + 1)
                    F->qp_long_line = 1;
                qp_bytes += ll;
                if (memchr(l, '=', ll)) {
                    const size_t *ov;
                    size_t off = 0;
                    int qc = 0;
                    while (off < ll && rules_re_exec(rules_re("=(?:09|3[0-9ABCEF]|[2456][0-9A-F]|7[0-9A-E])", 0),
                                                     l, ll, off, &ov) > 0) {
                        qc++;
                        off = ov[1];
                    }
                    if (qc) {
                        qp_count += qc;
                        if (rules_re_exec(rules_re("((?:=09|=20)+)\\s*$", 0), l, ll, 0, &ov) > 0)
                            qp_count -= (double)(ov[3] - ov[2]) / 3;
                    }
                }
            }
            if (ascii_plain) {
                for (size_t i = 0; i < ll; i++) {
                    unsigned char ch = (unsigned char)l[i];
                    if (ch == 0 || ch == '\r' || ch >= 0x80) {
                        F->ascii_text_illegal++;
                        break;
                    }
                }
            }
            if (uni) {
                const size_t *ov;
                size_t off = 0, subs = 0;
                /* (a line without "&#x" has none: most lines) */
                while (off < ll && memmem(l + off, ll - off, "&#x", 3) &&
                       rules_re_exec(rules_re("&#x[0-9A-F]{4};", 0), l, ll, off, &ov) > 0) {
                    subs++;
                    off = ov[1];
                }
                normal += ll - subs * 8;
                unicode += subs;
            }
        }
    }
    if (qp_bytes) {
        F->qp_ratio = qp_count / (double)qp_bytes;
        F->qp_count = qp_count;
    } else {
        F->qp_count = F->qp_count_hdr;
    }
    if (normal)
        F->text_unicode_ratio = (double)unicode / (double)normal;
    if (F->multipart_alternative) {
        long text = -1, html = -1;
        for (int i = part; i >= 0; i--) {
            if (pbytes[i] < 0)
                continue;
            if (html < 0 && strcmp(ptype[i], "text/html") == 0)
                html = pbytes[i];
            else if (text < 0 && strcmp(ptype[i], "text/plain") == 0)
                text = pbytes[i];
            if (html >= 0 && text >= 0)
                break;
        }
        if (text >= 0 && html > 0)
            F->multipart_ratio = (double)text / (double)html;
    }
    for (size_t i = 0; i < M->nb; i++)
        if (M->bstate[i].state != 0 && M->bstate[i].state != 0x7fffffff)
            F->missing_boundary = 1;
    for (int i = 0; i <= part; i++)
        free(ptype[i]);
    free(ptype);
    free(pbytes);
    /* check_ma_non_text: a multipart/alternative with a part (at any depth
     * below it, multipart/related and application/rtf aside) not text */
    for (size_t k = 0; k < na && !F->ma_non_text; k++) {
        struct rnode *ma = &M->n[all[k]];
        if (ma->type == NULL || strcmp(ma->type, "multipart/alternative") != 0)
            continue;
        for (size_t q = 0; q < ma->nkids && !F->ma_non_text; q++) {
            const struct rnode *p = &M->n[ma->kids[q]];
            const char *t = p->type ? p->type : "";
            if (strcasecmp(t, "multipart/related") == 0 || strcasecmp(t, "application/rtf") == 0 ||
                strncasecmp(t, "text/", 5) == 0)
                continue;
            F->ma_non_text = true;
        }
    }
    F->missing_mime_headers = M->missing_mime_headers;
    F->missing_mime_head_body_separator = M->missing_head_body_sep;
    F->mime_epilogue_exists = M->epilogue;
    F->mimepart_limit_exceeded = M->limit;
    free(all);
    madiff(c, M, F);
    return F;
}

size_t
rmsg_part_fields(struct rmsg *c, const char *field, bool raw, char ***vals_r)
{
    rmsg_texts(c);
    struct rmime *M = c->mime;
    int *all = xcalloc(M->nn + 1, sizeof(int));
    size_t na = rmime_parts(M, false, all, M->nn);
    char **v = xcalloc(na + 1, sizeof(char *));
    for (size_t k = 0; k < na; k++) {
        struct rnode *n = &M->n[all[k]];
        if (strcmp(field, "ALL") == 0) {
            struct sb b = { 0 };
            sb_add(&b, "", 0);
            for (size_t i = 0; i < n->nf; i++) {
                const char *val = raw ? n->f[i].raw : node_header(c, M, all[k], n->f[i].name);
                /* the node's fields in order; node_header gives the last of a
                 * name, so decode this one itself */
                if (!raw) {
                    if (n->f[i].dec == NULL)
                        n->f[i].dec = sa_decode_header(n->f[i].raw, strlen(n->f[i].raw), n->f[i].name);
                    val = n->f[i].dec;
                }
                sb_add(&b, n->f[i].name, strlen(n->f[i].name));
                sb_add(&b, ": ", 2);
                sb_add(&b, val, strlen(val));
                if (!raw || b.p[b.n - 1] != '\n')
                    sb_add(&b, "\n", 1);
            }
            v[k] = b.p;
            continue;
        }
        if (raw) {
            for (size_t i = n->nf; i-- > 0;)
                if (strcasecmp(n->f[i].name, field) == 0) {
                    v[k] = xstrdup(n->f[i].raw);
                    break;
                }
        } else {
            const char *d = node_header(c, M, all[k], field);
            if (d) {
                size_t l = strlen(d);
                v[k] = xmalloc(l + 2);
                memcpy(v[k], d, l);
                v[k][l] = '\n';
                v[k][l + 1] = '\0';
            }
        }
    }
    free(all);
    *vals_r = v;
    return na;
}
