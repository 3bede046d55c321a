/*
 * domains_ctl.c -- moatctl's domain commands. The domains Moat takes mail
 * for are config (domains { } in moatd.conf); the ones an admin adds from
 * the command line live in state_dir/domains.conf, the inside of a
 * domains { } section that conf.c reads after the config file and checks
 * the same way (its problems named by that file and line). add and del
 * write that file whole (temporary file, fsync, rename), check the config
 * with it, put the old one back if the check fails, and then ask a running
 * moatd to reload (supervisor_ctl.c), reporting what it says. A domain
 * written in moatd.conf is changed there, by hand.
 *
 *   domain add NAME local|relay [relay_to=HOST:PORT] [junk=true]
 *   domain del NAME
 *   domain list [--json]
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include "mail.h"

static void
put_quoted(struct jbuf *t, const char *v)
{
    jb_raw(t, "\"", 1);
    for (const char *p = v; *p; p++) {
        char esc[8];
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = *p;
            jb_raw(t, esc, 2);
        } else if ((unsigned char)*p < 0x20) {
            snprintf(esc, sizeof(esc), "\\u%04x", (unsigned char)*p);
            jb_raw(t, esc, 6);
        } else {
            jb_raw(t, p, 1);
        }
    }
    jb_raw(t, "\"", 1);
}

/* A parsed node written back in the config's syntax. */
static void
put_node(struct jbuf *t, const struct conf_node *n, int depth)
{
    for (int i = 0; i < depth; i++)
        jb_raw(t, "    ", 4);
    if (n->key) {
        jb_raw(t, n->key, strlen(n->key));
        jb_raw(t, n->type == CONF_SCALAR ? " = " : " ", n->type == CONF_SCALAR ? 3 : 1);
    }
    if (n->type == CONF_SCALAR) {
        if (n->quoted)
            put_quoted(t, n->value);
        else
            jb_raw(t, n->value, strlen(n->value));
        jb_raw(t, n->key ? ";\n" : ",\n", 2);
        return;
    }
    bool obj = n->type == CONF_OBJECT;
    jb_raw(t, obj ? "{\n" : "[\n", 2);
    for (const struct conf_node *k = n->child; k; k = k->next)
        put_node(t, k, depth + 1);
    for (int i = 0; i < depth; i++)
        jb_raw(t, "    ", 4);
    jb_raw(t, obj ? "}\n" : "]\n", 2);
}

static void
report_stderr(const char *msg, void *ctx)
{
    (void)ctx;
    fprintf(stderr, "  %s\n", msg);
}

/* domains.conf's parsed tree (an empty object when there is none); NULL
 * with why on stderr. */
static struct conf_node *
read_file(const char *path)
{
    char err[512];
    FILE *f = fopen(path, "re");
    if (f == NULL && errno == ENOENT)
        return conf_parse("", 0, err, sizeof(err));
    if (f == NULL) {
        fprintf(stderr, "moatctl: domain: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    struct jbuf t = { 0 };
    char buf[8192];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0 && t.len < 4 * 1024 * 1024)
        jb_raw(&t, buf, n);
    fclose(f);
    struct conf_node *root = conf_parse(t.p ? t.p : "", t.len, err, sizeof(err));
    jb_free(&t);
    if (root == NULL)
        fprintf(stderr, "moatctl: domain: %s: %s\n", path, err);
    return root;
}

/* text as the new domains.conf, if the config checks with it; the old one
 * back otherwise. 0, or 1 after saying why. The file is written as the
 * owner of state_dir (the daemon's user must read it). */
static int
replace_file(const struct moat_config *cfg, const char *path, const struct jbuf *text)
{
    char tmp[1300], old[1300];
    if (str_fmt(tmp, sizeof(tmp), "%s.tmp", path) < 0 || str_fmt(old, sizeof(old), "%s.old", path) < 0)
        return 1;
    bool had = access(path, F_OK) == 0;
    size_t before_len = 0;
    char *before = file_read(path, 4 * 1024 * 1024, &before_len);
    unlink(old);
    int owner = paths_as_owner(cfg->state_dir);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0640);
    bool ok = fd >= 0 && write_full(fd, text->p ? text->p : "", text->len) == 0 &&
              fsync(fd) == 0 && (!had || link(path, old) == 0) && rename(tmp, path) == 0;
    int saved = errno;
    if (fd >= 0)
        close(fd);
    if (owner > 0)
        paths_as_root();
    if (!ok) {
        fprintf(stderr, "moatctl: domain: %s: %s\n", path, strerror(saved));
        unlink(tmp);
        unlink(old);
        free(before);
        return 1;
    }
    struct moat_config check;
    int rc = 0;
    char err[800];
    if (conf_load(cfg->path, &check, report_stderr, NULL) < 0) {
        fprintf(stderr, "moatctl: domain: the config does not load with that (above); %s is "
                        "as it was\n", path);
        rc = 1;
    } else if (cluster_share_put(SHARE_DOMAINS, before, before_len, NULL,
                                 text->p ? text->p : "", text->len, err, sizeof(err)) < 0) {
        fprintf(stderr, "moatctl: domain: %s; %s is as it was\n", err, path);
        rc = 1;
    }
    if (rc != 0) {
        if (had ? rename(old, path) < 0 : unlink(path) < 0)
            fprintf(stderr, "moatctl: domain: putting %s back: %s\n", path, strerror(errno));
    }
    free(before);
    conf_free(&check);
    unlink(old);
    fsync_dir(cfg->state_dir);
    return rc;
}

static void
put_s(struct jbuf *t, const char *s)
{
    jb_raw(t, s, strlen(s));
}

/* A running moatd reads it now; one that is not, at its start. */
static int
reload(const struct moat_config *cfg)
{
    if (supervisor_signal(cfg, 0) < 0) {
        printf("moatd is not running: it takes this at its start\n");
        return 0;
    }
    return supervisor_ctl_reload(cfg, "reload", 0, NULL);
}

static int
list(const struct moat_config *cfg, bool json)
{
    struct jbuf b = { 0 };
    if (json)
        jb_arr(&b);
    for (size_t i = 0; i < cfg->ndomains; i++) {
        const struct domain_conf *d = &cfg->domains[i];
        const char *how = d->delivery == DELIVERY_LOCAL ? "local" : "relay";
        const char *from = d->from_file ? "domains.conf" : "config";
        if (json) {
            jb_obj(&b);
            jb_kstr(&b, "name", d->name);
            jb_kstr(&b, "delivery", how);
            if (d->delivery == DELIVERY_RELAY)
                jb_kstr(&b, "relay_to", d->relay_to);
            jb_kbool(&b, "junk", d->junk);
            jb_kstr(&b, "from", from);
            jb_obj_end(&b);
        } else {
            printf("%-30s %-6s %-24s %s\n", d->name, how,
                   d->delivery == DELIVERY_LOCAL ? "-" : d->relay_to[0] ? d->relay_to : "(MX)",
                   from);
        }
    }
    if (json) {
        jb_arr_end(&b);
        printf("%s\n", b.p);
        jb_free(&b);
    } else {
        printf("-- %zu domain%s\n", cfg->ndomains, cfg->ndomains == 1 ? "" : "s");
    }
    return 0;
}

int
domains_ctl(const struct moat_config *cfg, const char *cmd, int argc, char **argv)
{
    bool json = argv_take_flag(&argc, argv, "--json");
    const char *verb = strchr(cmd, ' ') ? strchr(cmd, ' ') + 1 : "";
    if (strcmp(verb, "list") == 0)
        return argc == 0 ? list(cfg, json) : -1;
    bool add = strcmp(verb, "add") == 0;
    if ((add && (argc < 2 || argc > 4)) || (!add && argc != 1))
        return -1;
    const char *name = argv[0];
    if (name[0] == '\0' || strlen(name) > 253 ||
        strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-") !=
            strlen(name)) {
        fprintf(stderr, "moatctl: domain: '%s' is not a domain name\n", name);
        return 1;
    }
    char err[600];
    if (cluster_share_pull(cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "moatctl: domain: the shared domains are kept in Redis, which cannot be "
                        "reached: %s\n", err);
        return 1;
    }
    const struct domain_conf *d = conf_domain(cfg, name);
    char path[1200];
    if (paths_get(cfg->state_dir, PATH_DOMAINS, path, sizeof(path)) < 0)
        return 1;
    if (add && d) {
        fprintf(stderr, "moatctl: domain: %s is a domain already (in %s)\n", name,
                d->from_file ? path : cfg->path);
        return 1;
    }
    if (!add && d == NULL) {
        fprintf(stderr, "moatctl: domain: no domain %s\n", name);
        return 1;
    }
    if (!add && !d->from_file) {
        fprintf(stderr, "moatctl: domain: %s is written in %s: change it there\n", name,
                cfg->path);
        return 1;
    }
    struct conf_node *root = read_file(path);
    if (root == NULL)
        return 1;
    struct jbuf t = { 0 };
    put_s(&t, "# the domains of moatctl domain add; moatctl rewrites this file\n");
    for (const struct conf_node *n = root->child; n; n = n->next)
        if (add || !str_ieq(n->key, name))
            put_node(&t, n, 0);
    conf_node_free(&root);
    if (add) {
        if (strcmp(argv[1], "local") != 0 && strcmp(argv[1], "relay") != 0) {
            jb_free(&t);
            return -1;
        }
        put_s(&t, name);
        put_s(&t, " {\n    delivery = ");
        put_quoted(&t, argv[1]);
        put_s(&t, ";\n");
        for (int i = 2; i < argc; i++) {
            const char *eq = strchr(argv[i], '=');
            if (eq == NULL || (strncmp(argv[i], "relay_to=", 9) != 0 &&
                               strcmp(argv[i], "junk=true") != 0 &&
                               strcmp(argv[i], "junk=false") != 0)) {
                jb_free(&t);
                return -1;
            }
            put_s(&t, "    ");
            jb_raw(&t, argv[i], (size_t)(eq - argv[i]));
            put_s(&t, " = ");
            if (strncmp(argv[i], "junk=", 5) == 0)
                put_s(&t, eq + 1);      /* a boolean, unquoted */
            else
                put_quoted(&t, eq + 1);
            put_s(&t, ";\n");
        }
        put_s(&t, "}\n");
    }
    int rc = replace_file(cfg, path, &t);
    jb_free(&t);
    if (rc != 0)
        return rc;
    printf("domain %s %s (%s)\n", name, add ? "added" : "removed", path);
    return reload(cfg);
}
