/*
 * chain.c -- running the filter chain (chain_load.c makes it): a phase's
 * hooks, those that do not need each other at the same time, their results
 * taken in the config's order (see "runs" below). Each hook runs on a
 * worker thread (hooks that wait for each other, one after another in one
 * worker job) while a timer on the event loop keeps its deadline; a hook
 * that misses it is counted as failed, its late result is thrown away, and
 * the plugin's failure policy decides (tempfail unless the plugin says
 * otherwise). The first verdict other than CONTINUE in config order ends
 * the chain (but for arc_seal, after a verdict that passes the message
 * on); scores add up; headers and Authentication-Results method
 * results are collected. Also the offline run of the content hooks
 * (moatctl learn), one after another.
 *
 * A hook sees its deadline through filter_expired (a clock read, and a
 * flag the timer sets) and stops within one bounded step of its work; a
 * hook that was told "expired" has its result thrown away even when it
 * comes back before the timer, and one still queued at its deadline is
 * not started at all. So the worker is free soon after the deadline.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
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

/* A phase's hooks start as soon as what each needs is in (struct
 * filter_plugin's needs: by default every plugin before it), so several
 * run at once on the worker pool; their results are taken in the config's
 * order all the same, each once the ones before it are in. So the verdict
 * is the first other than CONTINUE in config order, the headers and the
 * Authentication-Results read as they did when the hooks ran one after
 * another, and a hook that finished early waits for its turn. Once a
 * verdict is taken, the hooks still running are told to stop (their
 * results are thrown away) and the ones not started never start.
 *
 * Hooks that could only run one after another anyway (the next needs the
 * one before: bayes, rules, combiner, score) run in one worker job, a
 * batch: the worker runs the next as soon as the one before returns
 * CONTINUE, with what it would have read had the event loop taken the
 * result first (the notes, the symbols and score, the Authentication-
 * Results, the replaced field), instead of a hand-off to the loop and
 * back for each hook. A batch starts at the first entry whose result is
 * not taken and takes in an entry only when it cannot start now and no
 * other waiting entry would start once the ones before it are taken, so
 * nothing that ran beside another now waits. Each hook keeps its own
 * deadline, from when it starts (the first's from when the batch is
 * queued); the batch's timer on the loop follows the hook it is at (its
 * progress below), and the hooks it got past are taken as if each had
 * been a job of its own. A hook that fails, times out or gives a verdict
 * ends the batch: the ones after it go back to waiting, and the loop goes
 * on as it would have (for arc_seal after a verdict that passes on). */

enum slot_state { SLOT_WAITING, SLOT_RUNNING, SLOT_BACK, SLOT_TAKEN };

struct run;
struct hook_job {
    struct run *run;
    size_t idx;
    filter_hook *hook;
    unsigned ms;            /* its timeout */
    struct filter_result res;
    /* what it reads of the plugins before it, as it was when it started */
    struct notes earlier;
    struct filter_outcome so_far;
    char authres[FILTER_MAX_AUTHRES];
    char replace_line[2100];    /* their replaced field's new form */
    enum filter_status status;
    double ended;           /* time_mono() when the hook returned */
};

/* A batch's progress, set by compare-and-swap by the worker and the loop:
 * 2i, hook i's turn (its deadline and what it reads set); 2i + 1, hook i
 * running; BATCH_DONE, the worker stopped after `ran` hooks; BATCH_STOPPED,
 * the loop gave up on it (a deadline passed, or the run went on). */
#define BATCH_DONE (-1)
#define BATCH_STOPPED (-2)

struct batch {
    struct run *run;
    struct event *timer;    /* the deadline of the hook it is at */
    atomic_int progress;
    size_t ran;             /* BATCH_DONE: hooks run, the last one's word ended it */
    bool stopped;           /* the loop gave up on it */
    int at;                 /* stopped: the hook it was at (its turn or running), or -1 */
    size_t n;
    struct hook_job *job[]; /* config order; NULL once its result is handed to its slot */
};

struct slot {
    enum slot_state state;
    struct batch *batch;    /* RUNNING: the worker job it is in */
    struct hook_job *job;   /* BACK with a result */
    const char *failed;     /* BACK: "timed out" or "failed", or NULL */
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
    size_t next;            /* the first entry whose result is not taken */
    struct slot *slot;      /* one per chain entry */
    struct filter_outcome out;
    char headers[FILTER_MAX_HEADERS];
    size_t hlen;
    char authres[FILTER_MAX_AUTHRES];
    size_t alen;
    char replace_line[2100];    /* the replaced field's new form, added last */
    struct notes notes;     /* left by the plugins taken so far */
    struct filter_mime *mime;   /* the message parsed once, for every plugin */
    pthread_mutex_t mime_lock;  /* hooks running at once share the parse */
    unsigned refs;          /* the run itself + its batches still on a worker */
    bool finished;
};

static void run_advance(struct run *r);

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
    pthread_mutex_destroy(&r->mime_lock);
    free(r->slot);
    free(r->out.headers);
    free(r);
}

static void
batch_free(struct batch *b)
{
    struct run *r = b->run;
    for (size_t i = 0; i < b->n; i++)
        free(b->job[i]);
    event_free(b->timer);
    free(b);
    run_unref(r);
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

/* The loop gives up on a batch: the hook it is at is told to stop, the
 * ones after it never start (their turn again, for a run that goes on);
 * freed when the worker comes back. */
static void
batch_stop(struct batch *b)
{
    if (b->stopped)
        return;
    b->stopped = true;
    int p = atomic_exchange(&b->progress, BATCH_STOPPED);
    b->at = p >= 0 ? p / 2 : -1;
    for (size_t i = 0; i < b->n; i++) {
        struct slot *s = &b->run->slot[b->job[i]->idx];
        atomic_store(&b->job[i]->res.cancelled, true);
        s->batch = NULL;
        if (s->state == SLOT_RUNNING)
            s->state = SLOT_WAITING;
    }
    evtimer_del(b->timer);
}

/* A hook whose result is not wanted: if still running it is told to stop
 * (with the rest of its batch) and is freed when it comes back
 * (batch_done); if back, freed now. */
static void
slot_drop(struct run *r, size_t i)
{
    struct slot *s = &r->slot[i];
    if (s->state == SLOT_RUNNING && s->batch)
        batch_stop(s->batch);
    free(s->job);
    s->job = NULL;
}

static void
run_finish(struct run *r)
{
    r->finished = true;
    for (size_t i = r->next; i < r->c->n; i++)
        slot_drop(r, i);
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

/* What a result adds to what the hooks after it read: its symbols (and
 * the score), Authentication-Results, replaced field and notes. The run's
 * own (merge) and a batch's next hook's (job_follow) alike. */
static void
add_result(struct notes *notes, struct filter_outcome *o, char *authres, size_t *alen,
           char *replace_line, const struct filter_result *res)
{
    for (size_t i = 0; i < res->nsym; i++) {
        o->score += res->sym[i].score;
        if (o->nsym < sizeof(o->sym) / sizeof(o->sym[0])) {
            str_copy(o->sym[o->nsym].name, res->sym[i].name, sizeof(o->sym[0].name));
            o->sym[o->nsym].score = res->sym[i].score;
            str_copy(o->sym[o->nsym].desc, res->sym[i].desc, sizeof(o->sym[0].desc));
            o->nsym++;
        }
    }
    if (res->alen && *alen + res->alen < FILTER_MAX_AUTHRES) {
        memcpy(authres + *alen, res->authres, res->alen + 1);
        *alen += res->alen;
    }
    if (res->replace[0])
        str_copy(replace_line, res->replace_line, sizeof(res->replace_line));
    for (size_t i = 0; i < res->notes.n; i++)
        filter_api_notes_put(notes, res->notes.v[i].key, res->notes.v[i].value);
}

static void
merge(struct run *r, const char *name, const struct filter_result *res)
{
    struct filter_outcome *o = &r->out;
    for (size_t i = 0; i < res->nsym; i++) {
        size_t n = strlen(o->symbols);
        snprintf(o->symbols + n, sizeof(o->symbols) - n, "%s%s(%.2f)", n ? " " : "",
                 res->sym[i].name, res->sym[i].score);
    }
    add_result(&r->notes, o, r->authres, &r->alen, r->replace_line, res);
    if (res->hlen && r->hlen + res->hlen < sizeof(r->headers)) {
        memcpy(r->headers + r->hlen, res->headers, res->hlen);
        r->hlen += res->hlen;
    }
    if (res->replace[0])
        str_copy(o->replace, res->replace, sizeof(o->replace));
    if (res->verdict != FILTER_CONTINUE) {
        o->verdict = res->verdict;
        str_copy(o->reply, res->reply, sizeof(o->reply));
        str_copy(o->decided_by, name, sizeof(o->decided_by));
    }
}

static void
hook_work(struct hook_job *j)
{
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

/* What hook j reads of the plugins taken before it: their notes, and of
 * their outcome only what filter_score and filter_symbol_at read (the
 * whole outcome is some 34 KB, most of it unused symbol slots), their
 * Authentication-Results and replaced field. */
static void
job_reads(struct hook_job *j, const struct notes *notes, const struct filter_outcome *o,
          const char *authres, size_t alen, const char *replace_line)
{
    j->earlier.n = notes->n;        /* the notes in use, not all 18 KB */
    memcpy(j->earlier.v, notes->v, notes->n * sizeof(notes->v[0]));
    j->so_far.verdict = o->verdict;
    j->so_far.score = o->score;
    j->so_far.nsym = o->nsym;
    memcpy(j->so_far.sym, o->sym, o->nsym * sizeof(o->sym[0]));
    memcpy(j->authres, authres, alen + 1);
    str_copy(j->replace_line, replace_line, sizeof(j->replace_line));
}

/* On the worker: what the batch's next hook reads, as the loop would have
 * left it after taking prev's result (prev returned CONTINUE), and its
 * deadline from now. */
static void
job_follow(struct hook_job *next, const struct hook_job *prev)
{
    size_t alen = strlen(prev->authres);
    job_reads(next, &prev->earlier, &prev->so_far, prev->authres, alen, prev->replace_line);
    add_result(&next->earlier, &next->so_far, next->authres, &alen, next->replace_line,
               &prev->res);
    next->res.deadline = time_mono() + next->ms / 1000.0;
}

/* The worker job: the batch's hooks one after another while each returns
 * CONTINUE and the loop has not given up on it. */
static void
batch_work(void *arg)
{
    struct batch *b = arg;
    size_t i = 0;
    for (;; i++) {
        struct hook_job *j = b->job[i];
        int p = 2 * (int)i;
        if (!atomic_compare_exchange_strong(&b->progress, &p, p + 1))
            return;                         /* stopped before it started */
        hook_work(j);
        if (i + 1 == b->n || j->status != FILTER_DONE || j->res.expired ||
            j->res.verdict != FILTER_CONTINUE)
            break;
        job_follow(b->job[i + 1], j);
        p = 2 * (int)i + 1;
        if (!atomic_compare_exchange_strong(&b->progress, &p, p + 1))
            return;
    }
    b->ran = i + 1;
    int p = 2 * (int)i + 1;
    atomic_compare_exchange_strong(&b->progress, &p, BATCH_DONE);
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

/* How soon its worker was free again. */
static void
log_late(const struct run *r, const struct hook_job *j)
{
    log_info("%s: filter %s returned %.3fs after its deadline", r->m->queue_id,
             r->c->e[j->idx].p->name, j->ended > j->res.deadline ? j->ended - j->res.deadline : 0.0);
}

/* Hook i of a batch is back (failed: how, or NULL with its result): its
 * slot holds what the loop takes in turn. */
static void
slot_back(struct batch *b, size_t i, const char *failed)
{
    struct slot *s = &b->run->slot[b->job[i]->idx];
    s->batch = NULL;
    s->state = SLOT_BACK;
    s->failed = failed;
    if (failed == NULL) {
        s->job = b->job[i];
        b->job[i] = NULL;
    }
}

/* The hooks of a batch after the one it ended at: their turn again. */
static void
slots_wait(struct batch *b, size_t from)
{
    for (size_t i = from; i < b->n; i++) {
        struct slot *s = &b->run->slot[b->job[i]->idx];
        s->batch = NULL;
        s->state = SLOT_WAITING;
    }
}

/* On the loop, once the worker is done with the batch. */
static void
batch_done(void *arg)
{
    struct batch *b = arg;
    struct run *r = b->run;
    if (b->stopped) {       /* the run went on without it */
        if (b->at >= 0 && b->job[b->at])
            log_late(r, b->job[b->at]);
        batch_free(b);
        return;
    }
    evtimer_del(b->timer);
    for (size_t i = 0; i < b->ran; i++) {
        struct hook_job *j = b->job[i];
        if (j->res.expired) {       /* it saw its deadline pass: whatever it left is partial */
            log_late(r, j);
            slot_back(b, i, "timed out");
        } else {
            slot_back(b, i, j->status != FILTER_DONE ? "failed" : NULL);
        }
    }
    slots_wait(b, b->ran);
    run_advance(r);
    batch_free(b);
}

static void
timer_arm(struct event *ev, double secs)
{
    long long us = (long long)(secs * 1e6) + 1;
    struct timeval tv = { (time_t)(us / 1000000), (suseconds_t)(us % 1000000) };
    evtimer_add(ev, &tv);
}

/* The shortest timeout of the batch's hooks from `from` on, in seconds:
 * none of them can reach its deadline sooner than that from now, since
 * each one's deadline is counted from its own start. */
static double
batch_min_after(const struct batch *b, size_t from)
{
    double min = -1;
    for (size_t i = from; i < b->n; i++)
        if (min < 0 || b->job[i]->ms / 1000.0 < min)
            min = b->job[i]->ms / 1000.0;
    return min;
}

/* The batch's timer: the deadline of the hook it is at, or sooner, when a
 * hook after it has a shorter timeout (the worker may start it at any
 * moment and cannot arm the timer itself). Past the current hook's
 * deadline, it times out (told to stop, freed when it comes back), the
 * ones before it are taken, the ones after wait. */
static void
batch_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct batch *b = arg;
    if (b->stopped)
        return;
    int p = atomic_load(&b->progress);
    for (;;) {
        if (p < 0)
            return;                         /* back: batch_done is on its way */
        double left = b->job[p / 2]->res.deadline - time_mono();
        if (left > 0) {
            double after = batch_min_after(b, (size_t)p / 2 + 1);
            timer_arm(b->timer, after >= 0 && after < left ? after : left);
            return;
        }
        if (atomic_compare_exchange_strong(&b->progress, &p, BATCH_STOPPED))
            break;
    }
    size_t at = (size_t)p / 2;
    b->stopped = true;
    b->at = (int)at;
    atomic_store(&b->job[at]->res.cancelled, true);  /* the hook sees it at its next check */
    for (size_t i = 0; i < at; i++)
        slot_back(b, i, NULL);
    slot_back(b, at, "timed out");
    slots_wait(b, at + 1);
    run_advance(b->run);
}

/* May entry idx start once every entry before `from` is taken? When every
 * plugin before it that it needs (all of them unless it names some: the
 * safe default, also for a plugin built for an ABI before needs) is. */
static bool
needs_met(const struct run *r, size_t from, size_t idx)
{
    if (idx == from)
        return true;
    const struct filter_plugin *p = r->c->e[idx].p;
    if (p->abi < 4 || p->needs == NULL)
        return false;
    for (size_t k = from; k < idx; k++) {
        const struct filter_plugin *q = r->c->e[k].p;
        if (hook_of(q, r->phase) == NULL)
            continue;
        for (size_t n = 0; n < FILTER_MAX_NEEDS && p->needs[n]; n++)
            if (strcmp(p->needs[n], q->name) == 0)
                return false;
    }
    return true;
}

/* Does entry idx join the batch of the hooks before it (from r->next)? It
 * cannot start now, and no other waiting entry would start beside it once
 * the ones before it are taken. */
static bool
joins(const struct run *r, size_t idx)
{
    if (r->slot[idx].state != SLOT_WAITING || needs_met(r, r->next, idx))
        return false;
    for (size_t k = idx + 1; k < r->c->n; k++)
        if (hook_of(r->c->e[k].p, r->phase) && r->slot[k].state == SLOT_WAITING &&
            !needs_met(r, r->next, k) && needs_met(r, idx, k))
            return false;
    return true;
}

/* A hook job, some 130 KB, nearly all of it buffers that their lengths
 * and counts say are empty: those are set, the rest left as malloc gives
 * it (zeroing it all was four 130 KB memsets a message for the spam chain). */
static struct hook_job *
job_new(struct run *r, size_t idx)
{
    struct hook_job *j = xmalloc(sizeof(*j));
    memset(j, 0, offsetof(struct hook_job, res));
    memset(&j->res, 0, offsetof(struct filter_result, sym));
    j->res.nsym = 0;
    j->res.headers[0] = '\0';
    j->res.hlen = 0;
    j->res.authres[0] = '\0';
    j->res.alen = 0;
    j->res.notes.n = 0;
    j->res.replace[0] = '\0';
    j->res.replace_line[0] = '\0';
    j->res.deadline = 0;
    atomic_init(&j->res.cancelled, false);
    j->res.expired = false;
    j->earlier.n = 0;
    j->so_far.verdict = FILTER_CONTINUE;
    j->so_far.score = 0;
    j->so_far.nsym = 0;
    j->authres[0] = '\0';
    j->replace_line[0] = '\0';
    j->status = FILTER_DONE;
    j->ended = 0;
    const struct filter_plugin *p = r->c->e[idx].p;
    j->run = r;
    j->idx = idx;
    j->hook = hook_of(p, r->phase);
    j->ms = p->timeout_ms ? p->timeout_ms : r->c->timeout_ms;
    j->res.earlier = &j->earlier;
    j->res.mime = &r->mime;
    j->res.mime_lock = &r->mime_lock;
    j->res.so_far = &j->so_far;
    j->res.authres_so_far = j->authres;
    j->res.replace_so_far = j->replace_line;
    return j;
}

/* Start entry idx on a worker, with the entries that join it. */
static void
run_start(struct run *r, size_t idx)
{
    struct batch *b = xcalloc(1, sizeof(*b) + r->c->n * sizeof(b->job[0]));
    b->run = r;
    b->at = -1;
    atomic_init(&b->progress, 0);
    b->job[b->n++] = job_new(r, idx);
    if (idx == r->next && r->out.verdict == FILTER_CONTINUE)
        for (size_t k = idx + 1; k < r->c->n; k++) {
            if (hook_of(r->c->e[k].p, r->phase) == NULL)
                continue;
            if (!joins(r, k))
                break;
            b->job[b->n++] = job_new(r, k);
        }
    for (size_t i = 0; i < b->n; i++) {
        r->slot[b->job[i]->idx].state = SLOT_RUNNING;
        r->slot[b->job[i]->idx].batch = b;
    }
    struct hook_job *j = b->job[0];
    /* what the plugins taken so far left; later ones are not read */
    job_reads(j, &r->notes, &r->out, r->authres, r->alen, r->replace_line);
    r->refs++;
    j->res.deadline = time_mono() + j->ms / 1000.0;
    b->timer = evtimer_new(r->base, batch_timeout, b);
    timer_arm(b->timer, batch_min_after(b, 0));
    workq_submit(r->wq, batch_work, batch_done, b);
}

/* Take the results that are in, in config order, up to the first verdict;
 * then start every hook whose needs are met. */
static void
run_advance(struct run *r)
{
    while (r->next < r->c->n) {
        size_t idx = r->next;
        struct slot *s = &r->slot[idx];
        if (hook_of(r->c->e[idx].p, r->phase) == NULL) {
            r->next++;
            continue;
        }
        if (r->out.verdict != FILTER_CONTINUE && !after_verdict(r->c->e[idx].p)) {
            slot_drop(r, idx);      /* after a verdict that passes it on */
            s->state = SLOT_TAKEN;
            r->next++;
            continue;
        }
        if (s->state != SLOT_BACK)
            break;
        s->state = SLOT_TAKEN;
        r->next++;
        if (s->failed) {
            plugin_failed(r, idx, s->failed);
        } else {
            struct hook_job *j = s->job;
            s->job = NULL;
            merge(r, r->c->e[idx].p->name, &j->res);
            free(j);
        }
        if (r->out.verdict != FILTER_CONTINUE && !passes_on(r)) {
            run_finish(r);
            return;
        }
    }
    if (r->next == r->c->n) {
        run_finish(r);
        return;
    }
    for (size_t idx = r->next; idx < r->c->n; idx++) {
        filter_hook *h = hook_of(r->c->e[idx].p, r->phase);
        if (h && r->slot[idx].state == SLOT_WAITING && needs_met(r, r->next, idx) &&
            (r->out.verdict == FILTER_CONTINUE || after_verdict(r->c->e[idx].p)))
            run_start(r, idx);
    }
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
    r->slot = xcalloc(c->n ? c->n : 1, sizeof(*r->slot));
    pthread_mutex_init(&r->mime_lock, NULL);
    run_advance(r);
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
