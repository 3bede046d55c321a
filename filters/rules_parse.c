/*
 * rules_parse.c -- reads SpamAssassin rule files as they are (Debian's
 * spamassassin package, local rules), the way Mail::SpamAssassin::Conf
 * does: comments from an unescaped '#', one directive per line, later
 * definitions replacing earlier ones, `if`/`ifplugin`/`else`/`endif` (we
 * answer as SpamAssassin 4.0.1 with every plugin loaded, so nothing is
 * skipped unseen: what we cannot run is listed), ReplaceTags, and score
 * lines before or after their rule. Patterns are compiled once at the end,
 * after every file is read (replace_rules and scores may come later).
 *
 * One room though long: reading the files and finishing the set share
 * the one loader state (rules, scores, tflags, replace_rules).
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <ctype.h>
#include <errno.h>
#include <glob.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include "filters.h"
#include "rules_eval.h"
#include "../common/util.h"

#define MAX_LINE (1 << 20)     /* a line longer: not a rule file */
#define MAX_NEST 64
#define MAX_TAGS 512

struct tag { char kind; char name[32]; char *value; };   /* kind: t(ag) p(re) i(nter) o(post) */

struct loader {
    struct ruleset *rs;
    unsigned score_set;
    /* a simple open-addressing map: rule name -> index + 1 */
    size_t *map;
    size_t mapcap;
    struct { char *name; double v[4]; int nv; } *scores;
    size_t nscores;
    struct { char *name; char *text; } *descs;
    size_t ndescs;
    struct { char *name; char *flags; } *tflags;
    size_t ntflags;
    char **replace;
    size_t nreplace;
    struct tag tags[MAX_TAGS];
    size_t ntags;
    char rstart[8], rend[8];
    char **plugins;             /* loadplugin: the plugins loaded */
    size_t nplugins;
};

static size_t
hash(const char *s)
{
    size_t h = 5381;
    while (*s)
        h = h * 33 + (unsigned char)*s++;
    return h;
}

static void map_put(struct loader *L, const char *name, size_t idx);

static void
map_grow(struct loader *L)
{
    size_t old = L->mapcap;
    size_t *om = L->map;
    L->mapcap = old ? old * 2 : 4096;
    L->map = xcalloc(L->mapcap, sizeof(size_t));
    for (size_t i = 0; i < old; i++)
        if (om[i])
            map_put(L, L->rs->r[om[i] - 1].name, om[i] - 1);
    free(om);
}

static long
map_get(const struct loader *L, const char *name, size_t len)
{
    if (L->mapcap == 0)
        return -1;
    char key[256];
    if (len >= sizeof(key))
        return -1;
    memcpy(key, name, len);
    key[len] = '\0';
    for (size_t i = hash(key) & (L->mapcap - 1);; i = (i + 1) & (L->mapcap - 1)) {
        if (L->map[i] == 0)
            return -1;
        if (strcmp(L->rs->r[L->map[i] - 1].name, key) == 0)
            return (long)(L->map[i] - 1);
    }
}

static void
map_put(struct loader *L, const char *name, size_t idx)
{
    if ((L->rs->n + 1) * 2 > L->mapcap)
        map_grow(L);
    for (size_t i = hash(name) & (L->mapcap - 1);; i = (i + 1) & (L->mapcap - 1)) {
        if (L->map[i] == 0 || strcmp(L->rs->r[L->map[i] - 1].name, name) == 0) {
            L->map[i] = idx + 1;
            return;
        }
    }
}

static void
rule_clear(struct sa_rule *r)
{
    rules_eval_free(r);
    free(r->hdr);
    free(r->unset);
    free(r->src);
    if (r->re)
        pcre2_code_free(r->re);
    rexpr_free(&r->meta);
    free(r->expr);
    free(r->why);
    free(r->file);
    char *name = r->name;
    char *desc = r->desc;
    memset(r, 0, sizeof(*r));
    r->name = name;
    r->desc = desc;
}

/* The rule called name, new or (redefined) cleared. */
static struct sa_rule *
rule_new(struct loader *L, const char *name, const char *file, unsigned line)
{
    long at = map_get(L, name, strlen(name));
    struct sa_rule *r;
    if (at >= 0) {
        r = &L->rs->r[at];
        rule_clear(r);
    } else {
        if (L->rs->n % 256 == 0)
            L->rs->r = xrealloc(L->rs->r, (L->rs->n + 256) * sizeof(*L->rs->r));
        r = &L->rs->r[L->rs->n];
        memset(r, 0, sizeof(*r));
        r->name = xstrdup(name);
        map_put(L, name, L->rs->n);
        L->rs->n++;
    }
    r->file = xstrdup(file);
    r->line = line;
    return r;
}

static void
unsupported(struct sa_rule *r, const char *why)
{
    r->type = RULE_UNSUPPORTED;
    free(r->why);
    r->why = xstrdup(why);
}

/* Whether the words of s (tflags) hold w. */
static bool
has_word(const char *s, const char *w)
{
    size_t wl = strlen(w);
    for (const char *p = s; (p = strstr(p, w)) != NULL; p += wl)
        if ((p == s || isspace((unsigned char)p[-1])) && (p[wl] == '\0' || isspace((unsigned char)p[wl])))
            return true;
    return false;
}

static void
ignored(struct ruleset *rs, const char *directive)
{
    for (size_t i = 0; i < rs->nignored; i++)
        if (strcmp(rs->ignored[i].name, directive) == 0) {
            rs->ignored[i].n++;
            return;
        }
    size_t i = rs->nignored < 64 ? rs->nignored++ : 63;
    str_copy(rs->ignored[i].name, i == 63 ? "(others)" : directive, sizeof(rs->ignored[i].name));
    rs->ignored[i].n++;
}

/* "/re/flags", "m{re}flags", "m!re!flags": the pattern and the PCRE2
 * options; *rest_r after the flags. -1 when it is not a pattern. */
static int
parse_pattern(const char *s, char **src_r, unsigned *flags_r, const char **rest_r)
{
    char open, close;
    if (s[0] == '/') {
        open = close = '/';
        s++;
    } else if (s[0] == 'm' && s[1] && !isalnum((unsigned char)s[1]) && !isspace((unsigned char)s[1])) {
        open = s[1];
        close = open == '{' ? '}' : open == '(' ? ')' : open == '[' ? ']' : open == '<' ? '>' : open;
        s += 2;
    } else {
        return -1;
    }
    int lvl = 0;
    const char *p = s;
    for (; *p; p++) {
        if (*p == '\\' && p[1]) {
            p++;
            continue;
        }
        if (open != close && *p == open)
            lvl++;
        else if (*p == close) {
            if (lvl == 0)
                break;
            lvl--;
        }
    }
    if (*p != close)
        return -1;
    *src_r = xstrndup(s, (size_t)(p - s));
    unsigned f = 0;
    for (p++; isalpha((unsigned char)*p); p++) {
        switch (*p) {
        case 'i': f |= PCRE2_CASELESS; break;
        case 'm': f |= PCRE2_MULTILINE; break;
        case 's': f |= PCRE2_DOTALL; break;
        case 'x': f |= PCRE2_EXTENDED; break;
        default: break;         /* g, o: no meaning for a test */
        }
    }
    *flags_r = f;
    *rest_r = p;
    return 0;
}

static char *
next_word(char **p)
{
    while (isspace((unsigned char)**p))
        (*p)++;
    if (**p == '\0')
        return NULL;
    char *w = *p;
    while (**p && !isspace((unsigned char)**p))
        (*p)++;
    if (**p)
        *(*p)++ = '\0';
    while (isspace((unsigned char)**p))
        (*p)++;
    return w;
}

/* eval:NAME(args): the arguments as Conf/Parser.pm's pack_eval_args reads
 * them (quoted strings or bare words, comma separated); then one of the
 * native tests (rules_eval.c), else a Perl test that cannot run. */
static void
def_eval(struct sa_rule *r, const char *test, unsigned score_set)
{
    char why[240] = "";
    const char *paren = strchr(test, '(');
    size_t tl = strlen(test);
    while (tl && isspace((unsigned char)test[tl - 1]))
        tl--;
    size_t nl = paren ? (size_t)(paren - test) : 0;
    bool ok = paren && nl > 0 && tl > nl && test[tl - 1] == ')';
    for (size_t i = 0; ok && i < nl; i++)
        ok = isalnum((unsigned char)test[i]) || test[i] == '_';
    char *args[8] = { NULL };
    size_t na = 0;
    if (ok) {
        const char *p = paren + 1, *end = test + tl - 1;
        bool blank = true;
        for (const char *q = p; q < end; q++)
            blank &= isspace((unsigned char)*q) != 0;
        while (ok && !blank && p < end) {
            while (p < end && isspace((unsigned char)*p))
                p++;
            const char *b, *e;
            if (p < end && (*p == '\'' || *p == '"')) {
                const char *q = memchr(p + 1, *p, (size_t)(end - p - 1));
                if (q == NULL) {
                    ok = false;
                    break;
                }
                b = p + 1;
                e = q;
                p = q + 1;
            } else {
                b = p;
                while (p < end && (isalnum((unsigned char)*p) || strchr(".:-", *p)))
                    p++;
                e = p;
                if (e == b) {
                    ok = false;
                    break;
                }
            }
            while (p < end && isspace((unsigned char)*p))
                p++;
            if (p < end && *p != ',') {
                ok = false;
                break;
            }
            if (p < end)
                p++;
            if (na == 8) {
                ok = false;
                break;
            }
            args[na++] = xstrndup(b, (size_t)(e - b));
        }
    }
    if (ok && rules_eval_find(r, test, nl, args, na, score_set, why, sizeof(why)) == 0)
        r->type = RULE_EVAL;
    for (size_t i = 0; i < na; i++)
        free(args[i]);
    if (r->type == RULE_EVAL)
        return;
    char msg[400];
    if (why[0])
        snprintf(msg, sizeof(msg), "Perl test %.150s: %s", test, why);
    else
        snprintf(msg, sizeof(msg), "Perl test %.150s", test);
    unsupported(r, msg);
}

/* body/rawbody/uri/full NAME /re/ or eval:... */
static void
def_content(struct loader *L, enum rule_type t, char *args, const char *file, unsigned line)
{
    char *name = next_word(&args);
    if (name == NULL)
        return;
    struct sa_rule *r = rule_new(L, name, file, line);
    r->type = t;
    if (strncmp(args, "eval:", 5) == 0) {
        double lo, hi;
        if (sscanf(args, "eval:check_bayes('%lf', '%lf')", &lo, &hi) == 2 ||
            sscanf(args, "eval:check_bayes('%lf','%lf')", &lo, &hi) == 2) {
            r->type = RULE_BAYES;       /* scored by the bayes plugin; here for metas */
            r->lo = lo;
            r->hi = hi;
            return;
        }
        def_eval(r, args + 5, L->score_set);
        return;
    }
    const char *rest;
    if (parse_pattern(args, &r->src, &r->flags, &rest) < 0)
        unsupported(r, "not a /pattern/");
}

static void
def_header(struct loader *L, char *args, const char *file, unsigned line)
{
    char *name = next_word(&args);
    if (name == NULL)
        return;
    struct sa_rule *r = rule_new(L, name, file, line);
    r->type = RULE_HEADER;
    if (strncmp(args, "eval:", 5) == 0) {
        def_eval(r, args + 5, L->score_set);
        return;
    }
    if (strncmp(args, "exists:", 7) == 0) {
        char *h = args + 7;
        char *w = next_word(&h);
        size_t wl = w ? strlen(w) : 0;
        if (wl && w[wl - 1] == ':')
            w[--wl] = '\0';
        r->type = RULE_EXISTS;
        r->hdr = xstrdup(w ? w : "");
        return;
    }
    /* HEADER[:mod[:mod]] =~ /re/ (Conf/Parser.pm also takes "HEADER=~") */
    char *h = args;
    size_t hl = strspn(h, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-:");
    char *rest = h + hl;
    while (isspace((unsigned char)*rest))
        rest++;
    if (hl == 0 || (strncmp(rest, "=~", 2) != 0 && strncmp(rest, "!~", 2) != 0)) {
        unsupported(r, "not HEADER =~ /pattern/");
        return;
    }
    r->negate = rest[0] == '!';
    h[hl] = '\0';
    args = rest + 2;
    while (isspace((unsigned char)*args))
        args++;
    if (hl && h[hl - 1] == ':')
        h[--hl] = '\0';
    char *colon = strchr(h, ':');
    if (colon) {
        const char *m = colon + 1;
        r->hmode = strncmp(m, "raw", 3) == 0 ? HDR_RAW : strncmp(m, "addr", 4) == 0 ? HDR_ADDR
                 : strncmp(m, "name", 4) == 0 ? HDR_NAME : HDR_DECODED;
        for (char *mod = colon; mod; mod = strchr(mod + 1, ':')) {
            size_t ml = strcspn(mod + 1, ":");
            static const char *const ok[] = { "raw", "addr", "name", "first", "last", NULL };
            bool known = false;
            for (size_t i = 0; ok[i] && !known; i++)
                known = strlen(ok[i]) == ml && strncasecmp(mod + 1, ok[i], ml) == 0;
            if (!known) {
                unsupported(r, strncasecmp(mod + 1, "host", 4) == 0 ||
                               strncasecmp(mod + 1, "domain", 6) == 0 ||
                               strncasecmp(mod + 1, "ip", 2) == 0 ||
                               strncasecmp(mod + 1, "revip", 5) == 0
                               ? "header modifier not implemented" : "unknown header modifier");
                return;
            }
        }
    }
    size_t bl = colon ? (size_t)(colon - h) : hl;
    if (strncmp(h, "X-Spam-", 7) == 0 && !(bl > 14 && strncmp(h, "X-Spam-Relays-", 14) == 0)) {
        unsupported(r, "needs SpamAssassin's pseudo-header");
        return;
    }
    r->hdr = xstrdup(h);
    const char *after;
    if (parse_pattern(args, &r->src, &r->flags, &after) < 0) {
        unsupported(r, "not a /pattern/");
        return;
    }
    const char *u = strstr(after, "[if-unset:");
    if (u) {
        u += 10;
        while (*u == ' ')
            u++;
        const char *e = strchr(u, ']');
        r->unset = xstrndup(u, e ? (size_t)(e - u) : strlen(u));
    }
}

/* ----------------------------------------------------------- if lines */

/* Is a plugin loaded? With no loadplugin read (no .pre files), every
 * one is: nothing is left out unseen, what cannot run is listed. */
static bool
plugin_loaded(const struct loader *L, const char *name, size_t len)
{
    if (L->nplugins == 0)
        return true;
    for (size_t i = 0; i < L->nplugins; i++)
        if (strlen(L->plugins[i]) == len && strncmp(L->plugins[i], name, len) == 0)
            return true;
    return false;
}

static int
if_resolve(const char *name, size_t len, void *ctx)
{
    const struct loader *L = ctx;
    if (len == 7 && strncmp(name, "version", 7) == 0)
        return 0;
    if (len == 12 && strncmp(name, "perl_version", 12) == 0)
        return 1;
    /* plugin(X), can(X::method) of a plugin X: whether X is loaded;
     * can() of anything else (Conf features): SpamAssassin 4.0.1 has it */
    static const char pfx[] = "Mail::SpamAssassin::Plugin::";
    if (len > 8 && strncmp(name, "plugin(", 7) == 0 && name[len - 1] == ')') {
        const char *b = name + 7, *e = name + len - 1;
        while (b < e && isspace((unsigned char)*b))
            b++;
        while (e > b && isspace((unsigned char)e[-1]))
            e--;
        return plugin_loaded(L, b, (size_t)(e - b)) ? 2 : 3;
    }
    if (len > 5 && strncmp(name, "can(", 4) == 0 && strncmp(name + 4, pfx, sizeof(pfx) - 1) == 0) {
        const char *b = name + 4, *e = name + len - 1;
        const char *m = b + sizeof(pfx) - 1;
        while (m < e && !(m[0] == ':' && m[1] == ':'))
            m++;
        return plugin_loaded(L, b, (size_t)(m - b)) ? 2 : 3;
    }
    return 2;
}

static bool
if_true(struct loader *L, const char *expr)
{
    static const double values[] = { 4.000001, 5.036, 1, 0 };
    char err[128];
    struct rexpr *e = rexpr_compile(expr, if_resolve, L, err, sizeof(err));
    if (e == NULL)
        return true;
    double v = rexpr_eval(e, values);
    rexpr_free(&e);
    return v != 0;
}

/* ------------------------------------------------------------- reading */

static void
add_score(struct loader *L, char *args)
{
    char *name = next_word(&args);
    if (name == NULL)
        return;
    L->scores = xrealloc(L->scores, (L->nscores + 1) * sizeof(*L->scores));
    L->scores[L->nscores].name = xstrdup(name);
    int nv = 0;
    char *w;
    while (nv < 4 && (w = next_word(&args)) != NULL) {
        char *end;
        double v = strtod(w, &end);
        if (end == w)
            break;
        L->scores[L->nscores].v[nv++] = v;
    }
    L->scores[L->nscores].nv = nv;
    L->nscores++;
}

static void
add_named(char ***names, size_t *n, char *args)
{
    char *w;
    while ((w = next_word(&args)) != NULL) {
        *names = xrealloc(*names, (*n + 1) * sizeof(char *));
        (*names)[(*n)++] = xstrdup(w);
    }
}

static void
add_tag(struct loader *L, char kind, char *args)
{
    char *name = next_word(&args);
    if (name == NULL || L->ntags == MAX_TAGS)
        return;
    for (size_t i = 0; i < L->ntags; i++)
        if (L->tags[i].kind == kind && strcmp(L->tags[i].name, name) == 0) {
            free(L->tags[i].value);
            L->tags[i].value = xstrdup(args);
            return;
        }
    L->tags[L->ntags].kind = kind;
    str_copy(L->tags[L->ntags].name, name, sizeof(L->tags[0].name));
    L->tags[L->ntags].value = xstrdup(args);
    L->ntags++;
}

static void
directive(struct loader *L, char *line, const char *file, unsigned lineno)
{
    char *args = line;
    char *d = next_word(&args);
    if (d == NULL)
        return;
    /* trailing white space off the arguments */
    size_t al = strlen(args);
    while (al && isspace((unsigned char)args[al - 1]))
        args[--al] = '\0';
    if (strcmp(d, "header") == 0)
        def_header(L, args, file, lineno);
    else if (strcmp(d, "body") == 0)
        def_content(L, RULE_BODY, args, file, lineno);
    else if (strcmp(d, "rawbody") == 0)
        def_content(L, RULE_RAWBODY, args, file, lineno);
    else if (strcmp(d, "uri") == 0)
        def_content(L, RULE_URI, args, file, lineno);
    else if (strcmp(d, "full") == 0)
        def_content(L, RULE_FULL, args, file, lineno);
    else if (strcmp(d, "meta") == 0) {
        char *name = next_word(&args);
        if (name == NULL)
            return;
        struct sa_rule *r = rule_new(L, name, file, lineno);
        r->type = RULE_META;
        r->expr = xstrdup(args);
    } else if (strcmp(d, "mimeheader") == 0) {
        /* mimeheader NAME Field[:raw] =~ /re/ [if-unset: x]: MIMEHeader.pm */
        char *name = next_word(&args);
        if (name == NULL)
            return;
        struct sa_rule *r = rule_new(L, name, file, lineno);
        char *h = next_word(&args);
        char *op = next_word(&args);
        const char *after;
        if (h == NULL || op == NULL || (strcmp(op, "=~") != 0 && strcmp(op, "!~") != 0) ||
            parse_pattern(args, &r->src, &r->flags, &after) < 0) {
            unsupported(r, "not mimeheader FIELD =~ /pattern/");
            return;
        }
        const char *u = strstr(after, "[if-unset:");
        char *unset = NULL;
        if (u) {
            u += 10;
            while (*u == ' ')
                u++;
            const char *e = strchr(u, ']');
            unset = xstrndup(u, e ? (size_t)(e - u) : strlen(u));
        }
        rules_eval_mimeheader(r, h, op[0] == '!', unset);
        free(unset);
    } else if (strcmp(d, "score") == 0)
        add_score(L, args);
    else if (strcmp(d, "describe") == 0) {
        char *name = next_word(&args);
        if (name) {
            L->descs = xrealloc(L->descs, (L->ndescs + 1) * sizeof(*L->descs));
            L->descs[L->ndescs].name = xstrdup(name);
            L->descs[L->ndescs++].text = xstrdup(args);
        }
    } else if (strcmp(d, "tflags") == 0) {
        char *name = next_word(&args);
        if (name) {
            L->tflags = xrealloc(L->tflags, (L->ntflags + 1) * sizeof(*L->tflags));
            L->tflags[L->ntflags].name = xstrdup(name);
            L->tflags[L->ntflags++].flags = xstrdup(args);
        }
    } else if (strcmp(d, "replace_tag") == 0)
        add_tag(L, 't', args);
    else if (strcmp(d, "replace_pre") == 0)
        add_tag(L, 'p', args);
    else if (strcmp(d, "replace_inter") == 0)
        add_tag(L, 'i', args);
    else if (strcmp(d, "replace_post") == 0)
        add_tag(L, 'o', args);
    else if (strcmp(d, "replace_start") == 0)
        str_copy(L->rstart, args, sizeof(L->rstart));
    else if (strcmp(d, "replace_end") == 0)
        str_copy(L->rend, args, sizeof(L->rend));
    else if (strcmp(d, "replace_rules") == 0)
        add_named(&L->replace, &L->nreplace, args);
    else if (strcmp(d, "loadplugin") == 0) {
        char *w = next_word(&args);
        if (w) {
            L->plugins = xrealloc(L->plugins, (L->nplugins + 1) * sizeof(char *));
            L->plugins[L->nplugins++] = xstrdup(w);
        }
    } else if (strcmp(d, "util_rb_tld") == 0) {
        char *w;
        while ((w = next_word(&args)) != NULL) {
            for (char *p = w; *p; p++)
                *p = (char)tolower((unsigned char)*p);
            if (L->rs->ntlds % 256 == 0)
                L->rs->tlds = xrealloc(L->rs->tlds, (L->rs->ntlds + 256) * sizeof(char *));
            L->rs->tlds[L->rs->ntlds++] = xstrdup(w);
        }
    } else if (strcmp(d, "util_rb_2tld") == 0 || strcmp(d, "util_rb_3tld") == 0) {
        char ***v = d[8] == '2' ? &L->rs->tld2 : &L->rs->tld3;
        size_t *n = d[8] == '2' ? &L->rs->ntld2 : &L->rs->ntld3;
        char *w;
        while ((w = next_word(&args)) != NULL) {
            for (char *p = w; *p; p++)
                *p = (char)tolower((unsigned char)*p);
            if (*n % 256 == 0)
                *v = xrealloc(*v, (*n + 256) * sizeof(char *));
            (*v)[(*n)++] = xstrdup(w);
        }
    } else if (strcmp(d, "clear_util_rb") == 0) {
        for (size_t i = 0; i < L->rs->ntlds; i++)
            free(L->rs->tlds[i]);
        L->rs->ntlds = 0;
        for (size_t i = 0; i < L->rs->ntld2; i++)
            free(L->rs->tld2[i]);
        L->rs->ntld2 = 0;
        for (size_t i = 0; i < L->rs->ntld3; i++)
            free(L->rs->tld3[i]);
        L->rs->ntld3 = 0;
    } else if (strcmp(d, "freemail_domains") == 0) {
        char *w;
        while ((w = next_word(&args)) != NULL) {
            bool ok = true;
            for (char *p = w; *p && ok; p++)
                ok = isalnum((unsigned char)*p) || strchr(".*?-", *p);
            if (!ok)
                continue;
            for (char *p = w; *p; p++)
                *p = (char)tolower((unsigned char)*p);
            if (L->rs->nfm_domains % 256 == 0)
                L->rs->fm_domains = xrealloc(L->rs->fm_domains,
                                             (L->rs->nfm_domains + 256) * sizeof(char *));
            L->rs->fm_domains[L->rs->nfm_domains++] = xstrdup(w);
        }
    } else if (strcmp(d, "redirector_pattern") == 0) {
        char *src;
        unsigned flags;
        const char *rest;
        if (parse_pattern(args, &src, &flags, &rest) == 0) {
            char err[200];
            void *re = rules_re_user(src, flags, err, sizeof(err));
            if (re) {
                L->rs->redirectors = xrealloc(L->rs->redirectors,
                                              (L->rs->nredirectors + 1) * sizeof(void *));
                L->rs->redirectors[L->rs->nredirectors++] = re;
            }
            free(src);
        }
    } else if (strcmp(d, "lang") == 0 || strcmp(d, "test") == 0)
        ;                                   /* translations and self-tests */
    else
        ignored(L->rs, d);
}

/* One rule file, as SpamAssassin reads it (lines of any length); -1 and
 * err ("FILE:LINE: why") for a file that cannot be read: not there, not
 * a file, a read error, or not text (a NUL byte, a line over MAX_LINE). */
static int
read_file(struct loader *L, const char *path, char *err, size_t errsize)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(err, errsize, "%s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && !S_ISREG(st.st_mode)) {
        snprintf(err, errsize, "%s: %s", path, S_ISDIR(st.st_mode) ? "a directory, not a rule file"
                                                                   : "not a regular file");
        fclose(f);
        return -1;
    }
    char *buf = NULL;
    size_t cap = 0;
    ssize_t got;
    bool active[MAX_NEST];
    bool taken[MAX_NEST];
    int depth = 0;
    unsigned lineno = 0;
    int rc = 0;
    while ((got = getline(&buf, &cap, f)) >= 0) {
        lineno++;
        if (memchr(buf, '\0', (size_t)got) != NULL || got > MAX_LINE) {
            snprintf(err, errsize, "%s:%u: %s", path, lineno, got > MAX_LINE
                     ? "a line of over a megabyte: not a rule file" : "a NUL byte: not a rule file");
            rc = -1;
            break;
        }
        if (L == NULL)
            continue;                   /* ruleset_file_check: reading is all */
        /* a comment starts at an unescaped '#'; "\#" is a '#' */
        size_t o = 0;
        for (size_t i = 0; buf[i]; i++) {
            if (buf[i] == '#' && (i == 0 || buf[i - 1] != '\\'))
                break;
            if (buf[i] == '\\' && buf[i + 1] == '#')
                continue;
            buf[o++] = buf[i];
        }
        buf[o] = '\0';
        char *p = buf;
        while (isspace((unsigned char)*p))
            p++;
        if (*p == '\0')
            continue;
        bool on = depth == 0 || active[depth - 1];
        if (strncmp(p, "ifplugin", 8) == 0 && isspace((unsigned char)p[8])) {
            if (depth < MAX_NEST) {
                char *name = p + 8;
                while (isspace((unsigned char)*name))
                    name++;
                size_t nl = strcspn(name, " \t\r\n");
                bool t = plugin_loaded(L, name, nl);
                active[depth] = on && t;
                taken[depth++] = t;
            }
            continue;
        }
        if (strncmp(p, "if", 2) == 0 && (isspace((unsigned char)p[2]) || p[2] == '(')) {
            if (depth < MAX_NEST) {
                bool t = if_true(L, p + 2);
                active[depth] = on && t;
                taken[depth++] = t;
            }
            continue;
        }
        if (strncmp(p, "else", 4) == 0 && (p[4] == '\0' || isspace((unsigned char)p[4]))) {
            if (depth > 0) {
                bool outer = depth < 2 || active[depth - 2];
                active[depth - 1] = outer && !taken[depth - 1];
            }
            continue;
        }
        if (strncmp(p, "endif", 5) == 0) {
            if (depth > 0)
                depth--;
            continue;
        }
        if (on)
            directive(L, p, path, lineno);
    }
    if (rc == 0 && ferror(f)) {
        snprintf(err, errsize, "%s:%u: %s", path, lineno + 1, strerror(errno));
        rc = -1;
    }
    free(buf);
    fclose(f);
    if (rc == 0 && L)
        L->rs->nfiles++;
    return rc;
}

int
ruleset_file_check(const char *path, char *err, size_t errsize)
{
    return read_file(NULL, path, err, errsize);
}

/* ------------------------------------------------------------ finishing */

static const char *
tag_value(const struct loader *L, char kind, const char *name, size_t len)
{
    for (size_t i = 0; i < L->ntags; i++)
        if (L->tags[i].kind == kind && strlen(L->tags[i].name) == len &&
            strncmp(L->tags[i].name, name, len) == 0)
            return L->tags[i].value;
    return NULL;
}

/* ReplaceTags as Mail::SpamAssassin::Plugin::ReplaceTags does it: the
 * first <pre X>, <post X> and <inter X> are taken out of the pattern;
 * the pattern is cut into tags (<[^<>]+>) and the text between them; pre
 * goes before and post after every tag, inter into every empty piece (two
 * tags in a row, or a tag at the very start); each tag with a value is
 * replaced by it; and again (without pre, post and inter, which are
 * gone) while a value brought in another tag, six passes at most. */
static char *
take_modifier(char *re, const char *st, const char *en, const char *kind)
{
    char open[48];
    snprintf(open, sizeof(open), "%s%s ", st, kind);
    char *b = strstr(re, open);
    if (b == NULL)
        return NULL;
    char *n = b + strlen(open);
    char *e = n[0] ? strstr(n + 1, en) : NULL;       /* .+? : at least one character */
    if (e == NULL)
        return NULL;
    char *name = xstrndup(n, (size_t)(e - n));
    memmove(b, e + strlen(en), strlen(e + strlen(en)) + 1);
    return name;
}

struct piece { char *s; bool tag; };

static void
app(char **out, size_t *len, size_t *cap, const char *s, size_t n)
{
    if (*len + n + 1 > *cap) {
        *cap = (*len + n + 1) * 2;
        *out = xrealloc(*out, *cap);
    }
    memcpy(*out + *len, s, n);
    *len += n;
    (*out)[*len] = '\0';
}

static char *
replace_tags(const struct loader *L, const char *src)
{
    const char *st = L->rstart[0] ? L->rstart : "<";
    const char *en = L->rend[0] ? L->rend : ">";
    size_t sl = strlen(st), el = strlen(en);
    char *re = xstrdup(src);
    bool again = true;
    for (int pass = 0; again && pass < 6; pass++) {
        again = false;
        char *pre_n = take_modifier(re, st, en, "pre");
        char *post_n = take_modifier(re, st, en, "post");
        char *inter_n = take_modifier(re, st, en, "inter");
        const char *pre = pre_n ? tag_value(L, 'p', pre_n, strlen(pre_n)) : NULL;
        const char *post = post_n ? tag_value(L, 'o', post_n, strlen(post_n)) : NULL;
        const char *inter = inter_n ? tag_value(L, 'i', inter_n, strlen(inter_n)) : NULL;
        /* Perl's split(/(<[^<>]+>)/): text, tag, text, tag, ... with the
         * empty text pieces kept except at the end */
        struct piece *pc = NULL;
        size_t np = 0;
        const char *p = re, *text = re;
        while (*p) {
            if (*p == '<') {
                const char *q = p + 1;
                while (*q && *q != '<' && *q != '>')
                    q++;
                if (*q == '>' && q > p + 1) {
                    pc = xrealloc(pc, (np + 2) * sizeof(*pc));
                    pc[np++] = (struct piece){ xstrndup(text, (size_t)(p - text)), false };
                    pc[np++] = (struct piece){ xstrndup(p, (size_t)(q + 1 - p)), true };
                    p = text = q + 1;
                    continue;
                }
            }
            p++;
        }
        if (*text) {
            pc = xrealloc(pc, (np + 1) * sizeof(*pc));
            pc[np++] = (struct piece){ xstrdup(text), false };
        }
        while (np && !pc[np - 1].tag && pc[np - 1].s[0] == '\0')
            free(pc[--np].s);
        size_t cap = strlen(re) * 2 + 64, len = 0;
        char *out = xmalloc(cap);
        out[0] = '\0';
        for (size_t i = 0; i < np; i++) {
            const char *s = pc[i].s;
            if (!pc[i].tag) {
                if (s[0] == '\0' && inter)
                    app(&out, &len, &cap, inter, strlen(inter));
                else
                    app(&out, &len, &cap, s, strlen(s));
                continue;
            }
            /* a tag piece: <NAME>, with pre before and post after it */
            const char *name = s + sl;
            size_t nl = strlen(s) - sl - el;
            const char *v = strncmp(s, st, sl) == 0 && strlen(s) > sl + el &&
                            strcmp(s + strlen(s) - el, en) == 0 ? tag_value(L, 't', name, nl) : NULL;
            if (pre)
                app(&out, &len, &cap, pre, strlen(pre));
            if (v) {
                app(&out, &len, &cap, v, strlen(v));
                for (const char *x = strchr(v, '<'); x && !again; x = strchr(x + 1, '<'))
                    again = x[1] && x[1] != '>' && strchr(x + 2, '>') != NULL;
            } else {
                app(&out, &len, &cap, s, strlen(s));
            }
            if (post)
                app(&out, &len, &cap, post, strlen(post));
        }
        for (size_t i = 0; i < np; i++)
            free(pc[i].s);
        free(pc);
        free(pre_n);
        free(post_n);
        free(inter_n);
        free(re);
        re = out;
    }
    return re;
}

static int
meta_resolve(const char *name, size_t len, void *ctx)
{
    long i = map_get(ctx, name, len);
    return i >= 0 ? (int)i : -1;
}

static void
compile_rule(struct loader *L, struct sa_rule *r, bool replace)
{
    if (r->type == RULE_META) {
        char err[200];
        r->meta = rexpr_compile(r->expr, meta_resolve, L, err, sizeof(err));
        if (r->meta == NULL)
            unsupported(r, err);
        return;
    }
    if (r->src == NULL || r->type == RULE_UNSUPPORTED)
        return;
    char *src = replace ? replace_tags(L, r->src) : xstrdup(r->src);
    unsigned opts = r->flags;
    /* what only a line on its own answers as SpamAssassin does */
    bool per_line = strstr(src, "\\A") || strstr(src, "\\z") || strstr(src, "\\Z") ||
                    strstr(src, "\\G") || strstr(src, "(?<=") || strstr(src, "(?<!");
    char *dollar = NULL;
    if (r->type == RULE_BODY) {
        opts |= PCRE2_MULTILINE;        /* the body's lines are matched in one text (rules.c) */
        bool bad = false;
        if (!per_line && (dollar = rules_re_dollar(src, &bad)) == NULL && bad)
            per_line = true;
    }
    const char *csrc = dollar ? dollar : src;
    int ec;
    PCRE2_SIZE eo;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)csrc, PCRE2_ZERO_TERMINATED, opts, &ec, &eo, NULL);
    if (re == NULL && ec == PCRE2_ERROR_PATTERN_TOO_LARGE) {
        /* Perl has no such limit: the same pattern in fewer bytes */
        char *small = rules_re_shrink(csrc, opts);
        int ec2 = 0;
        PCRE2_SIZE eo2;
        if (small && (re = pcre2_compile((PCRE2_SPTR)small, PCRE2_ZERO_TERMINATED, opts, &ec2,
                                         &eo2, NULL)) == NULL)
            log_debug("rules: %s still does not compile when shrunk (error %d)", r->name, ec2);
        free(small);
    }
    free(dollar);
    if (re == NULL) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(ec, msg, sizeof(msg));
        char why[240];
        snprintf(why, sizeof(why), "pattern does not compile: %s at %zu", (char *)msg, (size_t)eo);
        unsupported(r, why);
    } else {
        pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
        r->re = re;
        r->flags = opts;
        r->per_line = per_line;
    }
    free(r->src);
    r->src = src;           /* tags replaced: the prefilter's source */
}

/* Which rules ever run: the scored ones and what their metas use. */
static void
mark_needed(struct ruleset *rs, size_t i, unsigned depth)
{
    struct sa_rule *r = &rs->r[i];
    if (r->needed || depth > 64)
        return;
    r->needed = true;
    if (r->type == RULE_META && r->meta) {
        const int *refs;
        size_t n = rexpr_refs(r->meta, &refs);
        for (size_t k = 0; k < n; k++)
            /* a rule scored 0 never runs in SpamAssassin, also under a
             * meta: the meta reads it as 0 */
            if (refs[k] >= 0 && !(rs->r[refs[k]].scored && rs->r[refs[k]].score == 0))
                mark_needed(rs, (size_t)refs[k], depth + 1);
    }
}

static int
cmp_req(const void *a, const void *b, void *ctx)
{
    const struct ruleset *rs = ctx;
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return strcmp(rs->r[x].hdr, rs->r[y].hdr);
}

/* Each header and exists rule's request numbered by its text (hdr_id), so
 * that a message finds its answer by that number (rmsg_get_id). */
static void
number_requests(struct ruleset *rs)
{
    size_t *idx = xcalloc(rs->n + 1, sizeof(size_t)), n = 0;
    for (size_t i = 0; i < rs->n; i++) {
        rs->r[i].hdr_id = 0;
        if ((rs->r[i].type == RULE_HEADER || rs->r[i].type == RULE_EXISTS) && rs->r[i].hdr)
            idx[n++] = i;
    }
    qsort_r(idx, n, sizeof(size_t), cmp_req, rs);
    unsigned id = 0;
    for (size_t k = 0; k < n; k++) {
        if (k == 0 || strcmp(rs->r[idx[k]].hdr, rs->r[idx[k - 1]].hdr) != 0)
            id++;
        rs->r[idx[k]].hdr_id = id;
    }
    rs->nhdr_ids = id;
    free(idx);
}

static void
order_meta(struct ruleset *rs, size_t i, unsigned char *state, unsigned depth)
{
    if (state[i] || depth > 64)
        return;
    state[i] = 1;       /* visiting: a cycle reads the rule as 0 */
    const struct sa_rule *r = &rs->r[i];
    const int *refs;
    size_t n = rexpr_refs(r->meta, &refs);
    for (size_t k = 0; k < n; k++)
        if (refs[k] >= 0 && rs->r[refs[k]].type == RULE_META && rs->r[refs[k]].meta)
            order_meta(rs, (size_t)refs[k], state, depth + 1);
    state[i] = 2;
    rs->meta_order[rs->nmeta_order++] = i;
}

static void
finish(struct loader *L)
{
    struct ruleset *rs = L->rs;
    for (size_t i = 0; i < L->nscores; i++) {
        long at = map_get(L, L->scores[i].name, strlen(L->scores[i].name));
        if (at < 0)
            continue;
        int nv = L->scores[i].nv;
        if (nv == 0)
            continue;
        rs->r[at].score = L->scores[i].v[nv == 4 ? L->score_set : 0];
        rs->r[at].scored = true;
    }
    for (size_t i = 0; i < L->ndescs; i++) {
        long at = map_get(L, L->descs[i].name, strlen(L->descs[i].name));
        if (at >= 0) {
            free(rs->r[at].desc);
            rs->r[at].desc = xstrdup(L->descs[i].text);
        }
    }
    for (size_t i = 0; i < L->ntflags; i++) {
        long at = map_get(L, L->tflags[i].name, strlen(L->tflags[i].name));
        if (at < 0)
            continue;
        const char *f = L->tflags[i].flags;
        const char *mh = strstr(f, "maxhits=");
        struct sa_rule *r = &rs->r[at];
        if (!(L->score_set & 1) && has_word(f, "net") &&
            (r->type == RULE_EVAL || (r->type == RULE_UNSUPPORTED && r->why &&
                                      strncmp(r->why, "Perl test ", 10) == 0))) {
            /* SpamAssassin skips an eval test flagged net in a score set
             * without network tests (Check.pm): it reads 0 */
            rules_eval_free(r);
            r->type = RULE_EVAL;
            r->eval = -2;
            free(r->why);
            r->why = NULL;
        }
        rs->r[at].nosubject = strstr(f, "nosubject") != NULL;
        if (rs->r[at].type == RULE_EVAL)
            rules_eval_tflags(&rs->r[at], f);
        if (strstr(f, "multiple"))
            rs->r[at].maxhits = mh ? (unsigned)strtoul(mh + 8, NULL, 10) : 1000;
        if (!rs->r[at].scored && strstr(f, "nice"))
            rs->r[at].score = -1.0;         /* marks the default below as done */
    }
    for (size_t i = 0; i < rs->n; i++) {
        struct sa_rule *r = &rs->r[i];
        if (r->scored || r->score == -1.0)
            continue;
        /* SpamAssassin's defaults: 1.0 (-1.0 for nice rules, above), 0.01
         * for T_ test rules, 0 for __ sub-rules */
        r->score = strncmp(r->name, "__", 2) == 0 ? 0 : strncmp(r->name, "T_", 2) == 0 ? 0.01 : 1.0;
    }
    for (size_t i = 0; i < rs->n; i++) {
        bool replace = false;
        for (size_t k = 0; k < L->nreplace && !replace; k++)
            replace = strcmp(L->replace[k], rs->r[i].name) == 0;
        compile_rule(L, &rs->r[i], replace);
    }
    /* A meta over a rule that cannot run cannot run either: reading that
     * rule as 0 would make "!RULE" true on every message. Unless the rule
     * is scored 0 in this score set: SpamAssassin never runs it, so it
     * reads 0 there too. */
    for (bool changed = true; changed;) {
        changed = false;
        for (size_t i = 0; i < rs->n; i++) {
            struct sa_rule *r = &rs->r[i];
            if (r->type != RULE_META || r->meta == NULL)
                continue;
            const int *refs;
            size_t n = rexpr_refs(r->meta, &refs);
            for (size_t k = 0; k < n; k++)
                if (refs[k] >= 0 && rs->r[refs[k]].type == RULE_UNSUPPORTED &&
                    !(rs->r[refs[k]].scored && rs->r[refs[k]].score == 0)) {
                    char why[200];
                    snprintf(why, sizeof(why), "uses %.100s, which cannot run", rs->r[refs[k]].name);
                    rexpr_free(&r->meta);
                    unsupported(r, why);
                    changed = true;
                    break;
                }
        }
    }
    for (size_t i = 0; i < rs->n; i++)
        if (rs->r[i].score != 0)
            mark_needed(rs, i, 0);
    rs->meta_order = xcalloc(rs->n + 1, sizeof(size_t));
    unsigned char *state = xcalloc(rs->n + 1, 1);
    for (size_t i = 0; i < rs->n; i++) {
        struct sa_rule *r = &rs->r[i];
        if (r->type == RULE_META && r->meta && r->needed)
            order_meta(rs, i, state, 0);
        rs->count[r->type]++;
        if (!r->needed && r->type != RULE_UNSUPPORTED)
            rs->disabled++;
    }
    free(state);
    number_requests(rs);
    const struct rexpr **me = xcalloc(rs->nmeta_order + 1, sizeof(*me));
    for (size_t k = 0; k < rs->nmeta_order; k++)
        me[k] = rs->r[rs->meta_order[k]].meta;
    rs->meta_set = rexpr_set_new(me, rs->meta_order, rs->nmeta_order);
    free(me);
}

/* The rules a message runs, listed once, after the prefilter has marked
 * its rules: walking every rule for its flags twice a message cost more
 * than some of the rules. */
static void
list_runs(struct ruleset *rs)
{
    rs->early = xcalloc(rs->n + 1, sizeof(*rs->early));
    rs->run = xcalloc(rs->n + 1, sizeof(*rs->run));
    for (size_t i = 0; i < rs->n; i++) {
        const struct sa_rule *r = &rs->r[i];
        if (!r->needed || r->type == RULE_META || r->type == RULE_UNSUPPORTED)
            continue;
        if (rules_eval_early(r))
            rs->early[rs->nearly++] = i;
        else
            rs->run[rs->nrun++] = (struct rule_run){ i, r->prefiltered ? (int)r->type : -1,
                                                     r->type == RULE_HEADER ? rules_absent_hits(r)
                                                                            : 0 };
    }
}

static void
loader_free(struct loader *L)
{
    for (size_t i = 0; i < L->nscores; i++)
        free(L->scores[i].name);
    for (size_t i = 0; i < L->ndescs; i++) {
        free(L->descs[i].name);
        free(L->descs[i].text);
    }
    for (size_t i = 0; i < L->ntflags; i++) {
        free(L->tflags[i].name);
        free(L->tflags[i].flags);
    }
    for (size_t i = 0; i < L->nreplace; i++)
        free(L->replace[i]);
    for (size_t i = 0; i < L->ntags; i++)
        free(L->tags[i].value);
    for (size_t i = 0; i < L->nplugins; i++)
        free(L->plugins[i]);
    free(L->plugins);
    free(L->scores);
    free(L->descs);
    free(L->tflags);
    free(L->replace);
    free(L->map);
}

struct ruleset *
ruleset_load(const char *paths, unsigned score_set, const char *cache_dir, char *err,
             size_t errsize)
{
    struct loader L = { 0 };
    L.rs = xcalloc(1, sizeof(*L.rs));
    L.score_set = score_set < 4 ? score_set : 0;
    char *list = xstrdup(paths ? paths : "");
    char *save = NULL;
    int unreadable = 0;
    char first_bad[300] = "";
    /* as SpamAssassin reads a config directory's *.pre before its *.cf:
     * the plugins they load decide the ifplugin and if plugin() blocks */
    char *pres = xstrdup(list);
    for (char *pat = strtok_r(pres, " ,", &save); pat; pat = strtok_r(NULL, " ,", &save)) {
        char dir[1024];
        const char *slash = strrchr(pat, '/');
        if (slash == NULL || strpbrk(pat, "*?[") == NULL)
            continue;           /* a file named as such: no directory of its own to read */
        snprintf(dir, sizeof(dir), "%.*s/*.pre", (int)(slash - pat), pat);
        glob_t g;
        if (glob(dir, 0, NULL, &g) != 0)
            continue;
        for (size_t i = 0; i < g.gl_pathc; i++) {
            char why[300];
            if (read_file(&L, g.gl_pathv[i], why, sizeof(why)) < 0 && unreadable++ == 0)
                str_copy(first_bad, why, sizeof(first_bad));
        }
        globfree(&g);
    }
    free(pres);
    save = NULL;
    L.rs->nfiles = 0;
    for (char *pat = strtok_r(list, " ,", &save); pat; pat = strtok_r(NULL, " ,", &save)) {
        glob_t g;
        int gr = glob(pat, 0, NULL, &g);
        if (gr != 0) {
            /* a pattern may match nothing (no local rules yet); a file named
             * as such must be there */
            if (gr == GLOB_NOMATCH && strpbrk(pat, "*?[") != NULL)
                continue;
            unreadable++;
            if (!first_bad[0])
                snprintf(first_bad, sizeof(first_bad), "%s: no such file", pat);
            continue;
        }
        for (size_t i = 0; i < g.gl_pathc; i++) {
            char why[300];
            if (read_file(&L, g.gl_pathv[i], why, sizeof(why)) < 0 && unreadable++ == 0)
                str_copy(first_bad, why, sizeof(first_bad));
        }
        globfree(&g);
    }
    free(list);
    if (L.rs->nfiles == 0 || unreadable) {
        snprintf(err, errsize, "%s", first_bad[0] ? first_bad : "no rule files named");
        loader_free(&L);
        ruleset_free(&L.rs);
        return NULL;
    }
    finish(&L);
    rules_uri_setup(L.rs);
    rules_freemail_setup(L.rs);
    ruleset_prefilter(L.rs, cache_dir);
    rules_form_build(L.rs, cache_dir);
    list_runs(L.rs);
    loader_free(&L);
    return L.rs;
}

void
ruleset_free(struct ruleset **rsp)
{
    struct ruleset *rs = *rsp;
    if (rs == NULL)
        return;
    for (size_t i = 0; i < rs->n; i++) {
        rule_clear(&rs->r[i]);
        free(rs->r[i].name);
        free(rs->r[i].desc);
    }
    ruleset_prefilter_free(rs);
    rules_form_free(rs);
    for (size_t i = 0; i < rs->ntlds; i++)
        free(rs->tlds[i]);
    free(rs->tlds);
    for (size_t i = 0; i < rs->ntld2; i++)
        free(rs->tld2[i]);
    free(rs->tld2);
    for (size_t i = 0; i < rs->ntld3; i++)
        free(rs->tld3[i]);
    free(rs->tld3);
    rules_re_free(rs->uri_re);
    for (size_t i = 0; i < rs->nfm_domains; i++)
        free(rs->fm_domains[i]);
    free(rs->fm_domains);
    rules_re_free(rs->fm_wild_re);
    rules_re_free(rs->email_re);
    rules_re_free(rs->email_strip_re);
    for (size_t i = 0; i < rs->nredirectors; i++)
        rules_re_free(rs->redirectors[i]);
    free(rs->redirectors);
    free(rs->r);
    free(rs->meta_order);
    rexpr_set_free(&rs->meta_set);
    free(rs->early);
    free(rs->run);
    free(rs);
    *rsp = NULL;
}
