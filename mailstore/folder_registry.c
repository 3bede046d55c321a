/*
 * folder_registry.c -- the folders' indexes loaded in the store role
 * (folder.c's): one per folder, found by its directory and shared by
 * every session that has it open, kept a while after the last one leaves
 * (CACHE_KEEP), forgotten when the folder goes; and inotify on their cur/
 * and new/, so that a change none of our own explains marks an index for
 * a rescan and wakes the sessions idling on it (folder_changed_take).
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "../common/util.h"
#include "store_private.h"
#include "imap_private.h"
#include "folder_private.h"

#define CACHE_KEEP 32           /* indexes kept without a session */

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct folder_index *indexes;
static int notify_fd = -1;
/* indexes changed since the loop last looked (folder_changed_take) */
static struct folder_index **changed;
static size_t nchanged, changed_cap;

static struct folder_index *index_try(const char *dir, bool *stale);

/* ------------------------------------------------------------ changes */

void
folder_mark_changed(struct folder_index *ix)
{
    __atomic_add_fetch(&ix->changes, 1, __ATOMIC_RELEASE);
    if (__atomic_exchange_n(&ix->queued, 1, __ATOMIC_ACQ_REL))
        return;
    pthread_mutex_lock(&reg_lock);
    if (nchanged == changed_cap) {
        changed_cap = changed_cap ? changed_cap * 2 : 16;
        changed = xrealloc(changed, changed_cap * sizeof(*changed));
    }
    ix->refs++;
    changed[nchanged++] = ix;
    pthread_mutex_unlock(&reg_lock);
}

/* Bring the index up to the directory if something other than our own
 * changes touched it. Under the lock. */
int
folder_refresh(struct folder_index *ix)
{
    if (__atomic_load_n(&ix->forgotten, __ATOMIC_ACQUIRE))
        ix->gone = true;
    if (ix->gone)
        return -1;
    bool watched;
    pthread_mutex_lock(&reg_lock);
    watched = ix->wd[0] >= 0 && ix->wd[1] >= 0;
    pthread_mutex_unlock(&reg_lock);
    if (watched) {
        /* events not read by the loop yet: a change made before the
         * command began is seen by it */
        folder_watch_read();
        if (!__atomic_load_n(&ix->dirty, __ATOMIC_ACQUIRE))
            return 0;
    } else {
        struct timespec st[2];
        folder_disk_stamps(ix->dir, st);
        if (memcmp(st, ix->stamp, sizeof(st)) == 0 &&
            !__atomic_load_n(&ix->dirty, __ATOMIC_ACQUIRE))
            return 0;
    }
    return folder_disk_rescan(ix);
}

/* ----------------------------------------------------------- registry */

static void
derive_root(const char *dir, char *root, size_t size)
{
    const char *slash = strrchr(dir, '/');
    if (slash && slash[1] == '.')
        snprintf(root, size, "%.*s", (int)(slash - dir), dir);
    else
        str_copy(root, dir, size);
}

static void
watch(struct folder_index *ix)
{
    /* under reg_lock */
    if (notify_fd < 0) {
        notify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        if (notify_fd < 0)
            log_warn("inotify: %s (folders are looked at per command)", strerror(errno));
    }
    for (int i = 0; i < 2 && notify_fd >= 0; i++) {
        char p[1400];
        str_fmt(p, sizeof(p), "%s/%s", ix->dir, i ? "new" : "cur");
        ix->wd[i] = inotify_add_watch(notify_fd, p, IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM |
                                      IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR);
    }
}

static void
unwatch(struct folder_index *ix)
{
    /* under reg_lock */
    for (int i = 0; i < 2; i++) {
        if (ix->wd[i] >= 0 && notify_fd >= 0)
            inotify_rm_watch(notify_fd, ix->wd[i]);
        ix->wd[i] = -1;
    }
}

static void
index_free(struct folder_index *ix)
{
    for (size_t i = 0; i < ix->n; i++)
        free(ix->recs[i].name);
    free(ix->recs);
    for (unsigned i = 0; i < ix->nkw; i++)
        free(ix->kw[i]);
    free(ix->x);
    if (ix->logfd >= 0)
        close(ix->logfd);
    pthread_mutex_destroy(&ix->lock);
    pthread_mutex_destroy(&ix->sync_lock);
    free(ix);
}

/* Indexes no session has had for a while beyond CACHE_KEEP go. Under
 * reg_lock; returns what to free outside it. */
static struct folder_index *
evict(void)
{
    size_t unused = 0;
    for (struct folder_index *ix = indexes; ix; ix = ix->next)
        unused += ix->refs == 0;
    struct folder_index *out = NULL;
    while (unused > CACHE_KEEP) {
        struct folder_index **oldest = NULL;
        for (struct folder_index **pp = &indexes; *pp; pp = &(*pp)->next)
            if ((*pp)->refs == 0 && (oldest == NULL || (*pp)->unused_since < (*oldest)->unused_since))
                oldest = pp;
        struct folder_index *ix = *oldest;
        *oldest = ix->next;
        unwatch(ix);
        ix->next = out;
        out = ix;
        unused--;
    }
    return out;
}

void
folder_index_unref(struct folder_index *ix)
{
    if (ix == NULL)
        return;
    pthread_mutex_lock(&reg_lock);
    struct folder_index *dead = NULL;
    if (--ix->refs == 0) {
        ix->unused_since = time_mono();
        bool listed = false;
        for (struct folder_index *p = indexes; p; p = p->next)
            listed |= p == ix;
        if (!listed) {
            unwatch(ix);
            dead = ix;
            dead->next = NULL;
        } else {
            dead = evict();
        }
    }
    pthread_mutex_unlock(&reg_lock);
    while (dead) {
        struct folder_index *next = dead->next;
        index_free(dead);
        dead = next;
    }
}

/* The index of a folder, loaded, with a reference; NULL if the folder is
 * not there. */
struct folder_index *
folder_index_get(const char *dir)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        bool stale;
        struct folder_index *ix = index_try(dir, &stale);
        if (ix || !stale)
            return ix;
        folder_forget(dir, false);  /* a folder deleted and made again: afresh */
    }
    return NULL;
}

static struct folder_index *
index_try(const char *dir, bool *stale)
{
    *stale = false;
    pthread_mutex_lock(&reg_lock);
    struct folder_index *ix = indexes;
    while (ix && strcmp(ix->dir, dir) != 0)
        ix = ix->next;
    if (ix == NULL) {
        ix = xcalloc(1, sizeof(*ix));
        pthread_mutex_init(&ix->lock, NULL);
        pthread_mutex_init(&ix->sync_lock, NULL);
        str_copy(ix->dir, dir, sizeof(ix->dir));
        derive_root(dir, ix->root, sizeof(ix->root));
        ix->logfd = -1;
        ix->wd[0] = ix->wd[1] = -1;
        ix->next = indexes;
        indexes = ix;
    }
    ix->refs++;
    pthread_mutex_unlock(&reg_lock);
    pthread_mutex_lock(&ix->lock);
    if (!ix->loaded && !ix->gone) {
        char cur[1400];
        struct stat st;
        str_fmt(cur, sizeof(cur), "%s/cur", dir);
        if (stat(cur, &st) < 0 || !S_ISDIR(st.st_mode)) {
            pthread_mutex_unlock(&ix->lock);
            folder_forget(dir, false);
            folder_index_unref(ix);
            return NULL;
        }
        pthread_mutex_lock(&reg_lock);
        watch(ix);              /* before the scan: nothing falls between */
        pthread_mutex_unlock(&reg_lock);
        if (folder_disk_load(ix) == 0)
            ix->loaded = true;
    }
    bool ok = ix->loaded && !ix->gone;
    *stale = ix->loaded && ix->gone;
    pthread_mutex_unlock(&ix->lock);
    if (!ok) {
        folder_index_unref(ix);
        return NULL;
    }
    return ix;
}

void
folder_forget(const char *dir, bool children)
{
    size_t l = strlen(dir);
    pthread_mutex_lock(&reg_lock);
    struct folder_index *dead = NULL;
    for (struct folder_index **pp = &indexes; *pp;) {
        struct folder_index *ix = *pp;
        if (strncmp(ix->dir, dir, l) == 0 && (ix->dir[l] == '\0' || (children && ix->dir[l] == '.'))) {
            *pp = ix->next;
            __atomic_store_n(&ix->forgotten, 1, __ATOMIC_RELEASE);
            __atomic_store_n(&ix->dirty, 1, __ATOMIC_RELEASE);
            unwatch(ix);
            if (ix->refs == 0) {
                ix->next = dead;
                dead = ix;
            }
            continue;
        }
        pp = &ix->next;
    }
    pthread_mutex_unlock(&reg_lock);
    while (dead) {
        struct folder_index *next = dead->next;
        index_free(dead);
        dead = next;
    }
}

/* ------------------------------------------------------------ watching */

int
folder_watch_fd(void)
{
    pthread_mutex_lock(&reg_lock);
    if (notify_fd < 0)
        notify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    int fd = notify_fd;
    pthread_mutex_unlock(&reg_lock);
    return fd;
}

static void
event_for(int wd, uint32_t mask)
{
    /* under reg_lock */
    for (struct folder_index *ix = indexes; ix; ix = ix->next) {
        if (ix->wd[0] != wd && ix->wd[1] != wd && !(mask & IN_Q_OVERFLOW))
            continue;
        bool surprise = (mask & (IN_Q_OVERFLOW | IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED)) != 0;
        if (!surprise && __atomic_sub_fetch(&ix->expected, 1, __ATOMIC_ACQ_REL) < 0) {
            __atomic_store_n(&ix->expected, 0, __ATOMIC_RELEASE);
            surprise = true;
        }
        if (surprise && !__atomic_exchange_n(&ix->dirty, 1, __ATOMIC_ACQ_REL) &&
            !__atomic_exchange_n(&ix->queued, 1, __ATOMIC_ACQ_REL)) {
            if (nchanged == changed_cap) {
                changed_cap = changed_cap ? changed_cap * 2 : 16;
                changed = xrealloc(changed, changed_cap * sizeof(*changed));
            }
            ix->refs++;
            changed[nchanged++] = ix;
        }
        if (!(mask & IN_Q_OVERFLOW))
            return;
    }
}

void
folder_watch_read(void)
{
    char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
    for (int rounds = 0; rounds < 64 && notify_fd >= 0; rounds++) {
        ssize_t n = read(notify_fd, buf, sizeof(buf));
        if (n <= 0)
            return;
        pthread_mutex_lock(&reg_lock);
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *e = (const struct inotify_event *)p;
            event_for(e->wd, e->mask);
            p += sizeof(*e) + e->len;
        }
        pthread_mutex_unlock(&reg_lock);
    }
}

size_t
folder_changed_take(struct folder_index **out, size_t max)
{
    pthread_mutex_lock(&reg_lock);
    size_t k = nchanged < max ? nchanged : max;
    if (k > 0) {                /* changed is NULL before the first change */
        memcpy(out, changed, k * sizeof(*out));
        memmove(changed, changed + k, (nchanged - k) * sizeof(*changed));
        nchanged -= k;
    }
    for (size_t i = 0; i < k; i++)
        __atomic_store_n(&out[i]->queued, 0, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&reg_lock);
    return k;
}

void
folder_index_release(struct folder_index *ix)
{
    folder_index_unref(ix);
}

void **
folder_index_loop_data(struct folder_index *ix)
{
    return &ix->loop_data;
}

struct folder_index *
folder_index_hold(const char *dir)
{
    return folder_index_get(dir);
}

struct folder_index *
folder_index_of(const struct folder *v)
{
    return v->ix;
}

const char *
folder_dir(const struct folder *v)
{
    return v->ix->dir;
}
