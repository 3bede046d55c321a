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
 * On disk, beside cur/ new/ tmp/: moat-uidlist (a snapshot: "V2 validity
 * uidnext modseq xfloor recentfloor", then "uid modseq flags kw base" per
 * message and "X uid modseq" per remembered expunge; V1 files of older
 * versions are read), moat-uidlist.log (what changed since, one line per
 * change, folded into the snapshot when it grows), dovecot-keywords, and
 * in the mailbox's top directory moat-uidvalidity, the last UIDVALIDITY
 * given out, so that a folder deleted and made again never gets one twice.
 * Changes made by others (the queue role delivering into new/, POP3, any
 * other program) are seen through inotify: an event that none of our own
 * changes explains marks the index for a rescan of the directory.
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
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "../common/util.h"
#include "store_private.h"
#include "imap_private.h"

#define UIDLIST "moat-uidlist"
#define UIDLOG "moat-uidlist.log"
#define KEYWORDS "dovecot-keywords"
#define VALIDITY "moat-uidvalidity"
#define MAX_MSGS 500000
#define XLOG_KEEP 20000         /* expunges remembered for QRESYNC */
#define CACHE_KEEP 32           /* indexes kept without a session */
#define LOG_FOLD 4000           /* log lines before the snapshot is rewritten */

struct irec {
    uint32_t uid;
    uint32_t kw;
    uint64_t modseq;
    uint64_t size;              /* 0: not known yet */
    int64_t date;               /* the internal date; -1: not known yet */
    char *name;                 /* the file's name; its base runs to ':' */
    uint32_t vrefs;             /* views holding it */
    uint8_t flags;
    bool in_new, expunged, mark;
};

struct xrec {
    uint32_t uid;
    uint64_t modseq;
};

struct folder_index {
    pthread_mutex_t lock;
    char dir[1200], root[1200];
    /* under the registry lock */
    unsigned refs;
    int wd[2];                  /* inotify: cur/ and new/; -1: not watched */
    double unused_since;
    struct folder_index *next;
    void *loop_data;            /* the IMAP sessions waiting on it (imap.c, on the loop) */
    /* atomics: events from inotify against the ones our changes make */
    int expected, dirty, queued, forgotten;
    unsigned long changes;
    /* under lock */
    bool loaded, gone, flags_known;
    uint32_t validity, uidnext, recent_floor;
    uint64_t modseq;
    struct irec *recs;          /* by UID; tombstones (expunged) too */
    size_t n, cap, tombs;
    char *kw[FOLDER_KEYWORDS_MAX];
    unsigned nkw;
    struct timespec kw_mtime;
    struct xrec *x;             /* expunges, oldest first */
    size_t nx, xcap;
    uint64_t xfloor;            /* expunges up to this modseq are not all in x */
    int logfd;
    size_t loglines;
    bool log_unsynced;
    struct timespec stamp[2];   /* unwatched: cur/ and new/ as of the last scan */
};

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct folder_index *indexes;
static int notify_fd = -1;
/* indexes changed since the loop last looked (folder_changed_take) */
static struct folder_index **changed;
static size_t nchanged, changed_cap;

static void index_unref(struct folder_index *ix);
static struct folder_index *index_try(const char *dir, bool *stale);

/* -------------------------------------------------------------- names */

static size_t
base_len(const char *name)
{
    return strcspn(name, ":");
}

static unsigned
info_flags(const char *name, uint32_t *kw_r)
{
    const char *info = strstr(name, ":2,");
    unsigned f = 0;
    uint32_t kw = 0;
    for (const char *p = info ? info + 3 : ""; *p; p++)
        switch (*p) {
        case 'D': f |= MF_DRAFT; break;
        case 'F': f |= MF_FLAGGED; break;
        case 'R': f |= MF_ANSWERED; break;
        case 'S': f |= MF_SEEN; break;
        case 'T': f |= MF_DELETED; break;
        default:
            if (*p >= 'a' && *p < 'a' + FOLDER_KEYWORDS_MAX)
                kw |= 1u << (*p - 'a');
            break;
        }
    if (kw_r)
        *kw_r = kw;
    return f;
}

unsigned
folder_flags_of(const char *name)
{
    return info_flags(name, NULL);
}

/* "base:2,LETTERS": the flags' letters and the keywords' (a-z), in ASCII
 * order as Maildir wants, and whatever other letters the old name had
 * (another program's flags, such as P for passed) kept. */
static int
name_with_flags(const char *old, unsigned f, uint32_t kw, char *out, size_t size)
{
    char letters[64];
    size_t o = 0;
    bool have[128] = { false };
    const char *info = strstr(old, ":2,");
    for (const char *p = info ? info + 3 : ""; *p && o < 40; p++) {
        unsigned char c = (unsigned char)*p;
        if (c < 128 && !strchr("DFRST", c) && !(c >= 'a' && c <= 'z') && c > ' ')
            have[c] = true;
    }
    if (f & MF_DRAFT) have['D'] = true;
    if (f & MF_FLAGGED) have['F'] = true;
    if (f & MF_ANSWERED) have['R'] = true;
    if (f & MF_SEEN) have['S'] = true;
    if (f & MF_DELETED) have['T'] = true;
    for (unsigned i = 0; i < FOLDER_KEYWORDS_MAX; i++)
        if (kw & (1u << i))
            have['a' + i] = true;
    for (int c = 33; c < 127 && o + 1 < sizeof(letters); c++)
        if (have[c] && c != ',' && c != '/' && c != ':')
            letters[o++] = (char)c;
    letters[o] = '\0';
    return str_fmt(out, size, "%.*s:2,%s", (int)base_len(old), old, letters);
}

static uint64_t
size_of_name(const char *name)
{
    const char *s = strstr(name, ",S=");
    if (s == NULL || s > name + base_len(name))
        return 0;
    return strtoull(s + 3, NULL, 10);
}

/* -------------------------------------------------------- UIDVALIDITY */

/* The next UIDVALIDITY of the mailbox: greater than every one it gave
 * before (moat-uidvalidity, under its lock), the time when that is more. */
static uint32_t
next_validity(const char *root)
{
    char path[1400];
    str_fmt(path, sizeof(path), "%s/%s", root, VALIDITY);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    uint32_t now = (uint32_t)time(NULL), v = now;
    if (fd < 0 || flock(fd, LOCK_EX) < 0) {
        log_warn("%s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return now;
    }
    char buf[32] = "";
    ssize_t r = pread(fd, buf, sizeof(buf) - 1, 0);
    if (r > 0) {
        buf[r] = '\0';
        unsigned long last = strtoul(buf, NULL, 10);
        if (last >= now && last < UINT32_MAX)
            v = (uint32_t)last + 1;
    }
    int n = snprintf(buf, sizeof(buf), "%lu\n", (unsigned long)v);
    if (ftruncate(fd, 0) < 0 || pwrite(fd, buf, (size_t)n, 0) != n || fdatasync(fd) < 0)
        log_warn("%s: %s", path, strerror(errno));
    close(fd);
    return v;
}

/* Remember a validity found in a folder (an old one, made before the
 * counter): the counter never hands it out again. */
static void
note_validity(const char *root, uint32_t seen)
{
    char path[1400], buf[32] = "";
    str_fmt(path, sizeof(path), "%s/%s", root, VALIDITY);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    if (flock(fd, LOCK_EX) == 0) {
        ssize_t r = pread(fd, buf, sizeof(buf) - 1, 0);
        unsigned long last = r > 0 ? (buf[r] = '\0', strtoul(buf, NULL, 10)) : 0;
        if (seen > last) {
            int n = snprintf(buf, sizeof(buf), "%lu\n", (unsigned long)seen);
            if (ftruncate(fd, 0) < 0 || pwrite(fd, buf, (size_t)n, 0) != n)
                log_warn("%s: %s", path, strerror(errno));
        }
    }
    close(fd);
}

/* ------------------------------------------------------------ records */

static struct irec *
find(struct folder_index *ix, uint32_t uid)
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
static struct irec *
rec_add(struct folder_index *ix, uint32_t uid)
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
static void
purge(struct folder_index *ix, bool now)
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

static void
xlog_add(struct folder_index *ix, uint32_t uid, uint64_t modseq)
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

static void
mark_changed(struct folder_index *ix)
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

/* ---------------------------------------------------------- keywords */

static void
keywords_read(struct folder_index *ix)
{
    char path[1400], line[300];
    struct stat st;
    str_fmt(path, sizeof(path), "%s/%s", ix->dir, KEYWORDS);
    if (stat(path, &st) < 0) {
        return;
    }
    if (st.st_mtim.tv_sec == ix->kw_mtime.tv_sec && st.st_mtim.tv_nsec == ix->kw_mtime.tv_nsec)
        return;
    ix->kw_mtime = st.st_mtim;
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return;
    while (fgets(line, sizeof(line), f)) {
        char *end;
        unsigned long k = strtoul(line, &end, 10);
        if (end == line || *end != ' ' || k >= FOLDER_KEYWORDS_MAX)
            continue;
        char *name = end + 1;
        name[strcspn(name, "\r\n")] = '\0';
        if (name[0] == '\0' || ix->kw[k])
            continue;
        ix->kw[k] = xstrdup(name);
        if (k + 1 > ix->nkw)
            ix->nkw = (unsigned)k + 1;
    }
    fclose(f);
}

static int
keywords_write(struct folder_index *ix)
{
    char path[1400], tmp[1500];
    str_fmt(path, sizeof(path), "%s/%s", ix->dir, KEYWORDS);
    str_fmt(tmp, sizeof(tmp), "%s.%d.tmp", path, (int)gettid());
    FILE *f = fopen(tmp, "we");
    if (f == NULL)
        return -1;
    for (unsigned i = 0; i < ix->nkw; i++)
        if (ix->kw[i])
            fprintf(f, "%u %s\n", i, ix->kw[i]);
    int rc = fflush(f) == 0 && fdatasync(fileno(f)) == 0 ? 0 : -1;
    fclose(f);
    if (rc == 0)
        rc = rename(tmp, path);
    if (rc < 0)
        unlink(tmp);
    struct stat st;
    if (rc == 0 && stat(path, &st) == 0)
        ix->kw_mtime = st.st_mtim;
    return rc;
}

/* The keyword's number, made when create is set and there is room; -1. */
static int
keyword_index(struct folder_index *ix, const char *name, bool create)
{
    for (unsigned i = 0; i < ix->nkw; i++)
        if (ix->kw[i] && strcasecmp(ix->kw[i], name) == 0)
            return (int)i;
    if (!create || ix->nkw >= FOLDER_KEYWORDS_MAX)
        return -1;
    ix->kw[ix->nkw++] = xstrdup(name);
    if (keywords_write(ix) < 0) {
        log_warn("%s/%s: %s", ix->dir, KEYWORDS, strerror(errno));
        free(ix->kw[--ix->nkw]);
        ix->kw[ix->nkw] = NULL;
        return -1;
    }
    return (int)ix->nkw - 1;
}

/* ---------------------------------------------------- snapshot and log */

static void
log_line(struct folder_index *ix, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
log_line(struct folder_index *ix, const char *fmt, ...)
{
    if (ix->logfd < 0) {
        char path[1400];
        str_fmt(path, sizeof(path), "%s/%s", ix->dir, UIDLOG);
        ix->logfd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
        if (ix->logfd < 0) {
            log_warn("%s: %s", path, strerror(errno));
            return;
        }
    }
    char buf[800];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n <= 0 || (size_t)n >= sizeof(buf))
        return;
    if (write_full(ix->logfd, buf, (size_t)n) < 0)
        log_warn("%s/%s: %s", ix->dir, UIDLOG, strerror(errno));
    ix->loglines++;
    ix->log_unsynced = true;
}

/* Write the whole index as the snapshot and empty the log. */
static int
snapshot_write(struct folder_index *ix)
{
    char path[1400], tmp[1500];
    str_fmt(path, sizeof(path), "%s/%s", ix->dir, UIDLIST);
    str_fmt(tmp, sizeof(tmp), "%s.%d.tmp", path, (int)gettid());
    FILE *f = fopen(tmp, "we");
    if (f == NULL)
        return -1;
    fprintf(f, "V2 %lu %lu %llu %llu %lu\n", (unsigned long)ix->validity,
            (unsigned long)ix->uidnext, (unsigned long long)ix->modseq,
            (unsigned long long)ix->xfloor, (unsigned long)ix->recent_floor);
    for (size_t i = 0; i < ix->n; i++) {
        const struct irec *r = &ix->recs[i];
        if (!r->expunged)
            fprintf(f, "%lu %llu %u %x %.*s\n", (unsigned long)r->uid,
                    (unsigned long long)r->modseq, r->flags, r->kw, (int)base_len(r->name), r->name);
    }
    for (size_t i = 0; i < ix->nx; i++)
        fprintf(f, "X %lu %llu\n", (unsigned long)ix->x[i].uid, (unsigned long long)ix->x[i].modseq);
    int rc = fflush(f) == 0 && fdatasync(fileno(f)) == 0 ? 0 : -1;
    fclose(f);
    if (rc == 0)
        rc = rename(tmp, path);
    if (rc < 0) {
        unlink(tmp);
        return -1;
    }
    fsync_dir(ix->dir);
    char logp[1400];
    str_fmt(logp, sizeof(logp), "%s/%s", ix->dir, UIDLOG);
    if (ix->logfd >= 0) {
        close(ix->logfd);
        ix->logfd = -1;
    }
    unlink(logp);
    ix->loglines = 0;
    ix->log_unsynced = false;
    return 0;
}

/* The log is made durable: UIDs given out must never be given again. */
static void
log_sync(struct folder_index *ix)
{
    if (ix->log_unsynced && ix->logfd >= 0 && fdatasync(ix->logfd) == 0)
        ix->log_unsynced = false;
}

static int
rec_uid_cmp(const void *a, const void *b)
{
    const struct irec *x = a, *y = b;
    return x->uid < y->uid ? -1 : x->uid > y->uid;
}

/* A message named by the snapshot or the log, before the directory is
 * read: its base as its name for now. */
static void
loaded_rec(struct folder_index *ix, uint32_t uid, uint64_t modseq, unsigned flags, uint32_t kw,
           const char *base)
{
    struct irec *r = rec_add(ix, uid);
    r->modseq = modseq;
    r->flags = (uint8_t)flags;
    r->kw = kw;
    r->name = xstrdup(base);
    r->mark = false;
}

/* moat-uidlist and moat-uidlist.log into the index. */
static void
read_state(struct folder_index *ix)
{
    char path[1400], line[700];
    str_fmt(path, sizeof(path), "%s/%s", ix->dir, UIDLIST);
    ix->flags_known = true;
    FILE *f = fopen(path, "re");
    if (f && fgets(line, sizeof(line), f)) {
        unsigned long v, nx, rf = 0;
        unsigned long long ms = 0, xf = 0;
        if (sscanf(line, "V2 %lu %lu %llu %llu %lu", &v, &nx, &ms, &xf, &rf) == 5 && v && nx) {
            ix->validity = (uint32_t)v;
            ix->uidnext = (uint32_t)nx;
            ix->modseq = ms;
            ix->xfloor = xf;
            ix->recent_floor = (uint32_t)rf;
            while (fgets(line, sizeof(line), f)) {
                unsigned long uid;
                unsigned long long m;
                unsigned fl, kw;
                char base[600];
                if (line[0] == 'X') {
                    if (sscanf(line, "X %lu %llu", &uid, &m) == 2)
                        xlog_add(ix, (uint32_t)uid, m);
                } else if (sscanf(line, "%lu %llu %u %x %599s", &uid, &m, &fl, &kw, base) == 5 &&
                           uid > 0 && uid < ix->uidnext && ix->n < MAX_MSGS) {
                    loaded_rec(ix, (uint32_t)uid, m, fl & MF_DISK, kw, base);
                }
            }
        } else if (sscanf(line, "V1 %lu %lu", &v, &nx) == 2 && v && nx) {
            /* an older version's: no modseqs, no flags (they are read from
             * the names, as they are, without counting as changes) */
            ix->validity = (uint32_t)v;
            ix->uidnext = (uint32_t)nx;
            ix->modseq = 1;
            ix->xfloor = 1;
            ix->recent_floor = (uint32_t)nx;
            ix->flags_known = false;
            while (fgets(line, sizeof(line), f)) {
                unsigned long uid;
                char base[600];
                if (sscanf(line, "%lu %599s", &uid, base) == 2 && uid > 0 && uid < ix->uidnext &&
                    ix->n < MAX_MSGS)
                    loaded_rec(ix, (uint32_t)uid, 1, 0, 0, base);
            }
        }
    }
    if (f)
        fclose(f);
    if (ix->n > 1)
        qsort(ix->recs, ix->n, sizeof(*ix->recs), rec_uid_cmp);
    /* the log after it */
    str_fmt(path, sizeof(path), "%s/%s", ix->dir, UIDLOG);
    f = ix->validity ? fopen(path, "re") : NULL;
    while (f && fgets(line, sizeof(line), f)) {
        unsigned long uid, rf;
        unsigned long long m;
        unsigned fl, kw;
        char base[600];
        struct irec *r;
        ix->loglines++;
        if (line[strlen(line) - 1] != '\n')
            break;              /* a line cut short by a crash */
        if (sscanf(line, "A %lu %llu %u %x %599s", &uid, &m, &fl, &kw, base) == 5) {
            if (uid >= ix->uidnext && ix->n < MAX_MSGS) {
                loaded_rec(ix, (uint32_t)uid, m, fl & MF_DISK, kw, base);
                ix->uidnext = (uint32_t)uid + 1;
            }
        } else if (sscanf(line, "M %lu %llu %u %x", &uid, &m, &fl, &kw) == 4) {
            if ((r = find(ix, (uint32_t)uid)) != NULL) {
                r->modseq = m;
                r->flags = (uint8_t)(fl & MF_DISK);
                r->kw = kw;
            }
        } else if (sscanf(line, "X %lu %llu", &uid, &m) == 2) {
            if ((r = find(ix, (uint32_t)uid)) != NULL && !r->expunged) {
                r->expunged = true;
                ix->tombs++;
            }
            xlog_add(ix, (uint32_t)uid, m);
        } else if (sscanf(line, "R %lu", &rf) == 1) {
            ix->recent_floor = (uint32_t)rf;
            continue;
        } else {
            continue;
        }
        if (m > ix->modseq)
            ix->modseq = m;
    }
    if (f)
        fclose(f);
    purge(ix, true);
}

/* ------------------------------------------------------------ the scan */

struct ondisk {
    char *name;
    bool in_new;
};

static int
ondisk_cmp(const void *a, const void *b)
{
    const struct ondisk *x = a, *y = b;
    size_t lx = base_len(x->name), ly = base_len(y->name);
    int c = strncmp(x->name, y->name, lx < ly ? lx : ly);
    return c ? c : lx < ly ? -1 : lx > ly;
}

struct byname {
    const char *name;
    size_t i;
};

static int
byname_cmp(const void *a, const void *b)
{
    const struct byname *x = a, *y = b;
    size_t lx = base_len(x->name), ly = base_len(y->name);
    int c = strncmp(x->name, y->name, lx < ly ? lx : ly);
    return c ? c : lx < ly ? -1 : lx > ly;
}

static void
stamps(const char *dir, struct timespec st[2])
{
    for (int i = 0; i < 2; i++) {
        char p[1400];
        struct stat sb;
        str_fmt(p, sizeof(p), "%s/%s", dir, i ? "new" : "cur");
        st[i] = stat(p, &sb) == 0 ? sb.st_mtim : (struct timespec){ 0, 0 };
    }
}

/* Read cur/ and new/ and bring the index up to them: files that came get
 * the next UIDs (in delivery order: Maildir names start with the time),
 * files that went are expunged, names that changed give new flags. Under
 * the lock. -1 when the folder is gone. */
static int
rescan(struct folder_index *ix)
{
    struct ondisk *v = NULL;
    size_t nv = 0, cap = 0;
    __atomic_store_n(&ix->dirty, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&ix->expected, 0, __ATOMIC_RELEASE);
    stamps(ix->dir, ix->stamp);
    bool any_dir = false;
    for (int pass = 0; pass < 2; pass++) {
        char sub[1400];
        str_fmt(sub, sizeof(sub), "%s/%s", ix->dir, pass ? "new" : "cur");
        DIR *d = opendir(sub);
        if (d == NULL)
            continue;
        any_dir = true;
        for (struct dirent *e; (e = readdir(d)) != NULL && nv < MAX_MSGS;) {
            if (e->d_name[0] == '.')
                continue;
            if (nv == cap) {
                cap = cap ? cap * 2 : 256;
                v = xrealloc(v, cap * sizeof(*v));
            }
            v[nv].name = xstrdup(e->d_name);
            v[nv].in_new = pass == 1;
            nv++;
        }
        closedir(d);
    }
    if (!any_dir) {
        free(v);
        ix->gone = true;
        return -1;
    }
    keywords_read(ix);
    if (nv > 1)
        qsort(v, nv, sizeof(*v), ondisk_cmp);
    /* the live records by base */
    struct byname *live = xcalloc(ix->n ? ix->n : 1, sizeof(*live));
    size_t nl = 0;
    for (size_t i = 0; i < ix->n; i++) {
        ix->recs[i].mark = false;
        if (!ix->recs[i].expunged)
            live[nl++] = (struct byname){ ix->recs[i].name, i };
    }
    if (nl > 1)
        qsort(live, nl, sizeof(*live), byname_cmp);
    size_t *fresh = xcalloc(nv ? nv : 1, sizeof(size_t)), nfresh = 0;
    size_t li = 0;
    bool changed_any = false;
    for (size_t i = 0; i < nv; i++) {
        if (i > 0 && ondisk_cmp(&v[i - 1], &v[i]) == 0)
            continue;           /* the same message in new/ and cur/: once */
        struct byname key = { v[i].name, 0 };
        while (li < nl && byname_cmp(&live[li], &key) < 0)
            li++;
        if (li < nl && byname_cmp(&live[li], &key) == 0) {
            struct irec *r = &ix->recs[live[li].i];
            r->mark = true;
            if (strcmp(r->name, v[i].name) != 0 || r->in_new != v[i].in_new) {
                uint32_t kw;
                unsigned f = info_flags(v[i].name, &kw);
                if (v[i].in_new && !strstr(v[i].name, ":2,")) {
                    f = r->flags;   /* a name without flags says none */
                    kw = r->kw;
                }
                free(r->name);
                r->name = xstrdup(v[i].name);
                r->in_new = v[i].in_new;
                if (f != r->flags || kw != r->kw) {
                    r->flags = (uint8_t)f;
                    r->kw = kw;
                    if (ix->flags_known) {
                        r->modseq = ++ix->modseq;
                        log_line(ix, "M %lu %llu %u %x\n", (unsigned long)r->uid,
                                 (unsigned long long)r->modseq, r->flags, r->kw);
                        changed_any = true;
                    }
                }
            }
            li++;
        } else {
            fresh[nfresh++] = i;
        }
    }
    free(live);
    /* gone */
    for (size_t i = 0; i < ix->n; i++) {
        struct irec *r = &ix->recs[i];
        if (r->expunged || r->mark)
            continue;
        r->expunged = true;
        ix->tombs++;
        r->modseq = ++ix->modseq;
        xlog_add(ix, r->uid, r->modseq);
        log_line(ix, "X %lu %llu\n", (unsigned long)r->uid, (unsigned long long)r->modseq);
        changed_any = true;
    }
    /* came: the next UIDs */
    for (size_t k = 0; k < nfresh && ix->n < MAX_MSGS; k++) {
        struct ondisk *d = &v[fresh[k]];
        struct irec *r = rec_add(ix, ix->uidnext++);
        r->name = xstrdup(d->name);
        r->in_new = d->in_new;
        r->flags = (uint8_t)info_flags(r->name, &r->kw);
        r->modseq = ++ix->modseq;
        log_line(ix, "A %lu %llu %u %x %.*s\n", (unsigned long)r->uid,
                 (unsigned long long)r->modseq, r->flags, r->kw, (int)base_len(r->name), r->name);
        changed_any = true;
    }
    ix->flags_known = true;
    free(fresh);
    for (size_t i = 0; i < nv; i++)
        free(v[i].name);
    free(v);
    if (changed_any) {
        log_sync(ix);
        mark_changed(ix);
    }
    return 0;
}

/* Bring the index up to the directory if something other than our own
 * changes touched it. Under the lock. */
static int
refresh(struct folder_index *ix)
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
        stamps(ix->dir, st);
        if (memcmp(st, ix->stamp, sizeof(st)) == 0 &&
            !__atomic_load_n(&ix->dirty, __ATOMIC_ACQUIRE))
            return 0;
    }
    return rescan(ix);
}

/* Our own change of a file: the inotify events it makes are expected. */
static void
expect(struct folder_index *ix, int events)
{
    __atomic_add_fetch(&ix->expected, events, __ATOMIC_ACQ_REL);
}

/* After our own renames the directories' times moved: an unwatched
 * index takes them as its own (anything else at the same moment is seen
 * by the next rescan, which a failed rename asks for). */
static void
own_stamp(struct folder_index *ix)
{
    stamps(ix->dir, ix->stamp);
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

static void
index_unref(struct folder_index *ix)
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
static struct folder_index *
index_get(const char *dir)
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
            index_unref(ix);
            return NULL;
        }
        pthread_mutex_lock(&reg_lock);
        watch(ix);              /* before the scan: nothing falls between */
        pthread_mutex_unlock(&reg_lock);
        read_state(ix);
        bool fresh = ix->validity == 0;
        if (fresh) {
            ix->validity = next_validity(ix->root);
            ix->uidnext = 1;
            ix->modseq = 1;
            ix->xfloor = 1;
            ix->recent_floor = 1;
        } else {
            note_validity(ix->root, ix->validity);
        }
        if (rescan(ix) == 0) {
            /* what is in new/ no session has seen */
            for (size_t i = 0; i < ix->n; i++)
                if (!ix->recs[i].expunged && ix->recs[i].in_new && ix->recs[i].uid < ix->recent_floor)
                    ix->recent_floor = ix->recs[i].uid;
            if (fresh || ix->loglines > 0 || !ix->flags_known)
                snapshot_write(ix);
            ix->loaded = true;
        }
    }
    bool ok = ix->loaded && !ix->gone;
    *stale = ix->loaded && ix->gone;
    pthread_mutex_unlock(&ix->lock);
    if (!ok) {
        index_unref(ix);
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
    memcpy(out, changed, k * sizeof(*out));
    memmove(changed, changed + k, (nchanged - k) * sizeof(*changed));
    nchanged -= k;
    for (size_t i = 0; i < k; i++)
        __atomic_store_n(&out[i]->queued, 0, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&reg_lock);
    return k;
}

void
folder_index_release(struct folder_index *ix)
{
    index_unref(ix);
}

void **
folder_index_loop_data(struct folder_index *ix)
{
    return &ix->loop_data;
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
    bool claim = !v->readonly && ix->recent_floor < ix->uidnext;
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
        if (r->uid < v->next_uid || r->expunged)
            continue;
        view_push(v, r->uid);
        r->vrefs++;
        came++;
        if (claim && r->uid >= ix->recent_floor) {
            recent_push(v, r->uid);
            if (r->in_new) {
                char from[1600], to[1600], nn[600];
                if (name_with_flags(r->name, r->flags, r->kw, nn, sizeof(nn)) == 0) {
                    str_fmt(from, sizeof(from), "%s/new/%s", ix->dir, r->name);
                    str_fmt(to, sizeof(to), "%s/cur/%s", ix->dir, nn);
                    expect(ix, 2);
                    if (rename(from, to) == 0) {
                        free(r->name);
                        r->name = xstrdup(nn);
                        r->in_new = false;
                    } else {
                        expect(ix, -2);
                    }
                }
            }
        }
    }
    if (claim) {
        ix->recent_floor = ix->uidnext;
        log_line(ix, "R %lu\n", (unsigned long)ix->recent_floor);
        own_stamp(ix);
    }
    v->next_uid = ix->uidnext;
    return came;
}

struct folder *
folder_open(const char *dir, bool readonly)
{
    struct folder_index *ix = index_get(dir);
    if (ix == NULL)
        return NULL;
    struct folder *v = xcalloc(1, sizeof(*v));
    v->ix = ix;
    v->readonly = readonly;
    pthread_mutex_lock(&ix->lock);
    refresh(ix);
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
        struct irec *r = find(ix, v->uids[i]);
        if (r && r->vrefs)
            r->vrefs--;
    }
    purge(ix, false);
    pthread_mutex_unlock(&ix->lock);
    index_unref(ix);
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
    m->size = r->size ? r->size : size_of_name(r->name);
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
    const struct irec *r = find(ix, v->uids[i]);
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
    struct irec *r = find(ix, m->uid);
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
    int k = keyword_index(ix, name, create);
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
        struct irec *r = i < v->n ? find(ix, v->uids[i]) : NULL;
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
        if (name_with_flags(r->name, nf, nk, nn, sizeof(nn)) < 0) {
            rc = -1;
            break;
        }
        str_fmt(from, sizeof(from), "%s/%s/%s", ix->dir, r->in_new ? "new" : "cur", r->name);
        str_fmt(to, sizeof(to), "%s/cur/%s", ix->dir, nn);
        expect(ix, 2);
        if (rename(from, to) < 0) {
            expect(ix, -2);
            if (errno == ENOENT && attempt == 0) {
                rescan(ix);     /* another program moved it: as it is now */
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
        log_line(ix, "M %lu %llu %u %x\n", (unsigned long)r->uid, (unsigned long long)r->modseq,
                 r->flags, r->kw);
        own_stamp(ix);
        mark_changed(ix);
        if (told)
            told_push(v, r->uid, r->modseq);
        copy_out(v, r, out);
        break;
    }
    if (ix->loglines > LOG_FOLD + ix->n)
        snapshot_write(ix);
    pthread_mutex_unlock(&ix->lock);
    return rc;
}

int
folder_expunge(struct folder *v, size_t i, uint64_t *bytes_r)
{
    struct folder_index *ix = v->ix;
    pthread_mutex_lock(&ix->lock);
    struct irec *r = i < v->n ? find(ix, v->uids[i]) : NULL;
    int rc = -1;
    if (r && !r->expunged) {
        char path[1600];
        str_fmt(path, sizeof(path), "%s/%s/%s", ix->dir, r->in_new ? "new" : "cur", r->name);
        expect(ix, 1);
        if (unlink(path) == 0 || errno == ENOENT) {
            if (errno == ENOENT)
                expect(ix, -1);
            *bytes_r = r->size ? r->size : size_of_name(r->name);
            r->expunged = true;
            ix->tombs++;
            r->modseq = ++ix->modseq;
            xlog_add(ix, r->uid, r->modseq);
            log_line(ix, "X %lu %llu\n", (unsigned long)r->uid, (unsigned long long)r->modseq);
            own_stamp(ix);
            mark_changed(ix);
            rc = 0;
        } else {
            expect(ix, -1);
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
    purge(ix, false);
    if (ix->loglines > LOG_FOLD + ix->n)
        snapshot_write(ix);
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
    if (refresh(ix) < 0 || ix->gone) {
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
    purge(ix, false);
    log_sync(ix);
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
            struct irec *r = find(ix, ix->x[i].uid);
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
                struct irec *r = find(ix, (uint32_t)uid);
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
    struct folder_index *ix = index_get(dir);
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
    struct irec *r = find(sx, m.uid);
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
    refresh(ix);
    int rc = 0;
    size_t done = 0;
    for (size_t k = 0; k < a->n && rc == 0; k++) {
        struct add_item *it = &a->v[k];
        uint32_t kw = 0;
        for (size_t j = 0; j < it->nkws; j++) {
            int b = keyword_index(ix, it->kws[j], true);
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
        if (name_with_flags(it->base, it->flags, kw, nn, sizeof(nn)) < 0) {
            rc = -1;
            break;
        }
        str_fmt(to, sizeof(to), "%s/cur/%s", ix->dir, nn);
        expect(ix, 1);
        if (rename(it->tmp, to) < 0) {
            expect(ix, -1);
            rc = -1;
            break;
        }
        it->tmp[0] = '\0';
        struct irec *r = rec_add(ix, ix->uidnext++);
        r->name = xstrdup(nn);
        r->flags = (uint8_t)it->flags;
        r->kw = kw;
        r->size = it->size;
        r->modseq = ++ix->modseq;
        log_line(ix, "A %lu %llu %u %x %s\n", (unsigned long)r->uid, (unsigned long long)r->modseq,
                 r->flags, r->kw, it->base);
        uids[k] = r->uid;
        done++;
    }
    if (rc < 0) {
        /* all or nothing (MULTIAPPEND, COPY): the ones in take it back */
        int e = errno;
        for (size_t k = 0; k < done; k++) {
            struct irec *r = find(ix, uids[k]);
            char p[1600];
            str_fmt(p, sizeof(p), "%s/cur/%s", ix->dir, r->name);
            expect(ix, 1);
            if (unlink(p) < 0)
                expect(ix, -1);
            r->expunged = true;
            ix->tombs++;
            r->modseq = ++ix->modseq;
            xlog_add(ix, r->uid, r->modseq);
            log_line(ix, "X %lu %llu\n", (unsigned long)r->uid, (unsigned long long)r->modseq);
        }
        errno = e;
    }
    if (done)
        mark_changed(ix);
    own_stamp(ix);
    *validity_r = ix->validity;
    if (ix->loglines > LOG_FOLD + ix->n)
        snapshot_write(ix);
    log_sync(ix);
    pthread_mutex_unlock(&ix->lock);
    if (rc == 0) {
        char cur[1400];
        str_fmt(cur, sizeof(cur), "%s/cur", ix->dir);
        fsync_dir(cur);
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
    index_unref(a->ix);
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
    struct folder_index *ix = index_get(dir);
    if (ix == NULL)
        return -1;
    pthread_mutex_lock(&ix->lock);
    refresh(ix);
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
        st->size += r->size ? r->size : size_of_name(r->name);
    }
    pthread_mutex_unlock(&ix->lock);
    index_unref(ix);
    return 0;
}
