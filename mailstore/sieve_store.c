/*
 * sieve_store.c -- a mailbox's Sieve scripts on disk and what delivery
 * does with them. A script is mailbox/sieve/NAME.sieve (written to a
 * temporary file, fsynced, renamed); the active one is the symlink
 * mailbox/active.sieve -> sieve/NAME.sieve (made beside and renamed over,
 * so it changes at once); vacation replies already sent are
 * mailbox/sieve/.vacation ("expiry hash sender" lines, under flock). The
 * scripts include :global finds are the domain's, DOMAIN/.sieve-global/
 * NAME.sieve beside its mailboxes (a mailbox's directory never starts
 * with '.'), put there by the admin. Like
 * the rest of a mailbox's insides (paths.c leaves them to the Maildir
 * code), these paths are named here alone.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include "../common/mail.h"
#include "imap_private.h"
#include "sieve_private.h"

#define VACATION_MAX 5000           /* senders remembered */

bool
sieve_store_name_ok(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > SIEVE_NAME_MAX || name[0] == '.')
        return false;
    for (const char *p = name; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f || *p == '/' || *p == '\\')
            return false;
    return true;
}

static int
script_path(const char *mailbox, const char *name, char *out, size_t size)
{
    if (!sieve_store_name_ok(name)) {
        errno = EINVAL;
        return -1;
    }
    return str_fmt(out, size, "%s/sieve/%s.sieve", mailbox, name) < 0 ? -1 : 0;
}

/* The active script's name into out ("" for none). */
static void
active_name(const char *mailbox, char *out, size_t size)
{
    char link[1400], target[1400];
    out[0] = '\0';
    if (str_fmt(link, sizeof(link), "%s/active.sieve", mailbox) < 0)
        return;
    ssize_t n = readlink(link, target, sizeof(target) - 1);
    if (n <= 0)
        return;
    target[n] = '\0';
    size_t tl = (size_t)n;
    if (tl > 6 + 6 && strncmp(target, "sieve/", 6) == 0 && strcmp(target + tl - 6, ".sieve") == 0) {
        target[tl - 6] = '\0';
        str_copy(out, target + 6, size);
    }
}

int
sieve_store_list(const char *mailbox, struct sv_list *names, char *active, size_t asize)
{
    char dir[1400];
    names->v = NULL;
    names->n = 0;
    active_name(mailbox, active, asize);
    str_fmt(dir, sizeof(dir), "%s/sieve", mailbox);
    DIR *d = opendir(dir);
    if (d == NULL)
        return errno == ENOENT ? 0 : -1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && names->n < SIEVE_SCRIPTS_MAX * 2) {
        size_t n = strlen(e->d_name);
        if (e->d_name[0] == '.' || n <= 6 || strcmp(e->d_name + n - 6, ".sieve") != 0)
            continue;
        names->v = xrealloc(names->v, (names->n + 1) * sizeof(char *));
        names->v[names->n++] = xstrndup(e->d_name, n - 6);
    }
    closedir(d);
    return 0;
}

int
sieve_store_get(const char *mailbox, const char *name, char **data_r, size_t *len_r)
{
    char p[1400];
    *data_r = NULL;
    if (script_path(mailbox, name, p, sizeof(p)) < 0)
        return -1;
    *data_r = file_read(p, SIEVE_SCRIPT_MAX, len_r);
    return *data_r ? 0 : -1;
}

int
sieve_store_put(const char *mailbox, const char *name, const char *data, size_t len)
{
    char dir[1400], p[1400], tmp[1500];
    if (script_path(mailbox, name, p, sizeof(p)) < 0)
        return -1;
    str_fmt(dir, sizeof(dir), "%s/sieve", mailbox);
    if (mkdir(dir, 0700) < 0 && errno != EEXIST)
        return -1;
    static unsigned long seq;       /* two workers may put at once */
    str_fmt(tmp, sizeof(tmp), "%s/.put.%d.%lu", dir, (int)getpid(),
            __atomic_add_fetch(&seq, 1, __ATOMIC_RELAXED));
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    if (write_full(fd, data, len) < 0 || fsync(fd) < 0) {
        close(fd);
        unlink(tmp);
        return -1;
    }
    close(fd);
    if (rename(tmp, p) < 0) {
        unlink(tmp);
        return -1;
    }
    return fsync_dir(dir);
}

bool
sieve_store_exists(const char *mailbox, const char *name)
{
    char p[1400];
    return script_path(mailbox, name, p, sizeof(p)) == 0 && access(p, F_OK) == 0;
}

bool
sieve_store_is_active(const char *mailbox, const char *name)
{
    char a[SIEVE_NAME_MAX + 1];
    active_name(mailbox, a, sizeof(a));
    return a[0] && strcmp(a, name) == 0;
}

int
sieve_store_setactive(const char *mailbox, const char *name)
{
    char link[1400], tmp[1500], target[1400];
    str_fmt(link, sizeof(link), "%s/active.sieve", mailbox);
    if (name[0] == '\0') {
        if (unlink(link) < 0 && errno != ENOENT)
            return -1;
        return fsync_dir(mailbox);
    }
    if (!sieve_store_exists(mailbox, name)) {
        errno = ENOENT;
        return -1;
    }
    str_fmt(target, sizeof(target), "sieve/%s.sieve", name);
    static unsigned long seq;
    str_fmt(tmp, sizeof(tmp), "%s/.active.sieve.%d.%lu", mailbox, (int)getpid(),
            __atomic_add_fetch(&seq, 1, __ATOMIC_RELAXED));
    unlink(tmp);
    if (symlink(target, tmp) < 0)
        return -1;
    if (rename(tmp, link) < 0) {
        unlink(tmp);
        return -1;
    }
    return fsync_dir(mailbox);
}

int
sieve_store_delete(const char *mailbox, const char *name)
{
    char p[1400], dir[1400];
    if (script_path(mailbox, name, p, sizeof(p)) < 0 || unlink(p) < 0)
        return -1;
    str_fmt(dir, sizeof(dir), "%s/sieve", mailbox);
    return fsync_dir(dir);
}

int
sieve_store_rename(const char *mailbox, const char *from, const char *to)
{
    char a[1400], b[1400], dir[1400];
    if (script_path(mailbox, from, a, sizeof(a)) < 0 || script_path(mailbox, to, b, sizeof(b)) < 0)
        return -1;
    bool active = sieve_store_is_active(mailbox, from);
    /* link, not rename: an existing target is never overwritten */
    if (link(a, b) < 0)
        return -1;
    if (active && sieve_store_setactive(mailbox, to) < 0) {
        unlink(b);
        return -1;
    }
    unlink(a);
    str_fmt(dir, sizeof(dir), "%s/sieve", mailbox);
    return fsync_dir(dir);
}

/* ---------------------------------------------------------- delivery */

static void
result_clear(struct mailstore_sieve_result *res)
{
    for (size_t i = 0; i < res->nstore; i++) {
        free(res->store[i].folder);
        free(res->store[i].flags);
    }
    free(res->store);
    res->store = NULL;
    res->nstore = 0;
    for (size_t i = 0; i < res->nredirect; i++)
        free(res->redirect[i]);
    free(res->redirect);
    res->redirect = NULL;
    res->nredirect = 0;
    struct mailstore_sieve_vacation *v = res->vacation;
    if (v) {
        free(v->subject);
        free(v->from);
        free(v->reason);
        free(v->handle);
        for (size_t i = 0; i < v->naddresses; i++)
            free(v->addresses[i]);
        free(v->addresses);
        free(v);
        res->vacation = NULL;
    }
}

void
mailstore_sieve_result_free(struct mailstore_sieve_result *res)
{
    result_clear(res);
}

static void
keep_only(struct mailstore_sieve_result *res)
{
    result_clear(res);
    res->store = xcalloc(1, sizeof(*res->store));
    res->nstore = 1;
}

/* include's scripts: the mailbox's own, or its domain's global ones. */
static int
load_script(void *ctx, bool global, const char *name, char **src_r, size_t *len_r)
{
    const char *mailbox = ctx;
    if (!global)
        return sieve_store_get(mailbox, name, src_r, len_r);
    char p[1400];
    const char *slash = strrchr(mailbox, '/');
    if (slash == NULL || !sieve_store_name_ok(name)) {
        errno = ENOENT;
        return -1;
    }
    str_fmt(p, sizeof(p), "%.*s/.sieve-global/%s.sieve", (int)(slash - mailbox), mailbox, name);
    *src_r = file_read(p, SIEVE_SCRIPT_MAX, len_r);
    return *src_r ? 0 : -1;
}

void
mailstore_sieve_run(const char *mailbox, const char *data, size_t len, const char *env_from,
                    const char *env_to, struct mailstore_sieve_result *res)
{
    memset(res, 0, sizeof(*res));
    char name[SIEVE_NAME_MAX + 1];
    active_name(mailbox, name, sizeof(name));
    char *src = NULL;
    size_t slen = 0;
    if (name[0] == '\0' || sieve_store_get(mailbox, name, &src, &slen) < 0) {
        if (name[0] && errno != ENOENT)
            snprintf(res->error, sizeof(res->error), "script %s: %s", name, strerror(errno));
        res->ran = name[0] != '\0';
        keep_only(res);
        return;
    }
    res->ran = true;
    char err[sizeof(res->error) - 100];
    struct sieve_script *s = sieve_parse(src, slen, err, sizeof(err));
    free(src);
    if (s == NULL) {
        snprintf(res->error, sizeof(res->error), "script %s: %s", name, err);
        keep_only(res);
        return;
    }
    struct sieve_input in = { data, len, env_from, env_to, load_script, (void *)mailbox, name };
    int rc = sieve_run(s, &in, res, err, sizeof(err));
    sieve_free(&s);
    if (rc < 0) {
        snprintf(res->error, sizeof(res->error), "script %s: %s", name, err);
        keep_only(res);
        return;
    }
    for (size_t i = 0; i < res->nstore; i++) {
        /* RFC 5228 4.1: the script names folders in UTF-8; on disk they
         * are in modified UTF-7, as IMAP names them (imap_utf7.c). A
         * folder on disk under the name as written (made before names
         * were converted: "Müll" raw, or a script's "Entw&APw-rfe")
         * keeps its mail where the converted name is no folder. */
        char disk[FOLDER_NAME_LEN * 4];
        if (res->store[i].folder &&
            imap_utf7_encode(res->store[i].folder, disk, sizeof(disk)) == 0 &&
            (mailstore_folder_exists(mailbox, disk) ||
             !mailstore_folder_exists(mailbox, res->store[i].folder))) {
            free(res->store[i].folder);
            res->store[i].folder = xstrdup(disk);
        }
        const char *f = res->store[i].folder;
        char dir[1400];
        if (f && mailstore_folder_path(mailbox, f, dir, sizeof(dir)) < 0) {
            snprintf(res->error, sizeof(res->error), "script %s: fileinto \"%.80s\": not a folder name",
                     name, f);
            keep_only(res);
            return;
        }
        if (f && !res->store[i].create && !mailstore_folder_exists(mailbox, f)) {
            snprintf(res->error, sizeof(res->error),
                     "script %s: fileinto \"%.80s\": no such folder (:create makes it)", name, f);
            keep_only(res);
            return;
        }
    }
}

/* ---------------------------------------------------------- vacation */

/* The field's value, unfolded, CR and LF out, into out ("" if none). */
static void
field(const char *data, size_t len, const char *name, char *out, size_t size)
{
    size_t hl = rfc5322_header_len(data, len), vlen;
    const char *v = rfc5322_find(data, data + hl, name, 0, &vlen);
    size_t o = 0;
    out[0] = '\0';
    if (v == NULL)
        return;
    for (size_t i = 0; i < vlen && o + 1 < size; i++)
        if (v[i] != '\r' && v[i] != '\n')
            out[o++] = v[i] == '\t' ? ' ' : v[i];
    out[o] = '\0';
    size_t s = 0;
    while (out[s] == ' ')
        s++;
    memmove(out, out + s, o - s + 1);
    o -= s;
    while (o > 0 && out[o - 1] == ' ')
        out[--o] = '\0';
}

static bool
addr_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           strchr(".-_+=", c) != NULL;
}

/* Does a To/Cc/Bcc/Resent- field hold addr as a whole address? */
static bool
addressed_to(const char *data, size_t len, const char *addr)
{
    static const char *const names[] = { "To", "Cc", "Bcc", "Resent-To", "Resent-Cc" };
    size_t an = strlen(addr), hl = rfc5322_header_len(data, len);
    if (an == 0)
        return false;
    for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++)
        for (size_t nth = 0; nth < 50; nth++) {
            size_t vlen;
            const char *v = rfc5322_find(data, data + hl, names[k], nth, &vlen);
            if (v == NULL)
                break;
            for (size_t i = 0; i + an <= vlen; i++)
                if (strncasecmp(v + i, addr, an) == 0 && (i == 0 || !addr_char(v[i - 1])) &&
                    (i + an == vlen || !addr_char(v[i + an])))
                    return true;
        }
    return false;
}

/* Mail no vacation answers (RFC 5230 section 4.5, RFC 3834). */
static bool
automatic(const char *data, size_t len, const char *env_from)
{
    if (env_from[0] == '\0')
        return true;
    const char *at = strrchr(env_from, '@');
    size_t ln = at ? (size_t)(at - env_from) : strlen(env_from);
    char local[128];
    snprintf(local, sizeof(local), "%.*s", (int)(ln < 127 ? ln : 127), env_from);
    size_t l = strlen(local);
    if (str_ieq(local, "mailer-daemon") || str_ieq(local, "postmaster") ||
        str_ieq(local, "listserv") || str_ieq(local, "majordomo") || str_iprefix(local, "owner-") ||
        (l > 8 && strcasecmp(local + l - 8, "-request") == 0) ||
        (l > 6 && strcasecmp(local + l - 6, "-owner") == 0))
        return true;
    char v[200];
    field(data, len, "Auto-Submitted", v, sizeof(v));
    if (v[0] && !str_iprefix(v, "no"))
        return true;
    field(data, len, "Precedence", v, sizeof(v));
    if (str_iprefix(v, "bulk") || str_iprefix(v, "list") || str_iprefix(v, "junk"))
        return true;
    static const char *const lists[] = { "List-Id", "List-Post", "List-Unsubscribe", "List-Help" };
    for (size_t i = 0; i < sizeof(lists) / sizeof(lists[0]); i++) {
        size_t vl;
        size_t hl = rfc5322_header_len(data, len);
        if (rfc5322_find(data, data + hl, lists[i], 0, &vl))
            return true;
    }
    field(data, len, "X-Spam-Flag", v, sizeof(v));
    return str_iprefix(v, "yes");
}

static uint32_t
fnv(uint32_t h, const char *s)
{
    for (; s && *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return (h ^ 0xff) * 16777619u;
}

/* Has sender been answered for handle within the period? If not, it is
 * recorded now (the reply is then due). -1: the record cannot be kept,
 * so no reply (better none than one to every message). */
static int
vacation_seen(const char *mailbox, const char *sender, uint32_t handle, unsigned days)
{
    char p[1400], tmp[1500], dir[1400];
    str_fmt(dir, sizeof(dir), "%s/sieve", mailbox);
    if (mkdir(dir, 0700) < 0 && errno != EEXIST)
        return -1;
    str_fmt(p, sizeof(p), "%s/.vacation", dir);
    str_fmt(tmp, sizeof(tmp), "%s/.vacation.tmp", dir);
    int fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0 || flock(fd, LOCK_EX) < 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    FILE *f = fdopen(dup(fd), "r");
    time_t now = time(NULL);
    char line[600];
    struct { long long exp; char rest[560]; } *keep = xcalloc(VACATION_MAX, sizeof(*keep));
    size_t nkeep = 0;
    bool seen = false;
    while (f && fgets(line, sizeof(line), f)) {
        long long exp;
        unsigned h;
        char who[520];
        if (sscanf(line, "%lld %x %519s", &exp, &h, who) != 3 || exp <= (long long)now)
            continue;
        if (h == handle && strcasecmp(who, sender) == 0)
            seen = true;
        if (nkeep < VACATION_MAX - 1) {
            keep[nkeep].exp = exp;
            snprintf(keep[nkeep].rest, sizeof(keep[nkeep].rest), "%x %s", h, who);
            nkeep++;
        }
    }
    if (f)
        fclose(f);
    int rc = seen ? 1 : 0;
    if (!seen) {
        keep[nkeep].exp = (long long)now + (long long)days * 86400;
        snprintf(keep[nkeep].rest, sizeof(keep[nkeep].rest), "%x %.500s", handle, sender);
        nkeep++;
        FILE *o = fopen(tmp, "w");
        if (o == NULL) {
            rc = -1;
        } else {
            for (size_t i = 0; i < nkeep; i++)
                fprintf(o, "%lld %s\n", keep[i].exp, keep[i].rest);
            if (fflush(o) != 0 || fsync(fileno(o)) < 0)
                rc = -1;
            if (fclose(o) != 0)
                rc = -1;
            if (rc == 0 && rename(tmp, p) < 0)
                rc = -1;
        }
    }
    free(keep);
    close(fd);
    return rc;
}

static void
line_copy(char *dst, const char *src, size_t size)
{
    str_copy_line(dst, src, size);
}

char *
mailstore_sieve_vacation_reply(const char *mailbox, const struct mailstore_sieve_result *res,
                               const char *data, size_t len, const char *env_from,
                               const char *env_to, const char *hostname, size_t *len_r)
{
    const struct mailstore_sieve_vacation *v = res->vacation;
    if (v == NULL || res->error[0] || automatic(data, len, env_from) ||
        strchr(env_from, ' ') || strlen(env_from) > 500)
        return NULL;
    /* only mail addressed to the user (the mailbox or one of :addresses) */
    bool mine = addressed_to(data, len, env_to);
    for (size_t i = 0; i < v->naddresses && !mine; i++)
        mine = addressed_to(data, len, v->addresses[i]);
    if (!mine)
        return NULL;
    /* nor to the user's own addresses */
    if (strcasecmp(env_from, env_to) == 0)
        return NULL;
    for (size_t i = 0; i < v->naddresses; i++)
        if (strcasecmp(env_from, v->addresses[i]) == 0)
            return NULL;
    uint32_t h = v->handle ? fnv(2166136261u, v->handle)
                           : fnv(fnv(fnv(2166136261u, v->subject), v->from), v->reason);
    if (vacation_seen(mailbox, env_from, h, v->days) != 0)
        return NULL;
    char from[400], subject[600], orig_subject[500], msgid[400], refs[1000], date[64];
    line_copy(from, v->from ? v->from : env_to, sizeof(from));
    field(data, len, "Subject", orig_subject, sizeof(orig_subject));
    if (v->subject)
        line_copy(subject, v->subject, sizeof(subject));
    else
        snprintf(subject, sizeof(subject), "Auto: %s", orig_subject);
    field(data, len, "Message-ID", msgid, sizeof(msgid));
    field(data, len, "References", refs, sizeof(refs));
    time_rfc5322(time(NULL), date, sizeof(date));
    size_t rl = strlen(v->reason);
    size_t cap = 5000 + rl * 2;
    char *out = xmalloc(cap);
    int n = snprintf(out, cap,
                     "From: %s\r\nTo: <%s>\r\nSubject: %s\r\nDate: %s\r\n"
                     "Message-ID: <vacation.%lld.%08x@%s>\r\n",
                     from, env_from, subject, date, (long long)time(NULL), (unsigned)h, hostname);
    size_t o = n > 0 ? (size_t)n : 0;
    if (msgid[0])
        o += (size_t)snprintf(out + o, cap - o, "In-Reply-To: %s\r\nReferences: %s%s%s\r\n",
                              msgid, refs, refs[0] ? " " : "", msgid);
    o += (size_t)snprintf(out + o, cap - o,
                          "Auto-Submitted: auto-replied (vacation)\r\nPrecedence: bulk\r\n"
                          "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
                          "Content-Transfer-Encoding: 8bit\r\n\r\n");
    /* the reason with CRLF line ends */
    for (size_t i = 0; i < rl && o + 3 < cap; i++) {
        if (v->reason[i] == '\n' && (i == 0 || v->reason[i - 1] != '\r'))
            out[o++] = '\r';
        out[o++] = v->reason[i];
    }
    if (o < 2 || out[o - 1] != '\n') {
        out[o++] = '\r';
        out[o++] = '\n';
    }
    out[o] = '\0';
    *len_r = o;
    return out;
}
