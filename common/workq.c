/*
 * workq.c -- the role's worker threads. Work that may block (fsync,
 * password hashing, the filters' hooks with virus scans, mailbox commands,
 * the web API's handlers) runs here, never on the event loop; each job's
 * completion callback runs back on the loop.
 *
 * The idle workers wait on a stack, each on a condition variable of its
 * own, and a new job wakes the one that went idle last (LIFO): at a low
 * load the same thread takes job after job, its caches, TLB and malloc
 * arena (the antivirus's ~15 MB of matcher state a thread) warm, instead
 * of the jobs rotating over every thread as with one shared condvar. At a
 * high load no one is idle and nothing changes.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <event2/event.h>
#include "util.h"

struct workq_job {
    workq_fn *work;
    workq_fn *done;
    void *arg;
    struct workq_job *next;
};

struct workq_worker {
    struct workq *q;
    pthread_t thread;
    pthread_cond_t cond;
    bool idle;                  /* on the idle stack, waiting to be woken */
};

struct workq {
    pthread_mutex_t lock;
    struct workq_job *todo, *todo_tail, *done, *done_tail;
    struct workq_worker *workers;
    struct workq_worker **idle; /* the idle stack, the last to go idle on top */
    unsigned nthreads, nidle;
    bool stop;
    int efd;
    struct event *ev;
};

static void *
workq_thread(void *arg)
{
    struct workq_worker *w = arg;
    struct workq *q = w->q;
    pthread_mutex_lock(&q->lock);
    for (;;) {
        if (q->todo == NULL) {
            if (q->stop)
                break;
            /* go idle on top of the stack; workq_submit pops and wakes us */
            q->idle[q->nidle++] = w;
            w->idle = true;
            while (w->idle && !q->stop)
                pthread_cond_wait(&w->cond, &q->lock);
            continue;
        }
        struct workq_job *j = q->todo;
        q->todo = j->next;
        if (q->todo == NULL)
            q->todo_tail = NULL;
        pthread_mutex_unlock(&q->lock);
        j->work(j->arg);
        j->next = NULL;
        pthread_mutex_lock(&q->lock);
        bool wake = q->done == NULL;
        if (q->done_tail)
            q->done_tail->next = j;
        else
            q->done = j;
        q->done_tail = j;
        if (wake) {
            uint64_t one = 1;
            ssize_t r = write(q->efd, &one, sizeof(one));
            (void)r;
        }
    }
    pthread_mutex_unlock(&q->lock);
    return NULL;
}

static void
workq_collect(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct workq *q = arg;
    uint64_t v;
    ssize_t r = read(fd, &v, sizeof(v));
    (void)r;
    pthread_mutex_lock(&q->lock);
    struct workq_job *list = q->done;
    q->done = q->done_tail = NULL;
    pthread_mutex_unlock(&q->lock);
    while (list) {
        struct workq_job *next = list->next;
        if (list->done)
            list->done(list->arg);
        free(list);
        list = next;
    }
}

struct workq *
workq_new(struct event_base *base, unsigned nthreads)
{
    struct workq *q = xcalloc(1, sizeof(*q));
    pthread_mutex_init(&q->lock, NULL);
    q->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (q->efd < 0)
        fatal("eventfd: %s", strerror(errno));
    q->ev = event_new(base, q->efd, EV_READ | EV_PERSIST, workq_collect, q);
    event_add(q->ev, NULL);
    q->nthreads = nthreads ? nthreads : 1;
    q->workers = xcalloc(q->nthreads, sizeof(*q->workers));
    q->idle = xcalloc(q->nthreads, sizeof(*q->idle));
    for (unsigned i = 0; i < q->nthreads; i++) {
        struct workq_worker *w = &q->workers[i];
        w->q = q;
        pthread_cond_init(&w->cond, NULL);
        if (pthread_create(&w->thread, NULL, workq_thread, w) != 0)
            fatal("pthread_create failed");
    }
    return q;
}

void
workq_submit(struct workq *q, workq_fn *work, workq_fn *done, void *arg)
{
    struct workq_job *j = xcalloc(1, sizeof(*j));
    j->work = work;
    j->done = done;
    j->arg = arg;
    pthread_mutex_lock(&q->lock);
    if (q->todo_tail)
        q->todo_tail->next = j;
    else
        q->todo = j;
    q->todo_tail = j;
    /* the worker that went idle last; none idle: a busy one takes it next */
    if (q->nidle > 0 && !q->stop) {
        struct workq_worker *w = q->idle[--q->nidle];
        w->idle = false;
        pthread_cond_signal(&w->cond);
    }
    pthread_mutex_unlock(&q->lock);
}

void
workq_free(struct workq **qp)
{
    struct workq *q = *qp;
    if (q == NULL)
        return;
    pthread_mutex_lock(&q->lock);
    q->stop = true;
    for (unsigned i = 0; i < q->nthreads; i++)
        pthread_cond_signal(&q->workers[i].cond);
    pthread_mutex_unlock(&q->lock);
    for (unsigned i = 0; i < q->nthreads; i++) {
        pthread_join(q->workers[i].thread, NULL);
        pthread_cond_destroy(&q->workers[i].cond);
    }
    workq_collect(q->efd, 0, q);
    pthread_mutex_destroy(&q->lock);
    event_free(q->ev);
    close(q->efd);
    free(q->workers);
    free(q->idle);
    free(q);
    *qp = NULL;
}
