/*
 * folder.c -- one folder of a Maildir as IMAP sees it: one index per
 * folder, shared by every session of the store role that has it open, and
 * each session's view of it (RFC 3501 2.3.1, RFC 7162).
 *
 * The index holds what the files alone cannot say: the UID of every
 * message, UIDVALIDITY, the next UID, a modification sequence (modseq) per
 * message and for the folder, which messages no session has seen yet
 * (\Recent), and the expunges of late (QRESYNC's VANISHED). Flags stay in
 * the file names (":2,DFRST", the Maildir convention), keywords as the
 * letters a-z after them with their names in dovecot-keywords (Dovecot's
 * format), so that any other Maildir reader keeps understanding them.
 *
 * A change (STORE, EXPUNGE, APPEND, COPY) is applied under the index's
 * lock, to the file and the index together, and gets the folder's next
 * modseq: a STORE works on the flags as they are now, never on a copy a
 * session read before. Sessions learn of changes only when they sync
 * (folder_sync), which the IMAP session does at the points RFC 3501 allows;
 * until then a session's view keeps the message numbers it told its
 * client, and an expunged message stays in it as a tombstone (its flags
 * are still known, its file is gone).
 *
 * The index on disk is folder_disk.c's (moat-uidlist, its log,
 * dovecot-keywords, moat-uidvalidity), adding messages folder_add.c's.
 * Changes made by others (the queue role delivering into new/, POP3, any
 * other program) are seen through inotify: an event that none of our own
 * changes explains marks the index for a rescan of the directory. The
 * registry of indexes and the watching are folder_registry.c's.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "../common/util.h"
#include "store_private.h"
#include "imap_private.h"
#include "folder_private.h"

#define XLOG_KEEP 20000         /* expunges remembered for QRESYNC */

/* ------------------------------------------------------------ records */

struct irec *
folder_rec_find(struct folder_index *ix, uint32_t uid)
{
    size_t lo = 0, hi = ix->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ix->recs[mid].uid < uid)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < ix->n && ix->recs[lo].uid == uid ? &ix->recs[lo] : NULL;
}

/* A new message; UIDs only grow, so it goes at the end. */
struct irec *
folder_rec_add(struct folder_index *ix, uint32_t uid)
{
    if (ix->n == ix->cap) {
        ix->cap = ix->cap ? ix->cap * 2 : 64;
        ix->recs = xrealloc(ix->recs, ix->cap * sizeof(*ix->recs));
    }
    struct irec *r = &ix->recs[ix->n++];
    memset(r, 0, sizeof(*r));
    r->uid = uid;
    r->date = -1;
    return r;
}

/* Tombstones no view holds any more go. */
void
folder_purge(struct folder_index *ix, bool now)
{
    if (ix->tombs == 0 || (!now && ix->tombs < 64 && ix->tombs * 16 < ix->n))
        return;
    size_t o = 0;
    for (size_t i = 0; i < ix->n; i++) {
        struct irec *r = &ix->recs[i];
        if (r->expunged && r->vrefs == 0) {
            free(r->name);
            ix->tombs--;
            continue;
        }
        ix->recs[o++] = *r;
    }
    ix->n = o;
}

void
folder_xlog_add(struct folder_index *ix, uint32_t uid, uint64_t modseq)
{
    if (ix->nx == ix->xcap) {
        if (ix->nx >= XLOG_KEEP) {
            /* the oldest half goes: clients that far behind get every
             * UID that is not there (a superset is allowed) */
            size_t drop = ix->nx / 2;
            ix->xfloor = ix->x[drop - 1].modseq;
            memmove(ix->x, ix->x + drop, (ix->nx - drop) * sizeof(*ix->x));
            ix->nx -= drop;
        } else {
            ix->xcap = ix->xcap ? ix->xcap * 2 : 64;
            ix->x = xrealloc(ix->x, ix->xcap * sizeof(*ix->x));
        }
    }
    ix->x[ix->nx++] = (struct xrec){ uid, modseq };
}

/* Our own change of a file: the inotify events it makes are expected. */
void
folder_expect(struct folder_index *ix, int events)
{
    __atomic_add_fetch(&ix->expected, events, __ATOMIC_ACQ_REL);
}

/* After our own renames the directories' times moved: an unwatched
 * index takes them as its own (anything else at the same moment is seen
 * by the next rescan, which a failed rename asks for). */
void
folder_own_stamp(struct folder_index *ix)
{
    folder_disk_stamps(ix->dir, ix->stamp);
}

/* --------------------------------------------------------------- views */

static void
view_push(struct folder *v, uint32_t uid)
{
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 64;
        v->uids = xrealloc(v->uids, v->cap * sizeof(*v->uids));
    }
    v->uids[v->n++] = uid;
}

static void
recent_push(struct folder *v, uint32_t uid)
{
    if (v->nrecent == v->rcap) {
        v->rcap = v->rcap ? v->rcap * 2 : 16;
        v->recent = xrealloc(v->recent, v->rcap * sizeof(*v->recent));
    }
    v->recent[v->nrecent++] = uid;
}

/* New messages into the view (uid >= v->next_uid), \Recent to it when it
 * is the first read-write view to see them: their files go from new/ to
 * cur/. Under the lock. Returns how many came. */
static size_t
take_new(struct folder *v)
{
    struct folder_index *ix = v->ix;
    size_t came = 0;
    /* up to the first message still being made durable (folder_add.c):
     * it and those after it are taken once it is */
    uint32_t top = ix->uidnext;
    for (size_t i = ix->n; i > 0 && ix->recs[i - 1].uid >= v->next_uid; i--)
        if (ix->recs[i - 1].pending)
            top = ix->recs[i - 1].uid;
    bool claim = !v->readonly && ix->recent_floor < top;
    size_t lo = 0, hi = ix->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ix->recs[mid].uid < v->next_uid)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (size_t i = lo; i < ix->n; i++) {
        struct irec *r = &ix->recs[i];
        if (r->uid >= top)
            break;
        if (r->uid < v->next_uid || r->expunged)
            continue;
        view_push(v, r->uid);
        r->vrefs++;
        came++;
        if (claim && r->uid >= ix->recent_floor) {
            recent_push(v, r->uid);
            if (r->in_new) {
                char from[1600], to[1600], nn[600];
                if (folder_disk_name(r->name, r->flags, r->kw, nn, sizeof(nn)) == 0) {
                    str_fmt(from, sizeof(from), "%s/new/%s", ix->dir, r->name);
                    str_fmt(to, sizeof(to), "%s/cur/%s", ix->dir, nn);
                    folder_expect(ix, 2);
                    if (rename(from, to) == 0) {
                        free(r->name);
                        r->name = xstrdup(nn);
                        r->in_new = false;
                    } else {
                        folder_expect(ix, -2);
                    }
                }
            }
        }
    }
    if (claim) {
        ix->recent_floor = top;
        folder_disk_log(ix, "R %lu\n", (unsigned long)ix->recent_floor);
        folder_own_stamp(ix);
    }
    v->next_uid = top;
    return came;
}

struct folder *
folder_open(const char *dir, bool readonly)
{
    struct folder_index *ix = folder_index_get(dir);
    if (ix == NULL)
        return NULL;
    struct folder *v = xcalloc(1, sizeof(*v));
    v->ix = ix;
    v->readonly = readonly;
    pthread_mutex_lock(&ix->lock);
    folder_refresh(ix);
    v->validity = ix->validity;
    v->next_uid = 1;
    take_new(v);
    v->modseq = ix->modseq;
    v->nkw = ix->nkw;
    v->changes = __atomic_load_n(&ix->changes, __ATOMIC_ACQUIRE);
    pthread_mutex_unlock(&ix->lock);
    return v;
}

void
folder_close(struct folder **vp)
{
    struct folder *v = *vp;
    if (v == NULL)
        return;
    struct folder_index *ix = v->ix;
    pthread_mutex_lock(&ix->lock);
    for (size_t i = 0; i < v->n; i++) {
        struct irec *r = folder_rec_find(ix, v->uids[i]);
        if (r && r->vrefs)
            r->vrefs--;
    }
    folder_purge(ix, false);
    pthread_mutex_unlock(&ix->lock);
    folder_index_unref(ix);
    free(v->uids);
    free(v->recent);
    free(v->told);
    free(v);
    *vp = NULL;
}

bool
folder_is_recent(const struct folder *v, uint32_t uid)
{
    if (v->readonly) {
        uint32_t floor = __atomic_load_n(&v->ix->recent_floor, __ATOMIC_RELAXED);
        return uid >= floor;
    }
    size_t lo = 0, hi = v->nrecent;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (v->recent[mid] < uid)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < v->nrecent && v->recent[lo] == uid;
}

size_t
folder_recent_count(const struct folder *v)
{
    size_t k = 0;
    for (size_t i = 0; i < v->n; i++)
        k += folder_is_recent(v, v->uids[i]);
    return k;
}

static void
copy_out(const struct folder *v, const struct irec *r, struct folder_msg *m)
{
    m->uid = r->uid;
    m->flags = r->flags | (folder_is_recent(v, r->uid) ? MF_RECENT : 0);
    m->kw = r->kw;
    m->modseq = r->modseq;
    m->expunged = r->expunged;
    m->in_new = r->in_new;
    m->size = r->size ? r->size : folder_disk_size(r->name);
    m->date = r->date;
    str_copy(m->name, r->name, sizeof(m->name));
}

int
folder_msg(struct folder *v, size_t i, struct folder_msg *m)
{
    if (i >= v->n)
        return -1;
    struct folder_index *ix = v->ix;
    pthread_mutex_lock(&ix->lock);
    const struct irec *r = folder_rec_find(ix, v->uids[i]);
    if (r)
        copy_out(v, r, m);
    pthread_mutex_unlock(&ix->lock);
    return r ? 0 : -1;
}

int
folder_path(const struct folder *v, const struct folder_msg *m, char *out, size_t size)
{
    return str_fmt(out, size, "%s/%s/%s", v->ix->dir, m->in_new ? "new" : "cur", m->name);
}

/* The size and the internal date, from the file when the name does not
 * say; kept for the next time. */
static void
fill_stat(struct folder *v, struct folder_msg *m)
{
    char p[1600];
    struct stat st;
    folder_path(v, m, p, sizeof(p));
    if (stat(p, &st) < 0)
        return;
    if (m->size == 0)
        m->size = (uint64_t)st.st_size;
    m->date = st.st_mtime;
    struct folder_index *ix = v->ix;
    pthread_mutex_lock(&ix->lock);
    struct irec *r = folder_rec_find(ix, m->uid);
    if (r) {
        r->date = st.st_mtime;
        if (r->size == 0)
            r->size = m->size;
    }
    pthread_mutex_unlock(&ix->lock);
}

uint64_t
folder_size(struct folder *v, struct folder_msg *m)
{
    if (m->size == 0 && !m->expunged)
        fill_stat(v, m);
    return m->size;
}

time_t
folder_internaldate(struct folder *v, struct folder_msg *m)
{
    if (m->date < 0 && !m->expunged)
        fill_stat(v, m);
    return m->date < 0 ? (time_t)strtoll(m->name, NULL, 10) : (time_t)m->date;
}

unsigned
folder_keywords(struct folder *v, char names[][FOLDER_KEYWORD_LEN], unsigned max)
{
    struct folder_index *ix = v->ix;
    pthread_mutex_lock(&ix->lock);
    unsigned n = ix->nkw < max ? ix->nkw : max;
    for (unsigned i = 0; i < n; i++)
        str_copy(names[i], ix->kw[i] ? ix->kw[i] : "", FOLDER_KEYWORD_LEN);
    pthread_mutex_unlock(&ix->lock);
    return n;
}

int
folder_keyword(struct folder *v, const char *name, bool create)
{
    struct folder_index *ix = v->ix;
    pthread_mutex_lock(&ix->lock);
    int k = folder_disk_keyword(ix, name, create);
    pthread_mutex_unlock(&ix->lock);
    return k;
}

bool
folder_take_keywords(struct folder *v)
{
    struct folder_index *ix = v->ix;
    pthread_mutex_lock(&ix->lock);
    bool more = ix->nkw != v->nkw;
    v->nkw = ix->nkw;
    pthread_mutex_unlock(&ix->lock);
    return more;
}

uint64_t
folder_highest_modseq(struct folder *v)
{
    return v->modseq;
}

/* ------------------------------------------------------------- changes */

static void
told_push(struct folder *v, uint32_t uid, uint64_t modseq)
{
    if (v->ntold == v->tcap) {
        v->tcap = v->tcap ? v->tcap * 2 : 16;
        v->told = xrealloc(v->told, v->tcap * sizeof(*v->told));
    }
    v->told[v->ntold].uid = uid;
    v->told[v->ntold++].modseq = modseq;
}

int
folder_store(struct folder *v, size_t i, int mode, unsigned flags, uint32_t kw, bool conditional,
             uint64_t unchangedsince, bool told, struct folder_msg *out)
{
    struct folder_index *ix = v->ix;
    flags &= MF_DISK;
    pthread_mutex_lock(&ix->lock);
    int rc = 0;
    for (int attempt = 0; attempt < 2; attempt++) {
        struct irec *r = i < v->n ? folder_rec_find(ix, v->uids[i]) : NULL;
        if (r == NULL || r->expunged) {
            rc = FOLDER_EXPUNGED;
            if (r)
                copy_out(v, r, out);
            break;
        }
        if (conditional && r->modseq > unchangedsince) {
            copy_out(v, r, out);
            rc = FOLDER_MODIFIED;
            break;
        }
        unsigned nf = mode > 0 ? (r->flags | flags) : mode < 0 ? (r->flags & ~flags) : flags;
        uint32_t nk = mode > 0 ? (r->kw | kw) : mode < 0 ? (r->kw & ~kw) : kw;
        if (nf == r->flags && nk == r->kw) {
            copy_out(v, r, out);
            rc = 0;
            break;
        }
        char nn[600], from[1600], to[1600];
        if (folder_disk_name(r->name, nf, nk, nn, sizeof(nn)) < 0) {
            rc = -1;
            break;
        }
        str_fmt(from, sizeof(from), "%s/%s/%s", ix->dir, r->in_new ? "new" : "cur", r->name);
        str_fmt(to, sizeof(to), "%s/cur/%s", ix->dir, nn);
        folder_expect(ix, 2);
        if (rename(from, to) < 0) {
            folder_expect(ix, -2);
            if (errno == ENOENT && attempt == 0) {
                folder_disk_rescan(ix);     /* another program moved it: as it is now */
                continue;
            }
            rc = -1;
            break;
        }
        free(r->name);
        r->name = xstrdup(nn);
        r->in_new = false;
        r->flags = (uint8_t)nf;
        r->kw = nk;
        r->modseq = ++ix->modseq;
        folder_disk_log(ix, "M %lu %llu %u %x\n", (unsigned long)r->uid, (unsigned long long)r->modseq,
                 r->flags, r->kw);
        folder_own_stamp(ix);
        folder_mark_changed(ix);
        if (told)
            told_push(v, r->uid, r->modseq);
        copy_out(v, r, out);
        break;
    }
    if (ix->loglines > LOG_FOLD + ix->n)
        folder_disk_snapshot(ix);
    pthread_mutex_unlock(&ix->lock);
    return rc;
}

int
folder_expunge(struct folder *v, size_t i, uint64_t *bytes_r)
{
    struct folder_index *ix = v->ix;
    pthread_mutex_lock(&ix->lock);
    struct irec *r = i < v->n ? folder_rec_find(ix, v->uids[i]) : NULL;
    int rc = -1;
    if (r && !r->expunged) {
        char path[1600];
        str_fmt(path, sizeof(path), "%s/%s/%s", ix->dir, r->in_new ? "new" : "cur", r->name);
        folder_expect(ix, 1);
        if (unlink(path) == 0 || errno == ENOENT) {
            if (errno == ENOENT)
                folder_expect(ix, -1);
            *bytes_r = r->size ? r->size : folder_disk_size(r->name);
            r->expunged = true;
            ix->tombs++;
            r->modseq = ++ix->modseq;
            folder_xlog_add(ix, r->uid, r->modseq);
            folder_disk_log(ix, "X %lu %llu\n", (unsigned long)r->uid, (unsigned long long)r->modseq);
            folder_own_stamp(ix);
            folder_mark_changed(ix);
            rc = 0;
        } else {
            folder_expect(ix, -1);
        }
    } else if (r) {
        rc = 1;                 /* expunged already (by another session) */
        *bytes_r = 0;
    }
    if (rc >= 0 && r) {
        /* out of this view at once: the caller tells it */
        if (r->vrefs)
            r->vrefs--;
        memmove(v->uids + i, v->uids + i + 1, (v->n - i - 1) * sizeof(*v->uids));
        v->n--;
    }
    pthread_mutex_unlock(&ix->lock);
    return rc;
}

void
folder_expunge_done(struct folder *v)
{
    struct folder_index *ix = v->ix;
    pthread_mutex_lock(&ix->lock);
    folder_purge(ix, false);
    if (ix->loglines > LOG_FOLD + ix->n)
        folder_disk_snapshot(ix);
    pthread_mutex_unlock(&ix->lock);
}

/* Since the view last synced: expunges (told only when expunges is set),
 * new messages, flags others changed, new keywords. */
int
folder_sync(struct folder *v, bool expunges, struct folder_update *u)
{
    struct folder_index *ix = v->ix;
    memset(u, 0, sizeof(*u));
    pthread_mutex_lock(&ix->lock);
    if (folder_refresh(ix) < 0 || ix->gone) {
        u->gone = true;
        pthread_mutex_unlock(&ix->lock);
        return 0;
    }
    unsigned long changes = __atomic_load_n(&ix->changes, __ATOMIC_ACQUIRE);
    if (changes == v->changes && !(expunges && v->pending_expunges) && v->nkw == ix->nkw) {
        v->ntold = 0;
        pthread_mutex_unlock(&ix->lock);
        return 0;
    }
    size_t old_n = v->n;
    /* expunged, and changed, in one walk over both (sorted by UID) */
    size_t k = 0, o = 0, pending = 0;
    u->changed = xcalloc(old_n ? old_n : 1, sizeof(uint32_t));
    for (size_t i = 0; i < old_n; i++) {
        uint32_t uid = v->uids[i];
        while (k < ix->n && ix->recs[k].uid < uid)
            k++;
        struct irec *r = k < ix->n && ix->recs[k].uid == uid ? &ix->recs[k] : NULL;
        if (r == NULL || r->expunged) {
            if (expunges) {
                if (u->nexpunged == u->xcap) {
                    u->xcap = u->xcap ? u->xcap * 2 : 16;
                    u->expunged = xrealloc(u->expunged, u->xcap * sizeof(*u->expunged));
                    u->expunged_uids = xrealloc(u->expunged_uids, u->xcap * sizeof(uint32_t));
                }
                u->expunged[u->nexpunged] = (uint32_t)(o + 1);     /* as of after the ones before */
                u->expunged_uids[u->nexpunged++] = uid;
                if (r && r->vrefs)
                    r->vrefs--;
                continue;
            }
            pending++;
        } else if (r->modseq > v->modseq) {
            bool mine = false;
            for (size_t t = 0; t < v->ntold && !mine; t++)
                mine = v->told[t].uid == uid && v->told[t].modseq == r->modseq;
            if (!mine)
                u->changed[u->nchanged++] = (uint32_t)o;
        }
        v->uids[o++] = uid;
    }
    v->n = o;
    v->pending_expunges = pending > 0;
    size_t before = v->n;
    size_t came = take_new(v);
    u->added = came;
    u->exists = v->n;
    (void)before;
    u->keywords_changed = v->nkw != ix->nkw;
    v->nkw = ix->nkw;
    v->modseq = ix->modseq;
    v->changes = changes;
    v->ntold = 0;
    folder_purge(ix, false);
    /* no fdatasync here, under the lock, after every command: what a sync
     * logs (the \Recent floor) needs only the page cache against a crash
     * of the role; the next addition's durable step takes it to the disk */
    pthread_mutex_unlock(&ix->lock);
    return 0;
}

void
folder_update_free(struct folder_update *u)
{
    free(u->expunged);
    free(u->expunged_uids);
    free(u->changed);
    memset(u, 0, sizeof(*u));
}

bool
folder_unchanged(const struct folder *v)
{
    struct folder_index *ix = v->ix;
    return __atomic_load_n(&ix->changes, __ATOMIC_ACQUIRE) == v->changes &&
           !__atomic_load_n(&ix->dirty, __ATOMIC_ACQUIRE) && !v->pending_expunges;
}

/* UIDs expunged since modseq, among the ones known (QRESYNC): those the
 * expunge log names; when it does not reach back that far, every UID in
 * known that is not in the folder (RFC 7162 3.2.5.1 allows more). */
size_t
folder_vanished(struct folder *v, uint64_t since, const struct seqset *known, uint32_t **out)
{
    struct folder_index *ix = v->ix;
    size_t n = 0, cap = 0;
    *out = NULL;
    pthread_mutex_lock(&ix->lock);
    if (since >= ix->xfloor) {
        for (size_t i = 0; i < ix->nx; i++) {
            if (ix->x[i].modseq <= since || (known && !seqset_has(known, ix->x[i].uid)))
                continue;
            struct irec *r = folder_rec_find(ix, ix->x[i].uid);
            if (r && !r->expunged)
                continue;
            if (n == cap) {
                cap = cap ? cap * 2 : 64;
                *out = xrealloc(*out, cap * sizeof(uint32_t));
            }
            (*out)[n++] = ix->x[i].uid;
        }
    } else if (known) {
        for (size_t k = 0; k < known->n; k++) {
            uint32_t lo = known->r[k].lo, hi = known->r[k].hi;
            if (hi >= ix->uidnext)
                hi = ix->uidnext - 1;
            for (uint64_t uid = lo; uid <= hi && n < 1000000; uid++) {
                struct irec *r = folder_rec_find(ix, (uint32_t)uid);
                if (r && !r->expunged)
                    continue;
                if (n == cap) {
                    cap = cap ? cap * 2 : 64;
                    *out = xrealloc(*out, cap * sizeof(uint32_t));
                }
                (*out)[n++] = (uint32_t)uid;
            }
        }
    } else {
        /* everything below uidnext not there: as ranges would be better;
         * the live UIDs' gaps are what went */
        uint32_t next = 1;
        for (size_t i = 0; i <= ix->n; i++) {
            uint32_t until = i < ix->n ? ix->recs[i].uid : ix->uidnext;
            if (i < ix->n && ix->recs[i].expunged)
                continue;
            for (uint32_t uid = next; uid < until && n < 1000000; uid++) {
                if (n == cap) {
                    cap = cap ? cap * 2 : 64;
                    *out = xrealloc(*out, cap * sizeof(uint32_t));
                }
                (*out)[n++] = uid;
            }
            next = until + 1;
        }
    }
    pthread_mutex_unlock(&ix->lock);
    if (n > 1) {
        /* sorted, once each */
        for (size_t i = 1; i < n; i++) {
            uint32_t x = (*out)[i];
            size_t j = i;
            while (j > 0 && (*out)[j - 1] > x) {
                (*out)[j] = (*out)[j - 1];
                j--;
            }
            (*out)[j] = x;
        }
        size_t o = 1;
        for (size_t i = 1; i < n; i++)
            if ((*out)[i] != (*out)[o - 1])
                (*out)[o++] = (*out)[i];
        n = o;
    }
    return n;
}

