/* Unit tests: Sieve (mailstore/sieve_parse.c, sieve_run.c). Scripts that
 * must be refused, with the line the error names; scripts run on one
 * message, with where it goes, its flags and what is redirected; the
 * :matches matcher against RFC 5228's examples and a pattern that a
 * backtracking matcher takes forever over, checked against its bound;
 * body (RFC 5173), variables (RFC 5229), include (RFC 6609) with its
 * loops and bounds, and imap4flags' keywords on a MIME message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <cmocka.h>
#include "../../mailstore/sieve_private.h"

static const struct {
    const char *script;
    int line;               /* 0: valid */
    const char *why;        /* part of the error */
} parse_cases[] = {
    { "keep;", 0, NULL },
    { "# nothing\n", 0, NULL },
    { "require [\"fileinto\", \"imap4flags\"];\nfileinto :flags \"\\\\Seen\" \"A\";", 0, NULL },
    { "if true { keep; } elsif false { discard; } else { stop; }", 0, NULL },
    { "require \"vacation\";\nvacation text:\nhi\n.\n;", 0, NULL },
    { "keep", 1, "expected ';'" },
    { "keep;\nfrobnicate;", 2, "unknown command" },
    { "fileinto \"x\";", 1, "require \"fileinto\"" },
    { "keep;\nrequire \"fileinto\";", 2, "before the other commands" },
    { "require \"enotify\";", 1, "unsupported extension" },
    { "require \"body\";\nif body :raw :text \"x\" { keep; }", 2, "more than one" },
    { "require \"body\";\nif body :content \"text\" { keep; }", 2, "a string list" },
    { "require \"variables\";\nset \"1x\" \"v\";", 2, "no variable name" },
    { "require \"variables\";\nset \"a.b\" \"v\";", 2, "no variable name" },
    { "require \"variables\";\nset :lower :upper \"a\" \"v\";", 2, ":upper with :lower" },
    { "require \"variables\";\nset :frob \"a\" \"v\";", 2, "does not take :frob" },
    { "set \"a\" \"v\";", 1, "require \"variables\"" },
    { "require \"include\";\ninclude \"../etc/passwd\";", 2, "no script name" },
    { "require [\"include\", \"variables\"];\ninclude \"${x}\";", 2, "no script name" },
    { "require \"include\";\ninclude :personal :global \"a\";", 2, "more than one" },
    { "return;", 1, "require \"include\"" },
    /* global (RFC 6609 3.3, 3.5) */
    { "require [\"include\", \"variables\"];\nglobal [\"a\", \"b\"];\nset \"a\" \"1\";\n"
      "global \"A\";\nset \"global.c\" \"${global.a}${b}\";", 0, NULL },
    { "require \"variables\";\nglobal \"a\";", 2, "require \"include\"" },
    { "require \"include\";\nglobal \"a\";", 2, "require \"variables\"" },
    { "require [\"include\", \"variables\"];\nset \"a\" \"1\";\nglobal \"a\";", 3,
      "used as a local variable before" },
    { "require [\"include\", \"variables\", \"fileinto\"];\nfileinto \"${A}\";\n"
      "global [\"b\", \"a\"];", 3, "used as a local variable before" },
    { "require [\"include\", \"variables\"];\nglobal \"a.b\";", 2, "no variable name" },
    { "require [\"include\", \"variables\"];\nglobal 5;", 2, "a string list" },
    { "require \"variables\";\nset \"global.a\" \"v\";", 2, "no variable name" },
    { "if true {\n keep;\n", 3, "not closed" },
    { "if true\n{ keep; }\nelse { keep; }\nelse { keep; }", 4, "else without if" },
    { "if header :is \"subject\" { keep; }", 1, "two string lists" },
    { "if size 100 { keep; }", 1, ":over or :under" },
    { "if address :is :contains \"from\" \"x\" { keep; }", 1, "more than one" },
    { "if header :comparator \"i;foo\" \"s\" \"x\" { keep; }", 1, "unknown comparator" },
    { "keep;\n\n\"unterminated", 3, "string not closed" },
    { "redirect \"nobody\";", 1, "'@'" },
    { "/* open", 1, "comment not closed" },
    { "keep;\x01", 1, "unexpected byte" },
    { "if true keep;", 1, "expected '{'" },
    { "keep fileinto;", 1, "expected ';'" },
};

static void
test_parse_errors(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(parse_cases) / sizeof(parse_cases[0]); i++) {
        char err[300] = "";
        const char *src = parse_cases[i].script;
        struct sieve_script *s = sieve_parse(src, strlen(src), err, sizeof(err));
        if (parse_cases[i].line == 0) {
            if (s == NULL)
                fail_msg("case %zu: refused: %s", i, err);
            sieve_free(&s);
            continue;
        }
        if (s != NULL)
            fail_msg("case %zu: accepted", i);
        char want[32];
        snprintf(want, sizeof(want), "line %d: ", parse_cases[i].line);
        if (strncmp(err, want, strlen(want)) != 0 || strstr(err, parse_cases[i].why) == NULL)
            fail_msg("case %zu: error \"%s\", want \"%s...%s\"", i, err, want, parse_cases[i].why);
    }
}

static void
test_limits(void **state)
{
    (void)state;
    char err[300];
    /* nesting */
    char deep[2000] = "";
    for (int i = 0; i < 40; i++)
        memcpy(deep + i * 10, "if true {\n", 11);
    struct sieve_script *s = sieve_parse(deep, strlen(deep), err, sizeof(err));
    assert_null(s);
    assert_non_null(strstr(err, "nested deeper"));
    /* a script over the size */
    size_t big = SIEVE_SCRIPT_MAX + 1;
    char *b = malloc(big);
    memset(b, '#', big);
    s = sieve_parse(b, big, err, sizeof(err));
    assert_null(s);
    assert_non_null(strstr(err, "larger than"));
    free(b);
    /* a list over its bound */
    size_t cap = SIEVE_LIST_MAX * 5 + 100;
    char *l = malloc(cap);
    size_t o = (size_t)snprintf(l, cap, "if header :is \"s\" [\"a\"");
    for (int i = 0; i < SIEVE_LIST_MAX; i++)
        o += (size_t)snprintf(l + o, cap - o, ",\"a\"");
    snprintf(l + o, cap - o, "] { keep; }");
    s = sieve_parse(l, strlen(l), err, sizeof(err));
    assert_null(s);
    assert_non_null(strstr(err, "strings in a list"));
    free(l);
}

static const char msg[] =
    "From: \"Bob, the builder\" <Bob@Example.ORG>\r\n"
    "To: alice@example.com, undisclosed-recipients:;\r\n"
    "Subject: [Projects] weekly\r\n\treport\r\n"
    "X-Greeting: =?utf-8?q?Gr=C3=BC=C3=9Fe?= aus =?iso-8859-1?q?K=F6ln?=\r\n"
    "\r\n"
    "body\r\n";

static const struct {
    const char *script;
    const char *folders;    /* the stores, "INBOX/flags" joined by ' ' */
    const char *redirects;
} run_cases[] = {
    { "keep;", "INBOX/", "" },
    { "discard;", "", "" },
    { "require \"fileinto\"; fileinto \"A\";", "A/", "" },
    { "require [\"fileinto\", \"copy\"]; fileinto :copy \"A\";", "A/ INBOX/", "" },
    { "redirect \"x@example.net\";", "", "x@example.net" },
    { "require \"imap4flags\"; addflag [\"\\\\Seen\", \"\\\\Flagged $Work\"]; removeflag \"\\\\Seen\";",
      "INBOX/F $Work", "" },
    { "if header :contains \"subject\" \"projects] WEEK\" { discard; }", "", "" },
    { "if header :is \"subject\" \"[Projects] weekly\treport\" { discard; }", "", "" },
    { "if header :matches \"subject\" \"[*] w??kly*\" { discard; }", "", "" },
    { "if header :is :comparator \"i;octet\" \"subject\" \"[projects] weekly report\" { discard; }",
      "INBOX/", "" },
    { "if address :domain :is \"from\" \"example.org\" { discard; }", "", "" },
    { "if address :localpart :is \"from\" \"bob\" { discard; }", "", "" },
    { "if address :all :is \"to\" \"undisclosed-recipients\" { discard; }", "INBOX/", "" },
    { "require \"envelope\"; if envelope :domain \"from\" \"sender.example\" { discard; }", "", "" },
    { "if exists [\"from\", \"x-nope\"] { discard; }", "INBOX/", "" },
    { "if size :under 1K { discard; }", "", "" },
    { "if header :is \"x-greeting\" \"Gr\xc3\xbc\xc3\x9f""e aus K\xc3\xb6ln\" { discard; }", "", "" },
    { "if not anyof (false, size :over 10M) { stop; } discard;", "INBOX/", "" },
    { "if false { discard; } elsif true { redirect \"a@b.c\"; } else { discard; }", "", "a@b.c" },
};

static void
test_run(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(run_cases) / sizeof(run_cases[0]); i++) {
        char err[300] = "";
        const char *src = run_cases[i].script;
        struct sieve_script *s = sieve_parse(src, strlen(src), err, sizeof(err));
        if (s == NULL)
            fail_msg("case %zu: %s", i, err);
        struct sieve_input in = { .data = msg, .len = sizeof(msg) - 1,
                                  .env_from = "bob@sender.example", .env_to = "alice@example.com" };
        struct mailstore_sieve_result res;
        memset(&res, 0, sizeof(res));
        if (sieve_run(s, &in, &res, err, sizeof(err)) < 0)
            fail_msg("case %zu: %s", i, err);
        char got[300] = "", red[300] = "";
        for (size_t k = 0; k < res.nstore; k++)
            snprintf(got + strlen(got), sizeof(got) - strlen(got), "%s%s/%s", k ? " " : "",
                     res.store[k].folder ? res.store[k].folder : "INBOX", res.store[k].flags);
        for (size_t k = 0; k < res.nredirect; k++)
            snprintf(red + strlen(red), sizeof(red) - strlen(red), "%s%s", k ? " " : "",
                     res.redirect[k]);
        if (strcmp(got, run_cases[i].folders) != 0 || strcmp(red, run_cases[i].redirects) != 0)
            fail_msg("case %zu: stores \"%s\" redirects \"%s\"", i, got, red);
        mailstore_sieve_result_free(&res);
        sieve_free(&s);
    }
}

static void
test_runtime_errors(void **state)
{
    (void)state;
    const char *src = "redirect \"a@x.y\"; redirect \"b@x.y\"; redirect \"c@x.y\";\n"
                      "redirect \"d@x.y\"; redirect \"e@x.y\";";
    char err[300];
    struct sieve_script *s = sieve_parse(src, strlen(src), err, sizeof(err));
    assert_non_null(s);
    struct sieve_input in = { .data = msg, .len = sizeof(msg) - 1, .env_from = "",
                              .env_to = "alice@example.com" };
    struct mailstore_sieve_result res;
    memset(&res, 0, sizeof(res));
    assert_int_equal(sieve_run(s, &in, &res, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "line 2: more than 4 redirects"));
    mailstore_sieve_result_free(&res);
    sieve_free(&s);
}

static void
test_wildmatch(void **state)
{
    (void)state;
    static const struct { const char *pat, *val; bool fold; int want; } w[] = {
        { "*", "", false, 1 }, { "?", "", false, 0 }, { "a*b", "aXXb", false, 1 },
        { "a*b", "aXXbc", false, 0 }, { "*@example.com", "bob@EXAMPLE.com", true, 1 },
        { "*@example.com", "bob@EXAMPLE.com", false, 0 }, { "\\*", "*", false, 1 },
        { "\\*", "a", false, 0 }, { "a\\?", "a?", false, 1 }, { "a\\?", "ab", false, 0 },
        { "?", "\xc3\xa9", false, 1 },          /* one character, two bytes */
        { "*a*b*c*", "xxaxxbxxcxx", false, 1 }, { "*a*b*c*", "xxaxxcxxbxx", false, 0 },
    };
    for (size_t i = 0; i < sizeof(w) / sizeof(w[0]); i++) {
        uint64_t budget = 1000;
        int got = sieve_wildmatch(w[i].pat, strlen(w[i].pat), w[i].val, strlen(w[i].val),
                                  w[i].fold, &budget);
        if (got != w[i].want)
            fail_msg("case %zu: %s ~ %s: %d", i, w[i].pat, w[i].val, got);
    }
    /* the pattern that takes a backtracking matcher exponential time:
     * here at most |pattern| x |value| steps */
    char pat[200], val[4001];
    for (int i = 0; i < 100; i++) {
        pat[2 * i] = '*';
        pat[2 * i + 1] = 'a';
    }
    pat[198] = 'b';
    pat[199] = '\0';
    memset(val, 'a', 4000);
    val[4000] = '\0';
    uint64_t budget = UINT64_MAX;
    assert_int_equal(sieve_wildmatch(pat, strlen(pat), val, 4000, false, &budget), 0);
    assert_true(UINT64_MAX - budget <= 2 * 200 * 4001);
    /* a budget that runs out is an error, not a hang */
    budget = 10;
    assert_int_equal(sieve_wildmatch(pat, strlen(pat), val, 4000, false, &budget), -1);
}

static const char mime_msg[] =
    "From: bob@example.org\r\n"
    "To: alice@example.com\r\n"
    "Subject: Invoice 4711 for March\r\n"
    "List-Id: Team list <team.lists.example.org>\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: multipart/mixed; boundary=\"b1\"\r\n"
    "\r\n"
    "--b1\r\n"
    "Content-Type: text/plain; charset=iso-8859-1\r\n"
    "Content-Transfer-Encoding: quoted-printable\r\n"
    "\r\n"
    "Gr=FC=DFe, the amount is due\r\n"
    "--b1\r\n"
    "Content-Type: application/octet-stream\r\n"
    "Content-Transfer-Encoding: base64\r\n"
    "\r\n"
    "U0VDUkVUIHBheWxvYWQ=\r\n"
    "--b1--\r\n";

/* include's scripts: "name" personal, "global:name" global */
static const struct { const char *name, *src; } scripts[] = {
    { "bills", "require \"fileinto\"; if header :contains \"subject\" \"Invoice\" { fileinto \"Bills\"; }" },
    { "ret", "require \"include\"; return; discard;" },
    { "loop", "require \"include\"; include \"loop2\";" },
    { "loop2", "require \"include\"; include \"loop\";" },
    { "self", "require \"include\"; include \"main\";" },
    { "broken", "keep" },
    { "leaf", "keep;" },
    { "many", "require \"include\"; include \"leaf\"; include \"leaf\"; include \"leaf\"; "
              "include \"leaf\"; include \"leaf\"; include \"leaf\"; include \"leaf\"; "
              "include \"leaf\"; include \"leaf\"; include \"leaf\";" },
    { "vars", "require [\"variables\", \"fileinto\"]; fileinto \"in-${x}\";" },
    { "global:g", "require \"fileinto\"; fileinto \"G\";" },
    /* global: the folder from a variable the including script set */
    { "gfolder", "require [\"include\", \"variables\", \"fileinto\"]; global \"folder\"; "
                 "fileinto \"${folder}-${global.other}-${local}\";" },
    { "gset", "require [\"include\", \"variables\"]; global \"folder\"; set \"local\" \"L\"; "
              "set \"folder\" \"fromsub\"; set \"global.other\" \"o\";" },
    { "gnodecl", "require [\"variables\", \"fileinto\"]; fileinto \"n-${folder}\";" },
};

/* A script setting n variables, "global.PREFIXk" (k < n). */
static char *
sets_script(const char *prefix, int n)
{
    size_t cap = 100 + (size_t)n * 64, o;
    char *b = malloc(cap);
    o = (size_t)snprintf(b, cap, "require [\"include\", \"variables\"];\n");
    for (int k = 0; k < n; k++)
        o += (size_t)snprintf(b + o, cap - o, "set \"%s%d\" \"x\";\n", prefix, k);
    return b;
}

static int
load(void *ctx, bool global, const char *name, char **src_r, size_t *len_r)
{
    (void)ctx;
    char key[200];
    snprintf(key, sizeof(key), "%s%s", global ? "global:" : "", name);
    if (strcmp(key, "gmany") == 0) {     /* 70 global variables */
        *src_r = sets_script("global.s", 70);
        *len_r = strlen(*src_r);
        return 0;
    }
    for (size_t i = 0; i < sizeof(scripts) / sizeof(scripts[0]); i++)
        if (strcmp(scripts[i].name, key) == 0) {
            *src_r = strdup(scripts[i].src);
            *len_r = strlen(scripts[i].src);
            return 0;
        }
    errno = ENOENT;
    return -1;
}

static const struct {
    const char *script;
    const char *folders;    /* as in run_cases; NULL: a runtime error */
    const char *why;        /* part of the error */
} ext_cases[] = {
    /* body: parts decoded (quoted-printable, ISO-8859-1), :text the text parts only */
    { "require \"body\"; if body :text :contains \"Gr\xc3\xbc\xc3\x9f""e\" { discard; }", "", NULL },
    { "require \"body\"; if body :contains \"the AMOUNT\" { discard; }", "", NULL },
    { "require \"body\"; if body :text :contains \"SECRET\" { discard; }", "INBOX/", NULL },
    { "require \"body\"; if body :content \"application/octet-stream\" :contains \"SECRET\" "
      "{ discard; }", "", NULL },
    { "require \"body\"; if body :content \"application\" :matches \"SECRET *\" { discard; }", "",
      NULL },
    { "require \"body\"; if body :content \"image\" :contains \"\" { discard; }", "INBOX/", NULL },
    { "require \"body\"; if body :raw :contains \"Gr=FC\" { discard; }", "", NULL },
    { "require \"body\"; if body :raw :contains \"SECRET\" { discard; }", "INBOX/", NULL },
    /* variables: match variables, modifiers, unknown ones */
    { "require [\"variables\", \"fileinto\"];\n"
      "if header :matches \"List-Id\" \"*<*.lists.*>\" { fileinto \"lists.${2}\"; }", "lists.team/",
      NULL },
    { "require [\"variables\", \"fileinto\"]; set :upperfirst :lower \"f\" \"ARCHIVE\"; "
      "fileinto \"${F}\";", "Archive/", NULL },
    { "require [\"variables\", \"fileinto\"];\n"
      "if header :matches \"subject\" \"Invoice * for *\" { set \"n\" \"${1}\"; "
      "set :length \"l\" \"${2}\"; }\nfileinto \"${n}-${l}-${unset}${9}${env.x}\";",
      "4711-5-${env.x}/", NULL },
    { "require \"variables\"; set \"a\" \"hello\"; if string :is \"${a}\" \"hello\" { discard; }",
      "", NULL },
    { "require \"variables\"; set :quotewildcard \"p\" \"a*b\"; "
      "if string :matches \"aXb\" \"${p}\" { discard; }", "INBOX/", NULL },
    { "require \"variables\"; set :quotewildcard \"p\" \"a*b\"; "
      "if string :matches \"a*b\" \"${p}\" { discard; }", "", NULL },
    /* without require "variables" nothing is expanded */
    { "require \"fileinto\"; fileinto \"${x}\";", "${x}/", NULL },
    { "require \"variables\"; set \"to\" \"no address\"; redirect \"${to}\";", NULL,
      "not an address" },
    /* keywords: kept beside the system flags, what IMAP cannot carry left out */
    { "require \"imap4flags\"; setflag [\"$Junk\", \"\\\\Seen\", \"bad(kw\", \"\\\\Bogus\"]; "
      "addflag \"$label1 $Junk\";", "INBOX/S $Junk $label1", NULL },
    { "require [\"imap4flags\", \"fileinto\"]; fileinto :flags \"\\\\Seen $label1\" \"A\";",
      "A/S $label1", NULL },
    /* include */
    { "require \"include\"; include \"bills\";", "Bills/", NULL },
    { "require \"include\"; include :personal \"ret\";", "INBOX/", NULL },
    { "require \"include\"; include :global \"g\";", "G/", NULL },
    { "require \"include\"; include :once \"bills\"; include :once \"bills\";", "Bills/", NULL },
    { "require \"include\"; include :optional \"nope\";", "INBOX/", NULL },
    { "require [\"include\", \"variables\"]; set \"x\" \"1\"; include \"vars\";", "in-/", NULL },
    { "require \"include\"; include \"nope\";", NULL, "no such script" },
    { "require \"include\"; include :global \"bills\";", NULL, "no such script" },
    { "require \"include\"; include \"loop\";", NULL, "a loop" },
    { "require \"include\"; include \"self\";", NULL, "a loop" },
    { "require \"include\"; include \"broken\";", NULL, "expected ';'" },
    { "require \"include\"; include \"many\"; include \"many\"; include \"many\"; "
      "include \"many\";", NULL, "more than 32 includes" },
    /* global: shared both ways, the namespace, undeclared stays local */
    { "require [\"include\", \"variables\"]; global \"folder\"; set \"folder\" \"Lists\"; "
      "set \"global.other\" \"x\"; set \"local\" \"no\"; include \"gfolder\";",
      "Lists-x-/", NULL },
    { "require [\"include\", \"variables\", \"fileinto\"]; global \"FOLDER\"; include \"gset\"; "
      "fileinto \"${folder}.${global.other}.${local}\";", "fromsub.o./", NULL },
    { "require [\"include\", \"variables\"]; set \"global.folder\" \"G\"; include \"gfolder\";",
      "G--/", NULL },
    { "require [\"include\", \"variables\"]; global \"folder\"; set \"folder\" \"x\"; "
      "include \"gnodecl\";", "n-/", NULL },
    /* without "include" the namespace is not known: stays as written */
    { "require [\"variables\", \"fileinto\"]; fileinto \"${global.x}\";", "${global.x}/", NULL },
};

/* The shared set has one script's bounds: 128 variables in all, whatever
 * number of scripts set them (each of these alone sets 70). */
static void
test_global_bounds(void **state)
{
    (void)state;
    char err[300] = "";
    char *src = sets_script("global.m", 70);
    size_t l = strlen(src);
    src = realloc(src, l + 40);
    snprintf(src + l, 40, "include \"gmany\";\n");
    struct sieve_script *s = sieve_parse(src, strlen(src), err, sizeof(err));
    if (s == NULL)
        fail_msg("%s", err);
    struct sieve_input in = { .data = mime_msg, .len = sizeof(mime_msg) - 1,
                              .env_from = "bob@example.org", .env_to = "alice@example.com",
                              .load = load, .name = "main" };
    struct mailstore_sieve_result res;
    memset(&res, 0, sizeof(res));
    assert_int_equal(sieve_run(s, &in, &res, err, sizeof(err)), -1);
    if (strstr(err, "more than 128 global variables") == NULL)
        fail_msg("error \"%s\"", err);
    mailstore_sieve_result_free(&res);
    sieve_free(&s);
    free(src);
}

static void
test_extensions(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(ext_cases) / sizeof(ext_cases[0]); i++) {
        char err[300] = "";
        const char *src = ext_cases[i].script;
        struct sieve_script *s = sieve_parse(src, strlen(src), err, sizeof(err));
        if (s == NULL)
            fail_msg("case %zu: %s", i, err);
        struct sieve_input in = { .data = mime_msg, .len = sizeof(mime_msg) - 1,
                                  .env_from = "bob@example.org", .env_to = "alice@example.com",
                                  .load = load, .name = "main" };
        struct mailstore_sieve_result res;
        memset(&res, 0, sizeof(res));
        int rc = sieve_run(s, &in, &res, err, sizeof(err));
        if (ext_cases[i].folders == NULL) {
            if (rc == 0 || strstr(err, ext_cases[i].why) == NULL)
                fail_msg("case %zu: rc %d, error \"%s\"", i, rc, err);
        } else {
            if (rc < 0)
                fail_msg("case %zu: %s", i, err);
            char got[300] = "";
            for (size_t k = 0; k < res.nstore; k++)
                snprintf(got + strlen(got), sizeof(got) - strlen(got), "%s%s/%s", k ? " " : "",
                         res.store[k].folder ? res.store[k].folder : "INBOX", res.store[k].flags);
            if (strcmp(got, ext_cases[i].folders) != 0)
                fail_msg("case %zu: stores \"%s\"", i, got);
        }
        mailstore_sieve_result_free(&res);
        sieve_free(&s);
    }
}

static void
test_wildmatch_captures(void **state)
{
    (void)state;
    /* each '*' takes as little as it can (RFC 5229 3.2's example) */
    size_t caps[8];
    uint64_t budget = 10000;
    const char *v = "the quick brown fox";
    assert_int_equal(sieve_wildmatch_caps("* q?ick *", 9, v, strlen(v), false, &budget, caps, 6), 1);
    assert_int_equal(caps[0], 0);
    assert_int_equal(caps[1], 3);       /* "the" */
    assert_int_equal(caps[2], 5);
    assert_int_equal(caps[3], 6);       /* "u" */
    assert_int_equal(caps[4], 10);
    assert_int_equal(caps[5], strlen(v));
    const char *w = "a.b.c";
    assert_int_equal(sieve_wildmatch_caps("*.*", 3, w, 5, false, &budget, caps, 4), 1);
    assert_int_equal(caps[1], 1);       /* "a", the rest "b.c" */
    assert_int_equal(caps[2], 2);
    assert_int_equal(caps[3], 5);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_run),
        cmocka_unit_test(test_runtime_errors),
        cmocka_unit_test(test_wildmatch),
        cmocka_unit_test(test_wildmatch_captures),
        cmocka_unit_test(test_extensions),
        cmocka_unit_test(test_global_bounds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
