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

/* The config checker's problems, gathered into err ("; " between). */
struct report_buf {
    char *err;
    size_t size;
};

static void
report_err(const char *msg, void *ctx)
{
    struct report_buf *r = ctx;
    size_t n = strlen(r->err);
    if (n + 3 < r->size)
        str_fmt(r->err + n, r->size - n, "%s%s", n ? "; " : "", msg);
}

/* domains.conf's parsed tree (an empty object when there is none); NULL
 * with why in err. */
static struct conf_node *
read_file(const char *path, char *err, size_t errsize)
{
    char perr[512];
    FILE *f = fopen(path, "re");
    if (f == NULL && errno == ENOENT)
        return conf_parse("", 0, perr, sizeof(perr));
    if (f == NULL) {
        str_fmt(err, errsize, "%s: %s", path, strerror(errno));
        return NULL;
    }
    struct jbuf t = { 0 };
    char buf[8192];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0 && t.len < 4 * 1024 * 1024)
        jb_raw(&t, buf, n);
    fclose(f);
    struct conf_node *root = conf_parse(t.p ? t.p : "", t.len, perr, sizeof(perr));
    jb_free(&t);
    if (root == NULL)
        str_fmt(err, errsize, "%s: %s", path, perr);
    return root;
}

/* text as the new domains.conf, if the config checks with it (and, with
 * node.share, Redis takes it); the old one back otherwise. 0, or
 * DOMAINS_BAD (the config does not load with it) or -1, with why in err.
 * The file is written as the owner of state_dir (the daemon's user must
 * read it). */
static int
replace_file(const struct moat_config *cfg, const char *path, const struct jbuf *text,
             char *err, size_t errsize)
{
    char tmp[1300], old[1300];
    if (str_fmt(tmp, sizeof(tmp), "%s.tmp", path) < 0 || str_fmt(old, sizeof(old), "%s.old", path) < 0) {
        str_fmt(err, errsize, "%s: path too long", path);
        return -1;
    }
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
        str_fmt(err, errsize, "%s: %s", path, strerror(saved));
        unlink(tmp);
        unlink(old);
        free(before);
        return -1;
    }
    struct moat_config check;
    int rc = 0;
    char problems[800] = "", serr[800];
    struct report_buf rb = { problems, sizeof(problems) };
    if (conf_load(cfg->path, &check, report_err, &rb) < 0) {
        str_fmt(err, errsize, "the config does not load with that: %s; %s is as it was",
                problems, path);
        rc = DOMAINS_BAD;
    } else if (cluster_share_put(SHARE_DOMAINS, before, before_len, NULL,
                                 text->p ? text->p : "", text->len, serr, sizeof(serr)) < 0) {
        str_fmt(err, errsize, "%s; %s is as it was", serr, path);
        rc = -1;
    }
    if (rc != 0) {
        if (had ? rename(old, path) < 0 : unlink(path) < 0)
            log_warn("domain: putting %s back: %s", path, strerror(errno));
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

bool
domains_name_ok(const char *name)
{
    return name[0] != '\0' && name[0] != '.' && name[0] != '-' && strlen(name) <= 253 &&
           strstr(name, "..") == NULL &&
           strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-") ==
               strlen(name);
}

int
domains_change(const struct moat_config *cfg, const struct domain_change *c, char *err,
               size_t errsize)
{
    const char *name = c->name;
    if (!domains_name_ok(name)) {
        str_fmt(err, errsize, "'%s' is not a domain name", name);
        return DOMAINS_BAD;
    }
    if (c->add && (c->delivery == NULL || (strcmp(c->delivery, "local") != 0 &&
                                           strcmp(c->delivery, "relay") != 0))) {
        str_fmt(err, errsize, "delivery is local or relay");
        return DOMAINS_BAD;
    }
    char serr[600];
    if (cluster_share_pull(cfg, serr, sizeof(serr)) < 0) {
        str_fmt(err, errsize, "the shared domains are kept in Redis, which cannot be reached: %s",
                serr);
        return -1;
    }
    char path[1200];
    if (paths_get(cfg->state_dir, PATH_DOMAINS, path, sizeof(path)) < 0) {
        str_fmt(err, errsize, "state_dir too long");
        return -1;
    }
    struct conf_node *root = read_file(path, err, errsize);
    if (root == NULL)
        return -1;
    /* the file as it is now, and the config: a running role's cfg may
     * predate the last change */
    const struct conf_node *in_file = NULL;
    for (const struct conf_node *n = root->child; n; n = n->next)
        if (n->key && str_ieq(n->key, name))
            in_file = n;
    const struct domain_conf *d = conf_domain(cfg, name);
    int rc = DOMAINS_BAD;
    if (c->add && (in_file || d)) {
        str_fmt(err, errsize, "%s is a domain already (in %s)", name,
                in_file || d->from_file ? path : cfg->path);
        goto out;
    }
    if (!c->add && in_file == NULL && d && !d->from_file) {
        str_fmt(err, errsize, "%s is written in %s: change it there", name, cfg->path);
        goto out;
    }
    if (!c->add && in_file == NULL) {
        str_fmt(err, errsize, "no domain %s", name);
        goto out;
    }
    struct jbuf t = { 0 };
    put_s(&t, "# the domains of moatctl domain add; moatctl rewrites this file\n");
    for (const struct conf_node *n = root->child; n; n = n->next)
        if (n != in_file)
            put_node(&t, n, 0);
    if (c->add) {
        put_s(&t, name);
        put_s(&t, " {\n    delivery = ");
        put_quoted(&t, c->delivery);
        put_s(&t, ";\n");
        if (c->relay_to && c->relay_to[0]) {
            put_s(&t, "    relay_to = ");
            put_quoted(&t, c->relay_to);
            put_s(&t, ";\n");
        }
        if (c->junk >= 0)
            put_s(&t, c->junk ? "    junk = true;\n" : "    junk = false;\n");
        put_s(&t, "}\n");
    }
    rc = replace_file(cfg, path, &t, err, errsize);
    jb_free(&t);
out:
    conf_node_free(&root);
    return rc;
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
    struct domain_change c = { .add = add, .name = argv[0], .junk = -1 };
    if (add) {
        if (strcmp(argv[1], "local") != 0 && strcmp(argv[1], "relay") != 0)
            return -1;
        c.delivery = argv[1];
        for (int i = 2; i < argc; i++) {
            if (strncmp(argv[i], "relay_to=", 9) == 0)
                c.relay_to = argv[i] + 9;
            else if (strcmp(argv[i], "junk=true") == 0 || strcmp(argv[i], "junk=false") == 0)
                c.junk = strcmp(argv[i], "junk=true") == 0;
            else
                return -1;
        }
    }
    char err[2000];
    if (domains_change(cfg, &c, err, sizeof(err)) != 0) {
        fprintf(stderr, "moatctl: domain: %s\n", err);
        return 1;
    }
    char path[1200];
    paths_get(cfg->state_dir, PATH_DOMAINS, path, sizeof(path));
    printf("domain %s %s (%s)\n", c.name, add ? "added" : "removed", path);
    return reload(cfg);
}
