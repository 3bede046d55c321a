/* Unit tests: the one header walk (common/rfc5322.c) that every role reads
 * header fields with: folding, the empty line (CRLF or a bare LF) that
 * ends the header, fields without a colon, a header cut off, and where the
 * body starts for the bounce and the MIME structure. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>
#include "../../common/mail.h"

/* The fields of msg as "name=value|..." (name "-" for a field without a
 * colon), up to the end of the header. */
static void
fields(const char *msg, char *out, size_t size)
{
    struct rfc5322_field f;
    size_t o = 0;
    out[0] = '\0';
    for (const char *p = msg; (p = rfc5322_next(p, msg + strlen(msg), &f)) != NULL;) {
        int k = f.name ? snprintf(out + o, size - o, "%.*s=%.*s|", (int)f.nlen, f.name,
                                  (int)f.vlen, f.val)
                       : snprintf(out + o, size - o, "-|");
        o += (size_t)k;
    }
}

static void
test_walk(void **state)
{
    (void)state;
    static const struct { const char *msg, *want; } v[] = {
        { "Subject: one\r\n\ttwo\r\nX-A: 1\r\n\r\nX-B: body\r\n", "Subject= one\r\n\ttwo|X-A= 1|" },
        { "x-a : 2\r\nX-B:\r\n\r\n", "x-a= 2|X-B=|" },             /* blanks before the colon */
        { "A: 1\nB: 2\n\nC: body\n", "A= 1|B= 2|" },                /* bare LF lines */
        { "A: 1\r\n\nC: body\r\n", "A= 1|" },                       /* a bare LF empty line */
        { "no colon here\r\nA: 1\r\n\r\n", "-|A= 1|" },
        { ": no name\r\n\r\n", "-|" },
        { "A: cut off", "A= cut off|" },
        { "A: 1\r\n \r\n\r\n", "A= 1\r\n |" },                      /* a blank continuation */
        { "A: 1\r\n\rB: 2\r\n\r\n", "A= 1|\rB= 2|" },                /* a lone CR ends no line */
        { "\r\nA: body\r\n", "" },
        { "", "" },
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        char got[256];
        fields(v[i].msg, got, sizeof(got));
        assert_string_equal(got, v[i].want);
    }
    struct rfc5322_field f;
    assert_null(rfc5322_next(NULL, NULL, &f));
    assert_null(f.name);
}

static void
test_find_and_header_len(void **state)
{
    (void)state;
    const char *msg = "Received: a\r\nreceived: b\r\nSubject: s\r\n\r\nReceived: body\r\n";
    const char *end = msg + strlen(msg);
    size_t len;
    const char *v = rfc5322_find(msg, end, "RECEIVED", 1, &len);
    assert_non_null(v);
    assert_int_equal(len, 2);
    assert_memory_equal(v, " b", 2);
    assert_null(rfc5322_find(msg, end, "Received", 2, &len));   /* not from the body */
    assert_null(rfc5322_find(msg, end, "Subj", 0, &len));
    assert_int_equal(rfc5322_header_len(msg, strlen(msg)), strlen("Received: a\r\nreceived: b\r\nSubject: s\r\n"));
    assert_int_equal(rfc5322_header_len("A: 1\n\nbody", 10), 5);
    assert_int_equal(rfc5322_header_len("A: no end", 9), 9);
    assert_int_equal(rfc5322_header_len("\r\nbody", 6), 0);
    assert_int_equal(rfc5322_header_len(NULL, 0), 0);
    struct rfc5322_field f = { "Subject", 7, NULL, 0 };
    assert_true(rfc5322_is(&f, "subject"));
    assert_false(rfc5322_is(&f, "Subjec"));
    f.name = NULL;
    assert_false(rfc5322_is(&f, "Subject"));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_walk),
        cmocka_unit_test(test_find_and_header_len),
    };
    return cmocka_run_group_tests_name("rfc5322", tests, NULL, NULL);
}
