/*
 * queue_manager.c -- the queue role. It picks up new mail the moment the
 * smtp role notifies it (and by scanning incoming/ and deferred/ at start
 * and every minute), splits each message's recipients by destination,
 * hands the jobs to dest.c, and settles the outcome: delivered recipients
 * are done, temporary failures are retried with exponential back-off up to
 * queue.max_lifetime, permanent failures and expiry produce a DSN to the
 * sender (never to the null sender). A message with more than
 * queue.max_received Received headers is bounced as a mail loop.
 *
 * A queue file is removed only after its last recipient is settled and
 * any DSN for it is itself safely queued.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include <event2/event.h>
#include "../common/mail.h"
#include "delivery_private.h"

static void msg_attempt(struct qmsg *msg);
static void qmgr_load_path(struct qmgr *q, const char *path, bool deferred);

static unsigned
id_hash(const char *id)
{
    unsigned h = 2166136261u;
    for (; *id; id++)
        h = (h ^ (unsigned char)*id) * 16777619u;
    return h % QMGR_BUCKETS;
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
    free(msg->content);
    qf_msg_free(&msg->m);
    free(msg);
}

void
qmgr_rcpt_result(struct qmsg *msg, size_t idx, enum rcpt_fate fate, const char *reply,
                 const char *relay)
{
    if (idx >= msg->m.nrcpt || msg->fate[idx] != FATE_PENDING)
        return;
    msg->fate[idx] = fate;
    free(msg->reply[idx]);
    free(msg->relay[idx]);
    msg->reply[idx] = xstrdup(reply);
    msg->relay[idx] = relay ? xstrdup(relay) : NULL;
}

static unsigned
backoff(const struct moat_config *cfg, unsigned attempts)
{
    unsigned long long d = cfg->queue.min_backoff;
    for (unsigned i = 1; i < attempts && d < cfg->queue.max_backoff; i++)
        d *= 2;
    if (d > cfg->queue.max_backoff)
        d = cfg->queue.max_backoff;
    return (unsigned)d;
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

/* Queue a DSN for the failed recipients. Returns 0 when it is on disk (or
 * none is due), -1 when the original must stay until it can be queued. */
static int
send_bounce(struct qmgr *q, struct qmsg *msg, const struct bounce_rcpt *br, size_t n)
{
    if (n == 0)
        return 0;
    if (msg->m.sender[0] == '\0') {
        log_info("%s: sender is <>: no DSN for %zu failed recipients", msg->m.id, n);
        return 0;
    }
    size_t len;
    char *text = bounce_build(q->cfg->hostname, &msg->m, msg->content ? msg->content : "",
                              msg->content_len, br, n, &len);
    struct queue_msg b;
    memset(&b, 0, sizeof(b));
    queue_id_new(b.id);
    b.arrival = time(NULL);
    char empty[1] = "", local[] = "127.0.0.1";
    b.sender = empty;
    struct qf_rcpt r = { .addr = msg->m.sender };
    b.rcpts = &r;
    b.nrcpt = 1;
    b.client = local;
    /* This blocks the loop for one fsync; bounces are rare, and the
     * original is removed only once its DSN is durable. */
    int rc = qf_store(q->dir_incoming, q->dir_tmp, &b, text, len);
    free(text);
    if (rc < 0) {
        log_err("%s: cannot queue DSN: %s", msg->m.id, strerror(errno));
        return -1;
    }
    log_info("%s: sender non-delivery notification: %s", msg->m.id, b.id);
    char path[1200];
    snprintf(path, sizeof(path), "%s/%s", q->dir_incoming, b.id);
    qmgr_load_path(q, path, false);
    return 0;
}

static void
append_status(struct qmsg *msg, bool *newly_done)
{
    int fd = open(msg->path, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0) {
        log_err("%s: cannot record status: %s", msg->m.id, strerror(errno));
        return;
    }
    char buf[1200];
    int err = 0;
    for (size_t i = 0; i < msg->m.nrcpt; i++) {
        if (newly_done[i]) {
            snprintf(buf, sizeof(buf), "%zu", i);
            err |= qf_write_str(fd, QF_DONE, buf);
        } else if (!msg->m.rcpts[i].done && msg->reply[i]) {
            snprintf(buf, sizeof(buf), "%zu %.1000s", i, msg->reply[i]);
            err |= qf_write_str(fd, QF_LAST_REPLY, buf);
        }
    }
    snprintf(buf, sizeof(buf), "%u %lld", msg->m.attempts, (long long)msg->m.next_try);
    err |= qf_write_str(fd, QF_ATTEMPT, buf);
    /* No fsync: a lost status record costs a repeated attempt, never mail. */
    if (err)
        log_err("%s: writing status: %s", msg->m.id, strerror(errno));
    close(fd);
}

static void
log_outcome(struct qmsg *msg, size_t i, const char *status)
{
    double delay = time_now() - (double)msg->m.arrival;
    log_info("%s: to=<%s>, relay=%s, delay=%.2f, tries=%u, status=%s (%s)", msg->m.id,
             msg->m.rcpts[i].addr, msg->relay[i] ? msg->relay[i] : "none", delay,
             msg->m.attempts + 1, status, msg->reply[i] ? msg->reply[i] : "");
    static const char *const what[][2] = {
        { "sent", "delivered" }, { "bounced", "bounced" }, { "expired", "bounced" },
        { "deferred", "deferred" },
    };
    const char *w = status;
    for (size_t k = 0; k < sizeof(what) / sizeof(what[0]); k++)
        if (strcmp(status, what[k][0]) == 0)
            w = what[k][1];
    const char *rcpt = msg->m.rcpts[i].addr;
    struct msg_event e = {
        .what = w, .qid = msg->m.id, .sender = msg->m.sender, .rcpts = &rcpt, .nrcpt = 1,
        .reason = strcmp(status, "expired") == 0 ? "expired" : NULL,
        .detail = msg->reply[i], .client = msg->relay[i],
    };
    trace_message(&e);
}

/* Every job of this attempt has come back: settle the message. */
static void
msg_settle(struct qmsg *msg)
{
    struct qmgr *q = msg->q;
    const struct moat_config *cfg = q->cfg;
    time_t now = time(NULL);
    bool expired = now - msg->m.arrival >= (time_t)cfg->queue.max_lifetime;
    size_t n = msg->m.nrcpt, nbounce = 0, ntemp = 0;
    bool *newly_done = xcalloc(n, sizeof(bool));
    struct bounce_rcpt *br = xcalloc(n, sizeof(*br));
    char **expired_reply = xcalloc(n, sizeof(char *));
    for (size_t i = 0; i < n; i++) {
        if (msg->m.rcpts[i].done)
            continue;
        switch (msg->fate[i]) {
        case FATE_SENT:
            log_outcome(msg, i, "sent");
            newly_done[i] = true;
            break;
        case FATE_PERM:
            log_outcome(msg, i, "bounced");
            br[nbounce++] = (struct bounce_rcpt){ msg->m.rcpts[i].addr, msg->reply[i], msg->relay[i] };
            newly_done[i] = true;
            break;
        case FATE_TEMP:
        case FATE_PENDING:
            if (expired) {
                char r[1200];
                snprintf(r, sizeof(r), "554 5.4.7 delivery time expired; last error: %s",
                         msg->reply[i] ? msg->reply[i] : "none");
                expired_reply[i] = xstrdup(r);
                log_outcome(msg, i, "expired");
                br[nbounce++] = (struct bounce_rcpt){ msg->m.rcpts[i].addr, expired_reply[i],
                                                      msg->relay[i] };
                newly_done[i] = true;
            } else {
                log_outcome(msg, i, "deferred");
                ntemp++;
            }
            break;
        }
    }
    msg->active = false;
    if (send_bounce(q, msg, br, nbounce) < 0) {
        /* Keep the failed recipients for the next attempt. */
        for (size_t i = 0; i < n; i++)
            if (newly_done[i] && msg->fate[i] != FATE_SENT) {
                newly_done[i] = false;
                ntemp++;
            }
    }
    for (size_t i = 0; i < n; i++) {
        free(expired_reply[i]);
        if (newly_done[i])
            msg->m.rcpts[i].done = true;
    }
    free(expired_reply);
    free(br);
    free(msg->content);
    msg->content = NULL;
    if (ntemp == 0) {
        if (unlink(msg->path) < 0 && errno != ENOENT)
            log_err("%s: unlink: %s", msg->m.id, strerror(errno));
        else
            log_info("%s: removed", msg->m.id);
        free(newly_done);
        msg_forget(msg);
        return;
    }
    msg->m.next_try = now + (time_t)backoff(cfg, msg->m.attempts + 1);
    msg->m.attempts++;
    append_status(msg, newly_done);
    free(newly_done);
    if (!msg->deferred) {
        char dpath[1200];
        snprintf(dpath, sizeof(dpath), "%s/%s", q->dir_deferred, msg->m.id);
        if (rename(msg->path, dpath) == 0) {
            str_copy(msg->path, dpath, sizeof(msg->path));
            msg->deferred = true;
        } else {
            log_err("%s: rename to deferred: %s", msg->m.id, strerror(errno));
        }
    }
    if (!q->stopping)
        msg_schedule(msg);
}

void
qmgr_load(struct qmgr *q, const char *path)
{
    qmgr_load_path(q, path, false);
}

void
qmgr_job_done(struct job *j)
{
    struct qmsg *msg = j->msg;
    free(j->rcpt);
    free(j);
    if (--msg->jobs == 0)
        msg_settle(msg);
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
        char r[200];
        snprintf(r, sizeof(r), "554 5.4.6 mail forwarding loop: more than %u Received headers",
                 q->cfg->queue.max_received);
        for (size_t i = 0; i < msg->m.nrcpt; i++)
            if (!msg->m.rcpts[i].done)
                qmgr_rcpt_result(msg, i, FATE_PERM, r, NULL);
        msg->jobs = 1;
        struct job *j = xcalloc(1, sizeof(*j));
        j->msg = msg;
        qmgr_job_done(j);
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
        struct job *j = xcalloc(1, sizeof(*j));
        j->msg = msg;
        j->rcpt = xcalloc(msg->m.nrcpt, sizeof(size_t));
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
    struct job *hold = xcalloc(1, sizeof(*hold));
    hold->msg = msg;
    qmgr_job_done(hold);
}

static void
qmgr_load_path(struct qmgr *q, const char *path, bool deferred)
{
    const char *id = strrchr(path, '/');
    id = id ? id + 1 : path;
    if (!queue_id_valid(id) || msg_find(q, id))
        return;
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
    unsigned h = id_hash(msg->m.id);
    msg->hnext = q->msgs[h];
    q->msgs[h] = msg;
    q->nmsgs++;
    if (msg->m.next_try <= time(NULL))
        msg_attempt(msg);
    else
        msg_schedule(msg);
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
    log_info("flush: retrying every deferred message now");
    scan_dir(q, q->dir_incoming, false);    /* and what was released meanwhile */
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
    q.tls = tls_client_ctx();
    q.workq = workq_new(q.base, 2);
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
    log_info("queue role ready, %zu messages in the queue", q.nmsgs);

    event_base_dispatch(q.base);
    log_info("queue role exits");
    return 0;
}
