/*
 * backup_restore.c -- moatctl restore [--force] [--only PARTS]
 * [--decrypt-key FILE] FILE: a backup (backup.c) brought back.
 *
 * Restore reads the archive twice: first all of it, checking the manifest
 * against every entry (names, sizes, SHA-256) and writing nothing; then it
 * writes each file through a temporary name, checked again, renamed into
 * place, owned by the daemon's user. It refuses while moatd runs, and over
 * a non-empty state (a file it would replace, a Redis key it would
 * overwrite) unless --force. With --only, the parts named are checked for
 * being there and only they are written (the whole archive is checked).
 *
 * An encrypted backup (backup_crypt.c) is known by its first line; with
 * the private key it is decrypted as it is read, each time, chunk by
 * chunk: a first pass reads it all through, so a chunk changed or a file
 * cut short is refused before anything else is done.
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

#define NAME_MAX_LEN BACKUP_NAME_MAX
#define REDIS_VALUE_MAX (512u * 1024 * 1024)   /* Redis' own limit on a value */
#define MANIFEST_MAX (64u * 1024 * 1024)
#define ENTRIES_MAX 10000000

struct reader {
    const struct moat_config *cfg;
    const char *file;
    bool force;
    const char *key_file;       /* --decrypt-key */
    bool encrypted;
    unsigned parts;             /* --only */
    struct backup_progress prog;
    struct backup_item *seen, *listed;
    size_t nseen, nlisted, cap_seen, cap_listed;
    struct backup_manifest m;   /* listed: its items */
    char *manifest;
    size_t manifest_len;
    char backup_state_dir[1024];
    char err[1200];
    uid_t uid;
    gid_t gid;
    bool chown;
};

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

static la_ssize_t
crypt_read_cb(struct archive *a, void *ctx, const void **p_r)
{
    struct backup_crypt *c = ctx;
    ssize_t n = backup_crypt_read(c, p_r);
    if (n < 0)
        archive_set_error(a, EIO, "%s", backup_crypt_error(c));
    return n;
}

static int
crypt_close_cb(struct archive *a, void *ctx)
{
    (void)a;
    struct backup_crypt *c = ctx;
    backup_crypt_free(&c);
    return ARCHIVE_OK;
}

/* The archive, through the decryption when it is encrypted. */
static struct archive *
open_archive(struct reader *rd)
{
    struct archive *a = archive_read_new();
    archive_read_support_filter_gzip(a);
    archive_read_support_format_tar(a);
    int r;
    if (rd->encrypted) {
        struct backup_crypt *c = backup_crypt_reader(rd->file, rd->key_file, rd->err,
                                                     sizeof(rd->err));
        if (c == NULL) {
            archive_read_free(a);
            return NULL;
        }
        r = archive_read_open(a, c, NULL, crypt_read_cb, crypt_close_cb);
    } else {
        r = archive_read_open_filename(a, rd->file, 65536);
    }
    if (r != ARCHIVE_OK) {
        str_fmt(rd->err, sizeof(rd->err), "%s: %s", rd->file, archive_error_string(a));
        archive_read_free(a);
        return NULL;
    }
    return a;
}

/* Is name one we restore, and where to: the path, or "" for VERSION,
 * MANIFEST and redis.dump; *wanted_r: in a part --only asks for. */
static int
target_of(struct reader *rd, const char *name, char *out, size_t size, bool *wanted_r)
{
    int part;
    int rc = backup_target(rd->cfg, name, out, size, &part);
    if (wanted_r)
        *wanted_r = part >= 0 && (rd->parts & (1u << part));
    return rc;
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
    backup_sha_done(c, sha);
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
    if (format > BACKUP_FORMAT || backup_version_cmp(version, MOAT_VERSION) > 0) {
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
    if (backup_manifest_parse(rd->manifest, rd->manifest_len, &rd->m) < 0) {
        str_fmt(rd->err, sizeof(rd->err), "%s: its MANIFEST does not read (a damaged backup)",
                rd->file);
        return -1;
    }
    rd->listed = rd->m.items;
    rd->nlisted = rd->m.nitems;
    str_copy(rd->backup_state_dir, rd->m.state_dir, sizeof(rd->backup_state_dir));
    unsigned missing = rd->parts & ~rd->m.parts;
    if (missing) {
        char want[200], has[200];
        backup_parts_format(missing, want, sizeof(want));
        backup_parts_format(rd->m.parts, has, sizeof(has));
        str_fmt(rd->err, sizeof(rd->err), "%s has no %s (it was made with --only %s)", rd->file,
                want, has);
        return -1;
    }
    return 0;
}

/* An encrypted backup read through to its end: every chunk authenticates
 * and the last is the one sealed as last. */
static int
check_crypt(struct reader *rd)
{
    struct backup_crypt *c = backup_crypt_reader(rd->file, rd->key_file, rd->err,
                                                 sizeof(rd->err));
    if (c == NULL)
        return -1;
    const void *p;
    ssize_t n;
    while ((n = backup_crypt_read(c, &p)) > 0)
        ;
    if (n < 0)
        str_fmt(rd->err, sizeof(rd->err), "%s: %s", rd->file, backup_crypt_error(c));
    backup_crypt_free(&c);
    return n < 0 ? -1 : 0;
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
    if (rd->encrypted ? check_crypt(rd) < 0 : check_gzip(rd) < 0)
        return -1;
    struct archive *a = open_archive(rd);
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
        if (name == NULL || target_of(rd, name, target, sizeof(target), NULL) < 0) {
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
            struct backup_item *it = backup_item_push(&rd->seen, &rd->nseen, &rd->cap_seen);
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
    qsort(rd->seen, rd->nseen, sizeof(*rd->seen), backup_item_cmp);
    for (size_t i = 0; i < rd->nseen || i < rd->nlisted; i++) {
        const struct backup_item *s = i < rd->nseen ? &rd->seen[i] : NULL;
        const struct backup_item *l = i < rd->nlisted ? &rd->listed[i] : NULL;
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
        if (klen == 0 || klen > BACKUP_REDIS_KEY_MAX || vlen > REDIS_VALUE_MAX) {
            str_fmt(rd->err, sizeof(rd->err), "%s: redis.dump: a record out of bounds",
                    rd->file);
            return -1;
        }
        char *key = xmalloc(klen + 1), *val = xmalloc(vlen ? vlen : 1);
        key[klen] = '\0';
        if (read_exact(a, key, klen) < 0 || read_exact(a, val, vlen) < 0) {
            str_fmt(rd->err, sizeof(rd->err), "%s: redis.dump is cut short", rd->file);
            rc = -1;
        } else if (!(rd->parts & (1u << backup_redis_part(key)))) {
            ;               /* a part not asked for */
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
restore_file(struct reader *rd, struct archive *a, const struct backup_item *it, const char *target,
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
restore_dir(struct reader *rd, const struct backup_item *it, const char *target)
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

static const struct backup_item *
listed(const struct reader *rd, const char *name)
{
    struct backup_item k = { .name = (char *)name };
    return bsearch(&k, rd->listed, rd->nlisted, sizeof(k), backup_item_cmp);
}

/* Would the restore replace anything? 0 no, 1 yes (named in err), -1. */
static int
check_empty(struct reader *rd)
{
    for (size_t i = 0; i < rd->nlisted; i++) {
        char target[1400];
        struct stat st;
        bool wanted;
        if (rd->listed[i].dir || strcmp(rd->listed[i].name, "config/moatd.conf") == 0 ||
            target_of(rd, rd->listed[i].name, target, sizeof(target), &wanted) < 0 ||
            !target[0] || !wanted)
            continue;
        if (lstat(target, &st) == 0) {
            str_fmt(rd->err, sizeof(rd->err), "%s exists already", target);
            return 1;
        }
    }
    if (listed(rd, "redis.dump") == NULL)
        return 0;
    struct archive *a = open_archive(rd);
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
restore_config(struct reader *rd, struct archive *a, const struct backup_item *it)
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
        backup_sha_done(c, sha);
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
    struct archive *a = open_archive(rd);
    if (a == NULL)
        return -1;
    struct archive_entry *e;
    int rc = 0;
    while (rc == 0 && archive_read_next_header(a, &e) == ARCHIVE_OK) {
        char nbuf[NAME_MAX_LEN + 2], target[1400];
        const char *name = entry_name(e, nbuf, sizeof(nbuf));
        if (name == NULL)
            continue;
        const struct backup_item *it = listed(rd, name);
        if (strcmp(name, "redis.dump") == 0) {
            rc = redis_entry(rd, a, false, nkeys_r);
            continue;
        }
        bool wanted;
        if (it == NULL || target_of(rd, name, target, sizeof(target), &wanted) < 0 ||
            !target[0] || !wanted)
            continue;       /* VERSION, MANIFEST, a part not asked for */
        if (strcmp(name, "config/moatd.conf") == 0)
            rc = restore_config(rd, a, it);
        else if (it->dir)
            rc = restore_dir(rd, it, target);
        else {
            rc = restore_file(rd, a, it, target, true);
            (*files_r)++;
            backup_progress_add(&rd->prog, 1, it->size);
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
    bool bad = false;
    rd.force = argv_take_flag(&argc, argv, "--force");
    bool progress = argv_take_flag(&argc, argv, "--progress");
    rd.key_file = backup_argv_opt(&argc, argv, "--decrypt-key", &bad);
    const char *only = backup_argv_opt(&argc, argv, "--only", &bad);
    if (bad || argc != 1)
        return -1;
    rd.file = argv[0];
    rd.parts = BACKUP_PARTS_ALL;
    if (only && backup_parts_parse(only, &rd.parts, rd.err, sizeof(rd.err)) < 0) {
        fprintf(stderr, "moatctl: restore: %s\n", rd.err);
        return 1;
    }
    int enc = backup_crypt_detect(rd.file);
    if (enc < 0) {
        fprintf(stderr, "moatctl: restore refused: %s: %s\n", rd.file, strerror(errno));
        return 1;
    }
    rd.encrypted = enc == 1;
    backup_progress_init(&rd.prog, "restore", progress);
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
    backup_items_free(&rd.seen, rd.nseen);
    backup_manifest_free(&rd.m);
    free(rd.manifest);
    if (rc < 0) {
        fprintf(stderr, started ? "moatctl: restore failed part way: %s\n"
                                : "moatctl: restore refused: %s\n", rd.err);
        return 1;
    }
    backup_progress_done(&rd.prog);
    char partlist[200];
    backup_parts_format(rd.parts, partlist, sizeof(partlist));
    printf("restored %s: %zu files into %s, %zu Redis keys%s%s%s\n", rd.file, files,
           cfg->state_dir, nkeys, only ? " (" : "", only ? partlist : "", only ? ")" : "");
    if (rd.backup_state_dir[0] && strcmp(rd.backup_state_dir, cfg->state_dir) != 0)
        printf("note: the backup was made of %s\n", rd.backup_state_dir);
    return 0;
}
