/* Unit tests: header fields and the author domain for the plugins
 * (filters/header.c), with the From-header vectors of
 * ../shared/testdata/dmarc/dmarc-vectors.yml (OpenDMARC's finddomain). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>
#include "../../filters/filter.h"

static int
from_of(const char *header_value, char *out, size_t size)
{
    char msg[1024];
    snprintf(msg, sizeof(msg), "Received: x\r\nFrom: %s\r\nSubject: s\r\n\r\nFrom: body@no.pe\r\n",
             header_value);
    struct filter_msg m = { .data = msg, .len = strlen(msg) };
    return filter_from_domain(&m, out, size);
}

static void
test_from_vectors(void **state)
{
    (void)state;
    static const struct { const char *header, *domain; } v[] = {
        { "Joe Johnson <joe@joe.com>", "joe.com" },
        { "\"Johnson, Joe <joe@joe.com>\" joe@joe.com", "joe.com" },
        { "\"Joe Johnson\" <joe@joe.com>", "joe.com" },
        { "(Joe Johnson) joe@joe.com", "joe.com" },
        { "joe@joe.com", "joe.com" },
        { "<<<><joe@joe.com>>>", "joe.com" },
        { "Mail From:<joe@joe.com>", "joe.com" },
        { "\"Mandel, Bob\" <joe@joe.com>", "joe.com" },
        { "(,) joe@joe.com", "joe.com" },
        { "\"( bob@bob.com)\" joe@joe.com", "joe.com" },
        { "From: Davide D'Marco <user@blah.com>", "blah.com" },
        { "Upper <Joe@JOE.Example.>", "joe.example" },
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        char d[256];
        assert_int_equal(from_of(v[i].header, d, sizeof(d)), 0);
        assert_string_equal(d, v[i].domain);
    }
    /* OpenDMARC takes the first of several authors; we refuse to guess */
    char d[256];
    assert_int_equal(from_of("Joe Johnson <joe@joe.com>, ace@ace.com", d, sizeof(d)), -2);
    assert_int_equal(from_of("joe@joe.com, ace@ace.com", d, sizeof(d)), -2);
    assert_int_equal(from_of("undisclosed", d, sizeof(d)), -1);
    assert_int_equal(from_of("<>", d, sizeof(d)), -1);
}

static void
test_headers(void **state)
{
    (void)state;
    const char *msg = "Subject: one\r\n\ttwo\r\nX-A: 1\r\nx-a : 2\r\nFrom: a@b.c\r\nFrom: d@e.f\r\n"
                      "\r\nX-A: body\r\n";
    struct filter_msg m = { .data = msg, .len = strlen(msg) };
    size_t len;
    const char *v = filter_header(&m, "subject", 0, &len);
    assert_non_null(v);
    assert_int_equal(len, strlen(" one\r\n\ttwo"));
    assert_memory_equal(v, " one\r\n\ttwo", len);
    assert_non_null(filter_header(&m, "X-A", 1, &len));
    assert_memory_equal(filter_header(&m, "X-A", 1, &len), " 2", 2);
    assert_null(filter_header(&m, "X-A", 2, &len));        /* not from the body */
    char d[64];
    assert_int_equal(filter_from_domain(&m, d, sizeof(d)), -2);   /* two From fields */
    struct filter_msg none = { .data = "", .len = 0 };
    assert_null(filter_header(&none, "From", 0, &len));
    /* a header cut off without a final CRLF */
    const char *cut = "From: x@cut.example";
    struct filter_msg c = { .data = cut, .len = strlen(cut) };
    assert_int_equal(filter_from_domain(&c, d, sizeof(d)), 0);
    assert_string_equal(d, "cut.example");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_from_vectors),
        cmocka_unit_test(test_headers),
    };
    return cmocka_run_group_tests_name("header", tests, NULL, NULL);
}
