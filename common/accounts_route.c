/*
 * accounts_route.c -- what the accounts file (accounts.c) says about an
 * address: where mail for a recipient goes (users, aliases, distribution
 * lists, catch-alls, +tags, forwards, up to MAX_DEPTH levels), and who
 * may send as an address (a user its own, its aliases', an admin its
 * domains').
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "mail.h"

#define MAX_DEPTH 8

/* --------------------------------------------------------- resolving */

static void
add_target(struct account_route *r, const char *addr, bool local)
{
    char ***v = local ? &r->mailboxes : &r->remote;
    size_t *n = local ? &r->nmailboxes : &r->nremote;
    for (size_t i = 0; i < *n; i++)
        if (strcasecmp((*v)[i], addr) == 0)
            return;                         /* each once */
    if (*n == ACCOUNT_TARGETS_MAX)
        return;
    *v = xrealloc(*v, (*n + 1) * sizeof(char *));
    (*v)[(*n)++] = xstrdup(addr);
}

/* "user+tag@domain" -> "user@domain" */
static void
strip_tag(const char *addr, char *out, size_t size)
{
    const char *at = strrchr(addr, '@');
    const char *plus = strchr(addr, '+');
    if (at && plus && plus < at && plus > addr)
        snprintf(out, size, "%.*s%s", (int)(plus - addr), addr, at);
    else
        str_copy(out, addr, size);
    str_lower(out);
}

static int expand(const struct accounts_file *a, const struct moat_config *cfg, const char *addr,
                  const char *sender, unsigned depth, struct account_route *r);

static int
expand_local(const struct accounts_file *a, const struct moat_config *cfg, const char *addr,
             const char *sender, unsigned depth, struct account_route *r)
{
    char base[330];
    strip_tag(addr, base, sizeof(base));
    const struct account_entry *e;
    if ((e = accounts_find(a, ACCT_USER, base)) != NULL) {
        if (e->keep || e->ntargets == 0)
            add_target(r, e->addr, true);
        for (size_t i = 0; i < e->ntargets; i++)
            if (expand(a, cfg, e->targets[i], sender, depth + 1, r) < 0)
                return -1;
        return 0;
    }
    if ((e = accounts_find(a, ACCT_ALIAS, base)) != NULL) {
        for (size_t i = 0; i < e->ntargets; i++)
            if (expand(a, cfg, e->targets[i], sender, depth + 1, r) < 0)
                return -1;
        return 0;
    }
    if ((e = accounts_find(a, ACCT_LIST, base)) != NULL) {
        bool may = e->post == POST_ANYONE;
        if (e->post == POST_DOMAIN) {
            const char *sd = strrchr(sender, '@'), *ld = strrchr(e->addr, '@');
            may = sd && ld && strcasecmp(sd, ld) == 0;
        } else if (e->post == POST_MEMBERS) {
            char s[330];
            strip_tag(sender, s, sizeof(s));
            for (size_t i = 0; i < e->ntargets && !may; i++)
                may = strcasecmp(e->targets[i], s) == 0;
        }
        if (!may) {
            r->refused_list = true;
            return -1;
        }
        for (size_t i = 0; i < e->ntargets; i++)
            if (expand(a, cfg, e->targets[i], sender, depth + 1, r) < 0 && r->refused_list)
                r->refused_list = false;   /* a member that is a list of its own: skip it */
        return 0;
    }
    const char *at = strrchr(base, '@');
    if (at && (e = accounts_find(a, ACCT_CATCHALL, at + 1)) != NULL && depth == 0)
        return expand(a, cfg, e->targets[0], sender, depth + 1, r);
    return -1;
}

static int
expand(const struct accounts_file *a, const struct moat_config *cfg, const char *addr,
       const char *sender, unsigned depth, struct account_route *r)
{
    if (depth > MAX_DEPTH)
        return -1;
    const char *at = strrchr(addr, '@');
    const struct domain_conf *d = at ? conf_domain(cfg, at + 1) : NULL;
    if (d == NULL || d->delivery != DELIVERY_LOCAL) {
        add_target(r, addr, false);        /* somewhere else: forwarded */
        return 0;
    }
    return expand_local(a, cfg, addr, sender, depth, r);
}

int
accounts_route(const struct accounts_file *a, const struct moat_config *cfg, const char *rcpt,
               const char *sender, struct account_route *r)
{
    memset(r, 0, sizeof(*r));
    int rc = expand(a, cfg, rcpt, sender ? sender : "", 0, r);
    if (rc < 0 || (r->nmailboxes == 0 && r->nremote == 0)) {
        bool refused = r->refused_list;
        accounts_route_free(r);
        r->refused_list = refused;
        return -1;
    }
    return 0;
}

void
accounts_route_free(struct account_route *r)
{
    for (size_t i = 0; i < r->nmailboxes; i++)
        free(r->mailboxes[i]);
    for (size_t i = 0; i < r->nremote; i++)
        free(r->remote[i]);
    free(r->mailboxes);
    free(r->remote);
    memset(r, 0, sizeof(*r));
}

/* ----------------------------------------------------- sender ownership */

static const char *
domain_of(const char *addr)
{
    const char *at = strrchr(addr, '@');
    return at ? at + 1 : "";
}

/* Is domain in the comma-separated list? */
static bool
in_list(const char *list, const char *domain)
{
    size_t n = strlen(domain);
    for (const char *p = list; p && *p;) {
        const char *c = strchr(p, ',');
        size_t len = c ? (size_t)(c - p) : strlen(p);
        if (len == n && n > 0 && strncasecmp(p, domain, n) == 0)
            return true;
        p = c ? c + 1 : NULL;
    }
    return false;
}

/* The domains a domain admin administers: domains=, else its own. */
static const char *
admin_domains(const struct account_entry *u)
{
    return u->domains ? u->domains : domain_of(u->addr);
}

/* Does alias al point at user u (al may be NULL)? */
static bool
points_at(const struct account_entry *al, const struct account_entry *u)
{
    for (size_t i = 0; al && i < al->ntargets; i++) {
        char t[330];
        strip_tag(al->targets[i], t, sizeof(t));
        if (strcmp(t, u->addr) == 0)
            return true;
    }
    return false;
}

bool
accounts_may_send_as(const struct accounts_file *a, const struct moat_config *cfg,
                     const char *login, const char *addr)
{
    const struct account_entry *u = accounts_find(a, ACCT_USER, login);
    const char *at = strrchr(addr, '@');
    if (u == NULL || at == NULL || at == addr || at[1] == '\0' || strlen(addr) > 320)
        return false;
    char base[330];
    strip_tag(addr, base, sizeof(base));
    const char *dom = domain_of(base);
    if (strcmp(base, u->addr) == 0 || strcmp(u->role, "superadmin") == 0 ||
        (strcmp(u->role, "admin") == 0 && in_list(admin_domains(u), dom)) ||
        points_at(accounts_find(a, ACCT_ALIAS, base), u))
        return true;
    switch (conf_sender_login(cfg, dom)) {
    case SENDER_LOGIN_ANY:
        return true;
    case SENDER_LOGIN_DOMAIN:
        return strcasecmp(dom, domain_of(u->addr)) == 0;
    default:
        return false;
    }
}

static void
add_domain(char ***v, size_t *n, const char *d, size_t len)
{
    if (len == 0 || len > 255)
        return;
    for (size_t i = 0; i < *n; i++)
        if (strlen((*v)[i]) == len && strncasecmp((*v)[i], d, len) == 0)
            return;
    *v = xrealloc(*v, (*n + 1) * sizeof(char *));
    (*v)[*n] = xstrndup(d, len);
    str_lower((*v)[(*n)++]);
}

size_t
accounts_sender_domains(const struct accounts_file *a, const struct moat_config *cfg,
                        const char *login, char ***v_r)
{
    char **v = NULL;
    size_t n = 0;
    const struct account_entry *u = accounts_find(a, ACCT_USER, login);
    if (u != NULL) {
        const char *own = domain_of(u->addr);
        add_domain(&v, &n, own, strlen(own));
        if (strcmp(u->role, "superadmin") == 0)
            for (size_t i = 0; i < cfg->ndomains; i++)
                add_domain(&v, &n, cfg->domains[i].name, strlen(cfg->domains[i].name));
        if (strcmp(u->role, "admin") == 0)
            for (const char *p = admin_domains(u); p && *p;) {
                const char *c = strchr(p, ',');
                add_domain(&v, &n, p, c ? (size_t)(c - p) : strlen(p));
                p = c ? c + 1 : NULL;
            }
        for (size_t i = 0; i < accounts_count(a); i++)
            if (accounts_at(a, i)->kind == ACCT_ALIAS && points_at(accounts_at(a, i), u)) {
                const char *d = domain_of(accounts_at(a, i)->addr);
                add_domain(&v, &n, d, strlen(d));
            }
    }
    *v_r = v;
    return n;
}

void
accounts_domains_free(char ***vp, size_t n)
{
    for (size_t i = 0; *vp && i < n; i++)
        free((*vp)[i]);
    free(*vp);
    *vp = NULL;
}
