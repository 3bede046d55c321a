/*
 * sieve_run.c -- a checked Sieve tree (sieve_parse.c) run against one
 * message: the tests (address, header, envelope, exists, size, allof,
 * anyof, not, true, false, hasflag) with :is, :contains and :matches under
 * i;ascii-casemap or i;octet, and the actions collected into a
 * mailstore_sieve_result (folders with their flags, redirects, a vacation)
 * with RFC 5228's implicit keep. Pure: the caller does what the result
 * says. Matching work is counted against a budget, so no script and
 * message together can take long; running out is a runtime error, which
 * the caller turns into a keep in INBOX. The header test sees a field
 * with RFC 2047 encoded words decoded (GMime), as RFC 5228 2.7.2 asks.
 */
#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <gmime/gmime.h>
#include "../common/mail.h"
#include "sieve_private.h"

#define MATCH_BUDGET 20000000u  /* compare steps for one message */
#define REDIRECT_MAX 4          /* redirects one run may ask for */
#define FLAGS_MAX 32            /* flags in the imap4flags variable */
#define ADDRS_MAX 256           /* addresses taken from one header field */
#define FIELD_MAX (64u << 10)   /* bytes of one header field's value looked at */

struct run {
    const struct sieve_input *in;
    struct mailstore_sieve_result *res;
    const char *hdr, *hend;     /* the header */
    uint64_t budget;
    char *err;
    size_t errsize;
    bool failed, stopped, implicit_keep;
    struct sv_list flags;       /* imap4flags' internal variable */
};

static void
rfail(struct run *r, int line, const char *why)
{
    if (!r->failed)
        snprintf(r->err, r->errsize, "line %d: %s", line, why);
    r->failed = true;
}

/* ---------------------------------------------------------- matching */

int
sieve_wildmatch(const char *pat, size_t plen, const char *val, size_t vlen, bool fold,
                uint64_t *budget)
{
    /* the greedy match with one remembered star: when a later literal part
     * fails, the last star takes one more character. Each star makes the
     * earlier ones final, so the work is at most plen * vlen steps. */
    size_t p = 0, v = 0, star_p = (size_t)-1, star_v = 0;
    while (v < vlen) {
        if (*budget == 0)
            return -1;
        (*budget)--;
        if (p < plen && pat[p] == '*') {
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
                p += esc ? 2 : 1;
                v++;
                if (one)
                    while (v < vlen && ((unsigned char)val[v] & 0xc0) == 0x80)
                        v++;
                continue;
            }
        }
        if (star_p == (size_t)-1)
            return 0;
        p = star_p;
        v = ++star_v;
    }
    while (p < plen && pat[p] == '*')
        p++;
    return p == plen;
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
          const char *key)
{
    size_t klen = strlen(key);
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
        return sieve_wildmatch(key, klen, val, vlen, fold, &r->budget);
    }
    return 0;
}

/* Any key matches the value: 1, 0, or -1 (budget spent: r failed). */
static int
match_keys(struct run *r, const struct sieve_node *nd, const char *val, size_t vlen)
{
    for (size_t k = 0; k < nd->keys.n; k++) {
        int m = match_one(r, nd, val, vlen, nd->keys.v[k]);
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

/* ------------------------------------------------------------- flags */

static void
flag_remove(struct sv_list *l, const char *w, size_t wn)
{
    for (size_t i = 0; i < l->n; i++)
        if (strlen(l->v[i]) == wn && strncasecmp(l->v[i], w, wn) == 0) {
            free(l->v[i]);
            l->v[i] = l->v[--l->n];
            return;
        }
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
            flag_remove(l, w, wn);
            if (add) {
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

/* The system flags of a list as Maildir letters, in ASCII order (others:
 * keywords, not kept by delivery). */
static void
flags_letters(const struct sv_list *l, char out[8])
{
    static const struct { const char *name; char letter; } map[] = {
        { "\\draft", 'D' }, { "\\flagged", 'F' }, { "\\answered", 'R' }, { "\\seen", 'S' },
        { "\\deleted", 'T' },
    };
    size_t o = 0;
    for (size_t m = 0; m < sizeof(map) / sizeof(map[0]); m++)
        for (size_t i = 0; i < l->n; i++)
            if (strcasecmp(l->v[i], map[m].name) == 0) {
                out[o++] = map[m].letter;
                break;
            }
    out[o] = '\0';
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
    flags_letters(flags, s->flags);
}

static void
redirect_add(struct run *r, const struct sieve_node *nd)
{
    struct mailstore_sieve_result *res = r->res;
    const char *a = nd->keys.v[0];
    for (size_t i = 0; i < res->nredirect; i++)
        if (strcasecmp(res->redirect[i], a) == 0)
            return;
    if (res->nredirect >= REDIRECT_MAX) {
        rfail(r, nd->line, "more than 4 redirects");
        return;
    }
    res->redirect = xrealloc(res->redirect, (res->nredirect + 1) * sizeof(char *));
    res->redirect[res->nredirect++] = xstrdup(a);
}

static void
vacation_add(struct run *r, const struct sieve_node *nd)
{
    if (r->res->vacation) {
        rfail(r, nd->line, "vacation twice");
        return;
    }
    struct mailstore_sieve_vacation *v = xcalloc(1, sizeof(*v));
    v->subject = nd->subject ? xstrdup(nd->subject) : NULL;
    v->from = nd->from ? xstrdup(nd->from) : NULL;
    v->reason = xstrdup(nd->reason);
    v->handle = nd->handle ? xstrdup(nd->handle) : NULL;
    v->days = (unsigned)nd->num;
    v->addresses = xcalloc(nd->keys.n ? nd->keys.n : 1, sizeof(char *));
    for (size_t i = 0; i < nd->keys.n; i++)
        v->addresses[i] = xstrdup(nd->keys.v[i]);
    v->naddresses = nd->keys.n;
    r->res->vacation = v;
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
    default:
        rfail(r, nd->line, "not a test");
        return -1;
    }
}

static void
run_block(struct run *r, struct sieve_node *const *cmds, size_t n)
{
    bool taken = false;     /* an if or elsif of this chain ran its block */
    for (size_t i = 0; i < n && !r->failed && !r->stopped; i++) {
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
        case SO_KEEP:
            store_add(r, NULL, c->has_flags ? &c->flags : &r->flags, false);
            r->implicit_keep = false;
            break;
        case SO_DISCARD:
            r->implicit_keep = false;
            break;
        case SO_FILEINTO:
            store_add(r, c->keys.v[0], c->has_flags ? &c->flags : &r->flags, c->create);
            if (!c->copy)
                r->implicit_keep = false;
            break;
        case SO_REDIRECT:
            redirect_add(r, c);
            if (!c->copy)
                r->implicit_keep = false;
            break;
        case SO_SETFLAG:
            flags_clear(&r->flags);
            flags_change(r, &r->flags, &c->keys, true);
            break;
        case SO_ADDFLAG:
            flags_change(r, &r->flags, &c->keys, true);
            break;
        case SO_REMOVEFLAG:
            flags_change(r, &r->flags, &c->keys, false);
            break;
        case SO_VACATION:
            vacation_add(r, c);
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
    run_block(&r, s->cmds, s->ncmds);
    if (!r.failed && r.implicit_keep)
        store_add(&r, NULL, &r.flags, false);
    for (size_t i = 0; i < r.flags.n; i++)
        free(r.flags.v[i]);
    free(r.flags.v);
    return r.failed ? -1 : 0;
}
