/*
 * rules_eval_header.c -- the header and relay eval tests of SpamAssassin
 * 4.0 done natively (HeaderEval.pm, RelayEval.pm and WLBLEval's
 * check_mailfrom_matches_rcvd; Apache License 2.0, written anew here):
 * Message-ID forgeries, forged Received trails of the big freemail
 * providers, recipient lists, the HELO and reverse DNS of the relays, the
 * trust of the relay path, illegal characters, and the like. Each reads
 * the message the way the Perl does, through the same header requests
 * (rules_header.c) and relays (rules_relay.c).
 *
 * One room though long: HeaderEval's and RelayEval's tests share the
 * helpers that walk the relays and the Received trail.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <ctype.h>
#include <math.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <glib.h>
#include "rules_eval.h"
#include "../common/util.h"

#define V4 "(?:1\\d\\d|2[0-4]\\d|25[0-5]|[1-9]\\d|\\d)"
#define IP4 "\\b" V4 "\\." V4 "\\." V4 "\\." V4 "\\b"
#define H4 "[a-f0-9]{1,4}"
#define IP "(?i:(?:\\b(?<!:)" V4 "\\." V4 "\\." V4 "\\." V4 "\\b" \
    "|(?:IPv6:|(?<![a-f0-9:]))(?:(?:(?:" H4 ":){6}|::(?:" H4 ":){0,5}|(?:" H4 ":){1,5}:" \
    "|" H4 "::(?:" H4 ":){1,4}|(?:" H4 ":){2}:(?:" H4 ":){1,3}|(?:" H4 ":){3}:(?:" H4 ":){1,2}" \
    "|(?:" H4 ":){4}:" H4 ":)" V4 "\\." V4 "\\." V4 "\\." V4 \
    "|(?:" H4 ":){7}" H4 "|:(?::" H4 "){1,7}|(?:" H4 ":){1,7}:|" H4 ":(?::" H4 "){1,6}" \
    "|(?:" H4 ":){2}(?::" H4 "){1,5}|(?:" H4 ":){3}(?::" H4 "){1,4}|(?:" H4 ":){4}(?::" H4 "){1,3}" \
    "|(?:" H4 ":){5}(?::" H4 "){1,2}|(?:" H4 ":){6}:" H4 "|::)(?![a-f0-9:])))"
#define PRIV4 "(?:10|127|169\\.254|172\\.(?:1[6-9]|2[0-9]|3[01])|192\\.168" \
    "|100\\.(?:6[4-9]|[7-9][0-9]|1[01][0-9]|12[0-7]))"

static bool
m(const char *re, unsigned flags, const char *s)
{
    const size_t *ov;
    return rules_re_exec(rules_re(re, flags), s, strlen(s), 0, &ov) > 0;
}

/* The first capture of re in s (or ""), into out. */
static bool
cap1(const char *re, unsigned flags, const char *s, char *out, size_t size)
{
    const size_t *ov;
    out[0] = '\0';
    int rc = rules_re_exec(rules_re(re, flags), s, strlen(s), 0, &ov);
    if (rc <= 1 || ov[2] == PCRE2_UNSET)
        return rc > 0;
    size_t l = ov[3] - ov[2];
    snprintf(out, size, "%.*s", (int)(l < size ? l : size - 1), s + ov[2]);
    return true;
}

/* s/\s+/ /gs into a malloc'd copy */
static char *
squash(const char *s)
{
    size_t n = strlen(s), o = 0;
    char *t = xmalloc(n + 1);
    for (size_t i = 0; i < n; i++) {
        if (isspace((unsigned char)s[i])) {
            while (i + 1 < n && isspace((unsigned char)s[i + 1]))
                i++;
            t[o++] = ' ';
        } else {
            t[o++] = s[i];
        }
    }
    t[o] = '\0';
    return t;
}

static bool
is_private(const char *ip)
{
    return m("^" PRIV4 "\\.", 0, ip) || m("^(?:fe[89ab][0-9a-f]:|::1$|0*:0*:0*:0*:0*:0*:0*:0*1$)", PCRE2_CASELESS, ip);
}

/* ------------------------------------------------------------ HeaderEval */

/* check_outlook_message_id: the Message-ID Outlook makes carries the
 * time; a real one matches the Date or the newest Received date */
static double
ev_outlook_message_id(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    const char *id = rmsg_get_scalar(c, "MESSAGEID");
    char tok[16];
    if (!cap1("^<[0-9a-f]{4}([0-9a-f]{8})\\$[0-9a-f]{8}\\$[0-9a-f]{8}\\@", 0, id, tok, sizeof(tok)))
        return 0;
    double timetoken = (double)strtoul(tok, NULL, 16);
    const double x = 0.0023283064365387, y = 27111902.8329849;
    time_t t = sa_parse_date(rmsg_get_scalar(c, "Date"));
    double expected = floor((double)(t == (time_t)-1 ? 0 : t) * x + y);
    if (fabs(timetoken - expected) < 250)
        return 0;
    /* the Received: the last "dd Mon yyyy hh:mm:ss zone" of the values */
    const char *rcvd = rmsg_get_scalar(c, "Received");
    const size_t *ov;
    time_t rt = (time_t)-1;
    if (rules_re_exec(rules_re("(\\s.?\\d+ \\S\\S\\S \\d+ \\d+:\\d+:\\d+ \\S+).*?$", 0), rcvd,
                      strlen(rcvd), 0, &ov) > 0) {
        char d[128];
        size_t l = ov[3] - ov[2];
        snprintf(d, sizeof(d), "%.*s", (int)(l < 127 ? l : 127), rcvd + ov[2]);
        rt = sa_parse_date(d);
    }
    expected = floor((double)(rt == (time_t)-1 ? 0 : rt) * x + y);
    return fabs(timetoken - expected) >= 250;
}

/* check_equal_from_domains: the last two labels of From and of the
 * envelope sender differ */
static double
ev_equal_from_domains(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    char fd[512], ed[512];
    if (!cap1("\\@([^@]*)\\z", 0, rmsg_get_scalar(c, "From:addr"), fd, sizeof(fd)) || fd[0] == '\0')
        return 0;
    char t[512];
    if (cap1("^.+\\.([^\\.]+\\.[^\\.]+)$", 0, fd, t, sizeof(t)))
        str_copy(fd, t, sizeof(fd));
    if (fd[0] == '\0')
        return 0;
    if (!cap1("\\@([^@]*)\\z", 0, rmsg_get_scalar(c, "EnvelopeFrom:addr"), ed, sizeof(ed)))
        return 0;
    if (cap1("^.+\\.([^\\.]+\\.[^\\.]+)$", 0, ed, t, sizeof(t)))
        str_copy(ed, t, sizeof(ed));
    if (ed[0] == '\0')
        return 0;
    return strcasecmp(fd, ed) != 0;
}

static double
ev_missing_to_header(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    const char *h = rmsg_get_scalar(c, "To");
    if (h[0] == '\0')
        h = rmsg_get_scalar(c, "Apparently-To");
    return h[0] == '\0';
}

/* gated_through_received_hdr_remover: ezmlm and MSN groups take the
 * Received fields away; none at all counts too */
static bool
gated(struct rmsg *c)
{
    struct rvals v;
    rmsg_get_all(c, "Mailing-List", &v);
    bool have_ml = v.n > 0;
    rvals_free(&v);
    const char *ml = rmsg_get_scalar(c, "Mailing-List");
    if (have_ml && m("^contact \\S+\\@\\S+\\; run by ezmlm$", PCRE2_MULTILINE, ml)) {
        if (m("^mailing list \\S+\\@\\S+", PCRE2_MULTILINE, rmsg_get_scalar(c, "Delivered-To")) &&
            m("qmail \\d+ invoked (?:from network|by .{3,20})\\); \\d+ ... \\d+", 0,
              rmsg_get_scalar(c, "Received")))
            return true;
    }
    if (rmsg_get(c, "Received") == NULL)
        return true;
    return m("from groups\\.msn\\.com \\(\\S+\\.msn\\.com ", 0, rmsg_get_scalar(c, "Received"));
}

static double
ev_gated(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    return gated(c);
}

static bool
msn_groups(struct rmsg *c)
{
    char list[256], server[256];
    if (!cap1("<(\\S+)\\@groups\\.msn\\.com>", PCRE2_CASELESS, rmsg_get_scalar(c, "To"), list, sizeof(list)))
        return false;
    if (!cap1("from mail pickup service by ((?:p\\d\\d\\.)groups\\.msn\\.com)\\b", 0,
              rmsg_get_scalar(c, "Received"), server, sizeof(server)))
        return false;
    const char *mid = rmsg_get_scalar(c, "Message-Id");
    if (strcmp(list, "notifications") == 0) {
        char re[600];
        snprintf(re, sizeof(re), "^<\\S+\\@\\Q%s\\E>", server);
        return rules_re_once(re, 0, mid, strlen(mid)) > 0;
    }
    char re[600];
    snprintf(re, sizeof(re), "^<\\Q%s\\E-\\S+\\@groups\\.msn\\.com>", list);
    if (rules_re_once(re, 0, mid, strlen(mid)) <= 0)
        return false;
    snprintf(re, sizeof(re), "\\Q%s\\E-bounce\\@groups\\.msn\\.com", list);
    const char *ef = rmsg_get_scalar(c, "EnvelopeFrom:addr");
    return rules_re_once(re, 0, ef, strlen(ef)) > 0;
}

static double
ev_msn_groups(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    return msn_groups(c);
}

static void
hotmail(struct rmsg *c)
{
    struct rmsg_facts *f = rmsg_facts(c);
    if (f->hotmail_done)
        return;
    f->hotmail_done = true;
    char *rcvd = squash(rmsg_get_scalar(c, "Received"));
    if (m("from mail pickup service by hotmail\\.com with Microsoft SMTPSVC;", 0, rcvd) ||
        msn_groups(c) || gated(c))
        goto done;
    struct rvals v;
    rmsg_get_all(c, "X-Originating-Ip", &v);
    bool ip = v.n && m(IP, 0, rmsg_get_scalar(c, "X-Originating-Ip"));
    rvals_free(&v);
    rmsg_get_all(c, "X-OriginatorOrg", &v);
    bool orig = v.n && m("hotmail\\.com|msonline\\-outlook", 0, rmsg_get_scalar(c, "X-OriginatorOrg"));
    rvals_free(&v);
    if ((ip && m("from (?:\\S*\\.)?hotmail.com \\(\\S+\\.hotmail(?:\\.msn)?\\.com[ \\)]", 0, rcvd)) ||
        (orig && m("from \\S*\\.outbound\\.protection\\.outlook\\.com \\(\\S+\\.outbound\\.protection\\.outlook\\.com[ \\)]", 0, rcvd)) ||
        (orig && m("from \\S*\\.(?:eur|nam)prd\\d+\\.prod\\.outlook\\.com \\(" IP "\\)", 0, rcvd)) ||
        (ip && m("from \\S*\\.hotmail.com \\(\\[" IP "\\][ \\):]", 0, rcvd)) ||
        (ip && m("from \\S+ by \\S+\\.hotmail(?:\\.msn)?\\.com with HTTP\\;", 0, rcvd)) ||
        (ip && m("from \\[66\\.218.\\S+\\] by \\S+\\.yahoo\\.com", 0, rcvd)))
        goto done;
    if (m("(?:from |HELO |helo=)\\S*hotmail\\.com\\b", 0, rcvd))
        f->hotmail_forged = true;
    else if (m("\\bhotmail\\.com$", PCRE2_CASELESS, rmsg_get_scalar(c, "From:addr")))
        f->hotmail_no_rcvd = true;
done:
    free(rcvd);
}

static double
ev_forged_hotmail(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    hotmail(c);
    return rmsg_facts(c)->hotmail_forged;
}

static double
ev_no_hotmail(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    hotmail(c);
    return rmsg_facts(c)->hotmail_no_rcvd;
}

static double
ev_forged_eudoramail(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    if (!m("\\beudoramail\\.com$", PCRE2_CASELESS, rmsg_get_scalar(c, "From:addr")))
        return 0;
    char *rcvd = squash(rmsg_get_scalar(c, "Received"));
    struct rvals v;
    rmsg_get_all(c, "X-Sender-Ip", &v);
    bool ip = v.n && m(IP, 0, rmsg_get_scalar(c, "X-Sender-Ip"));
    rvals_free(&v);
    bool ok = gated(c) || (m("by \\S*whowhere.com\\;", 0, rcvd) && ip);
    free(rcvd);
    return !ok;
}

static double
ev_forged_yahoo(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    const char *from = rmsg_get_scalar(c, "From:addr");
    if (!m("\\byahoo\\.com$", PCRE2_CASELESS, from))
        return 0;
    const char *rc = rmsg_get_scalar(c, "Received");
    if (rmsg_get_scalar(c, "Resent-From")[0] && rmsg_get_scalar(c, "Resent-To")[0] &&
        rmsg_get_scalar(c, "X-Received")[0])
        rc = rmsg_get_scalar(c, "X-Received");
    char *rcvd = squash(rc);
    rmsg_relays(c);
    bool ok = gated(c) ||
              m(" rdns=\\S+\\.yahoo\\.com ", 0, c->relays_str[RELAYS_TRUSTED]) ||
              m("^[^\\]]+ rdns=\\S+\\.yahoo\\.com ", 0, c->relays_str[RELAYS_UNTRUSTED]) ||
              m("by web\\S+\\.mail\\S*\\.yahoo\\.com via HTTP", 0, rcvd) ||
              m("by sonic\\S+\\.consmr\\.mail\\S*\\.yahoo\\.com with HTTP", 0, rcvd) ||
              m("by smtp\\S+\\.yahoo\\.com with SMTP", 0, rcvd) ||
              m("from \\[" IP "\\] by \\S+\\.(?:groups|scd|dcn)\\.yahoo\\.com with NNFMP", 0, rcvd) ||
              (m("\\bmailer\\d+\\.bulk\\.scd\\.yahoo\\.com\\b", 0, rcvd) &&
               m("\\@reply\\.yahoo\\.com$", PCRE2_CASELESS, from)) ||
              m("by \\w+\\.\\w+\\.yahoo\\.com \\(\\d+\\.\\d+\\.\\d+\\/\\d+\\.\\d+\\.\\d+\\)(?: with ESMTP)? id \\w+", 0, rcvd);
    free(rcvd);
    return !ok;
}

static double
ev_forged_juno(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    if (!m("\\bjuno\\.com$", PCRE2_CASELESS, rmsg_get_scalar(c, "From:addr")) || gated(c))
        return 0;
    const char *xorig = rmsg_get_scalar(c, "X-Originating-IP");
    const char *xmailer = rmsg_get_scalar(c, "X-Mailer");
    const char *rcvd = rmsg_get_scalar(c, "Received");
    if (xorig[0]) {
        if (!m("from.*\\b(?:juno|untd)\\.com.*[\\[\\(]" IP "[\\]\\)].*by", 0, rcvd) &&
            !m(" cookie\\.(?:juno|untd)\\.com ", 0, rcvd))
            return 1;
        if (strstr(xmailer, "Juno ") == NULL)
            return 1;
    } else {
        if (m("from.*\\bmail\\.com.*\\[" IP "\\].*by", 0, rcvd)) {
            if (!m("\\bmail\\.com", 0, xmailer))
                return 1;
        } else if (m("from (webmail\\S+\\.untd\\.com) \\(\\1 \\[" IP "\\]\\) by", 0, rcvd)) {
            if (!m("^Webmail Version \\d", 0, xmailer))
                return 1;
        } else {
            return 1;
        }
        if (!m(IP, 0, xorig))
            return 1;
    }
    return 0;
}

static double
ev_forged_gmail(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    if (!m("\\bgmail\\.com$", PCRE2_CASELESS, rmsg_get_scalar(c, "From:addr")))
        return 0;
    const char *xr = rmsg_get_scalar(c, "X-Received");
    if (m("by 10\\.\\S+ with SMTP id \\S+", 0, xr) || m("by 2002\\:a\\d\\d\\:\\w+\\:\\S+ with SMTP id \\S+", 0, xr) ||
        m("by smtp\\.googlemail\\.com with ESMTPSA id \\S+", 0, rmsg_get_scalar(c, "Received")))
        return 0;
    if (strlen(rmsg_get_scalar(c, "X-Gm-Message-State")) >= 60 &&
        strlen(rmsg_get_scalar(c, "X-Google-Smtp-Source")) >= 60)
        return 0;
    return 1;
}

static double
ev_fake_aol_relay(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    char *rcvd = squash(rmsg_get_scalar(c, "Received"));
    double v = 0;
    if (m(" rly-[a-z][a-z]\\d\\d\\.", PCRE2_CASELESS, rcvd))
        v = !m("\\/AOL-\\d+\\.\\d+\\.\\d+\\)", 0, rcvd) && !m("ESMTP id (?:RELAY|MAILRELAY|MAILIN)", 0, rcvd);
    free(rcvd);
    return v;
}

static double
ev_matching_env_and_hdr_from(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    return strcasecmp(rmsg_get_scalar(c, "EnvelopeFrom:addr"), rmsg_get_scalar(c, "From:addr")) == 0;
}

static void
recipients(struct rmsg *c)
{
    struct rmsg_facts *f = rmsg_facts(c);
    if (f->recips_done)
        return;
    f->recips_done = true;
    struct rvals in = { 0 };
    static const char *const reqs[] = { "ToCc:addr", "Bcc:addr" };
    for (size_t k = 0; k < 2; k++) {
        struct rvals v;
        rmsg_get_all(c, reqs[k], &v);
        for (size_t i = 0; i < v.n; i++) {
            in.v = xrealloc(in.v, (in.n + 1) * sizeof(char *));
            in.v[in.n++] = v.v[i];
        }
        free(v.v);
        if (in.n >= 5)
            break;
    }
    /* neighbours that are the same (ignoring case) once; at most 256;
     * "while (my $current = shift @inputs)" stops at an empty one */
    char **addr = xcalloc(in.n + 1, sizeof(char *));
    size_t na = 0;
    const char *prev = "";
    for (size_t i = 0; i < in.n && na < 256; i++) {
        if (in.v[i][0] == '\0' || strcmp(in.v[i], "0") == 0)
            break;
        if (strcasecmp(in.v[i], prev) != 0) {
            addr[na++] = in.v[i];
            prev = in.v[i];
        }
    }
    if (na >= 7) {
        char **sorted = xcalloc(na, sizeof(char *));
        memcpy(sorted, addr, na * sizeof(char *));
        qsort(sorted, na, sizeof(char *), str_ptr_cmp);
        bool same = true;
        for (size_t i = 0; i < na && same; i++)
            same = strcmp(sorted[i], addr[i]) == 0;
        f->tocc_sorted = same;
        free(sorted);
    }
    if (na >= 5) {
        /* @user: the first two characters of each; @fqhn: what follows the
         * first @ of those that have one (a shorter list when some have
         * none, compared by index as Perl does); @host: its first two */
        char **fq = xcalloc(na + 1, sizeof(char *));
        size_t nf = 0;
        for (size_t i = 0; i < na; i++) {
            const char *at = strchr(addr[i], '@');
            if (at)
                fq[nf++] = addr[i] + (at + 1 - addr[i]);
        }
        double hits = 0, comb = 0;
        for (size_t i = 0; i < na; i++)
            for (size_t j = i + 1; j < na; j++) {
                size_t li = strlen(addr[i]) < 2 ? strlen(addr[i]) : 2;
                size_t lj = strlen(addr[j]) < 2 ? strlen(addr[j]) : 2;
                if (li == lj && memcmp(addr[i], addr[j], li) == 0)
                    hits++;
                const char *fi = i < nf ? fq[i] : "", *fj = j < nf ? fq[j] : "";
                size_t hi = strlen(fi) < 2 ? strlen(fi) : 2, hj = strlen(fj) < 2 ? strlen(fj) : 2;
                if (hi == hj && memcmp(fi, fj, hi) == 0 && strcmp(fi, fj) != 0)
                    hits++;
                comb++;
            }
        f->tocc_similar = hits / comb;
        free(fq);
    }
    free(addr);
    rvals_free(&in);
}

static double
ev_sorted_recipients(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    recipients(c);
    return rmsg_facts(c)->tocc_sorted;
}

static double
ev_similar_recipients(struct rmsg *c, const struct sa_rule *r)
{
    recipients(c);
    double v = rmsg_facts(c)->tocc_similar;
    return v >= r->lo && v < r->hi;
}

static double
ev_forged_gw05(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    const char *rcv = rmsg_get_scalar(c, "Received");
    const size_t *ov;
    int rc = rules_re_exec(rules_re("\\nfrom\\s(\\S+)\\sby\\s(\\S+)\\swith\\sESMTP\\;\\s+\\S\\S\\S,\\s+\\d+\\s+\\S\\S\\S\\s+"
                                    "\\d{4}\\s+\\d\\d:\\d\\d:\\d\\d\\s+[-+]*\\d{4}\\n$", PCRE2_DOTALL),
                           rcv, strlen(rcv), 0, &ov);
    return rc > 2 && !memchr(rcv + ov[4], '.', ov[5] - ov[4]);
}

static double
ev_subject_all_caps(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    char *s = xstrdup(rmsg_get_scalar(c, "Subject"));
    const size_t *ov;
    size_t b = 0, e = strlen(s);
    while (b < e && isspace((unsigned char)s[b]))
        b++;
    while (e > b && isspace((unsigned char)s[e - 1]))
        e--;
    s[e] = '\0';
    char *t = s + b;
    if (rules_re_exec(rules_re("^(?:(?:Re|Fwd|Fw|Aw|Antwort|WG|SV|VB|VS|VL):\\s*)+", PCRE2_CASELESS), t,
                      strlen(t), 0, &ov) > 0)
        t += ov[1];
    double v = 0;
    bool space = false;
    for (char *p = t; *p; p++)
        space |= isspace((unsigned char)*p) != 0;
    if (space && strlen(t) >= 10) {
        /* letters only; with a charset that looks like capitals, no */
        char letters[4096];
        size_t n = 0;
        for (char *p = t; *p && n + 1 < sizeof(letters); p++)
            if (isalpha((unsigned char)*p) && (unsigned char)*p < 0x80)
                letters[n++] = *p;
        letters[n] = '\0';
        if (!m("=\\?[-_a-z0-9]*(?:koi|jp|jis|euc|gb|big5|isoir|cp1251|windows-1251|georgianps|pt154|tis)[-_a-z0-9]*\\?",
               PCRE2_CASELESS, rmsg_get_scalar(c, "Subject:raw")) && n) {
            v = 1;
            for (size_t i = 0; i < n && v; i++)
                if (islower((unsigned char)letters[i]))
                    v = 0;
        }
    }
    free(s);
    return v;
}

static int
prep_to_in_subject(struct sa_rule *r, char *why, size_t whysize)
{
    if (strcmp(r->eargs[0], "address") == 0 || strcmp(r->eargs[0], "user") == 0)
        return 0;
    snprintf(why, whysize, "check_for_to_in_subject('%s')", r->eargs[0]);
    return -1;
}

static double
ev_to_in_subject(struct rmsg *c, const struct sa_rule *r)
{
    const char *to = rmsg_get_scalar(c, "To:addr");
    if (to[0] == '\0')
        return 0;
    const char *subject = rmsg_get_scalar(c, "Subject");
    bool address = strcmp(r->eargs[0], "address") == 0;
    /* each pattern below holds the address (or its local part) as a
     * literal, matched without case: not in the Subject, no hit, and no
     * pattern to compile for this message (compiling it was 1% of the
     * rules' CPU, on nearly every message) */
    char user[600];
    snprintf(user, sizeof(user), "%.*s", address ? 600 : (int)strcspn(to, "@"), to);
    if (strcasestr(subject, user) == NULL)
        return 0;
    char re[1400];
    if (address) {
        snprintf(re, sizeof(re), "\\b\\Q%.600s\\E\\b", to);
    } else {
        snprintf(re, sizeof(re),
                 "^(?:(?:re|fw):\\s*(?:\\w+\\s+)?\\Q%s\\E$|(?-i:\\Q%s\\E)\\s*[,:;!?-](?:$|\\s)|\\Q%s\\E$"
                 "|,\\s*\\Q%s\\E[,:;!?-]$)", user, user, user, user);
    }
    if (strstr(to, "\\E"))
        return 0;                   /* \Q...\E cannot hold it: not a real address anyway */
    return rules_re_once(re, PCRE2_CASELESS, subject, strlen(subject)) > 0;
}

static double
ev_messageid_not_usable(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    if (m("<mailto:(?:leave-\\S+|\\S+-unsubscribe)\\@\\S+>$", PCRE2_CASELESS,
          rmsg_get_scalar(c, "List-Unsubscribe")) || gated(c))
        return 1;
    const char *rcvd = rmsg_get_scalar(c, "Received");
    return strstr(rcvd, "/CWT/DCE)") || strstr(rcvd, "iPlanet Messaging Server");
}

/* check_header_count_range: how many different values the field has */
static double
ev_header_count_range(struct rmsg *c, const struct sa_rule *r)
{
    struct rvals v;
    rmsg_get_all(c, r->eargs[0], &v);
    size_t n = 0;
    for (size_t i = 0; i < v.n; i++) {
        bool dup = false;
        for (size_t k = 0; k < i && !dup; k++)
            dup = strcmp(v.v[k], v.v[i]) == 0;
        n += !dup;
    }
    rvals_free(&v);
    return (double)n >= r->lo && (double)n <= r->hi;
}

static int
prep_count_range(struct sa_rule *r, char *why, size_t whysize)
{
    if (strchr(r->eargs[0], ':')) {
        snprintf(why, whysize, "a header modifier in check_header_count_range");
        return -1;
    }
    char *e1, *e2;
    r->lo = strtod(r->eargs[1], &e1);
    r->hi = strtod(r->eargs[2], &e2);
    if (*e1 || *e2) {
        snprintf(why, whysize, "check_header_count_range: not numbers");
        return -1;
    }
    return 0;
}

static double
ev_unresolved_template(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    const char *all = rmsg_get_scalar(c, "ALL");
    for (const char *p = all; *p;) {
        size_t l = strcspn(p, "\n");
        char *line = xstrndup(p, l);
        bool hit = m("%[A-Z][A-Z_-]", 0, line) &&
                   !m("^(?:X-VMS-To|X-UIDL|X-Face|To|Cc|From|Subject|References|In-Reply-To|(?:X-|Resent-|X-Original-)?Message-Id):",
                      PCRE2_CASELESS, line);
        free(line);
        if (hit)
            return 1;
        p += l;
        if (*p)
            p++;
    }
    return 0;
}

static double
ev_ratware_name_id(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    char tail[512];
    if (!cap1("<[A-Z]{28}\\.([^>]+?)>", 0, rmsg_get_scalar(c, "MESSAGEID"), tail, sizeof(tail)))
        return 0;
    if (strstr(tail, "\\E"))
        return 0;
    char re[700];
    snprintf(re, sizeof(re), "\\\"[^\\\"]+\\\"\\s*<\\Q%s\\E>", tail);
    const char *from = rmsg_get_scalar(c, "From");
    return rules_re_once(re, 0, from, strlen(from)) > 0;
}

static double
ev_ratware_envelope_from(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    const char *to = rmsg_get_scalar(c, "To:addr");
    const char *from = rmsg_get_scalar(c, "EnvelopeFrom:addr");
    if (!from[0] || !to[0] || m("^SRS\\d[=+-]", PCRE2_CASELESS, from))
        return 0;
    const size_t *ov;
    if (rules_re_exec(rules_re("^([^@]+)\\@(.+)$", 0), to, strlen(to), 0, &ov) <= 0)
        return 0;
    char user[512], dom[512], host[512], d2[512];
    snprintf(user, sizeof(user), "%.*s", (int)(ov[3] - ov[2]), to + ov[2]);
    snprintf(dom, sizeof(dom), "%.*s", (int)(ov[5] - ov[4]), to + ov[4]);
    rules_split_domain(c->rs, dom, host, sizeof(host), d2, sizeof(d2));
    if (!rules_domain_valid(c->rs, d2, strlen(d2)) || strstr(d2, "\\E") || strstr(user, "\\E"))
        return 0;
    char re[1200];
    snprintf(re, sizeof(re), "\\b\\Q%s\\E.\\Q%s\\E@", d2, user);
    return rules_re_once(re, PCRE2_CASELESS, from, strlen(from)) > 0;
}

/* check_illegal_chars: 8-bit and control characters in a raw field */
static double
ev_illegal_chars(struct rmsg *c, const struct sa_rule *r)
{
    char req[300];
    size_t hl = strlen(r->eargs[0]);
    snprintf(req, sizeof(req), "%s%s", r->eargs[0], hl > 4 && strcmp(r->eargs[0] + hl - 4, ":raw") == 0 ? "" : ":raw");
    const char *str = rmsg_get_scalar(c, req);
    bool nonblank = false, high = false, ctl = false;
    size_t n = strlen(str), illegal = 0, exempt = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)str[i];
        nonblank |= !isspace(ch);
        high |= ch >= 0x80;
        bool c0 = ch <= 0x08 || ch == 0x0b || ch == 0x0c || (ch >= 0x0e && ch <= 0x1f);
        ctl |= c0;
        if (c0 || ch >= 0x7f)
            illegal++;
        if (ch == 0xa2 || ch == 0xa3 || ch == 0xae)
            exempt++;
    }
    if (!nonblank)
        return 0;
    if (high && g_utf8_validate(str, (gssize)n, NULL) && !ctl)
        return 0;               /* valid UTF-8 without controls */
    if (illegal > 0 && strcasecmp(req, "subject:raw") == 0 && exempt == 1)
        illegal--;
    return (double)illegal / (double)n >= strtod(r->eargs[1], NULL) &&
           (double)illegal >= strtod(r->eargs[2], NULL);
}

static int
prep_illegal(struct sa_rule *r, char *why, size_t whysize)
{
    char *e1, *e2;
    strtod(r->eargs[1], &e1);
    strtod(r->eargs[2], &e2);
    if (*e1 || *e2) {
        snprintf(why, whysize, "check_illegal_chars: not numbers");
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------ RelayEval */

static double
ev_numeric_helo(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    rmsg_relays(c);
    char ip[64];
    if (cap1("\\bhelo=(" IP4 ")(?=[\\000-\\040,;\\[()<>]|\\z)", PCRE2_CASELESS,
             c->relays_str[RELAYS_UNTRUSTED], ip, sizeof(ip)))
        return !is_private(ip);
    return 0;
}

static bool
is_v4(const char *s)
{
    return m("^" IP4 "$", 0, s);
}

static double
ev_helo_ip_mismatch(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    rmsg_relays(c);
    for (size_t i = c->ntrusted; i < c->nrelays; i++) {
        const struct relay *rl = &c->relays[i];
        if (!is_v4(rl->helo) || is_private(rl->helo))
            continue;
        char pre[64];
        if (is_v4(rl->ip) && !is_private(rl->ip) && strcmp(rl->helo, rl->ip) != 0 &&
            cap1("^(\\d+\\.\\d+\\.\\d+\\.)", 0, rl->helo, pre, sizeof(pre)) &&
            strncmp(rl->ip, pre, strlen(pre)) != 0)
            return 1;
    }
    return 0;
}

static double
ev_all_trusted(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    rmsg_relays(c);
    return c->ntrusted && c->nrelays == c->ntrusted && c->nunparseable == 0;
}

static double
ev_no_relays(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    rmsg_relays(c);
    return c->nrelays == 0 && c->nunparseable == 0;
}

static double
ev_relays_unparseable(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    rmsg_relays(c);
    return c->nunparseable > 0;
}

static double
ev_sender_no_reverse(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    rmsg_relays(c);
    if (c->nrelays == c->ntrusted)
        return 0;
    const struct relay *s = &c->relays[c->nrelays - 1];
    return strchr(s->rdns, '.') && !s->ip_private;
}

static double
ev_no_rdns_dotcom_helo(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    struct rmsg_facts *f = rmsg_facts(c);
    if (!f->helos_done) {
        f->helos_done = true;
        rmsg_relays(c);
        for (size_t i = c->ntrusted; i < c->nrelays; i++) {
            const struct relay *rl = &c->relays[i];
            if (rl->ip_private)
                continue;
            f->no_rdns_dotcom_helo = false;
            if (m("(?:\\.|^)(lycos\\.com|lycos\\.co\\.uk|hotmail\\.com|localhost\\.com|excite\\.com|caramail\\.com"
                  "|cs\\.com|aol\\.com|msn\\.com|yahoo\\.com|drizzle\\.com)$", PCRE2_CASELESS, rl->helo) &&
                rl->no_reverse_dns)
                f->no_rdns_dotcom_helo = true;
        }
    }
    return f->no_rdns_dotcom_helo;
}

static void
hostname_to_domain(const char *h, char *out, size_t size)
{
    bool alpha = false;
    for (const char *p = h; *p; p++)
        alpha |= isalpha((unsigned char)*p) != 0;
    if (!alpha) {
        str_copy(out, h, size);
        return;
    }
    /* the parts (Perl's split drops the empty ones at the end) */
    const char *parts[64];
    size_t pl[64], np = 0;
    for (const char *p = h; np < 64;) {
        const char *dot = strchr(p, '.');
        size_t l = dot ? (size_t)(dot - p) : strlen(p);
        parts[np] = p;
        pl[np++] = l;
        if (!dot)
            break;
        p = dot + 1;
    }
    while (np && pl[np - 1] == 0)
        np--;
    char last[256];
    snprintf(last, sizeof(last), "%.*s", np ? (int)pl[np - 1] : 0, np ? parts[np - 1] : "");
    size_t from = 0;
    if (np > 1 && m("(?:\\S{3,}|ie|fr|de)", 0, last))
        from = np - 2;
    else if (np > 2)
        from = np - 3;
    else {
        str_copy(out, h, size);
        return;
    }
    out[0] = '\0';
    for (size_t i = from; i < np; i++) {
        if (i > from)
            strncat(out, ".", size - strlen(out) - 1);
        char t[256];
        snprintf(t, sizeof(t), "%.*s", (int)pl[i], parts[i]);
        strncat(out, t, size - strlen(out) - 1);
    }
}

static void
forged_received(struct rmsg *c)
{
    struct rmsg_facts *f = rmsg_facts(c);
    if (f->forged_done)
        return;
    f->forged_done = true;
    rmsg_relays(c);
    size_t nu = c->nrelays - c->ntrusted;
    const struct relay *u = c->relays + c->ntrusted;
    char (*by)[256] = xcalloc(nu + 1, 256), (*from)[256] = xcalloc(nu + 1, 256),
         (*helo)[256] = xcalloc(nu + 1, 256);
    bool *from_undef = xcalloc(nu + 1, sizeof(bool));
    for (size_t i = 0; i < nu; i++) {
        char lc[256];
        snprintf(lc, sizeof(lc), "%s", u[i].by);
        for (char *p = lc; *p; p++)
            *p = (char)tolower((unsigned char)*p);
        hostname_to_domain(lc, by[i], 256);
        snprintf(lc, sizeof(lc), "%s", u[i].rdns);
        for (char *p = lc; *p; p++)
            *p = (char)tolower((unsigned char)*p);
        hostname_to_domain(lc, from[i], 256);
        snprintf(lc, sizeof(lc), "%s", u[i].helo);
        for (char *p = lc; *p; p++)
            *p = (char)tolower((unsigned char)*p);
        hostname_to_domain(lc, helo[i], 256);
    }
    for (size_t i = 0; i < nu; i++) {
        if (!m("^\\w+(?:[\\w.-]+\\.)+\\w+$", 0, by[i]))
            continue;
        if (m("^localhost(?:\\.localdomain)?$", 0, from[i]) && strcmp(u[i].ip, "127.0.0.1") == 0)
            from_undef[i] = true;
        const char *hlo = helo[i], *fip = u[i].ip;
        if (m("^\\d+\\.\\d+\\.\\d+\\.\\d+$", 0, hlo) && m("^\\d+\\.\\d+\\.\\d+\\.\\d+$", 0, fip) &&
            strcmp(fip, hlo) != 0) {
            char hb[64], fb[64];
            if (cap1("^(\\d+\\.\\d+)\\.\\d+\\.\\d+$", 0, hlo, hb, sizeof(hb)) &&
                cap1("^(\\d+\\.\\d+)\\.\\d+\\.\\d+$", 0, fip, fb, sizeof(fb)) && strcmp(hb, fb) != 0 &&
                !is_private(hlo))
                f->mismatch_ip_helo++;
        }
        /* $from[$i-1]: for i == 0 Perl's last element, but then i > 0 fails */
        if (i > 0 && !from_undef[i - 1] && m("^\\w+(?:[\\w.-]+\\.)+\\w+$", 0, from[i - 1]) &&
            strcmp(by[i], from[i - 1]) != 0 &&
            !(strcmp(by[i], "msn.com") == 0 && strcmp(from[i - 1], "hotmail.com") == 0))
            f->mismatch_from++;
    }
    free(by);
    free(from);
    free(helo);
    free(from_undef);
}

static double
ev_forged_received_trail(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    forged_received(c);
    return rmsg_facts(c)->mismatch_from > 1;
}

static double
ev_forged_received_ip_helo(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    forged_received(c);
    return rmsg_facts(c)->mismatch_ip_helo > 0;
}

/* WLBLEval's check_mailfrom_matches_rcvd: the envelope sender's domain is
 * the domain of the first untrusted relay's rDNS (or of a trusted one) */
static double
ev_mailfrom_matches_rcvd(struct rmsg *c, const struct sa_rule *r)
{
    (void)r;
    const char *sender = rmsg_get_scalar(c, "EnvelopeFrom:addr");
    char ad[512];
    if (!sender[0] || !cap1("\\@([^\\@]+\\.[^\\@]+)\\z", 0, sender, ad, sizeof(ad)))
        return 0;
    rmsg_relays(c);
    size_t from, to;
    if (c->nrelays > c->ntrusted) {
        from = c->ntrusted;
        to = from + 1;
    } else if (c->ntrusted) {
        from = 0;
        to = c->ntrusted;
    } else {
        return 0;
    }
    char ah[512], adom[512];
    rules_split_domain(c->rs, ad, ah, sizeof(ah), adom, sizeof(adom));
    for (size_t i = from; i < to; i++) {
        if (c->relays[i].rdns[0] == '\0')
            continue;
        char rh[512], rd[512];
        rules_split_domain(c->rs, c->relays[i].rdns, rh, sizeof(rh), rd, sizeof(rd));
        if (strcmp(adom, rd) == 0)
            return 1;
    }
    return 0;
}

static double
ev_zero(struct rmsg *c, const struct sa_rule *r)
{
    (void)c;
    (void)r;
    return 0;
}

const struct evdef rules_evals_header[] = {
    { "check_outlook_message_id", 0, 0, ev_outlook_message_id, NULL },
    { "check_equal_from_domains", 0, 0, ev_equal_from_domains, NULL },
    { "check_for_missing_to_header", 0, 0, ev_missing_to_header, NULL },
    { "gated_through_received_hdr_remover", 0, 0, ev_gated, NULL },
    { "check_for_msn_groups_headers", 0, 0, ev_msn_groups, NULL },
    { "check_for_forged_hotmail_received_headers", 0, 0, ev_forged_hotmail, NULL },
    { "check_for_no_hotmail_received_headers", 0, 0, ev_no_hotmail, NULL },
    { "check_for_forged_eudoramail_received_headers", 0, 0, ev_forged_eudoramail, NULL },
    { "check_for_forged_yahoo_received_headers", 0, 0, ev_forged_yahoo, NULL },
    { "check_for_forged_juno_received_headers", 0, 0, ev_forged_juno, NULL },
    { "check_for_forged_gmail_received_headers", 0, 0, ev_forged_gmail, NULL },
    { "check_for_fake_aol_relay_in_rcvd", 0, 0, ev_fake_aol_relay, NULL },
    { "check_for_matching_env_and_hdr_from", 0, 0, ev_matching_env_and_hdr_from, NULL },
    { "sorted_recipients", 0, 0, ev_sorted_recipients, NULL },
    { "similar_recipients", 2, 2, ev_similar_recipients, rules_eval_prep_numbers },
    { "check_for_forged_gw05_received_headers", 0, 0, ev_forged_gw05, NULL },
    { "subject_is_all_caps", 0, 0, ev_subject_all_caps, NULL },
    { "check_for_to_in_subject", 1, 1, ev_to_in_subject, prep_to_in_subject },
    { "check_messageid_not_usable", 0, 0, ev_messageid_not_usable, NULL },
    { "check_header_count_range", 3, 3, ev_header_count_range, prep_count_range },
    { "check_unresolved_template", 0, 0, ev_unresolved_template, NULL },
    { "check_ratware_name_id", 0, 0, ev_ratware_name_id, NULL },
    { "check_ratware_envelope_from", 0, 0, ev_ratware_envelope_from, NULL },
    { "check_illegal_chars", 3, 3, ev_illegal_chars, prep_illegal },
    { "check_for_unique_subject_id", 0, 0, ev_zero, NULL },     /* deprecated: 0 */
    { "check_for_illegal_ip", 0, 0, ev_zero, NULL },            /* no longer available: 0 */
    { "check_for_numeric_helo", 0, 0, ev_numeric_helo, NULL },
    { "helo_ip_mismatch", 0, 0, ev_helo_ip_mismatch, NULL },
    { "check_all_trusted", 0, 0, ev_all_trusted, NULL },
    { "check_no_relays", 0, 0, ev_no_relays, NULL },
    { "check_relays_unparseable", 0, 0, ev_relays_unparseable, NULL },
    { "check_for_sender_no_reverse", 0, 0, ev_sender_no_reverse, NULL },
    { "check_for_no_rdns_dotcom_helo", 0, 0, ev_no_rdns_dotcom_helo, NULL },
    { "check_for_forged_received_trail", 0, 0, ev_forged_received_trail, NULL },
    { "check_for_forged_received_ip_helo", 0, 0, ev_forged_received_ip_helo, NULL },
    { "check_mailfrom_matches_rcvd", 0, 0, ev_mailfrom_matches_rcvd, NULL },
};
const size_t rules_nevals_header = sizeof(rules_evals_header) / sizeof(rules_evals_header[0]);
