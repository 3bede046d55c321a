/*
 * smtp_client.c -- one outbound SMTP connection of the queue role: connect
 * (trying the destination's addresses in order), EHLO, STARTTLS as the
 * destination's TLS policy says (none, may, encrypt, verify), AUTH to the
 * next hop over TLS only, then transactions with PIPELINING, one job after another on
 * the same connection until it idles out.
 *
 * One room though long: one connection's state machine, each step the
 * next state of the same conversation.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include "../common/mail.h"
#include "delivery_private.h"

#define MAX_REPLY_LINE 2048
#define MAX_REPLY_LINES 100

enum cstate { C_CONNECTING, C_GREETING, C_EHLO, C_HELO, C_STARTTLS, C_TLS, C_AUTH,
              C_AUTH_USER, C_AUTH_PASS, C_READY, C_TX, C_RSET, C_QUIT };
enum expect { E_MAIL, E_RCPT, E_DATA, E_FINAL, E_DOT };

struct conn {
    struct dest *d;
    struct qmgr *q;
    struct bufferevent *bev;
    size_t ai;
    enum cstate st;
    bool ready_once, tls, pipelining, cap_8bit, cap_utf8, cap_starttls, cap_size, cap_dsn;
    bool cap_auth_plain, cap_auth_login, authed;
    bool cap_requiretls;
    bool requiretls_unmet;  /* a next hop failed REQUIRETLS (RFC 8689 4.2.1) */
    char remote[320];
    char reply[1024];
    size_t reply_len;
    unsigned reply_lines;
    struct job *job;
    enum expect exp[4 + 1024];
    size_t exp_head, exp_n;
    size_t rcpt_next;       /* next RCPT to send (no pipelining) */
    size_t rcpt_reply;      /* next RCPT reply to read */
    bool mail_ok;
    size_t accepted;
    bool *acc;
    bool tx_dirty;          /* RSET before the next transaction */
    struct event *idle_timer;
    struct conn *idle_next;
    unsigned msgs;
    bool *alive;            /* cleared when the connection is freed */
};

static void conn_read_cb(struct bufferevent *bev, void *arg);
static void conn_event_cb(struct bufferevent *bev, short what, void *arg);
static void conn_try_next(struct conn *c, const char *why);
static void conn_ready(struct conn *c);
static void conn_report(const struct conn *c, const char *policy, const char *result);

struct conn *
conn_idle_next(struct conn *c)
{
    return c->idle_next;
}

void
conn_set_idle_next(struct conn *c, struct conn *next)
{
    c->idle_next = next;
}

static void
conn_send(struct conn *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    evbuffer_add_vprintf(bufferevent_get_output(c->bev), fmt, ap);
    va_end(ap);
}

static void
set_timeout(struct conn *c, unsigned secs)
{
    struct timeval tv = { (time_t)secs, 0 };
    bufferevent_set_timeouts(c->bev, &tv, &tv);
}

static void
idle_remove(struct conn *c)
{
    for (struct conn **pp = &c->d->idle; *pp; pp = &(*pp)->idle_next)
        if (*pp == c) {
            *pp = c->idle_next;
            break;
        }
    c->idle_next = NULL;
    if (c->idle_timer)
        evtimer_del(c->idle_timer);
}

static void
conn_fail_rest(struct conn *c, enum rcpt_fate fate, const char *reply)
{
    struct job *j = c->job;
    c->job = NULL;
    if (j == NULL)
        return;
    job_fail(j, fate, reply, c->remote);    /* the recipients still pending */
    free(c->acc);
    c->acc = NULL;
}

/* The connection is finished: free it and give its slot back (job.c). */
static void
conn_free(struct conn *c, bool connect_failed, const char *why)
{
    struct dest *d = c->d;
    idle_remove(c);
    if (c->job) {
        char reply[800];
        reply_line(reply, sizeof(reply), R_CONN_LOST, c->remote, why);
        conn_fail_rest(c, FATE_TEMP, reply);
    }
    if (!c->ready_once)
        d->pending_conns--;
    if (c->bev)
        bufferevent_free(c->bev);
    if (c->idle_timer)
        event_free(c->idle_timer);
    free(c->acc);
    if (c->alive)
        *c->alive = false;
    free(c);
    job_slot_free(d, connect_failed, why);
}

static void
conn_connect(struct conn *c)
{
    struct dest *d = c->d;
    struct addr_entry *a = &d->addrs[c->ai];
    char ip[64];
    uint16_t port;
    sockaddr_str((struct sockaddr *)&a->ss, ip, sizeof(ip), &port);
    snprintf(c->remote, sizeof(c->remote), "%s[%s]:%u", a->host, ip, port);
    if (a->dane && a->dane->state == DANE_FAILED) {
        /* RFC 7672 2.2: a host whose TLSA records cannot be had is not
         * used, neither in the clear nor with TLS it cannot check */
        char why[800];
        snprintf(why, sizeof(why), "DANE: %s: %s; not delivering to %s", c->remote, a->dane->why,
                 a->host);
        conn_report(c, "tlsa", "dnssec-invalid");
        conn_try_next(c, why);
        return;
    }
    if (c->d->tls == TLS_DANE && (a->dane == NULL || a->dane->state != DANE_AUTH)) {
        /* tls = dane: usable TLSA records, DNSSEC-validated, or not this
         * host (neither the clear nor TLS nothing checks) */
        char why[800], rest[600];
        if (a->dane == NULL)
            snprintf(rest, sizeof(rest), "the address of %s is not DNSSEC-signed", a->host);
        else
            snprintf(rest, sizeof(rest), "%s TLSA records at %s", a->dane->state == DANE_ENCRYPT
                     ? "no usable" : "no DNSSEC-signed", a->dane->name);
        reply_line(why, sizeof(why), R_DANE_REQUIRED, c->remote, rest);
        conn_report(c, "no-policy-found", "dane-required");    /* RFC 8460 4.3.1 */
        conn_try_next(c, why);
        return;
    }
    c->bev = bufferevent_socket_new(c->q->base, -1, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    bufferevent_setcb(c->bev, conn_read_cb, NULL, conn_event_cb, c);
    set_timeout(c, c->q->cfg->queue.connect_timeout);
    c->st = C_CONNECTING;
    c->tls = c->authed = false;
    socklen_t len = a->ss.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&a->ss, (int)len) < 0) {
        char why[400];
        snprintf(why, sizeof(why), "connect to %s: %s", c->remote, strerror(errno));
        conn_try_next(c, why);
        return;
    }
    /* No Nagle: the end of a message body must not wait for a delayed ACK
     * (40 ms per message per connection otherwise). */
    int one = 1;
    setsockopt(bufferevent_getfd(c->bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

/* Before any job was given: the next address, or give up. */
static void
conn_try_next(struct conn *c, const char *why)
{
    log_info("%s", why);
    if (c->bev) {
        bufferevent_free(c->bev);
        c->bev = NULL;
    }
    if (++c->ai < c->d->naddrs && !c->q->stopping) {
        conn_connect(c);
        return;
    }
    if (c->requiretls_unmet) {
        /* RFC 8689 4.2.1: not relayed, returned as undeliverable */
        char reply[1400];
        reply_line(reply, sizeof(reply), R_REQUIRETLS_FAILED, c->d->host, why);
        job_queue_fail(c->d, FATE_PERM, reply);
    }
    conn_free(c, true, why);
}

/* TLS as required was not had with this next hop: the next address; for
 * REQUIRETLS mail, when none is left, the mail is returned. */
static void
conn_tls_failed(struct conn *c, const char *why)
{
    if (c->d->requiretls)
        c->requiretls_unmet = true;
    conn_try_next(c, why);
}

void
conn_open(struct dest *d)
{
    struct conn *c = xcalloc(1, sizeof(*c));
    c->d = d;
    c->q = d->q;
    d->nconn++;
    d->pending_conns++;
    d->q->nconn++;
    conn_connect(c);
}

static void
idle_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct conn *c = arg;
    idle_remove(c);
    c->st = C_QUIT;
    conn_send(c, "QUIT\r\n");
    set_timeout(c, 5);
}

static void
conn_ready(struct conn *c)
{
    if (!c->ready_once) {
        c->ready_once = true;
        c->d->pending_conns--;
    }
    c->st = C_READY;
    set_timeout(c, c->q->cfg->queue.reply_timeout);
    struct job *j = c->q->stopping ? NULL : job_queue_take(c->d);
    if (j) {
        conn_give_job(c, j);
        return;
    }
    c->idle_next = c->d->idle;
    c->d->idle = c;
    if (c->idle_timer == NULL)
        c->idle_timer = evtimer_new(c->q->base, idle_timeout, c);
    struct timeval tv = { (time_t)c->q->cfg->queue.idle_timeout, 0 };
    evtimer_add(c->idle_timer, &tv);
}

static void
expect_push(struct conn *c, enum expect e)
{
    c->exp[(c->exp_head + c->exp_n++) % (sizeof(c->exp) / sizeof(c->exp[0]))] = e;
}

static enum expect
expect_pop(struct conn *c)
{
    enum expect e = c->exp[c->exp_head];
    c->exp_head = (c->exp_head + 1) % (sizeof(c->exp) / sizeof(c->exp[0]));
    c->exp_n--;
    return e;
}

/* RCPT TO, with the recipient's DSN parameters (RFC 3461) when the next
 * hop offered DSN. */
static void
send_rcpt(struct conn *c, const struct qf_rcpt *r)
{
    bool dsn = c->cap_dsn;
    conn_send(c, "RCPT TO:<%s>%s%s%s%s\r\n", r->addr, dsn && r->notify ? " NOTIFY=" : "",
              dsn && r->notify ? r->notify : "", dsn && r->orcpt ? " ORCPT=" : "",
              dsn && r->orcpt ? r->orcpt : "");
}

void
conn_give_job(struct conn *c, struct job *j)
{
    struct queue_msg *m = &j->msg->m;
    if (c->idle_timer)
        evtimer_del(c->idle_timer);
    c->job = j;
    c->st = C_TX;
    c->mail_ok = false;
    c->accepted = 0;
    c->rcpt_next = c->rcpt_reply = 0;
    c->exp_head = c->exp_n = 0;
    free(c->acc);
    c->acc = xcalloc(j->nrcpt ? j->nrcpt : 1, sizeof(bool));
    set_timeout(c, c->q->cfg->queue.reply_timeout);
    if (m->smtputf8 && !c->cap_utf8) {
        char reply[400];
        reply_line(reply, sizeof(reply), R_NO_SMTPUTF8, c->remote, NULL);
        conn_fail_rest(c, FATE_PERM, reply);
        conn_ready(c);
        return;
    }
    if (c->tx_dirty) {
        conn_send(c, "RSET\r\n");
        c->tx_dirty = false;
        c->st = C_RSET;
        c->job = NULL;
        job_queue_put_back(c->d, j);    /* it waits for the RSET reply */
        return;
    }
    /* ESMTP parameters only where the EHLO reply offered them (a server
     * after HELO, or one without SIZE, may refuse them with 501). */
    char size[32] = "";
    if (c->cap_size)
        snprintf(size, sizeof(size), " SIZE=%zu", j->msg->content_len);
    conn_send(c, "MAIL FROM:<%s>%s%s%s%s", m->sender, size,
              m->body_8bit && c->cap_8bit ? " BODY=8BITMIME" : "",
              m->smtputf8 ? " SMTPUTF8" : "", m->requiretls ? " REQUIRETLS" : "");
    if (c->cap_dsn)         /* RFC 3461: the sender's DSN request goes on */
        conn_send(c, "%s%s%s", m->ret_full ? " RET=FULL" : "", m->envid ? " ENVID=" : "",
                  m->envid ? m->envid : "");
    conn_send(c, "\r\n");
    expect_push(c, E_MAIL);
    if (c->pipelining && j->nrcpt <= 1000) {
        for (size_t i = 0; i < j->nrcpt; i++) {
            send_rcpt(c, &m->rcpts[j->rcpt[i]]);
            expect_push(c, E_RCPT);
        }
        c->rcpt_next = j->nrcpt;
        conn_send(c, "DATA\r\n");
        expect_push(c, E_DATA);
    }
}

static void
send_body(struct conn *c)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    const char *p = c->job->msg->content;
    size_t n = c->job->msg->content_len;
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '.' && (i == 0 || p[i - 1] == '\n')) {
            evbuffer_add(out, p + start, i - start);
            evbuffer_add(out, ".", 1);     /* dot-stuffing, RFC 5321 4.5.2 */
            start = i;
        }
    }
    evbuffer_add(out, p + start, n - start);
    if (n < 2 || p[n - 2] != '\r' || p[n - 1] != '\n')
        evbuffer_add(out, "\r\n", 2);
    evbuffer_add(out, ".\r\n", 3);
}

static enum rcpt_fate
fate_of(unsigned code)
{
    if (code >= 200 && code < 300)
        return FATE_SENT;
    if (code >= 500 && code < 600)
        return FATE_PERM;
    return FATE_TEMP;
}

static void
tx_finish(struct conn *c, bool dirty)
{
    struct job *j = c->job;
    c->job = NULL;
    c->tx_dirty = dirty;
    c->msgs++;
    job_done(j);
    free(c->acc);
    c->acc = NULL;
    conn_ready(c);
}

static void
tx_reply(struct conn *c, unsigned code)
{
    struct job *j = c->job;
    if (c->exp_n == 0) {
        log_warn("unexpected reply from %s: %s", c->remote, c->reply);
        return;
    }
    enum expect e = expect_pop(c);
    switch (e) {
    case E_MAIL:
        c->mail_ok = code >= 200 && code < 300;
        if (!c->mail_ok) {
            for (size_t i = 0; i < j->nrcpt; i++)
                job_result(j, i, fate_of(code), c->reply, c->remote);
            if (!c->pipelining) {
                tx_finish(c, true);
                return;
            }
        } else if (!c->pipelining) {
            send_rcpt(c, &j->msg->m.rcpts[j->rcpt[0]]);
            c->rcpt_next = 1;
            expect_push(c, E_RCPT);
        }
        break;
    case E_RCPT: {
        size_t i = c->rcpt_reply++;
        if (c->mail_ok) {
            if (code >= 200 && code < 300) {
                c->acc[i] = true;
                c->accepted++;
            } else {
                job_result(j, i, fate_of(code), c->reply, c->remote);
            }
        }
        if (!c->pipelining) {
            if (c->rcpt_next < j->nrcpt) {
                send_rcpt(c, &j->msg->m.rcpts[j->rcpt[c->rcpt_next++]]);
                expect_push(c, E_RCPT);
            } else if (c->accepted == 0) {
                tx_finish(c, true);
                return;
            } else {
                conn_send(c, "DATA\r\n");
                expect_push(c, E_DATA);
            }
        }
        break;
    }
    case E_DATA:
        if (code == 354) {
            if (c->accepted > 0) {
                send_body(c);
                expect_push(c, E_FINAL);
            } else {            /* RFC 2920: nothing to send, end it */
                conn_send(c, ".\r\n");
                expect_push(c, E_DOT);
            }
            break;
        }
        if (c->mail_ok)
            for (size_t i = 0; i < j->nrcpt; i++)
                if (c->acc[i])
                    job_result(j, i, fate_of(code), c->reply, c->remote);
        tx_finish(c, true);
        return;
    case E_FINAL:
        for (size_t i = 0; i < j->nrcpt; i++)
            if (c->acc[i]) {
                job_result(j, i, fate_of(code), c->reply, c->remote);
                j->msg->dsn_passed[j->rcpt[i]] = c->cap_dsn;
            }
        tx_finish(c, code < 200 || code >= 300);
        return;
    case E_DOT:
        tx_finish(c, true);
        return;
    }
}

static const char *const policy_names[] = { "none", "may", "encrypt", "verify", "mta-sts",
                                            "dane" };

/* The DANE records of the peer, when they decide (RFC 7672): NULL else. */
static const struct dane_host *
conn_dane(const struct conn *c)
{
    const struct dane_host *h = c->d->addrs[c->ai].dane;
    return h && (h->state == DANE_AUTH || h->state == DANE_ENCRYPT) ? h : NULL;
}

/* The TLS policy of this connection: its next hop's DANE records first
 * (ahead of MTA-STS, RFC 8461 2), else its destination's, where "may"
 * after a failed handshake there means the clear. Under DANE, verify
 * means by the TLSA records, not by a CA. */
static enum tls_policy
conn_policy(const struct conn *c)
{
    const struct dane_host *h = conn_dane(c);
    if (h && (h->state == DANE_AUTH || !c->d->requiretls))
        return h->state == DANE_AUTH ? TLS_VERIFY : TLS_ENCRYPT;
    if (c->d->requiretls)       /* RFC 8689 4.2.1: authenticated, by DANE or a CA */
        return TLS_VERIFY;
    enum tls_policy p = c->d->tls;
    if (p == TLS_MTA_STS)       /* the domain's policy (dest.c fetched it) */
        p = c->d->sts.mode == STS_ENFORCE ? TLS_VERIFY : TLS_MAY;
    if (p == TLS_DANE)          /* never without DANE_AUTH (conn_connect) */
        p = TLS_VERIFY;
    if (p == TLS_MAY && (c->d->no_tls || c->q->tls == NULL))
        return TLS_NONE;
    return p;
}

/* MTA-STS testing: the certificate is checked but not enforced. */
static bool
sts_testing(const struct conn *c)
{
    return c->d->tls == TLS_MTA_STS && c->d->sts.mode == STS_TESTING && conn_dane(c) == NULL &&
           !c->d->requiretls;
}

/* TLS-RPT (RFC 8460 4.3): the outcome of this TLS attempt, by the policy
 * that applied (policy NULL: the connection's own), for a domain's MX. */
static void
conn_report(const struct conn *c, const char *policy, const char *result)
{
    if (!c->d->is_mx)
        return;
    const struct dane_host *h = conn_dane(c);
    if (policy == NULL)
        policy = h && h->state == DANE_AUTH ? "tlsa"
                 : c->d->tls == TLS_MTA_STS && c->d->sts.mode != STS_NONE ? "sts"
                 : "no-policy-found";
    char ip[64];
    uint16_t port;
    sockaddr_str((const struct sockaddr *)&c->d->addrs[c->ai].ss, ip, sizeof(ip), &port);
    tlsrpt_record(c->q, c->d->host, policy, result, c->d->addrs[c->ai].host, ip);
}

/* What requires TLS here, for the log: "DANE" or "tls = verify". */
static const char *
policy_name(const struct conn *c, char *buf, size_t size)
{
    if (conn_dane(c) && conn_dane(c)->state == DANE_AUTH)
        snprintf(buf, size, "DANE (TLSA records at %s)", conn_dane(c)->name);
    else if (c->d->requiretls)
        snprintf(buf, size, "REQUIRETLS");
    else if (conn_dane(c))
        snprintf(buf, size, "DANE (TLSA records at %s)", conn_dane(c)->name);
    else
        snprintf(buf, size, "tls = %s", policy_names[conn_policy(c)]);
    return buf;
}

static void
start_tls(struct conn *c)
{
    SSL *ssl = SSL_new(c->q->tls);
    const char *host = c->d->addrs[c->ai].host;
    struct sockaddr_storage ip;
    socklen_t iplen;
    bool literal = sockaddr_parse(host, 0, &ip, &iplen) == 0;
    if (!literal)
        SSL_set_tlsext_host_name(ssl, host);
    const struct dane_host *dh = conn_dane(c);
    if (dh && dh->state == DANE_AUTH) {
        if (dane_ssl(ssl, dh) < 0) {
            SSL_free(ssl);
            char why[800];
            snprintf(why, sizeof(why), "DANE: %s: OpenSSL took none of the TLSA records at %s",
                     c->remote, dh->name);
            conn_try_next(c, why);
            return;
        }
    } else if (conn_policy(c) == TLS_VERIFY || sts_testing(c)) {
        /* the chain up to a trusted CA, for the next hop's own name: the
         * MX host or the relay host as configured (RFC 6125, 7817) */
        if (!sts_testing(c))
            SSL_set_verify(ssl, SSL_VERIFY_PEER, NULL);
        if (literal)
            X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host);
        else
            SSL_set1_host(ssl, host);
    }
    struct bufferevent *tb = bufferevent_openssl_filter_new(
        c->q->base, c->bev, ssl, BUFFEREVENT_SSL_CONNECTING,
        BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    if (tb == NULL) {
        SSL_free(ssl);
        conn_try_next(c, "TLS setup failed");
        return;
    }
    c->bev = tb;
    c->st = C_TLS;
    bufferevent_setcb(tb, conn_read_cb, NULL, conn_event_cb, c);
    bufferevent_enable(tb, EV_READ | EV_WRITE);
    set_timeout(c, c->q->cfg->queue.connect_timeout);
}

static void
ehlo_line(struct conn *c, const char *kw)
{
    if (str_iprefix(kw, "PIPELINING"))
        c->pipelining = true;
    else if (str_iprefix(kw, "8BITMIME"))
        c->cap_8bit = true;
    else if (str_iprefix(kw, "SMTPUTF8"))
        c->cap_utf8 = true;
    else if (str_iprefix(kw, "STARTTLS"))
        c->cap_starttls = true;
    else if (str_iprefix(kw, "SIZE") && (kw[4] == '\0' || kw[4] == ' '))
        c->cap_size = true;
    else if (str_ieq(kw, "DSN"))
        c->cap_dsn = true;
    else if (str_ieq(kw, "REQUIRETLS"))
        c->cap_requiretls = true;
    else if (str_iprefix(kw, "AUTH") && (kw[4] == ' ' || kw[4] == '=')) {
        char mechs[256];
        str_copy(mechs, kw + 5, sizeof(mechs));
        for (char *save = NULL, *t = strtok_r(mechs, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
            if (str_ieq(t, "PLAIN"))
                c->cap_auth_plain = true;
            else if (str_ieq(t, "LOGIN"))
                c->cap_auth_login = true;
        }
    }
}

static void
caps_clear(struct conn *c)
{
    c->pipelining = c->cap_8bit = c->cap_utf8 = c->cap_starttls = c->cap_size = false;
    c->cap_dsn = c->cap_requiretls = false;
    c->cap_auth_plain = c->cap_auth_login = false;
}

static void
send_b64(struct conn *c, const char *prefix, const void *data, size_t len)
{
    unsigned char out[4 * ((600 + 2) / 3) + 1];
    if (len > 600)
        len = 600;          /* the config holds at most 255 + 255 */
    EVP_EncodeBlock(out, data, (int)len);
    conn_send(c, "%s%s\r\n", prefix, (const char *)out);
    OPENSSL_cleanse(out, sizeof(out));
}

/* After EHLO or HELO: STARTTLS as the policy says, then AUTH (over TLS
 * only), then ready for jobs. */
static void
after_hello(struct conn *c)
{
    char why[1200];
    enum tls_policy p = conn_policy(c);
    if (!c->tls && p != TLS_NONE) {
        if (c->cap_starttls) {
            conn_send(c, "STARTTLS\r\n");
            c->st = C_STARTTLS;
            return;
        }
        if (p >= TLS_ENCRYPT) {
            char pn[400];
            snprintf(why, sizeof(why), "%s did not offer STARTTLS, which %s requires",
                     c->remote, policy_name(c, pn, sizeof(pn)));
            conn_report(c, NULL, "starttls-not-supported");
            conn_tls_failed(c, why);
            return;
        }
    }
    if (c->d->requiretls && !c->cap_requiretls) {
        snprintf(why, sizeof(why), "%s did not offer REQUIRETLS after STARTTLS", c->remote);
        conn_tls_failed(c, why);
        return;
    }
    if (c->d->auth_user[0] && !c->authed) {
        if (!c->tls) {
            snprintf(why, sizeof(why), "%s: not sending credentials in the clear", c->remote);
            conn_try_next(c, why);
            return;
        }
        if (c->cap_auth_plain) {
            char buf[600];
            size_t ul = strlen(c->d->auth_user), pl = strlen(c->d->auth_password);
            buf[0] = '\0';
            memcpy(buf + 1, c->d->auth_user, ul);
            buf[1 + ul] = '\0';
            memcpy(buf + 2 + ul, c->d->auth_password, pl);
            send_b64(c, "AUTH PLAIN ", buf, 2 + ul + pl);
            OPENSSL_cleanse(buf, sizeof(buf));
            c->st = C_AUTH;
            return;
        }
        if (c->cap_auth_login) {
            conn_send(c, "AUTH LOGIN\r\n");
            c->st = C_AUTH_USER;
            return;
        }
        /* no AUTH offered: the next hop may know us by address */
    }
    conn_ready(c);
}

static void
handle_reply(struct conn *c, unsigned code)
{
    char why[1200];
    switch (c->st) {
    case C_GREETING:
        if (code != 220) {
            snprintf(why, sizeof(why), "%s refused to talk to me: %s", c->remote, c->reply);
            conn_try_next(c, why);
            return;
        }
        conn_send(c, "EHLO %s\r\n", c->q->cfg->hostname);
        caps_clear(c);
        c->st = C_EHLO;
        return;
    case C_EHLO:
        if (code >= 500) {
            caps_clear(c);      /* RFC 5321 without extensions */
            conn_send(c, "HELO %s\r\n", c->q->cfg->hostname);
            c->st = C_HELO;
            return;
        }
        if (code < 200 || code >= 300) {
            snprintf(why, sizeof(why), "%s said to EHLO: %s", c->remote, c->reply);
            conn_try_next(c, why);
            return;
        }
        after_hello(c);
        return;
    case C_HELO:
        if (code < 200 || code >= 300) {
            snprintf(why, sizeof(why), "%s said to HELO: %s", c->remote, c->reply);
            conn_try_next(c, why);
            return;
        }
        after_hello(c);
        return;
    case C_STARTTLS:
        if (code == 220) {
            start_tls(c);
        } else if (conn_policy(c) >= TLS_ENCRYPT) {
            char pn[400];
            snprintf(why, sizeof(why), "%s refused STARTTLS, which %s requires: %s",
                     c->remote, policy_name(c, pn, sizeof(pn)), c->reply);
            conn_report(c, NULL, "starttls-not-supported");
            conn_tls_failed(c, why);
        } else {
            c->cap_starttls = false;    /* carry on in the clear */
            after_hello(c);
        }
        return;
    case C_AUTH_USER:
    case C_AUTH_PASS:
        if (code != 334) {
            snprintf(why, sizeof(why), "%s said to AUTH LOGIN: %s", c->remote, c->reply);
            conn_try_next(c, why);
            return;
        }
        if (c->st == C_AUTH_USER)
            send_b64(c, "", c->d->auth_user, strlen(c->d->auth_user));
        else
            send_b64(c, "", c->d->auth_password, strlen(c->d->auth_password));
        c->st = c->st == C_AUTH_USER ? C_AUTH_PASS : C_AUTH;
        return;
    case C_AUTH:
        if (code != 235) {
            snprintf(why, sizeof(why), "%s said to AUTH as %s: %s", c->remote, c->d->auth_user,
                     c->reply);
            conn_try_next(c, why);
            return;
        }
        c->authed = true;
        conn_ready(c);
        return;
    case C_TX:
        tx_reply(c, code);
        return;
    case C_RSET:
        conn_ready(c);
        return;
    case C_READY:               /* e.g. 421 on an idle connection */
        idle_remove(c);
        conn_free(c, false, c->reply);
        return;
    case C_QUIT:
        conn_free(c, false, "QUIT");
        return;
    default:
        return;
    }
}

static void
conn_read_cb(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    for (;;) {
        size_t len;
        char *line = evbuffer_readln(in, &len, EVBUFFER_EOL_CRLF);
        if (line == NULL) {
            if (evbuffer_get_length(in) > MAX_REPLY_LINE) {
                conn_free(c, !c->ready_once, "reply line too long");
                return;
            }
            return;
        }
        bool ok = len >= 3 && isdigit((unsigned char)line[0]) && isdigit((unsigned char)line[1]) &&
                  isdigit((unsigned char)line[2]) && (len == 3 || line[3] == ' ' || line[3] == '-');
        if (!ok || ++c->reply_lines > MAX_REPLY_LINES) {
            free(line);
            if (c->ready_once)
                conn_free(c, false, "malformed reply");
            else
                conn_try_next(c, "malformed reply");
            return;
        }
        bool last = len == 3 || line[3] == ' ';
        if (c->st == C_EHLO && c->reply_lines > 1 && len > 4)
            ehlo_line(c, line + 4);
        /* Keep the first line with its code; add the text of later lines. */
        if (c->reply_len == 0)
            c->reply_len = (size_t)snprintf(c->reply, sizeof(c->reply), "%.*s", (int)len, line);
        else if (len > 4 && c->reply_len + 1 < sizeof(c->reply))
            c->reply_len += (size_t)snprintf(c->reply + c->reply_len, sizeof(c->reply) - c->reply_len,
                                             " %s", line + 4);
        if (c->reply_len >= sizeof(c->reply))
            c->reply_len = sizeof(c->reply) - 1;
        if (c->reply_len > 3)
            c->reply[3] = ' ';
        unsigned code = (unsigned)atoi(line);
        free(line);
        if (!last)
            continue;
        c->reply_lines = 0;
        /* handle_reply may free c, or swap its bufferevent (TLS, next
         * address): then the rest of this input is not ours to read. */
        bool alive = true;
        c->alive = &alive;
        handle_reply(c, code);
        if (!alive)
            return;
        c->alive = NULL;
        c->reply_len = 0;
        c->reply[0] = '\0';
        if (c->bev != bev)
            return;
    }
}

static void
conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct conn *c = arg;
    char why[900];
    if (what & BEV_EVENT_CONNECTED) {
        if (c->st == C_CONNECTING) {
            c->st = C_GREETING;
            set_timeout(c, c->q->cfg->queue.reply_timeout);
        } else if (c->st == C_TLS) {
            c->tls = true;
            conn_report(c, NULL, "success");
            SSL *ssl = bufferevent_openssl_get_ssl(bev);
            long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
            const struct dane_host *dh = conn_dane(c);
            if (ssl && dh && dh->state == DANE_AUTH) {
                char how[200];
                dane_describe(ssl, how, sizeof(how));
                log_info("Verified TLS connection to %s: authenticated by DANE, %s at %s",
                         c->remote, how, dh->name);
            } else if (dh) {
                log_info("TLS connection to %s: encrypted, not authenticated: no usable TLSA "
                         "record at %s", c->remote, dh->name);
            }
            if (sts_testing(c) && vr != X509_V_OK)
                log_info("MTA-STS testing: %s: certificate not valid for %s: %s; delivering "
                         "anyway", c->remote, c->d->addrs[c->ai].host,
                         X509_verify_cert_error_string(vr));
            conn_send(c, "EHLO %s\r\n", c->q->cfg->hostname);
            caps_clear(c);
            c->st = C_EHLO;
            set_timeout(c, c->q->cfg->queue.reply_timeout);
        }
        return;
    }
    if (c->st == C_TLS) {
        char detail[700] = "";
        SSL *ssl = bufferevent_openssl_get_ssl(bev);
        long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
        unsigned long e = bufferevent_get_openssl_error(bev);
        const struct dane_host *dh = conn_dane(c);
        if (vr != X509_V_OK && dh)
            snprintf(detail, sizeof(detail), ": DANE: certificate not matched by the TLSA records "
                     "at %s: %s", dh->name, X509_verify_cert_error_string(vr));
        else if (vr != X509_V_OK)
            snprintf(detail, sizeof(detail), ": certificate not valid for %s: %s",
                     c->d->addrs[c->ai].host, X509_verify_cert_error_string(vr));
        else if (e && ERR_reason_error_string(e))
            snprintf(detail, sizeof(detail), ": %s", ERR_reason_error_string(e));
        ERR_clear_error();
        conn_report(c, NULL, dh && dh->state == DANE_AUTH ? "validation-failure"
                             : vr == X509_V_ERR_HOSTNAME_MISMATCH ? "certificate-host-mismatch"
                             : vr == X509_V_ERR_CERT_HAS_EXPIRED ? "certificate-expired"
                             : vr != X509_V_OK ? "certificate-not-trusted"
                             : "validation-failure");
        /* Only under tls = may does the next try go in the clear, as RFC
         * 3207 allows; encrypt and verify defer instead. */
        if (conn_policy(c) == TLS_MAY)
            c->d->no_tls = true;
        snprintf(why, sizeof(why), "TLS handshake with %s failed%s", c->remote, detail);
        conn_tls_failed(c, why);
        return;
    }
    const char *what_s = (what & BEV_EVENT_TIMEOUT) ? "timeout"
                         : (what & BEV_EVENT_EOF) ? "connection closed"
                                                  : strerror(EVUTIL_SOCKET_ERROR());
    if (c->st == C_QUIT) {
        conn_free(c, false, "QUIT");
        return;
    }
    if (!c->ready_once) {
        snprintf(why, sizeof(why), "connect to %s: %s", c->remote, what_s);
        conn_try_next(c, why);
        return;
    }
    snprintf(why, sizeof(why), "%s", what_s);
    conn_free(c, false, why);
}
