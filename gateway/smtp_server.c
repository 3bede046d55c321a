/*
 * smtp_server.c -- the smtp role: accepts connections on the listening
 * sockets the master bound, enforces the connection limits, owns the
 * sessions, and drains them on SIGTERM (stop) or SIGUSR2 (retire at reload).
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <dirent.h>
#include <sys/stat.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <openssl/ssl.h>
#include "../common/mail.h"
#include "smtp_private.h"

static unsigned
ip_hash(const char *s)
{
    unsigned h = 5381;
    for (; *s; s++)
        h = h * 33 + (unsigned char)*s;
    return h % IP_BUCKETS;
}

bool
smtp_server_ip_acquire(struct smtp_server *srv, const char *addr)
{
    char key[ADDR_KEY_MAX];
    addr_limit_key(addr, key, sizeof(key));
    unsigned h = ip_hash(key);
    struct ip_slot *e;
    for (e = srv->ips[h]; e; e = e->next)
        if (strcmp(e->key, key) == 0)
            break;
    if (e != NULL && e->count >= srv->cfg->limits.connections_per_ip)
        return false;
    if (e == NULL) {
        e = xcalloc(1, sizeof(*e));
        str_copy(e->key, key, sizeof(e->key));
        e->next = srv->ips[h];
        srv->ips[h] = e;
    }
    e->count++;
    return true;
}

void
smtp_server_ip_release(struct smtp_server *srv, const char *addr)
{
    char key[ADDR_KEY_MAX];
    addr_limit_key(addr, key, sizeof(key));
    unsigned h = ip_hash(key);
    for (struct ip_slot **pp = &srv->ips[h]; *pp; pp = &(*pp)->next) {
        struct ip_slot *e = *pp;
        if (strcmp(e->key, key) != 0)
            continue;
        if (--e->count == 0) {
            *pp = e->next;
            free(e);
        }
        return;
    }
}

static struct srs_guesses *
srs_slot(struct smtp_server *srv, const char *addr, char key[ADDR_KEY_MAX])
{
    addr_limit_key(addr, key, ADDR_KEY_MAX);
    return &srv->srs_guesses[ip_hash(key) % SRS_CLIENT_SLOTS];
}

void
smtp_server_srs_forged(struct smtp_server *srv, const char *addr)
{
    char key[ADDR_KEY_MAX];
    struct srs_guesses *g = srs_slot(srv, addr, key);
    double now = time_mono();
    if (strcmp(g->key, key) != 0 || now - g->last > SRS_CLIENT_WINDOW) {
        str_copy(g->key, key, sizeof(g->key));
        g->failures = 0;
    }
    if (g->failures < UINT_MAX)
        g->failures++;
    g->last = now;
}

bool
smtp_server_srs_blocked(struct smtp_server *srv, const char *addr)
{
    char key[ADDR_KEY_MAX];
    const struct srs_guesses *g = srs_slot(srv, addr, key);
    return strcmp(g->key, key) == 0 && g->failures >= SRS_CLIENT_MAX &&
           time_mono() - g->last <= SRS_CLIENT_WINDOW;
}

void
smtp_server_session_gone(struct smtp_server *srv)
{
    srv->nconn--;
    if ((srv->stopping || srv->retiring) && srv->nconn == 0)
        event_base_loopexit(srv->base, NULL);
}

static void
refusal_flush(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct smtp_server *srv = arg;
    for (size_t i = 0; i < REFUSAL_SLOTS; i++) {
        struct refusal_log *r = &srv->refusals[i];
        if (r->suppressed == 0)
            continue;
        log_warn("%s [%s]: %u more refused in the last %.0f s", r->why, r->key, r->suppressed,
                 REFUSAL_LOG_EVERY);
        r->suppressed = 0;
        r->last = time_mono();
    }
}

void
smtp_server_log_refusal(struct smtp_server *srv, const char *addr, bool per_client,
                        const char *why)
{
    char key[ADDR_KEY_MAX];
    if (per_client)
        addr_limit_key(addr, key, sizeof(key));
    else
        str_copy(key, "*", sizeof(key));
    struct refusal_log *r = &srv->refusals[(ip_hash(key) ^ ip_hash(why)) % REFUSAL_SLOTS];
    double now = time_mono();
    if (r->why == why && strcmp(r->key, key) == 0 && now - r->last < REFUSAL_LOG_EVERY) {
        struct timeval tv = { (time_t)REFUSAL_LOG_EVERY, 0 };
        if (r->suppressed++ == 0 && srv->refusal_timer &&
            !evtimer_pending(srv->refusal_timer, NULL))
            evtimer_add(srv->refusal_timer, &tv);
        return;
    }
    if (r->suppressed)              /* another client takes the slot: its count first */
        log_warn("%s [%s]: %u more refused", r->why, r->key, r->suppressed);
    log_warn("%s [%s]: refused", why, addr);
    str_copy(r->key, key, sizeof(r->key));
    r->why = why;
    r->last = now;
    r->suppressed = 0;
}

/* Refuse a connection at accept, before any session is made: the reply
 * is written without waiting (a client that does not take it loses it)
 * and the socket closed at once, so a refusal holds no slot. */
static void
refuse(struct smtp_server *srv, evutil_socket_t fd, enum reply_id id, const char *addr,
       bool per_client, const char *why)
{
    char buf[256];
    size_t n = reply_format(buf, sizeof(buf), id, NULL, true);
    ssize_t r = send(fd, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL);
    (void)r;
    evutil_closesocket(fd);
    smtp_server_log_refusal(srv, addr, per_client, why);
}

static void
accept_cb(struct evconnlistener *evl, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
    (void)evl;
    (void)salen;
    struct smtp_listener *l = arg;
    struct smtp_server *srv = l->srv;
    char addr[46];          /* as the session writes it (smtp_session_new) */
    sockaddr_str(sa, addr, sizeof(addr), NULL);
    /* a PROXY header names the client: only a trusted proxy may send one */
    if (l->proxy && !conf_net_match(l->conf->proxy_from, l->conf->nproxy_from, sa)) {
        refuse(srv, fd, R_PROXY_UNTRUSTED, addr, true,
               "PROXY header not accepted (not in proxy_from) from");
        return;
    }
    if (srv->nconn >= srv->cfg->limits.connections) {
        refuse(srv, fd, R_TOO_MANY_CONN, addr, false, "too many connections in all, from");
        return;
    }
    /* Behind a proxy the client is known only from its PROXY header: the
     * session counts it then. */
    if (!l->proxy && !smtp_server_ip_acquire(srv, addr)) {
        refuse(srv, fd, R_TOO_MANY_CONN_IP, addr, true, "too many connections from");
        return;
    }
    srv->nconn++;
    smtp_session_new(srv, l, fd, sa, !l->proxy);
}

static void
accept_error_cb(struct evconnlistener *evl, void *arg)
{
    (void)evl;
    (void)arg;
    /* EMFILE and friends: log and go on; the listener stays open. */
    log_err("accept: %s", strerror(errno));
}

static void
stop_listening(struct smtp_server *srv)
{
    for (size_t i = 0; i < srv->nlisteners; i++) {
        if (srv->listeners[i].evl) {
            evconnlistener_free(srv->listeners[i].evl);
            srv->listeners[i].evl = NULL;
        }
    }
}

static void
stop_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct smtp_server *srv = arg;
    log_warn("%u sessions still open after the shutdown timeout; closing them", srv->nconn);
    event_base_loopexit(srv->base, NULL);
}

static void
on_sigterm(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    struct smtp_server *srv = arg;
    if (srv->stopping)
        return;
    srv->stopping = true;
    log_info("stopping: no new connections, %u open sessions finish", srv->nconn);
    stop_listening(srv);
    for (struct smtp_session *s = srv->sessions, *next; s; s = next) {
        next = smtp_session_next(s);
        smtp_session_shutdown(s);
    }
    struct timeval tv = { (time_t)srv->cfg->smtp.shutdown_timeout, 0 };
    srv->stop_timer = evtimer_new(srv->base, stop_timeout, srv);
    evtimer_add(srv->stop_timer, &tv);
    if (srv->nconn == 0)
        event_base_loopexit(srv->base, NULL);
}

static void
on_retire(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    struct smtp_server *srv = arg;
    if (srv->retiring || srv->stopping)
        return;
    srv->retiring = true;
    log_info("retiring after reload: %u open sessions go on", srv->nconn);
    stop_listening(srv);
    /* Sessions end on their own (QUIT or timeouts), bounded by the
     * command timeout; the new smtp process already accepts. */
    struct timeval tv = { (time_t)srv->cfg->limits.command_timeout +
                              (time_t)srv->cfg->limits.data_timeout, 0 };
    srv->stop_timer = evtimer_new(srv->base, stop_timeout, srv);
    evtimer_add(srv->stop_timer, &tv);
    if (srv->nconn == 0)
        event_base_loopexit(srv->base, NULL);
}

/* Remove files left in tmp/ by processes that no longer run: they were
 * never answered 250. Names are "ID.PID"; a retiring sibling's stay. */
static void
clean_tmp(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return;
    struct dirent *de;
    time_t now = time(NULL);
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        char path[1400];
        if (str_fmt(path, sizeof(path), "%s/%s", dir, de->d_name) < 0)
            continue;
        const char *dot = strchr(de->d_name, '.');
        long pid = dot ? strtol(dot + 1, NULL, 10) : 0;
        struct stat st;
        bool stale = stat(path, &st) == 0 && now - st.st_mtime > 3600;
        if (pid > 0 ? (kill((pid_t)pid, 0) < 0 && errno == ESRCH) : stale)
            unlink(path);
    }
    closedir(d);
}

/* The config entry of the role's listener i: the master hands the
 * listeners over in config order, kind by kind (bind_listeners in
 * common/supervisor.c), so it is the nth of its kind. */
static const struct listen_addr *
listener_conf(const struct moat_config *cfg, const struct role_env *env, size_t i)
{
    size_t nth = 0;
    for (size_t j = 0; j < i; j++)
        if (env->listen_kind[j] == env->listen_kind[i])
            nth++;
    const struct listen_list *ll = conf_listeners(cfg, (enum listen_kind)env->listen_kind[i]);
    if (nth >= ll->n || ll->v[nth].proxy_protocol != env->listen_proxy[i])
        fatal("listener %zu does not match the configuration", i);
    return &ll->v[nth];
}

int
smtp_server_main(const struct moat_config *cfg, const struct role_env *env)
{
    struct smtp_server srv;
    memset(&srv, 0, sizeof(srv));
    srv.cfg = cfg;
    srv.notify_fd = env->notify_fd;
    /* epoll's changes gathered per loop turn: a socket's event set
     * changed twice in a turn (accepted, then its greeting to write; read
     * stopped, then resumed) costs one epoll_ctl or none. No descriptor
     * this role watches is a dup of another, the changelist's one hazard. */
    struct event_config *ecfg = event_config_new();
    if (ecfg == NULL)
        fatal("event_config_new failed");
    event_config_set_flag(ecfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    srv.base = event_base_new_with_config(ecfg);
    event_config_free(ecfg);
    if (srv.base == NULL)
        fatal("event_base_new failed");
    if (paths_get(cfg->state_dir, PATH_QUEUE_TMP, srv.dir_tmp, sizeof(srv.dir_tmp)) < 0 ||
        paths_get(cfg->state_dir, PATH_QUEUE_INCOMING, srv.dir_incoming, sizeof(srv.dir_incoming)) < 0 ||
        paths_get(cfg->state_dir, PATH_QUARANTINE, srv.dir_quarantine, sizeof(srv.dir_quarantine)) < 0)
        fatal("state_dir path too long");
    clean_tmp(srv.dir_tmp);
    char ferr[512];
    srv.resolver = resolver_new(srv.base, cfg->dns.forwarder, cfg->dns.timeout, ferr, sizeof(ferr));
    if (srv.resolver == NULL)
        fatal("resolver: %s", ferr);
    srv.authlimit = authlimit_new();
    authlimit_set_redis(srv.authlimit, cfg->redis.address, cfg->redis.timeout_ms);
    char aerr[512];
    srv.accounts = accounts_cache_new(cfg->state_dir, aerr, sizeof(aerr));
    if (srv.accounts == NULL)
        fatal("accounts: %s", aerr);
    srv.chain = filter_chain_new(cfg, srv.resolver, ferr, sizeof(ferr));
    if (srv.chain == NULL)
        fatal("%s", ferr);
    srv.tls = env->tls;
    srv.workq = workq_new(srv.base, cfg->smtp.commit_threads);
    srv.listeners = xcalloc(env->nlisten ? env->nlisten : 1, sizeof(*srv.listeners));
    srv.nlisteners = env->nlisten;
    for (size_t i = 0; i < env->nlisten; i++) {
        struct smtp_listener *l = &srv.listeners[i];
        l->srv = &srv;
        l->kind = (enum listen_kind)env->listen_kind[i];
        l->proxy = env->listen_proxy[i];
        l->conf = listener_conf(cfg, env, i);
        evutil_make_socket_nonblocking(env->listen_fds[i]);
        /* backlog 0: the master already listens with SOMAXCONN; -1 would
         * make libevent listen() again with 128 and drop SYNs under load */
        l->evl = evconnlistener_new(srv.base, accept_cb, l, LEV_OPT_CLOSE_ON_FREE, 0,
                                    env->listen_fds[i]);
        if (l->evl == NULL)
            fatal("evconnlistener_new failed");
        evconnlistener_set_error_cb(l->evl, accept_error_cb);
    }
    srv.refusal_timer = evtimer_new(srv.base, refusal_flush, &srv);
    srv.sig_term = evsignal_new(srv.base, SIGTERM, on_sigterm, &srv);
    srv.sig_retire = evsignal_new(srv.base, SIGUSR2, on_retire, &srv);
    event_add(srv.sig_term, NULL);
    event_add(srv.sig_retire, NULL);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    role_ready(env, "smtp");

    event_base_dispatch(srv.base);

    log_info("smtp role exits");
    /* No frees of live sessions here: the process is exiting, and a
     * commit in flight must not be cut in two by freeing its buffers. */
    workq_free(&srv.workq);
    return 0;
}
