/* Fuzz target: the SPF record checker, the record rewritten for libspf2
 * and the macro expander (filters/spf_record.c, filters/spf_macro.c). The
 * first byte picks the client's family; the rest is a TXT record, also
 * checked and expanded as an explanation. Whatever the bytes: no crash, a
 * record that parses rewrites within SPF_REWRITE_MAX, and the rewrite is
 * itself a record we accept (the tags aside) starting "v=spf1". */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "../../filters/spf_record.h"

static const char *
ptr_of(void *arg, const char *domain)
{
    (void)arg;
    return domain;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct spf_record rec;
    static char out[SPF_REWRITE_MAX], exp[1024];
    if (size < 1)
        return 0;
    bool ipv6 = data[0] & 1;
    const char *txt = (const char *)data + 1;
    size_t len = size - 1;
    const struct spf_macro_vars v = {
        .sender = "strong-bad@email.example.com", .local = "strong-bad",
        .sender_domain = "email.example.com", .domain = "email.example.com",
        .ip = ipv6 ? "1.0.B.C.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.B.D.0.1.0.0.2" : "192.0.2.3",
        .ip_text = ipv6 ? "2001:db8::cb01" : "192.0.2.3", .ip_version = ipv6 ? "ip6" : "in-addr",
        .helo = "mx.example.org", .receiver = "mx.test.example", .now = 1, .ptr = ptr_of,
    };
    char err[200], expd[SPF_DOMAIN_MAX + 1];
    if (spf_record_is_spf(txt, len) && spf_record_parse(txt, len, &rec, err, sizeof(err)) == 0) {
        ssize_t n = spf_record_rewrite(txt, &rec, &v, ipv6, 7, expd, out, sizeof(out));
        if (n < 0 || strncmp(out, "v=spf1", 6) != 0 || strlen(out) != (size_t)n)
            abort();
        if (strlen(expd) > SPF_DOMAIN_MAX)
            abort();
    }
    const char *why;
    if (spf_macro_check(txt, len, SPF_MACRO_EXPLAIN, &why) == 0)
        (void)spf_macro_expand(txt, len, &v, exp, sizeof(exp));
    /* unchecked input must not crash the expander either */
    (void)spf_macro_expand(txt, len, &v, exp, sizeof(exp));
    if (len < sizeof(exp)) {
        memcpy(exp, txt, len);
        exp[len] = '\0';
        (void)spf_domain_fit(exp);
    }
    return 0;
}
