/*
 * arc.c -- the built-in ARC filter: incoming ARC chains verified (RFC
 * 8617 5.2), for DMARC's local policy (RFC 7489 6.7, RFC 8617 7.2).
 *
 *   filters = [ "spf", "dkim", "arc", "dmarc", ..., "arc_seal" ];
 *   arc { trusted_sealers = [ "lists.example.org" ]; fail = "continue"; }
 *   domains { example.com { arc { trusted_sealers = [ "fwd.example.net" ]; } } }
 *
 * Every message not sent by our own users has its chain checked (the
 * code is in arc_set.c and arc_chain.c; keys come from DNS through the
 * daemon's resolver, TXT at selector._domainkey.domain as for DKIM). The
 * result goes into our Authentication-Results (arc=none, arc=pass (i=2
 * d=lists.example.org) header.oldest-pass=0 smtp.remote-ip=..., arc=fail
 * (why), arc=temperror), into a symbol (ARC_PASS, ARC_FAIL, ARC_TEMPERROR),
 * and into notes for the plugins after it: arc.result (none, pass, fail,
 * temperror) and arc.instance (the chain's highest i=, for arc_seal), and
 * arc.trusted, the newest sealer's domain when the chain passed and that
 * domain is in the policy group's trusted_sealers: dmarc then takes a
 * failure as overridden (local policy "trusted_forwarder"). Only the
 * newest sealer counts: it is the one that handed us the message, and an
 * older seal says nothing about what later hops changed. fail: the action
 * for a chain that fails (continue by default; a failed chain is common
 * and harmless without DMARC's failure).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "filter.h"
#include "filters.h"
#include "arc.h"
#include "../common/util.h"

#define MAX_SEALERS 64

struct arc_filter {
    const struct filter_config *cfg;
};

/* ------------------------------------------------------------ settings */

static bool
domain_ok(const char *s, size_t n)
{
    if (n == 0 || n > 253 || s[0] == '.' || s[0] == '-')
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '-' || s[i] == '.' || s[i] == '_'))
            return false;
    return true;
}

static int
check_one(const char *key, const char *value, const char *domain, char *err, size_t errsize)
{
    const char *sep = domain[0] ? "/" : "";
    if (strcmp(key, "fail") == 0)
        return filter_check_action(domain, key, value, err, errsize);
    if (strcmp(key, "trusted_sealers") == 0) {
        size_t count = 0;
        for (const char *p = value; *p;) {
            size_t n = strcspn(p, " ,\t");
            if (n > 0 && (!domain_ok(p, n) || ++count > MAX_SEALERS)) {
                snprintf(err, errsize, "%s%strusted_sealers: '%.*s' %s", domain, sep,
                         (int)(n > 80 ? 80 : n), p,
                         count > MAX_SEALERS ? "is one too many (64 at most)" : "is not a domain");
                return -1;
            }
            p += n;
            p += strspn(p, " ,\t");
        }
        return 0;
    }
    snprintf(err, errsize, "%s%s%s: unknown key (trusted_sealers, fail)", domain, sep, key);
    return -1;
}

static int
arc_check(const struct filter_config *c, char *err, size_t errsize)
{
    return filter_settings_each(c, check_one, err, errsize);
}

static bool
trusted(const struct filter_config *c, const char *policy, const char *sealer)
{
    const char *list = filter_setting(c, policy, "trusted_sealers");
    size_t sl = strlen(sealer);
    for (const char *p = list ? list : ""; *p;) {
        size_t n = strcspn(p, " ,\t");
        if (n == sl && sl > 0 && strncasecmp(p, sealer, n) == 0)
            return true;
        p += n;
        p += strspn(p, " ,\t");
    }
    return false;
}

/* -------------------------------------------------------- life cycle */

static int
arc_init(const struct filter_config *c, void **ctx_r, char *err, size_t errsize)
{
    if (arc_check(c, err, errsize) < 0)
        return -1;
    struct arc_filter *f = xcalloc(1, sizeof(*f));
    f->cfg = c;
    *ctx_r = f;
    return 0;
}

static void
arc_free(void *ctx)
{
    free(ctx);
}

/* --------------------------------------------------------- the hook */

struct key_ctx { const struct filter_config *cfg; };

/* selector._domainkey.domain's TXT record, the first that is one. */
static int
key_lookup(void *arg, const char *selector, const char *domain, char *rec, size_t recsize)
{
    struct key_ctx *k = arg;
    char name[512];
    if (str_fmt(name, sizeof(name), "%s._domainkey.%s", selector, domain) < 0)
        return 1;
    struct filter_dns a;
    filter_dns_lookup(k->cfg, name, 16 /* TXT */, &a);
    int rc = a.status == FILTER_DNS_TEMPFAIL ? -1 : 1;
    if (a.status == FILTER_DNS_OK && a.n > 0) {
        dns_txt_join(a.rdata[0], (size_t)a.rdlen[0], rec, recsize);
        rc = 0;
    }
    filter_dns_free(&a);
    return rc;
}

void
arc_verify_msg(const struct filter_config *c, const struct arc_msg *am, struct arc_result *res)
{
    struct key_ctx k = { c };
    arc_chain_verify(am, key_lookup, &k, res);
}

static const char *const cv_name[] = { "none", "pass", "fail", "temperror" };

static enum filter_status
arc_data_end(void *ctx, const struct filter_msg *m, struct filter_result *r)
{
    struct arc_filter *f = ctx;
    if (m->auth_user != NULL)
        return FILTER_DONE;     /* our own users' mail: nothing forwarded it */
    struct arc_msg *am = xmalloc(sizeof(*am));
    struct arc_result res;
    if (arc_msg_parse(m->data, m->len, am) < 0) {
        memset(&res, 0, sizeof(res));
        res.cv = ARC_FAIL;
        str_copy(res.why, "too many header fields", sizeof(res.why));
    } else {
        arc_verify_msg(f->cfg, am, &res);
    }
    free(am);
    char text[600], num[16];
    switch (res.cv) {
    case ARC_NONE:
        str_fmt(text, sizeof(text), "arc=none");
        break;
    case ARC_PASS:
        str_fmt(text, sizeof(text), "arc=pass (i=%u d=%s) header.oldest-pass=%u smtp.remote-ip=%s",
                res.n, res.sealer, res.oldest_pass, m->client_addr);
        filter_symbol(r, "ARC_PASS", -0.1, res.sealer);
        break;
    default:
        str_fmt(text, sizeof(text), "arc=%s (%s) smtp.remote-ip=%s", cv_name[res.cv], res.why,
                m->client_addr);
        filter_symbol(r, res.cv == ARC_FAIL ? "ARC_FAIL" : "ARC_TEMPERROR",
                      res.cv == ARC_FAIL ? 0.5 : 0.0, res.why);
        break;
    }
    filter_auth_result(r, text);
    filter_note_set(r, "arc.result", cv_name[res.cv]);
    str_fmt(num, sizeof(num), "%u", res.n);
    filter_note_set(r, "arc.instance", num);
    bool trust = res.cv == ARC_PASS && trusted(f->cfg, m->policy, res.sealer);
    if (trust)
        filter_note_set(r, "arc.trusted", res.sealer);
    if (res.cv != ARC_NONE)
        log_info("%s: %s%s", m->queue_id, text, trust ? " (a trusted sealer)" : "");
    if (res.cv == ARC_FAIL) {
        const char *fa = filter_setting(f->cfg, m->policy, "fail");
        enum filter_verdict v = FILTER_CONTINUE;
        if (fa)
            filter_verdict_parse(fa, &v);
        if (v != FILTER_CONTINUE)
            filter_verdict(r, v, "ARC chain did not validate");
    }
    return FILTER_DONE;
}

const struct filter_plugin filter_arc = {
    .abi = FILTER_ABI_VERSION,
    .name = "arc",
    .check = arc_check,
    .init = arc_init,
    .free = arc_free,
    .on_data_end = arc_data_end,
    .on_failure = FILTER_TEMPFAIL,
    .needs = FILTER_NEEDS_NONE,
};
