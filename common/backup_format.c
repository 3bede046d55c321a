/*
 * backup_format.c -- what a Moat backup is made of, for backup.c (the
 * writer) and backup_restore.c (the reader): its parts (--only), which
 * part each file of state_dir and each Redis key belongs to, the names
 * an archive may hold and where each is restored, the MANIFEST's lines
 * (parsed here with no I/O: tests/fuzz/fuzz_restore_manifest.c), and the
 * progress line of both.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <openssl/evp.h>
#include "mail.h"

#define NAME_MAX_LEN BACKUP_NAME_MAX
#define ENTRIES_MAX 10000000

static const char *const part_names[BP__COUNT] = {
    [BP_CONFIG] = "config", [BP_ACCOUNTS] = "accounts", [BP_DKIM] = "dkim", [BP_QUEUE] = "queue",
    [BP_QUARANTINE] = "quarantine", [BP_MAIL] = "mail", [BP_BAYES] = "bayes",
};

/* The parts of state_dir, in the order mail moves through them (backup.c),
 * each with the --only part it belongs to. */
const struct backup_dir backup_dirs[] = {
    { PATH_ACCOUNTS, BP_ACCOUNTS },     { PATH_DOMAINS, BP_CONFIG },
    { PATH_DKIM, BP_DKIM },             { PATH_SRS_SECRET, BP_CONFIG },
    { PATH_WEB_KEY, BP_CONFIG },        { PATH_DIGEST_LAST, BP_CONFIG },
    { PATH_DMARC, BP_CONFIG },          { PATH_QUARANTINE, BP_QUARANTINE },
    { PATH_QUEUE_INCOMING, BP_QUEUE },  { PATH_QUEUE_DEFERRED, BP_QUEUE },
    { PATH_QUEUE_HOLD, BP_QUEUE },      { PATH_MAIL, BP_MAIL },
};
const size_t backup_ndirs = sizeof(backup_dirs) / sizeof(backup_dirs[0]);

int
backup_parts_parse(const char *list, unsigned *mask_r, char *err, size_t errsize)
{
    *mask_r = 0;
    const char *p = list;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        size_t i;
        for (i = 0; i < BP__COUNT; i++)
            if (strlen(part_names[i]) == n && strncmp(p, part_names[i], n) == 0)
                break;
        if (i == BP__COUNT) {
            str_fmt(err, errsize, "--only: '%.*s' is not a part (config, accounts, dkim, queue, "
                    "quarantine, mail, bayes)", (int)(n > 64 ? 64 : n), p);
            return -1;
        }
        *mask_r |= 1u << i;
        p = e ? e + 1 : p + n;
    }
    if (*mask_r == 0) {
        str_fmt(err, errsize, "--only: no part named");
        return -1;
    }
    return 0;
}

void
backup_parts_format(unsigned mask, char *buf, size_t size)
{
    buf[0] = '\0';
    size_t len = 0;
    for (size_t i = 0; i < BP__COUNT; i++)
        if (mask & (1u << i)) {
            int n = snprintf(buf + len, size - len, "%s%s", len ? "," : "", part_names[i]);
            if (n < 0 || (size_t)n >= size - len)
                return;
            len += (size_t)n;
        }
}

/* Moat's Redis keys by part: the quarantine's index with the quarantine,
 * the web role's tokens and sessions with the accounts, and the rest --
 * Bayes, the combiner's weights, allow/block lists, the trace and the
 * stats -- the spam filter's learned state, "bayes". */
enum backup_part
backup_redis_part(const char *key)
{
    if (strncmp(key, "moat:quar", 9) == 0)
        return BP_QUARANTINE;
    if (strncmp(key, "moat:web", 8) == 0)
        return BP_ACCOUNTS;
    return BP_BAYES;
}

void
backup_hex(const unsigned char *d, size_t n, char *out)
{
    static const char x[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = x[d[i] >> 4];
        out[2 * i + 1] = x[d[i] & 15];
    }
    out[2 * n] = '\0';
}

void
backup_sha_done(EVP_MD_CTX *c, char out[65])
{
    unsigned char d[32];
    unsigned n = 0;
    EVP_DigestFinal_ex(c, d, &n);
    backup_hex(d, 32, out);
}

const char *
backup_part_rel(const struct moat_config *cfg, enum state_path p, char *buf, size_t size)
{
    if (paths_get(cfg->state_dir, p, buf, size) < 0)
        return NULL;
    return buf + strlen(cfg->state_dir) + 1;
}

bool
backup_name_safe(const char *s)
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

int
backup_version_cmp(const char *a, const char *b)
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

int
backup_target(const struct moat_config *cfg, const char *name, char *out, size_t size,
              int *part_r)
{
    out[0] = '\0';
    *part_r = -1;
    if (strcmp(name, "VERSION") == 0 || strcmp(name, "MANIFEST") == 0 ||
        strcmp(name, "redis.dump") == 0)
        return 0;
    if (strcmp(name, "config/moatd.conf") == 0) {
        *part_r = BP_CONFIG;
        return str_fmt(out, size, "%s", cfg->path);
    }
    if (strncmp(name, "state/", 6) != 0 || !backup_name_safe(name))
        return -1;
    const char *rel = name + 6;
    for (size_t i = 0; i < backup_ndirs; i++) {
        char buf[1200];
        const char *p = backup_part_rel(cfg, backup_dirs[i].path, buf, sizeof(buf));
        size_t pl = p ? strlen(p) : 0;
        if (p && strncmp(rel, p, pl) == 0 && (rel[pl] == '\0' || rel[pl] == '/')) {
            *part_r = (int)backup_dirs[i].part;
            return str_fmt(out, size, "%s/%s", cfg->state_dir, rel);
        }
    }
    return -1;
}

/* ------------------------------------------------------------ manifest */
int
backup_item_cmp(const void *a, const void *b)
{
    return strcmp(((const struct backup_item *)a)->name, ((const struct backup_item *)b)->name);
}

struct backup_item *
backup_item_push(struct backup_item **v, size_t *n, size_t *cap)
{
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 256;
        *v = xrealloc(*v, *cap * sizeof(**v));
    }
    memset(&(*v)[*n], 0, sizeof(**v));
    return &(*v)[(*n)++];
}

void
backup_items_free(struct backup_item **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free((*v)[i].name);
    free(*v);
    *v = NULL;
}

void
backup_manifest_free(struct backup_manifest *m)
{
    backup_items_free(&m->items, m->nitems);
    m->nitems = m->cap = 0;
}

/* One line (NUL-terminated, no newline) into m. */
static int
manifest_line(struct backup_manifest *m, const char *line)
{
    char sha[65];
    unsigned long long size;
    unsigned mode;
    int off = 0;
    if (strncmp(line, "moat-backup ", 12) == 0) {
        m->head = true;
    } else if (strncmp(line, "state_dir ", 10) == 0) {
        str_copy(m->state_dir, line + 10, sizeof(m->state_dir));
    } else if (strncmp(line, "parts ", 6) == 0) {
        char err[200];
        if (backup_parts_parse(line + 6, &m->parts, err, sizeof(err)) < 0)
            return -1;
    } else if (sscanf(line, "file %64[0-9a-f] %llu %o %n", sha, &size, &mode, &off) == 3 &&
               off > 0) {
        if (m->nitems >= ENTRIES_MAX || strlen(sha) != 64 || !line[off] ||
            strlen(line + off) >= NAME_MAX_LEN)
            return -1;
        struct backup_item *it = backup_item_push(&m->items, &m->nitems, &m->cap);
        it->name = xstrdup(line + off);
        str_copy(it->sha, sha, sizeof(it->sha));
        it->size = size;
        it->mode = mode & 07777;
    } else if (sscanf(line, "dir %o %n", &mode, &off) == 1 && off > 0) {
        if (m->nitems >= ENTRIES_MAX || !line[off] || strlen(line + off) >= NAME_MAX_LEN)
            return -1;
        struct backup_item *it = backup_item_push(&m->items, &m->nitems, &m->cap);
        it->name = xstrdup(line + off);
        it->mode = mode & 07777;
        it->dir = true;
    } else if (strncmp(line, "end ", 4) == 0) {
        m->ended = true;
    }
    return 0;
}

int
backup_manifest_parse(const char *text, size_t len, struct backup_manifest *m)
{
    memset(m, 0, sizeof(*m));
    m->parts = BACKUP_PARTS_ALL;    /* a backup from before --only: all of them */
    char line[NAME_MAX_LEN + 200];
    size_t at = 0;
    int rc = 0;
    while (rc == 0 && at < len) {
        const char *nl = memchr(text + at, '\n', len - at);
        size_t n = nl ? (size_t)(nl - (text + at)) : len - at;
        if (n >= sizeof(line) || memchr(text + at, '\0', n) != NULL) {
            rc = -1;
            break;
        }
        memcpy(line, text + at, n);
        line[n] = '\0';
        at += n + 1;
        if (n > 0)
            rc = manifest_line(m, line);
    }
    if (rc == 0 && m->head && m->ended) {
        if (m->nitems > 1)          /* items is NULL when a manifest lists none */
            qsort(m->items, m->nitems, sizeof(*m->items), backup_item_cmp);
        return 0;
    }
    backup_manifest_free(m);
    return -1;
}

/* ------------------------------------------------------------ progress */
void
backup_progress_init(struct backup_progress *p, const char *what, bool asked)
{
    memset(p, 0, sizeof(*p));
    p->what = what;
    p->tty = isatty(STDERR_FILENO) == 1;
    p->on = asked || p->tty;
    p->last = time_mono();
}

static void
progress_print(struct backup_progress *p, bool done)
{
    fprintf(stderr, "%s%s: %zu items, %llu bytes%s", p->tty ? "\r" : "", p->what, p->items,
            (unsigned long long)p->bytes, done ? ", done\n" : (p->tty ? "" : "\n"));
    fflush(stderr);
}

void
backup_progress_add(struct backup_progress *p, size_t items, uint64_t bytes)
{
    p->items += items;
    p->bytes += bytes;
    if (!p->on)
        return;
    double now = time_mono();
    if (now - p->last >= (p->tty ? 0.2 : 1.0)) {
        p->last = now;
        progress_print(p, false);
    }
}

void
backup_progress_done(struct backup_progress *p)
{
    if (p->on)
        progress_print(p, true);
}

const char *
backup_argv_opt(int *argc, char **argv, const char *flag, bool *bad_r)
{
    const char *v = NULL;
    int j = 0;
    for (int i = 0; i < *argc; i++) {
        if (strcmp(argv[i], flag) == 0) {
            if (i + 1 >= *argc) {
                *bad_r = true;
                break;
            }
            v = argv[++i];
        } else {
            argv[j++] = argv[i];
        }
    }
    *argc = j;
    return v;
}
