/*
 * expire.c -- the quarantine's retention: held mail older than
 * queue.quarantine_retention is removed (and the trace says so), at the
 * queue role's start and then every hour, on a worker thread so that the
 * reading of the held files never holds up deliveries.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <event2/event.h>
#include "../common/mail.h"
#include "delivery_private.h"

struct sweep {
    struct qmgr *q;
    char dir[1200];
    time_t before;
    size_t removed;
    bool running;
};

static int
expire_one(const char *path, struct queue_msg *m, void *arg)
{
    struct sweep *s = arg;
    if (m->arrival >= s->before)
        return 0;
    if (unlink(path) < 0) {
        log_warn("%s: cannot remove expired held mail: %s", m->id, strerror(errno));
        return 0;
    }
    const char **v = xcalloc(m->nrcpt + 1, sizeof(*v));
    size_t n = 0;
    for (size_t i = 0; i < m->nrcpt; i++)
        if (!m->rcpts[i].done)
            v[n++] = m->rcpts[i].addr;
    struct msg_event e = { .what = "expired", .qid = m->id, .sender = m->sender, .rcpts = v,
                           .nrcpt = n, .detail = "held longer than queue.quarantine_retention" };
    trace_message(&e);
    free(v);
    log_info("%s: removed from the quarantine: held since %lld", m->id, (long long)m->arrival);
    s->removed++;
    return 0;
}

static void
sweep_work(void *arg)
{
    struct sweep *s = arg;
    s->removed = 0;
    qf_scan(s->dir, expire_one, s);
    if (s->removed)
        fsync_dir(s->dir);
}

static void
sweep_done(void *arg)
{
    struct sweep *s = arg;
    if (s->removed)
        log_info("quarantine: %zu expired messages removed", s->removed);
    s->running = false;
}

static void
on_sweep(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct sweep *s = arg;
    if (s->running || s->q->stopping)
        return;
    s->running = true;
    s->before = time(NULL) - (time_t)s->q->cfg->queue.quarantine_retention;
    workq_submit(s->q->workq, sweep_work, sweep_done, s);
}

void
expire_start(struct qmgr *q)
{
    static struct sweep s;
    memset(&s, 0, sizeof(s));
    s.q = q;
    if (paths_get(q->cfg->state_dir, PATH_QUARANTINE, s.dir, sizeof(s.dir)) < 0)
        fatal("state_dir path too long");
    struct event *ev = event_new(q->base, -1, EV_PERSIST, on_sweep, &s);
    struct timeval hour = { 3600, 0 };
    event_add(ev, &hour);
    on_sweep(-1, 0, &s);
}
