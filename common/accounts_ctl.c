/*
 * accounts_ctl.c -- moatctl's account commands, on the accounts file
 * (accounts.c): user add|passwd|set|del|list, and add|del|list of aliases,
 * distribution lists and catch-alls; the kind is the command's first
 * word; user app-password add|list|del (the app passwords mail clients
 * log in with). The file is loaded, changed and saved whole (owned by the
 * daemon's user, which reads it). A new password or a removal ends the
 * account's web sign-ins: the web role's, installed by moatctl
 * (accounts_ctl_set_revoke), as conf_set_extra_check installs the
 * plugins' checks.
 */
#include <errno.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "mail.h"

static accounts_revoke_fn *revoke_fn;

void
accounts_ctl_set_revoke(accounts_revoke_fn *fn)
{
    revoke_fn = fn;
}

static enum account_kind
kind_of(const char *cmd)
{
    static const char *const kinds[] = { "user", "alias", "list", "catchall" };
    size_t n = strcspn(cmd, " ");
    for (int k = 0; k < 4; k++)
        if (strlen(kinds[k]) == n && strncmp(cmd, kinds[k], n) == 0)
            return (enum account_kind)k;
    return ACCT_USER;
}

/* The accounts file loaded for a change, saved whole afterwards. */
static struct accounts_file *
file_open(const struct moat_config *cfg, bool change)
{
    char err[600];
    if (mkdir_p(cfg->state_dir, 0750) < 0) {
        fprintf(stderr, "moatctl: mkdir %s: %s\n", cfg->state_dir, strerror(errno));
        return NULL;
    }
    /* with node.share, the cluster's copy is the one to edit or list */
    if (cluster_share_pull(cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "moatctl: the shared accounts are kept in Redis, which cannot be "
                        "reached: %s%s\n", err, change ? "" : " (this node's copy follows)");
        if (change)
            return NULL;
    }
    struct accounts_file *a = accounts_load(cfg->state_dir, err, sizeof(err));
    if (a == NULL)
        fprintf(stderr, "moatctl: %s\n", err);
    return a;
}

static int
file_commit(const struct moat_config *cfg, struct accounts_file **ap, const char *what)
{
    char err[600];
    size_t n;
    struct account_entry *v = accounts_entries(*ap, &n);
    int rc = accounts_save(cfg->state_dir, v, n, err, sizeof(err));
    accounts_free(ap);
    if (rc < 0) {
        fprintf(stderr, "moatctl: %s\n", err);
        return 1;
    }
    /* The roles run as cfg->user and must read the file. */
    struct passwd *pw = geteuid() == 0 ? getpwnam(cfg->user) : NULL;
    char path[1100];
    paths_get(cfg->state_dir, PATH_ACCOUNTS, path, sizeof(path));
    if (pw && chown(path, pw->pw_uid, pw->pw_gid) < 0)
        fprintf(stderr, "moatctl: chown %s: %s\n", path, strerror(errno));
    printf("%s\n", what);
    return 0;
}

/* After a new password or a removal (rc: how that went), the account's
 * web sessions and API tokens end: whoever had the old password loses
 * what they made with it. */
static int
revoke_logins(const struct moat_config *cfg, const char *addr, int rc)
{
    char err[300];
    if (rc == 0 && revoke_fn && revoke_fn(cfg, addr, err, sizeof(err)) < 0) {
        fprintf(stderr, "moatctl: %s: its web sessions and API tokens could not all be revoked "
                "(%s): run it again\n", addr, err);
        return 1;
    }
    return rc;
}

static int
read_password(const char *user, char *hash, size_t size)
{
    char pass[512], err[256];
    if (isatty(0))
        fprintf(stderr, "password for %s: ", user);
    if (fgets(pass, sizeof(pass), stdin) == NULL) {
        fprintf(stderr, "moatctl: no password given\n");
        return -1;
    }
    pass[strcspn(pass, "\r\n")] = '\0';
    if (strlen(pass) < 8) {
        explicit_bzero(pass, sizeof(pass));
        fprintf(stderr, "moatctl: password too short (8 characters at least)\n");
        return -1;
    }
    int rc = accounts_hash(pass, hash, size, err, sizeof(err));
    explicit_bzero(pass, sizeof(pass));
    if (rc < 0)
        fprintf(stderr, "moatctl: %s\n", err);
    return rc;
}

/* The address (a domain for a catch-all) an account command names, lower
 * case; -1, said on stderr, when it is none. */
static int
address_of(const char *arg, enum account_kind kind, char *addr, size_t size)
{
    str_copy(addr, arg, size);
    for (char *p = addr; *p; p++)
        *p = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
    const char *at = strchr(addr, '@');
    bool ok = addr[0] != '\0' && strlen(addr) <= 320 && !strpbrk(addr, " \t\r\n:,<>") &&
              (kind == ACCT_CATCHALL ? at == NULL
                                     : at && at != addr && at[1] && !strchr(at + 1, '@'));
    if (!ok)
        fprintf(stderr, "moatctl: '%s' is not %s\n", arg,
                kind == ACCT_CATCHALL ? "a domain" : "an address");
    return ok ? 0 : -1;
}

/* The start of a command on one account, argv[0]: its address, checked,
 * and the file loaded. 0; -1 when there is no address (usage); 1 when
 * something is wrong, said on stderr. */
static int
begin(const struct moat_config *cfg, enum account_kind kind, int argc, char **argv,
      char addr[330], struct accounts_file **a_r)
{
    if (argc < 1)
        return -1;
    if (address_of(argv[0], kind, addr, 330) < 0 || (*a_r = file_open(cfg, true)) == NULL)
        return 1;
    return 0;
}

/* The options after the address ("quota=1g", ...) into e. */
static int
set_options(struct account_entry *e, const char *addr, int argc, char **argv)
{
    for (int i = 0; i < argc; i++)
        if (accounts_set_option(e, argv[i]) < 0) {
            fprintf(stderr, "moatctl: %s: bad option '%s'\n", addr, argv[i]);
            return -1;
        }
    return 0;
}

/* One entry of a listing as a JSON object. */
static void
list_json(struct jbuf *b, const struct account_entry *e, enum account_kind kind)
{
    jb_obj(b);
    jb_kstr(b, "address", e->addr);
    jb_key(b, kind == ACCT_USER ? "forward" : kind == ACCT_LIST ? "members" : "targets");
    jb_arr(b);
    for (size_t t = 0; t < e->ntargets; t++)
        jb_str(b, e->targets[t]);
    jb_arr_end(b);
    if (kind == ACCT_USER) {
        jb_kint(b, "quota", (long long)e->quota);
        jb_kbool(b, "keep", e->keep);
        jb_kstr(b, "role", e->role);
        jb_kbool(b, "totp", e->totp != NULL);
    }
    if (kind == ACCT_LIST)
        jb_kstr(b, "post", e->post == POST_ANYONE ? "anyone" : e->post == POST_DOMAIN ? "domain"
                                                                                   : "members");
    jb_obj_end(b);
}

int
accounts_ctl_list(const struct moat_config *cfg, const char *cmd, int argc, char **argv)
{
    enum account_kind kind = kind_of(cmd);
    bool json = argv_take_flag(&argc, argv, "--json");
    char addr[330];
    if (argc != 0)      /* words after list: an address where none belongs */
        return address_of(argv[0], kind, addr, sizeof(addr)) < 0 ? 1 : -1;
    struct accounts_file *a = file_open(cfg, false);
    if (a == NULL)
        return 1;
    struct jbuf b = { 0 };
    if (json)
        jb_arr(&b);
    for (size_t i = 0; i < accounts_count(a); i++) {
        const struct account_entry *e = accounts_at(a, i);
        if (e->kind != kind)
            continue;
        if (json) {
            list_json(&b, e, kind);
            continue;
        }
        printf("%s", e->addr);
        for (size_t t = 0; t < e->ntargets; t++)
            printf("%s%s", t ? "," : (kind == ACCT_USER ? " forward=" : " "), e->targets[t]);
        if (kind == ACCT_USER && e->quota)
            printf(" quota=%llu", (unsigned long long)e->quota);
        if (kind == ACCT_USER && !e->keep)
            printf(" keep=no");
        if (kind == ACCT_USER && e->role[0])
            printf(" role=%s", e->role);
        if (kind == ACCT_LIST)
            printf(" post=%s", e->post == POST_ANYONE ? "anyone"
                               : e->post == POST_DOMAIN ? "domain" : "members");
        printf("\n");
    }
    if (json) {
        jb_arr_end(&b);
        printf("%s\n", b.p);
        jb_free(&b);
    }
    accounts_free(&a);
    return 0;
}

int
accounts_ctl_add(const struct moat_config *cfg, const char *cmd, int argc, char **argv)
{
    enum account_kind kind = kind_of(cmd);
    char addr[330], msg[800];
    struct accounts_file *a;
    int rc = begin(cfg, kind, argc, argv, addr, &a);
    if (rc != 0)
        return rc;
    if (accounts_find(a, kind, addr) ||
        (kind != ACCT_USER && accounts_find(a, ACCT_USER, addr)) ||
        (kind == ACCT_USER && (accounts_find(a, ACCT_ALIAS, addr) || accounts_find(a, ACCT_LIST, addr)))) {
        fprintf(stderr, "moatctl: %s exists already\n", addr);
        accounts_free(&a);
        return 1;
    }
    struct account_entry *e = accounts_add(a, kind, addr);
    int opt = 1;
    if (kind == ACCT_USER) {
        char hash[256];
        if (read_password(addr, hash, sizeof(hash)) < 0) {
            accounts_free(&a);
            return 1;
        }
        accounts_set_hash(e, hash);
    } else {
        if (argc < 2 || accounts_set_targets(e, argv[1]) < 0 ||
            (kind == ACCT_CATCHALL && e->ntargets != 1)) {
            fprintf(stderr, "moatctl: %.*s add ADDRESS TARGET[,TARGET...]\n",
                    (int)strcspn(cmd, " "), cmd);
            accounts_free(&a);
            return 1;
        }
        opt = 2;
    }
    if (set_options(e, addr, argc - opt, argv + opt) < 0) {
        accounts_free(&a);
        return 1;
    }
    snprintf(msg, sizeof(msg), kind == ACCT_USER ? "%s: password set" : "%s: added", addr);
    return file_commit(cfg, &a, msg);
}

/* The user an account command names, in the loaded file; NULL, said. */
static struct account_entry *
user_of(struct accounts_file *a, const char *addr)
{
    struct account_entry *e = (struct account_entry *)accounts_find(a, ACCT_USER, addr);
    if (e == NULL)
        fprintf(stderr, "moatctl: %s: no such user\n", addr);
    return e;
}

int
accounts_ctl_passwd(const struct moat_config *cfg, const char *cmd, int argc, char **argv)
{
    (void)cmd;
    char addr[330], msg[800], hash[256];
    struct accounts_file *a;
    int rc = begin(cfg, ACCT_USER, argc, argv, addr, &a);
    if (rc != 0)
        return rc;
    struct account_entry *e = user_of(a, addr);
    if (e == NULL || argc != 1 || read_password(addr, hash, sizeof(hash)) < 0) {
        accounts_free(&a);
        return 1;
    }
    accounts_set_hash(e, hash);
    snprintf(msg, sizeof(msg), "%s: password set", addr);
    return revoke_logins(cfg, addr, file_commit(cfg, &a, msg));
}

int
accounts_ctl_set(const struct moat_config *cfg, const char *cmd, int argc, char **argv)
{
    (void)cmd;
    char addr[330], msg[800];
    struct accounts_file *a;
    int rc = begin(cfg, ACCT_USER, argc, argv, addr, &a);
    if (rc != 0)
        return rc;
    struct account_entry *e = user_of(a, addr);
    if (e == NULL || set_options(e, addr, argc - 1, argv + 1) < 0) {
        accounts_free(&a);
        return 1;
    }
    snprintf(msg, sizeof(msg), "%s: changed", addr);
    return file_commit(cfg, &a, msg);
}

int
accounts_ctl_del(const struct moat_config *cfg, const char *cmd, int argc, char **argv)
{
    enum account_kind kind = kind_of(cmd);
    char addr[330], msg[800];
    struct accounts_file *a;
    if (argc != 1)
        return -1;
    int rc = begin(cfg, kind, argc, argv, addr, &a);
    if (rc != 0)
        return rc;
    if (accounts_remove(a, kind, addr) < 0) {
        fprintf(stderr, "moatctl: %s: no such %.*s\n", addr, (int)strcspn(cmd, " "), cmd);
        accounts_free(&a);
        return 1;
    }
    snprintf(msg, sizeof(msg), "%s: removed", addr);
    rc = file_commit(cfg, &a, msg);
    return kind == ACCT_USER ? revoke_logins(cfg, addr, rc) : rc;
}

/* ------------------------------------------- user app-password ... */

static int
app_add(const struct moat_config *cfg, struct accounts_file **ap, struct account_entry *e,
        const char *addr, const char *name)
{
    char pass[ACCOUNT_APP_PW_LEN + 1], err[300], msg[800];
    if (accounts_app_add(e, name, pass, err, sizeof(err)) < 0) {
        fprintf(stderr, "moatctl: %s: %s\n", addr, err);
        accounts_free(ap);
        return 1;
    }
    snprintf(msg, sizeof(msg), "%s: app password %s: %s\n"
             "(shown this once: give it to the mail client for IMAP, POP3 and SMTP)", addr, name,
             pass);
    explicit_bzero(pass, sizeof(pass));
    int rc = file_commit(cfg, ap, msg);
    explicit_bzero(msg, sizeof(msg));
    return rc;
}

static void
print_time(const char *label, time_t t)
{
    char buf[40] = "never";
    struct tm tm;
    if (t > 0 && gmtime_r(&t, &tm))
        strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
    printf(" %s=%s", label, buf);
}

int
accounts_ctl_app(const struct moat_config *cfg, const char *cmd, int argc, char **argv)
{
    (void)cmd;
    if (argc < 2)
        return -1;
    const char *verb = argv[0];
    bool add = strcmp(verb, "add") == 0, del = strcmp(verb, "del") == 0,
         list = strcmp(verb, "list") == 0;
    if (!(((add || del) && argc == 3) || (list && argc == 2)))
        return -1;
    char addr[330], msg[800];
    struct accounts_file *a;
    int rc = begin(cfg, ACCT_USER, argc - 1, argv + 1, addr, &a);
    if (rc != 0)
        return rc;
    struct account_entry *e = user_of(a, addr);
    if (e == NULL) {
        accounts_free(&a);
        return 1;
    }
    if (add)
        return app_add(cfg, &a, e, addr, argv[2]);
    if (list) {
        for (size_t i = 0; i < e->napps; i++) {
            printf("%s", e->apps[i].name);
            print_time("created", (time_t)e->apps[i].created);
            print_time("last_used", accounts_app_last_used(cfg->state_dir, &e->apps[i]));
            printf("\n");
        }
        accounts_free(&a);
        return 0;
    }
    if (accounts_app_del(cfg->state_dir, e, argv[2]) < 0) {
        fprintf(stderr, "moatctl: %s: no app password called %s\n", addr, argv[2]);
        accounts_free(&a);
        return 1;
    }
    snprintf(msg, sizeof(msg), "%s: app password %s revoked", addr, argv[2]);
    return file_commit(cfg, &a, msg);
}
