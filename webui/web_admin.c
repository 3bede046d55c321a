/*
 * web_admin.c -- the admin pages' API: allow/block lists (per domain and
 * per user), domains with the DNS records they need checked live, accounts,
 * and the mail queue.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include "../common/mail.h"
#include "web_private.h"
#include "webui.h"
#include "../filters/filters.h"

static const char *
domain_of(const char *addr)
{
    const char *at = addr ? strrchr(addr, '@') : NULL;
    return at ? at + 1 : "";
}

/* --------------------------------------------------------------- lists */

static const char *
default_scope(const struct principal *p)
{
    if (p->role == ROLE_SUPERADMIN)
        return "global";
    if (p->role == ROLE_ADMIN && p->ndomains)
        return p->domains[0];
    return p->user;
}

void
api_lists_get(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    (void)args;
    const struct moat_config *cfg = rq->srv->cfg;
    char buf[300], err[300];
    const char *scope = web_param(rq, "scope", buf, sizeof(buf));
    if (scope == NULL || scope[0] == '\0')
        scope = default_scope(p);
    if (!web_can_scope(p, scope)) {
        web_error(rs, 403, "forbidden", "not your scope");
        return;
    }
    struct jbuf *b = &rs->body;
    jb_obj(b);
    jb_kstr(b, "scope", scope);
    static const char *kinds[] = { "allow", "block" };
    for (int k = 0; k < 2; k++) {
        char **v;
        size_t n;
        if (lists_members(cfg->redis.address, cfg->redis.timeout_ms, kinds[k], scope, &v, &n, err,
                          sizeof(err)) < 0) {
            web_error(rs, 503, "unavailable", err);
            return;
        }
        jb_key(b, kinds[k]);
        jb_arr(b);
        for (size_t i = 0; i < n; i++) {
            jb_str(b, v[i]);
            free(v[i]);
        }
        free(v);
        jb_arr_end(b);
    }
    jb_obj_end(b);
}

static void
lists_change(struct web_req *rq, struct principal *p, struct web_resp *rs, bool add)
{
    const struct moat_config *cfg = rq->srv->cfg;
    const char *kind = web_body_str(rq, "kind"), *entry = web_body_str(rq, "entry");
    const char *scope = web_body_str(rq, "scope");
    char err[300];
    if (scope == NULL || scope[0] == '\0')
        scope = default_scope(p);
    if (kind == NULL || entry == NULL) {
        web_error(rs, 400, "bad_request", "kind (allow or block) and entry are required");
        return;
    }
    if (!web_can_scope(p, scope)) {
        web_error(rs, 403, "forbidden", "not your scope");
        return;
    }
    if (lists_edit(cfg->redis.address, cfg->redis.timeout_ms, kind, scope, add, entry, err,
                   sizeof(err)) < 0) {
        bool bad = strstr(err, "redis") == NULL && strstr(err, "Redis") == NULL;
        web_error(rs, bad ? 400 : 503, bad ? "bad_request" : "unavailable", err);
        return;
    }
    log_info("web: %s %s %s %s (%s)", p->user, add ? "added" : "removed", entry, kind, scope);
    web_ok(rs);
}

void
api_lists_add(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    (void)args;
    lists_change(rq, p, rs, true);
}

void
api_lists_remove(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    (void)args;
    lists_change(rq, p, rs, false);
}

/* ------------------------------------------------------------- domains */

void
api_domains(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    (void)args;
    const struct moat_config *cfg = rq->srv->cfg;
    struct web_server *srv = rq->srv;
    struct jbuf *b = &rs->body;
    jb_obj(b);
    jb_key(b, "domains");
    jb_arr(b);
    const struct accounts_file *af = accounts_get(srv->accounts);
    for (size_t i = 0; i < cfg->ndomains; i++) {
        const struct domain_conf *d = &cfg->domains[i];
        if (!web_can_domain(p, d->name))
            continue;
        size_t users = 0;
        for (size_t k = 0; k < accounts_count(af); k++) {
            const struct account_entry *e = accounts_at(af, k);
            users += e->kind == ACCT_USER && strcasecmp(domain_of(e->addr), d->name) == 0;
        }
        jb_obj(b);
        jb_kstr(b, "name", d->name);
        jb_kstr(b, "delivery", d->delivery == DELIVERY_LOCAL ? "local" : "relay");
        jb_kstr(b, "relay_to", d->relay_to);
        jb_kbool(b, "own_policy", d->nfilter_sections > 0);
        jb_kint(b, "users", (long long)users);
        jb_obj_end(b);
    }
    accounts_put(&af);
    jb_arr_end(b);
    jb_obj_end(b);
}

/* One record the domain needs: what was found and whether it is right. */
static void
check_txt(struct web_server *srv, struct jbuf *b, const char *type, const char *name,
          const char *prefix, const char *expected)
{
    struct dns_answer a;
    resolver_lookup(srv->resolver, name, 16, &a);
    jb_obj(b);
    jb_kstr(b, "type", type);
    jb_kstr(b, "name", name);
    jb_kstr(b, "expected", expected);
    jb_key(b, "found");
    jb_arr(b);
    size_t matching = 0;
    for (size_t i = 0; a.status == DNS_OK && i < a.n; i++) {
        char txt[4096];
        dns_txt_join(a.rdata[i], (size_t)a.rdlen[i], txt, sizeof(txt));
        if (strncasecmp(txt, prefix, strlen(prefix)) != 0)
            continue;
        matching++;
        jb_str(b, txt);
    }
    jb_arr_end(b);
    /* SPF and DMARC: exactly one record (two make both void) */
    jb_kbool(b, "ok", matching == 1);
    jb_kstr(b, "status", a.status == DNS_TEMPFAIL ? "dns error" : matching == 0 ? "missing"
                         : matching > 1 ? "more than one record" : "ok");
    jb_obj_end(b);
    resolver_answer_free(&a);
}

void
api_domain_dns(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    struct web_server *srv = rq->srv;
    const struct moat_config *cfg = srv->cfg;
    const struct domain_conf *d = conf_domain(cfg, args[0]);
    if (d == NULL || !web_can_domain(p, d->name)) {
        web_error(rs, 404, "not_found", "no such domain");
        return;
    }
    struct jbuf *b = &rs->body;
    jb_obj(b);
    jb_kstr(b, "domain", d->name);
    jb_key(b, "records");
    jb_arr(b);
    /* MX: this gateway */
    struct dns_answer a;
    resolver_lookup(srv->resolver, d->name, 15, &a);
    jb_obj(b);
    jb_kstr(b, "type", "MX");
    jb_kstr(b, "name", d->name);
    char expected[600];
    snprintf(expected, sizeof(expected), "10 %s", cfg->hostname);
    jb_kstr(b, "expected", expected);
    jb_key(b, "found");
    jb_arr(b);
    bool mx_ok = false;
    for (size_t i = 0; a.status == DNS_OK && i < a.n; i++) {
        char host[300], line[320];
        if (a.rdlen[i] < 3 || dns_wire_name(a.rdata[i] + 2, (size_t)a.rdlen[i] - 2, host,
                                            sizeof(host)) < 0)
            continue;
        snprintf(line, sizeof(line), "%u %s", (unsigned)(a.rdata[i][0] << 8 | a.rdata[i][1]), host);
        jb_str(b, line);
        mx_ok |= strcasecmp(host, cfg->hostname) == 0;
    }
    jb_arr_end(b);
    jb_kbool(b, "ok", mx_ok);
    jb_kstr(b, "status", a.status == DNS_TEMPFAIL ? "dns error"
                         : mx_ok ? "ok" : "does not point to this gateway");
    jb_obj_end(b);
    resolver_answer_free(&a);

    check_txt(srv, b, "SPF", d->name, "v=spf1", "v=spf1 mx -all");
    const char *sel = filter_section_get(cfg, "dkim", "selector");
    char name[600];
    snprintf(name, sizeof(name), "%s._domainkey.%s", sel ? sel : "moat", d->name);
    snprintf(expected, sizeof(expected), "v=DKIM1; k=rsa; p=... (moatctl dkim keygen %s %s)",
             d->name, sel ? sel : "moat");
    check_txt(srv, b, "DKIM", name, "v=DKIM1", expected);
    snprintf(name, sizeof(name), "_dmarc.%s", d->name);
    snprintf(expected, sizeof(expected), "v=DMARC1; p=quarantine; rua=mailto:dmarc@%s", d->name);
    check_txt(srv, b, "DMARC", name, "v=DMARC1", expected);
    jb_arr_end(b);
    jb_obj_end(b);
}

/* ------------------------------------------------------------ accounts */

/* Save the accounts file after edit(a) says 0; the HTTP status. */
typedef int accounts_edit_fn(struct accounts_file *a, void *arg, char *err, size_t errsize);

static int
accounts_change(struct web_server *srv, accounts_edit_fn *edit, void *arg, char *err,
                size_t errsize)
{
    pthread_mutex_lock(&srv->mu);
    struct accounts_file *a = accounts_load(srv->cfg->state_dir, err, errsize);
    int status = 500;
    if (a) {
        status = edit(a, arg, err, errsize);
        if (status < 300) {
            size_t n;
            struct account_entry *v = accounts_entries(a, &n);
            if (accounts_save(srv->cfg->state_dir, v, n, err, errsize) < 0)
                status = 500;
        }
    }
    accounts_free(&a);
    pthread_mutex_unlock(&srv->mu);
    return status;
}

static void
targets_json(struct jbuf *b, const char *key, const struct account_entry *e)
{
    jb_key(b, key);
    jb_arr(b);
    for (size_t i = 0; i < e->ntargets; i++)
        jb_str(b, e->targets[i]);
    jb_arr_end(b);
}

static const char *
role_name(const char *r)
{
    return r[0] ? r : "user";
}

void
api_accounts_list(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    (void)args;
    struct web_server *srv = rq->srv;
    char dom[300];
    const char *only = web_param(rq, "domain", dom, sizeof(dom));
    struct jbuf *b = &rs->body;
    jb_obj(b);
    jb_key(b, "accounts");
    jb_arr(b);
    const struct accounts_file *af = accounts_get(srv->accounts);
    for (size_t k = 0; k < accounts_count(af); k++) {
        const struct account_entry *e = accounts_at(af, k);
        if (e->kind != ACCT_USER || !web_can_domain(p, domain_of(e->addr)) ||
            (only && only[0] && strcasecmp(domain_of(e->addr), only) != 0))
            continue;
        jb_obj(b);
        jb_kstr(b, "address", e->addr);
        jb_kstr(b, "role", role_name(e->role));
        jb_kint(b, "quota", (long long)e->quota);
        jb_kstr(b, "domains", e->domains ? e->domains : "");
        jb_kbool(b, "totp", e->totp != NULL);
        targets_json(b, "forward", e);
        jb_obj_end(b);
    }
    accounts_put(&af);
    jb_arr_end(b);
    jb_obj_end(b);
}

/* May p manage the account addr (role is its role, "" for none yet)? */
static bool
may_manage(const struct principal *p, const char *addr, const char *role)
{
    if (strcasecmp(addr, p->user) == 0)
        return false;           /* not oneself: no admin locks themselves out */
    if (p->role == ROLE_SUPERADMIN)
        return true;
    return web_can_domain(p, domain_of(addr)) && role[0] == '\0';
}

struct new_account { const char *addr, *hash, *role, *quota, *domains; };

static int
account_put(struct accounts_file *a, void *arg, char *err, size_t errsize)
{
    struct new_account *na = arg;
    if (accounts_find(a, ACCT_USER, na->addr) || accounts_find(a, ACCT_ALIAS, na->addr) ||
        accounts_find(a, ACCT_LIST, na->addr)) {
        snprintf(err, errsize, "%s exists", na->addr);
        return 409;
    }
    struct account_entry *e = accounts_add(a, ACCT_USER, na->addr);
    accounts_set_hash(e, na->hash);
    const char *const opt[][2] = { { "role", na->role }, { "quota", na->quota },
                                   { "domains", na->domains } };
    for (size_t i = 0; i < 3; i++) {
        char kv[600];
        if (opt[i][1] == NULL || opt[i][1][0] == '\0')
            continue;
        snprintf(kv, sizeof(kv), "%s=%s", opt[i][0], opt[i][1]);
        if (accounts_set_option(e, kv) < 0) {
            snprintf(err, errsize, "bad %s", opt[i][0]);
            return 400;
        }
    }
    return 201;
}

void
api_accounts_create(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    (void)args;
    struct web_server *srv = rq->srv;
    const struct moat_config *cfg = srv->cfg;
    const char *addr = web_body_str(rq, "address"), *pw = web_body_str(rq, "password");
    const char *role = web_body_str(rq, "role"), *quota = web_body_str(rq, "quota");
    const char *domains = web_body_str(rq, "domains");
    char err[400], hash[256];
    if (role && strcmp(role, "user") == 0)
        role = "";
    if (addr == NULL || strchr(addr, '@') == NULL || strlen(addr) > 254 ||
        strpbrk(addr, " \t\r\n,:=") != NULL || !web_password_ok(pw)) {
        web_error(rs, 400, "bad_request",
                  "address and password (8 to 200 characters) are required");
        return;
    }
    if (role && role[0] && strcmp(role, "admin") != 0 && strcmp(role, "superadmin") != 0) {
        web_error(rs, 400, "bad_request", "role: user, admin or superadmin");
        return;
    }
    if (!may_manage(p, addr, role ? role : "") || conf_domain(cfg, domain_of(addr)) == NULL) {
        web_error(rs, 403, "forbidden", "not a domain of yours, or a role you may not give");
        return;
    }
    if (accounts_hash(pw, hash, sizeof(hash), err, sizeof(err)) < 0) {
        web_error(rs, 500, "internal", err);
        return;
    }
    struct new_account na = { addr, hash, role, quota, p->role == ROLE_SUPERADMIN ? domains : NULL };
    int status = accounts_change(srv, account_put, &na, err, sizeof(err));
    if (status >= 300) {
        web_error(rs, status, status == 409 ? "exists" : status == 400 ? "bad_request" : "internal",
                  err);
        return;
    }
    log_info("web: %s created account %s", p->user, addr);
    rs->status = 201;
    web_ok(rs);
}

/* The account's role, or NULL if there is none. */
static bool
account_role(struct web_server *srv, const char *addr, char *role, size_t size)
{
    const struct accounts_file *af = accounts_get(srv->accounts);
    const struct account_entry *e = accounts_find(af, ACCT_USER, addr);
    if (e)
        str_copy(role, e->role, size);
    accounts_put(&af);
    return e != NULL;
}

/* One entry of the accounts file to remove. */
struct entry_ref { enum account_kind kind; const char *addr; };

static int
entry_del(struct accounts_file *a, void *arg, char *err, size_t errsize)
{
    const struct entry_ref *e = arg;
    if (accounts_remove(a, e->kind, e->addr) < 0) {
        snprintf(err, errsize, "no such %s", e->kind == ACCT_ALIAS ? "alias" : "account");
        return 404;
    }
    return 200;
}

void
api_accounts_delete(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    struct web_server *srv = rq->srv;
    char role[16], err[400];
    if (!account_role(srv, args[0], role, sizeof(role)) ||
        !web_can_domain(p, domain_of(args[0]))) {
        web_error(rs, 404, "not_found", "no such account");
        return;
    }
    if (!may_manage(p, args[0], role)) {
        web_error(rs, 403, "forbidden", "you may not remove this account");
        return;
    }
    struct entry_ref ref = { ACCT_USER, args[0] };
    int status = accounts_change(srv, entry_del, &ref, err, sizeof(err));
    if (status >= 300) {
        web_error(rs, status, status == 404 ? "not_found" : "internal", err);
        return;
    }
    log_info("web: %s removed account %s", p->user, args[0]);
    /* its sessions and tokens would sign in whoever gets the address next */
    char addr[320];
    str_copy(addr, args[0], sizeof(addr));
    for (char *c = addr; *c; c++)
        *c = (char)(*c >= 'A' && *c <= 'Z' ? *c + 32 : *c);    /* as the accounts file has it */
    if (web_revoke_logins(srv->cfg, addr, err, sizeof(err)) < 0) {
        web_error(rs, 503, "unavailable", "the account is removed, but its sessions and API "
                  "tokens could not all be revoked: Redis is not answering");
        return;
    }
    web_ok(rs);
}

void
api_accounts_password(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    struct web_server *srv = rq->srv;
    char role[16], err[400];
    const char *pw = web_body_str(rq, "password");
    if (!account_role(srv, args[0], role, sizeof(role)) ||
        !web_can_domain(p, domain_of(args[0]))) {
        web_error(rs, 404, "not_found", "no such account");
        return;
    }
    if (!may_manage(p, args[0], role)) {
        web_error(rs, 403, "forbidden", "you may not change this account");
        return;
    }
    if (!web_password_ok(pw)) {
        web_error(rs, 400, "bad_request", "password: 8 to 200 characters");
        return;
    }
    int rc = web_set_password(srv, args[0], pw, NULL, err, sizeof(err));
    if (rc < 0) {
        web_error(rs, rc == -2 ? 503 : 500, rc == -2 ? "unavailable" : "internal", err);
        return;
    }
    log_info("web: %s set the password of %s", p->user, args[0]);
    web_ok(rs);
}

/* ------------------------------------------------------------- aliases */

void
api_aliases_list(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    (void)args;
    struct web_server *srv = rq->srv;
    struct jbuf *b = &rs->body;
    jb_obj(b);
    jb_key(b, "aliases");
    jb_arr(b);
    const struct accounts_file *af = accounts_get(srv->accounts);
    for (size_t k = 0; k < accounts_count(af); k++) {
        const struct account_entry *e = accounts_at(af, k);
        if (e->kind != ACCT_ALIAS || !web_can_domain(p, domain_of(e->addr)))
            continue;
        jb_obj(b);
        jb_kstr(b, "address", e->addr);
        targets_json(b, "targets", e);
        jb_obj_end(b);
    }
    accounts_put(&af);
    jb_arr_end(b);
    jb_obj_end(b);
}

struct alias_set { const char *addr, *targets; };

static int
alias_put(struct accounts_file *a, void *arg, char *err, size_t errsize)
{
    struct alias_set *as = arg;
    if (accounts_find(a, ACCT_USER, as->addr) || accounts_find(a, ACCT_LIST, as->addr)) {
        snprintf(err, errsize, "%s is an account or a list", as->addr);
        return 409;
    }
    accounts_remove(a, ACCT_ALIAS, as->addr);
    struct account_entry *e = accounts_add(a, ACCT_ALIAS, as->addr);
    if (accounts_set_targets(e, as->targets) < 0 || e->ntargets == 0) {
        snprintf(err, errsize, "targets: addresses, at least one");
        return 400;
    }
    return 200;
}

void
api_aliases_set(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    (void)args;
    const char *addr = web_body_str(rq, "address");
    const struct conf_node *t = web_body_node(rq, "targets");
    char err[400], list[4096] = "";
    size_t len = 0;
    bool ok = addr && strchr(addr, '@') && strlen(addr) < 255 && !strpbrk(addr, " \t\r\n,:=") &&
              t && t->type == CONF_ARRAY && t->child;
    /* a domain admin's alias points into its own domains only: it is no forwarder */
    for (const struct conf_node *c = ok ? t->child : NULL; c && ok; c = c->next) {
        ok = c->type == CONF_SCALAR && strchr(c->value, '@') && !strchr(c->value, ',') &&
             len + strlen(c->value) + 2 < sizeof(list);
        if (ok && !web_can_domain(p, domain_of(c->value))) {
            web_error(rs, 403, "forbidden", "alias targets must be in your domains");
            return;
        }
        if (ok)
            len += (size_t)snprintf(list + len, sizeof(list) - len, "%s%s", len ? "," : "", c->value);
    }
    if (!ok) {
        web_error(rs, 400, "bad_request", "address and targets (a list of addresses) are required");
        return;
    }
    if (!web_can_domain(p, domain_of(addr)) || conf_domain(rq->srv->cfg, domain_of(addr)) == NULL) {
        web_error(rs, 403, "forbidden", "not a domain of yours");
        return;
    }
    struct alias_set as = { addr, list };
    int status = accounts_change(rq->srv, alias_put, &as, err, sizeof(err));
    if (status >= 300) {
        web_error(rs, status, status == 409 ? "exists" : status == 400 ? "bad_request" : "internal",
                  err);
        return;
    }
    log_info("web: %s set alias %s -> %s", p->user, addr, list);
    web_ok(rs);
}

void
api_aliases_delete(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    char err[400];
    if (!web_can_domain(p, domain_of(args[0]))) {
        web_error(rs, 404, "not_found", "no such alias");
        return;
    }
    struct entry_ref ref = { ACCT_ALIAS, args[0] };
    int status = accounts_change(rq->srv, entry_del, &ref, err, sizeof(err));
    if (status >= 300) {
        web_error(rs, status, status == 404 ? "not_found" : "internal", err);
        return;
    }
    log_info("web: %s removed alias %s", p->user, args[0]);
    web_ok(rs);
}

/* --------------------------------------------------------------- queue */

static const char *const queue_dirs[] = { "incoming", "deferred" };
static const enum state_path queue_paths[] = { PATH_QUEUE_INCOMING, PATH_QUEUE_DEFERRED };

struct queue_view {
    const struct principal *p;
    struct jbuf *b;
    const char *state;
    size_t total;
};

static int
queue_item(const char *path, struct queue_msg *m, void *arg)
{
    (void)path;
    struct queue_view *qv = arg;
    const struct principal *p = qv->p;
    bool any = false;
    for (size_t i = 0; i < m->nrcpt && !any; i++)
        any = web_can_address(p, m->rcpts[i].addr);
    if (!any)
        return 0;
    struct jbuf *b = qv->b;
    jb_obj(b);
    jb_kstr(b, "id", m->id);
    jb_kstr(b, "state", qv->state);
    jb_kint(b, "date", (long long)m->arrival);
    jb_kstr(b, "sender", m->sender);
    jb_kint(b, "size", (long long)m->content_len);
    jb_kint(b, "attempts", m->attempts);
    jb_kint(b, "next_try", (long long)m->next_try);
    jb_key(b, "recipients");
    jb_arr(b);
    for (size_t i = 0; i < m->nrcpt; i++) {
        if (!web_can_address(p, m->rcpts[i].addr))
            continue;
        jb_obj(b);
        jb_kstr(b, "address", m->rcpts[i].addr);
        jb_kbool(b, "done", m->rcpts[i].done);
        jb_kstr(b, "last_reply", m->rcpts[i].last_reply ? m->rcpts[i].last_reply : "");
        jb_obj_end(b);
    }
    jb_arr_end(b);
    jb_obj_end(b);
    return ++qv->total >= 1000;         /* a page's worth */
}

void
api_queue_list(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    (void)args;
    const struct moat_config *cfg = rq->srv->cfg;
    struct queue_view qv = { p, &rs->body, NULL, 0 };
    jb_obj(qv.b);
    jb_key(qv.b, "items");
    jb_arr(qv.b);
    for (size_t k = 0; k < 2; k++) {
        char dir[1200];
        paths_get(cfg->state_dir, queue_paths[k], dir, sizeof(dir));
        qv.state = queue_dirs[k];
        if (qf_scan(dir, queue_item, &qv) != 0)
            break;
    }
    jb_arr_end(qv.b);
    jb_kint(qv.b, "total", (long long)qv.total);
    jb_obj_end(qv.b);
}

void
api_queue_flush(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    (void)args;
    if (send(rq->srv->notify_fd, "FLUSH", 5, MSG_DONTWAIT) < 0) {
        web_error(rs, 503, "unavailable", strerror(errno));
        return;
    }
    log_info("web: %s flushed the queue", p->user);
    web_ok(rs);
}

void
api_queue_delete(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    const struct moat_config *cfg = rq->srv->cfg;
    if (!queue_id_valid(args[0])) {
        web_error(rs, 404, "not_found", "no such message in the queue");
        return;
    }
    for (size_t k = 0; k < 2; k++) {
        char path[1400], err[400];
        paths_in(cfg->state_dir, queue_paths[k], args[0], path, sizeof(path));
        struct queue_msg m;
        if (qf_load(path, &m, err, sizeof(err)) < 0)
            continue;
        /* only a message that is wholly theirs (all its recipients
         * theirs; the sender, which the client chose, gives no right):
         * the others' mail stays */
        bool all = true, any = false;
        for (size_t i = 0; i < m.nrcpt; i++) {
            bool mine = web_can_address(p, m.rcpts[i].addr);
            all &= mine;
            any |= mine;
        }
        qf_msg_free(&m);
        if (!any) {
            break;
        }
        if (!all) {
            web_error(rs, 403, "forbidden", "the message has recipients of other domains");
            return;
        }
        if (unlink(path) < 0) {
            web_error(rs, 500, "internal", strerror(errno));
            return;
        }
        log_info("%s: deleted from the queue by %s", args[0], p->user);
        web_ok(rs);
        return;
    }
    web_error(rs, 404, "not_found", "no such message in the queue");
}
