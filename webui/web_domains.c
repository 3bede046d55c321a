/*
 * web_domains.c -- adding and removing the domains Moat takes mail for,
 * and their DKIM keys, through the API: the same code as moatctl domain
 * add|del (common/domains_ctl.c, the one writer of state_dir/domains.conf;
 * the master reloads when the file changes) and moatctl dkim keygen
 * (filters/dkim_keygen.c). With node.share both go to every node through
 * Redis.
 */
#include <stdio.h>
#include <string.h>
#include "../common/mail.h"
#include "web_private.h"
#include "webui.h"
#include "../filters/filters.h"

/* domains_change's answer as the reply. */
static void
change_reply(struct web_resp *rs, int rc, const char *err)
{
    if (rc == DOMAINS_BAD)
        web_error(rs, 400, "bad_request", err);
    else if (rc != 0)
        web_error(rs, 503, "unavailable", err);
}

/* POST /api/v1/domains {name, delivery: local|relay, relay_to} */
void
api_domains_add(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    (void)args;
    const char *name = web_body_str(rq, "name"), *delivery = web_body_str(rq, "delivery");
    const char *relay_to = web_body_str(rq, "relay_to");
    if (name == NULL || !domains_name_ok(name)) {
        web_error(rs, 400, "bad_request", "name: a domain name (letters, digits, '-', '.')");
        return;
    }
    if (delivery == NULL || (strcmp(delivery, "local") != 0 && strcmp(delivery, "relay") != 0)) {
        web_error(rs, 400, "bad_request", "delivery: local or relay");
        return;
    }
    /* relayed by MX would be to this gateway itself: say where */
    bool relay = strcmp(delivery, "relay") == 0;
    if (relay && (relay_to == NULL || relay_to[0] == '\0')) {
        web_error(rs, 400, "bad_request", "a relay domain needs relay_to (host:port)");
        return;
    }
    if (!relay && relay_to && relay_to[0]) {
        web_error(rs, 400, "bad_request", "a local domain is not relayed: no relay_to");
        return;
    }
    struct domain_change c = { .add = true, .name = name, .delivery = delivery,
                               .relay_to = relay_to, .junk = -1 };
    char err[2000];
    int rc = domains_change(rq->srv->cfg, &c, err, sizeof(err));
    if (rc != 0) {
        change_reply(rs, rc, err);
        return;
    }
    log_info("web: %s added domain %s (%s%s%s)", p->user, name, delivery, relay ? " to " : "",
             relay ? relay_to : "");
    rs->status = 201;
    web_ok(rs);
}

/* DELETE /api/v1/domains/{name} */
void
api_domains_delete(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    struct domain_change c = { .add = false, .name = args[0], .junk = -1 };
    char err[2000];
    int rc = domains_change(rq->srv->cfg, &c, err, sizeof(err));
    if (rc == DOMAINS_BAD && strncmp(err, "no domain ", 10) == 0) {
        web_error(rs, 404, "not_found", err);
        return;
    }
    if (rc != 0) {
        change_reply(rs, rc, err);
        return;
    }
    log_info("web: %s removed domain %s", p->user, args[0]);
    web_ok(rs);
}

/* POST /api/v1/domains/{name}/dkim {selector, algorithm: rsa|ed25519}:
 * a new signing key, and the TXT record to publish. */
void
api_domain_dkim(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    const struct moat_config *cfg = rq->srv->cfg;
    const struct domain_conf *d = conf_domain(cfg, args[0]);
    if (d == NULL || !web_can_domain(p, d->name)) {
        web_error(rs, 404, "not_found", "no such domain");
        return;
    }
    const char *sel = web_body_str(rq, "selector"), *alg = web_body_str(rq, "algorithm");
    if (sel == NULL || (alg && strcmp(alg, "rsa") != 0 && strcmp(alg, "ed25519") != 0)) {
        web_error(rs, 400, "bad_request", "selector is required; algorithm: rsa or ed25519");
        return;
    }
    bool ed = alg && strcmp(alg, "ed25519") == 0;
    char txt[4096], err[1600], value[2200], path[1800], dir[1400];
    if (dkim_keygen_add(cfg, d->name, sel, ed, txt, sizeof(txt), err, sizeof(err)) < 0) {
        /* a bad selector or one in use is the caller's; the rest ours */
        bool theirs = strstr(err, "exists") || strstr(err, "lower-case");
        web_error(rs, theirs ? 400 : 503, theirs ? "bad_request" : "unavailable", err);
        return;
    }
    paths_in(cfg->state_dir, PATH_DKIM, d->name, dir, sizeof(dir));
    str_fmt(path, sizeof(path), "%s/%s.%s", dir, sel, ed ? "ed25519" : "key");
    if (dkim_key_record(path, value, sizeof(value), err, sizeof(err)) < 0) {
        web_error(rs, 500, "internal", err);
        return;
    }
    char name[600];
    str_fmt(name, sizeof(name), "%s._domainkey.%s", sel, d->name);
    log_info("web: %s made DKIM key %s", p->user, name);
    struct jbuf *b = &rs->body;
    rs->status = 201;
    jb_obj(b);
    jb_kstr(b, "domain", d->name);
    jb_kstr(b, "selector", sel);
    jb_kstr(b, "name", name);
    jb_kstr(b, "type", "TXT");
    jb_kstr(b, "value", value);
    jb_kstr(b, "record", txt);
    jb_obj_end(b);
}
