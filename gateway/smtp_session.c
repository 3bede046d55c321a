/*
 * smtp_session.c -- one SMTP session: the RFC 5321 state machine with
 * PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES, STARTTLS, SMTPUTF8,
 * CHUNKING and AUTH PLAIN/LOGIN, the PROXY header, limits and timeouts.
 *
 * One struct smtp_session per connection and one struct smtp_tx per MAIL
 * FROM, owned by the session (OpenSMTPD's split). Input is handled one
 * command at a time; the session stops reading while a queue file is being
 * committed or a password checked, so pipelined commands wait their turn.
 * A session is freed from the event loop, never inside its own callback.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <strings.h>
#include <sys/mman.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include "../common/mail.h"
#include "smtp_private.h"

#define WBUF_SIZE 65536
#define OUTPUT_HIGH (256 * 1024)
#define MAX_AUTH_LINE 2048
#define SRS_MAX_FAILURES 3      /* forged SRS recipients before the session is ended */

enum sess_state {
    ST_PROXY, ST_PAUSE, ST_CMD, ST_DATA, ST_BDAT, ST_BDAT_DISCARD, ST_AUTH, ST_WAIT
};

struct smtp_rcpt {
    char *addr;
};

struct smtp_tx {
    char id[QUEUE_ID_LEN + 1];
    char from[SMTP_ADDR_MAX + 1];
    struct smtp_mail_args args;
    struct smtp_rcpt *rcpts;
    size_t nrcpt, rcpt_cap;
    int fd;
    char tmp[1200];
    struct smtp_data reader;
    bool data_started, used_bdat, used_data;
    bool too_big, write_error;
    char *wbuf;
    size_t wlen;
    uint64_t size;          /* message bytes received (no Received header) */
    off_t content_off;      /* the content record in the queue file */
    bool quarantined;
    size_t received_len;    /* our Received header, first in the content */
    char policy[256];       /* the recipients' policy group (conf_policy_group) */
    char msgid[256];        /* Message-ID, for the trace */
    char reason[32];        /* the filters' class of verdict, for the trace and stats */
};

enum auth_step { AUTH_NONE, AUTH_PLAIN_WAIT, AUTH_LOGIN_USER, AUTH_LOGIN_PASS };

struct smtp_session {
    struct smtp_server *srv;
    struct smtp_listener *lst;
    struct smtp_session *prev, *next;
    struct bufferevent *bev;
    struct event *pause_timer;
    enum sess_state state;
    char addr[46];
    uint16_t port;
    char *helo;
    char *auth_user;
    struct smtp_tx *tx;
    uint64_t bdat_left;
    bool bdat_last;
    enum reply_id bdat_err;     /* reply after a refused chunk is discarded */
    unsigned errors, commands, msgs;
    unsigned srs_failures;      /* RCPTs to SRS addresses that did not verify */
    enum auth_step auth_step;
    char *auth_login_user;
    bool esmtp, tls, ip_counted, closing, lingering, freeing, waiting, out_paused, skipping;
    bool free_when_idle;
    bool no_linger;             /* refused: close once the reply is out */
};

static void session_process(struct smtp_session *s);
static void session_close(struct smtp_session *s);
static void tx_abort(struct smtp_session *s);
static void connect_go(struct smtp_session *s);
static void connect_filter(struct smtp_session *s);
static void helo_go(struct smtp_session *s, const char *domain, bool ehlo);
static void mail_go(struct smtp_session *s, const struct smtp_mail_args *a);
static void rcpt_go(struct smtp_session *s, const char *addr);

/* ------------------------------------------------------------- replies */

/* The session has done enough harm: 421 and close. */
static void
too_many_errors(struct smtp_session *s, const char *what)
{
    char buf[700];
    log_info("too many %s from [%s]", what, s->addr);
    size_t n = reply_format(buf, sizeof(buf), R_TOO_MANY_ERRORS, NULL, true);
    bufferevent_write(s->bev, buf, n);
    session_close(s);
}

static void
reply(struct smtp_session *s, enum reply_id id, const char *arg)
{
    char buf[700];
    size_t n = reply_format(buf, sizeof(buf), id, arg, true);
    bufferevent_write(s->bev, buf, n);
    unsigned code = reply_get(id)->code;
    if (code >= 400 && code != 421) {
        s->errors++;
        if (s->errors >= s->srv->cfg->limits.errors)
            too_many_errors(s, "errors");
    }
}

static void
reply_ehlo(struct smtp_session *s)
{
    const struct moat_config *cfg = s->srv->cfg;
    struct evbuffer *out = bufferevent_get_output(s->bev);
    unsigned code = reply_get(R_HELO)->code;
    evbuffer_add_printf(out, "%03u-%s\r\n", code, cfg->hostname);
    evbuffer_add_printf(out, "%03u-PIPELINING\r\n", code);
    evbuffer_add_printf(out, "%03u-SIZE %llu\r\n", code, (unsigned long long)cfg->limits.message_size);
    if (s->srv->tls && !s->tls)
        evbuffer_add_printf(out, "%03u-STARTTLS\r\n", code);
    if (s->lst->kind != LISTEN_SMTP && s->tls)
        evbuffer_add_printf(out, "%03u-AUTH PLAIN LOGIN\r\n", code);
    evbuffer_add_printf(out, "%03u-ENHANCEDSTATUSCODES\r\n", code);
    evbuffer_add_printf(out, "%03u-8BITMIME\r\n", code);
    evbuffer_add_printf(out, "%03u-SMTPUTF8\r\n", code);
    evbuffer_add_printf(out, "%03u CHUNKING\r\n", code);
}

/* ------------------------------------------------------------ lifetime */

static void
session_free_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct smtp_session *s = arg;
    struct smtp_server *srv = s->srv;
    if (s->waiting) {               /* a worker still holds us: free later */
        s->free_when_idle = true;
        return;
    }
    log_info("disconnect from [%s] commands=%u messages=%u errors=%u", s->addr, s->commands,
             s->msgs, s->errors);
    tx_abort(s);
    if (s->ip_counted)
        smtp_server_ip_release(srv, s->addr);
    if (s->prev)
        s->prev->next = s->next;
    else
        srv->sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    if (s->pause_timer)
        event_free(s->pause_timer);
    bufferevent_free(s->bev);
    free(s->helo);
    free(s->auth_user);
    if (s->auth_login_user) {
        explicit_bzero(s->auth_login_user, strlen(s->auth_login_user));
        free(s->auth_login_user);
    }
    free(s);
    smtp_server_session_gone(srv);
}

static void
session_schedule_free(struct smtp_session *s)
{
    if (s->freeing)
        return;
    s->freeing = true;
    struct timeval zero = { 0, 0 };
    event_base_once(s->srv->base, -1, EV_TIMEOUT, session_free_cb, s, &zero);
}

/* Lingering close (nginx): once the last reply is written, shut down our
 * side and read what the client still sends for a moment. Closing with
 * unread input would reset the connection and lose that last reply. */
static void
session_linger(struct smtp_session *s)
{
    if (s->lingering || tls_bev_finish(s->bev) > 0)
        return;             /* the write callback comes back when it is out */
    s->lingering = true;
    if (s->no_linger) {
        session_schedule_free(s);
        return;
    }
    evutil_socket_t fd = bufferevent_getfd(s->bev);
    if (fd < 0 || shutdown(fd, SHUT_WR) < 0) {
        session_schedule_free(s);
        return;
    }
    struct timeval tv = { 2, 0 };
    bufferevent_set_timeouts(s->bev, &tv, &tv);
    bufferevent_enable(s->bev, EV_READ);
}

static void
session_close(struct smtp_session *s)
{
    if (s->closing)
        return;
    s->closing = true;
    if (evbuffer_get_length(bufferevent_get_output(s->bev)) == 0)
        session_linger(s);
}

static void
session_write_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    struct smtp_session *s = arg;
    if (s->closing) {
        session_linger(s);
    } else if (s->out_paused) {
        s->out_paused = false;
        session_process(s);
    }
}

static void
session_event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    struct smtp_session *s = arg;
    if (what & BEV_EVENT_CONNECTED)     /* TLS handshake done */
        return;
    if (what & BEV_EVENT_TIMEOUT) {
        if ((what & BEV_EVENT_READING) && !s->closing && !s->waiting) {
            log_info("timeout after %s from [%s]",
                     s->state == ST_DATA || s->state == ST_BDAT ? "DATA" : "command", s->addr);
            reply(s, R_TIMEOUT, NULL);
            session_close(s);
            bufferevent_enable(s->bev, EV_READ | EV_WRITE);
            return;
        }
    } else if ((what & BEV_EVENT_ERROR) && s->tls) {
        unsigned long e = bufferevent_get_openssl_error(s->bev);
        if (e)
            log_info("TLS error from [%s]: %s", s->addr, ERR_reason_error_string(e));
    }
    /* EOF, error, write timeout: nothing more can be said to the client. */
    if (!s->closing && s->tx && s->state == ST_DATA)
        log_info("lost connection after DATA from [%s]", s->addr);
    s->closing = true;
    session_schedule_free(s);
}

static void
session_read_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    session_process(arg);
}

static void
set_read_timeout(struct smtp_session *s, unsigned secs)
{
    struct timeval rt = { (time_t)secs, 0 };
    struct timeval wt = { (time_t)s->srv->cfg->limits.command_timeout, 0 };
    bufferevent_set_timeouts(s->bev, &rt, &wt);
}

/* Stop processing input until resume(): a worker has the session. */
static void
session_wait(struct smtp_session *s)
{
    s->waiting = true;
    bufferevent_disable(s->bev, EV_READ);
}

static void
session_resume(struct smtp_session *s)
{
    s->waiting = false;
    if (s->free_when_idle) {
        s->freeing = false;
        session_schedule_free(s);
        return;
    }
    if (s->closing)
        return;
    bufferevent_enable(s->bev, EV_READ);
    session_process(s);
}

/* ---------------------------------------------------------- the start */

static void
greet(struct smtp_session *s)
{
    s->state = ST_CMD;
    set_read_timeout(s, s->srv->cfg->limits.command_timeout);
    reply(s, R_GREETING, s->srv->cfg->hostname);
}

static void
pause_done(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct smtp_session *s = arg;
    if (s->state == ST_PAUSE && !s->closing)
        greet(s);
}

static void
tls_wrap(struct smtp_session *s)
{
    SSL *ssl = SSL_new(s->srv->tls);
    struct bufferevent *tb = bufferevent_openssl_filter_new(
        s->srv->base, s->bev, ssl, BUFFEREVENT_SSL_ACCEPTING,
        BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    if (tb == NULL) {
        SSL_free(ssl);
        session_close(s);
        return;
    }
    s->bev = tb;
    s->tls = true;
    bufferevent_setcb(tb, session_read_cb, session_write_cb, session_event_cb, s);
    bufferevent_enable(tb, EV_READ | EV_WRITE);
    set_read_timeout(s, s->srv->cfg->limits.command_timeout);
}

/* The client's real address is known: count it (if the listener could
 * not, behind a proxy), ask the filters, greet. */
static void
session_start(struct smtp_session *s)
{
    if (!s->ip_counted && !smtp_server_ip_acquire(s->srv, s->addr)) {
        smtp_server_log_refusal(s->srv, s->addr, true, "too many connections from");
        reply(s, R_TOO_MANY_CONN_IP, NULL);
        s->no_linger = true;
        session_close(s);
        return;
    }
    s->ip_counted = true;
    log_info("connect from [%s]:%u", s->addr, s->port);
    trace_metric("moat_smtp_connections_total", 1);
    if (s->lst->kind == LISTEN_SMTPS)
        tls_wrap(s);
    if (filter_chain_has(s->srv->chain, FILTER_PHASE_CONNECT))
        connect_filter(s);
    else
        connect_go(s);
}

/* Greet, after the greet pause if there is one. */
static void
connect_go(struct smtp_session *s)
{
    const struct moat_config *cfg = s->srv->cfg;
    if (cfg->smtp.greet_pause_ms > 0) {
        s->state = ST_PAUSE;
        s->pause_timer = evtimer_new(s->srv->base, pause_done, s);
        struct timeval tv = { (time_t)(cfg->smtp.greet_pause_ms / 1000),
                              (suseconds_t)(cfg->smtp.greet_pause_ms % 1000) * 1000 };
        evtimer_add(s->pause_timer, &tv);
        set_read_timeout(s, cfg->limits.command_timeout);
    } else {
        greet(s);
    }
}

void
smtp_session_new(struct smtp_server *srv, struct smtp_listener *l, evutil_socket_t fd,
                 const struct sockaddr *sa, bool ip_counted)
{
    struct smtp_session *s = xcalloc(1, sizeof(*s));
    s->srv = srv;
    s->lst = l;
    int one = 1;        /* replies go out at once, not after a delayed ACK */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    sockaddr_str(sa, s->addr, sizeof(s->addr), &s->port);
    s->ip_counted = ip_counted;
    s->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    if (s->bev == NULL) {
        close(fd);
        if (ip_counted)
            smtp_server_ip_release(srv, s->addr);
        free(s);
        smtp_server_session_gone(srv);
        return;
    }
    s->next = srv->sessions;
    if (s->next)
        s->next->prev = s;
    srv->sessions = s;
    bufferevent_setcb(s->bev, session_read_cb, session_write_cb, session_event_cb, s);
    bufferevent_enable(s->bev, EV_READ | EV_WRITE);
    if (l->proxy) {
        s->state = ST_PROXY;
        set_read_timeout(s, 30);
    } else {
        session_start(s);
    }
}

struct smtp_session *
smtp_session_next(struct smtp_session *s)
{
    return s->next;
}

/* SIGTERM: idle sessions go now; the others when their transaction ends. */
void
smtp_session_shutdown(struct smtp_session *s)
{
    if (s->closing || s->tx || s->waiting)
        return;
    if (s->state == ST_CMD || s->state == ST_PAUSE || s->state == ST_PROXY) {
        if (s->state != ST_PROXY)
            reply(s, R_SHUTDOWN, NULL);
        session_close(s);
    }
}

/* ------------------------------------------------------- transactions */

static void
tx_free(struct smtp_tx *tx)
{
    for (size_t i = 0; i < tx->nrcpt; i++)
        free(tx->rcpts[i].addr);
    free(tx->rcpts);
    free(tx->wbuf);
    free(tx);
}

static void
tx_abort(struct smtp_session *s)
{
    struct smtp_tx *tx = s->tx;
    if (tx == NULL)
        return;
    if (tx->fd >= 0) {
        close(tx->fd);
        unlink(tx->tmp);
    }
    tx_free(tx);
    s->tx = NULL;
}

/* What happened to the transaction, for the trace and the stats; rcpt:
 * one recipient (a refused RCPT), else the transaction's. */
static void
tx_event(struct smtp_session *s, const char *what, const char *rcpt, const char *reason,
         const char *detail)
{
    struct smtp_tx *tx = s->tx;
    const char *one[1] = { rcpt };
    const char **v = NULL;
    size_t n = 0;
    if (rcpt) {
        v = one;
        n = 1;
    } else if (tx && tx->nrcpt) {
        v = xcalloc(tx->nrcpt, sizeof(*v));
        for (; n < tx->nrcpt; n++)
            v[n] = tx->rcpts[n].addr;
    }
    struct msg_event e = {
        .what = what, .qid = tx ? tx->id : NULL, .msgid = tx ? tx->msgid : NULL,
        .sender = tx ? tx->from : NULL, .rcpts = v, .nrcpt = n, .reason = reason,
        .detail = detail, .client = s->addr,
    };
    trace_message(&e);
    if (v != one)
        free(v);
}

/* The class of a verdict by the plugin that made it. */
static const char *
verdict_reason(const struct filter_outcome *out)
{
    return filter_reason_class(out->decided_by);
}

static const char *
proto_name(const struct smtp_session *s)
{
    static const char *names[] = { "SMTP", "ESMTP", "SMTPS", "ESMTPS",
                                   "SMTPA", "ESMTPA", "SMTPSA", "ESMTPSA" };
    return names[(s->esmtp ? 1 : 0) | (s->tls ? 2 : 0) | (s->auth_user ? 4 : 0)];
}

static void
tx_flush(struct smtp_tx *tx)
{
    if (tx->wlen == 0 || tx->write_error)
        return;
    if (write_full(tx->fd, tx->wbuf, tx->wlen) < 0) {
        log_err("%s: write %s: %s", tx->id, tx->tmp, strerror(errno));
        tx->write_error = true;
    }
    tx->wlen = 0;
}

static void
tx_append(struct smtp_tx *tx, const char *p, size_t n)
{
    while (n > 0 && !tx->write_error) {
        size_t room = WBUF_SIZE - tx->wlen;
        size_t take = n < room ? n : room;
        memcpy(tx->wbuf + tx->wlen, p, take);
        tx->wlen += take;
        p += take;
        n -= take;
        if (tx->wlen == WBUF_SIZE)
            tx_flush(tx);
    }
}

/* Open the queue file, write the envelope and our Received header. */
static int
tx_data_begin(struct smtp_session *s)
{
    struct smtp_tx *tx = s->tx;
    const struct moat_config *cfg = s->srv->cfg;
    if (str_fmt(tx->tmp, sizeof(tx->tmp), "%s/%s.%d", s->srv->dir_tmp, tx->id, (int)getpid()) < 0)
        return -1;
    tx->fd = open(tx->tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);  /* read: mmap for the filters */
    if (tx->fd < 0) {
        log_err("%s: create %s: %s", tx->id, tx->tmp, strerror(errno));
        return -1;
    }
    char num[32];
    snprintf(num, sizeof(num), "%lld", (long long)time(NULL));
    int r = qf_write_magic(tx->fd) | qf_write_str(tx->fd, QF_ARRIVAL, num) |
            qf_write_str(tx->fd, QF_CLIENT, s->addr) |
            qf_write_str(tx->fd, QF_HELO, s->helo ? s->helo : "") |
            qf_write_str(tx->fd, QF_SENDER, tx->from);
    if (s->auth_user)
        r |= qf_write_str(tx->fd, QF_AUTH, s->auth_user);
    if (tx->args.body == SMTP_BODY_8BITMIME)
        r |= qf_write_str(tx->fd, QF_FLAGS, "8bit");
    if (tx->args.smtputf8)
        r |= qf_write_str(tx->fd, QF_FLAGS, "smtputf8");
    for (size_t i = 0; i < tx->nrcpt; i++)
        r |= qf_write_str(tx->fd, QF_RCPT, tx->rcpts[i].addr);
    if (r != 0) {
        log_err("%s: write %s: %s", tx->id, tx->tmp, strerror(errno));
        return -1;
    }
    if (qf_content_begin(tx->fd, &tx->content_off) < 0) {
        log_err("%s: write %s: %s", tx->id, tx->tmp, strerror(errno));
        return -1;
    }
    tx->wbuf = xmalloc(WBUF_SIZE);
    char date[64], hdr[1400];
    time_rfc5322(time(NULL), date, sizeof(date));
    int n;
    if (tx->nrcpt == 1)
        n = snprintf(hdr, sizeof(hdr),
                     "Received: from %s ([%s])\r\n\tby %s (Moat) with %s id %s\r\n\tfor <%s>; %s\r\n",
                     s->helo ? s->helo : "unknown", s->addr, cfg->hostname, proto_name(s), tx->id,
                     tx->rcpts[0].addr, date);
    else
        n = snprintf(hdr, sizeof(hdr),
                     "Received: from %s ([%s])\r\n\tby %s (Moat) with %s id %s;\r\n\t%s\r\n",
                     s->helo ? s->helo : "unknown", s->addr, cfg->hostname, proto_name(s), tx->id,
                     date);
    if (n < 0 || (size_t)n >= sizeof(hdr))
        return -1;
    tx_append(tx, hdr, (size_t)n);
    tx->received_len = (size_t)n;
    tx->data_started = true;
    return 0;
}

static void
commit_done(void *arg, bool ok)
{
    struct smtp_session *s = arg;
    struct smtp_tx *tx = s->tx;
    if (ok) {
        /* the keys in the format itself, for log.format = "json" */
        if (s->auth_user)
            log_info("%s: from=<%s>, size=%llu, nrcpt=%zu, client=[%s], sasl_username=%s (%s)",
                     tx->id, tx->from, (unsigned long long)tx->size, tx->nrcpt, s->addr,
                     s->auth_user, tx->quarantined ? "quarantined" : "queued");
        else
            log_info("%s: from=<%s>, size=%llu, nrcpt=%zu, client=[%s] (%s)", tx->id, tx->from,
                     (unsigned long long)tx->size, tx->nrcpt, s->addr,
                     tx->quarantined ? "quarantined" : "queued");
        tx_event(s, tx->quarantined ? "quarantined" : "accepted", NULL, tx->reason, NULL);
        if (!tx->quarantined) {
            ssize_t r = send(s->srv->notify_fd, tx->id, strlen(tx->id), MSG_DONTWAIT);
            (void)r;    /* the queue role also scans incoming/ at start and periodically */
        }
        s->msgs++;
        if (!s->free_when_idle)
            reply(s, R_QUEUED, tx->id);
    } else {
        log_err("%s: queue file commit failed; answered 451", tx->id);
        if (!s->free_when_idle)
            reply(s, R_LOCAL_ERROR, NULL);
    }
    tx->fd = -1;            /* closed by the committer */
    tx_abort(s);
    s->state = ST_CMD;
    if (!s->free_when_idle)
        set_read_timeout(s, s->srv->cfg->limits.command_timeout);
    session_resume(s);
}

/* Write END and hand the file to the committer: into incoming/, or into
 * quarantine/ when the chain held the message. */
static void
tx_commit(struct smtp_session *s, bool quarantine)
{
    struct smtp_tx *tx = s->tx;
    const char *dir = quarantine ? s->srv->dir_quarantine : s->srv->dir_incoming;
    char final[1200];
    if (qf_write_rec(tx->fd, QF_END, NULL, 0) < 0 ||
        str_fmt(final, sizeof(final), "%s/%s", dir, tx->id) < 0) {
        log_err("%s: write %s: %s", tx->id, tx->tmp, strerror(errno));
        tx_abort(s);
        reply(s, R_LOCAL_ERROR, NULL);
        s->state = ST_CMD;
        if (s->waiting)             /* after the chain; else we are in session_process */
            session_resume(s);
        return;
    }
    tx->quarantined = quarantine;
    s->state = ST_WAIT;
    if (!s->waiting)
        session_wait(s);
    smtp_commit_start(s->srv, tx->fd, tx->tmp, dir, final, commit_done, s);
}

/* ---- the filter chain at the end of data */

struct filter_job {
    struct smtp_session *s;
    enum filter_phase phase;
    struct filter_msg m;
    char *queue_id, *client, *helo, *auth_user, *sender, *policy;
    char **rcpts;
    size_t nrcpt;
    char **auth_domains;
    size_t nauth_domains;
    void *map;
    size_t maplen;
    /* the command waiting for the chain's word */
    struct smtp_mail_args mail;
    char addr[SMTP_ADDR_MAX + 1];
    bool ehlo;
};

static void
filter_release(void *arg)
{
    struct filter_job *fj = arg;
    if (fj->map)
        munmap(fj->map, fj->maplen);
    free(fj->queue_id);
    free(fj->client);
    free(fj->helo);
    free(fj->auth_user);
    free(fj->sender);
    free(fj->policy);
    for (size_t i = 0; i < fj->nrcpt; i++)
        free(fj->rcpts[i]);
    free(fj->rcpts);
    accounts_domains_free(&fj->auth_domains, fj->nauth_domains);
    free(fj);
}

/* Authentication-Results headers from outside that claim our authserv-id
 * (RFC 8601 section 5) are left out: a skip record per header. So is the
 * first field called replace (a plugin gave it a new form, on top). */
static int
skip_fields(struct smtp_session *s, const char *p, size_t n, const char *replace)
{
    const char *id = s->srv->cfg->hostname;
    bool replaced = replace[0] == '\0';
    size_t idlen = strlen(id);
    struct rfc5322_field f;
    for (const char *q = p, *next; (next = rfc5322_next(q, p + n, &f)) != NULL; q = next) {
        char rec[64];
        snprintf(rec, sizeof(rec), "%zu %zu", (size_t)(q - p), (size_t)(next - q));
        if (!replaced && rfc5322_is(&f, replace)) {
            if (qf_write_str(s->tx->fd, QF_SKIP, rec) < 0)
                return -1;
            replaced = true;
            continue;
        }
        if (!rfc5322_is(&f, "Authentication-Results"))
            continue;
        const char *v = f.val, *ve = f.val + f.vlen;
        while (v < ve && (*v == ' ' || *v == '\t' || *v == '\r' || *v == '\n'))
            v++;
        if ((size_t)(ve - v) >= idlen && strncasecmp(v, id, idlen) == 0 &&
            (v + idlen == ve || strchr(" \t\r\n;", v[idlen]))) {
            if (qf_write_str(s->tx->fd, QF_SKIP, rec) < 0)
                return -1;
            log_info("%s: removed an Authentication-Results header claiming %s", s->tx->id, id);
        }
    }
    return 0;
}

static int
write_outcome(struct smtp_session *s, struct filter_outcome *out, bool quarantine)
{
    int fd = s->tx->fd;
    /* one record per header field (a field may carry continuation lines) */
    const char *end = out->headers + out->headers_len;
    struct rfc5322_field f;
    for (const char *p = out->headers, *q; (q = rfc5322_next(p, end, &f)) != NULL; p = q)
        if (qf_write_rec(fd, QF_HEADER, p, (size_t)(q - p)) < 0)
            return -1;
    if (!quarantine)
        return 0;
    if (quarantine_hold(fd, out->decided_by, out->reply) < 0)
        return -1;
    for (size_t i = 0; i < out->nsym; i++)
        if (quarantine_hold_symbol(fd, out->sym[i].name, out->sym[i].score, out->sym[i].desc) < 0)
            return -1;
    return 0;
}

static void early_done(struct filter_job *fj, struct filter_outcome *out);

/* The Message-ID field's value, trimmed, or "". */
static void
message_id_of(const char *data, size_t len, char *out, size_t size)
{
    size_t vlen;
    const char *v = rfc5322_find(data, data + len, "Message-ID", 0, &vlen);
    out[0] = '\0';
    if (v == NULL)
        return;
    while (vlen && (*v == ' ' || *v == '\t')) {
        v++;
        vlen--;
    }
    size_t n = vlen < size - 1 ? vlen : size - 1;
    memcpy(out, v, n);
    out[n] = '\0';
    for (char *c = out; *c; c++)
        if (*c == '\r' || *c == '\n' || *c == '\t')
            *c = ' ';
}

static void
filter_done(void *arg, struct filter_outcome *out)
{
    struct filter_job *fj = arg;
    struct smtp_session *s = fj->s;
    struct smtp_tx *tx = s->tx;
    if (fj->phase != FILTER_PHASE_DATA_END) {
        early_done(fj, out);
        return;
    }
    log_info("%s: filter: verdict=%s%s%s score=%.2f symbols=[%s]%s%s", tx->id,
             filter_verdict_name(out->verdict), out->decided_by[0] ? " by=" : "", out->decided_by,
             out->score, out->symbols, out->reply[0] ? " reply=" : "", out->reply);
    if (s->free_when_idle) {        /* the client is gone: it never saw a 250 */
        tx_abort(s);
        session_resume(s);
        return;
    }
    s->state = ST_CMD;
    message_id_of(fj->m.data, fj->m.len, tx->msgid, sizeof(tx->msgid));
    str_copy(tx->reason, verdict_reason(out), sizeof(tx->reason));
    if (out->verdict == FILTER_TAG && tx->reason[0] == '\0')
        str_copy(tx->reason, "spam", sizeof(tx->reason));
    switch (out->verdict) {
    case FILTER_REJECT:
    case FILTER_TEMPFAIL: {
        bool rej = out->verdict == FILTER_REJECT;
        tx_event(s, rej ? "rejected" : "tempfail", NULL, tx->reason,
                 out->reply[0] ? out->reply : NULL);
        log_info("%s: %s: END-OF-MESSAGE from [%s]: %u %s; from=<%s>", tx->id,
                 rej ? "reject" : "tempfail", s->addr,
                 reply_get(rej ? R_FILTER_REJECT : R_FILTER_TEMPFAIL)->code, out->reply, tx->from);
        tx_abort(s);
        reply(s, rej ? R_FILTER_REJECT : R_FILTER_TEMPFAIL,
              out->reply[0] ? out->reply : (rej ? "Message rejected by policy" : "Try again later"));
        session_resume(s);
        return;
    }
    case FILTER_DISCARD: {
        char id[QUEUE_ID_LEN + 1];
        str_copy(id, tx->id, sizeof(id));
        log_info("%s: discarded by %s", id, out->decided_by);
        tx_abort(s);
        reply(s, R_QUEUED, id);
        session_resume(s);
        return;
    }
    default:
        break;
    }
    bool quarantine = out->verdict == FILTER_QUARANTINE;
    if (skip_fields(s, fj->m.data, fj->m.len, out->replace) < 0 ||
        write_outcome(s, out, quarantine) < 0) {
        log_err("%s: write %s: %s", tx->id, tx->tmp, strerror(errno));
        tx_abort(s);
        reply(s, R_LOCAL_ERROR, NULL);
        session_resume(s);
        return;
    }
    tx_commit(s, quarantine);
}

/* A job with copies of what the hooks see (a hook that misses its deadline
 * may still read them after the session has moved on). extra_rcpt: the
 * recipient being asked about at RCPT. */
static struct filter_job *
filter_job_new(struct smtp_session *s, enum filter_phase phase, const char *helo,
               const char *sender, const char *extra_rcpt)
{
    struct smtp_tx *tx = s->tx;
    struct filter_job *fj = xcalloc(1, sizeof(*fj));
    fj->s = s;
    fj->phase = phase;
    fj->queue_id = xstrdup(tx ? tx->id : "NOQUEUE");
    fj->client = xstrdup(s->addr);
    fj->helo = xstrdup(helo ? helo : (s->helo ? s->helo : ""));
    fj->auth_user = s->auth_user ? xstrdup(s->auth_user) : NULL;
    fj->sender = xstrdup(sender ? sender : (tx ? tx->from : ""));
    size_t n = tx ? tx->nrcpt : 0;
    fj->rcpts = xcalloc(n + 2, sizeof(char *));
    for (size_t i = 0; i < n; i++)
        fj->rcpts[fj->nrcpt++] = xstrdup(tx->rcpts[i].addr);
    if (extra_rcpt)
        fj->rcpts[fj->nrcpt++] = xstrdup(extra_rcpt);
    if (extra_rcpt && n == 0)
        fj->policy = xstrdup(conf_policy_group(s->srv->cfg, smtp_parser_domain(extra_rcpt)));
    else
        fj->policy = xstrdup(tx ? tx->policy : "");
    if (s->auth_user) {
        const struct accounts_file *af = accounts_get(s->srv->accounts);
        fj->nauth_domains = accounts_sender_domains(af, s->srv->cfg, s->auth_user,
                                                    &fj->auth_domains);
        accounts_put(&af);
    }
    fj->m = (struct filter_msg){
        .queue_id = fj->queue_id, .client_addr = fj->client, .helo = fj->helo,
        .auth_user = fj->auth_user, .sender = fj->sender,
        .rcpts = (const char *const *)fj->rcpts, .nrcpt = fj->nrcpt, .policy = fj->policy,
        .auth_domains = (const char *const *)fj->auth_domains,
        .nauth_domains = fj->nauth_domains,
    };
    return fj;
}

static void filter_done(void *arg, struct filter_outcome *out);

static void
filter_job_run(struct smtp_session *s, struct filter_job *fj)
{
    s->state = ST_WAIT;
    session_wait(s);
    filter_chain_run(s->srv->chain, s->srv->base, s->srv->workq, fj->phase, &fj->m,
                     filter_done, filter_release, fj);
}

/* The queue file mapped (no copy), NULL on failure; the content (our
 * Received header, then the message) starts content_off + 5 bytes in. */
static void *
tx_map(struct smtp_tx *tx, size_t *maplen_r, size_t *clen_r)
{
    *clen_r = tx->received_len + tx->reader.out_bytes;
    *maplen_r = (size_t)tx->content_off + 5 + *clen_r;
    void *map = mmap(NULL, *maplen_r ? *maplen_r : 1, PROT_READ, MAP_SHARED, tx->fd, 0);
    if (map != MAP_FAILED)
        return map;
    log_err("%s: mmap %s: %s", tx->id, tx->tmp, strerror(errno));
    return NULL;
}

/* Map the message (no copy) and run the chain's end-of-data hooks. */
static void
tx_filter(struct smtp_session *s)
{
    struct smtp_tx *tx = s->tx;
    struct filter_job *fj = filter_job_new(s, FILTER_PHASE_DATA_END, NULL, NULL, NULL);
    size_t clen;
    fj->map = tx_map(tx, &fj->maplen, &clen);
    if (fj->map == NULL) {
        filter_release(fj);
        tx_abort(s);
        reply(s, R_LOCAL_ERROR, NULL);
        return;
    }
    fj->m.data = (const char *)fj->map + tx->content_off + 5;
    fj->m.len = clen;
    filter_job_run(s, fj);
}

/* ---- sender ownership: an authenticated user sends as what it owns */

static bool
sender_owned(struct smtp_session *s, const char *addr)
{
    const struct accounts_file *af = accounts_get(s->srv->accounts);
    bool ok = accounts_may_send_as(af, s->srv->cfg, s->auth_user, addr);
    accounts_put(&af);
    return ok;
}

#define FROM_MAX_ADDRS 16

/* The first From address of the message that the login may not send as,
 * into why (for the reply); false when every one is its own. */
static bool
from_not_owned(struct smtp_session *s, const char *data, size_t len, char *why, size_t size)
{
    struct rfc5322_field f;
    char (*addrs)[SMTP_ADDR_MAX + 1] = xcalloc(FROM_MAX_ADDRS, sizeof(*addrs));
    bool bad = false;
    const struct accounts_file *af = accounts_get(s->srv->accounts);
    const char *p = data;
    while (!bad && (p = rfc5322_next(p, data + len, &f)) != NULL) {
        if (!rfc5322_is(&f, "From"))
            continue;
        int n = smtp_from_addrs(f.val, f.vlen, addrs, FROM_MAX_ADDRS);
        if (n < 0) {
            str_copy(why, "too many or too long addresses", size);
            bad = true;
        }
        for (int i = 0; i < n && !bad; i++)
            if (!accounts_may_send_as(af, s->srv->cfg, s->auth_user, addrs[i])) {
                str_fmt(why, size, "<%.*s> is not owned by the authenticated user", 330, addrs[i]);
                bad = true;
            }
    }
    accounts_put(&af);
    free(addrs);
    return bad;
}

/* End of data from an authenticated user: every address of the From
 * header must be one it may send as, or the message is refused (550). */
static bool
from_refused(struct smtp_session *s)
{
    struct smtp_tx *tx = s->tx;
    size_t maplen, clen;
    void *map = tx_map(tx, &maplen, &clen);
    char why[400];
    bool refused;
    enum reply_id id = R_FROM_NOT_OWNED;
    if (map == NULL) {
        refused = true;
        id = R_LOCAL_ERROR;
        why[0] = '\0';
    } else {
        refused = from_not_owned(s, (const char *)map + tx->content_off + 5, clen, why,
                                 sizeof(why));
        munmap(map, maplen);
    }
    if (!refused)
        return false;
    if (id == R_FROM_NOT_OWNED) {
        log_info("%s: reject: From header from [%s]: %u %s %s; from=<%s> sasl_username=%s",
                 tx->id, s->addr, reply_get(id)->code, reply_get(id)->enh, why, tx->from,
                 s->auth_user);
        tx_event(s, "rejected", NULL, "policy", why);
    }
    tx_abort(s);
    reply(s, id, why);
    return true;
}

/* End of DATA or BDAT LAST: check, run the filter chain, then commit. */
static void
tx_data_end(struct smtp_session *s)
{
    struct smtp_tx *tx = s->tx;
    const struct moat_config *cfg = s->srv->cfg;
    tx->size = tx->reader.out_bytes;
    s->state = ST_CMD;
    set_read_timeout(s, cfg->limits.command_timeout);
    enum reply_id err = R__COUNT;
    if (tx->too_big)
        err = R_SIZE_EXCEEDED;
    else if (tx->reader.bare && cfg->smtp.bare_newline == BARE_NL_REJECT)
        err = R_BARE_NEWLINE;
    else if (tx->reader.nul)
        err = R_BAD_HEADER_CHARS;
    if (err == R__COUNT) {
        tx_flush(tx);
        if (tx->write_error ||
            qf_content_end(tx->fd, tx->content_off, tx->received_len + tx->reader.out_bytes) < 0)
            err = R_LOCAL_ERROR;
    }
    if (err != R__COUNT) {
        log_info("%s: reject: %s from [%s]: %u %s; from=<%s>", tx->id,
                 tx->used_bdat ? "BDAT" : "DATA", s->addr, reply_get(err)->code,
                 reply_get(err)->text, tx->from);
        tx_abort(s);
        reply(s, err, NULL);
        return;
    }
    if (s->auth_user && from_refused(s))
        return;
    if (filter_chain_empty(s->srv->chain))
        tx_commit(s, false);
    else
        tx_filter(s);
}

/* Feed message bytes through the reader into the queue file. Returns true
 * at the end of DATA. */
static bool
tx_feed(struct smtp_session *s, const char *p, size_t n, size_t *consumed)
{
    struct smtp_tx *tx = s->tx;
    char out[2 * 16384 + 2];
    size_t used = 0;
    bool end = false;
    while (used < n && !end) {
        size_t chunk = n - used > 16384 ? 16384 : n - used;
        size_t olen, c;
        end = smtp_data_feed(&tx->reader, p + used, chunk, out, &olen, &c);
        used += c;
        if (tx->reader.out_bytes > s->srv->cfg->limits.message_size)
            tx->too_big = true;
        if (!tx->too_big)
            tx_append(tx, out, olen);
    }
    *consumed = used;
    return end;
}

/* ----------------------------------------------------------- commands */

static bool
domain_is_ours(const struct moat_config *cfg, const char *domain)
{
    return conf_domain(cfg, domain) != NULL;
}

static void
cmd_helo(struct smtp_session *s, const char *args, bool ehlo)
{
    char domain[256];
    const char *why;
    if (smtp_parser_helo(args, domain, sizeof(domain), &why) < 0) {
        reply(s, R_BAD_HELO, NULL);
        return;
    }
    if (filter_chain_has(s->srv->chain, FILTER_PHASE_HELO)) {
        struct filter_job *fj = filter_job_new(s, FILTER_PHASE_HELO, domain, NULL, NULL);
        str_copy(fj->addr, domain, sizeof(fj->addr));
        fj->ehlo = ehlo;
        filter_job_run(s, fj);
        return;
    }
    helo_go(s, domain, ehlo);
}

static void
helo_go(struct smtp_session *s, const char *domain, bool ehlo)
{
    tx_abort(s);
    free(s->helo);
    s->helo = xstrdup(domain);
    s->esmtp = ehlo;
    if (ehlo)
        reply_ehlo(s);
    else
        reply(s, R_HELO, s->srv->cfg->hostname);
}

/* A MAIL or RCPT parse result: 0 ok, -1 syntax (501), -2 parameter (555). */
static bool
parse_failed(struct smtp_session *s, int r, const char *why)
{
    if (r == 0)
        return false;
    reply(s, r == -2 ? R_SYNTAX_PARAM : R_SYNTAX, why);
    return true;
}

static void
cmd_mail(struct smtp_session *s, const char *args)
{
    const struct moat_config *cfg = s->srv->cfg;
    if (s->helo == NULL) {
        reply(s, R_BAD_SEQ_HELO, NULL);
        return;
    }
    if (s->tx) {
        reply(s, R_NESTED_MAIL, NULL);
        return;
    }
    if (s->lst->kind != LISTEN_SMTP && s->auth_user == NULL) {
        reply(s, R_AUTH_REQUIRED, NULL);
        return;
    }
    struct smtp_mail_args a;
    const char *why = "";
    int pr = smtp_parser_mail(args, &a, &why);    /* sets why: call it first */
    if (parse_failed(s, pr, why))
        return;
    if (a.ret_full || a.ret_hdrs || a.envid[0]) {
        reply(s, R_DSN_UNSUPPORTED, NULL);
        return;
    }
    if (a.has_size && a.size > cfg->limits.message_size) {
        reply(s, R_SIZE_DECLARED, NULL);
        return;
    }
    if (s->auth_user && a.addr[0] && !sender_owned(s, a.addr)) {
        log_info("NOQUEUE: reject: MAIL from [%s]: %u %s <%s>: Sender address not owned by sasl_username=%s",
                 s->addr, reply_get(R_SENDER_NOT_OWNED)->code, reply_get(R_SENDER_NOT_OWNED)->enh,
                 a.addr, s->auth_user);
        reply(s, R_SENDER_NOT_OWNED, a.addr);
        return;
    }
    if (filter_chain_has(s->srv->chain, FILTER_PHASE_MAIL)) {
        struct filter_job *fj = filter_job_new(s, FILTER_PHASE_MAIL, NULL, a.addr, NULL);
        fj->mail = a;
        filter_job_run(s, fj);
        return;
    }
    mail_go(s, &a);
}

static void
mail_go(struct smtp_session *s, const struct smtp_mail_args *a)
{
    struct smtp_tx *tx = xcalloc(1, sizeof(*tx));
    tx->fd = -1;
    tx->args = *a;
    str_copy(tx->from, a->addr, sizeof(tx->from));
    queue_id_new(tx->id);
    s->tx = tx;
    reply(s, R_SENDER_OK, NULL);
}

/* An SRS address of one of our local domains takes bounces only (the null
 * sender) and only when it verifies; they go back to the original sender.
 * Anything else is refused, and a session that keeps trying addresses
 * that do not verify is ended: SRS is never a way to relay. Returns true
 * when the RCPT was answered. */
static bool
srs_refused(struct smtp_session *s, const char *addr)
{
    struct smtp_tx *tx = s->tx;
    char orig[400];
    enum reply_id no;
    const char *why;
    if (tx->from[0] != '\0') {
        no = R_SRS_BOUNCE_ONLY;
        why = "SRS address takes only bounces";
    } else if (srs_reverse(s->srv->cfg->state_dir, addr, orig, sizeof(orig)) < 0) {
        no = R_SRS_INVALID;
        why = "SRS address does not verify";
        s->srs_failures++;
    } else {
        return false;
    }
    log_info("NOQUEUE: reject: RCPT from [%s]: %u %s <%s>: %s; from=<%s> to=<%s> proto=%s helo=<%s>",
             s->addr, reply_get(no)->code, reply_get(no)->enh, addr, why, tx->from, addr,
             proto_name(s), s->helo);
    tx_event(s, "rejected", addr, "relay", why);
    reply(s, no, addr);
    if (s->srs_failures >= SRS_MAX_FAILURES && !s->closing)
        too_many_errors(s, "forged SRS recipients");
    return true;
}

static void
cmd_rcpt(struct smtp_session *s, const char *args)
{
    const struct moat_config *cfg = s->srv->cfg;
    struct smtp_tx *tx = s->tx;
    if (tx == NULL) {
        reply(s, R_BAD_SEQ_MAIL, NULL);
        return;
    }
    if (tx->data_started) {
        reply(s, R_BAD_SEQ_BDAT, NULL);
        return;
    }
    struct smtp_rcpt_args a;
    const char *why = "";
    int pr = smtp_parser_rcpt(args, &a, &why);
    if (parse_failed(s, pr, why))
        return;
    if (a.notify[0] || a.orcpt[0]) {
        reply(s, R_DSN_UNSUPPORTED, NULL);
        return;
    }
    if (!tx->args.smtputf8) {
        for (const char *p = a.addr; *p; p++)
            if ((unsigned char)*p >= 0x80) {
                reply(s, R_SMTPUTF8_REQUIRED, NULL);
                return;
            }
    }
    const char *domain = smtp_parser_domain(a.addr);
    if (s->auth_user == NULL && !domain_is_ours(cfg, domain)) {
        log_info("NOQUEUE: reject: RCPT from [%s]: %u %s <%s>: Relay access denied; from=<%s> to=<%s> proto=%s helo=<%s>",
                 s->addr, reply_get(R_RELAY_DENIED)->code, reply_get(R_RELAY_DENIED)->enh, a.addr,
                 tx->from, a.addr, proto_name(s), s->helo);
        tx_event(s, "rejected", a.addr, "relay", "Relay access denied");
        reply(s, R_RELAY_DENIED, a.addr);
        return;
    }
    if (tx->nrcpt >= cfg->limits.recipients) {
        reply(s, R_TOO_MANY_RCPT, NULL);
        return;
    }
    /* A local domain takes mail only for its users, aliases, lists and
     * catch-all, and for bounces to its SRS addresses: spam to made-up
     * addresses never enters the queue. */
    const struct domain_conf *dc = conf_domain(cfg, domain);
    if (dc && dc->delivery == DELIVERY_LOCAL && str_iprefix(a.addr, "SRS0=")) {
        if (srs_refused(s, a.addr))
            return;
    } else if (dc && dc->delivery == DELIVERY_LOCAL) {
        struct account_route route;
        const struct accounts_file *af = accounts_get(s->srv->accounts);
        int known = accounts_route(af, cfg, a.addr, tx->from, &route) == 0;
        if (known)
            accounts_route_free(&route);
        accounts_put(&af);
        if (!known) {
            enum reply_id no = route.refused_list ? R_LIST_REFUSED : R_UNKNOWN_USER;
            log_info("NOQUEUE: reject: RCPT from [%s]: %u %s <%s>: %s; from=<%s> to=<%s> proto=%s helo=<%s>",
                     s->addr, reply_get(no)->code, reply_get(no)->enh, a.addr,
                     no == R_LIST_REFUSED ? "list refuses the sender" : "User unknown", tx->from,
                     a.addr, proto_name(s), s->helo);
            tx_event(s, "rejected", a.addr, no == R_LIST_REFUSED ? "list" : "unknown_user",
                     no == R_LIST_REFUSED ? "list refuses the sender" : "User unknown");
            reply(s, no, a.addr);
            return;
        }
    }
    /* One message, one policy, one verdict: a recipient of another policy
     * group is asked to come again in a transaction of its own. */
    if (tx->nrcpt > 0 && strcmp(conf_policy_group(cfg, domain), tx->policy) != 0) {
        log_info("%s: defer RCPT <%s>: policy group '%s', the transaction's is '%s'", tx->id,
                 a.addr, conf_policy_group(cfg, domain), tx->policy);
        reply(s, R_POLICY_GROUP, a.addr);
        return;
    }
    if (filter_chain_has(s->srv->chain, FILTER_PHASE_RCPT)) {
        struct filter_job *fj = filter_job_new(s, FILTER_PHASE_RCPT, NULL, NULL, a.addr);
        str_copy(fj->addr, a.addr, sizeof(fj->addr));
        filter_job_run(s, fj);
        return;
    }
    rcpt_go(s, a.addr);
}

static void
rcpt_go(struct smtp_session *s, const char *addr)
{
    struct smtp_tx *tx = s->tx;
    if (tx->nrcpt == tx->rcpt_cap) {
        tx->rcpt_cap = tx->rcpt_cap ? tx->rcpt_cap * 2 : 4;
        tx->rcpts = xrealloc(tx->rcpts, tx->rcpt_cap * sizeof(*tx->rcpts));
    }
    if (tx->nrcpt == 0)
        str_copy(tx->policy, conf_policy_group(s->srv->cfg, smtp_parser_domain(addr)),
                 sizeof(tx->policy));
    tx->rcpts[tx->nrcpt++].addr = xstrdup(addr);
    reply(s, R_RCPT_OK, NULL);
}

static void
connect_filter(struct smtp_session *s)
{
    filter_job_run(s, filter_job_new(s, FILTER_PHASE_CONNECT, "", "", NULL));
}

/* The chain's word on a command before DATA: reject and tempfail answer
 * the command; anything else lets it complete. */
static void
early_done(struct filter_job *fj, struct filter_outcome *out)
{
    static const char *phase_names[] = { "CONNECT", "HELO", "MAIL", "RCPT", "DATA" };
    struct smtp_session *s = fj->s;
    const char *pname = phase_names[fj->phase];
    bool stop = out->verdict == FILTER_REJECT || out->verdict == FILTER_TEMPFAIL;
    if (stop || out->nsym)
        log_info("%s: filter %s: verdict=%s%s%s score=%.2f symbols=[%s]", fj->queue_id, pname,
                 filter_verdict_name(out->verdict), out->decided_by[0] ? " by=" : "", out->decided_by,
                 out->score, out->symbols);
    if (s->free_when_idle) {
        session_resume(s);
        return;
    }
    s->state = ST_CMD;
    if (stop) {
        bool rej = out->verdict == FILTER_REJECT;
        const char *text = out->reply[0] ? out->reply : (rej ? "Rejected by policy" : "Try again later");
        enum reply_id id = fj->phase == FILTER_PHASE_CONNECT
                               ? (rej ? R_FILTER_CONNECT_REJECT : R_FILTER_CONNECT_TEMPFAIL)
                               : (rej ? R_FILTER_REJECT : R_FILTER_TEMPFAIL);
        log_info("NOQUEUE: %s: %s from [%s]: %u %s %s; from=<%s> to=<%s> helo=<%s>",
                 rej ? "reject" : "tempfail", pname, s->addr, reply_get(id)->code,
                 reply_get(id)->enh, text, fj->sender,
                 fj->phase == FILTER_PHASE_RCPT ? fj->addr : "", fj->helo);
        tx_event(s, rej ? "rejected" : "tempfail", fj->phase == FILTER_PHASE_RCPT ? fj->addr : NULL,
                 verdict_reason(out), text);
        reply(s, id, text);
        if (fj->phase == FILTER_PHASE_CONNECT)
            session_close(s);
        session_resume(s);
        return;
    }
    switch (fj->phase) {
    case FILTER_PHASE_CONNECT: connect_go(s); break;
    case FILTER_PHASE_HELO: helo_go(s, fj->addr, fj->ehlo); break;
    case FILTER_PHASE_MAIL: mail_go(s, &fj->mail); break;
    case FILTER_PHASE_RCPT: rcpt_go(s, fj->addr); break;
    case FILTER_PHASE_DATA_END: break;
    }
    session_resume(s);
}

static void
cmd_data(struct smtp_session *s, const char *args)
{
    struct smtp_tx *tx = s->tx;
    if (args[0]) {
        reply(s, R_SYNTAX, "DATA takes no arguments");
        return;
    }
    if (tx == NULL) {
        reply(s, R_BAD_SEQ_MAIL, NULL);
        return;
    }
    if (tx->used_bdat) {
        reply(s, R_BAD_SEQ_BDAT, NULL);
        return;
    }
    if (tx->nrcpt == 0) {
        reply(s, R_NO_VALID_RCPT, NULL);
        return;
    }
    if (tx_data_begin(s) < 0) {
        tx_abort(s);
        reply(s, R_LOCAL_ERROR, NULL);
        return;
    }
    tx->used_data = true;
    smtp_data_init(&tx->reader, false);
    s->state = ST_DATA;
    set_read_timeout(s, s->srv->cfg->limits.data_timeout);
    reply(s, R_DATA_GO, NULL);
}

static void
cmd_bdat(struct smtp_session *s, const char *args)
{
    struct smtp_tx *tx = s->tx;
    uint64_t size;
    bool last;
    const char *why;
    if (smtp_parser_bdat(args, &size, &last, &why) < 0) {
        /* Without a valid size we cannot find the end of the chunk. */
        reply(s, R_SYNTAX, why);
        session_close(s);
        return;
    }
    enum reply_id err = R__COUNT;
    if (tx == NULL)
        err = R_BAD_SEQ_MAIL;
    else if (tx->nrcpt == 0)
        err = R_NO_VALID_RCPT;
    else if (!tx->used_bdat && tx_data_begin(s) < 0)
        err = R_LOCAL_ERROR;
    s->bdat_left = size;
    s->bdat_last = last;
    set_read_timeout(s, s->srv->cfg->limits.data_timeout);
    if (err != R__COUNT) {
        /* RFC 3030: a refused chunk is still read (and thrown away) before
         * the reply, or its bytes would be taken for commands. */
        if (err == R_LOCAL_ERROR)
            tx_abort(s);
        if (size == 0) {
            reply(s, err, NULL);
        } else {
            s->bdat_err = err;
            s->state = ST_BDAT_DISCARD;
        }
        return;
    }
    if (!tx->used_bdat) {
        tx->used_bdat = true;
        smtp_data_init(&tx->reader, true);
    }
    s->state = ST_BDAT;
    if (size == 0)
        session_process(s);     /* an empty chunk completes at once */
}

static void
bdat_chunk_done(struct smtp_session *s)
{
    struct smtp_tx *tx = s->tx;
    if (s->bdat_last) {
        char out[2];
        size_t n = smtp_data_finish(&tx->reader, out);
        if (!tx->too_big)
            tx_append(tx, out, n);
        tx_data_end(s);
    } else {
        char num[32];
        snprintf(num, sizeof(num), "%llu", (unsigned long long)tx->reader.out_bytes);
        s->state = ST_CMD;
        set_read_timeout(s, s->srv->cfg->limits.command_timeout);
        reply(s, R_BDAT_OK, num);
    }
}

/* ---- AUTH PLAIN / LOGIN (RFC 4954), passwords checked on a worker */

struct auth_job {
    struct smtp_session *s;
    char user[SMTP_ADDR_MAX + 1];
    char pass[512];
    struct account_login login; /* the user's, copied on the loop */
    int result;
    struct event *delay;        /* a failure waits before it is told */
};

static void
auth_work(void *arg)
{
    struct auth_job *j = arg;
    j->result = accounts_check_login(&j->login, j->pass);
    explicit_bzero(j->pass, sizeof(j->pass));
}

static void
auth_finish(struct auth_job *j)
{
    struct smtp_session *s = j->s;
    if (!s->free_when_idle) {
        if (j->result == 1) {
            s->auth_user = xstrdup(j->user);
            log_info("[%s]: sasl_username=%s authenticated", s->addr, j->user);
            reply(s, R_AUTH_OK, NULL);
        } else if (j->result < 0) {
            log_warn("[%s]: AUTH for %s: no account store", s->addr, j->user);
            reply(s, R_AUTH_UNAVAILABLE, NULL);
        } else {
            reply(s, R_AUTH_FAILED, NULL);
        }
    }
    if (j->delay)
        event_free(j->delay);
    free(j);
    s->state = ST_CMD;
    session_resume(s);
}

static void
auth_delay_fire(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    auth_finish(arg);
}

/* A failure is told only after the wait authlimit asks for (the same
 * slow-down as POP3 and IMAP). */
static void
auth_done(void *arg)
{
    struct auth_job *j = arg;
    struct smtp_session *s = j->s;
    if (j->result == 1) {
        authlimit_ok(s->srv->authlimit, s->addr, j->user);
        auth_finish(j);
        return;
    }
    if (j->result < 0) {
        auth_finish(j);
        return;
    }
    log_warn("[%s]: AUTH failed for %s", s->addr, j->user);
    double wait = authlimit_failed(s->srv->authlimit, s->addr, j->user);
    struct timeval tv = { (time_t)wait, (suseconds_t)((wait - (double)(time_t)wait) * 1e6) };
    j->delay = evtimer_new(s->srv->base, auth_delay_fire, j);
    evtimer_add(j->delay, &tv);
}

static void
auth_check(struct smtp_session *s, const char *user, const char *pass)
{
    if (authlimit_blocked(s->srv->authlimit, s->addr, user) > 0) {
        log_warn("[%s]: AUTH refused: too many failures from this address", s->addr);
        reply(s, R_AUTH_FAILED, NULL);
        return;
    }
    struct auth_job *j = xcalloc(1, sizeof(*j));
    j->s = s;
    str_copy(j->user, user, sizeof(j->user));
    str_copy(j->pass, pass, sizeof(j->pass));
    for (char *p = j->user; *p; p++)
        *p = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
    const struct accounts_file *af = accounts_get(s->srv->accounts);
    accounts_login_prepare(s->srv->cfg->state_dir, accounts_find(af, ACCT_USER, j->user),
                           &j->login);
    accounts_put(&af);
    s->state = ST_WAIT;
    session_wait(s);
    workq_submit(s->srv->workq, auth_work, auth_done, j);
}

/* "\0user\0pass" or "authz\0user\0pass" */
static void
auth_plain(struct smtp_session *s, const char *b64)
{
    unsigned char buf[MAX_AUTH_LINE];
    ssize_t n = base64_decode(b64, buf, sizeof(buf) - 1);
    s->state = ST_CMD;
    if (n < 0) {
        reply(s, R_SYNTAX, "bad base64");
        return;
    }
    buf[n] = '\0';
    const char *authz = (const char *)buf;
    size_t l1 = strnlen(authz, (size_t)n);
    if (l1 >= (size_t)n) {
        reply(s, R_AUTH_FAILED, NULL);
        return;
    }
    const char *user = authz + l1 + 1;
    size_t l2 = strnlen(user, (size_t)n - l1 - 1);
    if (l1 + 1 + l2 >= (size_t)n) {
        reply(s, R_AUTH_FAILED, NULL);
        return;
    }
    const char *pass = user + l2 + 1;
    if ((authz[0] && strcmp(authz, user) != 0) || user[0] == '\0') {
        reply(s, R_AUTH_FAILED, NULL);
        return;
    }
    auth_check(s, user, pass);
    explicit_bzero(buf, sizeof(buf));
}

static void
auth_line(struct smtp_session *s, const char *line)
{
    if (strcmp(line, "*") == 0) {
        s->state = ST_CMD;
        s->auth_step = AUTH_NONE;
        reply(s, R_AUTH_CANCELLED, NULL);
        return;
    }
    enum auth_step step = s->auth_step;
    s->auth_step = AUTH_NONE;
    if (step == AUTH_PLAIN_WAIT) {
        auth_plain(s, line);
        return;
    }
    unsigned char buf[600];
    ssize_t n = base64_decode(line, buf, sizeof(buf) - 1);
    if (n < 0 || memchr(buf, '\0', (size_t)n)) {
        s->state = ST_CMD;
        reply(s, R_SYNTAX, "bad base64");
        return;
    }
    buf[n] = '\0';
    if (step == AUTH_LOGIN_USER) {
        free(s->auth_login_user);
        s->auth_login_user = xstrdup((char *)buf);
        s->auth_step = AUTH_LOGIN_PASS;
        reply(s, R_AUTH_CHALLENGE, "UGFzc3dvcmQ6");     /* "Password:" */
        return;
    }
    char *user = s->auth_login_user;
    s->auth_login_user = NULL;
    auth_check(s, user ? user : "", (char *)buf);
    explicit_bzero(buf, sizeof(buf));
    free(user);
}

static void
cmd_auth(struct smtp_session *s, const char *args)
{
    if (s->lst->kind == LISTEN_SMTP) {
        reply(s, R_NOT_IMPL, NULL);
        return;
    }
    if (!s->tls) {
        reply(s, R_AUTH_NEEDS_TLS, NULL);
        return;
    }
    if (s->auth_user) {
        reply(s, R_AUTH_ALREADY, NULL);
        return;
    }
    if (s->tx) {
        reply(s, R_AUTH_IN_TX, NULL);
        return;
    }
    char mech[16];
    size_t ml = strcspn(args, " ");
    if (ml == 0 || ml >= sizeof(mech)) {
        reply(s, R_AUTH_MECH, NULL);
        return;
    }
    memcpy(mech, args, ml);
    mech[ml] = '\0';
    const char *initial = args[ml] == ' ' ? args + ml + 1 : NULL;
    if (str_ieq(mech, "PLAIN")) {
        if (initial) {
            if (strcmp(initial, "=") == 0)
                initial = "";
            auth_plain(s, initial);
        } else {
            s->state = ST_AUTH;
            s->auth_step = AUTH_PLAIN_WAIT;
            reply(s, R_AUTH_CHALLENGE, "");
        }
    } else if (str_ieq(mech, "LOGIN")) {
        s->state = ST_AUTH;
        if (initial) {
            s->auth_step = AUTH_LOGIN_USER;
            auth_line(s, initial);
        } else {
            s->auth_step = AUTH_LOGIN_USER;
            reply(s, R_AUTH_CHALLENGE, "VXNlcm5hbWU6");     /* "Username:" */
        }
    } else {
        reply(s, R_AUTH_MECH, NULL);
    }
}

static void
cmd_starttls(struct smtp_session *s, const char *args)
{
    if (s->srv->tls == NULL) {
        reply(s, R_TLS_UNAVAILABLE, NULL);
        return;
    }
    if (s->tls) {
        reply(s, R_TLS_ALREADY, NULL);
        return;
    }
    if (args[0]) {
        reply(s, R_SYNTAX, "STARTTLS takes no arguments");
        return;
    }
    reply(s, R_TLS_GO, NULL);
    /* Anything pipelined after STARTTLS was sent in the clear: it must not
     * be read as if it came over TLS (CVE-2011-0411). */
    struct evbuffer *in = bufferevent_get_input(s->bev);
    evbuffer_drain(in, evbuffer_get_length(in));
    tx_abort(s);
    free(s->helo);
    s->helo = NULL;
    s->esmtp = false;
    tls_wrap(s);
}

static void
command(struct smtp_session *s, char *line)
{
    const char *args;
    enum smtp_verb v = smtp_parser_verb(line, &args);
    s->commands++;
    if (s->srv->stopping && s->tx == NULL && v != SMTP_QUIT) {
        reply(s, R_SHUTDOWN, NULL);
        session_close(s);
        return;
    }
    switch (v) {
    case SMTP_HELO: cmd_helo(s, args, false); break;
    case SMTP_EHLO: cmd_helo(s, args, true); break;
    case SMTP_MAIL: cmd_mail(s, args); break;
    case SMTP_RCPT: cmd_rcpt(s, args); break;
    case SMTP_DATA: cmd_data(s, args); break;
    case SMTP_BDAT: cmd_bdat(s, args); break;
    case SMTP_RSET:
        tx_abort(s);
        reply(s, R_RSET, NULL);
        break;
    case SMTP_NOOP: reply(s, R_NOOP, NULL); break;
    case SMTP_VRFY: reply(s, R_VRFY, NULL); break;
    case SMTP_HELP: reply(s, R_HELP, NULL); break;
    case SMTP_EXPN: reply(s, R_NOT_IMPL, NULL); break;
    case SMTP_STARTTLS: cmd_starttls(s, args); break;
    case SMTP_AUTH: cmd_auth(s, args); break;
    case SMTP_QUIT:
        reply(s, R_BYE, NULL);
        session_close(s);
        break;
    case SMTP_UNKNOWN:
    default:
        reply(s, R_UNKNOWN_CMD, NULL);
        break;
    }
}

/* ------------------------------------------------------------ input */

/* Read one line (commands and AUTH continuations). Returns 1 with the line
 * in buf, 0 when more input is needed. Over-long lines are answered and
 * skipped up to their end. */
static int
read_line(struct smtp_session *s, char *buf, size_t size)
{
    struct evbuffer *in = bufferevent_get_input(s->bev);
    size_t limit = s->srv->cfg->limits.line_length;
    if (limit >= size)
        limit = size - 1;
    for (;;) {
        size_t eol_len = 0;
        struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_CRLF);
        if (p.pos < 0) {
            size_t avail = evbuffer_get_length(in);
            if (avail > limit) {
                if (!s->skipping)
                    reply(s, R_LINE_TOO_LONG, NULL);
                s->skipping = true;
                evbuffer_drain(in, avail);
            }
            return 0;
        }
        size_t len = (size_t)p.pos;
        if (s->skipping || len > limit) {
            if (!s->skipping)
                reply(s, R_LINE_TOO_LONG, NULL);
            s->skipping = false;
            evbuffer_drain(in, len + eol_len);
            if (s->closing)
                return 0;
            continue;
        }
        evbuffer_remove(in, buf, len);
        evbuffer_drain(in, eol_len);
        buf[len] = '\0';
        if (strlen(buf) != len) {
            reply(s, R_SYNTAX, "NUL in command");
            if (s->closing)
                return 0;
            continue;
        }
        return 1;
    }
}

static void
process_proxy(struct smtp_session *s)
{
    struct evbuffer *in = bufferevent_get_input(s->bev);
    size_t avail = evbuffer_get_length(in);
    size_t take = avail < PROXY_MAX_HEADER ? avail : PROXY_MAX_HEADER;
    const unsigned char *p = evbuffer_pullup(in, (ev_ssize_t)take);
    struct proxy_result res;
    int r = proxy_parse(p, take, &res);
    if (r == 0)
        return;
    if (r < 0) {
        log_warn("bad PROXY header from [%s]", s->addr);
        reply(s, R_PROXY_BAD, NULL);
        session_close(s);
        return;
    }
    evbuffer_drain(in, (size_t)r);
    if (!res.local)
        sockaddr_str((struct sockaddr *)&res.src, s->addr, sizeof(s->addr), &s->port);
    session_start(s);
}

static void
process_data(struct smtp_session *s, bool bdat)
{
    struct evbuffer *in = bufferevent_get_input(s->bev);
    struct evbuffer_iovec v[8];
    int nv = evbuffer_peek(in, -1, NULL, v, 8);
    size_t total = 0;
    bool end = false;
    for (int i = 0; i < nv && !end; i++) {
        size_t len = v[i].iov_len;
        if (bdat && len > s->bdat_left)
            len = (size_t)s->bdat_left;
        size_t used = len;
        if (s->state == ST_BDAT_DISCARD)
            used = len;
        else
            end = tx_feed(s, v[i].iov_base, len, &used);
        total += used;
        if (bdat) {
            s->bdat_left -= used;
            if (s->bdat_left == 0)
                end = true;
        }
    }
    evbuffer_drain(in, total);
    if (!end)
        return;
    if (s->state == ST_BDAT_DISCARD) {
        s->state = ST_CMD;
        set_read_timeout(s, s->srv->cfg->limits.command_timeout);
        reply(s, s->bdat_err, NULL);
    } else if (bdat) {
        bdat_chunk_done(s);
    } else {
        tx_data_end(s);
    }
}

static void
session_process(struct smtp_session *s)
{
    struct evbuffer *in = bufferevent_get_input(s->bev);
    char line[65536 + 1];
    if (s->closing) {           /* lingering: read and forget */
        evbuffer_drain(in, evbuffer_get_length(in));
        return;
    }
    while (!s->closing && !s->waiting) {
        if (evbuffer_get_length(bufferevent_get_output(s->bev)) > OUTPUT_HIGH) {
            s->out_paused = true;   /* the client does not read its replies */
            return;
        }
        size_t avail = evbuffer_get_length(in);
        if (avail == 0 && !(s->state == ST_BDAT && s->bdat_left == 0))
            return;
        switch (s->state) {
        case ST_PROXY:
            process_proxy(s);
            if (s->state == ST_PROXY)
                return;
            break;
        case ST_PAUSE:
            log_info("reject: early talker [%s]", s->addr);
            reply(s, R_EARLY_TALKER, NULL);
            session_close(s);
            return;
        case ST_CMD:
            if (!read_line(s, line, sizeof(line)))
                return;
            command(s, line);
            break;
        case ST_AUTH:
            if (!read_line(s, line, MAX_AUTH_LINE))
                return;
            auth_line(s, line);
            explicit_bzero(line, MAX_AUTH_LINE);
            if (s->state == ST_AUTH && s->auth_step == AUTH_NONE)
                s->state = ST_CMD;
            break;
        case ST_DATA:
            process_data(s, false);
            break;
        case ST_BDAT:
        case ST_BDAT_DISCARD:
            if (s->bdat_left == 0 && s->state == ST_BDAT) {
                bdat_chunk_done(s);
                break;
            }
            process_data(s, true);
            break;
        case ST_WAIT:
            return;
        }
    }
}
