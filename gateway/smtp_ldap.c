/*
 * smtp_ldap.c -- the directory's answer for recipient verification by LDAP
 * (a relay domain's verify = "ldap", its ldap { } section): does an entry
 * under base match the filter made for the address? OpenLDAP's libldap,
 * synchronous, so it runs on a worker (smtp_verify.c's callout_work, which
 * keeps the cache in Redis): connect, StartTLS when asked, a simple bind
 * (or none: anonymous), one subtree search for no attributes ("1.1"),
 * unbind. Each step is bounded by the section's timeout.
 *
 * An entry: known. No entry: unknown (550 5.1.1). Anything else (the
 * server down or slow, TLS or bind refused, a base that does not exist, a
 * filter the server cannot read) is no answer: 451 4.4.3, never 550.
 *
 * The address is hostile input: it is put into the filter escaped per RFC
 * 4515 (smtp_ldap_filter), so "*)(mail=*" is searched for literally.
 */
#include <stdio.h>
#include <string.h>
#include <ldap.h>
#include "../common/mail.h"
#include "smtp_private.h"

/* Append the RFC 4515 assertion value of s[0..n) to out[*o..size): the
 * filter's specials (*, (, ), \, NUL) and every byte that is not printable
 * ASCII as \XX. -1 when it does not fit. */
static int
put_escaped(char *out, size_t size, size_t *o, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        bool esc = ch < 0x20 || ch >= 0x7f || ch == '*' || ch == '(' || ch == ')' || ch == '\\';
        if (*o + (esc ? 3 : 1) >= size)
            return -1;
        if (esc) {
            out[(*o)++] = '\\';
            out[(*o)++] = hex[ch >> 4];
            out[(*o)++] = hex[ch & 15];
        } else {
            out[(*o)++] = (char)ch;
        }
    }
    return 0;
}

/* See gateway.h. */
int
smtp_ldap_filter(const char *tmpl, const char *addr, char *out, size_t size)
{
    const char *at = strrchr(addr, '@');
    size_t o = 0, alen = strlen(addr), llen = at ? (size_t)(at - addr) : alen;
    const char *dom = at ? at + 1 : "";
    if (size == 0)
        return -1;
    for (const char *p = tmpl; *p; p++) {
        int r = 0;
        if (p[0] == '%' && p[1] == 's')
            r = put_escaped(out, size, &o, addr, alen);
        else if (p[0] == '%' && p[1] == 'u')
            r = put_escaped(out, size, &o, addr, llen);
        else if (p[0] == '%' && p[1] == 'd')
            r = put_escaped(out, size, &o, dom, strlen(dom));
        else if (p[0] == '%' && p[1] == '%' && o + 1 < size)
            out[o++] = '%';
        else if (p[0] == '%' && p[1] == '%')
            r = -1;
        else if (o + 1 >= size)
            r = -1;
        else {
            out[o++] = *p;
            continue;
        }
        if (r < 0) {
            out[0] = '\0';
            return -1;
        }
        p++;                    /* the letter after % */
    }
    out[o] = '\0';
    return 0;
}

/* Set TLS options on a fresh handle: the server's certificate must verify
 * (against ca_file, or the system's store). */
static int
tls_setup(LDAP *ld, const struct conf_ldap *l)
{
    int demand = LDAP_OPT_X_TLS_DEMAND, client = 0;
    if (ldap_set_option(ld, LDAP_OPT_X_TLS_REQUIRE_CERT, &demand) != LDAP_OPT_SUCCESS)
        return -1;
    if (l->ca_file[0] && ldap_set_option(ld, LDAP_OPT_X_TLS_CACERTFILE, l->ca_file) !=
                             LDAP_OPT_SUCCESS)
        return -1;
    return ldap_set_option(ld, LDAP_OPT_X_TLS_NEWCTX, &client) == LDAP_OPT_SUCCESS ? 0 : -1;
}

enum smtp_verify_result
smtp_ldap_ask(const struct conf_ldap *l, const char *addr, char *detail, size_t detailsize)
{
    char filter[2048];
    LDAP *ld = NULL;
    LDAPMessage *res = NULL;
    enum smtp_verify_result result = SMTP_VERIFY_TRYLATER;
    struct timeval tv = { (time_t)l->timeout, 0 };
    int v3 = LDAP_VERSION3, rc;
    const char *step = "connect";

    if (smtp_ldap_filter(l->filter, addr, filter, sizeof(filter)) < 0) {
        snprintf(detail, detailsize, "LDAP filter too long for <%s>", addr);
        return SMTP_VERIFY_TRYLATER;
    }
    rc = ldap_initialize(&ld, l->uri);
    if (rc != LDAP_SUCCESS)
        goto fail;
    ldap_set_option(ld, LDAP_OPT_PROTOCOL_VERSION, &v3);
    ldap_set_option(ld, LDAP_OPT_REFERRALS, LDAP_OPT_OFF);
    ldap_set_option(ld, LDAP_OPT_NETWORK_TIMEOUT, &tv);
    ldap_set_option(ld, LDAP_OPT_TIMEOUT, &tv);
    if ((l->starttls || strncmp(l->uri, "ldaps://", 8) == 0) && tls_setup(ld, l) < 0) {
        step = "TLS setup";
        rc = LDAP_LOCAL_ERROR;
        goto fail;
    }
    if (l->starttls) {
        step = "StartTLS";
        rc = ldap_start_tls_s(ld, NULL, NULL);
        if (rc != LDAP_SUCCESS)
            goto fail;
    }
    step = "bind";
    struct berval cred = { strlen(l->bind_password), (char *)l->bind_password };
    rc = ldap_sasl_bind_s(ld, l->bind_dn[0] ? l->bind_dn : NULL, LDAP_SASL_SIMPLE, &cred, NULL,
                          NULL, NULL);
    if (rc != LDAP_SUCCESS)
        goto fail;
    step = "search";
    char *attrs[] = { (char *)LDAP_NO_ATTRS, NULL };
    rc = ldap_search_ext_s(ld, l->base, LDAP_SCOPE_SUBTREE, filter, attrs, 1, NULL, NULL, &tv,
                           1, &res);
    if (rc == LDAP_SIZELIMIT_EXCEEDED || (rc == LDAP_SUCCESS && ldap_count_entries(ld, res) > 0)) {
        result = SMTP_VERIFY_KNOWN;
        snprintf(detail, detailsize, "ldap: found by %s", filter);
    } else if (rc == LDAP_SUCCESS) {
        result = SMTP_VERIFY_UNKNOWN;
        snprintf(detail, detailsize, "ldap: no entry for %s", filter);
    } else {
        goto fail;
    }
    ldap_msgfree(res);
    ldap_unbind_ext_s(ld, NULL, NULL);
    return result;
fail:
    snprintf(detail, detailsize, "ldap %s %s: %s", l->uri, step, ldap_err2string(rc));
    ldap_msgfree(res);
    if (ld)
        ldap_unbind_ext_s(ld, NULL, NULL);
    return SMTP_VERIFY_TRYLATER;
}
