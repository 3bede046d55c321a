/*
 * sieve_run.c -- a checked Sieve tree (sieve_parse.c) run against one
 * message: the tests (address, header, envelope, exists, size, allof,
 * anyof, not, true, false, hasflag, body, string) with :is, :contains and
 * :matches under i;ascii-casemap or i;octet, and the actions collected into
 * a mailstore_sieve_result (folders with their flags and keywords,
 * redirects, a vacation) with RFC 5228's implicit keep. Variables (RFC
 * 5229: set and its modifiers, ${name} and the match variables ${0} to
 * ${9} of the last :matches that matched) are kept per script, but for
 * those a script declares global (RFC 6609 3.3) or names as
 * ${global.name} (3.5), kept once for all scripts of the run; include
 * (RFC 6609) runs another script of the mailbox or of its domain, got
 * through the input's load function, within depth and count bounds.
 * Pure but for that: the caller does what the result says. Matching work
 * (body and expansions too) is counted against a budget, so no script and
 * message together can take long; running out is a runtime error, which
 * the caller turns into a keep in INBOX. The header test sees a field
 * with RFC 2047 encoded words decoded (GMime), as RFC 5228 2.7.2 asks;
 * the body test the parts decoded (GMime), at most BODY_MAX bytes.
 *
 * One room though long: the tests, actions, variables and include share
 * one interpreter state and one work budget.
 */
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>
#include <gmime/gmime.h>
#include "../common/mail.h"
#include "sieve_private.h"

#define MATCH_BUDGET 20000000u  /* compare steps for one message */
#define REDIRECT_MAX 4          /* redirects one run may ask for */
#define FLAGS_MAX 32            /* flags in the imap4flags variable */
#define ADDRS_MAX 256           /* addresses taken from one header field */
#define FIELD_MAX (64u << 10)   /* bytes of one header field's value looked at */
#define BODY_MAX (1u << 20)     /* bytes of a body (decoded parts, or raw) the body test sees */
#define BODY_PARTS_MAX 64       /* MIME parts it looks at */
#define BODY_DEPTH_MAX 8        /* multiparts and messages nested */
#define VARS_MAX 128            /* variables of one script */
#define VAR_MAX 4096            /* bytes of a variable's value (RFC 5229 says at least 4000) */
#define MATCH_VARS 10           /* ${0} to ${9} */
#define EXPAND_MAX SIEVE_STRING_MAX     /* bytes of a string once expanded */
#define NAME_REF_MAX (SIEVE_GLOBAL_NS_LEN + SIEVE_VAR_NAME_MAX)   /* ${global.name} */
#define INCLUDE_DEPTH_MAX 8     /* scripts including scripts */
#define INCLUDES_MAX 32         /* include commands run by one delivery */
#define INCLUDE_SCRIPTS_MAX 16  /* distinct scripts loaded by one delivery */

struct var {
    char name[SIEVE_VAR_NAME_MAX + 1];      /* lower case */
    char *val;
    size_t len;
};

/* One script running: its requires, its variables. */
struct frame {
    unsigned ext;
    const struct sv_list *globals;      /* the names it declared global */
    struct var vars[VARS_MAX];
    size_t nvars;
    char *mv[MATCH_VARS];
    size_t mvlen[MATCH_VARS];
    bool global;
    const char *name;
};

struct loaded {
    bool global, ran;
    char *name;
    struct sieve_script *s;
};

struct bpart {
    char *type;                 /* "text/plain", lower case */
    char *data;
    size_t len;
};

struct run {
    const struct sieve_input *in;
    struct mailstore_sieve_result *res;
    const char *hdr, *hend;     /* the header */
    uint64_t budget;
    char *err;
    size_t errsize;
    bool failed, stopped, returned, implicit_keep;
    struct sv_list flags;       /* imap4flags' internal variable */
    struct var gvars[VARS_MAX]; /* the global variables, shared by every script (RFC 6609) */
    size_t ngvars;
    struct frame *fr;           /* the script running now */
    struct frame *chain[INCLUDE_DEPTH_MAX + 1];
    size_t depth;
    struct loaded loaded[INCLUDE_SCRIPTS_MAX];
    size_t nloaded;
    unsigned includes;
    struct bpart *parts;        /* the body's parts, decoded once */
    size_t nparts;
    bool parts_done;
};

static void __attribute__((format(printf, 3, 4)))
rfailf(struct run *r, int line, const char *fmt, ...)
{
    if (!r->failed) {
        char why[300];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, sizeof(why), fmt, ap);
        va_end(ap);
        if (r->depth > 0)
            snprintf(r->err, r->errsize, "line %d of %s script \"%s\": %s", line,
                     r->fr->global ? "global" : "included", r->fr->name, why);
        else
            snprintf(r->err, r->errsize, "line %d: %s", line, why);
    }
    r->failed = true;
}

static void
rfail(struct run *r, int line, const char *why)
{
    rfailf(r, line, "%s", why);
}

/* ---------------------------------------------------------- matching */

int
sieve_wildmatch_caps(const char *pat, size_t plen, const char *val, size_t vlen, bool fold,
                     uint64_t *budget, size_t *caps, size_t ncaps)
{
    /* the greedy match with one remembered star: when a later literal part
     * fails, the last star takes one more character. Each star makes the
     * earlier ones final, so the work is at most plen * vlen steps, and
     * each star takes as little as it can. wc: wildcards before p. */
    size_t p = 0, v = 0, star_p = (size_t)-1, star_v = 0, wc = 0, star_wc = 0;
    while (v < vlen) {
        if (*budget == 0)
            return -1;
        (*budget)--;
        if (p < plen && pat[p] == '*') {
            if (2 * wc + 1 < ncaps)
                caps[2 * wc] = caps[2 * wc + 1] = v;
            star_wc = wc++;
            star_p = ++p;
            star_v = v;
            continue;
        }
        if (p < plen) {
            bool esc = pat[p] == '\\' && p + 1 < plen;
            char pc = esc ? pat[p + 1] : pat[p];
            bool one = !esc && pc == '?';
            char vc = val[v];
            if (one || pc == vc ||
                (fold && tolower((unsigned char)pc) == tolower((unsigned char)vc))) {
                /* '?' is one character: a UTF-8 sequence's continuation bytes go with it */
                if (one && 2 * wc + 1 < ncaps)
                    caps[2 * wc] = v;
                p += esc ? 2 : 1;
                v++;
                if (one) {
                    while (v < vlen && ((unsigned char)val[v] & 0xc0) == 0x80)
                        v++;
                    if (2 * wc + 1 < ncaps)
                        caps[2 * wc + 1] = v;
                    wc++;
                }
                continue;
            }
        }
        if (star_p == (size_t)-1)
            return 0;
        p = star_p;
        v = ++star_v;
        wc = star_wc + 1;
        if (2 * star_wc + 1 < ncaps)
            caps[2 * star_wc + 1] = v;
    }
    while (p < plen && pat[p] == '*') {
        if (2 * wc + 1 < ncaps)
            caps[2 * wc] = caps[2 * wc + 1] = vlen;
        wc++;
        p++;
    }
    return p == plen;
}

int
sieve_wildmatch(const char *pat, size_t plen, const char *val, size_t vlen, bool fold,
                uint64_t *budget)
{
    return sieve_wildmatch_caps(pat, plen, val, vlen, fold, budget, NULL, 0);
}

/* --------------------------------------------------------- variables */

/* Where the variable n (nl bytes) lives for the running script: the
 * shared global set when it is ${global.name} (with "include"; *n and *nl
 * then name it without the prefix) or a name the script declared global,
 * else the script's own. */
static void
var_space(struct run *r, const char **n, size_t *nl, struct var **vars_r, size_t **nvars_r)
{
    struct frame *f = r->fr;
    bool global = false;
    if ((f->ext & EXT_INCLUDE) && *nl > SIEVE_GLOBAL_NS_LEN &&
        strncasecmp(*n, SIEVE_GLOBAL_NS, SIEVE_GLOBAL_NS_LEN) == 0) {
        *n += SIEVE_GLOBAL_NS_LEN;
        *nl -= SIEVE_GLOBAL_NS_LEN;
        global = true;
    }
    for (size_t i = 0; !global && f->globals && i < f->globals->n; i++)
        global = strlen(f->globals->v[i]) == *nl && strncasecmp(f->globals->v[i], *n, *nl) == 0;
    *vars_r = global ? r->gvars : f->vars;
    *nvars_r = global ? &r->ngvars : &f->nvars;
}

/* A variable's value (RFC 5229: names ignore case; ${0}..${9} are the
 * match variables, larger numbers are unset); false for a reference it
 * does not know (a namespace such as ${env.x}), which stays as written. */
static bool
var_lookup(struct run *r, const char *n, size_t nl, const char **v_r, size_t *vl_r)
{
    *v_r = "";
    *vl_r = 0;
    const struct frame *f = r->fr;
    if (isdigit((unsigned char)n[0])) {
        size_t num = 0;
        for (size_t i = 0; i < nl; i++) {
            if (!isdigit((unsigned char)n[i]))
                return false;
            num = num < 1000 ? num * 10 + (size_t)(n[i] - '0') : num;
        }
        if (num < MATCH_VARS && f->mv[num]) {
            *v_r = f->mv[num];
            *vl_r = f->mvlen[num];
        }
        return true;
    }
    struct var *vars;
    size_t *nvars;
    var_space(r, &n, &nl, &vars, &nvars);
    if (nl == 0 || nl > SIEVE_VAR_NAME_MAX)
        return false;
    for (size_t i = 0; i < nl; i++)
        if (!isalnum((unsigned char)n[i]) && n[i] != '_')
            return false;
    for (size_t i = 0; i < *nvars; i++)
        if (strlen(vars[i].name) == nl && strncasecmp(vars[i].name, n, nl) == 0) {
            *v_r = vars[i].val;
            *vl_r = vars[i].len;
            break;
        }
    return true;
}

/* s with each ${...} it knows replaced, when the running script requires
 * "variables", at most EXPAND_MAX bytes: s itself, or a new string in
 * *own. NULL: the budget is spent (r failed). */
static const char *
expand(struct run *r, int line, const char *s, size_t *len_r, char **own)
{
    *own = NULL;
    if (!(r->fr->ext & EXT_VARIABLES) || strstr(s, "${") == NULL) {
        *len_r = strlen(s);
        return s;
    }
    size_t cap = 256, o = 0;
    char *out = xmalloc(cap);
    for (const char *p = s; *p;) {
        const char *add = p;
        size_t an = 1;
        if (p[0] == '$' && p[1] == '{') {
            size_t nl = 0;
            while (nl <= NAME_REF_MAX && p[2 + nl] && p[2 + nl] != '}')
                nl++;
            const char *v;
            size_t vl;
            if (p[2 + nl] == '}' && nl > 0 && nl <= NAME_REF_MAX &&
                var_lookup(r, p + 2, nl, &v, &vl)) {
                add = v;
                an = vl;
                p += nl + 3;
            } else {
                p++;
            }
        } else {
            p++;
        }
        if (r->budget < an + 1) {
            free(out);
            rfail(r, line, "expanding variables took too long");
            return NULL;
        }
        r->budget -= an + 1;
        if (o + an > EXPAND_MAX)
            an = EXPAND_MAX - o;
        if (o + an + 1 > cap) {
            while (o + an + 1 > cap)
                cap *= 2;
            out = xrealloc(out, cap);
        }
        memcpy(out + o, add, an);
        o += an;
    }
    out[o] = '\0';
    *len_r = o;
    *own = out;
    return out;
}

/* A value kept at most VAR_MAX bytes, not cut inside a UTF-8 character. */
static size_t
var_cut(const char *v, size_t len)
{
    if (len <= VAR_MAX)
        return len;
    size_t n = VAR_MAX;
    while (n > 0 && ((unsigned char)v[n] & 0xc0) == 0x80)
        n--;
    return n;
}

static void
var_set(struct run *r, int line, const char *name, const char *v, size_t len)
{
    struct var *vars, *x = NULL;
    size_t *nvars, nl = strlen(name);
    var_space(r, &name, &nl, &vars, &nvars);
    for (size_t i = 0; i < *nvars && x == NULL; i++)
        if (strcasecmp(vars[i].name, name) == 0)
            x = &vars[i];
    if (x == NULL) {
        if (*nvars >= VARS_MAX) {
            rfailf(r, line, "more than %d %svariables", VARS_MAX,
                   vars == r->gvars ? "global " : "");
            return;
        }
        x = &vars[(*nvars)++];
        str_copy(x->name, name, sizeof(x->name));
        x->val = NULL;
    }
    len = var_cut(v, len);
    free(x->val);
    x->val = xstrndup(v, len);
    x->len = len;
}

/* After a :matches that matched: ${0} the value, ${1}.. what each
 * wildcard took (caps from sieve_wildmatch_caps), the rest unset. */
static void
set_match_vars(struct run *r, const char *key, size_t klen, const char *val, size_t vlen,
               const size_t *caps)
{
    struct frame *f = r->fr;
    size_t nwild = 0;
    for (size_t i = 0; i < klen; i++) {
        if (key[i] == '\\' && i + 1 < klen)
            i++;
        else if (key[i] == '*' || key[i] == '?')
            nwild++;
    }
    for (size_t k = 0; k < MATCH_VARS; k++) {
        free(f->mv[k]);
        f->mv[k] = NULL;
        f->mvlen[k] = 0;
        const char *s = NULL;
        size_t n = 0;
        if (k == 0) {
            s = val;
            n = vlen;
        } else if (k <= nwild) {
            s = val + caps[2 * (k - 1)];
            n = caps[2 * (k - 1) + 1] - caps[2 * (k - 1)];
        }
        if (s) {
            n = var_cut(s, n);
            f->mv[k] = xstrndup(s, n);
            f->mvlen[k] = n;
        }
    }
}

/* set's modifiers, the higher precedence first (RFC 5229 4.1). */
static char *
set_modify(unsigned mods, const char *v, size_t len, size_t *len_r)
{
    char *o = xmalloc(len * 2 + 32);
    memcpy(o, v, len);
    for (size_t i = 0; i < len; i++)
        if (mods & (SV_LOWER | SV_UPPER))
            o[i] = (char)((mods & SV_LOWER) ? tolower((unsigned char)o[i]) : toupper((unsigned char)o[i]));
    if (len && (mods & (SV_LOWERFIRST | SV_UPPERFIRST)))
        o[0] = (char)((mods & SV_LOWERFIRST) ? tolower((unsigned char)o[0]) : toupper((unsigned char)o[0]));
    if (mods & SV_QUOTEWILDCARD) {
        char *q = xmalloc(len * 2 + 32);
        size_t n = 0;
        for (size_t i = 0; i < len; i++) {
            if (o[i] == '*' || o[i] == '?' || o[i] == '\\')
                q[n++] = '\\';
            q[n++] = o[i];
        }
        free(o);
        o = q;
        len = n;
    }
    if (mods & SV_LENGTH) {
        size_t chars = 0;
        for (size_t i = 0; i < len; i++)
            chars += ((unsigned char)o[i] & 0xc0) != 0x80;
        len = (size_t)snprintf(o, 32, "%zu", chars);
    }
    o[len] = '\0';
    *len_r = len;
    return o;
}

/* Each string of a list expanded, into out (to free with list_clear). */
static bool
list_expand(struct run *r, int line, const struct sv_list *in, struct sv_list *out)
{
    out->v = xcalloc(in->n ? in->n : 1, sizeof(char *));
    out->n = 0;
    for (size_t i = 0; i < in->n; i++) {
        char *own;
        size_t l;
        const char *e = expand(r, line, in->v[i], &l, &own);
        if (e == NULL)
            return false;
        out->v[out->n++] = own ? own : xstrdup(e);
    }
    return true;
}

static void
list_clear(struct sv_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

static bool
eq(const char *a, size_t an, const char *b, size_t bn, bool fold)
{
    if (an != bn)
        return false;
    return fold ? strncasecmp(a, b, an) == 0 : memcmp(a, b, an) == 0;
}

/* One value against one key; -1 when the budget is spent. */
static int
match_one(struct run *r, const struct sieve_node *nd, const char *val, size_t vlen,
          const char *key, size_t klen)
{
    bool fold = nd->cmp == SC_CASEMAP;
    switch (nd->match) {
    case SM_IS:
        return eq(val, vlen, key, klen, fold);
    case SM_CONTAINS:
        if (klen == 0)
            return 1;
        for (size_t i = 0; i + klen <= vlen; i++) {
            if (r->budget < klen)
                return -1;
            r->budget -= klen;
            if (eq(val + i, klen, key, klen, fold))
                return 1;
        }
        return 0;
    case SM_MATCHES:
        if (r->fr->ext & EXT_VARIABLES) {
            size_t caps[2 * (MATCH_VARS - 1)];
            int m = sieve_wildmatch_caps(key, klen, val, vlen, fold, &r->budget, caps,
                                         2 * (MATCH_VARS - 1));
            if (m == 1)
                set_match_vars(r, key, klen, val, vlen, caps);
            return m;
        }
        return sieve_wildmatch(key, klen, val, vlen, fold, &r->budget);
    }
    return 0;
}

/* Any key matches the value: 1, 0, or -1 (budget spent: r failed). */
static int
match_keys(struct run *r, const struct sieve_node *nd, const char *val, size_t vlen)
{
    for (size_t k = 0; k < nd->keys.n; k++) {
        char *own;
        size_t klen;
        const char *key = expand(r, nd->line, nd->keys.v[k], &klen, &own);
        if (key == NULL)
            return -1;
        int m = match_one(r, nd, val, vlen, key, klen);
        free(own);
        if (m < 0) {
            rfail(r, nd->line, "matching took too long");
            return -1;
        }
        if (m)
            return 1;
    }
    return 0;
}

/* ----------------------------------------------------------- headers */

/* A field's value unfolded (CR and LF out, the ends trimmed) into a new
 * string of at most FIELD_MAX bytes. */
static char *
unfold(const struct rfc5322_field *f, size_t *len_r)
{
    size_t n = f->vlen < FIELD_MAX ? f->vlen : FIELD_MAX;
    char *o = xmalloc(n + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (f->val[i] != '\r' && f->val[i] != '\n')
            o[k++] = f->val[i];
    size_t s = 0;
    while (s < k && (o[s] == ' ' || o[s] == '\t'))
        s++;
    while (k > s && (o[k - 1] == ' ' || o[k - 1] == '\t'))
        k--;
    memmove(o, o + s, k - s);
    k -= s;
    o[k] = '\0';
    *len_r = k;
    return o;
}

static bool
name_in(const struct sv_list *names, const struct rfc5322_field *f)
{
    for (size_t i = 0; i < names->n; i++)
        if (strlen(names->v[i]) == f->nlen && strncasecmp(names->v[i], f->name, f->nlen) == 0)
            return true;
    return false;
}

/* The addresses in a header field's value: what is in <...>, or a bare
 * addr-spec, with comments, display names and groups left out. Each is
 * written NUL-terminated into buf; their starts into v. */
static size_t
split_addresses(char *buf, const char *val, size_t vlen, char **v, size_t max)
{
    size_t n = 0, o = 0;
    size_t i = 0;
    while (i <= vlen && n < max) {
        /* one element, up to a ',' outside quotes, comments and <> */
        char elem[1024];
        size_t e = 0;
        int paren = 0;
        bool quote = false, angle = false;
        const char *abeg = NULL, *aend = NULL;
        for (; i < vlen; i++) {
            char c = val[i];
            if (quote) {
                if (c == '\\' && i + 1 < vlen)
                    i++;
                else if (c == '"')
                    quote = false;
                continue;
            }
            if (paren) {
                if (c == '\\' && i + 1 < vlen)
                    i++;
                else if (c == '(')
                    paren++;
                else if (c == ')')
                    paren--;
                continue;
            }
            if (c == '"') {
                quote = true;
            } else if (c == '(') {
                paren = 1;
            } else if (c == '<' && !angle) {
                angle = true;
                abeg = val + i + 1;
            } else if (c == '>' && angle) {
                angle = false;
                aend = val + i;
            } else if ((c == ',' || c == ';') && !angle) {
                break;
            } else if (c == ':' && !angle) {
                e = 0;              /* a group's name */
            } else if (!angle && c != ' ' && c != '\t' && e + 1 < sizeof(elem)) {
                elem[e++] = c;
            }
        }
        i++;
        const char *a;
        size_t alen;
        if (abeg && aend && aend >= abeg) {
            a = abeg;
            alen = (size_t)(aend - abeg);
            /* a source route: @a,@b:user@host */
            const char *colon = alen && a[0] == '@' ? memchr(a, ':', alen) : NULL;
            if (colon) {
                alen -= (size_t)(colon + 1 - a);
                a = colon + 1;
            }
        } else {
            a = elem;
            alen = e;
        }
        if (alen == 0)
            continue;
        v[n++] = buf + o;
        memcpy(buf + o, a, alen);
        o += alen;
        buf[o++] = '\0';
    }
    return n;
}

/* The part of an address the test names. */
static void
addr_part(enum sieve_part part, const char *a, const char **p_r, size_t *n_r)
{
    const char *at = strrchr(a, '@');
    if (part == SP_LOCAL) {
        *p_r = a;
        *n_r = at ? (size_t)(at - a) : strlen(a);
    } else if (part == SP_DOMAIN) {
        *p_r = at ? at + 1 : "";
        *n_r = strlen(*p_r);
    } else {
        *p_r = a;
        *n_r = strlen(a);
    }
}

static int
test_addresses(struct run *r, const struct sieve_node *nd, const char *val, size_t vlen)
{
    char *buf = xmalloc(vlen + ADDRS_MAX + 1);
    char *v[ADDRS_MAX];
    size_t n = split_addresses(buf, val, vlen, v, ADDRS_MAX);
    int m = 0;
    for (size_t i = 0; i < n && m == 0; i++) {
        const char *p;
        size_t pn;
        addr_part(nd->part, v[i], &p, &pn);
        m = match_keys(r, nd, p, pn);
    }
    free(buf);
    return m;
}

static pthread_once_t gmime_once = PTHREAD_ONCE_INIT;

static void
gmime_init(void)
{
    g_mime_init();
}

/* header's value: encoded words decoded into UTF-8. */
static int
match_header(struct run *r, const struct sieve_node *nd, const char *val, size_t vlen)
{
    if (memmem(val, vlen, "=?", 2) == NULL)
        return match_keys(r, nd, val, vlen);
    pthread_once(&gmime_once, gmime_init);
    char *dec = g_mime_utils_header_decode_text(NULL, val);
    if (dec == NULL)
        return match_keys(r, nd, val, vlen);
    size_t dl = strnlen(dec, FIELD_MAX * 4);
    int m = match_keys(r, nd, dec, dl);
    g_free(dec);
    return m;
}

/* address and header: each named field of the header. */
static int
test_fields(struct run *r, const struct sieve_node *nd)
{
    struct rfc5322_field f;
    for (const char *q = r->hdr; (q = rfc5322_next(q, r->hend, &f)) != NULL;) {
        if (!name_in(&nd->names, &f))
            continue;
        size_t vlen;
        char *val = unfold(&f, &vlen);
        int m = nd->op == SO_ADDRESS ? test_addresses(r, nd, val, vlen) : match_header(r, nd, val, vlen);
        free(val);
        if (m != 0)
            return m;
    }
    return 0;
}

static int
test_envelope(struct run *r, const struct sieve_node *nd)
{
    for (size_t i = 0; i < nd->names.n; i++) {
        bool from = strcasecmp(nd->names.v[i], "from") == 0;
        const char *a = from ? r->in->env_from : r->in->env_to;
        const char *p;
        size_t pn;
        /* the null sender is "" whatever the part */
        if (a[0] == '\0') {
            p = "";
            pn = 0;
        } else {
            addr_part(nd->part, a, &p, &pn);
        }
        int m = match_keys(r, nd, p, pn);
        if (m != 0)
            return m;
    }
    return 0;
}

static int
test_exists(struct run *r, const struct sieve_node *nd)
{
    for (size_t i = 0; i < nd->names.n; i++) {
        bool found = false;
        struct rfc5322_field f;
        for (const char *q = r->hdr; !found && (q = rfc5322_next(q, r->hend, &f)) != NULL;)
            found = strlen(nd->names.v[i]) == f.nlen &&
                    strncasecmp(nd->names.v[i], f.name, f.nlen) == 0;
        if (!found)
            return 0;
    }
    return 1;
}

/* -------------------------------------------------------------- body */

#define BODY_PARSE_MAX (4u * BODY_MAX)  /* bytes of a message GMime parses for body */

/* Up to room bytes of a part's content, the transfer encoding undone and
 * a text part's charset made UTF-8. */
static char *
part_content(GMimePart *part, bool text, size_t room, size_t *len_r)
{
    *len_r = 0;
    GMimeDataWrapper *w = g_mime_part_get_content(part);
    if (w == NULL)
        return NULL;
    GMimeStream *raw = g_mime_data_wrapper_get_stream(w);
    if (raw == NULL)
        return NULL;
    g_mime_stream_reset(raw);
    GMimeStream *ds = g_mime_stream_filter_new(raw);
    GMimeFilter *dec = g_mime_filter_basic_new(g_mime_data_wrapper_get_encoding(w), FALSE);
    g_mime_stream_filter_add(GMIME_STREAM_FILTER(ds), dec);
    g_object_unref(dec);
    char *buf = xmalloc(room + 1);
    size_t n = 0;
    while (n < room) {
        ssize_t k = g_mime_stream_read(ds, buf + n, room - n);
        if (k <= 0)
            break;
        n += (size_t)k;
    }
    g_object_unref(ds);
    const char *cs = text ? g_mime_object_get_content_type_parameter(GMIME_OBJECT(part), "charset")
                          : NULL;
    if (cs && strcasecmp(cs, "utf-8") && strcasecmp(cs, "us-ascii")) {
        gsize wrote = 0;
        gchar *u = g_convert_with_fallback(buf, (gssize)n, "UTF-8", cs, "?", NULL, &wrote, NULL);
        if (u) {
            free(buf);
            n = wrote < room ? wrote : room;
            buf = xmalloc(n + 1);
            memcpy(buf, u, n);
            g_free(u);
        }
    }
    buf[n] = '\0';
    *len_r = n;
    return buf;
}

static void
body_walk(struct run *r, GMimeObject *o, int depth, size_t *used)
{
    if (o == NULL || depth > BODY_DEPTH_MAX || r->nparts >= BODY_PARTS_MAX || *used >= BODY_MAX)
        return;
    if (GMIME_IS_MULTIPART(o)) {
        GMimeMultipart *mp = GMIME_MULTIPART(o);
        int n = g_mime_multipart_get_count(mp);
        for (int i = 0; i < n; i++)
            body_walk(r, g_mime_multipart_get_part(mp, i), depth + 1, used);
        return;
    }
    if (GMIME_IS_MESSAGE_PART(o)) {
        GMimeMessage *m = g_mime_message_part_get_message(GMIME_MESSAGE_PART(o));
        if (m)
            body_walk(r, g_mime_message_get_mime_part(m), depth + 1, used);
        return;
    }
    if (!GMIME_IS_PART(o))
        return;
    GMimeContentType *ct = g_mime_object_get_content_type(o);
    const char *ty = ct ? g_mime_content_type_get_media_type(ct) : NULL;
    const char *sub = ct ? g_mime_content_type_get_media_subtype(ct) : NULL;
    char type[160];
    snprintf(type, sizeof(type), "%.70s/%.70s", ty ? ty : "text", sub ? sub : "plain");
    for (char *q = type; *q; q++)
        *q = (char)tolower((unsigned char)*q);
    size_t len;
    char *data = part_content(GMIME_PART(o), strncmp(type, "text/", 5) == 0, BODY_MAX - *used, &len);
    if (data == NULL)
        return;
    *used += len;
    r->parts = xrealloc(r->parts, (r->nparts + 1) * sizeof(*r->parts));
    r->parts[r->nparts++] = (struct bpart){ xstrdup(type), data, len };
}

/* The message's leaf parts, decoded, once per run. */
static void
body_parts(struct run *r)
{
    if (r->parts_done)
        return;
    r->parts_done = true;
    pthread_once(&gmime_once, gmime_init);
    size_t n = r->in->len < BODY_PARSE_MAX ? r->in->len : BODY_PARSE_MAX;
    GMimeStream *st = g_mime_stream_mem_new_with_buffer(r->in->data, n);
    GMimeParser *ps = g_mime_parser_new_with_stream(st);
    GMimeMessage *m = g_mime_parser_construct_message(ps, NULL);
    g_object_unref(ps);
    g_object_unref(st);
    if (m == NULL)
        return;
    size_t used = 0;
    body_walk(r, g_mime_message_get_mime_part(m), 0, &used);
    g_object_unref(m);
}

/* :content's types (RFC 5173 5.2): "" any part, "text" any text/
 * subtype, "text/html" that one. */
static bool
type_match(const struct sv_list *types, const char *type)
{
    for (size_t i = 0; i < types->n; i++) {
        const char *t = types->v[i];
        size_t n = strlen(t);
        if (n == 0 || strcasecmp(t, type) == 0 ||
            (!strchr(t, '/') && strncasecmp(t, type, n) == 0 && type[n] == '/'))
            return true;
    }
    return false;
}

static int
test_body(struct run *r, const struct sieve_node *nd)
{
    if (nd->body == SB_RAW) {
        const char *b = r->hend, *end = r->in->data + r->in->len;
        if (b < end && *b == '\r')
            b++;
        if (b < end && *b == '\n')
            b++;
        size_t n = (size_t)(end - b);
        return match_keys(r, nd, b, n < BODY_MAX ? n : BODY_MAX);
    }
    body_parts(r);
    static char text_type[] = "text";
    static char *text_types[] = { text_type };
    static const struct sv_list text = { text_types, 1 };
    for (size_t i = 0; i < r->nparts; i++) {
        if (!type_match(nd->body == SB_TEXT ? &text : &nd->names, r->parts[i].type))
            continue;
        int m = match_keys(r, nd, r->parts[i].data, r->parts[i].len);
        if (m != 0)
            return m;
    }
    return 0;
}

/* ------------------------------------------------------------- flags */

/* The flag's place in the list, or -1. */
static ssize_t
flag_find(const struct sv_list *l, const char *w, size_t wn)
{
    for (size_t i = 0; i < l->n; i++)
        if (strlen(l->v[i]) == wn && strncasecmp(l->v[i], w, wn) == 0)
            return (ssize_t)i;
    return -1;
}

/* Each space-separated flag of each string: added (or removed). */
static void
flags_change(struct run *r, struct sv_list *l, const struct sv_list *args, bool add)
{
    for (size_t i = 0; i < args->n; i++) {
        const char *p = args->v[i];
        while (*p) {
            while (*p == ' ')
                p++;
            const char *w = p;
            while (*p && *p != ' ')
                p++;
            size_t wn = (size_t)(p - w);
            if (wn == 0)
                continue;
            ssize_t at = flag_find(l, w, wn);
            if (!add && at >= 0) {
                free(l->v[at]);
                memmove(l->v + at, l->v + at + 1, (l->n - (size_t)at - 1) * sizeof(char *));
                l->n--;
            } else if (add && at < 0) {
                if (l->n >= FLAGS_MAX) {
                    rfail(r, 0, "too many flags");
                    return;
                }
                l->v = xrealloc(l->v, (l->n + 1) * sizeof(char *));
                l->v[l->n++] = xstrndup(w, wn);
            }
        }
    }
}

static void
flags_clear(struct sv_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    l->n = 0;
}

/* A keyword IMAP can carry: an atom (RFC 3501 flag-keyword), not too
 * long for the folder's keyword table. */
static bool
keyword_ok(const char *k)
{
    size_t n = strlen(k);
    if (n == 0 || n >= 128)
        return false;
    for (const char *p = k; *p; p++)
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f || strchr("(){%*\"\\]", *p))
            return false;
    return true;
}

/* The flags of a list as mailstore_deliver_flags takes them: the system
 * flags' Maildir letters in ASCII order, then the keywords after a space
 * ("FS $Junk $label1"); unknown system flags and names IMAP cannot carry
 * are left out (RFC 5232 lets them be ignored). */
static char *
flags_string(const struct sv_list *l)
{
    static const struct { const char *name; char letter; } map[] = {
        { "\\draft", 'D' }, { "\\flagged", 'F' }, { "\\answered", 'R' }, { "\\seen", 'S' },
        { "\\deleted", 'T' },
    };
    size_t cap = 16, o = 0;
    for (size_t i = 0; i < l->n; i++)
        cap += strlen(l->v[i]) + 1;
    char *out = xmalloc(cap);
    for (size_t m = 0; m < sizeof(map) / sizeof(map[0]); m++)
        for (size_t i = 0; i < l->n; i++)
            if (strcasecmp(l->v[i], map[m].name) == 0) {
                out[o++] = map[m].letter;
                break;
            }
    for (size_t i = 0; i < l->n; i++)
        if (keyword_ok(l->v[i])) {
            out[o++] = ' ';
            size_t n = strlen(l->v[i]);
            memcpy(out + o, l->v[i], n);
            o += n;
        }
    out[o] = '\0';
    return out;
}

/* ----------------------------------------------------------- actions */

static void
store_add(struct run *r, const char *folder, const struct sv_list *flags, bool create)
{
    struct mailstore_sieve_result *res = r->res;
    if (folder && (strcasecmp(folder, "INBOX") == 0))
        folder = NULL;
    for (size_t i = 0; i < res->nstore; i++) {
        const char *f = res->store[i].folder;
        if ((f == NULL && folder == NULL) || (f && folder && strcmp(f, folder) == 0)) {
            res->store[i].create |= create;
            return;     /* once into each folder */
        }
    }
    res->store = xrealloc(res->store, (res->nstore + 1) * sizeof(*res->store));
    struct mailstore_sieve_store *s = &res->store[res->nstore++];
    s->folder = folder ? xstrdup(folder) : NULL;
    s->create = create;
    s->flags = flags_string(flags);
}

/* The address of a redirect once expanded: local@domain, nothing else. */
static bool
address_ok(const char *ad)
{
    const char *at = strrchr(ad, '@');
    return at != NULL && at != ad && at[1] != '\0' && strlen(ad) <= 254 &&
           strpbrk(ad, " \t\r\n<>()[],;:\"\\") == NULL;
}

static void
redirect_add(struct run *r, const struct sieve_node *nd)
{
    struct mailstore_sieve_result *res = r->res;
    char *own;
    size_t al;
    const char *a = expand(r, nd->line, nd->keys.v[0], &al, &own);
    if (a == NULL)
        return;
    if (!address_ok(a)) {
        rfailf(r, nd->line, "redirect to \"%.80s\": not an address", a);
        free(own);
        return;
    }
    for (size_t i = 0; i < res->nredirect; i++)
        if (strcasecmp(res->redirect[i], a) == 0) {
            free(own);
            return;
        }
    if (res->nredirect >= REDIRECT_MAX) {
        rfail(r, nd->line, "more than 4 redirects");
        free(own);
        return;
    }
    res->redirect = xrealloc(res->redirect, (res->nredirect + 1) * sizeof(char *));
    res->redirect[res->nredirect++] = own ? own : xstrdup(a);
}

/* A string of the script expanded into a new one (NULL stays NULL). */
static char *
expand_dup(struct run *r, int line, const char *s)
{
    if (s == NULL)
        return NULL;
    char *own;
    size_t n;
    const char *e = expand(r, line, s, &n, &own);
    if (e == NULL)
        return xstrdup("");
    return own ? own : xstrdup(e);
}

static void
vacation_add(struct run *r, const struct sieve_node *nd)
{
    if (r->res->vacation) {
        rfail(r, nd->line, "vacation twice");
        return;
    }
    struct mailstore_sieve_vacation *v = xcalloc(1, sizeof(*v));
    v->subject = expand_dup(r, nd->line, nd->subject);
    v->from = expand_dup(r, nd->line, nd->from);
    v->reason = expand_dup(r, nd->line, nd->reason);
    v->handle = expand_dup(r, nd->line, nd->handle);
    v->days = (unsigned)nd->num;
    v->addresses = xcalloc(nd->keys.n ? nd->keys.n : 1, sizeof(char *));
    for (size_t i = 0; i < nd->keys.n; i++)
        v->addresses[i] = expand_dup(r, nd->line, nd->keys.v[i]);
    v->naddresses = nd->keys.n;
    r->res->vacation = v;
}

/* keep and fileinto: into the folder with :flags (its strings expanded
 * and split at spaces) or the imap4flags variable. */
static void
keep_into(struct run *r, const struct sieve_node *c, const char *folder)
{
    if (!c->has_flags) {
        store_add(r, folder, &r->flags, c->create);
        return;
    }
    struct sv_list ex, fl = { NULL, 0 };
    if (list_expand(r, c->line, &c->flags, &ex)) {
        flags_change(r, &fl, &ex, true);
        store_add(r, folder, &fl, c->create);
    }
    list_clear(&ex);
    list_clear(&fl);
}

static void
var_command(struct run *r, const struct sieve_node *c)
{
    char *own;
    size_t vl;
    const char *v = expand(r, c->line, c->keys.v[0], &vl, &own);
    if (v == NULL)
        return;
    char *m = set_modify(c->mods, v, vl, &vl);
    free(own);
    var_set(r, c->line, c->names.v[0], m, vl);
    free(m);
}

/* --------------------------------------------------------------- run */

static int
test(struct run *r, const struct sieve_node *nd)
{
    if (r->failed)
        return -1;
    switch (nd->op) {
    case SO_TRUE: return 1;
    case SO_FALSE: return 0;
    case SO_NOT: {
        int m = test(r, nd->kids[0]);
        return m < 0 ? -1 : !m;
    }
    case SO_ALLOF: case SO_ANYOF:
        for (size_t i = 0; i < nd->nkids; i++) {
            int m = test(r, nd->kids[i]);
            if (m < 0)
                return -1;
            if (nd->op == SO_ALLOF && !m)
                return 0;
            if (nd->op == SO_ANYOF && m)
                return 1;
        }
        return nd->op == SO_ALLOF;
    case SO_SIZE:
        return nd->over ? r->in->len > nd->num : r->in->len < nd->num;
    case SO_EXISTS:
        return test_exists(r, nd);
    case SO_ENVELOPE:
        return test_envelope(r, nd);
    case SO_ADDRESS: case SO_HEADER:
        return test_fields(r, nd);
    case SO_HASFLAG:
        for (size_t i = 0; i < r->flags.n; i++) {
            int m = match_keys(r, nd, r->flags.v[i], strlen(r->flags.v[i]));
            if (m != 0)
                return m;
        }
        return 0;
    case SO_BODY:
        return test_body(r, nd);
    case SO_STRING:
        for (size_t i = 0; i < nd->names.n; i++) {
            char *own;
            size_t n;
            const char *src = expand(r, nd->line, nd->names.v[i], &n, &own);
            if (src == NULL)
                return -1;
            int m = match_keys(r, nd, src, n);
            free(own);
            if (m != 0)
                return m;
        }
        return 0;
    default:
        rfail(r, nd->line, "not a test");
        return -1;
    }
}

static void run_block(struct run *r, struct sieve_node *const *cmds, size_t n);

static void
frame_free(struct frame *f)
{
    for (size_t i = 0; i < f->nvars; i++)
        free(f->vars[i].val);
    for (size_t i = 0; i < MATCH_VARS; i++)
        free(f->mv[i]);
    free(f);
}

/* include (RFC 6609): the script run now in a frame of its own, unless
 * :once and it ran already; a loop, too deep, too many, or missing
 * without :optional is an error. */
static void
include(struct run *r, const struct sieve_node *c)
{
    const char *name = c->keys.v[0];
    for (size_t i = 0; i <= r->depth; i++)
        if (r->chain[i]->global == c->global && r->chain[i]->name &&
            strcmp(r->chain[i]->name, name) == 0) {
            rfailf(r, c->line, "include \"%.60s\": a loop", name);
            return;
        }
    struct loaded *l = NULL;
    for (size_t i = 0; i < r->nloaded && l == NULL; i++)
        if (r->loaded[i].global == c->global && strcmp(r->loaded[i].name, name) == 0)
            l = &r->loaded[i];
    if (l && l->ran && c->once)
        return;
    if (r->depth >= INCLUDE_DEPTH_MAX) {
        rfailf(r, c->line, "include \"%.60s\": nested deeper than %d", name, INCLUDE_DEPTH_MAX);
        return;
    }
    if (++r->includes > INCLUDES_MAX) {
        rfailf(r, c->line, "more than %d includes", INCLUDES_MAX);
        return;
    }
    if (l == NULL) {
        if (r->nloaded >= INCLUDE_SCRIPTS_MAX) {
            rfailf(r, c->line, "more than %d scripts included", INCLUDE_SCRIPTS_MAX);
            return;
        }
        char *src = NULL;
        size_t len = 0;
        errno = ENOENT;
        if (r->in->load == NULL || r->in->load(r->in->load_ctx, c->global, name, &src, &len) < 0) {
            if (errno == ENOENT && c->optional)
                return;
            rfailf(r, c->line, "include %s \"%.60s\": %s", c->global ? ":global" : ":personal", name,
                   errno == ENOENT ? "no such script" : strerror(errno));
            return;
        }
        char err[240];
        struct sieve_script *s = sieve_parse(src, len, err, sizeof(err));
        free(src);
        if (s == NULL) {
            rfailf(r, c->line, "include \"%.60s\": %s", name, err);
            return;
        }
        l = &r->loaded[r->nloaded++];
        *l = (struct loaded){ c->global, false, xstrdup(name), s };
    }
    l->ran = true;
    struct frame *f = xcalloc(1, sizeof(*f));
    f->ext = l->s->ext;
    f->globals = &l->s->globals;
    f->global = l->global;
    f->name = l->name;
    struct frame *saved = r->fr;
    r->chain[++r->depth] = f;
    r->fr = f;
    run_block(r, l->s->cmds, l->s->ncmds);
    r->returned = false;        /* return ends the included script alone */
    r->fr = saved;
    r->depth--;
    frame_free(f);
}

static void
run_block(struct run *r, struct sieve_node *const *cmds, size_t n)
{
    bool taken = false;     /* an if or elsif of this chain ran its block */
    for (size_t i = 0; i < n && !r->failed && !r->stopped && !r->returned; i++) {
        const struct sieve_node *c = cmds[i];
        switch (c->op) {
        case SO_REQUIRE:
            break;
        case SO_IF: case SO_ELSIF: case SO_ELSE: {
            if (c->op == SO_IF)
                taken = false;
            if (taken)
                break;
            int m = c->op == SO_ELSE ? 1 : test(r, c->kids[0]);
            if (m < 0)
                return;
            if (m) {
                taken = true;
                run_block(r, c->block, c->nblock);
            }
            break;
        }
        case SO_STOP:
            r->stopped = true;
            break;
        case SO_RETURN:
            r->returned = true;
            break;
        case SO_GLOBAL:         /* declared when parsed: s->globals */
            break;
        case SO_KEEP:
            keep_into(r, c, NULL);
            r->implicit_keep = false;
            break;
        case SO_DISCARD:
            r->implicit_keep = false;
            break;
        case SO_FILEINTO: {
            char *folder = expand_dup(r, c->line, c->keys.v[0]);
            keep_into(r, c, folder);
            free(folder);
            if (!c->copy)
                r->implicit_keep = false;
            break;
        }
        case SO_REDIRECT:
            redirect_add(r, c);
            if (!c->copy)
                r->implicit_keep = false;
            break;
        case SO_SETFLAG: case SO_ADDFLAG: case SO_REMOVEFLAG: {
            struct sv_list ex;
            if (list_expand(r, c->line, &c->keys, &ex)) {
                if (c->op == SO_SETFLAG)
                    flags_clear(&r->flags);
                flags_change(r, &r->flags, &ex, c->op != SO_REMOVEFLAG);
            }
            list_clear(&ex);
            break;
        }
        case SO_VACATION:
            vacation_add(r, c);
            break;
        case SO_SET:
            var_command(r, c);
            break;
        case SO_INCLUDE:
            include(r, c);
            break;
        default:
            rfail(r, c->line, "not a command");
            return;
        }
        if (c->op != SO_IF && c->op != SO_ELSIF && c->op != SO_ELSE)
            taken = false;
    }
}

int
sieve_run(const struct sieve_script *s, const struct sieve_input *in,
          struct mailstore_sieve_result *res, char *err, size_t errsize)
{
    struct run r;
    memset(&r, 0, sizeof(r));
    r.in = in;
    r.res = res;
    r.hdr = in->data;
    r.hend = in->data + rfc5322_header_len(in->data, in->len);
    r.budget = MATCH_BUDGET;
    r.err = err;
    r.errsize = errsize;
    r.implicit_keep = true;
    struct frame *top = xcalloc(1, sizeof(*top));
    top->ext = s->ext;
    top->globals = &s->globals;
    top->name = in->name;
    r.fr = r.chain[0] = top;
    run_block(&r, s->cmds, s->ncmds);
    if (!r.failed && r.implicit_keep)
        store_add(&r, NULL, &r.flags, false);
    for (size_t i = 0; i < r.flags.n; i++)
        free(r.flags.v[i]);
    free(r.flags.v);
    frame_free(top);
    for (size_t i = 0; i < r.ngvars; i++)
        free(r.gvars[i].val);
    for (size_t i = 0; i < r.nloaded; i++) {
        free(r.loaded[i].name);
        sieve_free(&r.loaded[i].s);
    }
    for (size_t i = 0; i < r.nparts; i++) {
        free(r.parts[i].type);
        free(r.parts[i].data);
    }
    free(r.parts);
    return r.failed ? -1 : 0;
}
