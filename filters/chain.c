/*
 * chain.c -- running the filter chain (chain_load.c makes it): a phase's
 * hooks in the config's order. Each hook runs on a worker thread while a
 * timer on the event loop keeps its deadline; a hook that misses it is
 * counted as failed, its late result is thrown away, and the plugin's
 * failure policy decides (tempfail unless the plugin says otherwise). The
 * first verdict other than CONTINUE ends the chain (but for arc_seal,
 * after a verdict that passes the message on); scores add up;
 * headers and Authentication-Results method results are collected. Also
 * the offline run of the content hooks (moatctl learn).
 *
 * A hook sees its deadline through filter_expired (a clock read, and a
 * flag the timer sets) and stops within one bounded step of its work; a
 * hook that was told "expired" has its result thrown away even when it
 * comes back before the timer, and one still queued at its deadline is
 * not started at all. So the worker is free soon after the deadline.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <event2/event.h>
#include "filter_private.h"
#include "../common/mail.h"

bool
filter_chain_empty(const struct filter_chain *c)
{
    return c == NULL || c->n == 0;
}

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
    char headers[FILTER_MAX_HEADERS];
    size_t hlen;
    char authres[FILTER_MAX_AUTHRES];
    size_t alen;
    char replace_line[2100];    /* the replaced field's new form, added last */
    struct notes notes;     /* left by the plugins so far */
    struct filter_mime *mime;   /* the message parsed once, for every plugin */
    unsigned refs;          /* the run itself + jobs still on a worker */
    bool finished;
};

static void run_next(struct run *r);

/* The plugins that still run after a verdict that passes the message on
 * (accept, tag, quarantine: relayed or delivered, at once or on release):
 * the ARC sealer, whose seal the next hop needs on every message we hand
 * on (RFC 8617 5.1), and which must see what the verdict's plugin changed. */
static bool
after_verdict(const struct filter_plugin *p)
{
    return p == &filter_arc_seal;
}

static bool
passes_on(const struct run *r)
{
    return r->phase == FILTER_PHASE_DATA_END &&
           (r->out.verdict == FILTER_ACCEPT || r->out.verdict == FILTER_TAG ||
            r->out.verdict == FILTER_QUARANTINE);
}

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
        filter_api_notes_put(&r->notes, res->notes.v[i].key, res->notes.v[i].value);
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
    if (r->out.verdict != FILTER_CONTINUE && !passes_on(r))
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
        if (h == NULL || (r->out.verdict != FILTER_CONTINUE && !after_verdict(r->c->e[idx].p)))
            continue;
        struct hook_job *j = xcalloc(1, sizeof(*j));
        j->run = r;
        j->idx = idx;
        j->hook = h;
        j->res.earlier = &r->notes;
        j->res.mime = &r->mime;
        j->res.so_far = &r->out;
        j->res.authres_so_far = r->authres;     /* not written while the hook runs */
        j->res.replace_so_far = r->replace_line;
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

int
filter_chain_score(struct filter_chain *c, const struct filter_msg *m, const char *note_key,
                   const char *note_value, struct filter_outcome *out, char *err,
                   size_t errsize)
{
    memset(out, 0, sizeof(*out));
    struct notes *notes = xcalloc(1, sizeof(*notes));
    if (note_key)
        filter_api_notes_put(notes, note_key, note_value);
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
            filter_api_notes_put(notes, res->notes.v[k].key, res->notes.v[k].value);
    }
    free(res);
    mime_free(&mime);
    free(notes);
    return rc;
}
