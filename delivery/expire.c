/*
 * expire.c -- the quarantine's retention: held mail older than
 * queue.quarantine_retention is removed (quarantine_expire: traced and
 * logged), at the queue role's start and then every hour, on a worker
 * thread so that the reading of the held files never holds up deliveries.
 */
#include <string.h>
#include <event2/event.h>
#include "../common/mail.h"
#include "delivery_private.h"

struct sweep {
    struct qmgr *q;
    time_t before;
    size_t removed;
    bool running;
};

static void
sweep_work(void *arg)
{
    struct sweep *s = arg;
    s->removed = quarantine_expire(s->q->cfg->state_dir, s->before);
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
    struct event *ev = event_new(q->base, -1, EV_PERSIST, on_sweep, &s);
    struct timeval hour = { 3600, 0 };
    event_add(ev, &hour);
    on_sweep(-1, 0, &s);
}
