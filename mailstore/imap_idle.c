/*
 * imap_idle.c -- IDLE (RFC 2177): a session waiting on its selected
 * folder is told at once what changed, woken by inotify (delivery into
 * new/, POP3, other programs: folder_registry.c reads the events) and by
 * the other sessions' changes (after each of their commands). The sessions waiting
 * on a folder are a list hung on its index, touched on the loop only; the
 * telling itself (a sync) runs on a worker.
 */
#include <string.h>
#include <strings.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include "../common/util.h"
#include "store_private.h"
#include "imap_private.h"

static struct event *notify_ev;

/* The sessions idling on an index are a list hung on it (on the loop). */
static void
waiter_add(struct imap *im)
{
    struct folder_index *ix = folder_index_of(im->mb);
    struct imap **head = (struct imap **)folder_index_loop_data(ix);
    im->idle_ix = ix;
    im->idle_prev = NULL;
    im->idle_next = *head;
    if (*head)
        (*head)->idle_prev = im;
    *head = im;
}

static void
waiter_remove(struct imap *im)
{
    if (im->idle_ix == NULL)
        return;
    struct imap **head = (struct imap **)folder_index_loop_data(im->idle_ix);
    if (im->idle_prev)
        im->idle_prev->idle_next = im->idle_next;
    else
        *head = im->idle_next;
    if (im->idle_next)
        im->idle_next->idle_prev = im->idle_prev;
    im->idle_ix = NULL;
    im->idle_next = im->idle_prev = NULL;
}

struct idle_job {
    struct store_conn *c;
    struct imap_ctx x;
    struct imap_cmd cmd;
};

static void
idle_poll_work(void *arg)
{
    struct idle_job *j = arg;
    imap_report_changes(&j->x, true);
}

static void idle_poll(struct store_conn *c);

static void
idle_poll_done(void *arg)
{
    struct idle_job *j = arg;
    struct store_conn *c = j->c;
    free(j);
    imap_told(c);
}

/* After a job that told a session unasked lines (IDLE's or NOTIFY's) on a
 * worker, on the loop: send them, and go on with the session. */
void
imap_told(struct store_conn *c)
{
    struct imap *im = c->p;
    if (!c->closing)
        bufferevent_write_buffer(c->bev, im->out);
    else
        evbuffer_drain(im->out, evbuffer_get_length(im->out));
    if (im->state == IS_LOGOUT) {
        imap_idle_leave(c);
        store_close(c);
        return;
    }
    if (imap_idle_again(c))
        return;
    imap_notify_kick(c);
    store_resume(c);
}

/* Tell an idling session what changed, on a worker. */
static void
idle_poll(struct store_conn *c)
{
    struct imap *im = c->p;
    if (!im->idling || c->closing)
        return;
    if (c->busy) {
        im->idle_wake = true;       /* after the job it has */
        return;
    }
    struct idle_job *j = xcalloc(1, sizeof(*j));
    j->c = c;
    j->x = (struct imap_ctx){ .c = c, .im = im, .cmd = &j->cmd, .out = im->out };
    store_job(c, idle_poll_work, idle_poll_done, j);
}

bool
imap_idle_again(struct store_conn *c)
{
    struct imap *im = c->p;
    if (!im->idling || !im->idle_wake)
        return false;
    im->idle_wake = false;
    idle_poll(c);
    return true;
}

/* Indexes that changed (our sessions' changes, inotify): wake who waits,
 * and the sessions with NOTIFY on them (imap_notify.c). */
void
imap_idle_wake(void)
{
    struct folder_index *v[64];
    size_t n;
    while ((n = folder_changed_take(v, 64)) > 0)
        for (size_t i = 0; i < n; i++) {
            struct imap **head = (struct imap **)folder_index_loop_data(v[i]);
            for (struct imap *im = *head; im; im = im->idle_next)
                idle_poll(im->c);
            imap_notify_changed(v[i]);
            folder_index_release(v[i]);
        }
    imap_notify_flush();
}

static void
notify_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    folder_watch_read();
    imap_idle_wake();
}

void
imap_idle_watch(struct store_conn *c)
{
    if (notify_ev != NULL)
        return;
    /* inotify, read on the loop for every session (and by workers before
     * they trust an index) */
    int fd = folder_watch_fd();
    if (fd >= 0) {
        notify_ev = event_new(c->srv->base, fd, EV_READ | EV_PERSIST, notify_cb, NULL);
        event_add(notify_ev, NULL);
    }
}

static void
idle_enter(struct store_conn *c)
{
    struct imap *im = c->p;
    im->idling = true;
    if (im->mb)
        waiter_add(im);
    idle_poll(c);               /* what is there to tell already */
}

void
imap_idle_leave(struct store_conn *c)
{
    struct imap *im = c->p;
    im->idling = false;
    im->idle_wake = false;
    waiter_remove(im);
}

void
cmd_idle(struct imap_ctx *x)
{
    struct imap *im = x->im;
    str_copy(im->idle_tag, x->cmd->tag, sizeof(im->idle_tag));
    store_write(x->c, "+ idling\r\n");
    x->status = NULL;
    idle_enter(x->c);
}

void
imap_idle_end(struct store_conn *c, const char *line)
{
    struct imap *im = c->p;
    imap_idle_leave(c);
    if (strcasecmp(line, "DONE") == 0) {
        store_write(c, "%s OK IDLE terminated\r\n", im->idle_tag);
    } else {
        store_write(c, "%s BAD Expected DONE\r\n", im->idle_tag);
        c->errors++;
    }
}

