/*
 * workq.c -- the role's worker threads. Work that may block (fsync,
 * password hashing, the filters' hooks with virus scans, mailbox commands,
 * the web API's handlers) runs here, never on the event loop; each job's
 * completion callback runs back on the loop.
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

struct workq {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct workq_job *todo, *todo_tail, *done, *done_tail;
    pthread_t *threads;
    unsigned nthreads;
    bool stop;
    int efd;
    struct event *ev;
};

static void *
workq_thread(void *arg)
{
    struct workq *q = arg;
    pthread_mutex_lock(&q->lock);
    for (;;) {
        while (q->todo == NULL && !q->stop)
            pthread_cond_wait(&q->cond, &q->lock);
        if (q->todo == NULL && q->stop)
            break;
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
    pthread_cond_init(&q->cond, NULL);
    q->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (q->efd < 0)
        fatal("eventfd: %s", strerror(errno));
    q->ev = event_new(base, q->efd, EV_READ | EV_PERSIST, workq_collect, q);
    event_add(q->ev, NULL);
    q->nthreads = nthreads ? nthreads : 1;
    q->threads = xcalloc(q->nthreads, sizeof(*q->threads));
    for (unsigned i = 0; i < q->nthreads; i++)
        if (pthread_create(&q->threads[i], NULL, workq_thread, q) != 0)
            fatal("pthread_create failed");
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
    pthread_cond_signal(&q->cond);
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
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->lock);
    for (unsigned i = 0; i < q->nthreads; i++)
        pthread_join(q->threads[i], NULL);
    workq_collect(q->efd, 0, q);
    event_free(q->ev);
    close(q->efd);
    free(q->threads);
    free(q);
    *qp = NULL;
}
