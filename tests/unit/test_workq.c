/* Unit tests: the worker pool (common/workq.c). Every job runs once and its
 * done callback comes back on the event loop's thread; one job at a time
 * goes to the same worker (the idle workers are a stack: the last to go
 * idle takes the next job); as many jobs as workers run at once; and
 * workq_free with idle workers, and with busy ones and jobs still queued,
 * runs every job and every callback before it returns. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <pthread.h>
#include <cmocka.h>
#include <event2/event.h>
#include "../../common/util.h"

#define NJOBS 2000
#define NTHREADS 4

struct pool_test {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    pthread_t loop_thread;
    struct event_base *base;
    struct workq *q;
    unsigned ran[NJOBS];        /* times each job's work ran */
    unsigned done[NJOBS];       /* times each job's done callback ran */
    pthread_t ran_on[NJOBS];
    unsigned ndone, nsubmitted;
    bool done_off_loop;         /* a done callback ran off the loop's thread */
    bool sequential;            /* done submits the next job */
    unsigned inside, max_inside;
    bool gate;                  /* jobs wait for NTHREADS of them inside */
    unsigned sleep_us;
};

struct job {
    struct pool_test *t;
    unsigned i;
};

static void
job_work(void *arg)
{
    struct job *j = arg;
    struct pool_test *t = j->t;
    pthread_mutex_lock(&t->lock);
    t->ran[j->i]++;
    t->ran_on[j->i] = pthread_self();
    t->inside++;
    if (t->inside > t->max_inside)
        t->max_inside = t->inside;
    pthread_cond_broadcast(&t->cond);
    if (t->gate) {
        /* wait (5 s at most) until NTHREADS jobs run at once */
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 5;
        while (t->max_inside < NTHREADS &&
               pthread_cond_timedwait(&t->cond, &t->lock, &until) == 0)
            ;
    }
    pthread_mutex_unlock(&t->lock);
    if (t->sleep_us)
        usleep(t->sleep_us);
    pthread_mutex_lock(&t->lock);
    t->inside--;
    pthread_mutex_unlock(&t->lock);
}

static void job_done(void *arg);

static void
submit(struct pool_test *t)
{
    struct job *j = xcalloc(1, sizeof(*j));
    j->t = t;
    j->i = t->nsubmitted++;
    workq_submit(t->q, job_work, job_done, j);
}

static void
job_done(void *arg)
{
    struct job *j = arg;
    struct pool_test *t = j->t;
    if (!pthread_equal(pthread_self(), t->loop_thread))
        t->done_off_loop = true;
    t->done[j->i]++;
    t->ndone++;
    free(j);
    if (t->sequential && t->nsubmitted < NJOBS)
        submit(t);
    else if (t->ndone == t->nsubmitted)
        event_base_loopbreak(t->base);
}

static int
setup(void **state)
{
    struct pool_test *t = xcalloc(1, sizeof(*t));
    pthread_mutex_init(&t->lock, NULL);
    pthread_cond_init(&t->cond, NULL);
    t->loop_thread = pthread_self();
    t->base = event_base_new();
    assert_non_null(t->base);
    t->q = workq_new(t->base, NTHREADS);
    assert_non_null(t->q);
    *state = t;
    return 0;
}

static int
teardown(void **state)
{
    struct pool_test *t = *state;
    workq_free(&t->q);
    event_base_free(t->base);
    pthread_mutex_destroy(&t->lock);
    pthread_cond_destroy(&t->cond);
    free(t);
    return 0;
}

/* the loop until every submitted job is done, 20 s at most */
static void
run_loop(struct pool_test *t)
{
    struct timeval limit = { 20, 0 };
    event_base_loopexit(t->base, &limit);
    event_base_dispatch(t->base);
    assert_int_equal(t->ndone, t->nsubmitted);
}

static void
assert_all_once(struct pool_test *t, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        assert_int_equal(t->ran[i], 1);
        assert_int_equal(t->done[i], 1);
    }
    assert_false(t->done_off_loop);
}

/* a burst: every job runs once, every done once, on the loop's thread;
 * and the burst is spread over the workers */
static void
test_burst(void **state)
{
    struct pool_test *t = *state;
    t->sleep_us = 100;
    for (unsigned i = 0; i < NJOBS; i++)
        submit(t);
    run_loop(t);
    assert_int_equal(t->nsubmitted, NJOBS);
    assert_all_once(t, NJOBS);
    assert_true(t->max_inside >= 2);
    assert_true(t->max_inside <= NTHREADS);
}

/* one job at a time (the next submitted from the last one's done
 * callback): the worker that just went idle takes it, so all of them run
 * on one thread, not in turn on all four */
static void
test_one_at_a_time_same_worker(void **state)
{
    struct pool_test *t = *state;
    t->sequential = true;
    usleep(50000);              /* the workers started, all idle */
    submit(t);
    run_loop(t);
    assert_int_equal(t->nsubmitted, NJOBS);
    assert_all_once(t, NJOBS);
    assert_int_equal(t->max_inside, 1);
    for (unsigned i = 1; i < NJOBS; i++)
        assert_true(pthread_equal(t->ran_on[i], t->ran_on[0]));
}

/* as many jobs as workers, each waiting for the others: every worker is
 * woken (none left asleep on the idle stack while a job waits) */
static void
test_all_workers_at_once(void **state)
{
    struct pool_test *t = *state;
    t->gate = true;
    for (unsigned i = 0; i < NTHREADS; i++)
        submit(t);
    run_loop(t);
    assert_all_once(t, NTHREADS);
    assert_int_equal(t->max_inside, NTHREADS);
    for (unsigned i = 0; i < NTHREADS; i++)
        for (unsigned k = i + 1; k < NTHREADS; k++)
            assert_false(pthread_equal(t->ran_on[i], t->ran_on[k]));
    /* again, a job at a time then a burst, the idle stack reused */
    t->gate = false;
    for (unsigned i = 0; i < 100; i++)
        submit(t);
    run_loop(t);
    assert_all_once(t, NTHREADS + 100);
}

/* workq_free with every worker idle, after work and before any */
static void
test_free_idle(void **state)
{
    struct pool_test *t = *state;
    submit(t);
    run_loop(t);
    usleep(20000);              /* the worker back on the idle stack */
    workq_free(&t->q);
    assert_null(t->q);
    assert_all_once(t, 1);
    struct workq *fresh = workq_new(t->base, NTHREADS);
    workq_free(&fresh);
    assert_null(fresh);
}

/* workq_free with every worker busy and jobs still queued: all of them
 * run, and every done callback comes back, before it returns */
static void
test_free_busy(void **state)
{
    struct pool_test *t = *state;
    t->sleep_us = 2000;
    for (unsigned i = 0; i < 40; i++)
        submit(t);
    /* the workers busy */
    pthread_mutex_lock(&t->lock);
    while (t->inside < NTHREADS)
        pthread_cond_wait(&t->cond, &t->lock);
    pthread_mutex_unlock(&t->lock);
    workq_free(&t->q);
    assert_null(t->q);
    assert_int_equal(t->ndone, 40);
    assert_all_once(t, 40);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_burst, setup, teardown),
        cmocka_unit_test_setup_teardown(test_one_at_a_time_same_worker, setup, teardown),
        cmocka_unit_test_setup_teardown(test_all_workers_at_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_idle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_busy, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
