/*
 * backup.c -- moatctl backup: the whole state of one node (or the parts
 * --only names) in one archive, optionally encrypted (backup_crypt.c);
 * with --dir, a new file there and the oldest beyond --keep removed.
 * backup_restore.c reads it back; backup_format.c has what both share.
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
 *   MANIFEST           last: format, version, time, host, the parts it has,
 *                      and a line per entry with its SHA-256, size and mode
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
 * --dir DIR names the file DIR/moat-backup-STAMP.tar.gz (.enc when
 * encrypted), STAMP the UTC time to the microsecond, so names sort by age;
 * --keep N then removes the oldest files of exactly that form beyond N --
 * never another file -- once the new one is safely there.
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
#include <sys/time.h>
#include <hiredis/hiredis.h>
#include <openssl/evp.h>
#include "mail.h"

#define NAME_MAX_LEN BACKUP_NAME_MAX
#define KEEP_MAX 100000

/* ---------------------------------------------------------------- write */
struct writer {
    struct archive *a;
    struct jbuf manifest;       /* its text, with jb_raw */
    size_t files, dirs, vanished;
    uint64_t bytes;
    struct backup_progress prog;
    struct backup_crypt *crypt;     /* encrypting to a public key, or NULL */
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
        backup_hex(d, 32, sha);
        manifest_line(w, "file %s %zu %o %s\n", sha, n, mode & 0777, name);
        w->files++;
        w->bytes += n;
        backup_progress_add(&w->prog, 1, n);
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
    backup_sha_done(c, sha);
    EVP_MD_CTX_free(c);
    if (rc == 0) {
        manifest_line(w, "file %s %llu %o %s\n", sha, (unsigned long long)size,
                      (unsigned)st.st_mode & 0777, name);
        w->files++;
        w->bytes += size;
        backup_progress_add(&w->prog, 1, size);
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
            str_fmt(cn, sizeof(cn), "%s/%s", name, de->d_name) < 0 || !backup_name_safe(cn)) {
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

/* Every moat:* key of the parts asked for: SCAN, then DUMP and PTTL of each batch, pipelined. */
static int
dump_redis(const struct moat_config *cfg, unsigned parts, struct jbuf *out, size_t *nkeys_r,
           char *err, size_t errsize)
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
            bool wanted = parts & (1u << backup_redis_part(kn));
            if (!registry && wanted && d->type == REDIS_REPLY_STRING && t->type == REDIS_REPLY_INTEGER &&
                t->integer != -2 && keys->element[i]->len <= BACKUP_REDIS_KEY_MAX) {
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

/* libarchive's output through the encryption. */
static la_ssize_t
crypt_write_cb(struct archive *a, void *ctx, const void *p, size_t n)
{
    struct writer *w = ctx;
    if (backup_crypt_write(w->crypt, p, n) < 0) {
        archive_set_error(a, EIO, "%s", backup_crypt_error(w->crypt));
        return -1;
    }
    return (la_ssize_t)n;
}

/* Is name one --dir makes: moat-backup-YYYYMMDDTHHMMSS.UUUUUUZ.tar.gz[.enc]? */
static bool
made_by_dir(const char *name)
{
    static const char form[] = "moat-backup-########T######.######Z.tar.gz";
    size_t n = sizeof(form) - 1;
    if (strncmp(name, form, 12) != 0 || strlen(name) < n)
        return false;
    for (size_t i = 12; i < n; i++)
        if (form[i] == '#' ? !(name[i] >= '0' && name[i] <= '9') : name[i] != form[i])
            return false;
    return name[n] == '\0' || strcmp(name + n, ".enc") == 0;
}

/* --keep N: the oldest backups --dir made beyond the newest N removed. */
static int
prune(const char *dir, unsigned long keep)
{
    DIR *d = opendir(dir);
    if (d == NULL) {
        fprintf(stderr, "moatctl: backup: %s: %s\n", dir, strerror(errno));
        return -1;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!made_by_dir(de->d_name))
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 32;
            names = xrealloc(names, cap * sizeof(*names));
        }
        names[n++] = xstrdup(de->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof(*names), str_ptr_cmp);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        if (i + keep < n) {
            char path[1400];
            if (str_fmt(path, sizeof(path), "%s/%s", dir, names[i]) < 0 || unlink(path) < 0) {
                fprintf(stderr, "moatctl: backup: removing %s/%s: %s\n", dir, names[i],
                        strerror(errno));
                rc = -1;
            } else {
                printf("removed %s (beyond --keep %lu)\n", path, keep);
            }
        }
        free(names[i]);
    }
    free(names);
    if (rc == 0)
        fsync_dir(dir);
    return rc;
}

int
backup_ctl(const struct moat_config *cfg, const char *cmd, int argc, char **argv)
{
    (void)cmd;
    bool bad = false;
    bool progress = argv_take_flag(&argc, argv, "--progress");
    const char *pubkey = backup_argv_opt(&argc, argv, "--encrypt-to", &bad);
    const char *only = backup_argv_opt(&argc, argv, "--only", &bad);
    const char *outdir = backup_argv_opt(&argc, argv, "--dir", &bad);
    const char *keep_s = backup_argv_opt(&argc, argv, "--keep", &bad);
    if (bad || argc != (outdir ? 0 : 1) || (keep_s && !outdir))
        return -1;
    unsigned parts = BACKUP_PARTS_ALL;
    char err[300];
    if (only && backup_parts_parse(only, &parts, err, sizeof(err)) < 0) {
        fprintf(stderr, "moatctl: backup: %s\n", err);
        return 1;
    }
    unsigned long keep = 0;
    if (keep_s) {
        char *end;
        keep = strtoul(keep_s, &end, 10);
        if (*end || keep < 1 || keep > KEEP_MAX || keep_s[0] == '-') {
            fprintf(stderr, "moatctl: backup: --keep %s: a count from 1 to %d\n", keep_s,
                    KEEP_MAX);
            return 1;
        }
    }
    char made[1100];
    const char *file = argv[0];
    if (outdir) {
        struct timeval tv;
        gettimeofday(&tv, NULL);
        char stamp[40];
        strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%S", gmtime(&tv.tv_sec));
        if (str_fmt(made, sizeof(made), "%s/moat-backup-%s.%06ldZ.tar.gz%s", outdir, stamp,
                    (long)tv.tv_usec, pubkey ? ".enc" : "") < 0) {
            fprintf(stderr, "moatctl: backup: %s: name too long\n", outdir);
            return 1;
        }
        file = made;
    }
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
    backup_progress_init(&w.prog, "backup", progress);
    int rc = 0;
    if (pubkey && (w.crypt = backup_crypt_writer(fd, pubkey, w.err, sizeof(w.err))) == NULL)
        rc = -1;
    w.a = archive_write_new();
    archive_write_add_filter_gzip(w.a);
    archive_write_set_format_pax_restricted(w.a);
    if (rc == 0) {
        int r = w.crypt ? archive_write_open(w.a, &w, NULL, crypt_write_cb, NULL)
                        : archive_write_open_fd(w.a, fd);
        if (r != ARCHIVE_OK) {
            str_fmt(w.err, sizeof(w.err), "%s", archive_error_string(w.a));
            rc = -1;
        }
    }

    char version[100], when[40], partlist[200];
    time_t now = time(NULL);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    backup_parts_format(parts, partlist, sizeof(partlist));
    int vn = snprintf(version, sizeof(version), "moat-backup %d\nmoat %s\n", BACKUP_FORMAT,
                      MOAT_VERSION);
    if (rc == 0)
        rc = add_buffer(&w, "VERSION", 0644, version, (size_t)vn);
    manifest_line(&w, "moat-backup %d\nmoat %s\ncreated %s\nhost %s\nstate_dir %s\nparts %s\n",
                  BACKUP_FORMAT, MOAT_VERSION, when, cfg->hostname, cfg->state_dir, partlist);

    /* Redis first: what it holds about files (the quarantine index) can
     * be made again from them; the files are the truth. */
    size_t nkeys = 0;
    bool redis = cfg->redis.address[0] &&
                 (parts & (1u << BP_BAYES | 1u << BP_QUARANTINE | 1u << BP_ACCOUNTS));
    if (rc == 0 && redis) {
        struct jbuf rb = { 0 };
        rc = dump_redis(cfg, parts, &rb, &nkeys, w.err, sizeof(w.err));
        if (rc == 0)
            rc = add_buffer(&w, "redis.dump", 0600, rb.p ? rb.p : "", rb.len);
        jb_free(&rb);
        manifest_line(&w, "redis_keys %zu\n", nkeys);
    }
    if (rc == 0 && (parts & (1u << BP_CONFIG)))
        rc = add_file(&w, cfg->path, "config/moatd.conf", true);
    for (size_t i = 0; rc == 0 && i < backup_ndirs; i++) {
        if (!(parts & (1u << backup_dirs[i].part)))
            continue;
        char path[1200], name[1300];
        const char *rel = backup_part_rel(cfg, backup_dirs[i].path, path, sizeof(path));
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
    if (w.a && archive_write_close(w.a) != ARCHIVE_OK && rc == 0) {
        str_fmt(w.err, sizeof(w.err), "%s", archive_error_string(w.a));
        rc = -1;
    }
    archive_write_free(w.a);
    if (rc == 0 && w.crypt && backup_crypt_finish(w.crypt) < 0) {
        str_fmt(w.err, sizeof(w.err), "%s", backup_crypt_error(w.crypt));
        rc = -1;
    }
    backup_crypt_free(&w.crypt);
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
    backup_progress_done(&w.prog);
    char dir[1100];
    str_copy(dir, file, sizeof(dir));
    char *slash = strrchr(dir, '/');
    fsync_dir(slash ? (slash == dir ? "/" : (*slash = '\0', dir)) : ".");
    printf("backup %s: %zu files, %llu bytes, %zu directories, %zu Redis keys%s%s%s\n", file,
           w.files - (redis ? 1 : 0), (unsigned long long)w.bytes, w.dirs, nkeys,
           parts != BACKUP_PARTS_ALL ? " (" : "", parts != BACKUP_PARTS_ALL ? partlist : "",
           parts != BACKUP_PARTS_ALL ? ")" : "");
    if (w.vanished)
        printf("some files moved on while it ran: see moatctl(8)\n");
    if (pubkey)
        printf("encrypted to %s\n", pubkey);
    if (keep && prune(outdir, keep) < 0)
        return 1;
    return 0;
}
