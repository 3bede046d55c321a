/*
 * redis.c -- the daemon's Redis client (hiredis): one connection per
 * thread and address, because a hiredis context is not thread-safe and
 * the filter hooks run on several workers at once. Connect and every reply
 * are bounded by the configured timeout; a connection that failed is
 * dropped and the next call connects again, so a Redis restart costs the
 * messages in flight a tempfail, never a hung worker.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <hiredis/hiredis.h>
#include "util.h"

#define SLOTS 4

struct slot { char address[300]; redisContext *c; };
struct slots { struct slot s[SLOTS]; };

static pthread_key_t key;
static pthread_once_t once = PTHREAD_ONCE_INIT;

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

struct redisContext *
redis_conn(const char *address, unsigned timeout_ms, char *err, size_t errsize)
{
    if (address == NULL || address[0] == '\0') {
        snprintf(err, errsize, "no redis.address configured");
        return NULL;
    }
    struct slot *s = slot_of(address);
    if (s->c)
        return s->c;
    struct timeval tv = { (time_t)(timeout_ms / 1000), (suseconds_t)(timeout_ms % 1000) * 1000 };
    redisContext *c;
    if (address[0] == '/') {
        c = redisConnectUnixWithTimeout(address, tv);
    } else {
        char host[256];
        uint16_t port;
        if (hostport_split(address, host, sizeof(host), &port) < 0) {
            snprintf(err, errsize, "redis.address '%s' is not host:port or a socket path",
                     address);
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
    s->c = c;
    return c;
}

void
redis_drop(const char *address)
{
    struct slot *s = slot_of(address);
    if (s->c)
        redisFree(s->c);
    s->c = NULL;
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
        snprintf(err, errsize, "redis %s: %.*s", address, (int)rep->len, rep->str);
        freeReplyObject(rep);
        return NULL;
    }
    return rep;
}

struct redisReply *
redis_vcmd(const char *address, unsigned timeout_ms, char *err, size_t errsize, const char *fmt,
           va_list ap)
{
    redisContext *c = redis_conn(address, timeout_ms, err, errsize);
    if (c == NULL)
        return NULL;
    return checked(address, c, redisvCommand(c, fmt, ap), err, errsize);
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
    redisContext *c = redis_conn(address, timeout_ms, err, errsize);
    if (c == NULL)
        return NULL;
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
