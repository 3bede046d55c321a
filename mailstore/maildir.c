/*
 * maildir.c -- the Maildir++ store: paths, new mailboxes with their special
 * folders, delivery (tmp -> fsync -> new -> fsync of the directory), and
 * the quota kept in maildirsize. Every folder counts, Trash too (Maildir++
 * leaves Trash out; here a copy into Trash must not be a way past the
 * quota); what a client adds (IMAP APPEND, COPY) is reserved against the
 * quota under the lock deliveries take.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>
#include "mailstore.h"
#include "../common/mail.h"
#include "imap_private.h"
#include "folder_private.h"

const char *const mailstore_special_folders[] = { "Sent", "Drafts", "Junk", "Trash", "Archive", NULL };
const char *const mailstore_special_uses[] = { "\\Sent", "\\Drafts", "\\Junk", "\\Trash", "\\Archive", NULL };

static int make_maildir(const char *dir);

#define MAILDIRSIZE_MAX 5120        /* longer: recount (Maildir++) */

int
mailstore_path(const char *state_dir, const char *addr, char *out, size_t size)
{
    const char *at = strrchr(addr, '@');
    if (at == NULL || at == addr || at[1] == '\0' || strchr(at + 1, '/') || at[1] == '.')
        return -1;
    char local[4 * 64 * 3 + 1];
    size_t o = 0;
    for (const char *p = addr; p < at && o + 4 < sizeof(local); p++) {
        unsigned char c = (unsigned char)*p;
        if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '+' ||
            (c == '.' && p != addr))
            local[o++] = (char)c;
        else if (c >= 'A' && c <= 'Z')
            local[o++] = (char)(c + 32);
        else
            o += (size_t)snprintf(local + o, sizeof(local) - o, "%%%02X", c);
    }
    local[o] = '\0';
    char dom[256];
    size_t k = 0;
    for (const char *p = at + 1; *p && k + 1 < sizeof(dom); p++)
        dom[k++] = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
    dom[k] = '\0';
    char root[1400];
    if (paths_in(state_dir, PATH_MAIL, dom, root, sizeof(root)) < 0)
        return -1;
    return str_fmt(out, size, "%s/%s", root, local) < 0 ? -1 : 0;
}

int
mailstore_folder_path(const char *mailbox, const char *folder, char *out, size_t size)
{
    if (folder == NULL || str_ieq(folder, "INBOX"))
        return str_fmt(out, size, "%s", mailbox) < 0 ? -1 : 0;
    /* Maildir++: the folder A.B is .A.B; '.' is the hierarchy separator,
     * so no empty levels, and nothing that names another directory */
    size_t n = strlen(folder);
    if (n == 0 || n > 200 || folder[0] == '.' || folder[n - 1] == '.' || strstr(folder, "..") ||
        strchr(folder, '/') || strchr(folder, '\n') || strchr(folder, '\r'))
        return -1;
    for (const char *p = folder; *p; p++)
        if ((unsigned char)*p < ' ' || *p == 0x7f)
            return -1;
    return str_fmt(out, size, "%s/.%s", mailbox, folder) < 0 ? -1 : 0;
}

int
mailstore_make_folder(const char *dir)
{
    return make_maildir(dir);
}

static int
make_maildir(const char *dir)
{
    char sub[1400];
    if (mkdir_p(dir, 0700) < 0)
        return -1;
    static const char *subs[] = { "cur", "new", "tmp" };
    for (int i = 0; i < 3; i++) {
        str_fmt(sub, sizeof(sub), "%s/%s", dir, subs[i]);
        if (mkdir(sub, 0700) < 0 && errno != EEXIST)
            return -1;
    }
    return 0;
}

int
mailstore_create(const char *mailbox, char *err, size_t errsize)
{
    char p[1400];
    str_fmt(p, sizeof(p), "%s/cur", mailbox);
    if (access(p, F_OK) == 0)
        return 0;
    if (make_maildir(mailbox) < 0) {
        snprintf(err, errsize, "%s: %s", mailbox, strerror(errno));
        return -1;
    }
    char subs[512] = "";
    size_t o = 0;
    for (int i = 0; mailstore_special_folders[i]; i++) {
        mailstore_folder_path(mailbox, mailstore_special_folders[i], p, sizeof(p));
        if (make_maildir(p) < 0) {
            snprintf(err, errsize, "%s: %s", p, strerror(errno));
            return -1;
        }
        o += (size_t)snprintf(subs + o, sizeof(subs) - o, "%s\n", mailstore_special_folders[i]);
    }
    str_fmt(p, sizeof(p), "%s/subscriptions", mailbox);
    int fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0) {
        write_full(fd, subs, o);
        fsync(fd);
        close(fd);
    }
    fsync_dir(mailbox);
    return 0;
}

/* ------------------------------------------------------------- quota */

static void
count_dir(const char *dir, uint64_t *bytes, uint64_t *count)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (e->d_name[0] == '.')
            continue;
        const char *s = strstr(e->d_name, ",S=");
        uint64_t sz = 0;
        if (s)
            sz = strtoull(s + 3, NULL, 10);
        else {
            char path[2000];
            struct stat st;
            str_fmt(path, sizeof(path), "%s/%s", dir, e->d_name);
            if (stat(path, &st) == 0)
                sz = (uint64_t)st.st_size;
        }
        *bytes += sz;
        (*count)++;
    }
    closedir(d);
}

static void
recount(const char *mailbox, uint64_t *bytes, uint64_t *count)
{
    char p[1400];
    *bytes = *count = 0;
    for (int pass = 0; pass < 2; pass++) {
        str_fmt(p, sizeof(p), "%s/%s", mailbox, pass ? "new" : "cur");
        count_dir(p, bytes, count);
    }
    DIR *d = opendir(mailbox);
    if (d == NULL)
        return;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (e->d_name[0] != '.' || strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        for (int pass = 0; pass < 2; pass++) {
            str_fmt(p, sizeof(p), "%s/%s/%s", mailbox, e->d_name, pass ? "new" : "cur");
            count_dir(p, bytes, count);
        }
    }
    closedir(d);
}

uint64_t
mailstore_usage(const char *mailbox, uint64_t *count_r)
{
    char p[1400];
    str_fmt(p, sizeof(p), "%s/maildirsize", mailbox);
    uint64_t bytes = 0, count = 0;
    FILE *f = fopen(p, "re");
    bool ok = false;
    if (f) {
        struct stat st;
        char line[128];
        if (fstat(fileno(f), &st) == 0 && st.st_size <= MAILDIRSIZE_MAX &&
            fgets(line, sizeof(line), f)) {
            ok = true;
            long long b, c;
            while (fgets(line, sizeof(line), f))
                if (sscanf(line, "%lld %lld", &b, &c) == 2) {
                    bytes = (uint64_t)((long long)bytes + b);
                    count = (uint64_t)((long long)count + c);
                }
        }
        fclose(f);
    }
    if (!ok || (int64_t)bytes < 0 || (int64_t)count < 0) {
        recount(mailbox, &bytes, &count);
        char tmp[1500], buf[128];
        str_fmt(tmp, sizeof(tmp), "%s.%d", p, (int)getpid());
        int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd >= 0) {
            int n = snprintf(buf, sizeof(buf), "0S\n%llu %llu\n", (unsigned long long)bytes,
                             (unsigned long long)count);
            if (write_full(fd, buf, (size_t)n) == 0 && close(fd) == 0)
                rename(tmp, p);
            else
                unlink(tmp);
        }
    }
    if (count_r)
        *count_r = count;
    return bytes;
}

void
mailstore_usage_add(const char *mailbox, int64_t bytes, int64_t count)
{
    char p[1400], buf[64];
    str_fmt(p, sizeof(p), "%s/maildirsize", mailbox);
    int fd = open(p, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0)
        return;         /* recounted at the next look */
    int n = snprintf(buf, sizeof(buf), "%lld %lld\n", (long long)bytes, (long long)count);
    write_full(fd, buf, (size_t)n);
    close(fd);
}

/* ---------------------------------------------------------- delivery */

static int lock_mailbox(const char *mailbox, char *err, size_t errsize);
static enum md_status deliver_locked(const char *mailbox, const char *dir, const char *flags,
                                     const char *data, size_t len, uint64_t quota, char *err,
                                     size_t errsize);

enum md_status
mailstore_deliver(const char *mailbox, const char *folder, const char *data, size_t len,
                  uint64_t quota, char *err, size_t errsize)
{
    return mailstore_deliver_flags(mailbox, folder, NULL, data, len, quota, err, errsize);
}

bool
mailstore_folder_exists(const char *mailbox, const char *folder)
{
    char dir[1400], cur[1500];
    struct stat st;
    if (mailstore_folder_path(mailbox, folder, dir, sizeof(dir)) < 0 ||
        str_fmt(cur, sizeof(cur), "%s/cur", dir) < 0)
        return false;
    return stat(cur, &st) == 0 && S_ISDIR(st.st_mode);
}

enum md_status
mailstore_deliver_flags(const char *mailbox, const char *folder, const char *flags,
                        const char *data, size_t len, uint64_t quota, char *err, size_t errsize)
{
    char dir[1400];
    if (mailstore_create(mailbox, err, errsize) < 0)
        return MD_TEMP;
    if (mailstore_folder_path(mailbox, folder, dir, sizeof(dir)) < 0) {
        snprintf(err, errsize, "bad folder name");
        return MD_TEMP;
    }
    if (folder && make_maildir(dir) < 0) {
        snprintf(err, errsize, "%s: %s", dir, strerror(errno));
        return MD_TEMP;
    }
    /* Deliveries to one mailbox run one at a time (threads and processes):
     * the quota is checked and the usage counted under the same lock. */
    int lock = lock_mailbox(mailbox, err, errsize);
    if (lock < 0)
        return MD_TEMP;
    enum md_status st = deliver_locked(mailbox, dir, flags, data, len, quota, err, errsize);
    close(lock);
    return st;
}

static enum md_status
deliver_locked(const char *mailbox, const char *dir, const char *flags, const char *data,
               size_t len, uint64_t quota, char *err, size_t errsize)
{
    /* with flags: into cur/ with them in the name, as a client would see
     * them once the message is no longer \Recent; keyword names after a
     * space become the folder's letters for them */
    char letters[64] = "";
    if (flags) {
        size_t sl = strcspn(flags, " ");
        snprintf(letters, sizeof(letters), "%.*s", (int)(sl < 8 ? sl : 8), flags);
        if (flags[sl] == ' ') {
            size_t o = strlen(letters);
            folder_disk_keyword_letters(dir, flags + sl + 1, letters + o, sizeof(letters) - o);
        }
    }
    bool flagged = letters[0] != '\0';
    char tmp[1800], final[1800], host[128] = "moat";
    if (quota) {
        uint64_t used = mailstore_usage(mailbox, NULL);
        if (used + len > quota) {
            snprintf(err, errsize, "over quota (%llu of %llu bytes used)",
                     (unsigned long long)used, (unsigned long long)quota);
            return MD_OVER_QUOTA;
        }
    }
    gethostname(host, sizeof(host) - 1);
    for (char *p = host; *p; p++)
        if (*p == '/' || *p == ':')
            *p = '_';
    static unsigned long counter;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    char base[300];
    snprintf(base, sizeof(base), "%lld.M%06ldP%dQ%lu.%s,S=%zu", (long long)tv.tv_sec,
             (long)tv.tv_usec, (int)getpid(), __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED),
             host, len);
    str_fmt(tmp, sizeof(tmp), "%s/tmp/%s", dir, base);
    if (flagged)
        str_fmt(final, sizeof(final), "%s/cur/%s:2,%s", dir, base, letters);
    else
        str_fmt(final, sizeof(final), "%s/new/%s", dir, base);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, errsize, "%s: %s", tmp, strerror(errno));
        return MD_TEMP;
    }
    if (write_full(fd, data, len) < 0 || fdatasync(fd) < 0) {
        snprintf(err, errsize, "%s: %s", tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        return MD_TEMP;
    }
    close(fd);
    if (rename(tmp, final) < 0) {
        snprintf(err, errsize, "rename %s: %s", final, strerror(errno));
        unlink(tmp);
        return MD_TEMP;
    }
    str_fmt(tmp, sizeof(tmp), "%s/%s", dir, flagged ? "cur" : "new");
    if (fsync_dir(tmp) < 0) {
        snprintf(err, errsize, "fsync %s: %s", tmp, strerror(errno));
        return MD_TEMP;         /* the message may be there: delivered again, never lost */
    }
    mailstore_usage_add(mailbox, (int64_t)len, 1);
    return MD_OK;
}

/* The lock deliveries to the mailbox take; -1 if it cannot be had. */
static int
lock_mailbox(const char *mailbox, char *err, size_t errsize)
{
    char lockpath[1500];
    str_fmt(lockpath, sizeof(lockpath), "%s/deliver.lock", mailbox);
    int lock = open(lockpath, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lock < 0 || flock(lock, LOCK_EX) < 0) {
        snprintf(err, errsize, "%s: %s", lockpath, strerror(errno));
        if (lock >= 0)
            close(lock);
        return -1;
    }
    return lock;
}

enum md_status
mailstore_reserve(const char *mailbox, uint64_t quota, uint64_t bytes, int64_t count)
{
    char err[1600];
    int lock = lock_mailbox(mailbox, err, sizeof(err));
    if (lock < 0) {
        log_err("%s", err);
        return MD_TEMP;
    }
    enum md_status st = MD_OK;
    if (quota && mailstore_usage(mailbox, NULL) + bytes > quota)
        st = MD_OVER_QUOTA;
    else
        mailstore_usage_add(mailbox, (int64_t)bytes, count);
    close(lock);
    return st;
}
