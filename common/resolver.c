/*
 * resolver.c -- the daemon's one DNS resolver: libunbound, asynchronous,
 * answered on the role's event loop, with a cache and a per-query deadline.
 * dns.forwarder points it at a given server (tests run their own); without
 * it unbound resolves recursively from the root. Worker threads get a
 * blocking call on the same context, so the whole role shares one cache.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <event2/event.h>
#include <unbound.h>
#include "util.h"

#define RR_A 1
#define RR_MX 15
#define RR_AAAA 28

struct resolver {
    struct event_base *base;
    struct ub_ctx *ub;
    struct event *ev;
    unsigned timeout;
    bool validates;         /* a DNSSEC trust anchor is loaded */
};

struct query;
typedef void query_done_fn(struct query *q, enum dns_status st, struct ub_result *res);
struct query {
    struct resolver *r;
    int async_id;
    struct event *timer;
    query_done_fn *done;
    void *owner;
    bool finished;
};

static void
resolver_readable(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct resolver *r = arg;
    ub_process(r->ub);
}

struct resolver *
resolver_new(struct event_base *base, const char *forwarder, unsigned timeout_secs, char *err,
             size_t errsize)
{
    struct resolver *r = xcalloc(1, sizeof(*r));
    r->base = base;
    r->timeout = timeout_secs ? timeout_secs : 10;
    r->ub = ub_ctx_create();
    if (r->ub == NULL) {
        snprintf(err, errsize, "ub_ctx_create failed");
        free(r);
        return NULL;
    }
    int rc = ub_ctx_async(r->ub, 1);
    if (rc == 0 && forwarder && forwarder[0]) {
        char host[256], fwd[300];
        uint16_t port = 53;
        if (hostport_split(forwarder, host, sizeof(host), &port) < 0)
            str_copy(host, forwarder, sizeof(host));
        snprintf(fwd, sizeof(fwd), "%s@%u", host, port);
        rc = ub_ctx_set_option(r->ub, "do-not-query-localhost:", "no");
        /* every query goes to the forwarder, the reverse zones of private
         * and documentation addresses too: unbound answers those itself
         * with NXDOMAIN by default (RFC 6303), which is right for a
         * recursive resolver and wrong for one that forwards (a PTR an
         * internal server serves for 10/8, SPF's ptr and %{p}). */
        if (rc == 0)
            rc = ub_ctx_set_option(r->ub, "unblock-lan-zones:", "yes");
        if (rc == 0)
            rc = ub_ctx_set_option(r->ub, "insecure-lan-zones:", "yes");
        if (rc == 0)
            rc = ub_ctx_set_fwd(r->ub, fwd);
    }
    if (rc != 0) {
        snprintf(err, errsize, "unbound: %s", ub_strerror(rc));
        ub_ctx_delete(r->ub);
        free(r);
        return NULL;
    }
    if (base) {
        r->ev = event_new(base, ub_fd(r->ub), EV_READ | EV_PERSIST, resolver_readable, r);
        event_add(r->ev, NULL);
    }
    return r;
}

int
resolver_trust_anchor(struct resolver *r, const char *file, char *err, size_t errsize)
{
    /* DS or DNSKEY records in zone-file form, read before the first query
     * (unbound finalizes its context then). Answers under it come back
     * secure, or bogus (then SERVFAIL: a temporary failure to callers). */
    int rc = ub_ctx_add_ta_file(r->ub, file);
    if (rc != 0) {
        snprintf(err, errsize, "%s: %s", file, ub_strerror(rc));
        return -1;
    }
    r->validates = true;
    return 0;
}

bool
resolver_validates(const struct resolver *r)
{
    return r->validates;
}

void
resolver_free(struct resolver **rp)
{
    struct resolver *r = *rp;
    if (r == NULL)
        return;
    if (r->ev)
        event_free(r->ev);
    ub_ctx_delete(r->ub);
    free(r);
    *rp = NULL;
}

static void
query_finish(struct query *q, enum dns_status st, struct ub_result *res)
{
    if (q->finished)
        return;
    q->finished = true;
    event_free(q->timer);
    q->done(q, st, res);
    free(q);
}

static void
query_answer(void *arg, int err, struct ub_result *res)
{
    struct query *q = arg;
    enum dns_status st;
    if (err != 0 || res == NULL || res->bogus)
        st = DNS_TEMPFAIL;     /* bogus: DNSSEC says the answer is forged */
    else if (res->rcode == 3)
        st = DNS_NXDOMAIN;
    else if (res->rcode != 0)
        st = DNS_TEMPFAIL;
    else if (!res->havedata)
        st = DNS_NODATA;
    else
        st = DNS_OK;
    query_finish(q, st, res);
    if (res)
        ub_resolve_free(res);
}

static void
query_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct query *q = arg;
    ub_cancel(q->r->ub, q->async_id);
    query_finish(q, DNS_TEMPFAIL, NULL);
}

static int
query_start(struct resolver *r, const char *name, int rrtype, query_done_fn *done, void *owner)
{
    struct query *q = xcalloc(1, sizeof(*q));
    q->r = r;
    q->done = done;
    q->owner = owner;
    q->timer = evtimer_new(r->base, query_timeout, q);
    if (ub_resolve_async(r->ub, name, rrtype, 1, q, query_answer, &q->async_id) != 0) {
        event_free(q->timer);
        free(q);
        return -1;
    }
    struct timeval tv = { (time_t)r->timeout, 0 };
    evtimer_add(q->timer, &tv);
    return 0;
}

/* Wire-format name (uncompressed, as unbound hands rdata) to text. */
int
dns_wire_name(const unsigned char *p, size_t len, char *out, size_t outsize)
{
    size_t o = 0, i = 0;
    while (i < len) {
        unsigned l = p[i++];
        if (l == 0) {
            if (o == 0)
                str_copy(out, ".", outsize);
            else
                out[o - 1] = '\0';
            return 0;
        }
        if (l > 63 || i + l > len || o + l + 2 > outsize)
            return -1;
        memcpy(out + o, p + i, l);
        o += l;
        out[o++] = '.';
        i += l;
    }
    return -1;
}

size_t
dns_txt_join(const unsigned char *p, size_t len, char *out, size_t outsize)
{
    size_t o = 0, total = 0, k = 0;
    while (k < len) {
        size_t sl = p[k++];
        if (sl > len - k)
            sl = len - k;
        for (size_t j = 0; j < sl && o + 1 < outsize; j++)
            out[o++] = (char)p[k + j];
        total += sl;
        k += sl;
    }
    if (outsize)
        out[o] = '\0';
    return total;
}

/* ---- MX */
struct mx_req {
    resolver_mx_cb *cb;
    void *arg;
};

static int
mx_cmp(const void *a, const void *b)
{
    const struct dns_mx *x = a, *y = b;
    return (int)x->pref - (int)y->pref;
}

static void
mx_done(struct query *q, enum dns_status st, struct ub_result *res)
{
    struct mx_req *req = q->owner;
    struct dns_mx *mx = NULL;
    size_t n = 0;
    if (st == DNS_OK) {
        size_t cnt = 0;
        while (res->data[cnt])
            cnt++;
        mx = xcalloc(cnt ? cnt : 1, sizeof(*mx));
        for (size_t i = 0; i < cnt; i++) {
            const unsigned char *d = (const unsigned char *)res->data[i];
            size_t l = (size_t)res->len[i];
            if (l < 3)
                continue;
            mx[n].pref = (unsigned)d[0] << 8 | d[1];
            if (dns_wire_name(d + 2, l - 2, mx[n].host, sizeof(mx[n].host)) == 0)
                n++;
        }
        qsort(mx, n, sizeof(*mx), mx_cmp);
        if (n == 0)
            st = DNS_NODATA;
    }
    req->cb(req->arg, st, mx, n, res != NULL && res->secure);
    free(mx);
    free(req);
}

int
resolver_mx(struct resolver *r, const char *domain, resolver_mx_cb *cb, void *arg)
{
    struct mx_req *req = xcalloc(1, sizeof(*req));
    req->cb = cb;
    req->arg = arg;
    if (query_start(r, domain, RR_MX, mx_done, req) < 0) {
        free(req);
        return -1;
    }
    return 0;
}

/* ---- A and AAAA, in parallel; IPv4 results first. */
struct addr_req {
    resolver_addr_cb *cb;
    void *arg;
    uint16_t port;
    int pending;
    enum dns_status st4, st6;
    bool sec4, sec6;
    struct sockaddr_storage a4[16], a6[16];
    size_t n4, n6;
};

static void
addr_done(struct query *q, enum dns_status st, struct ub_result *res, bool v6)
{
    struct addr_req *req = q->owner;
    if (st == DNS_OK) {
        for (size_t i = 0; res->data[i]; i++) {
            struct sockaddr_storage ss;
            memset(&ss, 0, sizeof(ss));
            if (!v6 && res->len[i] == 4 && req->n4 < 16) {
                struct sockaddr_in *in = (struct sockaddr_in *)&ss;
                in->sin_family = AF_INET;
                in->sin_port = htons(req->port);
                memcpy(&in->sin_addr, res->data[i], 4);
                req->a4[req->n4++] = ss;
            } else if (v6 && res->len[i] == 16 && req->n6 < 16) {
                struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
                in6->sin6_family = AF_INET6;
                in6->sin6_port = htons(req->port);
                memcpy(&in6->sin6_addr, res->data[i], 16);
                req->a6[req->n6++] = ss;
            }
        }
    }
    bool sec = res != NULL && res->secure;
    if (v6) {
        req->st6 = st;
        req->sec6 = sec;
    } else {
        req->st4 = st;
        req->sec4 = sec;
    }
    if (--req->pending > 0)
        return;
    struct sockaddr_storage all[32];
    size_t n = 0;
    for (size_t i = 0; i < req->n4; i++)
        all[n++] = req->a4[i];
    for (size_t i = 0; i < req->n6; i++)
        all[n++] = req->a6[i];
    enum dns_status fin;
    if (n > 0)
        fin = DNS_OK;
    else if (req->st4 == DNS_TEMPFAIL || req->st6 == DNS_TEMPFAIL)
        fin = DNS_TEMPFAIL;
    else if (req->st4 == DNS_NXDOMAIN || req->st6 == DNS_NXDOMAIN)
        fin = DNS_NXDOMAIN;
    else
        fin = DNS_NODATA;
    /* secure: both answers validated (a missing AAAA securely denied) */
    req->cb(req->arg, fin, all, n, req->sec4 && req->sec6);
    free(req);
}

static void
addr4_done(struct query *q, enum dns_status st, struct ub_result *res)
{
    addr_done(q, st, res, false);
}

static void
addr6_done(struct query *q, enum dns_status st, struct ub_result *res)
{
    addr_done(q, st, res, true);
}

struct literal_req {
    resolver_addr_cb *cb;
    void *arg;
    struct sockaddr_storage ss;
};

static void
literal_fire(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct literal_req *lr = arg;
    lr->cb(lr->arg, DNS_OK, &lr->ss, 1, false);
    free(lr);
}

int
resolver_addrs(struct resolver *r, const char *host, uint16_t port, resolver_addr_cb *cb, void *arg)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    if (sockaddr_parse(host, port, &ss, &sl) == 0) {
        /* An address literal: still answer from the loop, never re-entrantly. */
        struct literal_req *lr = xcalloc(1, sizeof(*lr));
        lr->cb = cb;
        lr->arg = arg;
        lr->ss = ss;
        return event_base_once(r->base, -1, EV_TIMEOUT, literal_fire, lr, NULL);
    }
    struct addr_req *req = xcalloc(1, sizeof(*req));
    req->cb = cb;
    req->arg = arg;
    req->port = port;
    req->pending = 2;
    if (query_start(r, host, RR_A, addr4_done, req) < 0) {
        free(req);
        return -1;
    }
    if (query_start(r, host, RR_AAAA, addr6_done, req) < 0) {
        req->st6 = DNS_TEMPFAIL;
        req->pending--;     /* the A answer completes the request */
    }
    return 0;
}

/* What an unbound result says, in a dns_answer (which points into res). */
static void
answer_fill(struct dns_answer *a, struct ub_result *res)
{
    if (res->bogus)
        a->status = DNS_TEMPFAIL;
    else if (res->rcode == 3)
        a->status = DNS_NXDOMAIN;
    else if (res->rcode != 0)
        a->status = DNS_TEMPFAIL;
    else if (!res->havedata)
        a->status = DNS_NODATA;
    else
        a->status = DNS_OK;
    if (a->status == DNS_OK) {
        while (res->data[a->n])
            a->n++;
        a->rdata = (const unsigned char *const *)res->data;
        a->rdlen = res->len;
    }
    a->ttl = res->ttl > 0 ? (unsigned)res->ttl : 0;
    a->packet = res->answer_packet;
    a->packet_len = res->answer_len > 0 ? (size_t)res->answer_len : 0;
    a->secure = res->secure != 0;
    a->bogus = res->bogus != 0;
    a->why_bogus = res->why_bogus;
}

/* ---- any record type, answered on the loop */
struct any_req {
    resolver_answer_cb *cb;
    void *arg;
};

static void
any_done(struct query *q, enum dns_status st, struct ub_result *res)
{
    struct any_req *req = q->owner;
    struct dns_answer a;
    memset(&a, 0, sizeof(a));
    a.status = st;
    if (res != NULL && st != DNS_TEMPFAIL)
        answer_fill(&a, res);
    else if (res != NULL) {
        a.bogus = res->bogus != 0;
        a.why_bogus = res->why_bogus;
    }
    req->cb(req->arg, &a);
    free(req);
}

int
resolver_query(struct resolver *r, const char *name, int rrtype, resolver_answer_cb *cb, void *arg)
{
    struct any_req *req = xcalloc(1, sizeof(*req));
    req->cb = cb;
    req->arg = arg;
    if (query_start(r, name, rrtype, any_done, req) < 0) {
        free(req);
        return -1;
    }
    return 0;
}

/* ---- blocking lookups for worker threads */

/* Shared by the waiting worker and the loop's callback; whoever is last
 * frees it. A worker that gives up marks it abandoned and cancels; if the
 * cancel fails the answer is already on its way and the callback frees. */
struct sync_query {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done, abandoned;
    int err;
    struct ub_result *res;
};

static void
sync_query_free(struct sync_query *q)
{
    pthread_mutex_destroy(&q->lock);
    pthread_cond_destroy(&q->cond);
    free(q);
}

static void
sync_answer(void *arg, int err, struct ub_result *res)
{
    struct sync_query *q = arg;
    pthread_mutex_lock(&q->lock);
    if (q->abandoned) {
        pthread_mutex_unlock(&q->lock);
        if (res)
            ub_resolve_free(res);
        sync_query_free(q);
        return;
    }
    q->err = err;
    q->res = res;
    q->done = true;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
}

/* A query sent for a worker thread: NULL when it could not be sent. */
static struct sync_query *
lookup_submit(struct resolver *r, const char *name, int rrtype, int *id)
{
    struct sync_query *q = xcalloc(1, sizeof(*q));
    pthread_mutex_init(&q->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&q->cond, &ca);
    pthread_condattr_destroy(&ca);
    if (ub_resolve_async(r->ub, name, rrtype, 1, q, sync_answer, id) != 0) {
        sync_query_free(q);
        return NULL;
    }
    return q;
}

/* Wait for q until the deadline and fill in *a (TEMPFAIL on timeout). */
static void
lookup_finish(struct resolver *r, struct sync_query *q, int id, const struct timespec *until,
              struct dns_answer *a)
{
    memset(a, 0, sizeof(*a));
    a->status = DNS_TEMPFAIL;
    if (q == NULL)
        return;
    /* without an event loop (a command line), the caller's thread takes
     * the answers off unbound's pipe itself */
    while (r->base == NULL && !q->done) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long ms = (long)(until->tv_sec - now.tv_sec) * 1000 + (until->tv_nsec - now.tv_nsec) / 1000000;
        if (ms <= 0)
            break;
        struct pollfd p = { ub_fd(r->ub), POLLIN, 0 };
        if (poll(&p, 1, (int)ms) > 0)
            ub_process(r->ub);
    }
    pthread_mutex_lock(&q->lock);
    while (!q->done && r->base)
        if (pthread_cond_timedwait(&q->cond, &q->lock, until) == ETIMEDOUT)
            break;
    if (!q->done) {
        q->abandoned = true;
        pthread_mutex_unlock(&q->lock);
        if (ub_cancel(r->ub, id) == 0)
            sync_query_free(q);     /* the callback will never run */
        return;
    }
    pthread_mutex_unlock(&q->lock);
    struct ub_result *res = q->res;
    int err = q->err;
    sync_query_free(q);
    if (err != 0 || res == NULL) {
        if (res)
            ub_resolve_free(res);
        return;
    }
    answer_fill(a, res);
    a->priv = res;
}

static void
deadline(const struct resolver *r, struct timespec *until)
{
    clock_gettime(CLOCK_MONOTONIC, until);
    until->tv_sec += r->timeout;
}

void
resolver_lookup(struct resolver *r, const char *name, int rrtype, struct dns_answer *a)
{
    int id = 0;
    struct sync_query *q = lookup_submit(r, name, rrtype, &id);
    struct timespec until;
    deadline(r, &until);
    lookup_finish(r, q, id, &until, a);
}

void
resolver_lookup_many(struct resolver *r, const char *const *names, size_t n, int rrtype,
                     struct dns_answer *answers)
{
    struct sync_query **qs = xcalloc(n ? n : 1, sizeof(*qs));
    int *ids = xcalloc(n ? n : 1, sizeof(int));
    for (size_t i = 0; i < n; i++)
        qs[i] = lookup_submit(r, names[i], rrtype, &ids[i]);
    struct timespec until;
    deadline(r, &until);
    for (size_t i = 0; i < n; i++)
        lookup_finish(r, qs[i], ids[i], &until, &answers[i]);
    free(qs);
    free(ids);
}

void
resolver_answer_free(struct dns_answer *a)
{
    if (a->priv)
        ub_resolve_free(a->priv);
    memset(a, 0, sizeof(*a));
}

int
dns_reverse_name(const char *addr, char *out, size_t size)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, addr, &a4) == 1) {
        const unsigned char *b = (const unsigned char *)&a4;
        snprintf(out, size, "%u.%u.%u.%u", b[3], b[2], b[1], b[0]);
        return 0;
    }
    if (inet_pton(AF_INET6, addr, &a6) == 1) {
        const unsigned char *b = a6.s6_addr;
        if (IN6_IS_ADDR_V4MAPPED(&a6)) {
            snprintf(out, size, "%u.%u.%u.%u", b[15], b[14], b[13], b[12]);
            return 0;
        }
        size_t o = 0;
        for (int i = 15; i >= 0 && o + 5 < size; i--)
            o += (size_t)snprintf(out + o, size - o, "%x.%x.", b[i] & 0xf, b[i] >> 4);
        if (o)
            out[o - 1] = '\0';
        return 0;
    }
    return -1;
}
