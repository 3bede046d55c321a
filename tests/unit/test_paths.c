/* Unit tests: the paths under state_dir (common/paths.c), named once: the
 * layout README.md describes, and a state_dir too long for a path is an
 * error, never a cut-off path. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>
#include "../../common/mail.h"

static void
test_names(void **state)
{
    (void)state;
    static const struct { enum state_path p; const char *want; bool made; } v[] = {
        { PATH_QUEUE_TMP, "/s/queue/tmp", true },
        { PATH_QUEUE_INCOMING, "/s/queue/incoming", true },
        { PATH_QUEUE_DEFERRED, "/s/queue/deferred", true },
        { PATH_QUARANTINE, "/s/quarantine", true },
        { PATH_CACHE, "/s/cache", true },
        { PATH_ACCOUNTS, "/s/accounts", false },
        { PATH_MAIL, "/s/mail", false },
        { PATH_DKIM, "/s/dkim", false },
        { PATH_DMARC, "/s/dmarc", false },
        { PATH_SRS_SECRET, "/s/srs.secret", false },
        { PATH_WEB_KEY, "/s/web.key", false },
        { PATH_DIGEST_LAST, "/s/digest.last", false },
        { PATH_APP_USED, "/s/app-used", true },
        { PATH_PID_FILE, "/s/moatd.pid", false },
        { PATH_STATUS, "/s/moatd.status", false },
        { PATH_QUEUE_HOLD, "/s/queue/hold", true },
        { PATH_DOMAINS, "/s/domains.conf", false },
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        char out[64];
        assert_int_equal(paths_get("/s", v[i].p, out, sizeof(out)), 0);
        assert_string_equal(out, v[i].want);
        assert_int_equal(paths_made_at_start(v[i].p), v[i].made);
    }
    char out[64];
    assert_int_equal(paths_in("/s", PATH_QUARANTINE, "0123456789ABCDEF0123", out, sizeof(out)), 0);
    assert_string_equal(out, "/s/quarantine/0123456789ABCDEF0123");
    for (int i = 0; i < PATH__COUNT; i++) {     /* every one has a name */
        assert_int_equal(paths_get("/s", (enum state_path)i, out, sizeof(out)), 0);
        assert_null(strstr(out, "(null)"));
    }
}

static void
test_too_long(void **state)
{
    (void)state;
    char out[16];
    errno = 0;
    assert_int_equal(paths_get("/var/lib/moat", PATH_QUEUE_INCOMING, out, sizeof(out)), -1);
    assert_int_equal(errno, ENAMETOOLONG);
    assert_int_equal(paths_in("/s", PATH_QUARANTINE, "0123456789ABCDEF0123", out, sizeof(out)), -1);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_too_long),
    };
    return cmocka_run_group_tests_name("paths", tests, NULL, NULL);
}
