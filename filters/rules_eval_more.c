/*
 * rules_eval_more.c -- the FreeMail plugin's eval tests of SpamAssassin
 * 4.0 done natively (FreeMail.pm; Apache License 2.0, written anew here):
 * whether From, Reply-To or another field is an address at a freemail
 * provider (freemail_domains of the rule files, wildcards included), and
 * whether the body names other freemail addresses than the one to reply
 * to. As in the Perl, scanning the body for addresses takes the addresses
 * and the URLs with an @ out of the body lines the body rules then read
 * (FreeMail.pm edits the shared lines in place): rules_match runs these
 * tests first, as SpamAssassin runs header evals before body rules.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <ctype.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "rules_eval.h"
#include "../common/util.h"

/* The FreeMail patterns of a rule set: called once when it loads. */
void
rules_freemail_setup(struct ruleset *rs)
{
    /* the plain domains sorted; the wildcards as one pattern */
    size_t plain = 0;
    char *wild = NULL;
    size_t wl = 0;
    for (size_t i = 0; i < rs->nfm_domains; i++) {
        char *d = rs->fm_domains[i];
        if (strpbrk(d, "*?") == NULL) {
            rs->fm_domains[plain++] = d;
            continue;
        }
        /* s/\./\\./g; s/\?/./g; s/\*\/[^.]*\/g */
        size_t need = strlen(d) * 6 + 4;
        wild = xrealloc(wild, wl + need);
        if (wl)
            wild[wl++] = '|';
        for (const char *p = d; *p; p++) {
            const char *rep = *p == '.' ? "\\." : *p == '?' ? "." : *p == '*' ? "[^.]*" : NULL;
            if (rep) {
                memcpy(wild + wl, rep, strlen(rep));
                wl += strlen(rep);
            } else {
                wild[wl++] = *p;
            }
        }
        wild[wl] = '\0';
        free(d);
    }
    rs->nfm_domains = plain;
    if (plain)
        qsort(rs->fm_domains, plain, sizeof(char *), str_ptr_cmp);
    char err[200];
    if (wild) {
        size_t n = strlen(wild) + 16;
        char *re = xmalloc(n);
        str_fmt(re, n, "\\@(?:%s)$", wild);
        rs->fm_wild_re = rules_re_user(re, 0, err, sizeof(err));
        free(re);
        free(wild);
    }
    /* FreeMail's email_regex, with the valid TLDs */
    size_t n = 64;
    for (size_t i = 0; i < rs->ntlds; i++)
        n += strlen(rs->tlds[i]) * 2 + 1;
    char *tlds = xmalloc(n);
    size_t o = 0;
    for (size_t i = 0; i < rs->ntlds; i++) {
        if (i)
            tlds[o++] = '|';
        for (const char *p = rs->tlds[i]; *p; p++) {
            if (!isalnum((unsigned char)*p))
                tlds[o++] = '\\';
            tlds[o++] = *p;
        }
    }
    tlds[o] = '\0';
    size_t rl = o + 600;
    char *re = xmalloc(rl);
    str_fmt(re, rl,
            "(?=.{0,64}\\@)(?<![a-z0-9!#\\$%%&'*+\\/=?^_`{|}~-])"
            "([a-z0-9!#\\$%%&'*+\\/=?^_`{|}~-]+(?:\\.[a-z0-9!#\\$%%&'*+\\/=?^_`{|}~-]+)*\\@"
            "(?:[a-z0-9](?:[a-z0-9-]{0,59}[a-z0-9])?\\.){1,4}"
            "(?i:(?<![a-zA-Z0-9-])(?:%s)(?!(?:[a-zA-Z0-9-]|\\.[a-zA-Z0-9]))))",
            rs->ntlds ? tlds : "no_tlds_defined");
    rs->email_re = rules_re_user(re, PCRE2_CASELESS, err, sizeof(err));
    /* what _parse_body strips: an address in <>, or one followed by a
     * word and a colon ("wrote:"), not after mailto: */
    size_t sl = strlen(re) + 200;
    char *strip = xmalloc(sl);
    str_fmt(strip, sl, "<?(?<!mailto:)%s(?:>|\\s{1,10}(?!(?:fa(?:x|csi)|tel|phone|e?-?mail))[a-z]{2,11}:)", re);
    rs->email_strip_re = rules_re_user(strip, PCRE2_CASELESS, err, sizeof(err));
    free(strip);
    free(re);
    free(tlds);
}

static bool
available(const struct rmsg *c)
{
    return c->rs->nfm_domains || c->rs->fm_wild_re;
}

/* FreeMail.pm's _is_freemail (email lower case) */
static bool
is_freemail(const struct rmsg *c, const char *email)
{
    if (email[0] == '\0')
        return false;
    const size_t *ov;
    static const char *const wl =
        "^(?:abuse|support|sales|info|helpdesk|contact|kontakt|(?:post|host|domain)master|undisclosed.*"
        "|request-[a-f0-9]{16}|bounced?-"
        "|[a-f0-9]{8}(?:\\.[a-f0-9]{8}|-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12})|.+=.+=.+)\\@";
    if (rules_re_exec(rules_re(wl, PCRE2_CASELESS), email, strlen(email), 0, &ov) > 0)
        return false;
    const char *at = strrchr(email, '@');
    const char *domain = at ? at + 1 : email;
    if (c->rs->nfm_domains &&
        bsearch(&domain, c->rs->fm_domains, c->rs->nfm_domains, sizeof(char *), str_ptr_cmp))
        return true;
    return c->rs->fm_wild_re &&
           rules_re_exec(c->rs->fm_wild_re, email, strlen(email), 0, &ov) > 0;
}

static void
lower(char *s)
{
    for (; *s; s++)
        *s = (char)tolower((unsigned char)*s);
}

static int
prep_regex_arg(struct sa_rule *r, size_t at, char *why, size_t whysize)
{
    if (r->neargs <= at)
        return 0;
    r->eargre = rules_re_user(r->eargs[at], 0, why, whysize);
    return r->eargre ? 0 : -1;
}

static int
prep_header(struct sa_rule *r, char *why, size_t whysize)
{
    return prep_regex_arg(r, 1, why, whysize);
}

static int
prep_from(struct sa_rule *r, char *why, size_t whysize)
{
    return prep_regex_arg(r, 0, why, whysize);
}

static double
ev_freemail_header(struct rmsg *c, const struct sa_rule *r)
{
    if (!available(c))
        return 0;
    char req[300];
    snprintf(req, sizeof(req), "%s:addr", r->eargs[0]);
    struct rvals v;
    rmsg_get_all(c, req, &v);
    double hit = 0;
    const size_t *ov;
    for (size_t i = 0; i < v.n && !hit; i++) {
        lower(v.v[i]);
        if (!is_freemail(c, v.v[i]))
            continue;
        if (r->eargre && rules_re_exec(r->eargre, v.v[i], strlen(v.v[i]), 0, &ov) <= 0)
            continue;
        hit = 1;
    }
    rvals_free(&v);
    return hit;
}

/* PerMsgStatus's all_from_addrs */
static void
all_from_addrs(struct rmsg *c, struct rvals *out)
{
    memset(out, 0, sizeof(*out));
    struct rvals v;
    rmsg_get_all(c, "Resent-From:first:addr", &v);
    if (v.n) {
        *out = v;
    } else {
        rvals_free(&v);
        static const char *const reqs[] = { "From:addr", "Envelope-Sender:addr",
                                            "Resent-Sender:addr", "X-Envelope-From:addr",
                                            "EnvelopeFrom:addr" };
        for (size_t k = 0; k < 5; k++) {
            rmsg_get_all(c, reqs[k], &v);
            for (size_t i = 0; i < v.n; i++) {
                if (v.v[i][0] == '\0') {
                    free(v.v[i]);
                    continue;
                }
                /* tr/././s */
                char *s = v.v[i];
                size_t o = 0;
                for (size_t j = 0; s[j]; j++)
                    if (!(s[j] == '.' && o && s[o - 1] == '.'))
                        s[o++] = s[j];
                s[o] = '\0';
                out->v = xrealloc(out->v, (out->n + 1) * sizeof(char *));
                out->v[out->n++] = s;
            }
            free(v.v);
        }
    }
    for (size_t i = 0; i < out->n; i++)
        lower(out->v[i]);
}

static double
ev_freemail_from(struct rmsg *c, const struct sa_rule *r)
{
    if (!available(c))
        return 0;
    struct rvals v;
    all_from_addrs(c, &v);
    double hit = 0;
    const size_t *ov;
    for (size_t i = 0; i < v.n && !hit; i++) {
        if (v.v[i][0] == '\0' || !is_freemail(c, v.v[i]))
            continue;
        if (r->eargre && rules_re_exec(r->eargre, v.v[i], strlen(v.v[i]), 0, &ov) <= 0)
            continue;
        hit = 1;
    }
    rvals_free(&v);
    return hit;
}

/* s/re/ /gi on a line, in place of the body's text: the pieces around the
 * matches joined with one space each */
static char *
subst(const char *s, size_t n, void *re, size_t *len_r)
{
    const size_t *ov;
    size_t cap = n + 1, o = 0, off = 0;
    char *out = xmalloc(cap);
    while (off <= n && rules_re_exec(re, s, n, off, &ov) > 0) {
        size_t a = ov[0], b = ov[1];
        if (o + (a - off) + 2 > cap)
            out = xrealloc(out, cap = (o + (a - off) + 2) * 2);
        memcpy(out + o, s + off, a - off);
        o += a - off;
        out[o++] = ' ';
        if (b == a) {
            if (a < n) {
                if (o + 2 > cap)
                    out = xrealloc(out, cap = (o + 2) * 2);
                out[o++] = s[a];
            }
            off = a + 1;
        } else {
            off = b;
        }
    }
    if (off < n) {
        if (o + (n - off) + 1 > cap)
            out = xrealloc(out, cap = o + (n - off) + 1);
        memcpy(out + o, s + off, n - off);
        o += n - off;
    }
    out[o] = '\0';
    *len_r = o;
    return out;
}

/* FreeMail.pm's _parse_body: the freemail addresses of the HTML mailto:
 * links and the body text; false when there are too many addresses */
static bool
parse_body(struct rmsg *c)
{
    struct rmsg_facts *f = rmsg_facts(c);
    if (f->fm_body_done)
        return !f->fm_body_skip;
    f->fm_body_done = true;
    rmsg_uris(c);
    struct rvals emails = { 0 };
    const size_t *ov;
    /* <a href="mailto:..."> not also found in the text */
    for (size_t i = 0; i < c->nhtml && emails.n < 20; i++)
        for (size_t k = 0; k < c->html_all[i]->nuri && emails.n < 20; k++) {
            const struct rhtml_uri *u = &c->html_all[i]->uri[k];
            if (!(u->types & rhtml_type_bit("a")) || strncasecmp(u->uri, "mailto:", 7) != 0)
                continue;
            bool parsed = false;
            for (size_t t = 0; t < c->ntext_uris && !parsed; t++)
                parsed = strcmp(c->text_uris[t], u->uri) == 0;
            if (parsed || rules_re_exec(c->rs->email_re, u->uri + 7, strlen(u->uri + 7), 0, &ov) <= 0 ||
                ov[0] != 0)
                continue;
            char *e = xstrndup(u->uri + 7 + ov[2], ov[3] - ov[2]);
            lower(e);
            bool seen = false;
            for (size_t q = 0; q < emails.n && !seen; q++)
                seen = strcmp(emails.v[q], e) == 0;
            if (seen) {
                free(e);
                continue;
            }
            emails.v = xrealloc(emails.v, (emails.n + 1) * sizeof(char *));
            emails.v[emails.n++] = e;
        }
    /* the body lines, edited in place as FreeMail.pm does */
    static const char *const url_at = "<?https?://\\S{0,255}(?:\\@|%40)\\S{0,255}";
    bool stop = false;
    struct { char *p; size_t n, cap; } nb = { NULL, 0, 0 };
    size_t *noff = xcalloc(c->nbline + 1, sizeof(size_t)), *nlen = xcalloc(c->nbline + 1, sizeof(size_t));
    for (size_t i = 0; i < c->nbline; i++) {
        const char *line = c->sbody + c->bline_off[i];
        size_t ll = c->bline_len[i], l1, l2;
        char *edited = NULL;
        /* the three patterns need an "@" ("%40" in a URL): a line without
         * one stays as it is (most lines) */
        if (!stop && c->rs->email_re && c->rs->email_strip_re &&
            (memchr(line, '@', ll) || memmem(line, ll, "%40", 3))) {
            char *a = subst(line, ll, rules_re(url_at, PCRE2_CASELESS), &l1);
            char *b = subst(a, l1, c->rs->email_strip_re, &l2);
            free(a);
            edited = b;
            ll = l2;
            line = b;
            size_t off = 0;
            while (off <= ll && rules_re_exec(c->rs->email_re, line, ll, off, &ov) > 0) {
                char *e = xstrndup(line + ov[2], ov[3] - ov[2]);
                lower(e);
                off = ov[1] > ov[0] ? ov[1] : ov[1] + 1;
                bool seen = false;
                for (size_t q = 0; q < emails.n && !seen; q++)
                    seen = strcmp(emails.v[q], e) == 0;
                if (seen) {
                    free(e);
                    continue;
                }
                emails.v = xrealloc(emails.v, (emails.n + 1) * sizeof(char *));
                emails.v[emails.n++] = e;
                if (emails.n >= 40) {
                    stop = true;
                    break;
                }
            }
        }
        if (nb.n + ll + 1 > nb.cap) {
            nb.cap = (nb.n + ll + 1) * 2;
            nb.p = xrealloc(nb.p, nb.cap);
        }
        memcpy(nb.p + nb.n, line, ll);
        noff[i] = nb.n;
        nlen[i] = ll;
        nb.n += ll;
        nb.p[nb.n] = '\0';
        free(edited);
    }
    if (nb.p == NULL)
        nb.p = xstrdup("");
    free(c->sbody);
    free(c->bline_off);
    free(c->bline_len);
    c->sbody = nb.p;
    c->sbody_len = nb.n;
    c->bline_off = noff;
    c->bline_len = nlen;
    c->body_edited = true;
    /* at most 5 addresses and 3 freemail ones (freemail_max_body_*) */
    size_t all = 0, fm = 0;
    for (size_t i = 0; i < emails.n; i++) {
        if (++all == 5) {
            f->fm_body_skip = true;
            break;
        }
        if (!is_freemail(c, emails.v[i]))
            continue;
        if (++fm == 3) {
            f->fm_body_skip = true;
            break;
        }
        f->fm_body = xrealloc(f->fm_body, (f->nfm_body + 1) * sizeof(char *));
        f->fm_body[f->nfm_body++] = xstrdup(emails.v[i]);
    }
    rvals_free(&emails);
    return !f->fm_body_skip;
}

static int
prep_replyto(struct sa_rule *r, char *why, size_t whysize)
{
    if (r->neargs == 0 || strcmp(r->eargs[0], "replyto") == 0 || strcmp(r->eargs[0], "reply") == 0)
        return 0;
    snprintf(why, whysize, "check_freemail_replyto('%s')", r->eargs[0]);
    return -1;
}

static double
ev_freemail_replyto(struct rmsg *c, const struct sa_rule *r)
{
    if (!available(c))
        return 0;
    bool reply = r->neargs && strcmp(r->eargs[0], "reply") == 0;
    const char *env = rmsg_get_scalar(c, "EnvelopeFrom");
    static const char *const bulk =
        "(?:^(?:post|host|domain)master|^double-bounce|^(?:sentto|owner|return|(?:gr)?bounced?)-.+"
        "|-(?:request|bounces?|admin|owner)|\\b(?:do[._-t]?)?no[._-t]?repl(?:y|ies)|.+=.+)\\@";
    const size_t *ov;
    struct rvals envv;
    rmsg_get_all(c, "EnvelopeFrom", &envv);
    bool have_env = envv.n > 0;
    rvals_free(&envv);
    if (have_env && rules_re_exec(rules_re(bulk, PCRE2_CASELESS), env, strlen(env), 0, &ov) > 0)
        return 0;
    struct rvals from, rt;
    rmsg_get_all(c, "From:addr", &from);
    rmsg_get_all(c, "Reply-To:addr", &rt);
    for (size_t i = 0; i < from.n; i++)
        lower(from.v[i]);
    for (size_t i = 0; i < rt.n; i++)
        lower(rt.v[i]);
    bool from_fm = false, rt_fm = false, from_not_in_rt = true;
    for (size_t i = 0; i < from.n; i++)
        from_fm |= is_freemail(c, from.v[i]);
    for (size_t i = 0; i < rt.n; i++)
        rt_fm |= is_freemail(c, rt.v[i]);
    for (size_t i = 0; i < from.n; i++)
        for (size_t k = 0; k < rt.n; k++)
            if (strcmp(from.v[i], rt.v[k]) == 0)
                from_not_in_rt = false;
    double hit = 0;
    if (from_fm && rt_fm && from_not_in_rt) {
        hit = 1;
        goto done;
    }
    if (!reply) {
        if (!rt_fm)
            goto done;
    } else if (rt.n && !rt_fm) {
        goto done;
    } else if (!from_fm) {
        goto done;
    }
    if (!parse_body(c))
        goto done;
    struct rvals *addrs = !reply ? &rt : rt_fm ? &rt : &from;
    struct rmsg_facts *f = rmsg_facts(c);
    for (size_t b = 0; b < f->nfm_body && !hit; b++)
        for (size_t k = 0; k < addrs->n && !hit; k++)
            if (strcmp(f->fm_body[b], addrs->v[k]) != 0)
                hit = 1;
done:
    rvals_free(&from);
    rvals_free(&rt);
    return hit;
}

static double
ev_freemail_body(struct rmsg *c, const struct sa_rule *r)
{
    if (!available(c) || !parse_body(c))
        return 0;
    struct rmsg_facts *f = rmsg_facts(c);
    const size_t *ov;
    if (r->eargre) {
        for (size_t b = 0; b < f->nfm_body; b++)
            if (rules_re_exec(r->eargre, f->fm_body[b], strlen(f->fm_body[b]), 0, &ov) > 0)
                return 1;
        return 0;
    }
    return f->nfm_body > 0;
}

bool
rules_eval_early(const struct sa_rule *r)
{
    const struct evdef *d = NULL;
    if (r->type != RULE_EVAL || r->eval < 2000)
        return false;
    if ((size_t)(r->eval - 2000) < rules_nevals_more)
        d = &rules_evals_more[r->eval - 2000];
    return d && (d->fn == ev_freemail_replyto || d->fn == ev_freemail_body);
}

const struct evdef rules_evals_more[] = {
    { "check_freemail_header", 1, 2, ev_freemail_header, prep_header },
    { "check_freemail_from", 0, 1, ev_freemail_from, prep_from },
    { "check_freemail_replyto", 0, 1, ev_freemail_replyto, prep_replyto },
    { "check_freemail_body", 0, 1, ev_freemail_body, prep_from },
};
const size_t rules_nevals_more = sizeof(rules_evals_more) / sizeof(rules_evals_more[0]);
