/*
 * queue_manager.c -- the queue role. It picks up new mail the moment the
 * smtp role notifies it (and by scanning incoming/ and deferred/ at start
 * and every minute), splits each message's recipients by destination,
 * and hands the jobs down: to local.c for a local domain, to dest.c for
 * the others. A message with more than queue.max_received Received
 * headers is bounced as a mail loop.
 *
 * job.c, at the bottom, settles each attempt on disk (results, DSNs,
 * removal or deferral) and hands the message back up through the settled
 * event: here it is forgotten, or its retry timer is armed; a DSN or a
 * forward just queued is taken up the same way.
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <event2/event.h>
#include "../common/mail.h"
#include "delivery_private.h"

static void msg_attempt(struct qmsg *msg);
static void qmgr_load_path(struct qmgr *q, const char *path, bool deferred);

static unsigned
id_hash(const char *id)
{
    return str_hash(STR_HASH_INIT, id) % QMGR_BUCKETS;
}

static struct qmsg *
msg_find(struct qmgr *q, const char *id)
{
    for (struct qmsg *m = q->msgs[id_hash(id)]; m; m = m->hnext)
        if (strcmp(m->m.id, id) == 0)
            return m;
    return NULL;
}

static void
msg_forget(struct qmsg *msg)
{
    struct qmgr *q = msg->q;
    for (struct qmsg **pp = &q->msgs[id_hash(msg->m.id)]; *pp; pp = &(*pp)->hnext)
        if (*pp == msg) {
            *pp = msg->hnext;
            break;
        }
    q->nmsgs--;
    if (msg->timer)
        event_free(msg->timer);
    for (size_t i = 0; i < msg->m.nrcpt; i++) {
        free(msg->reply[i]);
        free(msg->relay[i]);
    }
    free(msg->reply);
    free(msg->relay);
    free(msg->fate);
    free(msg->dsn_passed);
    free(msg->content);
    qf_msg_free(&msg->m);
    free(msg);
}

static void
timer_fire(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    msg_attempt(arg);
}

static void
msg_schedule(struct qmsg *msg)
{
    time_t now = time(NULL);
    time_t wait = msg->m.next_try > now ? msg->m.next_try - now : 0;
    if (msg->timer == NULL)
        msg->timer = evtimer_new(msg->q->base, timer_fire, msg);
    struct timeval tv = { wait, 0 };
    evtimer_add(msg->timer, &tv);
}

static size_t
count_received(const char *p, size_t n)
{
    size_t count = 0;
    struct rfc5322_field f;
    for (const char *q = p; (q = rfc5322_next(q, p + n, &f)) != NULL;)
        count += rfc5322_is(&f, "Received");
    return count;
}

static void
msg_attempt(struct qmsg *msg)
{
    struct qmgr *q = msg->q;
    if (msg->active || q->stopping)
        return;
    free(msg->content);
    msg->content = qf_read_content(msg->path, &msg->m, &msg->content_len);
    if (msg->content == NULL) {
        log_warn("%s: queue file gone or unreadable (%s): dropped from the queue", msg->m.id,
                 strerror(errno));
        msg_forget(msg);
        return;
    }
    msg->active = true;
    for (size_t i = 0; i < msg->m.nrcpt; i++) {
        msg->fate[i] = msg->m.rcpts[i].done ? FATE_SENT : FATE_PENDING;
        if (msg->m.rcpts[i].done)
            continue;
        free(msg->reply[i]);
        free(msg->relay[i]);
        msg->reply[i] = msg->relay[i] = NULL;
        if (msg->m.rcpts[i].last_reply)
            msg->reply[i] = xstrdup(msg->m.rcpts[i].last_reply);
    }
    /* A loop: bounce every recipient, deliver none. */
    if (count_received(msg->content, msg->content_len) > q->cfg->queue.max_received) {
        char r[200], max[16];
        snprintf(max, sizeof(max), "%u", q->cfg->queue.max_received);
        reply_line(r, sizeof(r), R_LOOP_RECEIVED, max, NULL);
        struct job *j = job_new(msg, msg->m.nrcpt);
        for (size_t i = 0; i < msg->m.nrcpt; i++)
            if (!msg->m.rcpts[i].done)
                j->rcpt[j->nrcpt++] = i;
        msg->jobs = 1;
        job_fail(j, FATE_PERM, r, NULL);
        return;
    }
    /* Group the pending recipients by domain; one job per domain. */
    msg->jobs = 1;      /* held until every job is handed out */
    bool *taken = xcalloc(msg->m.nrcpt, sizeof(bool));
    for (size_t i = 0; i < msg->m.nrcpt; i++) {
        if (msg->m.rcpts[i].done || taken[i])
            continue;
        const char *dom = strrchr(msg->m.rcpts[i].addr, '@');
        dom = dom ? dom + 1 : "";
        struct job *j = job_new(msg, msg->m.nrcpt);
        for (size_t k = i; k < msg->m.nrcpt; k++) {
            if (msg->m.rcpts[k].done || taken[k])
                continue;
            const char *dk = strrchr(msg->m.rcpts[k].addr, '@');
            if (str_ieq(dk ? dk + 1 : "", dom)) {
                taken[k] = true;
                j->rcpt[j->nrcpt++] = k;
            }
        }
        msg->jobs++;
        const struct domain_conf *dc = conf_domain(q->cfg, dom);
        if (dc && dc->delivery == DELIVERY_LOCAL)
            local_enqueue(q, j);
        else
            dest_enqueue(q, dom, j);
    }
    free(taken);
    job_done(job_new(msg, 0));     /* the hold */
}

static void
qmgr_load_path(struct qmgr *q, const char *path, bool deferred)
{
    const char *id = strrchr(path, '/');
    id = id ? id + 1 : path;
    if (!queue_id_valid(id))
        return;
    struct qmsg *known = msg_find(q, id);
    if (known) {
        /* moatctl queue requeue moved it from deferred/ back into
         * incoming/ (its next attempt reset on disk): it goes now */
        if (!deferred && known->deferred && !known->active && strcmp(known->path, path) != 0) {
            str_copy(known->path, path, sizeof(known->path));
            known->deferred = false;
            known->m.next_try = 0;
            q->requeued++;
            log_info("%s: requeued: retrying now (attempt %u)", id, known->m.attempts + 1);
            msg_schedule(known);
        }
        return;
    }
    struct qmsg *msg = xcalloc(1, sizeof(*msg));
    char err[512];
    if (qf_load(path, &msg->m, err, sizeof(err)) < 0) {
        log_err("%s", err);
        free(msg);
        return;
    }
    msg->q = q;
    msg->deferred = deferred;
    str_copy(msg->path, path, sizeof(msg->path));
    msg->fate = xcalloc(msg->m.nrcpt, sizeof(*msg->fate));
    msg->reply = xcalloc(msg->m.nrcpt, sizeof(char *));
    msg->relay = xcalloc(msg->m.nrcpt, sizeof(char *));
    msg->dsn_passed = xcalloc(msg->m.nrcpt, sizeof(bool));
    unsigned h = id_hash(msg->m.id);
    msg->hnext = q->msgs[h];
    q->msgs[h] = msg;
    q->nmsgs++;
    if (msg->m.next_try <= time(NULL))
        msg_attempt(msg);
    else
        msg_schedule(msg);
}

/* What job.c hands up (it calls nothing above it): queue files just
 * written (DSNs, forwards), then the messages whose attempt is settled on
 * disk, to forget or to retry. */
static void
on_settled(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct qmgr *q = arg;
    char **fresh = q->fresh;
    size_t nfresh = q->nfresh;
    q->fresh = NULL;
    q->nfresh = 0;
    for (size_t i = 0; i < nfresh; i++) {
        qmgr_load_path(q, fresh[i], false);
        free(fresh[i]);
    }
    free(fresh);
    struct qmsg *msg;
    while ((msg = q->settled) != NULL) {
        q->settled = msg->snext;
        msg->snext = NULL;
        msg->active = false;
        if (msg->retired)
            msg_forget(msg);
        else if (!q->stopping)
            msg_schedule(msg);
    }
}

static void
scan_dir(struct qmgr *q, const char *dir, bool deferred)
{
    DIR *d = opendir(dir);
    if (d == NULL) {
        log_err("opendir %s: %s", dir, strerror(errno));
        return;
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!queue_id_valid(de->d_name))
            continue;
        char path[1400];
        if (str_fmt(path, sizeof(path), "%s/%s", dir, de->d_name) >= 0)
            qmgr_load_path(q, path, deferred);
    }
    closedir(d);
}

static void on_flush(evutil_socket_t fd, short what, void *arg);

/* A queue id of a new message in incoming/, or FLUSH (the web role's queue
 * view: it cannot signal a master that runs as root). */
static void
on_notify(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct qmgr *q = arg;
    char buf[64];
    ssize_t n;
    while ((n = recv(fd, buf, sizeof(buf) - 1, MSG_DONTWAIT)) > 0) {
        if (q->stopping)
            continue;
        buf[n] = '\0';
        if (strcmp(buf, "FLUSH") == 0) {
            on_flush(-1, 0, q);
            continue;
        }
        if (!queue_id_valid(buf))
            continue;
        char path[1200];
        snprintf(path, sizeof(path), "%s/%s", q->dir_incoming, buf);
        qmgr_load_path(q, path, false);
    }
}

static void
on_rescan(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct qmgr *q = arg;
    if (!q->stopping)
        scan_dir(q, q->dir_incoming, false);
}

static void
on_flush(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct qmgr *q = arg;
    size_t n = 0;
    /* what was released or requeued meanwhile; when moatctl queue requeue
     * moved messages back into incoming/, just those go */
    q->requeued = 0;
    scan_dir(q, q->dir_incoming, false);
    if (q->requeued > 0) {
        log_info("requeue: %zu messages retried now", q->requeued);
        return;
    }
    log_info("flush: retrying every deferred message now");
    for (size_t b = 0; b < QMGR_BUCKETS; b++) {
        for (struct qmsg *m = q->msgs[b], *next; m; m = next) {
            next = m->hnext;
            if (!m->active) {
                m->m.next_try = 0;
                n++;
                msg_schedule(m);
            }
        }
    }
    log_info("flush: %zu messages scheduled", n);
}

static bool
busy(struct qmgr *q)
{
    for (size_t b = 0; b < QMGR_BUCKETS; b++)
        for (struct qmsg *m = q->msgs[b]; m; m = m->hnext)
            if (m->active)
                return true;
    return false;
}

static void
on_stop_check(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct qmgr *q = arg;
    if (!busy(q))
        event_base_loopexit(q->base, NULL);
}

static void
on_sigterm(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct qmgr *q = arg;
    if (q->stopping)
        return;
    q->stopping = true;
    log_info("stopping: finishing deliveries in flight");
    struct timeval tv = { 0, 100000 };
    struct event *ev = event_new(q->base, -1, EV_PERSIST, on_stop_check, q);
    event_add(ev, &tv);
    struct timeval limit = { (time_t)q->cfg->smtp.shutdown_timeout, 0 };
    event_base_loopexit(q->base, &limit);
}

int
queue_main(const struct moat_config *cfg, const struct role_env *env)
{
    static struct qmgr q;
    memset(&q, 0, sizeof(q));
    q.cfg = cfg;
    q.base = event_base_new();
    if (q.base == NULL)
        fatal("event_base_new failed");
    char err[512];
    q.res = resolver_new(q.base, cfg->dns.forwarder, cfg->dns.timeout, err, sizeof(err));
    if (q.res == NULL)
        fatal("resolver: %s", err);
    if (cfg->dns.trust_anchor[0] &&
        resolver_trust_anchor(q.res, cfg->dns.trust_anchor, err, sizeof(err)) < 0)
        fatal("dns.trust_anchor: %s", err);
    q.tls = tls_client_ctx(cfg->queue.tls_ca_file, err, sizeof(err));
    if (q.tls == NULL)
        fatal("outbound TLS: %s", err);
    dane_init(&q);
    q.workq = workq_new(q.base, 2);
    q.ev_settled = event_new(q.base, -1, 0, on_settled, &q);
    if (paths_get(cfg->state_dir, PATH_QUEUE_INCOMING, q.dir_incoming, sizeof(q.dir_incoming)) < 0 ||
        paths_get(cfg->state_dir, PATH_QUEUE_DEFERRED, q.dir_deferred, sizeof(q.dir_deferred)) < 0 ||
        paths_get(cfg->state_dir, PATH_QUEUE_TMP, q.dir_tmp, sizeof(q.dir_tmp)) < 0)
        fatal("state_dir path too long");
    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGUSR2, SIG_IGN);
    struct event *ev_notify = event_new(q.base, env->notify_fd, EV_READ | EV_PERSIST, on_notify, &q);
    event_add(ev_notify, NULL);
    struct event *ev_rescan = event_new(q.base, -1, EV_PERSIST, on_rescan, &q);
    struct timeval minute = { 60, 0 };
    event_add(ev_rescan, &minute);
    struct event *ev_term = evsignal_new(q.base, SIGTERM, on_sigterm, &q);
    struct event *ev_flush = evsignal_new(q.base, SIGUSR1, on_flush, &q);
    event_add(ev_term, NULL);
    event_add(ev_flush, NULL);

    scan_dir(&q, q.dir_incoming, false);
    scan_dir(&q, q.dir_deferred, true);
    on_notify(env->notify_fd, EV_READ, &q);
    expire_start(&q);
    tlsrpt_start(&q);
    log_info("queue role ready, %zu messages in the queue", q.nmsgs);

    event_base_dispatch(q.base);
    log_info("queue role exits");
    return 0;
}
