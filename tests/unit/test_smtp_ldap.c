/* Unit tests: the LDAP filter made for a recipient (gateway/smtp_ldap.c),
 * escaped per RFC 4515 so that a hostile address is searched for
 * literally. Table-driven: template, address, the filter ("-1": refused). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>
#include "../../gateway/gateway.h"

static const struct {
    const char *tmpl, *addr, *want;
    size_t size;                /* 0: a big buffer */
} cases[] = {
    { "(mail=%s)", "alice@corp.example", "(mail=alice@corp.example)", 0 },
    { "(|(mail=%s)(proxyAddresses=smtp:%s))", "a@b", "(|(mail=a@b)(proxyAddresses=smtp:a@b))", 0 },
    { "(&(uid=%u)(dc=%d))", "bob@corp.example", "(&(uid=bob)(dc=corp.example))", 0 },
    { "(mail=%s)", "*@corp.example", "(mail=\\2a@corp.example)", 0 },
    { "(mail=%s)", "*)(mail=*", "(mail=\\2a\\29\\28mail=\\2a)", 0 },
    { "(mail=%s)", "\"x\\\\)\"@a", "(mail=\"x\\5c\\5c\\29\"@a)", 0 },
    { "(mail=%s)", "j\xc3\xb6s\x01@a", "(mail=j\\c3\\b6s\\01@a)", 0 },
    { "(uid=%u)", "no-at-sign", "(uid=no-at-sign)", 0 },
    { "(uid=%u%%)", "a@b", "(uid=a%)", 0 },
    { "(mail=%s)", "a@b", "(mail=a@b)", 11 },      /* just fits */
    { "(mail=%s)", "a@b", "-1", 10 },              /* one short */
    { "(mail=%s)", "*@b", "(mail=\\2a@b)", 13 },   /* just fits */
    { "(mail=%s)", "*@b", "-1", 12 },
    { "(mail=%s)", "*@b", "-1", 9 },               /* the escape itself does not fit */
    { "(mail=%s)", "a@b", "-1", 1 },
};

static void
test_filters(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char out[600];
        size_t size = cases[i].size ? cases[i].size : 512;
        memset(out, 'Z', sizeof(out));
        int r = smtp_ldap_filter(cases[i].tmpl, cases[i].addr, out, size);
        if (strcmp(cases[i].want, "-1") == 0) {
            assert_int_equal(r, -1);
            assert_string_equal(out, "");
        } else {
            assert_int_equal(r, 0);
            assert_string_equal(out, cases[i].want);
        }
        assert_int_equal(out[size], 'Z');        /* nothing past the bound */
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_filters),
    };
    return cmocka_run_group_tests_name("smtp_ldap", tests, NULL, NULL);
}
