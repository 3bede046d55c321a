/*
 * accounts.c -- the accounts file, state_dir/accounts: the mail store's
 * users, aliases, distribution lists and catch-alls, shared by every role
 * (the gateway checks recipients and SMTP AUTH against it, the queue role
 * delivers by it, the store role logs users in). One entry per line:
 *
 *   user  ADDRESS HASH [quota=SIZE] [forward=ADDR,...] [keep=yes|no] [role=ROLE]
 *         [domains=DOMAIN,...] [totp=BASE32] [recovery=SHA256,...]
 *         [apps=NAME:ID:CREATED:HASH,...]
 *   alias ADDRESS TARGET[,TARGET...]
 *   list  ADDRESS MEMBER[,MEMBER...] [post=members|domain|anyone]
 *   catchall DOMAIN TARGET
 *
 * HASH is a crypt(3) hash (yescrypt by moatctl). The older form
 * "ADDRESS:HASH" is read as a user. Changes are written whole to a
 * temporary file, fsynced and renamed, so a reader sees the old file or
 * the new one; readers keep a parsed copy and load it again when the file
 * changes. A role shares one accounts_cache between its event loop and its
 * worker threads: accounts_get hands out the current snapshot with a
 * reference, so a reload never frees what another thread still reads.
 */
#include <crypt.h>
#include <ctype.h>
#include <pthread.h>
#include <errno.h>
#include <fcntl.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/rand.h>
#include "mail.h"

#define MAX_LINE 8192

struct accounts_file {
    struct account_entry *v;
    size_t n;
    unsigned refs;                  /* held by an accounts_cache: its users + 1 */
    struct timespec mtime;
    ino_t ino;
    off_t size;
    char path[1100];
};

static void
entry_free(struct account_entry *e)
{
    free(e->addr);
    free(e->hash);
    free(e->domains);
    free(e->totp);
    free(e->recovery);
    if (e->apps)
        explicit_bzero(e->apps, e->napps * sizeof(*e->apps));
    free(e->apps);
    for (size_t i = 0; i < e->ntargets; i++)
        free(e->targets[i]);
    free(e->targets);
    memset(e, 0, sizeof(*e));
}

static bool
addr_ok(const char *s, bool domain_only)
{
    size_t n = strlen(s);
    if (n == 0 || n > 320)
        return false;
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == ',' || *p == ':' || *p == '<' || *p == '>')
            return false;
    const char *at = strchr(s, '@');
    return domain_only ? at == NULL : (at && at != s && at[1] && !strchr(at + 1, '@'));
}

static int
split_targets(struct account_entry *e, const char *list)
{
    char *buf = xstrdup(list);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (!addr_ok(t, false) || e->ntargets == ACCOUNT_TARGETS_MAX) {
            free(buf);
            return -1;
        }
        e->targets = xrealloc(e->targets, (e->ntargets + 1) * sizeof(char *));
        e->targets[e->ntargets] = xstrdup(t);
        str_lower(e->targets[e->ntargets++]);
    }
    free(buf);
    return e->ntargets ? 0 : -1;
}

/* An app password's name: 1 to ACCOUNT_APP_NAME_MAX of [A-Za-z0-9._-]. */
static bool
app_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > ACCOUNT_APP_NAME_MAX)
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '.' && *s != '_' && *s != '-')
            return false;
    return true;
}

/* The alphabet of app passwords: no 0/o, 1/l to misread. */
static const char app_chars[] = "abcdefghijkmnpqrstuvwxyz23456789";

/* "NAME:ID:CREATED:HASH,..." into e->apps. */
static int
parse_apps(struct account_entry *e, const char *v)
{
    char *buf = xstrdup(v);
    int rc = 0;
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t && rc == 0;
         t = strtok_r(NULL, ",", &save)) {
        char *f[4], *p = t;
        size_t nf = 0;
        for (; nf < 4 && p; nf++) {
            f[nf] = p;
            p = nf < 3 ? strchr(p, ':') : NULL;
            if (p)
                *p++ = '\0';
        }
        char *end;
        long long created = nf == 4 ? strtoll(f[2], &end, 10) : 0;
        if (nf != 4 || !app_name_ok(f[0]) || strlen(f[1]) != ACCOUNT_APP_ID_LEN ||
            strspn(f[1], app_chars) != ACCOUNT_APP_ID_LEN || *end || created < 0 ||
            f[3][0] != '$' || strlen(f[3]) >= sizeof(e->apps[0].hash) ||
            e->napps == ACCOUNT_APPS_MAX) {
            rc = -1;
            break;
        }
        e->apps = xrealloc(e->apps, (e->napps + 1) * sizeof(*e->apps));
        struct account_app *ap = &e->apps[e->napps++];
        memset(ap, 0, sizeof(*ap));
        str_copy(ap->name, f[0], sizeof(ap->name));
        str_copy(ap->id, f[1], sizeof(ap->id));
        ap->created = created;
        str_copy(ap->hash, f[3], sizeof(ap->hash));
    }
    explicit_bzero(buf, strlen(v));
    free(buf);
    return rc;
}

/* One line into an entry: 0, 1 for a blank or comment line, -1 on error. */
/* A list's posting rule: "members", "domain" or "anyone". */
static int
post_parse(const char *v, enum list_post *out)
{
    static const char *const names[] = { [POST_MEMBERS] = "members", [POST_DOMAIN] = "domain",
                                         [POST_ANYONE] = "anyone" };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcmp(v, names[i]) == 0) {
            *out = (enum list_post)i;
            return 0;
        }
    return -1;
}

static int
parse_line(char *line, struct account_entry *e, const char **why)
{
    memset(e, 0, sizeof(*e));
    line[strcspn(line, "\r\n")] = '\0';
    char *p = line;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p == '\0' || *p == '#')
        return 1;
    char *colon = strchr(p, ':'), *space = strpbrk(p, " \t");
    if (colon && (space == NULL || colon < space)) {      /* the older ADDRESS:HASH */
        *colon = '\0';
        char *hash = colon + 1;
        hash[strcspn(hash, ":")] = '\0';
        if (!addr_ok(p, false) || hash[0] == '\0') {
            *why = "bad ADDRESS:HASH line";
            return -1;
        }
        e->kind = ACCT_USER;
        e->addr = xstrdup(p);
        str_lower(e->addr);
        e->hash = xstrdup(hash);
        e->keep = true;
        return 0;
    }
    char *f[16];
    size_t nf = 0;
    for (char *save = NULL, *t = strtok_r(p, " \t", &save); t && nf < 16; t = strtok_r(NULL, " \t", &save))
        f[nf++] = t;
    if (nf < 3) {
        *why = "expected KIND ADDRESS VALUE";
        return -1;
    }
    e->keep = true;
    e->post = POST_MEMBERS;
    if (strcmp(f[0], "user") == 0)
        e->kind = ACCT_USER;
    else if (strcmp(f[0], "alias") == 0)
        e->kind = ACCT_ALIAS;
    else if (strcmp(f[0], "list") == 0)
        e->kind = ACCT_LIST;
    else if (strcmp(f[0], "catchall") == 0)
        e->kind = ACCT_CATCHALL;
    else {
        *why = "unknown kind (user, alias, list, catchall)";
        return -1;
    }
    if (!addr_ok(f[1], e->kind == ACCT_CATCHALL)) {
        *why = e->kind == ACCT_CATCHALL ? "bad domain" : "bad address";
        return -1;
    }
    e->addr = xstrdup(f[1]);
    str_lower(e->addr);
    size_t opt = 3;
    if (e->kind == ACCT_USER) {
        e->hash = xstrdup(f[2]);
    } else if (split_targets(e, f[2]) < 0) {
        *why = "bad target list";
        entry_free(e);
        return -1;
    }
    for (size_t i = opt; i < nf; i++) {
        char *eq = strchr(f[i], '=');
        if (eq == NULL) {
            *why = "expected key=value";
            entry_free(e);
            return -1;
        }
        *eq = '\0';
        const char *k = f[i], *v = eq + 1;
        if (e->kind == ACCT_USER && strcmp(k, "quota") == 0) {
            if (conf_parse_size(v, &e->quota) < 0)
                goto bad;
        } else if (e->kind == ACCT_USER && strcmp(k, "forward") == 0) {
            if (split_targets(e, v) < 0)
                goto bad;
        } else if (e->kind == ACCT_USER && strcmp(k, "keep") == 0) {
            if (strcmp(v, "yes") != 0 && strcmp(v, "no") != 0)
                goto bad;
            e->keep = strcmp(v, "yes") == 0;
        } else if (e->kind == ACCT_USER && strcmp(k, "role") == 0) {
            str_copy(e->role, v, sizeof(e->role));
        } else if (e->kind == ACCT_USER && strcmp(k, "domains") == 0 && v[0]) {
            e->domains = xstrdup(v);
            str_lower(e->domains);
        } else if (e->kind == ACCT_USER && strcmp(k, "totp") == 0 && v[0]) {
            e->totp = xstrdup(v);
        } else if (e->kind == ACCT_USER && strcmp(k, "recovery") == 0 && v[0]) {
            e->recovery = xstrdup(v);
        } else if (e->kind == ACCT_USER && strcmp(k, "apps") == 0 && v[0]) {
            if (parse_apps(e, v) < 0)
                goto bad;
        } else if (e->kind == ACCT_LIST && strcmp(k, "post") == 0) {
            if (post_parse(v, &e->post) < 0)
                goto bad;
        } else {
            goto bad;
        }
    }
    return 0;
bad:
    *why = "bad option";
    entry_free(e);
    return -1;
}

void
accounts_free(struct accounts_file **ap)
{
    struct accounts_file *a = *ap;
    if (a == NULL)
        return;
    for (size_t i = 0; i < a->n; i++)
        entry_free(&a->v[i]);
    free(a->v);
    free(a);
    *ap = NULL;
}

struct accounts_file *
accounts_load(const char *state_dir, char *err, size_t errsize)
{
    struct accounts_file *a = xcalloc(1, sizeof(*a));
    if (paths_get(state_dir, PATH_ACCOUNTS, a->path, sizeof(a->path)) < 0) {
        snprintf(err, errsize, "path too long");
        free(a);
        return NULL;
    }
    FILE *f = fopen(a->path, "re");
    if (f == NULL) {
        if (errno == ENOENT)
            return a;                       /* no accounts yet */
        snprintf(err, errsize, "%s: %s", a->path, strerror(errno));
        free(a);
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) == 0) {
        a->mtime = st.st_mtim;
        a->ino = st.st_ino;
        a->size = st.st_size;
    }
    char *line = xmalloc(MAX_LINE);
    unsigned lineno = 0;
    while (fgets(line, MAX_LINE, f)) {
        lineno++;
        struct account_entry e;
        const char *why = "";
        int rc = parse_line(line, &e, &why);
        if (rc == 1)
            continue;
        if (rc < 0) {
            /* a broken line is skipped, loudly: the others still work */
            log_err("%s:%u: %s", a->path, lineno, why);
            continue;
        }
        a->v = xrealloc(a->v, (a->n + 1) * sizeof(*a->v));
        a->v[a->n++] = e;
    }
    explicit_bzero(line, MAX_LINE);
    free(line);
    fclose(f);
    return a;
}

/* Whether the file on disk is still the one a was read from. */
static bool
unchanged(const struct accounts_file *a, const char *path)
{
    struct stat st;
    bool exists = stat(path, &st) == 0;
    return (!exists && a->ino == 0) ||
           (exists && st.st_ino == a->ino && st.st_size == a->size &&
            st.st_mtim.tv_sec == a->mtime.tv_sec && st.st_mtim.tv_nsec == a->mtime.tv_nsec);
}

struct accounts_cache {
    pthread_mutex_t mu;
    struct accounts_file *cur;
    char state_dir[1024];
    char path[1100];
};

struct accounts_cache *
accounts_cache_new(const char *state_dir, char *err, size_t errsize)
{
    struct accounts_file *a = accounts_load(state_dir, err, errsize);
    if (a == NULL)
        return NULL;
    struct accounts_cache *c = xcalloc(1, sizeof(*c));
    pthread_mutex_init(&c->mu, NULL);
    str_copy(c->state_dir, state_dir, sizeof(c->state_dir));
    paths_get(state_dir, PATH_ACCOUNTS, c->path, sizeof(c->path));
    a->refs = 1;
    c->cur = a;
    return c;
}

static void
unref(struct accounts_file *a)
{
    if (a && __atomic_sub_fetch(&a->refs, 1, __ATOMIC_ACQ_REL) == 0)
        accounts_free(&a);
}

void
accounts_cache_free(struct accounts_cache **cp)
{
    struct accounts_cache *c = *cp;
    if (c == NULL)
        return;
    unref(c->cur);
    pthread_mutex_destroy(&c->mu);
    free(c);
    *cp = NULL;
}

const struct accounts_file *
accounts_get(struct accounts_cache *c)
{
    pthread_mutex_lock(&c->mu);
    if (!unchanged(c->cur, c->path)) {
        char err[512];
        struct accounts_file *n = accounts_load(c->state_dir, err, sizeof(err));
        if (n == NULL) {
            log_err("accounts: %s (keeping the accounts already read)", err);
        } else {
            n->refs = 1;
            unref(c->cur);
            c->cur = n;
        }
    }
    struct accounts_file *a = c->cur;
    __atomic_add_fetch(&a->refs, 1, __ATOMIC_ACQ_REL);
    pthread_mutex_unlock(&c->mu);
    return a;
}

void
accounts_put(const struct accounts_file **ap)
{
    if (*ap == NULL)
        return;
    unref((struct accounts_file *)*ap);
    *ap = NULL;
}

const struct account_entry *
accounts_find(const struct accounts_file *a, enum account_kind kind, const char *addr)
{
    for (size_t i = 0; a && i < a->n; i++)
        if (a->v[i].kind == kind && strcasecmp(a->v[i].addr, addr) == 0)
            return &a->v[i];
    return NULL;
}

size_t
accounts_count(const struct accounts_file *a)
{
    return a ? a->n : 0;
}

const struct account_entry *
accounts_at(const struct accounts_file *a, size_t i)
{
    return a && i < a->n ? &a->v[i] : NULL;
}

int
accounts_check_password(const struct account_entry *u, const char *pass)
{
    if (u == NULL || u->kind != ACCT_USER || u->hash == NULL)
        return 0;
    struct crypt_data *cd = xcalloc(1, sizeof(*cd));
    const char *h = crypt_r(pass, u->hash, cd);
    int ok = h != NULL && h[0] != '*' && strcmp(h, u->hash) == 0;
    explicit_bzero(cd, sizeof(*cd));
    free(cd);
    return ok;
}

/* A hash for unknown users' passwords to be checked against, so that an
 * unknown address costs as long as a known one and timing tells no one
 * which accounts exist. */
static pthread_once_t dummy_once = PTHREAD_ONCE_INIT;
static char dummy_hash[256];

static void
make_dummy(void)
{
    char err[200], pw[33];
    unsigned char r[16];
    if (RAND_bytes(r, sizeof(r)) != 1)
        memset(r, 0x5a, sizeof(r));     /* still a hash no password is likely to match */
    for (size_t i = 0; i < sizeof(r); i++)
        snprintf(pw + 2 * i, 3, "%02x", r[i]);
    if (accounts_hash(pw, dummy_hash, sizeof(dummy_hash), err, sizeof(err)) < 0)
        dummy_hash[0] = '\0';
}

int
accounts_check_hash(const char *hash, const char *pass)
{
    if (hash == NULL || hash[0] == '\0') {
        pthread_once(&dummy_once, make_dummy);
        struct account_entry dummy = { .kind = ACCT_USER, .hash = dummy_hash };
        if (dummy_hash[0])
            accounts_check_password(&dummy, pass);
        return 0;
    }
    struct account_entry u = { .kind = ACCT_USER, .hash = (char *)hash };
    return accounts_check_password(&u, pass);
}

void
accounts_login_prepare(const char *state_dir, const struct account_entry *u,
                       struct account_login *l)
{
    memset(l, 0, sizeof(*l));
    str_copy(l->state_dir, state_dir, sizeof(l->state_dir));
    if (u == NULL || u->kind != ACCT_USER)
        return;
    if (u->hash)
        str_copy(l->hash, u->hash, sizeof(l->hash));
    l->apps_only = u->totp != NULL;
    for (size_t i = 0; i < u->napps && l->napps < ACCOUNT_APPS_MAX; i++) {
        str_copy(l->apps[l->napps].id, u->apps[i].id, sizeof(l->apps[0].id));
        str_copy(l->apps[l->napps++].hash, u->apps[i].hash, sizeof(l->apps[0].hash));
    }
}

static void
app_path(const char *state_dir, const char *id, char *out, size_t size)
{
    if (paths_in(state_dir, PATH_APP_USED, id, out, size) < 0)
        out[0] = '\0';
}

/* The app password's last use, as the mtime of app-used/ID: a role
 * touches it, no one rewrites the accounts file for it. */
static void
app_used(const char *state_dir, const char *id)
{
    char path[1200];
    app_path(state_dir, id, path, sizeof(path));
    int fd = path[0] ? open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0640) : -1;
    if (fd < 0) {
        log_warn("app password %s: cannot record its use: %s", id, strerror(errno));
        return;
    }
    futimens(fd, NULL);
    close(fd);
}

int
accounts_check_login(const struct account_login *l, const char *pass)
{
    /* An app password is known by its first characters: exactly one hash
     * is checked, the password's, the app password's or the dummy. */
    size_t n = strlen(pass);
    for (size_t i = 0; n == ACCOUNT_APP_PW_LEN && i < l->napps; i++)
        if (memcmp(pass, l->apps[i].id, ACCOUNT_APP_ID_LEN) == 0) {
            int ok = accounts_check_hash(l->apps[i].hash, pass);
            if (ok == 1)
                app_used(l->state_dir, l->apps[i].id);
            return ok;
        }
    if (l->apps_only) {     /* two-factor on: the password alone opens nothing */
        accounts_check_hash(NULL, pass);
        return 0;
    }
    return accounts_check_hash(l->hash, pass);
}

time_t
accounts_app_last_used(const char *state_dir, const struct account_app *app)
{
    char path[1200];
    struct stat st;
    app_path(state_dir, app->id, path, sizeof(path));
    return path[0] && stat(path, &st) == 0 ? st.st_mtime : 0;
}

/* ------------------------------------------------------------ writing */

static void
write_entry(FILE *out, const struct account_entry *e)
{
    static const char *kinds[] = { "user", "alias", "list", "catchall" };
    fprintf(out, "%s %s ", kinds[e->kind], e->addr);
    if (e->kind == ACCT_USER)
        fputs(e->hash, out);
    for (size_t i = 0; i < e->ntargets; i++) {
        if (e->kind == ACCT_USER && i == 0)
            fputs(" forward=", out);
        fprintf(out, "%s%s", i ? "," : "", e->targets[i]);
    }
    if (e->kind == ACCT_USER) {
        if (e->quota)
            fprintf(out, " quota=%llu", (unsigned long long)e->quota);
        if (!e->keep)
            fputs(" keep=no", out);
        if (e->role[0])
            fprintf(out, " role=%s", e->role);
        if (e->domains)
            fprintf(out, " domains=%s", e->domains);
        if (e->totp)
            fprintf(out, " totp=%s", e->totp);
        if (e->recovery)
            fprintf(out, " recovery=%s", e->recovery);
        for (size_t i = 0; i < e->napps; i++)
            fprintf(out, "%s%s:%s:%lld:%s", i ? "," : " apps=", e->apps[i].name, e->apps[i].id,
                    e->apps[i].created, e->apps[i].hash);
    }
    if (e->kind == ACCT_LIST && e->post != POST_MEMBERS)
        fprintf(out, " post=%s", e->post == POST_DOMAIN ? "domain" : "anyone");
    fputc('\n', out);
}

/* With node.share, the new file (tmp) goes to Redis before it replaces
 * the one that was edited (path): Redis holds the cluster's copy. */
static int
share(const char *path, const char *tmp, char *err, size_t errsize)
{
    if (!cluster_share_on())
        return 0;
    size_t oldlen = 0, len = 0;
    char *old = file_read(path, 16u << 20, &oldlen), *data = file_read(tmp, 16u << 20, &len);
    int rc = -1;
    if (data == NULL)
        snprintf(err, errsize, "%s: %s", tmp, strerror(errno));
    else
        rc = cluster_share_put(SHARE_ACCOUNTS, old, oldlen, NULL, data, len, err, errsize);
    if (old)
        explicit_bzero(old, oldlen);
    if (data)
        explicit_bzero(data, len);
    free(old);
    free(data);
    return rc;
}

int
accounts_save(const char *state_dir, const struct account_entry *v, size_t n, char *err,
              size_t errsize)
{
    char path[1100], tmp[1200];
    if (paths_get(state_dir, PATH_ACCOUNTS, path, sizeof(path)) < 0 ||
        paths_get(state_dir, PATH_ACCOUNTS_TMP, tmp, sizeof(tmp)) < 0) {
        snprintf(err, errsize, "path too long");
        return -1;
    }
    FILE *out = fopen(tmp, "we");
    if (out == NULL) {
        snprintf(err, errsize, "%s: %s", tmp, strerror(errno));
        return -1;
    }
    fchmod(fileno(out), 0640);
    /* The roles run as the state directory's owner and must read it. */
    struct stat st;
    if (geteuid() == 0 && stat(state_dir, &st) == 0 &&
        fchown(fileno(out), st.st_uid, st.st_gid) < 0) {
        snprintf(err, errsize, "chown %s: %s", tmp, strerror(errno));
        fclose(out);
        unlink(tmp);
        return -1;
    }
    fputs("# moat accounts: user, alias, list, catchall (see README); written by moatctl\n", out);
    for (size_t i = 0; i < n; i++)
        if (v[i].addr)
            write_entry(out, &v[i]);
    if (fflush(out) != 0 || fsync(fileno(out)) < 0 || fclose(out) != 0) {
        snprintf(err, errsize, "%s: %s", tmp, strerror(errno));
        unlink(tmp);
        return -1;
    }
    if (share(path, tmp, err, errsize) < 0) {
        unlink(tmp);
        return -1;
    }
    if (rename(tmp, path) < 0) {
        snprintf(err, errsize, "rename %s: %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    fsync_dir(state_dir);
    return 0;
}

int
accounts_hash(const char *pass, char *out, size_t size, char *err, size_t errsize)
{
    char setting[128];
    if (crypt_gensalt_rn("$y$", 0, NULL, 0, setting, sizeof(setting)) == NULL) {
        snprintf(err, errsize, "crypt_gensalt: %s", strerror(errno));
        return -1;
    }
    struct crypt_data *cd = xcalloc(1, sizeof(*cd));
    const char *h = crypt_r(pass, setting, cd);
    int rc = 0;
    if (h == NULL || h[0] == '*') {
        snprintf(err, errsize, "crypt failed");
        rc = -1;
    } else {
        str_copy(out, h, size);
    }
    explicit_bzero(cd, sizeof(*cd));
    free(cd);
    return rc;
}

/* ------------------------------------------------- editing (moatctl) */

struct account_entry *
accounts_entries(struct accounts_file *a, size_t *n_r)
{
    *n_r = a->n;
    return a->v;
}

struct account_entry *
accounts_add(struct accounts_file *a, enum account_kind kind, const char *addr)
{
    a->v = xrealloc(a->v, (a->n + 1) * sizeof(*a->v));
    struct account_entry *e = &a->v[a->n++];
    memset(e, 0, sizeof(*e));
    e->kind = kind;
    e->addr = xstrdup(addr);
    str_lower(e->addr);
    e->keep = true;
    e->post = POST_MEMBERS;
    return e;
}

int
accounts_remove(struct accounts_file *a, enum account_kind kind, const char *addr)
{
    for (size_t i = 0; i < a->n; i++)
        if (a->v[i].kind == kind && strcasecmp(a->v[i].addr, addr) == 0) {
            entry_free(&a->v[i]);
            memmove(&a->v[i], &a->v[i + 1], (a->n - i - 1) * sizeof(*a->v));
            a->n--;
            return 0;
        }
    return -1;
}

int
accounts_set_targets(struct account_entry *e, const char *list)
{
    for (size_t i = 0; i < e->ntargets; i++)
        free(e->targets[i]);
    free(e->targets);
    e->targets = NULL;
    e->ntargets = 0;
    return list && list[0] ? split_targets(e, list) : 0;
}

int
accounts_set_option(struct account_entry *e, const char *kv)
{
    char buf[2048];
    str_copy(buf, kv, sizeof(buf));
    char *eq = strchr(buf, '=');
    if (eq == NULL)
        return -1;
    *eq = '\0';
    const char *k = buf, *v = eq + 1;
    if (e->kind == ACCT_USER && strcmp(k, "quota") == 0)
        return conf_parse_size(v, &e->quota);
    if (e->kind == ACCT_USER && strcmp(k, "forward") == 0)
        return accounts_set_targets(e, v);
    if (e->kind == ACCT_USER && strcmp(k, "keep") == 0 && (!strcmp(v, "yes") || !strcmp(v, "no"))) {
        e->keep = strcmp(v, "yes") == 0;
        return 0;
    }
    if (e->kind == ACCT_USER && strcmp(k, "role") == 0 &&
        (!strcmp(v, "user") || !strcmp(v, "admin") || !strcmp(v, "superadmin"))) {
        str_copy(e->role, strcmp(v, "user") == 0 ? "" : v, sizeof(e->role));
        return 0;
    }
    if (e->kind == ACCT_LIST && strcmp(k, "post") == 0)
        return post_parse(v, &e->post);
    char **field = e->kind != ACCT_USER ? NULL
                   : strcmp(k, "domains") == 0 ? &e->domains
                   : strcmp(k, "totp") == 0 ? &e->totp
                   : strcmp(k, "recovery") == 0 ? &e->recovery : NULL;
    if (field) {
        for (const char *c = v; *c; c++)
            if ((unsigned char)*c <= ' ' || *c == '=')
                return -1;
        free(*field);
        *field = v[0] ? xstrdup(v) : NULL;
        if (field == &e->domains && *field)
            str_lower(*field);
        return 0;
    }
    return -1;
}

int
accounts_set_hash(struct account_entry *e, const char *hash)
{
    free(e->hash);
    e->hash = xstrdup(hash);
    return 0;
}

int
accounts_app_add(struct account_entry *e, const char *name, char pass[ACCOUNT_APP_PW_LEN + 1],
                 char *err, size_t errsize)
{
    if (e->kind != ACCT_USER) {
        snprintf(err, errsize, "not a user");
        return -1;
    }
    if (!app_name_ok(name)) {
        snprintf(err, errsize, "bad name: 1 to %d letters, digits, '.', '_' or '-'",
                 ACCOUNT_APP_NAME_MAX);
        return -1;
    }
    for (size_t i = 0; i < e->napps; i++)
        if (strcmp(e->apps[i].name, name) == 0) {
            snprintf(err, errsize, "an app password called %s exists already", name);
            return -1;
        }
    if (e->napps >= ACCOUNT_APPS_MAX) {
        snprintf(err, errsize, "%d app passwords at most: revoke one first", ACCOUNT_APPS_MAX);
        return -1;
    }
    unsigned char r[ACCOUNT_APP_PW_LEN];
    bool unique;
    do {
        if (RAND_bytes(r, sizeof(r)) != 1) {
            snprintf(err, errsize, "no random bytes");
            return -1;
        }
        for (size_t i = 0; i < ACCOUNT_APP_PW_LEN; i++)
            pass[i] = app_chars[r[i] & 31];     /* 32 characters: 5 bits each */
        pass[ACCOUNT_APP_PW_LEN] = '\0';
        unique = true;
        for (size_t i = 0; i < e->napps; i++)
            unique = unique && memcmp(e->apps[i].id, pass, ACCOUNT_APP_ID_LEN) != 0;
    } while (!unique);
    explicit_bzero(r, sizeof(r));
    struct account_app ap;
    memset(&ap, 0, sizeof(ap));
    if (accounts_hash(pass, ap.hash, sizeof(ap.hash), err, errsize) < 0) {
        explicit_bzero(pass, ACCOUNT_APP_PW_LEN + 1);
        return -1;
    }
    str_copy(ap.name, name, sizeof(ap.name));
    memcpy(ap.id, pass, ACCOUNT_APP_ID_LEN);
    ap.created = (long long)time(NULL);
    e->apps = xrealloc(e->apps, (e->napps + 1) * sizeof(*e->apps));
    e->apps[e->napps++] = ap;
    return 0;
}

int
accounts_app_del(const char *state_dir, struct account_entry *e, const char *name)
{
    for (size_t i = 0; i < e->napps; i++)
        if (strcmp(e->apps[i].name, name) == 0) {
            char path[1200];
            app_path(state_dir, e->apps[i].id, path, sizeof(path));
            if (path[0])
                unlink(path);
            memmove(&e->apps[i], &e->apps[i + 1], (e->napps - i - 1) * sizeof(*e->apps));
            e->napps--;
            return 0;
        }
    return -1;
}
