/*
 * smtp_verify.c -- recipient verification for relay domains at RCPT (a
 * domain's verify), so that mail for a recipient the next hop would refuse
 * is refused here with 550 5.1.1 and never bounced later (backscatter):
 *
 *   static   the domain's verify_addresses and verify_file, read with the
 *            config (so again at every SIGHUP), looked up at once;
 *   callout  the domain's next hop (relay_to) asked on a worker: greeting,
 *            EHLO, MAIL FROM:<>, RCPT TO:<addr>, QUIT, the whole bounded by
 *            smtp.callout_timeout. Its answer is cached in Redis,
 *            moat:callout:ADDR = "1" (2xx) for callout_positive_ttl or "0"
 *            (5xx to the RCPT) for callout_negative_ttl. A next hop that
 *            is down, slow, refuses us or answers 4xx gives no answer:
 *            451 4.4.3, never 550, and nothing is cached. Without Redis
 *            (or with Redis away) every RCPT is asked anew.
 *   ldap     the domain's directory asked on a worker (smtp_ldap.c), the
 *            same way and with the same cache and lifetimes, under
 *            moat:ldap:ADDR; a directory down or slow is no answer.
 *
 * Either way the result comes back through smtp_tx_verified.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <hiredis/hiredis.h>
#include "../common/mail.h"
#include "smtp_private.h"

#define CALLOUT_LINE_MAX 2048
#define CALLOUT_LINES_MAX 100

struct callout {
    struct smtp_session *s;
    char addr[SMTP_ADDR_MAX + 1];
    char relay_to[300];
    char hostname[256];
    char redis[300];
    unsigned redis_ms, timeout, pos_ttl, neg_ttl;
    bool by_ldap;               /* ask ldap (verify = "ldap"), not relay_to */
    struct conf_ldap ldap;      /* a copy: the worker owns it */
    enum smtp_verify_result result;
    char detail[300];           /* what the next hop said, or why there was no answer */
    bool cached;
    /* the conversation */
    int fd;
    double deadline;
    char buf[CALLOUT_LINE_MAX + 1];
    size_t blen;
};

/* ---- the conversation with the next hop, on a worker */

static int
wait_fd(struct callout *c, short events)
{
    double left = c->deadline - time_now();
    if (left <= 0)
        return -1;
    struct pollfd p = { c->fd, events, 0 };
    int r = poll(&p, 1, (int)(left * 1000) + 1);
    return r > 0 ? 0 : -1;
}

static int
co_connect(struct callout *c)
{
    char host[256];
    uint16_t port;
    struct sockaddr_storage ss;
    socklen_t len;
    if (hostport_split(c->relay_to, host, sizeof(host), &port) < 0)
        return -1;
    if (sockaddr_parse(host, port, &ss, &len) < 0) {
        struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai = NULL;
        char ps[8];
        snprintf(ps, sizeof(ps), "%u", port);
        if (getaddrinfo(host, ps, &hints, &ai) != 0 || ai == NULL)
            return -1;
        memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
        len = ai->ai_addrlen;
        freeaddrinfo(ai);
    }
    c->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return -1;
    if (connect(c->fd, (struct sockaddr *)&ss, len) < 0 && errno != EINPROGRESS)
        return -1;
    if (wait_fd(c, POLLOUT) < 0)
        return -1;
    int err = 0;
    socklen_t el = sizeof(err);
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err != 0)
        return -1;
    return 0;
}

static int
co_send(struct callout *c, const char *line)
{
    size_t n = strlen(line), off = 0;
    while (off < n) {
        if (wait_fd(c, POLLOUT) < 0)
            return -1;
        ssize_t w = send(c->fd, line + off, n - off, MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN && errno != EINTR)
            return -1;
        if (w > 0)
            off += (size_t)w;
    }
    return 0;
}

/* One line of a reply in buf[0..len): see gateway.h. */
int
smtp_verify_reply_line(const char *buf, size_t len, size_t *used_r, int *code_r, bool *last_r,
                       char *text, size_t textsize)
{
    if (len > CALLOUT_LINE_MAX)
        len = CALLOUT_LINE_MAX;
    const char *eol = memchr(buf, '\n', len);
    if (eol == NULL)
        return len == CALLOUT_LINE_MAX ? -1 : 0;
    size_t n = (size_t)(eol - buf), tl = n;
    if (tl && buf[tl - 1] == '\r')
        tl--;
    *used_r = n + 1;
    *last_r = tl < 4 || buf[3] != '-';
    *code_r = tl >= 3 && (tl == 3 || buf[3] == ' ' || buf[3] == '-') && buf[0] >= '1' &&
                      buf[0] <= '5' && buf[1] >= '0' && buf[1] <= '9' && buf[2] >= '0' &&
                      buf[2] <= '9'
                  ? (buf[0] - '0') * 100 + (buf[1] - '0') * 10 + (buf[2] - '0')
                  : -1;
    if (textsize > 0) {
        size_t o = 0;
        for (size_t i = 0; i < tl && o + 1 < textsize; i++) {
            unsigned char ch = (unsigned char)buf[i];
            text[o++] = ch < 32 || ch == 127 ? ' ' : (char)ch;
        }
        text[o] = '\0';
    }
    return 1;
}

/* One reply (all its lines): its code, the last line into detail; -1 when
 * the next hop went away, was too slow or sent what is not a reply. */
static int
co_reply(struct callout *c)
{
    for (unsigned lines = 0; lines < CALLOUT_LINES_MAX;) {
        size_t used;
        int code;
        bool last;
        int r = smtp_verify_reply_line(c->buf, c->blen, &used, &code, &last, c->detail,
                                       sizeof(c->detail));
        if (r < 0)
            return -1;
        if (r == 0) {
            if (wait_fd(c, POLLIN) < 0)
                return -1;
            ssize_t got = recv(c->fd, c->buf + c->blen, CALLOUT_LINE_MAX - c->blen, 0);
            if (got < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (got <= 0)
                return -1;
            c->blen += (size_t)got;
            continue;
        }
        memmove(c->buf, c->buf + used, c->blen - used);
        c->blen -= used;
        lines++;
        if (code < 0)
            return -1;
        if (last)
            return code;
    }
    return -1;
}

static int
co_command(struct callout *c, const char *line)
{
    return co_send(c, line) < 0 ? -1 : co_reply(c);
}

static void
callout_ask(struct callout *c)
{
    char line[SMTP_ADDR_MAX + 300];
    int code;
    c->result = SMTP_VERIFY_TRYLATER;
    c->deadline = time_now() + c->timeout;
    if (co_connect(c) < 0) {
        snprintf(c->detail, sizeof(c->detail), "cannot connect to %s", c->relay_to);
        return;
    }
    if (co_reply(c) != 220)
        goto noanswer;
    snprintf(line, sizeof(line), "EHLO %s\r\n", c->hostname);
    code = co_command(c, line);
    if (code >= 500) {
        snprintf(line, sizeof(line), "HELO %s\r\n", c->hostname);
        code = co_command(c, line);
    }
    /* an 8-bit address needs SMTPUTF8 (a next hop without it: no answer) */
    bool utf8 = false;
    for (const char *p = c->addr; *p; p++)
        utf8 |= (unsigned char)*p >= 0x80;
    if (code != 250 || co_command(c, utf8 ? "MAIL FROM:<> SMTPUTF8\r\n" : "MAIL FROM:<>\r\n") != 250)
        goto noanswer;
    snprintf(line, sizeof(line), "RCPT TO:<%s>\r\n", c->addr);
    code = co_command(c, line);
    if (code >= 200 && code < 300)
        c->result = SMTP_VERIFY_KNOWN;
    else if (code >= 500)
        c->result = SMTP_VERIFY_UNKNOWN;
    else if (code < 0)
        goto noanswer;
    co_send(c, "QUIT\r\n");     /* its answer is not waited for */
    return;
noanswer:
    if (c->detail[0] == '\0')
        snprintf(c->detail, sizeof(c->detail), "no answer from %s", c->relay_to);
}

static void
callout_work(void *arg)
{
    struct callout *c = arg;
    char key[SMTP_ADDR_MAX + 20], err[256];
    c->fd = -1;
    snprintf(key, sizeof(key), "moat:%s:%s", c->by_ldap ? "ldap" : "callout", c->addr);
    for (char *p = key; *p; p++)            /* one cache entry whatever the case */
        *p = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
    if (c->redis[0]) {
        redisReply *r = redis_cmd(c->redis, c->redis_ms, err, sizeof(err), "GET %s", key);
        if (r && r->type == REDIS_REPLY_STRING && (r->str[0] == '1' || r->str[0] == '0')) {
            c->result = r->str[0] == '1' ? SMTP_VERIFY_KNOWN : SMTP_VERIFY_UNKNOWN;
            c->cached = true;
            str_copy(c->detail, "cached", sizeof(c->detail));
        }
        redis_reply_free(r);
        if (c->cached)
            return;
    }
    if (c->by_ldap)
        c->result = smtp_ldap_ask(&c->ldap, c->addr, c->detail, sizeof(c->detail));
    else
        callout_ask(c);
    if (c->fd >= 0)
        close(c->fd);
    if (c->redis[0] && c->result != SMTP_VERIFY_TRYLATER) {
        bool known = c->result == SMTP_VERIFY_KNOWN;
        redisReply *r = redis_cmd(c->redis, c->redis_ms, err, sizeof(err), "SET %s %s EX %u",
                                  key, known ? "1" : "0", known ? c->pos_ttl : c->neg_ttl);
        if (r == NULL)
            log_warn("%s <%s>: not cached: %s", c->by_ldap ? "ldap" : "callout", c->addr, err);
        redis_reply_free(r);
    }
}

static void
callout_done(void *arg)
{
    struct callout *c = arg;
    struct smtp_session *s = c->s;
    static const char *const names[] = { "known", "unknown", "no answer" };
    log_info("%s <%s> via %s: %s%s (%s)", c->by_ldap ? "ldap" : "callout", c->addr,
             c->by_ldap ? c->ldap.uri : c->relay_to, names[c->result], c->cached ? ", cached" : "",
             c->detail);
    if (!s->free_when_idle) {
        s->state = ST_CMD;
        smtp_tx_verified(s, c->addr, c->result, c->detail);
    }
    explicit_bzero(c->ldap.bind_password, sizeof(c->ldap.bind_password));
    free(c);
    if (s->state != ST_WAIT)    /* else the chain's RCPT hooks have the session */
        smtp_session_resume(s);
}

void
smtp_verify_rcpt(struct smtp_session *s, const struct domain_conf *dc, const char *addr)
{
    const struct moat_config *cfg = s->srv->cfg;
    if (dc->verify == VERIFY_STATIC) {
        bool known = conf_verify_known(dc, addr);
        smtp_tx_verified(s, addr, known ? SMTP_VERIFY_KNOWN : SMTP_VERIFY_UNKNOWN,
                         "static list");
        return;
    }
    struct callout *c = xcalloc(1, sizeof(*c));
    c->s = s;
    str_copy(c->addr, addr, sizeof(c->addr));
    str_copy(c->relay_to, dc->relay_to, sizeof(c->relay_to));
    str_copy(c->hostname, cfg->hostname, sizeof(c->hostname));
    str_copy(c->redis, cfg->redis.address, sizeof(c->redis));
    c->redis_ms = cfg->redis.timeout_ms;
    c->timeout = cfg->smtp.callout_timeout;
    c->pos_ttl = cfg->smtp.callout_positive_ttl;
    c->neg_ttl = cfg->smtp.callout_negative_ttl;
    if (dc->verify == VERIFY_LDAP && dc->ldap) {
        c->by_ldap = true;
        c->ldap = *dc->ldap;
    }
    s->state = ST_WAIT;
    smtp_session_wait(s);
    workq_submit(s->srv->workq, callout_work, callout_done, c);
}
