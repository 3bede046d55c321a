/*
 * web_cluster.c -- quarantine actions on a message another node holds:
 * the request to that node, signed with the cluster's secret, and the
 * check of such a request on the node that holds the file.
 *
 *   POST /api/v1/cluster/quarantine/ID/ACTION      (show, release, delete, learn)
 *   X-Moat-Node: FROM TIME NONCE HMAC
 *   {"user": ..., "role": "user|admin|superadmin", "domains": [...],
 *    "recipient": ..., "as": ...}
 *
 * HMAC is HMAC-SHA256 under node.secret of "moat-node-1\nFROM\nTIME\nNONCE\n
 * PATH\nBODY", in hex. The holder takes it only with a secret of its own,
 * within 60 s of its clock, with a nonce not seen before (kept in Redis)
 * and the right HMAC; it then acts for the principal named in the body,
 * with the same tenant rules as for its own users. Without the secret
 * nobody can make such a request: a tenant's cookie or token is never
 * passed on. The origin node has already checked that the principal may
 * see the message (web_quarantine.c).
 *
 * GET /api/v1/cluster/nodes (superadmins) lists the registry, as moatctl
 * cluster status does.
 *
 * The request goes out on the worker thread that handles the user's own
 * request, over a blocking socket bounded by node.timeout-like limits:
 * connect and each read within REMOTE_TIMEOUT_MS; over https the node's
 * certificate is not verified (nodes often have their own self-signed
 * ones); the HMAC is what authenticates.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <hiredis/hiredis.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include "../common/mail.h"
#include "web_private.h"

#define REMOTE_TIMEOUT_MS 10000
#define MAX_REPLY (64u << 20)
#define CLOCK_SKEW 60

static void
sign(const char *secret, const char *from, const char *t, const char *nonce, const char *path,
     const char *body, size_t blen, char out[65])
{
    char head[1400];
    int hl = snprintf(head, sizeof(head), "moat-node-1\n%s\n%s\n%s\n%s\n", from, t, nonce, path);
    size_t n = hl > 0 && (size_t)hl < sizeof(head) ? (size_t)hl : 0;
    unsigned char *msg = xmalloc(n + blen + 1);
    memcpy(msg, head, n);
    memcpy(msg + n, body, blen);
    unsigned char md[32];
    unsigned mdlen = 0;
    HMAC(EVP_sha256(), secret, (int)strlen(secret), msg, n + blen, md, &mdlen);
    free(msg);
    for (unsigned i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

/* ------------------------------------------------------- the way out */

struct conn {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
};

static void
conn_close(struct conn *c)
{
    if (c->ssl)
        SSL_free(c->ssl);
    if (c->ctx)
        SSL_CTX_free(c->ctx);
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->ssl = NULL;
    c->ctx = NULL;
}

static int
conn_open(struct conn *c, const char *host, uint16_t port, bool tls, char *err, size_t errsize)
{
    c->fd = -1;
    c->ssl = NULL;
    c->ctx = NULL;
    char ps[8];
    snprintf(ps, sizeof(ps), "%u", port);
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai = NULL;
    int g = getaddrinfo(host, ps, &hints, &ai);
    if (g != 0) {
        snprintf(err, errsize, "%s: %s", host, gai_strerror(g));
        return -1;
    }
    c->fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int rc = c->fd < 0 ? -1 : connect(c->fd, ai->ai_addr, ai->ai_addrlen);
    freeaddrinfo(ai);
    if (c->fd < 0 || (rc < 0 && errno != EINPROGRESS)) {
        snprintf(err, errsize, "connect %s:%u: %s", host, port, strerror(errno));
        conn_close(c);
        return -1;
    }
    struct pollfd pf = { c->fd, POLLOUT, 0 };
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    if (rc < 0 && (poll(&pf, 1, REMOTE_TIMEOUT_MS) != 1 ||
                   getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0 || soerr != 0)) {
        snprintf(err, errsize, "connect %s:%u: %s", host, port,
                 soerr ? strerror(soerr) : "timed out");
        conn_close(c);
        return -1;
    }
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) & ~O_NONBLOCK);
    struct timeval tv = { REMOTE_TIMEOUT_MS / 1000, 0 };
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (!tls)
        return 0;
    c->ctx = SSL_CTX_new(TLS_client_method());
    c->ssl = c->ctx ? SSL_new(c->ctx) : NULL;
    if (c->ssl == NULL || SSL_set_fd(c->ssl, c->fd) != 1 ||
        SSL_set_tlsext_host_name(c->ssl, host) != 1 || SSL_connect(c->ssl) != 1) {
        unsigned long e = ERR_get_error();
        snprintf(err, errsize, "TLS with %s:%u: %s", host, port,
                 e ? ERR_reason_error_string(e) : "handshake failed");
        ERR_clear_error();
        conn_close(c);
        return -1;
    }
    return 0;
}

static int
conn_write(struct conn *c, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = c->ssl ? SSL_write(c->ssl, p, (int)(n > 1 << 30 ? 1 << 30 : n))
                           : write(c->fd, p, n);
        if (w <= 0) {
            if (!c->ssl && w < 0 && errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static ssize_t
conn_read(struct conn *c, char *p, size_t n)
{
    for (;;) {
        ssize_t r = c->ssl ? SSL_read(c->ssl, p, (int)n) : read(c->fd, p, n);
        if (r < 0 && !c->ssl && errno == EINTR)
            continue;
        if (r < 0 && c->ssl && SSL_get_error(c->ssl, (int)r) == SSL_ERROR_ZERO_RETURN)
            return 0;
        return r;
    }
}

/* POST body to url+path (HTTP/1.0, the answer read to its end); the
 * status and the body of the answer, malloc'ed. */
static int
http_post(const char *url, const char *path, const char *auth, const char *body, size_t blen,
          int *status_r, char **reply_r, size_t *rlen_r, char *err, size_t errsize)
{
    bool tls = strncmp(url, "https://", 8) == 0;
    const char *hp = url + (tls ? 8 : strncmp(url, "http://", 7) == 0 ? 7 : 0);
    if (hp == url) {
        snprintf(err, errsize, "'%s' is not an http:// or https:// URL", url);
        return -1;
    }
    char hostport[300], host[256];
    str_copy(hostport, hp, sizeof(hostport));
    hostport[strcspn(hostport, "/")] = '\0';
    uint16_t port;
    if (hostport_split(hostport, host, sizeof(host), &port) < 0) {
        str_copy(host, hostport, sizeof(host));
        port = tls ? 443 : 80;
    }
    struct conn c;
    if (conn_open(&c, host, port, tls, err, errsize) < 0)
        return -1;
    char head[1600];
    int hl = snprintf(head, sizeof(head),
                      "POST %s HTTP/1.0\r\nHost: %s\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\nX-Moat-Node: %s\r\nConnection: close\r\n\r\n",
                      path, hostport, blen, auth);
    if (hl < 0 || (size_t)hl >= sizeof(head) || conn_write(&c, head, (size_t)hl) < 0 ||
        conn_write(&c, body, blen) < 0) {
        snprintf(err, errsize, "%s: cannot send the request", url);
        conn_close(&c);
        return -1;
    }
    size_t cap = 65536, len = 0;
    char *buf = xmalloc(cap + 1);
    for (;;) {
        if (len == cap) {
            if (cap >= MAX_REPLY)
                break;
            cap *= 2;
            buf = xrealloc(buf, cap + 1);
        }
        ssize_t r = conn_read(&c, buf + len, cap - len);
        if (r < 0) {
            snprintf(err, errsize, "%s: no answer in time", url);
            conn_close(&c);
            free(buf);
            return -1;
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    conn_close(&c);
    buf[len] = '\0';
    int status = 0;
    char *sep = strstr(buf, "\r\n\r\n");
    if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1 || sep == NULL || status < 100 ||
        status > 599) {
        snprintf(err, errsize, "%s: not an HTTP answer", url);
        free(buf);
        return -1;
    }
    size_t off = (size_t)(sep + 4 - buf);
    memmove(buf, buf + off, len - off + 1);
    *status_r = status;
    *reply_r = buf;
    *rlen_r = len - off;
    return 0;
}

static const char *
role_name(enum web_role r)
{
    return r == ROLE_SUPERADMIN ? "superadmin" : r == ROLE_ADMIN ? "admin" : "user";
}

void
web_cluster_forward(struct web_server *srv, const struct principal *p, const char *node,
                    const char *id, const char *action, const char *recipient, const char *as,
                    struct web_resp *rs)
{
    const struct moat_config *cfg = srv->cfg;
    char msg[900], url[300], err[600];
    if (cfg->node.secret[0] == '\0') {
        snprintf(msg, sizeof(msg), "held on node %s: open it in that node's web UI "
                 "(nodes act for each other only with node.secret set)", node);
        web_error(rs, 409, "held_elsewhere", msg);
        return;
    }
    if (cluster_node_url(cfg, node, url, sizeof(url), err, sizeof(err)) < 0) {
        snprintf(msg, sizeof(msg), "held on node %s, which cannot be asked now: %s", node, err);
        web_error(rs, 503, "unavailable", msg);
        return;
    }
    struct jbuf b = { 0 };
    jb_obj(&b);
    jb_kstr(&b, "user", p->user);
    jb_kstr(&b, "role", role_name(p->role));
    jb_key(&b, "domains");
    jb_arr(&b);
    for (size_t i = 0; i < p->ndomains; i++)
        jb_str(&b, p->domains[i]);
    jb_arr_end(&b);
    if (recipient)
        jb_kstr(&b, "recipient", recipient);
    if (as)
        jb_kstr(&b, "as", as);
    jb_obj_end(&b);
    char path[200], t[32], nonce[33], mac[65], auth[400];
    snprintf(path, sizeof(path), "/api/v1/cluster/quarantine/%s/%s", id, action);
    snprintf(t, sizeof(t), "%lld", (long long)time(NULL));
    web_random_hex(nonce, 16);
    sign(cfg->node.secret, cfg->node.name, t, nonce, path, b.p, b.len, mac);
    snprintf(auth, sizeof(auth), "%s %s %s %s", cfg->node.name, t, nonce, mac);
    int status;
    char *reply;
    size_t rlen;
    if (http_post(url, path, auth, b.p, b.len, &status, &reply, &rlen, err, sizeof(err)) < 0) {
        snprintf(msg, sizeof(msg), "held on node %s, which cannot be reached now: %s", node, err);
        web_error(rs, 503, "unavailable", msg);
        jb_free(&b);
        return;
    }
    jb_free(&b);
    jb_free(&rs->body);
    rs->status = status;
    rs->content_type = NULL;
    jb_raw(&rs->body, reply, rlen);
    free(reply);
    log_info("%s: %s carried out by node %s for %s (%d)", id, action, node, p->user, status);
}

int
web_cluster_act(struct web_server *srv, const struct principal *p, const char *node,
                const char *id, const char *action, const char *recipient, const char *as,
                char *err, size_t errsize)
{
    struct web_resp rs;
    memset(&rs, 0, sizeof(rs));
    web_cluster_forward(srv, p, node, id, action, recipient, as, &rs);
    int rc = rs.status == 200 ? 0 : -1;
    if (rc < 0) {
        /* its "message", or the status */
        const char *m = rs.body.p ? strstr(rs.body.p, "\"message\":\"") : NULL;
        if (rs.status == 404)
            snprintf(err, errsize, "no such message on node %s", node);
        else if (m)
            snprintf(err, errsize, "%.*s", (int)strcspn(m + 11, "\""), m + 11);
        else
            snprintf(err, errsize, "node %s answered %d", node, rs.status);
    }
    jb_free(&rs.body);
    return rc;
}

/* -------------------------------------------------------- the way in */

static int
principal_from(struct web_req *rq, struct principal *p)
{
    const char *user = web_body_str(rq, "user"), *role = web_body_str(rq, "role");
    const struct conf_node *doms = web_body_node(rq, "domains");
    if (user == NULL || role == NULL || strlen(user) >= sizeof(p->user))
        return -1;
    memset(p, 0, sizeof(*p));
    str_copy(p->user, user, sizeof(p->user));
    if (strcmp(role, "superadmin") == 0)
        p->role = ROLE_SUPERADMIN;
    else if (strcmp(role, "admin") == 0)
        p->role = ROLE_ADMIN;
    else if (strcmp(role, "user") == 0)
        p->role = ROLE_USER;
    else
        return -1;
    if (doms && doms->type == CONF_ARRAY)
        for (const struct conf_node *d = doms->child; d && p->ndomains < WEB_MAX_DOMAINS;
             d = d->next)
            if (d->type == CONF_SCALAR && strlen(d->value) < sizeof(p->domains[0]))
                str_copy(p->domains[p->ndomains++], d->value, sizeof(p->domains[0]));
    p->from_node = true;
    p->via_token = true;
    return 0;
}

static bool
all_hex(const char *s, size_t n)
{
    if (strlen(s) != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

void
api_cluster_quarantine(struct web_req *rq, struct principal *unused, char **args,
                       struct web_resp *rs)
{
    (void)unused;
    const struct moat_config *cfg = rq->srv->cfg;
    if (cfg->node.secret[0] == '\0') {
        web_error(rs, 404, "not_found", "no such path");
        return;
    }
    char from[64], t[24], nonce[40], mac[80], want[65];
    if (sscanf(rq->node_auth, "%63s %23s %39s %79s", from, t, nonce, mac) != 4 ||
        !all_hex(nonce, 32) || !all_hex(mac, 64)) {
        web_error(rs, 403, "forbidden", "not a request of a node of this cluster");
        return;
    }
    long long when = atoll(t), now = (long long)time(NULL);
    sign(cfg->node.secret, from, t, nonce, rq->path, rq->body, rq->body_len, want);
    if (CRYPTO_memcmp(want, mac, 64) != 0 || when < now - CLOCK_SKEW || when > now + CLOCK_SKEW) {
        log_warn("cluster: refused a request for %s from %s (node %s): wrong signature or time",
                 rq->path, rq->client, from);
        web_error(rs, 403, "forbidden", "not a request of a node of this cluster");
        return;
    }
    char err[300];
    redisReply *r = redis_cmd(cfg->redis.address, cfg->redis.timeout_ms, err, sizeof(err),
                              "SET moat:node:nonce:%s 1 NX EX %d", nonce, 2 * CLOCK_SKEW + 10);
    bool fresh = r && r->type == REDIS_REPLY_STATUS;
    redis_reply_free(r);
    if (!fresh) {
        web_error(rs, r ? 403 : 503, r ? "forbidden" : "unavailable",
                  r ? "this request was made before" : err);
        return;
    }
    struct principal p;
    if (principal_from(rq, &p) < 0) {
        web_error(rs, 400, "bad_request", "user, role and domains are required");
        return;
    }
    char *one[2] = { args[0], NULL };
    if (strcmp(args[1], "show") == 0)
        api_quarantine_show(rq, &p, one, rs);
    else if (strcmp(args[1], "release") == 0)
        api_quarantine_release(rq, &p, one, rs);
    else if (strcmp(args[1], "delete") == 0)
        api_quarantine_delete(rq, &p, one, rs);
    else if (strcmp(args[1], "learn") == 0)
        api_quarantine_learn(rq, &p, one, rs);
    else
        web_error(rs, 404, "not_found", "no such action");
}

void
api_cluster_nodes(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    (void)p;
    (void)args;
    char err[600];
    struct cluster_node *v;
    size_t n;
    if (cluster_nodes(rq->srv->cfg, &v, &n, err, sizeof(err)) < 0) {
        web_error(rs, 503, "unavailable", err);
        return;
    }
    struct jbuf *b = &rs->body;
    jb_obj(b);
    jb_kstr(b, "self", rq->srv->cfg->node.name);
    jb_key(b, "nodes");
    jb_arr(b);
    for (size_t i = 0; i < n; i++) {
        jb_obj(b);
        jb_kstr(b, "name", v[i].name);
        jb_kbool(b, "up", v[i].up);
        jb_kint(b, "heartbeat", v[i].heartbeat);
        jb_kint(b, "queue", v[i].queue);
        jb_kint(b, "quarantine", v[i].quarantine);
        jb_kstr(b, "version", v[i].version);
        jb_kstr(b, "url", v[i].url);
        jb_obj_end(b);
    }
    jb_arr_end(b);
    jb_obj_end(b);
    free(v);
}
