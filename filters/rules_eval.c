/*
 * rules_eval.c -- SpamAssassin's eval: tests done natively, one row each
 * in the table below: the name the rule files call, how many arguments it
 * takes, what it checks of them when the rules load, and the function
 * that answers for a message, written from the Perl of SpamAssassin 4.0's
 * plugins (HeaderEval, BodyEval, MIMEEval, HTMLEval, RelayEval, ...;
 * Apache License 2.0) so that each hits where SpamAssassin's does; the
 * rule-fidelity check (tests/fidelity) holds them to that. A test not in
 * the table stays a Perl test that cannot run, listed by `moatctl rules
 * check`.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <ctype.h>
#include <math.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "rules_eval.h"
#include "../common/common.h"

struct rmsg_facts {
    bool date_done;
    time_t date_header;         /* -1: none */
    double date_diff;           /* seconds, Date against the nearest Received */
    bool parts_done;
    bool html, plain, attach;
    bool upper_done;
    double upper;
};

typedef double eval_fn(struct rmsg *c, const struct sa_rule *r);
typedef int eval_prep(struct sa_rule *r, char *why, size_t whysize);

struct evdef {
    const char *name;
    int min_args, max_args;
    eval_fn *fn;
    eval_prep *prep;            /* NULL: any arguments of the right count */
};

static struct rmsg_facts *
facts(struct rmsg *c)
{
    if (c->facts == NULL)
        c->facts = xcalloc(1, sizeof(*c->facts));
    return c->facts;
}

void
rmsg_facts_free(struct rmsg *c)
{
    free(c->facts);
    c->facts = NULL;
}

/* "undef" or a number, as Perl compares them */
static double
num_arg(const struct sa_rule *r, size_t i, double undef)
{
    if (i >= r->neargs || strcmp(r->eargs[i], "undef") == 0)
        return undef;
    return strtod(r->eargs[i], NULL);
}

static int
prep_numbers(struct sa_rule *r, char *why, size_t whysize)
{
    for (size_t i = 0; i < r->neargs; i++) {
        char *end;
        if (strcmp(r->eargs[i], "undef") == 0)
            continue;
        strtod(r->eargs[i], &end);
        if (end == r->eargs[i] || *end) {
            snprintf(why, whysize, "argument '%s' is not a number", r->eargs[i]);
            return -1;
        }
    }
    r->lo = num_arg(r, 0, -INFINITY);
    r->hi = num_arg(r, 1, INFINITY);
    return 0;
}

/* ------------------------------------------------------------ dates */

/* HeaderEval's _get_date_header_time: the first Resent-Date, else Date,
 * that parses. */
static time_t
date_header(struct rmsg *c)
{
    static const char *const names[] = { "Resent-Date", "Date" };
    for (size_t k = 0; k < 2; k++) {
        struct rvals v;
        rmsg_get_all(c, names[k], &v);
        time_t t = (time_t)-1;
        for (size_t i = 0; i < v.n && t == (time_t)-1; i++) {
            size_t l = strlen(v.v[i]);
            if (l && v.v[i][l - 1] == '\n')
                v.v[i][l - 1] = '\0';
            if (v.v[i][0])
                t = sa_parse_date(v.v[i]);
        }
        rvals_free(&v);
        if (t != (time_t)-1)
            return t;
    }
    return (time_t)-1;
}

/* HeaderEval's _get_received_header_times: the dates of the Received
 * fields, newest first, leaving out a fetchmail hop at the top. */
static size_t
received_times(struct rmsg *c, time_t *out, size_t max)
{
    struct rvals v;
    rmsg_get_all(c, "Received", &v);
    /* split on line breaks, lines with something in them */
    const char **lines = xcalloc(v.n + 1, sizeof(char *));
    size_t nl = 0;
    for (size_t i = 0; i < v.n; i++) {
        size_t l = strlen(v.v[i]);
        if (l && v.v[i][l - 1] == '\n')
            v.v[i][l - 1] = '\0';
        bool any = false;
        for (const char *p = v.v[i]; *p; p++)
            any |= !isspace((unsigned char)*p);
        if (any)
            lines[nl++] = v.v[i];
    }
    size_t first = 0;
    const size_t *ov;
    if (nl && (rules_re_exec(rules_re("\\bfrom (?:localhost\\s|(?:\\S+ ){1,2}\\S*\\b127\\.0\\.0\\.1\\b)", 0),
                             lines[0], strlen(lines[0]), 0, &ov) > 0 ||
               rules_re_exec(rules_re("qmail \\d+ invoked by uid \\d+", 0), lines[0],
                             strlen(lines[0]), 0, &ov) > 0)) {
        /* a local first hop: skipped only when a fetchmail hop follows */
        if (nl > 1 && rules_re_exec(rules_re("\\bby localhost with \\w+ \\(fetchmail-[\\d.]+", 0),
                                    lines[1], strlen(lines[1]), 0, &ov) > 0)
            first = 2;
    } else if (nl && rules_re_exec(rules_re("\\bby localhost with \\w+ \\(fetchmail-[\\d.]+", 0),
                                   lines[0], strlen(lines[0]), 0, &ov) > 0) {
        first = 1;
    }
    size_t n = 0;
    for (size_t i = first; i < nl && n < max; i++) {
        if (rules_re_exec(rules_re("(\\s.?\\d+ \\S\\S\\S \\d+ \\d+:\\d+:\\d+ \\S+)", 0), lines[i],
                          strlen(lines[i]), 0, &ov) <= 0)
            continue;
        char d[128];
        size_t dl = ov[3] - ov[2];
        snprintf(d, sizeof(d), "%.*s", (int)(dl < 127 ? dl : 127), lines[i] + ov[2]);
        time_t t = sa_parse_date(d);
        if (t != (time_t)-1)
            out[n++] = t;
    }
    free(lines);
    rvals_free(&v);
    return n;
}

/* HeaderEval's _check_date_diff: Date against the Received date nearest
 * to it (the last one left out when it equals Date); 0 without either. */
static double
date_diff(struct rmsg *c)
{
    struct rmsg_facts *f = facts(c);
    if (f->date_done)
        return f->date_diff;
    f->date_done = true;
    f->date_diff = 0;
    f->date_header = date_header(c);
    if (f->date_header == (time_t)-1)
        return 0;
    time_t t[RMSG_MAX_RELAYS];
    size_t n = received_times(c, t, RMSG_MAX_RELAYS);
    if (n == 0)
        return 0;
    double best = 0;
    bool have = false;
    for (size_t i = 0; i < n; i++) {
        double d = difftime(f->date_header, t[i]);
        if (i == n - 1 && n > 1 && d == 0)
            continue;
        if (!have || fabs(d) < fabs(best)) {
            best = d;
            have = true;
        }
    }
    f->date_diff = best;
    return best;
}

static double
ev_shifted_date(struct rmsg *c, const struct sa_rule *r)
{
    double d = date_diff(c);
    return d >= 3600 * r->lo && d < 3600 * r->hi;
}

/* ------------------------------------------------------------ body */

/* BodyEval's check_body_length: the body as received, at most min bytes */
static double
ev_body_length(struct rmsg *c, const struct sa_rule *r)
{
    return (double)c->body_len <= r->lo;
}

/* ------------------------------------------------------------ parts */

static void
parts_facts(struct rmsg *c)
{
    struct rmsg_facts *f = facts(c);
    if (f->parts_done)
        return;
    f->parts_done = true;
    for (size_t i = 0; c->parts && i < c->nparts; i++) {
        const struct filter_part *p = &c->parts[i];
        if (p->attachment && p->filename[0])
            f->attach = true;
        else if (strcmp(p->content_type, "text/html") == 0)
            f->html = true;
        else if (strcmp(p->content_type, "text/plain") == 0)
            f->plain = true;
    }
}

static double
ev_html_message(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    parts_facts(c);
    return facts(c)->html;
}

static double
ev_mime_html(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    parts_facts(c);
    return facts(c)->html;
}

static double
ev_mime_html_only(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    parts_facts(c);
    return facts(c)->html && !facts(c)->plain;
}

static bool
has_tag(const unsigned char *p, size_t n, const char *tag)
{
    size_t tl = strlen(tag);
    for (size_t i = 0; i + tl + 1 < n; i++)
        if (p[i] == '<' && strncasecmp((const char *)p + i + 1, tag, tl) == 0 &&
            (p[i + 1 + tl] == '>' || isspace(p[i + 1 + tl]) || p[i + 1 + tl] == '/'))
            return true;
    return false;
}

/* HTMLEval's html_image_only: an HTML part with an image whose HTML text
 * is more than min and at most max long */
static double
ev_html_image_only(struct rmsg *c, const struct sa_rule *r)
{
    for (size_t i = 0; c->parts && i < c->nparts; i++) {
        const struct filter_part *p = &c->parts[i];
        if (strcmp(p->content_type, "text/html") != 0 || (p->attachment && p->filename[0]))
            continue;
        if (has_tag(p->data, p->len, "img") && (double)p->len > r->lo && (double)p->len <= r->hi)
            return 1;
    }
    return 0;
}

static double
ev_html_tag_exists(struct rmsg *c, const struct sa_rule *r)
{
    for (size_t i = 0; c->parts && i < c->nparts; i++) {
        const struct filter_part *p = &c->parts[i];
        if (strcmp(p->content_type, "text/html") != 0 || (p->attachment && p->filename[0]))
            continue;
        if (has_tag(p->data, p->len, r->eargs[0]))
            return 1;
    }
    return 0;
}

static double
ev_mime_attachment(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    parts_facts(c);
    return facts(c)->attach;
}

static int
prep_check_for_mime(struct sa_rule *r, char *why, size_t whysize)
{
    if (strcmp(r->eargs[0], "mime_attachment") == 0)
        return 0;
    snprintf(why, whysize, "check_for_mime('%s') is not done natively", r->eargs[0]);
    return -1;
}

/* MIMEEval's check_for_uppercase: the share of capitals among letters and
 * digits of the body lines that have a space inside, 200 bytes at least */
static double
ev_uppercase(struct rmsg *c, const struct sa_rule *r)
{
    struct rmsg_facts *f = facts(c);
    if (!f->upper_done) {
        f->upper_done = true;
        f->upper = 0;
        const char *b = c->t->body, *end = c->t->body + c->t->body_len;
        size_t len = 0, lower = 0, upper = 0;
        const size_t *ov;
        while (b < end) {
            const char *nl = memchr(b, '\n', (size_t)(end - b));
            const char *le = nl ? nl + 1 : end;
            size_t ll = (size_t)(le - b);
            if (rules_re_exec(rules_re("\\S\\s+\\S", 0), b, ll, 0, &ov) > 0 &&
                rules_re_exec(rules_re("^(?:[A-Za-z0-9+\\/=]{60,76} ){2}", 0), b, ll, 0, &ov) <= 0) {
                len += ll;
                for (const char *p = b; p < le; p++) {
                    if ((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9'))
                        lower++;
                    else if (*p >= 'A' && *p <= 'Z')
                        upper++;
                }
            }
            b = le;
        }
        if (len >= 200 && upper + lower > 0)
            f->upper = 100.0 * (double)upper / (double)(upper + lower);
    }
    return f->upper > r->lo && f->upper <= r->hi;
}

/* ------------------------------------------------------------ the table */

static const struct evdef evdefs[] = {
    { "check_for_shifted_date", 2, 2, ev_shifted_date, prep_numbers },
    { "check_body_length", 1, 1, ev_body_length, prep_numbers },
    { "html_test", 1, 1, ev_html_message, NULL },
    { "html_image_only", 2, 2, ev_html_image_only, prep_numbers },
    { "html_tag_exists", 1, 1, ev_html_tag_exists, NULL },
    { "check_for_mime_html", 0, 0, ev_mime_html, NULL },
    { "check_for_mime_html_only", 0, 0, ev_mime_html_only, NULL },
    { "check_for_mime", 1, 1, ev_mime_attachment, prep_check_for_mime },
    { "check_for_uppercase", 2, 2, ev_uppercase, prep_numbers },
};

static int
prep_html_test(struct sa_rule *r, char *why, size_t whysize)
{
    if (strcmp(r->eargs[0], "html") == 0)
        return 0;
    snprintf(why, whysize, "html_test('%s') is not done natively", r->eargs[0]);
    return -1;
}

int
rules_eval_find(struct sa_rule *r, const char *name, size_t nl, char *const *args, size_t na,
                char *why, size_t whysize)
{
    for (size_t i = 0; i < sizeof(evdefs) / sizeof(evdefs[0]); i++) {
        const struct evdef *d = &evdefs[i];
        if (strlen(d->name) != nl || strncmp(d->name, name, nl) != 0)
            continue;
        if ((int)na < d->min_args || (int)na > d->max_args) {
            snprintf(why, whysize, "takes %d to %d arguments", d->min_args, d->max_args);
            return -1;
        }
        rules_eval_free(r);
        r->eargs = xcalloc(na + 1, sizeof(char *));
        for (size_t k = 0; k < na; k++)
            r->eargs[k] = xstrdup(args[k]);
        r->neargs = na;
        r->eval = (int)i;
        eval_prep *prep = d->fn == ev_html_message ? prep_html_test : d->prep;
        if (prep && prep(r, why, whysize) < 0) {
            rules_eval_free(r);
            return -1;
        }
        return 0;
    }
    return -1;
}

double
rules_eval_run(const struct sa_rule *r, struct rmsg *c)
{
    if (r->eval < 0 || (size_t)r->eval >= sizeof(evdefs) / sizeof(evdefs[0]))
        return 0;
    return evdefs[r->eval].fn(c, r);
}

void
rules_eval_free(struct sa_rule *r)
{
    for (size_t i = 0; i < r->neargs; i++)
        free(r->eargs[i]);
    free(r->eargs);
    r->eargs = NULL;
    r->neargs = 0;
    rules_re_free(r->eargre);
    r->eargre = NULL;
}
