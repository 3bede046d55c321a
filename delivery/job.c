/*
 * job.c -- the bottom of delivery/: a job (the recipients of one message
 * that go to one place), its line at its destination, and what happens
 * when it ends. The workers -- smtp_client.c, local.c, and dest.c when a
 * destination cannot be resolved -- record each recipient's result here
 * and say when a job is done; a connection gives its slot back here and
 * takes its next job from here.
 *
 * When the last job of a message's attempt is done, the message is
 * settled on disk: delivered recipients are done (and the targets an alias
 * or list recipient reached are recorded, so a retry skips them), temporary
 * failures are kept for a retry with exponential back-off up to queue.max_lifetime,
 * permanent failures and expiry produce a DSN to the sender (never to the
 * null sender). The queue file is removed only after its last recipient
 * is settled and any DSN for it is itself safely queued; otherwise its
 * status is appended and it moves to deferred/.
 *
 * It calls nothing above it. What only the files above can do next goes
 * up through the event loop, as a worker thread's result does: the queue
 * manager's settled event (forget the message or arm its retry timer, take
 * up a DSN or a forward just queued) and a destination's dispatch event
 * (a connection slot came free while jobs wait).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <event2/event.h>
#include "../common/mail.h"
#include "delivery_private.h"

struct job *
job_new(struct qmsg *msg, size_t cap)
{
    struct job *j = xcalloc(1, sizeof(*j));
    j->msg = msg;
    if (cap)
        j->rcpt = xcalloc(cap, sizeof(size_t));
    return j;
}

void
job_result(struct job *j, size_t k, enum rcpt_fate fate, const char *reply, const char *relay)
{
    struct qmsg *msg = j->msg;
    size_t idx = j->rcpt[k];
    if (idx >= msg->m.nrcpt || msg->fate[idx] != FATE_PENDING)
        return;
    msg->fate[idx] = fate;
    free(msg->reply[idx]);
    free(msg->relay[idx]);
    msg->reply[idx] = xstrdup(reply);
    msg->relay[idx] = relay ? xstrdup(relay) : NULL;
}

void
job_served(struct job *j, size_t k, const char *target)
{
    struct qmsg *msg = j->msg;
    if (j->rcpt[k] < msg->m.nrcpt)
        qf_rcpt_served(&msg->m.rcpts[j->rcpt[k]], target);
}

void
job_fail(struct job *j, enum rcpt_fate fate, const char *reply, const char *relay)
{
    for (size_t i = 0; i < j->nrcpt; i++)
        job_result(j, i, fate, reply, relay);
    job_done(j);
}

/* ---- a destination's line of waiting jobs */

void
job_queue_add(struct dest *d, struct job *j)
{
    j->next = NULL;
    if (d->jobs_tail)
        d->jobs_tail->next = j;
    else
        d->jobs = j;
    d->jobs_tail = j;
    d->njobs++;
}

/* In front again: the job waits for the RSET reply of its connection. */
void
job_queue_put_back(struct dest *d, struct job *j)
{
    j->next = d->jobs;
    d->jobs = j;
    if (d->jobs_tail == NULL)
        d->jobs_tail = j;
    d->njobs++;
}

struct job *
job_queue_take(struct dest *d)
{
    struct job *j = d->jobs;
    if (j) {
        d->jobs = j->next;
        if (d->jobs == NULL)
            d->jobs_tail = NULL;
        d->njobs--;
        j->next = NULL;
    }
    return j;
}

void
job_queue_fail(struct dest *d, enum rcpt_fate fate, const char *reply)
{
    struct job *j = d->jobs;
    d->jobs = d->jobs_tail = NULL;
    d->njobs = 0;
    while (j) {
        struct job *next = j->next;
        job_fail(j, fate, reply, NULL);
        j = next;
    }
}

void
job_slot_free(struct dest *d, bool connect_failed, const char *why)
{
    struct qmgr *q = d->q;
    bool was_full = q->nconn >= q->cfg->queue.concurrency;
    d->nconn--;
    q->nconn--;
    if (connect_failed && d->jobs) {
        /* Every address refused us: the destination is down for now, and
         * the jobs waiting for it are deferred instead of hammering it. */
        char reply[700];
        reply_line(reply, sizeof(reply), R_DEST_UNREACHABLE, why, NULL);
        job_queue_fail(d, FATE_TEMP, reply);
        d->resolved_at = 0;     /* look it up again next time */
    }
    if (d->jobs)
        event_active(d->ev_dispatch, EV_TIMEOUT, 0);
    /* Only when the queue role was at its connection limit can another
     * destination be waiting for the slot this one freed. */
    for (struct dest *o = q->dests; was_full && o; o = o->next)
        if (o != d && o->jobs)
            event_active(o->ev_dispatch, EV_TIMEOUT, 0);
}

/* ---- the end of an attempt */

void
job_file_queued(struct qmgr *q, const char *path)
{
    q->fresh = xrealloc(q->fresh, (q->nfresh + 1) * sizeof(char *));
    q->fresh[q->nfresh++] = xstrdup(path);
    event_active(q->ev_settled, EV_TIMEOUT, 0);
}

/* The message's attempt is settled on disk: the manager forgets it or
 * arms its retry timer. */
static void
hand_up(struct qmsg *msg)
{
    struct qmgr *q = msg->q;
    msg->snext = q->settled;
    q->settled = msg;
    event_active(q->ev_settled, EV_TIMEOUT, 0);
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

/* Does the recipient's NOTIFY (RFC 3461) ask for this report? Without
 * NOTIFY: failures (and delays), never success. */
static bool
notify_wants(const struct qf_rcpt *r, const char *what)
{
    if (r->notify == NULL || r->notify[0] == '\0')
        return strcmp(what, "SUCCESS") != 0;
    char tmp[64];
    str_copy(tmp, r->notify, sizeof(tmp));
    for (char *save, *t = strtok_r(tmp, ",", &save); t; t = strtok_r(NULL, ",", &save))
        if (str_ieq(t, what))
            return true;
    return false;
}

/* Queue a DSN for the failed recipients, or the success report for the
 * delivered ones (their action set). Returns 0 when it is on disk (or
 * none is due), -1 when the original must stay until it can be queued. */
static int
send_bounce(struct qmgr *q, struct qmsg *msg, const struct bounce_rcpt *br, size_t n)
{
    if (n == 0)
        return 0;
    if (msg->m.sender[0] == '\0') {
        log_info("%s: sender is <>: no DSN for %zu %s recipients", msg->m.id, n,
                 br[0].action ? "delivered" : "failed");
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
    log_info("%s: sender %s notification: %s", msg->m.id,
             br[0].action ? (strcmp(br[0].action, "delayed") == 0 ? "delay" : "delivery")
                          : "non-delivery", b.id);
    char path[1200];
    snprintf(path, sizeof(path), "%s/%s", q->dir_incoming, b.id);
    job_file_queued(q, path);
    return 0;
}

static void
append_status(struct qmsg *msg, bool *newly_done, bool warned)
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
            continue;
        }
        struct qf_rcpt *r = &msg->m.rcpts[i];
        if (r->done)
            continue;
        if (msg->reply[i]) {
            snprintf(buf, sizeof(buf), "%zu %.1000s", i, msg->reply[i]);
            err |= qf_write_str(fd, QF_LAST_REPLY, buf);
        }
        /* what an alias or list reached: a retry goes to the others only */
        for (; r->nserved_saved < r->nserved; r->nserved_saved++) {
            snprintf(buf, sizeof(buf), "%zu %.1000s", i, r->served[r->nserved_saved]);
            err |= qf_write_str(fd, QF_SERVED, buf);
        }
    }
    snprintf(buf, sizeof(buf), "%u %lld", msg->m.attempts, (long long)msg->m.next_try);
    err |= qf_write_str(fd, QF_ATTEMPT, buf);
    if (warned)
        err |= qf_write_str(fd, QF_FLAGS, "delay-warned");
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
settle(struct qmsg *msg)
{
    struct qmgr *q = msg->q;
    const struct moat_config *cfg = q->cfg;
    time_t now = time(NULL);
    bool expired = now - msg->m.arrival >= (time_t)cfg->queue.max_lifetime;
    size_t n = msg->m.nrcpt, nbounce = 0, ntemp = 0, nsuccess = 0;
    bool *newly_done = xcalloc(n, sizeof(bool));
    struct bounce_rcpt *br = xcalloc(n, sizeof(*br));
    struct bounce_rcpt *ok = xcalloc(n, sizeof(*ok));
    struct bounce_rcpt *late = xcalloc(n, sizeof(*late));
    size_t nlate = 0;
    /* RFC 3464 action=delayed, once per message, after queue.delay_warning */
    bool warn = cfg->queue.delay_warning && !msg->m.delay_warned && !expired &&
                now - msg->m.arrival >= (time_t)cfg->queue.delay_warning;
    char **expired_reply = xcalloc(n, sizeof(char *));
    for (size_t i = 0; i < n; i++) {
        if (msg->m.rcpts[i].done)
            continue;
        switch (msg->fate[i]) {
        case FATE_SENT:
            log_outcome(msg, i, "sent");
            newly_done[i] = true;
            /* NOTIFY=SUCCESS: ours when delivered here, or relayed to a
             * next hop that could not take the request on */
            if (notify_wants(&msg->m.rcpts[i], "SUCCESS") && !msg->dsn_passed[i]) {
                bool local = msg->relay[i] && strcmp(msg->relay[i], "local") == 0;
                ok[nsuccess++] = (struct bounce_rcpt){ msg->m.rcpts[i].addr, msg->reply[i],
                                                       local ? NULL : msg->relay[i],
                                                       msg->m.rcpts[i].orcpt,
                                                       local ? "delivered" : "relayed" };
            }
            break;
        case FATE_PERM:
            log_outcome(msg, i, "bounced");
            if (notify_wants(&msg->m.rcpts[i], "FAILURE"))
                br[nbounce++] = (struct bounce_rcpt){ msg->m.rcpts[i].addr, msg->reply[i],
                                                      msg->relay[i], msg->m.rcpts[i].orcpt, NULL };
            else
                log_info("%s: to=<%s>: no DSN (NOTIFY=%s)", msg->m.id, msg->m.rcpts[i].addr,
                         msg->m.rcpts[i].notify);
            newly_done[i] = true;
            break;
        case FATE_TEMP:
        case FATE_PENDING:
            if (expired) {
                char r[1200];
                reply_line(r, sizeof(r), R_EXPIRED, msg->reply[i] ? msg->reply[i] : "none", NULL);
                expired_reply[i] = xstrdup(r);
                log_outcome(msg, i, "expired");
                if (notify_wants(&msg->m.rcpts[i], "FAILURE"))
                    br[nbounce++] = (struct bounce_rcpt){ msg->m.rcpts[i].addr, expired_reply[i],
                                                          msg->relay[i], msg->m.rcpts[i].orcpt,
                                                          NULL };
                newly_done[i] = true;
            } else {
                log_outcome(msg, i, "deferred");
                ntemp++;
                if (warn && notify_wants(&msg->m.rcpts[i], "DELAY") && msg->reply[i])
                    late[nlate++] = (struct bounce_rcpt){ msg->m.rcpts[i].addr, msg->reply[i],
                                                          msg->relay[i], msg->m.rcpts[i].orcpt,
                                                          "delayed" };
            }
            break;
        }
    }
    if (send_bounce(q, msg, br, nbounce) < 0) {
        /* Keep the failed recipients for the next attempt. */
        for (size_t i = 0; i < n; i++)
            if (newly_done[i] && msg->fate[i] != FATE_SENT) {
                newly_done[i] = false;
                ntemp++;
            }
    }
    /* A success report that cannot be queued is logged, not retried: the
     * mail itself went out, and sending it again would duplicate it. */
    send_bounce(q, msg, ok, nsuccess);
    free(ok);
    /* the warning goes once: not again if it could not be queued either */
    bool warned_now = warn && ntemp > 0;
    if (warned_now) {
        msg->m.delay_warned = true;
        if (nlate)
            send_bounce(q, msg, late, nlate);
    }
    free(late);
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
        msg->retired = true;
        hand_up(msg);
        return;
    }
    msg->m.next_try = now + (time_t)backoff(cfg, msg->m.attempts + 1);
    msg->m.attempts++;
    append_status(msg, newly_done, warned_now);
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
    hand_up(msg);
}

void
job_done(struct job *j)
{
    struct qmsg *msg = j->msg;
    free(j->rcpt);
    free(j);
    if (--msg->jobs == 0)
        settle(msg);
}
