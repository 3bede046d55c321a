/*
 * supervisor.c -- the master process. It checks the config, binds every
 * listening socket, forks the roles (which drop privileges), restarts a
 * role that dies (with back-off), reloads on SIGHUP without dropping open
 * sessions, forwards SIGUSR1 (queue flush) to the queue role, and on
 * SIGTERM stops the roles and exits 0 once they are gone. The master never
 * reads network input. Under systemd (Type=notify) it tells the manager
 * READY=1, RELOADING=1 and STOPPING=1 over $NOTIFY_SOCKET (sd_notify(3)'s
 * protocol: one datagram on a unix socket; no libsystemd needed).
 */
#include <errno.h>
#include <malloc.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <unistd.h>
#include <event2/event.h>
#include <openssl/ssl.h>
#include "mail.h"

#define MAX_ROLES 8
#define MAX_LISTEN 64
#define MAX_BACKOFF 60

struct role_slot {
    const struct role_desc *desc;
    pid_t pid;
    pid_t retiring[8];          /* old processes still draining */
    pid_t handoff_from;         /* reload: the old process, until the new one is ready */
    double started;
    unsigned fails;
    struct event *restart;
    bool restart_after_exit;    /* queue role at reload: start once old exits */
};

struct master {
    struct moat_config cfg;
    struct event_base *base;
    struct role_slot roles[MAX_ROLES];
    size_t nroles;
    int listen_fds[MAX_LISTEN];
    bool listen_proxy[MAX_LISTEN];
    int listen_kind[MAX_LISTEN];
    char listen_addr[MAX_LISTEN][300];
    size_t nlisten;
    int notify[2];              /* [0] smtp sends, [1] queue receives */
    SSL_CTX *tls;
    bool stopping;
    struct event *stop_timer;
    int notify_fd;              /* systemd's $NOTIFY_SOCKET, or -1 */
    struct sockaddr_un notify_sa;
    socklen_t notify_salen;
    /* what moatctl status and reload read (status_write) */
    time_t started;
    unsigned reloads;
    char reload_result[200];        /* "ok", or why it failed */
    char reload_errors[8][400];     /* the config's problems, file:line: key: why */
    size_t nreload_errors;
    struct stat domains_seen;       /* domains.conf as the config last read it */
};

/* state_dir/moatd.status, for moatctl status and reload (supervisor_ctl.c
 * reads it): the version, the master's pid, the roles' pids, the
 * listeners, and the count and outcome of reloads. Written whole and
 * renamed into place at every change; removed at stop. */
static void
status_write(struct master *m)
{
    char path[1200], tmp[1300];
    if (paths_get(m->cfg.state_dir, PATH_STATUS, path, sizeof(path)) < 0 ||
        str_fmt(tmp, sizeof(tmp), "%s.tmp", path) < 0)
        return;
    FILE *f = fopen(tmp, "we");
    if (f == NULL) {
        log_warn("%s: %s", tmp, strerror(errno));
        return;
    }
    fprintf(f, "version %s\npid %d\nstarted %lld\nreloads %u\nreload %s\n", MOAT_VERSION,
            (int)getpid(), (long long)m->started, m->reloads,
            m->reload_result[0] ? m->reload_result : "none");
    for (size_t i = 0; i < m->nreload_errors; i++)
        fprintf(f, "reload_error %s\n", m->reload_errors[i]);
    for (size_t i = 0; i < m->nroles; i++)
        if (m->roles[i].desc)       /* at start: the ones started so far */
            fprintf(f, "role %s %d\n", m->roles[i].desc->name, (int)m->roles[i].pid);
    for (size_t i = 0; i < m->nlisten; i++)
        fprintf(f, "listen %s\n", m->listen_addr[i]);
    if (fclose(f) != 0 || rename(tmp, path) < 0) {
        log_warn("%s: %s", path, strerror(errno));
        unlink(tmp);
    }
}

/* Take $NOTIFY_SOCKET ("/path" or "@abstract") from the environment, so that
 * nothing the master starts inherits it, and open a socket to it. */
static void
notify_open(struct master *m)
{
    m->notify_fd = -1;
    const char *e = getenv("NOTIFY_SOCKET");
    size_t n = e ? strlen(e) : 0;
    if (n >= 2 && n < sizeof(m->notify_sa.sun_path) && (e[0] == '/' || e[0] == '@')) {
        memset(&m->notify_sa, 0, sizeof(m->notify_sa));
        m->notify_sa.sun_family = AF_UNIX;
        memcpy(m->notify_sa.sun_path, e, n);
        if (e[0] == '@')
            m->notify_sa.sun_path[0] = '\0';
        m->notify_salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
        m->notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    } else if (e) {
        log_warn("NOTIFY_SOCKET: '%s' is not a unix socket address; not notifying", e);
    }
    unsetenv("NOTIFY_SOCKET");
}

/* One state change for systemd, e.g. "READY=1"; nothing when not under it. */
static void
notify_send(struct master *m, const char *state)
{
    if (m->notify_fd < 0)
        return;
    if (sendto(m->notify_fd, state, strlen(state), MSG_NOSIGNAL,
               (struct sockaddr *)&m->notify_sa, m->notify_salen) < 0)
        log_warn("NOTIFY_SOCKET: cannot send %.20s: %s", state, strerror(errno));
}

static void
report_stderr(const char *msg, void *ctx)
{
    (void)ctx;
    fprintf(stderr, "%s\n", msg);
}

static int
bind_one(const char *addr)
{
    char host[256];
    uint16_t port;
    struct sockaddr_storage ss;
    socklen_t len;
    if (hostport_split(addr, host, sizeof(host), &port) < 0 ||
        sockaddr_parse(host, port, &ss, &len) < 0) {
        errno = EINVAL;
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, SOMAXCONN) < 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

/* Bind the config's listeners; reuse the fds of addresses already bound. */
static int
bind_listeners(struct master *m, const struct moat_config *cfg)
{
    int fds[MAX_LISTEN];
    bool proxy[MAX_LISTEN];
    int kind[MAX_LISTEN];
    char addrs[MAX_LISTEN][300];
    size_t n = 0;
    for (int k = 0; k < LISTEN__COUNT; k++) {
        const struct listen_list *ll = conf_listeners(cfg, (enum listen_kind)k);
        for (size_t i = 0; i < ll->n; i++) {
            if (n == MAX_LISTEN) {
                log_err("more than %d listeners", MAX_LISTEN);
                goto fail;
            }
            const char *a = ll->v[i].addr;
            int fd = -1;
            for (size_t j = 0; j < m->nlisten; j++)
                if (m->listen_fds[j] >= 0 && strcmp(m->listen_addr[j], a) == 0) {
                    fd = m->listen_fds[j];
                    m->listen_fds[j] = -1;      /* moved */
                }
            if (fd < 0 && (fd = bind_one(a)) < 0) {
                log_err("listen %s: %s", a, strerror(errno));
                goto fail;
            }
            fds[n] = fd;
            proxy[n] = ll->v[i].proxy_protocol;
            kind[n] = k;
            str_copy(addrs[n], a, sizeof(addrs[n]));
            n++;
        }
    }
    for (size_t j = 0; j < m->nlisten; j++)     /* addresses no longer wanted */
        if (m->listen_fds[j] >= 0)
            close(m->listen_fds[j]);
    memcpy(m->listen_fds, fds, n * sizeof(int));
    memcpy(m->listen_proxy, proxy, n * sizeof(bool));
    memcpy(m->listen_kind, kind, n * sizeof(int));
    memcpy(m->listen_addr, addrs, sizeof(addrs[0]) * n);
    m->nlisten = n;
    return 0;
fail:
    /* Put back what was moved; close what was new. */
    for (size_t i = 0; i < n; i++) {
        bool old = false;
        for (size_t j = 0; j < m->nlisten; j++)
            if (strcmp(m->listen_addr[j], addrs[i]) == 0 && m->listen_fds[j] < 0) {
                m->listen_fds[j] = fds[i];
                old = true;
            }
        if (!old)
            close(fds[i]);
    }
    return -1;
}

void
role_ready(const struct role_env *env, const char *role)
{
    log_info("%s role ready, %zu listeners", role, env->nlisten);
    if (env->predecessor > 0 && kill(env->predecessor, SIGUSR2) == 0)
        log_info("took over from pid %d, which now finishes its sessions", (int)env->predecessor);
}

/* A directory of the state, made if missing, owned by the daemon's user. */
static int
make_owned(const char *path, uid_t uid, gid_t gid)
{
    if (mkdir_p(path, 0750) < 0) {
        fprintf(stderr, "moatd: mkdir %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (getuid() == 0 && chown(path, uid, gid) < 0) {
        fprintf(stderr, "moatd: chown %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

static int
prepare_state_dir(const struct moat_config *cfg, uid_t uid, gid_t gid)
{
    if (make_owned(cfg->state_dir, uid, gid) < 0)
        return -1;
    for (int i = 0; i < PATH__COUNT; i++) {
        char path[1200];
        if (!paths_made_at_start((enum state_path)i))
            continue;
        if (paths_get(cfg->state_dir, (enum state_path)i, path, sizeof(path)) < 0 ||
            make_owned(path, uid, gid) < 0)
            return -1;
    }
    return 0;
}

static int
lookup_user(const struct moat_config *cfg, uid_t *uid, gid_t *gid)
{
    *uid = getuid();
    *gid = getgid();
    if (getuid() != 0)
        return 0;
    struct passwd *pw = getpwnam(cfg->user);
    if (pw == NULL) {
        fprintf(stderr, "moatd: %s: user: no such user '%s' (create it, or set user)\n",
                cfg->path, cfg->user);
        return -1;
    }
    *uid = pw->pw_uid;
    *gid = pw->pw_gid;
    return 0;
}

static void
drop_privileges(const struct moat_config *cfg)
{
    if (getuid() != 0)
        return;
    struct passwd *pw = getpwnam(cfg->user);
    if (pw == NULL)
        fatal("user %s vanished", cfg->user);
    if (setgroups(0, NULL) < 0 || setgid(pw->pw_gid) < 0 || setuid(pw->pw_uid) < 0)
        fatal("cannot drop privileges to %s: %s", cfg->user, strerror(errno));
    if (setuid(0) == 0)
        fatal("privileges were not dropped");
}

static pid_t
fork_role(struct master *m, struct role_slot *r)
{
    /* Signals stay blocked from before fork until the child has put back
     * the default handlers: in between, the child still has the master's
     * libevent handler, which would pass a SIGTERM meant for the child to
     * the master's signal pipe, and the child would never stop. */
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &old);
    pid_t pid = fork();
    if (pid != 0) {
        int saved = errno;
        sigprocmask(SIG_SETMASK, &old, NULL);
        if (pid < 0)
            log_err("fork %s: %s", r->desc->name, strerror(saved));
        return pid < 0 ? -1 : pid;
    }
    /* child */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() == 1)
        _exit(0);
    int sigs[] = { SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2, SIGPIPE };
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
        signal(sigs[i], SIG_DFL);
    /* The master's event base (and its signal handling) is not ours. The
     * epoll instance is shared with the master after fork: reinit first,
     * or freeing would remove the master's fds from it. */
    event_reinit(m->base);
    event_base_free(m->base);
    m->base = NULL;
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    log_set_role(r->desc->name);
    if (m->notify_fd >= 0)          /* only the master speaks to systemd */
        close(m->notify_fd);
    drop_privileges(&m->cfg);
    /* the role's own listeners; the others are closed in it */
    static int fds[MAX_LISTEN], kinds[MAX_LISTEN];
    static bool proxies[MAX_LISTEN];
    size_t n = 0;
    for (size_t i = 0; i < m->nlisten; i++) {
        if ((r->desc->listen_mask & LISTEN_MASK(m->listen_kind[i])) == 0) {
            close(m->listen_fds[i]);
            continue;
        }
        fds[n] = m->listen_fds[i];
        kinds[n] = m->listen_kind[i];
        proxies[n++] = m->listen_proxy[i];
    }
    struct role_env env = {
        .notify_fd = strcmp(r->desc->name, "queue") == 0 ? m->notify[1] : m->notify[0],
        .listen_fds = fds,
        .listen_proxy = proxies,
        .listen_kind = kinds,
        .tls = m->tls,
        .nlisten = n,
        .predecessor = r->handoff_from,
    };
    /* A role works message by message: what it frees (a transaction's
     * write buffer, a hook job, a delivery's buffers) it needs again a
     * moment later. glibc gives freed memory at the heap's top back to the
     * kernel at 128 KB (and moves its mmap threshold as it goes), so each
     * message grew the heap again with brk and faulted in zeroed pages:
     * 1.5 brk a message in the smtp role. Up to 8 MB stays in the role. */
    mallopt(M_MMAP_THRESHOLD, 4 << 20);
    mallopt(M_TRIM_THRESHOLD, 8 << 20);
    trace_init(&m->cfg);
    cluster_share_init(&m->cfg);
    if (strcmp(r->desc->name, "queue") == 0) {
        cluster_start(&m->cfg);     /* the one role every node runs: its heartbeat */
        cluster_share_start(&m->cfg);
    }
    int rc = r->desc->main(&m->cfg, &env);
    _exit(rc);
}

static void
start_role(struct master *m, struct role_slot *r)
{
    r->pid = fork_role(m, r);
    r->started = time_mono();
    if (r->pid > 0)
        log_info("started %s role, pid %d", r->desc->name, (int)r->pid);
    status_write(m);
}

struct restart_arg {
    struct master *m;
    struct role_slot *r;
};

static void
restart_fire(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct restart_arg *ra = arg;
    if (!ra->m->stopping && ra->r->pid <= 0)
        start_role(ra->m, ra->r);
    free(ra);
}

static void
schedule_restart(struct master *m, struct role_slot *r)
{
    double lived = time_mono() - r->started;
    if (lived > 30)
        r->fails = 0;
    unsigned delay = r->fails == 0 ? 0 : 1u << (r->fails - 1 < 6 ? r->fails - 1 : 6);
    if (delay > MAX_BACKOFF)
        delay = MAX_BACKOFF;
    r->fails++;
    log_warn("restarting %s role in %us", r->desc->name, delay);
    struct restart_arg *ra = xcalloc(1, sizeof(*ra));
    ra->m = m;
    ra->r = r;
    struct timeval tv = { (time_t)delay, 0 };
    event_base_once(m->base, -1, EV_TIMEOUT, restart_fire, ra, &tv);
}

static bool
all_gone(struct master *m)
{
    for (size_t i = 0; i < m->nroles; i++) {
        if (m->roles[i].pid > 0)
            return false;
        for (size_t k = 0; k < 8; k++)
            if (m->roles[i].retiring[k] > 0)
                return false;
    }
    return true;
}

static void
on_sigchld(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    struct master *m = arg;
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        char how[64];
        if (WIFSIGNALED(status))
            snprintf(how, sizeof(how), "killed by signal %d", WTERMSIG(status));
        else
            snprintf(how, sizeof(how), "exit status %d", WEXITSTATUS(status));
        for (size_t i = 0; i < m->nroles; i++) {
            struct role_slot *r = &m->roles[i];
            for (size_t k = 0; k < 8; k++)
                if (r->retiring[k] == pid) {
                    r->retiring[k] = 0;
                    if (r->handoff_from == pid)
                        r->handoff_from = 0;
                    log_info("old %s role pid %d finished (%s)", r->desc->name, (int)pid, how);
                    if (r->restart_after_exit && !m->stopping) {
                        r->restart_after_exit = false;
                        start_role(m, r);
                    }
                }
            if (r->pid != pid)
                continue;
            r->pid = 0;
            if (m->stopping) {
                log_info("%s role pid %d stopped (%s)", r->desc->name, (int)pid, how);
            } else {
                log_err("%s role pid %d died (%s)", r->desc->name, (int)pid, how);
                schedule_restart(m, r);
                status_write(m);
            }
        }
    }
    if (m->stopping && all_gone(m))
        event_base_loopexit(m->base, NULL);
}

static void
stop_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct master *m = arg;
    log_warn("roles did not stop in time; killing them");
    for (size_t i = 0; i < m->nroles; i++) {
        if (m->roles[i].pid > 0)
            kill(m->roles[i].pid, SIGKILL);
        for (size_t k = 0; k < 8; k++)
            if (m->roles[i].retiring[k] > 0)
                kill(m->roles[i].retiring[k], SIGKILL);
    }
}

static void
on_sigterm(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    struct master *m = arg;
    if (m->stopping)
        return;
    m->stopping = true;
    notify_send(m, "STOPPING=1");
    log_info("received signal %d: stopping", (int)sig);
    for (size_t i = 0; i < m->nlisten; i++)
        close(m->listen_fds[i]);
    m->nlisten = 0;
    for (size_t i = 0; i < m->nroles; i++) {
        if (m->roles[i].pid > 0)
            kill(m->roles[i].pid, SIGTERM);
        for (size_t k = 0; k < 8; k++)
            if (m->roles[i].retiring[k] > 0)
                kill(m->roles[i].retiring[k], SIGTERM);
    }
    struct timeval tv = { (time_t)m->cfg.smtp.shutdown_timeout + 10, 0 };
    m->stop_timer = evtimer_new(m->base, stop_timeout, m);
    evtimer_add(m->stop_timer, &tv);
    if (all_gone(m))
        event_base_loopexit(m->base, NULL);
}

static void
retire(struct role_slot *r, int sig)
{
    for (size_t k = 0; k < 8; k++)
        if (r->retiring[k] == 0) {
            r->retiring[k] = r->pid;
            break;
        }
    kill(r->pid, sig);
    r->pid = 0;
}

/* A problem of the config at reload: logged, and kept for moatctl reload. */
static void
report_reload(const char *msg, void *ctx)
{
    struct master *m = ctx;
    log_err("%s", msg);
    if (m->nreload_errors < sizeof(m->reload_errors) / sizeof(m->reload_errors[0]))
        str_copy_line(m->reload_errors[m->nreload_errors++], msg, sizeof(m->reload_errors[0]));
}

/* SIGHUP: the new config, or the old one kept; NULL or why not. */
static const char *
reload(struct master *m)
{
    log_info("reloading %s", m->cfg.path);
    m->nreload_errors = 0;
    struct moat_config ncfg;
    if (conf_load(m->cfg.path, &ncfg, report_reload, m) < 0) {
        log_err("reload failed: configuration has errors; still running the old one");
        conf_free(&ncfg);
        return "the configuration has errors";
    }
    if (strcmp(ncfg.state_dir, m->cfg.state_dir) != 0 || strcmp(ncfg.user, m->cfg.user) != 0) {
        log_err("reload: state_dir and user cannot change without a restart; reload refused");
        conf_free(&ncfg);
        return "state_dir and user cannot change without a restart";
    }
    SSL_CTX *ntls = NULL;
    if (ncfg.tls.cert[0]) {
        char err[512];
        ntls = tls_server_ctx(ncfg.tls.cert, ncfg.tls.key, err, sizeof(err));
        if (ntls == NULL) {
            log_err("reload failed: tls: %s; still running the old config", err);
            conf_free(&ncfg);
            return "tls";
        }
    }
    if (bind_listeners(m, &ncfg) < 0) {
        SSL_CTX_free(ntls);
        log_err("reload failed: cannot bind the new listeners; still running the old config");
        conf_free(&ncfg);
        return "cannot bind the new listeners";
    }
    conf_free(&m->cfg);
    m->cfg = ncfg;
    redis_setup(&m->cfg.redis);
    log_set_format(m->cfg.log.format, m->cfg.hostname);
    SSL_CTX_free(m->tls);
    m->tls = ntls;
    for (size_t i = 0; i < m->nroles; i++) {
        struct role_slot *r = &m->roles[i];
        if (r->pid <= 0)
            continue;
        if (r->desc->handover) {
            /* New sessions go to a new process; the old one keeps its open
             * sessions until they end. It keeps accepting until the new
             * one is ready (which then sends it SIGUSR2), so a role that
             * takes seconds to start (the rules) leaves no gap; one that
             * fails to start leaves the old one serving. */
            if (r->handoff_from > 0)
                retire(r, SIGUSR2);     /* a reload during a reload: no third */
            else
                r->handoff_from = r->pid;
            for (size_t k = 0; k < 8 && r->pid > 0; k++)
                if (r->retiring[k] == 0) {
                    r->retiring[k] = r->pid;
                    break;
                }
            r->pid = 0;
            start_role(m, r);
        } else {
            /* One queue manager at a time: the new one starts when the old
             * one has finished its deliveries in flight. */
            retire(r, SIGTERM);
            r->restart_after_exit = true;
        }
    }
    log_info("reload done");
    return NULL;
}

/* systemd hears RELOADING=1, then READY=1 with the outcome in STATUS. */
/* state_dir/domains.conf's identity (all zero when there is none). */
static void
domains_stat(const struct master *m, struct stat *st)
{
    char path[1200];
    memset(st, 0, sizeof(*st));
    if (paths_get(m->cfg.state_dir, PATH_DOMAINS, path, sizeof(path)) == 0 && stat(path, st) < 0)
        memset(st, 0, sizeof(*st));
}

static void on_sighup(evutil_socket_t sig, short what, void *arg);

/* domains.conf is written by moatctl domain add, by the web API (as the
 * daemon's user, which cannot signal the master) and, with node.share, by
 * the queue role from the cluster's copy (cluster_share.c); a change the
 * config has not read yet is taken by a reload within a second. */
static void
on_domains_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct master *m = arg;
    struct stat st;
    domains_stat(m, &st);
    if (m->stopping ||
        (st.st_ino == m->domains_seen.st_ino && st.st_size == m->domains_seen.st_size &&
         st.st_mtim.tv_sec == m->domains_seen.st_mtim.tv_sec &&
         st.st_mtim.tv_nsec == m->domains_seen.st_mtim.tv_nsec))
        return;
    log_info("domains.conf changed: reloading to take it");
    on_sighup(SIGHUP, 0, m);
}

static void
on_sighup(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    struct master *m = arg;
    if (m->stopping)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    char state[200];
    str_fmt(state, sizeof(state), "RELOADING=1\nMONOTONIC_USEC=%llu",
            (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000);
    notify_send(m, state);
    domains_stat(m, &m->domains_seen);
    const char *failed = reload(m);
    m->reloads++;
    str_fmt(m->reload_result, sizeof(m->reload_result), "%s%s", failed ? "failed " : "ok",
            failed ? failed : "");
    status_write(m);
    if (failed)
        str_fmt(state, sizeof(state), "READY=1\nSTATUS=reload failed: %s; running the old config",
                failed);
    else
        str_fmt(state, sizeof(state), "READY=1\nSTATUS=running, config reloaded");
    notify_send(m, state);
}

static void
on_sigusr1(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    struct master *m = arg;
    for (size_t i = 0; i < m->nroles; i++)
        if (strcmp(m->roles[i].desc->name, "queue") == 0 && m->roles[i].pid > 0)
            kill(m->roles[i].pid, SIGUSR1);
}

/* The pid in the pid file, or 0. */
static pid_t
read_pid_file(const struct moat_config *cfg)
{
    FILE *f = fopen(cfg->pid_file, "r");
    if (f == NULL)
        return 0;
    long pid = 0;
    if (fscanf(f, "%ld", &pid) != 1 || pid <= 0)
        pid = 0;
    fclose(f);
    return (pid_t)pid;
}

/* Another moatd with this pid file alive? */
static bool
already_running(const struct moat_config *cfg)
{
    pid_t old = read_pid_file(cfg);
    bool alive = old > 0 && old != getpid() && kill(old, 0) == 0;
    if (alive)
        fprintf(stderr, "moatd: already running as pid %ld (%s)\n", (long)old, cfg->pid_file);
    return alive;
}

static int
write_pid_file(const struct moat_config *cfg)
{
    char tmp[1100], buf[32];
    if (str_fmt(tmp, sizeof(tmp), "%s.tmp", cfg->pid_file) < 0)
        return -1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        fprintf(stderr, "moatd: %s: %s\n", tmp, strerror(errno));
        return -1;
    }
    int n = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
    if (write_full(fd, buf, (size_t)n) < 0 || close(fd) < 0 || rename(tmp, cfg->pid_file) < 0) {
        fprintf(stderr, "moatd: %s: %s\n", cfg->pid_file, strerror(errno));
        return -1;
    }
    return 0;
}

int
supervisor_signal(const struct moat_config *cfg, int sig)
{
    pid_t pid = read_pid_file(cfg);
    if (pid <= 0) {
        errno = ESRCH;
        return -1;
    }
    return kill(pid, sig);
}

static void
daemonize(bool keep_stderr)
{
    pid_t pid = fork();
    if (pid < 0)
        fatal("fork: %s", strerror(errno));
    if (pid > 0)
        _exit(0);
    setsid();
    pid = fork();
    if (pid < 0)
        fatal("fork: %s", strerror(errno));
    if (pid > 0)
        _exit(0);
    int fd = open("/dev/null", O_RDWR);
    if (fd >= 0) {
        dup2(fd, 0);
        dup2(fd, 1);
        if (!keep_stderr)
            dup2(fd, 2);
        if (fd > 2)
            close(fd);
    }
}

int
supervisor_run(const char *config_path, bool foreground, const struct role_desc *roles,
               size_t nroles)
{
    static struct master m;
    memset(&m, 0, sizeof(m));
    notify_open(&m);
    if (conf_load(config_path, &m.cfg, report_stderr, NULL) < 0)
        return 1;
    redis_setup(&m.cfg.redis);      /* the roles inherit it */
    if (m.cfg.redis.address[0]) {
        /* A wrong password is a config error, said at once; a Redis that
         * is away now is a passing fault (mail waits with a tempfail). */
        char err[600];
        int rc = redis_check(m.cfg.redis.address, m.cfg.redis.timeout_ms, err, sizeof(err));
        if (rc == -2) {
            fprintf(stderr, "moatd: %s: %s\n", m.cfg.path, err);
            return 1;
        }
        if (rc < 0)
            fprintf(stderr, "moatd: warning: %s (mail is answered 4xx until Redis is back)\n",
                    err);
    }
    uid_t uid;
    gid_t gid;
    if (lookup_user(&m.cfg, &uid, &gid) < 0 || prepare_state_dir(&m.cfg, uid, gid) < 0)
        return 1;
    /* -f: stderr. In the background: syslog (journald reads it), or
     * stderr kept open for a supervisor that captures it. */
    enum log_target lt = foreground || strcmp(m.cfg.log.target, "stderr") == 0 ? LOG_TO_STDERR
                                                                               : LOG_TO_SYSLOG;
    /* Until it is in the background, moatd tells the one who started it. */
    log_init("moatd", LOG_TO_STDERR, m.cfg.log.debug);
    log_set_role("master");
    if (already_running(&m.cfg))
        return 1;

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max > 1048576 ? 1048576 : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (m.cfg.tls.cert[0]) {
        char err[512];
        m.tls = tls_server_ctx(m.cfg.tls.cert, m.cfg.tls.key, err, sizeof(err));
        if (m.tls == NULL) {
            fprintf(stderr, "moatd: %s: tls: %s\n", m.cfg.path, err);
            return 1;
        }
    }
    if (bind_listeners(&m, &m.cfg) < 0) {
        fprintf(stderr, "moatd: cannot bind the listeners (see above)\n");
        return 1;
    }
    if (!foreground)
        daemonize(lt == LOG_TO_STDERR);
    log_init("moatd", lt, m.cfg.log.debug);
    log_set_format(m.cfg.log.format, m.cfg.hostname);
    if (write_pid_file(&m.cfg) < 0)
        return 1;
    if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, m.notify) < 0)
        fatal("socketpair: %s", strerror(errno));
    int bufsz = 1 << 20;
    setsockopt(m.notify[0], SOL_SOCKET, SO_SNDBUF, &bufsz, sizeof(bufsz));
    setsockopt(m.notify[1], SOL_SOCKET, SO_RCVBUF, &bufsz, sizeof(bufsz));
    fcntl(m.notify[1], F_SETFL, O_NONBLOCK);
    /* CLOEXEC is not wanted: roles are forked, not exec'ed; keep it anyway
     * so that nothing a role might exec inherits these. */

    m.base = event_base_new();
    struct event *ev_chld = evsignal_new(m.base, SIGCHLD, on_sigchld, &m);
    struct event *ev_term = evsignal_new(m.base, SIGTERM, on_sigterm, &m);
    struct event *ev_int = evsignal_new(m.base, SIGINT, on_sigterm, &m);
    struct event *ev_hup = evsignal_new(m.base, SIGHUP, on_sighup, &m);
    struct event *ev_usr1 = evsignal_new(m.base, SIGUSR1, on_sigusr1, &m);
    event_add(ev_chld, NULL);
    event_add(ev_term, NULL);
    event_add(ev_int, NULL);
    event_add(ev_hup, NULL);
    event_add(ev_usr1, NULL);
    signal(SIGPIPE, SIG_IGN);
    domains_stat(&m, &m.domains_seen);
    struct event *ev_domains = event_new(m.base, -1, EV_PERSIST, on_domains_tick, &m);
    struct timeval every = { 1, 0 };
    event_add(ev_domains, &every);

    log_info("moatd %s starting, config %s, state in %s", MOAT_VERSION, m.cfg.path,
             m.cfg.state_dir);
    m.nroles = nroles < MAX_ROLES ? nroles : MAX_ROLES;
    m.started = time(NULL);
    for (size_t i = 0; i < m.nroles; i++) {
        m.roles[i].desc = &roles[i];
        start_role(&m, &m.roles[i]);
    }
    /* The listeners are bound and take connections into their backlog, so
     * a client that connects from now on is served once its role is up. */
    char state[120];
    str_fmt(state, sizeof(state), "READY=1\nSTATUS=running: %zu roles, %zu listeners", m.nroles,
            m.nlisten);
    notify_send(&m, state);
    event_base_dispatch(m.base);

    event_free(ev_chld);
    event_free(ev_term);
    event_free(ev_int);
    event_free(ev_hup);
    event_free(ev_usr1);
    event_free(ev_domains);
    if (m.stop_timer)
        event_free(m.stop_timer);
    event_base_free(m.base);
    unlink(m.cfg.pid_file);
    char status[1200];
    if (paths_get(m.cfg.state_dir, PATH_STATUS, status, sizeof(status)) == 0)
        unlink(status);
    log_info("moatd stopped");
    if (m.notify_fd >= 0)
        close(m.notify_fd);
    conf_free(&m.cfg);
    return 0;
}
