/*
 * chain.c -- the filter chain: loads the plugins named in `filters` (built
 * in, or NAME.so from filter_dir), and runs a phase's hooks in order. Each
 * hook runs on a worker thread while a timer on the event loop keeps its
 * deadline; a hook that misses it is counted as failed, its late result is
 * thrown away, and the plugin's failure policy decides (tempfail unless the
 * plugin says otherwise). The first verdict other than CONTINUE ends the
 * chain; scores add up; headers and Authentication-Results method results
 * are collected.
 *
 * A hook sees its deadline through filter_expired (a clock read, and a
 * flag the timer sets) and stops within one bounded step of its work; a
 * hook that was told "expired" has its result thrown away even when it
 * comes back before the timer, and one still queued at its deadline is
 * not started at all. So the worker is free soon after the deadline.
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <event2/event.h>
#include "filters.h"
#include "../common/mail.h"

#define MAX_HEADERS 16384
#define MAX_AUTHRES 4096

#define MAX_NOTES 32

struct domain_override {
    const char *domain;
    const struct filter_section *sec;
};

struct filter_config {
    const struct filter_section *sec;       /* the global section, or NULL */
    struct domain_override *dom;            /* this plugin's per-domain sections */
    size_t ndom;
    struct resolver *resolver;              /* NULL when checking only */
    const char *hostname, *state_dir;
    const char *redis;                      /* redis.address, "" when unset */
    unsigned redis_timeout_ms;
};

struct note { char key[64]; char value[512]; };
struct notes { struct note v[MAX_NOTES]; size_t n; };

struct filter_result {
    enum filter_verdict verdict;
    char reply[256];
    struct { char name[64]; double score; char desc[160]; } sym[128];
    size_t nsym;
    char headers[MAX_HEADERS];
    size_t hlen;
    char authres[MAX_AUTHRES];
    size_t alen;
    struct notes notes;                     /* set by this hook */
    const struct notes *earlier;            /* left by the plugins before it */
    struct filter_mime **mime;              /* the run's parse, made on first use */
    const struct filter_outcome *so_far;    /* the symbols of the plugins before it */
    char replace[80];                       /* filter_replace_header: the field's name */
    char replace_line[2100];                /* and its new "Name: value\r\n" */
    double deadline;                        /* time_mono(); 0: none */
    atomic_bool cancelled;                  /* the chain gave up on the hook */
    bool expired;                           /* the hook was told so: its result is void */
};

struct chain_entry {
    const struct filter_plugin *p;
    void *ctx;
    void *dl;
    struct filter_config cfg;
};

struct filter_chain {
    struct chain_entry *e;
    size_t n;
    unsigned timeout_ms;
    char authserv_id[256];
};

/* ---------------------------------------------------- for the plugins */

void
filter_symbol(struct filter_result *r, const char *name, double score, const char *desc)
{
    if (r->nsym == sizeof(r->sym) / sizeof(r->sym[0]))
        return;
    str_copy_line(r->sym[r->nsym].name, name, sizeof(r->sym[0].name));
    r->sym[r->nsym].score = score;
    str_copy_line(r->sym[r->nsym].desc, desc, sizeof(r->sym[0].desc));
    r->nsym++;
}

double
filter_score(const struct filter_result *r)
{
    return r->so_far ? r->so_far->score : 0;
}

const char *
filter_symbol_at(const struct filter_result *r, size_t i, double *score_r)
{
    if (r->so_far == NULL || i >= r->so_far->nsym)
        return NULL;
    if (score_r)
        *score_r = r->so_far->sym[i].score;
    return r->so_far->sym[i].name;
}

void
filter_verdict(struct filter_result *r, enum filter_verdict v, const char *reply_text)
{
    r->verdict = v;
    str_copy_line(r->reply, reply_text, sizeof(r->reply));
}

/* A header value as given, folded lines kept: a line break followed by
 * white space becomes CRLF + that space; any other CR or LF a space, so a
 * plugin cannot end the field early or start another one. */
static void
fold_value(char *dst, const char *src, size_t size)
{
    size_t o = 0;
    for (const char *p = src ? src : ""; *p && o + 3 < size; p++) {
        if (*p == '\r' || *p == '\n') {
            const char *q = p;
            if (q[0] == '\r' && q[1] == '\n')
                q++;
            if ((q[1] == ' ' || q[1] == '\t') && o > 0) {
                dst[o++] = '\r';
                dst[o++] = '\n';
                p = q;
                continue;
            }
            dst[o++] = ' ';
            p = q;
            continue;
        }
        dst[o++] = *p;
    }
    dst[o] = '\0';
}

void
filter_add_header(struct filter_result *r, const char *name, const char *value)
{
    char n[80], v[2000];
    str_copy_line(n, name, sizeof(n));
    fold_value(v, value, sizeof(v));
    for (char *p = n; *p; p++)                  /* a field name: printable, no ':' */
        if (*p <= ' ' || *p == ':' || (unsigned char)*p >= 0x7f)
            return;
    int k = snprintf(r->headers + r->hlen, sizeof(r->headers) - r->hlen, "%s: %s\r\n", n, v);
    if (k > 0 && (size_t)k < sizeof(r->headers) - r->hlen)
        r->hlen += (size_t)k;
    else
        r->headers[r->hlen] = '\0';
}

void
filter_replace_header(struct filter_result *r, const char *name, const char *value)
{
    char n[80], v[2000];
    str_copy_line(n, name, sizeof(n));
    fold_value(v, value, sizeof(v));
    for (char *p = n; *p; p++)
        if (*p <= ' ' || *p == ':' || (unsigned char)*p >= 0x7f)
            return;
    str_copy(r->replace, n, sizeof(r->replace));
    snprintf(r->replace_line, sizeof(r->replace_line), "%s: %s\r\n", n, v);
}

void
filter_auth_result(struct filter_result *r, const char *resinfo)
{
    char v[600];
    str_copy_line(v, resinfo, sizeof(v));
    for (char *p = v; *p; p++)
        if (*p == ';')
            *p = ',';       /* one resinfo, no way to forge a second */
    int k = snprintf(r->authres + r->alen, sizeof(r->authres) - r->alen, ";\r\n\t%s", v);
    if (k > 0 && (size_t)k < sizeof(r->authres) - r->alen)
        r->alen += (size_t)k;
    else
        r->authres[r->alen] = '\0';
}

static void
notes_put(struct notes *n, const char *key, const char *value)
{
    size_t i;
    for (i = 0; i < n->n; i++)
        if (strcmp(n->v[i].key, key) == 0)
            break;
    if (i == n->n) {
        if (n->n == MAX_NOTES)
            return;
        n->n++;
        str_copy(n->v[i].key, key, sizeof(n->v[i].key));
    }
    str_copy(n->v[i].value, value, sizeof(n->v[i].value));
}

static const char *
notes_find(const struct notes *n, const char *key)
{
    for (size_t i = 0; n && i < n->n; i++)
        if (strcmp(n->v[i].key, key) == 0)
            return n->v[i].value;
    return NULL;
}

void
filter_note_set(struct filter_result *r, const char *key, const char *value)
{
    notes_put(&r->notes, key, value ? value : "");
}

bool
filter_expired(struct filter_result *r)
{
    if (r == NULL)
        return false;
    if (!r->expired && (atomic_load(&r->cancelled) ||
                        (r->deadline > 0 && time_mono() >= r->deadline)))
        r->expired = true;
    return r->expired;
}

const char *
filter_note_get(const struct filter_result *r, const char *key)
{
    const char *v = notes_find(&r->notes, key);
    return v ? v : notes_find(r->earlier, key);
}

/* Hooks run one after another, so the first to ask parses and the rest
 * share it; before DATA there is nothing to parse. */
const struct filter_part *
filter_parts(struct filter_result *r, const struct filter_msg *m, size_t *n_r)
{
    *n_r = 0;
    if (r->mime == NULL || m->data == NULL)
        return NULL;
    if (*r->mime == NULL)       /* cut short only when this hook expired: nobody uses it then */
        *r->mime = mime_parse_until(m->data, m->len, r);
    return mime_parts(*r->mime, n_r);
}

const struct filter_text *
filter_text(struct filter_result *r, const struct filter_msg *m)
{
    size_t n;
    filter_parts(r, m, &n);
    if (r->mime == NULL || *r->mime == NULL)
        return NULL;
    return mime_text_until(*r->mime, r);
}

static const char *
section_get(const struct filter_section *sec, const char *key)
{
    for (size_t i = 0; sec && i < sec->n; i++)
        if (strcmp(sec->keys[i], key) == 0)
            return sec->values[i];
    return NULL;
}

const char *
filter_config_get(const struct filter_config *c, const char *key)
{
    return c ? section_get(c->sec, key) : NULL;
}

const char *
filter_config_hostname(const struct filter_config *c)
{
    return c->hostname;
}

const char *
filter_config_redis(const struct filter_config *c, unsigned *timeout_ms_r)
{
    if (timeout_ms_r)
        *timeout_ms_r = c->redis_timeout_ms;
    return c->redis;
}

const char *
filter_config_state_dir(const struct filter_config *c)
{
    return c->state_dir;
}

int
filter_config_dir(const struct filter_config *c, enum filter_dir d, char *out, size_t size)
{
    static const enum state_path path[] = {
        [FILTER_DIR_DKIM] = PATH_DKIM, [FILTER_DIR_DMARC] = PATH_DMARC,
        [FILTER_DIR_CACHE] = PATH_CACHE,
    };
    return paths_get(c->state_dir, path[d], out, size);
}

const char *
filter_setting(const struct filter_config *c, const char *domain, const char *key)
{
    if (c == NULL)
        return NULL;
    for (size_t i = 0; domain && domain[0] && i < c->ndom; i++)
        if (str_ieq(c->dom[i].domain, domain)) {
            const char *v = section_get(c->dom[i].sec, key);
            if (v)
                return v;
            break;
        }
    return section_get(c->sec, key);
}

int
filter_settings_each(const struct filter_config *c, filter_setting_fn *fn, char *err,
                     size_t errsize)
{
    int rc = 0;
    for (size_t i = 0; c->sec && i < c->sec->n && rc == 0; i++)
        rc = fn(c->sec->keys[i], c->sec->values[i], "", err, errsize);
    for (size_t d = 0; d < c->ndom && rc == 0; d++)
        for (size_t i = 0; i < c->dom[d].sec->n && rc == 0; i++)
            rc = fn(c->dom[d].sec->keys[i], c->dom[d].sec->values[i], c->dom[d].domain, err,
                    errsize);
    return rc;
}

int
filter_check_action(const char *domain, const char *key, const char *value, char *err,
                    size_t errsize)
{
    enum filter_verdict v;
    if (filter_verdict_parse(value, &v) == 0 && v != FILTER_ACCEPT && v != FILTER_DISCARD)
        return 0;
    snprintf(err, errsize, "%s%s%s: '%s' is not one of: continue tag quarantine tempfail reject",
             domain, domain[0] ? "/" : "", key, value);
    return -1;
}

static void
answer_map(struct dns_answer *d, struct filter_dns *a)
{
    static const enum filter_dns_status map[] = {
        [DNS_OK] = FILTER_DNS_OK, [DNS_NXDOMAIN] = FILTER_DNS_NXDOMAIN,
        [DNS_NODATA] = FILTER_DNS_NODATA, [DNS_TEMPFAIL] = FILTER_DNS_TEMPFAIL,
    };
    a->status = map[d->status];
    a->n = d->n;
    a->rdata = d->rdata;
    a->rdlen = d->rdlen;
    a->ttl = d->ttl;
    a->packet = d->packet;
    a->packet_len = d->packet_len;
    a->priv = d;
}

void
filter_dns_lookup(const struct filter_config *c, const char *name, unsigned rrtype,
                  struct filter_dns *a)
{
    memset(a, 0, sizeof(*a));
    a->status = FILTER_DNS_TEMPFAIL;
    if (c == NULL || c->resolver == NULL)
        return;
    struct dns_answer *d = xmalloc(sizeof(*d));
    resolver_lookup(c->resolver, name, (int)rrtype, d);
    answer_map(d, a);
}

void
filter_dns_lookup_many(const struct filter_config *c, const char *const *names, size_t n,
                       unsigned rrtype, struct filter_dns *answers)
{
    memset(answers, 0, n * sizeof(*answers));
    for (size_t i = 0; i < n; i++)
        answers[i].status = FILTER_DNS_TEMPFAIL;
    if (c == NULL || c->resolver == NULL || n == 0)
        return;
    struct dns_answer *d = xcalloc(n, sizeof(*d));
    resolver_lookup_many(c->resolver, names, n, (int)rrtype, d);
    for (size_t i = 0; i < n; i++) {
        struct dns_answer *one = xmalloc(sizeof(*one));
        *one = d[i];
        answer_map(one, &answers[i]);
    }
    free(d);
}

void
filter_dns_free(struct filter_dns *a)
{
    if (a->priv) {
        resolver_answer_free(a->priv);
        free(a->priv);
    }
    memset(a, 0, sizeof(*a));
}

/* ------------------------------------------------------------ loading */

static filter_hook *hook_of(const struct filter_plugin *p, enum filter_phase phase);

static const struct filter_plugin *const builtins[] = {
    &filter_spf, &filter_dkim, &filter_dmarc, &filter_antivirus, &filter_attachment, &filter_rules,
    &filter_score_plugin, &filter_bayes, &filter_lists, &filter_greylist, &filter_ratelimit,
    &filter_dnsbl, &filter_combiner, NULL
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
    return section_get(find_section(cfg->filter_sections, cfg->nfilter_sections, plugin), key);
}

const char *
filter_domain_setting(const struct moat_config *cfg, const char *domain, const char *plugin,
                      const char *key)
{
    const struct domain_conf *dc = domain && domain[0] ? conf_domain(cfg, domain) : NULL;
    const char *v = dc ? section_get(find_section(dc->filter_sections, dc->nfilter_sections,
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

struct filter_chain *
filter_chain_new(const struct moat_config *cfg, struct resolver *resolver, char *err,
                 size_t errsize)
{
    struct filter_chain *c = xcalloc(1, sizeof(*c));
    c->timeout_ms = cfg->filter_timeout_ms;
    str_copy(c->authserv_id, cfg->hostname, sizeof(c->authserv_id));
    c->e = xcalloc(cfg->nfilters ? cfg->nfilters : 1, sizeof(*c->e));
    for (size_t i = 0; i < cfg->nfilters; i++) {
        const char *name = cfg->filters[i];
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
        log_info("filter %s loaded%s", name, e->dl ? " (shared object)" : "");
    }
    return c;
fail:
    filter_chain_free(&c);
    return NULL;
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

bool
filter_chain_empty(const struct filter_chain *c)
{
    return c == NULL || c->n == 0;
}

static const char *const verdict_names[] = { "continue", "accept", "tag", "quarantine",
                                             "tempfail", "reject", "discard" };

const char *
filter_reason_class(const char *plugin)
{
    static const char *const map[][2] = {
        { "antivirus", "virus" }, { "score", "spam" }, { "rules", "spam" }, { "bayes", "spam" },
        { "dnsbl", "spam" }, { "combiner", "spam" }, { "lists", "blocklist" }, { "spf", "spf" },
        { "dkim", "dkim" }, { "dmarc", "dmarc" }, { "attachment", "attachment" }, { "greylist", "greylist" },
        { "ratelimit", "ratelimit" },
    };
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        if (strcmp(plugin, map[i][0]) == 0)
            return map[i][1];
    return plugin[0] ? "policy" : "";
}

const char *
filter_verdict_name(enum filter_verdict v)
{
    return (unsigned)v < sizeof(verdict_names) / sizeof(verdict_names[0]) ? verdict_names[v] : "?";
}

int
filter_verdict_parse(const char *name, enum filter_verdict *v_r)
{
    for (size_t i = 0; name && i < sizeof(verdict_names) / sizeof(verdict_names[0]); i++)
        if (strcmp(verdict_names[i], name) == 0) {
            *v_r = (enum filter_verdict)i;
            return 0;
        }
    return -1;
}

/* --------------------------------------------------------------- runs */

struct run;
struct hook_job {
    struct run *run;
    size_t idx;
    filter_hook *hook;
    struct filter_result res;
    enum filter_status status;
    double ended;           /* time_mono() when the hook returned */
    bool stale;             /* its deadline passed: the result is not wanted */
};

struct run {
    struct filter_chain *c;
    struct event_base *base;
    struct workq *wq;
    enum filter_phase phase;
    const struct filter_msg *m;
    filter_done_fn *done;
    filter_release_fn *release;
    void *arg;
    size_t next;
    struct hook_job *job;
    struct event *timer;
    struct filter_outcome out;
    char headers[MAX_HEADERS];
    size_t hlen;
    char authres[MAX_AUTHRES];
    size_t alen;
    char replace_line[2100];    /* the replaced field's new form, added last */
    struct notes notes;     /* left by the plugins so far */
    struct filter_mime *mime;   /* the message parsed once, for every plugin */
    unsigned refs;          /* the run itself + jobs still on a worker */
    bool finished;
};

static void run_next(struct run *r);

static void
run_unref(struct run *r)
{
    if (--r->refs > 0)
        return;
    r->release(r->arg);
    mime_free(&r->mime);
    free(r->out.headers);
    free(r);
}

static filter_hook *
hook_of(const struct filter_plugin *p, enum filter_phase phase)
{
    switch (phase) {
    case FILTER_PHASE_CONNECT: return p->on_connect;
    case FILTER_PHASE_HELO: return p->on_helo;
    case FILTER_PHASE_MAIL: return p->on_mail;
    case FILTER_PHASE_RCPT: return p->on_rcpt;
    case FILTER_PHASE_DATA_END: return p->on_data_end;
    }
    return NULL;
}

bool
filter_chain_has(const struct filter_chain *c, enum filter_phase phase)
{
    for (size_t i = 0; c && i < c->n; i++)
        if (hook_of(c->e[i].p, phase))
            return true;
    return false;
}

static enum filter_verdict
failure_verdict(const struct filter_plugin *p)
{
    return p->on_failure == FILTER_CONTINUE ? FILTER_TEMPFAIL : p->on_failure;
}

static void
run_finish(struct run *r)
{
    r->finished = true;
    event_free(r->timer);
    r->timer = NULL;
    /* Authentication-Results first (RFC 8601: on top), then the headers. */
    size_t rl = strlen(r->replace_line);
    size_t need = r->hlen + r->alen + rl + 512;
    r->out.headers = xmalloc(need);
    int k = snprintf(r->out.headers, need, "Authentication-Results: %s%s\r\n", r->c->authserv_id,
                     r->alen ? r->authres : "; none");
    r->out.headers_len = k > 0 ? (size_t)k : 0;
    memcpy(r->out.headers + r->out.headers_len, r->headers, r->hlen);
    r->out.headers_len += r->hlen;
    memcpy(r->out.headers + r->out.headers_len, r->replace_line, rl);
    r->out.headers_len += rl;
    r->out.headers[r->out.headers_len] = '\0';
    r->done(r->arg, &r->out);
    run_unref(r);
}

static void
merge(struct run *r, const char *name, const struct filter_result *res)
{
    struct filter_outcome *o = &r->out;
    for (size_t i = 0; i < res->nsym; i++) {
        o->score += res->sym[i].score;
        size_t n = strlen(o->symbols);
        snprintf(o->symbols + n, sizeof(o->symbols) - n, "%s%s(%.2f)", n ? " " : "",
                 res->sym[i].name, res->sym[i].score);
        if (o->nsym < sizeof(o->sym) / sizeof(o->sym[0])) {
            str_copy(o->sym[o->nsym].name, res->sym[i].name, sizeof(o->sym[0].name));
            o->sym[o->nsym].score = res->sym[i].score;
            str_copy(o->sym[o->nsym].desc, res->sym[i].desc, sizeof(o->sym[0].desc));
            o->nsym++;
        }
    }
    if (res->hlen && r->hlen + res->hlen < sizeof(r->headers)) {
        memcpy(r->headers + r->hlen, res->headers, res->hlen);
        r->hlen += res->hlen;
    }
    if (res->replace[0]) {
        str_copy(o->replace, res->replace, sizeof(o->replace));
        str_copy(r->replace_line, res->replace_line, sizeof(r->replace_line));
    }
    if (res->alen && r->alen + res->alen < sizeof(r->authres)) {
        memcpy(r->authres + r->alen, res->authres, res->alen + 1);
        r->alen += res->alen;
    }
    for (size_t i = 0; i < res->notes.n; i++)
        notes_put(&r->notes, res->notes.v[i].key, res->notes.v[i].value);
    if (res->verdict != FILTER_CONTINUE) {
        o->verdict = res->verdict;
        str_copy(o->reply, res->reply, sizeof(o->reply));
        str_copy(o->decided_by, name, sizeof(o->decided_by));
    }
}

static void
hook_work(void *arg)
{
    struct hook_job *j = arg;
    const struct chain_entry *e = &j->run->c->e[j->idx];
    double t0 = time_mono();
    if (filter_expired(&j->res)) {          /* waited past its deadline: not started */
        j->status = FILTER_ERROR;
        j->ended = t0;
        return;
    }
    j->status = j->hook(e->ctx, j->run->m, &j->res);
    j->ended = time_mono();
    trace_timing("moat_filter_seconds", "filter", e->p->name, j->ended - t0);
}

static void
plugin_failed(struct run *r, size_t idx, const char *how)
{
    const struct filter_plugin *p = r->c->e[idx].p;
    enum filter_verdict v = failure_verdict(p);
    log_warn("%s: filter %s %s: verdict %s", r->m->queue_id, p->name, how,
             filter_verdict_name(v));
    r->out.verdict = v;
    snprintf(r->out.reply, sizeof(r->out.reply), "filter %s %s", p->name, how);
    str_copy(r->out.decided_by, p->name, sizeof(r->out.decided_by));
}

static void
hook_done(void *arg)
{
    struct hook_job *j = arg;
    struct run *r = j->run;
    const char *name = r->c->e[j->idx].p->name;
    if (j->stale || j->res.expired)     /* how soon its worker was free again */
        log_info("%s: filter %s returned %.3fs after its deadline", r->m->queue_id, name,
                 j->ended > j->res.deadline ? j->ended - j->res.deadline : 0.0);
    if (j->stale) {         /* the run went on without it */
        free(j);
        run_unref(r);
        return;
    }
    r->job = NULL;
    evtimer_del(r->timer);
    if (j->res.expired)     /* it saw its deadline pass: whatever it left is partial */
        plugin_failed(r, j->idx, "timed out");
    else if (j->status != FILTER_DONE)
        plugin_failed(r, j->idx, "failed");
    else
        merge(r, name, &j->res);
    free(j);
    run_unref(r);
    if (r->out.verdict != FILTER_CONTINUE)
        run_finish(r);
    else
        run_next(r);
}

static void
hook_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct run *r = arg;
    struct hook_job *j = r->job;
    if (j == NULL)
        return;
    j->stale = true;
    atomic_store(&j->res.cancelled, true);  /* the hook sees it at its next check */
    r->job = NULL;
    plugin_failed(r, j->idx, "timed out");
    run_finish(r);
}

static void
run_next(struct run *r)
{
    while (r->next < r->c->n) {
        size_t idx = r->next++;
        filter_hook *h = hook_of(r->c->e[idx].p, r->phase);
        if (h == NULL)
            continue;
        struct hook_job *j = xcalloc(1, sizeof(*j));
        j->run = r;
        j->idx = idx;
        j->hook = h;
        j->res.earlier = &r->notes;
        j->res.mime = &r->mime;
        j->res.so_far = &r->out;
        r->job = j;
        r->refs++;
        unsigned ms = r->c->e[idx].p->timeout_ms ? r->c->e[idx].p->timeout_ms : r->c->timeout_ms;
        j->res.deadline = time_mono() + ms / 1000.0;
        struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };
        evtimer_add(r->timer, &tv);
        workq_submit(r->wq, hook_work, hook_done, j);
        return;
    }
    run_finish(r);
}

void
filter_chain_run(struct filter_chain *c, struct event_base *base, struct workq *wq,
                 enum filter_phase phase, const struct filter_msg *m, filter_done_fn *done,
                 filter_release_fn *release, void *arg)
{
    struct run *r = xcalloc(1, sizeof(*r));
    r->c = c;
    r->base = base;
    r->wq = wq;
    r->phase = phase;
    r->m = m;
    r->done = done;
    r->release = release;
    r->arg = arg;
    r->refs = 1;
    r->timer = evtimer_new(base, hook_timeout, r);
    run_next(r);
}

/* ----------------------------------------------------- offline scoring */

struct filter_chain *
filter_chain_offline(const struct moat_config *cfg, const char *const *only, char *err,
                     size_t errsize)
{
    struct filter_chain *c = xcalloc(1, sizeof(*c));
    c->timeout_ms = cfg->filter_timeout_ms;
    str_copy(c->authserv_id, cfg->hostname, sizeof(c->authserv_id));
    c->e = xcalloc(cfg->nfilters ? cfg->nfilters : 1, sizeof(*c->e));
    for (size_t i = 0; i < cfg->nfilters; i++) {
        const char *name = cfg->filters[i];
        bool wanted = false;
        for (size_t k = 0; only[k] && !wanted; k++)
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
        config_build(&e->cfg, cfg, name, NULL);
        if (e->p->init && e->p->init(&e->cfg, &e->ctx, perr, sizeof(perr)) < 0) {
            snprintf(err, errsize, "filter %s: %s", name, perr[0] ? perr : "init failed");
            free(e->cfg.dom);
            if (e->dl)
                dlclose(e->dl);
            goto fail;
        }
        c->n++;
    }
    return c;
fail:
    filter_chain_free(&c);
    return NULL;
}

int
filter_chain_score(struct filter_chain *c, const struct filter_msg *m, const char *note_key,
                   const char *note_value, struct filter_outcome *out, char *err,
                   size_t errsize)
{
    memset(out, 0, sizeof(*out));
    struct notes *notes = xcalloc(1, sizeof(*notes));
    if (note_key)
        notes_put(notes, note_key, note_value);
    struct filter_mime *mime = NULL;
    struct filter_result *res = xmalloc(sizeof(*res));
    int rc = 0;
    for (size_t i = 0; i < c->n && rc == 0; i++) {
        filter_hook *h = c->e[i].p->on_data_end;
        if (h == NULL)
            continue;
        memset(res, 0, sizeof(*res));
        res->earlier = notes;
        res->mime = &mime;
        res->so_far = out;
        if (h(c->e[i].ctx, m, res) != FILTER_DONE || res->verdict == FILTER_TEMPFAIL) {
            snprintf(err, errsize, "filter %s %s", c->e[i].p->name,
                     res->verdict == FILTER_TEMPFAIL ? res->reply : "failed");
            rc = -1;
            break;
        }
        for (size_t k = 0; k < res->nsym; k++) {
            out->score += res->sym[k].score;
            if (out->nsym < sizeof(out->sym) / sizeof(out->sym[0])) {
                str_copy(out->sym[out->nsym].name, res->sym[k].name, sizeof(out->sym[0].name));
                out->sym[out->nsym].score = res->sym[k].score;
                str_copy(out->sym[out->nsym].desc, res->sym[k].desc, sizeof(out->sym[0].desc));
                out->nsym++;
            }
        }
        for (size_t k = 0; k < res->notes.n; k++)
            notes_put(notes, res->notes.v[k].key, res->notes.v[k].value);
    }
    free(res);
    mime_free(&mime);
    free(notes);
    return rc;
}
