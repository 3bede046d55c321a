/*
 * dest.c -- destinations: where the queue role sends mail for a domain
 * (the domain's relay_to, or its MX hosts in preference order, then their
 * A/AAAA addresses; no MX: the domain's own address). Each destination has
 * a line of jobs (kept by job.c) and a bounded set of connections that are
 * reused; a connection's slot, when it ends, comes back through job.c,
 * which wakes the destination with its dispatch event.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <netinet/in.h>
#include "../common/mail.h"
#include "delivery_private.h"

#define RESOLVE_TTL 60.0
#define MAX_MX 10

static void dest_resolve(struct dest *d);

static void
dest_dispatch(struct dest *d)
{
    struct qmgr *q = d->q;
    if (d->jobs == NULL)
        return;
    if (d->naddrs == 0 || time_mono() - d->resolved_at > RESOLVE_TTL) {
        if (d->nconn == 0) {        /* re-resolve between connections only */
            dest_resolve(d);
            return;
        }
    }
    while (d->jobs && d->idle) {
        struct conn *c = d->idle;
        d->idle = conn_idle_next(c);
        conn_set_idle_next(c, NULL);
        conn_give_job(c, job_queue_take(d));
    }
    /* Open more connections while jobs wait, within the limits. */
    while (d->njobs > d->pending_conns && d->nconn < q->cfg->queue.per_destination &&
           q->nconn < q->cfg->queue.concurrency)
        conn_open(d);
}

/* ---- a next hop that is this gateway */

static bool
same_ip(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return false;
    if (a->ss_family == AF_INET)
        return memcmp(&((const struct sockaddr_in *)a)->sin_addr,
                      &((const struct sockaddr_in *)b)->sin_addr, 4) == 0;
    return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                  &((const struct sockaddr_in6 *)b)->sin6_addr, 16) == 0;
}

static bool
is_any(const struct sockaddr_storage *a)
{
    static const unsigned char zero[16];
    if (a->ss_family == AF_INET)
        return ((const struct sockaddr_in *)a)->sin_addr.s_addr == 0;
    return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr, zero, 16) == 0;
}

/* An address of this host: one it can bind to. */
static bool
is_local_ip(const struct sockaddr_storage *a)
{
    struct sockaddr_storage b = *a;
    socklen_t len = sizeof(struct sockaddr_in6);
    if (b.ss_family == AF_INET) {
        ((struct sockaddr_in *)&b)->sin_port = 0;
        len = sizeof(struct sockaddr_in);
    } else {
        ((struct sockaddr_in6 *)&b)->sin6_port = 0;
    }
    int fd = socket(b.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    bool ok = bind(fd, (struct sockaddr *)&b, len) == 0;
    close(fd);
    return ok;
}

/* Is ss (address and port) one of this gateway's own SMTP listeners? */
static bool
addr_is_self(const struct moat_config *cfg, const struct sockaddr_storage *ss)
{
    char ip[64];
    uint16_t port;
    sockaddr_str((const struct sockaddr *)ss, ip, sizeof(ip), &port);
    for (int k = LISTEN_SMTP; k <= LISTEN_SMTPS; k++) {
        const struct listen_list *ll = conf_listeners(cfg, (enum listen_kind)k);
        for (size_t i = 0; i < ll->n; i++) {
            char host[300];
            uint16_t lport;
            struct sockaddr_storage ls;
            socklen_t len;
            if (hostport_split(ll->v[i].addr, host, sizeof(host), &lport) < 0 || lport != port ||
                sockaddr_parse(host, lport, &ls, &len) < 0)
                continue;
            if (same_ip(&ls, ss) || (is_any(&ls) && is_local_ip(ss)))
                return true;
        }
    }
    return false;
}

/* The next hop is this gateway: a configuration error, bounced with a
 * clear reason instead of going round until max_received. */
static void
loops_back(struct dest *d, const char *hop)
{
    char reply[800];
    d->resolving = false;
    reply_line(reply, sizeof(reply), R_LOOPS_BACK, d->host, hop);
    log_warn("configuration error: %s", reply);
    job_queue_fail(d, FATE_PERM, reply);
}

/* ---- resolution */

struct mx_lookup {
    struct dest *d;
    int pending;
    struct addr_entry *found[MAX_MX];
    size_t nfound[MAX_MX];
    bool tempfail;
    bool mx_secure;                 /* the MX answer was DNSSEC-validated */
    struct dane_host *dane[MAX_MX]; /* each MX host's TLSA, where looked up */
};

/* The TLSA records of the hosts just resolved take the place of the old
 * ones (re-resolution happens between connections only). */
static void
dest_set_dane(struct dest *d, struct dane_host **hosts, size_t n)
{
    for (size_t i = 0; i < d->ndane; i++)
        dane_host_free(&d->dane[i]);
    d->ndane = 0;
    for (size_t i = 0; i < n; i++)
        if (hosts[i] && d->ndane < sizeof(d->dane) / sizeof(d->dane[0]))
            d->dane[d->ndane++] = hosts[i];
        else
            dane_host_free(&hosts[i]);
}

/* DANE applies to a next hop whose MX (if any) and address answers were
 * DNSSEC-validated (RFC 7672 2.2), unless its policy is tls = none. */
static bool
dane_wanted(const struct dest *d, bool chain_secure)
{
    return d->q->dane && chain_secure && d->tls != TLS_NONE && !d->tls_optional;
}

/* RFC 8689 4.1: "TLS-Required: No" asks that TLS policies (DANE, MTA-STS,
 * verify) be ignored for this message; REQUIRETLS overrides it. */
static bool
tls_required_no(const struct qmsg *msg)
{
    size_t len;
    const char *v = rfc5322_find(msg->content, msg->content + msg->content_len, "TLS-Required",
                                 0, &len);
    while (v && len && (*v == ' ' || *v == '\t')) {
        v++;
        len--;
    }
    while (v && len && (v[len - 1] == ' ' || v[len - 1] == '\t' || v[len - 1] == '\r'))
        len--;
    return v && len == 2 && strncasecmp(v, "No", 2) == 0;
}

/* RFC 8689 4.2.1: a REQUIRETLS message goes by MX only when the MX answer
 * was DNSSEC-validated or an enforced MTA-STS policy vouches for the hosts. */
static bool
requiretls_mx_fails(struct dest *d, bool secure)
{
    if (!d->requiretls || secure || (d->tls == TLS_MTA_STS && d->sts.mode == STS_ENFORCE))
        return false;
    char reply[800];
    d->resolving = false;
    reply_line(reply, sizeof(reply), R_REQUIRETLS_FAILED, d->host,
               "its MX records are not DNSSEC-signed and no MTA-STS policy is enforced");
    log_info("%s", reply);
    job_queue_fail(d, FATE_PERM, reply);
    return true;
}

static void
resolved(struct dest *d, struct addr_entry *addrs, size_t n)
{
    /* RFC 5321 5.1: when this host is one of the MX hosts, only the ones
     * more preferred than itself are left (a next hop: none is). */
    unsigned self_pref = UINT_MAX;
    size_t self = n;
    for (size_t i = 0; i < n; i++)
        if (addrs[i].pref < self_pref && addr_is_self(d->q->cfg, &addrs[i].ss)) {
            self_pref = addrs[i].pref;
            self = i;
        }
    if (self < n) {
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            if (addrs[i].pref < self_pref)
                addrs[k++] = addrs[i];
        if (k == 0) {
            char hop[400], ip[64];
            uint16_t port;
            sockaddr_str((struct sockaddr *)&addrs[self].ss, ip, sizeof(ip), &port);
            snprintf(hop, sizeof(hop), "%s[%s]:%u", addrs[self].host, ip, port);
            free(addrs);
            /* the old addresses go too: their TLSA records were just freed */
            free(d->addrs);
            d->addrs = NULL;
            d->naddrs = 0;
            loops_back(d, hop);
            return;
        }
        n = k;
    }
    free(d->addrs);
    d->addrs = addrs;
    d->naddrs = n;
    d->resolved_at = time_mono();
    d->resolving = false;
    dest_dispatch(d);
}

static void
mx_addr_done(void *arg, enum dns_status st, struct sockaddr_storage *a, size_t n, size_t idx,
             const char *host, unsigned pref, struct dane_host *dane)
{
    struct mx_lookup *ml = arg;
    ml->dane[idx] = dane;
    if (st == DNS_OK) {
        ml->found[idx] = xcalloc(n, sizeof(struct addr_entry));
        for (size_t i = 0; i < n; i++) {
            ml->found[idx][i].ss = a[i];
            ml->found[idx][i].pref = pref;
            ml->found[idx][i].dane = dane;
            str_copy(ml->found[idx][i].host, host, sizeof(ml->found[idx][i].host));
        }
        ml->nfound[idx] = n;
    } else if (st == DNS_TEMPFAIL) {
        ml->tempfail = true;
    }
    if (--ml->pending > 0)
        return;
    size_t total = 0;
    for (size_t i = 0; i < MAX_MX; i++)
        total += ml->nfound[i];
    struct dest *d = ml->d;
    if (total == 0) {
        for (size_t i = 0; i < MAX_MX; i++)
            dane_host_free(&ml->dane[i]);
        d->resolving = false;
        char reply[512];
        reply_line(reply, sizeof(reply), R_DNS_LOOKUP_FAILED, d->host, NULL);
        job_queue_fail(d, FATE_TEMP, reply);
    } else {
        struct addr_entry *all = xcalloc(total, sizeof(*all));
        size_t k = 0;
        for (size_t i = 0; i < MAX_MX; i++) {
            for (size_t j = 0; j < ml->nfound[i]; j++)
                all[k++] = ml->found[i][j];
            free(ml->found[i]);
        }
        dest_set_dane(d, ml->dane, MAX_MX);
        resolved(d, all, total);
    }
    free(ml);
}

/* One callback per MX slot; the slot index is carried in a small box. */
struct mx_slot {
    struct mx_lookup *ml;
    size_t idx;
    unsigned pref;
    char host[256];
    struct sockaddr_storage a[32];  /* kept while its TLSA is looked up */
    size_t n;
};

static void
mx_slot_dane_done(void *arg, struct dane_host *h)
{
    struct mx_slot *s = arg;
    mx_addr_done(s->ml, DNS_OK, s->a, s->n, s->idx, s->host, s->pref, h);
    free(s);
}

static void
mx_slot_done(void *arg, enum dns_status st, struct sockaddr_storage *a, size_t n, bool secure)
{
    struct mx_slot *s = arg;
    struct dest *d = s->ml->d;
    if (st == DNS_OK && dane_wanted(d, s->ml->mx_secure && secure)) {
        s->n = n < 32 ? n : 32;
        memcpy(s->a, a, s->n * sizeof(*a));
        if (dane_lookup(d->q, s->host, d->port, mx_slot_dane_done, s) == 0)
            return;
    }
    mx_addr_done(s->ml, st, a, n, s->idx, s->host, s->pref, NULL);
    free(s);
}

static void
mx_done(void *arg, enum dns_status st, struct dns_mx *mx, size_t n, bool secure)
{
    struct dest *d = arg;
    char reply[512];
    if (st == DNS_NXDOMAIN) {
        d->resolving = false;
        reply_line(reply, sizeof(reply), R_DOMAIN_NOT_FOUND, d->host, NULL);
        job_queue_fail(d, FATE_PERM, reply);
        return;
    }
    if (st == DNS_TEMPFAIL) {
        d->resolving = false;
        reply_line(reply, sizeof(reply), R_DNS_LOOKUP_FAILED, d->host, NULL);
        job_queue_fail(d, FATE_TEMP, reply);
        return;
    }
    if (requiretls_mx_fails(d, secure))
        return;
    if (d->tls == TLS_DANE && !secure) {    /* RFC 7672 2.2.1: nothing to trust */
        d->resolving = false;
        reply_line(reply, sizeof(reply), R_DANE_REQUIRED, d->host,
                   "its MX records are not DNSSEC-signed");
        log_info("%s", reply);
        job_queue_fail(d, FATE_TEMP, reply);
        return;
    }
    struct dns_mx implicit;
    if (st == DNS_NODATA || n == 0) {   /* no MX: the domain itself (RFC 5321 5.1) */
        implicit.pref = 0;
        str_copy(implicit.host, d->host, sizeof(implicit.host));
        mx = &implicit;
        n = 1;
    } else if (n == 1 && strcmp(mx[0].host, ".") == 0) {   /* null MX, RFC 7505 */
        d->resolving = false;
        reply_line(reply, sizeof(reply), R_NULL_MX, d->host, NULL);
        job_queue_fail(d, FATE_PERM, reply);
        return;
    }
    /* MTA-STS (RFC 8461 4.1): enforce delivers only to the MX hosts the
     * policy names; testing says so in the log and goes on */
    if (d->tls == TLS_MTA_STS && d->sts.mode != STS_NONE) {
        size_t k = 0;
        bool enforce = d->sts.mode == STS_ENFORCE;
        for (size_t i = 0; i < n; i++) {
            if (mta_sts_mx_match(&d->sts, mx[i].host)) {
                mx[enforce ? k++ : i] = mx[i];
                continue;
            }
            tlsrpt_record(d->q, d->host, "sts", "validation-failure", mx[i].host, "");
            if (!enforce)
                log_info("MTA-STS testing: MX %s of %s is not in its policy", mx[i].host,
                         d->host);
        }
        if (d->sts.mode == STS_ENFORCE) {
            if (k == 0) {
                d->resolving = false;
                reply_line(reply, sizeof(reply), R_STS_NO_MX, d->host, d->sts.id);
                job_queue_fail(d, FATE_TEMP, reply);
                return;
            }
            n = k;
        }
    }
    /* this gateway by name among the MX hosts: the more preferred only */
    for (size_t i = 0; i < n; i++) {
        if (!str_ieq(mx[i].host, d->q->cfg->hostname))
            continue;
        size_t k = 0;
        while (k < n && mx[k].pref < mx[i].pref)
            k++;
        if (k == 0) {
            loops_back(d, mx[i].host);
            return;
        }
        n = k;
        break;
    }
    if (n > MAX_MX)
        n = MAX_MX;
    struct mx_lookup *ml = xcalloc(1, sizeof(*ml));
    ml->d = d;
    ml->pending = (int)n;
    ml->mx_secure = secure;
    for (size_t i = 0; i < n; i++) {
        struct mx_slot *s = xcalloc(1, sizeof(*s));
        s->ml = ml;
        s->idx = i;
        s->pref = mx[i].pref;
        str_copy(s->host, mx[i].host, sizeof(s->host));
        if (resolver_addrs(d->q->res, mx[i].host, d->port, mx_slot_done, s) < 0) {
            free(s);
            mx_addr_done(ml, DNS_TEMPFAIL, NULL, 0, i, "", 0, NULL);
        }
    }
}

struct relay_lookup {
    struct dest *d;
    struct sockaddr_storage a[32];
    size_t n;
};

static void
relay_resolved(struct dest *d, struct sockaddr_storage *a, size_t n, struct dane_host *dane)
{
    struct addr_entry *all = xcalloc(n, sizeof(*all));
    for (size_t i = 0; i < n; i++) {
        all[i].ss = a[i];
        all[i].dane = dane;
        str_copy(all[i].host, d->host, sizeof(all[i].host));
    }
    dest_set_dane(d, &dane, 1);
    resolved(d, all, n);
}

static void
relay_dane_done(void *arg, struct dane_host *h)
{
    struct relay_lookup *rl = arg;
    relay_resolved(rl->d, rl->a, rl->n, h);
    free(rl);
}

static void
relay_done(void *arg, enum dns_status st, struct sockaddr_storage *a, size_t n, bool secure)
{
    struct dest *d = arg;
    if (st == DNS_OK && n > 0 && dane_wanted(d, secure)) {
        /* a relay host by name, its address signed: its TLSA too */
        struct relay_lookup *rl = xcalloc(1, sizeof(*rl));
        rl->d = d;
        rl->n = n < 32 ? n : 32;
        memcpy(rl->a, a, rl->n * sizeof(*a));
        if (dane_lookup(d->q, d->host, d->port, relay_dane_done, rl) == 0)
            return;
        free(rl);
    }
    if (st != DNS_OK || n == 0) {
        d->resolving = false;
        char reply[512];
        reply_line(reply, sizeof(reply), R_RELAY_UNRESOLVED, d->host, NULL);
        job_queue_fail(d, FATE_TEMP, reply);
        return;
    }
    relay_resolved(d, a, n, NULL);
}

static void
dest_resolve(struct dest *d)
{
    if (d->resolving)
        return;
    if (d->is_mx && d->tls == TLS_MTA_STS && !mta_sts_ready(d))
        return;                 /* the dispatch event comes when it is known */
    d->resolving = true;
    int r = d->is_mx ? resolver_mx(d->q->res, d->host, mx_done, d)
                     : resolver_addrs(d->q->res, d->host, d->port, relay_done, d);
    if (r < 0) {
        d->resolving = false;
        char reply[64];
        reply_line(reply, sizeof(reply), R_DNS_ERROR, NULL, NULL);
        job_queue_fail(d, FATE_TEMP, reply);
    }
}

/* job.c: a connection slot came free while jobs wait here. */
static void
on_dispatch(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    dest_dispatch(arg);
}

void
dest_enqueue(struct qmgr *q, const char *rcpt_domain, struct job *j)
{
    struct conf_route r;
    conf_route(q->cfg, rcpt_domain, &r);
    char key[640], host[256];
    uint16_t port = (uint16_t)q->cfg->queue.mx_port;
    bool is_mx = true;
    if (r.relay_to[0]) {
        if (hostport_split(r.relay_to, host, sizeof(host), &port) < 0)
            str_copy(host, r.relay_to, sizeof(host));
        is_mx = false;
    } else {
        str_copy(host, rcpt_domain, sizeof(host));
        for (char *p = host; *p; p++)
            if (*p >= 'A' && *p <= 'Z')
                *p = (char)(*p + 32);
    }
    /* RFC 8689: REQUIRETLS, or "TLS-Required: No", a next hop of its own */
    struct qmsg *msg = j->msg;
    bool requiretls = msg->m.requiretls;
    bool tls_optional = !requiretls && r.tls != TLS_NONE && tls_required_no(msg);
    if (tls_optional)
        r.tls = TLS_MAY;
    /* one destination per next hop and the way it is spoken to */
    snprintf(key, sizeof(key), "%s:%s tls=%d auth=%s%s%s", is_mx ? "mx" : "relay",
             is_mx ? host : r.relay_to, (int)r.tls, r.auth_user,
             requiretls ? " requiretls" : "", tls_optional ? " tls-required-no" : "");
    struct dest *d;
    for (d = q->dests; d; d = d->next)
        if (strcmp(d->key, key) == 0)
            break;
    if (d == NULL) {
        d = xcalloc(1, sizeof(*d));
        d->q = q;
        d->ev_dispatch = event_new(q->base, -1, 0, on_dispatch, d);
        str_copy(d->key, key, sizeof(d->key));
        str_copy(d->host, host, sizeof(d->host));
        d->port = port;
        d->is_mx = is_mx;
        d->tls = r.tls;
        d->requiretls = requiretls;
        d->tls_optional = tls_optional;
        str_copy(d->auth_user, r.auth_user, sizeof(d->auth_user));
        str_copy(d->auth_password, r.auth_password, sizeof(d->auth_password));
        d->next = q->dests;
        q->dests = d;
    }
    job_queue_add(d, j);
    dest_dispatch(d);
}
