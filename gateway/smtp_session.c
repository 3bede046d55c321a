/*
 * smtp_session.c -- one SMTP session (RFC 5321 with PIPELINING, SIZE,
 * 8BITMIME, ENHANCEDSTATUSCODES, STARTTLS, SMTPUTF8, DSN, CHUNKING and AUTH):
 * its lifetime, the input loop (the PROXY header, the greet pause,
 * command lines, AUTH's lines, DATA and BDAT bytes), the replies, and the
 * commands, dispatched through a table as OpenSMTPD's smtp_session.c: each
 * row says in which stages of the session the command is allowed (and
 * what it is told outside them), what else it needs (a submission
 * listener, TLS, a login...), and its handler. The connection's own
 * commands (HELO, EHLO, STARTTLS, RSET, NOOP, QUIT...) are here, the
 * transaction's (MAIL, RCPT, DATA, BDAT) in smtp_tx.c, AUTH in
 * smtp_auth.c; the filter chain is asked through smtp_filter.c.
 *
 * One struct smtp_session per connection, owned by the server
 * (smtp_server.c); one struct smtp_tx per MAIL FROM, owned by the session
 * (OpenSMTPD's split). Input is handled one command at a time, so every
 * command may be pipelined: the session stops reading while a queue file
 * is committed, the chain asked or a password checked, and pipelined
 * commands wait their turn (what follows STARTTLS is dropped). A session
 * is freed from the event loop, never inside its own callback.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
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

#define OUTPUT_HIGH (256 * 1024)

static void session_process(struct smtp_session *s);

/* ------------------------------------------------------------- replies */

void
smtp_session_too_many(struct smtp_session *s, const char *what)
{
    char buf[700];
    log_info("too many %s from [%s]", what, s->addr);
    size_t n = reply_format(buf, sizeof(buf), R_TOO_MANY_ERRORS, NULL, true);
    bufferevent_write(s->bev, buf, n);
    smtp_session_close(s);
}

void
smtp_session_reply(struct smtp_session *s, enum reply_id id, const char *arg)
{
    char buf[700];
    size_t n = reply_format(buf, sizeof(buf), id, arg, true);
    bufferevent_write(s->bev, buf, n);
    unsigned code = reply_get(id)->code;
    if (code >= 400 && code != 421) {
        s->errors++;
        if (s->errors >= s->srv->cfg->limits.errors)
            smtp_session_too_many(s, "errors");
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
    evbuffer_add_printf(out, "%03u-DSN\r\n", code);
    if (s->tls)             /* RFC 8689 3: offered over TLS only */
        evbuffer_add_printf(out, "%03u-REQUIRETLS\r\n", code);
    evbuffer_add_printf(out, "%03u CHUNKING\r\n", code);
}

const char *
smtp_session_proto(const struct smtp_session *s)
{
    static const char *names[] = { "SMTP", "ESMTP", "SMTPS", "ESMTPS",
                                   "SMTPA", "ESMTPA", "SMTPSA", "ESMTPSA" };
    return names[(s->esmtp ? 1 : 0) | (s->tls ? 2 : 0) | (s->auth_user ? 4 : 0)];
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
    smtp_tx_abort(s);
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
    if (s->early_timer)
        event_free(s->early_timer);
    bufferevent_free(s->bev);
    free(s->helo);
    free(s->auth_user);
    smtp_auth_forget(s);
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

void
smtp_session_close(struct smtp_session *s)
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
            smtp_session_reply(s, R_TIMEOUT, NULL);
            smtp_session_close(s);
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

void
smtp_session_timeout(struct smtp_session *s, unsigned secs)
{
    struct timeval rt = { (time_t)secs, 0 };
    struct timeval wt = { (time_t)s->srv->cfg->limits.command_timeout, 0 };
    bufferevent_set_timeouts(s->bev, &rt, &wt);
}

void
smtp_session_wait(struct smtp_session *s)
{
    s->waiting = true;
    bufferevent_disable(s->bev, EV_READ);
}

void
smtp_session_resume(struct smtp_session *s)
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

/* ----------------------------------------------------------- the start */

static void
greet_now(struct smtp_session *s)
{
    s->state = ST_CMD;
    smtp_session_timeout(s, s->srv->cfg->limits.command_timeout);
    smtp_session_reply(s, R_GREETING, s->srv->cfg->hostname);
}

static void
pause_done(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct smtp_session *s = arg;
    if (s->state == ST_PAUSE && !s->closing) {
        greet_now(s);
        session_process(s);     /* what an early talker let through sent */
    }
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
        smtp_session_close(s);
        return;
    }
    s->bev = tb;
    s->tls = true;
    bufferevent_setcb(tb, session_read_cb, session_write_cb, session_event_cb, s);
    bufferevent_enable(tb, EV_READ | EV_WRITE);
    smtp_session_timeout(s, s->srv->cfg->limits.command_timeout);
}

/* The client's real address is known: count it (if the listener could
 * not, behind a proxy), ask the filters, greet. */
static void
session_start(struct smtp_session *s)
{
    if (!s->ip_counted && !smtp_server_ip_acquire(s->srv, s->addr)) {
        smtp_server_log_refusal(s->srv, s->addr, true, "too many connections from");
        smtp_session_reply(s, R_TOO_MANY_CONN_IP, NULL);
        s->no_linger = true;
        smtp_session_close(s);
        return;
    }
    s->ip_counted = true;
    log_info("connect from [%s]:%u", s->addr, s->port);
    trace_metric("moat_smtp_connections_total", 1);
    if (s->lst->kind == LISTEN_SMTPS)
        tls_wrap(s);
    smtp_screen_connect(s);
}

void
smtp_session_admit(struct smtp_session *s)
{
    if (filter_chain_has(s->srv->chain, FILTER_PHASE_CONNECT))
        smtp_filter_ask_connect(s);
    else
        smtp_session_greet(s);
}

/* Greet, after the greet pause if there is one. */
void
smtp_session_greet(struct smtp_session *s)
{
    const struct moat_config *cfg = s->srv->cfg;
    if (cfg->smtp.greet_pause_ms > 0 && !smtp_screen_permitted(s)) {
        s->state = ST_PAUSE;
        s->pause_timer = evtimer_new(s->srv->base, pause_done, s);
        struct timeval tv = { (time_t)(cfg->smtp.greet_pause_ms / 1000),
                              (suseconds_t)(cfg->smtp.greet_pause_ms % 1000) * 1000 };
        evtimer_add(s->pause_timer, &tv);
        smtp_session_timeout(s, cfg->limits.command_timeout);
    } else {
        greet_now(s);
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
        smtp_session_timeout(s, 30);
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
            smtp_session_reply(s, R_SHUTDOWN, NULL);
        smtp_session_close(s);
    }
}

/* ------------------------------------------------- the connection's commands */

static void
helo_or_ehlo(struct smtp_session *s, const char *args, bool ehlo)
{
    char domain[256];
    const char *why;
    if (smtp_parser_helo(args, domain, sizeof(domain), &why) < 0) {
        smtp_session_reply(s, R_BAD_HELO, NULL);
        return;
    }
    if (!smtp_screen_pipelining(s, evbuffer_get_length(bufferevent_get_input(s->bev))))
        return;
    if (filter_chain_has(s->srv->chain, FILTER_PHASE_HELO))
        smtp_filter_ask_helo(s, domain, ehlo);
    else
        smtp_session_helo(s, domain, ehlo);
}

static void
cmd_helo(struct smtp_session *s, const char *args)
{
    helo_or_ehlo(s, args, false);
}

static void
cmd_ehlo(struct smtp_session *s, const char *args)
{
    helo_or_ehlo(s, args, true);
}

void
smtp_session_helo(struct smtp_session *s, const char *domain, bool ehlo)
{
    smtp_tx_abort(s);
    free(s->helo);
    s->helo = xstrdup(domain);
    s->esmtp = ehlo;
    if (ehlo)
        reply_ehlo(s);
    else
        smtp_session_reply(s, R_HELO, s->srv->cfg->hostname);
}

static void
cmd_starttls(struct smtp_session *s, const char *args)
{
    if (s->srv->tls == NULL) {
        smtp_session_reply(s, R_TLS_UNAVAILABLE, NULL);
        return;
    }
    if (s->tls) {
        smtp_session_reply(s, R_TLS_ALREADY, NULL);
        return;
    }
    if (args[0]) {
        smtp_session_reply(s, R_SYNTAX, "STARTTLS takes no arguments");
        return;
    }
    smtp_session_reply(s, R_TLS_GO, NULL);
    /* Anything pipelined after STARTTLS was sent in the clear: it must not
     * be read as if it came over TLS (CVE-2011-0411). */
    struct evbuffer *in = bufferevent_get_input(s->bev);
    evbuffer_drain(in, evbuffer_get_length(in));
    smtp_tx_abort(s);
    free(s->helo);
    s->helo = NULL;
    s->esmtp = false;
    tls_wrap(s);
}

static void
cmd_rset(struct smtp_session *s, const char *args)
{
    (void)args;
    smtp_tx_abort(s);
    smtp_session_reply(s, R_RSET, NULL);
}

static void
cmd_noop(struct smtp_session *s, const char *args)
{
    (void)args;
    smtp_session_reply(s, R_NOOP, NULL);
}

static void
cmd_vrfy(struct smtp_session *s, const char *args)
{
    (void)args;
    smtp_session_reply(s, R_VRFY, NULL);
}

static void
cmd_help(struct smtp_session *s, const char *args)
{
    (void)args;
    smtp_session_reply(s, R_HELP, NULL);
}

static void
cmd_expn(struct smtp_session *s, const char *args)
{
    (void)args;
    smtp_session_reply(s, R_NOT_IMPL, NULL);
}

static void
cmd_quit(struct smtp_session *s, const char *args)
{
    (void)args;
    smtp_session_reply(s, R_BYE, NULL);
    smtp_session_close(s);
}

/* ---------------------------------------------------------- the commands */

/* The stages of a session, one after the other; a row names those its
 * command is allowed in, and what it is told before them (early) and
 * after them (late). */
enum {
    STAGE_START = 1,            /* no HELO/EHLO yet */
    STAGE_HELO = 2,             /* greeted, no transaction */
    STAGE_MAIL = 4,             /* in a transaction (MAIL FROM taken) */
    STAGE_CHUNKS = 8,           /* its message has begun in BDAT chunks */
};
#define STAGE_ANY (STAGE_START | STAGE_HELO | STAGE_MAIL | STAGE_CHUNKS)

/* The rows' flags, checked in this order, the stages between
 * CMD_UNAUTHED and CMD_AUTH_FIRST. */
enum {
    CMD_NO_ARGS = 1,            /* 501 NAME takes no arguments */
    CMD_SUBMISSION = 2,         /* only on a submission listener (587, 465): else 502 */
    CMD_TLS = 4,                /* only over TLS: else 538 */
    CMD_UNAUTHED = 8,           /* only before a successful AUTH: else 503 */
    CMD_AUTH_FIRST = 16,        /* on a submission listener only after AUTH: else 530 */
    CMD_STOPPING = 32,          /* taken while the server shuts down (else 421 outside a transaction) */
};

typedef void smtp_handler(struct smtp_session *s, const char *args);

struct smtp_command {
    const char *name;
    unsigned stages;            /* STAGE_* it is allowed in */
    enum reply_id early, late;  /* the reply before / after them (not read for STAGE_ANY) */
    unsigned flags;
    smtp_handler *fn;
};

/* By verb (smtp_parser.c reads the name); BDAT checks its stage itself,
 * since a refused chunk is still read (RFC 3030). */
static const struct smtp_command commands[] = {
    [SMTP_HELO] = { "HELO", STAGE_ANY, 0, 0, 0, cmd_helo },
    [SMTP_EHLO] = { "EHLO", STAGE_ANY, 0, 0, 0, cmd_ehlo },
    [SMTP_MAIL] = { "MAIL", STAGE_HELO, R_BAD_SEQ_HELO, R_NESTED_MAIL, CMD_AUTH_FIRST, smtp_tx_mail },
    [SMTP_RCPT] = { "RCPT", STAGE_MAIL, R_BAD_SEQ_MAIL, R_BAD_SEQ_BDAT, 0, smtp_tx_rcpt },
    [SMTP_DATA] = { "DATA", STAGE_MAIL, R_BAD_SEQ_MAIL, R_BAD_SEQ_BDAT, CMD_NO_ARGS, smtp_tx_data },
    [SMTP_BDAT] = { "BDAT", STAGE_ANY, 0, 0, 0, smtp_tx_bdat },
    [SMTP_RSET] = { "RSET", STAGE_ANY, 0, 0, 0, cmd_rset },
    [SMTP_NOOP] = { "NOOP", STAGE_ANY, 0, 0, 0, cmd_noop },
    [SMTP_QUIT] = { "QUIT", STAGE_ANY, 0, 0, CMD_STOPPING, cmd_quit },
    [SMTP_VRFY] = { "VRFY", STAGE_ANY, 0, 0, 0, cmd_vrfy },
    [SMTP_EXPN] = { "EXPN", STAGE_ANY, 0, 0, 0, cmd_expn },
    [SMTP_HELP] = { "HELP", STAGE_ANY, 0, 0, 0, cmd_help },
    [SMTP_STARTTLS] = { "STARTTLS", STAGE_ANY, 0, 0, 0, cmd_starttls },
    [SMTP_AUTH] = { "AUTH", STAGE_START | STAGE_HELO, 0, R_AUTH_IN_TX,
                    CMD_SUBMISSION | CMD_TLS | CMD_UNAUTHED, smtp_auth_command },
};

static unsigned
stage(const struct smtp_session *s)
{
    if (s->tx)
        return s->tx->data_started ? STAGE_CHUNKS : STAGE_MAIL;
    return s->helo ? STAGE_HELO : STAGE_START;
}

/* Why the row's command may not run now, or R__COUNT: it may. */
static enum reply_id
refused(const struct smtp_session *s, const struct smtp_command *c)
{
    bool submission = s->lst->kind != LISTEN_SMTP;
    if ((c->flags & CMD_SUBMISSION) && !submission)
        return R_NOT_IMPL;
    if ((c->flags & CMD_TLS) && !s->tls)
        return R_AUTH_NEEDS_TLS;
    if ((c->flags & CMD_UNAUTHED) && s->auth_user)
        return R_AUTH_ALREADY;
    unsigned now = stage(s), first = c->stages & -c->stages;
    if (!(c->stages & now))
        return now < first ? c->early : c->late;
    if ((c->flags & CMD_AUTH_FIRST) && submission && s->auth_user == NULL)
        return R_AUTH_REQUIRED;
    return R__COUNT;
}

static void
command(struct smtp_session *s, char *line)
{
    const char *args;
    enum smtp_verb v = smtp_parser_verb(line, &args);
    const struct smtp_command *c = NULL;
    if ((size_t)v < sizeof(commands) / sizeof(commands[0]) && commands[v].fn)
        c = &commands[v];
    s->commands++;
    if (s->srv->stopping && s->tx == NULL && !(c && (c->flags & CMD_STOPPING))) {
        smtp_session_reply(s, R_SHUTDOWN, NULL);
        smtp_session_close(s);
        return;
    }
    if (c == NULL) {
        smtp_session_reply(s, R_UNKNOWN_CMD, NULL);
        return;
    }
    if ((c->flags & CMD_NO_ARGS) && args[0]) {
        char why[64];
        str_fmt(why, sizeof(why), "%s takes no arguments", c->name);
        smtp_session_reply(s, R_SYNTAX, why);
        return;
    }
    enum reply_id no = refused(s, c);
    if (no != R__COUNT)
        smtp_session_reply(s, no, NULL);
    else
        c->fn(s, args);
}

/* --------------------------------------------------------------- input */

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
                    smtp_session_reply(s, R_LINE_TOO_LONG, NULL);
                s->skipping = true;
                evbuffer_drain(in, avail);
            }
            return 0;
        }
        size_t len = (size_t)p.pos;
        if (s->skipping || len > limit) {
            if (!s->skipping)
                smtp_session_reply(s, R_LINE_TOO_LONG, NULL);
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
            smtp_session_reply(s, R_SYNTAX, "NUL in command");
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
        smtp_session_reply(s, R_PROXY_BAD, NULL);
        smtp_session_close(s);
        return;
    }
    evbuffer_drain(in, (size_t)r);
    if (!res.local)
        sockaddr_str((struct sockaddr *)&res.src, s->addr, sizeof(s->addr), &s->port);
    session_start(s);
}

/* ACK the message bytes read so far at once. A client that writes the
 * end of its message (".\r\n", or a BDAT chunk's tail) on its own has it
 * held by Nagle's algorithm until the bytes before it are ACKed, and Linux
 * delays that ACK by 40 ms once the exchange looks interactive (commands
 * and replies): 40 ms between the last byte sent and our first sight of
 * it. TCP_QUICKACK sends the pending ACK now; it does not stick, so it is
 * set after every read of message bytes. Under TLS s->bev is a filter
 * without a descriptor: tls_bev_ack_now finds the socket below it. */
static void
ack_now(struct smtp_session *s)
{
    tls_bev_ack_now(s->bev);
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
            end = smtp_tx_feed(s, v[i].iov_base, len, &used);
        total += used;
        if (bdat) {
            s->bdat_left -= used;
            if (s->bdat_left == 0)
                end = true;
        }
    }
    evbuffer_drain(in, total);
    if (!end) {
        ack_now(s);
        return;
    }
    if (s->state == ST_BDAT_DISCARD) {
        s->state = ST_CMD;
        smtp_session_timeout(s, s->srv->cfg->limits.command_timeout);
        smtp_session_reply(s, s->bdat_err, NULL);
    } else if (bdat) {
        smtp_tx_chunk_end(s);
    } else {
        smtp_tx_data_end(s);
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
        case ST_PAUSE: {
            /* the rest waits for the greeting (enforce, ignore) */
            if (s->pregreeted)
                return;
            static const char *const acts[] = { "reject", "enforce", "drop", "ignore" };
            enum screen_action act = s->srv->cfg->smtp.greet_action;
            char what[100];
            s->pregreeted = true;
            log_info("%s: early talker [%s] (greet_action=%s)",
                     act == SCREEN_REJECT || act == SCREEN_DROP ? "reject" : "pregreet",
                     s->addr, acts[act]);
            snprintf(what, sizeof(what), "client [%s] sent data before the greeting", s->addr);
            smtp_screen_fail(s, act, R_EARLY_TALKER, what);
            return;
        }
        case ST_CMD:
            if (!read_line(s, line, sizeof(line)))
                return;
            command(s, line);
            break;
        case ST_AUTH:
            if (!read_line(s, line, SMTP_AUTH_LINE_MAX))
                return;
            smtp_auth_line(s, line);
            explicit_bzero(line, SMTP_AUTH_LINE_MAX);
            if (s->state == ST_AUTH && s->auth_step == AUTH_NONE)
                s->state = ST_CMD;
            break;
        case ST_DATA:
            process_data(s, false);
            break;
        case ST_BDAT:
        case ST_BDAT_DISCARD:
            if (s->bdat_left == 0 && s->state == ST_BDAT) {
                smtp_tx_chunk_end(s);
                break;
            }
            process_data(s, true);
            break;
        case ST_WAIT:
            return;
        }
    }
}
