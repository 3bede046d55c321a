/*
 * backup.c -- moatctl backup FILE and restore [--force] FILE: the whole
 * state of one node in one archive, and back.
 *
 * The archive is a gzip-compressed POSIX tar (pax), written and read with
 * Debian's libarchive: an admin can look into it with tar(1) and take one
 * mailbox out by hand, and we write no tar code of our own. Its entries:
 *   VERSION            "moat-backup FORMAT\nmoat VERSION\n", first, so a
 *                      backup of a newer format is refused before anything
 *   redis.dump         every moat:* key of Redis (Bayes, combiner weights,
 *                      allow/block lists, quarantine index, API tokens,
 *                      trace and stats) as DUMP payloads with their TTLs:
 *                      records of u32 key length, i64 TTL in ms (-1: none),
 *                      u32 payload length, the key, the payload (big endian)
 *   config/moatd.conf  the configuration file
 *   state/...          the files of state_dir (paths.c's names): accounts,
 *                      DKIM keys, secrets, the quarantine, the queue, the
 *                      mailboxes; modes kept (secrets stay 0600)
 *   MANIFEST           last: format, version, time, host, and a line per
 *                      entry with its SHA-256, size and mode
 * gzip's CRC-32 covers every byte of the tar stream and the manifest's
 * SHA-256 every entry's content: a flipped byte anywhere but in gzip's own
 * header (its time stamp, which changes nothing restored) is refused.
 *
 * Consistency while moatd runs: files there are only ever created whole
 * and renamed into place (queue, quarantine, Maildir, accounts, keys); the
 * queue role appends status records after END, which a reader tolerates
 * torn. Each file is copied as it is at the moment it is opened, up to its
 * size then. The parts go in the order mail moves -- the quarantine, then
 * the queue, then the mailboxes -- so a message that moves on while the
 * backup runs is caught in the place it left or the one it reached: every
 * message accepted before the backup began is in it at least once (a
 * message caught in two places is delivered twice after a restore, never
 * lost). A file removed before it was reached (delivered, deleted) is not.
 *
 * Restore reads the archive twice: first all of it, checking the manifest
 * against every entry (names, sizes, SHA-256) and writing nothing; then it
 * writes each file through a temporary name, checked again, renamed into
 * place, owned by the daemon's user. It refuses while moatd runs, and over
 * a non-empty state (a file it would replace, a Redis key it would
 * overwrite) unless --force.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <archive.h>
#include <archive_entry.h>
#include <hiredis/hiredis.h>
#include <openssl/evp.h>
#include <zlib.h>
#include "mail.h"

#define BACKUP_FORMAT 1
#define NAME_MAX_LEN 1024
#define REDIS_KEY_MAX (64u * 1024)
#define REDIS_VALUE_MAX (512u * 1024 * 1024)   /* Redis' own limit on a value */
#define MANIFEST_MAX (64u * 1024 * 1024)
#define ENTRIES_MAX 10000000

/* The parts of state_dir, in the order mail moves through them (above). */
static const enum state_path parts[] = {
    PATH_ACCOUNTS, PATH_DOMAINS, PATH_DKIM, PATH_SRS_SECRET, PATH_WEB_KEY, PATH_DIGEST_LAST, PATH_DMARC,
    PATH_QUARANTINE, PATH_QUEUE_INCOMING, PATH_QUEUE_DEFERRED, PATH_QUEUE_HOLD, PATH_MAIL,
};
#define NPARTS (sizeof(parts) / sizeof(parts[0]))

/* ------------------------------------------------------------- helpers */
static void
hex(const unsigned char *d, size_t n, char *out)
{
    static const char x[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = x[d[i] >> 4];
        out[2 * i + 1] = x[d[i] & 15];
    }
    out[2 * n] = '\0';
}

static void
sha_done(EVP_MD_CTX *c, char out[65])
{
    unsigned char d[32];
    unsigned n = 0;
    EVP_DigestFinal_ex(c, d, &n);
    hex(d, 32, out);
}

/* state_dir's part as a path relative to state_dir: "queue/incoming". */
static const char *
part_rel(const struct moat_config *cfg, enum state_path p, char *buf, size_t size)
{
    if (paths_get(cfg->state_dir, p, buf, size) < 0)
        return NULL;
    return buf + strlen(cfg->state_dir) + 1;
}

/* Is "a/b/c" a name we write: relative, no empty, "." or ".." parts, no
 * control characters? */
static bool
name_safe(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n >= NAME_MAX_LEN || s[0] == '/')
        return false;
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return false;
    const char *c = s;
    for (;;) {
        const char *e = strchr(c, '/');
        size_t l = e ? (size_t)(e - c) : strlen(c);
        if (l == 0 || (l == 1 && c[0] == '.') || (l == 2 && c[0] == '.' && c[1] == '.'))
            return false;
        if (e == NULL)
            return true;
        c = e + 1;
    }
}

/* Versions "a.b.c" in order: <0, 0, >0. */
static int
version_cmp(const char *a, const char *b)
{
    for (;;) {
        char *ea, *eb;
        unsigned long x = strtoul(a, &ea, 10), y = strtoul(b, &eb, 10);
        if (x != y)
            return x < y ? -1 : 1;
        if (*ea != '.' || *eb != '.')
            return (*ea == '.') - (*eb == '.');
        a = ea + 1;
        b = eb + 1;
    }
}

/* ---------------------------------------------------------------- write */
struct writer {
    struct archive *a;
    struct jbuf manifest;       /* its text, with jb_raw */
    size_t files, dirs, vanished;
    uint64_t bytes;
    char err[600];
};

static void
manifest_line(struct writer *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
manifest_line(struct writer *w, const char *fmt, ...)
{
    char line[NAME_MAX_LEN + 200];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n > 0)
        jb_raw(&w->manifest, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

static int
entry_head(struct writer *w, const char *name, mode_t type, unsigned mode, uint64_t size)
{
    struct archive_entry *e = archive_entry_new();
    archive_entry_set_pathname(e, name);
    archive_entry_set_filetype(e, type);
    archive_entry_set_perm(e, mode & 0777);
    archive_entry_set_size(e, (la_int64_t)size);
    archive_entry_set_mtime(e, time(NULL), 0);
    int r = archive_write_header(w->a, e);
    archive_entry_free(e);
    if (r != ARCHIVE_OK) {
        str_fmt(w->err, sizeof(w->err), "%s: %s", name, archive_error_string(w->a));
        return -1;
    }
    return 0;
}

static int
entry_data(struct writer *w, const void *p, size_t n)
{
    if (n && archive_write_data(w->a, p, n) != (la_ssize_t)n) {
        str_fmt(w->err, sizeof(w->err), "writing: %s", archive_error_string(w->a));
        return -1;
    }
    return 0;
}

/* An entry whose content is in memory. */
static int
add_buffer(struct writer *w, const char *name, unsigned mode, const void *p, size_t n)
{
    if (entry_head(w, name, AE_IFREG, mode, n) < 0 || entry_data(w, p, n) < 0)
        return -1;
    if (strcmp(name, "MANIFEST") != 0 && strcmp(name, "VERSION") != 0) {
        unsigned char d[32];
        char sha[65];
        unsigned dn = 0;
        EVP_Digest(p, n, d, &dn, EVP_sha256(), NULL);
        hex(d, 32, sha);
        manifest_line(w, "file %s %zu %o %s\n", sha, n, mode & 0777, name);
        w->files++;
        w->bytes += n;
    }
    return 0;
}

/* One file as it is now: up to the size it has when opened. */
static int
add_file(struct writer *w, const char *path, const char *name, bool follow)
{
    int fd = open(path, O_RDONLY | (follow ? 0 : O_NOFOLLOW) | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) {      /* moved on or removed since it was listed */
            w->vanished++;
            return 0;
        }
        str_fmt(w->err, sizeof(w->err), "%s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return 0;
    }
    uint64_t size = (uint64_t)st.st_size, left = size;
    if (entry_head(w, name, AE_IFREG, st.st_mode, size) < 0) {
        close(fd);
        return -1;
    }
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    EVP_DigestInit_ex(c, EVP_sha256(), NULL);
    char buf[65536];
    int rc = 0;
    while (left > 0) {
        ssize_t n = read(fd, buf, left < sizeof(buf) ? (size_t)left : sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            /* files here are never cut short; one that was is named */
            str_fmt(w->err, sizeof(w->err), "%s: shrank while being read", path);
            rc = -1;
            break;
        }
        EVP_DigestUpdate(c, buf, (size_t)n);
        if (entry_data(w, buf, (size_t)n) < 0) {
            rc = -1;
            break;
        }
        left -= (uint64_t)n;
    }
    close(fd);
    char sha[65];
    sha_done(c, sha);
    EVP_MD_CTX_free(c);
    if (rc == 0) {
        manifest_line(w, "file %s %llu %o %s\n", sha, (unsigned long long)size,
                      (unsigned)st.st_mode & 0777, name);
        w->files++;
        w->bytes += size;
    }
    return rc;
}

static int
add_tree(struct writer *w, const char *path, const char *name)
{
    struct stat st;
    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : (str_fmt(w->err, sizeof(w->err), "%s: %s", path,
                                              strerror(errno)), -1);
    if (S_ISREG(st.st_mode))
        return add_file(w, path, name, false);
    if (!S_ISDIR(st.st_mode))
        return 0;           /* no links, sockets or devices live in the state */
    if (entry_head(w, name, AE_IFDIR, st.st_mode, 0) < 0)
        return -1;
    manifest_line(w, "dir %o %s\n", (unsigned)st.st_mode & 0777, name);
    w->dirs++;
    DIR *d = opendir(path);
    if (d == NULL)
        return errno == ENOENT ? 0 : (str_fmt(w->err, sizeof(w->err), "%s: %s", path,
                                              strerror(errno)), -1);
    struct dirent *de;
    int rc = 0;
    while (rc == 0 && (de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char cp[NAME_MAX_LEN + 1100], cn[NAME_MAX_LEN + 1];
        if (str_fmt(cp, sizeof(cp), "%s/%s", path, de->d_name) < 0 ||
            str_fmt(cn, sizeof(cn), "%s/%s", name, de->d_name) < 0 || !name_safe(cn)) {
            fprintf(stderr, "moatctl: backup: %s/%s: name left out (too long or unsafe)\n",
                    path, de->d_name);
            continue;
        }
        rc = add_tree(w, cp, cn);
    }
    closedir(d);
    return rc;
}

static void
put_u32(struct jbuf *b, uint32_t v)
{
    unsigned char x[4] = { (unsigned char)(v >> 24), (unsigned char)(v >> 16),
                           (unsigned char)(v >> 8), (unsigned char)v };
    jb_raw(b, (const char *)x, 4);
}

static void
put_i64(struct jbuf *b, int64_t sv)
{
    uint64_t v = (uint64_t)sv;
    for (int i = 7; i >= 0; i--) {
        unsigned char c = (unsigned char)(v >> (8 * i));
        jb_raw(b, (const char *)&c, 1);
    }
}

/* Every moat:* key: SCAN, then DUMP and PTTL of each batch, pipelined. */
static int
dump_redis(const struct moat_config *cfg, struct jbuf *out, size_t *nkeys_r, char *err,
           size_t errsize)
{
    const char *ra = cfg->redis.address;
    unsigned ms = cfg->redis.timeout_ms * 4 + 1000;
    char cursor[32] = "0";
    *nkeys_r = 0;
    do {
        redisReply *r = redis_cmd(ra, ms, err, errsize, "SCAN %s MATCH moat:* COUNT 500", cursor);
        if (r == NULL)
            return -1;
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
            r->element[0]->type != REDIS_REPLY_STRING) {
            redis_reply_free(r);
            str_fmt(err, errsize, "redis %s: SCAN: unexpected reply", ra);
            return -1;
        }
        str_copy(cursor, r->element[0]->str, sizeof(cursor));
        redisReply *keys = r->element[1];
        for (size_t i = 0; i < keys->elements; i++) {
            const char *dump[] = { "DUMP", keys->element[i]->str };
            const char *pttl[] = { "PTTL", keys->element[i]->str };
            size_t lens[] = { 4, keys->element[i]->len };
            if (redis_append(ra, ms, err, errsize, 2, dump, lens) < 0 ||
                redis_append(ra, ms, err, errsize, 2, pttl, lens) < 0) {
                redis_reply_free(r);
                return -1;
            }
        }
        int rc = 0;
        for (size_t i = 0; i < keys->elements; i++) {
            redisReply *d = redis_reply(ra, ms, err, errsize);
            redisReply *t = d ? redis_reply(ra, ms, err, errsize) : NULL;
            if (d == NULL || t == NULL) {
                redis_reply_free(d);
                rc = -1;    /* the rest of the pipeline goes with the connection */
                break;
            }
            /* a key that expired since SCAN has no payload: left out; so
             * is the cluster's registry of live nodes (cluster.c), which
             * each node's heartbeat makes again */
            const char *kn = keys->element[i]->str;
            bool registry = strcmp(kn, "moat:nodes") == 0 || strncmp(kn, "moat:node:", 10) == 0;
            if (!registry && d->type == REDIS_REPLY_STRING && t->type == REDIS_REPLY_INTEGER &&
                t->integer != -2 && keys->element[i]->len <= REDIS_KEY_MAX) {
                put_u32(out, (uint32_t)keys->element[i]->len);
                put_i64(out, t->integer);
                put_u32(out, (uint32_t)d->len);
                jb_raw(out, keys->element[i]->str, keys->element[i]->len);
                jb_raw(out, d->str, d->len);
                (*nkeys_r)++;
            }
            redis_reply_free(d);
            redis_reply_free(t);
        }
        redis_reply_free(r);
        if (rc < 0) {
            redis_drop(ra);
            return -1;
        }
    } while (strcmp(cursor, "0") != 0);
    return 0;
}

int
backup_ctl(const struct moat_config *cfg, const char *cmd, int argc, char **argv)
{
    (void)cmd;
    if (argc != 1)
        return -1;
    const char *file = argv[0];
    char tmp[1100];
    if (str_fmt(tmp, sizeof(tmp), "%s.tmp", file) < 0) {
        fprintf(stderr, "moatctl: backup: %s: name too long\n", file);
        return 1;
    }
    if (access(file, F_OK) == 0) {
        fprintf(stderr, "moatctl: backup: %s exists; give a new name\n", file);
        return 1;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "moatctl: backup: %s: %s\n", tmp, strerror(errno));
        return 1;
    }
    struct writer w;
    memset(&w, 0, sizeof(w));
    w.a = archive_write_new();
    archive_write_add_filter_gzip(w.a);
    archive_write_set_format_pax_restricted(w.a);
    int rc = archive_write_open_fd(w.a, fd) == ARCHIVE_OK ? 0 : -1;
    if (rc < 0)
        str_fmt(w.err, sizeof(w.err), "%s", archive_error_string(w.a));

    char version[100], when[40];
    time_t now = time(NULL);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    int vn = snprintf(version, sizeof(version), "moat-backup %d\nmoat %s\n", BACKUP_FORMAT,
                      MOAT_VERSION);
    if (rc == 0)
        rc = add_buffer(&w, "VERSION", 0644, version, (size_t)vn);
    manifest_line(&w, "moat-backup %d\nmoat %s\ncreated %s\nhost %s\nstate_dir %s\n",
                  BACKUP_FORMAT, MOAT_VERSION, when, cfg->hostname, cfg->state_dir);

    /* Redis first: what it holds about files (the quarantine index) can
     * be made again from them; the files are the truth. */
    size_t nkeys = 0;
    if (rc == 0 && cfg->redis.address[0]) {
        struct jbuf rb = { 0 };
        rc = dump_redis(cfg, &rb, &nkeys, w.err, sizeof(w.err));
        if (rc == 0)
            rc = add_buffer(&w, "redis.dump", 0600, rb.p ? rb.p : "", rb.len);
        jb_free(&rb);
        manifest_line(&w, "redis_keys %zu\n", nkeys);
    }
    if (rc == 0)
        rc = add_file(&w, cfg->path, "config/moatd.conf", true);
    for (size_t i = 0; rc == 0 && i < NPARTS; i++) {
        char path[1200], name[1300];
        const char *rel = part_rel(cfg, parts[i], path, sizeof(path));
        if (rel == NULL || str_fmt(name, sizeof(name), "state/%s", rel) < 0) {
            str_fmt(w.err, sizeof(w.err), "%s: path too long", cfg->state_dir);
            rc = -1;
            break;
        }
        rc = add_tree(&w, path, name);
    }
    manifest_line(&w, "end %zu\n", w.files + w.dirs);
    if (rc == 0)
        rc = add_buffer(&w, "MANIFEST", 0644, w.manifest.p, w.manifest.len);
    if (archive_write_close(w.a) != ARCHIVE_OK && rc == 0) {
        str_fmt(w.err, sizeof(w.err), "%s", archive_error_string(w.a));
        rc = -1;
    }
    archive_write_free(w.a);
    jb_free(&w.manifest);
    if (rc == 0 && (fsync(fd) < 0 || close(fd) < 0 || rename(tmp, file) < 0)) {
        str_fmt(w.err, sizeof(w.err), "%s: %s", file, strerror(errno));
        rc = -1;
    } else if (rc < 0) {
        close(fd);
    }
    if (rc < 0) {
        unlink(tmp);
        fprintf(stderr, "moatctl: backup failed: %s\n", w.err);
        return 1;
    }
    char dir[1100];
    str_copy(dir, file, sizeof(dir));
    char *slash = strrchr(dir, '/');
    fsync_dir(slash ? (slash == dir ? "/" : (*slash = '\0', dir)) : ".");
    printf("backup %s: %zu files, %llu bytes, %zu directories, %zu Redis keys%s\n", file,
           w.files - (cfg->redis.address[0] ? 1 : 0), (unsigned long long)w.bytes, w.dirs, nkeys,
           w.vanished ? " (some files moved on while it ran: see moatctl(8))" : "");
    return 0;
}

/* ---------------------------------------------------------------- read */
struct item {
    char *name;
    char sha[65];
    uint64_t size;
    unsigned mode;
    bool dir;
};

static int
item_cmp(const void *a, const void *b)
{
    return strcmp(((const struct item *)a)->name, ((const struct item *)b)->name);
}

struct reader {
    const struct moat_config *cfg;
    const char *file;
    bool force;
    struct item *seen, *listed;
    size_t nseen, nlisted, cap_seen, cap_listed;
    char *manifest;
    size_t manifest_len;
    char backup_state_dir[1024];
    char err[1200];
    uid_t uid;
    gid_t gid;
    bool chown;
};

static void
items_free(struct item **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free((*v)[i].name);
    free(*v);
    *v = NULL;
}

static struct item *
item_push(struct item **v, size_t *n, size_t *cap)
{
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 256;
        *v = xrealloc(*v, *cap * sizeof(**v));
    }
    memset(&(*v)[*n], 0, sizeof(**v));
    return &(*v)[(*n)++];
}

/* The entry's name, without the slash tar puts after a directory's. */
static const char *
entry_name(struct archive_entry *e, char *buf, size_t size)
{
    const char *n = archive_entry_pathname(e);
    if (n == NULL || str_copy(buf, n, size) >= size)
        return NULL;
    size_t l = strlen(buf);
    if (l > 1 && buf[l - 1] == '/' && archive_entry_filetype(e) == AE_IFDIR)
        buf[l - 1] = '\0';
    return buf;
}

static struct archive *
open_archive(const char *file, char *err, size_t errsize)
{
    struct archive *a = archive_read_new();
    archive_read_support_filter_gzip(a);
    archive_read_support_format_tar(a);
    if (archive_read_open_filename(a, file, 65536) != ARCHIVE_OK) {
        str_fmt(err, errsize, "%s: %s", file, archive_error_string(a));
        archive_read_free(a);
        return NULL;
    }
    return a;
}

/* Is name one we restore, and where to: the path, or "" for VERSION,
 * MANIFEST and redis.dump. */
static int
target_of(struct reader *rd, const char *name, char *out, size_t size)
{
    out[0] = '\0';
    if (strcmp(name, "VERSION") == 0 || strcmp(name, "MANIFEST") == 0 ||
        strcmp(name, "redis.dump") == 0)
        return 0;
    if (strcmp(name, "config/moatd.conf") == 0)
        return str_fmt(out, size, "%s", rd->cfg->path);
    if (strncmp(name, "state/", 6) != 0 || !name_safe(name))
        return -1;
    const char *rel = name + 6;
    for (size_t i = 0; i < NPARTS; i++) {
        char buf[1200];
        const char *p = part_rel(rd->cfg, parts[i], buf, sizeof(buf));
        size_t pl = p ? strlen(p) : 0;
        if (p && strncmp(rel, p, pl) == 0 && (rel[pl] == '\0' || rel[pl] == '/'))
            return str_fmt(out, size, "%s/%s", rd->cfg->state_dir, rel);
    }
    return -1;
}

/* Read the entry's content: into the digest, and to fd (-1: nowhere),
 * or kept in *keep_r (the manifest, at most MANIFEST_MAX). */
static int
read_entry(struct reader *rd, struct archive *a, const char *name, int fd, char sha[65],
           uint64_t *size_r, char **keep_r, size_t *keep_len_r)
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    EVP_DigestInit_ex(c, EVP_sha256(), NULL);
    struct jbuf keep = { 0 };
    char buf[65536];
    uint64_t total = 0;
    int rc = 0;
    for (;;) {
        la_ssize_t n = archive_read_data(a, buf, sizeof(buf));
        if (n == 0)
            break;
        if (n < 0) {
            str_fmt(rd->err, sizeof(rd->err), "%s: %s: %s", rd->file, name,
                    archive_error_string(a));
            rc = -1;
            break;
        }
        EVP_DigestUpdate(c, buf, (size_t)n);
        total += (uint64_t)n;
        if (keep_r) {
            if (total > MANIFEST_MAX) {
                str_fmt(rd->err, sizeof(rd->err), "%s: %s is too large", rd->file, name);
                rc = -1;
                break;
            }
            jb_raw(&keep, buf, (size_t)n);
        }
        if (fd >= 0 && write_full(fd, buf, (size_t)n) < 0) {
            str_fmt(rd->err, sizeof(rd->err), "writing %s: %s", name, strerror(errno));
            rc = -1;
            break;
        }
    }
    sha_done(c, sha);
    EVP_MD_CTX_free(c);
    *size_r = total;
    if (keep_r && rc == 0) {
        *keep_r = keep.p ? keep.p : xstrdup("");
        *keep_len_r = keep.len;
    } else {
        jb_free(&keep);
    }
    return rc;
}

static int
check_version(struct reader *rd, const char *text)
{
    int format = 0;
    char version[64] = "";
    if (sscanf(text, "moat-backup %d\nmoat %63s", &format, version) != 2) {
        str_fmt(rd->err, sizeof(rd->err), "%s: not a Moat backup (its VERSION does not read)",
                rd->file);
        return -1;
    }
    if (format > BACKUP_FORMAT || version_cmp(version, MOAT_VERSION) > 0) {
        str_fmt(rd->err, sizeof(rd->err),
                "%s: a backup of Moat %s (backup format %d); this is Moat %s (format %d): "
                "restore it with Moat %s or later",
                rd->file, version, format, MOAT_VERSION, BACKUP_FORMAT, version);
        return -1;
    }
    return 0;
}

/* The manifest's entries into rd->listed. */
static int
parse_manifest(struct reader *rd)
{
    char *save = NULL;
    bool ended = false, head = false;
    for (char *line = strtok_r(rd->manifest, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        char sha[65];
        unsigned long long size;
        unsigned mode;
        int off = 0;
        if (strncmp(line, "moat-backup ", 12) == 0) {
            head = true;
        } else if (strncmp(line, "state_dir ", 10) == 0) {
            str_copy(rd->backup_state_dir, line + 10, sizeof(rd->backup_state_dir));
        } else if (sscanf(line, "file %64[0-9a-f] %llu %o %n", sha, &size, &mode, &off) == 3 &&
                   off > 0) {
            if (rd->nlisted >= ENTRIES_MAX)
                goto bad;
            struct item *it = item_push(&rd->listed, &rd->nlisted, &rd->cap_listed);
            it->name = xstrdup(line + off);
            str_copy(it->sha, sha, sizeof(it->sha));
            it->size = size;
            it->mode = mode;
        } else if (sscanf(line, "dir %o %n", &mode, &off) == 1 && off > 0) {
            if (rd->nlisted >= ENTRIES_MAX)
                goto bad;
            struct item *it = item_push(&rd->listed, &rd->nlisted, &rd->cap_listed);
            it->name = xstrdup(line + off);
            it->mode = mode;
            it->dir = true;
        } else if (strncmp(line, "end ", 4) == 0) {
            ended = true;
        }
    }
    if (head && ended)
        return 0;
bad:
    str_fmt(rd->err, sizeof(rd->err), "%s: its MANIFEST does not read (a damaged backup)",
            rd->file);
    return -1;
}

/* The whole gzip stream read through: zlib checks its CRC-32 and length,
 * over the bytes the tar reader never looks at too (what follows the
 * last entry). */
static int
check_gzip(struct reader *rd)
{
    gzFile g = gzopen(rd->file, "rb");
    if (g == NULL) {
        str_fmt(rd->err, sizeof(rd->err), "%s: %s", rd->file, strerror(errno));
        return -1;
    }
    static char buf[65536];
    int n;
    while ((n = gzread(g, buf, sizeof(buf))) > 0)
        ;
    int code = 0;
    const char *why = n < 0 ? gzerror(g, &code) : NULL;
    if (n < 0)
        str_fmt(rd->err, sizeof(rd->err), "%s: damaged (gzip: %s)", rd->file,
                why ? why : "read error");
    gzclose(g);
    return n < 0 ? -1 : 0;
}

/* Pass one: every entry read and checked against the manifest; nothing
 * written. */
static int
verify(struct reader *rd)
{
    if (check_gzip(rd) < 0)
        return -1;
    struct archive *a = open_archive(rd->file, rd->err, sizeof(rd->err));
    if (a == NULL)
        return -1;
    struct archive_entry *e;
    int r, rc = 0;
    size_t n = 0;
    bool manifest_last = false;
    while (rc == 0 && (r = archive_read_next_header(a, &e)) == ARCHIVE_OK) {
        char nbuf[NAME_MAX_LEN + 2], target[1400];
        const char *name = entry_name(e, nbuf, sizeof(nbuf));
        manifest_last = false;
        if (name == NULL || target_of(rd, name, target, sizeof(target)) < 0) {
            str_fmt(rd->err, sizeof(rd->err), "%s: entry '%s' is not one a backup has", rd->file,
                    archive_entry_pathname(e) ? archive_entry_pathname(e) : "");
            rc = -1;
            break;
        }
        mode_t type = archive_entry_filetype(e);
        if (type != AE_IFREG && type != AE_IFDIR) {
            str_fmt(rd->err, sizeof(rd->err), "%s: %s: not a file or a directory", rd->file,
                    name);
            rc = -1;
            break;
        }
        bool version = strcmp(name, "VERSION") == 0, manifest = strcmp(name, "MANIFEST") == 0;
        if ((n == 0) != version) {
            str_fmt(rd->err, sizeof(rd->err), "%s: not a Moat backup (no VERSION first)",
                    rd->file);
            rc = -1;
            break;
        }
        n++;
        char sha[65], *text = NULL;
        size_t tlen = 0;
        uint64_t size = 0;
        rc = read_entry(rd, a, name, -1, sha, &size, (version || manifest) ? &text : NULL,
                        &tlen);
        if (rc < 0)
            break;
        if (version) {
            rc = check_version(rd, text);
            free(text);
        } else if (manifest) {
            free(rd->manifest);
            rd->manifest = text;
            rd->manifest_len = tlen;
            manifest_last = true;
        } else {
            if (rd->nseen >= ENTRIES_MAX) {
                str_fmt(rd->err, sizeof(rd->err), "%s: too many entries", rd->file);
                rc = -1;
                break;
            }
            struct item *it = item_push(&rd->seen, &rd->nseen, &rd->cap_seen);
            it->name = xstrdup(name);
            it->dir = type == AE_IFDIR;
            it->mode = archive_entry_perm(e) & 0777;
            if (!it->dir) {
                str_copy(it->sha, sha, sizeof(it->sha));
                it->size = size;
            }
        }
    }
    if (rc == 0 && r != ARCHIVE_EOF) {
        str_fmt(rd->err, sizeof(rd->err), "%s: damaged: %s", rd->file, archive_error_string(a));
        rc = -1;
    }
    archive_read_free(a);
    if (rc < 0)
        return -1;
    if (!manifest_last || rd->manifest == NULL) {
        str_fmt(rd->err, sizeof(rd->err), "%s: no MANIFEST at its end (cut short?)", rd->file);
        return -1;
    }
    if (parse_manifest(rd) < 0)
        return -1;
    qsort(rd->seen, rd->nseen, sizeof(*rd->seen), item_cmp);
    qsort(rd->listed, rd->nlisted, sizeof(*rd->listed), item_cmp);
    for (size_t i = 0; i < rd->nseen || i < rd->nlisted; i++) {
        const struct item *s = i < rd->nseen ? &rd->seen[i] : NULL;
        const struct item *l = i < rd->nlisted ? &rd->listed[i] : NULL;
        int c = s && l ? strcmp(s->name, l->name) : (s ? -1 : 1);
        if (c < 0) {
            str_fmt(rd->err, sizeof(rd->err), "%s: %s is not in its MANIFEST", rd->file,
                    s->name);
            return -1;
        }
        if (c > 0) {
            str_fmt(rd->err, sizeof(rd->err), "%s: %s is in its MANIFEST but missing", rd->file,
                    l->name);
            return -1;
        }
        if (i > 0 && strcmp(s->name, rd->seen[i - 1].name) == 0) {
            str_fmt(rd->err, sizeof(rd->err), "%s: %s is in it twice", rd->file, s->name);
            return -1;
        }
        if (s->dir != l->dir || s->size != l->size || strcmp(s->sha, l->sha) != 0) {
            str_fmt(rd->err, sizeof(rd->err),
                    "%s: %s does not match its checksum in the MANIFEST (a damaged backup)",
                    rd->file, s->name);
            return -1;
        }
    }
    return 0;
}

/* Read exactly n bytes of the current entry. */
static int
read_exact(struct archive *a, void *p, size_t n)
{
    size_t got = 0;
    while (got < n) {
        la_ssize_t r = archive_read_data(a, (char *)p + got, n - got);
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return 0;
}

static uint32_t
get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* redis.dump: with check, only whether any of its keys exist (1), else
 * RESTORE each (REPLACE with force). */
static int
redis_entry(struct reader *rd, struct archive *a, bool check, size_t *nkeys_r)
{
    const struct moat_config *cfg = rd->cfg;
    const char *ra = cfg->redis.address;
    unsigned ms = cfg->redis.timeout_ms * 4 + 1000;
    *nkeys_r = 0;
    if (!ra[0]) {
        if (!check)
            fprintf(stderr, "moatctl: restore: no redis.address in %s: the Redis part of the "
                            "backup is left out\n", cfg->path);
        return 0;
    }
    unsigned char h[16];
    int rc = 0;
    for (;;) {
        la_ssize_t r = archive_read_data(a, h, 1);
        if (r == 0)
            break;
        if (r < 0 || read_exact(a, h + 1, 15) < 0) {
            str_fmt(rd->err, sizeof(rd->err), "%s: redis.dump is cut short", rd->file);
            return -1;
        }
        uint32_t klen = get_u32(h), vlen = get_u32(h + 12);
        int64_t ttl = 0;
        for (int i = 0; i < 8; i++)
            ttl = (int64_t)((uint64_t)ttl << 8 | h[4 + i]);
        if (klen == 0 || klen > REDIS_KEY_MAX || vlen > REDIS_VALUE_MAX) {
            str_fmt(rd->err, sizeof(rd->err), "%s: redis.dump: a record out of bounds",
                    rd->file);
            return -1;
        }
        char *key = xmalloc(klen + 1), *val = xmalloc(vlen ? vlen : 1);
        key[klen] = '\0';
        if (read_exact(a, key, klen) < 0 || read_exact(a, val, vlen) < 0) {
            str_fmt(rd->err, sizeof(rd->err), "%s: redis.dump is cut short", rd->file);
            rc = -1;
        } else if (check) {
            const char *argv[] = { "EXISTS", key };
            size_t lens[] = { 6, klen };
            redisReply *x = NULL;
            if (redis_append(ra, ms, rd->err, sizeof(rd->err), 2, argv, lens) < 0 ||
                (x = redis_reply(ra, ms, rd->err, sizeof(rd->err))) == NULL)
                rc = -1;
            else if (x->type == REDIS_REPLY_INTEGER && x->integer > 0) {
                str_fmt(rd->err, sizeof(rd->err), "Redis %s has %.200s already", ra, key);
                rc = 1;
            }
            redis_reply_free(x);
        } else {
            char t[32];
            snprintf(t, sizeof(t), "%lld", (long long)(ttl > 0 ? ttl : 0));
            const char *argv[] = { "RESTORE", key, t, val, "REPLACE" };
            size_t lens[] = { 7, klen, strlen(t), vlen, 7 };
            redisReply *x = NULL;
            if (redis_append(ra, ms, rd->err, sizeof(rd->err), rd->force ? 5 : 4, argv, lens) < 0 ||
                (x = redis_reply(ra, ms, rd->err, sizeof(rd->err))) == NULL) {
                char why[600];
                str_copy(why, rd->err, sizeof(why));
                str_fmt(rd->err, sizeof(rd->err), "Redis key %.200s: %s", key, why);
                rc = -1;
            } else {
                (*nkeys_r)++;
            }
            redis_reply_free(x);
        }
        free(key);
        free(val);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* Does any directory between state_dir and path exist as a symbolic link?
 * The daemon's user owns what is there, and root must not be led by a
 * link it planted to write outside the state. */
static bool
through_link(const char *state_dir, const char *path)
{
    size_t base = strlen(state_dir);
    if (strncmp(path, state_dir, base) != 0 || path[base] != '/')
        return false;       /* the config file: where the admin put it */
    char buf[1400];
    if (str_copy(buf, path, sizeof(buf)) >= sizeof(buf))
        return true;
    for (char *p = buf + base + 1; (p = strchr(p, '/')) != NULL; p++) {
        struct stat st;
        *p = '\0';
        bool link = lstat(buf, &st) == 0 && S_ISLNK(st.st_mode);
        *p = '/';
        if (link)
            return true;
    }
    return false;
}

/* A file written next to its place, checked, renamed over it. */
static int
restore_file(struct reader *rd, struct archive *a, const struct item *it, const char *target,
             bool owned)
{
    char tmp[1500], dir[1400];
    if (through_link(rd->cfg->state_dir, target)) {
        str_fmt(rd->err, sizeof(rd->err), "%s: a directory on the way is a symbolic link",
                target);
        return -1;
    }
    str_copy(dir, target, sizeof(dir));
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    if (str_fmt(tmp, sizeof(tmp), "%s/.restore.%d", dir, (int)getpid()) < 0 ||
        mkdir_p(dir, 0750) < 0) {
        str_fmt(rd->err, sizeof(rd->err), "%s: %s", dir, strerror(errno));
        return -1;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        str_fmt(rd->err, sizeof(rd->err), "%s: %s", tmp, strerror(errno));
        return -1;
    }
    char sha[65];
    uint64_t size;
    int rc = read_entry(rd, a, it->name, fd, sha, &size, NULL, NULL);
    if (rc == 0 && (size != it->size || strcmp(sha, it->sha) != 0)) {
        str_fmt(rd->err, sizeof(rd->err), "%s: %s changed since it was checked", rd->file,
                it->name);
        rc = -1;
    }
    if (rc == 0 && ((owned && rd->chown && fchown(fd, rd->uid, rd->gid) < 0) ||
                    fchmod(fd, it->mode & 0777) < 0 || fsync(fd) < 0)) {
        str_fmt(rd->err, sizeof(rd->err), "%s: %s", tmp, strerror(errno));
        rc = -1;
    }
    if (close(fd) < 0 && rc == 0) {
        str_fmt(rd->err, sizeof(rd->err), "%s: %s", tmp, strerror(errno));
        rc = -1;
    }
    if (rc == 0 && rename(tmp, target) < 0) {
        str_fmt(rd->err, sizeof(rd->err), "%s: %s", target, strerror(errno));
        rc = -1;
    }
    if (rc < 0)
        unlink(tmp);
    return rc;
}

static int
restore_dir(struct reader *rd, const struct item *it, const char *target)
{
    struct stat st;
    if (through_link(rd->cfg->state_dir, target) ||
        (lstat(target, &st) == 0 && !S_ISDIR(st.st_mode))) {
        str_fmt(rd->err, sizeof(rd->err), "%s: not a directory, or one on the way is a "
                "symbolic link", target);
        return -1;
    }
    if (mkdir_p(target, 0750) < 0 || (rd->chown && chown(target, rd->uid, rd->gid) < 0) ||
        chmod(target, it->mode & 0777) < 0) {
        str_fmt(rd->err, sizeof(rd->err), "%s: %s", target, strerror(errno));
        return -1;
    }
    return 0;
}

static const struct item *
listed(const struct reader *rd, const char *name)
{
    struct item k = { .name = (char *)name };
    return bsearch(&k, rd->listed, rd->nlisted, sizeof(k), item_cmp);
}

/* Would the restore replace anything? 0 no, 1 yes (named in err), -1. */
static int
check_empty(struct reader *rd)
{
    for (size_t i = 0; i < rd->nlisted; i++) {
        char target[1400];
        struct stat st;
        if (rd->listed[i].dir || strcmp(rd->listed[i].name, "config/moatd.conf") == 0 ||
            target_of(rd, rd->listed[i].name, target, sizeof(target)) < 0 || !target[0])
            continue;
        if (lstat(target, &st) == 0) {
            str_fmt(rd->err, sizeof(rd->err), "%s exists already", target);
            return 1;
        }
    }
    if (listed(rd, "redis.dump") == NULL)
        return 0;
    struct archive *a = open_archive(rd->file, rd->err, sizeof(rd->err));
    if (a == NULL)
        return -1;
    struct archive_entry *e;
    int rc = 0;
    while (archive_read_next_header(a, &e) == ARCHIVE_OK)
        if (strcmp(archive_entry_pathname(e), "redis.dump") == 0) {
            size_t n;
            rc = redis_entry(rd, a, true, &n);
            break;
        }
    archive_read_free(a);
    return rc;
}

/* The config: put in place when it differs, the one there kept beside. */
static int
restore_config(struct reader *rd, struct archive *a, const struct item *it)
{
    const char *path = rd->cfg->path;
    char old[1100];
    if (str_fmt(old, sizeof(old), "%s.before-restore", path) < 0)
        return -1;
    FILE *f = fopen(path, "rbe");
    if (f) {
        EVP_MD_CTX *c = EVP_MD_CTX_new();
        EVP_DigestInit_ex(c, EVP_sha256(), NULL);
        char buf[8192], sha[65];
        size_t n;
        while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
            EVP_DigestUpdate(c, buf, n);
        fclose(f);
        sha_done(c, sha);
        EVP_MD_CTX_free(c);
        if (strcmp(sha, it->sha) == 0)
            return 0;
        if (link(path, old) < 0 && !(errno == EEXIST && unlink(old) == 0 && link(path, old) == 0)) {
            str_fmt(rd->err, sizeof(rd->err), "%s: %s", old, strerror(errno));
            return -1;
        }
        printf("config: %s replaced by the backup's; the one before is %s\n", path, old);
    }
    return restore_file(rd, a, it, path, false);
}

static int
extract(struct reader *rd, size_t *files_r, size_t *nkeys_r)
{
    struct archive *a = open_archive(rd->file, rd->err, sizeof(rd->err));
    if (a == NULL)
        return -1;
    struct archive_entry *e;
    int rc = 0;
    while (rc == 0 && archive_read_next_header(a, &e) == ARCHIVE_OK) {
        char nbuf[NAME_MAX_LEN + 2], target[1400];
        const char *name = entry_name(e, nbuf, sizeof(nbuf));
        if (name == NULL)
            continue;
        const struct item *it = listed(rd, name);
        if (strcmp(name, "redis.dump") == 0) {
            rc = redis_entry(rd, a, false, nkeys_r);
            continue;
        }
        if (it == NULL || target_of(rd, name, target, sizeof(target)) < 0 || !target[0])
            continue;       /* VERSION, MANIFEST */
        if (strcmp(name, "config/moatd.conf") == 0)
            rc = restore_config(rd, a, it);
        else if (it->dir)
            rc = restore_dir(rd, it, target);
        else {
            rc = restore_file(rd, a, it, target, true);
            (*files_r)++;
        }
    }
    archive_read_free(a);
    if (rc == 0)
        fsync_dir(rd->cfg->state_dir);
    return rc;
}

int
backup_ctl_restore(const struct moat_config *cfg, const char *cmd, int argc, char **argv)
{
    (void)cmd;
    struct reader rd;
    memset(&rd, 0, sizeof(rd));
    rd.cfg = cfg;
    for (; argc > 1 && strcmp(argv[0], "--force") == 0; argc--, argv++)
        rd.force = true;
    if (argc != 1)
        return -1;
    rd.file = argv[0];
    if (supervisor_signal(cfg, 0) == 0) {
        fprintf(stderr, "moatctl: restore: moatd is running (pid file %s); stop it first\n",
                cfg->pid_file);
        return 1;
    }
    struct passwd *pw = geteuid() == 0 ? getpwnam(cfg->user) : NULL;
    if (geteuid() == 0 && pw == NULL) {
        fprintf(stderr, "moatctl: restore: no user %s (the config's user)\n", cfg->user);
        return 1;
    }
    if (pw) {
        rd.chown = true;
        rd.uid = pw->pw_uid;
        rd.gid = pw->pw_gid;
    }
    int rc = verify(&rd);
    if (rc == 0 && !rd.force) {
        rc = check_empty(&rd);
        if (rc > 0) {
            char why[1200];
            str_copy(why, rd.err, sizeof(why));
            str_fmt(rd.err, sizeof(rd.err), "the state is not empty: %s; --force to replace "
                    "what the backup has", why);
            rc = -1;
        }
    }
    size_t files = 0, nkeys = 0;
    bool started = false;
    if (rc == 0) {
        started = true;
        struct stat st;
        bool made = stat(cfg->state_dir, &st) < 0;
        if (mkdir_p(cfg->state_dir, 0750) < 0 ||
            (made && rd.chown && chown(cfg->state_dir, rd.uid, rd.gid) < 0)) {
            str_fmt(rd.err, sizeof(rd.err), "%s: %s", cfg->state_dir, strerror(errno));
            rc = -1;
        } else {
            rc = extract(&rd, &files, &nkeys);
        }
    }
    items_free(&rd.seen, rd.nseen);
    items_free(&rd.listed, rd.nlisted);
    free(rd.manifest);
    if (rc < 0) {
        fprintf(stderr, started ? "moatctl: restore failed part way: %s\n"
                                : "moatctl: restore refused: %s\n", rd.err);
        return 1;
    }
    printf("restored %s: %zu files into %s, %zu Redis keys\n", rd.file, files, cfg->state_dir,
           nkeys);
    if (rd.backup_state_dir[0] && strcmp(rd.backup_state_dir, cfg->state_dir) != 0)
        printf("note: the backup was made of %s\n", rd.backup_state_dir);
    return 0;
}
