/*
 * authlimit.c -- failed logins slowed down and then refused, for every
 * service that checks passwords (POP3, IMAP, submission, the web UI).
 * Failures are counted under two keys: the client (its address; an IPv6
 * client by its /64) together with the account tried, and the client over
 * all accounts. Each failure within the window doubles the wait before the
 * client hears it failed (0.5 s, 1 s, 2 s, ... up to 8 s); after
 * AUTHLIMIT_BLOCK_AFTER failures for one account, or
 * AUTHLIMIT_CLIENT_BLOCK_AFTER over all, the client is refused until
 * AUTHLIMIT_WINDOW has passed since its last failure. A success clears
 * only that account's count from that client: logging in to one's own
 * account does not buy more guesses at another's. The table is bounded:
 * when full, the oldest entry goes.
 *
 * With Redis (authlimit_set_redis), the same two counts are also kept
 * there (moat:authfail:CLIENT and moat:authfail:CLIENT\nACCOUNT, each
 * expiring AUTHLIMIT_WINDOW after its last failure), so that every role
 * and every node of a cluster sees a brute force spread over them; the
 * larger of the shared and the local count decides. While Redis is away
 * the local table alone does (per process, as without Redis). Then the
 * calls wait for Redis: make them from a worker, never the event loop.
 * The table has its own lock.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <hiredis/hiredis.h>
#include "util.h"

#define SHARED_PREFIX "moat:authfail:"

#define SLOTS 4096
#define MAX_ENTRIES 20000

struct ent {
    char key[ADDR_KEY_MAX + 320];       /* client key, then "\n" and the account */
    unsigned failures;
    double last;
    struct ent *next;
};

struct authlimit {
    struct ent *slot[SLOTS];
    size_t n;
    pthread_mutex_t mu;
    char redis[300];            /* "" : local only */
    unsigned timeout_ms;
};

static unsigned
hash(const char *s)
{
    unsigned h = 5381;
    for (; *s; s++)
        h = h * 33 ^ (unsigned char)*s;
    return h % SLOTS;
}

struct authlimit *
authlimit_new(void)
{
    struct authlimit *l = xcalloc(1, sizeof(struct authlimit));
    pthread_mutex_init(&l->mu, NULL);
    return l;
}

void
authlimit_set_redis(struct authlimit *l, const char *address, unsigned timeout_ms)
{
    str_copy(l->redis, address ? address : "", sizeof(l->redis));
    l->timeout_ms = timeout_ms;
}

void
authlimit_free(struct authlimit **lp)
{
    struct authlimit *l = *lp;
    if (l == NULL)
        return;
    for (size_t i = 0; i < SLOTS; i++)
        for (struct ent *e = l->slot[i], *n; e; e = n) {
            n = e->next;
            free(e);
        }
    pthread_mutex_destroy(&l->mu);
    free(l);
    *lp = NULL;
}

static struct ent **
find(struct authlimit *l, const char *key)
{
    struct ent **pp = &l->slot[hash(key)];
    for (; *pp; pp = &(*pp)->next)
        if (strcmp((*pp)->key, key) == 0)
            return pp;
    return pp;
}

/* The client's key, and with user the client's and the account's (case
 * folded: Alice@ and alice@ are one account). */
static void
keys(const char *addr, const char *user, char *client, char *pair, size_t size)
{
    addr_limit_key(addr, client, ADDR_KEY_MAX);
    if (user == NULL) {
        pair[0] = '\0';
        return;
    }
    str_fmt(pair, size, "%s\n%.300s", client, user);
    for (char *p = pair + strlen(client); *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p + 32);
}

static void
drop_oldest(struct authlimit *l)
{
    struct ent **oldest = NULL;
    for (size_t i = 0; i < SLOTS; i++)
        for (struct ent **pp = &l->slot[i]; *pp; pp = &(*pp)->next)
            if (oldest == NULL || (*pp)->last < (*oldest)->last)
                oldest = pp;
    if (oldest) {
        struct ent *e = *oldest;
        *oldest = e->next;
        free(e);
        l->n--;
    }
}

static double
blocked_for(struct authlimit *l, const char *key, unsigned limit, double now)
{
    struct ent *e = *find(l, key);
    if (e == NULL || now - e->last > AUTHLIMIT_WINDOW)
        return 0;
    return e->failures >= limit ? AUTHLIMIT_WINDOW - (now - e->last) : 0;
}

/* ---------------------------------------------------------- in Redis */
static size_t
shared_key(char *out, size_t size, const char *key)
{
    str_fmt(out, size, SHARED_PREFIX "%s", key);
    return strlen(out);
}

/* Send n commands of argv[i] (argc[i] words), then read n replies into
 * rep; -1 (and the replies freed) when Redis is away or says no. */
static int
shared_run(struct authlimit *l, size_t n, const int *argc, const char *const argv[][3],
           const size_t lens[][3], struct redisReply **rep)
{
    char err[400];
    for (size_t i = 0; i < n; i++)
        rep[i] = NULL;
    for (size_t i = 0; i < n; i++)
        if (redis_append(l->redis, l->timeout_ms, err, sizeof(err), argc[i],
                         (const char **)argv[i], lens[i]) < 0)
            goto away;
    for (size_t i = 0; i < n; i++)
        if ((rep[i] = redis_reply(l->redis, l->timeout_ms, err, sizeof(err))) == NULL)
            goto away;
    return 0;
away:
    for (size_t i = 0; i < n; i++) {
        redis_reply_free(rep[i]);
        rep[i] = NULL;
    }
    log_warn("authlimit: %s (failed logins counted by this process alone meanwhile)", err);
    return -1;
}

/* Seconds key is still refused for in Redis (count over limit), 0. */
static double
shared_blocked_for(const redisReply *count, const redisReply *pttl, unsigned limit)
{
    long long c = count->type == REDIS_REPLY_STRING ? strtoll(count->str, NULL, 10) : 0;
    if (c < (long long)limit || pttl->type != REDIS_REPLY_INTEGER || pttl->integer <= 0)
        return 0;
    return (double)pttl->integer / 1000.0;
}

static double
shared_blocked(struct authlimit *l, const char *client, const char *pair)
{
    char kc[ADDR_KEY_MAX + 32], kp[sizeof(((struct ent *)0)->key) + 32];
    size_t lc = shared_key(kc, sizeof(kc), client), lp = shared_key(kp, sizeof(kp), pair);
    const int argc[4] = { 2, 2, 2, 2 };
    const char *const argv[4][3] = { { "GET", kc }, { "PTTL", kc }, { "GET", kp }, { "PTTL", kp } };
    const size_t lens[4][3] = { { 3, lc }, { 4, lc }, { 3, lp }, { 4, lp } };
    struct redisReply *rep[4];
    size_t n = pair[0] ? 4 : 2;
    if (shared_run(l, n, argc, argv, lens, rep) < 0)
        return 0;
    double w = shared_blocked_for(rep[0], rep[1], AUTHLIMIT_CLIENT_BLOCK_AFTER);
    if (n == 4) {
        double w2 = shared_blocked_for(rep[2], rep[3], AUTHLIMIT_BLOCK_AFTER);
        w = w2 > w ? w2 : w;
    }
    for (size_t i = 0; i < n; i++)
        redis_reply_free(rep[i]);
    return w;
}

/* INCR and expire both counts; 0 with them, -1 when Redis is away. */
static int
shared_failed(struct authlimit *l, const char *client, const char *pair, unsigned *total,
              unsigned *mine)
{
    char kc[ADDR_KEY_MAX + 32], kp[sizeof(((struct ent *)0)->key) + 32], ttl[32];
    size_t lc = shared_key(kc, sizeof(kc), client), lp = shared_key(kp, sizeof(kp), pair);
    str_fmt(ttl, sizeof(ttl), "%u", (unsigned)AUTHLIMIT_WINDOW);
    const int argc[4] = { 2, 3, 2, 3 };
    const char *const argv[4][3] = { { "INCR", kc }, { "EXPIRE", kc, ttl }, { "INCR", kp },
                                     { "EXPIRE", kp, ttl } };
    const size_t lens[4][3] = { { 4, lc }, { 6, lc, strlen(ttl) }, { 4, lp },
                                { 6, lp, strlen(ttl) } };
    struct redisReply *rep[4];
    size_t n = pair[0] ? 4 : 2;
    if (shared_run(l, n, argc, argv, lens, rep) < 0)
        return -1;
    *total = rep[0]->type == REDIS_REPLY_INTEGER ? (unsigned)rep[0]->integer : 0;
    *mine = n == 4 && rep[2]->type == REDIS_REPLY_INTEGER ? (unsigned)rep[2]->integer : *total;
    for (size_t i = 0; i < n; i++)
        redis_reply_free(rep[i]);
    return 0;
}

/* ------------------------------------------------------------ the calls */
double
authlimit_blocked(struct authlimit *l, const char *addr, const char *user)
{
    char client[ADDR_KEY_MAX], pair[sizeof(((struct ent *)0)->key)];
    keys(addr, user, client, pair, sizeof(pair));
    double now = time_mono();
    pthread_mutex_lock(&l->mu);
    double w = blocked_for(l, client, AUTHLIMIT_CLIENT_BLOCK_AFTER, now);
    if (pair[0]) {
        double w2 = blocked_for(l, pair, AUTHLIMIT_BLOCK_AFTER, now);
        w = w2 > w ? w2 : w;
    }
    pthread_mutex_unlock(&l->mu);
    if (l->redis[0]) {
        double w3 = shared_blocked(l, client, pair);
        w = w3 > w ? w3 : w;
    }
    return w;
}

static unsigned
count_failure(struct authlimit *l, const char *key, double now)
{
    struct ent **pp = find(l, key), *e = *pp;
    if (e == NULL) {
        if (l->n >= MAX_ENTRIES)
            drop_oldest(l);
        pp = find(l, key);
        e = *pp = xcalloc(1, sizeof(*e));
        str_copy(e->key, key, sizeof(e->key));
        l->n++;
    }
    if (now - e->last > AUTHLIMIT_WINDOW)
        e->failures = 0;
    e->failures++;
    e->last = now;
    return e->failures;
}

double
authlimit_failed(struct authlimit *l, const char *addr, const char *user)
{
    char client[ADDR_KEY_MAX], pair[sizeof(((struct ent *)0)->key)];
    keys(addr, user, client, pair, sizeof(pair));
    double now = time_mono();
    pthread_mutex_lock(&l->mu);
    unsigned total = count_failure(l, client, now);
    unsigned mine = pair[0] ? count_failure(l, pair, now) : total;
    pthread_mutex_unlock(&l->mu);
    unsigned stotal, smine;
    if (l->redis[0] && shared_failed(l, client, pair, &stotal, &smine) == 0) {
        total = stotal > total ? stotal : total;
        mine = smine > mine ? smine : mine;
    }
    bool refusing = mine >= AUTHLIMIT_BLOCK_AFTER || total >= AUTHLIMIT_CLIENT_BLOCK_AFTER;
    unsigned n = mine - 1 > 4 ? 4 : mine - 1;
    log_warn("authentication failed for [%s] (%u in a row for this account, %u in all%s)", addr,
             mine, total, refusing ? ", refusing it for a while" : "");
    return 0.5 * (double)(1u << n);
}

void
authlimit_ok(struct authlimit *l, const char *addr, const char *user)
{
    char client[ADDR_KEY_MAX], pair[sizeof(((struct ent *)0)->key)];
    keys(addr, user, client, pair, sizeof(pair));
    if (pair[0] == '\0')
        return;
    pthread_mutex_lock(&l->mu);
    struct ent **pp = find(l, pair), *e = *pp;
    if (e) {
        *pp = e->next;
        free(e);
        l->n--;
    }
    pthread_mutex_unlock(&l->mu);
    if (l->redis[0]) {
        char kp[sizeof(((struct ent *)0)->key) + 32];
        size_t lp = shared_key(kp, sizeof(kp), pair);
        const int argc[1] = { 2 };
        const char *const argv[1][3] = { { "DEL", kp } };
        const size_t lens[1][3] = { { 3, lp } };
        struct redisReply *rep[1];
        if (shared_run(l, 1, argc, argv, lens, rep) == 0)
            redis_reply_free(rep[0]);
    }
}
