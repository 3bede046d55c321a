/* Unit tests: the rules plugin's reading of a message as SpamAssassin reads
 * it (filters/rules*.c, through rules_test_message, the plugin's matching
 * code): pseudo-fields, body lines, patterns PCRE2 finds too large, HTML
 * ending inside a tag, eval tests flagged net, dates against Received.
 * What the whole corpus says is tests/fidelity (SpamAssassin as oracle). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include "../../filters/filters.h"
#include "../../filters/rules_eval.h"

static struct ruleset *
load(const char *text)
{
    char path[] = "/tmp/moat-test-rules-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    char err[256];
    struct ruleset *rs = ruleset_load(path, 2, NULL, err, sizeof(err));
    unlink(path);
    assert_non_null(rs);
    return rs;
}

static const struct sa_rule *
rule(const struct ruleset *rs, const char *name)
{
    for (size_t i = 0; i < rs->n; i++)
        if (strcmp(rs->r[i].name, name) == 0)
            return &rs->r[i];
    fail_msg("no rule %s", name);
    return NULL;
}

/* The hits of rule name on the message (LF line ends made CRLF). */
static double
hits(const struct ruleset *rs, const char *name, const char *msg)
{
    size_t n = strlen(msg), o = 0;
    char *crlf = malloc(2 * n + 1);
    for (size_t i = 0; i < n; i++) {
        if (msg[i] == '\n')
            crlf[o++] = '\r';
        crlf[o++] = msg[i];
    }
    double *val = calloc(rs->n + 1, sizeof(double));
    rules_test_message(rs, crlf, o, "", val);
    double v = val[rule(rs, name) - rs->r];
    free(val);
    free(crlf);
    return v;
}

#define RCVD "Received: from mail.example.org (mail.example.org [192.0.2.1])\n" \
             "\tby mx.example.net with ESMTP id A1; Tue, 14 May 2024 20:00:00 +0000\n"

static void
test_tocc_is_to_or_cc(void **state)
{
    (void)state;
    /* exists:ToCc is SpamAssassin's pseudo-field (To and Cc), not a field
     * called ToCc: REPLYTO_WITHOUT_TO_CC fired on every Reply-To */
    struct ruleset *rs = load("header __HAS_REPLY_TO exists:Reply-To\n"
                              "header __TOCC_EXISTS exists:ToCc\n"
                              "meta REPLYTO_WITHOUT_TO_CC (__HAS_REPLY_TO && !__TOCC_EXISTS)\n"
                              "score REPLYTO_WITHOUT_TO_CC 1.5\n"
                              "header TOCC_DOMAIN ToCc =~ /\\@example\\.net/\n");
    const char *to = RCVD "From: a@example.org\nTo: b@example.net\nReply-To: r@example.org\n"
                          "Subject: s\n\nbody\n";
    const char *cc = RCVD "From: a@example.org\nCc: c@example.net\nReply-To: r@example.org\n"
                          "Subject: s\n\nbody\n";
    const char *none = RCVD "From: a@example.org\nToCc: b@example.net\nReply-To: r@example.org\n"
                            "Subject: s\n\nbody\n";
    assert_true(hits(rs, "REPLYTO_WITHOUT_TO_CC", to) == 0);
    assert_true(hits(rs, "REPLYTO_WITHOUT_TO_CC", cc) == 0);
    assert_true(hits(rs, "REPLYTO_WITHOUT_TO_CC", none) == 1);
    assert_true(hits(rs, "TOCC_DOMAIN", cc) == 1);
    assert_true(hits(rs, "TOCC_DOMAIN", none) == 0);
    ruleset_free(&rs);
}

static void
test_body_line_ends(void **state)
{
    (void)state;
    /* SpamAssassin matches each body line (paragraph) on its own, its "\n"
     * kept: '$' matches after it too, where the whole body text has the
     * next line */
    struct ruleset *rs = load("body LINE_END /^Business\\s{1,4}$/m\n"
                              "body NOT_ACROSS /Business\\s+Regards/\n"
                              "body DOLLAR_IN_CLASS /cost[$]5/\n");
    const char *m = RCVD "From: a@example.org\nTo: b@example.net\nSubject: s\n\n"
                         "Dear friend,\n\nBusiness\n\nRegards, the cost$5 man\n";
    assert_true(hits(rs, "LINE_END", m) == 1);
    assert_true(hits(rs, "NOT_ACROSS", m) == 0);
    assert_true(hits(rs, "DOLLAR_IN_CLASS", m) == 1);
    bool bad;
    char *d = rules_re_dollar("a$[$]\\$b", &bad);
    assert_string_equal(d, "a(?:$|(?<=\\n))[$]\\$b");
    free(d);
    assert_null(rules_re_dollar("no dollar [$] \\$", &bad));
    assert_false(bad);
    assert_null(rules_re_dollar("\\Qa$\\E", &bad));
    assert_true(bad);
    ruleset_free(&rs);
}

static void
test_patterns_too_large_for_pcre2(void **state)
{
    (void)state;
    /* a ReplaceTags rule as large as __FILL_THIS_FORM_LONG1: Perl takes it,
     * PCRE2 (link size 2) only with its repeating groups called */
    char *tags = calloc(1, 200000);
    strcat(tags, "replace_tag W (?:");
    for (int i = 0; i < 300; i++)
        sprintf(tags + strlen(tags), "%sword%03d", i ? "|" : "", i);
    strcat(tags, ")\nbody BIG /(?:");
    for (int i = 0; i < 40; i++)
        strcat(tags, "<W>[\\s,]{1,10}(?:and\\s)?");
    strcat(tags, "end){1,2}/i\nreplace_rules BIG\n");
    struct ruleset *rs = load(tags);
    assert_int_equal(rule(rs, "BIG")->type, RULE_BODY);
    char *msg = calloc(1, 4096);
    strcpy(msg, RCVD "From: a@example.org\nTo: b@example.net\nSubject: s\n\n");
    for (int i = 0; i < 40; i++)
        sprintf(msg + strlen(msg), "WORD%03d, ", (i * 7) % 300);
    strcat(msg, "end\n");
    assert_true(hits(rs, "BIG", msg) == 1);
    msg[strlen(msg) - 5] = ';';         /* "; end": no longer */
    assert_true(hits(rs, "BIG", msg) == 0);
    free(msg);
    free(tags);
    ruleset_free(&rs);
    /* what is not rewritten */
    assert_null(rules_re_shrink("(a+)\\1(a+)\\1", 0));            /* back-references */
    assert_null(rules_re_shrink("(?<n>abcdefghijklmn)(?&n)", 0)); /* named groups */
    assert_null(rules_re_shrink("(?i)(?:abcdefghijklmn){2}", 0)); /* options */
    char *s = rules_re_shrink("x(?:abcdefghijklmn){1,9}y(?:abcdefghijklmn)", 0);
    assert_string_equal(s, "x(?&_r0){1,9}y(?&_r0)(?(DEFINE)(?<_r0>(?:abcdefghijklmn)))");
    free(s);
}

/* rules_re_ascii (rules_re_shrink.c): a pattern as it reads a text with
 * no byte above 0x7f, each alternative that needs one left out. */
static void
test_patterns_for_ascii_text(void **state)
{
    (void)state;
    static const struct { const char *in, *out; } cases[] = {
        { "a(?:b|[\\xce][\\xa1])c", "a(?:b)c" },
        { "(?:[\\xf0][\\x9d]x|[pP\\xd1])+y", "(?:[pP\\xd1])+y" },
        { "x(?:[\\xce]z)", "(?!)" },                        /* nothing left: cannot match */
        { "(?![\\xce\\xcf-\\xd0])ab|c", "(?!(?!))ab|c" },   /* a look-ahead that cannot */
        { "\\xe4x|y", "y" },
        { "(?i:\\xe4|a)[\\x80-\\xbf]{2}|b", "b" },
        { "(?<=[\\xce])a|b", "b" },
        { "[\\xce]?a", NULL },                            /* optional: nothing left out */
        { "[\\xce]{0,2}a", NULL },
        { "[^\\xce]a", NULL },
        { "[\\xce a]a", NULL },
        { "(a)\\1|[\\xce]", NULL },                        /* back-references: not read */
        { "(?(1)a|[\\xce])", NULL },
        /* a bare option setting holds on into the later alternatives (or,
         * at the top, the rest of the pattern), and x reads # as a comment:
         * not rewritten (PCRE2 10.42: the first two rewritten missed
         * VIAGRA and ROLEX, the third matched abc, which its original does
         * not) */
        { "\\xce\\xa1(?i)|viagra", NULL },
        { "\\b(?:[\\xce][\\xa1](?i)x|rolex)\\b", NULL },
        { "(?x)\\xff # c|abc", NULL },
        { "(?x:zz #|\\xce\n|Get\n)", NULL },
        { "(?i:\\xce|viagra)|\\xe4", "(?i:viagra)" },     /* scoped: rewritten */
        { "abc", NULL },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *a = rules_re_ascii(cases[i].in);
        if (cases[i].out == NULL)
            assert_null(a);
        else
            assert_string_equal(a, cases[i].out);
        free(a);
    }
    /* as a prefilter for an ASCII text (rules_re_ascii_pf): a class's
     * bytes over 0x7f left out too, a group of digits only as [0-9]* */
    static const struct { const char *in, *out; } pf[] = {
        { "a(?:b|[\\xce][\\xa1])c", "a(?:b)c" },
        { "(?:[eE3\\xb8\\xc5]|[\\xce][\\x95])x", "(?:[eE3])x" },
        { "[a\\xe0-\\xe6\xe4]b", "[a]b" },
        { "&#(?:1(?:0(?:13|2[458])|108)|2[0-3]);|e", "&#(?:[0-9]*);|e" },
        { "(?:1-2|3)[a\\xe4]", "(?:1-2|3)[a]" },         /* '-' outside a class: a digit it is not */
        { "(?:1(?:2)?|3*|45)x[a\\xe4]|y", "(?:[0-9]*)x[a]|y" },
        { "[^\\xe4]a", NULL },                           /* negated, a range from below: as they are */
        { "[a-\\xe4]", NULL },
        { "(?:12|3)x", NULL },                             /* no shorter: not written */
        { "[\\x4\xe4" "e]|\\xce", "[\\x4\xe4" "e]" },   /* \x4e once \xe4 is gone: kept */
        /* a '^' left first would negate the class: kept as it is */
        { "q[\\xe4^a]zq|\\xe4\\xe4", "q[\\xe4^a]zq" },
        /* a '-' in a class is a digit only between two: [0-9-] holds '-' */
        { "(?:12|[0-9-]*)x[a\\xe4]", "(?:12|[0-9-]*)x[a]" },
        { "(?:12|[-0-9]*)x[a\\xe4]", "(?:12|[-0-9]*)x[a]" },
        { "(?:12|[1-2-5]*)x[a\\xe4]", "(?:12|[1-2-5]*)x[a]" },
        { "(?:1[2-3]|4)x[a\\xe4]", "(?:[0-9]*)x[a]" },
    };
    for (size_t i = 0; i < sizeof(pf) / sizeof(pf[0]); i++) {
        char *a = rules_re_ascii_pf(pf[i].in);
        if (pf[i].out == NULL)
            assert_null(a);
        else if (a == NULL || strcmp(a, pf[i].out) != 0)
            fail_msg("pf %zu: %s, not %s", i, a ? a : "NULL", pf[i].out);
        free(a);
    }
    /* a look-alike rule over 3,000 bytes (the body prefilter leaves it
     * out): still found in an ASCII text, through its own prefilter, and
     * in a text with other bytes, as written */
    char *rf = calloc(1, 20000);
    strcat(rf, "replace_tag E (?:[eE3]|[\\xce][\\x95\\xad]|[\\xf0][\\x9d][\\x90][\\x84\\x9e])\n"
               "replace_tag R (?:[rR]|[\\xd0][\\xb3]|[\\xf0][\\x9d][\\x90][\\x91\\xab])\n"
               "body LOOK /(?:^|\\s)(?:");
    for (int i = 0; i < 12; i++)
        sprintf(rf + strlen(rf), "%s<E><R><R>%c%c<E><R>", i ? "|" : "", 'a' + i, 'a' + i);
    strcat(rf, ")\\b/i\nreplace_rules LOOK\nscore LOOK 1\n");
    struct ruleset *rs = load(rf);
    assert_true(strlen(rule(rs, "LOOK")->src) > 3000);
    assert_false(rule(rs, "LOOK")->prefiltered);
    assert_non_null(rules_re_ascii_of(rs, (size_t)(rule(rs, "LOOK") - rs->r)));
    assert_true(rules_re_ascii_prefiltered(rs, (size_t)(rule(rs, "LOOK") - rs->r)));
    const char *head = RCVD "From: a@example.org\nTo: b@example.net\nSubject: s\n"
                            "Content-Type: text/plain; charset=utf-8\n\n";
    static const struct { const char *body; unsigned hits; } msgs[] = {
        { "see ERRdd3r now\n", 1 },                          /* ASCII, a hit */
        { "see ERRddxr now\n", 0 },                          /* ASCII, none */
        { "see errdd er now\n", 0 },
        { "caf\xc3\xa9: see \xce\x95RRgg\xce\xadR now\n", 1 },  /* look-alikes */
        { "caf\xc3\xa9: see ERRhhER now\n", 1 },           /* not ASCII, an ASCII hit */
        { "caf\xc3\xa9: see \xce\x95RRgg now\n", 0 },
        /* the other bytes in one paragraph, the hit in another (of ASCII:
         * through the prefilter), and the other way round */
        { "caf\xc3\xa9\n\nsee ERRhhER now\n", 1 },
        { "caf\xc3\xa9\n\nsee ERRhhxR now\n", 0 },
        { "see \xce\x95RRgg\xce\xadR\n\nplain words\n", 1 },
        { "see \xce\x95RRgg\xce\xadR, \xce\x95RRii\xce\xadR\n\nERRjjER\n", 1 },
    };
    for (size_t i = 0; i < sizeof(msgs) / sizeof(msgs[0]); i++) {
        char msg[512];
        snprintf(msg, sizeof(msg), "%s%s", head, msgs[i].body);
        double h = hits(rs, "LOOK", msg);
        if (h != msgs[i].hits)
            fail_msg("message %zu: %g hits, not %u", i, h, msgs[i].hits);
    }
    ruleset_free(&rs);
    free(rf);
}

static void
test_html_ending_inside_a_tag(void **state)
{
    (void)state;
    /* HTML::Parser's eof() reports an unterminated tag as a comment: not text */
    struct ruleset *rs = load("body TAIL /3YMLffs/\nbody HEAD /Click Here to Enter/\n"
                              "rawbody RAW_TAIL /3YMLffs/\n");
    const char *m = RCVD "From: a@example.org\nTo: b@example.net\nSubject: s\n"
                         "MIME-Version: 1.0\nContent-Type: text/html\n\n"
                         "<p>Click Here to Enter!</p><a href=http://www.example.org/x ta.\n"
                         "3YMLffs0V1go6Cnd\n";
    assert_true(hits(rs, "HEAD", m) == 1);
    assert_true(hits(rs, "TAIL", m) == 0);
    assert_true(hits(rs, "RAW_TAIL", m) == 1);
    ruleset_free(&rs);
}

static void
test_net_evals_read_0_without_network_tests(void **state)
{
    (void)state;
    /* SpamAssassin skips an eval flagged net in score sets 0 and 2: it
     * reads 0, and the metas over it run */
    struct ruleset *rs = load("header NET_PERL eval:some_perl_dns_test()\ntflags NET_PERL net\n"
                              "meta NOT_NET !NET_PERL\nscore NOT_NET 1\n"
                              "header LOCAL_PERL eval:some_perl_test()\n"
                              "meta NOT_LOCAL !LOCAL_PERL\nscore NOT_LOCAL 1\n"
                              "header DKIM_DEP eval:check_dkim_dependable()\n");
    assert_int_equal(rule(rs, "NET_PERL")->type, RULE_EVAL);
    assert_int_equal(rule(rs, "NOT_NET")->type, RULE_META);
    assert_int_equal(rule(rs, "LOCAL_PERL")->type, RULE_UNSUPPORTED);
    assert_int_equal(rule(rs, "NOT_LOCAL")->type, RULE_UNSUPPORTED);
    assert_int_equal(rule(rs, "DKIM_DEP")->type, RULE_EVAL);
    const char *m = RCVD "From: a@example.org\nTo: b@example.net\nSubject: s\n\nbody\n";
    assert_true(hits(rs, "NOT_NET", m) == 1);
    assert_true(hits(rs, "DKIM_DEP", m) == 0);
    ruleset_free(&rs);
}

static void
test_date_against_received(void **state)
{
    (void)state;
    /* DATE_IN_PAST_*: Date against the date of the Received field
     * SpamAssassin picks, not against the time of the scan */
    struct ruleset *rs = load("header PAST_06_12 eval:check_for_shifted_date('-12', '-6')\n"
                              "header PAST_03_06 eval:check_for_shifted_date('-6', '-3')\n"
                              "header FUTURE eval:check_for_shifted_date('3', '6')\n");
    const char *m = RCVD "From: a@example.org\nTo: b@example.net\nSubject: s\n"
                         "Date: Tue, 14 May 2024 10:30:00 +0000\n\nbody\n";
    assert_true(hits(rs, "PAST_06_12", m) == 1);
    assert_true(hits(rs, "PAST_03_06", m) == 0);
    const char *f = RCVD "From: a@example.org\nTo: b@example.net\nSubject: s\n"
                         "Date: Wed, 15 May 2024 00:30:00 +0200\n\nbody\n";
    assert_true(hits(rs, "FUTURE", f) == 0);               /* 22:30 UTC: 2.5 h ahead */
    const char *g = RCVD "From: a@example.org\nTo: b@example.net\nSubject: s\n"
                         "Date: Wed, 15 May 2024 01:30:00 +0000\n\nbody\n";
    assert_true(hits(rs, "FUTURE", g) == 1);
    ruleset_free(&rs);
}

/* Util.pm's parse_rfc822_date as sa_parse_date reads it, white space and
 * commas in odd places (the values are main's at 8cd84c3, before the
 * spacing was collapsed in one pass instead of a pattern). */
static void
test_parse_date_spacing(void **state)
{
    (void)state;
    static const struct { const char *d; long long t; } cases[] = {
        { "Tue, 2 Jan 2024 03:04:05 +0100", 1704161045 },
        { "Tue,  2 Jan 2024 03:04:05 +0100", 1704161045 },
        { "  Tue,\t 2\t\tJan 2024   03:04:05 -0800  ", 1704193445 },
        { "2 Jan 2024 03:04 GMT", 1704164640 },
        { ",,2 Jan 2024 03:04:05 PST", 1704193445 },
        { "Mon, 1 Jan 24 10:00:00 +0000,", 1704103200 },
        { "Jan  5 10:11:12 2023", 1672876800 },
        { "\t\n", -1 },
        { "", -1 },
        { "1, Jan, 2020, 00:00:00, EST", 1577854800 },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        assert_int_equal((long long)sa_parse_date(cases[i].d), cases[i].t);
}

static void
test_to_in_subject(void **state)
{
    (void)state;
    /* check_for_to_in_subject: the address or its local part in the
     * Subject as SpamAssassin's patterns find it (mostly without regard
     * to case), and no hit when it is not there at all */
    struct ruleset *rs = load("header LOCALPART_IN_SUBJECT eval:check_for_to_in_subject('user')\n"
                              "score LOCALPART_IN_SUBJECT 1\n"
                              "header TO_IN_SUBJ eval:check_for_to_in_subject('address')\n"
                              "score TO_IN_SUBJ 1\n");
    const char *head = RCVD "From: a@example.org\nTo: John.Smith@example.net\n";
    static const struct { const char *subject; double user, address; } cases[] = {
        { "Subject: Re: JOHN.SMITH\n", 1, 0 },
        { "Subject: John.Smith, your invoice\n", 1, 0 },
        { "Subject: john.smith, your invoice\n", 0, 0 },       /* that part minds case */
        { "Subject: mail for JOHN.SMITH@EXAMPLE.NET today\n", 0, 1 },
        { "Subject: Re: Jane\n", 0, 0 },
        { "Subject: your invoice\n", 0, 0 },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char msg[512];
        snprintf(msg, sizeof(msg), "%s%s\nbody\n", head, cases[i].subject);
        assert_true(hits(rs, "LOCALPART_IN_SUBJECT", msg) == cases[i].user);
        assert_true(hits(rs, "TO_IN_SUBJ", msg) == cases[i].address);
    }
    ruleset_free(&rs);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tocc_is_to_or_cc),
        cmocka_unit_test(test_body_line_ends),
        cmocka_unit_test(test_patterns_too_large_for_pcre2),
        cmocka_unit_test(test_patterns_for_ascii_text),
        cmocka_unit_test(test_html_ending_inside_a_tag),
        cmocka_unit_test(test_net_evals_read_0_without_network_tests),
        cmocka_unit_test(test_date_against_received),
        cmocka_unit_test(test_to_in_subject),
        cmocka_unit_test(test_parse_date_spacing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
