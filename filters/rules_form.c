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
 *            (pcre2_dfa_match gives every length at a start);
 * and Sn empty means no match anywhere: not in the whole text, not in
 * any of its lines (a match in a line is one in the text at the same
 * offsets). Anything else (Sn not empty, too many offsets, an ovector or
 * workspace too small, a limit reached, a scan that failed) says "may
 * match", and the rule runs in PCRE2 as before, whose verdict it is.
 * So the condition only ever rules out a text the rule cannot match.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "filters.h"
#include "rules_eval.h"
#include "../common/util.h"

#define FORM_MAX_N 64           /* the repetition counts taken */
#define FORM_MAX_POS 1024       /* offsets in one S(k): more and it cannot tell */
#define FORM_MAX_RUNS 4096      /* anchored matches a text: more and it cannot tell */
#define FORM_OV 512             /* match lengths at one start */
#define FORM_WS 20000           /* pcre2_dfa_match's workspace, in ints */
#define FORM_LIMIT 200000       /* as rules.c's match limit */

struct form_rule { size_t i; unsigned n; bool wb; pcre2_code *g; struct rules_hs_exact *x; };
struct rules_form {
    struct form_rule *f;
    size_t nf;
    size_t *of;                 /* per rule: its row in f + 1, 0 none */
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
 * whether G holds a repeat, *wb_r a word boundary (\b, \B: true or not
 * by the letters on each side, so a match in the text is one in a line
 * only where each line ends in a non-word character, which a line cut
 * at 2048 bytes may not). NULL: not of that shape. */
static char *
form_shape(const char *src, unsigned *n_r, bool *rep_r, bool *wb_r)
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
            if (src[i + 1] == 'b' || src[i + 1] == 'B')
                *wb_r = true;
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
    size_t k = count_len(src + i);
    unsigned n = 0;
    if (k == 0 || src[i + k] != '\0' || strchr(src + i, ',') || sscanf(src + i, "{%u}", &n) != 1 ||
        n < 2 || n > FORM_MAX_N)
        return NULL;
    *n_r = n;
    *rep_r = rep;
    return xstrndup(src + 3, i - 4);
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
        if (g[i] == '\\') {
            size_t k = escape_len(g + i);
            memcpy(out + o, g + i, k);
            o += k;
            i += k;
            continue;
        }
        if (g[i] == '[') {
            size_t j = i + 1;
            if (g[j] == '^')
                j++;
            if (g[j] == ']')
                j++;
            while (g[j] != ']')
                j += g[j] == '\\' ? escape_len(g + j) : 1;
            memcpy(out + o, g + i, j + 1 - i);
            o += j + 1 - i;
            i = j + 1;
            continue;
        }
        size_t k = g[i] == '{' ? count_len(g + i) : 0;
        if (k > 0) {
            unsigned a = 0, b = 0;
            int m = sscanf(g + i, "{%u,%u}", &a, &b);
            if (m == 1)
                b = g[i + k - 2] == ',' ? 0 : a;    /* {a,}: no bound; {a} */
            if (lim == 0 || (b > 0 && b >= lim)) {
                out[o++] = a > 0 ? '+' : '*';
                i += k;
                continue;
            }
            memcpy(out + o, g + i, k);
            o += k;
            i += k;
            continue;
        }
        out[o++] = g[i++];
    }
    out[o] = '\0';
    return out;
}

void
rules_form_build(struct ruleset *rs, const char *cache_dir)
{
    struct rules_form *F = xcalloc(1, sizeof(*F));
    F->of = xcalloc(rs->n + 1, sizeof(size_t));
    F->f = xcalloc(rs->n + 1, sizeof(*F->f));
    for (size_t i = 0; i < rs->n; i++) {
        const struct sa_rule *r = &rs->r[i];
        if (r->type != RULE_BODY || !r->needed || r->re == NULL || r->src == NULL ||
            r->per_line || (r->flags & ~(PCRE2_CASELESS | PCRE2_MULTILINE | PCRE2_DOTALL)))
            continue;
        uint32_t nl = 0;
        if (pcre2_pattern_info(r->re, PCRE2_INFO_NEWLINE, &nl) != 0 || nl != PCRE2_NEWLINE_LF)
            continue;           /* '.' would not mean what Hyperscan's does */
        unsigned n = 0;
        bool rep = false, wb = false;
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
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)g, PCRE2_ZERO_TERMINATED, r->flags, &ec, &eo,
                                       NULL);
        /* the long bounded repeats relaxed (as written, one copy of
         * __FILL_THIS_FORM_LONG2's group is "too large"; so relaxed it
         * takes 0.45 s to compile, once: cached). __FILL_THIS_FORM_LONG1
         * and _SHORT1, a line number before each copy, are "too large"
         * even so: left out (their prefilter is selective, the line
         * number); every repeat relaxed would take them, at 0.5 s each */
        char *h = form_relax(g, 10);
        struct rules_hs_exact *x = re ? rules_hs_exact_compile(h, r->flags, cache_dir) : NULL;
        free(h);
        free(g);
        if (x == NULL) {
            pcre2_code_free(re);
            continue;
        }
        F->f[F->nf] = (struct form_rule){ i, n, wb, re, x };
        F->of[i] = ++F->nf;
    }
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
        rules_hs_exact_free(&F->f[k].x);
    }
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

struct form_tls { pcre2_match_data *md; pcre2_match_context *mc; int *ws; };
static pthread_key_t tls_key;
static pthread_once_t tls_once = PTHREAD_ONCE_INIT;

static void
tls_free(void *p)
{
    struct form_tls *t = p;
    pcre2_match_data_free(t->md);
    pcre2_match_context_free(t->mc);
    free(t->ws);
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
        t->md = pcre2_match_data_create(FORM_OV, NULL);
        t->mc = pcre2_match_context_create(NULL);
        pcre2_set_match_limit(t->mc, FORM_LIMIT);
        pcre2_set_depth_limit(t->mc, 1000);
        t->ws = xcalloc(FORM_WS, sizeof(int));
        pthread_setspecific(tls_key, t);
    }
    return t;
}

/* A set of offsets, bounded: over is set when one more did not fit. */
struct offs { size_t v[FORM_MAX_POS]; size_t n; bool over; };

static int
offs_add_end(unsigned long long end, void *ctx)
{
    struct offs *o = ctx;
    if (o->n == FORM_MAX_POS) {
        o->over = true;
        return 1;               /* stop the scan: it cannot tell */
    }
    o->v[o->n++] = (size_t)end;
    return 0;
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
    qsort(o->v, o->n, sizeof(size_t), cmp_size);
    size_t w = 0;
    for (size_t k = 0; k < o->n; k++)
        if (w == 0 || o->v[w - 1] != o->v[k])
            o->v[w++] = o->v[k];
    o->n = w;
}

bool
rules_form_may_match(const struct ruleset *rs, size_t i, const char *s, size_t len, bool whole)
{
    const struct rules_form *F = rs->form;
    if (F == NULL || i >= rs->n || F->of[i] == 0)
        return true;
    const struct form_rule *f = &F->f[F->of[i] - 1];
    if (f->wb && !whole)
        return true;
    struct offs *a = xmalloc(sizeof(*a)), *b = xmalloc(sizeof(*b));
    a->n = 0;
    a->over = false;
    bool may = true;
    if (rules_hs_exact_ends(f->x, s, len, offs_add_end, a) < 0 || a->over)
        goto done;
    offs_unique(a);
    struct form_tls *t = tls_get();
    size_t runs = 0;
    for (unsigned k = 1; k < f->n; k++) {
        b->n = 0;
        b->over = false;
        for (size_t j = 0; j < a->n; j++) {
            if (++runs > FORM_MAX_RUNS)
                goto done;
            int rc = pcre2_dfa_match(f->g, (PCRE2_SPTR)s, len, a->v[j], PCRE2_ANCHORED, t->md,
                                     t->mc, t->ws, FORM_WS);
            if (rc == PCRE2_ERROR_NOMATCH)
                continue;
            if (rc <= 0)
                goto done;      /* too many lengths, a limit, the workspace */
            const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(t->md);
            for (int m = 0; m < rc; m++)
                if (offs_add_end(ov[2 * m + 1], b) != 0)
                    goto done;
        }
        offs_unique(b);
        if (b->n == 0) {
            may = false;        /* no k + 1 matches in a row anywhere */
            goto done;
        }
        struct offs *tmp = a;
        a = b;
        b = tmp;
    }
done:
    free(a);
    free(b);
    return may;
}
