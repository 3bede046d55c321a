/*
 * conf_query.c -- what the roles ask of a loaded config: a domain's entry,
 * its route (relay_to or a transport, TLS policy, AUTH), its policy group,
 * who may send as it, the listeners of a kind, a recipient the static
 * verification list knows. conf.c builds and checks the config; nothing
 * here reads a file.
 */
#include <stdlib.h>
#include <string.h>
#include "mail.h"

const struct domain_conf *
conf_domain(const struct moat_config *cfg, const char *domain)
{
    for (size_t i = 0; i < cfg->ndomains; i++)
        if (str_ieq(cfg->domains[i].name, domain))
            return &cfg->domains[i];
    return NULL;
}

void
conf_route(const struct moat_config *cfg, const char *domain, struct conf_route *r)
{
    const struct domain_conf *dc = conf_domain(cfg, domain);
    r->relay_to = "";
    r->tls = cfg->queue.tls;
    r->auth_user = r->auth_password = "";
    r->via = "";
    if (dc && dc->relay_to[0]) {
        r->relay_to = dc->relay_to;
        if (dc->tls_set)
            r->tls = dc->tls;
        else if (r->tls == TLS_MTA_STS)
            r->tls = TLS_MAY;       /* MTA-STS is about MX hosts */
        r->via = dc->name;
        return;
    }
    /* the exact name, else the longest ".parent" that matches, else "*" */
    const struct transport *best = NULL;
    size_t best_len = 0, dlen = strlen(domain);
    for (size_t i = 0; i < cfg->ntransports; i++) {
        const struct transport *t = &cfg->transports[i];
        size_t tl = strlen(t->name);
        if (str_ieq(t->name, domain)) {
            best = t;
            break;
        }
        if (t->name[0] == '.' && dlen > tl && str_ieq(domain + dlen - tl, t->name) &&
            tl > best_len) {
            best = t;
            best_len = tl;
        } else if (strcmp(t->name, "*") == 0 && best == NULL) {
            best = t;
        }
    }
    if (best == NULL)
        return;
    r->relay_to = best->relay_to;
    if (best->tls_set)
        r->tls = best->tls;
    else if (r->tls == TLS_MTA_STS && best->relay_to[0])
        r->tls = TLS_MAY;
    r->auth_user = best->auth_user;
    r->auth_password = best->auth_password;
    r->via = best->name;
}

enum sender_login
conf_sender_login(const struct moat_config *cfg, const char *domain)
{
    const struct domain_conf *d = conf_domain(cfg, domain);
    return d && d->sender_login_set ? d->sender_login : cfg->smtp.sender_login;
}

const char *
conf_policy_group(const struct moat_config *cfg, const char *rcpt_domain)
{
    const struct domain_conf *d = conf_domain(cfg, rcpt_domain);
    return d && d->nfilter_sections ? d->name : "";
}

const struct listen_list *
conf_listeners(const struct moat_config *cfg, enum listen_kind k)
{
    switch (k) {
    case LISTEN_SMTP: return &cfg->listen.smtp;
    case LISTEN_SUBMISSION: return &cfg->listen.submission;
    case LISTEN_SMTPS: return &cfg->listen.smtps;
    case LISTEN_POP3: return &cfg->listen.pop3;
    case LISTEN_POP3S: return &cfg->listen.pop3s;
    case LISTEN_IMAP: return &cfg->listen.imap;
    case LISTEN_IMAPS: return &cfg->listen.imaps;
    case LISTEN_WEB: return &cfg->listen.web;
    case LISTEN_WEBS: return &cfg->listen.webs;
    case LISTEN_SIEVE: return &cfg->listen.sieve;
    default: return &cfg->listen.smtp;
    }
}

const char *
conf_outbound_group(const struct moat_config *cfg)
{
    return cfg->has_outbound ? CONF_OUTBOUND_GROUP : "";
}

bool
conf_verify_known(const struct domain_conf *d, const char *addr)
{
    char key[400];
    str_copy(key, addr, sizeof(key));
    str_lower(key);
    const char *k = key;
    return d->nverify_addrs &&
           bsearch(&k, d->verify_addrs, d->nverify_addrs, sizeof(char *), str_ptr_cmp) != NULL;
}

const struct conf_nets *
conf_mynetworks(const struct moat_config *cfg, const struct listen_addr *la)
{
    return la && la->mynetworks.set ? &la->mynetworks : &cfg->smtp.mynetworks;
}
