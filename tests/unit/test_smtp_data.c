/* Unit tests: the DATA/BDAT reader, fed whole and one byte at a time. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "../../gateway/gateway.h"

struct result {
    char out[4096];
    size_t outlen;
    size_t consumed;
    bool end;
    uint64_t bare;
};

/* Feed in pieces of `step` bytes (0: all at once). */
static void
run(const char *in, size_t len, bool bdat, size_t step, struct result *r)
{
    struct smtp_data d;
    smtp_data_init(&d, bdat);
    memset(r, 0, sizeof(*r));
    size_t off = 0;
    while (off < len && !r->end) {
        size_t n = step ? (len - off < step ? len - off : step) : len - off;
        char tmp[2 * 4096 + 2];
        size_t olen, used;
        r->end = smtp_data_feed(&d, in + off, n, tmp, &olen, &used);
        memcpy(r->out + r->outlen, tmp, olen);
        r->outlen += olen;
        off += used;
        if (!r->end)
            assert_int_equal(used, n);
    }
    if (bdat)
        r->outlen += smtp_data_finish(&d, r->out + r->outlen);
    r->consumed = off;
    r->bare = d.bare;
}

static void
check(const char *in, bool bdat, const char *want, bool want_end, size_t want_consumed,
      uint64_t want_bare)
{
    size_t len = strlen(in);
    for (size_t step = 0; step <= 3; step++) {
        struct result r;
        run(in, len, bdat, step, &r);
        assert_int_equal(r.end, want_end);
        assert_int_equal(r.outlen, strlen(want));
        assert_memory_equal(r.out, want, r.outlen);
        assert_int_equal(r.consumed, want_consumed);
        assert_int_equal(r.bare, want_bare);
    }
}

static void
test_plain(void **state)
{
    (void)state;
    const char *in = "Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n";
    check(in, false, "Subject: x\r\n\r\nhello\r\n", true, strlen(in) - 6, 0);
    check(".\r\n", false, "", true, 3, 0);       /* empty message */
}

static void
test_dot_unstuffing(void **state)
{
    (void)state;
    check("..\r\n...x\r\n.y\r\n.\r\n", false, ".\r\n..x\r\ny\r\n", true, 17, 0);
    check("a.\r\n. \r\n.\r\n", false, "a.\r\n \r\n", true, 11, 0);
}

static void
test_smuggling_sequences_never_end_data(void **state)
{
    (void)state;
    static const char *seqs[] = { "\n.\n", "\n.\r\n", "\r\n.\n", "\r.\r\n", "\r\n.\r", "\r.\r" };
    for (size_t i = 0; i < sizeof(seqs) / sizeof(seqs[0]); i++) {
        char in[256];
        snprintf(in, sizeof(in), "body%sMAIL FROM:<x@y.z>\r\n", seqs[i]);
        struct result r;
        run(in, strlen(in), false, 0, &r);
        assert_false(r.end);
        assert_int_equal(r.consumed, strlen(in));
        assert_true(r.bare > 0);
        /* the output has CRLF endings only */
        for (size_t k = 0; k < r.outlen; k++) {
            if (r.out[k] == '\r')
                assert_true(k + 1 < r.outlen && r.out[k + 1] == '\n');
            if (r.out[k] == '\n')
                assert_true(k > 0 && r.out[k - 1] == '\r');
        }
    }
    check("a\nb\r\n.\r\n", false, "a\r\nb\r\n", true, 8, 1);
    check("a\rb\r\n.\r\n", false, "a\r\nb\r\n", true, 8, 1);
}

static void
test_bdat(void **state)
{
    (void)state;
    /* no dot handling; a trailing CR is a bare CR at LAST */
    check(".\r\n..x\r\n", true, ".\r\n..x\r\n", false, 8, 0);
    check("a\r", true, "a\r\n", false, 2, 1);
    check("a\nb", true, "a\r\nb", false, 3, 1);
}

static void
test_binary_bytes_pass(void **state)
{
    (void)state;
    char in[300], want[300];
    size_t n = 0;
    for (int c = 1; c < 256; c++)
        if (c != '\r' && c != '\n')
            in[n++] = (char)c;
    memcpy(want, in, n);
    memcpy(in + n, "\r\n.\r\n", 6);
    memcpy(want + n, "\r\n", 3);
    check(in, false, want, true, n + 5, 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain),
        cmocka_unit_test(test_dot_unstuffing),
        cmocka_unit_test(test_smuggling_sequences_never_end_data),
        cmocka_unit_test(test_bdat),
        cmocka_unit_test(test_binary_bytes_pass),
    };
    return cmocka_run_group_tests_name("smtp_data", tests, NULL, NULL);
}
