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
 *
 * One room though long: the table and the small body, MIME and HTML evals
 * it names are read together, one row beside its function.
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
#include "../common/util.h"

struct rmsg_facts *
rmsg_facts(struct rmsg *c)
{
    if (c->facts == NULL)
        c->facts = xcalloc(1, sizeof(*c->facts));
    return c->facts;
}

void
rmsg_facts_free(struct rmsg *c)
{
    if (c->facts) {
        for (size_t i = 0; i < c->facts->nfm_body; i++)
            free(c->facts->fm_body[i]);
        free(c->facts->fm_body);
    }
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

int
rules_eval_prep_numbers(struct sa_rule *r, char *why, size_t whysize)
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
    struct rmsg_facts *f = rmsg_facts(c);
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

/* ------------------------------------------------------------ MIME */

static int
prep_mime_key(struct sa_rule *r, char *why, size_t whysize)
{
    static const char *const keys[] = { "mime_base64_count", "mime_base64_encoded_text",
                                        "mime_body_html_count", "mime_body_text_count",
                                        "mime_faraway_charset", "mime_missing_boundary",
                                        "mime_multipart_alternative", "mime_qp_count",
                                        "mime_qp_long_line", "mime_ascii_text_illegal",
                                        "mime_attachment", "mime_bad_iso_charset",
                                        "mime_base64_blanks", "mimepart_limit_exceeded", NULL };
    for (size_t i = 0; keys[i]; i++)
        if (strcmp(keys[i], r->eargs[0]) == 0) {
            r->lo = (double)i;
            return 0;
        }
    snprintf(why, whysize, "check_for_mime('%s') is not done natively", r->eargs[0]);
    return -1;
}

/* MIMEEval's check_for_mime: the fact is there and true */
static double
ev_check_for_mime(struct rmsg *c, const struct sa_rule *r)
{
    const struct rmime_facts *F = rmsg_mime_facts(c);
    switch ((int)r->lo) {
    case 0: return F->base64_count > 0;
    case 1: return F->base64_encoded_text > 0;
    case 2: return F->body_html_count > 0;
    case 3: return F->body_text_count > 0;
    case 4: return 0;           /* faraway: never, with ok_locales all */
    case 5: return F->missing_boundary > 0;
    case 6: return F->multipart_alternative > 0;
    case 7: return F->qp_count > 0;
    case 8: return F->qp_long_line > 0;
    case 9: return F->ascii_text_illegal > 0;
    case 10: return F->attachment > 0;
    case 11: return F->bad_iso_charset > 0;
    case 12: return 0;          /* base64_blanks: no longer worked out */
    case 13: return 0;          /* set on the message, not among these facts */
    }
    return 0;
}

static bool
ct_is_html(struct rmsg *c)
{
    const char *ct = rmsg_get_scalar(c, "Content-Type");
    return strncasecmp(ct, "text/html", 9) == 0;
}

static double
ev_mime_html(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    return ct_is_html(c) || rmsg_mime_facts(c)->body_html_count > 0;
}

static double
ev_mime_html_only(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    if (ct_is_html(c))
        return 1;
    const struct rmime_facts *F = rmsg_mime_facts(c);
    return F->body_html_count > 0 && F->body_text_count == 0;
}

static double
ev_multipart_ratio(struct rmsg *c, const struct sa_rule *r)
{
    const struct rmime_facts *F = rmsg_mime_facts(c);
    return F->multipart_ratio >= r->lo && F->multipart_ratio < r->hi;
}

static double
ev_ma_non_text(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    return rmsg_mime_facts(c)->ma_non_text;
}

static double
ev_base64_length(struct rmsg *c, const struct sa_rule *r)
{
    double l = (double)rmsg_mime_facts(c)->base64_length;
    if (r->neargs > 1 && l > r->hi)
        return 0;
    return l >= r->lo;
}

static double
ev_qp_ratio(struct rmsg *c, const struct sa_rule *r)
{
    return rmsg_mime_facts(c)->qp_ratio >= r->lo;
}

static double
ev_ascii_text_illegal(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    return rmsg_mime_facts(c)->ascii_text_illegal > 0;
}

static int
prep_unicode_ratio(struct sa_rule *r, char *why, size_t whysize)
{
    const size_t *ov;
    /* SpamAssassin returns 0 unless the ratio looks like ^\d{0,3}\.\d{1,3}$ */
    r->lo = rules_re_exec(rules_re("^\\d{0,3}\\.\\d{1,3}$", 0), r->eargs[0], strlen(r->eargs[0]), 0,
                          &ov) > 0 ? strtod(r->eargs[0], NULL) : INFINITY;
    (void)why;
    (void)whysize;
    return 0;
}

static double
ev_unicode_ratio(struct rmsg *c, const struct sa_rule *r)
{
    return rmsg_mime_facts(c)->text_unicode_ratio >= r->lo;
}

static int
prep_parse_flag(struct sa_rule *r, char *why, size_t whysize)
{
    static const char *const flags[] = { "missing_head_body_separator", "missing_mime_headers",
                                         "missing_mime_head_body_separator", "mime_epilogue_exists",
                                         "truncated_header", NULL };
    for (size_t i = 0; flags[i]; i++)
        if (strcmp(flags[i], r->eargs[0]) == 0) {
            r->lo = (double)i;
            return 0;
        }
    snprintf(why, whysize, "check_msg_parse_flags('%s') is not done natively", r->eargs[0]);
    return -1;
}

static double
ev_parse_flags(struct rmsg *c, const struct sa_rule *r)
{
    switch ((int)r->lo) {
    case 0: return c->no_separator;
    case 1: return rmsg_mime_facts(c)->missing_mime_headers;
    case 2: return rmsg_mime_facts(c)->missing_mime_head_body_separator;
    case 3: return rmsg_mime_facts(c)->mime_epilogue_exists;
    case 4: return c->truncated_header;
    }
    return 0;
}

static double
ev_madiff(struct rmsg *c, const struct sa_rule *r)
{
    const struct rmime_facts *F = rmsg_mime_facts(c);
    return (r->lo == 0 || F->madiff > r->lo) && (isinf(r->hi) || F->madiff <= r->hi);
}

static double
ev_madiff_count(struct rmsg *c, const struct sa_rule *r)
{
    const struct rmime_facts *F = rmsg_mime_facts(c);
    if (F->madiff_html <= r->hi)
        return 0;
    return (double)F->madiff_text / F->madiff_html > r->lo;
}

static double
ev_zero(struct rmsg *c, const struct sa_rule *r)
{
    (void)c;
    (void)r;
    return 0;
}

/* ------------------------------------------------------------ HTML */

static int
prep_html_test(struct sa_rule *r, char *why, size_t whysize)
{
    static const char *const keys[] = { "html", "font_low_contrast", "font_invalid_color",
                                        "font_face_bad", "form_action_mailto", "embeds", NULL };
    for (size_t i = 0; keys[i]; i++)
        if (strcmp(keys[i], r->eargs[0]) == 0) {
            r->lo = (double)i;
            return 0;
        }
    snprintf(why, whysize, "html_test('%s') is not done natively", r->eargs[0]);
    return -1;
}

static double
ev_html_test(struct rmsg *c, const struct sa_rule *r)
{
    rmsg_texts(c);
    for (size_t i = 0; i < c->nhtml; i++) {
        const struct rhtml *H = c->html_all[i];
        bool v[] = { H->html, H->font_low_contrast, H->font_invalid_color, H->font_face_bad,
                     H->form_action_mailto, H->embeds };
        if (v[(int)r->lo])
            return 1;
    }
    return 0;
}

static double
ev_html_tag_exists(struct rmsg *c, const struct sa_rule *r)
{
    rmsg_texts(c);
    for (size_t i = 0; i < c->nhtml; i++) {
        bool e;
        rhtml_inside(c->html_all[i], r->eargs[0], &e);
        if (e)
            return 1;
    }
    return 0;
}

/* an expression like "!= 0", "< 512": the operator and the number */
static int
prep_expr(struct sa_rule *r, size_t at, char *why, size_t whysize)
{
    const char *e = r->eargs[at];
    const size_t *ov;
    if (rules_re_exec(rules_re("^\\s*(==|!=|<=|>=|<|>)\\s*(-?\\d+(?:\\.\\d+)?)\\s*$", 0), e, strlen(e),
                      0, &ov) <= 0) {
        snprintf(why, whysize, "expression '%s' is not done natively", e);
        return -1;
    }
    const char *op = e + ov[2];
    size_t ol = ov[3] - ov[2];
    r->lo = ol == 2 ? (op[0] == '=' ? 0 : op[0] == '!' ? 1 : op[0] == '<' ? 2 : 3)
                    : (op[0] == '<' ? 4 : 5);
    r->hi = strtod(e + ov[4], NULL);
    return 0;
}

static bool
expr_true(double v, const struct sa_rule *r)
{
    switch ((int)r->lo) {
    case 0: return v == r->hi;
    case 1: return v != r->hi;
    case 2: return v <= r->hi;
    case 3: return v >= r->hi;
    case 4: return v < r->hi;
    case 5: return v > r->hi;
    }
    return false;
}

static int
prep_tag_balance(struct sa_rule *r, char *why, size_t whysize)
{
    for (const char *p = r->eargs[0]; *p; p++)
        if (!isalnum((unsigned char)*p)) {
            snprintf(why, whysize, "tag '%s'", r->eargs[0]);
            return -1;
        }
    return prep_expr(r, 1, why, whysize);
}

static double
ev_tag_balance(struct rmsg *c, const struct sa_rule *r)
{
    rmsg_texts(c);
    for (size_t i = 0; i < c->nhtml; i++) {
        bool e;
        int v = rhtml_inside(c->html_all[i], r->eargs[0], &e);
        if (e && expr_true(v, r))
            return 1;
    }
    return 0;
}

/* HTMLEval's html_image_only: an HTML part with an image whose HTML text
 * is more than min and at most max characters long */
static double
ev_html_image_only(struct rmsg *c, const struct sa_rule *r)
{
    rmsg_texts(c);
    for (size_t i = 0; i < c->nhtml; i++) {
        const struct rhtml *H = c->html_all[i];
        bool img;
        rhtml_inside(H, "img", &img);
        if (img && (double)H->length > r->lo && (double)H->length <= r->hi)
            return 1;
    }
    return 0;
}

static double
ev_html_image_ratio(struct rmsg *c, const struct sa_rule *r)
{
    rmsg_texts(c);
    for (size_t i = 0; i < c->nhtml; i++) {
        const struct rhtml *H = c->html_all[i];
        if (H->image_area <= 0)
            continue;
        double ratio = (double)H->non_space_len / H->image_area;
        if (ratio > r->lo && ratio <= r->hi)
            return 1;
    }
    return 0;
}

/* a numeric result of an HTML part; false when it is not defined there */
static bool
html_value(const struct rhtml *H, const char *key, double *v)
{
    if (strcmp(key, "obfuscation_ratio") == 0) {
        if (H->tags == 0 || H->obfuscation == 0)
            return false;
        *v = (double)H->obfuscation / H->tags;
    } else if (strcmp(key, "non_element_ratio") == 0) {
        if (H->tags_seen == 0 || H->elements_seen == 0)
            return false;
        *v = ((double)H->tags_seen - H->elements_seen) / H->tags_seen;
    } else if (strcmp(key, "bad_tag_ratio") == 0) {
        if (H->tags == 0 || H->elements == 0)
            return false;
        *v = ((double)H->tags - H->elements) / H->tags;
    } else if (strcmp(key, "closed_extra_ratio") == 0) {
        if (H->tags == 0)
            return false;
        *v = (double)H->closed_extra / H->tags;
    } else if (strcmp(key, "max_size") == 0) {
        *v = H->max_size;
    } else if (strcmp(key, "min_size") == 0) {
        *v = H->min_size;
    } else if (strcmp(key, "length") == 0) {
        *v = (double)H->length;
    } else if (strcmp(key, "html_length") == 0) {
        *v = (double)H->html_length;
    } else if (strcmp(key, "non_space_len") == 0) {
        *v = (double)H->non_space_len;
    } else if (strcmp(key, "image_area") == 0) {
        *v = H->image_area;
    } else if (strcmp(key, "ratio") == 0) {
        if (!H->have_ratio)
            return false;
        *v = H->ratio;
    } else if (strcmp(key, "backhair_count") == 0) {
        if (H->nbackhair == 0)
            return false;
        *v = (double)H->nbackhair;
    } else {
        return false;
    }
    return true;
}

static int
prep_html_key(const char *key, char *why, size_t whysize)
{
    static const char *const keys[] = { "obfuscation_ratio", "non_element_ratio", "bad_tag_ratio",
                                        "closed_extra_ratio", "max_size", "min_size", "length",
                                        "html_length", "non_space_len", "image_area", "ratio",
                                        "backhair_count", NULL };
    for (size_t i = 0; keys[i]; i++)
        if (strcmp(keys[i], key) == 0)
            return 0;
    snprintf(why, whysize, "HTML value '%s' is not done natively", key);
    return -1;
}

static int
prep_html_range(struct sa_rule *r, char *why, size_t whysize)
{
    if (prep_html_key(r->eargs[0], why, whysize) < 0)
        return -1;
    r->lo = strtod(r->eargs[1], NULL);
    r->hi = r->neargs < 3 || strcmp(r->eargs[2], "inf") == 0 ? INFINITY : strtod(r->eargs[2], NULL);
    return 0;
}

static double
ev_html_range(struct rmsg *c, const struct sa_rule *r)
{
    rmsg_texts(c);
    for (size_t i = 0; i < c->nhtml; i++) {
        double v;
        if (!html_value(c->html_all[i], r->eargs[0], &v))
            continue;
        if (isinf(r->hi) ? v > r->lo : (v > r->lo && v <= r->hi))
            return 1;
    }
    return 0;
}

static int
prep_html_eval(struct sa_rule *r, char *why, size_t whysize)
{
    if (prep_html_key(r->eargs[0], why, whysize) < 0)
        return -1;
    return prep_expr(r, 1, why, whysize);
}

static double
ev_html_eval(struct rmsg *c, const struct sa_rule *r)
{
    rmsg_texts(c);
    for (size_t i = 0; i < c->nhtml; i++) {
        double v;
        if (html_value(c->html_all[i], r->eargs[0], &v) && expr_true(v, r))
            return 1;
    }
    return 0;
}

static int
prep_html_text_match(struct sa_rule *r, char *why, size_t whysize)
{
    if (strcmp(r->eargs[0], "title") != 0 && strcmp(r->eargs[0], "comment") != 0 &&
        strcmp(r->eargs[0], "anchor") != 0 && strcmp(r->eargs[0], "script") != 0) {
        snprintf(why, whysize, "html_text_match('%s') is not done natively", r->eargs[0]);
        return -1;
    }
    r->eargre = rules_re_user(r->eargs[1], 0, why, whysize);
    return r->eargre ? 0 : -1;
}

static double
ev_html_text_match(struct rmsg *c, const struct sa_rule *r)
{
    rmsg_texts(c);
    const size_t *ov;
    for (size_t i = 0; i < c->nhtml; i++) {
        const struct rhtml *H = c->html_all[i];
        if (strcmp(r->eargs[0], "anchor") == 0) {
            for (size_t k = 0; k < H->nuri; k++)
                for (size_t a = 0; a < H->uri[k].nanchor; a++)
                    if (rules_re_exec(r->eargre, H->uri[k].anchor[a], strlen(H->uri[k].anchor[a]), 0,
                                      &ov) > 0)
                        return 1;
            continue;
        }
        char **list = r->eargs[0][0] == 't' ? H->title : r->eargs[0][0] == 'c' ? H->comment : H->script;
        size_t n = r->eargs[0][0] == 't' ? H->ntitle : r->eargs[0][0] == 'c' ? H->ncomment : H->nscript;
        for (size_t k = 0; k < n; k++)
            if (rules_re_exec(r->eargre, list[k], strlen(list[k]), 0, &ov) > 0)
                return 1;
    }
    return 0;
}

static double
ev_title_subject_ratio(struct rmsg *c, const struct sa_rule *r)
{
    const char *subject = rmsg_get_scalar(c, "Subject");
    size_t sl = strlen(subject);
    if (sl == 0)
        return 0;
    rmsg_texts(c);
    for (size_t i = 0; i < c->nhtml; i++) {
        const struct rhtml *H = c->html_all[i];
        double max = 0;
        for (size_t k = 0; k < H->ntitle; k++) {
            double ratio = (double)strlen(H->title[k]) / (double)sl;
            if (H->title[k][0] && ratio > max)
                max = ratio;
        }
        if (max > r->lo)
            return 1;
    }
    return 0;
}

static double
ev_iframe_src(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    rmsg_texts(c);
    unsigned bit = rhtml_type_bit("iframe");
    for (size_t i = 0; i < c->nhtml; i++)
        for (size_t k = 0; k < c->html_all[i]->nuri; k++)
            if (c->html_all[i]->uri[k].types & bit)
                return 1;
    return 0;
}

/* MIMEEval's check_for_uppercase: the share of capitals among letters and
 * digits of the body lines that have a space inside, 200 bytes at least;
 * none where a charset likely to look like capitals is declared */
static double
ev_uppercase(struct rmsg *c, const struct sa_rule *r)
{
    struct rmsg_facts *f = rmsg_facts(c);
    if (!f->upper_done) {
        f->upper_done = true;
        f->upper = 0;
        rmsg_texts(c);
        const size_t *ov;
        static const char *const fp = "^[-_a-z0-9]*(?:koi|jp|jis|euc|gb|big5|isoir|cp1251|windows-1251|"
                                      "georgianps|pt154|tis)[-_a-z0-9]*$";
        const char *ct = rmsg_get_scalar(c, "Content-Type");
        bool likely_fp = false;
        if (ct[0] && (rules_re_exec(rules_re("charset=\"([^\"]+)\"", PCRE2_CASELESS), ct, strlen(ct), 0, &ov) > 0 ||
                      rules_re_exec(rules_re("charset='([^']+)'", PCRE2_CASELESS), ct, strlen(ct), 0, &ov) > 0 ||
                      rules_re_exec(rules_re("charset=(\\S+)", PCRE2_CASELESS), ct, strlen(ct), 0, &ov) > 0)) {
            char cs[128];
            size_t l = ov[3] - ov[2];
            snprintf(cs, sizeof(cs), "%.*s", (int)(l < 127 ? l : 127), ct + ov[2]);
            likely_fp = rules_re_exec(rules_re(fp, PCRE2_CASELESS), cs, strlen(cs), 0, &ov) > 0;
        }
        const char *hc = rmsg_mime_facts(c)->html_charsets;
        if (hc && !likely_fp) {
            char *copy = xstrdup(hc);
            for (char *save = NULL, *w = strtok_r(copy, " ", &save); w && !likely_fp;
                 w = strtok_r(NULL, " ", &save))
                likely_fp = rules_re_exec(rules_re(fp, PCRE2_CASELESS), w, strlen(w), 0, &ov) > 0;
            free(copy);
        }
        size_t len = 0, lower = 0, upper = 0;
        for (size_t i = 0; i < c->nbline && !likely_fp; i++) {
            const char *b = c->sbody + c->bline_off[i];
            size_t ll = c->bline_len[i];
            /* the second pattern needs 122 bytes, the third an ESC: most
             * lines have neither, and skip its PCRE2 call */
            if (rules_re_exec(rules_re("\\S\\s+\\S", 0), b, ll, 0, &ov) <= 0 ||
                (ll >= 122 &&
                 rules_re_exec(rules_re("^(?:[A-Za-z0-9+\\/=]{60,76} ){2}", 0), b, ll, 0, &ov) > 0))
                continue;
            /* shift-JIS escapes out: s/\x1b\$B.*\x1b\(B//gs */
            size_t cut = 0;
            if (memchr(b, 0x1b, ll) &&
                rules_re_exec(rules_re("\\x1b\\$B.*\\x1b\\(B", PCRE2_DOTALL), b, ll, 0, &ov) > 0)
                cut = ov[1] - ov[0];
            len += ll - cut;
            for (size_t k = 0; k < ll; k++) {
                if (cut && k == ov[0]) {
                    k = ov[1] - 1;
                    continue;
                }
                if ((b[k] >= 'a' && b[k] <= 'z') || (b[k] >= '0' && b[k] <= '9'))
                    lower++;
                else if (b[k] >= 'A' && b[k] <= 'Z')
                    upper++;
            }
        }
        if (len >= 200 && upper + lower > 0)
            f->upper = 100.0 * (double)upper / (double)(upper + lower);
    }
    return f->upper > r->lo && f->upper <= r->hi;
}

/* ------------------------------------------------------------ mimeheader */

/* MIMEHeader.pm: the field of each part (in range=) matched; a negated
 * rule hits whatever the parts hold, as there. eargs: field, "raw" or "",
 * "!" or "", the if-unset text; lo, hi: the range; neargs 5: concat. */
static double
ev_mimeheader(struct rmsg *c, const struct sa_rule *r)
{
    if (r->re == NULL)
        return 0;
    char **v;
    size_t n = rmsg_part_fields(c, r->eargs[0], r->eargs[1][0] != '\0', &v);
    bool negated = r->eargs[2][0] != '\0', concat = r->neargs > 4;
    unsigned hits = 0, max = r->maxhits ? r->maxhits : 1;
    struct { char *p; size_t n; } cv = { xstrdup(""), 0 };
    const size_t *ov;
    for (size_t k = 0; k < n; k++) {
        double idx = (double)(k + 1);
        if (idx > r->hi)
            break;
        if (idx < r->lo)
            continue;
        const char *val = v[k] ? v[k] : r->eargs[3];
        if (concat) {
            size_t l = strlen(val);
            cv.p = xrealloc(cv.p, cv.n + l + 2);
            memcpy(cv.p + cv.n, val, l);
            cv.n += l;
            if (l == 0 || val[l - 1] != '\n')
                cv.p[cv.n++] = '\n';
            cv.p[cv.n] = '\0';
            continue;
        }
        if (!negated && rules_re_exec(r->re, val, strlen(val), 0, &ov) > 0) {
            hits++;
            break;
        }
    }
    if (concat && !negated && rules_re_exec(r->re, cv.p, cv.n, 0, &ov) > 0)
        hits++;
    free(cv.p);
    for (size_t k = 0; k < n; k++)
        free(v[k]);
    free(v);
    if (negated)
        return 1;
    return hits > max ? max : hits;
}

/* ------------------------------------------------------------ the table */

static const struct evdef evdefs_main[] = {
    /* HeaderEval, BodyEval */
    { "check_for_shifted_date", 2, 2, ev_shifted_date, rules_eval_prep_numbers },
    { "check_body_length", 1, 1, ev_body_length, rules_eval_prep_numbers },
    /* MIMEEval */
    { "check_for_mime", 1, 1, ev_check_for_mime, prep_mime_key },
    { "check_for_mime_html", 0, 0, ev_mime_html, NULL },
    { "check_for_mime_html_only", 0, 0, ev_mime_html_only, NULL },
    { "check_mime_multipart_ratio", 2, 2, ev_multipart_ratio, rules_eval_prep_numbers },
    { "check_ma_non_text", 0, 0, ev_ma_non_text, NULL },
    { "check_base64_length", 1, 2, ev_base64_length, rules_eval_prep_numbers },
    { "check_qp_ratio", 1, 1, ev_qp_ratio, rules_eval_prep_numbers },
    { "check_for_ascii_text_illegal", 0, 0, ev_ascii_text_illegal, NULL },
    { "check_abundant_unicode_ratio", 1, 1, ev_unicode_ratio, prep_unicode_ratio },
    { "check_msg_parse_flags", 1, 1, ev_parse_flags, prep_parse_flag },
    { "check_for_uppercase", 2, 2, ev_uppercase, rules_eval_prep_numbers },
    /* with ok_locales all (10_default_prefs.cf) no charset is far away */
    { "check_for_faraway_charset", 0, 0, ev_zero, NULL },
    { "check_for_faraway_charset_in_headers", 0, 0, ev_zero, NULL },
    { "html_charset_faraway", 0, 0, ev_zero, NULL },
    { "multipart_alternative_difference", 2, 2, ev_madiff, rules_eval_prep_numbers },
    { "multipart_alternative_difference_count", 2, 2, ev_madiff_count, rules_eval_prep_numbers },
    /* HTMLEval */
    { "html_test", 1, 1, ev_html_test, prep_html_test },
    { "html_tag_exists", 1, 1, ev_html_tag_exists, NULL },
    { "html_tag_balance", 2, 2, ev_tag_balance, prep_tag_balance },
    { "html_image_only", 2, 2, ev_html_image_only, rules_eval_prep_numbers },
    { "html_image_ratio", 2, 2, ev_html_image_ratio, rules_eval_prep_numbers },
    { "html_range", 2, 3, ev_html_range, prep_html_range },
    { "html_eval", 2, 2, ev_html_eval, prep_html_eval },
    { "html_text_match", 2, 2, ev_html_text_match, prep_html_text_match },
    { "html_title_subject_ratio", 1, 1, ev_title_subject_ratio, rules_eval_prep_numbers },
    { "check_iframe_src", 0, 0, ev_iframe_src, NULL },
    /* MIMEHeader (set up by rules_eval_mimeheader, not by name) */
    { " mimeheader", 4, 5, ev_mimeheader, NULL },
};

/* The tables: this file's, and those of rules_eval_header.c */
static const struct evdef *const tables[] = { evdefs_main, rules_evals_header, rules_evals_more };
static const size_t *const table_sizes[] = { NULL, &rules_nevals_header, &rules_nevals_more };

static size_t
table_size(size_t t)
{
    return t == 0 ? sizeof(evdefs_main) / sizeof(evdefs_main[0]) : *table_sizes[t];
}

static const struct evdef *
evdef_of(int eval)
{
    if (eval < 0)
        return NULL;
    size_t t = (size_t)eval / 1000, i = (size_t)eval % 1000;
    if (t >= sizeof(tables) / sizeof(tables[0]) || i >= table_size(t))
        return NULL;
    return &tables[t][i];
}

void
rules_eval_mimeheader(struct sa_rule *r, const char *field, bool negated, const char *unset)
{
    char f[256];
    str_copy(f, field, sizeof(f));
    size_t fl = strlen(f);
    bool raw = fl > 4 && strcmp(f + fl - 4, ":raw") == 0;
    if (raw)
        f[fl - 4] = '\0';
    else if (fl && f[fl - 1] == ':')
        f[fl - 1] = '\0';
    rules_eval_free(r);
    r->type = RULE_EVAL;
    r->eargs = xcalloc(6, sizeof(char *));
    r->eargs[0] = xstrdup(f);
    r->eargs[1] = xstrdup(raw ? "raw" : "");
    r->eargs[2] = xstrdup(negated ? "!" : "");
    r->eargs[3] = xstrdup(unset ? unset : "");
    r->neargs = 4;
    r->lo = 0;
    r->hi = 1000;
    for (size_t i = 0; i < table_size(0); i++)
        if (evdefs_main[i].fn == ev_mimeheader)
            r->eval = (int)i;
}

void
rules_eval_tflags(struct sa_rule *r, const char *flags)
{
    const struct evdef *d = evdef_of(r->eval);
    if (d == NULL || d->fn != ev_mimeheader)
        return;
    const size_t *ov;
    int rc = rules_re_exec(rules_re("(?:^|\\s)range=(\\d+)?(-)?(\\d+)?(?:\\s|$)", 0), flags,
                           strlen(flags), 0, &ov);
    if (rc > 0) {
        bool a = rc > 1 && ov[2] != PCRE2_UNSET, dash = rc > 2 && ov[4] != PCRE2_UNSET,
             b = rc > 3 && ov[6] != PCRE2_UNSET;
        double x = a ? strtod(flags + ov[2], NULL) : 0, y = b ? strtod(flags + ov[6], NULL) : 0;
        if (a && dash && b) {
            r->lo = x;
            r->hi = y;
        } else if (a && dash) {
            r->lo = x;
        } else if (dash && b) {
            r->hi = y;
        } else if (a) {
            r->lo = r->hi = x;
        }
    }
    if (rules_re_exec(rules_re("\\bconcat\\b", 0), flags, strlen(flags), 0, &ov) > 0 && r->neargs == 4) {
        r->eargs[4] = xstrdup("concat");
        r->neargs = 5;
    }
}

/* The tests that ask the network (DKIM too: without DNS SpamAssassin
 * verifies no signature, and every DKIM and ARC test is 0): 0 without
 * network tests. */
static const char *const net_tests[] = {
    "check_dkim_signed", "check_dkim_valid", "check_dkim_valid_author_sig",
    "check_dkim_valid_envelopefrom", "check_dkim_dependable", "check_dkim_adsp",
    "check_dkim_testing", "check_dkim_signall", "check_dkim_signsome", "check_arc_signed",
    "check_arc_valid", "check_for_dkim_welcomelist_from", "check_for_def_dkim_welcomelist_from",
    "check_rbl", "check_rbl_sub", "check_rbl_txt", "check_rbl_envfrom", "check_rbl_from_host",
    "check_rbl_from_domain", "check_rbl_headers", "check_rbl_ns_from", "check_rbl_rcvd",
    "check_rbl_accreditor", "check_dns_sender", "check_uridnsbl", "check_uri_host_listed",
    "check_razor2", "check_razor2_range", "check_pyzor", "check_dcc", "check_dcc_reputation_range",
    "check_hashbl_bodyre", "check_hashbl_emails", "check_hashbl_uris", "check_hashbl_attachments",
    "check_hashbl_tag", "short_url", "short_url_chained", NULL };

int
rules_eval_find(struct sa_rule *r, const char *name, size_t nl, char *const *args, size_t na,
                unsigned score_set, char *why, size_t whysize)
{
    for (size_t i = 0; net_tests[i]; i++) {
        if (strlen(net_tests[i]) != nl || strncmp(net_tests[i], name, nl) != 0)
            continue;
        if (score_set & 1) {
            snprintf(why, whysize, "a network test (score set %u has them on)", score_set);
            return -1;
        }
        rules_eval_free(r);
        r->eval = -2;           /* a network test: 0 without network tests */
        return 0;
    }
    for (size_t t = 0; t < sizeof(tables) / sizeof(tables[0]); t++)
    for (size_t i = 0; i < table_size(t); i++) {
        const struct evdef *d = &tables[t][i];
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
        r->eval = (int)(t * 1000 + i);
        if (d->prep && d->prep(r, why, whysize) < 0) {
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
    if (r->eval == -2)
        return 0;
    const struct evdef *d = evdef_of(r->eval);
    return d ? d->fn(c, r) : 0;
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
