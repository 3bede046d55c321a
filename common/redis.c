/*
 * redis.c -- the daemon's Redis client (hiredis): one connection per
 * thread and address, because a hiredis context is not thread-safe and
 * the filter hooks run on several workers at once. Connect and every reply
 * are bounded by the configured timeout; a connection that failed is
 * dropped and the next call connects again, so a Redis restart costs the
 * messages in flight a tempfail, never a hung worker.
 *
 * The configured Redis (redis_setup) may be a master found through Redis
 * Sentinel, as the Sentinel client protocol says: ask each sentinel in
 * turn for the master's address (SENTINEL get-master-addr-by-name),
 * connect, and check with ROLE that it is the master; else the next. A
 * connection error or a -READONLY reply (the master was demoted) drops the
 * connection, so the next call asks the sentinels again: after a
 * fail-over every thread follows the new master on its next command.
 * AUTH (username and password) runs on every new connection; a wrong
 * password is an error that says so.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <hiredis/hiredis.h>
#include "util.h"

#define SLOTS 4

struct slot {
    char address[300];
    redisContext *c;
    unsigned gen;           /* of the config it was made with */
    bool stale;             /* -READONLY seen: drop before the next command */
};
struct slots { struct slot s[SLOTS]; };

static pthread_key_t key;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static pthread_mutex_t conf_mu = PTHREAD_MUTEX_INITIALIZER;
static struct redis_conf conf;      /* the configured Redis */
static bool have_conf;
static unsigned conf_gen;
static size_t sentinel_good;        /* the sentinel that answered last */
static __thread bool auth_refused;  /* the last connect failed on the credentials */

void
redis_setup(const struct redis_conf *rc)
{
    pthread_mutex_lock(&conf_mu);
    conf = *rc;
    have_conf = true;
    conf_gen++;
    sentinel_good = 0;
    pthread_mutex_unlock(&conf_mu);
}

static void
slots_free(void *p)
{
    struct slots *ss = p;
    for (size_t i = 0; i < SLOTS; i++)
        if (ss->s[i].c)
            redisFree(ss->s[i].c);
    free(ss);
}

static void
key_init(void)
{
    if (pthread_key_create(&key, slots_free) != 0)
        fatal("redis: pthread_key_create failed");
}

static struct slots *
thread_slots(void)
{
    pthread_once(&once, key_init);
    struct slots *ss = pthread_getspecific(key);
    if (ss == NULL) {
        ss = xcalloc(1, sizeof(*ss));
        pthread_setspecific(key, ss);
    }
    return ss;
}

static struct slot *
slot_of(const char *address)
{
    struct slots *ss = thread_slots();
    struct slot *free_slot = NULL;
    for (size_t i = 0; i < SLOTS; i++) {
        if (ss->s[i].address[0] && strcmp(ss->s[i].address, address) == 0)
            return &ss->s[i];
        if (free_slot == NULL && ss->s[i].address[0] == '\0')
            free_slot = &ss->s[i];
    }
    if (free_slot == NULL) {            /* more addresses than slots: reuse the first */
        free_slot = &ss->s[0];
        if (free_slot->c)
            redisFree(free_slot->c);
        free_slot->c = NULL;
    }
    str_copy(free_slot->address, address, sizeof(free_slot->address));
    return free_slot;
}

static redisContext *
connect_to(const char *address, struct timeval tv, char *err, size_t errsize)
{
    redisContext *c;
    if (address[0] == '/') {
        c = redisConnectUnixWithTimeout(address, tv);
    } else {
        char host[256];
        uint16_t port;
        if (hostport_split(address, host, sizeof(host), &port) < 0) {
            snprintf(err, errsize, "redis '%s' is not host:port or a socket path", address);
            return NULL;
        }
        c = redisConnectWithTimeout(host, port, tv);
    }
    if (c == NULL || c->err) {
        snprintf(err, errsize, "redis %s: %s", address, c ? c->errstr : "out of memory");
        if (c)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    return c;
}

/* AUTH on a new connection when a password is configured; -1 with a
 * clear error for a wrong one. */
static int
auth(redisContext *c, const struct redis_conf *rc, const char *where, char *err, size_t errsize)
{
    if (rc->password[0] == '\0')
        return 0;
    const char *argv[3] = { "AUTH", rc->username, rc->password };
    size_t lens[3] = { 4, strlen(rc->username), strlen(rc->password) };
    int argc = 3;
    if (rc->username[0] == '\0') {
        argv[1] = rc->password;
        lens[1] = lens[2];
        argc = 2;
    }
    redisReply *r = redisCommandArgv(c, argc, argv, lens);
    if (r == NULL) {
        snprintf(err, errsize, "redis %s: AUTH: %s", where, c->errstr[0] ? c->errstr : "no reply");
        return -1;
    }
    int rc_ = 0;
    if (r->type == REDIS_REPLY_ERROR) {
        auth_refused = true;
        snprintf(err, errsize,
                 "redis %s: AUTH failed, check redis.username and redis.password: %.*s", where,
                 (int)r->len, r->str);
        rc_ = -1;
    }
    freeReplyObject(r);
    return rc_;
}

/* Is the server at c the master? */
static bool
is_master(redisContext *c)
{
    redisReply *r = redisCommand(c, "ROLE");
    bool yes = r && r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
               r->element[0]->type == REDIS_REPLY_STRING && strcmp(r->element[0]->str, "master") == 0;
    if (r)
        freeReplyObject(r);
    return yes;
}

/* The master through the sentinels: each in turn (starting with the one
 * that answered last), at most one round. */
static redisContext *
sentinel_connect(const struct redis_conf *rc, struct timeval tv, char *err, size_t errsize)
{
    pthread_mutex_lock(&conf_mu);
    size_t first = sentinel_good;
    pthread_mutex_unlock(&conf_mu);
    char why[300] = "no sentinel answered";
    for (size_t k = 0; k < rc->nsentinels; k++) {
        size_t i = (first + k) % rc->nsentinels;
        const char *sa = rc->sentinels[i];
        redisContext *sc = connect_to(sa, tv, why, sizeof(why));
        if (sc == NULL)
            continue;
        redisReply *r = redisCommand(sc, "SENTINEL get-master-addr-by-name %s", rc->master);
        char master[300] = "";
        if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
            r->element[0]->type == REDIS_REPLY_STRING && r->element[1]->type == REDIS_REPLY_STRING)
            snprintf(master, sizeof(master), "%s%s%s:%s",
                     strchr(r->element[0]->str, ':') ? "[" : "", r->element[0]->str,
                     strchr(r->element[0]->str, ':') ? "]" : "", r->element[1]->str);
        else if (r && r->type == REDIS_REPLY_ERROR)
            snprintf(why, sizeof(why), "sentinel %s: %.*s", sa, (int)r->len, r->str);
        else
            snprintf(why, sizeof(why), "sentinel %s: %s", sa,
                     r ? "does not know the master" : sc->errstr);
        if (r)
            freeReplyObject(r);
        redisFree(sc);
        if (master[0] == '\0')
            continue;
        redisContext *c = connect_to(master, tv, why, sizeof(why));
        if (c == NULL)
            continue;
        if (auth(c, rc, master, err, errsize) < 0) {
            redisFree(c);
            return NULL;            /* a wrong password is wrong everywhere */
        }
        if (!is_master(c)) {
            snprintf(why, sizeof(why), "sentinel %s names %s, which is not a master", sa, master);
            redisFree(c);
            continue;
        }
        pthread_mutex_lock(&conf_mu);
        sentinel_good = i;
        pthread_mutex_unlock(&conf_mu);
        return c;
    }
    snprintf(err, errsize, "redis %s: no master found through the sentinels: %s", rc->address,
             why);
    return NULL;
}

struct redisContext *
redis_conn(const char *address, unsigned timeout_ms, char *err, size_t errsize)
{
    if (address == NULL || address[0] == '\0') {
        snprintf(err, errsize, "no redis.address configured");
        return NULL;
    }
    struct slot *s = slot_of(address);
    pthread_mutex_lock(&conf_mu);
    unsigned gen = conf_gen;
    bool ours = have_conf && strcmp(conf.address, address) == 0;
    pthread_mutex_unlock(&conf_mu);
    if (s->c && (s->stale || s->gen != gen)) {
        redisFree(s->c);
        s->c = NULL;
    }
    s->stale = false;
    if (s->c)
        return s->c;
    struct timeval tv = { (time_t)(timeout_ms / 1000), (suseconds_t)(timeout_ms % 1000) * 1000 };
    redisContext *c;
    if (ours) {
        struct redis_conf rc;           /* a copy: redis_setup may run meanwhile */
        pthread_mutex_lock(&conf_mu);
        rc = conf;
        pthread_mutex_unlock(&conf_mu);
        if (rc.nsentinels) {
            c = sentinel_connect(&rc, tv, err, errsize);
        } else if ((c = connect_to(address, tv, err, errsize)) != NULL &&
                   auth(c, &rc, address, err, errsize) < 0) {
            redisFree(c);
            c = NULL;
        }
    } else {
        c = connect_to(address, tv, err, errsize);
    }
    if (c == NULL)
        return NULL;
    s->c = c;
    s->gen = gen;
    return c;
}

void
redis_drop(const char *address)
{
    struct slot *s = slot_of(address);
    if (s->c)
        redisFree(s->c);
    s->c = NULL;
    s->stale = false;
}

/* A reply that is an error is a failure too: the caller sees why. */
static struct redisReply *
checked(const char *address, redisContext *c, redisReply *rep, char *err, size_t errsize)
{
    if (rep == NULL) {
        snprintf(err, errsize, "redis %s: %s", address, c->errstr[0] ? c->errstr : "no reply");
        redis_drop(address);
        return NULL;
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        bool readonly = strncmp(rep->str, "READONLY", 8) == 0;
        if (strncmp(rep->str, "NOAUTH", 6) == 0)
            auth_refused = true;
        snprintf(err, errsize, "redis %s: %.*s%s", address, (int)rep->len, rep->str,
                 strncmp(rep->str, "NOAUTH", 6) == 0 ? " (set redis.password)"
                 : readonly ? " (a replica now: finding the master again)" : "");
        if (readonly)
            slot_of(address)->stale = true;     /* pipelined replies may follow */
        freeReplyObject(rep);
        return NULL;
    }
    return rep;
}

struct redisReply *
redis_vcmd(const char *address, unsigned timeout_ms, char *err, size_t errsize, const char *fmt,
           va_list ap)
{
    /* A command refused by a demoted master ran nowhere: once more, on
     * the master the sentinels name now. */
    for (int attempt = 0;; attempt++) {
        redisContext *c = redis_conn(address, timeout_ms, err, errsize);
        if (c == NULL)
            return NULL;
        va_list aq;
        va_copy(aq, ap);
        redisReply *r = checked(address, c, redisvCommand(c, fmt, aq), err, errsize);
        va_end(aq);
        if (r || attempt == 1 || !slot_of(address)->stale)
            return r;
    }
}

struct redisReply *
redis_cmd(const char *address, unsigned timeout_ms, char *err, size_t errsize, const char *fmt,
          ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *rep = redis_vcmd(address, timeout_ms, err, errsize, fmt, ap);
    va_end(ap);
    return rep;
}

int
redis_append(const char *address, unsigned timeout_ms, char *err, size_t errsize, int argc,
             const char **argv, const size_t *lens)
{
    redisContext *c = redis_conn(address, timeout_ms, err, errsize);
    if (c == NULL)
        return -1;
    if (redisAppendCommandArgv(c, argc, argv, lens) != REDIS_OK) {
        snprintf(err, errsize, "redis %s: %s", address, c->errstr);
        redis_drop(address);
        return -1;
    }
    return 0;
}

struct redisReply *
redis_reply(const char *address, unsigned timeout_ms, char *err, size_t errsize)
{
    (void)timeout_ms;
    redisContext *c = slot_of(address)->c;     /* the pipeline's, even when stale */
    if (c == NULL) {
        snprintf(err, errsize, "redis %s: the connection was lost", address);
        return NULL;
    }
    void *rep = NULL;
    if (redisGetReply(c, &rep) != REDIS_OK)
        rep = NULL;
    return checked(address, c, rep, err, errsize);
}

void
redis_reply_free(struct redisReply *r)
{
    if (r)
        freeReplyObject(r);
}

int
redis_check(const char *address, unsigned timeout_ms, char *err, size_t errsize)
{
    auth_refused = false;
    redisReply *r = redis_cmd(address, timeout_ms, err, errsize, "PING");
    redis_reply_free(r);
    redis_drop(address);        /* nothing open to pass on to a fork */
    return r ? 0 : auth_refused ? -2 : -1;
}
