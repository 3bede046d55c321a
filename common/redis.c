/*
 * redis.c -- the daemon's Redis client (hiredis): one connection per
 * thread and address, because a hiredis context is not thread-safe and
 * the filter hooks run on several workers at once. Connect and every reply
 * are bounded by the configured timeout; a connection that failed is
 * dropped and the next call connects again, so a Redis restart costs the
 * messages in flight a tempfail, never a hung worker.
 *
 * The configured Redis (redis_setup) may be a master found through Redis
 * Sentinel, as the Sentinel client protocol says: ask each sentinel in
 * turn for the master's address (SENTINEL get-master-addr-by-name),
 * connect, and check with ROLE that it is the master; else the next. A
 * connection error or a -READONLY reply (the master was demoted) drops the
 * connection, so the next call asks the sentinels again: after a
 * fail-over every thread follows the new master on its next command.
 * Each process that uses such a Redis also keeps one thread subscribed to
 * a sentinel's +switch-master: a fail-over drops every thread's
 * connection at once, before its next command can reach the old master.
 * AUTH (username and password) runs on every new connection; a wrong
 * password is an error that says so.
 *
 * TLS (redis { tls { } }): Debian 12's hiredis (0.14) has no TLS, so a
 * TLS connection is our own socket under OpenSSL, and hiredis is only its
 * protocol layer: commands are formatted by redisFormatCommand*, replies
 * parsed by a redisReader fed from SSL_read. The server's certificate is
 * checked against redis.tls.ca and the name dialled (or server_name)
 * before a byte of a command is sent; every read and write has the same
 * deadline as a plain connection, and a reply's unparsed bytes are bounded.
 *
 * One room though long: plain, Sentinel and TLS connections are the three
 * ways to one connection cache, with one error policy.
 */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <hiredis/hiredis.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include "util.h"

#define SLOTS 4
#define TLS_CHUNK 16384
#define TLS_PENDING_MAX ((size_t)64 << 20)     /* unparsed reply bytes held at once */
#define WATCH_IDLE_MS 10000     /* the subscriber reconnects (and asks) this often */

/* One connection: hiredis does the I/O of a plain one; a TLS one is fd
 * under ssl, with out (formatted commands not yet written) and reader. */
struct conn {
    redisContext *c;
    int fd;
    SSL *ssl;
    redisReader *reader;
    char *out;
    size_t outlen, outcap;
    unsigned timeout_ms;
    bool broken;            /* an I/O or protocol error: no more use */
    char errstr[300];
};

struct slot {
    char address[300];
    struct conn *k;
    unsigned gen;           /* of the config it was made with */
    unsigned mgen;          /* of the master it was made for (+switch-master) */
    bool stale;             /* -READONLY seen: drop before the next command */
};
struct slots { struct slot s[SLOTS]; };

static pthread_key_t key;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static pthread_mutex_t conf_mu = PTHREAD_MUTEX_INITIALIZER;
static struct redis_conf conf;      /* the configured Redis */
static bool have_conf;
static unsigned conf_gen;
static size_t sentinel_good;        /* the sentinel that answered last */
static SSL_CTX *tls_ctx;            /* redis.tls, made by redis_setup */
static char tls_err[400];           /* why there is none */
static unsigned master_gen;         /* +1 at each +switch-master (atomic) */
static pid_t watch_pid;             /* the process whose thread watches */
static __thread bool auth_refused;  /* the last connect failed on the credentials */
static __thread bool checking;      /* in redis_check: start no watcher (the master forks) */

/* ---------------------------------------------------------- connections */
static void
conn_free(struct conn **kp)
{
    struct conn *k = *kp;
    if (k == NULL)
        return;
    if (k->c)
        redisFree(k->c);
    if (k->ssl) {
        if (!k->broken)
            SSL_shutdown(k->ssl);       /* close_notify; non-blocking, never waits */
        SSL_free(k->ssl);
    }
    if (k->fd >= 0)
        close(k->fd);
    if (k->reader)
        redisReaderFree(k->reader);
    free(k->out);
    free(k);
    *kp = NULL;
}

static const char *
conn_err(const struct conn *k)
{
    const char *e = k->c ? k->c->errstr : k->errstr;
    return e[0] ? e : "no reply";
}

/* Wait until fd is ready for events, at most until deadline: 0, or -1. */
static int
wait_fd(int fd, short events, double deadline)
{
    for (;;) {
        double left = deadline - time_mono();
        if (left <= 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        struct pollfd p = { fd, events, 0 };
        int n = poll(&p, 1, (int)(left * 1000.0) + 1);
        if (n > 0)
            return 0;
        if (n == 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        if (errno != EINTR)
            return -1;
    }
}

/* After an SSL call returned ret: wait for what it wants (0: call it
 * again), or say why it failed (-1). */
static int
tls_again(struct conn *k, int ret, const char *what, double deadline)
{
    int e = SSL_get_error(k->ssl, ret);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        if (wait_fd(k->fd, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline) == 0)
            return 0;
        snprintf(k->errstr, sizeof(k->errstr), "TLS %s: %s", what,
                 errno == ETIMEDOUT ? "timed out" : strerror(errno));
    } else if (ERR_peek_error()) {
        unsigned long ee = ERR_get_error();
        char buf[200];
        ERR_error_string_n(ee, buf, sizeof(buf));
        snprintf(k->errstr, sizeof(k->errstr), "TLS %s: %s%s", what, buf,
                 ERR_GET_REASON(ee) == SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED
                     ? " (the server wants a client certificate: redis.tls.cert and key)" : "");
    } else if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && (ret == 0 || errno == 0))) {
        snprintf(k->errstr, sizeof(k->errstr), "Server closed the connection");
    } else {
        snprintf(k->errstr, sizeof(k->errstr), "TLS %s: %s", what,
                 e == SSL_ERROR_SYSCALL ? strerror(errno) : "failed");
    }
    ERR_clear_error();
    k->broken = true;
    return -1;
}

/* A TCP connection to host:port within the deadline (non-blocking). */
static int
tcp_connect(const char *host, uint16_t port, double deadline, char *err, size_t errsize)
{
    struct addrinfo hints, *res;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    char ps[8];
    snprintf(ps, sizeof(ps), "%u", (unsigned)port);
    int g = getaddrinfo(host, ps, &hints, &res);
    if (g != 0) {
        snprintf(err, errsize, "%s", gai_strerror(g));
        return -1;
    }
    int fd = -1;
    snprintf(err, errsize, "no address");
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    ai->ai_protocol);
        if (fd < 0)
            continue;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        if (errno == EINPROGRESS && wait_fd(fd, POLLOUT, deadline) == 0) {
            int soerr = 0;
            socklen_t sl = sizeof(soerr);
            if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0)
                break;
            errno = soerr;
        }
        snprintf(err, errsize, "%s", errno == ETIMEDOUT ? "Connection timed out" : strerror(errno));
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd >= 0) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    return fd;
}

/* TCP, then the TLS handshake, which checks the server's certificate
 * against redis.tls.ca and the name: nothing else is sent before. */
static struct conn *
tls_open(const char *address, const char *host, uint16_t port, unsigned timeout_ms, char *err,
         size_t errsize)
{
    char name[256], why[400];
    pthread_mutex_lock(&conf_mu);
    SSL_CTX *ctx = tls_ctx;
    if (ctx)
        SSL_CTX_up_ref(ctx);
    str_copy(name, conf.tls_server_name[0] ? conf.tls_server_name : host, sizeof(name));
    str_copy(why, tls_err[0] ? tls_err : "redis.tls is not set up", sizeof(why));
    pthread_mutex_unlock(&conf_mu);
    if (ctx == NULL) {
        snprintf(err, errsize, "redis %s: %s", address, why);
        return NULL;
    }
    double deadline = time_mono() + timeout_ms / 1000.0;
    int fd = tcp_connect(host, port, deadline, why, sizeof(why));
    if (fd < 0) {
        SSL_CTX_free(ctx);
        snprintf(err, errsize, "redis %s: %s", address, why);
        return NULL;
    }
    struct conn *k = xcalloc(1, sizeof(*k));
    k->fd = fd;
    k->timeout_ms = timeout_ms;
    k->ssl = SSL_new(ctx);
    SSL_CTX_free(ctx);
    k->reader = redisReaderCreate();
    if (k->ssl == NULL || k->reader == NULL || SSL_set_fd(k->ssl, fd) != 1) {
        snprintf(err, errsize, "redis %s: TLS: out of memory", address);
        k->broken = true;
        conn_free(&k);
        return NULL;
    }
    unsigned char ipbuf[16];
    bool ip = inet_pton(AF_INET, name, ipbuf) == 1 || inet_pton(AF_INET6, name, ipbuf) == 1;
    X509_VERIFY_PARAM *vp = SSL_get0_param(k->ssl);
    if (ip) {
        X509_VERIFY_PARAM_set1_ip_asc(vp, name);
    } else {
        SSL_set_tlsext_host_name(k->ssl, name);
        X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        X509_VERIFY_PARAM_set1_host(vp, name, 0);
    }
    SSL_set_verify(k->ssl, SSL_VERIFY_PEER, NULL);
    for (;;) {
        ERR_clear_error();
        int r = SSL_connect(k->ssl);
        if (r == 1)
            return k;
        if (tls_again(k, r, "handshake", deadline) == 0)
            continue;
        long v = SSL_get_verify_result(k->ssl);
        if (v != X509_V_OK)
            snprintf(err, errsize,
                     "redis %s: TLS: the server's certificate does not verify: %s"
                     " (check redis.tls.ca and redis.tls.server_name; the name checked is %s)",
                     address, X509_verify_cert_error_string(v), name);
        else
            snprintf(err, errsize, "redis %s: %s", address, k->errstr);
        conn_free(&k);
        return NULL;
    }
}

static struct conn *
conn_open(const char *address, bool tls, unsigned timeout_ms, char *err, size_t errsize)
{
    struct timeval tv = { (time_t)(timeout_ms / 1000), (suseconds_t)(timeout_ms % 1000) * 1000 };
    redisContext *c;
    if (address[0] == '/') {
        if (tls) {
            snprintf(err, errsize, "redis %s: TLS needs \"host:port\"", address);
            return NULL;
        }
        c = redisConnectUnixWithTimeout(address, tv);
    } else {
        char host[256];
        uint16_t port;
        if (hostport_split(address, host, sizeof(host), &port) < 0) {
            snprintf(err, errsize, "redis '%s' is not host:port or a socket path", address);
            return NULL;
        }
        if (tls)
            return tls_open(address, host, port, timeout_ms, err, errsize);
        c = redisConnectWithTimeout(host, port, tv);
    }
    if (c == NULL || c->err) {
        snprintf(err, errsize, "redis %s: %s", address, c ? c->errstr : "out of memory");
        if (c)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    struct conn *k = xcalloc(1, sizeof(*k));
    k->c = c;
    k->fd = -1;
    k->timeout_ms = timeout_ms;
    return k;
}

static void
conn_set_timeout(struct conn *k, unsigned timeout_ms)
{
    k->timeout_ms = timeout_ms;
    if (k->c) {
        struct timeval tv = { (time_t)(timeout_ms / 1000),
                              (suseconds_t)(timeout_ms % 1000) * 1000 };
        redisSetTimeout(k->c, tv);
    }
}

static int
out_add(struct conn *k, const char *cmd, int n)
{
    if (n < 0) {
        snprintf(k->errstr, sizeof(k->errstr), "cannot format the command");
        return REDIS_ERR;
    }
    if (k->outlen + (size_t)n > k->outcap) {
        size_t cap = k->outcap ? k->outcap : 1024;
        while (cap < k->outlen + (size_t)n)
            cap *= 2;
        k->out = xrealloc(k->out, cap);
        k->outcap = cap;
    }
    memcpy(k->out + k->outlen, cmd, (size_t)n);
    k->outlen += (size_t)n;
    return REDIS_OK;
}

static int
conn_append_argv(struct conn *k, int argc, const char **argv, const size_t *lens)
{
    if (k->c)
        return redisAppendCommandArgv(k->c, argc, argv, lens);
    char *cmd = NULL;
    int n = redisFormatCommandArgv(&cmd, argc, argv, lens);
    int r = out_add(k, cmd, n);
    redisFreeCommand(cmd);
    return r;
}

static int
conn_vappend(struct conn *k, const char *fmt, va_list ap)
{
    if (k->c)
        return redisvAppendCommand(k->c, fmt, ap);
    char *cmd = NULL;
    int n = redisvFormatCommand(&cmd, fmt, ap);
    int r = out_add(k, cmd, n);
    if (n >= 0)
        redisFreeCommand(cmd);
    return r;
}

/* Write what is pending, within the deadline. */
static int
tls_flush(struct conn *k, double deadline)
{
    size_t done = 0;
    while (done < k->outlen) {
        size_t n = k->outlen - done;
        ERR_clear_error();
        int w = SSL_write(k->ssl, k->out + done, n > (1u << 30) ? (int)(1u << 30) : (int)n);
        if (w > 0)
            done += (size_t)w;
        else if (tls_again(k, w, "write", deadline) < 0)
            return REDIS_ERR;
    }
    k->outlen = 0;
    return REDIS_OK;
}

/* The next reply: from what was read already, else write what is
 * pending and read (SSL_read into the reader) until one is whole. */
static int
conn_get_reply(struct conn *k, void **reply)
{
    *reply = NULL;
    if (k->c)
        return redisGetReply(k->c, reply);
    if (k->broken)
        return REDIS_ERR;
    double deadline = time_mono() + k->timeout_ms / 1000.0;
    if (redisReaderGetReply(k->reader, reply) != REDIS_OK)
        goto protocol;
    if (*reply)
        return REDIS_OK;
    if (k->outlen && tls_flush(k, deadline) != REDIS_OK)
        return REDIS_ERR;
    for (;;) {
        char buf[TLS_CHUNK];
        ERR_clear_error();
        int n = SSL_read(k->ssl, buf, sizeof(buf));
        if (n <= 0) {
            if (tls_again(k, n, "read", deadline) < 0)
                return REDIS_ERR;
            continue;
        }
        if (k->reader->len - k->reader->pos + (size_t)n > TLS_PENDING_MAX) {
            snprintf(k->errstr, sizeof(k->errstr), "a reply over %zu bytes", TLS_PENDING_MAX);
            k->broken = true;
            return REDIS_ERR;
        }
        if (redisReaderFeed(k->reader, buf, (size_t)n) != REDIS_OK ||
            redisReaderGetReply(k->reader, reply) != REDIS_OK)
            goto protocol;
        if (*reply)
            return REDIS_OK;
    }
protocol:
    snprintf(k->errstr, sizeof(k->errstr), "Protocol error: %s", k->reader->errstr);
    k->broken = true;
    return REDIS_ERR;
}

static int
conn_vappend_1(struct conn *k, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = conn_vappend(k, fmt, ap);
    va_end(ap);
    return r;
}

static redisReply *
conn_command(struct conn *k, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = conn_vappend(k, fmt, ap);
    va_end(ap);
    void *rep = NULL;
    if (r != REDIS_OK || conn_get_reply(k, &rep) != REDIS_OK)
        return NULL;
    return rep;
}

/* ---------------------------------------------------------------- setup */
static SSL_CTX *
tls_ctx_new(const struct redis_conf *rc, char *err, size_t errsize)
{
    char why[300];
    SSL_CTX *ctx = tls_client_ctx(rc->tls_ca, why, sizeof(why));
    if (ctx == NULL) {
        snprintf(err, errsize, "redis.tls.ca: %s", why);
        return NULL;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (rc->tls_cert[0] && (SSL_CTX_use_certificate_chain_file(ctx, rc->tls_cert) != 1 ||
                            SSL_CTX_use_PrivateKey_file(ctx, rc->tls_key, SSL_FILETYPE_PEM) != 1 ||
                            SSL_CTX_check_private_key(ctx) != 1)) {
        char buf[200];
        ERR_error_string_n(ERR_get_error(), buf, sizeof(buf));
        snprintf(err, errsize, "redis.tls.cert and key (%s, %s): %s", rc->tls_cert, rc->tls_key,
                 buf);
        ERR_clear_error();
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

void
redis_setup(const struct redis_conf *rc)
{
    char why[400] = "";
    SSL_CTX *ctx = rc->tls ? tls_ctx_new(rc, why, sizeof(why)) : NULL;
    pthread_mutex_lock(&conf_mu);
    conf = *rc;
    have_conf = true;
    conf_gen++;
    sentinel_good = 0;
    SSL_CTX *old = tls_ctx;
    tls_ctx = ctx;
    str_copy(tls_err, why, sizeof(tls_err));
    pthread_mutex_unlock(&conf_mu);
    SSL_CTX_free(old);          /* connections made with it hold their own reference */
}

static void
slots_free(void *p)
{
    struct slots *ss = p;
    for (size_t i = 0; i < SLOTS; i++)
        conn_free(&ss->s[i].k);
    free(ss);
}

static void
key_init(void)
{
    if (pthread_key_create(&key, slots_free) != 0)
        fatal("redis: pthread_key_create failed");
}

static struct slots *
thread_slots(void)
{
    pthread_once(&once, key_init);
    struct slots *ss = pthread_getspecific(key);
    if (ss == NULL) {
        ss = xcalloc(1, sizeof(*ss));
        pthread_setspecific(key, ss);
    }
    return ss;
}

static struct slot *
slot_of(const char *address)
{
    struct slots *ss = thread_slots();
    struct slot *free_slot = NULL;
    for (size_t i = 0; i < SLOTS; i++) {
        if (ss->s[i].address[0] && strcmp(ss->s[i].address, address) == 0)
            return &ss->s[i];
        if (free_slot == NULL && ss->s[i].address[0] == '\0')
            free_slot = &ss->s[i];
    }
    if (free_slot == NULL) {            /* more addresses than slots: reuse the first */
        free_slot = &ss->s[0];
        conn_free(&free_slot->k);
    }
    str_copy(free_slot->address, address, sizeof(free_slot->address));
    return free_slot;
}

/* AUTH on a new connection when a password is configured; -1 with a
 * clear error for a wrong one. */
static int
auth(struct conn *k, const struct redis_conf *rc, const char *where, char *err, size_t errsize)
{
    if (rc->password[0] == '\0')
        return 0;
    const char *argv[3] = { "AUTH", rc->username, rc->password };
    size_t lens[3] = { 4, strlen(rc->username), strlen(rc->password) };
    int argc = 3;
    if (rc->username[0] == '\0') {
        argv[1] = rc->password;
        lens[1] = lens[2];
        argc = 2;
    }
    void *rep = NULL;
    if (conn_append_argv(k, argc, argv, lens) != REDIS_OK || conn_get_reply(k, &rep) != REDIS_OK)
        rep = NULL;
    redisReply *r = rep;
    if (r == NULL) {
        snprintf(err, errsize, "redis %s: AUTH: %s", where, conn_err(k));
        return -1;
    }
    int rc_ = 0;
    if (r->type == REDIS_REPLY_ERROR) {
        auth_refused = true;
        snprintf(err, errsize,
                 "redis %s: AUTH failed, check redis.username and redis.password: %.*s", where,
                 (int)r->len, r->str);
        rc_ = -1;
    }
    freeReplyObject(r);
    return rc_;
}

/* Is the server at k the master? */
static bool
is_master(struct conn *k)
{
    redisReply *r = conn_command(k, "ROLE");
    bool yes = r && r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
               r->element[0]->type == REDIS_REPLY_STRING && strcmp(r->element[0]->str, "master") == 0;
    if (r)
        freeReplyObject(r);
    return yes;
}

/* "host:port" of the master in a reply to get-master-addr-by-name, or "". */
static void
master_of(const redisReply *r, char *out, size_t size)
{
    out[0] = '\0';
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[0]->type == REDIS_REPLY_STRING && r->element[1]->type == REDIS_REPLY_STRING) {
        bool v6 = strchr(r->element[0]->str, ':') != NULL;
        snprintf(out, size, "%s%s%s:%s", v6 ? "[" : "", r->element[0]->str, v6 ? "]" : "",
                 r->element[1]->str);
    }
}

/* The master through the sentinels: each in turn (starting with the one
 * that answered last), at most one round. */
static struct conn *
sentinel_connect(const struct redis_conf *rc, unsigned timeout_ms, char *err, size_t errsize)
{
    pthread_mutex_lock(&conf_mu);
    size_t first = sentinel_good;
    pthread_mutex_unlock(&conf_mu);
    char why[600] = "no sentinel answered";
    for (size_t n = 0; n < rc->nsentinels; n++) {
        size_t i = (first + n) % rc->nsentinels;
        const char *sa = rc->sentinels[i];
        struct conn *sk = conn_open(sa, rc->tls && rc->sentinel_tls, timeout_ms, why, sizeof(why));
        if (sk == NULL)
            continue;
        redisReply *r = conn_command(sk, "SENTINEL get-master-addr-by-name %s", rc->master);
        char master[300];
        master_of(r, master, sizeof(master));
        if (master[0] == '\0' && r && r->type == REDIS_REPLY_ERROR)
            snprintf(why, sizeof(why), "sentinel %s: %.*s", sa, (int)r->len, r->str);
        else if (master[0] == '\0')
            snprintf(why, sizeof(why), "sentinel %s: %s", sa,
                     r ? "does not know the master" : conn_err(sk));
        if (r)
            freeReplyObject(r);
        conn_free(&sk);
        if (master[0] == '\0')
            continue;
        struct conn *k = conn_open(master, rc->tls, timeout_ms, why, sizeof(why));
        if (k == NULL)
            continue;
        if (auth(k, rc, master, err, errsize) < 0) {
            conn_free(&k);
            return NULL;            /* a wrong password is wrong everywhere */
        }
        if (!is_master(k)) {
            snprintf(why, sizeof(why), "sentinel %s names %s, which is not a master", sa, master);
            conn_free(&k);
            continue;
        }
        pthread_mutex_lock(&conf_mu);
        sentinel_good = i;
        pthread_mutex_unlock(&conf_mu);
        return k;
    }
    snprintf(err, errsize, "redis %s: no master found through the sentinels: %s", rc->address,
             why);
    return NULL;
}

/* ------------------------------------------------------ +switch-master */
/* One sentinel, subscribed: ask for the master and subscribe in one
 * write (the sentinel runs both before any fail-over step, so no switch
 * falls between), then read events. A switch, or a master other than the
 * one seen before, bumps master_gen. Returns 1 after WATCH_IDLE_MS with
 * nothing (ask again), -1 on an error (try the next sentinel). */
static int
watch_one(const struct redis_conf *rc, size_t i, char *last, size_t lastsize)
{
    char err[600];
    struct conn *k = conn_open(rc->sentinels[i], rc->tls && rc->sentinel_tls, rc->timeout_ms, err,
                               sizeof(err));
    if (k == NULL)
        return -1;
    void *rep = NULL;
    int ok = conn_vappend_1(k, "SENTINEL get-master-addr-by-name %s", rc->master) == REDIS_OK &&
             conn_vappend_1(k, "SUBSCRIBE +switch-master") == REDIS_OK &&
             conn_get_reply(k, &rep) == REDIS_OK;
    char now[300] = "";
    if (ok)
        master_of(rep, now, sizeof(now));
    if (rep)
        freeReplyObject(rep);
    rep = NULL;
    if (!ok || now[0] == '\0' || conn_get_reply(k, &rep) != REDIS_OK) {
        if (rep)
            freeReplyObject(rep);
        conn_free(&k);
        return -1;
    }
    freeReplyObject(rep);           /* the subscribe confirmation */
    int rc_ = -1;
    for (;;) {
        if (last[0] && strcmp(last, now) != 0) {
            __atomic_add_fetch(&master_gen, 1, __ATOMIC_SEQ_CST);
            log_info("redis %s: the sentinels switched the master to %s, following it",
                     rc->address, now);
        }
        str_copy(last, now, lastsize);
        conn_set_timeout(k, WATCH_IDLE_MS);
        double t0 = time_mono();
        rep = NULL;
        if (conn_get_reply(k, &rep) != REDIS_OK) {
            rc_ = time_mono() - t0 >= WATCH_IDLE_MS / 1000.0 - 0.1 ? 1 : -1;
            break;
        }
        redisReply *r = rep;
        /* "message" "+switch-master" "NAME OLDIP OLDPORT NEWIP NEWPORT" */
        char name[128], oldip[64], oldport[8], ip[64], port[8];
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
            r->element[2]->type == REDIS_REPLY_STRING &&
            sscanf(r->element[2]->str, "%127s %63s %7s %63s %7s", name, oldip, oldport, ip,
                   port) == 5 &&
            strcmp(name, rc->master) == 0) {
            bool v6 = strchr(ip, ':') != NULL;
            snprintf(now, sizeof(now), "%s%s%s:%s", v6 ? "[" : "", ip, v6 ? "]" : "", port);
        }
        freeReplyObject(r);
    }
    conn_free(&k);
    return rc_;
}

static void *
watch_main(void *arg)
{
    (void)arg;
    char last[300] = "";
    for (;;) {
        struct redis_conf rc;
        pthread_mutex_lock(&conf_mu);
        rc = conf;
        size_t first = sentinel_good;
        pthread_mutex_unlock(&conf_mu);
        if (rc.nsentinels == 0)
            return NULL;
        bool any = false;
        for (size_t n = 0; n < rc.nsentinels; n++) {
            size_t i = (first + n) % rc.nsentinels;
            int r;
            while ((r = watch_one(&rc, i, last, sizeof(last))) == 1)
                any = true;
            (void)r;
        }
        if (!any) {
            struct timespec ts = { 1, 0 };
            nanosleep(&ts, NULL);
        }
    }
}

/* Once per process that uses sentinels: the subscriber thread (with no
 * signals: they stay the role's). */
static void
watch_start(void)
{
    pid_t me = getpid();
    pthread_mutex_lock(&conf_mu);
    if (watch_pid != me) {
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        pthread_t t;
        if (pthread_create(&t, &attr, watch_main, NULL) == 0)
            watch_pid = me;
        else
            log_warn("redis: cannot start the +switch-master subscriber: %s", strerror(errno));
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        pthread_attr_destroy(&attr);
    }
    pthread_mutex_unlock(&conf_mu);
}

/* ------------------------------------------------------------- commands */
static struct conn *
redis_conn(const char *address, unsigned timeout_ms, char *err, size_t errsize)
{
    if (address == NULL || address[0] == '\0') {
        snprintf(err, errsize, "no redis.address configured");
        return NULL;
    }
    struct slot *s = slot_of(address);
    pthread_mutex_lock(&conf_mu);
    unsigned gen = conf_gen;
    bool ours = have_conf && strcmp(conf.address, address) == 0;
    bool sentinels = ours && conf.nsentinels > 0;
    bool watched = !sentinels || watch_pid == getpid();     /* asked only when it matters */
    pthread_mutex_unlock(&conf_mu);
    if (sentinels && !watched && !checking)
        watch_start();
    unsigned mgen = __atomic_load_n(&master_gen, __ATOMIC_SEQ_CST);
    if (s->k && (s->stale || s->gen != gen || (sentinels && s->mgen != mgen)))
        conn_free(&s->k);
    s->stale = false;
    if (s->k)
        return s->k;
    struct conn *k;
    if (ours) {
        struct redis_conf rc;           /* a copy: redis_setup may run meanwhile */
        pthread_mutex_lock(&conf_mu);
        rc = conf;
        pthread_mutex_unlock(&conf_mu);
        if (rc.nsentinels) {
            k = sentinel_connect(&rc, timeout_ms, err, errsize);
        } else if ((k = conn_open(address, rc.tls, timeout_ms, err, errsize)) != NULL &&
                   auth(k, &rc, address, err, errsize) < 0) {
            conn_free(&k);
        }
    } else {
        k = conn_open(address, false, timeout_ms, err, errsize);
    }
    if (k == NULL)
        return NULL;
    s->k = k;
    s->gen = gen;
    s->mgen = mgen;
    return k;
}

void
redis_drop(const char *address)
{
    struct slot *s = slot_of(address);
    conn_free(&s->k);
    s->stale = false;
}

/* A reply that is an error is a failure too: the caller sees why. */
static struct redisReply *
checked(const char *address, struct conn *k, redisReply *rep, char *err, size_t errsize)
{
    if (rep == NULL) {
        snprintf(err, errsize, "redis %s: %s", address, conn_err(k));
        redis_drop(address);
        return NULL;
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        bool readonly = strncmp(rep->str, "READONLY", 8) == 0;
        if (strncmp(rep->str, "NOAUTH", 6) == 0)
            auth_refused = true;
        snprintf(err, errsize, "redis %s: %.*s%s", address, (int)rep->len, rep->str,
                 strncmp(rep->str, "NOAUTH", 6) == 0 ? " (set redis.password)"
                 : readonly ? " (a replica now: finding the master again)" : "");
        if (readonly)
            slot_of(address)->stale = true;     /* pipelined replies may follow */
        freeReplyObject(rep);
        return NULL;
    }
    return rep;
}

struct redisReply *
redis_vcmd(const char *address, unsigned timeout_ms, char *err, size_t errsize, const char *fmt,
           va_list ap)
{
    /* A command refused by a demoted master ran nowhere: once more, on
     * the master the sentinels name now. */
    for (int attempt = 0;; attempt++) {
        struct conn *k = redis_conn(address, timeout_ms, err, errsize);
        if (k == NULL)
            return NULL;
        va_list aq;
        va_copy(aq, ap);
        void *rep = NULL;
        if (conn_vappend(k, fmt, aq) != REDIS_OK || conn_get_reply(k, &rep) != REDIS_OK)
            rep = NULL;
        va_end(aq);
        redisReply *r = checked(address, k, rep, err, errsize);
        if (r || attempt == 1 || !slot_of(address)->stale)
            return r;
    }
}

struct redisReply *
redis_cmd(const char *address, unsigned timeout_ms, char *err, size_t errsize, const char *fmt,
          ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *rep = redis_vcmd(address, timeout_ms, err, errsize, fmt, ap);
    va_end(ap);
    return rep;
}

int
redis_append(const char *address, unsigned timeout_ms, char *err, size_t errsize, int argc,
             const char **argv, const size_t *lens)
{
    struct conn *k = redis_conn(address, timeout_ms, err, errsize);
    if (k == NULL)
        return -1;
    if (conn_append_argv(k, argc, argv, lens) != REDIS_OK) {
        snprintf(err, errsize, "redis %s: %s", address, conn_err(k));
        redis_drop(address);
        return -1;
    }
    return 0;
}

struct redisReply *
redis_reply(const char *address, unsigned timeout_ms, char *err, size_t errsize)
{
    (void)timeout_ms;
    struct conn *k = slot_of(address)->k;     /* the pipeline's, even when stale */
    if (k == NULL) {
        snprintf(err, errsize, "redis %s: the connection was lost", address);
        return NULL;
    }
    void *rep = NULL;
    if (conn_get_reply(k, &rep) != REDIS_OK)
        rep = NULL;
    return checked(address, k, rep, err, errsize);
}

/* redis_reply_numbers: the reader's objects made into numbers where they
 * stand, with no reply object for each element (a Bayes lookup is two
 * arrays of some 300 counts a message). The reader of the calling
 * thread's connection uses these for one reply; a reply is read whole
 * before the reader goes on, so the ones pipelined after it are the
 * usual objects again. */
struct numbers {
    double *vals;
    size_t n;
    bool shaped;                /* an array of n strings or nils, so far */
    bool error;                 /* an error reply */
    char why[200];
};
static __thread struct numbers *numbers;
static char numbers_obj;        /* what each create returns: nothing to free */

static void
numbers_shape(const redisReadTask *t)
{
    if (t->parent == NULL || t->parent->parent != NULL || t->idx < 0 ||
        (size_t)t->idx >= numbers->n)
        numbers->shaped = false;
}

static void *
numbers_string(const redisReadTask *t, char *str, size_t len)
{
    if (t->parent == NULL && t->type == REDIS_REPLY_ERROR) {
        numbers->error = true;
        snprintf(numbers->why, sizeof(numbers->why), "%.*s", (int)(len < 190 ? len : 190), str);
        return &numbers_obj;
    }
    numbers_shape(t);
    if (numbers->shaped) {
        char num[40];
        char *end;
        if (t->type == REDIS_REPLY_STRING && len > 0 && len < sizeof(num)) {
            memcpy(num, str, len);
            num[len] = '\0';
            numbers->vals[t->idx] = strtod(num, &end);
        } else {
            numbers->vals[t->idx] = 0;  /* as strtod reads what is no number */
        }
    }
    return &numbers_obj;
}

static void *
numbers_array(const redisReadTask *t, int elements)
{
    if (t->parent != NULL || elements < 0 || (size_t)elements != numbers->n)
        numbers->shaped = false;
    return &numbers_obj;
}

static void *
numbers_integer(const redisReadTask *t, long long v)
{
    (void)v;
    numbers_shape(t);
    numbers->shaped = false;
    return &numbers_obj;
}

static void *
numbers_nil(const redisReadTask *t)
{
    numbers_shape(t);
    if (numbers->shaped)
        numbers->vals[t->idx] = 0;
    return &numbers_obj;
}

static void
numbers_free(void *obj)
{
    (void)obj;
}

static redisReplyObjectFunctions numbers_fn = {
    numbers_string, numbers_array, numbers_integer, numbers_nil, numbers_free,
};

int
redis_reply_numbers(const char *address, unsigned timeout_ms, double *vals, size_t n, char *err,
                    size_t errsize)
{
    (void)timeout_ms;
    struct conn *k = slot_of(address)->k;
    if (k == NULL) {
        snprintf(err, errsize, "redis %s: the connection was lost", address);
        return -1;
    }
    redisReader *rd = k->c ? k->c->reader : k->reader;
    struct numbers nb = { .vals = vals, .n = n, .shaped = true };
    redisReplyObjectFunctions *was = rd->fn;
    rd->fn = &numbers_fn;
    numbers = &nb;
    void *rep = NULL;
    int rc = conn_get_reply(k, &rep);
    if (rc != REDIS_OK || rep == NULL) {
        snprintf(err, errsize, "redis %s: %s", address, conn_err(k));
        redis_drop(address);        /* freed with these functions: nothing of ours leaks */
        numbers = NULL;
        return -1;
    }
    rd->fn = was;
    numbers = NULL;
    if (nb.error) {
        snprintf(err, errsize, "redis %s: %s", address, nb.why);
        if (strncmp(nb.why, "READONLY", 8) == 0)
            slot_of(address)->stale = true;
        return -1;
    }
    return nb.shaped ? 0 : 1;
}

void
redis_reply_free(struct redisReply *r)
{
    if (r)
        freeReplyObject(r);
}

int
redis_check(const char *address, unsigned timeout_ms, char *err, size_t errsize)
{
    auth_refused = false;
    pthread_mutex_lock(&conf_mu);
    bool bad_tls = have_conf && conf.tls && tls_ctx == NULL && strcmp(conf.address, address) == 0;
    if (bad_tls)
        snprintf(err, errsize, "%s", tls_err);
    pthread_mutex_unlock(&conf_mu);
    if (bad_tls)
        return -2;              /* a config error: the files are not there or do not match */
    checking = true;
    redisReply *r = redis_cmd(address, timeout_ms, err, errsize, "PING");
    checking = false;
    redis_reply_free(r);
    redis_drop(address);        /* nothing open to pass on to a fork */
    return r ? 0 : auth_refused ? -2 : -1;
}
