/*
 * folder_add.c -- messages into a folder (APPEND, MULTIAPPEND, COPY, MOVE),
 * all or none: each written (fdatasync) or hard-linked into tmp/, then in
 * one commit under the index's lock renamed into cur/ with the next UIDs
 * and logged; then, outside the lock, the log and cur/ made durable once
 * for every session committing at the same time (folder_disk_durable),
 * and only then are the UIDs told, to this session and to the others.
 * And STATUS of a folder, from its index.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "../common/util.h"
#include "store_private.h"
#include "imap_private.h"
#include "folder_private.h"

/* ------------------------------------------------------------ adding */

struct add_item {
    char tmp[1600];             /* the file, written or linked, in tmp/ */
    char base[300];
    unsigned flags;
    char (*kws)[FOLDER_KEYWORD_LEN];
    size_t nkws;
    uint64_t size;
};

struct folder_add {
    struct folder_index *ix;
    struct add_item *v;
    size_t n, cap;
};

struct folder_add *
folder_add_begin(const char *dir)
{
    struct folder_index *ix = folder_index_get(dir);
    if (ix == NULL)
        return NULL;
    struct folder_add *a = xcalloc(1, sizeof(*a));
    a->ix = ix;
    return a;
}

static struct add_item *
add_item(struct folder_add *a, size_t len, unsigned flags, const char *const *kws, size_t nkws)
{
    static unsigned long counter;
    char host[128] = "moat";
    gethostname(host, sizeof(host) - 1);
    for (char *p = host; *p; p++)
        if (*p == '/' || *p == ':')
            *p = '_';
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 4;
        a->v = xrealloc(a->v, a->cap * sizeof(*a->v));
    }
    struct add_item *it = &a->v[a->n];
    memset(it, 0, sizeof(*it));
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(it->base, sizeof(it->base), "%lld.M%06ldP%dQ%lu.%s,S=%zu", (long long)ts.tv_sec,
             ts.tv_nsec / 1000, (int)getpid(), __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED),
             host, len);
    str_fmt(it->tmp, sizeof(it->tmp), "%s/tmp/%s", a->ix->dir, it->base);
    it->flags = flags & MF_DISK;
    it->size = len;
    if (nkws) {
        it->kws = xcalloc(nkws, sizeof(*it->kws));
        for (size_t i = 0; i < nkws; i++)
            str_copy(it->kws[i], kws[i], FOLDER_KEYWORD_LEN);
        it->nkws = nkws;
    }
    return it;
}

int
folder_add_data(struct folder_add *a, const char *data, size_t len, unsigned flags,
                const char *const *kws, size_t nkws, time_t date)
{
    struct add_item *it = add_item(a, len, flags, kws, nkws);
    int fd = open(it->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        free(it->kws);
        return -1;
    }
    if (write_full(fd, data, len) < 0 || fdatasync(fd) < 0) {
        int e = errno;
        close(fd);
        unlink(it->tmp);
        free(it->kws);
        errno = e;
        return -1;
    }
    if (date > 0) {
        struct timespec times[2] = { { date, 0 }, { date, 0 } };
        futimens(fd, times);
    }
    close(fd);
    a->n++;
    return 0;
}

int
folder_add_copy(struct folder_add *a, struct folder *src, size_t i, const char *const *kws,
                size_t nkws)
{
    struct folder_msg m;
    if (folder_msg(src, i, &m) < 0 || m.expunged) {
        errno = ENOENT;
        return 1;
    }
    uint64_t size = folder_size(src, &m);
    struct add_item *it = add_item(a, (size_t)size, m.flags & ~MF_DELETED & MF_DISK, kws, nkws);
    /* the same file twice (a hard link: Maildir files never change),
     * under the source's lock so that its name is the current one */
    struct folder_index *sx = src->ix;
    pthread_mutex_lock(&sx->lock);
    struct irec *r = folder_rec_find(sx, m.uid);
    int rc = -1;
    char from[1600];
    if (r && !r->expunged) {
        str_fmt(from, sizeof(from), "%s/%s/%s", sx->dir, r->in_new ? "new" : "cur", r->name);
        rc = link(from, it->tmp);
    } else {
        errno = ENOENT;
    }
    pthread_mutex_unlock(&sx->lock);
    if (rc < 0 && errno != ENOENT && r) {
        /* another file system, or no links: a copy */
        int in = open(from, O_RDONLY | O_CLOEXEC);
        int out = in >= 0 ? open(it->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600) : -1;
        char buf[65536];
        ssize_t k = 0;
        rc = out >= 0 ? 0 : -1;
        while (rc == 0 && (k = read(in, buf, sizeof(buf))) > 0)
            if (write_full(out, buf, (size_t)k) < 0)
                rc = -1;
        if (k < 0 || (rc == 0 && fdatasync(out) < 0))
            rc = -1;
        struct timespec times[2] = { { folder_internaldate(src, &m), 0 },
                                     { folder_internaldate(src, &m), 0 } };
        if (out >= 0) {
            futimens(out, times);
            close(out);
        }
        if (in >= 0)
            close(in);
        if (rc < 0)
            unlink(it->tmp);
    }
    if (rc < 0) {
        free(it->kws);
        return errno == ENOENT ? 1 : -1;
    }
    a->n++;
    return 0;
}

int
folder_add_commit(struct folder_add *a, uint32_t *uids, uint32_t *validity_r)
{
    struct folder_index *ix = a->ix;
    pthread_mutex_lock(&ix->lock);
    folder_refresh(ix);
    int rc = 0;
    size_t done = 0;
    for (size_t k = 0; k < a->n && rc == 0; k++) {
        struct add_item *it = &a->v[k];
        uint32_t kw = 0;
        for (size_t j = 0; j < it->nkws; j++) {
            int b = folder_disk_keyword(ix, it->kws[j], true);
            if (b < 0) {
                errno = ENOSPC;
                rc = -1;
                break;
            }
            kw |= 1u << b;
        }
        if (rc < 0)
            break;
        char nn[600], to[1600];
        if (folder_disk_name(it->base, it->flags, kw, nn, sizeof(nn)) < 0) {
            rc = -1;
            break;
        }
        str_fmt(to, sizeof(to), "%s/cur/%s", ix->dir, nn);
        folder_expect(ix, 1);
        if (rename(it->tmp, to) < 0) {
            folder_expect(ix, -1);
            rc = -1;
            break;
        }
        it->tmp[0] = '\0';
        struct irec *r = folder_rec_add(ix, ix->uidnext++);
        r->name = xstrdup(nn);
        r->flags = (uint8_t)it->flags;
        r->kw = kw;
        r->size = it->size;
        r->modseq = ++ix->modseq;
        r->pending = true;
        folder_disk_log(ix, "A %lu %llu %u %x %s\n", (unsigned long)r->uid, (unsigned long long)r->modseq,
                 r->flags, r->kw, it->base);
        uids[k] = r->uid;
        done++;
    }
    if (rc < 0) {
        /* all or nothing (MULTIAPPEND, COPY): the ones in take it back */
        int e = errno;
        for (size_t k = 0; k < done; k++) {
            struct irec *r = folder_rec_find(ix, uids[k]);
            char p[1600];
            str_fmt(p, sizeof(p), "%s/cur/%s", ix->dir, r->name);
            folder_expect(ix, 1);
            if (unlink(p) < 0)
                folder_expect(ix, -1);
            r->expunged = true;
            r->pending = false;
            ix->tombs++;
            r->modseq = ++ix->modseq;
            folder_xlog_add(ix, r->uid, r->modseq);
            folder_disk_log(ix, "X %lu %llu\n", (unsigned long)r->uid, (unsigned long long)r->modseq);
        }
        errno = e;
    }
    if (rc < 0 && done)
        folder_mark_changed(ix);
    folder_own_stamp(ix);
    *validity_r = ix->validity;
    if (ix->loglines > LOG_FOLD + ix->n)
        folder_disk_snapshot(ix);
    pthread_mutex_unlock(&ix->lock);
    if (rc == 0 && done) {
        /* durable before any session hears of the UIDs: never given twice */
        folder_disk_durable(ix, uids[done - 1] + 1);
        pthread_mutex_lock(&ix->lock);
        for (size_t k = 0; k < done; k++) {
            struct irec *r = folder_rec_find(ix, uids[k]);
            if (r)
                r->pending = false;
        }
        folder_mark_changed(ix);
        pthread_mutex_unlock(&ix->lock);
    }
    return rc;
}

void
folder_add_end(struct folder_add **ap)
{
    struct folder_add *a = *ap;
    if (a == NULL)
        return;
    for (size_t k = 0; k < a->n; k++) {
        if (a->v[k].tmp[0])
            unlink(a->v[k].tmp);
        free(a->v[k].kws);
    }
    free(a->v);
    folder_index_unref(a->ix);
    free(a);
    *ap = NULL;
}

size_t
folder_add_count(const struct folder_add *a)
{
    return a->n;
}

/* ------------------------------------------------------------- status */

int
folder_status(const char *dir, struct folder_status *st)
{
    memset(st, 0, sizeof(*st));
    struct folder_index *ix = folder_index_get(dir);
    if (ix == NULL)
        return -1;
    pthread_mutex_lock(&ix->lock);
    folder_refresh(ix);
    st->validity = ix->validity;
    st->uidnext = ix->uidnext;
    st->highestmodseq = ix->modseq;
    for (size_t i = 0; i < ix->n; i++) {
        const struct irec *r = &ix->recs[i];
        if (r->expunged)
            continue;
        st->messages++;
        if (!(r->flags & MF_SEEN))
            st->unseen++;
        if (r->flags & MF_DELETED)
            st->deleted++;
        if (r->uid >= ix->recent_floor)
            st->recent++;
        st->size += r->size ? r->size : folder_disk_size(r->name);
    }
    pthread_mutex_unlock(&ix->lock);
    folder_index_unref(ix);
    return 0;
}
