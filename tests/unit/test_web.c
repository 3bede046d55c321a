/* Unit tests: who may see what in the web role (webui/web_access.c), and
 * its request parsing (webui/web_route.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "../../webui/web_private.h"

static struct principal
who(const char *user, enum web_role role, const char *d1, const char *d2)
{
    struct principal p;
    memset(&p, 0, sizeof(p));
    str_copy(p.user, user, sizeof(p.user));
    p.role = role;
    if (d1)
        str_copy(p.domains[p.ndomains++], d1, sizeof(p.domains[0]));
    if (d2)
        str_copy(p.domains[p.ndomains++], d2, sizeof(p.domains[0]));
    return p;
}

static void
test_access(void **state)
{
    (void)state;
    struct principal root = who("root@a.example", ROLE_SUPERADMIN, "a.example", NULL);
    struct principal adm = who("admin@a.example", ROLE_ADMIN, "a.example", "c.example");
    struct principal alice = who("alice@a.example", ROLE_USER, "a.example", NULL);
    const struct { const struct principal *p; const char *addr; bool can; } v[] = {
        { &root, "anyone@elsewhere.example", true },
        { &adm, "bob@a.example", true },
        { &adm, "BOB@A.EXAMPLE", true },
        { &adm, "x@c.example", true },
        { &adm, "x@b.example", false },
        { &adm, "x@sub.a.example", false },       /* a subdomain is another domain */
        { &alice, "alice@a.example", true },
        { &alice, "Alice+news@A.example", true }, /* +tags are hers */
        { &alice, "alice@b.example", false },
        { &alice, "bob@a.example", false },
        { &alice, "alicex@a.example", false },
        { &alice, "alice", false },
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
        assert_int_equal(web_can_address(v[i].p, v[i].addr), v[i].can);
    assert_true(web_can_scope(&root, "global"));
    assert_false(web_can_scope(&adm, "global"));
    assert_true(web_can_scope(&adm, "c.example"));
    assert_false(web_can_scope(&adm, "b.example"));
    assert_false(web_can_scope(&alice, "a.example"));   /* a user has no domain */
    assert_true(web_can_scope(&alice, "alice@a.example"));
    assert_false(web_can_domain(&alice, "a.example"));
}

static void
test_routes(void **state)
{
    (void)state;
    char *args[4];
    size_t n;
    assert_true(web_route_match("/api/v1/quarantine/*/release", "/api/v1/quarantine/ABC/release",
                                args, &n));
    assert_int_equal(n, 1);
    assert_string_equal(args[0], "ABC");
    free(args[0]);
    assert_false(web_route_match("/api/v1/quarantine/*", "/api/v1/quarantine/", args, &n));
    assert_false(web_route_match("/api/v1/quarantine/*", "/api/v1/quarantine/a/b", args, &n));
    for (size_t i = 0; i < n; i++)
        free(args[i]);
    assert_false(web_route_match("/api/v1/me", "/api/v1/me/", args, &n));
    assert_true(web_route_match("/metrics", "/metrics", args, &n));
    assert_int_equal(n, 0);
}

static void
test_cookies(void **state)
{
    (void)state;
    char out[16];
    web_cookie_value("a=1; moat_session=abc; b=2", "moat_session", out, sizeof(out));
    assert_string_equal(out, "abc");
    web_cookie_value("xmoat_session=evil; moat_session=good", "moat_session", out, sizeof(out));
    assert_string_equal(out, "good");
    web_cookie_value("moat_session=0123456789abcdefTOOLONG", "moat_session", out, sizeof(out));
    assert_string_equal(out, "");               /* does not fit: none, never cut */
    web_cookie_value("moat_session", "moat_session", out, sizeof(out));
    assert_string_equal(out, "");
    web_cookie_value(";;;", "moat_session", out, sizeof(out));
    assert_string_equal(out, "");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_access),
        cmocka_unit_test(test_routes),
        cmocka_unit_test(test_cookies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
