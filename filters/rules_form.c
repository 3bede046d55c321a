/*
 * rules_form.c -- a necessary condition for the body rules written as
 * one group repeated, (?:G){n} (SpamAssassin's __FILL_THIS_FORM_LONG2,
 * G{5}, and _SHORT2, G{3}: G a field name, a blank or "and"/"or"). The
 * prefilter (rules_hs.c) keeps one copy of such a repetition, so it names
 * them on three messages in four, and PCRE2 then spends more on them
 * than on any other rule. Hyperscan in exact mode takes one copy of G,
 * not two, and no start of match.
 *
 * When G has no anchor, look-around, back reference, atomic group or
 * option setting, what G matches at a place of the text does not depend
 * on what is around it, so a match of G{n} exists iff there are offsets
 * p0 < p1 < ... < pn with each [p(k), p(k+1)) a match of G. Hence:
 *   S1 = every end of a match of G in the text (Hyperscan, exact mode);
 *   S(k+1) = the ends of the matches of G anchored at each p of S(k)
 *            (every one: "(?:G)(?C1)", the callout noting where it is
 *            and failing, so that PCRE2 backtracks into every way G
 *            can match there);
 * and Sn empty means no match anywhere: not in the whole text, not in
 * any of its lines (a match in a line is one in the text at the same
 * offsets; with \b, only when no line was cut mid-word). Otherwise the
 * rule runs in PCRE2 as before, whose verdict it is, on the lines where
 * an offset of Sn lies; and on every line when it cannot tell (too many
 * offsets or runs, a limit or the JIT stack reached, a scan that failed).
 * So the condition only ever rules out a text, or a line, the rule cannot
 * match. Hyperscan takes G with its long repeats relaxed (a superset of
 * its ends); a two-byte table skips most runs at once; one scan serves
 * every such rule of the text, and a rule whose G another's widens by
 * an optional part (form_widens) takes that one's ends.
 * tests/fuzz/fuzz_rules_form.c holds it against PCRE2.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <ctype.h>
#include <pcre2.h>
#include <stdatomic.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "filters.h"
#include "rules_eval.h"
#include "../common/util.h"

#define FORM_MAX_N 64           /* the repetition counts taken */
#define FORM_MAX_POS 8192       /* offsets in one S(k): more and it cannot tell */
#define FORM_MAX_RUNS 16384     /* anchored matches a text: more and it cannot tell */
#define FORM_LIMIT 200000       /* as rules.c's match limit */

struct form_rule {
    size_t i;                   /* the rule */
    unsigned n;                 /* G{n} */
    unsigned char wb;           /* G holds \b (1), \B (2) */
    size_t from;                /* the row whose scanned ends hold its G's (form_widens) */
    pcre2_code *g;              /* "(?:G)(?C1)", JIT */
    /* whether G may match from p, by the two bytes there and whether the
     * one before is a word character: 0 not known yet, 1 it may, 2 it
     * cannot (found on first use; 2 x 65,536) */
    _Atomic unsigned char *pair;
};
struct rules_form {
    struct form_rule *f;
    size_t nf;
    size_t *of;                 /* per rule: its row in f + 1, 0 none */
    /* each G, long repeats relaxed (form_relax), pattern k for f[k]: one
     * scan of a text for them all (the rules share their text) */
    struct rules_hs_exact *x;
    size_t *xid, nx;            /* per pattern id of x: its row in f + 1, 0 none */
    unsigned long gen;          /* this one's number in the process */
};

/* --------------------------------------------------------- the shape */

static bool
is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* The escape at p (p[0] == '\\'): its length, 0 when it is not one both
 * engines read alike (\A, \z, \G, \1, \Q, \p, \h, \v, ...). \b and \B
 * look at the letters beside them: see form_shape. */
static size_t
escape_len(const char *p)
{
    char c = p[1];
    if (c == '\0')
        return 0;
    if (strchr("sSwWdDtnrfebB", c))
        return 2;
    if (c == 'x') {
        if (p[2] == '{')
            return 0;
        size_t k = 2;
        while (k < 4 && is_hex(p[k]))
            k++;
        return k > 2 ? k : 0;
    }
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 0;
    return 2;                   /* an escaped punctuation mark: itself */
}

/* A counted repeat at p ({a}, {a,}, {a,b}): its length, 0 otherwise. */
static size_t
count_len(const char *p)
{
    size_t k = 1, d = 0;
    while (p[k] >= '0' && p[k] <= '9')
        k++, d++;
    if (d == 0 || d > 4)
        return 0;
    if (p[k] == ',') {
        k++;
        d = 0;
        while (p[k] >= '0' && p[k] <= '9')
            k++, d++;
        if (d > 4)
            return 0;
    }
    return p[k] == '}' ? k + 1 : 0;
}

/* G of src = "(?:G){n}", when G is a plain regular expression (no
 * anchor, look-around, back reference, atomic group, possessive repeat,
 * option setting, verb, POSIX class) and n is 2 to FORM_MAX_N; *rep_r:
 * whether G holds a repeat, *wb_r 1 when it holds \b, 2 \B (true or not
 * by the letters on each side: see rules_form_check). NULL: not of that
 * shape. */
static char *
form_shape(const char *src, unsigned *n_r, bool *rep_r, unsigned char *wb_r)
{
    if (strncmp(src, "(?:", 3) != 0)
        return NULL;
    size_t i = 3;
    int depth = 1;
    bool rep = false, after_rep = false;
    while (src[i] && depth > 0) {
        char c = src[i];
        bool was_rep = after_rep;
        after_rep = false;
        if (c == '\\') {
            size_t k = escape_len(src + i);
            if (k == 0)
                return NULL;
            if (src[i + 1] == 'b' && *wb_r == 0)
                *wb_r = 1;
            if (src[i + 1] == 'B')
                *wb_r = 2;
            i += k;
            continue;
        }
        if (c == '[') {
            size_t j = i + 1;
            if (src[j] == '^')
                j++;
            if (src[j] == ']')
                j++;
            while (src[j] && src[j] != ']') {
                if (src[j] == '[' && (src[j + 1] == ':' || src[j + 1] == '.' ||
                                      src[j + 1] == '='))
                    return NULL;
                if (src[j] == '\\') {
                    size_t k = escape_len(src + j);
                    if (k == 0 || src[j + 1] == 'B')
                        return NULL;    /* [\b] is a backspace, [\B] an error */
                    j += k;
                    continue;
                }
                j++;
            }
            if (src[j] != ']')
                return NULL;
            i = j + 1;
            continue;
        }
        if (c == '(') {
            if (src[i + 1] == '*')
                return NULL;
            if (src[i + 1] == '?') {
                if (src[i + 2] != ':')
                    return NULL;
                i += 3;
            } else {
                i++;
            }
            depth++;
            continue;
        }
        if (c == ')') {
            depth--;
            i++;
            continue;
        }
        if (c == '^' || c == '$')
            return NULL;
        if (c == '*' || c == '+' || c == '?') {
            if (was_rep && c == '+')
                return NULL;    /* possessive */
            if (!(was_rep && c == '?')) {
                rep = true;
                after_rep = true;
            }
            i++;
            continue;
        }
        if (c == '{') {
            size_t k = count_len(src + i);
            if (k == 0)
                return NULL;    /* a brace read as a letter: versions differ */
            rep = true;
            after_rep = true;
            i += k;
            continue;
        }
        i++;
    }
    if (depth != 0)
        return NULL;
    /* src[i - 1] is the group's ')': "{n}" must end the pattern */
    size_t k = src[i] == '{' ? count_len(src + i) : 0;
    unsigned n = 0;
    if (k == 0 || src[i + k] != '\0' || strchr(src + i, ',') || sscanf(src + i, "{%u}", &n) != 1 ||
        n < 2 || n > FORM_MAX_N)
        return NULL;
    *n_r = n;
    *rep_r = rep;
    return xstrndup(src + 3, i - 4);
}

/* The length of the token at g (valid for form_shape): an escape, a
 * class, a count, "(?:", or one character. */
static size_t
tok_len(const char *g)
{
    if (g[0] == '\\')
        return escape_len(g);
    if (g[0] == '{' && count_len(g) > 0)
        return count_len(g);
    if (strncmp(g, "(?:", 3) == 0)
        return 3;
    if (g[0] != '[')
        return 1;
    size_t j = 1;
    if (g[j] == '^')
        j++;
    if (g[j] == ']')
        j++;
    while (g[j] != ']')
        j += g[j] == '\\' ? escape_len(g + j) : 1;
    return j + 1;
}

/* G (valid for form_shape) for Hyperscan, which finds one copy of
 * __FILL_THIS_FORM_LONG2's "too large": each counted repeat X{a,b} with
 * b >= lim (every one when lim is 0) as X+ (X* when a is 0), a pattern
 * that matches wherever G does and more, so its ends hold G's. */
static char *
form_relax(const char *g, unsigned lim)
{
    size_t len = strlen(g), o = 0;
    char *out = xmalloc(len + 1);
    for (size_t i = 0; i < len;) {
        size_t k = tok_len(g + i);
        if (g[i] == '{' && k > 1) {
            unsigned a = 0, b = 0;
            if (sscanf(g + i, "{%u,%u}", &a, &b) == 1)
                b = g[i + k - 2] == ',' ? 0 : a;    /* {a,}: no bound; {a} */
            if (lim == 0 || (b > 0 && b >= lim)) {
                out[o++] = a > 0 ? '+' : '*';
                i += k;
                continue;
            }
        }
        memcpy(out + o, g + i, k);      /* an escape, a class, ...: as they are */
        o += k;
        i += k;
    }
    out[o] = '\0';
    return out;
}

/* Whether b is a with one optional group "(?:X)?" more, put where a token
 * of a begins (not a repeat's) or at its end: then every match of a is
 * one of b (X left out), and the ends of b in a text hold those of a.
 * SpamAssassin's __FILL_THIS_FORM_LONG2 is _SHORT2's group with
 * "(?:P[a-z\.\s]{10,30})?" after the blank: _SHORT2 takes its ends from
 * the scan for _LONG2, one pattern in Hyperscan instead of two. */
static bool
form_widens(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), fd = 0;
    while (fd < la && a[fd] == b[fd])
        fd++;
    for (size_t k = 0; k <= fd; k += k < la ? tok_len(a + k) : 1) {
        if ((k < la && strchr("*+?{", a[k])) || strncmp(b + k, "(?:", 3) != 0)
            continue;
        size_t j = k + 3;
        int depth = 1;
        while (j < lb && depth > 0) {
            depth += b[j] == '(' ? 1 : b[j] == ')' ? -1 : 0;
            j += b[j] == '\\' || b[j] == '[' ? tok_len(b + j) : 1;
        }
        if (depth != 0 || b[j] != '?')
            continue;
        j += b[j + 1] == '?' ? 2 : 1;       /* "??": lazy, as optional */
        if (strcmp(a + k, b + j) == 0)
            return true;
    }
    return false;
}

void
rules_form_build(struct ruleset *rs, const char *cache_dir)
{
    struct rules_form *F = xcalloc(1, sizeof(*F));
    F->of = xcalloc(rs->n + 1, sizeof(size_t));
    F->f = xcalloc(rs->n + 1, sizeof(*F->f));
    char **hsrc = xcalloc(rs->n + 1, sizeof(char *)), **gsrc = xcalloc(rs->n + 1, sizeof(char *));
    unsigned *hflags = xcalloc(rs->n + 1, sizeof(unsigned));
    for (size_t i = 0; i < rs->n; i++) {
        const struct sa_rule *r = &rs->r[i];
        if (r->type != RULE_BODY || !r->needed || r->re == NULL || r->src == NULL ||
            r->per_line || (r->flags & ~(PCRE2_CASELESS | PCRE2_MULTILINE | PCRE2_DOTALL)))
            continue;
        uint32_t nl = 0;
        if (pcre2_pattern_info(r->re, PCRE2_INFO_NEWLINE, &nl) != 0 || nl != PCRE2_NEWLINE_LF)
            continue;           /* '.' would not mean what Hyperscan's does */
        unsigned n = 0;
        bool rep = false;
        unsigned char wb = 0;
        char *g = form_shape(r->src, &n, &rep, &wb);
        if (g == NULL)
            continue;
        /* only where the prefilter cannot take the repetition as written
         * (rules_hs.c's relaxed(): a group holding a repeat, {3} or more;
         * anything {20} or more): elsewhere it is selective already */
        if (r->prefiltered && !(n >= 20 || (rep && n >= 3))) {
            free(g);
            continue;
        }
        int ec;
        PCRE2_SIZE eo;
        /* auto-possessification would turn a last "x?" into "x?+", and
         * only the longest of its lengths would reach the callout (all
         * are needed: "\xc3\xa9g\xc3\xa9 " is four of __HIGHBITS'
         * "[\x80-\xff].?" only as \xc3, \xa9g, \xc3, \xa9 ) */
        char *gc = xmalloc(strlen(g) + 16);
        memcpy(gc, "(?:", 3);
        memcpy(gc + 3, g, strlen(g));
        memcpy(gc + 3 + strlen(g), ")(?C1)", 7);
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)gc, PCRE2_ZERO_TERMINATED,
                                       r->flags | PCRE2_NO_AUTO_POSSESS | PCRE2_ANCHORED,
                                       &ec, &eo, NULL);
        free(gc);
        if (re)
            pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
        /* for Hyperscan, the long bounded repeats relaxed (as written,
         * one copy of __FILL_THIS_FORM_LONG2's group is "too large"; so
         * relaxed, with _SHORT2's, 0.65 s to compile, once: cached).
         * __FILL_THIS_FORM_LONG1 and _SHORT1, a line number before each
         * copy, are "too large" even so: left out (their prefilter is
         * selective, the line number); every repeat relaxed would take
         * them, at 0.5 s each */
        if (re == NULL) {
            free(g);
            continue;
        }
        hsrc[F->nf] = form_relax(g, 10);
        hflags[F->nf] = r->flags;
        gsrc[F->nf] = g;
        F->f[F->nf++] = (struct form_rule){ i, n, wb, 0, re, NULL };
    }
    /* a rule whose G another's widens (and that one's no other) takes
     * that one's ends: lend[k], the lender + 1 */
    size_t nc = F->nf, *lend = xcalloc(nc + 1, sizeof(size_t));
    for (size_t c = 0; c < nc; c++)
        for (size_t d = 0; d < nc && lend[c] == 0; d++) {
            if (d == c || hflags[c] != hflags[d] || !form_widens(gsrc[c], gsrc[d]))
                continue;
            bool top = true;
            for (size_t e = 0; e < nc && top; e++)
                top = e == d || hflags[e] != hflags[d] || !form_widens(gsrc[d], gsrc[e]);
            if (top)
                lend[c] = d + 1;
        }
    /* one database of the others; those Hyperscan refuses are left out */
    const char **pat = xcalloc(nc + 1, sizeof(char *));
    unsigned *pfl = xcalloc(nc + 1, sizeof(unsigned));
    size_t np = 0, *cand_of = xcalloc(nc + 1, sizeof(size_t));
    for (size_t k = 0; k < nc; k++)
        if (lend[k] == 0) {
            cand_of[np] = k;
            pfl[np] = hflags[k];
            pat[np++] = hsrc[k];
        }
    bool *taken = xcalloc(np + 1, sizeof(bool)), *in = xcalloc(nc + 1, sizeof(bool));
    F->x = np ? rules_hs_exact_compile(pat, pfl, np, cache_dir, taken) : NULL;
    for (size_t j = 0; j < np; j++)
        in[cand_of[j]] = F->x && taken[j];
    size_t *row = xcalloc(nc + 1, sizeof(size_t)), w = 0;
    for (size_t k = 0; k < nc; k++) {
        free(hsrc[k]);
        free(gsrc[k]);
        if (!(lend[k] ? in[lend[k] - 1] : in[k])) {
            pcre2_code_free(F->f[k].g);
            continue;
        }
        row[k] = w + 1;
        F->f[w] = F->f[k];
        F->f[w].pair = xcalloc(2 << 16, 1);
        F->of[F->f[w].i] = w + 1;
        w++;
    }
    for (size_t r = 0; r < w; r++) {
        size_t k = 0;           /* the candidate it was */
        while (row[k] != r + 1)
            k++;
        F->f[r].from = row[lend[k] ? lend[k] - 1 : k] - 1;
    }
    /* the database's pattern ids (j) to rows */
    F->xid = xcalloc(np + 1, sizeof(size_t));
    for (size_t j = 0; j < np; j++)
        F->xid[j] = in[cand_of[j]] ? row[cand_of[j]] : 0;
    F->nx = np;
    F->nf = w;
    free(lend);
    free(pat);
    free(pfl);
    free(cand_of);
    free(in);
    free(row);
    free(gsrc);
    static _Atomic unsigned long gens;
    F->gen = ++gens;
    free(taken);
    free(hsrc);
    free(hflags);
    rs->form = F;
}

void
rules_form_free(struct ruleset *rs)
{
    struct rules_form *F = rs->form;
    if (F == NULL)
        return;
    for (size_t k = 0; k < F->nf; k++) {
        pcre2_code_free(F->f[k].g);
        free((void *)F->f[k].pair);
    }
    rules_hs_exact_free(&F->x);
    free(F->xid);
    free(F->f);
    free(F->of);
    free(F);
    rs->form = NULL;
}

size_t
rules_form_count(const struct ruleset *rs)
{
    return rs->form ? rs->form->nf : 0;
}

/* ---------------------------------------------------------- matching */

/* A set of offsets, bounded: over is set when one more did not fit. */
struct offs { size_t *v; size_t n, cap; bool over; };

/* A thread's matching state, and the ends of each G in the last text it
 * scanned (a copy: the next rule that asks about the same text, the
 * same bytes, takes them from here) */
struct form_tls {
    pcre2_match_data *md;
    pcre2_match_context *mc, *mc0;
    pcre2_jit_stack *js;
    unsigned long gen;          /* the rules_form they are of; 0 none */
    char *text;
    size_t len, cap;
    bool ok;                    /* the scan did not fail */
    struct offs *ends;          /* per row of f */
    size_t nends;
};
static pthread_key_t tls_key;
static pthread_once_t tls_once = PTHREAD_ONCE_INIT;

static void
tls_free(void *p)
{
    struct form_tls *t = p;
    pcre2_match_data_free(t->md);
    pcre2_match_context_free(t->mc);
    pcre2_match_context_free(t->mc0);
    pcre2_jit_stack_free(t->js);
    for (size_t k = 0; k < t->nends; k++)
        free(t->ends[k].v);
    free(t->ends);
    free(t->text);
    free(t);
}

static void
tls_init(void)
{
    if (pthread_key_create(&tls_key, tls_free) != 0)
        fatal("rules: pthread_key_create failed");
}

static struct form_tls *
tls_get(void)
{
    pthread_once(&tls_once, tls_init);
    struct form_tls *t = pthread_getspecific(tls_key);
    if (t == NULL) {
        t = xcalloc(1, sizeof(*t));
        t->md = pcre2_match_data_create(1, NULL);
        t->mc = pcre2_match_context_create(NULL);
        pcre2_set_match_limit(t->mc, FORM_LIMIT);
        pcre2_set_depth_limit(t->mc, 1000);
        t->mc0 = pcre2_match_context_create(NULL);     /* no callout: for pair_may */
        pcre2_set_match_limit(t->mc0, FORM_LIMIT);
        t->js = pcre2_jit_stack_create(32 * 1024, 512 * 1024, NULL);
        pcre2_jit_stack_assign(t->mc, NULL, t->js);
        pthread_setspecific(tls_key, t);
    }
    return t;
}

static int
offs_add_end(unsigned long long end, void *ctx)
{
    struct offs *o = ctx;
    if (o->n == o->cap) {
        if (o->cap >= FORM_MAX_POS) {
            o->over = true;
            return 1;           /* stop the scan: it cannot tell */
        }
        o->cap = o->cap ? o->cap * 2 : 64;
        o->v = xrealloc(o->v, o->cap * sizeof(size_t));
    }
    o->v[o->n++] = (size_t)end;
    return 0;
}

/* the callout after G: where this way of matching G ends; then fail,
 * for the next way */
static int
on_callout(pcre2_callout_block *cb, void *ctx)
{
    struct offs *o = ctx;
    if (o->n > 0 && o->v[o->n - 1] == cb->current_position)
        return 1;
    return offs_add_end(cb->current_position, o) == 0 ? 1 : PCRE2_ERROR_CALLOUT;
}

static int
cmp_size(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return (x > y) - (x < y);
}

static void
offs_unique(struct offs *o)
{
    if (o->n == 0)
        return;                 /* (v may be NULL: qsort wants a pointer) */
    qsort(o->v, o->n, sizeof(size_t), cmp_size);
    size_t w = 0;
    for (size_t k = 0; k < o->n; k++)
        if (w == 0 || o->v[w - 1] != o->v[k])
            o->v[w++] = o->v[k];
    o->n = w;
}

/* Whether G may match from p (false: it cannot), by f->pair. */
static bool
pair_may(const struct form_rule *f, struct form_tls *t, const char *s, size_t len, size_t p)
{
    if (p + 2 > len)
        return true;
    unsigned char c = p > 0 ? (unsigned char)s[p - 1] : ' ';
    bool w = c == '_' || (c < 0x80 && isalnum(c));     /* PCRE2's \w without UCP */
    size_t k = (size_t)w << 16 | (size_t)(unsigned char)s[p] << 8 | (unsigned char)s[p + 1];
    unsigned char v = atomic_load_explicit(&f->pair[k], memory_order_relaxed);
    if (v == 0) {
        /* the two bytes after one like it: no match nor partial match
         * (more text wanted) means none of G starts so */
        const char sub[3] = { w ? 'a' : ' ', s[p], s[p + 1] };
        int rc = pcre2_match(f->g, (PCRE2_SPTR)sub, 3, 1, PCRE2_ANCHORED | PCRE2_PARTIAL_HARD,
                             t->md, t->mc0);
        v = rc == PCRE2_ERROR_NOMATCH ? 2 : 1;
        atomic_store_explicit(&f->pair[k], v, memory_order_relaxed);
    }
    return v == 1;
}

struct scan_ctx { const struct rules_form *F; struct offs *ends; };

/* an end of pattern id: its rule's (too many: that one cannot tell, the
 * scan goes on for the others) */
static int
on_end(unsigned id, unsigned long long end, void *ctx)
{
    const struct scan_ctx *c = ctx;
    if (id < c->F->nx && c->F->xid[id] > 0)
        offs_add_end(end, &c->ends[c->F->xid[id] - 1]);
    return 0;
}

/* The ends of f[row]'s G in the text (sorted; over: too many), from one
 * scan of it for every row; NULL when the scan failed. */
static const struct offs *
form_scan(const struct rules_form *F, struct form_tls *t, const char *s, size_t len, size_t row)
{
    if (t->gen != F->gen || t->len != len || (len > 0 && memcmp(t->text, s, len) != 0)) {
        if (t->nends < F->nf) {
            t->ends = xrealloc(t->ends, F->nf * sizeof(*t->ends));
            memset(t->ends + t->nends, 0, (F->nf - t->nends) * sizeof(*t->ends));
            t->nends = F->nf;
        }
        for (size_t k = 0; k < F->nf; k++) {
            t->ends[k].n = 0;
            t->ends[k].over = false;
        }
        struct scan_ctx c = { F, t->ends };
        t->ok = rules_hs_exact_ends(F->x, s, len, on_end, &c) == 0;
        for (size_t k = 0; k < F->nf; k++)
            offs_unique(&t->ends[k]);
        if (t->cap < len) {
            t->cap = len;
            t->text = xrealloc(t->text, len);
        }
        if (len > 0)
            memcpy(t->text, s, len);
        t->len = len;
        t->gen = F->gen;
    }
    return t->ok ? &t->ends[row] : NULL;
}

/* Sn (sorted) in *ends, or -1: cannot tell. */
static int
form_ends(const struct rules_form *F, size_t row, const char *s, size_t len, struct offs *ends)
{
    const struct form_rule *f = &F->f[row];
    struct offs a = { 0 }, b = { 0 };
    int rc = -1;
    size_t runs = 0;
    struct form_tls *t = tls_get();
    const struct offs *e = form_scan(F, t, s, len, f->from);
    if (e == NULL || e->over)
        goto done;
    a.v = xmalloc((e->n + 1) * sizeof(size_t));
    a.cap = e->n + 1;
    a.n = e->n;
    if (e->n > 0)
        memcpy(a.v, e->v, e->n * sizeof(size_t));
    pcre2_set_callout(t->mc, on_callout, &b);
    for (unsigned k = 1; k < f->n && a.n > 0; k++) {
        b.n = 0;
        for (size_t j = 0; j < a.n; j++) {
            if (!pair_may(f, t, s, len, a.v[j]))
                continue;
            if (++runs > FORM_MAX_RUNS)
                goto done;
            /* (anchored by its compile: PCRE2_ANCHORED here would keep
             * it from the JIT) */
            int mr = pcre2_match(f->g, (PCRE2_SPTR)s, len, a.v[j], 0, t->md, t->mc);
            if (mr != PCRE2_ERROR_NOMATCH)
                goto done;      /* too many ends, a limit, the JIT stack */
        }
        offs_unique(&b);
        struct offs tmp = a;
        a = b;
        b = tmp;
    }
    rc = 0;
done:
    free(b.v);
    if (rc == 0)
        *ends = a;
    else
        free(a.v);
    return rc;
}

int
rules_form_check(const struct ruleset *rs, size_t i, const char *s, size_t len,
                 const size_t *off, const size_t *llen, size_t n, size_t from, size_t **pick_r,
                 size_t *npick_r)
{
    const struct rules_form *F = rs->form;
    if (F == NULL || i >= rs->n || F->of[i] == 0)
        return 1;
    const struct form_rule *f = &F->f[F->of[i] - 1];
    /* a line cut short (a paragraph over 2048 bytes) reads \b, \B at its
     * end as before the end of a text; the whole text reads the next
     * letter there. Cut after a non-word character, \b is true in the
     * line only where it is in the text (its start reads alike); \B and
     * a cut in a word: it cannot tell */
    for (size_t k = 0; f->wb && k < n; k++) {
        size_t e = off[k] + llen[k];
        unsigned char c = e > 0 && e < len ? (unsigned char)s[e - 1] : '\n';
        if (c != '\n' && (f->wb == 2 || c == '_' || (c < 0x80 && isalnum(c))))
            return 1;
    }
    struct offs e = { 0 };
    if (form_ends(F, F->of[i] - 1, s, len, &e) < 0)
        return 1;
    /* a match in line k ends at an offset of Sn in (off[k], off[k] + llen[k]] */
    size_t *pick = xmalloc((e.n + 1) * sizeof(size_t)), np = 0;
    for (size_t j = 0, k = from; j < e.n && k < n; j++) {
        while (k < n && off[k] + llen[k] < e.v[j])
            k++;
        if (k < n && e.v[j] > off[k] && (np == 0 || pick[np - 1] != k))
            pick[np++] = k;
    }
    free(e.v);
    if (np == 0) {
        free(pick);
        return 0;
    }
    *pick_r = pick;
    *npick_r = np;
    return 2;
}
