/* Unit tests: the SPF record checker, the macro expander and the record
 * handed to libspf2 (filters/spf_record.c, filters/spf_macro.c). Tables of
 * records the RFC 7208 ABNF (section 12) accepts and refuses, and the
 * macro examples of RFC 7208 section 7.4. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>
#include "../../filters/spf_record.h"

static struct spf_record rec;

static int
parse(const char *s, char *err, size_t errsize)
{
    return spf_record_parse(s, strlen(s), &rec, err, errsize);
}

static void
test_records_the_abnf_accepts(void **state)
{
    (void)state;
    static const char *const good[] = {
        "v=spf1",
        "V=SpF1 ~all",
        "v=spf1 a  -all ",                              /* several spaces, a trailing one */
        "v=spf1 a/24//64 mx:foo.example.com/0 -all",
        "v=spf1 a//0 mx//128 ptr ptr:example.Com",
        "v=spf1 a:foo:bar/baz.example.com",             /* any visible character but % */
        "v=spf1 a:foo.example.xn--zckzah -all",         /* a top label with dashes */
        "v=spf1 a:mail.example...com -all",             /* empty labels: no DNS name, but syntax */
        "v=spf1 a:macro%%percent%_%_space%-url-space.example.com -all",
        "v=spf1 exists:%{i}.%{l2r-}.user.%{d2} exists:%{ir}.%{v}._spf.%{d2}",
        "v=spf1 exists:%{l2r+-,/_=}.example.com",       /* every delimiter */
        "v=spf1 redirect=%{d}.d.spf.example.com.",      /* a trailing dot */
        "v=spf1 a:%{H} -all",                           /* ends in a macro */
        "v=spf1 ip4:1.1.1.1/0 ip4:255.255.255.255/32 ip4:10.0.0.0",
        "v=spf1 ip6:::1.1.1.1/0 ip6:Cafe:Babe:8000::/33 ip6:::1",
        "v=spf1 moo.cow-far_out=man:dog/cat ip4:1.2.3.4 -all",
        "v=spf1 default=pass foo= bar=%{l}",            /* unknown modifiers */
        "v=spf1 -all exp=%{ir}.example.com",
        "v=spf1 include:_spfh.%{d2} a=b",               /* a=b: an unknown modifier */
    };
    char err[200];
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        err[0] = '\0';
        if (parse(good[i], err, sizeof(err)) != 0)
            fail_msg("refused %s: %s", good[i], err);
    }
    assert_int_equal(parse("v=spf1 a/24//64 ip4:1.2.3.4/16 -all exp=x.example.com", err,
                           sizeof(err)), 0);
    assert_int_equal(rec.n, 4);
    assert_int_equal(rec.term[0].kind, SPF_A);
    assert_int_equal(rec.term[0].cidr4, 24);
    assert_int_equal(rec.term[0].cidr6, 64);
    assert_int_equal(rec.term[1].cidr4, 16);
    assert_memory_equal(rec.term[1].ip, "\x01\x02\x03\x04", 4);
    assert_int_equal(rec.term[2].qual, '-');
    assert_true(rec.all);
    assert_int_equal(rec.exp, 3);
    assert_int_equal(rec.redirect, -1);
}

static void
test_records_the_abnf_refuses(void **state)
{
    (void)state;
    static const struct { const char *rec, *why; } bad[] = {
        { "v=spf1 ip4:1.2.3.4 -all moo", "unknown mechanism" },
        { "v=spf1 moo.cow/far_out=man:dog/cat", "unknown mechanism" },
        { "v=spf1 1up=foo", "unknown mechanism" },
        { "v=spf1 =all", "unknown mechanism" },
        { "v=spf1 ip4:1.2.3.4 redirect:t2.example.com", "unknown mechanism" },
        { "v=spf1 -all.", "all takes no argument" },
        { "v=spf1 -all:foobar", "all takes no argument" },
        { "v=spf1 a:foo-bar -all", "without a top label" },
        { "v=spf1 a:museum", "without a top label" },
        { "v=spf1 a:museum.", "without a top label" },
        { "v=spf1 a:111.222.33.44", "bad top label" },
        { "v=spf1 a:abc.123", "bad top label" },
        { "v=spf1 a:example.-com", "bad top label" },
        { "v=spf1 a:example.com:8080", "without a top label" },
        { "v=spf1 a:", "empty domain-spec" },
        { "v=spf1 mx: -all", "empty domain-spec" },
        { "v=spf1 include: -all", "empty domain-spec" },
        { "v=spf1 exists", "needs a domain-spec" },
        { "v=spf1 exists:mail.example.com/24", "without a top label" },
        { "v=spf1 ptr/0 -all", "bad character" },
        { "v=spf1 a/33 -all", "over 32" },
        { "v=spf1 a//129 -all", "over 128" },
        { "v=spf1 a/24/64 -all", "over 32" },
        { "v=spf1 ip4:1.2.3.4/032 -all", "bad CIDR length" },
        { "v=spf1 ip4:1.2.3.4/33", "over 32" },
        { "v=spf1 ip4:1.2.3.4//32", "bad IPv4 address" },
        { "v=spf1 ip4:1.2.3", "bad IPv4 address" },
        { "v=spf1 ip4:1.2.03.4", "bad IPv4 address" },
        { "v=spf1 ip4:1.2.3.4:8080", "bad IPv4 address" },
        { "v=spf1 ip4", "need an address" },
        { "v=spf1 ip6::CAFE::BABE", "bad IPv6 address" },
        { "v=spf1 ip6:::1.1.1.1//33", "bad IPv6 address" },
        { "v=spf1 ip6:::1/12a", "bad CIDR length" },
        { "v=spf1 ip6:::1/129", "over 128" },
        { "v=spf1 exp= -all", "empty domain-spec" },
        { "v=spf1 exp=-all", "without a top label" },
        { "v=spf1 redirect=-all ?all", "without a top label" },
        { "v=spf1 ?all redirect=", "empty domain-spec" },
        { "v=spf1 exp=a.example.com -all exp=b.example.com", "exp= more than once" },
        { "v=spf1 redirect=a.example.com redirect=b.example.com", "redirect= more than once" },
        { "v=spf1 -all foo=%abc", "'%' not followed" },
        { "v=spf1 -exists:%(ir).sbl.example.com ?all", "'%' not followed" },
        { "v=spf1 exists:foo%.sbl.example.com", "'%' not followed" },
        { "v=spf1 a:%{a}.example.com", "unknown macro letter" },
        { "v=spf1 -all exp=%{r}.example.com", "for explanations only" },
        { "v=spf1 a:%{d0}.example.com", "must not be zero" },
        { "v=spf1 a:%{d.example.com", "malformed macro" },
        { "v=spf1 a:ctrl.example.com\rptr -all", "control character" },
        { "v=spf1 ip4:192.0.2.5\n include:x.example.com", "bad IPv4 address" },
        { "v=spf1 a:\xEF\xBB\xBFgarbage.example.net -all", "not ASCII" },
        { "v=spf1 \x80" "a:example.net -all", "unknown mechanism" },
        { "v=spf1 a:example.net \x96" "all", "unknown mechanism" },
        { "v=spf10", "not an SPF record" },
    };
    char err[200];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        if (parse(bad[i].rec, err, sizeof(err)) != -1)
            fail_msg("accepted %s", bad[i].rec);
        if (strstr(err, bad[i].why) == NULL)
            fail_msg("%s: \"%s\", not \"%s\"", bad[i].rec, err, bad[i].why);
    }
    /* a NUL byte is part of the record, not its end */
    static const char nul[] = "v=spf1 a:foo.example.com\0";
    assert_int_equal(spf_record_parse(nul, sizeof(nul) - 1, &rec, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "control character"));
    /* found by fuzz_spf_record: a NUL byte was taken for a qualifier */
    static const char nulq[] = "v=spf1 \0mx -all";
    assert_int_equal(spf_record_parse(nulq, sizeof(nulq) - 1, &rec, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "unknown mechanism"));
    /* the error names the term, its odd bytes escaped and cut short */
    parse("v=spf1 a:\x01\"toolong.toolong.toolong.toolong.toolong.toolong.toolong.toolong.x", err,
          sizeof(err));
    assert_string_equal(err, "a control character: \"a:\\x01\\x22toolong.toolong.toolong."
                        "toolong.toolong.toolo...\"");
}

static void
test_limits(void **state)
{
    (void)state;
    char big[SPF_RECORD_MAX + 16], err[200];
    memset(big, 'a', sizeof(big));
    memcpy(big, "v=spf1 ", 7);
    for (size_t i = 8; i < sizeof(big); i += 2)
        big[i] = ' ';
    assert_int_equal(spf_record_parse(big, sizeof(big), &rec, err, sizeof(err)), -1);
    assert_string_equal(err, "record longer than 4096 bytes");
    assert_int_equal(spf_record_parse(big, 7 + 2 * SPF_TERMS_MAX, &rec, err, sizeof(err)), 0);
    assert_int_equal(rec.n, SPF_TERMS_MAX);
    assert_int_equal(spf_record_parse(big, 7 + 2 * SPF_TERMS_MAX + 2, &rec, err, sizeof(err)), -1);
    assert_string_equal(err, "more than 256 terms");
}

static const char *
ptr_of(void *arg, const char *domain)
{
    (void)arg;
    return strcmp(domain, "e7.example.com") == 0 ? "mx.e7.example.com" : "mx.example.org";
}

/* RFC 7208 7.4's example: strong-bad@email.example.com from 192.0.2.3 */
static const struct spf_macro_vars v4 = {
    .sender = "strong-bad@email.example.com", .local = "strong-bad",
    .sender_domain = "email.example.com", .domain = "email.example.com", .ip = "192.0.2.3",
    .ip_text = "192.0.2.3", .ip_version = "in-addr", .helo = "mx.example.org",
    .receiver = "mx.test.example", .now = 1234567890, .ptr = ptr_of,
};

static const char *
expand(const struct spf_macro_vars *v, const char *s)
{
    static char out[600];
    const char *why = NULL;
    if (spf_macro_check(s, strlen(s), SPF_MACRO_EXPLAIN, &why) != 0)
        fail_msg("%s: %s", s, why);
    assert_true(spf_macro_expand(s, strlen(s), v, out, sizeof(out)) >= 0);
    return out;
}

static void
test_macro_expansion(void **state)
{
    (void)state;
    static const struct { const char *in, *out; } t[] = {
        { "%{s}", "strong-bad@email.example.com" },
        { "%{o}", "email.example.com" },
        { "%{d}", "email.example.com" },
        { "%{d4}", "email.example.com" },
        { "%{d3}", "email.example.com" },
        { "%{d2}", "example.com" },
        { "%{d1}", "com" },
        { "%{dr}", "com.example.email" },
        { "%{d2r}", "example.email" },
        { "%{l}", "strong-bad" },
        { "%{l-}", "strong.bad" },
        { "%{lr}", "strong-bad" },
        { "%{lr-}", "bad.strong" },
        { "%{l1r-}", "strong" },
        { "%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com" },
        { "%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com" },
        { "%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com" },
        { "%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com" },
        { "%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net" },
        { "%{c} %{r} %{t} %{h} %{p}", "192.0.2.3 mx.test.example 1234567890 mx.example.org "
                                      "mx.example.org" },
        { "%%%_%-", "% %20" },
        { "%{S}", "strong-bad%40email.example.com" },
        { "%{L}=~x", "strong-bad=~x" },
        { "%{l99}", "strong-bad" },
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        assert_string_equal(expand(&v4, t[i].in), t[i].out);

    struct spf_macro_vars v = v4;
    v.local = "~jack&jill=up-a_b3.c";
    assert_string_equal(expand(&v, "%{L}"), "~jack%26jill%3Dup-a_b3.c");
    v.ip = "1.0.B.C.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.B.D.0.1.0.0.2";
    v.ip_version = "ip6";
    v.domain = "e7.example.com";
    assert_string_equal(expand(&v, "%{ir}.%{v}._spf.%{d2}"),
                        "2.0.0.1.0.D.B.8.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.C.B.0.1.ip6._spf."
                        "example.com");
    assert_string_equal(expand(&v, "%{p}"), "mx.e7.example.com");
    /* a string that does not fit */
    char small[8];
    assert_int_equal(spf_macro_expand("%{s}", 4, &v4, small, sizeof(small)), -1);
    const char *why;
    assert_int_equal(spf_macro_check("a b", 3, SPF_MACRO_DOMAIN, &why), -1);
    assert_string_equal(why, "a space");
    assert_int_equal(spf_macro_check("a b %{c}", 8, SPF_MACRO_EXPLAIN, &why), 0);
}

static void
test_names_fit_in_253(void **state)
{
    (void)state;
    char n[600];
    snprintf(n, sizeof(n), "trailing.dot.example.com.");
    assert_int_equal(spf_domain_fit(n), 0);
    assert_string_equal(n, "trailing.dot.example.com");
    /* "foobar." + 8 x "somewhat.long.exp.example.com." + "example.com" (258
     * characters): labels go from the left until it fits */
    size_t o = (size_t)snprintf(n, sizeof(n), "foobar.");
    for (int i = 0; i < 8; i++)
        o += (size_t)snprintf(n + o, sizeof(n) - o, "somewhat.long.exp.example.com.");
    snprintf(n + o, sizeof(n) - o, "example.com");
    assert_int_equal(spf_domain_fit(n), 0);
    assert_int_equal(strlen(n), 251);
    assert_int_equal(strncmp(n, "somewhat.long.exp.example.com.somewhat.", 39), 0);
    static const char *const bad[] = {
        "a..b.example", ".", "", "bad\001.example.com", "a.b\x7f.c",
        "a123456789012345678901234567890123456789012345678901234567890123.example.com",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(n, sizeof(n), "%s", bad[i]);
        assert_int_equal(spf_domain_fit(n), -1);
    }
    snprintf(n, sizeof(n), "macro%%percent  space%%20url-space.example.com");
    assert_int_equal(spf_domain_fit(n), 0);
}

static const char *
rewrite(const char *record, bool ipv6, char *expd)
{
    static char out[SPF_REWRITE_MAX];
    char err[200];
    if (parse(record, err, sizeof(err)) != 0)
        fail_msg("%s: %s", record, err);
    assert_true(spf_record_rewrite(record, &rec, &v4, ipv6, 3, expd, out, sizeof(out)) >= 0);
    return out;
}

static void
test_rewrite_for_libspf2(void **state)
{
    (void)state;
    char expd[SPF_DOMAIN_MAX + 1];
    /* expanded names behind the term tag, explicit qualifiers and CIDR lengths, the
     * redirect last, unknown modifiers dropped, exp= as a number */
    assert_string_equal(rewrite("v=spf1 redirect=%{d2}.example exp=x.%{d} foo=bar a mx:m.%{d1} "
                                "?ptr include:i.example -exists:%{l}.example", false, expd),
                        "v=spf1 +a:\001email.example.com/32//128 +mx:\001m.com/32//128 "
                        "?ptr:email.example.com +include:\001i.example "
                        "-exists:\001strong-bad.example redirect=\001example.com.example "
                        "exp=#3");
    assert_string_equal(expd, "x.email.example.com");
    /* all ends the record, and a redirect is ignored beside it */
    assert_string_equal(rewrite("v=spf1 redirect=r.example ip4:1.2.3.4 ~all a", false, expd),
                        "v=spf1 +ip4:1.2.3.4/32 ~all");
    assert_string_equal(expd, "");
    /* CIDR length 0 for the client's family; the other family's terms go */
    assert_string_equal(rewrite("v=spf1 a/0 mx/0 ip6:::1 -ip4:1.1.1.1/0 +a", false, expd),
                        "v=spf1 +exists:\002email.example.com +exists:\003email.example.com "
                        "-all");
    assert_string_equal(rewrite("v=spf1 a/0 mx//0 ip4:1.2.3.4 a:x.example//64 ip6:::1/0",
                                true, expd),
                        "v=spf1 +a:\001email.example.com/32//128 +exists:\003email.example.com "
                        "+a:\001x.example/32//64 +all");
    /* spaces and percent signs as libspf2 reads them; no DNS name: the bare tag */
    assert_string_equal(rewrite("v=spf1 a:macro%%percent%_space%-x.example.com "
                                "a:mail.example...com ptr:a..b.example", false, expd),
                        "v=spf1 +a:\001macro%%percent%_space%%20x.example.com/32//128 "
                        "+a:\001/32//128 +ptr:\001");
    /* nothing after the 11th DNS-querying term: the limit ends the check there */
    assert_string_equal(rewrite("v=spf1 a a a a a a a a a a mx ip4:1.2.3.4 redirect=x.example",
                                false, expd),
                        "v=spf1 +a:\001email.example.com/32//128 +a:\001email.example.com/32//128 "
                        "+a:\001email.example.com/32//128 +a:\001email.example.com/32//128 "
                        "+a:\001email.example.com/32//128 +a:\001email.example.com/32//128 "
                        "+a:\001email.example.com/32//128 +a:\001email.example.com/32//128 "
                        "+a:\001email.example.com/32//128 +a:\001email.example.com/32//128 "
                        "+mx:\001email.example.com/32//128");
    const char *r = rewrite("v=spf1 a a a a a a a a a a ip4:1.2.3.4 redirect=x.example", false,
                            expd);
    static const char tail[] = " +ip4:1.2.3.4/32 redirect=\001x.example";
    assert_string_equal(r + strlen(r) - strlen(tail), tail);
}

/* The longest a rewrite can be: 256 terms, 11 of them names of 253
 * characters that are all spaces and percent signs, fit in SPF_REWRITE_MAX. */
static void
test_rewrite_worst_case_fits(void **state)
{
    (void)state;
    static char record[SPF_RECORD_MAX + 1], out[SPF_REWRITE_MAX], expd[SPF_DOMAIN_MAX + 1];
    struct spf_macro_vars v = v4;
    char local[64];
    memset(local, ' ', 62);         /* every character of the expansion needs escaping */
    local[62] = '\0';
    v.local = local;
    size_t o = (size_t)snprintf(record, sizeof(record), "v=spf1");
    for (int i = 0; i < 10; i++)
        o += (size_t)snprintf(record + o, sizeof(record) - o, " a:%%{l}.%%{l}.%%{l}.%%{l}/1//1");
    o += (size_t)snprintf(record + o, sizeof(record) - o, " redirect=%%{l}.%%{l}.%%{l}.%%{l}");
    o += (size_t)snprintf(record + o, sizeof(record) - o, " exp=%%{l}.%%{l}.%%{l}.%%{l}");
    char err[200];
    assert_int_equal(spf_record_parse(record, o, &rec, err, sizeof(err)), 0);
    ssize_t n = spf_record_rewrite(record, &rec, &v, false, 4000000000u, expd, out, sizeof(out));
    assert_int_equal(n, 6 + 10 * (4 + 1 + 251 + 248 + 5) + 10 + 1 + 251 + 248 + 16);
    assert_int_equal(strlen(expd), 251);
    /* ip6 terms: the longest text per byte of record */
    o = (size_t)snprintf(record, sizeof(record), "v=spf1");
    for (int i = 1; i < SPF_TERMS_MAX; i++)
        o += (size_t)snprintf(record + o, sizeof(record) - o, " ip6:1:2:3:4::/1");
    assert_int_equal(spf_record_parse(record, o, &rec, err, sizeof(err)), 0);
    assert_true(spf_record_rewrite(record, &rec, &v, true, 1, expd, out, sizeof(out)) > 0);
    assert_true(strlen(out) < SPF_REWRITE_MAX / 2);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_records_the_abnf_accepts),
        cmocka_unit_test(test_records_the_abnf_refuses),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_macro_expansion),
        cmocka_unit_test(test_names_fit_in_253),
        cmocka_unit_test(test_rewrite_for_libspf2),
        cmocka_unit_test(test_rewrite_worst_case_fits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
