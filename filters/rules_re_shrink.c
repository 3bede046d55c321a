/*
 * rules_re_shrink.c -- a pattern PCRE2 finds too large, rewritten to the
 * same pattern in fewer compiled bytes.
 *
 * Perl has no limit on a compiled pattern; PCRE2 (with Debian's link size
 * of 2) stops at 64 KB. SpamAssassin's ReplaceTags rules exceed it: the
 * letter tags (<E>, <P>: every look-alike of a letter, a kilobyte each)
 * repeated a hundred times, or a group repeated {1,100} inside a group
 * repeated {5}, which PCRE2 compiles as that many copies. Here each group
 * that repeats (the same text twice or more, or under a bounded
 * quantifier) is written once, in a (?(DEFINE)...) at the end of the
 * pattern, and called where it was: (?:...){1,100} becomes (?&_r0){1,100}.
 * Since PCRE2 10.30 a call backtracks as the group in place does, so the
 * pattern matches the same texts; the DEFINE groups come after every group
 * of the pattern, so its group numbers stay.
 *
 * Only patterns this is plainly right for: none with back-references,
 * named groups, option settings, conditions, verbs, \Q, or the x flag; no
 * group inside a look-behind is moved.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "rules_eval.h"
#include "../common/util.h"

#define MIN_GROUP 12            /* shorter groups are not worth a call */

struct span { size_t start, end; uint64_t h; bool movable, repeated; size_t count; };

struct buf { char *s; size_t len, cap; };

static void
put(struct buf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->s = xrealloc(b->s, b->cap);
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

/* The end of the escape at p (p[0] == '\\'), or NULL for what is not
 * handled (back-references, \Q, \g, \k). */
static const char *
escape_end(const char *p)
{
    char c = p[1];
    if (c == '\0' || c == 'Q' || c == 'g' || c == 'k' || (c >= '1' && c <= '9'))
        return NULL;
    if ((c == 'x' || c == 'o' || c == 'p' || c == 'P' || c == 'N') && p[2] == '{') {
        const char *e = strchr(p + 3, '}');
        return e ? e + 1 : NULL;
    }
    if (c == 'c')
        return p[2] ? p + 3 : NULL;
    return p + 2;
}

/* The end of the character class at p (p[0] == '['), past its ']'. */
static const char *
class_end(const char *p)
{
    const char *q = p + 1;
    if (*q == '^')
        q++;
    if (*q == ']')
        q++;
    while (*q && *q != ']') {
        if (*q == '\\') {
            q = escape_end(q);
            if (q == NULL)
                return NULL;
        } else if (q[0] == '[' && (q[1] == ':' || q[1] == '.' || q[1] == '=')) {
            const char *e = strstr(q + 2, (char[]){ q[1], ']', 0 });
            if (e == NULL)
                return NULL;
            q = e + 2;
        } else {
            q++;
        }
    }
    return *q == ']' ? q + 1 : NULL;
}

/* Whether {n}, {n,} or {n,m} at p makes PCRE2 copy the group before it. */
static bool
copies(const char *p)
{
    if (*p != '{')
        return false;
    char *e;
    unsigned long n = strtoul(p + 1, &e, 10);
    if (e == p + 1)
        return false;
    if (*e == '}')
        return n > 1;
    if (*e != ',')
        return false;
    if (e[1] == '}')
        return n >= 1;
    char *e2;
    unsigned long m = strtoul(e + 1, &e2, 10);
    return e2 != e + 1 && *e2 == '}' && m > 1;
}

static uint64_t
fnv(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static int
cmp_span(const void *a, const void *b, void *ctx)
{
    const char *src = ctx;
    const struct span *x = *(struct span *const *)a, *y = *(struct span *const *)b;
    size_t lx = x->end - x->start, ly = y->end - y->start;
    if (x->h != y->h)
        return x->h < y->h ? -1 : 1;
    if (lx != ly)
        return lx < ly ? -1 : 1;
    return memcmp(src + x->start, src + y->start, lx);
}

char *
rules_re_shrink(const char *src, unsigned options)
{
    if (options & PCRE2_EXTENDED)
        return NULL;
    size_t n = strlen(src), nspans = 0, cap = 16, depth = 0, lookbehind = 0;
    struct span *spans = xcalloc(cap, sizeof(*spans));
    struct { size_t span; bool behind; } stack[256];
    bool ok = true;
    /* pass 1: the groups, where they start and end */
    for (const char *p = src; ok && *p;) {
        if (*p == '\\') {
            const char *e = escape_end(p);
            ok = e != NULL;
            p = e;
        } else if (*p == '[') {
            const char *e = class_end(p);
            ok = e != NULL;
            p = e;
        } else if (*p == '(') {
            bool movable = true, behind = false;
            if (p[1] == '*') {
                ok = false;
                break;
            }
            if (p[1] == '?') {
                char c = p[2];
                if (c == '#') {
                    const char *e = strchr(p, ')');
                    ok = e != NULL;
                    p = e ? e + 1 : NULL;
                    continue;
                }
                if (c == '<' && (p[3] == '=' || p[3] == '!'))
                    behind = true, movable = false;
                else if (c == '=' || c == '!')
                    movable = false;
                else if (c != ':' && c != '>' && c != '|') {
                    ok = false;         /* names, options, conditions, recursion */
                    break;
                }
            }
            if (depth == sizeof(stack) / sizeof(stack[0])) {
                ok = false;
                break;
            }
            if (nspans == cap)
                spans = xrealloc(spans, (cap *= 2) * sizeof(*spans));
            spans[nspans] = (struct span){ .start = (size_t)(p - src),
                                           .movable = movable && lookbehind == 0 };
            stack[depth].span = nspans++;
            stack[depth++].behind = behind;
            lookbehind += behind;
            p++;
        } else if (*p == ')') {
            if (depth == 0) {
                ok = false;
                break;
            }
            struct span *s = &spans[stack[--depth].span];
            lookbehind -= stack[depth].behind;
            s->end = (size_t)(p - src) + 1;
            s->repeated = copies(p + 1);
            s->h = fnv(src + s->start, s->end - s->start);
            p++;
        } else {
            p++;
        }
    }
    if (!ok || depth != 0 || nspans == 0) {
        free(spans);
        return NULL;
    }
    /* how often each group's text occurs */
    struct span **by = xcalloc(nspans, sizeof(*by));
    for (size_t i = 0; i < nspans; i++)
        by[i] = &spans[i];
    qsort_r(by, nspans, sizeof(*by), cmp_span, (void *)src);
    for (size_t i = 0; i < nspans;) {
        size_t j = i + 1;
        while (j < nspans && cmp_span(&by[i], &by[j], (void *)src) == 0)
            j++;
        for (size_t k = i; k < j; k++)
            by[k]->count = j - i;
        i = j;
    }
    /* pass 2: the pattern again, each repeating group as a call; the
     * definitions are keyed by their text as rewritten (a name per text) */
    struct buf *bufs = xcalloc(nspans + 1, sizeof(*bufs));
    struct buf defs = { 0 };
    struct { char *text; size_t len; } *names = NULL;
    size_t nnames = 0, open = 0;
    size_t *open_span = xcalloc(nspans + 1, sizeof(size_t));
    size_t next = 0;          /* the next span to open, in order of start */
    put(&bufs[0], "", 0);
    for (size_t i = 0; i < n;) {
        if (next < nspans && spans[next].start == i) {
            open++;
            open_span[open] = next++;
            bufs[open].len = 0;
            put(&bufs[open], "(", 1);
            i++;
            continue;
        }
        if (open > 0 && spans[open_span[open]].end == i + 1) {
            const struct span *s = &spans[open_span[open]];
            struct buf *b = &bufs[open];
            put(b, ")", 1);
            open--;
            if (s->movable && s->end - s->start >= MIN_GROUP && (s->count > 1 || s->repeated)) {
                size_t k;
                for (k = 0; k < nnames; k++)
                    if (names[k].len == b->len && memcmp(names[k].text, b->s, b->len) == 0)
                        break;
                if (k == nnames) {
                    names = xrealloc(names, (nnames + 1) * sizeof(*names));
                    names[nnames].text = xstrndup(b->s, b->len);
                    names[nnames++].len = b->len;
                    char head[32];
                    int hl = snprintf(head, sizeof(head), "(?<_r%zu>", k);
                    put(&defs, head, (size_t)hl);
                    put(&defs, b->s, b->len);
                    put(&defs, ")", 1);
                }
                char call[32];
                int cl = snprintf(call, sizeof(call), "(?&_r%zu)", k);
                put(&bufs[open], call, (size_t)cl);
            } else {
                put(&bufs[open], b->s, b->len);
            }
            i++;
            continue;
        }
        /* an escape or a class as a whole: their '(' and ')' are not groups */
        const char *p = src + i, *e = p + 1;
        if (*p == '\\')
            e = escape_end(p);
        else if (*p == '[')
            e = class_end(p);
        else if (*p == '(' && p[1] == '?' && p[2] == '#')
            e = strchr(p, ')') + 1;
        put(&bufs[open], p, (size_t)(e - p));
        i = (size_t)(e - src);
    }
    char *out = NULL;
    if (nnames > 0) {
        struct buf o = { 0 };
        put(&o, bufs[0].s, bufs[0].len);
        put(&o, "(?(DEFINE)", 10);
        put(&o, defs.s, defs.len);
        put(&o, ")", 1);
        out = o.s;
    }
    for (size_t i = 0; i <= nspans; i++)
        free(bufs[i].s);
    for (size_t k = 0; k < nnames; k++)
        free(names[k].text);
    free(names);
    free(defs.s);
    free(bufs);
    free(open_span);
    free(by);
    free(spans);
    return out;
}

/* A body pattern with '$' for the whole body text at once (rules.c): the
 * body's lines each end in their one "\n", and SpamAssassin matches each
 * line on its own, where '$' also matches at the line's very end, after
 * that "\n" (/\s$/ matches "Business\n"). In the whole text that place is
 * the one after a "\n", so '$' becomes (?:$|(?<=\n)); on one line the two
 * are the same. NULL: no '$' outside a class; *bad: not a pattern this
 * reads (\Q...\E). */
char *
rules_re_dollar(const char *src, bool *bad)
{
    static const char with[] = "(?:$|(?<=\\n))";
    *bad = false;
    struct buf o = { 0 };
    bool any = false;
    for (const char *p = src; *p;) {
        const char *e;
        if (*p == '\\') {
            if (p[1] == 'Q' || p[1] == '\0') {
                *bad = true;
                free(o.s);
                return NULL;
            }
            e = p + 2;
        } else if (*p == '[') {
            e = class_end(p);
            if (e == NULL) {
                *bad = true;
                free(o.s);
                return NULL;
            }
        } else if (*p == '$') {
            put(&o, with, sizeof(with) - 1);
            any = true;
            p++;
            continue;
        } else {
            e = p + 1;
        }
        put(&o, p, (size_t)(e - p));
        p = e;
    }
    if (!any) {
        free(o.s);
        return NULL;
    }
    return o.s;
}

/* ------------------------------------------------ the ASCII projection */

/* A body text with no byte over 0x7f cannot match what needs one: the
 * look-alike letters of SpamAssassin's ReplaceTags rules ([\xce][\xa1],
 * [\xf0][\x9d]..., a kilobyte a letter) are most of the FUZZY_* and
 * __YOUR_* patterns, and PCRE2 tries every one of them at every place.
 * rules_re_ascii writes the pattern with each alternative that needs such
 * a byte left out: over an ASCII text it matches the same texts at the
 * same places (PCRE2 tries the alternatives left in the same order, and
 * the ones left out could never succeed). A pattern with an option set
 * bare, (?i), or with x is not rewritten. */

/* pf: write a prefilter for an ASCII text, which may match more
 * (rules_re_ascii_pf) */
struct proj { const char *p; bool bad, pf; };

static void proj_alt(struct proj *P, struct buf *out, bool *dead_r);

/* The end of the escape at p, \xHH read whole (escape_end stops after
 * the x: the digits then read as literal characters, which suits it). */
static const char *
esc_end(const char *p)
{
    if (p[1] != 'x' || p[2] == '{')
        return escape_end(p);
    const char *e = p + 2;
    while (e < p + 4 && ((*e >= '0' && *e <= '9') || (*e >= 'a' && *e <= 'f') ||
                         (*e >= 'A' && *e <= 'F')))
        e++;
    return e;
}

/* The byte an escape at p (p[0] == '\\') stands for, or -1 when it is
 * not one byte written in hex. */
static int
escape_byte(const char *p, const char *end)
{
    if (p[1] != 'x')
        return -1;
    char *e;
    const char *h = p[2] == '{' ? p + 3 : p + 2;
    unsigned long v = strtoul(h, &e, 16);
    if (e == h || e > end || v > 0xff)
        return -1;
    return (int)v;
}

/* Whether the class [p, end) holds bytes over 0x7f only. */
static bool
class_high(const char *p, const char *end)
{
    const char *q = p + 1, *last = end - 1;     /* *last == ']' */
    if (*q == '^')
        return false;
    bool any = false;
    while (q < last) {
        int lo;
        const char *n;
        if (*q == '\\') {
            n = esc_end(q);
            if (n == NULL || (lo = escape_byte(q, n)) < 0)
                return false;
        } else if (*q == '[') {
            return false;               /* [:alpha:] and kin */
        } else {
            lo = (unsigned char)*q;
            n = q + 1;
        }
        if (lo < 0x80)
            return false;
        if (*n == '-' && n + 1 < last) {        /* a range: its end is higher */
            n++;
            n = *n == '\\' ? esc_end(n) : n + 1;
            if (n == NULL)
                return false;
        }
        any = true;
        q = n;
    }
    return any;
}

/* Whether the group text s[0..n) matches digits only: digits, classes of
 * them (a '-' in one only as a range between two digits: first or last
 * it is a literal '-'), groups and alternatives of those, '?' and '*' (the
 * HTML entities of SpamAssassin's look-alike letters,
 * &#(?:1(?:0(?:13|2[458])...);). */
static bool
is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* s[i] == '-' in a class ('[' before it, so i >= 1): a range between two
 * digits, not a literal (first, last, or after a range as in [1-2-5]) */
static bool
range_dash(const char *s, size_t i, size_t n)
{
    return is_digit(s[i - 1]) && i >= 2 && s[i - 2] != '-' && i + 1 < n && is_digit(s[i + 1]);
}

static bool
digits_only(const char *s, size_t n)
{
    bool in_class = false, any = false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c >= '0' && c <= '9')
            any = true;
        else if (in_class ? c == ']' || (c == '-' && range_dash(s, i, n))
                          : c == '|' || c == '(' || c == ')' || c == '?' || c == '*' || c == ':' ||
                            c == '[')
            in_class = in_class ? c != ']' : c == '[';
        else
            return false;
    }
    return any && !in_class;
}

/* The class [p, end) without its members over 0x7f into out; false when
 * it has none, would have no other, or is not read (a negated class,
 * [:alpha:] and kin). */
static bool
class_low(const char *p, const char *end, struct buf *out)
{
    const char *q = p + 1, *last = end - 1;     /* *last == ']' */
    if (*q == '^')
        return false;
    struct buf b = { 0 };
    put(&b, "[", 1);
    bool dropped = false;
    while (q < last) {
        const char *n;
        int lo;
        if (*q == '\\') {
            n = esc_end(q);
            /* \x with fewer than two digits, or octal: what follows
             * would read as its digits once a byte between is gone */
            if (n != NULL && ((q[1] == 'x' && q[2] != '{' && n < q + 4) ||
                              (q[1] >= '0' && q[1] <= '7')))
                n = NULL;
            lo = n && n <= last ? escape_byte(q, n) : -1;
        } else {
            lo = (unsigned char)*q;
            n = *q == '[' ? NULL : q + 1;
        }
        if (n != NULL && *n == '-' && n + 1 < last) {   /* a range: its end is higher */
            n++;
            n = *n == '\\' ? esc_end(n) : n + 1;
        }
        if (n == NULL || n > last) {
            free(b.s);
            return false;
        }
        if (lo >= 0x80)
            dropped = true;
        else
            put(&b, q, (size_t)(n - q));
        q = n;
    }
    /* a '^' first would make the class a negated one: left as it is */
    bool ok = dropped && b.len > 1 && b.s[1] != '^';
    if (ok) {
        put(&b, "]", 1);
        put(out, b.s, b.len);
    }
    free(b.s);
    return ok;
}

/* The quantifier at P->p, copied to out: whether it allows none. */
static bool
proj_quant(struct proj *P, struct buf *out)
{
    const char *p = P->p;
    bool none = false;
    if (*p == '?' || *p == '*') {
        none = true;
        p++;
    } else if (*p == '+') {
        p++;
    } else if (*p == '{') {
        char *e;
        unsigned long n = strtoul(p + 1, &e, 10);
        bool ok = e != p + 1 &&
                  (*e == '}' || (*e == ',' && (e[1] == '}' || (e[1] >= '0' && e[1] <= '9'))));
        if (!ok)
            return false;               /* a literal '{' */
        const char *close = strchr(e, '}');
        if (close == NULL)
            return false;
        none = n == 0;
        p = close + 1;
    } else {
        return false;
    }
    if (*p == '?' || *p == '+')
        p++;
    put(out, P->p, (size_t)(p - P->p));
    P->p = p;
    return none;
}

/* One alternative, up to its '|' or ')': *dead_r when one of the atoms
 * it needs needs a byte over 0x7f. */
static void
proj_branch(struct proj *P, struct buf *out, bool *dead_r)
{
    *dead_r = false;
    while (!P->bad && *P->p && *P->p != '|' && *P->p != ')') {
        const char *p = P->p;
        bool dead = false;
        if (*p == '\\') {
            const char *e = esc_end(p);
            if (e == NULL) {
                P->bad = true;
                return;
            }
            int b = escape_byte(p, e);
            dead = b >= 0x80;
            put(out, p, (size_t)(e - p));
            P->p = e;
        } else if (*p == '[') {
            const char *e = class_end(p);
            if (e == NULL) {
                P->bad = true;
                return;
            }
            dead = class_high(p, e);
            /* for an ASCII text, its bytes over 0x7f are for nothing */
            if (!(P->pf && !dead && class_low(p, e, out)))
                put(out, p, (size_t)(e - p));
            P->p = e;
        } else if (*p == '(') {
            /* what may open a group: (, (?:, (?>, (?=, (?!, (?<=, (?<!,
             * (?flags: without x */
            const char *q = p + 1;
            bool look = false, neg = false;
            if (*q == '?') {
                q++;
                if (*q == ':' || *q == '>') {
                    q++;
                } else if (*q == '=' || *q == '!') {
                    look = true;
                    neg = *q == '!';
                    q++;
                } else if (q[0] == '<' && (q[1] == '=' || q[1] == '!')) {
                    look = true;
                    neg = q[1] == '!';
                    q += 2;
                } else {
                    /* not read: names, conditions, ...; a bare setting
                     * (?i), which holds on past its alternative (into the
                     * next ones, and at the top level to the end: leaving
                     * its alternative out would lose it); and x, under
                     * which blanks and # comments read otherwise */
                    const char *f = q;
                    while (*q == '-' || (*q >= 'a' && *q <= 'z'))
                        q++;
                    if (*q != ':' || q == f || memchr(f, 'x', (size_t)(q - f))) {
                        P->bad = true;
                        return;
                    }
                    q++;
                }
            } else if (*q == '*') {
                P->bad = true;              /* verbs */
                return;
            }
            size_t at = out->len;
            put(out, p, (size_t)(q - p));
            P->p = q;
            bool inner;
            proj_alt(P, out, &inner);
            if (P->bad || *P->p != ')') {
                P->bad = true;
                return;
            }
            put(out, ")", 1);
            P->p++;
            dead = inner && (!look || !neg);
            if (P->pf && q - p == 3 && p[2] == ':' && out->len - at > 10 &&
                digits_only(out->s + at + 3, out->len - at - 4)) {
                out->len = at;          /* &#(?:1(?:0(?:13|2[458]))|...); as &#(?:[0-9]*); */
                put(out, "(?:[0-9]*)", 10);
            }
        } else {
            if (*p == '|' || *p == ')')
                break;
            dead = (unsigned char)*p >= 0x80;
            put(out, p, 1);
            P->p++;
        }
        if (proj_quant(P, out))
            dead = false;
        if (dead)
            *dead_r = true;
    }
}

/* The alternatives up to the ')' or end: those that live, or "(?!)" when
 * none does (*dead_r). */
static void
proj_alt(struct proj *P, struct buf *out, bool *dead_r)
{
    bool first = true;
    *dead_r = true;
    for (;;) {
        struct buf b = { 0 };
        bool dead;
        put(&b, "", 0);
        proj_branch(P, &b, &dead);
        if (!dead) {
            if (!first)
                put(out, "|", 1);
            put(out, b.s, b.len);
            first = false;
            *dead_r = false;
        }
        free(b.s);
        if (P->bad || *P->p != '|')
            break;
        P->p++;
    }
    if (*dead_r)
        put(out, "(?!)", 4);
}

static char *
project(const char *src, bool pf)
{
    struct proj P = { src, false, pf };
    struct buf out = { 0 };
    put(&out, "", 0);
    bool dead;
    proj_alt(&P, &out, &dead);
    if (P.bad || *P.p != '\0' || out.len >= strlen(src)) {
        free(out.s);
        return NULL;                /* not read, or nothing left out */
    }
    return out.s;
}

char *
rules_re_ascii(const char *src)
{
    return project(src, false);
}

/* The same as a prefilter for an ASCII text, smaller: the bytes over 0x7f
 * of a class left out (they match nothing there), a group of digits only
 * as (?:[0-9]*), which matches all it does and more. SpamAssassin's
 * __PAY_ME, 15,441 bytes as rules_re_ascii writes it, is 3,832 so. */
char *
rules_re_ascii_pf(const char *src)
{
    return project(src, true);
}
