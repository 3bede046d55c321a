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
 *
 * What Redis holds, the role also keeps a copy of in memory (memo_*, on
 * the event loop only): a RCPT whose answer is there is answered at once,
 * without a worker, a Redis round trip or a wait of the session. A copy is
 * made only of an answer Redis holds (read from it, or just written to
 * it), and lives until that Redis entry expires (GET and PTTL are asked in
 * one round trip) but never longer than MEMO_TTL_MAX. So a node never
 * answers from memory what no node could still answer from Redis: the
 * nodes agree as they did, and an entry deleted from Redis by hand is
 * forgotten by every node within MEMO_TTL_MAX. Without Redis nothing is
 * kept, and every RCPT is asked anew, as before.
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
#define MEMO_SLOTS 1024         /* answers kept in memory, one per slot */
#define MEMO_TTL_MAX 60.0       /* seconds a copy is kept at most */
#define CACHE_KEY_MAX (SMTP_ADDR_MAX + 20)

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
    char key[CACHE_KEY_MAX];    /* moat:callout:addr or moat:ldap:addr, lower case */
    double keep;                /* seconds Redis still holds the answer; 0: it does not */
    /* the conversation */
    int fd;
    double deadline;
    char buf[CALLOUT_LINE_MAX + 1];
    size_t blen;
};

/* ---- the answers Redis holds, kept in memory (on the event loop only) */

struct memo {
    char key[CACHE_KEY_MAX];
    double until;               /* time_mono(); 0: empty */
    enum smtp_verify_result result;
};
static struct memo *memo;       /* MEMO_SLOTS, made at the first use */

static void
cache_key(char *key, size_t size, bool by_ldap, const char *addr)
{
    str_fmt(key, size, "moat:%s:%s", by_ldap ? "ldap" : "callout", addr);
    str_lower(key);                         /* one cache entry whatever the case */
}

static struct memo *
memo_slot(const char *key)
{
    if (memo == NULL)
        memo = xcalloc(MEMO_SLOTS, sizeof(*memo));
    return &memo[str_hash(STR_HASH_INIT, key) % MEMO_SLOTS];
}

/* The answer kept for key: true and *r, or false. */
static bool
memo_get(const char *key, enum smtp_verify_result *r)
{
    struct memo *m = memo_slot(key);
    if (m->until == 0 || strcmp(m->key, key) != 0)
        return false;
    if (time_mono() >= m->until) {
        m->until = 0;
        return false;
    }
    *r = m->result;
    return true;
}

/* Keep what Redis holds for keep seconds more (at most MEMO_TTL_MAX). */
static void
memo_put(const char *key, enum smtp_verify_result r, double keep)
{
    if (keep <= 0 || r == SMTP_VERIFY_TRYLATER)
        return;
    struct memo *m = memo_slot(key);
    str_copy(m->key, key, sizeof(m->key));
    m->result = r;
    m->until = time_mono() + (keep < MEMO_TTL_MAX ? keep : MEMO_TTL_MAX);
}

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

/* The cached answer and how long Redis keeps it yet, in one round trip
 * (GET and PTTL pipelined): true when Redis has one. */
static bool
cache_get(struct callout *c)
{
    char err[256];
    const char *get[] = { "GET", c->key }, *pttl[] = { "PTTL", c->key };
    size_t lens[] = { 3, strlen(c->key) }, plens[] = { 4, strlen(c->key) };
    if (redis_append(c->redis, c->redis_ms, err, sizeof(err), 2, get, lens) < 0)
        return false;
    bool sent = redis_append(c->redis, c->redis_ms, err, sizeof(err), 2, pttl, plens) == 0;
    redisReply *r = redis_reply(c->redis, c->redis_ms, err, sizeof(err));
    redisReply *t = sent ? redis_reply(c->redis, c->redis_ms, err, sizeof(err)) : NULL;
    if (r && r->type == REDIS_REPLY_STRING && (r->str[0] == '1' || r->str[0] == '0')) {
        c->result = r->str[0] == '1' ? SMTP_VERIFY_KNOWN : SMTP_VERIFY_UNKNOWN;
        c->cached = true;
        str_copy(c->detail, "cached", sizeof(c->detail));
        /* -1: kept with no lifetime (set by hand), so the longest copy */
        if (t && t->type == REDIS_REPLY_INTEGER)
            c->keep = t->integer == -1 ? MEMO_TTL_MAX : (double)t->integer / 1000.0;
    }
    redis_reply_free(r);
    redis_reply_free(t);
    return c->cached;
}

static void
callout_work(void *arg)
{
    struct callout *c = arg;
    char err[256];
    c->fd = -1;
    if (c->redis[0] && cache_get(c))
        return;
    if (c->by_ldap)
        c->result = smtp_ldap_ask(&c->ldap, c->addr, c->detail, sizeof(c->detail));
    else
        callout_ask(c);
    if (c->fd >= 0)
        close(c->fd);
    if (c->redis[0] && c->result != SMTP_VERIFY_TRYLATER) {
        bool known = c->result == SMTP_VERIFY_KNOWN;
        unsigned ttl = known ? c->pos_ttl : c->neg_ttl;
        redisReply *r = redis_cmd(c->redis, c->redis_ms, err, sizeof(err), "SET %s %s EX %u",
                                  c->key, known ? "1" : "0", ttl);
        if (r == NULL)
            log_warn("%s <%s>: not cached: %s", c->by_ldap ? "ldap" : "callout", c->addr, err);
        else
            c->keep = ttl;
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
    memo_put(c->key, c->result, c->keep);
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
    bool by_ldap = dc->verify == VERIFY_LDAP && dc->ldap;
    char key[CACHE_KEY_MAX];
    enum smtp_verify_result known;
    cache_key(key, sizeof(key), by_ldap, addr);
    if (cfg->redis.address[0] && memo_get(key, &known)) {
        smtp_tx_verified(s, addr, known, "cached");
        return;
    }
    struct callout *c = xcalloc(1, sizeof(*c));
    c->s = s;
    str_copy(c->key, key, sizeof(c->key));
    str_copy(c->addr, addr, sizeof(c->addr));
    str_copy(c->relay_to, dc->relay_to, sizeof(c->relay_to));
    str_copy(c->hostname, cfg->hostname, sizeof(c->hostname));
    str_copy(c->redis, cfg->redis.address, sizeof(c->redis));
    c->redis_ms = cfg->redis.timeout_ms;
    c->timeout = cfg->smtp.callout_timeout;
    c->pos_ttl = cfg->smtp.callout_positive_ttl;
    c->neg_ttl = cfg->smtp.callout_negative_ttl;
    if (by_ldap) {
        c->by_ldap = true;
        c->ldap = *dc->ldap;
    }
    s->state = ST_WAIT;
    smtp_session_wait(s);
    workq_submit(s->srv->workq, callout_work, callout_done, c);
}
