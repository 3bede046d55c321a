/*
 * spf_dns.c -- the spf plugin's DNS side (spf.c): the DNS layer libspf2
 * asks (a custom SPF_dns_server_t), %{p}, and the explanation of a fail.
 *
 * libspf2 evaluates the records: mechanisms in order, include and redirect,
 * the address matching. It asks its DNS layer for everything it needs, and
 * ours (a custom SPF_dns_server_t) answers through the daemon's resolver,
 * so SPF uses the one cache, dns.forwarder and dns.timeout like everything
 * else. Where libspf2 1.2.10 is not RFC 7208, the layer closes the gap:
 *
 * - get_spf: every SPF record (the checked domain's, each include's and
 *   redirect's) is fetched here: one TXT record of several strings is one
 *   record (3.3), two SPF records are a permerror (4.5), and the record
 *   must pass our syntax check (spf_record.c: 4.6, 12, macros 7.1) before
 *   libspf2 gets it, rewritten with its macros expanded by us (7.3) and
 *   its redirect= where it takes effect (6.1); see spf_record.h.
 * - lookup: the limits of 4.6.4, counted per check across includes, which
 *   libspf2 does not do: 10 DNS-querying terms (the rewrite tags each
 *   name a term looks up), 2 void lookups. Past a limit every further
 *   lookup fails so libspf2 stops at once, and the result is permerror.
 *   It also answers for a and mx with CIDR length 0, which libspf2 refuses
 *   (own code: does the name, or one of its first 10 MX hosts, have an
 *   address of the client's family), skips a PTR name whose address
 *   lookup fails (5.5), and sorts MX names by preference.
 * - get_exp: libspf2 picks the record whose exp= applies (the top level's
 *   or a redirect target's, never an include's); the explanation itself
 *   is looked up and expanded by us, once, when the result is fail (6.2:
 *   exactly one TXT record, ASCII, valid macros, else the default).
 */
#include <arpa/inet.h>
#include <limits.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <spf2/spf.h>
#include <spf2/spf_dns.h>
#include "filter.h"
#include "spf_dns.h"
#include "spf_record.h"
#include "../common/util.h"

void
spf_dns_problem(struct check *ck, const char *fmt, ...)
{
    if (ck->problem[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ck->problem, sizeof(ck->problem), fmt, ap);
    va_end(ap);
}

/* A limit of RFC 7208 4.6.4 is passed: the check is a permerror, and
 * every lookup from now on fails so that libspf2 stops at once. */
static void
limit(struct check *ck, const char *why)
{
    ck->abort = true;
    spf_dns_problem(ck, "%s", why);
}

static int
count_term(struct check *ck)
{
    if (++ck->terms <= SPF_DNS_TERMS_MAX)
        return 0;
    limit(ck, "more than 10 DNS-querying mechanisms and modifiers");
    return -1;
}

static SPF_dns_rr_t *
rr_empty(SPF_dns_server_t *layer, const char *name, ns_type type, int herrno)
{
    return SPF_dns_rr_new_init(layer, name, type, 0, herrno);
}

/* A name in the form unbound reads: a backslash is its escape character. */
static int
query_name(const char *name, char *out, size_t outsize)
{
    size_t o = 0;
    for (const char *p = name; *p; p++) {
        if (o + 3 > outsize)
            return -1;
        if (*p == '\\')
            out[o++] = '\\';
        out[o++] = *p;
    }
    out[o] = '\0';
    return 0;
}

/* A host name from an MX or PTR answer (wire format) for libspf2 to look
 * up, or -1: a label with a dot, a backslash, a space or a byte that is
 * not printable ASCII is nothing we look up. "" for the root (null MX). */
static int
host_name(const unsigned char *p, size_t len, char *out, size_t outsize)
{
    size_t o = 0, i = 0;
    while (i < len) {
        unsigned l = p[i++];
        if (l == 0) {
            out[o > 0 ? o - 1 : 0] = '\0';
            return 0;
        }
        if (l > 63 || i + l > len || o + l + 2 > outsize)
            return -1;
        for (unsigned k = 0; k < l; k++) {
            unsigned char c = p[i + k];
            if (c <= ' ' || c >= 0x7f || c == '.' || c == '\\')
                return -1;
            out[o++] = (char)c;
        }
        out[o++] = '.';
        i += l;
    }
    return -1;
}

static bool
is_ptr_name(const struct check *ck, const char *name)
{
    for (size_t i = 0; i < ck->nptr; i++)
        if (strcasecmp(ck->ptr_names[i], name) == 0)
            return true;
    return false;
}

/* One lookup as libspf2 wants it: the answer's A, AAAA, MX (in preference
 * order: libspf2 looks at the first 10) or PTR records (the first 10, the
 * rest ignored: RFC 7208 4.6.4; libspf2 would make more a permerror);
 * void answers counted. A name that is no DNS name finds nothing without
 * a query. Only libspf2's ptr asks for PTR records (we expand %{p}). */
static SPF_dns_rr_t *
query(struct check *ck, SPF_dns_server_t *layer, const char *domain, ns_type type)
{
    char name[SPF_DOMAIN_MAX + 2], qname[2 * SPF_DOMAIN_MAX + 4];
    if (str_copy(name, domain, sizeof(name)) >= sizeof(name) || spf_domain_fit(name) < 0 ||
        query_name(name, qname, sizeof(qname)) < 0)
        return rr_empty(layer, domain, type, HOST_NOT_FOUND);
    struct filter_dns a;
    filter_dns_lookup(ck->cfg, qname, (unsigned)type, &a);
    int herrno = a.status == FILTER_DNS_OK ? NETDB_SUCCESS
               : a.status == FILTER_DNS_NXDOMAIN ? HOST_NOT_FOUND
               : a.status == FILTER_DNS_NODATA ? NO_DATA : TRY_AGAIN;
    SPF_dns_rr_t *rr = SPF_dns_rr_new_init(layer, domain, type, (int)a.ttl, herrno);
    unsigned pref[256];
    int cnt = 0, cap = type == ns_t_ptr ? MAX_PTR
                     : type == ns_t_mx ? (int)(sizeof(pref) / sizeof(pref[0])) : INT_MAX;
    for (size_t i = 0; herrno == NETDB_SUCCESS && i < a.n && cnt < cap; i++) {
        const unsigned char *d = a.rdata[i];
        size_t len = (size_t)a.rdlen[i];
        char host[SPF_DOMAIN_MAX + 2];
        if (type == ns_t_a || type == ns_t_aaaa) {
            size_t want = type == ns_t_a ? 4 : 16;
            if (len != want || SPF_dns_rr_buf_realloc(rr, cnt, want) != SPF_E_SUCCESS)
                continue;
            memcpy(type == ns_t_a ? (void *)&rr->rr[cnt]->a : (void *)&rr->rr[cnt]->aaaa, d, want);
        } else if (type == ns_t_mx || type == ns_t_ptr) {
            size_t skip = type == ns_t_mx ? 2 : 0;
            if (len < skip + 1 || host_name(d + skip, len - skip, host, sizeof(host)) < 0 ||
                SPF_dns_rr_buf_realloc(rr, cnt, strlen(host) + 1) != SPF_E_SUCCESS)
                continue;
            memcpy(type == ns_t_mx ? rr->rr[cnt]->mx : rr->rr[cnt]->ptr, host, strlen(host) + 1);
            if (type == ns_t_mx)
                pref[cnt] = (unsigned)d[0] << 8 | d[1];
            else
                str_copy(ck->ptr_names[cnt], host, sizeof(ck->ptr_names[cnt]));
        } else {
            continue;           /* libspf2 asks us for TXT records through get_spf */
        }
        cnt++;
    }
    rr->num_rr = cnt;
    if (type == ns_t_ptr)
        ck->nptr = (size_t)cnt;
    /* insertion sort by preference: small sets, and stable for equal ones */
    for (int i = 1; type == ns_t_mx && i < cnt; i++)
        for (int j = i; j > 0 && pref[j - 1] > pref[j]; j--) {
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
    if (herrno == NETDB_SUCCESS && cnt == 0)
        rr->herrno = NO_DATA;
    filter_dns_free(&a);
    if (rr->herrno == HOST_NOT_FOUND || rr->herrno == NO_DATA) {
        if (++ck->voids > MAX_VOID) {
            limit(ck, "more than 2 void lookups");
            rr->herrno = TRY_AGAIN;
        }
    } else if (rr->herrno == TRY_AGAIN && (type == ns_t_ptr ||
               ((type == ns_t_a || type == ns_t_aaaa) && is_ptr_name(ck, name)))) {
        /* RFC 7208 5.5: a DNS error looking up the PTR records makes ptr
         * not match; looking up a name's addresses, skips that name */
        rr->herrno = NO_DATA;
    }
    return rr;
}

/* mx with CIDR length 0 for the client's family (libspf2 refuses the
 * length): a match when one of the first 10 MX hosts has an address of
 * the family; more hosts and no match is a permerror, as for mx. */
static SPF_dns_rr_t *
mx_any(struct check *ck, SPF_dns_server_t *layer, const char *domain)
{
    SPF_dns_rr_t *mx = query(ck, layer, domain, ns_t_mx);
    if (mx->herrno != NETDB_SUCCESS)
        return mx;
    for (int i = 0; i < mx->num_rr && i < MAX_MX; i++) {
        SPF_dns_rr_t *a = query(ck, layer, mx->rr[i]->mx, ck->ipv6 ? ns_t_aaaa : ns_t_a);
        if (a->herrno == TRY_AGAIN || a->num_rr > 0) {
            SPF_dns_rr_free(mx);
            return a;
        }
        SPF_dns_rr_free(a);
    }
    if (mx->num_rr > MAX_MX) {
        limit(ck, "more than 10 MX hosts");
        mx->herrno = TRY_AGAIN;
    }
    mx->num_rr = 0;
    return mx;
}

/* What libspf2 looks up. A tagged name is a DNS-querying term's (the
 * rewritten record put the tag there), and so is a PTR query (libspf2's
 * ptr; we expand %{p} ourselves): each counts towards the limit. */
static SPF_dns_rr_t *
dns_lookup(SPF_dns_server_t *layer, const char *domain, ns_type type, int should_cache)
{
    (void)should_cache;
    struct spf_thread *th = layer->hook;
    struct check *ck = &th->ck;
    char tag = domain[0];
    bool tagged = tag == SPF_TAG_TERM || tag == SPF_TAG_ANY || tag == SPF_TAG_MXANY;
    if (tagged)
        domain++;
    if (ck->abort || ((tagged || type == ns_t_ptr) && count_term(ck) < 0))
        return rr_empty(layer, domain, type, TRY_AGAIN);
    if (tag == SPF_TAG_ANY)     /* as exists: any address of the family matches */
        return query(ck, layer, domain, ck->ipv6 ? ns_t_aaaa : ns_t_a);
    if (tag == SPF_TAG_MXANY)
        return mx_any(ck, layer, domain);
    return query(ck, layer, domain, type);
}


static SPF_errcode_t
record_error(SPF_response_t *resp, SPF_result_t res, SPF_errcode_t code)
{
    resp->result = res;
    resp->reason = SPF_REASON_FAILURE;
    resp->err = code;
    return code;
}

/* No SPF record: none for the checked domain, a permerror for an
 * include's or a redirect's target (libspf2 makes it one; we say why). */
static SPF_errcode_t
no_record(struct check *ck, SPF_response_t *resp, bool top, const char *name)
{
    if (!top)
        spf_dns_problem(ck, "no SPF record at %s (include or redirect)", name);
    return record_error(resp, SPF_RESULT_NONE, SPF_E_NOT_SPF);
}

/* The SPF record of req->cur_dom: the checked domain, or (tagged) an
 * include's or a redirect's target, for libspf2 to compile and evaluate. */
static SPF_errcode_t
dns_get_spf(SPF_server_t *srv, SPF_request_t *req, SPF_response_t *resp, SPF_record_t **rec_r)
{
    struct spf_thread *th = srv->resolver->hook;
    struct check *ck = &th->ck;
    const char *dom = req->cur_dom;
    *rec_r = NULL;
    bool top = dom[0] != SPF_TAG_TERM;
    if (!top)
        dom++;
    if (ck->abort || (!top && count_term(ck) < 0))
        return record_error(resp, SPF_RESULT_TEMPERROR, SPF_E_DNS_ERROR);
    char name[SPF_DOMAIN_MAX + 2], qname[2 * SPF_DOMAIN_MAX + 4];
    /* RFC 7208 4.3: a malformed or single-label domain has no record */
    if (str_copy(name, dom, sizeof(name)) >= sizeof(name) || spf_domain_fit(name) < 0 ||
        (top && (strchr(name, '.') == NULL || name[0] == '[')) ||
        query_name(name, qname, sizeof(qname)) < 0)
        return no_record(ck, resp, top, dom);
    struct filter_dns a;
    filter_dns_lookup(ck->cfg, qname, ns_t_txt, &a);
    if (a.status == FILTER_DNS_TEMPFAIL) {
        filter_dns_free(&a);
        spf_dns_problem(ck, "DNS error looking up the SPF record of %s", name);
        return record_error(resp, SPF_RESULT_TEMPERROR, SPF_E_DNS_ERROR);
    }
    if (a.status != FILTER_DNS_OK || a.n == 0) {
        filter_dns_free(&a);
        if (++ck->voids > MAX_VOID) {
            limit(ck, "more than 2 void lookups");
            return record_error(resp, SPF_RESULT_TEMPERROR, SPF_E_DNS_ERROR);
        }
        return no_record(ck, resp, top, name);
    }
    /* RFC 7208 4.5: the TXT records that start "v=spf1", each one record
     * however many strings it has (3.3); more than one is a permerror */
    size_t found = a.n, nfound = 0;
    for (size_t i = 0; i < a.n; i++) {
        char head[8];
        size_t total = dns_txt_join(a.rdata[i], (size_t)a.rdlen[i], head, sizeof(head));
        if (spf_record_is_spf(head, total < 7 ? total : 7)) {
            found = i;
            nfound++;
        }
    }
    size_t len = 0;
    if (nfound == 1)
        len = dns_txt_join(a.rdata[found], (size_t)a.rdlen[found], th->txt, sizeof(th->txt));
    filter_dns_free(&a);
    if (nfound == 0)
        return no_record(ck, resp, top, name);
    if (nfound > 1) {
        spf_dns_problem(ck, "%s: more than one SPF record", name);
        return record_error(resp, SPF_RESULT_PERMERROR, SPF_E_MULTIPLE_RECORDS);
    }
    char err[200];
    if (len > SPF_RECORD_MAX) {
        spf_dns_problem(ck, "%s: record longer than %d bytes", name, SPF_RECORD_MAX);
        return record_error(resp, SPF_RESULT_PERMERROR, SPF_E_BIG_STRING);
    }
    if (spf_record_parse(th->txt, len, &th->rec, err, sizeof(err)) < 0) {
        spf_dns_problem(ck, "%s: %s", name, err);
        return record_error(resp, SPF_RESULT_PERMERROR, SPF_E_SYNTAX);
    }
    char expd[SPF_DOMAIN_MAX + 1];
    ck->vars.domain = name;
    ssize_t n = spf_record_rewrite(th->txt, &th->rec, &ck->vars, ck->ipv6, (unsigned)ck->nexp,
                                   expd, th->text, sizeof(th->text));
    ck->vars.domain = NULL;
    if (n < 0) {
        spf_dns_problem(ck, "%s: record too long", name);
        return record_error(resp, SPF_RESULT_PERMERROR, SPF_E_BIG_STRING);
    }
    if (expd[0] && ck->nexp < MAX_EXPS) {
        str_copy(ck->exps[ck->nexp].name, expd, sizeof(ck->exps[0].name));
        str_copy(ck->exps[ck->nexp].domain, name, sizeof(ck->exps[0].domain));
        ck->nexp++;
    }
    SPF_errcode_t rc = SPF_record_compile(srv, resp, rec_r, th->text);
    if (rc != SPF_E_SUCCESS) {
        log_warn("spf: libspf2 refused the record of %s as we rewrote it: %s", name,
                 SPF_strerror(rc));
        if (*rec_r)
            SPF_record_free(*rec_r);
        *rec_r = NULL;
        spf_dns_problem(ck, "%s: %s", name, SPF_strerror(rc));
        return record_error(resp, SPF_RESULT_PERMERROR, rc);
    }
    return SPF_E_SUCCESS;
}

/* libspf2 calls this for the record whose exp= applies, with the exp=
 * value, "#N", expanded into *buf: left there as the explanation, it tells
 * spf_data_end which exp= to look up once the result is known to be fail. */
static SPF_errcode_t
dns_get_exp(SPF_server_t *srv, const char *domain, char **buf, size_t *buflen)
{
    (void)srv;
    (void)domain;
    (void)buf;
    (void)buflen;
    return SPF_E_SUCCESS;
}

static void
dns_destroy(SPF_dns_server_t *layer)
{
    free(layer);
}

/* The layer libspf2 asks, for th's server. */
SPF_dns_server_t *
spf_dns_new(struct spf_thread *th)
{
    SPF_dns_server_t *layer = xcalloc(1, sizeof(*layer));
    layer->destroy = dns_destroy;
    layer->lookup = dns_lookup;
    layer->get_spf = dns_get_spf;
    layer->get_exp = dns_get_exp;
    layer->name = "moat";
    layer->hook = th;
    return layer;
}

/* ------------------------------------------------- %{p}, explanations */

/* RFC 7208 5.5: the names of the client's PTR records (the first 10)
 * that have the client's address, looked up once per check. */
static void
validated_names(struct check *ck)
{
    struct filter_dns a;
    ck->p_done = true;
    filter_dns_lookup(ck->cfg, ck->reverse, ns_t_ptr, &a);
    char names[MAX_PTR][SPF_DOMAIN_MAX + 2];
    size_t n = 0;
    for (size_t i = 0; a.status == FILTER_DNS_OK && i < a.n && n < MAX_PTR; i++)
        if (host_name(a.rdata[i], (size_t)a.rdlen[i], names[n], sizeof(names[n])) == 0 &&
            names[n][0] && strlen(names[n]) <= SPF_DOMAIN_MAX)
            n++;
    filter_dns_free(&a);
    for (size_t i = 0; i < n; i++) {
        filter_dns_lookup(ck->cfg, names[i], ck->ipv6 ? ns_t_aaaa : ns_t_a, &a);
        size_t want = ck->ipv6 ? 16 : 4;
        for (size_t k = 0; a.status == FILTER_DNS_OK && k < a.n; k++)
            if ((size_t)a.rdlen[k] == want && memcmp(a.rdata[k], ck->ip, want) == 0) {
                str_copy(ck->p_names[ck->np++], names[i], sizeof(ck->p_names[0]));
                break;
            }
        filter_dns_free(&a);
    }
}

/* %{p}: the validated name that is the domain, else one in it, else any
 * (RFC 7208 7.3); "unknown" when there is none. */
const char *
spf_dns_ptr_macro(void *arg, const char *domain)
{
    struct check *ck = arg;
    if (!ck->p_done)
        validated_names(ck);
    size_t dl = domain ? strlen(domain) : 0;
    for (size_t i = 0; i < ck->np; i++)
        if (dl && strcasecmp(ck->p_names[i], domain) == 0)
            return ck->p_names[i];
    for (size_t i = 0; i < ck->np; i++) {
        size_t nl = strlen(ck->p_names[i]);
        if (dl && nl > dl && ck->p_names[i][nl - dl - 1] == '.' &&
            strcasecmp(ck->p_names[i] + nl - dl, domain) == 0)
            return ck->p_names[i];
    }
    return ck->np > 0 ? ck->p_names[0] : "unknown";
}

/* The explanation of a fail (RFC 7208 6.2): the TXT record that exp=#N in
 * expl names, if there is exactly one, ASCII, with valid macros, expanded;
 * else ours. Printable ASCII, cut to MAX_EXPLANATION: it goes into our
 * reply. */
void
spf_dns_explain(struct spf_thread *th, const char *expl, char *out, size_t outsize)
{
    struct check *ck = &th->ck;
    snprintf(out, outsize, "%s does not designate %s as a permitted sender", ck->sender_domain,
             ck->ip_text);
    if (expl == NULL || expl[0] != SPF_TAG_EXP)
        return;
    char *end;
    unsigned long i = strtoul(expl + 1, &end, 10);
    if (*end != '\0' || i >= ck->nexp)
        return;
    char qname[2 * SPF_DOMAIN_MAX + 4];
    if (query_name(ck->exps[i].name, qname, sizeof(qname)) < 0)
        return;
    struct filter_dns a;
    filter_dns_lookup(ck->cfg, qname, ns_t_txt, &a);
    size_t len = 0;
    bool one = a.status == FILTER_DNS_OK && a.n == 1;
    if (one)
        len = dns_txt_join(a.rdata[0], (size_t)a.rdlen[0], th->txt, sizeof(th->txt));
    filter_dns_free(&a);
    const char *why;
    char buf[1024];
    if (!one || len >= sizeof(th->txt) ||
        spf_macro_check(th->txt, len, SPF_MACRO_EXPLAIN, &why) < 0)
        return;
    ck->vars.domain = ck->exps[i].domain;
    ssize_t n = spf_macro_expand(th->txt, len, &ck->vars, buf, sizeof(buf));
    ck->vars.domain = NULL;
    if (n < 0)
        return;
    size_t o = 0;
    for (size_t k = 0; buf[k] && o < MAX_EXPLANATION && o + 1 < outsize; k++)
        out[o++] = buf[k] >= 0x20 && buf[k] < 0x7f ? buf[k] : '?';
    out[o] = '\0';
}
