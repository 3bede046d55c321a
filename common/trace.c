/*
 * trace.c -- what happens to mail, written to Redis for the web role: the
 * message trace (every accepted, quarantined, rejected, delivered, deferred
 * or bounced message, findable by sender, recipient, queue id or
 * Message-ID for trace_retention), the stats (counts per hour and per day,
 * in all and per recipient domain) and the Prometheus metrics (counters and
 * histograms shared by every process of the daemon; every message event
 * counted by event, and by event and reason where it has one).
 *
 * Callers never wait for Redis: a record is formatted on the caller's
 * thread and put on a bounded queue; counters are added up in memory. One
 * background thread per process sends the queue and, every second, the
 * counters' increments, pipelined. Losing Redis loses statistics, never
 * mail: what does not fit the queue is dropped and counted in the log.
 *
 * Redis keys:
 *   moat:trace:m:ID           list of JSON events of one message (ID: queue id)
 *   moat:trace:recent         zset ID -> time of its last event
 *   moat:trace:i:KIND:VALUE   zset ID -> time: from:ADDR to:ADDR msgid:ID dom:DOMAIN
 *   moat:stats:h:YYYYMMDDHH   hash EVENT[|DOMAIN] -> count, kept 8 days
 *   moat:stats:d:YYYYMMDD     the same per day, kept 400 days
 *   moat:metrics:NODE         hash "moat_NAME{labels}" -> value, this node's
 *                             (node.name): /metrics of each node shows its
 *                             own, so scraping every node counts once
 */
#include <ctype.h>
#include <pthread.h>
#include <strings.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <hiredis/hiredis.h>
#include "mail.h"

#define MAX_PENDING 20000       /* commands waiting for the thread */
#define MAX_COUNTERS 4096
#define COUNTER_SLOTS 8192          /* open addressing over c[], at most half full */
#define HOUR_TTL (8 * 86400)
#define DAY_TTL (400 * 86400)

struct cmd {
    int argc;
    char *argv[6];
    size_t lens[6];
};

struct counter {
    char *key, *field;
    double delta;
    unsigned ttl;
    bool is_float;
};

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_cond_t sent_cv;         /* a batch has gone (for trace_flush) */
    unsigned long flush_asked, flush_done;
    bool started;
    char redis[300];
    char metrics[100];              /* moat:metrics:NODE */
    unsigned timeout_ms;
    unsigned retention;
    struct cmd *q;
    size_t nq, capq;
    size_t dropped;
    struct counter c[MAX_COUNTERS];
    size_t nc;
    uint16_t slot[COUNTER_SLOTS];   /* index into c[] + 1; 0: empty */
    pid_t pid;
} ev = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER,
         .sent_cv = PTHREAD_COND_INITIALIZER };

void
trace_init(const struct moat_config *cfg)
{
    pthread_mutex_lock(&ev.mu);
    str_copy(ev.redis, cfg->redis.address, sizeof(ev.redis));
    ev.timeout_ms = cfg->redis.timeout_ms;
    ev.retention = cfg->web.trace_retention ? cfg->web.trace_retention : 7 * 86400;
    str_fmt(ev.metrics, sizeof(ev.metrics), "moat:metrics:%s", cfg->node.name);
    pthread_mutex_unlock(&ev.mu);
}

unsigned
trace_retention(void)
{
    return ev.retention ? ev.retention : 7 * 86400;
}

static void
cmd_free(struct cmd *c)
{
    for (int i = 0; i < c->argc; i++)
        free(c->argv[i]);
}

static void
counters_flush_locked(struct cmd **out, size_t *nout)
{
    size_t n = 0;
    struct cmd *v = xcalloc(ev.nc * 2 + 1, sizeof(*v));
    for (size_t i = 0; i < ev.nc; i++) {
        struct counter *k = &ev.c[i];
        char num[64];
        if (k->is_float)
            snprintf(num, sizeof(num), "%.9g", k->delta);
        else
            snprintf(num, sizeof(num), "%lld", (long long)k->delta);
        struct cmd *c = &v[n++];
        c->argc = 4;
        c->argv[0] = xstrdup(k->is_float ? "HINCRBYFLOAT" : "HINCRBY");
        c->argv[1] = k->key;
        c->argv[2] = k->field;
        c->argv[3] = xstrdup(num);
        if (k->ttl) {
            struct cmd *e = &v[n++];
            snprintf(num, sizeof(num), "%u", k->ttl);
            e->argc = 3;
            e->argv[0] = xstrdup("EXPIRE");
            e->argv[1] = xstrdup(k->key);
            e->argv[2] = xstrdup(num);
        }
    }
    ev.nc = 0;
    memset(ev.slot, 0, sizeof(ev.slot));
    *out = v;
    *nout = n;
}

static void
send_cmds(struct cmd *v, size_t n)
{
    char err[300];
    size_t sent = 0;
    for (size_t i = 0; i < n; i++) {
        for (int a = 0; a < v[i].argc; a++)
            v[i].lens[a] = strlen(v[i].argv[a]);
        if (redis_append(ev.redis, ev.timeout_ms, err, sizeof(err), v[i].argc,
                         (const char **)v[i].argv, v[i].lens) < 0)
            break;
        sent++;
    }
    bool failed = sent < n;
    for (size_t i = 0; i < sent; i++) {
        struct redisReply *r = redis_reply(ev.redis, ev.timeout_ms, err, sizeof(err));
        if (r == NULL) {
            failed = true;
            break;
        }
        redis_reply_free(r);
    }
    if (failed) {
        static double last;
        double now = time_mono();
        if (now - last > 60) {
            log_warn("events: Redis %s: %s (stats and trace records lost)", ev.redis, err);
            last = now;
        }
        redis_drop(ev.redis);
    }
}

static void *
trace_thread(void *arg)
{
    (void)arg;
    double next_flush = time_mono() + 1;
    for (;;) {
        pthread_mutex_lock(&ev.mu);
        while (ev.nq == 0 && time_mono() < next_flush && ev.flush_done == ev.flush_asked) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 200 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&ev.cv, &ev.mu, &ts);
        }
        struct cmd *q = ev.q;
        size_t nq = ev.nq;
        ev.q = NULL;
        ev.nq = ev.capq = 0;
        struct cmd *cv = NULL;
        size_t ncv = 0;
        unsigned long asked = ev.flush_asked;
        if (time_mono() >= next_flush || asked != ev.flush_done) {
            counters_flush_locked(&cv, &ncv);
            next_flush = time_mono() + 1;
        }
        size_t dropped = ev.dropped;
        ev.dropped = 0;
        pthread_mutex_unlock(&ev.mu);
        if (dropped)
            log_warn("events: %zu records dropped (Redis too slow)", dropped);
        if (nq)
            send_cmds(q, nq);
        if (ncv)
            send_cmds(cv, ncv);
        for (size_t i = 0; i < nq; i++)
            cmd_free(&q[i]);
        for (size_t i = 0; i < ncv; i++)
            cmd_free(&cv[i]);
        free(q);
        free(cv);
        pthread_mutex_lock(&ev.mu);
        ev.flush_done = asked;
        pthread_cond_broadcast(&ev.sent_cv);
        pthread_mutex_unlock(&ev.mu);
    }
    return NULL;
}

/* This process's id, asked of the kernel once per process (every hook
 * counts metrics: a getpid each was a system call each): forgotten in the
 * child at a fork. */
static pid_t pid_cached;

static void
pid_forget(void)
{
    pid_cached = 0;
}

static void
pid_atfork(void)
{
    pthread_atfork(NULL, NULL, pid_forget);
}

static pid_t
pid_self(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, pid_atfork);
    if (pid_cached == 0)
        pid_cached = getpid();
    return pid_cached;
}

/* With ev.mu held: the thread runs in this process (after a fork the
 * parent's thread is not ours). */
static bool
ensure_thread_locked(void)
{
    if (ev.redis[0] == '\0')
        return false;
    if (ev.started && ev.pid == pid_self())
        return true;
    pthread_t t;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&t, &at, trace_thread, NULL);
    pthread_attr_destroy(&at);
    if (rc != 0)
        return false;
    ev.started = true;
    ev.pid = pid_self();
    return true;
}

void
trace_flush(unsigned timeout_ms)
{
    pthread_mutex_lock(&ev.mu);
    if (ev.started && ev.pid == pid_self()) {
        unsigned long want = ++ev.flush_asked;
        pthread_cond_signal(&ev.cv);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += (time_t)(timeout_ms / 1000);
        until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        while ((long)(ev.flush_done - want) < 0 &&
               pthread_cond_timedwait(&ev.sent_cv, &ev.mu, &until) == 0)
            ;
    }
    pthread_mutex_unlock(&ev.mu);
}

static void
push_locked(int argc, const char *a0, const char *a1, const char *a2, const char *a3)
{
    if (ev.nq >= MAX_PENDING) {
        ev.dropped++;
        return;
    }
    if (ev.nq == ev.capq) {
        ev.capq = ev.capq ? ev.capq * 2 : 64;
        ev.q = xrealloc(ev.q, ev.capq * sizeof(*ev.q));
    }
    struct cmd *c = &ev.q[ev.nq++];
    memset(c, 0, sizeof(*c));
    const char *a[4] = { a0, a1, a2, a3 };
    c->argc = argc;
    for (int i = 0; i < argc; i++)
        c->argv[i] = xstrdup(a[i]);
}

/* Counters are bumped from every worker thread on every hook call: found
 * by a hash of key and field, not by a walk over all of them. */
static size_t
counter_hash(const char *key, const char *field)
{
    return str_hash(str_hash(str_hash(STR_HASH_INIT, key), "|"), field) & (COUNTER_SLOTS - 1);
}

static void
count_locked(const char *key, const char *field, double delta, unsigned ttl, bool is_float)
{
    size_t h = counter_hash(key, field);
    for (; ev.slot[h]; h = (h + 1) & (COUNTER_SLOTS - 1)) {
        struct counter *k = &ev.c[ev.slot[h] - 1];
        if (strcmp(k->field, field) == 0 && strcmp(k->key, key) == 0) {
            k->delta += delta;
            return;
        }
    }
    if (ev.nc >= MAX_COUNTERS) {
        ev.dropped++;
        return;
    }
    struct counter *k = &ev.c[ev.nc++];
    ev.slot[h] = (uint16_t)ev.nc;
    k->key = xstrdup(key);
    k->field = xstrdup(field);
    k->delta = delta;
    k->ttl = ttl;
    k->is_float = is_float;
}

void
trace_metric(const char *name, double add)
{
    pthread_mutex_lock(&ev.mu);
    if (ensure_thread_locked())
        count_locked(ev.metrics, name, add, 0, add != (double)(long long)add);
    pthread_mutex_unlock(&ev.mu);
}

void
trace_timing(const char *metric, const char *label, const char *value, double secs)
{
    /* the bounds as "%g" writes them, so no float is formatted per call:
     * each hook of each message comes here (chain.c), and the names are
     * made before the lock that every worker takes */
    static const double le[] = { 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10 };
    static const char *const le_s[] = { "0.001", "0.005", "0.01", "0.05", "0.1", "0.5", "1",
                                        "5", "10", "+Inf" };
    enum { NB = sizeof(le_s) / sizeof(le_s[0]) };
    char f[NB + 2][300];
    size_t first = 0;
    while (first < NB - 1 && secs > le[first])
        first++;
    for (size_t i = first; i < NB; i++)
        snprintf(f[i], sizeof(f[i]), "%s_bucket{%s=\"%s\",le=\"%s\"}", metric, label, value,
                 le_s[i]);
    snprintf(f[NB], sizeof(f[NB]), "%s_sum{%s=\"%s\"}", metric, label, value);
    snprintf(f[NB + 1], sizeof(f[NB + 1]), "%s_count{%s=\"%s\"}", metric, label, value);
    pthread_mutex_lock(&ev.mu);
    if (ensure_thread_locked()) {
        for (size_t i = first; i < NB; i++)
            count_locked(ev.metrics, f[i], 1, 0, false);
        count_locked(ev.metrics, f[NB], secs, 0, true);
        count_locked(ev.metrics, f[NB + 1], 1, 0, false);
    }
    pthread_mutex_unlock(&ev.mu);
}

static void
lower_into(char *dst, const char *src, size_t size)
{
    str_copy(dst, src ? src : "", size);
    for (char *p = dst; *p; p++)
        *p = (char)tolower((unsigned char)*p);
}

static const char *
domain_of(const char *addr)
{
    const char *at = addr ? strrchr(addr, '@') : NULL;
    return at ? at + 1 : "";
}

void
trace_message(const struct msg_event *e)
{
    time_t now = time(NULL);
    char id[64], hour[32], day[32], key[600], score[32], ttl[32];
    if (e->qid && e->qid[0])
        str_copy(id, e->qid, sizeof(id));
    else {
        char tmp[QUEUE_ID_LEN + 1];
        queue_id_new(tmp);
        snprintf(id, sizeof(id), "NOQUEUE-%s", tmp);
    }
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(hour, sizeof(hour), "moat:stats:h:%Y%m%d%H", &tm);
    strftime(day, sizeof(day), "moat:stats:d:%Y%m%d", &tm);
    snprintf(score, sizeof(score), "%lld", (long long)now);

    struct jbuf j = { 0 };
    jb_obj(&j);
    jb_kint(&j, "t", (long long)now);
    jb_kstr(&j, "event", e->what);
    jb_kstr(&j, "qid", id);
    if (e->msgid && e->msgid[0])
        jb_kstr(&j, "msgid", e->msgid);
    jb_kstr(&j, "from", e->sender ? e->sender : "");
    jb_key(&j, "to");
    jb_arr(&j);
    for (size_t i = 0; i < e->nrcpt; i++)
        jb_str(&j, e->rcpts[i]);
    jb_arr_end(&j);
    if (e->reason && e->reason[0])
        jb_kstr(&j, "reason", e->reason);
    if (e->detail && e->detail[0])
        jb_kstr(&j, "detail", e->detail);
    if (e->client && e->client[0])
        jb_kstr(&j, "client", e->client);
    jb_obj_end(&j);

    pthread_mutex_lock(&ev.mu);
    if (!ensure_thread_locked()) {
        pthread_mutex_unlock(&ev.mu);
        jb_free(&j);
        return;
    }
    unsigned keep = trace_retention();
    snprintf(ttl, sizeof(ttl), "%u", keep);
    snprintf(key, sizeof(key), "moat:trace:m:%s", id);
    push_locked(3, "RPUSH", key, j.p, NULL);
    push_locked(3, "EXPIRE", key, ttl, NULL);
    push_locked(4, "ZADD", "moat:trace:recent", score, id);
    static unsigned trims;
    if (trims++ % 100 == 0) {
        char upto[32];
        snprintf(upto, sizeof(upto), "%lld", (long long)now - keep);
        push_locked(4, "ZREMRANGEBYSCORE", "moat:trace:recent", "-inf", upto);
    }
    /* the index keys, and the stats per domain (each domain once) */
    char v[400];
    const char *doms[64];
    size_t ndoms = 0;
    for (size_t i = 0; i <= e->nrcpt + 1; i++) {
        const char *kind;
        if (i < e->nrcpt) {
            kind = "to";
            lower_into(v, e->rcpts[i], sizeof(v));
        } else if (i == e->nrcpt) {
            kind = "from";
            lower_into(v, e->sender, sizeof(v));
        } else {
            kind = "msgid";
            str_copy(v, e->msgid ? e->msgid : "", sizeof(v));
        }
        if (v[0] == '\0')
            continue;
        snprintf(key, sizeof(key), "moat:trace:i:%s:%s", kind, v);
        push_locked(4, "ZADD", key, score, id);
        push_locked(3, "EXPIRE", key, ttl, NULL);
        if (i < e->nrcpt) {
            const char *d = domain_of(e->rcpts[i]);
            bool seen = false;
            for (size_t k = 0; k < ndoms; k++)
                seen |= strcasecmp(doms[k], d) == 0;
            if (!seen && d[0] && ndoms < 64)
                doms[ndoms++] = d;
        }
    }
    for (size_t k = 0; k < ndoms; k++) {
        lower_into(v, doms[k], sizeof(v));
        snprintf(key, sizeof(key), "moat:trace:i:dom:%s", v);
        push_locked(4, "ZADD", key, score, id);
        push_locked(3, "EXPIRE", key, ttl, NULL);
    }
    /* counts: the event, its reason, spam and virus whatever happened */
    const char *names[3] = { e->what, NULL, NULL };
    char reason_f[100];
    size_t nn = 1;
    if (e->reason && e->reason[0]) {
        snprintf(reason_f, sizeof(reason_f), "%s:%s", e->what, e->reason);
        names[nn++] = reason_f;
        if (strcmp(e->reason, "spam") == 0 || strcmp(e->reason, "virus") == 0)
            names[nn++] = e->reason;
    }
    for (size_t n = 0; n < nn; n++) {
        count_locked(hour, names[n], 1, HOUR_TTL, false);
        count_locked(day, names[n], 1, DAY_TTL, false);
        for (size_t k = 0; k < ndoms; k++) {
            char f[400];
            lower_into(v, doms[k], sizeof(v));
            snprintf(f, sizeof(f), "%s|%s", names[n], v);
            count_locked(hour, f, 1, HOUR_TTL, false);
            count_locked(day, f, 1, DAY_TTL, false);
        }
    }
    char m[160];
    snprintf(m, sizeof(m), "moat_messages_total{event=\"%s\"}", e->what);
    count_locked(ev.metrics, m, 1, 0, false);
    /* why: rejections by reason (relay, unknown_user, spam, virus, ...);
     * the reasons are the code's own words, kept to label-safe bytes */
    if (e->reason && e->reason[0]) {
        char r[40];
        size_t k = 0;
        for (const char *q = e->reason; *q && k + 1 < sizeof(r); q++)
            r[k++] = (isalnum((unsigned char)*q) || *q == '_' || *q == '-') ? *q : '_';
        r[k] = '\0';
        snprintf(m, sizeof(m), "moat_messages_by_reason_total{event=\"%s\",reason=\"%s\"}",
                 e->what, r);
        count_locked(ev.metrics, m, 1, 0, false);
    }
    pthread_cond_signal(&ev.cv);
    pthread_mutex_unlock(&ev.mu);
    jb_free(&j);
}
