/*
 * rules_header.c -- the header fields of a message as SpamAssassin's rules
 * read them. The fields are cut as Mail::SpamAssassin::Message does (a
 * field without a colon is skipped, the header also ends at a "--" line
 * or the fourth line that is no field), each value kept raw (CRLF made LF)
 * and decoded on first use as Message::Node's header() does (unfolded,
 * trimmed, 8-bit text made UTF-8, RFC 2047 words decoded except in the
 * fields SpamAssassin leaves alone). rmsg_get answers the requests of
 * header rules with PerMsgStatus's get(): modifiers raw, addr, name,
 * first and last, and the pseudo-fields ALL, ALL-TRUSTED, ALL-INTERNAL,
 * ALL-UNTRUSTED, ALL-EXTERNAL, ToCc, MESSAGEID, EnvelopeFrom and
 * X-Spam-Relays-*. Addresses are read with the internal parser of
 * SpamAssassin's Util.pm, dates with its parse_rfc822_date. (The formats
 * follow SpamAssassin 4.0's Perl, Apache License 2.0; written anew here.)
 *
 * One room though long: get()'s modifiers need Util.pm's address and date
 * parsers, which nothing else uses.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <ctype.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <glib.h>
#include "rules_eval.h"
#include "../common/util.h"

/* The answer of a request that has no value, in scalar context. */
static const char no_value[] = "";

struct rget {
    char *request;
    char *joined;               /* NULL: no value */
    size_t joined_len;
    char *first;
};

/* The answers of a message, found by request in an open-addressing table
 * of indexes into g (a rule set asks some hundreds of requests a message;
 * a list searched from the start made that quadratic). */
struct rmsg_cache {
    struct rget *g;
    size_t n, cap;
    unsigned *slot;             /* index + 1 into g; 0: free */
    size_t nslot;               /* a power of two, at least twice n */
    /* the same answers by a rule's hdr_id: index + 1 into g; 0: not yet */
    unsigned *by_id;
};

/* ------------------------------------------------------------- strings */

struct sbuf { char *p; size_t n, cap; };

static void
sb_add(struct sbuf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->p = xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

/* Room for n more bytes (and the NUL) at once, for a text whose length is
 * known: one allocation instead of a doubling per few bytes. */
static void
sb_reserve(struct sbuf *b, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        b->cap = b->n + n + 1;
        b->p = xrealloc(b->p, b->cap);
    }
}

static void
sb_str(struct sbuf *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

static char *
sb_take(struct sbuf *b)
{
    if (b->p == NULL)
        return xstrdup("");
    char *p = b->p;
    b->p = NULL;
    b->n = b->cap = 0;
    return p;
}

static void
rvals_add(struct rvals *v, char *s)
{
    if (v->n % 8 == 0)
        v->v = xrealloc(v->v, (v->n + 8) * sizeof(char *));
    v->v[v->n++] = s;
}

void
rvals_free(struct rvals *v)
{
    for (size_t i = 0; i < v->n; i++)
        free(v->v[i]);
    free(v->v);
    v->v = NULL;
    v->n = 0;
}

/* -------------------------------------------------------- the fields */

unsigned
rmsg_name_hash(const char *name, size_t n)
{
    unsigned h = 2166136261u;                   /* FNV-1a over the letters folded */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)(name[i] | 0x20)) * 16777619u;
    return h;
}

bool
rmsg_field_is(const struct rmsg *c, size_t i, const char *name, unsigned h)
{
    return c->f[i].hash == h && strcasecmp(c->f[i].name, name) == 0;
}

static bool
field_name_ok(const char *p, size_t n)
{
    /* /^[\041-\071\073-\176]+[ \t]*:/ */
    size_t i = 0;
    while (i < n && p[i] >= 041 && p[i] <= 0176 && p[i] != ':')
        i++;
    if (i == 0)
        return false;
    while (i < n && (p[i] == ' ' || p[i] == '\t'))
        i++;
    return i < n && p[i] == ':';
}

/* The field in [s, e) (its lines, continuations in): name and raw value. */
static void
field_add(struct rmsg *c, const char *s, const char *e)
{
    const char *colon = memchr(s, ':', (size_t)(e - s));
    if (colon == NULL || c->nf == RMSG_MAX_FIELDS)
        return;
    size_t kl = (size_t)(colon - s);
    while (kl && (s[kl - 1] == ' ' || s[kl - 1] == '\t'))
        kl--;
    if (kl > SA_MAX_HEADER_KEY) {
        kl = SA_MAX_HEADER_KEY;
        c->truncated_header = true;
    }
    struct sbuf v = { 0 };
    sb_reserve(&v, (size_t)(e - colon));
    for (const char *p = colon + 1; p < e; p++) {
        if (c->crlf && *p == '\r' && p + 1 < e && p[1] == '\n')
            continue;
        v.p[v.n++] = *p;
    }
    v.p[v.n] = '\0';
    if (v.n > SA_MAX_HEADER_VALUE) {
        c->truncated_header = true;
        v.n = SA_MAX_HEADER_VALUE;
        v.p[v.n] = '\0';
    }
    if (c->nf % 32 == 0)
        c->f = xrealloc(c->f, (c->nf + 32) * sizeof(*c->f));
    c->f[c->nf].name = xstrndup(s, kl);
    c->f[c->nf].raw = sb_take(&v);
    c->f[c->nf].dec = NULL;
    c->f[c->nf].hash = rmsg_name_hash(c->f[c->nf].name, strlen(c->f[c->nf].name));
    c->nf++;
}

static bool
is_blank_line(const struct rmsg *c, const char *l, size_t n)
{
    if (c->crlf)        /* a lone LF counts as CRLF there (SpamAssassin adds the CR) */
        return (n == 2 && l[0] == '\r' && l[1] == '\n') || (n == 1 && l[0] == '\n');
    return n == 1 && l[0] == '\n';
}

void
rmsg_init(struct rmsg *c, const struct filter_msg *m)
{
    memset(c, 0, sizeof(*c));
    rmsg_cut(c, m);
    c->cache = xcalloc(1, sizeof(*c->cache));
}

void
rmsg_cut(struct rmsg *c, const struct filter_msg *m)
{
    c->m = m;
    const char *p = m->data ? m->data : "", *end = p + (m->data ? m->len : 0);
    /* CRLF when the first or the last line has one */
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    if (nl && nl > p && nl[-1] == '\r')
        c->crlf = true;
    if (end - p >= 2 && end[-1] == '\n' && end[-2] == '\r')
        c->crlf = true;
    else if (end > p && end[-1] != '\n') {
        const char *last = p;
        for (const char *q = p; q < end; q++)
            if (*q == '\n')
                last = q + 1;
        c->crlf |= memmem(last, (size_t)(end - last), "\r\n", 2) != NULL;
    }
    const char *field = NULL, *line = p;
    int errors = 0;
    c->head = p;
    for (;;) {
        if (line >= end) {              /* no empty line before the end */
            if (field)
                field_add(c, field, end);
            c->no_separator = true;
            c->head_len = (size_t)(end - p);
            c->body = end;
            break;
        }
        const char *le = memchr(line, '\n', (size_t)(end - line));
        const char *next = le ? le + 1 : end;
        size_t ln = (size_t)(next - line);
        if (line[0] == ' ' || line[0] == '\t') {
            if (field == NULL)
                field = line;           /* a header that starts with a continuation */
            line = next;
            continue;
        }
        if (field)
            field_add(c, field, line);
        field = NULL;
        if (is_blank_line(c, line, ln)) {
            c->head_len = (size_t)(next - p);
            c->body = next;
            break;
        }
        if (ln >= 2 && line[0] == '-' && line[1] == '-') {      /* a MIME boundary */
            c->no_separator = true;
            c->head_len = (size_t)(line - p);
            c->body = line;
            break;
        }
        if (!field_name_ok(line, ln) && ++errors > 3) {
            c->no_separator = true;
            c->head_len = (size_t)(line - p);
            c->body = line;
            break;
        }
        field = line;
        line = next;
    }
    c->body_len = (size_t)(end - c->body);
}

void
rmsg_free(struct rmsg *c)
{
    for (size_t i = 0; i < c->nf; i++) {
        free(c->f[i].name);
        free(c->f[i].raw);
        free(c->f[i].dec);
    }
    free(c->f);
    for (size_t i = 0; c->cache && i < c->cache->n; i++) {
        free(c->cache->g[i].request);
        struct rget *g = &c->cache->g[i];
        if (g->first != g->joined && g->first != no_value)
            free(g->first);
        free(g->joined);
    }
    if (c->cache) {
        free(c->cache->g);
        free(c->cache->slot);
        free(c->cache->by_id);
    }
    free(c->cache);
    for (size_t i = 0; i < c->nrelays; i++)
        free(c->relays[i].as_string);
    free(c->relays);
    for (int i = 0; i < 4; i++)
        free(c->relays_str[i]);
    rmsg_facts_free(c);
    rmsg_texts_free(c);
    for (size_t i = 0; i < c->nuris; i++)
        free(c->uris[i]);
    free(c->uris);
    for (size_t i = 0; i < c->ntext_uris; i++)
        free(c->text_uris[i]);
    free(c->text_uris);
    memset(c, 0, sizeof(*c));
}

/* ------------------------------------------------------------ decoding */

static bool
valid_utf8(const char *s, size_t n)
{
    return g_utf8_validate(s, (gssize)n, NULL);
}

/* Windows-1252 to UTF-8 (what SpamAssassin falls back to). */
static const unsigned short w1252[32] = {
    0x20ac, 0xfffd, 0x201a, 0x0192, 0x201e, 0x2026, 0x2020, 0x2021, 0x02c6, 0x2030, 0x0160,
    0x2039, 0x0152, 0xfffd, 0x017d, 0xfffd, 0xfffd, 0x2018, 0x2019, 0x201c, 0x201d, 0x2022,
    0x2013, 0x2014, 0x02dc, 0x2122, 0x0161, 0x203a, 0x0153, 0xfffd, 0x017e, 0x0178,
};

static char *from_w1252_len(const char *s, size_t n, size_t *len_r);

static char *
from_w1252_len(const char *s, size_t n, size_t *len_r)
{
    struct sbuf b = { 0 };
    sb_add(&b, "", 0);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        unsigned long cp = ch < 0x80 ? ch : ch < 0xa0 ? w1252[ch - 0x80] : ch;
        char o[4];
        size_t k = utf8_encode(o, cp);
        sb_add(&b, o, k);
    }
    *len_r = b.n;
    return sb_take(&b);
}

bool
rules_has_8bit(const char *s, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {       /* eight bytes at a time */
        uint64_t w;
        memcpy(&w, s + i, 8);
        if (w & 0x8080808080808080u)
            return true;
    }
    for (; i < n; i++)
        if ((unsigned char)s[i] & 0x80)
            return true;
    return false;
}

/* Node.pm's _normalize to UTF-8 octets; insist: decode as the declared
 * charset even when the bytes are valid UTF-8. */
static char *normalize_in(const char *s, size_t n, const char *charset, bool insist,
                          bool *decoded_r, size_t *len_r);

char *
sa_normalize_x(const char *s, size_t n, const char *charset, bool insist, bool *decoded_r)
{
    size_t l;
    return normalize_in(s, n, charset, insist, decoded_r, &l);
}

char *
sa_normalize_len(const char *s, size_t n, const char *charset, bool insist, bool *decoded_r,
                 size_t *len_r)
{
    return normalize_in(s, n, charset, insist, decoded_r, len_r);
}

static char *
dup_len(const char *s, size_t n, size_t *len_r)
{
    *len_r = n;
    return xstrndup(s, n);
}

static char *
normalize_in(const char *s, size_t n, const char *charset, bool insist, bool *decoded_r,
             size_t *len_r)
{
    *decoded_r = true;
    bool eight = rules_has_8bit(s, n);
    static const char *const asciiish =
        "^(?:(?:US-)?ASCII|ANSI[_ ]?X3\\.4-(?:1986|1968)|ISO646-US|ISO[ -]?8859(?:-\\d{1,2})?|"
        "Windows-\\d{4}|UTF-?8|(?:KOI8|EUC)-[A-Z]{1,2}|Big5|GBK|GB[ -]?18030(?:-20\\d\\d)?)\\z";
    const size_t *ov;
    if (!eight && rules_re_exec(rules_re(asciiish, PCRE2_CASELESS), charset, strlen(charset), 0,
                                &ov) > 0) {
        *decoded_r = false;         /* left as octets, not decoded */
        return dup_len(s, n, len_r);
    }
    if (eight && !insist && valid_utf8(s, n))
        return dup_len(s, n, len_r);
    const char *cs = charset;
    if (strcasecmp(cs, "iso-8859-1") == 0 || strcasecmp(cs, "iso8859-1") == 0 ||
        strcasecmp(cs, "cp1252") == 0 || strcasecmp(cs, "windows-1252") == 0)
        return from_w1252_len(s, n, len_r);
    bool ascii = strcasecmp(cs, "us-ascii") == 0 || strcasecmp(cs, "ascii") == 0;
    if (!(ascii && !insist) && cs[0]) {
        if (strcasecmp(cs, "utf8") == 0 || strcasecmp(cs, "utf-8") == 0) {
            if (valid_utf8(s, n))
                return dup_len(s, n, len_r);
        } else {
            gsize wr = 0;
            GError *e = NULL;
            gchar *o = g_convert_with_fallback(s, (gssize)n, "UTF-8", cs, "\xef\xbf\xbd", NULL,
                                               &wr, &e);
            if (o) {
                char *r = xstrndup(o, wr);
                g_free(o);
                *len_r = wr;
                return r;
            }
            if (e)
                g_error_free(e);
        }
    }
    if (!eight) {
        *decoded_r = false;
        return dup_len(s, n, len_r);
    }
    return from_w1252_len(s, n, len_r);
}

char *
sa_normalize(const char *s, size_t n, const char *charset, bool insist)
{
    bool d;
    return sa_normalize_x(s, n, charset, insist, &d);
}


static int
hexval(int ch)
{
    return ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
         : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1;
}

/* Util.pm's qp_decode (the RFC 2047 caller turned "_" into "=20"). */
static void
qp_decode(struct sbuf *out, const char *s, size_t n, bool underscore)
{
    for (size_t i = 0; i < n; i++) {
        if (underscore && s[i] == '_') {
            sb_add(out, " ", 1);
            continue;
        }
        if (s[i] == '=' && i + 2 < n &&
            hexval((unsigned char)s[i + 1]) >= 0 && hexval((unsigned char)s[i + 2]) >= 0) {
            char ch = (char)(hexval((unsigned char)s[i + 1]) * 16 + hexval((unsigned char)s[i + 2]));
            sb_add(out, &ch, 1);
            i += 2;
            continue;
        }
        sb_add(out, s + i, 1);
    }
}

static int
b64val(int ch)
{
    return ch >= 'A' && ch <= 'Z' ? ch - 'A' : ch >= 'a' && ch <= 'z' ? ch - 'a' + 26
         : ch >= '0' && ch <= '9' ? ch - '0' + 52 : ch == '+' ? 62 : ch == '/' ? 63 : -1;
}

/* Util.pm's base64_decode: white space out; a well-formed text decoded
 * (an '=' inside as 'A'); anything else the way its fallback does it,
 * through uudecode: what is not base64 out, the '=' at the end off, the
 * rest read in lines of 84 with '=' as 63. */
void
sa_base64_decode(const char *s, size_t n, char **out_r, size_t *len_r)
{
    struct sbuf in = { 0 };
    sb_add(&in, "", 0);
    for (size_t i = 0; i < n; i++)
        if (!isspace((unsigned char)s[i]))
            sb_add(&in, s + i, 1);
    struct sbuf out = { 0 };
    sb_add(&out, "", 0);
    /* (length % 4 == 0) && /^(?:[A-Za-z0-9+\/=]{2,}={0,2})$/ */
    bool wellformed = in.n % 4 == 0 && in.n >= 2;
    for (size_t i = 0; i < in.n && wellformed; i++)
        wellformed = b64val((unsigned char)in.p[i]) >= 0 || in.p[i] == '=';
    if (wellformed) {
        /* '=' runs that do not end the text read as 'A' */
        size_t end = in.n;
        while (end && in.p[end - 1] == '=')
            end--;
        unsigned acc = 0;
        int bits = 0;
        for (size_t i = 0; i < end; i++) {
            int v = in.p[i] == '=' ? 0 : b64val((unsigned char)in.p[i]);
            acc = (acc << 6) | (unsigned)v;
            bits += 6;
            if (bits >= 8) {
                bits -= 8;
                char ch = (char)((acc >> bits) & 0xff);
                sb_add(&out, &ch, 1);
            }
        }
        free(in.p);
        *out_r = out.p;
        *len_r = out.n;
        return;
    }
    /* the fallback */
    size_t k = 0;
    for (size_t i = 0; i < in.n; i++)
        if (b64val((unsigned char)in.p[i]) >= 0 || in.p[i] == '=')
            in.p[k++] = in.p[i];
    while (k && in.p[k - 1] == '=')
        k--;
    if (k % 4 == 1)
        k--;
    for (size_t o = 0; o < k;) {
        size_t len = k - o >= 84 ? 84 : k - o;
        size_t want = len * 3 / 4;
        unsigned char grp[4];
        size_t made = 0;
        for (size_t i = 0; i < len && made < want; i += 4) {
            for (size_t g = 0; g < 4; g++) {
                char ch = i + g < len ? in.p[o + i + g] : 'A';
                grp[g] = (unsigned char)(ch == '=' ? 63 : b64val((unsigned char)ch));
            }
            unsigned char b3[3] = { (unsigned char)(grp[0] << 2 | grp[1] >> 4),
                                    (unsigned char)(grp[1] << 4 | grp[2] >> 2),
                                    (unsigned char)(grp[2] << 6 | grp[3]) };
            for (size_t q = 0; q < 3 && made < want; q++, made++)
                sb_add(&out, (const char *)&b3[q], 1);
        }
        o += len;
    }
    free(in.p);
    *out_r = out.p;
    *len_r = out.n;
}

static void
b64_decode(struct sbuf *out, const char *s, size_t n)
{
    char *d;
    size_t dl;
    sa_base64_decode(s, n, &d, &dl);
    sb_add(out, d, dl);
    free(d);
}

char *
sa_decode_header(const char *value, size_t n, const char *name)
{
    /* header(): unfold, trim; _decode_header: no line breaks left */
    size_t i = 0;
    while (i < n && isspace((unsigned char)value[i]))
        i++;
    size_t e = n;
    while (e > i && isspace((unsigned char)value[e - 1]))
        e--;
    char *s = xmalloc(e - i + 1);       /* it only gets shorter */
    size_t o = 0;
    for (; i < e; i++) {
        if (value[i] == '\n') {
            size_t k = i + 1;
            if (k < e && (value[k] == ' ' || value[k] == '\t')) {
                while (k < e && (value[k] == ' ' || value[k] == '\t'))
                    k++;
                s[o++] = ' ';
                i = k - 1;
            }
            continue;               /* a line break left alone: dropped */
        }
        if (value[i] == '\r' && i + 1 < e && value[i + 1] == '\n')
            continue;
        s[o++] = value[i];
    }
    s[o] = '\0';
    if (rules_has_8bit(s, strlen(s))) {
        char *u = sa_normalize(s, strlen(s), "UTF-8", false);
        free(s);
        s = u;
    }
    static const char *const nodecode =
        "^(?:Received|(?:Resent-)?(?:Message-ID|Date)|MIME-Version|References|In-Reply-To|List-.*)\\z";
    const size_t *ov;
    if (strstr(s, "=?") == NULL ||
        rules_re_exec(rules_re(nodecode, PCRE2_CASELESS | PCRE2_DOTALL), name, strlen(name), 0,
                      &ov) > 0)
        return s;
    /* white space between two encoded words goes */
    static const char *const ew = "=\\?[A-Za-z0-9*_-]+\\?[bqBQ]\\?[^?]*\\?=";
    void *ew_re = rules_re("(=\\?[A-Za-z0-9*_-]+\\?[bqBQ]\\?[^?]*\\?=)\\s+(?==\\?[A-Za-z0-9*_-]+\\?[bqBQ]\\?[^?]*\\?=)",
                           PCRE2_DOTALL);
    struct sbuf j = { 0 };
    sb_add(&j, "", 0);
    size_t len = strlen(s), off = 0;
    int rc;
    while (off <= len && (rc = rules_re_exec(ew_re, s, len, off, &ov)) > 0) {
        sb_add(&j, s + off, ov[2] - off);
        sb_add(&j, s + ov[2], ov[3] - ov[2]);
        off = ov[1] > ov[0] ? ov[1] : ov[1] + 1;
    }
    if (off < len)
        sb_add(&j, s + off, len - off);
    free(s);
    s = sb_take(&j);
    len = strlen(s);
    (void)ew;
    /* sections: encoded words and the text between, same charsets merged */
    void *word = rules_re("\\G=\\?([A-Za-z0-9*_-]+)\\?([bqBQ])\\?([^?]*)\\?=", PCRE2_DOTALL);
    struct sect { struct sbuf s; char cs[64]; } *sec = NULL;
    size_t ns = 0;
    char last[64] = "";
    for (off = 0; off < len;) {
        char cs[64] = "";
        struct sbuf piece = { 0 };
        sb_add(&piece, "", 0);
        if (rules_re_exec(word, s, len, off, &ov) > 0 && ov[0] == off) {
            size_t cl = ov[3] - ov[2];
            snprintf(cs, sizeof(cs), "%.*s", (int)(cl < 63 ? cl : 63), s + ov[2]);
            for (char *q = cs; *q; q++)
                *q = (char)tolower((unsigned char)*q);
            if (s[ov[4]] == 'b' || s[ov[4]] == 'B')
                b64_decode(&piece, s + ov[6], ov[7] - ov[6]);
            else
                qp_decode(&piece, s + ov[6], ov[7] - ov[6], true);
            off = ov[1];
        } else {
            /* ([^=]+|.) */
            size_t k = off;
            if (s[k] == '=')
                k++;
            else
                while (k < len && s[k] != '=')
                    k++;
            sb_add(&piece, s + off, k - off);
            off = k;
        }
        if (ns && strcmp(cs, last) == 0) {
            sb_add(&sec[ns - 1].s, piece.p, piece.n);
            free(piece.p);
        } else {
            sec = xrealloc(sec, (ns + 1) * sizeof(*sec));
            sec[ns].s = piece;
            str_copy(sec[ns].cs, cs, sizeof(sec[ns].cs));
            ns++;
        }
        str_copy(last, cs, sizeof(last));
    }
    struct sbuf out = { 0 };
    sb_add(&out, "", 0);
    for (size_t k = 0; k < ns; k++) {
        if (sec[k].cs[0] == '\0') {
            sb_add(&out, sec[k].s.p, sec[k].s.n);
        } else {
            char *star = strchr(sec[k].cs, '*');
            if (star)
                *star = '\0';
            char *u = sa_normalize(sec[k].s.p, sec[k].s.n, sec[k].cs, true);
            sb_str(&out, u);
            free(u);
        }
        free(sec[k].s.p);
    }
    free(sec);
    free(s);
    return sb_take(&out);
}

const char *
rmsg_decoded(struct rmsg *c, size_t i)
{
    if (c->f[i].dec == NULL)
        c->f[i].dec = sa_decode_header(c->f[i].raw, strlen(c->f[i].raw), c->f[i].name);
    return c->f[i].dec;
}

/* ------------------------------------------------------------ addresses */

/* Util.pm's $header_address_mailre and $header_address_re. */
#define MAILRE \
    "(?:\"(?:|(?:[^\"\\\\]++|\\\\.)*+)\"|[^\\@\\s\\<\\>\\(\\)\\[\\]\\,\\:\\;]+)" \
    "\\@(?:[^\\\"\\s\\<\\>\\(\\)\\[\\]\\,\\:\\;]+|\\[[\\d:.]+\\])"
#define ADDRRE \
    "^\\s*(?:(?:((?:\"(?:|(?:[^\"\\\\]++|\\\\.)*+)\"|[^\",;<]++)+)\\s*)?" \
    "<\\s*([^>\\@]*\\S+|\\s*)\\s*>" \
    "(?:\\s*<\\s*(?:(?:\"(?:|(?:[^\"\\\\]++|\\\\.)*+)\")?\\S+|\\s*)\\s*>)*" \
    "|(?:(" MAILRE ")|((?:\"(?:|(?:[^\"\\\\]++|\\\\.)*+)\"|[^\",;<]++)+)))" \
    "(?:\\s*\\(((?:|(?:[^()\\\\]++|\\\\.)*+))\\))?\\s*(?:[,;]|\\z)"

static bool
valid_parsed(const char *a)
{
    if (a == NULL || strncmp(a, "\"\"@", 3) == 0)
        return false;
    size_t q = 0;
    for (const char *p = a; *p; p++)
        q += *p == '"';
    return q != 1;
}

bool
sa_fqdn_valid(const char *host, size_t n)
{
    while (n && host[n - 1] == '.')
        n--;
    if (n == 0 || n > 253)
        return false;
    size_t labels = 1;
    for (size_t i = 0; i < n; i++)
        labels += host[i] == '.';
    if (labels < 2)
        return false;
    size_t cnt = labels;
    const char *p = host, *end = host + n;
    while (p <= end) {
        const char *dot = memchr(p, '.', (size_t)(end - p));
        const char *le = dot ? dot : end;
        size_t l = (size_t)(le - p);
        if (l < 1 || l > 63)
            return false;
        for (size_t i = 0; i < l; i++) {
            int ch = tolower((unsigned char)p[i]);
            bool ok = isalnum(ch) || ch == '_' || (ch == '-' && i > 0 && i + 1 < l);
            if (!ok || (unsigned char)p[i] >= 0x80)
                return false;
            if (ch == '_' && cnt <= 2)
                return false;
        }
        cnt--;
        if (dot == NULL)
            break;
        p = dot + 1;
    }
    return true;
}

static char *
substr_dup(const char *s, const size_t *ov, int k, int rc)
{
    if (k >= rc || ov[2 * k] == PCRE2_UNSET)
        return NULL;
    return xstrndup(s + ov[2 * k], ov[2 * k + 1] - ov[2 * k]);
}

/* s/re//g over a malloc'd string */
static char *
re_delete_all(char *s, void *re)
{
    const size_t *ov;
    struct sbuf b = { 0 };
    sb_add(&b, "", 0);
    size_t len = strlen(s), off = 0;
    while (off <= len && rules_re_exec(re, s, len, off, &ov) > 0) {
        sb_add(&b, s + off, ov[0] - off);
        if (ov[1] == ov[0]) {
            if (ov[0] < len)
                sb_add(&b, s + ov[0], 1);
            off = ov[0] + 1;
        } else {
            off = ov[1];
        }
    }
    if (off < len)
        sb_add(&b, s + off, len - off);
    free(s);
    return sb_take(&b);
}

size_t
rmsg_addresses(const char *value, struct raddr **out_r)
{
    *out_r = NULL;
    if (value == NULL)
        return 0;
    /* trailing white space off, "\\\\" out */
    size_t n = strlen(value);
    while (n && isspace((unsigned char)value[n - 1]))
        n--;
    struct sbuf b = { 0 };
    sb_add(&b, "", 0);
    for (size_t i = 0; i < n; i++) {
        if (value[i] == '\\' && i + 1 < n && value[i + 1] == '\\') {
            i++;
            continue;
        }
        sb_add(&b, value + i, 1);
    }
    char *s = sb_take(&b);
    /* a group: its members; s/^[^"()<>]+:\s*(.*?)\s*(?:;.*)?/$1/gs */
    const size_t *ov;
    void *group = rules_re("^[^\"()<>]+:\\s*(.*?)\\s*(?:;.*)?", PCRE2_DOTALL);
    if (rules_re_exec(group, s, strlen(s), 0, &ov) > 0) {
        char *g = xmalloc(strlen(s) + 1);
        size_t gl = ov[3] - ov[2];
        memcpy(g, s + ov[2], gl);
        memcpy(g + gl, s + ov[1], strlen(s + ov[1]) + 1);
        free(s);
        s = g;
    }
    bool any = false;
    for (const char *p = s; *p; p++)
        any |= !isspace((unsigned char)*p);
    if (!any) {
        free(s);
        return 0;
    }
    void *addr_re = rules_re(ADDRRE, PCRE2_CASELESS | PCRE2_DOTALL);
    void *mail_full = rules_re("^" MAILRE "\\z", PCRE2_CASELESS);
    void *comments = rules_re("\\((?:|(?:[^()\\\\]++|\\\\.)*+)\\)", PCRE2_DOTALL);
    void *phrase_re = rules_re("(?:\"(|(?:[^\"\\\\]++|\\\\.)*+)\"|([^\"]++))", PCRE2_CASELESS | PCRE2_DOTALL);
    struct raddr *out = NULL;
    size_t na = 0;
    int rc;
    while (s[0] && (rc = rules_re_exec(addr_re, s, strlen(s), 0, &ov)) > 0 && na < 100) {
        char *phrase = substr_dup(s, ov, 1, rc);
        if (phrase == NULL)
            phrase = substr_dup(s, ov, 4, rc);
        char *address = substr_dup(s, ov, 2, rc);
        bool from_brackets = address != NULL;
        if (address == NULL)
            address = substr_dup(s, ov, 3, rc);
        char *comment = substr_dup(s, ov, 5, rc);
        size_t used = ov[1];
        memmove(s, s + used, strlen(s + used) + 1);
        const size_t *ov2;
        if (from_brackets) {
            address = re_delete_all(address, comments);
            if (rules_re_exec(mail_full, address, strlen(address), 0, &ov2) <= 0) {
                free(address);
                address = NULL;
            }
        }
        if (!valid_parsed(address)) {
            free(address);
            address = NULL;
        }
        if (phrase) {
            struct sbuf np = { 0 };
            sb_add(&np, "", 0);
            size_t pl = strlen(phrase), off = 0;
            int prc;
            while (off < pl && (prc = rules_re_exec(phrase_re, phrase, pl, off, &ov2)) > 0) {
                /* (taken now: re_delete_all below reuses the match data ov2 is in) */
                size_t next = ov2[1] > ov2[0] ? ov2[1] : ov2[1] + 1;
                if (prc > 1 && ov2[2] != PCRE2_UNSET) {          /* quoted: unescape */
                    for (size_t k = ov2[2]; k < ov2[3]; k++) {
                        if (phrase[k] == '\\' && k + 1 < ov2[3] && phrase[k + 1] != '\\')
                            continue;
                        sb_add(&np, phrase + k, 1);
                    }
                } else if (prc > 2 && ov2[4] != PCRE2_UNSET) {
                    char *nq = xstrndup(phrase + ov2[4], ov2[5] - ov2[4]);
                    nq = re_delete_all(nq, comments);
                    sb_str(&np, nq);
                    free(nq);
                }
                off = next;
            }
            free(phrase);
            phrase = sb_take(&np);
            const char *at;
            if (address == NULL &&
                rules_re_exec(mail_full, phrase, strlen(phrase), 0, &ov2) > 0 &&
                valid_parsed(phrase) && (at = strchr(phrase, '@')) != NULL &&
                sa_fqdn_valid(at + 1, strcspn(at + 1, "@"))) {
                address = phrase;
                phrase = NULL;
            } else if ((address && strcmp(phrase, address) == 0) || phrase[0] == '\0') {
                free(phrase);
                phrase = NULL;
            }
        }
        if (phrase == NULL && comment)
            phrase = xstrdup(comment);
        struct raddr a = { phrase, NULL, NULL, NULL, comment, true };
        if (address) {
            /* s/^(([^\@]*)\@([^\@]*)).* /$1/ */
            char *at = strchr(address, '@');
            if (at) {
                char *at2 = strchr(at + 1, '@');
                if (at2)
                    *at2 = '\0';
                a.user = xstrndup(address, (size_t)(at - address));
                a.host = xstrdup(at + 1);
            }
            a.address = address;
        }
        a.invalid = a.host == NULL || !sa_fqdn_valid(a.host, strlen(a.host));
        out = xrealloc(out, (na + 1) * sizeof(*out));
        out[na++] = a;
        if (used == 0)
            break;
    }
    /* something with an @ left unparsed: the <addresses> in it */
    if (strchr(s, '@')) {
        void *bracketed = rules_re("<(" MAILRE ")>", PCRE2_CASELESS | PCRE2_DOTALL);
        size_t off = 0, len = strlen(s);
        while (off < len && (rc = rules_re_exec(bracketed, s, len, off, &ov)) > 0 && na < 100) {
            char *address = xstrndup(s + ov[2], ov[3] - ov[2]);
            off = ov[1];
            if (!valid_parsed(address)) {
                free(address);
                continue;
            }
            char *at = strchr(address, '@');
            char *at2 = at ? strchr(at + 1, '@') : NULL;
            if (at2)
                *at2 = '\0';
            struct raddr a = { NULL, address, xstrndup(address, (size_t)(at - address)),
                               xstrdup(at + 1), NULL, true };
            a.invalid = !sa_fqdn_valid(a.host, strlen(a.host));
            out = xrealloc(out, (na + 1) * sizeof(*out));
            out[na++] = a;
        }
    }
    free(s);
    *out_r = out;
    return na;
}

void
raddrs_free(struct raddr *a, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(a[i].phrase);
        free(a[i].address);
        free(a[i].user);
        free(a[i].host);
        free(a[i].comment);
    }
    free(a);
}

/* ------------------------------------------------------------ dates */

time_t
sa_parse_date(const char *date)
{
    static const char *const mons[] = { "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug",
                                         "sep", "oct", "nov", "dec" };
    /* " $date ", ", *" to " ", white space runs to one space
     * (s/(?<=\s)\s+//g, then each \s a space), in one buffer */
    char *s = xmalloc(strlen(date) + 3);
    size_t sl = 0;
    s[sl++] = ' ';
    bool prev_ws = true;
    for (const char *p = date; *p; p++) {
        char ch = *p;
        if (ch == ',') {
            ch = ' ';
            while (p[1] == ' ')
                p++;
        }
        bool ws = isspace((unsigned char)ch);
        if (!(ws && prev_ws))
            s[sl++] = ws ? ' ' : ch;
        prev_ws = ws;
    }
    if (!prev_ws)
        s[sl++] = ' ';
    s[sl] = '\0';
    const size_t *ov;
    int rc;
    long dd = 0, yyyy = 0, hh = 0, mi = 0, ss = 0, mon = 0;
    char ylen = 0;
#define MONS "(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
    struct { const char *re; int d, m, y; } forms[] = {
        { " (\\d+) " MONS " (\\d{4}) ", 1, 2, 3 },
        { " " MONS " +(\\d+) \\d+:\\d+:\\d+ (\\d{4}) ", 2, 1, 3 },
        { " (\\d+) " MONS " (\\d{2,3}) ", 1, 2, 3 },
    };
    int form = -1;
    for (int i = 0; i < 3 && form < 0; i++) {
        rc = rules_re_exec(rules_re(forms[i].re, PCRE2_CASELESS), s, strlen(s), 0, &ov);
        if (rc <= 0)
            continue;
        form = i;
        dd = strtol(s + ov[2 * forms[i].d], NULL, 10);
        for (int k = 0; k < 12; k++)
            if (strncasecmp(s + ov[2 * forms[i].m], mons[k], 3) == 0)
                mon = k + 1;
        yyyy = strtol(s + ov[2 * forms[i].y], NULL, 10);
        ylen = (char)(ov[2 * forms[i].y + 1] - ov[2 * forms[i].y]);
        /* the date part is taken out: s/ ... / / */
        memmove(s + ov[0] + 1, s + ov[1], strlen(s + ov[1]) + 1);
        s[ov[0]] = ' ';
    }
#undef MONS
    if (form < 0) {
        free(s);
        return (time_t)-1;
    }
    if (ylen == 2 && yyyy < 50)
        yyyy += 2000;
    else if (ylen != 4)
        yyyy += 1900;
    rc = rules_re_exec(rules_re(" (\\d?\\d):(\\d\\d)(:(\\d\\d))? ", 0), s, strlen(s), 0, &ov);
    if (rc > 0) {
        hh = strtol(s + ov[2], NULL, 10);
        mi = strtol(s + ov[4], NULL, 10);
        ss = rc > 4 && ov[8] != PCRE2_UNSET ? strtol(s + ov[8], NULL, 10) : 0;
        memmove(s + ov[0] + 1, s + ov[1], strlen(s + ov[1]) + 1);
    }
    long tzoff = 0;
    bool have_tz = false;
    rc = rules_re_exec(rules_re(" ([-+]\\d{4}) ", 0), s, strlen(s), 0, &ov);
    if (rc > 0) {
        const char *z = s + ov[2];
        tzoff = (z[0] == '-' ? -1 : 1) * ((z[1] - '0') * 600 + (z[2] - '0') * 60 + (z[3] - '0') * 10 +
                                          (z[4] - '0'));
        have_tz = true;
    } else if ((rc = rules_re_exec(rules_re("\\b([A-Z]{2,4}(?:-DST)?)\\b", 0), s, strlen(s), 0,
                                   &ov)) > 0) {
        /* Util.pm's %TZ */
        static const struct { const char *z, *off; } tz[] = {
            { "UT", "+0000" }, { "UTC", "+0000" }, { "NDT", "-0230" }, { "AST", "-0400" },
            { "ADT", "-0300" }, { "NST", "-0330" }, { "EST", "-0500" }, { "EDT", "-0400" },
            { "CST", "-0600" }, { "CDT", "-0500" }, { "MST", "-0700" }, { "MDT", "-0600" },
            { "PST", "-0800" }, { "PDT", "-0700" }, { "HST", "-1000" }, { "AKST", "-0900" },
            { "AKDT", "-0800" }, { "HADT", "-0900" }, { "HAST", "-1000" }, { "GMT", "+0000" },
            { "BST", "+0100" }, { "IST", "+0100" }, { "WET", "+0000" }, { "WEST", "+0100" },
            { "CET", "+0100" }, { "CEST", "+0200" }, { "EET", "+0200" }, { "EEST", "+0300" },
            { "MSK", "+0300" }, { "MSD", "+0400" }, { "MET", "+0100" }, { "MEZ", "+0100" },
            { "MEST", "+0200" }, { "MESZ", "+0200" }, { "BRST", "-0200" }, { "BRT", "-0300" },
            { "AEST", "+1000" }, { "AEDT", "+1100" }, { "ACST", "+0930" }, { "ACDT", "+1030" },
            { "AWST", "+0800" }, { "NZST", "+1200" }, { "NZDT", "+1300" }, { "JST", "+0900" },
            { "KST", "+0900" }, { "HKT", "+0800" }, { "SGT", "+0800" }, { "PHT", "+0800" },
            { "IDT", "+0300" },
        };
        char z[12];
        size_t zl = ov[3] - ov[2];
        snprintf(z, sizeof(z), "%.*s", (int)(zl < 11 ? zl : 11), s + ov[2]);
        for (size_t i = 0; i < sizeof(tz) / sizeof(tz[0]); i++)
            if (strcmp(tz[i].z, z) == 0) {
                const char *o = tz[i].off;
                tzoff = (o[0] == '-' ? -1 : 1) * ((o[1] - '0') * 600 + (o[2] - '0') * 60 +
                                                  (o[3] - '0') * 10 + (o[4] - '0'));
                have_tz = true;
            }
    }
    (void)have_tz;
    free(s);
    if (ss > 59)
        ss = 59;
    if (mi > 59)
        mi = 59;
    if (hh > 23)
        hh = 23;
    long max_dd = 31;
    if (mon == 4 || mon == 6 || mon == 9 || mon == 11)
        max_dd = 30;
    else if (mon == 2)
        max_dd = (yyyy % 4 == 0 && (yyyy % 100 != 0 || yyyy % 400 == 0)) ? 29 : 28;
    if (dd > max_dd) {
        dd = 1;
        if (++mon > 12) {
            mon = 1;
            yyyy++;
        }
    }
    if (yyyy > 2037)
        yyyy = 2037;
    else if (yyyy < 1970)
        yyyy = 1970;
    if (dd < 1 || mon < 1)
        return (time_t)-1;             /* timegm croaks on day 0 */
    struct tm tm = { .tm_sec = (int)ss, .tm_min = (int)mi, .tm_hour = (int)hh, .tm_mday = (int)dd,
                     .tm_mon = (int)mon - 1, .tm_year = (int)yyyy - 1900 };
    time_t t = timegm(&tm);
    t -= tzoff * 60;
    if (t < 0)
        t = 0;
    return t;
}

/* ------------------------------------------------------------ get() */

/* The values of a field, decoded or raw (raw: continuation breaks as one
 * space, as get_header(..., 1) gives them). */
static void
field_values(struct rmsg *c, const char *name, bool raw, struct rvals *out)
{
    unsigned h = rmsg_name_hash(name, strlen(name));
    for (size_t i = 0; i < c->nf; i++) {
        if (!rmsg_field_is(c, i, name, h))
            continue;
        if (raw) {
            const char *v = c->f[i].raw;
            size_t vl = strlen(v), o = 0;
            char *b = xmalloc(vl + 1);
            for (size_t k = 0; k < vl; k++) {
                /* s/\015?\012\s+/ /gs */
                size_t j = k;
                if (v[j] == '\r' && v[j + 1] == '\n')
                    j++;
                if (v[j] == '\n' && v[j + 1] && isspace((unsigned char)v[j + 1])) {
                    j++;
                    while (v[j] && isspace((unsigned char)v[j]))
                        j++;
                    b[o++] = ' ';
                    k = j - 1;
                    continue;
                }
                b[o++] = v[k];
            }
            b[o] = '\0';
            rvals_add(out, b);
        } else {
            const char *d = rmsg_decoded(c, i);
            size_t dl = strlen(d);
            char *s = xmalloc(dl + 2);
            memcpy(s, d, dl);
            s[dl] = '\n';
            s[dl + 1] = '\0';
            rvals_add(out, s);
        }
    }
}

/* ALL and the ALL-* ranges: whole fields, raw (as in the message, lines
 * and all) or decoded ("Name: value\n"). */
static void
all_fields(struct rmsg *c, bool raw, int start_rcvd, int end_rcvd, struct rvals *out)
{
    struct rvals hdrs = { 0 };
    if (raw) {
        /* /^([^ \t].*?\n)(?![ \t])/smg over the pristine header */
        const char *p = c->head, *end = c->head + c->head_len;
        while (p < end) {
            if (*p == ' ' || *p == '\t') {
                const char *nl = memchr(p, '\n', (size_t)(end - p));
                p = nl ? nl + 1 : end;
                continue;
            }
            const char *q = p;
            for (;;) {
                const char *nl = memchr(q, '\n', (size_t)(end - q));
                if (nl == NULL) {
                    q = NULL;
                    break;
                }
                q = nl + 1;
                if (q >= end || (*q != ' ' && *q != '\t'))
                    break;
            }
            if (q == NULL)
                break;
            rvals_add(&hdrs, xstrndup(p, (size_t)(q - p)));
            p = q;
        }
    } else {
        size_t size = 0;
        for (size_t i = 0; i < c->nf; i++) {
            const char *d = rmsg_decoded(c, i);
            size_t nl = strlen(c->f[i].name), dl = strlen(d);
            size += nl + dl + 1 + 2;
            if (size > SA_MAX_HEADER_LENGTH)
                break;
            char *s = xmalloc(nl + dl + 4);
            memcpy(s, c->f[i].name, nl);
            memcpy(s + nl, ": ", 2);
            memcpy(s + nl + 2, d, dl);
            memcpy(s + nl + 2 + dl, "\n", 2);
            rvals_add(&hdrs, s);
        }
    }
    if (start_rcvd < 0 && end_rcvd < 0) {
        *out = hdrs;
        return;
    }
    int cur = -1;
    for (size_t i = 0; i < hdrs.n; i++) {
        char *h = hdrs.v[i];
        if (strncasecmp(h, "Received:", 9) == 0)
            cur++;
        if ((start_rcvd < 0 || start_rcvd <= cur) && (end_rcvd < 0 || cur < end_rcvd)) {
            rvals_add(out, h);
            hdrs.v[i] = NULL;
        } else if (end_rcvd >= 0 && cur == end_rcvd) {
            rvals_add(out, h);
            hdrs.v[i] = NULL;
            break;
        }
    }
    rvals_free(&hdrs);
}

void
rmsg_get_all(struct rmsg *c, const char *request, struct rvals *out)
{
    memset(out, 0, sizeof(*out));
    bool raw = false, addr = false, name = false, first = false, last = false;
    char req[300];
    str_copy(req, request, sizeof(req));
    char *colon = strchr(req, ':');
    if (colon) {
        *colon = '\0';
        for (char *mod = colon + 1; mod;) {
            char *next = strchr(mod, ':');
            if (next)
                *next++ = '\0';
            raw |= strcmp(mod, "raw") == 0;
            addr |= strcmp(mod, "addr") == 0;
            name |= strcmp(mod, "name") == 0;
            first |= strcmp(mod, "first") == 0;
            last |= strcmp(mod, "last") == 0;
            mod = next;
        }
    }
    bool needraw = raw || addr || name;
    struct rvals r = { 0 };
    if (strcmp(req, "ALL") == 0) {
        all_fields(c, raw, -1, -1, out);
        return;
    }
    if (strncmp(req, "ALL-", 4) == 0) {
        rmsg_relays(c);
        if (strcmp(req, "ALL-TRUSTED") == 0)
            all_fields(c, raw, -1, c->last_trusted_index + 1, out);
        else if (strcmp(req, "ALL-INTERNAL") == 0)
            all_fields(c, raw, -1, c->last_internal_index + 1, out);
        else if (strcmp(req, "ALL-UNTRUSTED") == 0)
            all_fields(c, raw, c->last_trusted_index + 1, -1, out);
        else if (strcmp(req, "ALL-EXTERNAL") == 0)
            all_fields(c, raw, c->last_internal_index + 1, -1, out);
        else
            field_values(c, req, needraw, &r);
        if (strcmp(req, "ALL-TRUSTED") == 0 || strcmp(req, "ALL-INTERNAL") == 0 ||
            strcmp(req, "ALL-UNTRUSTED") == 0 || strcmp(req, "ALL-EXTERNAL") == 0)
            return;
    } else if (strcasecmp(req, "EnvelopeFrom") == 0) {
        /* Moat knows the envelope: MAIL FROM (SpamAssassin guesses it from
         * the header) */
        if (c->m->sender)
            rvals_add(&r, xstrdup(c->m->sender));
    } else if (strncasecmp(req, "X-Spam-Relays-", 14) == 0) {
        rmsg_relays(c);
        const char *k = req + 14;
        int w = strcasecmp(k, "Trusted") == 0 ? RELAYS_TRUSTED : strcasecmp(k, "Untrusted") == 0
              ? RELAYS_UNTRUSTED : strcasecmp(k, "Internal") == 0 ? RELAYS_INTERNAL
              : strcasecmp(k, "External") == 0 ? RELAYS_EXTERNAL : -1;
        if (w >= 0)
            rvals_add(&r, xstrdup(c->relays_str[w] ? c->relays_str[w] : ""));
        else
            field_values(c, req, needraw, &r);
    } else if (strcasecmp(req, "ToCc") == 0) {
        field_values(c, "To", needraw, &r);
        field_values(c, "Cc", needraw, &r);
    } else if (strcmp(req, "MESSAGEID") == 0) {
        static const char *const ids[] = { "X-Message-Id", "Resent-Message-Id",
                                           "X-Original-Message-ID", "Message-Id" };
        for (size_t i = 0; i < 4; i++) {
            struct rvals t = { 0 };
            field_values(c, ids[i], needraw, &t);
            for (size_t k = 0; k < t.n; k++) {
                if (t.v[k][0])
                    rvals_add(&r, t.v[k]);
                else
                    free(t.v[k]);
            }
            free(t.v);
        }
    } else {
        field_values(c, req, needraw, &r);
    }
    if (r.n == 0) {
        *out = r;
        return;
    }
    if (first || last) {
        size_t keep = first ? 0 : r.n - 1;
        for (size_t i = 0; i < r.n; i++)
            if (i != keep)
                free(r.v[i]);
        r.v[0] = r.v[keep];
        r.n = 1;
    }
    if (addr || name) {
        struct rvals res = { 0 };
        for (size_t i = 0; i < r.n; i++) {
            struct raddr *a;
            size_t na = rmsg_addresses(r.v[i], &a);
            for (size_t k = 0; k < na; k++) {
                if (addr && a[k].address)
                    rvals_add(&res, xstrdup(a[k].address));
                else if (!addr && name && a[k].phrase) {
                    if (raw) {
                        rvals_add(&res, xstrdup(a[k].phrase));
                        continue;
                    }
                    char *d = sa_decode_header(a[k].phrase, strlen(a[k].phrase), "PMS:get");
                    bool nonblank = false;
                    for (char *p = d; *p; p++)
                        nonblank |= !isspace((unsigned char)*p);
                    if (nonblank) {
                        /* white space runs as one space, trimmed; 'quotes' off */
                        struct sbuf b = { 0 };
                        sb_add(&b, "", 0);
                        const char *p = d;
                        while (*p && isspace((unsigned char)*p))
                            p++;
                        for (; *p; p++) {
                            if (isspace((unsigned char)*p)) {
                                while (p[1] && isspace((unsigned char)p[1]))
                                    p++;
                                if (p[1])
                                    sb_add(&b, " ", 1);
                                continue;
                            }
                            sb_add(&b, p, 1);
                        }
                        free(d);
                        d = sb_take(&b);
                        size_t dl = strlen(d);
                        if (dl >= 2 && d[0] == '\'' && d[dl - 1] == '\'' &&
                            memchr(d + 1, '\'', dl - 2) == NULL) {
                            memmove(d, d + 1, dl - 2);
                            d[dl - 2] = '\0';
                        }
                    }
                    rvals_add(&res, d);
                }
            }
            raddrs_free(a, na);
        }
        rvals_free(&r);
        r = res;
    }
    *out = r;
}

static size_t
request_hash(const char *s)
{
    size_t h = 2166136261u;                     /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

/* The table twice as large, every answer placed again. */
static void
cache_grow(struct rmsg_cache *k)
{
    free(k->slot);
    k->nslot = k->nslot ? k->nslot * 2 : 256;
    k->slot = xcalloc(k->nslot, sizeof(*k->slot));
    for (size_t i = 0; i < k->n; i++) {
        size_t h = request_hash(k->g[i].request) & (k->nslot - 1);
        while (k->slot[h])
            h = (h + 1) & (k->nslot - 1);
        k->slot[h] = (unsigned)i + 1;
    }
}

/* The values joined with sep between them; its length in *len_r. When there
 * is one, that value itself (taken from v). */
static char *
join_values(struct rvals *v, const char *sep, size_t *len_r)
{
    size_t sl = strlen(sep), len = 0;
    if (v->n == 1) {
        char *s = v->v[0];
        v->v[0] = NULL;
        *len_r = strlen(s);
        return s;
    }
    for (size_t i = 0; i < v->n; i++)
        len += strlen(v->v[i]) + (i ? sl : 0);
    char *s = xmalloc(len + 1), *o = s;
    for (size_t i = 0; i < v->n; i++) {
        if (i) {
            memcpy(o, sep, sl);
            o += sl;
        }
        size_t l = strlen(v->v[i]);
        memcpy(o, v->v[i], l);
        o += l;
    }
    *o = '\0';
    *len_r = len;
    return s;
}

static struct rget *
cached(struct rmsg *c, const char *request)
{
    struct rmsg_cache *k = c->cache;
    if (2 * (k->n + 1) > k->nslot)
        cache_grow(k);
    size_t h = request_hash(request) & (k->nslot - 1);
    for (; k->slot[h]; h = (h + 1) & (k->nslot - 1))
        if (strcmp(k->g[k->slot[h] - 1].request, request) == 0)
            return &k->g[k->slot[h] - 1];
    if (k->n == k->cap) {
        k->cap = k->cap ? k->cap * 2 : 64;
        k->g = xrealloc(k->g, k->cap * sizeof(*k->g));
    }
    k->slot[h] = (unsigned)k->n + 1;
    struct rget *g = &k->g[k->n++];
    g->request = xstrdup(request);
    struct rvals v;
    rmsg_get_all(c, request, &v);
    g->joined = NULL;
    g->joined_len = 0;
    /* as get() gives it in scalar context: the first of an address or
     * name (its line break off), else every value joined (the same text
     * as joined when there is one value or the values end in "\n") */
    bool first_only = strstr(request, ":addr") || strstr(request, ":name") ||
                      strcmp(request, "EnvelopeFrom") == 0;
    g->first = (char *)no_value;
    if (first_only && v.n) {
        g->first = xstrdup(v.v[0]);
        size_t fl = strlen(g->first);
        if (fl && g->first[fl - 1] == '\n')
            g->first[fl - 1] = '\0';
    }
    if (v.n) {
        /* joined as the head tests do: "" when the first ends in "\n" */
        size_t fl = strlen(v.v[0]);
        bool nl = fl && v.v[0][fl - 1] == '\n';
        size_t l;
        if (!first_only && !nl && v.n > 1)
            g->first = join_values(&v, "", &l);
        g->joined = join_values(&v, nl ? "" : "\n", &g->joined_len);
        if (!first_only && (nl || v.n == 1))
            g->first = g->joined;
    }
    rvals_free(&v);
    return g;
}

const char *
rmsg_get(struct rmsg *c, const char *request)
{
    return cached(c, request)->joined;
}

const char *
rmsg_get_id(struct rmsg *c, const char *request, unsigned id, size_t *len_r)
{
    struct rmsg_cache *k = c->cache;
    size_t nid = c->rs ? c->rs->nhdr_ids : 0;
    struct rget *g;
    if (id == 0 || id > nid) {
        g = cached(c, request);
    } else {
        if (k->by_id == NULL)
            k->by_id = xcalloc(nid + 1, sizeof(*k->by_id));
        if (k->by_id[id] == 0) {
            const struct rget *made = cached(c, request);       /* it may move k->g */
            k->by_id[id] = (unsigned)(made - k->g) + 1;
        }
        g = &k->g[k->by_id[id] - 1];
    }
    if (len_r)
        *len_r = g->joined_len;
    return g->joined;
}

const char *
rmsg_get_len(struct rmsg *c, const char *request, size_t *len_r)
{
    struct rget *g = cached(c, request);
    *len_r = g->joined_len;
    return g->joined;
}

const char *
rmsg_get_scalar(struct rmsg *c, const char *request)
{
    return cached(c, request)->first;
}
