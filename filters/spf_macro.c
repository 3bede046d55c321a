/*
 * spf_macro.c -- SPF macro strings (RFC 7208 section 7): their syntax, and
 * their expansion for a check.
 *
 *   macro-expand = ( "%{" macro-letter transformers *delimiter "}" )
 *                  / "%%" / "%_" / "%-"
 *   transformers = *DIGIT [ "r" ]          delimiter = . - + , / _ =
 *
 * libspf2 expands macros too, but not as the RFC says: it never truncates
 * a name over 253 characters (7.3), URL-escapes a different set of
 * characters with lower-case hex, writes IPv6 nibbles in lower case and
 * takes the first validated name for %{p} whatever the domain. So the
 * plugin expands every macro itself and libspf2 only sees the results.
 */
#include <stdio.h>
#include <string.h>
#include "spf_record.h"
#include "../common/util.h"

static int
lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

static bool
is_delimiter(int c)
{
    return c == '.' || c == '-' || c == '+' || c == ',' || c == '/' || c == '_' || c == '=';
}

/* One "%{...}" at s[0] ('%'), n bytes available: its length, or 0 when it
 * is malformed (*why_r says how). */
static size_t
macro_len(const char *s, size_t n, enum spf_macro_use use, const char **why_r)
{
    if (n < 4 || s[1] != '{') {
        *why_r = "'%' not followed by '{', '%', '_' or '-'";
        return 0;
    }
    size_t i = 2;
    int letter = lower((unsigned char)s[i]);
    if (strchr("slodiphv", letter) == NULL || letter == 0) {
        if (letter != 0 && strchr("crt", letter) != NULL) {
            if (use != SPF_MACRO_EXPLAIN) {
                *why_r = "macro letters c, r and t are for explanations only";
                return 0;
            }
        } else {
            *why_r = "unknown macro letter";
            return 0;
        }
    }
    i++;
    size_t d0 = i;
    unsigned val = 0;
    while (i < n && spf_is_digit(s[i])) {
        val = val * 10 + (unsigned)(s[i] - '0');
        if (val > 1000)
            val = 1000;
        i++;
    }
    if (i > d0 && val == 0) {
        *why_r = "a macro's digit transformer must not be zero";
        return 0;
    }
    if (i < n && lower((unsigned char)s[i]) == 'r')
        i++;
    while (i < n && is_delimiter(s[i]))
        i++;
    if (i >= n || s[i] != '}') {
        *why_r = "malformed macro";
        return 0;
    }
    return i + 1;
}

int
spf_macro_check(const char *s, size_t len, enum spf_macro_use use, const char **why_r)
{
    const char *why = NULL;
    for (size_t i = 0; i < len;) {
        unsigned char c = (unsigned char)s[i];
        if (c == '%') {
            if (i + 1 < len && (s[i + 1] == '%' || s[i + 1] == '_' || s[i + 1] == '-')) {
                i += 2;
                continue;
            }
            size_t m = macro_len(s + i, len - i, use, &why);
            if (m == 0) {
                *why_r = why;
                return -1;
            }
            i += m;
        } else if ((c >= 0x21 && c <= 0x7e) || (c == ' ' && use == SPF_MACRO_EXPLAIN)) {
            i++;
        } else {
            *why_r = c >= 0x80 ? "a byte that is not ASCII"
                   : c == ' ' ? "a space" : "a control character";
            return -1;
        }
    }
    return 0;
}

/* ----------------------------------------------------------- expansion */

struct out {
    char *p;
    size_t n, size;
    bool full;
};

static void
put(struct out *o, char c)
{
    if (o->n + 1 >= o->size) {
        o->full = true;
        return;
    }
    o->p[o->n++] = c;
}

static bool
unreserved(int c)
{
    return spf_is_alpha(c) || spf_is_digit(c) || c == '-' || c == '.' || c == '_' || c == '~';
}

static void
put_part(struct out *o, const char *s, size_t n, bool escape)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (escape && !unreserved(c)) {
            put(o, '%');
            put(o, hex[c >> 4]);
            put(o, hex[c & 15]);
        } else {
            put(o, (char)c);
        }
    }
}

static bool
in_set(const char *set, size_t n, char c)
{
    return memchr(set, c, n) != NULL;
}

/* Part j (0-based) of value split at the delimiters. */
static const char *
part(const char *value, const char *delims, size_t nd, size_t j, size_t *len_r)
{
    const char *p = value;
    for (; j > 0; j--) {
        while (*p && !in_set(delims, nd, *p))
            p++;
        if (*p)
            p++;
    }
    const char *e = p;
    while (*e && !in_set(delims, nd, *e))
        e++;
    *len_r = (size_t)(e - p);
    return p;
}

/* One checked "%{...}" (s, n bytes, from '%' to '}') into o: the value
 * split at the delimiters (default '.'), reversed with r, the rightmost
 * DIGIT parts kept, joined with '.', URL-escaped for an upper-case letter. */
static void
expand_one(const char *s, size_t n, const struct spf_macro_vars *v, struct out *o)
{
    char letter = s[2];
    bool escape = letter >= 'A' && letter <= 'Z';
    char tbuf[24];
    const char *value = "";
    switch (lower(letter)) {
    case 's': value = v->sender; break;
    case 'l': value = v->local; break;
    case 'o': value = v->sender_domain; break;
    case 'd': value = v->domain; break;
    case 'i': value = v->ip; break;
    case 'c': value = v->ip_text; break;
    case 'v': value = v->ip_version; break;
    case 'h': value = v->helo; break;
    case 'r': value = v->receiver; break;
    case 't':
        snprintf(tbuf, sizeof(tbuf), "%lld", v->now);
        value = tbuf;
        break;
    case 'p': value = v->ptr ? v->ptr(v->arg, v->domain) : "unknown"; break;
    }
    if (value == NULL)
        value = "";
    size_t i = 3, keep = 0;
    while (i + 1 < n && spf_is_digit(s[i])) {
        keep = keep * 10 + (size_t)(s[i] - '0');
        if (keep > 1000)
            keep = 1000;
        i++;
    }
    bool rev = i + 1 < n && lower((unsigned char)s[i]) == 'r';
    if (rev)
        i++;
    const char *delims = s + i;
    size_t nd = n - 1 - i;              /* up to the '}' */
    if (nd == 0) {
        delims = ".";
        nd = 1;
    }
    size_t nparts = 1;
    for (const char *p = value; *p; p++)
        if (in_set(delims, nd, *p))
            nparts++;
    size_t k = keep == 0 || keep > nparts ? nparts : keep;
    /* the parts in output order: without r the last k, with r the first k
     * backwards (the rightmost k of the reversed list) */
    for (size_t j = 0; j < k; j++) {
        size_t idx = rev ? k - 1 - j : nparts - k + j, plen;
        const char *pp = part(value, delims, nd, idx, &plen);
        if (j > 0)
            put(o, '.');
        put_part(o, pp, plen, escape);
    }
}

ssize_t
spf_macro_expand(const char *s, size_t len, const struct spf_macro_vars *v, char *out,
                 size_t outsize)
{
    struct out o = { out, 0, outsize, false };
    if (outsize == 0)
        return -1;
    for (size_t i = 0; i < len;) {
        if (s[i] != '%') {
            put(&o, s[i++]);
            continue;
        }
        char c = i + 1 < len ? s[i + 1] : 0;
        if (c == '%' || c == '_' || c == '-') {
            if (c == '-') {
                put(&o, '%');
                put(&o, '2');
                put(&o, '0');
            } else {
                put(&o, c == '%' ? '%' : ' ');
            }
            i += 2;
            continue;
        }
        const char *end = memchr(s + i, '}', len - i);
        if (c != '{' || end == NULL || end - (s + i) < 3) {     /* unchecked: kept as it is */
            put(&o, s[i++]);
            continue;
        }
        size_t n = (size_t)(end - (s + i)) + 1;
        expand_one(s + i, n, v, &o);
        i += n;
    }
    out[o.n] = '\0';
    return o.full ? -1 : (ssize_t)o.n;
}

/* ------------------------------------------------------------- names */

int
spf_domain_fit(char *name)
{
    size_t n = strlen(name);
    if (n > 0 && name[n - 1] == '.')
        name[--n] = '\0';
    size_t start = 0;
    while (n - start > SPF_DOMAIN_MAX) {
        const char *dot = memchr(name + start, '.', n - start);
        if (dot == NULL)
            return -1;
        start = (size_t)(dot - name) + 1;
    }
    if (start > 0) {
        memmove(name, name + start, n - start + 1);
        n -= start;
    }
    if (n == 0)
        return -1;
    size_t label = 0;
    for (size_t i = 0; i <= n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c == '.' || c == '\0') {
            if (label == 0 || label > 63)
                return -1;
            label = 0;
        } else if (c < 0x20 || c == 0x7f) {
            return -1;
        } else {
            label++;
        }
    }
    return 0;
}
