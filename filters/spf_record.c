/*
 * spf_record.c -- an SPF record checked against the RFC 7208 ABNF (section
 * 12) before libspf2 sees it, and the record as libspf2 then gets it.
 *
 * libspf2 1.2.10 accepts much the RFC calls a permerror (a domain-spec
 * without a valid top label, "redirect:", a modifier twice, bad macros,
 * control characters, a CIDR length with a leading zero) and refuses some
 * it must take (a CIDR length of 0, a modifier name with a dot): so every
 * record is parsed here in one pass over its bytes, a syntax error is the
 * permerror the RFC asks for, and libspf2 evaluates the rewritten record
 * described in spf_record.h.
 */
#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include "spf_record.h"
#include "../common/util.h"

static bool
is_alnum(int c)
{
    return spf_is_alpha(c) || spf_is_digit(c);
}

bool
spf_record_is_spf(const char *txt, size_t len)
{
    return len >= 6 && strncasecmp(txt, "v=spf1", 6) == 0 && (len == 6 || txt[6] == ' ');
}

/* "why: "term"" into err, the term cut short and its odd bytes escaped. */
static int
term_error(char *err, size_t errsize, const char *why, const char *t, size_t n)
{
    char ex[200];
    size_t o = 0, i;
    for (i = 0; i < n && o + 5 < 60; i++) {
        unsigned char c = (unsigned char)t[i];
        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
            ex[o++] = (char)c;
        else
            o += (size_t)snprintf(ex + o, sizeof(ex) - o, "\\x%02X", c);
    }
    ex[o] = '\0';
    snprintf(err, errsize, "%s: \"%s%s\"", why, ex, i < n ? "..." : "");
    return -1;
}

/* A domain-spec (RFC 7208 7.1): a macro string that ends in a macro or in
 * "." toplabel [ "." ], the top label not all digits and not starting or
 * ending with '-'. */
static const char *
domain_spec_error(const char *s, size_t n)
{
    const char *why;
    if (n == 0)
        return "empty domain-spec";
    if (spf_macro_check(s, n, SPF_MACRO_DOMAIN, &why) < 0)
        return why;
    /* ends in a macro-expand: "%{...}", or "%%", "%_", "%-" not itself
     * the second half of a "%%" */
    if (s[n - 1] == '}') {
        const char *open = NULL;
        for (size_t i = 0; i + 1 < n; i++)
            if (s[i] == '%') {
                if (s[i + 1] == '{')
                    open = s + i;
                i++;            /* "%%" is one token */
            }
        if (open && memchr(open, '}', (size_t)(s + n - open)) == s + n - 1)
            return NULL;
    }
    if (n >= 2) {
        size_t pct = 0;         /* the '%'s in a row before the last byte */
        while (pct < n - 1 && s[n - 2 - pct] == '%')
            pct++;
        if (pct % 2 == 1 && (s[n - 1] == '%' || s[n - 1] == '_' || s[n - 1] == '-'))
            return NULL;
    }
    size_t e = n;
    if (s[e - 1] == '.')
        e--;
    size_t b = e;
    bool alpha = false, dash = false;
    while (b > 0 && (is_alnum(s[b - 1]) || s[b - 1] == '-')) {
        b--;
        alpha |= spf_is_alpha(s[b]);
        dash |= s[b] == '-';
    }
    if (b == e || b == 0 || s[b - 1] != '.')
        return "domain-spec without a top label";
    if (s[b] == '-' || s[e - 1] == '-' || (!dash && !alpha))
        return "domain-spec with a bad top label";
    return NULL;
}

/* "/" ("0" / %x31-39 *DIGIT) at the end of t[0..*n): its value, and *n cut
 * before the '/'; -1 when there is none. */
static int
cidr_at_end(const char *t, size_t *n)
{
    size_t e = *n, i = e;
    while (i > 0 && spf_is_digit(t[i - 1]))
        i--;
    size_t nd = e - i;
    if (nd == 0 || nd > 3 || i == 0 || t[i - 1] != '/' || (nd > 1 && t[i] == '0'))
        return -1;
    int v = 0;
    for (size_t k = i; k < e; k++)
        v = v * 10 + (t[k] - '0');
    *n = i - 1;
    return v;
}

/* ip4-network: four qnums 0-255 without leading zeros. */
static int
parse_ip4(const char *s, size_t n, unsigned char out[4])
{
    size_t i = 0;
    for (int q = 0; q < 4; q++) {
        if (q > 0) {
            if (i >= n || s[i] != '.')
                return -1;
            i++;
        }
        size_t d0 = i;
        unsigned v = 0;
        while (i < n && spf_is_digit(s[i]) && i - d0 < 3)
            v = v * 10 + (unsigned)(s[i++] - '0');
        if (i == d0 || v > 255 || (i - d0 > 1 && s[d0] == '0'))
            return -1;
        out[q] = (unsigned char)v;
    }
    return i == n ? 0 : -1;
}

static int
parse_ip6(const char *s, size_t n, unsigned char out[16])
{
    char buf[INET6_ADDRSTRLEN];
    if (n == 0 || n >= sizeof(buf))
        return -1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return inet_pton(AF_INET6, buf, out) == 1 ? 0 : -1;
}

static const struct { const char *name; unsigned char kind; } mechanisms[] = {
    { "all", SPF_ALL }, { "include", SPF_INCLUDE }, { "a", SPF_A }, { "mx", SPF_MX },
    { "ptr", SPF_PTR }, { "ip4", SPF_IP4 }, { "ip6", SPF_IP6 }, { "exists", SPF_EXISTS },
};

/* A modifier: name "=" value, name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." ). */
static int
parse_modifier(const char *rec, size_t off, size_t n, size_t eq, struct spf_record *r,
               struct spf_term *t, char *err, size_t errsize)
{
    const char *s = rec + off, *why;
    size_t voff = off + eq + 1, vlen = n - eq - 1;
    t->off = (unsigned short)voff;
    t->len = (unsigned short)vlen;
    if (eq == 8 && strncasecmp(s, "redirect", 8) == 0) {
        if (r->redirect >= 0)
            return term_error(err, errsize, "redirect= more than once", s, n);
        if ((why = domain_spec_error(rec + voff, vlen)) != NULL)
            return term_error(err, errsize, why, s, n);
        t->kind = SPF_REDIRECT;
        r->redirect = (int)r->n;
    } else if (eq == 3 && strncasecmp(s, "exp", 3) == 0) {
        if (r->exp >= 0)
            return term_error(err, errsize, "exp= more than once", s, n);
        if ((why = domain_spec_error(rec + voff, vlen)) != NULL)
            return term_error(err, errsize, why, s, n);
        t->kind = SPF_EXP;
        r->exp = (int)r->n;
    } else {
        if (spf_macro_check(rec + voff, vlen, SPF_MACRO_DOMAIN, &why) < 0)
            return term_error(err, errsize, why, s, n);
        t->kind = SPF_MODIFIER;
    }
    return 0;
}

static int
parse_mechanism(const char *rec, size_t off, size_t n, struct spf_record *r, struct spf_term *t,
                char *err, size_t errsize)
{
    const char *s = rec + off, *why;
    size_t i = 0;
    t->qual = '+';
    if (n > 0 && s[0] != '\0' && strchr("+-~?", s[0]) != NULL)
        t->qual = s[i++];
    size_t name = i;
    while (i < n && is_alnum(s[i]))
        i++;
    size_t k;
    for (k = 0; k < sizeof(mechanisms) / sizeof(mechanisms[0]); k++)
        if (strlen(mechanisms[k].name) == i - name &&
            strncasecmp(s + name, mechanisms[k].name, i - name) == 0)
            break;
    if (k == sizeof(mechanisms) / sizeof(mechanisms[0]))
        return term_error(err, errsize, "unknown mechanism", s, n);
    t->kind = mechanisms[k].kind;
    const char *rest = s + i;
    size_t rn = n - i;
    switch (t->kind) {
    case SPF_ALL:
        if (rn != 0)
            return term_error(err, errsize, "all takes no argument", s, n);
        r->all = true;
        return 0;
    case SPF_A:
    case SPF_MX: {
        int v = cidr_at_end(rest, &rn);
        if (v >= 0 && rn > 0 && rest[rn - 1] == '/') {
            rn--;
            t->cidr6 = (short)v;
            v = cidr_at_end(rest, &rn);
        }
        if (v >= 0)
            t->cidr4 = (short)v;
        if (t->cidr4 > 32)
            return term_error(err, errsize, "IPv4 CIDR length over 32", s, n);
        if (t->cidr6 > 128)
            return term_error(err, errsize, "IPv6 CIDR length over 128", s, n);
    }
        /* FALLTHROUGH */
    case SPF_PTR:
        if (rn == 0)
            return 0;           /* the current domain */
        /* FALLTHROUGH */
    case SPF_INCLUDE:
    case SPF_EXISTS:
        if (rn == 0 || rest[0] != ':')
            return term_error(err, errsize, rn == 0 ? "mechanism needs a domain-spec"
                              : "bad character after mechanism", s, n);
        if ((why = domain_spec_error(rest + 1, rn - 1)) != NULL)
            return term_error(err, errsize, why, s, n);
        t->off = (unsigned short)(off + i + 1);
        t->len = (unsigned short)(rn - 1);
        return 0;
    case SPF_IP4:
    case SPF_IP6: {
        bool four = t->kind == SPF_IP4;
        if (rn == 0 || rest[0] != ':')
            return term_error(err, errsize, "ip4 and ip6 need an address", s, n);
        rest++;
        rn--;
        const char *slash = memrchr(rest, '/', rn);
        size_t an = slash ? (size_t)(slash - rest) : rn;
        if (slash) {
            size_t cn = rn;
            int v = cidr_at_end(rest, &cn);
            if (v < 0 || cn != an)
                return term_error(err, errsize, "bad CIDR length", s, n);
            if (v > (four ? 32 : 128))
                return term_error(err, errsize, four ? "IPv4 CIDR length over 32"
                                  : "IPv6 CIDR length over 128", s, n);
            if (four)
                t->cidr4 = (short)v;
            else
                t->cidr6 = (short)v;
        }
        if ((four ? parse_ip4(rest, an, t->ip) : parse_ip6(rest, an, t->ip)) < 0)
            return term_error(err, errsize, four ? "bad IPv4 address" : "bad IPv6 address",
                              s, n);
        return 0;
    }
    }
    return term_error(err, errsize, "unknown mechanism", s, n);
}

int
spf_record_parse(const char *rec, size_t len, struct spf_record *r, char *err, size_t errsize)
{
    r->n = 0;
    r->redirect = r->exp = -1;
    r->all = false;
    if (!spf_record_is_spf(rec, len))
        return term_error(err, errsize, "not an SPF record", rec, len);
    if (len > SPF_RECORD_MAX) {
        snprintf(err, errsize, "record longer than %d bytes", SPF_RECORD_MAX);
        return -1;
    }
    size_t p = 6;
    while (p < len) {
        while (p < len && rec[p] == ' ')
            p++;
        if (p == len)
            break;
        size_t e = p;
        while (e < len && rec[e] != ' ')
            e++;
        if (r->n == SPF_TERMS_MAX) {
            snprintf(err, errsize, "more than %d terms", SPF_TERMS_MAX);
            return -1;
        }
        struct spf_term *t = &r->term[r->n];
        memset(t, 0, sizeof(*t));
        t->cidr4 = t->cidr6 = -1;
        size_t n = e - p, i = 0;
        const char *s = rec + p;
        if (spf_is_alpha(s[0])) {
            while (i < n && (is_alnum(s[i]) || s[i] == '-' || s[i] == '_' || s[i] == '.'))
                i++;
        }
        int rc = i > 0 && i < n && s[i] == '='
                 ? parse_modifier(rec, p, n, i, r, t, err, errsize)
                 : parse_mechanism(rec, p, n, r, t, err, errsize);
        if (rc < 0)
            return -1;
        r->n++;
        p = e;
    }
    return 0;
}

/* ------------------------------------------------------------ rewrite */

struct buf {
    char *p;
    size_t n, size;
    bool full;
};

static void
add(struct buf *b, const char *s, size_t n)
{
    if (b->n + n >= b->size) {
        b->full = true;
        return;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}

static void
adds(struct buf *b, const char *s)
{
    add(b, s, strlen(s));
}

static void
addf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
addf(struct buf *b, const char *fmt, ...)
{
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (k < 0 || (size_t)k >= sizeof(tmp))
        b->full = true;
    else
        add(b, tmp, (size_t)k);
}

/* A name as a literal for libspf2's record parser, behind tag (0: none):
 * '%' and ' ' are the only characters it reads as anything else. */
static void
add_name(struct buf *b, char tag, const char *name)
{
    if (tag)
        add(b, &tag, 1);
    for (const char *p = name; *p; p++) {
        if (*p == '%')
            adds(b, "%%");
        else if (*p == ' ')
            adds(b, "%_");
        else
            add(b, p, 1);
    }
}

/* The name term t looks up: its domain-spec expanded (or the current
 * domain) and made to fit; "" when that is no DNS name. */
static void
target(const char *rec, const struct spf_term *t, const struct spf_macro_vars *v,
       char name[SPF_DOMAIN_MAX + 1])
{
    char buf[2048];
    name[0] = '\0';
    if (t->len == 0)
        str_copy(buf, v->domain ? v->domain : "", sizeof(buf));
    else if (spf_macro_expand(rec + t->off, t->len, v, buf, sizeof(buf)) < 0)
        return;
    if (spf_domain_fit(buf) == 0)
        str_copy(name, buf, SPF_DOMAIN_MAX + 1);
}

ssize_t
spf_record_rewrite(const char *rec, const struct spf_record *r, const struct spf_macro_vars *v,
                   bool ipv6, unsigned exp_index, char exp_domain[SPF_DOMAIN_MAX + 1],
                   char *out, size_t outsize)
{
    struct buf b = { out, 0, outsize, outsize == 0 };
    char name[SPF_DOMAIN_MAX + 1];
    unsigned dns = 0;
    bool stop = false;
    exp_domain[0] = '\0';
    adds(&b, "v=spf1");
    for (size_t i = 0; i < r->n && !stop; i++) {
        const struct spf_term *t = &r->term[i];
        char q = t->qual;
        switch (t->kind) {
        case SPF_ALL:
            addf(&b, " %call", q);
            stop = true;
            break;
        case SPF_IP4:
        case SPF_IP6: {
            bool four = t->kind == SPF_IP4;
            if (four == ipv6)
                break;          /* never matches a client of the other family */
            int c = four ? t->cidr4 : t->cidr6;
            if (c == 0) {       /* every address of the family */
                addf(&b, " %call", q);
                stop = true;
            } else if (four) {
                addf(&b, " %cip4:%u.%u.%u.%u/%d", q, t->ip[0], t->ip[1], t->ip[2], t->ip[3],
                     c < 0 ? 32 : c);
            } else {
                char a[INET6_ADDRSTRLEN];
                inet_ntop(AF_INET6, t->ip, a, sizeof(a));
                addf(&b, " %cip6:%s/%d", q, a, c < 0 ? 128 : c);
            }
            break;
        }
        case SPF_A:
        case SPF_MX: {
            dns++;
            target(rec, t, v, name);
            int c = ipv6 ? t->cidr6 : t->cidr4;
            if (c == 0) {
                addf(&b, " %cexists:", q);
                add_name(&b, t->kind == SPF_A ? SPF_TAG_ANY : SPF_TAG_MXANY, name);
            } else {
                addf(&b, " %c%s:", q, t->kind == SPF_A ? "a" : "mx");
                add_name(&b, SPF_TAG_TERM, name);
                addf(&b, "/%d//%d", t->cidr4 > 0 ? t->cidr4 : 32, t->cidr6 > 0 ? t->cidr6 : 128);
            }
            break;
        }
        case SPF_PTR:
            dns++;
            target(rec, t, v, name);
            addf(&b, " %cptr:", q);
            add_name(&b, name[0] ? 0 : SPF_TAG_TERM, name);     /* a tag matches no name */
            break;
        case SPF_EXISTS:
        case SPF_INCLUDE:
            dns++;
            target(rec, t, v, name);
            addf(&b, " %c%s:", q, t->kind == SPF_EXISTS ? "exists" : "include");
            add_name(&b, SPF_TAG_TERM, name);
            break;
        default:
            break;              /* modifiers: below, or ignored (RFC 7208 6) */
        }
        if (dns > SPF_DNS_TERMS_MAX)
            stop = true;        /* the limit ends the check at this term */
    }
    if (!stop && !r->all && r->redirect >= 0) {
        target(rec, &r->term[r->redirect], v, name);
        adds(&b, " redirect=");
        add_name(&b, SPF_TAG_TERM, name);
    }
    if (r->exp >= 0) {
        target(rec, &r->term[r->exp], v, name);
        if (name[0]) {
            str_copy(exp_domain, name, SPF_DOMAIN_MAX + 1);
            addf(&b, " exp=%c%u", SPF_TAG_EXP, exp_index);
        }
    }
    if (b.full)
        return -1;
    out[b.n] = '\0';
    return (ssize_t)b.n;
}
