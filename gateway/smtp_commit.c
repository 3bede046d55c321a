/*
 * smtp_commit.c -- "250 means on disk". A finished queue file is fdatasync'ed
 * and renamed into incoming/ on a worker thread; then one fsync of the
 * incoming directory covers every message whose rename finished meanwhile
 * (group commit). Only after that does any of them get its 250.
 */
#include <errno.h>
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
