/*
 * imap_notify.c -- NOTIFY (RFC 5465): a session told, unasked, what
 * changes in its selected folder and in the other folders it names.
 *
 * NOTIFY SET [STATUS] (filter events) ... and NOTIFY NONE. The filters:
 * SELECTED and SELECTED-DELAYED (the selected folder; -DELAYED keeps
 * its EXPUNGEs for a command that may carry them), PERSONAL (every folder
 * of the mailbox), INBOXES (INBOX), SUBSCRIBED, SUBTREE and MAILBOXES
 * (names, SUBTREE with the folders under them), resolved to folders when
 * the command runs. The events: MessageNew (for the selected folder with
 * FETCH attributes, answered after its EXISTS), MessageExpunge and
 * FlagChange, MailboxName and SubscriptionChange (the user's other
 * sessions' CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE as LIST lines,
 * queued per session, at most NOTIFY_QUEUE_MAX); AnnotationChange and
 * the METADATA ones are refused with NO [BADEVENT (the ones we have)].
 *
 * No watcher of its own: a watched folder's index is held (so it stays
 * loaded, and watched by folder_registry.c's inotify), and the sessions'
 * and inotify's change notices reach imap_notify_changed through
 * imap_idle_wake, on the loop. A session at rest (no command on a worker,
 * no FETCH half answered: nothing it says is cut into, and no message
 * number moves under a command, RFC 5465 5) then gets a job that says
 * what changed: for the selected folder the untagged updates of
 * imap_report_changes (EXPUNGE only when the filter allows), for another
 * folder one STATUS line with what its events ask for (MessageNew:
 * MESSAGES UIDNEXT UIDVALIDITY, MessageExpunge: MESSAGES, FlagChange:
 * UIDVALIDITY HIGHESTMODSEQ) when one of those changed. A busy session is
 * told once its command is done. Changes to one folder coalesce into one
 * line, so what waits per session is bounded by the folders watched
 * (NOTIFY_WATCH_MAX); a client that leaves more than NOTIFY_OUT_MAX unread
 * gets * OK [NOTIFICATIONOVERFLOW] and NOTIFY NONE (RFC 5465 5.8).
 *
 * The sessions with NOTIFY are a list, under one lock: the loop marks
 * their folders, their jobs (workers) take the marks. A session without
 * NOTIFY pays one pointer.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include "../common/util.h"
#include "store_private.h"
#include "imap_private.h"
#include "imap_fetch.h"

#define NOTIFY_WATCH_MAX 64             /* folders one session watches */
#define NOTIFY_OUT_MAX (256u << 10)     /* unread by the client: NOTIFICATIONOVERFLOW */
#define NOTIFY_NAMES_MAX 64             /* names in one SUBTREE or MAILBOXES */
#define NOTIFY_QUEUE_MAX 64             /* LIST lines waiting per session */
#define NE_MESSAGE (IMAP_NE_NEW | IMAP_NE_EXPUNGE | IMAP_NE_FLAGS)
#define BADEVENT "[BADEVENT (MessageNew MessageExpunge FlagChange MailboxName " \
                 "SubscriptionChange)] Event not supported"

struct watch {
    char *name;                 /* in its form on disk (imap_put_folder shows it) */
    char *dir;
    struct folder_index *ix;    /* held */
    unsigned events;
    bool pending, taking;       /* under lock: changed; being told */
    struct folder_status last;  /* what the client was last told */
};

struct imap_notify {
    struct imap *im;
    struct imap_notify *next, *prev;    /* under lock */
    unsigned sel_events;        /* IMAP_NE_* for the selected folder */
    bool sel_given, sel_delayed;
    struct fetch_item *fetch;   /* MessageNew's attributes there */
    size_t nfetch;
    bool fetch_uid;
    struct watch *w;
    size_t n;
    struct nname {              /* MailboxName, SubscriptionChange: where */
        unsigned kind, events;
        char *name;             /* SUBTREE, MAILBOXES */
    } *names;
    size_t nnames;
    char **queue;               /* under lock: LIST lines to tell */
    size_t nqueue;
    bool overflow;              /* under lock: more than NOTIFY_QUEUE_MAX */
    bool wake;                  /* under lock: something to tell at rest */
    struct folder_index *sel_ix;    /* the selected folder's, compared only */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct imap_notify *sessions;

/* ------------------------------------------------------------- parsing */

static bool
is_mailbox_arg(const struct imap_arg *a)
{
    return (a->type == IA_ATOM || a->type == IA_STRING) && a->len > 0 && a->len < 512;
}

/* one-or-more-mailbox: a name or a list of them */
static int
parse_names(const struct imap_arg *a, struct imap_notify_filter *f, const char **why)
{
    if (a->type == IA_LIST) {
        if (a->nlist == 0 || a->nlist > NOTIFY_NAMES_MAX) {
            *why = "NOTIFY: a list of 1 to 64 folder names";
            return -1;
        }
        for (size_t i = 0; i < a->nlist; i++)
            if (!is_mailbox_arg(&a->list[i])) {
                *why = "NOTIFY: a folder name";
                return -1;
            }
        f->names = a->list;
        f->nnames = a->nlist;
        return 0;
    }
    if (!is_mailbox_arg(a)) {
        *why = "NOTIFY: a folder name";
        return -1;
    }
    f->names = a;
    f->nnames = 1;
    return 0;
}

static int
parse_events(const struct imap_arg *a, bool selected, struct imap_notify_filter *f,
             const char **why)
{
    if (imap_arg_is(a, "NONE")) {
        f->events = 0;
        return 0;
    }
    if (a->type != IA_LIST || a->nlist == 0) {
        *why = "NOTIFY: (events) or NONE";
        return -1;
    }
    int rc = 0;
    for (size_t i = 0; i < a->nlist; i++) {
        const struct imap_arg *e = &a->list[i];
        if (e->type != IA_ATOM) {
            *why = "NOTIFY: an event is an atom";
            return -1;
        }
        if (imap_arg_is(e, "MessageNew")) {
            f->events |= IMAP_NE_NEW;
            if (i + 1 < a->nlist && a->list[i + 1].type == IA_LIST) {
                if (!selected) {
                    *why = "NOTIFY: FETCH attributes for the selected folder only";
                    return -1;
                }
                f->fetch = &a->list[++i];
            }
        } else if (imap_arg_is(e, "MessageExpunge")) {
            f->events |= IMAP_NE_EXPUNGE;
        } else if (imap_arg_is(e, "FlagChange")) {
            f->events |= IMAP_NE_FLAGS;
        } else if (imap_arg_is(e, "MailboxName")) {
            f->events |= IMAP_NE_NAME;
        } else if (imap_arg_is(e, "SubscriptionChange")) {
            f->events |= IMAP_NE_SUBSCRIPTION;
        } else if (imap_arg_is(e, "AnnotationChange") ||
                   imap_arg_is(e, "MailboxMetadataChange") ||
                   imap_arg_is(e, "ServerMetadataChange")) {
            rc = -2;                /* known, not had: BADEVENT, once the syntax is right */
        } else {
            rc = -2;
        }
    }
    if (rc == -2)
        *why = BADEVENT;
    return rc;
}

int
imap_notify_parse(const struct imap_arg *args, size_t nargs, struct imap_notify_req *r,
                  const char **why)
{
    memset(r, 0, sizeof(*r));
    if (nargs == 1 && imap_arg_is(&args[0], "NONE")) {
        r->none = true;
        return 0;
    }
    if (nargs < 2 || !imap_arg_is(&args[0], "SET")) {
        *why = "NOTIFY SET [STATUS] (filter events) ... | NOTIFY NONE";
        return -1;
    }
    size_t a = 1;
    if (imap_arg_is(&args[a], "STATUS")) {
        r->status = true;
        a++;
    }
    if (a == nargs) {
        *why = "NOTIFY SET: at least one (filter events)";
        return -1;
    }
    bool badevent = false;
    for (; a < nargs; a++) {
        const struct imap_arg *g = &args[a];
        if (g->type != IA_LIST || g->nlist < 2 || g->list[0].type != IA_ATOM ||
            r->nf == IMAP_NOTIFY_FILTERS_MAX) {
            *why = "NOTIFY SET: (filter events), at most 8";
            return -1;
        }
        struct imap_notify_filter *f = &r->f[r->nf];
        memset(f, 0, sizeof(*f));
        const struct imap_arg *k = &g->list[0];
        size_t ev = 1;
        if (imap_arg_is(k, "SELECTED") || imap_arg_is(k, "SELECTED-DELAYED")) {
            f->kind = imap_arg_is(k, "SELECTED") ? IMAP_NF_SELECTED : IMAP_NF_SELECTED_DELAYED;
        } else if (imap_arg_is(k, "PERSONAL")) {
            f->kind = IMAP_NF_PERSONAL;
        } else if (imap_arg_is(k, "INBOXES")) {
            f->kind = IMAP_NF_INBOXES;
        } else if (imap_arg_is(k, "SUBSCRIBED")) {
            f->kind = IMAP_NF_SUBSCRIBED;
        } else if (imap_arg_is(k, "SUBTREE") || imap_arg_is(k, "MAILBOXES")) {
            f->kind = imap_arg_is(k, "SUBTREE") ? IMAP_NF_SUBTREE : IMAP_NF_MAILBOXES;
            if (g->nlist < 3 || parse_names(&g->list[1], f, why) < 0) {
                if (g->nlist < 3)
                    *why = "NOTIFY: SUBTREE and MAILBOXES take folder names";
                return -1;
            }
            ev = 2;
        } else {
            *why = "NOTIFY: no such filter";
            return -1;
        }
        if (g->nlist != ev + 1) {
            *why = "NOTIFY SET: (filter events)";
            return -1;
        }
        for (size_t i = 0; i < r->nf; i++)
            if (r->f[i].kind == f->kind && f->kind <= IMAP_NF_SUBSCRIBED) {
                *why = "NOTIFY SET: a filter named twice";
                return -1;
            } else if (f->kind <= IMAP_NF_SELECTED_DELAYED && r->f[i].kind <= IMAP_NF_SELECTED_DELAYED) {
                *why = "NOTIFY SET: SELECTED and SELECTED-DELAYED together";
                return -1;
            }
        int rc = parse_events(&g->list[ev], f->kind <= IMAP_NF_SELECTED_DELAYED, f, why);
        if (rc == -1)
            return -1;
        badevent |= rc == -2;
        r->nf++;
    }
    if (badevent) {
        *why = BADEVENT;
        return -2;
    }
    return 0;
}

/* ------------------------------------------------------------ the state */

static void
notify_free(struct imap_notify *n)
{
    if (n == NULL)
        return;
    for (size_t i = 0; i < n->n; i++) {
        free(n->w[i].name);
        free(n->w[i].dir);
        if (n->w[i].ix)
            folder_index_release(n->w[i].ix);
    }
    free(n->w);
    for (size_t i = 0; i < n->nnames; i++)
        free(n->names[i].name);
    free(n->names);
    for (size_t i = 0; i < n->nqueue; i++)
        free(n->queue[i]);
    free(n->queue);
    free(n->fetch);
    free(n);
}

/* Out of the list; to free after. Under lock. */
static void
unlink_locked(struct imap_notify *n)
{
    if (n->prev)
        n->prev->next = n->next;
    else if (sessions == n)
        sessions = n->next;
    if (n->next)
        n->next->prev = n->prev;
    n->next = n->prev = NULL;
}

void
imap_notify_end(struct imap *im)
{
    pthread_mutex_lock(&lock);
    struct imap_notify *n = im->notify;
    im->notify = NULL;
    if (n)
        unlink_locked(n);
    pthread_mutex_unlock(&lock);
    notify_free(n);
}

/* A folder to watch (-1: too many); one that does not exist is left out. */
static int
watch_add(struct imap_ctx *x, struct imap_notify *n, const char *name, unsigned events)
{
    char dir[1500];
    if (imap_folder_dir(x->c, x->im, name, dir, sizeof(dir)) < 0 || !imap_folder_exists(dir))
        return 0;
    for (size_t i = 0; i < n->n; i++)
        if (strcmp(n->w[i].dir, dir) == 0) {
            n->w[i].events |= events;
            return 0;
        }
    if (n->n == NOTIFY_WATCH_MAX)
        return -1;
    struct folder_index *ix = folder_index_hold(dir);
    if (ix == NULL)
        return 0;
    n->w = xrealloc(n->w, (n->n + 1) * sizeof(*n->w));
    struct watch *w = &n->w[n->n++];
    memset(w, 0, sizeof(*w));
    w->name = xstrdup(str_ieq(name, "INBOX") ? "INBOX" : name);
    w->dir = xstrdup(dir);
    w->ix = ix;
    w->events = events;
    folder_status(dir, &w->last);
    return 0;
}

static bool
in_subtree(const char *name, const char *top)
{
    size_t l = strlen(top);
    if (str_ieq(top, "INBOX") && str_ieq(name, "INBOX"))
        return true;
    return strncmp(name, top, l) == 0 && (name[l] == '\0' || name[l] == '.');
}

/* The folders a filter names, watched. -1: more than NOTIFY_WATCH_MAX. */
static int
watch_filter(struct imap_ctx *x, struct imap_notify *n, const struct imap_notify_filter *f)
{
    unsigned events = f->events & NE_MESSAGE;
    if (events == 0)
        return 0;
    if (f->kind == IMAP_NF_INBOXES)
        return watch_add(x, n, "INBOX", events);
    if (f->kind == IMAP_NF_MAILBOXES) {
        for (size_t i = 0; i < f->nnames; i++) {
            char name[FOLDER_NAME_LEN * 4];
            char *s = imap_arg_str(&f->names[i]);
            /* a name not valid in the client's form names no folder */
            int rc = s && imap_folder_name(x->c, x->im, s, name, sizeof(name)) == 0
                         ? watch_add(x, n, name, events) : 0;
            free(s);
            if (rc < 0)
                return -1;
        }
        return 0;
    }
    char **names;
    size_t nn = imap_folder_names(x->c, f->kind == IMAP_NF_SUBSCRIBED, &names);
    int rc = 0;
    for (size_t i = 0; i < nn && rc == 0; i++) {
        bool take = f->kind != IMAP_NF_SUBTREE;
        for (size_t k = 0; !take && k < f->nnames; k++) {
            char top[FOLDER_NAME_LEN * 4];
            char *s = imap_arg_str(&f->names[k]);
            take = s && imap_folder_name(x->c, x->im, s, top, sizeof(top)) == 0 &&
                   in_subtree(names[i], top);
            free(s);
        }
        if (take)
            rc = watch_add(x, n, names[i], events);
    }
    for (size_t i = 0; i < nn; i++)
        free(names[i]);
    free(names);
    return rc;
}

/* Where MailboxName and SubscriptionChange are asked for. SUBSCRIBED is
 * taken as every folder of the mailbox for them. */
static void
name_events(const struct store_conn *c, const struct imap *im, struct imap_notify *n, const struct imap_notify_filter *f)
{
    unsigned events = f->events & (IMAP_NE_NAME | IMAP_NE_SUBSCRIPTION);
    if (events == 0 || f->kind <= IMAP_NF_SELECTED_DELAYED)
        return;
    size_t k = f->nnames ? f->nnames : 1;
    n->names = xrealloc(n->names, (n->nnames + k) * sizeof(*n->names));
    for (size_t i = 0; i < k; i++) {
        struct nname *e = &n->names[n->nnames++];
        e->kind = f->kind;
        e->events = events;
        e->name = NULL;
        if (f->nnames) {
            /* in the form on disk, as the names it is matched with; one
             * not valid in the client's form matches none */
            char disk[FOLDER_NAME_LEN * 4];
            char *s = imap_arg_str(&f->names[i]);
            e->name = xstrdup(s && imap_folder_name(c, im, s, disk, sizeof(disk)) == 0 ? disk : "");
            free(s);
        }
    }
}

static bool
name_matches(const struct nname *e, const char *name)
{
    if (name == NULL)
        return false;
    switch (e->kind) {
    case IMAP_NF_INBOXES:
        return str_ieq(name, "INBOX");
    case IMAP_NF_SUBTREE:
        return in_subtree(name, e->name);
    case IMAP_NF_MAILBOXES:
        return strcmp(name, e->name) == 0 || (str_ieq(name, "INBOX") && str_ieq(e->name, "INBOX"));
    default:
        return true;            /* PERSONAL, SUBSCRIBED */
    }
}

void
imap_notify_folder(struct imap_ctx *x, int what, const char *name, const char *old)
{
    unsigned need = what >= IMAP_NOTIFY_SUBSCRIBE ? IMAP_NE_SUBSCRIPTION : IMAP_NE_NAME;
    /* the line as a session without UTF8=ACCEPT sees it, and as one with */
    struct evbuffer *b[2];
    size_t lens[2];
    const char *lines[2];
    for (int u = 0; u < 2; u++) {
        b[u] = evbuffer_new();
        evbuffer_add_printf(b[u], "* LIST (%s) \".\" ", what == IMAP_NOTIFY_DELETE ? "\\NonExistent"
                            : what == IMAP_NOTIFY_SUBSCRIBE ? "\\Subscribed" : "");
        imap_put_folder_as(b[u], u == 1, name);
        if (old) {
            evbuffer_add(b[u], " (\"OLDNAME\" (", 13);
            imap_put_folder_as(b[u], u == 1, old);
            evbuffer_add(b[u], "))", 2);
        }
        evbuffer_add(b[u], "\r\n", 2);
        lens[u] = evbuffer_get_length(b[u]);
        lines[u] = (const char *)evbuffer_pullup(b[u], -1);
    }
    pthread_mutex_lock(&lock);
    for (struct imap_notify *n = sessions; n; n = n->next) {
        if (n == x->im->notify || strcmp(n->im->c->mailbox, x->c->mailbox) != 0)
            continue;
        bool hit = false;
        for (size_t i = 0; i < n->nnames && !hit; i++)
            hit = (n->names[i].events & need) &&
                  (name_matches(&n->names[i], name) || name_matches(&n->names[i], old));
        if (!hit)
            continue;
        if (n->nqueue == NOTIFY_QUEUE_MAX) {
            n->overflow = true;
        } else {
            n->queue = xrealloc(n->queue, (n->nqueue + 1) * sizeof(char *));
            int u = __atomic_load_n(&n->im->utf8, __ATOMIC_RELAXED);  /* ENABLE, on the loop */
            const char *line = lines[u];
            size_t len = lens[u];
            char *copy = xmalloc(len + 1);
            memcpy(copy, line, len);
            copy[len] = '\0';
            n->queue[n->nqueue++] = copy;
        }
        n->wake = true;
    }
    pthread_mutex_unlock(&lock);
    evbuffer_free(b[0]);
    evbuffer_free(b[1]);
}

/* The STATUS items a watch's events ask for, and whether one changed. */
static bool
put_status(struct evbuffer *out, const struct imap *im, const struct watch *w,
           const struct folder_status *st, bool initial)
{
    bool changed = initial;
    if ((w->events & IMAP_NE_NEW) && (st->uidnext != w->last.uidnext ||
                                      st->validity != w->last.validity ||
                                      st->messages != w->last.messages))
        changed = true;
    if ((w->events & IMAP_NE_EXPUNGE) && st->messages != w->last.messages)
        changed = true;
    if ((w->events & IMAP_NE_FLAGS) && (st->highestmodseq != w->last.highestmodseq ||
                                        st->validity != w->last.validity))
        changed = true;
    if (!changed || !(w->events & (IMAP_NE_NEW | IMAP_NE_EXPUNGE | IMAP_NE_FLAGS)))
        return false;
    evbuffer_add(out, "* STATUS ", 9);
    imap_put_folder(out, im, w->name);
    const char *sep = " (";
    if (w->events & (IMAP_NE_NEW | IMAP_NE_EXPUNGE)) {
        evbuffer_add_printf(out, "%sMESSAGES %lu", sep, (unsigned long)st->messages);
        sep = " ";
    }
    if (w->events & IMAP_NE_NEW) {
        evbuffer_add_printf(out, "%sUIDNEXT %lu", sep, (unsigned long)st->uidnext);
        sep = " ";
    }
    if (w->events & (IMAP_NE_NEW | IMAP_NE_FLAGS)) {
        evbuffer_add_printf(out, "%sUIDVALIDITY %lu", sep, (unsigned long)st->validity);
        sep = " ";
    }
    if (w->events & IMAP_NE_FLAGS)
        evbuffer_add_printf(out, "%sHIGHESTMODSEQ %llu", sep,
                            (unsigned long long)st->highestmodseq);
    evbuffer_add(out, ")\r\n", 3);
    return true;
}

static bool
is_selected(const struct imap *im, const struct watch *w)
{
    return im->mb && strcmp(folder_dir(im->mb), w->dir) == 0;
}

void
cmd_notify(struct imap_ctx *x)
{
    struct imap *im = x->im;
    struct imap_cmd *cmd = x->cmd;
    struct imap_notify_req r;
    const char *why;
    int rc = imap_notify_parse(cmd->args, cmd->nargs, &r, &why);
    if (rc == -1) {
        imap_tagged(x, "BAD", "%s", why);
        return;
    }
    if (rc == -2) {
        imap_tagged(x, "NO", "%s", why);
        return;
    }
    imap_notify_end(im);
    if (r.none) {
        imap_tagged(x, "OK", "NOTIFY completed, no more notifications");
        return;
    }
    struct imap_notify *n = xcalloc(1, sizeof(*n));
    n->im = im;
    for (size_t i = 0; i < r.nf; i++) {
        const struct imap_notify_filter *f = &r.f[i];
        if (f->kind > IMAP_NF_SELECTED_DELAYED)
            continue;
        n->sel_given = true;
        n->sel_delayed = f->kind == IMAP_NF_SELECTED_DELAYED;
        n->sel_events = f->events;
        if (f->fetch) {
            struct fetch_spec fs;
            if (fetch_parse(f->fetch, &fs, &why) < 0) {
                notify_free(n);
                imap_tagged(x, "BAD", "%s", why);
                return;
            }
            n->fetch = xcalloc(fs.n, sizeof(*n->fetch));
            for (size_t k = 0; k < fs.n; k++) {
                n->fetch[k] = fs.v[k];
                n->fetch[k].peek = true;        /* telling sets no \Seen */
            }
            n->nfetch = fs.n;
            n->fetch_uid = fs.has_uid;
        }
    }
    for (size_t i = 0; i < r.nf; i++)
        if (r.f[i].kind > IMAP_NF_SELECTED_DELAYED && watch_filter(x, n, &r.f[i]) < 0) {
            notify_free(n);
            imap_tagged(x, "NO", "[LIMIT] NOTIFY watches at most %d folders", NOTIFY_WATCH_MAX);
            return;
        }
    for (size_t i = 0; i < r.nf; i++)
        name_events(x->c, im, n, &r.f[i]);
    if (r.status)
        for (size_t i = 0; i < n->n; i++)
            if (!(n->sel_given && is_selected(im, &n->w[i])))
                put_status(x->out, im, &n->w[i], &n->w[i].last, true);
    pthread_mutex_lock(&lock);
    n->sel_ix = im->mb ? folder_index_of(im->mb) : NULL;
    n->next = sessions;
    if (sessions)
        sessions->prev = n;
    sessions = n;
    im->notify = n;
    pthread_mutex_unlock(&lock);
    imap_tagged(x, "OK", "NOTIFY completed");
}

/* ------------------------------------------------------------- telling */

struct notify_job {
    struct store_conn *c;
    struct imap_cmd cmd;
    struct imap_ctx x;
};

/* New messages in the selected folder (UIDs from first on): their FETCH
 * with MessageNew's attributes, after their EXISTS. */
static void
fetch_new(struct imap_ctx *x, struct imap_notify *n, uint32_t first)
{
    struct folder *mb = x->im->mb;
    size_t k = 0;
    while (k < mb->n && mb->uids[k] < first)
        k++;
    if (k == mb->n || n->nfetch == 0)
        return;
    struct fetch_spec *fs = xcalloc(1, sizeof(*fs));
    memcpy(fs->v, n->fetch, n->nfetch * sizeof(*n->fetch));
    fs->n = n->nfetch;
    fs->has_uid = n->fetch_uid;
    fs->flags_modseq = x->im->condstore;
    size_t *idx = xcalloc(mb->n - k, sizeof(size_t));
    for (size_t i = k; i < mb->n; i++)
        idx[i - k] = i;
    struct fetch_run *run = fetch_run_new(fs, idx, mb->n - k, false, mb);
    free(fs);
    while (!fetch_run_step(run, x->out, time_mono() + FETCH_STEP_SECS))
        if (evbuffer_get_length(x->out) > NOTIFY_OUT_MAX)
            break;          /* the rest with a FETCH the client asks for */
    fetch_run_free(&run);
}

static void
notify_work(void *arg)
{
    struct notify_job *j = arg;
    struct imap_ctx *x = &j->x;
    struct imap *im = x->im;
    struct imap_notify *n = im->notify;
    if (n == NULL)
        return;
    pthread_mutex_lock(&lock);
    char **queue = n->queue;
    size_t nqueue = n->nqueue;
    n->queue = NULL;
    n->nqueue = 0;
    pthread_mutex_unlock(&lock);
    for (size_t i = 0; i < nqueue; i++) {
        evbuffer_add(x->out, queue[i], strlen(queue[i]));
        free(queue[i]);
    }
    free(queue);
    if (n->sel_given && n->sel_events && im->mb && im->state == IS_SELECTED) {
        uint32_t next = im->mb->next_uid;
        imap_report_changes(x, !n->sel_delayed && (n->sel_events & IMAP_NE_EXPUNGE));
        if (im->mb && (n->sel_events & IMAP_NE_NEW))
            fetch_new(x, n, next);
    }
    for (size_t i = 0; i < n->n; i++) {
        struct watch *w = &n->w[i];
        pthread_mutex_lock(&lock);
        bool take = w->taking;
        w->taking = false;
        pthread_mutex_unlock(&lock);
        if (!take || (n->sel_given && is_selected(im, w)))
            continue;
        struct folder_status st;
        if (folder_status(w->dir, &st) < 0)
            continue;
        put_status(x->out, im, w, &st, false);
        w->last = st;
    }
}

static void
notify_done(void *arg)
{
    struct notify_job *j = arg;
    struct store_conn *c = j->c;
    free(j);
    imap_told(c);
}

/* Tell what is pending, if the session is at rest. Under lock. */
static void
kick_locked(struct imap_notify *n)
{
    struct imap *im = n->im;
    struct store_conn *c = im->c;
    if (c->busy)
        return;                 /* its command may be changing im->mb */
    n->sel_ix = im->mb ? folder_index_of(im->mb) : NULL;
    if (!n->wake || c->closing || c->partial || c->drained || im->fetch)
        return;
    n->wake = false;
    for (size_t i = 0; i < n->n; i++)
        if (n->w[i].pending) {
            n->w[i].pending = false;
            n->w[i].taking = true;
        }
    struct notify_job *j = xcalloc(1, sizeof(*j));
    j->c = c;
    j->x = (struct imap_ctx){ .c = c, .im = im, .cmd = &j->cmd, .out = im->out };
    store_job(c, notify_work, notify_done, j);
}

/* A client that does not read: NOTIFICATIONOVERFLOW, and NOTIFY NONE. */
static bool
overflowed(struct imap *im)
{
    struct store_conn *c = im->c;
    if (c->closing || (evbuffer_get_length(bufferevent_get_output(c->bev)) <= NOTIFY_OUT_MAX &&
                       !im->notify->overflow))
        return false;
    store_write(c, "* OK [NOTIFICATIONOVERFLOW] Too much waits unread: NOTIFY is off\r\n");
    return true;
}

void
imap_notify_kick(struct store_conn *c)
{
    struct imap *im = c->p;
    if (im == NULL || im->notify == NULL)
        return;
    pthread_mutex_lock(&lock);
    bool over = !c->busy && overflowed(im);
    if (!over)
        kick_locked(im->notify);
    pthread_mutex_unlock(&lock);
    if (over)
        imap_notify_end(im);
}

/* A woken session at rest: told now, or (its unread output over the
 * bound) put in over[] (16 at most) to end NOTIFY once the lock is let go.
 * Under lock. */
static void
kick_or_count(struct imap_notify *n, struct imap_notify **over, size_t *nover)
{
    if (!n->im->c->busy && *nover < 16 && overflowed(n->im))
        over[(*nover)++] = n;
    else
        kick_locked(n);
}

static void
end_overflowed(struct imap_notify **over, size_t nover)
{
    for (size_t i = 0; i < nover; i++)
        imap_notify_end(over[i]->im);
}

void
imap_notify_changed(struct folder_index *ix)
{
    struct imap_notify *over[16];
    size_t nover = 0;
    pthread_mutex_lock(&lock);
    for (struct imap_notify *n = sessions; n; n = n->next) {
        bool hit = n->sel_given && n->sel_events && n->sel_ix == ix;
        for (size_t i = 0; i < n->n; i++)
            if (n->w[i].ix == ix) {
                n->w[i].pending = true;
                hit = true;
            }
        if (!hit)
            continue;
        n->wake = true;
        kick_or_count(n, over, &nover);
    }
    pthread_mutex_unlock(&lock);
    end_overflowed(over, nover);
}

void
imap_notify_flush(void)
{
    struct imap_notify *over[16];
    size_t nover = 0;
    pthread_mutex_lock(&lock);
    for (struct imap_notify *n = sessions; n; n = n->next) {
        if (!n->wake || n->im->c->busy)
            continue;
        kick_or_count(n, over, &nover);
    }
    pthread_mutex_unlock(&lock);
    end_overflowed(over, nover);
}
