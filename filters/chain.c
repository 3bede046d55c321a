/*
 * chain.c -- the filter chain: loads the plugins named in `filters` (built
 * in, or NAME.so from filter_dir), and runs a phase's hooks in order. Each
 * hook runs on a worker thread while a timer on the event loop keeps its
 * deadline; a hook that misses it is counted as failed, its late result is
 * thrown away, and the plugin's failure policy decides (tempfail unless the
 * plugin says otherwise). The first verdict other than CONTINUE ends the
 * chain; scores add up; headers and Authentication-Results method results
 * are collected.
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <event2/event.h>
#include "filters.h"
#include "../common/common.h"

#define MAX_HEADERS 16384
#define MAX_AUTHRES 4096

struct filter_config {
    const struct filter_section *sec;
};

struct filter_result {
    enum filter_verdict verdict;
    char reply[256];
    struct { char name[64]; double score; char desc[160]; } sym[32];
    size_t nsym;
    char headers[MAX_HEADERS];
    size_t hlen;
    char authres[MAX_AUTHRES];
    size_t alen;
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

void
filter_verdict(struct filter_result *r, enum filter_verdict v, const char *reply_text)
{
    r->verdict = v;
    str_copy_line(r->reply, reply_text, sizeof(r->reply));
}

void
filter_add_header(struct filter_result *r, const char *name, const char *value)
{
    char n[80], v[1000];
    str_copy_line(n, name, sizeof(n));
    str_copy_line(v, value, sizeof(v));
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

const char *
filter_config_get(const struct filter_config *c, const char *key)
{
    if (c == NULL || c->sec == NULL)
        return NULL;
    for (size_t i = 0; i < c->sec->n; i++)
        if (strcmp(c->sec->keys[i], key) == 0)
            return c->sec->values[i];
    return NULL;
}

/* ------------------------------------------------------------ loading */

static filter_hook *hook_of(const struct filter_plugin *p, enum filter_phase phase);

/* Keep the names in step with filter_builtin() in common/conf.c. */
static const struct filter_plugin *const builtins[] = { &filter_antivirus, NULL };

static const struct filter_section *
find_section(const struct moat_config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->nfilter_sections; i++)
        if (strcmp(cfg->filter_sections[i].name, name) == 0)
            return &cfg->filter_sections[i];
    return NULL;
}

struct filter_chain *
filter_chain_new(const struct moat_config *cfg, char *err, size_t errsize)
{
    struct filter_chain *c = xcalloc(1, sizeof(*c));
    c->timeout_ms = cfg->filter_timeout_ms;
    str_copy(c->authserv_id, cfg->hostname, sizeof(c->authserv_id));
    c->e = xcalloc(cfg->nfilters ? cfg->nfilters : 1, sizeof(*c->e));
    for (size_t i = 0; i < cfg->nfilters; i++) {
        const char *name = cfg->filters[i];
        struct chain_entry *e = &c->e[c->n];
        for (size_t b = 0; builtins[b]; b++)
            if (strcmp(builtins[b]->name, name) == 0)
                e->p = builtins[b];
        if (e->p == NULL) {
            char path[1400];
            str_fmt(path, sizeof(path), "%s/%s.so", cfg->filter_dir, name);
            e->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
            if (e->dl == NULL) {
                snprintf(err, errsize, "filter %s: %s", name, dlerror());
                goto fail;
            }
            e->p = dlsym(e->dl, "moat_filter_plugin");
            if (e->p == NULL) {
                snprintf(err, errsize, "filter %s: %s exports no moat_filter_plugin", name, path);
                dlclose(e->dl);
                goto fail;
            }
        }
        if (e->p->abi != FILTER_ABI_VERSION || e->p->name == NULL || strcmp(e->p->name, name) != 0) {
            snprintf(err, errsize, "filter %s: ABI %u or name does not match (want ABI %u)", name,
                     e->p->abi, FILTER_ABI_VERSION);
            if (e->dl)
                dlclose(e->dl);
            goto fail;
        }
        e->cfg.sec = find_section(cfg, name);
        char perr[256] = "";
        if (e->p->init && e->p->init(&e->cfg, &e->ctx, perr, sizeof(perr)) < 0) {
            snprintf(err, errsize, "filter %s: %s", name, perr[0] ? perr : "init failed");
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

const char *
filter_verdict_name(enum filter_verdict v)
{
    static const char *names[] = { "continue", "accept", "tag", "quarantine", "tempfail",
                                   "reject", "discard" };
    return (unsigned)v < sizeof(names) / sizeof(names[0]) ? names[v] : "?";
}

/* --------------------------------------------------------------- runs */

struct run;
struct hook_job {
    struct run *run;
    size_t idx;
    filter_hook *hook;
    struct filter_result res;
    enum filter_status status;
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
    size_t need = r->hlen + r->alen + 512;
    r->out.headers = xmalloc(need);
    int k = snprintf(r->out.headers, need, "Authentication-Results: %s%s\r\n", r->c->authserv_id,
                     r->alen ? r->authres : "; none");
    r->out.headers_len = k > 0 ? (size_t)k : 0;
    memcpy(r->out.headers + r->out.headers_len, r->headers, r->hlen);
    r->out.headers_len += r->hlen;
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
    if (res->alen && r->alen + res->alen < sizeof(r->authres)) {
        memcpy(r->authres + r->alen, res->authres, res->alen + 1);
        r->alen += res->alen;
    }
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
    j->status = j->hook(e->ctx, j->run->m, &j->res);
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
    if (j->stale) {         /* the run went on without it */
        free(j);
        run_unref(r);
        return;
    }
    r->job = NULL;
    evtimer_del(r->timer);
    const char *name = r->c->e[j->idx].p->name;
    if (j->status != FILTER_DONE)
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
        r->job = j;
        r->refs++;
        unsigned ms = r->c->e[idx].p->timeout_ms ? r->c->e[idx].p->timeout_ms : r->c->timeout_ms;
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
