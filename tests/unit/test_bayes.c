/* Unit tests: the Bayes tokenizer's choices (filters/bayes_tokens.c) and
 * the combiner's model (filters/combiner.c): the fit on a tiny fixed data
 * set, its bounds, its text form and the errors of a model that cannot be
 * read. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "../../filters/filters.h"

static bool
has(const struct bayes_tokens *bt, const char *tok)
{
    for (size_t i = 0; i < bt->n; i++)
        if (strcmp(bt->v[i], tok) == 0)
            return true;
    return false;
}

static bool
has_prefix(const struct bayes_tokens *bt, const char *prefix)
{
    for (size_t i = 0; i < bt->n; i++)
        if (strncmp(bt->v[i], prefix, strlen(prefix)) == 0)
            return true;
    return false;
}

/* The fields SpamAssassin's Bayes leaves out on purpose make no token:
 * a mailing list's own fields would make every list a ham sign (issue 11,
 * cause 3); Date and the other filters' verdicts likewise. */
static void
test_tokens_leave_list_fields_out(void **state)
{
    (void)state;
    const char *msg =
        "Received: from mx.lists.test (mx.lists.test [192.0.2.7]) by mx.example.com "
        "(Postfix) with ESMTP id 4F2A1B; Tue, 1 Dec 2026 10:00:00 +0000\r\n"
        "From: Alice <alice@mail.example.org>\r\nTo: team@lists.example\r\n"
        "Subject: quarterly numbers\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
        "Message-ID: <20261201.abc123@mail.example.org>\r\n"
        "List-Id: Deals list <deals.lists.example>\r\nList-Unsubscribe: <mailto:leave@lists.example>\r\n"
        "List-Post: <mailto:deals@lists.example>\r\nSender: deals-bounces@lists.example\r\n"
        "X-Mailman-Version: 2.1.9\r\nX-BeenThere: deals@lists.example\r\n"
        "Precedence: list\r\nX-Spam-Status: No, score=0.1\r\nX-Mailer: TurboMailer 9\r\n"
        "\r\nbody\r\n";
    struct bayes_tokens bt;
    bayes_tokenize(msg, strlen(msg), NULL, &bt);
    for (size_t i = 0; i < bt.n; i++) {
        assert_null(strstr(bt.v[i], "H:list-"));
        assert_null(strstr(bt.v[i], "H:sender:"));
        assert_null(strstr(bt.v[i], "H:x-mailman"));
        assert_null(strstr(bt.v[i], "H:x-beenthere"));
        assert_null(strstr(bt.v[i], "H:date:"));
        assert_null(strstr(bt.v[i], "H:subject:"));
        assert_null(strstr(bt.v[i], "H:x-spam"));
    }
    /* what it keeps: the author as address parts, the mailer, the hops */
    assert_true(has(&bt, "H:from:U*alice"));
    assert_true(has(&bt, "H:from:D*mail.example.org"));
    assert_true(has(&bt, "H:from:D*example.org"));
    assert_true(has(&bt, "H:*ad:D*lists.example"));
    assert_true(has(&bt, "H:x-mailer:TurboMailer"));
    assert_true(has(&bt, "H:*ua:TurboMailer"));
    assert_true(has(&bt, "H:precedence:list"));
    assert_true(has(&bt, "H:received:mx.lists.test"));
    assert_true(has(&bt, "H:message-id:abc123"));
    bayes_tokens_free(&bt);
}

/* The shared parse (mime.c) reads the message as a MIME entity: the
 * Subject is the last field's, decoded, as GMimeMessage keeps it, and a
 * message after an mbox "From " line (which GMime reads only as a
 * message) still has its parts and Subject. */
static void
test_mime_subject_and_from_line(void **state)
{
    (void)state;
    const char *two = "Subject: first\r\nsubject: =?utf-8?B?w6l0w6k=?= second\r\n"
                      "From: a@example.org\r\n\r\nbody\r\n";
    struct filter_mime *mm = mime_parse(two, strlen(two));
    assert_string_equal(mime_subject(mm), "\xc3\xa9t\xc3\xa9 second");
    mime_free(&mm);
    const char *mbox = "From a@example.org  Thu Aug 22 12:36:23 2002\r\n"
                       "Subject: offer\r\nContent-Type: text/plain\r\n\r\ncheap watches\r\n";
    mm = mime_parse(mbox, strlen(mbox));
    size_t n;
    const struct filter_part *p = mime_parts(mm, &n);
    assert_int_equal(n, 1);
    assert_string_equal(p[0].content_type, "text/plain");
    assert_string_equal(mime_subject(mm), "offer");
    assert_true(strstr(mime_text(mm)->body, "cheap watches") != NULL);
    mime_free(&mm);
}

/* Words as Bayes.pm makes them: case kept with the lower-case form added,
 * long words as sk: and their first 7 characters, a domain and its
 * parents, an address's parts. */
static void
test_tokens_of_the_text(void **state)
{
    (void)state;
    const char *msg =
        "From: a@example.org\r\nSubject: Cheap offer\r\nContent-Type: text/plain\r\n\r\n"
        "Visit WWW.Deals.Example.com today...and write to sales@shop.example.net, "
        "supercalifragilisticexpialidocious FREE!\r\n";
    struct filter_mime *mm = mime_parse(msg, strlen(msg));
    const struct filter_text *t = mime_text(mm);
    struct bayes_tokens bt;
    bayes_tokenize(msg, strlen(msg), t, &bt);
    assert_true(has(&bt, "cheap"));             /* Title case at a sentence's start: lowered */
    assert_true(has(&bt, "FREE!"));
    assert_true(has(&bt, "FREE"));
    assert_true(has(&bt, "free!"));
    assert_true(has(&bt, "free"));
    assert_true(has(&bt, "today"));             /* "..." split off */
    assert_true(has(&bt, "..."));
    assert_true(has(&bt, "sk:superca"));
    assert_false(has_prefix(&bt, "supercali"));
    assert_true(has(&bt, "UD:WWW.Deals.Example.com"));
    assert_true(has(&bt, "UD:Example.com"));
    assert_true(has(&bt, "UD:com"));
    assert_true(has(&bt, "U*sales"));
    assert_true(has(&bt, "D*shop.example.net"));
    assert_true(has(&bt, "D*example.net"));
    for (size_t i = 1; i < bt.n; i++)
        assert_true(strcmp(bt.v[i - 1], bt.v[i]) < 0);     /* sorted, each once */
    bayes_tokens_free(&bt);
    mime_free(&mm);
}

/* ------------------------------------------------------------ combiner */

static const char *const data[] = {
    "s SPAMMY=1.000 BOTH=0.500", "s SPAMMY=1.000", "s SPAMMY=1.000 BOTH=0.500",
    "s SPAMMY=1.000 RARE=2.000", "s SPAMMY=1.000",
    "h HAMMY=1.000 BOTH=0.500", "h HAMMY=1.000", "h HAMMY=1.000 BOTH=0.500", "h HAMMY=1.000",
    "h HAMMY=1.000", "h", "garbage that is no vector",
};

static struct combiner_model *
fit(double cap)
{
    size_t n = sizeof(data) / sizeof(data[0]);
    size_t lens[sizeof(data) / sizeof(data[0])];
    for (size_t i = 0; i < n; i++)
        lens[i] = strlen(data[i]);
    return combiner_fit(data, lens, n, 5.0, cap);
}

static void
test_combiner_fit_moves_weights_the_right_way(void **state)
{
    (void)state;
    struct combiner_model *m = fit(3.0);
    assert_int_equal(m->nspam, 5);
    assert_int_equal(m->nham, 6);               /* "h" alone is a vector; garbage is not */
    const struct combiner_weight *sp = combiner_model_find(m, "SPAMMY");
    const struct combiner_weight *hm = combiner_model_find(m, "HAMMY");
    const struct combiner_weight *both = combiner_model_find(m, "BOTH");
    assert_non_null(sp);
    assert_non_null(hm);
    assert_non_null(both);
    /* RARE was in one message: fewer than 3, it keeps its fixed score */
    assert_null(combiner_model_find(m, "RARE"));
    assert_true(sp->fixed == 1.0 && hm->fixed == 1.0 && both->fixed == 0.5);
    assert_true(sp->w > sp->fixed + 0.2);       /* only in spam, which scored low: up */
    assert_true(hm->w < hm->fixed);             /* only in ham: down */
    assert_true(fabs(both->w - both->fixed) < fabs(sp->w - sp->fixed));
    assert_int_equal(sp->seen_spam, 5);
    assert_int_equal(sp->seen_ham, 0);
    /* the learned sum separates the two: spam above tag 5, ham below */
    const char *sn[] = { "SPAMMY", "RARE" };
    double ss[] = { 1.0, 2.0 };
    const char *hn[] = { "HAMMY" };
    double hs[] = { 1.0 };
    assert_true(combiner_model_sum(m, sn, ss, 2) > combiner_model_sum(m, hn, hs, 1));
    /* RARE, not in the model, counts with its own score */
    assert_true(fabs(combiner_model_sum(m, sn, ss, 2) - combiner_model_sum(m, sn, ss, 1) - 2.0)
                < 1e-9);
    combiner_model_free(&m);
    assert_null(m);
}

static void
test_combiner_weights_stay_within_cap(void **state)
{
    (void)state;
    struct combiner_model *m = fit(0.25);
    for (size_t i = 0; i < m->n; i++)
        assert_true(fabs(m->w[i].w - m->w[i].fixed) <= 0.25 + 1e-9);
    assert_true(fabs(m->bias) <= 0.25 + 1e-9);
    combiner_model_free(&m);
}

static void
test_combiner_is_deterministic_and_round_trips(void **state)
{
    (void)state;
    struct combiner_model *a = fit(3.0), *b = fit(3.0);
    size_t la, lb;
    char *ta = combiner_model_text(a, &la), *tb = combiner_model_text(b, &lb);
    assert_int_equal(la, lb);
    assert_memory_equal(ta, tb, la);
    char err[200];
    struct combiner_model *c = combiner_model_parse(ta, la, err, sizeof(err));
    assert_non_null(c);
    assert_int_equal(c->n, a->n);
    assert_int_equal(c->nspam, a->nspam);
    for (size_t i = 0; i < c->n; i++) {
        assert_string_equal(c->w[i].name, a->w[i].name);
        assert_true(fabs(c->w[i].w - a->w[i].w) < 1e-5);
    }
    free(ta);
    free(tb);
    combiner_model_free(&a);
    combiner_model_free(&b);
    combiner_model_free(&c);
}

static void
test_combiner_model_errors_name_the_line(void **state)
{
    (void)state;
    static const struct { const char *text, *why; } bad[] = {
        { "garbage", "line 1: " },
        { "moat-combiner 1\nlearned 5\n", "line 2: " },
        { "moat-combiner 1\nlearned 5 5\nbias x\nend\n", "line 3: " },
        { "moat-combiner 1\nlearned 5 5\nbias 0\nw A 1 1 1 1\nw A= 1 1 1 1\nend\n", "line 5: " },
        { "moat-combiner 1\nlearned 5 5\nbias 0\nw B 1 1 1 1\nw A 1 1 1 1\nend\n",
          "line 5: A out of order" },
        { "moat-combiner 1\nlearned 5 5\nbias 0\nw A nan 1 1 1\nend\n", "line 4: " },
        { "moat-combiner 1\nlearned 5 5\nbias 0\nw A 1 1 1 1\n", "no 'end'" },
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char err[200] = "";
        struct combiner_model *m = combiner_model_parse(bad[i].text, strlen(bad[i].text), err,
                                                        sizeof(err));
        assert_null(m);
        if (strstr(err, bad[i].why) == NULL)
            fail_msg("case %zu: '%s' has no '%s'", i, err, bad[i].why);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tokens_leave_list_fields_out),
        cmocka_unit_test(test_tokens_of_the_text),
        cmocka_unit_test(test_mime_subject_and_from_line),
        cmocka_unit_test(test_combiner_fit_moves_weights_the_right_way),
        cmocka_unit_test(test_combiner_weights_stay_within_cap),
        cmocka_unit_test(test_combiner_is_deterministic_and_round_trips),
        cmocka_unit_test(test_combiner_model_errors_name_the_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
