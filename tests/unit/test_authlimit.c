/* Unit tests: the failed-login limiter (common/authlimit.c) and the client
 * key that per-client limits count by. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>
#include "../../common/util.h"

static void
test_limit_key(void **state)
{
    (void)state;
    char k[ADDR_KEY_MAX];
    addr_limit_key("192.0.2.7", k, sizeof(k));
    assert_string_equal(k, "192.0.2.7");
    addr_limit_key("::ffff:192.0.2.7", k, sizeof(k));
    assert_string_equal(k, "192.0.2.7");
    addr_limit_key("2001:db8:1:2:aaaa:bbbb:cccc:dddd", k, sizeof(k));
    assert_string_equal(k, "2001:db8:1:2::/64");
    addr_limit_key("2001:db8:1:2::1", k, sizeof(k));
    assert_string_equal(k, "2001:db8:1:2::/64");
    addr_limit_key("2001:db8:1:3::1", k, sizeof(k));
    assert_string_equal(k, "2001:db8:1:3::/64");
}

/* A success for one's own account does not reset the count of guesses at
 * another's (the reset the penetration test used). */
static void
test_success_clears_only_its_account(void **state)
{
    (void)state;
    struct authlimit *l = authlimit_new();
    for (int i = 0; i < AUTHLIMIT_BLOCK_AFTER - 1; i++) {
        assert_true(authlimit_blocked(l, "192.0.2.7", "victim@a.example") == 0);
        authlimit_failed(l, "192.0.2.7", "victim@a.example");
        authlimit_ok(l, "192.0.2.7", "attacker@a.example");
    }
    assert_true(authlimit_blocked(l, "192.0.2.7", "victim@a.example") == 0);
    authlimit_failed(l, "192.0.2.7", "Victim@A.example");
    assert_true(authlimit_blocked(l, "192.0.2.7", "victim@a.example") > 0);
    /* the attacker's own account is still open to this client */
    assert_true(authlimit_blocked(l, "192.0.2.7", "attacker@a.example") == 0);
    /* and the victim from another client too */
    assert_true(authlimit_blocked(l, "192.0.2.8", "victim@a.example") == 0);
    /* her own success clears her count */
    authlimit_ok(l, "192.0.2.7", "victim@a.example");
    assert_true(authlimit_blocked(l, "192.0.2.7", "victim@a.example") == 0);
    authlimit_free(&l);
    assert_null(l);
}

/* One /64 is one client: addresses spread over it share the count. */
static void
test_ipv6_slash64(void **state)
{
    (void)state;
    struct authlimit *l = authlimit_new();
    char a[64];
    for (int i = 0; i < AUTHLIMIT_BLOCK_AFTER; i++) {
        snprintf(a, sizeof(a), "2001:db8:5:6::%x", i + 1);
        authlimit_failed(l, a, "victim@a.example");
    }
    assert_true(authlimit_blocked(l, "2001:db8:5:6:ffff::1", "victim@a.example") > 0);
    assert_true(authlimit_blocked(l, "2001:db8:5:7::1", "victim@a.example") == 0);
    authlimit_free(&l);
}

/* Spraying many accounts from one client hits the client's total. */
static void
test_spraying(void **state)
{
    (void)state;
    struct authlimit *l = authlimit_new();
    char u[64];
    for (int i = 0; i < AUTHLIMIT_CLIENT_BLOCK_AFTER; i++) {
        snprintf(u, sizeof(u), "user%d@a.example", i);
        assert_true(authlimit_blocked(l, "198.51.100.1", u) == 0);
        authlimit_failed(l, "198.51.100.1", u);
    }
    assert_true(authlimit_blocked(l, "198.51.100.1", "someone-new@a.example") > 0);
    assert_true(authlimit_blocked(l, "198.51.100.1", NULL) > 0);
    assert_true(authlimit_blocked(l, "198.51.100.2", NULL) == 0);
    authlimit_free(&l);
}

/* The wait doubles per failure of one account, up to 8 s. */
static void
test_delays(void **state)
{
    (void)state;
    struct authlimit *l = authlimit_new();
    double want[] = { 0.5, 1, 2, 4, 8, 8 };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        assert_true(authlimit_failed(l, "192.0.2.9", "x@a.example") == want[i]);
    authlimit_free(&l);
}

/* With Redis away (nothing listens on port 1), the process counts alone:
 * the same limits hold, nothing waits or fails. */
static void
test_redis_away_counts_locally(void **state)
{
    (void)state;
    struct authlimit *l = authlimit_new();
    authlimit_set_redis(l, "127.0.0.1:1", 200);
    for (int i = 0; i < AUTHLIMIT_BLOCK_AFTER; i++) {
        assert_true(authlimit_blocked(l, "2001:db8:9:9::1", "victim@a.example") == 0);
        authlimit_failed(l, "2001:db8:9:9::1", "victim@a.example");
    }
    assert_true(authlimit_blocked(l, "2001:db8:9:9:ffff::2", "victim@a.example") > 0);
    authlimit_ok(l, "2001:db8:9:9::1", "victim@a.example");
    assert_true(authlimit_blocked(l, "2001:db8:9:9::1", "victim@a.example") == 0);
    authlimit_free(&l);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_limit_key),
        cmocka_unit_test(test_success_clears_only_its_account),
        cmocka_unit_test(test_ipv6_slash64),
        cmocka_unit_test(test_spraying),
        cmocka_unit_test(test_delays),
        cmocka_unit_test(test_redis_away_counts_locally),
    };
    return cmocka_run_group_tests_name("authlimit", tests, NULL, NULL);
}
