/*
 * spf.c -- the built-in SPF filter (RFC 7208) on libspf2.
 *
 *   spf { fail = "reject"; softfail = "continue"; score_softfail = 1.0; }
 *
 * libspf2 asks its DNS layer for every record it needs; ours (a custom
 * SPF_dns_server_t) answers through the daemon's resolver, so SPF uses the
 * one cache, dns.forwarder and dns.timeout like everything else. The
 * MAIL FROM identity is checked; for the null sender it is the HELO
 * identity (postmaster@helo, RFC 7208 section 2.4). The result goes into a
 * Received-SPF header and our Authentication-Results, is left as notes
 * spf.result / spf.domain for dmarc, and decides the verdict through the
 * action configured for it (fail: reject; everything else: continue). Every
 * result is also a symbol (SPF_FAIL, ...) with a configurable score.
 *
 * One SPF_server_t per worker thread: libspf2 makes no promise about
 * sharing one between threads, and a server costs a few hundred bytes.
 */
#include <arpa/inet.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <spf2/spf.h>
#include <spf2/spf_dns.h>
#include "filter.h"
#include "../common/util.h"

/* The results in libspf2's order (SPF_RESULT_INVALID .. SPF_RESULT_NONE). */
static const char *const result_names[] = {
    [SPF_RESULT_INVALID] = "invalid", [SPF_RESULT_NEUTRAL] = "neutral",
    [SPF_RESULT_PASS] = "pass", [SPF_RESULT_FAIL] = "fail", [SPF_RESULT_SOFTFAIL] = "softfail",
    [SPF_RESULT_NONE] = "none", [SPF_RESULT_TEMPERROR] = "temperror",
    [SPF_RESULT_PERMERROR] = "permerror",
};
#define NRESULTS (sizeof(result_names) / sizeof(result_names[0]))

struct spf {
    const struct filter_config *cfg;
    char hostname[256];
    pthread_key_t server_key;
};

static const char *
default_action(const char *result)
{
    return strcmp(result, "fail") == 0 ? "reject" : "continue";
}

static double
default_score(const char *result)
{
    static const struct { const char *r; double s; } t[] = {
        { "fail", 2.0 }, { "softfail", 1.0 }, { "permerror", 0.5 }, { "neutral", 0.0 },
        { "none", 0.0 }, { "temperror", 0.0 }, { "pass", -0.1 },
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        if (strcmp(t[i].r, result) == 0)
            return t[i].s;
    return 0.0;
}

/* ------------------------------------------------------------ settings */

static bool
is_result(const char *s)
{
    for (size_t i = 0; i < NRESULTS; i++)
        if (result_names[i] && i != SPF_RESULT_INVALID && strcmp(result_names[i], s) == 0)
            return true;
    return false;
}

static int
check_one(const char *key, const char *value, const char *domain, char *err, size_t errsize)
{
    const char *sep = domain[0] ? "/" : "";
    if (is_result(key))
        return filter_check_action(domain, key, value, err, errsize);
    if (strncmp(key, "score_", 6) == 0 && is_result(key + 6)) {
        char *end;
        strtod(value, &end);
        if (*value == '\0' || *end != '\0') {
            snprintf(err, errsize, "%s%s%s: '%s' is not a number", domain, sep, key, value);
            return -1;
        }
        return 0;
    }
    snprintf(err, errsize, "%s%s%s: unknown key (pass fail softfail neutral none "
             "permerror temperror, score_RESULT)", domain, sep, key);
    return -1;
}

static int
spf_check(const struct filter_config *c, char *err, size_t errsize)
{
    return filter_settings_each(c, check_one, err, errsize);
}

/* ----------------------------------------------------- the DNS layer */

/* MX names in preference order, as a sending MTA would try them: libspf2
 * looks at the first 10 only, so this keeps which ones it sees (and so the
 * result for a domain with more than 10) from depending on the order the
 * resolver shuffled the RRset into. rr->rr[] holds the names of the
 * records that parsed, in the order of rdata[]. */
static void
sort_mx(SPF_dns_rr_t *rr, const unsigned char *const *rdata, const int *rdlen, size_t n)
{
    unsigned pref[1000];
    size_t k = 0;
    char name[256];
    for (size_t i = 0; i < n && k < (size_t)rr->num_rr && k < 1000; i++) {
        size_t len = (size_t)rdlen[i];
        if (len < 3 || dns_wire_name(rdata[i] + 2, len - 2, name, sizeof(name)) < 0)
            continue;           /* skipped by the lookup too */
        pref[k++] = (unsigned)rdata[i][0] << 8 | rdata[i][1];
    }
    /* insertion sort: small sets, and stable for equal preferences */
    for (size_t i = 1; i < k; i++)
        for (size_t j = i; j > 0 && pref[j - 1] > pref[j]; j--) {
            unsigned tp = pref[j];
            pref[j] = pref[j - 1];
            pref[j - 1] = tp;
            SPF_dns_rr_data_t *td = rr->rr[j];
            rr->rr[j] = rr->rr[j - 1];
            rr->rr[j - 1] = td;
            size_t tl = rr->rr_buf_len[j];        /* each buffer keeps its size */
            rr->rr_buf_len[j] = rr->rr_buf_len[j - 1];
            rr->rr_buf_len[j - 1] = tl;
        }
}

static SPF_dns_rr_t *
dns_lookup(SPF_dns_server_t *layer, const char *domain, ns_type type, int should_cache)
{
    (void)should_cache;
    struct spf *spf = layer->hook;
    struct filter_dns a;
    filter_dns_lookup(spf->cfg, domain, (unsigned)type, &a);
    int herrno = a.status == FILTER_DNS_OK ? NETDB_SUCCESS
               : a.status == FILTER_DNS_NXDOMAIN ? HOST_NOT_FOUND
               : a.status == FILTER_DNS_NODATA ? NO_DATA : TRY_AGAIN;
    SPF_dns_rr_t *rr = SPF_dns_rr_new_init(layer, domain, type, (int)a.ttl, herrno);
    if (rr == NULL) {
        filter_dns_free(&a);
        return NULL;
    }
    /* RFC 7208 4.6.4: of the PTR names only the first 10 are looked at,
     * the rest ignored. libspf2 instead makes more than 10 a permerror
     * unless one of the first 10 matched, which a sender cannot control
     * (and the order of an RRset is the resolver's): cut the set here. */
    int cap = type == ns_t_ptr ? SPF_MAX_DNS_PTR : 1000;
    int cnt = 0;
    for (size_t i = 0; i < a.n && cnt < cap; i++) {
        const unsigned char *d = a.rdata[i];
        size_t len = (size_t)a.rdlen[i];
        char name[256];
        switch (type) {
        case ns_t_a:
        case ns_t_aaaa: {
            size_t want = type == ns_t_a ? 4 : 16;
            if (len != want || SPF_dns_rr_buf_realloc(rr, cnt, want) != SPF_E_SUCCESS)
                continue;
            memcpy(type == ns_t_a ? (void *)&rr->rr[cnt]->a : (void *)&rr->rr[cnt]->aaaa, d, want);
            cnt++;
            break;
        }
        case ns_t_mx:
        case ns_t_ptr: {
            size_t skip = type == ns_t_mx ? 2 : 0;
            if (len < skip + 1 || dns_wire_name(d + skip, len - skip, name, sizeof(name)) < 0)
                continue;
            size_t nl = strlen(name) + 1;
            if (SPF_dns_rr_buf_realloc(rr, cnt, nl) != SPF_E_SUCCESS)
                continue;
            memcpy(type == ns_t_mx ? rr->rr[cnt]->mx : rr->rr[cnt]->ptr, name, nl);
            cnt++;
            break;
        }
        case ns_t_txt:
        case ns_t_spf: {
            /* One record of several character-strings: joined (RFC 7208
             * 3.3). A TXT record that is not an SPF record is an
             * explanation (exp=), a macro-string; libspf2's macro parser
             * takes a literal space for the end of the string, so spaces
             * are handed over as the macro "%_", which expands to one. */
            if (SPF_dns_rr_buf_realloc(rr, cnt, 2 * len + 1) != SPF_E_SUCCESS)
                continue;
            char *out = rr->rr[cnt]->txt;
            size_t o = 0, k = 0;
            while (k < len) {
                size_t sl = d[k++];
                if (sl > len - k)
                    sl = len - k;
                memcpy(out + o, d + k, sl);
                o += sl;
                k += sl;
            }
            out[o] = '\0';
            if (!str_iprefix(out, "v=spf1")) {
                char *tmp = xstrndup(out, o);
                size_t w = 0;
                for (const char *p = tmp; *p; p++) {
                    if (*p == ' ') {
                        out[w++] = '%';
                        out[w++] = '_';
                    } else {
                        out[w++] = *p;
                    }
                }
                out[w] = '\0';
                free(tmp);
            }
            cnt++;
            break;
        }
        default:
            break;
        }
    }
    rr->num_rr = cnt;
    if (type == ns_t_mx && cnt > 1)
        sort_mx(rr, a.rdata, a.rdlen, a.n);
    if (herrno == NETDB_SUCCESS && cnt == 0)
        rr->herrno = NO_DATA;
    filter_dns_free(&a);
    return rr;
}

static void
dns_destroy(SPF_dns_server_t *layer)
{
    free(layer);
}

static void
server_free(void *p)
{
    SPF_server_free(p);
}

static SPF_server_t *
thread_server(struct spf *spf)
{
    SPF_server_t *srv = pthread_getspecific(spf->server_key);
    if (srv)
        return srv;
    SPF_dns_server_t *layer = calloc(1, sizeof(*layer));
    if (layer == NULL)
        return NULL;
    layer->destroy = dns_destroy;
    layer->lookup = dns_lookup;
    layer->name = "moat";
    layer->hook = spf;
    srv = SPF_server_new_dns(layer, 0);
    if (srv == NULL) {
        free(layer);
        return NULL;
    }
    SPF_server_set_rec_dom(srv, spf->hostname);
    /* libspf2's default points at openspf.org, long gone */
    SPF_response_t *eresp = NULL;
    SPF_server_set_explanation(srv, "%{o}%_does%_not%_designate%_%{i}%_as%_a%_permitted%_sender",
                               &eresp);
    if (eresp)
        SPF_response_free(eresp);
    pthread_setspecific(spf->server_key, srv);
    return srv;
}

/* ----------------------------------------------------------- the hook */

static int
spf_init(const struct filter_config *c, void **ctx_r, char *err, size_t errsize)
{
    if (spf_check(c, err, errsize) < 0)
        return -1;
    struct spf *spf = xcalloc(1, sizeof(*spf));
    spf->cfg = c;
    str_copy(spf->hostname, filter_config_hostname(c), sizeof(spf->hostname));
    if (pthread_key_create(&spf->server_key, server_free) != 0) {
        snprintf(err, errsize, "pthread_key_create failed");
        free(spf);
        return -1;
    }
    *ctx_r = spf;
    return 0;
}

static void
spf_free(void *ctx)
{
    struct spf *spf = ctx;
    /* the worker threads' servers go with their threads */
    free(spf);
}

static enum filter_status
spf_data_end(void *ctx, const struct filter_msg *m, struct filter_result *r)
{
    struct spf *spf = ctx;
    SPF_server_t *srv = thread_server(spf);
    if (srv == NULL)
        return FILTER_ERROR;
    SPF_request_t *req = SPF_request_new(srv);
    if (req == NULL)
        return FILTER_ERROR;
    struct in_addr a4;
    struct in6_addr a6;
    SPF_errcode_t rc;
    if (inet_pton(AF_INET, m->client_addr, &a4) == 1)
        rc = SPF_request_set_ipv4(req, a4);
    else if (inet_pton(AF_INET6, m->client_addr, &a6) == 1)
        rc = SPF_request_set_ipv6(req, a6);
    else
        rc = SPF_E_INVALID_IP4;
    if (rc != SPF_E_SUCCESS) {
        SPF_request_free(req);
        return FILTER_DONE;                 /* no IP client: nothing to check */
    }
    SPF_request_set_helo_dom(req, m->helo);
    const char *identity = m->sender[0] ? m->sender : m->helo;
    if (m->sender[0])
        SPF_request_set_env_from(req, m->sender);
    SPF_response_t *resp = NULL;
    SPF_errcode_t qrc = SPF_request_query_mailfrom(req, &resp);
    SPF_result_t res = resp ? SPF_response_result(resp) : SPF_RESULT_TEMPERROR;
    /* an error that ended the check early leaves the result unset: a DNS
     * failure is a temperror, anything else a permerror (RFC 7208 2.6) */
    if (res == SPF_RESULT_INVALID)
        res = qrc == SPF_E_DNS_ERROR ? SPF_RESULT_TEMPERROR : SPF_RESULT_PERMERROR;
    const char *name = (unsigned)res < NRESULTS && result_names[res] ? result_names[res] : "permerror";

    /* the domain checked: the MAIL FROM domain, or the HELO name */
    const char *at = strrchr(identity, '@');
    const char *domain = at ? at + 1 : identity;
    char text[700], sym[32];
    snprintf(text, sizeof(text), "spf=%s %s=%s", name, m->sender[0] ? "smtp.mailfrom" : "smtp.helo",
             domain);
    filter_auth_result(r, text);
    const char *rspf = resp ? SPF_response_get_received_spf_value(resp) : NULL;
    if (rspf && rspf[0])
        filter_add_header(r, "Received-SPF", rspf);
    else {
        snprintf(text, sizeof(text), "%s (%s: %s checking %s) client-ip=%s;", name,
                 spf->hostname, SPF_strerror(qrc), domain, m->client_addr);
        filter_add_header(r, "Received-SPF", text);
    }
    filter_note_set(r, "spf.result", name);
    filter_note_set(r, "spf.domain", domain);

    snprintf(sym, sizeof(sym), "SPF_%s", name);
    for (char *p = sym; *p; p++)
        if (*p >= 'a' && *p <= 'z')
            *p = (char)(*p - 32);
    char key[32];
    snprintf(key, sizeof(key), "score_%s", name);
    const char *sv = filter_setting(spf->cfg, m->policy, key);
    snprintf(text, sizeof(text), "SPF %s for %s", name, domain);
    filter_symbol(r, sym, sv ? strtod(sv, NULL) : default_score(name), text);

    const char *act = filter_setting(spf->cfg, m->policy, name);
    enum filter_verdict v;
    if (filter_verdict_parse(act ? act : default_action(name), &v) == 0 && v != FILTER_CONTINUE) {
        const char *why = resp ? SPF_response_get_smtp_comment(resp) : NULL;
        if (v == FILTER_TEMPFAIL || why == NULL || why[0] == '\0')
            snprintf(text, sizeof(text), "SPF %s for %s", name, domain);
        else
            snprintf(text, sizeof(text), "SPF %s for %s: %s", name, domain, why);
        filter_verdict(r, v, text);
    }
    if (resp)
        SPF_response_free(resp);
    SPF_request_free(req);
    return FILTER_DONE;
}

const struct filter_plugin filter_spf = {
    .abi = FILTER_ABI_VERSION,
    .name = "spf",
    .check = spf_check,
    .init = spf_init,
    .free = spf_free,
    .on_data_end = spf_data_end,
    .on_failure = FILTER_TEMPFAIL,
};
