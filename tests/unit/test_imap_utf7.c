/* Unit tests: folder names between modified UTF-7 and UTF-8
 * (mailstore/imap_utf7.c, RFC 3501 5.1.3, RFC 6855). A table of names in
 * both forms, each converted both ways; modified UTF-7 that is not in its
 * one form, and UTF-8 that is not UTF-8, refused; output bounded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "../../mailstore/imap_private.h"

static const struct {
    const char *utf8, *utf7;
} pairs[] = {
    { "INBOX", "INBOX" },
    { "", "" },
    { "Entwürfe", "Entw&APw-rfe" },
    { "日本語", "&ZeVnLIqe-" },
    { "日本語.子", "&ZeVnLIqe-.&W1A-" },
    { "Résumé", "R&AOk-sum&AOk-" },
    { "&", "&-" },
    { "Q&A", "Q&-A" },
    { "a&-b", "a&--b" },
    { "~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-" },  /* RFC 3501's example */
    { "😀", "&2D3eAA-" },                       /* outside the BMP: a surrogate pair */
    { "ä😀b", "&AOTYPd4A-b" },
    { "tab\there", "tab&AAk-here" },             /* control characters are encoded too */
    { "Ελληνικά", "&A5UDuwO7A7cDvQO5A7oDrA-" },
};

static const char *const bad_utf7[] = {
    "&AOQ",         /* no '-' */
    "&AGE-",        /* 'a' in base64 */
    "&AOQ-&APw-",   /* two runs side by side: one is the form */
    "&2D0-",        /* a high surrogate alone */
    "&3gA-",        /* a low surrogate alone */
    "&AOQA-",       /* padding bits that are not zero */
    "&AAA-",        /* NUL */
    "a\xc3\xa4",    /* 8-bit bytes */
    "&A*-",         /* not base64 */
    "&A/Q-",        /* '/' is ',' in modified base64 */
    "a\x01",        /* a control character */
};

static const char *const bad_utf8[] = {
    "\xff", "a\xc3", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xe0\x80\xaf",
};

static void
test_pairs(void **state)
{
    (void)state;
    char out[256];
    for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
        if (imap_utf7_encode(pairs[i].utf8, out, sizeof(out)) < 0 || strcmp(out, pairs[i].utf7))
            fail_msg("encode \"%s\": \"%s\", want \"%s\"", pairs[i].utf8, out, pairs[i].utf7);
        if (imap_utf7_decode(pairs[i].utf7, out, sizeof(out)) < 0 || strcmp(out, pairs[i].utf8))
            fail_msg("decode \"%s\": \"%s\", want \"%s\"", pairs[i].utf7, out, pairs[i].utf8);
    }
}

static void
test_refused(void **state)
{
    (void)state;
    char out[256];
    for (size_t i = 0; i < sizeof(bad_utf7) / sizeof(bad_utf7[0]); i++)
        if (imap_utf7_decode(bad_utf7[i], out, sizeof(out)) == 0)
            fail_msg("decoded \"%s\" as \"%s\"", bad_utf7[i], out);
    for (size_t i = 0; i < sizeof(bad_utf8) / sizeof(bad_utf8[0]); i++) {
        if (imap_utf7_encode(bad_utf8[i], out, sizeof(out)) == 0)
            fail_msg("encoded bad UTF-8 #%zu", i);
        assert_false(imap_utf8_valid(bad_utf8[i], strlen(bad_utf8[i])));
    }
    assert_true(imap_utf8_valid("Entw\xc3\xbcrfe", 9));
    assert_false(imap_utf8_valid("a\0b", 3));
    /* a character cut short by len is refused without reading past len
     * (an exact heap buffer: ASan sees a read beyond it) */
    char *cut = malloc(2);
    assert_non_null(cut);
    memcpy(cut, "a\xe6", 2);
    assert_false(imap_utf8_valid(cut, 2));
    free(cut);
}

/* The output's size bounds the work: no room, -1, never past it. */
static void
test_bounded(void **state)
{
    (void)state;
    char out[8];
    memset(out, 'x', sizeof(out));
    assert_int_equal(imap_utf7_encode("Entwürfe", out, 8), -1);
    char ten[10];
    assert_int_equal(imap_utf7_encode("日本語", ten, sizeof(ten)), -1);  /* "&ZeVnLIqe-" is 10 */
    char fits[11];
    assert_int_equal(imap_utf7_encode("日本語", fits, sizeof(fits)), 0);
    assert_int_equal(imap_utf7_decode("&ZeVnLIqe-", out, 8), -1);  /* 9 bytes of UTF-8 */
    assert_int_equal(imap_utf7_encode("", out, 0), -1);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pairs),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
