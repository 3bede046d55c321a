/*
 * rules.c -- the rules plugin: SpamAssassin's rule files (rules_parse.c)
 * run against each message at end of data. Header rules see the fields
 * (decoded as SpamAssassin decodes them, or :raw, :addr, :name), body
 * rules the rendered text with each paragraph a line, rawbody the text
 * parts, uri each link, full the message as received; then the metas in
 * dependency order. Every rule that hit and has a score becomes a symbol.
 * The rule set is loaded once per process (a reload starts a new smtp
 * process that loads its own, while the old one finishes its sessions);
 * matching is bounded (PCRE2 match limit, JIT stack) so a hostile message
 * cannot make a pattern run away.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <ctype.h>
#include <glob.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <gmime/gmime.h>
#include "filter.h"
#include "filters.h"
#include "../common/util.h"

#define MATCH_LIMIT 200000
#define MAX_FIELDS 1000
#define MAX_CACHE 128

struct rules { struct ruleset *rs; };

/* --------------------------------------------- per-thread PCRE2 state */

struct pcre_tls { pcre2_match_data *md; pcre2_match_context *mc; pcre2_jit_stack *js; };
static pthread_key_t tls_key;
static pthread_once_t tls_once = PTHREAD_ONCE_INIT;

static void
tls_free(void *p)
{
    struct pcre_tls *t = p;
    pcre2_match_data_free(t->md);
    pcre2_match_context_free(t->mc);
    pcre2_jit_stack_free(t->js);
    free(t);
}

static void
tls_init(void)
{
    if (pthread_key_create(&tls_key, tls_free) != 0)
        fatal("rules: pthread_key_create failed");
}

static struct pcre_tls *
tls_get(void)
{
    pthread_once(&tls_once, tls_init);
    struct pcre_tls *t = pthread_getspecific(tls_key);
    if (t == NULL) {
        t = xcalloc(1, sizeof(*t));
        t->md = pcre2_match_data_create(4, NULL);
        t->mc = pcre2_match_context_create(NULL);
        t->js = pcre2_jit_stack_create(32 * 1024, 512 * 1024, NULL);
        pcre2_jit_stack_assign(t->mc, NULL, t->js);
        pcre2_set_match_limit(t->mc, MATCH_LIMIT);
        pthread_setspecific(tls_key, t);
    }
    return t;
}

static unsigned
match_count(const struct sa_rule *r, const char *s, size_t n)
{
    struct pcre_tls *t = tls_get();
    unsigned hits = 0, max = r->maxhits ? r->maxhits : 1;
    PCRE2_SIZE off = 0;
    while (hits < max && off <= n) {
        int rc = pcre2_match(r->re, (PCRE2_SPTR)s, n, off, 0, t->md, t->mc);
        if (rc < 0)
            break;
        hits++;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(t->md);
        off = ov[1] > ov[0] ? ov[1] : ov[1] + 1;
    }
    return hits;
}

/* ---------------------------------------------------------- headers */

struct cached { char name[64]; enum rule_hdr mode; char *value; bool exists; };

struct msgview {
    const struct filter_msg *m;
    struct header_field f[MAX_FIELDS];
    size_t nf;
    struct cached c[MAX_CACHE];
    size_t nc;
};

static void
fields_parse(struct msgview *v)
{
    const char *p = v->m->data, *end = p + v->m->len;
    struct header_field f;
    while (v->nf < MAX_FIELDS && (p = header_next(p, end, &f)) != NULL)
        if (f.name)
            v->f[v->nf++] = f;
}

/* A field's value unfolded (line breaks out), leading white space off. */
static void
append_unfolded(char **buf, size_t *len, const char *s, size_t n)
{
    while (n && (*s == ' ' || *s == '\t')) {
        s++;
        n--;
    }
    *buf = xrealloc(*buf, *len + n + 2);
    for (size_t i = 0; i < n; i++)
        if (s[i] != '\r' && s[i] != '\n')
            (*buf)[(*len)++] = s[i];
    (*buf)[(*len)++] = '\n';
    (*buf)[*len] = '\0';
}

static bool
name_is(const struct header_field *f, const char *name)
{
    return strlen(name) == f->nlen && strncasecmp(f->name, name, f->nlen) == 0;
}

/* The first address in a header value, or its display name, as
 * SpamAssassin's :addr and :name give them: no line break at the end. */
static char *
addr_part(const char *v, bool want_name)
{
    const char *lt = strchr(v, '<');
    const char *b, *e;
    if (want_name) {
        if (lt == NULL)
            return xstrdup("");
        b = v;
        e = lt;
        while (b < e && (isspace((unsigned char)*b) || *b == '"'))
            b++;
        while (e > b && (isspace((unsigned char)e[-1]) || e[-1] == '"'))
            e--;
    } else if (lt) {
        b = lt + 1;
        const char *gt = strchr(b, '>');
        e = gt ? gt : b + strcspn(b, "\n");
    } else {
        b = v;
        while (*b && isspace((unsigned char)*b))
            b++;
        e = b + strcspn(b, " \t\r\n,;(");
    }
    return xstrndup(b, (size_t)(e - b));
}

/* A word of s after key ("from ", " by "), up to a space or one of stop. */
static void
word_after(const char *s, const char *key, const char *stop, char *out, size_t size)
{
    out[0] = '\0';
    const char *p = strcasestr(s, key);
    if (p == NULL)
        return;
    p += strlen(key);
    while (*p == ' ' || *p == '\t')
        p++;
    size_t n = 0;
    while (p[n] && !isspace((unsigned char)p[n]) && !strchr(stop, p[n]))
        n++;
    snprintf(out, size, "%.*s", (int)(n < size ? n : size - 1), p);
}

/* SpamAssassin's X-Spam-Relays-External (and -Untrusted, the same here):
 * each Received, newest first, as "[ ip= rdns= helo= by= ... ]", from the
 * first relay with a public address on (those before it are the trusted
 * local path, as SpamAssassin infers without trusted_networks). */
static void
relays(struct msgview *v, char **buf, size_t *len)
{
    bool external = false;
    for (size_t i = 0; i < v->nf; i++) {
        const struct header_field *f = &v->f[i];
        if (!name_is(f, "Received"))
            continue;
        char val[2048];
        size_t o = 0;
        for (size_t k = 0; k < f->vlen && o + 1 < sizeof(val); k++)
            val[o++] = f->val[k] == '\r' || f->val[k] == '\n' || f->val[k] == '\t' ? ' ' : f->val[k];
        val[o] = '\0';
        char helo[256], by[256], id[128], ip[64] = "", rdns[256] = "";
        word_after(val, "from ", "(;", helo, sizeof(helo));
        word_after(val, " by ", "(;", by, sizeof(by));
        word_after(val, " id ", ";(", id, sizeof(id));
        const char *lb = strchr(val, '[');
        if (lb) {
            const char *q = lb + 1;
            if (strncasecmp(q, "IPv6:", 5) == 0)
                q += 5;
            size_t n = strcspn(q, "]");
            snprintf(ip, sizeof(ip), "%.*s", (int)(n < 63 ? n : 63), q);
            const char *paren = memrchr(val, '(', (size_t)(lb - val));
            if (paren) {
                const char *rb = paren + 1;
                size_t rn = (size_t)(lb - rb);
                while (rn && rb[rn - 1] == ' ')
                    rn--;
                if (rn && memchr(rb, ' ', rn) == NULL && memchr(rb, '.', rn))
                    snprintf(rdns, sizeof(rdns), "%.*s", (int)(rn < 255 ? rn : 255), rb);
            }
        }
        if (ip[0] == '\0')
            continue;                       /* no address: SpamAssassin skips it too */
        if (!external && addr_not_public(ip))
            continue;
        external = true;
        bool auth = strcasestr(val, "with ESMTPA") || strcasestr(val, "with ESMTPSA");
        char rel[1200];
        int k = snprintf(rel, sizeof(rel), "%s[ ip=%s rdns=%s helo=%s by=%s ident= envfrom= intl=0 "
                         "id=%s auth=%s msa=0 ]", *len ? " " : "", ip, rdns, helo, by, id,
                         auth ? "ESMTPA" : "");
        if (k <= 0 || (size_t)k >= sizeof(rel))
            continue;
        *buf = xrealloc(*buf, *len + (size_t)k + 2);
        memcpy(*buf + *len, rel, (size_t)k);
        *len += (size_t)k;
        (*buf)[*len] = '\0';
    }
}

static const struct cached *
header_get(struct msgview *v, const char *name, enum rule_hdr mode)
{
    const enum rule_hdr asked = mode;
    for (size_t i = 0; i < v->nc; i++)
        if (v->c[i].mode == mode && strcasecmp(v->c[i].name, name) == 0)
            return &v->c[i];
    static const char *const msgid[] = { "Message-Id", "Resent-Message-Id", "X-Message-Id",
                                         "X-Original-Message-ID", NULL };
    static const char *const tocc[] = { "To", "Cc", NULL };
    char *buf = NULL;
    size_t len = 0;
    bool exists = false;
    if (strcmp(name, "EnvelopeFrom") == 0) {
        append_unfolded(&buf, &len, v->m->sender, strlen(v->m->sender));
        exists = true;
    } else if (strcmp(name, "X-Spam-Relays-External") == 0 ||
               strcmp(name, "X-Spam-Relays-Untrusted") == 0) {
        relays(v, &buf, &len);
        exists = len > 0;
        mode = HDR_RAW;
    } else {
        const char *const *names = strcmp(name, "MESSAGEID") == 0 ? msgid
                                 : strcmp(name, "ToCc") == 0 ? tocc : NULL;
        bool all = strcmp(name, "ALL") == 0;
        for (size_t i = 0; i < v->nf; i++) {
            const struct header_field *f = &v->f[i];
            bool want = all;
            for (size_t k = 0; !want && names && names[k]; k++)
                want = name_is(f, names[k]);
            if (!want && !names && !all)
                want = name_is(f, name);
            if (!want)
                continue;
            exists = true;
            if (all) {
                buf = xrealloc(buf, len + f->nlen + 3);
                memcpy(buf + len, f->name, f->nlen);
                len += f->nlen;
                buf[len++] = ':';
                buf[len++] = ' ';
                buf[len] = '\0';
            }
            append_unfolded(&buf, &len, f->val, f->vlen);
        }
    }
    if (buf == NULL)
        buf = xstrdup("");
    if (mode == HDR_DECODED && len && strstr(buf, "=?")) {     /* only encoded words need it */
        gchar *d = g_mime_utils_header_decode_text(NULL, buf);
        if (d) {
            free(buf);
            buf = xstrdup(d);
            g_free(d);
            len = strlen(buf);
            if (len == 0 || buf[len - 1] != '\n') {
                buf = xrealloc(buf, len + 2);
                buf[len++] = '\n';
                buf[len] = '\0';
            }
        }
    } else if ((mode == HDR_ADDR || mode == HDR_NAME) && exists) {
        char *a = addr_part(buf, mode == HDR_NAME);
        free(buf);
        buf = a;
    }
    if (v->nc == MAX_CACHE) {       /* a full cache: forget the oldest */
        free(v->c[0].value);
        memmove(&v->c[0], &v->c[1], (MAX_CACHE - 1) * sizeof(v->c[0]));
        v->nc--;
    }
    struct cached *c = &v->c[v->nc++];
    str_copy(c->name, name, sizeof(c->name));
    c->mode = asked;
    c->value = buf;
    c->exists = exists;
    return c;
}

static bool
field_exists(const struct msgview *v, const char *name)
{
    for (size_t i = 0; i < v->nf; i++)
        if (name_is(&v->f[i], name))
            return true;
    return false;
}

/* ---------------------------------------------------------- evals */

/* What the native eval: tests look at, worked out once per message. */
struct facts {
    bool done;
    bool html, plain, attach, img;
    size_t text_len;            /* the rendered body, without the subject line */
    double upper_pct;           /* -1: too little text to say */
    double shift_h;             /* Date against the first outside Received, in hours */
    bool have_shift;
};

static time_t
parse_date(const char *s, size_t n)
{
    char buf[200];
    snprintf(buf, sizeof(buf), "%.*s", (int)(n < 199 ? n : 199), s);
    GDateTime *dt = g_mime_utils_header_decode_date(buf);
    if (dt == NULL)
        return (time_t)-1;
    time_t t = (time_t)g_date_time_to_unix(dt);
    g_date_time_unref(dt);
    return t;
}

static void
facts_make(struct facts *f, struct msgview *v, struct filter_result *res,
           const struct filter_text *t)
{
    f->done = true;
    size_t np;
    const struct filter_part *parts = filter_parts(res, v->m, &np);
    for (size_t i = 0; parts && i < np; i++) {
        if (parts[i].attachment && parts[i].filename[0])
            f->attach = true;
        else if (strcmp(parts[i].content_type, "text/html") == 0)
            f->html = true;
        else if (strcmp(parts[i].content_type, "text/plain") == 0)
            f->plain = true;
    }
    f->img = f->html && t->rawbody && strcasestr(t->rawbody, "<img") != NULL;
    const char *nl = memchr(t->body, '\n', t->body_len);
    f->text_len = nl ? t->body_len - (size_t)(nl + 1 - t->body) : 0;
    size_t up = 0, letters = 0;
    for (const char *p = nl ? nl + 1 : t->body; p < t->body + t->body_len; p++) {
        if (*p >= 'A' && *p <= 'Z')
            up++, letters++;
        else if (*p >= 'a' && *p <= 'z')
            letters++;
    }
    f->upper_pct = letters >= 200 ? 100.0 * (double)up / (double)letters : -1;
    /* Date against the first Received that is not ours (SpamAssassin takes
     * the date its own MTA wrote) */
    time_t date = (time_t)-1, rcvd = (time_t)-1;
    for (size_t i = 0; i < v->nf; i++) {
        const struct header_field *fl = &v->f[i];
        if (date == (time_t)-1 && name_is(fl, "Date"))
            date = parse_date(fl->val, fl->vlen);
        if (rcvd == (time_t)-1 && name_is(fl, "Received") &&
            !memmem(fl->val, fl->vlen, "(Moat) with", 11)) {
            const char *semi = NULL;
            for (const char *p = fl->val; p < fl->val + fl->vlen; p++)
                if (*p == ';')
                    semi = p;
            if (semi)
                rcvd = parse_date(semi + 1, (size_t)(fl->val + fl->vlen - semi - 1));
        }
    }
    if (rcvd == (time_t)-1)
        rcvd = time(NULL);
    if (date != (time_t)-1) {
        f->shift_h = difftime(date, rcvd) / 3600.0;
        f->have_shift = true;
    }
}

static unsigned
eval_rule(const struct sa_rule *r, struct facts *f)
{
    switch (r->eval) {
    case EV_SHIFTED_DATE: return f->have_shift && f->shift_h >= r->lo && f->shift_h < r->hi;
    case EV_HTML_MESSAGE: return f->html;
    case EV_HTML_IMAGE_ONLY:
        return f->html && f->img && (double)f->text_len > r->lo && (double)f->text_len <= r->hi;
    case EV_HTML_TAG_EXISTS: return 0;      /* decided by the caller, which has the text */
    case EV_MIME_HTML_ONLY: return f->html && !f->plain;
    case EV_MIME_HTML: return f->html;
    case EV_MIME_ATTACHMENT: return f->attach;
    case EV_BODY_LENGTH: return (double)f->text_len < r->lo;
    case EV_UPPERCASE:
        return f->upper_pct >= 0 && f->upper_pct >= r->lo && f->upper_pct <= r->hi;
    }
    return 0;
}

static bool
tag_exists(const char *raw, const char *tag)
{
    size_t tl = strlen(tag);
    for (const char *p = raw; p && (p = strchr(p, '<')) != NULL; p++)
        if (strncasecmp(p + 1, tag, tl) == 0 && (p[1 + tl] == '>' || isspace((unsigned char)p[1 + tl]) ||
                                                  p[1 + tl] == '/'))
            return true;
    return false;
}

/* ------------------------------------------------------------ the hook */

static enum filter_status
rules_data_end(void *ctx, const struct filter_msg *m, struct filter_result *res)
{
    struct rules *R = ctx;
    const struct ruleset *rs = R->rs;
    if (filter_note_get(res, "lists.allow"))
        return FILTER_DONE;         /* an allow-listed sender: no spam scoring */
    const struct filter_text *t = filter_text(res, m);
    static const struct filter_text empty = { "", "\n", 1, "", 0, NULL, NULL, 0 };
    if (t == NULL)
        t = &empty;
    struct msgview *v = xcalloc(1, sizeof(*v));
    v->m = m;
    fields_parse(v);
    const char *bp = filter_note_get(res, "bayes.prob");
    double bayes = bp ? strtod(bp, NULL) : -1;
    double *val = xcalloc(rs->n + 1, sizeof(double));
    struct facts facts = { 0 };
    /* one prefilter pass per text names the content rules worth running */
    unsigned char *cand = xcalloc(rs->n + 1, 1);
    bool pf[RULE_UNSUPPORTED + 1] = { false };
    pf[RULE_BODY] = ruleset_prefilter_scan(rs, RULE_BODY, t->body, t->body_len, cand) == 0;
    pf[RULE_RAWBODY] = ruleset_prefilter_scan(rs, RULE_RAWBODY, t->rawbody, t->rawbody_len,
                                              cand) == 0;
    pf[RULE_FULL] = ruleset_prefilter_scan(rs, RULE_FULL, m->data, m->len, cand) == 0;
    bool expired = false;
    for (size_t i = 0; i < rs->n; i++) {
        const struct sa_rule *r = &rs->r[i];
        if (i % 64 == 0 && (expired = filter_expired(res)))
            break;                  /* the chain has answered: stop matching */
        if (!r->needed || (r->prefiltered && pf[r->type] && !cand[i]))
            continue;
        unsigned hits = 0;
        switch (r->type) {
        case RULE_HEADER: {
            if (r->re == NULL)
                break;
            const struct cached *c = header_get(v, r->hdr, r->hmode);
            const char *s = c->value;
            if (!c->exists && r->unset)
                s = r->unset;
            hits = match_count(r, s, strlen(s));
            if (r->negate)
                hits = !hits;
            break;
        }
        case RULE_EXISTS:
            hits = field_exists(v, r->hdr);
            break;
        case RULE_BODY:
            if (r->re)
                hits = match_count(r, t->body, t->body_len);
            break;
        case RULE_RAWBODY:
            if (r->re)
                hits = match_count(r, t->rawbody, t->rawbody_len);
            break;
        case RULE_FULL:
            if (r->re)
                hits = match_count(r, m->data, m->len);
            break;
        case RULE_URI:
            for (size_t k = 0; r->re && k < t->nuri && hits < (r->maxhits ? r->maxhits : 1); k++)
                hits += match_count(r, t->uris[k], strlen(t->uris[k]));
            break;
        case RULE_BAYES:
            hits = bayes >= 0 && bayes >= r->lo && bayes < r->hi;
            break;
        case RULE_EVAL:
            if (!facts.done)
                facts_make(&facts, v, res, t);
            hits = r->eval == EV_HTML_TAG_EXISTS ? facts.html && tag_exists(t->rawbody, r->arg)
                                                 : eval_rule(r, &facts);
            break;
        default:
            break;
        }
        val[i] = hits;
    }
    for (size_t k = 0; k < rs->nmeta_order && !expired; k++) {
        size_t i = rs->meta_order[k];
        double x = rexpr_eval(rs->r[i].meta, val);
        val[i] = x != 0;
    }
    for (size_t i = 0; i < rs->n && !expired; i++) {
        const struct sa_rule *r = &rs->r[i];
        /* BAYES_* are the bayes plugin's to score: here they only feed metas */
        if (val[i] == 0 || r->score == 0 || r->type == RULE_BAYES || strncmp(r->name, "__", 2) == 0)
            continue;
        filter_symbol(res, r->name, r->score, r->desc ? r->desc : "");
    }
    free(val);
    free(cand);
    for (size_t i = 0; i < v->nc; i++)
        free(v->c[i].value);
    free(v);
    return expired ? FILTER_ERROR : FILTER_DONE;
}

/* ---------------------------------------------------------- lifecycle */

static int
check_one(const char *key, const char *value, const char *domain, char *err, size_t errsize)
{
    if (domain[0]) {
        snprintf(err, errsize, "%s/%s: the rule set is global (set it in rules { })", domain, key);
        return -1;
    }
    if (strcmp(key, "files") == 0) {
        char *list = xstrdup(value), *save = NULL;
        int rc = 0;
        size_t found = 0;
        for (char *pat = strtok_r(list, " ,", &save); pat && rc == 0;
             pat = strtok_r(NULL, " ,", &save)) {
            glob_t g;
            int gr = glob(pat, 0, NULL, &g);
            if (gr == 0) {
                found += g.gl_pathc;
                globfree(&g);
            } else if (gr != GLOB_NOMATCH || strpbrk(pat, "*?[") == NULL) {
                snprintf(err, errsize, "files: '%s': no such file", pat);
                rc = -1;
            }
        }
        free(list);
        if (rc == 0 && found == 0) {
            snprintf(err, errsize, "files: no rule file matches '%s'", value);
            rc = -1;
        }
        return rc;
    }
    if (strcmp(key, "score_set") == 0) {
        if (strlen(value) == 1 && value[0] >= '0' && value[0] <= '3')
            return 0;
        snprintf(err, errsize, "score_set: '%s' is not 0, 1, 2 or 3", value);
        return -1;
    }
    snprintf(err, errsize, "%s: unknown key (files, score_set)", key);
    return -1;
}

static int
rules_check(const struct filter_config *c, char *err, size_t errsize)
{
    return filter_settings_each(c, check_one, err, errsize);
}

struct ruleset *
rules_load(const char *files, const char *score_set, const char *cache_dir, char *err,
           size_t errsize)
{
    return ruleset_load(files ? files : RULES_DEFAULT_FILES,
                        score_set ? (unsigned)atoi(score_set) : 2, cache_dir, err, errsize);
}

static int
rules_init(const struct filter_config *c, void **ctx_r, char *err, size_t errsize)
{
    struct rules *R = xcalloc(1, sizeof(*R));
    double t0 = time_mono();
    char cache[1100];
    filter_config_dir(c, FILTER_DIR_CACHE, cache, sizeof(cache));
    R->rs = rules_load(filter_config_get(c, "files"), filter_config_get(c, "score_set"), cache,
                       err, errsize);
    if (R->rs == NULL) {
        free(R);
        return -1;
    }
    const struct ruleset *rs = R->rs;
    log_info("rules: %zu rules from %zu files in %.2f s: %zu header, %zu body, %zu rawbody, "
             "%zu uri, %zu full, %zu meta, %zu native eval; %zu unsupported (moatctl rules "
             "check lists them); prefilter: %zu body, %zu rawbody, %zu full patterns",
             rs->n, rs->nfiles, time_mono() - t0, rs->count[RULE_HEADER] + rs->count[RULE_EXISTS],
             rs->count[RULE_BODY], rs->count[RULE_RAWBODY], rs->count[RULE_URI],
             rs->count[RULE_FULL], rs->count[RULE_META], rs->count[RULE_EVAL],
             rs->count[RULE_UNSUPPORTED], rs->hs_n[RULE_BODY], rs->hs_n[RULE_RAWBODY],
             rs->hs_n[RULE_FULL]);
    *ctx_r = R;
    return 0;
}

static void
rules_free(void *ctx)
{
    struct rules *R = ctx;
    if (R == NULL)
        return;
    ruleset_free(&R->rs);
    free(R);
}

const struct filter_plugin filter_rules = {
    .abi = FILTER_ABI_VERSION,
    .name = "rules",
    .check = rules_check,
    .init = rules_init,
    .free = rules_free,
    .on_data_end = rules_data_end,
    .on_failure = FILTER_TEMPFAIL,
};
