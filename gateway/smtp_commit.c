/*
 * smtp_commit.c -- "250 means on disk". A finished queue file is fdatasync'ed
 * and renamed into incoming/ on a worker thread; then one fsync of the
 * incoming directory covers every message whose rename finished meanwhile
 * (group commit). Only after that does any of them get its 250.
 *
 * While the filter chain reads a message, its bytes are already written
 * out by an early fdatasync on another worker (smtp_commit_early), so the
 * commit after the verdict has only the records the chain added left to
 * write. The early sync decides nothing: the commit's own fdatasync after
 * END covers every byte of the file, whatever became of the early one.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
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
    srv->dirsync_running = false;
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
    if (srv->dirsync_running || srv->dirsync_pending == NULL)
        return;
    struct dirsync *d = xcalloc(1, sizeof(*d));
    d->srv = srv;
    d->batch = srv->dirsync_pending;
    srv->dirsync_pending = NULL;
    srv->dirsync_running = true;
    workq_submit(srv->workq, dirsync_work, dirsync_done, d);
}

static void
commit_file_done(void *arg)
{
    struct smtp_commit *c = arg;
    if (!c->ok) {
        c->cb(c->arg, false, c->synced);
        free(c);
        return;
    }
    c->next = c->srv->dirsync_pending;
    c->srv->dirsync_pending = c;
    dirsync_kick(c->srv);
}

static void
early_sync(void *arg)
{
    int fd = (int)(intptr_t)arg;
    (void)fdatasync(fd);    /* a failure is the commit's to find and report */
    close(fd);
}

void
smtp_commit_early(struct smtp_server *srv, int fd)
{
    if (srv->cfg->smtp.commit_threads < 2)
        return;         /* one worker: it would only wait in line with the scan */
    /* its own descriptor: the transaction may end (a virus refused) and
     * close its own while this one still syncs */
    int dfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dfd >= 0)
        workq_submit(srv->workq, early_sync, NULL, (void *)(intptr_t)dfd);
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
