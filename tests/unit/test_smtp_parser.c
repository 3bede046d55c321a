/* Unit tests: the SMTP command parser, table-driven. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>
#include "../../gateway/gateway.h"

static void
test_verbs(void **state)
{
    (void)state;
    static const struct { const char *line; enum smtp_verb v; const char *args; } cases[] = {
        { "EHLO client.example", SMTP_EHLO, "client.example" },
        { "ehlo   spaced", SMTP_EHLO, "spaced" },
        { "MAIL FROM:<a@b.c>", SMTP_MAIL, "FROM:<a@b.c>" },
        { "rcpt to:<a@b.c>", SMTP_RCPT, "to:<a@b.c>" },
        { "DATA", SMTP_DATA, "" },
        { "BDAT 10 LAST", SMTP_BDAT, "10 LAST" },
        { "STARTTLS", SMTP_STARTTLS, "" },
        { "QUIT", SMTP_QUIT, "" },
        { "MAILX FROM:<a@b>", SMTP_UNKNOWN, "FROM:<a@b>" },
        { "", SMTP_UNKNOWN, "" },
        { "DAT", SMTP_UNKNOWN, "" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *args;
        assert_int_equal(smtp_parser_verb(cases[i].line, &args), cases[i].v);
        assert_string_equal(args, cases[i].args);
    }
}

static void
test_mail(void **state)
{
    (void)state;
    struct smtp_mail_args a;
    const char *why;
    assert_int_equal(smtp_parser_mail("FROM:<user@example.com>", &a, &why), 0);
    assert_string_equal(a.addr, "user@example.com");
    assert_int_equal(smtp_parser_mail("FROM:<>", &a, &why), 0);
    assert_string_equal(a.addr, "");
    assert_int_equal(smtp_parser_mail("FROM: <u@example.com> SIZE=1234 BODY=8BITMIME", &a, &why), 0);
    assert_true(a.has_size);
    assert_int_equal(a.size, 1234);
    assert_int_equal(a.body, SMTP_BODY_8BITMIME);
    assert_int_equal(smtp_parser_mail("FROM:<\"odd local\"@example.com>", &a, &why), 0);
    assert_string_equal(a.addr, "\"odd local\"@example.com");
    assert_int_equal(smtp_parser_mail("FROM:<@relay.example:u@example.com>", &a, &why), 0);
    assert_string_equal(a.addr, "u@example.com");
    assert_int_equal(smtp_parser_mail("FROM:<j\xc3\xb6@example.com> SMTPUTF8", &a, &why), 0);
    assert_true(a.smtputf8);
    assert_false(a.requiretls);
    assert_int_equal(smtp_parser_mail("FROM:<a@b.c> REQUIRETLS", &a, &why), 0);
    assert_true(a.requiretls);         /* RFC 8689; no value */
    assert_int_equal(smtp_parser_mail("FROM:<a@b.c> REQUIRETLS=yes", &a, &why), -2);
    /* refused */
    static const char *bad[] = {
        "FROM:<j\xc3\xb6@example.com>",     /* 8-bit without SMTPUTF8 */
        "TO:<a@b.c>", "FROM:<a@b.c", "FROM:<a@b.c>x", "FROM:<noatsign>", "FROM:<a@>",
        "FROM:<a@-bad.com>", "FROM:<a..b@c.com>", "FROM:<.a@c.com>", "FROM:<a@b.c> SIZE=x",
        "FROM:<a@b.c> SIZE=-1", "FROM:<a@b.c> BODY=BINARYMIME", "FROM:<a@b.c> RET=ALL",
        "FROM:", "FROM:<a@b c>",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(smtp_parser_mail(bad[i], &a, &why), -1);
    assert_int_equal(smtp_parser_mail("FROM:<a@b.c> XFOO=1", &a, &why), -2);
    /* a local part over 64*4 octets or a path over the limit */
    char longaddr[600] = "FROM:<";
    memset(longaddr + 6, 'a', 400);
    memcpy(longaddr + 406, "@b.c>", 6);
    assert_int_equal(smtp_parser_mail(longaddr, &a, &why), -1);
}

static void
test_rcpt(void **state)
{
    (void)state;
    struct smtp_rcpt_args a;
    const char *why;
    assert_int_equal(smtp_parser_rcpt("TO:<b@example.com>", &a, &why), 0);
    assert_string_equal(a.addr, "b@example.com");
    assert_string_equal(smtp_parser_domain(a.addr), "example.com");
    assert_int_equal(smtp_parser_rcpt("TO:<b@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+40example.com", &a, &why), 0);
    assert_string_equal(a.notify, "SUCCESS,FAILURE");
    assert_int_equal(smtp_parser_rcpt("TO:<b@example.com> NOTIFY=NEVER,SUCCESS", &a, &why), -1);
    /* an ORCPT longer than its buffer is refused, not cut */
    char big[600];
    snprintf(big, sizeof(big), "TO:<b@example.com> ORCPT=rfc822;%0540d", 0);
    assert_int_equal(smtp_parser_rcpt(big, &a, &why), -1);
    assert_int_equal(smtp_parser_rcpt("TO:<b@example.com> ORCPT=rfc822;b+zz", &a, &why), -1);
    assert_int_equal(smtp_parser_rcpt("TO:<>", &a, &why), -1);
    assert_int_equal(smtp_parser_rcpt("TO:<b@[127.0.0.1]>", &a, &why), 0);
    assert_string_equal(smtp_parser_domain(a.addr), "[127.0.0.1]");
}

static void
test_helo_bdat(void **state)
{
    (void)state;
    char d[256];
    const char *why;
    uint64_t size;
    bool last;
    assert_int_equal(smtp_parser_helo("mail.example.com extra", d, sizeof(d), &why), 0);
    assert_string_equal(d, "mail.example.com");
    assert_int_equal(smtp_parser_helo("[192.0.2.1]", d, sizeof(d), &why), 0);
    assert_int_equal(smtp_parser_helo("", d, sizeof(d), &why), -1);
    assert_int_equal(smtp_parser_helo("bad\rname", d, sizeof(d), &why), -1);
    assert_int_equal(smtp_parser_bdat("100", &size, &last, &why), 0);
    assert_int_equal(size, 100);
    assert_false(last);
    assert_int_equal(smtp_parser_bdat("0 LAST", &size, &last, &why), 0);
    assert_true(last);
    assert_int_equal(smtp_parser_bdat("LAST", &size, &last, &why), -1);
    assert_int_equal(smtp_parser_bdat("10 MORE", &size, &last, &why), -1);
    assert_int_equal(smtp_parser_bdat("99999999999999999999999", &size, &last, &why), -1);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_verbs),
        cmocka_unit_test(test_mail),
        cmocka_unit_test(test_rcpt),
        cmocka_unit_test(test_helo_bdat),
    };
    return cmocka_run_group_tests_name("smtp_parser", tests, NULL, NULL);
}
