/*
 * folder_disk.c -- a folder's index on disk (folder.c keeps it in memory):
 * the Maildir names (":2," with the flags' letters and the keywords' a-z,
 * other programs' letters kept), UIDVALIDITY given out once per mailbox
 * (moat-uidvalidity), the keyword names (dovecot-keywords, Dovecot's
 * format), the snapshot (moat-uidlist) and the log of changes since
 * (moat-uidlist.log), loading them, and the scan that brings the index up
 * to the directory when other programs changed it.
 *
 * The log is written as changes happen and made durable (fdatasync)
 * before new UIDs are told: a UID is never given twice. A crash of the
 * machine may lose the last flag modseqs and \Recent floor of the log;
 * the next scan sees the flags in the names and gives them new ones, and
 * the last messages are \Recent once more.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "../common/util.h"
#include "store_private.h"
#include "imap_private.h"
#include "folder_private.h"

#define UIDLIST "moat-uidlist"
#define UIDLOG "moat-uidlist.log"
#define KEYWORDS "dovecot-keywords"
#define VALIDITY "moat-uidvalidity"

/* -------------------------------------------------------------- names */

size_t
folder_disk_base_len(const char *name)
{
    return strcspn(name, ":");
}

unsigned
folder_disk_flags(const char *name, uint32_t *kw_r)
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
    return folder_disk_flags(name, NULL);
}

/* "base:2,LETTERS": the flags' letters and the keywords' (a-z), in ASCII
 * order as Maildir wants, and whatever other letters the old name had
 * (another program's flags, such as P for passed) kept. */
int
folder_disk_name(const char *old, unsigned f, uint32_t kw, char *out, size_t size)
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
    return str_fmt(out, size, "%.*s:2,%s", (int)folder_disk_base_len(old), old, letters);
}

uint64_t
folder_disk_size(const char *name)
{
    const char *s = strstr(name, ",S=");
    if (s == NULL || s > name + folder_disk_base_len(name))
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

static int
keyword_find(const struct folder_index *ix, const char *name)
{
    for (unsigned i = 0; i < ix->nkw; i++)
        if (ix->kw[i] && strcasecmp(ix->kw[i], name) == 0)
            return (int)i;
    return -1;
}

/* Adding a name to dovecot-keywords is done under the folder directory's
 * flock, after reading the file again: the store role and deliveries
 * (folder_disk_keyword_letters, a Sieve script's keywords) both add. */
static int
keywords_lock(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0 && flock(fd, LOCK_EX) < 0) {
        close(fd);
        fd = -1;
    }
    if (fd < 0)
        log_warn("%s: lock for %s: %s", dir, KEYWORDS, strerror(errno));
    return fd;
}

/* The keyword's number, made when create is set and there is room; -1. */
int
folder_disk_keyword(struct folder_index *ix, const char *name, bool create)
{
    int k = keyword_find(ix, name);
    if (k >= 0 || !create)
        return k;
    int lock = keywords_lock(ix->dir);
    if (lock < 0)
        return -1;
    keywords_read(ix);
    k = keyword_find(ix, name);
    if (k < 0 && ix->nkw < FOLDER_KEYWORDS_MAX) {
        ix->kw[ix->nkw++] = xstrdup(name);
        k = (int)ix->nkw - 1;
        if (keywords_write(ix) < 0) {
            log_warn("%s/%s: %s", ix->dir, KEYWORDS, strerror(errno));
            free(ix->kw[--ix->nkw]);
            ix->kw[ix->nkw] = NULL;
            k = -1;
        }
    }
    close(lock);
    return k;
}

void
folder_disk_keyword_letters(const char *dir, const char *names, char *out, size_t size)
{
    struct folder_index *ix = xcalloc(1, sizeof(*ix));
    str_copy(ix->dir, dir, sizeof(ix->dir));
    ix->logfd = -1;
    keywords_read(ix);
    uint32_t kw = 0;
    for (const char *p = names; *p;) {
        while (*p == ' ')
            p++;
        size_t n = strcspn(p, " ");
        if (n > 0 && n < FOLDER_KEYWORD_LEN) {
            char name[FOLDER_KEYWORD_LEN];
            memcpy(name, p, n);
            name[n] = '\0';
            int k = folder_disk_keyword(ix, name, true);
            if (k >= 0)
                kw |= 1u << k;
        }
        p += n;
    }
    size_t o = 0;
    for (unsigned i = 0; i < FOLDER_KEYWORDS_MAX && o + 1 < size; i++)
        if (kw & (1u << i))
            out[o++] = (char)('a' + i);
    if (size)
        out[o] = '\0';
    for (unsigned i = 0; i < FOLDER_KEYWORDS_MAX; i++)
        free(ix->kw[i]);
    free(ix);
}

/* ---------------------------------------------------- snapshot and log */

void
folder_disk_log(struct folder_index *ix, const char *fmt, ...)
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
int
folder_disk_snapshot(struct folder_index *ix)
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
                    (unsigned long long)r->modseq, r->flags, r->kw, (int)folder_disk_base_len(r->name), r->name);
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
void
folder_disk_log_sync(struct folder_index *ix)
{
    if (ix->log_unsynced && ix->logfd >= 0 && fdatasync(ix->logfd) == 0)
        ix->log_unsynced = false;
}

void
folder_disk_durable(struct folder_index *ix, uint32_t upto)
{
    pthread_mutex_lock(&ix->sync_lock);
    if (ix->synced_upto < upto) {
        /* everything added before this point is in the log and in cur/:
         * one sync covers it, for the sessions queued behind this one too */
        pthread_mutex_lock(&ix->lock);
        uint32_t target = ix->uidnext;
        int fd = ix->logfd >= 0 && ix->log_unsynced ? dup(ix->logfd) : -1;
        if (fd >= 0)
            ix->log_unsynced = false;
        pthread_mutex_unlock(&ix->lock);
        /* a log folded into the snapshot meanwhile was synced by it */
        if (fd >= 0) {
            if (fdatasync(fd) < 0)
                log_warn("%s/%s: fdatasync: %s", ix->dir, UIDLOG, strerror(errno));
            close(fd);
        }
        char cur[1400];
        str_fmt(cur, sizeof(cur), "%s/cur", ix->dir);
        if (fsync_dir(cur) < 0)
            log_warn("%s: fsync: %s", cur, strerror(errno));
        ix->synced_upto = target;
    }
    pthread_mutex_unlock(&ix->sync_lock);
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
    struct irec *r = folder_rec_add(ix, uid);
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
                        folder_xlog_add(ix, (uint32_t)uid, m);
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
            if ((r = folder_rec_find(ix, (uint32_t)uid)) != NULL) {
                r->modseq = m;
                r->flags = (uint8_t)(fl & MF_DISK);
                r->kw = kw;
            }
        } else if (sscanf(line, "X %lu %llu", &uid, &m) == 2) {
            if ((r = folder_rec_find(ix, (uint32_t)uid)) != NULL && !r->expunged) {
                r->expunged = true;
                ix->tombs++;
            }
            folder_xlog_add(ix, (uint32_t)uid, m);
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
    folder_purge(ix, true);
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
    size_t lx = folder_disk_base_len(x->name), ly = folder_disk_base_len(y->name);
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
    size_t lx = folder_disk_base_len(x->name), ly = folder_disk_base_len(y->name);
    int c = strncmp(x->name, y->name, lx < ly ? lx : ly);
    return c ? c : lx < ly ? -1 : lx > ly;
}

void
folder_disk_stamps(const char *dir, struct timespec st[2])
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
int
folder_disk_rescan(struct folder_index *ix)
{
    struct ondisk *v = NULL;
    size_t nv = 0, cap = 0;
    __atomic_store_n(&ix->dirty, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&ix->expected, 0, __ATOMIC_RELEASE);
    folder_disk_stamps(ix->dir, ix->stamp);
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
                unsigned f = folder_disk_flags(v[i].name, &kw);
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
                        folder_disk_log(ix, "M %lu %llu %u %x\n", (unsigned long)r->uid,
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
        folder_xlog_add(ix, r->uid, r->modseq);
        folder_disk_log(ix, "X %lu %llu\n", (unsigned long)r->uid, (unsigned long long)r->modseq);
        changed_any = true;
    }
    /* came: the next UIDs */
    for (size_t k = 0; k < nfresh && ix->n < MAX_MSGS; k++) {
        struct ondisk *d = &v[fresh[k]];
        struct irec *r = folder_rec_add(ix, ix->uidnext++);
        r->name = xstrdup(d->name);
        r->in_new = d->in_new;
        r->flags = (uint8_t)folder_disk_flags(r->name, &r->kw);
        r->modseq = ++ix->modseq;
        folder_disk_log(ix, "A %lu %llu %u %x %.*s\n", (unsigned long)r->uid,
                 (unsigned long long)r->modseq, r->flags, r->kw, (int)folder_disk_base_len(r->name), r->name);
        changed_any = true;
    }
    ix->flags_known = true;
    free(fresh);
    for (size_t i = 0; i < nv; i++)
        free(v[i].name);
    free(v);
    if (changed_any) {
        folder_disk_log_sync(ix);
        folder_mark_changed(ix);
    }
    return 0;
}


/* ------------------------------------------------------------- loading */

int
folder_disk_load(struct folder_index *ix)
{
    read_state(ix);
    bool fresh = ix->validity == 0, v1 = !ix->flags_known;
    if (fresh) {
        ix->validity = next_validity(ix->root);
        ix->uidnext = 1;
        ix->modseq = 1;
        ix->xfloor = 1;
        ix->recent_floor = 1;
    } else {
        note_validity(ix->root, ix->validity);
    }
    if (folder_disk_rescan(ix) < 0)
        return -1;
    /* an older index kept no \Recent floor: what is in new/ no session has
     * seen. A V2 index has its floor (a message a session was told of
     * stays in new/ and is not \Recent again after a restart) */
    for (size_t i = 0; v1 && i < ix->n; i++)
        if (!ix->recs[i].expunged && ix->recs[i].in_new && ix->recs[i].uid < ix->recent_floor)
            ix->recent_floor = ix->recs[i].uid;
    if (fresh || v1 || ix->loglines > 0)
        folder_disk_snapshot(ix);
    return 0;
}
