/* Unit tests: the JSON writer (common/json.c) and the \u escapes of the
 * parser that reads the API's bodies (common/conf_parse.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>
#include "../../common/util.h"

static char *
one_string(const char *s, size_t n)
{
    static char out[512];
    struct jbuf b = { 0 };
    jb_strn(&b, s, n);
    str_copy(out, b.p, sizeof(out));
    jb_free(&b);
    return out;
}

static void
test_escapes(void **state)
{
    (void)state;
    static const struct { const char *in; size_t n; const char *out; } v[] = {
        { "plain", 5, "\"plain\"" },
        { "q\"b\\", 4, "\"q\\\"b\\\\\"" },
        { "<script>&", 9, "\"\\u003cscript\\u003e\\u0026\"" },
        { "a\r\n\tb", 5, "\"a\\u000d\\u000a\\u0009b\"" },
        { "n\0ul", 4, "\"n\\ufffdul\"" },                  /* NUL: U+FFFD */
        { "\xc3\xa4\xf0\x9f\x98\x80", 6, "\"\xc3\xa4\xf0\x9f\x98\x80\"" },   /* UTF-8 kept */
        { "\xff\xc3", 2, "\"\\ufffd\\ufffd\"" },           /* invalid, truncated */
        { "\xed\xa0\x80", 3, "\"\\ufffd\\ufffd\\ufffd\"" }, /* a surrogate is not UTF-8 */
        { "\xc0\xaf", 2, "\"\\ufffd\\ufffd\"" },           /* overlong */
        { "\x7f", 1, "\"\\u007f\"" },
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
        assert_string_equal(one_string(v[i].in, v[i].n), v[i].out);
}

static void
test_structure_and_commas(void **state)
{
    (void)state;
    struct jbuf b = { 0 };
    jb_obj(&b);
    jb_kstr(&b, "a", "x");
    jb_key(&b, "list");
    jb_arr(&b);
    jb_int(&b, 1);
    jb_num(&b, 2.5);
    jb_bool(&b, true);
    jb_null(&b);
    jb_obj(&b);
    jb_obj_end(&b);
    jb_json(&b, "[1,2]", 5);
    jb_arr_end(&b);
    jb_kbool(&b, "ok", false);
    jb_obj_end(&b);
    assert_string_equal(b.p, "{\"a\":\"x\",\"list\":[1,2.5,true,null,{},[1,2]],\"ok\":false}");
    /* and it parses back */
    char err[100];
    struct conf_node *n = conf_parse(b.p, b.len, err, sizeof(err));
    assert_non_null(n);
    assert_string_equal(n->child->value, "x");
    conf_node_free(&n);
    jb_free(&b);
}

static void
test_parser_unicode_escapes(void **state)
{
    (void)state;
    static const struct { const char *json, *value; } ok[] = {
        { "{\"k\": \"\\u00e4\\u20ac\"}", "\xc3\xa4\xe2\x82\xac" },
        { "{\"k\": \"\\ud83d\\ude00\"}", "\xf0\x9f\x98\x80" },     /* a surrogate pair */
        { "{\"k\": \"\\u003cb\\u003e\"}", "<b>" },
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        char err[100];
        struct conf_node *n = conf_parse(ok[i].json, strlen(ok[i].json), err, sizeof(err));
        assert_non_null(n);
        assert_string_equal(n->child->value, ok[i].value);
        conf_node_free(&n);
    }
    static const char *const bad[] = {
        "{\"k\": \"\\ud83d\"}",         /* lone high surrogate */
        "{\"k\": \"\\ude00\"}",         /* lone low surrogate */
        "{\"k\": \"\\u0000\"}",         /* NUL */
        "{\"k\": \"\\u12\"}",           /* short */
        "{\"k\": \"\\uzzzz\"}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char err[100] = "";
        struct conf_node *n = conf_parse(bad[i], strlen(bad[i]), err, sizeof(err));
        assert_null(n);
        assert_non_null(strstr(err, "bad \\u escape"));
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escapes),
        cmocka_unit_test(test_structure_and_commas),
        cmocka_unit_test(test_parser_unicode_escapes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
