/*
 * store.c -- the store role: POP3 (110, 995), IMAP (143, 993) and
 * ManageSieve (4190) over the mail store. One event loop; the protocol modules parse and answer, this
 * file owns the connections: accepting, TLS (implicit or STLS/STARTTLS),
 * timeouts, logins (checked on a worker, with failed logins slowed down and
 * refused for a while, per client address), and jobs for the workers.
 * SIGUSR2 (a reload): stop accepting, finish the open sessions, exit.
 *
 * What one client can take is bounded: connections per client address
 * (an IPv6 client by its /64), counted and refused at accept before
 * anything is allocated; store.login_timeout of silence before login; the
 * input buffered (INPUT_HIGH) and the output queued (a client that does
 * not read its answers is not served more), both 16 KB before login.
 * Password checks run on a worker pool of their own, so mailbox work
 * never holds up a login.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/listener.h>
#include <openssl/ssl.h>
#include <gmime/gmime.h>
#include <malloc.h>
#include <zlib.h>
#include "../common/mail.h"
#include "store_private.h"

#define OUTPUT_HIGH (1u << 20)      /* queued output: no more commands are read */
#define OUTPUT_LOW (256u << 10)     /* ... until it is down to this */
#define INPUT_HIGH (256u << 10)     /* read from the socket at most */
#define PREAUTH_HIGH (16u << 10)    /* both, before login */
#define TLS_UNDER_HIGH (64u << 10)  /* STARTTLS: read below the TLS filter (a record is 16 KB) */
#define CLIENT_BUCKETS 1024
#define AUTH_THREADS 2
/* Mailbox work: most of it waits on the disk (fsync, rename, read), so
 * more threads than cores; a command's time on one is bounded anyway
 * (store.command_time, FETCH in steps). */
#define STORE_THREADS 8

/* The connections of one client (store_conn.client). */
struct client_slot {
    struct client_slot *next;
    unsigned conns;
    char key[ADDR_KEY_MAX];
};

static void conn_free(struct store_conn *c);

/* ------------------------------------------------------------ output */

void
store_write_raw(struct store_conn *c, const void *data, size_t len)
{
    if (!c->closing)
        bufferevent_write(c->bev, data, len);
}

void
store_write(struct store_conn *c, const char *fmt, ...)
{
    char buf[8192];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof(buf))
        n = (int)sizeof(buf) - 1;
    store_write_raw(c, buf, (size_t)n);
}

static void
free_later(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    conn_free(arg);
}

static void
schedule_free(struct store_conn *c)
{
    if (c->freeing)
        return;
    c->freeing = true;
    bufferevent_disable(c->bev, EV_READ | EV_WRITE);
    event_base_once(c->srv->base, -1, EV_TIMEOUT, free_later, c, NULL);
}

/* Bytes not yet handed to the kernel: ours, those of a COMPRESS layer, and
 * under TLS the socket's (with close_notify behind the last reply, once
 * the layers above have nothing left). */
static size_t
out_pending(struct store_conn *c)
{
    size_t n = 0;
    struct bufferevent *b = c->bev;
    while (bufferevent_openssl_get_ssl(b) == NULL && bufferevent_get_underlying(b)) {
        n += evbuffer_get_length(bufferevent_get_output(b));
        b = bufferevent_get_underlying(b);
    }
    return n > 0 ? n : tls_bev_finish(b);
}

void
store_ack_now(struct store_conn *c)
{
    tls_bev_ack_now(c->bev);
}

static void
linger_check(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct store_conn *c = arg;
    if ((out_pending(c) == 0 || ++c->linger_ticks > 100) && !c->busy) {
        event_free(c->linger);
        c->linger = NULL;
        schedule_free(c);
    }
}

/* Free once the last reply is out (a TLS filter's bytes sit below it). */
static void
finish_close(struct store_conn *c)
{
    if (c->busy || c->freeing || c->linger)
        return;
    if (out_pending(c) == 0) {
        schedule_free(c);
        return;
    }
    c->linger = event_new(c->srv->base, -1, EV_PERSIST, linger_check, c);
    struct timeval tv = { 0, 50000 };
    event_add(c->linger, &tv);
}

static void
write_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    struct store_conn *c = arg;
    if (c->closing) {
        finish_close(c);
    } else if (c->drained) {
        void (*fn)(struct store_conn *) = c->drained;
        c->drained = NULL;
        fn(c);
    } else if (!c->busy) {
        store_resume(c);        /* pipelined input that waited for the output */
    }
}

void
store_when_drained(struct store_conn *c, void (*fn)(struct store_conn *c))
{
    /* the write callback runs when the output is down to OUTPUT_LOW (its
     * low-water mark); under STARTTLS the socket's own buffer below holds
     * at most OUTPUT_LOW more (store_starttls) */
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) <= OUTPUT_LOW) {
        fn(c);
        return;
    }
    c->drained = fn;
}

void
store_close(struct store_conn *c)
{
    c->closing = true;
    bufferevent_disable(c->bev, EV_READ);
    finish_close(c);
}

static void
read_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    struct store_conn *c = arg;
    if (c->busy || c->closing || c->drained)
        return;
    /* a client that does not read its replies is not served more, nor
     * read from, until it has read them (write_cb) */
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) > (c->user ? OUTPUT_HIGH : PREAUTH_HIGH)) {
        bufferevent_disable(c->bev, EV_READ);
        return;
    }
    c->ops->input(c);
}

static void
event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    struct store_conn *c = arg;
    if (what & BEV_EVENT_TIMEOUT) {
        if (!c->closing && !c->busy) {
            if (c->partial)
                ;                   /* no line into the middle of an answer */
            else if (c->proto == PROTO_IMAP)
                store_write(c, "* BYE Autologout; idle for too long\r\n");
            else if (c->proto == PROTO_SIEVE)
                store_write(c, "BYE \"Autologout; idle for too long\"\r\n");
            else
                store_write(c, "-ERR Autologout; idle for too long\r\n");
            store_close(c);
        } else if (!c->closing) {
            c->closing = true;      /* not reading what it is sent: freed when the job ends */
        }
        return;
    }
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        c->closing = true;
        if (!c->busy)
            schedule_free(c);       /* the peer is gone: nothing to linger for */
    }
}

/* Before login a connection may be silent for store.login_timeout; after
 * it, for the protocol's idle time. The same bounds a client that does
 * not read what it is sent. */
static void
set_timeouts(struct store_conn *c)
{
    unsigned secs = c->user ? c->ops->idle_timeout : c->srv->cfg->store.login_timeout;
    struct timeval tv = { (time_t)secs, 0 };
    bufferevent_set_timeouts(c->bev, &tv, &tv);
}

/* The buffers' bounds (OUTPUT_LOW, INPUT_HIGH; smaller before login). */
static void
set_watermarks(struct store_conn *c)
{
    bufferevent_setwatermark(c->bev, EV_READ, 0, c->user ? INPUT_HIGH : PREAUTH_HIGH);
    bufferevent_setwatermark(c->bev, EV_WRITE, c->user ? OUTPUT_LOW : 0, 0);
}

/* ------------------------------------------------------------ logins */

const char *
store_proto_name(const struct store_conn *c)
{
    return c->proto == PROTO_IMAP ? "imap" : c->proto == PROTO_SIEVE ? "sieve" : "pop3";
}

bool
store_may_login(const struct store_conn *c)
{
    if (c->tls)
        return true;
    struct in_addr a4;
    return strcmp(c->addr, "::1") == 0 ||
           (inet_pton(AF_INET, c->addr, &a4) == 1 && (ntohl(a4.s_addr) >> 24) == 127);
}

struct login_job {
    struct store_conn *c;
    struct authlimit *limit;
    char addr[64];
    bool refused;               /* too many failures: not checked */
    char user[330], pass[512];
    struct account_login login;     /* what to check, copied on the loop */
    char mailbox[1200];         /* its Maildir, made on the first login */
    char err[512];
    bool ok;
    store_login_fn *done;
    double delay;
};

static void
login_work(void *arg)
{
    struct login_job *j = arg;
    /* authlimit may ask Redis (the counts of every node): here, not on the loop */
    j->refused = authlimit_blocked(j->limit, j->addr, j->user) > 0;
    j->ok = !j->refused && accounts_check_login(&j->login, j->pass) == 1;
    explicit_bzero(j->pass, sizeof(j->pass));
    if (j->ok)
        authlimit_ok(j->limit, j->addr, j->user);
    else if (!j->refused)
        j->delay = authlimit_failed(j->limit, j->addr, j->user);
    /* the mailbox, made here on the first login (directories and
     * fsyncs: not on the loop) */
    if (j->ok && j->mailbox[0] && mailstore_create(j->mailbox, j->err, sizeof(j->err)) == 0)
        j->err[0] = '\0';
}

static void
login_finish(struct login_job *j)
{
    struct store_conn *c = j->c;
    c->busy = false;
    if (c->closing) {
        finish_close(c);
    } else {
        j->done(c, j->ok, j->ok ? NULL : j->refused
                              ? "Too many failed logins from your address, try again later"
                              : "Authentication failed");
        store_resume(c);
    }
    explicit_bzero(j, sizeof(*j));
    free(j);
}

static void
delay_fire(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct login_job *j = arg;
    event_free(j->c->delay);
    j->c->delay = NULL;
    login_finish(j);
}

static void
login_done(void *arg)
{
    struct login_job *j = arg;
    struct store_conn *c = j->c;
    struct store_server *srv = c->srv;
    if (j->refused) {
        log_info("login refused: rip=%s: too many failures", c->addr);
        login_finish(j);
        return;
    }
    if (j->ok) {
        if (j->mailbox[0]) {
            free(c->user);
            c->user = xstrdup(j->user);
            str_copy(c->mailbox, j->mailbox, sizeof(c->mailbox));
            set_timeouts(c);
            set_watermarks(c);
            if (j->err[0])
                log_err("%s: %s", j->user, j->err);
            log_info("login: user=<%s>, rip=%s, %s, %s", j->user, c->addr,
                     store_proto_name(c), c->tls ? "TLS" : "plaintext");
        } else {
            j->ok = false;
        }
        login_finish(j);
        return;
    }
    log_info("login failed: user=<%s>, rip=%s, %s", j->user, c->addr, store_proto_name(c));
    double wait = j->delay;
    struct timeval tv = { (time_t)wait, (suseconds_t)((wait - (double)(time_t)wait) * 1e6) };
    c->delay = evtimer_new(srv->base, delay_fire, j);
    evtimer_add(c->delay, &tv);
}

void
store_login(struct store_conn *c, const char *user, const char *pass, store_login_fn *done)
{
    struct store_server *srv = c->srv;
    struct login_job *j = xcalloc(1, sizeof(*j));
    j->c = c;
    j->limit = srv->authlimit;
    str_copy(j->addr, c->addr, sizeof(j->addr));
    j->done = done;
    str_copy(j->user, user, sizeof(j->user));
    for (char *p = j->user; *p; p++)
        *p = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
    str_copy(j->pass, pass, sizeof(j->pass));
    const struct accounts_file *af = accounts_get(srv->accounts);
    accounts_login_prepare(srv->cfg->state_dir, accounts_find(af, ACCT_USER, j->user), &j->login);
    accounts_put(&af);
    if (mailstore_path(srv->cfg->state_dir, j->user, j->mailbox, sizeof(j->mailbox)) < 0)
        j->mailbox[0] = '\0';
    j->err[0] = '\0';
    c->busy = true;
    bufferevent_disable(c->bev, EV_READ);
    workq_submit(srv->authq, login_work, login_done, j);
}

/* -------------------------------------------------------------- jobs */

struct job_wrap {
    struct store_conn *c;
    workq_fn *work, *done;
    void *arg;
};

static void
job_work(void *arg)
{
    struct job_wrap *w = arg;
    w->work(w->arg);
}

static void
job_done(void *arg)
{
    struct job_wrap *w = arg;
    struct store_conn *c = w->c;
    c->busy = false;
    w->done(w->arg);
    free(w);
    if (c->closing)
        finish_close(c);
}

void
store_job(struct store_conn *c, workq_fn *work, workq_fn *done, void *arg)
{
    struct job_wrap *w = xcalloc(1, sizeof(*w));
    *w = (struct job_wrap){ c, work, done, arg };
    c->busy = true;
    bufferevent_disable(c->bev, EV_READ);
    workq_submit(c->srv->workq, job_work, job_done, w);
}

void
store_resume(struct store_conn *c)
{
    if (c->closing || c->busy)
        return;
    bufferevent_enable(c->bev, EV_READ);
    if (evbuffer_get_length(bufferevent_get_input(c->bev)) > 0)
        c->ops->input(c);
}

/* --------------------------------------------------------------- TLS */

int
store_starttls(struct store_conn *c)
{
    if (c->srv->tls == NULL || c->tls)
        return -1;
    SSL *ssl = SSL_new(c->srv->tls);
    if (ssl == NULL)
        return -1;
    /* what the client sent after the command is dropped: no plaintext
     * injection into the TLS session (as CVE-2011-0411 for SMTP) */
    evbuffer_drain(bufferevent_get_input(c->bev), evbuffer_get_length(bufferevent_get_input(c->bev)));
    struct bufferevent *tb = bufferevent_openssl_filter_new(
        c->srv->base, c->bev, ssl, BUFFEREVENT_SSL_ACCEPTING,
        BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    if (tb == NULL) {
        SSL_free(ssl);
        return -1;
    }
    /* the plaintext socket below: the TLS filter writes into it only up
     * to OUTPUT_LOW and keeps the rest in its own buffer, where the
     * write callback sees it */
    struct bufferevent *under = c->bev;
    bufferevent_set_timeouts(under, NULL, NULL);
    bufferevent_setwatermark(under, EV_WRITE, 0, OUTPUT_LOW);
    bufferevent_setwatermark(under, EV_READ, 0, TLS_UNDER_HIGH);
    c->bev = tb;
    c->tls = true;
    bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
    set_timeouts(c);
    set_watermarks(c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    return 0;
}

/* ---------------------------------------------------------- COMPRESS */

/* DEFLATE (RFC 4978: raw deflate both ways) as a filter over the
 * connection's bufferevent. Inflating stops at the filter's read bound,
 * so a small compressed input cannot fill memory; the output is flushed
 * (Z_SYNC_FLUSH) with every piece, as an interactive protocol needs. */
struct zfilter {
    z_stream in, out;
};

static enum bufferevent_filter_result
inflate_filter(struct evbuffer *src, struct evbuffer *dst, ev_ssize_t limit,
               enum bufferevent_flush_mode mode, void *arg)
{
    (void)mode;
    struct zfilter *z = arg;
    size_t room = limit > 0 ? (size_t)limit : 65536;
    while (evbuffer_get_length(src) > 0 && room > 0) {
        struct evbuffer_iovec in;
        if (evbuffer_peek(src, -1, NULL, &in, 1) < 1)
            break;
        struct evbuffer_iovec out;
        size_t want = room < 16384 ? room : 16384;
        if (evbuffer_reserve_space(dst, (ev_ssize_t)want, &out, 1) < 1)
            return BEV_ERROR;
        z->in.next_in = in.iov_base;
        z->in.avail_in = (uInt)in.iov_len;
        z->in.next_out = out.iov_base;
        z->in.avail_out = (uInt)(want < out.iov_len ? want : out.iov_len);
        uInt had = z->in.avail_out;
        int rc = inflate(&z->in, Z_SYNC_FLUSH);
        if (rc != Z_OK && rc != Z_BUF_ERROR && rc != Z_STREAM_END)
            return BEV_ERROR;
        size_t made = had - z->in.avail_out, used = in.iov_len - z->in.avail_in;
        out.iov_len = made;
        evbuffer_commit_space(dst, &out, 1);
        evbuffer_drain(src, used);
        room -= made;
        if (made == 0 && used == 0)
            break;
    }
    return evbuffer_get_length(dst) ? BEV_OK : BEV_NEED_MORE;
}

static enum bufferevent_filter_result
deflate_filter(struct evbuffer *src, struct evbuffer *dst, ev_ssize_t limit,
               enum bufferevent_flush_mode mode, void *arg)
{
    (void)limit;
    (void)mode;
    struct zfilter *z = arg;
    if (evbuffer_get_length(src) == 0)
        return BEV_NEED_MORE;
    char buf[16384];
    while (evbuffer_get_length(src) > 0) {
        struct evbuffer_iovec in;
        if (evbuffer_peek(src, -1, NULL, &in, 1) < 1)
            break;
        z->out.next_in = in.iov_base;
        z->out.avail_in = (uInt)in.iov_len;
        do {
            z->out.next_out = (Bytef *)buf;
            z->out.avail_out = sizeof(buf);
            if (deflate(&z->out, Z_SYNC_FLUSH) == Z_STREAM_ERROR)
                return BEV_ERROR;
            evbuffer_add(dst, buf, sizeof(buf) - z->out.avail_out);
        } while (z->out.avail_out == 0);
        evbuffer_drain(src, in.iov_len - z->out.avail_in);
    }
    return BEV_OK;
}

static void
zfilter_free(void *arg)
{
    struct zfilter *z = arg;
    inflateEnd(&z->in);
    deflateEnd(&z->out);
    free(z);
}

int
store_compress(struct store_conn *c)
{
    struct zfilter *z = xcalloc(1, sizeof(*z));
    /* inflate takes any window the client used (32 KB); ours is 1 KB with
     * little memory: about 60 KB a connection in all */
    if (inflateInit2(&z->in, -15) != Z_OK) {
        free(z);
        return -1;
    }
    if (deflateInit2(&z->out, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -10, 5, Z_DEFAULT_STRATEGY) != Z_OK) {
        inflateEnd(&z->in);
        free(z);
        return -1;
    }
    struct bufferevent *under = c->bev;
    struct bufferevent *zb = bufferevent_filter_new(under, inflate_filter, deflate_filter,
                                                    BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS,
                                                    zfilter_free, z);
    if (zb == NULL) {
        zfilter_free(z);
        return -1;
    }
    /* the one below holds at most OUTPUT_LOW, the rest waits above it
     * where the write callback sees it (store_when_drained) */
    bufferevent_set_timeouts(under, NULL, NULL);
    bufferevent_setwatermark(under, EV_WRITE, 0, OUTPUT_LOW);
    bufferevent_setwatermark(under, EV_READ, 0, TLS_UNDER_HIGH);
    c->bev = zb;
    c->compressed = true;
    bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
    set_timeouts(c);
    set_watermarks(c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    /* what the client sent after the command is compressed already */
    if (evbuffer_get_length(bufferevent_get_input(under)) > 0)
        bufferevent_trigger(under, EV_READ, BEV_TRIG_IGNORE_WATERMARKS);
    return 0;
}

/* -------------------------------------------------- clients and slots */

static size_t
client_bucket(const char *key)
{
    uint32_t h = 2166136261u;               /* FNV-1a */
    for (const char *p = key; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return h % CLIENT_BUCKETS;
}

static struct client_slot *
client_find(struct store_server *srv, const char *key)
{
    struct client_slot *s = srv->clients[client_bucket(key)];
    while (s && strcmp(s->key, key) != 0)
        s = s->next;
    return s;
}

static struct client_slot *
client_take(struct store_server *srv, const char *key)
{
    struct client_slot *s = client_find(srv, key);
    if (s == NULL) {
        size_t b = client_bucket(key);
        s = xcalloc(1, sizeof(*s));
        str_copy(s->key, key, sizeof(s->key));
        s->next = srv->clients[b];
        srv->clients[b] = s;
    }
    s->conns++;
    return s;
}

static void
client_drop(struct store_server *srv, struct client_slot *slot)
{
    if (slot == NULL || --slot->conns > 0)
        return;
    for (struct client_slot **pp = &srv->clients[client_bucket(slot->key)]; *pp; pp = &(*pp)->next)
        if (*pp == slot) {
            *pp = slot->next;
            free(slot);
            return;
        }
}

/* A connection over a limit: told so in one line (in plaintext only: a
 * TLS handshake is not done for it) and closed at once, nothing allocated
 * for it. One log line a second at most, with the count since. */
static void
refuse(struct store_server *srv, const struct store_listener *l, evutil_socket_t fd,
       const char *addr, const char *why)
{
    bool pop3 = l->kind == LISTEN_POP3 || l->kind == LISTEN_POP3S;
    bool sieve = l->kind == LISTEN_SIEVE;
    if (l->kind == LISTEN_POP3 || l->kind == LISTEN_IMAP || sieve) {
        char line[200];
        int n = sieve ? snprintf(line, sizeof(line), "BYE \"%s\"\r\n", why)
                      : snprintf(line, sizeof(line), "%s %s\r\n", pop3 ? "-ERR [SYS/TEMP]" : "* BYE", why);
        ssize_t w = send(fd, line, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL);
        (void)w;
    }
    evutil_closesocket(fd);
    double now = time_mono();
    if (now - srv->refused_logged >= 1.0) {
        log_info("connection refused: rip=%s, %s: %s (%u more refused since the last such line)",
                 addr, pop3 ? "pop3" : sieve ? "sieve" : "imap", why, srv->refused_quiet);
        srv->refused_logged = now;
        srv->refused_quiet = 0;
    } else {
        srv->refused_quiet++;
    }
}

/* ------------------------------------------------------- connections */

static void
conn_free(struct store_conn *c)
{
    struct store_server *srv = c->srv;
    if (c->ops->free)
        c->ops->free(c);
    if (c->delay)
        event_free(c->delay);
    if (c->linger)
        event_free(c->linger);
    bufferevent_free(c->bev);
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    client_drop(srv, c->client);
    free(c->user);
    free(c);
    srv->nconn--;
    if (srv->retiring && srv->nconn == 0)
        event_base_loopexit(srv->base, NULL);
}

static void
accept_cb(struct evconnlistener *evl, evutil_socket_t fd, struct sockaddr *sa, int socklen,
          void *arg)
{
    (void)evl;
    (void)socklen;
    struct store_listener *l = arg;
    struct store_server *srv = l->srv;
    /* the limits first, before anything is allocated for the connection */
    char addr[sizeof(((struct store_conn *)0)->addr)], key[ADDR_KEY_MAX];
    uint16_t port;
    sockaddr_str(sa, addr, sizeof(addr), &port);
    addr_limit_key(addr, key, sizeof(key));
    const struct client_slot *slot = client_find(srv, key);
    if (srv->nconn >= srv->cfg->limits.connections) {
        refuse(srv, l, fd, addr, "Too many connections, try again later");
        return;
    }
    if (slot && slot->conns >= srv->cfg->limits.connections_per_ip) {
        refuse(srv, l, fd, addr, "Too many connections from your address");
        return;
    }
    struct store_conn *c = xcalloc(1, sizeof(*c));
    c->srv = srv;
    str_copy(c->addr, addr, sizeof(c->addr));
    c->proto = l->kind == LISTEN_POP3 || l->kind == LISTEN_POP3S ? PROTO_POP3
               : l->kind == LISTEN_SIEVE ? PROTO_SIEVE : PROTO_IMAP;
    c->ops = c->proto == PROTO_POP3 ? &pop3_ops : c->proto == PROTO_SIEVE ? &managesieve_ops : &imap_ops;
    evutil_make_socket_nonblocking(fd);
    /* a reply's last segment must not wait for the client's delayed ACK */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    bool implicit = l->kind == LISTEN_POP3S || l->kind == LISTEN_IMAPS;
    if (implicit && srv->tls) {
        SSL *ssl = SSL_new(srv->tls);
        c->bev = bufferevent_openssl_socket_new(srv->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
        c->tls = true;
    } else {
        c->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
        if (c->bev)
            bufferevent_set_max_single_write(c->bev, OUTPUT_LOW);
    }
    if (c->bev == NULL) {
        evutil_closesocket(fd);
        free(c);
        return;
    }
    c->client = client_take(srv, key);
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    srv->nconn++;
    bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
    set_timeouts(c);
    set_watermarks(c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    c->ops->start(c);
}

static void
on_sigterm(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct store_server *srv = arg;
    for (size_t i = 0; i < srv->nlisteners; i++)
        evconnlistener_disable(srv->listeners[i].evl);
    for (struct store_conn *c = srv->conns; c; c = c->next)
        if (!c->closing) {
            if (!c->partial)
                store_write(c, c->proto == PROTO_IMAP ? "* BYE Server shutting down\r\n"
                               : c->proto == PROTO_SIEVE ? "BYE \"Server shutting down\"\r\n"
                                                         : "-ERR Server shutting down\r\n");
            store_close(c);
        }
    struct timeval tv = { 2, 0 };
    event_base_loopexit(srv->base, &tv);
}

static void
on_retire(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct store_server *srv = arg;
    srv->retiring = true;
    for (size_t i = 0; i < srv->nlisteners; i++)
        evconnlistener_disable(srv->listeners[i].evl);
    log_info("store role retiring: %u sessions open", srv->nconn);
    if (srv->nconn == 0)
        event_base_loopexit(srv->base, NULL);
}

static void
warm_dummy_hash(void *arg)
{
    (void)arg;
    accounts_check_hash(NULL, "");
}

int
store_main(const struct moat_config *cfg, const struct role_env *env)
{
    static struct store_server srv;
    memset(&srv, 0, sizeof(srv));
    srv.cfg = cfg;
    srv.base = event_base_new();
    if (srv.base == NULL)
        fatal("event_base_new failed");
    srv.tls = env->tls;
    /* An answer's buffers are allocated on a worker and freed on the
     * loop once sent, 256 KB a FETCH step: at glibc's default (trim at
     * 128 KB free) every step gave its memory back with madvise, which
     * flushed the TLB on every core running one of our threads, and took
     * it again with a page fault per 4 KB on the next step. Keep 4 MB
     * per arena; allocations up to 1 MB (a 256 KB body read whole) from
     * the heap, not a mapping each (setting one threshold stops glibc
     * moving the other). */
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
    mallopt(M_TRIM_THRESHOLD, 4 << 20);
    g_mime_init();                  /* SEARCH decodes header fields with it */
    srv.workq = workq_new(srv.base, STORE_THREADS);
    srv.authq = workq_new(srv.base, AUTH_THREADS);
    /* the dummy hash for unknown users, made now: the first of them is
     * not slower to refuse than the rest */
    workq_submit(srv.authq, warm_dummy_hash, NULL, NULL);
    srv.clients = xcalloc(CLIENT_BUCKETS, sizeof(*srv.clients));
    srv.authlimit = authlimit_new();
    authlimit_set_redis(srv.authlimit, cfg->redis.address, cfg->redis.timeout_ms);
    char err[512];
    srv.accounts = accounts_cache_new(cfg->state_dir, err, sizeof(err));
    if (srv.accounts == NULL)
        fatal("accounts: %s", err);
    srv.listeners = xcalloc(env->nlisten ? env->nlisten : 1, sizeof(*srv.listeners));
    srv.nlisteners = env->nlisten;
    for (size_t i = 0; i < env->nlisten; i++) {
        struct store_listener *l = &srv.listeners[i];
        l->srv = &srv;
        l->kind = (enum listen_kind)env->listen_kind[i];
        evutil_make_socket_nonblocking(env->listen_fds[i]);
        l->evl = evconnlistener_new(srv.base, accept_cb, l, LEV_OPT_CLOSE_ON_FREE, 0,
                                    env->listen_fds[i]);
        if (l->evl == NULL)
            fatal("evconnlistener_new failed");
    }
    srv.sig_term = evsignal_new(srv.base, SIGTERM, on_sigterm, &srv);
    srv.sig_retire = evsignal_new(srv.base, SIGUSR2, on_retire, &srv);
    event_add(srv.sig_term, NULL);
    event_add(srv.sig_retire, NULL);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    role_ready(env, "store");
    event_base_dispatch(srv.base);
    log_info("store role exits");
    workq_free(&srv.workq);
    workq_free(&srv.authq);
    return 0;
}
