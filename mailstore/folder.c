/*
 * folder.c -- one folder of a Maildir as IMAP sees it: messages with UIDs
 * that persist (moat-uidlist: UIDVALIDITY, the next UID, and "UID name"
 * per message, rewritten atomically under the folder's lock), flags kept
 * in the file names (":2,DFRST", the Maildir convention every Maildir
 * reader shares), \Recent for mail a session is the first to see.
 *
 * A session keeps its own view (struct folder) and brings it up to date with
 * folder_sync, which says what changed on disk since: messages that went
 * (expunged by another session), messages that came, flags changed.
 */
#include <dirent.h>
#include <pthread.h>
#include <errno.h>
#include <fcntl.h>
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

#define UIDLIST "moat-uidlist"
#define MAX_MSGS 500000

/* A message as a load finds it, before it goes into a snapshot. */
struct raw {
    uint32_t uid;
    unsigned flags;
    bool in_new;
    char *name;
};

struct ondisk {
    char *base;         /* name without ":2,..." */
    char *name;         /* the file's name */
    bool in_new;
};

static int
base_cmp(const void *a, const void *b)
{
    return strcmp(((const struct ondisk *)a)->base, ((const struct ondisk *)b)->base);
}

unsigned
folder_flags_of(const char *name)
{
    const char *info = strstr(name, ":2,");
    unsigned f = 0;
    for (const char *p = info ? info + 3 : ""; *p; p++)
        switch (*p) {
        case 'D': f |= MF_DRAFT; break;
        case 'F': f |= MF_FLAGGED; break;
        case 'R': f |= MF_ANSWERED; break;
        case 'S': f |= MF_SEEN; break;
        case 'T': f |= MF_DELETED; break;
        default: break;
        }
    return f;
}

/* "base:2,FLAGS" with the letters in ASCII order, as Maildir wants */
static void
name_with_flags(const char *base, unsigned f, char *out, size_t size)
{
    snprintf(out, size, "%s:2,%s%s%s%s%s", base, f & MF_DRAFT ? "D" : "", f & MF_FLAGGED ? "F" : "",
             f & MF_ANSWERED ? "R" : "", f & MF_SEEN ? "S" : "", f & MF_DELETED ? "T" : "");
}

static void
ondisk_free(struct ondisk *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].base);
        free(v[i].name);
    }
    free(v);
}

/* Every message file of the folder, sorted by base name. */
static struct ondisk *
scan(const char *dir, size_t *n_r)
{
    struct ondisk *v = NULL;
    size_t n = 0, cap = 0;
    for (int pass = 0; pass < 2; pass++) {
        char sub[1500];
        str_fmt(sub, sizeof(sub), "%s/%s", dir, pass ? "new" : "cur");
        DIR *d = opendir(sub);
        if (d == NULL)
            continue;
        for (struct dirent *e; (e = readdir(d)) != NULL && n < MAX_MSGS;) {
            if (e->d_name[0] == '.')
                continue;
            if (n == cap) {
                cap = cap ? cap * 2 : 256;
                v = xrealloc(v, cap * sizeof(*v));
            }
            v[n].name = xstrdup(e->d_name);
            v[n].base = xstrndup(e->d_name, strcspn(e->d_name, ":"));
            v[n].in_new = pass == 1;
            n++;
        }
        closedir(d);
    }
    if (n)
        qsort(v, n, sizeof(*v), base_cmp);
    *n_r = n;
    return v;
}

/* ---------------------------------------------------------- uidlist */

struct uidmap {
    uint32_t validity, next;
    char **base;
    uint32_t *uid;
    size_t n, cap;
};

static void
uidmap_free(struct uidmap *u)
{
    for (size_t i = 0; i < u->n; i++)
        free(u->base[i]);
    free(u->base);
    free(u->uid);
    memset(u, 0, sizeof(*u));
}

static void
uidmap_add(struct uidmap *u, const char *base, uint32_t uid)
{
    if (u->n == u->cap) {
        u->cap = u->cap ? u->cap * 2 : 256;
        u->base = xrealloc(u->base, u->cap * sizeof(char *));
        u->uid = xrealloc(u->uid, u->cap * sizeof(uint32_t));
    }
    u->base[u->n] = xstrdup(base);
    u->uid[u->n++] = uid;
}

static void
uidmap_read(const char *dir, struct uidmap *u)
{
    char path[1500], line[600];
    memset(u, 0, sizeof(*u));
    str_fmt(path, sizeof(path), "%s/%s", dir, UIDLIST);
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return;
    unsigned long v, nx;
    if (fgets(line, sizeof(line), f) && sscanf(line, "V1 %lu %lu", &v, &nx) == 2 && v && nx) {
        u->validity = (uint32_t)v;
        u->next = (uint32_t)nx;
        while (fgets(line, sizeof(line), f)) {
            unsigned long uid;
            char base[500];
            if (sscanf(line, "%lu %499s", &uid, base) == 2 && uid > 0 && uid < u->next)
                uidmap_add(u, base, (uint32_t)uid);
        }
    }
    fclose(f);
}

static int
uidmap_write(const char *dir, const struct uidmap *u)
{
    char path[1500], tmp[1600];
    str_fmt(path, sizeof(path), "%s/%s", dir, UIDLIST);
    str_fmt(tmp, sizeof(tmp), "%s.%d", path, (int)getpid());
    FILE *f = fopen(tmp, "we");
    if (f == NULL)
        return -1;
    fprintf(f, "V1 %lu %lu\n", (unsigned long)u->validity, (unsigned long)u->next);
    for (size_t i = 0; i < u->n; i++)
        fprintf(f, "%lu %s\n", (unsigned long)u->uid[i], u->base[i]);
    if (fflush(f) != 0 || fsync(fileno(f)) < 0) {
        fclose(f);
        unlink(tmp);
        return -1;
    }
    fclose(f);
    return rename(tmp, path);
}

static int
lock_folder(const char *dir)
{
    char path[1500];
    str_fmt(path, sizeof(path), "%s/moat-uidlist.lock", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0 && flock(fd, LOCK_EX) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int
raw_uid_cmp(const void *a, const void *b)
{
    const struct raw *x = a, *y = b;
    return x->uid < y->uid ? -1 : x->uid > y->uid;
}

static void
raws_free(struct raw *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i].name);
    free(v);
}

/* The folder's mtimes: cur/, new/ and the uidlist change with every
 * message that comes, goes or changes flags (a rename). */
static void
stamps(const char *dir, struct timespec st[3])
{
    static const char *const parts[3] = { "cur", "new", UIDLIST };
    for (int i = 0; i < 3; i++) {
        char p[1500];
        struct stat sb;
        str_fmt(p, sizeof(p), "%s/%s", dir, parts[i]);
        if (stat(p, &sb) == 0)
            st[i] = sb.st_mtim;
        else
            st[i] = (struct timespec){ 0, 0 };
    }
}

/* The folder now: every message with its UID (new ones get the next
 * UIDs, in delivery order), files in new/ moved to cur/ when claim is set
 * (their UIDs go to *claimed: \Recent for the caller). Under the folder's
 * lock. */
static int
load(const char *dir, bool claim, struct raw **v_r, size_t *n_r, uint32_t *validity_r,
     uint32_t *next_r, uint32_t **claimed_r, size_t *nclaimed_r)
{
    int lock = lock_folder(dir);
    if (lock < 0)
        return -1;
    size_t nd;
    struct ondisk *d = scan(dir, &nd);
    struct uidmap u;
    uidmap_read(dir, &u);
    bool dirty = false;
    if (u.validity == 0) {
        u.validity = (uint32_t)time(NULL);
        u.next = 1;
        dirty = true;
    }
    struct raw *v = xcalloc(nd ? nd : 1, sizeof(*v));
    size_t n = 0;
    char **bases = u.base;
    size_t *order = xcalloc(u.n ? u.n : 1, sizeof(size_t));
    for (size_t i = 0; i < u.n; i++)
        order[i] = i;
    for (size_t i = 1; i < u.n; i++) {         /* insertion sort: usually sorted already */
        size_t k = order[i], j = i;
        while (j > 0 && strcmp(bases[order[j - 1]], bases[k]) > 0) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = k;
    }
    size_t ui = 0;
    struct ondisk **fresh = xcalloc(nd ? nd : 1, sizeof(*fresh));
    size_t nfresh = 0;
    for (size_t i = 0; i < nd; i++) {
        while (ui < u.n && strcmp(bases[order[ui]], d[i].base) < 0)
            ui++;
        if (ui < u.n && strcmp(bases[order[ui]], d[i].base) == 0) {
            v[n].uid = u.uid[order[ui]];
            ui++;
        } else {
            fresh[nfresh++] = &d[i];
            continue;
        }
        v[n].name = xstrdup(d[i].name);
        v[n].flags = folder_flags_of(d[i].name);
        v[n].in_new = d[i].in_new;
        n++;
    }
    if (nfresh || u.n != n)
        dirty = true;
    for (size_t i = 0; i < nfresh; i++) {
        v[n].uid = u.next++;
        v[n].name = xstrdup(fresh[i]->name);
        v[n].flags = folder_flags_of(fresh[i]->name);
        v[n].in_new = fresh[i]->in_new;
        n++;
    }
    free(fresh);
    free(order);
    if (n > 1)
        qsort(v, n, sizeof(*v), raw_uid_cmp);
    uint32_t *claimed = NULL;
    size_t nclaimed = 0;
    if (claim) {
        for (size_t i = 0; i < n; i++) {
            if (!v[i].in_new)
                continue;
            char from[2000], to[2000], nn[700], base[600];
            snprintf(base, sizeof(base), "%.*s", (int)strcspn(v[i].name, ":"), v[i].name);
            name_with_flags(base, v[i].flags, nn, sizeof(nn));
            str_fmt(from, sizeof(from), "%s/new/%s", dir, v[i].name);
            str_fmt(to, sizeof(to), "%s/cur/%s", dir, nn);
            if (rename(from, to) == 0) {
                free(v[i].name);
                v[i].name = xstrdup(nn);
                v[i].in_new = false;
                claimed = xrealloc(claimed, (nclaimed + 1) * sizeof(uint32_t));
                claimed[nclaimed++] = v[i].uid;
            }
        }
    }
    if (dirty) {
        struct uidmap w;
        memset(&w, 0, sizeof(w));
        w.validity = u.validity;
        w.next = u.next;
        for (size_t i = 0; i < n; i++) {
            char base[600];
            snprintf(base, sizeof(base), "%.*s", (int)strcspn(v[i].name, ":"), v[i].name);
            uidmap_add(&w, base, v[i].uid);
        }
        if (uidmap_write(dir, &w) < 0)
            log_warn("%s/%s: %s", dir, UIDLIST, strerror(errno));
        uidmap_free(&w);
    }
    *validity_r = u.validity;
    *next_r = u.next;
    uidmap_free(&u);
    ondisk_free(d, nd);
    close(lock);
    *v_r = v;
    *n_r = n;
    if (claimed_r) {
        *claimed_r = claimed;
        *nclaimed_r = nclaimed;
    } else {
        free(claimed);
    }
    return 0;
}

/* --------------------------------------------------- shared snapshots */

/* One immutable view of a folder, shared by every session that has the
 * same: the messages and their names in one block. A session that changes
 * something takes a copy of its own first (copy on write). */
struct folder_snap {
    unsigned refs;
    char dir[1200];
    struct timespec stamp[3];
    uint32_t validity, uidnext;
    struct folder_msg *msgs;
    size_t n;
    char *arena;
};

struct snap_slot {
    char dir[1200];
    struct folder_snap *snap;     /* the newest view of the folder */
    struct snap_slot *next;
};

static pthread_mutex_t snap_lock = PTHREAD_MUTEX_INITIALIZER;
static struct snap_slot *slots;

static void
snap_unref(struct folder_snap *sn)
{
    if (sn == NULL)
        return;
    pthread_mutex_lock(&snap_lock);
    bool last = --sn->refs == 0;
    pthread_mutex_unlock(&snap_lock);
    if (last) {
        free(sn->msgs);
        free(sn->arena);
        free(sn);
    }
}

static struct folder_snap *
snap_make(const char *dir, const struct timespec st[3], struct raw *v, size_t n,
          uint32_t validity, uint32_t uidnext)
{
    struct folder_snap *sn = xcalloc(1, sizeof(*sn));
    str_copy(sn->dir, dir, sizeof(sn->dir));
    memcpy(sn->stamp, st, sizeof(sn->stamp));
    sn->validity = validity;
    sn->uidnext = uidnext;
    sn->n = n;
    sn->msgs = xcalloc(n ? n : 1, sizeof(*sn->msgs));
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += strlen(v[i].name) + 1;
    sn->arena = xmalloc(total ? total : 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(v[i].name) + 1;
        memcpy(sn->arena + o, v[i].name, l);
        sn->msgs[i] = (struct folder_msg){ v[i].uid, (uint8_t)v[i].flags, v[i].in_new, sn->arena + o };
        o += l;
    }
    sn->refs = 1;
    return sn;
}

static bool
snap_same(const struct folder_snap *sn, const struct raw *v, size_t n, uint32_t validity)
{
    if (sn == NULL || sn->n != n || sn->validity != validity)
        return false;
    for (size_t i = 0; i < n; i++)
        if (sn->msgs[i].uid != v[i].uid || sn->msgs[i].flags != v[i].flags ||
            sn->msgs[i].in_new != v[i].in_new || strcmp(sn->msgs[i].name, v[i].name) != 0)
            return false;
    return true;
}

static struct snap_slot *
slot_of(const char *dir)
{
    for (struct snap_slot *sl = slots; sl; sl = sl->next)
        if (strcmp(sl->dir, dir) == 0)
            return sl;
    struct snap_slot *sl = xcalloc(1, sizeof(*sl));
    str_copy(sl->dir, dir, sizeof(sl->dir));
    sl->next = slots;
    slots = sl;
    return sl;
}

/* The folder as it is now, shared when it is what others see. */
static struct folder_snap *
snap_load(const char *dir, bool claim, uint32_t **claimed, size_t *nclaimed)
{
    struct timespec st[3];
    stamps(dir, st);
    struct raw *v;
    size_t n;
    uint32_t validity, next;
    if (load(dir, claim, &v, &n, &validity, &next, claimed, nclaimed) < 0)
        return NULL;
    if (claim && *nclaimed)
        stamps(dir, st);        /* our own renames */
    pthread_mutex_lock(&snap_lock);
    struct snap_slot *sl = slot_of(dir);
    struct folder_snap *sn;
    if (snap_same(sl->snap, v, n, validity)) {
        sn = sl->snap;
        sn->refs++;
        memcpy(sn->stamp, st, sizeof(sn->stamp));
        if (next > sn->uidnext)
            sn->uidnext = next;
    } else {
        sn = snap_make(dir, st, v, n, validity, next);
        struct folder_snap *old = sl->snap;
        sl->snap = sn;
        sn->refs++;             /* the slot's */
        if (old && --old->refs == 0) {
            free(old->msgs);
            free(old->arena);
            free(old);
        }
    }
    pthread_mutex_unlock(&snap_lock);
    raws_free(v, n);
    return sn;
}

/* Nothing changed since the session's view was the folder's newest? */
static bool
unchanged(const struct folder *mb)
{
    if (mb->snap == NULL)
        return false;
    struct timespec st[3];
    stamps(mb->dir, st);
    pthread_mutex_lock(&snap_lock);
    struct snap_slot *sl = slot_of(mb->dir);
    bool same = sl->snap == mb->snap && memcmp(st, mb->snap->stamp, sizeof(st)) == 0;
    pthread_mutex_unlock(&snap_lock);
    return same;
}

/* A view of our own, before we change it. */
static void
make_private(struct folder *mb)
{
    if (mb->snap == NULL)
        return;
    struct folder_msg *v = xcalloc(mb->n ? mb->n : 1, sizeof(*v));
    for (size_t i = 0; i < mb->n; i++) {
        v[i] = mb->msgs[i];
        v[i].name = xstrdup(mb->msgs[i].name);
    }
    snap_unref(mb->snap);
    mb->snap = NULL;
    mb->own = v;
    mb->msgs = v;
}

static void
view_free(struct folder *mb)
{
    if (mb->snap) {
        snap_unref(mb->snap);
        mb->snap = NULL;
    } else if (mb->own) {
        for (size_t i = 0; i < mb->n; i++)
            free((char *)mb->own[i].name);
        free(mb->own);
    }
    mb->own = NULL;
    mb->msgs = NULL;
    mb->n = 0;
}

static void
view_set(struct folder *mb, struct folder_snap *sn)
{
    mb->snap = sn;
    mb->msgs = sn->msgs;
    mb->n = sn->n;
    mb->validity = sn->validity;
    mb->uidnext = sn->uidnext;
}

static void
add_recent(struct folder *mb, const uint32_t *uids, size_t n)
{
    if (n == 0)
        return;
    mb->recent = xrealloc(mb->recent, (mb->nrecent + n) * sizeof(uint32_t));
    memcpy(mb->recent + mb->nrecent, uids, n * sizeof(uint32_t));
    mb->nrecent += n;       /* UIDs only grow: still sorted */
}

bool
folder_recent(const struct folder *mb, size_t idx)
{
    uint32_t uid = mb->msgs[idx].uid;
    size_t lo = 0, hi = mb->nrecent;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (mb->recent[mid] < uid)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < mb->nrecent && mb->recent[lo] == uid;
}

size_t
folder_recent_count(const struct folder *mb)
{
    size_t n = 0;
    for (size_t i = 0; i < mb->n; i++)
        n += folder_recent(mb, i);
    return n;
}

/* ------------------------------------------------------------ public */

struct folder *
folder_open(const char *dir, bool readonly)
{
    struct folder *mb = xcalloc(1, sizeof(*mb));
    str_copy(mb->dir, dir, sizeof(mb->dir));
    mb->readonly = readonly;
    uint32_t *claimed = NULL;
    size_t nclaimed = 0;
    struct folder_snap *sn = snap_load(dir, !readonly, &claimed, &nclaimed);
    if (sn == NULL) {
        free(mb);
        return NULL;
    }
    view_set(mb, sn);
    add_recent(mb, claimed, nclaimed);
    free(claimed);
    return mb;
}

void
folder_close(struct folder **mp)
{
    struct folder *mb = *mp;
    if (mb == NULL)
        return;
    view_free(mb);
    free(mb->recent);
    free(mb);
    *mp = NULL;
}

int
folder_sync(struct folder *mb, struct folder_changes *ch)
{
    memset(ch, 0, sizeof(*ch));
    if (unchanged(mb))
        return 0;
    uint32_t *claimed = NULL;
    size_t nclaimed = 0;
    struct folder_snap *sn = snap_load(mb->dir, !mb->readonly, &claimed, &nclaimed);
    if (sn == NULL)
        return -1;
    /* both sorted by UID: what went, what came, what changed */
    ch->expunged = xcalloc(mb->n ? mb->n : 1, sizeof(uint32_t));
    ch->changed = xcalloc(sn->n ? sn->n : 1, sizeof(uint32_t));
    size_t k = 0, kept = 0;
    for (size_t i = 0; i < mb->n; i++) {
        while (k < sn->n && sn->msgs[k].uid < mb->msgs[i].uid)
            k++;
        if (k < sn->n && sn->msgs[k].uid == mb->msgs[i].uid) {
            if (sn->msgs[k].flags != mb->msgs[i].flags)
                ch->changed[ch->nchanged++] = (uint32_t)(k + 1);
            kept++;
            k++;
        } else {
            uint32_t seq = (uint32_t)(i + 1 - ch->nexpunged);
            ch->expunged[ch->nexpunged++] = seq;
        }
    }
    ch->added = sn->n - kept;
    ch->flags_changed = ch->nchanged;
    if (sn->validity != mb->validity)
        ch->validity_changed = true;
    view_free(mb);
    view_set(mb, sn);
    add_recent(mb, claimed, nclaimed);
    free(claimed);
    return 0;
}

void
folder_changes_free(struct folder_changes *ch)
{
    free(ch->expunged);
    free(ch->changed);
    memset(ch, 0, sizeof(*ch));
}

void
folder_remove(struct folder *mb, size_t idx)
{
    make_private(mb);
    free((char *)mb->own[idx].name);
    memmove(&mb->own[idx], &mb->own[idx + 1], (mb->n - idx - 1) * sizeof(*mb->own));
    mb->n--;
}

int
folder_set_flags(struct folder *mb, size_t idx, unsigned flags)
{
    flags &= MF_DISK;
    if ((mb->msgs[idx].flags & MF_DISK) == flags)
        return 0;
    char nn[700], from[2000], to[2000], base[600];
    const struct folder_msg *m = &mb->msgs[idx];
    snprintf(base, sizeof(base), "%.*s", (int)strcspn(m->name, ":"), m->name);
    name_with_flags(base, flags, nn, sizeof(nn));
    str_fmt(from, sizeof(from), "%s/%s/%s", mb->dir, m->in_new ? "new" : "cur", m->name);
    str_fmt(to, sizeof(to), "%s/cur/%s", mb->dir, nn);
    if (rename(from, to) < 0)
        return -1;          /* gone (expunged elsewhere): the next sync says so */
    make_private(mb);
    struct folder_msg *w = &mb->own[idx];
    free((char *)w->name);
    w->name = xstrdup(nn);
    w->in_new = false;
    w->flags = (uint8_t)flags;
    return 0;
}

int
folder_path(const struct folder *mb, size_t idx, char *out, size_t size)
{
    const struct folder_msg *m = &mb->msgs[idx];
    return str_fmt(out, size, "%s/%s/%s", mb->dir, m->in_new ? "new" : "cur", m->name);
}

uint64_t
folder_size(const struct folder *mb, size_t idx)
{
    const struct folder_msg *m = &mb->msgs[idx];
    const char *s = strstr(m->name, ",S=");
    if (s)
        return strtoull(s + 3, NULL, 10);
    char p[2000];
    struct stat st;
    folder_path(mb, idx, p, sizeof(p));
    return stat(p, &st) == 0 ? (uint64_t)st.st_size : 0;
}

time_t
folder_internaldate(const struct folder *mb, size_t idx)
{
    const struct folder_msg *m = &mb->msgs[idx];
    char p[2000];
    struct stat st;
    folder_path(mb, idx, p, sizeof(p));
    if (stat(p, &st) == 0)
        return st.st_mtime;
    return (time_t)strtoll(m->name, NULL, 10);
}

/* Deliver-like: a new message into a folder (APPEND, COPY), with flags
 * and an internal date; its UID is the folder's next. */
int
folder_add(const char *dir, const char *data, size_t len, unsigned flags, time_t date,
           uint32_t *uid_r, uint32_t *validity_r, char *name_r, size_t name_size)
{
    static unsigned long counter;
    char base[300], nn[700], tmp[2000], final[2000], host[128] = "moat";
    gethostname(host, sizeof(host) - 1);
    for (char *p = host; *p; p++)
        if (*p == '/' || *p == ':')
            *p = '_';
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(base, sizeof(base), "%lld.M%06ldP%dQ%lu.%s,S=%zu", (long long)ts.tv_sec,
             ts.tv_nsec / 1000, (int)getpid(), __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED),
             host, len);
    name_with_flags(base, flags & MF_DISK, nn, sizeof(nn));
    if (name_r)
        str_copy(name_r, nn, name_size);
    str_fmt(tmp, sizeof(tmp), "%s/tmp/%s", dir, base);
    str_fmt(final, sizeof(final), "%s/cur/%s", dir, nn);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    if (write_full(fd, data, len) < 0 || fdatasync(fd) < 0) {
        close(fd);
        unlink(tmp);
        return -1;
    }
    if (date > 0) {
        struct timespec times[2] = { { date, 0 }, { date, 0 } };
        futimens(fd, times);
    }
    close(fd);
    if (rename(tmp, final) < 0) {
        unlink(tmp);
        return -1;
    }
    char cur[2100];
    str_fmt(cur, sizeof(cur), "%s/cur", dir);
    fsync_dir(cur);
    /* the UID: the folder's next, recorded at once */
    struct raw *v;
    size_t n;
    uint32_t validity, next;
    if (load(dir, false, &v, &n, &validity, &next, NULL, NULL) < 0)
        return -1;
    *uid_r = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(v[i].name, base, strlen(base)) == 0 && v[i].name[strlen(base)] == ':')
            *uid_r = v[i].uid;
    *validity_r = validity;
    raws_free(v, n);
    return *uid_r ? 0 : -1;
}

int
folder_status(const char *dir, struct folder_status *st)
{
    struct raw *v;
    size_t n;
    memset(st, 0, sizeof(*st));
    if (load(dir, false, &v, &n, &st->validity, &st->uidnext, NULL, NULL) < 0)
        return -1;
    st->messages = (uint32_t)n;
    for (size_t i = 0; i < n; i++) {
        if (!(v[i].flags & MF_SEEN))
            st->unseen++;
        if (v[i].in_new)
            st->recent++;
        const char *sz = strstr(v[i].name, ",S=");
        st->size += sz ? strtoull(sz + 3, NULL, 10) : 0;
    }
    raws_free(v, n);
    return 0;
}
