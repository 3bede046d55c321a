/* Unit tests: the SpamAssassin rule reader (filters/rules_parse.c), meta
 * expressions (filters/rules_expr.c), the text the content filters read
 * (filters/text.c) and the Bayes tokenizer (filters/bayes_tokens.c). */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <pcre2.h>
#include "../../filters/filters.h"
#include "../../filters/rules_eval.h"
#include "../fixtures/rules_form.h"

static const char *const names[] = { "A", "B", "C", NULL };

static int
resolve(const char *name, size_t len, void *ctx)
{
    (void)ctx;
    for (int i = 0; names[i]; i++)
        if (strlen(names[i]) == len && strncmp(names[i], name, len) == 0)
            return i;
    return -1;
}

static double
eval(const char *expr, double a, double b, double c)
{
    char err[128];
    struct rexpr *e = rexpr_compile(expr, resolve, NULL, err, sizeof(err));
    assert_non_null(e);
    double v[3] = { a, b, c };
    double r = rexpr_eval(e, v);
    rexpr_free(&e);
    return r;
}

static void
test_meta_expressions(void **state)
{
    (void)state;
    assert_true(eval("A && !B", 1, 0, 0) == 1);
    assert_true(eval("A && !B", 1, 1, 0) == 0);
    assert_true(eval("A || B && C", 1, 0, 0) == 1);         /* && binds tighter */
    assert_true(eval("(A || B) && C", 1, 0, 0) == 0);
    assert_true(eval("A + B + C > 1", 1, 0, 1) == 1);
    assert_true(eval("A + B + C > 1", 1, 0, 0) == 0);
    assert_true(eval("A * 2 - 1 == 1", 1, 0, 0) == 1);
    assert_true(eval("!A || UNKNOWN", 1, 0, 0) == 0);       /* an unknown rule reads 0 */
    assert_true(eval("-A + 2 >= 1", 1, 0, 0) == 1);
    char err[128];
    assert_null(rexpr_compile("A &&", resolve, NULL, err, sizeof(err)));
    assert_null(rexpr_compile("(A || B", resolve, NULL, err, sizeof(err)));
    assert_null(rexpr_compile("A B", resolve, NULL, err, sizeof(err)));
}

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
    return NULL;
}

static void
test_rule_files(void **state)
{
    (void)state;
    struct ruleset *rs = load(
        "# a comment\n"
        "header   H1  Subject =~ /\\bfree\\b/i   # trailing comment\n"
        "header   H2  From:addr !~ /\\@example\\.org$/ [if-unset: none]\n"
        "header   H3  exists:X-Mailer\n"
        "body     B1  /price \\#1/\n"
        "score    B1  1 2 3 4\n"
        "score    H1  2.5\n"
        "tflags   M1  nice\n"
        "meta     M1  H1 && !B1\n"
        "body     E1  eval:check_for_shifted_date('-6', '-3')\n"
        "body     P1  eval:some_perl_test()\n"
        "meta     M2  !P1\n"
        "score    M2  1\n"
        "ifplugin Mail::SpamAssassin::Plugin::Anything\n"
        "body     IF1 /in an ifplugin/\n"
        "endif\n"
        "if !can(Mail::SpamAssassin::Conf::feature_x)\n"
        "body     NO1 /never/\n"
        "else\n"
        "body     YES1 /always/\n"
        "endif\n"
        "replace_tag  A  [a4@]\n"
        "replace_inter W1 \\W?\n"
        "body     R1  /<inter W1>c<A>t/\n"
        "replace_rules R1\n"
        "body     R1B /c<A>t/\n"
        "body     DUP /first/\n"
        "body     DUP /second/\n"
        "report   this is a setting\n");
    assert_int_equal(rule(rs, "H1")->type, RULE_HEADER);
    assert_true(rule(rs, "H1")->score == 2.5);
    assert_int_equal(rule(rs, "H2")->hmode, HDR_ADDR);
    assert_true(rule(rs, "H2")->negate);
    assert_string_equal(rule(rs, "H2")->unset, "none");
    assert_int_equal(rule(rs, "H3")->type, RULE_EXISTS);
    assert_string_equal(rule(rs, "B1")->src, "price #1");   /* "\#" is a '#', not a comment */
    assert_true(rule(rs, "B1")->score == 3);                  /* column 2 of four */
    assert_true(rule(rs, "M1")->score == -1.0);               /* nice: -1 by default */
    assert_int_equal(rule(rs, "E1")->type, RULE_EVAL);
    assert_int_equal(rule(rs, "P1")->type, RULE_UNSUPPORTED);
    assert_non_null(strstr(rule(rs, "P1")->why, "some_perl_test"));
    assert_int_equal(rule(rs, "M2")->type, RULE_UNSUPPORTED); /* !P1 would always be true */
    assert_non_null(rule(rs, "IF1"));
    assert_null(rule(rs, "NO1"));
    assert_non_null(rule(rs, "YES1"));
    assert_string_equal(rule(rs, "R1")->src, "c[a4@]t");
    assert_string_equal(rule(rs, "R1B")->src, "c<A>t");       /* not in replace_rules */
    assert_string_equal(rule(rs, "DUP")->src, "second");     /* the last definition wins */
    assert_true(rs->nignored >= 1);
    ruleset_free(&rs);
}

/* The rules over a message of the given Subject and body, into val. */
static void
score_body(const struct ruleset *rs, const char *subject, const char *body, double *val)
{
    char msg[1024];
    snprintf(msg, sizeof(msg), "Subject: %s\r\n\r\n%s", subject, body);
    rules_test_message(rs, msg, strlen(msg), "", val);
}

/* The prefilter (filters/rules_hs.c) takes a pattern whose bounded repeat
 * needs one match, and one of SpamAssassin's long ones (the
 * __FILL_THIS_FORM_* patterns, about 2,900 bytes): both ran in PCRE2 on
 * every message before. What the rule hits stays PCRE2's answer. */
/* rules_form.c: the (?:G){n} rules (SpamAssassin's __FILL_THIS_FORM_LONG2,
 * five form fields in a row, and _SHORT2, three) are ruled out where no n
 * copies of G follow one another, and run in PCRE2 only on the lines where
 * they may; the verdict is PCRE2's. */
static void
test_form_rules_condition(void **state)
{
    (void)state;
    struct ruleset *rs = load(rules_form_cf);
    assert_int_equal(rules_form_count(rs), 6);
    size_t l2 = (size_t)(rule(rs, "FORM_LONG2") - rs->r), s2 = (size_t)(rule(rs, "FORM_SHORT2") - rs->r);
    static const struct { const char *body; int long2, short2; } cases[] = {
        /* a form, its lines one paragraph (one body line) */
        { "Please send:\r\nYour full name: ________\r\nAddress: ________\r\nCountry: ________"
          "\r\nAge: ________\r\nSex: ________\r\nOccupation: ________\r\n", 1, 1 },
        /* the fields with "and", "or" and commas */
        { "We need your name, address, country, age and sex, phone or fax today.\r\n", 1, 1 },
        /* blanks, then the P-word ("Please write here") */
        { "Full Name:.....Please write here Address:.....Please write here City:....."
          "Please write here State:.....Please write here Zip code:.....Please write here\r\n",
          1, 0 },
        /* four fields: three in a row, not five */
        { "Name, address, country and age: that is all.\r\n", 0, 1 },
        /* the words, but not one after another */
        { "His name is on the address list, the country of his age is unknown.\r\n", 0, 0 },
        /* "age" in "message", "usage", "page": no field follows */
        { "The message was sent to the usage page, stage name, message age.\r\n", 0, 0 },
        /* five fields, in two paragraphs (lines): no line holds three */
        { "name, address\r\n\r\ncountry, age\r\n\r\nsex and phone\r\n", 0, 0 },
    };
    double *val = calloc(rs->n + 1, sizeof(double));
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        score_body(rs, "s", cases[k].body, val);
        if (val[l2] != cases[k].long2 || val[s2] != cases[k].short2)
            fail_msg("case %zu: LONG2 %g SHORT2 %g", k, val[l2], val[s2]);
    }
    /* the condition itself: a text without the rule's match is ruled out
     * (0), one with it names its line (2) */
    const char *miss = "s\nHis name is on the address list.\n";
    const char *hit = "s\nname, address, country, age and sex, phone\nnothing\n";
    size_t off[3] = { 0, 2, 0 }, len[3] = { 2, strlen(miss) - 2, 0 };
    size_t *pick = NULL, np = 0;
    assert_int_equal(rules_form_check(rs, l2, miss, strlen(miss), off, len, 2, 0, &pick, &np),
                     0);
    size_t hl = strlen("name, address, country, age and sex, phone\n");
    size_t hoff[3] = { 0, 2, 2 + hl }, hlen[3] = { 2, hl, strlen(hit) - 2 - hl };
    assert_int_equal(rules_form_check(rs, l2, hit, strlen(hit), hoff, hlen, 3, 0, &pick, &np),
                     2);
    /* its line; the next may be named too (the copies of G may run on
     * over a line end in the whole text: a superset) */
    assert_true(np >= 1 && pick[0] == 1);
    free(pick);
    free(val);
    ruleset_free(&rs);
}

static void
test_prefilter_takes_what_it_can(void **state)
{
    (void)state;
    char text[4096];
    size_t o = (size_t)snprintf(text, sizeof(text),
                                "body F1 /(?:ab)?[:.]{1,80}(?:\\sname)?/\nscore F1 1\nbody F2 /(?:");
    for (int i = 0; o < 2600; i++)
        o += (size_t)snprintf(text + o, sizeof(text) - o, "%sword%04d", i ? "|" : "", i);
    snprintf(text + o, sizeof(text) - o, ")\\s(?:x{1,30})?end/\nscore F2 1\n");
    struct ruleset *rs = load(text);
    const struct sa_rule *f1 = rule(rs, "F1"), *f2 = rule(rs, "F2");
    assert_true(strlen(f2->src) > 2500);
    assert_true(f1->prefiltered);
    assert_true(f2->prefiltered);
    double *val = calloc(rs->n + 1, sizeof(double));
    const char *hit = "Subject: s\r\n\r\nyour :: name please, word0007 end\r\n";
    const char *miss = "Subject: s\r\n\r\nyour name please, word0007 fin\r\n";
    rules_test_message(rs, hit, strlen(hit), "", val);
    assert_true(val[f1 - rs->r] == 1 && val[f2 - rs->r] == 1);
    rules_test_message(rs, miss, strlen(miss), "", val);
    assert_true(val[f1 - rs->r] == 0 && val[f2 - rs->r] == 0);
    free(val);
    ruleset_free(&rs);
}

/* The cache files of dir (the prefilter's databases), in *names_r. */
static size_t
cache_files(const char *dir, char names_r[4][300])
{
    size_t n = 0;
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (de->d_name[0] != '.') {
            assert_true(n < 4);
            snprintf(names_r[n++], 300, "%s/%s", dir, de->d_name);
        }
    closedir(d);
    return n;
}

static void
file_put(const char *path, const char *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
}

static char *
file_get(const char *path, size_t *len_r)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *buf = malloc(1 << 22);
    *len_r = fread(buf, 1, 1 << 22, f);
    fclose(f);
    return buf;
}

/* The prefilter's database cache (filters/rules_hs.c) is never trusted
 * blindly: a file cut short, or one holding another database (files
 * swapped, renamed), is compiled again and replaced, and the rules hit
 * what they hit without it. Before, a swapped file was used: the body
 * rules were prefiltered with the rawbody patterns. */
static void
test_prefilter_cache_never_trusted_blindly(void **state)
{
    (void)state;
    const char *text = "body B1 /viagra/\nscore B1 1\nbody B2 /cialis/\nscore B2 1\n"
                       "rawbody R1 /hello/\nscore R1 1\nrawbody R2 /world/\nscore R2 1\n";
    char rules[] = "/tmp/moat-test-rules-XXXXXX", dir[] = "/tmp/moat-test-cache-XXXXXX";
    int fd = mkstemp(rules);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    assert_non_null(mkdtemp(dir));
    const char *msg = "Subject: s\r\n\r\ncheap viagra\r\n";
    char err[256], files[4][300];
    size_t len[2];
    double *val = calloc(16, sizeof(double));
    for (int round = 0; round < 4; round++) {
        struct ruleset *rs = ruleset_load(rules, 2, dir, err, sizeof(err));
        assert_non_null(rs);
        assert_true(rule(rs, "B1")->prefiltered && rule(rs, "R1")->prefiltered);
        assert_true(rs->n < 16);
        memset(val, 0, 16 * sizeof(double));
        rules_test_message(rs, msg, strlen(msg), "", val);
        assert_true(val[rule(rs, "B1") - rs->r] == 1);
        assert_true(val[rule(rs, "B2") - rs->r] == 0 && val[rule(rs, "R1") - rs->r] == 0);
        ruleset_free(&rs);
        assert_int_equal(cache_files(dir, files), 2);       /* the body and the rawbody ones */
        char *a = file_get(files[0], &len[0]), *b = file_get(files[1], &len[1]);
        if (round == 0) {                   /* swapped */
            file_put(files[0], b, len[1]);
            file_put(files[1], a, len[0]);
        } else if (round == 1) {            /* cut short */
            file_put(files[0], a, len[0] / 2);
            file_put(files[1], b, 10);
        } else if (round == 2) {            /* one byte changed */
            a[len[0] - 1] ^= 0x55;
            file_put(files[0], a, len[0]);
        }
        free(a);
        free(b);
    }
    for (size_t k = 0; k < cache_files(dir, files); k++)
        unlink(files[k]);
    rmdir(dir);
    unlink(rules);
    free(val);
}

/* r's PCRE2 pattern swapped for one that matches every text, its
 * prefilter left as it was: the rule hits only where PCRE2 runs. */
static void
match_anything(struct sa_rule *r)
{
    int ec;
    PCRE2_SIZE eo;
    pcre2_code_free(r->re);
    r->re = pcre2_compile((PCRE2_SPTR)"", 0, 0, &ec, &eo, NULL);
    assert_non_null(r->re);
}

/* A body pattern with \A or \z is prefiltered without them (a superset),
 * and a short one keeps its small repeats there: SpamAssassin's
 * __LONGWORDS_A, whose prefilter named nearly every text as
 * \b(?:[a-z]+[\s\.]+)+, names only those with six long words in a row
 * now. Each hits where PCRE2 says, and PCRE2 runs only where its
 * prefilter may match. */
static void
test_prefilter_anchors_and_small_repeats(void **state)
{
    (void)state;
    struct ruleset *rs = load("body A1 /\\Aplease pay\\b/\nscore A1 1\n"
                              "body Z1 /wallet now\\s*\\z/\nscore Z1 1\n"
                              "body L1 /\\b(?:[a-z]{8,}[\\s\\.]+){6}/\nscore L1 1\n");
    struct sa_rule *a1 = (struct sa_rule *)rule(rs, "A1"), *z1 = (struct sa_rule *)rule(rs, "Z1"),
                   *l1 = (struct sa_rule *)rule(rs, "L1");
    assert_true(a1->prefiltered && z1->prefiltered && l1->prefiltered);
    double *val = calloc(rs->n + 1, sizeof(double));
    static const struct { const char *body; int a1, z1, l1; } msgs[] = {
        { "please pay the wallet now, and\n\nthanks\n", 1, 0, 0 },
        { "hello\n\nplease pay into my wallet now\n", 1, 1, 0 },
        { "I said please pay. A wallet now, then\n", 0, 0, 0 },
        { "absolutely wonderful beautiful gorgeous fabulous incredible scenery\n", 0, 0, 1 },
        { "a lot of short words in a row that go on and on and on\n", 0, 0, 0 },
    };
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < sizeof(msgs) / sizeof(msgs[0]); i++) {
            score_body(rs, "s", msgs[i].body, val);
            /* the second pass: PCRE2 matches anything, so a rule hits
             * wherever its prefilter let it run */
            int a = pass ? strstr(msgs[i].body, "please pay") != NULL : msgs[i].a1;
            int z = pass ? strstr(msgs[i].body, "wallet now") != NULL : msgs[i].z1;
            if (val[a1 - rs->r] != a || val[z1 - rs->r] != z || val[l1 - rs->r] != msgs[i].l1)
                fail_msg("pass %d, message %zu: A1 %g Z1 %g L1 %g", pass, i, val[a1 - rs->r],
                         val[z1 - rs->r], val[l1 - rs->r]);
        }
        match_anything(a1);
        match_anything(z1);
        match_anything(l1);
    }
    free(val);
    ruleset_free(&rs);
}

/* A body pattern's leading \b, or (?:\b|\s), is left out of its
 * prefilter (a superset: rules_hs.c's lead_boundary), which still names
 * only texts holding the rest; PCRE2, with the boundary, decides. One
 * whose rest could match the empty text (B3), refused so by Hyperscan,
 * goes in again with its boundary. */
static void
test_prefilter_leading_boundary(void **state)
{
    (void)state;
    struct ruleset *rs = load("body B1 /\\bpill\\b/\nscore B1 1\n"
                              "body B2 /(?:\\b|\\s)v[_\\W]{0,3}i[_\\W]{0,3}agra\\b/i\nscore B2 1\n"
                              "body B3 /\\b(?:foo)?/\nscore B3 1\n");
    struct sa_rule *b1 = (struct sa_rule *)rule(rs, "B1"), *b2 = (struct sa_rule *)rule(rs, "B2"),
                   *b3 = (struct sa_rule *)rule(rs, "B3");
    assert_true(b1->prefiltered && b2->prefiltered && b3->prefiltered);
    double *val = calloc(rs->n + 1, sizeof(double));
    static const struct { const char *body; int b1, b2, b3, pf1, pf2; } msgs[] = {
        { "a pill a day\n", 1, 0, 1, 1, 0 },
        { "it will spill over\n", 0, 0, 1, 1, 0 },     /* no boundary: named, no hit */
        { "cheap V.I.agra here\n", 0, 1, 1, 0, 1 },
        { "see xv_iagra now\n", 0, 0, 1, 0, 1 },
        { "-- ++ --\n", 0, 0, 0, 0, 0 },
    };
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < sizeof(msgs) / sizeof(msgs[0]); i++) {
            score_body(rs, "--", msgs[i].body, val);
            /* the second pass: PCRE2 matches anything, so a rule hits
             * wherever its prefilter named the text */
            int want1 = pass ? msgs[i].pf1 : msgs[i].b1, want2 = pass ? msgs[i].pf2 : msgs[i].b2;
            if (val[b1 - rs->r] != want1 || val[b2 - rs->r] != want2 ||
                val[b3 - rs->r] != msgs[i].b3)      /* with its \b, names what it hits */
                fail_msg("pass %d, message %zu: B1 %g B2 %g B3 %g", pass, i, val[b1 - rs->r],
                         val[b2 - rs->r], val[b3 - rs->r]);
        }
        match_anything(b1);
        match_anything(b2);
        match_anything(b3);
    }
    free(val);
    ruleset_free(&rs);
}

/* A header rule over a header the message does not have matches its
 * if-unset text, or "", negated as it says: found once at load
 * (rules_absent_hits), the same as matched each time. */
static void
test_header_rule_without_its_header(void **state)
{
    (void)state;
    struct ruleset *rs = load("header A1 X-None =~ /^$/\nscore A1 1\n"
                              "header A2 X-None !~ /foo/\nscore A2 1\n"
                              "header A3 X-None =~ /foo/ [if-unset: a foo]\nscore A3 1\n"
                              "header A4 X-None !~ /foo/ [if-unset: a foo]\nscore A4 1\n"
                              "header A5 X-None =~ /./\nscore A5 1\n");
    const char *names5[] = { "A1", "A2", "A3", "A4", "A5" };
    static const struct { const char *msg; int want[5]; } msgs[] = {
        { "Subject: s\r\n\r\nbody\r\n", { 1, 1, 1, 0, 0 } },
        { "Subject: s\r\nX-None: foo\r\n\r\nbody\r\n", { 0, 0, 1, 0, 1 } },
        { "Subject: s\r\nX-None: bar\r\n\r\nbody\r\n", { 0, 1, 0, 1, 1 } },
    };
    double *val = calloc(rs->n + 1, sizeof(double));
    for (size_t i = 0; i < sizeof(msgs) / sizeof(msgs[0]); i++) {
        memset(val, 0, (rs->n + 1) * sizeof(double));
        rules_test_message(rs, msgs[i].msg, strlen(msgs[i].msg), "", val);
        for (int k = 0; k < 5; k++)
            if (val[rule(rs, names5[k]) - rs->r] != msgs[i].want[k])
                fail_msg("message %zu: %s is %g", i, names5[k], val[rule(rs, names5[k]) - rs->r]);
    }
    free(val);
    ruleset_free(&rs);
}

/* Header rules are prefiltered per request (filters/rules_hs.c): a rule
 * whose pattern cannot match its request's text is not run in PCRE2, a
 * negated one then fires without running, and a request with no value
 * takes each rule's answer on its if-unset text, found once at load (a
 * test that swaps a rule's pattern after load would see the old answer). */
static void
test_header_rules_prefiltered_per_request(void **state)
{
    (void)state;
    struct ruleset *rs = load(
        "header H1 Subject =~ /viagra/i\nscore H1 1\n"
        "header H2 Subject =~ /cheap/\nscore H2 1\n"
        "header N1 Subject !~ /hello/\nscore N1 1\n"
        "header F1 From:addr =~ /\\@example\\.com$/\nscore F1 1\n"
        "header F2 From:addr =~ /^spam/\nscore F2 1\n"
        "header U1 X-None =~ /^foo$/ [if-unset: foo]\nscore U1 1\n"
        "header U2 X-None =~ /^bar$/ [if-unset: foo]\nscore U2 1\n");
    struct sa_rule *h1 = (struct sa_rule *)rule(rs, "H1"), *n1 = (struct sa_rule *)rule(rs, "N1");
    const struct sa_rule *h2 = rule(rs, "H2"), *f1 = rule(rs, "F1"), *f2 = rule(rs, "F2"),
                         *u1 = rule(rs, "U1"), *u2 = rule(rs, "U2");
    match_anything(h1);
    match_anything(n1);
    double *val = calloc(rs->n + 1, sizeof(double));
    const char *miss = "From: Bob <bob@example.com>\r\nSubject: hello there\r\n\r\nbody\r\n";
    rules_test_message(rs, miss, strlen(miss), "", val);
    assert_true(val[h1 - rs->r] == 0);      /* /viagra/ cannot match: PCRE2 did not run */
    assert_true(val[h2 - rs->r] == 0);
    assert_true(val[n1 - rs->r] == 0);      /* "hello": it ran, matched anything, negated */
    assert_true(val[f1 - rs->r] == 1 && val[f2 - rs->r] == 0);
    assert_true(val[u1 - rs->r] == 1 && val[u2 - rs->r] == 0);
    const char *hit = "From: spam@example.net\r\nSubject: Cheap VIAGRA\r\n\r\nbody\r\n";
    rules_test_message(rs, hit, strlen(hit), "", val);
    assert_true(val[h1 - rs->r] == 1);
    assert_true(val[h2 - rs->r] == 0);      /* case matters */
    assert_true(val[n1 - rs->r] == 1);      /* no "hello": not run, and fires */
    assert_true(val[f1 - rs->r] == 0 && val[f2 - rs->r] == 1);
    free(val);
    ruleset_free(&rs);
}

/* uri rules are prefiltered over the message's URIs, one a line
 * (filters/rules_hs.c): a rule anchored at a URI's start still hits the
 * second URI, a multiple one still counts each URI, and one that cannot
 * match any URI is not run in PCRE2. */
static void
test_uri_rules_prefiltered(void **state)
{
    (void)state;
    struct ruleset *rs = load(
        "util_rb_tld com biz net\n"
        "uri U1 /^https?:\\/\\/[^\\/]*\\.example\\.biz\\//i\nscore U1 1\n"
        "uri U2 /\\.example\\.(?:com|biz)\\b/i\nscore U2 1\ntflags U2 multiple\n"
        "uri U3 /^ftp:/\nscore U3 1\n"
        "uri U4 /viagra/i\nscore U4 1\n");
    struct sa_rule *u4 = (struct sa_rule *)rule(rs, "U4");
    const struct sa_rule *u1 = rule(rs, "U1"), *u2 = rule(rs, "U2"), *u3 = rule(rs, "U3");
    assert_true(u1->prefiltered && u2->prefiltered && u3->prefiltered && u4->prefiltered);
    match_anything(u4);
    double *val = calloc(rs->n + 1, sizeof(double));
    const char *msg = "Subject: s\r\n\r\nsee http://www.example.com/a and "
                      "https://Shop.Example.BIZ/b now\r\n";
    rules_test_message(rs, msg, strlen(msg), "", val);
    assert_true(val[u1 - rs->r] == 1);      /* the second URI, from its start */
    assert_true(val[u2 - rs->r] >= 2);      /* each URI counted */
    assert_true(val[u3 - rs->r] == 0);
    assert_true(val[u4 - rs->r] == 0);      /* cannot match: PCRE2 did not run */
    const char *hit = "Subject: s\r\n\r\ncheap http://viagra.example.net/ now\r\n";
    rules_test_message(rs, hit, strlen(hit), "", val);
    assert_true(val[u4 - rs->r] == 1);
    assert_true(val[u1 - rs->r] == 0 && val[u2 - rs->r] == 0);
    const char *none = "Subject: s\r\n\r\nno link here\r\n";
    rules_test_message(rs, none, strlen(none), "", val);
    assert_true(val[u4 - rs->r] == 0);
    free(val);
    ruleset_free(&rs);
}

/* What the rules read, found with the shortcuts that skip work (rules_uri.c:
 * a search starts no earlier than 256 bytes before a URI's mark; rules_relay.c:
 * a Received format runs only when its literal is there; rules_header.c:
 * requests by number): URIs after long prose, an address with a 200-byte
 * local part (its "@" far from its start), relays of several formats, and a
 * paragraph with no mark giving nothing. */
static char *
texts_of(const struct ruleset *rs, const char *msg)
{
    char *out = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&out, &n);
    assert_non_null(f);
    rules_test_texts(rs, msg, strlen(msg), f);
    fclose(f);
    return out;
}

static void
test_uris_and_relays_found_past_the_shortcuts(void **state)
{
    (void)state;
    struct ruleset *rs = load("util_rb_tld com biz net org\n"
                              "header R1 Received =~ /mx3\\.example\\.net/\nscore R1 1\n"
                              "header R2 Received =~ /mx4\\.example\\.net/\nscore R2 1\n"
                              "header S1 Subject =~ /^s$/\nscore S1 1\n"
                              "header S2 Subject:raw =~ /^ ?s\\n?$/\nscore S2 1\n"
                              "header E1 exists:X-None\nscore E1 1\n");
    char prose[1200] = "";
    for (int i = 0; i < 4; i++)
        strcat(prose, "The committee met on Tuesday and agreed that the proposal needs more work "
                      "before it goes to the board; nobody objected, and the minutes follow. ");
    char local[201];
    memset(local, 'a', 200);
    local[200] = '\0';
    char msg[8192];
    snprintf(msg, sizeof(msg),
             "Received: from host.example.org ([192.0.2.1]) (AUTH: LOGIN bob) by mx.example.net "
             "with ESMTP id 123\n"
             "Received: from mail.example.com (HELO helo.example.com) (198.51.100.7)\n"
             "  by mx2.example.net with SMTP; 1 Jan 2024 10:00:00 -0000\n"
             "Received: from relay.example.com (relay.example.com [203.0.113.9]) by mx3.example.net "
             "(Postfix) with ESMTP id ABC; Mon, 1 Jan 2024 10:00:00 +0000\n"
             "From: bob@example.com\nSubject: s\n\n"
             "%ssee www2.example.com or x.example.biz today\n\n"
             "%s write to %s@example.com now\n\n%s\n",
             prose, prose, local, prose);
    char *t = texts_of(rs, msg);
    assert_non_null(strstr(t, "uri: http://www2.example.com\n"));
    assert_non_null(strstr(t, "uri: http://x.example.biz\n"));
    char mail[300];
    snprintf(mail, sizeof(mail), "uri: mailto:%s@example.com\n", local);
    assert_non_null(strstr(t, mail));
    size_t nuri = 0;
    for (const char *p = t; (p = strstr(p, "\nuri: ")) != NULL; p++)
        nuri++;
    assert_int_equal(nuri, 3);              /* the prose paragraphs give none */
    assert_non_null(strstr(t, "X-Spam-Relays-Trusted: [ ip=192.0.2.1 rdns= helo=host.example.org "
                              "by=mx.example.net ident= envfrom= intl=1 id=123 auth=LOGIN msa=0 ]\n"));
    assert_non_null(strstr(t, "X-Spam-Relays-Untrusted: [ ip=198.51.100.7 rdns=mail.example.com "
                              "helo=helo.example.com by=mx2.example.net ident= envfrom= intl=0 id= "
                              "auth= msa=0 ] [ ip=203.0.113.9 rdns=relay.example.com "
                              "helo=relay.example.com by=mx3.example.net ident= envfrom= intl=0 "
                              "id=ABC auth= msa=0 ]\n"));
    free(t);
    /* the header rules read the same requests by number */
    double *val = calloc(rs->n + 1, sizeof(double));
    rules_test_message(rs, msg, strlen(msg), "", val);
    assert_true(val[rule(rs, "R1") - rs->r] == 1 && val[rule(rs, "R2") - rs->r] == 0);
    assert_true(val[rule(rs, "S1") - rs->r] == 1 && val[rule(rs, "S2") - rs->r] == 1);
    assert_true(val[rule(rs, "E1") - rs->r] == 0);
    assert_true(rule(rs, "R1")->hdr_id == rule(rs, "R2")->hdr_id);
    assert_true(rule(rs, "S1")->hdr_id != rule(rs, "S2")->hdr_id);
    free(val);
    ruleset_free(&rs);
}

static void
test_html_to_text(void **state)
{
    (void)state;
    const char *h = "<html><head><style>p{color:red}</style><script>x='<b>'</script></head>"
                    "<body><p>Caf&eacute; &amp; bar&#33;</p><div>two&nbsp;words</div>"
                    "<a href=\"http://Shop.Example.COM/x?y=1\">buy</a><!-- <p>hidden</p> -->"
                    "<img src='http://img.example.net/a.gif'></body></html>";
    char out[512];
    size_t n = html_to_text(h, strlen(h), out, sizeof(out), NULL, NULL);
    assert_int_equal(n, strlen(out));
    assert_null(strstr(out, "color"));
    assert_null(strstr(out, "hidden"));
    assert_null(strstr(out, "<b>"));
    assert_non_null(strstr(out, "& bar!"));
    assert_non_null(strstr(out, "two words"));
    assert_non_null(strstr(out, "buy"));
    /* bounded output, always terminated */
    char small[8];
    n = html_to_text(h, strlen(h), small, sizeof(small), NULL, NULL);
    assert_true(n < sizeof(small));
    assert_int_equal(strlen(small), n);
}

static void
test_message_text_and_tokens(void **state)
{
    (void)state;
    const char *msg =
        "From: a@example.org\r\nSubject: =?utf-8?q?Caf=C3=A9_offer?=\r\n"
        "X-Mailer: TurboMailer 9\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/alternative; boundary=b\r\n\r\n"
        "--b\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        "caf=E9 line one\r\nline two www.plain.example/x.\r\n\r\nnext paragraph\r\n"
        "--b\r\nContent-Type: text/html\r\n\r\n"
        "<p>see <a href=\"https://link.example.org/p\">here</a></p>\r\n--b--\r\n";
    struct filter_mime *mm = mime_parse(msg, strlen(msg));
    const struct filter_text *t = mime_text(mm);
    assert_string_equal(t->subject, "Caf\xc3\xa9 offer");
    /* the subject first, then each paragraph on one line, in UTF-8 */
    assert_non_null(strstr(t->body, "Caf\xc3\xa9 offer\n"));
    assert_non_null(strstr(t->body, "caf\xc3\xa9 line one line two"));
    assert_non_null(strstr(t->body, "\nnext paragraph\n"));
    assert_int_equal(t->nuri, 2);
    assert_string_equal(t->uris[0], "http://www.plain.example/x");
    assert_string_equal(t->hosts[0], "www.plain.example");
    assert_string_equal(t->hosts[1], "link.example.org");
    struct bayes_tokens bt;
    bayes_tokenize(msg, strlen(msg), t, &bt);
    bool mailer = false, url = false, dom = false, word = false;
    for (size_t i = 0; i < bt.n; i++) {
        mailer |= strcmp(bt.v[i], "H:x-mailer:TurboMailer") == 0;
        url |= strcmp(bt.v[i], "UD:link.example.org") == 0;
        dom |= strcmp(bt.v[i], "UD:www.plain.example") == 0;
        word |= strcmp(bt.v[i], "paragraph") == 0;
        if (i > 0)
            assert_true(strcmp(bt.v[i - 1], bt.v[i]) < 0);  /* sorted, each once */
    }
    assert_true(mailer && url && dom && word);
    bayes_tokens_free(&bt);
    mime_free(&mm);
}

/* Found by fuzz_text: a long header name made the token prefix longer
 * than the token buffer. */
static void
test_tokens_of_long_header_names(void **state)
{
    (void)state;
    char msg[600];
    snprintf(msg, sizeof(msg), "X-%s: %s\r\n\r\nbody\r\n",
             "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "wordwordwordwordwordwordwordwordwordwordwordwordword");
    struct bayes_tokens bt;
    bayes_tokenize(msg, strlen(msg), NULL, &bt);
    assert_true(bt.n >= 1);
    for (size_t i = 0; i < bt.n; i++)
        assert_true(strlen(bt.v[i]) < 160);
    bayes_tokens_free(&bt);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_meta_expressions),
        cmocka_unit_test(test_rule_files),
        cmocka_unit_test(test_prefilter_takes_what_it_can),
        cmocka_unit_test(test_prefilter_anchors_and_small_repeats),
        cmocka_unit_test(test_prefilter_leading_boundary),
        cmocka_unit_test(test_header_rule_without_its_header),
        cmocka_unit_test(test_header_rules_prefiltered_per_request),
        cmocka_unit_test(test_uri_rules_prefiltered),
        cmocka_unit_test(test_uris_and_relays_found_past_the_shortcuts),
        cmocka_unit_test(test_prefilter_cache_never_trusted_blindly),
        cmocka_unit_test(test_form_rules_condition),
        cmocka_unit_test(test_html_to_text),
        cmocka_unit_test(test_message_text_and_tokens),
        cmocka_unit_test(test_tokens_of_long_header_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
