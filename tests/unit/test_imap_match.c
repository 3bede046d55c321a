/* Unit tests: the LIST pattern matcher (mailstore/imap_match.c). A table
 * of patterns and names with the answers RFC 3501 6.3.8 gives, each
 * checked to stay within (|pattern| + 1) x (|name| + 1) steps -- the
 * penetration test's pattern took the recursive matcher before it forever. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>
#include "../../mailstore/imap_private.h"

static char a190[191], a1024[1025], dots[401];

static const struct {
    const char *pat, *name;
    bool match;
} cases[] = {
    { "INBOX", "INBOX", true },
    { "", "", true },
    { "", "a", false },
    { "*", "", true },
    { "%", "", true },
    { "*", "a.b.c", true },
    { "%", "ab", true },
    { "%", "a.b", false },
    { "a.%", "a.b", true },
    { "a.%", "a.b.c", false },
    { "a.*", "a.b.c", true },
    { "%.%", "a.b", true },
    { "%.%", "a.b.c", false },
    { "*.%", "a.b.c", true },
    { "%.*", "a.b.c", true },
    { "a%b", "axxb", true },
    { "a%b", "ax.xb", false },
    { "a*b", "ax.xb", true },
    { "%*", "a.b", true },          /* a run of wildcards with a '*' is a '*' */
    { "*%", "a.b", true },
    { "%%", "a.b", false },
    { "%%.%%", "a.b", true },
    { "Projects*", "Projects.2026", true },
    { "Proj%", "Projects.2026", false },
    { "Proj%", "Projects", true },
    { "a.b", "a.b", true },         /* the delimiter in a pattern is itself */
    { "a.b", "aXb", false },
    { "a", "ab", false },
    { "ab", "a", false },
    { "*b", "ab", true },
    { "b*", "ab", false },
    { "*a*a%a", NULL, true },       /* NULL: the 190 a's */
    { "%.a", NULL, false },
    { "*a*a*a*a*a*a*a*a*a*a*a*a*b", NULL, false },      /* the attack */
    { "%a%a%a%a%a%a%a%a%a%a%a%a%b", NULL, false },
    { "*a%a*a%a*a%a*a%a*a%a*a%a*b", NULL, false },
    { "*%*%*%*%*%*%*%*%*%*%*%*%*%", NULL, true },
    { "*a*a*a*a*a*a*a*a*a*a*a*a*a", NULL, true },
};

static void
test_table(void **state)
{
    (void)state;
    memset(a190, 'a', 190);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *name = cases[i].name ? cases[i].name : a190;
        size_t steps = 0;
        bool got = imap_match(cases[i].pat, name, &steps);
        if (got != cases[i].match)
            fail_msg("pattern \"%s\" against \"%.20s\": %d, want %d", cases[i].pat, name, got,
                     cases[i].match);
        size_t bound = (strlen(cases[i].pat) + 1) * (strlen(name) + 1);
        if (steps > bound)
            fail_msg("pattern \"%s\": %zu steps, more than %zu", cases[i].pat, steps, bound);
    }
}

/* Long patterns and names of the hierarchy delimiter: still bounded. */
static void
test_bounded_on_big_input(void **state)
{
    (void)state;
    memset(a1024, 'a', 1024);
    memset(dots, '.', 400);
    char pat[1201];
    for (size_t i = 0; i < 600; i++) {
        pat[2 * i] = i % 3 ? '%' : '*';
        pat[2 * i + 1] = 'a';
    }
    pat[1200] = '\0';
    pat[1199] = 'b';
    size_t steps;
    assert_false(imap_match(pat, a1024, &steps));
    assert_true(steps <= 1201 * 1025);
    assert_false(imap_match("%%%%%%%%%%%%%%%%%%%%%%%%a", dots, &steps));
    assert_true(steps <= 26 * 401);
    assert_true(imap_match("*.", dots, &steps));
    /* a name longer than any folder name matches nothing */
    char big[IMAP_MATCH_NAME_MAX + 2];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_false(imap_match("*", big, NULL));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_bounded_on_big_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
