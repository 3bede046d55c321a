/*
 * mbox.c -- one folder of a Maildir as IMAP sees it: messages with UIDs
 * that persist (moat-uidlist: UIDVALIDITY, the next UID, and "UID name"
 * per message, rewritten atomically under the folder's lock), flags kept
 * in the file names (":2,DFRST", the Maildir convention every Maildir
 * reader shares), \Recent for mail a session is the first to see.
 *
 * A session keeps its own view (struct mbox) and brings it up to date with
 * mbox_sync, which says what changed on disk since: messages that went
 * (expunged by another session), messages that came, flags changed.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "store_private.h"
#include "imap_private.h"

#define UIDLIST "moat-uidlist"
#define MAX_MSGS 500000

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
mbox_flags_of(const char *name)
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
uid_cmp(const void *a, const void *b)
{
    const struct mbox_msg *x = a, *y = b;
    return x->uid < y->uid ? -1 : x->uid > y->uid;
}

/* The folder now: every message with its UID (new ones get the next
 * UIDs, in delivery order), files in new/ moved to cur/ when claim is set
 * (they are \Recent for the caller). Under the folder's lock. */
static int
load(const char *dir, bool claim, struct mbox_msg **v_r, size_t *n_r, uint32_t *validity_r,
     uint32_t *next_r)
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
    /* base -> uid, by a merge of the two sorted lists (the uidlist is
     * written in base order) */
    struct mbox_msg *v = xcalloc(nd ? nd : 1, sizeof(*v));
    size_t n = 0;
    char **bases = u.base;
    size_t *order = xcalloc(u.n ? u.n : 1, sizeof(size_t));
    for (size_t i = 0; i < u.n; i++)
        order[i] = i;
    /* sort the uidlist's indexes by base */
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
        v[n].base = xstrdup(d[i].base);
        v[n].name = xstrdup(d[i].name);
        v[n].flags = mbox_flags_of(d[i].name);
        v[n].in_new = d[i].in_new;
        n++;
    }
    if (nfresh || u.n != n)
        dirty = true;
    /* new messages: the next UIDs, in the order they were delivered */
    for (size_t i = 0; i < nfresh; i++) {
        v[n].uid = u.next++;
        v[n].base = xstrdup(fresh[i]->base);
        v[n].name = xstrdup(fresh[i]->name);
        v[n].flags = mbox_flags_of(fresh[i]->name);
        v[n].in_new = fresh[i]->in_new;
        n++;
    }
    free(fresh);
    free(order);
    qsort(v, n, sizeof(*v), uid_cmp);
    if (claim) {
        for (size_t i = 0; i < n; i++) {
            if (!v[i].in_new)
                continue;
            char from[2000], to[2000], nn[700];
            name_with_flags(v[i].base, v[i].flags, nn, sizeof(nn));
            str_fmt(from, sizeof(from), "%s/new/%s", dir, v[i].name);
            str_fmt(to, sizeof(to), "%s/cur/%s", dir, nn);
            if (rename(from, to) == 0) {
                free(v[i].name);
                v[i].name = xstrdup(nn);
                v[i].in_new = false;
                v[i].recent = true;
            }
        }
    }
    if (dirty) {
        struct uidmap w;
        memset(&w, 0, sizeof(w));
        w.validity = u.validity;
        w.next = u.next;
        for (size_t i = 0; i < n; i++)
            uidmap_add(&w, v[i].base, v[i].uid);
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
    return 0;
}

/* ------------------------------------------------------------ public */

static void
msgs_free(struct mbox_msg *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].base);
        free(v[i].name);
    }
    free(v);
}

struct mbox *
mbox_open(const char *dir, bool readonly)
{
    struct mbox *mb = xcalloc(1, sizeof(*mb));
    str_copy(mb->dir, dir, sizeof(mb->dir));
    mb->readonly = readonly;
    if (load(dir, !readonly, &mb->msgs, &mb->n, &mb->validity, &mb->uidnext) < 0) {
        free(mb);
        return NULL;
    }
    return mb;
}

void
mbox_close(struct mbox **mp)
{
    struct mbox *mb = *mp;
    if (mb == NULL)
        return;
    msgs_free(mb->msgs, mb->n);
    free(mb);
    *mp = NULL;
}

int
mbox_sync(struct mbox *mb, struct mbox_changes *ch)
{
    memset(ch, 0, sizeof(*ch));
    struct mbox_msg *v;
    size_t n;
    uint32_t validity, next;
    if (load(mb->dir, !mb->readonly, &v, &n, &validity, &next) < 0)
        return -1;
    /* both sorted by UID: a merge says what went, what came, what changed */
    ch->expunged = xcalloc(mb->n ? mb->n : 1, sizeof(uint32_t));
    size_t i = 0, k = 0;
    for (; i < mb->n; i++) {
        while (k < n && v[k].uid < mb->msgs[i].uid)
            k++;                        /* (cannot happen: UIDs only grow) */
        if (k < n && v[k].uid == mb->msgs[i].uid) {
            bool recent = mb->msgs[i].recent;
            if (v[k].flags != mb->msgs[i].flags)
                ch->flags_changed++;
            v[k].recent = v[k].recent || recent;
            v[k].flags_changed = v[k].flags != mb->msgs[i].flags;
            k++;
        } else {
            /* its number now, after the ones reported before it */
            uint32_t seq = (uint32_t)(i + 1 - ch->nexpunged);
            ch->expunged[ch->nexpunged++] = seq;
        }
    }
    ch->added = n - (mb->n - ch->nexpunged);
    msgs_free(mb->msgs, mb->n);
    mb->msgs = v;
    mb->n = n;
    mb->uidnext = next;
    if (validity != mb->validity) {
        mb->validity = validity;
        ch->validity_changed = true;
    }
    return 0;
}

void
mbox_changes_free(struct mbox_changes *ch)
{
    free(ch->expunged);
    memset(ch, 0, sizeof(*ch));
}

int
mbox_set_flags(struct mbox *mb, size_t idx, unsigned flags)
{
    struct mbox_msg *m = &mb->msgs[idx];
    flags &= MF_DISK;
    if ((m->flags & MF_DISK) == flags)
        return 0;
    char nn[700], from[2000], to[2000];
    name_with_flags(m->base, flags, nn, sizeof(nn));
    str_fmt(from, sizeof(from), "%s/%s/%s", mb->dir, m->in_new ? "new" : "cur", m->name);
    str_fmt(to, sizeof(to), "%s/cur/%s", mb->dir, nn);
    if (rename(from, to) < 0)
        return -1;          /* gone (expunged elsewhere): the next sync says so */
    free(m->name);
    m->name = xstrdup(nn);
    m->in_new = false;
    m->flags = flags;
    return 0;
}

int
mbox_path(const struct mbox *mb, size_t idx, char *out, size_t size)
{
    const struct mbox_msg *m = &mb->msgs[idx];
    return str_fmt(out, size, "%s/%s/%s", mb->dir, m->in_new ? "new" : "cur", m->name);
}

uint64_t
mbox_size(const struct mbox *mb, size_t idx)
{
    const struct mbox_msg *m = &mb->msgs[idx];
    const char *s = strstr(m->name, ",S=");
    if (s)
        return strtoull(s + 3, NULL, 10);
    char p[2000];
    struct stat st;
    mbox_path(mb, idx, p, sizeof(p));
    return stat(p, &st) == 0 ? (uint64_t)st.st_size : 0;
}

time_t
mbox_internaldate(const struct mbox *mb, size_t idx)
{
    const struct mbox_msg *m = &mb->msgs[idx];
    char p[2000];
    struct stat st;
    mbox_path(mb, idx, p, sizeof(p));
    if (stat(p, &st) == 0)
        return st.st_mtime;
    return (time_t)strtoll(m->base, NULL, 10);
}

/* Deliver-like: a new message into a folder (APPEND, COPY), with flags
 * and an internal date; its UID is the folder's next. */
int
mbox_add(const char *dir, const char *data, size_t len, unsigned flags, time_t date,
         uint32_t *uid_r, uint32_t *validity_r)
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
    struct mbox_msg *v;
    size_t n;
    uint32_t validity, next;
    if (load(dir, false, &v, &n, &validity, &next) < 0)
        return -1;
    *uid_r = 0;
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i].base, base) == 0)
            *uid_r = v[i].uid;
    *validity_r = validity;
    msgs_free(v, n);
    return *uid_r ? 0 : -1;
}

int
mbox_status(const char *dir, struct mbox_status *st)
{
    struct mbox_msg *v;
    size_t n;
    memset(st, 0, sizeof(*st));
    if (load(dir, false, &v, &n, &st->validity, &st->uidnext) < 0)
        return -1;
    st->messages = (uint32_t)n;
    for (size_t i = 0; i < n; i++) {
        if (!(v[i].flags & MF_SEEN))
            st->unseen++;
        if (v[i].in_new)
            st->recent++;
        st->size += strstr(v[i].name, ",S=") ? strtoull(strstr(v[i].name, ",S=") + 3, NULL, 10) : 0;
    }
    msgs_free(v, n);
    return 0;
}
