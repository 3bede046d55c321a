/*
 * chain_load.c -- a filter chain made from the config: each plugin named
 * in `filters` found (built in, from the table below, or filter_dir/NAME.so
 * with its ABI checked), its config (the global section and the domains'
 * own) built, its check hook run for `moatd -t`, its init for a chain.
 * chain.c runs the chain; it is freed here.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "filter_private.h"
#include "../common/mail.h"

static const struct filter_plugin *const builtins[] = {
    &filter_spf, &filter_dkim, &filter_dmarc, &filter_antivirus, &filter_attachment, &filter_rules,
    &filter_score_plugin, &filter_bayes, &filter_lists, &filter_greylist, &filter_ratelimit,
    &filter_dnsbl, &filter_combiner, &filter_arc, &filter_arc_seal, NULL
};

static const struct filter_section *
find_section(const struct filter_section *secs, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(secs[i].name, name) == 0)
            return &secs[i];
    return NULL;
}

/* The plugin called name: built in, or filter_dir/NAME.so (*dl_r set). */
static const struct filter_plugin *
plugin_find(const struct moat_config *cfg, const char *name, void **dl_r, char *err,
            size_t errsize)
{
    *dl_r = NULL;
    for (size_t b = 0; builtins[b]; b++)
        if (strcmp(builtins[b]->name, name) == 0)
            return builtins[b];
    char path[1400];
    str_fmt(path, sizeof(path), "%s/%s.so", cfg->filter_dir, name);
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (dl == NULL) {
        snprintf(err, errsize, "'%s' is not a built-in filter, and %s", name, dlerror());
        return NULL;
    }
    const struct filter_plugin *p = dlsym(dl, "moat_filter_plugin");
    if (p == NULL) {
        snprintf(err, errsize, "%s exports no moat_filter_plugin", path);
        dlclose(dl);
        return NULL;
    }
    if (p->abi < FILTER_ABI_MIN || p->abi > FILTER_ABI_VERSION || p->name == NULL ||
        strcmp(p->name, name) != 0) {
        snprintf(err, errsize, "%s: ABI %u or name does not match (want ABI %u to %u)", path,
                 p->abi, FILTER_ABI_MIN, FILTER_ABI_VERSION);
        dlclose(dl);
        return NULL;
    }
    *dl_r = dl;
    return p;
}

const char *
filter_section_get(const struct moat_config *cfg, const char *plugin, const char *key)
{
    return filter_api_section_get(find_section(cfg->filter_sections, cfg->nfilter_sections, plugin), key);
}

const char *
filter_domain_setting(const struct moat_config *cfg, const char *domain, const char *plugin,
                      const char *key)
{
    const struct domain_conf *dc = domain && domain[0] ? conf_domain(cfg, domain) : NULL;
    const char *v = dc ? filter_api_section_get(find_section(dc->filter_sections, dc->nfilter_sections,
                                                  plugin), key)
                       : NULL;
    return v ? v : filter_section_get(cfg, plugin, key);
}

static void
config_build(struct filter_config *fc, const struct moat_config *cfg, const char *name,
             struct resolver *resolver)
{
    memset(fc, 0, sizeof(*fc));
    fc->sec = find_section(cfg->filter_sections, cfg->nfilter_sections, name);
    fc->resolver = resolver;
    fc->hostname = cfg->hostname;
    fc->state_dir = cfg->state_dir;
    fc->redis = cfg->redis.address;
    fc->redis_timeout_ms = cfg->redis.timeout_ms;
    for (size_t d = 0; d < cfg->ndomains; d++) {
        const struct domain_conf *dc = &cfg->domains[d];
        const struct filter_section *sec = find_section(dc->filter_sections, dc->nfilter_sections, name);
        if (sec == NULL)
            continue;
        fc->dom = xrealloc(fc->dom, (fc->ndom + 1) * sizeof(*fc->dom));
        fc->dom[fc->ndom++] = (struct domain_override){ dc->name, sec };
    }
    /* the outbound policy group: overrides like a domain's, by its name */
    const struct filter_section *out = find_section(cfg->outbound_sections,
                                                    cfg->noutbound_sections, name);
    if (out) {
        fc->dom = xrealloc(fc->dom, (fc->ndom + 1) * sizeof(*fc->dom));
        fc->dom[fc->ndom++] = (struct domain_override){ CONF_OUTBOUND_GROUP, out };
    }
}

int
filter_chain_check(const struct moat_config *cfg, conf_report_fn *report, void *ctx)
{
    int problems = 0;
    char msg[1400];
    for (size_t i = 0; i < cfg->nfilters; i++) {
        const char *name = cfg->filters[i];
        char err[512] = "";
        void *dl;
        const struct filter_plugin *p = plugin_find(cfg, name, &dl, err, sizeof(err));
        if (p == NULL) {
            snprintf(msg, sizeof(msg), "%s:%u: filters: %s", cfg->path, cfg->filters_line, err);
            report(msg, ctx);
            problems++;
            continue;
        }
        struct filter_config fc;
        config_build(&fc, cfg, name, NULL);
        if (p->check && p->check(&fc, err, sizeof(err)) < 0) {
            /* "KEY: why" or "DOMAIN/KEY: why": name the line of that key */
            const struct filter_section *sec = fc.sec;
            char path[400], key[128] = "";
            str_fmt(path, sizeof(path), "%s", name);
            const char *colon = strstr(err, ": ");
            const char *why = err;
            if (colon && (size_t)(colon - err) < sizeof(key)) {
                memcpy(key, err, (size_t)(colon - err));
                key[colon - err] = '\0';
                why = colon + 2;
                char *slash = strchr(key, '/');
                if (slash) {
                    *slash = '\0';
                    for (size_t d = 0; d < fc.ndom; d++)
                        if (strcmp(fc.dom[d].domain, key) == 0)
                            sec = fc.dom[d].sec;
                    if (strcmp(key, CONF_OUTBOUND_GROUP) == 0)
                        str_fmt(path, sizeof(path), "outbound.%s", name);
                    else
                        str_fmt(path, sizeof(path), "domains.%s.%s", key, name);
                    memmove(key, slash + 1, strlen(slash + 1) + 1);
                }
            }
            unsigned line = sec ? sec->line : 0;
            bool found = false;
            for (size_t k = 0; sec && k < sec->n; k++)
                if (strcmp(sec->keys[k], key) == 0) {
                    line = sec->lines[k];
                    found = true;
                }
            if (found)
                snprintf(msg, sizeof(msg), "%s:%u: %s.%s: %s", cfg->path, line, path, key, why);
            else
                snprintf(msg, sizeof(msg), "%s:%u: %s: %s", cfg->path, line, path, err);
            report(msg, ctx);
            problems++;
        }
        free(fc.dom);
        if (dl)
            dlclose(dl);
    }
    return problems ? -1 : 0;
}

/* The configured plugins, in the config's order (only: those named in
 * it, NULL-terminated; NULL: all), each found and its init run. */
static struct filter_chain *
chain_load(const struct moat_config *cfg, const char *const *only, struct resolver *resolver,
           char *err, size_t errsize)
{
    struct filter_chain *c = xcalloc(1, sizeof(*c));
    c->timeout_ms = cfg->filter_timeout_ms;
    str_copy(c->authserv_id, cfg->hostname, sizeof(c->authserv_id));
    c->e = xcalloc(cfg->nfilters ? cfg->nfilters : 1, sizeof(*c->e));
    for (size_t i = 0; i < cfg->nfilters; i++) {
        const char *name = cfg->filters[i];
        bool wanted = only == NULL;
        for (size_t k = 0; !wanted && only[k]; k++)
            wanted = strcmp(only[k], name) == 0;
        if (!wanted)
            continue;
        struct chain_entry *e = &c->e[c->n];
        char perr[512] = "";
        e->p = plugin_find(cfg, name, &e->dl, perr, sizeof(perr));
        if (e->p == NULL) {
            snprintf(err, errsize, "filter %s: %s", name, perr);
            goto fail;
        }
        config_build(&e->cfg, cfg, name, resolver);
        if (e->p->init && e->p->init(&e->cfg, &e->ctx, perr, sizeof(perr)) < 0) {
            snprintf(err, errsize, "filter %s: %s", name, perr[0] ? perr : "init failed");
            free(e->cfg.dom);
            if (e->dl)
                dlclose(e->dl);
            goto fail;
        }
        c->n++;
        if (only == NULL)       /* an offline chain loads quietly (moatctl) */
            log_info("filter %s loaded%s", name, e->dl ? " (shared object)" : "");
    }
    return c;
fail:
    filter_chain_free(&c);
    return NULL;
}

struct filter_chain *
filter_chain_new(const struct moat_config *cfg, struct resolver *resolver, char *err,
                 size_t errsize)
{
    return chain_load(cfg, NULL, resolver, err, errsize);
}

struct filter_chain *
filter_chain_offline(const struct moat_config *cfg, const char *const *only, char *err,
                     size_t errsize)
{
    return chain_load(cfg, only, NULL, err, errsize);
}

void
filter_chain_free(struct filter_chain **cp)
{
    struct filter_chain *c = *cp;
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->n; i++) {
        if (c->e[i].p->free)
            c->e[i].p->free(c->e[i].ctx);
        free(c->e[i].cfg.dom);
        if (c->e[i].dl)
            dlclose(c->e[i].dl);
    }
    free(c->e);
    free(c);
    *cp = NULL;
}
