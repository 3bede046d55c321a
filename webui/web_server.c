/*
 * web_server.c -- the web role: evhttp on the role's listeners (HTTPS
 * through OpenSSL bufferevents; plain HTTP only on loopback, the config
 * checker sees to that), the route table and the checks before a handler
 * runs (a JSON body, the principal, CSRF and Origin, the role), and the
 * browser app's files.
 *
 * An API request is copied out of libevent on the event loop (its query
 * and JSON body are read for handlers by web_param and web_body_*),
 * handled on a worker thread (handlers wait for Redis, DNS, yescrypt and
 * the disk) and answered back on the loop: web_reply.c fills and sends
 * the reply, with its security headers.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>
#include "../common/mail.h"
#include "web_private.h"
#include "webui.h"

const struct web_route web_routes[] = {
    { WM_POST, "/api/v1/login", N_NONE, api_login, false },
    { WM_POST, "/api/v1/logout", N_USER, api_logout, false },
    { WM_GET, "/api/v1/me", N_USER, api_me, false },
    { WM_POST, "/api/v1/me/password", N_USER, api_me_password, false },
    { WM_POST, "/api/v1/me/totp", N_USER, api_totp_begin, false },
    { WM_POST, "/api/v1/me/totp/confirm", N_USER, api_totp_confirm, false },
    { WM_DELETE, "/api/v1/me/totp", N_USER, api_totp_remove, false },
    { WM_GET, "/api/v1/me/app-passwords", N_USER, api_apppw_list, false },
    { WM_POST, "/api/v1/me/app-passwords", N_USER, api_apppw_create, false },
    { WM_DELETE, "/api/v1/me/app-passwords/*", N_USER, api_apppw_delete, false },
    { WM_GET, "/api/v1/tokens", N_ADMIN, api_tokens_list, false },
    { WM_POST, "/api/v1/tokens", N_ADMIN, api_tokens_create, false },
    { WM_DELETE, "/api/v1/tokens/*", N_ADMIN, api_tokens_delete, false },
    { WM_GET, "/api/v1/quarantine", N_USER, api_quarantine_list, false },
    { WM_POST, "/api/v1/quarantine/bulk", N_USER, api_quarantine_bulk, false },
    { WM_GET, "/api/v1/quarantine/*", N_USER, api_quarantine_show, false },
    { WM_POST, "/api/v1/quarantine/*/release", N_USER, api_quarantine_release, false },
    { WM_POST, "/api/v1/quarantine/*/delete", N_USER, api_quarantine_delete, false },
    { WM_POST, "/api/v1/quarantine/*/learn", N_USER, api_quarantine_learn, false },
    { WM_GET, "/api/v1/trace", N_USER, api_trace, false },
    { WM_GET, "/api/v1/stats", N_ADMIN, api_stats, false },
    { WM_GET, "/api/v1/lists", N_USER, api_lists_get, false },
    { WM_POST, "/api/v1/lists", N_USER, api_lists_add, false },
    { WM_POST, "/api/v1/lists/remove", N_USER, api_lists_remove, false },
    { WM_GET, "/api/v1/domains", N_ADMIN, api_domains, false },
    { WM_GET, "/api/v1/domains/*/dns", N_ADMIN, api_domain_dns, false },
    { WM_POST, "/api/v1/domains", N_SUPER, api_domains_add, false },
    { WM_DELETE, "/api/v1/domains/*", N_SUPER, api_domains_delete, false },
    { WM_POST, "/api/v1/domains/*/dkim", N_ADMIN, api_domain_dkim, false },
    { WM_GET, "/api/v1/accounts", N_ADMIN, api_accounts_list, false },
    { WM_POST, "/api/v1/accounts", N_ADMIN, api_accounts_create, false },
    { WM_DELETE, "/api/v1/accounts/*", N_ADMIN, api_accounts_delete, false },
    { WM_POST, "/api/v1/accounts/*/password", N_ADMIN, api_accounts_password, false },
    { WM_GET, "/api/v1/aliases", N_ADMIN, api_aliases_list, false },
    { WM_POST, "/api/v1/aliases", N_ADMIN, api_aliases_set, false },
    { WM_DELETE, "/api/v1/aliases/*", N_ADMIN, api_aliases_delete, false },
    { WM_GET, "/api/v1/queue", N_ADMIN, api_queue_list, false },
    { WM_POST, "/api/v1/queue/flush", N_SUPER, api_queue_flush, false },
    { WM_POST, "/api/v1/queue/*/delete", N_ADMIN, api_queue_delete, false },
    { WM_GET, "/api/v1/digest/release", N_NONE, api_digest_page, false },
    { WM_POST, "/api/v1/digest/release", N_NONE, api_digest_release, true },
    { WM_GET, "/metrics", N_SUPER, api_metrics, false },
    { WM_GET, "/api/v1/cluster/nodes", N_SUPER, api_cluster_nodes, false },
    /* another node of the cluster, signed with node.secret (web_cluster.c) */
    { WM_POST, "/api/v1/cluster/quarantine/*/*", N_NONE, api_cluster_quarantine, false },
};
const size_t web_nroutes = sizeof(web_routes) / sizeof(web_routes[0]);

/* ------------------------------------------------------ the request */

const char *
web_param(struct web_req *rq, const char *name, char *buf, size_t size)
{
    if (rq->query == NULL)
        return NULL;
    if (rq->params == NULL) {
        rq->params = xcalloc(1, sizeof(*rq->params));
        if (evhttp_parse_query_str(rq->query, rq->params) < 0)
            evhttp_clear_headers(rq->params);       /* malformed: no parameters */
    }
    const char *v = evhttp_find_header(rq->params, name);
    if (v == NULL)
        return NULL;
    str_copy(buf, v, size);
    return buf;
}

const struct conf_node *
web_body_node(struct web_req *rq, const char *name)
{
    if (rq->json == NULL || rq->json->type != CONF_OBJECT)
        return NULL;
    for (const struct conf_node *n = rq->json->child; n; n = n->next)
        if (n->key && strcmp(n->key, name) == 0)
            return n;
    return NULL;
}

const char *
web_body_str(struct web_req *rq, const char *name)
{
    const struct conf_node *n = web_body_node(rq, name);
    return n && n->type == CONF_SCALAR ? n->value : NULL;
}

/* ------------------------------------------------------------ routing */

static void
dispatch(struct web_req *rq, struct web_resp *rs)
{
    char *args[4];
    size_t nargs = 0;
    int status = 0;
    const struct web_route *found = web_route_find(web_routes, web_nroutes, rq->method, rq->path,
                                                   args, &nargs, &status);
    if (found == NULL) {
        web_error(rs, status, status == 405 ? "method_not_allowed" : "not_found",
                  status == 405 ? "method not allowed here" : "no such endpoint");
        return;
    }
    if (rq->body_len && rq->method != WM_GET && !found->form) {
        char err[200];
        rq->json = conf_parse(rq->body, rq->body_len, err, sizeof(err));
        if (rq->json == NULL || rq->json->type != CONF_OBJECT) {
            web_error(rs, 400, "bad_json", rq->json ? "the body must be a JSON object" : err);
            goto out;
        }
    }
    struct principal p;
    memset(&p, 0, sizeof(p));
    if (found->need != N_NONE) {
        if (web_authenticate(rq, &p, rs) < 0)
            goto out;
        /* A browser session proves itself on every change: the CSRF token
         * it got at sign-in, and no foreign Origin. */
        if (!p.via_token && rq->method != WM_GET) {
            if (rq->csrf[0] == '\0' || strlen(rq->csrf) != strlen(p.csrf) ||
                CRYPTO_memcmp(rq->csrf, p.csrf, strlen(p.csrf)) != 0) {
                web_error(rs, 403, "csrf", "missing or wrong X-CSRF-Token");
                goto out;
            }
        }
        if (p.must_enroll && strncmp(rq->path, "/api/v1/me", 10) != 0 &&
            strcmp(rq->path, "/api/v1/logout") != 0) {
            web_error(rs, 403, "totp_enrollment_required",
                      "two-factor sign-in is required for admins: set it up first");
            goto out;
        }
        enum web_role need = found->need == N_SUPER ? ROLE_SUPERADMIN
                             : found->need == N_ADMIN ? ROLE_ADMIN : ROLE_USER;
        if (p.role < need) {
            web_error(rs, 403, "forbidden", "your role may not do this");
            goto out;
        }
    }
    rs->status = 200;
    found->fn(rq, &p, args, rs);
out:
    web_route_args_free(args, nargs);
}

/* ------------------------------------------------------- on the loop */

struct job {
    struct web_req rq;
    struct web_resp rs;
    struct evhttp_request *req;         /* NULL once the connection is gone */
};

static void
on_conn_close(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    struct job *j = arg;
    j->req = NULL;
}

static void
send_job(struct job *j)
{
    if (j->req) {
        evhttp_connection_set_closecb(evhttp_request_get_connection(j->req), NULL, NULL);
        web_reply_send(j->req, &j->rs, j->rq.tls);
    }
    free(j->rq.query);
    if (j->rq.params) {
        evhttp_clear_headers(j->rq.params);
        free(j->rq.params);
    }
    free(j->rq.body);
    conf_node_free(&j->rq.json);
    jb_free(&j->rs.body);
    free(j);
}

static void
delayed_send(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    send_job(arg);
}

static void
job_work(void *arg)
{
    struct job *j = arg;
    dispatch(&j->rq, &j->rs);
}

static void
job_done(void *arg)
{
    struct job *j = arg;
    if (j->rs.delay > 0 && j->req) {
        struct timeval tv = { (time_t)j->rs.delay,
                              (suseconds_t)((j->rs.delay - (double)(time_t)j->rs.delay) * 1e6) };
        event_base_once(j->rq.srv->base, -1, EV_TIMEOUT, delayed_send, j, &tv);
        return;
    }
    send_job(j);
}

static void
copy_header(struct evkeyvalq *h, const char *name, char *out, size_t size)
{
    const char *v = evhttp_find_header(h, name);
    str_copy(out, v ? v : "", size);
}

/* ------------------------------------------------------ static files */

static const char *
mime_type(const char *path)
{
    static const char *const map[][2] = {
        { ".html", "text/html; charset=utf-8" }, { ".js", "text/javascript; charset=utf-8" },
        { ".css", "text/css; charset=utf-8" }, { ".svg", "image/svg+xml" },
        { ".png", "image/png" }, { ".ico", "image/x-icon" }, { ".json", "application/json" },
        { ".woff2", "font/woff2" }, { ".map", "application/json" },
    };
    const char *dot = strrchr(path, '.');
    for (size_t i = 0; dot && i < sizeof(map) / sizeof(map[0]); i++)
        if (strcmp(dot, map[i][0]) == 0)
            return map[i][1];
    return "application/octet-stream";
}

static void
serve_file(struct web_server *srv, struct evhttp_request *req, const char *path, bool tls)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    web_reply_headers(h, tls, true);
    char full[2200];
    bool ok = path[0] == '/' && strstr(path, "..") == NULL && strchr(path, '\\') == NULL;
    if (ok && strcmp(path, "/") == 0)
        path = "/index.html";
    int fd = -1;
    struct stat st;
    if (ok && str_fmt(full, sizeof(full), "%s%s", srv->app_dir, path) >= 0)
        fd = open(full, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        if (fd >= 0)
            close(fd);
        evhttp_add_header(h, "Content-Type", "text/plain; charset=utf-8");
        struct evbuffer *b = evbuffer_new();
        evbuffer_add_printf(b, "not found\n");
        evhttp_send_reply(req, 404, "Not Found", b);
        evbuffer_free(b);
        return;
    }
    evhttp_add_header(h, "Content-Type", mime_type(full));
    /* Vite names assets by their content hash: cache those, not the page. */
    evhttp_add_header(h, "Cache-Control",
                      strncmp(path, "/assets/", 8) == 0 ? "public, max-age=31536000, immutable"
                                                        : "no-cache");
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_file(b, fd, 0, st.st_size);
    evhttp_send_reply(req, 200, "OK", b);
    evbuffer_free(b);
}

/* ---------------------------------------------------------- requests */

struct listener_ctx {
    struct web_server *srv;
    bool tls;
};

static void
on_request(struct evhttp_request *req, void *arg)
{
    struct listener_ctx *lc = arg;
    struct web_server *srv = lc->srv;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *rawpath = uri ? evhttp_uri_get_path(uri) : NULL;
    size_t plen = 0;
    char *path = rawpath ? evhttp_uridecode(rawpath, 0, &plen) : NULL;
    /* a %00 in the path would hide what follows it */
    if (path == NULL || path[0] != '/' || plen != strlen(path) ||
        plen >= sizeof(((struct web_req *)0)->path)) {
        free(path);
        evhttp_send_error(req, 400, "Bad Request");
        return;
    }
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    bool api = strncmp(path, "/api/", 5) == 0 || strcmp(path, "/metrics") == 0;
    if (!api) {
        if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD)
            evhttp_send_error(req, 405, "Method Not Allowed");
        else
            serve_file(srv, req, path, lc->tls);
        free(path);
        return;
    }
    struct job *j = xcalloc(1, sizeof(*j));
    j->req = req;
    j->rq.srv = srv;
    j->rq.tls = lc->tls;
    j->rq.method = cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD ? WM_GET
                   : cmd == EVHTTP_REQ_POST ? WM_POST
                   : cmd == EVHTTP_REQ_DELETE ? WM_DELETE : WM_OTHER;
    str_copy(j->rq.path, path, sizeof(j->rq.path));
    free(path);
    const char *q = uri ? evhttp_uri_get_query(uri) : NULL;
    j->rq.query = q ? xstrdup(q) : NULL;
    struct evkeyvalq *h = evhttp_request_get_input_headers(req);
    char cookies[4096], auth[300];
    copy_header(h, "Cookie", cookies, sizeof(cookies));
    web_cookie_value(cookies, "moat_session", j->rq.session, sizeof(j->rq.session));
    copy_header(h, "Authorization", auth, sizeof(auth));
    if (strncasecmp(auth, "Bearer ", 7) == 0)
        str_copy(j->rq.bearer, auth + 7, sizeof(j->rq.bearer));
    copy_header(h, "X-CSRF-Token", j->rq.csrf, sizeof(j->rq.csrf));
    copy_header(h, "Origin", j->rq.origin, sizeof(j->rq.origin));
    copy_header(h, "Host", j->rq.host, sizeof(j->rq.host));
    copy_header(h, "X-Moat-Node", j->rq.node_auth, sizeof(j->rq.node_auth));
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t blen = evbuffer_get_length(in);
    j->rq.body = xmalloc(blen + 1);
    evbuffer_copyout(in, j->rq.body, blen);
    j->rq.body[blen] = '\0';
    j->rq.body_len = blen;
    char *peer = NULL;
    ev_uint16_t port;
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    evhttp_connection_get_peer(evcon, &peer, &port);
    str_copy(j->rq.client, peer ? peer : "", sizeof(j->rq.client));
    /* A cross-site page cannot drive the API with the user's cookie: no
     * other origin may send an API request at all. */
    if (j->rq.origin[0]) {
        const char *o = strstr(j->rq.origin, "://");
        if (o == NULL || strcmp(o + 3, j->rq.host) != 0) {
            j->rs.status = 403;
            web_error(&j->rs, 403, "origin", "cross-origin requests are refused");
            send_job(j);
            return;
        }
    }
    evhttp_connection_set_closecb(evcon, on_conn_close, j);
    workq_submit(srv->workq, job_work, job_done, j);
}

static struct bufferevent *
tls_bev(struct event_base *base, void *arg)
{
    SSL_CTX *ctx = arg;
    SSL *ssl = SSL_new(ctx);
    return ssl ? bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                BEV_OPT_CLOSE_ON_FREE)
               : NULL;
}

static void
on_term(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct web_server *srv = arg;
    log_info("web role stopping");
    struct timeval tv = { 1, 0 };
    event_base_loopexit(srv->base, &tv);
}

/* Every node.heartbeat: this node's held mail into the shared index, so
 * the other nodes list it without waiting for a search here. One at a
 * time, on a worker. */
static bool syncing;

static void
sync_work(void *arg)
{
    web_quarantine_sync(((struct web_server *)arg)->cfg);
}

static void
sync_done(void *arg)
{
    (void)arg;
    syncing = false;
}

static void
on_sync_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    if (!syncing) {
        syncing = true;
        workq_submit(((struct web_server *)arg)->workq, sync_work, sync_done, arg);
    }
}

int
web_main(const struct moat_config *cfg, const struct role_env *env)
{
    static struct web_server srv;
    memset(&srv, 0, sizeof(srv));
    srv.cfg = cfg;
    srv.notify_fd = env->notify_fd;
    pthread_mutex_init(&srv.mu, NULL);
    str_copy(srv.app_dir, cfg->web.app_dir, sizeof(srv.app_dir));
    srv.base = event_base_new();
    if (srv.base == NULL)
        fatal("event_base_new failed");
    char err[512];
    srv.resolver = resolver_new(srv.base, cfg->dns.forwarder, cfg->dns.timeout, err, sizeof(err));
    if (srv.resolver == NULL)
        fatal("resolver: %s", err);
    srv.accounts = accounts_cache_new(cfg->state_dir, err, sizeof(err));
    if (srv.accounts == NULL)
        fatal("accounts: %s", err);
    srv.authlimit = authlimit_new();
    authlimit_set_redis(srv.authlimit, cfg->redis.address, cfg->redis.timeout_ms);
    srv.workq = workq_new(srv.base, 4);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGUSR1, SIG_IGN);
    signal(SIGUSR2, SIG_IGN);
    static struct listener_ctx plain, secure;
    plain = (struct listener_ctx){ &srv, false };
    secure = (struct listener_ctx){ &srv, true };
    struct evhttp *http[2] = { NULL, NULL };
    for (size_t i = 0; i < env->nlisten; i++) {
        bool tls = env->listen_kind[i] == LISTEN_WEBS;
        if (http[tls] == NULL) {
            http[tls] = evhttp_new(srv.base);
            evhttp_set_gencb(http[tls], on_request, tls ? &secure : &plain);
            evhttp_set_max_body_size(http[tls], WEB_MAX_BODY);
            evhttp_set_max_headers_size(http[tls], 16384);
            evhttp_set_timeout(http[tls], 60);
            evhttp_set_allowed_methods(http[tls], EVHTTP_REQ_GET | EVHTTP_REQ_HEAD |
                                                      EVHTTP_REQ_POST | EVHTTP_REQ_DELETE);
            if (tls) {
                if (env->tls == NULL)
                    fatal("webs listener without a TLS context");
                evhttp_set_bevcb(http[tls], tls_bev, env->tls);
            }
        }
        evutil_make_socket_nonblocking(env->listen_fds[i]);
        if (evhttp_accept_socket_with_handle(http[tls], env->listen_fds[i]) == NULL)
            fatal("web: cannot accept on listener %zu", i);
    }
    struct event *ev_term = evsignal_new(srv.base, SIGTERM, on_term, &srv);
    event_add(ev_term, NULL);
    struct event *ev_sync = event_new(srv.base, -1, EV_PERSIST, on_sync_timer, &srv);
    struct timeval beat = { (time_t)cfg->node.heartbeat, 0 };
    event_add(ev_sync, &beat);
    on_sync_timer(-1, 0, &srv);
    log_info("web role ready, %zu listeners, app in %s", env->nlisten, srv.app_dir);
    event_base_dispatch(srv.base);
    for (int i = 0; i < 2; i++)
        if (http[i])
            evhttp_free(http[i]);
    event_free(ev_term);
    event_free(ev_sync);
    workq_free(&srv.workq);
    resolver_free(&srv.resolver);
    log_info("web role exits");
    return 0;
}
