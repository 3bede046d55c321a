/*
 * smtp_commit.c -- "250 means on disk". A finished queue file is fdatasync'ed
 * and renamed into incoming/ on a worker thread; then an fsync of the
 * incoming directory: run by that worker itself when none is running, or
 * else one for every message whose rename finished meanwhile (group
 * commit, a job the loop starts when the running one is done). Only after
 * a directory fsync that began after its rename does a message get its 250.
 *
 * With filters the file's bytes go to disk while the chain runs
 * (smtp_commit_early, on a worker of its own): the message and the room
 * smtp_tx.c keeps after it for the chain's records. Those records and END
 * then overwrite that room in place, so the commit's fdatasync after the
 * verdict writes one or two pages and no new size or blocks: the 250 waits
 * for the longer of the scan and the sync, then the rename and the
 * directory's fsync, not for their sum. The early sync decides nothing
 * but a failure: the commit's own fdatasync covers every byte of the file
 * whatever became of it (on a descriptor of its own, so a write-back error
 * reaches it too), the file stays in tmp/ (no END) until the commit
 * renames it, and an early sync that failed before the commit began makes
 * the commit fail at once (smtp_tx_commit).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "../common/util.h"
#include "smtp_private.h"

static void dirsync_kick(struct smtp_server *srv);

static void
commit_file(void *arg)
{
    struct smtp_commit *c = arg;
    c->ok = fdatasync(c->fd) == 0;
    if (!c->ok)
        log_err("fdatasync %s: %s", c->tmp, strerror(errno));
    if (close(c->fd) < 0 && c->ok) {
        log_err("close %s: %s", c->tmp, strerror(errno));
        c->ok = false;
    }
    c->fd = -1;
    if (c->ok && rename(c->tmp, c->final) < 0) {
        log_err("rename %s: %s", c->tmp, strerror(errno));
        c->ok = false;
    }
    if (!c->ok)
        unlink(c->tmp);
    c->synced = time_mono();
    /* No directory fsync running: this worker runs one at once, for its
     * own rename (done above, so covered), and saves the message a second
     * trip through the loop and the pool. Otherwise the loop groups it
     * with whatever else renamed meanwhile, as before. */
    bool idle = false;
    if (c->ok && __atomic_compare_exchange_n(&c->srv->dirsync_running, &idle, true, false,
                                             __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        c->led = true;
        c->dir_ok = fsync_dir(c->dir) == 0;
        if (!c->dir_ok)
            log_err("fsync %s: %s", c->dir, strerror(errno));
    }
}

static void
dirsync_release(struct smtp_server *srv)
{
    __atomic_store_n(&srv->dirsync_running, false, __ATOMIC_RELEASE);
}

struct dirsync {
    struct smtp_server *srv;
    struct smtp_commit *batch;
    bool ok;
};

static void
dirsync_work(void *arg)
{
    struct dirsync *d = arg;
    d->ok = true;
    /* each distinct directory of the batch once (incoming, quarantine) */
    for (struct smtp_commit *c = d->batch; c; c = c->next) {
        bool seen = false;
        for (struct smtp_commit *p = d->batch; p != c; p = p->next)
            if (p->dir == c->dir)
                seen = true;
        if (!seen && fsync_dir(c->dir) < 0) {
            log_err("fsync %s: %s", c->dir, strerror(errno));
            d->ok = false;
        }
    }
}

static void
dirsync_done(void *arg)
{
    struct dirsync *d = arg;
    struct smtp_server *srv = d->srv;
    dirsync_release(srv);
    for (struct smtp_commit *c = d->batch, *next; c; c = next) {
        next = c->next;
        if (!d->ok)
            unlink(c->final);   /* not durable: never answer 250 for it */
        c->cb(c->arg, d->ok, c->synced);
        free(c);
    }
    free(d);
    dirsync_kick(srv);
}

static void
dirsync_kick(struct smtp_server *srv)
{
    bool idle = false;
    if (srv->dirsync_pending == NULL ||
        !__atomic_compare_exchange_n(&srv->dirsync_running, &idle, true, false, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE))
        return;             /* the one running kicks again when it is done */
    struct dirsync *d = xcalloc(1, sizeof(*d));
    d->srv = srv;
    d->batch = srv->dirsync_pending;
    srv->dirsync_pending = NULL;
    workq_submit(srv->workq, dirsync_work, dirsync_done, d);
}

static void
commit_file_done(void *arg)
{
    struct smtp_commit *c = arg;
    struct smtp_server *srv = c->srv;
    if (c->led) {
        dirsync_release(srv);
        if (!c->dir_ok)
            unlink(c->final);   /* not durable: never answer 250 for it */
        c->cb(c->arg, c->dir_ok, c->synced);
        free(c);
        dirsync_kick(srv);      /* what renamed while it ran */
        return;
    }
    if (!c->ok) {
        c->cb(c->arg, false, c->synced);
        free(c);
        return;
    }
    c->next = c->srv->dirsync_pending;
    c->srv->dirsync_pending = c;
    dirsync_kick(c->srv);
}

void
smtp_commit_start(struct smtp_server *srv, int fd, const char *tmp, const char *dir,
                  const char *final, smtp_commit_cb *cb, void *arg)
{
    struct smtp_commit *c = xcalloc(1, sizeof(*c));
    c->srv = srv;
    c->dir = dir;
    c->fd = fd;
    str_copy(c->tmp, tmp, sizeof(c->tmp));
    str_copy(c->final, final, sizeof(c->final));
    c->cb = cb;
    c->arg = arg;
    workq_submit(srv->workq, commit_file, commit_file_done, c);
}

/* ------------------------------------------------ the early sync */

static void
early_work(void *arg)
{
    struct smtp_early *e = arg;
    e->ok = fdatasync(e->fd) == 0;
    if (!e->ok)
        log_err("%s: fdatasync: %s", e->id, strerror(errno));
    close(e->fd);
    e->fd = -1;
    e->synced = time_mono();
}

static void
early_done(void *arg)
{
    struct smtp_early *e = arg;
    e->done = true;
    if (e->ok)
        log_debug("%s: queue file synced while the chain runs", e->id);
    if (e->orphan)          /* its transaction ended meanwhile */
        free(e);
}

struct smtp_early *
smtp_commit_early(struct smtp_server *srv, const char *tmp, const char *id)
{
    if (srv->cfg->smtp.commit_threads < 2)
        return NULL;        /* one worker: it would only wait in line with the scan */
    /* Its own descriptor (the transaction may end, a virus refused, and
     * close its own while this one still syncs), and its own open file
     * description, not a dup: Linux reports a write-back error once to
     * each open file description that syncs (its f_wb_err). Through a dup
     * this sync would take the error away from the commit's fdatasync,
     * whose success alone may lead to a 250; opened anew, both see it. */
    int dfd = open(tmp, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (dfd < 0)
        return NULL;
    struct smtp_early *e = xcalloc(1, sizeof(*e));
    e->fd = dfd;
    str_copy(e->id, id, sizeof(e->id));
    workq_submit(srv->workq, early_work, early_done, e);
    return e;
}

void
smtp_commit_early_forget(struct smtp_early **ep)
{
    struct smtp_early *e = *ep;
    if (e == NULL)
        return;
    *ep = NULL;
    if (e->done)
        free(e);
    else
        e->orphan = true;   /* early_done frees it */
}
