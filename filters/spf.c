/*
 * spf.c -- the built-in SPF filter (RFC 7208) on libspf2.
 *
 *   spf { fail = "reject"; softfail = "continue"; score_softfail = 1.0; }
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
 *
 * The MAIL FROM identity is checked; for the null sender it is the HELO
 * identity (postmaster@helo, RFC 7208 section 2.4). The result goes into a
 * Received-SPF header (9.1) and our Authentication-Results, is left as
 * notes spf.result / spf.domain for dmarc, and decides the verdict through
 * the action configured for it (fail: reject; everything else: continue).
 * Every result is also a symbol (SPF_FAIL, ...) with a configurable score.
 *
 * One SPF_server_t per worker thread with its check's state: libspf2
 * makes no promise about sharing one between threads, and its DNS layer
 * sees no request, only the thread it runs on.
 */
#include <arpa/inet.h>
#include <limits.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <spf2/spf.h>
#include <spf2/spf_dns.h>
#include <time.h>
#include "filter.h"
#include "spf_record.h"
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
    pthread_key_t thread_key;           /* struct spf_thread */
};

#define MAX_PTR 10                      /* PTR names looked at (RFC 7208 4.6.4) */
#define MAX_MX 10                       /* MX hosts looked at */
#define MAX_VOID 2                      /* void lookups (4.6.4) */
#define MAX_EXPS 16                     /* exp= of the records of one check */
#define MAX_EXPLANATION 256             /* of an explanation in our reply */

/* One check, as the DNS layer sees it while libspf2 runs. */
struct check {
    const struct filter_config *cfg;
    bool ipv6;
    unsigned char ip[16];
    char ip_text[INET6_ADDRSTRLEN], ip_dots[72], reverse[80];
    char sender[1024], local[1024], sender_domain[256], helo[256];
    struct spf_macro_vars vars;
    unsigned terms, voids;
    bool abort;                         /* a limit was passed: every lookup fails */
    char problem[200];                  /* what made it a permerror, when we know */
    /* the PTR names given to libspf2: an address lookup for one that
     * fails skips the name (RFC 7208 5.5) */
    char ptr_names[MAX_PTR][SPF_DOMAIN_MAX + 1];
    size_t nptr;
    /* the client's validated names for %{p}, looked up on first use */
    bool p_done;
    char p_names[MAX_PTR][SPF_DOMAIN_MAX + 1];
    size_t np;
    /* exp=#N: the explanation's domain and the domain of its record */
    struct { char name[SPF_DOMAIN_MAX + 1], domain[SPF_DOMAIN_MAX + 1]; } exps[MAX_EXPS];
    size_t nexp;
};

struct spf_thread {
    SPF_server_t *srv;
    struct check ck;
    struct spf_record rec;              /* get_spf's parse */
    char txt[SPF_RECORD_MAX + 1];       /* the record, its strings joined */
    char text[SPF_REWRITE_MAX];         /* the record for libspf2 */
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

static void set_problem(struct check *ck, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* What made the check a permerror: the first reason found stays. */
static void
set_problem(struct check *ck, const char *fmt, ...)
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
    set_problem(ck, "%s", why);
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

/* The TXT record d (len bytes): its character-strings joined into out
 * (NUL-terminated, cut to outsize - 1 bytes); returns the whole length. */
static size_t
txt_join(const unsigned char *d, size_t len, char *out, size_t outsize)
{
    size_t o = 0, total = 0, k = 0;
    while (k < len) {
        size_t sl = d[k++];
        if (sl > len - k)
            sl = len - k;
        for (size_t j = 0; j < sl && o + 1 < outsize; j++)
            out[o++] = (char)d[k + j];
        total += sl;
        k += sl;
    }
    out[o] = '\0';
    return total;
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
        set_problem(ck, "no SPF record at %s (include or redirect)", name);
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
        set_problem(ck, "DNS error looking up the SPF record of %s", name);
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
        size_t total = txt_join(a.rdata[i], (size_t)a.rdlen[i], head, sizeof(head));
        if (spf_record_is_spf(head, total < 7 ? total : 7)) {
            found = i;
            nfound++;
        }
    }
    size_t len = 0;
    if (nfound == 1)
        len = txt_join(a.rdata[found], (size_t)a.rdlen[found], th->txt, sizeof(th->txt));
    filter_dns_free(&a);
    if (nfound == 0)
        return no_record(ck, resp, top, name);
    if (nfound > 1) {
        set_problem(ck, "%s: more than one SPF record", name);
        return record_error(resp, SPF_RESULT_PERMERROR, SPF_E_MULTIPLE_RECORDS);
    }
    char err[200];
    if (len > SPF_RECORD_MAX) {
        set_problem(ck, "%s: record longer than %d bytes", name, SPF_RECORD_MAX);
        return record_error(resp, SPF_RESULT_PERMERROR, SPF_E_BIG_STRING);
    }
    if (spf_record_parse(th->txt, len, &th->rec, err, sizeof(err)) < 0) {
        set_problem(ck, "%s: %s", name, err);
        return record_error(resp, SPF_RESULT_PERMERROR, SPF_E_SYNTAX);
    }
    char expd[SPF_DOMAIN_MAX + 1];
    ck->vars.domain = name;
    ssize_t n = spf_record_rewrite(th->txt, &th->rec, &ck->vars, ck->ipv6, (unsigned)ck->nexp,
                                   expd, th->text, sizeof(th->text));
    ck->vars.domain = NULL;
    if (n < 0) {
        set_problem(ck, "%s: record too long", name);
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
        set_problem(ck, "%s: %s", name, SPF_strerror(rc));
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
static const char *
ptr_macro(void *arg, const char *domain)
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
static void
explain(struct spf_thread *th, const char *expl, char *out, size_t outsize)
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
        len = txt_join(a.rdata[0], (size_t)a.rdlen[0], th->txt, sizeof(th->txt));
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

/* ------------------------------------------------------ Received-SPF */

/* The longest Received-SPF value we write: the chain folds a header into
 * 2000 bytes and would cut a longer one anywhere. */
#define MAX_FIELD 1900

struct text {
    char buf[MAX_FIELD + 1];
    size_t n;
    bool full;
};

static void
put(struct text *t, const char *s, size_t n)
{
    if (t->n + n < sizeof(t->buf)) {
        memcpy(t->buf + t->n, s, n);
        t->n += n;
    } else {
        t->full = true;
    }
    t->buf[t->n] = '\0';
}

static void
puts_(struct text *t, const char *s)
{
    put(t, s, strlen(s));
}

/* s inside a comment: ( ) and \ quoted, control characters left out. */
static void
put_comment(struct text *t, const char *s)
{
    for (; *s; s++) {
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            continue;
        if (*s == '(' || *s == ')' || *s == '\\')
            put(t, "\\", 1);
        put(t, s, 1);
    }
}

static bool
atext(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL || c >= 0x80;
}

/* key=value as RFC 7208 9.1 has it: a dot-atom as it is, anything else a
 * quoted-string (RFC 5322 3.2.4), control characters left out. */
static void
put_pair(struct text *t, const char *key, const char *value)
{
    bool dot_atom = value[0] != '\0' && value[0] != '.';
    for (const char *p = value; *p && dot_atom; p++)
        dot_atom = *p == '.' ? p[1] != '\0' && p[1] != '.' : atext((unsigned char)*p) && *p;
    puts_(t, key);
    puts_(t, "=");
    if (dot_atom) {
        puts_(t, value);
    } else {
        puts_(t, "\"");
        for (const char *p = value; *p; p++) {
            if ((unsigned char)*p < 0x20 || *p == 0x7f)
                continue;
            if (*p == '"' || *p == '\\')
                put(t, "\\", 1);
            put(t, p, 1);
        }
        puts_(t, "\"");
    }
    puts_(t, ";");
}

/* The Received-SPF value (RFC 7208 9.1), folded: the result, a comment
 * saying why, then client-ip, envelope-from (when MAIL FROM was checked),
 * helo, problem (for an error), receiver and identity. With brief (for
 * a sender and HELO whose escapes would pass MAX_FIELD) the comment names
 * the domain and envelope-from and helo are left out. */
static void
received_spf(const struct spf *spf, const struct check *ck, const struct filter_msg *m,
             const char *res, bool brief, struct text *t)
{
    char c[1400];
    const char *who = brief ? ck->sender_domain : ck->sender, *ip = ck->ip_text;
    if (strcmp(res, "pass") == 0)
        snprintf(c, sizeof(c), "domain of %s designates %s as permitted sender", who, ip);
    else if (strcmp(res, "fail") == 0)
        snprintf(c, sizeof(c), "domain of %s does not designate %s as permitted sender", who, ip);
    else if (strcmp(res, "softfail") == 0)
        snprintf(c, sizeof(c), "domain of transitioning %s does not designate %s as permitted "
                 "sender", who, ip);
    else if (strcmp(res, "neutral") == 0)
        snprintf(c, sizeof(c), "%s is neither permitted nor denied by domain of %s", ip, who);
    else if (strcmp(res, "none") == 0)
        snprintf(c, sizeof(c), "domain of %s does not designate permitted sender hosts", who);
    else if (strcmp(res, "permerror") == 0)
        snprintf(c, sizeof(c), "permanent error in processing domain of %s", who);
    else
        snprintf(c, sizeof(c), "temporary error in processing domain of %s", who);
    t->n = 0;
    t->full = false;
    puts_(t, res);
    puts_(t, " (");
    put_comment(t, spf->hostname);
    puts_(t, ": ");
    put_comment(t, c);
    puts_(t, ")\r\n\t");
    put_pair(t, "client-ip", ip);
    if (m->sender[0] && !brief) {
        puts_(t, " ");
        put_pair(t, "envelope-from", m->sender);
    }
    if (!brief) {
        puts_(t, "\r\n\t");
        put_pair(t, "helo", m->helo);
    }
    if (ck->problem[0] && (strcmp(res, "permerror") == 0 || strcmp(res, "temperror") == 0)) {
        puts_(t, "\r\n\t");
        put_pair(t, "problem", ck->problem);
    }
    puts_(t, "\r\n\t");
    put_pair(t, "receiver", spf->hostname);
    puts_(t, " ");
    put_pair(t, "identity", m->sender[0] ? "mailfrom" : "helo");
    if (t->full && !brief)
        received_spf(spf, ck, m, res, true, t);
}

/* ---------------------------------------------------------- threads */

static void
thread_free(void *p)
{
    struct spf_thread *th = p;
    SPF_server_free(th->srv);           /* and the layer, through dns_destroy */
    free(th);
}

static struct spf_thread *
thread_state(struct spf *spf)
{
    struct spf_thread *th = pthread_getspecific(spf->thread_key);
    if (th)
        return th;
    th = xcalloc(1, sizeof(*th));
    SPF_dns_server_t *layer = xcalloc(1, sizeof(*layer));
    layer->destroy = dns_destroy;
    layer->lookup = dns_lookup;
    layer->get_spf = dns_get_spf;
    layer->get_exp = dns_get_exp;
    layer->name = "moat";
    layer->hook = th;
    th->srv = SPF_server_new_dns(layer, 0);
    if (th->srv == NULL) {
        free(layer);
        free(th);
        return NULL;
    }
    SPF_server_set_rec_dom(th->srv, spf->hostname);
    /* the default explanation is ours (explain): none from libspf2 */
    SPF_response_t *eresp = NULL;
    SPF_server_set_explanation(th->srv, "", &eresp);
    if (eresp)
        SPF_response_free(eresp);
    pthread_setspecific(spf->thread_key, th);
    return th;
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
    if (pthread_key_create(&spf->thread_key, thread_free) != 0) {
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

/* The check's state for message m: -1 when the client has no IP address. */
static int
check_start(struct check *ck, const struct spf *spf, const struct filter_msg *m)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, m->client_addr, &a4) == 1) {
        ck->ipv6 = false;
        memcpy(ck->ip, &a4, 4);
    } else if (inet_pton(AF_INET6, m->client_addr, &a6) == 1) {
        ck->ipv6 = !IN6_IS_ADDR_V4MAPPED(&a6);      /* RFC 7208 5: mapped is IPv4 */
        memcpy(ck->ip, ck->ipv6 ? a6.s6_addr : a6.s6_addr + 12, ck->ipv6 ? 16 : 4);
    } else {
        return -1;
    }
    const unsigned char *ip = ck->ip;
    inet_ntop(ck->ipv6 ? AF_INET6 : AF_INET, ip, ck->ip_text, sizeof(ck->ip_text));
    if (ck->ipv6) {
        static const char hex[] = "0123456789ABCDEF", lhex[] = "0123456789abcdef";
        size_t o = 0, r = 0;
        for (int i = 0; i < 16; i++) {
            ck->ip_dots[o++] = hex[ip[i] >> 4];
            ck->ip_dots[o++] = '.';
            ck->ip_dots[o++] = hex[ip[i] & 15];
            ck->ip_dots[o++] = '.';
        }
        ck->ip_dots[o - 1] = '\0';
        for (int i = 15; i >= 0; i--) {
            ck->reverse[r++] = lhex[ip[i] & 15];
            ck->reverse[r++] = '.';
            ck->reverse[r++] = lhex[ip[i] >> 4];
            ck->reverse[r++] = '.';
        }
        str_copy(ck->reverse + r, "ip6.arpa", sizeof(ck->reverse) - r);
    } else {
        str_copy(ck->ip_dots, ck->ip_text, sizeof(ck->ip_dots));
        snprintf(ck->reverse, sizeof(ck->reverse), "%u.%u.%u.%u.in-addr.arpa", ip[3], ip[2],
                 ip[1], ip[0]);
    }
    /* <sender>: MAIL FROM, or postmaster@HELO for the null sender; no
     * local part is "postmaster" (RFC 7208 4.3) */
    const char *s = m->sender[0] ? m->sender : m->helo;
    const char *at = m->sender[0] ? strrchr(s, '@') : NULL;
    size_t ll = at ? (size_t)(at - s) : 0;
    if (ll == 0 || ll >= sizeof(ck->local))
        str_copy(ck->local, "postmaster", sizeof(ck->local));
    else
        snprintf(ck->local, sizeof(ck->local), "%.*s", (int)ll, s);
    str_copy(ck->sender_domain, at ? at + 1 : s, sizeof(ck->sender_domain));
    str_copy(ck->helo, m->helo, sizeof(ck->helo));
    snprintf(ck->sender, sizeof(ck->sender), "%s@%s", ck->local, ck->sender_domain);
    ck->cfg = spf->cfg;
    ck->terms = ck->voids = 0;
    ck->abort = false;
    ck->problem[0] = '\0';
    ck->nptr = ck->np = ck->nexp = 0;
    ck->p_done = false;
    ck->vars = (struct spf_macro_vars){
        .sender = ck->sender, .local = ck->local, .sender_domain = ck->sender_domain,
        .ip = ck->ip_dots, .ip_text = ck->ip_text, .ip_version = ck->ipv6 ? "ip6" : "in-addr",
        .helo = ck->helo, .receiver = spf->hostname, .now = (long long)time(NULL),
        .ptr = ptr_macro, .arg = ck,
    };
    return 0;
}

static enum filter_status
spf_data_end(void *ctx, const struct filter_msg *m, struct filter_result *r)
{
    struct spf *spf = ctx;
    struct spf_thread *th = thread_state(spf);
    if (th == NULL)
        return FILTER_ERROR;
    struct check *ck = &th->ck;
    if (check_start(ck, spf, m) < 0)
        return FILTER_DONE;                 /* no IP client: nothing to check */
    SPF_request_t *req = SPF_request_new(th->srv);
    if (req == NULL)
        return FILTER_ERROR;
    if (ck->ipv6) {
        struct in6_addr a6;
        memcpy(&a6, ck->ip, 16);
        SPF_request_set_ipv6(req, a6);
    } else {
        struct in_addr a4;
        memcpy(&a4, ck->ip, 4);
        SPF_request_set_ipv4(req, a4);
    }
    SPF_request_set_helo_dom(req, m->helo);
    if (m->sender[0])
        SPF_request_set_env_from(req, m->sender);
    SPF_response_t *resp = NULL;
    SPF_errcode_t qrc = SPF_request_query_mailfrom(req, &resp);
    SPF_result_t res = resp ? SPF_response_result(resp) : SPF_RESULT_TEMPERROR;
    /* an error that ended the check early leaves the result unset: a DNS
     * failure is a temperror, anything else a permerror (RFC 7208 2.6) */
    if (res == SPF_RESULT_INVALID)
        res = qrc == SPF_E_DNS_ERROR ? SPF_RESULT_TEMPERROR : SPF_RESULT_PERMERROR;
    if (ck->abort)
        res = SPF_RESULT_PERMERROR;         /* a limit, passed (libspf2 saw DNS errors) */
    const char *name = (unsigned)res < NRESULTS && result_names[res] ? result_names[res] : "permerror";
    if (res == SPF_RESULT_PERMERROR || res == SPF_RESULT_TEMPERROR)
        set_problem(ck, "%s", SPF_strerror(resp ? SPF_response_errcode(resp) : qrc));
    char why[MAX_EXPLANATION + 1];
    why[0] = '\0';
    if (res == SPF_RESULT_FAIL)
        explain(th, resp ? SPF_response_get_explanation(resp) : NULL, why, sizeof(why));

    /* the domain checked: the MAIL FROM domain, or the HELO name */
    const char *domain = ck->sender_domain;
    char text[700], sym[32];
    snprintf(text, sizeof(text), "spf=%s %s=%s", name, m->sender[0] ? "smtp.mailfrom" : "smtp.helo",
             domain);
    filter_auth_result(r, text);
    struct text hv;
    received_spf(spf, ck, m, name, false, &hv);
    filter_add_header(r, "Received-SPF", hv.buf);
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
        if (why[0] && v != FILTER_TEMPFAIL)
            snprintf(text, sizeof(text), "SPF %s for %s: %s", name, domain, why);
        else
            snprintf(text, sizeof(text), "SPF %s for %s", name, domain);
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
