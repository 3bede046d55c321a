/* Unit tests: the addresses a From field shows (gateway/smtp_from.c), as
 * the sender ownership check reads them. Table-driven: each value and the
 * addresses it must yield, joined by spaces; "-1" for a refusal. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>
#include "../../gateway/gateway.h"
#include "../../common/util.h"

static void
run(const char *value, size_t max, char *got, size_t size)
{
    char out[8][SMTP_ADDR_MAX + 1];
    int n = smtp_from_addrs(value, strlen(value), out, max);
    got[0] = '\0';
    if (n < 0) {
        str_copy(got, "-1", size);
        return;
    }
    for (int i = 0; i < n; i++)
        snprintf(got + strlen(got), size - strlen(got), "%s%s", i ? " " : "", out[i]);
}

static void
test_from_addresses(void **state)
{
    (void)state;
    static const struct { const char *value, *want; } cases[] = {
        { " alice@a.example", "alice@a.example" },
        { " Alice <alice@a.example>", "alice@a.example" },
        { " \"Alice Smith\" <alice@a.example>", "alice@a.example" },
        { " alice@a.example (Alice)", "alice@a.example" },
        { " (c) Alice (x (nested) y) <alice@a.example> (trail)", "alice@a.example" },
        { " Alice\r\n <alice@a.example>", "alice@a.example" },            /* folded */
        { " a@a.example, Bob <b@b.example>", "a@a.example b@b.example" },
        /* what readers show must be what is checked */
        { " \"ceo\"@b.example", "ceo@b.example" },
        { " \"c\\\"eo\"@b.example", "c\"eo@b.example" },
        { " ceo@b.example <alice@a.example>", "alice@a.example ceo@b.example" },
        { " \"ceo@b.example\" <alice@a.example>", "alice@a.example" },   /* a display name */
        { " <alice@a.example> <ceo@b.example>", "alice@a.example ceo@b.example" },
        { " <@relay.example,@r2.example:ceo@b.example>", "ceo@b.example" },
        { " Team: alice@a.example, <ceo@b.example>;", "alice@a.example ceo@b.example" },
        { " undisclosed-recipients:;", "" },
        { " ceo@b.example: alice@a.example;", "ceo@b.example alice@a.example" },
        { " <alice@a.example", "alice@a.example" },                     /* never closed */
        { " alice", "alice" },
        { " <>", "" },
        { "", "" },
        { " ,,, ", "" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char got[2048];
        run(cases[i].value, 8, got, sizeof(got));
        if (strcmp(got, cases[i].want) != 0)
            fail_msg("%zu: [%s] gave [%s], want [%s]", i, cases[i].value, got, cases[i].want);
    }
    /* more addresses than asked for are refused, not cut */
    char got[2048];
    run(" a@a.example,b@b.example", 2, got, sizeof(got));
    assert_string_equal(got, "a@a.example b@b.example");
    run(" a@a.example,b@b.example,c@c.example", 2, got, sizeof(got));
    assert_string_equal(got, "-1");
    /* an address longer than an SMTP address is refused, not cut */
    char longv[600];
    memset(longv, 'x', sizeof(longv) - 20);
    str_copy(longv + sizeof(longv) - 20, "@b.example", 20);
    run(longv, 8, got, sizeof(got));
    assert_string_equal(got, "-1");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_from_addresses),
    };
    return cmocka_run_group_tests_name("smtp_from", tests, NULL, NULL);
}
